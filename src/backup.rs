//! The backup job: disks (by UUID) -> change tracking -> read + zero detection ->
//! compress -> encrypt -> frame -> drive, with spanning onto the next cartridge of the
//! media set at early warning, and one catalog transaction per completed image.
//!
//! An image is usable only when its trailer is on tape, the drive has flushed, and its
//! catalog transaction has committed. Anything else leaves it 'failed' (or 'running'
//! until the next job notices its process is gone), and never a base.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use tape_formats::DataFields;

use serde::Serialize;
use tape_formats::{
    BlockSink, Cipher, Compression as WireCompression, ContentDigest, EndOfSession, Extent,
    ExtentKind, ImageHeader, ImageKind as WireKind, ImageWriter, RecordCrypto, TrailerStatus,
    VolumeLabel, WriterError,
};
use uuid::Uuid;

use crate::catalog::{
    self, Catalog, ImageKind, ImageStats, MediaSetRow, MediaState, NewImage, PoolRow, Segment,
    SessionStatus, SnapshotLocation,
};
use crate::codec::{Compressor, Sealer};
use crate::crypto::RecordKey;
use crate::error::{Context, Error, Result};
use crate::extents::ExtentSet;
use crate::home::locks::JobLock;
use crate::home::Home;
use crate::media::allocate::{session_media_set, Pick};
use crate::media::segments::{Place, SegmentBuilder};
use crate::media::volume::{position_for_append, read_label, write_label, LabelRead};
use crate::media::{mount, DriveSink, Mounted};
use crate::pipeline::StageTimes;
use crate::progress::Progress;
use crate::source::changed::ChangedExtents;
use crate::source::disk::{ChunkConfig, ChunkReader, Disk, ExtentKind as SrcKind};
use crate::source::hashscan::{scan_changes, DigestFeed, ScanError};
use crate::source::DEFAULT_BLOCK_SIZE;
use tape_devices::changer::TapeLibrary;
use tape_devices::drive::DriveError;

pub use crate::media::segments::RECORDS_PER_SEGMENT;

/// Queue depth between the pipeline's stages (records in flight per stage).
pub const PIPELINE_DEPTH: usize = 4;
/// Threads that compress and encrypt records when a pool does either.
pub const TRANSFORM_WORKERS: usize = 2;

/// The largest data record header a chunk can produce: the fixed part plus the most
/// sub-extents a chunk carries (tape-formats: 112 bytes + 17 per extent).
pub const MAX_RECORD_HEADER: usize = 112 + 17 * crate::source::disk::MAX_EXTENTS_PER_CHUNK;

/// Plain data per record for a drive whose largest block is `max_block`: the format's
/// default when it fits, else what fits, rounded down to 4 KiB. None below 4 KiB.
pub fn record_data_size_for(max_block: usize) -> Option<usize> {
    let room = max_block.checked_sub(MAX_RECORD_HEADER)? & !4095;
    (room >= 4096).then(|| room.min(tape_formats::DEFAULT_RECORD_DATA_SIZE as usize))
}

/// One disk to back up, identified by its hypervisor UUID.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub id: Uuid,
    pub path: PathBuf,
    pub changed_extents: Option<PathBuf>,
}

/// What kind of image the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Incremental when a good base exists (changed-extents file, else hash scan), else full.
    Auto,
    /// Always a full (it becomes the new base).
    Full,
    /// A one-off full that never becomes the base of anything.
    Copy,
}

#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub vm_name: Option<String>,
    pub disks: Vec<DiskSpec>,
    pub pool: String,
    pub mode: Mode,
}

/// The pool's key, unlocked; the passphrase is kept only to write key escrow into labels.
pub struct KeyMaterial {
    pub key: RecordKey,
    pub passphrase: Option<String>,
}

/// What happened to one disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub disk: Uuid,
    pub path: PathBuf,
    pub image: Uuid,
    pub kind: ImageKind,
    /// How the changed extents were found: full, changed-extents, hash-scan.
    pub method: &'static str,
    pub parent: Option<Uuid>,
    /// Why this kind was chosen when it is not what a user might expect.
    pub reason: Option<String>,
    /// When newer images of the disk cannot be restored (corrupt, failed, or built on
    /// one that is): which were passed over as the base, and why.
    pub base_note: Option<String>,
    pub disk_size: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub stored_bytes: u64,
    pub records: u64,
    pub cartridges: Vec<String>,
    pub seconds: f64,
    /// Busy time of the read, compress/encrypt and write stages while streaming the
    /// image's records (not counting the final flush): the stage closest to `wall_s`
    /// limited the throughput.
    pub stages: StageTimes,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub session: Uuid,
    pub pool: String,
    pub media_set: Uuid,
    pub images: Vec<DiskReport>,
    pub snapshot: Option<SnapshotLocation>,
}

/// How one disk will be read.
enum Plan {
    Full {
        kind: ImageKind,
        reason: Option<String>,
    },
    ChangedExtents {
        base: catalog::ImageRow,
        extents: ExtentSet,
        base_list: PathBuf,
    },
    HashScan {
        base: catalog::ImageRow,
        base_list: PathBuf,
        reason: Option<String>,
    },
}

/// One disk of a request, checked and opened before anything is locked or written.
pub struct CheckedDisk {
    pub spec: DiskSpec,
    disk: Disk,
    changed: Option<ChangedExtents>,
}

/// A request with every input checked: what [`run`] backs up.
pub struct Inputs {
    req: BackupRequest,
    disks: Vec<CheckedDisk>,
}

impl Inputs {
    pub fn disks(&self) -> impl Iterator<Item = &CheckedDisk> {
        self.disks.iter()
    }
}

