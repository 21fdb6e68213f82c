//! Content digests. Defined so that writer, verifier and a stranger with only
//! docs/FORMAT.md compute the same 32 bytes.
use crate::{Extent, ExtentKind, FormatError};

/// Which content digest an image carries, named by the format major of its header and
/// trailer blocks (docs/FORMAT.md 4.4). Both are BLAKE3 (keyed for an encrypted image) of
/// one byte string built from every data record of the image in sequence order and, in
/// each, every extent in order: the extent's 17-byte descriptor
/// `offset (u64 LE) || length (u64 LE) || kind (u8: 0 data, 1 zero)`, followed, for a data
/// extent, by
///
/// * [`DigestScheme::Bytes`] (major 1): the extent's plain bytes;
/// * [`DigestScheme::Pieces`] (major 2): the 32-byte BLAKE3 (unkeyed) of each **piece**
///   of the extent, in order, where the pieces are the extent cut at every multiple of
///   [`DIGEST_PIECE_SIZE`] of the disk offset.
///
/// Zero extents contribute their descriptor only. Pieces let a writer hash each byte
/// once: the piece digests are independent (hashed in parallel) and, on the 64 KiB grid
/// of the block digest lists, are the blocks' digests too. Both schemes give the same
/// digest for an image without records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestScheme {
    /// Format major 1: the extents' plain bytes.
    Bytes,
    /// Format major 2: the BLAKE3 of each 64 KiB-grid piece of the extents.
    Pieces,
}

/// The grid [`DigestScheme::Pieces`] cuts data extents on: 64 KiB of disk offset.
pub const DIGEST_PIECE_SIZE: u64 = 64 * 1024;

impl DigestScheme {
    /// The scheme tapevault writes new images with.
    pub const NEWEST: DigestScheme = DigestScheme::Pieces;

    /// The format major of the image header and trailer blocks of an image carrying
    /// this scheme.
    pub fn major(self) -> u16 {
        match self {
            DigestScheme::Bytes => 1,
            DigestScheme::Pieces => 2,
        }
    }

    /// The scheme of an image whose header or trailer has format major `major`.
    pub fn of_major(major: u16) -> Option<DigestScheme> {
        match major {
            1 => Some(DigestScheme::Bytes),
            2 => Some(DigestScheme::Pieces),
            _ => None,
        }
    }
}

/// The pieces of a data extent at `offset` of `length` bytes under
/// [`DigestScheme::Pieces`]: `(disk offset, length)`, cut at every multiple of
/// [`DIGEST_PIECE_SIZE`].
pub fn pieces(offset: u64, length: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = offset.saturating_add(length);
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let next = ((pos / DIGEST_PIECE_SIZE).saturating_add(1))
            .saturating_mul(DIGEST_PIECE_SIZE)
            .min(end);
        let piece = (pos, next - pos);
        pos = next;
        Some(piece)
    })
}

