//! Which kind of image each disk gets, and why: full, changed-extents incremental or
//! hash-scan incremental, against which base; where the change-tracking epoch is
//! checked.

use std::path::PathBuf;

use crate::catalog::{self, ImageKind};
use crate::error::{Error, Result};
use crate::extent_spool::ExtentList;
use crate::source::changed::ChangedExtents;
use crate::source::export::DirtySince;
use crate::source::nbd::NbdExport;
use crate::source::DEFAULT_BLOCK_SIZE;

use super::*;
use crate::events::NoteKind;

/// How one disk will be read.
pub(super) enum Plan {
    Full {
        kind: ImageKind,
        reason: Option<String>,
    },
    ChangedExtents {
        base: catalog::ImageRow,
        extents: ExtentList,
        base_list: PathBuf,
    },
    HashScan {
        base: catalog::ImageRow,
        base_list: PathBuf,
        reason: Option<String>,
    },
    /// An incremental from a driver's dirty bitmap (see [`crate::source::export`]):
    /// only the dirty extents are read, streamed from `context` on `export`.
    DirtyBitmap {
        base: catalog::ImageRow,
        base_list: PathBuf,
        export: NbdExport,
        context: String,
    },
}

/// What a change-tracking driver offered for this backup.
pub(super) struct Tracked<'a> {
    pub(super) export: &'a NbdExport,
    pub(super) dirty: Option<&'a DirtySince>,
    pub(super) full_reason: Option<&'a str>,
}

