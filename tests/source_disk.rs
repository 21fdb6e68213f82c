//! Disk reading, chunking with zero detection, digest lists and hash scans, on real
//! files in temporary directories.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tapevault::extents::{Extent, ExtentSet};
use tapevault::source::disk::{ChunkConfig, ChunkReader, Disk, DiskError, ExtentKind};
use tapevault::source::hashscan::{
    scan_changes, verify_digest_list, DigestFeed, DigestListError, DigestListReader, ScanError,
};
use tapevault::source::input::InputError;

fn disk_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Reads every chunk, checking the invariants, and rebuilds the bytes the chunks
/// describe into a copy of the disk (unread bytes stay 0xEE).
fn read_all(
    disk: &Disk,
    cfg: ChunkConfig,
    set: Option<&ExtentSet>,
) -> (Vec<u8>, Vec<(u64, u64, ExtentKind)>) {
    let mut reader = match set {
        Some(s) => ChunkReader::extents(disk, cfg, s).unwrap(),
        None => ChunkReader::whole_disk(disk, cfg).unwrap(),
    };
    let mut out = vec![0xEEu8; disk.size() as usize];
    let mut all = Vec::new();
    let mut last_end = 0u64;
    while let Some(chunk) = reader.next_chunk().unwrap() {
        assert!(
            chunk.data.len() <= cfg.record_data_size,
            "chunk data exceeds the record size"
        );
        assert!(!chunk.extents.is_empty());
        let mut at = 0usize;
        for e in chunk.extents {
            assert!(e.len > 0);
            assert!(e.offset >= last_end, "sub-extents ascend without overlap");
            last_end = e.offset + e.len;
            let range = e.offset as usize..(e.offset + e.len) as usize;
            match e.kind {
                ExtentKind::Data => {
                    out[range].copy_from_slice(&chunk.data[at..at + e.len as usize]);
                    at += e.len as usize;
                }
                ExtentKind::Zero => out[range].fill(0),
            }
            all.push((e.offset, e.len, e.kind));
        }
        assert_eq!(
            at,
            chunk.data.len(),
            "data buffer holds exactly the data sub-extents"
        );
    }
    (out, all)
}

/// A disk image from a recipe of blocks: 0 = zeros, 1 = data, 2 = mostly zero with
/// one non-zero byte at a random place.
fn build(blocks: &[(u8, u16)], block: usize, tail: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, &(kind, pos)) in blocks.iter().enumerate() {
        let mut b = vec![0u8; block];
        match kind {
            1 => b
                .iter_mut()
                .enumerate()
                .for_each(|(j, x)| *x = (i * 7 + j) as u8 | 1),
            2 => b[pos as usize % block] = 0x80,
            _ => {}
        }
        v.extend_from_slice(&b);
    }
    v.extend((0..tail).map(|j| if j % 3 == 0 { 0 } else { 5 }));
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Zero detection against a naive per-block check, and chunking against the
    /// record size, over whole disks whose size need not be a block multiple.
    #[test]
    fn chunks_rebuild_the_disk_and_zero_blocks_match_naive(
        blocks in prop::collection::vec((0u8..3, any::<u16>()), 0..40),
        tail in 0usize..1024,
        record_blocks in 1usize..6,
        record_extra in 0usize..700,
    ) {
        let bs = 1024usize;
        let bytes = build(&blocks, bs, tail);
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(&disk_file(dir.path(), "d.raw", &bytes)).unwrap();
        let cfg = ChunkConfig { record_data_size: record_blocks * bs + record_extra, block_size: bs as u64 };
        let (out, subs) = read_all(&disk, cfg, None);
        prop_assert_eq!(&out, &bytes);
        // Every byte marked Zero is in a block (or tail piece) that is all zero; every
        // all-zero block is marked Zero.
        let mut zero_marked = vec![false; bytes.len()];
        for (o, l, k) in &subs {
            if *k == ExtentKind::Zero { zero_marked[*o as usize..(*o + *l) as usize].fill(true); }
        }
        for (i, blk) in bytes.chunks(bs).enumerate() {
            let naive = blk.iter().all(|&b| b == 0);
            let start = i * bs;
            if naive {
                prop_assert!(zero_marked[start..start + blk.len()].iter().all(|&z| z), "block {} is zero", i);
            }
            if zero_marked[start] && record_extra == 0 {
                // With block-multiple records no block is split, so marks are whole-block.
                prop_assert!(naive, "block {} marked zero but holds data", i);
            }
        }
    }

    /// Reading a set of extents yields exactly those bytes, nothing else.
    #[test]
    fn chunk_reader_reads_exactly_the_given_extents(
        raw in prop::collection::vec((0u64..20_000, 1u64..3000), 0..10),
        record in 500usize..5000,
    ) {
        let bytes: Vec<u8> = (0..20_000u32).map(|i| if (i / 1500) % 2 == 0 { 0 } else { (i % 251) as u8 | 1 }).collect();
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(&disk_file(dir.path(), "d.raw", &bytes)).unwrap();
        let mut set = ExtentSet::new();
        for (o, l) in raw { set.insert(o, l.min(20_000 - o)); }
        let cfg = ChunkConfig { record_data_size: record, block_size: 512 };
        let (out, _) = read_all(&disk, cfg, Some(&set));
        for (i, (&o, &b)) in out.iter().zip(&bytes).enumerate() {
            if set.contains(i as u64) { prop_assert_eq!(o, b, "byte {}", i); } else { prop_assert_eq!(o, 0xEE, "byte {} read", i); }
        }
    }
}

