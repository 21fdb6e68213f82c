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

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A VM manifest (TOML: name, [[disk]] id/path/changed_extents).
    #[arg(long, value_name = "VM.toml", conflicts_with_all = ["disk", "disk_id"])]
    pub manifest: Option<PathBuf>,
    /// A disk image file or block device.
    #[arg(long, value_name = "PATH", requires = "disk_id")]
    pub disk: Option<PathBuf>,
    /// The disk's stable UUID (the hypervisor's); identifies it across backups. With
    /// --synthetic-full it alone names the disk (no --disk: the disk is not read).
    #[arg(long, value_name = "UUID")]
    pub disk_id: Option<Uuid>,
    /// Changed extents since the last backup (QueryChangedDiskAreas JSON).
    #[arg(long, value_name = "FILE", requires = "disk")]
    pub changed_extents: Option<PathBuf>,
    /// VM name recorded with a --disk backup.
    #[arg(long)]
    pub vm: Option<String>,
    /// The pool to write to (default: `default_pool` in the home's config.toml).
    #[arg(long)]
    pub pool: Option<String>,
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
    let (vm_name, disks) = if let Some(m) = &a.manifest {
        let vm = VmManifest::load(m).map_err(|e| Error::Usage(e.to_string()))?;
        let disks = vm
            .disks
            .into_iter()
            .map(|d| DiskSpec {
                id: d.id,
                path: d.path,
                changed_extents: d.changed_extents,
            })
            .collect();
        (Some(vm.name), disks)
    } else if let (Some(path), Some(id)) = (a.disk.clone(), a.disk_id) {
        (
            a.vm.clone(),
            vec![DiskSpec {
                id,
                path,
                changed_extents: a.changed_extents.clone(),
            }],
        )
    } else {
        return usage("give --manifest VM.toml, or --disk PATH --disk-id UUID");
    };
    let mode = if a.full {
        Mode::Full
    } else if a.copy {
        Mode::Copy
    } else {
        Mode::Auto
    };
    let pool_name = ctx.pool_or_default(a.pool.clone())?;
    let req = BackupRequest {
        vm_name,
        disks,
        pool: pool_name.clone(),
        mode,
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
    )?;
    // Incremental forever: the pool's policy may ask for a synthetic full of the disks
    // just backed up (said on stderr, and in the result).
    let due = super::synthetic_cmd::due_disks(&home, &cat, &pool_name, &report)?;
    if !due.is_empty() {
        let synth = super::synthetic_cmd::run_due(
            ctx,
            &home,
            &cat,
            lib.as_mut(),
            &pool,
            pass,
            &due,
            wait_for_media,
            &term,
        );
        return super::synthetic_cmd::emit_with_backup(ctx, &report, synth);
    }
    out.emit(&report, || {
        format!(
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
        )
    });
    Ok(())
}
