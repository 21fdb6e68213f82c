//! The libvirt domain driver behind the backup's [`ExportDriver`] contract: one
//! [`LibvirtVm`] per domain, shared by one [`LibvirtDisk`] per disk.
//!
//! The first `open` starts ONE pull-mode backup job over every disk of the domain
//! (`virsh backup-begin DOMAIN backup.xml checkpoint.xml`): libvirt takes the point in
//! time of all disks in one QEMU transaction, creates the next epoch's checkpoint
//! `tapevault-<N>` and exports each disk over a unix socket tapevault chooses, with
//! `qemu:dirty-bitmap:backup-<target>` carrying the changes since the disk's previous
//! checkpoint (`backupmode='incremental' incremental='tapevault-<N-1>'` per disk).
//! The new checkpoint's XML (`virsh checkpoint-dumpxml`) goes into the catalog at
//! once. When the last disk's guard is dropped the job is ended (`virsh domjobabort`)
//! and the checkpoints no disk needs any more are deleted: a checkpoint goes only when
//! every disk that builds on it has its new image on tape and committed. A failed or
//! killed run leaves the old checkpoints in place; the next run ends a job of
//! tapevault's that is still running and deletes the checkpoints no image recorded.
//!
//! Any doubt is a full of that disk, with the reason: no earlier image, a change id
//! that is not a libvirt checkpoint, a changed size, a checkpoint libvirt lost and the
//! catalog cannot redefine, a disk the checkpoint does not hold, a bitmap libvirt
//! reports missing or broken.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nbd_client::{Address, TlsConfig};
use uuid::Uuid;

use super::domain::{self, DomainDisk, PREFIX};
use super::virsh::Virsh;
use super::xml::escape;
use crate::catalog::Catalog;
use crate::source::export::{
    qemu_image_identity, DirtySince, DriverHandle, EpochGuard, EpochRequest, ExportDriver,
    OpenedExport, VmJob,
};
use crate::source::input::Identity;
use crate::source::nbd::NbdExport;
use crate::source::qmp::guard::SignalGuard;
use crate::source::qmp::live::Consistency;

/// The change id an image records: the checkpoint that started at its point in time,
/// the disk's virtual size then and its bitmap's granularity (`None` where it could
/// not be learned: a remote host, a network disk, or an image recorded before
/// tapevault recorded it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeId {
    pub epoch: u64,
    pub size: u64,
    pub granularity: Option<u64>,
}

impl ChangeId {
    pub fn checkpoint(&self) -> String {
        checkpoint_name(self.epoch)
    }

    pub fn parse(s: &str) -> Option<ChangeId> {
        let rest = s.strip_prefix("libvirt-checkpoint:")?;
        let (name, size) = rest.split_once(":size=")?;
        let (size, granularity) = match size.split_once(":granularity=") {
            Some((s, g)) => (s, Some(g.parse().ok().filter(|g| *g > 0)?)),
            None => (size, None),
        };
        Some(ChangeId {
            epoch: epoch_of(name)?,
            size: size.parse().ok()?,
            granularity,
        })
    }
}

impl std::fmt::Display for ChangeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "libvirt-checkpoint:{}:size={}",
            self.checkpoint(),
            self.size
        )?;
        match self.granularity {
            Some(g) => write!(f, ":granularity={g}"),
            None => Ok(()),
        }
    }
}

pub fn checkpoint_name(epoch: u64) -> String {
    format!("{PREFIX}{epoch}")
}

/// The epoch of a tapevault checkpoint name.
pub fn epoch_of(name: &str) -> Option<u64> {
    let n = name.strip_prefix(PREFIX)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Full { reason: String },
    Incremental { from: String },
}

#[derive(Debug, Clone)]
pub struct LibvirtOptions {
    /// Where the NBD socket and the scratch images go (libvirt's QEMU writes there;
    /// a scratch image grows by what the guest overwrites during the backup).
    pub scratch_dir: PathBuf,
    /// The tapevault home (its catalog keeps the checkpoints' XML).
    pub home: PathBuf,
    /// Start a new checkpoint (false for a one-off copy).
    pub start_epoch: bool,
    /// Time a guest file system freeze (`virsh domfsfreeze`, when the domain has a
    /// guest agent channel) may take before the backup goes on crash-consistent.
    pub freeze_timeout: Duration,
    /// `HOST:PORT` libvirt's QEMU serves the export on over TCP (default: a unix
    /// socket in the scratch directory for a local connection, the URI's host and
    /// port 10809 for a remote one).
    pub listen: Option<String>,
    /// QEMU x509 client credentials (ca-cert.pem, client-cert.pem, client-key.pem):
    /// TLS on the TCP export (`tls='yes'`, the server side being the hypervisor's
    /// qemu.conf `backup_tls_x509_cert_dir`).
    pub tls_dir: Option<PathBuf>,
}

/// The NBD port libvirt's QEMU listens on for a remote connection by default.
pub const DEFAULT_NBD_PORT: u16 = 10809;

