//! Synthetic fulls end to end through the binary: `backup --synthetic-full` builds a
//! full image of a disk at its newest restorable point from the chain on tape (the
//! disk is not read), checked against the point before it counts; it is the base of
//! the next incremental (the change-tracking epoch carries over); it restores alone
//! once the old chain is gone; rebuilds from the media know it; a pool policy makes
//! one on its own; and a failed one is never a base.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const PASS: &str = "correct horse battery staple 2026";

/// `backup --synthetic-full --disk-id ID --pool POOL`, returning the whole report.
fn synthetic(v: &Vault, disk: &TestDisk, pool: &str, env: &[(&str, &str)]) -> Run {
    let id = disk.id.to_string();
    v.run_within(
        &[
            "backup",
            "--synthetic-full",
            "--disk-id",
            &id,
            "--pool",
            pool,
        ],
        env,
        HANG_LIMIT,
    )
    .unwrap()
}

/// The one image the synthetic full of one disk wrote.
fn synthetic_image(r: &Run) -> Value {
    assert_eq!(
        r.code, 0,
        "synthetic full failed:\n{}\n{}",
        r.stdout, r.stderr
    );
    let d = &r.json["disks"][0];
    let imgs = d["session"]["images"].as_array().expect("a session");
    assert_eq!(imgs.len(), 1, "{}", r.stdout);
    imgs[0].clone()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// After a synthetic full of `disk` was killed: it is recorded, not complete, and the
/// disk's newest good image (the next base) is still `point`.
fn killed_synthetic_is_no_base(cat: &tapevault::catalog::Catalog, disk: uuid::Uuid, point: &str) {
    let killed = cat
        .images(Some(disk))
        .unwrap()
        .into_iter()
        .find(|i| i.synthetic_of.is_some())
        .expect("the killed synthetic full is recorded");
    assert_ne!(killed.status.as_str(), "complete");
    let newest = cat.newest_good_image(disk).unwrap().expect("a good image");
    assert_eq!(newest.uuid.to_string(), point);
}

/// `images --disk ID` entries, flattened over chains.
fn image_entries(v: &Vault, disk: &TestDisk) -> Vec<Value> {
    let id = disk.id.to_string();
    let j = v.ok(&["images", "--disk", &id]);
    let mut out = Vec::new();
    for d in j["disks"].as_array().unwrap() {
        for c in d["chains"].as_array().unwrap() {
            out.extend(c["images"].as_array().unwrap().iter().cloned());
        }
    }
    out
}

/// A full with a changed-extents epoch, then `n` incrementals from changed-extents
/// files (change ids c0 .. cn); returns the image reports, the full first.
fn chain(v: &Vault, d: &mut TestDisk, pool: &str, n: usize, env: &[(&str, &str)]) -> Vec<Value> {
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let backup = |extra: &[&str]| -> Value {
        let mut a = vec!["backup", "--disk", &path, "--disk-id", &id, "--pool", pool];
        a.extend_from_slice(extra);
        let r = v.run_within(&a, env, HANG_LIMIT).unwrap();
        assert_eq!(r.code, 0, "backup failed:\n{}\n{}", r.stdout, r.stderr);
        r.json["images"][0].clone()
    };
    let cbt = v.path("cbt.json");
    let cbt_s = cbt.to_string_lossy().into_owned();
    write_changed_extents(&cbt, "start", "c0", &[(0, d.size())]);
    let mut out = vec![backup(&["--full", "--changed-extents", &cbt_s])];
    for i in 1..=n {
        let mut areas = d.random_writes(2, 40 * KIB);
        if i % 5 == 0 {
            areas.push(d.random_zero(70 * KIB));
        }
        write_changed_extents(&cbt, &format!("c{}", i - 1), &format!("c{i}"), &areas);
        let img = backup(&["--changed-extents", &cbt_s]);
        assert_eq!(s(&img, "kind"), "incremental");
        assert_eq!(s(&img, "method"), "changed-extents");
        out.push(img);
    }
    out
}

#[test]
fn synthetic_full_of_full_and_20_incrementals_is_that_point_and_the_next_base() {
    let v = Vault::small(6, "64M");
    v.pool("p", "zstd:3");
    v.pool("s", "off");
    let mut d = TestDisk::create(v.path("d.img"), 6 * MIB + 12 * KIB, 4 * MIB, 7);
    let imgs = chain(&v, &mut d, "p", 20, &[]);
    let point = s(imgs.last().unwrap(), "image").to_string();
    let at_point = v.path("point.copy");
    d.save_copy(&at_point);
    let before = v.image_row(&point);

    // The VM's disk changes now: a synthetic full must not read it.
    d.write_random(0, 64 * KIB);

    let r = synthetic(&v, &d, "s", &[]);
    let img = synthetic_image(&r);
    let disk_rep = &r.json["disks"][0];
    assert_eq!(s(&img, "kind"), "full");
    assert_eq!(s(&img, "method"), "synthetic");
    assert_eq!(s(&img, "synthetic_of"), point);
    assert_eq!(s(disk_rep, "point"), point);
    assert_eq!(disk_rep["chain"].as_array().unwrap().len(), 21);
    // The chain's cartridge was mounted once for all 21 images.
    assert_eq!(strs(&disk_rep["read_cartridges"]).len(), 1, "{disk_rep}");
    let synth = s(&img, "image").to_string();
    assert!(
        r.stderr.contains("building a synthetic full"),
        "{}",
        r.stderr
    );

    // The catalog: a full, synthetic of the point, with the point's time and change id.
    let row = v.image_row(&synth);
    assert_eq!(row.synthetic_of.map(|u| u.to_string()), Some(point.clone()));
    assert_eq!(row.kind.as_str(), "full");
    assert_eq!(row.change_id.as_deref(), Some("c20"));
    assert_eq!(row.started, before.started);
    assert_eq!(row.pool.as_deref(), Some("s"));
    // `images` shows it, as a JSON field.
    let entries = image_entries(&v, &d);
    let e = entries
        .iter()
        .find(|e| s(e, "image") == synth)
        .expect("listed");
    assert_eq!(s(e, "synthetic_of"), point);
    assert!(entries
        .iter()
        .filter(|e| s(e, "image") != synth)
        .all(|e| e["synthetic_of"].is_null()));

    // It restores alone (one image read), bit-identical to the point.
    let out = v.path("synth.restored");
    let rr = v.restore_image(d.id, &synth, &out);
    assert_eq!(rr.code, 0, "{}", rr.stderr);
    assert_eq!(rr.json["images"].as_array().unwrap().len(), 1);
    assert_same_bytes(&out, &at_point, "synthetic full vs the point");
    // The latest restore point is the synthetic full (same time, shorter chain).
    let latest = v.run(&[
        "restore",
        "--disk",
        &d.id.to_string(),
        "--to",
        v.path("latest").to_str().unwrap(),
    ]);
    assert_eq!(latest.code, 0, "{}", latest.stderr);
    assert_eq!(s(&latest.json, "image"), synth);

    // The next incremental builds on it: the change id carries over.
    let mut areas = d.random_writes(3, 30 * KIB);
    areas.push((0, 64 * KIB)); // written after the point, above
    let cbt = v.path("cbt.json");
    write_changed_extents(&cbt, "c20", "c21", &areas);
    let next = v.backup(&d, "p", &["--changed-extents", cbt.to_str().unwrap()]);
    assert_eq!(s(&next, "kind"), "incremental");
    assert_eq!(s(&next, "method"), "changed-extents");
    assert_eq!(s(&next, "parent"), synth);
    let at_next = v.path("next.copy");
    d.save_copy(&at_next);
    let out2 = v.path("next.restored");
    let rr = v.restore_image(d.id, s(&next, "image"), &out2);
    assert_eq!(rr.code, 0, "{}", rr.stderr);
    assert_eq!(
        rr.json["images"].as_array().unwrap().len(),
        2,
        "synthetic full + 1"
    );
    assert_same_bytes(&out2, &at_next, "incremental on the synthetic full");
    // A hash-scan incremental on top too.
    d.random_writes(2, 20 * KIB);
    let hs = v.backup(&d, "p", &[]);
    assert_eq!(s(&hs, "method"), "hash-scan");
    let at_hs = v.path("hs.copy");
    d.save_copy(&at_hs);
    let out3 = v.path("hs.restored");
    assert_eq!(v.restore_image(d.id, s(&hs, "image"), &out3).code, 0);
    assert_same_bytes(&out3, &at_hs, "hash scan on the synthetic full's chain");

    // The old chain's cartridges leave the library: the synthetic full's chain does not
    // need them; the old point does (exit 4).
    let p_media: Vec<String> = v
        .catalog()
        .list_media(Some("p"))
        .unwrap()
        .into_iter()
        .map(|m| m.barcode)
        .collect();
    let mut args = vec!["media", "export", "--force"];
    args.extend(p_media.iter().map(|s| s.as_str()));
    v.ok(&args);
    let mut args = vec!["media", "vault", "--location", "offsite"];
    args.extend(p_media.iter().map(|s| s.as_str()));
    v.ok(&args);
    let out4 = v.path("synth.alone");
    let rr = v.restore_image(d.id, &synth, &out4);
    assert_eq!(rr.code, 0, "{}", rr.stderr);
    assert_same_bytes(
        &out4,
        &at_point,
        "synthetic full with the old chain exported",
    );
    let rr = v.restore_image(d.id, &point, &v.path("old.point"));
    assert_eq!(
        rr.code, 4,
        "the old chain is out of the library: {}",
        rr.stderr
    );
    v.assert_catalog_consistent();
}

#[test]
fn encrypted_spanning_synthetic_full_restores_and_rebuilds_from_the_media() {
    // 4 MiB cartridges (early warning 512 KiB before the end): the full spans on the
    // read side, the synthetic full on the write side.
    let v = Vault::init(&[
        "--slots",
        "8",
        "--drives",
        "1",
        "--capacity",
        "4M",
        "--early-warning",
        "512K",
    ]);
    let env = [
        ("TAPEVAULT_PASSPHRASE", PASS),
        ("TAPEVAULT_NEW_PASSPHRASE", PASS),
    ];
    let r = v
        .run_within(&["key", "create", "k1"], &env, HANG_LIMIT)
        .unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = v
        .run_within(
            &[
                "pool",
                "create",
                "enc",
                "--compression",
                "off",
                "--encrypt-key",
                "k1",
            ],
            &env,
            HANG_LIMIT,
        )
        .unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut d = TestDisk::create(v.path("d.img"), 5 * MIB, 5 * MIB, 11);
    let imgs = chain(&v, &mut d, "enc", 3, &env);
    assert!(
        imgs[0]["barcodes"].as_array().unwrap().len() >= 2,
        "the full spans: {}",
        imgs[0]
    );
    let at_point = v.path("point.copy");
    d.save_copy(&at_point);
    let point = s(imgs.last().unwrap(), "image").to_string();

    // Without the key: refused, exit 5, nothing recorded.
    let n_before = v.catalog().images(Some(d.id)).unwrap().len();
    let r = synthetic(&v, &d, "enc", &[]);
    assert_eq!(r.code, 5, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(v.catalog().images(Some(d.id)).unwrap().len(), n_before);

    let r = synthetic(&v, &d, "enc", &env);
    let img = synthetic_image(&r);
    // The chain spans cartridges: each was mounted once, in media order.
    let mounts = strs(&r.json["disks"][0]["read_cartridges"]);
    assert!(mounts.len() >= 2, "{mounts:?}");
    let uniq: std::collections::BTreeSet<&String> = mounts.iter().collect();
    assert_eq!(
        uniq.len(),
        mounts.len(),
        "a cartridge mounted twice: {mounts:?}"
    );
    let synth = s(&img, "image").to_string();
    assert!(
        img["barcodes"].as_array().unwrap().len() >= 2,
        "the synthetic full spans: {img}"
    );
    // Written under the pool's key, with fresh nonces: every record of it is sealed.
    let row = v.image_row(&synth);
    assert!(row.key_fingerprint.is_some());
    let out = v.path("synth.restored");
    let rr = v
        .run_within(
            &[
                "restore",
                "--disk",
                &d.id.to_string(),
                "--image",
                &synth,
                "--to",
                out.to_str().unwrap(),
            ],
            &env,
            HANG_LIMIT,
        )
        .unwrap();
    assert_eq!(rr.code, 0, "{}", rr.stderr);
    assert_same_bytes(&out, &at_point, "encrypted spanning synthetic full");

    // A catalog rebuilt from the cartridges alone (full scan of every tape file, and the
    // snapshot fast path) knows it is synthetic and which point it holds.
    let key_file = v.path("k1.key");
    let r = v
        .run_within(
            &["key", "export", "k1", "--out", key_file.to_str().unwrap()],
            &env,
            HANG_LIMIT,
        )
        .unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The reader written from FORMAT.md alone (1.1) sees the synthetic full and reads it.
    spec_reader_reads(&v, &key_file, &synth, &point, &at_point);
    for (name, args) in [
        ("scan", vec!["catalog", "rebuild", "--scan"]),
        ("fast", vec!["catalog", "rebuild"]),
    ] {
        let home = v.path(name);
        let lib = v.library_dir();
        let run = |a: &[&str]| {
            let mut c = std::process::Command::new(BIN);
            c.arg("--home").arg(&home).arg("--json").args(a);
            c.env_remove("TAPEVAULT_HOME").env_remove("TAPEVAULT_NOW");
            c.env("TAPEVAULT_PASSPHRASE", PASS);
            c.stdin(std::process::Stdio::null());
            run_with_limit(c, HANG_LIMIT).unwrap()
        };
        let r = run(&["init", "--library", lib.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = run(&["key", "import", key_file.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = run(&args);
        assert_eq!(r.code, 0, "{name}: {}\n{}", r.stdout, r.stderr);
        let cat = tapevault::catalog::Catalog::open(&home).unwrap();
        let got = cat.image(synth.parse().unwrap()).unwrap().expect("rebuilt");
        assert_eq!(
            got.synthetic_of.map(|u| u.to_string()),
            Some(point.clone()),
            "{name}"
        );
        assert_eq!(got.status.as_str(), "complete", "{name}");
        // And it is the base the next incremental would take.
        let base = cat.newest_good_image(d.id).unwrap().unwrap();
        assert_eq!(base.uuid.to_string(), synth, "{name}");
    }
}

#[test]
fn refusals_and_a_digest_mismatch_leave_the_chain_alone_and_are_never_a_base() {
    let v = Vault::small(4, "64M");
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("d.img"), 2 * MIB, 2 * MIB, 3);

    // Nothing backed up yet: a usage error.
    let r = synthetic(&v, &d, "p", &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    let full = v.backup(&d, "p", &[]);
    // The newest point is a full: nothing to do, said so.
    let r = synthetic(&v, &d, "p", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        s(&r.json["disks"][0], "skipped").contains("is a full already"),
        "{}",
        r.stdout
    );
    assert_eq!(v.catalog().images(Some(d.id)).unwrap().len(), 1);

    d.random_writes(3, 50 * KIB);
    let inc = v.backup(&d, "p", &[]);
    let point = s(&inc, "image").to_string();

    // The point's block digest list is not what its disk was (here: the full's list put
    // in its place, a valid list of another point): the synthetic full is written, found
    // different before its trailer, aborted, failed in the catalog (exit 3), not a base.
    let cat = v.catalog();
    let point_row = cat.image(point.parse().unwrap()).unwrap().unwrap();
    let full_row = v.image_row(s(&full, "image"));
    let point_list = cat.digest_list_file(&point_row).unwrap();
    let full_list = cat.digest_list_file(&full_row).unwrap();
    drop(cat);
    let saved = v.path("point.digests");
    std::fs::copy(&point_list, &saved).unwrap();
    std::fs::copy(&full_list, &point_list).unwrap();
    let r = synthetic(&v, &d, "p", &[]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("differs from image"), "{}", r.stderr);
    let imgs = v.catalog().images(Some(d.id)).unwrap();
    assert_eq!(imgs.len(), 3);
    let failed = imgs.iter().find(|i| i.synthetic_of.is_some()).unwrap();
    assert_eq!(failed.status.as_str(), "failed");
    assert_eq!(
        v.catalog()
            .newest_good_image(d.id)
            .unwrap()
            .unwrap()
            .uuid
            .to_string(),
        point
    );
    v.assert_catalog_consistent();
    // On tape it was closed as aborted: a catalog rebuilt from the media never takes it
    // for a base either.
    let home2 = v.path("rebuilt");
    let lib = v.library_dir();
    let mut c = std::process::Command::new(BIN);
    c.arg("--home")
        .arg(&home2)
        .args(["init", "--library", lib.to_str().unwrap()]);
    assert!(c.status().unwrap().success());
    let mut c = std::process::Command::new(BIN);
    c.arg("--home")
        .arg(&home2)
        .args(["catalog", "rebuild", "--scan"]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c.status().unwrap();
    let cat2 = tapevault::catalog::Catalog::open(&home2).unwrap();
    let f2 = cat2.image(failed.uuid).unwrap().expect("scanned");
    assert_ne!(f2.status.as_str(), "complete");
    // (Images written within one second have the same time on tape, so which of the
    // full and the incremental is "newest" after a scan is not the point here.)
    assert_ne!(
        cat2.newest_good_image(d.id).unwrap().unwrap().uuid,
        failed.uuid
    );
    drop(cat2);
    std::fs::copy(&saved, &point_list).unwrap();

    // The point's digest list damaged: refused before anything is written, with why.
    // (A missing one is derived from the chain as read: tests/synthetic_rebuild.rs.)
    std::fs::write(&point_list, b"not a digest list").unwrap();
    let n = v.catalog().images(Some(d.id)).unwrap().len();
    let r = synthetic(&v, &d, "p", &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("block digest list"), "{}", r.stderr);
    assert_eq!(v.catalog().images(Some(d.id)).unwrap().len(), n);
    std::fs::copy(&saved, &point_list).unwrap();

    // A media error while reading the chain: the job fails (exit 3), nothing is
    // written, and the chain is left exactly as it was (the error may be passing).
    let full_bc = full["barcodes"][0].as_str().unwrap().to_string();
    let seg = v.catalog().segments(full_row.uuid).unwrap()[0].clone();
    let statuses = |v: &Vault| -> Vec<(String, String)> {
        v.catalog()
            .images(Some(d.id))
            .unwrap()
            .iter()
            .map(|i| (i.uuid.to_string(), i.status.as_str().to_string()))
            .collect()
    };
    let before = statuses(&v);
    std::fs::write(
        v.cartridge_dir(&full_bc).join("faults.json"),
        serde_json::json!({"media_error_blocks": [seg.first_block + 1]}).to_string(),
    )
    .unwrap();
    let r = synthetic(&v, &d, "p", &[]);
    let _ = std::fs::remove_file(v.cartridge_dir(&full_bc).join("faults.json"));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("the chain is unchanged"), "{}", r.stderr);
    assert_eq!(statuses(&v), before, "the source chain is untouched");

    // The full damaged on tape: the same (exit 3, chain untouched, named for verify).
    v.flip_byte_in_block(&full_bc, seg.first_block + 1);
    let r = synthetic(&v, &d, "p", &[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("tapevault verify --image"),
        "{}",
        r.stderr
    );
    assert_eq!(statuses(&v), before, "the source chain is untouched");
    // Once verify has marked the damage, no point is restorable: refused with the reason.
    let full_id = full_row.uuid.to_string();
    assert_eq!(v.run(&["verify", "--image", &full_id]).code, 3);
    let r = synthetic(&v, &d, "p", &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("can be restored"), "{}", r.stderr);
    assert!(v
        .catalog()
        .images(Some(d.id))
        .unwrap()
        .iter()
        .filter(|i| i.synthetic_of.is_some())
        .all(|i| i.status.as_str() != "complete"));
    v.assert_catalog_consistent();
}

#[test]
fn a_synthetic_full_killed_or_cut_off_leaves_the_chain_and_is_never_a_base() {
    let v = Vault::small(4, "64M");
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("d.img"), 8 * MIB, 8 * MIB, 5);
    let _full = v.backup(&d, "p", &[]);
    d.random_writes(4, 100 * KIB);
    let inc = v.backup(&d, "p", &[]);
    let point = s(&inc, "image").to_string();
    let bc = inc["barcodes"][0].as_str().unwrap().to_string();
    let at_point = v.path("point.copy");
    d.save_copy(&at_point);

    // SIGKILL in the middle of writing the synthetic full.
    v.slow_writes(&bc, 40, 1000);
    let before = v.cartridge_data_len(&bc);
    let id = d.id.to_string();
    let mut child = v.spawn_quiet(&[
        "backup",
        "--synthetic-full",
        "--disk-id",
        &id,
        "--pool",
        "p",
    ]);
    kill_when(
        &mut child,
        "the synthetic full writing",
        Duration::from_secs(60),
        || v.cartridge_data_len(&bc) >= before + 2 * 512 * KIB,
    );
    std::fs::remove_file(v.cartridge_dir(&bc).join("faults.json")).unwrap();
    let cat = v.catalog();
    killed_synthetic_is_no_base(&cat, d.id, &point);
    drop(cat);
    // The chain restores as before.
    let out = v.path("after.kill");
    assert_eq!(v.restore_image(d.id, &point, &out).code, 0);
    assert_same_bytes(&out, &at_point, "the point after a killed synthetic full");

    // A power cut while writing (the drive's media fails under the writer): exit 1,
    // the image failed, the chain untouched.
    std::fs::write(
        v.cartridge_dir(&bc).join("faults.json"),
        serde_json::json!({"power_cut_after_bytes": 600 * 1024}).to_string(),
    )
    .unwrap();
    let r = synthetic(&v, &d, "p", &[]);
    let _ = std::fs::remove_file(v.cartridge_dir(&bc).join("faults.json"));
    assert_ne!(r.code, 0, "{}", r.stderr);
    let cat = v.catalog();
    let synths: Vec<_> = cat
        .images(Some(d.id))
        .unwrap()
        .into_iter()
        .filter(|i| i.synthetic_of.is_some())
        .collect();
    assert_eq!(synths.len(), 2);
    assert!(synths.iter().all(|i| i.status.as_str() != "complete"));
    assert_eq!(
        cat.newest_good_image(d.id)
            .unwrap()
            .unwrap()
            .uuid
            .to_string(),
        point
    );
    drop(cat);

    // The next backup is an incremental on the point, and the catalog is clean again.
    d.random_writes(2, 10 * KIB);
    let next = v.backup(&d, "p", &[]);
    assert_eq!(s(&next, "parent"), point);
    v.assert_catalog_consistent();
    // A synthetic full now succeeds and reproduces the newest point.
    let at_next = v.path("next.copy");
    d.save_copy(&at_next);
    // (No disk named: every disk whose newest restore point is in the pool.)
    let img = synthetic_image(&v.run(&["backup", "--synthetic-full", "--pool", "p"]));
    let out = v.path("synth.restored");
    assert_eq!(v.restore_image(d.id, s(&img, "image"), &out).code, 0);
    assert_same_bytes(&out, &at_next, "synthetic full after the faults");
    v.assert_catalog_consistent();
}

#[test]
fn a_pool_policy_makes_synthetic_fulls_of_plain_backups_when_due() {
    let v = Vault::small(4, "64M");
    v.pool("p", "off");
    std::fs::write(
        v.home.join("pools.toml"),
        "[pools.p]\nallocation = \"continue\"\ncompression = \"off\"\nsynthetic_full = \"incrementals:3\"\n",
    )
    .unwrap();
    let mut d = TestDisk::create(v.path("d.img"), 2 * MIB, 2 * MIB, 9);
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let plain = |v: &Vault| v.ok(&["backup", "--disk", &path, "--disk-id", &id, "--pool", "p"]);
    let first = plain(&v);
    assert!(first["synthetic"].is_null(), "{first}");
    let mut last = Value::Null;
    for i in 1..=3 {
        d.random_writes(2, 20 * KIB);
        last = plain(&v);
        if i < 3 {
            assert!(last["synthetic"].is_null(), "not due after {i}: {last}");
        }
    }
    // The third incremental made it due: the same command built the synthetic full.
    let syn = &last["synthetic"]["disks"][0];
    assert!(s(syn, "due").contains("incrementals:3"), "{last}");
    assert_eq!(s(syn, "point"), s(&last["images"][0], "image"));
    let synth = s(&syn["session"]["images"][0], "image").to_string();
    let at_point = v.path("p.copy");
    d.save_copy(&at_point);
    let out = v.path("s.restored");
    assert_eq!(v.restore_image(d.id, &synth, &out).code, 0);
    assert_same_bytes(&out, &at_point, "policy synthetic full");
    // The next plain backup builds on it and is not due again.
    d.random_writes(2, 20 * KIB);
    let after = plain(&v);
    assert_eq!(s(&after["images"][0], "parent"), synth);
    assert!(after["synthetic"].is_null(), "{after}");
    v.assert_catalog_consistent();
}

#[test]
fn incremental_forever_with_synthetic_fulls_lets_the_old_chain_expire_and_keeps_what_is_needed() {
    use tapevault::media::lifecycle::{evaluate, Verdict};
    let mut v = Vault::small(14, "16M");
    v.ok(&[
        "pool",
        "create",
        "f",
        "--compression",
        "off",
        "--allocation",
        "daily",
        "--retention",
        "2",
    ]);
    std::fs::write(
        v.home.join("pools.toml"),
        "[pools.f]\nallocation = \"daily\"\nretention_days = 2\ncompression = \"off\"\nsynthetic_full = \"days:3\"\n",
    )
    .unwrap();
    let mut d = TestDisk::create(v.path("d.img"), MIB, MIB, 21);
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let mut by_day: Vec<Vec<String>> = Vec::new();
    let mut synthetic_days = Vec::new();
    for day in 0..=8u64 {
        v.now = Some(test_time(day * 24 + 1));
        if day > 0 {
            d.random_writes(2, 16 * KIB);
        }
        let r = v.ok(&["backup", "--disk", &path, "--disk-id", &id, "--pool", "f"]);
        let mut imgs = vec![s(&r["images"][0], "image").to_string()];
        if !r["synthetic"].is_null() {
            synthetic_days.push(day);
            imgs.push(s(&r["synthetic"]["disks"][0]["session"]["images"][0], "image").to_string());
        }
        by_day.push(imgs);
        v.ok(&["rotate", "--apply"]);
    }
    assert_eq!(synthetic_days, vec![3, 6], "days:3 from each full's point");
    let at_end = v.path("end.copy");
    d.save_copy(&at_end);

    // On day 8 the first chain (days 0..2) is expired: nothing kept needs it any more,
    // since the incrementals after day 3 chain to the synthetic full. Every kept restore
    // point's chain is on sets that are not expired.
    let cat = v.catalog();
    let now = chrono::DateTime::parse_from_rfc3339(&test_time(8 * 24 + 2))
        .unwrap()
        .with_timezone(&chrono::Utc);
    let ev = evaluate(&cat, now).unwrap();
    let set_of = |img: &str| -> Option<uuid::Uuid> {
        let row = cat.image(img.parse().unwrap()).unwrap()?;
        let sess = row.session_uuid?;
        cat.sessions()
            .unwrap()
            .into_iter()
            .find(|s| s.uuid == sess)
            .and_then(|s| s.media_set_uuid)
    };
    for (day, imgs) in by_day.iter().enumerate().take(3) {
        if let Some(set) = set_of(&imgs[0]) {
            if let Some(st) = ev.set(set) {
                assert!(st.is_expired(), "day {day}'s set: {:?}", st.verdict);
            }
        }
    }
    for (set, st) in &ev.sets {
        if !matches!(st.verdict, Verdict::Kept { .. }) {
            continue;
        }
        for img in cat.images(Some(d.id)).unwrap() {
            if set_of(&img.uuid.to_string()) != Some(*set) || img.status.as_str() != "complete" {
                continue;
            }
            for link in cat
                .restore_chain(d.id, tapevault::catalog::At::Image(img.uuid))
                .unwrap()
            {
                if let Some(ls) = set_of(&link.uuid.to_string()) {
                    assert!(
                        !ev.set(ls).is_some_and(|x| x.is_expired()),
                        "kept image {} needs {} on an expired set",
                        img.uuid,
                        link.uuid
                    );
                }
            }
        }
    }
    drop(cat);
    // Rotation recycled the old chain's cartridges, and the newest point restores.
    v.now = Some(test_time(8 * 24 + 2));
    v.ok(&["rotate", "--apply"]);
    let day0 = v.catalog().image(by_day[0][0].parse().unwrap()).unwrap();
    assert!(
        day0.is_none_or(|i| i.status.as_str() != "complete"),
        "the day-0 full was recycled with its cartridge"
    );
    let out = v.path("end.restored");
    let rr = v.restore_at(d.id, &test_time(8 * 24 + 2), &out);
    assert_eq!(rr.code, 0, "{}", rr.stderr);
    assert_same_bytes(&out, &at_end, "newest point after the old chain expired");
    // The day-6 synthetic full restores alone though its own point's chain is partly gone.
    let syn6 = &by_day[6][1];
    let out = v.path("syn6.restored");
    assert_eq!(v.restore_image(d.id, syn6, &out).code, 0);
    v.assert_catalog_consistent();
}

/// tests/spec-reader (the Python reader written from FORMAT.md) lists `synth` as a full
/// with `synthetic_of` = `point` and restores it to the point's bytes. Skipped, with the
/// reason, when Python or its modules are missing.
fn spec_reader_reads(
    v: &Vault,
    key_file: &std::path::Path,
    synth: &str,
    point: &str,
    at_point: &std::path::Path,
) {
    use std::process::Command;
    let modules =
        "import blake3, zstandard, argon2.low_level, cryptography.hazmat.primitives.ciphers.aead";
    let Some(py) = ["python3", "/usr/bin/python3"].into_iter().find(|py| {
        Command::new(py)
            .args(["-c", modules])
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("skipping the spec-reader check: no python3 with blake3, zstandard, argon2 and cryptography");
        return;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/spec-reader/read_cartridge.py");
    let pass = v.path("pass.txt");
    std::fs::write(&pass, PASS).unwrap();
    let carts: Vec<std::path::PathBuf> = std::fs::read_dir(v.library_dir().join("cartridges"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p.join("data")).is_ok_and(|m| m.len() > 0))
        .collect();
    let run = |extra: &[&str]| {
        let o = Command::new(py)
            .arg(&script)
            .args(&carts)
            .arg("--key")
            .arg(key_file)
            .arg("--passphrase-file")
            .arg(&pass)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "spec reader {extra:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let listed: Value = serde_json::from_str(&run(&["--list"])).unwrap();
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["image"] == synth)
        .expect("the spec reader lists the synthetic full");
    assert_eq!(row["kind"], "full");
    assert_eq!(row["synthetic_of"], point);
    let out = v.path("spec.restored");
    run(&["--image", synth, "--out", out.to_str().unwrap()]);
    assert_same_bytes(
        &out,
        at_point,
        "the spec reader's restore of the synthetic full",
    );
}

/// Two drives: the incrementals are staged, then the full streams from one drive to the
/// writer on the other, merged in disk order. Full + 20 incrementals (data, rewrites
/// and zeroed ranges, compressed source), the full spanning two cartridges on the read
/// side: the synthetic full restores bit-identical to the point, and incrementals of
/// both kinds build on it.
#[test]
fn two_drive_streaming_synthetic_full_is_that_point_and_the_next_base() {
    let v = Vault::init(&[
        "--slots",
        "12",
        "--drives",
        "2",
        "--capacity",
        "4M",
        "--early-warning",
        "512K",
    ]);
    v.pool("p", "zstd:3");
    v.pool("s", "off");
    let mut d = TestDisk::create(v.path("d.img"), 5 * MIB + 12 * KIB, 5 * MIB, 17);
    // A run of zeros inside the full, partly rewritten later.
    d.write_zeros(MIB, 300 * KIB);
    let imgs = chain(&v, &mut d, "p", 20, &[]);
    assert!(
        imgs[0]["barcodes"].as_array().unwrap().len() >= 2,
        "the full spans: {}",
        imgs[0]
    );
    let point = s(imgs.last().unwrap(), "image").to_string();
    let at_point = v.path("point.copy");
    d.save_copy(&at_point);
    d.write_random(0, 64 * KIB); // the VM's disk moves on; it is not read

    let r = synthetic(&v, &d, "s", &[]);
    let img = synthetic_image(&r);
    let disk_rep = &r.json["disks"][0];
    assert_eq!(s(disk_rep, "mode"), "stream", "{}", r.stderr);
    assert!(r.stderr.contains("streaming full image"), "{}", r.stderr);
    assert_eq!(s(&img, "kind"), "full");
    assert_eq!(s(&img, "synthetic_of"), point);
    assert_eq!(disk_rep["chain"].as_array().unwrap().len(), 21);
    // Each cartridge of the full was read once on the streaming side.
    let mounts = strs(&disk_rep["read_cartridges"]);
    for b in strs(&imgs[0]["barcodes"]) {
        assert!(mounts.contains(&b), "{b} not read: {mounts:?}");
    }
    let synth = s(&img, "image").to_string();
    let row = v.image_row(&synth);
    assert_eq!(row.change_id.as_deref(), Some("c20"));
    assert_eq!(row.status.as_str(), "complete");
    assert!(
        v.catalog()
            .digest_list_file(&row)
            .is_some_and(|p| p.is_file()),
        "the synthetic full has a block digest list, as a backup"
    );

    let out = v.path("synth.restored");
    let rr = v.restore_image(d.id, &synth, &out);
    assert_eq!(rr.code, 0, "{}", rr.stderr);
    assert_eq!(rr.json["images"].as_array().unwrap().len(), 1);
    assert_same_bytes(&out, &at_point, "two-drive synthetic full vs the point");

    // A changed-extents incremental on it (the epoch carried over) ...
    let mut areas = d.random_writes(3, 30 * KIB);
    areas.push((0, 64 * KIB));
    let cbt = v.path("cbt.json");
    write_changed_extents(&cbt, "c20", "c21", &areas);
    let next = v.backup(&d, "p", &["--changed-extents", cbt.to_str().unwrap()]);
    assert_eq!(s(&next, "parent"), synth);
    assert_eq!(s(&next, "method"), "changed-extents");
    let at_next = v.path("next.copy");
    d.save_copy(&at_next);
    let out2 = v.path("next.restored");
    assert_eq!(v.restore_image(d.id, s(&next, "image"), &out2).code, 0);
    assert_same_bytes(
        &out2,
        &at_next,
        "incremental on the two-drive synthetic full",
    );
    // ... and a hash-scan one (against the digest lists).
    d.random_writes(2, 20 * KIB);
    let hs = v.backup(&d, "p", &[]);
    assert_eq!(s(&hs, "method"), "hash-scan");
    let at_hs = v.path("hs.copy");
    d.save_copy(&at_hs);
    let out3 = v.path("hs.restored");
    assert_eq!(v.restore_image(d.id, s(&hs, "image"), &out3).code, 0);
    assert_same_bytes(&out3, &at_hs, "hash scan on the two-drive synthetic full");

    // A synthetic full into the pool that holds the chain's full (the first synthetic
    // full, in pool s): the session could append to that cartridge, so it goes through
    // the scratch file (and says so).
    let at_hs_point = at_hs;
    let r = synthetic(&v, &d, "s", &[]);
    let img = synthetic_image(&r);
    assert_eq!(s(&r.json["disks"][0], "mode"), "scratch", "{}", r.stderr);
    let out4 = v.path("p.synth");
    assert_eq!(v.restore_image(d.id, s(&img, "image"), &out4).code, 0);
    assert_same_bytes(
        &out4,
        &at_hs_point,
        "scratch-path synthetic full with two drives",
    );
    v.assert_catalog_consistent();
}

/// A two-drive synthetic full killed with SIGKILL while it streams: no base, the chain
/// restores as before, `catalog check` finds only the dead writer's rows (as after any
/// killed backup), and the next one succeeds.
#[test]
fn a_killed_two_drive_synthetic_full_is_never_a_base() {
    let v = Vault::init(&["--slots", "8", "--drives", "2", "--capacity", "64M"]);
    v.pool("p", "off");
    v.pool("s", "off");
    let mut d = TestDisk::create(v.path("d.img"), 8 * MIB, 8 * MIB, 23);
    let full = v.backup(&d, "p", &[]);
    d.random_writes(4, 100 * KIB);
    let inc = v.backup(&d, "p", &[]);
    let point = s(&inc, "image").to_string();
    let at_point = v.path("point.copy");
    d.save_copy(&at_point);
    let blanks = v.cartridges_except(&strs(&full["barcodes"]));
    v.slow_writes_on(&blanks, 40, 1000);
    let id = d.id.to_string();
    let mut child = v.spawn_quiet(&[
        "backup",
        "--synthetic-full",
        "--disk-id",
        &id,
        "--pool",
        "s",
    ]);
    kill_when(
        &mut child,
        "the two-drive synthetic full",
        Duration::from_secs(120),
        || v.data_len_of(&blanks) >= 2 * MIB,
    );
    v.clear_faults(&blanks);
    let cat = v.catalog();
    killed_synthetic_is_no_base(&cat, d.id, &point);
    let problems = cat.check().unwrap();
    assert!(
        problems
            .iter()
            .all(|p| p.kind == tapevault::catalog::ProblemKind::StaleRunning),
        "{problems:#?}"
    );
    drop(cat);
    let out = v.path("after.kill");
    assert_eq!(v.restore_image(d.id, &point, &out).code, 0);
    assert_same_bytes(&out, &at_point, "the point after a killed synthetic full");

    // The next backup marks the dead rows and builds on the point; `catalog check` is
    // clean; a two-drive synthetic full now succeeds.
    d.random_writes(2, 10 * KIB);
    let next = v.backup(&d, "p", &[]);
    assert_eq!(s(&next, "parent"), point);
    v.assert_catalog_consistent();
    let at_next = v.path("next.copy");
    d.save_copy(&at_next);
    let r = synthetic(&v, &d, "s", &[]);
    let img = synthetic_image(&r);
    assert_eq!(s(&r.json["disks"][0], "mode"), "stream");
    let out = v.path("synth.restored");
    assert_eq!(v.restore_image(d.id, s(&img, "image"), &out).code, 0);
    assert_same_bytes(&out, &at_next, "two-drive synthetic full after the kill");
    let r = v.run(&["catalog", "check"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    v.assert_catalog_consistent();
}
