//! The fast path: a catalog snapshot tape file read back whole, authenticated and
//! checked against its digest.

use std::io::Write;

use tape_formats::{decode_block, Block, BlockSource, ReadStatus, SnapshotDigest, SnapshotHeader};

use super::positioning::goto_file;
use crate::codec::{KeyRing, Opener};
use uuid::Uuid;

use crate::error::{Context, Error, Result};
use crate::media::snapshot::{Spool, SPOOL_BUFFER};
use crate::media::DriveSource;
use tape_devices::drive::{DriveError, TapeDrive};

/// Largest catalog snapshot the fast path accepts (plain bytes). A snapshot is spooled
/// to a temporary file and merged as it is parsed, never held whole; this bounds what
/// a damaged length field can make us write (a full snapshot is about 900 bytes per
/// image: more than a million images).
pub const MAX_SNAPSHOT_LEN: u64 = 1 << 30;

/// Why a snapshot file could not be used.
#[derive(Debug, Clone)]
pub struct SnapshotTrouble(pub String);

/// A catalog snapshot read back whole, authenticated and checked against its digest.
pub struct SnapshotRead {
    pub header: SnapshotHeader,
    /// Logical block of the snapshot header.
    pub block: u64,
    /// The plain document, in an unnamed temporary file in `spool_dir`.
    pub plain: Spool,
}

/// Read the catalog snapshot in tape file `f`. Media-level trouble and damage are a
/// [`SnapshotTrouble`] (the caller falls back to a scan); a missing key is
/// [`Error::Key`]. The plain document goes to an unnamed temporary file in `spool_dir`
/// (the home) as it is read: one chunk is held at a time.
pub fn read_snapshot(
    drive: &mut dyn TapeDrive,
    f: u64,
    keys: &KeyRing,
    buf: &mut Vec<u8>,
    spool_dir: &std::path::Path,
) -> Result<std::result::Result<SnapshotRead, SnapshotTrouble>> {
    let start = goto_file(drive, f)?;
    let trouble = |s: String| Ok(Err(SnapshotTrouble(s)));
    let mut src = DriveSource::new(drive, start.block);
    let mut opener = Opener::new()?;
    let mut piece = Vec::new();
    let mut header: Option<SnapshotHeader> = None;
    let mut spool = Spool::new(spool_dir)?;
    let mut plain = std::io::BufWriter::with_capacity(SPOOL_BUFFER, spool.file_mut()?);
    let mut plain_len = 0u64;
    let mut digest: Option<SnapshotDigest> = None;
    let spool_err = |e: std::io::Error| {
        Error::Failed(format!(
            "writing the catalog snapshot of tape file {f} to a temporary file: {e}"
        ))
    };
    let mut next_seq = 0u64;
    let mut pos = 0u64;
    loop {
        let st = match src.read_block(buf) {
            Ok(s) => s,
            Err(DriveError::MediaError { block, detail }) => {
                return trouble(format!("media error at logical block {block}: {detail}"))
            }
            Err(e) => return Err(Error::from(e)).context("reading the catalog snapshot"),
        };
        let n = match st {
            ReadStatus::Block(n) => n,
            ReadStatus::Filemark | ReadStatus::EndOfData => {
                return trouble(format!(
                    "the snapshot ends at block {pos} without a trailer"
                ))
            }
        };
        let block = match decode_block(&buf[..n]) {
            Ok(b) => b,
            Err(e) => return trouble(format!("block {pos} is damaged: {e}")),
        };
        match (block, &header) {
            (Block::SnapshotHeader(h), None) => {
                if h.total_plain_len > MAX_SNAPSHOT_LEN {
                    return trouble(format!(
                        "it claims {} bytes, more than the {MAX_SNAPSHOT_LEN} accepted",
                        h.total_plain_len
                    ));
                }
                match keys.digest_key_for(&h.cipher) {
                    Ok(k) => digest = Some(SnapshotDigest::new(k)),
                    Err(fp) => {
                        return Err(Error::Key(format!(
                            "the catalog snapshot in tape file {f} is encrypted with key {fp}, which is not available: import it with `tapevault key import FILE`"
                        )))
                    }
                }
                header = Some(h);
            }
            (Block::SnapshotChunk(c), Some(h)) => {
                if c.fields.session_uuid != h.session_uuid || c.fields.sequence != next_seq {
                    return trouble(format!(
                        "block {pos}: chunk {} of session {} where chunk {next_seq} of session {} belongs",
                        c.fields.sequence,
                        Uuid::from_bytes(c.fields.session_uuid),
                        Uuid::from_bytes(h.session_uuid)
                    ));
                }
                match opener.open_chunk(keys, &c, &mut piece) {
                    Ok(()) => {}
                    Err(crate::codec::OpenError::MissingKey(fp)) => {
                        return Err(Error::Key(format!(
                            "the catalog snapshot in tape file {f} is encrypted with key {fp}, which is not available: import it with `tapevault key import FILE`"
                        )))
                    }
                    Err(e) => return trouble(format!("chunk {next_seq} at block {pos}: {e}")),
                }
                if plain_len + piece.len() as u64 > h.total_plain_len {
                    return trouble("the chunks are longer than the header says".into());
                }
                plain.write_all(&piece).map_err(spool_err)?;
                if let Some(d) = digest.as_mut() {
                    d.update(&piece);
                }
                plain_len += piece.len() as u64;
                next_seq += 1;
            }
            (Block::SnapshotTrailer(t), Some(h)) => {
                if t.session_uuid != h.session_uuid
                    || t.chunk_count != next_seq
                    || t.total_plain_len != plain_len
                    || h.total_plain_len != plain_len
                {
                    return trouble(format!(
                        "the trailer counts {} chunks / {} bytes, read {next_seq} chunks / {plain_len} bytes",
                        t.chunk_count, t.total_plain_len
                    ));
                }
                if digest.as_ref().map(SnapshotDigest::finalize) != Some(t.digest) {
                    return trouble("its digest does not match the trailer".into());
                }
                plain.flush().map_err(spool_err)?;
                drop(plain);
                return Ok(Ok(SnapshotRead {
                    header: header.expect("matched Some"),
                    block: start.block,
                    plain: spool,
                }));
            }
            (other, _) => {
                return trouble(format!(
                    "block {pos} is a {} where a snapshot record belongs",
                    other.kind_name()
                ))
            }
        }
        pos += 1;
    }
}
