//! End to end through the binary: disks are known by UUID (never by path or position),
//! the change-id epoch check of changed-extents files, zero blocks, `--copy` and
//! `--full`.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;

fn write_manifest(path: &Path, name: &str, disks: &[(&TestDisk, Option<&Path>)]) {
    let mut t = format!("name = \"{name}\"\n");
    for (d, cbt) in disks {
        t.push_str(&format!(
            "\n[[disk]]\nid = \"{}\"\npath = \"{}\"\n",
            d.id,
            d.path.display()
        ));
        if let Some(c) = cbt {
            t.push_str(&format!("changed_extents = \"{}\"\n", c.display()));
        }
    }
    std::fs::write(path, t).unwrap();
}

#[test]
fn disks_that_swap_order_and_paths_stay_on_their_own_chains() {
    let v = Vault::small(4, "64M");
    v.pool("p", "off");
    std::fs::create_dir_all(v.path("moved")).unwrap();
    // Three disks of different sizes and contents.
    let mut a = TestDisk::create(v.path("a.img"), 2 * MIB, 2 * MIB, 1);
    let mut b = TestDisk::create(v.path("b.img"), 3 * MIB, MIB, 2);
    let mut c = TestDisk::create(v.path("c.img"), 5 * MIB, 512 * KIB, 3);
    let manifest = v.path("vm.toml");
    let cbt: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| v.path(&format!("{n}.cbt.json")))
        .collect();

    // Round 1: fulls, each recording its disk's change id.
    for (d, f, n) in [(&a, &cbt[0], "a"), (&b, &cbt[1], "b"), (&c, &cbt[2], "c")] {
        write_changed_extents(f, "*", &format!("{n}-1"), &[(0, d.size())]);
    }
    write_manifest(
        &manifest,
        "vm1",
        &[
            (&a, Some(&cbt[0])),
            (&b, Some(&cbt[1])),
            (&c, Some(&cbt[2])),
        ],
    );
    let r1 = by_disk(&v.backup_manifest(&manifest, "p", &[]));
    assert_eq!(r1.len(), 3);
    for d in [&a, &b, &c] {
        let i = &r1[&d.id.to_string()];
        assert_eq!(s(i, "kind"), "full");
        assert_eq!(u(i, "disk_size"), d.size());
    }
    let mut copies: Vec<(uuid::Uuid, String, std::path::PathBuf)> = Vec::new();
    for (d, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let p = v.path(&format!("{n}-1.copy"));
        d.save_copy(&p);
        copies.push((d.id, s(&r1[&d.id.to_string()], "image").to_string(), p));
    }

    // Round 2: rotate the files (a.img now holds B's data, b.img C's, c.img A's), list
    // the disks in another order, change each, with correct changed-extents files.
    std::fs::rename(v.path("a.img"), v.path("moved/tmp.img")).unwrap();
    std::fs::rename(v.path("b.img"), v.path("a.img")).unwrap();
    std::fs::rename(v.path("c.img"), v.path("b.img")).unwrap();
    std::fs::rename(v.path("moved/tmp.img"), v.path("c.img")).unwrap();
    a.path = v.path("c.img");
    b.path = v.path("a.img");
    c.path = v.path("b.img");
    let mut changed = HashMap::new();
    for (d, f, n) in [
        (&mut a, &cbt[0], "a"),
        (&mut b, &cbt[1], "b"),
        (&mut c, &cbt[2], "c"),
    ] {
        let areas = d.random_writes(2, 100 * KIB);
        write_changed_extents(f, &format!("{n}-1"), &format!("{n}-2"), &areas);
        changed.insert(d.id.to_string(), areas);
    }
    write_manifest(
        &manifest,
        "vm1",
        &[
            (&c, Some(&cbt[2])),
            (&a, Some(&cbt[0])),
            (&b, Some(&cbt[1])),
        ],
    );
    let r2 = by_disk(&v.backup_manifest(&manifest, "p", &[]));
    for d in [&a, &b, &c] {
        let id = d.id.to_string();
        let i = &r2[&id];
        assert_eq!(s(i, "kind"), "incremental", "{i}");
        assert_eq!(
            s(i, "method"),
            "changed-extents",
            "the change id of each disk's own chain must match: {i}"
        );
        assert_eq!(
            s(i, "parent"),
            s(&r1[&id], "image"),
            "disk {id} on its own chain"
        );
        assert_eq!(u(i, "disk_size"), d.size());
        assert_eq!(s(i, "path"), d.path.to_str().unwrap());
        let touched = tracked_bytes(&changed[&id], d.size());
        assert_eq!(u(i, "data_bytes") + u(i, "zero_bytes"), touched, "{i}");
    }
    for (d, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let p = v.path(&format!("{n}-2.copy"));
        d.save_copy(&p);
        copies.push((d.id, s(&r2[&d.id.to_string()], "image").to_string(), p));
    }

    // Round 3: move them again (into another directory), yet another order, no
    // changed-extents files: hash scans against each disk's own digest list.
    for (d, n) in [(&mut a, "x"), (&mut b, "y"), (&mut c, "z")] {
        let to = v.path(&format!("moved/{n}.img"));
        std::fs::rename(&d.path, &to).unwrap();
        d.path = to;
        let areas = d.random_writes(3, 64 * KIB);
        changed.insert(d.id.to_string(), areas);
    }
    write_manifest(&manifest, "vm1", &[(&b, None), (&c, None), (&a, None)]);
    let r3 = by_disk(&v.backup_manifest(&manifest, "p", &[]));
    for d in [&a, &b, &c] {
        let id = d.id.to_string();
        let i = &r3[&id];
        assert_eq!(s(i, "kind"), "incremental", "{i}");
        assert_eq!(s(i, "method"), "hash-scan", "{i}");
        assert_eq!(
            s(i, "parent"),
            s(&r2[&id], "image"),
            "disk {id} on its own chain"
        );
        // A scan against another disk's list would find nearly everything changed.
        let touched = tracked_bytes(&changed[&id], d.size());
        assert_eq!(u(i, "data_bytes") + u(i, "zero_bytes"), touched, "{i}");
    }
    for (d, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let p = v.path(&format!("{n}-3.copy"));
        d.save_copy(&p);
        copies.push((d.id, s(&r3[&d.id.to_string()], "image").to_string(), p));
    }
    // The catalog has three chains of three, one per UUID.
    let cat = v.catalog();
    for d in [&a, &b, &c] {
        let imgs = cat.images(Some(d.id)).unwrap();
        assert_eq!(imgs.len(), 3, "disk {}", d.id);
        assert!(imgs.iter().all(|i| i.disk_uuid == d.id));
    }
    drop(cat);
    v.assert_catalog_consistent();
    // `images --disk` shows each disk with one chain: its own full and two incrementals.
    for d in [&a, &b, &c] {
        let id = d.id.to_string();
        let j = v.ok(&["images", "--disk", &id]);
        let disks = j["disks"].as_array().expect("images: one entry per disk");
        assert_eq!(disks.len(), 1, "{j}");
        assert_eq!(s(&disks[0], "disk"), id);
        let chains = disks[0]["chains"].as_array().unwrap();
        assert_eq!(chains.len(), 1, "one chain per disk: {j}");
        let uuids: Vec<&str> = chains[0]["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| s(i, "image"))
            .collect();
        let expected: Vec<&str> = [&r1, &r2, &r3]
            .iter()
            .map(|r| s(&r[&id], "image"))
            .collect();
        assert_eq!(uuids, expected, "{j}");
    }

    for (n, (disk, image, expected)) in copies.iter().enumerate() {
        let out = v.path(&format!("restore-{n}.img"));
        let r = v.restore_image(*disk, image, &out);
        assert_eq!(r.code, 0, "restore {disk} {image}: {}", r.stderr);
        assert_same_bytes(&out, expected, &format!("disk {disk} image {image}"));
    }
}

