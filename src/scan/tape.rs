//! Reading a mounted cartridge for disaster recovery: moving between tape files with
//! filemark spacing only (what every drive and st offer), the fast path to the newest
//! catalog snapshot, and the record-by-record scan of tape files.

use crate::catalog::ScannedPart;
use tape_formats::{
    decode_block, snapshot_digest, Block, BlockSource, EndOfSession, ExtentKind, ImageHeader,
    ImageTrailer, PartChecker, ReadStatus, SnapshotHeader, StreamProblem,
};
use uuid::Uuid;

use crate::catalog::{self, Segment};
use crate::codec::{KeyRing, Opener};
use crate::error::{Context, Error, Result};
use crate::media::segments::{Place, SegmentBuilder};
use crate::media::DriveSource;
use tape_devices::drive::{DriveError, Position, SpaceStop, TapeDrive};

/// Largest catalog snapshot the fast path accepts (plain bytes). A snapshot is held in
/// memory to be parsed; one row per ~32 MiB of backed-up disk keeps even a catalog of
/// petabytes far below this, and a damaged length field cannot make us allocate more.
pub const MAX_SNAPSHOT_LEN: u64 = 1 << 30;

/// Position at the first block of tape file `f`, using filemark spacing relative to the
/// current position (st's MTBSF n + MTFSF 1 trick), so no drive needs LOCATE.
pub fn goto_file(drive: &mut dyn TapeDrive, f: u64) -> Result<Position> {
    let ctx = || format!("moving to tape file {f}");
    if f == 0 {
        drive.rewind().with_context(ctx)?;
    } else {
        let p = drive.position().with_context(ctx)?;
        if f > p.file {
            drive
                .space_filemarks((f - p.file) as i64)
                .with_context(ctx)?;
        } else {
            let back = p.file - f + 1;
            drive.space_filemarks(-(back as i64)).with_context(ctx)?;
            drive.space_filemarks(1).with_context(ctx)?;
        }
    }
    let p = drive.position().with_context(ctx)?;
    if p.file != f || p.block_in_file != 0 {
        return Err(Error::Failed(format!(
            "moving to tape file {f} ended at file {} block {}",
            p.file, p.block_in_file
        )));
    }
    Ok(p)
}

/// Skip the rest of the current tape file. Returns false if end of data came first.
pub fn skip_file(drive: &mut dyn TapeDrive) -> Result<bool> {
    match drive.space_filemarks(1) {
        Ok(()) => Ok(true),
        Err(DriveError::SpaceStopped {
            stop: SpaceStop::EndOfData,
            ..
        }) => Ok(false),
        Err(e) => Err(Error::from(e)).context("spacing to the next tape file"),
    }
}

/// What the first block of a tape file is.
#[derive(Debug, Clone)]
pub enum FileHead {
    Image(ImageHeader),
    Snapshot(SnapshotHeader),
    EndOfSession(EndOfSession),
    /// An empty tape file (a filemark right away).
    Empty,
    EndOfData,
    /// Anything else, described.
    Other(String),
}

/// Read the first block of the tape file at the current position.
pub fn read_head(drive: &mut dyn TapeDrive, buf: &mut Vec<u8>) -> Result<FileHead> {
    let mut src = DriveSource::new(drive, 0);
    match src.read_block(buf) {
        Ok(ReadStatus::EndOfData) => Ok(FileHead::EndOfData),
        Ok(ReadStatus::Filemark) => Ok(FileHead::Empty),
        Ok(ReadStatus::Block(n)) => Ok(match decode_block(&buf[..n]) {
            Ok(Block::ImageHeader(h)) => FileHead::Image(h),
            Ok(Block::SnapshotHeader(h)) => FileHead::Snapshot(h),
            Ok(Block::EndOfSession(e)) => FileHead::EndOfSession(e),
            Ok(other) => FileHead::Other(format!("a {}", other.kind_name())),
            Err(e) => FileHead::Other(format!("an unreadable block ({e})")),
        }),
        Err(DriveError::MediaError { block, detail }) => Ok(FileHead::Other(format!(
            "a media error at logical block {block} ({detail})"
        ))),
        Err(e) => Err(Error::from(e)).context("reading the first block of a tape file"),
    }
}

