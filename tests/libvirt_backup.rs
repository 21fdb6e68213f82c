//! `tapevault backup --libvirt` of a running TCG guest under a hand-started libvirtd,
//! through the binary: a full and incrementals from libvirt checkpoints (pull-mode
//! `virsh backup-begin`) with writes and zeroed ranges, every point of every disk
//! restored bit-identical to a copy of the disk taken at the freeze; a checkpoint lost
//! in libvirt redefined from the catalog; a checkpoint lost on both sides, a disk added
//! mid-chain and a resized disk give fulls with the reason; kill -9 of tapevault
//! mid-backup, then a clean next run.

mod common;
mod libvirt_support;
#[path = "../nbd-client/tests/support/x509.rs"]
mod x509;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{assert_same_bytes, image_of, s, u, Run, Vault, MIB};
use libvirt_support::{libvirt_missing, target, Libvirtd, AGENT_CHANNEL};

struct Guest<'a> {
    d: &'a Libvirtd,
    dom: String,
    /// Per disk: target, the model of its content.
    disks: Vec<(String, Vec<u8>)>,
}

impl<'a> Guest<'a> {
    /// The guest of domain `dom`, started with these disks (name, size, serial): their
    /// targets, and content all zeros.
    fn new(d: &'a Libvirtd, dom: &str, disks: &[(&str, u64, &str)]) -> Guest<'a> {
        Guest {
            d,
            dom: dom.into(),
            disks: disks
                .iter()
                .enumerate()
                .map(|(i, (_, size, _))| (target(i), vec![0u8; *size as usize]))
                .collect(),
        }
    }

    fn write(&mut self, i: usize, p: Option<u8>, off: u64, len: u64) {
        let (t, model) = &mut self.disks[i];
        self.d.write(&self.dom, t, p, off, len);
        model[off as usize..(off + len) as usize].fill(p.unwrap_or(0));
    }
}

fn backup_args(v: &Vault, d: &Libvirtd, dom: &str) -> Vec<String> {
    vec![
        "backup".into(),
        "--libvirt".into(),
        dom.into(),
        "--connect".into(),
        d.uri.clone(),
        "--scratch-dir".into(),
        v.path("scratch").to_string_lossy().into_owned(),
        "--pool".into(),
        "p".into(),
    ]
}

/// `backup --libvirt dom` with these further arguments, within 300 s.
fn run_backup(v: &Vault, d: &Libvirtd, dom: &str, extra: &[String]) -> Run {
    let mut a = backup_args(v, d, dom);
    a.extend(extra.iter().cloned());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    v.run_within(&a, &[], Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_backup`], which must succeed.
fn backup_with(v: &Vault, d: &Libvirtd, dom: &str, extra: &[String]) -> Run {
    let r = run_backup(v, d, dom, extra);
    assert_eq!(
        r.code, 0,
        "backup --libvirt failed: {}\n{}",
        r.stdout, r.stderr
    );
    r
}

fn backup(v: &Vault, d: &Libvirtd, dom: &str) -> (serde_json::Value, String) {
    let r = backup_with(v, d, dom, &[]);
    (r.json, r.stderr)
}

fn disk_ids(v: &Vault, d: &Libvirtd, dom: &str) -> Vec<(String, String)> {
    let j = v.ok(&["vm", "disks", "--libvirt", dom, "--connect", &d.uri]);
    j["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["target"].as_str().unwrap().to_string(),
                x["disk"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A vault (tapes of `capacity`) with pool p, and a libvirtd of its own; None when
/// libvirt is missing (the reason printed).
fn set_up(capacity: &str) -> Option<(Vault, Libvirtd)> {
    if libvirt_missing() {
        return None;
    }
    let v = Vault::small(4, capacity);
    v.pool("p", "off");
    let d = Libvirtd::start(&v.root);
    Some((v, d))
}

/// (disk id, image, copy of the disk at that point)
type Points = Vec<(String, String, PathBuf)>;

fn record(
    v: &Vault,
    g: &Guest,
    ids: &[(String, String)],
    j: &serde_json::Value,
    n: usize,
    points: &mut Points,
) {
    for (t, model) in &g.disks {
        let id = &ids.iter().find(|(x, _)| x == t).unwrap().1;
        let img = image_of(j, id);
        let copy = v.path(&format!("{t}-p{n}.raw"));
        std::fs::write(&copy, model).unwrap();
        points.push((id.clone(), s(img, "image").to_string(), copy));
    }
}

fn restore_all(v: &Vault, points: &Points) {
    for (k, (id, image, copy)) in points.iter().enumerate() {
        let out = v.path(&format!("restored-{k}.raw"));
        let r = v.restore_image(id.parse().unwrap(), image, &out);
        assert_eq!(r.code, 0, "restore of {id} image {image}: {}", r.stderr);
        assert_same_bytes(&out, copy, &format!("disk {id} image {image}"));
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn a_domain_full_incrementals_lost_checkpoints_added_and_resized_disks_restore_bit_identical() {
    let Some((v, mut d)) = set_up("512M") else {
        return;
    };
    let disks = [("a", 64 * MIB, "SER-A"), ("b", 32 * MIB, "SER-B")];
    d.start_domain("tv-chain", &v.root, &disks);
    let mut g = Guest::new(&d, "tv-chain", &disks);
    g.write(0, Some(0x11), 0, 4 * MIB);
    g.write(0, Some(0x12), 40 * MIB, MIB);
    g.write(1, Some(0x21), 8 * MIB, 2 * MIB);

    let ids = disk_ids(&v, &d, "tv-chain");
    assert_eq!(ids.len(), 2);
    let mut points = Points::new();

    let (full, stderr) = backup(&v, &d, "tv-chain");
    assert!(stderr.contains("checkpoint tapevault-1"), "{stderr}");
    for (_, id) in &ids {
        assert_eq!(image_of(&full, id)["kind"], "full");
    }
    // A full reads only what is allocated.
    assert!(u(image_of(&full, &ids[0].1), "read_bytes") <= 5 * MIB + 2 * 64 * 1024);
    record(&v, &g, &ids, &full, 0, &mut points);
    // The checkpoint's XML is in the catalog.
    let cat = v.catalog();
    assert!(cat
        .libvirt_checkpoint("tv-chain", "tapevault-1")
        .unwrap()
        .unwrap()
        .contains("<domaincheckpoint>"));
    drop(cat);

    for k in 1..=2u64 {
        g.write(0, Some(0x30 + k as u8), k * 3 * MIB, 256 * 1024);
        g.write(1, Some(0x40 + k as u8), k * MIB, 64 * 1024);
        // Zeroed data: dirty ranges that read as zeros come back as zeros.
        g.write(0, None, 40 * MIB + (k - 1) * 256 * 1024, 256 * 1024);
        let (inc, _) = backup(&v, &d, "tv-chain");
        for (_, id) in &ids {
            let img = image_of(&inc, id);
            assert_eq!(img["kind"], "incremental", "point {k}: {img}");
            assert_eq!(img["method"], "dirty-bitmap", "point {k}: {img}");
            assert!(u(img, "read_bytes") <= 256 * 1024 + 2 * 64 * 1024, "{img}");
        }
        record(&v, &g, &ids, &inc, k as usize, &mut points);
    }
    // One checkpoint of tapevault's is left: the newest epoch.
    assert_eq!(
        d.virsh(&["checkpoint-list", "tv-chain", "--name"]).trim(),
        "tapevault-3"
    );

    // libvirt loses the checkpoint (as when a domain is undefined and defined again):
    // redefined from the catalog, and the incremental goes on.
    d.virsh(&["checkpoint-delete", "tv-chain", "tapevault-3", "--metadata"]);
    g.write(0, Some(0x51), 20 * MIB, 128 * 1024);
    let (inc, stderr) = backup(&v, &d, "tv-chain");
    assert!(
        stderr.contains(
            "checkpoint tapevault-3 was missing in libvirt: redefined from the XML in the catalog"
        ),
        "{stderr}"
    );
    for (_, id) in &ids {
        assert_eq!(image_of(&inc, id)["kind"], "incremental", "{inc}");
    }
    record(&v, &g, &ids, &inc, 3, &mut points);

    // A disk added mid-chain: a full of it with the reason, incrementals of the others.
    d.attach_disk("tv-chain", &v.path("c.qcow2"), 16 * MIB, "vdc", "SER-C");
    g.disks.push(("vdc".into(), vec![0u8; 16 * MIB as usize]));
    g.write(2, Some(0x61), MIB, MIB);
    g.write(1, Some(0x62), 0, 64 * 1024);
    let ids = disk_ids(&v, &d, "tv-chain");
    assert_eq!(ids.len(), 3);
    let (inc, stderr) = backup(&v, &d, "tv-chain");
    let c_id = &ids.iter().find(|(t, _)| t == "vdc").unwrap().1;
    let c_img = image_of(&inc, c_id);
    assert_eq!(c_img["kind"], "full");
    assert!(
        s(c_img, "reason").contains("no earlier good image of this disk"),
        "{c_img}\n{stderr}"
    );
    for (t, id) in &ids {
        if t != "vdc" {
            assert_eq!(image_of(&inc, id)["kind"], "incremental", "{inc}");
        }
    }
    record(&v, &g, &ids, &inc, 4, &mut points);

    // A resized disk: a full of it with the reason.
    d.virsh(&["blockresize", "tv-chain", "vdb", "48M"]);
    g.disks[1].1.resize(48 * MIB as usize, 0);
    g.write(1, Some(0x71), 40 * MIB, 64 * 1024);
    let (inc, stderr) = backup(&v, &d, "tv-chain");
    let b_id = &ids.iter().find(|(t, _)| t == "vdb").unwrap().1;
    let b_img = image_of(&inc, b_id);
    assert_eq!(b_img["kind"], "full");
    assert!(
        s(b_img, "reason").contains("was resized from 33554432 to 50331648 bytes"),
        "{b_img}\n{stderr}"
    );
    record(&v, &g, &ids, &inc, 5, &mut points);

    // A checkpoint lost on both sides: a full of every disk, said with the reason.
    d.virsh(&["checkpoint-delete", "tv-chain", "tapevault-6", "--metadata"]);
    v.catalog()
        .delete_libvirt_checkpoint("tv-chain", "tapevault-6")
        .unwrap();
    g.write(0, Some(0x81), 0, 64 * 1024);
    let (full2, stderr) = backup(&v, &d, "tv-chain");
    for (_, id) in &ids {
        assert_eq!(image_of(&full2, id)["kind"], "full", "{full2}");
    }
    assert!(
        s(&full2["images"][0], "reason").contains(
            "checkpoint tapevault-6 is missing in libvirt and the catalog has no XML of it"
        ),
        "{full2}\n{stderr}"
    );
    record(&v, &g, &ids, &full2, 6, &mut points);

    restore_all(&v, &points);
    // No job and no scratch left; one checkpoint.
    assert!(d.try_virsh(&["backup-dumpxml", "tv-chain"]).is_err());
    assert_eq!(
        d.virsh(&["checkpoint-list", "tv-chain", "--name"]).trim(),
        "tapevault-7"
    );
    let j = v.ok(&["vm", "disks", "--libvirt", "tv-chain", "--connect", &d.uri]);
    for x in j["disks"].as_array().unwrap() {
        assert_eq!(x["checkpoints"], serde_json::json!(["tapevault-7"]), "{j}");
        assert!(x.get("qdev").is_none() && x.get("bitmaps").is_none(), "{j}");
    }
    let left: Vec<_> = std::fs::read_dir(v.path("scratch"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "scratch left: {left:?}");
    v.assert_catalog_consistent();
}

/// Starts a backup, sends `sig` as soon as its export socket exists, and returns its
/// exit code and whether the job was caught running.
fn interrupt(
    v: &Vault,
    d: &Libvirtd,
    dom: &str,
    sig: nix::sys::signal::Signal,
) -> (Option<i32>, bool) {
    let a = backup_args(v, d, dom);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut child = v
        .command(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = v.path("scratch").join("tapevault-nbd.sock");
    let t = Instant::now();
    let mut caught = false;
    while t.elapsed() < Duration::from_secs(120) {
        if sock.exists() {
            caught = true;
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).ok();
    let t = Instant::now();
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tapevault did not end within 120 s of {sig}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, caught)
}

#[test]
fn kill9_of_tapevault_mid_backup_then_the_next_run_cleans_up_and_is_right() {
    let Some((v, mut d)) = set_up("1G") else {
        return;
    };
    let disks = [("a", 256 * MIB, "SER-K")];
    d.start_domain("tv-kill", &v.root, &disks);
    let mut g = Guest::new(&d, "tv-kill", &disks);
    g.write(0, Some(0x11), 0, 4 * MIB);
    let ids = disk_ids(&v, &d, "tv-kill");
    let mut points = Points::new();
    let (full, _) = backup(&v, &d, "tv-kill");
    record(&v, &g, &ids, &full, 0, &mut points);

    // Much to read, so the job is caught running.
    for i in 0..12u64 {
        g.write(0, Some(0x20 + i as u8), (8 + i * 16) * MIB, 16 * MIB);
    }
    // SIGTERM mid-backup: the job is ended before tapevault exits (128 + 15).
    let (code, caught) = interrupt(&v, &d, "tv-kill", nix::sys::signal::Signal::SIGTERM);
    assert!(caught, "the backup ended before its job was seen running");
    assert_eq!(code, Some(143));
    assert!(
        d.try_virsh(&["backup-dumpxml", "tv-kill"]).is_err(),
        "a backup job is left running after SIGTERM"
    );
    // kill -9 mid-backup: the job outlives the killed process.
    let (_, caught) = interrupt(&v, &d, "tv-kill", nix::sys::signal::Signal::SIGKILL);
    assert!(caught, "the backup ended before its job was seen running");
    assert!(
        d.try_virsh(&["backup-dumpxml", "tv-kill"]).is_ok(),
        "no backup job left running after kill -9"
    );

    let (next, stderr) = backup(&v, &d, "tv-kill");
    assert!(
        stderr.contains(
            "removed what an interrupted backup left in libvirt: backup job of domain tv-kill"
        ),
        "{stderr}"
    );
    // The SIGTERM run's checkpoint went in the killed run, the killed run's now.
    assert!(
        stderr.contains("checkpoint tapevault-3 (no image builds on it)"),
        "{stderr}"
    );
    let img = image_of(&next, &ids[0].1);
    assert_eq!(img["kind"], "incremental", "{img}");
    record(&v, &g, &ids, &next, 1, &mut points);
    g.write(0, Some(0x7f), 100 * MIB, 64 * 1024);
    let (inc, _) = backup(&v, &d, "tv-kill");
    assert_eq!(image_of(&inc, &ids[0].1)["kind"], "incremental");
    record(&v, &g, &ids, &inc, 2, &mut points);
    restore_all(&v, &points);
    assert_eq!(
        d.virsh(&["checkpoint-list", "tv-kill", "--name"]).trim(),
        "tapevault-5"
    );
    v.assert_catalog_consistent();
}

#[test]
fn after_the_domains_qemu_was_killed_the_next_backup_is_a_full_with_libvirts_reason() {
    let Some((v, mut d)) = set_up("512M") else {
        return;
    };
    let disks = [("a", 32 * MIB, "SER-X")];
    d.start_domain("tv-crash", &v.root, &disks);
    let mut g = Guest::new(&d, "tv-crash", &disks);
    g.write(0, Some(0x11), 0, MIB);
    let ids = disk_ids(&v, &d, "tv-crash");
    let mut points = Points::new();
    let (full, _) = backup(&v, &d, "tv-crash");
    record(&v, &g, &ids, &full, 0, &mut points);
    // The checkpoint's bitmap was created in this QEMU run: after kill -9 it is gone,
    // while libvirt still lists the checkpoint.
    d.kill9_qemu_and_restart("tv-crash", "vda");
    g.write(0, Some(0x22), 4 * MIB, MIB);
    let (j, stderr) = backup(&v, &d, "tv-crash");
    let img = image_of(&j, &ids[0].1);
    assert_eq!(img["kind"], "full", "{img}");
    assert!(
        s(img, "reason").contains("libvirt refused the incremental from checkpoint tapevault-1"),
        "{img}\n{stderr}"
    );
    record(&v, &g, &ids, &j, 1, &mut points);
    g.write(0, Some(0x33), 8 * MIB, 64 * 1024);
    let (j, _) = backup(&v, &d, "tv-crash");
    assert_eq!(image_of(&j, &ids[0].1)["kind"], "incremental", "{j}");
    record(&v, &g, &ids, &j, 2, &mut points);
    restore_all(&v, &points);
    v.assert_catalog_consistent();
}

#[test]
fn a_raw_disk_is_read_whole_each_time_beside_a_qcow2_disks_incrementals() {
    let Some((v, mut d)) = set_up("512M") else {
        return;
    };
    let disks = [("a", 16 * MIB, "SER-Q"), ("r.raw", 8 * MIB, "SER-R")];
    d.start_domain("tv-raw", &v.root, &disks);
    let mut g = Guest::new(&d, "tv-raw", &disks);
    g.write(0, Some(0x11), 0, MIB);
    g.write(1, Some(0x12), MIB, MIB);
    let ids = disk_ids(&v, &d, "tv-raw");
    let mut points = Points::new();
    let (full, _) = backup(&v, &d, "tv-raw");
    // No guest agent channel: crash-consistent, said with the reason.
    assert_eq!(full["point_in_time"]["consistency"], "crash", "{full}");
    assert!(
        s(&full["point_in_time"], "reason").contains("domain tv-raw has no guest agent channel"),
        "{full}"
    );
    record(&v, &g, &ids, &full, 0, &mut points);
    g.write(0, Some(0x21), 4 * MIB, 64 * 1024);
    g.write(1, Some(0x22), 4 * MIB, 64 * 1024);
    let (next, _) = backup(&v, &d, "tv-raw");
    let q = &ids.iter().find(|(t, _)| t == "vda").unwrap().1;
    let r = &ids.iter().find(|(t, _)| t == "vdb").unwrap().1;
    assert_eq!(image_of(&next, q)["kind"], "incremental", "{next}");
    assert_eq!(image_of(&next, q)["method"], "dirty-bitmap", "{next}");
    // Without a checkpoint bitmap the raw disk's change tracking is not libvirt's.
    assert_ne!(image_of(&next, r)["method"], "dirty-bitmap", "{next}");
    record(&v, &g, &ids, &next, 1, &mut points);
    restore_all(&v, &points);
    v.assert_catalog_consistent();
}

#[test]
fn a_guest_agent_that_does_not_answer_gives_a_crash_consistent_backup_with_the_reason() {
    let Some((v, mut d)) = set_up("512M") else {
        return;
    };
    // The domain has a guest agent channel, but no guest OS runs an agent behind it
    // (the positive path, a real freeze, needs a guest OS and is not tested here).
    let disks = [("a", 32 * MIB, "SER-G")];
    d.start_domain_with("tv-agent", &v.root, &disks, AGENT_CHANNEL);
    let mut g = Guest::new(&d, "tv-agent", &disks);
    g.write(0, Some(0x11), 0, MIB);
    let ids = disk_ids(&v, &d, "tv-agent");
    let mut points = Points::new();
    let extra = ["--freeze-timeout".to_string(), "5".to_string()];
    for n in 0..2 {
        let r = backup_with(&v, &d, "tv-agent", &extra);
        let p = &r.json["point_in_time"];
        eprintln!("point_in_time: {p}");
        assert_eq!(p["driver"], "libvirt", "{p}");
        assert_eq!(p["consistency"], "crash", "{p}");
        assert!(p["frozen_filesystems"].is_null(), "{p}");
        assert!(
            s(p, "reason").contains("the guest agent's freeze"),
            "{p}\n{}",
            r.stderr
        );
        assert!(
            r.stderr.contains(
                "point in time of domain tv-agent: crash-consistent (the guest agent's freeze"
            ),
            "{}",
            r.stderr
        );
        let kind = if n == 0 { "full" } else { "incremental" };
        assert_eq!(image_of(&r.json, &ids[0].1)["kind"], kind, "{}", r.json);
        record(&v, &g, &ids, &r.json, n, &mut points);
        g.write(0, Some(0x20 + n as u8), 4 * MIB, 64 * 1024);
    }
    // No job left, the domain runs on.
    assert!(d.try_virsh(&["backup-dumpxml", "tv-agent"]).is_err());
    assert_eq!(d.virsh(&["domstate", "tv-agent"]).trim(), "running");
    restore_all(&v, &points);
    v.assert_catalog_consistent();
}

/// The change id an image of the catalog recorded.
fn change_id(v: &Vault, j: &serde_json::Value, id: &str) -> String {
    let img: uuid::Uuid = s(image_of(j, id), "image").parse().unwrap();
    v.catalog()
        .image(img)
        .unwrap()
        .unwrap()
        .change_id
        .unwrap_or_default()
}

/// The granularity of a bitmap stored in a qcow2 image (the domain shut off).
fn stored_granularity(image: &std::path::Path, bitmap: &str) -> Option<u64> {
    let o = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(image)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.pointer("/format-specific/data/bitmaps")?
        .as_array()?
        .iter()
        .find(|b| b["name"] == bitmap)?["granularity"]
        .as_u64()
}

fn qemu_img(args: &[&str]) {
    let o = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_checkpoint_bitmap_re_created_with_another_granularity_gives_a_full_with_the_reason() {
    let Some((v, mut d)) = set_up("512M") else {
        return;
    };
    let disks = [("a", 32 * MIB, "SER-GR")];
    d.start_domain("tv-gran", &v.root, &disks);
    let image = v.root.join("a.qcow2");
    let mut g = Guest::new(&d, "tv-gran", &disks);
    g.write(0, Some(0x11), 0, MIB);
    let ids = disk_ids(&v, &d, "tv-gran");
    let id = &ids[0].1;
    let mut points = Points::new();
    let (full, _) = backup(&v, &d, "tv-gran");
    // The granularity is recorded with the epoch.
    assert_eq!(
        change_id(&v, &full, id),
        format!(
            "libvirt-checkpoint:tapevault-1:size={}:granularity=65536",
            32 * MIB
        )
    );
    record(&v, &g, &ids, &full, 0, &mut points);

    // QEMU stores the checkpoint's bitmap in the image when it shuts down: the
    // granularity recorded is the one QEMU gave it, and the next run reads it there.
    d.virsh(&["destroy", "tv-gran"]);
    assert_eq!(stored_granularity(&image, "tapevault-1"), Some(65536));
    d.virsh(&["start", "tv-gran"]);
    g.write(0, Some(0x22), 4 * MIB, 64 * 1024);
    let (inc, stderr) = backup(&v, &d, "tv-gran");
    assert_eq!(image_of(&inc, id)["kind"], "incremental", "{inc}\n{stderr}");
    record(&v, &g, &ids, &inc, 1, &mut points);

    // The epoch's bitmap re-created with another granularity while the domain is off
    // (libvirt still lists the checkpoint, and would take the incremental): a full,
    // with the reason.
    d.virsh(&["destroy", "tv-gran"]);
    let img = image.to_string_lossy().into_owned();
    qemu_img(&["bitmap", "--remove", &img, "tapevault-2"]);
    qemu_img(&["bitmap", "--add", "-g", "16384", &img, "tapevault-2"]);
    assert_eq!(stored_granularity(&image, "tapevault-2"), Some(16384));
    d.virsh(&["start", "tv-gran"]);
    g.write(0, Some(0x33), 8 * MIB, 64 * 1024);
    let (j, stderr) = backup(&v, &d, "tv-gran");
    let img_j = image_of(&j, id);
    assert_eq!(img_j["kind"], "full", "{img_j}\n{stderr}");
    assert!(
        s(img_j, "reason").contains(
            "the bitmap of checkpoint tapevault-2 on disk vda has granularity 16384 bytes, the epoch recorded 65536"
        ),
        "{img_j}\n{stderr}"
    );
    record(&v, &g, &ids, &j, 2, &mut points);
    g.write(0, Some(0x44), 12 * MIB, 64 * 1024);
    let (j, _) = backup(&v, &d, "tv-gran");
    assert_eq!(image_of(&j, id)["kind"], "incremental", "{j}");
    record(&v, &g, &ids, &j, 3, &mut points);
    restore_all(&v, &points);
    v.assert_catalog_consistent();
}

/// A TCP port free on loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_tcp_export_plain_and_with_tls_restores_bit_identical_and_a_wrong_ca_is_refused() {
    if libvirt_missing() {
        return;
    }
    let v = Vault::small(4, "512M");
    v.pool("p", "off");
    let certs = v.path("x509");
    std::fs::create_dir_all(&certs).unwrap();
    if !x509::make_qemu_x509(&certs) {
        return;
    }
    // The server side of the export's TLS is libvirt's (qemu.conf), as on a hypervisor.
    let mut d = Libvirtd::start_with(
        &v.root,
        &format!(
            "backup_tls_x509_cert_dir = \"{}\"\nbackup_tls_x509_verify = 1\n",
            certs.join("srv").display()
        ),
    );
    let disks = [("a", 32 * MIB, "SER-T")];
    d.start_domain("tv-tcp", &v.root, &disks);
    let mut g = Guest::new(&d, "tv-tcp", &disks);
    g.write(0, Some(0x11), 0, 2 * MIB);
    let ids = disk_ids(&v, &d, "tv-tcp");
    let id = &ids[0].1;
    let mut points = Points::new();
    let run = |extra: &[String]| run_backup(&v, &d, "tv-tcp", extra);

    // Plain TCP.
    let port = free_port();
    let r = run(&["--nbd-listen".into(), format!("127.0.0.1:{port}")]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "the disks were exported by the domain's QEMU on nbd://127.0.0.1:{port}"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(image_of(&r.json, id)["kind"], "full");
    record(&v, &g, &ids, &r.json, 0, &mut points);

    // TLS, verified both ways (libvirt's backup_tls_x509_verify, our CA check).
    g.write(0, Some(0x22), 8 * MIB, 128 * 1024);
    let port = free_port();
    let cli = certs.join("cli").to_string_lossy().into_owned();
    let r = run(&[
        "--nbd-listen".into(),
        format!("127.0.0.1:{port}"),
        "--tls-creds-dir".into(),
        cli.clone(),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "the disks were exported by the domain's QEMU on nbds://127.0.0.1:{port}"
        )),
        "{}",
        r.stderr
    );
    let img = image_of(&r.json, id);
    assert_eq!(img["kind"], "incremental", "{img}");
    assert_eq!(img["method"], "dirty-bitmap", "{img}");
    record(&v, &g, &ids, &r.json, 1, &mut points);

    // A CA that did not sign libvirt's server certificate: refused, the job ended,
    // the chain unharmed.
    g.write(0, Some(0x33), 16 * MIB, 64 * 1024);
    let other = certs.join("other");
    std::fs::copy(
        certs.join("cli/client-cert.pem"),
        other.join("client-cert.pem"),
    )
    .unwrap();
    std::fs::copy(
        certs.join("cli/client-key.pem"),
        other.join("client-key.pem"),
    )
    .unwrap();
    let r = run(&[
        "--nbd-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--tls-creds-dir".into(),
        other.to_string_lossy().into_owned(),
    ]);
    assert_ne!(r.code, 0, "a server certificate of another CA was accepted");
    assert!(
        r.stderr.to_lowercase().contains("certificate"),
        "{}",
        r.stderr
    );
    assert!(d.try_virsh(&["backup-dumpxml", "tv-tcp"]).is_err());

    // TLS on a local unix socket export is refused as usage.
    let r = run(&["--tls-creds-dir".into(), cli.clone()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--nbd-listen"), "{}", r.stderr);

    let port = free_port();
    let r = run(&[
        "--nbd-listen".into(),
        format!("127.0.0.1:{port}"),
        "--tls-creds-dir".into(),
        cli,
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(image_of(&r.json, id)["kind"], "incremental", "{}", r.json);
    record(&v, &g, &ids, &r.json, 2, &mut points);
    restore_all(&v, &points);
    v.assert_catalog_consistent();
}
