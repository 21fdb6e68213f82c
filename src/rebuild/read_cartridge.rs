//! Reading one cartridge: its label (pool, media set, sequence, key), its end of data,
//! then either the fast path (merge the newest catalog snapshot, keep the tape files
//! after it for later) or a record-by-record scan of every tape file.

use uuid::Uuid;

use super::collected::{nonzero, time_of, Collected, LabelSeen};
use super::report::add_merge;
use super::tape_file::FileScan;
use super::{positioning, snapshot, tape_file};
use super::{CartridgeReport, KeySource, Method, RebuildReport};
use crate::catalog::{Catalog, CatalogError, SnapshotLocation};
use crate::crypto;
use crate::error::{Context, Result};
use crate::events::{Event, Events, Finished, NoteKind};
use crate::media::snapshot::Spool;
use crate::media::volume::{read_label, LabelRead};
use tape_devices::drive::TapeDrive;

#[allow(clippy::too_many_arguments)]
pub(super) fn read_cartridge(
    cat: &Catalog,
    drive: &mut dyn TapeDrive,
    bc: &str,
    want_scan: bool,
    keys: &mut KeySource<'_>,
    col: &mut Collected,
    rep: &mut RebuildReport,
    buf: &mut Vec<u8>,
    events: &dyn Events,
) -> Result<CartridgeReport> {
    let bc = bc.to_string();
    let mut cr = CartridgeReport {
        barcode: bc.clone(),
        method: Method::Blank,
        pool: None,
        media_set: None,
        set_sequence: None,
        key_fingerprint: None,
        snapshot_file: None,
        fallback_reason: None,
        files_scanned: 0,
        bytes_scanned: 0,
        seconds: 0.0,
        note: None,
    };
    let label = match read_label(drive).with_context(|| format!("reading the label of {bc}"))? {
        LabelRead::Blank => {
            events.note(NoteKind::Media, format!("{bc}: blank"));
            return Ok(cr);
        }
        LabelRead::Foreign(d) => {
            events.note(
                NoteKind::Media,
                format!("{bc}: not a tapevault cartridge: {d}"),
            );
            cr.method = Method::Foreign;
            cr.note = Some(d);
            return Ok(cr);
        }
        LabelRead::Label(l) => l,
    };
    if label.barcode != bc {
        let said = format!(
            "{bc}: the label says barcode {} (the cartridge was relabelled by hand?); using {bc}",
            label.barcode
        );
        events.note(NoteKind::Warning, said);
    }
    cr.pool = Some(label.pool_name.clone());
    cr.media_set = nonzero(label.media_set_uuid);
    cr.set_sequence = cr.media_set.map(|_| label.set_sequence);
    cr.key_fingerprint = label.key_fingerprint.map(|f| crypto::to_hex(&f));
    if let Some(fp) = label.key_fingerprint {
        keys.need(fp, &label.escrow, &bc)?;
    }
    // A pool this home declares with drive encryption (pools.toml, kept with the key for
    // disaster recovery): everything after the clear label is the drive's ciphertext, so
    // the drive gets the pool's data key (decrypt only) while the cartridge is read, and
    // drops it afterwards whatever the outcome.
    let drive_key = match label.key_fingerprint {
        Some(fp)
            if crate::home::pools_toml::drive_encrypted(
                &crate::home::pools_toml::load(keys.home_dir())?,
                &label.pool_name,
            ) =>
        {
            keys.ring.get(&fp).map(|k| k.drive_data_key(false))
        }
        _ => None,
    };
    if let Some(k) = &drive_key {
        crate::media::drive_key::check_capable(drive, &bc, &label.pool_name)?;
        drive.set_data_key(Some(k)).map_err(|e| {
            crate::error::Error::Failed(format!(
                "loading pool {}'s data key into {} (holding {bc}): {e}",
                label.pool_name,
                drive.name()
            ))
        })?;
    }
    let r = read_after_label(
        cat, drive, &bc, label, cr, want_scan, keys, col, rep, buf, events,
    );
    if drive_key.is_some() {
        let _ = drive.set_data_key(None);
    }
    r
}

