//! Where every cartridge is, and moving media sets offsite and back.
//!
//! A cartridge's location is a library element (`slot 3`, `drive 0`, `mail slot 1`), a
//! named vault (`vault:<name>`), or `outside` (taken out, destination not recorded).
//! A media set goes offsite whole and only with its catalog snapshot on it, so a vault
//! never holds a set that cannot be read back without this catalog.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::allocate::sync_inventory;
use super::lifecycle::{self, Verdict};
use crate::catalog::{At, Catalog, MediaRow, MediaState, SessionStatus};
use crate::error::{Context, Error, Result};
use tape_devices::changer::r#virtual::VirtualLibrary;
use tape_devices::changer::{ChangerError, ElementKind, ElementRef, TapeLibrary};

/// Prefix of a vault location.
pub const VAULT_PREFIX: &str = "vault:";
/// Location of a cartridge taken out of the library to no recorded place.
pub const OUTSIDE: &str = "outside";
/// Longest vault name: it is printed in reports and kept in the catalog.
pub const MAX_VAULT_NAME: usize = 64;

/// Whether a location is outside the library.
pub fn is_offsite(location: &str) -> bool {
    location.starts_with(VAULT_PREFIX) || location == OUTSIDE
}

/// The library, and for the virtual one the operator's hands (taking cartridges out of
/// mail slots and putting them back).
pub enum Lib<'a> {
    Virtual(&'a mut VirtualLibrary),
    Real(&'a mut dyn TapeLibrary),
}

impl Lib<'_> {
    pub fn library(&mut self) -> &mut dyn TapeLibrary {
        match self {
            Lib::Virtual(v) => &mut **v,
            Lib::Real(r) => &mut **r,
        }
    }
}

/// Why a media set may not go offsite yet (None: it may): its newest session that wrote
/// to the set must be complete and have written its catalog snapshot onto one of the
/// set's cartridges. A failed session that wrote nothing to the set's cartridges (it
/// failed before its first tape file, e.g. no cartridge could be mounted) changes
/// nothing on them, so it never blocks; every refusal names the way out.
pub fn set_incomplete_reason(cat: &Catalog, set: Uuid) -> Result<Option<String>> {
    let members = cat.media_in_set(set)?;
    // The session wrote to the set when a member was labelled into it or had a tape
    // file closed on it since the session started.
    let wrote = |started: DateTime<Utc>| {
        members.iter().any(|m| {
            m.last_written.is_some_and(|t| t >= started)
                || m.labelled_at.is_some_and(|t| t >= started)
        })
    };
    let sessions: Vec<_> = cat
        .sessions()?
        .into_iter()
        .filter(|s| s.media_set_uuid == Some(set))
        .filter(|s| s.status != SessionStatus::Failed || wrote(s.started))
        .collect();
    let Some(last) = sessions.last() else {
        return Ok(Some(format!(
            "media set {set} has no backup session that wrote to it (back up to its pool first, or use --force)"
        )));
    };
    if last.status != SessionStatus::Complete {
        return Ok(Some(format!(
            "the newest session {} of media set {set} is {} after writing to the set, so the set's catalog snapshot does not describe it (run a backup to pool {} so a complete session writes a new snapshot, or use --force)",
            last.uuid, last.status, last.pool
        )));
    }
    let members: HashSet<String> = members.into_iter().map(|m| m.barcode).collect();
    let has = cat
        .snapshots()?
        .iter()
        .any(|s| s.session_uuid == Some(last.uuid) && members.contains(&s.barcode));
    if !has {
        return Ok(Some(format!(
            "the catalog snapshot of session {} is not on media set {set} (run a backup to pool {} so a complete session writes a new snapshot, or use --force)",
            last.uuid, last.pool
        )));
    }
    Ok(None)
}

/// One cartridge moved.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub barcode: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportReport {
    pub moved: Vec<Moved>,
    /// Sets closed because they went offsite.
    pub closed_sets: Vec<Uuid>,
    /// Members already out of the library.
    pub already_out: Vec<Moved>,
    pub warnings: Vec<String>,
}

fn drive_busy(lib: &mut dyn TapeLibrary, index: usize) -> Option<String> {
    match lib.open_drive(index) {
        Ok(d) => {
            drop(d);
            None
        }
        Err(ChangerError::Busy { detail, .. }) => Some(detail),
        Err(_) => None,
    }
}

