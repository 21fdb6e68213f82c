//! The running-QEMU driver behind the backup's [`ExportDriver`] contract: one
//! [`QmpVm`] per VM, shared by one [`QmpDisk`] driver per disk. The first `open`
//! takes the point in time of every prepared disk at once ([`LiveBackup::start`]);
//! each disk's guard reports its catalog commit; the exports are torn down when the
//! last disk's guard is dropped, or when the VM is dropped (a failed backup).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nbd_client::Address;
use uuid::Uuid;

use super::client::QmpClient;
use super::disks::VmDisk;
use super::epoch::Decision;
use super::error::QmpError;
use super::live::{discover_clean, Consistency, DiskRequest, LiveBackup, LiveDisk, LiveOptions};
use crate::source::export::{
    qemu_image_identity, DirtySince, DriverHandle, EpochGuard, EpochRequest, ExportDriver,
    OpenedExport, VmJob,
};
use crate::source::input::Identity;
use crate::source::nbd::NbdExport;

/// Time allowed for each QMP command.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// One VM's live backup, shared by its disks' drivers.
pub struct QmpVm {
    qmp: PathBuf,
    opts: LiveOptions,
    client: Option<QmpClient>,
    disks: Vec<(Uuid, VmDisk)>,
    job: VmJob,
    live: Option<LiveBackup>,
    live_disks: Vec<LiveDisk>,
    failed: Option<String>,
    removed: Vec<String>,
    consistency: Option<Consistency>,
    name: Option<String>,
}

/// What the backup's report says about the point in time.
#[derive(Debug, Clone)]
pub struct VmSummary {
    pub consistency: Option<Consistency>,
    /// Leftovers of a killed earlier run that were removed, in words.
    pub removed: Vec<String>,
}

#[derive(Clone)]
pub struct SharedVm(Arc<Mutex<QmpVm>>);

impl SharedVm {
    fn lock(&self) -> MutexGuard<'_, QmpVm> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn summary(&self) -> VmSummary {
        let g = self.lock();
        VmSummary {
            consistency: g.consistency.clone(),
            removed: g.removed.clone(),
        }
    }

    /// QEMU's name for the VM (`-name`), when it has one.
    pub fn name(&self) -> Option<String> {
        self.lock().name.clone()
    }
}

impl QmpVm {
    /// Connects to the VM's QMP socket, removes what a killed run left and lists the
    /// disks, each with its identity (from `ids`, keyed by serial or wwn, else derived
    /// from the serial or wwn). The connection is kept: QEMU's monitor serves one
    /// client, so no other tool changes the block graph under the backup.
    /// Connects, removes what a killed run left in QEMU, and takes the VM's writable
    /// disks: every one (identified by serial or WWN), or with `select` (a manifest's
    /// disks) those it names, under its ids. Returns the VM handle, the disks taken and
    /// the writable disks left out.
    pub fn connect(
        qmp: &Path,
        opts: LiveOptions,
        select: Option<&[(Uuid, crate::source::manifest::DeviceMatch)]>,
    ) -> Result<(SharedVm, super::disks::Selected), String> {
        let mut c = QmpClient::connect(qmp, QMP_TIMEOUT).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&opts.scratch_dir).map_err(|e| {
            format!(
                "cannot create the scratch directory {}: {e}",
                opts.scratch_dir.display()
            )
        })?;
        let (all, removed) =
            discover_clean(&mut c, &opts.scratch_dir).map_err(|e| e.to_string())?;
        let name = c
            .execute("query-name", None)
            .ok()
            .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string));
        // Each candidate with its id: the manifest's, else derived from the device.
        let (candidates, left_out): (Vec<(Option<Uuid>, VmDisk)>, Vec<VmDisk>) = match select {
            Some(wanted) => {
                let (chosen, others) = super::disks::select_by_device(all, wanted)?;
                (
                    chosen.into_iter().map(|(id, d)| (Some(id), d)).collect(),
                    others,
                )
            }
            None => (
                all.into_iter()
                    .filter(|d| !d.read_only)
                    .map(|d| (d.derived_id(), d))
                    .collect(),
                Vec::new(),
            ),
        };
        let mut disks: Vec<(Uuid, VmDisk)> = Vec::new();
        for (id, d) in candidates {
            let Some(id) = id else {
                return Err(format!(
                    "disk {} (node {}, {}) has no serial and no wwn, and tapevault never takes a device name or position as a disk's identity: give the device a serial (`-device ...,serial=ID`; libvirt: <serial>), ideally the disk's UUID",
                    d.device_name(),
                    d.node,
                    d.filename
                ));
            };
            if let Some((_, other)) = disks.iter().find(|(i, _)| *i == id) {
                return Err(format!(
                    "disks {} and {} resolve to the same identity {id} ({}); give each a serial of its own",
                    other.device_name(),
                    d.device_name(),
                    d.identity_source()
                ));
            }
            if let Some((_, other)) = disks.iter().find(|(_, o)| o.filename == d.filename) {
                return Err(format!(
                    "disks {} and {} are the same image {}: refused",
                    other.device_name(),
                    d.device_name(),
                    d.filename
                ));
            }
            disks.push((id, d));
        }
        let vm = QmpVm {
            qmp: qmp.to_path_buf(),
            opts,
            client: Some(c),
            disks: disks.clone(),
            job: VmJob::default(),
            live: None,
            live_disks: Vec::new(),
            failed: None,
            removed,
            consistency: None,
            name,
        };
        Ok((SharedVm(Arc::new(Mutex::new(vm))), (disks, left_out)))
    }

    fn start(&mut self) -> Result<(), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.live.is_some() {
            return Ok(());
        }
        let client = self.client.take().ok_or("the QMP connection is gone")?;
        let mut reqs = Vec::new();
        let mut start_epoch = true;
        for (id, er) in &self.job.prepared {
            let disk = self
                .disks
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, d)| d.clone())
                .ok_or_else(|| format!("disk {id} is not a disk of this VM"))?;
            start_epoch &= er.start_epoch;
            reqs.push(DiskRequest {
                id: *id,
                disk,
                previous: er.base_change_id.clone(),
                newest: er.newest_change_id.clone(),
            });
        }
        let mut opts = self.opts.clone();
        opts.start_epoch = start_epoch;
        match LiveBackup::start(client, reqs, &opts, &mut |_| {}) {
            Ok(lb) => {
                self.removed.extend(lb.removed_leftovers().iter().cloned());
                self.consistency = Some(lb.consistency().clone());
                self.live_disks = lb.disks();
                self.live = Some(lb);
                Ok(())
            }
            Err(e) => {
                let m = format!(
                    "taking the point in time over QMP ({}) failed: {e}",
                    self.qmp.display()
                );
                self.failed = Some(m.clone());
                Err(m)
            }
        }
    }
}

