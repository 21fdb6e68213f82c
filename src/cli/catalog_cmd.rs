//! `tapevault catalog rebuild | backup | export | check`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::passphrase::passphrase;
use super::shared::open_catalog;
use super::{usage, Ctx, Terminal};
use crate::error::{Context, Error, Result};
use crate::media::allocate::sync_inventory;
use crate::rebuild::{self, KeySource, RebuildOptions};

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the catalog from the cartridges (safe to repeat; never overwrites newer facts).
    ///
    /// For each cartridge in the library (or each --barcode), the label is read (an
    /// encrypted pool's cartridge needs its key: from the keystore, or from the label's
    /// escrow with the passphrase). By default the newest catalog snapshot on the
    /// cartridge is merged without reading any data record (space to end of data, back
    /// to the last end-of-session marker); tape files written after it (an interrupted
    /// session) are scanned unless another cartridge's snapshot places them. With
    /// --scan, or when a cartridge has no usable snapshot (damaged, missing), every
    /// record is read: images, spanned parts, segments, sessions, media sets and
    /// cartridges are rebuilt from the self-describing records. Images without a
    /// complete trailer are recorded incomplete. An image whose last part goes on on
    /// the next volume, when that part's cartridge was read, no later volume of its
    /// media set is known and its session has no end-of-session marker, was cut off
    /// when its backup ran out of cartridges: it is recorded failed (never restored,
    /// never a base), not as parts on cartridges not read. Damaged records are
    /// reported by cartridge and position, the rest is recovered. Cartridges may be
    /// read in batches (as many as the library holds at a time): the parts of an image
    /// read so far are kept, and the rebuild that reads its remaining parts joins them
    /// and makes it complete. What the snapshots describe complete is checked against
    /// the cartridges read: an image whose tape file lies at or after its cartridge's
    /// end of data, or after the cartridge's last end-of-session marker (a snapshot of
    /// another drive of a `backup --drives N` session described it before its own drive
    /// flushed, and that flush failed) is listed failed, named with its cartridge and
    /// the reason (exit 0: a fact of the media; `--scan --barcode BC` reads the tape
    /// file and lists the image complete if all of it is there). Images on cartridges
    /// not read keep the snapshots' word; the report names those cartridges (`not
    /// checked`, `unchecked` in --json). Block digest lists (for hash-scan incrementals) are not
    /// rebuilt and no path is taken from the media: an image keeps a digest list only
    /// when this home holds digests/IMAGE.digests; otherwise the next backup of such a
    /// disk is full, and says why.
    ///
    /// Exit codes: 0 rebuilt; 3 damage found (damaged records, missing parts, a
    /// cartridge that should hold images reads blank) or facts on the media that
    /// contradict the catalog (reported, the catalog is kept); 4 a --barcode is not in the
    /// library; 5 a cartridge's key is missing (the others are still imported).
    Rebuild(RebuildArgs),
    /// Write the whole catalog onto a cartridge (at its end of data).
    ///
    /// The catalog snapshot (every pool, media set, cartridge, session and image) goes
    /// into a tape file of its own followed by an end-of-session marker, encrypted
    /// under the pool's key when the cartridge's pool is encrypted. A later `catalog
    /// rebuild --barcode BARCODE` of that one cartridge restores the whole catalog.
    Backup {
        /// The cartridge to write to (labelled into a pool).
        #[arg(long)]
        barcode: String,
    },
    /// The whole catalog as JSON (stdout, or --out FILE).
    ///
    /// The same document shape as the snapshots on tape; `catalog rebuild` and the
    /// catalog's merge accept it.
    Export {
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check the catalog's consistency (and with --media, against the cartridges).
    ///
    /// Without --media: the database's integrity, parent links, segments, extents,
    /// pools, copies (a copy whose original is unknown, or whose point's chain is gone)
    /// and synthetic fulls (naming an image of another disk, or a copy). With --media: every labelled cartridge in the library is loaded, its label
    /// compared with the catalog, and the first and last block of every segment on it
    /// read to check they hold the records the catalog claims. Exit 3 when problems are
    /// found.
    Check {
        /// Also read every cartridge's label and the first/last block of every segment.
        #[arg(long)]
        media: bool,
    },
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Only these cartridges (repeatable; default: every cartridge in the library).
    #[arg(long, value_name = "BARCODE", num_args = 1..)]
    pub barcode: Vec<String>,
    /// Read every record instead of the catalog snapshots.
    #[arg(long)]
    pub scan: bool,
    /// A standalone drive (non-rewinding st node) holding the cartridge to read.
    #[arg(long, value_name = "DEV", conflicts_with = "barcode")]
    pub device: Option<PathBuf>,
}

