//! Restore plans: which ranges each image of a chain contributes, as the restore makes
//! them (the catalog's extents read side by side, one cursor per chain image, into
//! the streaming planner).
#[path = "catalog_support.rs"]
mod support;

use proptest::prelude::*;
use support::*;
use tapevault::catalog::*;
use tapevault::restore::{plan_restore_sorted, CoveredExtent, RestorePlan};
use uuid::Uuid;

const N: u64 = 64;

fn extents_strategy(full: bool) -> impl Strategy<Value = Vec<Extent>> {
    // Cut points split [0, N) into pieces; each piece is kept (or always, for a full),
    // and is zero or data.
    (
        proptest::collection::btree_set(1..N, 0..8),
        proptest::collection::vec((any::<bool>(), any::<bool>()), 9),
    )
        .prop_map(move |(cuts, flags)| {
            let mut points: Vec<u64> = vec![0];
            points.extend(cuts);
            points.push(N);
            points
                .windows(2)
                .zip(flags)
                .filter(|(_, (keep, _))| full || *keep)
                .map(|(w, (_, zero))| Extent {
                    offset: w[0],
                    length: w[1] - w[0],
                    is_zero: zero,
                })
                .collect()
        })
}

/// The plan of a chain of extent lists (oldest first), each read as a stream in order.
fn plan(chain: &[Vec<Extent>], target: u64) -> RestorePlan {
    let streams = chain
        .iter()
        .map(|l| {
            l.iter().map(|e| {
                Ok::<_, String>(CoveredExtent {
                    offset: e.offset,
                    len: e.length,
                    is_zero: e.is_zero,
                })
            })
        })
        .collect();
    plan_restore_sorted(streams, target).unwrap()
}

/// Each image's ranges as catalog extents: its data, then its zeros, merged in order.
fn ranges(plan: &RestorePlan) -> Vec<Vec<Extent>> {
    plan.images
        .iter()
        .map(|p| {
            let mut v: Vec<Extent> = Vec::new();
            for (list, is_zero) in [(&p.data, false), (&p.zero, true)] {
                v.extend(list.to_vec().unwrap().into_iter().map(|e| Extent {
                    offset: e.offset,
                    length: e.len,
                    is_zero,
                }));
            }
            v.sort_by_key(|e| e.offset);
            v
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn plans_match_a_byte_model(
        full in extents_strategy(true),
        incs in proptest::collection::vec(extents_strategy(false), 0..5),
    ) {
        let mut chain = vec![full];
        chain.extend(incs);
        let p = plan(&chain, N);
        prop_assert!(p.uncovered.is_empty());
        let eff = ranges(&p);
        prop_assert_eq!(eff.len(), chain.len());
        // Byte model: the newest image covering each byte owns it.
        let mut owner = vec![(usize::MAX, false); N as usize];
        for (k, list) in chain.iter().enumerate() {
            for e in list {
                for b in e.offset..e.offset + e.length {
                    owner[b as usize] = (k, e.is_zero);
                }
            }
        }
        let mut got = vec![(usize::MAX, false); N as usize];
        for (k, list) in eff.iter().enumerate() {
            for w in list.windows(2) {
                prop_assert!(w[0].offset + w[0].length <= w[1].offset, "unsorted or overlapping");
            }
            for e in list {
                prop_assert!(e.length > 0);
                for b in e.offset..e.offset + e.length {
                    prop_assert_eq!(got[b as usize].0, usize::MAX, "byte {} given twice", b);
                    got[b as usize] = (k, e.is_zero);
                }
            }
        }
        prop_assert_eq!(got, owner);
    }
}

#[test]
fn restore_plan_reads_only_what_later_images_do_not_replace() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let f0 = full(&c, disk, 0);
    let i1 = incr(&c, disk, f0, 1); // covers 65536..131072
    let chain = c.restore_chain(disk, At::Latest).unwrap();
    assert_eq!(uuids(&chain), vec![f0, i1]);
    // As the restore plans it: one cursor per image over the catalog's extents.
    let p = c
        .with_extent_cursors(&uuids(&chain), |cursors| {
            let streams = cursors
                .into_iter()
                .map(|cur| {
                    cur.map(|e| {
                        e.map(|e| CoveredExtent {
                            offset: e.offset,
                            len: e.length,
                            is_zero: e.is_zero,
                        })
                    })
                })
                .collect();
            plan_restore_sorted(streams, DISK_SIZE)
        })
        .unwrap()
        .unwrap();
    assert!(p.uncovered.is_empty());
    let r = ranges(&p);
    assert_eq!(
        r[0],
        vec![
            Extent {
                offset: 0,
                length: 65536,
                is_zero: false
            },
            Extent {
                offset: 131072,
                length: DISK_SIZE / 2 - 131072,
                is_zero: false
            },
            Extent {
                offset: DISK_SIZE / 2,
                length: DISK_SIZE / 2,
                is_zero: true
            },
        ]
    );
    assert_eq!(
        r[1],
        vec![Extent {
            offset: 65536,
            length: 65536,
            is_zero: false
        }]
    );
}
