//! Export, snapshots and merging (disaster recovery).
//!
//! One JSON document shape serves `catalog export` (streamed) and the catalog
//! snapshots written to media: [`DUMP_FORMAT`] / [`DUMP_VERSION`], then every table.
//! [`Catalog::merge_snapshot`] accepts either and merges it idempotently:
//! missing rows are added, newer facts are never overwritten, and contradictions
//! (same image UUID with a different digest or identity, a cartridge labelled twice
//! at the same time with different volumes) are reported, not applied.

use super::coverage::{
    DumpExtents, DumpParts, SpooledImageDump, StreamedExtents, StreamedImageDump,
};
use super::images::{image_row, validate_segment, RowInserts, IMAGE_COLS};
use super::*;
use serde::de::{Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};

/// `format` field of every export and snapshot.
pub const DUMP_FORMAT: &str = "tapevault-catalog";
/// Version of the dump shape; newer dumps are refused.
pub const DUMP_VERSION: u32 = 1;
/// Version of a delta snapshot document (`"kind": "delta"`, with its `"base"`): a
/// tapevault that knows only version 1 refuses it and rebuilds by scanning.
pub const DELTA_VERSION: u32 = 2;
const DELTA_KIND: &str = "delta";

/// The snapshots on one cartridge that a delta snapshot builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotBase {
    /// The full snapshot first, then the deltas over it, in tape order.
    pub chain: Vec<SnapshotLocation>,
    /// Plain length of the full snapshot.
    pub full_len: u64,
    /// Plain length of the deltas together.
    pub deltas_len: u64,
    /// When the session of the full snapshot started.
    pub full_started: DateTime<Utc>,
}

/// What a snapshot covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotScope {
    All,
    /// The images with data on this media set, the ancestors they need, and the
    /// cartridges, sets, pools and sessions those refer to.
    MediaSet(Uuid),
}

#[derive(Debug, Serialize, Deserialize)]
struct Dump {
    format: String,
    version: u32,
    /// `"delta"` for a delta snapshot (version 2); absent in a full one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// A delta's base: the snapshot it builds on (the one before it on the cartridge,
    /// a full one or another delta).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    base: Vec<SnapshotLocation>,
    schema_version: u32,
    created: DateTime<Utc>,
    pools: Vec<PoolRow>,
    media_sets: Vec<MediaSetRow>,
    media: Vec<MediaRow>,
    sessions: Vec<SessionRow>,
    images: Vec<ImageDump>,
    snapshots: Vec<SnapshotLocation>,
    /// The home's `pools.toml` declaration of each pool in the dump (offsite vault, when
    /// sets leave, retention, ...), as JSON: what the `pools` rows do not hold. Added
    /// within version 1; a reader that does not know it ignores it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pool_config: BTreeMap<String, serde_json::Value>,
}

/// What a [`Dump`] holds before its images, in the same order and shape: the streamed
/// snapshot writes it, then the images one by one, then the rest.
#[derive(Serialize)]
struct DumpHead {
    format: &'static str,
    version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    base: Vec<SnapshotLocation>,
    schema_version: u32,
    created: DateTime<Utc>,
    pools: Vec<PoolRow>,
    media_sets: Vec<MediaSetRow>,
    media: Vec<MediaRow>,
    sessions: Vec<SessionRow>,
}

/// A fact in the merged input that contradicts the catalog; the catalog was kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// `pool`, `media set`, `cartridge`, `image` or `segment`.
    pub what: String,
    pub key: String,
    pub detail: String,
}

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MergeReport {
    pub pools_added: usize,
    pub media_sets_added: usize,
    pub media_sets_updated: usize,
    pub media_added: usize,
    pub media_updated: usize,
    pub sessions_added: usize,
    pub sessions_updated: usize,
    pub images_added: usize,
    pub images_updated: usize,
    pub segments_added: usize,
    pub snapshots_added: usize,
    /// Pools whose `pools.toml` declaration came back from the merged data (pools the
    /// home's pools.toml did not declare).
    pub pool_config_added: usize,
    pub conflicts: Vec<Conflict>,
}

impl MergeReport {
    /// True if the merge changed nothing (and found no conflicts).
    pub fn is_noop(&self) -> bool {
        *self == MergeReport::default()
    }

    fn conflict(&mut self, what: &str, key: impl ToString, detail: String) {
        self.conflicts.push(Conflict {
            what: what.into(),
            key: key.to_string(),
            detail,
        });
    }
}

fn status_rank(s: ImageStatus) -> u8 {
    match s {
        ImageStatus::Running => 0,
        ImageStatus::Failed | ImageStatus::Incomplete => 1,
        ImageStatus::Complete => 2,
        ImageStatus::Corrupt => 3,
    }
}

fn json_err(e: serde_json::Error) -> CatalogError {
    CatalogError::Export(std::io::Error::other(e))
}

impl Catalog {
    /// Write the whole catalog as one JSON document (the dump shape), row by row.
    pub fn export_json<W: Write>(&self, mut w: W) -> Result<()> {
        // One read transaction: a consistent picture even while backups commit.
        let tx = self.conn().unchecked_transaction()?;
        let head = serde_json::json!({
            "format": DUMP_FORMAT, "version": DUMP_VERSION,
            "schema_version": self.schema_version()?, "created": catalog_time(crate::home::clock::now()),
        })
        .to_string();
        // Open the object and leave it open for the streamed arrays.
        w.write_all(&head.as_bytes()[..head.len() - 1])
            .map_err(CatalogError::Export)?;
        fn array<W: Write, T: Serialize>(
            w: &mut W,
            name: &str,
            rows: impl Iterator<Item = Result<T>>,
        ) -> Result<()> {
            write!(w, ",\"{name}\":[").map_err(CatalogError::Export)?;
            for (i, r) in rows.enumerate() {
                if i > 0 {
                    w.write_all(b",").map_err(CatalogError::Export)?;
                }
                serde_json::to_writer(&mut *w, &r?).map_err(json_err)?;
            }
            w.write_all(b"]").map_err(CatalogError::Export)
        }
        let c = self.conn();
        // A table whose rows go out as they are read.
        fn table<W: Write, T: Serialize>(
            w: &mut W,
            c: &rusqlite::Connection,
            name: &str,
            sql: &str,
            row: fn(&rusqlite::Row) -> rusqlite::Result<T>,
        ) -> Result<()> {
            let mut st = c.prepare(sql)?;
            let rows = st.query_map([], row)?;
            array(w, name, rows.map(|r| r.map_err(CatalogError::from)))
        }
        table(
            &mut w,
            c,
            "pools",
            &format!("SELECT {POOL_COLS} FROM pools ORDER BY name"),
            pool_row,
        )?;
        table(
            &mut w,
            c,
            "media_sets",
            &format!("SELECT {SET_COLS} FROM media_sets ORDER BY created, uuid"),
            set_row,
        )?;
        table(
            &mut w,
            c,
            "media",
            &format!("SELECT {MEDIA_COLS} FROM media ORDER BY barcode"),
            media_row,
        )?;
        table(
            &mut w,
            c,
            "sessions",
            &format!("SELECT {SESSION_COLS}, writer FROM sessions ORDER BY started, uuid"),
            session_row,
        )?;
        let mut st = c.prepare(&format!(
            "SELECT {IMAGE_COLS} FROM images ORDER BY started, uuid"
        ))?;
        // Each image's extents go out as they are read: an image of millions of
        // extents is never held.
        w.write_all(b",\"images\":[")
            .map_err(CatalogError::Export)?;
        for (i, r) in st.query_map([], image_row)?.enumerate() {
            let image = r?;
            let segments = self.segments(image.uuid)?;
            let d = StreamedImageDump {
                image: &image,
                segments: &segments,
                extents: StreamedExtents::new(self, image.uuid),
            };
            if i > 0 {
                w.write_all(b",").map_err(CatalogError::Export)?;
            }
            serde_json::to_writer(&mut w, &d)
                .map_err(|e| d.extents.error.take().unwrap_or_else(|| json_err(e)))?;
        }
        w.write_all(b"]").map_err(CatalogError::Export)?;
        table(
            &mut w,
            c,
            "snapshots",
            &format!("SELECT {SNAP_COLS} FROM snapshots ORDER BY time, barcode, tape_file"),
            snap_row,
        )?;
        let names: Vec<String> = self.pools()?.into_iter().map(|p| p.name).collect();
        self.end_document(&mut w, names.iter(), b"}\n")?;
        drop(tx);
        Ok(())
    }

