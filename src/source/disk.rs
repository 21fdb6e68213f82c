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
//! it lines up with digest lists), a trailing partial block included. A chunk holding
//! data whose zero pieces left room ends where a window ends on a multiple of the
//! record size, so later chunks stay on that grid (see `record_ends_here`).
//!
//! Holes of a thin image file are never read: a [`DataWalk`] asks the file system where
//! the data lies (`lseek(SEEK_DATA/SEEK_HOLE)`, one data run at a time, so memory does
//! not grow with the number of runs), and a block piece lying wholly in a hole is a zero
//! piece without a read. A piece that is partly hole has its data part read and its hole
//! part zero-filled, then is classified like any other. Chunks, digests and records come
//! out exactly as if the holes had been read as zeros; only the bytes read differ
//! ([`ChunkStats::read_bytes`]). A block device has no holes and is read whole.

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
use crate::extent_spool::{ExtentList, ListReader};
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
    /// Any other [`SourceRead`], e.g. an NBD export ([`super::nbd`]): read through the
    /// source, holes as the source tells them.
    Export,
}

/// Something a disk's bytes can be read from at an offset: a file, a block device, or
/// an NBD export ([`super::nbd::NbdSource`]). Calls come from one thread at a time
/// (see [`Disk`]), under the source timeout: on the disk's reader thread, or on the
/// caller's for a source that bounds its own waits ([`bounded_wait`](Self::bounded_wait)).
pub trait SourceRead: Send + Sync + 'static {
    /// Reads up to `buf.len()` bytes at `offset`; 0 means the source ended there.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;

    /// Where the first run of data at or after `from` lies. A source that cannot tell
    /// holes says everything from `from` on is data. Only what reads as zeros may be
    /// reported as hole: the hole is never read and is recorded as a zero extent.
    fn find_data(&self, from: u64) -> std::io::Result<DataAt> {
        Ok(DataAt::Run(from, u64::MAX))
    }

    /// A hint, called from the reading thread before reading an extent: the data runs
    /// (as [`find_data`](Self::find_data) tells them) of `[offset, offset + len)` will be
    /// read next, in ascending order, and nothing else until then. The next extents may
    /// be announced before the first is read (a [`ChunkReader`] announces up to
    /// [`EXTENTS_AHEAD`]): they are read in the order announced. A source may read ahead
    /// within the announced extents (an NBD export keeps several requests in flight);
    /// never beyond.
    fn will_read(&self, _offset: u64, _len: u64) {}

    /// Hands over the bytes `[offset, offset + buf.len())` without a copy when the
    /// source already holds exactly them in a buffer of its own (an NBD export's read
    /// ahead): that buffer is swapped into `buf`, and the source keeps `buf`'s old
    /// allocation for a later read. `Ok(false)`: nothing was swapped (`buf` is
    /// untouched) and [`read_at`](Self::read_at) reads as usual.
    fn take_read(&self, _buf: &mut Vec<u8>, _offset: u64) -> std::io::Result<bool> {
        Ok(false)
    }

    /// The longest any call may wait when the source bounds its waits itself (a socket
    /// with a per-operation deadline fails a call the server leaves unanswered), else
    /// `None`. A [`Disk`] whose source waits at most its own timeout calls it on the
    /// reading thread, sparing the reader thread's two hand-overs per read.
    fn bounded_wait(&self) -> Option<Duration> {
        None
    }
}

/// What a source says about the data at or after an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataAt {
    /// Data from `.0` to `.1` (exclusive), a hole or the end of the file after it.
    Run(u64, u64),
    /// Only hole until the end of the file, which is now `file_len` bytes long.
    HoleToEnd { file_len: u64 },
}

impl SourceRead for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn find_data(&self, from: u64) -> std::io::Result<DataAt> {
        use nix::errno::Errno;
        use nix::unistd::{lseek, Whence};
        use std::os::fd::AsRawFd;
        let everything = DataAt::Run(from, u64::MAX);
        let Ok(at) = i64::try_from(from) else {
            return Ok(everything);
        };
        let fd = self.as_raw_fd();
        // The seeks move the descriptor's offset, which no read uses (reads are
        // positioned).
        let start = match lseek(fd, at, Whence::SeekData) {
            Ok(s) => s.max(0) as u64,
            // No data at or after `from` (or `from` is past the end: the caller
            // compares the length with what it expects).
            Err(Errno::ENXIO) => {
                return Ok(DataAt::HoleToEnd {
                    file_len: self.metadata()?.len(),
                })
            }
            // A file system that cannot tell: everything is data.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => return Ok(everything),
            Err(e) => return Err(e.into()),
        };
        let end = match lseek(fd, start as i64, Whence::SeekHole) {
            Ok(e) if e.max(0) as u64 > start => e as u64,
            // The data went away between the two seeks: read from where it began,
            // and let the read say what happened.
            Ok(_) | Err(Errno::ENXIO) => u64::MAX,
            Err(e) => return Err(e.into()),
        };
        Ok(DataAt::Run(start, end))
    }
}