/// The end of recorded data and what the tape files just before it are.
#[derive(Debug, Clone)]
pub struct TapeEnd {
    pub eod: Position,
    /// Tape file of the newest EndOfSession, and the marker.
    pub last_eos: Option<(u64, EndOfSession)>,
    /// Tape files after the newest EndOfSession (not covered by its snapshot), with
    /// their first block, oldest first. An unterminated last file is included.
    pub tail: Vec<(u64, FileHead)>,
    /// The drive reported early warning at end of data (the cartridge is full).
    pub early_warning: bool,
}

/// Space to end of data and walk back file by file (reading one block of each) to the
/// newest EndOfSession. Costs one block read per tape file written after it: nothing
/// that grows with the data on the cartridge.
pub fn find_end(drive: &mut dyn TapeDrive, buf: &mut Vec<u8>) -> Result<TapeEnd> {
    drive.space_to_eod().context("spacing to end of data")?;
    let eod = drive
        .position()
        .context("reading the position at end of data")?;
    let early_warning = drive.status().map(|s| s.early_warning).unwrap_or(false);
    let mut tail = Vec::new();
    if eod.block_in_file > 0 {
        // A tape file left open by an interrupted write.
        goto_file(drive, eod.file)?;
        tail.push((eod.file, read_head(drive, buf)?));
    }
    let mut last_eos = None;
    let mut f = eod.file;
    while f > 1 {
        f -= 1;
        goto_file(drive, f)?;
        match read_head(drive, buf)? {
            FileHead::EndOfSession(e) => {
                last_eos = Some((f, e));
                break;
            }
            h => tail.push((f, h)),
        }
    }
    tail.reverse();
    Ok(TapeEnd {
        eod,
        last_eos,
        tail,
        early_warning,
    })
}

/// Why a snapshot file could not be used.
#[derive(Debug, Clone)]
pub struct SnapshotTrouble(pub String);

/// A catalog snapshot read back whole, authenticated and checked against its digest.
pub struct SnapshotRead {
    pub header: SnapshotHeader,
    /// Logical block of the snapshot header.
    pub block: u64,
    pub plain: Vec<u8>,
}