/// Check every input of `req` before a lock is taken or a session starts, so that bad
/// input is a usage error (exit 2) that leaves nothing in the catalog: each disk is
/// opened without blocking and must be a regular file or a block device; no two disks
/// may share a UUID or be the same file (whatever paths name it: `./d.img` and `d.img`,
/// a symlink, a hard link); each changed-extents file must be a regular file that
/// parses, lies within its disk, and names this disk if it names one (`disk_id`).
pub fn check_inputs(req: BackupRequest) -> Result<Inputs> {
    use std::collections::HashMap;
    if req.disks.is_empty() {
        return Err(Error::Usage("no disk to back up".into()));
    }
    let mut ids: HashMap<Uuid, &Path> = HashMap::new();
    for d in &req.disks {
        if let Some(first) = ids.insert(d.id, &d.path) {
            return Err(Error::Usage(format!(
                "disk {} is listed twice ({} and {}); each disk must be listed once, with its own UUID",
                d.id,
                first.display(),
                d.path.display()
            )));
        }
    }
    let mut seen: HashMap<crate::source::input::Identity, (Uuid, PathBuf)> = HashMap::new();
    let mut disks = Vec::with_capacity(req.disks.len());
    for d in &req.disks {
        let disk = Disk::open(&d.path).map_err(|e| match e {
            crate::source::disk::DiskError::Input(i) => Error::Usage(format!("disk {}: {i}", d.id)),
            other => Error::Failed(format!("disk {} ({}): {other}", d.id, d.path.display())),
        })?;
        if let Some((first_id, first_path)) = seen.get(&disk.identity()) {
            return Err(Error::Usage(format!(
                "disks {first_id} ({}) and {} ({}) are the same file; each disk needs its own image file or device",
                first_path.display(),
                d.id,
                d.path.display()
            )));
        }
        seen.insert(disk.identity(), (d.id, d.path.clone()));
        let changed = match &d.changed_extents {
            Some(p) => {
                let ce = ChangedExtents::load(p, disk.size())
                    .map_err(|e| Error::Usage(format!("disk {}: {e}", d.id)))?;
                if let Some(named) = ce.disk_id {
                    if named != d.id {
                        return Err(Error::Usage(format!(
                            "changed-extents file {} describes disk {named}, not disk {} ({}); give this disk's own changed-extents file",
                            p.display(),
                            d.id,
                            d.path.display()
                        )));
                    }
                }
                Some(ce)
            }
            None => None,
        };
        disks.push(CheckedDisk {
            spec: d.clone(),
            disk,
            changed,
        });
    }
    Ok(Inputs { req, disks })
}

/// Run a backup session. `report_line` receives human progress lines.
pub fn run(
    home: &Home,
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    inputs: Inputs,
    key: Option<KeyMaterial>,
    interactive: bool,
    report_line: &mut dyn FnMut(&str),
) -> Result<BackupReport> {
    let Inputs { req, disks } = inputs;
    let req = &req;
    let pool = cat.pool(&req.pool)?.ok_or_else(|| {
        Error::Usage(format!(
            "no pool named {}: create it with `tapevault pool create {}`",
            req.pool, req.pool
        ))
    })?;
    let sealer = match (&pool.key_fingerprint, key) {
        (None, _) => None,
        (Some(fp), Some(k)) => {
            if &k.key.fingerprint_hex() != fp {
                return Err(Error::Key(format!(
                    "pool {} is encrypted with key {fp}, but key {} was given",
                    pool.name,
                    k.key.fingerprint_hex()
                )));
            }
            let nonces =
                crate::crypto::Keystore::open(&home.dir)?.nonce_source(&k.key.fingerprint)?;
            Some((Sealer::new(k.key, nonces), k.passphrase))
        }
        (Some(fp), None) => {
            return Err(Error::Key(format!(
                "pool {} is encrypted with key {fp}; unlock it to back up",
                pool.name
            )));
        }
    };
    recover_interrupted(home, cat, report_line)?;
    let _pool_lock = JobLock::try_acquire(
        &home.locks_dir().join(format!("pool-{}.lock", pool.name)),
        &format!("backup to pool {}", pool.name),
    )?;
    if let Some(note) = &_pool_lock.stale_note {
        report_line(&format!(
            "found a stale lock of pool {} left by a process that is gone ({note}); taking it over",
            pool.name
        ));
    }
    let now = crate::home::clock::now();
    let set = session_media_set(cat, &pool, now)?;
    let session = cat.begin_session(&pool.name, Some(set.uuid))?;
    let (sealer, passphrase) = match sealer {
        Some((s, p)) => (Some(s), p),
        None => (None, None),
    };
    let mut tape = Tape {
        cat,
        lib,
        pool: pool.clone(),
        set: set.clone(),
        present: HashSet::new(),
        exclude: HashSet::new(),
        current: None,
        escrow: None,
        // Wait for media only when a person can insert it.
        wait: (interactive && std::io::IsTerminal::is_terminal(&std::io::stdin())).then(|| {
            crate::media::allocate::MediaWait {
                max: std::time::Duration::from_secs(home.config.media_wait_secs),
                poll: crate::media::allocate::MEDIA_POLL_INTERVAL,
            }
        }),
    };
    if pool.escrow {
        if let (Some(s), Some(p)) = (&sealer, &passphrase) {
            let blob = crate::crypto::escrow::wrap(
                &s.key,
                p.as_bytes(),
                crate::crypto::KdfParams::default(),
            )?;
            tape.escrow = Some(blob);
        }
    }
    let mut job = Job {
        home,
        tape,
        sealer,
        session: session.uuid,
        image_parts: 0,
        seal_buf: Vec::new(),
    };
    let mut reports = Vec::new();
    let result = (|| -> Result<Option<SnapshotLocation>> {
        for d in disks {
            let r = job.backup_disk(d, req, interactive, report_line)?;
            report_line(&summary_line(&r));
            reports.push(r);
        }
        cat.finish_session(session.uuid, SessionStatus::Complete)?;
        job.tape.touch()?;
        let loc = job.write_session_end()?;
        Ok(Some(loc))
    })();
    let unmount = job.tape.release();
    match result {
        Ok(snapshot) => {
            unmount?;
            Ok(BackupReport {
                session: session.uuid,
                pool: pool.name,
                media_set: set.uuid,
                images: reports,
                snapshot,
            })
        }
        Err(e) => {
            let _ = cat.finish_session(session.uuid, SessionStatus::Failed);
            Err(e)
        }
    }
}

/// Where an image's block digest list lives in the home.
fn digest_list_path(home: &Home, image: Uuid) -> PathBuf {
    home.digests_dir().join(format!("{image}.digests"))
}

/// Images and sessions left 'running' by a process that is gone (killed, crashed)
/// become 'failed' (the catalog records each writer's pid and start time), so they are
/// never a base; a digest list they left half-written is removed.
pub fn recover_interrupted(
    home: &Home,
    cat: &Catalog,
    report_line: &mut dyn FnMut(&str),
) -> Result<()> {
    for uuid in cat.fail_running_images()? {
        let list = digest_list_path(home, uuid);
        let mut partial = list.clone().into_os_string();
        partial.push(".partial");
        let _ = std::fs::remove_file(&list);
        let _ = std::fs::remove_file(PathBuf::from(partial));
        let disk = cat
            .image(uuid)?
            .map(|i| i.disk_uuid.to_string())
            .unwrap_or_default();
        report_line(&format!(
            "image {uuid} of disk {disk} was interrupted by a crash; marked failed (it will never be a base)"
        ));
    }
    Ok(())
}

