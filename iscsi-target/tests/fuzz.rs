//! Random PDUs and random CDBs against a live target: no panic anywhere, no hang, and
//! the target keeps serving afterwards. A panic hook counts panics in any thread.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use iscsi_target::initiator::Initiator;
use iscsi_target::pdu::Pdu;

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        prev(info);
    }));
}

/// xorshift, seeded: the same run every time.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_cdbs_and_pdus_never_panic_or_hang() {
    count_panics();
    let s = Served::new(8 << 20, 1 << 20);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    // Known opcodes with random fields, and random opcodes, to every LUN.
    let ops = [
        0x00u8, 0x01, 0x03, 0x05, 0x07, 0x08, 0x0a, 0x10, 0x11, 0x12, 0x15, 0x16, 0x17, 0x19, 0x1a,
        0x1b, 0x1e, 0x2b, 0x34, 0x4c, 0x4d, 0x55, 0x5a, 0x8c, 0x8d, 0x91, 0x92, 0xa0, 0xa5, 0xa6,
        0xb8, 0xe7,
    ];
    for n in 0..3000 {
        let lun = rng.below(4);
        let mut cdb = [0u8; 16];
        for b in cdb.iter_mut() {
            *b = if rng.below(3) == 0 { rng.byte() } else { 0 };
        }
        cdb[0] = if rng.below(8) == 0 {
            rng.byte()
        } else {
            ops[rng.below(ops.len() as u64) as usize]
        };
        // Keep transfers small so the run stays short: cap the length fields.
        if matches!(cdb[0], 0x08 | 0x0a) {
            cdb[2] = 0;
            cdb[3] &= 0x0f;
        }
        if matches!(cdb[0], 0x10) {
            cdb[2] = 0;
            cdb[3] = 0;
        }
        if matches!(cdb[0], 0x19 | 0x1b) && rng.below(4) != 0 {
            continue;
        }
        let out_len = if rng.below(3) == 0 {
            rng.below(600) as usize
        } else {
            0
        };
        let data: Vec<u8> = (0..out_len).map(|_| rng.byte()).collect();
        let read_len = rng.below(70000) as u32;
        let r = i.command(
            lun,
            &cdb[..],
            &data,
            if data.is_empty() { read_len } else { 0 },
        );
        let r = r.unwrap_or_else(|e| panic!("command {n} {cdb:02x?} on LUN {lun}: {e}"));
        assert!(matches!(r.status, 0 | 2 | 0x18), "status {r:?}");
        if r.status == 2 {
            assert!(r.sense.len() >= 18, "CHECK CONDITION carries sense: {r:?}");
        }
    }
    assert_eq!(i.nop(b"still here").unwrap(), b"still here");
    // Logging out releases whatever the random commands reserved or prevented.
    assert_eq!(i.logout().unwrap(), 0);
    // Random PDUs on their own connections (each may be closed by the target).
    for _ in 0..200 {
        let mut c = s.login(2);
        for _ in 0..5 {
            let mut p = Pdu::new(rng.byte() & 0x3f);
            for b in p.bhs.iter_mut().skip(1) {
                *b = rng.byte();
            }
            p.bhs[0] = rng.byte() & 0x7f;
            p.ahs = vec![];
            let dl = rng.below(64) as usize;
            p.data = (0..dl).map(|_| rng.byte()).collect();
            if c.send(&p).is_err() {
                break;
            }
        }
        c.drop_connection();
    }
    // Garbage before login.
    for _ in 0..50 {
        let mut c = Initiator::connect(s.addr).unwrap();
        let junk: Vec<u8> = (0..rng.below(200)).map(|_| rng.byte()).collect();
        let _ = c.send_bytes(&junk);
        c.drop_connection();
    }
    let mut j = s.login(3);
    assert_eq!(j.nop(b"ok").unwrap(), b"ok");
    let r = settle(&mut j, DRIVE0);
    assert!(matches!(r.status, 0 | 2));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a thread panicked");
}
