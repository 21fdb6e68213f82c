//! Byte-range sets over a disk, shared by backup, sources and the catalog.
//!
//! [`ExtentSet`] is an interval set over `u64` byte offsets, kept coalesced (no two
//! stored ranges overlap or touch) in a `BTreeMap` keyed by start, so point and range
//! queries cost O(log n) and an insert or removal costs O(log n) plus the ranges it
//! swallows.
//!
//! The restore planner built on these sets is in `restore/planner.rs`.

use std::collections::BTreeMap;
use std::ops::Bound;

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

    }
}
