//! `tapevault restore` and `tapevault images`.

use std::collections::HashMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use uuid::Uuid;

use super::shared::{expect_drive_reads, fail_with, open_catalog, unlock_keys};
use super::{human_bytes, Ctx, Terminal};
use crate::catalog::{At, Catalog, ImageKind, ImageRow, ImageStatus};
use crate::error::{Error, Result};
use crate::events::{Events, NoteKind};
use crate::restore::{self, pull_list_text};

#[derive(Debug, Args)]
#[command(after_long_help = "\
The restore chain (the full and its incrementals up to the chosen point) comes from the
catalog; each image supplies only what no later image covers. First the pull list is
printed on stderr: the cartridges needed, in reading order, with where the catalog saw
them. If any is not in the library the command exits 4 (with --json the error document
carries the pull_list).

Every record read is checked (CRCs, AES-GCM tag, image, part, sequence); an image read
whole also has its content digest checked against its trailer and the catalog. Records of
segments that later images supersede are located past, not read. A file target is
created sparse under a temporary name in the same directory and renamed into place only
when everything succeeded; zero areas stay holes. On a block device zero areas are
written as zeros.

Without --image, the newest image at or before --at (or the newest of all) whose whole
chain can be restored is taken: newer images that are corrupt, failed, incomplete or built
on one that is are passed over, each named with why in a note on stderr and in the
report's `skipped`. If reading finds an image damaged, the restore fails (exit 3) and
that image and every image built on it are marked corrupt in the catalog (listed in the
error's `marked_corrupt`), so `images`, the next restore and the next backup pass them
over.

With --to - the disk goes to stdout, in order from byte 0, once every record has been
read and checked (a failed restore writes nothing there); the pull list, notes and the
result line go to stderr. Scratch space: the disk is first restored into a file with no
name in $TMPDIR (or /tmp), sparse, so it takes the disk's allocated bytes; set TMPDIR to
a filesystem with that much room. --json is refused with --to - (stdout carries only the
disk), and so is a terminal on stdout.

Exit codes: 0 restored; 2 bad target (exists and not empty without --force, directory,
too small a device, --to - with --json or a terminal), a disk with no images (the known
disks are listed), an image not in the catalog, an --at before the disk's first image
(its oldest restore point is named); 3 corrupt or missing record, digest mismatch, broken chain (names
image, cartridge and block); 4 cartridge not in the library; 5 key missing or wrong.")]
pub struct RestoreArgs {
    /// The disk: its UUID, a unique prefix of it, VM/LABEL (`web01/root`, as the
    /// manifest named it) or the name of a VM with one disk.
    #[arg(long, value_name = "DISK")]
    pub disk: String,
    /// Restore the newest restorable image taken at or before this time: `now`, a date
    /// (2026-12-03: its end, UTC), or a time with a zone (2026-12-03T16:48:16Z,
    /// 2026-12-03T18:48:16+02:00, or exactly as `images` prints it). A time counts to
    /// the precision given: 16:48:16Z includes everything within that second.
    #[arg(long, value_name = "TIME", conflicts_with = "image", value_parser = crate::timefmt::parse_at)]
    pub at: Option<DateTime<Utc>>,
    /// Restore exactly this image (and the chain it needs): its UUID or a unique prefix.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Where to write the disk: a new file (created sparse), a block device, or `-` for
    /// stdout (a pipe: the disk is restored into a scratch file with no name in $TMPDIR,
    /// which needs room for the disk's allocated bytes, then streamed in order; not with
    /// --json, the result line goes to stderr); `qcow2:PATH` for a new qcow2 image
    /// (created with qemu-img, written through qemu-nbd, zeros left unallocated); or an
    /// NBD export written in place (nbd+unix:///EXPORT?socket=PATH, nbd://HOST[:PORT]/EXPORT,
    /// nbds://... with --tls-creds-dir; zeros as WRITE_ZEROES).
    #[arg(long, value_name = "PATH|TARGET")]
    pub to: PathBuf,
    /// QEMU x509 credentials (ca-cert.pem, client-cert.pem, client-key.pem) for an
    /// nbds:// target.
    #[arg(long, value_name = "DIR")]
    pub tls_creds_dir: Option<PathBuf>,
    /// Replace an existing non-empty file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
#[command(after_long_help = "\
Each chain starts with a full (or a copy, or an image whose parent is no longer in the
catalog) followed by the incrementals built on it in time order; an incremental that does
not build on the image listed just before it names its parent. Shown per image: time,
kind, UUID, data bytes, disk size, status (complete, failed, corrupt, ...) and the
cartridges holding it. Each disk is headed with the VM and disk label it was last backed
up as (`web01/root`), or the VM alone, when known (an image from another VM names its
own); the catalog does not keep disk paths. Times are RFC 3339 UTC to the microsecond, as the catalog keeps
them (the same in --json): pasted into `restore --at` each selects exactly its image.
An image that cannot be restored says why (`restorable` and `unrestorable_reason` in
--json): it is not complete, or its chain runs through one that is not.")]
pub struct ImagesArgs {
    /// Only this disk's images: its UUID, a unique prefix, VM/LABEL or a VM name with
    /// one disk.
    #[arg(long, value_name = "DISK")]
    pub disk: Option<String>,
}

#[derive(Serialize)]
struct PullOnly<'a> {
    pull_list: &'a [restore::PullItem],
}

#[derive(Serialize)]
struct Damaged<'a> {
    pull_list: &'a [restore::PullItem],
    /// The image this run found damaged and every image built on it, now marked
    /// corrupt in the catalog (empty when the failure was not damage).
    marked_corrupt: &'a [Uuid],
    skipped: &'a [crate::catalog::Skipped],
}

