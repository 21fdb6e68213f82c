//! Tampering with encrypted cartridges is detected: any flipped bit, swapped records,
//! a record spliced in from another image, a replayed record, each also "disguised" by
//! an attacker who rewrites the header fields and recomputes every CRC.
//!
//! The cartridges are written by the real binary; the reading side here is the
//! library's own: `tape_formats::PartChecker` (stream order) and
//! `codec::Opener::open_data` (authentication), exactly what restore and verify use.
#[path = "encryption_support.rs"]
mod support;

use support::*;
use tape_formats::{
    decode_block, encode_data_record, Block, ContentDigest, DigestScheme, PartChecker,
};
use tapevault::codec::KeyRing;

/// Byte range of the header CRC in every block (tape-formats' common prefix).
const HEADER_CRC: std::ops::Range<usize> = 24..28;
/// Byte range of the payload CRC in a data record header (docs/FORMAT.md).
const PAYLOAD_CRC: std::ops::Range<usize> = 92..96;

struct Fixture {
    env: Env,
    /// The cartridge's objects in tape order.
    objs: Vec<Obj>,
    ring: KeyRing,
    /// Image UUIDs of disk A and disk B (both on the one cartridge).
    image_a: [u8; 16],
    image_b: [u8; 16],
    disk_a: Vec<u8>,
    barcode: String,
}

fn fixture() -> Fixture {
    let env = Env::init();
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    canary_disk(&a, 2, 21);
    canary_disk(&b, 2, 22);
    env.create_key("k");
    env.create_pool("p", Some("k"), false);
    let ra = env.backup(&a, DISK_A, "p");
    let rb = env.backup(&b, DISK_B, "p");
    assert_eq!(cartridges_of(&ra), cartridges_of(&rb), "one cartridge");
    let uuid = |r: &serde_json::Value| {
        *uuid::Uuid::parse_str(r["images"][0]["image"].as_str().unwrap())
            .unwrap()
            .as_bytes()
    };
    let barcode = cartridges_of(&ra)[0].clone();
    let objs = read_cartridge(&env.cartridge_dir(&barcode));
    let ring = ring(vec![env.unlock("k")]);
    Fixture {
        image_a: uuid(&ra),
        image_b: uuid(&rb),
        disk_a: std::fs::read(&a).unwrap(),
        barcode,
        objs,
        ring,
        env,
    }
}

/// Index (into `objs`) of data record `seq` of `image`.
fn record_index(objs: &[Obj], image: [u8; 16], seq: u64) -> usize {
    objs.iter()
        .position(|o| match o {
            Obj::Block(b) => matches!(decode_block(b),
                Ok(Block::Data(r)) if r.fields.image_uuid == image && r.fields.sequence == seq),
            Obj::Filemark => false,
        })
        .unwrap_or_else(|| panic!("record {seq} not found"))
}

fn block_at(objs: &[Obj], i: usize) -> &[u8] {
    match &objs[i] {
        Obj::Block(b) => b,
        Obj::Filemark => panic!("object {i} is a filemark"),
    }
}

