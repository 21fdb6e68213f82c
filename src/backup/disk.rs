//! One disk, start to end: plan, hash scan, the image row, writing, and the commit
//! (or the failure) in the catalog.

use std::time::Instant;

use uuid::Uuid;

use crate::catalog::{ImageKind, ImageStats, MediaState, NewImage};
use crate::error::{Context, Error, Result};
use crate::extent_spool::{ExtentList, SortedExtents};
use crate::source::hashscan::{scan_changes, ScanError};
use crate::source::DEFAULT_BLOCK_SIZE;
use tape_devices::drive::DriveError;

use super::*;
use crate::events::NoteKind;

/// An image written (trailer and filemark on tape) whose commit waits for the drive's
/// flush: until then the catalog keeps it 'running'.
pub(super) struct Pending {
    image: Uuid,
    disk: Uuid,
    stats: ImageStats,
    digest_hex: String,
    segments: Vec<crate::catalog::Segment>,
    /// Read back from its temporary file at the commit.
    coverage: crate::extent_spool::ItemList<crate::catalog::Extent>,
    /// Its block digest list in the home.
    list: std::path::PathBuf,
    /// The cartridge its last part is on.
    cartridge: String,
    /// A driver's export, held until the image is committed or failed.
    opened: Option<crate::source::export::OpenedExport>,
}

/// Write `pending` to `cat` as complete, as [`Job::commit_pending`] will: for a
/// [`crate::catalog::Catalog::rehearse`] (a session on several drives rehearses the
/// images of every drive at once, [`super::drives`]).
pub(super) fn rehearse_commit_list(
    cat: &crate::catalog::Catalog,
    pending: &[Pending],
) -> Result<()> {
    for p in pending {
        cat.complete_image_from(
            p.image,
            &p.stats,
            &p.digest_hex,
            &p.segments,
            p.coverage.reader(),
        )?;
    }
    Ok(())
}

