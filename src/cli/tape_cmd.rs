//! `tapevault tape ...`: mt-like low-level operations on one drive, the drive probe and
//! the btape-style conformance suite.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{usage, Ctx};
use crate::error::{Context, Error, Result};
use tape_devices::drive::conformance::{self, ConformanceOptions};
use tape_devices::drive::{ReadOutcome, TapeDrive, MAX_BLOCK_SIZE};

#[derive(Debug, Args)]
pub struct TapeArgs {
    /// Drive number in the configured library.
    #[arg(long, conflicts_with = "device")]
    pub drive: Option<usize>,
    /// A non-rewinding st device (e.g. /dev/nst0), used directly without a library.
    #[arg(long, value_name = "DEV")]
    pub device: Option<PathBuf>,
    #[command(subcommand)]
    pub op: TapeOp,
}

#[derive(Debug, Subcommand)]
pub enum TapeOp {
    /// Drive and cartridge status, position.
    Status,
    Rewind,
    /// Space forward over N filemarks (to the start of the file after the N-th).
    Fsf {
        count: u64,
    },
    /// Space backward over N filemarks (to the BOT side of the N-th).
    Bsf {
        count: u64,
    },
    /// Space forward over N blocks.
    Fsr {
        count: u64,
    },
    /// Space backward over N blocks.
    Bsr {
        count: u64,
    },
    /// Space to end of data.
    Eod,
    /// Write N filemarks at the current position.
    Weof {
        #[arg(default_value_t = 1)]
        count: u32,
    },
    /// Print the logical block position.
    Tell,
    /// Locate to a logical block.
    Seek {
        block: u64,
    },
    /// Read the next blocks of the current tape file and describe them (or copy them to
    /// --out), stopping at a filemark or end of data.
    Read {
        /// Stop after this many blocks.
        #[arg(long)]
        count: Option<u64>,
        /// Write the blocks' bytes to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Report what the drive supports (READ POSITION, LOCATE, early warning, block limits).
    Probe,
    /// Run the btape-style conformance suite. It OVERWRITES the loaded cartridge.
    Conformance {
        /// Confirm that the cartridge's contents may be destroyed.
        #[arg(long)]
        destroy_data: bool,
        /// Also fill the cartridge to the end of medium (long on real tapes).
        #[arg(long)]
        fill: bool,
        /// Blocks per file in the positioning checks.
        #[arg(long, default_value_t = 1000)]
        blocks: u64,
        /// Size of each block written by the checks.
        #[arg(long, value_parser = crate::home::parse_size, default_value = "64K")]
        block_size: u64,
    },
}

fn open_drive(ctx: &Ctx, a: &TapeArgs) -> Result<Box<dyn TapeDrive>> {
    if let Some(dev) = &a.device {
        return Ok(Box::new(
            tape_devices::drive::st::StDrive::open(dev)
                .with_context(|| format!("opening {}", dev.display()))?,
        ));
    }
    let home = ctx.home()?;
    let mut lib = home.open_library()?;
    let n = a.drive.unwrap_or(0);
    if n >= lib.drive_count() {
        return usage(format!(
            "drive {n} does not exist (the library has {})",
            lib.drive_count()
        ));
    }
    lib.open_drive(n)
        .with_context(|| format!("opening drive {n}"))
}

#[derive(Serialize)]
struct BlockInfo {
    block: Option<u64>,
    length: usize,
    kind: String,
}

pub fn tape(ctx: &Ctx, a: TapeArgs) -> Result<()> {
    let mut drive = open_drive(ctx, &a)?;
    let name = drive.name();
    let d = drive.as_mut();
    let out = &ctx.out;
    match a.op {
        TapeOp::Status => {
            let st = d.status()?;
            out.emit(&st, || {
                let mut flags = Vec::new();
                for (on, f) in [
                    (st.loaded, "ONLINE"),
                    (st.bot, "BOT"),
                    (st.eod, "EOD"),
                    (st.at_filemark, "EOF"),
                    (st.early_warning, "EW"),
                    (st.write_protected, "WR_PROT"),
                    (st.worm, "WORM"),
                ] {
                    if on {
                        flags.push(f);
                    }
                }
                let pos = match st.position {
                    Some(p) => format!(
                        "file {} block {} (logical block {})",
                        p.file, p.block_in_file, p.block
                    ),
                    None => "unknown".into(),
                };
                format!(
                    "{name}: {}\ncartridge: {}\nposition: {pos}\nflags: {}",
                    if st.loaded { "loaded" } else { "no cartridge" },
                    st.barcode.as_deref().unwrap_or("-"),
                    flags.join(" ")
                )
            });
        }
        TapeOp::Rewind => {
            d.rewind()?;
            done(ctx, d, "rewound")?;
        }
        TapeOp::Fsf { count } => {
            d.space_filemarks(count as i64)?;
            done(ctx, d, "spaced forward")?;
        }
        TapeOp::Bsf { count } => {
            d.space_filemarks(-(count as i64))?;
            done(ctx, d, "spaced backward")?;
        }
        TapeOp::Fsr { count } => {
            d.space_blocks(count as i64)?;
            done(ctx, d, "spaced forward")?;
        }
        TapeOp::Bsr { count } => {
            d.space_blocks(-(count as i64))?;
            done(ctx, d, "spaced backward")?;
        }
        TapeOp::Eod => {
            d.space_to_eod()?;
            done(ctx, d, "at end of data")?;
        }
        TapeOp::Weof { count } => {
            d.write_filemarks(count, false)?;
            done(ctx, d, "wrote filemarks")?;
        }
        TapeOp::Tell => {
            let p = d.position()?;
            out.emit(&serde_json::json!({ "position": p }), || {
                format!("At block {}.", p.block)
            });
        }
        TapeOp::Seek { block } => {
            d.locate(block)?;
            done(ctx, d, "located")?;
        }
        TapeOp::Read { count, out: path } => {
            let mut file = match &path {
                Some(p) => Some(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                ),
                None => None,
            };
            let limit = d.max_block_size().min(MAX_BLOCK_SIZE);
            let mut buf = vec![0u8; limit];
            let mut blocks = Vec::new();
            loop {
                if count.is_some_and(|c| blocks.len() as u64 >= c) {
                    break;
                }
                let pos = d.position().ok().map(|p| p.block);
                match d.read_block(&mut buf)? {
                    ReadOutcome::Block(n) => {
                        if let Some(f) = file.as_mut() {
                            f.write_all(&buf[..n])?;
                        }
                        blocks.push(BlockInfo {
                            block: pos,
                            length: n,
                            kind: describe_block(&buf[..n]),
                        });
                    }
                    ReadOutcome::Filemark => {
                        blocks.push(BlockInfo {
                            block: pos,
                            length: 0,
                            kind: "filemark".into(),
                        });
                        break;
                    }
                    ReadOutcome::EndOfData => {
                        blocks.push(BlockInfo {
                            block: pos,
                            length: 0,
                            kind: "end of data".into(),
                        });
                        break;
                    }
                }
            }
            out.emit_list("blocks", &blocks, || {
                blocks
                    .iter()
                    .map(|b| {
                        let at = b.block.map(|x| x.to_string()).unwrap_or_else(|| "?".into());
                        format!("block {at}: {} bytes, {}\n", b.length, b.kind)
                    })
                    .collect()
            });
        }
        TapeOp::Probe => {
            let caps = d.capabilities()?;
            out.emit(&caps, || {
                format!(
                    "{name}\nREAD POSITION: {}\nLOCATE: {}\nearly warning: {}\nhardware encryption: {}\nblock limits: {} - {} bytes",
                    yes(caps.read_position),
                    yes(caps.locate),
                    yes(caps.early_warning),
                    yes(caps.hardware_encryption),
                    caps.min_block_size,
                    caps.max_block_size
                )
            });
        }
        TapeOp::Conformance {
            destroy_data,
            fill,
            blocks,
            block_size,
        } => {
            if !destroy_data {
                return usage(
                    "the conformance suite overwrites the cartridge: add --destroy-data to confirm",
                );
            }
            let opts = ConformanceOptions {
                blocks_per_file: blocks,
                block_size: block_size as usize,
                fill,
                ..Default::default()
            };
            let results = conformance::run(d, &opts);
            let failed = results.iter().filter(|r| !r.passed).count();
            out.emit_list("results", &results, || {
                let mut s: String = results
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {}: {}\n",
                            if r.passed { "PASS" } else { "FAIL" },
                            r.name,
                            r.message
                        )
                    })
                    .collect();
                s.push_str(&format!(
                    "{} passed, {} failed\n",
                    results.len() - failed,
                    failed
                ));
                s
            });
            if failed > 0 {
                return Err(Error::Failed(format!(
                    "{failed} conformance check(s) failed on {name}"
                )));
            }
        }
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn done(ctx: &Ctx, d: &mut dyn TapeDrive, what: &str) -> Result<()> {
    let p = d.position().ok();
    ctx.out.emit(
        &serde_json::json!({"ok": true, "position": p}),
        || match p {
            Some(p) => format!(
                "{what}: file {} block {} (logical block {})",
                p.file, p.block_in_file, p.block
            ),
            None => what.to_string(),
        },
    );
    Ok(())
}

/// What a block is, as far as tapevault's format can tell.
fn describe_block(b: &[u8]) -> String {
    describe(b)
}

fn describe(b: &[u8]) -> String {
    use tape_formats::Block;
    match tape_formats::decode_block(b) {
        Ok(Block::VolumeLabel(l)) => {
            format!("tapevault volume label {} pool {}", l.barcode, l.pool_name)
        }
        Ok(Block::ImageHeader(h)) => format!(
            "tapevault image header {} part {}",
            uuid::Uuid::from_bytes(h.image_uuid),
            h.part
        ),
        Ok(Block::Data(d)) => format!(
            "tapevault data record {} of image {}",
            d.fields.sequence,
            uuid::Uuid::from_bytes(d.fields.image_uuid)
        ),
        Ok(other) => format!("tapevault {}", other.kind_name()),
        Err(_) => "not a tapevault record".into(),
    }
}