/// What restore/verify do with one image on a cartridge: find its tape file, check the
/// stream (PartChecker), authenticate and decrypt every record, check the content
/// digest against the trailer. Ok(plain disk bytes) or the first problem found.
fn read_image(objs: &[Obj], ring: &KeyRing, image: [u8; 16]) -> Result<Vec<u8>, String> {
    let files: Vec<&[Obj]> = objs.split(|o| *o == Obj::Filemark).collect();
    let file = files
        .iter()
        .find(|f| {
            matches!(f.first(), Some(Obj::Block(b))
                if matches!(decode_block(b), Ok(Block::ImageHeader(h)) if h.image_uuid == image))
        })
        .ok_or("image header not found")?;
    let mut checker = PartChecker::new();
    let mut digest = ContentDigest::new(DigestScheme::NEWEST);
    // What someone without the key could compute from a guess of the plain data.
    let mut unkeyed = ContentDigest::new(DigestScheme::NEWEST);
    let mut encrypted = false;
    let mut disk = Vec::new();
    for (pos, o) in file.iter().enumerate() {
        let b = match o {
            Obj::Block(b) => b,
            Obj::Filemark => unreachable!(),
        };
        let decoded = decode_block(b);
        let v = checker.check(pos as u64, decoded.as_ref());
        if let Some(p) = v.problem {
            return Err(format!("stream: {p}"));
        }
        match decoded {
            // An encrypted image's content digest is keyed with its key's digest key.
            Ok(Block::ImageHeader(h)) => {
                let key = ring
                    .digest_key_for(&h.cipher)
                    .map_err(|fp| format!("key {fp} is needed and not unlocked"))?;
                digest = ContentDigest::with_key(h.digest_scheme, key);
                unkeyed = ContentDigest::new(h.digest_scheme);
                encrypted = key.is_some();
            }
            Ok(Block::Data(r)) if v.accept => {
                let plain = open_data(ring, b).map_err(|e| format!("block {pos}: {e}"))?;
                digest.update_record(&r.extents, &plain).unwrap();
                unkeyed.update_record(&r.extents, &plain).unwrap();
                disk.extend_from_slice(&plain);
            }
            Ok(Block::ImageTrailer(t)) if t.digest != digest.finalize() => {
                return Err("content digest differs from the trailer's".into());
            }
            Ok(Block::ImageTrailer(t)) => assert!(
                !encrypted || t.digest != unkeyed.finalize(),
                "an encrypted image's trailer must not confirm a guess of its plain data"
            ),
            _ => {}
        }
    }
    if let Some(p) = checker.end(file.len() as u64) {
        return Err(format!("stream: {p}"));
    }
    Ok(disk)
}

/// Recompute both CRCs of a (possibly altered) data-record block, as an attacker would,
/// so that only authentication can tell. Leaves blocks with nonsense lengths alone.
fn fix_crcs(b: &mut [u8]) {
    fix_crcs_at(b, PAYLOAD_CRC)
}

/// As [`fix_crcs`], with the payload CRC at `payload_crc` (snapshot chunks: 88..92).
fn fix_crcs_at(b: &mut [u8], payload_crc_at: std::ops::Range<usize>) {
    let header_len = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
    if header_len < payload_crc_at.end || header_len > b.len() {
        return;
    }
    let payload_crc = crc32fast::hash(&b[header_len..]);
    b[payload_crc_at].copy_from_slice(&payload_crc.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..HEADER_CRC.start]);
    h.update(&b[HEADER_CRC.end..header_len]);
    let crc = h.finalize();
    b[HEADER_CRC].copy_from_slice(&crc.to_le_bytes());
}

/// Re-encode a data record with changed fields (all CRCs valid, tag and payload kept).
fn rewrite(block: &[u8], f: impl FnOnce(&mut tape_formats::DataFields)) -> Vec<u8> {
    let Ok(Block::Data(r)) = decode_block(block) else {
        panic!("not a data record")
    };
    let mut fields = r.fields;
    f(&mut fields);
    let mut out = Vec::new();
    encode_data_record(&fields, &r.extents, r.payload, &mut out).unwrap();
    out
}

#[test]
fn untouched_cartridge_reads_back_and_the_crc_fixer_is_faithful() {
    let fx = fixture();
    assert_eq!(
        read_image(&fx.objs, &fx.ring, fx.image_a).unwrap(),
        fx.disk_a
    );
    let i = record_index(&fx.objs, fx.image_a, 1);
    let mut b = block_at(&fx.objs, i).to_vec();
    let orig = b.clone();
    b[HEADER_CRC].fill(0);
    b[PAYLOAD_CRC].fill(0);
    fix_crcs(&mut b);
    assert_eq!(
        b, orig,
        "fix_crcs recomputes exactly the CRCs the writer wrote"
    );
    // Without the key nothing opens, and the error names the key.
    let fp = fx.env.unlock("k").fingerprint_hex();
    let err = read_image(&fx.objs, &ring(vec![]), fx.image_a).unwrap_err();
    assert!(err.contains(&fp), "{err}");
    // A different key with the same fingerprint slot cannot exist; a wrong key is
    // simply missing.
    let other = tapevault::crypto::RecordKey::generate();
    assert!(read_image(&fx.objs, &ring(vec![other]), fx.image_a).is_err());
}

