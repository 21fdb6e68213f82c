//! Opening a disk and reading it in bounded chunks with zero detection.
//!
//! A [`Disk`] is a raw image file or a block device opened read-only. Its size comes
//! from the metadata for a file and from seeking to the end for a block device (the
//! kernel answers that from the same value `BLKGETSIZE64` returns, with no `unsafe`).
//!
//! A [`ChunkReader`] walks a list of extents (or the whole disk) and yields [`Chunk`]s:
//! a list of sub-extents, each `Data` or `Zero`, and the concatenated bytes of the
//! `Data` ones in a buffer it reuses, so memory stays at one record whatever the disk
//! size. Zero detection works per tracking block (aligned to absolute disk offsets, so
//! it lines up with digest lists), a trailing partial block included.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use super::hashscan::{DigestFeed, DigestListError, DigestListSummary};
use super::input::{identity, open_checked, Accept, Identity, InputError};
use super::{valid_block_size, DEFAULT_BLOCK_SIZE};
use crate::extents::{Extent, ExtentSet};

/// Default amount of disk data per record (512 KiB): large enough to stream a drive,
/// small enough that several records in flight stay cheap.
pub const DEFAULT_RECORD_DATA_SIZE: usize = 512 * 1024;

/// Largest record data size accepted (8 MiB, the largest tape block we write).
pub const MAX_RECORD_DATA_SIZE: usize = tape_devices::drive::MAX_BLOCK_SIZE;

/// Most sub-extents in one chunk: bounds the extent table a record header carries
/// (16 bytes each plus a kind, so about 17 KiB at most).
pub const MAX_EXTENTS_PER_CHUNK: usize = 1024;

/// Largest disk range one chunk may describe (1 GiB). Long zero runs cost no data, but
/// a restore locates by record, and progress should move on a sparse disk.
pub const MAX_CHUNK_SPAN: u64 = 1024 * 1024 * 1024;

/// How long one read of a source (at most one record, [`MAX_RECORD_DATA_SIZE`]) may take
/// before the image fails instead of waiting for ever: a hung storage path (a dead iSCSI
/// target, an NFS server gone, a device that stopped answering) must not hold the pool
/// lock until someone kills the job. Long enough for a multipath failover.
pub const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(300);

/// Environment variable that sets the source read timeout in whole seconds (for tests
/// and for sites with slower storage); unset, empty, 0 or not a number: the default.
pub const SOURCE_TIMEOUT_ENV: &str = "TAPEVAULT_SOURCE_TIMEOUT_SECS";

/// The source read timeout: [`SOURCE_TIMEOUT_ENV`], else [`DEFAULT_SOURCE_TIMEOUT`].
pub fn source_timeout() -> Duration {
    std::env::var(SOURCE_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_SOURCE_TIMEOUT)
}

/// Bytes compared per step of the zero test before deciding to go on.
const ZERO_SCAN_STRIDE: usize = 256;

#[derive(Debug, Error)]
pub enum DiskError {
    /// Missing, unreadable, or not a file or block device (a usage error).
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("cannot determine the size of disk {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read error on disk {path} at byte {offset}: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("disk {path} ended at byte {offset} while {size} bytes were expected; did it shrink during the backup?")]
    Truncated {
        path: PathBuf,
        offset: u64,
        size: u64,
    },
    #[error(
        "extent at {offset} of length {len} lies beyond the end of disk {path} ({size} bytes)"
    )]
    ExtentBeyondDisk {
        path: PathBuf,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("a read of disk {path} at byte {offset} made no progress for {secs} s: the device or its storage path hangs; check it (the limit is set by {env}) and run the backup again")]
    Stalled {
        path: PathBuf,
        offset: u64,
        secs: u64,
        env: &'static str,
    },
    #[error("invalid reader setting: {0}")]
    Config(String),
}

/// What kind of object a disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    File,
    BlockDevice,
}

/// Something a disk's bytes can be read from at an offset (a file or a block device).
trait SourceRead: Send + Sync + 'static {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl SourceRead for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

