//! Several drives at once for one backup session (`backup --drives N`).
//!
//! The session's disks wait in one queue, largest first (a driver's disk by the size
//! its driver knows once prepared; one it does not know comes last). Each drive, on a thread of its own with
//! its own catalog connection and library handle, mounts a cartridge of the session's
//! media set that no other drive of the session holds ([`SharedDrives`]), then takes
//! the next disk from the queue until it is empty, writing each image as a one-drive
//! session does (spanning at early warning onto another cartridge of the set).
//!
//! The commit point stays the session's, and each drive flushes once, after its
//! session end, as one drive does: after its last image a drive hands its written
//! images back (nothing flushed) and waits; once every drive has, one catalog
//! rehearsal makes each drive's catalog snapshot (every drive's images and the
//! session complete, as the catalog will be after the commit), each drive writes its
//! snapshot and the end-of-session marker (whose `image_parts` counts the parts of all
//! drives) after its images and flushes, and only then are the images committed, each
//! with its own drive's flush (an image whose cartridge was not flushed is failed,
//! never complete). So no drive stops and repositions between its images and its
//! snapshot. A failure on one drive stops the others taking new disks and no session
//! end is written: every drive only flushes, what was flushed still commits, as after
//! a failure on one drive, and the session fails. Each cartridge written in the
//! session so carries its own catalog.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::catalog::{Catalog, MediaSetRow, PoolRow, SessionStatus, SnapshotLocation};
use crate::error::{Error, Result};
use crate::events::{Event, Events, Finished, NoteKind};
use crate::home::Home;

use super::session::SessionEnd;
use super::tape::SharedDrives;
use super::target::PoolCrypto;
use super::*;

/// What a drive hands back after its last disk, nothing flushed yet: its tape is
/// still streaming (or just ran dry), so that its session end can follow the images
/// without a stop in between.
struct Written {
    /// The drive of the session (0: the session's own).
    drive: usize,
    reports: Vec<(usize, DiskReport)>,
    pending: Vec<disk::Pending>,
    err: Option<Error>,
    image_parts: u32,
    /// The cartridge the drive holds for the session end (None: it holds none, or
    /// could not mount the next one of the set).
    barcode: Option<String>,
}

/// What the session tells each drive once every drive has written its last image:
/// write the session end made for its cartridge (the snapshot, and the marker with
/// the session's image part count) and flush, or only flush.
enum Go {
    End {
        image_parts: u32,
        end: Box<SessionEnd>,
    },
    Flush,
}

/// What a drive hands back after its flush: the cartridges it flushed (its images on
/// them may be committed) and why it could not, if it could not.
struct Flushed {
    drive: usize,
    flushed: HashSet<String>,
    flush_err: Option<Error>,
}

type Queue = Mutex<VecDeque<(usize, CheckedDisk)>>;

/// The progress of a session on several drives, as one task: a terminal shows one
/// bar, and the images of several drives write at once. Each image's task adds its
/// bytes to the session's (the bar starts again with the new total and what is done
/// so far); the session's task ends when no image is being written. Everything else
/// passes through.
pub(super) struct SessionProgress<'e> {
    inner: &'e dyn Events,
    label: String,
    /// (total bytes of the images started, bytes done, images being written)
    state: Mutex<(u64, u64, usize)>,
}

impl<'e> SessionProgress<'e> {
    pub(super) fn new(inner: &'e dyn Events, disks: usize, drives: usize) -> Self {
        SessionProgress {
            inner,
            label: format!("{disks} disks, {drives} drives"),
            state: Mutex::new((0, 0, 0)),
        }
    }
}

impl Events for SessionProgress<'_> {
    fn emit(&self, event: Event<'_>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::TaskStarted { total, .. } => {
                st.0 += total;
                st.2 += 1;
                self.inner.emit(Event::TaskStarted {
                    label: self.label.clone(),
                    total: st.0,
                });
                if st.1 > 0 {
                    self.inner.emit(Event::TaskProgress(st.1));
                }
            }
            Event::TaskProgress(n) => {
                st.1 += n;
                self.inner.emit(Event::TaskProgress(n));
            }
            Event::TaskLabel(_) => {}
            Event::TaskEnded => {
                st.2 = st.2.saturating_sub(1);
                if st.2 == 0 {
                    self.inner.emit(Event::TaskEnded);
                }
            }
            other => {
                drop(st);
                self.inner.emit(other);
            }
        }
    }
}

