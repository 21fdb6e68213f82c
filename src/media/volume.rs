//! Volume labels (tape file 0) on a mounted cartridge.

use tape_formats::{decode_block, Block, VolumeLabel};

use crate::error::{Context, Error, Result};
use tape_devices::drive::{DriveError, ReadOutcome, TapeDrive};

/// What tape file 0 of a cartridge holds.
#[derive(Debug, Clone)]
pub enum LabelRead {
    /// Nothing has ever been written (end of data at BOT).
    Blank,
    /// A tapevault volume label.
    Label(VolumeLabel),
    /// Something else: another program's data, or a damaged label.
    Foreign(String),
}

/// Rewind and read the volume label.
pub fn read_label(drive: &mut dyn TapeDrive) -> Result<LabelRead> {
    drive
        .rewind()
        .context("rewinding to read the volume label")?;
    let mut buf = vec![0u8; tape_formats::MAX_BLOCK_SIZE];
    let r = match drive.read_block(&mut buf) {
        Ok(ReadOutcome::EndOfData) => LabelRead::Blank,
        Ok(ReadOutcome::Filemark) => LabelRead::Foreign("an empty first tape file".into()),
        Ok(ReadOutcome::Block(n)) => match decode_block(&buf[..n]) {
            Ok(Block::VolumeLabel(l)) => LabelRead::Label(l),
            Ok(other) => LabelRead::Foreign(format!(
                "a tapevault {} where the label belongs",
                other.kind_name()
            )),
            Err(e) => LabelRead::Foreign(format!(
                "a {n}-byte block that is not a tapevault label ({e})"
            )),
        },
        Err(DriveError::BufferTooSmall { block_len, .. }) => LabelRead::Foreign(format!(
            "a {block_len}-byte block, larger than any tapevault record"
        )),
        Err(e) => return Err(Error::from(e)).context("reading the volume label"),
    };
    Ok(r)
}

/// Rewind and write `label` as tape file 0 (discarding everything on the cartridge),
/// flushed: the label is on tape when this returns.
pub fn write_label(drive: &mut dyn TapeDrive, label: &VolumeLabel) -> Result<()> {
    write_label_with(drive, label, false)
}

/// Rewind and write `label` as tape file 0 with a buffered (immediate) filemark, for a
/// writer that goes on writing images right after it: the tape does not stop between
/// the label and the first image (a synchronous filemark drains the drive's buffer and
/// stops the tape, and the first write then pays a reposition). The label reaches the
/// tape with the first image's flush at its commit, before any image on the cartridge
/// counts; a drive losing power before that leaves a cartridge the catalog has in the
/// set but with no label, which the next session finds and refuses (marked damaged).
pub fn write_label_streaming(drive: &mut dyn TapeDrive, label: &VolumeLabel) -> Result<()> {
    write_label_with(drive, label, true)
}

fn write_label_with(drive: &mut dyn TapeDrive, label: &VolumeLabel, immediate: bool) -> Result<()> {
    let mut buf = Vec::with_capacity(4096);
    label
        .encode(&mut buf)
        .map_err(|e| Error::Failed(format!("cannot encode the volume label: {e}")))?;
    drive
        .rewind()
        .context("rewinding to write the volume label")?;
    drive
        .write_block(&buf)
        .context("writing the volume label")?;
    drive
        .write_filemarks(1, immediate)
        .context("writing the filemark after the volume label")?;
    Ok(())
}

/// Position at end of data ready to append a new tape file. If the last tape file is
/// not closed by a filemark (a writer was killed mid-image), close it first so every
/// image part stays in a tape file of its own. Returns (logical block, file number).
pub fn position_for_append(drive: &mut dyn TapeDrive) -> Result<(u64, u64)> {
    drive.space_to_eod().context("spacing to end of data")?;
    let p = drive
        .position()
        .context("reading the position at end of data")?;
    if p.block_in_file != 0 {
        drive
            .write_filemarks(1, false)
            .context("closing an unterminated tape file left by an interrupted write")?;
        let p = drive
            .position()
            .context("reading the position at end of data")?;
        return Ok((p.block, p.file));
    }
    Ok((p.block, p.file))
}
