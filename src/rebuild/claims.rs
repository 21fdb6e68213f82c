//! After every cartridge was read and merged: do the cartridges read in this run hold
//! what the catalog snapshots say they hold? A snapshot on one cartridge may describe
//! images on another as complete before that other cartridge's drive flushed them
//! (`backup --drives N` writes each cartridge's snapshot before the final flushes). If
//! that flush failed, the snapshot's word is not the media's.
//!
//! Evidence, per complete image and per cartridge read now that holds its segments
//! (the highest tape file of its segments there):
//!
//! - at or after the cartridge's end of data: the image never reached it. Failed.
//! - before an end-of-session marker on the same cartridge (of any session): the marker
//!   was written after the image, and a tape holds a prefix of what was written, so
//!   the image reached the tape before it. Held.
//! - read record by record in this run (a scan, or a tail no snapshot placed): held
//!   (the merge of what was read decides its status).
//! - the cartridge reached early warning: its writer left it full and flushed it before
//!   going on to the next cartridge (a session spanning cartridges). Held.
//! - complete in this home's catalog before the rebuild began (a rebuild completing a
//!   live catalog): the home's own record (it committed the image after its drive
//!   flushed) is not overruled by a lack of evidence. Held.
//! - otherwise (after the cartridge's newest marker, or on a cartridge without one,
//!   not read): not proven. Failed, as the live catalog fails the images of a drive
//!   whose final flush failed; `catalog rebuild --scan` reads the tape file and lists
//!   the image complete if all of it is there.
//!
//! Images on cartridges not read in this run keep the snapshots' word, and the report
//! says how many were not checked.

use std::collections::{BTreeMap, HashSet};

use uuid::Uuid;

use super::RebuildReport;
use crate::catalog::Catalog;
use crate::error::Result;

/// What one cartridge read in this run showed about its end.
pub(super) struct EndSeen {
    /// First tape file number at or after end of data.
    pub(super) eod_file: u64,
    /// Tape file of the newest end-of-session marker on it.
    pub(super) last_eos_file: Option<u64>,
    pub(super) early_warning: bool,
}

/// Check the complete images on the cartridges in `ends` against them (`read`: the
/// tape files read record by record in this run; `complete_before`: the images on
/// them complete in this home before the run); fail those the cartridges do not hold
/// (each named in `rep.problems` with the reason) and say in `rep.unchecked` how many
/// complete images lie on cartridges not read.
pub(super) fn check_claims(
    cat: &Catalog,
    ends: &BTreeMap<String, EndSeen>,
    read: &HashSet<(String, u64)>,
    complete_before: &HashSet<Uuid>,
    rep: &mut RebuildReport,
) -> Result<()> {
    for (bc, end) in ends {
        // Nothing on the cartridge lies after its newest end-of-session marker: every
        // image there is held, without a look at each (one query instead of one row per
        // image).
        match cat.last_tape_file_on(bc)? {
            None => continue,
            Some(last) if end.last_eos_file.is_some_and(|m| last < m) => continue,
            Some(_) => {}
        }
        for (image, last) in cat.complete_images_last_file_on(bc)? {
            let reason = if last >= end.eod_file {
                format!(
                    "its tape file {last} on cartridge {bc} is at or after the cartridge's end of data (tape file {}): it never reached the tape",
                    end.eod_file
                )
            } else if end.last_eos_file.is_some_and(|m| last < m)
                || read.contains(&(bc.clone(), last))
                || end.early_warning
                || complete_before.contains(&image)
            {
                continue;
            } else {
                format!(
                    "its tape file {last} on cartridge {bc} is after the cartridge's last end-of-session marker ({}): nothing on the cartridge proves its drive flushed it (a catalog snapshot describes it complete); `tapevault catalog rebuild --scan --barcode {bc}` reads it",
                    match end.last_eos_file {
                        Some(m) => format!("tape file {m}"),
                        None => "it has none".into(),
                    }
                )
            };
            let note = format!("not on tape: {reason}");
            let deps = cat.fail_not_on_tape(image, &note)?;
            let mut p = format!("image {image}: listed failed, not complete: {reason}");
            if !deps.is_empty() {
                p.push_str(&format!(
                    "; {} image(s) built on it are marked corrupt",
                    deps.len()
                ));
            }
            rep.problems.push(p);
        }
    }
    // Read blank or foreign: `lost` speaks of those. Skipped for a missing key: not read.
    let seen: HashSet<String> = rep
        .cartridges
        .iter()
        .filter(|c| c.method != super::Method::KeyMissing)
        .map(|c| c.barcode.clone())
        .collect();
    for m in cat.list_media(None)? {
        if ends.contains_key(&m.barcode) || seen.contains(&m.barcode) {
            continue;
        }
        // Whether any of them is complete: one lookup. How many images lie there: the
        // segments' index alone (counting only the complete ones reads every image row,
        // 0.05-0.08 s for 100 k).
        if cat.has_complete_image_on(&m.barcode)? {
            let n = cat.count_images_on(&m.barcode)?;
            rep.unchecked.push(format!(
                "cartridge {}: not read in this run; the complete images among the {n} image(s) the catalog places on it were not checked against it",
                m.barcode
            ));
        }
    }
    Ok(())
}
