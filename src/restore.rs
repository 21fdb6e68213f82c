//! The restore job: rebuild a disk at a point in time from a full image and its ordered
//! incrementals, newest extent wins, synthesized while restoring.
//!
//! 1. [`prepare`]: the chain from the catalog, the plan ([`crate::extents::plan_restore`]:
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

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tape_formats::{
    decode_block, Block, BlockSource, ContentDigest, ExtentKind, ImageHeader, PartChecker,
    PartJoiner, ReadStatus, TrailerStatus,
};
use uuid::Uuid;

use crate::catalog::{At, Catalog, ImageKind, ImageRow, Segment, Skipped};
use crate::codec::{KeyRing, OpenError, Opener};
use crate::crypto::to_hex;
use crate::error::{Context, Error, Result};
use crate::extents::{plan_restore, CoveredExtent, ImagePlan};
use crate::media::allocate::sync_inventory;
use crate::media::{mount, DriveSource, Mounted};
use crate::progress::Progress;
use tape_devices::changer::TapeLibrary;

/// Largest run of zeros written at once to a block device for a zero extent: bounded
/// memory whatever the extent's size.
pub const ZERO_CHUNK: usize = 1024 * 1024;

/// Pieces queued for the output writer thread: each at most a record's plain data
/// (960 KiB), so the queue holds a few MiB at most.
pub const WRITE_QUEUE_DEPTH: usize = 8;

// ---------------------------------------------------------------- pull list

/// One cartridge a job needs, in the order it will be read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PullItem {
    pub barcode: String,
    /// Where the catalog last saw it (`slot 3`, `vault:offsite`, `outside`, ...).
    pub location: String,
    /// Whether the library holds it now.
    pub in_library: bool,
    /// The images read from it.
    pub images: Vec<Uuid>,
}

/// Human lines for a pull list.
pub fn pull_list_text(list: &[PullItem]) -> String {
    let mut s = format!("cartridges needed ({}), in order:\n", list.len());
    for (i, p) in list.iter().enumerate() {
        let loc = if p.location.is_empty() {
            "unknown location"
        } else {
            &p.location
        };
        let state = if p.in_library {
            "in the library"
        } else {
            "NOT IN THE LIBRARY"
        };
        s.push_str(&format!(
            "  {}. {} ({loc}; {state}) for {} image(s)\n",
            i + 1,
            p.barcode,
            p.images.len()
        ));
    }
    s
}

/// Error (exit 4) when any cartridge of the pull list is not in the library.
pub fn check_pull_list(list: &[PullItem]) -> Result<()> {
    let missing: Vec<String> = list
        .iter()
        .filter(|p| !p.in_library)
        .map(|p| {
            if p.location.is_empty() {
                p.barcode.clone()
            } else {
                format!("{} (last known location: {})", p.barcode, p.location)
            }
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::MediaNeeded(format!(
        "{} of {} needed cartridge(s) are not in the library: {}; put them into a mail slot, run `tapevault library import` and try again",
        missing.len(),
        list.len(),
        missing.join(", ")
    )))
}

fn build_pull_list(
    cat: &Catalog,
    present: &std::collections::HashSet<String>,
    reads: &[(Uuid, Vec<&Segment>)],
) -> Result<Vec<PullItem>> {
    let mut list: Vec<PullItem> = Vec::new();
    for (image, segs) in reads {
        for s in segs {
            let item = match list.iter_mut().position(|p| p.barcode == s.barcode) {
                Some(i) => &mut list[i],
                None => {
                    let location = cat
                        .media(&s.barcode)?
                        .map(|m| m.location)
                        .unwrap_or_default();
                    list.push(PullItem {
                        barcode: s.barcode.clone(),
                        location,
                        in_library: present.contains(&s.barcode),
                        images: Vec::new(),
                    });
                    list.last_mut().expect("just pushed")
                }
            };
            if !item.images.contains(image) {
                item.images.push(*image);
            }
        }
    }
    Ok(list)
}

// ---------------------------------------------------------------- reading media

/// Reads blocks from cartridges mounted on demand, knowing the logical position, and
/// positioning with LOCATE or, when the drive lacks it, by rewinding and spacing.
pub struct MediaReader<'a> {
    lib: &'a mut dyn TapeLibrary,
    cur: Option<Cur>,
    buf: Vec<u8>,
    /// Catalog locations, for the message when a cartridge is not in the library.
    locations: HashMap<String, String>,
    /// Cartridges mounted so far, in order.
    pub mounted: Vec<String>,
    /// Counts the bytes of every block read (hidden unless a job sets a bar).
    pub progress: Progress,
}

struct Cur {
    m: Mounted,
    locate: bool,
    /// Logical object number the next read returns, when known.
    pos: Option<u64>,
    /// Tape file `pos` is in, when known and no filemark has been passed since.
    file: Option<u64>,
}

impl<'a> MediaReader<'a> {
    pub fn new(lib: &'a mut dyn TapeLibrary, locations: HashMap<String, String>) -> Self {
        MediaReader {
            lib,
            cur: None,
            buf: Vec::with_capacity(tape_formats::MAX_BLOCK_SIZE),
            locations,
            mounted: Vec::new(),
            progress: Progress::hidden(),
        }
    }

    /// The cartridge mounted now.
    pub fn barcode(&self) -> Option<&str> {
        self.cur.as_ref().map(|c| c.m.barcode.as_str())
    }

