//! Streaming benchmark of a virtual drive (not a test): write a stream of fixed-size
//! blocks, read it back, and time random LOCATEs on the full cartridge.
//!
//! Usage: vtl_stream write|read|locate DIR [TOTAL_BYTES] [BLOCK_BYTES]
//! `write` creates a one-cartridge library in DIR (which must not hold one), writes
//! TOTAL_BYTES in BLOCK_BYTES blocks and a filemark with flush (fsync), as `dd
//! conv=fsync` does. `read` reads the stream back. `locate` times random locates (and a
//! locate + read of the block) over the written cartridge. Prints one JSON line per run.
//!
//! It drives `vtl_sim::Drive`, the object tapevault's `VirtualDrive` forwards every call
//! to (the adapter adds only an enum mapping per call).

use std::path::Path;
use std::time::Instant;

use vtl_sim::{Library, LibraryConfig, Read};

fn main() {
    if let Err(e) = run() {
        eprintln!("vtl_stream: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: vtl_stream write|read|locate DIR [TOTAL_BYTES] [BLOCK_BYTES]".into());
    }
    let dir = Path::new(&args[2]);
    let total: u64 = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2 << 30);
    let bs: usize = args
        .get(4)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(256 << 10);
    let blocks = total / bs as u64;
    match args[1].as_str() {
        "write" => {
            let cfg = LibraryConfig {
                slots: 1,
                drives: 1,
                mail_slots: 0,
                cartridges: 1,
                capacity: total + (total / 4).max(1 << 20),
                early_warning: 1 << 20,
            };
            let lib = Library::create(dir, &cfg)?;
            lib.load("TV0001L9", 0)?;
            let mut d = lib.open_drive(0)?;
            let mut buf = vec![0u8; bs];
            // Incompressible-looking contents, generated once (no per-block allocation).
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
            }
            let t = Instant::now();
            for i in 0..blocks {
                buf[..8].copy_from_slice(&i.to_le_bytes());
                d.write_block(&buf)?;
            }
            d.write_filemarks(1, false)?;
            report("write", blocks * bs as u64, t.elapsed().as_secs_f64());
        }
        "read" => {
            let lib = Library::open(dir)?;
            let mut d = lib.open_drive(0)?;
            d.rewind()?;
            let mut buf = vec![0u8; bs];
            let mut bytes = 0u64;
            let t = Instant::now();
            loop {
                match d.read_block(&mut buf)? {
                    Read::Block(n) => bytes += n as u64,
                    Read::Filemark => break,
                    Read::EndOfData => return Err("end of data before the filemark".into()),
                }
            }
            report("read", bytes, t.elapsed().as_secs_f64());
        }
        "locate" => {
            let lib = Library::open(dir)?;
            let mut d = lib.open_drive(0)?;
            d.space_to_eod()?;
            let n = d.position()?.block.saturating_sub(1).max(1);
            let iters = 10_000u64;
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            let mut lat = Vec::with_capacity(iters as usize);
            for _ in 0..iters {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let target = x % n;
                let t = Instant::now();
                d.locate(target)?;
                let p = d.position()?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                if p.block != target {
                    return Err(format!("locate to {target} ended at {}", p.block).into());
                }
            }
            lat.sort_by(|a, b| a.total_cmp(b));
            // Locate followed by reading the 8 first bytes of the block (cold index cache).
            let mut buf = vec![0u8; bs];
            let mut lat_read = Vec::with_capacity(1000);
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let target = x % n;
                let t = Instant::now();
                d.locate(target)?;
                d.read_block(&mut buf)?;
                lat_read.push(t.elapsed().as_secs_f64() * 1e6);
                if buf[..8] != target.to_le_bytes() {
                    return Err(format!("block {target} holds the wrong contents").into());
                }
            }
            lat_read.sort_by(|a, b| a.total_cmp(b));
            let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p) as usize];
            println!(
                "{{\"op\":\"locate\",\"objects\":{n},\"iterations\":{iters},\"median_us\":{:.2},\"p99_us\":{:.2},\"max_us\":{:.2},\"locate_read_median_us\":{:.1},\"locate_read_p99_us\":{:.1}}}",
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                lat[lat.len() - 1],
                pct(&lat_read, 0.5),
                pct(&lat_read, 0.99)
            );
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    Ok(())
}

fn report(op: &str, bytes: u64, secs: f64) {
    println!(
        "{{\"op\":\"{op}\",\"bytes\":{bytes},\"seconds\":{secs:.3},\"mb_per_s\":{:.1}}}",
        bytes as f64 / secs / 1e6
    );
}
