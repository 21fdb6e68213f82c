//! End to end through the binary, with damage: a corrupt incremental on the cartridge,
//! and a backup process killed mid-stream.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// Mark an image corrupt the way a user does: `verify --image` (exit 3).
fn verify_marks_corrupt(v: &Vault, image: &str) {
    let r = v.fails(&["verify", "--image", image], 3);
    assert!(
        r.stderr.contains(image),
        "verify must name the corrupt image: {}",
        r.stderr
    );
    let row = v.image_row(image);
    assert_eq!(
        row.status.as_str(),
        "corrupt",
        "verify must mark {image} corrupt"
    );
}

#[test]
fn restore_before_a_corrupt_incremental_works_and_nothing_builds_on_it() {
    let v = Vault::small(3, "64M");
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("d.img"), 4 * MIB, 3 * MIB, 31);
    let full = v.backup(&d, "p", &[]);
    let mut points = vec![(s(&full, "image").to_string(), v.path("0.copy"))];
    d.save_copy(&points[0].1);
    // i1, i2, i3, i4; i2 changes an area no later image touches, so restoring i3 and
    // i4 needs i2's records.
    let areas: [(u64, u64); 4] = [
        (0, 128 * KIB),
        (MIB, 256 * KIB),
        (2 * MIB, 64 * KIB),
        (3 * MIB, 64 * KIB),
    ];
    for (n, &(o, l)) in areas.iter().enumerate() {
        d.write_random(o, l);
        let img = v.backup(&d, "p", &[]);
        assert_eq!(s(&img, "kind"), "incremental");
        assert_eq!(s(&img, "parent"), points.last().unwrap().0);
        let copy = v.path(&format!("{}.copy", n + 1));
        d.save_copy(&copy);
        points.push((s(&img, "image").to_string(), copy));
    }
    let bad = points[2].0.clone();

    // Flip a byte inside i2's first data record, found through the catalog's segments.
    let segs = v
        .catalog()
        .segments(bad.parse().unwrap())
        .expect("segments");
    assert!(!segs.is_empty(), "the catalog locates i2's records");
    let seg = &segs[0];
    let (_, len) = v.block_location(&seg.barcode, seg.first_block);
    assert!(
        len > 64 * 1024,
        "i2's first record carries its data ({len} bytes)"
    );
    v.flip_byte_in_block(&seg.barcode, seg.first_block);

    // Points before the damage restore bit-identical.
    for (n, (image, expected)) in points.iter().enumerate().take(2) {
        let out = v.path(&format!("r{n}.img"));
        let r = v.restore_image(d.id, image, &out);
        assert_eq!(r.code, 0, "point {n} is before the damage: {}", r.stderr);
        assert_same_bytes(&out, expected, &format!("point {n}"));
    }
    // The damaged point and every later one fail cleanly: exit 3, naming the image
    // and the cartridge.
    for (n, (image, _)) in points.iter().enumerate().skip(2) {
        let out = v.path(&format!("r{n}.img"));
        let r = v.restore_image(d.id, image, &out);
        assert_eq!(
            r.code, 3,
            "point {n} needs the corrupt record: {} {}",
            r.stdout, r.stderr
        );
        assert_eq!(r.json["exit_code"].as_i64(), Some(3), "{}", r.stdout);
        assert!(
            r.stderr.contains(&bad)
                && r.stderr.contains(&seg.barcode)
                && r.stderr.contains(&seg.first_block.to_string()),
            "the error must name image {bad}, cartridge {} and block {}: {}",
            seg.barcode,
            seg.first_block,
            r.stderr
        );
        // Cleanly: no half-restored disk (nor a temp file of it) is left behind.
        let name = format!("r{n}.img");
        let left: Vec<_> = std::fs::read_dir(&v.root)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.contains(&name))
            .collect();
        assert!(left.is_empty(), "a failed restore left {left:?}");
    }

    verify_marks_corrupt(&v, &bad);

    // The next backup builds on i1, the newest image whose whole chain is good: never
    // on i2 or on i3/i4 that depend on it.
    d.write_random(MIB + 512 * KIB, 64 * KIB);
    let next = v.backup(&d, "p", &[]);
    assert_eq!(s(&next, "kind"), "incremental", "{next}");
    assert_eq!(s(&next, "parent"), points[1].0, "must build on i1: {next}");
    // Relative to i1: i2..i4's areas and the new one.
    let since_i1 = [areas[1], areas[2], areas[3], (MIB + 512 * KIB, 64 * KIB)];
    assert_eq!(
        u(&next, "data_bytes") + u(&next, "zero_bytes"),
        tracked_bytes(&since_i1, d.size()),
        "{next}"
    );
    let after = v.backup(&d, "p", &[]);
    assert_eq!(s(&after, "parent"), s(&next, "image"));

    let out = v.path("next.img");
    let r = v.restore_image(d.id, s(&next, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &d.path, "the image built around the damage");
}

