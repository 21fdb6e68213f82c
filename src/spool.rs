//! The backup spool: records waiting between the transform stage and a tape drive, so
//! that a source slower than the drive's lowest speed feeds the drive in long bursts
//! instead of stopping the tape every few records (docs/DESIGN.md, "Keeping the drive
//! streaming").
//!
//! A [`SpoolFile`] is a ring of `capacity` bytes in an unnamed file (O_TMPFILE where the
//! file system has it, else created and unlinked at once: a killed process leaves
//! nothing behind) in the spool directory. It only grows as records are written into it
//! and is emptied (truncated) after each image, so it uses disk space for what it holds.
//! The pipeline ([`crate::pipeline::run_buffered`]) writes each record into it as the
//! transform stage delivers it and reads it back for the drive: the records are in the
//! page cache, or on the spool's disk, never in the process's memory beyond one record.
//! One writer and one reader use it at a time; each reserves its byte range under the
//! pipeline's lock and does its I/O outside it.
//!
//! What the spool holds is not on tape: records count only once the drive flushed them
//! at the session's commit point, exactly as without a spool.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The spool of a backup when the operator does not size it (`--spool auto`): at most
/// this much disk space ...
pub const AUTO_MAX: u64 = 8 << 30;
/// ... and at most this fraction of the spool directory's free space (1/AUTO_SHARE).
pub const AUTO_SHARE: u64 = 4;
/// A disk spool smaller than this is not worth it (each burst would save the drive less
/// than a few seconds of repositioning): `--spool auto` falls back to memory, and an
/// explicit `--spool SIZE` below it is a memory spool.
pub const MIN_FILE: u64 = 256 << 20;
/// The memory spool a backup falls back to when the spool directory has no room.
pub const MEMORY_FALLBACK: u64 = 128 << 20;
/// The largest memory spool (`--spool SIZE` below [`MIN_FILE`] is one).
pub const MAX_MEMORY: u64 = MIN_FILE;

/// What the spool must know of the drive it feeds: its native (highest) speed, the
/// lowest speed it can match, and what each stop costs. From the virtual drive's model
/// when it has one, else the pool's `drive_speeds` in pools.toml, else
/// [`DriveSpeeds::LTO_DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriveSpeeds {
    /// Bytes per second the drive writes when fed at least that fast.
    pub native: u64,
    /// The lowest speed it matches, bytes per second: fed slower, it stops and
    /// repositions.
    pub min: u64,
    /// Time lost by each stop and restart of the tape.
    pub reposition_s: f64,
}

impl DriveSpeeds {
    /// The drive assumed when neither the library nor pools.toml says otherwise: an
    /// LTO-9-class drive (400 MB/s native, speed matching down to about 120 MB/s, about
    /// 3 s per reposition). A slower drive is served by it too (its bursts are longer
    /// than it needs); a faster one should be declared (`drive_speeds` in pools.toml).
    pub const LTO_DEFAULT: DriveSpeeds = DriveSpeeds {
        native: 400_000_000,
        min: 120_000_000,
        reposition_s: 3.0,
    };

    /// As the drive model of the virtual library gives them.
    pub fn from_model(m: &vtl_sim::DriveModel) -> DriveSpeeds {
        DriveSpeeds {
            native: m.native_speed,
            min: m.min_speed,
            reposition_s: m.reposition_ms as f64 / 1000.0,
        }
    }

    /// Parse a spec as `drive_speeds` in pools.toml takes it:
    /// `speed=RATE[,min=RATE][,reposition=DURATION]` (the drive model's grammar: `min`
    /// defaults to a third of `speed`, `reposition` to 2.5 s).
    pub fn parse(spec: &str) -> std::result::Result<DriveSpeeds, String> {
        let m: vtl_sim::DriveModel = spec.parse().map_err(|e: String| {
            format!("{e} (drive_speeds is speed=RATE[,min=RATE][,reposition=DURATION], e.g. \"speed=400M,min=120M,reposition=3s\")")
        })?;
        Ok(DriveSpeeds::from_model(&m))
    }

