//! End to end through the binary on a virtual library with two drives: `backup
//! --drives 2` writes a 4-disk VM on both drives at once, each onto its own cartridge
//! of the media set; every disk restores bit-identical, incrementals continue each
//! disk's chain, a fast-path and a `--scan` rebuild into new homes find everything, a
//! drive failing mid-session and a SIGKILL mid-session leave a consistent catalog
//! claiming nothing that was not flushed, and the next backup recovers.

mod common;
mod qmp_support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A vault whose library has two drives and eight 64 MiB cartridges.
fn two_drives() -> Vault {
    let v = Vault::init(&["--slots", "8", "--drives", "2", "--capacity", "64M"]);
    v.pool("p", "off");
    v
}

/// Four disks of different sizes (the largest first in no particular order).
fn four_disks(v: &Vault) -> Vec<TestDisk> {
    [(3, 6), (0, 10), (2, 4), (1, 8)]
        .iter()
        .map(|&(i, mib)| {
            TestDisk::create(
                v.path(&format!("d{i}.img")),
                mib * MIB,
                mib * MIB / 2,
                100 + i,
            )
        })
        .collect()
}

fn write_manifest(path: &Path, disks: &[TestDisk]) {
    let mut t = "name = \"vm4\"\n".to_string();
    for d in disks {
        t.push_str(&format!(
            "\n[[disk]]\nid = \"{}\"\npath = \"{}\"\n",
            d.id,
            d.path.display()
        ));
    }
    std::fs::write(path, t).unwrap();
}

fn barcodes(img: &Value) -> Vec<String> {
    img["barcodes"]
        .as_array()
        .unwrap_or_else(|| panic!("barcodes of {img}"))
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect()
}

/// Every disk's image in `report` restores to the bytes of its saved copy.
fn assert_restores(v: &Vault, report: &Value, copies: &HashMap<String, PathBuf>, what: &str) {
    assert_restores_with(v, &[], report, copies, what)
}

/// [`assert_restores`] with the global options `pre` (a passphrase file).
fn assert_restores_with(
    v: &Vault,
    pre: &[&str],
    report: &Value,
    copies: &HashMap<String, PathBuf>,
    what: &str,
) {
    for (disk, img) in by_disk(report) {
        let out = v.path(&format!("restored-{disk}"));
        let _ = std::fs::remove_file(&out);
        let to = out.to_string_lossy().into_owned();
        let mut args = pre.to_vec();
        args.extend([
            "restore",
            "--disk",
            &disk,
            "--image",
            s(&img, "image"),
            "--to",
            &to,
        ]);
        let r = v.run(&args);
        assert_eq!(r.code, 0, "{what}: restore of {disk}: {}", r.stderr);
        assert_same_bytes(&out, &copies[&disk], what);
        std::fs::remove_file(&out).unwrap();
    }
}

fn save_copies(v: &Vault, disks: &[TestDisk], tag: &str) -> HashMap<String, PathBuf> {
    disks
        .iter()
        .map(|d| {
            let p = v.path(&format!("{}-{tag}.copy", d.id));
            d.save_copy(&p);
            (d.id.to_string(), p)
        })
        .collect()
}

/// (image UUID, status) of every image a home's catalog lists.
fn image_statuses(home: &Path) -> HashSet<(String, String)> {
    let cat = tapevault::catalog::Catalog::open(home).unwrap();
    cat.images(None)
        .unwrap()
        .into_iter()
        .map(|i| (i.uuid.to_string(), i.status.as_str().to_string()))
        .collect()
}

fn fresh_home(v: &Vault, name: &str) -> PathBuf {
    let home = v.path(name);
    let lib = v.library_dir();
    let o = std::process::Command::new(BIN)
        .arg("--home")
        .arg(&home)
        .args(["init", "--library", lib.to_str().unwrap()])
        .env_remove("TAPEVAULT_HOME")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    home
}

