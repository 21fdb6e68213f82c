//! `tapevault rotate`: today's rotation. Expire media sets past retention (unless a kept
//! restore point needs them), recycle expired cartridges in the library into their
//! pool's scratch, and tell the operator which cartridges to remove (finished sets of
//! pools with an offsite vault) and which to insert (expired cartridges due back from a
//! vault, cartridges the next session of a pool will need).
//!
//! [`plan`] only reads; [`apply`] takes every pool's job lock first (a pool whose lock
//! is held by a running backup is skipped and reported), so rotation never changes a
//! media set a job is writing, and never recycles a cartridge a drive holds for a job.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::allocate::wants_new_set;
use super::lifecycle::{self, Hold, Verdict};
use super::vault::{self, is_offsite};
use crate::catalog::{Catalog, MediaRow, MediaState, SessionStatus};
use crate::error::Result;
use crate::home::locks::{self, JobLock};
use crate::home::pools_toml::PoolsFile;
use tape_devices::changer::{ElementKind, TapeLibrary};

#[derive(Debug, Clone, Serialize)]
pub struct SetExpiry {
    #[serde(rename = "media_set")]
    pub set: Uuid,
    pub pool: String,
    pub last_write: DateTime<Utc>,
    pub expired_since: DateTime<Utc>,
    #[serde(rename = "barcodes")]
    pub cartridges: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetHeld {
    #[serde(rename = "media_set")]
    pub set: Uuid,
    pub pool: String,
    pub holds: Vec<Hold>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CartridgeAction {
    pub barcode: String,
    pub pool: Option<String>,
    pub media_set: Option<Uuid>,
    pub location: String,
    pub reason: String,
    /// Where it goes (a vault, for removals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// The state of a lock file.
#[derive(Debug, Clone, Serialize)]
pub struct LockInfo {
    pub lock: String,
    /// held | stale
    pub state: &'static str,
    pub note: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RotationPlan {
    pub now: Option<DateTime<Utc>>,
    /// Sets whose retention is over and that nothing kept needs.
    pub expire: Vec<SetExpiry>,
    /// Sets past retention that kept restore points still need.
    pub held: Vec<SetHeld>,
    /// Cartridges marked expired earlier whose set is needed again: back to full.
    pub unexpire: Vec<CartridgeAction>,
    /// Expired cartridges in the library: into their pool's scratch.
    pub recycle: Vec<CartridgeAction>,
    /// Take out of the library today.
    pub remove: Vec<CartridgeAction>,
    /// Bring into the library today.
    pub insert: Vec<CartridgeAction>,
    /// Pools whose next session needs a cartridge no known cartridge provides.
    pub needs: Vec<String>,
    pub locks: Vec<LockInfo>,
}

fn action(m: &MediaRow, reason: String, to: Option<String>) -> CartridgeAction {
    CartridgeAction {
        barcode: m.barcode.clone(),
        pool: m.pool.clone(),
        media_set: m.media_set_uuid,
        location: m.location.clone(),
        reason,
        to,
    }
}

/// Lock files under `dir`: held by a live process, or stale (a note left by a process
/// that is gone; the kernel already released its lock).
pub fn lock_report(dir: &Path) -> Vec<LockInfo> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "lock"))
        .collect();
    paths.sort();
    for p in paths {
        let note = std::fs::read_to_string(&p).unwrap_or_default();
        let note = note.trim().to_string();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if locks::is_held(&p) {
            out.push(LockInfo {
                lock: name,
                state: "held",
                note,
            });
        } else if !note.is_empty() {
            out.push(LockInfo {
                lock: name,
                state: "stale",
                note,
            });
        }
    }
    out
}

/// Work out today's rotation. `present` is what the library holds (see
/// [`super::allocate::sync_inventory`]).
pub fn plan(
    cat: &Catalog,
    present: &HashSet<String>,
    pools_cfg: &PoolsFile,
    locks_dir: &Path,
    now: DateTime<Utc>,
) -> Result<RotationPlan> {
    let ev = lifecycle::evaluate(cat, now)?;
    let mut p = RotationPlan {
        now: Some(now),
        locks: lock_report(locks_dir),
        ..Default::default()
    };
    let running: HashSet<Uuid> = cat
        .sessions()?
        .into_iter()
        .filter(|s| s.status == SessionStatus::Running)
        .filter_map(|s| s.media_set_uuid)
        .collect();
    let mut recycled: HashSet<String> = HashSet::new();
    for st in ev.sets.values() {
        let members = cat.media_in_set(st.set.uuid)?;
        match &st.verdict {
            Verdict::Expired { since } => {
                let live: Vec<&MediaRow> = members
                    .iter()
                    .filter(|m| {
                        matches!(
                            m.state,
                            MediaState::Writable | MediaState::Full | MediaState::Expired
                        )
                    })
                    .collect();
                if live.iter().any(|m| m.state != MediaState::Expired) {
                    p.expire.push(SetExpiry {
                        set: st.set.uuid,
                        pool: st.set.pool.clone(),
                        last_write: st.last_write,
                        expired_since: *since,
                        cartridges: live.iter().map(|m| m.barcode.clone()).collect(),
                    });
                }
                for m in live {
                    if present.contains(&m.barcode) {
                        recycled.insert(m.barcode.clone());
                        p.recycle.push(action(
                            m,
                            format!(
                                "media set {} expired on {}",
                                st.set.uuid,
                                since.format("%Y-%m-%d")
                            ),
                            None,
                        ));
                    } else if is_offsite(&m.location) {
                        p.insert.push(action(
                            m,
                            format!(
                                "expired on {}: due back for reuse in pool {}",
                                since.format("%Y-%m-%d"),
                                st.set.pool
                            ),
                            None,
                        ));
                    }
                }
            }
            v => {
                if let Verdict::Held { holds } = v {
                    p.held.push(SetHeld {
                        set: st.set.uuid,
                        pool: st.set.pool.clone(),
                        holds: holds.clone(),
                    });
                }
                for m in members.iter().filter(|m| m.state == MediaState::Expired) {
                    p.unexpire.push(action(
                        m,
                        match v {
                            Verdict::Held { holds } => {
                                format!("needed again: {}", holds[0].describe())
                            }
                            _ => "its media set is within retention again".into(),
                        },
                        None,
                    ));
                }
            }
        }
    }

    // Finished, complete sets of pools with an offsite vault go out.
    let mut leaving: HashSet<String> = HashSet::new();
    for pool in cat.pools()? {
        let Some(vault_name) = crate::home::pools_toml::offsite_of(pools_cfg, &pool.name) else {
            continue;
        };
        for st in ev.sets.values().filter(|s| s.set.pool == pool.name) {
            if st.is_expired() || running.contains(&st.set.uuid) {
                continue;
            }
            let finished = st.set.closed
                || wants_new_set(pool.allocation, &st.set, now)
                || crate::home::pools_toml::offsite_when(pools_cfg, &pool.name)
                    == crate::home::pools_toml::OffsiteWhen::Written;
            if !finished {
                continue;
            }
            let members = cat.media_in_set(st.set.uuid)?;
            let inside: Vec<&MediaRow> = members
                .iter()
                .filter(|m| present.contains(&m.barcode))
                .filter(|m| !matches!(m.state, MediaState::Damaged | MediaState::Retired))
                .collect();
            if inside.is_empty() {
                continue;
            }
            if let Some(r) = vault::set_incomplete_reason(cat, st.set.uuid)? {
                p.needs.push(format!(
                    "media set {} of pool {} is finished but cannot go to vault {vault_name}: {r}",
                    st.set.uuid, pool.name
                ));
                continue;
            }
            for m in inside {
                leaving.insert(m.barcode.clone());
                p.remove.push(action(
                    m,
                    format!(
                        "media set {} of pool {} is finished, with its catalog snapshot on it",
                        st.set.uuid, pool.name
                    ),
                    Some(format!("{}{vault_name}", vault::VAULT_PREFIX)),
                ));
            }
        }
    }

    // Will each pool's next session find a cartridge in the library?
    let all = cat.list_media(None)?;
    let mut blanks: Vec<&MediaRow> = all
        .iter()
        .filter(|m| m.pool.is_none() && m.state == MediaState::Blank)
        .filter(|m| present.contains(&m.barcode))
        .collect();
    let mut spoken_for: HashSet<String> = HashSet::new();
    for pool in cat.pools()? {
        let current = cat.current_media_set(&pool.name)?;
        let new_set = match &current {
            None => true,
            Some(s) => {
                wants_new_set(pool.allocation, s, now)
                    || (pool.retention_days.is_some()
                        && ev
                            .set(s.uuid)
                            .is_some_and(|x| !matches!(x.verdict, Verdict::Kept { .. })))
                    || leaving.iter().any(|b| {
                        all.iter()
                            .any(|m| &m.barcode == b && m.media_set_uuid == Some(s.uuid))
                    })
            }
        };
        if !new_set {
            let set = current.as_ref().expect("an open set");
            let writable: Vec<&MediaRow> = all
                .iter()
                .filter(|m| m.media_set_uuid == Some(set.uuid) && m.state == MediaState::Writable)
                .collect();
            if writable.iter().any(|m| present.contains(&m.barcode)) {
                continue;
            }
            for m in writable.iter().filter(|m| is_offsite(&m.location)) {
                p.insert.push(action(
                    m,
                    format!(
                        "the writable cartridge of pool {}'s current media set, needed by its next backup",
                        pool.name
                    ),
                    None,
                ));
            }
            if !writable.is_empty() {
                continue;
            }
        }
        let pool_media: Vec<&MediaRow> = all
            .iter()
            .filter(|m| m.pool.as_deref() == Some(&pool.name))
            .collect();
        let usable_inside = pool_media.iter().any(|m| {
            present.contains(&m.barcode)
                && !leaving.contains(&m.barcode)
                && !spoken_for.contains(&m.barcode)
                && ((m.media_set_uuid.is_none()
                    && matches!(m.state, MediaState::Writable | MediaState::Blank))
                    || recycled.contains(&m.barcode))
        });
        if usable_inside {
            continue;
        }
        if let Some(b) = blanks.pop() {
            spoken_for.insert(b.barcode.clone());
            continue;
        }
        // Nothing inside: name what outside would do.
        let outside: Vec<&&MediaRow> = pool_media
            .iter()
            .filter(|m| is_offsite(&m.location))
            .filter(|m| {
                m.media_set_uuid.is_none()
                    && matches!(m.state, MediaState::Writable | MediaState::Blank)
            })
            .collect();
        if let Some(m) = outside.first() {
            if !p.insert.iter().any(|a| a.barcode == m.barcode) {
                p.insert.push(action(
                    m,
                    format!(
                        "scratch cartridge of pool {}, needed by its next backup",
                        pool.name
                    ),
                    None,
                ));
            }
        } else if !p
            .insert
            .iter()
            .any(|a| a.pool.as_deref() == Some(pool.name.as_str()))
        {
            p.needs.push(format!(
                "pool {} has no usable cartridge in the library for its next backup: insert a blank cartridge",
                pool.name
            ));
        }
    }
    Ok(p)
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub expired: Vec<String>,
    pub unexpired: Vec<String>,
    pub recycled: Vec<String>,
    /// Images the catalog forgot because their cartridges were recycled.
    pub forgotten_images: usize,
    /// Cartridges moved to the mail slots for removal.
    pub exported: Vec<vault::Moved>,
    /// Pools left alone, and why (a job holds their lock).
    pub skipped_pools: Vec<String>,
    /// Stale locks found (and taken over) on the way.
    pub stale_locks: Vec<String>,
    pub warnings: Vec<String>,
}

/// Carry out `plan`: lock every pool (skipping busy ones), expire, un-expire, recycle
/// (re-checked at `now`, and never a cartridge in a drive another process holds), and
/// move the cartridges to remove into free mail slots, whole sets only.
pub fn apply(
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    locks_dir: &Path,
    plan: &RotationPlan,
    now: DateTime<Utc>,
) -> Result<ApplyReport> {
    let mut rep = ApplyReport::default();
    let mut held_locks: Vec<JobLock> = Vec::new();
    let mut ok_pools: HashSet<String> = HashSet::new();
    for pool in cat.pools()? {
        let path = locks_dir.join(format!("pool-{}.lock", pool.name));
        match JobLock::try_acquire(&path, &format!("rotate pool {}", pool.name)) {
            Ok(l) => {
                if let Some(n) = &l.stale_note {
                    rep.stale_locks.push(format!(
                        "pool {}: stale lock left by a process that is gone ({n}); taken over",
                        pool.name
                    ));
                }
                ok_pools.insert(pool.name.clone());
                held_locks.push(l);
            }
            Err(e) => rep
                .skipped_pools
                .push(format!("pool {} skipped: {e}", pool.name)),
        }
    }
    let pool_ok = |p: &Option<String>| p.as_ref().is_some_and(|p| ok_pools.contains(p));
    let pool_of =
        |set: Uuid| -> Option<String> { cat.media_set(set).ok().flatten().map(|s| s.pool) };

    for m in &plan.unexpire {
        if pool_ok(&m.pool) {
            cat.set_media_state(&m.barcode, MediaState::Full)?;
            rep.unexpired.push(m.barcode.clone());
        }
    }
    // Decide again under the locks (the plan may be older than a backup that finished
    // meanwhile); state changes below do not change verdicts.
    let ev = lifecycle::evaluate(cat, now)?;
    for e in &plan.expire {
        if !ok_pools.contains(&e.pool) {
            continue;
        }
        if !ev.set(e.set).is_some_and(|s| s.is_expired()) {
            continue;
        }
        if cat.media_set(e.set)?.is_some_and(|s| !s.closed) {
            lifecycle::close_set(cat, e.set)?;
        }
        for m in cat.media_in_set(e.set)? {
            if matches!(m.state, MediaState::Writable | MediaState::Full) {
                cat.set_media_state(&m.barcode, MediaState::Expired)?;
                rep.expired.push(m.barcode.clone());
            }
        }
    }
    let inv = lib.changer().inventory()?;
    for r in &plan.recycle {
        let pool = r.pool.clone().or_else(|| r.media_set.and_then(pool_of));
        if !pool_ok(&pool) {
            continue;
        }
        if let Some(e) = inv.find(&r.barcode) {
            if e.element.kind == ElementKind::Drive {
                match lib.open_drive(e.element.index) {
                    Ok(d) => drop(d),
                    Err(err) => {
                        rep.warnings.push(format!(
                            "{} not recycled: it is in {} ({err})",
                            r.barcode, e.element
                        ));
                        continue;
                    }
                }
            }
        }
        let worm = pool
            .as_deref()
            .and_then(|p| cat.pool(p).ok().flatten())
            .is_some_and(|p| p.worm);
        if worm {
            // A WORM cartridge cannot be rewritten: it leaves the rotation.
            if cat
                .media(&r.barcode)?
                .is_some_and(|m| m.state == MediaState::Expired)
            {
                cat.set_media_state(&r.barcode, MediaState::Retired)?;
                rep.warnings.push(format!(
                    "{} is a WORM cartridge of an expired set: retired (it cannot be rewritten)",
                    r.barcode
                ));
            }
            continue;
        }
        let before = cat.images_on_media(&r.barcode)?.len();
        if lifecycle::recycle_if_expired_in(cat, &ev, &r.barcode, now)? {
            rep.recycled.push(r.barcode.clone());
            rep.forgotten_images += before;
        }
    }
    // Removals: whole sets into free mail slots.
    let mut by_set: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
    for r in &plan.remove {
        if let Some(s) = r.media_set {
            if pool_ok(&r.pool) {
                by_set.entry(s).or_default().push(r.barcode.clone());
            }
        }
    }
    for (set, _) in by_set {
        match vault::export(cat, lib, &[], Some(set), false) {
            Ok(x) => rep.exported.extend(x.moved),
            Err(e) => rep
                .warnings
                .push(format!("media set {set} not exported: {e}")),
        }
    }
    drop(held_locks);
    Ok(rep)
}
