//! Reading cartridges: mount on demand, know the logical position, locate (or rewind
//! and space when the drive cannot locate), read blocks, put the cartridge away.

use std::collections::HashMap;

use tape_formats::{BlockSource, ReadStatus};

use crate::error::{Context, Error, Result};
use crate::events::{Events, Silent};
use crate::media::{mount, DriveSource, Mounted};
use tape_devices::changer::TapeLibrary;

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
    /// Told the bytes of every block read ([`Self::report_progress`]; nobody by default).
    progress: &'a dyn Events,
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
            progress: &Silent,
        }
    }

    /// Report the bytes of every block read as progress of the current task of `events`.
    pub fn report_progress(&mut self, events: &'a dyn Events) {
        self.progress = events;
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
                self.progress.progress(n as u64);
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
