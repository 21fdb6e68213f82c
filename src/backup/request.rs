//! What a backup is asked to do (disks by UUID, the kind of image, the pool) and the
//! check of every input before anything is locked or written.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::crypto::RecordKey;
use crate::error::{Error, Result};
use crate::source::changed::ChangedExtents;
use crate::source::disk::Disk;
use crate::source::export::DriverHandle;

/// One disk to back up, identified by its hypervisor UUID.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub id: Uuid,
    /// The disk's label within its VM (`root`), kept with each image.
    pub label: Option<String>,
    /// A raw image file or block device; with a `driver`, only what reports show.
    pub path: PathBuf,
    pub changed_extents: Option<PathBuf>,
    /// The disk comes from an NBD export made by this driver (an image served by
    /// qemu-nbd, a running VM, a plain export); see [`crate::source::export`].
    pub driver: Option<DriverHandle>,
}

/// How a checked disk is read.
pub(super) enum Source {
    /// Opened already (a raw file or block device).
    Local(Disk),
    /// Opened by the driver when its turn comes.
    Driver(DriverHandle),
}

/// What kind of image the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Incremental when a good base exists (changed-extents file, else hash scan), else full.
    Auto,
    /// Always a full (it becomes the new base).
    Full,
    /// A one-off full that never becomes the base of anything.
    Copy,
}

#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub vm_name: Option<String>,
    pub disks: Vec<DiskSpec>,
    pub pool: String,
    pub mode: Mode,
    /// The spool between the transform stage and the drive: a source at least as fast as
    /// the drive's lowest speed streams through it, a slower one is accumulated and
    /// written in bursts long enough to keep the drive's repositioning under 10 % of
    /// the time. See [`crate::spool`] and [`DEFAULT_SPOOL`].
    pub spool: crate::spool::Setting,
    /// The directory of the spool file (`--spool-dir`); else the home's `spool_dir`,
    /// else `spool/` in the home.
    pub spool_dir: Option<PathBuf>,
    /// Drives the session may write at once (at least 1): with several disks, each
    /// free drive takes the next disk, largest first, onto a cartridge of its own of
    /// the session's media set. 1 writes the disks one after the other on one drive.
    pub drives: usize,
}

/// The default spool of a backup: `auto`, an unnamed file of a quarter of the spool
/// directory's free space (at most 8 GiB; 128 MiB of memory when there is no room),
/// paced by [`crate::spool::Pacer`]: a fast source streams through memory as without
/// a spool, a slow one is written in bursts.
pub const DEFAULT_SPOOL: crate::spool::Setting = crate::spool::Setting::Auto;

/// The pool's key, unlocked; the passphrase is kept only to write key escrow into labels.
pub struct KeyMaterial {
    pub key: RecordKey,
    pub passphrase: Option<String>,
}

/// One disk of a request, checked and opened before anything is locked or written.
pub struct CheckedDisk {
    pub spec: DiskSpec,
    pub(super) source: Source,
    pub(super) changed: Option<ChangedExtents>,
    /// A synthetic full: the disk is the restored point, not the VM's disk.
    pub(super) synthetic: Option<SyntheticSource>,
}

/// What a synthetic full is built from: the restore point it reproduces (already
/// restored, every record checked, into the scratch file the [`CheckedDisk`] reads)
/// and that point's block digest list, which the new image's list must equal before
/// the catalog may call it complete.
pub struct SyntheticSource {
    pub point: crate::catalog::ImageRow,
    pub point_list: PathBuf,
}

/// A request with every input checked: what [`run`] backs up.
pub struct Inputs {
    pub(super) req: BackupRequest,
    pub(super) disks: Vec<CheckedDisk>,
}

impl Inputs {
    /// The same inputs, written on up to `drives` drives at once (see
    /// [`BackupRequest::drives`]).
    pub fn with_drives(mut self, drives: usize) -> Inputs {
        self.req.drives = drives.max(1);
        self
    }

    pub fn disks(&self) -> impl Iterator<Item = &CheckedDisk> {
        self.disks.iter()
    }

    /// A synthetic full of one disk into `pool`: `restored` holds the point
    /// `source.point` (restored from its chain on tape), which is written as a full
    /// image of the disk under the pool's policy. The VM's disk is never opened.
    pub fn synthetic(pool: String, restored: Disk, source: SyntheticSource) -> Inputs {
        let spec = DiskSpec {
            id: source.point.disk_uuid,
            label: source.point.disk_label.clone(),
            path: restored.path().to_path_buf(),
            changed_extents: None,
            driver: None,
        };
        let req = BackupRequest {
            vm_name: source.point.vm_name.clone(),
            disks: vec![spec.clone()],
            pool,
            mode: Mode::Full,
            drives: 1,
            spool: DEFAULT_SPOOL,
            spool_dir: None,
        };
        Inputs {
            req,
            disks: vec![CheckedDisk {
                spec,
                source: Source::Local(restored),
                changed: None,
                synthetic: Some(source),
            }],
        }
    }
}

