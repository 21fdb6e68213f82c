//! Export, snapshots and merging (disaster recovery).
//!
//! One JSON document shape serves `catalog export` (streamed) and the catalog
//! snapshots written to media: [`DUMP_FORMAT`] / [`DUMP_VERSION`], then every table.
//! [`Catalog::merge_snapshot`] accepts either and merges it idempotently:
//! missing rows are added, newer facts are never overwritten, and contradictions
//! (same image UUID with a different digest or identity, a cartridge labelled twice
//! at the same time with different volumes) are reported, not applied.

use super::images::{image_row, validate_extents, validate_segment, IMAGE_COLS};
use super::*;
use serde::de::{
    DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
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
        array(
            &mut w,
            "pools",
            c.prepare(&format!("SELECT {POOL_COLS} FROM pools ORDER BY name"))?
                .query_map([], pool_row)?
                .map(|r| r.map_err(CatalogError::from)),
        )?;
        array(
            &mut w,
            "media_sets",
            c.prepare(&format!(
                "SELECT {SET_COLS} FROM media_sets ORDER BY created, uuid"
            ))?
            .query_map([], set_row)?
            .map(|r| r.map_err(CatalogError::from)),
        )?;
        array(
            &mut w,
            "media",
            c.prepare(&format!("SELECT {MEDIA_COLS} FROM media ORDER BY barcode"))?
                .query_map([], media_row)?
                .map(|r| r.map_err(CatalogError::from)),
        )?;
        array(
            &mut w,
            "sessions",
            c.prepare(&format!(
                "SELECT {SESSION_COLS}, writer FROM sessions ORDER BY started, uuid"
            ))?
            .query_map([], session_row)?
            .map(|r| r.map_err(CatalogError::from)),
        )?;
        let mut st = c.prepare(&format!(
            "SELECT {IMAGE_COLS} FROM images ORDER BY started, uuid"
        ))?;
        let images = st.query_map([], image_row)?.map(|r| {
            let image = r?;
            let segments = self.segments(image.uuid)?;
            let extents = self.extents(image.uuid)?;
            Ok(ImageDump {
                image,
                segments,
                extents,
            })
        });
        array(&mut w, "images", images)?;
        array(
            &mut w,
            "snapshots",
            c.prepare(&format!(
                "SELECT {SNAP_COLS} FROM snapshots ORDER BY time, barcode, tape_file"
            ))?
            .query_map([], snap_row)?
            .map(|r| r.map_err(CatalogError::from)),
        )?;
        let names: Vec<String> = self.pools()?.into_iter().map(|p| p.name).collect();
        let config = self.pool_config(names.iter());
        if !config.is_empty() {
            w.write_all(b",\"pool_config\":")
                .map_err(CatalogError::Export)?;
            serde_json::to_writer(&mut w, &config).map_err(json_err)?;
        }
        w.write_all(b"}\n").map_err(CatalogError::Export)?;
        w.flush().map_err(CatalogError::Export)?;
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
        let mut order: Vec<(DateTime<Utc>, Uuid)> = Vec::with_capacity(image_ids.len());
        {
            let mut head = self
                .conn()
                .prepare_cached("SELECT started, pool, session_uuid FROM images WHERE uuid=?1")?;
            let mut bcs = self
                .conn()
                .prepare_cached("SELECT DISTINCT barcode FROM segments WHERE image_uuid=?1")?;
            for id in image_ids {
                let key = id.to_string();
                let (started, pool, session): (DateTime<Utc>, Option<String>, Option<Uuid>) =
                    head.query_row([&key], |r| Ok((get_p(r, 0)?, r.get(1)?, get_po(r, 2)?)))?;
                for b in bcs.query_map([&key], |r| r.get::<_, String>(0))? {
                    let b = b?;
                    if !barcodes.contains(&b) {
                        barcodes.insert(b);
                    }
                }
                pools.extend(pool);
                sessions.extend(session);
                order.push((started, id));
            }
        }
        order.sort();
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
        for (i, (_, id)) in order.into_iter().enumerate() {
            let image = self.image(id)?.ok_or(CatalogError::NotFound {
                what: "image",
                key: id.to_string(),
            })?;
            let d = ImageDump {
                segments: self.segments(id)?,
                extents: self.extents(id)?,
                image,
            };
            if i > 0 {
                w.write_all(b",").map_err(CatalogError::Export)?;
            }
            serde_json::to_writer(&mut w, &d).map_err(json_err)?;
        }
        w.write_all(b"],\"snapshots\":")
            .map_err(CatalogError::Export)?;
        serde_json::to_writer(&mut w, &snapshots).map_err(json_err)?;
        let config = self.pool_config(pools.iter());
        if !config.is_empty() {
            w.write_all(b",\"pool_config\":")
                .map_err(CatalogError::Export)?;
            serde_json::to_writer(&mut w, &config).map_err(json_err)?;
        }
        w.write_all(b"}").map_err(CatalogError::Export)?;
        w.flush().map_err(CatalogError::Export)?;
        Ok(())
    }

    /// The `pools.toml` declarations of these pools in this catalog's home, as JSON.
    /// A pools.toml that cannot be read gives none (the snapshot is still written).
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
    pub fn merge_snapshot_from<R: Read>(&self, r: R) -> Result<MergeReport> {
        let _cache = MergeCache::new(self.conn())?;
        let tx = self.write_tx()?;
        let mut st = MergeState {
            cat: self,
            report: MergeReport::default(),
            format: None,
            version: None,
            rank: 0,
            pool_config: BTreeMap::new(),
            failure: None,
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
            let mut st = self.conn().prepare(
                "SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL \
                 AND tbl_name IN ('images','segments','image_extents') ORDER BY name",
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
        let mut de = serde_json::Deserializer::from_reader(r);
        let parsed = de
            .deserialize_map(MergeVisitor { st: &mut st })
            .and_then(|()| de.end());
        if let Some(e) = st.failure.take() {
            return Err(e); // the transaction rolls back
        }
        parsed.map_err(|e| CatalogError::BadSnapshot(e.to_string()))?;
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
            self.merge_image_in(i, &mut r, digest_lists.as_ref())?;
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
        self.merge_image_in(d, &mut r, None)?;
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
        self.conn().execute(
            &format!(
                "INSERT OR REPLACE INTO media ({MEDIA_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"
            ),
            params![
                m.barcode,
                m.volume_uuid.map(|u| u.to_string()),
                m.pool,
                m.media_set_uuid.map(|u| u.to_string()),
                m.seq_in_set,
                m.state.as_str(),
                m.location,
                tso(&m.labelled_at),
                tso(&m.last_written),
                num(m.next_tape_file, "next tape file")?,
                num(m.bytes_written, "bytes written")?,
                num(m.errors, "errors")?
            ],
        )?;
        Ok(())
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
    /// each is looked up).
    fn merge_image_in(
        &self,
        d: &ImageDump,
        r: &mut MergeReport,
        digest_lists: Option<&HashSet<Uuid>>,
    ) -> Result<()> {
        let local_list = |id: Uuid| match digest_lists {
            Some(set) => set.contains(&id).then(|| self.digest_list_rel(id)),
            None => self.local_digest_list(id),
        };
        let inc = &d.image;
        for s in &d.segments {
            validate_segment(inc, s)?;
        }
        if !d.extents.is_empty() {
            validate_extents(inc, &d.extents)?;
        }
        let Some(local) = self.image(inc.uuid)? else {
            let mut row = inc.clone();
            // Never a path from the media or an export: only a list this home holds.
            row.digest_list = if row.status == ImageStatus::Complete {
                local_list(inc.uuid)
            } else {
                None
            };
            if row.status == ImageStatus::Running {
                row.status = ImageStatus::Incomplete;
                row.note =
                    Some("was still being written when this catalog snapshot was taken".into());
            }
            self.insert_image(&row, None)?;
            for s in &d.segments {
                self.insert_segment(inc.uuid, s)?;
            }
            r.segments_added += d.segments.len();
            for e in &d.extents {
                self.insert_extent(inc.uuid, e)?;
            }
            r.images_added += 1;
            return Ok(());
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
            for s in &d.segments {
                match known.iter().find(|k| k.first_seq == s.first_seq) {
                    None => {
                        self.insert_segment(inc.uuid, s)?;
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
        if !d.extents.is_empty() && self.extents(inc.uuid)?.is_empty() {
            for e in &d.extents {
                self.insert_extent(inc.uuid, e)?;
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
    /// The catalog error that stopped the parse (reported instead of the parse error
    /// it was turned into).
    failure: Option<CatalogError>,
    /// Images with a digest list in this home (None: look each up).
    digest_lists: Option<HashSet<Uuid>>,
}

impl MergeState<'_> {
    fn fail<E: serde::de::Error>(&mut self, e: CatalogError) -> E {
        let msg = e.to_string();
        self.failure = Some(e);
        E::custom(msg)
    }
}

struct MergeVisitor<'a, 'c> {
    st: &'a mut MergeState<'c>,
}

impl<'de> Visitor<'de> for MergeVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a catalog snapshot document (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<(), A::Error> {
        let st = self.st;
        while let Some(k) = m.next_key::<String>()? {
            match k.as_str() {
                "format" => st.format = Some(m.next_value()?),
                "version" => st.version = Some(m.next_value()?),
                "pool_config" => st.pool_config = m.next_value()?,
                t => match TABLES.iter().position(|x| *x == t) {
                    Some(i) => {
                        let (Some(format), Some(version)) = (&st.format, st.version) else {
                            return Err(st.fail(CatalogError::BadSnapshot(format!(
                                "table {t} comes before the document's format and version"
                            ))));
                        };
                        if let Err(e) = check_format(format, version) {
                            return Err(st.fail(e));
                        }
                        if i < st.rank {
                            return Err(st.fail(CatalogError::BadSnapshot(format!(
                                "table {t} comes after {} (tables are merged in the order {})",
                                TABLES[st.rank - 1],
                                TABLES.join(", ")
                            ))));
                        }
                        st.rank = i + 1;
                        m.next_value_seed(TableSeed {
                            st: &mut *st,
                            table: i,
                        })?;
                    }
                    None => {
                        m.next_value::<IgnoredAny>()?;
                    }
                },
            }
        }
        Ok(())
    }
}

/// One table of a dump, merged row by row.
struct TableSeed<'a, 'c> {
    st: &'a mut MergeState<'c>,
    table: usize,
}

impl<'de> DeserializeSeed<'de> for TableSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TableSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "the array {}", TABLES[self.table])
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> std::result::Result<(), S::Error> {
        let st = self.st;
        let cat = st.cat;
        macro_rules! each {
            ($t:ty, |$row:ident| $apply:expr) => {
                while let Some($row) = seq.next_element::<$t>()? {
                    let r: Result<()> = $apply;
                    if let Err(e) = r {
                        return Err(st.fail(e));
                    }
                }
            };
        }
        match self.table {
            0 => each!(PoolRow, |p| cat.merge_pool_in(&p, &mut st.report)),
            1 => each!(MediaSetRow, |s| cat.merge_media_set_in(&s, &mut st.report)),
            2 => each!(MediaRow, |m| cat.merge_media_in(&m, &mut st.report)),
            3 => each!(SessionRow, |s| cat.merge_session_in(&s, &mut st.report)),
            4 => each!(ImageDump, |i| cat.merge_image_in(
                &i,
                &mut st.report,
                st.digest_lists.as_ref()
            )),
            _ => each!(SnapshotLocation, |s| match cat.insert_snapshot(&s) {
                Ok(added) => {
                    st.report.snapshots_added += usize::from(added);
                    Ok(())
                }
                Err(e) => Err(e),
            }),
        }
        Ok(())
    }
}
