//! The command line: parsing (clap), dispatch, printing and exit codes only. The work is
//! done by the library modules; every failure is mapped to its documented exit code in
//! [`main`] (see docs/CLI.md).

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

use crate::error::{Error, ExitCode, Result};
use crate::home::Home;

mod backup_cmd;
mod catalog_cmd;
mod copy_cmd;
mod format;
mod generate_cmd;
mod hook;
mod job;
mod json;
mod key_cmd;
mod library_cmd;
mod manifest_cmd;
mod media_cmd;
mod output;
mod passphrase;
mod pool_cmd;
mod restore_cmd;
mod rotate_cmd;
mod shared;
mod status_cmd;
mod synthetic_cmd;
mod tape_cmd;
mod terminal;
mod verify_cmd;
mod vm_cmd;

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
    /// VM manifests: write one with fresh disk UUIDs, check one.
    #[command(subcommand)]
    Manifest(manifest_cmd::ManifestCommand),
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
    /// Copy restore points into another pool, tape to tape (offsite copies).
    Copy(copy_cmd::CopyArgs),
    /// Read back an image or a whole cartridge and check every record.
    Verify(verify_cmd::VerifyArgs),
    /// The job history: what ran, its result, bytes, duration, cartridges, error.
    ///
    /// Every backup, restore, verify, copy, catalog rebuild, catalog backup, label,
    /// rotation run and erase is recorded in the catalog when it starts and when it
    /// ends, whatever way it ends; a job whose process was killed reads as failed
    /// (interrupted). Results: ok, failed, partial (it failed after doing part of its
    /// work), running. The history is this home's: it is not on tape and does not come
    /// back with `catalog rebuild` (the rebuild itself is recorded in the new catalog).
    Jobs(status_cmd::JobsArgs),
    /// What needs attention now: drives, running jobs, the last good backup of every
    /// disk, pools short of media, cartridges due offsite or back, images that cannot
    /// be restored, failed jobs.
    ///
    /// Exit 0 whenever the overview could be made, whatever it shows: scripts read
    /// `needs_attention` (`--json`), a list that is empty when nothing needs a person.
    Status,
    /// A running VM: list its disks as a --qmp or --libvirt backup takes them.
    #[command(subcommand)]
    Vm(vm_cmd::VmCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(generate_cmd::CompletionsArgs),
    /// Print the man page tapevault(1), or write every command's page with --out-dir.
    Man(generate_cmd::ManArgs),
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
    /// `--pool NAME`, else `default_pool` from config.toml, else a usage error.
    pub fn pool_or_default(&self, pool: Option<String>) -> Result<String> {
        if let Some(p) = pool {
            return Ok(p);
        }
        match self.home().ok().and_then(|h| h.config.default_pool) {
            Some(p) => Ok(p),
            None => usage(
                "no pool given: pass --pool NAME, or set default_pool = \"NAME\" in the home's config.toml",
            ),
        }
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
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return parse_error(e),
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return parse_error(e),
    };
    let job = command_path(&matches);
    json::set_command(&job);
    apply_config_defaults(&mut cli.global, &job);
    let out = Output {
        json: cli.global.json,
    };
    let ctx = Ctx {
        global: cli.global.clone(),
        out,
    };
    if let Some(kind) = job::kind_of(&job) {
        job::begin(
            &ctx.home_dir(),
            crate::catalog::JobStart {
                kind: Some(kind),
                command: job.clone(),
                pool: leaf_string(&matches, "pool"),
                ..Default::default()
            },
        );
    }
    match run(&ctx, cli.command) {
        Ok(()) => {
            job::finish(0, None);
            0
        }
        Err(e) => {
            let code = e.exit_code() as i32;
            eprintln!("tapevault: error: {e}");
            let doc = JsonError {
                error: e.to_string(),
                kind: e.kind(),
                exit_code: code,
            };
            if out.json {
                out.emit(&doc, String::new);
            }
            job::finish(code, serde_json::to_value(&doc).ok().map(json::document));
            code
        }
    }
}

