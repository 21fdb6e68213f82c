//! Per-block BLAKE3 digest lists and change detection by hash scan.
//!
//! A digest list is a file holding one BLAKE3 digest per tracking block of a disk. It
//! is written and read as a stream (never held whole in memory). Layout, all integers
//! little-endian. Version 2 (written now):
//!
//! ```text
//! header  (48 bytes): magic "TVDIGST\0" | version u32 (=2) | flags u32 (=0)
//!                     | block_size u64 | disk_size u64 | count u64 | body_len u64
//! body    (body_len bytes): entries in block order, each
//!                     0x01 | digest (32 bytes)    one block
//!                     0x02 | n u64 (n >= 1)        n blocks of zeros: each a whole block
//!                                                  whose digest is BLAKE3 of block_size zero
//!                                                  bytes (not stored)
//! trailer (40 bytes): magic "TVDGEND\0" | BLAKE3 of body and header (in that order:
//!                     body_len is known only at the end)
//! ```
//! The zero runs keep the list of a thin disk small (a 64 GiB disk holding 1 GiB: a few
//! hundred KiB instead of 32 MiB). Version 1 (still read):
//!
//! ```text
//! header  (40 bytes): magic "TVDIGST\0" | version u32 (=1) | flags u32 (=0)
//!                     | block_size u64 | disk_size u64 | count u64
//! digests (count x 32 bytes): BLAKE3 of each block's bytes, the last block possibly
//!                     shorter (disk_size need not be a multiple of block_size)
//! trailer (40 bytes): magic "TVDGEND\0" | BLAKE3 of header and digests
//! ```
//! `count` must equal `ceil(disk_size / block_size)`. A list is written to a temporary
//! file beside its destination and renamed into place only when complete, so a crash
//! never leaves a plausible half list.
//!
//! [`scan_changes`] reads a disk once, compares each block's digest with a previous
//! list and writes the new list in the same pass. [`DigestFeed`] builds a list from
//! the bytes a [`ChunkReader`](super::disk::ChunkReader) reads anyway (a full backup),
//! or from those plus the previous list's digests for the blocks not read (a CBT
//! incremental whose extents are block-aligned).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::disk::{is_zero, DataWalk, Disk, DiskError};
use super::valid_block_size;
use crate::extents::{Extent, ExtentSet};

pub const DIGEST_LIST_MAGIC: [u8; 8] = *b"TVDIGST\0";
pub const DIGEST_LIST_TRAILER_MAGIC: [u8; 8] = *b"TVDGEND\0";
/// The version written; [`DIGEST_LIST_V1`] lists are still read.
pub const DIGEST_LIST_VERSION: u32 = 2;
/// The first version: one digest per block, no zero runs.
pub const DIGEST_LIST_V1: u32 = 1;
pub const DIGEST_LEN: usize = 32;
const HEADER_LEN_V1: u64 = 40;
const HEADER_LEN: u64 = 48;
const TRAILER_LEN: u64 = 40;
/// Body entry: one block's digest follows.
const ENTRY_DIGEST: u8 = 1;
/// Body entry: a count of whole zero blocks follows.
const ENTRY_ZEROS: u8 = 2;

/// Threads hashing a scan's windows (each window's blocks on one of them).
pub const SCAN_HASHERS: usize = 2;

/// Bytes read from the disk per I/O during a scan (1 MiB, or one block if larger):
/// big enough for sequential throughput, small enough to keep memory flat.
pub const SCAN_IO_SIZE: u64 = 1024 * 1024;

/// A BLAKE3 digest of one block.
pub type Digest = [u8; DIGEST_LEN];

#[derive(Debug, Error)]
pub enum DigestListError {
    #[error("digest list {path} does not exist")]
    Missing { path: PathBuf },
    #[error("digest list {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a tapevault digest list (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("digest list {path} has version {version}; this tapevault reads versions {DIGEST_LIST_V1} and {DIGEST_LIST_VERSION}")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("digest list {path} is inconsistent: {what}")]
    Inconsistent { path: PathBuf, what: String },
    #[error("digest list {path} is {actual} bytes long; its header says {expected}: truncated or padded")]
    WrongLength {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("digest list {path} fails its checksum: corrupt")]
    Corrupt { path: PathBuf },
    #[error("digest list {path} uses block size {list}, but {wanted} was asked for")]
    BlockSizeMismatch {
        path: PathBuf,
        list: u64,
        wanted: u64,
    },
    #[error("cannot build a digest list: {0}")]
    Feed(String),
}

/// The header facts of a digest list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestListSummary {
    pub block_size: u64,
    pub disk_size: u64,
    pub count: u64,
}

/// Number of blocks of `block_size` covering `disk_size` bytes.
pub fn block_count(disk_size: u64, block_size: u64) -> u64 {
    disk_size.div_ceil(block_size)
}

/// Length of block `index` of a disk of `disk_size` bytes (0 past the end).
pub fn block_len(index: u64, block_size: u64, disk_size: u64) -> u64 {
    disk_size
        .saturating_sub(index.saturating_mul(block_size))
        .min(block_size)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DigestListError + '_ {
    move |source| DigestListError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a digest list (version 2) as a stream; see the module docs.
pub struct DigestListWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    /// Over the body; the header is added at the end.
    hasher: BatchedHasher,
    summary: DigestListSummary,
    written: u64,
    body_len: u64,
    /// Whole zero blocks pushed and not yet written as a run.
    zeros: u64,
    zero_digest: Digest,
}

