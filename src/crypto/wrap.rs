//! The wrapped-key blob shared by key files and escrow blobs.
//!
//! A 256-bit record key is encrypted (AES-256-GCM) under a key derived from a
//! passphrase with argon2id. Byte layout (all integers big-endian):
//!
//! ```text
//! magic        8   b"TVKEYv1\n" (key file) or b"TVESCRW\n" (escrow blob)
//! version      2   1
//! kdf          1   1 = argon2id, version 0x13
//! m_cost_kib   4   argon2 memory in KiB
//! t_cost       4   argon2 passes
//! p_cost       4   argon2 lanes
//! salt        16   random per wrap (a new salt on every passphrase change)
//! created      8   i64 unix seconds when the key was created
//! fingerprint 16   crypto::fingerprint(key)
//! name_len     2   then name_len bytes of UTF-8 (empty for escrow)
//! nonce       12   random
//! wrapped     32   the key, encrypted
//! tag         16   GCM tag; associated data = every byte from magic through name
//! checksum    16   blake3 of every byte before it (tells damage from a wrong passphrase)
//! ```
//! Because the header is associated data, changing any header byte (name, params,
//! fingerprint) makes unwrapping fail; the trailing checksum makes accidental damage
//! show up as "damaged" rather than as "wrong passphrase".

use super::{fingerprint, to_hex, CryptoError, FINGERPRINT_LEN, KEY_LEN, NONCE_LEN, TAG_LEN};
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

pub(crate) const KEYFILE_MAGIC: &[u8; 8] = b"TVKEYv1\n";
pub(crate) const ESCROW_MAGIC: &[u8; 8] = b"TVESCRW\n";
/// Newest wrapped-key format version this code reads and the one it writes.
pub(crate) const WRAP_VERSION: u16 = 1;
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const CHECKSUM_LEN: usize = 16;
/// Longest key name; names are file names and appear on paper keys.
pub(crate) const MAX_NAME_LEN: usize = 64;
/// Argon2 memory ceiling accepted from a file (1 GiB): a hostile or damaged file must
/// not make unlocking allocate unbounded memory.
const MAX_M_COST_KIB: u32 = 1 << 20;
/// Argon2 pass ceiling accepted from a file, for the same reason (time).
const MAX_T_COST: u32 = 64;
/// Argon2 lane ceiling accepted from a file.
const MAX_P_COST: u32 = 16;
const FIXED_HEADER: usize = 8 + 2 + 1 + 12 + SALT_LEN + 8 + FINGERPRINT_LEN + 2;

/// argon2id cost parameters. Recorded in every wrapped key, so old files stay
/// readable when the defaults change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 4 passes, 1 lane: about 0.1-0.5 s on a current server core (measured
    /// ~0.18 s on the 2-core development machine), the budget for a prompt that also
    /// runs before every backup. Memory-hard first: 64 MiB per guess.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 4,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// The cheapest parameters argon2 allows. For tests only: offers no protection.
    pub const INSECURE_FOR_TESTS: KdfParams = KdfParams {
        m_cost_kib: 8,
        t_cost: 1,
        p_cost: 1,
    };

    fn check(&self) -> Result<argon2::Params, CryptoError> {
        if self.m_cost_kib > MAX_M_COST_KIB || self.t_cost > MAX_T_COST || self.p_cost > MAX_P_COST
        {
            return Err(CryptoError::Kdf(format!(
                "{self:?} exceeds the limits m<={MAX_M_COST_KIB} KiB, t<={MAX_T_COST}, p<={MAX_P_COST}"
            )));
        }
        argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|e| CryptoError::Kdf(format!("{self:?}: {e}")))
    }

    fn derive(
        &self,
        passphrase: &[u8],
        salt: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
        let params = self.check()?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        a.hash_password_into(passphrase, salt, out.as_mut())
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        Ok(out)
    }
}

/// A decoded wrapped key (still encrypted).
#[derive(Debug, Clone)]
pub(crate) struct Wrapped {
    pub magic: [u8; 8],
    pub params: KdfParams,
    pub salt: [u8; SALT_LEN],
    pub created: i64,
    pub fingerprint: [u8; FINGERPRINT_LEN],
    pub name: String,
    nonce: [u8; NONCE_LEN],
    wrapped: [u8; KEY_LEN],
    tag: [u8; TAG_LEN],
}

