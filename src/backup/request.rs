//! What a backup is asked to do (disks by UUID, the kind of image, the pool) and the
//! check of every input before anything is locked or written.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::crypto::RecordKey;
use crate::error::{Error, Result};
use crate::source::changed::ChangedExtents;
use crate::source::disk::Disk;

/// One disk to back up, identified by its hypervisor UUID.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub id: Uuid,
    pub path: PathBuf,
    pub changed_extents: Option<PathBuf>,
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
}

/// The pool's key, unlocked; the passphrase is kept only to write key escrow into labels.
pub struct KeyMaterial {
    pub key: RecordKey,
    pub passphrase: Option<String>,
}

/// One disk of a request, checked and opened before anything is locked or written.
pub struct CheckedDisk {
    pub spec: DiskSpec,
    pub(super) disk: Disk,
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
    pub fn disks(&self) -> impl Iterator<Item = &CheckedDisk> {
        self.disks.iter()
    }

    /// A synthetic full of one disk into `pool`: `restored` holds the point
    /// `source.point` (restored from its chain on tape), which is written as a full
    /// image of the disk under the pool's policy. The VM's disk is never opened.
    pub fn synthetic(pool: String, restored: Disk, source: SyntheticSource) -> Inputs {
        let spec = DiskSpec {
            id: source.point.disk_uuid,
            path: restored.path().to_path_buf(),
            changed_extents: None,
        };
        let req = BackupRequest {
            vm_name: source.point.vm_name.clone(),
            disks: vec![spec.clone()],
            pool,
            mode: Mode::Full,
        };
        Inputs {
            req,
            disks: vec![CheckedDisk {
                spec,
                disk: restored,
                changed: None,
                synthetic: Some(source),
            }],
        }
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
            disk,
            changed,
            synthetic: None,
        });
    }
    Ok(Inputs { req, disks })
}
