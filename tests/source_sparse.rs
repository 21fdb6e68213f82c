//! Thin (sparse) image files: holes are found with SEEK_DATA/SEEK_HOLE and never read,
//! yet chunks, digest lists, hash scans and image digests come out exactly as for a
//! dense copy of the same bytes; backups through the binary restore bit-identical and
//! sparse. Skipped (with a message) where the temp file system keeps no holes.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use tapevault::extents::{Extent, ExtentSet};
use tapevault::source::disk::{ChunkConfig, ChunkReader, Disk, SubExtent};
use tapevault::source::hashscan::{scan_changes, DigestFeed, ScanSummary};

/// Frees `[off, off + len)`: whole file-system blocks become holes, partial ones are
/// zeroed.
fn punch(path: &Path, off: u64, len: u64) {
    use nix::fcntl::{fallocate, FallocateFlags};
    let f = File::options().write(true).open(path).unwrap();
    fallocate(
        f.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off as i64,
        len as i64,
    )
    .expect("punch a hole");
}

/// Writes `len` bytes of a pattern that is never zero at `off`.
fn write_data(path: &Path, off: u64, len: u64, salt: u8) {
    let f = File::options().write(true).open(path).unwrap();
    let buf: Vec<u8> = (0..len)
        .map(|i| (((off + i) * 7 + salt as u64) % 251 + 1) as u8)
        .collect();
    f.write_all_at(&buf, off).unwrap();
}

fn write_zeros(path: &Path, off: u64, len: u64) {
    let f = File::options().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; len as usize], off).unwrap();
}

/// A file of `size` bytes, all hole.
fn thin(path: &Path, size: u64) {
    File::create(path).unwrap().set_len(size).unwrap();
}