/// Read the catalog snapshot in tape file `f`. Media-level trouble and damage are a
/// [`SnapshotTrouble`] (the caller falls back to a scan); a missing key is
/// [`Error::Key`].
pub fn read_snapshot(
    drive: &mut dyn TapeDrive,
    f: u64,
    keys: &KeyRing,
    buf: &mut Vec<u8>,
) -> Result<std::result::Result<SnapshotRead, SnapshotTrouble>> {
    let start = goto_file(drive, f)?;
    let trouble = |s: String| Ok(Err(SnapshotTrouble(s)));
    let mut src = DriveSource::new(drive, start.block);
    let mut opener = Opener::new()?;
    let mut piece = Vec::new();
    let mut header: Option<SnapshotHeader> = None;
    let mut plain: Vec<u8> = Vec::new();
    let mut next_seq = 0u64;
    let mut pos = 0u64;
    loop {
        let st = match src.read_block(buf) {
            Ok(s) => s,
            Err(DriveError::MediaError { block, detail }) => {
                return trouble(format!("media error at logical block {block}: {detail}"))
            }
            Err(e) => return Err(Error::from(e)).context("reading the catalog snapshot"),
        };
        let n = match st {
            ReadStatus::Block(n) => n,
            ReadStatus::Filemark | ReadStatus::EndOfData => {
                return trouble(format!(
                    "the snapshot ends at block {pos} without a trailer"
                ))
            }
        };
        let block = match decode_block(&buf[..n]) {
            Ok(b) => b,
            Err(e) => return trouble(format!("block {pos} is damaged: {e}")),
        };
        match (block, &header) {
            (Block::SnapshotHeader(h), None) => {
                if h.total_plain_len > MAX_SNAPSHOT_LEN {
                    return trouble(format!(
                        "it claims {} bytes, more than the {MAX_SNAPSHOT_LEN} accepted",
                        h.total_plain_len
                    ));
                }
                plain.reserve(h.total_plain_len as usize);
                header = Some(h);
            }
            (Block::SnapshotChunk(c), Some(h)) => {
                if c.fields.session_uuid != h.session_uuid || c.fields.sequence != next_seq {
                    return trouble(format!(
                        "block {pos}: chunk {} of session {} where chunk {next_seq} of session {} belongs",
                        c.fields.sequence,
                        Uuid::from_bytes(c.fields.session_uuid),
                        Uuid::from_bytes(h.session_uuid)
                    ));
                }
                match opener.open_chunk(keys, &c, &mut piece) {
                    Ok(()) => {}
                    Err(crate::codec::OpenError::MissingKey(fp)) => {
                        return Err(Error::Key(format!(
                            "the catalog snapshot in tape file {f} is encrypted with key {fp}, which is not available: import it with `tapevault key import FILE`"
                        )))
                    }
                    Err(e) => return trouble(format!("chunk {next_seq} at block {pos}: {e}")),
                }
                if plain.len() as u64 + piece.len() as u64 > h.total_plain_len {
                    return trouble("the chunks are longer than the header says".into());
                }
                plain.extend_from_slice(&piece);
                next_seq += 1;
            }
            (Block::SnapshotTrailer(t), Some(h)) => {
                if t.session_uuid != h.session_uuid
                    || t.chunk_count != next_seq
                    || t.total_plain_len != plain.len() as u64
                    || h.total_plain_len != plain.len() as u64
                {
                    return trouble(format!(
                        "the trailer counts {} chunks / {} bytes, read {next_seq} chunks / {} bytes",
                        t.chunk_count,
                        t.total_plain_len,
                        plain.len()
                    ));
                }
                let key = match keys.digest_key_for(&h.cipher) {
                    Ok(k) => k,
                    Err(fp) => {
                        return Err(Error::Key(format!(
                            "the catalog snapshot in tape file {f} is encrypted with key {fp}, which is not available: import it with `tapevault key import FILE`"
                        )))
                    }
                };
                if snapshot_digest(key, &plain) != t.digest {
                    return trouble("its digest does not match the trailer".into());
                }
                return Ok(Ok(SnapshotRead {
                    header: header.expect("matched Some"),
                    block: start.block,
                    plain,
                }));
            }
            (other, _) => {
                return trouble(format!(
                    "block {pos} is a {} where a snapshot record belongs",
                    other.kind_name()
                ))
            }
        }
        pos += 1;
    }
}

/// One problem found while scanning, located on the media.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    pub barcode: String,
    pub tape_file: u64,
    /// Block within the tape file (0 = its first block).
    pub block_in_file: u64,
    /// Logical object number from the beginning of the tape.
    pub logical_block: u64,
    pub detail: String,
}

/// One image part (tape file) as scanned.
#[derive(Debug, Clone)]
pub struct PartScan {
    pub barcode: String,
    pub tape_file: u64,
    pub header: ImageHeader,
    pub trailer: Option<ImageTrailer>,
    pub segments: Vec<Segment>,
    pub coverage: Vec<catalog::Extent>,
    pub records: u64,
    pub data_bytes: u64,
    pub stored_bytes: u64,
    /// Record-level damage (corrupt, lost, foreign or mismatching records).
    pub damage: Vec<Damage>,
    /// The part ended without its trailer (interrupted write).
    pub truncated: bool,
    /// Damaged records an earlier rebuild counted, for a part taken from the catalog's
    /// scanned parts rather than read in this run (whose `damage` is then empty).
    pub damaged_earlier: u64,
}