/// Send cartridges to the mail slots: the whole media set `set`, or the sets of
/// `barcodes`. Refused (unless `force`) when a set's catalog snapshot is not on it, or
/// when the barcodes leave part of a set in the library. Sets that go out are closed.
pub fn export(
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    barcodes: &[String],
    set: Option<Uuid>,
    force: bool,
) -> Result<ExportReport> {
    let (inv, present) = sync_inventory(cat, lib)?;
    let mut rep = ExportReport::default();
    // The cartridges asked for, grouped by set.
    let mut targets: Vec<MediaRow> = Vec::new();
    if let Some(s) = set {
        if cat.media_set(s)?.is_none() {
            return Err(Error::Usage(format!("media set {s} is not in the catalog")));
        }
        targets = cat.media_in_set(s)?;
        if targets.is_empty() {
            return Err(Error::Usage(format!("media set {s} has no cartridges")));
        }
    }
    for b in barcodes {
        let m = cat.media(b)?.ok_or_else(|| {
            Error::Usage(format!(
                "cartridge {b} is not in the catalog (see `tapevault media list`)"
            ))
        })?;
        if !targets.iter().any(|t| t.barcode == m.barcode) {
            targets.push(m);
        }
    }
    let mut by_set: BTreeMap<Option<Uuid>, Vec<MediaRow>> = BTreeMap::new();
    for m in targets {
        by_set.entry(m.media_set_uuid).or_default().push(m);
    }
    let mut problems = Vec::new();
    let mut whole_sets = Vec::new();
    for (s, members) in &by_set {
        let Some(s) = s else {
            continue;
        };
        if let Some(r) = set_incomplete_reason(cat, *s)? {
            problems.push(format!("{r}: a set offsite without its catalog snapshot cannot be read back without this catalog"));
        }
        let left: Vec<String> = cat
            .media_in_set(*s)?
            .into_iter()
            .filter(|m| {
                present.contains(&m.barcode) && !members.iter().any(|x| x.barcode == m.barcode)
            })
            .map(|m| format!("{} ({})", m.barcode, m.location))
            .collect();
        if left.is_empty() {
            whole_sets.push(*s);
        } else {
            problems.push(format!(
                "media set {s} would be split: {} stay in the library (export the whole set with `--set {s}`)",
                left.join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        if !force {
            return Err(Error::Failed(format!(
                "not exporting: {}. Use --force to export anyway.",
                problems.join("; ")
            )));
        }
        rep.warnings.extend(problems);
    }
    let mut to_move = Vec::new();
    for m in by_set.into_values().flatten() {
        match inv.find(&m.barcode) {
            None => rep.already_out.push(Moved {
                barcode: m.barcode.clone(),
                from: m.location.clone(),
                to: m.location.clone(),
            }),
            Some(e) if e.element.kind == ElementKind::MailSlot => rep.already_out.push(Moved {
                barcode: m.barcode.clone(),
                from: e.element.to_string(),
                to: e.element.to_string(),
            }),
            Some(e) => to_move.push((m, e.element)),
        }
    }
    let free = inv.mail_slots.iter().filter(|e| !e.is_full()).count();
    if to_move.len() > free {
        return Err(Error::MediaNeeded(format!(
            "{} cartridge(s) to export but only {free} mail slot(s) are free: take the cartridges out of the mail slots (and record where with `tapevault media vault`), then run again",
            to_move.len()
        )));
    }
    for (m, el) in &to_move {
        if el.kind == ElementKind::Drive {
            if let Some(d) = drive_busy(lib, el.index) {
                return Err(Error::Failed(format!(
                    "cartridge {} is in {el}, which another job is using ({d}); export it when the job is done",
                    m.barcode
                )));
            }
        }
    }
    for (m, el) in to_move {
        let to = lib
            .changer()
            .export(&m.barcode)
            .with_context(|| format!("exporting {}", m.barcode))?;
        rep.moved.push(Moved {
            barcode: m.barcode.clone(),
            from: el.to_string(),
            to: to.to_string(),
        });
    }
    for s in whole_sets {
        if cat.media_set(s)?.is_some_and(|x| !x.closed) {
            lifecycle::close_set(cat, s)?;
            rep.closed_sets.push(s);
        }
    }
    sync_inventory(cat, lib)?;
    Ok(rep)
}

/// Check a vault name.
pub fn check_vault_name(name: &str) -> Result<()> {
    let name = name.strip_prefix(VAULT_PREFIX).unwrap_or(name);
    if name.is_empty() || name.len() > MAX_VAULT_NAME || name.chars().any(|c| c.is_control()) {
        return Err(Error::Usage(format!(
            "vault name {name:?} must be 1 to {MAX_VAULT_NAME} printable characters"
        )));
    }
    Ok(())
}

/// Record that cartridges taken out of the mail slots went to vault `name`. In a virtual
/// library this also takes them out (as the operator would); in a real one they must
/// already be out of the library.
pub fn vault(cat: &Catalog, lib: &mut Lib, barcodes: &[String], name: &str) -> Result<Vec<Moved>> {
    check_vault_name(name)?;
    let name = name.strip_prefix(VAULT_PREFIX).unwrap_or(name);
    let loc = format!("{VAULT_PREFIX}{name}");
    let (inv, _) = sync_inventory(cat, lib.library())?;
    // Check everything first, then act.
    let mut rows = Vec::new();
    for b in barcodes {
        let m = cat
            .media(b)?
            .ok_or_else(|| Error::Usage(format!("cartridge {b} is not in the catalog")))?;
        match inv.find(b).map(|e| e.element) {
            Some(e) if e.kind == ElementKind::MailSlot => {
                if matches!(lib, Lib::Real(_)) {
                    return Err(Error::Failed(format!(
                        "cartridge {b} is still in {e}: take it out of the library first, then run this again"
                    )));
                }
            }
            Some(e) => {
                return Err(Error::Failed(format!(
                    "cartridge {b} is in {e}: send it to a mail slot first with `tapevault media export {b}` (or the whole set with --set)"
                )))
            }
            None => {}
        }
        rows.push(m);
    }
    let mut out = Vec::new();
    for m in rows {
        let from = m.location.clone();
        if let Lib::Virtual(v) = lib {
            if inv.find(&m.barcode).is_some() {
                v.remove_from_mail_slot(&m.barcode)
                    .with_context(|| format!("taking {} out of the mail slot", m.barcode))?;
            }
        }
        cat.set_media_location(&m.barcode, &loc)?;
        out.push(Moved {
            barcode: m.barcode,
            from,
            to: loc.clone(),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct Returned {
    pub barcode: String,
    pub from: String,
    pub to: String,
    pub state: MediaState,
    /// The set is expired: the next `rotate --apply` recycles it.
    pub expired: bool,
}

/// Bring cartridges back into the library: in a virtual library they are put into a
/// mail slot (as the operator would); in a real one the operator has put them there.
/// Each is then moved into a free storage slot.
pub fn return_media(
    cat: &Catalog,
    lib: &mut Lib,
    barcodes: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<Returned>> {
    let mut rows = Vec::new();
    for b in barcodes {
        rows.push(
            cat.media(b)?
                .ok_or_else(|| Error::Usage(format!("cartridge {b} is not in the catalog")))?,
        );
    }
    let mut out = Vec::new();
    for m in rows {
        let inv = lib
            .library()
            .changer()
            .inventory()
            .context("reading the library inventory")?;
        let el = match inv.find(&m.barcode).map(|e| e.element) {
            Some(e) => Some(e),
            None => match lib {
                Lib::Virtual(v) => Some(
                    v.insert_into_mail_slot(&m.barcode)
                        .with_context(|| format!("putting {} into a mail slot", m.barcode))?,
                ),
                Lib::Real(_) => None,
            },
        };
        let Some(el) = el else {
            return Err(Error::MediaNeeded(format!(
                "cartridge {} ({}) is not in the library: put it into a mail slot, then run `tapevault media return {}` again",
                m.barcode, m.location, m.barcode
            )));
        };
        let mut to = el;
        if el.kind == ElementKind::MailSlot {
            let slot = inv
                .first_empty(ElementKind::Slot)
                .ok_or(ChangerError::NoFreeElement {
                    kind: ElementKind::Slot,
                })
                .with_context(|| format!("taking {} into the library", m.barcode))?;
            lib.library()
                .changer()
                .move_medium(el, slot)
                .with_context(|| format!("moving {} from {el} to {slot}", m.barcode))?;
            to = slot;
        }
        out.push((m, to));
    }
    sync_inventory(cat, lib.library())?;
    let ev = lifecycle::evaluate(cat, now)?;
    Ok(out
        .into_iter()
        .map(|(m, to): (MediaRow, ElementRef)| {
            let row = cat.media(&m.barcode).ok().flatten().unwrap_or(m.clone());
            let expired = row.state == MediaState::Expired
                || row
                    .media_set_uuid
                    .and_then(|s| ev.set(s))
                    .is_some_and(|s| s.is_expired());
            Returned {
                barcode: m.barcode,
                from: m.location,
                to: to.to_string(),
                state: row.state,
                expired,
            }
        })
        .collect())
}

/// A cartridge outside the library.
#[derive(Debug, Clone, Serialize)]
pub struct OffsiteEntry {
    pub barcode: String,
    pub location: String,
    pub pool: Option<String>,
    pub media_set: Option<Uuid>,
    pub state: MediaState,
    /// kept | held | expired | scratch
    pub retention: &'static str,
    /// When retention ends (kept sets of pools with a retention).
    pub kept_until: Option<DateTime<Utc>>,
}

impl OffsiteEntry {
    /// It can come back to be reused.
    pub fn is_due(&self) -> bool {
        matches!(self.retention, "expired" | "scratch")
    }
}

/// Every cartridge outside the library, by location then barcode, with its retention.
pub fn offsite(cat: &Catalog, now: DateTime<Utc>) -> Result<Vec<OffsiteEntry>> {
    let ev = lifecycle::evaluate(cat, now)?;
    let mut out: Vec<OffsiteEntry> = cat
        .list_media(None)?
        .into_iter()
        .filter(|m| is_offsite(&m.location))
        .map(|m| {
            let (retention, until) = match m.media_set_uuid.and_then(|s| ev.set(s)) {
                _ if m.state == MediaState::Expired => ("expired", None),
                Some(s) => match &s.verdict {
                    Verdict::Kept { until, .. } => ("kept", *until),
                    Verdict::Held { .. } => ("held", None),
                    Verdict::Expired { .. } => ("expired", None),
                },
                None => ("scratch", None),
            };
            let retention = if matches!(m.state, MediaState::Damaged | MediaState::Retired) {
                "retired"
            } else {
                retention
            };
            OffsiteEntry {
                barcode: m.barcode,
                location: m.location,
                pool: m.pool,
                media_set: m.media_set_uuid,
                state: m.state,
                retention,
                kept_until: until,
            }
        })
        .collect();
    out.sort_by(|a, b| a.location.cmp(&b.location).then(a.barcode.cmp(&b.barcode)));
    Ok(out)
}

/// Offsite cartridges that are due back: their sets expired (or they are scratch).
pub fn due(cat: &Catalog, now: DateTime<Utc>) -> Result<Vec<OffsiteEntry>> {
    Ok(offsite(cat, now)?
        .into_iter()
        .filter(|e| e.is_due())
        .collect())
}

/// One cartridge a restore needs.
#[derive(Debug, Clone, Serialize)]
pub struct PullItem {
    pub barcode: String,
    pub location: String,
    pub in_library: bool,
    pub state: Option<MediaState>,
    /// The images of the chain with data on it.
    pub images: Vec<Uuid>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PullList {
    pub disk: Uuid,
    /// The chain, full first.
    pub chain: Vec<Uuid>,
    /// Cartridges in the order the restore reads them.
    pub cartridges: Vec<PullItem>,
    /// Barcodes to fetch from outside the library.
    pub to_fetch: Vec<String>,
    /// For each image of the chain: the image read for it, the original or a
    /// tape-to-tape copy in the library, and why a copy.
    pub used: Vec<crate::copy::Chosen>,
}

/// The cartridges a restore of `disk` at `at` needs, in the order the restore reads
/// them (the restore job's own plan: cartridges holding only superseded data are left
/// out), with where each one is.
pub fn pull_list(cat: &Catalog, lib: &mut dyn TapeLibrary, disk: Uuid, at: At) -> Result<PullList> {
    let prepared = crate::restore::prepare(cat, lib, disk, at)?;
    let mut items = Vec::new();
    for p in prepared.pull_list {
        let state = cat.media(&p.barcode)?.map(|m| m.state);
        items.push(PullItem {
            barcode: p.barcode,
            location: if p.location.is_empty() {
                "unknown".into()
            } else {
                p.location
            },
            in_library: p.in_library,
            state,
            images: p.images,
        });
    }
    let to_fetch = items
        .iter()
        .filter(|i| !i.in_library)
        .map(|i| i.barcode.clone())
        .collect();
    Ok(PullList {
        disk,
        chain: prepared.chain.iter().map(|i| i.identity()).collect(),
        cartridges: items,
        to_fetch,
        used: prepared.used,
    })
}
