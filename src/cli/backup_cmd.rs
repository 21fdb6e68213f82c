//! `tapevault backup`.

use std::path::PathBuf;

use clap::Args;
use uuid::Uuid;

use std::io::IsTerminal;

use super::passphrase::passphrase;
use super::shared::open_catalog;
use super::Terminal;
use super::{usage, Ctx};
use crate::backup::{self, BackupRequest, DiskSpec, KeyMaterial, Mode};
use crate::error::{Error, Result};
use crate::source::manifest::VmManifest;
use crate::source::SourceSpec;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("freezer").args(["guest_agent", "libvirt"]).multiple(true)))]
#[command(group(clap::ArgGroup::new("tls_user").args(["disk", "libvirt"]).multiple(true)))]
pub struct BackupArgs {
    /// A VM manifest (TOML: name, [[disk]] id/path/changed_extents).
    #[arg(long, value_name = "VM.toml", conflicts_with_all = ["disk", "disk_id"])]
    pub manifest: Option<PathBuf>,
    /// A raw disk image file or block device, or a disk source: FORMAT:PATH (qcow2:,
    /// vmdk:, raw:, ..., image: for the detected format; served by a private qemu-nbd,
    /// qcow2 bitmaps give incrementals), nbd+unix:///EXPORT?socket=PATH,
    /// nbd://HOST[:PORT]/EXPORT, nbds://... (see "Backup inputs" in docs/CLI.md).
    #[arg(long, value_name = "PATH|SOURCE", requires = "disk_id")]
    pub disk: Option<PathBuf>,
    /// QEMU x509 credentials (ca-cert.pem, client-cert.pem, client-key.pem) for an NBD
    /// --disk over TLS, or for --libvirt's TCP export with TLS (`tls='yes'`: the
    /// hypervisor's qemu.conf sets backup_tls_x509_cert_dir).
    #[arg(long, value_name = "DIR", requires = "tls_user")]
    pub tls_creds_dir: Option<PathBuf>,
    /// The disk's stable UUID (the hypervisor's); identifies it across backups. With
    /// --synthetic-full it alone names the disk (no --disk: the disk is not read).
    #[arg(long, value_name = "UUID")]
    pub disk_id: Option<Uuid>,
    /// Changed extents since the last backup (QueryChangedDiskAreas JSON).
    #[arg(long, value_name = "FILE", requires = "disk")]
    pub changed_extents: Option<PathBuf>,
    /// VM name recorded with a --disk, --qmp or --libvirt backup (default for --libvirt:
    /// the domain name).
    #[arg(long)]
    pub vm: Option<String>,
    /// The disk's label within its VM (as a manifest's `label`): with --vm it names the
    /// disk as VM/LABEL wherever a disk is taken.
    #[arg(long, value_name = "LABEL", requires = "disk", value_parser = parse_label)]
    pub disk_label: Option<String>,
    /// A running QEMU's QMP socket: every writable disk of the VM is backed up from
    /// one point in time (fleecing), incrementals from QEMU's dirty bitmaps; each disk
    /// is identified by its serial or wwn.
    #[arg(long, value_name = "SOCKET", conflicts_with_all = ["manifest", "disk", "disk_id"])]
    pub qmp: Option<PathBuf>,
    /// A running libvirt domain (name or UUID): every writable disk is backed up from
    /// one point in time (`virsh backup-begin` in pull mode), incrementals from
    /// libvirt checkpoints `tapevault-N`; each disk is identified by its <serial> or
    /// <wwn>. The checkpoints' XML is kept in the catalog. With a guest agent channel
    /// in the domain the guest's file systems are frozen around the point in time
    /// (`virsh domfsfreeze`/`domfsthaw`); else, or if the agent does not answer, the
    /// backup is crash-consistent and says why.
    #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["manifest", "disk", "disk_id", "qmp"])]
    pub libvirt: Option<String>,
    /// The libvirt connection URI for --libvirt (default: virsh's, LIBVIRT_DEFAULT_URI).
    /// A local hypervisor exports the disks on a unix socket in --scratch-dir; a remote
    /// one (qemu+ssh://HOST/system, ...) over TCP on HOST port 10809 (--nbd-listen).
    #[arg(long, value_name = "URI", requires = "libvirt")]
    pub connect: Option<String>,
    /// HOST:PORT the domain's QEMU serves the --libvirt export on over TCP (an address
    /// of the hypervisor that this host reaches; TLS with --tls-creds-dir). Default: a
    /// unix socket for a local --connect, the URI's host and port 10809 for a remote one.
    #[arg(long, value_name = "HOST:PORT", requires = "libvirt")]
    pub nbd_listen: Option<String>,
    /// The QEMU guest agent's host-side socket: guest file systems are frozen around
    /// the point in time (filesystem-consistent); without it, or if the agent does not
    /// answer, the backup is crash-consistent and says why.
    #[arg(long, value_name = "SOCKET", requires = "qmp")]
    pub guest_agent: Option<PathBuf>,
    /// Seconds a guest file system freeze may take before the backup goes on
    /// crash-consistent (--guest-agent, or --libvirt with a domain that has a guest
    /// agent channel: `virsh domfsfreeze`).
    #[arg(long, value_name = "SECS", default_value_t = 60, requires = "freezer")]
    pub freeze_timeout: u64,
    /// Where QEMU writes the fleecing scratch images while a backup of a running VM runs
    /// (--qmp, --libvirt, or a manifest with `qmp`), beside the NBD socket (they grow by
    /// the data the guest overwrites meanwhile, at most the disk size; default:
    /// qmp-scratch or libvirt-scratch in the home).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// The pool to write to (default: `default_pool` in the home's config.toml).
    #[arg(long)]
    pub pool: Option<String>,
    /// Drives the backup may write at once: with several disks, each of up to N free
    /// drives takes the next disk (largest first) onto its own cartridge of the pool's
    /// media set. Default: the pool's `drives` in pools.toml, else 1 (the disks one after
    /// the other on one drive)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64), conflicts_with = "synthetic_full")]
    pub drives: Option<u16>,
    /// Take a full backup (it becomes the new base).
    #[arg(long, conflicts_with = "copy")]
    pub full: bool,
    /// Take a one-off full copy that never becomes the base of an incremental.
    #[arg(long)]
    pub copy: bool,
    /// Build a new full image of each disk at its newest restorable point from the chain
    /// already on tape, without reading the disk (it becomes the base of the next
    /// incremental). Disks: --disk-id, --manifest (by id), --vm (every disk of the VM
    /// in the catalog), or none: every disk whose newest point is in the pool.
    #[arg(long, conflicts_with_all = ["full", "copy", "disk", "changed_extents"])]
    pub synthetic_full: bool,
    /// The spool between the disk and the drive (auto, a size such as 4G, or 0 for
    /// none). A source at least as fast as the drive's lowest speed streams through it
    /// (records go to the drive as they come); a slower one is accumulated and written
    /// in bursts long enough to keep the drive's repositioning under 10 % of the time
    /// (sized from the measured source rate and the drive's speeds: its model on a
    /// virtual drive, else the pool's drive_speeds in pools.toml, else 400 MB/s
    /// matching down to 120 MB/s with 3 s per reposition). auto (the default): an
    /// unnamed file of a quarter of the spool directory's free space, at most 8G (128M
    /// in memory, with a warning, when it has less than 1G free); a size from 256M on:
    /// a file of that size; under 256M: in memory, bursting from half of it.
    #[arg(long, value_name = "SIZE", default_value = "auto")]
    pub spool: crate::spool::Setting,
    /// The directory of the spool file (default: the home's spool_dir setting, else
    /// spool/ in the home).
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
}

