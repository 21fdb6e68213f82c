//! Fault injection and recovery: torn tails, power cuts, media errors, hangs.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use vtl_sim::{Cartridge, CartridgeMeta, FaultOp, Faults, Hang, Read, VtlError, Written};

fn new_cart(cap: u64, ew: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("TV0001L9");
    Cartridge::create(&dir, &CartridgeMeta::new("TV0001L9", cap, ew)).unwrap();
    (tmp, dir)
}

fn set_faults(dir: &std::path::Path, f: &Faults) {
    std::fs::write(dir.join("faults.json"), serde_json::to_vec(f).unwrap()).unwrap();
}

fn append(path: &std::path::Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

#[test]
fn torn_tail_is_cut_at_load() {
    let (_t, dir) = new_cart(1 << 20, 1 << 10);
    let mut c = Cartridge::open(&dir).unwrap();
    c.write_block(&[1u8; 100]).unwrap();
    c.write_filemarks(1, true).unwrap();
    c.write_block(&[2u8; 200]).unwrap();
    drop(c);
    // A crash mid-write: data without an entry, half an entry, a filemark-list entry
    // whose index entry never made it.
    append(&dir.join("data"), &[9u8; 333]);
    append(&dir.join("index"), &[0xAB; 7]);
    append(&dir.join("filemarks"), &3u64.to_le_bytes());
    let mut c = Cartridge::open(&dir).unwrap();
    assert_eq!(c.object_count(), 3);
    assert_eq!(c.bytes_used(), 300);
    let mut buf = vec![0u8; 1000];
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::Block(100));
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::Filemark);
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::Block(200));
    assert_eq!(&buf[..200], &[2u8; 200][..]);
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::EndOfData);
    assert_eq!(std::fs::metadata(dir.join("data")).unwrap().len(), 300);
    assert_eq!(std::fs::metadata(dir.join("filemarks")).unwrap().len(), 8);
}

#[test]
fn index_entry_pointing_past_the_data_is_dropped() {
    let (_t, dir) = new_cart(1 << 20, 1 << 10);
    let mut c = Cartridge::open(&dir).unwrap();
    c.write_block(&[1u8; 100]).unwrap();
    c.write_block(&[2u8; 100]).unwrap();
    drop(c);
    // The data of the second block was lost (e.g. power loss without fsync).
    OpenOptions::new()
        .write(true)
        .open(dir.join("data"))
        .unwrap()
        .set_len(150)
        .unwrap();
    let mut c = Cartridge::open(&dir).unwrap();
    assert_eq!(c.object_count(), 1);
    assert_eq!(c.bytes_used(), 100);
    c.space_to_eod().unwrap();
    assert_eq!(c.position().unwrap().block, 1);
}

#[test]
fn power_cut_mid_block_leaves_no_partial_block() {
    let (_t, dir) = new_cart(1 << 20, 1 << 10);
    let mut c = Cartridge::open(&dir).unwrap();
    c.write_block(&[7u8; 1000]).unwrap();
    set_faults(
        &dir,
        &Faults {
            power_cut_after_bytes: Some(1500),
            ..Faults::default()
        },
    );
    c.reload_controls().unwrap();
    c.write_block(&[8u8; 1000]).unwrap();
    let e = c.write_block(&[9u8; 1000]).unwrap_err();
    assert!(matches!(e, VtlError::PowerCut { .. }), "{e}");
    // The partial bytes reached the data file ...
    assert_eq!(std::fs::metadata(dir.join("data")).unwrap().len(), 2500);
    drop(c);
    // ... but after reopening only the two completed blocks are there.
    let mut c = Cartridge::open(&dir).unwrap();
    assert_eq!(c.object_count(), 2);
    assert_eq!(c.bytes_used(), 2000);
    let mut buf = vec![0u8; 4096];
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::Block(1000));
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::Block(1000));
    assert_eq!(&buf[..1000], &[8u8; 1000][..]);
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::EndOfData);
    // The fault fired once and is gone.
    c.write_block(&[10u8; 1000]).unwrap();
}

