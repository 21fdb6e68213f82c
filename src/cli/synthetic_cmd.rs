//! `tapevault backup --synthetic-full`, and the synthetic full a pool's policy asks for
//! after a plain `backup`.

use std::io::IsTerminal;

use uuid::Uuid;

use super::backup_cmd::BackupArgs;
use super::passphrase::passphrase;
use super::shared::{open_catalog, unlock_keys};
use super::{human_bytes, usage, Ctx, Terminal};
use crate::backup::{BackupReport, KeyMaterial};
use crate::catalog::{At, Catalog, PoolRow};
use crate::codec::KeyRing;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::home::{pools_toml, Home};
use crate::source::manifest::VmManifest;
use crate::synthetic::{self, Choice, SyntheticReport, Wanted};
use tape_devices::changer::TapeLibrary;

/// `backup --synthetic-full`.
pub fn synthetic_full(ctx: &Ctx, a: &BackupArgs) -> Result<()> {
    let pool_name = ctx.pool_or_default(a.pool.clone())?;
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let pool = cat.pool(&pool_name)?.ok_or_else(|| {
        Error::Usage(format!(
            "no pool named {pool_name}: create it with `tapevault pool create {pool_name}`"
        ))
    })?;
    let disks = selected_disks(&cat, a, &pool_name)?;
    let wanted: Vec<Wanted> = disks
        .into_iter()
        .map(|disk| Wanted { disk, due: None })
        .collect();
    let pass = pool_passphrase(ctx, &pool)?;
    let mut lib = home.open_library()?;
    let term = Terminal::new(ctx.out);
    let wait_for_media = term.interactive() && std::io::stdin().is_terminal();
    let r = run_due(
        ctx,
        &home,
        &cat,
        lib.as_mut(),
        &pool,
        pass,
        &wanted,
        wait_for_media,
        &term,
    );
    match r {
        Ok(report) => {
            ctx.out.emit(&report, || report_text(&report));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The disks `backup --synthetic-full` was asked for.
fn selected_disks(cat: &Catalog, a: &BackupArgs, pool: &str) -> Result<Vec<Uuid>> {
    let known = cat.known_disks()?;
    let check = |d: Uuid| -> Result<Uuid> {
        if known.iter().any(|(k, _, _)| *k == d) {
            Ok(d)
        } else {
            Err(Error::Usage(format!(
                "disk {d} has no images in the catalog: a synthetic full is built from a chain on tape (known disks: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known
                        .iter()
                        .map(|(k, _, _)| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )))
        }
    };
    if let Some(m) = &a.manifest {
        let vm = VmManifest::load(m).map_err(|e| Error::Usage(e.to_string()))?;
        return vm.disks.iter().map(|d| check(d.id)).collect();
    }
    if let Some(d) = a.disk_id {
        return Ok(vec![check(d)?]);
    }
    if let Some(vm) = &a.vm {
        let v: Vec<Uuid> = known
            .iter()
            .filter(|(_, name, _)| name.as_deref() == Some(vm.as_str()))
            .map(|(d, _, _)| *d)
            .collect();
        if v.is_empty() {
            return usage(format!(
                "no disk in the catalog was last backed up from VM {vm:?}; give --disk-id UUID"
            ));
        }
        return Ok(v);
    }
    // Every disk whose newest base is in the pool.
    let mut v = Vec::new();
    for (d, _, _) in &known {
        if let Some(img) = cat.newest_good_image(*d)? {
            if img.pool.as_deref() == Some(pool) {
                v.push(*d);
            }
        }
    }
    if v.is_empty() {
        return usage(format!(
            "no disk's newest restore point is in pool {pool}: give --disk-id UUID, --vm NAME or --manifest VM.toml"
        ));
    }
    Ok(v)
}

/// The pool key's passphrase (None for a clear pool), checked like a backup checks it.
fn pool_passphrase(ctx: &Ctx, pool: &PoolRow) -> Result<Option<String>> {
    let Some(fp) = &pool.key_fingerprint else {
        return Ok(None);
    };
    let name = pool.key_name.clone().unwrap_or_else(|| fp.clone());
    let pass = passphrase(&ctx.global, &format!("key {name}"), false)?;
    if pool.escrow {
        super::passphrase::check_policy(
            &pass,
            &format!(
                "key {name}, which pool {} escrows on every label (change it with `tapevault key change-passphrase {name}`)",
                pool.name
            ),
        )?;
    }
    Ok(Some(pass))
}

/// Disks of a finished backup whose pool policy asks for a synthetic full now.
pub fn due_disks(
    home: &Home,
    cat: &Catalog,
    pool: &str,
    report: &BackupReport,
) -> Result<Vec<Wanted>> {
    let policy = pools_toml::synthetic_policy_of(&pools_toml::load(&home.dir)?, pool);
    if policy == synthetic::SyntheticPolicy::Off {
        return Ok(Vec::new());
    }
    let now = crate::home::clock::now();
    let mut out = Vec::new();
    for img in &report.images {
        let Some(base) = cat.newest_good_image(img.disk)? else {
            continue;
        };
        let chain = cat.restore_chain(img.disk, At::Image(base.uuid))?;
        if let Some(why) = policy.due(&chain, now) {
            out.push(Wanted {
                disk: img.disk,
                due: Some(why),
            });
        }
    }
    Ok(out)
}

/// Unlock the keys and build the synthetic fulls of `wanted` into `pool`.
#[allow(clippy::too_many_arguments)]
pub fn run_due(
    ctx: &Ctx,
    home: &Home,
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    pool: &PoolRow,
    pool_pass: Option<String>,
    wanted: &[Wanted],
    wait_for_media: bool,
    events: &dyn Events,
) -> Result<SyntheticReport> {
    // The keys the chains need: the pool's own (unlocked with the passphrase already
    // given) and any other, asked for once each; and the chains' cartridges (those of
    // pools with drive encryption get their drive key loaded on mount, below).
    let mut fps: Vec<String> = Vec::new();
    let mut chain_barcodes: Vec<String> = Vec::new();
    for w in wanted {
        if let Ok(Choice::Build { chain, .. }) = synthetic::point::choose(cat, w.disk) {
            for i in &chain {
                if let Some(fp) = &i.key_fingerprint {
                    if !fps.contains(fp) {
                        fps.push(fp.clone());
                    }
                }
                for seg in cat.segments(i.uuid)? {
                    if !chain_barcodes.contains(&seg.barcode) {
                        chain_barcodes.push(seg.barcode);
                    }
                }
            }
        }
    }
    let pool_fp = pool.key_fingerprint.clone();
    let others: Vec<String> = fps
        .iter()
        .filter(|f| Some(*f) != pool_fp.as_ref() || pool_pass.is_none())
        .cloned()
        .collect();
    let mut keys: KeyRing = unlock_keys(ctx, home, &others)?;
    let ks = match &pool_fp {
        Some(_) => Some(crate::crypto::Keystore::open(&home.dir)?),
        None => None,
    };
    if let (Some(fp), Some(pass), Some(ks)) = (&pool_fp, &pool_pass, &ks) {
        if fps.contains(fp) {
            keys.add(ks.unlock(fp, pass.as_bytes())?);
        }
    }
    super::shared::expect_drive_reads(ctx, home, cat, &chain_barcodes, &keys)?;
    let write_key = || -> Result<Option<KeyMaterial>> {
        match (&pool_fp, &pool_pass, &ks) {
            (Some(fp), Some(pass), Some(ks)) => Ok(Some(KeyMaterial {
                key: ks.unlock(fp, pass.as_bytes())?,
                passphrase: Some(pass.clone()),
            })),
            (Some(fp), _, _) => Err(Error::Key(format!(
                "pool {} is encrypted with key {fp}; unlock it to write a synthetic full",
                pool.name
            ))),
            _ => Ok(None),
        }
    };
    synthetic::run(
        home,
        cat,
        lib,
        &pool.name,
        wanted,
        &keys,
        &write_key,
        wait_for_media,
        events,
    )
}

/// The text result of synthetic fulls, one line per disk.
pub(super) fn report_text(r: &SyntheticReport) -> String {
    let mut lines = Vec::new();
    for d in &r.disks {
        if let Some(why) = &d.skipped {
            lines.push(format!("disk {}: no synthetic full: {why}", d.disk));
            continue;
        }
        let Some(s) = &d.session else { continue };
        for img in &s.images {
            lines.push(format!(
                "disk {}: synthetic full {} of image {}{} written in session {} to {} of pool {}: {}, wrote {} stored in {:.1} s; checked block for block against the point",
                d.disk,
                img.image,
                d.point.map(|p| p.to_string()).unwrap_or_default(),
                d.due.as_deref().map(|w| format!(" (due: {w})")).unwrap_or_default(),
                s.session,
                img.cartridges.join(", "),
                r.pool,
                if d.mode == "stream" {
                    format!(
                        "staged the {} incremental(s) from {} in {:.1} s and streamed the full from another drive while writing, {} read in all",
                        d.chain.len().saturating_sub(1),
                        d.read_cartridges.join(", "),
                        d.read_seconds,
                        human_bytes(d.read_bytes)
                    )
                } else {
                    format!(
                        "read {} image(s) ({}) from {} in {:.1} s",
                        d.chain.len(),
                        human_bytes(d.read_bytes),
                        d.read_cartridges.join(", "),
                        d.read_seconds
                    )
                },
                human_bytes(img.stored_bytes),
                img.seconds
            ));
        }
    }
    lines.join("\n")
}
