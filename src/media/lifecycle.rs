//! The life cycle of a cartridge and when it may be overwritten.
//!
//! ```text
//! blank --label/join--> writable (pool scratch, or in a media set) --EW / set closed--> full
//!   full --retention over, nothing kept needs it--> expired --recycle--> writable (pool scratch)
//!   any --write errors--> damaged        any --operator--> retired
//! ```
//!
//! Retention is per media set: a set expires `retention_days` after its last write. A set
//! past its retention is still *held* while any kept restore point needs an image on it
//! (an incremental in a kept set whose chain runs through it, in any pool), and the
//! newest good restore point of every disk (with its chain) is never expired, so a disk
//! whose backups stopped keeps its last restore point and a running backup's base is
//! never recycled under it. Expiry is decided here only; everything that overwrites a
//! cartridge asks [`recycle_if_expired`] or [`overwrite_impact`] first.
//!
//! All decisions take "now" as an argument (the jobs pass [`crate::home::clock::now`], so
//! `TAPEVAULT_NOW` simulates months of rotation).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Duration, Utc};
use rusqlite::params;
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{
    catalog_time, Catalog, ImageRow, ImageStatus, MediaRow, MediaSetRow, MediaState, PoolRow,
    SessionStatus,
};
use crate::error::{Error, Result};

/// Why a media set may not be overwritten yet, or that it may.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Within retention (`until` None: the pool keeps restore points forever), or in use
    /// by a running session.
    Kept {
        until: Option<DateTime<Utc>>,
        reason: String,
    },
    /// Past retention, but a kept restore point needs images on it.
    Held { holds: Vec<Hold> },
    /// May be recycled.
    Expired { since: DateTime<Utc> },
}

/// One image a kept restore point needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    /// The image on this set.
    pub image: Uuid,
    pub disk: Uuid,
    /// The kept image whose restore chain includes it.
    pub needed_by: Uuid,
    /// The media set of `needed_by` (None if it is not on any known set).
    #[serde(rename = "needed_by_media_set")]
    pub needed_by_set: Option<Uuid>,
}

impl Hold {
    /// "image X needs Y", or that Y is the newest restore point of its disk.
    pub fn describe(&self) -> String {
        if self.needed_by == self.image {
            format!(
                "image {} is the newest restore point of disk {}",
                self.image, self.disk
            )
        } else {
            format!(
                "kept image {} of disk {} needs image {}",
                self.needed_by, self.disk, self.image
            )
        }
    }
}

/// The retention state of one media set at a point in time.
#[derive(Debug, Clone, Serialize)]
pub struct SetStatus {
    pub set: MediaSetRow,
    /// The newest write to the set (its last write, or its creation).
    pub last_write: DateTime<Utc>,
    pub retention_days: Option<u32>,
    pub verdict: Verdict,
    /// The set's cartridges, in sequence order.
    pub media: Vec<String>,
}

impl SetStatus {
    pub fn is_expired(&self) -> bool {
        matches!(self.verdict, Verdict::Expired { .. })
    }
}

/// Everything [`evaluate`] found, by set.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub sets: BTreeMap<Uuid, SetStatus>,
}

impl Evaluation {
    pub fn set(&self, uuid: Uuid) -> Option<&SetStatus> {
        self.sets.get(&uuid)
    }
}

/// Record a write to a media set at `t` (the jobs' clock; the catalog's own
/// `touch_media_set` uses the system clock, which simulated rotation must not).
pub fn record_set_write(cat: &Catalog, set: Uuid, t: DateTime<Utc>) -> Result<()> {
    let n = cat
        .conn()
        .execute(
            "UPDATE media_sets SET last_write=?2 WHERE uuid=?1",
            params![set.to_string(), crate::catalog::ts(&t)],
        )
        .map_err(crate::catalog::CatalogError::from)?;
    if n == 0 {
        return Err(Error::Failed(format!(
            "media set {set} is not in the catalog"
        )));
    }
    Ok(())
}

