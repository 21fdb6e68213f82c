//! One virtual cartridge: SSC semantics in variable-block mode over three files.
//!
//! * `data`: block payloads, appended back to back (no framing).
//! * `index`: a 16-byte header (`VTLIDX01`, or `VTLIDX02` once a block is marked
//!   encrypted, + reserved) then one 16-byte entry per logical object (block or
//!   filemark): data offset (u64 LE), length with bit 31 as the filemark flag and bit 30
//!   as the encrypted flag (version 2 only) (u32 LE), CRC-32 of the first 12 bytes (u32
//!   LE). Object `n` is at `16 + 16 n`, so locating is O(1) and the index is never loaded
//!   whole. Version 1 indexes load unchanged; a version 2 index is refused by a reader
//!   that knows only version 1 (its magic differs), so an encrypted mark is never lost.
//! * `filemarks`: the logical object numbers of all filemarks (u64 LE, ascending), kept
//!   in memory, so file numbers and filemark spacing are O(log n).
//!
//! Durability: every write issues write(2) for the data, then for the index entry,
//! before returning, so a completed write survives the death of the process. Filemarks
//! go to the filemark list before the index; truncation goes to the index before the
//! list. With that order, the load-time check ([`Cartridge::open`]) only ever meets a
//! torn tail: a partial or unchecked index entry, data beyond the last entry, or
//! filemark-list entries beyond the index. It cuts those away.
//!
//! Write-behind: a real drive writes to the medium while the host sends, so its buffer
//! never holds more than a few seconds of data. The cartridge does the same with the page
//! cache ([`WriteBehind`], on by default): every `start_every` bytes of block data, it
//! hands the range written since to a thread of its own that starts its writeback
//! (`sync_file_range(2)`) and waits for the writeback of older ranges; a write waits
//! only when about `dirty_max` bytes are still dirty. A flush (filemarks without the
//! immediate bit, [`Cartridge::flush`]) then has little left to write, instead of the
//! whole file. This changes no promise: writeback is not durability (`sync_file_range`
//! flushes neither the file's metadata nor the disk's cache), so only a flush makes data
//! durable, as before, and a writeback error met on the way fails the next flush.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{io_err, SpaceStop, VtlError, VtlResult};
use crate::meta::{self, CartridgeMeta, FaultOp, Faults};
pub use crate::writeback::WriteBehind;
use crate::writeback::Writeback;

/// Largest block the simulator accepts. tapevault never writes more than 8 MiB; the
/// extra room lets tests probe the limit without the simulator being the one to refuse.
pub const MAX_BLOCK_SIZE: usize = 16 * 1024 * 1024;

/// Index without encrypted blocks (every cartridge starts as this).
const INDEX_MAGIC: &[u8; 8] = b"VTLIDX01";
/// Index that may mark blocks encrypted (bit 30 of the length); written over the
/// version 1 magic before the first encrypted block's entry.
const INDEX_MAGIC_V2: &[u8; 8] = b"VTLIDX02";
const INDEX_HEADER: u64 = 16;
const ENTRY_SIZE: u64 = 16;
const FILEMARK_FLAG: u32 = 1 << 31;
const ENCRYPTED_FLAG: u32 = 1 << 30;
/// Index entries read at once when reading sequentially (16 KiB of index).
const INDEX_CACHE_ENTRIES: usize = 1024;

pub(crate) const DATA_FILE: &str = "data";
pub(crate) const INDEX_FILE: &str = "index";
pub(crate) const FILEMARKS_FILE: &str = "filemarks";

/// The default operation timeout of a drive (a hung operation gives up after this).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    offset: u64,
    len: u32,
    filemark: bool,
    /// The block holds data the drive encrypted (version 2 indexes only).
    encrypted: bool,
}

impl Entry {
    fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        let lf = self.len
            | if self.filemark { FILEMARK_FLAG } else { 0 }
            | if self.encrypted { ENCRYPTED_FLAG } else { 0 };
        b[8..12].copy_from_slice(&lf.to_le_bytes());
        let crc = crc32fast::hash(&b[0..12]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }
    fn decode(b: &[u8]) -> Option<Entry> {
        let crc = u32::from_le_bytes(b[12..16].try_into().ok()?);
        if crc32fast::hash(&b[0..12]) != crc {
            return None;
        }
        let offset = u64::from_le_bytes(b[0..8].try_into().ok()?);
        let lf = u32::from_le_bytes(b[8..12].try_into().ok()?);
        let filemark = lf & FILEMARK_FLAG != 0;
        let encrypted = lf & ENCRYPTED_FLAG != 0;
        let len = lf & !(FILEMARK_FLAG | ENCRYPTED_FLAG);
        if filemark && (len != 0 || encrypted) {
            return None;
        }
        Some(Entry {
            offset,
            len,
            filemark,
            encrypted,
        })
    }
}