impl PartScan {
    /// What the catalog keeps of this part until its image is whole (see
    /// [`crate::catalog::ScannedPart`]).
    pub fn to_stored(&self) -> Result<ScannedPart, tape_formats::FormatError> {
        let mut header = Vec::new();
        self.header.encode(&mut header)?;
        let trailer = match &self.trailer {
            Some(t) => {
                let mut b = Vec::new();
                t.encode(&mut b)?;
                Some(b)
            }
            None => None,
        };
        Ok(ScannedPart {
            image: uuid::Uuid::from_bytes(self.header.image_uuid),
            barcode: self.barcode.clone(),
            tape_file: self.tape_file,
            part: self.header.part,
            header,
            trailer,
            records: self.records,
            data_bytes: self.data_bytes,
            stored_bytes: self.stored_bytes,
            damaged: self.damage.len() as u64 + self.damaged_earlier,
            coverage: self.coverage.clone(),
        })
    }

    /// A part an earlier rebuild read, back from the catalog. Its segments are already
    /// in the catalog (merged when it was read), so they are not repeated here.
    pub fn from_stored(p: &ScannedPart) -> Result<PartScan, String> {
        let header = match tape_formats::decode_block(&p.header) {
            Ok(tape_formats::Block::ImageHeader(h)) => h,
            Ok(_) => return Err("the stored header is another kind of record".into()),
            Err(e) => return Err(format!("the stored header does not decode: {e}")),
        };
        let trailer = match &p.trailer {
            None => None,
            Some(b) => match tape_formats::decode_block(b) {
                Ok(tape_formats::Block::ImageTrailer(t)) => Some(t),
                Ok(_) => return Err("the stored trailer is another kind of record".into()),
                Err(e) => return Err(format!("the stored trailer does not decode: {e}")),
            },
        };
        if header.image_uuid != *p.image.as_bytes() || header.part != p.part {
            return Err("the stored header belongs to another image or part".into());
        }
        Ok(PartScan {
            barcode: p.barcode.clone(),
            tape_file: p.tape_file,
            truncated: trailer.is_none(),
            header,
            trailer,
            segments: Vec::new(),
            coverage: p.coverage.clone(),
            records: p.records,
            data_bytes: p.data_bytes,
            stored_bytes: p.stored_bytes,
            damage: Vec::new(),
            damaged_earlier: p.damaged,
        })
    }
}

/// Segments and coverage come from the same builder the backup writer uses
/// ([`crate::media::segments`]), so a rebuilt catalog holds exactly the backup's facts.
fn note_record(
    segs: &mut SegmentBuilder,
    part: &mut PartScan,
    block: u64,
    seq: u64,
    extents: &[tape_formats::Extent],
) {
    let place = Place {
        part: part.header.part,
        barcode: &part.barcode,
        tape_file: part.tape_file,
    };
    segs.note(
        place,
        block,
        seq,
        extents,
        &mut part.segments,
        &mut part.coverage,
    );
}

/// What one tape file turned out to be.
#[derive(Debug)]
pub enum FileScan {
    Part(Box<PartScan>),
    Snapshot {
        header: SnapshotHeader,
        block: u64,
    },
    EndOfSession(EndOfSession),
    Empty,
    /// Not a tapevault tape file, or its first block is unreadable.
    Unknown(Damage),
}

/// Result of [`scan_file`]: what the file was, and whether end of data follows.
pub struct Scanned {
    pub file: FileScan,
    pub more: bool,
}

