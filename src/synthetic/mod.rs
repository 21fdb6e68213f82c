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
pub mod verify;

use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use crate::backup::{self, BackupReport, Inputs, KeyMaterial, SyntheticSource};
use crate::catalog::{At, Catalog};
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
    /// Seconds spent reading the chain.
    pub read_seconds: f64,
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
    let t0 = std::time::Instant::now();
    let (restored, file) = match crate::restore::run_to_scratch(lib, keys, &prepared, events) {
        Ok(r) => r,
        Err(e) => {
            // The source chain is left exactly as it was, whatever failed (a media error
            // may be passing); an image whose records failed their checks is named, and
            // a restore or verify of it marks it damaged if it is.
            let hint = prepared
                .damaged_image()
                .map(|u| {
                    format!(
                        "; image {u} of the chain failed its checks: `tapevault verify --image {u}` says whether it is damaged"
                    )
                })
                .unwrap_or_default();
            return Err(e).with_context(|| {
                format!(
                    "reading the chain of image {} from tape (nothing was written; the chain is unchanged{hint})",
                    point.uuid
                )
            });
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