#[test]
fn flipping_any_bit_of_an_encrypted_record_is_detected_even_with_crcs_recomputed() {
    let fx = fixture();
    let i = record_index(&fx.objs, fx.image_a, 2);
    let orig = block_at(&fx.objs, i).to_vec();
    assert!(open_data(&fx.ring, &orig).is_ok());
    let header_len = u32::from_le_bytes(orig[16..20].try_into().unwrap()) as usize;
    // Every bit of the header, the first and last 64 payload bytes, and a spread of
    // payload bits in between (all of a 512 KiB payload would take minutes).
    let mut bits: Vec<usize> = (0..header_len * 8).collect();
    bits.extend(header_len * 8..(header_len + 64) * 8);
    bits.extend((orig.len() - 64) * 8..orig.len() * 8);
    let mut x = 0x1234_5678_9abc_def1u64;
    for _ in 0..256 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bits.push(header_len * 8 + (x % ((orig.len() - header_len) as u64 * 8)) as usize);
    }
    let (mut by_framing, mut by_auth) = (0, 0);
    for bit in bits {
        let byte = bit / 8;
        if HEADER_CRC.contains(&byte) || PAYLOAD_CRC.contains(&byte) {
            continue; // recomputed below, so flipping them changes nothing
        }
        let mut b = orig.clone();
        b[byte] ^= 1 << (bit % 8);
        fix_crcs(&mut b);
        match decode_block(&b) {
            Err(_) => by_framing += 1,
            Ok(Block::Data(_)) => {
                assert!(
                    open_data(&fx.ring, &b).is_err(),
                    "flipping bit {} of byte {byte} went unnoticed",
                    bit % 8
                );
                by_auth += 1;
            }
            Ok(other) => panic!("bit {bit} turned the record into a {}", other.kind_name()),
        }
        // And without recomputing the CRCs, framing alone already refuses it.
        let mut raw = orig.clone();
        raw[byte] ^= 1 << (bit % 8);
        assert!(decode_block(&raw).is_err() || open_data(&fx.ring, &raw).is_err());
    }
    assert!(
        by_auth > 1000,
        "most flips reach authentication ({by_auth})"
    );
    assert!(by_framing > 0);
    // Through the whole-image reader as well.
    let mut objs = fx.objs.clone();
    let mut b = orig.clone();
    b[header_len + 100] ^= 0x80;
    fix_crcs(&mut b);
    objs[i] = Obj::Block(b);
    let err = read_image(&objs, &fx.ring, fx.image_a).unwrap_err();
    assert!(err.contains("authentication"), "{err}");
}

#[test]
fn swapped_records_are_detected_and_disguising_the_swap_fails_authentication() {
    let fx = fixture();
    let (i, j) = (
        record_index(&fx.objs, fx.image_a, 1),
        record_index(&fx.objs, fx.image_a, 2),
    );
    let mut objs = fx.objs.clone();
    objs.swap(i, j);
    let err = read_image(&objs, &fx.ring, fx.image_a).unwrap_err();
    assert!(err.contains("stream"), "{err}");
    // Disguised: each record's sequence number rewritten to fit its new place.
    let mut objs = fx.objs.clone();
    objs[i] = Obj::Block(rewrite(block_at(&fx.objs, j), |f| f.sequence = 1));
    objs[j] = Obj::Block(rewrite(block_at(&fx.objs, i), |f| f.sequence = 2));
    let err = read_image(&objs, &fx.ring, fx.image_a).unwrap_err();
    assert!(err.contains("authentication"), "{err}");
    // Moving a record's data elsewhere on the disk (other extents) fails too.
    let Ok(Block::Data(r)) = decode_block(block_at(&fx.objs, i)) else {
        unreachable!()
    };
    let mut moved = r.extents.clone();
    moved[0].offset += 512 << 10;
    let mut out = Vec::new();
    encode_data_record(&r.fields, &moved, r.payload, &mut out).unwrap();
    assert!(open_data(&fx.ring, &out)
        .unwrap_err()
        .contains("authentication"));
}

