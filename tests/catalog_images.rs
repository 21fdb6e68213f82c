//! Image life cycle and restore chains.
#[path = "catalog_support.rs"]
mod support;

use chrono::Duration;
use support::*;
use tapevault::catalog::*;
use uuid::Uuid;

fn broken_at(r: Result<Vec<ImageRow>>) -> Uuid {
    match r {
        Err(CatalogError::BrokenChain { broken, .. }) => broken,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn chain_resolution_and_at_semantics() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let [f0, i1, i2, i3] = chain(&c, disk);
    // Another disk's images never leak in.
    let other = Uuid::new_v4();
    full(&c, other, 10);
    assert_eq!(
        uuids(&c.restore_chain(disk, At::Latest).unwrap()),
        vec![f0, i1, i2, i3]
    );
    assert_eq!(
        uuids(&c.restore_chain(disk, At::Time(t(2))).unwrap()),
        vec![f0, i1, i2],
        "at exactly the start time"
    );
    assert_eq!(
        uuids(
            &c.restore_chain(disk, At::Time(t(2) + Duration::minutes(59)))
                .unwrap()
        ),
        vec![f0, i1, i2]
    );
    assert_eq!(
        uuids(&c.restore_chain(disk, At::Image(i1)).unwrap()),
        vec![f0, i1]
    );
    assert!(matches!(
        c.restore_chain(disk, At::Time(t(0) - Duration::seconds(1))),
        Err(CatalogError::NoImage { .. })
    ));
    assert!(matches!(
        c.restore_chain(Uuid::new_v4(), At::Latest),
        Err(CatalogError::NoImage { .. })
    ));
    assert!(matches!(
        c.restore_chain(other, At::Image(i1)),
        Err(CatalogError::Invalid { .. })
    ));
    // A new full starts a new chain.
    let f4 = full(&c, disk, 4);
    let i5 = incr(&c, disk, f4, 5);
    assert_eq!(
        uuids(&c.restore_chain(disk, At::Latest).unwrap()),
        vec![f4, i5]
    );
    assert_eq!(
        uuids(&c.restore_chain(disk, At::Time(t(3))).unwrap()),
        vec![f0, i1, i2, i3]
    );
    assert_eq!(c.newest_good_image(disk).unwrap().unwrap().uuid, i5);
}

#[test]
fn restore_before_corrupt_incremental_still_works() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let [f0, i1, i2, i3] = chain(&c, disk);
    // Marking an image corrupt marks every complete image built on it too.
    assert_eq!(
        c.mark_corrupt(i2, "record 5 failed authentication")
            .unwrap(),
        vec![i3]
    );
    let i3row = c.image(i3).unwrap().unwrap();
    assert_eq!(i3row.status, ImageStatus::Corrupt);
    assert!(
        i3row
            .note
            .as_deref()
            .is_some_and(|n| n.contains(&i2.to_string()) && n.contains("record 5")),
        "{:?}",
        i3row.note
    );
    assert_eq!(
        uuids(&c.restore_chain(disk, At::Time(t(1))).unwrap()),
        vec![f0, i1]
    );
    // The newest good image at 02:00 is i1 (i2 is not good).
    assert_eq!(
        uuids(&c.restore_chain(disk, At::Time(t(2))).unwrap()),
        vec![f0, i1]
    );
    // The newest complete image is i1 now; the corrupt ones name why.
    assert_eq!(
        uuids(&c.restore_chain(disk, At::Latest).unwrap()),
        vec![f0, i1]
    );
    assert_eq!(broken_at(c.restore_chain(disk, At::Image(i3))), i3);
    assert_eq!(broken_at(c.restore_chain(disk, At::Image(i2))), i2);
    let msg = c
        .restore_chain(disk, At::Image(i2))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&i2.to_string()) && msg.contains("record 5"),
        "{msg}"
    );
    // The restore point at the newest time passes both over, newest first, with why.
    let (chain, skipped) = c.restore_point(disk, At::Time(t(3))).unwrap();
    assert_eq!(uuids(&chain), vec![f0, i1]);
    assert_eq!(
        skipped.iter().map(|s| s.image).collect::<Vec<_>>(),
        vec![i3, i2]
    );
    assert!(skipped[1].reason.contains("record 5"), "{:?}", skipped);
    // The next incremental must not build on the broken chain.
    assert_eq!(c.newest_good_image(disk).unwrap().unwrap().uuid, i1);
}