#[test]
fn power_cut_recovers_in_place_on_next_operation() {
    let (_t, dir) = new_cart(1 << 20, 1 << 10);
    set_faults(
        &dir,
        &Faults {
            power_cut_after_bytes: Some(10),
            ..Faults::default()
        },
    );
    let mut c = Cartridge::open(&dir).unwrap();
    assert!(matches!(
        c.write_block(&[1u8; 100]),
        Err(VtlError::PowerCut { .. })
    ));
    let p = c.position().unwrap();
    assert_eq!(p.block, 0);
    assert_eq!(c.object_count(), 0);
    assert_eq!(c.write_block(&[2u8; 100]).unwrap(), Written::Written);
    assert_eq!(c.bytes_used(), 100);
}

#[test]
fn media_error_reports_the_block_and_does_not_move() {
    let (_t, dir) = new_cart(1 << 20, 1 << 10);
    let mut c = Cartridge::open(&dir).unwrap();
    for i in 0..4u8 {
        c.write_block(&[i; 10]).unwrap();
    }
    drop(c);
    set_faults(
        &dir,
        &Faults {
            media_error_blocks: vec![2],
            ..Faults::default()
        },
    );
    let mut c = Cartridge::open(&dir).unwrap();
    let mut buf = [0u8; 10];
    c.locate(2).unwrap();
    match c.read_block(&mut buf) {
        Err(VtlError::MediaError { block: 2, .. }) => {}
        other => panic!("expected media error at block 2, got {other:?}"),
    }
    assert_eq!(c.position().unwrap().block, 2);
    // The reader skips the bad block by spacing over it.
    c.space_blocks(1).unwrap();
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::Block(10));
    assert_eq!(buf, [3u8; 10]);
}

#[test]
fn hang_longer_than_timeout_times_out_and_leaves_state_alone() {
    let (_t, dir) = new_cart(1 << 20, 1 << 10);
    let mut c = Cartridge::open(&dir).unwrap();
    c.write_block(&[1u8; 10]).unwrap();
    c.rewind().unwrap();
    set_faults(
        &dir,
        &Faults {
            hang: Some(Hang {
                op: FaultOp::Read,
                millis: 600_000,
                times: 1,
            }),
            ..Faults::default()
        },
    );
    c.reload_controls().unwrap();
    let timeout = Duration::from_millis(100);
    c.set_operation_timeout(timeout);
    let mut buf = [0u8; 10];
    let t0 = Instant::now();
    match c.read_block(&mut buf) {
        Err(VtlError::Timeout { after, .. }) => assert_eq!(after, timeout),
        other => panic!("expected timeout, got {other:?}"),
    }
    let took = t0.elapsed();
    assert!(took >= timeout, "returned before the timeout: {took:?}");
    assert!(
        took < Duration::from_secs(300),
        "waited for the whole hang: {took:?}"
    );
    assert_eq!(c.position().unwrap().block, 0);
    // The hang fired once; the read now works.
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::Block(10));
}

#[test]
fn short_hang_completes_the_operation() {
    let (_t, dir) = new_cart(1 << 20, 1 << 10);
    set_faults(
        &dir,
        &Faults {
            hang: Some(Hang {
                op: FaultOp::Write,
                millis: 20,
                times: 1,
            }),
            ..Faults::default()
        },
    );
    let mut c = Cartridge::open(&dir).unwrap();
    c.set_operation_timeout(Duration::from_secs(60));
    let t0 = Instant::now();
    c.write_block(&[1u8; 10]).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(20));
    assert_eq!(c.object_count(), 1);
}

#[test]
fn early_warning_then_hard_end() {
    let (_t, dir) = new_cart(10_000, 2_000);
    let mut c = Cartridge::open(&dir).unwrap();
    let b = [5u8; 1000];
    for _ in 0..8 {
        assert_eq!(c.write_block(&b).unwrap(), Written::Written);
    }
    assert_eq!(c.write_block(&b).unwrap(), Written::EarlyWarning);
    assert!(c.status().unwrap().early_warning);
    assert!(matches!(c.write_block(&b), Err(VtlError::EarlyWarning)));
    assert_eq!(c.bytes_used(), 9000);
    assert_eq!(c.write_block(&b).unwrap(), Written::Written);
    c.write_filemarks(1, false).unwrap();
    assert!(matches!(c.write_block(&[1u8]), Err(VtlError::EndOfMedium)));
    assert_eq!(c.bytes_used(), 10_000);
    assert_eq!(c.object_count(), 11);
}

