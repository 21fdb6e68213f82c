//! The restore planner: from a chain of images (oldest full first, then incrementals in
//! order), for each image the bytes it alone supplies to the restored disk: its
//! coverage minus the coverage of every later image, clipped to the target disk size.
//! A restore that reads the images in order and writes each image's own extents writes
//! every output byte exactly once.
//!
//! The plan is made in one sweep over the chain's coverage in disk order: a k-way
//! merge by offset of each image's extents (read one at a time, from the catalog),
//! where the newest image covering a range owns it. Nothing grows with the number of
//! extents but the plan itself, which is spooled ([`ExtentList`]: beyond a bounded
//! number of extents in memory, the rest in a temporary file).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use thiserror::Error;

use crate::extent_spool::{run_limit, Ascending, ExtentList};
use crate::extents::Extent;

/// One extent an image covers: either data it carries, or a run it records as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoveredExtent {
    pub offset: u64,
    pub len: u64,
    pub is_zero: bool,
}

/// What one image of a restore chain supplies to the restored disk.
#[derive(Debug, Clone, Default)]
pub struct ImagePlan {
    /// Bytes to read from this image's data records and write to the output.
    pub data: ExtentList,
    /// Bytes this image records as zeros: no data to read; the output must read as
    /// zeros there (a hole in a fresh sparse file, or written zeros on a device).
    pub zero: ExtentList,
}

impl ImagePlan {
    /// Whether a segment of this image covering disk range `[offset, offset + len)`
    /// can be skipped (located past) because it holds no data this image supplies.
    /// When the plan cannot be read back from its temporary file, the segment is read
    /// (the restore then fails on the same error where it needs the plan).
    pub fn can_skip_segment(&self, offset: u64, len: u64) -> bool {
        matches!(self.data.overlaps(offset, len), Ok(false))
    }
}

/// The whole restore plan: one [`ImagePlan`] per chain image, in chain order.
#[derive(Debug, Clone, Default)]
pub struct RestorePlan {
    pub images: Vec<ImagePlan>,
    /// Bytes of the target disk that no image of the chain covers. Empty for a chain
    /// that starts with a full image of a disk at least as large as the target; the
    /// restore decides whether anything else is an error.
    pub uncovered: ExtentList,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("image {image} of the restore chain lists extents that overlap each other near byte {offset}; its extent list is inconsistent")]
    OverlapWithinImage { image: usize, offset: u64 },
    #[error("image {image} of the restore chain lists an extent at {offset} of length {len} that overflows a 64-bit offset")]
    ExtentOverflow { image: usize, offset: u64, len: u64 },
    #[error("image {image} of the restore chain lists its extents out of order near byte {offset}; they must come ascending")]
    Unsorted { image: usize, offset: u64 },
    #[error("reading the restore chain's extents: {0}")]
    Source(String),
    #[error("keeping the restore plan in a temporary file failed: {0}; check the space in TMPDIR")]
    Spool(String),
}

/// Plans a restore of a disk of `target_disk_size` bytes from `chain` (oldest first;
/// each entry is one image's covered extents, in any order, not overlapping within the
/// image). Later images win: each image supplies its coverage minus every later
/// image's coverage, clipped to the target size. Zero-length extents are ignored.
pub fn plan_restore(
    chain: &[Vec<CoveredExtent>],
    target_disk_size: u64,
) -> Result<RestorePlan, PlanError> {
    let mut sorted: Vec<Vec<CoveredExtent>> = chain.to_vec();
    for v in &mut sorted {
        v.sort_by_key(|e| e.offset);
    }
    plan_restore_sorted(
        sorted
            .into_iter()
            .map(|v| v.into_iter().map(Ok::<_, PlanError>))
            .collect(),
        target_disk_size,
    )
}

/// One image's place in the sweep.
struct Cursor<I> {
    extents: I,
    /// The extent at or after the sweep position, if any is left.
    current: Option<CoveredExtent>,
    /// Where the last extent taken ended (the next must not start before).
    end: u64,
    /// Whether `current` has started (the image covers the sweep position).
    active: bool,
}