#[test]
fn change_id_mismatch_falls_back_to_a_hash_scan_on_the_newest_good_image() {
    let v = Vault::small(3, "64M");
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("d.img"), 4 * MIB, 3 * MIB, 11);
    let cbt = v.path("cbt.json");
    let cbt_s = cbt.to_str().unwrap().to_string();
    let with_cbt = ["--changed-extents", cbt_s.as_str()];
    write_changed_extents(&cbt, "*", "c1", &[(0, d.size())]);
    let full = v.backup(&d, "p", &with_cbt);
    assert_eq!(s(&full, "kind"), "full");
    let mut points = vec![(s(&full, "image").to_string(), v.path("0.copy"))];
    d.save_copy(&points[0].1);

    // A matching change id: a changed-extents incremental that reads exactly the listed
    // areas (widened to tracking blocks).
    let areas = vec![(100 * KIB, 8 * KIB), (2 * MIB + 5, 70 * KIB)];
    for &(o, l) in &areas {
        d.write_random(o, l);
    }
    write_changed_extents(&cbt, "c1", "c2", &areas);
    let inc1 = v.backup(&d, "p", &with_cbt);
    assert_eq!(s(&inc1, "kind"), "incremental");
    assert_eq!(s(&inc1, "method"), "changed-extents");
    assert_eq!(s(&inc1, "parent"), s(&full, "image"));
    assert!(inc1["reason"].is_null(), "{inc1}");
    assert_eq!(u(&inc1, "data_bytes"), tracked_bytes(&areas, d.size()));
    points.push((s(&inc1, "image").to_string(), v.path("1.copy")));
    d.save_copy(&points[1].1);

    // A stale file (from a change id no image recorded) that also misses some changes:
    // said out loud, hash scan relative to the newest good image, every change caught.
    let real = vec![(300 * KIB, 4 * KIB), (MIB, 128 * KIB), (3 * MIB + 7, 9000)];
    for &(o, l) in &real {
        d.write_random(o, l);
    }
    write_changed_extents(&cbt, "c-stale", "c3", &real[..1]);
    let inc2 = v.backup(&d, "p", &with_cbt);
    assert_eq!(s(&inc2, "kind"), "incremental", "{inc2}");
    assert_eq!(s(&inc2, "method"), "hash-scan", "{inc2}");
    assert_eq!(s(&inc2, "parent"), s(&inc1, "image"));
    let reason = s(&inc2, "reason");
    assert!(
        reason.contains("c-stale") && reason.contains("c2") && reason.contains("hash scan"),
        "the mismatch must be explained with both change ids: {reason}"
    );
    assert_eq!(
        u(&inc2, "data_bytes") + u(&inc2, "zero_bytes"),
        tracked_bytes(&real, d.size()),
        "the hash scan must find every changed block, not only the listed one"
    );
    points.push((s(&inc2, "image").to_string(), v.path("2.copy")));
    d.save_copy(&points[2].1);

    // A file relative to an OLDER image's change id (c1, the full): not the newest good
    // image's, so no incremental on that base.
    let areas = vec![(64 * KIB, 64 * KIB)];
    d.write_random(64 * KIB, 64 * KIB);
    write_changed_extents(&cbt, "c1", "c4", &areas);
    let inc3 = v.backup(&d, "p", &with_cbt);
    assert_eq!(s(&inc3, "method"), "hash-scan", "{inc3}");
    assert_eq!(s(&inc3, "parent"), s(&inc2, "image"));
    assert!(s(&inc3, "reason").contains("c1"), "{inc3}");
    points.push((s(&inc3, "image").to_string(), v.path("3.copy")));
    d.save_copy(&points[3].1);

    // A fallback records no change id (the file was not used, so its id is not
    // trusted either): the next file, even one continuing the fallback file's id, is
    // not trusted on its word, and the scan is said out loud.
    assert_eq!(v.image_row(s(&inc3, "image")).change_id, None);
    assert_eq!(v.image_row(s(&inc2, "image")).change_id, None);
    let areas = vec![(3 * MIB, 64 * KIB)];
    d.write_random(3 * MIB, 64 * KIB);
    write_changed_extents(&cbt, "c4", "c5", &areas);
    let inc4 = v.backup(&d, "p", &with_cbt);
    assert_eq!(s(&inc4, "method"), "hash-scan", "{inc4}");
    assert_eq!(s(&inc4, "parent"), s(&inc3, "image"));
    assert!(
        s(&inc4, "reason").contains("recorded no change id")
            && s(&inc4, "reason").contains("--full"),
        "{inc4}"
    );
    points.push((s(&inc4, "image").to_string(), v.path("4.copy")));
    d.save_copy(&points[4].1);

    // A full with a changed-extents file starts a new epoch; the next file continues it.
    write_changed_extents(&cbt, "*", "c6", &[(0, d.size())]);
    let full2 = v.backup(&d, "p", &["--changed-extents", cbt_s.as_str(), "--full"]);
    assert_eq!(s(&full2, "kind"), "full");
    assert_eq!(
        v.image_row(s(&full2, "image")).change_id.as_deref(),
        Some("c6")
    );
    points.push((s(&full2, "image").to_string(), v.path("5.copy")));
    d.save_copy(&points[5].1);
    d.write_random(MIB, 64 * KIB);
    write_changed_extents(&cbt, "c6", "c7", &[(MIB, 64 * KIB)]);
    let inc5 = v.backup(&d, "p", &with_cbt);
    assert_eq!(s(&inc5, "method"), "changed-extents", "{inc5}");
    assert_eq!(s(&inc5, "parent"), s(&full2, "image"));
    assert_eq!(u(&inc5, "data_bytes"), 64 * KIB);
    points.push((s(&inc5, "image").to_string(), v.path("6.copy")));
    d.save_copy(&points[6].1);
    let row = v.image_row(s(&inc5, "image"));
    assert_eq!(row.change_id.as_deref(), Some("c7"));
    assert_eq!(row.from_change_id.as_deref(), Some("c6"));
    v.assert_catalog_consistent();

    for (n, (image, expected)) in points.iter().enumerate() {
        let out = v.path(&format!("r{n}.img"));
        let r = v.restore_image(d.id, image, &out);
        assert_eq!(r.code, 0, "restore of point {n}: {}", r.stderr);
        assert_same_bytes(&out, expected, &format!("point {n}"));
    }
}

