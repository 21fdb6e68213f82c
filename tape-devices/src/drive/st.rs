//! [`TapeDrive`] on a real tape drive through the Linux `st` driver (non-rewinding
//! `/dev/nst*` device, variable-block mode).
//!
//! st's documented semantics are followed (kernel Documentation/scsi/st.rst and st.c):
//! - a read returns one block; a zero-length read is a filemark, or end of data when st
//!   then reports GMT_EOD; EIO at or past end of data;
//! - a read buffer smaller than the block fails with ENOMEM after the tape has moved
//!   past the block: we backspace one record, measure the block and report
//!   [`DriveError::BufferTooSmall`] with its size;
//! - early warning: the write that meets it succeeds and st flags GMT_EOT; the next
//!   write returns ENOSPC once writing nothing; after that writes go on until the
//!   physical end (ENOSPC again). st alternates ENOSPC and success inside the zone; we
//!   retry once so callers see the trait's contract.
//!
//! Capability fallbacks in the spirit of Bacula's btape: when READ POSITION / LOCATE do
//! not work (tgt's emulator answers EIO), positions are tracked in software on every
//! operation (`track.rs`) and found again by rewinding, spacing over filemarks (which
//! every drive does right) and reading blocks (counting them ourselves). Block spacing
//! across filemarks is not trusted without READ POSITION because tgt's emulator spaces
//! over filemarks as if they were blocks. A read at a known end of data is answered
//! without touching the drive, because tgt returns a stale buffer there.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

use super::{
    Capabilities, DataKey, DriveError, DriveResult, DriveStatus, Position, ReadOutcome, SpaceStop,
    TapeDrive, WriteOutcome, MAX_BLOCK_SIZE,
};
use crate::scsi::{self, cdb, encryption, DataDirection, SgDevice};

pub mod ioctl;
pub mod track;

use ioctl::*;
use track::Tracker;

/// Largest block assumed when the drive's limits cannot be read (no access to its sg
/// node): 256 KiB is accepted by every LTO drive and common HBA.
pub const DEFAULT_MAX_BLOCK: usize = 256 * 1024;
/// Timeout of the small SCSI commands we send through sg (no long tape motion).
const SG_TIMEOUT: Duration = Duration::from_secs(60);
/// Most filemarks we space over one at a time while counting (guards a runaway loop on
/// a confused device); far above the number of tape files a cartridge holds in practice.
const MAX_FILES_WALKED: u64 = 1_000_000;
/// st does direct I/O (synchronous, one SCSI WRITE per write(2), errors reported by that
/// write) only when the user buffer maps into its 256 scatter-gather segments; a 1 MiB
/// block that is not page-aligned spans 257 pages and falls back to st's buffered,
/// asynchronous writes, where early warning surfaces one write late. Blocks are
/// therefore written from a page-aligned buffer.
const DIO_ALIGN: usize = 4096;
/// Environment variable that lowers the largest block used on st drives (bytes), for
/// paths that cannot carry what the drive reports (an HBA limit READ BLOCK LIMITS does
/// not show, or a broken emulation layer).
pub const MAX_BLOCK_ENV: &str = "TAPEVAULT_ST_MAX_BLOCK";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EarlyWarning {
    /// Not in the early-warning zone (as far as we know).
    None,
    /// The last write entered the zone (we returned WrittenEarlyWarning).
    Entered,
    /// The refused write has happened; trailer writes are allowed.
    Trailer,
}

/// A tape drive behind the Linux st driver.
pub struct StDrive {
    file: File,
    path: PathBuf,
    writable: bool,
    sg: Option<SgDevice>,
    min_block: usize,
    max_block: usize,
    /// READ POSITION via MTIOCPOS works (None: not probed yet).
    hw_position: Option<bool>,
    /// LOCATE via MTSEEK works (None: not probed yet).
    hw_locate: Option<bool>,
    track: Tracker,
    ew: EarlyWarning,
    scratch: Vec<u8>,
    /// Page-aligned copy of the block being written (see [`DIO_ALIGN`]).
    wbuf: Vec<u8>,
    /// Result of trying to set st's SCSI-2 logical positioning option.
    logical_option: Result<(), Errno>,
    /// A cartridge is loaded and st is ready (set up for variable blocks).
    ready: bool,
    /// How long an operation waits for a cartridge to become ready (a library's robot
    /// may just have put it into the drive).
    load_wait: Duration,
}

impl std::fmt::Debug for StDrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StDrive")
            .field("path", &self.path)
            .field("writable", &self.writable)
            .finish()
    }
}

fn io_err(op: &'static str, e: Errno) -> DriveError {
    DriveError::Io {
        op,
        source: std::io::Error::from(e),
    }
}

impl StDrive {
    /// Open a non-rewinding st device with a cartridge in it, read-write (read-only when
    /// the cartridge is write protected), in variable-block mode.
    pub fn open(path: &Path) -> DriveResult<StDrive> {
        Self::open_inner(path, false)
    }

    /// Open (and so reserve: st allows one opener) a drive that may be empty; the
    /// cartridge is expected later (a changer loads it) and every operation waits up to
    /// [`StDrive::set_load_wait`] for it.
    pub fn open_reserved(path: &Path) -> DriveResult<StDrive> {
        Self::open_inner(path, true)
    }

    /// How long operations wait for a cartridge to become ready (default: no wait).
    pub fn set_load_wait(&mut self, wait: Duration) {
        self.load_wait = wait;
    }

