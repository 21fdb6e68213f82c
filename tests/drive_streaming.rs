//! Keeping a modelled drive streaming, through the binary: a backup session flushes the
//! drive once (its commit point) whatever the number of images, a session killed before
//! that point counts none of its images, and a source slower than the drive's lowest
//! speed is spooled and written in bursts by the default spool while a fast one streams
//! through it, measured with a source whose pace the test sets.

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
    // One flush, at the session's commit point after the catalog snapshot and the
    // end-of-session marker, and no write after it: the session never stops the tape
    // to write again. A flush before the snapshot cost one reposition, and a flush
    // after each image trailer one more per image (3 here). Stops because the host
    // fell behind (underruns, which a loaded machine may cause) are not the session's
    // flushes.
    assert!(repositions <= underruns, "{before:?} -> {st:?}");
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

/// nbdkit serving `file` on a Unix socket, each read held until the test opens the
/// gate far enough: the file `gate` holds how many bytes from the start may be read;
/// `served` gets the end of each read served. The source's pace is the test's.
fn gated(file: &Path, gate: &Path, served: &Path, sock: &Path) -> Option<Child> {
    let script = sock.with_extension("sh");
    std::fs::write(gate, "0").unwrap();
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/bash
case "$1" in
  get_size) stat -c %s '{file}' ;;
  pread)
    end=$(( $4 + $3 ))
    while [ "$(cat '{gate}')" -lt "$end" ]; do sleep 0.01; done
    dd if='{file}' skip="$4" count="$3" iflag=skip_bytes,count_bytes status=none
    echo "$end" >> '{served}' ;;
  *) exit 2 ;;
esac
"#,
            file = file.display(),
            gate = gate.display(),
            served = served.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let child = Command::new("nbdkit")
        .args(["--foreground", "--exit-with-parent", "--readonly", "-U"])
        .arg(sock)
        .arg("sh")
        .arg(&script)
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    sock.exists().then_some(child)
}

