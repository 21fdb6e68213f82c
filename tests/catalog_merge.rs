//! Export, snapshots and merging for disaster recovery.
#[path = "catalog_support.rs"]
mod support;

use support::*;
use tapevault::catalog::*;
use uuid::Uuid;

/// A catalog with two media sets: a full on the first, an incremental on the second.
fn two_sets(d: &tempfile::TempDir) -> (Catalog, Uuid, Uuid, Uuid, Uuid, Uuid) {
    let (c, set_a) = setup(d);
    let disk = Uuid::new_v4();
    let s = c.begin_session("daily", Some(set_a)).unwrap();
    let mut n = new_image(disk, ImageKind::Full, None, 0);
    n.session_uuid = Some(s.uuid);
    c.begin_image(&n).unwrap();
    c.complete_image(
        n.uuid,
        &stats(8),
        "aa",
        &[seg(0, 7, 0, DISK_SIZE)],
        &whole_disk(),
    )
    .unwrap();
    c.finish_session(s.uuid, SessionStatus::Complete).unwrap();
    let f0 = n.uuid;
    let set_b = c.create_media_set("daily", 1).unwrap().uuid;
    c.upsert_media(&MediaRow::new_blank("TV0002L8", "slot 2"))
        .unwrap();
    c.assign_media("TV0002L8", "daily", set_b, 0, Uuid::new_v4())
        .unwrap();
    let n = new_image(disk, ImageKind::Incremental, Some(f0), 1);
    c.begin_image(&n).unwrap();
    let mut sg = seg(0, 0, 65536, 131072);
    sg.barcode = "TV0002L8".into();
    c.complete_image(
        n.uuid,
        &stats(1),
        "bb",
        &[sg],
        &[Extent {
            offset: 65536,
            length: 65536,
            is_zero: false,
        }],
    )
    .unwrap();
    c.record_snapshot(&SnapshotLocation {
        barcode: "TV0002L8".into(),
        tape_file: 3,
        block: 9,
        session_uuid: None,
        time: catalog_time(t(2)),
    })
    .unwrap();
    (c, set_a, set_b, disk, f0, n.uuid)
}

#[test]
fn export_json_holds_every_table_and_merges_back() {
    let d = tempfile::tempdir().unwrap();
    let (c, _, _, disk, f0, i1) = two_sets(&d);
    let mut out = Vec::new();
    c.export_json(&mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["format"], DUMP_FORMAT);
    assert_eq!(v["pools"].as_array().unwrap().len(), 1);
    assert_eq!(v["media_sets"].as_array().unwrap().len(), 2);
    assert_eq!(v["media"].as_array().unwrap().len(), 2);
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 1);
    let imgs = v["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 2);
    assert_eq!(imgs[0]["image"]["uuid"], f0.to_string());
    assert_eq!(imgs[0]["image"]["kind"], "full");
    assert_eq!(imgs[0]["image"]["compression"], "zstd:3");
    assert_eq!(imgs[1]["segments"][0]["barcode"], "TV0002L8");

    let e = tempfile::tempdir().unwrap();
    let fresh = open(&e);
    let r = fresh.merge_snapshot(&out).unwrap();
    assert_eq!(
        (
            r.images_added,
            r.media_added,
            r.pools_added,
            r.media_sets_added
        ),
        (2, 2, 1, 2)
    );
    assert!(r.conflicts.is_empty());
    assert_eq!(
        uuids(&fresh.restore_chain(disk, At::Latest).unwrap()),
        vec![f0, i1]
    );
    assert_eq!(fresh.segments(i1).unwrap(), c.segments(i1).unwrap());
    assert_eq!(fresh.list_media(None).unwrap(), c.list_media(None).unwrap());
    assert_eq!(fresh.images(None).unwrap(), c.images(None).unwrap());
    // Idempotent: a second merge changes nothing.
    assert!(fresh.merge_snapshot(&out).unwrap().is_noop());
    assert!(
        c.merge_snapshot(&out).unwrap().is_noop(),
        "merging a catalog into itself changed it"
    );
    // Export of the rebuilt catalog matches the original's rows.
    let mut out2 = Vec::new();
    fresh.export_json(&mut out2).unwrap();
    let v2: serde_json::Value = serde_json::from_slice(&out2).unwrap();
    assert_eq!(v["images"], v2["images"]);
    assert_eq!(v["media"], v2["media"]);
}