    /// A self-contained serialized dump (JSON bytes) of everything needed to restore
    /// the images in `scope`. Merge it back with [`Catalog::merge_snapshot`]. Held in
    /// memory: [`Catalog::write_snapshot`] streams it instead.
    pub fn snapshot(&self, scope: SnapshotScope) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_snapshot(scope, &mut out)?;
        Ok(out)
    }

    /// Write [`Catalog::snapshot`] to `w` image by image: what is held at a time is one
    /// image with its segments and extents, plus the list of image keys (uuid and start
    /// time) and the cartridges, sets, pools and sessions they refer to, never the
    /// document (a full snapshot of a set of 100 k images is about 90 MB).
    pub fn write_snapshot<W: Write>(&self, scope: SnapshotScope, w: W) -> Result<()> {
        let set = match scope {
            SnapshotScope::All => return self.export_json(w),
            SnapshotScope::MediaSet(set) => set,
        };
        let tx = self.read_tx()?; // one consistent read (a rehearsal's, inside one)
        self.write_media_set_dump(set, w)?;
        drop(tx);
        Ok(())
    }

    /// The parent of an image, and whether the image exists (None: it does not).
    fn parent_of(&self, image: Uuid) -> Result<Option<Option<Uuid>>> {
        Ok(self
            .conn()
            .prepare_cached("SELECT parent_uuid FROM images WHERE uuid=?1")?
            .query_row([image.to_string()], |r| get_po::<Uuid>(r, 0))
            .optional()?)
    }

    fn write_media_set_dump<W: Write>(&self, set: Uuid, w: W) -> Result<()> {
        // Images with data on the set, then every ancestor they need.
        let mut image_ids: Vec<Uuid> = Vec::new();
        let mut seen = HashSet::new();
        {
            let mut st = self.conn().prepare(
                "SELECT uuid FROM images WHERE uuid IN (SELECT image_uuid FROM segments WHERE barcode IN \
                 (SELECT barcode FROM media WHERE media_set_uuid=?1)) ORDER BY started, rowid",
            )?;
            for id in st.query_map([set.to_string()], |r| get_p::<Uuid>(r, 0))? {
                let id = id?;
                if seen.insert(id) {
                    image_ids.push(id);
                }
            }
        }
        // Images written by the set's sessions without any record on tape (an
        // incremental with no changes has no segments) belong to it too.
        for id in self
            .conn()
            .prepare(
                "SELECT uuid FROM images WHERE session_uuid IN \
                 (SELECT uuid FROM sessions WHERE media_set_uuid=?1) ORDER BY started, rowid",
            )?
            .query_map([set.to_string()], |r| get_p::<Uuid>(r, 0))?
        {
            let id = id?;
            if seen.insert(id) {
                image_ids.push(id);
            }
        }
        let mut k = 0;
        while k < image_ids.len() {
            if let Some(Some(p)) = self.parent_of(image_ids[k])? {
                if self.parent_of(p)?.is_some() && seen.insert(p) {
                    image_ids.push(p);
                }
            }
            k += 1;
        }
        drop(seen);
        let all_sessions = self.sessions()?;
        let snapshots = self.snapshots()?;
        self.write_images_dump(
            w,
            set,
            image_ids,
            |s| s.media_set_uuid == Some(set),
            all_sessions,
            |barcodes| {
                snapshots
                    .into_iter()
                    .filter(|s| barcodes.contains(&s.barcode))
                    .collect()
            },
            None,
        )
    }

    /// Write the dump of `image_ids` (in that set's context) to `w`: their rows,
    /// segments and extents, the cartridges, sets, pools and sessions they refer to
    /// (plus the `sessions` that `keep_session` selects), and the snapshot locations
    /// `snapshots` picks given the barcodes involved. A first pass reads what the
    /// document's head needs (each image's start time, pool, session and the
    /// cartridges of its segments); the second writes the images one at a time, in
    /// the order of their start times.
    #[allow(clippy::too_many_arguments)]
    fn write_images_dump<W: Write>(
        &self,
        mut w: W,
        set: Uuid,
        image_ids: Vec<Uuid>,
        keep_session: impl Fn(&SessionRow) -> bool,
        candidate_sessions: Vec<SessionRow>,
        snapshots: impl FnOnce(&BTreeSet<String>) -> Vec<SnapshotLocation>,
        delta: Option<(Vec<SnapshotLocation>, Vec<SessionRow>)>,
    ) -> Result<()> {
        let set_row_ = self.media_set(set)?.ok_or(CatalogError::NotFound {
            what: "media set",
            key: set.to_string(),
        })?;
        let mut barcodes: BTreeSet<String> = self
            .media_in_set(set)?
            .into_iter()
            .map(|m| m.barcode)
            .collect();
        let mut pools: BTreeSet<String> = BTreeSet::from([set_row_.pool.clone()]);
        let mut sessions: BTreeSet<Uuid> = BTreeSet::new();
        let mut order: Vec<Uuid> = Vec::with_capacity(image_ids.len());
        {
            let mut head = self
                .conn()
                .prepare_cached("SELECT pool, session_uuid FROM images WHERE uuid=?1")?;
            let mut bcs = self
                .conn()
                .prepare_cached("SELECT DISTINCT barcode FROM segments WHERE image_uuid=?1")?;
            for id in image_ids {
                let key = id.to_string();
                let (pool, session): (Option<String>, Option<Uuid>) =
                    head.query_row([&key], |r| Ok((r.get(0)?, get_po(r, 1)?)))?;
                for b in bcs.query_map([&key], |r| r.get::<_, String>(0))? {
                    let b = b?;
                    if !barcodes.contains(&b) {
                        barcodes.insert(b);
                    }
                }
                pools.extend(pool);
                sessions.extend(session);
                order.push(id);
            }
        }
        // By UUID: a rebuild inserts the images in the document's order, and in key
        // order each insert into the images' UUID index and the segments' and
        // extents' keys (all led by the image's UUID) appends to its B-tree instead of
        // landing on a random page. With random (version 4) UUIDs, 100 k images in
        // time order took 1.39-1.49 s to rebuild, in UUID order 1.07-1.15 s.
        order.sort_unstable();
        let media: Vec<MediaRow> = barcodes
            .iter()
            .filter_map(|b| self.media(b).transpose())
            .collect::<Result<_>>()?;
        let mut set_ids: BTreeSet<Uuid> = BTreeSet::from([set]);
        set_ids.extend(media.iter().filter_map(|m| m.media_set_uuid));
        let media_sets: Vec<MediaSetRow> = set_ids
            .iter()
            .filter_map(|s| self.media_set(*s).transpose())
            .collect::<Result<_>>()?;
        pools.extend(media_sets.iter().map(|s| s.pool.clone()));
        pools.extend(media.iter().filter_map(|m| m.pool.clone()));
        let (kind, base, mut sessions_out) = match delta {
            None => (None, Vec::new(), Vec::new()),
            Some((base, new_sessions)) => {
                // The sessions of ancestors outside the set, by key.
                let known: HashSet<Uuid> = new_sessions.iter().map(|s| s.uuid).collect();
                let mut out = new_sessions;
                for s in &sessions {
                    if !known.contains(s) {
                        out.extend(self.session(*s)?);
                    }
                }
                (Some(DELTA_KIND.to_string()), base, out)
            }
        };
        sessions_out.extend(
            candidate_sessions
                .into_iter()
                .filter(|s| sessions.contains(&s.uuid) || keep_session(s)),
        );
        sessions_out.sort_by_key(|s| (s.started, s.uuid));
        sessions_out.dedup_by_key(|s| s.uuid);
        let snapshots = snapshots(&barcodes);
        let head = DumpHead {
            format: DUMP_FORMAT,
            version: if kind.is_some() {
                DELTA_VERSION
            } else {
                DUMP_VERSION
            },
            kind,
            base,
            schema_version: self.schema_version()?,
            created: catalog_time(crate::home::clock::now()),
            pools: pools
                .iter()
                .filter_map(|p| self.pool(p).transpose())
                .collect::<Result<_>>()?,
            media_sets,
            media,
            sessions: sessions_out,
        };
        let head = serde_json::to_vec(&head).map_err(json_err)?;
        // The head's object, left open for the images.
        w.write_all(&head[..head.len() - 1])
            .map_err(CatalogError::Export)?;
        w.write_all(b",\"images\":[")
            .map_err(CatalogError::Export)?;
        for (i, id) in order.into_iter().enumerate() {
            let image = self.image(id)?.ok_or(CatalogError::NotFound {
                what: "image",
                key: id.to_string(),
            })?;
            // The extents are read from the catalog as they are written out: an
            // image of millions of extents is never held.
            let segments = self.segments(id)?;
            let d = StreamedImageDump {
                image: &image,
                segments: &segments,
                extents: StreamedExtents::new(self, id),
            };
            if i > 0 {
                w.write_all(b",").map_err(CatalogError::Export)?;
            }
            serde_json::to_writer(&mut w, &d)
                .map_err(|e| d.extents.error.take().unwrap_or_else(|| json_err(e)))?;
        }
        w.write_all(b"],\"snapshots\":")
            .map_err(CatalogError::Export)?;
        serde_json::to_writer(&mut w, &snapshots).map_err(json_err)?;
        self.end_document(&mut w, pools.iter(), b"}")
    }

    /// The `pools.toml` declarations of these pools in this catalog's home, as JSON.
    /// A pools.toml that cannot be read gives none (the snapshot is still written).
    /// The end of a dump: the `pool_config` of `pools` (when `pools.toml` has any),
    /// then `close` (the object's brace), flushed.
    fn end_document<'a, W: Write>(
        &self,
        w: &mut W,
        pools: impl Iterator<Item = &'a String>,
        close: &[u8],
    ) -> Result<()> {
        let config = self.pool_config(pools);
        if !config.is_empty() {
            w.write_all(b",\"pool_config\":")
                .map_err(CatalogError::Export)?;
            serde_json::to_writer(&mut *w, &config).map_err(json_err)?;
        }
        w.write_all(close).map_err(CatalogError::Export)?;
        w.flush().map_err(CatalogError::Export)
    }

    fn pool_config<'a>(
        &self,
        pools: impl Iterator<Item = &'a String>,
    ) -> BTreeMap<String, serde_json::Value> {
        let Ok(file) = crate::home::pools_toml::load(self.home_dir()) else {
            return BTreeMap::new();
        };
        pools
            .filter_map(|p| {
                let spec = file.pools.get(p)?;
                Some((p.clone(), serde_json::to_value(spec).ok()?))
            })
            .collect()
    }

    /// Declare in this home's `pools.toml` the pools it does not declare yet, from a
    /// merged dump's `pool_config` (a declaration that this tapevault cannot read is
    /// left out). Returns how many were added.
    fn adopt_pool_config(&self, config: &BTreeMap<String, serde_json::Value>) -> Result<usize> {
        if config.is_empty() {
            return Ok(0);
        }
        let home = self.home_dir();
        let invalid = |e: crate::error::Error| CatalogError::Invalid {
            what: crate::home::pools_toml::path(home).display().to_string(),
            reason: e.to_string(),
        };
        let mut file = crate::home::pools_toml::load(home).map_err(invalid)?;
        let mut added = 0;
        for (name, v) in config {
            if file.pools.contains_key(name) || self.pool(name)?.is_none() {
                continue;
            }
            if let Ok(spec) = serde_json::from_value(v.clone()) {
                file.pools.insert(name.clone(), spec);
                added += 1;
            }
        }
        if added > 0 {
            crate::home::pools_toml::save(home, &file).map_err(invalid)?;
        }
        Ok(added)
    }

    /// The snapshot chain a session's catalog snapshot on cartridge `barcode` can
    /// build on: the cartridge's newest snapshots back to and including a full one,
    /// all written by sessions of media set `set`, with their plain lengths known.
    /// None when there is no such chain (a new cartridge, a location found by a
    /// rebuild, a snapshot of another set or of `catalog backup` in between): the
    /// session then writes a full snapshot.
    pub fn snapshot_base(&self, set: Uuid, barcode: &str) -> Result<Option<SnapshotBase>> {
        let next_file = match self.media(barcode)? {
            Some(m) => m.next_tape_file,
            None => return Ok(None),
        };
        let mut st = self.conn().prepare(
            "SELECT s.barcode, s.tape_file, s.block, s.session_uuid, s.time, s.kind, s.plain_len, \
               ses.media_set_uuid, ses.started \
             FROM snapshots s LEFT JOIN sessions ses ON ses.uuid = s.session_uuid \
             WHERE s.barcode=?1 ORDER BY s.tape_file DESC, s.block DESC",
        )?;
        let mut rows = st.query([barcode])?;
        let mut chain = Vec::new();
        let mut deltas_len = 0u64;
        let want = set.to_string();
        while let Some(r) = rows.next()? {
            let loc = snap_row(r)?;
            let kind: String = r.get(5)?;
            let len: Option<u64> = get_u64o(r, 6)?;
            let of_set: Option<String> = r.get(7)?;
            let started: Option<DateTime<Utc>> = get_po(r, 8)?;
            let (Some(len), Some(started)) = (len, started) else {
                return Ok(None);
            };
            if of_set.as_deref() != Some(want.as_str()) || loc.tape_file >= next_file {
                return Ok(None);
            }
            chain.push(loc);
            if kind == DELTA_KIND {
                deltas_len += len;
                continue;
            }
            chain.reverse();
            return Ok(Some(SnapshotBase {
                chain,
                full_len: len,
                deltas_len,
                full_started: started,
            }));
        }
        Ok(None)
    }

    /// A delta catalog snapshot of media set `set` over `base` (see
    /// [`Catalog::snapshot_base`]): the set's sessions since the base's full snapshot
    /// that no snapshot of the chain holds, their images with segments and extents,
    /// the ancestors of those images outside the set, the set's cartridges, and the
    /// chain itself. Its cost grows with what changed, not with the set.
    pub fn snapshot_delta(&self, set: Uuid, base: &SnapshotBase) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_snapshot_delta(set, base, &mut out)?;
        Ok(out)
    }

    /// [`Catalog::snapshot_delta`] written to `w` image by image.
    pub fn write_snapshot_delta<W: Write>(
        &self,
        set: Uuid,
        base: &SnapshotBase,
        w: W,
    ) -> Result<()> {
        let tx = self.read_tx()?; // one consistent read (a rehearsal's, inside one)
        let in_chain: HashSet<Uuid> = base.chain.iter().filter_map(|s| s.session_uuid).collect();
        let new_sessions: Vec<SessionRow> = self
            .conn()
            .prepare(&format!(
                "SELECT {SESSION_COLS}, writer FROM sessions WHERE media_set_uuid=?1 AND started >= ?2 \
                 ORDER BY started, rowid"
            ))?
            .query_map(params![set.to_string(), ts(&base.full_started)], session_row)?
            .filter(|r| r.as_ref().map_or(true, |s| !in_chain.contains(&s.uuid)))
            .collect::<rusqlite::Result<_>>()?;
        let mut image_ids: Vec<Uuid> = Vec::new();
        let mut seen = HashSet::new();
        {
            let mut st = self
                .conn()
                .prepare("SELECT uuid FROM images WHERE session_uuid=?1 ORDER BY started, rowid")?;
            for s in &new_sessions {
                for id in st.query_map([s.uuid.to_string()], |r| get_p::<Uuid>(r, 0))? {
                    let id = id?;
                    if seen.insert(id) {
                        image_ids.push(id);
                    }
                }
            }
        }
        // Ancestors up to the first one a snapshot of the set already holds (every
        // image of a session of the set is in the chain's full snapshot or a delta).
        let mut k = 0;
        while k < image_ids.len() {
            if let Some(p) = self.image(image_ids[k])?.and_then(|i| i.parent_uuid) {
                if let Some(parent) = self.image(p)? {
                    let in_set = match parent.session_uuid {
                        Some(s) => self.session(s)?.and_then(|s| s.media_set_uuid) == Some(set),
                        None => false,
                    };
                    if !in_set && seen.insert(p) {
                        image_ids.push(p);
                    }
                }
            }
            k += 1;
        }
        // The base names only the snapshot just before this one: a delta's size must
        // not grow with the chain.
        let prev: Vec<SnapshotLocation> = base.chain.last().cloned().into_iter().collect();
        self.write_images_dump(
            w,
            set,
            image_ids,
            |_| false,
            Vec::new(),
            |_| Vec::new(),
            Some((prev, new_sessions)),
        )?;
        drop(tx);
        Ok(())
    }

    /// Note where a catalog snapshot was written, whether it is a delta, and its plain
    /// length (what [`Catalog::snapshot_base`] needs). Idempotent.
    pub fn record_snapshot_written(
        &self,
        s: &SnapshotLocation,
        delta: bool,
        plain_len: u64,
    ) -> Result<()> {
        self.insert_snapshot(s)?;
        self.conn().execute(
            "UPDATE snapshots SET kind=?4, plain_len=?5 WHERE barcode=?1 AND tape_file=?2 AND block=?3",
            params![
                s.barcode,
                num(s.tape_file, "tape file")?,
                num(s.block, "block")?,
                if delta { DELTA_KIND } else { "full" },
                num(plain_len, "snapshot length")?
            ],
        )?;
        Ok(())
    }

    /// The snapshot a catalog snapshot document builds on (its `base`): None for a
    /// full snapshot or an export. The catalog a delta describes is the union of it
    /// and its base, recursively down to a full snapshot.
    pub fn snapshot_document_base(bytes: &[u8]) -> Result<Option<SnapshotLocation>> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
            version: u32,
            #[serde(default)]
            kind: Option<String>,
            #[serde(default)]
            base: Vec<SnapshotLocation>,
        }
        let h: Head =
            serde_json::from_slice(bytes).map_err(|e| CatalogError::BadSnapshot(e.to_string()))?;
        check_format(&h.format, h.version)?;
        document_base(h.version, h.kind, h.base)
    }

    /// [`Catalog::snapshot_document_base`] of a document read from `r`: only its head
    /// is parsed (`format`, `version`, `kind`, `base` come before the tables in every
    /// document tapevault writes; in any other order the whole document is read).
    pub fn snapshot_document_base_from<R: Read>(r: R) -> Result<Option<SnapshotLocation>> {
        let mut head = HeadSeen::default();
        let mut de = serde_json::Deserializer::from_reader(r);
        match de.deserialize_map(HeadVisitor { head: &mut head }) {
            Ok(()) => {}
            Err(e) if e.to_string().starts_with(HEAD_DONE) => {}
            Err(e) => return Err(CatalogError::BadSnapshot(e.to_string())),
        }
        let (Some(format), Some(version)) = (head.format, head.version) else {
            return Err(CatalogError::BadSnapshot(
                "the document has no format or version".into(),
            ));
        };
        check_format(&format, version)?;
        document_base(version, head.kind, head.base)
    }

    /// [`Catalog::merge_snapshot`] of a document read from `r`, merged row by row as it
    /// is parsed: what is held at a time is one image with its segments and extents,
    /// whatever the size of the document. Tables must come in the order tapevault
    /// writes them (pools, media sets, cartridges, sessions, images, snapshots; a
    /// document in another order is refused as a bad snapshot, with nothing merged).
    pub fn merge_snapshot_from<R: Read + Send>(&self, r: R) -> Result<MergeReport> {
        let _cache = MergeCache::new(self.conn())?;
        // Declared before the transaction: on again once it has ended.
        let _journal = self.bulk_journal()?;
        let _keys = ReferencesCheckedBefore::new(self.conn())?;
        let tx = self.write_tx()?;
        let mut st = MergeState {
            cat: self,
            report: MergeReport::default(),
            format: None,
            version: None,
            rank: 0,
            pool_config: BTreeMap::new(),
            digest_lists: self.local_digest_lists(),
        };
        // Into a small catalog (a rebuild into a fresh home), the secondary indexes of
        // the image tables are dropped and made again once all rows are in: sorting
        // once is cheaper than 100 k inserts into ten B-trees. Same transaction, so a
        // failure or a kill leaves them as they were.
        let images_now: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM images", [], |r| r.get(0))?;
        let dropped: Vec<(String, String)> = if images_now <= BULK_MERGE_MAX_IMAGES {
            // `segments_disk` (led by the image's UUID) stays: a snapshot lists its
            // images in UUID order, so its inserts append, as the keys' do.
            let mut st = self.conn().prepare(
                "SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL \
                 AND tbl_name IN ('images','segments','image_extents') \
                 AND name != 'segments_disk' ORDER BY name",
            )?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
            for (name, _) in &rows {
                self.conn()
                    .execute_batch(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))?;
            }
            rows
        } else {
            Vec::new()
        };
        // The document is split into its members and each table into its rows, and each
        // row parsed from its own bytes: one row's bytes are held at a time.
        st.merge_document(r)?; // an error rolls the transaction back
        if st.format.is_none() || st.version.is_none() {
            return Err(CatalogError::BadSnapshot(
                "the document has no format or version".into(),
            ));
        }
        for (_, sql) in &dropped {
            self.conn().execute_batch(sql)?;
        }
        tx.commit()?;
        let mut r = st.report;
        r.pool_config_added = self.adopt_pool_config(&st.pool_config)?;
        Ok(r)
    }

    /// Merge a snapshot or export into this catalog, in one transaction. Idempotent;
    /// never replaces newer facts; contradictions are reported in the result.
    pub fn merge_snapshot(&self, bytes: &[u8]) -> Result<MergeReport> {
        let dump: Dump =
            serde_json::from_slice(bytes).map_err(|e| CatalogError::BadSnapshot(e.to_string()))?;
        if dump.format != DUMP_FORMAT {
            return Err(CatalogError::BadSnapshot(format!(
                "format {:?} is not {DUMP_FORMAT}",
                dump.format
            )));
        }
        if dump.version > DELTA_VERSION {
            return Err(CatalogError::BadSnapshot(format!(
                "dump version {} is newer than this tapevault's {DELTA_VERSION}; use a newer tapevault",
                dump.version
            )));
        }
        let tx = self.write_tx()?;
        let mut r = MergeReport::default();
        for p in &dump.pools {
            self.merge_pool_in(p, &mut r)?;
        }
        for s in &dump.media_sets {
            self.merge_media_set_in(s, &mut r)?;
        }
        for m in &dump.media {
            self.merge_media_in(m, &mut r)?;
        }
        for s in &dump.sessions {
            self.merge_session_in(s, &mut r)?;
        }
        let digest_lists = self.local_digest_lists();
        for i in &dump.images {
            self.merge_image_in(i, &mut r, digest_lists.as_ref(), None)?;
        }
        for s in &dump.snapshots {
            if self.insert_snapshot(s)? {
                r.snapshots_added += 1;
            }
        }
        tx.commit()?;
        r.pool_config_added = self.adopt_pool_config(&dump.pool_config)?;
        Ok(r)
    }

    /// Merge one pool (e.g. found on a label). An existing pool keeps its settings; a
    /// different key is reported as a conflict.
    pub fn merge_pool(&self, p: &PoolRow) -> Result<MergeReport> {
        let mut r = MergeReport::default();
        self.merge_pool_in(p, &mut r)?;
        Ok(r)
    }

    /// Merge one media set.
    pub fn merge_media_set(&self, s: &MediaSetRow) -> Result<MergeReport> {
        let mut r = MergeReport::default();
        self.merge_media_set_in(s, &mut r)?;
        Ok(r)
    }

    /// Merge what a scanner read from one cartridge's label. Its media set must be
    /// known first ([`Catalog::merge_media_set`]).
    pub fn merge_media(&self, m: &MediaRow) -> Result<MergeReport> {
        let tx = self.write_tx()?;
        let mut r = MergeReport::default();
        self.merge_media_in(m, &mut r)?;
        tx.commit()?;
        Ok(r)
    }

    /// Merge one image with its segments and extents (from a snapshot or a media
    /// scan), in one transaction.
    pub fn merge_image(&self, d: &ImageDump) -> Result<MergeReport> {
        let tx = self.write_tx()?;
        let mut r = MergeReport::default();
        self.merge_image_in(d, &mut r, None, None)?;
        tx.commit()?;
        Ok(r)
    }

    /// [`merge_image`](Self::merge_image) of `d` with the extents `extents` (spooled
    /// by a media scan; `d.extents` is not used), in one transaction.
    pub fn merge_image_spooled(
        &self,
        d: &ImageDump,
        extents: &crate::extent_spool::ItemList<Extent>,
    ) -> Result<MergeReport> {
        let tx = self.write_tx()?;
        let mut r = MergeReport::default();
        let parts = DumpParts {
            image: &d.image,
            segments: &d.segments,
            extents: DumpExtents::Spooled(extents),
        };
        self.merge_image_parts(parts, &mut r, None, None)?;
        tx.commit()?;
        Ok(r)
    }

    fn merge_pool_in(&self, p: &PoolRow, r: &mut MergeReport) -> Result<()> {
        match self.pool(&p.name)? {
            None => {
                self.insert_pool(p)?;
                r.pools_added += 1;
            }
            Some(local) if local.key_fingerprint != p.key_fingerprint => r.conflict(
                "pool",
                &p.name,
                format!(
                    "catalog has key {:?}, the merged data has key {:?}",
                    local.key_fingerprint, p.key_fingerprint
                ),
            ),
            Some(_) => {}
        }
        Ok(())
    }

    fn merge_media_set_in(&self, s: &MediaSetRow, r: &mut MergeReport) -> Result<()> {
        match self.media_set(s.uuid)? {
            None => {
                self.insert_media_set(s)?;
                r.media_sets_added += 1;
            }
            Some(local) if local.pool != s.pool => r.conflict(
                "media set",
                s.uuid,
                format!(
                    "catalog says pool {}, the merged data says {}",
                    local.pool, s.pool
                ),
            ),
            Some(local) => {
                let last_write = local.last_write.max(s.last_write);
                let closed = local.closed || s.closed;
                if last_write != local.last_write || closed != local.closed {
                    self.conn().execute(
                        "UPDATE media_sets SET last_write=?2, closed=?3 WHERE uuid=?1",
                        params![s.uuid.to_string(), tso(&last_write), closed],
                    )?;
                    r.media_sets_updated += 1;
                }
            }
        }
        Ok(())
    }

    fn merge_media_in(&self, m: &MediaRow, r: &mut MergeReport) -> Result<()> {
        if let Some(set) = m.media_set_uuid {
            if self.media_set(set)?.is_none() {
                return Err(CatalogError::NotFound {
                    what: "media set",
                    key: format!(
                        "{set} (of cartridge {}; merge the media set first)",
                        m.barcode
                    ),
                });
            }
        }
        let Some(local) = self.media(&m.barcode)? else {
            self.write_media_raw(m)?;
            r.media_added += 1;
            return Ok(());
        };
        if local.labelled_at.is_some()
            && local.labelled_at == m.labelled_at
            && local.volume_uuid.is_some()
            && m.volume_uuid.is_some()
            && local.volume_uuid != m.volume_uuid
        {
            r.conflict(
                "cartridge",
                &m.barcode,
                format!(
                    "labelled at the same time as volume {:?} (catalog) and {:?} (merged data)",
                    local.volume_uuid, m.volume_uuid
                ),
            );
            return Ok(());
        }
        if (m.labelled_at, m.last_written) > (local.labelled_at, local.last_written) {
            let mut merged = m.clone();
            merged.location = local.location.clone();
            merged.errors = local.errors.max(m.errors);
            if matches!(local.state, MediaState::Damaged | MediaState::Retired) {
                merged.state = local.state;
            }
            self.write_media_raw(&merged)?;
            r.media_updated += 1;
        }
        Ok(())
    }

    fn write_media_raw(&self, m: &MediaRow) -> Result<()> {
        self.write_media_row(
            &format!(
                "INSERT OR REPLACE INTO media ({MEDIA_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"
            ),
            m,
        )
    }

    /// Merge one session (e.g. found by a media scan): added if unknown; a running one
    /// takes the merged status.
    pub fn merge_session(&self, s: &SessionRow) -> Result<MergeReport> {
        let mut r = MergeReport::default();
        self.merge_session_in(s, &mut r)?;
        Ok(r)
    }

    fn merge_session_in(&self, s: &SessionRow, r: &mut MergeReport) -> Result<()> {
        match self.session(s.uuid)? {
            None => {
                // A session running in the snapshot is not running here.
                let mut s = s.clone();
                if s.status == SessionStatus::Running {
                    s.status = SessionStatus::Failed;
                }
                self.insert_session(&s, None)?;
                r.sessions_added += 1;
            }
            Some(local)
                if local.status == SessionStatus::Running && s.status != SessionStatus::Running =>
            {
                self.conn().execute(
                    "UPDATE sessions SET status=?2, finished=?3 WHERE uuid=?1",
                    params![s.uuid.to_string(), s.status.as_str(), tso(&s.finished)],
                )?;
                r.sessions_updated += 1;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// `digest_lists`: the images with a digest list in this home, when known (else
    /// each is looked up); `inserts`: the insert statements, when a merge of many
    /// images holds them.
    fn merge_image_in<'c>(
        &'c self,
        d: &ImageDump,
        r: &mut MergeReport,
        digest_lists: Option<&HashSet<Uuid>>,
        inserts: Option<&mut RowInserts<'c>>,
    ) -> Result<()> {
        let parts = DumpParts {
            image: &d.image,
            segments: &d.segments,
            extents: DumpExtents::Slice(&d.extents),
        };
        self.merge_image_parts(parts, r, digest_lists, inserts)
    }

    /// [`merge_image_in`](Self::merge_image_in) of an image whose extents may be
    /// spooled (a snapshot being read: see `coverage.rs`).
    fn merge_image_parts<'c>(
        &'c self,
        d: DumpParts<'_>,
        r: &mut MergeReport,
        digest_lists: Option<&HashSet<Uuid>>,
        inserts: Option<&mut RowInserts<'c>>,
    ) -> Result<()> {
        let mut own;
        let ins = match inserts {
            Some(i) => i,
            None => {
                own = RowInserts::new(self.conn())?;
                &mut own
            }
        };
        let local_list = |id: Uuid| match digest_lists {
            Some(set) => set.contains(&id).then(|| self.digest_list_rel(id)),
            None => self.local_digest_list(id),
        };
        let inc = d.image;
        for s in d.segments {
            validate_segment(inc, s)?;
        }
        if !d.extents.is_empty() {
            d.extents.validate(inc)?;
        }
        // An image the catalog does not have is inserted as it comes (the insert is
        // the lookup); one it has is merged fact by fact below.
        let mut row = inc.clone();
        // Never a path from the media or an export: only a list this home holds.
        row.digest_list = if row.status == ImageStatus::Complete {
            local_list(inc.uuid)
        } else {
            None
        };
        if row.status == ImageStatus::Running {
            row.status = ImageStatus::Incomplete;
            row.note = Some("was still being written when this catalog snapshot was taken".into());
        }
        if ins.image_if_new(&row)? {
            for s in d.segments {
                ins.segment(inc.uuid, s)?;
            }
            r.segments_added += d.segments.len();
            for e in d.extents.iter() {
                ins.extent(inc.uuid, &e?)?;
            }
            r.images_added += 1;
            return Ok(());
        }
        let Some(local) = self.image(inc.uuid)? else {
            return Err(CatalogError::NotFound {
                what: "image",
                key: format!("{} (neither inserted nor found)", inc.uuid),
            });
        };
        let identity = |i: &ImageRow| {
            (
                i.disk_uuid,
                i.kind,
                i.parent_uuid,
                i.disk_size,
                i.block_size,
            )
        };
        if identity(&local) != identity(inc) {
            r.conflict(
                "image",
                inc.uuid,
                format!(
                    "catalog has disk {} {} parent {:?} size {}, merged data has disk {} {} parent {:?} size {}",
                    local.disk_uuid,
                    local.kind,
                    local.parent_uuid,
                    local.disk_size,
                    inc.disk_uuid,
                    inc.kind,
                    inc.parent_uuid,
                    inc.disk_size
                ),
            );
            return Ok(());
        }
        if let (Some(a), Some(b)) = (&local.content_digest, &inc.content_digest) {
            if !a.eq_ignore_ascii_case(b) {
                r.conflict(
                    "image",
                    inc.uuid,
                    format!("content digest {a} in the catalog, {b} in the merged data"),
                );
                return Ok(());
            }
        }
        let mut changed = false;
        if inc.disk_label.is_some() && local.disk_label.is_none() {
            // A scan (which cannot see labels) met a snapshot that has it.
            self.conn().execute(
                "UPDATE images SET disk_label=?2 WHERE uuid=?1 AND disk_label IS NULL",
                params![inc.uuid.to_string(), inc.disk_label],
            )?;
            changed = true;
        }
        if inc.status == ImageStatus::Complete
            && status_rank(local.status) < status_rank(inc.status)
        {
            // The merged data saw the trailer this catalog missed.
            self.conn().execute(
                "UPDATE images SET status='complete', finished=?2, records=?3, plain_bytes=?4, stored_bytes=?5, \
                 content_digest=?6, digest_list=COALESCE(digest_list, ?7), note=NULL, change_id=?8, \
                 from_change_id=?9, vm_name=COALESCE(vm_name, ?10), session_uuid=COALESCE(session_uuid, ?11), \
                 pool=COALESCE(pool, ?12), key_fingerprint=COALESCE(key_fingerprint, ?13) WHERE uuid=?1",
                params![
                    inc.uuid.to_string(),
                    tso(&inc.finished),
                    num(inc.records, "records")?,
                    num(inc.plain_bytes, "bytes")?,
                    num(inc.stored_bytes, "bytes")?,
                    inc.content_digest,
                    local_list(inc.uuid),
                    inc.change_id,
                    inc.from_change_id,
                    inc.vm_name,
                    inc.session_uuid.map(|u| u.to_string()),
                    inc.pool,
                    inc.key_fingerprint
                ],
            )?;
            changed = true;
        } else if inc.status == ImageStatus::Corrupt && local.status != ImageStatus::Corrupt {
            self.mark_corrupt(
                inc.uuid,
                inc.note
                    .as_deref()
                    .unwrap_or("marked corrupt in merged data"),
            )?;
            changed = true;
        }
        // Segments: add the ones not known; the same record run placed elsewhere is a conflict.
        if !d.segments.is_empty() {
            let known = self.segments(inc.uuid)?;
            for s in d.segments {
                match known.iter().find(|k| k.first_seq == s.first_seq) {
                    None => {
                        ins.segment(inc.uuid, s)?;
                        r.segments_added += 1;
                        changed = true;
                    }
                    Some(k) if k != s => r.conflict(
                        "segment",
                        format!("{} seq {}", inc.uuid, s.first_seq),
                        format!("catalog has {k:?}, merged data has {s:?}"),
                    ),
                    Some(_) => {}
                }
            }
        }
        if !d.extents.is_empty() && !self.has_extents(inc.uuid)? {
            for e in d.extents.iter() {
                ins.extent(inc.uuid, &e?)?;
            }
            changed = true;
        }
        if changed {
            r.images_updated += 1;
        }
        Ok(())
    }
}