impl Job<'_> {
    pub(super) fn decide(
        &self,
        d: &DiskSpec,
        disk_size: u64,
        changed: Option<&ChangedExtents>,
        tracked: Option<Tracked<'_>>,
        mode: Mode,
    ) -> Result<Plan> {
        let cat = self.tape.cat;
        match mode {
            Mode::Copy => {
                return Ok(Plan::Full {
                    kind: ImageKind::Copy,
                    reason: None,
                })
            }
            Mode::Full => {
                return Ok(Plan::Full {
                    kind: ImageKind::Full,
                    reason: None,
                })
            }
            Mode::Auto => {}
        }
        let Some(base) = cat.newest_good_image(d.id)? else {
            let r = "no earlier good image of this disk: taking a full".to_string();
            return Ok(Plan::Full {
                kind: ImageKind::Full,
                reason: Some(r),
            });
        };
        let base_list = match cat.digest_list_file(&base) {
            Some(p) if p.is_file() => p,
            _ => {
                let r = format!(
                    "the block digest list of base image {} is missing: taking a full",
                    base.uuid
                );
                self.tape
                    .events
                    .note(NoteKind::Decision, format!("disk {}: {r}", d.id));
                return Ok(Plan::Full {
                    kind: ImageKind::Full,
                    reason: Some(r),
                });
            }
        };
        if let Some(t) = tracked {
            let full = |r: String| {
                let r = format!("{r}: taking a full");
                self.tape
                    .events
                    .note(NoteKind::Decision, format!("disk {}: {r}", d.id));
                Ok(Plan::Full {
                    kind: ImageKind::Full,
                    reason: Some(r),
                })
            };
            let Some(dirty) = t.dirty else {
                return full(t.full_reason.map(str::to_string).unwrap_or_else(|| {
                    format!(
                        "{} has no record of the changes since image {} (change id {:?})",
                        t.export.uri(),
                        base.uuid,
                        base.change_id.as_deref().unwrap_or("")
                    )
                }));
            };
            // Checked exactly as a changed-extents file's change id is: the bitmap must
            // continue the base's epoch, on a disk of the same size.
            let mismatch = match &base.change_id {
                None => Some(format!(
                    "the newest good image {} recorded no change id, so dirty bitmap {} (epoch {:?}) cannot be trusted",
                    base.uuid, dirty.context, dirty.change_id
                )),
                Some(rec) if *rec != dirty.change_id => Some(format!(
                    "dirty bitmap {} covers epoch {:?}, but the newest good image {} recorded change id {:?}",
                    dirty.context, dirty.change_id, base.uuid, rec
                )),
                Some(_) if disk_size != base.disk_size => Some(format!(
                    "the disk size changed from {} to {} bytes since image {}",
                    base.disk_size, disk_size, base.uuid
                )),
                Some(_) if base.block_size as u64 != DEFAULT_BLOCK_SIZE => Some(format!(
                    "image {} was tracked in {}-byte blocks",
                    base.uuid, base.block_size
                )),
                Some(_) => None,
            };
            if let Some(m) = mismatch {
                return full(m);
            }
            return Ok(Plan::DirtyBitmap {
                base,
                base_list,
                export: t.export.clone(),
                context: dirty.context.clone(),
            });
        }
        if let Some(ce) = changed {
            let recorded = base.change_id.clone().unwrap_or_default();
            let mismatch = if base.change_id.is_none() {
                Some(format!(
                    "the newest good image {} recorded no change id, so the changed-extents file (relative to {:?}) cannot be trusted",
                    base.uuid, ce.from_change_id
                ))
            } else if ce.from_change_id != recorded {
                Some(format!(
                    "the changed-extents file is relative to change id {:?}, but the newest good image {} recorded change id {:?}",
                    ce.from_change_id, base.uuid, recorded
                ))
            } else if disk_size != base.disk_size {
                Some(format!(
                    "the disk size changed from {} to {} bytes since image {}",
                    base.disk_size, disk_size, base.uuid
                ))
            } else if base.block_size as u64 != DEFAULT_BLOCK_SIZE {
                Some(format!(
                    "image {} was tracked in {}-byte blocks",
                    base.uuid, base.block_size
                ))
            } else {
                None
            };
            if let Some(m) = mismatch {
                // The file is not used, so its change id is not recorded either: a
                // file of another disk (or a stale one) must never start an epoch.
                let r = format!(
                    "{m}: falling back to a hash scan; the new image records no change id, so changed-extents files are trusted again only after a full backup with one (`--full --changed-extents FILE`)"
                );
                self.tape
                    .events
                    .note(NoteKind::Decision, format!("disk {}: {r}", d.id));
                return Ok(Plan::HashScan {
                    base,
                    base_list,
                    reason: Some(r),
                });
            }
            let extents = ce.aligned(DEFAULT_BLOCK_SIZE, disk_size).map_err(|e| {
                Error::Usage(format!("changed-extents file for disk {}: {e}", d.id))
            })?;
            return Ok(Plan::ChangedExtents {
                base,
                extents,
                base_list,
            });
        }
        // A disk that grew or shrank is scanned against the base as usual (the scan
        // compares the blocks both have, and the new size is recorded), but said out
        // loud: it may also mean the wrong disk was given this disk's UUID.
        let reason = (disk_size != base.disk_size).then(|| {
            let r = format!(
                "the disk {} from {} to {} bytes since image {} (hash scan of the whole disk); if this is not the same disk, give it its own --disk-id",
                if disk_size > base.disk_size { "grew" } else { "shrank" },
                base.disk_size,
                disk_size,
                base.uuid
            );
            self.tape
                    .events
                    .note(NoteKind::Decision, format!("disk {}: {r}", d.id));
            r
        });
        Ok(Plan::HashScan {
            base,
            base_list,
            reason,
        })
    }

    /// Say which newer images an automatic backup passed over as its base (they cannot
    /// be restored), so building on an older point is never silent.
    pub(super) fn base_note(&self, d: &DiskSpec, mode: Mode) -> Result<Option<String>> {
        if mode != Mode::Auto {
            return Ok(None);
        }
        let cat = self.tape.cat;
        let base = cat.newest_good_image(d.id)?;
        let base = base.as_ref();
        let passed = cat.unrestorable_newer(d.id, base)?;
        if passed.is_empty() {
            return Ok(None);
        }
        let list = passed
            .iter()
            .map(|k| {
                format!(
                    "{} {} of {} ({})",
                    k.kind,
                    k.image,
                    crate::timefmt::show(&k.started),
                    k.reason
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Some(match base {
            Some(b) => format!(
                "the newest restorable image is {} of {}: it is the base, passing over {} newer image(s) that cannot be restored: {list}",
                b.uuid,
                crate::timefmt::show(&b.started),
                passed.len()
            ),
            None => format!(
                "no image of this disk can be restored, so none is a base: passed over {} image(s): {list}",
                passed.len()
            ),
        }))
    }
}
