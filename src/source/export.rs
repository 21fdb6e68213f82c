//! Disks that come from an NBD export made for the backup, with or without change
//! tracking: the contract between the backup and a driver (the offline image driver
//! [`super::qemu_image`], a live QEMU or libvirt driver).
//!
//! A backup calls a driver in two phases:
//!
//! 1. [`ExportDriver::prepare`], for every disk of the request before the first is
//!    opened, after the pool lock is taken: what the catalog's base image of this disk
//!    recorded (its change id), and whether this backup starts a new epoch (not for a
//!    `--copy`). A driver of several disks (one QMP transaction for the whole VM) learns
//!    every disk's base this way before it has to open any.
//! 2. [`ExportDriver::open`], per disk, in order: the driver makes the export available
//!    and says what it offers ([`OpenedExport`]): the export, the dirty-bitmap context
//!    covering every change since the base's epoch (or why there is none), the change id
//!    of the epoch that starts at this backup's point in time, and a guard.
//!
//! The backup then checks the offered change id against the base's exactly
//! (`backup/plan.rs`): equal, with the same disk size, gives an incremental that reads
//! only the dirty extents; anything else is a full, said out loud with the reason.
//! Once the image is read whole it calls [`EpochGuard::read_done`] (a driver may stop
//! serving the export: the offline image driver tells its qemu-nbd to exit), and after
//! the image's tape flush and catalog commit [`EpochGuard::committed`] (the driver may
//! now drop the old epoch); the guard is dropped at the end either way, and dropping it
//! tears the export down. A crash at any point leaves the old epoch in place, so no
//! change is lost; the next run's `prepare` removes what the crash left behind.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::input::Identity;
use super::nbd::NbdExport;

/// What the catalog knows of a disk, for [`ExportDriver::prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRequest {
    /// The change id recorded by the image an incremental would build on; `None`: no
    /// usable base (first backup, `--full`, `--copy`, or a base without one), so the
    /// backup will be a full.
    pub base_change_id: Option<String>,
    /// The disk size that base image recorded.
    pub base_disk_size: Option<u64>,
    /// The change id the disk's newest good image recorded, whether or not this backup
    /// builds on it (a `--full` does not). Its epoch still records every write since
    /// that image, so a driver keeps it until this backup's image is committed: a
    /// failed or killed full leaves the next backup an incremental on that image.
    pub newest_change_id: Option<String>,
    /// Start a new epoch at this backup (false for a `--copy`, which must leave the
    /// change tracking as it was).
    pub start_epoch: bool,
}

/// The source identity of a disk image QEMU serves (libvirt domain or QMP): the
/// image file, whichever way it is reached.
pub fn qemu_image_identity(path: &str) -> Identity {
    Identity::named(&format!("qemu-image:{path}"))
}

/// The disks of one VM-wide backup job (a libvirt backup job, a QEMU live backup),
/// kept by the VM its disks' drivers share: what each disk was asked
/// ([`ExportDriver::prepare`]), how many were opened, how many of their guards are
/// alive. The job may end when the last guard goes and every prepared disk was opened.
#[derive(Debug, Default)]
pub struct VmJob {
    pub prepared: Vec<(uuid::Uuid, EpochRequest)>,
    opened: usize,
    guards: usize,
}

impl VmJob {
    /// Record disk `id`'s request, replacing an earlier one.
    pub fn prepare(&mut self, id: uuid::Uuid, req: &EpochRequest) {
        self.prepared.retain(|(i, _)| *i != id);
        self.prepared.push((id, req.clone()));
    }

    /// A prepared disk was opened: its guard is alive.
    pub fn opened(&mut self) {
        self.opened += 1;
        self.guards += 1;
    }

    /// A disk's guard went; true when the job may end now.
    pub fn guard_dropped(&mut self) -> bool {
        self.guards = self.guards.saturating_sub(1);
        self.guards == 0 && self.opened >= self.prepared.len()
    }
}

