//! Disaster recovery: the catalog rebuilt from cartridges alone (`tapevault catalog
//! rebuild`). Everything goes into the catalog through its `merge_*` functions:
//! idempotent, never overwriting newer facts, conflicts reported.
//!
//! A rebuild, step by step ([`rebuild`]):
//!
//! 1. **Get at each cartridge** ([`cartridges`]): loaded from the library into a free
//!    drive and put back afterwards, or the one cartridge in a standalone drive.
//! 2. **Read its label** (`read_cartridge.rs`): pool, media set, sequence, key. An
//!    encrypted cartridge needs its key ([`keys`]): from the keystore, or from the
//!    escrow blob on the label, each unlocked once with its passphrase; a cartridge
//!    whose key is missing is skipped and named in the report.
//! 3. **Fast path** ([`positioning`], [`snapshot`]): space to end of data, walk back
//!    over filemarks to the newest end-of-session marker and merge the catalog snapshot
//!    just before it (when it is a delta, first the full snapshot and the deltas it
//!    builds on, from the same cartridge); no data record is read. Tape files written after that snapshot
//!    are kept aside. A cartridge without a snapshot of its own (its sessions ended on
//!    other cartridges) is left to the other cartridges' snapshots.
//! 4. **Full scan** ([`tape_file`]): with `--scan`, or when no usable snapshot exists,
//!    every tape file is read record by record: image parts (segments with logical
//!    block positions exactly as the backup records them, coverage, totals and digests
//!    from the trailers), snapshots and end-of-session markers, damage located by
//!    position. What was read is collected (`collected.rs`), nothing merged yet.
//! 5. **Tails**: the tape files kept aside in 3 that no snapshot places are scanned.
//! 6. **Merge** (`merge.rs`): pools and media sets from the labels, cartridges,
//!    sessions, then images joined from their parts across cartridges (`image.rs`).
//!    Cartridges may be read in batches: the parts of an image read so far are kept
//!    in the catalog and joined by the rebuild that reads the rest. An image cut off
//!    because its backup ran out of cartridges is recorded failed; damage marks the
//!    images built on the damaged one too.
//! 7. **Claims checked** (`claims.rs`): every image listed complete on a cartridge read
//!    now is checked against that cartridge's end of data and end-of-session markers
//!    (a snapshot of one drive of a several-drive session describes the other drives'
//!    images before those drives flush); what the cartridge does not provably hold is
//!    listed failed, and the cartridges not read that hold complete images are named.
//! 8. **Report** ([`report`]): per cartridge how it was read, images found, damage,
//!    problems, missing keys, cartridges that should hold images and read blank, and
//!    cartridges whose images were not checked.
//!
//! The job prints nothing: it says what it does through [`Events`] (notes, and one
//! finished line per scanned cartridge) and returns the report.
//!
//! Also here, as they read and write the same tape files: `catalog backup`
//! ([`catalog_backup`]) and `catalog check --media` ([`media_check`]).
//!
//! Not rebuilt: the per-block digest lists of hash-scan incrementals (they describe
//! the disk, not the tape); the next backup of such a disk says why it takes a full.

pub mod cartridges;
pub mod catalog_backup;
mod claims;
mod collected;
mod image;
pub mod keys;
pub mod media_check;
mod merge;
pub mod positioning;
mod read_cartridge;
pub mod report;
pub mod snapshot;
pub mod tape_file;

use std::collections::HashSet;

use serde::Serialize;
use uuid::Uuid;

pub use cartridges::{Cartridges, InDrive, InLibrary};
pub use keys::{KeySource, PassphraseFn};
pub use report::{CartridgeReport, ImageFound, RebuildReport};

use crate::catalog::{Catalog, ImageStatus};
use crate::error::{Context, Error, Result};
use crate::events::{Event, Events, Finished, NoteKind};
use collected::Collected;
use merge::merge_collected;
use positioning::FileHead;
use read_cartridge::read_cartridge;

/// What to rebuild from.
#[derive(Debug, Clone, Default)]
pub struct RebuildOptions {
    /// Cartridges to read, in order (default: every cartridge in the library).
    pub barcodes: Vec<String>,
    /// Scan every record instead of trusting the catalog snapshots.
    pub scan: bool,
}

/// How one cartridge was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Its newest catalog snapshot was merged (plus a scan of any tape files after it).
    Snapshot,
    /// Every tape file was scanned.
    Scan,
    /// No snapshot of its own (its sessions ended on other cartridges): their
    /// snapshots place its tape files; any they do not were scanned.
    Covered,
    /// Nothing written on it.
    Blank,
    /// Not a tapevault cartridge (or its label is damaged).
    Foreign,
    /// Encrypted with a key that is not available.
    KeyMissing,
}