/// A read handed to the disk's reader thread: fill `buf[start..end]` from `offset`.
struct ReadReq {
    offset: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

enum ReadFail {
    /// The source ended at this offset.
    Short(u64),
    Io(u64, std::io::Error),
}

struct ReadDone {
    buf: Vec<u8>,
    result: Result<(), ReadFail>,
}

/// The reader thread of a disk. Reads run there so that the caller can stop waiting
/// after the timeout: a read stuck in the kernel cannot be interrupted, but the thread
/// doing it can be abandoned (it ends when the read returns, if ever).
enum Worker {
    NotStarted,
    Running {
        tx: mpsc::Sender<ReadReq>,
        rx: mpsc::Receiver<ReadDone>,
    },
    /// A read timed out: every later read fails at once.
    Stalled {
        offset: u64,
    },
}

/// A disk opened read-only.
pub struct Disk {
    source: Arc<dyn SourceRead>,
    worker: Mutex<Worker>,
    timeout: Duration,
    path: PathBuf,
    size: u64,
    kind: DiskKind,
    identity: Identity,
}

impl Disk {
    /// Opens a raw image file or block device read-only and learns its size. Never
    /// blocks: anything else (a FIFO, a socket, a character device, a directory) is
    /// refused without being read (see [`super::input`]).
    pub fn open(path: &Path) -> Result<Disk, DiskError> {
        let (file, meta) = open_checked(path, "disk", Accept::FileOrBlockDevice)?;
        let (kind, size) = if meta.file_type().is_block_device() {
            let mut f = &file;
            let size = f.seek(SeekFrom::End(0)).map_err(|source| DiskError::Size {
                path: path.to_path_buf(),
                source,
            })?;
            (DiskKind::BlockDevice, size)
        } else {
            (DiskKind::File, meta.len())
        };
        Ok(Disk {
            source: Arc::new(file),
            worker: Mutex::new(Worker::NotStarted),
            timeout: source_timeout(),
            path: path.to_path_buf(),
            size,
            kind,
            identity: identity(&meta),
        })
    }

    /// Which file or device this is, whatever path named it.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> DiskKind {
        self.kind
    }

