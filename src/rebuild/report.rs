//! What a rebuild found: per cartridge how it was read, the images rebuilt from a scan,
//! the merge totals, damage, problems, missing keys and lost cartridges.

use serde::Serialize;
use uuid::Uuid;

use super::tape_file::Damage;
use super::Method;
use crate::catalog::{ImageStatus, MergeReport};

#[derive(Debug, Clone, Serialize)]
pub struct CartridgeReport {
    pub barcode: String,
    pub method: Method,
    pub pool: Option<String>,
    pub media_set: Option<Uuid>,
    pub set_sequence: Option<u32>,
    pub key_fingerprint: Option<String>,
    /// Tape file of the snapshot that was merged.
    pub snapshot_file: Option<u64>,
    /// Why the fast path was not taken, when it was wanted.
    pub fallback_reason: Option<String>,
    /// Tape files read record by record.
    pub files_scanned: u64,
    /// Bytes of blocks read while scanning.
    pub bytes_scanned: u64,
    pub seconds: f64,
    pub note: Option<String>,
}

/// An image as rebuilt from a scan.
#[derive(Debug, Clone, Serialize)]
pub struct ImageFound {
    pub image: Uuid,
    pub disk: Uuid,
    pub status: ImageStatus,
    pub parts: u32,
    #[serde(rename = "barcodes")]
    pub cartridges: Vec<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildReport {
    pub cartridges: Vec<CartridgeReport>,
    /// Images found by scanning (fast-path images are in the merge totals).
    pub images_scanned: Vec<ImageFound>,
    pub merged: MergeReport,
    /// Record-level damage, by position.
    pub damage: Vec<Damage>,
    /// Other problems: missing parts, images that could not be merged, snapshots that
    /// could not be used.
    pub problems: Vec<String>,
    /// Fingerprints of keys that were needed and not available.
    pub missing_keys: Vec<String>,
    /// Cartridges that should hold images and do not.
    pub lost: Vec<String>,
    /// Cartridges not read in this run that hold complete images: those images keep
    /// the catalog snapshots' word, unchecked against the media.
    pub unchecked: Vec<String>,
}

impl RebuildReport {
    /// Images that could not be recovered whole (damage, missing parts).
    pub fn has_integrity_problems(&self) -> bool {
        !self.damage.is_empty()
            || !self.lost.is_empty()
            || self.images_missing_parts() > 0
            || self
                .images_scanned
                .iter()
                .any(|i| i.status == ImageStatus::Corrupt)
    }

    /// Images found incomplete because parts of them were not found (on cartridges
    /// not read in this run, or lost).
    pub fn images_missing_parts(&self) -> usize {
        self.images_scanned
            .iter()
            .filter(|i| {
                i.status == ImageStatus::Incomplete
                    && i.note.as_deref().is_some_and(|n| n.contains("missing"))
            })
            .count()
    }
}

pub(crate) fn add_merge(total: &mut MergeReport, r: MergeReport) {
    total.pools_added += r.pools_added;
    total.media_sets_added += r.media_sets_added;
    total.media_sets_updated += r.media_sets_updated;
    total.media_added += r.media_added;
    total.media_updated += r.media_updated;
    total.sessions_added += r.sessions_added;
    total.sessions_updated += r.sessions_updated;
    total.images_added += r.images_added;
    total.images_updated += r.images_updated;
    total.segments_added += r.segments_added;
    total.snapshots_added += r.snapshots_added;
    total.pool_config_added += r.pool_config_added;
    total.conflicts.extend(r.conflicts);
}
