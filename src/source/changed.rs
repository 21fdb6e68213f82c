//! Changed-extents files: the hypervisor's list of areas written since a change id.
//!
//! The shape is VMware's QueryChangedDiskAreas answer:
//! `{"from_change_id": "...", "change_id": "...", "changed_area": [{"start": N, "length": N}]}`,
//! and optionally `"disk_id": "UUID"`, the disk the file describes: when present, a
//! backup refuses the file for any other disk. Other keys (tools add `startOffset`, `length`, ...) are ignored. Areas may come in
//! any order and may overlap; they are validated one by one as they are parsed
//! (overflow, beyond the disk), zero lengths are dropped, and the result is kept as a
//! sorted, coalesced [`ExtentList`]: areas beyond a bounded number in memory are sorted
//! in runs on disk and merged (see [`crate::extent_spool`]), so memory does not follow
//! the number of areas.

use std::fmt;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use thiserror::Error;

use uuid::Uuid;

use super::input::{open_checked, Accept, InputError};
use crate::extent_spool::{ExtentList, ListReader, SortedExtents};
use crate::extents::Extent;

/// Longest change id accepted: what an image header can carry (VMware's look like
/// `52 de .. 3f/1234`, well under this).
pub const MAX_CHANGE_ID_LEN: usize = tape_formats::MAX_CHANGE_ID_LEN;

#[derive(Debug, Error)]
pub enum ChangedExtentsError {
    /// Missing, unreadable, or not a regular file.
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("changed-extents file {path} is not valid: {message}; give the hypervisor's answer for this disk, or leave the file out (a hash scan then finds the changes)")]
    Invalid { path: PathBuf, message: String },
    #[error("changed-extents file {path}: changed_area[{index}] (start {start}, length {length}) ends beyond the disk size {disk_size}; the file does not belong to this disk or the disk shrank: take a full backup")]
    BeyondDisk {
        path: PathBuf,
        index: usize,
        start: u64,
        length: u64,
        disk_size: u64,
    },
    #[error("tracking block size {block_size} is not a power of two")]
    BadBlockSize { block_size: u64 },
    #[error(
        "the changed areas could not be sorted in a temporary file: {0}; check the space in TMPDIR"
    )]
    Spool(String),
}

/// A validated changed-extents list.
#[derive(Debug, Clone)]
pub struct ChangedExtents {
    /// The change id the areas are relative to (VMware: `*` means "since creation").
    pub from_change_id: String,
    /// The change id of the snapshot these areas lead to; recorded with the image.
    pub change_id: String,
    /// The disk the file says it describes (`disk_id`), if it says.
    pub disk_id: Option<Uuid>,
    /// The changed areas, sorted, coalesced and within the disk.
    pub extents: ExtentList,
}

impl ChangedExtents {
    /// Reads and validates `path` against a disk of `disk_size` bytes.
    pub fn load(path: &Path, disk_size: u64) -> Result<ChangedExtents, ChangedExtentsError> {
        // Never blocks: a FIFO or a device is refused before it is read.
        let (file, _) = open_checked(path, "changed-extents file", Accept::RegularFile)?;
        ChangedExtents::from_reader(BufReader::new(file), path, disk_size)
    }

