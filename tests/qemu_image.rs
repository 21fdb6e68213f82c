//! Backups of qcow2 images through the offline image driver, against the real
//! qemu-img, qemu-io and qemu-nbd (skipped with a printed reason when missing): a chain
//! of a full and ten incrementals with writes, zeroing and discards, every point
//! restored bit-identical; resize, in-use bitmaps and foreign bitmaps; kill -9 of
//! tapevault in the middle of the epoch switch; a remote NBD export over TLS.

mod common;
#[path = "../nbd-client/tests/support/x509.rs"]
mod x509;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use uuid::Uuid;

fn to_raw(img: &Path, out: &Path) {
    run_tool(
        Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(img)
            .arg(out),
    );
}

/// (name, flags) of every bitmap.
fn bitmaps(img: &Path) -> Vec<(String, Vec<String>)> {
    qemu_img_info(img)["format-specific"]["data"]["bitmaps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn ours(img: &Path) -> Vec<String> {
    bitmaps(img)
        .into_iter()
        .map(|b| b.0)
        .filter(|n| n.starts_with("tapevault-"))
        .collect()
}

fn new_qcow2(img: &Path, size: &str) {
    run_tool(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(img)
            .arg(size),
    );
}

/// A vault with pool p, and a qcow2 image `vm.qcow2` of `size` in it with these
/// qemu-io commands run on it; None when a QEMU tool is missing (the reason printed).
fn image_with(size: &str, writes: &[&str]) -> Option<(Vault, PathBuf)> {
    if !have_qemu() {
        return None;
    }
    let v = vault();
    let img = v.root.join("vm.qcow2");
    new_qcow2(&img, size);
    qemu_io(&img, writes);
    Some((v, img))
}

/// Restores `image` of disk `id` and compares it with the qcow2 image as it is now.
fn assert_restores_as_now(v: &Vault, img: &Path, id: Uuid, image: &str, what: &str) {
    let copy = v.path("now.raw");
    to_raw(img, &copy);
    let out = v.path("restored.raw");
    let rr = v.restore_image(id, image, &out);
    assert_eq!(rr.code, 0, "{}", rr.stderr);
    assert_same_bytes(&out, &copy, what);
}

/// Polls `done` every 20 ms for up to `secs` seconds; whether it came true.
fn wait_for(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !done() {
        if t.elapsed() > Duration::from_secs(secs) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// `backup` of the image as disk `id` into pool p, then `extra`.
fn backup_args(img: &Path, id: Uuid, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["backup", "--disk"].map(String::from).to_vec();
    a.push(format!("qcow2:{}", img.display()));
    a.extend([
        "--disk-id".into(),
        id.to_string(),
        "--pool".into(),
        "p".into(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn backup(v: &Vault, img: &Path, id: Uuid, extra: &[&str]) -> Value {
    let a = backup_args(img, id, extra);
    let j = v.ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    j["images"][0].clone()
}

fn vault() -> Vault {
    let v = Vault::small(4, "512M");
    v.pool("p", "off");
    v
}

/// Process ids of qemu-nbd processes serving `img`.
fn qemu_nbd_of(img: &Path) -> Vec<u32> {
    let want = img.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("qemu-nbd")) && args.contains(&want) {
            out.push(pid);
        }
    }
    out
}

/// Whether any process still has `img` open. A process on its way out no longer shows
/// its command line (its memory is gone) but keeps its files, and with them its image
/// lock, a little longer.
fn image_open(img: &Path) -> bool {
    let img = img.canonicalize().unwrap_or_else(|_| img.to_path_buf());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        std::fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == img))
        })
    })
}

