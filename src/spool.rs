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

    #[test]
    fn the_automatic_size_is_a_quarter_of_the_free_space_up_to_8_gib() {
        assert_eq!(auto_size(0), 0);
        assert_eq!(auto_size(1 << 30), 256 << 20);
        assert_eq!(auto_size(10 << 30), (10 << 30) / 4);
        assert_eq!(auto_size(100 << 30), AUTO_MAX);
        assert_eq!(auto_size((1 << 30) + 12345) % (1 << 20), 0);
    }
}