    /// The bytes a spool must hold when a burst starts so that a source of `rate`
    /// bytes/s (below [`DriveSpeeds::min`]) keeps the drive repositioning at most
    /// `share` of the time. One cycle: the spool fills to S, the drive repositions (R)
    /// and writes at its native speed v while the source goes on at r, so the burst
    /// writes B = (S + rR) / (1 - r/v) bytes, all the source delivered in the cycle,
    /// which lasts B / r. One reposition per cycle: R r / B <= share, so
    /// B >= rR / share and S >= rR ((1 - r/v) / share - 1).
    pub fn burst_start(&self, rate: f64, share: f64) -> u64 {
        let (r, v, rr) = (rate.max(0.0), self.native as f64, self.reposition_s);
        let s = r * rr * ((1.0 - (r / v).min(1.0)) / share - 1.0);
        if s.is_finite() && s > 0.0 {
            s as u64
        } else {
            0
        }
    }
}

/// The share of the time the spool aims to let the drive reposition: half the 10 %
/// allowed, leaving the other half for the stop of each image's last burst and a
/// writer the machine held up.
pub const REPOSITION_SHARE: f64 = 0.05;

/// Source rates are measured over windows of this many seconds of the drive's lowest
/// speed (70 MB at 70 MB/s): how long a slow source runs before the spool knows it is
/// slow.
pub const WINDOW_S: f64 = 1.0;

/// A probe ends early, streaming, once this share of its window (1/PROBE_EARLY_SHARE)
/// arrived at the drive's native speed or faster, in the whole sample and in its second
/// half: a source that fast cannot be the slow one the probe looks for, and an image
/// smaller than a window (an incremental) then reaches the drive while it is read
/// instead of only once read whole.
pub const PROBE_EARLY_SHARE: u64 = 8;

/// ... and at least this many bytes (16 MiB): an early sample is fooled by a burst as
/// long as itself (a source that delivers its first megabytes at once, then slowly: a
/// rate limiter's bucket, data gated in steps), so it is never shorter than twice an
/// NBD source's read-ahead (8 MiB). A window shorter than this is measured whole.
pub const PROBE_EARLY_MIN: u64 = 16 << 20;

/// Records a streaming spool holds in memory at most between the transform stage and
/// the drive (a fast source: the spool file is not used).
pub const STREAM_RECORDS: usize = 4;

/// How a spool file feeds the drive: the decisions of the writer, from the measured
/// rate of the source and the drive's speeds. A pure state machine (the caller says
/// when, in seconds from any origin), so tests drive it with made-up times.
///
/// * **Probe** (an image's start): the records go into the file, the drive waits, for
///   one window (`WINDOW_S` of the drive's lowest speed, or that many bytes). A source
///   that delivered the window's bytes at least at the lowest speed **streams**;
///   a slower one **accumulates**. A source that delivered the window's first eighth
///   ([`PROBE_EARLY_SHARE`], at least [`PROBE_EARLY_MIN`]) at the drive's native speed
///   or faster streams at once.
/// * **Stream**: the writer takes every record as it comes, through memory
///   ([`STREAM_RECORDS`] at most), after what the file still holds: the source is
///   held back only by the drive, as without a spool. Each window is measured again:
///   a source that fell below the lowest speed accumulates.
/// * **Accumulate**: the records go into the file until it holds
///   [`DriveSpeeds::burst_start`] for the source's rate (at most half the spool, so
///   the other half takes what arrives during the burst); then a **burst** writes
///   everything the spool holds as fast as the drive takes it while the source goes on
///   filling it. When the spool is empty the rate of the whole cycle decides again.
#[derive(Debug, Clone)]
pub struct Pacer {
    speeds: Option<DriveSpeeds>,
    /// Without speeds: bursts from this many bytes (tests).
    fixed: u64,
    capacity: u64,
    mode: Mode,
    started: bool,
    window_start: f64,
    window_bytes: u64,
    /// When the window had half its bytes, and how many it had then.
    half: Option<(f64, u64)>,
    /// The same for the early end of a probe (half of the early sample).
    early_half: Option<(f64, u64)>,
    /// The source's rate, as last measured, bytes/s.
    rate: f64,
    /// Decisions taken, for tests and reports: (streams, accumulations, bursts).
    pub counts: (u32, u32, u32),
}

/// The writer's state, see [`Pacer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Probe,
    Stream,
    Accumulate,
    Burst,
}

