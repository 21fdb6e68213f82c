//! Content digests. Defined so that writer, verifier and a stranger with only
//! docs/FORMAT.md compute the same 32 bytes.
use crate::{Extent, ExtentKind, FormatError};

/// BLAKE3 (unkeyed, default 32-byte output) over, for every data record of the image in
/// sequence order and for every extent of the record in order:
/// `offset (u64 LE) || length (u64 LE) || kind (u8: 0 data, 1 zero) || plain bytes`,
/// where the plain bytes are present only for data extents (the decompressed,
/// decrypted payload slice belonging to that extent). Zero extents contribute their
/// 17-byte descriptor only.
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

impl ContentDigest {
    pub fn new() -> Self {
        Self::default()
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

/// Digest of a catalog snapshot: BLAKE3 of the plain snapshot bytes.
pub fn snapshot_digest(plain: &[u8]) -> [u8; 32] {
    *blake3::hash(plain).as_bytes()
}