/// Drives a session of `disks` disks may use: what was asked, at most one per disk and
/// the library's drive count.
pub(super) fn drives_for(asked: usize, disks: usize, library: usize) -> usize {
    asked.min(disks).min(library).max(1)
}

/// Run the disks of a session on `crypto.len() + 1` drives: `job` (its cartridge
/// mounted on this thread) and one more thread per entry of `crypto`. Returns the
/// reports of the images written, in the order of `disks`, and the snapshot on the
/// cartridge of `job`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_parallel(
    home: &Home,
    job: &mut Job<'_>,
    disks: Vec<CheckedDisk>,
    req: &BackupRequest,
    crypto: Vec<PoolCrypto>,
    wait_for_media: bool,
    events: &dyn Events,
) -> Result<(Vec<DiskReport>, SnapshotLocation)> {
    let shared = Arc::new(SharedDrives::default());
    job.tape.shared = Some(shared.clone());
    // Largest first: the long disks start at once, the short ones fill in.
    let mut order: Vec<(usize, CheckedDisk)> = disks.into_iter().enumerate().collect();
    order.sort_by_key(|(i, d)| (std::cmp::Reverse(size_hint(d)), *i));
    let queue: Queue = Mutex::new(order.into_iter().collect());
    let stop = AtomicBool::new(false);
    let pool = job.tape.pool.clone();
    let set = job.tape.set.clone();
    let session = job.session;
    // This drive first: its errors are the session's, as with one drive.
    job.tape.ensure_mounted()?;
    let (done_tx, done_rx) = mpsc::channel::<Written>();
    let (flushed_tx, flushed_rx) = mpsc::channel::<Flushed>();
    // Each other drive drops its end once it has a cartridge mounted (or gave up): the
    // first disks are spread over all drives, whatever their mount times.
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let mut go = Vec::new();
        let mut handles = Vec::new();
        for (n, c) in crypto.into_iter().enumerate() {
            let (go_tx, go_rx) = mpsc::channel::<Go>();
            go.push(go_tx);
            let ch = Channels {
                ready: ready_tx.clone(),
                done: done_tx.clone(),
                go: go_rx,
                flushed: flushed_tx.clone(),
            };
            let (pool, set, shared, queue, stop) = (&pool, &set, shared.clone(), &queue, &stop);
            handles.push(s.spawn(move || {
                other_drive(
                    home,
                    n + 1,
                    Setup {
                        pool,
                        set,
                        session,
                        crypto: c,
                        wait_for_media,
                        shared,
                        req,
                    },
                    queue,
                    stop,
                    events,
                    ch,
                )
            }));
        }
        drop(done_tx);
        drop(ready_tx);
        drop(flushed_tx);
        while ready_rx.recv().is_ok() {}
        let r = this_drive(
            job,
            &queue,
            &stop,
            req,
            Replies {
                done: done_rx,
                go,
                flushed: flushed_rx,
            },
            events,
        );
        let mut result = r;
        for h in handles {
            let joined = h.join().unwrap_or_else(|_| {
                Err(Error::Failed(
                    "a drive's thread of the session stopped unexpectedly".into(),
                ))
            });
            if let (Ok(_), Err(e)) = (&result, joined) {
                result = Err(e);
            }
        }
        result
    })
}

/// The largest first: a local disk's size; a driver's disk (opened when its turn
/// comes) by the size its driver knows once prepared (a qcow2 image's virtual size, a
/// VM disk's size), else 0.
fn size_hint(d: &CheckedDisk) -> u64 {
    match &d.source {
        Source::Local(disk) => disk.size(),
        Source::Driver(driver) => driver.lock().size_hint().unwrap_or(0),
    }
}

/// Take disks from the queue until it is empty or a drive failed; the first error.
fn take_disks(
    job: &mut Job<'_>,
    queue: &Queue,
    stop: &AtomicBool,
    req: &BackupRequest,
) -> (Vec<(usize, DiskReport)>, Option<Error>) {
    let mut reports = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Some((i, d)) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
            break;
        };
        // A cartridge filled by the last image was put away: the next one first.
        if let Err(e) = job.tape.ensure_mounted() {
            queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_front((i, d));
            stop.store(true, Ordering::SeqCst);
            return (reports, Some(e));
        }
        if let Some(c) = &job.tape.current {
            job.tape.events.note(
                NoteKind::Media,
                format!(
                    "drive {} (cartridge {}) writes disk {} ({})",
                    c.drive_index,
                    c.barcode,
                    d.spec.id,
                    d.spec.path.display()
                ),
            );
        }
        match job.backup_disk(d, req) {
            Ok(r) => reports.push((i, r)),
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                return (reports, Some(e));
            }
        }
    }
    (reports, None)
}