#[test]
fn a_full_and_ten_incrementals_restore_every_point_bit_identical() {
    let Some((v, img)) = image_with(
        "64M",
        &[
            "write -P 0x11 0 4M",
            "write -P 0x12 20M 1M",
            "write -P 0x13 40M 3M",
        ],
    ) else {
        return;
    };
    let id = Uuid::new_v4();
    let full = backup(&v, &img, id, &[]);
    assert_eq!(full["kind"], "full", "{full}");
    // Only the allocated 8 MiB are read.
    assert_eq!(u(&full, "read_bytes"), 8 * MIB, "{full}");
    assert_eq!(ours(&img).len(), 1, "one epoch bitmap: {:?}", bitmaps(&img));
    let mut points = vec![(s(&full, "image").to_string(), v.path("p0.raw"))];
    to_raw(&img, &points[0].1);

    for i in 1..=10u64 {
        let before = ours(&img);
        let data_at = i * 3 * MIB + 64 * KIB * i;
        let mut cmds = vec![format!("write -P {} {} 256k", 0x20 + i, data_at)];
        // Zeroing of data, and discards (trim) of data: dirty ranges that read as
        // zeros, which must come back as zeros.
        if i % 2 == 1 {
            cmds.push(format!("write -z {} 512k", 40 * MIB + (i / 2) * 512 * KIB));
        } else {
            cmds.push(format!("discard {} 128k", i * 256 * KIB));
        }
        qemu_io(&img, &cmds);
        let r = backup(&v, &img, id, &[]);
        assert_eq!(r["kind"], "incremental", "point {i}: {r}");
        assert_eq!(r["method"], "dirty-bitmap", "point {i}: {r}");
        // Bytes read: the written data (at most two tracking blocks more, for the
        // alignment of a write to 64 KiB), never the zeroed or discarded ranges.
        let read = u(&r, "read_bytes");
        assert!(
            (256 * KIB..=256 * KIB + 2 * TRACK).contains(&read),
            "point {i}: read {read}: {r}"
        );
        assert!(u(&r, "zero_bytes") >= 128 * KIB, "point {i}: {r}");
        // The old epoch's bitmap is gone, one new one in its place.
        let after = ours(&img);
        assert_eq!(after.len(), 1, "point {i}: {:?}", bitmaps(&img));
        assert!(!before.contains(&after[0]), "point {i}: a new epoch");
        let copy = v.path(&format!("p{i}.raw"));
        to_raw(&img, &copy);
        points.push((s(&r, "image").to_string(), copy));
    }
    for (i, (image, copy)) in points.iter().enumerate() {
        let out = v.path(&format!("r{i}.raw"));
        let r = v.restore_image(id, image, &out);
        assert_eq!(r.code, 0, "restore of point {i}: {}", r.stderr);
        assert_same_bytes(&out, copy, &format!("point {i}"));
    }
    v.assert_catalog_consistent();
}

#[test]
fn resize_in_use_bitmaps_and_foreign_bitmaps() {
    let Some((v, img)) = image_with("32M", &["write -P 0x31 1M 2M"]) else {
        return;
    };
    let id = Uuid::new_v4();
    let r = backup(&v, &img, id, &[]);
    assert_eq!(r["kind"], "full");
    // A bitmap tapevault does not own is left alone.
    run_tool(
        Command::new("qemu-img")
            .args(["bitmap", "--add"])
            .arg(&img)
            .arg("someone-elses"),
    );

    // Virtual size change: a full, said with the reason.
    run_tool(Command::new("qemu-img").arg("resize").arg(&img).arg("48M"));
    qemu_io(&img, &["write -P 0x32 40M 64k"]);
    let r = backup(&v, &img, id, &[]);
    assert_eq!(r["kind"], "full", "{r}");
    assert!(
        s(&r, "reason").contains("virtual size") && s(&r, "reason").contains("50331648"),
        "{r}"
    );
    assert!(bitmaps(&img).iter().any(|b| b.0 == "someone-elses"));
    assert_eq!(ours(&img).len(), 1);

    // A writer killed with the image open leaves every bitmap in-use: a full.
    let sock = v.path("rw.sock");
    let mut rw = Command::new("qemu-nbd")
        .args(["-f", "qcow2", "-k"])
        .arg(&sock)
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(10, || sock.exists()), "qemu-nbd listens");
    // qemu-nbd may listen before it has opened the image and flagged its bitmaps
    // in-use. Killed in between, QEMU's crash-safe update leaves the bitmaps extension
    // disabled (every bitmap lost: a full with "missing", as tests/qmp_live.rs checks), so wait for
    // the flags before the kill.
    let all_in_use = || {
        let b = bitmaps(&img);
        b.len() == 2 && b.iter().all(|b| b.1.iter().any(|f| f == "in-use"))
    };
    wait_for(10, all_in_use);
    // While the writer runs (a VM), a backup is refused, saying why, and changes no
    // bitmap: tapevault reads the header itself, and the bitmap change meets the lock.
    let held = bitmaps(&img);
    let a = backup_args(&img, id, &[]);
    let r = v.fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), 1);
    assert!(
        r.stderr.contains("in use by a running process"),
        "{}",
        r.stderr
    );
    assert_eq!(bitmaps(&img), held);
    rw.kill().unwrap();
    rw.wait().unwrap();
    assert!(all_in_use(), "{:?}", bitmaps(&img));
    qemu_io(&img, &["write -P 0x33 8M 64k"]);
    let r = backup(&v, &img, id, &[]);
    assert_eq!(r["kind"], "full", "{r}");
    assert!(s(&r, "reason").contains("in-use"), "{r}");
    let after = ours(&img);
    assert_eq!(after.len(), 1, "{:?}", bitmaps(&img));
    assert!(
        bitmaps(&img)
            .iter()
            .any(|b| b.0 == after[0] && !b.1.iter().any(|f| f == "in-use")),
        "{:?}",
        bitmaps(&img)
    );
    // And the chain goes on from there.
    qemu_io(&img, &["write -P 0x34 9M 64k"]);
    let r = backup(&v, &img, id, &[]);
    assert_eq!(r["method"], "dirty-bitmap", "{r}");
    assert_restores_as_now(&v, &img, id, s(&r, "image"), "after in-use");

    // A copy starts no epoch and removes nothing.
    let before = bitmaps(&img);
    let c = backup(&v, &img, id, &["--copy"]);
    assert_eq!(c["kind"], "copy");
    assert_eq!(bitmaps(&img), before);

    // Two disks resolving to the same image are refused (path and source alike).
    let m = v.path("vm.toml");
    std::fs::write(
        &m,
        format!(
            "name = \"vm\"\n[[disk]]\nid = \"{}\"\nsource = \"qcow2:{}\"\n[[disk]]\nid = \"{}\"\npath = \"{}\"\n",
            Uuid::new_v4(),
            img.display(),
            Uuid::new_v4(),
            img.display()
        ),
    )
    .unwrap();
    let mm = m.to_string_lossy().into_owned();
    let r = v.fails(&["backup", "--manifest", &mm, "--pool", "p"], 2);
    assert!(r.stderr.contains("are the same"), "{}", r.stderr);
}

