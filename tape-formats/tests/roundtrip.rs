//! Property tests: every structure survives encode -> decode_block unchanged.
mod common;
use common::*;
use proptest::prelude::*;
use tape_formats::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn volume_label_round_trips(l in arb_label()) {
        let mut buf = vec![0xEE; 3]; // encoders append; existing bytes stay
        l.encode(&mut buf).unwrap();
        prop_assert_eq!(&buf[..3], &[0xEE; 3]);
        prop_assert_eq!(decode_block(&buf[3..]).unwrap(), Block::VolumeLabel(l));
    }

    #[test]
    fn image_header_round_trips(h in arb_header()) {
        let mut buf = Vec::new();
        h.encode(&mut buf).unwrap();
        prop_assert_eq!(decode_block(&buf).unwrap(), Block::ImageHeader(h));
    }

    #[test]
    fn image_trailer_round_trips(t in arb_trailer()) {
        let mut buf = Vec::new();
        t.encode(&mut buf).unwrap();
        prop_assert_eq!(decode_block(&buf).unwrap(), Block::ImageTrailer(t));
    }

    #[test]
    fn data_record_round_trips(
        extents in arb_extents(), uuid in any::<[u8;16]>(), part in any::<u32>(), seq in any::<u64>(),
        crypto in arb_crypto(), zstd in any::<bool>(), extra in 0usize..50,
    ) {
        let plain = plain_len(&extents);
        let compression = if zstd { Compression::Zstd } else { Compression::None };
        let stored_len = if zstd { extra + 1 } else { plain as usize };
        let payload: Vec<u8> = (0..stored_len).map(|i| (i * 7 + 3) as u8).collect();
        let fields = DataFields { image_uuid: uuid, part, sequence: seq, compression, crypto, plain_len: plain };
        let mut buf = Vec::new();
        encode_data_record(&fields, &extents, &payload, &mut buf).unwrap();
        match decode_block(&buf).unwrap() {
            Block::Data(r) => {
                prop_assert_eq!(r.fields, fields);
                prop_assert_eq!(&r.extents, &extents);
                prop_assert_eq!(r.payload, &payload[..]);
                // AAD is the header with CRCs and tag zeroed, so it is the same
                // before encryption (tag unknown) and after decoding.
                let mut a1 = Vec::new();
                r.aad(&mut a1).unwrap();
                let mut a2 = Vec::new();
                let mut pre = fields;
                if let RecordCrypto::Aes256Gcm { ref mut tag, .. } = pre.crypto { *tag = [0; 16]; }
                data_record_aad(&pre, &extents, payload.len(), &mut a2).unwrap();
                prop_assert_eq!(a1, a2);
            }
            other => prop_assert!(false, "decoded {:?}", other),
        }
    }

    /// A record framed in place (payload first, header filled into the room left for it)
    /// is byte for byte the record encode_data_record builds.
    #[test]
    fn framing_in_place_equals_encoding(
        extents in arb_extents(), uuid in any::<[u8;16]>(), part in any::<u32>(), seq in any::<u64>(),
        crypto in arb_crypto(), zstd in any::<bool>(), extra in 0usize..50, stale in any::<u8>(),
    ) {
        let plain = plain_len(&extents);
        let compression = if zstd { Compression::Zstd } else { Compression::None };
        let stored_len = if zstd { extra + 1 } else { plain as usize };
        let payload: Vec<u8> = (0..stored_len).map(|i| (i * 7 + 3) as u8).collect();
        let fields = DataFields { image_uuid: uuid, part, sequence: seq, compression, crypto, plain_len: plain };
        let mut encoded = Vec::new();
        encode_data_record(&fields, &extents, &payload, &mut encoded).unwrap();
        let room = data_header_len(extents.len());
        let mut block = vec![stale; room];
        block.extend_from_slice(&payload);
        frame_data_record(&fields, &extents, crc32fast::hash(&payload), &mut block).unwrap();
        prop_assert_eq!(&block, &encoded);
        // A wrong payload CRC is caught by the reader, as on any record.
        frame_data_record(&fields, &extents, crc32fast::hash(&payload) ^ 1, &mut block).unwrap();
        prop_assert!(decode_block(&block).is_err());
        // Too short for its header: an error, not a panic.
        prop_assert!(frame_data_record(&fields, &extents, 0, &mut block[..room - 1]).is_err());
        // A header framed apart from its payload, then joined: the same block.
        let mut header = vec![stale; room];
        frame_data_header(&fields, &extents, payload.len(), crc32fast::hash(&payload), &mut header).unwrap();
        header.extend_from_slice(&payload);
        prop_assert_eq!(&header, &encoded);
        let mut wrong_room = vec![0u8; room + 1];
        prop_assert!(frame_data_header(&fields, &extents, payload.len(), 0, &mut wrong_room).is_err());
    }

    #[test]
    fn snapshot_records_round_trip(
        s in any::<[u8;16]>(), m in any::<[u8;16]>(), t in any::<i64>(), cipher in arb_cipher(), crypto in arb_crypto(),
        total in any::<u64>(), seq in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 1..300),
        digest in any::<[u8;32]>(), n in any::<u32>(),
    ) {
        let h = SnapshotHeader { session_uuid: s, media_set_uuid: m, time: t, compression: Compression::None, cipher, total_plain_len: total, chunk_data_size: DEFAULT_SNAPSHOT_CHUNK_SIZE };
        let f = ChunkFields { session_uuid: s, sequence: seq, compression: Compression::None, crypto, plain_len: payload.len() as u32 };
        let tr = SnapshotTrailer { session_uuid: s, chunk_count: seq, total_plain_len: total, digest };
        let eos = EndOfSession { session_uuid: s, media_set_uuid: m, time: t, image_parts: n, set_sequence: n ^ 5 };
        let mut buf = Vec::new();
        h.encode(&mut buf).unwrap();
        prop_assert_eq!(decode_block(&buf).unwrap(), Block::SnapshotHeader(h));
        buf.clear();
        encode_snapshot_chunk(&f, &payload, &mut buf).unwrap();
        match decode_block(&buf).unwrap() {
            Block::SnapshotChunk(c) => { prop_assert_eq!(c.fields, f); prop_assert_eq!(c.payload, &payload[..]); }
            other => prop_assert!(false, "decoded {:?}", other),
        }
        buf.clear();
        tr.encode(&mut buf).unwrap();
        prop_assert_eq!(decode_block(&buf).unwrap(), Block::SnapshotTrailer(tr));
        buf.clear();
        eos.encode(&mut buf).unwrap();
        prop_assert_eq!(decode_block(&buf).unwrap(), Block::EndOfSession(eos));
    }

    #[test]
    fn content_digest_by_record_equals_by_extent(extents in arb_extents(), pieces in any::<bool>()) {
        let scheme = if pieces { DigestScheme::Pieces } else { DigestScheme::Bytes };
        let plain: Vec<u8> = (0..plain_len(&extents)).map(|i| (i % 251) as u8).collect();
        let mut a = ContentDigest::new(scheme);
        a.update_record(&extents, &plain).unwrap();
        let mut b = ContentDigest::new(scheme);
        let mut at = 0usize;
        for e in &extents {
            let n = if e.kind == ExtentKind::Data { e.length as usize } else { 0 };
            b.update_extent(e, &plain[at..at + n]).unwrap();
            at += n;
        }
        prop_assert_eq!(a.finalize(), b.finalize());
        // plain data of the wrong length is refused
        prop_assert!(a.clone().update_record(&extents, &plain[..plain.len().saturating_sub(1)]).is_err() || plain.is_empty());
    }
}

