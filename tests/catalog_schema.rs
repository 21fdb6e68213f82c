//! Catalog opening, migrations, pools, media, media sets and sessions.
#[path = "catalog_support.rs"]
mod support;

use support::*;
use tapevault::catalog::*;
use uuid::Uuid;

#[test]
fn migrates_from_empty_and_reopens() {
    let d = tempfile::tempdir().unwrap();
    let c = open(&d);
    assert_eq!(c.schema_version().unwrap(), schema::SCHEMA_VERSION);
    assert!(d.path().join("catalog.db").exists());
    drop(c);
    let raw = rusqlite::Connection::open(d.path().join("catalog.db")).unwrap();
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let tables: Vec<String> = raw
        .prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap();
    for t in [
        "image_extents",
        "images",
        "media",
        "media_sets",
        "pools",
        "segments",
        "sessions",
        "snapshots",
    ] {
        assert!(
            tables.contains(&t.to_string()),
            "missing table {t}: {tables:?}"
        );
    }
    drop(raw);
    let c = open(&d);
    assert_eq!(c.schema_version().unwrap(), schema::SCHEMA_VERSION);
}

#[test]
fn refuses_newer_schema_naming_both_versions() {
    let d = tempfile::tempdir().unwrap();
    drop(open(&d));
    let raw = rusqlite::Connection::open(d.path().join("catalog.db")).unwrap();
    raw.pragma_update(None, "user_version", 99).unwrap();
    drop(raw);
    let err = Catalog::open(d.path()).unwrap_err();
    match &err {
        CatalogError::NewerSchema { found, known, .. } => {
            assert_eq!(*found, 99);
            assert_eq!(*known, schema::SCHEMA_VERSION);
        }
        e => panic!("expected NewerSchema, got {e:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("99") && msg.contains(&schema::SCHEMA_VERSION.to_string()),
        "{msg}"
    );
}

#[test]
fn foreign_keys_are_enforced() {
    let d = tempfile::tempdir().unwrap();
    let c = open(&d);
    let mut m = MediaRow::new_blank("X1", "slot 1");
    m.media_set_uuid = Some(Uuid::new_v4());
    assert!(
        c.upsert_media(&m).is_err(),
        "cartridge in an unknown media set was accepted"
    );
}

#[test]
fn pools_crud() {
    let d = tempfile::tempdir().unwrap();
    let c = open(&d);
    let mut p = pool_row("weekly");
    p.key_name = Some("offsite".into());
    p.key_fingerprint = Some("00112233445566778899aabbccddeeff".into());
    p.allocation = Allocation::Weekly(chrono::Weekday::Sat);
    p.compression = Compression::Off;
    p.retention_days = None;
    c.create_pool(&p).unwrap();
    assert!(matches!(
        c.create_pool(&p),
        Err(CatalogError::AlreadyExists { .. })
    ));
    assert_eq!(c.pool("weekly").unwrap().unwrap(), p);
    p.worm = true;
    p.allocation = Allocation::PerSession;
    c.update_pool(&p).unwrap();
    assert_eq!(c.pools().unwrap(), vec![p.clone()]);
    let mut half = pool_row("bad");
    half.key_name = Some("k".into());
    assert!(matches!(
        c.create_pool(&half),
        Err(CatalogError::Invalid { .. })
    ));
    let set = c.create_media_set("weekly", 1).unwrap();
    assert!(c.delete_pool("weekly").is_err(), "pool in use was deleted");
    let _ = set;
    c.create_pool(&pool_row("tmp")).unwrap();
    c.delete_pool("tmp").unwrap();
    assert!(c.pool("tmp").unwrap().is_none());
    assert_eq!(
        "weekly:saturday".parse::<Allocation>().unwrap(),
        Allocation::Weekly(chrono::Weekday::Sat)
    );
    assert!("weekly:funday".parse::<Allocation>().is_err());
    assert!("zstd:99".parse::<Compression>().is_err());
}

#[test]
fn media_and_sets_life_cycle() {
    let d = tempfile::tempdir().unwrap();
    let c = open(&d);
    c.create_pool(&pool_row("daily")).unwrap();
    assert!(c.current_media_set("daily").unwrap().is_none());
    let s1 = c.create_media_set("daily", 1).unwrap();
    assert_eq!(c.current_media_set("daily").unwrap().unwrap().uuid, s1.uuid);
    c.upsert_media(&MediaRow::new_blank("A1", "slot 1"))
        .unwrap();
    c.upsert_media(&MediaRow::new_blank("A2", "slot 2"))
        .unwrap();
    let vol = Uuid::new_v4();
    c.assign_media("A1", "daily", s1.uuid, 0, vol).unwrap();
    assert!(
        c.assign_media("A9", "daily", s1.uuid, 1, Uuid::new_v4())
            .is_err(),
        "unknown barcode"
    );
    assert!(c
        .assign_media("A2", "nopool", s1.uuid, 1, Uuid::new_v4())
        .is_err());
    let m = c.media("A1").unwrap().unwrap();
    assert_eq!(m.state, MediaState::Writable);
    assert_eq!(m.volume_uuid, Some(vol));
    assert_eq!(m.next_tape_file, 1);
    c.record_media_write("A1", 4, 1000).unwrap();
    c.record_media_write("A1", 5, 500).unwrap();
    c.add_media_errors("A1", 2).unwrap();
    c.set_media_location("A1", "vault:iron-mountain").unwrap();
    c.set_media_state("A1", MediaState::Full).unwrap();
    let m = c.media("A1").unwrap().unwrap();
    assert_eq!((m.next_tape_file, m.bytes_written, m.errors), (5, 1500, 2));
    assert_eq!(m.location, "vault:iron-mountain");
    assert_eq!(m.state, MediaState::Full);
    assert!(m.last_written.is_some());
    assert_eq!(c.media_in_set(s1.uuid).unwrap().len(), 1);
    assert_eq!(c.list_media(Some("daily")).unwrap().len(), 1);
    assert_eq!(c.list_media(None).unwrap().len(), 2);
    c.touch_media_set(s1.uuid).unwrap();
    c.close_media_set(s1.uuid).unwrap();
    assert!(c.current_media_set("daily").unwrap().is_none());
    let s = c.media_set(s1.uuid).unwrap().unwrap();
    assert!(s.closed && s.last_write.is_some());
    c.unassign_media("A1").unwrap();
    let m = c.media("A1").unwrap().unwrap();
    assert_eq!((m.pool, m.state), (None, MediaState::Blank));
    assert!(matches!(
        c.set_media_state("nope", MediaState::Full),
        Err(CatalogError::NotFound { .. })
    ));
}

#[test]
fn sessions_begin_and_finish() {
    let d = tempfile::tempdir().unwrap();
    let (c, set) = setup(&d);
    let s = c.begin_session("daily", Some(set)).unwrap();
    assert_eq!(
        c.session(s.uuid).unwrap().unwrap().status,
        SessionStatus::Running
    );
    c.finish_session(s.uuid, SessionStatus::Complete).unwrap();
    let s2 = c.session(s.uuid).unwrap().unwrap();
    assert_eq!(s2.status, SessionStatus::Complete);
    assert!(s2.finished.is_some());
    assert!(c
        .finish_session(Uuid::new_v4(), SessionStatus::Failed)
        .is_err());
    assert!(c.begin_session("nopool", None).is_err());
}

#[test]
fn snapshot_locations_are_recorded_once() {
    let d = tempfile::tempdir().unwrap();
    let c = open(&d);
    let s = SnapshotLocation {
        barcode: "A1".into(),
        tape_file: 7,
        block: 1234,
        session_uuid: None,
        time: catalog_time(t(3)),
    };
    c.record_snapshot(&s).unwrap();
    c.record_snapshot(&s).unwrap();
    assert_eq!(c.snapshots().unwrap(), vec![s]);
}