    /// Mount `barcode` unless it is mounted already.
    pub fn mount(&mut self, barcode: &str) -> Result<()> {
        if self.barcode() == Some(barcode) {
            return Ok(());
        }
        self.release()?;
        let loc = self.locations.get(barcode).cloned();
        let mut m = mount::mount(self.lib, barcode, loc.as_deref())?;
        let locate = match m.drive.capabilities() {
            Ok(c) => c.locate,
            Err(_) => false,
        };
        self.cur = Some(Cur {
            m,
            locate,
            pos: None,
            file: None,
        });
        self.mounted.push(barcode.to_string());
        Ok(())
    }

    /// Position so that the next read returns logical object `target` of `barcode`,
    /// which lies in tape file `tape_file` whose first block is object `file_start`.
    pub fn seek(
        &mut self,
        barcode: &str,
        tape_file: u64,
        file_start: u64,
        target: u64,
    ) -> Result<()> {
        self.mount(barcode)?;
        let cur = self.cur.as_mut().expect("mounted");
        if cur.pos == Some(target) {
            return Ok(());
        }
        let drive = cur.m.drive.as_mut();
        let ctx = || format!("positioning {barcode} at block {target} (tape file {tape_file})");
        if cur.locate {
            drive.locate(target).with_context(ctx)?;
        } else if let (Some(pos), Some(file)) = (cur.pos, cur.file) {
            if file == tape_file && target > pos {
                drive
                    .space_blocks((target - pos) as i64)
                    .with_context(ctx)?;
            } else {
                space_from_bot(drive, tape_file, file_start, target).with_context(ctx)?;
            }
        } else {
            space_from_bot(drive, tape_file, file_start, target).with_context(ctx)?;
        }
        cur.pos = Some(target);
        cur.file = Some(tape_file);
        Ok(())
    }

    /// Position at the start of tape file `n` (rewind and space filemarks).
    pub fn seek_file(&mut self, barcode: &str, n: u64) -> Result<()> {
        self.mount(barcode)?;
        let cur = self.cur.as_mut().expect("mounted");
        let drive = cur.m.drive.as_mut();
        drive
            .rewind()
            .with_context(|| format!("rewinding {barcode}"))?;
        if n > 0 {
            drive
                .space_filemarks(n as i64)
                .with_context(|| format!("spacing to tape file {n} of {barcode}"))?;
        }
        cur.pos = drive.position().ok().map(|p| p.block);
        cur.file = Some(n);
        Ok(())
    }

    /// Read the next block; returns its logical position (if known) and what was read.
    /// The block's bytes are [`Self::block`].
    pub fn read(&mut self) -> Result<(Option<u64>, ReadStatus)> {
        let cur = self.cur.as_mut().expect("a cartridge is mounted");
        let pos = cur.pos;
        let mut src = DriveSource::new(cur.m.drive.as_mut(), pos.unwrap_or(0));
        let st = src.read_block(&mut self.buf).map_err(|e| {
            let at = format!(
                "reading {} at block {}",
                cur.m.barcode,
                pos.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            );
            match e {
                // Larger than any tapevault record: not ours, or damaged.
                tape_devices::drive::DriveError::BufferTooSmall { block_len, .. } => {
                    Error::Integrity(format!(
                        "{at}: a {block_len}-byte block, larger than any tapevault record"
                    ))
                }
                e => Error::from(e).context_msg(at),
            }
        })?;
        let next = src.block;
        match st {
            ReadStatus::Block(n) => {
                cur.pos = pos.map(|_| next);
                self.progress.inc(n as u64);
            }
            ReadStatus::Filemark => {
                cur.pos = pos.map(|_| next);
                cur.file = cur.file.map(|f| f + 1);
            }
            ReadStatus::EndOfData => {}
        }
        Ok((pos, st))
    }

    /// The bytes of the block last read (valid after `read` returned `Block(n)`).
    pub fn block(&self, n: usize) -> &[u8] {
        self.buf.get(..n).unwrap_or(&self.buf[..])
    }

    /// Put the mounted cartridge away.
    pub fn release(&mut self) -> Result<()> {
        if let Some(c) = self.cur.take() {
            mount::unmount(self.lib, c.m)?;
        }
        Ok(())
    }
}

fn space_from_bot(
    drive: &mut dyn tape_devices::drive::TapeDrive,
    tape_file: u64,
    file_start: u64,
    target: u64,
) -> std::result::Result<(), tape_devices::drive::DriveError> {
    drive.rewind()?;
    if tape_file > 0 {
        drive.space_filemarks(tape_file as i64)?;
    }
    if target > file_start {
        drive.space_blocks((target - file_start) as i64)?;
    }
    Ok(())
}

trait ContextMsg {
    fn context_msg(self, c: String) -> Error;
}

impl ContextMsg for Error {
    fn context_msg(self, c: String) -> Error {
        Error::Context {
            context: c,
            source: Box::new(self),
        }
    }
}

// ---------------------------------------------------------------- reading one image

/// What reading one image found.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRead {
    pub image: Uuid,
    /// Data records read and checked.
    pub records_read: u64,
    /// Records of the image not read (in segments that supplied nothing needed).
    pub records_skipped: u64,
    pub segments_read: usize,
    pub segments_skipped: usize,
    /// Whether the content digest over the whole image was computed and matched the
    /// trailer and the catalog (only possible when every record was read).
    pub digest_checked: bool,
    pub cartridges: Vec<String>,
}

