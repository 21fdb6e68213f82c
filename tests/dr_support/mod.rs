//! Shared helpers of the disaster-recovery tests: run the binary, make disks, read
//! catalog exports, damage cartridge files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const PASS: &str = "correct horse battery staple";

pub fn tv(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tapevault"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env("TAPEVAULT_PASSPHRASE", PASS)
        .env_remove("TAPEVAULT_HOME")
        .output()
        .expect("run tapevault")
}

pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run and require exit 0; returns stdout.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let o = tv(home, args);
    assert!(
        o.status.success(),
        "tapevault {args:?} failed:\n{}",
        show(&o)
    );
    String::from_utf8(o.stdout).expect("utf-8")
}

/// Run with --json; returns (exit code, parsed stdout).
pub fn json(home: &Path, args: &[&str]) -> (i32, Value) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = tv(home, &a);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout of {args:?} is not one JSON document ({e}):\n{}",
            show(&o)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A disk of `mib` MiB: noise, with the second half of every other MiB zero.
pub fn make_disk(path: &Path, mib: usize, seed: u64) {
    let mut d = noise(seed, mib << 20);
    for m in (0..mib).step_by(2) {
        let start = (m << 20) + (1 << 19);
        d[start..start + (1 << 19)].fill(0);
    }
    std::fs::write(path, d).unwrap();
}

/// Overwrite a few 64 KiB regions of a disk with new noise.
pub fn touch_disk(path: &Path, seed: u64) {
    let mut d = std::fs::read(path).unwrap();
    let n = d.len();
    for (i, off) in [n / 7, n / 3, n / 2 + 4096].iter().enumerate() {
        let off = off & !4095;
        let r = noise(seed + i as u64, 65536.min(n - off));
        d[off..off + r.len()].copy_from_slice(&r);
    }
    std::fs::write(path, d).unwrap();
}

pub fn manifest(dir: &Path, name: &str, disks: &[(&str, &Path)]) -> PathBuf {
    let mut s = format!("name = \"{name}\"\n");
    for (id, p) in disks {
        s.push_str(&format!(
            "[[disk]]\nid = \"{id}\"\npath = \"{}\"\n",
            p.display()
        ));
    }
    let f = dir.join(format!("{name}.toml"));
    std::fs::write(&f, s).unwrap();
    f
}

/// `catalog export` of a home, images by UUID.
pub fn images(home: &Path) -> BTreeMap<String, Value> {
    let v: Value = serde_json::from_str(&ok(home, &["catalog", "export"])).expect("export is JSON");
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["image"]["uuid"].as_str().unwrap().to_string(), i.clone()))
        .collect()
}

/// The facts a restore depends on; `exact` adds those only a snapshot carries exactly
/// (times).
pub const RESTORE_FACTS: &[&str] = &[
    "disk_uuid",
    "vm_name",
    "kind",
    "parent_uuid",
    "change_id",
    "from_change_id",
    "disk_size",
    "block_size",
    "session_uuid",
    "pool",
    "key_fingerprint",
    "records",
    "plain_bytes",
    "stored_bytes",
    "content_digest",
];

/// Every complete image of `orig` is in `rebuilt`, complete, with the same restore
/// facts, segments (tape positions) and extents.
pub fn assert_same_restore_points(
    orig: &BTreeMap<String, Value>,
    rebuilt: &BTreeMap<String, Value>,
    exact_times: bool,
) -> usize {
    let mut n = 0;
    for (u, a) in orig {
        if a["image"]["status"] != "complete" {
            continue;
        }
        let b = rebuilt
            .get(u)
            .unwrap_or_else(|| panic!("complete image {u} is missing after the rebuild"));
        assert_eq!(
            b["image"]["status"], "complete",
            "image {u}: {}",
            b["image"]
        );
        for k in RESTORE_FACTS {
            assert_eq!(a["image"][k], b["image"][k], "image {u} field {k}");
        }
        // Times from a snapshot are exact; from a scan they are the image header's
        // (whole seconds, taken a moment after the catalog's).
        let t = |v: &Value| {
            chrono::DateTime::parse_from_rfc3339(v["image"]["started"].as_str().unwrap())
                .unwrap()
                .timestamp_micros()
        };
        let skew = (t(a) - t(b)).abs();
        if exact_times && a["image"]["started"] != b["image"]["started"] {
            assert!(
                b["image"]["started"].as_str().unwrap().ends_with(":00Z")
                    || !b["image"]["started"].as_str().unwrap().contains('.'),
                "image {u}: started {} in the original, {} rebuilt",
                a["image"]["started"],
                b["image"]["started"]
            );
        }
        assert!(skew <= 2_000_000, "image {u}: started differs by {skew} us");
        assert_eq!(a["segments"], b["segments"], "image {u} segments");
        assert_eq!(a["extents"], b["extents"], "image {u} extents");
        n += 1;
    }
    n
}

/// Byte offset and length of logical object `block` in a virtual cartridge's data file.
pub fn block_extent(cart_dir: &Path, block: u64) -> (u64, u32) {
    let idx = std::fs::read(cart_dir.join("index")).unwrap();
    let e = &idx[16 + 16 * block as usize..][..16];
    let off = u64::from_le_bytes(e[0..8].try_into().unwrap());
    let len = u32::from_le_bytes(e[8..12].try_into().unwrap()) & !(1 << 31);
    (off, len)
}

/// Flip bytes in the middle of logical object `block` of a cartridge (as bit rot would).
pub fn damage_block(cart_dir: &Path, block: u64) {
    use std::os::unix::fs::FileExt;
    let (off, len) = block_extent(cart_dir, block);
    assert!(len > 64, "block {block} is {len} bytes");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(cart_dir.join("data"))
        .unwrap();
    let at = off + len as u64 / 2;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    for x in &mut b {
        *x ^= 0x5a;
    }
    f.write_all_at(&b, at).unwrap();
}

/// Cut a virtual cartridge after its first `keep` logical objects, as a power cut
/// during a write would leave it (the simulator trims the data and filemark files to
/// the index when the cartridge is next loaded).
pub fn cut_tape(cart_dir: &Path, keep: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(cart_dir.join("index"))
        .unwrap();
    f.set_len(16 + 16 * keep).unwrap();
}

/// A new home on a new virtual library of `slots` cartridges of `capacity` (`8M`),
/// with the clear pool `pool` (when given).
pub fn new_home(home: &Path, lib: &Path, capacity: &str, slots: u32, pool: Option<&str>) {
    let slots = slots.to_string();
    ok(
        home,
        &[
            "init",
            "--library",
            lib.to_str().unwrap(),
            "--capacity",
            capacity,
            "--slots",
            &slots,
        ],
    );
    if let Some(p) = pool {
        ok(home, &["pool", "create", p]);
    }
}

/// A fresh home on an existing library, for a rebuild from its cartridges.
pub fn home_on_library(home: &Path, lib: &Path) {
    ok(home, &["init", "--library", lib.to_str().unwrap()]);
}

/// `backup --disk DISK --disk-id ID --pool POOL`, required to succeed.
pub fn backup_disk(home: &Path, disk: &Path, id: &str, pool: &str) -> String {
    ok(
        home,
        &[
            "backup",
            "--disk",
            disk.to_str().unwrap(),
            "--disk-id",
            id,
            "--pool",
            pool,
        ],
    )
}
