//! Turning what was read into catalog rows: pools and media sets from the labels,
//! cartridges, sessions, images joined from their parts (with parts kept from earlier
//! batches), damage marked on dependent images, and snapshot locations.

use std::collections::{BTreeMap, HashSet};

use uuid::Uuid;

use super::collected::{nonzero, time_of, Collected};
use super::image::build_image;
use super::report::add_merge;
use super::tape_file::PartScan;
use super::{KeySource, RebuildReport};
use crate::catalog::{
    Allocation, Catalog, Compression, ImageStatus, MediaRow, MediaSetRow, MediaState, PoolRow,
    SessionRow, SessionStatus,
};
use crate::crypto;
use crate::error::Result;

/// Turn what was collected into catalog rows and merge them.
pub(super) fn merge_collected(
    cat: &Catalog,
    keys: &KeySource<'_>,
    col: Collected,
    rep: &mut RebuildReport,
) -> Result<()> {
    // Pools and media sets from the labels.
    let mut sets: BTreeMap<Uuid, MediaSetRow> = BTreeMap::new();
    for (bc, l) in &col.labels {
        let fp = l.label.key_fingerprint.map(|f| crypto::to_hex(&f));
        let created = time_of(l.label.label_time);
        let pool = PoolRow {
            name: l.label.pool_name.clone(),
            key_name: fp.as_ref().map(|f| keys.name_of(f)),
            key_fingerprint: fp,
            compression: Compression::Zstd(3),
            retention_days: None,
            allocation: Allocation::Continue,
            worm: false,
            escrow: !l.label.escrow.is_empty(),
            created,
        };
        add_merge(&mut rep.merged, cat.merge_pool(&pool)?);
        if let Some(set) = nonzero(l.label.media_set_uuid) {
            let last = l.last_time.map(time_of);
            let e = sets.entry(set).or_insert_with(|| MediaSetRow {
                uuid: set,
                pool: l.label.pool_name.clone(),
                created,
                last_write: last,
                closed: false,
                format_major: tape_formats::FORMAT_MAJOR as u32,
            });
            e.created = e.created.min(created);
            e.last_write = e.last_write.max(last);
            if e.pool != l.label.pool_name {
                rep.problems.push(format!(
                    "cartridge {bc}: media set {set} is in pool {} on this label and {} on another",
                    l.label.pool_name, e.pool
                ));
            }
        }
    }
    for s in sets.values() {
        add_merge(&mut rep.merged, cat.merge_media_set(s)?);
    }
    for (bc, l) in &col.labels {
        let local = cat.media(bc)?;
        let set = nonzero(l.label.media_set_uuid);
        let row = MediaRow {
            barcode: bc.clone(),
            volume_uuid: Some(Uuid::from_bytes(l.label.volume_uuid)),
            pool: Some(l.label.pool_name.clone()),
            media_set_uuid: set,
            seq_in_set: set.map(|_| l.label.set_sequence),
            state: if l.early_warning {
                MediaState::Full
            } else {
                MediaState::Writable
            },
            location: local
                .as_ref()
                .map(|m| m.location.clone())
                .unwrap_or_default(),
            labelled_at: Some(time_of(l.label.label_time)),
            last_written: l.last_time.map(time_of),
            next_tape_file: l.eod_file.max(1),
            bytes_written: l.bytes,
            errors: local.as_ref().map(|m| m.errors).unwrap_or(0),
        };
        match cat.merge_media(&row) {
            Ok(r) => {
                add_merge(&mut rep.merged, r);
                cat.raise_next_tape_file(bc, row.next_tape_file)?;
            }
            Err(e) => rep
                .problems
                .push(format!("cartridge {bc}: not merged: {e}")),
        }
    }
    // Sessions seen with images.
    for (uuid, s) in &col.sessions {
        if !s.has_images {
            continue;
        }
        let row = SessionRow {
            uuid: *uuid,
            pool: s.pool.clone(),
            media_set_uuid: s.set,
            started: time_of(s.first_time.or(s.end_time).unwrap_or(0)),
            finished: s.end_time.map(time_of),
            status: if s.end_time.is_some() {
                SessionStatus::Complete
            } else {
                SessionStatus::Failed
            },
        };
        add_merge(&mut rep.merged, cat.merge_session(&row)?);
    }
    // Images: join their parts across cartridges, with the parts earlier rebuilds read
    // from cartridges not read in this one (a box of tapes is often read in batches).
    let read_now: HashSet<&str> = col.labels.keys().map(|b| b.as_str()).collect();
    // What earlier rebuilds kept of the cartridges read now is replaced by what they
    // hold now (a cartridge may have been overwritten since).
    for bc in &read_now {
        cat.drop_scanned_parts_on(bc)?;
    }
    for (uuid, mut parts) in col.parts {
        for earlier in cat.scanned_parts(uuid)? {
            match PartScan::from_stored(&earlier) {
                Ok(p) => parts.push(p),
                Err(e) => rep.problems.push(format!(
                    "image {uuid}: part {} that an earlier rebuild read on {} is unusable ({e}); read that cartridge again",
                    earlier.part, earlier.barcode
                )),
            }
        }
        parts.sort_by_key(|p| (p.header.part, p.barcode.clone(), p.tape_file));
        let (dump, extents, found) = build_image(cat, uuid, &parts, &col.sessions, &read_now)?;
        if let Some(n) = &found.note {
            // A failed image is a fact of the media, not a problem of this rebuild.
            if !matches!(found.status, ImageStatus::Complete | ImageStatus::Failed) {
                rep.problems.push(format!("image {uuid}: {n}"));
            }
        }
        match cat.merge_image_spooled(&dump, &extents) {
            Ok(r) => add_merge(&mut rep.merged, r),
            Err(e) => rep
                .problems
                .push(format!("image {uuid}: could not be merged: {e}")),
        }
        // Keep what this run read of an image that is not whole, so a rebuild that
        // reads its other cartridges can join the parts; forget it once whole.
        // A failed image is never joined later either.
        let whole = matches!(cat.image(uuid)?, Some(i) if i.status == ImageStatus::Complete);
        if whole || found.status == ImageStatus::Failed {
            cat.drop_scanned_parts(uuid)?;
        } else {
            // The parts read in this run: those on the cartridges read now (the kept
            // rows of those cartridges were dropped above).
            let mut fresh = Vec::new();
            for p in parts
                .iter()
                .filter(|p| read_now.contains(p.barcode.as_str()))
            {
                match p.to_stored() {
                    Ok(s) => fresh.push(s),
                    Err(e) => rep.problems.push(format!(
                        "image {uuid}: part {} on {} cannot be kept for a later rebuild: {e}",
                        p.header.part, p.barcode
                    )),
                }
            }
            cat.save_scanned_parts(&fresh)?;
        }
        rep.images_scanned.push(found);
    }
    // Damage a scan found marks the images built on the damaged one too (whichever
    // order they were merged in), so none of them is restored from or built on.
    for found in &rep.images_scanned {
        if found.status == ImageStatus::Corrupt {
            if let Some(img) = cat.image(found.image)? {
                if img.status == ImageStatus::Corrupt {
                    let note = img.note.unwrap_or_else(|| "damaged on tape".into());
                    cat.mark_corrupt(found.image, &note)?;
                }
            }
        }
    }
    for s in &col.snapshots {
        if cat.media(&s.barcode)?.is_some() {
            cat.record_snapshot(s)?;
        }
    }
    Ok(())
}
