//! Record payload codec: compress then encrypt on the way to tape; authenticate,
//! decrypt and decompress on the way back. Framing is tape-formats' job; this module
//! turns plain extent bytes into a stored payload and back.

use std::collections::HashMap;

use tape_formats::{
    data_record_aad, snapshot_chunk_aad, ChunkFields, Cipher, Compression as WireCompression,
    DataFields, DataRecord, Extent, RecordCrypto, SnapshotChunk,
};

use crate::catalog::Compression;
use crate::crypto::{NonceSource, RecordKey};
use crate::error::{Error, Result};

/// zstd compressor with a reusable context. Stores a record uncompressed when
/// compression would not make it smaller (incompressible or already compressed data).
pub struct Compressor {
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Compressor {
    pub fn new(c: Compression) -> Result<Compressor> {
        let zstd = match c {
            Compression::Off => None,
            Compression::Zstd(level) => Some(
                zstd::bulk::Compressor::new(level)
                    .map_err(|e| Error::Failed(format!("cannot start zstd level {level}: {e}")))?,
            ),
        };
        Ok(Compressor { zstd })
    }

    /// Fill `out` with the stored form of `plain`; returns how it is stored.
    pub fn compress(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<WireCompression> {
        if self.try_compress(plain, out)? {
            return Ok(WireCompression::Zstd);
        }
        out.clear();
        out.extend_from_slice(plain);
        Ok(WireCompression::None)
    }

    /// Compress `plain` into `out` and return true when that makes it smaller; false
    /// means the record is to be stored as `plain` is (and `out` holds nothing useful;
    /// without zstd it is left untouched, so a recycled buffer is not cleared for nothing).
    /// Lets a caller that encrypts or can take `plain`'s buffer skip a copy.
    pub fn try_compress(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let Some(z) = self.zstd.as_mut() else {
            return Ok(false);
        };
        out.clear();
        let bound = zstd::zstd_safe::compress_bound(plain.len());
        out.reserve(bound);
        // Capacity is at least the bound, so compression cannot run out of room.
        match z.compress_to_buffer(plain, out) {
            Ok(n) if n < plain.len() => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(Error::Failed(format!("zstd compression failed: {e}"))),
        }
    }
}

/// A record stored uncompressed holds exactly its plain length.
fn check_raw_len(stored: usize, plain_len: usize) -> std::result::Result<(), String> {
    if stored != plain_len {
        return Err(format!("stored {stored} bytes, expected {plain_len}"));
    }
    Ok(())
}

/// zstd decompressor with a reusable context.
pub struct Decompressor {
    zstd: zstd::bulk::Decompressor<'static>,
}

impl Decompressor {
    pub fn new() -> Result<Decompressor> {
        Ok(Decompressor {
            zstd: zstd::bulk::Decompressor::new()
                .map_err(|e| Error::Failed(format!("cannot start zstd: {e}")))?,
        })
    }

    /// Decompress `stored` (of the given kind) into `out`, which must come out exactly
    /// `plain_len` bytes long.
    pub fn decompress(
        &mut self,
        kind: WireCompression,
        stored: &[u8],
        plain_len: usize,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        out.clear();
        match kind {
            WireCompression::None => {
                check_raw_len(stored.len(), plain_len)?;
                out.extend_from_slice(stored);
            }
            WireCompression::Zstd => {
                out.reserve(plain_len);
                let n = self
                    .zstd
                    .decompress_to_buffer(stored, out)
                    .map_err(|e| format!("zstd: {e}"))?;
                if n != plain_len {
                    return Err(format!("decompressed to {n} bytes, expected {plain_len}"));
                }
            }
        }
        Ok(())
    }
}

/// Encrypts record payloads under one key with nonces that are never reused.
pub struct Sealer {
    pub key: RecordKey,
    pub nonces: NonceSource,
    aad: Vec<u8>,
}

impl Sealer {
    pub fn new(key: RecordKey, nonces: NonceSource) -> Sealer {
        Sealer {
            key,
            nonces,
            aad: Vec::with_capacity(256),
        }
    }

    /// How a header announces a stream sealed by this sealer.
    pub fn cipher(&self) -> Cipher {
        Cipher::Aes256Gcm {
            key_fingerprint: self.key.fingerprint,
        }
    }

    /// Encrypt `stored` in place for a record with `fields` (whose crypto is set here)
    /// and `extents`. The whole header is the associated data, so the record cannot be
    /// moved, duplicated or spliced into another image unnoticed.
    pub fn seal_data(
        &mut self,
        fields: &mut DataFields,
        extents: &[Extent],
        stored: &mut Vec<u8>,
    ) -> Result<()> {
        let mut aad = std::mem::take(&mut self.aad);
        let r = self.seal_data_with(fields, extents, stored, &mut aad);
        self.aad = aad;
        r
    }

    /// As [`seal_data`](Self::seal_data), through a shared reference (the caller lends
    /// the AAD buffer), so one sealer can serve the pipeline's transform stage while the
    /// writer holds it too. Nonces stay unique: the nonce source is shared and locked.
    pub fn seal_data_with(
        &self,
        fields: &mut DataFields,
        extents: &[Extent],
        stored: &mut Vec<u8>,
        aad: &mut Vec<u8>,
    ) -> Result<()> {
        self.seal_record(fields, extents, stored.len(), aad, |key, nonce, aad| {
            key.seal(nonce, aad, stored)
        })
    }

    /// As [`seal_data_with`](Self::seal_data_with), encrypting `plain` (the payload to
    /// store) straight into `stored` (of the same length, e.g. the payload area of the
    /// block to be written), which saves copying it first.
    pub fn seal_data_from(
        &self,
        fields: &mut DataFields,
        extents: &[Extent],
        plain: &[u8],
        stored: &mut [u8],
        aad: &mut Vec<u8>,
    ) -> Result<()> {
        self.seal_record(fields, extents, plain.len(), aad, |key, nonce, aad| {
            key.seal_into(nonce, aad, plain, stored)
        })
    }

    /// Take a nonce, set `fields.crypto`, build the associated data for a payload of
    /// `stored_len` bytes and let `encrypt` produce the ciphertext and tag.
    fn seal_record(
        &self,
        fields: &mut DataFields,
        extents: &[Extent],
        stored_len: usize,
        aad: &mut Vec<u8>,
        encrypt: impl FnOnce(&RecordKey, [u8; 12], &[u8]) -> [u8; 16],
    ) -> Result<()> {
        let nonce = self
            .nonces
            .next()
            .map_err(|e| Error::Key(format!("cannot get a nonce: {e}")))?;
        fields.crypto = RecordCrypto::Aes256Gcm {
            key_fingerprint: self.key.fingerprint,
            nonce,
            tag: [0; 16],
        };
        aad.clear();
        data_record_aad(fields, extents, stored_len, aad)
            .map_err(|e| Error::Failed(format!("cannot frame record: {e}")))?;
        let tag = encrypt(&self.key, nonce, aad);
        fields.crypto = RecordCrypto::Aes256Gcm {
            key_fingerprint: self.key.fingerprint,
            nonce,
            tag,
        };
        Ok(())
    }

    /// Move a record sealed ahead of time for `sealed` (its fields, crypto included) to
    /// `fields` (another part or sequence, e.g. after early warning changed the part):
    /// authenticate and decrypt under the old header, then encrypt again with a fresh
    /// nonce under the new one. A nonce is never used for two headers.
    pub fn reseal_data(
        &self,
        sealed: &DataFields,
        fields: &mut DataFields,
        extents: &[Extent],
        stored: &mut Vec<u8>,
        aad: &mut Vec<u8>,
    ) -> Result<()> {
        let RecordCrypto::Aes256Gcm { nonce, tag, .. } = sealed.crypto else {
            return self.seal_data_with(fields, extents, stored, aad);
        };
        aad.clear();
        data_record_aad(sealed, extents, stored.len(), aad)
            .map_err(|e| Error::Failed(format!("cannot frame record: {e}")))?;
        self.key.open(nonce, aad, stored, tag).map_err(|_| {
            Error::Failed(format!(
                "internal error: record {} prepared for part {} does not authenticate before re-sealing",
                sealed.sequence, sealed.part
            ))
        })?;
        self.seal_data_with(fields, extents, stored, aad)
    }

    /// Encrypt a catalog snapshot chunk's payload in place; sets `fields.crypto`.
    pub fn seal_chunk(&mut self, fields: &mut ChunkFields, stored: &mut Vec<u8>) -> Result<()> {
        let nonce = self
            .nonces
            .next()
            .map_err(|e| Error::Key(format!("cannot get a nonce: {e}")))?;
        fields.crypto = RecordCrypto::Aes256Gcm {
            key_fingerprint: self.key.fingerprint,
            nonce,
            tag: [0; 16],
        };
        self.aad.clear();
        snapshot_chunk_aad(fields, stored.len(), &mut self.aad)
            .map_err(|e| Error::Failed(format!("cannot frame snapshot chunk: {e}")))?;
        let tag = self.key.seal(nonce, &self.aad, stored);
        fields.crypto = RecordCrypto::Aes256Gcm {
            key_fingerprint: self.key.fingerprint,
            nonce,
            tag,
        };
        Ok(())
    }
}

/// Why a record's payload could not be turned back into plain bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The key with this fingerprint (hex) is not available.
    MissingKey(String),
    /// Authentication failed: the record was altered, moved or replayed.
    Authentication,
    /// The payload does not decompress to its stated length.
    Decompression(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::MissingKey(fp) => write!(f, "key {fp} is needed and not unlocked"),
            OpenError::Authentication => {
                f.write_str("authentication failed (altered, moved or replayed record)")
            }
            OpenError::Decompression(e) => write!(f, "payload does not decompress: {e}"),
        }
    }
}

