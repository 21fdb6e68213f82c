//! One image rebuilt from its scanned parts: joined across cartridges, its status
//! (complete, incomplete, corrupt, or failed when its backup ran out of cartridges), its
//! catalog row, segments and coverage.

use std::collections::{HashMap, HashSet};

use tape_formats::{Compression as WireCompression, ImageKind as WireKind, PartJoiner};
use uuid::Uuid;

use super::collected::{time_of, SessionSeen};
use super::tape_file::PartScan;
use super::ImageFound;
use crate::catalog::{
    self, Catalog, Compression, ImageDump, ImageKind, ImageRow, ImageStatus, PoolRow, SessionStatus,
};
use crate::crypto;
use crate::error::Result;
use crate::extent_spool::{CoverageBuf, ItemList};

pub(super) fn build_image(
    cat: &Catalog,
    uuid: Uuid,
    parts: &[PartScan],
    sessions: &HashMap<Uuid, SessionSeen>,
    read_now: &HashSet<&str>,
) -> Result<(ImageDump, ItemList<catalog::Extent>, ImageFound)> {
    let h0 = &parts[0].header;
    let mut notes: Vec<String> = Vec::new();
    let mut joiner = PartJoiner::new();
    let mut joined = true;
    let damaged: u64 = parts
        .iter()
        .map(|p| p.damage.len() as u64 + p.damaged_earlier)
        .sum();
    if h0.part != 0 {
        notes.push(format!(
            "part 0 is missing (the parts found start at part {})",
            h0.part
        ));
        joined = false;
    }
    for p in parts {
        if !joined {
            break;
        }
        match &p.trailer {
            None => {
                notes.push(format!(
                    "part {} on {} tape file {} has no trailer (the write was interrupted)",
                    p.header.part, p.barcode, p.tape_file
                ));
                joined = false;
            }
            Some(t) => {
                if let Err(e) = joiner.accept(&p.header, t) {
                    notes.push(format!("{e}"));
                    joined = false;
                }
            }
        }
    }
    let complete = joined && joiner.is_complete();
    if joined && !complete {
        if let Err(e) = joiner.finish() {
            notes.push(e.to_string());
        }
    }
    if damaged > 0 {
        notes.insert(
            0,
            format!("{damaged} damaged or missing record(s) on tape (see the rebuild report)"),
        );
    }
    let session_uuid = Uuid::from_bytes(h0.session_uuid);
    let cut_off = if damaged == 0 && joined && !complete {
        ended_at_end_of_media(cat, parts, session_uuid, sessions, read_now)?
    } else {
        None
    };
    if let Some(why) = &cut_off {
        // Not "missing": the part the trailer announces was never written.
        notes.retain(|n| !n.contains("missing"));
        notes.push(why.clone());
    }
    let status = if damaged > 0 {
        ImageStatus::Corrupt
    } else if complete {
        ImageStatus::Complete
    } else if cut_off.is_some() {
        ImageStatus::Failed
    } else {
        ImageStatus::Incomplete
    };
    let last_trailer = parts.iter().rev().find_map(|p| p.trailer.as_ref());
    let pool_name = match sessions.get(&Uuid::from_bytes(h0.session_uuid)) {
        Some(s) => Some(s.pool.clone()),
        None => cat
            .session(Uuid::from_bytes(h0.session_uuid))?
            .map(|s| s.pool),
    };
    let compression = match h0.compression {
        WireCompression::None => Compression::Off,
        WireCompression::Zstd => match pool_name.as_deref().map(|p| cat.pool(p)) {
            Some(Ok(Some(PoolRow {
                compression: c @ Compression::Zstd(_),
                ..
            }))) => c,
            _ => Compression::Zstd(3),
        },
    };
    let key_fingerprint = h0.cipher.key_fingerprint().map(|f| crypto::to_hex(&f));
    // The session's end: seen in this run, or known from an earlier one (its
    // end-of-session marker may be on a cartridge read in another batch).
    let end_time = match sessions.get(&session_uuid).and_then(|s| s.end_time) {
        Some(t) => Some(time_of(t)),
        None => cat.session(session_uuid)?.and_then(|s| s.finished),
    };
    let row = ImageRow {
        uuid,
        disk_uuid: Uuid::from_bytes(h0.disk_uuid),
        vm_name: Some(h0.vm_name.clone()).filter(|v| !v.is_empty()),
        // Not on tape: a catalog snapshot brings it back when one is merged.
        disk_label: None,
        kind: match h0.kind {
            WireKind::Full => ImageKind::Full,
            WireKind::Incremental => ImageKind::Incremental,
            WireKind::Copy => ImageKind::Copy,
        },
        parent_uuid: h0.parent_image_uuid.map(Uuid::from_bytes),
        change_id: Some(h0.change_id.clone()).filter(|c| !c.is_empty()),
        from_change_id: h0.from_change_id.clone(),
        disk_size: h0.disk_size,
        block_size: h0.tracking_block_size,
        session_uuid: Some(Uuid::from_bytes(h0.session_uuid)),
        pool: pool_name,
        key_fingerprint,
        compression,
        started: time_of(h0.time),
        finished: end_time,
        status,
        records: parts.iter().map(|p| p.records).sum(),
        plain_bytes: parts.iter().map(|p| p.data_bytes).sum(),
        stored_bytes: parts.iter().map(|p| p.stored_bytes).sum(),
        content_digest: if complete {
            last_trailer.map(|t| crypto::to_hex(&t.digest))
        } else {
            None
        },
        digest_list: None,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        // A tape-to-tape copy says so in its header (format 1.1).
        copy_of: h0.copy_of.map(Uuid::from_bytes),
        // Format 1.1: the header says the full is synthetic and which point it holds.
        synthetic_of: h0.synthetic_of.map(Uuid::from_bytes),
    };
    // The parts' coverage joined, read back from the parts' temporary files and
    // spooled again: never held whole.
    let spool_err = |e: std::io::Error| {
        crate::error::Error::Failed(format!(
            "image {uuid}: joining its parts' coverage in a temporary file (check the space in TMPDIR): {e}"
        ))
    };
    let mut joined_cov = CoverageBuf::new();
    if complete && damaged == 0 {
        for p in parts {
            for e in p.coverage.reader() {
                let e = e.map_err(spool_err)?;
                match joined_cov.tail.last_mut() {
                    Some(last)
                        if last.is_zero == e.is_zero && last.offset + last.length == e.offset =>
                    {
                        last.length += e.length
                    }
                    _ => {
                        joined_cov.tail.push(e);
                        joined_cov.spill_if_full().map_err(spool_err)?;
                    }
                }
            }
        }
    }
    let extents = joined_cov.finish().map_err(spool_err)?;
    let segments: Vec<_> = parts
        .iter()
        .flat_map(|p| p.segments.iter().cloned())
        .collect();
    let mut cartridges: Vec<String> = Vec::new();
    for p in parts {
        if !cartridges.contains(&p.barcode) {
            cartridges.push(p.barcode.clone());
        }
    }
    let found = ImageFound {
        image: uuid,
        disk: row.disk_uuid,
        status,
        parts: parts.len() as u32,
        cartridges,
        note: row.note.clone(),
    };
    Ok((
        ImageDump {
            image: row,
            segments,
            extents: Vec::new(),
        },
        extents,
        found,
    ))
}