/// Print the report; on a failure under `--json` the report is the error document (with
/// `error`, `kind` and `exit_code` added, as every error document has them), without
/// `--json` the report is printed and the error returned for `main`.
fn finish_with<T: Serialize>(
    ctx: &Ctx,
    report: &T,
    text: impl FnOnce() -> String,
    failure: Option<Error>,
) -> Result<()> {
    match failure {
        None => {
            ctx.out.emit(report, text);
            Ok(())
        }
        Some(e) if ctx.out.json => super::shared::fail_with(ctx, e, report),
        Some(e) => {
            ctx.out.emit(report, text);
            Err(e)
        }
    }
}

pub fn catalog(ctx: &Ctx, c: CatalogCommand) -> Result<()> {
    match c {
        CatalogCommand::Rebuild(a) => rebuild(ctx, a),
        CatalogCommand::Backup { barcode } => {
            let home = ctx.home()?;
            let cat = open_catalog(&home)?;
            let mut lib = home.open_library()?;
            sync_inventory(&cat, lib.as_mut())?;
            let g = ctx.global.clone();
            let mut pass = move |purpose: &str| passphrase(&g, purpose, false);
            let mut keys = KeySource::new(&home, &mut pass);
            let rep = rebuild::catalog_backup::backup_catalog(
                &home,
                &cat,
                lib.as_mut(),
                &barcode,
                &mut keys,
            )?;
            ctx.out.emit(&rep, || {
                format!(
                    "wrote the catalog ({} plain, {} stored{}) to {} tape file {}",
                    super::human_bytes(rep.plain_bytes),
                    super::human_bytes(rep.stored_bytes),
                    if rep.encrypted { ", encrypted" } else { "" },
                    rep.barcode,
                    rep.tape_file
                )
            });
            Ok(())
        }
        CatalogCommand::Export { out } => {
            let home = ctx.home()?;
            let cat = open_catalog(&home)?;
            match out {
                None => {
                    let stdout = std::io::stdout().lock();
                    cat.export_json(std::io::BufWriter::new(stdout))?;
                }
                Some(path) => {
                    let tmp = path.with_extension("tmp");
                    let f = std::fs::File::create(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    cat.export_json(&mut w)?;
                    w.into_inner()
                        .map_err(|e| Error::Failed(e.to_string()))?
                        .sync_all()
                        .with_context(|| format!("writing {}", tmp.display()))?;
                    std::fs::rename(&tmp, &path)
                        .with_context(|| format!("writing {}", path.display()))?;
                    let report = export_report(&path)?;
                    ctx.out.emit(&report, || {
                        format!(
                            "catalog exported to {} ({} bytes: {})",
                            report.path.display(),
                            report.bytes,
                            report
                                .counts
                                .iter()
                                .map(|(k, n)| format!("{n} {k}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    });
                }
            }
            Ok(())
        }
        CatalogCommand::Check { media } => {
            let home = ctx.home()?;
            let cat = open_catalog(&home)?;
            let problems = cat.check()?;
            let media_check = if media {
                let mut lib = home.open_library()?;
                let (_, present) = sync_inventory(&cat, lib.as_mut())?;
                // The check reads records: cartridges of pools with drive encryption
                // need their pool's key in the drive.
                let mut bcs: Vec<String> = present.iter().cloned().collect();
                bcs.sort();
                super::shared::expect_drive_reads(
                    ctx,
                    &home,
                    &cat,
                    &bcs,
                    &crate::codec::KeyRing::new(),
                )?;
                Some(rebuild::media_check::check_media(
                    &cat,
                    lib.as_mut(),
                    &present,
                )?)
            } else {
                None
            };
            #[derive(Serialize)]
            struct CheckReport {
                problems: Vec<crate::catalog::Problem>,
                media: Option<rebuild::media_check::MediaCheck>,
            }
            let n = problems.len() + media_check.as_ref().map(|m| m.problems.len()).unwrap_or(0);
            let rep = CheckReport {
                problems,
                media: media_check,
            };
            let failure = (n > 0)
                .then(|| Error::Integrity(format!("the catalog check found {n} problem(s)")));
            finish_with(
                ctx,
                &rep,
                || {
                    let mut s = String::new();
                    for p in &rep.problems {
                        s.push_str(&format!("{:?}: {}: {}\n", p.kind, p.subject, p.detail));
                    }
                    if let Some(m) = &rep.media {
                        for p in &m.problems {
                            s.push_str(&format!("cartridge {}: {}\n", p.barcode, p.detail));
                        }
                        for b in &m.not_in_library {
                            s.push_str(&format!(
                                "cartridge {b} holds catalogued data but is not in the library (not checked)\n"
                            ));
                        }
                        s.push_str(&format!(
                            "checked {} cartridge(s), {} segment(s)\n",
                            m.cartridges_checked.len(),
                            m.segments_checked
                        ));
                    }
                    if n == 0 {
                        s.push_str("no problems found\n");
                    }
                    s
                },
                failure,
            )
        }
    }
}

fn rebuild(ctx: &Ctx, a: RebuildArgs) -> Result<()> {
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let _lock = crate::home::locks::JobLock::try_acquire(
        &home.locks_dir().join("catalog-rebuild.lock"),
        "catalog rebuild",
    )?;
    let g = ctx.global.clone();
    let mut pass = move |purpose: &str| passphrase(&g, purpose, false);
    let mut keys = KeySource::new(&home, &mut pass);
    let term = Terminal::new(ctx.out);
    let rep = if let Some(dev) = &a.device {
        // A standalone drive: the one cartridge in it, named by its label.
        let mut drive = tape_devices::drive::st::StDrive::open(dev)
            .with_context(|| format!("opening {}", dev.display()))?;
        let mut carts = rebuild::InDrive::new(&mut drive)?;
        let opts = RebuildOptions {
            barcodes: vec![carts.barcode.clone()],
            scan: a.scan,
        };
        rebuild::rebuild(&cat, &mut carts, &opts, &mut keys, &term)?
    } else {
        let mut lib = home.open_library()?;
        let (_, present) = sync_inventory(&cat, lib.as_mut())?;
        let barcodes = if a.barcode.is_empty() {
            let mut v: Vec<String> = present.into_iter().collect();
            v.sort();
            v
        } else {
            for b in &a.barcode {
                if !present.contains(b) {
                    return Err(Error::MediaNeeded(format!(
                        "cartridge {b} is not in the library: put it into a mail slot and run `tapevault library import`"
                    )));
                }
            }
            a.barcode.clone()
        };
        if barcodes.is_empty() {
            return usage("the library holds no cartridges to rebuild from");
        }
        // A cartridge read from a mail slot needs a free storage slot to go back to:
        // checked before anything is loaded, so the rebuild never jams a drive.
        let inv = lib
            .changer()
            .inventory()
            .context("reading the library inventory")?;
        crate::media::mount::check_can_put_back(&inv, &barcodes)?;
        let opts = RebuildOptions {
            barcodes,
            scan: a.scan,
        };
        let mut carts = rebuild::InLibrary {
            cat: &cat,
            lib: lib.as_mut(),
        };
        rebuild::rebuild(&cat, &mut carts, &opts, &mut keys, &term)?
    };
    let failure = if !rep.missing_keys.is_empty() {
        Some(Error::Key(format!(
            "{} cartridge(s) could not be read without their key: {}",
            rep.missing_keys.len(),
            rep.missing_keys.join("; ")
        )))
    } else if !rep.merged.conflicts.is_empty() {
        Some(Error::Integrity(format!(
            "{} fact(s) on the media contradict the catalog (the catalog was kept): {}",
            rep.merged.conflicts.len(),
            rep.merged
                .conflicts
                .iter()
                .map(|c| format!("{} {}", c.what, c.key))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    } else if rep.has_integrity_problems() {
        let missing_parts = rep.images_missing_parts();
        if rep.damage.is_empty() && rep.lost.is_empty() && missing_parts == rep.problems.len() {
            // Nothing damaged: only parts on cartridges this run did not read.
            Some(Error::Integrity(format!(
                "{missing_parts} image(s) are incomplete: parts of them are on cartridges not read in this run; read those with `tapevault catalog rebuild --scan --barcode BARCODE` (the parts read so far are kept and joined then)"
            )))
        } else {
            Some(Error::Integrity(format!(
                "the media hold damage: {} damaged or missing record(s) or tape file(s), {} problem(s); everything else was recovered",
                rep.damage.len(),
                rep.problems.len()
            )))
        }
    } else {
        None
    };
    finish_with(
        ctx,
        &rep,
        || {
            let mut s = String::new();
            // Each cartridge was said as it was read (on stderr): not again here.
            for d in &rep.damage {
                s.push_str(&format!(
                    "damage: cartridge {} tape file {} block {} (logical block {}): {}\n",
                    d.barcode, d.tape_file, d.block_in_file, d.logical_block, d.detail
                ));
            }
            for p in &rep.problems {
                s.push_str(&format!("problem: {p}\n"));
            }
            for p in &rep.lost {
                s.push_str(&format!("lost: {p}\n"));
            }
            for u in &rep.unchecked {
                s.push_str(&format!("not checked: {u}\n"));
            }
            for c in &rep.merged.conflicts {
                s.push_str(&format!(
                    "conflict (catalog kept): {} {}: {}\n",
                    c.what, c.key, c.detail
                ));
            }
            let m = &rep.merged;
            s.push_str(&format!(
                "merged: {} pool(s), {} media set(s), {} cartridge(s) added/{} updated, {} session(s), {} image(s) added/{} updated, {} segment(s), {} pool declaration(s) into pools.toml, {} conflict(s)\n",
                m.pools_added,
                m.media_sets_added,
                m.media_added,
                m.media_updated,
                m.sessions_added,
                m.images_added,
                m.images_updated,
                m.segments_added,
                m.pool_config_added,
                m.conflicts.len()
            ));
            s
        },
        failure,
    )
}

/// What `catalog export --out FILE` wrote: the file, its size, and how many rows of each
/// kind (pools, media, sessions, images, segments, ...) it holds.
#[derive(Serialize)]
struct ExportReport {
    path: PathBuf,
    bytes: u64,
    /// Rows per top-level array of the document, read back from the written file.
    counts: std::collections::BTreeMap<String, u64>,
}

/// Read the written export back (streaming: bounded memory whatever its size) and
/// count the entries of each of its top-level arrays.
fn export_report(path: &std::path::Path) -> Result<ExportReport> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::collections::BTreeMap;
    use std::fmt;

    /// A value's entry count when it is an array.
    struct Len(Option<u64>);
    impl<'de> serde::Deserialize<'de> for Len {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Len;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_seq<A: SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> std::result::Result<Len, A::Error> {
                    let mut n = 0u64;
                    while a.next_element::<IgnoredAny>()?.is_some() {
                        n += 1;
                    }
                    Ok(Len(Some(n)))
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut a: A,
                ) -> std::result::Result<Len, A::Error> {
                    while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Len(None))
                }
                fn visit_bool<E>(self, _: bool) -> std::result::Result<Len, E> {
                    Ok(Len(None))
                }
                fn visit_i64<E>(self, _: i64) -> std::result::Result<Len, E> {
                    Ok(Len(None))
                }
                fn visit_u64<E>(self, _: u64) -> std::result::Result<Len, E> {
                    Ok(Len(None))
                }
                fn visit_f64<E>(self, _: f64) -> std::result::Result<Len, E> {
                    Ok(Len(None))
                }
                fn visit_str<E>(self, _: &str) -> std::result::Result<Len, E> {
                    Ok(Len(None))
                }
                fn visit_unit<E>(self) -> std::result::Result<Len, E> {
                    Ok(Len(None))
                }
            }
            d.deserialize_any(V)
        }
    }
    struct Counts(BTreeMap<String, u64>);
    impl<'de> serde::Deserialize<'de> for Counts {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Counts;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a catalog export object")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut a: A,
                ) -> std::result::Result<Counts, A::Error> {
                    let mut m = BTreeMap::new();
                    while let Some((k, v)) = a.next_entry::<String, Len>()? {
                        if let Some(n) = v.0 {
                            m.insert(k, n);
                        }
                    }
                    Ok(Counts(m))
                }
            }
            d.deserialize_map(V)
        }
    }
    let f =
        std::fs::File::open(path).with_context(|| format!("reading back {}", path.display()))?;
    let bytes = f
        .metadata()
        .with_context(|| format!("reading back {}", path.display()))?
        .len();
    let counts: Counts = serde_json::from_reader(std::io::BufReader::new(f)).map_err(|e| {
        Error::Failed(format!(
            "the export written to {} does not read back: {e}",
            path.display()
        ))
    })?;
    Ok(ExportReport {
        path: path.to_path_buf(),
        bytes,
        counts: counts.0,
    })
}