fn rebuild(home: &Path, extra: &[&str]) -> Value {
    let o = std::process::Command::new(BIN)
        .arg("--home")
        .arg(home)
        .arg("--json")
        .args(["catalog", "rebuild"])
        .args(extra)
        .env_remove("TAPEVAULT_HOME")
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert_eq!(
        o.status.code(),
        Some(0),
        "rebuild {extra:?}: {j:#}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    j
}

#[test]
fn four_disks_on_two_drives_restore_continue_and_rebuild() {
    let v = two_drives();
    let mut disks = four_disks(&v);
    let m = v.path("vm4.toml");
    write_manifest(&m, &disks);
    let ms = m.to_string_lossy().into_owned();

    // --drives takes 1..=64, and not with --synthetic-full.
    for bad in ["0", "65"] {
        v.fails(
            &["backup", "--manifest", &ms, "--pool", "p", "--drives", bad],
            2,
        );
    }
    let r = v.fails(
        &[
            "backup",
            "--synthetic-full",
            "--manifest",
            &ms,
            "--pool",
            "p",
            "--drives",
            "2",
        ],
        2,
    );
    assert!(r.stderr.contains("--drives"), "{}", r.stderr);

    let copies0 = save_copies(&v, &disks, "0");
    let r0 = v.ok(&["backup", "--manifest", &ms, "--pool", "p", "--drives", "2"]);
    let imgs0 = by_disk(&r0);
    assert_eq!(imgs0.len(), 4, "{r0:#}");
    let used: HashSet<String> = imgs0.values().flat_map(barcodes).collect();
    assert!(
        used.len() >= 2,
        "the images are on (at least) two cartridges, one per drive: {used:?}"
    );
    for img in imgs0.values() {
        assert_eq!(s(img, "kind"), "full");
    }
    // The report lists the disks in the order of the manifest.
    let order: Vec<&str> = r0["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| s(i, "disk"))
        .collect();
    let want: Vec<String> = disks.iter().map(|d| d.id.to_string()).collect();
    assert_eq!(order, want);
    assert_restores(&v, &r0, &copies0, "first session");
    v.assert_catalog_consistent();

    // Incrementals continue each disk's chain, again on both drives.
    for d in disks.iter_mut() {
        d.random_writes(3, 256 * KIB);
    }
    let copies1 = save_copies(&v, &disks, "1");
    let r1 = v.ok(&["backup", "--manifest", &ms, "--pool", "p", "--drives", "2"]);
    let imgs1 = by_disk(&r1);
    assert_eq!(imgs1.len(), 4);
    for (disk, img) in &imgs1 {
        assert_eq!(s(img, "kind"), "incremental", "{img}");
        assert_eq!(img["parent"], imgs0[disk]["image"], "{img}");
    }
    let used1: HashSet<String> = imgs1.values().flat_map(barcodes).collect();
    assert!(used1.len() >= 2, "{used1:?}");
    assert_restores(&v, &r1, &copies1, "second session");
    v.assert_catalog_consistent();
    // The segments the catalog holds are where it says on both cartridges, and every
    // cartridge verifies tape file by tape file.
    let chk = v.ok(&["catalog", "check", "--media"]);
    assert!(u(&chk["media"], "segments_checked") > 0, "{chk:#}");
    for bc in &used1 {
        v.ok(&["verify", "--barcode", bc]);
    }

    // The media alone: a fast-path rebuild and a scan into new homes find every image,
    // complete, and restore it.
    let orig = image_statuses(&v.home);
    assert_eq!(orig.len(), 8);
    assert!(orig.iter().all(|(_, st)| st == "complete"), "{orig:?}");
    let fast = fresh_home(&v, "fast");
    let rep = rebuild(&fast, &[]);
    let methods: Vec<&str> = rep["cartridges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| s(c, "method"))
        .collect();
    assert!(
        !methods.contains(&"scan"),
        "every cartridge written carries its own snapshot: {rep:#}"
    );
    assert_eq!(image_statuses(&fast), orig, "fast path: {rep:#}");
    let scan = fresh_home(&v, "scan");
    let rep = rebuild(&scan, &["--scan"]);
    assert_eq!(image_statuses(&scan), orig, "scan: {rep:#}");
    for (home, what) in [(&fast, "fast"), (&scan, "scan")] {
        for (disk, img) in &imgs1 {
            let out = v.path(&format!("{what}-{disk}"));
            let o = std::process::Command::new(BIN)
                .arg("--home")
                .arg(home)
                .args([
                    "restore",
                    "--disk",
                    disk,
                    "--image",
                    s(img, "image"),
                    "--to",
                ])
                .arg(&out)
                .env_remove("TAPEVAULT_HOME")
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_same_bytes(&out, &copies1[disk], what);
            std::fs::remove_file(&out).unwrap();
        }
    }
}

/// The complete images of each disk, newest last (from the catalog).
fn complete_images(v: &Vault, disk: &TestDisk) -> Vec<tapevault::catalog::ImageRow> {
    v.catalog()
        .images(Some(disk.id))
        .unwrap()
        .into_iter()
        .filter(|i| i.status.as_str() == "complete")
        .collect()
}

/// The cartridges of the media set the first session wrote, by the report.
fn first_session(v: &Vault, disks: &[TestDisk], ms: &str) -> (Value, HashMap<String, PathBuf>) {
    let copies = save_copies(v, disks, "0");
    let r = v.ok(&["backup", "--manifest", ms, "--pool", "p", "--drives", "2"]);
    assert_eq!(by_disk(&r).len(), 4);
    (r, copies)
}

#[test]
fn a_drive_failing_mid_session_leaves_a_consistent_catalog_and_the_next_backup_recovers() {
    let v = two_drives();
    let mut disks = four_disks(&v);
    let m = v.path("vm4.toml");
    write_manifest(&m, &disks);
    let ms = m.to_string_lossy().into_owned();
    let (r0, _) = first_session(&v, &disks, &ms);
    let set: Vec<String> = {
        let mut b: Vec<String> = by_disk(&r0).values().flat_map(barcodes).collect();
        b.sort();
        b.dedup();
        b
    };
    assert_eq!(set.len(), 2, "{set:?}");

    // The second session appends to both cartridges of the set, one per drive: one of
    // them loses power in the middle of its first image.
    for d in disks.iter_mut() {
        d.write_random(0, d.size() / 2);
    }
    let copies1 = save_copies(&v, &disks, "1");
    let lib = vtl_sim::Library::open(&v.library_dir()).unwrap();
    let cut = &set[1];
    lib.set_faults(
        cut,
        &vtl_sim::Faults {
            power_cut_after_bytes: Some(300 * KIB),
            ..Default::default()
        },
    )
    .unwrap();
    let r = v.fails(
        &["backup", "--manifest", &ms, "--pool", "p", "--drives", "2"],
        1,
    );
    lib.set_faults(cut, &vtl_sim::Faults::default()).unwrap();
    assert!(
        r.stderr.contains(cut.as_str()) || r.stdout.contains(cut.as_str()),
        "the failure names the cartridge: {}",
        r.stderr
    );
    v.assert_catalog_consistent();
    // Nothing of the session is claimed that is not on tape and flushed: each complete
    // image restores to its disk at that session; the failed drive's are failed.
    let cat = v.catalog();
    let (mut failed, mut complete) = (0, 0);
    for d in &disks {
        let imgs = cat.images(Some(d.id)).unwrap();
        // A disk no drive had started when the session stopped has no image of it.
        assert!((1..=2).contains(&imgs.len()), "{imgs:?}");
        let Some(second) = imgs.get(1) else {
            failed += 1;
            continue;
        };
        match second.status.as_str() {
            "complete" => {
                let out = v.path("check.img");
                let r = v.restore_image(d.id, &second.uuid.to_string(), &out);
                assert_eq!(r.code, 0, "{}", r.stderr);
                assert_same_bytes(&out, &copies1[&d.id.to_string()], "flushed image");
                std::fs::remove_file(&out).unwrap();
                complete += 1;
            }
            _ => failed += 1,
        }
    }
    assert!(
        failed >= 1,
        "the drive that lost power wrote no complete image"
    );
    // The other drive's image, written and flushed, counts (as after a failure on one
    // drive).
    assert!(complete >= 1, "the healthy drive's image is committed");
    drop(cat);

    // The next backup (on both drives again, the damaged cartridge left out) continues
    // every chain from its newest complete image and restores bit-identical.
    for d in disks.iter_mut() {
        d.random_writes(2, 128 * KIB);
    }
    let bases: HashMap<String, String> = disks
        .iter()
        .map(|d| {
            (
                d.id.to_string(),
                complete_images(&v, d).last().unwrap().uuid.to_string(),
            )
        })
        .collect();
    let copies2 = save_copies(&v, &disks, "2");
    let r2 = v.ok(&["backup", "--manifest", &ms, "--pool", "p", "--drives", "2"]);
    for (disk, img) in by_disk(&r2) {
        assert_eq!(s(&img, "kind"), "incremental", "{img}");
        assert_eq!(s(&img, "parent"), bases[&disk], "{img}");
        assert!(!barcodes(&img).contains(cut), "{img}");
    }
    assert_restores(&v, &r2, &copies2, "after the failed session");
    v.assert_catalog_consistent();
}

#[test]
fn a_session_killed_on_two_drives_leaves_nothing_complete_and_the_next_backup_recovers() {
    let v = two_drives();
    let mut disks = four_disks(&v);
    let m = v.path("vm4.toml");
    write_manifest(&m, &disks);
    let ms = m.to_string_lossy().into_owned();
    let (r0, _) = first_session(&v, &disks, &ms);
    let set: HashSet<String> = by_disk(&r0).values().flat_map(barcodes).collect();
    assert_eq!(set.len(), 2, "{set:?}");

    for d in disks.iter_mut() {
        d.write_random(0, d.size() / 2);
    }
    // Slow writes on every cartridge, so both drives are mid-stream when it is killed.
    let all: Vec<String> = std::fs::read_dir(v.library_dir().join("cartridges"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for bc in &all {
        v.slow_writes(bc, 200, 100_000);
    }
    let before: HashMap<String, u64> = set
        .iter()
        .map(|b| (b.clone(), v.cartridge_data_len(b)))
        .collect();
    let mut child = v
        .command(&["backup", "--manifest", &ms, "--pool", "p", "--drives", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Both drives have written records of this session.
    while set
        .iter()
        .any(|b| v.cartridge_data_len(b) < before[b] + 2 * 512 * KIB)
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the backup never wrote on both drives"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Other processes see both drives held by the backup.
    let st = v.ok(&["status"]);
    let held: Vec<&Value> = st["drives"]
        .as_array()
        .unwrap_or_else(|| panic!("drives in {st:#}"))
        .iter()
        .filter(|d| d["busy"] == Value::Bool(true))
        .collect();
    assert_eq!(held.len(), 2, "both drives are held: {st:#}");
    for d in held {
        assert!(
            s(d, "holder").contains(&format!("pid {}", child.id())),
            "{d}"
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for bc in &all {
        let _ = std::fs::remove_file(v.cartridge_dir(bc).join("faults.json"));
    }
    // The commit point was never reached: no image of the killed session is complete.
    for d in &disks {
        let c = complete_images(&v, d);
        assert_eq!(c.len(), 1, "only the first session's image: {c:?}");
    }

    // The next backup puts the killed session right and continues every chain from the
    // first session's images.
    let copies2 = save_copies(&v, &disks, "2");
    let r2 = v.ok(&["backup", "--manifest", &ms, "--pool", "p", "--drives", "2"]);
    let first = by_disk(&r0);
    for (disk, img) in by_disk(&r2) {
        assert_eq!(s(&img, "kind"), "incremental", "{img}");
        assert_eq!(img["parent"], first[&disk]["image"], "{img}");
    }
    assert_restores(&v, &r2, &copies2, "after the killed session");
    v.assert_catalog_consistent();
}

/// A library of two drives and a home with key `k` (its passphrase in the file
/// named by the second value).
fn keyed_two_drives() -> (Vault, String) {
    let v = Vault::init(&["--slots", "8", "--drives", "2", "--capacity", "64M"]);
    let pass = v.path("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let pf = pass.to_string_lossy().into_owned();
    v.ok(&["--passphrase-file", &pf, "key", "create", "k"]);
    (v, pf)
}

/// Four disks backed up on two drives into the encrypted `pool`: the report, the
/// disks' copies taken before, and the cartridges written (at least two).
fn keyed_session_on_two_drives(
    v: &Vault,
    pf: &str,
    pool: &str,
) -> (Value, HashMap<String, PathBuf>, HashSet<String>) {
    let disks = four_disks(v);
    let m = v.path("vm4.toml");
    write_manifest(&m, &disks);
    let ms = m.to_string_lossy().into_owned();
    let copies = save_copies(v, &disks, "0");
    let r = v.ok(&[
        "--passphrase-file",
        pf,
        "backup",
        "--manifest",
        &ms,
        "--pool",
        pool,
        "--drives",
        "2",
    ]);
    let used: HashSet<String> = by_disk(&r).values().flat_map(barcodes).collect();
    assert!(used.len() >= 2, "{used:?}");
    (r, copies, used)
}

#[test]
fn an_encrypted_pool_on_two_drives_restores_every_disk() {
    let (v, pf) = keyed_two_drives();
    v.ok(&[
        "pool",
        "create",
        "e",
        "--compression",
        "zstd:3",
        "--encrypt-key",
        "k",
        "--escrow",
    ]);
    let (r, copies, _) = keyed_session_on_two_drives(&v, &pf, "e");
    assert_restores_with(
        &v,
        &["--passphrase-file", &pf],
        &r,
        &copies,
        "encrypted, two drives",
    );
    v.assert_catalog_consistent();
}

#[test]
fn images_span_cartridges_on_two_drives_and_rebuild_from_the_media() {
    // 8 MiB cartridges: every disk of the VM spans at early warning while the other
    // drive writes; a filled cartridge is put away and each drive takes another one of
    // the set that no drive of the session holds.
    let v = Vault::init(&["--slots", "16", "--drives", "2", "--capacity", "8M"]);
    v.pool("p", "off");
    let disks: Vec<TestDisk> = (0..4)
        .map(|i| TestDisk::create(v.path(&format!("s{i}.img")), 12 * MIB, 10 * MIB, 300 + i))
        .collect();
    let m = v.path("vm4.toml");
    write_manifest(&m, &disks);
    let ms = m.to_string_lossy().into_owned();
    let copies = save_copies(&v, &disks, "0");
    let r = v.ok(&["backup", "--manifest", &ms, "--pool", "p", "--drives", "2"]);
    let imgs = by_disk(&r);
    assert_eq!(imgs.len(), 4);
    assert!(
        imgs.values().any(|i| barcodes(i).len() > 1),
        "an image spans cartridges: {r:#}"
    );
    assert_restores(&v, &r, &copies, "spanned on two drives");
    v.assert_catalog_consistent();
    let orig = image_statuses(&v.home);
    let fast = fresh_home(&v, "fast");
    let rep = rebuild(&fast, &[]);
    assert_eq!(image_statuses(&fast), orig, "fast path: {rep:#}");
    let scan = fresh_home(&v, "scan");
    let rep = rebuild(&scan, &["--scan"]);
    assert_eq!(image_statuses(&scan), orig, "scan: {rep:#}");
}

#[test]
fn a_pools_drives_setting_is_the_default_and_drives_overrides_it() {
    let v = two_drives();
    let disks = four_disks(&v);
    let m = v.path("vm4.toml");
    write_manifest(&m, &disks);
    let ms = m.to_string_lossy().into_owned();
    let pools = v.home.join("pools.toml");

    // A bad value is refused, naming it, before anything is written.
    std::fs::write(&pools, "[pools.p]\ndrives = 0\n").unwrap();
    let r = v.fails(&["backup", "--manifest", &ms, "--pool", "p"], 2);
    assert!(r.stderr.contains("drives = 0"), "{}", r.stderr);
    assert!(v.catalog().images(None).unwrap().is_empty());

    // `drives = 2`: both drives without --drives.
    std::fs::write(&pools, "[pools.p]\ndrives = 2\n").unwrap();
    let r = v.run(&["backup", "--manifest", &ms, "--pool", "p"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let used: HashSet<String> = by_disk(&r.json).values().flat_map(barcodes).collect();
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(r.stderr.contains("drive 0 (cartridge"), "{}", r.stderr);
    assert!(r.stderr.contains("drive 1 (cartridge"), "{}", r.stderr);

    // --drives 1 overrides it: one cartridge, no drive notes.
    let r = v.run(&["backup", "--manifest", &ms, "--pool", "p", "--drives", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let used: HashSet<String> = by_disk(&r.json).values().flat_map(barcodes).collect();
    assert_eq!(used.len(), 1, "{used:?}");
    assert!(!r.stderr.contains("writes disk"), "{}", r.stderr);
    v.assert_catalog_consistent();
}

#[test]
fn a_drive_encrypted_pool_on_two_drives_has_both_drives_encrypt() {
    let (v, pf) = keyed_two_drives();
    v.ok(&[
        "pool",
        "create",
        "hw",
        "--compression",
        "off",
        "--encrypt-key",
        "k",
    ]);
    std::fs::write(
        v.home.join("pools.toml"),
        "[pools.hw]\nencrypt_key = \"k\"\nencryption = \"drive\"\ncompression = \"off\"\n",
    )
    .unwrap();
    v.ok(&["pool", "apply"]);
    let (r, copies, used) = keyed_session_on_two_drives(&v, &pf, "hw");
    // Each drive had the pool's data key: after the clear label, every block of every
    // cartridge written is the drive's ciphertext.
    for bc in &used {
        let mut c = vtl_sim::Cartridge::open(&v.cartridge_dir(bc)).unwrap();
        c.rewind().unwrap();
        let mut buf = vec![0u8; tape_formats::MAX_BLOCK_SIZE + 64];
        let mut flags = Vec::new();
        loop {
            match c.read_block_flagged(&mut buf).unwrap() {
                (vtl_sim::Read::Block(_), e) => flags.push(e),
                (vtl_sim::Read::Filemark, _) => {}
                (vtl_sim::Read::EndOfData, _) => break,
            }
        }
        assert!(flags.len() > 3, "{bc}: {flags:?}");
        assert!(!flags[0], "{bc}: the label stays clear");
        assert!(flags[1..].iter().all(|e| *e), "{bc}: {flags:?}");
    }
    assert_restores_with(
        &v,
        &["--passphrase-file", &pf],
        &r,
        &copies,
        "drive-encrypted, two drives",
    );
}

#[test]
fn a_session_on_two_drives_stops_each_tape_once() {
    // As tests/drive_streaming.rs: a host faster than the lowest speed, a small buffer
    // and a short penalty, so every flush followed by a write costs one reposition.
    let v = Vault::init(&[
        "--slots",
        "4",
        "--drives",
        "2",
        "--capacity",
        "256M",
        "--drive-model",
        "speed=40M,min=20M,buffer=4Mi,reposition=10ms",
    ]);
    v.pool("p", "off");
    // A first session on both drives labels two cartridges into the media set (a label
    // is written and flushed once in a cartridge's life); the session measured appends.
    let first: Vec<TestDisk> = (0..2)
        .map(|i| TestDisk::create(v.path(&format!("first{i}.img")), MIB, MIB, 60 + i))
        .collect();
    let fm = v.path("first.toml");
    write_manifest(&fm, &first);
    v.backup_manifest(&fm, "p", &["--drives", "2"]);
    let lib = vtl_sim::Library::open(&v.library_dir()).unwrap();
    let before = [lib.drive_stats(0).unwrap(), lib.drive_stats(1).unwrap()];
    let disks: Vec<TestDisk> = (0..4)
        .map(|i| TestDisk::create(v.path(&format!("d{i}.img")), 3 * MIB, 3 * MIB, 70 + i))
        .collect();
    let m = v.path("vm.toml");
    write_manifest(&m, &disks);
    let copies = save_copies(&v, &disks, "0");
    let r = v.backup_manifest(&m, "p", &["--drives", "2"]);
    let used: HashSet<String> = by_disk(&r).values().flat_map(barcodes).collect();
    assert_eq!(used.len(), 2, "{used:?}");
    for (d, b) in before.iter().enumerate() {
        let st = lib.drive_stats(d).unwrap();
        let (repositions, underruns) = (
            st.repositions - b.repositions,
            st.buffer_underruns - b.buffer_underruns,
        );
        // Each drive flushes once, after its images, the catalog snapshot and the
        // end-of-session marker, and writes nothing after it. A flush after the last
        // image and the snapshot written after the commit cost each drive one
        // reposition. A drive that finished its disks first and waits for the other
        // runs dry (an underrun: the host has nothing to give it), and that stop is
        // the one it may reposition for.
        assert!(repositions <= underruns, "drive {d}: {b:?} -> {st:?}");
        assert!(
            st.bytes_written - b.bytes_written >= 3 * MIB,
            "drive {d}: {st:?}"
        );
    }
    assert_restores(&v, &r, &copies, "two drives, one flush each");
    v.assert_catalog_consistent();
    // Each cartridge carries the session's snapshot and marker: a rebuild into a new
    // home from the media alone finds every image complete.
    let home = fresh_home(&v, "rebuilt");
    rebuild(&home, &[]);
    let got = image_statuses(&home);
    for img in by_disk(&r).values() {
        assert!(
            got.contains(&(s(img, "image").to_string(), "complete".to_string())),
            "{img}: {got:?}"
        );
    }
}

/// The names of tapevault's dirty bitmaps in `img`.
fn epoch_bitmaps(img: &Path) -> Vec<String> {
    qemu_img_info(img)["format-specific"]["data"]["bitmaps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|b| b["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("tapevault-"))
        .collect()
}

/// Whether a qemu-nbd process still serves `img`.
fn served(img: &Path) -> bool {
    let want = img.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            return false;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        args.first().is_some_and(|a| a.ends_with("qemu-nbd")) && args.contains(&want)
    })
}

#[test]
fn qcow2_disks_on_two_drives_full_incrementals_restore() {
    if !have_qemu() {
        return;
    }
    let v = two_drives();
    // Four qcow2 images through the offline image driver (each its own qemu-nbd and
    // dirty bitmap) of 16 to 40 MiB, the smallest first in the VM's manifest, and one
    // local raw disk of 8 MiB.
    let imgs: Vec<(uuid::Uuid, PathBuf)> = (0..4u64)
        .map(|i| {
            let img = v.path(&format!("q{i}.qcow2"));
            run_tool(
                std::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&img)
                    .arg(format!("{}M", 16 + 8 * i)),
            );
            qemu_io(
                &img,
                &[
                    format!("write -P {} 0 {}M", 0x40 + i, 2 + i),
                    format!("write -P {} 9M 1M", 0x50 + i),
                ],
            );
            (uuid::Uuid::new_v4(), img)
        })
        .collect();
    let raw = TestDisk::create(v.path("raw.img"), 8 * MIB, 4 * MIB, 90);
    let m = v.path("qvm.toml");
    let mut t = "name = \"qvm\"\n".to_string();
    for (id, img) in &imgs {
        t.push_str(&format!(
            "\n[[disk]]\nid = \"{id}\"\nsource = \"qcow2:{}\"\n",
            img.display()
        ));
    }
    t.push_str(&format!(
        "\n[[disk]]\nid = \"{}\"\npath = \"{}\"\n",
        raw.id,
        raw.path.display()
    ));
    std::fs::write(&m, t).unwrap();
    let ms = m.to_string_lossy().into_owned();

    // Each point's bytes: (disk, image, raw copy).
    let mut points: Vec<(String, String, PathBuf)> = Vec::new();
    let save = |points: &mut Vec<(String, String, PathBuf)>, r: &Value, n: usize| {
        let imgs_now = by_disk(r);
        for (id, img) in &imgs {
            let copy = v.path(&format!("{id}-{n}.raw"));
            run_tool(
                std::process::Command::new("qemu-img")
                    .args(["convert", "-f", "qcow2", "-O", "raw"])
                    .arg(img)
                    .arg(&copy),
            );
            let image = s(&imgs_now[&id.to_string()], "image").to_string();
            points.push((id.to_string(), image, copy));
        }
        let copy = v.path(&format!("raw-{n}.raw"));
        raw.save_copy(&copy);
        let image = s(&imgs_now[&raw.id.to_string()], "image").to_string();
        points.push((raw.id.to_string(), image, copy));
    };

    let run0 = v.run(&["backup", "--manifest", &ms, "--pool", "p", "--drives", "2"]);
    assert_eq!(run0.code, 0, "{}", run0.stderr);
    let r0 = run0.json;
    let imgs0 = by_disk(&r0);
    assert_eq!(imgs0.len(), 5, "{r0:#}");
    // The largest first, by the images' virtual sizes (known once prepared): the two
    // largest qcow2 images start, one on each drive, before the smaller raw disk.
    let first_two: HashSet<String> = run0
        .stderr
        .lines()
        .filter_map(|l| l.split_once(") writes disk ").map(|(_, d)| d.to_string()))
        .filter_map(|d| d.split_whitespace().next().map(str::to_string))
        .take(2)
        .collect();
    let largest: HashSet<String> = imgs[2..].iter().map(|(id, _)| id.to_string()).collect();
    assert_eq!(first_two, largest, "{}", run0.stderr);
    let mut epochs = HashMap::new();
    let mut qcow2_carts = HashSet::new();
    for (id, img) in &imgs {
        let i = &imgs0[&id.to_string()];
        assert_eq!(s(i, "kind"), "full", "{i}");
        qcow2_carts.extend(barcodes(i));
        // The epoch switched after the commit: one bitmap, the new epoch's.
        let e = epoch_bitmaps(img);
        assert_eq!(e.len(), 1, "{}: {e:?}", img.display());
        epochs.insert(id.to_string(), e[0].clone());
        // And the export was torn down.
        assert!(!served(img), "{} is still served", img.display());
    }
    assert_eq!(
        qcow2_carts.len(),
        2,
        "the image driver's disks were written on both drives: {r0:#}"
    );
    save(&mut points, &r0, 0);

    for n in 1..=2u64 {
        for (i, (_, img)) in imgs.iter().enumerate() {
            let i = i as u64;
            qemu_io(
                img,
                &[
                    format!("write -P {} {}M 256k", 0x60 + 4 * n + i, 4 + n),
                    format!("write -z {}k 64k", 64 * n),
                ],
            );
        }
        let r = v.ok(&["backup", "--manifest", &ms, "--pool", "p", "--drives", "2"]);
        let got = by_disk(&r);
        for (id, img) in &imgs {
            let i = &got[&id.to_string()];
            assert_eq!(s(i, "kind"), "incremental", "point {n}: {i}");
            assert_eq!(s(i, "method"), "dirty-bitmap", "point {n}: {i}");
            // Only the dirty data: the 256 KiB written, never the whole disk.
            assert!(u(i, "read_bytes") <= 512 * KIB, "point {n}: {i}");
            let e = epoch_bitmaps(img);
            assert_eq!(e.len(), 1, "point {n}: {e:?}");
            assert_ne!(e[0], epochs[&id.to_string()], "point {n}: a new epoch");
            epochs.insert(id.to_string(), e[0].clone());
            assert!(!served(img), "{} is still served", img.display());
        }
        save(&mut points, &r, n as usize);
    }
    for (disk, image, copy) in &points {
        let out = v.path("restored.raw");
        let _ = std::fs::remove_file(&out);
        let r = v.restore_image(disk.parse().unwrap(), image, &out);
        assert_eq!(r.code, 0, "restore of {disk} image {image}: {}", r.stderr);
        assert_same_bytes(&out, copy, &format!("{disk} image {image}"));
    }
    v.assert_catalog_consistent();
}

#[test]
fn a_running_vms_two_disks_on_two_drives() {
    if qmp_support::qemu_missing() {
        return;
    }
    let v = two_drives();
    let vm = qmp_support::Vm::start(
        &v.root,
        &[("a", 32 * MIB, "SER-A"), ("b", 16 * MIB, "SER-B")],
        false,
    );
    let mut w = vm.test_monitor();
    let mut model = [vec![0u8; 32 * MIB as usize], vec![0u8; 16 * MIB as usize]];
    let mut write =
        |w: &mut tapevault::source::qmp::QmpClient, i: usize, p: u8, off: u64, len: u64| {
            vm.write(w, i, p, off, len);
            model[i][off as usize..(off + len) as usize].fill(p);
            model.clone()
        };
    write(&mut w, 0, 0x11, 0, 3 * MIB);
    write(&mut w, 1, 0x21, 4 * MIB, 2 * MIB);
    let mut now = write(&mut w, 0, 0x12, 20 * MIB, MIB);
    let qmp = vm.qmp.to_string_lossy().into_owned();
    let scratch = vm.dir.join("scratch").to_string_lossy().into_owned();
    let args = [
        "backup",
        "--qmp",
        &qmp,
        "--scratch-dir",
        &scratch,
        "--pool",
        "p",
        "--drives",
        "2",
    ];
    // (disk, image, bytes) of every point.
    let mut points: Vec<(String, String, PathBuf)> = Vec::new();
    for k in 0..3u8 {
        let r = v.run(&args);
        assert_eq!(r.code, 0, "point {k}: {}", r.stderr);
        let imgs = by_disk(&r.json);
        assert_eq!(imgs.len(), 2, "{:#}", r.json);
        // One point in time for both disks, taken once for the VM.
        assert_eq!(r.json["point_in_time"]["driver"], "qmp", "{:#}", r.json);
        let used: HashSet<String> = imgs.values().flat_map(barcodes).collect();
        assert_eq!(used.len(), 2, "point {k}: one disk per drive: {used:?}");
        let mut order: Vec<(&String, &Value)> = imgs.iter().collect();
        // Disk a is the larger: the one with more bytes in its image.
        order.sort_by_key(|(_, i)| std::cmp::Reverse(u(i, "disk_size")));
        for (i, (disk, img)) in order.iter().enumerate() {
            let kind = if k == 0 { "full" } else { "incremental" };
            assert_eq!(s(img, "kind"), kind, "point {k}: {img}");
            if k > 0 {
                assert_eq!(s(img, "method"), "dirty-bitmap", "point {k}: {img}");
                assert!(u(img, "read_bytes") <= 512 * KIB, "point {k}: {img}");
            }
            let copy = v.path(&format!("{disk}-{k}.raw"));
            std::fs::write(&copy, &now[i]).unwrap();
            points.push((disk.to_string(), s(img, "image").to_string(), copy));
        }
        write(&mut w, 0, 0x30 + k, (4 + k as u64) * MIB, 256 * KIB);
        now = write(&mut w, 1, 0x40 + k, (8 + k as u64) * MIB, 64 * KIB);
    }
    for (disk, image, copy) in &points {
        let out = v.path("restored.raw");
        let _ = std::fs::remove_file(&out);
        let r = v.restore_image(disk.parse().unwrap(), image, &out);
        assert_eq!(r.code, 0, "restore of {disk} image {image}: {}", r.stderr);
        assert_same_bytes(&out, copy, &format!("{disk} image {image}"));
    }
    // Each disk's epoch switched after its commit, and nothing else is left in QEMU.
    qmp_support::assert_one_epoch_bitmap_per_disk(&v.ok(&["vm", "disks", "--qmp", &qmp]));
    let left: Vec<_> = std::fs::read_dir(vm.dir.join("scratch"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "scratch left: {left:?}");
    v.assert_catalog_consistent();
}

/// Bytes of cartridge `barcode`'s data file before its newest session end (the
/// catalog snapshot's first block): the objects after the last filemark but two are
/// the marker and the snapshot, the filemark before the snapshot ends the last image.
fn before_session_end(v: &Vault, barcode: &str) -> u64 {
    let idx = std::fs::read(v.cartridge_dir(barcode).join("index")).unwrap();
    let entries: Vec<(u64, bool)> = idx[16..]
        .chunks_exact(16)
        .map(|e| {
            let off = u64::from_le_bytes(e[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(e[8..12].try_into().unwrap());
            (off, len & (1 << 31) != 0)
        })
        .collect();
    // ... image FM | snapshot blocks | FM | marker | FM
    let n = entries.len();
    assert!(n >= 4 && entries[n - 1].1 && !entries[n - 2].1 && entries[n - 3].1);
    let mut i = n - 4;
    while !entries[i - 1].1 {
        i -= 1;
    }
    entries[i].0
}

/// Three `backup --drives 2 --full` sessions of two disks; the third loses power on
/// one cartridge (`cut`) just after its image, in its snapshot, while the other
/// cartridge (`other`) ends the session whole.
struct FailedEnd {
    v: Vault,
    disks: Vec<TestDisk>,
    cut: String,
    other: String,
    /// The disks' bytes as the third session read them, by disk id.
    copies: HashMap<String, PathBuf>,
    /// The third session's backup run.
    run: Run,
}

fn failed_session_end() -> FailedEnd {
    let v = two_drives();
    // Two disks of the same size and bytes: each drive writes an image of the same
    // length on tape, whichever disk it takes.
    let disks: Vec<TestDisk> = (0..2)
        .map(|i| TestDisk::create(v.path(&format!("e{i}.img")), 4 * MIB, 2 * MIB, 7))
        .collect();
    let m = v.path("two.toml");
    write_manifest(&m, &disks);
    let ms = m.to_string_lossy().into_owned();
    let full = [
        "backup",
        "--manifest",
        &ms,
        "--pool",
        "p",
        "--drives",
        "2",
        "--full",
    ];
    let r0 = v.ok(&full);
    let set: Vec<String> = {
        let mut b: Vec<String> = by_disk(&r0).values().flat_map(barcodes).collect();
        b.sort();
        b.dedup();
        b
    };
    assert_eq!(set.len(), 2, "{set:?}");
    // A second session measures an image's length on tape.
    let cut = &set[1];
    let len0 = v.cartridge_data_len(cut);
    v.ok(&full);
    let image_len = before_session_end(&v, cut) - len0;
    // The third loses power on one cartridge just after its image, in its snapshot.
    let lib = vtl_sim::Library::open(&v.library_dir()).unwrap();
    lib.set_faults(
        cut,
        &vtl_sim::Faults {
            power_cut_after_bytes: Some(image_len + 64),
            ..Default::default()
        },
    )
    .unwrap();
    let copies = save_copies(&v, &disks, "3");
    let run = v.fails(&full, 1);
    lib.set_faults(cut, &vtl_sim::Faults::default()).unwrap();
    FailedEnd {
        cut: cut.clone(),
        other: set[0].clone(),
        v,
        disks,
        copies,
        run,
    }
}

#[test]
fn a_drive_failing_its_session_end_fails_its_images_and_says_what_the_others_claim() {
    let FailedEnd {
        v,
        disks,
        other,
        copies,
        run: r,
        ..
    } = failed_session_end();
    let other = &other;
    assert!(
        r.stderr.contains("describe the session complete") && r.stderr.contains(other.as_str()),
        "the warning names the cartridge whose snapshot describes the failed image: {}",
        r.stderr
    );
    v.assert_catalog_consistent();
    let cat = v.catalog();
    let mut status = Vec::new();
    for d in &disks {
        let imgs = cat.images(Some(d.id)).unwrap();
        assert_eq!(imgs.len(), 3, "{imgs:?}");
        let third = &imgs[2];
        if third.status.as_str() == "complete" {
            let out = v.path("check.img");
            let r = v.restore_image(d.id, &third.uuid.to_string(), &out);
            assert_eq!(r.code, 0, "{}", r.stderr);
            assert_same_bytes(&out, &copies[&d.id.to_string()], "the other drive's image");
        }
        status.push(third.status.as_str().to_string());
    }
    status.sort();
    // The image before the failed session end is failed (its drive never flushed);
    // the other drive's, flushed after its own session end, is complete.
    assert_eq!(status, ["complete", "failed"], "{status:?}");
}

/// Run `tapevault --home HOME --json ARGS`: exit code and JSON output.
fn run_in(home: &Path, args: &[&str]) -> (i32, Value) {
    let o = std::process::Command::new(BIN)
        .arg("--home")
        .arg(home)
        .arg("--json")
        .args(args)
        .env_remove("TAPEVAULT_HOME")
        .env_remove("TAPEVAULT_PASSPHRASE")
        .output()
        .unwrap();
    let j = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), j)
}

/// (image UUID, status, restorable) of every image `images --json` lists in a home.
fn listed(home: &Path) -> HashSet<(String, String, bool)> {
    fn walk(v: &Value, out: &mut HashSet<(String, String, bool)>) {
        match v {
            Value::Object(m) => {
                if let (Some(Value::String(u)), Some(Value::String(st)), Some(Value::Bool(r))) =
                    (m.get("image"), m.get("status"), m.get("restorable"))
                {
                    out.insert((u.clone(), st.clone(), *r));
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let (code, j) = run_in(home, &["images"]);
    assert_eq!(code, 0, "{j:#}");
    let mut out = HashSet::new();
    walk(&j, &mut out);
    out
}

/// Restore `image` of `disk` from `home` and compare it with `expected`.
fn restore_same(v: &Vault, home: &Path, disk: &str, image: &str, expected: &Path, what: &str) {
    let out = v.path(&format!("{what}-{disk}.img"));
    let (code, j) = run_in(
        home,
        &[
            "restore",
            "--disk",
            disk,
            "--image",
            image,
            "--to",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{what}: {j:#}");
    assert_same_bytes(&out, expected, what);
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn a_rebuild_after_a_drive_failed_its_session_end_lists_only_what_each_cartridge_holds() {
    let f = failed_session_end();
    let v = &f.v;
    let live = image_statuses(&v.home);
    let failed: Vec<&String> = live
        .iter()
        .filter(|(_, st)| st == "failed")
        .map(|(u, _)| u)
        .collect();
    assert_eq!(failed.len(), 1, "{live:?}");
    let failed = failed[0].clone();
    // The third session's complete image (on the other cartridge) and its disk.
    let cat = v.catalog();
    let mut good = None;
    for d in &f.disks {
        let imgs = cat.images(Some(d.id)).unwrap();
        if imgs[2].status.as_str() == "complete" {
            good = Some((d.id.to_string(), imgs[2].uuid.to_string()));
        }
    }
    drop(cat);
    let (good_disk, good_image) = good.expect("the other drive's image is complete");

    // Fast path from both cartridges: the other cartridge's snapshot describes the
    // failed image complete; the cut cartridge does not carry the session's marker
    // after it, so the rebuild lists it failed, as the live catalog does.
    let fast = fresh_home(v, "fast");
    let rep = rebuild(&fast, &[]);
    assert!(
        rep["cartridges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["method"] != "scan"),
        "{rep:#}"
    );
    assert_eq!(image_statuses(&fast), live, "fast path: {rep:#}");
    let problems = rep["problems"].to_string();
    assert!(
        problems.contains(&failed)
            && problems.contains(&f.cut)
            && problems.contains("end-of-session marker"),
        "the report names the image, its cartridge and why: {rep:#}"
    );
    assert_eq!(rep["unchecked"], serde_json::json!([]), "{rep:#}");
    let shown = listed(&fast);
    assert!(
        shown.contains(&(failed.clone(), "failed".into(), false)),
        "images lists it failed, not restorable: {shown:?}"
    );
    assert!(
        shown.contains(&(good_image.clone(), "complete".into(), true)),
        "{shown:?}"
    );
    assert_eq!(shown.len(), 6, "{shown:?}");
    restore_same(
        v,
        &fast,
        &good_disk,
        &good_image,
        &f.copies[&good_disk],
        "fast",
    );
    // Again into the same home: the snapshot's word is checked again, same result.
    let again = rebuild(&fast, &[]);
    assert_eq!(image_statuses(&fast), live, "again: {again:#}");
    // The live home itself: the rebuild does not turn its failed image complete.
    let (code, rep_live) = run_in(&v.home, &["catalog", "rebuild"]);
    assert_eq!(code, 0, "{rep_live:#}");
    assert_eq!(image_statuses(&v.home), live, "live: {rep_live:#}");

    // A scan reads the tape file itself: every record and the trailer of the image
    // reached the cut cartridge before the power cut (the simulator keeps what was
    // written before it), so the scan finds it whole, and it restores bit-identical.
    let scan = fresh_home(v, "scan");
    let rep = rebuild(&scan, &["--scan"]);
    let scanned = image_statuses(&scan);
    assert!(
        scanned.contains(&(failed.clone(), "complete".into())),
        "scan: {rep:#}"
    );
    assert_eq!(scanned.len(), 6, "{scanned:?}");
    let failed_disk = f
        .disks
        .iter()
        .map(|d| d.id.to_string())
        .find(|d| *d != good_disk)
        .unwrap();
    restore_same(
        v,
        &scan,
        &failed_disk,
        &failed,
        &f.copies[&failed_disk],
        "scan",
    );
    restore_same(
        v,
        &scan,
        &good_disk,
        &good_image,
        &f.copies[&good_disk],
        "scan",
    );

    // Only the other cartridge read: the images its snapshot places on the cut one
    // keep the snapshot's word, and the report says they were not checked.
    let one = fresh_home(v, "one");
    let rep = rebuild(&one, &["--barcode", &f.other]);
    let unchecked = rep["unchecked"].to_string();
    assert!(
        unchecked.contains(&f.cut) && unchecked.contains("not checked"),
        "{rep:#}"
    );
    assert!(!unchecked.contains(&f.other), "{rep:#}");
    restore_same(
        v,
        &one,
        &good_disk,
        &good_image,
        &f.copies[&good_disk],
        "one",
    );
    // The human report says it too.
    let o = std::process::Command::new(BIN)
        .arg("--home")
        .arg(&one)
        .args(["catalog", "rebuild", "--barcode", &f.other])
        .env_remove("TAPEVAULT_HOME")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("not checked: cartridge {}", f.cut)),
        "{text}"
    );
}