/// Where a failure happened, for messages.
fn at(image: Uuid, barcode: &str, block: Option<u64>) -> String {
    match block {
        Some(b) => format!("image {image}, cartridge {barcode}, block {b}"),
        None => format!("image {image}, cartridge {barcode}"),
    }
}

fn open_err(e: OpenError, image: Uuid, barcode: &str, block: Option<u64>) -> Error {
    match e {
        OpenError::MissingKey(fp) => Error::Key(format!(
            "{}: the record is encrypted with key {fp}, which is not unlocked: import it (`tapevault key import FILE`) and give its passphrase",
            at(image, barcode, block)
        )),
        other => Error::Integrity(format!(
            "{}: corrupt record: {other}",
            at(image, barcode, block)
        )),
    }
}

/// The key fingerprint every record of `image` must carry (None: clear image).
fn expected_key(image: &ImageRow) -> Result<Option<[u8; 16]>> {
    match &image.key_fingerprint {
        None => Ok(None),
        Some(hex) => crate::backup::fp_bytes(hex).map(Some).ok_or_else(|| {
            Error::Failed(format!(
                "image {} has a malformed key fingerprint {hex:?} in the catalog",
                image.uuid
            ))
        }),
    }
}

/// A record must be protected as its image is: an encrypted image's records are all
/// encrypted under the image's key (a clear record, CRC-valid, is not authenticated).
fn check_record_key(
    rec: &tape_formats::DataRecord<'_>,
    expected: Option<[u8; 16]>,
    image: Uuid,
    barcode: &str,
    block: Option<u64>,
) -> Result<()> {
    let found = rec.fields.crypto.key_fingerprint();
    if found != expected {
        let name = |k: Option<[u8; 16]>| match k {
            Some(k) => format!("key {}", to_hex(&k)),
            None => "no encryption".to_string(),
        };
        return Err(Error::Integrity(format!(
            "{}: the record carries {}, the image is written with {}: it was not written by this image's backup",
            at(image, barcode, block),
            name(found),
            name(expected)
        )));
    }
    Ok(())
}

/// A stream problem's text without its leading "block N: " (N counts within the tape
/// file); callers name the absolute block themselves.
pub(crate) fn problem_text(p: &tape_formats::StreamProblem) -> String {
    let t = p.to_string();
    if let Some(rest) = t.strip_prefix("block ") {
        if let Some((n, msg)) = rest.split_once(": ") {
            if n.bytes().all(|b| b.is_ascii_digit()) {
                return msg.to_string();
            }
        }
    }
    t
}

/// Group an image's segments by part, in part order; check they are self-consistent.
fn parts_of(image: &ImageRow, segs: &[Segment]) -> Result<Vec<Vec<Segment>>> {
    let mut parts: Vec<Vec<Segment>> = Vec::new();
    for s in segs {
        if s.last_block - s.first_block != s.last_seq - s.first_seq {
            return Err(Error::Failed(format!(
                "catalog segment of image {} on {} (blocks {}..={}, records {}..={}) is inconsistent: run `tapevault catalog check`",
                image.uuid, s.barcode, s.first_block, s.last_block, s.first_seq, s.last_seq
            )));
        }
        match parts.last_mut() {
            Some(p) if p[0].part == s.part => {
                if p[0].barcode != s.barcode || p[0].tape_file != s.tape_file {
                    return Err(Error::Failed(format!(
                        "catalog segments of image {} part {} name two places ({} file {} and {} file {}): run `tapevault catalog check`",
                        image.uuid, s.part, p[0].barcode, p[0].tape_file, s.barcode, s.tape_file
                    )));
                }
                p.push(s.clone());
            }
            _ => parts.push(vec![s.clone()]),
        }
    }
    Ok(parts)
}

