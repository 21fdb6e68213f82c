//! Data safety on the backup input side (issue 12), through the real binary: a
//! changed-extents file that was not accepted never sets a disk's change-tracking
//! epoch; rejected input leaves no session behind, so it never blocks `media export`;
//! a failed session that wrote nothing to a set never blocks it either; fallback
//! reasons reach stderr under `--json`. (Bad inputs one by one: tests/input_campaign.rs.)

mod common;

use common::*;
use serde_json::Value;
use tapevault::catalog::SessionStatus;

/// `backup --disk` with a changed-extents file; returns the image report and stderr.
fn backup_with(v: &Vault, d: &TestDisk, cbt: &std::path::Path) -> (Value, String) {
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let c = cbt.to_string_lossy().into_owned();
    let r = v.run(&[
        "backup",
        "--disk",
        &path,
        "--disk-id",
        &id,
        "--pool",
        "p",
        "--changed-extents",
        &c,
    ]);
    assert_eq!(r.code, 0, "backup failed: {}", r.stderr);
    (r.json["images"][0].clone(), r.stderr)
}

#[test]
fn another_disks_changed_extents_file_never_sets_this_disks_epoch() {
    let v = Vault::small(3, "64M");
    v.pool("p", "off");
    let mut a = TestDisk::create(v.path("a.img"), 2 * MIB, 2 * MIB, 1);
    let mut b = TestDisk::create(v.path("b.img"), 2 * MIB, 2 * MIB, 2);
    let (fa, fb) = (v.path("a.json"), v.path("b.json"));
    write_changed_extents(&fa, "*", "a1", &[(0, a.size())]);
    write_changed_extents(&fb, "*", "b1", &[(0, b.size())]);
    backup_with(&v, &a, &fa);
    let (b_full, _) = backup_with(&v, &b, &fb);
    assert_eq!(s(&b_full, "kind"), "full");

    // Disk A moves on to a2; its file is given to disk B by mistake: B is scanned...
    a.write_random(0, 64 * KIB);
    write_changed_extents(&fa, "a1", "a2", &[(0, 64 * KIB)]);
    b.write_random(MIB, 64 * KIB);
    let (b1, stderr) = backup_with(&v, &b, &fa);
    assert_eq!(s(&b1, "method"), "hash-scan", "{b1}");
    // ...says why on stderr even under --json...
    assert!(
        stderr.contains("falling back to a hash scan") && stderr.contains("\"a1\""),
        "the fallback reason must reach stderr with --json: {stderr}"
    );
    // ...and records no change id: A's a2 is not B's epoch.
    assert_eq!(v.image_row(s(&b1, "image")).change_id, None);

    // A's next file (a2 -> a3) given to B again must not be trusted: B changed
    // elsewhere, and only a scan finds it.
    a.write_random(512 * KIB, 64 * KIB);
    write_changed_extents(&fa, "a2", "a3", &[(512 * KIB, 64 * KIB)]);
    b.write_random(1536 * KIB, 64 * KIB);
    let (b2, stderr) = backup_with(&v, &b, &fa);
    assert_eq!(
        s(&b2, "method"),
        "hash-scan",
        "a file continuing another disk's epoch was trusted: {b2}"
    );
    assert!(stderr.contains("recorded no change id"), "{stderr}");
    assert_eq!(v.image_row(s(&b2, "image")).change_id, None);
    let expected = v.path("b.expected");
    b.save_copy(&expected);
    let out = v.path("b.restored");
    let r = v.restore_image(b.id, s(&b2, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &expected, "disk B after files of disk A");

    // A file that names its disk is refused for any other, before a session starts.
    let sessions = v.catalog().sessions().unwrap().len();
    let named = v.path("named.json");
    std::fs::write(
        &named,
        format!(
            r#"{{"disk_id": "{}", "from_change_id": "a3", "change_id": "a4", "changed_area": []}}"#,
            a.id
        ),
    )
    .unwrap();
    let r = v.fails(
        &[
            "backup",
            "--disk",
            &b.path.to_string_lossy(),
            "--disk-id",
            &b.id.to_string(),
            "--pool",
            "p",
            "--changed-extents",
            &named.to_string_lossy(),
        ],
        2,
    );
    assert!(
        r.stderr.contains(&a.id.to_string()) && r.stderr.contains(&b.id.to_string()),
        "the refusal names both disks: {}",
        r.stderr
    );
    assert_eq!(v.catalog().sessions().unwrap().len(), sessions);
}

fn media_export(v: &Vault, set: &str) -> Run {
    v.run(&["media", "export", "--set", set])
}

#[test]
fn rejected_input_leaves_no_session_and_never_blocks_an_export() {
    let v = Vault::init(&[
        "--slots",
        "4",
        "--drives",
        "1",
        "--mailslots",
        "4",
        "--capacity",
        "64M",
    ]);
    v.pool("p", "off");
    let d = TestDisk::create(v.path("d.img"), MIB, MIB, 3);
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let j = v.ok(&["backup", "--disk", &path, "--disk-id", &id, "--pool", "p"]);
    let set = j["media_set"].as_str().expect("media_set").to_string();
    let sessions = v.catalog().sessions().unwrap().len();

    // A disk that is not there: a usage error naming it, and no session.
    let gone = v.path("gone.img").to_string_lossy().into_owned();
    let r = v.fails(
        &["backup", "--disk", &gone, "--disk-id", &id, "--pool", "p"],
        2,
    );
    assert!(r.stderr.contains(&gone), "{}", r.stderr);
    // A change id the format cannot carry: refused up front, not at the tape.
    let cbt = v.path("long.json");
    write_changed_extents(&cbt, "*", &"7".repeat(513), &[]);
    let r = v.fails(
        &[
            "backup",
            "--disk",
            &path,
            "--disk-id",
            &id,
            "--pool",
            "p",
            "--full",
            "--changed-extents",
            &cbt.to_string_lossy(),
        ],
        2,
    );
    assert!(r.stderr.contains("513"), "{}", r.stderr);
    assert_eq!(v.catalog().sessions().unwrap().len(), sessions);

    let r = media_export(&v, &set);
    assert_eq!(r.code, 0, "export after rejected input: {}", r.stderr);
}

#[test]
fn a_failed_session_that_wrote_nothing_never_blocks_an_export_and_refusals_name_the_way_out() {
    let v = Vault::init(&[
        "--slots",
        "4",
        "--drives",
        "1",
        "--mailslots",
        "4",
        "--capacity",
        "64M",
    ]);
    v.pool("p", "off");
    let d = TestDisk::create(v.path("d.img"), MIB, MIB, 4);
    let j = v.ok(&[
        "backup",
        "--disk",
        &d.path.to_string_lossy(),
        "--disk-id",
        &d.id.to_string(),
        "--pool",
        "p",
    ]);
    let set: uuid::Uuid = j["media_set"].as_str().unwrap().parse().unwrap();
    {
        // A session of the set that failed before its first tape file (as when no
        // cartridge could be mounted).
        let cat = v.catalog();
        let s = cat.begin_session("p", Some(set)).unwrap();
        cat.finish_session(s.uuid, SessionStatus::Failed).unwrap();
    }
    let set_s = set.to_string();
    let r = v.run(&["media", "export", "--set", &set_s]);
    assert_eq!(
        r.code, 0,
        "a session that wrote nothing blocked: {}",
        r.stderr
    );
    v.ok(&["library", "import"]);

    // A failed session that did close a tape file on the set blocks, and the refusal
    // says what to do.
    {
        let cat = v.catalog();
        let s = cat.begin_session("p", Some(set)).unwrap();
        let m = cat.media_in_set(set).unwrap().remove(0);
        cat.record_media_write(&m.barcode, m.next_tape_file + 1, 4096)
            .unwrap();
        cat.finish_session(s.uuid, SessionStatus::Failed).unwrap();
    }
    let r = v.run(&["media", "export", "--set", &set_s]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("failed")
            && r.stderr.contains("--force")
            && r.stderr.contains("run a backup"),
        "{}",
        r.stderr
    );
}
