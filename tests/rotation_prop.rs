//! Property: over random schedules of backups (random pools, retentions, allocation
//! policies, fulls and incrementals of several disks), day advances and rotations,
//! nothing a kept restore point needs is ever expired, recycled or overwritten.
//!
//! Runs at the library level (catalog + allocation + rotation over a virtual library,
//! no tape data) for speed. The reference model is independent of the code under test:
//! an image is a kept restore point when its media set's last write plus its pool's
//! retention is still ahead, or it is the newest image of its disk; its chain follows
//! the parents the model recorded.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc, Weekday};
use proptest::prelude::*;
use tape_devices::changer::r#virtual::{VirtualLibrary, VirtualLibraryConfig};
use tapevault::catalog::{
    Allocation, Catalog, Compression, Extent, ImageKind, ImageStats, ImageStatus, NewImage,
    PoolRow, Segment, SessionStatus,
};
use tapevault::error::Error;
use tapevault::home::pools_toml::PoolsFile;
use tapevault::media::allocate::{pick_cartridge, session_media_set, sync_inventory, Pick};
use tapevault::media::{lifecycle, rotate};
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Op {
    Backup {
        pool: usize,
        disk: usize,
        full: bool,
    },
    Advance {
        days: i64,
    },
    Rotate,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..2usize, prop::bool::weighted(0.25))
            .prop_map(|(pool, disk, full)| Op::Backup { pool, disk, full }),
        3 => (0..4i64).prop_map(|days| Op::Advance { days }),
        2 => Just(Op::Rotate),
    ]
}

fn alloc() -> impl Strategy<Value = Allocation> {
    prop_oneof![
        Just(Allocation::PerSession),
        Just(Allocation::Daily),
        Just(Allocation::Weekly(Weekday::Fri)),
        Just(Allocation::Monthly),
        Just(Allocation::Continue),
    ]
}

struct Written {
    set: Uuid,
    pool: usize,
    disk: usize,
    parent: Option<Uuid>,
    barcode: String,
    volume: Uuid,
}

struct Model {
    retention: Vec<Option<u32>>,
    images: Vec<(Uuid, Written)>,
    set_last: HashMap<Uuid, DateTime<Utc>>,
}