/// The outcome of reading one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Block(usize),
    Filemark,
    EndOfData,
}

/// The outcome of a successful block write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Written,
    EarlyWarning,
}

/// Logical position: object number, file number, block within file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub block: u64,
    pub file: u64,
    pub block_in_file: u64,
}

/// Status flags of a loaded cartridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartStatus {
    pub bot: bool,
    pub eod: bool,
    pub at_filemark: bool,
    pub early_warning: bool,
    pub write_protected: bool,
    pub worm: bool,
    pub position: Pos,
}

/// st's handling of the early-warning zone, per write session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ew {
    /// No early warning reported since the last repositioning.
    None,
    /// A write entered the zone and reported it; the next write fails once.
    Pending,
    /// The failure was reported; writes go on until the hard end.
    Passed,
}

struct IndexCache {
    first: u64,
    n: usize,
    buf: Vec<u8>,
}

/// An open cartridge. Not shared between processes: the drive lock makes sure only one
/// process has it open for data at a time.
pub struct Cartridge {
    dir: PathBuf,
    meta: CartridgeMeta,
    data: File,
    index: File,
    /// The index header says version 2 (blocks may be marked encrypted).
    index_v2: bool,
    fm_file: File,
    /// Number of logical objects (index entries).
    count: u64,
    /// Bytes of block data (end of the data file).
    data_len: u64,
    filemarks: Vec<u64>,
    pos: u64,
    ew: Ew,
    cache: IndexCache,
    faults: Faults,
    power_budget: Option<u64>,
    needs_recovery: bool,
    timeout: Duration,
    pending_written: u64,
    pending_read: u64,
    pending_last_written: Option<u64>,
    /// Write-behind of the data file (None: the page cache keeps it all until a flush).
    write_behind: Option<WriteBehind>,
    /// The write-behind thread, started at the first range to hand over.
    wb: Option<Writeback>,
    /// Data offset up to which ranges were handed to the write-behind.
    wb_started: u64,
}

fn open_rw(p: &Path) -> VtlResult<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .map_err(io_err("open", p))
}

impl Cartridge {
    /// Create a new blank cartridge directory.
    pub fn create(dir: &Path, meta: &CartridgeMeta) -> VtlResult<()> {
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let ip = dir.join(INDEX_FILE);
        let index = File::create(&ip).map_err(io_err("create", &ip))?;
        let mut hdr = [0u8; INDEX_HEADER as usize];
        hdr[..8].copy_from_slice(INDEX_MAGIC);
        index.write_all_at(&hdr, 0).map_err(io_err("write", &ip))?;
        index.sync_all().map_err(io_err("fsync", &ip))?;
        for f in [DATA_FILE, FILEMARKS_FILE] {
            let p = dir.join(f);
            File::create(&p)
                .and_then(|f| f.sync_all())
                .map_err(io_err("create", &p))?;
        }
        meta::write_json_atomic(&dir.join(meta::META_FILE), meta)?;
        Ok(())
    }

    /// Open a cartridge, checking and repairing a torn tail left by a crash.
    pub fn open(dir: &Path) -> VtlResult<Cartridge> {
        let meta = meta::read_meta(dir)?;
        let faults = meta::read_faults(dir)?;
        let data = open_rw(&dir.join(DATA_FILE))?;
        let index = open_rw(&dir.join(INDEX_FILE))?;
        let fm_file = open_rw(&dir.join(FILEMARKS_FILE))?;
        let mut c = Cartridge {
            dir: dir.to_path_buf(),
            power_budget: faults.power_cut_after_bytes,
            meta,
            data,
            index,
            index_v2: false,
            fm_file,
            count: 0,
            data_len: 0,
            filemarks: Vec::new(),
            pos: 0,
            ew: Ew::None,
            cache: IndexCache {
                first: 0,
                n: 0,
                buf: vec![0u8; INDEX_CACHE_ENTRIES * 16],
            },
            faults,
            needs_recovery: false,
            timeout: DEFAULT_OPERATION_TIMEOUT,
            pending_written: 0,
            pending_read: 0,
            pending_last_written: None,
            write_behind: Some(WriteBehind::DEFAULT),
            wb: None,
            wb_started: 0,
        };
        c.recover()?;
        Ok(c)
    }