/// Where libvirt's QEMU serves the pull-mode export.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Export {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

/// The host of a remote connection URI (`qemu+ssh://root@kvm1:22/system` -> `kvm1`);
/// `None` for a local one.
pub fn uri_host(uri: &str) -> Option<String> {
    let (_, rest) = uri.split_once("://")?;
    let auth = rest.split(['/', '?']).next().unwrap_or("");
    let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let host = if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        &host[..end + 2]
    } else {
        host.split(':').next().unwrap_or("")
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// The host of the connection (`uri`, else LIBVIRT_DEFAULT_URI) when it is remote.
fn remote_host(uri: Option<&str>) -> Option<String> {
    if domain::is_local_uri(uri) {
        return None;
    }
    let env = std::env::var("LIBVIRT_DEFAULT_URI").ok();
    uri_host(uri.or(env.as_deref())?)
}

/// `HOST:PORT` of --nbd-listen, checked.
pub fn parse_listen(s: &str) -> Result<(String, u16), String> {
    let bad = || {
        format!("--nbd-listen {s:?} is not HOST:PORT (an address of the hypervisor this host reaches, a port from 1 to 65535)")
    };
    let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = p.parse().map_err(|_| bad())?;
    if h.is_empty() || port == 0 || h.contains(['/', '\'', '<', '>', '&', '"']) {
        return Err(bad());
    }
    Ok((h.to_string(), port))
}

struct Plan {
    id: Uuid,
    disk: DomainDisk,
    /// The checkpoint the disk's newest good image recorded.
    base: Option<String>,
    /// That image's change id, as recorded.
    base_change_id: Option<String>,
    decision: Decision,
    change_id: Option<String>,
    committed: bool,
}

/// One domain's backup, shared by its disks' drivers.
pub struct LibvirtVm {
    virsh: Virsh,
    domain: String,
    domain_uuid: Option<String>,
    /// The hypervisor is this host (its images can be read with qemu-img).
    local: bool,
    opts: LibvirtOptions,
    disks: Vec<(Uuid, DomainDisk)>,
    job: VmJob,
    plans: Vec<Plan>,
    started: bool,
    job_running: bool,
    new_checkpoint: Option<String>,
    failed: Option<String>,
    export: Export,
    finished: bool,
    signal: Option<SignalGuard>,
    notes: Vec<String>,
    removed: Vec<String>,
    retired: Vec<String>,
    consistency: Option<Consistency>,
}

#[derive(Clone)]
pub struct SharedDomain(Arc<Mutex<LibvirtVm>>);

/// What the backup's report says about the domain.
#[derive(Debug, Clone)]
pub struct DomainSummary {
    pub removed: Vec<String>,
    pub notes: Vec<String>,
    pub new_checkpoint: Option<String>,
    /// Older checkpoints deleted after the images were committed.
    pub retired: Vec<String>,
    /// The point in time's consistency, once the backup job began.
    pub consistency: Option<Consistency>,
}

impl SharedDomain {
    fn lock(&self) -> MutexGuard<'_, LibvirtVm> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn name(&self) -> String {
        self.lock().domain.clone()
    }

    pub fn summary(&self) -> DomainSummary {
        let g = self.lock();
        DomainSummary {
            removed: g.removed.clone(),
            notes: g.notes.clone(),
            new_checkpoint: g.new_checkpoint.clone(),
            retired: g.retired.clone(),
            consistency: g.consistency.clone(),
        }
    }
}

/// The domain's disks a backup takes, each with its identity; two disks with one
/// identity or one image are refused.
pub fn backup_disks(domain: &str, disks: &[DomainDisk]) -> Result<Vec<(Uuid, DomainDisk)>, String> {
    let mut out: Vec<(Uuid, DomainDisk)> = Vec::new();
    for d in disks.iter().filter(|d| d.backed_up()) {
        let Some(id) = d.derived_id() else {
            return Err(format!(
                "disk {} ({}) of domain {domain} has no <serial> and no <wwn>, and tapevault never takes a target name or position as a disk's identity: add <serial>ID</serial> to the disk (`virsh edit {domain}`), ideally the disk's UUID",
                d.target, d.source
            ));
        };
        if let Some((_, o)) = out.iter().find(|(i, _)| *i == id) {
            return Err(format!(
                "disks {} and {} of domain {domain} resolve to the same identity {id} ({}); give each a serial of its own",
                o.target,
                d.target,
                d.identity_source()
            ));
        }
        if let Some((_, o)) = out.iter().find(|(_, o)| o.source == d.source) {
            return Err(format!(
                "disks {} and {} of domain {domain} are the same image {}: refused",
                o.target, d.target, d.source
            ));
        }
        out.push((id, d.clone()));
    }
    Ok(out)
}

