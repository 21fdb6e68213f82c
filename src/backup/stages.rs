//! What flows through the backup pipeline: chunks read from the disk (stage 1) and
//! records prepared for tape (stage 2: compressed, encrypted, checksummed), and the
//! transform workers that turn the one into the other.

use tape_formats::DataFields;

use std::sync::atomic::{AtomicU32, Ordering};

use tape_formats::{
    Compression as WireCompression, Extent, ExtentKind, RecordCrypto, DIGEST_PIECE_SIZE,
};

use crate::codec::{Compressor, Sealer};
use crate::error::Result;
use crate::source::hashscan::{block_len, Digest, DigestFeed, DigestListError};

/// A chunk read from the disk (pipeline stage 1 output).
#[derive(Default)]
pub(super) struct ReadChunk {
    pub(super) extents: Vec<Extent>,
    pub(super) data: Vec<u8>,
}

/// How a chunk's data extents are cut into pieces: at every [`DIGEST_PIECE_SIZE`] of
/// disk offset ([`tape_formats::pieces`]), the pieces whose digests make the content
/// digest (docs/FORMAT.md 4.4). `f(offset, length, at in the data, whole)`: `whole` when
/// the piece is a whole block of a digest list in `block_size` blocks (from a block
/// boundary, the block's full length; the disk's partial last block counts whole),
/// which takes the piece's digest as the block's. Transform and the digest list's feed
/// cut the same way, so the digests and bytes line up.
fn for_each_data_piece<E>(
    extents: &[Extent],
    block_size: u64,
    disk_size: u64,
    mut f: impl FnMut(u64, u64, usize, bool) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut at = 0usize;
    for e in extents.iter().filter(|e| e.kind == ExtentKind::Data) {
        for (pos, len) in tape_formats::pieces(e.offset, e.length) {
            let whole = block_size == DIGEST_PIECE_SIZE
                && pos % DIGEST_PIECE_SIZE == 0
                && len == block_len(pos / DIGEST_PIECE_SIZE, DIGEST_PIECE_SIZE, disk_size);
            f(pos, len, at, whole)?;
            at += len as usize;
        }
    }
    Ok(())
}

/// What a transform worker computed from one chunk's data pieces: each byte is hashed
/// once, for both the content digest and the block digest list.
#[derive(Default)]
pub(super) struct ChunkDigests {
    /// The digest of every data piece, in disk order: the content digest's
    /// ([`tape_formats::ContentDigest::update_record_pieces`]) and, for whole blocks, the digest
    /// list's.
    pub(super) pieces: Vec<Digest>,
    /// For the digest list: the bytes of the pieces that are not whole blocks,
    /// concatenated in disk order.
    pub(super) edge: Vec<u8>,
}

impl ChunkDigests {
    pub(super) fn clear(&mut self) {
        self.pieces.clear();
        self.edge.clear();
    }

    /// The piece digests of a chunk and, with a digest list in `(block size, disk
    /// size)`, the bytes of its pieces that are not whole blocks.
    fn compute(&mut self, extents: &[Extent], data: &[u8], list: Option<(u64, u64)>) {
        self.clear();
        let (block_size, disk_size) = list.unwrap_or((DIGEST_PIECE_SIZE, u64::MAX));
        let _ = for_each_data_piece::<()>(extents, block_size, disk_size, |_, len, at, whole| {
            let bytes = &data[at..at + len as usize];
            self.pieces.push(tape_formats::piece_digest(bytes));
            if list.is_some() && !whole {
                self.edge.extend_from_slice(bytes);
            }
            Ok(())
        });
    }