/// Arguments clap refused: its text on stderr, exit 2; under `--json` also the JSON
/// error document on stdout, as for every other usage error. `--help` and `--version`
/// print as usual and exit 0.
fn parse_error(e: clap::Error) -> i32 {
    if !e.use_stderr() {
        let _ = e.print();
        return 0;
    }
    let _ = e.print();
    if json_asked(std::env::args_os().skip(1)) {
        let rendered = e.render().to_string();
        let message = rendered
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("bad arguments")
            .trim()
            .trim_start_matches("error:")
            .trim()
            .to_string();
        let doc = JsonError {
            error: message,
            kind: "usage",
            exit_code: ExitCode::Usage as i32,
        };
        Output { json: true }.emit(&doc, String::new);
    }
    ExitCode::Usage as i32
}

/// Whether `--json` is among raw arguments (before a `--` that ends the options).
fn json_asked(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    for a in args {
        if a == "--" {
            return false;
        }
        if a == "--json" {
            return true;
        }
    }
    false
}

/// A string option of the innermost subcommand, if it has one by that name.
fn leaf_string(m: &clap::ArgMatches, id: &str) -> Option<String> {
    let mut cur = m;
    while let Some((_, sub)) = cur.subcommand() {
        cur = sub;
    }
    cur.try_get_one::<String>(id).ok().flatten().cloned()
}

/// The subcommand path that ran: "backup", "library erase".
fn command_path(m: &clap::ArgMatches) -> String {
    let mut parts = Vec::new();
    let mut cur = m;
    while let Some((name, sub)) = cur.subcommand() {
        parts.push(name.to_string());
        cur = sub;
    }
    parts.join(" ")
}

/// Settings from an initialised home's config.toml that apply to every command: the
/// passphrase file (after `--passphrase-file` and `$TAPEVAULT_PASSPHRASE`) and the hook.
/// A home that cannot be read leaves everything as it is (the command reports it).
fn apply_config_defaults(g: &mut GlobalArgs, job: &str) {
    let first = job.split(' ').next().unwrap_or("");
    if matches!(first, "" | "init" | "completions" | "man" | "manifest") {
        return;
    }
    let dir = Home::resolve(g.home.as_deref());
    let Ok(home) = Home::open(&dir) else {
        return;
    };
    let env_pass = std::env::var_os(passphrase::PASSPHRASE_ENV).is_some_and(|v| !v.is_empty());
    if g.passphrase_file.is_none() && !env_pass {
        if let Some(f) = &home.config.passphrase_file {
            let f = if f.is_relative() {
                dir.join(f)
            } else {
                f.clone()
            };
            g.passphrase_file = Some(f);
        }
    }
    let Some(command) = home.config.hook.clone().filter(|c| !c.trim().is_empty()) else {
        return;
    };
    if let Some(on) = &home.config.hook_on {
        let wanted = on.iter().any(|w| {
            let w = w.trim();
            job == w || job.starts_with(&format!("{w} "))
        });
        if !wanted {
            return;
        }
    }
    hook::arm(hook::Hook {
        command,
        timeout: std::time::Duration::from_secs(
            home.config
                .hook_timeout_secs
                .unwrap_or(hook::DEFAULT_HOOK_TIMEOUT_SECS),
        ),
        job: job.to_string(),
        argv: std::env::args().collect(),
        home: dir,
    });
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
        Command::Manifest(c) => manifest_cmd::manifest(ctx, c),
        Command::Catalog(c) => catalog_cmd::catalog(ctx, c),
        Command::Key(c) => key_cmd::key(ctx, c),
        Command::Images(a) => restore_cmd::images(ctx, a),
        Command::Restore(a) => restore_cmd::restore(ctx, a),
        Command::Copy(a) => copy_cmd::copy(ctx, a),
        Command::Verify(a) => verify_cmd::verify(ctx, a),
        Command::Jobs(a) => status_cmd::jobs(ctx, a),
        Command::Status => status_cmd::status(ctx),
        Command::Vm(c) => vm_cmd::run(ctx, c),
        Command::Completions(a) => generate_cmd::completions(a),
        Command::Man(a) => generate_cmd::man(ctx, a),
    }
}

/// A usage error (exit 2) with a message.
pub fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Usage(msg.into()))
}