impl LibvirtVm {
    /// Reads the domain, ends a backup job a killed run of tapevault left and lists the
    /// disks a backup takes.
    pub fn connect(
        domain: &str,
        uri: Option<String>,
        opts: LibvirtOptions,
    ) -> Result<(SharedDomain, Vec<(Uuid, DomainDisk)>), String> {
        let local = domain::is_local_uri(uri.as_deref());
        let uri_for_host = uri.clone();
        let virsh = Virsh::new(uri);
        let mut removed = Vec::new();
        if let Some(r) = domain::abort_leftover_job(&virsh, domain)? {
            removed.push(r);
        }
        let d = domain::inspect(&virsh, domain).map_err(|e| e.to_string())?;
        if d.state != "running" && d.state != "paused" {
            return Err(format!(
                "domain {domain} is {}: libvirt backs up running domains only; start it, or back up its images offline with --disk qcow2:PATH",
                d.state
            ));
        }
        let disks = backup_disks(&d.name, &d.disks)?;
        std::fs::create_dir_all(&opts.scratch_dir).map_err(|e| {
            format!(
                "cannot create the scratch directory {}: {e}",
                opts.scratch_dir.display()
            )
        })?;
        let socket = opts.scratch_dir.join(format!("{PREFIX}nbd.sock"));
        let remote = remote_host(uri_for_host.as_deref());
        let export = match (&opts.listen, remote) {
            (Some(l), _) => {
                let (host, port) = parse_listen(l)?;
                Export::Tcp { host, port }
            }
            (None, Some(host)) => Export::Tcp {
                host,
                port: DEFAULT_NBD_PORT,
            },
            (None, None) => Export::Unix(socket.clone()),
        };
        if opts.tls_dir.is_some() && matches!(export, Export::Unix(_)) {
            return Err("--tls-creds-dir applies to a TCP export (--nbd-listen HOST:PORT, or a remote --connect): a local unix socket export needs no TLS".into());
        }
        if matches!(export, Export::Unix(_)) && socket.as_os_str().len() > 100 {
            return Err(format!(
                "the NBD socket path {} is too long for a unix socket: give a shorter --scratch-dir",
                socket.display()
            ));
        }
        for f in leftover_files(&opts.scratch_dir) {
            if std::fs::remove_file(&f).is_ok() {
                removed.push(format!("file {}", f.display()));
            }
        }
        let vm = LibvirtVm {
            virsh,
            domain: d.name.clone(),
            domain_uuid: d.uuid.clone(),
            local,
            opts,
            disks: disks.clone(),
            job: VmJob::default(),
            plans: Vec::new(),
            started: false,
            job_running: false,
            new_checkpoint: None,
            export,
            failed: None,
            finished: false,
            signal: None,
            notes: Vec::new(),
            removed,
            retired: Vec::new(),
            consistency: None,
        };
        Ok((SharedDomain(Arc::new(Mutex::new(vm))), disks))
    }

    fn catalog(&self) -> Result<Catalog, String> {
        Catalog::open(&self.opts.home).map_err(|e| e.to_string())
    }

    /// Decides each prepared disk, redefining checkpoints libvirt lost from the catalog.
    fn decide(
        &mut self,
        cat: &Catalog,
        existing: &mut Vec<String>,
        req: &EpochRequest,
        disk: &DomainDisk,
    ) -> Decision {
        let full = |reason: String| Decision::Full { reason };
        if !self.opts.start_epoch {
            return full("a copy reads the whole disk and starts no checkpoint".into());
        }
        if !keeps_bitmaps(disk) {
            return full(format!(
                "disk {} is {}, which keeps no checkpoint bitmap (only qcow2 does)",
                disk.target, disk.format
            ));
        }
        let Some(prev) = &req.base_change_id else {
            return full("no earlier good image of this disk with a libvirt checkpoint (a disk new to the domain, or the first backup)".into());
        };
        let Some(id) = ChangeId::parse(prev) else {
            return full(format!(
                "the newest good image recorded change id {prev:?}, which is not a tapevault libvirt checkpoint"
            ));
        };
        if id.size != disk.size || req.base_disk_size.is_some_and(|s| s != disk.size) {
            return full(format!(
                "disk {} was resized from {} to {} bytes since the last image (a shrink and regrow loses dirty bits)",
                disk.target, id.size, disk.size
            ));
        }
        let name = id.checkpoint();
        if !existing.contains(&name) {
            match cat.libvirt_checkpoint(&self.domain, &name) {
                Ok(Some(text)) => {
                    match domain::redefine(&self.virsh, &self.domain, &text, &self.opts.scratch_dir)
                    {
                        Ok(()) => {
                            self.notes.push(format!(
                                "checkpoint {name} was missing in libvirt: redefined from the XML in the catalog"
                            ));
                            existing.push(name.clone());
                        }
                        Err(e) => {
                            return full(format!(
                                "checkpoint {name} is missing in libvirt and redefining it from the catalog failed ({e})"
                            ))
                        }
                    }
                }
                Ok(None) => {
                    return full(format!(
                        "checkpoint {name} is missing in libvirt and the catalog has no XML of it (deleted on both sides): changes since the last image are unknown"
                    ))
                }
                Err(e) => {
                    return full(format!(
                        "checkpoint {name} is missing in libvirt and the catalog could not be read ({e})"
                    ))
                }
            }
        }
        match domain::checkpoint_xml(&self.virsh, &self.domain, &name)
            .map_err(|e| e.to_string())
            .and_then(|x| domain::checkpoint_disks(&x))
        {
            Ok(t) if t.contains(&disk.target) => match (id.granularity, self.bitmap_granularity(disk, &name)) {
                (Some(r), Some(g)) if r != g => full(format!(
                    "the bitmap of checkpoint {name} on disk {} has granularity {g} bytes, the epoch recorded {r} (re-created with another granularity): its dirty bits are not the epoch's",
                    disk.target
                )),
                _ => Decision::Incremental { from: name },
            },
            Ok(_) => full(format!(
                "checkpoint {name} holds no bitmap of disk {} (the disk was added or renamed since)",
                disk.target
            )),
            Err(e) => full(format!("checkpoint {name} cannot be read: {e}")),
        }
    }

