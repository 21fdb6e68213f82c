//! The command line's contract through the real binary: `restore --to -` streams the
//! disk to stdout, unknown disks and times before the first image are usage errors that
//! name the nearest valid value, argument errors under `--json` print the JSON error
//! document, `catalog export --out` reports what it wrote, `images` shows the VM.

use std::process::Stdio;

use serde_json::Value;

mod common;
use common::{assert_same_bytes, s, TestDisk, Vault, BIN, MIB};

fn usage_error(r: &common::Run) {
    assert_eq!(r.code, 2, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert_eq!(r.json["kind"].as_str(), Some("usage"), "{}", r.stdout);
    assert_eq!(r.json["exit_code"].as_i64(), Some(2), "{}", r.stdout);
}

#[test]
fn restore_to_dash_streams_the_disk_to_stdout() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    // Data, a hole, data: the stream must carry the hole as zeros, in disk order.
    let mut disk = TestDisk::create(v.path("d.img"), 6 * MIB, MIB, 11);
    disk.write_random(4 * MIB, MIB);
    let full = v.backup(&disk, "p", &[]);
    let full_copy = v.path("full.img");
    disk.save_copy(&full_copy);
    // An incremental that changes the start again: the chain's images supply data in
    // media order, not disk order; the stream must still come out in disk order.
    disk.write_random(4 * MIB + 4096, 64 * 1024);
    disk.write_random(0, 128 * 1024);
    let inc = v.backup(&disk, "p", &[]);
    assert_ne!(s(&full, "image"), s(&inc, "image"));
    let d = disk.id.to_string();

    for (image, expected) in [
        (s(&inc, "image"), disk.path.clone()),
        (s(&full, "image"), full_copy),
    ] {
        let piped = v.path(&format!("piped-{image}.img"));
        let out = std::fs::File::create(&piped).unwrap();
        let status = std::process::Command::new(BIN)
            .arg("--home")
            .arg(&v.home)
            .args(["restore", "--disk", &d, "--image", image, "--to", "-"])
            .env_remove("TAPEVAULT_HOME")
            .env_remove("TAPEVAULT_PASSPHRASE")
            .env("TMPDIR", &v.root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped())
            .output()
            .expect("run tapevault");
        let err = String::from_utf8_lossy(&status.stderr).into_owned();
        assert_eq!(status.status.code(), Some(0), "stderr: {err}");
        assert!(
            err.contains("restored disk"),
            "the result line goes to stderr: {err}"
        );
        assert_same_bytes(&piped, &expected, "restore --to -");
        assert!(!v.root.join("-").exists(), "no file named - is created");
    }
    // The scratch file had no name: nothing is left in TMPDIR but what the test made.
    let left: Vec<String> = std::fs::read_dir(&v.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tapevault-restore"))
        .collect();
    assert!(left.is_empty(), "scratch files left behind: {left:?}");

    // --json with --to -: stdout cannot carry both, a usage error.
    let r = v.run(&["restore", "--disk", &d, "--to", "-"]);
    usage_error(&r);
    assert!(
        r.json["error"].as_str().unwrap().contains("--to -"),
        "{}",
        r.stdout
    );
}

#[test]
fn unknown_disks_and_times_before_the_first_image_are_usage_errors_naming_the_way_out() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let disk = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 3);
    let d = disk.id.to_string();
    v.ok(&[
        "backup",
        "--disk",
        disk.path.to_str().unwrap(),
        "--disk-id",
        &d,
        "--pool",
        "p",
        "--vm",
        "web01",
    ]);
    let listed = v.ok(&["images", "--disk", &d]);
    let started = s(&listed["disks"][0]["chains"][0]["images"][0], "started").to_string();
    let to = v.path("r.img");
    let t = to.to_str().unwrap();

    let other = uuid::Uuid::new_v4().to_string();
    let r = v.run(&["restore", "--disk", &other, "--to", t]);
    usage_error(&r);
    let msg = r.json["error"].as_str().unwrap();
    assert!(
        msg.contains(&other) && msg.contains(&d) && msg.contains("web01"),
        "{msg}"
    );
    // `images --disk` of a disk the catalog does not know says so the same way.
    let r = v.run(&["images", "--disk", &other]);
    usage_error(&r);
    let msg = r.json["error"].as_str().unwrap();
    assert!(
        msg.contains("unknown disk") && msg.contains(&other) && msg.contains(&d),
        "{msg}"
    );

    let r = v.run(&["restore", "--disk", &d, "--at", "2000-01-01", "--to", t]);
    usage_error(&r);
    let msg = r.json["error"].as_str().unwrap();
    assert!(
        msg.contains("oldest restore point") && msg.contains(&started),
        "names the oldest restore point {started}: {msg}"
    );
    // That time, pasted back, restores.
    let r = v.restore_at(disk.id, &started, &to);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&to, &disk.path, "restore at the named time");

    let r = v.run(&[
        "restore",
        "--disk",
        &d,
        "--image",
        &other,
        "--to",
        v.path("x.img").to_str().unwrap(),
    ]);
    usage_error(&r);
    assert!(!v.path("x.img").exists());
}

#[test]
fn argument_errors_under_json_print_the_json_error_document() {
    let v = Vault::small(1, "8M");
    for args in [
        vec!["restore", "--to", "x.img"],
        vec!["images", "--disk", "not-a-uuid"],
        vec!["no-such-command"],
    ] {
        let r = v.run(&args);
        usage_error(&r);
        assert!(!r.json["error"].as_str().unwrap().is_empty());
        assert!(!r.stderr.is_empty(), "clap's text stays on stderr");
    }
    // Without --json: text only.
    let o = std::process::Command::new(BIN)
        .args(["--home", v.home.to_str().unwrap(), "no-such-command"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    // --help and --version are not errors.
    for a in ["--help", "--version"] {
        let r = v.run(&[a]);
        assert_eq!(r.code, 0);
        assert_eq!(r.json, Value::Null, "{a} prints text: {}", r.stdout);
    }
}

#[test]
fn catalog_export_to_a_file_reports_what_it_wrote() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let disk = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 5);
    v.backup(&disk, "p", &[]);
    let f = v.path("cat.json");
    let j = v.ok(&["catalog", "export", "--out", f.to_str().unwrap()]);
    assert_eq!(j["path"].as_str(), f.to_str());
    assert_eq!(
        j["bytes"].as_u64(),
        Some(std::fs::metadata(&f).unwrap().len())
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    for (k, n) in j["counts"].as_object().expect("counts") {
        assert_eq!(
            doc[k].as_array().map(|a| a.len() as u64),
            n.as_u64(),
            "count of {k}"
        );
    }
    assert_eq!(j["counts"]["images"].as_u64(), Some(1), "{j}");
    assert_eq!(j["counts"]["pools"].as_u64(), Some(1), "{j}");
}

#[test]
fn images_shows_the_vm() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let disk = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 9);
    let d = disk.id.to_string();
    v.ok(&[
        "backup",
        "--disk",
        disk.path.to_str().unwrap(),
        "--disk-id",
        &d,
        "--pool",
        "p",
        "--vm",
        "db07",
    ]);
    let j = v.ok(&["images"]);
    assert_eq!(j["disks"][0]["vm"].as_str(), Some("db07"), "{j}");
    assert_eq!(
        j["disks"][0]["chains"][0]["images"][0]["vm"].as_str(),
        Some("db07"),
        "{j}"
    );
    let o = std::process::Command::new(BIN)
        .args(["--home", v.home.to_str().unwrap(), "images"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(&format!("disk {d} (VM db07)")), "{text}");
}
