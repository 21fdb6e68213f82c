//! Crash tests: a real child process writes blocks and filemarks in a loop and is killed
//! with SIGKILL at random moments. After each kill the cartridge must hold every block
//! whose write returned, intact, possibly the one block in flight, and nothing partial.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use vtl_sim::{Cartridge, CartridgeMeta, Read};

const CHILD_ENV: &str = "VTL_SIM_CRASH_CHILD_DIR";

/// Block `i`'s contents: its number and length in front, then a pattern from both.
fn block(i: u64) -> Vec<u8> {
    let len = 1 + ((i * 7919) % 20000) as usize + 16;
    let mut b = vec![0u8; len];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    for (k, x) in b[16..].iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(13).wrapping_add(k as u8);
    }
    b
}

/// The child: append blocks (a filemark after every 5th) forever, acknowledging each
/// completed write on stdout.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut c = Cartridge::open(std::path::Path::new(&dir)).unwrap();
    c.space_to_eod().unwrap();
    // Continue numbering from what is on tape.
    let mut i = c.object_count();
    let out = std::io::stdout();
    let mut out = out.lock();
    loop {
        if i % 6 == 5 {
            c.write_filemarks(1, true).unwrap();
            writeln!(out, "F {i}").unwrap();
        } else {
            c.write_block(&block(i)).unwrap();
            writeln!(out, "B {i}").unwrap();
        }
        out.flush().unwrap();
        i += 1;
    }
}

#[test]
fn killed_writer_leaves_exactly_the_completed_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("TV0001L9");
    Cartridge::create(&dir, &CartridgeMeta::new("TV0001L9", 1 << 40, 1 << 20)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: u64 = 0; // objects 0..acked were acknowledged
    for round in 0..8u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    last = Some(n);
                }
            }
            last
        });
        // Vary the moment of death.
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 90));
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(n) = reader.join().unwrap() {
            acked = n + 1;
        }
        let mut c = Cartridge::open(&dir).unwrap();
        let count = c.object_count();
        assert!(
            count >= acked,
            "round {round}: {count} objects on tape but {acked} were acknowledged"
        );
        assert!(
            count <= acked + 1,
            "round {round}: {count} objects on tape, only {acked} acknowledged + 1 in flight"
        );
        let mut buf = vec![0u8; 64 * 1024];
        for i in 0..count {
            match c.read_block(&mut buf).unwrap() {
                Read::Filemark => assert_eq!(i % 6, 5, "unexpected filemark at {i}"),
                Read::Block(n) => assert_eq!(&buf[..n], &block(i)[..], "block {i} differs"),
                Read::EndOfData => panic!("end of data at {i}, expected {count} objects"),
            }
        }
        assert_eq!(c.read_block(&mut buf).unwrap(), Read::EndOfData);
        acked = count;
    }
    assert!(acked > 0, "the child never wrote anything");
}
