#![allow(dead_code)]
use proptest::prelude::*;
use tape_formats::*;

pub fn arb_str(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..12).prop_map(move |cs| {
        let mut s = String::new();
        for c in cs {
            if s.len() + c.len_utf8() <= max {
                s.push(c);
            }
        }
        s
    })
}

pub fn arb_cipher() -> impl Strategy<Value = Cipher> {
    prop_oneof![
        Just(Cipher::None),
        any::<[u8; 16]>().prop_map(|k| Cipher::Aes256Gcm { key_fingerprint: k })
    ]
}

pub fn arb_crypto() -> impl Strategy<Value = RecordCrypto> {
    prop_oneof![
        Just(RecordCrypto::None),
        (any::<[u8; 16]>(), any::<[u8; 12]>(), any::<[u8; 16]>()).prop_map(|(k, n, t)| {
            RecordCrypto::Aes256Gcm {
                key_fingerprint: k,
                nonce: n,
                tag: t,
            }
        })
    ]
}

pub fn arb_compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::None), Just(Compression::Zstd)]
}

pub fn arb_label() -> impl Strategy<Value = VolumeLabel> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u32>(),
        any::<i64>(),
        proptest::option::of(any::<[u8; 16]>()),
        arb_str(MAX_BARCODE_LEN),
        arb_str(MAX_POOL_NAME_LEN),
        arb_str(MAX_WRITER_LEN),
        arb_str(MAX_WRITER_LEN),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(v, m, s, t, k, b, p, wn, wv, e)| VolumeLabel {
            volume_uuid: v,
            media_set_uuid: m,
            set_sequence: s,
            label_time: t,
            key_fingerprint: k,
            barcode: b,
            pool_name: p,
            writer_name: wn,
            writer_version: wv,
            escrow: e,
        })
}

pub fn arb_header() -> impl Strategy<Value = ImageHeader> {
    (
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
        ),
        prop_oneof![
            Just(ImageKind::Full),
            Just(ImageKind::Incremental),
            Just(ImageKind::Copy)
        ],
        any::<bool>(),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            1u32..,
            1u32..=MAX_RECORD_DATA_SIZE,
            any::<i64>(),
        ),
        arb_compression(),
        arb_cipher(),
        (
            arb_str(MAX_VM_NAME_LEN),
            arb_str(64),
            proptest::option::of(arb_str(64)),
        ),
    )
        .prop_map(
            |(
                (i, d, s, p),
                kind,
                has_parent,
                (part, fs, ds, tbs, rds, t),
                comp,
                cipher,
                (vm, ch, from),
            )| {
                ImageHeader {
                    image_uuid: i,
                    disk_uuid: d,
                    session_uuid: s,
                    parent_image_uuid: if has_parent || kind == ImageKind::Incremental {
                        Some(p)
                    } else {
                        None
                    },
                    kind,
                    part,
                    first_sequence: fs,
                    disk_size: ds,
                    tracking_block_size: tbs,
                    record_data_size: rds,
                    time: t,
                    compression: comp,
                    cipher,
                    vm_name: vm,
                    change_id: ch,
                    from_change_id: from,
                    copy_of: None,
                    // Format 1.1: some fulls are synthetic (extension entry).
                    synthetic_of: (kind == ImageKind::Full && part % 2 == 1).then_some(s),
                    // Both majors: 1 (the bytes digest) on odd first sequences.
                    digest_scheme: if fs % 2 == 1 {
                        DigestScheme::Bytes
                    } else {
                        DigestScheme::Pieces
                    },
                }
            },
        )
}

pub fn arb_trailer() -> impl Strategy<Value = ImageTrailer> {
    (
        any::<[u8; 16]>(),
        any::<u32>(),
        prop_oneof![
            Just(TrailerStatus::Complete),
            Just(TrailerStatus::Continued),
            Just(TrailerStatus::Aborted)
        ],
        0u64..1 << 40,
        0u64..1 << 40,
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<[u8; 32]>()),
    )
        .prop_map(|(i, part, status, a, b, (db, zb, sb, d))| ImageTrailer {
            image_uuid: i,
            part,
            status,
            records_in_part: a.min(b),
            records_in_image: a.max(b),
            data_bytes: db,
            zero_bytes: zb,
            stored_bytes: sb,
            digest: d,
            digest_scheme: if part % 2 == 1 {
                DigestScheme::Bytes
            } else {
                DigestScheme::Pieces
            },
        })
}

/// Valid extents (ascending, non-overlapping) with their data length sum kept small.
pub fn arb_extents() -> impl Strategy<Value = Vec<Extent>> {
    (
        any::<u32>(),
        proptest::collection::vec((0u64..5000, 1u64..3000, any::<bool>()), 1..20),
    )
        .prop_map(|(base, parts)| {
            let mut at = base as u64;
            parts
                .into_iter()
                .map(|(gap, len, zero)| {
                    at += gap;
                    let e = Extent {
                        offset: at,
                        length: if zero { len * 1000 } else { len },
                        kind: if zero {
                            ExtentKind::Zero
                        } else {
                            ExtentKind::Data
                        },
                    };
                    at += e.length;
                    e
                })
                .collect()
        })
}

pub fn plain_len(extents: &[Extent]) -> u32 {
    extents
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| e.length)
        .sum::<u64>() as u32
}

pub fn fixed_header() -> ImageHeader {
    ImageHeader {
        image_uuid: [0x11; 16],
        disk_uuid: [0x22; 16],
        session_uuid: [0x33; 16],
        parent_image_uuid: Some([0x44; 16]),
        kind: ImageKind::Incremental,
        part: 0,
        first_sequence: 0,
        disk_size: 10 * 1024 * 1024 * 1024,
        tracking_block_size: 65536,
        record_data_size: DEFAULT_RECORD_DATA_SIZE,
        time: 1_795_590_000,
        compression: Compression::Zstd,
        cipher: Cipher::Aes256Gcm {
            key_fingerprint: [0x5a; 16],
        },
        vm_name: "web01".into(),
        change_id: "52 de c0 7e/42".into(),
        from_change_id: Some("52 de c0 7e/41".into()),
        copy_of: None,
        synthetic_of: None,
        digest_scheme: DigestScheme::NEWEST,
    }
}