#[test]
fn a_backup_killed_mid_stream_is_failed_never_a_base_and_the_next_run_works() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("d.img"), 12 * MIB, 12 * MIB, 41);
    let cbt = v.path("cbt.json");
    let cbt_s = cbt.to_string_lossy().into_owned();
    write_changed_extents(&cbt, "*", "k0", &[(0, d.size())]);
    let full = v.backup(&d, "p", &["--changed-extents", &cbt_s]);
    let bc = full["barcodes"][0].as_str().unwrap().to_string();
    let full_copy = v.path("full.copy");
    d.save_copy(&full_copy);

    // Change most of the disk, then start a changed-extents incremental (k0 -> k1) with
    // slow writes and kill it once it has written a few records.
    d.write_random(0, 8 * MIB);
    write_changed_extents(&cbt, "k0", "k1", &[(0, 8 * MIB)]);
    v.slow_writes(&bc, 40, 1000);
    let before = v.cartridge_data_len(&bc);
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let mut child = v.spawn_quiet(&[
        "backup",
        "--disk",
        &path,
        "--disk-id",
        &id,
        "--pool",
        "p",
        "--changed-extents",
        &cbt_s,
    ]);
    kill_when(&mut child, "the backup", Duration::from_secs(60), || {
        v.cartridge_data_len(&bc) >= before + 3 * 512 * KIB
    });
    std::fs::remove_file(v.cartridge_dir(&bc).join("faults.json")).unwrap();

    // The catalog: the killed image is there, not complete, and not a base.
    let cat = v.catalog();
    let imgs = cat.images(Some(d.id)).unwrap();
    assert_eq!(imgs.len(), 2, "{imgs:?}");
    let killed = imgs
        .iter()
        .find(|i| i.uuid.to_string() != s(&full, "image"))
        .unwrap()
        .clone();
    assert_ne!(killed.status.as_str(), "complete");
    // The catalog's check sees the leftover (and says the next backup repairs it).
    let problems = cat.check().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.subject.contains(&killed.uuid.to_string())),
        "catalog check must report the killed image as stale: {problems:?}"
    );
    drop(cat);

    // The next run, by a script that assumes the killed run succeeded (k1 -> k2):
    // recovers (the killed image becomes failed), does not trust a file relative to the
    // failed image's change id, hash-scans against the full, and starts its tape file
    // after a filemark that closes the killed image's file.
    write_changed_extents(&cbt, "k1", "k2", &[(0, 64 * KIB)]);
    let next = v.backup(&d, "p", &["--changed-extents", &cbt_s]);
    assert_eq!(s(&next, "kind"), "incremental", "{next}");
    assert_eq!(s(&next, "method"), "hash-scan", "{next}");
    let reason = s(&next, "reason");
    assert!(reason.contains("k1") && reason.contains("k0"), "{reason}");
    let next_copy = v.path("next.copy");
    d.save_copy(&next_copy);
    assert_eq!(
        s(&next, "parent"),
        s(&full, "image"),
        "never on the killed image"
    );
    assert_eq!(
        u(&next, "data_bytes") + u(&next, "zero_bytes"),
        8 * MIB,
        "relative to the full, 8 MiB changed: {next}"
    );
    let cat = v.catalog();
    let k = cat.image(killed.uuid).unwrap().unwrap();
    assert_eq!(k.status.as_str(), "failed", "{k:?}");
    assert!(k.note.is_some(), "a failed image says why");
    let session = cat.session(k.session_uuid.unwrap()).unwrap().unwrap();
    assert_eq!(session.status.as_str(), "failed");
    let n = cat.segments(s(&next, "image").parse().unwrap()).unwrap();
    let header_block = n[0].first_block - 1;
    let before_header = header_block - 1;
    assert!(
        is_filemark(&v, &n[0].barcode, before_header),
        "the killed image's tape file must be closed by a filemark before the next image"
    );
    let full_segs = cat.segments(s(&full, "image").parse().unwrap()).unwrap();
    // After the full: its catalog snapshot, its end-of-session marker, the killed
    // image's (closed) file, then the next image.
    assert_eq!(
        n[0].tape_file,
        full_segs[0].tape_file + 4,
        "the next image is in a tape file of its own after the killed one"
    );
    drop(cat);
    v.assert_catalog_consistent();

    // The recovered run did not use its file, so it recorded no change id: the next
    // file (k2 -> k3) is not trusted on its word either, and the chain goes on by hash
    // scan until a full starts a new epoch.
    assert_eq!(v.image_row(s(&next, "image")).change_id, None);
    d.write_random(11 * MIB, 64 * KIB);
    write_changed_extents(&cbt, "k2", "k3", &[(11 * MIB, 64 * KIB)]);
    let last = v.backup(&d, "p", &["--changed-extents", &cbt_s]);
    assert_eq!(s(&last, "method"), "hash-scan", "{last}");
    assert!(
        s(&last, "reason").contains("recorded no change id"),
        "{last}"
    );
    assert_eq!(s(&last, "parent"), s(&next, "image"));

    for (img, expected, what) in [
        (s(&full, "image").to_string(), full_copy.clone(), "the full"),
        (
            s(&next, "image").to_string(),
            next_copy.clone(),
            "the next run",
        ),
        (
            s(&last, "image").to_string(),
            d.path.clone(),
            "the run after",
        ),
    ] {
        let out: PathBuf = v.path(&format!("{}.restored", &img[..8]));
        let r = v.restore_image(d.id, &img, &out);
        assert_eq!(r.code, 0, "{what}: {}", r.stderr);
        assert_same_bytes(&out, &expected, what);
    }
    // The killed image cannot be restored, and says so.
    let out = v.path("killed.img");
    let r = v.restore_image(d.id, &killed.uuid.to_string(), &out);
    assert_ne!(r.code, 0, "a failed image must not restore");
}

