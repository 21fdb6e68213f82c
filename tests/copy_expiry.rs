//! Copies under rotation, through the binary: a restore point is kept while any image
//! of it (the original or a copy) is on a set within its pool's retention. When the
//! original's set expires and is recycled while a copy is kept, the point stays
//! restorable from the copy and the original's row says which copy now holds it; when
//! the copy's set expires too, the point is forgotten. `catalog check` stays clean
//! throughout, and reports a copy whose original is not in the catalog.

mod common;

use common::*;
use serde_json::Value;

fn pools(v: &Vault) {
    std::fs::write(
        v.home.join("pools.toml"),
        "[pools.daily]\nallocation = \"per-session\"\nretention_days = 2\ncompression = \"off\"\n\n\
         [pools.vault]\nallocation = \"per-session\"\nretention_days = 30\ncompression = \"zstd:1\"\n",
    )
    .unwrap();
    v.ok(&["pool", "apply"]);
}

fn image_status(v: &Vault, image: &str) -> Option<tapevault::catalog::ImageRow> {
    v.catalog().image(image.parse().unwrap()).unwrap()
}

fn check_clean(v: &Vault) -> Value {
    let r = v.run(&["catalog", "check"]);
    assert_eq!(r.code, 0, "catalog check: {}\n{}", r.stdout, r.stderr);
    r.json
}

#[test]
fn a_point_outlives_its_original_in_its_copy_and_goes_with_the_copy() {
    let mut v = Vault::init(&["--slots", "12", "--drives", "2", "--capacity", "64M"]);
    pools(&v);
    let mut d = TestDisk::create(v.path("d.img"), 4 * MIB, 3 * MIB, 11);
    let id = d.id.to_string();

    // Day 0: a full, copied to the vault pool. Day 1: an incremental, copied too.
    v.now = Some(test_time(0));
    let full = v.backup(&d, "daily", &["--full"]);
    d.save_copy(&v.path("p0.img"));
    let f_id = s(&full, "image").to_string();
    let c = v.ok(&["copy", "--image", &f_id, "--to-pool", "vault"]);
    let f_copy = c["copied"][0]["copy"]
        .as_str()
        .expect("copy uuid")
        .to_string();
    v.now = Some(test_time(24));
    d.random_writes(4, 200 * KIB);
    let inc = v.backup(&d, "daily", &[]);
    assert_eq!(s(&inc, "kind"), "incremental");
    d.save_copy(&v.path("p1.img"));
    let i_id = s(&inc, "image").to_string();
    let c = v.ok(&["copy", "--image", &i_id, "--to-pool", "vault"]);
    let i_copy = c["copied"][0]["copy"]
        .as_str()
        .expect("copy uuid")
        .to_string();
    let orig_carts: Vec<String> = [&full, &inc]
        .iter()
        .flat_map(|r| r["barcodes"].as_array().unwrap().iter())
        .map(|b| b.as_str().unwrap().to_string())
        .collect();

    // Day 3: a new full makes the newest point (it alone is held past retention).
    v.now = Some(test_time(72));
    d.random_writes(2, 100 * KIB);
    let full2 = v.backup(&d, "daily", &["--full"]);
    d.save_copy(&v.path("p2.img"));

    // Day 5: the daily sets of the first full and the incremental are past their
    // retention; the vault's copies are not, so nothing holds the originals' sets.
    v.now = Some(test_time(120));
    let plan = v.ok(&["rotate", "--dry-run"]);
    let expiring: Vec<String> = plan["plan"]["expire"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["barcodes"].as_array().cloned().unwrap_or_default())
        .map(|b| b.as_str().unwrap_or_default().to_string())
        .collect();
    for bc in &orig_carts {
        assert!(expiring.contains(bc), "{bc} expires: {plan}");
    }
    v.ok(&["rotate", "--apply"]);

    // The originals' rows stay, each saying which copy holds its point now.
    for (orig, copy) in [(&f_id, &f_copy), (&i_id, &i_copy)] {
        let row = image_status(&v, orig).expect("the original's row stays");
        assert_eq!(row.status.as_str(), "corrupt", "{row:?}");
        let note = row.note.clone().unwrap_or_default();
        assert!(
            note.contains(copy.as_str()) && note.contains("primary"),
            "{note}"
        );
        assert!(v.catalog().segments(row.uuid).unwrap().is_empty());
        assert_eq!(image_status(&v, copy).unwrap().status.as_str(), "complete");
    }
    check_clean(&v);

    // Both points restore bit-identical, from the copies.
    for (img, want) in [(&f_id, "p0.img"), (&i_id, "p1.img")] {
        let out = v.path(&format!("r-{img}.img"));
        let r = v.restore_image(d.id, img, &out);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.json["used"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| !u["copy_of"].is_null()),
            "read from the copies: {}",
            r.json
        );
        assert_same_bytes(&out, &v.path(want), "a point held by its copy");
    }
    let r = v.restore_image(d.id, s(&full2, "image"), &v.path("r2.img"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&v.path("r2.img"), &v.path("p2.img"), "the newest full");

    // Day 40: the copies' sets expire under the vault's retention; the points go with
    // them, leaving nothing dangling.
    v.now = Some(test_time(40 * 24));
    let rot = v.ok(&["rotate", "--apply"]);
    for img in [&f_id, &i_id, &f_copy, &i_copy] {
        assert!(
            image_status(&v, img).is_none(),
            "{img} is forgotten ({f_id} {i_id} {f_copy} {i_copy}): {:?}\n{rot}",
            image_status(&v, img)
        );
    }
    check_clean(&v);
    let r = v.restore_image(d.id, s(&full2, "image"), &v.path("r3.img"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let _ = id;
}

#[test]
fn catalog_check_reports_a_copy_whose_original_is_unknown() {
    let v = Vault::init(&["--slots", "8", "--drives", "2", "--capacity", "64M"]);
    pools(&v);
    let d = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 12);
    let full = v.backup(&d, "daily", &["--full"]);
    let f_id = s(&full, "image").to_string();
    let c = v.ok(&["copy", "--image", &f_id, "--to-pool", "vault"]);
    let copy = c["copied"][0]["copy"].as_str().unwrap().to_string();
    check_clean(&v);

    // A catalog that lost the original (e.g. an old version's expiry, or an edit).
    let raw = rusqlite::Connection::open(v.home.join("catalog.db")).unwrap();
    raw.execute("DELETE FROM segments WHERE image_uuid=?1", [&f_id])
        .unwrap();
    raw.execute("DELETE FROM image_extents WHERE image_uuid=?1", [&f_id])
        .unwrap();
    raw.execute("DELETE FROM images WHERE uuid=?1", [&f_id])
        .unwrap();
    drop(raw);
    let r = v.fails(&["catalog", "check"], 3);
    let text = r.stdout.to_string();
    assert!(
        text.contains(&copy) && text.contains(&f_id) && text.contains("not in the catalog"),
        "{text}"
    );
}