impl Pacer {
    /// A pacer for a spool of `capacity` bytes feeding a drive of `speeds`.
    pub fn new(speeds: DriveSpeeds, capacity: u64) -> Pacer {
        Pacer {
            speeds: Some(speeds),
            fixed: 0,
            capacity,
            mode: Mode::Probe,
            started: false,
            window_start: 0.0,
            window_bytes: 0,
            half: None,
            early_half: None,
            rate: 0.0,
            counts: (0, 0, 0),
        }
    }

    /// A pacer that always accumulates and bursts from `burst_at` bytes (tests of the
    /// pipeline).
    pub fn fixed(burst_at: u64) -> Pacer {
        Pacer {
            speeds: None,
            fixed: burst_at,
            mode: Mode::Accumulate,
            ..Pacer::new(DriveSpeeds::LTO_DEFAULT, u64::MAX)
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The writer takes records as they come (no burst needed).
    pub fn streaming(&self) -> bool {
        self.mode == Mode::Stream
    }

    /// The source's rate as last measured (bytes/s; 0 before the first window).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Bytes of a measuring window.
    pub fn window(&self) -> u64 {
        match self.speeds {
            // At least 1 MiB, at most a quarter of the spool.
            Some(s) => ((s.min as f64 * WINDOW_S) as u64)
                .max(1 << 20)
                .min((self.capacity / 4).max(1)),
            None => u64::MAX,
        }
    }

    /// Bytes the spool holds before a burst starts, for the rate measured.
    pub fn burst_at(&self) -> u64 {
        match self.speeds {
            Some(s) => s
                .burst_start(self.rate, REPOSITION_SHARE)
                .min(self.capacity / 2)
                .max(1),
            None => self.fixed,
        }
    }

    fn restart_window(&mut self, now: f64) {
        self.window_start = now;
        self.window_bytes = 0;
        self.half = None;
        self.early_half = None;
    }

    /// Bytes of a probe's early sample: a [`PROBE_EARLY_SHARE`]th of the window, at
    /// least [`PROBE_EARLY_MIN`].
    fn early_sample(&self) -> u64 {
        (self.window() / PROBE_EARLY_SHARE).max(PROBE_EARLY_MIN)
    }

    /// During a probe: the rate of its early sample once it arrived (the lower of the
    /// whole sample's and its second half's, as for a window).
    fn early(&self, now: f64) -> Option<f64> {
        if self.mode != Mode::Probe || self.window_bytes < self.early_sample() {
            return None;
        }
        Some(self.rate_since(now, self.early_half))
    }

    /// The window's rate so far: the lower of the whole window's and that since `half`
    /// (when, and at how many bytes, its second half began).
    fn rate_since(&self, now: f64, half: Option<(f64, u64)>) -> f64 {
        let whole = self.window_bytes as f64 / (now - self.window_start).max(1e-6);
        match half {
            Some((t, b)) if self.window_bytes > b => {
                whole.min((self.window_bytes - b) as f64 / (now - t).max(1e-6))
            }
            _ => whole,
        }
    }

    /// The window's rate, once it has lasted long enough to say (its bytes, or the
    /// time the lowest speed takes for them): the lower of the whole window's and its
    /// second half's, so a source that starts with a burst (a read-ahead, a rate
    /// limiter's bucket) and then slows down is taken at its slower pace.
    fn measured(&self, now: f64) -> Option<f64> {
        let s = self.speeds?;
        let w = self.window();
        let el = now - self.window_start;
        if self.window_bytes >= w || el * s.min as f64 >= w as f64 {
            Some(self.rate_since(now, self.half))
        } else {
            None
        }
    }

    /// A record of `len` bytes entered the spool at `now`, which holds `held` bytes
    /// now. Returns whether a burst starts.
    pub fn arrived(&mut self, now: f64, len: u64, held: u64) -> bool {
        let Some(s) = self.speeds else {
            return held >= self.fixed;
        };
        if !self.started {
            // The clock starts at the first record (opening the source is not its rate).
            self.started = true;
            self.restart_window(now);
            return false;
        }
        self.window_bytes += len;
        if self.half.is_none() && self.window_bytes >= self.window() / 2 {
            self.half = Some((now, self.window_bytes));
        }
        if self.early_half.is_none() && self.window_bytes >= self.early_sample() / 2 {
            self.early_half = Some((now, self.window_bytes));
        }
        let min = s.min as f64;
        match self.mode {
            Mode::Probe | Mode::Stream => {
                let early = self.early(now).filter(|r| *r >= s.native as f64);
                let Some(rate) = self.measured(now).or(early) else {
                    return false;
                };
                // A drive that holds the writer back (repositioning, or simply slower
                // than the source) makes the arrivals slow too: the spool then
                // accumulates, finds the source fast through the file within a window,
                // and streams again.
                let fast = rate >= min;
                self.rate = rate;
                self.restart_window(now);
                if fast {
                    if self.mode != Mode::Stream {
                        self.counts.0 += 1;
                    }
                    self.mode = Mode::Stream;
                    false
                } else {
                    self.mode = Mode::Accumulate;
                    self.counts.1 += 1;
                    self.start_burst(held)
                }
            }
            Mode::Accumulate => {
                if let Some(rate) = self.measured(now) {
                    self.rate = rate;
                    if rate >= min && self.window_bytes >= self.window() {
                        // The source sped up: stream (after what the file holds).
                        self.mode = Mode::Stream;
                        self.counts.0 += 1;
                        self.restart_window(now);
                        return false;
                    }
                }
                self.start_burst(held)
            }
            Mode::Burst => false,
        }
    }

    fn start_burst(&mut self, held: u64) -> bool {
        if held >= self.burst_at() {
            self.mode = Mode::Burst;
            self.counts.2 += 1;
            true
        } else {
            false
        }
    }

    /// A burst ended at `now` with the spool empty (whatever started it: the pacer, no
    /// room, the end of the input). The whole cycle's rate decides what comes next.
    pub fn burst_done(&mut self, now: f64) {
        let Some(s) = self.speeds else {
            return;
        };
        if self.mode == Mode::Stream {
            return;
        }
        if let Some(rate) = self.measured(now) {
            self.rate = rate;
        }
        if self.mode == Mode::Probe {
            return;
        }
        if self.rate >= s.min as f64 {
            self.mode = Mode::Stream;
            self.counts.0 += 1;
        } else {
            self.mode = Mode::Accumulate;
        }
        self.restart_window(now);
    }
}

/// How the operator sized the spool (`--spool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// Sized from the spool directory's free space.
    Auto,
    /// This many bytes (0: no spool).
    Size(u64),
}

impl std::str::FromStr for Setting {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Setting, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Setting::Auto);
        }
        crate::copy::parse_size(s)
            .map(Setting::Size)
            .map_err(|e| format!("--spool {s}: {e}; or auto (sized from the spool directory's free space), or 0 (no spool)"))
    }
}