    /// Fills `buf[range]` from `offset`. A short read (the disk shrank) is an error,
    /// and so is a read that does not complete within the source timeout
    /// ([`source_timeout`]); after that every read of this disk fails. The buffer
    /// travels to the reader thread and back (no copy); after a timeout it is lost and
    /// `buf` is left empty.
    pub fn read_into(
        &self,
        offset: u64,
        buf: &mut Vec<u8>,
        range: std::ops::Range<usize>,
    ) -> Result<(), DiskError> {
        assert!(range.start <= range.end && range.end <= buf.len());
        let stalled = |at: u64| DiskError::Stalled {
            path: self.path.clone(),
            offset: at,
            secs: self.timeout.as_secs(),
            env: SOURCE_TIMEOUT_ENV,
        };
        let mut w = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if let Worker::NotStarted = &*w {
            *w = self.start_worker()?;
        }
        let (tx, rx) = match &*w {
            Worker::Running { tx, rx } => (tx, rx),
            Worker::Stalled { offset } => return Err(stalled(*offset)),
            Worker::NotStarted => unreachable!("started above"),
        };
        let req = ReadReq {
            offset,
            buf: std::mem::take(buf),
            start: range.start,
            end: range.end,
        };
        let gone = |offset| DiskError::Read {
            path: self.path.clone(),
            offset,
            source: std::io::Error::other("the disk reader thread ended"),
        };
        if tx.send(req).is_err() {
            return Err(gone(offset));
        }
        match rx.recv_timeout(self.timeout) {
            Ok(done) => {
                *buf = done.buf;
                match done.result {
                    Ok(()) => Ok(()),
                    Err(ReadFail::Short(at)) => Err(DiskError::Truncated {
                        path: self.path.clone(),
                        offset: at,
                        size: self.size,
                    }),
                    Err(ReadFail::Io(at, source)) => Err(DiskError::Read {
                        path: self.path.clone(),
                        offset: at,
                        source,
                    }),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Dropping the channels lets the stuck thread end when its read returns.
                *w = Worker::Stalled { offset };
                Err(stalled(offset))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(gone(offset)),
        }
    }

    fn start_worker(&self) -> Result<Worker, DiskError> {
        let (tx, req_rx) = mpsc::channel::<ReadReq>();
        let (done_tx, rx) = mpsc::channel::<ReadDone>();
        let source = Arc::clone(&self.source);
        std::thread::Builder::new()
            .name("tapevault-disk-read".into())
            .spawn(move || {
                while let Ok(mut req) = req_rx.recv() {
                    let result = read_full(&*source, &mut req);
                    if done_tx
                        .send(ReadDone {
                            buf: req.buf,
                            result,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .map_err(|source| DiskError::Read {
                path: self.path.clone(),
                offset: 0,
                source,
            })?;
        Ok(Worker::Running { tx, rx })
    }
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Fills `req.buf[start..end]` from `req.offset`, retrying short reads.
fn read_full(source: &dyn SourceRead, req: &mut ReadReq) -> Result<(), ReadFail> {
    let mut done = req.start;
    while done < req.end {
        let at = req.offset + (done - req.start) as u64;
        match source.read_at(&mut req.buf[done..req.end], at) {
            Ok(0) => return Err(ReadFail::Short(at)),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFail::Io(at, e)),
        }
    }
    Ok(())
}

/// Whether every byte of `buf` is zero. Compares 16-byte words in strides of 256
/// bytes (the inner loop vectorises), exiting at the first stride holding data.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut strides = buf.chunks_exact(ZERO_SCAN_STRIDE);
    for stride in &mut strides {
        let mut acc = 0u128;
        for w in stride.chunks_exact(16) {
            let mut word = [0u8; 16];
            word.copy_from_slice(w);
            acc |= u128::from_ne_bytes(word);
        }
        if acc != 0 {
            return false;
        }
    }
    strides.remainder().iter().all(|&b| b == 0)
}

/// Whether a sub-extent carries data or stands for zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    Data,
    Zero,
}

/// One piece of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubExtent {
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
}

/// Chunking settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkConfig {
    /// Most data bytes per chunk (the record's payload before compression).
    pub record_data_size: usize,
    /// Zero-detection granularity (power of two), aligned to absolute offsets.
    pub block_size: u64,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            record_data_size: DEFAULT_RECORD_DATA_SIZE,
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

/// One chunk: its sub-extents, ascending and non-overlapping, and the bytes of the
/// `Data` ones concatenated in order. Borrowed from the reader until the next call.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub extents: &'a [SubExtent],
    pub data: &'a [u8],
}

impl Chunk<'_> {
    /// First byte covered and one past the last.
    pub fn range(&self) -> (u64, u64) {
        match (self.extents.first(), self.extents.last()) {
            (Some(f), Some(l)) => (f.offset, l.offset + l.len),
            _ => (0, 0),
        }
    }
}

/// Totals over everything a reader produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkStats {
    pub chunks: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
}

/// Reads a disk's extents as chunks; see the module docs.
pub struct ChunkReader<'d> {
    disk: &'d Disk,
    cfg: ChunkConfig,
    todo: Vec<Extent>,
    idx: usize,
    cursor: u64,
    /// Read buffer; only `data[..len]` is the current chunk. The buffer keeps its
    /// length between chunks so reading into it does not zero it first each time.
    data: Vec<u8>,
    len: usize,
    subs: Vec<SubExtent>,
    digests: Option<DigestFeed>,
    /// Why digest building stopped, if it failed while reading. A digest list is a
    /// by-product: its failure never fails the backup read.
    digest_error: Option<DigestListError>,
    stats: ChunkStats,
}

impl<'d> ChunkReader<'d> {
    /// Reads the whole disk.
    pub fn whole_disk(disk: &'d Disk, cfg: ChunkConfig) -> Result<Self, DiskError> {
        let mut set = ExtentSet::new();
        set.insert(0, disk.size());
        ChunkReader::extents(disk, cfg, &set)
    }