/// The rest of [`read_cartridge`] once the label is read and the key is at hand.
#[allow(clippy::too_many_arguments)]
fn read_after_label(
    cat: &Catalog,
    drive: &mut dyn TapeDrive,
    bc: &str,
    label: tape_formats::VolumeLabel,
    mut cr: CartridgeReport,
    want_scan: bool,
    keys: &mut KeySource<'_>,
    col: &mut Collected,
    rep: &mut RebuildReport,
    buf: &mut Vec<u8>,
    events: &dyn Events,
) -> Result<CartridgeReport> {
    let bc = bc.to_string();
    let end = positioning::find_end(drive, buf)?;
    let eod_file = if end.eod.block_in_file > 0 {
        end.eod.file + 1
    } else {
        end.eod.file
    };
    col.labels.insert(
        bc.clone(),
        LabelSeen {
            label: label.clone(),
            eod_file,
            last_eos_file: end.last_eos.as_ref().map(|(f, _)| *f),
            early_warning: end.early_warning,
            last_time: end.last_eos.as_ref().map(|(_, e)| e.time),
            bytes: 0,
        },
    );
    let mut scan_reason = if want_scan {
        None
    } else {
        match &end.last_eos {
            None if eod_file <= 1 => None,
            None => {
                // Only parts of sessions that ended on other cartridges (or were
                // interrupted): their snapshots place these files; what none of them
                // covers is scanned after all cartridges were read.
                col.tails.push((bc.clone(), end.tail.clone()));
                cr.method = Method::Covered;
                events.note(NoteKind::Decision, format!(
                    "{bc}: no catalog snapshot of its own; its {} tape file(s) are checked against the other cartridges' snapshots",
                    end.tail.len()
                ));
                return Ok(cr);
            }
            Some((f, eos)) if *f < 2 => Some(format!(
                "the end-of-session marker in tape file {f} has no snapshot before it (session {})",
                Uuid::from_bytes(eos.session_uuid)
            )),
            Some((f, eos)) => {
                // The newest snapshot is merged as it is read (a digest or trailer
                // that turns out bad fails the merge, which rolls back); the bases of
                // a delta after it, from the spooled document.
                let streamed = snapshot::stream_snapshot(
                    drive,
                    f - 1,
                    &keys.ring,
                    buf,
                    cat.home_dir(),
                    eos.session_uuid,
                    |r| cat.merge_snapshot_from(r),
                )?;
                // A document the merge or the base walk refuses: the reason, or
                // trouble that is not the snapshot's (the catalog itself) as an error.
                let does_not_parse = |e: CatalogError| match e {
                    CatalogError::BadSnapshot(e) => Ok(format!(
                        "the catalog snapshot in tape file {} does not parse: {e}",
                        f - 1
                    )),
                    e => Err(crate::error::Error::from(e)),
                };
                let merged = match streamed {
                    snapshot::Streamed::Unusable(t) => Err(format!(
                        "the catalog snapshot in tape file {} is unusable: {}",
                        f - 1,
                        t.0
                    )),
                    snapshot::Streamed::Stopped(Err(e)) | snapshot::Streamed::Read(_, Err(e)) => {
                        Err(does_not_parse(e)?)
                    }
                    snapshot::Streamed::Stopped(Ok(_)) => {
                        Err(does_not_parse(CatalogError::BadSnapshot(
                            "the merge stopped before the end of the snapshot".into(),
                        ))?)
                    }
                    snapshot::Streamed::Read(mut s, Ok(r)) => {
                        match merge_base(cat, drive, &bc, f - 1, &mut s.plain, keys, col, rep, buf)?
                        {
                            Ok(()) => Ok((s, r)),
                            Err(e) => Err(does_not_parse(CatalogError::BadSnapshot(e))?),
                        }
                    }
                };
                match merged {
                    Err(reason) => Some(reason),
                    Ok((s, r)) => {
                        add_merge(&mut rep.merged, r);
                        col.snapshots.push(SnapshotLocation {
                            barcode: bc.clone(),
                            tape_file: f - 1,
                            block: s.block,
                            session_uuid: Some(Uuid::from_bytes(s.header.session_uuid)),
                            time: time_of(s.header.time),
                        });
                        cr.method = Method::Snapshot;
                        cr.snapshot_file = Some(f - 1);
                        events.note(
                            NoteKind::Media,
                            format!("{bc}: merged the catalog snapshot in tape file {}", f - 1),
                        );
                        if !end.tail.is_empty() {
                            col.tails.push((bc.clone(), end.tail.clone()));
                        }
                        None
                    }
                }
            }
        }
    };
    if cr.method == Method::Snapshot {
        return Ok(cr);
    }
    if let Some(r) = scan_reason.take() {
        events.note(
            NoteKind::Decision,
            format!("{bc}: {r}; scanning every tape file"),
        );
        rep.problems.push(format!("cartridge {bc}: {r}"));
        cr.fallback_reason = Some(r);
    }
    if eod_file <= 1 {
        cr.method = Method::Scan;
        cr.note = Some("labelled, nothing written after the label".into());
        events.emit(Event::Finished(Finished::Cartridge {
            barcode: &bc,
            files: 0,
            bytes: 0,
        }));
        return Ok(cr);
    }
    cr.method = Method::Scan;
    positioning::goto_file(drive, 1)?;
    let mut bytes = 0u64;
    loop {
        let f = drive.position().context("reading the position")?.file;
        let s = tape_file::scan_file(drive, &bc, buf, &mut bytes)?;
        if matches!(s.file, FileScan::Empty) && !s.more {
            break;
        }
        cr.files_scanned += 1;
        col.add_file(&label, &bc, f, s.file, rep);
        if !s.more {
            break;
        }
    }
    cr.bytes_scanned = bytes;
    if let Some(l) = col.labels.get_mut(&bc) {
        l.bytes = bytes;
    }
    events.emit(Event::Finished(Finished::Cartridge {
        barcode: &bc,
        files: cr.files_scanned,
        bytes,
    }));
    Ok(cr)
}

