//! The restore job: rebuild a disk at a point in time from a full image and its ordered
//! incrementals, newest extent wins, synthesized while restoring.
//!
//! 1. [`prepare`]: the chain from the catalog, the plan ([`planner::plan_restore`]:
//!    each image supplies only what no later image covers, clipped to the target's disk
//!    size), the segments each image must be read from, the order of reading (media
//!    order) and the pull list (cartridges in that order, with where they are).
//! 2. [`run`]: read each image's needed segments, locating straight to them, check every
//!    record (CRCs, AEAD tag, image, part, sequence), and write each output byte once with
//!    positioned writes into a fresh sparse file (renamed into place at the end) or a
//!    block device. When every record of an image is read, its content digest is checked
//!    against the trailer and the catalog.
//!
//! The media-reading half ([`MediaReader`], [`read_image`]) is shared with `verify`.
//!
//! Segments are skipped by data only ([`ImagePlan::can_skip_segment`]): the zero runs
//! an image supplies come from its catalog extents (holes in a new file, explicit zeros
//! on a device), so a segment that holds nothing but needed zero runs is not read.
//! Output writes run on a thread of their own behind a bounded queue.
//!
//! The files, in the order a restore runs:
//!
//! * `plan.rs`: [`prepare`] and [`Prepared`]: the restore point, its chain, the plan,
//!   the reading order and the pull list.
//! * `planner.rs`: [`plan_restore`]: what each image of a chain alone supplies.
//! * `pull_list.rs`: [`PullItem`], [`check_pull_list`], [`pull_list_text`].
//! * `output.rs`: the target ([`check_target`]): a block device, or a new file
//!   committed under its name only when complete.
//! * `media_reader.rs`: [`MediaReader`]: mount, locate, read, release.
//! * `read_image.rs`: [`read_image`]: read one image and check every record.
//! * `damage.rs`: [`record_damage`]: mark what a failed restore found damaged.
//! * this file: [`run`], its options and its report.

mod damage;
mod media_reader;
mod output;
mod plan;
mod planner;
mod pull_list;
mod read_image;

pub use damage::record_damage;
pub use media_reader::MediaReader;
pub use output::check_target;

pub use plan::{prepare, Prepared};
pub use planner::{
    plan_restore, plan_restore_sorted, CoveredExtent, ImagePlan, PlanError, RestorePlan,
};
pub use pull_list::{check_pull_list, pull_list_text, PullItem};
pub(crate) use read_image::problem_text;
pub use read_image::{read_image, read_image_records, ImageRead};

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{ImageKind, Skipped};
use crate::codec::{KeyRing, Opener};
use crate::error::{Error, Result};
use crate::events::{Event, Events, Finished};
use output::Output;
use tape_devices::changer::TapeLibrary;

/// Largest run of zeros written at once to a block device for a zero extent: bounded
/// memory whatever the extent's size.
pub const ZERO_CHUNK: usize = 1024 * 1024;

/// Pieces queued for the output writer thread: each at most a record's plain data
/// (960 KiB), so the queue holds a few MiB at most.
pub const WRITE_QUEUE_DEPTH: usize = 8;

/// One image's share of a restore.
#[derive(Debug, Clone, Serialize)]
pub struct ImageUse {
    pub image: Uuid,
    pub kind: ImageKind,
    #[serde(serialize_with = "crate::timefmt::serde_show::time")]
    pub started: chrono::DateTime<chrono::Utc>,
    /// Data bytes this image supplied to the output.
    pub data_bytes: u64,
    /// Zero bytes this image supplied (holes, or zeros written on a device).
    pub zero_bytes: u64,
    /// None when nothing had to be read from it (all superseded, or zeros only).
    pub read: Option<ImageRead>,
    /// Set when `image` is a tape-to-tape copy: the original (the point) it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub disk: Uuid,
    pub image: Uuid,
    /// The restored image's time, as `images` prints it.
    #[serde(serialize_with = "crate::timefmt::serde_show::time")]
    pub at: chrono::DateTime<chrono::Utc>,
    /// The file or device written (`target`: `to` is a location in the JSON contract).
    #[serde(rename = "target")]
    pub to: PathBuf,
    pub disk_size: u64,
    pub block_device: bool,
    pub bytes_written: u64,
    pub zero_bytes: u64,
    pub pull_list: Vec<PullItem>,
    pub images: Vec<ImageUse>,
    /// Newer images at or before the point asked for that were passed over because
    /// they cannot be restored (newest first), each with why.
    pub skipped: Vec<Skipped>,
    /// For each image of the chain: the point and the image read for it (the original
    /// or a tape-to-tape copy), and why a copy was taken.
    pub used: Vec<crate::copy::Chosen>,
    /// Cartridges in the order they were mounted (media order: each needed one once,
    /// unless an image spanning cartridges sends the reader back).
    pub mounts: Vec<String>,
}

