//! What a restore reads: for each image of a chain, the disk ranges whose final
//! content comes from it (later images supersede earlier ones where they overlap).

use super::*;

/// One image of a restore and the ranges to take from it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlanStep {
    pub image: ImageRow,
    /// Sorted, disjoint; sub-ranges of the image's own extents (with their `is_zero`).
    pub extents: Vec<Extent>,
}

/// For extents lists of a chain (oldest first), the part of each list not covered by
/// any later list. Pure; `O(total extents * log)` per image.
pub fn effective_extents(chain: &[Vec<Extent>]) -> Vec<Vec<Extent>> {
    // Disjoint, sorted ranges [start, end) already claimed by newer images.
    let mut covered: Vec<(u64, u64)> = Vec::new();
    let mut out = vec![Vec::new(); chain.len()];
    for (k, extents) in chain.iter().enumerate().rev() {
        let mut mine = Vec::new();
        for e in extents {
            let (mut pos, end) = (e.offset, e.offset.saturating_add(e.length));
            // First covered range that ends after `pos`.
            let mut i = covered.partition_point(|&(_, ce)| ce <= pos);
            while pos < end {
                match covered.get(i) {
                    Some(&(cs, ce)) if cs < end => {
                        if cs > pos {
                            mine.push(Extent {
                                offset: pos,
                                length: cs - pos,
                                is_zero: e.is_zero,
                            });
                        }
                        pos = pos.max(ce);
                        i += 1;
                    }
                    _ => {
                        mine.push(Extent {
                            offset: pos,
                            length: end - pos,
                            is_zero: e.is_zero,
                        });
                        pos = end;
                    }
                }
            }
        }
        // Merge this image's ranges into `covered`.
        let mut all: Vec<(u64, u64)> = covered
            .iter()
            .copied()
            .chain(
                extents
                    .iter()
                    .map(|e| (e.offset, e.offset.saturating_add(e.length))),
            )
            .collect();
        all.sort_unstable();
        covered.clear();
        for (s, e) in all {
            match covered.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => covered.push((s, e)),
            }
        }
        out[k] = mine;
    }
    out
}

impl Catalog {
    /// The restore chain for `at` with, for each image, the ranges to read from it.
    /// Steps whose ranges are all superseded have an empty list (nothing to read).
    pub fn restore_plan(&self, disk: Uuid, at: At) -> Result<Vec<PlanStep>> {
        let chain = self.restore_chain(disk, at)?;
        let lists = chain
            .iter()
            .map(|i| self.extents(i.uuid))
            .collect::<Result<Vec<_>>>()?;
        Ok(chain
            .into_iter()
            .zip(effective_extents(&lists))
            .map(|(image, extents)| PlanStep { image, extents })
            .collect())
    }
}