#[test]
fn records_spliced_in_from_another_image_or_replayed_are_detected() {
    let fx = fixture();
    let i = record_index(&fx.objs, fx.image_a, 1);
    let from_b = block_at(&fx.objs, record_index(&fx.objs, fx.image_b, 1)).to_vec();
    // Spliced as is: the reader sees a record of another image.
    let mut objs = fx.objs.clone();
    objs[i] = Obj::Block(from_b.clone());
    let err = read_image(&objs, &fx.ring, fx.image_a).unwrap_err();
    assert!(err.contains("another image"), "{err}");
    // Disguised as image A's record 1: authentication fails.
    let mut objs = fx.objs.clone();
    let a = fx.image_a;
    objs[i] = Obj::Block(rewrite(&from_b, |f| f.image_uuid = a));
    let err = read_image(&objs, &fx.ring, fx.image_a).unwrap_err();
    assert!(err.contains("authentication"), "{err}");
    // Replay: record 1 written again in place of record 2 (as is, and disguised).
    let j = record_index(&fx.objs, fx.image_a, 2);
    let mut objs = fx.objs.clone();
    objs[j] = Obj::Block(block_at(&fx.objs, i).to_vec());
    assert!(read_image(&objs, &fx.ring, fx.image_a).is_err());
    let mut objs = fx.objs.clone();
    objs[j] = Obj::Block(rewrite(block_at(&fx.objs, i), |f| f.sequence = 2));
    let err = read_image(&objs, &fx.ring, fx.image_a).unwrap_err();
    assert!(err.contains("authentication"), "{err}");
    // A record from another part of the same image, relabelled: fails.
    assert!(
        open_data(&fx.ring, &rewrite(block_at(&fx.objs, i), |f| f.part = 1))
            .unwrap_err()
            .contains("authentication")
    );
    // Dropped record: the stream says records are lost.
    let mut objs = fx.objs.clone();
    objs.remove(j);
    assert!(read_image(&objs, &fx.ring, fx.image_a).is_err());
}

#[test]
fn flipping_any_bit_of_a_snapshot_chunk_header_or_its_payload_edges_is_detected() {
    const CHUNK_CRC: std::ops::Range<usize> = 88..92;
    let fx = fixture();
    let (i, orig) = fx
        .objs
        .iter()
        .enumerate()
        .find_map(|(i, o)| match o {
            Obj::Block(b) if matches!(decode_block(b), Ok(Block::SnapshotChunk(_))) => {
                Some((i, b.clone()))
            }
            _ => None,
        })
        .expect("a snapshot chunk");
    let open = |b: &[u8]| -> Result<(), String> {
        let Block::SnapshotChunk(c) = decode_block(b).map_err(|e| e.to_string())? else {
            return Err("not a chunk".into());
        };
        let mut plain = Vec::new();
        tapevault::codec::Opener::new()
            .unwrap()
            .open_chunk(&fx.ring, &c, &mut plain)
            .map_err(|e| e.to_string())
    };
    let mut tmp = orig.clone();
    tmp[CHUNK_CRC].fill(0);
    fix_crcs_at(&mut tmp, CHUNK_CRC);
    assert_eq!(tmp, orig, "payload CRC of a chunk is at 88..92");
    open(&orig).unwrap();
    let header_len = u32::from_le_bytes(orig[16..20].try_into().unwrap()) as usize;
    let payload_edges = (header_len..(header_len + 32).min(orig.len()))
        .chain(orig.len().saturating_sub(32).max(header_len)..orig.len());
    let mut tried = 0;
    for byte in (0..header_len).chain(payload_edges) {
        if HEADER_CRC.contains(&byte) || CHUNK_CRC.contains(&byte) {
            continue;
        }
        for bit in 0..8 {
            let mut b = orig.clone();
            b[byte] ^= 1 << bit;
            fix_crcs_at(&mut b, CHUNK_CRC);
            assert!(
                open(&b).is_err(),
                "flipping bit {bit} of byte {byte} of snapshot chunk {i} went unnoticed"
            );
            tried += 1;
        }
    }
    assert!(tried > 900, "{tried}");
}

