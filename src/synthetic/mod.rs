//! Synthetic fulls: a new full image of a disk at its newest restorable point, built
//! from the chain already on tape (newest extent wins), without touching the VM or
//! its disk; written under the pool's current policy (compression, key, fresh nonces)
//! as a normal full in a new session, and the base of the next incremental.
//!
//! One disk, step by step:
//!
//! 1. **The point** ([`point`]): the disk's newest image that is a base (a full or an
//!    incremental with its whole chain intact), its chain, and its block digest list.
//!    No restorable base: refused, with why. No list in this home (a catalog rebuilt
//!    from the media): it is derived from the chain as read ([`derive`]). The
//!    newest point a full already: nothing to do, said so.
//! 2. **Reading the chain**: the restore planner ([`crate::restore::prepare`]) gives
//!    each image only what no later image covers and orders the reads by cartridge and
//!    position, so each needed cartridge is mounted once and read in media order; every
//!    record is checked (CRCs, AES-GCM tag, image, part, sequence) as in a restore. The
//!    bytes land in a scratch file with no name in `$TMPDIR` (sparse: it takes the
//!    disk's allocated bytes), since the images supply their data in media order and a
//!    full is written in disk order. A killed job leaves nothing behind.
//! 3. **Writing the full** ([`crate::backup::run`] with [`Inputs::synthetic`]): a new
//!    session of the target pool writes the scratch file as a full image, with the
//!    image header's `synthetic_of` (format 1.1) naming the point; its time and change
//!    id are the point's, since it holds exactly the point's bytes, so the
//!    change-tracking epoch carries over and the next incremental builds on it.
//! 4. **The check** ([`verify`]): before the trailer may say complete, the block digest
//!    list of what was written must equal the point's, block for block; a difference
//!    aborts the image on tape and fails it in the catalog (exit 3), and it is never a
//!    base.
//!
//! [`policy`] says when a plain `backup` builds one on its own (pools.toml
//! `synthetic_full`). The job prints nothing: it speaks through [`crate::events`] and
//! returns a [`SyntheticReport`].

mod derive;
pub mod point;
pub mod policy;
pub mod stream;
pub mod verify;

use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use crate::backup::{self, BackupReport, Inputs, KeyMaterial, SyntheticSource};
use crate::catalog::{At, Catalog, ImageRow};
use crate::codec::KeyRing;
use crate::error::{Context, Error, Result};
use crate::events::{Events, NoteKind};
use crate::home::Home;
use crate::source::disk::Disk;
use tape_devices::changer::TapeLibrary;

pub use point::Choice;
pub use policy::SyntheticPolicy;

/// What happened to one disk.
#[derive(Debug, Clone, Serialize)]
pub struct SyntheticDisk {
    pub disk: Uuid,
    /// The image whose point the synthetic full reproduces.
    pub point: Option<Uuid>,
    /// Why nothing was built (the newest point is a full already).
    pub skipped: Option<String>,
    /// Why this synthetic full was made when a pool policy asked for it.
    pub due: Option<String>,
    /// The chain read, full first.
    pub chain: Vec<Uuid>,
    /// Cartridges read, in the order they were mounted (media order: each needed one
    /// once, unless an image spanning cartridges sends the reader back).
    pub read_cartridges: Vec<String>,
    /// Data bytes read from the chain and written to the scratch file.
    pub read_bytes: u64,
    /// Seconds spent reading the chain: with one drive, into the scratch file before
    /// the full is written; with two, staging the incrementals (the full is then read
    /// while the synthetic full is written, in the session's time).
    pub read_seconds: f64,
    /// How the chain reached the writer: `scratch` (one drive: the point restored into
    /// a scratch file, then written) or `stream` (two drives: the incrementals staged,
    /// then the full streamed from one drive to the writer on the other, merged in disk
    /// order).
    pub mode: &'static str,
    /// The session that wrote the synthetic full (its image is `images[0]`).
    pub session: Option<BackupReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyntheticReport {
    pub pool: String,
    pub disks: Vec<SyntheticDisk>,
}

/// One disk to build a synthetic full of, with the reason when a policy asked.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub disk: Uuid,
    pub due: Option<String>,
}