/// Start a new media set of `pool` created at `now`.
pub fn create_media_set(cat: &Catalog, pool: &str, now: DateTime<Utc>) -> Result<MediaSetRow> {
    let row = MediaSetRow {
        uuid: Uuid::new_v4(),
        pool: pool.to_string(),
        created: catalog_time(now),
        last_write: None,
        closed: false,
        format_major: tape_formats::FORMAT_MAJOR as u32,
    };
    if cat.pool(pool)?.is_none() {
        return Err(Error::Usage(format!("no pool named {pool}")));
    }
    cat.insert_media_set(&row)?;
    Ok(row)
}

/// Close a media set: no more appends. Its writable cartridges become full.
pub fn close_set(cat: &Catalog, set: Uuid) -> Result<()> {
    cat.close_media_set(set)?;
    for m in cat.media_in_set(set)? {
        if m.state == MediaState::Writable {
            cat.set_media_state(&m.barcode, MediaState::Full)?;
        }
    }
    Ok(())
}

/// The media set an image belongs to: its session's set, else the set of the cartridge
/// its first segment is on.
fn image_set(
    cat: &Catalog,
    img: &ImageRow,
    session_sets: &HashMap<Uuid, Option<Uuid>>,
    media: &HashMap<String, MediaRow>,
) -> Result<Option<Uuid>> {
    if let Some(s) = img
        .session_uuid
        .and_then(|s| session_sets.get(&s).copied().flatten())
    {
        return Ok(Some(s));
    }
    Ok(cat
        .segments(img.uuid)?
        .first()
        .and_then(|seg| media.get(&seg.barcode))
        .and_then(|m| m.media_set_uuid))
}

