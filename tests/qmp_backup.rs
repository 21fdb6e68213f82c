//! `tapevault backup --qmp` of a running TCG QEMU with two disks, through the binary:
//! a full and incrementals from QEMU's dirty bitmaps (written, zeroed ranges), every
//! point of both disks restored bit-identical; `vm disks` lists the identities; a
//! QEMU killed with -9 makes the next backup a full, said with the reason.

mod common;
mod qmp_support;

use std::path::Path;

use common::{assert_same_bytes, s, u, Vault};
use qmp_support::{qemu_missing, Vm};
use tapevault::source::qmp::QmpClient;

const MIB: u64 = 1024 * 1024;

fn backup(v: &Vault, vm: &Vm) -> (serde_json::Value, String) {
    let qmp = vm.qmp.to_string_lossy().to_string();
    let scratch = vm.dir.join("scratch").to_string_lossy().to_string();
    let r = v.run(&[
        "backup",
        "--qmp",
        &qmp,
        "--scratch-dir",
        &scratch,
        "--pool",
        "p",
    ]);
    assert_eq!(r.code, 0, "backup --qmp failed: {}\n{}", r.stdout, r.stderr);
    (r.json, r.stderr)
}

fn image_of<'a>(j: &'a serde_json::Value, disk: &str) -> &'a serde_json::Value {
    j["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["disk"].as_str() == Some(disk))
        .unwrap_or_else(|| panic!("no image of disk {disk} in {j}"))
}

fn save(model: &[u8], path: &Path) {
    std::fs::write(path, model).unwrap();
}

#[test]
fn a_running_vm_full_and_incrementals_restore_every_point_of_both_disks() {
    if qemu_missing() {
        return;
    }
    let v = Vault::small(4, "512M");
    v.pool("p", "off");
    let vm = Vm::start(
        &v.root,
        &[("a", 64 * MIB, "SER-A"), ("b", 32 * MIB, "SER-B")],
        false,
    );
    let mut w = vm.test_monitor();
    let mut model = vec![vec![0u8; 64 * MIB as usize], vec![0u8; 32 * MIB as usize]];
    let write =
        |w: &mut QmpClient, model: &mut Vec<Vec<u8>>, i: usize, p: u8, off: u64, len: u64| {
            vm.write(w, i, p, off, len);
            model[i][off as usize..(off + len) as usize].fill(p);
        };
    write(&mut w, &mut model, 0, 0x11, 0, 4 * MIB);
    write(&mut w, &mut model, 0, 0x12, 40 * MIB, MIB);
    write(&mut w, &mut model, 1, 0x21, 8 * MIB, 2 * MIB);

    // The identities a backup takes, from `vm disks`.
    let qmp = vm.qmp.to_string_lossy().to_string();
    drop(w);
    let disks = v.ok(&["vm", "disks", "--qmp", &qmp]);
    let ids: Vec<String> = disks["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["disk"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{disks}");
    assert_eq!(disks["disks"][0]["serial"], "SER-A");
    let mut w = vm.test_monitor();

    let (full, stderr) = backup(&v, &vm);
    assert!(
        stderr.contains(
            "point in time of the VM: crash-consistent (no guest agent socket was given)"
        ),
        "{stderr}"
    );
    let mut points: Vec<Vec<(String, std::path::PathBuf)>> = vec![Vec::new(), Vec::new()];
    for (i, id) in ids.iter().enumerate() {
        let img = image_of(&full, id);
        assert_eq!(img["kind"], "full", "{img}");
        let copy = v.path(&format!("d{i}-p0.raw"));
        save(&model[i], &copy);
        points[i].push((s(img, "image").to_string(), copy));
    }
    // Full reads only what is allocated.
    assert!(u(image_of(&full, &ids[0]), "read_bytes") <= 5 * MIB + 2 * 64 * 1024);

    for k in 1..=3u64 {
        write(
            &mut w,
            &mut model,
            0,
            0x30 + k as u8,
            k * 3 * MIB,
            256 * 1024,
        );
        write(&mut w, &mut model, 1, 0x40 + k as u8, k * MIB, 64 * 1024);
        // Zeroing data: dirty ranges that read as zeros must come back as zeros.
        vm.write_zeroes(&mut w, 0, 40 * MIB + (k - 1) * 256 * 1024, 256 * 1024);
        let z = (40 * MIB + (k - 1) * 256 * 1024) as usize;
        model[0][z..z + 256 * 1024].fill(0);
        let (inc, _) = backup(&v, &vm);
        for (i, id) in ids.iter().enumerate() {
            let img = image_of(&inc, id);
            assert_eq!(img["kind"], "incremental", "point {k} disk {i}: {img}");
            assert_eq!(img["method"], "dirty-bitmap", "point {k} disk {i}: {img}");
            let read = u(img, "read_bytes");
            assert!(
                read <= 256 * 1024 + 2 * 64 * 1024,
                "point {k} disk {i}: read {read}"
            );
            let copy = v.path(&format!("d{i}-p{k}.raw"));
            save(&model[i], &copy);
            points[i].push((s(img, "image").to_string(), copy));
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let id: uuid::Uuid = id.parse().unwrap();
        for (k, (image, copy)) in points[i].iter().enumerate() {
            let out = v.path(&format!("r{i}-{k}.raw"));
            let r = v.restore_image(id, image, &out);
            assert_eq!(r.code, 0, "restore of disk {i} point {k}: {}", r.stderr);
            assert_same_bytes(&out, copy, &format!("disk {i} point {k}"));
        }
    }
    // Nothing of tapevault's is left in QEMU but one epoch bitmap per disk.
    let d = v.ok(&["vm", "disks", "--qmp", &qmp]);
    for disk in d["disks"].as_array().unwrap() {
        let names: Vec<&str> = disk["bitmaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("tapevault-"));
    }
    let scratch: Vec<_> = std::fs::read_dir(vm.dir.join("scratch"))
        .unwrap()
        .flatten()
        .collect();
    assert!(scratch.is_empty(), "scratch left: {scratch:?}");
    v.assert_catalog_consistent();
}

#[test]
fn after_qemu_was_killed_the_next_backup_is_a_full_with_the_reason() {
    if qemu_missing() {
        return;
    }
    let v = Vault::small(4, "512M");
    v.pool("p", "off");
    let mut vm = Vm::start(&v.root, &[("a", 32 * MIB, "SER-A")], false);
    backup(&v, &vm);
    vm.kill9();
    vm.boot();
    let (j, stderr) = backup(&v, &vm);
    let img = &j["images"][0];
    assert_eq!(img["kind"], "full", "{img}");
    assert!(stderr.contains("bitmap tapevault-1 is missing"), "{stderr}");
    let (j, _) = backup(&v, &vm);
    assert_eq!(j["images"][0]["kind"], "incremental");
}