#[test]
fn missing_or_failed_parent_breaks_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    // An incremental whose parent the catalog never saw (e.g. merged from a scan).
    let ghost = Uuid::new_v4();
    let mut row = c.image(full(&c, disk, 0)).unwrap().unwrap();
    row.uuid = Uuid::new_v4();
    row.kind = ImageKind::Incremental;
    row.parent_uuid = Some(ghost);
    row.started = catalog_time(t(1));
    let dump = ImageDump {
        image: row.clone(),
        segments: vec![seg(0, 1, 0, 10)],
        extents: vec![],
    };
    c.merge_image(&dump).unwrap();
    assert_eq!(broken_at(c.restore_chain(disk, At::Latest)), ghost);
    let msg = c.restore_chain(disk, At::Latest).unwrap_err().to_string();
    assert!(msg.contains("missing"), "{msg}");
    // A parent that is failed.
    let f = new_image(disk, ImageKind::Full, None, 2);
    c.begin_image(&f).unwrap();
    c.fail_image(f.uuid, "drive error").unwrap();
    let mut child = row.clone();
    child.uuid = Uuid::new_v4();
    child.parent_uuid = Some(f.uuid);
    child.started = catalog_time(t(3));
    c.merge_image(&ImageDump {
        image: child,
        segments: vec![],
        extents: vec![],
    })
    .unwrap();
    assert_eq!(broken_at(c.restore_chain(disk, At::Latest)), f.uuid);
    // The shared walk of `images` says the same as one walk per image.
    let mut g = row.clone();
    g.uuid = Uuid::new_v4();
    g.parent_uuid = Some(row.uuid);
    g.started = catalog_time(t(4));
    c.merge_image(&ImageDump {
        image: g,
        segments: vec![],
        extents: vec![],
    })
    .unwrap();
    let all = c.images(Some(disk)).unwrap();
    assert_eq!(all.len(), 5);
    let shared = c.unrestorable_reasons(&all).unwrap();
    for i in &all {
        assert_eq!(
            shared[&i.uuid],
            c.unrestorable_reason(i).unwrap(),
            "{}",
            i.uuid
        );
    }
    assert_eq!(
        shared.values().filter(|w| w.is_none()).count(),
        1,
        "{shared:?}"
    );
}

#[test]
fn copy_is_never_a_base_but_restores_alone() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let f0 = full(&c, disk, 0);
    let c1 = image(&c, disk, ImageKind::Copy, None, 1);
    assert_eq!(c.newest_good_image(disk).unwrap().unwrap().uuid, f0);
    let bad = new_image(disk, ImageKind::Incremental, Some(c1), 2);
    assert!(matches!(
        c.begin_image(&bad),
        Err(CatalogError::Invalid { .. })
    ));
    assert_eq!(uuids(&c.restore_chain(disk, At::Latest).unwrap()), vec![c1]);
    let mut with_parent = new_image(disk, ImageKind::Copy, Some(f0), 3);
    with_parent.parent_uuid = Some(f0);
    assert!(c.begin_image(&with_parent).is_err());
}

#[test]
fn failed_and_running_images_are_never_a_base() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let f0 = full(&c, disk, 0);
    let f1 = new_image(disk, ImageKind::Full, None, 1);
    c.begin_image(&f1).unwrap();
    assert_eq!(
        c.newest_good_image(disk).unwrap().unwrap().uuid,
        f0,
        "running image used as base"
    );
    assert_eq!(uuids(&c.restore_chain(disk, At::Latest).unwrap()), vec![f0]);
    assert!(c
        .begin_image(&new_image(disk, ImageKind::Incremental, Some(f1.uuid), 2))
        .is_err());
    c.fail_image(f1.uuid, "cancelled").unwrap();
    assert_eq!(
        c.newest_good_image(disk).unwrap().unwrap().uuid,
        f0,
        "failed image used as base"
    );
    assert!(c
        .begin_image(&new_image(disk, ImageKind::Incremental, Some(f1.uuid), 2))
        .is_err());
    assert!(matches!(
        c.complete_image(f1.uuid, &stats(1), "ab", &[seg(0, 0, 0, 1)], &whole_disk()),
        Err(CatalogError::WrongStatus { .. })
    ));
    assert!(matches!(
        c.fail_image(f0, "x"),
        Err(CatalogError::WrongStatus { .. })
    ));
    assert!(c.newest_good_image(Uuid::new_v4()).unwrap().is_none());
}