/// Keys available to a reader, by fingerprint.
#[derive(Default)]
pub struct KeyRing {
    keys: HashMap<[u8; 16], RecordKey>,
}

impl KeyRing {
    pub fn new() -> KeyRing {
        KeyRing::default()
    }
    pub fn add(&mut self, key: RecordKey) {
        self.keys.insert(key.fingerprint, key);
    }
    pub fn has(&self, fp: &[u8; 16]) -> bool {
        self.keys.contains_key(fp)
    }
    pub fn get(&self, fp: &[u8; 16]) -> Option<&RecordKey> {
        self.keys.get(fp)
    }

    /// The content/snapshot digest key of a stream announced with `cipher`: `None` in
    /// the clear; the key's digest key when encrypted, or `Err` with the missing key's
    /// fingerprint (hex).
    pub fn digest_key_for(
        &self,
        cipher: &Cipher,
    ) -> std::result::Result<Option<&[u8; 32]>, String> {
        self.digest_key_of(cipher.key_fingerprint().as_ref())
    }

    /// As [`digest_key_for`](Self::digest_key_for), by key fingerprint (`None`: clear).
    pub fn digest_key_of(
        &self,
        fingerprint: Option<&[u8; 16]>,
    ) -> std::result::Result<Option<&[u8; 32]>, String> {
        match fingerprint {
            None => Ok(None),
            Some(fp) => self
                .get(fp)
                .map(|k| Some(k.digest_key()))
                .ok_or_else(|| crate::crypto::to_hex(fp)),
        }
    }
}