pub fn restore(ctx: &Ctx, a: RestoreArgs) -> Result<()> {
    let home = ctx.home()?;
    if is_stream(&a) {
        if ctx.out.json {
            return super::usage(
                "--json cannot be used with --to -: stdout carries the restored disk; leave out --json (the result line goes to stderr) or restore to a file",
            );
        }
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            return super::usage(
                "--to - writes the disk to stdout, which is a terminal: pipe it (| dd of=..., | ssh ...) or give a file or device",
            );
        }
    } else {
        restore::check_target(&a.to, a.force)?;
    }
    let cat = open_catalog(&home)?;
    let disk = cat.resolve_disk(&a.disk)?;
    let image = match &a.image {
        Some(i) => Some(cat.resolve_image(i, Some(disk))?),
        None => None,
    };
    let at = match (a.at, image) {
        (Some(t), None) => At::Time(t),
        (None, Some(i)) => At::Image(i),
        _ => At::Latest,
    };
    check_restore_point(&cat, disk, at)?;
    let mut lib = home.open_library()?;
    // Results on stdout, except when stdout carries the disk.
    let term = if is_stream(&a) {
        Terminal::results_on_stderr(ctx.out)
    } else {
        Terminal::new(ctx.out)
    };
    let events: &dyn Events = &term;
    // A point held by several images (an original and its copies): when the one read
    // turns out damaged, it is marked and the restore runs again from another.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match restore_once(ctx, &home, &cat, lib.as_mut(), &a, disk, at, events)? {
            None => return Ok(()),
            Some((e, marked, again)) if again && attempt < MAX_COPY_ATTEMPTS => {
                events.note(
                    NoteKind::Decision,
                    format!(
                        "tapevault: note: image {} is damaged ({e}); another copy of the same point is complete: restoring again from it",
                        marked.first().map(|u| u.to_string()).unwrap_or_default()
                    ),
                );
            }
            Some((e, _, _)) => return Err(e),
        }
    }
}

/// Restores tried in a row when the image read of a point with copies is damaged.
const MAX_COPY_ATTEMPTS: usize = 4;

