//! Per-record AES-256-GCM: in-place encryption with a detached 128-bit tag.
//!
//! The caller supplies the nonce (from [`super::NonceSource`], never twice under one
//! key) and the associated data (the record header, which carries the key
//! fingerprint, so records cannot be swapped, replayed or re-keyed unnoticed).

use super::{fingerprint, to_hex, FINGERPRINT_LEN, KEY_LEN, NONCE_LEN, TAG_LEN};
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroizing;

/// Authentication failed: wrong key, or the ciphertext, tag, nonce or associated
/// data were altered. The buffer has been cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record authentication failed (wrong key, or the record was altered)")]
pub struct AuthError;

/// blake3 derive-key context of the drive data key ([`RecordKey::drive_data_key`]).
const DRIVE_KEY_CONTEXT: &str = "tapevault 2026-12 drive hardware encryption data key v1";

/// An unlocked 256-bit record key. The raw key is wiped on drop (and the AES key
/// schedule, through the `aes` crate's zeroize feature).
pub struct RecordKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    cipher: Aes256Gcm,
    /// Key of the content and snapshot digests of what this key encrypts
    /// ([`tape_formats::digest_key`]).
    digest_key: Zeroizing<[u8; KEY_LEN]>,
    /// blake3-derived fingerprint; safe to print and to write on tape.
    pub fingerprint: [u8; FINGERPRINT_LEN],
}

impl Clone for RecordKey {
    fn clone(&self) -> RecordKey {
        RecordKey::from_bytes(*self.key)
    }
}

impl RecordKey {
    /// Wrap raw key bytes. Prefer [`super::Keystore::unlock`] or
    /// [`super::escrow::unwrap`]; this exists for them and for tests.
    pub fn from_bytes(key: [u8; KEY_LEN]) -> RecordKey {
        let key = Zeroizing::new(key);
        let cipher = Aes256Gcm::new_from_slice(key.as_ref()).expect("32-byte key");
        RecordKey {
            fingerprint: fingerprint(&key),
            digest_key: Zeroizing::new(tape_formats::digest_key(&key)),
            cipher,
            key,
        }
    }

    /// A new random key from the operating system's generator.
    pub fn generate() -> RecordKey {
        use rand::RngCore;
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        RecordKey::from_bytes(*k)
    }

    /// The fingerprint as 32 lowercase hex digits.
    pub fn fingerprint_hex(&self) -> String {
        to_hex(&self.fingerprint)
    }

    /// The key of content and snapshot digests of data encrypted under this key.
    pub fn digest_key(&self) -> &[u8; KEY_LEN] {
        &self.digest_key
    }

    /// The data key a tape drive's hardware encryption uses for pools with drive
    /// encryption: derived from this key (domain-separated from the record cipher and
    /// the digests), with this key's fingerprint as the key-associated data the drive
    /// records beside each block. With `encrypt` the drive encrypts what it writes.
    pub fn drive_data_key(&self, encrypt: bool) -> tape_devices::drive::DataKey {
        tape_devices::drive::DataKey {
            key: blake3::derive_key(DRIVE_KEY_CONTEXT, self.key.as_ref()),
            kad: self.fingerprint,
            encrypt,
        }
    }

    pub(crate) fn raw(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// Encrypt `buf` in place and return the tag.
    pub fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> [u8; TAG_LEN] {
        self.seal_inout(nonce, aad, buf.as_mut_slice().into())
    }

    /// Encrypt `plain` into `out` (of the same length) and return the tag: the same as
    /// copying and sealing in place, without the copy.
    pub fn seal_into(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
        out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        assert_eq!(
            plain.len(),
            out.len(),
            "seal_into needs an output as long as its input"
        );
        self.seal_inout(
            nonce,
            aad,
            InOutBuf::new(plain, out).expect("lengths checked"),
        )
    }

    fn seal_inout(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: InOutBuf<'_, '_, u8>,
    ) -> [u8; TAG_LEN] {
        self.cipher
            .encrypt_inout_detached(&Nonce::from(nonce), aad, buf)
            // Only fails past GCM's 64 GiB plaintext limit, far above any record size.
            .expect("record within AES-GCM length limits")
            .into()
    }

    /// Verify `ciphertext` and decrypt it into `out` (resized to its length): the same
    /// as copying and opening in place, without the copy. On failure `out` is cleared.
    pub fn open_into(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
        out: &mut Vec<u8>,
        tag: [u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        // A recycled buffer of the right length is overwritten whole.
        out.resize(ciphertext.len(), 0);
        let buf = InOutBuf::new(ciphertext, out.as_mut_slice())
            .expect("output resized to the input's length");
        let r = self.open_inout(nonce, aad, buf, tag);
        if r.is_err() {
            out.clear();
        }
        r
    }

    /// Verify and decrypt `buf` in place. On failure `buf` is cleared: nothing
    /// unauthenticated is ever handed back.
    pub fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
        tag: [u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        let r = self.open_inout(nonce, aad, buf.as_mut_slice().into(), tag);
        if r.is_err() {
            buf.clear();
        }
        r
    }

    fn open_inout(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: InOutBuf<'_, '_, u8>,
        tag: [u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        self.cipher
            .decrypt_inout_detached(&Nonce::from(nonce), aad, buf, &Tag::from(tag))
            .map_err(|_| AuthError)
    }
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKey")
            .field("fingerprint", &self.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_into_another_buffer_equals_sealing_in_place() {
        let key = RecordKey::from_bytes([9; KEY_LEN]);
        for len in [0usize, 1, 15, 16, 17, 4096, 100_003] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let nonce = [len as u8; NONCE_LEN];
            let mut in_place = plain.clone();
            let tag = key.seal(nonce, b"aad", &mut in_place);
            // A recycled output buffer with stale bytes.
            let mut out = vec![0xAB; len];
            let tag2 = key.seal_into(nonce, b"aad", &plain, &mut out);
            assert_eq!((tag, &in_place), (tag2, &out), "length {len}");
            let mut into = vec![0x5A; len / 2 + 1];
            key.open_into(nonce, b"aad", &out, &mut into, tag2).unwrap();
            assert_eq!(into, plain);
            key.open(nonce, b"aad", &mut out, tag2).unwrap();
            assert_eq!(out, plain);
            // A wrong tag: nothing unauthenticated comes back.
            let mut bad = tag2;
            bad[0] ^= 1;
            assert!(key
                .open_into(nonce, b"aad", &in_place, &mut into, bad)
                .is_err());
            assert!(into.is_empty());
        }
    }
}