/// The spool a backup uses, decided at the start of the session.
#[derive(Default)]
pub enum Spool {
    /// Records go to the drive as they come.
    #[default]
    Off,
    /// Up to this many bytes of records in memory (a small spool, or the fallback when
    /// the spool directory has no room).
    Memory(u64),
    /// A spool file.
    File(SpoolFile),
}

impl Spool {
    /// Decide the spool for `setting` in directory `dir` (`default_dir`: the home's
    /// default, created if missing). Returns the spool and, when the setting could not
    /// be met as asked (auto without room), the warning to give the operator.
    pub fn open(
        setting: Setting,
        dir: &Path,
        default_dir: bool,
    ) -> Result<(Spool, Option<String>), SpoolError> {
        let size = match setting {
            Setting::Size(0) => return Ok((Spool::Off, None)),
            Setting::Size(n) if n < MIN_FILE => return Ok((Spool::Memory(n), None)),
            Setting::Size(n) => Some(n),
            Setting::Auto => None,
        };
        if default_dir {
            std::fs::create_dir_all(dir).map_err(|e| SpoolError {
                what: format!("creating the spool directory {}: {e}", dir.display()),
            })?;
        }
        let free = free_space(dir)?;
        let bytes = match size {
            Some(n) if n > free => {
                return Err(SpoolError {
                    what: format!(
                        "--spool {} is more than the {} free in the spool directory {}: give a smaller --spool, --spool auto (sized from the free space), another --spool-dir, or --spool 0",
                        human(n),
                        human(free),
                        dir.display()
                    ),
                })
            }
            Some(n) => n,
            None => {
                let n = auto_size(free);
                if n < MIN_FILE {
                    return Ok((
                        Spool::Memory(MEMORY_FALLBACK),
                        Some(format!(
                            "the spool directory {} has only {} free: the backup spools {} in memory instead, and a source slower than the drive will stop the tape more often (give --spool-dir DIR on a file system with a few GiB free)",
                            dir.display(),
                            human(free),
                            human(MEMORY_FALLBACK)
                        )),
                    ));
                }
                n
            }
        };
        match SpoolFile::create(dir, bytes) {
            Ok(f) => Ok((Spool::File(f), None)),
            // Auto: no spool file where one was not asked for explicitly is a warning.
            Err(e) if size.is_none() => Ok((
                Spool::Memory(MEMORY_FALLBACK),
                Some(format!(
                    "{e}: the backup spools {} in memory instead",
                    human(MEMORY_FALLBACK)
                )),
            )),
            Err(e) => Err(e),
        }
    }

