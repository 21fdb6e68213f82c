//! Crash tests: a real child process appends blocks and filemarks, and now and then goes
//! back and overwrites (which truncates), and is killed with SIGKILL at random moments.
//! The child announces each operation before it starts and when it returned. After each
//! kill the cartridge must hold exactly the effect of the operations that returned, plus
//! possibly the one in flight (for an overwrite: not at all, only its truncation, or
//! whole), with every block intact and nothing partial. The same with a small
//! write-behind window (writeback started and waited for every few blocks) and flushes
//! now and then: everything a flush returned for is there after the kill.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use vtl_sim::{Cartridge, CartridgeMeta, Read, WriteBehind};

const CHILD_DIR: &str = "VTL_SIM_CRASH_CHILD_DIR";
const CHILD_ROUND: &str = "VTL_SIM_CRASH_CHILD_ROUND";
/// Set: the child writes behind in a small window and flushes now and then.
const CHILD_WB: &str = "VTL_SIM_CRASH_CHILD_WB";

/// Block `id`'s contents: its id and length in front, then a pattern from the id.
fn block(id: u64) -> Vec<u8> {
    let len = 16 + ((id * 7919) % 30_000) as usize;
    let mut b = vec![0u8; len];
    b[..8].copy_from_slice(&id.to_le_bytes());
    b[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    for (k, x) in b[16..].iter_mut().enumerate() {
        *x = (id as u8).wrapping_mul(13).wrapping_add(k as u8);
    }
    b
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The child: write forever, announcing "@B KIND POS ID" before and "@D" after each op.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let mut c = Cartridge::open(std::path::Path::new(&dir)).unwrap();
    let wb = std::env::var_os(CHILD_WB).is_some();
    c.set_write_behind(if wb {
        // Blocks are 16 B - 30 KB: writeback starts every few blocks and is waited for
        // a few dozen blocks behind.
        Some(WriteBehind {
            start_every: 64 * 1024,
            dirty_max: 256 * 1024,
        })
    } else {
        None
    });
    c.space_to_eod().unwrap();
    let mut count = c.object_count();
    let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (round + 1);
    let out = std::io::stdout();
    let mut out = out.lock();
    for k in 0.. {
        let id = round * 1_000_000 + k;
        let r = xorshift(&mut rng) % 100;
        let pos = if r < 6 && count > 0 {
            count - 1 - xorshift(&mut rng) % count.min(4)
        } else {
            count
        };
        if pos != count {
            c.locate(pos).unwrap();
        }
        if (6..16).contains(&r) {
            // With write-behind, a third of the filemarks flush ("@F" once durable).
            let flush = wb && r < 9;
            writeln!(out, "@B f {pos} 0").unwrap();
            out.flush().unwrap();
            c.write_filemarks(1, !flush).unwrap();
            if flush {
                writeln!(out, "@D").unwrap();
                writeln!(out, "@F").unwrap();
                out.flush().unwrap();
                count = pos + 1;
                continue;
            }
        } else {
            writeln!(out, "@B b {pos} {id}").unwrap();
            out.flush().unwrap();
            c.write_block(&block(id)).unwrap();
        }
        count = pos + 1;
        writeln!(out, "@D").unwrap();
        out.flush().unwrap();
    }
}

type Obj = Option<u64>; // Some(block id) or None for a filemark

#[test]
fn killed_writer_leaves_exactly_the_completed_operations() {
    kill_rounds(false);
}

#[test]
fn killed_writer_behind_keeps_what_each_flush_promised() {
    kill_rounds(true);
}

fn kill_rounds(write_behind: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("TV0001L9");
    Cartridge::create(&dir, &CartridgeMeta::new("TV0001L9", 1 << 40, 1 << 20)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut state: Vec<Obj> = Vec::new();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut saw_torn = 0;
    let mut flushes = 0usize;
    for round in 0..12u64 {
        let mut cmd = Command::new(&exe);
        if write_behind {
            cmd.env(CHILD_WB, "1");
        }
        let mut child = cmd
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, &dir)
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let start = state.clone();
        let reader = std::thread::spawn(move || {
            let mut s = start;
            let mut pending: Option<(usize, Obj)> = None;
            // What the last flush made durable.
            let mut flushed: Option<Vec<Obj>> = None;
            let mut flushes = 0usize;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness prints "test ... " without a newline before our first line.
                let Some(at) = line.find('@') else { continue };
                let w: Vec<&str> = line[at + 1..].split_whitespace().collect();
                match w.as_slice() {
                    ["B", kind, pos, id] => {
                        let obj = if *kind == "f" {
                            None
                        } else {
                            Some(id.parse().unwrap())
                        };
                        pending = Some((pos.parse().unwrap(), obj));
                    }
                    ["D"] => {
                        let (pos, obj) = pending.take().expect("D without B");
                        s.truncate(pos);
                        s.push(obj);
                        // Overwriting discards what a flush made durable, as asked.
                        if let Some(f) = flushed.as_mut() {
                            f.truncate(pos);
                        }
                    }
                    ["F"] => {
                        flushed = Some(s.clone());
                        flushes += 1;
                    }
                    _ => {}
                }
            }
            (s, pending, flushed, flushes)
        });
        std::thread::sleep(Duration::from_micros(10_000 + xorshift(&mut seed) % 60_000));
        child.kill().unwrap();
        child.wait().unwrap();
        let (acked, pending, flushed, n) = reader.join().unwrap();
        flushes += n;

        let mut c = Cartridge::open(&dir).unwrap();
        let mut got: Vec<Obj> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match c.read_block(&mut buf).unwrap() {
                Read::Filemark => got.push(None),
                Read::Block(n) => {
                    let id = u64::from_le_bytes(buf[..8].try_into().unwrap());
                    assert_eq!(
                        &buf[..n],
                        &block(id)[..],
                        "round {round}: block {} is not intact",
                        got.len()
                    );
                    got.push(Some(id));
                }
                Read::EndOfData => break,
            }
        }
        let mut allowed = vec![acked.clone()];
        if let Some((pos, obj)) = pending {
            let mut cut = acked.clone();
            cut.truncate(pos);
            allowed.push(cut.clone());
            cut.push(obj);
            allowed.push(cut);
        }
        assert!(
            allowed.contains(&got),
            "round {round}: tape holds {} objects {:?}..., expected one of {:?} (lengths)",
            got.len(),
            got.iter().rev().take(4).collect::<Vec<_>>(),
            allowed.iter().map(|a| a.len()).collect::<Vec<_>>()
        );
        if let Some(mut f) = flushed {
            // Said again on its own: the flush's promise (implied by the check above,
            // as a flush returns only after everything before it), less what later
            // overwrites (the one in flight included) discarded.
            if let Some((pos, _)) = pending {
                f.truncate(pos);
            }
            assert!(
                got.len() >= f.len() && got[..f.len()] == f[..],
                "round {round}: the last flush made {} objects durable; the tape holds {}",
                f.len(),
                got.len()
            );
        }
        if got != acked {
            saw_torn += 1;
        }
        eprintln!(
            "round {round}: {} objects, pending {:?}",
            got.len(),
            pending
        );
        state = got;
    }
    assert!(
        state.len() > 10,
        "the child wrote almost nothing ({} objects)",
        state.len()
    );
    if write_behind {
        assert!(flushes > 0, "the child never flushed");
    }
    // Informational: how often the in-flight operation had (partly) happened.
    eprintln!("in-flight operation visible after {saw_torn} of 12 kills");
}
