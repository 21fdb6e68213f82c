//! End to end through the binary: a long chain of incrementals (random writes, zeroed
//! areas, grow and shrink, changed-extents and hash-scan steps), every point restored
//! bit-identical by image and by time.

mod common;

use common::*;

/// How one step of the chain changes the disk and what the backup must do.
struct Step {
    /// New size before writing (grow or shrink), if any.
    resize: Option<u64>,
    /// Give a changed-extents file continuing the change-id chain.
    cbt: bool,
    /// Zero an area of data.
    zero: bool,
    /// Expected method: "changed-extents" or "hash-scan".
    method: &'static str,
}

const fn step(resize: Option<u64>, cbt: bool, zero: bool, method: &'static str) -> Step {
    Step {
        resize,
        cbt,
        zero,
        method,
    }
}

#[test]
fn every_point_of_a_chain_of_twelve_incrementals_restores_bit_identical() {
    let mut v = Vault::small(4, "64M");
    v.pool("p", "zstd:3");
    let mut disk = TestDisk::create(v.path("disk.img"), 4 * MIB, 3 * MIB, 7);
    // Some zeros inside the data and a tail of holes.
    disk.write_zeros(MIB, 300 * KIB);

    // The full records change id c0 (the first changed-extents answer of a new disk
    // covers it whole).
    let cbt = v.path("cbt.json");
    write_changed_extents(&cbt, "*", "c0", &[(0, disk.size())]);
    v.now = Some(test_time(0));
    let full = v.backup(&disk, "p", &["--changed-extents", cbt.to_str().unwrap()]);
    assert_eq!(s(&full, "kind"), "full");
    assert_eq!(s(&full, "method"), "full");
    assert!(full["parent"].is_null());
    assert_eq!(u(&full, "disk_size"), 4 * MIB);
    let mut points = vec![(
        s(&full, "image").to_string(),
        test_time(0),
        v.path("p0.img"),
    )];
    disk.save_copy(&points[0].2);

    let odd = 3 * MIB + 5 * 4096; // not a multiple of the 64 KiB tracking block
    let steps = [
        step(None, true, false, "changed-extents"),
        step(None, true, true, "changed-extents"),
        step(None, true, false, "changed-extents"),
        // Grown: the changed-extents file cannot be trusted across a size change.
        step(Some(6 * MIB + 12288), true, false, "hash-scan"),
        // That fallback recorded no change id, so the next file is not trusted either
        // (only a full starts a new change-tracking epoch).
        step(None, true, true, "hash-scan"),
        step(None, false, false, "hash-scan"),
        step(None, false, true, "hash-scan"),
        step(Some(odd), false, false, "hash-scan"),
        step(None, false, true, "hash-scan"),
        // Grown again: what lay beyond the shrink point must come back as zeros.
        step(Some(5 * MIB), false, false, "hash-scan"),
        step(None, false, true, "hash-scan"),
        step(None, false, false, "hash-scan"),
    ];
    let mut change_id = "c0".to_string();
    for (i, st) in steps.iter().enumerate() {
        let n = i + 1;
        let old_size = disk.size();
        let mut areas = Vec::new();
        if let Some(sz) = st.resize {
            disk.resize(sz);
            if sz > old_size {
                // The new space: some data, the rest zeros.
                let data = (sz - old_size) / 2;
                disk.write_random(old_size, data);
                areas.push((old_size, sz - old_size));
            } else if sz % TRACK != 0 {
                // The last tracking block is now shorter: it changed.
                areas.push((sz - sz % TRACK, sz % TRACK));
            }
        }
        areas.extend(disk.random_writes(1 + n % 3, 200 * KIB));
        if st.zero {
            areas.push(disk.random_zero(400 * KIB));
        }
        let size = disk.size();
        let mut extra = Vec::new();
        let next_id = format!("c{n}");
        if st.cbt {
            write_changed_extents(&cbt, &change_id, &next_id, &areas);
            extra = vec![
                "--changed-extents".to_string(),
                cbt.to_string_lossy().into(),
            ];
        }
        let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        v.now = Some(test_time(n as u64));
        let img = v.backup(&disk, "p", &extra);
        let prev = &points.last().unwrap().0;
        assert_eq!(s(&img, "kind"), "incremental", "step {n}: {img}");
        assert_eq!(s(&img, "method"), st.method, "step {n}: {img}");
        assert_eq!(
            s(&img, "parent"),
            prev,
            "step {n} must build on the previous point"
        );
        assert_eq!(u(&img, "disk_size"), size, "step {n}");
        if st.resize.is_some() && st.cbt {
            let reason = s(&img, "reason");
            assert!(
                reason.contains("size"),
                "step {n}: a resize must be given as the reason for not trusting the changed extents: {reason}"
            );
        } else if st.resize.is_some() {
            // Without a changed-extents file the hash scan handles a resize, but says so:
            // a size change may also mean another disk was given this UUID.
            let reason = s(&img, "reason");
            let how = if size > old_size { "grew" } else { "shrank" };
            assert!(
                reason.contains(how) && reason.contains(&size.to_string()),
                "step {n}: the resize must be said out loud: {reason}"
            );
        } else if st.cbt && st.method == "hash-scan" {
            let reason = s(&img, "reason");
            assert!(
                reason.contains("recorded no change id"),
                "step {n}: the untrusted file must be explained: {reason}"
            );
        } else {
            assert!(img["reason"].is_null(), "step {n}: {img}");
        }
        // Only what changed is read and written: never more than the touched tracking
        // blocks, and the random writes are surely among them.
        let covered = u(&img, "data_bytes") + u(&img, "zero_bytes");
        let touched = tracked_bytes(&areas, size);
        assert!(
            covered <= touched,
            "step {n}: {covered} bytes written, but only {touched} bytes of tracking blocks changed"
        );
        assert!(covered > 0, "step {n}: the changes must be in the image");
        if st.cbt {
            change_id = next_id;
        } else {
            // The image records no change id: a changed-extents file now would not
            // match (that case is tested in backup_change_id.rs).
            change_id = String::new();
        }
        let copy = v.path(&format!("p{n}.img"));
        disk.save_copy(&copy);
        points.push((s(&img, "image").to_string(), test_time(n as u64), copy));
    }
    assert!(points.len() >= 11);

    // The catalog agrees with what the backups reported: complete, chained.
    for w in points.windows(2) {
        let row = v.image_row(&w[1].0);
        assert_eq!(row.status.as_str(), "complete");
        assert_eq!(row.parent_uuid.map(|p| p.to_string()), Some(w[0].0.clone()));
    }

    v.assert_catalog_consistent();

    v.now = None;
    for (n, (image, time, expected)) in points.iter().enumerate() {
        let out = v.path(&format!("r{n}.img"));
        let r = v.restore_image(disk.id, image, &out);
        assert_eq!(
            r.code, 0,
            "restore of point {n} (image {image}) failed: {}",
            r.stderr
        );
        assert_same_bytes(&out, expected, &format!("point {n} restored by --image"));
        std::fs::remove_file(&out).unwrap();
        let r = v.restore_at(disk.id, time, &out);
        assert_eq!(
            r.code, 0,
            "restore of point {n} (--at {time}) failed: {}",
            r.stderr
        );
        assert_same_bytes(
            &out,
            expected,
            &format!("point {n} restored by --at {time}"),
        );
        std::fs::remove_file(&out).unwrap();
    }
    // A time between two points gives the earlier one.
    let out = v.path("between.img");
    let between = test_time(5).replace("T05:00:00Z", "T05:30:00Z");
    let r = v.restore_at(disk.id, &between, &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &points[5].2, "restore --at between points 5 and 6");
}
