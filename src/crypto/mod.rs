//! Encryption for tapevault: the passphrase-protected keystore, the per-record
//! AES-256-GCM cipher, the nonce source that never repeats a nonce under one key,
//! and key escrow for volume labels.
//!
//! Layering: [`record`] is the only code that touches data; [`keystore`] and
//! [`escrow`] only wrap and unwrap 256-bit record keys under passphrase-derived keys
//! (argon2id + AES-256-GCM, see [`wrap`]); [`nonces`] hands out unique nonces;
//! [`paper`] is the printable form of an exported key.

pub mod escrow;
pub mod keystore;
pub mod nonces;
pub mod paper;
pub mod record;
mod wrap;

pub use keystore::{KeyInfo, Keystore};
pub use nonces::NonceSource;
pub use record::{AuthError, RecordKey};
pub use wrap::KdfParams;

use std::path::PathBuf;

/// Length of a record key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of a key fingerprint in bytes (shown as 32 hex digits).
pub const FINGERPRINT_LEN: usize = 16;
/// Length of a GCM nonce (96 bits, the only size GCM handles without hashing).
pub const NONCE_LEN: usize = 12;
/// Length of a GCM tag (128 bits, full strength).
pub const TAG_LEN: usize = 16;

/// blake3 derive-key context for fingerprints: domain-separated from every other use
/// of the key, so the fingerprint can be printed and written on tape freely.
const FINGERPRINT_CONTEXT: &str = "tapevault 2026-11 record key fingerprint v1";

/// The 16-byte fingerprint of a record key.
pub fn fingerprint(key: &[u8; KEY_LEN]) -> [u8; FINGERPRINT_LEN] {
    let full = blake3::derive_key(FINGERPRINT_CONTEXT, key);
    let mut fp = [0u8; FINGERPRINT_LEN];
    fp.copy_from_slice(&full[..FINGERPRINT_LEN]);
    fp
}

/// Lowercase hex of any byte string (fingerprints, digests).
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parse hex (either case) into bytes; `None` if not hex or odd length.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Errors of the keystore, escrow and nonce source. The CLI maps
/// [`CryptoError::WrongPassphrase`], [`CryptoError::KeyMissing`] and [`CryptoError::Corrupt`]
/// (a damaged key file) to exit code 5.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("wrong passphrase for key {name}")]
    WrongPassphrase { name: String },
    #[error("key {wanted} is not in the keystore {dir}: import it (tapevault key import FILE) or recover it from the escrow in a cartridge label (tapevault key recover BARCODE)")]
    KeyMissing { wanted: String, dir: PathBuf },
    #[error("a key named {name} already exists with a different key (fingerprint {existing}); choose another name")]
    DuplicateName { name: String, existing: String },
    #[error(
        "invalid key name {name:?}: use 1-64 characters of A-Z a-z 0-9 . _ - not starting with '.'"
    )]
    InvalidName { name: String },
    #[error("key file {what} is damaged or not a tapevault key: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("key file {what} has format version {found}, this tapevault knows up to {known}; upgrade tapevault")]
    UnsupportedVersion {
        what: String,
        found: u16,
        known: u16,
    },
    #[error("paper key, line {line}: {reason}")]
    Paper { line: usize, reason: String },
    #[error("key derivation parameters rejected: {0}")]
    Kdf(String),
    #[error("nonce space of key {fingerprint} is exhausted; create a new key")]
    NonceExhausted { fingerprint: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CryptoError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CryptoError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
