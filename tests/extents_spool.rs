//! Extent lists beyond the in-memory limit (issue 18 item 2): with
//! `TAPEVAULT_EXTENT_RUN=3` every list of more than a few extents goes through its
//! temporary file (changed-extents areas sorted in runs and merged, a hash scan's
//! changes, a backup's coverage, the restore plan), and everything must come out as
//! with the default limit: the same catalog coverage, bit-identical restores, and the
//! same coverage after a fast-path rebuild from the snapshots on tape.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// Areas of 4 KiB every 128 KiB (two tracking blocks apart, so they stay apart).
const STRIDE: u64 = 128 * KIB;
const AREAS: u64 = 300;

fn run_with(v: &Vault, limit: Option<&str>, args: &[&str]) -> serde_json::Value {
    let mut c = v.command(args);
    match limit {
        Some(l) => c.env("TAPEVAULT_EXTENT_RUN", l),
        None => c.env_remove("TAPEVAULT_EXTENT_RUN"),
    };
    let r = Run::from_output(c.output().expect("run tapevault"));
    assert_eq!(
        r.code, 0,
        "tapevault {args:?} (limit {limit:?}) failed with exit {}\nstdout: {}\nstderr: {}",
        r.code, r.stdout, r.stderr
    );
    r.json
}

fn backup(v: &Vault, limit: Option<&str>, disk: &TestDisk, extra: &[&str]) -> serde_json::Value {
    let path = disk.path.to_string_lossy().into_owned();
    let id = disk.id.to_string();
    let mut a = vec!["backup", "--disk", &path, "--disk-id", &id, "--pool", "p"];
    a.extend_from_slice(extra);
    let j = run_with(v, limit, &a);
    j["images"][0].clone()
}

fn coverage(home: &Path, image: &str) -> Vec<(u64, u64, bool)> {
    let cat = tapevault::catalog::Catalog::open(home).expect("open catalog");
    cat.extents(image.parse().expect("uuid"))
        .expect("extents")
        .into_iter()
        .map(|e| (e.offset, e.length, e.is_zero))
        .collect()
}

#[test]
fn spooled_extent_lists_give_the_same_catalog_and_restores_as_in_memory_ones() {
    // One disk, backed up into two vaults: `mem` with the default limit, `spill` with
    // a limit of 3 extents in memory.
    let mem = Vault::small(2, "64M");
    let spill = Vault::small(2, "64M");
    for v in [&mem, &spill] {
        v.pool("p", "off");
    }
    let low = Some("3");
    let mut disk = TestDisk::create(mem.path("disk.img"), AREAS * STRIDE, 0, 18);
    for i in (0..AREAS).step_by(3) {
        disk.write_random(i * STRIDE, 4 * KIB);
    }
    let cbt = mem.path("cbt.json");
    write_changed_extents(&cbt, "*", "c1", &[(0, disk.size())]);
    let cbt_arg = cbt.to_str().unwrap().to_string();
    let mut images: Vec<(String, String)> = Vec::new();
    let mut points = vec![mem.path("p0.img")];
    disk.save_copy(&points[0]);
    let full_m = backup(&mem, None, &disk, &["--changed-extents", &cbt_arg]);
    let full_s = backup(&spill, low, &disk, &["--changed-extents", &cbt_arg]);
    images.push((s(&full_m, "image").into(), s(&full_s, "image").into()));

    // Changed areas in a scattered order, some listed twice or overlapping, most over
    // holes (zero extents), every fourth rewritten with data.
    let mut areas: Vec<(u64, u64)> = Vec::new();
    for k in 0..AREAS {
        let i = (k * 7919) % AREAS;
        if i.is_multiple_of(4) {
            disk.write_random(i * STRIDE + 4096, 4 * KIB);
        }
        areas.push((i * STRIDE, 4 * KIB));
        if i.is_multiple_of(10) {
            areas.push((i * STRIDE + 2048, 8 * KIB));
        }
    }
    write_changed_extents(&cbt, "c1", "c2", &areas);
    points.push(mem.path("p1.img"));
    disk.save_copy(&points[1]);
    let inc_m = backup(&mem, None, &disk, &["--changed-extents", &cbt_arg]);
    let inc_s = backup(&spill, low, &disk, &["--changed-extents", &cbt_arg]);
    assert_eq!(s(&inc_m, "method"), "changed-extents");
    assert_eq!(s(&inc_s, "method"), "changed-extents");
    images.push((s(&inc_m, "image").into(), s(&inc_s, "image").into()));

    // A hash-scan incremental (no changed-extents file): scattered writes and zeros.
    for i in (1..AREAS).step_by(5) {
        disk.write_random(i * STRIDE + 60 * KIB, 8 * KIB);
    }
    for i in (0..AREAS).step_by(12) {
        disk.write_zeros(i * STRIDE, 4 * KIB);
    }
    points.push(mem.path("p2.img"));
    disk.save_copy(&points[2]);
    let scan_m = backup(&mem, None, &disk, &[]);
    let scan_s = backup(&spill, low, &disk, &[]);
    assert_eq!(s(&scan_m, "method"), "hash-scan");
    assert_eq!(s(&scan_s, "method"), "hash-scan");
    images.push((s(&scan_m, "image").into(), s(&scan_s, "image").into()));

    // The same coverage row for row, and more rows than the limit (the spooled paths
    // were taken).
    for (m, s_) in &images {
        let a = coverage(&mem.home, m);
        let b = coverage(&spill.home, s_);
        assert!(b.len() > 3, "image {s_} has only {} extents", b.len());
        assert_eq!(a, b, "coverage of {m} (in memory) vs {s_} (spooled)");
    }
    assert!(coverage(&spill.home, &images[1].1).len() >= AREAS as usize);
    mem.assert_catalog_consistent();
    spill.assert_catalog_consistent();

    // Every point restores bit-identical from both vaults, the spilled one planning
    // with the low limit too.
    let id = disk.id.to_string();
    for (n, ((m, s_), want)) in images.iter().zip(&points).enumerate() {
        for (v, image, limit) in [(&mem, m, None), (&spill, s_, low)] {
            let out = v.path(&format!("r{n}-{image}.img"));
            let t = out.to_string_lossy().into_owned();
            run_with(
                v,
                limit,
                &["restore", "--disk", &id, "--image", image, "--to", &t],
            );
            assert_same_bytes(&out, want, &format!("point {n} from image {image}"));
            std::fs::remove_file(&out).unwrap();
        }
    }

    // A fast-path rebuild reads the snapshots (written with each image's extents
    // streamed from the catalog) back to the same coverage; a full-scan rebuild joins
    // the coverage it builds from the records (spooled per part) to the same too.
    let lib = spill.library_dir();
    for (home, rebuild) in [
        ("rebuilt", vec!["catalog", "rebuild"]),
        ("scanned", vec!["catalog", "rebuild", "--scan"]),
    ] {
        rebuilt_matches(&spill, home, &lib, &rebuild, &images);
    }
}