/// Reusable buffers to open records.
pub struct Opener {
    dec: Decompressor,
    aad: Vec<u8>,
    work: Vec<u8>,
}

impl Opener {
    pub fn new() -> Result<Opener> {
        Ok(Opener {
            dec: Decompressor::new()?,
            aad: Vec::with_capacity(256),
            work: Vec::new(),
        })
    }

    /// Authenticate (if encrypted), decrypt and decompress a data record's payload into
    /// `plain`. Nothing unauthenticated reaches `plain`.
    pub fn open_data(
        &mut self,
        keys: &KeyRing,
        rec: &DataRecord<'_>,
        plain: &mut Vec<u8>,
    ) -> std::result::Result<(), OpenError> {
        let f = &rec.fields;
        self.open(
            keys,
            f.crypto,
            f.compression,
            f.plain_len,
            rec.payload,
            |aad| rec.aad(aad),
            plain,
        )
    }

    /// Authenticate, decrypt and decompress a catalog snapshot chunk into `plain`.
    pub fn open_chunk(
        &mut self,
        keys: &KeyRing,
        chunk: &SnapshotChunk<'_>,
        plain: &mut Vec<u8>,
    ) -> std::result::Result<(), OpenError> {
        let f = &chunk.fields;
        self.open(
            keys,
            f.crypto,
            f.compression,
            f.plain_len,
            chunk.payload,
            |aad| chunk.aad(aad),
            plain,
        )
    }