proptest! {
    /// Taking each chunk's data with `swap_data` (and handing back recycled buffers of
    /// any length and content, as the backup pipeline does) yields the same chunks as
    /// reading them in place: the reader never trusts a returned buffer's old bytes.
    #[test]
    fn swapping_buffers_out_yields_the_same_chunks(
        raw in prop::collection::vec((0u64..20_000, 1u64..3000), 1..8),
        record in 500usize..5000,
        junk in prop::collection::vec((0usize..6000, any::<u8>()), 1..4),
    ) {
        let bytes: Vec<u8> = (0..20_000u32).map(|i| if (i / 1500) % 2 == 0 { 0 } else { (i % 251) as u8 | 1 }).collect();
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(&disk_file(dir.path(), "d.raw", &bytes)).unwrap();
        let mut set = ExtentSet::new();
        for (o, l) in raw { set.insert(o, l.min(20_000 - o)); }
        let cfg = ChunkConfig { record_data_size: record, block_size: 512 };
        let mut plain = ChunkReader::extents(&disk, cfg, &set).unwrap();
        let mut expected = Vec::new();
        while let Some(c) = plain.next_chunk().unwrap() {
            expected.push((c.extents.to_vec(), c.data.to_vec()));
        }
        let mut swapping = ChunkReader::extents(&disk, cfg, &set).unwrap();
        let mut pool: Vec<Vec<u8>> = junk.iter().map(|&(n, b)| vec![b; n]).collect();
        let mut got = Vec::new();
        let mut i = 0;
        while let Some(extents) = swapping.next_chunk().unwrap().map(|c| c.extents.to_vec()) {
            let mut buf = std::mem::take(&mut pool[i % junk.len()]);
            swapping.swap_data(&mut buf);
            got.push((extents, buf.clone()));
            pool[i % junk.len()] = buf;
            i += 1;
        }
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn sparse_disk_becomes_few_zero_extents_and_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(10 * 1024 * 1024 + 123).unwrap();
    drop(f);
    let disk = Disk::open(&p).unwrap();
    let mut r = ChunkReader::whole_disk(&disk, ChunkConfig::default()).unwrap();
    let mut n = 0;
    while let Some(c) = r.next_chunk().unwrap() {
        assert!(c.data.is_empty());
        assert_eq!(c.extents.len(), 1, "zero runs coalesce");
        assert_eq!(c.range(), (0, 10 * 1024 * 1024 + 123));
        n += 1;
    }
    assert_eq!(n, 1);
    assert_eq!(r.stats().zero_bytes, 10 * 1024 * 1024 + 123);
}

#[test]
fn opening_non_disks_and_bad_settings_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Disk::open(dir.path()),
        Err(DiskError::Input(InputError::WrongKind {
            kind: "a directory",
            ..
        }))
    ));
    assert!(matches!(
        Disk::open(&dir.path().join("none")),
        Err(DiskError::Input(InputError::Missing { .. }))
    ));
    let disk = Disk::open(&disk_file(dir.path(), "d", &[1u8; 100])).unwrap();
    let cfg = ChunkConfig {
        record_data_size: 4096,
        block_size: 1000,
    };
    assert!(matches!(
        ChunkReader::whole_disk(&disk, cfg),
        Err(DiskError::Config(_))
    ));
    let mut set = ExtentSet::new();
    set.insert(50, 51);
    assert!(matches!(
        ChunkReader::extents(&disk, ChunkConfig::default(), &set),
        Err(DiskError::ExtentBeyondDisk { .. })
    ));
}

