//! Streaming throughput through the target against the in-process virtual drive, same
//! run: `cargo run --release -p iscsi-target --example stream -- [MIB] [BLOCK_KIB] [QUEUE]`.
//! Writes MIB MiB in blocks of BLOCK_KIB KiB to a fresh cartridge, rewinds, reads it
//! back and compares, once in-process (vtl-sim Drive) and once through iSCSI over
//! loopback (our test initiator, QUEUE commands in flight, default 2; 1 is one at a
//! time), and prints MiB/s for each. Before each timed phase the page cache's dirty data is
//! written back (`sync`), so that no phase pays for the writeback of the one before.

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

/// CPU seconds this process (initiator and target threads together) used so far, from
/// /proc/self/stat (clock ticks of 10 ms); 0 where that is not available.
fn cpu_s() -> f64 {
    let Ok(st) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = st.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Writes back dirty data before a timed phase.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

fn main() {
    let mut a = std::env::args().skip(1);
    let mib: u64 = a.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let bkib: usize = a.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let queue: usize = a.next().and_then(|s| s.parse().ok()).unwrap_or(2).max(1);
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
    // CPU seconds of the in-process write and read, then through iSCSI.
    let mut cpu = [0f64; 4];

    // In-process.
    lib.load("TV0001L9", 0).expect("load");
    let (w, rd) = {
        let mut d = lib.open_drive(0).expect("drive");
        settle();
        let (t, c) = (Instant::now(), cpu_s());
        for k in 0..blocks {
            pattern(k, &mut buf);
            d.write_block(&buf).expect("write");
        }
        d.write_filemarks(1, false).expect("filemark");
        let w = t.elapsed();
        cpu[0] = cpu_s() - c;
        d.rewind().expect("rewind");
        settle();
        let (t, c) = (Instant::now(), cpu_s());
        for k in 0..blocks {
            assert_eq!(d.read_block(&mut rbuf).expect("read"), Read::Block(bs));
            pattern(k, &mut buf);
            assert!(rbuf == buf, "block {k} differs");
        }
        cpu[1] = cpu_s() - c;
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
    // Commands complete in the order sent (a tape executes them in CmdSN order).
    let mut sent = std::collections::VecDeque::new();
    settle();
    let (t, c) = (Instant::now(), cpu_s());
    for k in 0..blocks {
        if sent.len() >= queue {
            let (itt, r) = i.next_done().expect("write");
            let (want, k): (u32, u64) = sent.pop_front().expect("in flight");
            assert_eq!(itt, want, "write {k} answered out of order");
            assert_eq!(r.status, 0, "write {k}: {r:?}");
        }
        pattern(k, &mut buf);
        sent.push_back((i.submit(2, &wcdb, &buf, 0).expect("write"), k));
    }
    while let Some((want, k)) = sent.pop_front() {
        let (itt, r) = i.next_done().expect("write");
        assert_eq!(itt, want, "write {k} answered out of order");
        assert_eq!(r.status, 0, "write {k}: {r:?}");
    }
    let r = i
        .command(2, &[0x10, 0, 0, 0, 1, 0], &[], 0)
        .expect("filemark");
    assert_eq!(r.status, 0);
    let w2 = t.elapsed();
    cpu[2] = cpu_s() - c;
    assert_eq!(
        i.command(2, &[1, 0, 0, 0, 0, 0], &[], 0)
            .expect("rewind")
            .status,
        0
    );
    settle();
    let (t, c) = (Instant::now(), cpu_s());
    let mut next = 0u64;
    for k in 0..blocks {
        while next < blocks && sent.len() < queue {
            sent.push_back((i.submit(2, &rcdb, &[], bs as u32).expect("read"), next));
            next += 1;
        }
        let (itt, r) = i.next_done().expect("read");
        let (want, kk) = sent.pop_front().expect("in flight");
        assert_eq!((itt, kk), (want, k), "read {k} answered out of order");
        assert_eq!(r.status, 0, "read {k}");
        pattern(k, &mut buf);
        assert!(r.data == buf, "block {k} differs");
    }
    let r2 = t.elapsed();
    cpu[3] = cpu_s() - c;
    println!(
        "iSCSI ({queue} in flight): write {:.0} MiB/s, read {:.0} MiB/s",
        rate(w2),
        rate(r2)
    );
    println!(
        "ratio:      write {:.2}x, read {:.2}x",
        w.as_secs_f64() / w2.as_secs_f64(),
        rd.as_secs_f64() / r2.as_secs_f64()
    );
    println!(
        "CPU s:      in-process write {:.2} read {:.2}, iSCSI write {:.2} read {:.2}; ratio write {:.2}x, read {:.2}x",
        cpu[0],
        cpu[1],
        cpu[2],
        cpu[3],
        cpu[0] / cpu[2],
        cpu[1] / cpu[3]
    );
    let _ = i.logout();
    h.shutdown().expect("shutdown");
}