    /// Parses from any reader; `origin` names the source in errors.
    pub fn from_reader<R: Read>(
        reader: R,
        origin: &Path,
        disk_size: u64,
    ) -> Result<ChangedExtents, ChangedExtentsError> {
        let mut problem: Option<ChangedExtentsError> = None;
        let seed = FileSeed {
            origin,
            disk_size,
            problem: &mut problem,
        };
        let mut de = serde_json::Deserializer::from_reader(reader);
        let result = seed.deserialize(&mut de).and_then(|v| de.end().map(|_| v));
        // A validation failure inside the visitor is reported as itself, not as the
        // generic serde error that aborted the parse.
        if let Some(p) = problem {
            return Err(p);
        }
        let parsed = result.map_err(|e| ChangedExtentsError::Invalid {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(parsed)
    }

    /// The areas widened to whole tracking blocks of `block_size` (start rounded
    /// down, end rounded up, clipped to `disk_size`), coalesced.
    pub fn aligned(
        &self,
        block_size: u64,
        disk_size: u64,
    ) -> Result<ExtentList, ChangedExtentsError> {
        if !block_size.is_power_of_two() {
            return Err(ChangedExtentsError::BadBlockSize { block_size });
        }
        self.extents
            .aligned(block_size, disk_size)
            .map_err(|e| ChangedExtentsError::Spool(e.to_string()))
    }
}

struct FileSeed<'a> {
    origin: &'a Path,
    disk_size: u64,
    problem: &'a mut Option<ChangedExtentsError>,
}

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = ChangedExtents;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = ChangedExtents;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with from_change_id, change_id and changed_area")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut from_change_id: Option<String> = None;
        let mut change_id: Option<String> = None;
        let mut extents: Option<ExtentList> = None;
        let mut disk_id: Option<Uuid> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "from_change_id" => from_change_id = Some(map.next_value()?),
                "change_id" => change_id = Some(map.next_value()?),
                "disk_id" => {
                    let text: String = map.next_value()?;
                    let id = Uuid::parse_str(text.trim()).map_err(|e| {
                        A::Error::custom(format!(
                            "field `disk_id` ({text:?}) is not a UUID: {e}; name the disk's UUID or remove the key"
                        ))
                    })?;
                    disk_id = Some(id);
                }
                "changed_area" => {
                    if extents.is_some() {
                        return Err(A::Error::duplicate_field("changed_area"));
                    }
                    extents = Some(map.next_value_seed(AreasSeed {
                        origin: self.origin,
                        disk_size: self.disk_size,
                        problem: &mut *self.problem,
                    })?)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let from_change_id =
            from_change_id.ok_or_else(|| A::Error::missing_field("from_change_id"))?;
        let change_id = change_id.ok_or_else(|| A::Error::missing_field("change_id"))?;
        let extents = extents.ok_or_else(|| A::Error::missing_field("changed_area"))?;
        for (name, v) in [
            ("from_change_id", &from_change_id),
            ("change_id", &change_id),
        ] {
            if v.trim().is_empty() {
                return Err(A::Error::custom(format!("field `{name}` is empty")));
            }
            if v.len() > MAX_CHANGE_ID_LEN {
                return Err(A::Error::custom(format!(
                    "field `{name}` is {} bytes long; at most {MAX_CHANGE_ID_LEN} bytes fit an image header",
                    v.len()
                )));
            }
        }
        Ok(ChangedExtents {
            from_change_id,
            change_id,
            disk_id,
            extents,
        })
    }
}

struct AreasSeed<'a> {
    origin: &'a Path,
    disk_size: u64,
    problem: &'a mut Option<ChangedExtentsError>,
}

#[derive(Deserialize)]
struct Area {
    start: u64,
    length: u64,
}

impl<'de> DeserializeSeed<'de> for AreasSeed<'_> {
    type Value = ExtentList;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for AreasSeed<'_> {
    type Value = ExtentList;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`changed_area` as an array of {\"start\": N, \"length\": N}")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut set = SortedExtents::new();
        let spool_err = |e: std::io::Error| {
            A::Error::custom(format!(
                "sorting the changed areas in a temporary file failed: {e}; check the space in TMPDIR"
            ))
        };
        let mut index = 0usize;
        while let Some(area) = seq.next_element::<Area>()? {
            let beyond = match area.start.checked_add(area.length) {
                Some(end) => area.length > 0 && end > self.disk_size,
                None => true,
            };
            if beyond {
                *self.problem = Some(ChangedExtentsError::BeyondDisk {
                    path: self.origin.to_path_buf(),
                    index,
                    start: area.start,
                    length: area.length,
                    disk_size: self.disk_size,
                });
                return Err(A::Error::custom("changed area beyond the disk"));
            }
            set.insert(area.start, area.length).map_err(spool_err)?;
            index += 1;
        }
        set.finish().map_err(spool_err)
    }
}

impl ChangedExtents {
    /// The areas as plain extents, ascending (read back from the temporary file when
    /// they did not fit in memory, hence the `Result`s).
    pub fn iter(&self) -> ListReader<Extent> {
        self.extents.reader()
    }
}