    /// Reads the given extents (every one must lie within the disk).
    pub fn extents(disk: &'d Disk, cfg: ChunkConfig, set: &ExtentSet) -> Result<Self, DiskError> {
        if !valid_block_size(cfg.block_size) {
            return Err(DiskError::Config(format!(
                "block size {} must be a power of two between {} and {}",
                cfg.block_size,
                super::MIN_BLOCK_SIZE,
                super::MAX_BLOCK_SIZE
            )));
        }
        if cfg.record_data_size == 0 || cfg.record_data_size > MAX_RECORD_DATA_SIZE {
            return Err(DiskError::Config(format!(
                "record data size {} must be between 1 and {MAX_RECORD_DATA_SIZE}",
                cfg.record_data_size
            )));
        }
        let todo: Vec<Extent> = set.iter().collect();
        if let Some(last) = todo.last() {
            if last.end() > disk.size() {
                return Err(DiskError::ExtentBeyondDisk {
                    path: disk.path().to_path_buf(),
                    offset: last.offset,
                    len: last.len,
                    size: disk.size(),
                });
            }
        }
        let cursor = todo.first().map_or(0, |e| e.offset);
        Ok(ChunkReader {
            disk,
            cfg,
            todo,
            idx: 0,
            cursor,
            data: Vec::with_capacity(cfg.record_data_size),
            len: 0,
            subs: Vec::new(),
            digests: None,
            digest_error: None,
            stats: ChunkStats::default(),
        })
    }

    /// Feeds every byte read (zeros included) to `feed`, so the image gets its digest
    /// list without a second pass. Checked up front: every block this reader will not
    /// read must be copyable from the feed's previous list, else the error says why
    /// (the caller then backs up without a list, or aligns its extents).
    pub fn with_digests(mut self, feed: DigestFeed) -> Result<Self, DigestListError> {
        let set: ExtentSet = self.todo.iter().copied().collect();
        feed.check_extents(&set)?;
        self.digests = Some(feed);
        Ok(self)
    }

    pub fn stats(&self) -> ChunkStats {
        self.stats
    }

    /// The totals, and if a digest feed was attached, the committed list's summary
    /// or why no list was written.
    pub fn finish(
        self,
    ) -> (
        ChunkStats,
        Option<Result<DigestListSummary, DigestListError>>,
    ) {
        let digests = match (self.digests, self.digest_error) {
            (_, Some(e)) => Some(Err(e)),
            (Some(feed), None) => Some(feed.finish()),
            (None, None) => None,
        };
        (self.stats, digests)
    }

    fn push_sub(&mut self, offset: u64, len: u64, kind: ExtentKind) {
        if let Some(last) = self.subs.last_mut() {
            if last.kind == kind && last.offset + last.len == offset {
                last.len += len;
                return;
            }
        }
        self.subs.push(SubExtent { offset, len, kind });
    }