fn check_format(format: &str, version: u32) -> Result<()> {
    if format != DUMP_FORMAT {
        return Err(CatalogError::BadSnapshot(format!(
            "format {format:?} is not {DUMP_FORMAT}"
        )));
    }
    if version > DELTA_VERSION {
        return Err(CatalogError::BadSnapshot(format!(
            "dump version {version} is newer than this tapevault's {DELTA_VERSION}; use a newer tapevault"
        )));
    }
    Ok(())
}

/// The base a document's head names (None: a full snapshot or an export).
fn document_base(
    version: u32,
    kind: Option<String>,
    base: Vec<SnapshotLocation>,
) -> Result<Option<SnapshotLocation>> {
    match kind.as_deref() {
        None if base.is_empty() => Ok(None),
        Some(DELTA_KIND) if version >= DELTA_VERSION && base.len() == 1 => {
            Ok(base.into_iter().next())
        }
        None => Err(CatalogError::BadSnapshot(format!(
            "a full snapshot with {} base snapshot(s)",
            base.len()
        ))),
        Some(k) => Err(CatalogError::BadSnapshot(format!(
            "a version {version} document of kind {k:?} with {} base snapshot(s)",
            base.len()
        ))),
    }
}

/// SQLite's page cache while a dump is merged: 100 k images inserted with their
/// indexes spilled the default 2 MiB cache to the file again and again inside the one
/// transaction. Back to what it was when the merge ends.
struct MergeCache<'c> {
    conn: &'c rusqlite::Connection,
    was: i64,
}

