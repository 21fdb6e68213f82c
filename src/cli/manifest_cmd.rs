//! `tapevault manifest new | check`: write a VM manifest with fresh disk UUIDs, and check
//! one as `backup` would before touching the home.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;
use uuid::Uuid;

use super::{usage, Ctx};
use crate::backup::{self, BackupRequest, DiskSpec, Mode};
use crate::error::{Context, Error, Result};
use crate::source::manifest::{check_name, DiskEntry, VmManifest};

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Write a new VM manifest: the VM's name and its disks, each with a fresh UUID.
    ///
    /// Each --disk is LABEL=PATH (the label names the disk as VM/LABEL wherever a disk is
    /// taken, e.g. `restore --disk web01/root`). Paths are written absolute. The disks
    /// must exist (a regular file or a block device). The UUID is the disk's identity
    /// for the catalog from now on: keep the manifest, and give a disk a new UUID only
    /// when it is a new disk. The format is in docs/CLI.md ("VM manifests").
    New(NewArgs),
    /// Check a manifest as `backup --manifest` would, without touching the home.
    ///
    /// The syntax and every field, then each disk (it must open as a regular file or a
    /// block device, no two the same file) and each changed-extents file (it must parse,
    /// lie within its disk and name this disk if it names one). Exit 2 naming the
    /// first problem; 0 with what the manifest describes.
    Check {
        /// The manifest (TOML).
        #[arg(value_name = "VM.toml")]
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The VM's name.
    #[arg(long, value_name = "NAME")]
    pub vm: String,
    /// A disk as LABEL=PATH (repeat for each disk, in order).
    #[arg(long = "disk", value_name = "LABEL=PATH", required = true)]
    pub disks: Vec<String>,
    /// Write the manifest to this file (default: stdout; with --json it is in the
    /// document's `manifest`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long, requires = "out")]
    pub force: bool,
}

#[derive(Serialize)]
struct DiskDoc {
    disk: Uuid,
    disk_label: Option<String>,
    path: PathBuf,
    /// Size in bytes (`manifest check`: as opened).
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    changed_extents: Option<ChangedDoc>,
}

#[derive(Serialize)]
struct ChangedDoc {
    path: PathBuf,
    /// Present when checked: the file's change ids and the bytes its areas cover.
    #[serde(skip_serializing_if = "Option::is_none")]
    from_change_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    change_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed_bytes: Option<u64>,
}

#[derive(Serialize)]
struct ManifestDoc {
    vm: String,
    /// The manifest file (None: `manifest new` printed it).
    path: Option<PathBuf>,
    disks: Vec<DiskDoc>,
    /// The manifest's text (`manifest new` without --out).
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<String>,
}

pub fn manifest(ctx: &Ctx, c: ManifestCommand) -> Result<()> {
    match c {
        ManifestCommand::New(a) => new(ctx, a),
        ManifestCommand::Check { file } => check(ctx, &file),
    }
}

/// `LABEL=PATH`, split at the first `=`.
fn split_disk(s: &str) -> Result<(String, PathBuf)> {
    let Some((label, path)) = s.split_once('=') else {
        return usage(format!(
            "--disk {s:?}: give LABEL=PATH, e.g. --disk root=/var/lib/vms/web01/root.img"
        ));
    };
    let label = label.trim();
    check_name(label, false)
        .map_err(|why| Error::Usage(format!("--disk {s:?}: the label {why}")))?;
    if path.is_empty() {
        return usage(format!("--disk {s:?}: the path is empty"));
    }
    Ok((label.to_string(), PathBuf::from(path)))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(p))
}

fn new(ctx: &Ctx, a: NewArgs) -> Result<()> {
    let vm = a.vm.trim().to_string();
    check_name(&vm, true).map_err(|why| Error::Usage(format!("--vm: the VM name {why}")))?;
    let mut disks: Vec<DiskEntry> = Vec::new();
    for d in &a.disks {
        let (label, path) = split_disk(d)?;
        if let Some(other) = disks.iter().find(|x| x.label.as_deref() == Some(&label)) {
            return usage(format!(
                "--disk {d:?}: label {label:?} is already given to {}; each disk of a VM needs its own label",
                other.path.display()
            ));
        }
        disks.push(DiskEntry {
            id: Uuid::new_v4(),
            label: Some(label),
            path: absolute(&path)?,
            changed_extents: None,
            source: None,
            device: None,
        });
    }
    let m = VmManifest {
        name: vm,
        disks,
        live: None,
    };
    // The disks must open as backup opens them (and not be the same file twice).
    let checked = check_disks(&m)?;
    let text = m.to_toml();
    let mut doc = doc_of(&m, &checked);
    match &a.out {
        Some(out) => {
            write_new(out, &text, a.force)?;
            doc.path = Some(out.clone());
            ctx.out.emit(&doc, || {
                let mut s = format!(
                    "wrote {} for VM {} with {} disk(s):\n",
                    out.display(),
                    doc.vm,
                    doc.disks.len()
                );
                for d in &doc.disks {
                    s.push_str(&format!(
                        "  {}/{} {} {}\n",
                        doc.vm,
                        d.disk_label.as_deref().unwrap_or("-"),
                        d.disk,
                        d.path.display()
                    ));
                }
                s
            });
        }
        None => {
            doc.manifest = Some(text.clone());
            ctx.out.emit(&doc, || text.clone());
        }
    }
    Ok(())
}