/// What drive `drive` of `job` wrote, nothing flushed or committed yet. When all went
/// well the drive holds a cartridge for the session end (after an image that filled
/// one, the next one of the set is mounted now).
fn written(
    drive: usize,
    job: &mut Job<'_>,
    reports: Vec<(usize, DiskReport)>,
    mut err: Option<Error>,
) -> Written {
    if err.is_none() {
        if let Err(e) = job.tape.ensure_mounted() {
            err = Some(e);
        }
    }
    Written {
        drive,
        reports,
        pending: std::mem::take(&mut job.pending),
        err,
        image_parts: job.image_parts,
        barcode: job.tape.current.as_ref().map(|c| c.barcode.clone()),
    }
}

/// Do what the session says: the session end made for this drive's cartridge (the
/// drive's one flush comes with it), or only the flush. Hands back the cartridges
/// flushed, and the snapshot written if any.
fn finish_drive(drive: usize, job: &mut Job<'_>, go: Go) -> (Flushed, Option<SnapshotLocation>) {
    let (loc, flush_err) = match go {
        Go::End { image_parts, end } => {
            job.image_parts = image_parts;
            match job.write_rehearsed_end(*end) {
                Ok(loc) => (Some(loc), None),
                Err(e) => (None, Some(e)),
            }
        }
        Go::Flush => (None, job.tape.flush_current().err()),
    };
    let flushed = Flushed {
        drive,
        flushed: std::mem::take(&mut job.tape.flushed),
        flush_err,
    };
    (flushed, loc)
}

/// The session's ends of its channels to the other drives.
struct Replies {
    done: mpsc::Receiver<Written>,
    go: Vec<mpsc::Sender<Go>>,
    flushed: mpsc::Receiver<Flushed>,
}