#[test]
fn kill_of_tapevault_during_the_epoch_switch_loses_no_change() {
    let Some((v, img)) = image_with("64M", &["write -P 0x41 0 8M"]) else {
        return;
    };
    let id = Uuid::new_v4();
    let full = backup(&v, &img, id, &[]);
    let barcode = full["barcodes"][0].as_str().unwrap().to_string();
    let base_bitmap = ours(&img);
    assert_eq!(base_bitmap.len(), 1);

    // Changes of the epoch being switched; then kill -9 while the image is written
    // (after the new bitmap was added, before the commit).
    qemu_io(&img, &["write -P 0x42 2M 1M", "write -z 6M 1M"]);
    v.slow_writes(&barcode, 200, 200);
    let a = backup_args(&img, id, &[]);
    let mut child = v
        .command(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(30, || !qemu_nbd_of(&img).is_empty()),
        "the backup started qemu-nbd"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ours(&img).len(), 2, "the new epoch's bitmap was added");
    child.kill().unwrap();
    child.wait().unwrap();
    // qemu-nbd dies with tapevault.
    assert!(
        wait_for(10, || qemu_nbd_of(&img).is_empty()),
        "qemu-nbd outlived tapevault"
    );
    // ...and let go of the image (its lock goes with its last file).
    assert!(
        wait_for(10, || !image_open(&img)),
        "the image is still open after tapevault and its qemu-nbd died"
    );
    std::fs::remove_file(v.cartridge_dir(&barcode).join("faults.json")).unwrap();

    // A bitmap a crash after the commit would leave behind (the old epoch's name, but
    // unknown to the catalog) is cleaned up too.
    run_tool(
        Command::new("qemu-img")
            .args(["bitmap", "--add"])
            .arg(&img)
            .arg("tapevault-00000000deadbeef"),
    );
    qemu_io(&img, &["write -P 0x43 30M 64k"]);

    // The next backup builds on the full with the old epoch's bitmap: every change
    // since the full is in it.
    assert_next_backup_builds_on(&v, &img, id, &full, &base_bitmap[0], "after the kill");
}

