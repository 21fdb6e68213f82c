//! `tapevault backup --qmp` of a running TCG QEMU with two disks, through the binary:
//! a full and incrementals from QEMU's dirty bitmaps (written, zeroed ranges), every
//! point of both disks restored bit-identical; `vm disks` lists the identities; a
//! QEMU killed with -9 makes the next backup a full, said with the reason; a manifest
//! with `qmp` picks disks by serial under its own ids and labels; `point_in_time` in the
//! JSON result says the consistency, as docs/schema/backup.json says.

mod common;
#[path = "common/jsonschema.rs"]
mod jsonschema;
mod qmp_support;

use std::path::Path;

use common::{assert_same_bytes, image_of, s, u, Run, Vault};
use qmp_support::{qemu_missing, Vm};
use tapevault::source::qmp::QmpClient;

const MIB: u64 = 1024 * 1024;

/// `tapevault backup --qmp` of `vm` into pool p, with `extra` arguments.
fn backup_command(v: &Vault, vm: &Vm, extra: &[&str]) -> std::process::Command {
    let qmp = vm.qmp.to_string_lossy().to_string();
    let scratch = vm.dir.join("scratch").to_string_lossy().to_string();
    let mut args = vec![
        "backup",
        "--qmp",
        &qmp,
        "--scratch-dir",
        &scratch,
        "--pool",
        "p",
    ];
    args.extend_from_slice(extra);
    v.command(&args)
}

fn backup(v: &Vault, vm: &Vm) -> (serde_json::Value, String) {
    let r = Run::from_output(backup_command(v, vm, &[]).output().unwrap());
    assert_eq!(r.code, 0, "backup --qmp failed: {}\n{}", r.stdout, r.stderr);
    (r.json, r.stderr)
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
    assert_eq!(full["point_in_time"]["driver"], "qmp", "{full}");
    assert_eq!(full["point_in_time"]["consistency"], "crash", "{full}");
    assert!(
        s(&full["point_in_time"], "reason").contains("no guest agent"),
        "{full}"
    );
    assert_backup_schema(&full);
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
    qmp_support::assert_one_epoch_bitmap_per_disk(&v.ok(&["vm", "disks", "--qmp", &qmp]));
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

#[test]
fn a_full_killed_mid_stream_leaves_the_next_backup_an_incremental_on_the_last_image() {
    if qemu_missing() {
        return;
    }
    let v = Vault::small(4, "512M");
    v.pool("p", "off");
    let vm = Vm::start(&v.root, &[("a", 32 * MIB, "SER-A")], false);
    let mut w = vm.test_monitor();
    let mut model = vec![0u8; 32 * MIB as usize];
    vm.write(&mut w, 0, 0x51, 0, 8 * MIB);
    model[..8 * MIB as usize].fill(0x51);
    let (full, _) = backup(&v, &vm);
    let first = &full["images"][0];
    let id = s(first, "disk").to_string();
    let barcode = first["barcodes"][0].as_str().unwrap().to_string();
    vm.write(&mut w, 0, 0x52, 20 * MIB, MIB);
    model[20 * MIB as usize..21 * MIB as usize].fill(0x52);

    // A --full, held back by a slow drive, killed once its point in time is taken (the
    // scratch image exists: the epoch's transaction ran).
    v.slow_writes(&barcode, 200, 1000);
    let scratch_dir = vm.dir.join("scratch");
    let mut child = backup_command(&v, &vm, &["--full"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let taken = || {
        std::fs::read_dir(&scratch_dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "qcow2"))
        })
    };
    while !taken() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "the --full never took its point in time"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the --full ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(1000));
    child.kill().unwrap();
    child.wait().unwrap();
    v.clear_faults(&[barcode]);

    // The epoch of the last image survived the killed full: the next backup is an
    // incremental on it, holding the write made since, and restores the disk.
    vm.write(&mut w, 0, 0x53, 30 * MIB, MIB);
    model[30 * MIB as usize..31 * MIB as usize].fill(0x53);
    let (inc, stderr) = backup(&v, &vm);
    let img = &inc["images"][0];
    assert_eq!(img["kind"], "incremental", "{img}\n{stderr}");
    assert_eq!(img["method"], "dirty-bitmap", "{img}");
    assert_eq!(img["parent"], first["image"], "{img}");
    let read = u(img, "read_bytes");
    assert!(read <= 2 * MIB + 2 * 64 * 1024, "read {read}");
    let copy = v.path("model.raw");
    save(&model, &copy);
    let out = v.path("restored.raw");
    let r = v.restore_image(id.parse().unwrap(), s(img, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &copy, "the incremental after the killed full");
    drop(w);
    let qmp = vm.qmp.to_string_lossy().to_string();
    qmp_support::assert_one_epoch_bitmap_per_disk(&v.ok(&["vm", "disks", "--qmp", &qmp]));
    v.assert_catalog_consistent();
}