/// Decide, for every media set, whether it is kept, held or expired at `now`.
pub fn evaluate(cat: &Catalog, now: DateTime<Utc>) -> Result<Evaluation> {
    let pools: HashMap<String, PoolRow> = cat
        .pools()?
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
    let media: HashMap<String, MediaRow> = cat
        .list_media(None)?
        .into_iter()
        .map(|m| (m.barcode.clone(), m))
        .collect();
    let sessions = cat.sessions()?;
    let session_sets: HashMap<Uuid, Option<Uuid>> = sessions
        .iter()
        .map(|s| (s.uuid, s.media_set_uuid))
        .collect();
    let running_sets: HashSet<Uuid> = sessions
        .iter()
        .filter(|s| s.status == SessionStatus::Running)
        .filter_map(|s| s.media_set_uuid)
        .collect();
    let images = cat.images(None)?;
    let by_uuid: HashMap<Uuid, &ImageRow> = images.iter().map(|i| (i.uuid, i)).collect();
    let mut set_of: HashMap<Uuid, Option<Uuid>> = HashMap::new();
    let mut newest_in_set: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    for i in &images {
        let s = image_set(cat, i, &session_sets, &media)?;
        if let Some(s) = s {
            let t = match (i.status, i.finished) {
                (ImageStatus::Complete, Some(f)) => f.max(i.started),
                _ => i.started,
            };
            let e = newest_in_set.entry(s).or_insert(t);
            *e = (*e).max(t);
        }
        set_of.insert(i.uuid, s);
    }

    let mut out = Evaluation::default();
    let mut kept: HashSet<Uuid> = HashSet::new();
    for set in cat.media_sets(None)? {
        let mut last = set.last_write.unwrap_or(set.created).max(set.created);
        if let Some(t) = newest_in_set.get(&set.uuid) {
            last = last.max(*t);
        }
        let retention = pools.get(&set.pool).and_then(|p| p.retention_days);
        let verdict = if running_sets.contains(&set.uuid) {
            Verdict::Kept {
                until: None,
                reason: "a backup session is writing to it".into(),
            }
        } else {
            match retention {
                None => Verdict::Kept {
                    until: None,
                    reason: format!("pool {} keeps restore points forever", set.pool),
                },
                Some(d) => {
                    let ends = last + Duration::days(i64::from(d));
                    if now < ends {
                        Verdict::Kept {
                            until: Some(ends),
                            reason: format!("within the {d}-day retention of pool {}", set.pool),
                        }
                    } else {
                        Verdict::Expired { since: ends }
                    }
                }
            }
        };
        if matches!(verdict, Verdict::Kept { .. }) {
            kept.insert(set.uuid);
        }
        let media_of: Vec<String> = cat
            .media_in_set(set.uuid)?
            .into_iter()
            .map(|m| m.barcode)
            .collect();
        out.sets.insert(
            set.uuid,
            SetStatus {
                set,
                last_write: last,
                retention_days: retention,
                verdict,
                media: media_of,
            },
        );
    }

    // A restore point is its original image and the original's complete copies (each
    // on a set of its own pool, under that pool's retention). A point is kept while
    // any complete image of it is on a kept set; a point that must be held and is on
    // no kept set holds the set of its original (while complete), else of a complete
    // copy: one restorable image of it is enough.
    let mut holders: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for i in &images {
        if i.status == ImageStatus::Complete {
            holders.entry(i.identity()).or_default().push(i.uuid);
        }
    }
    let on_kept = |u: &Uuid| {
        set_of
            .get(u)
            .copied()
            .flatten()
            .is_some_and(|s| kept.contains(&s))
    };
    let point_kept = |p: &Uuid| holders.get(p).is_some_and(|hs| hs.iter().any(&on_kept));
    // The image whose set a point needing a hold holds.
    let hold_target = |p: &Uuid| -> Option<Uuid> {
        let orig_complete = by_uuid
            .get(p)
            .is_some_and(|o| o.status == ImageStatus::Complete);
        if !orig_complete {
            if let Some(c) = holders.get(p).and_then(|hs| {
                hs.iter()
                    .find(|h| **h != *p && set_of.get(*h).copied().flatten().is_some())
            }) {
                return Some(*c);
            }
        }
        by_uuid.contains_key(p).then_some(*p)
    };

    // Restore points that are kept: every complete image (original or copy) on a kept
    // set, and the newest good image of each disk. Walk their chains; every set an
    // ancestor point lives on (and no kept set holds) is held.
    let mut queue: VecDeque<Uuid> = VecDeque::new();
    for i in &images {
        if i.status == ImageStatus::Complete && on_kept(&i.uuid) {
            queue.push_back(i.identity());
        }
    }
    // The newest good image of every disk, from the rows loaded above (one walk per
    // chain, not a query per disk and per link).
    let mut newest: Vec<Uuid> = cat.newest_good_images(&images)?.into_values().collect();
    newest.sort();
    let mut walked: HashSet<Uuid> = HashSet::new();
    // Hashed: with 100 k kept images and 1 k disks, a Vec here cost 10^8 comparisons.
    let mut newest_holds: HashSet<Uuid> = newest.iter().copied().collect();
    queue.extend(newest.drain(..));
    // Only images on a set that is not kept can hold anything. `skip` maps an image to
    // the first such image at or above it in its chain (None: there is none), shared
    // by every walk through it: walking 100 k kept images of chains 50 deep was 5 M
    // steps, and is now about one per image.
    let set_ids: HashSet<Uuid> = out.sets.keys().copied().collect();
    let can_hold = |u: &Uuid| {
        !point_kept(u)
            && hold_target(u)
                .and_then(|t| set_of.get(&t).copied().flatten())
                .is_some_and(|s| !kept.contains(&s) && set_ids.contains(&s))
    };
    let mut skip: HashMap<Uuid, Option<Uuid>> = HashMap::new();
    let mut resolve = |from: Uuid| -> Option<Uuid> {
        let mut path: Vec<Uuid> = Vec::new();
        let mut cur = Some(from);
        let found = loop {
            let Some(u) = cur else { break None };
            if let Some(r) = skip.get(&u) {
                break *r;
            }
            if can_hold(&u) {
                break Some(u);
            }
            path.push(u);
            if path.len() > crate::catalog::MAX_CHAIN_LEN {
                break None;
            }
            cur = by_uuid
                .get(&u)
                .and_then(|i| i.parent_uuid)
                .filter(|p| by_uuid.contains_key(p));
        };
        for u in path {
            skip.insert(u, found);
        }
        found
    };
    while let Some(start) = queue.pop_front() {
        if !walked.insert(start) {
            continue;
        }
        let mut cur = if by_uuid.contains_key(&start) {
            resolve(start).and_then(|u| by_uuid.get(&u).copied())
        } else {
            None
        };
        let is_newest = newest_holds.contains(&start);
        let start_set = set_of.get(&start).copied().flatten();
        let mut steps = 0usize;
        while let Some(img) = cur {
            steps += 1;
            if steps > crate::catalog::MAX_CHAIN_LEN {
                break;
            }
            let target = hold_target(&img.uuid).filter(|_| !point_kept(&img.uuid));
            if let Some((t, s)) =
                target.and_then(|t| set_of.get(&t).copied().flatten().map(|s| (t, s)))
            {
                let needed = img.uuid != start || is_newest;
                if needed && !kept.contains(&s) {
                    if let Some(st) = out.sets.get_mut(&s) {
                        let hold = Hold {
                            image: t,
                            disk: img.disk_uuid,
                            needed_by: start,
                            needed_by_set: start_set,
                        };
                        match &mut st.verdict {
                            Verdict::Held { holds } => {
                                if !holds.contains(&hold) {
                                    holds.push(hold)
                                }
                            }
                            v => *v = Verdict::Held { holds: vec![hold] },
                        }
                    }
                }
            }
            cur = img
                .parent_uuid
                .filter(|p| by_uuid.contains_key(p))
                .and_then(&mut resolve)
                .and_then(|u| by_uuid.get(&u).copied());
        }
        // The chain of a newest image is walked once; make later holds on the same
        // images count too by remembering nothing else: a held set's other images are
        // not restore points that must be kept.
        newest_holds.remove(&start);
    }
    Ok(out)
}