/// Read an image. `needed` says which segments must be read (restore: those holding
/// data the image supplies); when all are needed, every part is read whole from its
/// header to its trailer with the format's stream checks ([`PartChecker`],
/// [`PartJoiner`]) and the content digest is compared with the final trailer and the
/// catalog. Otherwise each needed segment is located and its records checked one by
/// one (CRCs, authentication, image, part, sequence). `on_data` receives every data
/// extent's authenticated plain bytes. Any problem is an error: Integrity (exit 3)
/// naming image, cartridge and block; Key (exit 5) for a missing key.
pub fn read_image(
    reader: &mut MediaReader<'_>,
    keys: &KeyRing,
    opener: &mut Opener,
    image: &ImageRow,
    segments: &[Segment],
    needed: &dyn Fn(&Segment) -> bool,
    on_data: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<ImageRead> {
    let parts = parts_of(image, segments)?;
    let key = expected_key(image)?;
    let wanted: Vec<bool> = segments.iter().map(needed).collect();
    let all = wanted.iter().all(|&w| w);
    let mut out = ImageRead {
        image: image.uuid,
        records_read: 0,
        records_skipped: 0,
        segments_read: 0,
        segments_skipped: 0,
        digest_checked: false,
        cartridges: Vec::new(),
    };
    let mut plain = Vec::new();
    if all {
        // An encrypted image's content digest is keyed: reading it whole needs the
        // image's key (as decrypting its records does).
        let digest_key = keys.digest_key_of(key.as_ref()).map_err(|fp| {
            Error::Key(format!(
                "image {} is encrypted with key {fp}, which is not available: import it with `tapevault key import FILE`",
                image.uuid
            ))
        })?;
        if segments.is_empty() {
            // An image without records (an incremental with no changes): nothing on
            // tape to read; its digest is that of no records.
            let empty = to_hex(&ContentDigest::with_key(digest_key).finalize());
            out.digest_checked = image.content_digest.as_deref() == Some(empty.as_str());
            return Ok(out);
        }
        let mut joiner = PartJoiner::new();
        let mut digest = ContentDigest::with_key(digest_key);
        for part in &parts {
            let first = &part[0];
            if !out.cartridges.contains(&first.barcode) {
                out.cartridges.push(first.barcode.clone());
            }
            let header_block = first.first_block.checked_sub(1).ok_or_else(|| {
                Error::Failed(format!(
                    "catalog segment of image {} starts at block 0: run `tapevault catalog check`",
                    image.uuid
                ))
            })?;
            reader.seek(&first.barcode, first.tape_file, header_block, header_block)?;
            read_part_whole(
                reader,
                keys,
                opener,
                image,
                first,
                &mut joiner,
                &mut digest,
                &mut plain,
                &mut out,
                on_data,
            )?;
            out.segments_read += part.len();
        }
        let bc = parts
            .last()
            .map(|p| p[0].barcode.clone())
            .unwrap_or_default();
        let last = joiner
            .finish()
            .map_err(|e| Error::Integrity(format!("{}: {e}", at(image.uuid, &bc, None))))?;
        let got = digest.finalize();
        if got != last.digest {
            return Err(Error::Integrity(format!(
                "{}: content digest of the records read ({}) differs from the trailer's ({})",
                at(image.uuid, &bc, None),
                to_hex(&got),
                to_hex(&last.digest)
            )));
        }
        match image.content_digest.as_deref() {
            Some(d) if d.eq_ignore_ascii_case(&to_hex(&got)) => {}
            Some(d) => {
                return Err(Error::Integrity(format!(
                    "image {}: content digest on tape ({}) differs from the catalog's ({d})",
                    image.uuid,
                    to_hex(&got)
                )))
            }
            None => {
                return Err(Error::Failed(format!(
                    "image {} has no content digest in the catalog",
                    image.uuid
                )))
            }
        }
        if image.records != 0 && out.records_read != image.records {
            return Err(Error::Integrity(format!(
                "image {}: {} records on tape, the catalog says {}",
                image.uuid, out.records_read, image.records
            )));
        }
        out.digest_checked = true;
        return Ok(out);
    }
    // Header block of each part's tape file (for drives that space instead of locating).
    let file_starts: HashMap<u32, u64> = parts
        .iter()
        .map(|p| (p[0].part, p[0].first_block.saturating_sub(1)))
        .collect();
    for (idx, s) in segments.iter().enumerate() {
        let file_start = file_starts[&s.part];
        {
            if !wanted[idx] {
                out.segments_skipped += 1;
                out.records_skipped += s.last_seq - s.first_seq + 1;
                continue;
            }
            if !out.cartridges.contains(&s.barcode) {
                out.cartridges.push(s.barcode.clone());
            }
            reader.seek(&s.barcode, s.tape_file, file_start, s.first_block)?;
            for (i, seq) in (s.first_seq..=s.last_seq).enumerate() {
                let block = s.first_block + i as u64;
                let (_, st) = reader
                    .read()
                    .with_context(|| at(image.uuid, &s.barcode, Some(block)))?;
                let n = match st {
                    ReadStatus::Block(n) => n,
                    other => {
                        return Err(Error::Integrity(format!(
                            "{}: expected data record {seq}, found {}",
                            at(image.uuid, &s.barcode, Some(block)),
                            if other == ReadStatus::Filemark {
                                "a filemark"
                            } else {
                                "end of data"
                            }
                        )))
                    }
                };
                let rec = match decode_block(reader.block(n)) {
                    Ok(Block::Data(r)) => r,
                    Ok(other) => {
                        return Err(Error::Integrity(format!(
                            "{}: expected data record {seq}, found a {}",
                            at(image.uuid, &s.barcode, Some(block)),
                            other.kind_name()
                        )))
                    }
                    Err(e) => {
                        return Err(Error::Integrity(format!(
                            "{}: corrupt record: {e}",
                            at(image.uuid, &s.barcode, Some(block))
                        )))
                    }
                };
                let f = &rec.fields;
                if f.image_uuid != *image.uuid.as_bytes() || f.part != s.part || f.sequence != seq {
                    return Err(Error::Integrity(format!(
                        "{}: expected record {seq} of part {} of this image, found record {} of part {} of image {}",
                        at(image.uuid, &s.barcode, Some(block)),
                        s.part,
                        f.sequence,
                        f.part,
                        Uuid::from_bytes(f.image_uuid)
                    )));
                }
                check_record_key(&rec, key, image.uuid, &s.barcode, Some(block))?;
                opener
                    .open_data(keys, &rec, &mut plain)
                    .map_err(|e| open_err(e, image.uuid, &s.barcode, Some(block)))?;
                deliver(&rec.extents, &plain, on_data)?;
                out.records_read += 1;
            }
            out.segments_read += 1;
        }
    }
    Ok(out)
}

/// Hand a record's data extents to `on_data` (zero extents carry no bytes).
fn deliver(
    extents: &[tape_formats::Extent],
    plain: &[u8],
    on_data: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut rest = plain;
    for e in extents {
        if e.kind == ExtentKind::Data {
            let n = e.length as usize;
            if n > rest.len() {
                return Err(Error::Integrity(
                    "record data shorter than its extents".into(),
                ));
            }
            let (this, tail) = rest.split_at(n);
            on_data(e.offset, this)?;
            rest = tail;
        }
    }
    Ok(())
}

/// Read one image part whole (the reader is at its header): header, every record,
/// trailer, filemark.
#[allow(clippy::too_many_arguments)]
fn read_part_whole(
    reader: &mut MediaReader<'_>,
    keys: &KeyRing,
    opener: &mut Opener,
    image: &ImageRow,
    first: &Segment,
    joiner: &mut PartJoiner,
    digest: &mut ContentDigest,
    plain: &mut Vec<u8>,
    out: &mut ImageRead,
    on_data: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let bc = first.barcode.clone();
    let header_block = first.first_block - 1;
    let mut checker = PartChecker::new();
    let mut header: Option<ImageHeader> = None;
    let mut rel = 0u64;
    loop {
        let block = header_block + rel;
        let (_, st) = reader
            .read()
            .with_context(|| at(image.uuid, &bc, Some(block)))?;
        let n = match st {
            ReadStatus::Block(n) => n,
            ReadStatus::Filemark | ReadStatus::EndOfData => {
                if let Some(p) = checker.end(rel) {
                    return Err(Error::Integrity(format!(
                        "{}: part {} is truncated: {}",
                        at(image.uuid, &bc, Some(block)),
                        first.part,
                        problem_text(&p)
                    )));
                }
                return Ok(());
            }
        };
        let decoded = decode_block(reader.block(n));
        let verdict = checker.check(rel, decoded.as_ref());
        if let Some(p) = verdict.problem {
            return Err(Error::Integrity(format!(
                "{}: {}",
                at(image.uuid, &bc, Some(block)),
                problem_text(&p)
            )));
        }
        match decoded {
            Ok(Block::ImageHeader(h)) => {
                if h.image_uuid != *image.uuid.as_bytes() || h.part != first.part {
                    return Err(Error::Integrity(format!(
                        "{}: expected the header of part {} of this image, found part {} of image {}",
                        at(image.uuid, &bc, Some(block)),
                        first.part,
                        h.part,
                        Uuid::from_bytes(h.image_uuid)
                    )));
                }
                if h.cipher.key_fingerprint() != expected_key(image)? {
                    return Err(Error::Integrity(format!(
                        "{}: the image header's encryption differs from the catalog's key for this image",
                        at(image.uuid, &bc, Some(block))
                    )));
                }
                header = Some(h);
            }
            Ok(Block::Data(rec)) => {
                check_record_key(&rec, expected_key(image)?, image.uuid, &bc, Some(block))?;
                opener
                    .open_data(keys, &rec, plain)
                    .map_err(|e| open_err(e, image.uuid, &bc, Some(block)))?;
                digest.update_record(&rec.extents, plain).map_err(|e| {
                    Error::Integrity(format!("{}: {e}", at(image.uuid, &bc, Some(block))))
                })?;
                deliver(&rec.extents, plain, on_data)?;
                out.records_read += 1;
            }
            Ok(Block::ImageTrailer(t)) => {
                let h = header.as_ref().expect("checker accepted a header first");
                joiner.accept(h, &t).map_err(|e| {
                    Error::Integrity(format!("{}: {e}", at(image.uuid, &bc, Some(block))))
                })?;
                if t.status == TrailerStatus::Aborted {
                    return Err(Error::Integrity(format!(
                        "{}: the writer aborted this image",
                        at(image.uuid, &bc, Some(block))
                    )));
                }
                if digest.finalize() != t.digest {
                    return Err(Error::Integrity(format!(
                        "{}: content digest through part {} differs from its trailer's",
                        at(image.uuid, &bc, Some(block)),
                        t.part
                    )));
                }
            }
            _ => {
                return Err(Error::Integrity(format!(
                    "{}: unexpected block",
                    at(image.uuid, &bc, Some(block))
                )))
            }
        }
        rel += 1;
    }
}

// ---------------------------------------------------------------- the restore job

/// Everything decided before a cartridge moves.
pub struct Prepared {
    pub disk: Uuid,
    /// Oldest (the full) first, target last.
    pub chain: Vec<ImageRow>,
    pub plans: Vec<ImagePlan>,
    /// Each chain image's segments (tape order).
    pub segments: Vec<Vec<Segment>>,
    /// Chain indices in reading (media) order; images supplying nothing are left out.
    pub order: Vec<usize>,
    pub pull_list: Vec<PullItem>,
    /// Newer images at or before the point asked for that cannot be restored, newest
    /// first, with why (empty for `--image`).
    pub skipped: Vec<Skipped>,
    /// Set by [`run`] when an image failed its integrity checks: the image to mark.
    damaged: std::cell::Cell<Option<Uuid>>,
}

impl Prepared {
    pub fn target(&self) -> &ImageRow {
        self.chain.last().expect("a chain is never empty")
    }

    /// After [`run`] failed: the chain image whose records failed their integrity
    /// checks (to be marked with [`record_damage`]), if that was the failure.
    pub fn damaged_image(&self) -> Option<Uuid> {
        self.damaged.get()
    }

    /// Hex fingerprints of the keys the images to read need.
    pub fn key_fingerprints(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for &i in &self.order {
            if let Some(fp) = &self.chain[i].key_fingerprint {
                if !v.contains(fp) {
                    v.push(fp.clone());
                }
            }
        }
        v
    }

    /// Whether segment `s` of chain image `i` holds data the restore needs.
    fn needed(&self, i: usize, s: &Segment) -> bool {
        !self.plans[i].can_skip_segment(s.disk_start, s.disk_end.saturating_sub(s.disk_start))
    }
}

/// Resolve the chain, plan it, and build the pull list. Refreshes the catalog's view
/// of the library so the pull list says where each cartridge is.
pub fn prepare(cat: &Catalog, lib: &mut dyn TapeLibrary, disk: Uuid, at: At) -> Result<Prepared> {
    let (chain, skipped) = cat.restore_point(disk, at)?;
    let target_size = chain.last().expect("never empty").disk_size;
    let mut covered = Vec::with_capacity(chain.len());
    let mut segments = Vec::with_capacity(chain.len());
    for img in &chain {
        covered.push(
            cat.extents(img.uuid)?
                .into_iter()
                .map(|e| CoveredExtent {
                    offset: e.offset,
                    len: e.length,
                    is_zero: e.is_zero,
                })
                .collect::<Vec<_>>(),
        );
        segments.push(cat.segments(img.uuid)?);
    }
    let plan = plan_restore(&covered, target_size).map_err(|e| {
        Error::Failed(format!(
            "the catalog's extents of the restore chain are inconsistent: {e}"
        ))
    })?;
    if !plan.uncovered.is_empty() {
        let first = plan.uncovered.iter().next().expect("not empty");
        return Err(Error::Failed(format!(
            "no image of the restore chain of {} covers {} bytes of the disk (first at bytes {}..{}); the chain cannot be restored bit-identical",
            chain.last().expect("never empty").uuid,
            plan.uncovered.total_bytes(),
            first.offset,
            first.end()
        )));
    }
    let mut prepared = Prepared {
        disk,
        chain,
        plans: plan.images,
        segments,
        order: Vec::new(),
        pull_list: Vec::new(),
        skipped,
        damaged: std::cell::Cell::new(None),
    };
    // Media order: cartridges ranked by first use in chain order, then by block.
    let mut rank: HashMap<String, usize> = HashMap::new();
    let mut keyed: Vec<(usize, u64, usize)> = Vec::new();
    for i in 0..prepared.chain.len() {
        if prepared.plans[i].data.is_empty() {
            continue;
        }
        let first = prepared.segments[i]
            .iter()
            .find(|s| prepared.needed(i, s))
            .or(prepared.segments[i].first());
        let Some(first) = first else {
            return Err(Error::Failed(format!(
                "image {} supplies data but has no segments in the catalog",
                prepared.chain[i].uuid
            )));
        };
        let n = rank.len();
        let r = *rank.entry(first.barcode.clone()).or_insert(n);
        keyed.push((r, first.first_block, i));
    }
    keyed.sort();
    prepared.order = keyed.into_iter().map(|(_, _, i)| i).collect();
    let (_, present) = sync_inventory(cat, lib)?;
    let reads: Vec<(Uuid, Vec<&Segment>)> = prepared
        .order
        .iter()
        .map(|&i| {
            let segs: Vec<&Segment> = prepared.segments[i]
                .iter()
                .filter(|s| prepared.needed(i, s))
                .collect();
            (prepared.chain[i].uuid, segs)
        })
        .collect();
    prepared.pull_list = build_pull_list(cat, &present, &reads)?;
    Ok(prepared)
}

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
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub disk: Uuid,
    pub image: Uuid,
    /// The restored image's time, as `images` prints it.
    #[serde(serialize_with = "crate::timefmt::serde_show::time")]
    pub at: chrono::DateTime<chrono::Utc>,
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
}