fn assert_backup_schema(doc: &serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema");
    let errs = jsonschema::Schemas::new(&dir)
        .validate("backup.json", doc)
        .unwrap();
    assert!(
        errs.is_empty(),
        "backup --json against its schema: {errs:?}\n{doc}"
    );
}

#[test]
fn a_manifest_with_qmp_picks_disks_by_serial_under_its_own_ids() {
    if qemu_missing() {
        return;
    }
    let v = Vault::small(4, "512M");
    v.pool("p", "off");
    let vm = Vm::start(
        &v.root,
        &[("a", 32 * MIB, "SER-A"), ("b", 16 * MIB, "SER-B")],
        false,
    );
    let mut w = vm.test_monitor();
    let mut model = vec![0u8; 16 * MIB as usize];
    vm.write(&mut w, 1, 0x51, MIB, 2 * MIB);
    model[MIB as usize..3 * MIB as usize].fill(0x51);
    let id = uuid::Uuid::new_v4();
    let manifest = v.path("web01.toml");
    let write_manifest = |serial: &str| {
        std::fs::write(
            &manifest,
            format!(
                "name = \"web01\"\nqmp = \"{}\"\n\n[[disk]]\nid = \"{id}\"\nlabel = \"data\"\nserial = \"{serial}\"\n",
                vm.qmp.display()
            ),
        )
        .unwrap();
    };
    write_manifest("SER-B");
    // `manifest check` asks QEMU which image the device has open, changing nothing.
    let m = manifest.to_string_lossy().to_string();
    let c = v.ok(&["manifest", "check", &m]);
    assert_eq!(c["disks"][0]["disk"], id.to_string(), "{c}");
    assert_eq!(c["disks"][0]["size"], 16 * MIB, "{c}");
    assert!(s(&c["disks"][0], "path").ends_with("b.qcow2"), "{c}");
    let scratch = vm.dir.join("scratch").to_string_lossy().to_string();
    let args = [
        "backup",
        "--manifest",
        &m,
        "--scratch-dir",
        &scratch,
        "--pool",
        "p",
    ];
    let r = v.run(&args);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // Only the named disk, under the manifest's id and label; the other is said.
    let imgs = r.json["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 1, "{}", r.json);
    assert_eq!(imgs[0]["disk"], id.to_string());
    assert_eq!(imgs[0]["disk_label"], "data");
    assert_eq!(r.json["vm"], "web01");
    assert_eq!(r.json["point_in_time"]["consistency"], "crash");
    assert!(
        r.stderr.contains("not in the manifest: not backed up") && r.stderr.contains("SER-A"),
        "{}",
        r.stderr
    );
    assert_backup_schema(&r.json);
    let p0 = v.path("b-p0.raw");
    save(&model, &p0);
    let full = s(&imgs[0], "image").to_string();

    // An incremental through the same manifest, from QEMU's bitmap.
    vm.write(&mut w, 1, 0x52, 8 * MIB, 64 * 1024);
    model[8 * MIB as usize..8 * MIB as usize + 64 * 1024].fill(0x52);
    let r = v.run(&args);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let inc = &r.json["images"][0];
    assert_eq!(inc["kind"], "incremental", "{inc}");
    assert_eq!(inc["method"], "dirty-bitmap", "{inc}");
    let p1 = v.path("b-p1.raw");
    save(&model, &p1);
    for (image, copy) in [(full, p0), (s(inc, "image").to_string(), p1)] {
        let out = v.path("out.raw");
        let _ = std::fs::remove_file(&out);
        let rr = v.restore_image(id, &image, &out);
        assert_eq!(rr.code, 0, "{}", rr.stderr);
        assert_same_bytes(&out, &copy, &image);
    }
    // The disk is known by its label.
    let r = v.run(&["images", "--disk", "web01/data"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // A serial the VM does not have: refused, naming what the VM has; nothing written.
    write_manifest("SER-C");
    let r = v.run(&args);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("no device with serial \"SER-C\"") && r.stderr.contains("SER-B"),
        "{}",
        r.stderr
    );
    v.assert_catalog_consistent();
}