#[test]
fn media_set_snapshot_carries_the_ancestors_it_needs() {
    let d = tempfile::tempdir().unwrap();
    let (c, _, set_b, disk, f0, i1) = two_sets(&d);
    let snap = c.snapshot(SnapshotScope::MediaSet(set_b)).unwrap();
    let e = tempfile::tempdir().unwrap();
    let fresh = open(&e);
    let r = fresh.merge_snapshot(&snap).unwrap();
    assert_eq!(
        r.images_added, 2,
        "the full on the other set is needed to restore"
    );
    assert_eq!(
        uuids(&fresh.restore_chain(disk, At::Latest).unwrap()),
        vec![f0, i1]
    );
    assert!(
        fresh.media(BARCODE).unwrap().is_some(),
        "the cartridge holding the full"
    );
    assert!(
        fresh.check().unwrap().is_empty(),
        "{:?}",
        fresh.check().unwrap()
    );
    assert!(fresh.merge_snapshot(&snap).unwrap().is_noop());
    assert!(matches!(
        c.snapshot(SnapshotScope::MediaSet(Uuid::new_v4())),
        Err(CatalogError::NotFound { .. })
    ));
}

#[test]
fn conflicting_image_is_reported_not_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let (c, _, _, _, f0, _) = two_sets(&d);
    let mut dump = ImageDump {
        image: c.image(f0).unwrap().unwrap(),
        segments: c.segments(f0).unwrap(),
        extents: vec![],
    };
    dump.image.content_digest = Some("ff".into());
    let r = c.merge_image(&dump).unwrap();
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(r.conflicts[0].what, "image");
    assert!(r.conflicts[0].detail.contains("ff"));
    assert_eq!(
        c.image(f0).unwrap().unwrap().content_digest.as_deref(),
        Some("aa")
    );
    // Different identity (another disk) under the same UUID.
    let mut dump2 = dump.clone();
    dump2.image.content_digest = Some("aa".into());
    dump2.image.disk_uuid = Uuid::new_v4();
    let r = c.merge_image(&dump2).unwrap();
    assert_eq!(r.conflicts.len(), 1);
    // The same record run placed on another cartridge.
    let mut dump3 = dump.clone();
    dump3.image.content_digest = Some("aa".into());
    dump3.segments[0].barcode = "ELSEWHERE".into();
    let r = c.merge_image(&dump3).unwrap();
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(r.conflicts[0].what, "segment");
    assert_eq!(c.segments(f0).unwrap()[0].barcode, BARCODE);
}

#[test]
fn newer_facts_are_never_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let (c, _, _, _, f0, i1) = two_sets(&d);
    let old = c.snapshot(SnapshotScope::All).unwrap();
    // After the snapshot: verification finds i1 corrupt, the cartridge moves and is written.
    c.mark_corrupt(i1, "bad record").unwrap();
    c.set_media_location(BARCODE, "vault:offsite").unwrap();
    c.record_media_write(BARCODE, 9, 4096).unwrap();
    let before = c.media(BARCODE).unwrap().unwrap();
    let r = c.merge_snapshot(&old).unwrap();
    assert!(r.conflicts.is_empty());
    assert_eq!(c.image(i1).unwrap().unwrap().status, ImageStatus::Corrupt);
    assert_eq!(c.media(BARCODE).unwrap().unwrap(), before);
    assert_eq!(c.image(f0).unwrap().unwrap().status, ImageStatus::Complete);
}

