//! The job history (`tapevault jobs`), the overview (`tapevault status`) and the hook on
//! every way a job ends, through the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn jobs(v: &Vault, extra: &[&str]) -> Vec<Value> {
    let mut a = vec!["jobs"];
    a.extend_from_slice(extra);
    v.ok(&a)["jobs"].as_array().expect("jobs array").clone()
}

#[test]
fn every_job_is_recorded_with_its_result_bytes_and_cartridges() {
    let v = Vault::small(3, "16M");
    v.pool("p", "off");
    let d = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 1);
    let img = v.backup(&d, "p", &["--vm", "web"]);
    let bc = img["barcodes"][0].as_str().unwrap().to_string();
    let image = img["image"].as_str().unwrap().to_string();
    let out = v.path("r.img");
    let r = v.restore_image(d.id, &image, &out);
    assert_eq!(r.code, 0, "{r:?}");
    v.ok(&["verify", "--image", &image]);
    // A failing job: a restore of a disk the catalog does not know.
    let other = uuid::Uuid::new_v4().to_string();
    let out2 = v.path("r2.img");
    v.fails(
        &["restore", "--disk", &other, "--to", out2.to_str().unwrap()],
        2,
    );
    // Not jobs: listings.
    v.ok(&["images"]);
    v.ok(&["library", "status"]);

    let all = jobs(&v, &[]);
    let kinds: Vec<&str> = all.iter().map(|j| j["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["backup", "restore", "verify", "restore"],
        "{all:#?}"
    );
    let b = &all[0];
    assert_eq!(b["result"], "ok");
    assert_eq!(b["exit_code"], 0);
    assert_eq!(b["pool"], "p");
    assert_eq!(b["vms"], serde_json::json!(["web"]));
    assert_eq!(b["disks"], serde_json::json!([d.id.to_string()]));
    assert!(b["barcodes"]
        .as_array()
        .unwrap()
        .contains(&Value::from(bc.clone())));
    assert_eq!(b["bytes"].as_u64(), img["stored_bytes"].as_u64());
    assert!(b["finished"].is_string() && b["duration_s"].as_f64().unwrap() >= 0.0);
    assert_eq!(all[1]["result"], "ok");
    assert!(all[1]["bytes"].as_u64().unwrap() > 0, "{:#?}", all[1]);
    assert!(all[2]["barcodes"]
        .as_array()
        .unwrap()
        .contains(&Value::from(bc.clone())));
    let failed = &all[3];
    assert_eq!(failed["result"], "failed");
    assert_eq!(failed["exit_code"], 2);
    assert!(
        failed["error"].as_str().unwrap().contains(&other),
        "{failed:#?}"
    );

    // Filters.
    let f = jobs(&v, &["--failed"]);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["job"], failed["job"]);
    let k = jobs(&v, &["--kind", "restore"]);
    assert_eq!(k.len(), 2);
    let l = jobs(&v, &["--last", "2"]);
    assert_eq!(l.len(), 2);
    assert_eq!(l[1]["job"], failed["job"], "newest last");
    assert_eq!(jobs(&v, &["--since", "2000-01-01"]).len(), 4);
    assert!(jobs(&v, &["--since", "2999-01-01"]).is_empty());
    let r = v.fails(&["jobs", "--kind", "nap"], 2);
    assert!(r.stderr.contains("backup, restore"), "{}", r.stderr);
    v.fails(&["jobs", "--since", "yesterday"], 2);
    // Text mode: one line per job, the error under it.
    let text = std::process::Command::new(BIN)
        .args(["--home", v.home.to_str().unwrap(), "jobs", "--failed"])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(t.contains("restore") && t.contains("error:"), "{t}");

    // The overview: the disk's last good backup, the failed restore (no restore has
    // succeeded since? one has: the earlier one is older, so it counts).
    let s = v.ok(&["status"]);
    assert_eq!(s["drives"][0]["busy"], false);
    assert_eq!(s["running_jobs"], serde_json::json!([]));
    let disk = &s["disks"][0];
    assert_eq!(disk["disk"], d.id.to_string());
    assert_eq!(disk["vm"], "web");
    assert_eq!(disk["last_good_image"], image);
    assert!(disk["age_s"].as_i64().unwrap() >= 0);
    assert_eq!(s["failed_jobs"].as_array().unwrap().len(), 1);
    let needs: Vec<&str> = s["needs_attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(needs.iter().any(|n| n.contains("restore job")), "{needs:?}");
    // A later successful restore clears it.
    let r = v.restore_image(d.id, &image, &out2);
    assert_eq!(r.code, 0, "{r:?}");
    let s = v.ok(&["status"]);
    assert_eq!(s["failed_jobs"], serde_json::json!([]), "{s:#}");
}