#[test]
fn a_mostly_sparse_disk_stores_almost_nothing() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    // 16 MiB: 64 KiB of data, 2 MiB of explicitly written zeros (not holes), holes.
    let mut d = TestDisk::create(v.path("sparse.img"), 16 * MIB, 0, 5);
    d.write_random(5 * MIB, 64 * KIB);
    d.write_zeros(8 * MIB, 2 * MIB);
    let img = v.backup(&d, "p", &[]);
    assert_eq!(u(&img, "data_bytes"), 64 * KIB, "{img}");
    assert_eq!(u(&img, "zero_bytes"), 16 * MIB - 64 * KIB, "{img}");
    assert_eq!(
        u(&img, "stored_bytes"),
        64 * KIB,
        "only the data is stored: {img}"
    );
    // On the cartridge: the label, one image, the catalog snapshot; far below the disk.
    let media = v.ok(&["media", "list"]);
    let written: u64 = media["cartridges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["bytes_written"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        written < 512 * KIB,
        "a 16 MiB disk with 64 KiB of data took {written} bytes of tape"
    );

    // An all-zero disk: an image of zero extents only.
    let z = TestDisk::create(v.path("zero.img"), 8 * MIB, 0, 6);
    let zi = v.backup(&z, "p", &[]);
    assert_eq!(u(&zi, "data_bytes"), 0);
    assert_eq!(u(&zi, "stored_bytes"), 0);
    assert_eq!(u(&zi, "zero_bytes"), 8 * MIB);

    let out = v.path("sparse.restored");
    let r = v.restore_image(d.id, s(&img, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &d.path, "sparse disk");
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        allocated < 2 * MIB,
        "zero extents must stay holes in the restored file: {allocated} bytes allocated"
    );
    let out = v.path("zero.restored");
    let r = v.restore_image(z.id, s(&zi, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &z.path, "all-zero disk");
}

