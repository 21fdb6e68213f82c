//! Adapters from a [`TapeDrive`] to the format's block sink and source, counting the
//! logical block position as they go (so drives without READ POSITION still know where
//! every record lands).

use tape_formats::{BlockSink, BlockSource, ReadStatus, WriteStatus};

use tape_devices::drive::{DriveError, ReadOutcome, TapeDrive, WriteOutcome};

/// Writes blocks to a drive. Absorbs st's one-time early-warning ENOSPC: the write
/// that is refused once after early warning is retried (as st allows), and reported as
/// written in early warning.
pub struct DriveSink {
    pub drive: Box<dyn TapeDrive>,
    /// Logical object number the next block will get.
    pub block: u64,
    /// Bytes written through this sink.
    pub bytes: u64,
    /// Set once the drive reported early warning.
    pub early_warning: bool,
}

impl DriveSink {
    pub fn new(drive: Box<dyn TapeDrive>, block: u64) -> Self {
        DriveSink {
            drive,
            block,
            bytes: 0,
            early_warning: false,
        }
    }

    /// Write one block (one part, or a header and payload held apart), retrying the
    /// write st refuses once after early warning.
    fn write_parts(&mut self, parts: &[&[u8]]) -> Result<WriteStatus, DriveError> {
        let o = match self.drive.write_block_parts(parts) {
            Err(DriveError::EarlyWarning) => {
                self.early_warning = true;
                self.drive.write_block_parts(parts)?
            }
            other => other?,
        };
        self.block += 1;
        self.bytes += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        Ok(self.status(o))
    }

    fn status(&mut self, o: WriteOutcome) -> WriteStatus {
        match o {
            WriteOutcome::Written if !self.early_warning => WriteStatus::Written,
            _ => {
                self.early_warning = true;
                WriteStatus::WrittenEarlyWarning
            }
        }
    }
}

impl BlockSink for DriveSink {
    type Error = DriveError;

    fn write_block(&mut self, block: &[u8]) -> Result<WriteStatus, DriveError> {
        self.write_parts(&[block])
    }

    fn write_block_parts(&mut self, parts: &[&[u8]]) -> Result<WriteStatus, DriveError> {
        self.write_parts(parts)
    }

    fn write_filemark(&mut self) -> Result<WriteStatus, DriveError> {
        match self.drive.write_filemarks(1, true) {
            Err(DriveError::EarlyWarning) => {
                self.early_warning = true;
                self.drive.write_filemarks(1, true)?
            }
            other => other?,
        }
        self.block += 1;
        Ok(if self.early_warning {
            WriteStatus::WrittenEarlyWarning
        } else {
            WriteStatus::Written
        })
    }
}

/// Reads blocks from a drive into a reusable buffer of the format's largest block.
pub struct DriveSource<'a> {
    pub drive: &'a mut dyn TapeDrive,
    /// Logical object number of the next block to be read.
    pub block: u64,
}

impl<'a> DriveSource<'a> {
    pub fn new(drive: &'a mut dyn TapeDrive, block: u64) -> Self {
        DriveSource { drive, block }
    }
}

impl BlockSource for DriveSource<'_> {
    type Error = DriveError;

    fn read_block(&mut self, buf: &mut Vec<u8>) -> Result<ReadStatus, DriveError> {
        if buf.len() < tape_formats::MAX_BLOCK_SIZE {
            buf.resize(tape_formats::MAX_BLOCK_SIZE, 0);
        }
        match self.drive.read_block(buf) {
            Ok(ReadOutcome::Block(n)) => {
                self.block += 1;
                Ok(ReadStatus::Block(n))
            }
            Ok(ReadOutcome::Filemark) => {
                self.block += 1;
                Ok(ReadStatus::Filemark)
            }
            Ok(ReadOutcome::EndOfData) => Ok(ReadStatus::EndOfData),
            Err(e) => Err(e),
        }
    }
}
