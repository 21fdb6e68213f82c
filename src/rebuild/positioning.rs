//! Moving about a mounted cartridge with filemark spacing only (what every drive and st
//! offer): to a tape file, over one, what a tape file starts with, and the end of data
//! with the newest end-of-session marker before it.

use tape_formats::{
    decode_block, Block, BlockSource, EndOfSession, ImageHeader, ReadStatus, SnapshotHeader,
};

use crate::error::{Context, Error, Result};
use crate::media::DriveSource;
use tape_devices::drive::{DriveError, Position, SpaceStop, TapeDrive};

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