impl CheckedDisk {
    /// The disk's size in bytes, as opened; `None` for a disk its driver opens only
    /// when its turn comes (an NBD export, a running VM).
    pub fn size(&self) -> Option<u64> {
        match &self.source {
            Source::Local(d) => Some(d.size()),
            Source::Driver(_) => None,
        }
    }

    /// The changed-extents file's change ids and the bytes its areas cover, when one
    /// was given: (from_change_id, change_id, bytes).
    pub fn changed_extents(&self) -> Option<(&str, &str, u64)> {
        self.changed.as_ref().map(|c| {
            (
                c.from_change_id.as_str(),
                c.change_id.as_str(),
                c.extents.total_bytes(),
            )
        })
    }
}

/// Check every input of `req` before a lock is taken or a session starts, so that bad
/// input is a usage error (exit 2) that leaves nothing in the catalog: each disk is
/// opened without blocking and must be a regular file or a block device; no two disks
/// may share a UUID or be the same file (whatever paths name it: `./d.img` and `d.img`,
/// a symlink, a hard link); each changed-extents file must be a regular file that
/// parses, lies within its disk, and names this disk if it names one (`disk_id`).
pub fn check_inputs(req: BackupRequest) -> Result<Inputs> {
    use std::collections::HashMap;
    if req.disks.is_empty() {
        return Err(Error::Usage("no disk to back up".into()));
    }
    let mut ids: HashMap<Uuid, &Path> = HashMap::new();
    for d in &req.disks {
        if let Some(first) = ids.insert(d.id, &d.path) {
            return Err(Error::Usage(format!(
                "disk {} is listed twice ({} and {}); each disk must be listed once, with its own UUID",
                d.id,
                first.display(),
                d.path.display()
            )));
        }
    }
    let mut seen: HashMap<crate::source::input::Identity, (Uuid, PathBuf)> = HashMap::new();
    let mut disks = Vec::with_capacity(req.disks.len());
    for d in &req.disks {
        if let Some(driver) = &d.driver {
            if d.changed_extents.is_some() {
                return Err(Error::Usage(format!(
                    "disk {}: a changed-extents file cannot be combined with {}; its driver tracks changes itself",
                    d.id,
                    driver.lock().describe()
                )));
            }
            let identity = driver.lock().identity();
            if let Some((first_id, first_path)) = seen.get(&identity) {
                return Err(Error::Usage(format!(
                    "disks {first_id} ({}) and {} ({}) are the same image; each disk needs its own image or export",
                    first_path.display(),
                    d.id,
                    d.path.display()
                )));
            }
            seen.insert(identity, (d.id, d.path.clone()));
            disks.push(CheckedDisk {
                spec: d.clone(),
                source: Source::Driver(driver.clone()),
                changed: None,
                synthetic: None,
            });
            continue;
        }
        let disk = Disk::open(&d.path).map_err(|e| match e {
            crate::source::disk::DiskError::Input(i) => Error::Usage(format!("disk {}: {i}", d.id)),
            other => Error::Failed(format!("disk {} ({}): {other}", d.id, d.path.display())),
        })?;
        if let Some((first_id, first_path)) = seen.get(&disk.identity()) {
            return Err(Error::Usage(format!(
                "disks {first_id} ({}) and {} ({}) are the same file; each disk needs its own image file or device",
                first_path.display(),
                d.id,
                d.path.display()
            )));
        }
        seen.insert(disk.identity(), (d.id, d.path.clone()));
        let changed = match &d.changed_extents {
            Some(p) => {
                let ce = ChangedExtents::load(p, disk.size())
                    .map_err(|e| Error::Usage(format!("disk {}: {e}", d.id)))?;
                if let Some(named) = ce.disk_id {
                    if named != d.id {
                        return Err(Error::Usage(format!(
                            "changed-extents file {} describes disk {named}, not disk {} ({}); give this disk's own changed-extents file",
                            p.display(),
                            d.id,
                            d.path.display()
                        )));
                    }
                }
                Some(ce)
            }
            None => None,
        };
        disks.push(CheckedDisk {
            spec: d.clone(),
            source: Source::Local(disk),
            changed,
            synthetic: None,
        });
    }
    Ok(Inputs { req, disks })
}
