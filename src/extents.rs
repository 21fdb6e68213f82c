//! Byte-range sets over a disk and the restore planner.
//!
//! [`ExtentSet`] is an interval set over `u64` byte offsets, kept coalesced (no two
//! stored ranges overlap or touch) in a `BTreeMap` keyed by start, so point and range
//! queries cost O(log n) and an insert or removal costs O(log n) plus the ranges it
//! swallows.
//!
//! [`plan_restore`] turns a chain of images (oldest full first, then incrementals in
//! order) into, for each image, the bytes it alone supplies to the restored disk: its
//! coverage minus the coverage of every later image, clipped to the target disk size.
//! A restore that reads the images in order and writes each image's own extents writes
//! every output byte exactly once.

use std::collections::BTreeMap;
use std::ops::Bound;

use thiserror::Error;

/// A byte range `[offset, offset + len)` on a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

impl Extent {
    pub const fn new(offset: u64, len: u64) -> Self {
        Extent { offset, len }
    }

    /// One past the last byte. Saturates, so an extent that would overflow ends at
    /// `u64::MAX` (callers validate inputs before building extents).
    pub const fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The overlap of two extents, if any.
    pub fn intersection(&self, other: &Extent) -> Option<Extent> {
        let start = self.offset.max(other.offset);
        let end = self.end().min(other.end());
        (start < end).then(|| Extent::new(start, end - start))
    }
}

/// A set of byte offsets stored as coalesced, sorted, disjoint ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentSet {
    /// start -> end (exclusive). Invariant: ranges are non-empty, disjoint and not
    /// adjacent (adjacent ranges are merged).
    ranges: BTreeMap<u64, u64>,
}

impl ExtentSet {
    pub fn new() -> Self {
        ExtentSet::default()
    }

    /// Number of stored (coalesced) ranges.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Total number of bytes in the set.
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Ranges in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = Extent> + '_ {
        self.ranges.iter().map(|(&s, &e)| Extent::new(s, e - s))
    }

    /// Adds `[offset, offset + len)`, merging with overlapping or adjacent ranges.
    pub fn insert(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut start = offset;
        let mut end = offset.saturating_add(len);
        // A range starting at or before `start` that reaches `start` merges.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        // Every range starting inside [start, end] merges.
        loop {
            let next = self
                .ranges
                .range((Bound::Included(start), Bound::Included(end)))
                .next()
                .map(|(&s, &e)| (s, e));
            match next {
                Some((s, e)) => {
                    self.ranges.remove(&s);
                    end = end.max(e);
                }
                None => break,
            }
        }
        self.ranges.insert(start, end);
    }

    /// Removes `[offset, offset + len)`.
    pub fn remove(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let start = offset;
        let end = offset.saturating_add(len);
        // A range starting before `start` may straddle it.
        if let Some((&s, &e)) = self.ranges.range(..start).next_back() {
            if e > start {
                self.ranges.insert(s, start);
                if e > end {
                    self.ranges.insert(end, e);
                    return;
                }
            }
        }
        loop {
            let next = self
                .ranges
                .range((Bound::Included(start), Bound::Excluded(end)))
                .next()
                .map(|(&s, &e)| (s, e));
            match next {
                Some((s, e)) => {
                    self.ranges.remove(&s);
                    if e > end {
                        self.ranges.insert(end, e);
                        break;
                    }
                }
                None => break,
            }
        }
    }

    /// Adds every range of `other`.
    pub fn union_with(&mut self, other: &ExtentSet) {
        for e in other.iter() {
            self.insert(e.offset, e.len);
        }
    }

    /// Removes every range of `other`.
    pub fn subtract(&mut self, other: &ExtentSet) {
        for e in other.iter() {
            self.remove(e.offset, e.len);
        }
    }

    /// Keeps only bytes below `end`.
    pub fn clip(&mut self, end: u64) {
        self.remove(end, u64::MAX - end);
    }

    /// The parts of `[offset, offset + len)` that are in the set, ascending.
    pub fn intersect_range(&self, offset: u64, len: u64) -> impl Iterator<Item = Extent> + '_ {
        let query = Extent::new(offset, len);
        let first = self
            .ranges
            .range(..=offset)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(offset);
        self.ranges
            .range(first..query.end())
            .filter_map(move |(&s, &e)| Extent::new(s, e - s).intersection(&query))
    }

    /// The bytes in both sets.
    pub fn intersect(&self, other: &ExtentSet) -> ExtentSet {
        let (small, big) = if self.range_count() <= other.range_count() {
            (self, other)
        } else {
            (other, self)
        };
        let mut out = ExtentSet::new();
        for e in small.iter() {
            for x in big.intersect_range(e.offset, e.len) {
                out.insert(x.offset, x.len);
            }
        }
        out
    }

    /// Whether any byte of `[offset, offset + len)` is in the set.
    pub fn overlaps(&self, offset: u64, len: u64) -> bool {
        self.intersect_range(offset, len).next().is_some()
    }

    /// Whether the byte at `offset` is in the set.
    pub fn contains(&self, offset: u64) -> bool {
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &e)| e > offset)
    }

    /// Whether every byte of `[offset, offset + len)` is in the set.
    pub fn contains_range(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &e)| e >= offset.saturating_add(len))
    }
}

