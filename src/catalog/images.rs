//! Image life cycle, segments, extents and restore chains.

use super::*;
use std::collections::{HashMap, HashSet};

/// Longest parent chain followed: far above any sane incremental-forever chain, and
/// a bound on work if damaged parent links ever formed a loop.
pub const MAX_CHAIN_LEN: usize = 100_000;

macro_rules! image_cols {
    () => {
        "uuid, disk_uuid, vm_name, kind, parent_uuid, change_id, from_change_id, \
         disk_size, block_size, session_uuid, pool, key_fingerprint, compression, started, finished, status, \
         records, plain_bytes, stored_bytes, content_digest, digest_list, note, writer, disk_label, copy_of, synthetic_of"
    };
}
pub(crate) const IMAGE_COLS: &str = image_cols!();

const INSERT_IMAGE: &str = concat!(
    "INSERT INTO images (",
    image_cols!(),
    ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25,?26)"
);
const INSERT_IMAGE_IF_NEW: &str = concat!(
    "INSERT INTO images (",
    image_cols!(),
    ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25,?26) \
     ON CONFLICT (uuid) DO NOTHING"
);

/// A UUID as the catalog stores it (lower-case hyphenated text), written into `buf`.
pub(crate) fn uuid_text<'b>(u: &Uuid, buf: &'b mut [u8; 36]) -> &'b str {
    u.hyphenated().encode_lower(buf)
}

fn opt<'b>(u: &Option<Uuid>, buf: &'b mut [u8; 36]) -> Option<&'b str> {
    u.as_ref().map(|u| uuid_text(u, buf))
}

const INSERT_SEGMENT: &str = "INSERT INTO segments (image_uuid, part, barcode, tape_file, first_block, \
     last_block, first_seq, last_seq, disk_start, disk_end) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)";
const INSERT_EXTENT: &str =
    "INSERT INTO image_extents (image_uuid, offset, length, is_zero) VALUES (?1,?2,?3,?4)";

/// The statements that insert an image with its segments and extents, prepared once
/// for a merge of many images (fetching a cached statement hashes its SQL twice: a
/// fifth of merging a new image).
pub(crate) struct RowInserts<'c> {
    image_if_new: rusqlite::CachedStatement<'c>,
    segment: rusqlite::CachedStatement<'c>,
    extent: rusqlite::CachedStatement<'c>,
}

impl<'c> RowInserts<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Result<RowInserts<'c>> {
        Ok(RowInserts {
            image_if_new: conn.prepare_cached(INSERT_IMAGE_IF_NEW)?,
            segment: conn.prepare_cached(INSERT_SEGMENT)?,
            extent: conn.prepare_cached(INSERT_EXTENT)?,
        })
    }

    /// Insert `i` unless an image with its UUID is already there: whether it was
    /// inserted (one statement where a lookup and an insert were two).
    pub(crate) fn image_if_new(&mut self, i: &ImageRow) -> Result<bool> {
        insert_image_with(&mut self.image_if_new, i, None).map(|n| n == 1)
    }

    pub(crate) fn segment(&mut self, image: Uuid, s: &Segment) -> Result<()> {
        insert_segment_with(&mut self.segment, image, s)
    }

    pub(crate) fn extent(&mut self, image: Uuid, e: &Extent) -> Result<()> {
        insert_extent_with(&mut self.extent, image, e)
    }
}

fn insert_image_with(
    stmt: &mut rusqlite::Statement<'_>,
    i: &ImageRow,
    writer: Option<&str>,
) -> Result<usize> {
    // The UUIDs as text on the stack, not five strings per image.
    let mut ids = [[0u8; 36]; 6];
    let [a, b, c, d, e, f] = &mut ids;
    Ok(stmt.execute(params![
        uuid_text(&i.uuid, a),
        uuid_text(&i.disk_uuid, b),
        i.vm_name,
        i.kind.as_str(),
        opt(&i.parent_uuid, c),
        i.change_id,
        i.from_change_id,
        num(i.disk_size, "disk size")?,
        i.block_size,
        opt(&i.session_uuid, d),
        i.pool,
        i.key_fingerprint,
        i.compression.to_string(),
        ts(&i.started),
        tso(&i.finished),
        i.status.as_str(),
        num(i.records, "records")?,
        num(i.plain_bytes, "bytes")?,
        num(i.stored_bytes, "bytes")?,
        i.content_digest,
        i.digest_list,
        i.note,
        writer,
        i.disk_label,
        opt(&i.copy_of, e),
        opt(&i.synthetic_of, f)
    ])?)
}

fn insert_segment_with(stmt: &mut rusqlite::Statement<'_>, image: Uuid, s: &Segment) -> Result<()> {
    let mut id = [0u8; 36];
    stmt.execute(params![
        uuid_text(&image, &mut id),
        s.part,
        s.barcode,
        num(s.tape_file, "tape file")?,
        num(s.first_block, "block")?,
        num(s.last_block, "block")?,
        num(s.first_seq, "sequence number")?,
        num(s.last_seq, "sequence number")?,
        num(s.disk_start, "disk offset")?,
        num(s.disk_end, "disk offset")?
    ])?;
    Ok(())
}

fn insert_extent_with(stmt: &mut rusqlite::Statement<'_>, image: Uuid, e: &Extent) -> Result<()> {
    let mut id = [0u8; 36];
    stmt.execute(params![
        uuid_text(&image, &mut id),
        num(e.offset, "extent offset")?,
        num(e.length, "extent length")?,
        e.is_zero
    ])?;
    Ok(())
}

/// How images of one disk are ordered newest first: by start time (the point in time
/// an image restores), a synthetic full before the image it reproduces (same time,
/// same bytes, and the shorter chain), then by the order they were recorded.
pub(crate) const NEWEST_FIRST: &str = "started DESC, (synthetic_of IS NOT NULL) DESC, rowid DESC";

