//! One backup session: the pool and its key, the pool lock, the media set, every disk
//! in turn, and the session end (catalog snapshot and end-of-session marker on tape).

use tape_formats::{BlockSink, EndOfSession};

use crate::catalog::{self, Catalog, SessionStatus, SnapshotLocation};
use crate::error::{Context, Error, Result};
use crate::home::Home;
use tape_devices::changer::TapeLibrary;

use super::*;
use crate::events::{Event, Events, Finished, NoteKind};

/// Run a backup session of the checked `inputs` into their pool. What the job has to
/// say while it runs (decisions and their reasons, cartridges, progress, each image
/// written) goes to `events`. With `wait_for_media` (a person is at a terminal) a
/// missing cartridge is waited for (up to the home's `media_wait_secs`), else it is
/// exit 4 at once.
pub fn run(
    home: &Home,
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    inputs: Inputs,
    key: Option<KeyMaterial>,
    wait_for_media: bool,
    events: &dyn Events,
) -> Result<BackupReport> {
    let Inputs { req, disks } = inputs;
    let req = &req;
    let pool = cat.pool(&req.pool)?.ok_or_else(|| {
        Error::Usage(format!(
            "no pool named {}: create it with `tapevault pool create {}`",
            req.pool, req.pool
        ))
    })?;
    let crypto = super::target::pool_sealer(home, &pool, key, "back up")?;
    let drives = super::drives::drives_for(req.drives, disks.len(), lib.drive_count());
    if drives < req.drives {
        events.note(
            NoteKind::Decision,
            format!(
                "--drives {}: writing on {drives} drive(s) (the session has {} disk(s), the library {} drive(s))",
                req.drives,
                disks.len(),
                lib.drive_count()
            ),
        );
    }
    // Each further drive gets the pool's encryption with a nonce source of its own.
    let others = (1..drives)
        .map(|_| crypto.for_another_drive(home))
        .collect::<Result<Vec<_>>>()?;
    // On several drives, one progress task for the session (a terminal shows one bar).
    let progress = super::drives::SessionProgress::new(events, disks.len(), drives);
    let events: &dyn Events = if drives > 1 { &progress } else { events };
    recover_interrupted(home, cat, events)?;
    // The spool, decided (and its directory checked) before anything is written.
    let spool = open_spool(home, req, events)?;
    let (_pool_lock, set, mut job) = super::target::begin_pool_session(
        home,
        cat,
        lib,
        &pool,
        crypto,
        wait_for_media,
        &format!("backup to pool {}", pool.name),
        events,
    )?;
    let session = job.session;
    // One commit point per session: the images, the catalog snapshot and the
    // end-of-session marker are flushed once, together, and only then are the images
    // complete in the catalog (an image counts only once flushed); the snapshot on
    // tape, written before that flush, describes them as complete (it follows them on
    // the tape, so it is there only if they are). One flush and no write after it: the
    // drive does not stop and reposition in the middle of the session's end. The spool
    // feeds the drive in bursts.
    job.defer_commit = true;
    job.spool = spool;
    let mut reports: Vec<DiskReport> = Vec::new();
    let result = (|| -> Result<Option<SnapshotLocation>> {
        job.prepare_drivers(&disks, req)?;
        if !others.is_empty() {
            let (r, loc) = super::drives::run_parallel(
                home,
                &mut job,
                disks,
                req,
                others,
                wait_for_media,
                events,
            )?;
            reports = r;
            return Ok(Some(loc));
        }
        for d in disks {
            let r = job.backup_disk(d, req)?;
            reports.push(r);
        }
        job.tape.touch()?;
        let loc = job.write_session_end()?;
        let done = job.commit_pending()?;
        for r in reports.iter().filter(|r| done.contains(&r.image)) {
            events.emit(Event::Finished(Finished::Image(r)));
        }
        cat.finish_session(session, SessionStatus::Complete)?;
        Ok(Some(loc))
    })();
    // After a failure, the images written before it still count once flushed.
    if result.is_err() {
        let done = job.commit_pending().unwrap_or_default();
        for r in reports.iter().filter(|r| done.contains(&r.image)) {
            events.emit(Event::Finished(Finished::Image(r)));
        }
    }
    let unmount = job.tape.release();
    match result {
        Ok(snapshot) => {
            unmount?;
            Ok(BackupReport {
                session,
                vm: req.vm_name.clone(),
                pool: pool.name,
                media_set: set.uuid,
                images: reports,
                snapshot,
            })
        }
        Err(e) => {
            let _ = cat.finish_session(session, SessionStatus::Failed);
            Err(e)
        }
    }
}