/// Check a restore target before anything else happens: a block device (returns
/// true), a new file in an existing directory, an empty file, or with `force` a
/// non-empty regular file.
pub fn check_target(to: &Path, force: bool) -> Result<bool> {
    match std::fs::metadata(to) {
        Ok(m) if m.file_type().is_block_device() => Ok(true),
        Ok(m) if m.is_dir() => Err(Error::Usage(format!(
            "{} is a directory; give the path of the disk image to create",
            to.display()
        ))),
        Ok(m) if m.is_file() && m.len() > 0 && !force => Err(Error::Usage(format!(
            "{} exists and is not empty; give --force to replace it",
            to.display()
        ))),
        Ok(m) if !m.is_file() => Err(Error::Usage(format!(
            "{} is neither a regular file nor a block device",
            to.display()
        ))),
        Ok(_) => Ok(false),
        Err(_) => {
            let dir = match to.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dir.is_dir() {
                return Err(Error::Usage(format!(
                    "cannot create {}: {} is not a directory",
                    to.display(),
                    dir.display()
                )));
            }
            if to.file_name().is_none() {
                return Err(Error::Usage(format!("{} names no file", to.display())));
            }
            Ok(false)
        }
    }
}

/// Mark the image a failed restore found damaged (see [`Prepared::damaged_image`])
/// corrupt, with every image built on it, so the next restore and the next backup pass
/// it over. Returns the images marked, the damaged one first; empty when the failure
/// was not an integrity failure of one image.
pub fn record_damage(cat: &Catalog, p: &Prepared, err: &Error) -> Result<Vec<Uuid>> {
    let Some(image) = p.damaged_image() else {
        return Ok(Vec::new());
    };
    let mut marked = vec![image];
    marked.extend(cat.mark_corrupt(image, &format!("restore: {err}"))?);
    Ok(marked)
}