/// Reads [`IMAGE_COLS`]. An image still marked running whose writing process is gone
/// reads as failed, with the reason as its note (see [`interrupted`]).
pub(crate) fn image_row(r: &Row) -> rusqlite::Result<ImageRow> {
    let mut status: ImageStatus = get_p(r, 15)?;
    let mut note: Option<String> = r.get(21)?;
    if status == ImageStatus::Running {
        let writer: Option<String> = r.get(22)?;
        if let Some(why) = interrupted(writer.as_deref()) {
            status = ImageStatus::Failed;
            note = Some(why);
        }
    }
    Ok(ImageRow {
        uuid: get_p(r, 0)?,
        disk_uuid: get_p(r, 1)?,
        vm_name: r.get(2)?,
        disk_label: r.get(23)?,
        kind: get_p(r, 3)?,
        parent_uuid: get_po(r, 4)?,
        change_id: r.get(5)?,
        from_change_id: r.get(6)?,
        disk_size: get_u64(r, 7)?,
        block_size: r.get(8)?,
        session_uuid: get_po(r, 9)?,
        pool: r.get(10)?,
        key_fingerprint: r.get(11)?,
        compression: get_p(r, 12)?,
        started: get_p(r, 13)?,
        finished: get_po(r, 14)?,
        status,
        records: get_u64(r, 16)?,
        plain_bytes: get_u64(r, 17)?,
        stored_bytes: get_u64(r, 18)?,
        content_digest: r.get(19)?,
        digest_list: r.get(20)?,
        note,
        copy_of: match r.as_ref().column_count() > 24 {
            true => get_po(r, 24)?,
            false => None,
        },
        synthetic_of: match r.as_ref().column_count() > 25 {
            true => get_po(r, 25)?,
            false => None,
        },
    })
}

pub(crate) const SEG_COLS: &str =
    "part, barcode, tape_file, first_block, last_block, first_seq, last_seq, disk_start, disk_end";

pub(crate) fn seg_row(r: &Row) -> rusqlite::Result<Segment> {
    Ok(Segment {
        part: r.get(0)?,
        barcode: r.get(1)?,
        tape_file: get_u64(r, 2)?,
        first_block: get_u64(r, 3)?,
        last_block: get_u64(r, 4)?,
        first_seq: get_u64(r, 5)?,
        last_seq: get_u64(r, 6)?,
        disk_start: get_u64(r, 7)?,
        disk_end: get_u64(r, 8)?,
    })
}

fn invalid(image: Uuid, reason: String) -> CatalogError {
    CatalogError::Invalid {
        what: format!("image {image}"),
        reason,
    }
}

/// Check one segment against its image.
pub(crate) fn validate_segment(img: &ImageRow, s: &Segment) -> Result<()> {
    if s.barcode.is_empty() {
        return Err(invalid(img.uuid, "segment without a barcode".into()));
    }
    if s.first_block > s.last_block || s.first_seq > s.last_seq || s.disk_start > s.disk_end {
        return Err(invalid(
            img.uuid,
            format!("segment with reversed ranges: {s:?}"),
        ));
    }
    if s.disk_end > img.disk_size {
        return Err(invalid(
            img.uuid,
            format!(
                "segment ends at disk byte {} beyond the disk size {}",
                s.disk_end, img.disk_size
            ),
        ));
    }
    Ok(())
}

/// Checks an image's extents one at a time, as they are read (from the catalog or a
/// temporary file, never held whole): sorted, non-overlapping, non-empty, inside the
/// disk; a full or copy covers the whole disk.
pub(crate) struct ExtentCheck<'a> {
    img: &'a ImageRow,
    end: u64,
    seen: bool,
}

impl<'a> ExtentCheck<'a> {
    pub(crate) fn new(img: &'a ImageRow) -> Self {
        ExtentCheck {
            img,
            end: 0,
            seen: false,
        }
    }

    pub(crate) fn next(&mut self, e: &Extent) -> Result<()> {
        let img = self.img;
        let end = self.end;
        let e_end = e
            .offset
            .checked_add(e.length)
            .ok_or_else(|| invalid(img.uuid, format!("extent {e:?} overflows")))?;
        if e.length == 0 {
            return Err(invalid(img.uuid, format!("empty extent at {}", e.offset)));
        }
        if e_end > img.disk_size {
            return Err(invalid(
                img.uuid,
                format!(
                    "extent {}+{} beyond the disk size {}",
                    e.offset, e.length, img.disk_size
                ),
            ));
        }
        if self.seen && e.offset < end {
            return Err(invalid(
                img.uuid,
                format!("extents unsorted or overlapping at {}", e.offset),
            ));
        }
        if img.kind != ImageKind::Incremental && e.offset != end {
            return Err(invalid(
                img.uuid,
                format!(
                    "a {} image must cover the whole disk; gap at {end}..{}",
                    img.kind, e.offset
                ),
            ));
        }
        self.end = e_end;
        self.seen = true;
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<()> {
        let img = self.img;
        let end = self.end;
        if img.kind != ImageKind::Incremental && end != img.disk_size {
            return Err(invalid(
                img.uuid,
                format!(
                    "a {} image must cover the whole disk; covered up to {end} of {}",
                    img.kind, img.disk_size
                ),
            ));
        }
        Ok(())
    }
}

impl Catalog {
    pub(crate) fn insert_segment(&self, image: Uuid, s: &Segment) -> Result<()> {
        let mut st = self.conn().prepare_cached(INSERT_SEGMENT)?;
        insert_segment_with(&mut st, image, s)
    }

    pub(crate) fn insert_extent(&self, image: Uuid, e: &Extent) -> Result<()> {
        let mut st = self.conn().prepare_cached(INSERT_EXTENT)?;
        insert_extent_with(&mut st, image, e)
    }

    pub(crate) fn insert_image(&self, i: &ImageRow, writer: Option<&str>) -> Result<()> {
        let mut st = self.conn().prepare_cached(INSERT_IMAGE)?;
        insert_image_with(&mut st, i, writer).map(|_| ())
    }

    /// Record a new image as running. An incremental's parent must be a complete,
    /// non-copy image of the same disk (normally [`Catalog::newest_good_image`]).
    pub fn begin_image(&self, n: &NewImage) -> Result<ImageRow> {
        if n.block_size == 0 {
            return Err(invalid(n.uuid, "block size 0".into()));
        }
        if n.synthetic_of.is_some() && n.kind != ImageKind::Full {
            return Err(invalid(
                n.uuid,
                format!("a {} image cannot be a synthetic full", n.kind),
            ));
        }
        match (n.kind, n.parent_uuid) {
            (ImageKind::Incremental, None) => {
                return Err(invalid(n.uuid, "an incremental needs a parent".into()))
            }
            (ImageKind::Full | ImageKind::Copy, Some(_)) => {
                return Err(invalid(n.uuid, format!("a {} image has no parent", n.kind)))
            }
            (ImageKind::Incremental, Some(p)) => {
                let parent = self.image(p)?.ok_or(CatalogError::NotFound {
                    what: "parent image",
                    key: p.to_string(),
                })?;
                let reason = if parent.status != ImageStatus::Complete {
                    Some(format!("is {}", parent.status))
                } else if parent.kind == ImageKind::Copy {
                    Some("is a copy, which is never a base".to_string())
                } else if parent.disk_uuid != n.disk_uuid {
                    Some(format!("belongs to disk {}", parent.disk_uuid))
                } else {
                    None
                };
                if let Some(r) = reason {
                    return Err(invalid(n.uuid, format!("parent {p} {r}")));
                }
            }
            _ => {}
        }
        if let Some(p) = &n.pool {
            if self.pool(p)?.is_none() {
                return Err(CatalogError::NotFound {
                    what: "pool",
                    key: p.clone(),
                });
            }
        }
        if self.image(n.uuid)?.is_some() {
            return Err(CatalogError::AlreadyExists {
                what: "image",
                key: n.uuid.to_string(),
            });
        }
        let row = ImageRow {
            uuid: n.uuid,
            disk_uuid: n.disk_uuid,
            vm_name: n.vm_name.clone(),
            disk_label: n.disk_label.clone(),
            kind: n.kind,
            parent_uuid: n.parent_uuid,
            change_id: n.change_id.clone(),
            from_change_id: n.from_change_id.clone(),
            disk_size: n.disk_size,
            block_size: n.block_size,
            session_uuid: n.session_uuid,
            pool: n.pool.clone(),
            key_fingerprint: n.key_fingerprint.clone(),
            compression: n.compression,
            started: catalog_time(n.started),
            finished: None,
            status: ImageStatus::Running,
            records: 0,
            plain_bytes: 0,
            stored_bytes: 0,
            content_digest: None,
            digest_list: None,
            note: None,
            copy_of: None,
            synthetic_of: n.synthetic_of,
        };
        self.insert_image(&row, Some(&this_writer()))?;
        Ok(row)
    }

