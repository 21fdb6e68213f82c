//! Which media set a session writes to and which cartridge it writes on, and keeping
//! the catalog's view of the library's cartridges current.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Utc};

use crate::catalog::{Allocation, Catalog, MediaRow, MediaSetRow, MediaState, PoolRow};
use crate::changer::{ElementKind, Inventory, TapeLibrary, CLEANING_PREFIX};
use crate::error::{Context, Error, Result};

/// Text for an element as the catalog stores locations.
pub fn location_of(kind: ElementKind, index: usize) -> String {
    match kind {
        ElementKind::Drive => format!("drive {index}"),
        ElementKind::Slot => format!("slot {index}"),
        ElementKind::MailSlot => format!("mail slot {index}"),
    }
}

/// Bring the catalog's media rows in line with the library inventory: unknown
/// cartridges are added as blank, locations are updated, and cartridges the library no
/// longer holds are marked 'outside' (unless the catalog knows they are in a vault).
/// Returns the inventory and the set of barcodes present.
pub fn sync_inventory(
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
) -> Result<(Inventory, HashSet<String>)> {
    let inv = lib
        .changer()
        .inventory()
        .context("reading the library inventory")?;
    let mut present = HashSet::new();
    for e in inv.all() {
        let Some(bc) = e.barcode.as_deref() else {
            continue;
        };
        if bc.is_empty() || bc.starts_with(CLEANING_PREFIX) {
            continue;
        }
        present.insert(bc.to_string());
        let loc = location_of(e.element.kind, e.element.index);
        match cat.media(bc)? {
            Some(m) if m.location == loc => {}
            Some(_) => cat.set_media_location(bc, &loc)?,
            None => cat.upsert_media(&MediaRow::new_blank(bc, &loc))?,
        }
    }
    for m in cat.list_media(None)? {
        if !present.contains(&m.barcode)
            && !m.location.starts_with("vault:")
            && m.location != "outside"
        {
            cat.set_media_location(&m.barcode, "outside")?;
        }
    }
    Ok((inv, present))
}

/// Whether the pool's policy wants a new media set for a session at `now`, given its
/// current open set.
pub fn wants_new_set(policy: Allocation, set: &MediaSetRow, now: DateTime<Utc>) -> bool {
    let born = set.created;
    match policy {
        Allocation::Continue => false,
        Allocation::PerSession => true,
        Allocation::Daily => born.date_naive() != now.date_naive(),
        Allocation::Weekly(day) => {
            let days = (now.date_naive() - born.date_naive()).num_days();
            days >= 7 || (now.weekday() == day && days >= 1)
        }
        Allocation::Monthly => (born.year(), born.month()) != (now.year(), now.month()),
    }
}

/// The media set a new session of `pool` writes to: the open one, or a new one when the
/// pool's allocation policy says so (the old one is then closed).
pub fn session_media_set(cat: &Catalog, pool: &PoolRow, now: DateTime<Utc>) -> Result<MediaSetRow> {
    if let Some(set) = cat.current_media_set(&pool.name)? {
        if !wants_new_set(pool.allocation, &set, now) {
            return Ok(set);
        }
        cat.close_media_set(set.uuid)?;
    }
    Ok(cat.create_media_set(&pool.name, tape_formats::FORMAT_MAJOR as u32)?)
}

/// The cartridge to write next.
#[derive(Debug, Clone)]
pub enum Pick {
    /// Already in the set and writable: append at end of data.
    Append(MediaRow),
    /// Joins the set: gets a new volume label (everything on it is discarded).
    Join(MediaRow),
}

impl Pick {
    pub fn row(&self) -> &MediaRow {
        match self {
            Pick::Append(m) | Pick::Join(m) => m,
        }
    }
}

/// Allocation order: the set's writable cartridge; else a scratch cartridge of the pool
/// (labelled into it, in no set yet); else an expired cartridge of the pool; else an
/// unassigned blank cartridge. Only cartridges in the library (`present`) and not in
/// `exclude` count. None fits: exit 4 with what is needed.
pub fn pick_cartridge(
    cat: &Catalog,
    present: &HashSet<String>,
    pool: &PoolRow,
    set: &MediaSetRow,
    exclude: &HashSet<String>,
) -> Result<Pick> {
    let usable = |m: &MediaRow| present.contains(&m.barcode) && !exclude.contains(&m.barcode);
    if let Some(m) = cat
        .media_in_set(set.uuid)?
        .into_iter()
        .filter(|m| m.state == MediaState::Writable && usable(m))
        .max_by_key(|m| m.seq_in_set)
    {
        return Ok(Pick::Append(m));
    }
    let pool_media = cat.list_media(Some(&pool.name))?;
    if let Some(m) = pool_media.iter().find(|m| {
        m.media_set_uuid.is_none()
            && matches!(m.state, MediaState::Writable | MediaState::Blank)
            && usable(m)
    }) {
        return Ok(Pick::Join(m.clone()));
    }
    if let Some(m) = pool_media
        .iter()
        .find(|m| m.state == MediaState::Expired && usable(m))
    {
        return Ok(Pick::Join(m.clone()));
    }
    if let Some(m) = cat
        .list_media(None)?
        .into_iter()
        .find(|m| m.pool.is_none() && m.state == MediaState::Blank && usable(m))
    {
        return Ok(Pick::Join(m));
    }
    let offsite: Vec<String> = cat
        .media_in_set(set.uuid)?
        .into_iter()
        .filter(|m| m.state == MediaState::Writable && !present.contains(&m.barcode))
        .map(|m| format!("{} ({})", m.barcode, m.location))
        .collect();
    let hint = if offsite.is_empty() {
        String::new()
    } else {
        format!(
            " The set's writable cartridge is not in the library: {}.",
            offsite.join(", ")
        )
    };
    Err(Error::MediaNeeded(format!(
        "pool {} needs a writable cartridge and none is in the library (no writable cartridge of its media set {}, no scratch or expired cartridge of the pool, no blank cartridge).{hint} Insert one into a mail slot and run `tapevault library import`, or add blank cartridges.",
        pool.name, set.uuid
    )))
}