impl FromIterator<Extent> for ExtentSet {
    fn from_iter<I: IntoIterator<Item = Extent>>(iter: I) -> Self {
        let mut set = ExtentSet::new();
        for e in iter {
            set.insert(e.offset, e.len);
        }
        set
    }
}

/// One extent an image covers: either data it carries, or a run it records as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoveredExtent {
    pub offset: u64,
    pub len: u64,
    pub is_zero: bool,
}

/// What one image of a restore chain supplies to the restored disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImagePlan {
    /// Bytes to read from this image's data records and write to the output.
    pub data: ExtentSet,
    /// Bytes this image records as zeros: no data to read; the output must read as
    /// zeros there (a hole in a fresh sparse file, or written zeros on a device).
    pub zero: ExtentSet,
}

impl ImagePlan {
    /// Whether a segment of this image covering disk range `[offset, offset + len)`
    /// can be skipped (located past) because it holds no data this image supplies.
    pub fn can_skip_segment(&self, offset: u64, len: u64) -> bool {
        !self.data.overlaps(offset, len)
    }
}

/// The whole restore plan: one [`ImagePlan`] per chain image, in chain order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestorePlan {
    pub images: Vec<ImagePlan>,
    /// Bytes of the target disk that no image of the chain covers. Empty for a chain
    /// that starts with a full image of a disk at least as large as the target; the
    /// restore decides whether anything else is an error.
    pub uncovered: ExtentSet,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("image {image} of the restore chain lists extents that overlap each other near byte {offset}; its extent list is inconsistent")]
    OverlapWithinImage { image: usize, offset: u64 },
    #[error("image {image} of the restore chain lists an extent at {offset} of length {len} that overflows a 64-bit offset")]
    ExtentOverflow { image: usize, offset: u64, len: u64 },
}