impl Model {
    /// Every image a kept restore point needs, with the cartridge+volume it sits on.
    fn needed(&self, now: DateTime<Utc>) -> Vec<(Uuid, &Written)> {
        let by: HashMap<Uuid, &Written> = self.images.iter().map(|(u, w)| (*u, w)).collect();
        let mut kept: Vec<Uuid> = self
            .images
            .iter()
            .filter(|(_, w)| match self.retention[w.pool] {
                None => true,
                Some(d) => now < self.set_last[&w.set] + Duration::days(d as i64),
            })
            .map(|(u, _)| *u)
            .collect();
        for disk in 0..2 {
            if let Some((u, _)) = self.images.iter().rev().find(|(_, w)| w.disk == disk) {
                kept.push(*u);
            }
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for k in kept {
            let mut cur = Some(k);
            while let Some(u) = cur {
                if !seen.insert(u) {
                    break;
                }
                out.push((u, by[&u]));
                cur = by[&u].parent;
            }
        }
        out
    }
}

fn check(
    cat: &Catalog,
    model: &Model,
    now: DateTime<Utc>,
    when: &str,
) -> Result<(), TestCaseError> {
    for (u, w) in model.needed(now) {
        let img = cat.image(u).unwrap();
        prop_assert!(img.is_some(), "{when}: needed image {} is gone", u);
        let img = img.unwrap();
        prop_assert_eq!(
            img.status,
            ImageStatus::Complete,
            "{}: image {} {:?}",
            when,
            u,
            img.note
        );
        let m = cat.media(&w.barcode).unwrap().unwrap();
        prop_assert_eq!(
            m.volume_uuid,
            Some(w.volume),
            "{}: {} relabelled under image {}",
            when,
            &w.barcode,
            u
        );
        prop_assert_eq!(
            m.media_set_uuid,
            Some(w.set),
            "{}: {} recycled under image {}",
            when,
            &w.barcode,
            u
        );
        prop_assert!(
            m.state != tapevault::catalog::MediaState::Expired,
            "{}: {} expired under image {}",
            when,
            &w.barcode,
            u
        );
    }
    Ok(())
}

fn run_schedule(
    retention: Vec<Option<u32>>,
    allocs: Vec<Allocation>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(dir.path()).unwrap();
    let mut lib = VirtualLibrary::create(
        &dir.path().join("lib"),
        &VirtualLibraryConfig {
            slots: 10,
            drives: 1,
            mail_slots: 1,
            cartridges: 10,
            capacity: 1 << 20,
            early_warning: 1 << 16,
        },
    )
    .unwrap();
    let locks = dir.path().join("locks");
    let names = ["a", "b", "c"];
    for (i, n) in names.iter().enumerate() {
        cat.create_pool(&PoolRow {
            name: n.to_string(),
            key_name: None,
            key_fingerprint: None,
            compression: Compression::Off,
            retention_days: retention[i],
            allocation: allocs[i],
            worm: false,
            escrow: false,
            created: Utc::now(),
        })
        .unwrap();
    }
    let disks = [Uuid::new_v4(), Uuid::new_v4()];
    let mut now: DateTime<Utc> = "2026-03-02T06:00:00Z".parse().unwrap();
    let mut model = Model {
        retention: retention.clone(),
        images: Vec::new(),
        set_last: HashMap::new(),
    };
    for (step, op) in ops.into_iter().enumerate() {
        let when = format!("step {step} ({op:?}) at {now}");
        match op {
            Op::Advance { days } => now += Duration::days(days) + Duration::hours(1),
            Op::Rotate => {
                let (_, present) = sync_inventory(&cat, &mut lib).unwrap();
                let plan =
                    rotate::plan(&cat, &present, &PoolsFile::default(), &locks, now).unwrap();
                rotate::apply(&cat, &mut lib, &locks, &plan, now).unwrap();
            }
            Op::Backup { pool, disk, full } => {
                // Sessions are never at the same instant.
                now += Duration::minutes(1);
                std::env::set_var("TAPEVAULT_NOW", now.to_rfc3339());
                let prow = cat.pool(names[pool]).unwrap().unwrap();
                let set = session_media_set(&cat, &prow, now).unwrap();
                let (_, present) = sync_inventory(&cat, &mut lib).unwrap();
                let pick = match pick_cartridge(&cat, &present, &prow, &set, &HashSet::new()) {
                    Ok(p) => p,
                    Err(Error::MediaNeeded(_)) => continue,
                    Err(e) => panic!("{when}: {e}"),
                };
                let barcode = pick.row().barcode.clone();
                let volume = match &pick {
                    Pick::Append(m) => m.volume_uuid.unwrap(),
                    Pick::Join(_) => {
                        // The cartridge is about to be overwritten: nothing needed may be on it.
                        for (u, w) in model.needed(now) {
                            prop_assert!(
                                w.barcode != barcode,
                                "{}: overwriting {} which holds needed image {}",
                                when,
                                &barcode,
                                u
                            );
                        }
                        let v = Uuid::new_v4();
                        let seq = cat
                            .media_in_set(set.uuid)
                            .unwrap()
                            .iter()
                            .filter_map(|m| m.seq_in_set)
                            .max()
                            .map(|s| s + 1)
                            .unwrap_or(0);
                        cat.assign_media(&barcode, names[pool], set.uuid, seq, v)
                            .unwrap();
                        v
                    }
                };
                let parent = if full {
                    None
                } else {
                    cat.newest_good_image(disks[disk]).unwrap().map(|i| i.uuid)
                };
                let sess = cat.begin_session(names[pool], Some(set.uuid)).unwrap();
                let uuid = Uuid::new_v4();
                cat.begin_image(&NewImage {
                    uuid,
                    disk_uuid: disks[disk],
                    vm_name: None,
                    disk_label: None,
                    kind: if parent.is_some() {
                        ImageKind::Incremental
                    } else {
                        ImageKind::Full
                    },
                    parent_uuid: parent,
                    change_id: None,
                    from_change_id: None,
                    disk_size: 4096,
                    block_size: 4096,
                    session_uuid: Some(sess.uuid),
                    pool: Some(names[pool].into()),
                    key_fingerprint: None,
                    compression: Compression::Off,
                    started: now,
                    synthetic_of: None,
                })
                .unwrap();
                cat.complete_image(
                    uuid,
                    &ImageStats {
                        records: 1,
                        finished: Some(now),
                        ..Default::default()
                    },
                    "00",
                    &[Segment {
                        part: 0,
                        barcode: barcode.clone(),
                        tape_file: 1,
                        first_block: 2,
                        last_block: 2,
                        first_seq: 0,
                        last_seq: 0,
                        disk_start: 0,
                        disk_end: 4096,
                    }],
                    &[Extent {
                        offset: 0,
                        length: 4096,
                        is_zero: false,
                    }],
                )
                .unwrap();
                cat.finish_session(sess.uuid, SessionStatus::Complete)
                    .unwrap();
                lifecycle::record_set_write(&cat, set.uuid, now).unwrap();
                model.set_last.insert(set.uuid, now);
                model.images.push((
                    uuid,
                    Written {
                        set: set.uuid,
                        pool,
                        disk,
                        parent,
                        barcode,
                        volume,
                    },
                ));
            }
        }
        check(&cat, &model, now, &when)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn nothing_a_kept_restore_point_needs_is_expired_or_overwritten(
        retention in prop::collection::vec(prop::option::weighted(0.8, 0..6u32), 3),
        allocs in prop::collection::vec(alloc(), 3),
        ops in prop::collection::vec(op(), 10..30),
    ) {
        run_schedule(retention, allocs, ops)?;
    }
}
