//! The catalog tells the truth after the old products' failure modes, through the
//! binary: a backup that ran out of cartridges, rebuilt both ways in a new home; a
//! backup killed mid-write, seen by a reader before any writer runs; a rebuilt home
//! that must never use the old home's files.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `tapevault --json` in `home` (any home, not only a Vault's).
fn tv(home: &Path, args: &[&str]) -> Run {
    let o = std::process::Command::new(BIN)
        .arg("--home")
        .arg(home)
        .arg("--json")
        .args(args)
        .env_remove("TAPEVAULT_HOME")
        .env_remove("TAPEVAULT_PASSPHRASE")
        .env_remove("TAPEVAULT_NOW")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    Run {
        code: o.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok_in(home: &Path, args: &[&str]) -> Value {
    let r = tv(home, args);
    assert_eq!(
        r.code,
        0,
        "tapevault {args:?} in {}: exit {}\n{}\n{}",
        home.display(),
        r.code,
        r.stdout,
        r.stderr
    );
    r.json
}

/// Every image of `images --json`, flattened.
/// `restore --disk ID --image IMAGE --to OUT`.
fn restore_in(home: &Path, id: &str, image: &str, out: &Path) -> Run {
    let out = out.to_string_lossy();
    tv(
        home,
        &["restore", "--disk", id, "--image", image, "--to", &out],
    )
}

fn all_images(home: &Path) -> Vec<Value> {
    let j = ok_in(home, &["images"]);
    let mut out = Vec::new();
    for d in j["disks"].as_array().expect("images --json lists disks") {
        for c in d["chains"].as_array().unwrap() {
            out.extend(c["images"].as_array().unwrap().iter().cloned());
        }
    }
    out
}

fn image_in(home: &Path, uuid: &str) -> Value {
    all_images(home)
        .into_iter()
        .find(|i| i["image"] == uuid)
        .unwrap_or_else(|| panic!("image {uuid} not listed in {}", home.display()))
}

fn fresh_home(v: &Vault, name: &str) -> std::path::PathBuf {
    let home = v.path(name);
    let lib = v.library_dir();
    ok_in(&home, &["init", "--library", lib.to_str().unwrap()]);
    home
}

#[test]
fn disaster_recovery_after_an_end_of_media_abort_records_the_image_as_failed() {
    // Two 4 MiB cartridges with 512 KiB early warning, and nothing else in the library.
    let v = Vault::init(&[
        "--slots",
        "2",
        "--drives",
        "1",
        "--capacity",
        "4M",
        "--early-warning",
        "512K",
    ]);
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("d.img"), 3 * MIB, 3 * MIB, 81);
    let full = v.backup(&d, "p", &[]);
    let full_copy = v.path("full.copy");
    d.save_copy(&full_copy);
    // A 5 MiB change: the incremental fills the first cartridge, the second, and then
    // has nowhere to go: media needed.
    d.resize(5 * MIB);
    d.write_random(0, 5 * MIB);
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let r = v.fails(
        &["backup", "--disk", &path, "--disk-id", &id, "--pool", "p"],
        4,
    );
    assert!(
        r.stderr.contains("needs a writable cartridge"),
        "{}",
        r.stderr
    );
    let failed: Vec<Value> = all_images(&v.home)
        .into_iter()
        .filter(|i| i["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "the aborted image is failed");
    let failed_uuid = failed[0]["image"].as_str().unwrap().to_string();

    // The home is lost; the library and the cartridges remain.
    let lib = v.path("library");
    std::fs::rename(v.library_dir(), &lib).unwrap();
    std::fs::remove_dir_all(&v.home).unwrap();

    for (name, args) in [
        ("fast", vec!["catalog", "rebuild"]),
        ("scan", vec!["catalog", "rebuild", "--scan"]),
    ] {
        let home = v.path(name);
        ok_in(&home, &["init", "--library", lib.to_str().unwrap()]);
        let r = tv(&home, &args);
        assert_eq!(
            r.code, 0,
            "{name}: every cartridge was read and the media are consistent: {}\n{}",
            r.stdout, r.stderr
        );
        assert!(
            !r.stderr.contains("not read"),
            "{name}: no claim of cartridges not read: {}",
            r.stderr
        );
        let img = image_in(&home, &failed_uuid);
        assert_eq!(img["status"], "failed", "{name}: {img}");
        let note = img["note"].as_str().unwrap_or_default();
        assert!(
            note.contains("never written"),
            "{name}: the note says why: {img}"
        );
        let full_row = image_in(&home, s(&full, "image"));
        assert_eq!(full_row["status"], "complete", "{name}: {full_row}");
        let chk = tv(&home, &["catalog", "check"]);
        assert_eq!(chk.code, 0, "{name}: {}\n{}", chk.stdout, chk.stderr);

        // The earlier point restores bit-identical; the failed one does not restore.
        let out = v.path(&format!("{name}.full.img"));
        let r = restore_in(&home, &id, s(&full, "image"), &out);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert_same_bytes(&out, &full_copy, name);
        let bad = v.path(&format!("{name}.failed.img"));
        let r = restore_in(&home, &id, &failed_uuid, &bad);
        assert_ne!(r.code, 0, "{name}: a failed image never restores");
        // A second rebuild keeps nothing for a later join: it says the same.
        let again = tv(&home, &args);
        assert_eq!(again.code, 0, "{name}: {}", again.stderr);
    }
}

#[test]
fn a_killed_backup_reads_as_failed_before_any_writer_runs() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("d.img"), 8 * MIB, 8 * MIB, 91);
    let full = v.backup(&d, "p", &[]);
    let bc = full["barcodes"][0].as_str().unwrap().to_string();
    d.write_random(0, 6 * MIB);
    v.slow_writes(&bc, 40, 100000);
    let before = v.cartridge_data_len(&bc);
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let mut child = v
        .command(&["backup", "--disk", &path, "--disk-id", &id, "--pool", "p"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while v.cartridge_data_len(&bc) < before + 2 * 512 * KIB {
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        assert!(started.elapsed() < Duration::from_secs(60), "never wrote");
        std::thread::sleep(Duration::from_millis(5));
    }
    // While it runs, readers see it running.
    let running: Vec<Value> = all_images(&v.home)
        .into_iter()
        .filter(|i| i["status"] == "running")
        .collect();
    assert_eq!(running.len(), 1, "the live backup reads as running");
    let killed = running[0]["image"].as_str().unwrap().to_string();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::fs::remove_file(v.cartridge_dir(&bc).join("faults.json")).unwrap();

    // No writer has run since: every reader already sees it as failed (interrupted).
    let img = image_in(&v.home, &killed);
    assert_eq!(img["status"], "failed", "{img}");
    assert!(
        img["note"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{img}"
    );
    // The text form too.
    let o = std::process::Command::new(BIN)
        .arg("--home")
        .arg(&v.home)
        .arg("images")
        .env_remove("TAPEVAULT_HOME")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&killed))
        .unwrap_or_else(|| panic!("{killed} not in {text}"));
    assert!(
        line.contains("failed") && !line.contains("running"),
        "{line}"
    );
    let exported = v.ok(&["catalog", "export"]);
    let row = exported["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"]["uuid"] == killed.as_str())
        .unwrap_or_else(|| panic!("{killed} not exported: {exported}"));
    assert_eq!(row["image"]["status"], "failed", "{row}");
    let sess = exported["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "running")
        .count();
    assert_eq!(sess, 0, "no session of a dead process reads as running");
    // The stored row is still 'running' (a reader does not write) ...
    let conn = rusqlite::Connection::open(v.home.join("catalog.db")).unwrap();
    let stored: String = conn
        .query_row("SELECT status FROM images WHERE uuid=?1", [&killed], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, "running");
    drop(conn);
    // ... restore and verify refuse it as failed.
    let out = v.path("k.img");
    let r = v.restore_image(d.id, &killed, &out);
    assert_ne!(r.code, 0);
    assert!(!out.exists());

    // The next writer records it as failed and never builds on it.
    let next = v.backup(&d, "p", &[]);
    assert_eq!(s(&next, "parent"), s(&full, "image"), "{next}");
    let conn = rusqlite::Connection::open(v.home.join("catalog.db")).unwrap();
    let stored: String = conn
        .query_row("SELECT status FROM images WHERE uuid=?1", [&killed], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, "failed");
    let out = v.path("next.img");
    let r = v.restore_image(d.id, s(&next, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &d.path, "the run after the kill");
}

#[test]
fn a_rebuilt_home_never_uses_the_old_homes_digest_lists() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("d.img"), 4 * MIB, 4 * MIB, 101);
    let full = v.backup(&d, "p", &[]);
    // The catalog stores the digest list relative to the home.
    let row = v.image_row(s(&full, "image"));
    let dl = row.digest_list.clone().expect("a digest list is recorded");
    assert!(
        Path::new(&dl).is_relative() && !dl.contains(".."),
        "stored relative to the home: {dl}"
    );
    assert!(v.home.join(&dl).is_file());

    // Rebuild into a new home while the old one still exists.
    let new = fresh_home(&v, "new-home");
    let r = tv(&new, &["catalog", "rebuild"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let conn = rusqlite::Connection::open(new.join("catalog.db")).unwrap();
    let lists: Vec<Option<String>> = conn
        .prepare("SELECT digest_list FROM images")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(conn);
    assert!(
        lists.iter().all(|l| l.is_none()),
        "the rebuilt catalog imported digest list paths: {lists:?}"
    );
    // The new home holds no digest list: its next backup takes a full and says why,
    // instead of hash-scanning against the old home's file.
    d.write_random(0, 64 * KIB);
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let r = tv(
        &new,
        &["backup", "--disk", &path, "--disk-id", &id, "--pool", "p"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let img = &r.json["images"][0];
    assert_eq!(img["kind"], "full", "{img}");
    assert!(
        img["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("digest list"),
        "said out loud: {img}"
    );
    let out = v.path("new.img");
    let r = restore_in(&new, &id, s(img, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &d.path, "the new home's full");
}

#[test]
fn absolute_digest_list_paths_are_migrated_into_the_home_or_forgotten() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let mut a = TestDisk::create(v.path("a.img"), 2 * MIB, 2 * MIB, 111);
    let mut b = TestDisk::create(v.path("b.img"), 2 * MIB, 2 * MIB, 112);
    let fa = v.backup(&a, "p", &[]);
    let fb = v.backup(&b, "p", &[]);
    // As an older tapevault recorded them: a's absolute inside this home; b's pointing
    // at a copy in another (old) home.
    let home = std::fs::canonicalize(&v.home).unwrap();
    let a_abs = home.join(format!("digests/{}.digests", s(&fa, "image")));
    let other = v.path("old-home/digests");
    std::fs::create_dir_all(&other).unwrap();
    let b_file = format!("{}.digests", s(&fb, "image"));
    std::fs::copy(home.join("digests").join(&b_file), other.join(&b_file)).unwrap();
    std::fs::remove_file(home.join("digests").join(&b_file)).unwrap();
    let conn = rusqlite::Connection::open(v.home.join("catalog.db")).unwrap();
    conn.execute(
        "UPDATE images SET digest_list=?2 WHERE uuid=?1",
        [s(&fa, "image"), a_abs.to_str().unwrap()],
    )
    .unwrap();
    conn.execute(
        "UPDATE images SET digest_list=?2 WHERE uuid=?1",
        [s(&fb, "image"), other.join(&b_file).to_str().unwrap()],
    )
    .unwrap();
    // ... in a catalog of its older schema: the paths are made relative when it is
    // migrated (the next open).
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    conn.pragma_update(None, "user_version", version - 1)
        .unwrap();
    drop(conn);

    let ra = v.image_row(s(&fa, "image"));
    assert_eq!(
        ra.digest_list.as_deref(),
        Some(format!("digests/{}.digests", s(&fa, "image")).as_str())
    );
    let rb = v.image_row(s(&fb, "image"));
    assert_eq!(rb.digest_list, None, "a path outside the home is forgotten");
    v.assert_catalog_consistent();

    // a: a hash-scan incremental from the migrated list; b: a full, said out loud.
    a.write_random(0, 64 * KIB);
    b.write_random(0, 64 * KIB);
    let ia = v.backup(&a, "p", &[]);
    assert_eq!(s(&ia, "kind"), "incremental", "{ia}");
    let path = b.path.to_string_lossy().into_owned();
    let id = b.id.to_string();
    let r = v.run(&["backup", "--disk", &path, "--disk-id", &id, "--pool", "p"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json["images"][0]["kind"], "full", "{}", r.stdout);
    assert!(
        r.json["images"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("digest list"),
        "said out loud: {}",
        r.stdout
    );
    for (disk, img) in [
        (&a, s(&ia, "image").to_string()),
        (&b, s(&r.json["images"][0], "image").to_string()),
    ] {
        let out = v.path(&format!("{}.out", &img[..8]));
        let rr = v.restore_image(disk.id, &img, &out);
        assert_eq!(rr.code, 0, "{}", rr.stderr);
        assert_same_bytes(&out, &disk.path, "after the migration");
    }
}