impl Job<'_> {
    /// Mark a written and flushed image complete; only then may its driver retire the
    /// previous change-tracking epoch.
    fn commit(&mut self, p: Pending) -> Result<()> {
        let Pending {
            image,
            disk,
            stats,
            digest_hex,
            segments,
            coverage,
            mut opened,
            ..
        } = p;
        self.tape.cat.complete_image_from(
            image,
            &stats,
            &digest_hex,
            &segments,
            coverage.reader(),
        )?;
        if let Some(o) = opened.as_mut() {
            if let Err(e) = o.guard.committed() {
                self.tape.events.note(
                    NoteKind::Decision,
                    format!(
                        "disk {disk}: image {image} is committed, but retiring the previous change-tracking epoch failed: {e}"
                    ),
                );
            }
        }
        Ok(())
    }

    /// The session's commit point: flush the drive once, then mark every image written
    /// since complete, in the order written. An image whose cartridge could not be
    /// flushed is failed (it never counts), and so are the rest when a commit fails.
    /// Returns the committed images; the first error after committing what could be.
    pub(super) fn commit_pending(&mut self) -> Result<Vec<Uuid>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let flush = self.tape.flush_current();
        let pending = std::mem::take(&mut self.pending);
        let flushed = std::mem::take(&mut self.tape.flushed);
        let r = self.commit_list(pending, &flushed, flush.err());
        self.tape.flushed = flushed;
        r
    }

    /// Commit `pending` (images written in this order) whose cartridges are among
    /// `flushed`; from `first_err` on (a flush that failed) or the first image whose
    /// cartridge was not flushed or whose commit failed, the rest are failed. Images
    /// written by another drive of the session are committed here too, with that
    /// drive's flushed cartridges ([`super::session`]).
    pub(super) fn commit_list(
        &mut self,
        pending: Vec<Pending>,
        flushed: &std::collections::HashSet<String>,
        mut first_err: Option<Error>,
    ) -> Result<Vec<Uuid>> {
        let mut done = Vec::new();
        for p in pending {
            if first_err.is_none() && !flushed.contains(&p.cartridge) {
                first_err = Some(Error::Failed(format!(
                    "cartridge {} was not flushed after image {} was written",
                    p.cartridge, p.image
                )));
            }
            let image = p.image;
            let r = match &first_err {
                None => self.commit_or_fail(p),
                Some(e) => {
                    self.fail_pending(p, &format!("not committed: {e}"));
                    continue;
                }
            };
            match r {
                Ok(()) => done.push(image),
                Err(e) => first_err = Some(e),
            }
        }
        match first_err {
            None => Ok(done),
            Some(e) => Err(e),
        }
    }

    fn commit_or_fail(&mut self, p: Pending) -> Result<()> {
        let (image, list) = (p.image, p.list.clone());
        let r = self.commit(p);
        if let Err(e) = &r {
            let _ = self.tape.cat.fail_image(image, &e.to_string());
            let _ = std::fs::remove_file(&list);
        }
        r
    }

    fn fail_pending(&mut self, p: Pending, why: &str) {
        let _ = self.tape.cat.fail_image(p.image, why);
        let _ = std::fs::remove_file(&p.list);
    }

    pub(super) fn backup_disk(
        &mut self,
        checked: CheckedDisk,
        req: &BackupRequest,
    ) -> Result<DiskReport> {
        let started = Instant::now();
        let CheckedDisk {
            spec: d,
            source,
            changed,
            synthetic,
        } = checked;
        let d = &d;
        // A driver's disk: its export is opened now, and held (with whatever serves it)
        // by the guard until the image is committed or failed.
        let mut opened = None;
        let disk = match source {
            Source::Local(disk) => disk,
            Source::Driver(driver) => {
                let o = driver
                    .lock()
                    .open()
                    .map_err(|e| Error::Failed(format!("disk {}: {e}", d.id)))?;
                let (disk, _) = crate::source::nbd::open_disk(&o.export)
                    .map_err(|e| Error::Failed(format!("disk {}: {e}", d.id)))?;
                opened = Some(o);
                disk
            }
        };
        let size = disk.size();
        let (mut plan, base_note) = match &synthetic {
            // A synthetic full: a full of the restored point, never an incremental.
            Some(s) => (
                Plan::Full {
                    kind: ImageKind::Full,
                    reason: Some(format!(
                        "synthetic full of image {} (the restore point of {}), built from its chain on tape",
                        s.point.uuid,
                        crate::timefmt::show(&s.point.started)
                    )),
                },
                None,
            ),
            None => {
                let tracked = opened.as_ref().and_then(|o| {
                    // Untracked exports are read like raw files (hash scan incrementals).
                    (o.change_id.is_some() || o.dirty.is_some()).then_some(Tracked {
                        export: &o.export,
                        dirty: o.dirty.as_ref(),
                        full_reason: o.full_reason.as_deref(),
                    })
                });
                (
                    self.decide(d, size, changed.as_ref(), tracked, req.mode)?,
                    self.base_note(d, req.mode)?,
                )
            }
        };
        if let Some(n) = &base_note {
            self.tape
                .events
                .note(NoteKind::Decision, format!("disk {}: {n}", d.id));
        }
        let image_uuid = Uuid::new_v4();
        std::fs::create_dir_all(self.home.digests_dir())?;
        let new_list = digest_list_path(self.home, image_uuid);
        let bs = DEFAULT_BLOCK_SIZE;

        // Hash scan first (reads the disk once, writes the new digest list); an unusable
        // previous list means a full, said out loud.
        // The changes found are kept as a spooled list: beyond a bounded number in
        // memory they go to a temporary file, so memory does not follow their number.
        let mut scanned: Option<ExtentList> = None;
        let mut scan_read = 0u64;
        if let Plan::HashScan { base_list, .. } = &plan {
            let mut set = SortedExtents::new();
            let mut spool_error: Option<std::io::Error> = None;
            match scan_changes(&disk, bs, Some(base_list), &new_list, |e| {
                if spool_error.is_none() {
                    if let Err(err) = set.insert(e.offset, e.len) {
                        spool_error = Some(err);
                    }
                }
            }) {
                Ok(summary) => {
                    scan_read = summary.read_bytes;
                    let spooled = match spool_error {
                        Some(e) => Err(e),
                        None => set.finish(),
                    };
                    scanned = Some(spooled.map_err(|e| {
                        Error::Failed(format!(
                            "hash scan of disk {}: keeping the changed blocks in a temporary file failed: {e}; check the space in TMPDIR",
                            d.id
                        ))
                    })?)
                }
                Err(ScanError::PreviousList(e)) => {
                    let r =
                        format!("the previous block digest list is unusable ({e}): taking a full");
                    self.tape
                        .events
                        .note(NoteKind::Decision, format!("disk {}: {r}", d.id));
                    plan = Plan::Full {
                        kind: ImageKind::Full,
                        reason: Some(r),
                    };
                }
                Err(e) => {
                    return Err(Error::Failed(format!(
                        "hash scan of disk {} ({}): {e}",
                        d.id,
                        d.path.display()
                    )))
                }
            }
        }
        let (kind, parent, method, reason) = match &plan {
            Plan::Full { kind, reason } if synthetic.is_some() => {
                (*kind, None, "synthetic", reason.clone())
            }
            Plan::Full { kind, reason } => (*kind, None, "full", reason.clone()),
            Plan::ChangedExtents { base, .. } => (
                ImageKind::Incremental,
                Some(base.uuid),
                "changed-extents",
                None,
            ),
            Plan::HashScan { base, reason, .. } => (
                ImageKind::Incremental,
                Some(base.uuid),
                "hash-scan",
                reason.clone(),
            ),
            Plan::DirtyBitmap { base, .. } => (
                ImageKind::Incremental,
                Some(base.uuid),
                "dirty-bitmap",
                None,
            ),
        };
        let base_change = match &plan {
            Plan::ChangedExtents { base, .. }
            | Plan::HashScan { base, .. }
            | Plan::DirtyBitmap { base, .. } => base.change_id.clone(),
            Plan::Full { .. } => None,
        };
        // A change id is recorded only from a changed-extents file that was accepted:
        // for a full (the whole disk read at the file's point) or for an incremental
        // made from its areas. A hash scan records none (a fallback means the file did
        // not continue the base's epoch), so no later file is trusted on its word until
        // a full starts a new epoch.
        //
        // A driver's epoch starts at this backup's point in time whether the image is a
        // full or an incremental: its change id is recorded with either.
        //
        // A synthetic full holds exactly its point's bytes, so it carries the point's
        // change id: the change-tracking epoch goes on from it.
        let change_id = match (&plan, &opened) {
            _ if synthetic.is_some() => synthetic.as_ref().and_then(|s| s.point.change_id.clone()),
            (Plan::Full { .. } | Plan::DirtyBitmap { .. }, Some(o)) => o.change_id.clone(),
            (Plan::Full { .. } | Plan::ChangedExtents { .. }, None) => {
                changed.as_ref().map(|c| c.change_id.clone())
            }
            (Plan::HashScan { .. }, _) | (Plan::ChangedExtents { .. }, Some(_)) => None,
            (Plan::DirtyBitmap { .. }, None) => None,
        };
        let synthetic_of = synthetic.as_ref().map(|s| s.point.uuid);
        // A synthetic full's point in time is its point's.
        let point_time = synthetic
            .as_ref()
            .map_or_else(crate::home::clock::now, |s| s.point.started);
        self.reproduce = synthetic.map(|s| Reproduce {
            point: s.point.uuid,
            list: s.point_list,
        });
        self.image_time = point_time;
        let cat = self.tape.cat;
        let pool = self.tape.pool.clone();
        cat.begin_image(&NewImage {
            uuid: image_uuid,
            disk_uuid: d.id,
            vm_name: req.vm_name.clone(),
            disk_label: d.label.clone(),
            kind,
            parent_uuid: parent,
            change_id: change_id.clone(),
            from_change_id: if kind == ImageKind::Incremental {
                base_change.clone()
            } else {
                None
            },
            disk_size: size,
            block_size: bs as u32,
            session_uuid: Some(self.session),
            pool: Some(pool.name.clone()),
            // The key tapevault seals the records with (none when the drive encrypts).
            key_fingerprint: self.sealer.as_ref().and(pool.key_fingerprint.clone()),
            compression: pool.compression,
            started: point_time,
            synthetic_of,
        })?;
        let result = self.write_image(
            &disk,
            d.id,
            &plan,
            scanned.as_ref(),
            &new_list,
            image_uuid,
            kind,
            parent,
            change_id,
            base_change,
            req,
        );
        self.reproduce = None;
        // Read whole: the connections close and the driver may stop serving the export
        // (the epoch it replaced is retired only once the image is committed).
        drop(disk);
        if let (Ok(_), Some(o)) = (&result, opened.as_mut()) {
            o.guard.read_done();
        }
        match result {
            Ok(mut p) => {
                let coverage = p.take_coverage().with_context(|| {
                    format!(
                        "reading back the coverage of image {image_uuid} from its temporary file"
                    )
                })?;
                let digest_hex = crate::crypto::to_hex(&p.digest);
                let stats = ImageStats {
                    records: p.records,
                    plain_bytes: p.data_bytes,
                    stored_bytes: p.stored_bytes,
                    finished: Some(crate::home::clock::now()),
                    digest_list: Some(new_list.to_string_lossy().into_owned()),
                };
                let last = p.cartridges.last().cloned().unwrap_or_default();
                let report = DiskReport {
                    disk: d.id,
                    disk_label: d.label.clone(),
                    path: d.path.clone(),
                    image: image_uuid,
                    kind,
                    method,
                    parent,
                    reason,
                    base_note,
                    synthetic_of,
                    disk_size: size,
                    data_bytes: p.data_bytes,
                    zero_bytes: p.zero_bytes,
                    read_bytes: scan_read + p.read_bytes,
                    stored_bytes: p.stored_bytes,
                    records: p.records,
                    cartridges: p.cartridges,
                    seconds: started.elapsed().as_secs_f64(),
                    stages: p.stages,
                    digest: digest_hex.clone(),
                };
                let pending = Pending {
                    image: image_uuid,
                    disk: d.id,
                    stats,
                    digest_hex,
                    segments: p.segments,
                    coverage,
                    list: new_list,
                    cartridge: last,
                    opened,
                };
                if self.defer_commit {
                    // On tape but not flushed: complete only after the session's flush.
                    self.tape.flushed.remove(&pending.cartridge);
                    self.pending.push(pending);
                } else {
                    self.commit(pending)?;
                }
                Ok(report)
            }
            Err(e) => {
                let _ = cat.fail_image(image_uuid, &e.to_string());
                let _ = std::fs::remove_file(&new_list);
                if let Some(c) = &self.tape.current {
                    match root_drive_error(&e) {
                        // A write error means the cartridge cannot be trusted for more.
                        Some(DriveError::MediaError { .. }) | Some(DriveError::Io { .. }) => {
                            let _ = cat.add_media_errors(&c.barcode, 1);
                            let _ = cat.set_media_state(&c.barcode, MediaState::Damaged);
                        }
                        Some(DriveError::EndOfMedium) => {
                            let _ = cat.set_media_state(&c.barcode, MediaState::Full);
                        }
                        _ => {}
                    }
                }
                Err(e).with_context(|| {
                    format!(
                        "backing up disk {} ({}) as image {image_uuid}",
                        d.id,
                        d.path.display()
                    )
                })
            }
        }
    }
}
