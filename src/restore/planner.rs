//! The restore planner: from a chain of images (oldest full first, then incrementals in
//! order), for each image the bytes it alone supplies to the restored disk: its
//! coverage minus the coverage of every later image, clipped to the target disk size.
//! A restore that reads the images in order and writes each image's own extents writes
//! every output byte exactly once.

use thiserror::Error;

use crate::extents::ExtentSet;

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