fn parse_label(s: &str) -> std::result::Result<String, String> {
    let s = s.trim();
    crate::source::manifest::check_name(s, false).map_err(|why| format!("disk label {why}"))?;
    Ok(s.to_string())
}

/// A manifest's disks read from files, images or NBD exports.
fn manifest_disks(vm: VmManifest) -> Result<Vec<DiskSpec>> {
    let mut disks = Vec::new();
    for d in vm.disks {
        let driver = match &d.source {
            Some(s) => Some(
                s.driver()
                    .map_err(|e| Error::Usage(format!("disk {}: {e}", d.id)))?,
            ),
            None => None,
        };
        disks.push(DiskSpec {
            id: d.id,
            label: d.label,
            path: d.path,
            changed_extents: d.changed_extents,
            driver,
        });
    }
    Ok(disks)
}

/// A running VM's disks over QMP (`--qmp`, or a manifest with `qmp`): every writable
/// disk, or those `select` names by device; the ones left out are said.
fn connect_live(
    ctx: &Ctx,
    a: &BackupArgs,
    qmp: &std::path::Path,
    agent: Option<(PathBuf, u64)>,
    select: Option<&[(uuid::Uuid, crate::source::manifest::DeviceMatch)]>,
) -> Result<(crate::source::qmp::driver::SharedVm, Vec<DiskSpec>)> {
    let scratch = a
        .scratch_dir
        .clone()
        .unwrap_or_else(|| ctx.home_dir().join("qmp-scratch"));
    let opts = crate::source::qmp::live::LiveOptions {
        scratch_dir: scratch,
        freeze_timeout: std::time::Duration::from_secs(
            agent.as_ref().map_or(a.freeze_timeout, |x| x.1),
        ),
        agent: agent.map(|x| x.0),
        start_epoch: !a.copy,
    };
    let (vm, (found, left_out)) = crate::source::qmp::driver::QmpVm::connect(qmp, opts, select)
        .map_err(|e| Error::Failed(format!("--qmp {}: {e}", qmp.display())))?;
    if found.is_empty() {
        return usage(format!(
            "--qmp {}: the VM has no writable disk to back up",
            qmp.display()
        ));
    }
    for d in &left_out {
        ctx.out.note(format!(
            "disk {} of the VM ({}, {}) is not in the manifest: not backed up",
            d.device_name(),
            d.identity_source(),
            d.filename
        ));
    }
    let disks = found
        .into_iter()
        .map(|(id, d)| DiskSpec {
            id,
            label: None,
            path: PathBuf::from(&d.filename),
            changed_extents: None,
            driver: Some(crate::source::qmp::driver::QmpDisk::handle(&vm, id, d)),
        })
        .collect();
    Ok((vm, disks))
}