/// The output: a new sparse file, or a block device. A new file has no name until it
/// is complete where the filesystem allows (`O_TMPFILE`), so a killed restore leaves
/// nothing behind; elsewhere it is written under a temporary name with the writer's
/// pid, which the next restore into the same directory removes once that pid is gone.
struct Output {
    file: File,
    /// Where a regular file goes when complete.
    target: Option<NewFile>,
    device: bool,
}

struct NewFile {
    dir: PathBuf,
    to: PathBuf,
    /// The temporary name the data is written under; `None` while it has no name.
    named: Option<PathBuf>,
}

/// Prefix of the temporary names of restores into `name` (the pid follows).
fn temp_prefix(name: &str) -> String {
    format!(".{name}.tapevault-restore.")
}

/// Remove temporary files of earlier restores into `name` whose writer is gone.
fn sweep_stale_temps(dir: &Path, name: &str) {
    let prefix = temp_prefix(name);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let fname = entry.file_name();
        let Some(pid) = fname
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = pid > 0
            && !matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            );
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A file in `dir` with no name (`O_TMPFILE`), when the filesystem supports it and
/// `/proc/self/fd` is there to give it a name later.
fn unnamed_file(dir: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if !Path::new("/proc/self/fd").is_dir() {
        return None;
    }
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o666)
        .open(dir)
        .ok()
}

