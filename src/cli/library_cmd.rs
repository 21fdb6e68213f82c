//! `tapevault init` and `tapevault library ...`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{human_bytes, usage, Ctx};
use crate::error::{Context, Error, Result};
use crate::home::{parse_size, Config, Home, LibraryConfig};
use tape_devices::changer::r#virtual::{CartridgeInfo, VirtualLibrary, VirtualLibraryConfig};
use tape_devices::changer::{ElementRef, Inventory};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Storage slots of a new virtual library.
    #[arg(long)]
    pub slots: Option<usize>,
    /// Drives of a new virtual library.
    #[arg(long)]
    pub drives: Option<usize>,
    /// Import/export (mail) slots of a new virtual library.
    #[arg(long)]
    pub mailslots: Option<usize>,
    /// Blank cartridges to create in a new virtual library (default: fill every slot).
    #[arg(long)]
    pub cartridges: Option<usize>,
    /// Capacity of each new virtual cartridge (e.g. 4G, 512M).
    #[arg(long, value_parser = parse_size)]
    pub capacity: Option<u64>,
    /// Size of the early-warning zone before the end of each new virtual cartridge.
    #[arg(long, value_parser = parse_size)]
    pub early_warning: Option<u64>,
    /// Virtual library directory: created if absent, adopted if it already holds a
    /// library (default: HOME/library).
    #[arg(long, value_name = "DIR", conflicts_with = "changer")]
    pub library: Option<PathBuf>,
    /// Use a real SCSI media changer (its sg node) instead of a virtual library.
    #[arg(long, value_name = "DEV", requires = "drive")]
    pub changer: Option<PathBuf>,
    /// A real drive's non-rewinding st node, in drive element order (repeat per drive).
    #[arg(long, value_name = "DEV")]
    pub drive: Vec<PathBuf>,
    /// Make the virtual library's drives behave like streaming drives in time (speed
    /// matching, buffer, reposition penalty), e.g. `speed=400M,min=130M,buffer=512Mi,reposition=2.5s`;
    /// `off` removes the model. See docs/OPERATIONS.md.
    #[arg(long, value_name = "SPEC", value_parser = parse_drive_model, conflicts_with = "changer")]
    pub drive_model: Option<DriveModelArg>,
}

/// `--drive-model`: a model, or `off`.
#[derive(Debug, Clone)]
pub struct DriveModelArg(Option<vtl_sim::DriveModel>);

fn parse_drive_model(s: &str) -> std::result::Result<DriveModelArg, String> {
    if s.trim() == "off" {
        return Ok(DriveModelArg(None));
    }
    s.parse().map(|m| DriveModelArg(Some(m)))
}

#[derive(Serialize)]
struct InitReport {
    home: PathBuf,
    library: LibraryConfig,
    adopted: bool,
    cartridges: Vec<String>,
    /// The virtual drives' speed model as `--drive-model` set it (spec form).
    #[serde(skip_serializing_if = "Option::is_none")]
    drive_model: Option<String>,
}