#[test]
fn disk_that_shrinks_during_read_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = disk_file(dir.path(), "d", &[1u8; 8192]);
    let disk = Disk::open(&p).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let mut r = ChunkReader::whole_disk(
        &disk,
        ChunkConfig {
            record_data_size: 8192,
            block_size: 4096,
        },
    )
    .unwrap();
    assert!(matches!(
        r.next_chunk(),
        Err(DiskError::Truncated { offset: 4096, .. })
    ));
}

fn scan(
    disk_path: &Path,
    bs: u64,
    prev: Option<&Path>,
    out: &Path,
) -> Result<Vec<Extent>, ScanError> {
    let disk = Disk::open(disk_path).unwrap();
    let mut v = Vec::new();
    let s = scan_changes(&disk, bs, prev, out, |e| v.push(e))?;
    assert_eq!(s.changed_bytes, v.iter().map(|e| e.len).sum::<u64>());
    Ok(v)
}

/// The changed blocks a byte-level comparison predicts, coalesced.
fn expected_changes(old: &[u8], new: &[u8], bs: usize) -> Vec<Extent> {
    let mut set = ExtentSet::new();
    for (i, nb) in new.chunks(bs).enumerate() {
        let ob = old.get(i * bs..(i * bs + bs).min(old.len()));
        if ob != Some(nb) {
            set.insert((i * bs) as u64, nb.len() as u64);
        }
    }
    set.iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, .. ProptestConfig::default() })]

    /// Random edits, growth and shrinkage: the scan reports exactly the blocks whose
    /// bytes differ (and every block past the old end), and the list it writes is the
    /// one a later scan of the same disk finds no change against.
    #[test]
    fn hash_scan_reports_exactly_the_changed_blocks(
        size in 0usize..12_000,
        new_size in 0usize..12_000,
        edits in prop::collection::vec((0usize..12_000, any::<u8>()), 0..12),
    ) {
        let bs = 1024usize;
        let old: Vec<u8> = (0..size).map(|i| if (i / 3000) % 2 == 0 { 0 } else { (i * 31 % 255) as u8 }).collect();
        let mut new = old.clone();
        new.resize(new_size, 0);
        for (at, v) in edits { if at < new.len() { new[at] = v; } }
        let dir = tempfile::tempdir().unwrap();
        let d = disk_file(dir.path(), "d.raw", &old);
        let l1 = dir.path().join("l1");
        let all = scan(&d, bs as u64, None, &l1).unwrap();
        let full: Vec<Extent> = if size > 0 { vec![Extent::new(0, size as u64)] } else { vec![] };
        prop_assert_eq!(all, full);
        std::fs::write(&d, &new).unwrap();
        let l2 = dir.path().join("l2");
        prop_assert_eq!(scan(&d, bs as u64, Some(&l1), &l2).unwrap(), expected_changes(&old, &new, bs));
        // The new list describes the new disk: no changes against it.
        prop_assert_eq!(scan(&d, bs as u64, Some(&l2), &l2).unwrap(), vec![]);
        prop_assert_eq!(verify_digest_list(&l2, Some(bs as u64)).unwrap().disk_size, new_size as u64);
    }
}

#[test]
fn digest_list_fed_by_full_backup_equals_scan_list() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = build(&[(1, 0), (0, 0), (2, 77), (0, 0), (1, 0)], 4096, 1000);
    let p = disk_file(dir.path(), "d", &bytes);
    let disk = Disk::open(&p).unwrap();
    let fed = dir.path().join("fed");
    let feed = DigestFeed::new(&fed, 4096, disk.size(), None).unwrap();
    let cfg = ChunkConfig {
        record_data_size: 6000,
        block_size: 4096,
    };
    let mut r = ChunkReader::whole_disk(&disk, cfg)
        .unwrap()
        .with_digests(feed)
        .unwrap();
    while r.next_chunk().unwrap().is_some() {}
    let (stats, summary) = r.finish();
    assert_eq!(stats.data_bytes + stats.zero_bytes, bytes.len() as u64);
    assert_eq!(summary.unwrap().unwrap().count, 6);
    let scanned = dir.path().join("scanned");
    scan(&p, 4096, None, &scanned).unwrap();
    assert_eq!(
        std::fs::read(&fed).unwrap(),
        std::fs::read(&scanned).unwrap()
    );
    // And a scan against the fed list sees no change.
    assert_eq!(
        scan(&p, 4096, Some(&fed), &dir.path().join("x")).unwrap(),
        vec![]
    );
}

