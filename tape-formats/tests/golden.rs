//! Golden vectors: the exact bytes of fixed structures. Any accidental format change
//! fails here. The `_major1` files are the first format's bytes, never regenerated: an
//! encoder that writes them differently fails here. After a deliberate change (a new
//! format version!), regenerate with
//! `TAPE_FORMATS_BLESS=1 cargo test -p tape-formats --test golden` and update
//! docs/FORMAT.md (its hex example is `tests/golden/hexdump.txt`).
mod common;
use std::fmt::Write as _;
use std::path::PathBuf;
use tape_formats::*;

fn fixtures() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let mut b = Vec::new();
    VolumeLabel {
        volume_uuid: [0xA1; 16],
        media_set_uuid: [0xB2; 16],
        set_sequence: 1,
        label_time: 1_795_590_000,
        key_fingerprint: Some([0x5A; 16]),
        barcode: "TV0001L9".into(),
        pool_name: "nightly".into(),
        writer_name: "tapevault".into(),
        writer_version: "0.1.0".into(),
        escrow: vec![0xE5; 4],
    }
    .encode(&mut b)
    .unwrap();
    v.push(("volume_label", std::mem::take(&mut b)));

    common::fixed_header().encode(&mut b).unwrap();
    v.push(("image_header", std::mem::take(&mut b)));
    // The same header of an image with the bytes digest: major 1, as first written.
    ImageHeader {
        digest_scheme: DigestScheme::Bytes,
        ..common::fixed_header()
    }
    .encode(&mut b)
    .unwrap();
    v.push(("image_header_major1", std::mem::take(&mut b)));

    let extents = [
        Extent {
            offset: 0x10000,
            length: 8,
            kind: ExtentKind::Data,
        },
        Extent {
            offset: 0x10008,
            length: 0x1000,
            kind: ExtentKind::Zero,
        },
    ];
    let fields = DataFields {
        image_uuid: [0x11; 16],
        part: 0,
        sequence: 7,
        compression: Compression::None,
        crypto: RecordCrypto::None,
        plain_len: 8,
    };
    encode_data_record(&fields, &extents, b"tapevlt!", &mut b).unwrap();
    v.push(("data_record_plain", std::mem::take(&mut b)));

    let fields = DataFields {
        compression: Compression::Zstd,
        crypto: RecordCrypto::Aes256Gcm {
            key_fingerprint: [0x5A; 16],
            nonce: [0x0C; 12],
            tag: [0x7A; 16],
        },
        ..fields
    };
    encode_data_record(&fields, &extents, &[0xC1, 0xC2, 0xC3, 0xC4, 0xC5], &mut b).unwrap();
    v.push(("data_record_encrypted", std::mem::take(&mut b)));
    data_record_aad(&fields, &extents, 5, &mut b).unwrap();
    v.push(("data_record_encrypted_aad", std::mem::take(&mut b)));

    let trailer = ImageTrailer {
        image_uuid: [0x11; 16],
        part: 0,
        status: TrailerStatus::Complete,
        records_in_part: 8,
        records_in_image: 8,
        data_bytes: 64,
        zero_bytes: 0x8000,
        stored_bytes: 40,
        digest: [0xD1; 32],
        digest_scheme: DigestScheme::Pieces,
    };
    trailer.encode(&mut b).unwrap();
    v.push(("image_trailer", std::mem::take(&mut b)));
    ImageTrailer {
        digest_scheme: DigestScheme::Bytes,
        ..trailer
    }
    .encode(&mut b)
    .unwrap();
    v.push(("image_trailer_major1", std::mem::take(&mut b)));

    SnapshotHeader {
        session_uuid: [0x33; 16],
        media_set_uuid: [0xB2; 16],
        time: 1_795_590_600,
        compression: Compression::None,
        cipher: Cipher::None,
        total_plain_len: 3,
        chunk_data_size: DEFAULT_SNAPSHOT_CHUNK_SIZE,
    }
    .encode(&mut b)
    .unwrap();
    v.push(("snapshot_header", std::mem::take(&mut b)));
    let cf = ChunkFields {
        session_uuid: [0x33; 16],
        sequence: 0,
        compression: Compression::None,
        crypto: RecordCrypto::None,
        plain_len: 3,
    };
    encode_snapshot_chunk(&cf, b"SQL", &mut b).unwrap();
    v.push(("snapshot_chunk", std::mem::take(&mut b)));
    SnapshotTrailer {
        session_uuid: [0x33; 16],
        chunk_count: 1,
        total_plain_len: 3,
        digest: snapshot_digest(None, b"SQL"),
    }
    .encode(&mut b)
    .unwrap();
    v.push(("snapshot_trailer", std::mem::take(&mut b)));
    EndOfSession {
        session_uuid: [0x33; 16],
        media_set_uuid: [0xB2; 16],
        time: 1_795_590_601,
        image_parts: 1,
        set_sequence: 1,
    }
    .encode(&mut b)
    .unwrap();
    v.push(("end_of_session", std::mem::take(&mut b)));
    v
}

fn hexdump(name: &str, bytes: &[u8], out: &mut String) {
    writeln!(out, "{name} ({} bytes):", bytes.len()).unwrap();
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = line
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        writeln!(out, "  {:04x}: {:<47}  {}", i * 16, hex.join(" "), ascii).unwrap();
    }
    out.push('\n');
}

#[test]
fn encoded_bytes_match_golden_vectors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("TAPE_FORMATS_BLESS").is_some();
    let mut dump = String::new();
    for (name, bytes) in fixtures() {
        // every golden block (not the AAD) decodes
        if !name.ends_with("_aad") {
            decode_block(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        hexdump(name, &bytes, &mut dump);
        let path = dir.join(format!("{name}.bin"));
        if bless {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                bytes,
                want,
                "{name}: encoding differs from {}",
                path.display()
            );
        }
    }
    let path = dir.join("hexdump.txt");
    if bless {
        std::fs::write(&path, &dump).unwrap();
    } else {
        assert_eq!(dump, std::fs::read_to_string(&path).unwrap());
    }
}

#[test]
fn golden_files_decode_to_the_fixed_structures() {
    // The checked-in files (not just today's encoder) decode: old tapes stay readable.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let b = std::fs::read(dir.join("image_header.bin")).unwrap();
    assert_eq!(
        decode_block(&b).unwrap(),
        Block::ImageHeader(common::fixed_header())
    );
    // Written by the first tapevault (format 1.0): the header of an image whose
    // trailers carry the digest of the bytes.
    let b = std::fs::read(dir.join("image_header_major1.bin")).unwrap();
    assert_eq!(u16::from_le_bytes([b[8], b[9]]), 1);
    assert_eq!(
        decode_block(&b).unwrap(),
        Block::ImageHeader(ImageHeader {
            digest_scheme: DigestScheme::Bytes,
            ..common::fixed_header()
        })
    );
    let b = std::fs::read(dir.join("image_trailer_major1.bin")).unwrap();
    match decode_block(&b).unwrap() {
        Block::ImageTrailer(t) => assert_eq!(t.digest_scheme, DigestScheme::Bytes),
        other => panic!("{other:?}"),
    }
    let b = std::fs::read(dir.join("data_record_plain.bin")).unwrap();
    match decode_block(&b).unwrap() {
        Block::Data(r) => {
            assert_eq!(r.fields.sequence, 7);
            assert_eq!(r.payload, b"tapevlt!");
        }
        other => panic!("{other:?}"),
    }
}
