//! Drives StDrive and ScsiLibrary through the TapeDrive/Changer traits on the real st,
//! ch and sg drivers (used by tests/real-tape inside its QEMU guest).
//!
//! usage: st_smoke CHANGER_SG NST0 NST1
//! env:   RT_TARGET    `tgt` (default) or `tapevault`: what the device under test is, for
//!                     the checks whose answer differs (block limits, READ POSITION,
//!                     hardware encryption)
//!        RT_BARCODES  the barcodes in storage-slot order, the seventh a small
//!                     cartridge (default: the tgt harness's TV0001L6 ... TV0009L6)
//! Prints `RT-PASS name` / `RT-FAIL name: detail` lines; exit status 1 on any failure.
//! DESTROYS the data on the cartridges it loads.

use std::path::PathBuf;
use std::process::ExitCode;

use tape_devices::changer::scsi::ScsiLibrary;
use tape_devices::changer::{ChangerError, ElementRef, TapeLibrary};
use tape_devices::drive::st::StDrive;
use tape_devices::drive::{DriveError, Position, ReadOutcome, SpaceStop, TapeDrive, WriteOutcome};

struct T {
    failed: bool,
    /// Prefix of every check name: `smoke` against tgt, `tapevault smoke` against ours.
    prefix: String,
}

impl T {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Debug) {
        if ok {
            println!("RT-PASS {} {name}", self.prefix);
        } else {
            println!("RT-FAIL {} {name}: {detail:?}", self.prefix);
            self.failed = true;
        }
    }
}

fn pos(b: u64, f: u64, i: u64) -> Position {
    Position {
        block: b,
        file: f,
        block_in_file: i,
    }
}

fn block(seq: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect();
    v[..4].copy_from_slice(&seq.to_be_bytes());
    v
}

