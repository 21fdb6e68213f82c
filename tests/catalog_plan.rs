//! Restore plans: which ranges each image of a chain contributes.
#[path = "catalog_support.rs"]
mod support;

use proptest::prelude::*;
use support::*;
use tapevault::catalog::*;
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn effective_extents_match_a_byte_model(
        full in extents_strategy(true),
        incs in proptest::collection::vec(extents_strategy(false), 0..5),
    ) {
        let mut chain = vec![full];
        chain.extend(incs);
        let eff = effective_extents(&chain);
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
    let plan = c.restore_plan(disk, At::Latest).unwrap();
    assert_eq!(
        plan.iter().map(|s| s.image.uuid).collect::<Vec<_>>(),
        vec![f0, i1]
    );
    assert_eq!(
        plan[0].extents,
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
        plan[1].extents,
        vec![Extent {
            offset: 65536,
            length: 65536,
            is_zero: false
        }]
    );
}