/// A streamed merge into a catalog of at most this many images drops the image
/// tables' secondary indexes and makes them again after (see
/// [`Catalog::merge_snapshot_from`]): remaking them costs little at this size.
const BULK_MERGE_MAX_IMAGES: i64 = 10_000;

/// Page cache for a merge, KiB (SQLite's negative `cache_size`).
const MERGE_CACHE_KIB: i64 = 64 << 10;

impl<'c> MergeCache<'c> {
    fn new(conn: &'c rusqlite::Connection) -> Result<MergeCache<'c>> {
        let was: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
        conn.pragma_update(None, "cache_size", -MERGE_CACHE_KIB)?;
        Ok(MergeCache { conn, was })
    }
}

impl Drop for MergeCache<'_> {
    fn drop(&mut self) {
        let _ = self.conn.pragma_update(None, "cache_size", self.was);
    }
}

/// `PRAGMA ignore_check_constraints` on while the image tables of a dump are merged,
/// whose rows are validated before they are inserted; off again when it is dropped
/// (statements prepared meanwhile are prepared again: SQLite expires them).
struct CheckedBefore<'c> {
    conn: &'c rusqlite::Connection,
}

impl<'c> CheckedBefore<'c> {
    fn new(conn: &'c rusqlite::Connection) -> Result<CheckedBefore<'c>> {
        conn.pragma_update(None, "ignore_check_constraints", true)?;
        Ok(CheckedBefore { conn })
    }
}

impl Drop for CheckedBefore<'_> {
    fn drop(&mut self) {
        let _ = self
            .conn
            .pragma_update(None, "ignore_check_constraints", false);
    }
}