    /// The one path from a stored payload to plain bytes: the associated data comes
    /// from the record exactly as read (`fill_aad`), the tag is checked before anything
    /// is decompressed, and `plain` stays empty on any failure.
    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        keys: &KeyRing,
        crypto: RecordCrypto,
        compression: WireCompression,
        plain_len: u32,
        payload: &[u8],
        fill_aad: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), tape_formats::FormatError>,
        plain: &mut Vec<u8>,
    ) -> std::result::Result<(), OpenError> {
        plain.clear();
        let stored: &[u8] = match crypto {
            RecordCrypto::None => payload,
            RecordCrypto::Aes256Gcm {
                key_fingerprint,
                nonce,
                tag,
            } => {
                let key = keys.get(&key_fingerprint).ok_or_else(|| {
                    OpenError::MissingKey(crate::crypto::to_hex(&key_fingerprint))
                })?;
                self.aad.clear();
                fill_aad(&mut self.aad).map_err(|_| OpenError::Authentication)?;
                if compression == WireCompression::None {
                    // Stored raw: decrypt straight into the caller's buffer.
                    key.open_into(nonce, &self.aad, payload, plain, tag)
                        .map_err(|_| OpenError::Authentication)?;
                    if let Err(e) = check_raw_len(plain.len(), plain_len as usize) {
                        plain.clear();
                        return Err(OpenError::Decompression(e));
                    }
                    return Ok(());
                }
                key.open_into(nonce, &self.aad, payload, &mut self.work, tag)
                    .map_err(|_| OpenError::Authentication)?;
                &self.work
            }
        };
        let r = self
            .dec
            .decompress(compression, stored, plain_len as usize, plain);
        if r.is_err() {
            plain.clear();
        }
        r.map_err(OpenError::Decompression)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incompressible_data_is_stored_raw_and_text_is_compressed() {
        let mut c = Compressor::new(Compression::Zstd(3)).unwrap();
        let mut d = Decompressor::new().unwrap();
        let mut out = Vec::new();
        let mut back = Vec::new();
        let text = b"tapevault ".repeat(1000);
        assert_eq!(c.compress(&text, &mut out).unwrap(), WireCompression::Zstd);
        assert!(out.len() < text.len() / 10);
        d.decompress(WireCompression::Zstd, &out, text.len(), &mut back)
            .unwrap();
        assert_eq!(back, text);
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let kind = c.compress(&noise, &mut out).unwrap();
        if kind == WireCompression::None {
            assert_eq!(out, noise);
        }
        let mut compressed = Vec::new();
        c.compress(&text, &mut compressed).unwrap();
        let half = &compressed[..compressed.len() / 2];
        assert!(d
            .decompress(WireCompression::Zstd, half, text.len(), &mut back)
            .is_err());
    }
}