#[test]
fn completion_seen_on_media_upgrades_a_failed_image() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let disk = Uuid::new_v4();
    let n = new_image(disk, ImageKind::Full, None, 0);
    c.begin_image(&n).unwrap();
    c.fail_image(n.uuid, "catalog lost the end").unwrap();
    // A media scan finds the trailer.
    let mut row = c.image(n.uuid).unwrap().unwrap();
    row.status = ImageStatus::Complete;
    row.content_digest = Some("cafe".into());
    row.records = 2;
    row.finished = Some(catalog_time(t(1)));
    let dump = ImageDump {
        image: row,
        segments: vec![seg(0, 1, 0, 100)],
        extents: whole_disk(),
    };
    let r = c.merge_image(&dump).unwrap();
    assert_eq!((r.images_updated, r.segments_added), (1, 1));
    let img = c.image(n.uuid).unwrap().unwrap();
    assert_eq!(img.status, ImageStatus::Complete);
    assert_eq!(img.note, None);
    assert_eq!(
        uuids(&c.restore_chain(disk, At::Latest).unwrap()),
        vec![n.uuid]
    );
    assert!(c.merge_image(&dump).unwrap().is_noop());
    // A running image in merged data arrives as incomplete, never as a base.
    let mut running = dump.image.clone();
    running.uuid = Uuid::new_v4();
    running.status = ImageStatus::Running;
    running.content_digest = None;
    running.started = catalog_time(t(5));
    c.merge_image(&ImageDump {
        image: running.clone(),
        segments: vec![],
        extents: vec![],
    })
    .unwrap();
    assert_eq!(
        c.image(running.uuid).unwrap().unwrap().status,
        ImageStatus::Incomplete
    );
    assert_eq!(c.newest_good_image(disk).unwrap().unwrap().uuid, n.uuid);
}

#[test]
fn media_merge_takes_newer_label_keeps_location() {
    let d = tempfile::tempdir().unwrap();
    let (c, set) = setup(&d);
    let local = c.media(BARCODE).unwrap().unwrap();
    let mut newer = local.clone();
    newer.last_written = Some(catalog_time(
        chrono::Utc::now() + chrono::Duration::hours(1),
    ));
    newer.next_tape_file = 12;
    newer.bytes_written = 999;
    newer.location = "drive 0".into();
    let r = c.merge_media(&newer).unwrap();
    assert_eq!(r.media_updated, 1);
    let m = c.media(BARCODE).unwrap().unwrap();
    assert_eq!((m.next_tape_file, m.bytes_written), (12, 999));
    assert_eq!(m.location, "slot 1", "location is local knowledge");
    // Older data changes nothing.
    assert!(c.merge_media(&local).unwrap().is_noop());
    // Same label time, different volume: conflict.
    let mut clash = c.media(BARCODE).unwrap().unwrap();
    clash.volume_uuid = Some(Uuid::new_v4());
    clash.last_written = Some(catalog_time(
        chrono::Utc::now() + chrono::Duration::hours(2),
    ));
    assert_eq!(c.merge_media(&clash).unwrap().conflicts.len(), 1);
    // Unknown media set must be merged first.
    let mut orphan = MediaRow::new_blank("NEW1", "slot 9");
    orphan.media_set_uuid = Some(Uuid::new_v4());
    assert!(matches!(
        c.merge_media(&orphan),
        Err(CatalogError::NotFound { .. })
    ));
    orphan.media_set_uuid = Some(set);
    assert_eq!(c.merge_media(&orphan).unwrap().media_added, 1);
}

#[test]
fn bad_snapshots_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let c = open(&d);
    assert!(matches!(
        c.merge_snapshot(b"not json"),
        Err(CatalogError::BadSnapshot(_))
    ));
    let mut out = Vec::new();
    c.export_json(&mut out).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v["version"] = 99.into();
    let err = c
        .merge_snapshot(&serde_json::to_vec(&v).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("99"), "{err}");
    v["version"] = 1.into();
    v["format"] = "something-else".into();
    assert!(matches!(
        c.merge_snapshot(&serde_json::to_vec(&v).unwrap()),
        Err(CatalogError::BadSnapshot(_))
    ));
}

#[test]
fn pool_with_different_key_is_a_conflict() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    let mut p = pool_row("daily");
    p.key_name = Some("k".into());
    p.key_fingerprint = Some("ab".repeat(16));
    let r = c.merge_pool(&p).unwrap();
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(c.pool("daily").unwrap().unwrap().key_fingerprint, None);
}