#[test]
fn digest_list_fed_by_cbt_incremental_copies_unread_blocks_from_previous() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = build(&[(1, 0), (0, 0), (1, 0), (1, 0), (0, 0), (1, 0)], 4096, 500);
    let p = disk_file(dir.path(), "d", &bytes);
    let l1 = dir.path().join("l1");
    scan(&p, 4096, None, &l1).unwrap();
    // Change blocks 1 and 4; the "CBT" reports them (aligned).
    bytes[4096 + 10] = 9;
    bytes[4 * 4096 + 4095] = 9;
    std::fs::write(&p, &bytes).unwrap();
    let disk = Disk::open(&p).unwrap();
    let mut set = ExtentSet::new();
    set.insert(4096, 4096);
    set.insert(4 * 4096, 4096);
    let l2 = dir.path().join("l2");
    let feed = DigestFeed::new(&l2, 4096, disk.size(), Some(&l1)).unwrap();
    let mut r = ChunkReader::extents(
        &disk,
        ChunkConfig {
            record_data_size: 8192,
            block_size: 4096,
        },
        &set,
    )
    .unwrap()
    .with_digests(feed)
    .unwrap();
    while r.next_chunk().unwrap().is_some() {}
    r.finish().1.unwrap().unwrap();
    let l3 = dir.path().join("l3");
    scan(&p, 4096, None, &l3).unwrap();
    assert_eq!(std::fs::read(&l2).unwrap(), std::fs::read(&l3).unwrap());
}

#[test]
fn digest_feed_refuses_up_front_what_it_could_not_complete() {
    let dir = tempfile::tempdir().unwrap();
    let p = disk_file(dir.path(), "d", &[7u8; 3 * 4096 + 100]);
    let disk = Disk::open(&p).unwrap();
    let out = dir.path().join("l");
    let reader =
        |set: &ExtentSet| ChunkReader::extents(&disk, ChunkConfig::default(), set).unwrap();
    let block1: ExtentSet = [Extent::new(4096, 4096)].into_iter().collect();
    // No previous list: unread blocks have no digest.
    let feed = DigestFeed::new(&out, 4096, disk.size(), None).unwrap();
    assert!(matches!(
        reader(&block1).with_digests(feed),
        Err(DigestListError::Feed(_))
    ));
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no partial file left behind"
    );
    // Previous list of a smaller disk: the now-longer last block has no digest.
    let small = disk_file(dir.path(), "small", &[7u8; 3 * 4096]);
    let prev_small = dir.path().join("prev_small");
    scan(&small, 4096, None, &prev_small).unwrap();
    let feed = DigestFeed::new(&out, 4096, disk.size(), Some(&prev_small)).unwrap();
    assert!(matches!(
        reader(&block1).with_digests(feed),
        Err(DigestListError::Feed(_))
    ));
    // ... but reading the grown tail itself makes it work.
    let mut set = block1.clone();
    set.insert(3 * 4096, 100);
    let feed = DigestFeed::new(&out, 4096, disk.size(), Some(&prev_small)).unwrap();
    let mut r = reader(&set).with_digests(feed).unwrap();
    while r.next_chunk().unwrap().is_some() {}
    r.finish().1.unwrap().unwrap();
    assert_eq!(
        scan(&p, 4096, Some(&out), &dir.path().join("x")).unwrap(),
        vec![]
    );
    // Unaligned extents leave partial blocks unread.
    let odd: ExtentSet = [Extent::new(100, 4096)].into_iter().collect();
    let feed = DigestFeed::new(&dir.path().join("l2"), 4096, disk.size(), Some(&out)).unwrap();
    assert!(matches!(
        reader(&odd).with_digests(feed),
        Err(DigestListError::Feed(_))
    ));
    // A corrupt previous list is refused before anything is read.
    let mut b = std::fs::read(&out).unwrap();
    b[50] ^= 1;
    std::fs::write(&out, &b).unwrap();
    assert!(matches!(
        DigestFeed::new(&dir.path().join("l3"), 4096, disk.size(), Some(&out)),
        Err(DigestListError::Corrupt { .. })
    ));
}