#[test]
fn status_names_pools_short_of_media_and_unrestorable_images() {
    // One cartridge only, sent to a vault after the backup: the pool has nothing left
    // in the library for its next session.
    let v = Vault::small(1, "16M");
    v.pool("p", "off");
    let d = TestDisk::create(v.path("d.img"), MIB, MIB / 2, 2);
    let img = v.backup(&d, "p", &[]);
    let bc = img["barcodes"][0].as_str().unwrap().to_string();
    // Mark the image corrupt (as verify does when it finds damage).
    v.catalog()
        .mark_corrupt(
            img["image"].as_str().unwrap().parse().unwrap(),
            "test damage",
        )
        .unwrap();
    v.ok(&["media", "export", &bc]);
    v.ok(&["media", "vault", &bc, "--location", "offsite"]);
    let s = v.ok(&["status"]);
    assert_eq!(s["disks"][0]["last_good"], Value::Null, "{s:#}");
    assert_eq!(s["unrestorable"][0]["image"], img["image"], "{s:#}");
    assert!(
        s["pools_short_of_media"][0].as_str().unwrap().contains('p'),
        "{s:#}"
    );
    let needs = s["needs_attention"].to_string();
    assert!(needs.contains("no restorable image"), "{needs}");
    assert!(needs.contains("pool short of media"), "{needs}");
    // Still exit 0: scripts read needs_attention.
    let o = std::process::Command::new(BIN)
        .args(["--home", v.home.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("needs attention"));
}

#[test]
fn a_killed_backup_reads_as_a_failed_job() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let d = TestDisk::create(v.path("d.img"), 16 * MIB, 16 * MIB, 3);
    v.ok(&["label", "TV0001L9", "--pool", "p"]);
    v.slow_writes("TV0001L9", 40, 1000);
    let before = v.cartridge_data_len("TV0001L9");
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let mut child = v
        .command(&["backup", "--disk", &path, "--disk-id", &id, "--pool", "p"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while v.cartridge_data_len("TV0001L9") < before + 3 * 512 * KIB {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the backup never wrote"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // While it runs, it is a running job, and the drive is busy with it.
    let s = v.ok(&["status"]);
    assert_eq!(s["running_jobs"][0]["kind"], "backup", "{s:#}");
    assert_eq!(s["drives"][0]["busy"], true, "{s:#}");
    let holder = s["drives"][0]["holder"].as_str().unwrap();
    let short = &s["running_jobs"][0]["job"].as_str().unwrap()[..8];
    assert!(holder.contains(short), "{holder}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let all = jobs(&v, &["--kind", "backup"]);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["result"], "failed", "{all:#?}");
    assert!(
        all[0]["error"].as_str().unwrap().contains("interrupted"),
        "{all:#?}"
    );
    let s = v.ok(&["status"]);
    assert_eq!(s["running_jobs"], serde_json::json!([]));
    assert_eq!(s["failed_jobs"][0]["job"], all[0]["job"]);
}

fn hook_script(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("hook.sh");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn configure(home: &Path, lines: &str) {
    let p = home.join("config.toml");
    let old = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("{lines}\n{old}")).unwrap();
}

#[test]
fn the_hook_runs_on_reports_that_end_in_an_error_and_on_rebuilds() {
    let v = Vault::small(2, "16M");
    v.pool("p", "off");
    let d = TestDisk::create(v.path("d.img"), MIB, MIB / 2, 4);
    let img = v.backup(&d, "p", &[]);
    let got = v.path("got.json");
    let script = hook_script(&v.root, &format!("cat > {}", got.display()));
    configure(&v.home, &format!("hook = \"{}\"", script.display()));

    // `catalog check` printing its problems and exiting 3 (the finish_with path), under
    // --json and in text mode.
    {
        let raw = rusqlite::Connection::open(v.home.join("catalog.db")).unwrap();
        raw.execute(
            "UPDATE images SET parent_uuid=?1 WHERE uuid=?2",
            [
                uuid::Uuid::new_v4().to_string(),
                img["image"].as_str().unwrap().to_string(),
            ],
        )
        .unwrap();
    }
    for json in [true, false] {
        let _ = std::fs::remove_file(&got);
        let mut c = std::process::Command::new(BIN);
        c.arg("--home").arg(&v.home);
        if json {
            c.arg("--json");
        }
        let o = c.args(["catalog", "check"]).output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        let doc: Value = serde_json::from_str(
            &std::fs::read_to_string(&got).expect("the hook ran on catalog check"),
        )
        .unwrap();
        assert_eq!(doc["command"], "catalog check");
        assert_eq!(doc["exit_code"], 3);
        assert_eq!(doc["ok"], false);
        assert_eq!(doc["result"]["kind"], "integrity", "{doc:#}");
        assert!(
            !doc["result"]["problems"].as_array().unwrap().is_empty(),
            "the hook gets the report with the error: {doc:#}"
        );
    }

    // A rebuild is a job: recorded, and the hook gets its report. The media contradict
    // the altered catalog: exit 3 with the report (the finish_with path again).
    let _ = std::fs::remove_file(&got);
    let r = v.fails(&["catalog", "rebuild"], 3);
    assert!(r.json["merged"]["conflicts"].is_array(), "{}", r.stdout);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&got).unwrap()).unwrap();
    assert_eq!(doc["command"], "catalog rebuild");
    assert_eq!(doc["exit_code"], 3);
    assert_eq!(doc["result"]["merged"]["conflicts"][0]["what"], "image");
    let r = jobs(&v, &["--kind", "rebuild"]);
    assert_eq!(r.len(), 1);
    assert_ne!(r[0]["result"], "ok");
    assert_eq!(r[0]["exit_code"], 3);
    assert!(r[0]["error"].as_str().unwrap().contains("contradict"));
}

#[test]
fn a_backup_prints_each_disk_and_the_session_on_stdout_notes_on_stderr() {
    let v = Vault::small(2, "16M");
    v.pool("p", "off");
    let d = TestDisk::create(v.path("d.img"), MIB, MIB / 2, 5);
    let o = std::process::Command::new(BIN)
        .args(["--home", v.home.to_str().unwrap(), "backup", "--disk"])
        .arg(&d.path)
        .args(["--disk-id", &d.id.to_string(), "--pool", "p"])
        .env_remove("TAPEVAULT_HOME")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        out.contains(&format!("disk {}: full image", d.id)),
        "the disk's result on stdout: {out}\nstderr: {err}"
    );
    assert!(out.contains("session "), "{out}");
    assert!(!err.contains("full image"), "{err}");
}