    /// Record a running tape-to-tape copy of `original` (a complete image) as image
    /// `uuid` of `pool`, written in `session` with `key_fingerprint` and `compression`.
    /// It gets everything that makes the point (disk, kind, parent, sizes, time, change
    /// ids) from the original; it counts only once [`Catalog::complete_image`] commits.
    pub fn begin_copy(
        &self,
        original: &ImageRow,
        uuid: Uuid,
        pool: &str,
        session: Uuid,
        key_fingerprint: Option<String>,
        compression: Compression,
    ) -> Result<ImageRow> {
        if original.copy_of.is_some() {
            return Err(invalid(
                original.uuid,
                format!(
                    "is itself a copy (of {}): copy the original",
                    original.identity()
                ),
            ));
        }
        if self.pool(pool)?.is_none() {
            return Err(CatalogError::NotFound {
                what: "pool",
                key: pool.to_string(),
            });
        }
        if self.image(uuid)?.is_some() {
            return Err(CatalogError::AlreadyExists {
                what: "image",
                key: uuid.to_string(),
            });
        }
        let row = ImageRow {
            uuid,
            session_uuid: Some(session),
            pool: Some(pool.to_string()),
            key_fingerprint,
            compression,
            finished: None,
            status: ImageStatus::Running,
            records: 0,
            plain_bytes: 0,
            stored_bytes: 0,
            content_digest: None,
            digest_list: None,
            note: None,
            copy_of: Some(original.uuid),
            ..original.clone()
        };
        self.insert_image(&row, Some(&this_writer()))?;
        Ok(row)
    }

    /// Every copy of `original` (any status), oldest first.
    pub fn copies_of(&self, original: Uuid) -> Result<Vec<ImageRow>> {
        // Cached: `images` asks for the copies of every image it lists.
        self.cached_rows_of(
            &format!("SELECT {IMAGE_COLS} FROM images WHERE copy_of=?1 ORDER BY started, rowid"),
            [original.to_string()],
            image_row,
        )
    }

    /// The images that hold the point of `original`: the original itself, then its
    /// copies, those that are complete first.
    pub fn representations(&self, original: &ImageRow) -> Result<Vec<ImageRow>> {
        let mut v = vec![original.clone()];
        v.extend(self.copies_of(original.uuid)?);
        v.sort_by_key(|r| r.status != ImageStatus::Complete);
        Ok(v)
    }

    /// Whether some complete image (the original or a copy) holds this point.
    pub fn held_by_complete(&self, original: &ImageRow) -> Result<bool> {
        if original.status == ImageStatus::Complete {
            return Ok(true);
        }
        Ok(self
            .copies_of(original.uuid)?
            .iter()
            .any(|c| c.status == ImageStatus::Complete))
    }

    /// The original of a point expired while a complete copy still holds the point:
    /// the row stays (incrementals built on the point name it) as `corrupt` with
    /// `note` (why, and which copy holds the point now), and its segments are
    /// forgotten with the recycled cartridge. What is built on it stays as it is.
    pub fn retire_original(&self, uuid: Uuid, note: &str) -> Result<()> {
        // A savepoint, not a transaction: callers may already be inside one.
        let c = self.conn();
        c.execute_batch("SAVEPOINT retire_original")?;
        let r = (|| -> Result<()> {
            let n = c.execute(
                "UPDATE images SET status='corrupt', note=?2 WHERE uuid=?1",
                params![uuid.to_string(), note],
            )?;
            if n == 0 {
                return Err(CatalogError::NotFound {
                    what: "image",
                    key: uuid.to_string(),
                });
            }
            c.execute(
                "DELETE FROM segments WHERE image_uuid=?1",
                [uuid.to_string()],
            )?;
            Ok(())
        })();
        match &r {
            Ok(()) => c.execute_batch("RELEASE retire_original")?,
            Err(_) => {
                let _ = c.execute_batch("ROLLBACK TO retire_original; RELEASE retire_original");
            }
        }
        r
    }

    /// Mark a running image complete with its trailer totals, digest, segments and
    /// extents, all in one transaction: on any error nothing of it is visible and
    /// the image stays running.
    pub fn complete_image(
        &self,
        uuid: Uuid,
        stats: &ImageStats,
        content_digest: &str,
        segments: &[Segment],
        extents: &[Extent],
    ) -> Result<ImageRow> {
        self.complete_image_from(
            uuid,
            stats,
            content_digest,
            segments,
            extents.iter().map(|e| Ok(*e)),
        )
    }