/// Overwrite object `i` of the cartridge in place (same length), as someone holding
/// the cartridge could; returns what was there.
fn poke(fx: &Fixture, i: usize, bytes: &[u8]) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let nth_block = fx.objs[..i]
        .iter()
        .filter(|o| matches!(o, Obj::Block(_)))
        .count();
    let dir = fx.env.cartridge_dir(&fx.barcode);
    let (off, len) = block_offsets(&dir)[nth_block];
    assert_eq!(len as usize, bytes.len(), "same length only");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("data"))
        .unwrap();
    let mut old = vec![0u8; bytes.len()];
    f.read_exact_at(&mut old, off).unwrap();
    f.write_all_at(bytes, off).unwrap();
    old
}

#[test]
fn restore_and_verify_refuse_tampered_cartridges_with_exit_3_and_write_nothing() {
    let fx = fixture();
    let image = uuid::Uuid::from_bytes(fx.image_a).to_string();
    let restore = |name: &str| {
        let out = fx.env.path(name);
        let r = fx.env.run(&[
            "--json",
            "restore",
            "--disk",
            DISK_A,
            "--image",
            &image,
            "--to",
            out.to_str().unwrap(),
        ]);
        (r, out)
    };
    // The index really maps objects to data-file offsets: a no-op poke reads back the
    // object itself.
    for i in [3, 4] {
        let b = block_at(&fx.objs, i).to_vec();
        assert!(
            poke(&fx, i, &b) == b,
            "object {i} is not where the index says"
        );
    }
    let (r, out) = restore("good.img");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::read(&out).unwrap(), fx.disk_a);

    let (i1, i2) = (
        record_index(&fx.objs, fx.image_a, 1),
        record_index(&fx.objs, fx.image_a, 2),
    );
    let b1 = block_at(&fx.objs, i1).to_vec();
    let b2 = block_at(&fx.objs, i2).to_vec();
    let from_b = block_at(&fx.objs, record_index(&fx.objs, fx.image_b, 1)).to_vec();
    let a = fx.image_a;
    let mut flipped = b1.clone();
    let hl = u32::from_le_bytes(b1[16..20].try_into().unwrap()) as usize;
    flipped[hl + 4242] ^= 0x10;
    fix_crcs(&mut flipped);
    /// What was done, and which objects were overwritten with what.
    type Case<'a> = (&'a str, Vec<(usize, Vec<u8>)>);
    let cases: Vec<Case> = vec![
        (
            "payload bit flipped, CRCs recomputed",
            vec![(i1, flipped.clone())],
        ),
        ("records swapped", vec![(i1, b2.clone()), (i2, b1.clone())]),
        (
            "records swapped, sequence numbers rewritten",
            vec![
                (i1, rewrite(&b2, |f| f.sequence = 1)),
                (i2, rewrite(&b1, |f| f.sequence = 2)),
            ],
        ),
        (
            "record spliced from another image",
            vec![(i1, from_b.clone())],
        ),
        (
            "record spliced from another image, image UUID rewritten",
            vec![(i1, rewrite(&from_b, |f| f.image_uuid = a))],
        ),
        (
            "record replayed",
            vec![(i2, rewrite(&b1, |f| f.sequence = 2))],
        ),
    ];
    // A restore that finds damage marks the image corrupt in the catalog (so it is never
    // a base again); each case starts from the catalog as it was before any damage, so
    // every case is caught by reading the cartridge, not by the mark of the one before.
    let db = fx.env.home.join("catalog.db");
    let pristine = std::fs::read(&db).unwrap();
    let reset = || {
        std::fs::write(&db, &pristine).unwrap();
        for side in ["catalog.db-wal", "catalog.db-shm"] {
            let _ = std::fs::remove_file(fx.env.home.join(side));
        }
    };
    for (n, (what, edits)) in cases.iter().enumerate() {
        reset();
        let old: Vec<_> = edits.iter().map(|(i, b)| (*i, poke(&fx, *i, b))).collect();
        let (r, out) = restore(&format!("bad{n}.img"));
        assert_eq!(r.code, 3, "{what}: {r:?}");
        assert!(
            r.stderr.contains(&fx.barcode),
            "{what}: names the cartridge: {r:?}"
        );
        assert!(r.stderr.contains("block"), "{what}: names the block: {r:?}");
        assert!(r.stderr.contains(&image), "{what}: names the image: {r:?}");
        if what.contains("rewritten") || what.contains("flipped") || what.contains("replayed") {
            assert!(r.stderr.contains("authentication failed"), "{what}: {r:?}");
        }
        assert!(
            !out.exists(),
            "{what}: nothing written to the restore target"
        );
        for (i, b) in old {
            poke(&fx, i, &b);
        }
    }
    // The last case's restore marked the image corrupt: the catalog remembers even
    // though the cartridge is whole again (only a rebuilt catalog forgets).
    let (r, _) = restore("marked.img");
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("corrupt"), "{r:?}");
    reset();
    let (r, _) = restore("good-again.img");
    assert_eq!(r.code, 0, "{r:?}");

    // verify finds it too, and the catalog remembers the image is damaged.
    poke(&fx, i1, &flipped);
    let r = fx.env.run(&["--json", "verify", "--image", &image]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains(&fx.barcode) || r.stdout.contains(&fx.barcode),
        "{r:?}"
    );
}

