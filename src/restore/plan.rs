//! Preparing a restore, before a cartridge moves: the restore point and its chain
//! (newer images that cannot be restored are passed over, see [`Skipped`]), the plan
//! of what each image supplies, the segments to read in media order, the pull list.

use std::collections::HashMap;

use uuid::Uuid;

use super::planner::{plan_restore_sorted, CoveredExtent, ImagePlan, PlanError};
use super::pull_list::{build_pull_list, PullItem};
use crate::catalog::{At, Catalog, ImageRow, Segment, Skipped};
use crate::error::{Error, Result};
use crate::media::allocate::sync_inventory;
use tape_devices::changer::TapeLibrary;

/// Everything decided before a cartridge moves.
pub struct Prepared {
    pub disk: Uuid,
    /// Oldest (the full) first, target last.
    pub chain: Vec<ImageRow>,
    pub plans: Vec<ImagePlan>,
    /// Each chain image's segments (tape order).
    pub segments: Vec<Vec<Segment>>,
    /// Chain indices in reading (media) order; images supplying nothing are left out.
    pub order: Vec<usize>,
    pub pull_list: Vec<PullItem>,
    /// Newer images at or before the point asked for that cannot be restored, newest
    /// first, with why (empty for `--image`).
    pub skipped: Vec<Skipped>,
    /// For each chain image (same order): the point and the image read for it, the
    /// original or a tape-to-tape copy ([`crate::copy::choose`]), and why a copy.
    pub used: Vec<crate::copy::Chosen>,
    /// Set by [`run`] when an image failed its integrity checks: the image to mark.
    pub(super) damaged: std::cell::Cell<Option<Uuid>>,
}

impl Prepared {
    pub fn target(&self) -> &ImageRow {
        self.chain.last().expect("a chain is never empty")
    }

    /// After [`run`] failed: the chain image whose records failed their integrity
    /// checks (to be marked with [`record_damage`]), if that was the failure.
    pub fn damaged_image(&self) -> Option<Uuid> {
        self.damaged.get()
    }

    /// Hex fingerprints of the keys the images to read need.
    pub fn key_fingerprints(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for &i in &self.order {
            if let Some(fp) = &self.chain[i].key_fingerprint {
                if !v.contains(fp) {
                    v.push(fp.clone());
                }
            }
        }
        v
    }

    /// Whether segment `s` of chain image `i` holds data the restore needs.
    pub(super) fn needed(&self, i: usize, s: &Segment) -> bool {
        !self.plans[i].can_skip_segment(s.disk_start, s.disk_end.saturating_sub(s.disk_start))
    }
}

/// Resolve the chain, plan it, and build the pull list. Refreshes the catalog's view
/// of the library so the pull list says where each cartridge is.
pub fn prepare(cat: &Catalog, lib: &mut dyn TapeLibrary, disk: Uuid, at: At) -> Result<Prepared> {
    let (points, skipped) = cat.restore_point(disk, at)?;
    let (_, present) = sync_inventory(cat, lib)?;
    // Each point is read from its original or a copy, whichever is in the library.
    let mut chain = Vec::with_capacity(points.len());
    let mut used = Vec::with_capacity(points.len());
    for p in &points {
        let (img, c) = crate::copy::choose(cat, p, &present)?;
        chain.push(img);
        used.push(c);
    }
    let target_size = chain.last().expect("never empty").disk_size;
    let mut segments = Vec::with_capacity(chain.len());
    for img in &chain {
        segments.push(cat.segments(img.uuid)?);
    }
    // One sweep over the chain's coverage in disk order, read from the catalog side
    // by side (a k-way merge by offset): nothing is held per extent but the plan,
    // which is spooled.
    let ids: Vec<Uuid> = chain.iter().map(|i| i.uuid).collect();
    let plan = cat
        .with_extent_cursors(&ids, |cursors| {
            let streams = cursors
                .into_iter()
                .map(|c| {
                    c.map(|e| {
                        e.map(|e| CoveredExtent {
                            offset: e.offset,
                            len: e.length,
                            is_zero: e.is_zero,
                        })
                    })
                })
                .collect();
            plan_restore_sorted(streams, target_size)
        })?
        .map_err(|e| match e {
            PlanError::Spool(_) | PlanError::Source(_) => Error::Failed(e.to_string()),
            e => Error::Failed(format!(
                "the catalog's extents of the restore chain are inconsistent: {e}"
            )),
        })?;
    if !plan.uncovered.is_empty() {
        let first = plan
            .uncovered
            .reader()
            .next()
            .expect("not empty")
            .map_err(|e| {
                Error::Failed(format!(
                    "reading back the restore plan from its temporary file: {e}"
                ))
            })?;
        return Err(Error::Failed(format!(
            "no image of the restore chain of {} covers {} bytes of the disk (first at bytes {}..{}); the chain cannot be restored bit-identical",
            chain.last().expect("never empty").uuid,
            plan.uncovered.total_bytes(),
            first.offset,
            first.end()
        )));
    }
    let mut prepared = Prepared {
        disk,
        chain,
        plans: plan.images,
        segments,
        order: Vec::new(),
        pull_list: Vec::new(),
        skipped,
        used,
        damaged: std::cell::Cell::new(None),
    };
    // Media order: cartridges ranked by first use in chain order, then by block.
    let mut rank: HashMap<String, usize> = HashMap::new();
    let mut keyed: Vec<(usize, u64, usize)> = Vec::new();
    for i in 0..prepared.chain.len() {
        if prepared.plans[i].data.is_empty() {
            continue;
        }
        let first = prepared.segments[i]
            .iter()
            .find(|s| prepared.needed(i, s))
            .or(prepared.segments[i].first());
        let Some(first) = first else {
            return Err(Error::Failed(format!(
                "image {} supplies data but has no segments in the catalog",
                prepared.chain[i].uuid
            )));
        };
        let n = rank.len();
        let r = *rank.entry(first.barcode.clone()).or_insert(n);
        keyed.push((r, first.first_block, i));
    }
    keyed.sort();
    prepared.order = keyed.into_iter().map(|(_, _, i)| i).collect();
    let reads: Vec<(Uuid, Vec<&Segment>)> = prepared
        .order
        .iter()
        .map(|&i| {
            let segs: Vec<&Segment> = prepared.segments[i]
                .iter()
                .filter(|s| prepared.needed(i, s))
                .collect();
            (prepared.chain[i].uuid, segs)
        })
        .collect();
    prepared.pull_list = build_pull_list(cat, &present, &reads)?;
    Ok(prepared)
}