    /// [`complete_image`](Self::complete_image) with the extents read one at a time
    /// (an image's coverage spooled to a temporary file while it was written): each is
    /// checked and inserted as it comes, within the same transaction, so memory does
    /// not follow their number and nothing is visible unless all of them are good.
    pub fn complete_image_from<I>(
        &self,
        uuid: Uuid,
        stats: &ImageStats,
        content_digest: &str,
        segments: &[Segment],
        extents: I,
    ) -> Result<ImageRow>
    where
        I: IntoIterator<Item = std::io::Result<Extent>>,
    {
        let tx = self.write_tx()?;
        let img = self.running_image(uuid, "complete it")?;
        if content_digest.is_empty() || crate::crypto::from_hex(content_digest).is_none() {
            return Err(invalid(
                uuid,
                format!("content digest {content_digest:?} is not hex"),
            ));
        }
        if segments.is_empty() && stats.records > 0 {
            return Err(invalid(
                uuid,
                format!("{} records but no segments", stats.records),
            ));
        }
        for s in segments {
            validate_segment(&img, s)?;
            self.insert_segment(uuid, s)?;
        }
        let mut check = ExtentCheck::new(&img);
        for e in extents {
            let e = e.map_err(|e| {
                invalid(
                    uuid,
                    format!("reading its extents back from their temporary file: {e}"),
                )
            })?;
            check.next(&e)?;
            self.insert_extent(uuid, &e)?;
        }
        check.finish()?;
        // Stored relative to the home; a list outside the home is not recorded.
        let digest_list = match stats.digest_list.as_deref() {
            None => None,
            Some(p) => Some(self.home_relative(Path::new(p)).ok_or_else(|| {
                invalid(
                    uuid,
                    format!(
                        "digest list {p} lies outside the home {}",
                        self.home_dir().display()
                    ),
                )
            })?),
        };
        let finished = catalog_time(stats.finished.unwrap_or_else(Utc::now));
        self.conn().execute(
            "UPDATE images SET status='complete', finished=?2, records=?3, plain_bytes=?4, stored_bytes=?5, \
             content_digest=?6, digest_list=?7, note=NULL WHERE uuid=?1",
            params![
                uuid.to_string(),
                ts(&finished),
                num(stats.records, "records")?,
                num(stats.plain_bytes, "bytes")?,
                num(stats.stored_bytes, "bytes")?,
                content_digest.to_ascii_lowercase(),
                digest_list
            ],
        )?;
        tx.commit()?;
        self.image(uuid)?.ok_or(CatalogError::NotFound {
            what: "image",
            key: uuid.to_string(),
        })
    }

    /// The image `uuid`, which must still be running to `action` (for the error).
    fn running_image(&self, uuid: Uuid, action: &'static str) -> Result<ImageRow> {
        let img = self.image(uuid)?.ok_or(CatalogError::NotFound {
            what: "image",
            key: uuid.to_string(),
        })?;
        if img.status != ImageStatus::Running {
            return Err(CatalogError::WrongStatus {
                image: uuid,
                status: img.status,
                action,
            });
        }
        Ok(img)
    }

    /// A running image failed (write error, cancelled, ...): it is never restorable
    /// nor a base.
    pub fn fail_image(&self, uuid: Uuid, note: &str) -> Result<()> {
        self.running_image(uuid, "fail it")?;
        self.conn().execute(
            "UPDATE images SET status='failed', note=?2, finished=?3 WHERE uuid=?1 AND status='running'",
            params![uuid.to_string(), note, ts(&crate::home::clock::now())],
        )?;
        Ok(())
    }

    /// A complete image that a catalog rebuild found is not (or not provably) on its
    /// cartridge: a snapshot on another cartridge described it complete before its own
    /// drive flushed. Marked `failed` with `note`, as the live catalog records an image
    /// whose drive failed; complete images built on it are marked corrupt (their note
    /// names it). Returns those descendants.
    pub fn fail_not_on_tape(&self, uuid: Uuid, note: &str) -> Result<Vec<Uuid>> {
        self.conn().execute(
            "UPDATE images SET status='failed', note=?2 WHERE uuid=?1 AND status='complete'",
            params![uuid.to_string(), note],
        )?;
        let mut out = Vec::new();
        for d in self.dependents(uuid)? {
            if d.status == ImageStatus::Complete {
                let n = format!("its base image {uuid} is not on tape ({note})");
                out.push(d.uuid);
                out.extend(self.mark_corrupt(d.uuid, &n)?);
            }
        }
        Ok(out)
    }

    /// A restore, a verify or a media scan found damage: the image is no longer
    /// restorable, and neither is any image built on it. Marks the image and every
    /// complete descendant `corrupt` in one transaction (each descendant's note names
    /// the damaged base), so `images`, restores and the next backup's base selection
    /// all see it. Allowed from any status. Returns the descendants marked.
    pub fn mark_corrupt(&self, uuid: Uuid, note: &str) -> Result<Vec<Uuid>> {
        // A savepoint, not a transaction: callers may already be inside one.
        self.conn().execute_batch("SAVEPOINT mark_corrupt")?;
        let r = self.mark_corrupt_inner(uuid, note);
        match &r {
            Ok(_) => self.conn().execute_batch("RELEASE mark_corrupt")?,
            Err(_) => {
                let _ = self
                    .conn()
                    .execute_batch("ROLLBACK TO mark_corrupt; RELEASE mark_corrupt");
            }
        }
        r
    }