/// `PRAGMA foreign_keys` off while a dump is merged (it can only change outside a
/// transaction), on again when dropped. Every reference a merge writes is made true
/// before it is written: a segment or extent follows its image's row, a cartridge's
/// media set is looked up first ([`Catalog::merge_media`]); SQLite would look each of
/// the 200 k segment and extent parents up again.
struct ReferencesCheckedBefore<'c> {
    conn: &'c rusqlite::Connection,
    was: bool,
}

impl<'c> ReferencesCheckedBefore<'c> {
    fn new(conn: &'c rusqlite::Connection) -> Result<ReferencesCheckedBefore<'c>> {
        let was: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
        conn.pragma_update(None, "foreign_keys", false)?;
        Ok(ReferencesCheckedBefore { conn, was })
    }
}

impl Drop for ReferencesCheckedBefore<'_> {
    fn drop(&mut self) {
        let _ = self.conn.pragma_update(None, "foreign_keys", self.was);
    }
}

/// The tables of a dump, in the order they are written and merged.
const TABLES: [&str; 6] = [
    "pools",
    "media_sets",
    "media",
    "sessions",
    "images",
    "snapshots",
];

/// How the head parser says it has what it needs (an error that stops serde_json
/// without reading the rest of the document).
const HEAD_DONE: &str = "tapevault: the head of the document was read";

