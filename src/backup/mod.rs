//! The backup job: disks (by UUID) -> change tracking -> read + zero detection ->
//! compress -> encrypt -> frame -> drive, with spanning onto the next cartridge of the
//! media set at early warning, and one catalog transaction per completed image.
//!
//! An image is usable only when its trailer is on tape, the drive has flushed, and its
//! catalog transaction has committed. Anything else leaves it 'failed' (or 'running'
//! until the next job notices its process is gone), and never a base.

use std::path::PathBuf;

use tape_formats::WriterError;
use uuid::Uuid;

use crate::codec::Sealer;
use crate::error::Error;
use crate::home::Home;
use tape_devices::drive::DriveError;

pub use crate::media::segments::RECORDS_PER_SEGMENT;

mod disk;
mod image;
mod plan;
mod records;
mod recovery;
mod report;
mod request;
mod session;
mod stages;
mod tape;

pub use recovery::recover_interrupted;
pub use report::{BackupReport, DiskReport};
pub use request::{check_inputs, BackupRequest, CheckedDisk, DiskSpec, Inputs, KeyMaterial, Mode};
pub use session::run;

use image::ImageProgress;
use plan::Plan;
use stages::{Prepared, ReadChunk};
use tape::Tape;

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

/// Where an image's block digest list lives in the home.
fn digest_list_path(home: &Home, image: Uuid) -> PathBuf {
    home.digests_dir().join(format!("{image}.digests"))
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