impl DigestListWriter {
    /// Starts a list for a disk of `disk_size` bytes in blocks of `block_size`.
    pub fn create(path: &Path, block_size: u64, disk_size: u64) -> Result<Self, DigestListError> {
        if !valid_block_size(block_size) {
            return Err(DigestListError::Feed(format!(
                "block size {block_size} is not a power of two between {} and {}",
                super::MIN_BLOCK_SIZE,
                super::MAX_BLOCK_SIZE
            )));
        }
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let tmp = path.with_file_name(name);
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let summary = DigestListSummary {
            block_size,
            disk_size,
            count: block_count(disk_size, block_size),
        };
        let mut w = DigestListWriter {
            out: BufWriter::new(file),
            tmp,
            path: path.to_path_buf(),
            hasher: BatchedHasher::new(),
            summary,
            written: 0,
            body_len: 0,
            zeros: 0,
            zero_digest: zero_digest(block_size),
        };
        // Room for the header, written when the body's length is known.
        w.out
            .write_all(&[0u8; HEADER_LEN as usize])
            .map_err(io_err(&w.tmp))?;
        Ok(w)
    }

    fn header(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[0..8].copy_from_slice(&DIGEST_LIST_MAGIC);
        h[8..12].copy_from_slice(&DIGEST_LIST_VERSION.to_le_bytes());
        h[16..24].copy_from_slice(&self.summary.block_size.to_le_bytes());
        h[24..32].copy_from_slice(&self.summary.disk_size.to_le_bytes());
        h[32..40].copy_from_slice(&self.summary.count.to_le_bytes());
        h[40..48].copy_from_slice(&self.body_len.to_le_bytes());
        h
    }

    pub fn summary(&self) -> DigestListSummary {
        self.summary
    }

    /// Index of the next block to write.
    pub fn next_block(&self) -> u64 {
        self.written
    }

    fn entry(&mut self, bytes: &[u8]) -> Result<(), DigestListError> {
        self.hasher.update(bytes);
        self.body_len += bytes.len() as u64;
        self.out.write_all(bytes).map_err(io_err(&self.tmp))
    }

    fn flush_zeros(&mut self) -> Result<(), DigestListError> {
        if self.zeros > 0 {
            let mut e = [0u8; 9];
            e[0] = ENTRY_ZEROS;
            e[1..].copy_from_slice(&self.zeros.to_le_bytes());
            self.zeros = 0;
            self.entry(&e)?;
        }
        Ok(())
    }

    fn room(&self, n: u64) -> Result<(), DigestListError> {
        if self.written.saturating_add(n) > self.summary.count {
            return Err(DigestListError::Feed(format!(
                "more than {} block digests for a disk of {} bytes",
                self.summary.count, self.summary.disk_size
            )));
        }
        Ok(())
    }

    /// Appends the digest of the next block.
    pub fn push(&mut self, digest: &Digest) -> Result<(), DigestListError> {
        self.room(1)?;
        if *digest == self.zero_digest {
            // Only a whole block of zeros has this digest.
            self.zeros += 1;
        } else {
            self.flush_zeros()?;
            let mut e = [0u8; 1 + DIGEST_LEN];
            e[0] = ENTRY_DIGEST;
            e[1..].copy_from_slice(digest);
            self.entry(&e)?;
        }
        self.written += 1;
        Ok(())
    }

    /// Appends `n` whole blocks of zeros (none of them the disk's partial last block).
    pub fn push_zeros(&mut self, n: u64) -> Result<(), DigestListError> {
        self.room(n)?;
        let bs = self.summary.block_size;
        if n > 0 && block_len(self.written + n - 1, bs, self.summary.disk_size) != bs {
            return Err(DigestListError::Feed(format!(
                "block {} is not a whole block of zeros",
                self.written + n - 1
            )));
        }
        self.zeros += n;
        self.written += n;
        Ok(())
    }

    /// Writes the trailer and the header, syncs and renames the list into place.
    pub fn finish(mut self) -> Result<DigestListSummary, DigestListError> {
        if self.written != self.summary.count {
            return Err(DigestListError::Feed(format!(
                "only {} of {} block digests were written",
                self.written, self.summary.count
            )));
        }
        self.flush_zeros()?;
        let header = self.header();
        self.hasher.update(&header);
        let sum = self.hasher.finalize();
        let tmp = self.tmp.clone();
        self.out
            .write_all(&DIGEST_LIST_TRAILER_MAGIC)
            .and_then(|_| self.out.write_all(sum.as_bytes()))
            .and_then(|_| self.out.flush())
            .map_err(io_err(&tmp))?;
        let f = self.out.get_mut();
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&header))
            .and_then(|_| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        Ok(self.summary)
    }
}