/// The dirty bitmap an incremental reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtySince {
    /// The meta context, e.g. `qemu:dirty-bitmap:tapevault-3f2a...`.
    pub context: String,
    /// The change id of the epoch the bitmap covers, as the driver finds it now: it
    /// must equal the base's recorded change id, else the backup takes a full.
    pub change_id: String,
}

/// What a driver opened for one backup of one disk.
pub struct OpenedExport {
    pub export: NbdExport,
    /// The changes since the base's epoch, when the driver has them.
    pub dirty: Option<DirtySince>,
    /// Why there is no `dirty` although a base change id was given (a missing,
    /// in-use or inconsistent bitmap, a size or granularity change, ...): the report
    /// says it.
    pub full_reason: Option<String>,
    /// The change id of the epoch starting at this backup's point in time, recorded
    /// with the image (`None` when no epoch was started, e.g. a copy).
    pub change_id: Option<String>,
    /// Kept until the image is committed or failed; dropping it tears the export down.
    pub guard: Box<dyn EpochGuard>,
}

/// Holds an export (and what serves it) for the length of one image.
pub trait EpochGuard: Send {
    /// Every byte of the image was read (it is on tape, not yet committed): the driver
    /// may stop serving the export now, keeping what `committed` needs (the old
    /// epoch stays until then). By default the export is held until `committed`.
    fn read_done(&mut self) {}

    /// The image was flushed to tape and committed in the catalog: the driver may retire
    /// the epoch it replaced. An error is reported as a warning (the image stands).
    fn committed(&mut self) -> Result<(), String>;
}

/// A guard with nothing to do.
pub struct NoGuard;

impl EpochGuard for NoGuard {
    fn committed(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// A source of a disk as an NBD export; see the module docs.
pub trait ExportDriver: Send {
    /// What the disk is, for messages and reports ("qcow2 image /vms/a.qcow2").
    fn describe(&self) -> String;
    /// What makes two disks the same image: two disks of one request with equal
    /// identities are refused.
    fn identity(&self) -> Identity;
    /// Phase 1: what the catalog says about this disk. Errors fail the backup (the
    /// driver's own message, naming the disk and the way out).
    fn prepare(&mut self, req: &EpochRequest) -> Result<(), String>;
    /// Phase 2: make the export available.
    fn open(&mut self) -> Result<OpenedExport, String>;
    /// The disk's size in bytes, when the driver knows it before `open` (after
    /// `prepare`): a session on several drives hands out its largest disks first.
    fn size_hint(&self) -> Option<u64> {
        None
    }
}

/// A shared, clonable handle to a driver (a [`crate::backup::DiskSpec`] is `Clone`).
#[derive(Clone)]
pub struct DriverHandle(pub Arc<Mutex<dyn ExportDriver>>);

impl DriverHandle {
    pub fn new<D: ExportDriver + 'static>(d: D) -> DriverHandle {
        DriverHandle(Arc::new(Mutex::new(d)))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, dyn ExportDriver + 'static> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for DriverHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DriverHandle({})", self.lock().describe())
    }
}

/// A plain NBD export, served by someone else, without change tracking: fulls read
/// only what `base:allocation` says is not zero; incrementals are hash scans as for a
/// raw file.
pub struct PlainExport {
    pub export: NbdExport,
}

impl ExportDriver for PlainExport {
    fn describe(&self) -> String {
        format!("NBD export {}", self.export.uri())
    }

    fn identity(&self) -> Identity {
        self.export.identity()
    }

    fn prepare(&mut self, _req: &EpochRequest) -> Result<(), String> {
        Ok(())
    }

    fn open(&mut self) -> Result<OpenedExport, String> {
        Ok(OpenedExport {
            export: self.export.clone(),
            dirty: None,
            full_reason: None,
            change_id: None,
            guard: Box::new(NoGuard),
        })
    }
}
