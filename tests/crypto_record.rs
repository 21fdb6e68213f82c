//! Record cipher and nonce source.
use proptest::prelude::*;
use std::collections::HashSet;
use tapevault::crypto::{AuthError, NonceSource, RecordKey};

#[test]
fn seal_open_round_trip_and_wrong_key() {
    let k = RecordKey::generate();
    let mut buf = b"hello tape".to_vec();
    let tag = k.seal([7; 12], b"header", &mut buf);
    assert_ne!(buf, b"hello tape");
    let mut copy = buf.clone();
    k.open([7; 12], b"header", &mut copy, tag).unwrap();
    assert_eq!(copy, b"hello tape");
    let other = RecordKey::generate();
    let mut copy = buf.clone();
    assert_eq!(
        other.open([7; 12], b"header", &mut copy, tag),
        Err(AuthError)
    );
    assert!(copy.is_empty(), "failed open must clear the buffer");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_bit_flip_fails(data in proptest::collection::vec(any::<u8>(), 0..200),
                          aad in proptest::collection::vec(any::<u8>(), 0..40),
                          which in 0usize..4, pos in any::<usize>(), bit in 0u8..8) {
        let k = RecordKey::from_bytes([9; 32]);
        let mut nonce = [3u8; 12];
        let mut aad = aad;
        let mut buf = data.clone();
        let mut tag = k.seal(nonce, &aad, &mut buf);
        let flip = 1u8 << bit;
        match which {
            0 if !buf.is_empty() => { let i = pos % buf.len(); buf[i] ^= flip; }
            1 => { tag[pos % 16] ^= flip; }
            2 => { nonce[pos % 12] ^= flip; }
            _ => {
                if aad.is_empty() { aad.push(0) } else { let i = pos % aad.len(); aad[i] ^= flip; }
            }
        }
        prop_assert_eq!(k.open(nonce, &aad, &mut buf, tag), Err(AuthError));
        prop_assert!(buf.is_empty());
    }
}

#[test]
fn nonces_unique_across_reservations_and_sources() {
    let d = tempfile::tempdir().unwrap();
    let fp = [5u8; 16];
    let mut seen = HashSet::new();
    for round in 0..20 {
        // A fresh source each round is a "new process": it must continue, not restart.
        let src = NonceSource::open_with_reservation(d.path(), &fp, 7).unwrap();
        for _ in 0..(round % 5 + 3) {
            assert!(seen.insert(src.next().unwrap()), "nonce reused");
        }
    }
    // Threads with separate sources (separate lock file descriptions) interleave.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let p = d.path().to_path_buf();
            std::thread::spawn(move || {
                let src = NonceSource::open_with_reservation(&p, &fp, 3).unwrap();
                (0..200).map(|_| src.next().unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for n in h.join().unwrap() {
            assert!(seen.insert(n), "nonce reused across threads");
        }
    }
    // A different key has its own counter file, independent.
    let other = NonceSource::open(d.path(), &[6u8; 16]).unwrap();
    other.next().unwrap();
    assert!(d.path().join(format!("{}.nonce", "06".repeat(16))).exists());
}

#[test]
fn damaged_counter_file_is_refused_not_reset() {
    let d = tempfile::tempdir().unwrap();
    let fp = [1u8; 16];
    NonceSource::open(d.path(), &fp).unwrap().next().unwrap();
    let path = d.path().join(format!("{}.nonce", "01".repeat(16)));
    let mut b = std::fs::read(&path).unwrap();
    b[15] ^= 1;
    std::fs::write(&path, &b).unwrap();
    let e = NonceSource::open(d.path(), &fp)
        .unwrap()
        .next()
        .unwrap_err();
    assert!(e.to_string().contains("safe"), "{e}");
}

const CHILD_ENV: &str = "TAPEVAULT_NONCE_CHILD_DIR";

/// Child half of `nonces_unique_across_processes`: prints 300 nonces as hex.
#[test]
fn nonce_child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let src =
        NonceSource::open_with_reservation(std::path::Path::new(&dir), &[2u8; 16], 5).unwrap();
    for _ in 0..300 {
        let n = src.next().unwrap();
        println!(
            "NONCE {}",
            n.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }
}

#[test]
fn nonces_unique_across_processes() {
    let d = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "nonce_child_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, d.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            // The harness may print "test ... " on the same line as the first nonce.
            if let Some(n) = line.split("NONCE ").nth(1) {
                total += 1;
                assert!(
                    seen.insert(n.to_string()),
                    "nonce {n} reused across processes"
                );
            }
        }
    }
    assert_eq!(total, 900);
}

#[test]
fn lost_counter_file_starts_a_new_random_nonce_space() {
    // A home rebuilt from cartridges (or the key imported elsewhere) has no counter
    // file: its nonces must not restart where the old installation's began.
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let fp = [8u8; 16];
    let first = NonceSource::open(a.path(), &fp).unwrap().next().unwrap();
    let other = NonceSource::open(b.path(), &fp).unwrap().next().unwrap();
    assert_eq!(first[4..], [0u8; 8], "counter starts at 0");
    assert_eq!(other[4..], [0u8; 8]);
    // Fails with probability 2^-32: the installation ids are random.
    assert_ne!(
        first[..4],
        other[..4],
        "two installations share a nonce prefix"
    );
    // The same installation continues after the reserved range, never from 0.
    let again = NonceSource::open(a.path(), &fp).unwrap().next().unwrap();
    assert_eq!(again[..4], first[..4]);
    assert_eq!(
        u64::from_be_bytes(again[4..].try_into().unwrap()),
        tapevault::crypto::nonces::DEFAULT_RESERVATION
    );
}
