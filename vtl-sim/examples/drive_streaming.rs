//! Drive streaming benchmark (not a test): feed a modelled virtual drive from a source
//! that delivers at most RATE bytes per second, in real time, and report how much of
//! the run the drive spent repositioning.
//!
//! Usage: drive_streaming DIR RATE_MB_PER_S [TOTAL_MIB] [MODEL_SPEC] [BLOCK_KIB]
//! Creates a one-cartridge library in DIR (which must not hold one), gives its drive
//! MODEL_SPEC (default `speed=200M,min=70M,buffer=64Mi,reposition=2.5s`), writes
//! TOTAL_MIB (default 512) in BLOCK_KIB blocks (default 256) as a source at RATE would
//! deliver them (block i is ready at i * block / RATE; a source the drive held back has
//! at most one block ready, as a reader thread with one block of read-ahead), then a
//! synchronous filemark. Prints one JSON line with the drive's statistics.

use std::path::Path;
use std::time::{Duration, Instant};

use vtl_sim::{DriveModel, Library, LibraryConfig};

fn main() {
    if let Err(e) = run() {
        eprintln!("drive_streaming: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err(
            "usage: drive_streaming DIR RATE_MB_PER_S [TOTAL_MIB] [MODEL_SPEC] [BLOCK_KIB]".into(),
        );
    }
    let dir = Path::new(&args[1]);
    let rate: f64 = args[2].parse::<f64>()? * 1e6;
    let total: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(512) << 20;
    let model: DriveModel = args
        .get(4)
        .map(String::as_str)
        .unwrap_or("speed=200M,min=70M,buffer=64Mi,reposition=2.5s")
        .parse()?;
    let bs: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(256) << 10;
    if !rate.is_finite() || rate <= 0.0 || bs == 0 {
        return Err("RATE and BLOCK_KIB must be more than 0".into());
    }
    let lib = Library::create(
        dir,
        &LibraryConfig {
            slots: 1,
            drives: 1,
            mail_slots: 0,
            cartridges: 1,
            capacity: total + (total / 4).max(1 << 20),
            early_warning: 1 << 20,
        },
    )?;
    lib.set_drive_model(Some(0), Some(model.clone()))?;
    lib.load("TV0001L9", 0)?;
    let mut d = lib.open_drive(0)?;
    let mut buf = vec![0u8; bs];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let per_block = Duration::from_secs_f64(bs as f64 / rate);
    let t = Instant::now();
    let mut ready = t;
    let mut sent = 0u64;
    while sent < total {
        // The source works one block ahead of the writer (a reader thread with one
        // block of read-ahead): it keeps its schedule while the writer keeps up, and
        // when the drive held the writer back, it has at most one block ready.
        ready = ready.max(Instant::now() - per_block) + per_block;
        let now = Instant::now();
        if ready > now {
            std::thread::sleep(ready - now);
        }
        let n = bs.min((total - sent) as usize);
        d.write_block(&buf[..n])?;
        sent += n as u64;
    }
    d.write_filemarks(1, false)?;
    let secs = t.elapsed().as_secs_f64();
    let st = d.drive_stats()?;
    println!(
        "{{\"model\":\"{model}\",\"source_mb_s\":{:.1},\"bytes\":{sent},\"seconds\":{secs:.3},\"mb_s\":{:.1},\"repositions\":{},\"underruns\":{},\"repositioning_s\":{:.3},\"streaming_s\":{:.3},\"host_wait_s\":{:.3},\"fed_mb_s\":{:.1},\"repositioning_fraction\":{:.3}}}",
        rate / 1e6,
        sent as f64 / secs / 1e6,
        st.repositions,
        st.buffer_underruns,
        st.repositioning_time().as_secs_f64(),
        st.streaming_time().as_secs_f64(),
        st.host_wait_time().as_secs_f64(),
        // What the source delivered while the drive was not holding it back.
        sent as f64 / (secs - st.host_wait_time().as_secs_f64()).max(1e-9) / 1e6,
        st.repositioning_time().as_secs_f64() / secs,
    );
    Ok(())
}