/// Each disk's qemu-nbd is stopped once its image is read instead of being held until
/// the session commits: in a session of three images on one drive (slow tape writes
/// stretch every disk's records and the session's end), each image's qemu-nbd is gone
/// by the time the next one's starts (give or take the old one's exit, which is not
/// waited for), and each old epoch's bitmap is still retired at the commit.
#[test]
fn each_qemu_nbd_stops_once_its_image_is_read() {
    if !have_qemu() {
        return;
    }
    let v = vault();
    let imgs: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = v.root.join(format!("d{i}.qcow2"));
            new_qcow2(&p, "16M");
            qemu_io(&p, &["write -P 0x51 0 8M"]);
            p
        })
        .collect();
    let mut m = String::from("name = \"three\"\n");
    for p in &imgs {
        m += &format!(
            "\n[[disk]]\nid = \"{}\"\nsource = \"qcow2:{}\"\n",
            Uuid::new_v4(),
            p.display()
        );
    }
    let manifest = v.path("three.toml");
    std::fs::write(&manifest, m).unwrap();
    let first = v.backup_manifest(&manifest, "p", &[]);
    let barcode = first["images"][0]["barcodes"][0]
        .as_str()
        .unwrap()
        .to_string();
    let old: Vec<Vec<String>> = imgs.iter().map(|p| ours(p)).collect();
    for p in &imgs {
        qemu_io(p, &["write -P 0x52 1M 1M"]);
    }
    v.slow_writes(&barcode, 100, 10_000);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let imgs = imgs.clone();
        std::thread::spawn(move || {
            // When each image's qemu-nbd was first and last seen.
            let t0 = Instant::now();
            let mut seen: Vec<Option<(Duration, Duration)>> = vec![None; imgs.len()];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, p) in imgs.iter().enumerate() {
                    if !qemu_nbd_of(p).is_empty() {
                        let now = t0.elapsed();
                        let s = seen[i].get_or_insert((now, now));
                        s.1 = now;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        })
    };
    let second = v.backup_manifest(&manifest, "p", &[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    std::fs::remove_file(v.cartridge_dir(&barcode).join("faults.json")).unwrap();
    let seen: Vec<(Duration, Duration)> = seen
        .into_iter()
        .map(|s| s.expect("every image was served"))
        .collect();
    for w in seen.windows(2) {
        // Held to the commit, the first image's server outlived the next one's start
        // by the length of two images' writes (over a second with these slow writes);
        // the margin leaves a loaded machine time to let the old one exit.
        assert!(
            w[0].1 < w[1].0 + Duration::from_millis(300),
            "a qemu-nbd outlived its image's reading: served {seen:?}"
        );
    }
    let images = second["images"].as_array().unwrap();
    assert_eq!(images.len(), 3, "{second}");
    for (r, (p, o)) in images.iter().zip(imgs.iter().zip(&old)) {
        assert_eq!(r["method"], "dirty-bitmap", "{r}");
        let now = ours(p);
        assert_eq!(now.len(), 1, "{:?}", bitmaps(p));
        assert_ne!(&now, o, "the old epoch's bitmap was retired at the commit");
    }
    v.assert_catalog_consistent();
}

/// The next backup of `img` is an incremental on `full` from its epoch's bitmap
/// `retired` (then removed, with any other of ours but the new epoch's), and restores
/// the image as it is.
fn assert_next_backup_builds_on(
    v: &Vault,
    img: &Path,
    id: Uuid,
    full: &Value,
    retired: &str,
    what: &str,
) {
    let r = backup(v, img, id, &[]);
    assert_eq!(r["kind"], "incremental", "{r}");
    assert_eq!(r["method"], "dirty-bitmap", "{r}");
    assert_eq!(r["parent"], full["image"], "{r}");
    let now = ours(img);
    assert_eq!(now.len(), 1, "{:?}", bitmaps(img));
    assert!(!now.iter().any(|b| b == retired));
    assert_restores_as_now(v, img, id, s(&r, "image"), what);
    v.assert_catalog_consistent();
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
        .unwrap_or_else(|e| panic!("sending {signal} to {pid}: {e}"));
}

#[test]
fn a_stopped_qemu_nbd_fails_the_backup_at_the_source_timeout_and_commits_nothing() {
    let Some((v, img)) = image_with("96M", &["write -P 0x41 0 96M"]) else {
        return;
    };
    let id = Uuid::new_v4();
    let full = backup(&v, &img, id, &[]);
    let barcode = full["barcodes"][0].as_str().unwrap().to_string();
    let bitmaps_before = ours(&img);

    // A second full, held back by a slow drive (no spool: the source waits for the
    // drive), so it is still reading when its qemu-nbd is stopped (SIGSTOP: the socket
    // stays open and nothing answers, as with a hung server).
    qemu_io(&img, &["write -P 0x42 40M 1M"]);
    v.slow_writes(&barcode, 100, 1000);
    let src = format!("qcow2:{}", img.display());
    let ids = id.to_string();
    let started = Instant::now();
    let mut child = v
        .command(&[
            "backup",
            "--disk",
            &src,
            "--disk-id",
            &ids,
            "--pool",
            "p",
            "--full",
            "--spool",
            "0",
        ])
        .env("TAPEVAULT_SOURCE_TIMEOUT_SECS", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(30, || !qemu_nbd_of(&img).is_empty()),
        "the backup started qemu-nbd"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let servers = qemu_nbd_of(&img);
    assert_eq!(servers.len(), 1, "{servers:?}");
    signal(servers[0], nix::sys::signal::Signal::SIGSTOP);
    let stopped = Instant::now();

    // The backup fails on its own: the read gives up after the source timeout, and
    // tapevault ends its stopped qemu-nbd on the way out.
    let mut exited = None;
    while stopped.elapsed() < Duration::from_secs(60) {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        signal(servers[0], nix::sys::signal::Signal::SIGCONT);
        panic!("the backup still runs 60 s after its qemu-nbd stopped");
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("made no progress for 3 s")
            && stderr.contains("TAPEVAULT_SOURCE_TIMEOUT_SECS"),
        "the error says the source hung and which setting bounds it: {stderr}"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(12),
        "failed {:?} after the stop ({:?} after the start)",
        stopped.elapsed(),
        started.elapsed()
    );
    assert!(
        wait_for(10, || qemu_nbd_of(&img).is_empty()),
        "the stopped qemu-nbd outlived the backup"
    );
    assert!(
        wait_for(10, || !image_open(&img)),
        "the image is still open after the backup failed"
    );

    // Nothing was committed: the catalog keeps the attempt as a failed image with the
    // reason, restorable from nothing; the full's epoch is still the disk's, and the
    // next backup (the drive well again) is an incremental on the full that restores
    // the disk as it is.
    v.clear_faults(&[barcode]);
    let j = v.ok(&["images", "--disk", &ids]);
    let images: Vec<&Value> = j["disks"][0]["chains"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["images"].as_array().unwrap())
        .collect();
    assert_eq!(images.len(), 2, "{j}");
    let failed = images.iter().find(|i| i["image"] != full["image"]).unwrap();
    assert_eq!(failed["status"], "failed", "{j}");
    assert_eq!(failed["restorable"], false, "{j}");
    assert!(
        s(failed, "note").contains("made no progress"),
        "the catalog says why: {j}"
    );
    assert!(
        ours(&img).contains(&bitmaps_before[0]),
        "the full's epoch survives the failed full: {:?}",
        bitmaps(&img)
    );
    // The failed full's unused bitmap goes too.
    assert_next_backup_builds_on(
        &v,
        &img,
        id,
        &full,
        &bitmaps_before[0],
        "after the stopped server",
    );
}

fn make_certs(dir: &Path) -> bool {
    x509::make_qemu_x509(dir)
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_remote_export_over_tcp_with_tls() {
    let Some((v, img)) = image_with("32M", &["write -P 0x51 0 3M", "write -P 0x52 17M 1M"]) else {
        return;
    };
    if !make_certs(&v.root) {
        return;
    }
    let copy = v.path("img.raw");
    to_raw(&img, &copy);
    let mut server = None;
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = Command::new("qemu-nbd");
        c.arg("--object")
            .arg(format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=on",
                v.root.join("srv").display()
            ))
            .args([
                "--tls-creds=tls0",
                "-f",
                "qcow2",
                "--read-only",
                "--persistent",
                "--shared=4",
                "--export-name=disk",
                "--bind=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(&img)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        let t = Instant::now();
        let mut up = false;
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if up {
            server = Some((Killed(child), port));
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let (_server, port) = server.expect("qemu-nbd with TLS listens");
    let id = Uuid::new_v4();
    let m = v.path("vm.toml");
    std::fs::write(
        &m,
        format!(
            "name = \"remote\"\n[[disk]]\nid = \"{id}\"\nsource = \"nbds://localhost:{port}/disk\"\ntls_creds_dir = \"{}\"\n",
            v.root.join("cli").display()
        ),
    )
    .unwrap();
    let j = v.backup_manifest(&m, "p", &[]);
    let r = &j["images"][0];
    assert_eq!(r["kind"], "full", "{r}");
    // base:allocation: only the 4 MiB written are read.
    assert_eq!(u(r, "read_bytes"), 4 * MIB, "{r}");
    let out = v.path("restored.raw");
    let rr = v.restore_image(id, s(r, "image"), &out);
    assert_eq!(rr.code, 0, "{}", rr.stderr);
    assert_same_bytes(&out, &copy, "remote TLS full");
    // An untracked export's next backup is a hash scan.
    let j = v.backup_manifest(&m, "p", &[]);
    assert_eq!(j["images"][0]["method"], "hash-scan", "{j}");
    // Plain text to a TLS-only server fails, naming the export.
    let src = format!("nbd://localhost:{port}/disk");
    let ids = Uuid::new_v4().to_string();
    let r = v.fails(
        &["backup", "--disk", &src, "--disk-id", &ids, "--pool", "p"],
        1,
    );
    assert!(
        r.stderr.contains("TLS") || r.stderr.contains("tls"),
        "{}",
        r.stderr
    );
}

/// Allocated (data) bytes of an image, from `qemu-img map --output=json`.
fn allocated(img: &Path, format: &str) -> u64 {
    let out = run_tool(
        Command::new("qemu-img")
            .args(["map", "-U", "--output=json", "-f", format])
            .arg(img),
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"].as_bool() == Some(true))
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

#[test]
fn restore_into_a_new_qcow2_and_into_an_nbd_export() {
    let Some((v, img)) = image_with("64M", &["write -P 0x61 0 2M", "write -P 0x62 30M 1M"]) else {
        return;
    };
    let id = Uuid::new_v4();
    backup(&v, &img, id, &[]);
    // Zero a written range, so the incremental carries a zero extent.
    qemu_io(&img, &["write -z 1M 512k", "write -P 0x63 50M 64k"]);
    let r = backup(&v, &img, id, &[]);
    assert_eq!(r["method"], "dirty-bitmap");
    let copy = v.path("now.raw");
    to_raw(&img, &copy);
    let ids = id.to_string();

    // A new qcow2 image: bit-identical, and only the data is allocated.
    let q = v.path("restored.qcow2");
    let to = format!("qcow2:{}", q.display());
    v.ok(&["restore", "--disk", &ids, "--to", &to]);
    let raw = v.path("restored-qcow2.raw");
    to_raw(&q, &raw);
    assert_same_bytes(&raw, &copy, "qcow2 target");
    let data = 2 * MIB - 512 * KIB + MIB + 64 * KIB;
    assert_eq!(
        allocated(&q, "qcow2"),
        data,
        "zeros are not written as data"
    );
    // It exists already: refused without --force.
    v.fails(&["restore", "--disk", &ids, "--to", &to], 2);

    // An NBD export (a VM's disk, here a qcow2 full of other data): written in place,
    // zero extents as WRITE_ZEROES, which leave the clusters unallocated.
    let target = v.path("target.qcow2");
    new_qcow2(&target, "64M");
    qemu_io(&target, &["write -P 0x7f 0 64M"]);
    let sock = v.path("t.sock");
    let child = Command::new("qemu-nbd")
        .args([
            "-f",
            "qcow2",
            "--discard=unmap",
            "--persistent",
            "--export-name=vda",
        ])
        .arg(format!("--socket={}", sock.display()))
        .arg(&target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Killed(child);
    wait_for(10, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    let to = format!("nbd+unix:///vda?socket={}", sock.display());
    v.ok(&["restore", "--disk", &ids, "--to", &to]);
    drop(server);
    let raw = v.path("restored-nbd.raw");
    to_raw(&target, &raw);
    assert_same_bytes(&raw, &copy, "NBD export target");
    assert!(
        allocated(&target, "qcow2") <= data + 2 * MIB,
        "zeros were written as data: {} allocated",
        allocated(&target, "qcow2")
    );
}