impl Wrapped {
    /// Wrap `key` under `passphrase` with a fresh salt and nonce.
    pub fn seal(
        magic: &[u8; 8],
        key: &[u8; KEY_LEN],
        name: &str,
        created: i64,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<Wrapped, CryptoError> {
        if name.len() > MAX_NAME_LEN {
            return Err(CryptoError::InvalidName { name: name.into() });
        }
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut w = Wrapped {
            magic: *magic,
            params,
            salt,
            created,
            fingerprint: fingerprint(key),
            name: name.to_string(),
            nonce,
            wrapped: *key,
            tag: [0; TAG_LEN],
        };
        let kek = params.derive(passphrase, &salt)?;
        let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).expect("32-byte key");
        let aad = w.header();
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &aad, w.wrapped.as_mut_slice().into())
            .map_err(|_| CryptoError::Kdf("key wrapping failed".into()))?;
        w.tag.copy_from_slice(&tag);
        Ok(w)
    }

    /// Unwrap with `passphrase`. A failed tag means a wrong passphrase (or a header
    /// forged together with its checksum).
    pub fn open(&self, passphrase: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
        let kek = self.params.derive(passphrase, &self.salt)?;
        let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).expect("32-byte key");
        let mut key = Zeroizing::new(self.wrapped);
        let aad = self.header();
        cipher
            .decrypt_inout_detached(
                &Nonce::from(self.nonce),
                &aad,
                key.as_mut_slice().into(),
                &Tag::from(self.tag),
            )
            .map_err(|_| CryptoError::WrongPassphrase {
                name: self.display_name(),
            })?;
        if fingerprint(&key) != self.fingerprint {
            // Unreachable unless the writer was broken: the fingerprint is authenticated.
            return Err(CryptoError::Corrupt {
                what: self.display_name(),
                reason: "unwrapped key does not match its fingerprint".into(),
            });
        }
        Ok(key)
    }

    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            to_hex(&self.fingerprint)
        } else {
            self.name.clone()
        }
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(FIXED_HEADER + self.name.len());
        h.extend_from_slice(&self.magic);
        h.extend_from_slice(&WRAP_VERSION.to_be_bytes());
        h.push(KDF_ARGON2ID);
        h.extend_from_slice(&self.params.m_cost_kib.to_be_bytes());
        h.extend_from_slice(&self.params.t_cost.to_be_bytes());
        h.extend_from_slice(&self.params.p_cost.to_be_bytes());
        h.extend_from_slice(&self.salt);
        h.extend_from_slice(&self.created.to_be_bytes());
        h.extend_from_slice(&self.fingerprint);
        h.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        h.extend_from_slice(self.name.as_bytes());
        h
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.header();
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.wrapped);
        b.extend_from_slice(&self.tag);
        let sum = blake3::hash(&b);
        b.extend_from_slice(&sum.as_bytes()[..CHECKSUM_LEN]);
        b
    }

    /// Decode a blob; `what` names it in errors. Every length is checked before use.
    pub fn decode(
        bytes: &[u8],
        expect_magic: &[u8; 8],
        what: &str,
    ) -> Result<Wrapped, CryptoError> {
        let corrupt = |reason: &str| CryptoError::Corrupt {
            what: what.to_string(),
            reason: reason.to_string(),
        };
        if bytes.len() < 8 || &bytes[..8] != expect_magic {
            return Err(corrupt("wrong magic (not a tapevault key of this kind)"));
        }
        if bytes.len() < 10 {
            return Err(corrupt("truncated"));
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version > WRAP_VERSION || version == 0 {
            return Err(CryptoError::UnsupportedVersion {
                what: what.to_string(),
                found: version,
                known: WRAP_VERSION,
            });
        }
        let tail = NONCE_LEN + KEY_LEN + TAG_LEN + CHECKSUM_LEN;
        if bytes.len() < FIXED_HEADER + tail {
            return Err(corrupt("truncated"));
        }
        let name_len =
            u16::from_be_bytes([bytes[FIXED_HEADER - 2], bytes[FIXED_HEADER - 1]]) as usize;
        if name_len > MAX_NAME_LEN {
            return Err(corrupt("name longer than 64 bytes"));
        }
        if bytes.len() != FIXED_HEADER + name_len + tail {
            return Err(corrupt(&format!(
                "length {} does not match the {} bytes its header announces",
                bytes.len(),
                FIXED_HEADER + name_len + tail
            )));
        }
        let body = bytes.len() - CHECKSUM_LEN;
        if blake3::hash(&bytes[..body]).as_bytes()[..CHECKSUM_LEN] != bytes[body..] {
            return Err(corrupt(
                "checksum mismatch (the file was altered or damaged)",
            ));
        }
        if bytes[10] != KDF_ARGON2ID {
            return Err(corrupt(&format!(
                "unknown key derivation function {}",
                bytes[10]
            )));
        }
        let u32at = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().unwrap());
        let params = KdfParams {
            m_cost_kib: u32at(11),
            t_cost: u32at(15),
            p_cost: u32at(19),
        };
        let mut o = 23;
        let mut take = |n: usize| {
            let s = &bytes[o..o + n];
            o += n;
            s
        };
        let salt: [u8; SALT_LEN] = take(SALT_LEN).try_into().unwrap();
        let created = i64::from_be_bytes(take(8).try_into().unwrap());
        let fp: [u8; FINGERPRINT_LEN] = take(FINGERPRINT_LEN).try_into().unwrap();
        take(2);
        let name = std::str::from_utf8(take(name_len))
            .map_err(|_| corrupt("name is not UTF-8"))?
            .to_string();
        let nonce: [u8; NONCE_LEN] = take(NONCE_LEN).try_into().unwrap();
        let wrapped: [u8; KEY_LEN] = take(KEY_LEN).try_into().unwrap();
        let tag: [u8; TAG_LEN] = take(TAG_LEN).try_into().unwrap();
        Ok(Wrapped {
            magic: *expect_magic,
            params,
            salt,
            created,
            fingerprint: fp,
            name,
            nonce,
            wrapped,
            tag,
        })
    }
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        // Wrapped bytes are ciphertext, but `seal` briefly holds the plain key here.
        self.wrapped.zeroize();
    }
}
