//! Disaster recovery: the catalog rebuilt from cartridges alone.
//!
//! For each cartridge: read the label (which pool, media set, sequence, key); on the
//! fast path space to end of data, walk back over filemarks to the newest EndOfSession
//! and merge the catalog snapshot just before it (no data record is read). With
//! `scan`, or when no usable snapshot exists, read every tape file record by record
//! and rebuild images (segments with logical block positions exactly as the backup
//! records them, coverage, totals and digests from the trailers), sessions, media sets
//! and cartridges from the self-describing records. Everything goes into the catalog
//! through its `merge_*` functions: idempotent, never overwriting newer facts,
//! conflicts reported.
//!
//! Not rebuilt: the per-block digest lists of hash-scan incrementals (they describe
//! the disk, not the tape); the next backup of such a disk says why it takes a full.

pub mod media;
pub mod tape;

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use tape_formats::{
    Compression as WireCompression, ImageKind as WireKind, PartJoiner, VolumeLabel,
};
use uuid::Uuid;

use crate::catalog::{
    self, Allocation, Catalog, Compression, ImageDump, ImageKind, ImageRow, ImageStatus, MediaRow,
    MediaSetRow, MediaState, MergeReport, PoolRow, SessionRow, SessionStatus, SnapshotLocation,
};
use crate::codec::KeyRing;
use crate::crypto::{self, Keystore};
use crate::error::{Context, Error, Result};
use crate::home::Home;
use crate::media::volume::{read_label, LabelRead};
use crate::media::{mount, unmount};
use tape::{Damage, FileHead, FileScan, PartScan};
use tape_devices::changer::TapeLibrary;
use tape_devices::drive::TapeDrive;

/// Where passphrases come from (the CLI's `--passphrase-file`, environment or prompt).
pub type PassphraseFn<'a> = dyn FnMut(&str) -> Result<String> + 'a;

/// Keys for reading cartridges: from the keystore (by the fingerprint the label names)
/// or from the label's escrow blob, each unlocked once with the passphrase.
pub struct KeySource<'a> {
    home: &'a Home,
    pub ring: KeyRing,
    passphrase: &'a mut PassphraseFn<'a>,
    /// Keystore names of the keys unlocked, by fingerprint hex.
    names: HashMap<String, String>,
}

impl<'a> KeySource<'a> {
    pub fn new(home: &'a Home, passphrase: &'a mut PassphraseFn<'a>) -> Self {
        KeySource {
            home,
            ring: KeyRing::new(),
            passphrase,
            names: HashMap::new(),
        }
    }

    /// The keystore name of a key (or its fingerprint when it came from escrow).
    pub fn name_of(&self, fp_hex: &str) -> String {
        self.names
            .get(fp_hex)
            .cloned()
            .unwrap_or_else(|| fp_hex.to_string())
    }