/// The digest of one piece's plain bytes (unkeyed BLAKE3), as [`DigestScheme::Pieces`]
/// feeds it.
pub fn piece_digest(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// The content digest of an image, computed record by record ([`DigestScheme`] says
/// over what).
///
/// Unkeyed for a clear image; keyed with [`digest_key`] of the record key for an
/// encrypted one ([`ContentDigest::keyed`]), so a trailer on tape does not let anyone
/// without the key confirm a guess of the plain data.
#[derive(Clone)]
pub struct ContentDigest {
    hasher: blake3::Hasher,
    scheme: DigestScheme,
}

impl std::fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentDigest")
            .field("scheme", &self.scheme)
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

const CONTENT_DIGEST: &str = "content digest";

impl ContentDigest {
    /// The digest of a clear image.
    pub fn new(scheme: DigestScheme) -> Self {
        ContentDigest {
            hasher: blake3::Hasher::new(),
            scheme,
        }
    }

    /// The digest of an encrypted image: BLAKE3 in keyed mode with `key` (from
    /// [`digest_key`]).
    pub fn keyed(scheme: DigestScheme, key: &[u8; 32]) -> Self {
        ContentDigest {
            hasher: blake3::Hasher::new_keyed(key),
            scheme,
        }
    }

    /// [`ContentDigest::keyed`] with `key` when given, else [`ContentDigest::new`].
    pub fn with_key(scheme: DigestScheme, key: Option<&[u8; 32]>) -> Self {
        match key {
            Some(k) => Self::keyed(scheme, k),
            None => Self::new(scheme),
        }
    }

    /// The scheme this digest follows.
    pub fn scheme(&self) -> DigestScheme {
        self.scheme
    }

    fn descriptor(&mut self, extent: &Extent) {
        self.hasher.update(&extent.offset.to_le_bytes());
        self.hasher.update(&extent.length.to_le_bytes());
        self.hasher.update(&[extent.kind as u8]);
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
                record: CONTENT_DIGEST,
                reason: "data length does not match the extent",
            });
        }
        self.descriptor(extent);
        match self.scheme {
            DigestScheme::Bytes => {
                self.hasher.update(data);
            }
            DigestScheme::Pieces => {
                let mut at = 0usize;
                for (_, len) in pieces(extent.offset, data.len() as u64) {
                    let piece = &data[at..at + len as usize];
                    self.hasher.update(&piece_digest(piece));
                    at += len as usize;
                }
            }
        }
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
                    record: CONTENT_DIGEST,
                    reason: "plain data shorter than the record's data extents",
                });
            }
            let (this, tail) = rest.split_at(n);
            self.update_extent(e, this)?;
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(FormatError::Inconsistent {
                record: CONTENT_DIGEST,
                reason: "plain data longer than the record's data extents",
            });
        }
        Ok(())
    }

    /// Add a whole record of a [`DigestScheme::Pieces`] digest from its piece digests
    /// ([`piece_digest`] of each of [`pieces`] of its data extents, in order), computed
    /// elsewhere (in parallel): the same result as [`Self::update_record`] with the
    /// plain bytes, without reading them.
    pub fn update_record_pieces(
        &mut self,
        extents: &[Extent],
        piece_digests: &[[u8; 32]],
    ) -> Result<(), FormatError> {
        if self.scheme != DigestScheme::Pieces {
            return Err(FormatError::Inconsistent {
                record: CONTENT_DIGEST,
                reason: "piece digests given for a digest over the plain bytes",
            });
        }
        let mut rest = piece_digests;
        for e in extents {
            self.descriptor(e);
            if e.kind == ExtentKind::Data {
                for _ in pieces(e.offset, e.length) {
                    let Some((d, tail)) = rest.split_first() else {
                        return Err(FormatError::Inconsistent {
                            record: CONTENT_DIGEST,
                            reason:
                                "fewer piece digests than the record's data extents have pieces",
                        });
                    };
                    self.hasher.update(d);
                    rest = tail;
                }
            }
        }
        if !rest.is_empty() {
            return Err(FormatError::Inconsistent {
                record: CONTENT_DIGEST,
                reason: "more piece digests than the record's data extents have pieces",
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(offset: u64, length: u64) -> Extent {
        Extent {
            offset,
            length,
            kind: ExtentKind::Data,
        }
    }

    #[test]
    fn pieces_cut_at_every_64_kib_of_disk_offset() {
        let p = DIGEST_PIECE_SIZE;
        assert_eq!(pieces(0, 0).count(), 0);
        assert_eq!(pieces(0, p).collect::<Vec<_>>(), [(0, p)]);
        assert_eq!(
            pieces(p - 10, p + 20).collect::<Vec<_>>(),
            [(p - 10, 10), (p, p), (2 * p, 10)]
        );
        assert_eq!(pieces(3 * p + 1, 5).collect::<Vec<_>>(), [(3 * p + 1, 5)]);
    }

    #[test]
    fn the_schemes_follow_their_definitions() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let e = data(DIGEST_PIECE_SIZE - 100, bytes.len() as u64);
        let z = Extent {
            offset: 1 << 30,
            length: 4096,
            kind: ExtentKind::Zero,
        };
        let descriptor = |e: &Extent, h: &mut blake3::Hasher| {
            h.update(&e.offset.to_le_bytes());
            h.update(&e.length.to_le_bytes());
            h.update(&[e.kind as u8]);
        };
        // Bytes: descriptor then the bytes.
        let mut want = blake3::Hasher::new();
        descriptor(&e, &mut want);
        want.update(&bytes);
        descriptor(&z, &mut want);
        let mut d = ContentDigest::new(DigestScheme::Bytes);
        d.update_record(&[e, z], &bytes).unwrap();
        assert_eq!(d.finalize(), *want.finalize().as_bytes());
        // Pieces: descriptor then the BLAKE3 of 100 bytes, three whole 64 KiB pieces and
        // the rest.
        let cuts = [
            0usize,
            100,
            100 + 65536,
            100 + 2 * 65536,
            100 + 3 * 65536,
            bytes.len(),
        ];
        let mut want = blake3::Hasher::new();
        descriptor(&e, &mut want);
        for w in cuts.windows(2) {
            want.update(blake3::hash(&bytes[w[0]..w[1]]).as_bytes());
        }
        descriptor(&z, &mut want);
        let mut d = ContentDigest::new(DigestScheme::Pieces);
        d.update_record(&[e, z], &bytes).unwrap();
        assert_eq!(d.finalize(), *want.finalize().as_bytes());
        // Keyed: the same bytes, keyed.
        let key = [9u8; 32];
        let mut k = ContentDigest::keyed(DigestScheme::Pieces, &key);
        k.update_record(&[e, z], &bytes).unwrap();
        assert_ne!(k.finalize(), d.finalize());
        // No records: the same for both schemes.
        assert_eq!(
            ContentDigest::new(DigestScheme::Bytes).finalize(),
            ContentDigest::new(DigestScheme::Pieces).finalize()
        );
    }

    #[test]
    fn piece_digests_must_match_the_extents() {
        let e = [data(0, 2 * DIGEST_PIECE_SIZE)];
        let mut d = ContentDigest::new(DigestScheme::Pieces);
        assert!(d.update_record_pieces(&e, &[[0; 32]]).is_err());
        assert!(d.update_record_pieces(&e, &[[0; 32]; 3]).is_err());
        let mut b = ContentDigest::new(DigestScheme::Bytes);
        assert!(b.update_record_pieces(&e, &[[0; 32]; 2]).is_err());
    }

    proptest! {
        #[test]
        fn piece_digests_give_the_digest_of_the_bytes(
            spans in proptest::collection::vec((0u64..200_000, 0u64..150_000, any::<bool>()), 1..6),
            keyed in any::<bool>(),
        ) {
            // Extents in disk order, each after the last.
            let mut at = 0u64;
            let mut extents = Vec::new();
            for (gap, len, zero) in spans {
                let offset = at + gap;
                let length = len.max(1);
                extents.push(Extent {
                    offset,
                    length,
                    kind: if zero { ExtentKind::Zero } else { ExtentKind::Data },
                });
                at = offset + length;
            }
            let plain: Vec<u8> = extents
                .iter()
                .filter(|e| e.kind == ExtentKind::Data)
                .flat_map(|e| (e.offset..e.offset + e.length).map(|i| (i % 253) as u8))
                .collect();
            let mut digests = Vec::new();
            let mut pos = 0usize;
            for e in extents.iter().filter(|e| e.kind == ExtentKind::Data) {
                for (_, len) in pieces(e.offset, e.length) {
                    digests.push(piece_digest(&plain[pos..pos + len as usize]));
                    pos += len as usize;
                }
            }
            let key = keyed.then_some([3u8; 32]);
            let mut a = ContentDigest::with_key(DigestScheme::Pieces, key.as_ref());
            a.update_record(&extents, &plain).unwrap();
            let mut b = ContentDigest::with_key(DigestScheme::Pieces, key.as_ref());
            b.update_record_pieces(&extents, &digests).unwrap();
            prop_assert_eq!(a.finalize(), b.finalize());
        }
    }
}