/// Whether an image whose parts all joined, but whose last part says it goes on on the
/// next volume, was cut off there: its backup ran out of cartridges (end of medium on
/// the last volume, none left to continue on) and failed. That is so when the last
/// part's cartridge was read in this run, no later volume of its media set is known
/// (neither read now nor recorded in the catalog, e.g. in a vault), and the image's
/// session never wrote its end-of-session marker. Returns why, or `None`.
fn ended_at_end_of_media(
    cat: &Catalog,
    parts: &[PartScan],
    session: Uuid,
    sessions: &HashMap<Uuid, SessionSeen>,
    read_now: &HashSet<&str>,
) -> Result<Option<String>> {
    let Some(last) = parts.last() else {
        return Ok(None);
    };
    if !read_now.contains(last.barcode.as_str()) {
        return Ok(None);
    }
    let ended = sessions.get(&session).and_then(|s| s.end_time).is_some()
        || cat
            .session(session)?
            .is_some_and(|s| s.status == SessionStatus::Complete);
    if ended {
        return Ok(None);
    }
    let Some(media) = cat.media(&last.barcode)? else {
        return Ok(None);
    };
    let (Some(set), Some(seq)) = (media.media_set_uuid, media.seq_in_set) else {
        return Ok(None);
    };
    let later = cat
        .media_in_set(set)?
        .into_iter()
        .any(|m| m.seq_in_set.is_some_and(|q| q > seq));
    if later {
        return Ok(None);
    }
    Ok(Some(format!(
        "the backup failed at the end of cartridge {} (volume {seq}, the last of media set {set}): the part that was to follow was never written and the session has no end-of-session marker",
        last.barcode
    )))
}
