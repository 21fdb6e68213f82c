//! Damage is detected, typed and never panics.
mod common;
use common::*;
use proptest::prelude::*;
use tape_formats::*;

fn sample_record(crypto: RecordCrypto) -> Vec<u8> {
    let extents = [
        Extent {
            offset: 4096,
            length: 100,
            kind: ExtentKind::Data,
        },
        Extent {
            offset: 8192,
            length: 65536,
            kind: ExtentKind::Zero,
        },
        Extent {
            offset: 73728,
            length: 60,
            kind: ExtentKind::Data,
        },
    ];
    let payload: Vec<u8> = (0..160u32).map(|i| (i * 31 % 256) as u8).collect();
    let fields = DataFields {
        image_uuid: [7; 16],
        part: 1,
        sequence: 99,
        compression: Compression::None,
        crypto,
        plain_len: 160,
    };
    let mut buf = Vec::new();
    encode_data_record(&fields, &extents, &payload, &mut buf).unwrap();
    buf
}

#[test]
fn every_single_bit_flip_in_a_data_record_is_detected() {
    let crypto_cases = [
        RecordCrypto::None,
        RecordCrypto::Aes256Gcm {
            key_fingerprint: [1; 16],
            nonce: [2; 12],
            tag: [3; 16],
        },
    ];
    for crypto in crypto_cases {
        let good = sample_record(crypto);
        assert!(decode_block(&good).is_ok());
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_block(&bad).is_err(),
                "flip of bit {bit} (byte {}) undetected",
                bit / 8
            );
        }
    }
}

#[test]
fn payload_flip_is_reported_as_payload_crc_and_header_flip_as_header_crc() {
    let good = sample_record(RecordCrypto::None);
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 0x80;
    assert!(matches!(
        decode_block(&bad),
        Err(FormatError::PayloadCrc { .. })
    ));
    let mut bad = good.clone();
    bad[40] ^= 1; // inside the image UUID
    assert!(matches!(
        decode_block(&bad),
        Err(FormatError::HeaderCrc { .. })
    ));
}

#[test]
fn every_truncation_of_every_block_kind_is_a_typed_error() {
    let mut blocks = Vec::new();
    let mut b = Vec::new();
    fixed_header().encode(&mut b).unwrap();
    blocks.push(b);
    blocks.push(sample_record(RecordCrypto::None));
    for good in blocks {
        for n in 0..good.len() {
            let e = decode_block(&good[..n]).unwrap_err();
            assert!(
                matches!(
                    e,
                    FormatError::TooShort { .. }
                        | FormatError::LengthMismatch { .. }
                        | FormatError::BadMagic { .. }
                ),
                "truncated to {n}: {e:?}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            decode_block(&longer),
            Err(FormatError::LengthMismatch { .. })
        ));
    }
}

#[test]
fn unknown_major_versions_are_refused_naming_both_versions() {
    let mut b = sample_record(RecordCrypto::None);
    b[8] = 3; // major 3
    let e = decode_block(&b).unwrap_err();
    assert_eq!(
        e,
        FormatError::UnsupportedVersion {
            found_major: 3,
            found_minor: 0,
            oldest_major: 1,
            supported_major: 2,
            supported_minor: FORMAT_MINOR
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("3.0") && msg.contains("majors 1 to 2") && msg.contains("2.1"),
        "{msg}"
    );
    // Major 0 never existed.
    b[8] = 0;
    assert!(matches!(
        decode_block(&b),
        Err(FormatError::UnsupportedVersion { found_major: 0, .. })
    ));
}

#[test]
fn header_fields_are_checked_against_limits_even_with_a_valid_crc() {
    // Craft a record whose extent count exceeds the limit, with a correct header CRC:
    // the decoder must refuse it by limit, not trust it.
    let mut b = sample_record(RecordCrypto::None);
    b[58..60].copy_from_slice(&(MAX_EXTENTS_PER_RECORD as u16 + 1).to_le_bytes());
    fix_crc(&mut b);
    assert!(matches!(
        decode_block(&b),
        Err(FormatError::LimitExceeded {
            field: "extent_count",
            ..
        })
    ));
}

/// Recompute the header CRC of a (deliberately modified) block.
fn fix_crc(b: &mut [u8]) {
    let hl = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..24]);
    h.update(&b[28..hl]);
    let crc = h.finalize();
    b[24..28].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn overlapping_extents_with_valid_crc_are_refused() {
    let mut b = sample_record(RecordCrypto::None);
    // second extent (offset at header byte 112 + 17) moved back to overlap the first
    b[129..137].copy_from_slice(&4100u64.to_le_bytes());
    fix_crc(&mut b);
    assert!(matches!(
        decode_block(&b),
        Err(FormatError::BadExtent { index: 1, .. })
    ));
}

