//! Throughput measurements for docs/benchmarks/source.md. Ignored by default (they
//! read gigabytes); run in release:
//!
//! ```text
//! TAPEVAULT_BENCH_DIR=/some/dir cargo test --release --test source_bench -- --ignored --nocapture
//! ```
//! Each run creates two 1 GiB files (all zeros written out, and non-zero data), times
//! `dd if=FILE of=/dev/null bs=1M` on each, then the chunk reader (zero detection) and
//! the hash scan on the same files in the same run, so all numbers share the same page
//! cache state. Prints numbers; asserts only correctness, never times.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use tapevault::source::disk::{is_zero, ChunkConfig, ChunkReader, Disk};
use tapevault::source::hashscan::scan_changes;

const SIZE: u64 = 1024 * 1024 * 1024;

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

fn make(path: &Path, data: bool) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1024 * 1024];
    for i in 0..SIZE / block.len() as u64 {
        if data {
            for (j, b) in block.iter_mut().enumerate() {
                *b = ((j as u64).wrapping_mul(2654435761) >> 7) as u8 ^ i as u8 | 1;
            }
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

fn dd(path: &Path) -> f64 {
    let t = Instant::now();
    let st = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["of=/dev/null", "bs=1M"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    mib_s(SIZE, t.elapsed().as_secs_f64())
}

fn chunk_read(path: &Path) -> (f64, u64) {
    let disk = Disk::open(path).unwrap();
    let t = Instant::now();
    let mut r = ChunkReader::whole_disk(&disk, ChunkConfig::default()).unwrap();
    let mut data = 0u64;
    while let Some(c) = r.next_chunk().unwrap() {
        data += c.data.len() as u64;
    }
    (mib_s(SIZE, t.elapsed().as_secs_f64()), data)
}

fn hash_scan(path: &Path, out: &Path) -> f64 {
    let disk = Disk::open(path).unwrap();
    let t = Instant::now();
    let mut changed = 0u64;
    scan_changes(&disk, 64 * 1024, None, out, |e| changed += e.len).unwrap();
    assert_eq!(changed, SIZE);
    mib_s(SIZE, t.elapsed().as_secs_f64())
}

#[test]
#[ignore = "benchmark: reads 1 GiB files; run with --release -- --ignored --nocapture"]
fn bench_source_throughput() {
    let base = std::env::var_os("TAPEVAULT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let zeros = dir.path().join("zeros.raw");
    let data = dir.path().join("data.raw");
    make(&zeros, false);
    make(&data, true);

    // In-memory zero test on 64 MiB of zeros (its worst case: every byte checked).
    // Touch every page with real zeros: a fresh calloc'd buffer maps the kernel's
    // shared zero page and would measure a cache-resident 4 KiB instead of memory.
    let mut buf = vec![1u8; 64 * 1024 * 1024];
    std::hint::black_box(&mut buf);
    buf.fill(0);
    let t = Instant::now();
    let mut all = true;
    for _ in 0..8 {
        all &= std::hint::black_box(&buf).chunks(64 * 1024).all(is_zero);
    }
    let fast = mib_s(8 * buf.len() as u64, t.elapsed().as_secs_f64());
    let t = Instant::now();
    for _ in 0..8 {
        all &= std::hint::black_box(&buf).iter().all(|&b| b == 0);
    }
    let naive = mib_s(8 * buf.len() as u64, t.elapsed().as_secs_f64());
    assert!(all);
    println!("in-memory is_zero (u128 words):      {fast:8.0} MiB/s");
    println!("in-memory naive iter().all(b == 0):  {naive:8.0} MiB/s");

    for (name, path) in [("zeros", &zeros), ("data", &data)] {
        // Warm the cache once so every reader sees the same state.
        dd(path);
        let d = dd(path);
        let (c, bytes) = chunk_read(path);
        let h = hash_scan(path, &dir.path().join(format!("{name}.digests")));
        let expect = if name == "zeros" { 0 } else { SIZE };
        assert_eq!(bytes, expect);
        println!("{name:5}: dd bs=1M {d:7.0} MiB/s | chunk reader + zero detect {c:7.0} MiB/s | hash scan (BLAKE3, 64 KiB) {h:7.0} MiB/s");
    }
}