/// Create `out` with `text` (never replacing a file without `force`).
fn write_new(out: &Path, text: &str, force: bool) -> Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let mut f = o.open(out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Usage(format!(
                "{} exists; give another --out, or --force to replace it (its disks would get new UUIDs: a new identity for the catalog)",
                out.display()
            ))
        } else {
            Error::Failed(format!("creating {}: {e}", out.display()))
        }
    })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn check_disks(m: &VmManifest) -> Result<backup::Inputs> {
    let mut disks = Vec::new();
    for d in &m.disks {
        let driver = match &d.source {
            Some(s) => Some(
                s.driver()
                    .map_err(|e| Error::Usage(format!("disk {}: {e}", d.id)))?,
            ),
            None => None,
        };
        disks.push(DiskSpec {
            id: d.id,
            label: d.label.clone(),
            path: d.path.clone(),
            changed_extents: d.changed_extents.clone(),
            driver,
        });
    }
    backup::check_inputs(BackupRequest {
        vm_name: Some(m.name.clone()),
        disks,
        pool: String::new(),
        mode: Mode::Auto,
        drives: 1,
        spool: crate::spool::Setting::Size(0),
        spool_dir: None,
    })
}

fn doc_of(m: &VmManifest, checked: &backup::Inputs) -> ManifestDoc {
    let disks = m
        .disks
        .iter()
        .zip(checked.disks())
        .map(|(d, c)| DiskDoc {
            disk: d.id,
            disk_label: d.label.clone(),
            path: d.path.clone(),
            size: c.size(),
            changed_extents: d.changed_extents.as_ref().map(|p| {
                let ce = c.changed_extents();
                ChangedDoc {
                    path: p.clone(),
                    from_change_id: ce.map(|x| x.0.to_string()),
                    change_id: ce.map(|x| x.1.to_string()),
                    changed_bytes: ce.map(|x| x.2),
                }
            }),
        })
        .collect();
    ManifestDoc {
        vm: m.name.clone(),
        path: None,
        disks,
        manifest: None,
    }
}

/// A running VM's manifest: asks QEMU (read-only: nothing is started or removed) which
/// image each named device has open and how large it is.
fn check_live(m: &VmManifest, live: &crate::source::manifest::LiveVm) -> Result<ManifestDoc> {
    use crate::source::qmp::{disks, driver::QMP_TIMEOUT, QmpClient};
    let fail = |e: String| Error::Failed(format!("qmp {}: {e}", live.qmp.display()));
    let mut c = QmpClient::connect(&live.qmp, QMP_TIMEOUT).map_err(|e| fail(e.to_string()))?;
    let found = disks::discover(&mut c).map_err(|e| fail(e.to_string()))?;
    let wanted: Vec<_> = m
        .disks
        .iter()
        .filter_map(|d| d.device.clone().map(|x| (d.id, x)))
        .collect();
    let (chosen, _) = disks::select_by_device(found, &wanted).map_err(fail)?;
    let disks = m
        .disks
        .iter()
        .zip(chosen)
        .map(|(d, (_, vd))| DiskDoc {
            disk: d.id,
            disk_label: d.label.clone(),
            path: PathBuf::from(&vd.filename),
            size: Some(vd.size),
            changed_extents: None,
        })
        .collect();
    Ok(ManifestDoc {
        vm: m.name.clone(),
        path: None,
        disks,
        manifest: None,
    })
}

fn check(ctx: &Ctx, file: &Path) -> Result<()> {
    let m = VmManifest::load(file).map_err(|e| Error::Usage(e.to_string()))?;
    let mut doc = match &m.live {
        Some(live) => check_live(&m, live)?,
        None => doc_of(&m, &check_disks(&m)?),
    };
    doc.path = Some(file.to_path_buf());
    ctx.out.emit(&doc, || {
        let mut s = format!(
            "{}: VM {} with {} disk(s), every input opens as backup needs it:\n",
            file.display(),
            doc.vm,
            doc.disks.len()
        );
        for d in &doc.disks {
            s.push_str(&format!(
                "  {} {} {} ({} bytes){}\n",
                d.disk_label.as_deref().unwrap_or("-"),
                d.disk,
                d.path.display(),
                d.size.unwrap_or(0),
                d.changed_extents
                    .as_ref()
                    .map(|c| format!(
                        ", changed extents {} ({} -> {}, {} bytes)",
                        c.path.display(),
                        c.from_change_id.as_deref().unwrap_or("?"),
                        c.change_id.as_deref().unwrap_or("?"),
                        c.changed_bytes.unwrap_or(0)
                    ))
                    .unwrap_or_default()
            ));
        }
        s
    });
    Ok(())
}
