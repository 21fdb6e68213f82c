//! Tape-to-tape copies through the binary: copies restore bit-identical, also with the
//! original exported or its cartridge damaged; an encrypted pool copied under another
//! key, spanning cartridges on both sides; a catalog rebuilt from the media knows the
//! copies; one drive needs a spool; `copy_to` copies every session and `rotate` sends
//! the copies offsite; a killed copy or a media error leaves the source and the catalog
//! as they were; a point that cannot be restored is refused.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

const PASS: &str = "copy test passphrase 1";

fn with_pass(v: &Vault, args: &[&str]) -> Run {
    let o = v
        .command(args)
        .env("TAPEVAULT_PASSPHRASE", PASS)
        .output()
        .expect("run tapevault");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    Run {
        code: o.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok_pass(v: &Vault, args: &[&str]) -> Value {
    let r = with_pass(v, args);
    assert_eq!(
        r.code, 0,
        "tapevault {args:?}: exit {}\n{}\n{}",
        r.code, r.stdout, r.stderr
    );
    r.json
}

fn restore_to(v: &Vault, disk: &TestDisk, image: Option<&str>, to: &Path) -> Value {
    let id = disk.id.to_string();
    let mut a = vec!["restore", "--disk", &id, "--to", to.to_str().unwrap()];
    if let Some(i) = image {
        a.extend(["--image", i]);
    }
    ok_pass(v, &a)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Every cartridge barcode a list of image reports names.
fn cartridges_of(v: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in v.as_array().unwrap() {
        for b in strs(&i[key]) {
            if !out.contains(&b) {
                out.push(b);
            }
        }
    }
    out
}

#[test]
fn copies_restore_bit_identical_with_the_original_exported_or_damaged() {
    let v = Vault::init(&["--slots", "8", "--drives", "2", "--capacity", "64M"]);
    v.pool("onsite", "zstd:1");
    v.pool_per_session("vault", "off");
    let mut d = TestDisk::create(v.path("d.img"), 6 * MIB, 4 * MIB, 7);
    let full = v.backup(&d, "onsite", &["--full"]);
    d.save_copy(&v.path("p0.img"));
    d.random_writes(12, 200 * KIB);
    d.write_zeros(MIB, 256 * KIB);
    let inc = v.backup(&d, "onsite", &[]);
    d.save_copy(&v.path("p1.img"));
    let full_id = s(&full, "image").to_string();
    let inc_id = s(&inc, "image").to_string();

    let id = d.id.to_string();
    let c = v.ok(&["copy", "--disk", &id, "--to-pool", "vault"]);
    assert_eq!(c["mode"], "stream", "{c}");
    let copied = c["copied"].as_array().unwrap();
    assert_eq!(copied.len(), 2, "{c}");
    assert_eq!(copied[0]["image"], full_id.as_str());
    assert_eq!(copied[1]["image"], inc_id.as_str());
    // Both pools are clear: the copy's content digest is the original's.
    assert_eq!(copied[0]["digest"], full["digest"], "{c}");
    let src_carts = cartridges_of(&c["copied"], "source_barcodes");
    let copy_carts = cartridges_of(&c["copied"], "barcodes");
    assert!(src_carts.iter().all(|b| !copy_carts.contains(b)), "{c}");
    v.assert_catalog_consistent();

    // The catalog knows every copy of each point; `images` lists them as copies.
    let cat = v.catalog();
    let copy_of_full = &cat.copies_of(full_id.parse().unwrap()).unwrap()[0];
    assert_eq!(copy_of_full.pool.as_deref(), Some("vault"));
    assert_eq!(copy_of_full.started, v.image_row(&full_id).started);
    let imgs = v.ok(&["images", "--disk", &id]);
    assert!(
        imgs.to_string().contains(&copy_of_full.uuid.to_string()),
        "{imgs}"
    );

    // Copying again copies nothing.
    let again = v.ok(&["copy", "--disk", &id, "--to-pool", "vault"]);
    assert_eq!(again["copied"].as_array().unwrap().len(), 0);
    assert_eq!(again["already_copied"].as_array().unwrap().len(), 2);

    // All in the library: the originals are read.
    let r = restore_to(&v, &d, None, &v.path("r1.img"));
    assert_same_bytes(
        &v.path("r1.img"),
        &v.path("p1.img"),
        "restore with both at hand",
    );
    assert!(
        r["used"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["copy_of"].is_null()),
        "{r}"
    );

    // A damaged record in the original full: the restore marks it and runs again from
    // the full's copy; the incremental built on it stays restorable.
    v.flip_byte_in_block(&src_carts[0], 4);
    let run = with_pass(
        &v,
        &[
            "restore",
            "--disk",
            &id,
            "--to",
            v.path("r1b.img").to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("restoring again"), "{}", run.stderr);
    assert_same_bytes(
        &v.path("r1b.img"),
        &v.path("p1.img"),
        "restore after falling back to a copy",
    );
    assert_eq!(
        v.image_row(&full_id).status,
        tapevault::catalog::ImageStatus::Corrupt
    );
    assert_eq!(
        v.image_row(&inc_id).status,
        tapevault::catalog::ImageStatus::Complete
    );

    // The originals' set leaves: the restore reads the copies and says so.
    let set = cat
        .session(v.image_row(&full_id).session_uuid.unwrap())
        .unwrap()
        .unwrap()
        .media_set_uuid
        .unwrap()
        .to_string();
    v.ok(&["media", "export", "--set", &set]);
    for b in &src_carts {
        v.ok(&["media", "vault", b, "--location", "iron"]);
    }
    let out = v.path("r2.img");
    let id2 = d.id.to_string();
    let run = with_pass(
        &v,
        &["restore", "--disk", &id2, "--to", out.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_same_bytes(&out, &v.path("p1.img"), "restore from the copies");
    let used = run.json["used"].as_array().unwrap();
    assert!(used.iter().all(|u| !u["copy_of"].is_null()), "{}", run.json);
    assert!(run.stderr.contains("from its copy"), "{}", run.stderr);
    let pl = v.ok(&["media", "pull-list", "--disk", &id2]);
    assert_eq!(pl["to_fetch"].as_array().unwrap().len(), 0, "{pl}");
    // An older point too.
    restore_to(&v, &d, Some(&full_id), &v.path("r3.img"));
    assert_same_bytes(
        &v.path("r3.img"),
        &v.path("p0.img"),
        "older point from the copy",
    );

    // Back on site, the original's cartridge marked damaged: the copy is read.
    for b in &src_carts {
        v.ok(&["media", "return", b]);
    }
    v.ok(&["media", "damaged", &src_carts[0]]);
    let run = with_pass(
        &v,
        &[
            "restore",
            "--disk",
            &id2,
            "--to",
            v.path("r4.img").to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_same_bytes(
        &v.path("r4.img"),
        &v.path("p1.img"),
        "restore with the original damaged",
    );
    assert!(run.json["used"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| !u["copy_of"].is_null()));
    v.assert_catalog_consistent();
}

#[test]
fn an_encrypted_pool_is_copied_under_another_key_spanning_on_both_sides_and_rebuilt() {
    // 4 MiB cartridges, early warning 512 KiB before the end: a 9 MiB random disk spans.
    let v = Vault::init(&[
        "--slots",
        "10",
        "--drives",
        "2",
        "--capacity",
        "4M",
        "--early-warning",
        "512K",
    ]);
    let k1 = ok_pass(&v, &["key", "create", "k1"]);
    let k2 = ok_pass(&v, &["key", "create", "k2"]);
    let fp2 = k2["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(k1["fingerprint"], k2["fingerprint"]);
    v.ok(&[
        "pool",
        "create",
        "prod",
        "--compression",
        "off",
        "--encrypt-key",
        "k1",
    ]);
    v.ok(&[
        "pool",
        "create",
        "dr",
        "--compression",
        "zstd:1",
        "--encrypt-key",
        "k2",
    ]);
    let d = TestDisk::create(v.path("d.img"), 9 * MIB, 9 * MIB, 11);
    let path = d.path.to_str().unwrap().to_string();
    let id = d.id.to_string();
    let b = ok_pass(
        &v,
        &[
            "backup",
            "--disk",
            &path,
            "--disk-id",
            &id,
            "--pool",
            "prod",
            "--full",
        ],
    );
    let img = &b["images"][0];
    assert!(strs(&img["barcodes"]).len() >= 2, "the original spans: {b}");
    d.save_copy(&v.path("p0.img"));

    let c = ok_pass(&v, &["copy", "--all-uncopied", "--to-pool", "dr"]);
    let copied = &c["copied"][0];
    assert!(strs(&copied["barcodes"]).len() >= 2, "the copy spans: {c}");
    assert_ne!(
        copied["digest"], img["digest"],
        "keyed under another key: {c}"
    );
    let copy_id = copied["copy"].as_str().unwrap().to_string();
    let row = v.image_row(&copy_id);
    assert_eq!(row.key_fingerprint.as_deref(), Some(fp2.as_str()));
    v.assert_catalog_consistent();

    // The copy verifies on its own, and restores with the original's cartridges gone.
    ok_pass(&v, &["verify", "--image", &copy_id]);
    let set = v
        .catalog()
        .session(v.image_row(s(img, "image")).session_uuid.unwrap())
        .unwrap()
        .unwrap()
        .media_set_uuid
        .unwrap()
        .to_string();
    v.ok(&["media", "export", "--set", &set]);
    let away = strs(&img["barcodes"]);
    for b in &away {
        v.ok(&["media", "vault", b, "--location", "iron"]);
    }
    let r = restore_to(&v, &d, None, &v.path("r.img"));
    assert_same_bytes(
        &v.path("r.img"),
        &v.path("p0.img"),
        "restore from the re-keyed copy",
    );
    assert_eq!(r["used"][0]["image"], copy_id.as_str(), "{r}");

    // A new home on the same library: rebuilt from the media, it knows the copy.
    for b in &away {
        v.ok(&["media", "return", b]);
    }
    for (name, args) in [
        ("fast", vec!["catalog", "rebuild"]),
        ("scan", vec!["catalog", "rebuild", "--scan"]),
    ] {
        let home2 = v.path(name);
        let lib = v.library_dir();
        let mut c = std::process::Command::new(BIN);
        c.arg("--home")
            .arg(&home2)
            .args(["--json", "init", "--library", lib.to_str().unwrap()]);
        c.env_remove("TAPEVAULT_HOME").stdin(Stdio::null());
        assert!(c.output().unwrap().status.success());
        let mut c = std::process::Command::new(BIN);
        c.arg("--home").arg(&home2).arg("--json").args(&args);
        c.env_remove("TAPEVAULT_HOME")
            .env("TAPEVAULT_PASSPHRASE", PASS)
            .stdin(Stdio::null());
        // The keys live in the old home's keystore: bring them along.
        std::fs::create_dir_all(home2.join("keys")).unwrap();
        for e in std::fs::read_dir(v.home.join("keys")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), home2.join("keys").join(e.file_name())).unwrap();
        }
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let cat2 = tapevault::catalog::Catalog::open(&home2).unwrap();
        let r = cat2
            .image(copy_id.parse().unwrap())
            .unwrap()
            .expect("the copy is rebuilt");
        assert_eq!(
            r.copy_of.map(|u| u.to_string()).as_deref(),
            Some(s(img, "image")),
            "{name}"
        );
        assert_eq!(
            r.status,
            tapevault::catalog::ImageStatus::Complete,
            "{name}"
        );
    }
}

#[test]
fn one_drive_copies_through_a_bounded_spool_and_refuses_without_one() {
    let (v, d, full) = vault_with_full(
        6,
        1,
        &[("a", "off"), ("b", "zstd:1")],
        (3 * MIB, 2 * MIB, 3),
    );
    let id = d.id.to_string();
    let r = v.fails(&["copy", "--disk", &id, "--to-pool", "b"], 2);
    assert!(r.stderr.contains("--spool"), "{}", r.stderr);
    let spool = v.path("spool");
    std::fs::create_dir(&spool).unwrap();
    let sp = spool.to_str().unwrap();
    let r = v.fails(
        &[
            "copy",
            "--disk",
            &id,
            "--to-pool",
            "b",
            "--spool",
            sp,
            "--spool-size",
            "1M",
        ],
        2,
    );
    assert!(r.stderr.contains("spool"), "{}", r.stderr);
    assert!(v
        .catalog()
        .copies_of(s(&full, "image").parse().unwrap())
        .unwrap()
        .is_empty());

    let r = v.run(&[
        "copy",
        "--disk",
        &id,
        "--to-pool",
        "b",
        "--spool",
        sp,
        "--spool-size",
        "8M",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json["mode"], "spool");
    assert_eq!(r.json["copied"][0]["spooled"], true);
    assert!(
        r.stderr.contains("spool directory"),
        "said out loud: {}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "the spool is emptied"
    );
    assert_eq!(r.json["copied"][0]["digest"], full["digest"]);
    v.ok(&["media", "damaged", &strs(&full["barcodes"])[0]]);
    restore_to(&v, &d, None, &v.path("r.img"));
    assert_same_bytes(
        &v.path("r.img"),
        &v.path("p0.img"),
        "restore from the spooled copy",
    );
    v.assert_catalog_consistent();
}

#[test]
fn copy_to_copies_each_session_and_rotate_sends_the_copies_offsite() {
    let v = Vault::init(&["--slots", "8", "--drives", "2", "--capacity", "64M"]);
    v.pool("nightly", "off");
    v.pool_per_session("offcopy", "off");
    std::fs::write(
        v.home.join("pools.toml"),
        "[pools.nightly]\noffsite_only = true\ncopy_to = \"offcopy\"\n\n[pools.offcopy]\noffsite_only = true\noffsite = \"iron\"\n",
    )
    .unwrap();
    let d = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 5);
    let path = d.path.to_str().unwrap().to_string();
    let id = d.id.to_string();
    let b = v.ok(&[
        "backup",
        "--disk",
        &path,
        "--disk-id",
        &id,
        "--pool",
        "nightly",
        "--full",
    ]);
    let copied = b["copy"]["copied"]
        .as_array()
        .expect("the session was copied");
    assert_eq!(copied.len(), 1, "{b}");
    assert_eq!(copied[0]["image"], b["images"][0]["image"]);
    let orig_carts = strs(&b["images"][0]["barcodes"]);
    let copy_carts = strs(&copied[0]["barcodes"]);
    v.assert_catalog_consistent();

    let plan = v.ok(&["rotate", "--dry-run"]);
    let remove: Vec<String> = plan["plan"]["remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["barcode"].as_str().unwrap().to_string())
        .collect();
    assert!(
        copy_carts.iter().all(|c| remove.contains(c)),
        "the copies go: {plan}"
    );
    assert!(
        orig_carts.iter().all(|c| !remove.contains(c)),
        "the originals stay: {plan}"
    );
    assert_eq!(
        plan["plan"]["remove"][0]["to"]["text"], "vault:iron",
        "{plan}"
    );
}

#[test]
fn a_killed_copy_leaves_the_source_and_the_catalog_as_they_were() {
    let (v, d, full) = vault_with_full(8, 2, &[("a", "off"), ("b", "off")], (8 * MIB, 8 * MIB, 9));
    let id = d.id.to_string();
    // Every blank cartridge writes slowly, so the copy is mid-stream when killed.
    let blanks = v.cartridges_except(&strs(&full["barcodes"]));
    v.slow_writes_on(&blanks, 40, 40);
    let mut child = v.spawn_quiet(&["copy", "--disk", &id, "--to-pool", "b"]);
    kill_when(&mut child, "the copy", Duration::from_secs(120), || {
        v.data_len_of(&blanks) >= 2 * MIB
    });
    v.clear_faults(&blanks);
    let cat = v.catalog();
    let copies = cat.copies_of(s(&full, "image").parse().unwrap()).unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(
        copies[0].status,
        tapevault::catalog::ImageStatus::Failed,
        "never counted"
    );
    // Only the dead writer's rows are left to mark, as after a killed backup.
    let problems = cat.check().unwrap();
    assert!(
        problems
            .iter()
            .all(|p| p.kind == tapevault::catalog::ProblemKind::StaleRunning),
        "{problems:#?}"
    );
    // The source is untouched, and the copy can be made again.
    restore_to(&v, &d, None, &v.path("r.img"));
    assert_same_bytes(
        &v.path("r.img"),
        &v.path("p0.img"),
        "the source after a killed copy",
    );
    let again = v.ok(&["copy", "--disk", &id, "--to-pool", "b"]);
    assert_eq!(again["copied"].as_array().unwrap().len(), 1, "{again}");
    v.assert_catalog_consistent();
}

#[test]
fn a_media_error_fails_the_copy_and_a_broken_chain_is_refused() {
    let (v, mut d, full) =
        vault_with_full(8, 2, &[("a", "off"), ("b", "off")], (4 * MIB, 4 * MIB, 13));
    d.random_writes(4, 100 * KIB);
    let inc = v.backup(&d, "a", &[]);
    let id = d.id.to_string();
    let bc = strs(&full["barcodes"])[0].clone();
    // A media error in the middle of the full's records.
    let f = v.cartridge_dir(&bc).join("faults.json");
    std::fs::write(
        &f,
        serde_json::json!({"media_error_blocks": [5]}).to_string(),
    )
    .unwrap();
    let r = v.run(&["copy", "--disk", &id, "--to-pool", "b"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    std::fs::remove_file(&f).unwrap();
    let cat = v.catalog();
    let full_id: uuid::Uuid = s(&full, "image").parse().unwrap();
    assert!(cat
        .copies_of(full_id)
        .unwrap()
        .iter()
        .all(|c| c.status != tapevault::catalog::ImageStatus::Complete));
    assert_eq!(
        v.image_row(s(&full, "image")).status,
        tapevault::catalog::ImageStatus::Complete,
        "the source is only read"
    );
    v.assert_catalog_consistent();

    // The full damaged: both points are refused with the reason, exit 3.
    v.flip_byte_in_block(&bc, 6);
    let _ = v.run(&["verify", "--image", s(&full, "image")]);
    let r = v.fails(&["copy", "--disk", &id, "--to-pool", "b"], 3);
    assert!(r.stderr.contains("cannot be copied"), "{}", r.stderr);
    let refused = r.json.to_string();
    let _ = (refused, inc);
    v.assert_catalog_consistent();
}