pub fn backup(ctx: &Ctx, a: BackupArgs) -> Result<()> {
    if a.synthetic_full {
        return super::synthetic_cmd::synthetic_full(ctx, &a);
    }
    if a.disk_id.is_some() && a.disk.is_none() {
        return usage(
            "--disk-id needs --disk PATH (the disk to read), except with --synthetic-full",
        );
    }
    if a.scratch_dir.is_some() && a.qmp.is_none() && a.libvirt.is_none() && a.manifest.is_none() {
        return usage(
            "--scratch-dir applies to a running VM (--qmp, --libvirt, or a manifest with qmp)",
        );
    }
    let mut live_vm = None;
    let mut domain = None;
    let (vm_name, disks) = if let Some(dom) = &a.libvirt {
        if let Some(l) = &a.nbd_listen {
            crate::source::libvirt::driver::parse_listen(l).map_err(Error::Usage)?;
        }
        if a.tls_creds_dir.is_some()
            && a.nbd_listen.is_none()
            && crate::source::libvirt::domain::is_local_uri(a.connect.as_deref())
        {
            return usage(
                "--tls-creds-dir with --libvirt applies to a TCP export: give --nbd-listen HOST:PORT (a local connection exports on a unix socket, which needs no TLS)",
            );
        }
        let opts = crate::source::libvirt::driver::LibvirtOptions {
            scratch_dir: a
                .scratch_dir
                .clone()
                .unwrap_or_else(|| ctx.home_dir().join("libvirt-scratch")),
            home: ctx.home_dir(),
            start_epoch: !a.copy,
            freeze_timeout: std::time::Duration::from_secs(a.freeze_timeout),
            listen: a.nbd_listen.clone(),
            tls_dir: a.tls_creds_dir.clone(),
        };
        let (d, found) =
            crate::source::libvirt::driver::LibvirtVm::connect(dom, a.connect.clone(), opts)
                .map_err(|e| Error::Failed(format!("--libvirt {dom}: {e}")))?;
        if found.is_empty() {
            return usage(format!(
                "--libvirt {dom}: the domain has no writable disk to back up"
            ));
        }
        let disks = found
            .into_iter()
            .map(|(id, disk)| DiskSpec {
                id,
                label: None,
                path: PathBuf::from(&disk.source),
                changed_extents: None,
                driver: Some(crate::source::libvirt::driver::LibvirtDisk::handle(
                    &d, id, disk,
                )),
            })
            .collect();
        let name = a.vm.clone().or_else(|| Some(d.name()));
        domain = Some(d);
        (name, disks)
    } else if let Some(qmp) = &a.qmp {
        let agent = a.guest_agent.clone().map(|g| (g, a.freeze_timeout));
        let (vm, disks) = connect_live(ctx, &a, qmp, agent, None)?;
        let name = a.vm.clone().or_else(|| vm.name());
        live_vm = Some(vm);
        (name, disks)
    } else if let Some(m) = &a.manifest {
        let vm = VmManifest::load(m).map_err(|e| Error::Usage(e.to_string()))?;
        if let Some(live) = &vm.live {
            // A running VM: its disks by serial/WWN, under the manifest's ids and labels.
            let agent = live
                .guest_agent
                .clone()
                .map(|g| (g, live.freeze_timeout.unwrap_or(a.freeze_timeout)));
            let wanted: Vec<_> = vm
                .disks
                .iter()
                .filter_map(|d| d.device.clone().map(|m| (d.id, m)))
                .collect();
            let (handle, mut disks) = connect_live(ctx, &a, &live.qmp, agent, Some(&wanted))?;
            for d in &mut disks {
                d.label = vm
                    .disks
                    .iter()
                    .find(|e| e.id == d.id)
                    .and_then(|e| e.label.clone());
            }
            live_vm = Some(handle);
            (Some(vm.name), disks)
        } else {
            let name = vm.name.clone();
            (Some(name), manifest_disks(vm)?)
        }
    } else if let (Some(path), Some(id)) = (a.disk.clone(), a.disk_id) {
        let text = path.to_string_lossy();
        let (path, driver) = if SourceSpec::looks_like(&text) {
            let spec =
                SourceSpec::parse(&text, std::path::Path::new(""), a.tls_creds_dir.as_deref())
                    .map_err(|e| Error::Usage(format!("--disk: {e}")))?;
            let driver = spec
                .driver()
                .map_err(|e| Error::Usage(format!("disk {id}: {e}")))?;
            (spec.display_path(), Some(driver))
        } else {
            if a.tls_creds_dir.is_some() {
                return usage(
                    "--tls-creds-dir applies to an NBD --disk (nbd://, nbds://, nbd+unix://) only",
                );
            }
            (path, None)
        };
        (
            a.vm.clone(),
            vec![DiskSpec {
                id,
                label: a.disk_label.clone(),
                path,
                changed_extents: a.changed_extents.clone(),
                driver,
            }],
        )
    } else {
        return usage(
            "give --manifest VM.toml, --disk PATH --disk-id UUID, --qmp SOCKET or --libvirt DOMAIN",
        );
    };
    let mode = if a.full {
        Mode::Full
    } else if a.copy {
        Mode::Copy
    } else {
        Mode::Auto
    };
    if let Some(vm) = &vm_name {
        super::job::add_vm(vm);
    }
    let pool_name = ctx.pool_or_default(a.pool.clone())?;
    let req = BackupRequest {
        vm_name,
        disks,
        pool: pool_name.clone(),
        mode,
        drives: a.drives.map_or(1, usize::from),
        spool: a.spool,
        spool_dir: a.spool_dir.clone(),
    };
    // Every input is checked before the home is touched: bad input is a usage error
    // that leaves no session behind.
    let inputs = backup::check_inputs(req)?;
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let pool = cat.pool(&pool_name)?.ok_or_else(|| {
        Error::Usage(format!(
            "no pool named {pool_name}: create it with `tapevault pool create {pool_name}`"
        ))
    })?;
    let key = match &pool.key_fingerprint {
        Some(fp) => {
            let name = pool.key_name.clone().unwrap_or_else(|| fp.clone());
            let pass = passphrase(&ctx.global, &format!("key {name}"), false)?;
            let ks = crate::crypto::Keystore::open(&home.dir)?;
            let key = ks.unlock(fp, pass.as_bytes())?;
            if pool.escrow {
                // This passphrase wraps the key on every label the pool writes, where
                // anyone holding a cartridge can guess offline.
                super::passphrase::check_policy(
                    &pass,
                    &format!(
                        "key {name}, which pool {} escrows on every label (change it with `tapevault key change-passphrase {name}`)",
                        pool.name
                    ),
                )?;
            }
            Some(KeyMaterial {
                key,
                passphrase: Some(pass),
            })
        }
        None => None,
    };
    let mut lib = home.open_library()?;
    let out = ctx.out;
    // Notes (why a kind was chosen, fallbacks, cartridges joining a set) go to stderr
    // with --json too: the JSON result on stdout stays one document.
    let term = Terminal::new(out);
    // A pool with `copy_to` has each session copied at its end (pools.toml): with one
    // drive through its `copy_spool`. Read (and checked) before anything is written.
    let pools_file = crate::home::pools_toml::load(&home.dir)?;
    let copy_to = crate::home::pools_toml::copy_to_of(&pools_file, &pool_name);
    let copy_spool =
        crate::home::pools_toml::copy_spool_of(&pools_file, &pool_name).map_err(Error::Usage)?;
    let one_drive_no_spool = copy_to.is_some() && lib.drive_count() < 2 && copy_spool.is_none();
    if let (Some(to), true) = (&copy_to, one_drive_no_spool) {
        let ev: &dyn crate::events::Events = &term;
        ev.note(
            crate::events::NoteKind::Decision,
            format!(
                "pool {pool_name} copies each session to pool {to} (copy_to), but the library has one drive and pools.toml gives pool {pool_name} no copy_spool: the session is backed up, and the copy will not be made"
            ),
        );
    }
    // Drives at once: --drives, else the pool's `drives` in pools.toml, else 1.
    let inputs = match (
        a.drives,
        crate::home::pools_toml::drives_of(&pools_file, &pool_name),
    ) {
        (None, Some(n)) => inputs.with_drives(n),
        _ => inputs,
    };
    // Wait for a cartridge only when a person can insert it.
    let wait_for_media = term.interactive() && std::io::stdin().is_terminal();
    let pass = key.as_ref().and_then(|k| k.passphrase.clone());
    let report = backup::run(
        &home,
        &cat,
        lib.as_mut(),
        inputs,
        key,
        wait_for_media,
        &term,
    );
    let live_summary = live_vm.as_ref().map(|vm| vm.summary());
    if let Some(s) = &live_summary {
        if !s.removed.is_empty() {
            out.note(format!(
                "removed what an interrupted backup left in QEMU: {}",
                s.removed.join(", ")
            ));
        }
        if let Some(c) = &s.consistency {
            out.note(format!("point in time of the VM: {c}"));
        }
    }
    let domain_summary = domain.as_ref().map(|d| d.summary());
    if let (Some(d), Some(s)) = (&domain, &domain_summary) {
        if !s.removed.is_empty() {
            out.note(format!(
                "removed what an interrupted backup left in libvirt: {}",
                s.removed.join(", ")
            ));
        }
        for n in &s.notes {
            out.note(n.clone());
        }
        if let (Some(c), true) = (&s.new_checkpoint, report.is_ok()) {
            out.note(format!(
                "point in time of domain {}: {} (all disks in one libvirt backup job); next epoch: checkpoint {c}{}",
                d.name(),
                match &s.consistency {
                    Some(c) => c.to_string(),
                    None => "crash-consistent".to_string(),
                },
                if s.retired.is_empty() {
                    String::new()
                } else {
                    format!("; retired checkpoint(s) {}", s.retired.join(", "))
                }
            ));
        }
    }
    let report = report?;
    // The VM's point-in-time exports are no longer needed (a synthetic full and a copy
    // read tape).
    drop(live_vm);
    drop(domain);
    // Incremental forever: the pool's policy may ask for a synthetic full of the disks
    // just backed up (said on stderr, and in the result).
    let due = super::synthetic_cmd::due_disks(&home, &cat, &pool_name, &report)?;
    let (synthetic, synthetic_err) = if due.is_empty() {
        (None, None)
    } else {
        match super::synthetic_cmd::run_due(
            ctx,
            &home,
            &cat,
            lib.as_mut(),
            &pool,
            pass,
            &due,
            wait_for_media,
            &term,
        ) {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        }
    };
    drop(lib);
    let (copy, copy_err) = match copy_to {
        None => (None, None),
        // One drive and no spool: refused with the way out; the session stands.
        Some(to) if one_drive_no_spool => (
            None,
            Some(Error::Usage(format!(
                "the library has one drive, and a copy reads one cartridge while it writes another: set copy_spool = \"DIR\" and copy_spool_size = \"SIZE\" for pool {} in pools.toml to stage each copy through a spool directory, or run `tapevault copy --session {} --to-pool {to} --spool DIR --spool-size SIZE`",
                report.pool, report.session
            ))),
        ),
        Some(to) => {
            let ev: &dyn crate::events::Events = &term;
            ev.note(
                crate::events::NoteKind::Decision,
                format!(
                    "pool {} copies each session to pool {to} (copy_to in pools.toml): copying session {}",
                    report.pool, report.session
                ),
            );
            let req = crate::copy::CopyRequest {
                selection: crate::copy::Selection::Session(report.session),
                to_pool: to,
                from_pool: None,
                spool: copy_spool.clone(),
                wait_for_media,
            };
            match super::copy_cmd::run_copy(ctx, &home, &cat, &req, &term) {
                Ok(r) => {
                    let refused = super::copy_cmd::refused_error(&r).err();
                    (Some(r), refused)
                }
                Err(e) => (None, Some(e)),
            }
        }
    };
    /// A backup's result with what its pool's policies did after it: the synthetic
    /// fulls `synthetic_full` made and the copy `copy_to` made.
    #[derive(serde::Serialize)]
    struct BackupDoc<'a> {
        #[serde(flatten)]
        backup: &'a backup::BackupReport,
        #[serde(skip_serializing_if = "Option::is_none")]
        synthetic: Option<&'a crate::synthetic::SyntheticReport>,
        #[serde(skip_serializing_if = "Option::is_none")]
        copy: Option<&'a crate::copy::CopyReport>,
        #[serde(skip_serializing_if = "Option::is_none")]
        point_in_time: Option<PointInTimeDoc>,
    }
    let doc = BackupDoc {
        backup: &report,
        synthetic: synthetic.as_ref(),
        copy: copy.as_ref(),
        point_in_time: live_summary
            .map(PointInTimeDoc::of)
            .or_else(|| domain_summary.map(PointInTimeDoc::of_domain)),
    };
    let text = || {
        let mut s = format!(
            "session {} complete: {} image(s) in media set {} of pool {}{}",
            report.session,
            report.images.len(),
            report.media_set,
            report.pool,
            report
                .snapshot
                .as_ref()
                .map(|s| format!("; catalog snapshot on {} file {}", s.barcode, s.tape_file))
                .unwrap_or_default()
        );
        if let Some(r) = &synthetic {
            s.push('\n');
            s.push_str(&super::synthetic_cmd::report_text(r));
        }
        if let Some(c) = &copy {
            s.push('\n');
            s.push_str(&super::copy_cmd::text(c));
        }
        s
    };
    // The backup stands (it is committed) whatever followed it; a failed step is the
    // command's error, after what was done is said.
    let failed = match (synthetic_err, copy_err) {
        (Some(e), _) => Some(Error::Context {
            context: format!(
                "session {} is complete, but the synthetic full its pool's policy asked for failed",
                report.session
            ),
            source: Box::new(e),
        }),
        (None, Some(e)) => Some(Error::Context {
            context: format!(
                "session {} is backed up, but copying it to the pool's copy_to pool failed (run `tapevault copy --session {}` again)",
                report.session, report.session
            ),
            source: Box::new(e),
        }),
        (None, None) => None,
    };
    if let Some(e) = failed {
        if !out.json {
            println!("{}", text());
        }
        return super::shared::fail_with(ctx, e, &doc);
    }
    out.emit(&doc, text);
    Ok(())
}

