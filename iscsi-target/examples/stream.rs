//! Streaming throughput through the target against the in-process virtual drive, same
//! run: `cargo run --release -p iscsi-target --example stream -- [MIB] [BLOCK_KIB]`.
//! Writes MIB MiB in blocks of BLOCK_KIB KiB to a fresh cartridge, rewinds, reads it
//! back and compares, once in-process (vtl-sim Drive) and once through iSCSI over
//! loopback (our test initiator), and prints MiB/s for each.

use std::time::Instant;

use iscsi_target::initiator::Initiator;
use iscsi_target::{Target, TargetConfig};
use vtl_sim::{Library, LibraryConfig, Read};

fn pattern(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

fn main() {
    let mut a = std::env::args().skip(1);
    let mib: u64 = a.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let bkib: usize = a.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let bs = bkib * 1024;
    let blocks = (mib << 20) / bs as u64;
    let dir = tempfile::tempdir().expect("temp dir");
    let lib = Library::create(
        dir.path(),
        &LibraryConfig {
            slots: 2,
            drives: 2,
            mail_slots: 0,
            cartridges: 2,
            capacity: (mib + 64) << 20,
            early_warning: 1 << 20,
        },
    )
    .expect("library");
    let mut buf = vec![0u8; bs];
    let mut rbuf = vec![0u8; bs];

    // In-process.
    lib.load("TV0001L9", 0).expect("load");
    let (w, rd) = {
        let mut d = lib.open_drive(0).expect("drive");
        let t = Instant::now();
        for k in 0..blocks {
            pattern(k, &mut buf);
            d.write_block(&buf).expect("write");
        }
        d.write_filemarks(1, false).expect("filemark");
        let w = t.elapsed();
        d.rewind().expect("rewind");
        let t = Instant::now();
        for k in 0..blocks {
            assert_eq!(d.read_block(&mut rbuf).expect("read"), Read::Block(bs));
            pattern(k, &mut buf);
            assert!(rbuf == buf, "block {k} differs");
        }
        (w, t.elapsed())
    };
    let rate = |d: std::time::Duration| mib as f64 / d.as_secs_f64();
    println!(
        "in-process: write {:.0} MiB/s, read {:.0} MiB/s",
        rate(w),
        rate(rd)
    );

    // Through the target.
    lib.load("TV0002L9", 1).expect("load");
    let mut cfg = TargetConfig::new(dir.path());
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    let h = Target::serve(cfg).expect("serve");
    let mut i = Initiator::login(
        h.local_addr(),
        "iqn.2025-01.org.tapevault:bench",
        Some(h.target_name()),
        [0x80, 0, 0, 0, 0, 1],
    )
    .expect("login");
    let tur = [0u8; 6];
    for _ in 0..5 {
        let _ = i.command(2, &tur, &[], 0);
    }
    let len = (bs as u32).to_be_bytes();
    let wcdb = [0x0a, 0, len[1], len[2], len[3], 0];
    let rcdb = [0x08, 0, len[1], len[2], len[3], 0];
    let t = Instant::now();
    for k in 0..blocks {
        pattern(k, &mut buf);
        let r = i.command(2, &wcdb, &buf, 0).expect("write");
        assert_eq!(r.status, 0, "write {k}: {r:?}");
    }
    let r = i
        .command(2, &[0x10, 0, 0, 0, 1, 0], &[], 0)
        .expect("filemark");
    assert_eq!(r.status, 0);
    let w2 = t.elapsed();
    assert_eq!(
        i.command(2, &[1, 0, 0, 0, 0, 0], &[], 0)
            .expect("rewind")
            .status,
        0
    );
    let t = Instant::now();
    for k in 0..blocks {
        let r = i.command(2, &rcdb, &[], bs as u32).expect("read");
        assert_eq!(r.status, 0, "read {k}");
        pattern(k, &mut buf);
        assert!(r.data == buf, "block {k} differs");
    }
    let r2 = t.elapsed();
    println!(
        "iSCSI:      write {:.0} MiB/s, read {:.0} MiB/s",
        rate(w2),
        rate(r2)
    );
    println!(
        "ratio:      write {:.2}x, read {:.2}x",
        w.as_secs_f64() / w2.as_secs_f64(),
        rd.as_secs_f64() / r2.as_secs_f64()
    );
    let _ = i.logout();
    h.shutdown().expect("shutdown");
}