    /// The granularity of a checkpoint's bitmap as the disk's image stores it; `None`
    /// when not known: a remote hypervisor, a disk that is not a local image, or a
    /// bitmap the running QEMU has not stored in the image yet.
    fn bitmap_granularity(&self, disk: &DomainDisk, bitmap: &str) -> Option<u64> {
        if !self.local || !disk.source.starts_with('/') {
            return None;
        }
        domain::image_bitmaps(&disk.source)
            .ok()?
            .granularity(bitmap)
    }

    /// The granularity of the bitmap libvirt just created for a new checkpoint: QEMU's
    /// default for the image's cluster size (libvirt names none), or what the image
    /// stores if it already does; `None` when the image cannot be read from here.
    fn new_bitmap_granularity(&self, disk: &DomainDisk, bitmap: &str) -> Option<u64> {
        if !self.local || !disk.source.starts_with('/') {
            return None;
        }
        let b = domain::image_bitmaps(&disk.source).ok()?;
        Some(
            b.granularity(bitmap)
                .unwrap_or_else(|| domain::default_granularity(b.cluster_size)),
        )
    }

    fn start(&mut self) -> Result<(), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.started {
            return Ok(());
        }
        match self.run_start() {
            Ok(()) => {
                self.started = true;
                Ok(())
            }
            Err(e) => {
                let m = format!(
                    "starting the backup of libvirt domain {} failed: {e}",
                    self.domain
                );
                self.failed = Some(m.clone());
                self.finish();
                Err(m)
            }
        }
    }

    fn run_start(&mut self) -> Result<(), String> {
        let cat = self.catalog()?;
        let v = self.virsh.clone();
        let dom = self.domain.clone();
        let mut existing = domain::checkpoints(&v, &dom).map_err(|e| e.to_string())?;
        let mut plans = Vec::new();
        for (id, req) in self.job.prepared.clone() {
            let disk = self
                .disks
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, d)| d.clone())
                .ok_or_else(|| format!("disk {id} is not a disk of domain {dom}"))?;
            let decision = self.decide(&cat, &mut existing, &req, &disk);
            plans.push(Plan {
                id,
                disk,
                base: req
                    .base_change_id
                    .as_deref()
                    .and_then(ChangeId::parse)
                    .map(|c| c.checkpoint()),
                base_change_id: req.base_change_id.clone(),
                decision,
                change_id: None,
                committed: false,
            });
        }
        // Checkpoints newer than every disk's base: what a killed or failed run created
        // (no image records them). Older ones are retired only after this run's images
        // are committed ([`LibvirtVm::finish`]).
        let bases: Vec<Option<u64>> = self
            .job
            .prepared
            .iter()
            .map(|(_, r)| {
                r.base_change_id
                    .as_deref()
                    .and_then(ChangeId::parse)
                    .map(|c| c.epoch)
            })
            .collect();
        if self.opts.start_epoch && !bases.is_empty() && bases.iter().all(Option::is_some) {
            let newest_base = bases.iter().flatten().max().copied().unwrap_or(0);
            for name in existing.clone() {
                if epoch_of(&name).is_some_and(|e| e > newest_base) {
                    domain::delete_checkpoint(&v, &dom, &name).map_err(|e| e.to_string())?;
                    let _ = cat.delete_libvirt_checkpoint(&dom, &name);
                    self.removed
                        .push(format!("checkpoint {name} (no image builds on it)"));
                }
            }
        }
        // Names never come back (those just deleted count too).
        let next = existing
            .iter()
            .filter_map(|n| epoch_of(n))
            .chain(
                cat.libvirt_checkpoint_names(&dom)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .filter_map(|n| epoch_of(n)),
            )
            .chain(
                self.job
                    .prepared
                    .iter()
                    .filter_map(|(_, r)| r.base_change_id.as_deref())
                    .filter_map(ChangeId::parse)
                    .map(|c| c.epoch),
            )
            .max()
            .unwrap_or(0)
            + 1;
        // A checkpoint needs a disk to hold a bitmap of.
        let new_cp = (self.opts.start_epoch && plans.iter().any(|p| keeps_bitmaps(&p.disk)))
            .then(|| checkpoint_name(next));
        self.plans = plans;

        let all = domain::inspect(&v, &dom).map_err(|e| e.to_string())?;
        let guard_virsh = v.clone();
        let guard_dom = dom.clone();
        let has_agent = all.agent.is_some();
        self.signal = Some(
            SignalGuard::arm(move |_| {
                if has_agent {
                    // A signal between freeze and thaw must not leave the guest frozen.
                    let _ = guard_virsh.run(&["domfsthaw", &guard_dom]);
                }
                let _ = guard_virsh.run(&["domjobabort", &guard_dom]);
            })
            .map_err(|e| format!("cannot watch for signals: {e}"))?,
        );
        // The guest's file systems frozen around the point in time (backup-begin).
        let (consistency, thaw) = self.freeze(all.agent.as_deref());
        let begun = self.begin(&cat, &all.disks, new_cp.as_deref());
        let thawed = if thaw { self.thaw() } else { Ok(()) };
        match (begun, thawed) {
            (Err(b), Err(t)) => return Err(format!("{b}; and {t}")),
            (Err(b), Ok(())) => return Err(b),
            (Ok(()), thawed) => {
                self.consistency = Some(consistency);
                // The job is begun (and ended in finish) even when the thaw failed.
                self.job_running = true;
                thawed?;
            }
        }
        self.job_running = true;
        if let Export::Tcp { host, port } = &self.export {
            self.notes.push(format!(
                "the disks were exported by the domain's QEMU on {}://{host}:{port}",
                if self.opts.tls_dir.is_some() {
                    "nbds"
                } else {
                    "nbd"
                }
            ));
        }
        self.new_checkpoint = new_cp.clone();
        if let Some(name) = &new_cp {
            let x = domain::checkpoint_xml(&v, &dom, name).map_err(|e| e.to_string())?;
            cat.put_libvirt_checkpoint(&dom, name, self.domain_uuid.as_deref(), &x)
                .map_err(|e| format!("keeping checkpoint {name}'s XML in the catalog: {e}"))?;
            let ids: Vec<Option<String>> = self
                .plans
                .iter()
                .map(|p| {
                    keeps_bitmaps(&p.disk).then(|| {
                        ChangeId {
                            epoch: next,
                            size: p.disk.size,
                            granularity: self.new_bitmap_granularity(&p.disk, name),
                        }
                        .to_string()
                    })
                })
                .collect();
            for (p, id) in self.plans.iter_mut().zip(ids) {
                if id.is_some() {
                    p.change_id = id;
                }
            }
        }
        Ok(())
    }

    /// `virsh domfsfreeze` when the domain has a guest agent channel, bounded by the
    /// freeze timeout. Returns the consistency it gives and whether a thaw must follow
    /// (the freeze worked, or timed out and may still complete in the guest).
    fn freeze(&mut self, agent: Option<&str>) -> (Consistency, bool) {
        let crash = |reason: String| Consistency::Crash { reason };
        let Some(state) = agent else {
            return (
                crash(format!(
                    "domain {} has no guest agent channel ({})",
                    self.domain,
                    domain::AGENT_CHANNEL
                )),
                false,
            );
        };
        let mut v = self.virsh.clone();
        v.timeout = self.opts.freeze_timeout;
        match v.run(&["domfsfreeze", &self.domain]) {
            Ok(out) => match frozen_count(&out) {
                Some(n) if n > 0 => (Consistency::Filesystem { frozen: n }, true),
                _ => (
                    crash(format!(
                        "the guest agent froze no file system ({})",
                        out.trim()
                    )),
                    true,
                ),
            },
            Err(e) => {
                let timed_out = e.message.starts_with("no answer within");
                let reason = if timed_out {
                    format!(
                        "the guest agent's freeze did not end within {} s (--freeze-timeout)",
                        self.opts.freeze_timeout.as_secs()
                    )
                } else {
                    format!(
                        "the guest agent's freeze failed (channel {}): {}",
                        if state.is_empty() {
                            "state unknown"
                        } else {
                            state
                        },
                        e.message
                    )
                };
                (crash(reason), timed_out)
            }
        }
    }

    /// `virsh domfsthaw`: a guest left frozen is worse than a failed backup.
    fn thaw(&self) -> Result<(), String> {
        let mut v = self.virsh.clone();
        v.timeout = self.opts.freeze_timeout.max(super::virsh::VIRSH_TIMEOUT);
        v.run(&["domfsthaw", &self.domain]).map(|_| ()).map_err(|e| {
            format!(
                "thawing the guest's file systems failed ({e}); check the guest and thaw by hand with `virsh domfsthaw {}`",
                self.domain
            )
        })
    }

    /// `virsh backup-begin` of every disk; libvirt refusing an incremental makes that
    /// disk a full (with libvirt's words) and the job is begun again.
    fn begin(
        &mut self,
        cat: &Catalog,
        all: &[DomainDisk],
        new_cp: Option<&str>,
    ) -> Result<(), String> {
        let v = self.virsh.clone();
        let dom = self.domain.clone();
        // libvirt refuses an incremental whose bitmap is missing or broken; that disk
        // then goes full (with libvirt's words) and the job is begun again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (backup_xml, cp_xml) = self.documents(all, new_cp);
            let bf = self.opts.scratch_dir.join(format!("{PREFIX}backup.xml"));
            let cf = self
                .opts
                .scratch_dir
                .join(format!("{PREFIX}checkpoint.xml"));
            std::fs::write(&bf, backup_xml).map_err(|e| format!("{}: {e}", bf.display()))?;
            let mut args = vec![
                "backup-begin".to_string(),
                dom.clone(),
                bf.to_string_lossy().into_owned(),
            ];
            if let Some(x) = cp_xml {
                std::fs::write(&cf, x).map_err(|e| format!("{}: {e}", cf.display()))?;
                args.push(cf.to_string_lossy().into_owned());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = v.run(&args);
            let _ = std::fs::remove_file(&bf);
            let _ = std::fs::remove_file(&cf);
            match r {
                Ok(_) => break,
                Err(e) => {
                    let broken = self
                        .plans
                        .iter()
                        .filter_map(|p| match &p.decision {
                            Decision::Incremental { from }
                                if e.message.contains(&format!("'{from}'")) =>
                            {
                                Some(from.clone())
                            }
                            _ => None,
                        })
                        .collect::<Vec<_>>();
                    let incremental = self
                        .plans
                        .iter()
                        .any(|p| matches!(p.decision, Decision::Incremental { .. }));
                    if !incremental || attempts > self.plans.len() + 1 {
                        return Err(e.to_string());
                    }
                    // A named checkpoint goes; an error naming none makes every
                    // incremental a full (never a guess).
                    for p in &mut self.plans {
                        if let Decision::Incremental { from } = &p.decision {
                            if broken.is_empty() || broken.contains(from) {
                                p.decision = Decision::Full {
                                    reason: format!(
                                        "libvirt refused the incremental from checkpoint {from}: {}",
                                        e.message
                                    ),
                                };
                            }
                        }
                    }
                    for name in &broken {
                        if domain::delete_checkpoint(&v, &dom, name).is_ok() {
                            let _ = cat.delete_libvirt_checkpoint(&dom, name);
                            self.removed
                                .push(format!("checkpoint {name} (its bitmap is broken)"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The backup and checkpoint documents for `virsh backup-begin`.
    fn documents(&self, all: &[DomainDisk], new_cp: Option<&str>) -> (String, Option<String>) {
        let server = match &self.export {
            Export::Unix(p) => format!(
                "<server transport='unix' socket='{}'/>",
                escape(&p.to_string_lossy())
            ),
            Export::Tcp { host, port } => format!(
                "<server transport='tcp' name='{}' port='{port}'{}/>",
                escape(host),
                if self.opts.tls_dir.is_some() {
                    " tls='yes'"
                } else {
                    ""
                }
            ),
        };
        let mut b = format!("<domainbackup mode='pull'>\n  {server}\n  <disks>\n");
        let mut c = new_cp.map(|n| {
            format!(
                "<domaincheckpoint>\n  <name>{}</name>\n  <description>tapevault epoch</description>\n  <disks>\n",
                escape(n)
            )
        });
        for d in all {
            if d.target.is_empty() {
                continue;
            }
            let plan = self.plans.iter().find(|p| p.disk.target == d.target);
            match plan {
                Some(p) => {
                    let mode = match &p.decision {
                        Decision::Full { .. } => "backupmode='full'".to_string(),
                        Decision::Incremental { from } => {
                            format!("backupmode='incremental' incremental='{}'", escape(from))
                        }
                    };
                    let scratch = self
                        .opts
                        .scratch_dir
                        .join(format!("{PREFIX}scratch-{}.qcow2", d.target));
                    // A remote hypervisor's scratch goes where libvirt puts it (the
                    // scratch directory is a path of this host).
                    let scratch = if self.local {
                        format!("<scratch file='{}'/>", escape(&scratch.to_string_lossy()))
                    } else {
                        String::new()
                    };
                    b.push_str(&format!(
                        "    <disk name='{}' backup='yes' type='file' exportname='{}' {mode}>{scratch}</disk>\n",
                        escape(&d.target),
                        escape(&export_name(&d.target)),
                    ));
                    if let Some(c) = &mut c {
                        c.push_str(&format!(
                            "    <disk name='{}' checkpoint='{}'/>\n",
                            escape(&d.target),
                            if keeps_bitmaps(d) { "bitmap" } else { "no" }
                        ));
                    }
                }
                None => {
                    b.push_str(&format!(
                        "    <disk name='{}' backup='no'/>\n",
                        escape(&d.target)
                    ));
                    if let Some(c) = &mut c {
                        if d.device == "disk" || d.device == "lun" {
                            c.push_str(&format!(
                                "    <disk name='{}' checkpoint='no'/>\n",
                                escape(&d.target)
                            ));
                        }
                    }
                }
            }
        }
        b.push_str("  </disks>\n</domainbackup>\n");
        if let Some(c) = &mut c {
            c.push_str("  </disks>\n</domaincheckpoint>\n");
        }
        (b, c)
    }

    /// Ends the job and retires what no disk needs any more; idempotent.
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let v = self.virsh.clone();
        let dom = self.domain.clone();
        if self.job_running {
            let _ = v.run(&["domjobabort", &dom]);
            self.job_running = false;
        }
        self.signal.take();
        let Some(new_cp) = self.new_checkpoint.clone() else {
            return;
        };
        let cat = self.catalog().ok();
        let forget = |name: &str| {
            if let Some(c) = &cat {
                let _ = c.delete_libvirt_checkpoint(&dom, name);
            }
        };
        if !self.plans.iter().any(|p| p.committed) {
            // No image records the new checkpoint: it would only be in the way.
            if domain::delete_checkpoint(&v, &dom, &new_cp).is_ok() {
                forget(&new_cp);
            }
            return;
        }
        // A disk whose new image is not committed still builds on its old checkpoint.
        let needed: Vec<String> = self
            .plans
            .iter()
            .filter(|p| !p.committed)
            .filter_map(|p| p.base.clone())
            .collect();
        let new_epoch = epoch_of(&new_cp).unwrap_or(u64::MAX);
        if let Ok(list) = domain::checkpoints(&v, &dom) {
            for name in list {
                let old = epoch_of(&name).is_some_and(|e| e < new_epoch);
                if old && !needed.contains(&name) {
                    match domain::delete_checkpoint(&v, &dom, &name) {
                        Ok(()) => {
                            forget(&name);
                            self.retired.push(name);
                        }
                        Err(e) => self
                            .notes
                            .push(format!("retiring checkpoint {name} failed: {e}")),
                    }
                }
            }
        }
    }
}

impl Drop for LibvirtVm {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The NBD export name of a disk in tapevault's backup job (how a job a killed run
/// left over TCP is known as tapevault's).
fn export_name(target: &str) -> String {
    format!("{PREFIX}{target}")
}

/// The count in `virsh domfsfreeze`'s "Froze N filesystem(s)".
fn frozen_count(out: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Froze ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Whether libvirt can keep a checkpoint bitmap of the disk (in its qcow2 image).
fn keeps_bitmaps(d: &DomainDisk) -> bool {
    d.format == "qcow2"
}

/// Files of tapevault's in the scratch directory (a killed run's).
fn leftover_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(PREFIX))
        })
        .collect()
}

/// One disk of a [`LibvirtVm`].
pub struct LibvirtDisk {
    vm: SharedDomain,
    id: Uuid,
    disk: DomainDisk,
}

impl LibvirtDisk {
    pub fn handle(vm: &SharedDomain, id: Uuid, disk: DomainDisk) -> DriverHandle {
        DriverHandle::new(LibvirtDisk {
            vm: vm.clone(),
            id,
            disk,
        })
    }
}

impl ExportDriver for LibvirtDisk {
    fn describe(&self) -> String {
        format!(
            "disk {} ({}, {}) of libvirt domain {}",
            self.disk.target,
            self.disk.identity_source(),
            self.disk.source,
            self.vm.lock().domain
        )
    }

    fn size_hint(&self) -> Option<u64> {
        (self.disk.size > 0).then_some(self.disk.size)
    }

    fn identity(&self) -> Identity {
        qemu_image_identity(&self.disk.source)
    }

    fn prepare(&mut self, req: &EpochRequest) -> Result<(), String> {
        self.vm.lock().job.prepare(self.id, req);
        Ok(())
    }

    fn open(&mut self) -> Result<OpenedExport, String> {
        let mut vm = self.vm.lock();
        vm.start()?;
        let p = vm
            .plans
            .iter()
            .find(|p| p.id == self.id)
            .ok_or_else(|| format!("disk {} was not prepared", self.id))?;
        let (dirty, full_reason) = match &p.decision {
            Decision::Incremental { from } => (
                Some(DirtySince {
                    context: format!("qemu:dirty-bitmap:backup-{}", p.disk.target),
                    // The epoch the bitmap continues: the base's, as it recorded it
                    // (the decision checked size and granularity against it).
                    change_id: p.base_change_id.clone().unwrap_or_else(|| {
                        ChangeId {
                            epoch: epoch_of(from).unwrap_or(0),
                            size: p.disk.size,
                            granularity: None,
                        }
                        .to_string()
                    }),
                }),
                None,
            ),
            Decision::Full { reason } => (None, Some(reason.clone())),
        };
        let export = match &vm.export {
            Export::Unix(s) => NbdExport {
                address: Address::Unix(s.clone()),
                name: export_name(&p.disk.target),
                tls: None,
            },
            Export::Tcp { host, port } => NbdExport {
                address: Address::Tcp(format!("{host}:{port}")),
                name: export_name(&p.disk.target),
                tls: vm.opts.tls_dir.as_ref().map(|d| {
                    TlsConfig::from_qemu_dir(d, host.trim_start_matches('[').trim_end_matches(']'))
                }),
            },
        };
        let change_id = p.change_id.clone();
        vm.job.opened();
        Ok(OpenedExport {
            export,
            dirty,
            full_reason,
            change_id,
            guard: Box::new(LibvirtGuard {
                vm: self.vm.clone(),
                id: self.id,
            }),
        })
    }
}

struct LibvirtGuard {
    vm: SharedDomain,
    id: Uuid,
}

impl EpochGuard for LibvirtGuard {
    fn committed(&mut self) -> Result<(), String> {
        let mut vm = self.vm.lock();
        if let Some(p) = vm.plans.iter_mut().find(|p| p.id == self.id) {
            p.committed = true;
        }
        Ok(())
    }
}

impl Drop for LibvirtGuard {
    fn drop(&mut self) {
        let mut vm = self.vm.lock();
        // The job is kept until every prepared disk was read; checkpoints are retired
        // only then (libvirt's checkpoints are per domain, not per disk).
        if vm.job.guard_dropped() {
            vm.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_ids_round_trip_and_reject_others() {
        let c = ChangeId {
            epoch: 4,
            size: 1 << 26,
            granularity: None,
        };
        assert_eq!(
            c.to_string(),
            "libvirt-checkpoint:tapevault-4:size=67108864"
        );
        assert_eq!(ChangeId::parse(&c.to_string()), Some(c.clone()));
        let g = ChangeId {
            granularity: Some(65536),
            ..c
        };
        assert_eq!(
            g.to_string(),
            "libvirt-checkpoint:tapevault-4:size=67108864:granularity=65536"
        );
        assert_eq!(ChangeId::parse(&g.to_string()), Some(g));
        for bad in [
            "",
            "qemu-bitmap:tapevault-1:size=1:granularity=2",
            "libvirt-checkpoint:cp1:size=1",
            "libvirt-checkpoint:tapevault-01:size=1",
            "libvirt-checkpoint:tapevault-1:size=x",
            "libvirt-checkpoint:tapevault-1:size=1:granularity=",
            "libvirt-checkpoint:tapevault-1:size=1:granularity=0",
            "libvirt-checkpoint:tapevault-1:size=1:granularity=x",
        ] {
            assert_eq!(ChangeId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn remote_hosts_and_listen_addresses() {
        assert_eq!(
            uri_host("qemu+ssh://root@kvm1:22/system").as_deref(),
            Some("kvm1")
        );
        assert_eq!(
            uri_host("qemu+tls://kvm2.example/system?x=1").as_deref(),
            Some("kvm2.example")
        );
        assert_eq!(
            uri_host("qemu+tcp://[fd00::1]:16509/system").as_deref(),
            Some("[fd00::1]")
        );
        assert_eq!(uri_host("qemu:///system"), None);
        assert_eq!(remote_host(Some("qemu+unix:///system?socket=/s")), None);
        assert_eq!(
            remote_host(Some("qemu+ssh://kvm1/system")).as_deref(),
            Some("kvm1")
        );
        assert_eq!(
            parse_listen("127.0.0.1:10809").unwrap(),
            ("127.0.0.1".to_string(), 10809)
        );
        assert_eq!(parse_listen("[::1]:5").unwrap(), ("[::1]".to_string(), 5));
        for bad in ["kvm1", ":1", "h:0", "h:x", "h:70000", "a'b:1"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_frozen_count_is_read_from_virsh() {
        assert_eq!(frozen_count("Froze 2 filesystem(s)\n"), Some(2));
        assert_eq!(frozen_count("Froze 0 filesystem(s)"), Some(0));
        assert_eq!(frozen_count(""), None);
        assert_eq!(frozen_count("Froze some"), None);
    }

    fn disk(target: &str, serial: Option<&str>, source: &str) -> DomainDisk {
        DomainDisk {
            target: target.into(),
            device: "disk".into(),
            format: "qcow2".into(),
            source: source.into(),
            size: 1 << 20,
            read_only: false,
            serial: serial.map(str::to_string),
            wwn: None,
        }
    }

    #[test]
    fn identity_is_the_serial_and_doubles_are_refused() {
        let ok = backup_disks(
            "d",
            &[disk("vda", Some("A"), "/a"), disk("vdb", Some("B"), "/b")],
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        let e = backup_disks("d", &[disk("vda", None, "/a")]).unwrap_err();
        assert!(e.contains("no <serial>"), "{e}");
        let e = backup_disks(
            "d",
            &[disk("vda", Some("A"), "/a"), disk("vdb", Some("A"), "/b")],
        )
        .unwrap_err();
        assert!(e.contains("same identity"), "{e}");
        let e = backup_disks(
            "d",
            &[disk("vda", Some("A"), "/a"), disk("vdb", Some("B"), "/a")],
        )
        .unwrap_err();
        assert!(e.contains("same image"), "{e}");
    }
}
