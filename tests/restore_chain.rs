//! End to end through the binary: backups of a changing disk, then every point of the
//! chain restored bit-identical.

#[path = "restore_support.rs"]
mod support;

use std::os::unix::fs::MetadataExt;

use support::*;
use uuid::Uuid;

#[test]
fn restore_every_point_of_a_chain_with_overwrites_zeroes_and_resizes() {
    let env = Env::new(4, "256M");
    env.ok(&["pool", "create", "p"]);
    let id = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 3 << 20, 1);
    let mut points = Vec::new();
    for i in 0..12u32 {
        match i {
            0 => {}
            3 => disk.zero(100_000, 700_000),
            5 => disk.resize(4 << 20), // grows
            6 => disk.write_random((4 << 20) - 70_000, 70_000),
            8 => disk.resize((3 << 20) + 12_345), // shrinks to an odd size
            _ => disk.scribble(3),
        }
        let t = time(i);
        let image = env.backup(&disk.path, id, "p", &t, &[]);
        let copy = env.path(&format!("point{i}.img"));
        disk.snapshot(&copy);
        points.push((t, image, copy));
    }
    for (i, (t, image, copy)) in points.iter().enumerate() {
        let out = env.path(&format!("restored{i}.img"));
        let r = env.restore(id, &["--at", t], &out);
        assert_eq!(r.code, 0, "restore of point {i} failed: {}", r.stderr);
        assert_same(copy, &out);
        let v = r.json();
        assert_eq!(v["image"].as_str().unwrap(), image.to_string());
        assert!(r.stderr.contains("cartridges needed"), "pull list first");
        // The target image is always read whole, so its digest is checked.
        let last = v["images"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["image"].as_str().unwrap(), image.to_string());
        if !last["read"].is_null() {
            assert_eq!(last["read"]["digest_checked"], true, "{last}");
        }
        // By image UUID as well.
        let out2 = env.path(&format!("restored{i}b.img"));
        let r = env.restore(id, &["--image", &image.to_string()], &out2);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_same(copy, &out2);
    }
    // Latest = the last point; zero runs stay holes (sparse output).
    let out = env.path("latest.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&points.last().unwrap().2, &out);
    let m = std::fs::metadata(&out).unwrap();
    assert!(
        m.blocks() * 512 < m.len(),
        "zero areas must stay holes: {} bytes allocated of {}",
        m.blocks() * 512,
        m.len()
    );
}

#[test]
fn restore_locates_past_superseded_segments_and_reports_skipped_records() {
    // 48 MiB of data = 96 records = two catalog segments (64 records each at most).
    let env = Env::new(4, "512M");
    env.ok(&["pool", "create", "p", "--compression", "off"]);
    let id = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 48 << 20, 2);
    disk.write_random(0, 48 << 20);
    let full = env.backup(&disk.path, id, "p", &time(0), &[]);
    assert_eq!(env.segments(full).len(), 2);
    // Overwrite exactly what the first segment holds.
    let first = env.segments(full)[0].clone();
    disk.write_random(
        first.disk_start,
        (first.disk_end - first.disk_start) as usize,
    );
    let inc = env.backup(&disk.path, id, "p", &time(1), &[]);
    let out = env.path("out.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&disk.path, &out);
    let v = r.json();
    let imgs = v["images"].as_array().unwrap();
    assert_eq!(imgs[0]["image"].as_str().unwrap(), full.to_string());
    let read = &imgs[0]["read"];
    assert_eq!(read["segments_skipped"], 1, "{read}");
    assert_eq!(read["segments_read"], 1);
    assert_eq!(
        read["records_skipped"],
        first.last_seq - first.first_seq + 1
    );
    assert_eq!(read["digest_checked"], false);
    assert_eq!(imgs[1]["image"].as_str().unwrap(), inc.to_string());
    assert_eq!(imgs[1]["read"]["digest_checked"], true);
}

#[test]
fn restore_of_an_image_spanning_three_cartridges() {
    // 4 MiB cartridges with a 512 KiB early-warning zone: 10 MiB of data spans 3+.
    let env = Env::new(6, "4M");
    env.ok(&["pool", "create", "p", "--compression", "off"]);
    let id = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 10 << 20, 3);
    disk.write_random(0, 10 << 20);
    let full = env.backup(&disk.path, id, "p", &time(0), &[]);
    let mut carts: Vec<String> = env.segments(full).into_iter().map(|s| s.barcode).collect();
    carts.dedup();
    assert!(carts.len() >= 3, "image spans only {carts:?}");
    disk.scribble(4);
    env.backup(&disk.path, id, "p", &time(1), &[]);
    let out = env.path("out.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&disk.path, &out);
    let pulled: Vec<String> = r.json()["pull_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["barcode"].as_str().unwrap().to_string())
        .collect();
    for c in &carts {
        assert!(
            pulled.contains(c),
            "{c} missing from the pull list {pulled:?}"
        );
    }
    // Verify reads every part across the cartridges.
    let r = env.run(&["--json", "verify", "--image", &full.to_string()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["read"]["digest_checked"], true);
    // A cartridge holding a continuation part checks every record; the part's digest
    // covers earlier parts too, so it is noted, not checked.
    let r = env.run(&["--json", "verify", "--barcode", &carts[1]]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    let part = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["image"] == full.to_string())
        .unwrap()
        .clone();
    assert!(part["part"].as_u64().unwrap() > 0);
    assert!(part["records"].as_u64().unwrap() > 0);
    assert!(
        part["notes"][0].as_str().unwrap().contains("continues"),
        "{part}"
    );
}

/// Restoring onto a block device writes zeros explicitly where the disk is zero (the
/// device is filled with garbage first). Opt-in: attach a file of at least 8 MiB to a
/// loop device and run
/// `TAPEVAULT_TEST_BLOCKDEV=/dev/loopN cargo test --test restore_chain -- --ignored`.
#[test]
#[ignore = "needs a block device (loop device) named in TAPEVAULT_TEST_BLOCKDEV"]
fn restore_to_a_block_device_writes_zero_extents() {
    use std::io::{Read, Write};
    let dev = std::path::PathBuf::from(
        std::env::var_os("TAPEVAULT_TEST_BLOCKDEV").expect("TAPEVAULT_TEST_BLOCKDEV"),
    );
    let env = Env::new(4, "128M");
    env.ok(&["pool", "create", "p"]);
    let id = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 6 << 20, 21);
    env.backup(&disk.path, id, "p", &time(0), &[]);
    disk.zero(0, 300_000);
    disk.scribble(2);
    env.backup(&disk.path, id, "p", &time(1), &[]);
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
        f.write_all(&vec![0xAA; 6 << 20]).unwrap();
        f.sync_all().unwrap();
    }
    let r = env.restore(id, &[], &dev);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["block_device"], true);
    let mut got = vec![0u8; 6 << 20];
    std::fs::File::open(&dev)
        .unwrap()
        .read_exact(&mut got)
        .unwrap();
    let want = std::fs::read(&disk.path).unwrap();
    assert!(got == want, "the device differs from the disk");
}