pub fn init(ctx: &Ctx, a: InitArgs) -> Result<()> {
    let dir = ctx.home_dir();
    if Home::is_initialised(&dir) {
        return Err(Error::Failed(format!(
            "{} is already a tapevault home; use another --home or remove it first",
            dir.display()
        )));
    }
    let mut adopted = false;
    let mut cartridges = Vec::new();
    let drive_model = a
        .drive_model
        .as_ref()
        .map(|DriveModelArg(m)| m.as_ref().map_or("off".to_string(), |m| m.to_string()));
    let library = if let Some(changer) = a.changer {
        LibraryConfig::Scsi {
            changer,
            drives: a.drive,
        }
    } else {
        if !a.drive.is_empty() {
            return usage("--drive names real st devices and needs --changer");
        }
        let path = a.library.unwrap_or_else(|| dir.join("library"));
        let path = absolute(&path)?;
        if VirtualLibrary::exists(&path) {
            if a.slots.is_some()
                || a.drives.is_some()
                || a.mailslots.is_some()
                || a.capacity.is_some()
            {
                return usage(format!(
                    "{} already holds a virtual library; it is adopted as it is, so --slots/--drives/--mailslots/--capacity do not apply",
                    path.display()
                ));
            }
            let mut lib = VirtualLibrary::open(&path)?;
            if let Some(DriveModelArg(m)) = a.drive_model {
                lib.set_drive_model(m)?;
            }
            cartridges = lib.cartridges()?.into_iter().map(|c| c.barcode).collect();
            adopted = true;
        } else {
            let mut cfg = VirtualLibraryConfig::default();
            if let Some(v) = a.slots {
                cfg.slots = v;
                cfg.cartridges = v;
            }
            if let Some(v) = a.drives {
                cfg.drives = v;
            }
            if let Some(v) = a.mailslots {
                cfg.mail_slots = v;
            }
            if let Some(v) = a.cartridges {
                cfg.cartridges = v;
            }
            if let Some(v) = a.capacity {
                cfg.capacity = v;
                cfg.early_warning = (64u64 << 20).min(v / 8);
            }
            if let Some(v) = a.early_warning {
                cfg.early_warning = v;
            }
            if cfg.cartridges > cfg.slots {
                return usage(format!(
                    "--cartridges {} is more than --slots {}",
                    cfg.cartridges, cfg.slots
                ));
            }
            let mut lib = VirtualLibrary::create(&path, &cfg)
                .with_context(|| format!("creating the virtual library in {}", path.display()))?;
            if let Some(DriveModelArg(m)) = a.drive_model {
                lib.set_drive_model(m)?;
            }
            cartridges = lib.cartridges()?.into_iter().map(|c| c.barcode).collect();
        }
        LibraryConfig::Virtual { path }
    };
    let home = Home::create(
        &dir,
        Config {
            library,
            media_wait_secs: 300,
        },
    )?;
    let report = InitReport {
        home: home.dir.clone(),
        library: home.config.library.clone(),
        adopted,
        cartridges,
        drive_model,
    };
    ctx.out.emit(&report, || {
        let lib = match &report.library {
            LibraryConfig::Virtual { path } => format!(
                "virtual library {} ({}{} cartridges)",
                path.display(),
                if report.adopted { "adopted, " } else { "" },
                report.cartridges.len()
            ),
            LibraryConfig::Scsi { changer, drives } => {
                format!(
                    "SCSI changer {} with {} drive(s)",
                    changer.display(),
                    drives.len()
                )
            }
        };
        let model = match &report.drive_model {
            Some(m) => format!("\ndrive model: {m}"),
            None => String::new(),
        };
        format!(
            "initialised tapevault home {}\nlibrary: {lib}{model}",
            report.home.display()
        )
    });
    Ok(())
}

fn absolute(p: &std::path::Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

#[derive(Debug, Subcommand)]
pub enum LibraryCommand {
    /// Inventory: drives, slots and mail slots with barcodes.
    Status,
    /// Load a cartridge into a drive.
    Load {
        barcode: String,
        #[arg(long, default_value_t = 0)]
        drive: usize,
    },
    /// Unload a drive back to its home slot.
    Unload {
        #[arg(long, default_value_t = 0)]
        drive: usize,
    },
    /// Move cartridges to the mail slots for removal.
    Export {
        #[arg(required = true)]
        barcodes: Vec<String>,
    },
    /// Move every cartridge in the mail slots into free storage slots.
    Import,
    /// Add new blank cartridges to a virtual library.
    AddCartridge {
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, value_parser = parse_size)]
        capacity: Option<u64>,
    },
    /// Virtual library: take a cartridge out of its mail slot (as an operator does).
    Remove { barcode: String },
    /// Virtual library: put a cartridge from outside into a free mail slot.
    Insert { barcode: String },
}

#[derive(Serialize)]
struct StatusReport {
    inventory: Inventory,
    #[serde(skip_serializing_if = "Option::is_none")]
    cartridges: Option<Vec<CartridgeInfo>>,
}

