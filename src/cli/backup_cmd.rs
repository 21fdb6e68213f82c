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
    /// The disk's stable UUID (the hypervisor's); identifies it across backups.
    #[arg(long, value_name = "UUID", requires = "disk")]
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
}

pub fn backup(ctx: &Ctx, a: BackupArgs) -> Result<()> {
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
    let report = backup::run(
        &home,
        &cat,
        lib.as_mut(),
        inputs,
        key,
        wait_for_media,
        &term,
    )?;
    // A pool with `copy_to` has each session copied at its end (pools.toml).
    let copy_to = crate::home::pools_toml::copy_to_of(
        &crate::home::pools_toml::load(&home.dir)?,
        &report.pool,
    );
    drop(lib);
    let (copy, copy_err) = match copy_to {
        None => (None, None),
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
                spool: None,
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
    #[derive(serde::Serialize)]
    struct WithCopy<'a> {
        #[serde(flatten)]
        backup: &'a backup::BackupReport,
        #[serde(skip_serializing_if = "Option::is_none")]
        copy: Option<&'a crate::copy::CopyReport>,
    }
    let doc = WithCopy {
        backup: &report,
        copy: copy.as_ref(),
    };
    if let Some(e) = copy_err {
        let e = Error::Context {
            context: format!(
                "session {} is backed up, but copying it to the pool's copy_to pool failed (run `tapevault copy --session {}` again)",
                report.session, report.session
            ),
            source: Box::new(e),
        };
        return super::shared::fail_with(ctx, e, &doc);
    }
    out.emit(&doc, || {
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
        if let Some(c) = &copy {
            s.push('\n');
            s.push_str(&super::copy_cmd::text(c));
        }
        s
    });
    Ok(())
}
