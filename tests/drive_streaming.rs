//! Keeping a modelled drive streaming, through the binary: a backup session flushes the
//! drive once (its commit point) whatever the number of images, a session killed before
//! that point counts none of its images, and a source slower than the drive's lowest
//! speed is spooled and written in bursts (`--spool`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn write_manifest(path: &Path, name: &str, disks: &[&TestDisk]) {
    let mut t = format!("name = \"{name}\"\n");
    for d in disks {
        t.push_str(&format!(
            "\n[[disk]]\nid = \"{}\"\npath = \"{}\"\n",
            d.id,
            d.path.display()
        ));
    }
    std::fs::write(path, t).unwrap();
}

#[test]
fn a_session_of_several_images_stops_the_tape_once() {
    // Slow enough that any host feeds it faster than its lowest speed, a small buffer
    // and a short penalty: every flush followed by a write costs one reposition.
    let v = Vault::init(&[
        "--slots",
        "2",
        "--drives",
        "1",
        "--capacity",
        "256M",
        "--drive-model",
        "speed=40M,min=20M,buffer=4Mi,reposition=10ms",
    ]);
    v.pool("p", "off");
    // A first session labels the cartridge into the media set (a label is written and
    // flushed once in a cartridge's life); the session measured appends.
    let first = TestDisk::create(v.path("first.img"), MIB, MIB, 39);
    v.backup(&first, "p", &[]);
    let lib = vtl_sim::Library::open(&v.library_dir()).unwrap();
    let before = lib.drive_stats(0).unwrap();
    let disks: Vec<TestDisk> = (0..3)
        .map(|i| TestDisk::create(v.path(&format!("d{i}.img")), 3 * MIB, 3 * MIB, 40 + i))
        .collect();
    let m = v.path("vm.toml");
    write_manifest(&m, "vm", &disks.iter().collect::<Vec<_>>());
    let report = v.backup_manifest(&m, "p", &[]);
    let st = lib.drive_stats(0).unwrap();
    let (repositions, underruns) = (
        st.repositions - before.repositions,
        st.buffer_underruns - before.buffer_underruns,
    );
    // One flush at the session's commit point (before the catalog snapshot): the
    // snapshot's write starts the tape once. A flush after each image trailer cost one
    // more per image (3 here). Stops because the host fell behind (underruns, which a
    // loaded machine may cause) are not the session's flushes.
    assert!(repositions <= underruns + 1, "{before:?} -> {st:?}");
    assert!(st.bytes_written - before.bytes_written >= 9 * MIB, "{st:?}");
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for (d, img) in disks.iter().zip(images) {
        assert_eq!(s(img, "disk"), d.id.to_string());
        let out = v.path(&format!("r-{}.img", d.id));
        let r = v.restore_image(d.id, s(img, "image"), &out);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_same_bytes(&out, &d.path, "restored disk");
        assert_eq!(
            v.image_row(s(img, "image")).status,
            tapevault::catalog::ImageStatus::Complete
        );
    }
    v.assert_catalog_consistent();
}

/// nbdkit serving `file` throttled to `rate` bytes/s on a Unix socket.
fn throttled(file: &Path, sock: &Path, rate: &str) -> Option<Child> {
    let child = Command::new("nbdkit")
        .args(["--foreground", "--exit-with-parent", "--readonly", "-U"])
        .arg(sock)
        .args(["--filter=rate", "file"])
        .arg(file)
        .arg(format!("rate={rate}"))
        // A small bucket: the source is throttled from its first request on.
        .arg("burstiness=0.5")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    sock.exists().then_some(child)
}