impl Output {
    fn open(to: &Path, size: u64, force: bool) -> Result<Output> {
        if check_target(to, force)? {
            let mut file = OpenOptions::new()
                .write(true)
                .open(to)
                .with_context(|| format!("opening block device {}", to.display()))?;
            let dev_size = file
                .seek(SeekFrom::End(0))
                .with_context(|| format!("reading the size of {}", to.display()))?;
            if dev_size < size {
                return Err(Error::Usage(format!(
                    "block device {} holds {dev_size} bytes, the disk is {size} bytes",
                    to.display()
                )));
            }
            return Ok(Output {
                file,
                target: None,
                device: true,
            });
        }
        let name = to
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{} names no file", to.display())))?
            .to_string_lossy()
            .into_owned();
        let dir = match to.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        sweep_stale_temps(&dir, &name);
        let tmp = dir.join(format!("{}{}", temp_prefix(&name), std::process::id()));
        let (file, named) = match unnamed_file(&dir) {
            Some(f) => (f, None),
            None => {
                let _ = std::fs::remove_file(&tmp);
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                (f, Some(tmp.clone()))
            }
        };
        let out = Output {
            file,
            target: Some(NewFile {
                dir,
                to: to.to_path_buf(),
                named,
            }),
            device: false,
        };
        out.file
            .set_len(size)
            .with_context(|| format!("sizing a new file for {} to {size} bytes", to.display()))?;
        Ok(out)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .with_context(|| format!("writing {} bytes at offset {offset}", buf.len()))
    }