/// Where and how [`run`] writes.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// A new file (created sparse, under a temporary name until complete) or a block
    /// device.
    pub to: PathBuf,
    /// Replace an existing non-empty file.
    pub force: bool,
    /// QEMU x509 credentials for an `nbds://` target.
    pub tls_creds_dir: Option<PathBuf>,
}

/// Run a prepared restore into `opts.to`. The caller has checked the pull list
/// ([`check_pull_list`]) and unlocked the keys into `keys`. `events` hears the progress
/// in bytes written and each image of the chain as it finishes supplying its part.
pub fn run(
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    p: &Prepared,
    opts: &RestoreOptions,
    events: &dyn Events,
) -> Result<RestoreReport> {
    run_into(lib, keys, p, Target::Path(opts), events)
}

/// Run a prepared restore and write the disk, in order from byte 0, to `w` (a pipe,
/// stdout). The images supply their data in media order, so the disk is first restored
/// into a scratch file with no name in the temporary directory (`$TMPDIR`; it takes the
/// disk's allocated bytes) and copied to `w` only once every record has been read and
/// checked: a failed restore writes nothing to `w`. The report's `to` is `-`.
pub fn run_to_stream(
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    p: &Prepared,
    w: &mut dyn std::io::Write,
    events: &dyn Events,
) -> Result<RestoreReport> {
    run_into(lib, keys, p, Target::Stream(w), events)
}

/// Run a prepared restore into a scratch file with no name in the temporary directory
/// (`$TMPDIR`; sparse, it takes the disk's allocated bytes) and hand it back once every
/// record has been read and checked: what a synthetic full is written from. Nothing is
/// left behind whatever happens (the file has no name). The report's `to` is
/// `<scratch>`.
pub fn run_to_scratch(
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    p: &Prepared,
    events: &dyn Events,
) -> Result<(RestoreReport, std::fs::File)> {
    let mut file = None;
    let r = run_into(lib, keys, p, Target::Scratch(&mut file), events)?;
    let file = file.ok_or_else(|| Error::Failed("the restore kept no scratch file".into()))?;
    Ok((r, file))
}