/// The spool of a session: `--spool` in `--spool-dir`, else the home's `spool_dir`,
/// else `spool/` in the home (created when missing), paced for the pool's
/// `drive_speeds` (pools.toml). When the spool directory has no room for an automatic
/// spool, the session spools in memory and says so.
pub(super) fn open_spool(
    home: &Home,
    req: &BackupRequest,
    events: &dyn Events,
) -> Result<crate::spool::Spool> {
    let (dir, default_dir) = match (&req.spool_dir, &home.config.spool_dir) {
        (Some(d), _) => (d.clone(), false),
        // Relative to the home, as the home's other paths.
        (None, Some(d)) => (home.dir.join(d), false),
        (None, None) => (home.dir.join("spool"), true),
    };
    let pools = crate::home::pools_toml::load(&home.dir)?;
    let speeds =
        crate::home::pools_toml::drive_speeds_of(&pools, &req.pool).map_err(Error::Usage)?;
    let (mut spool, warning) = crate::spool::Spool::open(req.spool, &dir, default_dir)
        .map_err(|e| Error::Usage(e.what))?;
    if let crate::spool::Spool::File(f) = &mut spool {
        f.speeds = speeds;
    }
    if let Some(w) = warning {
        events.note(crate::events::NoteKind::Warning, w);
    }
    Ok(spool)
}

/// Records a memory spool holds for `bytes` of spool: a record's block holds up to the
/// format's record size, its plain data (the read buffer it carries, recycled to the
/// reader) as much again, and when the pool compresses, a zstd buffer of up to that
/// size too; the spool is counted in records, so its buffers never hold more than
/// `bytes`.
pub(super) fn spool_records(bytes: u64, compression: catalog::Compression) -> usize {
    let per_record = tape_formats::DEFAULT_RECORD_DATA_SIZE as u64
        * if compression == catalog::Compression::Off {
            2
        } else {
            3
        };
    (bytes / per_record) as usize
}

impl Job<'_> {
    /// Phase 1 of every driver's disk (see [`crate::source::export`]), before any disk
    /// is opened: the base each would build on, and whether an epoch starts.
    fn prepare_drivers(&self, disks: &[CheckedDisk], req: &BackupRequest) -> Result<()> {
        for d in disks {
            let Source::Driver(driver) = &d.source else {
                continue;
            };
            let newest = match req.mode {
                Mode::Auto | Mode::Full => self.tape.cat.newest_good_image(d.spec.id)?,
                Mode::Copy => None,
            };
            let base = match req.mode {
                Mode::Auto => newest.clone().filter(
                    |b| matches!(self.tape.cat.digest_list_file(b), Some(p) if p.is_file()),
                ),
                Mode::Full | Mode::Copy => None,
            };
            let er = crate::source::export::EpochRequest {
                base_change_id: base.as_ref().and_then(|b| b.change_id.clone()),
                base_disk_size: base.as_ref().map(|b| b.disk_size),
                newest_change_id: newest.and_then(|b| b.change_id),
                start_epoch: req.mode != Mode::Copy,
            };
            driver
                .lock()
                .prepare(&er)
                .map_err(|e| Error::Failed(format!("disk {}: {e}", d.spec.id)))?;
        }
        Ok(())
    }

    /// Write the catalog snapshot of the media set and the end-of-session marker, each
    /// as a tape file of its own, so the media carry their own catalog, and flush: the
    /// session's commit point. The snapshot is the catalog as it will be once the
    /// images written since the last commit are complete and the session with them
    /// ([`crate::catalog::Catalog::rehearse`]); the caller commits them after this.
    pub(super) fn write_session_end(&mut self) -> Result<SnapshotLocation> {
        self.tape.ensure_mounted()?;
        let barcode = self.tape.current().barcode.clone();
        let mut ends = rehearse_session_end(
            self.tape.cat,
            self.session,
            self.tape.set.uuid,
            &[&self.pending],
            &[barcode],
        )?;
        let end = ends.pop().expect("one session end per cartridge asked");
        self.write_rehearsed_end(end)
    }

    /// Write a session end rehearsed by [`rehearse_session_end`] for the cartridge
    /// this job holds (the snapshot, the end-of-session marker with the job's
    /// `image_parts`) and flush: the drive's commit point.
    pub(super) fn write_rehearsed_end(&mut self, end: SessionEnd) -> Result<SnapshotLocation> {
        let cat = self.tape.cat;
        let set = self.tape.set.clone();
        let (mut sink, barcode, file) = self.tape.take_sink()?;
        let SessionEnd {
            barcode: meant,
            mut spool,
            plain_len,
            delta,
        } = end;
        if meant != barcode {
            let _ = self.tape.put_sink(sink);
            return Err(Error::Failed(format!(
                "the session's catalog snapshot was made for cartridge {meant}, but the drive holds {barcode}"
            )));
        }
        let start_block = sink.block;
        let now = crate::home::clock::now();
        let ctx = || format!("writing the catalog snapshot to {barcode}");
        crate::media::snapshot::write_snapshot_file_from(
            &mut sink,
            &mut spool.reader()?,
            plain_len,
            self.session,
            *set.uuid.as_bytes(),
            now.timestamp(),
            self.sealer.as_mut(),
        )
        .with_context(ctx)?;
        self.tape.put_sink(sink)?;
        // End-of-session marker in a tape file of its own.
        let (mut sink, _, _) = self.tape.take_sink()?;
        let seq = cat.media(&barcode)?.and_then(|m| m.seq_in_set).unwrap_or(0);
        let mut buf = Vec::new();
        EndOfSession {
            session_uuid: *self.session.as_bytes(),
            media_set_uuid: *set.uuid.as_bytes(),
            time: now.timestamp(),
            image_parts: self.image_parts,
            set_sequence: seq,
        }
        .encode(&mut buf)
        .map_err(|e| Error::Failed(format!("encoding the end-of-session marker: {e}")))?;
        sink.write_block(&buf).with_context(ctx)?;
        sink.write_filemark().with_context(ctx)?;
        sink.drive
            .flush()
            .context("flushing at the end of the session")?;
        self.tape.put_sink(sink)?;
        self.tape.flushed.insert(barcode.clone());
        let loc = SnapshotLocation {
            barcode,
            tape_file: file,
            block: start_block,
            session_uuid: Some(self.session),
            time: catalog::catalog_time(now),
        };
        cat.record_snapshot_written(&loc, delta, plain_len)?;
        Ok(loc)
    }
}

