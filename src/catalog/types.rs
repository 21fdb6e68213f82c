//! Row types and the small enums stored as text in the catalog.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str { match self { $($name::$variant => $text),+ } }
        }
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result { f.write_str(self.as_str()) }
        }
        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> ::std::result::Result<Self, String> {
                match s { $($text => Ok($name::$variant),)+
                    _ => Err(format!("unknown {} {s:?} (expected one of: {})", stringify!($name),
                        [$($text),+].join(", "))) }
            }
        }
    };
}
pub(crate) use text_enum;

text_enum!(
    /// Life cycle of a cartridge.
    MediaState { Blank = "blank", Writable = "writable", Full = "full", Expired = "expired", Damaged = "damaged", Retired = "retired" }
);
text_enum!(
    SessionStatus { Running = "running", Complete = "complete", Failed = "failed" }
);
text_enum!(
    /// `copy` is a full image outside any chain: never the base of an incremental.
    ImageKind { Full = "full", Incremental = "incremental", Copy = "copy" }
);
text_enum!(
    /// Only `complete` images are restorable or usable as a base. `incomplete` is what a
    /// media scan finds when an image's trailer is missing.
    ImageStatus { Running = "running", Complete = "complete", Failed = "failed", Incomplete = "incomplete", Corrupt = "corrupt" }
);

/// Compression of a pool or image: zstd at a level, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd(i32),
    Off,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
            Compression::Off => f.write_str("off"),
        }
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Compression::Off);
        }
        let lvl = s
            .strip_prefix("zstd:")
            .and_then(|l| l.parse::<i32>().ok())
            .filter(|l| (-7..=22).contains(l))
            .ok_or_else(|| {
                format!("bad compression {s:?} (expected off or zstd:LEVEL with LEVEL in -7..=22)")
            })?;
        Ok(Compression::Zstd(lvl))
    }
}

/// When a pool starts a new media set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Append to the current set until it is closed by hand.
    Continue,
    PerSession,
    Daily,
    Weekly(chrono::Weekday),
    Monthly,
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allocation::Continue => f.write_str("continue"),
            Allocation::PerSession => f.write_str("per-session"),
            Allocation::Daily => f.write_str("daily"),
            Allocation::Weekly(d) => write!(f, "weekly:{}", d.to_string().to_lowercase()),
            Allocation::Monthly => f.write_str("monthly"),
        }
    }
}