/// The session's own drive: its disks, then the session's end on every drive and the
/// commit point of every drive's images. Returns the reports in the order of the
/// request and the snapshot on this drive's cartridge.
///
/// No drive flushes before the session end is written: once every drive has written
/// its last image, one catalog rehearsal makes each drive's snapshot (the session
/// complete, every drive's images complete, as the catalog will be after the
/// commit), each drive writes its own after its images and flushes once, and only
/// then are the images committed, each against its own drive's flush. A drive whose
/// tape is still streaming so never stops between its images and its session end.
/// When a drive failed (or did not hand back what it wrote), no session end is
/// written: every drive only flushes, and what was flushed commits.
fn this_drive(
    job: &mut Job<'_>,
    queue: &Queue,
    stop: &AtomicBool,
    req: &BackupRequest,
    replies: Replies,
    events: &dyn Events,
) -> Result<(Vec<DiskReport>, SnapshotLocation)> {
    let Replies { done, go, flushed } = replies;
    let (reports, err) = take_disks(job, queue, stop, req);
    let mut all = vec![written(0, job, reports, err)];
    // A drive whose thread ended without a word dropped its sender: stop waiting.
    for _ in 0..go.len() {
        match done.recv() {
            Ok(w) => all.push(w),
            Err(_) => break,
        }
    }
    let mut first_err: Option<Error> = None;
    let mut reports = Vec::new();
    let mut pending: Vec<(usize, Vec<disk::Pending>)> = Vec::new();
    let mut parts = 0u32;
    let mut holding: Vec<(usize, String)> = Vec::new();
    for w in all.iter_mut() {
        parts += w.image_parts;
        reports.append(&mut w.reports);
        if let Some(e) = w.err.take() {
            first_err.get_or_insert(e);
        }
        pending.push((w.drive, std::mem::take(&mut w.pending)));
        if let Some(bc) = &w.barcode {
            holding.push((w.drive, bc.clone()));
        }
    }
    if all.len() < go.len() + 1 && first_err.is_none() {
        first_err = Some(Error::Failed(
            "a drive of the session stopped without handing back what it wrote".into(),
        ));
    }
    if !queue.lock().unwrap_or_else(|p| p.into_inner()).is_empty() && first_err.is_none() {
        first_err = Some(Error::Failed(
            "the session's drives stopped before every disk was written".into(),
        ));
    }
    // The session ends, all made in one rehearsal (the session's own drive's first).
    let mut ends: Vec<(usize, SessionEnd)> = Vec::new();
    if first_err.is_none() {
        let lists: Vec<&[disk::Pending]> = pending.iter().map(|(_, p)| p.as_slice()).collect();
        let barcodes: Vec<String> = holding.iter().map(|(_, b)| b.clone()).collect();
        match super::session::rehearse_session_end(
            job.tape.cat,
            job.session,
            job.tape.set.uuid,
            &lists,
            &barcodes,
        ) {
            Ok(e) => ends = holding.iter().map(|(d, _)| *d).zip(e).collect(),
            Err(e) => first_err = Some(e),
        }
    }
    let image_parts = parts;
    let ends_sent = !ends.is_empty();
    let mut go_for = |drive: usize| -> Go {
        match ends.iter().position(|(d, _)| *d == drive) {
            Some(i) => Go::End {
                image_parts,
                end: Box::new(ends.swap_remove(i).1),
            },
            None => Go::Flush,
        }
    };
    for (n, g) in go.iter().enumerate() {
        let _ = g.send(go_for(n + 1));
    }
    drop(go);
    let own = go_for(0);
    let (own_flushed, loc) = finish_drive(0, job, own);
    let mut flushes = vec![own_flushed];
    while let Ok(f) = flushed.recv() {
        flushes.push(f);
    }
    // The commit point of every drive's images, against its own flush.
    let mut committed = HashSet::new();
    let mut wrote_end = Vec::new();
    let mut failed_drives = 0;
    for (drive, list) in pending {
        let f = flushes.iter_mut().find(|f| f.drive == drive);
        let (fl, ferr) = match f {
            Some(f) => (std::mem::take(&mut f.flushed), f.flush_err.take()),
            None => (
                HashSet::new(),
                Some(Error::Failed(format!(
                    "drive {drive} of the session did not say whether it flushed"
                ))),
            ),
        };
        if ferr.is_some() {
            failed_drives += 1;
        } else if let Some((_, bc)) = holding.iter().find(|(d, _)| *d == drive) {
            wrote_end.push(bc.clone());
        }
        match job.commit_list(list, &fl, ferr) {
            Ok(done) => committed.extend(done),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    reports.sort_by_key(|(i, _)| *i);
    let reports: Vec<DiskReport> = reports.into_iter().map(|(_, r)| r).collect();
    for r in reports.iter().filter(|r| committed.contains(&r.image)) {
        events.emit(Event::Finished(Finished::Image(r)));
    }
    if let Some(e) = first_err {
        if ends_sent && failed_drives > 0 && !wrote_end.is_empty() {
            events.note(
                NoteKind::Warning,
                format!(
                    "the catalog snapshots written on {} describe the session complete, but another drive of it failed its final flush: the catalog fails that drive's images, and a catalog rebuilt from those cartridges would count them complete (a restore or verify of them fails on the missing data)",
                    wrote_end.join(", ")
                ),
            );
        }
        return Err(e);
    }
    job.tape
        .cat
        .finish_session(job.session, SessionStatus::Complete)?;
    job.tape.touch()?;
    let loc = loc.ok_or_else(|| {
        Error::Failed("the session end was not written on the session's own cartridge".into())
    })?;
    Ok((reports, loc))
}

/// What another drive of the session needs to write into it.
struct Setup<'s> {
    pool: &'s PoolRow,
    set: &'s MediaSetRow,
    session: uuid::Uuid,
    crypto: PoolCrypto,
    wait_for_media: bool,
    shared: Arc<SharedDrives>,
    req: &'s BackupRequest,
}

/// Another drive's ends of its channels to the session's thread.
struct Channels {
    ready: mpsc::Sender<()>,
    done: mpsc::Sender<Written>,
    go: mpsc::Receiver<Go>,
    flushed: mpsc::Sender<Flushed>,
}

/// Another drive of the session, on its own thread with its own catalog connection and
/// library handle. One that cannot start (no free drive, no cartridge for it) says so
/// and leaves its share to the others. Hands back what it wrote (always, exactly once),
/// then writes the session end on its cartridge or only flushes, as told, and hands
/// back what it flushed.
fn other_drive(
    home: &Home,
    n: usize,
    setup: Setup<'_>,
    queue: &Queue,
    stop: &AtomicBool,
    events: &dyn Events,
    ch: Channels,
) -> Result<()> {
    let req = setup.req;
    let Channels {
        ready,
        done,
        go,
        flushed,
    } = ch;
    let idle = || Written {
        drive: n,
        reports: Vec::new(),
        pending: Vec::new(),
        err: None,
        image_parts: 0,
        barcode: None,
    };
    let none_flushed = || Flushed {
        drive: n,
        flushed: HashSet::new(),
        flush_err: None,
    };
    // A drive that holds nothing still answers: the session waits for every drive.
    let unused = |done: mpsc::Sender<Written>| {
        let _ = done.send(idle());
        drop(done);
        let _ = go.recv();
        let _ = flushed.send(none_flushed());
    };
    let not_used = |e: &Error| {
        events.note(
            NoteKind::Media,
            format!("a drive for stream {n} of the session could not be started ({e}); the other drives take its disks"),
        );
    };
    if queue.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
        drop(ready);
        unused(done);
        return Ok(());
    }
    let opened = (|| -> Result<(Catalog, Box<dyn tape_devices::changer::TapeLibrary>)> {
        Ok((Catalog::open(&home.dir)?, home.open_library()?))
    })();
    let (cat, mut lib) = match opened {
        Ok(o) => o,
        Err(e) => {
            not_used(&e);
            drop(ready);
            unused(done);
            return Ok(());
        }
    };
    let mut job = Job::new(
        home,
        &cat,
        lib.as_mut(),
        setup.pool,
        setup.set,
        setup.session,
        setup.crypto,
        setup.wait_for_media,
        events,
    );
    job.defer_commit = true;
    // A spool of its own, as the session's first drive has (`--spool`, `--spool-dir`).
    job.spool = match super::session::open_spool(home, req, events) {
        Ok(s) => s,
        Err(e) => {
            not_used(&e);
            drop(ready);
            unused(done);
            return Ok(());
        }
    };
    job.tape.shared = Some(setup.shared);
    let mounted = job.tape.ensure_mounted();
    drop(ready);
    if let Err(e) = mounted {
        not_used(&e);
        unused(done);
        return job.tape.release();
    }
    let (reports, err) = take_disks(&mut job, queue, stop, req);
    let _ = done.send(written(n, &mut job, reports, err));
    drop(done);
    // A dropped sender (the session's thread gone) means only the flush.
    let g = go.recv().unwrap_or(Go::Flush);
    let (f, _) = finish_drive(n, &mut job, g);
    let _ = flushed.send(f);
    drop(flushed);
    job.tape.release()
}