#[test]
fn records_of_a_newer_minor_with_extension_entries_authenticate_and_the_entries_are_covered() {
    // FORMAT.md 6-7: the AAD is the header exactly as on tape, extension area and
    // version included. A writer of a newer minor may add extension entries; this
    // reader must still authenticate its records, and nobody may alter the entries.
    use tape_formats::{DataFields, Extent, ExtentKind, RecordCrypto, FORMAT_MINOR};
    let key = tapevault::crypto::RecordKey::generate();
    let plain = filler(99, 4096);
    let nonce = [7u8; 12];
    let fields = DataFields {
        image_uuid: [0x42; 16],
        part: 0,
        sequence: 0,
        compression: tape_formats::Compression::None,
        crypto: RecordCrypto::Aes256Gcm {
            key_fingerprint: key.fingerprint,
            nonce,
            tag: [0; 16],
        },
        plain_len: plain.len() as u32,
    };
    let extents = [Extent {
        offset: 0,
        length: plain.len() as u64,
        kind: ExtentKind::Data,
    }];
    let mut b = Vec::new();
    encode_data_record(&fields, &extents, &plain, &mut b).unwrap();
    let hl = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
    // The newer writer's header: minor + 1, one 8-byte extension entry of a type this
    // reader does not know.
    let mut h = b[..hl].to_vec();
    h[10..12].copy_from_slice(&(FORMAT_MINOR + 1).to_le_bytes());
    h[14..16].copy_from_slice(&8u16.to_le_bytes());
    h.extend_from_slice(&0x7ff0u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(b"ext!");
    let new_hl = h.len() as u32;
    h[16..20].copy_from_slice(&new_hl.to_le_bytes());
    let mut aad = h.clone();
    aad[HEADER_CRC].fill(0);
    aad[PAYLOAD_CRC].fill(0);
    aad[96..112].fill(0);
    let mut payload = plain.clone();
    let tag = key.seal(nonce, &aad, &mut payload);
    h[96..112].copy_from_slice(&tag);
    let mut block = h;
    block.extend_from_slice(&payload);
    fix_crcs(&mut block);

    let ring1 = ring(vec![key]);
    assert_eq!(open_data(&ring1, &block).unwrap(), plain);
    // Altering the extension value (CRCs recomputed) or the version fails.
    for at in [new_hl as usize - 1, 10] {
        let mut bad = block.clone();
        bad[at] ^= 1;
        fix_crcs(&mut bad);
        let err = open_data(&ring1, &bad).unwrap_err();
        assert!(err.contains("authentication"), "byte {at}: {err}");
    }
}