/// Build a synthetic full of each disk in `wanted` into `pool`. `keys` holds every key
/// the chains' images need; `write_key` unlocks the pool's key for each session (None
/// for a clear pool). Stops at the first disk that fails.
#[allow(clippy::too_many_arguments)]
pub fn run(
    home: &Home,
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    pool: &str,
    wanted: &[Wanted],
    keys: &KeyRing,
    write_key: &dyn Fn() -> Result<Option<KeyMaterial>>,
    wait_for_media: bool,
    events: &dyn Events,
) -> Result<SyntheticReport> {
    if cat.pool(pool)?.is_none() {
        return Err(Error::Usage(format!(
            "no pool named {pool}: create it with `tapevault pool create {pool}`"
        )));
    }
    let mut out = SyntheticReport {
        pool: pool.to_string(),
        disks: Vec::new(),
    };
    for w in wanted {
        let d = one_disk(
            home,
            cat,
            lib,
            pool,
            w,
            keys,
            write_key,
            wait_for_media,
            events,
        )
        .with_context(|| format!("synthetic full of disk {}", w.disk))?;
        out.disks.push(d);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn one_disk(
    home: &Home,
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    pool: &str,
    w: &Wanted,
    keys: &KeyRing,
    write_key: &dyn Fn() -> Result<Option<KeyMaterial>>,
    wait_for_media: bool,
    events: &dyn Events,
) -> Result<SyntheticDisk> {
    let disk = w.disk;
    let mut rep = SyntheticDisk {
        disk,
        point: None,
        skipped: None,
        due: w.due.clone(),
        chain: Vec::new(),
        read_cartridges: Vec::new(),
        read_bytes: 0,
        read_seconds: 0.0,
        mode: "scratch",
        session: None,
    };
    let (point, chain, point_list) = match point::choose(cat, disk)? {
        Choice::NotNeeded(why) => {
            events.note(
                NoteKind::Skipped,
                format!("disk {disk}: {why}: no synthetic full needed"),
            );
            rep.skipped = Some(why);
            return Ok(rep);
        }
        Choice::Build {
            point,
            chain,
            point_list,
        } => (*point, chain, point_list),
    };
    rep.point = Some(point.uuid);
    rep.chain = chain.iter().map(|i| i.uuid).collect();
    let prepared = crate::restore::prepare(cat, lib, disk, At::Image(point.uuid))?;
    crate::restore::check_pull_list(&prepared.pull_list)?;
    let cartridges: Vec<&str> = prepared
        .pull_list
        .iter()
        .map(|p| p.barcode.as_str())
        .collect();
    events.note(
        NoteKind::Decision,
        format!(
            "disk {disk}: building a synthetic full of image {} ({}){}: reading its chain of {} image(s) from {} in media order, then writing a full to pool {pool}",
            point.uuid,
            crate::timefmt::show(&point.started),
            w.due.as_deref().map(|d| format!(", due by {d}")).unwrap_or_default(),
            chain.len(),
            cartridges.join(", ")
        ),
    );
    if lib.drive_count() >= 2 && stream::applies(&prepared) {
        // The writer must not need the cartridge the full is read from: a cartridge of
        // the target pool holding the full may be the one the session appends to.
        let mut shared = None;
        for seg in &prepared.segments[0] {
            if cat
                .media(&seg.barcode)?
                .is_some_and(|m| m.pool.as_deref() == Some(pool))
            {
                shared = Some(seg.barcode.clone());
                break;
            }
        }
        if let Some(bc) = shared {
            events.note(
                NoteKind::Decision,
                format!(
                    "disk {disk}: the full image {} is on cartridge {bc} of pool {pool}, which this session may write to: reading the chain into a scratch file first, then writing (two-drive streaming needs the full on another pool's cartridges)",
                    prepared.chain[0].uuid
                ),
            );
        } else if let Some(list) = point_list.clone() {
            return two_drives(
                home,
                cat,
                lib,
                pool,
                keys,
                write_key,
                wait_for_media,
                events,
                rep,
                point,
                list,
                &prepared,
            );
        } else {
            events.note(
                NoteKind::Decision,
                format!(
                    "disk {disk}: this home has no block digest list of image {} (a catalog rebuilt from the media): reading the chain into a scratch file to derive it, then writing (two-drive streaming checks against a list it already has)",
                    point.uuid
                ),
            );
        }
    }
    let t0 = std::time::Instant::now();
    let (restored, file) = match crate::restore::run_to_scratch(lib, keys, &prepared, events) {
        Ok(r) => r,
        Err(e) => {
            return Err(read_failed(e, &prepared, &point, "nothing was written"));
        }
    };
    rep.read_seconds = t0.elapsed().as_secs_f64();
    rep.read_bytes = restored.bytes_written;
    rep.read_cartridges = restored.mounts;
    // No list of the point in this home (a catalog rebuilt from the media): derive it
    // from the point just read, every record and each image's content digest checked.
    let derived;
    let point_list = match point_list {
        Some(p) => p,
        None => {
            derived = tempfile::Builder::new()
                .prefix("tapevault-point-list-")
                .tempfile()
                .map_err(|e| Error::Failed(format!("creating a scratch digest list: {e}")))?;
            derive::point_list(
                &file,
                point.disk_size,
                u64::from(point.block_size),
                derived.path(),
            )?;
            let whole = restored
                .images
                .iter()
                .filter(|i| i.read.as_ref().is_some_and(|r| r.digest_checked))
                .count();
            events.note(
                NoteKind::Decision,
                format!(
                    "disk {disk}: image {} has no block digest list in this home (a catalog rebuilt from the media has none): derived it from the chain as read (every record read checked; the content digest of {whole} of the chain's {} image(s), read whole, matched its trailer's); the synthetic full is checked against it",
                    point.uuid,
                    restored.images.len()
                ),
            );
            derived.path().to_path_buf()
        }
    };
    let name = PathBuf::from(format!("<image {} restored from tape>", point.uuid));
    let restored_disk = Disk::from_file(file, name)
        .map_err(|e| Error::Failed(format!("opening the restored disk: {e}")))?;
    let inputs = Inputs::synthetic(
        pool.to_string(),
        restored_disk,
        SyntheticSource { point, point_list },
    );
    let session = backup::run(home, cat, lib, inputs, write_key()?, wait_for_media, events)?;
    rep.session = Some(session);
    Ok(rep)
}

/// A failure reading the chain, with what it means: the source chain is left exactly as
/// it was, whatever failed (a media error may be passing); an image whose records
/// failed their checks is named, and a restore or verify of it marks it damaged if it
/// is.
fn read_failed(
    e: Error,
    prepared: &crate::restore::Prepared,
    point: &ImageRow,
    written: &str,
) -> Error {
    let hint = prepared
        .damaged_image()
        .map(|u| {
            format!(
                "; image {u} of the chain failed its checks: `tapevault verify --image {u}` says whether it is damaged"
            )
        })
        .unwrap_or_default();
    Err::<(), _>(e)
        .with_context(|| {
            format!(
                "reading the chain of image {} from tape ({written}; the chain is unchanged{hint})",
                point.uuid
            )
        })
        .unwrap_err()
}

/// Two drives ([`stream`]): stage the incrementals, then stream the full from one drive
/// to the writer on the other, merged in disk order with the staged extents.
#[allow(clippy::too_many_arguments)]
fn two_drives(
    home: &Home,
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    pool: &str,
    keys: &KeyRing,
    write_key: &dyn Fn() -> Result<Option<KeyMaterial>>,
    wait_for_media: bool,
    events: &dyn Events,
    mut rep: SyntheticDisk,
    point: ImageRow,
    point_list: PathBuf,
    prepared: &crate::restore::Prepared,
) -> Result<SyntheticDisk> {
    rep.mode = "stream";
    events.note(
        NoteKind::Decision,
        format!(
            "disk {}: two drives: staging the {} incremental(s) in $TMPDIR, then streaming full image {} from one drive to the writer on the other, merged in disk order",
            rep.disk,
            prepared.chain.len() - 1,
            prepared.chain[0].uuid
        ),
    );
    let t0 = std::time::Instant::now();
    let staged = stream::stage_incrementals(lib, keys, prepared, events)
        .map_err(|e| read_failed(e, prepared, &point, "nothing was written"))?;
    rep.read_seconds = t0.elapsed().as_secs_f64();
    rep.read_bytes = staged.bytes;
    rep.read_cartridges = staged.mounts.clone();
    let write_key = write_key()?;
    let mut read_lib = home.open_library()?;
    let (reader_end, feed_end) = stream::channel();
    let merged = std::sync::Arc::new(stream::Merged::new(prepared, staged, feed_end)?);
    let (read, session) = std::thread::scope(|s| {
        let full = stream::FullRead::of(prepared);
        let reader = s.spawn(move || stream::read_full(read_lib.as_mut(), keys, &full, reader_end));
        let session = (|| -> Result<BackupReport> {
            // The reader holds its drive before the writer picks one.
            merged
                .prime()
                .map_err(|e| Error::Failed(format!("reading the full: {e}")))?;
            let name = format!("<image {} merged from the chain on tape>", point.uuid);
            let size = point.disk_size;
            let identity = crate::source::input::Identity::named(&name);
            let disk = Disk::from_source(merged.clone(), &name, size, identity);
            let inputs = Inputs::synthetic(
                pool.to_string(),
                disk,
                SyntheticSource {
                    point: point.clone(),
                    point_list: point_list.clone(),
                },
            );
            backup::run(home, cat, lib, inputs, write_key, wait_for_media, events)
        })();
        // Whatever happened to the writer, the feed goes: a reader blocked on a full
        // channel stops.
        merged.close();
        drop(merged);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Failed("the full's reader thread panicked".into())));
        (read, session)
    });
    // The reader's error explains the writer's "reading stopped".
    let (full_read, mounts) = match (read, session) {
        (Err(e), _) => {
            return Err(read_failed(
                e,
                prepared,
                &point,
                "the synthetic full was not committed and is never a base",
            ))
        }
        (Ok(_), Err(e)) => return Err(e),
        (Ok(r), Ok(session)) => {
            rep.session = Some(session);
            r
        }
    };
    rep.read_bytes += prepared.plans[0].data.total_bytes();
    rep.read_cartridges.extend(mounts);
    let _ = full_read;
    Ok(rep)
}
