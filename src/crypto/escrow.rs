//! Key escrow for volume labels: the record key wrapped under a passphrase into an
//! opaque blob (layout in `wrap.rs`, magic `TVESCRW\n`, about 130 bytes), so that a
//! cartridge plus the passphrase alone recover the key, with no keystore.

use super::record::RecordKey;
use super::wrap::{Wrapped, ESCROW_MAGIC};
use super::{CryptoError, KdfParams};

/// Wrap `key` under `passphrase` with the given argon2id parameters.
pub fn wrap(key: &RecordKey, passphrase: &[u8], kdf: KdfParams) -> Result<Vec<u8>, CryptoError> {
    let w = Wrapped::seal(
        ESCROW_MAGIC,
        key.raw(),
        "",
        chrono::Utc::now().timestamp(),
        passphrase,
        kdf,
    )?;
    Ok(w.encode())
}

/// The fingerprint an escrow blob holds, without the passphrase (to tell which key a
/// cartridge needs).
pub fn fingerprint(blob: &[u8]) -> Result<[u8; super::FINGERPRINT_LEN], CryptoError> {
    Ok(Wrapped::decode(blob, ESCROW_MAGIC, "escrow blob")?.fingerprint)
}

/// Recover the key. Errors: [`CryptoError::WrongPassphrase`], [`CryptoError::Corrupt`].
pub fn unwrap(blob: &[u8], passphrase: &[u8]) -> Result<RecordKey, CryptoError> {
    let w = Wrapped::decode(blob, ESCROW_MAGIC, "escrow blob")?;
    Ok(RecordKey::from_bytes(*w.open(passphrase)?))
}