#[test]
fn pool_config_travels_in_snapshots_and_unknown_members_are_ignored() {
    let d = tempfile::tempdir().unwrap();
    let (c, set_a, _, _, _, _) = two_sets(&d);
    std::fs::write(
        d.path().join("pools.toml"),
        "[pools.daily]\noffsite = \"ironmountain\"\noffsite_when = \"written\"\noffsite_only = true\n",
    )
    .unwrap();
    let snap = c.snapshot(SnapshotScope::MediaSet(set_a)).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    assert_eq!(doc["pool_config"]["daily"]["offsite"], "ironmountain");
    assert_eq!(doc["version"], 1, "an added member keeps version 1");

    // Merged into an empty home: the declaration comes back into its pools.toml.
    let d2 = tempfile::tempdir().unwrap();
    let c2 = Catalog::open(d2.path()).unwrap();
    let r = c2.merge_snapshot(&snap).unwrap();
    assert_eq!(r.pool_config_added, 1);
    let back = std::fs::read_to_string(d2.path().join("pools.toml")).unwrap();
    assert!(
        back.contains("ironmountain") && back.contains("written"),
        "{back}"
    );
    // Again: nothing new (the home declares it now).
    assert_eq!(c2.merge_snapshot(&snap).unwrap().pool_config_added, 0);

    // A document from a later tapevault within version 1: members this one does not
    // know (at the top, and inside a pool's declaration) are ignored cleanly; the
    // declaration it cannot read is left out, the rest is merged.
    let mut later = doc.clone();
    later["a_member_from_the_future"] = serde_json::json!({"x": 1});
    later["pool_config"]["daily"]["a_future_setting"] = serde_json::json!(true);
    let d3 = tempfile::tempdir().unwrap();
    let c3 = Catalog::open(d3.path()).unwrap();
    let r = c3
        .merge_snapshot(&serde_json::to_vec(&later).unwrap())
        .unwrap();
    assert_eq!(r.pool_config_added, 0);
    assert!(r.images_added > 0);
    assert!(!d3.path().join("pools.toml").exists());
    // An older document (no pool_config) merges as before.
    let mut older = doc.clone();
    older.as_object_mut().unwrap().remove("pool_config");
    let d4 = tempfile::tempdir().unwrap();
    let c4 = Catalog::open(d4.path()).unwrap();
    let r = c4
        .merge_snapshot(&serde_json::to_vec(&older).unwrap())
        .unwrap();
    assert!(r.images_added > 0 && r.pool_config_added == 0);
}

/// The document without its `created` time (two writes a moment apart differ there).
fn without_created(bytes: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    v.as_object_mut().unwrap().remove("created");
    v
}

/// A writer that keeps what it is given and the largest single write.
#[derive(Default)]
struct Recording {
    bytes: Vec<u8>,
    largest_write: usize,
}

impl std::io::Write for Recording {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.largest_write = self.largest_write.max(b.len());
        self.bytes.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_streamed_snapshot_is_the_document_and_is_written_piece_by_piece() {
    let d = tempfile::tempdir().unwrap();
    let (c, set_a, _, _, _, _) = two_sets(&d);
    for _ in 0..50 {
        // More images, so that the document is far larger than any one write.
        let disk = Uuid::new_v4();
        let f = full(&c, disk, 3);
        incr(&c, disk, f, 4);
    }
    for scope in [SnapshotScope::MediaSet(set_a), SnapshotScope::All] {
        let whole = c.snapshot(scope).unwrap();
        let mut w = Recording::default();
        c.write_snapshot(scope, &mut w).unwrap();
        assert_eq!(without_created(&w.bytes), without_created(&whole));
        // Written as it is produced (an image at a time), never as one buffer.
        assert!(
            w.largest_write * 4 < w.bytes.len(),
            "largest write {} of a {}-byte document",
            w.largest_write,
            w.bytes.len()
        );
    }
}

#[test]
fn a_streamed_merge_does_what_the_in_memory_merge_does() {
    let d = tempfile::tempdir().unwrap();
    let (c, _, set_b, _, _, _) = two_sets(&d);
    for scope in [SnapshotScope::All, SnapshotScope::MediaSet(set_b)] {
        let snap = c.snapshot(scope).unwrap();
        let (e1, e2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(&e1), open(&e2));
        let ra = a.merge_snapshot(&snap).unwrap();
        let rb = b.merge_snapshot_from(&snap[..]).unwrap();
        assert_eq!(ra, rb);
        assert!(rb.images_added > 0);
        let (mut xa, mut xb) = (Vec::new(), Vec::new());
        a.export_json(&mut xa).unwrap();
        b.export_json(&mut xb).unwrap();
        assert_eq!(without_created(&xa), without_created(&xb));
        // The indexes dropped for the bulk merge are back, the same as the other's.
        let indexes = |dir: &tempfile::TempDir| -> Vec<(String, Option<String>)> {
            let db = rusqlite::Connection::open(dir.path().join(CATALOG_FILE)).unwrap();
            let mut st = db
                .prepare("SELECT name, sql FROM sqlite_master WHERE type='index' ORDER BY name")
                .unwrap();
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<std::result::Result<Vec<_>, _>>()
                .unwrap();
            rows
        };
        let ib = indexes(&e2);
        assert!(ib.iter().any(|(n, _)| n == "images_order"), "{ib:?}");
        assert_eq!(indexes(&e1), ib);
        assert!(b.merge_snapshot_from(&snap[..]).unwrap().is_noop());
    }
}

#[test]
fn a_streamed_merge_of_tables_out_of_order_is_refused_and_merges_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (c, _, _, _, _, _) = two_sets(&d);
    let snap = c.snapshot(SnapshotScope::All).unwrap();
    // serde_json's map sorts its keys: "images" before "media", "pools" and "sessions".
    let v: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    let sorted = serde_json::to_vec(&v).unwrap();
    let e = tempfile::tempdir().unwrap();
    let fresh = open(&e);
    match fresh.merge_snapshot_from(&sorted[..]) {
        Err(CatalogError::BadSnapshot(m)) => {
            assert!(m.contains("format") || m.contains("comes"), "{m}")
        }
        other => panic!("merged a document out of order: {other:?}"),
    }
    assert!(fresh.images(None).unwrap().is_empty());
    assert!(fresh.pools().unwrap().is_empty());
    // The in-memory merge takes any order.
    assert_eq!(fresh.merge_snapshot(&sorted).unwrap().images_added, 2);
    // A document that breaks off in the middle merges nothing either.
    let g = tempfile::tempdir().unwrap();
    let other = open(&g);
    assert!(matches!(
        other.merge_snapshot_from(&snap[..snap.len() * 2 / 3]),
        Err(CatalogError::BadSnapshot(_))
    ));
    assert!(other.images(None).unwrap().is_empty());
    assert!(other.pools().unwrap().is_empty());
}