#[test]
fn newer_minor_with_extension_area_is_read_and_unknown_type_skipped() {
    let mut b = Vec::new();
    fixed_header().encode(&mut b).unwrap();
    // A newer minor adds a TLV (type 0x7001, 3 bytes) to the extension area.
    b[10..12].copy_from_slice(&(FORMAT_MINOR + 1).to_le_bytes());
    b.extend_from_slice(&0x7001u16.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes());
    b.extend_from_slice(b"xyz");
    b[14..16].copy_from_slice(&7u16.to_le_bytes());
    let hl = b.len() as u32;
    b[16..20].copy_from_slice(&hl.to_le_bytes());
    fix_crc(&mut b);
    assert_eq!(
        decode_block(&b).unwrap(),
        Block::ImageHeader(fixed_header())
    );
    // A malformed TLV (value runs past the area) is refused.
    let mut bad = b.clone();
    let at = bad.len() - 5;
    bad[at..at + 2].copy_from_slice(&9u16.to_le_bytes());
    fix_crc(&mut bad);
    assert!(matches!(
        decode_block(&bad),
        Err(FormatError::BadExtension { .. })
    ));
    // An unknown record type from a newer minor is surfaced as Unknown (skippable) ...
    b[12..14].copy_from_slice(&0x0999u16.to_le_bytes());
    fix_crc(&mut b);
    assert!(matches!(
        decode_block(&b),
        Ok(Block::Unknown {
            record_type: 0x0999,
            minor: m,
            ..
        }) if m == FORMAT_MINOR + 1
    ));
    // ... but from our own minor it is an error.
    b[10..12].copy_from_slice(&0u16.to_le_bytes());
    fix_crc(&mut b);
    assert!(matches!(
        decode_block(&b),
        Err(FormatError::UnknownRecordType {
            record_type: 0x0999,
            ..
        })
    ));
}

#[test]
fn resync_finds_blocks_in_a_damaged_byte_stream() {
    let r1 = sample_record(RecordCrypto::None);
    let mut stream = vec![0xAB; 37];
    stream.extend_from_slice(&r1[..50]); // a torn block: magic present, CRC will not match
    let good_at = stream.len();
    stream.extend_from_slice(&r1);
    stream.extend_from_slice(&[1, 2, 3]);
    let (at, len) = resync(&stream, 0).unwrap();
    assert_eq!((at, len), (good_at, r1.len()));
    assert!(decode_block(&stream[at..at + len]).is_ok());
    assert_eq!(resync(&stream, at + 1), None);
}

#[test]
fn encoders_refuse_values_over_limits() {
    let mut l = VolumeLabel {
        volume_uuid: [0; 16],
        media_set_uuid: [0; 16],
        set_sequence: 0,
        label_time: 0,
        key_fingerprint: None,
        barcode: "X".repeat(MAX_BARCODE_LEN + 1),
        pool_name: String::new(),
        writer_name: String::new(),
        writer_version: String::new(),
        escrow: vec![],
    };
    let mut out = vec![9];
    assert!(matches!(
        l.encode(&mut out),
        Err(FormatError::LimitExceeded {
            field: "barcode",
            ..
        })
    ));
    assert_eq!(out, vec![9], "a failed encode leaves the buffer as it was");
    l.barcode = "ABC123L9".into();
    l.escrow = vec![0; MAX_ESCROW_LEN + 1];
    assert!(matches!(
        l.encode(&mut out),
        Err(FormatError::LimitExceeded {
            field: "escrow",
            ..
        })
    ));
    let f = DataFields {
        image_uuid: [0; 16],
        part: 0,
        sequence: 0,
        compression: Compression::None,
        crypto: RecordCrypto::None,
        plain_len: MAX_RECORD_DATA_SIZE + 1,
    };
    let ext = [Extent {
        offset: 0,
        length: MAX_RECORD_DATA_SIZE as u64 + 1,
        kind: ExtentKind::Data,
    }];
    let payload = vec![0; MAX_RECORD_DATA_SIZE as usize + 1];
    assert!(encode_data_record(&f, &ext, &payload, &mut out).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_block(&bytes);
        let _ = resync(&bytes, 0);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_prefix_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), rt in prop_oneof![Just(1u16), Just(0x10), Just(0x11), Just(0x12), Just(0x20), Just(0x21), Just(0x22), Just(0x30)], pl in 0usize..40) {
        // Valid magic/version/CRC so decoding reaches the body parsers.
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&rt.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        let hl = (28 + body.len().saturating_sub(pl)) as u32;
        let pl = body.len() - (hl as usize - 28);
        b.extend_from_slice(&hl.to_le_bytes());
        b.extend_from_slice(&(pl as u32).to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&body);
        fix_crc(&mut b);
        prop_assert!(decode_prefix(&b).is_ok());
        // Whatever decodes re-encodes to exactly the same bytes: there is one encoding.
        if let Ok(block) = decode_block(&b) {
            let mut out = Vec::new();
            match &block {
                Block::VolumeLabel(v) => v.encode(&mut out).unwrap(),
                Block::ImageHeader(v) => v.encode(&mut out).unwrap(),
                Block::ImageTrailer(v) => v.encode(&mut out).unwrap(),
                Block::Data(r) => encode_data_record(&r.fields, &r.extents, r.payload, &mut out).unwrap(),
                Block::SnapshotHeader(v) => v.encode(&mut out).unwrap(),
                Block::SnapshotChunk(c) => encode_snapshot_chunk(&c.fields, c.payload, &mut out).unwrap(),
                Block::SnapshotTrailer(v) => v.encode(&mut out).unwrap(),
                Block::EndOfSession(v) => v.encode(&mut out).unwrap(),
                Block::Unknown { .. } => out = b.clone(),
            }
            prop_assert_eq!(out, b);
        }
    }
}