/// A session's end made ready for one cartridge: the catalog snapshot it carries
/// (spooled), its length and whether it is a delta.
pub(super) struct SessionEnd {
    barcode: String,
    spool: crate::media::snapshot::Spool,
    plain_len: u64,
    delta: bool,
}

/// The session ends of `barcodes`, in that order: for each, the catalog snapshot of
/// the media set as it will be once every image of `pending` (each drive's list) is
/// complete and the session with them, made inside one
/// [`crate::catalog::Catalog::rehearse`] (rolled back: nothing is committed).
pub(super) fn rehearse_session_end(
    cat: &Catalog,
    session: Uuid,
    set: Uuid,
    pending: &[&[super::disk::Pending]],
    barcodes: &[String],
) -> Result<Vec<SessionEnd>> {
    cat.rehearse(|cat| {
        for p in pending {
            super::disk::rehearse_commit_list(cat, p)?;
        }
        cat.finish_session(session, SessionStatus::Complete)?;
        barcodes
            .iter()
            .map(|bc| {
                let (spool, plain_len, delta) = session_snapshot(cat, set, bc)?;
                Ok(SessionEnd {
                    barcode: bc.clone(),
                    spool,
                    plain_len,
                    delta,
                })
            })
            .collect()
    })
}

/// The catalog snapshot a session ending on cartridge `barcode` writes, and whether it
/// is a delta. A delta over the cartridge's newest snapshots (a full one and the
/// deltas after it) while they stay smaller together than the full one; else a full
/// snapshot of the media set. So each session writes what it changed, and a full
/// snapshot only after at least its own size was written in deltas: the total over N
/// sessions grows linearly, and a rebuild reads at most about twice a full snapshot
/// (docs/FORMAT.md 4.5).
/// The document is spooled to an unnamed temporary file in the home (see
/// [`crate::media::snapshot::Spool`]), never held in memory; returns it, its length
/// and whether it is a delta.
fn session_snapshot(
    cat: &catalog::Catalog,
    set: Uuid,
    barcode: &str,
) -> Result<(crate::media::snapshot::Spool, u64, bool)> {
    let mut spool = crate::media::snapshot::Spool::new(cat.home_dir())?;
    if let Some(base) = cat.snapshot_base(set, barcode)? {
        let len = spool.fill(|w| Ok(cat.write_snapshot_delta(set, &base, w)?))?;
        if base.deltas_len + len <= base.full_len {
            return Ok((spool, len, true));
        }
    }
    let len = spool.fill(|w| Ok(cat.write_snapshot(catalog::SnapshotScope::MediaSet(set), w)?))?;
    Ok((spool, len, false))
}
