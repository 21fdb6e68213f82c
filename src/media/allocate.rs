//! Which media set a session writes to and which cartridge it writes on, and keeping
//! the catalog's view of the library's cartridges current.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Utc};

use crate::catalog::{Allocation, Catalog, MediaRow, MediaSetRow, MediaState, PoolRow};
use crate::error::{Context, Error, Result};
use tape_devices::changer::{Inventory, TapeLibrary, CLEANING_PREFIX};

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
        // The catalog stores an element's location as its display text ("slot 3").
        let loc = e.element.to_string();
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
/// pool's allocation policy says so or the open one is past its retention (the old one
/// is then closed).
pub fn session_media_set(cat: &Catalog, pool: &PoolRow, now: DateTime<Utc>) -> Result<MediaSetRow> {
    if let Some(set) = cat.current_media_set(&pool.name)? {
        if !wants_new_set(pool.allocation, &set, now) && !past_retention(cat, pool, &set, now)? {
            return Ok(set);
        }
        super::lifecycle::close_set(cat, set.uuid)?;
    }
    super::lifecycle::create_media_set(cat, &pool.name, now)
}

/// Whether an open set's retention already ran out (it is only held by dependencies, or
/// expired). Appending to it would make its stale restore points, whose bases may
/// already be recycled, look kept again: a new set starts instead.
pub fn past_retention(
    cat: &Catalog,
    pool: &PoolRow,
    set: &MediaSetRow,
    now: DateTime<Utc>,
) -> Result<bool> {
    if pool.retention_days.is_none() {
        return Ok(false);
    }
    Ok(super::lifecycle::evaluate(cat, now)?
        .set(set.uuid)
        .is_some_and(|s| !matches!(s.verdict, super::lifecycle::Verdict::Kept { .. })))
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
    // An expired cartridge is checked again now (a newer incremental may need its set)
    // and recycled into the pool's scratch before it joins.
    let now = crate::home::clock::now();
    for m in pool_media
        .iter()
        .filter(|m| m.state == MediaState::Expired && usable(m))
    {
        if super::lifecycle::recycle_if_expired(cat, &m.barcode, now)? {
            let row = cat.media(&m.barcode)?.unwrap_or_else(|| m.clone());
            return Ok(Pick::Join(row));
        }
    }
    if let Some(m) = cat
        .list_media(None)?
        .into_iter()
        .find(|m| m.pool.is_none() && m.state == MediaState::Blank && usable(m))
    {
        return Ok(Pick::Join(m));
    }
    Err(Error::MediaNeeded(media_needed_message(
        cat, present, pool, set,
    )?))
}

/// What a pool needs when no cartridge for it is in the library, naming the cartridges
/// outside that would do.
pub fn media_needed_message(
    cat: &Catalog,
    present: &HashSet<String>,
    pool: &PoolRow,
    set: &MediaSetRow,
) -> Result<String> {
    let outside = |m: &MediaRow| !present.contains(&m.barcode);
    let fmt = |m: &MediaRow| format!("{} ({})", m.barcode, m.location);
    let set_writable: Vec<String> = cat
        .media_in_set(set.uuid)?
        .iter()
        .filter(|m| m.state == MediaState::Writable && outside(m))
        .map(fmt)
        .collect();
    let pool_media = cat.list_media(Some(&pool.name))?;
    let scratch: Vec<String> = pool_media
        .iter()
        .filter(|m| {
            outside(m)
                && ((m.media_set_uuid.is_none()
                    && matches!(m.state, MediaState::Writable | MediaState::Blank))
                    || m.state == MediaState::Expired)
        })
        .map(fmt)
        .collect();
    let mut hint = String::new();
    if !set_writable.is_empty() {
        hint.push_str(&format!(
            " The set's writable cartridge is outside the library: {}.",
            set_writable.join(", ")
        ));
    }
    if !scratch.is_empty() {
        hint.push_str(&format!(
            " Scratch or expired cartridges of the pool outside the library: {}.",
            scratch.join(", ")
        ));
    }
    Ok(format!(
        "pool {} needs a writable cartridge for media set {} and none is in the library (no writable cartridge of the set, no scratch or expired cartridge of the pool, no unassigned blank cartridge).{hint} Insert one into a mail slot and run `tapevault library import` (or `tapevault media return BARCODE`), or add blank cartridges.",
        pool.name, set.uuid
    ))
}

/// How long to wait for a cartridge to be inserted when none fits.
#[derive(Debug, Clone, Copy)]
pub struct MediaWait {
    /// Give up (exit 4) after this long.
    pub max: std::time::Duration,
    /// Re-read the library inventory this often.
    pub poll: std::time::Duration,
}

/// Re-read the inventory this often while waiting for media: a changer inventory is cheap,
/// an operator needs seconds to insert a cartridge.
pub const MEDIA_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// [`pick_cartridge`] after syncing the inventory; when none fits and `wait` is given (a
/// person is at a terminal), say once what is needed and poll the library until a
/// cartridge fits or `wait.max` passes; then fail with exit 4 and the same message.
/// A cartridge put into a mail slot is usable from there.
pub fn pick_or_wait(
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    pool: &PoolRow,
    set: &MediaSetRow,
    exclude: &HashSet<String>,
    wait: Option<MediaWait>,
    events: &dyn crate::events::Events,
) -> Result<(Pick, HashSet<String>)> {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        let (_, present) = sync_inventory(cat, lib)?;
        match pick_cartridge(cat, &present, pool, set, exclude) {
            Ok(p) => {
                if told {
                    events.emit(crate::events::Event::WaitOver);
                }
                return Ok((p, present));
            }
            Err(Error::MediaNeeded(msg)) => {
                let Some(w) = wait else {
                    return Err(Error::MediaNeeded(msg));
                };
                let waited = started.elapsed();
                if waited >= w.max {
                    if told {
                        events.emit(crate::events::Event::WaitOver);
                    }
                    return Err(Error::MediaNeeded(format!(
                        "{msg} (waited {} s)",
                        waited.as_secs()
                    )));
                }
                if !told {
                    events.waiting(
                        crate::events::WaitFor::Cartridge,
                        format!("{msg} Waiting up to {} s for it.", w.max.as_secs()),
                    );
                    told = true;
                }
                // A cartridge put into a mail slot counts as present on the next pass.
                std::thread::sleep(w.poll.min(w.max - waited));
            }
            Err(e) => {
                if told {
                    events.emit(crate::events::Event::WaitOver);
                }
                return Err(e);
            }
        }
    }
}