    /// Feeds a prepared record's blocks to the digest list, in disk order: zero
    /// extents as zeros (whole zero blocks take the precomputed digest, unhashed),
    /// whole data blocks by the digests computed, the rest by their bytes.
    pub(super) fn feed(
        &self,
        extents: &[Extent],
        feed: &mut DigestFeed,
        block_size: u64,
        disk_size: u64,
    ) -> std::result::Result<(), DigestListError> {
        let mut pieces = self.pieces.iter();
        let mut edge_at = 0usize;
        for e in extents {
            if e.kind == ExtentKind::Zero {
                feed.feed_zero(e.offset, e.length)?;
                continue;
            }
            let one = std::slice::from_ref(e);
            for_each_data_piece(one, block_size, disk_size, |pos, len, _, is_whole| {
                let d = pieces.next().ok_or_else(|| {
                    DigestListError::Feed(format!("no digest was computed for the piece at {pos}"))
                })?;
                if is_whole {
                    feed.feed_digest(pos, len, d)
                } else {
                    let bytes =
                        self.edge
                            .get(edge_at..edge_at + len as usize)
                            .ok_or_else(|| {
                                DigestListError::Feed(format!(
                                    "the bytes of the block piece at {pos} were not kept"
                                ))
                            })?;
                    edge_at += len as usize;
                    feed.feed_data(pos, bytes)
                }
            })?;
        }
        Ok(())
    }
}

/// A record ready for framing (pipeline stage 2 output).
#[derive(Default)]
pub(super) struct Prepared {
    pub(super) extents: Vec<Extent>,
    /// The record's block as it goes to tape: `header_room` bytes for the header (framed
    /// by the writer, which knows the final part and sequence), then the stored payload,
    /// unless the payload is `plain` itself (`payload_in_plain`): then only the header
    /// room, and the drive takes header and payload as two parts of one block.
    pub(super) block: Vec<u8>,
    /// The stored payload is the plain data as read (neither compressed nor encrypted),
    /// left in `plain` instead of copied into `block`.
    pub(super) payload_in_plain: bool,
    pub(super) header_room: usize,
    /// CRC-32 of the stored payload.
    pub(super) payload_crc: u32,
    /// zstd output before it is placed in `block`.
    pub(super) compressed: Vec<u8>,
    pub(super) compression: Option<WireCompression>,
    pub(super) plain_len: u32,
    pub(super) data_bytes: u64,
    pub(super) zero_bytes: u64,
    /// Content digest of the image through this record (set by the writer's side,
    /// which takes the records in order).
    pub(super) digest: [u8; 32],
    /// The record's plain data (the read buffer, passed on without a copy): the
    /// content digest of an image with the bytes digest (a copy of an image of format
    /// major 1) is computed over it in record order on the writer's side.
    pub(super) plain: Vec<u8>,
    /// The record's piece digests (the content digest's and the digest list's), and the
    /// digest list's edge bytes.
    pub(super) blocks: ChunkDigests,
    /// With encryption: the payload is already sealed (in the transform stage) for these
    /// fields; the writer re-seals if the record lands in another part or sequence.
    pub(super) sealed: Option<DataFields>,
}

impl Prepared {
    /// The stored (compressed, encrypted) payload.
    pub(super) fn stored(&self) -> &[u8] {
        if self.payload_in_plain {
            &self.plain
        } else {
            &self.block[self.header_room..]
        }
    }

    /// Bytes of the block on tape (header and stored payload).
    pub(super) fn block_len(&self) -> usize {
        self.header_room + self.stored().len()
    }
}

/// One transform worker (pipeline stage 2): compresses a chunk when zstd makes it
/// smaller, seals it when the pool is encrypted, writing the payload straight into the
/// block that goes to tape after room for its header, and checksums it. With several
/// workers, record i goes to worker i % n: each knows its own sequence numbers.
pub(super) struct TransformWorker<'a> {
    pub(super) compressor: Compressor,
    /// Reused buffer for the associated data of a record being sealed.
    pub(super) aad: Vec<u8>,
    /// Sequence number of the next record this worker prepares.
    pub(super) next_sequence: u64,
    /// How far the sequence moves between this worker's records (the worker count).
    pub(super) step: u64,
    pub(super) sealer: Option<&'a Sealer>,
    /// The image part being written now: records are sealed for it (the writer seals
    /// again the few prepared ahead when early warning starts a new part).
    pub(super) part_now: &'a AtomicU32,
    pub(super) image_uuid: [u8; 16],
    /// Hash the chunk's pieces (for a content digest of pieces, or a digest list).
    pub(super) pieces: bool,
    /// With a digest list: the tracking block size and the disk's size.
    pub(super) blocks: Option<(u64, u64)>,
}

