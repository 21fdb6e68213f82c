//! Verifying one cartridge: every tape file (volume label, image parts, catalog
//! snapshots, end-of-session markers) walked and reported; damage is reported by block
//! and the walk goes on.

use std::collections::HashMap;

use serde::Serialize;
use tape_formats::{
    decode_block, Block, ContentDigest, DigestScheme, PartChecker, ReadStatus, StreamProblem,
    TrailerStatus,
};
use uuid::Uuid;

use crate::catalog::{Catalog, ImageStatus};
use crate::codec::{KeyRing, OpenError, Opener};
use crate::crypto::to_hex;
use crate::error::{Error, ExitCode, Result};
use crate::events::{Event, Events, Finished};
use crate::media::allocate::sync_inventory;
use crate::restore::{check_pull_list, MediaReader, PullItem};
use tape_devices::changer::TapeLibrary;

/// Most problems listed per tape file; a badly damaged file would otherwise produce
/// one line per block.
pub const MAX_PROBLEMS_PER_FILE: usize = 100;

/// What one tape file of a cartridge holds and whether it checked out.
#[derive(Debug, Clone, Serialize)]
pub struct TapeFileReport {
    pub file: u64,
    /// volume label, image part, catalog snapshot, end of session, empty, unknown.
    pub kind: &'static str,
    /// Logical object number of its first block, when the drive reports positions.
    pub first_block: Option<u64>,
    pub blocks: u64,
    pub image: Option<Uuid>,
    pub part: Option<u32>,
    pub session: Option<Uuid>,
    /// Data records or snapshot chunks read.
    pub records: u64,
    /// Trailer status of an image part: complete, continued, aborted.
    pub trailer: Option<&'static str>,
    /// Whether a digest (content digest of an image's first part, snapshot digest) was
    /// computed and matched.
    pub digest_checked: bool,
    pub ok: bool,
    pub problems: Vec<String>,
    /// Expected conditions that are not damage (e.g. the part of an image the catalog
    /// knows failed).
    pub notes: Vec<String>,
}