    /// The next chunk, or `None` when every extent has been read.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk<'_>>, DiskError> {
        self.len = 0;
        self.subs.clear();
        let bs = self.cfg.block_size;
        let cap = self.cfg.record_data_size;
        let mut chunk_start: Option<u64> = None;
        while self.idx < self.todo.len() {
            let ext = self.todo[self.idx];
            if self.cursor >= ext.end() {
                self.idx += 1;
                if let Some(next) = self.todo.get(self.idx) {
                    self.cursor = next.offset;
                }
                continue;
            }
            let start = *chunk_start.get_or_insert(self.cursor);
            let room = cap - self.len;
            // Each block piece read may add one sub-extent; keep one slot spare.
            let slots = MAX_EXTENTS_PER_CHUNK.saturating_sub(self.subs.len() + 1) as u64;
            let span_left = MAX_CHUNK_SPAN.saturating_sub(self.cursor - start);
            if room == 0 || slots == 0 || span_left == 0 {
                break;
            }
            let mut want = (room as u64)
                .min(ext.end() - self.cursor)
                .min(slots * bs)
                .min(span_left);
            // End reads on a block boundary when that still reads something, so a
            // block is not split between two chunks without need.
            let end = self.cursor + want;
            if end < ext.end() && end & (bs - 1) != 0 {
                let aligned = end & !(bs - 1);
                if aligned > self.cursor {
                    want = aligned - self.cursor;
                }
            }
            let base = self.len;
            let need = base + want as usize;
            if self.data.len() < need {
                self.data.resize(need, 0);
            }
            self.disk
                .read_into(self.cursor, &mut self.data, base..need)?;
            // Classify block pieces, compacting data over dropped zero pieces.
            let mut write = base;
            let mut pos = self.cursor;
            let read_end = self.cursor + want;
            while pos < read_end {
                let piece_end = ((pos / bs + 1) * bs).min(read_end);
                let len = (piece_end - pos) as usize;
                let from = base + (pos - self.cursor) as usize;
                let zero = is_zero(&self.data[from..from + len]);
                if let Some(feed) = self.digests.as_mut() {
                    let fed = if zero {
                        feed.feed_zero(pos, len as u64)
                    } else {
                        feed.feed_data(pos, &self.data[from..from + len])
                    };
                    if let Err(e) = fed {
                        // Dropping the feed removes its unfinished file.
                        self.digests = None;
                        self.digest_error = Some(e);
                    }
                }
                if zero {
                    self.push_sub(pos, len as u64, ExtentKind::Zero);
                    self.stats.zero_bytes += len as u64;
                } else {
                    if write != from {
                        self.data.copy_within(from..from + len, write);
                    }
                    write += len;
                    self.push_sub(pos, len as u64, ExtentKind::Data);
                    self.stats.data_bytes += len as u64;
                }
                pos = piece_end;
            }
            self.len = write;
            self.cursor = read_end;
        }
        if self.subs.is_empty() {
            return Ok(None);
        }
        self.stats.chunks += 1;
        Ok(Some(Chunk {
            extents: &self.subs,
            data: &self.data[..self.len],
        }))
    }

    /// Hand the current chunk's data over in `buf` (exactly the chunk's bytes) and take
    /// `buf`'s old allocation as the next read buffer: the pipeline gets the data
    /// without a copy. Call after [`next_chunk`](Self::next_chunk) returned a chunk.
    pub fn swap_data(&mut self, buf: &mut Vec<u8>) {
        self.data.truncate(self.len);
        std::mem::swap(&mut self.data, buf);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A source whose reads block until released, as a hung device's do.
    struct Hung(Mutex<mpsc::Receiver<()>>);

    impl SourceRead for Hung {
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> std::io::Result<usize> {
            let _ = self.0.lock().unwrap().recv();
            buf.fill(7);
            Ok(buf.len())
        }
    }

    #[test]
    fn a_read_that_hangs_fails_after_the_timeout_and_the_disk_stays_failed() {
        let (release, rx) = mpsc::channel();
        let disk = Disk {
            source: Arc::new(Hung(Mutex::new(rx))),
            worker: Mutex::new(Worker::NotStarted),
            timeout: Duration::from_millis(200),
            path: PathBuf::from("/dev/hung"),
            size: 1 << 20,
            kind: DiskKind::BlockDevice,
            identity: Identity::BlockDevice { rdev: 0 },
        };
        let mut buf = vec![0u8; 4096];
        let e = disk.read_into(8192, &mut buf, 0..4096).unwrap_err();
        assert!(
            matches!(e, DiskError::Stalled { offset: 8192, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("/dev/hung") && text.contains(SOURCE_TIMEOUT_ENV),
            "{text}"
        );
        // Later reads fail at once, even when the device answers again.
        release.send(()).unwrap();
        let mut buf = vec![0u8; 16];
        assert!(matches!(
            disk.read_into(0, &mut buf, 0..16),
            Err(DiskError::Stalled { .. })
        ));
    }

    #[test]
    fn reads_through_the_reader_thread_fill_the_range_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        std::fs::write(&p, (0..=255u8).cycle().take(10_000).collect::<Vec<_>>()).unwrap();
        let disk = Disk::open(&p).unwrap();
        let mut buf = vec![0xAAu8; 300];
        disk.read_into(1000, &mut buf, 100..200).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 0xAA));
        assert!(buf[200..].iter().all(|&b| b == 0xAA));
        assert_eq!(buf[100], (1000 % 256) as u8);
        assert_eq!(buf[199], (1099 % 256) as u8);
        let mut buf = vec![0u8; 10];
        assert!(matches!(
            disk.read_into(9995, &mut buf, 0..10),
            Err(DiskError::Truncated { offset: 10_000, .. })
        ));
    }

    proptest! {
        #[test]
        fn is_zero_matches_naive(len in 0usize..2000, poke in proptest::option::of((0usize..2000, 1u8..=255))) {
            let mut v = vec![0u8; len];
            if let Some((at, val)) = poke {
                if at < len { v[at] = val; }
            }
            prop_assert_eq!(is_zero(&v), v.iter().all(|&b| b == 0));
        }
    }
}