    /// Bytes the spool holds at most (0: none).
    pub fn capacity(&self) -> u64 {
        match self {
            Spool::Off => 0,
            Spool::Memory(n) => *n,
            Spool::File(f) => f.capacity(),
        }
    }
}

/// The automatic spool size for `free` bytes free in the spool directory: a quarter of
/// it, at most [`AUTO_MAX`], in whole MiB.
pub fn auto_size(free: u64) -> u64 {
    ((free / AUTO_SHARE).min(AUTO_MAX) >> 20) << 20
}

/// Bytes an unprivileged process may still write in the file system of `dir`.
pub fn free_space(dir: &Path) -> Result<u64, SpoolError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| SpoolError {
        what: format!(
            "the spool directory {}: {e} (give --spool-dir DIR, an existing directory, or --spool 0)",
            dir.display()
        ),
    })?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// A size for people: whole GiB or MiB when exact, else MiB with one decimal.
pub fn human(n: u64) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else if n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    }
}

/// A failure of the spool (its directory, or its file's reads and writes), with the way
/// out in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolError {
    pub what: String,
}

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for SpoolError {}

impl From<SpoolError> for String {
    fn from(e: SpoolError) -> String {
        e.what
    }
}

/// A ring of `capacity` bytes in an unnamed file. Positions are logical (they only
/// grow); the byte at position `p` is at offset `p % capacity` of the file.
pub struct SpoolFile {
    file: std::fs::File,
    capacity: u64,
    dir: PathBuf,
    /// The drive's speeds as configured (the pool's `drive_speeds`, else the default);
    /// a virtual drive's model overrides them when the image is written.
    pub speeds: DriveSpeeds,
    /// Tests: writes from this logical position on fail, as on a full file system.
    #[cfg(test)]
    pub(crate) fail_from: Option<u64>,
}

