//! `Catalog::check` finds injected inconsistencies.
#[path = "catalog_support.rs"]
mod support;

use support::*;
use tapevault::catalog::*;
use uuid::Uuid;

fn kinds_for(problems: &[Problem], subject: &str) -> Vec<ProblemKind> {
    problems
        .iter()
        .filter(|p| p.subject == subject)
        .map(|p| p.kind)
        .collect()
}

#[test]
fn clean_catalog_has_no_problems() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let f = full(&c, disk, 0);
    incr(&c, disk, f, 1);
    image(&c, disk, ImageKind::Copy, None, 2);
    assert_eq!(c.check().unwrap(), vec![]);
}

#[test]
fn check_finds_injected_inconsistencies() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let f0 = full(&c, disk, 0);
    let i1 = incr(&c, disk, f0, 1);
    let f2 = full(&c, disk, 2);
    let f3 = full(&c, disk, 3);
    let i4 = incr(&c, disk, f3, 4);
    let running = new_image(disk, ImageKind::Full, None, 5);
    c.begin_image(&running).unwrap();
    c.create_pool(&pool_row("other")).unwrap();
    c.upsert_media(&MediaRow::new_blank("LOOSE1", "slot 4"))
        .unwrap();

    // Inject damage behind the API's back, as a broken tool or a bad merge might.
    let raw = rusqlite::Connection::open(d.path().join("catalog.db")).unwrap();
    let exec = |sql: &str, id: Uuid| raw.execute(sql, [id.to_string()]).unwrap();
    exec(
        "UPDATE segments SET barcode='GHOST01' WHERE image_uuid=?1",
        f0,
    );
    exec(
        "UPDATE images SET parent_uuid='00000000-0000-0000-0000-0000000000aa' WHERE uuid=?1",
        i1,
    );
    exec("DELETE FROM segments WHERE image_uuid=?1", f2);
    exec(
        "UPDATE image_extents SET length=length+4096 WHERE image_uuid=?1 AND offset > 0",
        f3,
    );
    exec("UPDATE images SET status='failed' WHERE uuid=?1", f3);
    exec("UPDATE images SET writer='1:1' WHERE uuid=?1", running.uuid);
    raw.execute("UPDATE media SET pool='nopool' WHERE barcode='LOOSE1'", [])
        .unwrap();
    raw.execute("UPDATE media SET pool='other' WHERE barcode=?1", [BARCODE])
        .unwrap();
    drop(raw);

    let p = c.check().unwrap();
    let s = |id: Uuid| format!("image {id}");
    assert_eq!(
        kinds_for(&p, &s(f0)),
        vec![ProblemKind::SegmentUnknownMedia]
    );
    assert_eq!(kinds_for(&p, &s(i1)), vec![ProblemKind::MissingParent]);
    assert_eq!(
        kinds_for(&p, &s(f2)),
        vec![ProblemKind::CompleteWithoutSegments]
    );
    // f3 is failed now, so its extents are not checked, but i4 (complete) sits on it.
    assert_eq!(kinds_for(&p, &s(i4)), vec![ProblemKind::BadParent]);
    assert_eq!(
        kinds_for(&p, &s(running.uuid)),
        vec![ProblemKind::StaleRunning]
    );
    assert_eq!(
        kinds_for(&p, "cartridge LOOSE1"),
        vec![ProblemKind::UnknownPool]
    );
    assert_eq!(
        kinds_for(&p, &format!("cartridge {BARCODE}")),
        vec![ProblemKind::PoolMismatch]
    );
    assert!(p.iter().all(|x| !x.detail.is_empty()));
    let json = serde_json::to_value(&p).unwrap();
    assert!(json.to_string().contains("segment-unknown-media"));
}

#[test]
fn check_finds_extents_outside_the_disk() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let f = full(&c, Uuid::new_v4(), 0);
    let raw = rusqlite::Connection::open(d.path().join("catalog.db")).unwrap();
    raw.execute(
        "UPDATE image_extents SET length=length+1 WHERE image_uuid=?1 AND offset > 0",
        [f.to_string()],
    )
    .unwrap();
    let p = c.check().unwrap();
    assert_eq!(
        kinds_for(&p, &format!("image {f}")),
        vec![ProblemKind::BadExtents]
    );
    assert!(
        p[0].detail.contains("beyond the disk size"),
        "{}",
        p[0].detail
    );
    raw.execute(
        "DELETE FROM image_extents WHERE image_uuid=?1",
        [f.to_string()],
    )
    .unwrap();
    let p = c.check().unwrap();
    assert_eq!(
        kinds_for(&p, &format!("image {f}")),
        vec![ProblemKind::CompleteWithoutExtents]
    );
}