/// A fully written copy of `from` (every byte on disk, zeros included).
fn dense_copy(from: &Path, to: &Path) {
    std::fs::write(to, std::fs::read(from).unwrap()).unwrap();
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Whether the file system under `dir` keeps holes and reports them by SEEK_DATA.
fn holes_supported(dir: &Path) -> bool {
    let p = dir.join("probe");
    thin(&p, 64 * MIB);
    write_data(&p, 32 * MIB, 1, 0);
    let disk = Disk::open(&p).unwrap();
    let first = disk.find_data(0).unwrap();
    let _ = std::fs::remove_file(&p);
    matches!(first, Some((s, _)) if s >= 16 * MIB)
}

macro_rules! need_holes {
    ($dir:expr) => {
        if !holes_supported($dir) {
            eprintln!("skipped: the temp file system does not report holes");
            return;
        }
    };
}

/// The layouts under test, each a thin file built in `dir`: holes starting and ending
/// mid-block, written zeros, data in the last partial block, a hole at the end, and a
/// file that is all hole.
fn layouts(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    let size = 3 * MIB + 12_345;

    let p = dir.join("odd");
    thin(&p, size);
    write_data(&p, 0, 5000, 1);
    write_data(&p, 200_003, 99_998, 2);
    write_zeros(&p, 300_001, 99_999);
    write_data(&p, MIB + 3 * 4096 + 17, 2 * 4096, 3);
    write_data(&p, 2 * MIB - 100, 200, 4); // across a 64 KiB boundary
    write_data(&p, size - 3000, 2000, 5); // in the last partial block
    out.push(("odd offsets", p));

    let p = dir.join("hole-at-end");
    thin(&p, size);
    write_data(&p, 70_000, 640 * KIB + 3, 6);
    out.push(("hole at the end", p));

    let p = dir.join("tail-only");
    thin(&p, size);
    write_data(&p, size - 1, 1, 7);
    out.push(("data in the last byte only", p));

    let p = dir.join("all-hole");
    thin(&p, size);
    out.push(("all hole", p));

    let p = dir.join("dense-zeros");
    std::fs::write(&p, vec![0u8; size as usize]).unwrap();
    write_data(&p, 333_333, 4096, 8);
    out.push(("zeros written, no holes", p));
    out
}

type Chunks = Vec<(Vec<SubExtent>, Vec<u8>)>;

/// Every chunk of a reader over `set` (or the whole disk), the digest list it fed
/// (whole-disk reads only), and its stats.
fn chunks_of(
    path: &Path,
    cfg: ChunkConfig,
    set: Option<&ExtentSet>,
    list: Option<&Path>,
) -> (Chunks, Option<Vec<u8>>, tapevault::source::disk::ChunkStats) {
    let disk = Disk::open(path).unwrap();
    let mut r = match set {
        Some(s) => ChunkReader::extents(&disk, cfg, s).unwrap(),
        None => ChunkReader::whole_disk(&disk, cfg).unwrap(),
    };
    if let Some(l) = list {
        let feed = DigestFeed::new(l, cfg.block_size, disk.size(), None).unwrap();
        r = r.with_digests(feed).unwrap();
    }
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk().unwrap() {
        out.push((c.extents.to_vec(), c.data.to_vec()));
    }
    let (stats, summary) = r.finish();
    let list_bytes = list.map(|l| {
        summary.unwrap().unwrap();
        std::fs::read(l).unwrap()
    });
    (out, list_bytes, stats)
}

const CONFIGS: [ChunkConfig; 4] = [
    ChunkConfig {
        record_data_size: 512 * 1024,
        block_size: 64 * 1024,
    },
    // Record sizes that are not a multiple of the block split blocks between chunks.
    ChunkConfig {
        record_data_size: 100_000,
        block_size: 64 * 1024,
    },
    ChunkConfig {
        record_data_size: 6000,
        block_size: 4096,
    },
    ChunkConfig {
        record_data_size: 4096 * 3 + 1,
        block_size: 512,
    },
];

#[test]
fn chunks_and_digest_lists_of_a_thin_file_equal_those_of_its_dense_copy() {
    let dir = tempfile::tempdir().unwrap();
    need_holes!(dir.path());
    for (name, thin_path) in layouts(dir.path()) {
        let dense = dir.path().join(format!("{}.dense", thin_path.display()));
        dense_copy(&thin_path, &dense);
        let size = std::fs::metadata(&thin_path).unwrap().len();
        for (i, cfg) in CONFIGS.iter().enumerate() {
            let lt = dir.path().join(format!("lt{i}"));
            let ld = dir.path().join(format!("ld{i}"));
            let (ct, lts, st) = chunks_of(&thin_path, *cfg, None, Some(&lt));
            let (cd, lds, sd) = chunks_of(&dense, *cfg, None, Some(&ld));
            assert_eq!(ct.len(), cd.len(), "{name}, config {i}: chunk count");
            for (n, (a, b)) in ct.iter().zip(&cd).enumerate() {
                assert_eq!(a, b, "{name}, config {i}: chunk {n} differs");
            }
            assert_eq!(lts, lds, "{name}, config {i}: digest lists differ");
            assert_eq!(
                (st.chunks, st.data_bytes, st.zero_bytes),
                (sd.chunks, sd.data_bytes, sd.zero_bytes),
                "{name}, config {i}"
            );
            assert_eq!(sd.read_bytes, size, "{name}: the dense copy is read whole");
            // The thin file is read only where it holds data (rounded to the file
            // system's blocks, a few KiB per run).
            assert!(
                st.read_bytes <= allocated(&thin_path),
                "{name}, config {i}: read {} bytes of a file with {} allocated",
                st.read_bytes,
                allocated(&thin_path)
            );
        }
        // Reading chosen, unaligned extents gives the same chunks too.
        let mut set = ExtentSet::new();
        set.insert(4000, 300_000);
        set.insert(MIB + 7, 3 * 64 * KIB);
        set.insert(2 * MIB - 5000, 5001);
        set.insert(size - 5000, 5000);
        for cfg in CONFIGS {
            let (ct, _, st) = chunks_of(&thin_path, cfg, Some(&set), None);
            let (cd, _, sd) = chunks_of(&dense, cfg, Some(&set), None);
            assert_eq!(ct, cd, "{name}: chunks of extents differ");
            assert_eq!(sd.read_bytes, set.total_bytes());
            assert!(st.read_bytes <= sd.read_bytes);
        }
    }
}

fn scan(path: &Path, bs: u64, prev: Option<&Path>, out: &Path) -> (Vec<Extent>, ScanSummary) {
    let disk = Disk::open(path).unwrap();
    let mut v = Vec::new();
    let s = scan_changes(&disk, bs, prev, out, |e| v.push(e)).unwrap();
    (v, s)
}

/// The changed blocks a byte comparison predicts, coalesced.
fn expected_changes(old: &[u8], new: &[u8], bs: usize) -> Vec<Extent> {
    let mut set = ExtentSet::new();
    for (i, nb) in new.chunks(bs).enumerate() {
        if old.get(i * bs..(i * bs + bs).min(old.len())) != Some(nb) {
            set.insert((i * bs) as u64, nb.len() as u64);
        }
    }
    set.iter().collect()
}

#[test]
fn hash_scans_of_a_thin_file_skip_holes_and_find_punched_and_filled_ones() {
    let dir = tempfile::tempdir().unwrap();
    need_holes!(dir.path());
    for (name, thin_path) in layouts(dir.path()) {
        let dense = dir.path().join(format!("{}.dense", thin_path.display()));
        dense_copy(&thin_path, &dense);
        let size = std::fs::metadata(&thin_path).unwrap().len();
        for bs in [4096u64, 64 * KIB] {
            let lt = dir.path().join("scan-thin");
            let ld = dir.path().join("scan-dense");
            let (_, st) = scan(&thin_path, bs, None, &lt);
            let (_, sd) = scan(&dense, bs, None, &ld);
            assert_eq!(
                std::fs::read(&lt).unwrap(),
                std::fs::read(&ld).unwrap(),
                "{name}, block {bs}: scan lists differ"
            );
            assert_eq!(sd.read_bytes, size);
            assert!(
                st.read_bytes <= allocated(&thin_path),
                "{name}: the scan read {} bytes, {} are allocated",
                st.read_bytes,
                allocated(&thin_path)
            );
            // Against the dense copy's list the thin file has not changed: its holes
            // were zeros there.
            let (changes, _) = scan(&thin_path, bs, Some(&ld), &dir.path().join("x"));
            assert_eq!(changes, vec![], "{name}, block {bs}");
            // And the list a full backup feeds is the same list.
            let cfg = ChunkConfig {
                record_data_size: 512 * 1024,
                block_size: bs,
            };
            let fed = dir.path().join("fed");
            let (_, fed_bytes, _) = chunks_of(&thin_path, cfg, None, Some(&fed));
            assert_eq!(fed_bytes.unwrap(), std::fs::read(&ld).unwrap(), "{name}");
        }
    }

    // Punch a hole over data (mid-block at both ends), then fill one: each scan reports
    // exactly the blocks whose bytes changed.
    let p = dir.path().join("odd");
    let bs = 4096u64;
    let l0 = dir.path().join("l0");
    scan(&p, bs, None, &l0);
    let before = std::fs::read(&p).unwrap();
    punch(&p, 210_000, 50_001);
    let after = std::fs::read(&p).unwrap();
    let l1 = dir.path().join("l1");
    let (changes, _) = scan(&p, bs, Some(&l0), &l1);
    assert!(!changes.is_empty());
    assert_eq!(changes, expected_changes(&before, &after, bs as usize));
    write_data(&p, 1_500_001, 70_000, 9);
    let filled = std::fs::read(&p).unwrap();
    let l2 = dir.path().join("l2");
    let (changes, _) = scan(&p, bs, Some(&l1), &l2);
    assert_eq!(changes, expected_changes(&after, &filled, bs as usize));
    let (changes, _) = scan(&p, bs, Some(&l2), &dir.path().join("l3"));
    assert_eq!(changes, vec![]);
}

/// The bytes of a file, and whether they equal `expected`'s.
fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn thin_disks_back_up_by_full_and_hash_scan_without_reading_holes_and_restore_sparse() {
    let v = Vault::small(4, "64M");
    need_holes!(&v.root);
    v.pool("p", "zstd:3");
    let size = 48 * MIB + 4321;
    let disk = TestDisk::create(v.path("thin.img"), size, 0, 11);
    let path = disk.path.clone();
    write_data(&path, 12_345, 300_000, 1);
    write_data(&path, 7 * MIB + 65_535, 2, 2); // straddles a tracking block boundary
    write_data(&path, 20 * MIB + 100, 500 * KIB, 3);
    write_zeros(&path, 30 * MIB, 256 * KIB); // zeros written: data, read, zero extents
    write_data(&path, size - 1000, 999, 4); // the last partial block; its last byte a hole
    assert!(allocated(&path) < 4 * MIB, "the test disk is thin");
    let data_on_disk = allocated(&path);

    let mut points: Vec<(String, PathBuf)> = Vec::new();
    let full = v.backup(&disk, "p", &[]);
    assert_eq!(s(&full, "method"), "full");
    assert_eq!(u(&full, "data_bytes") + u(&full, "zero_bytes"), size);
    let read = u(&full, "read_bytes");
    assert!(
        read <= data_on_disk && read >= 800 * KIB,
        "a full backup reads what the disk holds ({data_on_disk} bytes allocated), read {read}"
    );
    assert!(u(&full, "zero_bytes") >= 47 * MIB);
    let copy = v.path("p0.img");
    disk.save_copy(&copy);
    points.push((s(&full, "image").to_string(), copy));

    // The same bytes written densely, under another disk id, make the same image
    // content digest: the holes went in as the zeros they read as.
    let mut dense = TestDisk::create(v.path("dense.img"), 0, 0, 12);
    dense_copy(&path, &dense.path);
    dense.resize(size);
    let dfull = v.backup(&dense, "p", &[]);
    assert_eq!(u(&dfull, "read_bytes"), size, "a dense file is read whole");
    assert_eq!(s(&dfull, "digest"), s(&full, "digest"));
    assert_eq!(u(&dfull, "zero_bytes"), u(&full, "zero_bytes"));

    // Punch a hole through data (ends mid-block): a hash scan finds it and records
    // zeros, reading only the data the disk still holds.
    punch(&path, 100_000, 150_003);
    let inc = v.backup(&disk, "p", &[]);
    assert_eq!(s(&inc, "method"), "hash-scan");
    let read = u(&inc, "read_bytes");
    assert!(
        read <= 2 * data_on_disk,
        "the scan and the backup read {read} bytes of a disk holding {data_on_disk}"
    );
    assert!(
        u(&inc, "zero_bytes") > 0,
        "the punched blocks became zeros: {inc}"
    );
    let copy = v.path("p1.img");
    disk.save_copy(&copy);
    points.push((s(&inc, "image").to_string(), copy));

    // Fill a hole, mid-block at both ends.
    write_data(&path, 40 * MIB + 3, 200_001, 5);
    let inc = v.backup(&disk, "p", &[]);
    assert_eq!(s(&inc, "method"), "hash-scan");
    assert!(u(&inc, "data_bytes") >= 200_001);
    assert!(u(&inc, "read_bytes") <= 2 * allocated(&path));
    let copy = v.path("p2.img");
    disk.save_copy(&copy);
    points.push((s(&inc, "image").to_string(), copy));

    // Nothing changed: the scan reads the data only, and finds nothing.
    let inc = v.backup(&disk, "p", &[]);
    assert_eq!(s(&inc, "method"), "hash-scan");
    assert_eq!(u(&inc, "data_bytes") + u(&inc, "zero_bytes"), 0, "{inc}");
    assert!(u(&inc, "read_bytes") <= allocated(&path));
    let copy = v.path("p3.img");
    disk.save_copy(&copy);
    points.push((s(&inc, "image").to_string(), copy));

    for (n, (image, expected)) in points.iter().enumerate() {
        let to = v.path(&format!("restored{n}.img"));
        let r = v.restore_image(disk.id, image, &to);
        assert_eq!(r.code, 0, "restore of point {n}: {}", r.stderr);
        assert!(same(&to, expected), "point {n} restores bit-identical");
        assert_eq!(std::fs::metadata(&to).unwrap().len(), size);
        assert!(
            allocated(&to) < 8 * MIB,
            "point {n} restores sparse: {} bytes allocated",
            allocated(&to)
        );
    }
    v.assert_catalog_consistent();
}

#[test]
fn an_all_hole_disk_backs_up_as_zeros_reading_nothing_and_restores_as_a_hole() {
    let v = Vault::small(2, "16M");
    need_holes!(&v.root);
    v.pool("p", "off");
    let size = 5 * 1024 * MIB + 3; // 5 GiB and a partial block
    let disk = TestDisk::create(v.path("empty.img"), size, 0, 1);
    let full = v.backup(&disk, "p", &[]);
    assert_eq!(u(&full, "read_bytes"), 0);
    assert_eq!(u(&full, "zero_bytes"), size);
    assert_eq!(u(&full, "data_bytes"), 0);
    let inc = v.backup(&disk, "p", &[]);
    assert_eq!(s(&inc, "method"), "hash-scan");
    assert_eq!(u(&inc, "read_bytes"), 0);
    assert_eq!(u(&inc, "zero_bytes") + u(&inc, "data_bytes"), 0);
    let to = v.path("restored.img");
    let r = v.restore_image(disk.id, s(&inc, "image"), &to);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::metadata(&to).unwrap().len(), size);
    assert!(allocated(&to) < MIB, "restored as a hole");
    assert_eq!(Disk::open(&to).unwrap().find_data(0).unwrap(), None);
}