fn summary_line(r: &DiskReport) -> String {
    let kind = match (r.kind, r.method) {
        (ImageKind::Incremental, m) => format!("incremental ({m})"),
        (k, _) => k.to_string(),
    };
    format!(
        "disk {}: {kind} image {}: {} data, {} zero, {} stored in {} records on {} ({:.1} s)",
        r.disk,
        r.image,
        crate::cli::human_bytes(r.data_bytes),
        crate::cli::human_bytes(r.zero_bytes),
        crate::cli::human_bytes(r.stored_bytes),
        r.records,
        r.cartridges.join(", "),
        r.seconds
    )
}

/// The cartridge being written and how to get the next one.
struct Tape<'a> {
    cat: &'a Catalog,
    lib: &'a mut dyn TapeLibrary,
    pool: PoolRow,
    set: MediaSetRow,
    present: HashSet<String>,
    /// Cartridges this session filled or could not use.
    exclude: HashSet<String>,
    current: Option<Current>,
    escrow: Option<Vec<u8>>,
    wait: Option<crate::media::allocate::MediaWait>,
}

struct Current {
    barcode: String,
    drive_index: usize,
    sink: Option<DriveSink>,
    /// File number the next tape file gets.
    next_file: u64,
    bytes_at_mount: u64,
}

impl Tape<'_> {
    /// Make sure a writable cartridge of the set is mounted and positioned at end of
    /// data; returns its barcode.
    fn ensure_mounted(&mut self, report_line: &mut dyn FnMut(&str)) -> Result<()> {
        if self.current.is_some() {
            return Ok(());
        }
        loop {
            let (pick, present) = crate::media::allocate::pick_or_wait(
                self.cat,
                self.lib,
                &self.pool,
                &self.set,
                &self.exclude,
                self.wait,
                report_line,
            )?;
            self.present = present;
            let row = pick.row().clone();
            let mut m = mount::mount(self.lib, &row.barcode, Some(&row.location))?;
            match self.prepare(&pick, &mut m, report_line) {
                Ok(Some((block, file))) => {
                    self.current = Some(Current {
                        barcode: row.barcode.clone(),
                        drive_index: m.drive_index,
                        sink: Some(DriveSink::new(m.drive, block)),
                        next_file: file,
                        bytes_at_mount: 0,
                    });
                    return Ok(());
                }
                Ok(None) => {
                    // Not usable (foreign data, label of another volume): skip it.
                    self.exclude.insert(row.barcode.clone());
                    mount::unmount(self.lib, m)?;
                }
                Err(e) => {
                    let _ = mount::unmount(self.lib, m);
                    return Err(e);
                }
            }
        }
    }

    /// Label a joining cartridge, or check the label of an appended one; position at
    /// end of data. None: the cartridge must not be written (reason reported).
    fn prepare(
        &mut self,
        pick: &Pick,
        m: &mut Mounted,
        report_line: &mut dyn FnMut(&str),
    ) -> Result<Option<(u64, u64)>> {
        let drive = m.drive.as_mut();
        let row = pick.row();
        let found =
            read_label(drive).with_context(|| format!("reading the label of {}", row.barcode))?;
        match pick {
            Pick::Append(row) => {
                match found {
                    LabelRead::Label(l)
                        if Some(Uuid::from_bytes(l.volume_uuid)) == row.volume_uuid
                            && Uuid::from_bytes(l.media_set_uuid) == self.set.uuid => {}
                    other => {
                        report_line(&format!(
                            "cartridge {} should hold volume {} of media set {} but holds {}; not writing to it",
                            row.barcode,
                            row.volume_uuid.map(|u| u.to_string()).unwrap_or_default(),
                            self.set.uuid,
                            describe(&other)
                        ));
                        self.cat
                            .set_media_state(&row.barcode, MediaState::Damaged)?;
                        return Ok(None);
                    }
                }
                let (block, file) = position_for_append(drive)?;
                Ok(Some((block, file)))
            }
            Pick::Join(row) => {
                // A WORM pool takes only WORM cartridges, and a WORM cartridge (which can
                // never be recycled) only joins a WORM pool.
                if let Ok(st) = drive.status() {
                    if st.worm != self.pool.worm {
                        report_line(&format!(
                            "cartridge {} is {}a WORM cartridge and pool {} {}; skipping it",
                            row.barcode,
                            if st.worm { "" } else { "not " },
                            self.pool.name,
                            if self.pool.worm {
                                "takes only WORM cartridges"
                            } else {
                                "is not a WORM pool"
                            }
                        ));
                        return Ok(None);
                    }
                }
                // Never overwrite what the catalog does not know to be disposable.
                let ok = match &found {
                    LabelRead::Blank => true,
                    LabelRead::Label(l) => Some(Uuid::from_bytes(l.volume_uuid)) == row.volume_uuid,
                    LabelRead::Foreign(_) => false,
                };
                if !ok {
                    report_line(&format!(
                        "cartridge {} holds {} that this catalog does not know; skipping it (run `tapevault catalog rebuild --barcode {}` to import it, or `tapevault label {} --pool {} --force` to overwrite it)",
                        row.barcode,
                        describe(&found),
                        row.barcode,
                        row.barcode,
                        self.pool.name
                    ));
                    return Ok(None);
                }
                let seq = self
                    .cat
                    .media_in_set(self.set.uuid)?
                    .iter()
                    .filter_map(|m| m.seq_in_set)
                    .max()
                    .map(|s| s + 1)
                    .unwrap_or(0);
                let volume = Uuid::new_v4();
                let label = VolumeLabel {
                    volume_uuid: *volume.as_bytes(),
                    media_set_uuid: *self.set.uuid.as_bytes(),
                    set_sequence: seq,
                    label_time: crate::home::clock::now().timestamp(),
                    key_fingerprint: self.pool.key_fingerprint.as_deref().and_then(fp_bytes),
                    barcode: row.barcode.clone(),
                    pool_name: self.pool.name.clone(),
                    writer_name: "tapevault".into(),
                    writer_version: env!("CARGO_PKG_VERSION").into(),
                    escrow: self.escrow.clone().unwrap_or_default(),
                };
                write_label(drive, &label).with_context(|| format!("labelling {}", row.barcode))?;
                self.cat
                    .assign_media(&row.barcode, &self.pool.name, self.set.uuid, seq, volume)?;
                report_line(&format!(
                    "cartridge {} joins media set {} of pool {} as volume {}",
                    row.barcode, self.set.uuid, self.pool.name, seq
                ));
                let p = drive
                    .position()
                    .context("reading the position after the label")?;
                Ok(Some((p.block, p.file)))
            }
        }
    }

    fn current(&mut self) -> &mut Current {
        self.current.as_mut().expect("mounted")
    }

    /// Take the sink to start a tape file; returns (sink, barcode, tape file number).
    fn take_sink(&mut self, report_line: &mut dyn FnMut(&str)) -> Result<(DriveSink, String, u64)> {
        self.ensure_mounted(report_line)?;
        let c = self.current();
        let sink = c.sink.take().expect("sink present between tape files");
        Ok((sink, c.barcode.clone(), c.next_file))
    }

    /// Give the sink back after a tape file was closed by a filemark.
    fn put_sink(&mut self, sink: DriveSink) -> Result<()> {
        let c = self.current();
        c.next_file += 1;
        let added = sink.bytes - c.bytes_at_mount;
        c.bytes_at_mount = sink.bytes;
        let (bc, nf) = (c.barcode.clone(), c.next_file);
        c.sink = Some(sink);
        self.cat.record_media_write(&bc, nf, added)?;
        Ok(())
    }

    /// The cartridge is full (early warning): mark it, put it away, and exclude it.
    fn retire_current(&mut self, state: MediaState) -> Result<()> {
        if let Some(c) = &self.current {
            self.cat.set_media_state(&c.barcode, state)?;
            self.exclude.insert(c.barcode.clone());
        }
        self.release()
    }

    fn touch(&mut self) -> Result<()> {
        crate::media::lifecycle::record_set_write(
            self.cat,
            self.set.uuid,
            crate::home::clock::now(),
        )?;
        Ok(())
    }

    /// Flush and put the cartridge away. A cartridge in early warning is marked full.
    fn release(&mut self) -> Result<()> {
        let Some(c) = self.current.take() else {
            return Ok(());
        };
        let mut full = false;
        if let Some(sink) = c.sink {
            full = sink.early_warning;
            let mut drive = sink.drive;
            drive
                .flush()
                .with_context(|| format!("flushing {}", c.barcode))?;
            drop(drive);
        }
        if full {
            self.cat.set_media_state(&c.barcode, MediaState::Full)?;
        }
        self.lib
            .changer()
            .unload(c.drive_index)
            .with_context(|| format!("unloading {} from drive {}", c.barcode, c.drive_index))?;
        Ok(())
    }
}

