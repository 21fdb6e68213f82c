//! The record-by-record scan of one tape file: what it is (an image part, a catalog
//! snapshot, an end-of-session marker), each record's CRCs, framing and place checked,
//! the part's segments and coverage rebuilt, and damage located on the media.

use tape_formats::{
    decode_block, Block, BlockSource, EndOfSession, ExtentKind, ImageHeader, ImageTrailer,
    PartChecker, ReadStatus, SnapshotHeader, StreamProblem,
};

use super::positioning::skip_file;
use crate::catalog::ScannedPart;
use crate::catalog::Segment;
use crate::error::{Context, Error, Result};
use crate::extent_spool::CoverageBuf;
use crate::media::segments::{Place, SegmentBuilder};
use crate::media::DriveSource;
use tape_devices::drive::{DriveError, TapeDrive};

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
#[derive(Debug)]
pub struct PartScan {
    pub barcode: String,
    pub tape_file: u64,
    pub header: ImageHeader,
    pub trailer: Option<ImageTrailer>,
    pub segments: Vec<Segment>,
    /// Beyond a bounded number of rows in memory, in a temporary file.
    pub coverage: CoverageBuf,
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
    pub fn to_stored(&self) -> Result<ScannedPart, String> {
        let mut header = Vec::new();
        self.header.encode(&mut header).map_err(|e| e.to_string())?;
        let trailer = match &self.trailer {
            Some(t) => {
                let mut b = Vec::new();
                t.encode(&mut b).map_err(|e| e.to_string())?;
                Some(b)
            }
            None => None,
        };
        let coverage = self
            .coverage
            .to_vec()
            .map_err(|e| format!("reading its coverage back from its temporary file: {e}"))?;
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
            coverage,
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
            coverage: CoverageBuf::from_vec(p.coverage.clone()),
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
) -> std::io::Result<()> {
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
        &mut part.coverage.tail,
    );
    part.coverage.spill_if_full()
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
        coverage: CoverageBuf::new(),
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
                    )
                    .map_err(|e| {
                        Error::Failed(format!(
                            "keeping the coverage of cartridge {barcode} tape file {f} in a temporary file (check the space in TMPDIR): {e}"
                        ))
                    })?;
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