/// What overwriting a cartridge would destroy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Impact {
    pub barcode: String,
    /// Complete images with data on the cartridge (all of each image is lost).
    pub images: Vec<ImageRow>,
    /// Complete incrementals elsewhere whose chain runs through those images.
    pub dependents: Vec<ImageRow>,
    /// Why the media set is still kept (None: expired or no set).
    pub kept_because: Option<String>,
}

impl Impact {
    /// Nothing restorable would be lost.
    pub fn is_harmless(&self) -> bool {
        self.kept_because.is_none()
    }

    /// A sentence listing everything that would be lost.
    pub fn describe(&self) -> String {
        let fmt = |i: &ImageRow| {
            format!(
                "{} image {} of disk {}{} taken {}",
                i.kind,
                i.uuid,
                i.disk_uuid,
                i.vm_name
                    .as_deref()
                    .map(|v| format!(" (VM {v})"))
                    .unwrap_or_default(),
                i.started.format("%Y-%m-%d %H:%M UTC")
            )
        };
        let mut s = format!(
            "{} restore point(s) on {}: {}",
            self.images.len(),
            self.barcode,
            self.images.iter().map(fmt).collect::<Vec<_>>().join("; ")
        );
        if !self.dependents.is_empty() {
            s.push_str(&format!(
                "; and {} incremental(s) on other cartridges that need them: {}",
                self.dependents.len(),
                self.dependents
                    .iter()
                    .map(fmt)
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        s
    }
}

fn verdict_reason(v: &Verdict) -> Option<String> {
    match v {
        Verdict::Kept { until, reason } => Some(match until {
            Some(t) => format!("{reason}, until {}", t.format("%Y-%m-%d %H:%M UTC")),
            None => reason.clone(),
        }),
        Verdict::Held { holds } => Some(format!(
            "past retention but needed by kept restore point(s): {}",
            holds
                .iter()
                .map(Hold::describe)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Verdict::Expired { .. } => None,
    }
}

/// What relabelling or overwriting `barcode` at `now` would lose.
pub fn overwrite_impact(cat: &Catalog, barcode: &str, now: DateTime<Utc>) -> Result<Impact> {
    let images: Vec<ImageRow> = cat
        .images_on_media(barcode)?
        .into_iter()
        .filter(|i| i.status == ImageStatus::Complete)
        .collect();
    let on: HashSet<Uuid> = images.iter().map(|i| i.uuid).collect();
    let mut dependents: Vec<ImageRow> = Vec::new();
    let mut seen = HashSet::new();
    for i in &images {
        for d in cat.dependents(i.uuid)? {
            if d.status == ImageStatus::Complete && !on.contains(&d.uuid) && seen.insert(d.uuid) {
                dependents.push(d);
            }
        }
    }
    let m = cat.media(barcode)?;
    let kept_because = match m.as_ref().and_then(|m| m.media_set_uuid) {
        Some(set) if !images.is_empty() => {
            let ev = evaluate(cat, now)?;
            ev.set(set).and_then(|s| verdict_reason(&s.verdict))
        }
        // Restore points on a cartridge the catalog places in no set (inconsistent
        // catalog): treat them as kept.
        None if !images.is_empty() => Some("it holds restore points".into()),
        _ => None,
    };
    Ok(Impact {
        barcode: barcode.to_string(),
        images,
        dependents,
        kept_because,
    })
}

/// The catalog forgets what an overwritten or recycled cartridge held. With `delete`
/// (expired contents), images with data on it are deleted (their block digest lists
/// too) when nothing depends on them; otherwise, and always without `delete` (kept
/// restore points destroyed by force), they are marked corrupt with `note`, so they and
/// every chain through them say why they are gone. Returns the images affected.
pub fn forget_contents(
    cat: &Catalog,
    barcode: &str,
    note: &str,
    delete: bool,
) -> Result<Vec<Uuid>> {
    // Parts a media scan read from it, kept to be joined later, are gone with it.
    cat.drop_scanned_parts_on(barcode)?;
    let mut imgs = cat.images_on_media(barcode)?;
    // Newest first, so an incremental goes before the image it depends on (the catalog
    // lists oldest first, taking images with the same start time in the order they
    // were recorded, which is what a simulated clock gives).
    imgs.reverse();
    let on_this: HashSet<Uuid> = imgs.iter().map(|i| i.uuid).collect();
    let mut done = Vec::new();
    for i in imgs {
        if delete && i.status != ImageStatus::Running {
            match i.copy_of {
                // An original whose point a complete copy elsewhere still holds: the
                // point stays restorable from the copy, which is its primary image
                // now. The original's row stays (what is built on it names it) with
                // why it is gone and which copy holds the point; its segments go with
                // the cartridge.
                None => {
                    let copies: Vec<ImageRow> = cat
                        .copies_of(i.uuid)?
                        .into_iter()
                        .filter(|c| c.status == ImageStatus::Complete && !on_this.contains(&c.uuid))
                        .collect();
                    if let Some(c) = copies.first() {
                        cat.retire_original(
                            i.uuid,
                            &format!(
                                "{note}; the point is held by copy {} in pool {}, now its primary image",
                                c.uuid,
                                c.pool.as_deref().unwrap_or("?")
                            ),
                        )?;
                        done.push(i.uuid);
                        continue;
                    }
                }
                // A copy expires under its own pool's retention. When it was the last
                // image holding a point whose original is gone already, the point goes
                // with it.
                Some(orig) => {
                    cat.delete_image(i.uuid)?;
                    done.push(i.uuid);
                    let last = format!("{note}: it held the last copy ({}) of this point", i.uuid);
                    prune_gone_point(cat, orig, &last)?;
                    if let Some(p) = i.parent_uuid {
                        prune_gone_point(cat, p, note)?;
                    }
                    continue;
                }
            }
        }
        let deps = cat.dependents(i.uuid)?;
        if delete && deps.is_empty() && i.status != ImageStatus::Running {
            cat.delete_image(i.uuid)?;
            if let Some(dl) = cat.digest_list_file(&i) {
                let _ = std::fs::remove_file(dl);
            }
            if let Some(p) = i.parent_uuid {
                prune_gone_point(cat, p, note)?;
            }
        } else {
            cat.mark_corrupt(i.uuid, note)?;
            for d in deps {
                if d.status == ImageStatus::Complete {
                    cat.mark_corrupt(
                        d.uuid,
                        &format!("its base image {} is gone ({note})", i.uuid),
                    )?;
                }
            }
        }
        done.push(i.uuid);
    }
    Ok(done)
}

/// A point whose original expired while a copy held it (the row stays, without
/// segments) is gone once no complete image holds it: forgotten when nothing is built
/// on it any more (and so, in turn, its parent), else marked corrupt with `note` (and
/// what is built on it with it). Anything else (complete, running, held by a copy, or
/// with data on tape) is left alone.
fn prune_gone_point(cat: &Catalog, mut uuid: Uuid, note: &str) -> Result<()> {
    for _ in 0..crate::catalog::MAX_CHAIN_LEN {
        let Some(o) = cat.image(uuid)? else {
            return Ok(());
        };
        if matches!(o.status, ImageStatus::Complete | ImageStatus::Running)
            || o.copy_of.is_some()
            || cat.held_by_complete(&o)?
            || !cat.segments(o.uuid)?.is_empty()
        {
            return Ok(());
        }
        if !cat.dependents(o.uuid)?.is_empty() {
            cat.mark_corrupt(o.uuid, note)?;
            return Ok(());
        }
        cat.delete_image(o.uuid)?;
        if let Some(dl) = cat.digest_list_file(&o) {
            let _ = std::fs::remove_file(dl);
        }
        match o.parent_uuid {
            Some(p) => uuid = p,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// Put an expired cartridge into its pool's scratch: the catalog forgets its contents,
/// it leaves its media set and becomes writable (its volume label is rewritten when a
/// backup joins it to a new set).
pub fn recycle(cat: &Catalog, m: &MediaRow, now: DateTime<Utc>) -> Result<Vec<Uuid>> {
    let note = format!(
        "expired: cartridge {} was recycled on {}",
        m.barcode,
        now.format("%Y-%m-%d")
    );
    let forgotten = forget_contents(cat, &m.barcode, &note, true)?;
    let mut r = m.clone();
    r.media_set_uuid = None;
    r.seq_in_set = None;
    r.state = MediaState::Writable;
    r.next_tape_file = 1;
    r.bytes_written = 0;
    cat.upsert_media(&r)?;
    Ok(forgotten)
}

/// Before a backup joins an expired cartridge: check again at `now` that its set is
/// expired (a new incremental may have made it needed), and recycle it if so. A
/// cartridge whose set is needed again goes back to full. Returns whether it may be
/// overwritten.
pub fn recycle_if_expired(cat: &Catalog, barcode: &str, now: DateTime<Utc>) -> Result<bool> {
    let ev = evaluate(cat, now)?;
    recycle_if_expired_in(cat, &ev, barcode, now)
}

/// [`recycle_if_expired`] with an evaluation made at `now` (one evaluation serves a
/// whole rotation run).
pub fn recycle_if_expired_in(
    cat: &Catalog,
    ev: &Evaluation,
    barcode: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let Some(m) = cat.media(barcode)? else {
        return Ok(false);
    };
    if m.state != MediaState::Expired {
        return Ok(false);
    }
    let Some(set) = m.media_set_uuid else {
        // Already out of any set: nothing on it is known.
        return Ok(overwrite_impact(cat, barcode, now)?.images.is_empty());
    };
    match ev.set(set) {
        Some(s) if s.is_expired() => {
            recycle(cat, &m, now)?;
            Ok(true)
        }
        Some(_) => {
            cat.set_media_state(barcode, MediaState::Full)?;
            Ok(false)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Compression, Extent, ImageKind, ImageStats, NewImage, Segment};

    fn pool(cat: &Catalog, name: &str, days: Option<u32>) {
        cat.create_pool(&PoolRow {
            name: name.into(),
            key_name: None,
            key_fingerprint: None,
            compression: Compression::Off,
            retention_days: days,
            allocation: crate::catalog::Allocation::PerSession,
            worm: false,
            escrow: false,
            created: Utc::now(),
        })
        .unwrap();
    }

    fn t(day: i64) -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::days(day)
    }

    /// Write one image onto a fresh set of `pool` on cartridge `bc` at day `day`.
    fn write(
        cat: &Catalog,
        pool: &str,
        bc: &str,
        day: i64,
        disk: Uuid,
        parent: Option<Uuid>,
    ) -> (Uuid, Uuid) {
        let set = create_media_set(cat, pool, t(day)).unwrap();
        cat.upsert_media(&MediaRow::new_blank(bc, "slot 0"))
            .unwrap();
        cat.assign_media(bc, pool, set.uuid, 0, Uuid::new_v4())
            .unwrap();
        let sess = cat.begin_session(pool, Some(set.uuid)).unwrap();
        let img = cat
            .begin_image(&NewImage {
                uuid: Uuid::new_v4(),
                disk_uuid: disk,
                vm_name: None,
                disk_label: None,
                kind: if parent.is_some() {
                    ImageKind::Incremental
                } else {
                    ImageKind::Full
                },
                parent_uuid: parent,
                change_id: None,
                from_change_id: None,
                disk_size: 4096,
                block_size: 4096,
                session_uuid: Some(sess.uuid),
                pool: Some(pool.into()),
                key_fingerprint: None,
                compression: Compression::Off,
                started: t(day),
                synthetic_of: None,
            })
            .unwrap();
        cat.complete_image(
            img.uuid,
            &ImageStats {
                records: 1,
                finished: Some(t(day)),
                ..Default::default()
            },
            "00",
            &[Segment {
                part: 0,
                barcode: bc.into(),
                tape_file: 1,
                first_block: 2,
                last_block: 2,
                first_seq: 0,
                last_seq: 0,
                disk_start: 0,
                disk_end: 4096,
            }],
            &[Extent {
                offset: 0,
                length: 4096,
                is_zero: false,
            }],
        )
        .unwrap();
        cat.finish_session(sess.uuid, SessionStatus::Complete)
            .unwrap();
        record_set_write(cat, set.uuid, t(day)).unwrap();
        close_set(cat, set.uuid).unwrap();
        (set.uuid, img.uuid)
    }

    #[test]
    fn a_full_that_a_kept_incremental_needs_is_held_across_pools() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        pool(&cat, "weekly", Some(7));
        pool(&cat, "daily", Some(3));
        let disk = Uuid::new_v4();
        let (wset, full) = write(&cat, "weekly", "W1", 0, disk, None);
        let (dset, inc) = write(&cat, "daily", "D1", 6, disk, Some(full));
        // Day 8: the weekly set is past retention but the daily incremental is kept.
        let ev = evaluate(&cat, t(8)).unwrap();
        match &ev.set(wset).unwrap().verdict {
            Verdict::Held { holds } => {
                assert_eq!(holds[0].image, full);
                assert_eq!(holds[0].needed_by, inc);
                assert_eq!(holds[0].needed_by_set, Some(dset));
            }
            v => panic!("weekly set should be held, is {v:?}"),
        }
        // A newer full of the disk on day 9: on day 10 both old sets are expired.
        let (_, _) = write(&cat, "weekly", "W2", 9, disk, None);
        let ev = evaluate(&cat, t(10)).unwrap();
        assert!(ev.set(wset).unwrap().is_expired());
        assert!(ev.set(dset).unwrap().is_expired());
        let imp = overwrite_impact(&cat, "W1", t(10)).unwrap();
        assert!(imp.is_harmless(), "{imp:?}");
        let imp = overwrite_impact(&cat, "W1", t(8)).unwrap();
        assert!(!imp.is_harmless());
        assert_eq!(imp.dependents.len(), 1);
        assert!(imp.describe().contains(&inc.to_string()));
    }

    #[test]
    fn the_newest_restore_point_of_a_disk_is_never_expired() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        pool(&cat, "p", Some(1));
        let disk = Uuid::new_v4();
        let (s1, full) = write(&cat, "p", "A", 0, disk, None);
        let (s2, _) = write(&cat, "p", "B", 1, disk, Some(full));
        let ev = evaluate(&cat, t(100)).unwrap();
        assert!(!ev.set(s1).unwrap().is_expired());
        assert!(!ev.set(s2).unwrap().is_expired());
        // Expired state is checked again before a recycle.
        cat.set_media_state("A", MediaState::Expired).unwrap();
        assert!(!recycle_if_expired(&cat, "A", t(100)).unwrap());
        assert_eq!(cat.media("A").unwrap().unwrap().state, MediaState::Full);
    }

    #[test]
    fn recycling_forgets_contents_and_returns_the_cartridge_to_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        pool(&cat, "p", Some(1));
        let disk = Uuid::new_v4();
        let (s1, full) = write(&cat, "p", "A", 0, disk, None);
        let (_, _) = write(&cat, "p", "B", 5, disk, None);
        let ev = evaluate(&cat, t(10)).unwrap();
        assert!(ev.set(s1).unwrap().is_expired());
        cat.set_media_state("A", MediaState::Expired).unwrap();
        assert!(recycle_if_expired(&cat, "A", t(10)).unwrap());
        let m = cat.media("A").unwrap().unwrap();
        assert_eq!(m.state, MediaState::Writable);
        assert_eq!(m.media_set_uuid, None);
        assert_eq!(m.pool.as_deref(), Some("p"));
        assert!(cat.image(full).unwrap().is_none());
    }
}