fn is_filemark(v: &Vault, barcode: &str, block: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let idx = std::fs::File::open(v.cartridge_dir(barcode).join("index")).unwrap();
    let mut e = [0u8; 16];
    idx.read_exact_at(&mut e, 16 + 16 * block).unwrap();
    u32::from_le_bytes(e[8..12].try_into().unwrap()) & (1 << 31) != 0
}

#[test]
fn a_backup_killed_after_spanning_leaves_every_cartridge_usable() {
    // 4 MiB cartridges with 512 KiB early warning: a 6 MiB full spans two cartridges.
    let v = Vault::init(&[
        "--slots",
        "6",
        "--drives",
        "1",
        "--capacity",
        "4M",
        "--early-warning",
        "512K",
    ]);
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("d.img"), 6 * MIB, 6 * MIB, 61);
    let full = v.backup(&d, "p", &[]);
    let carts: Vec<String> = full["barcodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(carts.len(), 2, "{full}");
    let full_copy = v.path("full.copy");
    d.save_copy(&full_copy);

    // A --full of the changed disk fills the second cartridge, spans onto a blank one,
    // and is killed there (writes to the blank cartridges are slow).
    d.write_random(0, 6 * MIB);
    let blanks: Vec<String> = v
        .catalog()
        .list_media(None)
        .unwrap()
        .into_iter()
        .filter(|m| m.state.as_str() == "blank")
        .map(|m| m.barcode)
        .collect();
    v.slow_writes_on(&blanks, 40, 1000);
    let path = d.path.to_string_lossy().into_owned();
    let id = d.id.to_string();
    let mut child = v.spawn_quiet(&[
        "backup",
        "--disk",
        &path,
        "--disk-id",
        &id,
        "--pool",
        "p",
        "--full",
    ]);
    let mut spanned = None;
    kill_when(
        &mut child,
        "the spanning backup",
        Duration::from_secs(60),
        || {
            spanned = blanks
                .iter()
                .find(|bc| v.cartridge_data_len(bc) >= MIB)
                .cloned();
            spanned.is_some()
        },
    );
    let spanned_to = spanned.expect("spanned");
    v.clear_faults(&blanks);
    let cat = v.catalog();
    assert_eq!(
        cat.media(&carts[1]).unwrap().unwrap().state.as_str(),
        "full",
        "the cartridge that reached early warning is full"
    );
    drop(cat);

    // The next run builds on the first full, appends where the killed run stopped (after
    // closing its tape file), and restores bit-identical.
    let next = v.backup(&d, "p", &[]);
    assert_eq!(s(&next, "kind"), "incremental", "{next}");
    assert_eq!(s(&next, "parent"), s(&full, "image"));
    assert_eq!(u(&next, "data_bytes"), 6 * MIB);
    assert_eq!(next["barcodes"][0].as_str(), Some(spanned_to.as_str()));
    let cat = v.catalog();
    let segs = cat.segments(s(&next, "image").parse().unwrap()).unwrap();
    assert!(is_filemark(&v, &segs[0].barcode, segs[0].first_block - 2));
    let failed: Vec<_> = cat
        .images(Some(d.id))
        .unwrap()
        .into_iter()
        .filter(|i| i.status.as_str() == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "the killed image is failed");
    drop(cat);
    v.assert_catalog_consistent();

    for (img, expected, what) in [
        (s(&full, "image"), &full_copy, "the full"),
        (s(&next, "image"), &d.path, "the run after the kill"),
    ] {
        let out = v.path(&format!("{}.restored", &img[..8]));
        let r = v.restore_image(d.id, img, &out);
        assert_eq!(r.code, 0, "{what}: {}", r.stderr);
        assert_same_bytes(&out, expected, what);
    }
}