fn describe(l: &LabelRead) -> String {
    match l {
        LabelRead::Blank => "nothing (blank)".into(),
        LabelRead::Label(l) => format!(
            "tapevault volume {} of pool {} (media set {})",
            Uuid::from_bytes(l.volume_uuid),
            l.pool_name,
            Uuid::from_bytes(l.media_set_uuid)
        ),
        LabelRead::Foreign(d) => format!("foreign data ({d})"),
    }
}

pub(crate) fn fp_bytes(hex: &str) -> Option<[u8; 16]> {
    crate::crypto::from_hex(hex).and_then(|v| v.try_into().ok())
}

struct Job<'a> {
    home: &'a Home,
    tape: Tape<'a>,
    sealer: Option<Sealer>,
    session: Uuid,
    image_parts: u32,
    /// Reused buffer for encrypting a record's payload.
    seal_buf: Vec<u8>,
}

/// A chunk read from the disk (pipeline stage 1 output).
#[derive(Default)]
struct ReadChunk {
    extents: Vec<Extent>,
    data: Vec<u8>,
    /// Content digest of the image through this chunk.
    digest: [u8; 32],
}

/// A record ready for framing (pipeline stage 2 output).
#[derive(Default)]
struct Prepared {
    extents: Vec<Extent>,
    /// The record's block as it goes to tape: `header_room` bytes for the header (framed
    /// by the writer, which knows the final part and sequence), then the stored payload.
    block: Vec<u8>,
    header_room: usize,
    /// CRC-32 of the stored payload.
    payload_crc: u32,
    /// zstd output before it is placed in `block`.
    compressed: Vec<u8>,
    compression: Option<WireCompression>,
    plain_len: u32,
    data_bytes: u64,
    zero_bytes: u64,
    /// Content digest of the image through this record.
    digest: [u8; 32],
    /// With encryption: the payload is already sealed (in the transform stage) for these
    /// fields; the writer re-seals if the record lands in another part or sequence.
    sealed: Option<DataFields>,
}

impl Prepared {
    /// The stored (compressed, encrypted) payload.
    fn stored(&self) -> &[u8] {
        &self.block[self.header_room..]
    }
}

/// Per-part and per-image bookkeeping of the consumer.
struct ImageProgress {
    header: ImageHeader,
    stages: StageTimes,
    writer: Option<ImageWriter<DriveSink>>,
    barcode: String,
    tape_file: u64,
    /// Logical block of the next data record.
    next_block: u64,
    segments: Vec<Segment>,
    segs: SegmentBuilder,
    coverage: Vec<catalog::Extent>,
    digest: [u8; 32],
    records: u64,
    data_bytes: u64,
    zero_bytes: u64,
    stored_bytes: u64,
    cartridges: Vec<String>,
}

impl ImageProgress {
    fn close_segment(&mut self) {
        self.segs.close(&mut self.segments);
    }

    fn note_record(&mut self, block: u64, seq: u64, extents: &[Extent]) {
        let place = Place {
            part: self.header.part,
            barcode: &self.barcode,
            tape_file: self.tape_file,
        };
        self.segs.note(
            place,
            block,
            seq,
            extents,
            &mut self.segments,
            &mut self.coverage,
        );
    }
}

/// The drive error at the root of a (context-wrapped) error, if any.
fn root_drive_error(e: &Error) -> Option<&DriveError> {
    match e {
        Error::Drive(d) => Some(d),
        Error::Context { source, .. } => root_drive_error(source),
        _ => None,
    }
}

