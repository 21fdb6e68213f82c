//! The catalog snapshot tape file (header, chunks, trailer, filemark) that a backup
//! session and `catalog backup` write, so the media carry their own catalog.

use std::io::Read;

use tape_formats::{
    encode_snapshot_chunk, BlockSink, ChunkFields, Cipher, RecordCrypto, SnapshotDigest,
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
    sealer: Option<&mut Sealer>,
) -> Result<u64> {
    let mut r = plain;
    write_snapshot_file_from(
        sink,
        &mut r,
        plain.len() as u64,
        session,
        media_set_uuid,
        time,
        sealer,
    )
}

/// [`write_snapshot_file`] of a document read from `plain` (exactly `len` bytes, e.g. a
/// spool file the snapshot was written to): one chunk is held at a time, whatever the
/// size of the snapshot.
pub fn write_snapshot_file_from(
    sink: &mut DriveSink,
    plain: &mut dyn Read,
    len: u64,
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
        total_plain_len: len,
        chunk_data_size: chunk as u32,
    }
    .encode(&mut buf)
    .map_err(fmt_err)?;
    sink.write_block(&buf)?;
    let mut comp = Compressor::new(catalog::Compression::Zstd(3))?;
    let mut stored = Vec::new();
    let mut count = 0u64;
    let mut stored_total = 0u64;
    let mut digest = SnapshotDigest::new(sealer.as_ref().map(|s| s.key.digest_key()));
    let mut piece = vec![0u8; chunk];
    let mut left = len;
    let mut i = 0u64;
    while left > 0 {
        let n = (chunk as u64).min(left) as usize;
        let piece = &mut piece[..n];
        plain.read_exact(piece).map_err(|e| {
            Error::Failed(format!(
                "reading the catalog snapshot back from its spool file ({left} of {len} bytes left): {e}"
            ))
        })?;
        left -= n as u64;
        digest.update(piece);
        let compression = comp.compress(piece, &mut stored)?;
        let mut fields = ChunkFields {
            session_uuid: *session.as_bytes(),
            sequence: i,
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
        i += 1;
    }
    buf.clear();
    SnapshotTrailer {
        session_uuid: *session.as_bytes(),
        chunk_count: count,
        total_plain_len: len,
        digest: digest.finalize(),
    }
    .encode(&mut buf)
    .map_err(fmt_err)?;
    sink.write_block(&buf)?;
    sink.write_filemark()?;
    Ok(stored_total)
}

/// A catalog snapshot document being written or read back, held in an unnamed
/// temporary file (created unlinked where the system allows, so a killed process
/// leaves nothing behind) instead of memory: a full snapshot of a large media set is
/// about 900 bytes per image.
pub struct Spool {
    file: std::fs::File,
}

impl Spool {
    /// An empty spool in `dir` (the home: the same file system as the catalog).
    pub fn new(dir: &std::path::Path) -> Result<Spool> {
        let file = tempfile::tempfile_in(dir).map_err(|e| {
            Error::Failed(format!(
                "creating a temporary file in {} for the catalog snapshot: {e}",
                dir.display()
            ))
        })?;
        Ok(Spool { file })
    }

    /// Write the document with `fill` (through a buffer), replacing what the spool
    /// held; returns its length.
    pub fn fill(
        &mut self,
        fill: impl FnOnce(&mut dyn std::io::Write) -> Result<()>,
    ) -> Result<u64> {
        use std::io::{Seek, Write};
        let io =
            |e: std::io::Error| Error::Failed(format!("writing the catalog snapshot spool: {e}"));
        self.file.set_len(0).map_err(io)?;
        self.file.rewind().map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(SPOOL_BUFFER, &mut self.file);
        fill(&mut w)?;
        w.flush().map_err(io)?;
        drop(w);
        self.file.stream_position().map_err(io)
    }

    /// The file, emptied, to write a document into from its start.
    pub fn file_mut(&mut self) -> Result<&mut std::fs::File> {
        use std::io::Seek;
        let io =
            |e: std::io::Error| Error::Failed(format!("writing the catalog snapshot spool: {e}"));
        self.file.set_len(0).map_err(io)?;
        self.file.rewind().map_err(io)?;
        Ok(&mut self.file)
    }

    /// A buffered reader over the whole document, from its start.
    pub fn reader(&mut self) -> Result<std::io::BufReader<&mut std::fs::File>> {
        use std::io::Seek;
        self.file
            .rewind()
            .map_err(|e| Error::Failed(format!("reading the catalog snapshot spool: {e}")))?;
        Ok(std::io::BufReader::with_capacity(
            SPOOL_BUFFER,
            &mut self.file,
        ))
    }
}

/// Buffer between a snapshot document and its spool file.
pub const SPOOL_BUFFER: usize = 256 << 10;