/// One restore attempt. `Ok(None)`: done (or failed and reported with `fail_with`).
/// `Ok(Some((error, marked, again)))`: failed on damage that was marked in the catalog;
/// `again` when the damaged image's point is still held by a complete copy (or
/// original), so a new attempt reads that one.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn restore_once(
    ctx: &Ctx,
    home: &crate::home::Home,
    cat: &Catalog,
    lib: &mut dyn tape_devices::changer::TapeLibrary,
    a: &RestoreArgs,
    disk: Uuid,
    at: At,
    events: &dyn Events,
) -> Result<Option<(Error, Vec<Uuid>, bool)>> {
    let prepared = restore::prepare(cat, lib, disk, at)?;
    for u in prepared.used.iter() {
        if let (Some(orig), Some(why)) = (u.copy_of, &u.why) {
            events.note(
                NoteKind::Decision,
                format!(
                    "tapevault: note: reading image {orig} from its copy {}: {why}",
                    u.image
                ),
            );
        }
    }
    // Notes on stderr, also with --json (stdout stays one document).
    for sk in prepared.skipped.iter() {
        events.note(
            NoteKind::Skipped,
            format!(
                "tapevault: note: passed over {} image {} of {} ({}): {}",
                sk.kind,
                sk.image,
                crate::timefmt::show(&sk.started),
                sk.status,
                sk.reason
            ),
        );
    }
    match restore_prepared(ctx, home, lib, a, &prepared, events) {
        Ok(()) => Ok(None),
        Err(e) => {
            // Damage found on the way is remembered: the image and every image built
            // on it are marked corrupt, so the next restore and backup pass them over.
            let marked = restore::record_damage(cat, &prepared, &e).unwrap_or_else(|me| {
                events.note(
                    NoteKind::Warning,
                    format!(
                        "tapevault: warning: could not mark the damaged image in the catalog: {me}"
                    ),
                );
                Vec::new()
            });
            // Another complete image of the same point: try again from it.
            if let Some(first) = marked.first() {
                let point = cat.image(*first)?.map(|r| r.identity());
                if let Some(orig) = point.and_then(|p| cat.image(p).ok().flatten()) {
                    let others = cat.representations(&orig)?.into_iter().any(|r| {
                        r.uuid != *first && r.status == crate::catalog::ImageStatus::Complete
                    });
                    if others {
                        return Ok(Some((e, marked, true)));
                    }
                }
            }
            if let Some((first, rest)) = marked.split_first() {
                events.note(
                    NoteKind::Warning,
                    format!(
                        "tapevault: note: marked image {first} corrupt in the catalog{}; a restore without --image now takes the newest point before it",
                        if rest.is_empty() {
                            String::new()
                        } else {
                            format!(
                                ", with the {} image(s) built on it ({})",
                                rest.len(),
                                rest.iter()
                                    .map(|u| u.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    ),
                );
            }
            fail_with(
                ctx,
                e,
                &Damaged {
                    pull_list: &prepared.pull_list,
                    marked_corrupt: &marked,
                    skipped: &prepared.skipped,
                },
            )
            .map(|()| None)
        }
    }
}

/// The usage error (exit 2) for a disk the catalog has no images of: it names the
/// disks the catalog knows (with their VM and image counts), the nearest valid values.
fn unknown_disk(cat: &Catalog, disk: Uuid) -> Result<Error> {
    let known = cat.known_disks()?;
    let list = if known.is_empty() {
        "the catalog has no images at all (back up first, or `tapevault catalog rebuild` from the cartridges)".to_string()
    } else {
        const SHOWN: usize = 20;
        let mut v: Vec<String> = known
            .iter()
            .take(SHOWN)
            .map(|(d, vm, n)| match vm {
                Some(vm) => format!("{d} (VM {vm}, {n} image(s))"),
                None => format!("{d} ({n} image(s))"),
            })
            .collect();
        if known.len() > SHOWN {
            v.push(format!(
                "and {} more (`tapevault images`)",
                known.len() - SHOWN
            ));
        }
        format!("known disks: {}", v.join(", "))
    };
    Ok(Error::Usage(format!(
        "unknown disk {disk}: the catalog has no images of it; {list}"
    )))
}

/// Usage errors (exit 2) that name the nearest valid value: a disk the catalog has no
/// images of (the known disks), an image that is not in the catalog or of another disk,
/// a time before the disk's first image (its oldest restore point).
fn check_restore_point(cat: &Catalog, disk: Uuid, at: At) -> Result<()> {
    let images = cat.images(Some(disk))?;
    if images.is_empty() {
        return Err(unknown_disk(cat, disk)?);
    }
    match at {
        At::Image(u) => match cat.image(u)? {
            None => super::usage(format!(
                "unknown image {u}: not in the catalog; `tapevault images --disk {disk}` lists the images of disk {disk}"
            )),
            Some(i) if i.disk_uuid != disk => super::usage(format!(
                "image {u} is of disk {}, not of disk {disk}",
                i.disk_uuid
            )),
            Some(_) => Ok(()),
        },
        At::Time(t) => {
            let settled: Vec<&ImageRow> = images
                .iter()
                .filter(|i| i.status != ImageStatus::Running)
                .collect();
            let Some(first) = settled.first() else {
                return Ok(());
            };
            if t >= first.started {
                return Ok(());
            }
            let oldest_ok = settled
                .iter()
                .find(|i| cat.unrestorable_reason(i).ok().flatten().is_none());
            let nearest = match oldest_ok {
                Some(i) => format!(
                    "the oldest restore point of disk {disk} is {} (image {})",
                    crate::timefmt::show(&i.started),
                    i.uuid
                ),
                None => format!(
                    "the oldest image of disk {disk} is {} (image {}), and none of its images can be restored",
                    crate::timefmt::show(&first.started),
                    first.uuid
                ),
            };
            super::usage(format!(
                "--at {} is before the first image of disk {disk}: {nearest}",
                crate::timefmt::show(&t)
            ))
        }
        At::Latest => Ok(()),
    }
}

/// `--to -`: the disk goes to stdout.
fn is_stream(a: &RestoreArgs) -> bool {
    a.to.as_os_str() == "-"
}

/// Restore one prepared chain. Errors come back (not printed) so the caller can mark
/// damage first.
fn restore_prepared(
    ctx: &Ctx,
    home: &crate::home::Home,
    lib: &mut dyn tape_devices::changer::TapeLibrary,
    a: &RestoreArgs,
    prepared: &restore::Prepared,
    events: &dyn Events,
) -> Result<()> {
    // The pull list comes first, whatever happens next (stderr; stdout stays parseable).
    eprint!("{}", pull_list_text(&prepared.pull_list));
    if let Err(e) = restore::check_pull_list(&prepared.pull_list) {
        return fail_with(
            ctx,
            e,
            &PullOnly {
                pull_list: &prepared.pull_list,
            },
        );
    }
    let keys = unlock_keys(ctx, home, &prepared.key_fingerprints())?;
    let bcs: Vec<String> = prepared
        .pull_list
        .iter()
        .map(|i| i.barcode.clone())
        .collect();
    expect_drive_reads(ctx, home, &open_catalog(home)?, &bcs, &keys)?;
    let target = prepared.target();
    ctx.out.info(format!(
        "restoring disk {} as of image {} ({} {}, {} bytes) from {} image(s) to {}",
        target.disk_uuid,
        target.identity(),
        target.kind,
        crate::timefmt::show(&target.started),
        target.disk_size,
        prepared.order.len(),
        if is_stream(a) {
            "stdout".to_string()
        } else {
            a.to.display().to_string()
        }
    ));
    let out = ctx.out;
    let report = if is_stream(a) {
        let mut stdout = std::io::stdout().lock();
        restore::run_to_stream(lib, &keys, prepared, &mut stdout, events)?
    } else {
        let opts = restore::RestoreOptions {
            to: a.to.clone(),
            force: a.force,
            tls_creds_dir: a.tls_creds_dir.clone(),
        };
        restore::run(lib, &keys, prepared, &opts, events)?
    };
    let text = || {
        let checked = report
            .images
            .iter()
            .filter(|u| u.read.as_ref().is_some_and(|r| r.digest_checked))
            .count();
        let read = report.images.iter().filter(|u| u.read.is_some()).count();
        let passed = if report.skipped.is_empty() {
            String::new()
        } else {
            format!(
                "; passed over {} newer image(s) that cannot be restored: {}",
                report.skipped.len(),
                report
                    .skipped
                    .iter()
                    .map(|k| format!("{} ({})", k.image, k.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        format!(
            "restored disk {} as of image {} of {} to {}: {} ({} data written, {} zero), {} image(s) read, {} with a full content-digest check{passed}",
            report.disk,
            report.image,
            crate::timefmt::show(&report.at),
            report.to.display(),
            human_bytes(report.disk_size),
            human_bytes(report.bytes_written),
            human_bytes(report.zero_bytes),
            read,
            checked
        )
    };
    if is_stream(a) {
        // stdout carries the disk: the result goes to stderr (and to the hook).
        if super::hook::armed() || super::job::active() {
            if let Ok(v) = serde_json::to_value(&report) {
                super::job::record(v);
            }
        }
        eprintln!("{}", text());
    } else {
        out.emit(&report, text);
    }
    Ok(())
}

// ---------------------------------------------------------------- images

// The types `images` prints carry the JSON contract's names and forms themselves
// (docs/JSON.md: `image` for an image's id, times as `timefmt::show` prints them, any
// other text as the contract layer would leave it), with their fields in the order of
// the names: the document of 100 k images is serialized straight from them, element by
// element, as `super::json::list_item` would have made it (a test checks both agree).

#[derive(Debug, Serialize)]
struct ImageEntry {
    #[serde(rename = "barcodes", serialize_with = "contract_texts")]
    cartridges: Vec<String>,
    #[serde(serialize_with = "contract_text")]
    change_id: Option<String>,
    #[serde(serialize_with = "contract_text")]
    content_digest: Option<String>,
    /// Tape-to-tape copies of this point (`tapevault copy`), any status.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    copies: Vec<CopyEntry>,
    data_bytes: u64,
    /// Depth below the chain's root (0 = the full).
    depth: usize,
    disk_size: u64,
    #[serde(serialize_with = "crate::timefmt::serde_show::opt")]
    finished: Option<DateTime<Utc>>,
    #[serde(rename = "image")]
    uuid: Uuid,
    kind: ImageKind,
    #[serde(serialize_with = "contract_text")]
    note: Option<String>,
    parent: Option<Uuid>,
    records: u64,
    /// Whether the image and its whole chain can be restored.
    restorable: bool,
    /// The image's point in time; given back to `restore --at` it selects this image.
    #[serde(serialize_with = "crate::timefmt::serde_show::time")]
    started: DateTime<Utc>,
    status: ImageStatus,
    stored_bytes: u64,
    /// A synthetic full (built from a chain on tape): the image whose restore point it
    /// reproduces byte for byte.
    synthetic_of: Option<Uuid>,
    /// Why not, when it cannot (its own status, or the broken link of its chain).
    #[serde(serialize_with = "contract_text")]
    unrestorable_reason: Option<String>,
    #[serde(serialize_with = "contract_text")]
    vm: Option<String>,
}

/// A tape-to-tape copy of an image, listed under its original.
#[derive(Debug, Serialize)]
struct CopyEntry {
    #[serde(rename = "barcodes", serialize_with = "contract_texts")]
    cartridges: Vec<String>,
    /// The copy's image UUID (an image object carries its id as `image`).
    #[serde(rename = "image")]
    uuid: Uuid,
    #[serde(serialize_with = "contract_text")]
    note: Option<String>,
    #[serde(serialize_with = "contract_text")]
    pool: Option<String>,
    status: ImageStatus,
}

#[derive(Debug, Serialize)]
struct Chain {
    images: Vec<ImageEntry>,
    /// The full (or copy) the chain starts from; for orphans, the oldest image whose
    /// parent is gone.
    root: Uuid,
}

#[derive(Debug, Serialize)]
struct DiskImages {
    chains: Vec<Chain>,
    disk: Uuid,
    /// The disk's label within that VM (`root` of `web01/root`), when a backup named it.
    #[serde(serialize_with = "contract_text")]
    disk_label: Option<String>,
    /// The VM the disk was last backed up from, when known (each image has its own `vm`).
    #[serde(serialize_with = "contract_text")]
    vm: Option<String>,
}

/// Text as the contract layer prints it (see [`super::json::text`]).
fn contract_text<S: serde::Serializer>(
    t: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&super::json::text(t)),
        None => s.serialize_none(),
    }
}

fn contract_texts<S: serde::Serializer>(
    t: &[String],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(t.iter().map(|t| super::json::text(t)))
}

fn entry(
    cat: &Catalog,
    i: &ImageRow,
    depth: usize,
    reasons: &HashMap<Uuid, Option<String>>,
    copies_of: &HashMap<Uuid, Vec<&ImageRow>>,
    barcodes: &HashMap<Uuid, Vec<String>>,
) -> Result<ImageEntry> {
    let cartridges = barcodes.get(&i.uuid).cloned().unwrap_or_default();
    let why = match reasons.get(&i.uuid) {
        Some(w) => w.clone(),
        None => cat.unrestorable_reason(i)?,
    };
    let mut copies = Vec::new();
    for &c in copies_of
        .get(&i.uuid)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let carts = barcodes.get(&c.uuid).cloned().unwrap_or_default();
        copies.push(CopyEntry {
            uuid: c.uuid,
            pool: c.pool.clone(),
            status: c.status,
            cartridges: carts,
            note: c.note.clone(),
        });
    }
    Ok(ImageEntry {
        copies,
        uuid: i.uuid,
        kind: i.kind,
        parent: i.parent_uuid,
        started: i.started,
        finished: i.finished,
        status: i.status,
        restorable: why.is_none(),
        unrestorable_reason: why,
        disk_size: i.disk_size,
        data_bytes: i.plain_bytes,
        stored_bytes: i.stored_bytes,
        records: i.records,
        vm: i.vm_name.clone(),
        change_id: i.change_id.clone(),
        content_digest: i.content_digest.clone(),
        synthetic_of: i.synthetic_of,
        cartridges,
        note: i.note.clone(),
        depth,
    })
}

/// Group one disk's images (oldest first) into chains: each root (a full, a copy, or
/// an image whose parent is not in the catalog) followed by its descendants, depth
/// first in time order.
fn chains_of(cat: &Catalog, all: &[ImageRow]) -> Result<Vec<Chain>> {
    // Copies are listed under their original, not as points of their own. A copy is
    // of its original's disk, so the disk's list holds them all, oldest first (as
    // `Catalog::copies_of` has them: copies of one image share `synthetic_of`).
    let mut copies_of: HashMap<Uuid, Vec<&ImageRow>> = HashMap::new();
    for c in all {
        if let Some(o) = c.copy_of {
            copies_of.entry(o).or_default().push(c);
        }
    }
    // The cartridges of every image of the disk (copies included), in one query.
    let barcodes = match all.first() {
        Some(i) => cat.barcodes_of_disk(i.disk_uuid)?,
        None => HashMap::new(),
    };
    let images: Vec<ImageRow> = all
        .iter()
        .filter(|i| i.copy_of.is_none())
        .cloned()
        .collect();
    let images = &images[..];
    let reasons = cat.unrestorable_reasons(images)?;
    let known: HashMap<Uuid, usize> = images
        .iter()
        .enumerate()
        .map(|(i, r)| (r.uuid, i))
        .collect();
    let mut children: HashMap<Uuid, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, r) in images.iter().enumerate() {
        match r.parent_uuid {
            Some(p) if known.contains_key(&p) => children.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    let mut chains = Vec::new();
    let mut seen = vec![false; images.len()];
    for r in roots {
        let mut out = Vec::new();
        let mut stack = vec![(r, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            out.push(entry(
                cat, &images[i], depth, &reasons, &copies_of, &barcodes,
            )?);
            if let Some(c) = children.get(&images[i].uuid) {
                for &k in c.iter().rev() {
                    stack.push((k, depth + 1));
                }
            }
        }
        chains.push(Chain {
            root: images[r].uuid,
            images: out,
        });
    }
    // Anything left is on a parent loop (damaged catalog): list it on its own.
    for (i, img) in images.iter().enumerate() {
        if !seen[i] {
            chains.push(Chain {
                root: img.uuid,
                images: vec![entry(cat, img, 0, &reasons, &copies_of, &barcodes)?],
            });
        }
    }
    Ok(chains)
}

pub fn images(ctx: &Ctx, a: ImagesArgs) -> Result<()> {
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let disk = match &a.disk {
        Some(d) => Some(cat.resolve_disk(d)?),
        None => None,
    };
    let _view = cat.read_view()?;
    // The disks in the order of their first image, then each disk's images on their
    // own: never every image row in memory at once.
    let disks = match disk {
        Some(d) => {
            if cat.images(Some(d))?.is_empty() {
                return Err(unknown_disk(&cat, d)?);
            }
            vec![d]
        }
        None => cat.disks_by_first_image()?,
    };
    let mut disk_images = disks.into_iter().map(|d| -> Result<DiskImages> {
        let mine = cat.images(Some(d))?;
        let vm = mine.iter().rev().find_map(|i| i.vm_name.clone());
        let disk_label = mine.iter().rev().find_map(|i| i.disk_label.clone());
        Ok(DiskImages {
            disk: d,
            vm,
            disk_label,
            chains: chains_of(&cat, &mine)?,
        })
    });
    let empty = || match disk {
        Some(d) => format!("no images of disk {d}"),
        None => "no images".into(),
    };
    // One disk at a time: printed as soon as it is listed, never the whole catalog held.
    if let Some(mut stream) = ctx.out.list_stream("disks") {
        for d in disk_images {
            stream.item_in_contract_form(&d?, disk_text);
        }
        stream.finish(empty);
        return Ok(());
    }
    let out = disk_images.by_ref().collect::<Result<Vec<_>>>()?;
    ctx.out.emit_list("disks", &out, || {
        if out.is_empty() {
            return empty();
        }
        out.iter().map(disk_text).collect()
    });
    Ok(())
}

/// The text `images` prints for one disk.
fn disk_text(d: &DiskImages) -> String {
    let mut s = String::new();
    // The catalog keeps the VM name of each image, not the disk's path.
    match (&d.vm, &d.disk_label) {
        (Some(vm), Some(l)) => s.push_str(&format!("disk {} ({vm}/{l})\n", d.disk)),
        (Some(vm), None) => s.push_str(&format!("disk {} (VM {vm})\n", d.disk)),
        _ => s.push_str(&format!("disk {}\n", d.disk)),
    }
    for (n, c) in d.chains.iter().enumerate() {
        let root = &c.images[0];
        s.push_str(&format!(
            "  chain {}: {} {} and {} later image(s)\n",
            n + 1,
            root.kind.as_str(),
            root.uuid,
            c.images.len() - 1
        ));
        let mut prev: Option<Uuid> = None;
        for e in &c.images {
            // Branches (an incremental not on the image listed just before it)
            // name their parent.
            let branch = match (e.parent, prev) {
                (Some(p), Some(q)) if p != q => format!("  [on {p}]"),
                _ => String::new(),
            };
            prev = Some(e.uuid);
            // A complete image whose chain is broken says so; other statuses
            // carry their own note.
            let broken = match (&e.unrestorable_reason, e.status) {
                (Some(r), ImageStatus::Complete) => format!("  (NOT RESTORABLE: {r})"),
                _ => String::new(),
            };
            // An image from another VM than the disk's last one names it.
            let vm = match (&e.vm, &d.vm) {
                (Some(v), Some(last)) if v != last => format!("  [VM {v}]"),
                (Some(v), None) => format!("  [VM {v}]"),
                _ => String::new(),
            };
            let vm = match e.synthetic_of {
                Some(of) => format!("  [synthetic full of {of}]{vm}"),
                None => vm,
            };
            s.push_str(&format!(
                "    {} {:<11} {} {:>10} data of {:>10}  {:<10} {}{}{}{}{}\n",
                crate::timefmt::show(&e.started),
                e.kind.as_str(),
                e.uuid,
                human_bytes(e.data_bytes),
                human_bytes(e.disk_size),
                e.status.as_str(),
                if e.cartridges.is_empty() {
                    "-".to_string()
                } else {
                    e.cartridges.join(",")
                },
                vm,
                branch,
                broken,
                e.note
                    .as_deref()
                    .map(|n| format!("  ({n})"))
                    .unwrap_or_default()
            ));
            for c in &e.copies {
                s.push_str(&format!(
                    "      copy {} in pool {} {:<10} {}{}\n",
                    c.uuid,
                    c.pool.as_deref().unwrap_or("?"),
                    c.status.as_str(),
                    if c.cartridges.is_empty() {
                        "-".to_string()
                    } else {
                        c.cartridges.join(",")
                    },
                    c.note
                        .as_deref()
                        .map(|n| format!("  ({n})"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: u128, note: Option<&str>, copies: Vec<CopyEntry>) -> ImageEntry {
        ImageEntry {
            cartridges: vec!["TV0001L8".into(), "2026-01-02T03:04:05Z".into()],
            change_id: Some("cid-1".into()),
            content_digest: None,
            copies,
            data_bytes: 1 << 20,
            depth: n as usize,
            disk_size: 1 << 30,
            finished: None,
            uuid: Uuid::from_u128(n),
            kind: ImageKind::Incremental,
            note: note.map(str::to_string),
            parent: Some(Uuid::from_u128(n + 100)),
            records: 7,
            restorable: note.is_none(),
            started: "2026-12-03T16:48:16.520000Z".parse().unwrap(),
            status: ImageStatus::Complete,
            stored_bytes: 12,
            synthetic_of: None,
            unrestorable_reason: note.map(|_| "its parent is gone".into()),
            vm: Some("2026-12-03T18:48:16+02:00".into()),
        }
    }

    /// `images --json` serializes its elements straight from these types: the bytes
    /// must be those of the contract layer's normalized `Value`, printed pretty.
    #[test]
    fn image_entries_serialize_as_the_contract_layer_prints_them() {
        let copy = CopyEntry {
            cartridges: vec![],
            uuid: Uuid::from_u128(9),
            note: Some("copied \"twice\"\nat 2026-01-01".into()),
            pool: None,
            status: ImageStatus::Failed,
        };
        let mut full = image(0, None, vec![copy]);
        full.kind = ImageKind::Full;
        full.parent = None;
        full.finished = Some("2026-12-03T17:00:00Z".parse().unwrap());
        full.synthetic_of = Some(Uuid::from_u128(5));
        full.content_digest = Some("ab".repeat(32));
        let disks = [
            DiskImages {
                chains: vec![Chain {
                    root: Uuid::from_u128(0),
                    images: vec![full, image(1, Some("2026-12-03T16:48:16Z"), vec![])],
                }],
                disk: Uuid::from_u128(77),
                disk_label: Some("root".into()),
                vm: Some("web01".into()),
            },
            DiskImages {
                chains: vec![],
                disk: Uuid::from_u128(78),
                disk_label: None,
                vm: None,
            },
        ];
        for d in &disks {
            let via_value =
                super::super::json::list_item(serde_json::to_value(d).unwrap(), "disks");
            let want = serde_json::to_string_pretty(&via_value).unwrap();
            assert_eq!(serde_json::to_string_pretty(d).unwrap(), want);
        }
        // The times the contract layer rewrites were rewritten (the test is not vacuous).
        let v = serde_json::to_value(&disks[0]).unwrap();
        let img = &v["chains"][0]["images"][1];
        assert_eq!(img["vm"], "2026-12-03T16:48:16.000000Z");
        assert_eq!(img["note"], "2026-12-03T16:48:16.000000Z");
        assert_eq!(img["barcodes"][1], "2026-01-02T03:04:05.000000Z");
    }
}