/// Wait (at most two minutes, else fail saying `what`) until `ok` holds.
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "waited in vain for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The largest end of a read the gated source served.
fn served_to(served: &Path) -> u64 {
    std::fs::read_to_string(served)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

fn have_nbdkit_sh() -> bool {
    Command::new("nbdkit")
        .args(["sh", "--dump-plugin"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn the_default_spool_writes_a_slow_source_in_bursts_and_streams_a_fast_one() {
    if !have_nbdkit_sh() {
        eprintln!("skipping: nbdkit with its sh plugin is not installed");
        return;
    }
    // The drive writes 4 MB/s and matches down to 2 MB/s (a measuring window of 2 MB
    // for the spool), starts its tape once its 2 MiB buffer is half full, and loses 1 s
    // per reposition. The slow source delivers the disk in steps of 1 MiB, the test
    // pausing at least 2 s after each (a sleep only ever lasts longer): at most
    // 0.5 MB/s, under the lowest speed. Without a spool each step reaches the drive as
    // it comes (the test waits until it is on the cartridge): the tape starts, writes
    // the step out in the pause (1 MiB at 2-4 MB/s, at most 0.55 s) and runs dry: one
    // reposition per pause, however loaded the machine. With the default spool (auto:
    // a file, or 128 MiB of memory when the disk has no room) the first window shows
    // the source slow (2 s for at most 1 MiB), and the burst its rate needs is over
    // 8 MB (0.5 MB/s x 1 s x (0.875 / 0.05 - 1)), more than the disk: the image goes to
    // the drive in one burst at its end, the host ahead of the tape, which does not
    // stop unless the writer stalls for a quarter second (allowed once).
    const STEP: u64 = MIB;
    const STEPS: u64 = 4;
    let v = Vault::init(&[
        "--slots",
        "2",
        "--drives",
        "1",
        "--capacity",
        "256M",
        "--drive-model",
        "speed=4M,min=2M,buffer=2Mi,reposition=1s",
    ]);
    v.pool("p", "off");
    let disk = TestDisk::create(v.path("d.img"), STEP * STEPS, STEP * STEPS, 9);
    // A first session labels the cartridge (the one measured appends).
    let first = TestDisk::create(v.path("first.img"), MIB, MIB, 8);
    let j = v.backup(&first, "p", &[]);
    let bc = j["barcodes"][0].as_str().unwrap().to_string();
    let lib = vtl_sim::Library::open(&v.library_dir()).unwrap();
    let mut repositions = Vec::new();
    for (run, spool) in [
        ("slow-0", Some("0")),
        ("slow-default", None),
        ("fast-default", None),
    ] {
        let sock = v.path(&format!("nbd-{run}.sock"));
        let (gate, served) = (
            v.path(&format!("gate-{run}")),
            v.path(&format!("served-{run}")),
        );
        let mut server =
            gated(&disk.path, &gate, &served, &sock).expect("nbdkit with the sh plugin starts");
        let before = lib.drive_stats(0).unwrap();
        let on_tape = v.cartridge_data_len(&bc);
        let src = format!("nbd+unix:///?socket={}", sock.display());
        let id = disk.id.to_string();
        let mut args = vec![
            "backup",
            "--disk",
            &src,
            "--disk-id",
            &id,
            "--pool",
            "p",
            "--full",
        ];
        if let Some(s) = spool {
            args.extend(["--spool", s]);
        }
        let child = v
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if run == "fast-default" {
            // Three quarters of the disk at once, the source's own pace (far above
            // 2 MB/s): the spool streams after its first window, so the drive gets
            // records while the source still holds back the last quarter.
            let end = STEP * (STEPS - 1);
            std::fs::write(&gate, end.to_string()).unwrap();
            wait_until("the source to serve three quarters", || {
                served_to(&served) >= end
            });
            wait_until(
                "a quarter of the disk on the cartridge before the source ended",
                || v.cartridge_data_len(&bc) >= on_tape + STEP,
            );
            assert!(
                served_to(&served) < STEP * STEPS,
                "the source ended before the test let it"
            );
            std::fs::write(&gate, (STEP * STEPS).to_string()).unwrap();
        } else {
            for step in 1..=STEPS {
                let end = step * STEP;
                std::fs::write(&gate, end.to_string()).unwrap();
                wait_until(&format!("the source to serve {end} bytes"), || {
                    served_to(&served) >= end
                });
                if spool == Some("0") {
                    // Each step reaches the drive before the pause.
                    wait_until(&format!("{end} bytes of the disk on the cartridge"), || {
                        v.cartridge_data_len(&bc) >= on_tape + end
                    });
                } else if step < STEPS {
                    // Spooled: nothing of the image but its header reached the drive.
                    assert!(
                        v.cartridge_data_len(&bc) < on_tape + STEP / 2,
                        "with the default spool, {} bytes reached the cartridge after {end} bytes of a slow source",
                        v.cartridge_data_len(&bc) - on_tape
                    );
                }
                if step < STEPS {
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
        let out = child.wait_with_output().unwrap();
        let _ = server.kill();
        let _ = server.wait();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let after = lib.drive_stats(0).unwrap();
        let img = s(&j["images"][0], "image").to_string();
        let r = v.restore_image(disk.id, &img, &v.path(&format!("r-{run}.img")));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_same_bytes(
            &v.path(&format!("r-{run}.img")),
            &disk.path,
            "restored disk",
        );
        repositions.push(after.repositions - before.repositions);
    }
    eprintln!("repositions (no spool, default with a slow source, default with a fast one): {repositions:?}");
    assert!(
        repositions[0] >= STEPS - 1,
        "without a spool the drive stopped {} times in {} pauses",
        repositions[0],
        STEPS - 1
    );
    assert!(
        repositions[1] <= 1,
        "with the default spool the drive stopped {} times for a slow source",
        repositions[1]
    );
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

#[test]
fn the_spool_is_an_unnamed_file_and_its_settings_are_checked_before_anything_is_written() {
    let v = Vault::small(2, "256M");
    v.pool("p", "off");
    let first = TestDisk::create(v.path("first.img"), MIB, MIB, 70);
    let j = v.backup(&first, "p", &["--spool", "auto"]);
    let bc = j["barcodes"][0].as_str().unwrap().to_string();
    // The default spool directory is made in the home by a file spool, and holds
    // nothing afterwards (the spool file never had a name).
    let dir = v.home.join("spool");
    assert!(dir.is_dir(), "{}", dir.display());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);

    let disk = TestDisk::create(v.path("d.img"), 4 * MIB, 4 * MIB, 71);
    let path = disk.path.to_string_lossy().into_owned();
    let id = disk.id.to_string();
    let on_tape = v.cartridge_data_len(&bc);
    let backup = |extra: &[&str]| {
        let mut a = vec!["backup", "--disk", &path, "--disk-id", &id, "--pool", "p"];
        a.extend_from_slice(extra);
        v.run(&a)
    };
    // A spool directory that does not exist; more than its file system holds; not a
    // size: exit 2, naming the value and the way out, and nothing written.
    let missing = v.path("no-such-dir");
    let r = backup(&["--spool", "auto", "--spool-dir", missing.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("no-such-dir") && r.stderr.contains("--spool"),
        "{}",
        r.stderr
    );
    let r = backup(&["--spool", "1000000T"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("free") && r.stderr.contains("--spool auto"),
        "{}",
        r.stderr
    );
    let r = backup(&["--spool", "lots"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("lots"), "{}", r.stderr);
    // The home's spool_dir, relative to the home, must exist too.
    let cfg = v.home.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("spool_dir = \"myspool\"\n{text}")).unwrap();
    let r = backup(&["--spool", "auto"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("myspool"), "{}", r.stderr);
    assert_eq!(v.cartridge_data_len(&bc), on_tape, "a refused backup wrote");
    std::fs::create_dir(v.home.join("myspool")).unwrap();
    // The pool's drive speeds (pools.toml), for the spool's bursts: a bad value is
    // exit 2 naming the pool, the setting and the value, before anything is written.
    let pools = v.home.join("pools.toml");
    std::fs::write(&pools, "[pools.p]\ndrive_speeds = \"speed=fast\"\n").unwrap();
    let r = backup(&[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("drive_speeds")
            && r.stderr.contains("fast")
            && r.stderr.contains("pool p"),
        "{}",
        r.stderr
    );
    assert_eq!(v.cartridge_data_len(&bc), on_tape, "a refused backup wrote");
    std::fs::write(
        &pools,
        "[pools.p]\ndrive_speeds = \"speed=300M,min=100M,reposition=3s\"\n",
    )
    .unwrap();
    // Once the directory exists the backup spools there (and leaves nothing in it); an
    // explicit size, the default and --spool 0 work too; each image restores.
    for (i, extra) in [
        &["--spool", "auto"][..],
        &["--spool", "300M"][..],
        &[][..],
        &["--spool", "0"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let r = backup(extra);
        assert_eq!(r.code, 0, "{extra:?}: {}", r.stderr);
        let out = v.path(&format!("r{i}.img"));
        let rr = v.restore_image(disk.id, s(&r.json["images"][0], "image"), &out);
        assert_eq!(rr.code, 0, "{}", rr.stderr);
        assert_same_bytes(&out, &disk.path, "restored disk");
        assert_eq!(
            std::fs::read_dir(v.home.join("myspool")).unwrap().count(),
            0
        );
    }
    v.assert_catalog_consistent();
}
