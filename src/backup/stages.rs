//! What flows through the backup pipeline: chunks read from the disk (stage 1) and
//! records prepared for tape (stage 2: compressed, encrypted, checksummed), and the
//! transform workers that turn the one into the other.

use tape_formats::DataFields;

use std::sync::atomic::{AtomicU32, Ordering};

use tape_formats::{Compression as WireCompression, Extent, ExtentKind, RecordCrypto};

use crate::codec::{Compressor, Sealer};
use crate::error::Result;

/// A chunk read from the disk (pipeline stage 1 output).
#[derive(Default)]
pub(super) struct ReadChunk {
    pub(super) extents: Vec<Extent>,
    pub(super) data: Vec<u8>,
    /// Content digest of the image through this chunk.
    pub(super) digest: [u8; 32],
}

/// A record ready for framing (pipeline stage 2 output).
#[derive(Default)]
pub(super) struct Prepared {
    pub(super) extents: Vec<Extent>,
    /// The record's block as it goes to tape: `header_room` bytes for the header (framed
    /// by the writer, which knows the final part and sequence), then the stored payload.
    pub(super) block: Vec<u8>,
    pub(super) header_room: usize,
    /// CRC-32 of the stored payload.
    pub(super) payload_crc: u32,
    /// zstd output before it is placed in `block`.
    pub(super) compressed: Vec<u8>,
    pub(super) compression: Option<WireCompression>,
    pub(super) plain_len: u32,
    pub(super) data_bytes: u64,
    pub(super) zero_bytes: u64,
    /// Content digest of the image through this record.
    pub(super) digest: [u8; 32],
    /// With encryption: the payload is already sealed (in the transform stage) for these
    /// fields; the writer re-seals if the record lands in another part or sequence.
    pub(super) sealed: Option<DataFields>,
}

impl Prepared {
    /// The stored (compressed, encrypted) payload.
    pub(super) fn stored(&self) -> &[u8] {
        &self.block[self.header_room..]
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
}

impl TransformWorker<'_> {
    pub(super) fn prepare(&mut self, c: &mut ReadChunk, p: &mut Prepared) -> Result<()> {
        p.digest = c.digest;
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
        self.next_sequence += self.step;
        Ok(())
    }
}