impl FromStr for Allocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "continue" => Ok(Allocation::Continue),
            "per-session" => Ok(Allocation::PerSession),
            "daily" => Ok(Allocation::Daily),
            "monthly" => Ok(Allocation::Monthly),
            _ => s
                .strip_prefix("weekly:")
                .and_then(|d| d.parse::<chrono::Weekday>().ok())
                .map(Allocation::Weekly)
                .ok_or_else(|| {
                    format!("bad allocation policy {s:?} (expected continue, per-session, daily, weekly:<weekday>, monthly)")
                }),
        }
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(Compression);
serde_via_str!(Allocation);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRow {
    pub name: String,
    /// Keystore name and fingerprint (hex) of the pool's key; both `None` = clear pool.
    pub key_name: Option<String>,
    pub key_fingerprint: Option<String>,
    pub compression: Compression,
    /// Days images are kept; `None` = forever.
    pub retention_days: Option<u32>,
    pub allocation: Allocation,
    pub worm: bool,
    /// Whether labels carry a passphrase-wrapped copy of the key.
    pub escrow: bool,
    pub created: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaSetRow {
    pub uuid: Uuid,
    pub pool: String,
    pub created: DateTime<Utc>,
    pub last_write: Option<DateTime<Utc>>,
    pub closed: bool,
    /// Major version of the on-tape format the set is written in.
    pub format_major: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRow {
    pub barcode: String,
    pub volume_uuid: Option<Uuid>,
    pub pool: Option<String>,
    pub media_set_uuid: Option<Uuid>,
    pub seq_in_set: Option<u32>,
    pub state: MediaState,
    /// Free text: `slot 3`, `drive 0`, `mail slot 1`, `vault:<name>`, `outside`.
    pub location: String,
    pub labelled_at: Option<DateTime<Utc>>,
    pub last_written: Option<DateTime<Utc>>,
    /// Tape file number where the next append goes (file 0 is the label).
    pub next_tape_file: u64,
    pub bytes_written: u64,
    pub errors: u64,
}

impl MediaRow {
    /// A cartridge just seen in the library: blank, unassigned.
    pub fn new_blank(barcode: &str, location: &str) -> MediaRow {
        MediaRow {
            barcode: barcode.to_string(),
            volume_uuid: None,
            pool: None,
            media_set_uuid: None,
            seq_in_set: None,
            state: MediaState::Blank,
            location: location.to_string(),
            labelled_at: None,
            last_written: None,
            next_tape_file: 1,
            bytes_written: 0,
            errors: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    pub uuid: Uuid,
    pub pool: String,
    pub media_set_uuid: Option<Uuid>,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    pub status: SessionStatus,
}

/// What the writer knows when an image starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewImage {
    pub uuid: Uuid,
    pub disk_uuid: Uuid,
    pub vm_name: Option<String>,
    /// The disk's label within its VM (`root`), from the manifest.
    #[serde(default)]
    pub disk_label: Option<String>,
    pub kind: ImageKind,
    /// Required for incrementals, forbidden otherwise.
    pub parent_uuid: Option<Uuid>,
    pub change_id: Option<String>,
    pub from_change_id: Option<String>,
    pub disk_size: u64,
    pub block_size: u32,
    pub session_uuid: Option<Uuid>,
    pub pool: Option<String>,
    pub key_fingerprint: Option<String>,
    pub compression: Compression,
    /// The image's point in time (when the disk was read); `--at` compares this.
    pub started: DateTime<Utc>,
    /// A synthetic full: the image whose restore point it reproduces (kind full).
    pub synthetic_of: Option<Uuid>,
}

/// Totals from the image trailer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageStats {
    pub records: u64,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    pub finished: Option<DateTime<Utc>>,
    /// Path of the per-block BLAKE3 digest list kept beside the catalog.
    pub digest_list: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRow {
    pub uuid: Uuid,
    pub disk_uuid: Uuid,
    pub vm_name: Option<String>,
    /// The disk's label within its VM (`root` of `web01/root`), when the backup named it.
    /// Not in the image header on tape: a `catalog rebuild --scan` leaves it unset, a
    /// rebuild from a catalog snapshot brings it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_label: Option<String>,
    pub kind: ImageKind,
    pub parent_uuid: Option<Uuid>,
    pub change_id: Option<String>,
    pub from_change_id: Option<String>,
    pub disk_size: u64,
    pub block_size: u32,
    pub session_uuid: Option<Uuid>,
    pub pool: Option<String>,
    pub key_fingerprint: Option<String>,
    pub compression: Compression,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    pub status: ImageStatus,
    pub records: u64,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    /// Hex content digest from the trailer.
    pub content_digest: Option<String>,
    pub digest_list: Option<String>,
    /// Why the image failed or is corrupt.
    pub note: Option<String>,
    /// A tape-to-tape copy: the original image this row duplicates (same disk, point,
    /// kind, parent and extents; its own cartridges, pool, key and digest). `None` for
    /// every image that is not such a copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<Uuid>,
    /// A synthetic full (kind full, built from a chain on tape without reading the
    /// disk): the image whose restore point it reproduces byte for byte.
    #[serde(default)]
    pub synthetic_of: Option<Uuid>,
}

impl ImageRow {
    /// The image this row stands for in chains: its original when it is a copy.
    pub fn identity(&self) -> Uuid {
        self.copy_of.unwrap_or(self.uuid)
    }
}

/// A run of consecutive data records of one image on one cartridge: enough for a
/// restore to locate straight to it (`tape_file`, then `first_block`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Continuation part of the image (0 on its first cartridge).
    pub part: u32,
    pub barcode: String,
    pub tape_file: u64,
    /// Logical block (object) of the first and last data record of the run.
    pub first_block: u64,
    pub last_block: u64,
    /// Record sequence numbers of the first and last record.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Disk byte range `[disk_start, disk_end)` the records cover.
    pub disk_start: u64,
    pub disk_end: u64,
}

/// A coalesced disk range an image covers; `is_zero` ranges carry no data records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub is_zero: bool,
}

/// Where a catalog snapshot sits on media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLocation {
    pub barcode: String,
    pub tape_file: u64,
    pub block: u64,
    pub session_uuid: Option<Uuid>,
    pub time: DateTime<Utc>,
}

/// An image a restore or a backup passed over because it cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub image: Uuid,
    pub kind: ImageKind,
    #[serde(serialize_with = "crate::timefmt::serde_show::time")]
    pub started: DateTime<Utc>,
    pub status: ImageStatus,
    pub reason: String,
}

/// Which point `restore_chain` resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The newest complete image.
    Latest,
    /// The newest complete image whose `started` is at or before this time.
    Time(DateTime<Utc>),
    /// Exactly this image.
    Image(Uuid),
}

/// One image with everything needed to restore it, as carried in snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDump {
    pub image: ImageRow,
    pub segments: Vec<Segment>,
    pub extents: Vec<Extent>,
}
