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
    /// The plain document, in an unnamed temporary file in `spool_dir`; from
    /// [`stream_snapshot`], only its head (its first [`HEAD_SPOOLED`] bytes).
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
    read_snapshot_to(drive, f, keys, buf, spool_dir, None, u64::MAX, &mut |_| {
        true
    })
}

/// What [`stream_snapshot`] found.
pub enum Streamed<T> {
    /// The snapshot was read whole and its trailer and digest check out; `T` is what
    /// the consumer returned (it read the document to its end, or stopped early).
    Read(SnapshotRead, T),
    /// The snapshot is unusable. The consumer was handed an error instead of the end of
    /// the document, whatever it returned is dropped: a merge never saw the document
    /// whole, so its transaction was rolled back.
    Unusable(SnapshotTrouble),
    /// The consumer stopped reading before the end of the snapshot (a merge refused
    /// the document): what it returned.
    Stopped(T),
}

/// A message from the reading thread of [`stream_snapshot`] to its consumer.
enum Piece {
    Plain(Vec<u8>),
    /// The trailer and the digest check out: the document ends here.
    End,
    /// The snapshot is unusable (or could not be read): never the end of the document.
    Fail(String),
}

/// Plain chunks held between the reading thread and the consumer (of
/// [`tape_formats::DEFAULT_SNAPSHOT_CHUNK_SIZE`], 512 KiB, as written).
const CHUNKS_AHEAD: usize = 4;

/// The plain document of a snapshot as [`stream_snapshot`]'s reading thread decrypts
/// it. Its end comes only once the trailer and the whole document's digest were
/// checked; anything wrong with the snapshot is a read error instead, so a consumer
/// that needs the end of the document (a merge does) fails.
pub struct SnapshotStream {
    rx: std::sync::mpsc::Receiver<Piece>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl std::io::Read for SnapshotStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.cur.len() {
                let n = out.len().min(self.cur.len() - self.pos);
                out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::Plain(v)) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Ok(Piece::End) => self.ended = true,
                Ok(Piece::Fail(m)) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, m))
                }
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the snapshot's reading stopped before its end",
                    ))
                }
            }
        }
    }
}

/// [`read_snapshot`] with the plain document handed to `consume` as it is read, on
/// this thread, while a thread of its own reads the cartridge, decrypts and hashes it
/// (a few chunks ahead) and spools the document's head: reading the snapshot overlaps
/// merging it. The document read by `consume` ends only after the trailer and digest
/// were checked (see [`SnapshotStream`]). The header must belong to session `session` (the
/// end-of-session marker after it). Errors that stop the reading (a missing key, the
/// drive) are returned after `consume` has returned.
pub fn stream_snapshot<T>(
    drive: &mut dyn TapeDrive,
    f: u64,
    keys: &KeyRing,
    buf: &mut Vec<u8>,
    spool_dir: &std::path::Path,
    session: [u8; 16],
    consume: impl FnOnce(SnapshotStream) -> T,
) -> Result<Streamed<T>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(CHUNKS_AHEAD);
    let stream = SnapshotStream {
        rx,
        cur: Vec::new(),
        pos: 0,
        ended: false,
    };
    let (read, stopped, consumed) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut stopped = false;
            let r = read_snapshot_to(
                drive,
                f,
                keys,
                buf,
                spool_dir,
                Some(session),
                HEAD_SPOOLED,
                &mut |p| {
                    stopped = tx.send(Piece::Plain(p.to_vec())).is_err();
                    !stopped
                },
            );
            // A consumer that stopped listening does not see these.
            let _ = tx.send(match &r {
                Ok(Ok(_)) => Piece::End,
                Ok(Err(t)) => Piece::Fail(format!("the catalog snapshot is unusable: {}", t.0)),
                Err(e) => Piece::Fail(format!("reading the catalog snapshot: {e}")),
            });
            (r, stopped)
        });
        let consumed = consume(stream);
        let (read, stopped) = match reader.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        };
        (read, stopped, consumed)
    });
    Ok(match read? {
        Ok(s) => Streamed::Read(s, consumed),
        Err(_) if stopped => Streamed::Stopped(consumed),
        Err(t) => Streamed::Unusable(t),
    })
}

/// How much of a streamed snapshot [`stream_snapshot`] keeps in its spool: the
/// document's head, where its `base` is found afterwards (tapevault writes `format`,
/// `version`, `kind` and `base` first, a few hundred bytes). The rest went to the
/// merge; writing the whole 91 MB of a 100 k-image snapshot to the spool, and deleting
/// it, cost the rebuild 0.03-0.05 s.
const HEAD_SPOOLED: u64 = 64 << 10;

/// [`read_snapshot`], each plain piece also handed to `out` once it is spooled and
/// hashed (`false` from it: stop reading, the snapshot is then unusable); only the
/// document's first `spool_upto` bytes are spooled.
#[allow(clippy::too_many_arguments)]
fn read_snapshot_to(
    drive: &mut dyn TapeDrive,
    f: u64,
    keys: &KeyRing,
    buf: &mut Vec<u8>,
    spool_dir: &std::path::Path,
    session: Option<[u8; 16]>,
    spool_upto: u64,
    out: &mut dyn FnMut(&[u8]) -> bool,
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
                if let Some(want) = session.filter(|w| *w != h.session_uuid) {
                    return trouble(format!(
                        "it belongs to session {}, the end-of-session marker after it to {}",
                        Uuid::from_bytes(h.session_uuid),
                        Uuid::from_bytes(want)
                    ));
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
                if plain_len < spool_upto {
                    let n = usize::try_from(spool_upto - plain_len)
                        .unwrap_or(usize::MAX)
                        .min(piece.len());
                    plain.write_all(&piece[..n]).map_err(spool_err)?;
                }
                if let Some(d) = digest.as_mut() {
                    d.update(&piece);
                }
                plain_len += piece.len() as u64;
                next_seq += 1;
                if !out(&piece) {
                    return trouble("its reader stopped before the end".into());
                }
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
