//! Damage found once is never forgotten: a restore, a verify or a media scan that finds
//! an image damaged marks it and every image built on it corrupt; `images` shows them as
//! not restorable; `restore --at` takes the newest point that can be restored and names
//! what it passed over; the next backup builds on the newest restorable image and says so.

#[path = "restore_support.rs"]
mod support;

use serde_json::Value;
use support::*;
use uuid::Uuid;

/// A full and three incrementals of a 2 MiB disk; (env, disk, [(time, image, copy)]).
fn chain() -> (Env, Uuid, Disk, Vec<(String, Uuid, std::path::PathBuf)>) {
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
    (env, id, disk, points)
}

/// uuid -> the `images --json` entry.
fn listed(env: &Env, id: Uuid) -> std::collections::HashMap<Uuid, Value> {
    let v = env
        .ok(&["--json", "images", "--disk", &id.to_string()])
        .json();
    let mut out = std::collections::HashMap::new();
    for chain in v["disks"][0]["chains"].as_array().unwrap() {
        for img in chain["images"].as_array().unwrap() {
            out.insert(img["image"].as_str().unwrap().parse().unwrap(), img.clone());
        }
    }
    out
}

fn restorable(env: &Env, id: Uuid, img: Uuid) -> bool {
    listed(env, id)[&img]["restorable"]
        .as_bool()
        .expect("images --json says whether each image is restorable")
}

#[test]
fn corruption_found_by_a_restore_is_marked_on_the_image_and_its_dependents() {
    let (env, id, disk, points) = chain();
    // Damage the full where no incremental overwrote it: every point needs it.
    let full = points[0].1;
    let seg = env.segments(full)[0].clone();
    env.flip_bit(&seg.barcode, seg.first_block);

    let r = env.restore(id, &[], &env.path("out.img"));
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    let marked: Vec<String> = v["marked_corrupt"]
        .as_array()
        .unwrap_or_else(|| panic!("the error report lists what it marked: {v}"))
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    for (_, img, _) in &points {
        assert!(marked.contains(&img.to_string()), "{img} not marked: {v}");
    }
    assert!(r.stderr.contains("marked image"), "{}", r.stderr);

    // The catalog remembers: none is restorable, the incrementals say why.
    let l = listed(&env, id);
    for (_, img, _) in &points {
        assert_eq!(l[img]["status"], "corrupt", "{}", l[img]);
        assert_eq!(l[img]["restorable"], false, "{}", l[img]);
    }
    let note = l[&points[3].1]["note"].as_str().unwrap();
    assert!(note.contains(&full.to_string()), "{note}");
    let text = env.ok(&["images", "--disk", &id.to_string()]).stdout;
    assert!(!text.contains("complete"), "{text}");

    // No point can be restored now: exit 3 naming why, without reading anything.
    let r = env.restore(id, &["--at", &points[2].0], &env.path("none.img"));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("can be restored"), "{}", r.stderr);

    // The next backup does not build on the broken chain: a full, saying why.
    let d = disk.path.to_str().unwrap().to_string();
    let r = env.run_at(
        Some(&time(10)),
        &[
            "--json",
            "backup",
            "--disk",
            &d,
            "--disk-id",
            &id.to_string(),
            "--pool",
            "p",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let img = &r.json()["images"][0];
    assert_eq!(img["kind"], "full", "{img}");
    let note = img["base_note"]
        .as_str()
        .unwrap_or_else(|| panic!("no base_note: {img}"));
    assert!(note.contains(&points[3].1.to_string()), "{note}");
    assert!(
        r.stderr.contains(note),
        "the note is on stderr too: {}",
        r.stderr
    );
    // And that new point restores.
    let out = env.path("new.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&disk.path, &out);
}

#[test]
fn at_skips_points_that_cannot_be_restored_and_says_which() {
    let (env, id, mut disk, points) = chain();
    // Damage the second incremental where the restore of its point must read it; a
    // verify of it finds the damage and marks it.
    let bad = points[2].1;
    let seg = env.segments(bad)[0].clone();
    env.flip_bit(&seg.barcode, seg.first_block);
    let r = env.run(&["--json", "verify", "--image", &bad.to_string()]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);

    // The incremental built on it is not restorable either.
    assert!(!restorable(&env, id, bad));
    assert!(!restorable(&env, id, points[3].1));
    assert_eq!(listed(&env, id)[&points[3].1]["status"], "corrupt");
    assert!(restorable(&env, id, points[1].1));

    // `--at` the last point: the newest restorable point at or before it, which is
    // the first incremental, naming both images passed over and why.
    for sel in [vec!["--at", points[3].0.as_str()], vec![]] {
        let out = env.path("out.img");
        let _ = std::fs::remove_file(&out);
        let r = env.restore(id, &sel, &out);
        assert_eq!(r.code, 0, "{sel:?}: {}\n{}", r.stdout, r.stderr);
        let v = r.json();
        assert_eq!(v["image"].as_str(), Some(points[1].1.to_string().as_str()));
        assert_same(&points[1].2, &out);
        let skipped: Vec<&str> = v["skipped"]
            .as_array()
            .unwrap_or_else(|| panic!("no skipped list: {v}"))
            .iter()
            .map(|s| s["image"].as_str().unwrap())
            .collect();
        assert_eq!(
            skipped,
            vec![points[3].1.to_string(), bad.to_string()],
            "{v}"
        );
        for s in v["skipped"].as_array().unwrap() {
            assert!(!s["reason"].as_str().unwrap().is_empty(), "{s}");
            assert!(
                r.stderr.contains(s["image"].as_str().unwrap()),
                "stderr names {s}: {}",
                r.stderr
            );
        }
    }

    // `--image` of a damaged point still fails with exit 3 naming it.
    let r = env.restore(
        id,
        &["--image", &points[3].1.to_string()],
        &env.path("x.img"),
    );
    assert_eq!(r.code, 3, "{}", r.stderr);

    // The next backup builds on the first incremental and says what it passed over.
    disk.scribble(1);
    let d = disk.path.to_str().unwrap().to_string();
    let r = env.run_at(
        Some(&time(10)),
        &[
            "--json",
            "backup",
            "--disk",
            &d,
            "--disk-id",
            &id.to_string(),
            "--pool",
            "p",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let img = &r.json()["images"][0];
    assert_eq!(img["kind"], "incremental", "{img}");
    assert_eq!(
        img["parent"].as_str(),
        Some(points[1].1.to_string().as_str())
    );
    let note = img["base_note"]
        .as_str()
        .unwrap_or_else(|| panic!("no base_note: {img}"));
    assert!(
        note.contains(&bad.to_string()) && note.contains(&points[3].1.to_string()),
        "{note}"
    );
    assert!(r.stderr.contains(note), "{}", r.stderr);
    let out = env.path("after.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&disk.path, &out);
}

#[test]
fn damage_a_media_scan_finds_marks_the_chain() {
    let (env, id, _disk, points) = chain();
    let bad = points[1].1;
    let seg = env.segments(bad)[0].clone();
    env.flip_bit(&seg.barcode, seg.first_block);
    let r = env.run(&["--json", "verify", "--barcode", &seg.barcode]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let l = listed(&env, id);
    assert_eq!(l[&points[0].1]["restorable"], true);
    for (_, img, _) in &points[1..] {
        assert_eq!(l[img]["status"], "corrupt", "{}", l[img]);
        assert_eq!(l[img]["restorable"], false);
    }
    let out = env.path("out.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&points[0].2, &out);
}