/// One disk of a [`QmpVm`].
pub struct QmpDisk {
    vm: SharedVm,
    id: Uuid,
    disk: VmDisk,
}

impl QmpDisk {
    pub fn handle(vm: &SharedVm, id: Uuid, disk: VmDisk) -> DriverHandle {
        DriverHandle::new(QmpDisk {
            vm: vm.clone(),
            id,
            disk,
        })
    }
}

impl ExportDriver for QmpDisk {
    fn describe(&self) -> String {
        format!(
            "disk {} ({}, node {}, {}) of the running QEMU at {}",
            self.disk.device_name(),
            self.disk.identity_source(),
            self.disk.node,
            self.disk.filename,
            self.vm.lock().qmp.display()
        )
    }

    fn size_hint(&self) -> Option<u64> {
        (self.disk.size > 0).then_some(self.disk.size)
    }

    fn identity(&self) -> Identity {
        qemu_image_identity(&self.disk.filename)
    }

    fn prepare(&mut self, req: &EpochRequest) -> Result<(), String> {
        self.vm.lock().job.prepare(self.id, req);
        Ok(())
    }

    fn open(&mut self) -> Result<OpenedExport, String> {
        let mut vm = self.vm.lock();
        vm.start()?;
        let d = vm
            .live_disks
            .iter()
            .find(|d| d.id == self.id)
            .cloned()
            .ok_or_else(|| format!("disk {} was not prepared", self.id))?;
        let socket = vm
            .live
            .as_ref()
            .map(|l| l.nbd_socket().to_path_buf())
            .ok_or("the live backup is gone")?;
        vm.job.opened();
        let (dirty, full_reason) = match &d.decision {
            Decision::Incremental { from } => (
                d.bitmap_context.clone().map(|context| DirtySince {
                    context,
                    change_id: from.to_string(),
                }),
                None,
            ),
            Decision::Full { reason } => (None, Some(reason.clone())),
        };
        Ok(OpenedExport {
            export: NbdExport {
                address: Address::Unix(socket),
                name: d.export.clone(),
                tls: None,
            },
            dirty,
            full_reason,
            change_id: d.change_id.clone(),
            guard: Box::new(QmpGuard {
                vm: self.vm.clone(),
                id: self.id,
            }),
        })
    }
}

struct QmpGuard {
    vm: SharedVm,
    id: Uuid,
}

impl EpochGuard for QmpGuard {
    fn committed(&mut self) -> Result<(), String> {
        let mut vm = self.vm.lock();
        match vm.live.as_mut() {
            Some(l) => l.committed(self.id).map_err(|e: QmpError| {
                format!(
                    "removing the previous epoch's bitmap of disk {}: {e}",
                    self.id
                )
            }),
            None => Ok(()),
        }
    }
}

impl Drop for QmpGuard {
    fn drop(&mut self) {
        let mut vm = self.vm.lock();
        // The point in time is kept until every prepared disk was read.
        if vm.job.guard_dropped() {
            if let Some(l) = vm.live.take() {
                let _ = l.finish();
            }
        }
    }
}
