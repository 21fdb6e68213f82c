//! A synthetic full after `catalog rebuild` into a new home (which imports no block
//! digest lists): the point's list is derived from the chain as it is read, the
//! synthetic full is checked against it, and it is the base of the next hash-scan
//! incremental. Every point restores bit-identical from the rebuilt home.

mod common;

use common::*;

#[test]
fn a_synthetic_full_after_a_rebuild_is_built_checked_and_a_base() {
    let mut v = Vault::init(&["--slots", "8", "--drives", "1", "--capacity", "64M"]);
    v.pool("p", "zstd:1");
    let mut d = TestDisk::create(v.path("d.img"), 8 * MIB, 6 * MIB, 21);
    let mut points: Vec<(String, std::path::PathBuf)> = Vec::new();
    for h in 0..4u64 {
        v.now = Some(test_time(h));
        if h > 0 {
            d.random_writes(5, 300 * KIB);
            d.random_zero(100 * KIB);
        }
        let b = v.backup(&d, "p", if h == 0 { &["--full"] } else { &[] });
        assert_eq!(s(&b, "kind"), if h == 0 { "full" } else { "incremental" });
        let copy = v.path(&format!("p{h}.img"));
        d.save_copy(&copy);
        points.push((s(&b, "image").to_string(), copy));
    }
    let point = points.last().unwrap().0.clone();

    // A new home from the library alone.
    let mut w = Vault::init(&["--library", v.library_dir().to_str().unwrap()]);
    w.now = Some(test_time(5));
    w.ok(&["catalog", "rebuild"]);
    let row = w.image_row(&point);
    assert!(
        w.catalog()
            .digest_list_file(&row)
            .is_none_or(|p| !p.is_file()),
        "a rebuilt catalog has no digest lists"
    );

    let id = d.id.to_string();
    let r = w.run(&[
        "backup",
        "--synthetic-full",
        "--disk-id",
        &id,
        "--pool",
        "p",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("derived it from the chain"),
        "said so: {}",
        r.stderr
    );
    let disk = &r.json["disks"][0];
    assert_eq!(disk["point"].as_str(), Some(point.as_str()), "{}", r.stdout);
    let synth = disk["session"]["images"][0]["image"]
        .as_str()
        .expect("a synthetic full")
        .to_string();
    let srow = w.image_row(&synth);
    assert_eq!(srow.status.as_str(), "complete");
    assert_eq!(
        srow.synthetic_of.map(|u| u.to_string()),
        Some(point.clone())
    );
    assert!(
        w.catalog()
            .digest_list_file(&srow)
            .is_some_and(|p| p.is_file()),
        "the synthetic full has its own list: the next incremental can hash-scan"
    );

    // The next backup is an incremental on the synthetic full, by hash scan.
    w.now = Some(test_time(6));
    let areas = d.random_writes(3, 200 * KIB);
    let inc = w.backup(&d, "p", &[]);
    assert_eq!(s(&inc, "kind"), "incremental", "{inc}");
    assert_eq!(inc["parent"].as_str(), Some(synth.as_str()), "{inc}");
    assert_eq!(
        u(&inc, "data_bytes") + u(&inc, "zero_bytes"),
        tracked_bytes(&areas, d.size()),
        "only the changed blocks: {inc}"
    );
    let last = v.path("p-last.img");
    d.save_copy(&last);

    // Every point restores bit-identical from the rebuilt home.
    for (img, want) in &points {
        let out = w.path(&format!("r-{img}.img"));
        let r = w.restore_image(d.id, img, &out);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_same_bytes(&out, want, "a point of the old chain");
    }
    let out = w.path("r-synth.img");
    let r = w.restore_image(d.id, &synth, &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &points.last().unwrap().1, "the synthetic full");
    let out = w.path("r-inc.img");
    let r = w.restore_image(d.id, s(&inc, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &last, "the incremental on the synthetic full");
    w.assert_catalog_consistent();
}