#[test]
fn the_base_of_a_document_is_read_from_its_head_only() {
    let d = tempfile::tempdir().unwrap();
    let (c, _, set_b, _, _, _) = two_sets(&d);
    let snap = c.snapshot(SnapshotScope::MediaSet(set_b)).unwrap();
    assert_eq!(Catalog::snapshot_document_base(&snap).unwrap(), None);
    // Everything after the head is never parsed: cut the document inside its tables.
    let at = find(&snap, b"\"media\":").unwrap() + 20;
    let cut = &snap[..at];
    assert_eq!(Catalog::snapshot_document_base_from(cut).unwrap(), None);
    assert!(Catalog::snapshot_document_base(cut).is_err());
    // A delta names its base; same answer both ways.
    let mut v: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    let base = serde_json::json!([{"barcode": "TV0002L8", "tape_file": 3, "block": 9,
        "session_uuid": null, "time": "2026-01-01T00:00:00.000000Z"}]);
    let o = v.as_object_mut().unwrap();
    o.insert("kind".into(), "delta".into());
    o.insert("version".into(), DELTA_VERSION.into());
    o.insert("base".into(), base);
    let delta = serde_json::to_vec(&v).unwrap(); // keys sorted: base first, kind late
    let want = Catalog::snapshot_document_base(&delta).unwrap();
    assert_eq!(want.as_ref().map(|l| l.tape_file), Some(3));
    assert_eq!(
        Catalog::snapshot_document_base_from(&delta[..]).unwrap(),
        want
    );
    // Wrong format or a newer version: refused from the head.
    let mut bad = snap.clone();
    let f = find(&bad, DUMP_FORMAT.as_bytes()).unwrap();
    bad[f] = b'X';
    assert!(matches!(
        Catalog::snapshot_document_base_from(&bad[..]),
        Err(CatalogError::BadSnapshot(_))
    ));
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn newest_good_images_of_all_disks_agree_with_each_disk_asked_alone() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = setup(&d);
    // A: full, incremental, then an incremental that failed: the middle one.
    let a = Uuid::new_v4();
    let a0 = full(&c, a, 1);
    let a1 = incr(&c, a, a0, 2);
    let a2 = new_image(a, ImageKind::Incremental, Some(a1), 3);
    c.begin_image(&a2).unwrap();
    c.fail_image(a2.uuid, "test").unwrap();
    // B: the full is corrupt, so no image of B is good.
    let b = Uuid::new_v4();
    let b0 = full(&c, b, 1);
    incr(&c, b, b0, 2);
    c.mark_corrupt(b0, "test").unwrap();
    // C: a good chain of three.
    let cc = Uuid::new_v4();
    let c0 = full(&c, cc, 1);
    let c1 = incr(&c, cc, c0, 2);
    incr(&c, cc, c1, 3);
    // D: a full, an incremental, then a newer full.
    let dd = Uuid::new_v4();
    let d0 = full(&c, dd, 1);
    incr(&c, dd, d0, 2);
    let d2 = full(&c, dd, 3);
    let all = c.images(None).unwrap();
    let batch = c.newest_good_images(&all).unwrap();
    for disk in [a, b, cc, dd] {
        let one = c.newest_good_image(disk).unwrap().map(|i| i.uuid);
        assert_eq!(batch.get(&disk).copied(), one, "disk {disk}");
    }
    assert_eq!(batch.get(&a).copied(), Some(a1));
    assert_eq!(batch.get(&b), None);
    assert_eq!(batch.get(&dd).copied(), Some(d2));
}

