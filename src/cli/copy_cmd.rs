//! `tapevault copy`: duplicate restore points into another pool, tape to tape.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use uuid::Uuid;

use super::passphrase::passphrase;
use super::shared::{expect_drive_reads, fail_with, open_catalog, unlock_keys};
use super::{Ctx, Terminal};
use crate::backup::KeyMaterial;
use crate::catalog::Catalog;
use crate::copy::{self, CopyReport, CopyRequest, Selection, Spool};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::home::Home;

#[derive(Debug, Args)]
#[command(after_help = "\
Each restore point selected is read whole from its original (or, when the original's \
cartridges are offsite, exported or damaged, from a copy that is in the library), every \
record checked, and written to the target pool under that pool's policy: its compression \
and its key (records are decrypted with the source key and sealed again with fresh \
nonces). A copy counts only once it is on tape, flushed, and its content digest matched \
the original's; a failed or killed copy is never counted and the source is only read. \
Points already copied to the pool are skipped; points that cannot be restored are \
refused with the reason (exit 3).

With two or more drives the source is read on one while the copy is written on another. \
With one drive, --spool DIR --spool-size SIZE stages the records (as on tape: an \
encrypted image stays encrypted) in DIR, at most SIZE bytes at a time.

Exit codes: 0 copied (or nothing to copy), 2 bad usage (one drive without --spool, an \
image larger than the spool, nothing selected), 3 a selected point cannot be restored or \
a copy failed its checks, 4 a source cartridge is not in the library or no cartridge of \
the target pool, 5 a key is missing or the passphrase is wrong.")]
pub struct CopyArgs {
    /// The pool the copies are written to.
    #[arg(long, value_name = "POOL")]
    pub to_pool: String,
    /// Only images of this pool.
    #[arg(long, value_name = "POOL")]
    pub from_pool: Option<String>,
    /// Every image of this disk.
    #[arg(long, value_name = "UUID", group = "what")]
    pub disk: Option<Uuid>,
    /// Every image of this VM (its name as backed up).
    #[arg(long, value_name = "NAME", group = "what")]
    pub vm: Option<String>,
    /// The images of one backup session.
    #[arg(long, value_name = "UUID", group = "what")]
    pub session: Option<Uuid>,
    /// The images written to one media set.
    #[arg(long, value_name = "UUID", group = "what")]
    pub media_set: Option<Uuid>,
    /// One image.
    #[arg(long, value_name = "UUID", group = "what")]
    pub image: Option<Uuid>,
    /// Every restore point that has no complete copy in --to-pool yet.
    #[arg(long, group = "what")]
    pub all_uncopied: bool,
    /// With one drive: stage records in this directory.
    #[arg(long, value_name = "DIR", requires = "spool_size")]
    pub spool: Option<PathBuf>,
    /// The most bytes the spool directory may hold at once (e.g. 64G).
    #[arg(long, value_name = "SIZE", value_parser = copy::parse_size, requires = "spool")]
    pub spool_size: Option<u64>,
}

pub fn copy(ctx: &Ctx, a: CopyArgs) -> Result<()> {
    let selection = if let Some(d) = a.disk {
        Selection::Disk(d)
    } else if let Some(v) = a.vm {
        Selection::Vm(v)
    } else if let Some(s) = a.session {
        Selection::Session(s)
    } else if let Some(m) = a.media_set {
        Selection::MediaSet(m)
    } else if let Some(i) = a.image {
        Selection::Image(i)
    } else if a.all_uncopied {
        Selection::AllUncopied
    } else {
        return super::usage(
            "say what to copy: --disk UUID, --vm NAME, --session UUID, --media-set UUID, --image UUID or --all-uncopied",
        );
    };
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let term = Terminal::new(ctx.out);
    let req = CopyRequest {
        selection,
        to_pool: a.to_pool,
        from_pool: a.from_pool,
        spool: match (a.spool, a.spool_size) {
            (Some(dir), Some(size)) => Some(Spool { dir, size }),
            _ => None,
        },
        wait_for_media: term.interactive() && std::io::stdin().is_terminal(),
    };
    let report = match run_copy(ctx, &home, &cat, &req, &term) {
        Ok(r) => r,
        Err(e) => return fail_with(ctx, e, &serde_json::json!({})),
    };
    match refused_error(&report) {
        Ok(()) => {
            ctx.out.emit(&report, || text(&report));
            Ok(())
        }
        Err(e) => {
            if !ctx.out.json {
                println!("{}", text(&report));
            }
            fail_with(ctx, e, &report)
        }
    }
}

pub(super) fn text(r: &CopyReport) -> String {
    let mut s = String::new();
    for c in &r.copied {
        s.push_str(&format!(
            "copied image {} ({} of disk {}) as {} on {}{}\n",
            c.original,
            c.kind,
            c.disk,
            c.copy,
            c.cartridges.join(", "),
            if c.read_from != c.original {
                format!(" (read from copy {})", c.read_from)
            } else {
                String::new()
            }
        ));
    }
    for a in &r.already_copied {
        s.push_str(&format!(
            "image {} already has copy {} in pool {}\n",
            a.original, a.copy, r.to_pool
        ));
    }
    for f in &r.refused {
        s.push_str(&format!("refused image {}: {}\n", f.image, f.reason));
    }
    s.push_str(&format!(
        "{} image(s) copied to pool {} ({} bytes, {} mode){}",
        r.copied.len(),
        r.to_pool,
        r.bytes,
        r.mode,
        r.session
            .map(|u| format!(" in session {u}"))
            .unwrap_or_default()
    ));
    s
}

/// Selected points that could not be copied make the command fail (exit 3).
pub(super) fn refused_error(r: &CopyReport) -> Result<()> {
    match r.refused.first() {
        None => Ok(()),
        Some(f) => Err(Error::Integrity(format!(
            "{} selected image(s) cannot be copied; image {} of disk {}: {}",
            r.refused.len(),
            f.image,
            f.disk,
            f.reason
        ))),
    }
}

/// Select, unlock the keys, open the library twice (one handle reads, one writes) and
/// run the copy. Shared by `copy` and a backup whose pool has `copy_to`.
pub(super) fn run_copy(
    ctx: &Ctx,
    home: &Home,
    cat: &Catalog,
    req: &CopyRequest,
    events: &dyn Events,
) -> Result<CopyReport> {
    let pool = cat.pool(&req.to_pool)?.ok_or_else(|| {
        let known: Vec<String> = cat
            .pools()
            .map(|v| v.into_iter().map(|p| p.name).collect())
            .unwrap_or_default();
        Error::Usage(format!(
            "no pool named {}: the pools are {}; create it with `tapevault pool create {}`",
            req.to_pool,
            if known.is_empty() {
                "none yet".into()
            } else {
                known.join(", ")
            },
            req.to_pool
        ))
    })?;
    let selected = copy::select(cat, &req.selection, &pool.name, req.from_pool.as_deref())?;
    let mut lib = home.open_library()?;
    if !selected.to_copy.is_empty() && lib.drive_count() < 2 && req.spool.is_none() {
        return Err(Error::Usage(
            "the library has one drive: a copy reads one cartridge while it writes another; give --spool DIR --spool-size SIZE to stage through a spool directory".into(),
        ));
    }
    let mut read_lib = home.open_library()?;
    let sources = copy::sources(cat, read_lib.as_mut(), &selected.to_copy)?;
    let keys = unlock_keys(ctx, home, &copy::source_keys(&sources))?;
    // Sources in pools with drive encryption: their drive key is loaded on mount.
    let mut source_barcodes: Vec<String> = Vec::new();
    for s in &sources {
        for seg in &s.segments {
            if !source_barcodes.contains(&seg.barcode) {
                source_barcodes.push(seg.barcode.clone());
            }
        }
    }
    expect_drive_reads(ctx, home, cat, &source_barcodes, &keys)?;
    let target_key = match &pool.key_fingerprint {
        None => None,
        Some(fp) => {
            let name = pool.key_name.clone().unwrap_or_else(|| fp.clone());
            let pass = passphrase(&ctx.global, &format!("key {name}"), false)?;
            let key = crate::crypto::Keystore::open(&home.dir)?.unlock(fp, pass.as_bytes())?;
            Some(KeyMaterial {
                key,
                passphrase: pool.escrow.then_some(pass),
            })
        }
    };
    copy::run(
        home,
        cat,
        lib.as_mut(),
        read_lib.as_mut(),
        &keys,
        target_key,
        &selected,
        &sources,
        req,
        events,
    )
}
