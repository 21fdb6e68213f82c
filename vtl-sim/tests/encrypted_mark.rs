//! The per-block "encrypted" mark of the cartridge index: version 1 indexes stay as they
//! are until a block is marked, the mark survives reopening, overwriting and recovery,
//! and a marked index carries the version 2 magic an older reader refuses.

use std::fs;

use vtl_sim::{Cartridge, CartridgeMeta, Read};

fn magic(dir: &std::path::Path) -> Vec<u8> {
    fs::read(dir.join("index")).unwrap()[..8].to_vec()
}

fn read_all(c: &mut Cartridge) -> Vec<(Read, bool, Vec<u8>)> {
    c.rewind().unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let (r, enc) = c.read_block_flagged(&mut buf).unwrap();
        let data = match r {
            Read::Block(n) => buf[..n].to_vec(),
            Read::EndOfData => break,
            Read::Filemark => Vec::new(),
        };
        out.push((r, enc, data));
    }
    out
}

#[test]
fn plain_cartridges_keep_version_1_and_marks_survive_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    Cartridge::create(&dir, &CartridgeMeta::new("TV0001L9", 1 << 24, 1 << 16)).unwrap();
    let mut c = Cartridge::open(&dir).unwrap();
    c.write_block(b"plain label").unwrap();
    c.write_filemarks(1, false).unwrap();
    c.flush().unwrap();
    assert_eq!(
        magic(&dir),
        b"VTLIDX01",
        "no encrypted block: still version 1"
    );
    drop(c);

    // A version 1 cartridge loads, reads unmarked, and gains marks on demand.
    let mut c = Cartridge::open(&dir).unwrap();
    let got = read_all(&mut c);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], (Read::Block(11), false, b"plain label".to_vec()));
    c.space_to_eod().unwrap();
    c.write_block_flagged(b"ciphertext one", true).unwrap();
    c.write_block_flagged(b"plain after", false).unwrap();
    c.write_block_flagged(&[7u8; 40_000], true).unwrap();
    c.flush().unwrap();
    assert_eq!(
        magic(&dir),
        b"VTLIDX02",
        "a marked block makes it version 2"
    );
    drop(c);

    let mut c = Cartridge::open(&dir).unwrap();
    let got = read_all(&mut c);
    let marks: Vec<bool> = got.iter().map(|g| g.1).collect();
    assert_eq!(marks, vec![false, false, true, false, true]);
    assert_eq!(got[2].2, b"ciphertext one");
    assert_eq!(got[4].2, vec![7u8; 40_000]);
    // The unflagged reader still reads every block with its true length.
    c.locate(4).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    assert_eq!(c.read_block(&mut buf).unwrap(), Read::Block(40_000));

    // Overwriting a marked block with a plain one clears its mark.
    c.locate(2).unwrap();
    c.write_block_flagged(b"now plain", false).unwrap();
    c.flush().unwrap();
    drop(c);
    let mut c = Cartridge::open(&dir).unwrap();
    let got = read_all(&mut c);
    assert_eq!(got.len(), 3);
    assert_eq!(got[2], (Read::Block(9), false, b"now plain".to_vec()));
    assert_eq!(magic(&dir), b"VTLIDX02", "the version never goes back");
}

#[test]
fn a_torn_tail_after_marked_blocks_is_cut_and_the_marks_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    Cartridge::create(&dir, &CartridgeMeta::new("TV0002L9", 1 << 24, 1 << 16)).unwrap();
    let mut c = Cartridge::open(&dir).unwrap();
    for k in 0..4u8 {
        c.write_block_flagged(&[k; 1000], k % 2 == 1).unwrap();
    }
    c.flush().unwrap();
    drop(c);
    // Tear the last index entry in half, as a crash mid-write would.
    let ip = dir.join("index");
    let len = fs::metadata(&ip).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&ip).unwrap();
    f.set_len(len - 8).unwrap();
    drop(f);
    let mut c = Cartridge::open(&dir).unwrap();
    let got = read_all(&mut c);
    let marks: Vec<bool> = got.iter().map(|g| g.1).collect();
    assert_eq!(marks, vec![false, true, false]);
}

#[test]
fn an_unknown_index_version_is_refused_not_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    Cartridge::create(&dir, &CartridgeMeta::new("TV0003L9", 1 << 24, 1 << 16)).unwrap();
    let mut c = Cartridge::open(&dir).unwrap();
    c.write_block_flagged(b"secret", true).unwrap();
    c.flush().unwrap();
    drop(c);
    let ip = dir.join("index");
    let before = fs::read(&ip).unwrap();
    let mut future = before.clone();
    future[..8].copy_from_slice(b"VTLIDX03");
    fs::write(&ip, &future).unwrap();
    let e = Cartridge::open(&dir)
        .err()
        .expect("a future index version is refused");
    assert!(e.to_string().contains("index"), "{e}");
    assert_eq!(fs::read(&ip).unwrap(), future, "nothing was cut away");
}

#[test]
fn peek_tells_the_next_object_and_its_mark_without_moving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    Cartridge::create(&dir, &CartridgeMeta::new("TV0003L9", 1 << 24, 1 << 16)).unwrap();
    let mut c = Cartridge::open(&dir).unwrap();
    c.write_block_flagged(b"sealed", true).unwrap();
    c.write_filemarks(1, false).unwrap();
    c.write_block_flagged(b"clear block", false).unwrap();
    c.rewind().unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64];
    loop {
        let before = c.position().unwrap();
        let peeked = c.peek().unwrap();
        assert_eq!(c.position().unwrap(), before, "peek moved the tape");
        assert_eq!(c.peek().unwrap(), peeked, "a second peek differs");
        seen.push(peeked);
        let (r, enc) = c.read_block_flagged(&mut buf).unwrap();
        assert_eq!((r, enc), peeked, "peek and read disagree at {before:?}");
        if r == Read::EndOfData {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![
            (Read::Block(6), true),
            (Read::Filemark, false),
            (Read::Block(11), false),
            (Read::EndOfData, false),
        ]
    );
}