impl Drop for DigestListWriter {
    fn drop(&mut self) {
        // An unfinished list leaves no file behind (after finish the temp is renamed
        // away and this removal fails harmlessly).
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Reads a digest list (version 1 or 2) as a stream, checking the trailer after the
/// last digest.
pub struct DigestListReader {
    input: BufReader<File>,
    path: PathBuf,
    hasher: BatchedHasher,
    summary: DigestListSummary,
    read: u64,
    version: u32,
    /// Version 2: the header, hashed after the body.
    header: [u8; HEADER_LEN as usize],
    /// Version 2: body bytes not read yet.
    body_left: u64,
    /// Version 2: zero blocks of the current run not handed out yet.
    zeros: u64,
    zero_digest: Digest,
}

impl DigestListReader {
    /// Opens a list and validates its header and length. With `block_size`, a list of
    /// another block size is refused.
    pub fn open(path: &Path, block_size: Option<u64>) -> Result<Self, DigestListError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                DigestListError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                DigestListError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let actual = file.metadata().map_err(io_err(path))?.len();
        let mut input = BufReader::new(file);
        let mut header = [0u8; HEADER_LEN as usize];
        if actual < HEADER_LEN_V1 {
            return Err(DigestListError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        input
            .read_exact(&mut header[..HEADER_LEN_V1 as usize])
            .map_err(io_err(path))?;
        if header[0..8] != DIGEST_LIST_MAGIC {
            return Err(DigestListError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        let u32_at =
            |h: &[u8], i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap_or([0; 4]));
        let u64_at =
            |h: &[u8], i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or([0; 8]));
        let version = u32_at(&header, 8);
        if version != DIGEST_LIST_VERSION && version != DIGEST_LIST_V1 {
            return Err(DigestListError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let inconsistent = |what: String| DigestListError::Inconsistent {
            path: path.to_path_buf(),
            what,
        };
        if u32_at(&header, 12) != 0 {
            return Err(inconsistent(format!(
                "unknown flags {:#x}",
                u32_at(&header, 12)
            )));
        }
        let summary = DigestListSummary {
            block_size: u64_at(&header, 16),
            disk_size: u64_at(&header, 24),
            count: u64_at(&header, 32),
        };
        if !valid_block_size(summary.block_size) {
            return Err(inconsistent(format!("block size {}", summary.block_size)));
        }
        if summary.count != block_count(summary.disk_size, summary.block_size) {
            return Err(inconsistent(format!(
                "{} digests for a disk of {} bytes in blocks of {}",
                summary.count, summary.disk_size, summary.block_size
            )));
        }
        let mut body_left = 0;
        let expected = if version == DIGEST_LIST_V1 {
            summary
                .count
                .checked_mul(DIGEST_LEN as u64)
                .and_then(|d| d.checked_add(HEADER_LEN_V1 + TRAILER_LEN))
                .ok_or_else(|| inconsistent(format!("digest count {} overflows", summary.count)))?
        } else {
            if actual < HEADER_LEN {
                return Err(DigestListError::WrongLength {
                    path: path.to_path_buf(),
                    expected: HEADER_LEN + TRAILER_LEN,
                    actual,
                });
            }
            input
                .read_exact(&mut header[HEADER_LEN_V1 as usize..])
                .map_err(io_err(path))?;
            body_left = u64_at(&header, 40);
            body_left
                .checked_add(HEADER_LEN + TRAILER_LEN)
                .ok_or_else(|| inconsistent(format!("body length {body_left} overflows")))?
        };
        if actual != expected {
            return Err(DigestListError::WrongLength {
                path: path.to_path_buf(),
                expected,
                actual,
            });
        }
        if let Some(wanted) = block_size {
            if wanted != summary.block_size {
                return Err(DigestListError::BlockSizeMismatch {
                    path: path.to_path_buf(),
                    list: summary.block_size,
                    wanted,
                });
            }
        }
        let mut hasher = BatchedHasher::new();
        if version == DIGEST_LIST_V1 {
            hasher.update(&header[..HEADER_LEN_V1 as usize]);
        }
        Ok(DigestListReader {
            input,
            path: path.to_path_buf(),
            hasher,
            summary,
            read: 0,
            version,
            header,
            body_left,
            zeros: 0,
            zero_digest: if version == DIGEST_LIST_V1 {
                [0; DIGEST_LEN]
            } else {
                zero_digest(summary.block_size)
            },
        })
    }

    pub fn summary(&self) -> DigestListSummary {
        self.summary
    }

    /// The list's format version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Index of the next digest to be read.
    pub fn next_index(&self) -> u64 {
        self.read
    }

    fn corrupt(&self) -> DigestListError {
        DigestListError::Corrupt {
            path: self.path.clone(),
        }
    }

    /// Reads `buf.len()` bytes of a version 2 body.
    fn body(&mut self, buf: &mut [u8]) -> Result<(), DigestListError> {
        if (buf.len() as u64) > self.body_left {
            return Err(self.corrupt());
        }
        self.input.read_exact(buf).map_err(io_err(&self.path))?;
        self.hasher.update(buf);
        self.body_left -= buf.len() as u64;
        Ok(())
    }

    /// The next block's digest; after the last one the trailer is checked, and a
    /// mismatch is reported as [`DigestListError::Corrupt`].
    pub fn next_digest(&mut self) -> Result<Option<Digest>, DigestListError> {
        if self.read >= self.summary.count {
            return Ok(None);
        }
        let d = if self.version == DIGEST_LIST_V1 {
            let mut d = [0u8; DIGEST_LEN];
            self.input.read_exact(&mut d).map_err(io_err(&self.path))?;
            self.hasher.update(&d);
            d
        } else if self.zeros > 0 {
            self.zeros -= 1;
            self.zero_digest
        } else {
            let mut tag = [0u8; 1];
            self.body(&mut tag)?;
            match tag[0] {
                ENTRY_DIGEST => {
                    let mut d = [0u8; DIGEST_LEN];
                    self.body(&mut d)?;
                    d
                }
                ENTRY_ZEROS => {
                    let mut n = [0u8; 8];
                    self.body(&mut n)?;
                    let n = u64::from_le_bytes(n);
                    // A run is at least one block, stays within the list, and holds
                    // whole blocks only.
                    let last = self.read.saturating_add(n).saturating_sub(1);
                    if n == 0
                        || n > self.summary.count - self.read
                        || block_len(last, self.summary.block_size, self.summary.disk_size)
                            != self.summary.block_size
                    {
                        return Err(self.corrupt());
                    }
                    self.zeros = n - 1;
                    self.zero_digest
                }
                _ => return Err(self.corrupt()),
            }
        };
        self.read += 1;
        if self.read == self.summary.count {
            self.check_trailer()?;
        }
        Ok(Some(d))
    }

    fn check_trailer(&mut self) -> Result<(), DigestListError> {
        if self.version != DIGEST_LIST_V1 {
            if self.body_left != 0 || self.zeros != 0 {
                return Err(self.corrupt());
            }
            let header = self.header;
            self.hasher.update(&header);
        }
        let mut t = [0u8; TRAILER_LEN as usize];
        self.input.read_exact(&mut t).map_err(io_err(&self.path))?;
        if t[0..8] != DIGEST_LIST_TRAILER_MAGIC || t[8..] != *self.hasher.finalize().as_bytes() {
            return Err(self.corrupt());
        }
        Ok(())
    }

    /// Checks the checksum of a list just opened over its raw bytes (the body, then for
    /// version 2 the header), without decoding the entries.
    fn verify_checksum(mut self) -> Result<DigestListSummary, DigestListError> {
        let mut left = if self.version == DIGEST_LIST_V1 {
            self.summary.count * DIGEST_LEN as u64
        } else {
            if self.summary.count == 0 && self.body_left != 0 {
                return Err(self.corrupt());
            }
            std::mem::take(&mut self.body_left)
        };
        let mut buf = vec![0u8; (left.min(HASH_BATCH as u64 * 4)) as usize];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.input
                .read_exact(&mut buf[..n])
                .map_err(io_err(&self.path))?;
            self.hasher.update(&buf[..n]);
            left -= n as u64;
        }
        self.read = self.summary.count;
        self.check_trailer()?;
        Ok(self.summary)
    }

    /// Reads to the end, checking the trailer (also for an empty list).
    pub fn verify_rest(mut self) -> Result<DigestListSummary, DigestListError> {
        if self.summary.count == 0 {
            self.check_trailer()?;
        }
        while self.next_digest()?.is_some() {}
        Ok(self.summary)
    }
}

/// Checks a whole digest list (header, length, checksum) in one streaming pass over its
/// raw bytes: the entries are not decoded (a list whose checksum holds is the list
/// that was written; a reader decodes and bounds-checks each entry anyway). Decoding
/// them cost about 2 ms per 4 GiB of disk (65536 entries), 2 s for a 4 TiB disk, on
/// every incremental, before any reading.
pub fn verify_digest_list(
    path: &Path,
    block_size: Option<u64>,
) -> Result<DigestListSummary, DigestListError> {
    DigestListReader::open(path, block_size)?.verify_checksum()
}

/// Digest of `len` zero bytes, hashed without allocating more than a small buffer.
fn zero_digest(len: u64) -> Digest {
    const ZEROS: [u8; 16 * 1024] = [0u8; 16 * 1024];
    let mut h = blake3::Hasher::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        left -= n as u64;
    }
    *h.finalize().as_bytes()
}

/// Builds a digest list from the bytes a chunk reader reads, in disk order. Blocks it
/// is not fed (a CBT incremental reads only changed, block-aligned extents) are
/// copied from the previous list, which must then be given and match block for block.
pub struct DigestFeed {
    writer: DigestListWriter,
    prev: Option<DigestListReader>,
    hasher: blake3::Hasher,
    /// Bytes of the current block hashed so far.
    fill: u64,
    /// Next disk offset expected.
    next: u64,
}

impl DigestFeed {
    /// A feed writing a list for `disk_size` bytes in `block_size` blocks to `out`,
    /// copying unread blocks from `previous` (opened and checked with the same block
    /// size; its trailer is checked before [`finish`](Self::finish) succeeds).
    pub fn new(
        out: &Path,
        block_size: u64,
        disk_size: u64,
        previous: Option<&Path>,
    ) -> Result<Self, DigestListError> {
        // Check the previous list whole before anything is read, so a corrupt one is
        // known before the backup starts rather than when the list is finished.
        let prev = match previous {
            Some(p) => {
                verify_digest_list(p, Some(block_size))?;
                Some(DigestListReader::open(p, Some(block_size))?)
            }
            None => None,
        };
        let writer = DigestListWriter::create(out, block_size, disk_size)?;
        Ok(DigestFeed {
            writer,
            prev,
            hasher: blake3::Hasher::new(),
            fill: 0,
            next: 0,
        })
    }

    /// Checks that a reader reading exactly `set` (ascending, within the disk) can
    /// feed this list: every gap must start and end on a block boundary (or the disk's
    /// end), and its blocks must exist with the same length in the previous list.
    pub fn check_extents(&self, set: &ExtentSet) -> Result<(), DigestListError> {
        self.check_extent_stream(set.iter().map(Ok))
    }

    /// [`check_extents`](Self::check_extents) over extents read one at a time (a
    /// spooled list), ascending and disjoint: nothing is held but the current gap.
    pub fn check_extent_stream<I>(&self, extents: I) -> Result<(), DigestListError>
    where
        I: IntoIterator<Item = std::io::Result<Extent>>,
    {
        let disk_size = self.disk_size();
        let mut at = 0u64;
        for e in extents {
            let e = e.map_err(|e| {
                DigestListError::Feed(format!(
                    "reading back the extent list from its temporary file: {e}"
                ))
            })?;
            if e.offset > at {
                self.check_gap(at, e.offset)?;
            }
            at = e.end();
        }
        if at < disk_size {
            self.check_gap(at, disk_size)?;
        }
        Ok(())
    }

    /// Whether the unread range `start..end` can take its digests from the previous list.
    fn check_gap(&self, start: u64, end: u64) -> Result<(), DigestListError> {
        let bs = self.bs();
        let disk_size = self.disk_size();
        {
            let aligned = |x: u64| x & (bs - 1) == 0 || x == disk_size;
            if !aligned(start) || !aligned(end) {
                return Err(DigestListError::Feed(format!(
                    "unread range {start}..{end} does not fall on {bs}-byte block boundaries; align the extents to the block size"
                )));
            }
            let prev = self.prev.as_ref().ok_or_else(|| {
                DigestListError::Feed(format!(
                    "range {start}..{end} will not be read and there is no previous digest list to take its digests from"
                ))
            })?;
            // Only the last block of either disk can be partial, so the gap's last
            // block decides whether every block of the gap matches.
            let last = block_count(end, bs) - 1;
            let ps = prev.summary().disk_size;
            if block_len(last, bs, ps) != block_len(last, bs, disk_size) {
                return Err(DigestListError::Feed(format!(
                    "range {start}..{end} will not be read and the previous digest list (disk of {ps} bytes) has no matching digests for it (disk of {disk_size} bytes)"
                )));
            }
        }
        Ok(())
    }

    fn bs(&self) -> u64 {
        self.writer.summary.block_size
    }

    fn disk_size(&self) -> u64 {
        self.writer.summary.disk_size
    }

    /// Copies digests of unread blocks from the previous list up to `offset`.
    fn fill_gap(&mut self, offset: u64) -> Result<(), DigestListError> {
        if offset == self.next {
            return Ok(());
        }
        if offset < self.next {
            return Err(DigestListError::Feed(format!(
                "bytes at {offset} fed after bytes up to {}: reads must be in disk order",
                self.next
            )));
        }
        let bs = self.bs();
        if self.fill != 0 || (offset & (bs - 1) != 0 && offset != self.disk_size()) {
            return Err(DigestListError::Feed(format!(
                "unread gap {}..{offset} does not fall on {bs}-byte block boundaries; align changed extents to the block size",
                self.next
            )));
        }
        let first = self.next / bs;
        let last = block_count(offset, bs);
        let disk_size = self.disk_size();
        for index in first..last {
            let prev = self.prev.as_mut().ok_or_else(|| {
                DigestListError::Feed(format!(
                    "block {index} was not read and there is no previous digest list to take it from"
                ))
            })?;
            let ps = prev.summary();
            if block_len(index, bs, ps.disk_size) != block_len(index, bs, disk_size) {
                return Err(DigestListError::Feed(format!(
                    "block {index} was not read and the previous list (disk of {} bytes) has no digest for it as it is now (disk of {disk_size} bytes)",
                    ps.disk_size
                )));
            }
            while prev.next_index() < index {
                prev.next_digest()?;
            }
            let d = prev.next_digest()?.ok_or_else(|| {
                DigestListError::Feed(format!("previous list ends before block {index}"))
            })?;
            self.writer.push(&d)?;
        }
        self.next = offset;
        Ok(())
    }

    fn feed(&mut self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<(), DigestListError> {
        self.fill_gap(offset)?;
        let bs = self.bs();
        let disk_size = self.disk_size();
        if offset.saturating_add(len) > disk_size {
            return Err(DigestListError::Feed(format!(
                "bytes {offset}..{} lie beyond the disk ({disk_size} bytes)",
                offset.saturating_add(len)
            )));
        }
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let index = pos / bs;
            let this_block = block_len(index, bs, disk_size);
            let n = (this_block - self.fill).min(end - pos);
            match data {
                Some(d) => {
                    let at = (pos - offset) as usize;
                    self.hasher.update(&d[at..at + n as usize]);
                }
                None => {
                    // Whole blocks of zeros are counted, not hashed (the list stores
                    // them as a run).
                    if self.fill == 0 && n == bs {
                        let k = (end - pos) / bs;
                        // The disk's partial last block is never whole.
                        let k = k.min(disk_size / bs - index);
                        self.writer.push_zeros(k)?;
                        pos += k * bs;
                        continue;
                    }
                    self.hasher.update_zeros(n);
                }
            }
            self.fill += n;
            pos += n;
            if self.fill == this_block {
                self.end_block()?;
            }
        }
        self.next = end;
        Ok(())
    }

    fn end_block(&mut self) -> Result<(), DigestListError> {
        let d = *self.hasher.finalize().as_bytes();
        self.writer.push(&d)?;
        self.hasher.reset();
        self.fill = 0;
        Ok(())
    }

    /// Feeds bytes read at `offset`.
    pub fn feed_data(&mut self, offset: u64, data: &[u8]) -> Result<(), DigestListError> {
        self.feed(offset, data.len() as u64, Some(data))
    }

    /// Feeds the digest of the whole block at `offset` (a block boundary; `len` is the
    /// block's length, shorter only for the disk's partial last block), hashed
    /// elsewhere (a backup's transform threads hash blocks in parallel and the list is
    /// fed in disk order here).
    pub fn feed_digest(
        &mut self,
        offset: u64,
        len: u64,
        digest: &Digest,
    ) -> Result<(), DigestListError> {
        self.fill_gap(offset)?;
        let bs = self.bs();
        let disk_size = self.disk_size();
        if self.fill != 0
            || offset & (bs - 1) != 0
            || len == 0
            || len != block_len(offset / bs, bs, disk_size)
        {
            return Err(DigestListError::Feed(format!(
                "a block digest fed for bytes {offset}..{} which are not one whole {bs}-byte block of a disk of {disk_size} bytes",
                offset.saturating_add(len)
            )));
        }
        self.writer.push(digest)?;
        self.next = offset + len;
        Ok(())
    }

    /// Feeds `len` zero bytes at `offset` (read and found zero).
    pub fn feed_zero(&mut self, offset: u64, len: u64) -> Result<(), DigestListError> {
        self.feed(offset, len, None)
    }

    /// Copies any remaining blocks from the previous list, checks the previous list's
    /// trailer, and commits the new list.
    pub fn finish(mut self) -> Result<DigestListSummary, DigestListError> {
        let size = self.disk_size();
        self.fill_gap(size)?;
        if let Some(prev) = self.prev.take() {
            prev.verify_rest()?;
        }
        let writer = self.writer;
        writer.finish()
    }
}

/// A BLAKE3 hasher fed in small pieces (a digest list's entries, 1 to 33 bytes) that
/// hashes them in batches of [`HASH_BATCH`] bytes: BLAKE3 hashes a large input many
/// chunks at a time with SIMD, but small updates one 64-byte block at a time. The
/// digest is the same; checking, copying and writing a 4 GiB disk's lists (2 MiB each)
/// in small updates took about 10 ms of an incremental's CPU (docs/BENCHMARKS.md).
struct BatchedHasher {
    hasher: blake3::Hasher,
    pending: Vec<u8>,
}

/// Bytes a [`BatchedHasher`] gathers before hashing them.
const HASH_BATCH: usize = 64 * 1024;

impl BatchedHasher {
    fn new() -> BatchedHasher {
        BatchedHasher {
            hasher: blake3::Hasher::new(),
            pending: Vec::with_capacity(HASH_BATCH),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        if self.pending.len() + bytes.len() > HASH_BATCH {
            self.hasher.update(&self.pending);
            self.pending.clear();
        }
        if bytes.len() >= HASH_BATCH {
            self.hasher.update(bytes);
        } else {
            self.pending.extend_from_slice(bytes);
        }
    }

    fn finalize(&mut self) -> blake3::Hash {
        self.hasher.update(&self.pending);
        self.pending.clear();
        self.hasher.finalize()
    }
}

trait HasherZeros {
    fn update_zeros(&mut self, n: u64);
}

impl HasherZeros for blake3::Hasher {
    fn update_zeros(&mut self, n: u64) {
        const ZEROS: [u8; 16 * 1024] = [0u8; 16 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(ZEROS.len() as u64) as usize;
            self.update(&ZEROS[..k]);
            left -= k as u64;
        }
    }
}

#[derive(Debug, Error)]
pub enum ScanError {
    /// The previous digest list cannot be used: take a full backup instead and tell
    /// the user this reason.
    #[error("previous digest list unusable, a full backup is needed: {0}")]
    PreviousList(DigestListError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("cannot write the new digest list: {0}")]
    NewList(DigestListError),
}

/// Most bytes of hole one scan item stands for (4096 blocks of 64 KiB): bounds the
/// digests an item carries through the pipeline.
const SCAN_HOLE_RUN: u64 = 256 * 1024 * 1024;

/// A piece of the disk for the scan's hashing stage: whole blocks from a block
/// boundary, either read into `data` (holes within its blocks zero-filled), or, when
/// `hole` is set, `len` bytes of hole that were not read.
#[derive(Default)]
struct ScanChunk {
    data: Vec<u8>,
    start: u64,
    len: u64,
    hole: bool,
}

/// The (length, digest) of each block of a [`ScanChunk`].
#[derive(Default)]
struct HashedChunk {
    digests: Vec<(u64, Digest)>,
}

/// What a scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    pub blocks: u64,
    pub changed_blocks: u64,
    pub changed_bytes: u64,
    /// Bytes read from the disk: the holes of a thin file are not read.
    pub read_bytes: u64,
    pub new_list: DigestListSummary,
}

/// Reads `disk` once, hashing each `block_size` block, writes the new digest list to
/// `new_list_out`, and reports each run of blocks that differ from `previous` to
/// `on_changed` (ascending, coalesced). Without a previous list every block is
/// changed. Blocks beyond the previous disk size (a grown disk, including a formerly
/// partial last block) count as changed; a shrunk disk just compares what remains.
/// The previous list is fully checked before the scan starts, so a
/// [`ScanError::PreviousList`] arrives before any extent is reported.
///
/// Holes of a thin file are not read (see [`DataWalk`]): a block wholly in a hole takes
/// the digest of zeros without being read or hashed, and is unchanged when the
/// previous list has the zero digest for it; a block partly in a hole has its data
/// part read and the rest taken as zeros. The list is the one reading every byte would
/// give.
pub fn scan_changes(
    disk: &Disk,
    block_size: u64,
    previous: Option<&Path>,
    new_list_out: &Path,
    mut on_changed: impl FnMut(Extent),
) -> Result<ScanSummary, ScanError> {
    let mut prev = match previous {
        Some(p) => {
            verify_digest_list(p, Some(block_size)).map_err(ScanError::PreviousList)?;
            Some(DigestListReader::open(p, Some(block_size)).map_err(ScanError::PreviousList)?)
        }
        None => None,
    };
    let disk_size = disk.size();
    let mut writer = DigestListWriter::create(new_list_out, block_size, disk_size)
        .map_err(ScanError::NewList)?;
    let io = SCAN_IO_SIZE.max(block_size);
    let bs = block_size;
    let full_zero = zero_digest(block_size);
    // The last block's digest when it is partial and all hole.
    let tail_zero = zero_digest(disk_size % block_size);
    let prev_size = prev.as_ref().map(|p| p.summary().disk_size);
    let mut run: Option<Extent> = None;
    let mut changed_blocks = 0u64;
    let mut changed_bytes = 0u64;
    let mut read_bytes = 0u64;
    let mut index = 0u64;
    let mut walk = DataWalk::new();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    // Reading and hashing overlap (the pipeline's producer and transform stages), and
    // hashing runs on SCAN_HASHERS threads (window i on hasher i % n): blocks are
    // independent, so both cores hash while the reader copies the next window in.
    // Comparing and writing the new list follow in order on this thread.
    let mut next_offset = 0u64;
    let hasher = |c: &mut ScanChunk, h: &mut HashedChunk| -> Result<(), ScanError> {
        h.digests.clear();
        if c.hole {
            let mut pos = c.start;
            let end = c.start + c.len;
            while pos < end {
                let len = block_len(pos / bs, bs, disk_size);
                let d = if len == bs { full_zero } else { tail_zero };
                h.digests.push((len, d));
                pos += len;
            }
            return Ok(());
        }
        for block in c.data.chunks(block_size as usize) {
            let len = block.len() as u64;
            let digest: Digest = if len == block_size && is_zero(block) {
                full_zero
            } else {
                *blake3::hash(block).as_bytes()
            };
            h.digests.push((len, digest));
        }
        Ok(())
    };
    crate::pipeline::run_workers::<ScanChunk, HashedChunk, ScanError, _, _, _>(
        crate::pipeline::DEFAULT_DEPTH,
        |c| {
            let at = next_offset;
            if at >= disk_size {
                return Ok(false);
            }
            c.start = at;
            let data = walk.next_data(disk, at)?;
            // Whole blocks of hole from `at` (the disk's partial last block counts
            // whole): taken as zeros, unread.
            let hole_end = match data {
                None => disk_size,
                Some((s, _)) if s >= disk_size => disk_size,
                Some((s, _)) => s & !(bs - 1),
            };
            if hole_end > at {
                let end = hole_end.min(at + SCAN_HOLE_RUN);
                c.hole = true;
                c.len = end - at;
                next_offset = end;
                return Ok(true);
            }
            // A window of whole blocks each holding some data: it ends after `io`
            // bytes, or before the first block that is all hole.
            let limit = (at + io).min(disk_size);
            runs.clear();
            let mut end = at;
            let mut pos = at;
            while pos < limit {
                match walk.next_data(disk, pos)? {
                    Some((s, e)) if s < limit => {
                        let s = s.max(pos);
                        // A whole block of hole before this run ends the window.
                        if s >= end.saturating_add(bs) && s & !(bs - 1) > end {
                            break;
                        }
                        let e = e.min(limit);
                        runs.push((s, e));
                        end = e.div_ceil(bs).saturating_mul(bs).min(limit);
                        pos = e;
                    }
                    _ => break,
                }
            }
            debug_assert!(end > at, "a window that holds data");
            let n = (end - at) as usize;
            c.hole = false;
            c.len = end - at;
            c.data.resize(n, 0);
            let mut filled = at;
            for &(s, e) in &runs {
                if s > filled {
                    c.data[(filled - at) as usize..(s - at) as usize].fill(0);
                }
                let from = (s - at) as usize;
                disk.read_into(s, &mut c.data, from..from + (e - s) as usize)?;
                read_bytes += e - s;
                filled = e;
            }
            if filled < end {
                c.data[(filled - at) as usize..n].fill(0);
            }
            next_offset = end;
            Ok(true)
        },
        vec![hasher; SCAN_HASHERS],
        |h| {
            for &(len, digest) in &h.digests {
                let old = match (&mut prev, prev_size) {
                    (Some(p), Some(ps)) if block_len(index, block_size, ps) == len => {
                        p.next_digest().map_err(ScanError::PreviousList)?
                    }
                    _ => None,
                };
                writer.push(&digest).map_err(ScanError::NewList)?;
                let block_off = index * block_size;
                if old != Some(digest) {
                    changed_blocks += 1;
                    changed_bytes += len;
                    run = match run {
                        Some(r) if r.end() == block_off => Some(Extent::new(r.offset, r.len + len)),
                        Some(r) => {
                            on_changed(r);
                            Some(Extent::new(block_off, len))
                        }
                        None => Some(Extent::new(block_off, len)),
                    };
                }
                index += 1;
            }
            Ok(())
        },
    )?;
    if let Some(r) = run {
        on_changed(r);
    }
    let new_list = writer.finish().map_err(ScanError::NewList)?;
    Ok(ScanSummary {
        blocks: index,
        changed_blocks,
        changed_bytes,
        read_bytes,
        new_list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 4096;

    /// A version 1 list as the first tapevault wrote it.
    fn write_v1(path: &Path, disk_size: u64, digests: &[Digest]) {
        let mut b = Vec::new();
        b.extend_from_slice(&DIGEST_LIST_MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&BS.to_le_bytes());
        b.extend_from_slice(&disk_size.to_le_bytes());
        b.extend_from_slice(&(digests.len() as u64).to_le_bytes());
        for d in digests {
            b.extend_from_slice(d);
        }
        let sum = blake3::hash(&b);
        b.extend_from_slice(&DIGEST_LIST_TRAILER_MAGIC);
        b.extend_from_slice(sum.as_bytes());
        std::fs::write(path, b).unwrap();
    }

    fn read_all(path: &Path) -> (u32, Vec<Digest>) {
        let mut r = DigestListReader::open(path, Some(BS)).unwrap();
        let v = r.version();
        let mut out = Vec::new();
        while let Some(d) = r.next_digest().unwrap() {
            out.push(d);
        }
        (v, out)
    }

    /// Digests of a disk: data blocks, runs of zero blocks, a partial last block.
    fn sample(blocks: u64, tail: u64) -> (u64, Vec<Digest>) {
        let zero = zero_digest(BS);
        let mut v = Vec::new();
        for i in 0..blocks {
            v.push(if i % 7 < 4 || (100..2000).contains(&i) {
                zero
            } else {
                *blake3::hash(&i.to_le_bytes()).as_bytes()
            });
        }
        if tail > 0 {
            v.push(zero_digest(tail));
        }
        (blocks * BS + tail, v)
    }

    #[test]
    fn version_2_lists_store_zero_runs_compactly_and_read_back_every_digest() {
        let dir = tempfile::tempdir().unwrap();
        for (blocks, tail) in [(0, 0), (0, 100), (1, 0), (3000, 0), (3000, 17)] {
            let (size, digests) = sample(blocks, tail);
            let p = dir.path().join(format!("l{blocks}-{tail}"));
            let mut w = DigestListWriter::create(&p, BS, size).unwrap();
            for d in &digests {
                w.push(d).unwrap();
            }
            w.finish().unwrap();
            assert_eq!(
                read_all(&p),
                (2, digests.clone()),
                "{blocks} blocks + {tail}"
            );
            verify_digest_list(&p, Some(BS)).unwrap();
            let data_blocks = digests.iter().filter(|d| **d != zero_digest(BS)).count() as u64;
            let len = std::fs::metadata(&p).unwrap().len();
            // At most one run entry per data block (plus one), never 32 bytes a zero block.
            assert!(
                len <= 88 + data_blocks * 33 + (data_blocks + 1) * 9,
                "{len} bytes"
            );
            if blocks == 3000 {
                assert!(len < blocks * 32 / 2, "{len} bytes for {blocks} blocks");
            }
        }
    }

    #[test]
    fn version_1_lists_are_still_read_and_serve_as_a_previous_list() {
        let dir = tempfile::tempdir().unwrap();
        let (size, digests) = sample(500, 0);
        let old = dir.path().join("v1");
        write_v1(&old, size, &digests);
        assert_eq!(read_all(&old), (1, digests.clone()));
        verify_digest_list(&old, Some(BS)).unwrap();
        // A feed copying every block from the old list writes a version 2 list of the
        // same digests.
        let new = dir.path().join("v2");
        let feed = DigestFeed::new(&new, BS, size, Some(&old)).unwrap();
        feed.finish().unwrap();
        assert_eq!(read_all(&new), (2, digests));
        // A damaged version 1 list is still caught.
        let mut b = std::fs::read(&old).unwrap();
        b[100] ^= 4;
        std::fs::write(&old, &b).unwrap();
        assert!(matches!(
            verify_digest_list(&old, Some(BS)),
            Err(DigestListError::Corrupt { .. })
        ));
    }

    #[test]
    fn zero_runs_fed_in_pieces_give_the_list_reading_zeros_gives() {
        let dir = tempfile::tempdir().unwrap();
        let size = 40 * BS + 1234;
        let a = dir.path().join("a");
        let mut fa = DigestFeed::new(&a, BS, size, None).unwrap();
        fa.feed_zero(0, 3 * BS + 5).unwrap();
        fa.feed_data(3 * BS + 5, &[7u8; 10]).unwrap();
        fa.feed_zero(3 * BS + 15, size - (3 * BS + 15)).unwrap();
        fa.finish().unwrap();
        let b = dir.path().join("b");
        let mut fb = DigestFeed::new(&b, BS, size, None).unwrap();
        let mut bytes = vec![0u8; size as usize];
        bytes[(3 * BS + 5) as usize..(3 * BS + 15) as usize].fill(7);
        fb.feed_data(0, &bytes).unwrap();
        fb.finish().unwrap();
        let (va, da) = read_all(&a);
        assert_eq!((va, &da), (2, &read_all(&b).1));
        let expect: Vec<Digest> = bytes
            .chunks(BS as usize)
            .map(|c| *blake3::hash(c).as_bytes())
            .collect();
        assert_eq!(da, expect);
    }

    #[test]
    fn malformed_version_2_bodies_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (size, digests) = sample(50, 0);
        let p = dir.path().join("l");
        let mut w = DigestListWriter::create(&p, BS, size).unwrap();
        for d in &digests {
            w.push(d).unwrap();
        }
        w.finish().unwrap();
        let good = std::fs::read(&p).unwrap();
        // Every flipped bit after the header: corrupt (the body and trailer checksum
        // cover it all), whether checked whole or read entry by entry (where a run or
        // tag that does not fit says so first).
        for i in 48..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x01;
            std::fs::write(&p, &b).unwrap();
            assert!(
                matches!(
                    verify_digest_list(&p, Some(BS)),
                    Err(DigestListError::Corrupt { .. })
                ),
                "flip at {i}"
            );
            assert!(
                matches!(
                    DigestListReader::open(&p, Some(BS)).and_then(|r| r.verify_rest()),
                    Err(DigestListError::Corrupt { .. })
                ),
                "flip at {i}, read entry by entry"
            );
        }
    }
}