/// Rebuild (or complete) the catalog from cartridges. Errors that stop everything
/// (catalog, library) are `Err`; per-cartridge trouble is in the report. A cartridge
/// whose key is missing is skipped and named in `missing_keys`.
pub fn rebuild(
    cat: &Catalog,
    carts: &mut dyn Cartridges,
    opts: &RebuildOptions,
    keys: &mut KeySource<'_>,
    events: &dyn Events,
) -> Result<RebuildReport> {
    let mut rep = RebuildReport::default();
    let mut col = Collected::default();
    let mut seen = HashSet::new();
    let mut buf = Vec::new();
    // The images this home already lists complete on the cartridges to read: its own
    // record, which the check of the snapshots' claims after the merge keeps.
    let mut complete_before = HashSet::new();
    for bc in opts.barcodes.iter().collect::<HashSet<_>>() {
        complete_before.extend(
            cat.complete_images_last_file_on(bc)?
                .into_iter()
                .map(|(u, _)| u),
        );
    }
    for bc in &opts.barcodes {
        if !seen.insert(bc.clone()) {
            continue;
        }
        let started = std::time::Instant::now();
        let mut out = None;
        let r = carts.with_cartridge(bc, &mut |drive| {
            out = Some(read_cartridge(
                cat, drive, bc, opts.scan, keys, &mut col, &mut rep, &mut buf, events,
            )?);
            Ok(())
        });
        let r = r.and_then(|()| {
            out.take()
                .ok_or_else(|| Error::Failed("cartridge not read".into()))
        });
        let mut cr = match r {
            Ok(cr) => cr,
            Err(Error::Key(msg)) => {
                events.note(NoteKind::Media, format!("{bc}: {msg}"));
                rep.missing_keys.push(msg.clone());
                CartridgeReport {
                    barcode: bc.clone(),
                    method: Method::KeyMissing,
                    pool: None,
                    media_set: None,
                    set_sequence: None,
                    key_fingerprint: None,
                    snapshot_file: None,
                    fallback_reason: None,
                    files_scanned: 0,
                    bytes_scanned: 0,
                    seconds: 0.0,
                    note: Some(msg),
                }
            }
            Err(e) => return Err(e).with_context(|| format!("reading cartridge {bc}")),
        };
        cr.seconds = started.elapsed().as_secs_f64();
        rep.cartridges.push(cr);
    }
    // Tape files after a cartridge's newest snapshot: covered if some snapshot placed
    // the image part there; otherwise scan them.
    let tails = std::mem::take(&mut col.tails);
    for (bc, files) in tails {
        let mut todo = Vec::new();
        for (f, head) in files {
            let covered = match &head {
                FileHead::Image(h) => {
                    cat.segments(Uuid::from_bytes(h.image_uuid))?
                        .iter()
                        .any(|s| s.barcode == bc && s.tape_file == f)
                        || cat
                            .image(Uuid::from_bytes(h.image_uuid))?
                            .is_some_and(|i| i.records == 0 && i.status == ImageStatus::Complete)
                }
                FileHead::Snapshot(_) | FileHead::EndOfSession(_) | FileHead::Empty => true,
                FileHead::EndOfData | FileHead::Other(_) => false,
            };
            if !covered {
                todo.push(f);
            }
        }
        if todo.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        events.note(
            NoteKind::Decision,
            format!(
                "{bc}: tape file(s) {} are not in any catalog snapshot; scanning them",
                todo.iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let Some(label) = col.labels.get(&bc).map(|l| l.label.clone()) else {
            continue;
        };
        let (mut n, mut bytes) = (0u64, 0u64);
        carts
            .with_cartridge(&bc, &mut |drive| {
                for f in &todo {
                    positioning::goto_file(drive, *f)?;
                    let s = tape_file::scan_file(drive, &bc, &mut buf, &mut bytes)?;
                    n += 1;
                    col.add_file(&label, &bc, *f, s.file, &mut rep);
                }
                Ok(())
            })
            .with_context(|| format!("scanning the tail of cartridge {bc}"))?;
        events.emit(Event::Finished(Finished::Cartridge {
            barcode: &bc,
            files: n,
            bytes,
        }));
        if let Some(cr) = rep.cartridges.iter_mut().find(|c| c.barcode == bc) {
            cr.files_scanned += n;
            cr.bytes_scanned += bytes;
            cr.seconds += started.elapsed().as_secs_f64();
        }
    }
    // What the cartridges read now showed of their ends, and the tape files read
    // record by record: the evidence the snapshots' claims are checked against.
    let ends: std::collections::BTreeMap<String, claims::EndSeen> = col
        .labels
        .iter()
        .map(|(bc, l)| {
            (
                bc.clone(),
                claims::EndSeen {
                    eod_file: l.eod_file,
                    last_eos_file: l.last_eos_file,
                    early_warning: l.early_warning,
                },
            )
        })
        .collect();
    let read: HashSet<(String, u64)> = col
        .parts
        .values()
        .flatten()
        .map(|p| (p.barcode.clone(), p.tape_file))
        .collect();
    merge_collected(cat, keys, col, &mut rep)?;
    claims::check_claims(cat, &ends, &read, &complete_before, &mut rep)?;
    // A cartridge that snapshots say holds images but that reads blank or foreign now
    // (overwritten, relabelled, wrong cartridge in the barcode): say so loudly.
    for c in &rep.cartridges {
        if matches!(c.method, Method::Blank | Method::Foreign) {
            let on = cat.images_on_media(&c.barcode)?;
            let kept = on
                .iter()
                .filter(|i| i.status == ImageStatus::Complete)
                .count();
            if kept > 0 {
                rep.lost.push(format!(
                    "cartridge {}: catalog snapshots place {kept} complete image(s) on it, but it reads as {}; those restore points are probably lost (`tapevault catalog check --media` lists them)",
                    c.barcode,
                    c.note.as_deref().unwrap_or("blank")
                ));
            }
        }
    }
    Ok(rep)
}
