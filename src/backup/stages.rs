//! What flows through the backup pipeline: chunks read from the disk (stage 1) and
//! records prepared for tape (stage 2: compressed, encrypted, checksummed).

use tape_formats::DataFields;

use tape_formats::{Compression as WireCompression, Extent};

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
