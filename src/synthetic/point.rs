//! Which point a synthetic full reproduces, and whether it can: the disk's newest
//! restorable image that is a base (a full or an incremental whose whole chain is
//! intact: what the next incremental would build on), its chain, and its block digest
//! list (what the new image is checked against). Refusals say why.

use std::path::PathBuf;

use uuid::Uuid;

use crate::catalog::{At, Catalog, ImageKind, ImageRow};
use crate::error::{Error, Result};
use crate::source::hashscan::verify_digest_list;

/// What [`choose`] decided for one disk.
pub enum Choice {
    /// Build a synthetic full of `point` from `chain` (full first, `point` last).
    Build {
        point: Box<ImageRow>,
        chain: Vec<ImageRow>,
        /// The point's block digest list in this home; None: derive it from the
        /// chain as read.
        point_list: Option<PathBuf>,
    },
    /// Nothing to do, and why (the newest point is a full already).
    NotNeeded(String),
}

/// Choose the point of `disk` a synthetic full would reproduce, or refuse with the
/// reason: no restorable base (every image failed, corrupt, or on a broken chain), or
/// the point's block digest list in this home is damaged. Without a list (a catalog
/// rebuilt from the media) the list is derived from the chain as read.
pub fn choose(cat: &Catalog, disk: Uuid) -> Result<Choice> {
    let Some(point) = cat.newest_good_image(disk)? else {
        let passed = cat.unrestorable_newer(disk, None)?;
        if passed.is_empty() {
            return Err(Error::Usage(format!(
                "disk {disk} has no image in the catalog: a synthetic full is built from a chain on tape, so back the disk up first"
            )));
        }
        let why = passed
            .iter()
            .map(|k| format!("{} {} ({})", k.kind, k.image, k.reason))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::Failed(format!(
            "no image of disk {disk} can be restored, so there is no point to build a synthetic full of: {why}; take a full backup (`backup --full`)"
        )));
    };
    if point.kind == ImageKind::Full {
        let what = match point.synthetic_of {
            Some(of) => format!("a synthetic full (of image {of})"),
            None => "a full".to_string(),
        };
        return Ok(Choice::NotNeeded(format!(
            "the newest restore point of disk {disk}, image {}, is {what} already",
            point.uuid
        )));
    }
    let chain = cat.restore_chain(disk, At::Image(point.uuid))?;
    let missing = || {
        format!(
            "the block digest list of image {} (the point a synthetic full of disk {disk} would reproduce) is damaged; remove {} and the list is derived from the chain as it is read",
            point.uuid,
            cat.digest_list_file(&point)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    };
    // No list in this home (a catalog rebuilt from the media has none): it is derived
    // from the point as read from its chain ([`super::derive`]).
    let point_list = match cat.digest_list_file(&point) {
        Some(p) if p.is_file() => p,
        _ => {
            return Ok(Choice::Build {
                point: Box::new(point),
                chain,
                point_list: None,
            })
        }
    };
    match verify_digest_list(&point_list, Some(u64::from(point.block_size))) {
        Ok(s) if s.disk_size == point.disk_size => {}
        Ok(s) => {
            return Err(Error::Failed(format!(
                "the block digest list of image {} ({}) describes a disk of {} bytes, the image {} bytes: {}",
                point.uuid,
                point_list.display(),
                s.disk_size,
                point.disk_size,
                missing()
            )))
        }
        Err(e) => {
            return Err(Error::Failed(format!(
                "the block digest list of image {} is unusable ({e}): {}",
                point.uuid,
                missing()
            )))
        }
    }
    Ok(Choice::Build {
        point: Box::new(point),
        chain,
        point_list: Some(point_list),
    })
}