#[test]
fn complete_image_is_all_or_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let n = new_image(disk, ImageKind::Full, None, 0);
    c.begin_image(&n).unwrap();
    let good = [seg(0, 63, 0, 4096), seg(64, 127, 4096, 8192)];
    let nothing_visible = |c: &Catalog| {
        let img = c.image(n.uuid).unwrap().unwrap();
        assert_eq!(img.status, ImageStatus::Running);
        assert_eq!(img.content_digest, None);
        assert!(c.segments(n.uuid).unwrap().is_empty());
        assert!(c.extents(n.uuid).unwrap().is_empty());
    };
    // SQLite rejects the third segment (same first_seq) after two were inserted.
    let dup = [good[0].clone(), good[1].clone(), good[1].clone()];
    assert!(matches!(
        c.complete_image(n.uuid, &stats(128), "abcd", &dup, &whole_disk()),
        Err(CatalogError::Sqlite(_))
    ));
    nothing_visible(&c);
    // A segment past the end of the disk, after good ones.
    let past = [
        good[0].clone(),
        good[1].clone(),
        seg(200, 201, DISK_SIZE - 1, DISK_SIZE + 1),
    ];
    assert!(c
        .complete_image(n.uuid, &stats(128), "abcd", &past, &whole_disk())
        .is_err());
    nothing_visible(&c);
    // Extents that leave a gap in a full.
    let gap = [
        Extent {
            offset: 0,
            length: 10,
            is_zero: false,
        },
        Extent {
            offset: 20,
            length: DISK_SIZE - 20,
            is_zero: false,
        },
    ];
    assert!(c
        .complete_image(n.uuid, &stats(128), "abcd", &good, &gap)
        .is_err());
    nothing_visible(&c);
    assert!(c
        .complete_image(n.uuid, &stats(128), "not hex!", &good, &whole_disk())
        .is_err());
    nothing_visible(&c);
    // And another process cannot see partial state either: open a second connection.
    let c2 = open(&d);
    assert!(c2.segments(n.uuid).unwrap().is_empty());
    let done = c
        .complete_image(n.uuid, &stats(128), "ABCD", &good, &whole_disk())
        .unwrap();
    assert_eq!(done.status, ImageStatus::Complete);
    assert_eq!(done.content_digest.as_deref(), Some("abcd"));
    assert_eq!(c2.segments(n.uuid).unwrap(), good.to_vec());
    assert_eq!(c2.extents(n.uuid).unwrap(), whole_disk());
    assert!(matches!(
        c.complete_image(n.uuid, &stats(128), "abcd", &good, &whole_disk()),
        Err(CatalogError::WrongStatus { .. })
    ));
}

#[test]
fn crash_recovery_fails_only_images_of_dead_processes() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let mine = new_image(disk, ImageKind::Full, None, 0);
    let dead = new_image(disk, ImageKind::Full, None, 1);
    let session = c.begin_session("daily", None).unwrap();
    c.begin_image(&mine).unwrap();
    c.begin_image(&dead).unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let raw = rusqlite::Connection::open(d.path().join("catalog.db")).unwrap();
    raw.execute(
        "UPDATE images SET writer=?1 WHERE uuid=?2",
        [format!("{pid}:1"), dead.uuid.to_string()],
    )
    .unwrap();
    raw.execute(
        "UPDATE sessions SET writer=?1 WHERE uuid=?2",
        [format!("{pid}:1"), session.uuid.to_string()],
    )
    .unwrap();
    let live_session = c.begin_session("daily", None).unwrap();
    let failed = c.fail_running_images().unwrap();
    assert_eq!(
        c.session(session.uuid).unwrap().unwrap().status,
        SessionStatus::Failed
    );
    assert_eq!(
        c.session(live_session.uuid).unwrap().unwrap().status,
        SessionStatus::Running
    );
    assert_eq!(failed, vec![dead.uuid]);
    let row = c.image(dead.uuid).unwrap().unwrap();
    assert_eq!(row.status, ImageStatus::Failed);
    assert!(row.note.unwrap().contains("interrupted"));
    assert_eq!(
        c.image(mine.uuid).unwrap().unwrap().status,
        ImageStatus::Running
    );
}

#[test]
fn dependents_media_and_deletion() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let [f0, i1, i2] = chain(&c, disk);
    let f3 = full(&c, disk, 3);
    assert_eq!(uuids(&c.dependents(f0).unwrap()), vec![i1, i2]);
    assert_eq!(uuids(&c.dependents(i2).unwrap()), Vec::<Uuid>::new());
    assert_eq!(c.images_on_media(BARCODE).unwrap().len(), 4);
    assert!(c.images_on_media("OTHER").unwrap().is_empty());
    assert!(
        c.delete_image(f0).is_err(),
        "deleted an image others depend on"
    );
    c.delete_image(i2).unwrap();
    assert!(c.segments(i2).unwrap().is_empty(), "segments cascade");
    assert_eq!(uuids(&c.images(Some(disk)).unwrap()), vec![f0, i1, f3]);
}