#[test]
fn write_protect_and_worm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("TV0001L9");
    let mut m = CartridgeMeta::new("TV0001L9", 1 << 20, 1 << 10);
    m.worm = true;
    Cartridge::create(&dir, &m).unwrap();
    let mut c = Cartridge::open(&dir).unwrap();
    c.write_block(&[1u8; 10]).unwrap();
    c.write_filemarks(1, true).unwrap();
    c.rewind().unwrap();
    assert!(matches!(
        c.write_block(&[2u8; 10]),
        Err(VtlError::WormOverwrite { block: 0 })
    ));
    assert!(matches!(
        c.write_filemarks(1, true),
        Err(VtlError::WormOverwrite { block: 0 })
    ));
    c.space_to_eod().unwrap();
    c.write_block(&[3u8; 10]).unwrap();
    assert_eq!(c.object_count(), 3);
    assert!(c.status().unwrap().worm);

    let mut m = CartridgeMeta::new("TV0002L9", 1 << 20, 1 << 10);
    m.write_protected = true;
    let dir2 = tmp.path().join("TV0002L9");
    Cartridge::create(&dir2, &m).unwrap();
    let mut c = Cartridge::open(&dir2).unwrap();
    assert!(matches!(
        c.write_block(&[2u8; 10]),
        Err(VtlError::WriteProtected)
    ));
    assert!(matches!(
        c.write_filemarks(1, false),
        Err(VtlError::WriteProtected)
    ));
    assert_eq!(c.object_count(), 0);
}

#[test]
fn overwrite_in_the_middle_discards_the_rest() {
    let (_t, dir) = new_cart(1 << 20, 1 << 10);
    let mut c = Cartridge::open(&dir).unwrap();
    for i in 0..5u8 {
        c.write_block(&[i; 100]).unwrap();
        c.write_filemarks(1, true).unwrap();
    }
    c.locate(4).unwrap();
    c.write_block(&[42u8; 50]).unwrap();
    drop(c);
    let mut c = Cartridge::open(&dir).unwrap();
    assert_eq!(c.object_count(), 5);
    assert_eq!(c.bytes_used(), 250);
    c.space_to_eod().unwrap();
    let p = c.position().unwrap();
    assert_eq!((p.block, p.file, p.block_in_file), (5, 2, 1));
}

#[test]
fn block_larger_than_buffer_is_refused_with_its_size() {
    let (_t, dir) = new_cart(64 << 20, 1 << 20);
    let mut c = Cartridge::open(&dir).unwrap();
    let big = vec![3u8; 8 << 20];
    c.write_block(&big).unwrap();
    c.rewind().unwrap();
    let mut small = vec![0u8; 1 << 20];
    match c.read_block(&mut small) {
        Err(VtlError::BufferTooSmall {
            block_len,
            buffer_len,
        }) => {
            assert_eq!((block_len, buffer_len), (8 << 20, 1 << 20))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.position().unwrap().block, 0);
    let mut buf = vec![0u8; 8 << 20];
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::Block(8 << 20));
    assert!(buf == big);
    assert!(matches!(
        c.write_block(&[]),
        Err(VtlError::BadBlockSize { .. })
    ));
}

#[test]
fn corrupt_index_entry_in_the_middle_is_a_media_error() {
    let (_t, dir) = new_cart(1 << 20, 1 << 10);
    let mut c = Cartridge::open(&dir).unwrap();
    for i in 0..3u8 {
        c.write_block(&[i; 10]).unwrap();
    }
    drop(c);
    let f = OpenOptions::new()
        .write(true)
        .open(dir.join("index"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xFF], 16 + 16 + 3).unwrap();
    let mut c = Cartridge::open(&dir).unwrap();
    assert_eq!(c.object_count(), 3);
    c.locate(1).unwrap();
    let mut buf = [0u8; 10];
    assert!(matches!(
        c.read_block(&mut buf),
        Err(VtlError::MediaError { block: 1, .. })
    ));
}