/// [`plan_restore`] over each image's extents as they come, ascending by offset (as
/// the catalog hands them out), in one sweep: what is held is one extent per image and
/// the plan being spooled.
pub fn plan_restore_sorted<I, E>(chain: Vec<I>, target: u64) -> Result<RestorePlan, PlanError>
where
    I: Iterator<Item = Result<CoveredExtent, E>>,
    E: std::fmt::Display,
{
    let k = chain.len();
    // Each image gets two spooled lists (data and zeros), plus the uncovered one: the
    // memory limit is shared among them.
    let limit = (run_limit() / (2 * k + 1)).max(2);
    let spool = |e: std::io::Error| PlanError::Spool(e.to_string());
    let mut builders: Vec<(Ascending, Ascending)> = (0..k)
        .map(|_| (Ascending::new(limit), Ascending::new(limit)))
        .collect();
    let mut uncovered = Ascending::new(limit);
    let mut cursors: Vec<Cursor<I>> = chain
        .into_iter()
        .map(|extents| Cursor {
            extents,
            current: None,
            end: 0,
            active: false,
        })
        .collect();
    // Events: (position, image); an image's next event is its current extent's start
    // (when not active) or end (when active).
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::with_capacity(k);
    let mut active: BTreeSet<usize> = BTreeSet::new();
    for (idx, c) in cursors.iter_mut().enumerate() {
        if advance(idx, c)? {
            heap.push(Reverse((c.current.expect("advanced").offset, idx)));
        }
    }
    let mut x = 0u64;
    while let Some(&Reverse((p, _))) = heap.peek() {
        if p > x {
            // [x, p) belongs to the newest active image, or to nobody.
            let end = p.min(target);
            if end > x {
                let piece = Extent::new(x, end - x);
                match active.last() {
                    Some(&owner) => {
                        let cur = cursors[owner].current.expect("active has an extent");
                        let (data, zero) = &mut builders[owner];
                        let b = if cur.is_zero { zero } else { data };
                        b.push(piece).map_err(spool)?;
                    }
                    None => uncovered.push(piece).map_err(spool)?,
                }
            }
            x = p;
        }
        // Every event at p.
        while let Some(&Reverse((q, idx))) = heap.peek() {
            if q != p {
                break;
            }
            heap.pop();
            let c = &mut cursors[idx];
            if c.active {
                // Its extent ends here: the next one (if any) starts at or after.
                c.active = false;
                active.remove(&idx);
                if advance(idx, c)? {
                    heap.push(Reverse((c.current.expect("advanced").offset, idx)));
                }
            } else {
                c.active = true;
                active.insert(idx);
                let cur = c.current.expect("an event has an extent");
                heap.push(Reverse((cur.offset + cur.len, idx)));
            }
        }
    }
    if x < target {
        uncovered.push(Extent::new(x, target - x)).map_err(spool)?;
    }
    let mut images = Vec::with_capacity(k);
    for (data, zero) in builders {
        images.push(ImagePlan {
            data: data.finish().map_err(spool)?,
            zero: zero.finish().map_err(spool)?,
        });
    }
    Ok(RestorePlan {
        images,
        uncovered: uncovered.finish().map_err(spool)?,
    })
}

/// Takes image `idx`'s next non-empty extent into `c.current`, checking it against
/// the one before; false when the image has none left.
fn advance<I, E>(idx: usize, c: &mut Cursor<I>) -> Result<bool, PlanError>
where
    I: Iterator<Item = Result<CoveredExtent, E>>,
    E: std::fmt::Display,
{
    loop {
        let Some(e) = c.extents.next() else {
            c.current = None;
            return Ok(false);
        };
        let e = e.map_err(|e| PlanError::Source(e.to_string()))?;
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
        if let Some(prev) = c.current.filter(|_| e.offset < c.end) {
            return Err(if e.offset >= prev.offset {
                PlanError::OverlapWithinImage {
                    image: idx,
                    offset: e.offset,
                }
            } else {
                PlanError::Unsorted {
                    image: idx,
                    offset: e.offset,
                }
            });
        }
        c.end = e.offset + e.len;
        c.current = Some(e);
        return Ok(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extents::ExtentSet;
    use proptest::prelude::*;

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
            plan_restore(&chain, 20).err(),
            Some(PlanError::OverlapWithinImage {
                image: 0,
                offset: 5
            })
        );
    }

    proptest! {
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
                    for e in set.to_vec().unwrap() {
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
                prop_assert_eq!(plan.uncovered.contains(o as u64).unwrap(), model[o].is_none());
            }
        }
    }
}
