//! Offsite vaulting through the binary: export whole sets (refusing incomplete or split
//! sets), vault, offsite report, pull list, due back after retention, return, recycle.

mod rotation_support;

use rotation_support::*;

const DISK: &str = "5a1e0000-0000-4000-8000-00000000000a";

fn barcodes(v: &serde_json::Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_media_set_goes_to_the_vault_and_comes_back_when_it_expires() {
    let mut tv = Tv::init(6, 2, "1M");
    tv.ok(&[
        "pool",
        "create",
        "arch",
        "--retention",
        "10",
        "--allocation",
        "per-session",
        "--compression",
        "off",
        "--offsite",
        "iron",
    ]);
    let disk = tv.path("d.img");
    write_disk(&disk, 96 << 10, 1);
    let b = tv.json(&[
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        "arch",
        "--full",
    ]);
    let set = b["media_set"].as_str().unwrap().to_string();
    let bc = b["images"][0]["barcodes"][0].as_str().unwrap().to_string();

    // A new session starts a new set, so the first one is finished: rotation says remove.
    tv.advance(1);
    touch_disk(&disk, 0, 9);
    let b2 = tv.json(&[
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        "arch",
    ]);
    let bc2 = b2["images"][0]["barcodes"][0].as_str().unwrap().to_string();
    // Per-session sets are finished once their session is: both are due to go.
    let plan = tv.json(&["rotate", "--dry-run"]);
    let mut remove = barcodes(&plan["plan"]["remove"], "barcode");
    remove.sort();
    let mut want = vec![bc.clone(), bc2.clone()];
    want.sort();
    assert_eq!(remove, want, "{plan}");
    assert_eq!(plan["plan"]["remove"][0]["to"]["vault"], "iron");

    let ex = tv.json(&["media", "export", "--set", &set]);
    assert_eq!(barcodes(&ex["moved"], "barcode"), vec![bc.clone()]);
    assert!(ex["moved"][0]["to"]["text"]
        .as_str()
        .unwrap()
        .starts_with("mail slot"));
    // Still in the library (a mail slot): vaulting it takes it out.
    let v = tv.json(&["media", "vault", &bc, "--location", "iron"]);
    assert_eq!(v["moved"][0]["to"]["vault"], "iron");
    let lib = tv.library();
    let c = lib
        .cartridges()
        .unwrap()
        .into_iter()
        .find(|c| c.barcode == bc)
        .unwrap();
    assert_eq!(c.location, None, "the cartridge left the library");
    let off = tv.json(&["media", "offsite"]);
    assert_eq!(barcodes(&off["cartridges"], "barcode"), vec![bc.clone()]);
    assert_eq!(off["cartridges"][0]["retention"], "kept");
    assert_eq!(
        off["cartridges"][0]["location"],
        serde_json::json!({"kind": "vault", "vault": "iron", "text": "vault:iron"})
    );

    // A restore of the first image needs the vaulted cartridge.
    let images = tv.catalog().images(None).unwrap();
    let first = images[0].uuid.to_string();
    let pl = tv.json(&["media", "pull-list", "--disk", DISK, "--image", &first]);
    assert_eq!(pl["to_fetch"][0], bc.as_str());
    assert_eq!(pl["cartridges"][0]["location"]["vault"], "iron");
    // Nothing is due while it is kept.
    assert_eq!(
        tv.json(&["media", "due"])["cartridges"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Past retention, with a newer full: it is due back.
    tv.advance(12);
    tv.json(&[
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        "arch",
        "--full",
    ]);
    let due = tv.json(&["media", "due"]);
    assert_eq!(
        barcodes(&due["cartridges"], "barcode"),
        vec![bc.clone()],
        "{due}"
    );
    let plan = tv.json(&["rotate"]);
    assert!(
        barcodes(&plan["plan"]["insert"], "barcode").contains(&bc),
        "{plan}"
    );
    let r = tv.json(&["media", "return", &bc]);
    assert_eq!(r["returned"][0]["to"]["kind"], "slot", "{r}");
    assert_eq!(r["returned"][0]["expired"], true);
    let rot = tv.json(&["rotate", "--apply"]);
    assert!(
        barcodes(&rot["plan"]["recycle"], "barcode").contains(&bc),
        "{rot}"
    );
    assert!(rot["result"]["recycled"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == bc.as_str()));
    let m = tv.catalog().media(&bc).unwrap().unwrap();
    assert_eq!(m.state, tapevault::catalog::MediaState::Writable);
    assert_eq!(m.media_set_uuid, None);
    assert_eq!(m.pool.as_deref(), Some("arch"));
    assert!(m.location.starts_with("slot"));
}

#[test]
fn export_refuses_a_set_without_its_catalog_snapshot_and_a_split_set() {
    let tv = Tv::init(6, 4, "1M");
    tv.ok(&[
        "pool",
        "create",
        "p",
        "--allocation",
        "continue",
        "--compression",
        "off",
    ]);
    let (set, carts) = two_cartridge_set(&tv, "p");
    // Exporting one cartridge of the set would split it.
    let r = tv.run(&["media", "export", &carts[0]]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("would be split") && r.stderr.contains(&carts[1]),
        "{}",
        r.stderr
    );

    // Input that is wrong (a disk that is gone) is refused before a session starts,
    // so it leaves nothing that could block the set.
    let sessions = tv.catalog().sessions().unwrap().len();
    let r = tv.run(&[
        "backup",
        "--disk",
        tv.path("missing.img").to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        "p",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(tv.catalog().sessions().unwrap().len(), sessions);
    // A later session of the same set fails after closing a tape file on it: the set's
    // newest session that wrote to it wrote no catalog snapshot, so it is incomplete.
    {
        let cat = tv.catalog();
        let set_uuid: uuid::Uuid = set.parse().unwrap();
        let s = cat.begin_session("p", Some(set_uuid)).unwrap();
        let m = cat.media(&carts[1]).unwrap().unwrap();
        cat.record_media_write(&m.barcode, m.next_tape_file + 1, 4096)
            .unwrap();
        cat.finish_session(s.uuid, tapevault::catalog::SessionStatus::Failed)
            .unwrap();
    }
    let r = tv.run(&["--json", "media", "export", "--set", &set]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("is failed") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json()["kind"], "failed");
    for c in &carts {
        assert!(tv
            .catalog()
            .media(c)
            .unwrap()
            .unwrap()
            .location
            .starts_with("slot"));
    }
    // --force sends it anyway, whole.
    let ex = tv.json(&["media", "export", "--set", &set, "--force"]);
    assert_eq!(ex["moved"].as_array().unwrap().len(), carts.len());
    assert!(!ex["warnings"].as_array().unwrap().is_empty());
    // Vaulting a cartridge still in a storage slot is refused; in a mail slot it works.
    let other = tv
        .catalog()
        .list_media(None)
        .unwrap()
        .into_iter()
        .find(|m| m.location.starts_with("slot"))
        .unwrap()
        .barcode;
    let r = tv.run(&["media", "vault", &other, "--location", "x"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("media export"), "{}", r.stderr);
    tv.ok(&["media", "vault", &carts[0], &carts[1], "--location", "x"]);
    let off = tv.json(&["media", "offsite"]);
    assert_eq!(off["cartridges"].as_array().unwrap().len(), carts.len());
}

#[test]
fn export_needing_more_mail_slots_than_free_fails_with_exit_4() {
    let tv = Tv::init(6, 1, "1M");
    tv.ok(&["pool", "create", "p", "--compression", "off"]);
    let (set, _) = two_cartridge_set(&tv, "p");
    let set = set.as_str();
    let r = tv.run(&["media", "export", "--set", set]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("mail slot"), "{}", r.stderr);
}

/// A media set on two cartridges: the first fills up (marked full as the backup does at
/// early warning), the next session of the set continues on a second one.
fn two_cartridge_set(tv: &Tv, pool: &str) -> (String, Vec<String>) {
    let disk = tv.path("d.img");
    write_disk(&disk, 64 << 10, 2);
    let args = [
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        pool,
        "--full",
    ];
    let b = tv.json(&args);
    let set = b["media_set"].as_str().unwrap().to_string();
    let first = b["images"][0]["barcodes"][0].as_str().unwrap().to_string();
    tv.catalog()
        .set_media_state(&first, tapevault::catalog::MediaState::Full)
        .unwrap();
    let b = tv.json(&args);
    assert_eq!(b["media_set"].as_str().unwrap(), set);
    let second = b["images"][0]["barcodes"][0].as_str().unwrap().to_string();
    assert_ne!(first, second);
    (set, vec![first, second])
}