enum Target<'a> {
    Path(&'a RestoreOptions),
    Stream(&'a mut dyn std::io::Write),
    Scratch(&'a mut Option<std::fs::File>),
}

fn run_into(
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    p: &Prepared,
    mut dest: Target<'_>,
    events: &dyn Events,
) -> Result<RestoreReport> {
    let to = match &dest {
        Target::Path(o) => o.to.clone(),
        Target::Stream(_) => PathBuf::from("-"),
        Target::Scratch(_) => PathBuf::from("<scratch>"),
    };
    check_pull_list(&p.pull_list)?;
    for fp in p.key_fingerprints() {
        let ok = crate::backup::fp_bytes(&fp).is_some_and(|b| keys.has(&b));
        if !ok {
            return Err(Error::Key(format!(
                "key {fp} is needed to restore and is not unlocked"
            )));
        }
    }
    let target = p.target();
    let size = target.disk_size;
    let out = match &dest {
        Target::Path(o) => Output::open_with(&o.to, size, o.force, o.tls_creds_dir.as_deref())?,
        Target::Stream(_) | Target::Scratch(_) => Output::open_stream(size)?,
    };
    let total: u64 = p.plans.iter().map(|pl| pl.data.total_bytes()).sum::<u64>()
        + if out.device {
            p.plans.iter().map(|pl| pl.zero.total_bytes()).sum::<u64>()
        } else {
            0
        };
    events.task("restore", total);
    let plan_read = |e: std::io::Error| {
        Error::Failed(format!(
            "reading back the restore plan from its temporary file: {e}"
        ))
    };
    let locations: HashMap<String, String> = p
        .pull_list
        .iter()
        .map(|i| (i.barcode.clone(), i.location.clone()))
        .collect();
    let mut reader = MediaReader::new(lib, locations);
    let mut opener = Opener::new()?;
    let mut uses: Vec<Option<ImageUse>> = vec![None; p.chain.len()];
    let mut bytes_written = 0u64;
    let mut zero_total = 0u64;
    // Writes go to a thread of their own so reading, checking and decrypting the
    // next records overlap with writing the last ones; the queue bounds memory.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(WRITE_QUEUE_DEPTH);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let out_ref = &out;
    let (result, writer_result) = std::thread::scope(|sc| {
        let writer = sc.spawn(move || -> Result<()> {
            for (offset, buf) in rx {
                out_ref.write_at(&buf, offset)?;
                let _ = free_tx.send(buf);
            }
            Ok(())
        });
        let result = (|| -> Result<()> {
            // Zeros first on a device (a file is new and sparse: its holes read as zeros).
            for (i, plan) in p.plans.iter().enumerate() {
                zero_total += plan.zero.total_bytes();
                if out.device && !plan.zero.is_empty() {
                    for e in plan.zero.reader() {
                        let e = e.map_err(plan_read)?;
                        out.write_zeros(e.offset, e.len, ZERO_CHUNK, &mut |n| events.progress(n))?;
                    }
                }
                let img = &p.chain[i];
                uses[i] = Some(ImageUse {
                    image: img.uuid,
                    kind: img.kind,
                    started: img.started,
                    data_bytes: plan.data.total_bytes(),
                    zero_bytes: plan.zero.total_bytes(),
                    read: None,
                    copy_of: img.copy_of,
                });
            }
            for &i in &p.order {
                let img = &p.chain[i];
                let plan = &p.plans[i];
                events.emit(Event::TaskLabel(format!(
                    "image {}",
                    &img.uuid.to_string()[..8]
                )));
                let mut supplied = 0u64;
                let mut pieces: Vec<crate::extents::Extent> = Vec::new();
                let mut on_data = |offset: u64, bytes: &[u8]| -> Result<()> {
                    pieces.clear();
                    plan.data
                        .intersect_into(offset, bytes.len() as u64, &mut pieces)
                        .map_err(plan_read)?;
                    for x in &pieces {
                        let from = (x.offset - offset) as usize;
                        let mut buf = free_rx.try_recv().unwrap_or_default();
                        buf.clear();
                        buf.extend_from_slice(&bytes[from..from + x.len as usize]);
                        tx.send((x.offset, buf))
                            .map_err(|_| Error::Failed("the output writer stopped".into()))?;
                        supplied += x.len;
                        events.progress(x.len);
                    }
                    Ok(())
                };
                let read = read_image(
                    &mut reader,
                    keys,
                    &mut opener,
                    img,
                    &p.segments[i],
                    &|s| p.needed(i, s),
                    &mut on_data,
                )
                .inspect_err(|e| {
                    if e.exit_code() == crate::error::ExitCode::Integrity {
                        p.damaged.set(Some(img.uuid));
                    }
                })?;
                if supplied != plan.data.total_bytes() {
                    p.damaged.set(Some(img.uuid));
                    return Err(Error::Integrity(format!(
                            "image {} supplied {supplied} of the {} data bytes the catalog says it holds for this restore: records are missing",
                            img.uuid,
                            plan.data.total_bytes()
                        )));
                }
                bytes_written += supplied;
                if let Some(u) = uses[i].as_mut() {
                    u.read = Some(read);
                    events.emit(Event::Finished(Finished::RestoredFrom(u)));
                }
            }
            Ok(())
        })();
        drop(tx);
        let w = writer
            .join()
            .unwrap_or_else(|_| Err(Error::Failed("the output writer thread panicked".into())));
        (result, w)
    });
    // A writer failure explains a reader's "writer stopped".
    let result = writer_result.and(result);
    let released = reader.release();
    let mounts = std::mem::take(&mut reader.mounted);
    events.emit(Event::TaskEnded);
    result?;
    released?;
    if out.device {
        bytes_written += zero_total;
    }
    let block_device = out.device;
    match &mut dest {
        Target::Path(_) => out.commit()?,
        Target::Stream(w) => out.stream_to(&mut **w)?,
        Target::Scratch(f) => **f = Some(out.into_file()?),
    }
    Ok(RestoreReport {
        disk: p.disk,
        image: target.identity(),
        at: target.started,
        to,
        disk_size: size,
        block_device,
        bytes_written,
        zero_bytes: zero_total,
        pull_list: p.pull_list.clone(),
        images: uses.into_iter().flatten().collect(),
        skipped: p.skipped.clone(),
        used: p.used.clone(),
        mounts,
    })
}