/// Plans a restore of a disk of `target_disk_size` bytes from `chain` (oldest first;
/// each entry is one image's covered extents, in any order, not overlapping within the
/// image). Later images win: each image supplies its coverage minus every later
/// image's coverage, clipped to the target size. Zero-length extents are ignored.
pub fn plan_restore(
    chain: &[Vec<CoveredExtent>],
    target_disk_size: u64,
) -> Result<RestorePlan, PlanError> {
    let mut claimed = ExtentSet::new();
    let mut images = vec![ImagePlan::default(); chain.len()];
    for (idx, extents) in chain.iter().enumerate().rev() {
        let mut coverage = ExtentSet::new();
        let mut data = ExtentSet::new();
        let mut zero = ExtentSet::new();
        for e in extents {
            if e.len == 0 {
                continue;
            }
            if e.offset.checked_add(e.len).is_none() {
                return Err(PlanError::ExtentOverflow {
                    image: idx,
                    offset: e.offset,
                    len: e.len,
                });
            }
            if coverage.overlaps(e.offset, e.len) {
                return Err(PlanError::OverlapWithinImage {
                    image: idx,
                    offset: e.offset,
                });
            }
            coverage.insert(e.offset, e.len);
            // Only what lies below the target size and is not claimed by a later image.
            let clipped_len = target_disk_size.saturating_sub(e.offset).min(e.len);
            if clipped_len == 0 {
                continue;
            }
            let target = if e.is_zero { &mut zero } else { &mut data };
            let mut cursor = e.offset;
            let end = e.offset + clipped_len;
            for taken in claimed.intersect_range(e.offset, clipped_len) {
                if taken.offset > cursor {
                    target.insert(cursor, taken.offset - cursor);
                }
                cursor = taken.end();
            }
            if cursor < end {
                target.insert(cursor, end - cursor);
            }
        }
        claimed.union_with(&coverage);
        images[idx] = ImagePlan { data, zero };
    }
    let mut uncovered = ExtentSet::new();
    uncovered.insert(0, target_disk_size);
    uncovered.subtract(&claimed);
    Ok(RestorePlan { images, uncovered })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(v: &[(u64, u64)]) -> ExtentSet {
        v.iter().map(|&(o, l)| Extent::new(o, l)).collect()
    }

    fn ranges(s: &ExtentSet) -> Vec<(u64, u64)> {
        s.iter().map(|e| (e.offset, e.len)).collect()
    }

    #[test]
    fn insert_coalesces_overlapping_and_adjacent() {
        let s = set(&[(10, 5), (20, 5), (15, 5), (0, 1), (30, 10), (35, 2)]);
        assert_eq!(ranges(&s), vec![(0, 1), (10, 15), (30, 10)]);
        assert_eq!(s.total_bytes(), 26);
    }

    #[test]
    fn remove_splits_and_trims() {
        let mut s = set(&[(0, 100)]);
        s.remove(10, 10);
        s.remove(90, 50);
        s.remove(0, 1);
        assert_eq!(ranges(&s), vec![(1, 9), (20, 70)]);
        assert!(s.contains(1) && !s.contains(0) && !s.contains(15) && s.contains(89));
        assert!(s.contains_range(20, 70) && !s.contains_range(19, 2));
    }

    #[test]
    fn intersect_and_overlaps() {
        let a = set(&[(0, 10), (20, 10)]);
        let b = set(&[(5, 20)]);
        assert_eq!(ranges(&a.intersect(&b)), vec![(5, 5), (20, 5)]);
        assert!(a.overlaps(9, 1) && !a.overlaps(10, 10) && a.overlaps(29, 100));
    }

    #[test]
    fn segment_skip_follows_data_not_zeros() {
        let chain = vec![
            vec![
                CoveredExtent {
                    offset: 0,
                    len: 100,
                    is_zero: false,
                },
                CoveredExtent {
                    offset: 100,
                    len: 100,
                    is_zero: true,
                },
            ],
            vec![CoveredExtent {
                offset: 0,
                len: 50,
                is_zero: false,
            }],
        ];
        let plan = plan_restore(&chain, 200).unwrap();
        assert!(plan.images[0].can_skip_segment(0, 50));
        assert!(!plan.images[0].can_skip_segment(0, 51));
        assert!(plan.images[0].can_skip_segment(100, 100));
        assert!(!plan.images[1].can_skip_segment(49, 10));
        assert!(plan.uncovered.is_empty());
    }

    #[test]
    fn overlapping_extents_within_one_image_are_rejected() {
        let chain = vec![vec![
            CoveredExtent {
                offset: 0,
                len: 10,
                is_zero: false,
            },
            CoveredExtent {
                offset: 5,
                len: 10,
                is_zero: true,
            },
        ]];
        assert_eq!(
            plan_restore(&chain, 20),
            Err(PlanError::OverlapWithinImage {
                image: 0,
                offset: 5
            })
        );
    }

    proptest! {
        #[test]
        fn set_ops_match_a_bitmap(ops in prop::collection::vec((any::<bool>(), 0u64..200, 0u64..40), 0..60)) {
            let mut s = ExtentSet::new();
            let mut model = [false; 256];
            for (add, off, len) in ops {
                if add { s.insert(off, len) } else { s.remove(off, len) }
                for b in &mut model[off as usize..(off + len) as usize] { *b = add; }
            }
            let mut prev_end = None;
            for e in s.iter() {
                prop_assert!(e.len > 0);
                if let Some(p) = prev_end { prop_assert!(e.offset > p, "not coalesced"); }
                prev_end = Some(e.end());
            }
            for (i, &m) in model.iter().enumerate() {
                prop_assert_eq!(s.contains(i as u64), m, "byte {}", i);
            }
        }

        /// The planner against a byte-array model: apply images oldest to newest,
        /// newest wins. Replaying the plan must produce the same bytes and write
        /// each byte at most once; uncovered bytes are exactly the model's untouched ones.
        #[test]
        fn plan_reconstructs_model_and_writes_each_byte_once(
            target in 0u64..300,
            chain in prop::collection::vec(
                prop::collection::vec((0u64..320, 0u64..64, any::<bool>()), 0..8), 1..6)
        ) {
            // Make each image's extents non-overlapping (later ones in the image trimmed).
            let chain: Vec<Vec<CoveredExtent>> = chain.into_iter().map(|raw| {
                let mut taken = ExtentSet::new();
                let mut out = Vec::new();
                for (off, len, z) in raw {
                    if taken.overlaps(off, len) { continue; }
                    taken.insert(off, len);
                    out.push(CoveredExtent { offset: off, len, is_zero: z });
                }
                out
            }).collect();
            let value = |img: usize, off: u64| -> u8 { (img as u8 + 1).wrapping_mul(37) ^ (off as u8) | 1 };
            let mut model: Vec<Option<u8>> = vec![None; 400];
            for (img, exts) in chain.iter().enumerate() {
                for e in exts {
                    for o in e.offset..e.offset + e.len {
                        model[o as usize] = Some(if e.is_zero { 0 } else { value(img, o) });
                    }
                }
            }
            let plan = plan_restore(&chain, target).unwrap();
            prop_assert_eq!(plan.images.len(), chain.len());
            let mut out: Vec<Option<u8>> = vec![None; target as usize];
            let mut writes = vec![0u32; target as usize];
            for (img, p) in plan.images.iter().enumerate() {
                for (set, zero) in [(&p.data, false), (&p.zero, true)] {
                    for e in set.iter() {
                        prop_assert!(e.end() <= target);
                        for o in e.offset..e.end() {
                            writes[o as usize] += 1;
                            out[o as usize] = Some(if zero { 0 } else { value(img, o) });
                        }
                    }
                }
            }
            prop_assert!(writes.iter().all(|&w| w <= 1), "a byte written twice");
            for o in 0..target as usize {
                prop_assert_eq!(out[o], model[o], "byte {}", o);
                prop_assert_eq!(plan.uncovered.contains(o as u64), model[o].is_none());
            }
        }
    }
}
