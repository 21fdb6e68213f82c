//! What a copy reports.

use serde::Serialize;
use uuid::Uuid;

use super::select::Refused;

/// One restore point copied.
#[derive(Debug, Clone, Serialize)]
pub struct CopiedImage {
    /// The original (the point): `image` in the JSON contract.
    #[serde(rename = "image")]
    pub original: Uuid,
    /// The new copy.
    pub copy: Uuid,
    /// The image read: the original, or another copy of it when the original could not
    /// be read from the library.
    pub read_from: Uuid,
    pub disk: Uuid,
    pub kind: crate::catalog::ImageKind,
    #[serde(serialize_with = "crate::timefmt::serde_show::time")]
    pub at: chrono::DateTime<chrono::Utc>,
    pub records: u64,
    pub data_bytes: u64,
    pub stored_bytes: u64,
    #[serde(rename = "source_barcodes")]
    pub source_cartridges: Vec<String>,
    #[serde(rename = "barcodes")]
    pub cartridges: Vec<String>,
    /// The copy's content digest (equal to the original's when both are clear or under
    /// the same key).
    pub digest: String,
    /// Whether the records went through the spool directory (one drive).
    pub spooled: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub to_pool: String,
    /// The session of the target pool that holds the copies (None when nothing was to
    /// be copied).
    pub session: Option<Uuid>,
    pub media_set: Option<Uuid>,
    /// "stream" (two drives, read while writing) or "spool" (one drive).
    pub mode: &'static str,
    pub copied: Vec<CopiedImage>,
    /// Points that already had a complete copy in the target pool: (original, copy).
    pub already_copied: Vec<AlreadyCopied>,
    /// Selected points that cannot be copied, with why (the command then exits 3).
    pub refused: Vec<Refused>,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlreadyCopied {
    /// The original (the point): `image` in the JSON contract.
    #[serde(rename = "image")]
    pub original: Uuid,
    pub copy: Uuid,
}