/// Merge what the snapshot document `plain` (in tape file `file`) builds on, if it is a
/// delta: the snapshot before it that it names, and so on back to a full snapshot,
/// read from this cartridge one at a time (merging is idempotent and keeps the newer
/// facts, so newest first is as good as oldest first), each checked as the newest was.
/// `Ok(Err(reason))` when one of them cannot be used (the caller scans the cartridge
/// instead).
#[allow(clippy::too_many_arguments)]
fn merge_base(
    cat: &Catalog,
    drive: &mut dyn TapeDrive,
    bc: &str,
    file: u64,
    plain: &mut Spool,
    keys: &mut KeySource<'_>,
    col: &mut Collected,
    rep: &mut RebuildReport,
    buf: &mut Vec<u8>,
) -> Result<std::result::Result<(), String>> {
    let mut base = match Catalog::snapshot_document_base_from(plain.reader()?) {
        Ok(b) => b,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut file = file;
    while let Some(loc) = base {
        // Strictly backwards on this cartridge: the walk ends.
        if loc.barcode != bc || loc.tape_file >= file {
            return Ok(Err(format!(
                "the snapshot in tape file {file} builds on tape file {} of {}, not on one before it on this cartridge",
                loc.tape_file, loc.barcode
            )));
        }
        let mut s =
            match snapshot::read_snapshot(drive, loc.tape_file, &keys.ring, buf, cat.home_dir())? {
                Ok(s) => s,
                Err(t) => {
                    return Ok(Err(format!(
                        "its base snapshot in tape file {} is unusable: {}",
                        loc.tape_file, t.0
                    )))
                }
            };
        if Some(Uuid::from_bytes(s.header.session_uuid)) != loc.session_uuid {
            return Ok(Err(format!(
                "tape file {} holds the snapshot of session {}, not the base the snapshot after it names",
                loc.tape_file,
                Uuid::from_bytes(s.header.session_uuid)
            )));
        }
        let next = match Catalog::snapshot_document_base_from(s.plain.reader()?) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e.to_string())),
        };
        match cat.merge_snapshot_from(s.plain.reader()?) {
            Ok(r) => add_merge(&mut rep.merged, r),
            Err(CatalogError::BadSnapshot(e)) => {
                return Ok(Err(format!(
                    "its base snapshot in tape file {} does not parse: {e}",
                    loc.tape_file
                )))
            }
            Err(e) => return Err(e.into()),
        }
        col.snapshots.push(SnapshotLocation {
            barcode: bc.to_string(),
            tape_file: loc.tape_file,
            block: s.block,
            session_uuid: loc.session_uuid,
            time: time_of(s.header.time),
        });
        file = loc.tape_file;
        base = next;
    }
    Ok(Ok(()))
}