#[test]
fn segments_covering_a_range() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let n = new_image(Uuid::new_v4(), ImageKind::Full, None, 0);
    c.begin_image(&n).unwrap();
    let segs: Vec<Segment> = (0..4)
        .map(|i| seg(i * 64, i * 64 + 63, i * 4096, (i + 1) * 4096))
        .collect();
    c.complete_image(n.uuid, &stats(256), "ab", &segs, &whole_disk())
        .unwrap();
    let got = c.segments_covering(n.uuid, 5000, 8193).unwrap();
    assert_eq!(got, segs[1..3].to_vec());
    assert!(c
        .segments_covering(n.uuid, 16384, 20000)
        .unwrap()
        .is_empty());
}

#[test]
fn concurrent_writers_on_one_catalog_all_commit() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let f0 = full(&c, disk, 0);
    let handles: Vec<_> = (0..3)
        .map(|k| {
            let home = d.path().to_path_buf();
            std::thread::spawn(move || {
                // Each thread is its own connection, as separate processes would be.
                let c = Catalog::open(&home).unwrap();
                for j in 0..10 {
                    let n = new_image(Uuid::new_v4(), ImageKind::Full, None, 10 + k * 10 + j);
                    c.begin_image(&n).unwrap();
                    c.complete_image(n.uuid, &stats(1), "ab", &[seg(0, 0, 0, 1)], &whole_disk())
                        .unwrap();
                    c.merge_snapshot(&c.snapshot(SnapshotScope::All).unwrap())
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(c.images(None).unwrap().len(), 31);
    assert!(c
        .images(None)
        .unwrap()
        .iter()
        .all(|i| i.status == ImageStatus::Complete));
    assert_eq!(c.restore_chain(disk, At::Latest).unwrap()[0].uuid, f0);
}

#[test]
fn complete_image_waits_for_another_writer_instead_of_failing() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let n = new_image(Uuid::new_v4(), ImageKind::Full, None, 0);
    c.begin_image(&n).unwrap();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let path = d.path().join("catalog.db");
    let other = std::thread::spawn(move || {
        // Another process holds the write lock and commits a change meanwhile.
        let raw = rusqlite::Connection::open(path).unwrap();
        raw.execute_batch("BEGIN IMMEDIATE; INSERT INTO pools (name, compression, allocation, created) VALUES ('x', 'off', 'continue', '2026-11-01T00:00:00.000000Z');").unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        raw.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    c.complete_image(n.uuid, &stats(1), "ab", &[seg(0, 0, 0, 1)], &whole_disk())
        .unwrap();
    other.join().unwrap();
    assert_eq!(
        c.image(n.uuid).unwrap().unwrap().status,
        ImageStatus::Complete
    );
    assert!(c.pool("x").unwrap().is_some());
}

/// Under a simulated clock many images and sessions share one start time; "newest"
/// then means the one recorded last, never whatever a random UUID sorts as.
#[test]
fn images_and_sessions_with_the_same_start_time_keep_the_order_they_were_recorded_in() {
    let dir = tempfile::tempdir().unwrap();
    let (c, disk) = setup(&dir);
    let mut chain = vec![full(&c, disk, 5)];
    for _ in 0..12 {
        let parent = *chain.last().unwrap();
        chain.push(incr(&c, disk, parent, 5));
    }
    assert_eq!(
        c.newest_good_image(disk).unwrap().map(|i| i.uuid),
        chain.last().copied()
    );
    assert_eq!(uuids(&c.images(Some(disk)).unwrap()), chain);
    let sessions: Vec<Uuid> = (0..12)
        .map(|_| {
            let row = SessionRow {
                uuid: Uuid::new_v4(),
                pool: "daily".into(),
                media_set_uuid: None,
                started: t(5),
                finished: Some(t(5)),
                status: SessionStatus::Complete,
            };
            c.merge_session(&row).unwrap();
            row.uuid
        })
        .collect();
    let listed: Vec<Uuid> = c.sessions().unwrap().iter().map(|s| s.uuid).collect();
    assert_eq!(listed[listed.len() - 12..], sessions[..]);
}
