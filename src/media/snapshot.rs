//! The catalog snapshot tape file (header, chunks, trailer, filemark) that a backup
//! session and `catalog backup` write, so the media carry their own catalog.

use tape_formats::{
    encode_snapshot_chunk, snapshot_digest, BlockSink, ChunkFields, Cipher, RecordCrypto,
    SnapshotHeader, SnapshotTrailer,
};
use uuid::Uuid;

use crate::catalog;
use crate::codec::{Compressor, Sealer};
use crate::error::{Error, Result};
use crate::media::DriveSink;

/// Write `plain` (a catalog snapshot document) as one tape file at the sink's position:
/// zstd-compressed chunks sized to the drive's largest block, each sealed when a
/// `sealer` is given, then the trailer with the snapshot digest and a filemark. Returns
/// the stored bytes of the chunks.
pub fn write_snapshot_file(
    sink: &mut DriveSink,
    plain: &[u8],
    session: Uuid,
    media_set_uuid: [u8; 16],
    time: i64,
    mut sealer: Option<&mut Sealer>,
) -> Result<u64> {
    let fmt_err =
        |e: tape_formats::FormatError| Error::Failed(format!("encoding the catalog snapshot: {e}"));
    // Chunks fit the drive's largest block, as data records do.
    let max_block = sink
        .drive
        .max_block_size()
        .min(tape_formats::MAX_BLOCK_SIZE);
    let chunk = crate::backup::record_data_size_for(max_block)
        .unwrap_or(4096)
        .min(tape_formats::DEFAULT_SNAPSHOT_CHUNK_SIZE as usize);
    let mut buf = Vec::new();
    SnapshotHeader {
        session_uuid: *session.as_bytes(),
        media_set_uuid,
        time,
        compression: tape_formats::Compression::Zstd,
        cipher: sealer.as_deref().map_or(Cipher::None, Sealer::cipher),
        total_plain_len: plain.len() as u64,
        chunk_data_size: chunk as u32,
    }
    .encode(&mut buf)
    .map_err(fmt_err)?;
    sink.write_block(&buf)?;
    let mut comp = Compressor::new(catalog::Compression::Zstd(3))?;
    let mut stored = Vec::new();
    let mut count = 0u64;
    let mut stored_total = 0u64;
    for (i, piece) in plain.chunks(chunk).enumerate() {
        let compression = comp.compress(piece, &mut stored)?;
        let mut fields = ChunkFields {
            session_uuid: *session.as_bytes(),
            sequence: i as u64,
            compression,
            crypto: RecordCrypto::None,
            plain_len: piece.len() as u32,
        };
        if let Some(s) = sealer.as_deref_mut() {
            s.seal_chunk(&mut fields, &mut stored)?;
        }
        buf.clear();
        encode_snapshot_chunk(&fields, &stored, &mut buf).map_err(fmt_err)?;
        sink.write_block(&buf)?;
        stored_total += stored.len() as u64;
        count += 1;
    }
    buf.clear();
    SnapshotTrailer {
        session_uuid: *session.as_bytes(),
        chunk_count: count,
        total_plain_len: plain.len() as u64,
        digest: snapshot_digest(sealer.as_ref().map(|s| s.key.digest_key()), plain),
    }
    .encode(&mut buf)
    .map_err(fmt_err)?;
    sink.write_block(&buf)?;
    sink.write_filemark()?;
    Ok(stored_total)
}
