//! The command line: parsing (clap), dispatch, printing and exit codes only. The work is
//! done by the library modules; every failure is mapped to its documented exit code in
//! [`main`] (see docs/CLI.md).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::error::{Error, ExitCode, Result};
use crate::home::Home;

mod backup_cmd;
mod catalog_cmd;
mod format;
mod key_cmd;
mod library_cmd;
mod media_cmd;
mod output;
mod passphrase;
mod pool_cmd;
mod restore_cmd;
mod rotate_cmd;
mod shared;
mod tape_cmd;
mod terminal;
mod verify_cmd;

pub use format::human_bytes;
pub use output::Output;
pub use terminal::Terminal;

#[derive(Debug, Parser)]
#[command(name = "tapevault", version, about = "Block-level VM disk backups to tape", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// The tapevault home (default: $TAPEVAULT_HOME, else the XDG data dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Read key passphrases from this file (else $TAPEVAULT_PASSPHRASE, else a prompt on
    /// a terminal).
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a tapevault home with a virtual library (or adopt an existing one, or use a
    /// real SCSI library).
    Init(library_cmd::InitArgs),
    /// The tape library: inventory, load/unload, import/export, new cartridges.
    #[command(subcommand)]
    Library(library_cmd::LibraryCommand),
    /// Low-level tape operations with mt's meanings.
    Tape(tape_cmd::TapeArgs),
    /// Pools of cartridges and their policies.
    #[command(subcommand)]
    Pool(pool_cmd::PoolCommand),
    /// Label a cartridge into a pool.
    Label(pool_cmd::LabelArgs),
    /// Cartridges: list, show, export, vault, return, offsite, due, pull-list.
    #[command(subcommand)]
    Media(media_cmd::MediaCommand),
    /// Today's rotation: expire, recycle, and what to remove and insert.
    Rotate(rotate_cmd::RotateArgs),
    /// Back up disks (full, or incremental relative to the last good image).
    Backup(backup_cmd::BackupArgs),
    /// The catalog: rebuild from cartridges, back up onto one, export, check.
    #[command(subcommand)]
    Catalog(catalog_cmd::CatalogCommand),
    /// Record keys: create, list, export, import, change passphrase, recover from escrow.
    #[command(subcommand)]
    Key(key_cmd::KeyCommand),
    /// List images of disks, grouped as chains (full, then its incrementals).
    Images(restore_cmd::ImagesArgs),
    /// Restore a disk at a point in time to a file or block device.
    Restore(restore_cmd::RestoreArgs),
    /// Read back an image or a whole cartridge and check every record.
    Verify(verify_cmd::VerifyArgs),
}

/// Everything a command handler needs.
pub struct Ctx {
    pub global: GlobalArgs,
    pub out: Output,
}

impl Ctx {
    pub fn home_dir(&self) -> PathBuf {
        Home::resolve(self.global.home.as_deref())
    }
    pub fn home(&self) -> Result<Home> {
        Home::open(&self.home_dir())
    }
}

#[derive(Serialize)]
struct JsonError<'a> {
    error: String,
    kind: &'a str,
    exit_code: i32,
}

/// Parse, run, print, and return the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                ExitCode::Usage as i32
            } else {
                0
            };
            let _ = e.print();
            return code;
        }
    };
    let out = Output {
        json: cli.global.json,
    };
    let ctx = Ctx {
        global: cli.global.clone(),
        out,
    };
    match run(&ctx, cli.command) {
        Ok(()) => 0,
        Err(e) => {
            let code = e.exit_code() as i32;
            eprintln!("tapevault: error: {e}");
            if out.json {
                out.emit(
                    &JsonError {
                        error: e.to_string(),
                        kind: e.kind(),
                        exit_code: code,
                    },
                    String::new,
                );
            }
            code
        }
    }
}

fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Init(a) => library_cmd::init(ctx, a),
        Command::Library(c) => library_cmd::library(ctx, c),
        Command::Tape(a) => tape_cmd::tape(ctx, a),
        Command::Pool(c) => pool_cmd::pool(ctx, c),
        Command::Label(a) => pool_cmd::label(ctx, a),
        Command::Media(c) => media_cmd::media(ctx, c),
        Command::Rotate(a) => rotate_cmd::rotate(ctx, a),
        Command::Backup(a) => backup_cmd::backup(ctx, a),
        Command::Catalog(c) => catalog_cmd::catalog(ctx, c),
        Command::Key(c) => key_cmd::key(ctx, c),
        Command::Images(a) => restore_cmd::images(ctx, a),
        Command::Restore(a) => restore_cmd::restore(ctx, a),
        Command::Verify(a) => verify_cmd::verify(ctx, a),
    }
}

/// A usage error (exit 2) with a message.
pub fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Usage(msg.into()))
}