#[derive(Default)]
struct HeadSeen {
    format: Option<String>,
    version: Option<u32>,
    kind: Option<String>,
    kind_seen: bool,
    base: Vec<SnapshotLocation>,
    base_seen: bool,
}

struct HeadVisitor<'a> {
    head: &'a mut HeadSeen,
}

impl<'de> Visitor<'de> for HeadVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a catalog snapshot document (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<(), A::Error> {
        let h = self.head;
        while let Some(k) = m.next_key::<String>()? {
            match k.as_str() {
                "format" => h.format = Some(m.next_value()?),
                "version" => h.version = Some(m.next_value()?),
                "kind" => {
                    h.kind = m.next_value()?;
                    h.kind_seen = true;
                }
                "base" => {
                    h.base = m.next_value()?;
                    h.base_seen = true;
                }
                t if TABLES.contains(&t) => {
                    // The head comes first in what tapevault writes; a `base` whose
                    // `kind` has not come yet means another order: read on.
                    if h.format.is_some() && h.version.is_some() && (h.kind_seen || !h.base_seen) {
                        return Err(A::Error::custom(HEAD_DONE));
                    }
                    m.next_value::<IgnoredAny>()?;
                }
                _ => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A streamed merge in progress (see [`Catalog::merge_snapshot_from`]).
struct MergeState<'c> {
    cat: &'c Catalog,
    report: MergeReport,
    format: Option<String>,
    version: Option<u32>,
    /// 1 + the index in [`TABLES`] of the last table merged (0: none yet).
    rank: usize,
    pool_config: BTreeMap<String, serde_json::Value>,
    /// Images with a digest list in this home (None: look each up).
    digest_lists: Option<HashSet<Uuid>>,
}

/// What the parser of a streamed merge hands to the merge, in document order.
enum Piece {
    Format(String),
    Version(u32),
    PoolConfig(BTreeMap<String, serde_json::Value>),
    /// The start of the table [`TABLES`]`[i]`; its rows follow.
    Table(usize),
    Pool(PoolRow),
    MediaSet(MediaSetRow),
    Media(MediaRow),
    Session(SessionRow),
    /// Up to [`IMAGES_PER_PIECE`] images, their extents spooled beyond
    /// [`EXTENTS_PER_PIECE`] (see `coverage.rs`).
    Images(Vec<SpooledImageDump>),
    Snapshot(SnapshotLocation),
    /// The document was read to its end, and nothing follows it.
    End,
}

/// Images parsed ahead of the merge: pieces of this many, at most [`PIECES_AHEAD`]
/// pieces waiting (a few hundred images held, whatever the size of the document).
const IMAGES_PER_PIECE: usize = 64;
const PIECES_AHEAD: usize = 4;
/// A piece is sent early once its images hold this many extents in memory (an image's
/// extents beyond the spool's in-memory limit are in a temporary file already).
const EXTENTS_PER_PIECE: usize = 1 << 16;
/// An image whose JSON is larger than this is parsed from the stream instead of from
/// a slice of its bytes, so its millions of extents are never held.
const IMAGE_RAW_LIMIT: usize = 16 << 20;

/// The parser of a streamed merge (its own thread): the document's members and rows as
/// [`Piece`]s, then [`Piece::End`]; or the error that stopped it. It stops when the
/// merge stops listening.
fn parse_document<R: Read>(
    sc: &mut RawScanner<R>,
    tx: &std::sync::mpsc::SyncSender<Result<Piece>>,
    done: &std::sync::mpsc::Receiver<Vec<SpooledImageDump>>,
) {
    // A merge that stopped listening has its own error to report: this one is not seen.
    let send = |p: Piece| {
        // The batches the merge is done with are freed here, on the thread that made them.
        while let Ok(b) = done.try_recv() {
            drop(b);
        }
        tx.send(Ok(p))
            .map_err(|_| CatalogError::BadSnapshot("the merge stopped".into()))
    };
    let r = (|| -> Result<()> {
        sc.expect(b'{')?;
        if sc.peek()? == Some(b'}') {
            sc.bump();
        } else {
            loop {
                let key: String = sc.value()?;
                sc.expect(b':')?;
                match key.as_str() {
                    "format" => send(Piece::Format(sc.value()?))?,
                    "version" => send(Piece::Version(sc.value()?))?,
                    "pool_config" => send(Piece::PoolConfig(sc.value()?))?,
                    t => match TABLES.iter().position(|x| *x == t) {
                        Some(i) => {
                            send(Piece::Table(i))?;
                            parse_table(i, sc, &send)?;
                        }
                        None => {
                            sc.value::<IgnoredAny>()?;
                        }
                    },
                }
                match sc.next()? {
                    Some(b',') => {}
                    Some(b'}') => break,
                    other => return Err(sc.unexpected(other, "`,` or `}` after a member")),
                }
            }
        }
        if let Some(c) = sc.next()? {
            return Err(sc.unexpected(Some(c), "the end of the document"));
        }
        send(Piece::End)
    })();
    if let Err(e) = r {
        let _ = tx.send(Err(e));
    }
}

/// The rows of table `i` as pieces.
fn parse_table<R: Read>(
    i: usize,
    sc: &mut RawScanner<R>,
    send: &dyn Fn(Piece) -> Result<()>,
) -> Result<()> {
    match i {
        0 => sc.rows(|p| send(Piece::Pool(p))),
        1 => sc.rows(|s| send(Piece::MediaSet(s))),
        2 => sc.rows(|m| send(Piece::Media(m))),
        3 => sc.rows(|s| send(Piece::Session(s))),
        4 => {
            let mut batch = Vec::with_capacity(IMAGES_PER_PIECE);
            let mut held = 0usize;
            sc.rows_by(RawScanner::image, |d: SpooledImageDump| {
                held += d.extents.0.in_memory();
                batch.push(d);
                if batch.len() < IMAGES_PER_PIECE && held < EXTENTS_PER_PIECE {
                    return Ok(());
                }
                held = 0;
                send(Piece::Images(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(IMAGES_PER_PIECE),
                )))
            })?;
            if batch.is_empty() {
                return Ok(());
            }
            send(Piece::Images(batch))
        }
        _ => sc.rows(|l| send(Piece::Snapshot(l))),
    }
}

impl MergeState<'_> {
    /// Merge the document `r` holds: one object whose members are the head's fields
    /// and the tables, in the order tapevault writes them; nothing may follow it. A
    /// thread of its own parses it (the JSON is about a third of the work), a few
    /// hundred rows ahead of the merge.
    fn merge_document<R: Read + Send>(&mut self, r: R) -> Result<()> {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(PIECES_AHEAD);
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            scope.spawn(move || parse_document(&mut RawScanner::new(r), &tx, &done_rx));
            // Returning drops `rx`: the parser stops at its next piece.
            self.merge_pieces(rx, &done_tx)
        })
    }

    /// Merge the parser's pieces; each merged batch of images goes back through `done`
    /// to the parser's thread, which frees it (the merge, on this thread, is the
    /// rebuild's longest path; the parser has time to spare).
    fn merge_pieces(
        &mut self,
        rx: std::sync::mpsc::Receiver<Result<Piece>>,
        done: &std::sync::mpsc::Sender<Vec<SpooledImageDump>>,
    ) -> Result<()> {
        let cat = self.cat;
        // The image tables' CHECKs are left to Rust while their rows are merged.
        let mut checked: Option<CheckedBefore> = None;
        let mut inserts: Option<RowInserts> = None;
        for p in rx {
            let r = &mut self.report;
            match p? {
                Piece::Format(f) => self.format = Some(f),
                Piece::Version(v) => self.version = Some(v),
                Piece::PoolConfig(c) => self.pool_config = c,
                Piece::Table(i) => {
                    let t = TABLES[i];
                    let (Some(format), Some(version)) = (&self.format, self.version) else {
                        return Err(CatalogError::BadSnapshot(format!(
                            "table {t} comes before the document's format and version"
                        )));
                    };
                    check_format(format, version)?;
                    if i < self.rank {
                        return Err(CatalogError::BadSnapshot(format!(
                            "table {t} comes after {} (tables are merged in the order {})",
                            TABLES[self.rank - 1],
                            TABLES.join(", ")
                        )));
                    }
                    self.rank = i + 1;
                    // Every CHECK of the image tables is checked before the insert
                    // (`validate_segment`, `ExtentCheck`, the kinds and statuses
                    // are enums): SQLite need not evaluate them again for each row (its
                    // `kind IN (...)` and `status IN (...)` made a temporary table per
                    // image).
                    inserts = None;
                    checked = None;
                    if i == 4 {
                        checked = Some(CheckedBefore::new(cat.conn())?);
                        inserts = Some(RowInserts::new(cat.conn())?);
                    }
                }
                Piece::Pool(p) => cat.merge_pool_in(&p, r)?,
                Piece::MediaSet(s) => cat.merge_media_set_in(&s, r)?,
                Piece::Media(m) => cat.merge_media_in(&m, r)?,
                Piece::Session(s) => cat.merge_session_in(&s, r)?,
                Piece::Images(batch) => {
                    for d in &batch {
                        cat.merge_image_parts(
                            d.parts(),
                            r,
                            self.digest_lists.as_ref(),
                            inserts.as_mut(),
                        )?;
                    }
                    // A parser that has ended no longer takes them: freed here.
                    let _ = done.send(batch);
                }
                Piece::Snapshot(l) => r.snapshots_added += usize::from(cat.insert_snapshot(&l)?),
                Piece::End => return Ok(()),
            }
        }
        drop((inserts, checked));
        Err(CatalogError::BadSnapshot(
            "the document's parser stopped before its end".into(),
        ))
    }
}

