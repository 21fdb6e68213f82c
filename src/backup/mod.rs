//! The backup job: disks (by UUID) -> change tracking -> read + zero detection ->
//! compress -> encrypt -> frame -> drive, with spanning onto the next cartridge of the
//! media set at early warning, and one catalog transaction per completed image.
//!
//! An image is usable only when its trailer is on tape, the drive has flushed, and its
//! catalog transaction has committed. Anything else leaves it 'failed' (or 'running'
//! until the next job notices its process is gone), and never a base. A backup session
//! flushes once, after its last image, and then commits its images
//! ([`disk`]: `commit_pending`), so the drive stops once per session, not per image.
//!
//! A backup, step by step:
//!
//! 1. **Request** ([`request`]): the disks by UUID, the kind asked for, the pool;
//!    [`check_inputs`] opens every input without blocking and refuses what cannot be
//!    read safely (wrong file kinds, one file twice, a changed-extents file of another
//!    disk) before any lock is taken or session recorded.
//! 2. **Session** ([`session`]): the pool and its key, crash recovery ([`recovery`]),
//!    the pool lock, the media set, then each disk in turn, then the session end: the
//!    catalog snapshot and the end-of-session marker as tape files of their own.
//! 3. **Plan** ([`plan`]): which kind of image each disk gets and why; the base is the
//!    newest restorable image; a changed-extents file is trusted only when it continues
//!    the base's change-tracking epoch, else a hash scan, said out loud.
//! 4. **One disk** ([`disk`]): the hash scan when planned, the image row ('running'),
//!    writing the image, then the commit (image complete with its segments and
//!    coverage) or the failure (image failed, cartridge marked as the error says).
//! 5. **Streaming** ([`image`]): the image header, the bounded pipeline: reader thread
//!    (chunks, zero detection) -> transform workers ([`stages`]: block digests, zstd,
//!    AES-GCM, CRC) -> writer ([`records`]: the content digest and the digest list in
//!    record order, framing, resealing, parts, spanning at early warning), then
//!    trailer and filemark (the flush is the session's commit point's); the spool
//!    (`--spool`) feeds the drive in bursts.
//! 6. **Tape** ([`tape`]): the cartridge being written: picked from the set or joined
//!    (labelled), checked, positioned at end of data, released (flushed and unloaded).
//!
//! The job prints nothing: decisions, cartridges, waits, progress and each image
//! written are [`crate::events`] for the caller; the result is a [`BackupReport`].

use std::path::PathBuf;

use tape_formats::WriterError;
use uuid::Uuid;

use crate::codec::Sealer;
use crate::error::Error;
use crate::home::Home;
use tape_devices::drive::DriveError;

pub use crate::media::segments::RECORDS_PER_SEGMENT;

mod disk;
mod drives;
mod image;
mod plan;
mod records;
mod recovery;
mod report;
mod request;
mod session;
mod spooled;
mod stages;
mod tape;
mod target;

pub use recovery::recover_interrupted;
pub use report::{BackupReport, DiskReport};
pub use request::{
    check_inputs, BackupRequest, CheckedDisk, DiskSpec, Inputs, KeyMaterial, Mode, SyntheticSource,
    DEFAULT_SPOOL,
};
pub use session::run;
pub use target::{ImageTarget, WrittenImage};

use image::ImageProgress;
use plan::{Plan, Tracked};
use request::Source;
use stages::{Prepared, ReadChunk};
use tape::Tape;

/// What feeds an image's records to [`ImageTarget::write_image`]: each call fills one
/// record's extents and plain bytes (in disk order) and returns `false` at the end.
pub type FillRecord<'a> = dyn FnMut(&mut Vec<tape_formats::Extent>, &mut Vec<u8>) -> crate::error::Result<bool>
    + Send
    + 'a;

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
    /// While a synthetic full is written: the block digest list of the point it
    /// reproduces, which the new image's list must equal before its trailer may say
    /// complete.
    reproduce: Option<Reproduce>,
    /// The point in time of the image being written (its catalog `started`), which its
    /// header's `time` carries too, so a catalog rebuilt from the media orders images
    /// as the original did.
    image_time: chrono::DateTime<chrono::Utc>,
    /// A backup session's images are committed together after one flush of the drive
    /// at the session's end ([`session`]); copies and synthetic fulls written through
    /// [`ImageTarget`] flush and commit each image at once.
    defer_commit: bool,
    /// Images written (trailer and filemark on tape) but not yet flushed, hence not
    /// yet complete in the catalog.
    pending: Vec<disk::Pending>,
    /// The spool between the transform stage and the drive; see
    /// [`BackupRequest::spool`].
    spool: crate::spool::Spool,
}

/// The point a synthetic full being written reproduces.
struct Reproduce {
    point: Uuid,
    /// The point's block digest list (in the home).
    list: PathBuf,
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
