//! Point-in-time selection: every time tapevault prints for an image, given back to
//! `restore --at`, selects exactly that image (text and JSON print the same time);
//! `--at` counts a time to the precision given and takes dates, offsets and `now`.

#[path = "restore_support.rs"]
mod support;

use std::collections::HashMap;

use support::*;
use uuid::Uuid;

/// Four images of one disk: two in the same second, one in the second before and one
/// in the second after. Returns (env, disk, [(time, image, copy of the disk)]).
fn sub_second_images() -> (Env, Uuid, Vec<(String, Uuid, std::path::PathBuf)>) {
    let env = Env::new(4, "128M");
    env.ok(&["pool", "create", "p"]);
    let id = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 1 << 20, 5);
    let times = [
        "2026-12-03T16:48:15.670000Z",
        "2026-12-03T16:48:16.120000Z",
        "2026-12-03T16:48:16.520000Z",
        "2026-12-03T16:48:17.000001Z",
    ];
    let mut points = Vec::new();
    for (n, t) in times.iter().enumerate() {
        if n > 0 {
            disk.scribble(2);
        }
        let img = env.backup(&disk.path, id, "p", t, &[]);
        let copy = env.path(&format!("point{n}.img"));
        disk.snapshot(&copy);
        points.push((t.to_string(), img, copy));
    }
    (env, id, points)
}

/// Restore `--at at` (optionally under a `TAPEVAULT_NOW`); returns the image restored.
fn restored_image(env: &Env, id: Uuid, at: &str, now: Option<&str>, to: &std::path::Path) -> Uuid {
    let _ = std::fs::remove_file(to);
    let (ds, ts) = (id.to_string(), to.to_str().unwrap().to_string());
    let r = env.run_at(
        now,
        &["--json", "restore", "--disk", &ds, "--at", at, "--to", &ts],
    );
    assert_eq!(r.code, 0, "--at {at}: {}\n{}", r.stdout, r.stderr);
    let v = r.json();
    v["image"].as_str().unwrap().parse().unwrap()
}

#[test]
fn every_printed_time_selects_exactly_its_image() {
    let (env, id, points) = sub_second_images();
    let ids = id.to_string();

    // The times `images --json` prints.
    let r = env.ok(&["--json", "images", "--disk", &ids]);
    let v = r.json();
    let mut json_times: HashMap<Uuid, String> = HashMap::new();
    for chain in v["disks"][0]["chains"].as_array().unwrap() {
        for img in chain["images"].as_array().unwrap() {
            json_times.insert(
                img["image"].as_str().unwrap().parse().unwrap(),
                img["started"].as_str().unwrap().to_string(),
            );
        }
    }
    assert_eq!(json_times.len(), points.len(), "{v}");

    // The times the text output prints: the same strings.
    let text = env.ok(&["images", "--disk", &ids]).stdout;
    for (_, img, _) in &points {
        let line = text
            .lines()
            .find(|l| l.contains(&img.to_string()) && !l.trim_start().starts_with("chain"))
            .unwrap_or_else(|| panic!("image {img} not listed:\n{text}"));
        let printed = line.split_whitespace().next().unwrap();
        assert_eq!(
            printed, json_times[img],
            "text and JSON disagree on the time of {img}:\n{text}"
        );
    }

    // Each printed time, pasted back, restores exactly that image, bit-identical.
    for (n, (taken, img, copy)) in points.iter().enumerate() {
        let printed = &json_times[img];
        assert_eq!(
            printed, taken,
            "the catalog keeps the time to the microsecond"
        );
        let out = env.path(&format!("out{n}.img"));
        let got = restored_image(&env, id, printed, None, &out);
        assert_eq!(got, *img, "--at {printed} restored {got}, not {img}");
        assert_same(copy, &out);
    }

    // The restore report names the time in the same form.
    let out = env.path("report.img");
    let r = env.restore(id, &["--at", &json_times[&points[1].1]], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.json()["at"].as_str(),
        Some(json_times[&points[1].1].as_str())
    );
}

#[test]
fn at_counts_to_the_precision_given() {
    let (env, id, points) = sub_second_images();
    let img = |n: usize| points[n].1;
    let out = env.path("out.img");
    let cases: Vec<(&str, Option<&str>, Uuid)> = vec![
        // A whole second includes everything within it: the newer of the two.
        ("2026-12-03T16:48:16Z", None, img(2)),
        ("2026-12-03T16:48:15Z", None, img(0)),
        ("2026-12-03T16:48:17Z", None, img(3)),
        // The same second with an offset, and with a space instead of T.
        ("2026-12-03T18:48:16+02:00", None, img(2)),
        ("2026-12-03 11:48:16-05:00", None, img(2)),
        // Fractions: to the tenth, to the microsecond.
        ("2026-12-03T16:48:16.1Z", None, img(1)),
        ("2026-12-03T16:48:16.5Z", None, img(2)),
        ("2026-12-03T16:48:16.519999Z", None, img(1)),
        // A whole minute, a date (its end, UTC).
        ("2026-12-03T16:48Z", None, img(3)),
        ("2026-12-03", None, img(3)),
        // `now` is the job's clock.
        ("now", Some("2026-12-03T16:48:16.300000Z"), img(1)),
        ("now", Some("2026-12-03T16:48:16.520000Z"), img(2)),
    ];
    for (at, now, want) in cases {
        let got = restored_image(&env, id, at, now, &out);
        assert_eq!(got, want, "--at {at} (now {now:?})");
    }

    // Before the first image: a usage error saying so with the time, naming the
    // oldest restore point.
    let r = env.restore(id, &["--at", "2026-12-03T16:48:14Z"], &env.path("none.img"));
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("2026-12-03T16:48:14.999999Z")
            && r.stderr.contains("oldest restore point"),
        "{}",
        r.stderr
    );

    // A time without a zone, or otherwise malformed: exit 2 naming the value.
    for bad in [
        "2026-12-03T16:48:16",
        "yesterday",
        "2026-02-30",
        "2026-12-03T16:48:16.1234567Z",
    ] {
        let r = env.restore(id, &["--at", bad], &env.path("bad.img"));
        assert_eq!(r.code, 2, "--at {bad}: {}", r.stderr);
        assert!(r.stderr.contains(bad), "--at {bad}: {}", r.stderr);
    }
}