impl SpoolFile {
    /// An empty spool file of up to `capacity` bytes in `dir`.
    pub fn create(dir: &Path, capacity: u64) -> Result<SpoolFile, SpoolError> {
        let file = tempfile::tempfile_in(dir).map_err(|e| SpoolError {
            what: format!(
                "creating the backup spool file in {}: {e} (give --spool-dir DIR, a writable directory, or --spool 0)",
                dir.display()
            ),
        })?;
        Ok(SpoolFile {
            file,
            capacity: capacity.max(1),
            dir: dir.to_path_buf(),
            speeds: DriveSpeeds::LTO_DEFAULT,
            #[cfg(test)]
            fail_from: None,
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io_err(&self, doing: &str, e: std::io::Error) -> SpoolError {
        SpoolError {
            what: format!(
                "{doing} the backup spool file in {}: {e} (give --spool-dir DIR on a file system with room, a smaller --spool, or --spool 0)",
                self.dir.display()
            ),
        }
    }

    /// Write `data` at logical position `pos` (wrapping at the capacity).
    pub fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), SpoolError> {
        #[cfg(test)]
        if self.fail_from.is_some_and(|f| pos + data.len() as u64 > f) {
            return Err(self.io_err("writing", std::io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        let mut done = 0usize;
        while done < data.len() {
            let p = (pos + done as u64) % self.capacity;
            let n = ((self.capacity - p) as usize).min(data.len() - done);
            self.file
                .write_all_at(&data[done..done + n], p)
                .map_err(|e| self.io_err("writing", e))?;
            done += n;
        }
        Ok(())
    }

    /// Read `buf.len()` bytes from logical position `pos` (wrapping at the capacity).
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), SpoolError> {
        let mut done = 0usize;
        while done < buf.len() {
            let p = (pos + done as u64) % self.capacity;
            let n = ((self.capacity - p) as usize).min(buf.len() - done);
            self.file
                .read_exact_at(&mut buf[done..done + n], p)
                .map_err(|e| self.io_err("reading", e))?;
            done += n;
        }
        Ok(())
    }

    /// Ask the kernel to read `len` bytes from logical position `pos` on into the page
    /// cache ahead of [`Self::read_at`] (a burst reads much faster than the
    /// kernel's own read-ahead of a few hundred KiB keeps up with on a busy disk). A
    /// hint: its failure changes nothing.
    pub fn prefetch(&self, pos: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let len = len.min(self.capacity);
        let p = pos % self.capacity;
        let first = len.min(self.capacity - p);
        for (off, n) in [(p, first), (0, len - first)] {
            if n > 0 {
                let _ = nix::fcntl::posix_fadvise(
                    self.file.as_raw_fd(),
                    off as i64,
                    n as i64,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
                );
            }
        }
    }

    /// Give the space back (after an image: the ring starts again at position 0).
    pub fn clear(&self) -> Result<(), SpoolError> {
        self.file.set_len(0).map_err(|e| self.io_err("emptying", e))
    }

    /// Bytes the file takes on its file system now.
    pub fn allocated(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_wraps_around_and_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let f = SpoolFile::create(dir.path(), 1000).unwrap();
        let mut pos = 0u64;
        for i in 0..50u32 {
            let data: Vec<u8> = (0..(137 + i * 7)).map(|k| (k + i) as u8).collect();
            f.write_at(pos, &data).unwrap();
            let mut back = vec![0u8; data.len()];
            f.read_at(pos, &mut back).unwrap();
            assert_eq!(back, data, "record {i} at {pos}");
            pos += data.len() as u64;
        }
        assert!(pos > 3000, "wrapped several times");
        assert!(std::fs::metadata(dir.path()).is_ok());
        // Unnamed: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        f.clear().unwrap();
        assert_eq!(f.allocated(), 0);
    }

    #[test]
    fn settings_parse_and_open_as_documented() {
        assert_eq!("auto".parse::<Setting>(), Ok(Setting::Auto));
        assert_eq!("0".parse::<Setting>(), Ok(Setting::Size(0)));
        assert_eq!("2G".parse::<Setting>(), Ok(Setting::Size(2 << 30)));
        let e = "lots".parse::<Setting>().unwrap_err();
        assert!(e.contains("lots") && e.contains("auto"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let (s, w) = Spool::open(Setting::Size(0), dir.path(), false).unwrap();
        assert!(matches!(s, Spool::Off) && w.is_none());
        let (s, w) = Spool::open(Setting::Size(64 << 20), dir.path(), false).unwrap();
        assert!(matches!(s, Spool::Memory(n) if n == 64 << 20) && w.is_none());
        let (s, _) = Spool::open(Setting::Size(MIN_FILE), dir.path(), false).unwrap();
        assert!(matches!(s, Spool::File(ref f) if f.capacity() == MIN_FILE));
        // More than the file system has: refused, naming both and the ways out.
        let e = Spool::open(Setting::Size(1 << 60), dir.path(), false)
            .err()
            .unwrap();
        assert!(
            e.what.contains("--spool-dir") && e.what.contains("free"),
            "{e}"
        );
        // A directory that does not exist: refused (only the default one is created).
        let missing = dir.path().join("no/such");
        let e = Spool::open(Setting::Auto, &missing, false).err().unwrap();
        assert!(e.what.contains("no/such"), "{e}");
        let (s, _) = Spool::open(Setting::Auto, &missing, true).unwrap();
        assert!(missing.is_dir());
        let free = free_space(&missing).unwrap();
        match s {
            Spool::File(f) => assert_eq!(f.capacity(), auto_size(free)),
            Spool::Memory(n) => assert!(auto_size(free) < MIN_FILE && n == MEMORY_FALLBACK),
            Spool::Off => panic!("auto is never off"),
        }
    }

    /// The benchmark's modelled drive: 200 MB/s, matching down to 70 MB/s, 2.5 s stops.
    const MODEL: DriveSpeeds = DriveSpeeds {
        native: 200_000_000,
        min: 70_000_000,
        reposition_s: 2.5,
    };

    /// Feed `pacer` records of `rec` bytes at `rate` bytes/s for `secs` seconds, a
    /// drive of `MODEL` draining bursts at its native speed (repositioning first) and
    /// streams as they come. Returns (bursts, seconds the drive repositioned, seconds
    /// of the run, the most the spool held).
    fn simulate(pacer: &mut Pacer, rate: f64, secs: f64, rec: u64) -> (u32, f64, f64, u64) {
        let mut t = 0.0;
        let mut held = 0u64;
        let mut most = 0u64;
        let (mut bursts, mut repo) = (0u32, 0.0);
        let dt = rec as f64 / rate;
        while t < secs {
            t += dt;
            if pacer.streaming() {
                pacer.arrived(t, rec, 0);
                continue;
            }
            held += rec;
            most = most.max(held);
            if pacer.arrived(t, rec, held) {
                // The burst: a reposition, then the drive takes the spool at its speed
                // while the source goes on.
                bursts += 1;
                repo += MODEL.reposition_s;
                let mut left = held as f64 + rate * MODEL.reposition_s;
                let mut bt = t + MODEL.reposition_s;
                while left > 0.0 {
                    let step = left / (MODEL.native as f64 - rate).max(1.0);
                    bt += step;
                    left = (left - MODEL.native as f64 * step + rate * step).max(0.0);
                }
                // What arrived during the burst went through the spool too.
                while t + dt < bt {
                    t += dt;
                    pacer.arrived(t, rec, rec);
                }
                held = 0;
                pacer.burst_done(t);
            }
        }
        (bursts, repo, t, most)
    }

    #[test]
    fn a_slow_source_is_written_in_bursts_that_keep_repositioning_under_the_share() {
        for rate in [5e6, 20e6, 60e6, 69e6] {
            let mut p = Pacer::new(MODEL, 8 << 30);
            let (bursts, repo, secs, most) = simulate(&mut p, rate, 600.0, 1 << 20);
            assert!(!p.streaming(), "{rate}: {p:?}");
            assert!(bursts >= 2, "{rate}: {bursts} bursts in 600 s");
            let share = repo / secs;
            assert!(
                (REPOSITION_SHARE * 0.5..=0.1).contains(&share),
                "{rate}: {share} of the time repositioning ({bursts} bursts, at most {most} held)"
            );
            assert!(most <= 4 << 30, "{rate}: held {most}");
        }
        // The formula: at the lowest speed (70 MB/s on 200 MB/s, 2.5 s) a burst starts
        // at 175 MB x (0.65 / 0.05 - 1) = 2.1 GB; at 20 MB/s at 50 MB x 17 = 850 MB.
        assert_eq!(MODEL.burst_start(70e6, 0.05) / 1_000_000, 2100);
        assert_eq!(MODEL.burst_start(20e6, 0.05) / 1_000_000, 850);
        assert_eq!(MODEL.burst_start(0.0, 0.05), 0);
        // A smaller spool bounds the burst at half of it.
        let mut p = Pacer::new(MODEL, 1 << 30);
        let (_, _, _, most) = simulate(&mut p, 60e6, 120.0, 1 << 20);
        assert!(most <= (512 << 20) + (1 << 20), "{most}");
    }

    #[test]
    fn a_source_at_least_as_fast_as_the_lowest_speed_streams_after_one_window() {
        for rate in [70e6, 150e6, 2e9] {
            let mut p = Pacer::new(MODEL, 8 << 30);
            let w = p.window();
            assert_eq!(w, 70_000_000);
            let mut t = 0.0;
            let mut fed = 0u64;
            while !p.streaming() {
                t += (1 << 20) as f64 / rate;
                fed += 1 << 20;
                assert!(!p.arrived(t, 1 << 20, fed), "{rate}: no burst");
                assert!(fed <= w + (2 << 20), "{rate}: still probing after {fed}");
            }
            assert_eq!(p.counts, (1, 0, 0));
            // At the drive's native speed or faster, an eighth of the window (at least
            // 16 MiB) says so; slower, the whole window is needed.
            let sample = (w / PROBE_EARLY_SHARE).max(PROBE_EARLY_MIN);
            if rate >= MODEL.native as f64 {
                assert!(fed <= sample + (2 << 20), "{rate}: streams after {fed}");
            } else {
                assert!(fed + (2 << 20) >= w, "{rate}: streams after {fed}");
            }
        }
        // A source that starts with a burst of `mib` MiB at once, then runs at 60 MB/s.
        let burst_then_slow = |mib: u64| {
            let mut p = Pacer::new(MODEL, 8 << 30);
            let mut t = 0.0;
            let mut held = 0;
            for k in 0..200u64 {
                if k > mib {
                    t += (1 << 20) as f64 / 60e6;
                }
                held += 1 << 20;
                p.arrived(t, 1 << 20, held);
            }
            p
        };
        // A burst of 30 MB (a rate limiter's bucket) is slow: the window's second half
        // says so. (The burst is longer than a probe's early sample, so the probe
        // streams at first; the first window streamed finds the source slow.)
        let p = burst_then_slow(30);
        assert_eq!(p.mode(), Mode::Accumulate, "{p:?}");
        assert!(p.rate() < 61e6, "{p:?}");
        // A burst shorter than the early sample (10 MiB: a read-ahead) does not end the
        // probe: the source is found slow without streaming at all.
        let p = burst_then_slow(10);
        assert_eq!(p.mode(), Mode::Accumulate, "{p:?}");
        assert_eq!(p.counts.0, 0, "never streamed: {p:?}");
    }

    #[test]
    fn a_source_that_slows_down_is_accumulated_and_one_that_speeds_up_streams_again() {
        let mut p = Pacer::new(MODEL, 8 << 30);
        let mut t = 0.0;
        let feed = |p: &mut Pacer, rate: f64, secs: f64, t: &mut f64| {
            let end = *t + secs;
            while *t < end {
                *t += (1 << 20) as f64 / rate;
                p.arrived(*t, 1 << 20, if p.streaming() { 0 } else { 1 << 20 });
            }
        };
        feed(&mut p, 150e6, 3.0, &mut t);
        assert!(p.streaming());
        feed(&mut p, 30e6, 5.0, &mut t);
        assert_eq!(p.mode(), Mode::Accumulate, "{p:?}");
        assert!(p.rate() < 70e6 && p.rate() > 20e6, "{p:?}");
        feed(&mut p, 300e6, 2.0, &mut t);
        assert!(p.streaming(), "{p:?}");
        // A burst that ends after a cycle at a fast rate streams too.
        let mut p = Pacer::new(MODEL, 8 << 30);
        feed(&mut p, 10e6, 10.0, &mut t);
        assert_eq!(p.mode(), Mode::Accumulate);
        let t0 = t;
        p.arrived(t0 + 0.1, 900_000_000, 900_000_000);
        p.burst_done(t0 + 0.2);
        assert!(p.streaming(), "{p:?}");
    }

    #[test]
    fn drive_speeds_parse_with_the_drive_models_grammar_and_name_the_bad_value() {
        assert_eq!(
            DriveSpeeds::parse("speed=200M,min=70M,reposition=2.5s"),
            Ok(MODEL)
        );
        let d = DriveSpeeds::parse("speed=300M").unwrap();
        assert_eq!(
            (d.native, d.min, d.reposition_s),
            (300_000_000, 100_000_000, 2.5)
        );
        let e = DriveSpeeds::parse("speed=fast").unwrap_err();
        assert!(e.contains("fast") && e.contains("drive_speeds"), "{e}");
        let e = DriveSpeeds::parse("speed=100M,min=200M").unwrap_err();
        assert!(e.contains("min"), "{e}");
    }

    #[test]
    fn the_automatic_size_is_a_quarter_of_the_free_space_up_to_8_gib() {
        assert_eq!(auto_size(0), 0);
        assert_eq!(auto_size(1 << 30), 256 << 20);
        assert_eq!(auto_size(10 << 30), (10 << 30) / 4);
        assert_eq!(auto_size(100 << 30), AUTO_MAX);
        assert_eq!(auto_size((1 << 30) + 12345) % (1 << 20), 0);
    }
}