    /// Make the key with this fingerprint available, or fail with [`Error::Key`] naming it.
    pub fn need(&mut self, fp: [u8; 16], escrow: &[u8], barcode: &str) -> Result<()> {
        if self.ring.has(&fp) {
            return Ok(());
        }
        let hex = crypto::to_hex(&fp);
        let ks = Keystore::open(&self.home.dir)?;
        match ks.info(&hex) {
            Ok(info) => {
                let pass = (self.passphrase)(&format!("key {}", info.name))?;
                let key = ks.unlock(&hex, pass.as_bytes())?;
                self.names.insert(hex, info.name);
                self.ring.add(key);
                Ok(())
            }
            Err(crypto::CryptoError::KeyMissing { .. }) if !escrow.is_empty() => {
                let inside = crypto::escrow::fingerprint(escrow).map_err(|e| {
                    Error::Key(format!(
                        "cartridge {barcode} needs key {hex}; it is not in the keystore and the label's escrow is unreadable ({e})"
                    ))
                })?;
                if inside != fp {
                    return Err(Error::Key(format!(
                        "cartridge {barcode} needs key {hex}; it is not in the keystore and the label's escrow holds another key ({})",
                        crypto::to_hex(&inside)
                    )));
                }
                let pass = (self.passphrase)(&format!(
                    "the key escrowed on cartridge {barcode} (fingerprint {hex})"
                ))?;
                let key = crypto::escrow::unwrap(escrow, pass.as_bytes())?;
                self.ring.add(key);
                Ok(())
            }
            Err(crypto::CryptoError::KeyMissing { .. }) => Err(Error::Key(format!(
                "cartridge {barcode} is encrypted with key {hex}, which is not in the keystore (and its label carries no escrow): import that key with `tapevault key import FILE`"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

/// What to rebuild from.
#[derive(Debug, Clone, Default)]
pub struct RebuildOptions {
    /// Cartridges to read, in order (default: every cartridge in the library).
    pub barcodes: Vec<String>,
    /// Scan every record instead of trusting the catalog snapshots.
    pub scan: bool,
}

/// How one cartridge was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Its newest catalog snapshot was merged (plus a scan of any tape files after it).
    Snapshot,
    /// Every tape file was scanned.
    Scan,
    /// No snapshot of its own (its sessions ended on other cartridges): their
    /// snapshots place its tape files; any they do not were scanned.
    Covered,
    /// Nothing written on it.
    Blank,
    /// Not a tapevault cartridge (or its label is damaged).
    Foreign,
    /// Encrypted with a key that is not available.
    KeyMissing,
}

#[derive(Debug, Clone, Serialize)]
pub struct CartridgeReport {
    pub barcode: String,
    pub method: Method,
    pub pool: Option<String>,
    pub media_set: Option<Uuid>,
    pub set_sequence: Option<u32>,
    pub key_fingerprint: Option<String>,
    /// Tape file of the snapshot that was merged.
    pub snapshot_file: Option<u64>,
    /// Why the fast path was not taken, when it was wanted.
    pub fallback_reason: Option<String>,
    /// Tape files read record by record.
    pub files_scanned: u64,
    /// Bytes of blocks read while scanning.
    pub bytes_scanned: u64,
    pub seconds: f64,
    pub note: Option<String>,
}

/// An image as rebuilt from a scan.
#[derive(Debug, Clone, Serialize)]
pub struct ImageFound {
    pub image: Uuid,
    pub disk: Uuid,
    pub status: ImageStatus,
    pub parts: u32,
    pub cartridges: Vec<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildReport {
    pub cartridges: Vec<CartridgeReport>,
    /// Images found by scanning (fast-path images are in the merge totals).
    pub images_scanned: Vec<ImageFound>,
    pub merged: MergeReport,
    /// Record-level damage, by position.
    pub damage: Vec<Damage>,
    /// Other problems: missing parts, images that could not be merged, snapshots that
    /// could not be used.
    pub problems: Vec<String>,
    /// Fingerprints of keys that were needed and not available.
    pub missing_keys: Vec<String>,
    /// Cartridges that should hold images and do not.
    pub lost: Vec<String>,
}

impl RebuildReport {
    /// Images that could not be recovered whole (damage, missing parts).
    pub fn has_integrity_problems(&self) -> bool {
        !self.damage.is_empty()
            || !self.lost.is_empty()
            || self.images_missing_parts() > 0
            || self
                .images_scanned
                .iter()
                .any(|i| i.status == ImageStatus::Corrupt)
    }

    /// Images found incomplete because parts of them were not found (on cartridges
    /// not read in this run, or lost).
    pub fn images_missing_parts(&self) -> usize {
        self.images_scanned
            .iter()
            .filter(|i| {
                i.status == ImageStatus::Incomplete
                    && i.note.as_deref().is_some_and(|n| n.contains("missing"))
            })
            .count()
    }
}

pub(crate) fn add_merge(total: &mut MergeReport, r: MergeReport) {
    total.pools_added += r.pools_added;
    total.media_sets_added += r.media_sets_added;
    total.media_sets_updated += r.media_sets_updated;
    total.media_added += r.media_added;
    total.media_updated += r.media_updated;
    total.sessions_added += r.sessions_added;
    total.sessions_updated += r.sessions_updated;
    total.images_added += r.images_added;
    total.images_updated += r.images_updated;
    total.segments_added += r.segments_added;
    total.snapshots_added += r.snapshots_added;
    total.conflicts.extend(r.conflicts);
}

fn time_of(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

fn nonzero(u: [u8; 16]) -> Option<Uuid> {
    (u != [0; 16]).then(|| Uuid::from_bytes(u))
}

/// What a cartridge's label says, with what was seen at its end.
struct LabelSeen {
    label: VolumeLabel,
    eod_file: u64,
    early_warning: bool,
    last_time: Option<i64>,
    bytes: u64,
}

#[derive(Default)]
struct SessionSeen {
    pool: String,
    set: Option<Uuid>,
    first_time: Option<i64>,
    end_time: Option<i64>,
    has_images: bool,
}

/// Everything read from the media, merged at the end in dependency order.
#[derive(Default)]
struct Collected {
    labels: BTreeMap<String, LabelSeen>,
    parts: BTreeMap<Uuid, Vec<PartScan>>,
    sessions: HashMap<Uuid, SessionSeen>,
    snapshots: Vec<SnapshotLocation>,
    /// Image part headers in tape files after a cartridge's last snapshot: scanned
    /// later unless another cartridge's snapshot covers them.
    tails: Vec<(String, Vec<(u64, FileHead)>)>,
}

impl Collected {
    fn session(&mut self, uuid: Uuid, label: &VolumeLabel) -> &mut SessionSeen {
        self.sessions.entry(uuid).or_insert_with(|| SessionSeen {
            pool: label.pool_name.clone(),
            set: nonzero(label.media_set_uuid),
            ..Default::default()
        })
    }

    fn add_file(
        &mut self,
        label: &VolumeLabel,
        barcode: &str,
        tape_file: u64,
        file: FileScan,
        rep: &mut RebuildReport,
    ) {
        match file {
            FileScan::Part(p) => {
                let s = self.session(Uuid::from_bytes(p.header.session_uuid), label);
                s.has_images = true;
                s.first_time = Some(s.first_time.map_or(p.header.time, |t| t.min(p.header.time)));
                if let Some(l) = self.labels.get_mut(barcode) {
                    l.last_time = Some(l.last_time.map_or(p.header.time, |t| t.max(p.header.time)));
                }
                rep.damage.extend(p.damage.iter().cloned());
                let list = self
                    .parts
                    .entry(Uuid::from_bytes(p.header.image_uuid))
                    .or_default();
                if !list
                    .iter()
                    .any(|q| q.barcode == p.barcode && q.tape_file == p.tape_file)
                {
                    list.push(*p);
                }
            }
            FileScan::Snapshot { header, block } => {
                self.snapshots.push(SnapshotLocation {
                    barcode: barcode.to_string(),
                    tape_file,
                    block,
                    session_uuid: Some(Uuid::from_bytes(header.session_uuid)),
                    time: time_of(header.time),
                });
            }
            FileScan::EndOfSession(e) => {
                let s = self.session(Uuid::from_bytes(e.session_uuid), label);
                s.end_time = Some(s.end_time.map_or(e.time, |t| t.max(e.time)));
                if let Some(l) = self.labels.get_mut(barcode) {
                    l.last_time = Some(l.last_time.map_or(e.time, |t| t.max(e.time)));
                }
            }
            FileScan::Empty => {}
            FileScan::Unknown(d) => rep.damage.push(d),
        }
    }
}

/// How the rebuild gets at a cartridge: load it in a library, or the one cartridge in a
/// standalone drive.
pub trait Cartridges {
    /// Run `f` on a drive holding `barcode`, then put the cartridge away.
    fn with_cartridge(
        &mut self,
        barcode: &str,
        f: &mut dyn FnMut(&mut dyn TapeDrive) -> Result<()>,
    ) -> Result<()>;
}

/// Cartridges of a tape library (loaded into a free drive, put back afterwards).
pub struct InLibrary<'a> {
    pub cat: &'a Catalog,
    pub lib: &'a mut dyn TapeLibrary,
}

impl Cartridges for InLibrary<'_> {
    fn with_cartridge(
        &mut self,
        barcode: &str,
        f: &mut dyn FnMut(&mut dyn TapeDrive) -> Result<()>,
    ) -> Result<()> {
        let location = self.cat.media(barcode)?.map(|m| m.location);
        let mut m = mount(self.lib, barcode, location.as_deref())?;
        let r = f(m.drive.as_mut());
        let u = unmount(self.lib, m);
        r?;
        u
    }
}

/// The cartridge in a standalone drive (no changer): its barcode is the one on its label.
pub struct InDrive<'a> {
    pub drive: &'a mut dyn TapeDrive,
    pub barcode: String,
}

impl<'a> InDrive<'a> {
    /// Read the label of the loaded cartridge to learn its barcode.
    pub fn new(drive: &'a mut dyn TapeDrive) -> Result<Self> {
        let barcode = match read_label(drive).context("reading the label in the drive")? {
            LabelRead::Label(l) => l.barcode,
            LabelRead::Blank => {
                return Err(Error::MediaNeeded(format!(
                    "the cartridge in {} is blank",
                    drive.name()
                )))
            }
            LabelRead::Foreign(d) => {
                return Err(Error::MediaNeeded(format!(
                    "the cartridge in {} is not a tapevault cartridge: {d}",
                    drive.name()
                )))
            }
        };
        Ok(InDrive { drive, barcode })
    }
}

impl Cartridges for InDrive<'_> {
    fn with_cartridge(
        &mut self,
        barcode: &str,
        f: &mut dyn FnMut(&mut dyn TapeDrive) -> Result<()>,
    ) -> Result<()> {
        if barcode != self.barcode {
            return Err(Error::MediaNeeded(format!(
                "cartridge {barcode} is needed; {} holds {}",
                self.drive.name(),
                self.barcode
            )));
        }
        f(self.drive)
    }
}

/// Rebuild (or complete) the catalog from cartridges. Errors that stop everything
/// (catalog, library) are `Err`; per-cartridge trouble is in the report. A cartridge
/// whose key is missing is skipped and named in `missing_keys`.
pub fn rebuild(
    cat: &Catalog,
    carts: &mut dyn Cartridges,
    opts: &RebuildOptions,
    keys: &mut KeySource<'_>,
    line: &mut dyn FnMut(&str),
) -> Result<RebuildReport> {
    let mut rep = RebuildReport::default();
    let mut col = Collected::default();
    let mut seen = HashSet::new();
    let mut buf = Vec::new();
    for bc in &opts.barcodes {
        if !seen.insert(bc.clone()) {
            continue;
        }
        let started = std::time::Instant::now();
        let mut out = None;
        let r = carts.with_cartridge(bc, &mut |drive| {
            out = Some(read_cartridge(
                cat, drive, bc, opts.scan, keys, &mut col, &mut rep, &mut buf, line,
            )?);
            Ok(())
        });
        let r = r.and_then(|()| {
            out.take()
                .ok_or_else(|| Error::Failed("cartridge not read".into()))
        });
        let mut cr = match r {
            Ok(cr) => cr,
            Err(Error::Key(msg)) => {
                line(&format!("{bc}: {msg}"));
                rep.missing_keys.push(msg.clone());
                CartridgeReport {
                    barcode: bc.clone(),
                    method: Method::KeyMissing,
                    pool: None,
                    media_set: None,
                    set_sequence: None,
                    key_fingerprint: None,
                    snapshot_file: None,
                    fallback_reason: None,
                    files_scanned: 0,
                    bytes_scanned: 0,
                    seconds: 0.0,
                    note: Some(msg),
                }
            }
            Err(e) => return Err(e).with_context(|| format!("reading cartridge {bc}")),
        };
        cr.seconds = started.elapsed().as_secs_f64();
        rep.cartridges.push(cr);
    }
    // Tape files after a cartridge's newest snapshot: covered if some snapshot placed
    // the image part there; otherwise scan them.
    let tails = std::mem::take(&mut col.tails);
    for (bc, files) in tails {
        let mut todo = Vec::new();
        for (f, head) in files {
            let covered = match &head {
                FileHead::Image(h) => {
                    cat.segments(Uuid::from_bytes(h.image_uuid))?
                        .iter()
                        .any(|s| s.barcode == bc && s.tape_file == f)
                        || cat
                            .image(Uuid::from_bytes(h.image_uuid))?
                            .is_some_and(|i| i.records == 0 && i.status == ImageStatus::Complete)
                }
                FileHead::Snapshot(_) | FileHead::EndOfSession(_) | FileHead::Empty => true,
                FileHead::EndOfData | FileHead::Other(_) => false,
            };
            if !covered {
                todo.push(f);
            }
        }
        if todo.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        line(&format!(
            "{bc}: tape file(s) {} are not in any catalog snapshot; scanning them",
            todo.iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let Some(label) = col.labels.get(&bc).map(|l| l.label.clone()) else {
            continue;
        };
        let (mut n, mut bytes) = (0u64, 0u64);
        carts
            .with_cartridge(&bc, &mut |drive| {
                for f in &todo {
                    tape::goto_file(drive, *f)?;
                    let s = tape::scan_file(drive, &bc, &mut buf, &mut bytes)?;
                    n += 1;
                    col.add_file(&label, &bc, *f, s.file, &mut rep);
                }
                Ok(())
            })
            .with_context(|| format!("scanning the tail of cartridge {bc}"))?;
        if let Some(cr) = rep.cartridges.iter_mut().find(|c| c.barcode == bc) {
            cr.files_scanned += n;
            cr.bytes_scanned += bytes;
            cr.seconds += started.elapsed().as_secs_f64();
        }
    }
    merge_collected(cat, keys, col, &mut rep)?;
    // A cartridge that snapshots say holds images but that reads blank or foreign now
    // (overwritten, relabelled, wrong cartridge in the barcode): say so loudly.
    for c in &rep.cartridges {
        if matches!(c.method, Method::Blank | Method::Foreign) {
            let on = cat.images_on_media(&c.barcode)?;
            let kept = on
                .iter()
                .filter(|i| i.status == ImageStatus::Complete)
                .count();
            if kept > 0 {
                rep.lost.push(format!(
                    "cartridge {}: catalog snapshots place {kept} complete image(s) on it, but it reads as {}; those restore points are probably lost (`tapevault catalog check --media` lists them)",
                    c.barcode,
                    c.note.as_deref().unwrap_or("blank")
                ));
            }
        }
    }
    Ok(rep)
}

#[allow(clippy::too_many_arguments)]
fn read_cartridge(
    cat: &Catalog,
    drive: &mut dyn TapeDrive,
    bc: &str,
    want_scan: bool,
    keys: &mut KeySource<'_>,
    col: &mut Collected,
    rep: &mut RebuildReport,
    buf: &mut Vec<u8>,
    line: &mut dyn FnMut(&str),
) -> Result<CartridgeReport> {
    let bc = bc.to_string();
    let mut cr = CartridgeReport {
        barcode: bc.clone(),
        method: Method::Blank,
        pool: None,
        media_set: None,
        set_sequence: None,
        key_fingerprint: None,
        snapshot_file: None,
        fallback_reason: None,
        files_scanned: 0,
        bytes_scanned: 0,
        seconds: 0.0,
        note: None,
    };
    let label = match read_label(drive).with_context(|| format!("reading the label of {bc}"))? {
        LabelRead::Blank => {
            line(&format!("{bc}: blank"));
            return Ok(cr);
        }
        LabelRead::Foreign(d) => {
            line(&format!("{bc}: not a tapevault cartridge: {d}"));
            cr.method = Method::Foreign;
            cr.note = Some(d);
            return Ok(cr);
        }
        LabelRead::Label(l) => l,
    };
    if label.barcode != bc {
        line(&format!(
            "{bc}: the label says barcode {} (the cartridge was relabelled by hand?); using {bc}",
            label.barcode
        ));
    }
    cr.pool = Some(label.pool_name.clone());
    cr.media_set = nonzero(label.media_set_uuid);
    cr.set_sequence = cr.media_set.map(|_| label.set_sequence);
    cr.key_fingerprint = label.key_fingerprint.map(|f| crypto::to_hex(&f));
    if let Some(fp) = label.key_fingerprint {
        keys.need(fp, &label.escrow, &bc)?;
    }
    let end = tape::find_end(drive, buf)?;
    let eod_file = if end.eod.block_in_file > 0 {
        end.eod.file + 1
    } else {
        end.eod.file
    };
    col.labels.insert(
        bc.clone(),
        LabelSeen {
            label: label.clone(),
            eod_file,
            early_warning: end.early_warning,
            last_time: end.last_eos.as_ref().map(|(_, e)| e.time),
            bytes: 0,
        },
    );
    let mut scan_reason = if want_scan {
        None
    } else {
        match &end.last_eos {
            None if eod_file <= 1 => None,
            None => {
                // Only parts of sessions that ended on other cartridges (or were
                // interrupted): their snapshots place these files; what none of them
                // covers is scanned after all cartridges were read.
                col.tails.push((bc.clone(), end.tail.clone()));
                cr.method = Method::Covered;
                line(&format!(
                    "{bc}: no catalog snapshot of its own; its {} tape file(s) are checked against the other cartridges' snapshots",
                    end.tail.len()
                ));
                return Ok(cr);
            }
            Some((f, eos)) if *f < 2 => Some(format!(
                "the end-of-session marker in tape file {f} has no snapshot before it (session {})",
                Uuid::from_bytes(eos.session_uuid)
            )),
            Some((f, eos)) => {
                match tape::read_snapshot(drive, f - 1, &keys.ring, buf)? {
                    Err(t) => Some(format!("the catalog snapshot in tape file {} is unusable: {}", f - 1, t.0)),
                    Ok(s) if s.header.session_uuid != eos.session_uuid => Some(format!(
                        "the catalog snapshot in tape file {} belongs to session {}, the end-of-session marker after it to {}",
                        f - 1,
                        Uuid::from_bytes(s.header.session_uuid),
                        Uuid::from_bytes(eos.session_uuid)
                    )),
                    Ok(s) => match cat.merge_snapshot(&s.plain) {
                        Ok(r) => {
                            add_merge(&mut rep.merged, r);
                            col.snapshots.push(SnapshotLocation {
                                barcode: bc.clone(),
                                tape_file: f - 1,
                                block: s.block,
                                session_uuid: Some(Uuid::from_bytes(s.header.session_uuid)),
                                time: time_of(s.header.time),
                            });
                            cr.method = Method::Snapshot;
                            cr.snapshot_file = Some(f - 1);
                            line(&format!("{bc}: merged the catalog snapshot in tape file {}", f - 1));
                            if !end.tail.is_empty() {
                                col.tails.push((bc.clone(), end.tail.clone()));
                            }
                            None
                        }
                        Err(crate::catalog::CatalogError::BadSnapshot(e)) => Some(format!(
                            "the catalog snapshot in tape file {} does not parse: {e}",
                            f - 1
                        )),
                        Err(e) => return Err(e.into()),
                    },
                }
            }
        }
    };
    if cr.method == Method::Snapshot {
        return Ok(cr);
    }
    if let Some(r) = scan_reason.take() {
        line(&format!("{bc}: {r}; scanning every tape file"));
        rep.problems.push(format!("cartridge {bc}: {r}"));
        cr.fallback_reason = Some(r);
    }
    if eod_file <= 1 {
        cr.method = Method::Scan;
        cr.note = Some("labelled, nothing written after the label".into());
        return Ok(cr);
    }
    cr.method = Method::Scan;
    tape::goto_file(drive, 1)?;
    let mut bytes = 0u64;
    loop {
        let f = drive.position().context("reading the position")?.file;
        let s = tape::scan_file(drive, &bc, buf, &mut bytes)?;
        if matches!(s.file, FileScan::Empty) && !s.more {
            break;
        }
        cr.files_scanned += 1;
        col.add_file(&label, &bc, f, s.file, rep);
        if !s.more {
            break;
        }
    }
    cr.bytes_scanned = bytes;
    if let Some(l) = col.labels.get_mut(&bc) {
        l.bytes = bytes;
    }
    line(&format!(
        "{bc}: scanned {} tape files ({})",
        cr.files_scanned,
        crate::cli::human_bytes(bytes)
    ));
    Ok(cr)
}

/// Turn what was collected into catalog rows and merge them.
fn merge_collected(
    cat: &Catalog,
    keys: &KeySource<'_>,
    col: Collected,
    rep: &mut RebuildReport,
) -> Result<()> {
    // Pools and media sets from the labels.
    let mut sets: BTreeMap<Uuid, MediaSetRow> = BTreeMap::new();
    for (bc, l) in &col.labels {
        let fp = l.label.key_fingerprint.map(|f| crypto::to_hex(&f));
        let created = time_of(l.label.label_time);
        let pool = PoolRow {
            name: l.label.pool_name.clone(),
            key_name: fp.as_ref().map(|f| keys.name_of(f)),
            key_fingerprint: fp,
            compression: Compression::Zstd(3),
            retention_days: None,
            allocation: Allocation::Continue,
            worm: false,
            escrow: !l.label.escrow.is_empty(),
            created,
        };
        add_merge(&mut rep.merged, cat.merge_pool(&pool)?);
        if let Some(set) = nonzero(l.label.media_set_uuid) {
            let last = l.last_time.map(time_of);
            let e = sets.entry(set).or_insert_with(|| MediaSetRow {
                uuid: set,
                pool: l.label.pool_name.clone(),
                created,
                last_write: last,
                closed: false,
                format_major: tape_formats::FORMAT_MAJOR as u32,
            });
            e.created = e.created.min(created);
            e.last_write = e.last_write.max(last);
            if e.pool != l.label.pool_name {
                rep.problems.push(format!(
                    "cartridge {bc}: media set {set} is in pool {} on this label and {} on another",
                    l.label.pool_name, e.pool
                ));
            }
        }
    }
    for s in sets.values() {
        add_merge(&mut rep.merged, cat.merge_media_set(s)?);
    }
    for (bc, l) in &col.labels {
        let local = cat.media(bc)?;
        let set = nonzero(l.label.media_set_uuid);
        let row = MediaRow {
            barcode: bc.clone(),
            volume_uuid: Some(Uuid::from_bytes(l.label.volume_uuid)),
            pool: Some(l.label.pool_name.clone()),
            media_set_uuid: set,
            seq_in_set: set.map(|_| l.label.set_sequence),
            state: if l.early_warning {
                MediaState::Full
            } else {
                MediaState::Writable
            },
            location: local
                .as_ref()
                .map(|m| m.location.clone())
                .unwrap_or_default(),
            labelled_at: Some(time_of(l.label.label_time)),
            last_written: l.last_time.map(time_of),
            next_tape_file: l.eod_file.max(1),
            bytes_written: l.bytes,
            errors: local.as_ref().map(|m| m.errors).unwrap_or(0),
        };
        match cat.merge_media(&row) {
            Ok(r) => {
                add_merge(&mut rep.merged, r);
                cat.raise_next_tape_file(bc, row.next_tape_file)?;
            }
            Err(e) => rep
                .problems
                .push(format!("cartridge {bc}: not merged: {e}")),
        }
    }
    // Sessions seen with images.
    for (uuid, s) in &col.sessions {
        if !s.has_images {
            continue;
        }
        let row = SessionRow {
            uuid: *uuid,
            pool: s.pool.clone(),
            media_set_uuid: s.set,
            started: time_of(s.first_time.or(s.end_time).unwrap_or(0)),
            finished: s.end_time.map(time_of),
            status: if s.end_time.is_some() {
                SessionStatus::Complete
            } else {
                SessionStatus::Failed
            },
        };
        add_merge(&mut rep.merged, cat.merge_session(&row)?);
    }
    // Images: join their parts across cartridges, with the parts earlier rebuilds read
    // from cartridges not read in this one (a box of tapes is often read in batches).
    let read_now: HashSet<&str> = col.labels.keys().map(|b| b.as_str()).collect();
    // What earlier rebuilds kept of the cartridges read now is replaced by what they
    // hold now (a cartridge may have been overwritten since).
    for bc in &read_now {
        cat.drop_scanned_parts_on(bc)?;
    }
    for (uuid, mut parts) in col.parts {
        for earlier in cat.scanned_parts(uuid)? {
            match PartScan::from_stored(&earlier) {
                Ok(p) => parts.push(p),
                Err(e) => rep.problems.push(format!(
                    "image {uuid}: part {} that an earlier rebuild read on {} is unusable ({e}); read that cartridge again",
                    earlier.part, earlier.barcode
                )),
            }
        }
        parts.sort_by_key(|p| (p.header.part, p.barcode.clone(), p.tape_file));
        let (dump, found) = build_image(cat, uuid, &parts, &col.sessions, &read_now)?;
        if let Some(n) = &found.note {
            // A failed image is a fact of the media, not a problem of this rebuild.
            if !matches!(found.status, ImageStatus::Complete | ImageStatus::Failed) {
                rep.problems.push(format!("image {uuid}: {n}"));
            }
        }
        match cat.merge_image(&dump) {
            Ok(r) => add_merge(&mut rep.merged, r),
            Err(e) => rep
                .problems
                .push(format!("image {uuid}: could not be merged: {e}")),
        }
        // Keep what this run read of an image that is not whole, so a rebuild that
        // reads its other cartridges can join the parts; forget it once whole.
        // A failed image is never joined later either.
        let whole = matches!(cat.image(uuid)?, Some(i) if i.status == ImageStatus::Complete);
        if whole || found.status == ImageStatus::Failed {
            cat.drop_scanned_parts(uuid)?;
        } else {
            // The parts read in this run: those on the cartridges read now (the kept
            // rows of those cartridges were dropped above).
            let mut fresh = Vec::new();
            for p in parts
                .iter()
                .filter(|p| read_now.contains(p.barcode.as_str()))
            {
                match p.to_stored() {
                    Ok(s) => fresh.push(s),
                    Err(e) => rep.problems.push(format!(
                        "image {uuid}: part {} on {} cannot be kept for a later rebuild: {e}",
                        p.header.part, p.barcode
                    )),
                }
            }
            cat.save_scanned_parts(&fresh)?;
        }
        rep.images_scanned.push(found);
    }
    // Damage a scan found marks the images built on the damaged one too (whichever
    // order they were merged in), so none of them is restored from or built on.
    for found in &rep.images_scanned {
        if found.status == ImageStatus::Corrupt {
            if let Some(img) = cat.image(found.image)? {
                if img.status == ImageStatus::Corrupt {
                    let note = img.note.unwrap_or_else(|| "damaged on tape".into());
                    cat.mark_corrupt(found.image, &note)?;
                }
            }
        }
    }
    for s in &col.snapshots {
        if cat.media(&s.barcode)?.is_some() {
            cat.record_snapshot(s)?;
        }
    }
    Ok(())
}

fn build_image(
    cat: &Catalog,
    uuid: Uuid,
    parts: &[PartScan],
    sessions: &HashMap<Uuid, SessionSeen>,
    read_now: &HashSet<&str>,
) -> Result<(ImageDump, ImageFound)> {
    let h0 = &parts[0].header;
    let mut notes: Vec<String> = Vec::new();
    let mut joiner = PartJoiner::new();
    let mut joined = true;
    let damaged: u64 = parts
        .iter()
        .map(|p| p.damage.len() as u64 + p.damaged_earlier)
        .sum();
    if h0.part != 0 {
        notes.push(format!(
            "part 0 is missing (the parts found start at part {})",
            h0.part
        ));
        joined = false;
    }
    for p in parts {
        if !joined {
            break;
        }
        match &p.trailer {
            None => {
                notes.push(format!(
                    "part {} on {} tape file {} has no trailer (the write was interrupted)",
                    p.header.part, p.barcode, p.tape_file
                ));
                joined = false;
            }
            Some(t) => {
                if let Err(e) = joiner.accept(&p.header, t) {
                    notes.push(format!("{e}"));
                    joined = false;
                }
            }
        }
    }
    let complete = joined && joiner.is_complete();
    if joined && !complete {
        if let Err(e) = joiner.finish() {
            notes.push(e.to_string());
        }
    }
    if damaged > 0 {
        notes.insert(
            0,
            format!("{damaged} damaged or missing record(s) on tape (see the rebuild report)"),
        );
    }
    let session_uuid = Uuid::from_bytes(h0.session_uuid);
    let cut_off = if damaged == 0 && joined && !complete {
        ended_at_end_of_media(cat, parts, session_uuid, sessions, read_now)?
    } else {
        None
    };
    if let Some(why) = &cut_off {
        // Not "missing": the part the trailer announces was never written.
        notes.retain(|n| !n.contains("missing"));
        notes.push(why.clone());
    }
    let status = if damaged > 0 {
        ImageStatus::Corrupt
    } else if complete {
        ImageStatus::Complete
    } else if cut_off.is_some() {
        ImageStatus::Failed
    } else {
        ImageStatus::Incomplete
    };
    let last_trailer = parts.iter().rev().find_map(|p| p.trailer.as_ref());
    let pool_name = match sessions.get(&Uuid::from_bytes(h0.session_uuid)) {
        Some(s) => Some(s.pool.clone()),
        None => cat
            .session(Uuid::from_bytes(h0.session_uuid))?
            .map(|s| s.pool),
    };
    let compression = match h0.compression {
        WireCompression::None => Compression::Off,
        WireCompression::Zstd => match pool_name.as_deref().map(|p| cat.pool(p)) {
            Some(Ok(Some(PoolRow {
                compression: c @ Compression::Zstd(_),
                ..
            }))) => c,
            _ => Compression::Zstd(3),
        },
    };
    let key_fingerprint = h0.cipher.key_fingerprint().map(|f| crypto::to_hex(&f));
    // The session's end: seen in this run, or known from an earlier one (its
    // end-of-session marker may be on a cartridge read in another batch).
    let end_time = match sessions.get(&session_uuid).and_then(|s| s.end_time) {
        Some(t) => Some(time_of(t)),
        None => cat.session(session_uuid)?.and_then(|s| s.finished),
    };
    let row = ImageRow {
        uuid,
        disk_uuid: Uuid::from_bytes(h0.disk_uuid),
        vm_name: Some(h0.vm_name.clone()).filter(|v| !v.is_empty()),
        kind: match h0.kind {
            WireKind::Full => ImageKind::Full,
            WireKind::Incremental => ImageKind::Incremental,
            WireKind::Copy => ImageKind::Copy,
        },
        parent_uuid: h0.parent_image_uuid.map(Uuid::from_bytes),
        change_id: Some(h0.change_id.clone()).filter(|c| !c.is_empty()),
        from_change_id: h0.from_change_id.clone(),
        disk_size: h0.disk_size,
        block_size: h0.tracking_block_size,
        session_uuid: Some(Uuid::from_bytes(h0.session_uuid)),
        pool: pool_name,
        key_fingerprint,
        compression,
        started: time_of(h0.time),
        finished: end_time,
        status,
        records: parts.iter().map(|p| p.records).sum(),
        plain_bytes: parts.iter().map(|p| p.data_bytes).sum(),
        stored_bytes: parts.iter().map(|p| p.stored_bytes).sum(),
        content_digest: if complete {
            last_trailer.map(|t| crypto::to_hex(&t.digest))
        } else {
            None
        },
        digest_list: None,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    };
    let extents = if complete && damaged == 0 {
        let mut v: Vec<catalog::Extent> = Vec::new();
        for p in parts {
            for e in &p.coverage {
                match v.last_mut() {
                    Some(last)
                        if last.is_zero == e.is_zero && last.offset + last.length == e.offset =>
                    {
                        last.length += e.length
                    }
                    _ => v.push(*e),
                }
            }
        }
        v
    } else {
        Vec::new()
    };
    let segments: Vec<_> = parts
        .iter()
        .flat_map(|p| p.segments.iter().cloned())
        .collect();
    let mut cartridges: Vec<String> = Vec::new();
    for p in parts {
        if !cartridges.contains(&p.barcode) {
            cartridges.push(p.barcode.clone());
        }
    }
    let found = ImageFound {
        image: uuid,
        disk: row.disk_uuid,
        status,
        parts: parts.len() as u32,
        cartridges,
        note: row.note.clone(),
    };
    Ok((
        ImageDump {
            image: row,
            segments,
            extents,
        },
        found,
    ))
}

/// Whether an image whose parts all joined, but whose last part says it goes on on the
/// next volume, was cut off there: its backup ran out of cartridges (end of medium on
/// the last volume, none left to continue on) and failed. That is so when the last
/// part's cartridge was read in this run, no later volume of its media set is known
/// (neither read now nor recorded in the catalog, e.g. in a vault), and the image's
/// session never wrote its end-of-session marker. Returns why, or `None`.
fn ended_at_end_of_media(
    cat: &Catalog,
    parts: &[PartScan],
    session: Uuid,
    sessions: &HashMap<Uuid, SessionSeen>,
    read_now: &HashSet<&str>,
) -> Result<Option<String>> {
    let Some(last) = parts.last() else {
        return Ok(None);
    };
    if !read_now.contains(last.barcode.as_str()) {
        return Ok(None);
    }
    let ended = sessions.get(&session).and_then(|s| s.end_time).is_some()
        || cat
            .session(session)?
            .is_some_and(|s| s.status == SessionStatus::Complete);
    if ended {
        return Ok(None);
    }
    let Some(media) = cat.media(&last.barcode)? else {
        return Ok(None);
    };
    let (Some(set), Some(seq)) = (media.media_set_uuid, media.seq_in_set) else {
        return Ok(None);
    };
    let later = cat
        .media_in_set(set)?
        .into_iter()
        .any(|m| m.seq_in_set.is_some_and(|q| q > seq));
    if later {
        return Ok(None);
    }
    Ok(Some(format!(
        "the backup failed at the end of cartridge {} (volume {seq}, the last of media set {set}): the part that was to follow was never written and the session has no end-of-session marker",
        last.barcode
    )))
}