fn rebuilt_matches(
    spill: &Vault,
    home: &str,
    lib: &Path,
    rebuild: &[&str],
    images: &[(String, String)],
) {
    let rebuilt = spill.path(home);
    for args in [
        vec!["init", "--library", lib.to_str().unwrap()],
        rebuild.to_vec(),
    ] {
        let o = Command::new(BIN)
            .arg("--home")
            .arg(&rebuilt)
            .arg("--json")
            .args(&args)
            .env("TAPEVAULT_EXTENT_RUN", "3")
            .env_remove("TAPEVAULT_HOME")
            .env_remove("TAPEVAULT_NOW")
            .output()
            .expect("run tapevault");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for (_, s_) in images {
        assert_eq!(
            coverage(&rebuilt, s_),
            coverage(&spill.home, s_),
            "rebuilt {s_}"
        );
    }
}

/// A synthetic full streamed on two drives (the staged incrementals' and the full's
/// extent lists walked by position while the writer reads the merged disk) and the
/// tape-to-tape copies of a chain (each copy's coverage spooled as written, compared
/// with the original's rows and inserted row by row) come out the same with
/// `TAPEVAULT_EXTENT_RUN=3` as with the default limit: the same coverage, and the
/// point restored bit-identical from the synthetic full and from the copies alone.
#[test]
fn synthetic_fulls_and_copies_are_the_same_with_spooled_extent_lists() {
    let vault = || {
        let v = Vault::init(&["--slots", "8", "--drives", "2", "--capacity", "64M"]);
        for p in ["p", "s", "c"] {
            v.pool(p, "off");
        }
        v
    };
    let (mem, spill) = (vault(), vault());
    let low = Some("3");
    let mut disk = TestDisk::create(mem.path("disk.img"), AREAS * STRIDE, 0, 29);
    for i in (0..AREAS).step_by(3) {
        disk.write_random(i * STRIDE, 4 * KIB);
    }
    let cbt = mem.path("cbt.json");
    let cbt_arg = cbt.to_str().unwrap().to_string();
    write_changed_extents(&cbt, "*", "c1", &[(0, disk.size())]);
    // (mem image, spill image) of the full and two incrementals.
    let mut chain: Vec<(String, String)> = Vec::new();
    let mut both = |disk: &TestDisk, extra: &[&str]| {
        let m = backup(&mem, None, disk, extra);
        let s_ = backup(&spill, low, disk, extra);
        chain.push((s(&m, "image").into(), s(&s_, "image").into()));
    };
    both(&disk, &["--changed-extents", &cbt_arg]);
    let mut areas: Vec<(u64, u64)> = Vec::new();
    for k in 0..AREAS {
        let i = (k * 7919) % AREAS;
        if i.is_multiple_of(4) {
            disk.write_random(i * STRIDE + 4096, 4 * KIB);
        }
        areas.push((i * STRIDE, 4 * KIB));
    }
    write_changed_extents(&cbt, "c1", "c2", &areas);
    both(&disk, &["--changed-extents", &cbt_arg]);
    for i in (1..AREAS).step_by(5) {
        disk.write_random(i * STRIDE + 60 * KIB, 8 * KIB);
    }
    for i in (0..AREAS).step_by(12) {
        disk.write_zeros(i * STRIDE, 4 * KIB);
    }
    both(&disk, &[]);
    let point = mem.path("point.img");
    disk.save_copy(&point);
    let id = disk.id.to_string();

    // The synthetic full, streamed: the same coverage as the point's chain gives, in
    // both vaults, and the point's bytes.
    let mut synth = Vec::new();
    for (v, limit) in [(&mem, None), (&spill, low)] {
        let r = run_with(
            v,
            limit,
            &[
                "backup",
                "--synthetic-full",
                "--disk-id",
                &id,
                "--pool",
                "s",
            ],
        );
        assert_eq!(s(&r["disks"][0], "mode"), "stream", "{r}");
        let img = s(&r["disks"][0]["session"]["images"][0], "image").to_string();
        let out = v.path("synth.img");
        let t = out.to_string_lossy().into_owned();
        run_with(
            v,
            limit,
            &["restore", "--disk", &id, "--image", &img, "--to", &t],
        );
        assert_same_bytes(&out, &point, &format!("synthetic full {img} ({limit:?})"));
        synth.push(coverage(&v.home, &img));
    }
    assert!(synth[1].len() > 3, "{} extents", synth[1].len());
    assert_eq!(synth[0], synth[1], "synthetic full: in memory vs spooled");

    // The copies: each covers what its original does, in both vaults; with the
    // originals' cartridges gone, the point restores from the copies.
    for (k, (v, limit)) in [(&mem, None), (&spill, low)].into_iter().enumerate() {
        let r = run_with(
            v,
            limit,
            &["copy", "--disk", &id, "--from-pool", "p", "--to-pool", "c"],
        );
        let copied = r["copied"].as_array().unwrap();
        assert_eq!(copied.len(), 3, "{r}");
        let originals: Vec<&String> = chain
            .iter()
            .map(|p| if k == 0 { &p.0 } else { &p.1 })
            .collect();
        for (c, orig) in copied.iter().zip(&originals) {
            assert_eq!(s(c, "image"), orig.as_str(), "{r}");
            let copy = s(c, "copy");
            assert_eq!(
                coverage(&v.home, copy),
                coverage(&v.home, orig),
                "copy {copy} of {orig}"
            );
        }
        let cat = v.catalog();
        let mut sets: Vec<String> = Vec::new();
        for orig in &originals {
            let row = v.image_row(orig);
            let set = cat
                .session(row.session_uuid.unwrap())
                .unwrap()
                .unwrap()
                .media_set_uuid
                .unwrap()
                .to_string();
            if !sets.contains(&set) {
                sets.push(set);
            }
        }
        for set in &sets {
            v.ok(&["media", "export", "--set", set]);
        }
        for c in cat.list_media(None).unwrap() {
            if c.pool.as_deref() == Some("p") {
                v.ok(&["media", "vault", &c.barcode, "--location", "iron"]);
            }
        }
        let out = v.path("from-copies.img");
        let t = out.to_string_lossy().into_owned();
        let last = originals[2].as_str();
        let r = run_with(
            v,
            limit,
            &["restore", "--disk", &id, "--image", last, "--to", &t],
        );
        assert!(
            r["used"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| !u["copy_of"].is_null()),
            "{r}"
        );
        assert_same_bytes(
            &out,
            &point,
            &format!("the point from its copies ({limit:?})"),
        );
    }
    let copies = |v: &Vault, orig: &str| -> Vec<(u64, u64, bool)> {
        let c = v.catalog().copies_of(orig.parse().unwrap()).unwrap();
        coverage(&v.home, &c[0].uuid.to_string())
    };
    for (m, s_) in &chain {
        assert_eq!(copies(&mem, m), copies(&spill, s_), "copies of {m} / {s_}");
    }
    mem.assert_catalog_consistent();
    spill.assert_catalog_consistent();
}