/// What a backup of a running VM says of its point in time (`point_in_time` in
/// `backup --json`, docs/JSON.md).
#[derive(serde::Serialize)]
struct PointInTimeDoc {
    /// How the disks were read: `qmp` (a running QEMU) or `libvirt` (a domain's backup
    /// job).
    driver: &'static str,
    /// `filesystem` (the guest agent froze the file systems around the instant),
    /// `crash` (every disk at the same instant, as after a power cut), or `none` when
    /// the backup ended before the instant was taken.
    consistency: &'static str,
    /// File systems the guest agent froze (filesystem consistency only).
    frozen_filesystems: Option<u64>,
    /// Why the backup is only crash-consistent (no agent given, or what it answered).
    reason: Option<String>,
    /// What an interrupted earlier backup had left in QEMU and this one removed.
    removed_leftovers: Vec<String>,
}

impl PointInTimeDoc {
    fn of(s: crate::source::qmp::driver::VmSummary) -> PointInTimeDoc {
        use crate::source::qmp::live::Consistency;
        let (consistency, frozen_filesystems, reason) = match s.consistency {
            Some(Consistency::Filesystem { frozen }) => ("filesystem", Some(frozen), None),
            Some(Consistency::Crash { reason }) => ("crash", None, Some(reason)),
            None => ("none", None, None),
        };
        PointInTimeDoc {
            driver: "qmp",
            consistency,
            frozen_filesystems,
            reason,
            removed_leftovers: s.removed,
        }
    }

    fn of_domain(s: crate::source::libvirt::driver::DomainSummary) -> PointInTimeDoc {
        use crate::source::qmp::live::Consistency;
        let (consistency, frozen_filesystems, reason) = match s.consistency {
            None => ("none", None, None),
            Some(Consistency::Filesystem { frozen }) => ("filesystem", Some(frozen), None),
            Some(Consistency::Crash { reason }) => ("crash", None, Some(reason)),
        };
        PointInTimeDoc {
            driver: "libvirt",
            consistency,
            frozen_filesystems,
            reason,
            removed_leftovers: s.removed,
        }
    }
}