    fn open_inner(path: &Path, reserve: bool) -> DriveResult<StDrive> {
        let name = path.display().to_string();
        if let Some(n) = path.file_name().and_then(|n| n.to_str()) {
            if n.starts_with("st") {
                return Err(DriveError::Other(format!(
                    "{name} is a rewinding device: it rewinds on every close, which would overwrite \
                     data; use the non-rewinding /dev/n{n} (or /dev/tape/by-id/...-nst)"
                )));
            }
        }
        let flags = libc::O_CLOEXEC | if reserve { libc::O_NONBLOCK } else { 0 };
        let open = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(flags)
                .open(path)
        };
        let (file, writable) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) => {
                match open(false) {
                    Ok(f) => (f, false),
                    Err(_) => return Err(map_open_err(&name, e)),
                }
            }
            Err(e) => return Err(map_open_err(&name, e)),
        };
        let sg = scsi::sg_node_for_tape(path).and_then(|p| SgDevice::open(&p).ok());
        let mut d = StDrive {
            file,
            path: path.to_path_buf(),
            writable,
            sg,
            min_block: 1,
            max_block: DEFAULT_MAX_BLOCK,
            hw_position: None,
            hw_locate: None,
            track: Tracker::default(),
            ew: EarlyWarning::None,
            scratch: Vec::new(),
            wbuf: Vec::new(),
            logical_option: Ok(()),
            ready: false,
            load_wait: Duration::ZERO,
        };
        if !reserve || get(d.fd()).is_ok_and(|g| g.mt_gstat as u32 & GMT_ONLINE != 0) {
            d.init_medium()?;
        }
        Ok(d)
    }

    /// Set up a ready cartridge: variable blocks, logical positions, block limits, st's
    /// position counters.
    fn init_medium(&mut self) -> DriveResult<()> {
        let fd = self.fd();
        op(fd, MTSETBLK, 0).map_err(|e| match e {
            Errno::ENOMEDIUM => DriveError::NoMedium {
                drive: self.path.display().to_string(),
            },
            e => io_err("MTSETBLK 0 (variable-block mode)", e),
        })?;
        // READ POSITION / LOCATE in logical object numbers (BT = 0), not vendor block
        // addresses. Only root may change st options; without it st's default stays.
        self.logical_option = op(fd, MTSETDRVBUFFER, MT_ST_SETBOOLEANS | MT_ST_SCSI2LOGICAL);
        if let Some(sg) = &self.sg {
            let mut b = [0u8; 6];
            if sg
                .execute(
                    "READ BLOCK LIMITS",
                    &cdb::read_block_limits(),
                    DataDirection::FromDevice,
                    &mut b,
                    SG_TIMEOUT,
                )
                .is_ok()
            {
                if let Some((_, max, min)) = cdb::parse_block_limits(&b) {
                    if max > 0 {
                        self.max_block = (max as usize).min(MAX_BLOCK_SIZE);
                    }
                    self.min_block = (min as usize).max(1);
                }
            }
        }
        if let Some(limit) = std::env::var(MAX_BLOCK_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            self.max_block = self.max_block.min(limit.max(self.min_block));
        }
        self.track.forget_medium();
        self.hw_position = None;
        self.hw_locate = None;
        self.ew = EarlyWarning::None;
        self.ready = true;
        self.adopt_st_counters();
        Ok(())
    }

    /// Make sure a cartridge is loaded and ready, waiting up to `load_wait` for one
    /// (st only notices a cartridge put in while the device is open after a LOAD).
    fn ensure_ready(&mut self) -> DriveResult<()> {
        self.ensure_ready_within(self.load_wait)
    }

    fn ensure_ready_within(&mut self, wait: Duration) -> DriveResult<()> {
        if self.ready {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + wait;
        loop {
            let _ = op(self.fd(), MTLOAD, 1);
            if get(self.fd()).is_ok_and(|g| g.mt_gstat as u32 & GMT_ONLINE != 0) {
                return self.init_medium();
            }
            if std::time::Instant::now() >= deadline {
                return Err(DriveError::NoMedium {
                    drive: self.path.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Path of the drive's sg node, if found through sysfs.
    pub fn sg_path(&self) -> Option<&Path> {
        self.sg.as_ref().map(|s| s.path())
    }

    /// Whether the cartridge was opened read-only (write protected).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn mtget(&self) -> DriveResult<MtGet> {
        match get(self.fd()) {
            // In the early-warning zone st may report ENOSPC once from its buffer flush.
            Err(Errno::ENOSPC) => get(self.fd()).map_err(|e| self.map_errno("MTIOCGET", e)),
            r => r.map_err(|e| self.map_errno("MTIOCGET", e)),
        }
    }

    fn gstat(&self) -> DriveResult<u32> {
        Ok(self.mtget()?.mt_gstat as u32)
    }

    fn map_errno(&self, op: &'static str, e: Errno) -> DriveError {
        match e {
            Errno::ENOMEDIUM => DriveError::NoMedium {
                drive: self.path.display().to_string(),
            },
            Errno::EBUSY => DriveError::Busy {
                detail: format!("{} is busy", self.path.display()),
            },
            Errno::ETIMEDOUT | Errno::ETIME => DriveError::Timeout {
                op,
                after: Duration::ZERO,
            },
            Errno::EACCES | Errno::EROFS | Errno::EBADF if !self.writable || e == Errno::EACCES => {
                DriveError::WriteProtected
            }
            e => io_err(op, e),
        }
    }

    fn mtop(&mut self, name: &'static str, code: i16, count: i32) -> DriveResult<()> {
        op(self.fd(), code, count).map_err(|e| self.map_errno(name, e))
    }

    /// Take st's own file/block counters when they are valid (after open they survive
    /// from the previous user of the device, or are 0/0 after a cartridge change).
    fn adopt_st_counters(&mut self) {
        if let Ok(g) = get(self.fd()) {
            if g.mt_fileno >= 0 && g.mt_blkno >= 0 {
                self.track.cur.file = Some(g.mt_fileno as u64);
                self.track.cur.bif = Some(g.mt_blkno as u64);
                if g.mt_fileno == 0 {
                    self.track.at_bot();
                    self.track.cur.bif = Some(g.mt_blkno as u64);
                    self.track.cur.block = Some(g.mt_blkno as u64);
                }
                self.track.fill();
            }
        }
    }

    /// READ POSITION through st (MTIOCPOS); None when the drive cannot.
    fn hw_pos(&mut self) -> Option<u64> {
        if self.hw_position == Some(false) {
            return None;
        }
        match pos(self.fd()) {
            Ok(p) => {
                self.hw_position = Some(true);
                Some(p)
            }
            Err(Errno::ENOMEDIUM) => None,
            Err(_) => {
                self.hw_position = Some(false);
                None
            }
        }
    }

    fn has_hw_position(&mut self) -> bool {
        if self.hw_position.is_none() {
            self.hw_pos();
        }
        self.hw_position == Some(true)
    }

    /// Whether the drive offers SSC-4 hardware encryption (AES-256-GCM under our
    /// control). `Err` says why not in plain words.
    pub fn hardware_encryption_supported(
        &self,
    ) -> Result<encryption::HardwareEncryption, encryption::EncryptionError> {
        let sg = self
            .sg
            .as_ref()
            .ok_or_else(|| encryption::EncryptionError::NotSupported {
                device: self.path.display().to_string(),
                reason: "its SCSI generic (sg) node was not found or could not be opened \
                     (load the sg module; the user needs read-write access to /dev/sgN)"
                    .into(),
            })?;
        encryption::probe(sg)
    }

    /// Load an AES-256 key into the drive with our 16-byte key fingerprint as
    /// key-associated data; the drive then encrypts what it writes and decrypts what it
    /// reads.
    pub fn set_hardware_key(
        &mut self,
        key: &[u8; 32],
        fingerprint: &[u8; 16],
    ) -> Result<(), encryption::EncryptionError> {
        self.hardware_encryption_supported()?;
        encryption::set_key(self.sg.as_ref().expect("checked above"), key, fingerprint)
    }

    /// Turn the drive's encryption off and drop its key.
    pub fn clear_hardware_key(&mut self) -> Result<(), encryption::EncryptionError> {
        self.hardware_encryption_supported()?;
        encryption::clear_key(self.sg.as_ref().expect("checked above"))
    }

    /// The drive's encryption status page.
    pub fn hardware_encryption_status(
        &self,
    ) -> Result<encryption::EncryptionStatus, encryption::EncryptionError> {
        self.hardware_encryption_supported()?;
        encryption::status(self.sg.as_ref().expect("checked above"))
    }

    /// Vendor, product and revision from INQUIRY (through sg), when reachable.
    pub fn inquiry(&self) -> Option<(String, String, String)> {
        let sg = self.sg.as_ref()?;
        let mut b = [0u8; 96];
        sg.execute(
            "INQUIRY",
            &cdb::inquiry(96),
            DataDirection::FromDevice,
            &mut b,
            SG_TIMEOUT,
        )
        .ok()?;
        cdb::parse_inquiry_ids(&b)
    }

    // ---- raw operations that keep the software position -------------------------------

    /// One read(2). Never trusts a read at a known end of data.
    fn raw_read(
        &mut self,
        len: usize,
        use_scratch: bool,
        buf: &mut [u8],
    ) -> DriveResult<ReadOutcome> {
        if self.track.at_eod() {
            return Ok(ReadOutcome::EndOfData);
        }
        if self.eod_check_needed() && self.probe_eod_by_spacing()? {
            return Ok(ReadOutcome::EndOfData);
        }
        let target: &mut [u8] = if use_scratch {
            if self.scratch.len() < self.max_block {
                self.scratch.resize(self.max_block, 0);
            }
            &mut self.scratch[..len]
        } else {
            &mut buf[..len]
        };
        match nix::unistd::read(self.file.as_raw_fd(), target) {
            Ok(0) => {
                let g = self.gstat()?;
                if g & GMT_EOD != 0 {
                    self.track.eod = self.track.cur.block;
                    Ok(ReadOutcome::EndOfData)
                } else {
                    self.track.forward_filemark();
                    Ok(ReadOutcome::Filemark)
                }
            }
            Ok(n) => {
                self.track.forward_block();
                Ok(ReadOutcome::Block(n))
            }
            Err(Errno::ENOMEM) => Err(DriveError::BufferTooSmall {
                block_len: 0,
                buffer_len: len,
            }),
            Err(Errno::EIO) => {
                if self.gstat().map(|g| g & GMT_EOD != 0).unwrap_or(false) {
                    self.track.eod = self.track.cur.block;
                    Ok(ReadOutcome::EndOfData)
                } else if self.read_eio_was_end_of_data() {
                    Ok(ReadOutcome::EndOfData)
                } else {
                    let block = self.track.cur.block.unwrap_or(u64::MAX);
                    self.track.lost();
                    Err(DriveError::MediaError {
                        block,
                        detail: format!(
                            "read from {} failed with EIO (the kernel log has the drive's sense data)",
                            self.path.display()
                        ),
                    })
                }
            }
            Err(e) => {
                self.track.lost();
                Err(self.map_errno("read", e))
            }
        }
    }

    /// st turns BLANK CHECK on a read into EIO unless the read follows a filemark (a
    /// blank cartridge at BOT, or end of data not closed by a filemark, as real drives
    /// and tapevault's target report them). With READ POSITION and LOCATE, find out
    /// whether that EIO was end of data: space forward over a filemark (st flags end of
    /// data when the drive answers BLANK CHECK, and the tape stays); if it moved instead,
    /// locate back and let the caller report the media error.
    fn read_eio_was_end_of_data(&mut self) -> bool {
        if !self.has_hw_position() || self.hw_locate == Some(false) {
            return false;
        }
        let Some(here) = self.hw_pos() else {
            return false;
        };
        match op(self.fd(), MTFSF, 1) {
            Err(Errno::EIO) if self.gstat().map(|g| g & GMT_EOD != 0).unwrap_or(false) => {
                if self.track.cur.block != Some(here) {
                    self.track.lost();
                    self.track.cur.block = Some(here);
                    self.track.fill();
                }
                self.track.eod = Some(here);
                true
            }
            Ok(()) => {
                if let Ok(c) = i32::try_from(here) {
                    let _ = op(self.fd(), MTSEEK, c);
                }
                false
            }
            Err(_) => false,
        }
    }

    /// A device without READ POSITION may be tgt's emulator, which answers a read at end
    /// of data (a blank tape, or past the last filemark) with a stale full buffer
    /// instead of BLANK CHECK. At the start of a tape file whose end-of-data status we
    /// do not know, we therefore ask with a space operation first (spacing is reported
    /// correctly there).
    fn eod_check_needed(&mut self) -> bool {
        self.track.eod.is_none()
            && self.track.cur.bif == Some(0)
            && self.track.cur.file.is_some()
            && !self.has_hw_position()
    }

    /// Space forward over one filemark: failing with end of data means we are at end of
    /// data (the tape has not moved); succeeding means we were not, and we go back.
    fn probe_eod_by_spacing(&mut self) -> DriveResult<bool> {
        let here = self.track.cur;
        match op(self.fd(), MTFSF, 1) {
            Ok(()) => {
                let f = here.file.expect("checked by eod_check_needed");
                self.goto_file_start(f)?;
                if here.block.is_some() {
                    self.track.cur = here;
                }
                // After a rewind + space st's eof state is clean; a data read follows.
                Ok(false)
            }
            Err(Errno::EIO) if self.gstat().map(|g| g & GMT_EOD != 0).unwrap_or(false) => {
                self.track.cur = here;
                self.track.eod = here.block;
                if here.block.is_none() {
                    // Remember end of data by file: nothing more in this file.
                    self.track.cur.bif = Some(0);
                }
                Ok(true)
            }
            Err(Errno::EIO) => {
                // st only recognises BLANK CHECK; ask the drive itself what stopped it
                // (tgt answers a blank cartridge differently).
                let sense = self.sg.as_ref().and_then(|sg| {
                    sg.execute(
                        "SPACE (filemarks)",
                        &cdb::space(1, 1),
                        DataDirection::None,
                        &mut [],
                        SG_TIMEOUT,
                    )
                    .err()
                    .and_then(|e| e.sense().cloned())
                });
                match sense {
                    Some(s) if s.is_end_of_data() => {
                        self.track.cur = here;
                        self.track.eod = here.block;
                        Ok(true)
                    }
                    other => {
                        self.track.lost();
                        Err(DriveError::MediaError {
                            block: here.block.unwrap_or(u64::MAX),
                            detail: format!(
                                "spacing over a filemark at the start of tape file {} failed: {}",
                                here.file.unwrap_or(0),
                                other.map(|s| s.to_string()).unwrap_or_else(|| "EIO".into())
                            ),
                        })
                    }
                }
            }
            Err(e) => {
                self.track.lost();
                Err(self.map_errno("MTFSF 1 (checking for end of data)", e))
            }
        }
    }

    /// Read forward over `n` logical objects (blocks or filemarks), counting them.
    /// Stops early at end of data, returning how many were passed.
    fn read_forward_objects(&mut self, n: u64) -> DriveResult<u64> {
        let mut done = 0;
        let mut dummy = [0u8; 0];
        while done < n {
            match self.raw_read(self.max_block, true, &mut dummy)? {
                ReadOutcome::EndOfData => break,
                _ => done += 1,
            }
        }
        Ok(done)
    }

    /// Rewind and space forward over `file` filemarks.
    fn goto_file_start(&mut self, file: u64) -> DriveResult<()> {
        self.rewind()?;
        if file > 0 {
            let c = i32::try_from(file)
                .map_err(|_| DriveError::Other(format!("file number {file} too large")))?;
            self.mtop("MTFSF", MTFSF, c)?;
            self.track.cur = track::Track {
                block: None,
                file: Some(file),
                bif: Some(0),
            };
            self.track.fill();
        }
        Ok(())
    }

    /// With READ POSITION and LOCATE, the logical position known but not the block in
    /// the file (st reports none after spacing over filemarks to end of data or after a
    /// LOCATE, and this process may not have seen the file start): space back over one
    /// filemark (or to BOT), read the position there (the file starts one object later),
    /// and locate back. The file number is st's, or the one this process saw start there. `at_eod`: the
    /// position is end of data. Leaves the block in file unknown if the drive refuses.
    fn learn_file_start(&mut self, at_eod: bool) {
        let Some(here) = self.track.cur.block else {
            return;
        };
        let file = self.track.cur.file;
        let start = match op(self.fd(), MTBSF, 1) {
            Ok(()) => self.hw_pos().map(|fm| fm + 1),
            // No filemark before: the file starts at BOT.
            Err(Errno::EIO) => Some(0),
            Err(_) => None,
        };
        let back = i32::try_from(here)
            .ok()
            .is_some_and(|c| op(self.fd(), MTSEEK, c).is_ok());
        self.track.lost();
        if !back {
            return;
        }
        self.track.cur.block = Some(here);
        if at_eod {
            self.track.eod = Some(here);
        }
        if let Some(s) = start.filter(|&s| s <= here) {
            // The file number: st's (when it knew it), or the file this process saw
            // start at that very object (after a LOCATE st knows none).
            let seen = self
                .track
                .starts
                .iter()
                .find(|(_, &at)| at == s)
                .map(|(&f, _)| f);
            if let Some(f) = file.or(seen) {
                self.track.cur.file = Some(f);
                self.track.cur.bif = Some(here - s);
            }
        }
        self.track.fill();
    }

    /// Without READ POSITION: find the logical number of the current position (file and
    /// block in file known) by going back to BOT and counting.
    fn relearn(&mut self) -> DriveResult<()> {
        let (Some(file), Some(bif)) = (self.track.cur.file, self.track.cur.bif) else {
            return Err(DriveError::Other(format!(
                "{}: the tape position is unknown and the drive cannot report it (no READ POSITION); \
                 rewind or space to end of data to find it again",
                self.path.display()
            )));
        };
        self.rewind()?;
        let mut passed = 0;
        while passed < file {
            let before = self.track.cur.file;
            self.read_forward_objects(1)?;
            if self.track.at_eod() {
                return Err(DriveError::Other(format!(
                    "relearning the position: end of data before file {file}"
                )));
            }
            if self.track.cur.file != before {
                passed += 1;
            }
        }
        self.read_forward_objects(bif)?;
        Ok(())
    }

    /// Without READ POSITION: go to end of data counting every block, from the current
    /// position if known, else from BOT. Assumes the data ends with a filemark (st writes
    /// one when a writer closes the device).
    fn walk_to_eod(&mut self) -> DriveResult<()> {
        if self.track.position().is_none() {
            self.rewind()?;
        }
        let start = self
            .track
            .position()
            .expect("known: at BOT or already known");
        // 1. Count the filemarks between here and end of data (spacing over filemarks
        //    is exact on every device; tgt's data reads at EOD are not).
        let mut fms = 0u64;
        loop {
            match op(self.fd(), MTFSF, 1) {
                Ok(()) => fms += 1,
                Err(Errno::EIO) => break,
                Err(e) => return Err(self.map_errno("MTFSF 1 (counting files)", e)),
            }
            if fms > MAX_FILES_WALKED {
                return Err(DriveError::Other(
                    "more than a million tape files: refusing to count further".into(),
                ));
            }
        }
        // 2. Back to where we were, then count blocks by reading up to the last filemark.
        self.goto_file_start(start.file)?;
        self.track.cur = track::Track {
            block: Some(start.block - start.block_in_file),
            file: Some(start.file),
            bif: Some(0),
        };
        self.track.eod = None;
        if start.block_in_file > 0 {
            self.read_forward_objects(start.block_in_file)?;
        }
        let mut seen = 0;
        let mut dummy = [0u8; 0];
        while seen < fms {
            match self.raw_read(self.max_block, true, &mut dummy)? {
                ReadOutcome::Filemark => seen += 1,
                ReadOutcome::Block(_) => {}
                ReadOutcome::EndOfData => break,
            }
        }
        self.track.eod = self.track.cur.block;
        Ok(())
    }

    fn too_small(&mut self, buffer_len: usize) -> DriveResult<ReadOutcome> {
        // st moved past the block: step back over it and measure it.
        self.mtop("MTBSR 1 (after a too-small read)", MTBSR, 1)?;
        let mut dummy = [0u8; 0];
        let cur = self.track.cur;
        let measured = if buffer_len < self.max_block {
            match self.raw_read(self.max_block, true, &mut dummy) {
                Ok(ReadOutcome::Block(n)) => {
                    self.mtop("MTBSR 1 (after measuring a block)", MTBSR, 1)?;
                    Some(n)
                }
                _ => None,
            }
        } else {
            None
        };
        self.track.cur = cur;
        match measured {
            Some(n) => Err(DriveError::BufferTooSmall { block_len: n, buffer_len }),
            None => Err(DriveError::Other(format!(
                "{}: the block at this position is larger than {} bytes, the drive's maximum block size",
                self.path.display(),
                self.max_block
            ))),
        }
    }

    fn space_blocks_forward(&mut self, n: u64) -> DriveResult<()> {
        if self.has_hw_position() {
            let before = self.hw_pos();
            let c = i32::try_from(n).ok().filter(|c| *c <= MAX_SPACE_COUNT);
            let Some(c) = c else {
                return self.space_by_reading(n);
            };
            let file_before = self.mtget().map(|g| g.mt_fileno).unwrap_or(-1);
            match op(self.fd(), MTFSR, c) {
                Ok(()) => {
                    self.track.cur.block = self.track.cur.block.map(|b| b + n);
                    self.track.cur.bif = self.track.cur.bif.map(|b| b + n);
                    return Ok(());
                }
                Err(Errno::EIO) => {
                    let g = self.mtget()?;
                    let after = self.hw_pos();
                    let (stop, moved) = if g.mt_gstat as u32 & GMT_EOD != 0 {
                        (
                            SpaceStop::EndOfData,
                            after.zip(before).map(|(a, b)| a.saturating_sub(b)),
                        )
                    } else if g.mt_fileno != file_before {
                        (
                            SpaceStop::Filemark,
                            after.zip(before).map(|(a, b)| a.saturating_sub(b + 1)),
                        )
                    } else {
                        self.track.lost();
                        return Err(io_err("MTFSR", Errno::EIO));
                    };
                    let moved = moved.unwrap_or(0);
                    self.track.cur.block = after;
                    if stop == SpaceStop::Filemark {
                        self.track.cur.file = self.track.cur.file.map(|f| f + 1);
                        self.track.cur.bif = Some(0);
                        self.track.fill();
                    } else {
                        self.track.cur.bif = self.track.cur.bif.map(|b| b + moved);
                        self.track.eod = after;
                    }
                    return Err(DriveError::SpaceStopped {
                        op: "space forward over blocks",
                        stop,
                        residual: n - moved.min(n),
                    });
                }
                Err(e) => {
                    self.track.lost();
                    return Err(self.map_errno("MTFSR", e));
                }
            }
        }
        self.space_by_reading(n)
    }

    /// Forward block spacing by reading: exact on any device.
    fn space_by_reading(&mut self, n: u64) -> DriveResult<()> {
        let mut dummy = [0u8; 0];
        for i in 0..n {
            match self.raw_read(self.max_block, true, &mut dummy)? {
                ReadOutcome::Block(_) => {}
                ReadOutcome::Filemark => {
                    return Err(DriveError::SpaceStopped {
                        op: "space forward over blocks",
                        stop: SpaceStop::Filemark,
                        residual: n - i,
                    })
                }
                ReadOutcome::EndOfData => {
                    return Err(DriveError::SpaceStopped {
                        op: "space forward over blocks",
                        stop: SpaceStop::EndOfData,
                        residual: n - i,
                    })
                }
            }
        }
        Ok(())
    }

    fn space_blocks_backward(&mut self, n: u64) -> DriveResult<()> {
        self.ew = EarlyWarning::None;
        if self.has_hw_position() {
            return self.space_blocks_backward_hw(n);
        }
        // Without READ POSITION backward spacing is rebuilt from forward moves, which tgt
        // gets right (its SPACE backward lands off by one after a filemark).
        let (file, bif) = self.known_file_and_bif()?;
        if n <= bif {
            self.goto_file_start(file)?;
            self.forward_within_file(bif - n)?;
            return Ok(());
        }
        if file == 0 {
            self.rewind()?;
            return Err(DriveError::SpaceStopped {
                op: "space backward over blocks",
                stop: SpaceStop::BeginningOfTape,
                residual: n - bif,
            });
        }
        self.goto_end_of_file(file - 1)?;
        Err(DriveError::SpaceStopped {
            op: "space backward over blocks",
            stop: SpaceStop::Filemark,
            residual: n - bif,
        })
    }

    fn known_file_and_bif(&mut self) -> DriveResult<(u64, u64)> {
        if self.track.cur.file.is_none() || self.track.cur.bif.is_none() {
            self.adopt_st_counters();
            self.relearn()?;
        }
        match (self.track.cur.file, self.track.cur.bif) {
            (Some(f), Some(b)) => Ok((f, b)),
            _ => Err(DriveError::Other(format!(
                "{}: tape position unknown",
                self.path.display()
            ))),
        }
    }

    /// From the start of a file, space forward `k` blocks known to lie inside it.
    fn forward_within_file(&mut self, k: u64) -> DriveResult<()> {
        if k > 0 {
            let c = i32::try_from(k).ok().filter(|c| *c <= MAX_SPACE_COUNT);
            match c {
                Some(c) => {
                    self.mtop("MTFSR", MTFSR, c)
                        .inspect_err(|_| self.track.lost())?;
                    self.track.cur.block = self.track.cur.block.map(|b| b + k);
                    self.track.cur.bif = self.track.cur.bif.map(|b| b + k);
                }
                None => {
                    self.read_forward_objects(k)?;
                }
            }
        }
        Ok(())
    }

    /// Position just before the filemark that ends file `f` (its BOT side).
    fn goto_end_of_file(&mut self, f: u64) -> DriveResult<()> {
        let known = match (self.track.starts.get(&f), self.track.starts.get(&(f + 1))) {
            (Some(s), Some(n)) if *n > *s => Some(n - 1 - s),
            _ => None,
        };
        let len = match known {
            Some(l) => l,
            None => {
                self.goto_file_start(f)?;
                let mut dummy = [0u8; 0];
                let mut c = 0;
                loop {
                    match self.raw_read(self.max_block, true, &mut dummy)? {
                        ReadOutcome::Block(_) => c += 1,
                        ReadOutcome::Filemark => break,
                        ReadOutcome::EndOfData => {
                            return Err(DriveError::Other(format!(
                                "tape file {f} has no closing filemark"
                            )))
                        }
                    }
                }
                c
            }
        };
        self.goto_file_start(f)?;
        self.forward_within_file(len)
    }

    fn space_blocks_backward_hw(&mut self, n: u64) -> DriveResult<()> {
        let before = self.hw_pos();
        let c = i32::try_from(n)
            .map_err(|_| DriveError::Other(format!("space count {n} too large")))?;
        let r = op(self.fd(), MTBSR, c);
        let after = self.hw_pos();
        self.track.lost();
        self.track.cur.block = after;
        self.track.fill();
        match r {
            Ok(()) => Ok(()),
            Err(Errno::EIO) => {
                let g = self.mtget()?;
                let moved = before
                    .zip(after)
                    .map(|(b, a)| b.saturating_sub(a))
                    .unwrap_or(0);
                let stop = if after == Some(0) || g.mt_gstat as u32 & GMT_BOT != 0 {
                    self.track.at_bot();
                    SpaceStop::BeginningOfTape
                } else {
                    SpaceStop::Filemark
                };
                let moved = if stop == SpaceStop::Filemark {
                    moved.saturating_sub(1)
                } else {
                    moved
                };
                Err(DriveError::SpaceStopped {
                    op: "space backward over blocks",
                    stop,
                    residual: n - moved.min(n),
                })
            }
            Err(e) => Err(self.map_errno("MTBSR", e)),
        }
    }
}

fn map_open_err(name: &str, e: std::io::Error) -> DriveError {
    match e.raw_os_error() {
        Some(libc::ENOMEDIUM) => DriveError::NoMedium { drive: name.to_string() },
        Some(libc::EBUSY) => DriveError::Busy { detail: format!("{name} is open in another process (st allows one)") },
        Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) => DriveError::Other(format!(
            "{name}: no such tape device (is the st module loaded? see /dev/tape/by-id/ for persistent names)"
        )),
        Some(libc::EACCES) | Some(libc::EPERM) => DriveError::Other(format!(
            "{name}: permission denied (add the user to the 'tape' group or adjust the udev rule)"
        )),
        _ => DriveError::Io { op: "open", source: e },
    }
}

impl TapeDrive for StDrive {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn capabilities(&mut self) -> DriveResult<Capabilities> {
        self.ensure_ready()?;
        let read_position = self.has_hw_position();
        let locate = match (read_position, self.hw_locate) {
            (_, Some(v)) => v,
            (false, None) => {
                self.hw_locate = Some(false);
                false
            }
            (true, None) => {
                // Probe with a LOCATE to where the tape already is: no data moves.
                let here = self.hw_pos();
                let ok = match here {
                    Some(p) => i32::try_from(p).is_ok_and(|c| op(self.fd(), MTSEEK, c).is_ok()),
                    None => false,
                };
                self.hw_locate = Some(ok);
                ok
            }
        };
        let hardware_encryption = self.hardware_encryption_supported().is_ok();
        Ok(Capabilities {
            read_position,
            locate,
            // Drives with READ POSITION (SSC-2 and later: LTO, DDS-4+) report early
            // warning; the tgt emulator has neither (no early-warning zone).
            early_warning: read_position,
            hardware_encryption,
            min_block_size: self.min_block,
            max_block_size: self.max_block,
        })
    }

    fn read_block(&mut self, buf: &mut [u8]) -> DriveResult<ReadOutcome> {
        self.ensure_ready()?;
        let len = buf.len().min(self.max_block);
        if len < self.min_block {
            return Err(DriveError::Other(format!(
                "a {len}-byte read buffer is below the drive's minimum block size of {} bytes",
                self.min_block
            )));
        }
        match self.raw_read(len, false, buf) {
            Err(DriveError::BufferTooSmall { .. }) => self.too_small(buf.len()),
            r => r,
        }
    }

    fn write_block(&mut self, data: &[u8]) -> DriveResult<WriteOutcome> {
        self.ensure_ready()?;
        if !self.writable {
            return Err(DriveError::WriteProtected);
        }
        if data.len() > self.max_block || data.len() < self.min_block {
            return Err(DriveError::Other(format!(
                "a {}-byte block is outside the drive's block limits {} - {} bytes",
                data.len(),
                self.min_block,
                self.max_block
            )));
        }
        if self.ew == EarlyWarning::Entered {
            // The write after the one that met early warning is refused once, as st
            // does; we enforce it ourselves so the contract holds also when st learned
            // of the warning only through a status query.
            self.ew = EarlyWarning::Trailer;
            return Err(DriveError::EarlyWarning);
        }
        let aligned = (data.as_ptr() as usize).is_multiple_of(DIO_ALIGN);
        if !aligned {
            if self.wbuf.len() < data.len() + DIO_ALIGN {
                self.wbuf.resize(data.len() + DIO_ALIGN, 0);
            }
            let off = self.wbuf.as_ptr().align_offset(DIO_ALIGN);
            self.wbuf[off..off + data.len()].copy_from_slice(data);
        }
        let mut retried = false;
        loop {
            let out: &[u8] = if aligned {
                data
            } else {
                let off = self.wbuf.as_ptr().align_offset(DIO_ALIGN);
                &self.wbuf[off..off + data.len()]
            };
            match nix::unistd::write(&self.file, out) {
                Ok(n) if n == data.len() => {
                    self.track.forward_block();
                    self.track.wrote();
                    if self.ew == EarlyWarning::Trailer {
                        return Ok(WriteOutcome::Written);
                    }
                    // st flags early warning in its status; right after the write that met
                    // it, MTIOCGET itself may answer ENOSPC (st's buffer flush reports it).
                    let eot = match get(self.fd()) {
                        Ok(g) => g.mt_gstat as u32 & GMT_EOT != 0,
                        Err(Errno::ENOSPC) => true,
                        Err(e) => return Err(self.map_errno("MTIOCGET", e)),
                    };
                    if eot {
                        self.ew = EarlyWarning::Entered;
                        return Ok(WriteOutcome::WrittenEarlyWarning);
                    }
                    return Ok(WriteOutcome::Written);
                }
                Ok(n) => {
                    self.track.lost();
                    return Err(DriveError::Other(format!("short write: {n} of {} bytes", data.len())));
                }
                Err(Errno::ENOSPC) => match self.ew {
                    EarlyWarning::None | EarlyWarning::Entered => {
                        self.ew = EarlyWarning::Trailer;
                        return Err(DriveError::EarlyWarning);
                    }
                    EarlyWarning::Trailer if !retried => retried = true,
                    EarlyWarning::Trailer => return Err(DriveError::EndOfMedium),
                },
                Err(Errno::EINVAL) => {
                    return Err(DriveError::Other(format!(
                        "{} rejected a {}-byte block (EINVAL): above what the drive or its HBA accepts; \
                         check 'Block limits' in the kernel log",
                        self.path.display(),
                        data.len()
                    )))
                }
                Err(Errno::EIO) => {
                    let block = self.track.cur.block.unwrap_or(u64::MAX);
                    self.track.lost();
                    return Err(DriveError::MediaError {
                        block,
                        detail: format!("write to {} failed with EIO (the kernel log has the sense data)", self.path.display()),
                    });
                }
                Err(e) => {
                    self.track.lost();
                    return Err(self.map_errno("write", e));
                }
            }
        }
    }

    fn write_filemarks(&mut self, count: u32, immediate: bool) -> DriveResult<()> {
        self.ensure_ready()?;
        if !self.writable {
            return Err(DriveError::WriteProtected);
        }
        let c = i32::try_from(count)
            .map_err(|_| DriveError::Other(format!("{count} filemarks is too many")))?;
        let r = if immediate {
            match op(self.fd(), MTWEOFI, c) {
                // Kernels before 2.6.37 lack MTWEOFI.
                Err(Errno::EINVAL) | Err(Errno::ENOSYS) => op(self.fd(), MTWEOF, c),
                r => r,
            }
        } else {
            op(self.fd(), MTWEOF, c)
        };
        if let Err(e) = r {
            self.track.lost();
            return Err(self.map_errno("write filemarks", e));
        }
        for _ in 0..count {
            self.track.forward_filemark();
        }
        self.track.wrote();
        Ok(())
    }

    fn flush(&mut self) -> DriveResult<()> {
        if !self.writable || !self.ready {
            return Ok(());
        }
        // WRITE FILEMARKS with a count of 0 flushes the drive's buffer (SSC).
        self.mtop("flush (MTWEOF 0)", MTWEOF, 0)
    }

    fn rewind(&mut self) -> DriveResult<()> {
        self.ensure_ready()?;
        self.ew = EarlyWarning::None;
        if let Err(e) = self.mtop("rewind", MTREW, 1) {
            self.track.lost();
            return Err(e);
        }
        self.track.at_bot();
        Ok(())
    }

    fn space_blocks(&mut self, count: i64) -> DriveResult<()> {
        self.ensure_ready()?;
        match count {
            0 => Ok(()),
            c if c > 0 => self.space_blocks_forward(c as u64),
            c => self.space_blocks_backward(c.unsigned_abs()),
        }
    }

    fn space_filemarks(&mut self, count: i64) -> DriveResult<()> {
        self.ensure_ready()?;
        if count == 0 {
            return Ok(());
        }
        if count > 0 {
            // One at a time: exact even where the device reports no residual (tgt).
            for i in 0..count as u64 {
                if self.track.at_eod() {
                    return Err(DriveError::SpaceStopped {
                        op: "space forward over filemarks",
                        stop: SpaceStop::EndOfData,
                        residual: count as u64 - i,
                    });
                }
                match op(self.fd(), MTFSF, 1) {
                    Ok(()) => {
                        let file = self.track.cur.file.map(|f| f + 1);
                        self.track.cur = track::Track {
                            block: None,
                            file,
                            bif: Some(0),
                        };
                        self.track.fill();
                    }
                    Err(Errno::EIO) if self.gstat().map(|g| g & GMT_EOD != 0).unwrap_or(false) => {
                        let file = self.track.cur.file;
                        self.track.cur = track::Track {
                            block: self.hw_pos(),
                            file,
                            bif: None,
                        };
                        self.track.eod = self.track.cur.block;
                        self.track.fill();
                        return Err(DriveError::SpaceStopped {
                            op: "space forward over filemarks",
                            stop: SpaceStop::EndOfData,
                            residual: count as u64 - i,
                        });
                    }
                    Err(e) => {
                        self.track.lost();
                        return Err(self.map_errno("MTFSF", e));
                    }
                }
            }
            if self.track.cur.block.is_none() {
                self.track.cur.block = self.hw_pos();
                self.track.fill();
            }
            return Ok(());
        }
        self.ew = EarlyWarning::None;
        let n = count.unsigned_abs();
        if !self.has_hw_position() {
            let (file, _) = self.known_file_and_bif()?;
            if n > file {
                self.rewind()?;
                return Err(DriveError::SpaceStopped {
                    op: "space backward over filemarks",
                    stop: SpaceStop::BeginningOfTape,
                    residual: n - file,
                });
            }
            return self.goto_end_of_file(file - n);
        }
        for i in 0..n {
            if self.track.cur.file == Some(0) {
                self.rewind()?;
                return Err(DriveError::SpaceStopped {
                    op: "space backward over filemarks",
                    stop: SpaceStop::BeginningOfTape,
                    residual: n - i,
                });
            }
            match op(self.fd(), MTBSF, 1) {
                Ok(()) => self.track.backward_filemark(),
                Err(Errno::EIO) if self.track.cur.file.is_none() => {
                    // Unknown file: st reports BOT as an error; confirm by rewinding.
                    self.rewind()?;
                    return Err(DriveError::SpaceStopped {
                        op: "space backward over filemarks",
                        stop: SpaceStop::BeginningOfTape,
                        residual: n - i,
                    });
                }
                Err(e) => {
                    self.track.lost();
                    return Err(self.map_errno("MTBSF", e));
                }
            }
        }
        if self.track.cur.block.is_none() {
            self.track.cur.block = self.hw_pos();
            self.track.fill();
        }
        Ok(())
    }

    fn space_to_eod(&mut self) -> DriveResult<()> {
        self.ensure_ready()?;
        self.ew = EarlyWarning::None;
        if self.track.eod.is_some() && self.track.position().is_some() {
            // Known: get there the cheap exact way.
            let eod = self.track.eod.expect("checked");
            if self.track.cur.block != Some(eod) {
                return self.locate(eod);
            }
            return Ok(());
        }
        if self.has_hw_position() {
            self.mtop("MTEOM", MTEOM, 1)
                .inspect_err(|_| self.track.lost())?;
            let g = self.mtget()?;
            self.track.lost();
            self.track.cur.block = self.hw_pos();
            if g.mt_fileno >= 0 && (g.mt_fileno as u64) <= self.track.cur.block.unwrap_or(0) {
                self.track.cur.file = Some(g.mt_fileno as u64);
            }
            self.track.eod = self.track.cur.block;
            self.track.fill();
            if self.track.cur.bif.is_none() {
                // st reports no block number after MTEOM (it spaced over filemarks to
                // get there) and this process may not know where the last file starts:
                // find it with READ POSITION on the far side of the last filemark.
                self.learn_file_start(true);
            }
            return Ok(());
        }
        self.walk_to_eod()
    }

    fn locate(&mut self, block: u64) -> DriveResult<()> {
        self.ensure_ready()?;
        self.ew = EarlyWarning::None;
        if let Some(eod) = self.track.eod {
            if block > eod {
                return Err(DriveError::BeyondEndOfData { block });
            }
        }
        if self.track.cur.block == Some(block) && self.track.position().is_some() {
            return Ok(());
        }
        if self.hw_locate != Some(false) && self.has_hw_position() {
            if let Ok(c) = i32::try_from(block) {
                match op(self.fd(), MTSEEK, c) {
                    Ok(()) => {
                        self.hw_locate = Some(true);
                        self.track.lost();
                        self.track.cur.block = Some(block);
                        self.track.fill();
                        return Ok(());
                    }
                    Err(Errno::EIO) if self.hw_locate == Some(true) => {
                        self.track.lost();
                        return Err(DriveError::BeyondEndOfData { block });
                    }
                    Err(_) => self.hw_locate = Some(false),
                }
            }
        }
        // Fallback: from the nearest known file start at or before the target (or from
        // here, when that is closer), read forward counting objects.
        let here = self.track.position().filter(|p| p.block <= block);
        let (sf, ss) = self
            .track
            .starts
            .iter()
            .map(|(f, s)| (*f, *s))
            .filter(|(_, s)| *s <= block)
            .max_by_key(|(_, s)| *s)
            .unwrap_or((0, 0));
        match here {
            Some(p) if p.block >= ss => {}
            _ => {
                self.goto_file_start(sf)?;
                self.track.cur.block = Some(ss);
                self.track.fill();
            }
        }
        let cur = self.track.cur.block.expect("known after positioning");
        let mut need = block - cur;
        // Inside one file whose end is known, block spacing is exact even on tgt.
        if let (Some(f), Some(_)) = (self.track.cur.file, self.track.cur.bif) {
            if let Some(next) = self.track.starts.get(&(f + 1)) {
                if block < next - 1 && need > 0 {
                    let c = i32::try_from(need)
                        .map_err(|_| DriveError::Other("locate distance too large".into()))?;
                    self.mtop("MTFSR", MTFSR, c)
                        .inspect_err(|_| self.track.lost())?;
                    self.track.cur.block = Some(block);
                    self.track.cur.bif = self.track.cur.bif.map(|b| b + need);
                    need = 0;
                }
            }
        }
        let done = self.read_forward_objects(need)?;
        if done < need {
            return Err(DriveError::BeyondEndOfData { block });
        }
        Ok(())
    }

    fn position(&mut self) -> DriveResult<Position> {
        self.ensure_ready()?;
        if let Some(p) = self.track.position() {
            return Ok(p);
        }
        if self.has_hw_position() {
            self.track.cur.block = self.hw_pos();
            if self.track.cur.file.is_none() {
                if let Ok(g) = self.mtget() {
                    if g.mt_fileno >= 0 && g.mt_blkno >= 0 {
                        self.track.cur.file = Some(g.mt_fileno as u64);
                        self.track.cur.bif = Some(g.mt_blkno as u64);
                    }
                }
            }
            self.track.fill();
            if self.track.position().is_none() && self.hw_locate != Some(false) {
                let at_eod = self.track.eod.is_some() && self.track.eod == self.track.cur.block;
                self.learn_file_start(at_eod);
            }
            if let Some(p) = self.track.position() {
                return Ok(p);
            }
        }
        if self.track.cur.file.is_none() || self.track.cur.bif.is_none() {
            self.adopt_st_counters();
        }
        self.relearn()?;
        self.track.position().ok_or_else(|| {
            DriveError::Other(format!("{}: tape position unknown", self.path.display()))
        })
    }

    fn status(&mut self) -> DriveResult<DriveStatus> {
        // Status answers at once: an empty drive is reported, not waited for.
        if !self.ready && self.ensure_ready_within(Duration::ZERO).is_err() {
            return Ok(DriveStatus {
                loaded: false,
                detail: Some(format!("{}: no cartridge", self.path.display())),
                ..DriveStatus::default()
            });
        }
        let g = self.mtget()?;
        let gs = g.mt_gstat as u32;
        let loaded = gs & GMT_ONLINE != 0;
        let mut position = self.track.position();
        if position.is_none() && loaded && self.has_hw_position() {
            position = self.position().ok();
        }
        let ids = self.inquiry();
        let mut detail = format!(
            "st status 0x{gs:08x}, st file {} block {}",
            g.mt_fileno, g.mt_blkno
        );
        if let Some((v, p, r)) = ids {
            detail = format!("{v} {p} {r}; {detail}");
        }
        if gs & GMT_CLN != 0 {
            detail.push_str("; the drive asks for cleaning");
        }
        Ok(DriveStatus {
            loaded,
            bot: gs & GMT_BOT != 0 || position.is_some_and(|p| p.block == 0),
            eod: gs & GMT_EOD != 0 || self.track.at_eod(),
            at_filemark: gs & GMT_EOF != 0,
            early_warning: gs & GMT_EOT != 0,
            write_protected: gs & GMT_WR_PROT != 0 || !self.writable,
            worm: false,
            position,
            barcode: None,
            detail: Some(detail),
        })
    }

    fn unload(&mut self) -> DriveResult<()> {
        self.ew = EarlyWarning::None;
        if !self.ready {
            return Ok(());
        }
        let r = self.mtop("unload (MTOFFL)", MTOFFL, 1);
        self.ready = false;
        self.track.forget_medium();
        self.hw_position = None;
        self.hw_locate = None;
        r
    }

    fn set_data_key(&mut self, key: Option<&DataKey>) -> DriveResult<()> {
        let r = match key {
            Some(k) => self.hardware_encryption_supported().and_then(|_| {
                encryption::set_key_modes(
                    self.sg.as_ref().expect("checked above"),
                    &k.key,
                    &k.kad,
                    if k.encrypt {
                        encryption::ENCRYPT
                    } else {
                        encryption::ENCRYPT_DISABLE
                    },
                    encryption::DECRYPT_MIXED,
                )
            }),
            None => self.clear_hardware_key(),
        };
        r.map_err(|e| match e {
            encryption::EncryptionError::NotSupported { .. } => DriveError::Unsupported {
                op: "hardware encryption",
            },
            other => DriveError::Other(format!(
                "{}: setting the drive's data key (SECURITY PROTOCOL OUT): {other}",
                self.path.display()
            )),
        })
    }

    fn erase(&mut self) -> DriveResult<()> {
        self.ensure_ready()?;
        if !self.writable {
            return Err(DriveError::WriteProtected);
        }
        self.ew = EarlyWarning::None;
        // Count 0: the short erase (end of data written here), not a long erase of the
        // whole remaining tape, which takes hours on a real cartridge.
        if let Err(e) = op(self.fd(), MTERASE, 0) {
            self.track.lost();
            return Err(self.map_errno("erase (MTERASE)", e));
        }
        self.track.wrote();
        Ok(())
    }

    fn max_block_size(&self) -> usize {
        self.max_block
    }
}

impl StDrive {
    /// Load the cartridge in the drive (SCSI LOAD; st's MTLOAD), then forget positions.
    pub fn load(&mut self) -> DriveResult<()> {
        self.ready = false;
        self.ensure_ready()
    }

    /// Whether st's logical-position option could be set (root only); a note for probe.
    pub fn logical_positions(&self) -> Result<(), String> {
        self.logical_option
            .map_err(|e| format!("st option MT_ST_SCSI2LOGICAL not set: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_a_missing_device_says_what_to_check() {
        let e = StDrive::open(Path::new("/nonexistent/nst9")).unwrap_err();
        assert!(e.to_string().contains("no such tape device"), "{e}");
    }

    #[test]
    fn opening_a_regular_file_is_refused_not_treated_as_a_tape() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("nst0");
        std::fs::write(&f, b"not a tape").unwrap();
        let e = StDrive::open(&f).unwrap_err();
        assert!(e.to_string().contains("MTSETBLK"), "{e}");
    }

    #[test]
    fn opening_a_rewinding_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("st0");
        std::fs::write(&f, b"").unwrap();
        let e = StDrive::open(&f).unwrap_err();
        assert!(e.to_string().contains("rewinding device"), "{e}");
    }
}
