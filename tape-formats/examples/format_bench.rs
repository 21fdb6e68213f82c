//! Measures framing cost against payload checksumming at the default record size.
//! Run: `cargo run --release -p tape-formats --example format_bench [records]`
use std::hint::black_box;
use std::time::Instant;
use tape_formats::*;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let size = DEFAULT_RECORD_DATA_SIZE as usize;
    let payload: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let extents = [Extent {
        offset: 0,
        length: size as u64,
        kind: ExtentKind::Data,
    }];
    let fields = DataFields {
        image_uuid: [1; 16],
        part: 0,
        sequence: 0,
        compression: Compression::Zstd,
        crypto: RecordCrypto::Aes256Gcm {
            key_fingerprint: [2; 16],
            nonce: [3; 12],
            tag: [4; 16],
        },
        plain_len: size as u32,
    };
    let mut buf = Vec::with_capacity(MAX_BLOCK_SIZE);
    encode_data_record(&fields, &extents, &payload, &mut buf).unwrap();
    let header_len = buf.len() - size;
    let mut aad = Vec::with_capacity(4096);

    // Header-only work: building the AAD encodes every header field (no payload).
    let t = Instant::now();
    for i in 0..n {
        aad.clear();
        let f = DataFields {
            sequence: i as u64,
            ..fields
        };
        data_record_aad(&f, &extents, size, &mut aad).unwrap();
        black_box(&aad);
    }
    let aad_ns = t.elapsed().as_nanos() as f64 / n as f64;

    let t = Instant::now();
    for _ in 0..n {
        black_box(crc32fast::hash(black_box(&payload)));
    }
    let crc_ns = t.elapsed().as_nanos() as f64 / n as f64;

    let t = Instant::now();
    for i in 0..n {
        buf.clear();
        let f = DataFields {
            sequence: i as u64,
            ..fields
        };
        encode_data_record(&f, &extents, &payload, &mut buf).unwrap();
        black_box(&buf);
    }
    let enc_ns = t.elapsed().as_nanos() as f64 / n as f64;

    let t = Instant::now();
    for _ in 0..n {
        black_box(decode_block(black_box(&buf)).unwrap());
    }
    let dec_ns = t.elapsed().as_nanos() as f64 / n as f64;

    let t = Instant::now();
    for _ in 0..n {
        let mut d = ContentDigest::new(DigestScheme::NEWEST);
        d.update_record(&extents, &payload).unwrap();
        black_box(d.finalize());
    }
    let b3_ns = t.elapsed().as_nanos() as f64 / n as f64;

    // Header cost alone: a zstd record whose stored payload is 1 byte (same header).
    let mut hb = Vec::with_capacity(4096);
    let t = Instant::now();
    for i in 0..n {
        hb.clear();
        let f = DataFields {
            sequence: i as u64,
            ..fields
        };
        encode_data_record(&f, &extents, &[0], &mut hb).unwrap();
        black_box(&hb);
    }
    let hdr_enc_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        black_box(decode_block(black_box(&hb)).unwrap());
    }
    let hdr_dec_ns = t.elapsed().as_nanos() as f64 / n as f64;

    // The same payload stays in cache above; walk 64 MiB of distinct records for a
    // closer-to-streaming number.
    let big: Vec<u8> = (0..64usize << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let t = Instant::now();
    for c in big.chunks(size) {
        black_box(crc32fast::hash(black_box(c)));
    }
    let crc_cold_ns = t.elapsed().as_nanos() as f64 / (big.len() / size) as f64;
    let t = Instant::now();
    for c in big.chunks(size) {
        black_box(blake3::hash(black_box(c)));
    }
    let b3_cold_ns = t.elapsed().as_nanos() as f64 / (big.len() / size) as f64;

    let mb = |ns: f64| size as f64 / ns * 1e9 / (1024.0 * 1024.0);
    println!(
        "records: {n} x {} KiB plain, block {} bytes",
        size / 1024,
        buf.len()
    );
    println!("header bytes per record (1 extent): {header_len}");
    println!(
        "framing overhead: {:.4} % of payload (1 extent); {:.4} % with 64 extents",
        header_len as f64 * 100.0 / size as f64,
        (header_len + 63 * EXTENT_LEN) as f64 * 100.0 / size as f64
    );
    println!("header AAD build:           {aad_ns:>10.0} ns/record");
    println!(
        "CRC-32 of payload:          {crc_ns:>10.0} ns/record ({:.0} MiB/s)",
        mb(crc_ns)
    );
    println!(
        "encode (header+CRC+copy):   {enc_ns:>10.0} ns/record ({:.0} MiB/s)",
        mb(enc_ns)
    );
    println!(
        "decode_block (incl. CRC):   {dec_ns:>10.0} ns/record ({:.0} MiB/s)",
        mb(dec_ns)
    );
    println!(
        "ContentDigest (BLAKE3):     {b3_ns:>10.0} ns/record ({:.0} MiB/s)",
        mb(b3_ns)
    );
    println!(
        "CRC-32, 64 MiB streamed:    {crc_cold_ns:>10.0} ns/record ({:.0} MiB/s)",
        mb(crc_cold_ns)
    );
    println!(
        "BLAKE3, 64 MiB streamed:    {b3_cold_ns:>10.0} ns/record ({:.0} MiB/s)",
        mb(b3_cold_ns)
    );
    println!("header-only encode:         {hdr_enc_ns:>10.0} ns/record");
    println!("header-only decode_block:   {hdr_dec_ns:>10.0} ns/record");
}
