//! Per-cartridge metadata (MAM-like statistics and flags), fault-injection settings, and
//! the small file helpers they share (atomic JSON writes, flock).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{io_err, VtlError, VtlResult};

pub(crate) const META_FILE: &str = "cartridge.json";
pub(crate) const FAULTS_FILE: &str = "faults.json";
pub(crate) const META_LOCK: &str = "meta.lock";

/// Version of the cartridge directory layout (data, index, filemarks, cartridge.json).
pub const CARTRIDGE_FORMAT_VERSION: u32 = 1;

/// What a cartridge remembers about itself, like the Medium Auxiliary Memory of an LTO
/// cartridge, plus its physical properties.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CartridgeMeta {
    pub format_version: u32,
    pub barcode: String,
    /// Usable bytes of block data.
    pub capacity: u64,
    /// Size of the early-warning zone before the end of the medium.
    pub early_warning: u64,
    pub worm: bool,
    pub write_protected: bool,
    pub cleaning: bool,
    pub load_count: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Seconds since the Unix epoch of the last write.
    pub last_written: Option<u64>,
    /// Free text software may set (tapevault stores the pool name).
    pub application_label: Option<String>,
}

impl CartridgeMeta {
    pub fn new(barcode: &str, capacity: u64, early_warning: u64) -> Self {
        CartridgeMeta {
            format_version: CARTRIDGE_FORMAT_VERSION,
            barcode: barcode.to_string(),
            capacity,
            early_warning: early_warning.min(capacity),
            worm: false,
            write_protected: false,
            cleaning: false,
            load_count: 0,
            bytes_written: 0,
            bytes_read: 0,
            last_written: None,
            application_label: None,
        }
    }
}

/// Operations a hang fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultOp {
    Any,
    Read,
    Write,
    WriteFilemarks,
    Space,
    Locate,
    Rewind,
}

/// An operation that hangs for `millis` milliseconds, `times` times.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hang {
    pub op: FaultOp,
    pub millis: u64,
    pub times: u32,
}

/// Fault injection for tests. Stored as `faults.json` in the cartridge directory, so
/// another process can set it; it is read when the cartridge is loaded (and when the
/// library signals a control change to a drive holding it, see
/// [`crate::Library::set_faults`]). One-shot faults are removed from the file once they
/// fire. Example:
///
/// ```json
/// { "media_error_blocks": [17],
///   "power_cut_after_bytes": 1048576,
///   "hang": { "op": "read", "millis": 120000, "times": 1 } }
/// ```
///
/// A hang longer than the drive's operation timeout makes the operation fail with
/// [`crate::VtlError::Timeout`] after the timeout, without doing anything; a shorter one
/// delays the operation. `op` is one of `any`, `read`, `write`, `write_filemarks`,
/// `space`, `locate`, `rewind`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Faults {
    /// Reading any of these logical objects fails with a media error.
    #[serde(default)]
    pub media_error_blocks: Vec<u64>,
    /// After this many more bytes of block data, the drive loses power in the middle
    /// of a write: the bytes up to that point reach the data file, nothing else.
    #[serde(default)]
    pub power_cut_after_bytes: Option<u64>,
    /// An operation that hangs.
    #[serde(default)]
    pub hang: Option<Hang>,
}

impl Faults {
    pub fn is_empty(&self) -> bool {
        self.media_error_blocks.is_empty()
            && self.power_cut_after_bytes.is_none()
            && self.hang.is_none()
    }
}

/// Write `value` as JSON to `path` atomically: temp file, fsync, rename, fsync dir.
pub(crate) fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> VtlResult<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| VtlError::Io {
        op: "encode",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(&bytes).map_err(io_err("write", &tmp))?;
        f.sync_data().map_err(io_err("fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> VtlResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> VtlResult<T> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| VtlError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("cannot parse: {e}"),
    })
}

/// Take an exclusive flock on `path` (created if missing), blocking.
pub(crate) fn lock_file(path: &Path) -> VtlResult<Flock<File>> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open lock", path))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| VtlError::Io {
        op: "lock",
        path: path.to_path_buf(),
        source: std::io::Error::from(e),
    })
}

/// Try an exclusive flock on `path` without blocking; Ok(None) if someone holds it.
pub(crate) fn try_lock_file(path: &Path) -> VtlResult<Option<Flock<File>>> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open lock", path))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(VtlError::Io {
            op: "lock",
            path: path.to_path_buf(),
            source: std::io::Error::from(e),
        }),
    }
}

/// Read-modify-write the metadata of the cartridge in `dir` under its meta lock.
pub(crate) fn update_meta<R>(
    dir: &Path,
    f: impl FnOnce(&mut CartridgeMeta) -> VtlResult<R>,
) -> VtlResult<R> {
    let _l = lock_file(&dir.join(META_LOCK))?;
    let path = dir.join(META_FILE);
    let mut m: CartridgeMeta = read_json(&path)?;
    let r = f(&mut m)?;
    write_json_atomic(&path, &m)?;
    Ok(r)
}

pub(crate) fn read_meta(dir: &Path) -> VtlResult<CartridgeMeta> {
    read_json(&dir.join(META_FILE))
}

pub(crate) fn read_faults(dir: &Path) -> VtlResult<Faults> {
    let p = dir.join(FAULTS_FILE);
    if !p.exists() {
        return Ok(Faults::default());
    }
    read_json(&p)
}

pub(crate) fn write_faults(dir: &Path, faults: &Faults) -> VtlResult<()> {
    let p = dir.join(FAULTS_FILE);
    if faults.is_empty() {
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &p)(e)),
        }
    } else {
        write_json_atomic(&p, faults)
    }
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