#[test]
fn a_spool_leaves_nothing_in_its_directory() {
    let d = tempfile::tempdir().unwrap();
    let mut s = tapevault::media::snapshot::Spool::new(d.path()).unwrap();
    let len = s
        .fill(|w| {
            w.write_all(&vec![7u8; 1 << 20])
                .map_err(|e| tapevault::error::Error::Failed(e.to_string()))
        })
        .unwrap();
    assert_eq!(len, 1 << 20);
    // Unnamed while it is used: a process killed now leaves no file behind.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut s.reader().unwrap(), &mut back).unwrap();
    assert_eq!(back.len(), 1 << 20);
    drop(s);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

#[test]
fn a_streamed_merge_stopped_by_a_bad_row_reports_it_and_merges_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (c, _, _, _, _, _) = two_sets(&d);
    let snap = c.snapshot(SnapshotScope::All).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    let n = v["images"].as_array().unwrap().len();
    assert!(n >= 2, "{n} images");
    // Hundreds of copies of the images (the parser runs ahead of the merge in pieces),
    // then the last one with an extent beyond its disk: refused as the row it is, after
    // the ones before it were inserted in the same transaction.
    let text = String::from_utf8(snap.clone()).unwrap();
    let start = text.find("\"images\":[").unwrap() + "\"images\":[".len();
    let end = text.find("],\"snapshots\":").unwrap();
    let mut rows = Vec::new();
    for k in 0..300u32 {
        for img in v["images"].as_array().unwrap() {
            let mut img = img.clone();
            img["image"]["uuid"] = Uuid::from_u128(u128::from(k) << 8 | rows.len() as u128)
                .to_string()
                .into();
            img["image"]["parent_uuid"] = serde_json::Value::Null;
            img["image"]["kind"] = "incremental".into();
            rows.push(serde_json::to_string(&img).unwrap());
        }
    }
    let mut bad = v["images"][0].clone();
    bad["image"]["uuid"] = Uuid::new_v4().to_string().into();
    let size = bad["image"]["disk_size"].as_u64().unwrap();
    bad["extents"] = serde_json::json!([{"offset": size, "length": 4096, "is_zero": false}]);
    rows.push(serde_json::to_string(&bad).unwrap());
    let doc = format!("{}{}{}", &text[..start], rows.join(","), &text[end..]);
    let e = tempfile::tempdir().unwrap();
    let fresh = open(&e);
    match fresh.merge_snapshot_from(doc.as_bytes()) {
        Err(CatalogError::Invalid { what, reason }) => {
            assert!(reason.contains("beyond the disk size"), "{what}: {reason}")
        }
        other => panic!("merged a document with a bad row: {other:?}"),
    }
    assert!(fresh.images(None).unwrap().is_empty());
    assert!(fresh.pools().unwrap().is_empty());
    // Without the bad row the same document merges whole, and once only.
    rows.pop();
    let doc = format!("{}{}{}", &text[..start], rows.join(","), &text[end..]);
    assert_eq!(
        fresh
            .merge_snapshot_from(doc.as_bytes())
            .unwrap()
            .images_added,
        rows.len()
    );
    assert_eq!(fresh.images(None).unwrap().len(), rows.len());
    assert!(fresh.merge_snapshot_from(doc.as_bytes()).unwrap().is_noop());
}