#[test]
fn content_digest_matches_the_documented_definition() {
    // What a stranger computes with any BLAKE3 implementation, per docs/FORMAT.md.
    let ext = [
        Extent {
            offset: 0,
            length: 4,
            kind: ExtentKind::Data,
        },
        Extent {
            offset: 4,
            length: 1 << 20,
            kind: ExtentKind::Zero,
        },
    ];
    let mut manual = Vec::new();
    manual.extend_from_slice(&0u64.to_le_bytes());
    manual.extend_from_slice(&4u64.to_le_bytes());
    manual.push(0);
    manual.extend_from_slice(b"abcd");
    manual.extend_from_slice(&4u64.to_le_bytes());
    manual.extend_from_slice(&(1u64 << 20).to_le_bytes());
    manual.push(1);
    let mut d = ContentDigest::new(DigestScheme::Bytes);
    d.update_record(&ext, b"abcd").unwrap();
    assert_eq!(d.finalize(), *blake3::hash(&manual).as_bytes());

    // Encrypted images: the same bytes through BLAKE3's keyed mode, with the key derived
    // from the record key in derive_key mode under the documented context string.
    let record_key = [0x42u8; 32];
    let dk = digest_key(&record_key);
    assert_eq!(
        dk,
        blake3::derive_key("tapevault 2026-11 content digest key v1", &record_key)
    );
    assert_ne!(&dk, &record_key);
    let mut k = ContentDigest::keyed(DigestScheme::Bytes, &dk);
    k.update_record(&ext, b"abcd").unwrap();
    assert_eq!(k.finalize(), *blake3::keyed_hash(&dk, &manual).as_bytes());
    assert_ne!(k.finalize(), d.finalize());
    assert_eq!(
        snapshot_digest(Some(&dk), b"SQL"),
        *blake3::keyed_hash(&dk, b"SQL").as_bytes()
    );
    assert_eq!(
        snapshot_digest(None, b"SQL"),
        *blake3::hash(b"SQL").as_bytes()
    );
}

/// Format 1.1: a synthetic full's header carries the image it reproduces in one
/// extension entry, written with minor 1; the body is exactly a 1.0 full's, so a 1.0
/// reader (which skips unknown entries) sees a plain full.
#[test]
fn a_synthetic_full_header_is_a_full_with_one_extension_entry() {
    let full = ImageHeader {
        kind: ImageKind::Full,
        parent_image_uuid: None,
        from_change_id: None,
        ..common::fixed_header()
    };
    let synth = ImageHeader {
        synthetic_of: Some([0x77; 16]),
        ..full.clone()
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    full.encode(&mut a).unwrap();
    synth.encode(&mut b).unwrap();
    let pa = decode_prefix(&a).unwrap();
    let pb = decode_prefix(&b).unwrap();
    assert_eq!((pa.minor, pa.ext_len), (BASE_MINOR, 0));
    assert_eq!((pb.minor, pb.ext_len), (1, 20));
    assert_eq!(pb.header_len, pa.header_len + 20);
    // Same body bytes; the entry follows it: type 2, length 16, the UUID.
    assert_eq!(a[28..pa.header_len], b[28..pa.header_len]);
    assert_eq!(&b[pa.header_len..pa.header_len + 4], &[2, 0, 16, 0]);
    assert_eq!(&b[pa.header_len + 4..pb.header_len], &[0x77; 16]);
    match decode_block(&b).unwrap() {
        Block::ImageHeader(h) => assert_eq!(h, synth),
        other => panic!("decoded {}", other.kind_name()),
    }
    // Only a full can be synthetic.
    let bad = ImageHeader {
        synthetic_of: Some([0x77; 16]),
        ..common::fixed_header()
    };
    assert!(bad.encode(&mut Vec::new()).is_err());
}