/// Reads a JSON document piece by piece: the punctuation of its outer object and
/// arrays, and the bytes of one value at a time, which serde_json then parses from a
/// slice (several times faster than parsing from a reader, byte by byte). The scanner
/// only finds where a value ends (strings, escapes, nesting); serde_json checks it.
struct RawScanner<R> {
    r: std::io::BufReader<R>,
    /// Bytes consumed so far (for error messages).
    at: u64,
    /// The bytes of the latest value.
    raw: Vec<u8>,
}

/// What [`RawScanner::raw_value`] stops at, by byte: in a string its end or an
/// escape, in an object or array a string's start or a bracket, after a number or
/// literal a delimiter.
const STR_STOP: u8 = 1;
const NEST_STOP: u8 = 2;
const SCALAR_STOP: u8 = 4;
const SCAN: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'"' as usize] = STR_STOP | NEST_STOP;
    t[b'\\' as usize] = STR_STOP;
    t[b'{' as usize] = NEST_STOP;
    t[b'[' as usize] = NEST_STOP;
    t[b'}' as usize] = NEST_STOP | SCALAR_STOP;
    t[b']' as usize] = NEST_STOP | SCALAR_STOP;
    t[b',' as usize] = SCALAR_STOP;
    t[b' ' as usize] = SCALAR_STOP;
    t[b'\n' as usize] = SCALAR_STOP;
    t[b'\r' as usize] = SCALAR_STOP;
    t[b'\t' as usize] = SCALAR_STOP;
    t
};

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t')
}

impl<R: Read> RawScanner<R> {
    fn new(r: R) -> RawScanner<R> {
        RawScanner {
            r: std::io::BufReader::with_capacity(256 << 10, r),
            at: 0,
            raw: Vec::new(),
        }
    }

    fn io(&self, e: std::io::Error) -> CatalogError {
        CatalogError::BadSnapshot(format!("reading the document at byte {}: {e}", self.at))
    }

    fn consume(&mut self, n: usize) {
        std::io::BufRead::consume(&mut self.r, n);
        self.at += n as u64;
    }