pub fn library(ctx: &Ctx, c: LibraryCommand) -> Result<()> {
    let home = ctx.home()?;
    match c {
        LibraryCommand::Status => {
            let mut lib = home.open_library()?;
            let inventory = lib.changer().inventory()?;
            let cartridges = match home.virtual_library_dir() {
                Some(_) => Some(home.open_virtual_library()?.cartridges()?),
                None => None,
            };
            let r = StatusReport {
                inventory,
                cartridges,
            };
            ctx.out.emit(&r, || status_text(&r));
        }
        LibraryCommand::Load { barcode, drive } => {
            let mut lib = home.open_library()?;
            lib.changer()
                .load(&barcode, drive)
                .with_context(|| format!("loading {barcode} into drive {drive}"))?;
            ctx.out.emit(
                &serde_json::json!({"loaded": barcode, "drive": drive}),
                || format!("loaded {barcode} into drive {drive}"),
            );
        }
        LibraryCommand::Unload { drive } => {
            let mut lib = home.open_library()?;
            let to = lib
                .changer()
                .unload(drive)
                .with_context(|| format!("unloading drive {drive}"))?;
            ctx.out.emit(
                &serde_json::json!({"drive": drive, "to": to}),
                || match to {
                    Some(e) => format!("unloaded drive {drive} to {e}"),
                    None => format!("drive {drive} was empty"),
                },
            );
        }
        LibraryCommand::Export { barcodes } => {
            let mut lib = home.open_library()?;
            let mut moved: Vec<(String, ElementRef)> = Vec::new();
            for b in &barcodes {
                let to = lib
                    .changer()
                    .export(b)
                    .with_context(|| format!("exporting {b}"))?;
                moved.push((b.clone(), to));
            }
            let json: Vec<_> = moved
                .iter()
                .map(|(b, e)| serde_json::json!({"barcode": b, "to": e}))
                .collect();
            ctx.out.emit(&json, || {
                moved.iter().map(|(b, e)| format!("{b} -> {e}\n")).collect()
            });
        }
        LibraryCommand::Import => {
            let mut lib = home.open_library()?;
            let done = lib
                .changer()
                .import()
                .context("importing from the mail slots")?;
            ctx.out.emit(&serde_json::json!({"imported": done}), || {
                if done.is_empty() {
                    "the mail slots are empty".into()
                } else {
                    format!("imported {}", done.join(" "))
                }
            });
        }
        LibraryCommand::AddCartridge { count, capacity } => {
            let mut lib = home.open_virtual_library()?;
            let added = lib
                .add_cartridges(count, capacity)
                .context("adding cartridges")?;
            ctx.out.emit(&serde_json::json!({"added": added}), || {
                format!("added {}", added.join(" "))
            });
        }
        LibraryCommand::Remove { barcode } => {
            let mut lib = home.open_virtual_library()?;
            lib.remove_from_mail_slot(&barcode)
                .with_context(|| format!("removing {barcode}"))?;
            ctx.out.emit(&serde_json::json!({"removed": barcode}), || {
                format!("{barcode} removed from the library")
            });
        }
        LibraryCommand::Insert { barcode } => {
            let mut lib = home.open_virtual_library()?;
            let to = lib
                .insert_into_mail_slot(&barcode)
                .with_context(|| format!("inserting {barcode}"))?;
            ctx.out
                .emit(&serde_json::json!({"inserted": barcode, "to": to}), || {
                    format!("{barcode} is in {to}")
                });
        }
    }
    Ok(())
}

fn status_text(r: &StatusReport) -> String {
    let mut s = String::new();
    for e in r.inventory.all() {
        let what = match &e.barcode {
            Some(b) => b.clone(),
            None => "(empty)".into(),
        };
        let extra = r
            .cartridges
            .as_ref()
            .and_then(|cs| {
                e.barcode
                    .as_ref()
                    .and_then(|b| cs.iter().find(|c| &c.barcode == b))
            })
            .map(|c| {
                format!(
                    "  {} of {} used{}",
                    human_bytes(c.bytes_used),
                    human_bytes(c.capacity),
                    c.application_label
                        .as_ref()
                        .map(|l| format!(", label {l}"))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        s.push_str(&format!("{:<12} {what}{extra}\n", e.element.to_string()));
    }
    if let Some(cs) = &r.cartridges {
        for c in cs.iter().filter(|c| c.location.is_none()) {
            s.push_str(&format!("{:<12} {}\n", "outside", c.barcode));
        }
    }
    s
}
