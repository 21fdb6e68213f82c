//! `verify --barcode` walks every tape file of a cartridge; `verify --image` reads an
//! image back whole. Damage is reported by position and marks the image corrupt.

#[path = "restore_support.rs"]
mod support;

use support::*;
use uuid::Uuid;

#[test]
fn verify_barcode_reports_every_tape_file_and_marks_damage() {
    let env = Env::new(4, "128M");
    env.ok(&["pool", "create", "p"]);
    let id = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 2 << 20, 5);
    let full = env.backup(&disk.path, id, "p", &time(0), &[]);
    disk.scribble(2);
    let inc = env.backup(&disk.path, id, "p", &time(1), &[]);
    let bc = env.segments(full)[0].barcode.clone();

    let r = env.run(&["--json", "verify", "--barcode", &bc]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["ok"], true);
    let kinds: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "volume label",
            "image part",
            "catalog snapshot",
            "end of session",
            "image part",
            "catalog snapshot",
            "end of session"
        ]
    );
    for f in v["files"].as_array().unwrap() {
        if f["kind"] == "image part" || f["kind"] == "catalog snapshot" {
            assert_eq!(f["digest_checked"], true, "{f}");
        }
    }
    let r = env.run(&["--json", "verify", "--image", &inc.to_string()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["read"]["digest_checked"], true);

    // One flipped bit in the incremental's second record.
    let seg = env.segments(inc)[0].clone();
    let block = seg.first_block + (seg.last_block > seg.first_block) as u64;
    env.flip_bit(&bc, block);
    let r = env.run(&["--json", "verify", "--barcode", &bc]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["ok"], false);
    let bad: Vec<&serde_json::Value> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] == false)
        .collect();
    assert_eq!(bad.len(), 1, "{v}");
    assert_eq!(bad[0]["image"], inc.to_string());
    assert_eq!(bad[0]["file"], seg.tape_file);
    let problems = bad[0]["problems"].to_string();
    assert!(problems.contains(&format!("block {block}")), "{problems}");
    assert_eq!(v["marked_corrupt"][0], inc.to_string());
    assert_eq!(
        env.catalog().image(inc).unwrap().unwrap().status.as_str(),
        "corrupt"
    );
    assert_eq!(
        env.catalog().image(full).unwrap().unwrap().status.as_str(),
        "complete"
    );
    // The full still verifies.
    assert_eq!(env.run(&["verify", "--image", &full.to_string()]).code, 0);
}

#[test]
fn verify_image_marks_corrupt_on_an_unreadable_block() {
    let env = Env::new(4, "128M");
    env.ok(&["pool", "create", "p"]);
    let id = Uuid::new_v4();
    let disk = Disk::create(env.path("disk.img"), 3 << 20, 6);
    let full = env.backup(&disk.path, id, "p", &time(0), &[]);
    // A media error on the last data record: the drive cannot read it.
    let seg = env.segments(full).last().unwrap().clone();
    let mut lib = env.library();
    lib.set_faults(
        &seg.barcode,
        vtl_sim::Faults {
            media_error_blocks: vec![seg.last_block],
            ..Default::default()
        },
    )
    .unwrap();
    let r = env.run(&["--json", "verify", "--image", &full.to_string()]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&seg.barcode) && msg.contains(&format!("block {}", seg.last_block)),
        "{msg}"
    );
    assert_eq!(
        env.catalog().image(full).unwrap().unwrap().status.as_str(),
        "corrupt"
    );
}

#[test]
fn verify_barcode_stops_at_an_unreadable_block_and_marks_its_image() {
    let env = Env::new(4, "128M");
    env.ok(&["pool", "create", "p"]);
    let id = Uuid::new_v4();
    let disk = Disk::create(env.path("disk.img"), 2 << 20, 8);
    let full = env.backup(&disk.path, id, "p", &time(0), &[]);
    let seg = env.segments(full)[0].clone();
    env.library()
        .set_faults(
            &seg.barcode,
            vtl_sim::Faults {
                media_error_blocks: vec![seg.first_block + 1],
                ..Default::default()
            },
        )
        .unwrap();
    let r = env.run(&["--json", "verify", "--barcode", &seg.barcode]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert!(v["aborted"]
        .as_str()
        .unwrap()
        .contains(&format!("block {}", seg.first_block + 1)));
    assert_eq!(v["marked_corrupt"][0], full.to_string());
    let last = v["files"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["file"], seg.tape_file);
    assert_eq!(last["image"], full.to_string());
    assert_eq!(
        env.catalog().image(full).unwrap().unwrap().status.as_str(),
        "corrupt"
    );
}

#[test]
fn a_blank_cartridge_verifies_as_blank_unless_the_catalog_expects_data() {
    let env = Env::new(4, "16M");
    env.ok(&["pool", "create", "p"]);
    // Never written, and the catalog knows it: nothing to verify, exit 0.
    let r = env.run(&["verify", "--barcode", "TV0003L9"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("blank"), "{}", r.stdout);
    let r = env.run(&["--json", "verify", "--barcode", "TV0003L9"]);
    let v = r.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["files"][0]["kind"], "blank");

    // The catalog says it was labelled into a pool, but the tape reads blank: the data
    // it should hold is gone. Integrity failure, exit 3.
    {
        let cat = env.catalog();
        let set = cat.create_media_set("p", 1).unwrap();
        cat.assign_media("TV0003L9", "p", set.uuid, 0, Uuid::new_v4())
            .unwrap();
    }
    let r = env.run(&["verify", "--barcode", "TV0003L9"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("blank") && r.stderr.contains("labelled"),
        "{}",
        r.stderr
    );
}