#[test]
fn corrupt_truncated_missing_or_mismatched_previous_list_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = disk_file(dir.path(), "d", &build(&[(1, 0), (1, 0), (0, 0)], 4096, 0));
    let l1 = dir.path().join("l1");
    scan(&p, 4096, None, &l1).unwrap();
    let good = std::fs::read(&l1).unwrap();
    let out = dir.path().join("out");
    let prev_err = |bytes: &[u8]| {
        let bad = dir.path().join("bad");
        std::fs::write(&bad, bytes).unwrap();
        let mut reported = 0;
        let disk = Disk::open(&p).unwrap();
        match scan_changes(&disk, 4096, Some(&bad), &out, |_| reported += 1) {
            Err(ScanError::PreviousList(e)) => {
                assert_eq!(reported, 0, "no extent reported before the error");
                e
            }
            other => panic!("expected a previous-list error, got {other:?}"),
        }
    };
    // One flipped bit in every position of the body or trailer is caught (the
    // version 2 header is 48 bytes; its body length is checked against the file's).
    assert_eq!(u32::from_le_bytes(good[8..12].try_into().unwrap()), 2);
    for i in 48..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x10;
        assert!(
            matches!(prev_err(&b), DigestListError::Corrupt { .. }),
            "flip at {i}"
        );
    }
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(prev_err(&b), DigestListError::BadMagic { .. }));
    let mut b = good.clone();
    b[8] = 3;
    assert!(matches!(
        prev_err(&b),
        DigestListError::UnsupportedVersion { version: 3, .. }
    ));
    let mut b = good.clone();
    b[40] ^= 1; // body length
    assert!(matches!(prev_err(&b), DigestListError::WrongLength { .. }));
    let mut b = good.clone();
    b[32] = 9; // count
    assert!(matches!(prev_err(&b), DigestListError::Inconsistent { .. }));
    assert!(matches!(
        prev_err(&good[..good.len() - 1]),
        DigestListError::WrongLength { .. }
    ));
    assert!(matches!(
        prev_err(&good[..10]),
        DigestListError::BadMagic { .. }
    ));
    let disk = Disk::open(&p).unwrap();
    let missing = scan_changes(&disk, 4096, Some(&dir.path().join("nope")), &out, |_| {});
    assert!(matches!(
        missing,
        Err(ScanError::PreviousList(DigestListError::Missing { .. }))
    ));
    let mismatch = scan_changes(&disk, 8192, Some(&l1), &out, |_| {});
    match mismatch {
        Err(ScanError::PreviousList(
            e @ DigestListError::BlockSizeMismatch {
                list: 4096,
                wanted: 8192,
                ..
            },
        )) => {
            assert!(e.to_string().contains("4096"));
        }
        other => panic!("{other:?}"),
    }
    // The good list still reads fine and streams its digests.
    let mut r = DigestListReader::open(&l1, None).unwrap();
    let mut n = 0;
    while r.next_digest().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
}

/// Needs a block device, so it is opt-in: attach a file to a loop device and run
/// `TAPEVAULT_TEST_BLOCKDEV=/dev/loopN TAPEVAULT_TEST_BLOCKDEV_BACKING=FILE
///  cargo test --test source_disk -- --ignored block_device`.
#[test]
#[ignore = "needs a block device (loop device) named in TAPEVAULT_TEST_BLOCKDEV"]
fn block_device_size_and_contents_match_its_backing_file() {
    let dev = PathBuf::from(
        std::env::var_os("TAPEVAULT_TEST_BLOCKDEV").expect("TAPEVAULT_TEST_BLOCKDEV"),
    );
    let backing =
        std::fs::read(std::env::var_os("TAPEVAULT_TEST_BLOCKDEV_BACKING").expect("backing file"))
            .unwrap();
    let disk = Disk::open(&dev).unwrap();
    assert_eq!(disk.kind(), tapevault::source::disk::DiskKind::BlockDevice);
    assert_eq!(disk.size(), backing.len() as u64);
    let (out, _) = read_all(&disk, ChunkConfig::default(), None);
    assert!(
        out == backing,
        "device contents differ from the backing file"
    );
}

#[test]
fn chunk_extent_table_is_bounded_when_zero_and_data_blocks_alternate() {
    use tapevault::source::disk::MAX_EXTENTS_PER_CHUNK;
    let bs = 512usize;
    let blocks: Vec<(u8, u16)> = (0..5000).map(|i| ((i % 2) as u8, 0)).collect();
    let bytes = build(&blocks, bs, 0);
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::open(&disk_file(dir.path(), "d", &bytes)).unwrap();
    let cfg = ChunkConfig {
        record_data_size: 4 * 1024 * 1024,
        block_size: bs as u64,
    };
    let mut r = ChunkReader::whole_disk(&disk, cfg).unwrap();
    let mut chunks = 0;
    let mut covered = 0u64;
    while let Some(c) = r.next_chunk().unwrap() {
        assert!(
            c.extents.len() <= MAX_EXTENTS_PER_CHUNK,
            "{} sub-extents",
            c.extents.len()
        );
        covered += c.extents.iter().map(|e| e.len).sum::<u64>();
        chunks += 1;
    }
    assert_eq!(covered, bytes.len() as u64);
    assert!(
        chunks >= 5,
        "5000 alternating blocks need at least 5 chunks, got {chunks}"
    );
    let (out, _) = read_all(&disk, cfg, None);
    assert!(out == bytes);
}
