//! Locks: two jobs never write one pool's media set at once (the second fails clearly
//! and nothing is lost), rotation skips a pool a job is writing, and a stale lock left
//! by a dead process is reported and taken over.

mod rotation_support;

use std::time::{Duration, Instant};

use rotation_support::*;
use tapevault::catalog::ImageStatus;

const DISK: &str = "5a1e0000-0000-4000-8000-0000000000c1";

#[test]
fn a_second_backup_to_a_busy_pool_fails_clearly_and_nothing_is_lost() {
    let tv = Tv::init(4, 1, "4M");
    tv.ok(&["pool", "create", "p", "--compression", "off"]);
    let disk = tv.path("d.img");
    write_disk(&disk, 256 << 10, 5);
    // Every cartridge's writes hang a while, so the first backup holds the pool lock.
    let mut lib = tv.library();
    for c in lib.cartridges().unwrap() {
        lib.set_faults(
            &c.barcode,
            vtl_sim::Faults {
                hang: Some(vtl_sim::Hang {
                    op: vtl_sim::FaultOp::Write,
                    millis: 400,
                    times: 3,
                }),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let args = [
        "--json",
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        "p",
    ];
    let first = tv
        .cmd(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = tv.home().join("locks/pool-p.lock");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&lock)
        .unwrap_or_default()
        .contains("backup to pool p")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the first backup never took the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = tv.run(&args);
    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second.stderr.contains("pool-p.lock is locked by pid"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains(&format!("pid {}", first.id())),
        "{}",
        second.stderr
    );
    assert_eq!(second.json()["kind"], "failed");
    // Rotation meanwhile leaves the pool alone.
    let rot = tv.json(&["rotate", "--apply"]);
    assert!(
        rot["result"]["skipped_pools"][0]
            .as_str()
            .unwrap()
            .contains("pool p skipped"),
        "{rot}"
    );
    assert!(rot["plan"]["locks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["state"] == "held"));
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing lost: one complete image, no running leftovers, one session.
    let cat = tv.catalog();
    let imgs = cat.images(None).unwrap();
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].status, ImageStatus::Complete);
    assert_eq!(cat.sessions().unwrap().len(), 1);
    // Now the pool is free again.
    let args = &args[1..];
    tv.json(args);
    assert_eq!(tv.catalog().images(None).unwrap().len(), 2);
}

#[test]
fn a_stale_lock_of_a_dead_process_is_reported_and_taken_over() {
    let tv = Tv::init(3, 1, "1M");
    tv.ok(&["pool", "create", "p", "--compression", "off"]);
    let locks = tv.home().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    // A process that died holding the lock leaves its note; the kernel freed the flock.
    std::fs::write(
        locks.join("pool-p.lock"),
        "pid 999999 (backup to pool p, since 2026-01-01T00:00:00Z)",
    )
    .unwrap();
    let rot = tv.json(&["rotate"]);
    let l = &rot["plan"]["locks"][0];
    assert_eq!(l["state"], "stale", "{rot}");
    assert!(l["note"].as_str().unwrap().contains("999999"));
    let disk = tv.path("d.img");
    write_disk(&disk, 16 << 10, 6);
    let r = tv.ok(&[
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        "p",
    ]);
    assert!(r.stderr.contains("stale lock of pool p"), "{}", r.stderr);
    // The finished backup cleared its note: nothing stale any more.
    let rot = tv.json(&["rotate"]);
    assert!(rot["plan"]["locks"].as_array().unwrap().is_empty(), "{rot}");
}

#[test]
fn relabelling_kept_restore_points_is_refused_and_force_says_what_was_lost() {
    let tv = Tv::init(3, 1, "1M");
    tv.ok(&[
        "pool",
        "create",
        "p",
        "--compression",
        "off",
        "--retention",
        "30",
    ]);
    let disk = tv.path("d.img");
    write_disk(&disk, 16 << 10, 8);
    let b = tv.json(&[
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        "p",
    ]);
    let bc = b["images"][0]["barcodes"][0].as_str().unwrap().to_string();
    let img = b["images"][0]["image"].as_str().unwrap().to_string();
    let r = tv.run(&["label", &bc, "--pool", "p"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&img) && r.stderr.contains("within the 30-day retention"),
        "{}",
        r.stderr
    );
    let l = tv.json(&["label", &bc, "--pool", "p", "--force"]);
    assert_eq!(l["overwritten"][0], img.as_str());
    let i = tv.catalog().image(img.parse().unwrap()).unwrap().unwrap();
    assert_eq!(i.status, ImageStatus::Corrupt);
    assert!(i.note.unwrap().contains("overwritten"));
}