fn sink_err(e: WriterError<DriveError>) -> Error {
    match e {
        WriterError::Sink(d) => Error::Drive(d),
        other => Error::Failed(other.to_string()),
    }
}

impl Job<'_> {
    fn decide(
        &self,
        d: &DiskSpec,
        disk_size: u64,
        changed: Option<&ChangedExtents>,
        mode: Mode,
        report_line: &mut dyn FnMut(&str),
    ) -> Result<Plan> {
        let cat = self.tape.cat;
        match mode {
            Mode::Copy => {
                return Ok(Plan::Full {
                    kind: ImageKind::Copy,
                    reason: None,
                })
            }
            Mode::Full => {
                return Ok(Plan::Full {
                    kind: ImageKind::Full,
                    reason: None,
                })
            }
            Mode::Auto => {}
        }
        let Some(base) = cat.newest_good_image(d.id)? else {
            let r = "no earlier good image of this disk: taking a full".to_string();
            return Ok(Plan::Full {
                kind: ImageKind::Full,
                reason: Some(r),
            });
        };
        let base_list = match cat.digest_list_file(&base) {
            Some(p) if p.is_file() => p,
            _ => {
                let r = format!(
                    "the block digest list of base image {} is missing: taking a full",
                    base.uuid
                );
                report_line(&format!("disk {}: {r}", d.id));
                return Ok(Plan::Full {
                    kind: ImageKind::Full,
                    reason: Some(r),
                });
            }
        };
        if let Some(ce) = changed {
            let recorded = base.change_id.clone().unwrap_or_default();
            let mismatch = if base.change_id.is_none() {
                Some(format!(
                    "the newest good image {} recorded no change id, so the changed-extents file (relative to {:?}) cannot be trusted",
                    base.uuid, ce.from_change_id
                ))
            } else if ce.from_change_id != recorded {
                Some(format!(
                    "the changed-extents file is relative to change id {:?}, but the newest good image {} recorded change id {:?}",
                    ce.from_change_id, base.uuid, recorded
                ))
            } else if disk_size != base.disk_size {
                Some(format!(
                    "the disk size changed from {} to {} bytes since image {}",
                    base.disk_size, disk_size, base.uuid
                ))
            } else if base.block_size as u64 != DEFAULT_BLOCK_SIZE {
                Some(format!(
                    "image {} was tracked in {}-byte blocks",
                    base.uuid, base.block_size
                ))
            } else {
                None
            };
            if let Some(m) = mismatch {
                // The file is not used, so its change id is not recorded either: a
                // file of another disk (or a stale one) must never start an epoch.
                let r = format!(
                    "{m}: falling back to a hash scan; the new image records no change id, so changed-extents files are trusted again only after a full backup with one (`--full --changed-extents FILE`)"
                );
                report_line(&format!("disk {}: {r}", d.id));
                return Ok(Plan::HashScan {
                    base,
                    base_list,
                    reason: Some(r),
                });
            }
            let extents = ce.aligned(DEFAULT_BLOCK_SIZE, disk_size).map_err(|e| {
                Error::Usage(format!("changed-extents file for disk {}: {e}", d.id))
            })?;
            return Ok(Plan::ChangedExtents {
                base,
                extents,
                base_list,
            });
        }
        // A disk that grew or shrank is scanned against the base as usual (the scan
        // compares the blocks both have, and the new size is recorded), but said out
        // loud: it may also mean the wrong disk was given this disk's UUID.
        let reason = (disk_size != base.disk_size).then(|| {
            let r = format!(
                "the disk {} from {} to {} bytes since image {} (hash scan of the whole disk); if this is not the same disk, give it its own --disk-id",
                if disk_size > base.disk_size { "grew" } else { "shrank" },
                base.disk_size,
                disk_size,
                base.uuid
            );
            report_line(&format!("disk {}: {r}", d.id));
            r
        });
        Ok(Plan::HashScan {
            base,
            base_list,
            reason,
        })
    }

    /// Say which newer images an automatic backup passed over as its base (they cannot
    /// be restored), so building on an older point is never silent.
    fn base_note(&self, d: &DiskSpec, mode: Mode) -> Result<Option<String>> {
        if mode != Mode::Auto {
            return Ok(None);
        }
        let cat = self.tape.cat;
        let base = cat.newest_good_image(d.id)?;
        let base = base.as_ref();
        let passed = cat.unrestorable_newer(d.id, base)?;
        if passed.is_empty() {
            return Ok(None);
        }
        let list = passed
            .iter()
            .map(|k| {
                format!(
                    "{} {} of {} ({})",
                    k.kind,
                    k.image,
                    crate::timefmt::show(&k.started),
                    k.reason
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Some(match base {
            Some(b) => format!(
                "the newest restorable image is {} of {}: it is the base, passing over {} newer image(s) that cannot be restored: {list}",
                b.uuid,
                crate::timefmt::show(&b.started),
                passed.len()
            ),
            None => format!(
                "no image of this disk can be restored, so none is a base: passed over {} image(s): {list}",
                passed.len()
            ),
        }))
    }

    fn backup_disk(
        &mut self,
        checked: CheckedDisk,
        req: &BackupRequest,
        interactive: bool,
        report_line: &mut dyn FnMut(&str),
    ) -> Result<DiskReport> {
        let started = Instant::now();
        let CheckedDisk {
            spec: d,
            disk,
            changed,
        } = checked;
        let d = &d;
        let size = disk.size();
        let mut plan = self.decide(d, size, changed.as_ref(), req.mode, report_line)?;
        let base_note = self.base_note(d, req.mode)?;
        if let Some(n) = &base_note {
            report_line(&format!("disk {}: {n}", d.id));
        }
        let image_uuid = Uuid::new_v4();
        std::fs::create_dir_all(self.home.digests_dir())?;
        let new_list = digest_list_path(self.home, image_uuid);
        let bs = DEFAULT_BLOCK_SIZE;

        // Hash scan first (reads the disk once, writes the new digest list); an unusable
        // previous list means a full, said out loud.
        let mut scanned: Option<ExtentSet> = None;
        if let Plan::HashScan { base_list, .. } = &plan {
            let mut set = ExtentSet::new();
            match scan_changes(&disk, bs, Some(base_list), &new_list, |e| {
                set.insert(e.offset, e.len)
            }) {
                Ok(_) => scanned = Some(set),
                Err(ScanError::PreviousList(e)) => {
                    let r =
                        format!("the previous block digest list is unusable ({e}): taking a full");
                    report_line(&format!("disk {}: {r}", d.id));
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
        };
        let base_change = match &plan {
            Plan::ChangedExtents { base, .. } | Plan::HashScan { base, .. } => {
                base.change_id.clone()
            }
            Plan::Full { .. } => None,
        };
        // A change id is recorded only from a changed-extents file that was accepted:
        // for a full (the whole disk read at the file's point) or for an incremental
        // made from its areas. A hash scan records none (a fallback means the file did
        // not continue the base's epoch), so no later file is trusted on its word until
        // a full starts a new epoch.
        let change_id = match &plan {
            Plan::Full { .. } | Plan::ChangedExtents { .. } => {
                changed.as_ref().map(|c| c.change_id.clone())
            }
            Plan::HashScan { .. } => None,
        };
        let cat = self.tape.cat;
        let pool = self.tape.pool.clone();
        cat.begin_image(&NewImage {
            uuid: image_uuid,
            disk_uuid: d.id,
            vm_name: req.vm_name.clone(),
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
            key_fingerprint: pool.key_fingerprint.clone(),
            compression: pool.compression,
            started: crate::home::clock::now(),
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
            interactive,
            report_line,
        );
        match result {
            Ok(p) => {
                let digest_hex = crate::crypto::to_hex(&p.digest);
                let stats = ImageStats {
                    records: p.records,
                    plain_bytes: p.data_bytes,
                    stored_bytes: p.stored_bytes,
                    finished: Some(crate::home::clock::now()),
                    digest_list: Some(new_list.to_string_lossy().into_owned()),
                };
                cat.complete_image(image_uuid, &stats, &digest_hex, &p.segments, &p.coverage)?;
                Ok(DiskReport {
                    disk: d.id,
                    path: d.path.clone(),
                    image: image_uuid,
                    kind,
                    method,
                    parent,
                    reason,
                    base_note,
                    disk_size: size,
                    data_bytes: p.data_bytes,
                    zero_bytes: p.zero_bytes,
                    stored_bytes: p.stored_bytes,
                    records: p.records,
                    cartridges: p.cartridges,
                    seconds: started.elapsed().as_secs_f64(),
                    stages: p.stages,
                    digest: digest_hex,
                })
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

    #[allow(clippy::too_many_arguments)]
    fn write_image(
        &mut self,
        disk: &Disk,
        disk_id: Uuid,
        plan: &Plan,
        scanned: Option<&ExtentSet>,
        new_list: &Path,
        image_uuid: Uuid,
        kind: ImageKind,
        parent: Option<Uuid>,
        change_id: Option<String>,
        from_change_id: Option<String>,
        req: &BackupRequest,
        interactive: bool,
        report_line: &mut dyn FnMut(&str),
    ) -> Result<ImageProgress> {
        let size = disk.size();
        let bs = DEFAULT_BLOCK_SIZE;
        // Records must fit the drive's largest block (real drives and HBAs may take less
        // than 1 MiB): plain data + the largest header a record of a chunk can have.
        // Stored payloads are never larger than plain ones (incompressible data is
        // stored raw).
        self.tape.ensure_mounted(report_line)?;
        let max_block = self
            .tape
            .current()
            .sink
            .as_ref()
            .map(|s| s.drive.max_block_size())
            .unwrap_or(tape_formats::MAX_BLOCK_SIZE)
            .min(tape_formats::MAX_BLOCK_SIZE);
        let record_data_size = record_data_size_for(max_block).ok_or_else(|| {
            Error::Failed(format!(
                "the drive's largest block ({max_block} bytes) is too small for tapevault records (at least {} bytes are needed)",
                MAX_RECORD_HEADER + 4096
            ))
        })?;
        let cfg = ChunkConfig {
            record_data_size,
            block_size: bs,
        };
        let dl_err = |e: crate::source::hashscan::DigestListError| {
            Error::Failed(format!("block digest list: {e}"))
        };
        let reader = match plan {
            Plan::Full { .. } => {
                let feed = DigestFeed::new(new_list, bs, size, None).map_err(dl_err)?;
                ChunkReader::whole_disk(disk, cfg)
                    .map_err(|e| Error::Failed(e.to_string()))?
                    .with_digests(feed)
                    .map_err(dl_err)?
            }
            Plan::ChangedExtents {
                extents, base_list, ..
            } => {
                let feed = DigestFeed::new(new_list, bs, size, Some(base_list)).map_err(dl_err)?;
                ChunkReader::extents(disk, cfg, extents)
                    .map_err(|e| Error::Failed(e.to_string()))?
                    .with_digests(feed)
                    .map_err(dl_err)?
            }
            Plan::HashScan { .. } => ChunkReader::extents(disk, cfg, scanned.expect("scan ran"))
                .map_err(|e| Error::Failed(e.to_string()))?,
        };
        let total: u64 = match plan {
            Plan::Full { .. } => size,
            Plan::ChangedExtents { extents, .. } => extents.total_bytes(),
            Plan::HashScan { .. } => scanned.map(|s| s.total_bytes()).unwrap_or(0),
        };
        let pool = self.tape.pool.clone();
        let cipher = self.sealer.as_ref().map_or(Cipher::None, Sealer::cipher);
        let header = ImageHeader {
            image_uuid: *image_uuid.as_bytes(),
            disk_uuid: *disk_id.as_bytes(),
            session_uuid: *self.session.as_bytes(),
            parent_image_uuid: parent.map(|p| *p.as_bytes()),
            kind: match kind {
                ImageKind::Full => WireKind::Full,
                ImageKind::Incremental => WireKind::Incremental,
                ImageKind::Copy => WireKind::Copy,
            },
            part: 0,
            first_sequence: 0,
            disk_size: size,
            tracking_block_size: bs as u32,
            record_data_size: cfg.record_data_size as u32,
            time: crate::home::clock::now().timestamp(),
            compression: match pool.compression {
                catalog::Compression::Off => WireCompression::None,
                catalog::Compression::Zstd(_) => WireCompression::Zstd,
            },
            cipher,
            vm_name: req.vm_name.clone().unwrap_or_default(),
            change_id: change_id.unwrap_or_default(),
            from_change_id: if kind == ImageKind::Incremental {
                from_change_id
            } else {
                None
            },
        };
        let progress = Progress::bytes(
            total,
            format!("disk {}", &image_uuid.to_string()[..8]),
            interactive,
        );
        let mut digest = ContentDigest::with_key(self.sealer.as_ref().map(|s| s.key.digest_key()));
        let mut state = ImageProgress {
            stages: StageTimes::default(),
            header: header.clone(),
            writer: None,
            barcode: String::new(),
            tape_file: 0,
            next_block: 0,
            segments: Vec::new(),
            segs: SegmentBuilder::default(),
            coverage: Vec::new(),
            // The digest of no records yet (a part may end before its first record).
            digest: digest.finalize(),
            records: 0,
            data_bytes: 0,
            zero_bytes: 0,
            stored_bytes: 0,
            cartridges: Vec::new(),
        };
        self.start_part(&mut state, report_line)?;

        let mut reader = reader;
        // Encryption runs in the transform stage, off the writer's thread, so the drive
        // keeps streaming. The AAD needs the record's part and sequence: the sequence is
        // the record's index in the image; the part is the one being written now, which
        // only changes at early warning, when the writer re-seals the few records
        // prepared ahead for the old part (`write_record`).
        let sealer = self.sealer.take();
        let part_now = AtomicU32::new(state.header.part);
        let image_uuid_bytes = state.header.image_uuid;
        // Compressing and encrypting take the most CPU of any stage: with either, the
        // records are prepared on two threads (item i on worker i % 2), each with its own
        // compressor and AAD buffer.
        let n_workers = if sealer.is_some() || pool.compression != catalog::Compression::Off {
            TRANSFORM_WORKERS
        } else {
            1
        };
        let sealer_ref = sealer.as_ref();
        let part_now_ref = &part_now;
        let first_sequence = state.header.first_sequence;
        let mut workers = Vec::with_capacity(n_workers);
        for w in 0..n_workers {
            let mut compressor = Compressor::new(pool.compression)?;
            let mut transform_aad = Vec::new();
            let mut next_sequence = first_sequence + w as u64;
            workers.push(move |c: &mut ReadChunk, p: &mut Prepared| -> Result<()> {
                p.digest = c.digest;
                p.extents.clear();
                p.extents.extend_from_slice(&c.extents);
                p.plain_len = c.data.len() as u32;
                p.data_bytes = c.data.len() as u64;
                p.zero_bytes = c
                    .extents
                    .iter()
                    .filter(|e| e.kind == ExtentKind::Zero)
                    .map(|e| e.length)
                    .sum();
                // Stored as read unless zstd makes it smaller. The payload goes straight
                // into the block to be written (encrypted on the way when the pool is),
                // and is checksummed here, so the writer only frames the header.
                let compressed = compressor.try_compress(&c.data, &mut p.compressed)?;
                let (compression, payload) = if compressed {
                    (WireCompression::Zstd, &p.compressed[..])
                } else {
                    (WireCompression::None, &c.data[..])
                };
                p.compression = Some(compression);
                p.header_room = tape_formats::data_header_len(p.extents.len());
                let len = p.header_room + payload.len();
                // A recycled block is overwritten, not cleared: it only grows when needed.
                if p.block.len() != len {
                    p.block.resize(len, 0);
                }
                let out = &mut p.block[p.header_room..];
                p.sealed = match sealer_ref {
                    Some(s) => {
                        let mut fields = DataFields {
                            image_uuid: image_uuid_bytes,
                            part: part_now_ref.load(Ordering::Acquire),
                            sequence: next_sequence,
                            compression,
                            crypto: RecordCrypto::None,
                            plain_len: p.plain_len,
                        };
                        s.seal_data_from(
                            &mut fields,
                            &p.extents,
                            payload,
                            out,
                            &mut transform_aad,
                        )?;
                        Some(fields)
                    }
                    None => {
                        out.copy_from_slice(payload);
                        None
                    }
                };
                p.payload_crc = crc32fast::hash(&p.block[p.header_room..]);
                next_sequence += n_workers as u64;
                Ok(())
            });
        }
        let run = crate::pipeline::run_workers::<ReadChunk, Prepared, Error, _, _, _>(
            PIPELINE_DEPTH,
            |c| {
                let Some(chunk) = reader.next_chunk().map_err(|e| {
                    Error::Failed(format!("reading {}: {e}", disk.path().display()))
                })?
                else {
                    return Ok(false);
                };
                c.extents.clear();
                c.extents.extend(chunk.extents.iter().map(|s| Extent {
                    offset: s.offset,
                    length: s.len,
                    kind: match s.kind {
                        SrcKind::Data => ExtentKind::Data,
                        SrcKind::Zero => ExtentKind::Zero,
                    },
                }));
                reader.swap_data(&mut c.data);
                // The content digest runs on the reader thread, which has CPU to spare;
                // the transform thread compresses and encrypts.
                digest
                    .update_record(&c.extents, &c.data)
                    .map_err(|e| Error::Failed(format!("content digest: {e}")))?;
                c.digest = digest.finalize();
                Ok(true)
            },
            workers,
            |p| {
                self.write_record(&mut state, p, sealer.as_ref(), report_line)?;
                part_now.store(state.header.part, Ordering::Release);
                progress.inc(p.data_bytes + p.zero_bytes);
                Ok(())
            },
        );
        self.sealer = sealer;
        progress.finish();
        if let Ok(times) = &run {
            state.stages = *times;
        }
        if let Err(e) = run {
            // Close the part as aborted so a reader knows, but only when the failure was
            // not the drive's and the tape is provably where this writer left it: after a
            // reset or power cut the drive may be back at BOT, and writing there would
            // destroy the cartridge.
            if let Some(mut w) = state.writer.take() {
                let drive_failed = root_drive_error(&e).is_some();
                let sink = w.sink_mut();
                let in_place = sink
                    .drive
                    .position()
                    .map(|p| p.block == sink.block)
                    .unwrap_or(false);
                if !drive_failed && in_place {
                    if let Ok((sink, _, _)) = w.finish(TrailerStatus::Aborted, state.digest) {
                        let _ = self.tape.put_sink(sink);
                    }
                } else {
                    // The cartridge's state is unknown: never write to it again in this
                    // session; the next append closes the unterminated file.
                    drop(w);
                    if let Some(c) = self.tape.current.as_mut() {
                        c.sink = None;
                    }
                }
            }
            return Err(e);
        }
        let (_stats, summary) = reader.finish();
        if let Some(Err(e)) = summary {
            return Err(Error::Failed(format!(
                "writing the block digest list {}: {e}",
                new_list.display()
            )));
        }
        // Close the last part: trailer, filemark, flush; only then may the catalog say
        // complete.
        let w = state.writer.take().expect("part open");
        let (sink, _trailer, _) = w
            .finish(TrailerStatus::Complete, state.digest)
            .map_err(sink_err)?;
        let mut sink = sink;
        sink.drive
            .flush()
            .context("flushing the drive after the image trailer")?;
        state.close_segment();
        self.tape.put_sink(sink)?;
        self.image_parts += 1;
        Ok(state)
    }

    /// Open a new image part on the current (or next) cartridge.
    fn start_part(
        &mut self,
        st: &mut ImageProgress,
        report_line: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let (sink, barcode, file) = self.tape.take_sink(report_line)?;
        let header_block = sink.block;
        st.barcode = barcode.clone();
        st.tape_file = file;
        st.next_block = header_block + 1;
        if !st.cartridges.contains(&barcode) {
            st.cartridges.push(barcode.clone());
        }
        let w = ImageWriter::start(sink, st.header.clone())
            .map_err(sink_err)
            .with_context(|| {
                format!(
                    "writing the header of image {} part {} on {barcode}",
                    Uuid::from_bytes(st.header.image_uuid),
                    st.header.part
                )
            })?;
        st.writer = Some(w);
        Ok(())
    }

    fn write_record(
        &mut self,
        st: &mut ImageProgress,
        p: &mut Prepared,
        sealer: Option<&Sealer>,
        report_line: &mut dyn FnMut(&str),
    ) -> Result<()> {
        // Early warning seen: close this part as continued and go on with the next
        // cartridge of the media set.
        if st
            .writer
            .as_ref()
            .map(|w| w.early_warning())
            .unwrap_or(false)
            && st.records > 0
        {
            self.span(st, report_line)?;
        }
        let w = st.writer.as_mut().expect("part open");
        let compression = p.compression.unwrap_or(WireCompression::None);
        let mut fields = w.fields(compression, RecordCrypto::None, p.plain_len);
        let seq = fields.sequence;
        let block = st.next_block;
        let r = match (sealer, &p.sealed) {
            (None, _) => w.write_framed_record(&fields, &p.extents, p.payload_crc, &mut p.block),
            // Sealed in the transform stage for exactly this header: write as is.
            (Some(_), Some(sf))
                if DataFields {
                    crypto: RecordCrypto::None,
                    ..*sf
                } == fields =>
            {
                w.write_framed_record(sf, &p.extents, p.payload_crc, &mut p.block)
            }
            // Sealed for another part (early warning came in between), or not sealed:
            // seal for the header it really gets, with a fresh nonce.
            (Some(s), sealed) => {
                let buf = &mut self.seal_buf;
                buf.clear();
                buf.extend_from_slice(p.stored());
                let mut aad = Vec::new();
                match sealed {
                    Some(sf) => s.reseal_data(sf, &mut fields, &p.extents, buf, &mut aad)?,
                    None => s.seal_data_with(&mut fields, &p.extents, buf, &mut aad)?,
                }
                w.write_record(&fields, &p.extents, buf)
            }
        };
        r.map_err(sink_err).with_context(|| {
            format!(
                "writing record {seq} of image {} to {} at block {block}",
                Uuid::from_bytes(st.header.image_uuid),
                st.barcode
            )
        })?;
        st.next_block += 1;
        st.note_record(block, seq, &p.extents);
        st.digest = p.digest;
        st.records += 1;
        st.data_bytes += p.data_bytes;
        st.zero_bytes += p.zero_bytes;
        st.stored_bytes += p.stored().len() as u64;
        Ok(())
    }

    fn span(&mut self, st: &mut ImageProgress, report_line: &mut dyn FnMut(&str)) -> Result<()> {
        let w = st.writer.take().expect("part open");
        let (sink, trailer, _) = w
            .finish(TrailerStatus::Continued, st.digest)
            .map_err(sink_err)
            .with_context(|| {
                format!(
                    "closing part {} of image {} on {}",
                    st.header.part,
                    Uuid::from_bytes(st.header.image_uuid),
                    st.barcode
                )
            })?;
        let mut sink = sink;
        sink.drive
            .flush()
            .context("flushing before changing cartridges")?;
        st.close_segment();
        self.tape.put_sink(sink)?;
        report_line(&format!(
            "cartridge {} reached early warning; image {} continues on the next cartridge of media set {}",
            st.barcode,
            Uuid::from_bytes(st.header.image_uuid),
            self.tape.set.uuid
        ));
        self.image_parts += 1;
        self.tape.retire_current(MediaState::Full)?;
        st.header = st.header.next_part(&trailer);
        self.start_part(st, report_line)
    }

    /// Write the catalog snapshot of the media set and the end-of-session marker, each
    /// as a tape file of its own, so the media carry their own catalog.
    fn write_session_end(&mut self) -> Result<SnapshotLocation> {
        let cat = self.tape.cat;
        let set = self.tape.set.clone();
        let plain = cat.snapshot(catalog::SnapshotScope::MediaSet(set.uuid))?;
        let mut noop = |_: &str| {};
        let (mut sink, barcode, file) = self.tape.take_sink(&mut noop)?;
        let start_block = sink.block;
        let now = crate::home::clock::now();
        let ctx = || format!("writing the catalog snapshot to {barcode}");
        crate::media::snapshot::write_snapshot_file(
            &mut sink,
            &plain,
            self.session,
            *set.uuid.as_bytes(),
            now.timestamp(),
            self.sealer.as_mut(),
        )
        .with_context(ctx)?;
        self.tape.put_sink(sink)?;
        // End-of-session marker in a tape file of its own.
        let (mut sink, _, _) = self.tape.take_sink(&mut noop)?;
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
        let loc = SnapshotLocation {
            barcode,
            tape_file: file,
            block: start_block,
            session_uuid: Some(self.session),
            time: catalog::catalog_time(now),
        };
        cat.record_snapshot(&loc)?;
        Ok(loc)
    }
}

#[cfg(test)]
mod record_size_tests {
    use super::*;

    #[test]
    fn records_fit_the_drives_largest_block() {
        assert_eq!(record_data_size_for(1 << 20), Some(512 << 10));
        let r = record_data_size_for(512 << 10).unwrap();
        assert!(r + MAX_RECORD_HEADER <= 512 << 10 && r.is_multiple_of(4096) && r >= 480 << 10);
        assert_eq!(record_data_size_for(16 << 10), None);
    }
}