    /// Set how block data is written behind the host (`None`: not at all, the page
    /// cache holds it until the next flush). Durability is the same either way: only a
    /// flush makes data durable.
    pub fn set_write_behind(&mut self, wb: Option<WriteBehind>) {
        if wb != self.write_behind {
            // The next range starts a thread with the new settings.
            self.wb = None;
        }
        self.write_behind = wb;
    }

    /// After block data was written up to `end`: hand what has accumulated since the
    /// last range to the write-behind (which waits when it is a buffer behind).
    fn write_behind(&mut self, end: u64) {
        let Some(wb) = self.write_behind else {
            return;
        };
        if end < self.wb_started + wb.start_every.max(1) {
            return;
        }
        if self.wb.is_none() {
            match Writeback::start(&self.path(DATA_FILE), wb) {
                Ok(w) => self.wb = Some(w),
                // No thread (or the file cannot be opened twice): the page cache keeps
                // the data until a flush, as without write-behind.
                Err(_) => {
                    self.write_behind = None;
                    return;
                }
            }
        }
        if let Some(w) = &self.wb {
            w.written(self.wb_started, end);
        }
        self.wb_started = end;
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    fn corrupt(&self, f: &str, detail: String) -> VtlError {
        VtlError::Corrupt {
            path: self.path(f),
            detail,
        }
    }

    /// The load-time consistency check.
    fn recover(&mut self) -> VtlResult<()> {
        self.cache.n = 0;
        let ip = self.path(INDEX_FILE);
        let dp = self.path(DATA_FILE);
        let fp = self.path(FILEMARKS_FILE);
        let ilen = self.index.metadata().map_err(io_err("stat", &ip))?.len();
        let dlen = self.data.metadata().map_err(io_err("stat", &dp))?.len();
        let mut hdr = [0u8; INDEX_HEADER as usize];
        if ilen < INDEX_HEADER {
            return Err(self.corrupt(
                INDEX_FILE,
                format!("index is {ilen} bytes, shorter than its header"),
            ));
        }
        self.index
            .read_exact_at(&mut hdr, 0)
            .map_err(io_err("read", &ip))?;
        self.index_v2 = match &hdr[..8] {
            m if m == INDEX_MAGIC => false,
            m if m == INDEX_MAGIC_V2 => true,
            _ => {
                return Err(self.corrupt(
                    INDEX_FILE,
                    "bad index magic (not a vtl-sim cartridge index of version 1 or 2)".into(),
                ))
            }
        };
        let mut n = (ilen - INDEX_HEADER) / ENTRY_SIZE;
        // Walk back over a torn tail: the last entry must be intact, lie inside the data
        // file, and follow on from its predecessor.
        loop {
            if n == 0 {
                break;
            }
            let e = self.read_entry_raw(n - 1)?;
            let ok = match e {
                Some(e) if e.end() <= dlen => {
                    if n == 1 {
                        e.offset == 0
                    } else {
                        // A predecessor failing its checksum is damage in the middle (a
                        // media error when read), not a torn tail.
                        match self.read_entry_raw(n - 2)? {
                            Some(p) => p.end() == e.offset,
                            None => true,
                        }
                    }
                }
                _ => false,
            };
            if ok {
                break;
            }
            n -= 1;
        }
        let data_end = if n == 0 {
            0
        } else {
            self.read_entry_raw(n - 1)?.map(|e| e.end()).unwrap_or(0)
        };
        if ilen != INDEX_HEADER + n * ENTRY_SIZE {
            self.index
                .set_len(INDEX_HEADER + n * ENTRY_SIZE)
                .map_err(io_err("truncate", &ip))?;
        }
        if dlen != data_end {
            self.data
                .set_len(data_end)
                .map_err(io_err("truncate", &dp))?;
        }
        // Filemark list: drop a torn entry and entries beyond the index.
        let flen = self.fm_file.metadata().map_err(io_err("stat", &fp))?.len();
        let mut raw = vec![0u8; (flen - flen % 8) as usize];
        self.fm_file
            .read_exact_at(&mut raw, 0)
            .map_err(io_err("read", &fp))?;
        let mut fms: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
            .collect();
        while fms.last().is_some_and(|&f| f >= n) {
            fms.pop();
        }
        let sorted = fms.windows(2).all(|w| w[0] < w[1]);
        let last_ok = match fms.last() {
            Some(&f) => matches!(self.read_entry_raw(f)?, Some(e) if e.filemark),
            None => true,
        };
        if !sorted || !last_ok {
            // Not a torn tail: rebuild the list from the index (a full scan, only here).
            fms.clear();
            for i in 0..n {
                match self.read_entry_raw(i)? {
                    Some(e) if e.filemark => fms.push(i),
                    Some(_) => {}
                    None => {
                        return Err(
                            self.corrupt(INDEX_FILE, format!("index entry {i} fails its checksum"))
                        )
                    }
                }
            }
        }
        if fms.len() as u64 * 8 != flen {
            let mut buf = Vec::with_capacity(fms.len() * 8);
            for f in &fms {
                buf.extend_from_slice(&f.to_le_bytes());
            }
            self.fm_file.set_len(0).map_err(io_err("truncate", &fp))?;
            self.fm_file
                .write_all_at(&buf, 0)
                .map_err(io_err("write", &fp))?;
        }
        self.count = n;
        self.data_len = data_end;
        self.wb_started = self.wb_started.min(data_end);
        self.filemarks = fms;
        self.pos = 0;
        self.ew = Ew::None;
        self.needs_recovery = false;
        Ok(())
    }

    fn read_entry_raw(&self, i: u64) -> VtlResult<Option<Entry>> {
        let mut b = [0u8; 16];
        let p = INDEX_HEADER + i * ENTRY_SIZE;
        self.index
            .read_exact_at(&mut b, p)
            .map_err(io_err("read", &self.dir.join(INDEX_FILE)))?;
        Ok(Entry::decode(&b))
    }

    /// Entry `i` (< count), through the sequential read cache.
    fn entry(&mut self, i: u64) -> VtlResult<Entry> {
        if !(i >= self.cache.first && i < self.cache.first + self.cache.n as u64) {
            let n = (self.count - i).min(INDEX_CACHE_ENTRIES as u64) as usize;
            let buf = &mut self.cache.buf[..n * 16];
            self.index
                .read_exact_at(buf, INDEX_HEADER + i * ENTRY_SIZE)
                .map_err(io_err("read", &self.dir.join(INDEX_FILE)))?;
            self.cache.first = i;
            self.cache.n = n;
        }
        let off = ((i - self.cache.first) * 16) as usize;
        Entry::decode(&self.cache.buf[off..off + 16]).ok_or_else(|| VtlError::MediaError {
            block: i,
            detail: format!(
                "index entry {i} fails its checksum in {}",
                self.dir.join(INDEX_FILE).display()
            ),
        })
    }

    pub fn meta(&self) -> &CartridgeMeta {
        &self.meta
    }
    pub fn barcode(&self) -> &str {
        &self.meta.barcode
    }
    /// Bytes of block data on the cartridge.
    pub fn bytes_used(&self) -> u64 {
        self.data_len
    }
    /// Number of logical objects (blocks and filemarks) up to end of data.
    pub fn object_count(&self) -> u64 {
        self.count
    }
    pub fn set_operation_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Re-read fault settings and flags that the library may have changed.
    pub fn reload_controls(&mut self) -> VtlResult<()> {
        self.faults = meta::read_faults(&self.dir)?;
        self.power_budget = self.faults.power_cut_after_bytes;
        let m = meta::read_meta(&self.dir)?;
        self.meta.write_protected = m.write_protected;
        self.meta.application_label = m.application_label;
        Ok(())
    }

    /// Check for a pending recovery (after a power cut) and for a hang fault.
    fn begin(&mut self, op: &'static str, kind: FaultOp) -> VtlResult<()> {
        if self.needs_recovery {
            self.recover()?;
        }
        if self.meta.cleaning {
            return Err(VtlError::CleaningCartridge {
                barcode: self.meta.barcode.clone(),
            });
        }
        if let Some(h) = self.faults.hang.clone() {
            if h.times > 0 && (h.op == FaultOp::Any || h.op == kind) {
                let mut f = self.faults.clone();
                let hh = f.hang.as_mut().expect("hang present");
                hh.times -= 1;
                if hh.times == 0 {
                    f.hang = None;
                }
                meta::write_faults(&self.dir, &f)?;
                self.faults = f;
                let d = Duration::from_millis(h.millis);
                if d > self.timeout {
                    std::thread::sleep(self.timeout);
                    return Err(VtlError::Timeout {
                        op,
                        after: self.timeout,
                    });
                }
                std::thread::sleep(d);
            }
        }
        Ok(())
    }

    fn fm_before(&self, p: u64) -> usize {
        // number of filemarks with object number < p
        self.filemarks.partition_point(|&f| f < p)
    }

    fn is_filemark(&self, i: u64) -> bool {
        self.filemarks.binary_search(&i).is_ok()
    }

    /// Read the next block.
    pub fn read_block(&mut self, buf: &mut [u8]) -> VtlResult<Read> {
        self.read_block_flagged(buf).map(|(r, _)| r)
    }

    /// Read the next block, and whether it is marked encrypted (see
    /// [`Cartridge::write_block_flagged`]).
    pub fn read_block_flagged(&mut self, buf: &mut [u8]) -> VtlResult<(Read, bool)> {
        self.begin("read", FaultOp::Read)?;
        if self.pos >= self.count {
            return Ok((Read::EndOfData, false));
        }
        if self.is_filemark(self.pos) {
            self.pos += 1;
            return Ok((Read::Filemark, false));
        }
        if self.faults.media_error_blocks.contains(&self.pos) {
            return Err(VtlError::MediaError {
                block: self.pos,
                detail: "unrecovered read error (injected fault)".into(),
            });
        }
        let e = self.entry(self.pos)?;
        let len = e.len as usize;
        if len > buf.len() {
            return Err(VtlError::BufferTooSmall {
                block_len: len,
                buffer_len: buf.len(),
            });
        }
        self.data
            .read_exact_at(&mut buf[..len], e.offset)
            .map_err(|err| {
                if err.kind() == std::io::ErrorKind::UnexpectedEof {
                    VtlError::MediaError {
                        block: self.pos,
                        detail: "block data missing from the data file".into(),
                    }
                } else {
                    io_err("read", &self.dir.join(DATA_FILE))(err)
                }
            })?;
        self.pos += 1;
        self.pending_read += len as u64;
        Ok((Read::Block(len), e.encrypted))
    }

    /// What the next logical object is, without moving or reading its data: end of
    /// data, a filemark, or a block (its length and whether it is marked encrypted). For
    /// status reports such as SSC's next block encryption status; no fault injection.
    pub fn peek(&mut self) -> VtlResult<(Read, bool)> {
        if self.needs_recovery {
            self.recover()?;
        }
        if self.pos >= self.count {
            return Ok((Read::EndOfData, false));
        }
        if self.is_filemark(self.pos) {
            return Ok((Read::Filemark, false));
        }
        let e = self.entry(self.pos)?;
        Ok((Read::Block(e.len as usize), e.encrypted))
    }

    fn offset_of(&mut self, p: u64) -> VtlResult<u64> {
        if p >= self.count {
            Ok(self.data_len)
        } else {
            Ok(self.entry(p)?.offset)
        }
    }

    fn check_writable(&self) -> VtlResult<()> {
        if self.meta.write_protected {
            return Err(VtlError::WriteProtected);
        }
        if self.meta.worm && self.pos < self.count {
            return Err(VtlError::WormOverwrite { block: self.pos });
        }
        Ok(())
    }

    /// Discard everything from the current position on (writing in the middle).
    fn truncate_here(&mut self) -> VtlResult<()> {
        if self.pos >= self.count {
            return Ok(());
        }
        let new_data = self.offset_of(self.pos)?;
        let ip = self.path(INDEX_FILE);
        self.index
            .set_len(INDEX_HEADER + self.pos * ENTRY_SIZE)
            .map_err(io_err("truncate", &ip))?;
        self.count = self.pos;
        self.cache.n = 0;
        let keep = self.fm_before(self.pos);
        if keep < self.filemarks.len() {
            self.filemarks.truncate(keep);
            let fp = self.path(FILEMARKS_FILE);
            self.fm_file
                .set_len(keep as u64 * 8)
                .map_err(io_err("truncate", &fp))?;
        }
        let dp = self.path(DATA_FILE);
        self.data
            .set_len(new_data)
            .map_err(io_err("truncate", &dp))?;
        self.data_len = new_data;
        Ok(())
    }

    /// Write one block at the current position.
    pub fn write_block(&mut self, block: &[u8]) -> VtlResult<Written> {
        self.write_block_flagged(block, false)
    }

    /// Write one block given as consecutive parts (e.g. a record's header and its
    /// payload, held apart by the host), as [`Self::write_block`] would write their
    /// concatenation, without joining them in memory.
    pub fn write_block_parts(&mut self, parts: &[&[u8]]) -> VtlResult<Written> {
        self.write_block_from(parts, false)
    }

    /// Write one block at the current position, marked encrypted or not in the index
    /// (the cartridge stores the bytes as given: a drive that encrypts passes its
    /// ciphertext). The first encrypted block turns the index into version 2.
    pub fn write_block_flagged(&mut self, block: &[u8], encrypted: bool) -> VtlResult<Written> {
        self.write_block_from(&[block], encrypted)
    }

    /// The block is the concatenation of `parts`.
    fn write_block_from(&mut self, parts: &[&[u8]], encrypted: bool) -> VtlResult<Written> {
        self.begin("write", FaultOp::Write)?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len == 0 || len > MAX_BLOCK_SIZE {
            return Err(VtlError::BadBlockSize {
                len,
                max: MAX_BLOCK_SIZE,
            });
        }
        self.check_writable()?;
        if self.ew == Ew::Pending {
            self.ew = Ew::Passed;
            return Err(VtlError::EarlyWarning);
        }
        let start = self.offset_of(self.pos)?;
        let end = start + len as u64;
        if end > self.meta.capacity {
            return Err(VtlError::EndOfMedium);
        }
        self.truncate_here()?;
        // Overwriting (truncated above): the write-behind goes on from here.
        self.wb_started = self.wb_started.min(start);
        let dp = self.path(DATA_FILE);
        if let Some(budget) = self.power_budget {
            if len as u64 > budget {
                // Lose power part way through the block: some bytes reach the file,
                // no index entry does.
                let block = parts.concat();
                self.data
                    .write_all_at(&block[..budget as usize], start)
                    .map_err(io_err("write", &dp))?;
                let mut f = self.faults.clone();
                f.power_cut_after_bytes = None;
                meta::write_faults(&self.dir, &f)?;
                self.faults = f;
                self.power_budget = None;
                self.needs_recovery = true;
                return Err(VtlError::PowerCut { op: "write" });
            }
            self.power_budget = Some(budget - len as u64);
        }
        let mut at = start;
        for part in parts {
            self.data
                .write_all_at(part, at)
                .map_err(io_err("write", &dp))?;
            at += part.len() as u64;
        }
        let e = Entry {
            offset: start,
            len: len as u32,
            filemark: false,
            encrypted,
        };
        let ip = self.path(INDEX_FILE);
        if encrypted && !self.index_v2 {
            // The new magic is durable before any entry relies on it, so an older
            // reader refuses the cartridge instead of reading the mark as length.
            self.index
                .write_all_at(INDEX_MAGIC_V2, 0)
                .and_then(|_| self.index.sync_data())
                .map_err(io_err("write", &ip))?;
            self.index_v2 = true;
        }
        self.index
            .write_all_at(&e.encode(), INDEX_HEADER + self.count * ENTRY_SIZE)
            .map_err(io_err("write", &ip))?;
        self.count += 1;
        self.pos = self.count;
        self.data_len = end;
        self.pending_written += len as u64;
        self.pending_last_written = Some(meta::now_unix());
        self.write_behind(end);
        let ew_start = self.meta.capacity - self.meta.early_warning;
        if end > ew_start && self.ew == Ew::None {
            self.ew = Ew::Pending;
            return Ok(Written::EarlyWarning);
        }
        Ok(Written::Written)
    }

    /// Write `n` filemarks; with `immediate == false` flush everything to stable storage.
    pub fn write_filemarks(&mut self, n: u32, immediate: bool) -> VtlResult<()> {
        self.begin("write filemarks", FaultOp::WriteFilemarks)?;
        if n > 0 {
            self.check_writable()?;
            self.truncate_here()?;
            let mut list = Vec::with_capacity(n as usize * 8);
            let mut idx = Vec::with_capacity(n as usize * 16);
            for k in 0..n as u64 {
                list.extend_from_slice(&(self.count + k).to_le_bytes());
                idx.extend_from_slice(
                    &Entry {
                        offset: self.data_len,
                        len: 0,
                        filemark: true,
                        encrypted: false,
                    }
                    .encode(),
                );
            }
            let fp = self.path(FILEMARKS_FILE);
            self.fm_file
                .write_all_at(&list, self.filemarks.len() as u64 * 8)
                .map_err(io_err("write", &fp))?;
            let ip = self.path(INDEX_FILE);
            self.index
                .write_all_at(&idx, INDEX_HEADER + self.count * ENTRY_SIZE)
                .map_err(io_err("write", &ip))?;
            for k in 0..n as u64 {
                self.filemarks.push(self.count + k);
            }
            self.count += n as u64;
            self.pos = self.count;
        }
        if !immediate {
            self.sync()?;
        }
        Ok(())
    }

    /// Erase from the current position to the end of the tape (SSC ERASE): everything
    /// from here on is gone and end of data is here. Durable on return.
    pub fn erase(&mut self) -> VtlResult<()> {
        self.begin("erase", FaultOp::Write)?;
        self.check_writable()?;
        self.truncate_here()?;
        self.ew = Ew::None;
        self.sync()
    }

    fn sync(&mut self) -> VtlResult<()> {
        if let Some(e) = self.wb.as_ref().and_then(Writeback::take_error) {
            return Err(VtlError::Io {
                op: "write back",
                path: self.dir.join(DATA_FILE),
                source: e,
            });
        }
        for (f, name) in [
            (&self.data, DATA_FILE),
            (&self.index, INDEX_FILE),
            (&self.fm_file, FILEMARKS_FILE),
        ] {
            f.sync_data()
                .map_err(io_err("fsync", &self.dir.join(name)))?;
        }
        self.persist_stats()
    }

    /// Make all completed writes durable and save statistics.
    pub fn flush(&mut self) -> VtlResult<()> {
        if self.needs_recovery {
            self.recover()?;
        }
        self.sync()
    }

    /// Save accumulated statistics into cartridge.json (merged under its lock).
    pub fn persist_stats(&mut self) -> VtlResult<()> {
        if self.pending_written == 0
            && self.pending_read == 0
            && self.pending_last_written.is_none()
        {
            return Ok(());
        }
        let (w, r, lw) = (
            self.pending_written,
            self.pending_read,
            self.pending_last_written,
        );
        let m = meta::update_meta(&self.dir, |m| {
            m.bytes_written += w;
            m.bytes_read += r;
            if lw.is_some() {
                m.last_written = lw;
            }
            Ok(m.clone())
        })?;
        self.meta.bytes_written = m.bytes_written;
        self.meta.bytes_read = m.bytes_read;
        self.meta.last_written = m.last_written;
        self.pending_written = 0;
        self.pending_read = 0;
        self.pending_last_written = None;
        Ok(())
    }

    pub fn rewind(&mut self) -> VtlResult<()> {
        self.begin("rewind", FaultOp::Rewind)?;
        self.pos = 0;
        self.ew = Ew::None;
        Ok(())
    }

    /// Space over blocks (MTFSR/MTBSR).
    pub fn space_blocks(&mut self, n: i64) -> VtlResult<()> {
        self.begin("space blocks", FaultOp::Space)?;
        self.ew = Ew::None;
        let op = "space blocks";
        if n >= 0 {
            let n = n as u64;
            let i = self.fm_before(self.pos);
            let next_fm = self.filemarks.get(i).copied();
            let limit = next_fm.unwrap_or(self.count);
            if self.pos + n <= limit {
                self.pos += n;
                return Ok(());
            }
            let moved = limit - self.pos;
            match next_fm {
                Some(f) => {
                    self.pos = f + 1;
                    Err(VtlError::SpaceStopped {
                        op,
                        stop: SpaceStop::Filemark,
                        residual: n - moved,
                    })
                }
                None => {
                    self.pos = self.count;
                    Err(VtlError::SpaceStopped {
                        op,
                        stop: SpaceStop::EndOfData,
                        residual: n - moved,
                    })
                }
            }
        } else {
            let n = n.unsigned_abs();
            let i = self.fm_before(self.pos);
            let prev_fm = if i > 0 {
                Some(self.filemarks[i - 1])
            } else {
                None
            };
            let floor = prev_fm.map(|f| f + 1).unwrap_or(0);
            if self.pos - floor >= n {
                self.pos -= n;
                return Ok(());
            }
            let moved = self.pos - floor;
            match prev_fm {
                Some(f) => {
                    self.pos = f;
                    Err(VtlError::SpaceStopped {
                        op,
                        stop: SpaceStop::Filemark,
                        residual: n - moved,
                    })
                }
                None => {
                    self.pos = 0;
                    Err(VtlError::SpaceStopped {
                        op,
                        stop: SpaceStop::BeginningOfTape,
                        residual: n - moved,
                    })
                }
            }
        }
    }

    /// Space over filemarks (MTFSF forward, ending just past the n-th; MTBSF backward,
    /// ending on the BOT side of the n-th).
    pub fn space_filemarks(&mut self, n: i64) -> VtlResult<()> {
        self.begin("space filemarks", FaultOp::Space)?;
        self.ew = Ew::None;
        let op = "space filemarks";
        if n >= 0 {
            let n = n as u64;
            if n == 0 {
                return Ok(());
            }
            let i = self.fm_before(self.pos);
            let avail = (self.filemarks.len() - i) as u64;
            if avail >= n {
                self.pos = self.filemarks[i + n as usize - 1] + 1;
                Ok(())
            } else {
                self.pos = self.count;
                Err(VtlError::SpaceStopped {
                    op,
                    stop: SpaceStop::EndOfData,
                    residual: n - avail,
                })
            }
        } else {
            let n = n.unsigned_abs();
            let i = self.fm_before(self.pos) as u64;
            if i >= n {
                self.pos = self.filemarks[(i - n) as usize];
                Ok(())
            } else {
                self.pos = 0;
                Err(VtlError::SpaceStopped {
                    op,
                    stop: SpaceStop::BeginningOfTape,
                    residual: n - i,
                })
            }
        }
    }

    pub fn space_to_eod(&mut self) -> VtlResult<()> {
        self.begin("space to end of data", FaultOp::Space)?;
        self.ew = Ew::None;
        self.pos = self.count;
        Ok(())
    }

    /// Locate to a logical object number. Beyond end of data the tape stops at end of
    /// data and the locate fails, as a blank check does.
    pub fn locate(&mut self, block: u64) -> VtlResult<()> {
        self.begin("locate", FaultOp::Locate)?;
        self.ew = Ew::None;
        if block > self.count {
            self.pos = self.count;
            return Err(VtlError::BeyondEndOfData { block });
        }
        self.pos = block;
        Ok(())
    }

    /// Put the tape where a previous holder of the drive left it (no tape motion, no
    /// fault injection: the drive simply still is there). Beyond end of data it goes to
    /// end of data.
    pub fn restore_position(&mut self, block: u64) {
        self.ew = Ew::None;
        self.pos = block.min(self.count);
    }

    pub fn position(&mut self) -> VtlResult<Pos> {
        if self.needs_recovery {
            self.recover()?;
        }
        let i = self.fm_before(self.pos);
        let block_in_file = match i {
            0 => self.pos,
            _ => self.pos - self.filemarks[i - 1] - 1,
        };
        Ok(Pos {
            block: self.pos,
            file: i as u64,
            block_in_file,
        })
    }

    pub fn status(&mut self) -> VtlResult<CartStatus> {
        let position = self.position()?;
        let off = self.offset_of(self.pos)?;
        Ok(CartStatus {
            bot: self.pos == 0,
            eod: self.pos == self.count,
            at_filemark: self.pos > 0 && self.is_filemark(self.pos - 1),
            early_warning: off > self.meta.capacity - self.meta.early_warning,
            write_protected: self.meta.write_protected,
            worm: self.meta.worm,
            position,
        })
    }
}

impl Drop for Cartridge {
    fn drop(&mut self) {
        // Best effort: statistics are advisory; the data is already in the files.
        let _ = self.persist_stats();
    }
}