fn stopped(r: Result<(), DriveError>, stop: SpaceStop, residual: u64) -> bool {
    matches!(r, Err(DriveError::SpaceStopped { stop: s, residual: n, .. }) if s == stop && n == residual)
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if args.len() != 3 {
        eprintln!("usage: st_smoke CHANGER_SG NST0 NST1");
        return ExitCode::from(2);
    }
    let ours = std::env::var("RT_TARGET").is_ok_and(|t| t == "tapevault");
    let barcodes: Vec<String> = std::env::var("RT_BARCODES")
        .unwrap_or_else(|_| "TV0001L6 TV0002L6 TV0003L6 TV0004L6 TV0005L6 TV0006L6 TV0009L6".into())
        .split_whitespace()
        .map(String::from)
        .collect();
    if barcodes.len() < 7 {
        eprintln!("RT_BARCODES must name at least seven barcodes, not {barcodes:?}");
        return ExitCode::from(2);
    }
    let mut t = T {
        failed: false,
        prefix: if ours { "tapevault smoke" } else { "smoke" }.into(),
    };
    if let Err(e) = run(&mut t, &args, ours, &barcodes) {
        t.check("run", false, e);
    }
    if t.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `ours`: the device is tapevault's own target (READ POSITION, LOCATE, hardware
/// encryption, block limits 1 - 16 MiB), else tgt (none of them, 4 - 1 MiB).
/// `bc`: the barcodes in slot order; slot 2 is loaded first, slot 5 exported, slot 6
/// (the small one) filled to early warning.
fn run(
    t: &mut T,
    a: &[PathBuf],
    ours: bool,
    bc: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    let (first, exported, small) = (bc[2].as_str(), bc[5].as_str(), bc[6].as_str());
    let mut lib = ScsiLibrary::open(&a[0], &a[1..])?;
    let inv = lib.changer().inventory()?;
    t.check(
        "inventory",
        inv.drives.len() == 2 && inv.find(first).is_some(),
        &inv,
    );
    lib.changer().load(first, 0)?;
    let inv = lib.changer().inventory()?;
    t.check(
        "load",
        inv.drives[0].barcode.as_deref() == Some(first)
            && inv.drives[0].source == Some(ElementRef::slot(2)),
        &inv.drives,
    );
    t.check(
        "load-busy-refused",
        matches!(
            lib.changer()
                .move_medium(ElementRef::slot(0), ElementRef::drive(0)),
            Err(ChangerError::DestinationFull { .. })
        ),
        "",
    );

    let sizes = [1000usize, 65536, 4, 70000, 512];
    {
        let mut d = lib.open_drive(0)?;
        let caps = d.capabilities()?;
        println!("RT-INFO capabilities {}", serde_json::to_string(&caps)?);
        t.check(
            "caps-block-limits",
            if ours {
                caps.max_block_size >= 1 << 20 && caps.min_block_size == 1
            } else {
                caps.max_block_size == 1 << 20 && caps.min_block_size == 4
            },
            &caps,
        );
        // tgt has neither (its READ POSITION is a stub, LOCATE unknown): the software
        // position and the fallbacks are what the checks below exercise there.
        t.check(
            "caps-position-locate",
            (caps.read_position && caps.locate) == ours,
            &caps,
        );
        d.rewind()?;
        for (i, &n) in sizes[..3].iter().enumerate() {
            t.check(
                &format!("write-{i}"),
                d.write_block(&block(i as u32, n))? == WriteOutcome::Written,
                "",
            );
        }
        d.write_filemarks(1, true)?;
        d.write_block(&block(3, sizes[3]))?;
        d.write_block(&block(4, sizes[4]))?;
        d.write_filemarks(1, false)?;
        t.check(
            "position-after-writes",
            d.position()? == pos(7, 2, 0),
            d.position(),
        );

        d.rewind()?;
        let mut big = vec![0u8; 1 << 20];
        let r = d.read_block(&mut big)?;
        t.check(
            "read-0",
            r == ReadOutcome::Block(1000) && big[..1000] == block(0, 1000)[..],
            r,
        );
        let mut small = vec![0u8; 100];
        let r = d.read_block(&mut small);
        t.check(
            "read-too-small",
            matches!(
                r,
                Err(DriveError::BufferTooSmall {
                    block_len: 65536,
                    buffer_len: 100
                })
            ),
            &r,
        );
        t.check(
            "too-small-keeps-position",
            d.position()? == pos(1, 0, 1),
            d.position(),
        );
        let r = d.read_block(&mut big)?;
        t.check(
            "read-1",
            r == ReadOutcome::Block(65536) && big[..65536] == block(1, 65536)[..],
            r,
        );
        let r = d.read_block(&mut big)?;
        t.check("read-2-min-size", r == ReadOutcome::Block(4), r);
        let r = d.read_block(&mut big)?;
        t.check(
            "read-filemark",
            r == ReadOutcome::Filemark && d.position()? == pos(4, 1, 0),
            r,
        );
        d.read_block(&mut big)?;
        d.read_block(&mut big)?;
        let r = d.read_block(&mut big)?;
        t.check("read-filemark-2", r == ReadOutcome::Filemark, r);
        let r = d.read_block(&mut big)?;
        t.check(
            "read-eod",
            r == ReadOutcome::EndOfData && d.position()? == pos(7, 2, 0),
            r,
        );
        let r = d.read_block(&mut big)?;
        t.check("read-eod-again", r == ReadOutcome::EndOfData, r);

        d.rewind()?;
        let r = d.space_blocks(5);
        t.check(
            "fsr-stops-at-filemark",
            stopped(r, SpaceStop::Filemark, 2) && d.position()? == pos(4, 1, 0),
            d.position(),
        );
        let r = d.space_blocks(-1);
        t.check(
            "bsr-stops-at-filemark",
            stopped(r, SpaceStop::Filemark, 1) && d.position()? == pos(3, 0, 3),
            d.position(),
        );
        d.space_blocks(-2)?;
        t.check(
            "bsr-within-file",
            d.position()? == pos(1, 0, 1),
            d.position(),
        );
        let r = d.read_block(&mut big)?;
        t.check("read-after-bsr", r == ReadOutcome::Block(65536), r);
        d.space_filemarks(1)?;
        t.check("fsf", d.position()? == pos(4, 1, 0), d.position());
        let r = d.space_filemarks(5);
        t.check(
            "fsf-stops-at-eod",
            stopped(r, SpaceStop::EndOfData, 4) && d.position()? == pos(7, 2, 0),
            d.position(),
        );
        d.space_filemarks(-1)?;
        t.check("bsf", d.position()? == pos(6, 1, 2), d.position());
        let r = d.read_block(&mut big)?;
        t.check(
            "read-after-bsf",
            r == ReadOutcome::Filemark && d.position()? == pos(7, 2, 0),
            r,
        );
        d.space_blocks(-1).ok();
        d.space_blocks(-1)?;
        let r = d.read_block(&mut big)?;
        t.check(
            "read-after-bsr-over-filemark",
            r == ReadOutcome::Block(512),
            r,
        );
        let r = d.space_filemarks(-5);
        t.check(
            "bsf-stops-at-bot",
            stopped(r, SpaceStop::BeginningOfTape, 4) && d.position()? == pos(0, 0, 0),
            d.position(),
        );
        d.locate(5)?;
        let r = d.read_block(&mut big)?;
        t.check(
            "locate",
            r == ReadOutcome::Block(512) && big[..4] == 4u32.to_be_bytes(),
            r,
        );
        t.check(
            "locate-beyond-eod",
            matches!(d.locate(9), Err(DriveError::BeyondEndOfData { .. })),
            "",
        );
        let st = d.status()?;
        println!("RT-INFO status {}", serde_json::to_string(&st)?);
        t.check("status", st.loaded && !st.write_protected, &st);
    }
    {
        // A fresh process knows nothing of the tape: space to EOD must count its way.
        let mut d = StDrive::open(&a[1])?;
        d.rewind()?;
        d.space_to_eod()?;
        t.check("eod-fresh", d.position()? == pos(7, 2, 0), d.position());
        d.write_block(&block(7, 3000))?;
        d.write_filemarks(1, false)?;
        t.check("append", d.position()? == pos(9, 3, 0), d.position());
        let e = d.hardware_encryption_supported();
        println!(
            "RT-INFO hardware encryption: {:?}",
            e.as_ref().map(|_| "supported").map_err(|e| e.to_string())
        );
        if ours {
            t.check(
                "hw-encryption-offered",
                e.is_ok(),
                e.err().map(|e| e.to_string()),
            );
        } else {
            t.check(
                "no-hw-encryption-on-tgt",
                e.as_ref()
                    .is_err_and(|e| e.to_string().contains("does not offer hardware encryption")),
                e.err().map(|e| e.to_string()),
            );
        }
    }
    {
        let mut d = StDrive::open(&a[1])?;
        d.rewind()?;
        d.space_filemarks(1)?;
        drop(d);
        // st keeps its file/block counters across opens; position() finds the logical number.
        let mut d = StDrive::open(&a[1])?;
        t.check(
            "position-fresh",
            d.position()? == pos(4, 1, 0),
            d.position(),
        );
        d.locate(7)?;
        let mut big = vec![0u8; 1 << 20];
        let r = d.read_block(&mut big)?;
        t.check("locate-fresh", r == ReadOutcome::Block(3000), r);
    }
    // Early warning / end of medium: a small cartridge filled in drive 1.
    lib.changer().load(small, 1)?;
    {
        let mut d = lib.open_drive(1)?;
        d.rewind()?;
        let blk = block(9, 1 << 20);
        let mut outcomes = Vec::new();
        for _ in 0..100 {
            match d.write_block(&blk) {
                Ok(WriteOutcome::Written) if outcomes.is_empty() => {}
                Ok(WriteOutcome::Written) => outcomes.push("trailer".to_string()),
                Ok(WriteOutcome::WrittenEarlyWarning) => outcomes.push("ew".to_string()),
                Err(DriveError::EarlyWarning) => outcomes.push("refused".to_string()),
                Err(DriveError::EndOfMedium) => {
                    outcomes.push("eom".to_string());
                    break;
                }
                Err(e) => {
                    outcomes.push(e.to_string());
                    break;
                }
            }
        }
        println!("RT-INFO early warning sequence {outcomes:?}");
        let ok = outcomes.first().map(String::as_str) == Some("ew")
            && outcomes.get(1).map(String::as_str) == Some("refused")
            && outcomes[2..].iter().all(|o| o == "trailer" || o == "eom");
        t.check("early-warning-contract", ok, &outcomes);
    }
    let home = lib.changer().unload(1)?;
    t.check("unload-home", home == Some(ElementRef::slot(6)), home);
    let home = lib.changer().unload(0)?;
    t.check("unload-home-0", home == Some(ElementRef::slot(2)), home);
    let m = lib.changer().export(exported)?;
    t.check("export", m == ElementRef::mail_slot(0), m);
    let imported = lib.changer().import()?;
    t.check("import", imported == vec![exported.to_string()], &imported);
    Ok(())
}
