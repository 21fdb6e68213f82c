//! A pool's `copy_to` on a one-drive library, through the binary: with `copy_spool`
//! and `copy_spool_size` in pools.toml each session is copied through the spool at its
//! end, and says so; without them the session is backed up and committed, and the
//! copy is refused (exit 2) with the way out; a half-declared spool is refused when
//! pools.toml is loaded, before anything is written.

mod common;

use common::*;

fn pools(v: &Vault, nightly_extra: &str) {
    std::fs::write(
        v.home.join("pools.toml"),
        format!(
            "[pools.nightly]\ncompression = \"off\"\ncopy_to = \"offcopy\"\n{nightly_extra}\n\
             [pools.offcopy]\nallocation = \"per-session\"\ncompression = \"zstd:1\"\n"
        ),
    )
    .unwrap();
}

fn backup(v: &Vault, d: &TestDisk) -> Run {
    let path = d.path.to_str().unwrap().to_string();
    let id = d.id.to_string();
    v.run(&[
        "backup",
        "--disk",
        &path,
        "--disk-id",
        &id,
        "--pool",
        "nightly",
    ])
}

#[test]
fn copy_to_on_one_drive_copies_through_the_pools_spool() {
    let v = Vault::init(&["--slots", "8", "--drives", "1", "--capacity", "64M"]);
    let spool = v.path("spool");
    std::fs::create_dir(&spool).unwrap();
    pools(
        &v,
        &format!(
            "copy_spool = \"{}\"\ncopy_spool_size = \"16M\"\n",
            spool.display()
        ),
    );
    v.ok(&["pool", "apply"]);
    let d = TestDisk::create(v.path("d.img"), 6 * MIB, 4 * MIB, 31);
    let r = backup(&v, &d);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json["copy"]["mode"], "spool", "{}", r.stdout);
    let copied = r.json["copy"]["copied"].as_array().expect("copied");
    assert_eq!(copied.len(), 1, "{}", r.stdout);
    assert_eq!(copied[0]["image"], r.json["images"][0]["image"]);
    assert_eq!(copied[0]["spooled"], true);
    assert!(
        r.stderr.contains("spool directory"),
        "said so: {}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "the spool is emptied"
    );
    d.save_copy(&v.path("p0.img"));

    // The original's cartridge damaged: the point restores from the spooled copy.
    for bc in r.json["images"][0]["barcodes"].as_array().unwrap() {
        v.ok(&["media", "damaged", bc.as_str().unwrap()]);
    }
    let out = v.path("r.img");
    let rr = v.restore_image(d.id, r.json["images"][0]["image"].as_str().unwrap(), &out);
    assert_eq!(rr.code, 0, "{}", rr.stderr);
    assert_same_bytes(&out, &v.path("p0.img"), "restore from the copy_to copy");
    v.assert_catalog_consistent();
}

#[test]
fn copy_to_on_one_drive_without_a_spool_keeps_the_backup_and_refuses_the_copy() {
    let v = Vault::init(&["--slots", "8", "--drives", "1", "--capacity", "64M"]);
    pools(&v, "");
    v.ok(&["pool", "apply"]);
    let d = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 32);
    let r = backup(&v, &d);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("copy will not be made"),
        "said before the backup: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("copy_spool") && r.stderr.contains("--spool"),
        "the way out: {}",
        r.stderr
    );
    // The session stands: its image is complete and restorable; no copy was made.
    let img = r.json["images"][0]["image"]
        .as_str()
        .expect("the backup is reported")
        .to_string();
    assert!(r.json["copy"].is_null(), "{}", r.stdout);
    let row = v.image_row(&img);
    assert_eq!(row.status.as_str(), "complete");
    assert!(v.catalog().copies_of(row.uuid).unwrap().is_empty());
    let out = v.path("r.img");
    let rr = v.restore_image(d.id, &img, &out);
    assert_eq!(rr.code, 0, "{}", rr.stderr);
    assert_same_bytes(&out, &d.path, "the backup whose copy was refused");
    v.assert_catalog_consistent();
}

#[test]
fn a_half_declared_copy_spool_is_refused_before_anything_is_written() {
    let v = Vault::init(&["--slots", "8", "--drives", "1", "--capacity", "64M"]);
    pools(&v, "");
    v.ok(&["pool", "apply"]);
    let spool = v.path("spool");
    std::fs::create_dir(&spool).unwrap();
    let d = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 33);
    for (extra, says) in [
        (
            format!("copy_spool = \"{}\"\n", spool.display()),
            "go together",
        ),
        (
            format!(
                "copy_spool = \"{}\"\ncopy_spool_size = \"lots\"\n",
                spool.display()
            ),
            "\"lots\"",
        ),
    ] {
        pools(&v, &extra);
        let r = backup(&v, &d);
        assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(says), "{}", r.stderr);
        assert!(r.stderr.contains("pools.toml"), "{}", r.stderr);
        assert!(v.catalog().images(Some(d.id)).unwrap().is_empty());
    }
}
