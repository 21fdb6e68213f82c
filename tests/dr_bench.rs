//! Disaster-recovery benchmark (ignored; run in release, see docs/benchmarks/dr.md):
//!
//! * full-scan rebuild throughput of one cartridge against `cat` of the same cartridge
//!   files to /dev/null (both from the page cache, best of several runs);
//! * fast-path rebuild time per cartridge with little and with much data on it.
//!
//! `DR_BENCH_MIB` sets the size of the large disk (default 1024).

mod dr_support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dr_support::*;

/// Measurements per figure; the best is reported (the machine is shared and noisy).
const ROUNDS: usize = 5;

fn best_of<F: FnMut() -> f64>(n: usize, mut f: F) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn cat_secs(dir: &Path) -> f64 {
    let files: Vec<_> = ["data", "index", "filemarks"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .collect();
    let t = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg("cat \"$@\" > /dev/null")
        .arg("sh")
        .args(&files)
        .status()
        .unwrap();
    assert!(st.success());
    t.elapsed().as_secs_f64()
}

/// Wall time of a rebuild of `barcode` into a fresh home, and the report.
fn rebuild_secs(
    root: &Path,
    lib: &Path,
    n: usize,
    barcode: &str,
    scan: bool,
) -> (f64, serde_json::Value) {
    let home = root.join(format!("rebuild-{barcode}-{scan}-{n}"));
    ok(&home, &["init", "--library", lib.to_str().unwrap()]);
    let mut args = vec!["catalog", "rebuild", "--barcode", barcode];
    if scan {
        args.push("--scan");
    }
    let t = Instant::now();
    let (code, rep) = json(&home, &args);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{rep:#}");
    (secs, rep)
}

#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
fn dr_rebuild_throughput_and_fast_path_time() {
    let mib: usize = std::env::var("DR_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lib = root.join("library");
    let home = root.join("home");
    let cap = format!("{}M", mib + 512);
    ok(
        &home,
        &[
            "init",
            "--library",
            lib.to_str().unwrap(),
            "--capacity",
            &cap,
            "--slots",
            "2",
        ],
    );
    // Incompressible data, stored as it is: the scan reads mib MiB of records.
    ok(&home, &["pool", "create", "small", "--compression", "off"]);
    ok(&home, &["pool", "create", "large", "--compression", "off"]);
    let small = root.join("small.img");
    std::fs::write(&small, noise(7, 4 << 20)).unwrap();
    ok(
        &home,
        &[
            "backup",
            "--disk",
            small.to_str().unwrap(),
            "--disk-id",
            "5a5a5a5a-0000-4000-8000-000000000001",
            "--pool",
            "small",
        ],
    );
    let large = root.join("large.img");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&large).unwrap();
        for i in 0..mib {
            f.write_all(&noise(1000 + i as u64, 1 << 20)).unwrap();
        }
    }
    ok(
        &home,
        &[
            "backup",
            "--disk",
            large.to_str().unwrap(),
            "--disk-id",
            "1a1a1a1a-0000-4000-8000-000000000002",
            "--pool",
            "large",
        ],
    );
    std::fs::remove_file(&large).unwrap();
    let media: serde_json::Value =
        serde_json::from_str(&ok(&home, &["--json", "media", "list"])).unwrap();
    let bc_of = |pool: &str| {
        media["cartridges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["pool"] == pool)
            .unwrap()["barcode"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (bs, bl) = (bc_of("small"), bc_of("large"));
    let cart = lib.join("cartridges").join(&bl);
    let bytes: u64 = ["data", "index", "filemarks"]
        .iter()
        .filter_map(|f| std::fs::metadata(cart.join(f)).ok())
        .map(|m| m.len())
        .sum();
    cat_secs(&cart); // warm the page cache
                     // Interleaved rounds (cat, then scan) so both meet the same machine load; best of
                     // each.
    let mut n = 0;
    let (mut cat, mut scan, mut scan_cart) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _ in 0..ROUNDS {
        cat = cat.min(cat_secs(&cart));
        n += 1;
        let (s, rep) = rebuild_secs(root, &lib, n, &bl, true);
        scan = scan.min(s);
        scan_cart = scan_cart.min(rep["cartridges"][0]["seconds"].as_f64().unwrap());
        // Every block was read: the data records alone are mib MiB.
        let read = rep["cartridges"][0]["bytes_scanned"].as_u64().unwrap();
        assert!(read >= (mib as u64) << 20, "{rep:#}");
    }
    let mb = bytes as f64 / (1 << 20) as f64;
    println!("cartridge {bl}: {mb:.0} MiB of cartridge files");
    println!("cat > /dev/null:         {cat:.3} s  {:.0} MiB/s", mb / cat);
    println!(
        "catalog rebuild --scan:  {scan:.3} s  {:.0} MiB/s (whole command); reading the cartridge {scan_cart:.3} s {:.0} MiB/s",
        mb / scan,
        mb / scan_cart
    );
    println!("ratio (whole command / cat): {:.2}", cat / scan);
    let mut fast = |bc: &str| {
        best_of(ROUNDS, || {
            n += 1;
            let (_, rep) = rebuild_secs(root, &lib, n, bc, false);
            assert_eq!(rep["cartridges"][0]["method"], "snapshot", "{rep:#}");
            rep["cartridges"][0]["seconds"].as_f64().unwrap()
        })
    };
    let fs = fast(&bs);
    let fl = fast(&bl);
    println!("fast path, {bs} (4 MiB of data): {fs:.3} s");
    println!("fast path, {bl} ({mib} MiB of data): {fl:.3} s");
}