    fn commit(mut self) -> Result<()> {
        use std::os::fd::AsRawFd;
        self.file.sync_all().context("flushing the restored disk")?;
        let Some(t) = self.target.as_mut() else {
            return Ok(());
        };
        let tmp = match &t.named {
            Some(tmp) => tmp.clone(),
            None => {
                // Give the complete file its temporary name (a hard link from the
                // descriptor), then rename it over the target, which may exist (--force).
                let name =
                    t.to.file_name()
                        .expect("checked")
                        .to_string_lossy()
                        .into_owned();
                let tmp = t
                    .dir
                    .join(format!("{}{}", temp_prefix(&name), std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                let fd_path = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
                nix::unistd::linkat(
                    None,
                    &fd_path,
                    None,
                    &tmp,
                    nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                )
                .map_err(|e| {
                    Error::Failed(format!("naming the restored disk {}: {e}", tmp.display()))
                })?;
                t.named = Some(tmp.clone());
                tmp
            }
        };
        std::fs::rename(&tmp, &t.to)
            .with_context(|| format!("renaming {} to {}", tmp.display(), t.to.display()))?;
        t.named = None;
        if let Ok(d) = File::open(&t.dir) {
            let _ = d.sync_all();
        }
        self.target = None;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // Not committed: never leave a plausible-looking partial file.
        if let Some(tmp) = self.target.take().and_then(|t| t.named) {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Where and how [`run`] writes.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// A new file (created sparse, under a temporary name until complete) or a block
    /// device.
    pub to: PathBuf,
    /// Replace an existing non-empty file.
    pub force: bool,
    /// Show a progress bar.
    pub interactive: bool,
}

/// Run a prepared restore into `opts.to`. The caller has checked the pull list
/// ([`check_pull_list`]) and unlocked the keys into `keys`.
pub fn run(
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    p: &Prepared,
    opts: &RestoreOptions,
    report_line: &mut dyn FnMut(&str),
) -> Result<RestoreReport> {
    let (to, force, interactive) = (opts.to.as_path(), opts.force, opts.interactive);
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
    let out = Output::open(to, size, force)?;
    let total: u64 = p.plans.iter().map(|pl| pl.data.total_bytes()).sum::<u64>()
        + if out.device {
            p.plans.iter().map(|pl| pl.zero.total_bytes()).sum::<u64>()
        } else {
            0
        };
    let progress = Progress::bytes(total, "restore", interactive);
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
                    let zeros = vec![0u8; ZERO_CHUNK];
                    for e in plan.zero.iter() {
                        let mut off = e.offset;
                        while off < e.end() {
                            let n = ((e.end() - off) as usize).min(ZERO_CHUNK);
                            out.write_at(&zeros[..n], off)?;
                            progress.inc(n as u64);
                            off += n as u64;
                        }
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
                });
            }
            for &i in &p.order {
                let img = &p.chain[i];
                let plan = &p.plans[i];
                progress.set_message(format!("image {}", &img.uuid.to_string()[..8]));
                let mut supplied = 0u64;
                let mut pieces: Vec<crate::extents::Extent> = Vec::new();
                let mut on_data = |offset: u64, bytes: &[u8]| -> Result<()> {
                    pieces.clear();
                    pieces.extend(plan.data.intersect_range(offset, bytes.len() as u64));
                    for x in &pieces {
                        let from = (x.offset - offset) as usize;
                        let mut buf = free_rx.try_recv().unwrap_or_default();
                        buf.clear();
                        buf.extend_from_slice(&bytes[from..from + x.len as usize]);
                        tx.send((x.offset, buf))
                            .map_err(|_| Error::Failed("the output writer stopped".into()))?;
                        supplied += x.len;
                        progress.inc(x.len);
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
                let line = format!(
                    "image {} ({}, {}): {} written from {} records{}",
                    img.uuid,
                    img.kind,
                    crate::timefmt::show(&img.started),
                    crate::cli::human_bytes(supplied),
                    read.records_read,
                    if read.digest_checked {
                        ", content digest verified".to_string()
                    } else {
                        format!(
                                ", {} records of superseded segments skipped (content digest not checked)",
                                read.records_skipped
                            )
                    }
                );
                if interactive {
                    progress.println(&line);
                } else {
                    report_line(&line);
                }
                if let Some(u) = uses[i].as_mut() {
                    u.read = Some(read);
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
    progress.finish();
    result?;
    released?;
    if out.device {
        bytes_written += zero_total;
    }
    let block_device = out.device;
    out.commit()?;
    Ok(RestoreReport {
        disk: p.disk,
        image: target.uuid,
        at: target.started,
        to: to.to_path_buf(),
        disk_size: size,
        block_device,
        bytes_written,
        zero_bytes: zero_total,
        pull_list: p.pull_list.clone(),
        images: uses.into_iter().flatten().collect(),
        skipped: p.skipped.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_before_anything_moves() {
        let d = tempfile::tempdir().unwrap();
        let new = d.path().join("new.img");
        assert!(!check_target(&new, false).unwrap());
        let empty = d.path().join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        assert!(!check_target(&empty, false).unwrap());
        let full = d.path().join("full.img");
        std::fs::write(&full, b"x").unwrap();
        assert_eq!(
            check_target(&full, false).unwrap_err().exit_code(),
            crate::error::ExitCode::Usage
        );
        assert!(!check_target(&full, true).unwrap());
        assert!(check_target(d.path(), true).is_err(), "a directory");
        assert!(check_target(&d.path().join("no/such/dir.img"), false).is_err());
    }

    #[test]
    fn a_failed_restore_leaves_no_file_and_a_committed_one_is_renamed() {
        let d = tempfile::tempdir().unwrap();
        let to = d.path().join("disk.img");
        {
            let out = Output::open(&to, 1 << 20, false).unwrap();
            out.write_at(b"abc", 4096).unwrap();
            // Dropped without commit.
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        let out = Output::open(&to, 1 << 20, false).unwrap();
        out.write_at(b"abc", 4096).unwrap();
        out.commit().unwrap();
        let got = std::fs::read(&to).unwrap();
        assert_eq!(got.len(), 1 << 20);
        assert_eq!(&got[4096..4099], b"abc");
        assert!(got[..4096].iter().all(|&b| b == 0));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn stream_problem_text_drops_the_in_file_position() {
        let p = tape_formats::StreamProblem::DuplicateRecord {
            position: 7,
            sequence: 3,
        };
        assert_eq!(problem_text(&p), "record 3 is a duplicate");
    }

    #[test]
    fn pull_list_names_missing_cartridges_and_their_locations() {
        let list = vec![
            PullItem {
                barcode: "A00001L9".into(),
                location: "slot 1".into(),
                in_library: true,
                images: vec![Uuid::nil()],
            },
            PullItem {
                barcode: "A00002L9".into(),
                location: "vault:offsite".into(),
                in_library: false,
                images: vec![Uuid::nil()],
            },
        ];
        let e = check_pull_list(&list).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::MediaNeeded);
        let m = e.to_string();
        assert!(m.contains("A00002L9") && m.contains("vault:offsite") && !m.contains("A00001L9"));
        let t = pull_list_text(&list);
        assert!(t.contains("1. A00001L9 (slot 1; in the library)"), "{t}");
        assert!(
            t.contains("2. A00002L9 (vault:offsite; NOT IN THE LIBRARY)"),
            "{t}"
        );
        assert!(check_pull_list(&list[..1]).is_ok());
    }
}