#[test]
fn a_slow_source_is_spooled_and_written_in_bursts() {
    if !Command::new("nbdkit")
        .args(["--filter=rate", "file", "--dump-plugin"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        eprintln!("skipping: nbdkit with its rate filter is not installed");
        return;
    }
    // The drive's lowest speed (2 MB/s) is twice the source's (8 Mbit/s = 1 MB/s); its
    // buffer starts the tape at 512 KiB, and a full one lasts a quarter second (a
    // writer held up by a loaded machine for less does not let it run dry).
    let v = Vault::init(&[
        "--slots",
        "2",
        "--drives",
        "1",
        "--capacity",
        "256M",
        "--drive-model",
        "speed=4M,min=2M,buffer=1Mi,reposition=10ms",
    ]);
    v.pool("p", "off");
    let disk = TestDisk::create(v.path("d.img"), 6 * MIB, 6 * MIB, 9);
    let lib = vtl_sim::Library::open(&v.library_dir()).unwrap();
    let mut runs = Vec::new();
    for spool in ["0", "16M"] {
        let sock = v.path(&format!("nbd-{spool}.sock"));
        let Some(mut server) = throttled(&disk.path, &sock, "8M") else {
            eprintln!("skipping: nbdkit did not start");
            return;
        };
        let before = lib.drive_stats(0).unwrap();
        let src = format!("nbd+unix:///?socket={}", sock.display());
        let id = disk.id.to_string();
        let j = v.ok(&[
            "backup",
            "--disk",
            &src,
            "--disk-id",
            &id,
            "--pool",
            "p",
            "--full",
            "--spool",
            spool,
        ]);
        let _ = server.kill();
        let _ = server.wait();
        let after = lib.drive_stats(0).unwrap();
        let img = s(&j["images"][0], "image").to_string();
        let out = v.path(&format!("r-{spool}.img"));
        let r = v.restore_image(disk.id, &img, &out);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_same_bytes(&out, &disk.path, "restored disk");
        runs.push(after.buffer_underruns - before.buffer_underruns);
    }
    // Without a spool the drive's buffer runs dry after each record or so (the source
    // delivers 1 MB/s, the drive takes at least 2); with a spool twice the disk (a
    // burst starts at half of it) the image goes to the drive in one burst.
    eprintln!("buffer underruns without a spool, with 16 MiB: {runs:?}");
    // How many times the drive runs dry without a spool depends on how the source's
    // bursts fall against the drive's buffer (1 to 6 seen on an idle machine); that the
    // spool does better is what is checked.
    assert!(
        runs[0] >= 1 && runs[0] > runs[1],
        "underruns without a spool: {runs:?}"
    );
    // (At most one: a machine starved of CPU can hold the writer back once even from a
    // full spool; without a spool it is one per record or so.)
    assert!(runs[1] <= 1, "underruns with a 16 MiB spool: {runs:?}");
    v.assert_catalog_consistent();
}

#[test]
fn a_session_killed_before_its_commit_point_counts_none_of_its_images() {
    let v = Vault::small(2, "256M");
    v.pool("p", "off");
    let first = TestDisk::create(v.path("first.img"), MIB, MIB, 50);
    let j = v.backup(&first, "p", &[]);
    let bc = j["barcodes"][0]
        .as_str()
        .expect("the first image's cartridge")
        .to_string();
    let disks: Vec<TestDisk> = (0..3)
        .map(|i| TestDisk::create(v.path(&format!("k{i}.img")), 3 * MIB, 3 * MIB, 60 + i))
        .collect();
    let m = v.path("vm.toml");
    write_manifest(&m, "vm", &disks.iter().collect::<Vec<_>>());
    // Slow writes; kill the session once two of its three images are on tape (their
    // trailers written, the drive not yet flushed: the session flushes after its last).
    v.slow_writes(&bc, 100, 100_000);
    let before = v.cartridge_data_len(&bc);
    let ms = m.to_string_lossy().into_owned();
    let mut child = v
        .command(&["backup", "--manifest", &ms, "--pool", "p"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while v.cartridge_data_len(&bc) < before + 6 * MIB + 64 * 1024 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the backup never wrote"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::fs::remove_file(v.cartridge_dir(&bc).join("faults.json")).unwrap();

    // None of the session's images counts: written, never flushed, never committed.
    let cat = v.catalog();
    for d in &disks {
        for img in cat.images(Some(d.id)).unwrap() {
            assert_ne!(
                img.status,
                tapevault::catalog::ImageStatus::Complete,
                "disk {}: {img:?}",
                d.id
            );
        }
    }
    drop(cat);
    // The next session backs every disk up (fulls: nothing of the killed one is a base),
    // each restores bit-identical, and the catalog is consistent again.
    let report = v.backup_manifest(&m, "p", &[]);
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for (d, img) in disks.iter().zip(images) {
        assert_eq!(s(img, "kind"), "full", "{img}");
        let out = v.path(&format!("r-{}.img", d.id));
        let r = v.restore_image(d.id, s(img, "image"), &out);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_same_bytes(&out, &d.path, "restored disk");
    }
    let first_row = v.image_row(s(&j, "image"));
    assert_eq!(first_row.status, tapevault::catalog::ImageStatus::Complete);
    v.assert_catalog_consistent();
}