impl TransformWorker<'_> {
    pub(super) fn prepare(&mut self, c: &mut ReadChunk, p: &mut Prepared) -> Result<()> {
        // The piece digests (independent pieces, hashed in parallel by the workers) are
        // computed here, off the reader's and the writer's threads.
        if self.pieces || self.blocks.is_some() {
            p.blocks.compute(&c.extents, &c.data, self.blocks);
        } else {
            p.blocks.clear();
        }
        p.extents.clear();
        p.extents.extend_from_slice(&c.extents);
        p.plain_len = c.data.len() as u32;
        p.data_bytes = c.data.len() as u64;
        p.zero_bytes = c
            .extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Zero)
            .map(|e| e.length)
            .sum();
        // Stored as read unless zstd makes it smaller. The payload goes straight into the
        // block to be written (encrypted on the way when the pool is), and is checksummed
        // here, so the writer only frames the header.
        let compressed = self.compressor.try_compress(&c.data, &mut p.compressed)?;
        let (compression, payload) = if compressed {
            (WireCompression::Zstd, &p.compressed[..])
        } else {
            (WireCompression::None, &c.data[..])
        };
        p.compression = Some(compression);
        p.header_room = tape_formats::data_header_len(p.extents.len());
        if !compressed && self.sealer.is_none() {
            // Stored as read: the payload stays in the read buffer, which goes on as
            // `plain`; the block holds only the header's room (written as two parts).
            p.block.resize(p.header_room, 0);
            p.payload_in_plain = true;
            p.sealed = None;
            p.payload_crc = crc32fast::hash(&c.data);
            std::mem::swap(&mut c.data, &mut p.plain);
            self.next_sequence += self.step;
            return Ok(());
        }
        p.payload_in_plain = false;
        let len = p.header_room + payload.len();
        // A recycled block is overwritten, not cleared: it only grows when needed.
        if p.block.len() != len {
            p.block.resize(len, 0);
        }
        let out = &mut p.block[p.header_room..];
        p.sealed = match self.sealer {
            Some(s) => {
                let mut fields = DataFields {
                    image_uuid: self.image_uuid,
                    part: self.part_now.load(Ordering::Acquire),
                    sequence: self.next_sequence,
                    compression,
                    crypto: RecordCrypto::None,
                    plain_len: p.plain_len,
                };
                s.seal_data_from(&mut fields, &p.extents, payload, out, &mut self.aad)?;
                Some(fields)
            }
            None => {
                out.copy_from_slice(payload);
                None
            }
        };
        p.payload_crc = crc32fast::hash(&p.block[p.header_room..]);
        // The plain data goes on with the record (for the content digest); the reader
        // gets the record's old buffer back to read into.
        std::mem::swap(&mut c.data, &mut p.plain);
        self.next_sequence += self.step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BS: u64 = 64 * 1024;

    /// The digest list a feed given every byte in order writes, and the one written
    /// from the workers' block digests and edge bytes, chunk by chunk.
    fn both_lists(
        disk_size: u64,
        cuts: &[u64],
        zero_pieces: &[bool],
        seed: u8,
    ) -> (Vec<u8>, Vec<u8>) {
        both_lists_in(BS, disk_size, cuts, zero_pieces, seed)
    }

    /// As [`both_lists`] for a digest list in `lbs`-byte blocks (not the pieces' 64 KiB:
    /// then every piece goes to the list as bytes).
    fn both_lists_in(
        lbs: u64,
        disk_size: u64,
        cuts: &[u64],
        zero_pieces: &[bool],
        seed: u8,
    ) -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let disk: Vec<u8> = (0..disk_size)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect();
        // Pieces: cut at block boundaries and at the chunk cuts; each Data or Zero.
        let mut bounds: Vec<u64> = (0..=disk_size.div_ceil(BS))
            .map(|b| (b * BS).min(disk_size))
            .collect();
        bounds.extend(cuts.iter().map(|c| c % disk_size.max(1)));
        bounds.sort_unstable();
        bounds.dedup();
        let mut chunk_ends: Vec<u64> = cuts
            .iter()
            .map(|c| c % disk_size.max(1))
            .filter(|&c| c > 0)
            .collect();
        chunk_ends.push(disk_size);
        chunk_ends.sort_unstable();
        chunk_ends.dedup();

        let direct = dir.path().join("direct");
        let mut a = DigestFeed::new(&direct, lbs, disk_size, None).unwrap();
        let pooled = dir.path().join("pooled");
        let mut b = DigestFeed::new(&pooled, lbs, disk_size, None).unwrap();
        let mut k = 0usize;
        let mut start = 0u64;
        for &end in &chunk_ends {
            let mut extents: Vec<Extent> = Vec::new();
            let mut data = Vec::new();
            for w in bounds
                .windows(2)
                .filter(|w| w[0] >= start && w[1] <= end && w[0] < w[1])
            {
                let (s, e) = (w[0], w[1]);
                let zero = zero_pieces
                    .get(k % zero_pieces.len().max(1))
                    .copied()
                    .unwrap_or(false);
                k += 1;
                let kind = if zero {
                    ExtentKind::Zero
                } else {
                    ExtentKind::Data
                };
                if zero {
                    a.feed_zero(s, e - s).unwrap();
                } else {
                    a.feed_data(s, &disk[s as usize..e as usize]).unwrap();
                    data.extend_from_slice(&disk[s as usize..e as usize]);
                }
                match extents.last_mut() {
                    Some(l) if l.kind == kind && l.offset + l.length == s => l.length += e - s,
                    _ => extents.push(Extent {
                        offset: s,
                        length: e - s,
                        kind,
                    }),
                }
            }
            let mut cd = ChunkDigests::default();
            cd.compute(&extents, &data, Some((lbs, disk_size)));
            // The same piece digests make the content digest of the bytes.
            let mut by_bytes = tape_formats::ContentDigest::new(tape_formats::DigestScheme::Pieces);
            by_bytes.update_record(&extents, &data).unwrap();
            let mut by_pieces =
                tape_formats::ContentDigest::new(tape_formats::DigestScheme::Pieces);
            by_pieces
                .update_record_pieces(&extents, &cd.pieces)
                .unwrap();
            assert_eq!(by_bytes.finalize(), by_pieces.finalize());
            cd.feed(&extents, &mut b, lbs, disk_size).unwrap();
            start = end;
        }
        a.finish().unwrap();
        b.finish().unwrap();
        (
            std::fs::read(direct).unwrap(),
            std::fs::read(pooled).unwrap(),
        )
    }

    #[test]
    fn block_digests_from_the_workers_make_the_list_a_direct_feed_makes() {
        // Chunks cut mid-block, a partial last block, zero and data pieces mixed.
        let (a, b) = both_lists(
            5 * BS + 1000,
            &[BS / 2, 2 * BS, 3 * BS + 7, 5 * BS + 10],
            &[false, true, false, false, true],
            3,
        );
        assert_eq!(a, b);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn block_digests_match_a_direct_feed(
            size in 1u64..(6 * BS),
            cuts in proptest::collection::vec(0u64..(6 * BS), 0..6),
            zeros in proptest::collection::vec(any::<bool>(), 1..8),
            seed in any::<u8>(),
        ) {
            let (a, b) = both_lists(size, &cuts, &zeros, seed);
            prop_assert_eq!(a, b);
            // A list in 16 KiB blocks takes every piece as bytes, and still matches.
            let (a, b) = both_lists_in(16 * 1024, size, &cuts, &zeros, seed);
            prop_assert_eq!(a, b);
        }
    }
}