/// A request to the disk's reader thread.
enum Req {
    Read(ReadReq),
    /// Where the next data run at or after this offset lies.
    FindData(u64),
}

/// What the reader thread answers.
enum Done {
    Read(ReadDone),
    Data(std::io::Result<DataAt>),
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
/// doing it can be abandoned (it ends when the read returns, if ever). A source that
/// bounds its own waits (an NBD export's socket deadline) needs none: it is called on
/// the caller's thread, and a call it gave up on stalls the disk the same way.
enum Worker {
    NotStarted,
    Running {
        tx: mpsc::Sender<Req>,
        rx: mpsc::Receiver<Done>,
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

    /// A disk read through any [`SourceRead`] (an NBD export, ...): `name` is what
    /// messages call it, `size` its size in bytes, `identity` what makes two disks the
    /// same (two disks of one request may never share it).
    pub fn from_source(
        source: Arc<dyn SourceRead>,
        name: &str,
        size: u64,
        identity: Identity,
    ) -> Disk {
        Disk {
            source,
            worker: Mutex::new(Worker::NotStarted),
            timeout: source_timeout(),
            path: PathBuf::from(name),
            size,
            kind: DiskKind::Export,
            identity,
        }
    }

    /// A regular file already open (a synthetic full's scratch file, which has no
    /// name: `name` is only what messages call it). Read like any image file: its holes
    /// are not read.
    pub fn from_file(file: File, name: PathBuf) -> Result<Disk, DiskError> {
        let meta = file.metadata().map_err(|source| DiskError::Size {
            path: name.clone(),
            source,
        })?;
        Ok(Disk {
            source: Arc::new(file),
            worker: Mutex::new(Worker::NotStarted),
            timeout: source_timeout(),
            size: meta.len(),
            kind: DiskKind::File,
            identity: super::input::identity(&meta),
            path: name,
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
        let req = ReadReq {
            offset,
            buf: std::mem::take(buf),
            start: range.start,
            end: range.end,
        };
        match self.ask(offset, Req::Read(req))? {
            Done::Read(done) => {
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
            Done::Data(_) => Err(self.gone(offset)),
        }
    }

    /// The first run of data at or after `from`, as `(start, end)` with `end > from`
    /// and `end` at most the disk's size, or `None` when only holes follow. A block
    /// device (or a file system that cannot tell) has no holes: the answer is always
    /// `(from, size)`. Asked of the reader thread, under the same timeout as a read.
    pub fn find_data(&self, from: u64) -> Result<Option<(u64, u64)>, DiskError> {
        if from >= self.size {
            return Ok(None);
        }
        if self.kind == DiskKind::BlockDevice {
            return Ok(Some((from, self.size)));
        }
        let found = match self.ask(from, Req::FindData(from))? {
            Done::Data(r) => r.map_err(|source| DiskError::Read {
                path: self.path.clone(),
                offset: from,
                source,
            })?,
            Done::Read(_) => return Err(self.gone(from)),
        };
        match found {
            // The file ends before the size it had when opened: it shrank.
            DataAt::HoleToEnd { file_len } if file_len < self.size => Err(DiskError::Truncated {
                path: self.path.clone(),
                offset: file_len.max(from),
                size: self.size,
            }),
            DataAt::HoleToEnd { .. } => Ok(None),
            DataAt::Run(s, e) => {
                // Keep to what was asked and to the disk's size as opened.
                let s = s.max(from);
                let e = e.min(self.size);
                Ok((s < e).then_some((s, e)))
            }
        }
    }

    fn gone(&self, offset: u64) -> DiskError {
        DiskError::Read {
            path: self.path.clone(),
            offset,
            source: std::io::Error::other("the disk reader thread ended"),
        }
    }

    /// Sends one request to the reader thread and waits for its answer, at most the
    /// source timeout; or, for a source that bounds its own waits within that timeout,
    /// serves it here.
    fn ask(&self, offset: u64, req: Req) -> Result<Done, DiskError> {
        let stalled = |at: u64, limit: Duration| DiskError::Stalled {
            path: self.path.clone(),
            offset: at,
            secs: limit.as_secs(),
            env: SOURCE_TIMEOUT_ENV,
        };
        let mut w = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if let Worker::Stalled { offset } = &*w {
            return Err(stalled(*offset, self.timeout));
        }
        if let Some(limit) = self.source.bounded_wait().filter(|t| *t <= self.timeout) {
            // The source gives up by itself: no thread to abandon. A call it gave up on
            // stalls the disk as the reader thread's timeout would.
            let done = serve(&*self.source, req);
            let timed_out = match &done {
                Done::Read(ReadDone {
                    result: Err(ReadFail::Io(at, e)),
                    ..
                }) if e.kind() == std::io::ErrorKind::TimedOut => Some(*at),
                Done::Data(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => Some(offset),
                _ => None,
            };
            if let Some(at) = timed_out {
                *w = Worker::Stalled { offset: at };
                return Err(stalled(at, limit));
            }
            return Ok(done);
        }
        if let Worker::NotStarted = &*w {
            *w = self.start_worker()?;
        }
        let (tx, rx) = match &*w {
            Worker::Running { tx, rx } => (tx, rx),
            Worker::Stalled { .. } | Worker::NotStarted => unreachable!("handled above"),
        };
        if tx.send(req).is_err() {
            return Err(self.gone(offset));
        }
        match rx.recv_timeout(self.timeout) {
            Ok(done) => Ok(done),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Dropping the channels lets the stuck thread end when its read returns.
                *w = Worker::Stalled { offset };
                Err(stalled(offset, self.timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.gone(offset)),
        }
    }

    fn start_worker(&self) -> Result<Worker, DiskError> {
        let (tx, req_rx) = mpsc::channel::<Req>();
        let (done_tx, rx) = mpsc::channel::<Done>();
        let source = Arc::clone(&self.source);
        std::thread::Builder::new()
            .name("tapevault-disk-read".into())
            .spawn(move || {
                while let Ok(req) = req_rx.recv() {
                    if done_tx.send(serve(&*source, req)).is_err() {
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

/// Does what a request asks of the source.
fn serve(source: &dyn SourceRead, req: Req) -> Done {
    match req {
        Req::Read(mut req) => {
            let result = read_full(source, &mut req);
            Done::Read(ReadDone {
                buf: req.buf,
                result,
            })
        }
        Req::FindData(from) => Done::Data(source.find_data(from)),
    }
}

/// Fills `req.buf[start..end]` from `req.offset`, retrying short reads. A read of the
/// whole buffer is first offered to the source to hand over without a copy.
fn read_full(source: &dyn SourceRead, req: &mut ReadReq) -> Result<(), ReadFail> {
    if req.start == 0 && req.end == req.buf.len() && req.end > 0 {
        match source.take_read(&mut req.buf, req.offset) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(ReadFail::Io(req.offset, e)),
        }
    }
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

/// Where a disk's data lies, learned one run at a time as a reader moves forward
/// (see the module docs). Holds one run: memory does not grow with the number of runs.
#[derive(Debug, Default)]
pub struct DataWalk {
    /// The last answer: asked at `.0`, the run `(.1, .2)` is the first data at or after
    /// it, so it answers every query in `.0..(.2)`.
    run: Option<(u64, u64, u64)>,
    /// No data lies at or after this offset.
    none_from: Option<u64>,
    /// Queries of the disk so far.
    lookups: u64,
}

impl DataWalk {
    pub fn new() -> DataWalk {
        DataWalk::default()
    }

    /// The first run of data ending after `at`, as `(start, end)` (`start` lies before
    /// `at` when `at` is in data), or `None` when only holes follow. Queries should
    /// move forward: one going back before the last asks the disk again.
    pub fn next_data(&mut self, disk: &Disk, at: u64) -> Result<Option<(u64, u64)>, DiskError> {
        if let Some((asked, s, e)) = self.run {
            if asked <= at && at < e {
                return Ok(Some((s, e)));
            }
        }
        if let Some(n) = self.none_from {
            if at >= n {
                return Ok(None);
            }
        }
        self.lookups += 1;
        let found = disk.find_data(at)?;
        match found {
            Some((s, e)) => self.run = Some((at, s, e)),
            None => {
                self.run = None;
                self.none_from = Some(at);
            }
        }
        Ok(found)
    }

    /// How many times the disk was asked.
    pub fn lookups(&self) -> u64 {
        self.lookups
    }
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
    /// Bytes actually read from the disk: holes of a thin file are not.
    pub read_bytes: u64,
}

/// The extents a [`ChunkReader`] reads, handed out one at a time so that memory does
/// not follow their number (an NBD dirty bitmap of a large disk may have millions).
/// Extents must come ascending and disjoint, and lie within the disk: the reader checks.
pub trait ExtentStream {
    /// The next extent, or `None` at the end.
    fn next_extent(&mut self) -> Result<Option<Extent>, DiskError>;

    /// Every extent, when they are all known up front (lets a digest feed check them
    /// before reading).
    fn listed(&self) -> Option<&[Extent]> {
        None
    }

    /// Every extent again from the first, when the stream can replay them (a spooled
    /// list): lets a digest feed check them before reading, without holding them.
    fn replay(&self) -> Option<ListReader<Extent>> {
        None
    }
}

/// Extents of a spooled [`ExtentList`], read back one at a time.
struct Spooled {
    list: ExtentList,
    reader: ListReader<Extent>,
}

impl ExtentStream for Spooled {
    fn next_extent(&mut self) -> Result<Option<Extent>, DiskError> {
        self.reader.next().transpose().map_err(|e| {
            DiskError::Config(format!(
                "reading back the extent list from its temporary file: {e}"
            ))
        })
    }

    fn replay(&self) -> Option<ListReader<Extent>> {
        Some(self.list.reader())
    }
}

/// Extents known up front.
struct Listed {
    todo: Vec<Extent>,
    idx: usize,
}

impl ExtentStream for Listed {
    fn next_extent(&mut self) -> Result<Option<Extent>, DiskError> {
        let e = self.todo.get(self.idx).copied();
        self.idx += 1;
        Ok(e)
    }

    fn listed(&self) -> Option<&[Extent]> {
        Some(&self.todo)
    }
}

/// Extents a [`ChunkReader`] announces to the source ahead of reading them.
pub const EXTENTS_AHEAD: usize = 16;

/// Reads a disk's extents as chunks; see the module docs.
pub struct ChunkReader<'d> {
    disk: &'d Disk,
    cfg: ChunkConfig,
    todo: Box<dyn ExtentStream + Send + 'd>,
    /// The extent being read; `None` before the first and after the last.
    ext: Option<Extent>,
    /// The end of the last extent taken from `todo` (the next must not start before).
    taken_end: u64,
    /// Extents taken from `todo` and announced to the source, not read yet (the next
    /// one and at most [`EXTENTS_AHEAD`] after it), and the error that ended taking
    /// them, reported in its turn.
    ahead: std::collections::VecDeque<Extent>,
    ahead_error: Option<DiskError>,
    /// `todo` has no more extents.
    todo_ended: bool,
    /// Every extent has been read.
    done: bool,
    /// Streamed extents must fall on block boundaries (a digest feed is attached).
    aligned: bool,
    cursor: u64,
    /// Read buffer; only `data[..len]` is the current chunk. The buffer keeps its
    /// length between chunks so reading into it does not zero it first each time.
    data: Vec<u8>,
    len: usize,
    subs: Vec<SubExtent>,
    /// Where the data lies (holes are not read).
    walk: DataWalk,
    /// The data runs within the current read window, clipped to it.
    runs: Vec<(u64, u64)>,
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
        ChunkReader::stream(disk, cfg, Box::new(Listed { todo, idx: 0 }))
    }

    /// Reads the extents of `list` (sorted, disjoint, within the disk), read back from
    /// its temporary file as they are needed.
    pub fn list(disk: &'d Disk, cfg: ChunkConfig, list: &ExtentList) -> Result<Self, DiskError> {
        let stream = Spooled {
            list: list.clone(),
            reader: list.reader(),
        };
        ChunkReader::stream(disk, cfg, Box::new(stream))
    }

    /// Reads the extents `todo` hands out, one at a time: memory stays bounded whatever
    /// their number. An extent out of order, overlapping the one before, or beyond the
    /// disk fails the read.
    pub fn stream(
        disk: &'d Disk,
        cfg: ChunkConfig,
        todo: Box<dyn ExtentStream + Send + 'd>,
    ) -> Result<Self, DiskError> {
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
        Ok(ChunkReader {
            disk,
            cfg,
            todo,
            ext: None,
            taken_end: 0,
            ahead: std::collections::VecDeque::new(),
            ahead_error: None,
            todo_ended: false,
            done: false,
            aligned: false,
            cursor: 0,
            data: Vec::with_capacity(cfg.record_data_size),
            len: 0,
            subs: Vec::new(),
            walk: DataWalk::new(),
            runs: Vec::new(),
            digests: None,
            digest_error: None,
            stats: ChunkStats::default(),
        })
    }

    /// Feeds every byte read (zeros included) to `feed`, so the image gets its digest
    /// list without a second pass. Checked up front: every block this reader will not
    /// read must be copyable from the feed's previous list, else the error says why
    /// (the caller then backs up without a list, or aligns its extents).
    ///
    /// Streamed extents are not known up front: every block outside them must come from
    /// the previous list (checked now), and each extent must fall on block boundaries
    /// (checked as it comes; one that does not fails the read).
    pub fn with_digests(mut self, feed: DigestFeed) -> Result<Self, DigestListError> {
        self.check_digests(&feed)?;
        self.digests = Some(feed);
        Ok(self)
    }

    /// The checks of [`with_digests`](Self::with_digests) for a feed that is fed
    /// elsewhere (a backup hashes the blocks of each chunk on its transform threads and
    /// feeds the list in disk order): every block this reader will not read must be
    /// copyable from the feed's previous list, and streamed extents must then fall on
    /// block boundaries (checked as they come).
    pub fn check_digests(&mut self, feed: &DigestFeed) -> Result<(), DigestListError> {
        if let Some(r) = self.todo.replay() {
            return feed.check_extent_stream(r);
        }
        match self.todo.listed() {
            Some(list) => {
                let set: ExtentSet = list.iter().copied().collect();
                feed.check_extents(&set)?;
            }
            None => {
                feed.check_extents(&ExtentSet::new())?;
                self.aligned = true;
            }
        }
        Ok(())
    }

    /// The next extent to read. The extents after it are taken from the stream and
    /// announced to the source ([`SourceRead::will_read`]) up to [`EXTENTS_AHEAD`] in
    /// advance, so a source that reads ahead (an NBD export) keeps its requests in
    /// flight across small extents; an error taking them is reported in its turn.
    fn take_extent(&mut self) -> Result<Option<Extent>, DiskError> {
        self.announce_ahead();
        match self.ahead.pop_front() {
            Some(e) => Ok(Some(e)),
            None => match self.ahead_error.take() {
                Some(e) => Err(e),
                None => {
                    self.done = true;
                    Ok(None)
                }
            },
        }
    }

    /// Takes extents from the stream and announces them until the next one and
    /// [`EXTENTS_AHEAD`] after it wait.
    fn announce_ahead(&mut self) {
        while self.ahead.len() <= EXTENTS_AHEAD && !self.todo_ended && self.ahead_error.is_none() {
            match self.take_from_stream() {
                Ok(Some(e)) => {
                    self.disk.source.will_read(e.offset, e.len);
                    self.ahead.push_back(e);
                }
                Ok(None) => self.todo_ended = true,
                Err(e) => self.ahead_error = Some(e),
            }
        }
    }

    /// Takes the next extent from the stream, checking its order and bounds.
    fn take_from_stream(&mut self) -> Result<Option<Extent>, DiskError> {
        loop {
            let Some(e) = self.todo.next_extent()? else {
                return Ok(None);
            };
            if e.len == 0 {
                continue;
            }
            let size = self.disk.size();
            if e.offset < self.taken_end {
                return Err(DiskError::Config(format!(
                    "extent at {} of length {} comes before the end of the previous one ({}); extents must be ascending and disjoint",
                    e.offset, e.len, self.taken_end
                )));
            }
            if e.end() > size || e.offset.checked_add(e.len).is_none() {
                return Err(DiskError::ExtentBeyondDisk {
                    path: self.disk.path().to_path_buf(),
                    offset: e.offset,
                    len: e.len,
                    size,
                });
            }
            let bs = self.cfg.block_size;
            if self.aligned
                && (e.offset & (bs - 1) != 0 || (e.end() & (bs - 1) != 0 && e.end() != size))
            {
                return Err(DiskError::Config(format!(
                    "extent at {} of length {} does not fall on {bs}-byte block boundaries",
                    e.offset, e.len
                )));
            }
            self.taken_end = e.end();
            return Ok(Some(e));
        }
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

    /// Feeds `len` zero bytes at `offset` to the digest list, if one is being built.
    fn feed_zero(&mut self, offset: u64, len: u64) {
        if let Some(feed) = self.digests.as_mut() {
            if let Err(e) = feed.feed_zero(offset, len) {
                // Dropping the feed removes its unfinished file.
                self.digests = None;
                self.digest_error = Some(e);
            }
        }
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

    /// After a window in which zero pieces left room in the record: whether the record
    /// ends here anyway. It does when it holds data and the window ended on a multiple of
    /// the record size: rather than being topped up with a short window, the next record
    /// then starts on that grid again and its window is one whole read (a source reading
    /// ahead in record-sized, grid-aligned requests hands it over without a copy, see
    /// [`SourceRead::take_read`]). Records of zeros only still grow up to
    /// [`MAX_CHUNK_SPAN`]. Holes and zeros read from a dense copy give the same records.
    fn record_ends_here(&self) -> bool {
        self.len > 0 && self.cursor.is_multiple_of(self.cfg.record_data_size as u64)
    }

    /// The next chunk, or `None` when every extent has been read.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk<'_>>, DiskError> {
        self.len = 0;
        self.subs.clear();
        let bs = self.cfg.block_size;
        let cap = self.cfg.record_data_size;
        let mut chunk_start: Option<u64> = None;
        loop {
            let ext = match self.ext {
                Some(e) if self.cursor < e.end() => e,
                _ if self.done => break,
                _ => {
                    self.ext = self.take_extent()?;
                    match self.ext {
                        Some(e) => {
                            self.cursor = e.offset;
                            continue;
                        }
                        None => break,
                    }
                }
            };
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
            let read_end = self.cursor + want;
            // The data runs of this window; none: it is all hole, and all zero pieces.
            self.runs.clear();
            let mut at = self.cursor;
            while at < read_end {
                match self.walk.next_data(self.disk, at)? {
                    Some((s, e)) if s < read_end => {
                        let s = s.max(at);
                        let e = e.min(read_end);
                        self.runs.push((s, e));
                        at = e;
                    }
                    _ => break,
                }
            }
            if self.runs.is_empty() {
                self.push_sub(self.cursor, want, ExtentKind::Zero);
                self.stats.zero_bytes += want;
                self.feed_zero(self.cursor, want);
                self.cursor = read_end;
                // As zeros read from a dense file would (a hole reads as zeros).
                if self.record_ends_here() {
                    break;
                }
                continue;
            }
            let base = self.len;
            let need = base + want as usize;
            if self.data.len() < need {
                self.data.resize(need, 0);
            } else if base == 0
                && need == cap
                && self.runs.len() == 1
                && self.runs[0] == (self.cursor, read_end)
            {
                // One read fills a whole record's buffer: read the buffer whole (its
                // length only shrinks to the record size, which every later window
                // stays within, so nothing is ever zero-filled for it), so a source
                // that holds exactly these bytes can hand its buffer over instead of
                // copying.
                self.data.truncate(need);
            }
            for &(s, e) in &self.runs {
                let from = base + (s - self.cursor) as usize;
                self.disk
                    .read_into(s, &mut self.data, from..from + (e - s) as usize)?;
                self.stats.read_bytes += e - s;
            }
            // Classify block pieces, compacting data over dropped zero pieces. A piece
            // wholly in a hole is zero unread; a piece partly in one gets its hole part
            // zero-filled first.
            let mut write = base;
            let mut pos = self.cursor;
            let mut run = 0usize;
            while pos < read_end {
                let piece_end = ((pos / bs + 1) * bs).min(read_end);
                let len = (piece_end - pos) as usize;
                let from = base + (pos - self.cursor) as usize;
                while run < self.runs.len() && self.runs[run].1 <= pos {
                    run += 1;
                }
                let zero = if run < self.runs.len() && self.runs[run].0 < piece_end {
                    let mut filled = pos;
                    for &(s, e) in self.runs[run..].iter().take_while(|r| r.0 < piece_end) {
                        if s > filled {
                            let a = base + (filled - self.cursor) as usize;
                            self.data[a..a + (s - filled) as usize].fill(0);
                        }
                        filled = filled.max(e);
                    }
                    if filled < piece_end {
                        let a = base + (filled - self.cursor) as usize;
                        self.data[a..a + (piece_end - filled) as usize].fill(0);
                    }
                    is_zero(&self.data[from..from + len])
                } else {
                    true
                };
                if zero {
                    self.feed_zero(pos, len as u64);
                    self.push_sub(pos, len as u64, ExtentKind::Zero);
                    self.stats.zero_bytes += len as u64;
                } else {
                    if let Some(feed) = self.digests.as_mut() {
                        if let Err(e) = feed.feed_data(pos, &self.data[from..from + len]) {
                            // Dropping the feed removes its unfinished file.
                            self.digests = None;
                            self.digest_error = Some(e);
                        }
                    }
                    if write != from {
                        self.data.copy_within(from..from + len, write);
                    }
                    write += len;
                    self.push_sub(pos, len as u64, ExtentKind::Data);
                    self.stats.data_bytes += len as u64;
                }
                pos = piece_end;
            }
            let dropped = write < base + want as usize;
            self.len = write;
            self.cursor = read_end;
            if dropped && self.record_ends_here() {
                break;
            }
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

    /// A read at 8192 fails as stalled, the message naming the disk and the setting.
    fn assert_read_stalls(disk: &Disk, name: &str) {
        let mut buf = vec![0u8; 4096];
        let e = disk.read_into(8192, &mut buf, 0..4096).unwrap_err();
        assert!(
            matches!(e, DiskError::Stalled { offset: 8192, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains(name) && text.contains(SOURCE_TIMEOUT_ENV),
            "{text}"
        );
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
        assert_read_stalls(&disk, "/dev/hung");
        // Later reads fail at once, even when the device answers again.
        release.send(()).unwrap();
        let mut buf = vec![0u8; 16];
        assert!(matches!(
            disk.read_into(0, &mut buf, 0..16),
            Err(DiskError::Stalled { .. })
        ));
    }

    /// A source that gives up by itself after `limit` (a socket deadline): its reads
    /// time out while `hung` is set; records on which thread each call ran.
    struct Deadline {
        limit: Duration,
        hung: std::sync::atomic::AtomicBool,
        threads: Mutex<Vec<std::thread::ThreadId>>,
    }

    impl SourceRead for Deadline {
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> std::io::Result<usize> {
            self.threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            if self.hung.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(self.limit);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the server did not answer",
                ));
            }
            buf.fill(9);
            Ok(buf.len())
        }

        fn bounded_wait(&self) -> Option<Duration> {
            Some(self.limit)
        }
    }

    fn deadline_disk(limit: Duration, timeout: Duration) -> (Disk, Arc<Deadline>) {
        let src = Arc::new(Deadline {
            limit,
            hung: false.into(),
            threads: Mutex::new(Vec::new()),
        });
        let disk = Disk::from_source(
            src.clone(),
            "nbd+unix:///d?socket=/run/s",
            1 << 20,
            Identity::BlockDevice { rdev: 0 },
        );
        (Disk { timeout, ..disk }, src)
    }

    #[test]
    fn a_source_that_bounds_its_waits_is_read_on_the_callers_thread_and_stalls_the_disk() {
        let (disk, src) = deadline_disk(Duration::from_millis(100), Duration::from_secs(5));
        let mut buf = vec![0u8; 4096];
        disk.read_into(0, &mut buf, 0..4096).unwrap();
        assert!(buf.iter().all(|&b| b == 9));
        assert_eq!(
            *src.threads.lock().unwrap(),
            vec![std::thread::current().id()],
            "read on the caller's thread, no reader thread"
        );
        // The source gives up: the disk is stalled, said with the limit and the setting.
        src.hung.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_read_stalls(&disk, "nbd+unix:///d");
        // Later reads fail at once, without asking the source again.
        src.hung.store(false, std::sync::atomic::Ordering::SeqCst);
        let calls = src.threads.lock().unwrap().len();
        let mut buf = vec![0u8; 16];
        assert!(matches!(
            disk.read_into(0, &mut buf, 0..16),
            Err(DiskError::Stalled { .. })
        ));
        assert!(matches!(disk.find_data(0), Err(DiskError::Stalled { .. })));
        assert_eq!(src.threads.lock().unwrap().len(), calls);
    }

    #[test]
    fn a_source_whose_own_limit_exceeds_the_timeout_is_still_read_on_the_reader_thread() {
        let (disk, src) = deadline_disk(Duration::from_secs(3600), Duration::from_secs(5));
        let mut buf = vec![0u8; 64];
        disk.read_into(0, &mut buf, 0..64).unwrap();
        let threads = src.threads.lock().unwrap();
        assert_eq!(threads.len(), 1);
        assert_ne!(threads[0], std::thread::current().id());
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

    use std::os::fd::AsRawFd;

    /// Frees `[off, off + len)` of `f` (whole file-system blocks become holes, the
    /// partial ones at either end are zeroed).
    fn punch(f: &File, off: u64, len: u64) {
        use nix::fcntl::{fallocate, FallocateFlags};
        fallocate(
            f.as_raw_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            off as i64,
            len as i64,
        )
        .expect("punch a hole");
    }

    /// Whether the file system of `dir` keeps holes and reports them by SEEK_DATA.
    fn holes_supported(dir: &Path) -> bool {
        let p = dir.join("probe");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"x", 32 << 20).unwrap();
        drop(f);
        let disk = Disk::open(&p).unwrap();
        let first = disk.find_data(0).unwrap();
        let _ = std::fs::remove_file(&p);
        matches!(first, Some((s, _)) if s >= 16 << 20)
    }

    /// Writes `len` bytes of a pattern (never zero) at `off`.
    fn write_data(f: &File, off: u64, len: u64) {
        let buf: Vec<u8> = (0..len).map(|i| ((off + i) % 251 + 1) as u8).collect();
        f.write_all_at(&buf, off).unwrap();
    }

    /// Every data run from 0, walked forward.
    fn runs_of(disk: &Disk) -> (Vec<(u64, u64)>, u64) {
        let mut walk = DataWalk::new();
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((s, e)) = walk.next_data(disk, at).unwrap() {
            assert!(e > at && s < e, "run {s}..{e} asked at {at}");
            out.push((s.max(at), e));
            at = e;
        }
        (out, walk.lookups())
    }

    fn covered(runs: &[(u64, u64)], a: u64, b: u64) -> bool {
        (a..b)
            .step_by(512)
            .all(|x| runs.iter().any(|&(s, e)| s <= x && x < e))
    }

    #[test]
    fn the_data_walk_finds_data_and_holes_made_by_writes_and_punches() {
        let dir = tempfile::tempdir().unwrap();
        if !holes_supported(dir.path()) {
            eprintln!("skipped: the temp file system does not report holes");
            return;
        }
        let p = dir.path().join("thin");
        let f = File::create(&p).unwrap();
        let size = 40 * 1024 * 1024 + 12345;
        f.set_len(size).unwrap();
        write_data(&f, 100_000, 3 << 20); // 100 000 .. 3 245 728
        write_data(&f, 20 << 20, 1 << 20);
        punch(&f, 1 << 20, 1 << 20); // a hole in the middle of the first run
        write_data(&f, size - 100, 100); // data in the last partial block
        drop(f);
        let disk = Disk::open(&p).unwrap();
        let (runs, lookups) = runs_of(&disk);
        // Ascending, disjoint, within the disk.
        for w in runs.windows(2) {
            assert!(w[0].1 <= w[1].0, "{runs:?}");
        }
        assert!(runs.last().unwrap().1 <= size);
        assert!(covered(&runs, 100_000, 1 << 20), "{runs:?}");
        assert!(covered(&runs, 2 << 20, 3 << 20), "{runs:?}");
        assert!(covered(&runs, 20 << 20, 21 << 20), "{runs:?}");
        assert!(covered(&runs, size - 100, size), "{runs:?}");
        // The holes are holes (the file system rounds to its blocks, 64 KiB at most).
        let slack = 64 * 1024;
        for (a, b) in [
            (0, 100_000 - slack),
            ((1 << 20) + slack, (2 << 20) - slack),
            (3_245_728 + slack, (20 << 20) - slack),
            ((21 << 20) + slack, size - 100 - slack),
        ] {
            assert!(
                runs.iter().all(|&(s, e)| e <= a || s >= b),
                "hole {a}..{b} reported as data: {runs:?}"
            );
        }
        assert_eq!(lookups as usize, runs.len() + 1, "one question per run");
        // Asking again inside a run or a hole answers from the run found.
        let mut walk = DataWalk::new();
        let (s, e) = walk.next_data(&disk, 10).unwrap().unwrap();
        assert!(s <= 100_000 && e >= 1 << 20, "{s}..{e}");
        assert_eq!(walk.next_data(&disk, 500_000).unwrap(), Some((s, e)));
        assert_eq!(walk.lookups(), 1);
        assert!(walk.next_data(&disk, size).unwrap().is_none());
    }

    #[test]
    fn an_all_hole_file_has_no_data_and_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        if !holes_supported(dir.path()) {
            eprintln!("skipped: the temp file system does not report holes");
            return;
        }
        let p = dir.path().join("empty");
        File::create(&p)
            .unwrap()
            .set_len(8 * 1024 * 1024 * 1024 + 777)
            .unwrap();
        let disk = Disk::open(&p).unwrap();
        assert_eq!(runs_of(&disk).0, vec![]);
        let mut r = ChunkReader::whole_disk(&disk, ChunkConfig::default()).unwrap();
        let mut extents = Vec::new();
        while let Some(c) = r.next_chunk().unwrap() {
            assert!(c.data.is_empty());
            extents.extend_from_slice(c.extents);
        }
        assert!(extents.iter().all(|e| e.kind == ExtentKind::Zero));
        let total: u64 = extents.iter().map(|e| e.len).sum();
        assert_eq!(total, disk.size());
        let st = r.stats();
        assert_eq!(st.read_bytes, 0);
        assert_eq!(st.zero_bytes, disk.size());
        // One chunk per MAX_CHUNK_SPAN, as reading the zeros would give.
        assert_eq!(st.chunks, disk.size().div_ceil(MAX_CHUNK_SPAN));
    }

    /// Extents handed out one at a time, as an NBD dirty bitmap does.
    struct Streamed(std::vec::IntoIter<Extent>);

    impl ExtentStream for Streamed {
        fn next_extent(&mut self) -> Result<Option<Extent>, DiskError> {
            Ok(self.0.next())
        }
    }

    fn streamed(v: &[(u64, u64)]) -> Box<dyn ExtentStream + Send> {
        Box::new(Streamed(
            v.iter()
                .map(|&(o, l)| Extent::new(o, l))
                .collect::<Vec<_>>()
                .into_iter(),
        ))
    }

    #[test]
    fn streamed_extents_read_like_listed_ones_and_bad_order_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        let f = File::create(&p).unwrap();
        f.set_len(4 << 20).unwrap();
        write_data(&f, 0, 4 << 20);
        drop(f);
        let disk = Disk::open(&p).unwrap();
        let ext = [
            (0u64, 128 * 1024u64),
            (1 << 20, 64 * 1024),
            (3 << 20, 1 << 20),
        ];
        let collect = |mut r: ChunkReader<'_>| {
            let mut out = Vec::new();
            while let Some(c) = r.next_chunk().unwrap() {
                out.push((c.extents.to_vec(), c.data.to_vec()));
            }
            out
        };
        let mut set = ExtentSet::new();
        for &(o, l) in &ext {
            set.insert(o, l);
        }
        let cfg = ChunkConfig::default();
        let a = collect(ChunkReader::extents(&disk, cfg, &set).unwrap());
        let b = collect(ChunkReader::stream(&disk, cfg, streamed(&ext)).unwrap());
        assert_eq!(a, b);
        let total: u64 = b.iter().flat_map(|c| c.0.iter()).map(|e| e.len).sum();
        assert_eq!(total, 128 * 1024 + 64 * 1024 + (1 << 20));

        // Out of order, overlapping, beyond the disk: the read fails, naming why.
        for bad in [
            vec![(1 << 20, 4096), (0, 4096)],
            vec![(0, 8192), (4096, 4096)],
            vec![(0, 4096), (4 << 20, 1)],
        ] {
            let mut r = ChunkReader::stream(&disk, cfg, streamed(&bad)).unwrap();
            let mut err = None;
            loop {
                match r.next_chunk() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            assert!(err.is_some(), "{bad:?} was accepted");
        }
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