    /// The next byte that is not white space, left unread (None at the end).
    fn peek(&mut self) -> Result<Option<u8>> {
        loop {
            let b = match std::io::BufRead::fill_buf(&mut self.r) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            };
            if b.is_empty() {
                return Ok(None);
            }
            match b.iter().position(|&c| !is_ws(c)) {
                Some(n) => {
                    let c = b[n];
                    self.consume(n);
                    return Ok(Some(c));
                }
                None => {
                    let n = b.len();
                    self.consume(n);
                }
            }
        }
    }

    fn bump(&mut self) {
        self.consume(1);
    }

    /// The next byte that is not white space, read.
    fn next(&mut self) -> Result<Option<u8>> {
        let c = self.peek()?;
        if c.is_some() {
            self.bump();
        }
        Ok(c)
    }

    fn unexpected(&self, c: Option<u8>, want: &str) -> CatalogError {
        CatalogError::BadSnapshot(match c {
            Some(c) => format!(
                "{:?} at byte {} where {want} belongs",
                char::from(c),
                self.at.saturating_sub(1)
            ),
            None => format!("the document ends at byte {} where {want} belongs", self.at),
        })
    }

    fn expect(&mut self, want: u8) -> Result<()> {
        match self.next()? {
            Some(c) if c == want => Ok(()),
            other => Err(self.unexpected(other, &format!("`{}`", char::from(want)))),
        }
    }

    /// The next value, parsed.
    fn value<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let start = self.at;
        self.raw_value()?;
        serde_json::from_slice(&self.raw)
            .map_err(|e| CatalogError::BadSnapshot(format!("the value at byte {start}: {e}")))
    }

    /// Each element of the array that comes next, parsed and handed to `f` (whose
    /// error stops the merge).
    fn rows<T: serde::de::DeserializeOwned>(
        &mut self,
        f: impl FnMut(T) -> Result<()>,
    ) -> Result<()> {
        self.rows_by(Self::value, f)
    }

    /// [`rows`](Self::rows), each element parsed by `parse`.
    fn rows_by<T>(
        &mut self,
        mut parse: impl FnMut(&mut Self) -> Result<T>,
        mut f: impl FnMut(T) -> Result<()>,
    ) -> Result<()> {
        self.expect(b'[')?;
        if self.peek()? == Some(b']') {
            self.bump();
            return Ok(());
        }
        loop {
            f(parse(self)?)?;
            match self.next()? {
                Some(b',') => {}
                Some(b']') => return Ok(()),
                other => return Err(self.unexpected(other, "`,` or `]` after an element")),
            }
        }
    }

    /// The next value, an image of the images table (see [`value_capped`](Self::value_capped)).
    fn image(&mut self) -> Result<SpooledImageDump> {
        self.value_capped(IMAGE_RAW_LIMIT)
    }

    /// The next value, parsed from a slice of its bytes, or, past `limit` bytes, from
    /// those bytes and then the stream itself (an image's extents spooled as they are
    /// read, never held).
    fn value_capped<T: serde::de::DeserializeOwned>(&mut self, limit: usize) -> Result<T> {
        let start = self.at;
        let bad = |e: serde_json::Error| {
            CatalogError::BadSnapshot(format!("the value at byte {start}: {e}"))
        };
        if self.raw_value_upto(limit)? {
            return serde_json::from_slice(&self.raw).map_err(bad);
        }
        struct Counted<'a, R>(&'a mut R, u64);
        impl<R: Read> Read for Counted<'_, R> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1 += n as u64;
                Ok(n)
            }
        }
        let raw = std::mem::take(&mut self.raw);
        let mut rest = Counted(&mut self.r, 0);
        // serde_json reads no byte past the closing brace or bracket of an object or
        // an array (the scanner then goes on from there).
        let parsed = {
            let mut de = serde_json::Deserializer::from_reader(Read::chain(&raw[..], &mut rest));
            T::deserialize(&mut de).map_err(bad)
        };
        self.at += rest.1;
        self.raw = raw;
        self.raw.clear();
        parsed
    }

    /// Read the bytes of the next value into `self.raw`: a string, an object or an
    /// array to its closing quote or bracket, anything else up to the next delimiter.
    fn raw_value(&mut self) -> Result<()> {
        self.raw_value_upto(usize::MAX).map(|_| ())
    }

    /// [`raw_value`](Self::raw_value), stopping once `limit` bytes are held: false
    /// when it stopped there (`self.raw` then holds the value's first bytes).
    fn raw_value_upto(&mut self, limit: usize) -> Result<bool> {
        self.raw.clear();
        let Some(first) = self.peek()? else {
            return Err(self.unexpected(None, "a value"));
        };
        let scalar = !matches!(first, b'{' | b'[' | b'"');
        let (mut depth, mut in_str, mut esc) = (0usize, false, false);
        loop {
            let b = match std::io::BufRead::fill_buf(&mut self.r) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            };
            if b.is_empty() {
                if scalar {
                    return Ok(true);
                }
                return Err(self.unexpected(None, "the rest of a value"));
            }
            let mut end = None;
            // An escape whose backslash ended the previous buffer: skip the byte it escapes.
            let mut i = usize::from(std::mem::take(&mut esc));
            while i < b.len() {
                // Past the bytes that mean nothing where we are, a table lookup each.
                let stop = if in_str {
                    STR_STOP
                } else if scalar {
                    SCALAR_STOP
                } else {
                    NEST_STOP
                };
                while i < b.len() && SCAN[usize::from(b[i])] & stop == 0 {
                    i += 1;
                }
                if i == b.len() {
                    break;
                }
                let c = b[i];
                if in_str {
                    if c == b'\\' {
                        // The escaped byte is never the string's end.
                        if i + 1 == b.len() {
                            esc = true;
                            i += 1;
                            break;
                        }
                        i += 2;
                        continue;
                    }
                    in_str = false; // `"`
                    if depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                } else if scalar {
                    end = Some(i);
                    break;
                } else {
                    match c {
                        b'"' => in_str = true,
                        b'{' | b'[' => depth += 1,
                        _ => {
                            depth -= 1; // `}` or `]`
                            if depth == 0 {
                                end = Some(i + 1);
                                break;
                            }
                        }
                    }
                }
                i += 1;
            }
            let n = end.unwrap_or(b.len());
            self.raw.extend_from_slice(&b[..n]);
            self.consume(n);
            if end.is_some() {
                return Ok(true);
            }
            // (A number or literal is never cut: serde_json would read the byte after it.)
            if self.raw.len() >= limit && !scalar {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that gives one byte per read: every value split at every byte.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.is_empty()) {
                (Some((&b, rest)), false) => {
                    buf[0] = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    fn elements(doc: &[u8], trickle: bool) -> Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        if trickle {
            RawScanner::new(Trickle(doc)).rows(|v| {
                out.push(v);
                Ok(())
            })?;
        } else {
            RawScanner::new(doc).rows(|v| {
                out.push(v);
                Ok(())
            })?;
        }
        Ok(out)
    }

    #[test]
    fn the_scanner_splits_an_array_into_its_values_whatever_the_reads() {
        let doc = br#" [ {"a": "x\"}]\\", "b": [1, {"c": []}], "d": "\u00e9{["},
            "plain", "esc\\", 12.5e3 , -7, true,false ,null, [], {}, [[["]"]]] ] "#;
        let want: Vec<serde_json::Value> = serde_json::from_slice(doc).unwrap();
        assert_eq!(want.len(), 11);
        assert_eq!(elements(doc, false).unwrap(), want);
        assert_eq!(elements(doc, true).unwrap(), want);
        assert!(elements(b"[]", true).unwrap().is_empty());
    }

    #[test]
    fn values_past_the_limit_are_parsed_from_the_stream() {
        let doc = br#"[{"a": [1, 2, 3, {"b": "x\"y"}], "c": "long string value"}, [4, 5, 6, 7, 8], 123456, "a string", {"d": {}}, {"e": 1}]"#;
        let want: Vec<serde_json::Value> = serde_json::from_slice(doc).unwrap();
        for limit in [1, 2, 5, 17, 64, usize::MAX] {
            for trickle in [false, true] {
                let mut got = Vec::new();
                let mut push = |v| {
                    got.push(v);
                    Ok(())
                };
                if trickle {
                    RawScanner::new(Trickle(doc))
                        .rows_by(|sc| sc.value_capped::<serde_json::Value>(limit), &mut push)
                        .unwrap();
                } else {
                    RawScanner::new(&doc[..])
                        .rows_by(|sc| sc.value_capped::<serde_json::Value>(limit), &mut push)
                        .unwrap();
                }
                assert_eq!(got, want, "limit {limit}, trickle {trickle}");
            }
        }
        let broken = br#"[{"a": [1, 2, 3], "c": tru}]"#;
        let err = RawScanner::new(&broken[..])
            .rows_by(|sc| sc.value_capped::<serde_json::Value>(4), |_| Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("the value at byte 1"), "{err}");
    }

    #[test]
    fn the_scanner_refuses_broken_arrays() {
        for bad in [
            &b"[1 2]"[..],
            b"[1,]",
            b"[\"open",
            b"[{\"a\": 1}",
            b"[{\"a\": 1]",
            b"[tru]",
            b"{}",
            b"",
            b"[1,,2]",
        ] {
            for trickle in [false, true] {
                assert!(
                    matches!(elements(bad, trickle), Err(CatalogError::BadSnapshot(_))),
                    "{:?} was taken",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }
}