#[cfg(test)]
mod tests {
    use super::{drives_for, SessionProgress};
    use crate::events::{Event, Events, NoteKind};
    use std::sync::Mutex;

    /// Task events as text.
    #[derive(Default)]
    struct Tasks(Mutex<Vec<String>>);

    impl Events for Tasks {
        fn emit(&self, e: Event<'_>) {
            let s = match e {
                Event::TaskStarted { label, total } => format!("start {label} {total}"),
                Event::TaskProgress(n) => format!("+{n}"),
                Event::TaskEnded => "end".into(),
                Event::TaskLabel(l) => format!("label {l}"),
                Event::Note(n) => format!("note {}", n.text),
                _ => "other".into(),
            };
            self.0.lock().unwrap().push(s);
        }
    }

    #[test]
    fn two_drives_show_one_task_for_the_session() {
        let t = Tasks::default();
        let p = SessionProgress::new(&t, 3, 2);
        let e: &dyn Events = &p;
        e.task("disk a", 100);
        e.task("disk b", 50);
        e.progress(30);
        e.emit(Event::TaskLabel("reading".into()));
        e.emit(Event::TaskEnded);
        e.task("disk c", 10);
        e.progress(5);
        e.note(NoteKind::Media, "drive 1 writes disk c");
        e.emit(Event::TaskEnded);
        e.emit(Event::TaskEnded);
        assert_eq!(
            *t.0.lock().unwrap(),
            [
                "start 3 disks, 2 drives 100",
                "start 3 disks, 2 drives 150",
                "+30",
                "start 3 disks, 2 drives 160",
                "+30",
                "+5",
                "note drive 1 writes disk c",
                "end"
            ]
        );
    }

    #[test]
    fn drives_are_capped_by_disks_and_library() {
        assert_eq!(drives_for(1, 4, 2), 1);
        assert_eq!(drives_for(2, 4, 2), 2);
        assert_eq!(drives_for(4, 4, 2), 2, "the library has two drives");
        assert_eq!(drives_for(4, 1, 2), 1, "one disk takes one drive");
        assert_eq!(drives_for(3, 0, 0), 1, "never fewer than one");
    }
}
