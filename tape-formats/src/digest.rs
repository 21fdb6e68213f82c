//! Content digests. Defined so that writer, verifier and a stranger with only
//! docs/FORMAT.md compute the same 32 bytes.
use crate::{Extent, ExtentKind, FormatError};

/// BLAKE3 (default 32-byte output) over, for every data record of the image in
/// sequence order and for every extent of the record in order:
/// `offset (u64 LE) || length (u64 LE) || kind (u8: 0 data, 1 zero) || plain bytes`,
/// where the plain bytes are present only for data extents (the decompressed,
/// decrypted payload slice belonging to that extent). Zero extents contribute their
/// 17-byte descriptor only.
///
/// Unkeyed for a clear image ([`ContentDigest::new`]); keyed with [`digest_key`] of the
/// record key for an encrypted one ([`ContentDigest::keyed`]), so a trailer on tape does
/// not let anyone without the key confirm a guess of the plain data.
#[derive(Clone, Default)]
pub struct ContentDigest {
    hasher: blake3::Hasher,
}

impl std::fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentDigest")
            .field("so_far", &self.finalize())
            .finish()
    }
}

/// Context string of [`digest_key`] (BLAKE3 `derive_key` mode).
pub const DIGEST_KEY_CONTEXT: &str = "tapevault 2026-11 content digest key v1";

/// The key of the content and snapshot digests of a stream encrypted under
/// `record_key`: `BLAKE3-derive_key(DIGEST_KEY_CONTEXT, record_key)`. Domain-separated
/// from the record key's other uses (AES-GCM, the fingerprint).
pub fn digest_key(record_key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(DIGEST_KEY_CONTEXT, record_key)
}

impl ContentDigest {
    /// The digest of a clear image.
    pub fn new() -> Self {
        Self::default()
    }

    /// The digest of an encrypted image: BLAKE3 in keyed mode with `key` (from
    /// [`digest_key`]).
    pub fn keyed(key: &[u8; 32]) -> Self {
        ContentDigest {
            hasher: blake3::Hasher::new_keyed(key),
        }
    }

    /// [`ContentDigest::keyed`] with `key` when given, else [`ContentDigest::new`].
    pub fn with_key(key: Option<&[u8; 32]>) -> Self {
        key.map_or_else(Self::new, Self::keyed)
    }

    /// Add one extent. `data` must be exactly `extent.length` bytes for a data extent and
    /// empty for a zero extent.
    pub fn update_extent(&mut self, extent: &Extent, data: &[u8]) -> Result<(), FormatError> {
        let expect = match extent.kind {
            ExtentKind::Data => extent.length,
            ExtentKind::Zero => 0,
        };
        if data.len() as u64 != expect {
            return Err(FormatError::Inconsistent {
                record: "content digest",
                reason: "data length does not match the extent",
            });
        }
        self.hasher.update(&extent.offset.to_le_bytes());
        self.hasher.update(&extent.length.to_le_bytes());
        self.hasher.update(&[extent.kind as u8]);
        self.hasher.update(data);
        Ok(())
    }

    /// Add a whole record: `plain` is the concatenated bytes of its data extents.
    pub fn update_record(&mut self, extents: &[Extent], plain: &[u8]) -> Result<(), FormatError> {
        let mut rest = plain;
        for e in extents {
            let n = match e.kind {
                ExtentKind::Data => usize::try_from(e.length).unwrap_or(usize::MAX),
                ExtentKind::Zero => 0,
            };
            if n > rest.len() {
                return Err(FormatError::Inconsistent {
                    record: "content digest",
                    reason: "plain data shorter than the record's data extents",
                });
            }
            let (this, tail) = rest.split_at(n);
            self.update_extent(e, this)?;
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(FormatError::Inconsistent {
                record: "content digest",
                reason: "plain data longer than the record's data extents",
            });
        }
        Ok(())
    }

    /// The digest of everything added so far (does not consume; more may be added).
    pub fn finalize(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

/// Digest of a catalog snapshot: BLAKE3 of the plain snapshot bytes, keyed with
/// [`digest_key`] of the record key when the snapshot is encrypted (`key` given).
pub fn snapshot_digest(key: Option<&[u8; 32]>, plain: &[u8]) -> [u8; 32] {
    let mut d = SnapshotDigest::new(key);
    d.update(plain);
    d.finalize()
}

/// [`snapshot_digest`] computed piece by piece, for a snapshot streamed to or from the
/// media without holding it whole.
#[derive(Clone)]
pub struct SnapshotDigest {
    hasher: blake3::Hasher,
}

impl SnapshotDigest {
    pub fn new(key: Option<&[u8; 32]>) -> SnapshotDigest {
        SnapshotDigest {
            hasher: match key {
                Some(k) => blake3::Hasher::new_keyed(k),
                None => blake3::Hasher::new(),
            },
        }
    }

    pub fn update(&mut self, plain: &[u8]) {
        self.hasher.update(plain);
    }

    /// The digest of everything added so far.
    pub fn finalize(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}
