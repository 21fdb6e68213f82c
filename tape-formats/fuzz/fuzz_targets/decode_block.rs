//! decode_block on arbitrary bytes must never panic; whatever decodes must re-encode
//! to the same bytes (for the record kinds this version writes without extensions).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tape_formats::*;

fuzz_target!(|data: &[u8]| {
    let Ok(block) = decode_block(data) else {
        return;
    };
    let Ok(prefix) = decode_prefix(data) else {
        panic!("decode_block accepted a bad prefix")
    };
    if prefix.ext_len != 0 || prefix.minor != BASE_MINOR {
        return;
    }
    let mut out = Vec::new();
    let r = match &block {
        Block::VolumeLabel(v) => v.encode(&mut out),
        Block::ImageHeader(v) => v.encode(&mut out),
        Block::ImageTrailer(v) => v.encode(&mut out),
        Block::Data(r) => encode_data_record(&r.fields, &r.extents, r.payload, &mut out),
        Block::SnapshotHeader(v) => v.encode(&mut out),
        Block::SnapshotChunk(c) => encode_snapshot_chunk(&c.fields, c.payload, &mut out),
        Block::SnapshotTrailer(v) => v.encode(&mut out),
        Block::EndOfSession(v) => v.encode(&mut out),
        Block::Unknown { .. } => return,
    };
    r.expect("a decoded block re-encodes");
    assert_eq!(out, data, "decode/encode is not the identity");
});