    fn mark_corrupt_inner(&self, uuid: Uuid, note: &str) -> Result<Vec<Uuid>> {
        let tx = self.conn();
        let n = tx.execute(
            "UPDATE images SET status='corrupt', note=?2 WHERE uuid=?1",
            params![uuid.to_string(), note],
        )?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                what: "image",
                key: uuid.to_string(),
            });
        }
        // A point that another complete image (original or copy) still holds is not
        // lost: what is built on it stays restorable.
        let row = self.image(uuid)?.ok_or(CatalogError::NotFound {
            what: "image",
            key: uuid.to_string(),
        })?;
        let identity = self.image(row.identity())?;
        if let Some(orig) = identity {
            if self.held_by_complete(&orig)? {
                return Ok(Vec::new());
            }
        }
        let deps: Vec<Uuid> = self
            .dependents(row.identity())?
            .into_iter()
            .filter(|d| d.status == ImageStatus::Complete)
            .map(|d| d.uuid)
            .collect();
        let dep_note = format!("its base image {} is corrupt ({note})", row.identity());
        for d in &deps {
            tx.execute(
                "UPDATE images SET status='corrupt', note=?2 WHERE uuid=?1 AND status='complete'",
                params![d.to_string(), dep_note],
            )?;
        }
        Ok(deps)
    }

    /// Why `img` cannot be restored, or `None` when its whole chain is intact.
    pub fn unrestorable_reason(&self, img: &ImageRow) -> Result<Option<String>> {
        match self.chain_of(img.clone()) {
            Ok(_) => Ok(None),
            Err(CatalogError::BrokenChain { broken, reason, .. }) if broken == img.uuid => {
                Ok(Some(reason))
            }
            Err(CatalogError::BrokenChain { broken, reason, .. }) => Ok(Some(format!(
                "its chain is broken at image {broken}: {reason}"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The newest restorable point at or before `at` (`Latest` or `Time`; `Image`
    /// resolves exactly that image), with every newer image at or before `at` that was
    /// passed over because it cannot be restored, newest first, each with the reason.
    /// Images still being written are passed over silently. When no image qualifies:
    /// `NoImage` if there is none at all at or before `at`, else `BrokenChain` naming
    /// the newest and why nothing can be restored.
    pub fn restore_point(&self, disk: Uuid, at: At) -> Result<(Vec<ImageRow>, Vec<Skipped>)> {
        let before = match at {
            At::Image(_) => return Ok((self.restore_chain(disk, at)?, Vec::new())),
            At::Time(t) => Some(ts(&t)),
            At::Latest => None,
        };
        let mut st = self.conn().prepare(&format!(
            "SELECT {IMAGE_COLS} FROM images WHERE disk_uuid=?1 AND status!='running' AND copy_of IS NULL \
             AND (?2 IS NULL OR started <= ?2) ORDER BY {NEWEST_FIRST}"
        ))?;
        let candidates: Vec<ImageRow> = st
            .query_map(params![disk.to_string(), before], image_row)?
            .collect::<rusqlite::Result<_>>()?;
        let mut skipped: Vec<Skipped> = Vec::new();
        for c in candidates {
            match self.chain_of(c.clone()) {
                Ok(chain) => return Ok((chain, skipped)),
                Err(CatalogError::BrokenChain { broken, reason, .. }) => {
                    let reason = if broken == c.uuid {
                        reason
                    } else {
                        format!("its chain is broken at image {broken}: {reason}")
                    };
                    skipped.push(Skipped {
                        image: c.uuid,
                        kind: c.kind,
                        started: c.started,
                        status: c.status,
                        reason,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let when = match at {
            At::Time(t) => format!("at or before {}", crate::timefmt::show(&t)),
            _ => "yet".into(),
        };
        match skipped.first() {
            None => Err(CatalogError::NoImage { disk, at: when }),
            Some(newest) => Err(CatalogError::BrokenChain {
                target: newest.image,
                broken: newest.image,
                reason: format!(
                    "no image of disk {disk} {when} can be restored ({} image(s) considered; the newest, {} of {}, {})",
                    skipped.len(),
                    newest.image,
                    crate::timefmt::show(&newest.started),
                    newest.reason
                ),
            }),
        }
    }

    /// Images of `disk` newer than `base` (or all, when there is no base) that a
    /// backup passed over as its base because they cannot be restored, newest first.
    /// Copies and images still being written are left out: they are never a base.
    pub fn unrestorable_newer(&self, disk: Uuid, base: Option<&ImageRow>) -> Result<Vec<Skipped>> {
        let after = base.map(|b| ts(&b.started));
        let mut st = self.conn().prepare(&format!(
            "SELECT {IMAGE_COLS} FROM images WHERE disk_uuid=?1 AND status!='running' \
             AND kind!='copy' AND copy_of IS NULL AND (?2 IS NULL OR started >= ?2) ORDER BY {NEWEST_FIRST}"
        ))?;
        let rows: Vec<ImageRow> = st
            .query_map(params![disk.to_string(), after], image_row)?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::new();
        for r in rows {
            if base.is_some_and(|b| b.uuid == r.uuid) {
                // Same start time as the base but recorded before it: not newer.
                break;
            }
            if let Some(reason) = self.unrestorable_reason(&r)? {
                out.push(Skipped {
                    image: r.uuid,
                    kind: r.kind,
                    started: r.started,
                    status: r.status,
                    reason,
                });
            }
        }
        Ok(out)
    }

    /// Crash recovery at startup: every running image and session whose writing
    /// process no longer exists becomes failed. Returns the images failed.
    pub fn fail_running_images(&self) -> Result<Vec<Uuid>> {
        let tx = self.write_tx()?;
        let running: Vec<(String, Option<String>)> = {
            let mut st = self
                .conn()
                .prepare("SELECT uuid, writer FROM images WHERE status='running'")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let now = ts(&crate::home::clock::now());
        let mut failed = Vec::new();
        for (uuid, writer) in running {
            if writer.as_deref().is_some_and(writer_alive) {
                continue;
            }
            let pid = writer
                .as_deref()
                .and_then(|w| w.split(':').next())
                .unwrap_or("?");
            self.conn().execute(
                "UPDATE images SET status='failed', finished=?3, note=?2 WHERE uuid=?1",
                params![
                    uuid,
                    format!("interrupted: the writing process (pid {pid}) ended before the image trailer was written"),
                    now
                ],
            )?;
            failed.push(
                uuid.parse()
                    .map_err(|e| invalid(Uuid::nil(), format!("bad uuid {uuid}: {e}")))?,
            );
        }
        let sessions: Vec<(String, Option<String>)> = {
            let mut st = self
                .conn()
                .prepare("SELECT uuid, writer FROM sessions WHERE status='running'")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (uuid, writer) in sessions {
            if !writer.as_deref().is_some_and(writer_alive) {
                self.conn().execute(
                    "UPDATE sessions SET status='failed', finished=?2 WHERE uuid=?1",
                    params![uuid, now],
                )?;
            }
        }
        tx.commit()?;
        Ok(failed)
    }

    pub fn image(&self, uuid: Uuid) -> Result<Option<ImageRow>> {
        // Cached: dumps and chain walks ask for one image at a time, 100 k times.
        Ok(self
            .conn()
            .prepare_cached(&format!("SELECT {IMAGE_COLS} FROM images WHERE uuid=?1"))?
            .query_row([uuid.to_string()], image_row)
            .optional()?)
    }

    /// Every disk the catalog has images of, by UUID: the disk, the newest VM name it
    /// was backed up from (if any) and how many images it has. What a usage error lists
    /// when a disk is not known.
    pub fn known_disks(&self) -> Result<Vec<(Uuid, Option<String>, u64)>> {
        let mut st = self.conn().prepare(
            "SELECT disk_uuid, \
               (SELECT vm_name FROM images j WHERE j.disk_uuid=i.disk_uuid AND vm_name IS NOT NULL \
                ORDER BY started DESC LIMIT 1), COUNT(*) \
             FROM images i GROUP BY disk_uuid ORDER BY disk_uuid",
        )?;
        let rows = st
            .query_map([], |r| Ok((get_p(r, 0)?, r.get(1)?, get_u64(r, 2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// One consistent read of the catalog until the guard is dropped: a listing made of
    /// many queries sees one state (no backup committing halfway through it), and the
    /// queries share one lock of the database file instead of taking one each.
    pub fn read_view(&self) -> Result<ReadView<'_>> {
        Ok(ReadView {
            _tx: self.conn().unchecked_transaction()?,
        })
    }

    /// Every disk with an image, in the order of its oldest image (the order in which
    /// [`Catalog::images`] of all disks first meets each).
    pub fn disks_by_first_image(&self) -> Result<Vec<Uuid>> {
        let mut st = self.conn().prepare(
            "SELECT disk_uuid FROM images ORDER BY started, (synthetic_of IS NOT NULL), rowid",
        )?;
        let mut seen = HashSet::new();
        let mut disks = Vec::new();
        for d in st.query_map([], |r| get_p::<Uuid>(r, 0))? {
            let d = d?;
            if seen.insert(d) {
                disks.push(d);
            }
        }
        Ok(disks)
    }

    /// All images, or those of one disk, oldest first.
    pub fn images(&self, disk: Option<Uuid>) -> Result<Vec<ImageRow>> {
        // Two statements, so that each gets its index: `images_disk` for one disk,
        // `images_order` (no sort) for all.
        let rows = match disk {
            Some(d) => self
                .conn()
                .prepare_cached(&format!(
                    "SELECT {IMAGE_COLS} FROM images WHERE disk_uuid=?1 ORDER BY started, (synthetic_of IS NOT NULL), rowid"
                ))?
                .query_map([d.to_string()], image_row)?
                .collect::<rusqlite::Result<_>>()?,
            None => self
                .conn()
                .prepare(&format!(
                    "SELECT {IMAGE_COLS} FROM images ORDER BY started, (synthetic_of IS NOT NULL), rowid"
                ))?
                .query_map([], image_row)?
                .collect::<rusqlite::Result<_>>()?,
        };
        Ok(rows)
    }

    /// The cartridges holding each image of a disk, each image's in the order of its
    /// segments on tape (part, then sequence), a cartridge named once: what
    /// [`Catalog::segments`] gives per image, in one query for the disk.
    pub fn barcodes_of_disk(&self, disk: Uuid) -> Result<HashMap<Uuid, Vec<String>>> {
        let mut st = self.conn().prepare_cached(
            "SELECT s.image_uuid, s.barcode FROM segments s JOIN images i ON i.uuid = s.image_uuid \
             WHERE i.disk_uuid=?1 ORDER BY s.image_uuid, s.part, s.first_seq",
        )?;
        let mut out: HashMap<Uuid, Vec<String>> = HashMap::new();
        for r in st.query_map([disk.to_string()], |r| {
            Ok((get_p::<Uuid>(r, 0)?, r.get::<_, String>(1)?))
        })? {
            let (image, barcode) = r?;
            let v = out.entry(image).or_default();
            if !v.contains(&barcode) {
                v.push(barcode);
            }
        }
        Ok(out)
    }

    /// An image's segments in tape order (part, then sequence).
    pub fn segments(&self, image: Uuid) -> Result<Vec<Segment>> {
        self.cached_rows_of(
            &format!(
                "SELECT {SEG_COLS} FROM segments WHERE image_uuid=?1 ORDER BY part, first_seq"
            ),
            [image.to_string()],
            seg_row,
        )
    }

    /// The segments of an image whose disk range intersects `[start, end)`, in tape
    /// order: what a partial restore must read.
    pub fn segments_covering(&self, image: Uuid, start: u64, end: u64) -> Result<Vec<Segment>> {
        let sql = format!(
            "SELECT {SEG_COLS} FROM segments WHERE image_uuid=?1 AND disk_start < ?3 AND disk_end > ?2 \
             ORDER BY part, first_seq"
        );
        let (start, end) = (num(start, "offset")?, num(end, "offset")?);
        self.rows_of(&sql, params![image.to_string(), start, end], seg_row)
    }

    /// The disk ranges an image covers, by offset.
    pub fn extents(&self, image: Uuid) -> Result<Vec<Extent>> {
        let mut st = self.conn().prepare_cached(
            "SELECT offset, length, is_zero FROM image_extents WHERE image_uuid=?1 ORDER BY offset",
        )?;
        let rows = st
            .query_map([image.to_string()], |r| {
                Ok(Extent {
                    offset: get_u64(r, 0)?,
                    length: get_u64(r, 1)?,
                    is_zero: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The highest tape file of any image's segments on this cartridge, whatever the
    /// image's status (`None`: no segment there).
    pub fn last_tape_file_on(&self, barcode: &str) -> Result<Option<u64>> {
        Ok(self.conn().query_row(
            "SELECT MAX(tape_file) FROM segments WHERE barcode=?1",
            [barcode],
            |r| get_u64o(r, 0),
        )?)
    }

    /// Whether a complete image has a segment on this cartridge.
    pub fn has_complete_image_on(&self, barcode: &str) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM segments s JOIN images i ON i.uuid = s.image_uuid \
             WHERE s.barcode=?1 AND i.status='complete')",
            [barcode],
            |r| r.get(0),
        )?)
    }

    /// How many images, whatever their status, have segments on this cartridge (from
    /// the segments' barcode index alone: no image row is read).
    pub fn count_images_on(&self, barcode: &str) -> Result<u64> {
        Ok(self.conn().query_row(
            "SELECT COUNT(DISTINCT image_uuid) FROM segments WHERE barcode=?1",
            [barcode],
            |r| get_u64(r, 0),
        )?)
    }

    /// Complete images with segments on this cartridge: each image with the highest
    /// tape file of its segments there, in tape order (one query, for a rebuild's
    /// check of what the snapshots claim).
    pub fn complete_images_last_file_on(&self, barcode: &str) -> Result<Vec<(Uuid, u64)>> {
        self.rows_of(
            "SELECT s.image_uuid, MAX(s.tape_file) FROM segments s JOIN images i ON i.uuid = s.image_uuid \
             WHERE s.barcode=?1 AND i.status='complete' GROUP BY s.image_uuid ORDER BY 2",
            [barcode],
            |r| {
                let u: String = r.get(0)?;
                let u = Uuid::parse_str(&u).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
                })?;
                Ok((u, get_u64(r, 1)?))
            },
        )
    }

    /// Images with at least one segment on this cartridge.
    pub fn images_on_media(&self, barcode: &str) -> Result<Vec<ImageRow>> {
        let sql = format!(
            "SELECT {IMAGE_COLS} FROM images WHERE uuid IN (SELECT image_uuid FROM segments WHERE barcode=?1) \
             ORDER BY started, rowid"
        );
        self.rows_of(&sql, [barcode], image_row)
    }

    /// Complete or running images that need `image` to restore (its descendants
    /// through parent links), oldest first. Expiring `image` would break them.
    pub fn dependents(&self, image: Uuid) -> Result<Vec<ImageRow>> {
        self.rows_of(
            &format!(
                "WITH RECURSIVE d(uuid) AS (SELECT uuid FROM images WHERE parent_uuid=?1 \
               UNION SELECT i.uuid FROM images i JOIN d ON i.parent_uuid=d.uuid) \
             SELECT {IMAGE_COLS} FROM images WHERE uuid IN d AND status IN ('complete','running') \
             ORDER BY started, rowid"
            ),
            [image.to_string()],
            image_row,
        )
    }

    /// Forget an image (its tape was overwritten or it expired). Refused while complete
    /// or running images depend on it.
    pub fn delete_image(&self, uuid: Uuid) -> Result<()> {
        let deps = self.dependents(uuid)?;
        if let Some(d) = deps.first() {
            return Err(CatalogError::Invalid {
                what: format!("image {uuid}"),
                reason: format!("{} kept image(s) depend on it, e.g. {}", deps.len(), d.uuid),
            });
        }
        if self
            .conn()
            .execute("DELETE FROM images WHERE uuid=?1", [uuid.to_string()])?
            == 0
        {
            return Err(CatalogError::NotFound {
                what: "image",
                key: uuid.to_string(),
            });
        }
        Ok(())
    }

    /// The base for the next incremental of a disk: the newest complete full or
    /// incremental image whose own restore chain is intact. Copies, failed, running,
    /// incomplete and corrupt images never qualify.
    pub fn newest_good_image(&self, disk: Uuid) -> Result<Option<ImageRow>> {
        let mut st = self.conn().prepare(&format!(
            "SELECT {IMAGE_COLS} FROM images WHERE disk_uuid=?1 AND status='complete' AND kind!='copy' \
             AND copy_of IS NULL ORDER BY {NEWEST_FIRST}"
        ))?;
        let candidates: Vec<ImageRow> = st
            .query_map([disk.to_string()], image_row)?
            .collect::<rusqlite::Result<_>>()?;
        for c in candidates {
            if self.chain_of(c.clone()).is_ok() {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// The images to restore, full first, target last. The target is the newest
    /// complete image (`Latest`), the newest complete image started at or before a
    /// time (`Time`), or one image (`Image`). Any missing, non-complete or otherwise
    /// unusable link is an error naming it.
    pub fn restore_chain(&self, disk: Uuid, at: At) -> Result<Vec<ImageRow>> {
        let target = match at {
            At::Image(u) => {
                let img = self.image(u)?.ok_or(CatalogError::NotFound {
                    what: "image",
                    key: u.to_string(),
                })?;
                if img.disk_uuid != disk {
                    return Err(CatalogError::Invalid {
                        what: format!("image {u}"),
                        reason: format!("is of disk {}, not {disk}", img.disk_uuid),
                    });
                }
                // A copy names its original's point.
                match img.copy_of {
                    Some(o) => self.image(o)?.ok_or_else(|| CatalogError::BrokenChain {
                        target: u,
                        broken: o,
                        reason: format!(
                            "it is missing from the catalog (the original of copy {u})"
                        ),
                    })?,
                    None => img,
                }
            }
            At::Latest | At::Time(_) => {
                let before = match at {
                    At::Time(t) => Some(ts(&t)),
                    _ => None,
                };
                self.conn()
                    .query_row(
                        &format!(
                            "SELECT {IMAGE_COLS} FROM images WHERE disk_uuid=?1 AND status='complete' \
                             AND copy_of IS NULL AND (?2 IS NULL OR started <= ?2) ORDER BY {NEWEST_FIRST} LIMIT 1"
                        ),
                        params![disk.to_string(), before],
                        image_row,
                    )
                    .optional()?
                    .ok_or_else(|| CatalogError::NoImage {
                        disk,
                        at: match at {
                            At::Time(t) => format!("at or before {}", crate::timefmt::show(&t)),
                            _ => "yet".into(),
                        },
                    })?
            }
        };
        self.chain_of(target)
    }

    /// [`Catalog::unrestorable_reason`] of many images at once, sharing the walk up
    /// each chain: every image's verdict comes from its own checks and its parent's
    /// verdict, so listing N images of chains D deep costs N lookups, not N x D. The
    /// images' parents are looked up in `images` first, then in the catalog.
    pub fn unrestorable_reasons(
        &self,
        images: &[ImageRow],
    ) -> Result<HashMap<Uuid, Option<String>>> {
        // Verdict per image: Ok(chain length) or Err((broken image, reason)).
        type Verdict = std::result::Result<usize, (Uuid, String)>;
        let by_id: HashMap<Uuid, &ImageRow> = images.iter().map(|i| (i.uuid, i)).collect();
        let mut fetched: HashMap<Uuid, Option<ImageRow>> = HashMap::new();
        let mut memo: HashMap<Uuid, Verdict> = HashMap::new();
        let status_reason = |i: &ImageRow| match &i.note {
            Some(n) => format!("it is {} ({n})", i.status),
            None => format!("it is {}", i.status),
        };
        for target in images {
            // Walk up until a known verdict or a link that decides it, then unwind.
            let mut stack: Vec<ImageRow> = Vec::new();
            let mut on_stack: HashSet<Uuid> = HashSet::new();
            let mut cur = target.clone();
            let mut verdict: Verdict = loop {
                if let Some(v) = memo.get(&cur.uuid) {
                    break v.clone();
                }
                if cur.status != ImageStatus::Complete {
                    break Err((cur.uuid, status_reason(&cur)));
                }
                match (cur.kind, cur.parent_uuid) {
                    (ImageKind::Full | ImageKind::Copy, None) => break Ok(1),
                    (ImageKind::Full | ImageKind::Copy, Some(_)) => {
                        break Err((
                            cur.uuid,
                            format!("a {} image must not have a parent", cur.kind),
                        ))
                    }
                    (ImageKind::Incremental, None) => {
                        break Err((cur.uuid, "an incremental without a parent".into()))
                    }
                    (ImageKind::Incremental, Some(p)) => {
                        let parent = match by_id.get(&p) {
                            Some(i) => Some((*i).clone()),
                            None => match fetched.entry(p) {
                                std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                                std::collections::hash_map::Entry::Vacant(e) => {
                                    e.insert(self.image(p)?).clone()
                                }
                            },
                        };
                        let Some(parent) = parent else {
                            break Err((
                                p,
                                format!("it is missing from the catalog (parent of {})", cur.uuid),
                            ));
                        };
                        if parent.status != ImageStatus::Complete {
                            break Err((p, status_reason(&parent)));
                        }
                        if parent.kind == ImageKind::Copy {
                            break Err((p, "it is a copy, which is never a base".into()));
                        }
                        if parent.disk_uuid != cur.disk_uuid {
                            break Err((p, format!("it belongs to disk {}", parent.disk_uuid)));
                        }
                        if parent.uuid == cur.uuid || on_stack.contains(&p) {
                            break Err((p, "parent links form a loop".into()));
                        }
                        on_stack.insert(cur.uuid);
                        stack.push(cur);
                        cur = parent;
                    }
                }
            };
            memo.entry(cur.uuid).or_insert_with(|| verdict.clone());
            while let Some(child) = stack.pop() {
                verdict = match verdict {
                    Ok(n) if n >= MAX_CHAIN_LEN => {
                        Err((cur.uuid, "parent links form a loop".into()))
                    }
                    Ok(n) => Ok(n + 1),
                    Err(e) => Err(e),
                };
                memo.insert(child.uuid, verdict.clone());
                cur = child;
            }
        }
        Ok(images
            .iter()
            .map(|i| {
                let why = match &memo[&i.uuid] {
                    Ok(_) => None,
                    Err((b, reason)) if *b == i.uuid => Some(reason.clone()),
                    Err((b, reason)) => Some(format!("its chain is broken at image {b}: {reason}")),
                };
                (i.uuid, why)
            })
            .collect())
    }

    /// [`Catalog::newest_good_image`] of every disk in `images` at once. `images` must
    /// be every image of those disks in [`Catalog::images`]' order (oldest first), as
    /// that returns them: the newest candidate of a disk is then the last one, and
    /// each chain is walked once for all the candidates that share it (with 1 k disks
    /// of 100 images, one query per disk and per chain link was 200 k queries).
    /// Parents not in `images` are looked up in the catalog. Same verdicts as
    /// [`Catalog::restore_chain`]'s walk: a parent must exist, be complete or held by a
    /// complete copy, not be a copy, be of the same disk, and the chain must end at a
    /// full within [`MAX_CHAIN_LEN`] links without a loop.
    pub fn newest_good_images(&self, images: &[ImageRow]) -> Result<HashMap<Uuid, Uuid>> {
        let by_id: HashMap<Uuid, &ImageRow> = images.iter().map(|i| (i.uuid, i)).collect();
        let mut fetched: HashMap<Uuid, Option<ImageRow>> = HashMap::new();
        // Per image treated as a link: Some(length of its chain down to the full), None:
        // no good chain from it.
        let mut memo: HashMap<Uuid, Option<usize>> = HashMap::new();
        let mut out: HashMap<Uuid, Uuid> = HashMap::new();
        for target in images.iter().rev() {
            if out.contains_key(&target.disk_uuid)
                || target.status != ImageStatus::Complete
                || target.kind == ImageKind::Copy
                || target.copy_of.is_some()
            {
                continue;
            }
            // Walk up to a known verdict or a link that decides it, then unwind.
            let mut stack: Vec<Uuid> = Vec::new();
            let mut on_stack: HashSet<Uuid> = HashSet::new();
            let mut cur: std::borrow::Cow<'_, ImageRow> = std::borrow::Cow::Borrowed(target);
            let mut verdict: Option<usize> = loop {
                if let Some(v) = memo.get(&cur.uuid) {
                    break *v;
                }
                match (cur.kind, cur.parent_uuid) {
                    (ImageKind::Full | ImageKind::Copy, None) => break Some(1),
                    (ImageKind::Full | ImageKind::Copy, Some(_)) => break None,
                    (ImageKind::Incremental, None) => break None,
                    (ImageKind::Incremental, Some(p)) => {
                        let parent = match by_id.get(&p) {
                            Some(i) => Some(std::borrow::Cow::Borrowed(*i)),
                            None => match fetched.entry(p) {
                                std::collections::hash_map::Entry::Occupied(e) => {
                                    e.get().clone().map(std::borrow::Cow::Owned)
                                }
                                std::collections::hash_map::Entry::Vacant(e) => e
                                    .insert(self.image(p)?)
                                    .clone()
                                    .map(std::borrow::Cow::Owned),
                            },
                        };
                        let Some(parent) = parent else { break None };
                        if parent.kind == ImageKind::Copy
                            || parent.disk_uuid != cur.disk_uuid
                            || parent.uuid == cur.uuid
                            || on_stack.contains(&p)
                            || !self.held_by_complete(&parent)?
                        {
                            // A bad link fails the child only: the parent, taken as a
                            // target of its own, may be good (a complete copy's original).
                            break None;
                        }
                        on_stack.insert(cur.uuid);
                        stack.push(cur.uuid);
                        cur = parent;
                    }
                }
            };
            // Links end here: the verdict of `cur` taken as a link of a longer chain.
            memo.entry(cur.uuid).or_insert(verdict);
            while let Some(child) = stack.pop() {
                verdict = verdict.and_then(|n| (n < MAX_CHAIN_LEN).then_some(n + 1));
                memo.insert(child, verdict);
            }
            if verdict.is_some() {
                out.insert(target.disk_uuid, target.uuid);
            }
        }
        Ok(out)
    }

    fn chain_of(&self, target: ImageRow) -> Result<Vec<ImageRow>> {
        let tid = target.uuid;
        let broken = |img: Uuid, reason: String| CatalogError::BrokenChain {
            target: tid,
            broken: img,
            reason,
        };
        let status_reason = |i: &ImageRow| match &i.note {
            Some(n) => format!("it is {} ({n})", i.status),
            None => format!("it is {}", i.status),
        };
        if !self.held_by_complete(&target)? {
            return Err(broken(tid, status_reason(&target)));
        }
        let disk = target.disk_uuid;
        let mut seen = HashSet::from([tid]);
        let mut chain = vec![target];
        loop {
            let cur = chain.last().expect("chain starts non-empty");
            match (cur.kind, cur.parent_uuid) {
                (ImageKind::Full | ImageKind::Copy, None) => break,
                (ImageKind::Full | ImageKind::Copy, Some(_)) => {
                    return Err(broken(
                        cur.uuid,
                        format!("a {} image must not have a parent", cur.kind),
                    ))
                }
                (ImageKind::Incremental, None) => {
                    return Err(broken(cur.uuid, "an incremental without a parent".into()))
                }
                (ImageKind::Incremental, Some(p)) => {
                    let child = cur.uuid;
                    let parent = self.image(p)?.ok_or_else(|| {
                        broken(
                            p,
                            format!("it is missing from the catalog (parent of {child})"),
                        )
                    })?;
                    if !self.held_by_complete(&parent)? {
                        return Err(broken(p, status_reason(&parent)));
                    }
                    if parent.kind == ImageKind::Copy {
                        return Err(broken(p, "it is a copy, which is never a base".into()));
                    }
                    if parent.disk_uuid != disk {
                        return Err(broken(
                            p,
                            format!("it belongs to disk {}", parent.disk_uuid),
                        ));
                    }
                    if !seen.insert(p) || chain.len() >= MAX_CHAIN_LEN {
                        return Err(broken(p, "parent links form a loop".into()));
                    }
                    chain.push(parent);
                }
            }
        }
        chain.reverse();
        Ok(chain)
    }
}

/// See [`Catalog::read_view`]; the read ends when it is dropped.
pub struct ReadView<'a> {
    _tx: rusqlite::Transaction<'a>,
}