/// Scan the tape file at the current position (its first block) record by record.
/// Checks every record's CRCs and framing and places it (image, part, sequence); does
/// not decrypt data (the trailers carry the digests; verify and restore authenticate).
pub fn scan_file(
    drive: &mut dyn TapeDrive,
    barcode: &str,
    buf: &mut Vec<u8>,
    bytes_read: &mut u64,
) -> Result<Scanned> {
    let start = drive.position().context("reading the position")?;
    let f = start.file;
    let damage_at = |pos: u64, detail: String| Damage {
        barcode: barcode.to_string(),
        tape_file: f,
        block_in_file: pos,
        logical_block: start.block + pos,
        detail,
    };
    let first = {
        let mut src = DriveSource::new(drive, start.block);
        match src.read_block(buf) {
            Ok(s) => s,
            Err(DriveError::MediaError { detail, .. }) => {
                let d = damage_at(0, format!("media error: {detail}"));
                let more = skip_file(drive)?;
                return Ok(Scanned {
                    file: FileScan::Unknown(d),
                    more,
                });
            }
            Err(e) => return Err(Error::from(e)).context("reading a tape file"),
        }
    };
    let n = match first {
        ReadStatus::EndOfData => {
            return Ok(Scanned {
                file: FileScan::Empty,
                more: false,
            })
        }
        ReadStatus::Filemark => {
            return Ok(Scanned {
                file: FileScan::Empty,
                more: true,
            })
        }
        ReadStatus::Block(n) => n,
    };
    *bytes_read += n as u64;
    let header = match decode_block(&buf[..n]) {
        Ok(Block::ImageHeader(h)) => h,
        Ok(Block::SnapshotHeader(h)) => {
            let more = skip_file(drive)?;
            return Ok(Scanned {
                file: FileScan::Snapshot {
                    header: h,
                    block: start.block,
                },
                more,
            });
        }
        Ok(Block::EndOfSession(e)) => {
            let more = skip_file(drive)?;
            return Ok(Scanned {
                file: FileScan::EndOfSession(e),
                more,
            });
        }
        Ok(other) => {
            let d = damage_at(
                0,
                format!(
                    "the tape file starts with a {}, not a header; skipped",
                    other.kind_name()
                ),
            );
            let more = skip_file(drive)?;
            return Ok(Scanned {
                file: FileScan::Unknown(d),
                more,
            });
        }
        Err(e) => {
            let d = damage_at(
                0,
                format!("the first block is unreadable ({e}); the tape file is skipped"),
            );
            let more = skip_file(drive)?;
            return Ok(Scanned {
                file: FileScan::Unknown(d),
                more,
            });
        }
    };
    let mut checker = PartChecker::new();
    let _ = checker.check(0, Ok(&Block::ImageHeader(header.clone())));
    let mut part = PartScan {
        barcode: barcode.to_string(),
        tape_file: f,
        header,
        trailer: None,
        segments: Vec::new(),
        coverage: Vec::new(),
        records: 0,
        data_bytes: 0,
        stored_bytes: 0,
        damage: Vec::new(),
        truncated: false,
        damaged_earlier: 0,
    };
    let mut segs = SegmentBuilder::default();
    let mut pos = 1u64;
    let more = loop {
        let st = {
            let mut src = DriveSource::new(drive, start.block + pos);
            src.read_block(buf)
        };
        let n = match st {
            Ok(ReadStatus::Block(n)) => n,
            Ok(st @ (ReadStatus::Filemark | ReadStatus::EndOfData)) => {
                if let Some(StreamProblem::Truncated { .. }) = checker.end(pos) {
                    part.truncated = true;
                }
                break st == ReadStatus::Filemark;
            }
            Err(DriveError::MediaError { detail, .. }) => {
                part.damage
                    .push(damage_at(pos, format!("media error: {detail}")));
                drive
                    .space_blocks(1)
                    .context("spacing over a block with a media error")
                    .map_err(|e| {
                        Error::Failed(format!("{e} (cartridge {barcode} tape file {f})"))
                    })?;
                pos += 1;
                continue;
            }
            Err(e) => return Err(Error::from(e)).context("reading a tape file"),
        };
        *bytes_read += n as u64;
        let decoded = decode_block(&buf[..n]);
        let verdict = checker.check(pos, decoded.as_ref());
        if let Some(p) = &verdict.problem {
            part.damage.push(damage_at(pos, p.to_string()));
        }
        if verdict.accept {
            match decoded {
                Ok(Block::Data(r)) => {
                    note_record(
                        &mut segs,
                        &mut part,
                        start.block + pos,
                        r.fields.sequence,
                        &r.extents,
                    );
                    part.records += 1;
                    part.data_bytes += r
                        .extents
                        .iter()
                        .filter(|e| e.kind == ExtentKind::Data)
                        .map(|e| e.length)
                        .sum::<u64>();
                    part.stored_bytes += r.payload.len() as u64;
                }
                Ok(Block::ImageTrailer(t)) => part.trailer = Some(t),
                _ => {}
            }
        }
        pos += 1;
    };
    segs.close(&mut part.segments);
    Ok(Scanned {
        file: FileScan::Part(Box::new(part)),
        more,
    })
}
