//! What a backup reports: per disk, and for the session.

use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{ImageKind, SnapshotLocation};
use crate::pipeline::StageTimes;

/// What happened to one disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub disk: Uuid,
    /// The disk's label within its VM, when the manifest or --disk-label gave one.
    pub disk_label: Option<String>,
    pub path: PathBuf,
    pub image: Uuid,
    pub kind: ImageKind,
    /// How the changed extents were found: full, changed-extents, hash-scan; or synthetic
    /// (a full built from a chain on tape).
    pub method: &'static str,
    pub parent: Option<Uuid>,
    /// Why this kind was chosen when it is not what a user might expect.
    pub reason: Option<String>,
    /// When newer images of the disk cannot be restored (corrupt, failed, or built on
    /// one that is): which were passed over as the base, and why.
    pub base_note: Option<String>,
    /// A synthetic full: the image whose restore point it reproduces.
    pub synthetic_of: Option<Uuid>,
    pub disk_size: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// Bytes read from the disk, by the hash scan and the backup together: the holes of
    /// a thin image file are not read, so this can be far below `data_bytes +
    /// zero_bytes`.
    pub read_bytes: u64,
    pub stored_bytes: u64,
    pub records: u64,
    #[serde(rename = "barcodes")]
    pub cartridges: Vec<String>,
    pub seconds: f64,
    /// Busy time of the read, compress/encrypt and write stages while streaming the
    /// image's records (not counting the final flush): the stage closest to `wall_s`
    /// limited the throughput.
    pub stages: StageTimes,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub session: Uuid,
    pub vm: Option<String>,
    pub pool: String,
    pub media_set: Uuid,
    pub images: Vec<DiskReport>,
    pub snapshot: Option<SnapshotLocation>,
}