impl TapeFileReport {
    fn new(file: u64, first_block: Option<u64>) -> Self {
        TapeFileReport {
            file,
            kind: "empty",
            first_block,
            blocks: 0,
            image: None,
            part: None,
            session: None,
            records: 0,
            trailer: None,
            digest_checked: false,
            ok: true,
            problems: Vec::new(),
            notes: Vec::new(),
        }
    }
    fn problem(&mut self, block: Option<u64>, p: impl std::fmt::Display) {
        if self.problems.len() < MAX_PROBLEMS_PER_FILE {
            match block {
                Some(b) => self.problems.push(format!("block {b}: {p}")),
                None => self.problems.push(p.to_string()),
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelInfo {
    pub volume: Uuid,
    pub media_set: Uuid,
    pub set_sequence: u32,
    pub pool: String,
    pub key_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MediaVerifyReport {
    pub barcode: String,
    pub label: Option<LabelInfo>,
    pub files: Vec<TapeFileReport>,
    pub ok: bool,
    /// Images this verification marked corrupt in the catalog.
    pub marked_corrupt: Vec<Uuid>,
    /// Why the walk stopped before the end of data (an unreadable block), if it did.
    pub aborted: Option<String>,
    /// The tape file being read and its image, for a walk that stops inside it.
    #[serde(skip)]
    current: Option<(u64, Option<u64>, Option<Uuid>)>,
}

fn status_name(s: TrailerStatus) -> &'static str {
    match s {
        TrailerStatus::Complete => "complete",
        TrailerStatus::Continued => "continued",
        TrailerStatus::Aborted => "aborted",
    }
}

fn plus(pos: Option<u64>, n: u64) -> Option<u64> {
    pos.map(|p| p + n)
}

/// Verify every tape file of a cartridge. `events` hears the progress in bytes read and
/// each tape file as it is checked.
pub fn verify_media(
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    barcode: &str,
    events: &dyn Events,
) -> Result<MediaVerifyReport> {
    let (_, present) = sync_inventory(cat, lib)?;
    let row = cat.media(barcode)?;
    // A blank tape is damage only where the catalog expects data: a cartridge it
    // knows as blank (or does not know) may well be.
    let expect_blank = match &row {
        None => true,
        Some(m) => m.state == crate::catalog::MediaState::Blank || m.labelled_at.is_none(),
    };
    let location = row.as_ref().map(|m| m.location.clone()).unwrap_or_default();
    let total = row.map(|m| m.bytes_written).unwrap_or(0);
    check_pull_list(&[PullItem {
        barcode: barcode.to_string(),
        location: location.clone(),
        in_library: present.contains(barcode),
        images: Vec::new(),
    }])?;
    let mut reader = MediaReader::new(lib, HashMap::from([(barcode.to_string(), location)]));
    events.task(format!("verify {barcode}"), total);
    reader.report_progress(events);
    let mut report = MediaVerifyReport {
        barcode: barcode.to_string(),
        label: None,
        files: Vec::new(),
        ok: true,
        marked_corrupt: Vec::new(),
        aborted: None,
        current: None,
    };
    let r = walk(
        &mut reader,
        keys,
        barcode,
        expect_blank,
        &mut report,
        events,
    );
    let released = reader.release();
    events.emit(Event::TaskEnded);
    match r {
        Ok(()) => {}
        // An unreadable block (media error, oversized block): the walk cannot go on
        // past it, but what was found so far is reported and judged.
        Err(e) if e.exit_code() == ExitCode::Integrity => {
            let (file, start, image) = report.current.take().unwrap_or((0, None, None));
            let mut f = TapeFileReport::new(file, start);
            f.kind = if image.is_some() {
                "image part"
            } else {
                "unknown"
            };
            f.image = image;
            f.problem(None, &e);
            report.files.push(f);
            report.aborted = Some(e.to_string());
        }
        Err(e) => return Err(e),
    }
    released?;
    // Judge each file against what the catalog knows, and mark damaged images corrupt.
    for f in &mut report.files {
        if f.problems.is_empty() {
            continue;
        }
        if let Some(id) = f.image {
            match cat.image(id)? {
                Some(img) if matches!(img.status, ImageStatus::Failed | ImageStatus::Running) => {
                    // The catalog already knows this image never completed.
                    f.notes.append(&mut f.problems);
                    f.notes
                        .push(format!("image {id} is {} in the catalog", img.status));
                    continue;
                }
                Some(img) if img.status != ImageStatus::Corrupt => {
                    cat.mark_corrupt(
                        id,
                        &format!(
                            "verify --barcode {barcode}: tape file {}: {}",
                            f.file,
                            f.problems.join("; ")
                        ),
                    )?;
                    report.marked_corrupt.push(id);
                }
                Some(_) => {}
                None => {}
            }
        }
        f.ok = false;
        report.ok = false;
    }
    Ok(report)
}

fn walk(
    reader: &mut MediaReader<'_>,
    keys: &KeyRing,
    barcode: &str,
    expect_blank: bool,
    report: &mut MediaVerifyReport,
    events: &dyn Events,
) -> Result<()> {
    reader.seek_file(barcode, 0)?;
    let mut opener = Opener::new()?;
    let mut plain = Vec::new();
    let mut file = 0u64;
    loop {
        report.current = Some((file, None, None));
        let (start, st) = reader.read()?;
        report.current = Some((file, start, None));
        let mut f = TapeFileReport::new(file, start);
        let n = match st {
            ReadStatus::EndOfData => {
                if file == 0 && expect_blank {
                    f.kind = "blank";
                    f.notes.push(
                        "the cartridge is blank, as the catalog says: nothing to verify".into(),
                    );
                    report.files.push(f);
                } else if file == 0 {
                    f.problem(
                        start,
                        "the cartridge is blank (no volume label), but the catalog says it was labelled",
                    );
                    report.files.push(f);
                }
                break;
            }
            ReadStatus::Filemark => {
                f.problem(start, "empty tape file");
                report.files.push(f);
                file += 1;
                continue;
            }
            ReadStatus::Block(n) => n,
        };
        f.blocks = 1;
        let decoded = decode_block(reader.block(n));
        let ended_by_filemark = match decoded {
            Ok(Block::VolumeLabel(l)) => {
                f.kind = "volume label";
                if file != 0 {
                    f.problem(start, "a volume label outside tape file 0");
                }
                if l.barcode != barcode {
                    f.problem(
                        start,
                        format!("the label names barcode {}, not {barcode}", l.barcode),
                    );
                }
                report.label = Some(LabelInfo {
                    volume: Uuid::from_bytes(l.volume_uuid),
                    media_set: Uuid::from_bytes(l.media_set_uuid),
                    set_sequence: l.set_sequence,
                    pool: l.pool_name.clone(),
                    key_fingerprint: l.key_fingerprint.map(|k| to_hex(&k)),
                });
                rest_of_file(reader, &mut f, start, "after the volume label")?
            }
            Ok(Block::ImageHeader(h)) => {
                if file == 0 {
                    f.problem(start, "tape file 0 is not a volume label");
                }
                f.kind = "image part";
                f.image = Some(Uuid::from_bytes(h.image_uuid));
                report.current = Some((file, start, f.image));
                f.part = Some(h.part);
                f.session = Some(Uuid::from_bytes(h.session_uuid));
                let mut checker = PartChecker::new();
                let h_block = Block::ImageHeader(h.clone());
                checker.check(0, Ok(&h_block));
                image_part(
                    reader,
                    keys,
                    &mut opener,
                    &mut plain,
                    &mut f,
                    start,
                    h.part,
                    h.cipher.key_fingerprint(),
                    checker,
                )?
            }
            Ok(Block::SnapshotHeader(h)) => {
                f.kind = "catalog snapshot";
                f.session = Some(Uuid::from_bytes(h.session_uuid));
                snapshot(reader, keys, &mut opener, &mut plain, &mut f, start, &h)?
            }
            Ok(Block::EndOfSession(e)) => {
                f.kind = "end of session";
                f.session = Some(Uuid::from_bytes(e.session_uuid));
                rest_of_file(reader, &mut f, start, "after the end-of-session marker")?
            }
            Ok(other) => {
                f.kind = "unknown";
                f.problem(
                    start,
                    format!("tape file starts with a {}", other.kind_name()),
                );
                rest_of_file(reader, &mut f, start, "")?
            }
            Err(e) => {
                f.kind = "unknown";
                f.problem(start, format!("corrupt first block: {e}"));
                rest_of_file(reader, &mut f, start, "")?
            }
        };
        events.emit(Event::Finished(Finished::TapeFile { barcode, file: &f }));
        report.files.push(f);
        report.current = None;
        if !ended_by_filemark {
            break;
        }
        file += 1;
    }
    Ok(())
}

/// Read to the end of the tape file; anything there is a problem. Returns whether the
/// file ended with a filemark (false: end of data).
fn rest_of_file(
    reader: &mut MediaReader<'_>,
    f: &mut TapeFileReport,
    start: Option<u64>,
    what: &str,
) -> Result<bool> {
    let mut extra = 0u64;
    loop {
        let (_, st) = reader.read()?;
        match st {
            ReadStatus::Block(_) => {
                f.blocks += 1;
                extra += 1;
            }
            ReadStatus::Filemark | ReadStatus::EndOfData => {
                if extra > 0 && !what.is_empty() {
                    f.problem(start, format!("{extra} unexpected block(s) {what}"));
                }
                return Ok(st == ReadStatus::Filemark);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn image_part(
    reader: &mut MediaReader<'_>,
    keys: &KeyRing,
    opener: &mut Opener,
    plain: &mut Vec<u8>,
    f: &mut TapeFileReport,
    start: Option<u64>,
    part: u32,
    cipher_key: Option<[u8; 16]>,
    mut checker: PartChecker,
) -> Result<bool> {
    // The content digest in a trailer covers every part so far: from this cartridge
    // alone it can be checked for part 0 only.
    let digest_key = keys.digest_key_of(cipher_key.as_ref()).map_err(|fp| {
        Error::Key(format!(
            "tape file {}: the image is encrypted with key {fp}, which is not unlocked: import it (`tapevault key import FILE`) and give its passphrase",
            f.file
        ))
    })?;
    // Of the scheme the header names (its format major).
    let scheme = checker
        .header()
        .map_or(DigestScheme::NEWEST, |h| h.digest_scheme);
    let mut digest = (part == 0).then(|| ContentDigest::with_key(scheme, digest_key));
    let mut rel = 1u64;
    loop {
        let pos = plus(start, rel);
        let (_, st) = reader.read()?;
        let n = match st {
            ReadStatus::Block(n) => n,
            ReadStatus::Filemark | ReadStatus::EndOfData => {
                if let Some(p) = checker.end(rel) {
                    f.problem(pos, crate::restore::problem_text(&p));
                }
                return Ok(st == ReadStatus::Filemark);
            }
        };
        f.blocks += 1;
        rel += 1;
        let decoded = decode_block(reader.block(n));
        let verdict = checker.check(rel - 1, decoded.as_ref());
        if let Some(p) = &verdict.problem {
            f.problem(pos, crate::restore::problem_text(p));
        }
        if !verdict.accept {
            if matches!(verdict.problem, Some(StreamProblem::Corrupt { .. })) {
                digest = None;
            }
            continue;
        }
        match decoded {
            Ok(Block::Data(rec)) => {
                f.records += 1;
                if rec.fields.crypto.key_fingerprint() != cipher_key {
                    f.problem(
                        pos,
                        "record encrypted differently from its image header (not written by this image's backup)",
                    );
                    digest = None;
                    continue;
                }
                match opener.open_data(keys, &rec, plain) {
                    Ok(()) => {
                        if let Some(d) = digest.as_mut() {
                            if let Err(e) = d.update_record(&rec.extents, plain) {
                                f.problem(pos, e);
                                digest = None;
                            }
                        }
                    }
                    Err(OpenError::MissingKey(fp)) => {
                        return Err(Error::Key(format!(
                            "tape file {} block {}: records are encrypted with key {fp}, which is not unlocked: import it (`tapevault key import FILE`) and give its passphrase",
                            f.file,
                            pos.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
                        )));
                    }
                    Err(e) => {
                        f.problem(pos, format!("corrupt record: {e}"));
                        digest = None;
                    }
                }
            }
            Ok(Block::ImageTrailer(t)) => {
                f.trailer = Some(status_name(t.status));
                if t.status == TrailerStatus::Aborted {
                    f.problem(pos, "the writer aborted this image");
                }
                match &digest {
                    Some(d) if f.problems.is_empty() => {
                        if d.finalize() == t.digest {
                            f.digest_checked = true;
                        } else {
                            f.problem(pos, "content digest differs from the trailer's");
                        }
                    }
                    Some(_) => {}
                    None if part > 0 => f.notes.push(format!(
                        "part {part} continues an image from another cartridge: its content digest covers earlier parts too; verify the image with --image"
                    )),
                    None => {}
                }
            }
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn snapshot(
    reader: &mut MediaReader<'_>,
    keys: &KeyRing,
    opener: &mut Opener,
    plain: &mut Vec<u8>,
    f: &mut TapeFileReport,
    start: Option<u64>,
    h: &tape_formats::SnapshotHeader,
) -> Result<bool> {
    // The snapshot digest is keyed when the snapshot is encrypted (see snapshot_digest).
    let mut hasher = Some(match keys.digest_key_for(&h.cipher) {
        Ok(None) => blake3::Hasher::new(),
        Ok(Some(k)) => blake3::Hasher::new_keyed(k),
        Err(fp) => {
            return Err(Error::Key(format!(
            "tape file {}: the catalog snapshot is encrypted with key {fp}, which is not unlocked",
            f.file
        )))
        }
    });
    let mut next_seq = 0u64;
    let mut total = 0u64;
    let mut trailer_seen = false;
    let mut rel = 1u64;
    loop {
        let pos = plus(start, rel);
        let (_, st) = reader.read()?;
        let n = match st {
            ReadStatus::Block(n) => n,
            ReadStatus::Filemark | ReadStatus::EndOfData => {
                if !trailer_seen {
                    f.problem(pos, "the snapshot ends without its trailer (truncated)");
                }
                return Ok(st == ReadStatus::Filemark);
            }
        };
        f.blocks += 1;
        rel += 1;
        if trailer_seen {
            f.problem(pos, "block after the snapshot trailer");
            continue;
        }
        match decode_block(reader.block(n)) {
            Ok(Block::SnapshotChunk(c)) => {
                f.records += 1;
                if c.fields.session_uuid != h.session_uuid {
                    f.problem(pos, "chunk of another session's snapshot");
                    hasher = None;
                    continue;
                }
                if c.fields.sequence != next_seq {
                    f.problem(
                        pos,
                        format!("chunk {} where {next_seq} was expected", c.fields.sequence),
                    );
                    hasher = None;
                }
                next_seq = c.fields.sequence + 1;
                match opener.open_chunk(keys, &c, plain) {
                    Ok(()) => {
                        total += plain.len() as u64;
                        if let Some(hs) = hasher.as_mut() {
                            hs.update(plain);
                        }
                    }
                    Err(OpenError::MissingKey(fp)) => {
                        return Err(Error::Key(format!(
                            "tape file {}: the catalog snapshot is encrypted with key {fp}, which is not unlocked",
                            f.file
                        )));
                    }
                    Err(e) => {
                        f.problem(pos, format!("corrupt snapshot chunk: {e}"));
                        hasher = None;
                    }
                }
            }
            Ok(Block::SnapshotTrailer(t)) => {
                trailer_seen = true;
                if t.session_uuid != h.session_uuid {
                    f.problem(pos, "trailer of another session's snapshot");
                }
                if t.chunk_count != next_seq || t.chunk_count != f.records {
                    f.problem(
                        pos,
                        format!(
                            "trailer counts {} chunks, {} were read",
                            t.chunk_count, f.records
                        ),
                    );
                }
                if t.total_plain_len != h.total_plain_len {
                    f.problem(pos, "trailer and header disagree on the snapshot length");
                }
                if let Some(hs) = hasher.take() {
                    if total != t.total_plain_len {
                        f.problem(
                            pos,
                            format!(
                                "snapshot is {total} bytes, the trailer says {}",
                                t.total_plain_len
                            ),
                        );
                    } else if *hs.finalize().as_bytes() == t.digest {
                        f.digest_checked = true;
                    } else {
                        f.problem(pos, "snapshot digest differs from the trailer's");
                    }
                }
            }
            Ok(other) => f.problem(
                pos,
                format!("unexpected {} in a catalog snapshot", other.kind_name()),
            ),
            Err(e) => {
                f.problem(pos, format!("corrupt block: {e}"));
                hasher = None;
            }
        }
    }
}
