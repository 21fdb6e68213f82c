//! Restore under damage: corrupt records, an incremental that went bad, a cartridge
//! outside the library, existing targets.

#[path = "restore_support.rs"]
mod support;

use support::*;
use uuid::Uuid;

/// A full and three incrementals of a 2 MiB disk; returns (env, disk id, points).
fn chain() -> (Env, Uuid, Vec<(String, Uuid, std::path::PathBuf)>) {
    let env = Env::new(4, "128M");
    env.ok(&["pool", "create", "p"]);
    let id = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 2 << 20, 7);
    let mut points = Vec::new();
    for i in 0..4u32 {
        if i > 0 {
            disk.scribble(2);
        }
        let t = time(i);
        let img = env.backup(&disk.path, id, "p", &t, &[]);
        let copy = env.path(&format!("point{i}.img"));
        disk.snapshot(&copy);
        points.push((t, img, copy));
    }
    (env, id, points)
}

fn no_leftovers(env: &Env, name: &str) {
    let left: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(name))
        .collect();
    assert!(left.is_empty(), "a failed restore left {left:?}");
}

#[test]
fn restore_before_corrupt_incremental_still_works() {
    let (env, id, points) = chain();
    let bad = points[2].1;
    let seg = env.segments(bad)[0].clone();
    env.flip_bit(&seg.barcode, seg.first_block);

    // The point before the damage restores bit-identical.
    let out = env.path("before.img");
    let r = env.restore(id, &["--at", &points[1].0], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&points[1].2, &out);

    // The damaged point fails with exit 3 naming image, cartridge and block, and
    // leaves nothing behind.
    let out = env.path("damaged.img");
    let r = env.restore(id, &["--at", &points[2].0], &out);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains(&bad.to_string()), "{msg}");
    assert!(msg.contains(&seg.barcode), "{msg}");
    assert!(msg.contains(&format!("block {}", seg.first_block)), "{msg}");
    assert_eq!(v["kind"], "integrity");
    assert!(!out.exists());
    no_leftovers(&env, "damaged.img");

    // The restore remembered the damage: the image and the one built on it are
    // corrupt now, so a later point restores the newest intact one, naming both.
    let marked = v["marked_corrupt"].as_array().unwrap();
    assert_eq!(marked.len(), 2, "{v}");
    let out = env.path("later.img");
    let r = env.restore(id, &["--at", &points[3].0], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["image"].as_str(), Some(points[1].1.to_string().as_str()));
    assert_eq!(v["skipped"].as_array().unwrap().len(), 2, "{v}");
    assert!(r.stderr.contains(&bad.to_string()), "{}", r.stderr);
    assert_same(&points[1].2, &out);
}

#[test]
fn corrupt_full_image_record_stops_restore_with_exit_3() {
    let (env, id, points) = chain();
    // Damage the full where no incremental overwrote it: the restore must read it.
    let full = points[0].1;
    let seg = env.segments(full)[0].clone();
    env.flip_bit(&seg.barcode, seg.first_block);
    let out = env.path("out.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains(&seg.barcode) && r.stderr.contains(&full.to_string()));
    assert!(!out.exists());
    no_leftovers(&env, "out.img");
}

#[test]
fn verify_marks_a_corrupt_incremental_and_no_backup_builds_on_it() {
    let (env, id, points) = chain();
    let bad = points[2].1;
    let seg = env.segments(bad)[0].clone();
    env.flip_bit(&seg.barcode, seg.first_block);
    let r = env.run(&["--json", "verify", "--image", &bad.to_string()]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["status"], "corrupt");
    assert!(v["error"].as_str().unwrap().contains(&seg.barcode));
    let row = env.catalog().image(bad).unwrap().unwrap();
    assert_eq!(row.status.as_str(), "corrupt");
    // `images` shows it.
    let imgs = env
        .ok(&["--json", "images", "--disk", &id.to_string()])
        .json();
    let all: Vec<&serde_json::Value> = imgs["disks"][0]["chains"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["images"].as_array().unwrap())
        .collect();
    let e = all.iter().find(|e| e["image"] == bad.to_string()).unwrap();
    assert_eq!(e["status"], "corrupt");
    // Latest now passes over the corrupt image and the one built on it, naming them;
    // an earlier point still works.
    let r = env.restore(id, &[], &env.path("latest.img"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.json()["image"].as_str(),
        Some(points[1].1.to_string().as_str())
    );
    assert!(r.stderr.contains(&bad.to_string()), "{}", r.stderr);
    let out = env.path("p1.img");
    assert_eq!(env.restore(id, &["--at", &points[1].0], &out).code, 0);
    assert_same(&points[1].2, &out);
    // The next backup builds on the newest intact image, not on the corrupt one.
    let disk = env.path("disk.img");
    let r = env.run_at(
        Some(&time(10)),
        &[
            "--json",
            "backup",
            "--disk",
            disk.to_str().unwrap(),
            "--disk-id",
            &id.to_string(),
            "--pool",
            "p",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let parent = r.json()["images"][0]["parent"].clone();
    assert_ne!(parent, bad.to_string());
    assert_ne!(parent, points[3].1.to_string());
    let out = env.path("new.img");
    assert_eq!(env.restore(id, &[], &out).code, 0);
    assert_same(&disk, &out);
}

#[test]
fn missing_cartridge_exits_4_with_the_pull_list() {
    let (env, id, points) = chain();
    let bc = env.segments(points[0].1)[0].barcode.clone();
    env.ok(&["library", "export", &bc]);
    env.ok(&["library", "remove", &bc]);
    let out = env.path("out.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["kind"], "media-needed");
    let list = v["pull_list"].as_array().unwrap();
    let item = list.iter().find(|p| p["barcode"] == bc.as_str()).unwrap();
    assert_eq!(item["in_library"], false);
    assert_eq!(item["location"]["kind"], "outside");
    assert!(v["error"].as_str().unwrap().contains(&bc));
    assert!(r.stderr.contains("NOT IN THE LIBRARY"), "{}", r.stderr);
    assert!(!out.exists());
    // Back in the library, the same restore works.
    env.ok(&["library", "insert", &bc]);
    env.ok(&["library", "import"]);
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&points[3].2, &out);
}

#[test]
fn existing_target_needs_force_and_no_image_is_a_clear_error() {
    let (env, id, points) = chain();
    let out = env.path("exists.img");
    std::fs::write(&out, b"precious").unwrap();
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let r = env.restore(id, &["--force"], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&points[3].2, &out);
    // An empty existing file is fine without --force.
    let empty = env.path("empty.img");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(env.restore(id, &[], &empty).code, 0);
    assert_same(&points[3].2, &empty);
    // A time before the first backup: a usage error naming the oldest restore point.
    let r = env.restore(id, &["--at", "2025-01-01T00:00:00Z"], &env.path("none.img"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("oldest restore point"), "{}", r.stderr);
    // An unknown disk: a usage error listing the known ones.
    let r = env.restore(Uuid::new_v4(), &[], &env.path("none.img"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("unknown disk") && r.stderr.contains(&id.to_string()),
        "{}",
        r.stderr
    );
}