#[test]
fn copy_is_never_a_base_and_full_resets_the_chain() {
    let v = Vault::small(3, "64M");
    v.pool("p", "zstd:1");
    let mut d = TestDisk::create(v.path("d.img"), 3 * MIB, 2 * MIB, 21);

    // A copy as the very first image: the next backup still has no base.
    let c0 = v.backup(&d, "p", &["--copy"]);
    assert_eq!(s(&c0, "kind"), "copy");
    assert!(c0["parent"].is_null());
    let f1 = v.backup(&d, "p", &[]);
    assert_eq!(s(&f1, "kind"), "full", "a copy must not be a base: {f1}");
    assert!(f1["reason"].is_string(), "{f1}");

    d.random_writes(2, 32 * KIB);
    let i1 = v.backup(&d, "p", &[]);
    assert_eq!(s(&i1, "kind"), "incremental");
    assert_eq!(s(&i1, "parent"), s(&f1, "image"));
    let p1 = v.path("p1.copy");
    d.save_copy(&p1);

    // A copy in the middle of a chain: the next incremental builds on i1, not on it.
    d.random_writes(2, 32 * KIB);
    let c1 = v.backup(&d, "p", &["--copy"]);
    assert_eq!(s(&c1, "kind"), "copy");
    assert!(c1["parent"].is_null());
    assert_eq!(u(&c1, "data_bytes") + u(&c1, "zero_bytes"), d.size());
    let pc = v.path("pc.copy");
    d.save_copy(&pc);
    let i2 = v.backup(&d, "p", &[]);
    assert_eq!(s(&i2, "kind"), "incremental");
    assert_eq!(s(&i2, "parent"), s(&i1, "image"), "never on the copy");
    // Relative to i1 the disk changed; relative to the copy it did not. The hash scan
    // must see the changes.
    assert!(u(&i2, "data_bytes") > 0, "{i2}");

    // --full: a new base, even though a good one exists.
    d.random_writes(1, 16 * KIB);
    let f2 = v.backup(&d, "p", &["--full"]);
    assert_eq!(s(&f2, "kind"), "full");
    assert!(f2["parent"].is_null());
    assert_eq!(u(&f2, "data_bytes") + u(&f2, "zero_bytes"), d.size());
    d.random_writes(1, 16 * KIB);
    let i3 = v.backup(&d, "p", &[]);
    assert_eq!(
        s(&i3, "parent"),
        s(&f2, "image"),
        "the chain restarts at the new full"
    );
    let p3 = v.path("p3.copy");
    d.save_copy(&p3);

    for (img, expected, what) in [
        (&i1, &p1, "i1 (old chain)"),
        (&c1, &pc, "copy"),
        (&i3, &p3, "i3"),
    ] {
        let out = v.path("out.img");
        let _ = std::fs::remove_file(&out);
        let r = v.restore_image(d.id, s(img, "image"), &out);
        assert_eq!(r.code, 0, "{what}: {}", r.stderr);
        assert_same_bytes(&out, expected, what);
    }
}
