//! `tapevault init` and `tapevault library ...`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::shared::open_catalog;
use super::{human_bytes, usage, Ctx};
use crate::catalog::MediaRow;
use crate::error::{Context, Error, Result};
use crate::home::{parse_size, Config, Home, LibraryConfig};
use crate::media::allocate::sync_inventory;
use crate::media::volume::{read_label, LabelRead};
use crate::media::{lifecycle, mount, unmount};
use tape_devices::changer::r#virtual::{CartridgeInfo, VirtualLibrary, VirtualLibraryConfig};
use tape_devices::changer::{
    Changer, ChangerError, ElementKind, ElementRef, Inventory, TapeLibrary,
};

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
    /// library (default: beside the home, `<HOME>-library`, so that losing the home does
    /// not lose the cartridges).
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
    #[serde(rename = "barcodes")]
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
        let path = match a.library {
            Some(p) => absolute(&p)?,
            None => Home::default_library_dir(&absolute(&dir)?),
        };
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
    let home = Home::create(&dir, Config::new(library))?;
    let report = InitReport {
        home: absolute(&home.dir)?,
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
        let mut s = format!(
            "initialised tapevault home {}\nlibrary: {lib}{model}",
            report.home.display()
        );
        if let LibraryConfig::Virtual { path } = &report.library {
            if path.starts_with(&report.home) {
                s.push_str("\nnote: the library is inside the home; keep the cartridges when replacing the home (disaster recovery needs them)");
            } else {
                s.push_str(&format!(
                    "\nthe cartridges live in {}: keep that directory (with a key export, it is all a disaster recovery needs)",
                    path.display()
                ));
            }
        }
        s
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
    /// Unload a drive back to its home slot, or to the free storage slot --slot names.
    Unload {
        #[arg(long, default_value_t = 0)]
        drive: usize,
        /// Put the cartridge into this free storage slot (numbered as `library status`
        /// shows them) instead of the slot it came from.
        #[arg(long, value_name = "N")]
        slot: Option<usize>,
    },
    /// Move a cartridge from one storage slot to a free one (as `library status` numbers
    /// them).
    Transfer { from_slot: usize, to_slot: usize },
    /// Take a cartridge out of the library: it goes to a free mail slot (out of its drive
    /// first if it is loaded). A virtual library's cartridge then leaves the library
    /// (offline, as the operator taking it out); a real library's waits in the mail slot.
    Eject { barcode: String },
    /// Erase a cartridge (rewind, SSC ERASE): it reads blank and the catalog forgets what
    /// it held. Refused while the catalog keeps restore points on it, or while it holds a
    /// tapevault volume or other data the catalog does not know, unless --force.
    Erase {
        barcode: String,
        /// Erase even restore points the catalog keeps, or data it does not know.
        #[arg(long)]
        force: bool,
    },
    /// Move cartridges to the mail slots for removal.
    Export {
        #[arg(required = true)]
        barcodes: Vec<String>,
    },
    /// Move every cartridge in the mail slots into free storage slots.
    Import,
    /// Add new blank cartridges to free storage slots of a virtual library (never to a
    /// mail slot: refused when fewer slots are free than --count asks for).
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
    /// Serve the virtual library over iSCSI (SSC drives, SMC changer) until SIGTERM/SIGINT.
    Serve(ServeArgs),
}

#[derive(Serialize)]
struct StatusReport {
    inventory: Inventory,
    #[serde(skip_serializing_if = "Option::is_none")]
    cartridges: Option<Vec<CartridgeInfo>>,
}

pub fn library(ctx: &Ctx, c: LibraryCommand) -> Result<()> {
    // `serve --library DIR` needs no home.
    let c = match c {
        LibraryCommand::Serve(a) => return serve::run(ctx, a),
        c => c,
    };
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
                &serde_json::json!({"barcode": barcode, "drive": drive}),
                || format!("loaded {barcode} into drive {drive}"),
            );
        }
        LibraryCommand::Unload {
            drive,
            slot: Some(slot),
        } => {
            let mut lib = home.open_library()?;
            let inv = lib.changer().inventory()?;
            let Some(d) = inv.drives.get(drive) else {
                return usage(format!(
                    "drive {drive} does not exist (the library has {} drive(s), numbered from 0)",
                    inv.drives.len()
                ));
            };
            let Some(barcode) = d.barcode.clone() else {
                return Err(Error::Failed(format!("drive {drive} is empty")));
            };
            free_slot(&inv, slot, "--slot")?;
            drive_not_busy(lib.as_mut(), drive)?;
            lib.changer()
                .move_medium(ElementRef::drive(drive), ElementRef::slot(slot))
                .with_context(|| format!("unloading drive {drive} to slot {slot}"))?;
            let to = ElementRef::slot(slot);
            ctx.out.emit(
                &serde_json::json!({"drive": drive, "barcode": barcode, "to": to}),
                || format!("unloaded {barcode} from drive {drive} to {to}"),
            );
        }
        LibraryCommand::Unload { drive, slot: None } => {
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
            ctx.out.emit_list("moved", &json, || {
                moved.iter().map(|(b, e)| format!("{b} -> {e}\n")).collect()
            });
        }
        LibraryCommand::Import => {
            let mut lib = home.open_library()?;
            let done = lib
                .changer()
                .import()
                .context("importing from the mail slots")?;
            ctx.out.emit(&serde_json::json!({"barcodes": done}), || {
                if done.is_empty() {
                    "the mail slots are empty".into()
                } else {
                    format!("imported {}", done.join(" "))
                }
            });
        }
        LibraryCommand::Transfer { from_slot, to_slot } => {
            let mut lib = home.open_library()?;
            let inv = lib.changer().inventory()?;
            let Some(src) = inv.slots.get(from_slot) else {
                return usage(format!(
                    "slot {from_slot} does not exist (the library's storage slots are 0 to {})",
                    inv.slots.len().saturating_sub(1)
                ));
            };
            let Some(barcode) = src.barcode.clone() else {
                let full: Vec<String> = inv
                    .slots
                    .iter()
                    .filter(|e| e.is_full())
                    .map(|e| e.element.index.to_string())
                    .collect();
                return usage(format!(
                    "slot {from_slot} is empty; slots holding a cartridge: {}",
                    if full.is_empty() {
                        "none".into()
                    } else {
                        full.join(", ")
                    }
                ));
            };
            if from_slot == to_slot {
                return usage(format!("{barcode} is already in slot {to_slot}"));
            }
            free_slot(&inv, to_slot, "TO_SLOT")?;
            lib.changer()
                .move_medium(ElementRef::slot(from_slot), ElementRef::slot(to_slot))
                .with_context(|| {
                    format!("moving {barcode} from slot {from_slot} to slot {to_slot}")
                })?;
            sync_catalog(&home, lib.as_mut())?;
            ctx.out.emit(
                &serde_json::json!({"barcode": barcode, "from": ElementRef::slot(from_slot), "to": ElementRef::slot(to_slot)}),
                || format!("moved {barcode} from slot {from_slot} to slot {to_slot}"),
            );
        }
        LibraryCommand::Eject { barcode } => {
            let mut lib = home.open_library()?;
            let inv = lib.changer().inventory()?;
            let Some(el) = inv.find(&barcode).map(|e| e.element) else {
                return usage(format!(
                    "no cartridge {barcode} is in the library (`tapevault library status` lists them)"
                ));
            };
            let mail = if el.kind == ElementKind::MailSlot {
                el
            } else {
                let Some(to) = inv.first_empty(ElementKind::MailSlot) else {
                    return Err(Error::MediaNeeded(format!(
                        "every mail slot is full ({} of them): take the cartridges out of them first, then eject {barcode}",
                        inv.mail_slots.len()
                    )));
                };
                if el.kind == ElementKind::Drive {
                    drive_not_busy(lib.as_mut(), el.index)?;
                }
                lib.changer()
                    .move_medium(el, to)
                    .with_context(|| format!("moving {barcode} from {el} to {to}"))?;
                to
            };
            let offline = match home.virtual_library_dir() {
                Some(_) => {
                    home.open_virtual_library()?
                        .remove_from_mail_slot(&barcode)
                        .with_context(|| format!("taking {barcode} out of {mail}"))?;
                    true
                }
                None => false,
            };
            sync_catalog(&home, lib.as_mut())?;
            ctx.out.emit(
                &serde_json::json!({"barcode": barcode, "from": el, "via": mail, "offline": offline}),
                || {
                    if offline {
                        format!("ejected {barcode} ({el} -> {mail} -> out of the library)")
                    } else {
                        format!("ejected {barcode} to {mail}: take it out of the library")
                    }
                },
            );
        }
        LibraryCommand::Erase { barcode, force } => erase(ctx, &home, &barcode, force)?,
        LibraryCommand::AddCartridge { count, capacity } => {
            let mut lib = home.open_virtual_library()?;
            if count == 0 {
                return usage("--count 0 adds nothing; give at least 1");
            }
            let inv = lib.inventory()?;
            let free = inv.slots.iter().filter(|e| !e.is_full()).count();
            if free == 0 {
                return Err(Error::Failed(format!(
                    "the library has no free storage slot (all {} are full) and a new cartridge never goes into a mail slot: nothing was added. Free a slot first (`tapevault library eject BARCODE`)",
                    inv.slots.len()
                )));
            }
            if count > free {
                return usage(format!(
                    "--count {count} does not fit: only {free} storage slot(s) of {} are free, so at most --count {free}; nothing was added",
                    inv.slots.len()
                ));
            }
            let added = lib
                .add_cartridges(count, capacity)
                .context("adding cartridges")?;
            ctx.out.emit(&serde_json::json!({"barcodes": added}), || {
                format!("added {}", added.join(" "))
            });
        }
        LibraryCommand::Remove { barcode } => {
            let mut lib = home.open_virtual_library()?;
            lib.remove_from_mail_slot(&barcode)
                .with_context(|| format!("removing {barcode}"))?;
            ctx.out.emit(&serde_json::json!({"barcode": barcode}), || {
                format!("{barcode} removed from the library")
            });
        }
        // Served above, before a home is opened (`--library DIR` needs none).
        LibraryCommand::Serve(_) => {}
        LibraryCommand::Insert { barcode } => {
            let mut lib = home.open_virtual_library()?;
            let to = lib
                .insert_into_mail_slot(&barcode)
                .with_context(|| format!("inserting {barcode}"))?;
            ctx.out
                .emit(&serde_json::json!({"barcode": barcode, "to": to}), || {
                    format!("{barcode} is in {to}")
                });
        }
    }
    Ok(())
}

/// `slot` must be an existing, empty storage slot; else a usage error naming the free ones.
fn free_slot(inv: &Inventory, slot: usize, what: &str) -> Result<()> {
    let free: Vec<String> = inv
        .slots
        .iter()
        .filter(|e| !e.is_full())
        .map(|e| e.element.index.to_string())
        .collect();
    let free = if free.is_empty() {
        "none (every storage slot is full)".to_string()
    } else {
        free.join(", ")
    };
    match inv.slots.get(slot) {
        None => usage(format!(
            "{what} {slot}: no such storage slot (they are 0 to {}); free slots: {free}",
            inv.slots.len().saturating_sub(1)
        )),
        Some(e) if e.is_full() => usage(format!(
            "{what} {slot}: slot {slot} is full (holds {}); free slots: {free}",
            e.barcode.as_deref().unwrap_or("?")
        )),
        Some(_) => Ok(()),
    }
}

/// Refuse to move a cartridge out of a drive a running job holds.
fn drive_not_busy(lib: &mut dyn TapeLibrary, drive: usize) -> Result<()> {
    match lib.open_drive(drive) {
        Ok(d) => {
            drop(d);
            Ok(())
        }
        Err(ChangerError::Busy { detail, .. }) => Err(Error::Failed(format!(
            "drive {drive} is in use by a running job ({detail}); try again when it finishes"
        ))),
        Err(e) => Err(Error::from(e)).with_context(|| format!("opening drive {drive}")),
    }
}

/// Bring the catalog's cartridge locations in line with the library after a move.
fn sync_catalog(home: &Home, lib: &mut dyn TapeLibrary) -> Result<()> {
    let cat = open_catalog(home)?;
    sync_inventory(&cat, lib)?;
    Ok(())
}

#[derive(Serialize)]
struct EraseReport {
    barcode: String,
    /// Images the catalog forgot (deleted when expired, else marked corrupt).
    forgotten: Vec<uuid::Uuid>,
    forced: bool,
}

/// `library erase`: check what would be lost, load, rewind, erase, and make the catalog
/// forget the cartridge's contents (before erasing: it never claims what is gone).
fn erase(ctx: &Ctx, home: &Home, barcode: &str, force: bool) -> Result<()> {
    let cat = open_catalog(home)?;
    let mut lib = home.open_library()?;
    sync_inventory(&cat, lib.as_mut())?;
    let row = cat.media(barcode)?;
    let now = crate::home::clock::now();
    let impact = lifecycle::overwrite_impact(&cat, barcode, now)?;
    if let (Some(why), false) = (&impact.kept_because, force) {
        return Err(Error::Failed(format!(
            "cartridge {barcode} holds live data the catalog keeps ({why}): erasing it would destroy {}. Use --force to erase anyway.",
            impact.describe()
        )));
    }
    let mut m = mount(
        lib.as_mut(),
        barcode,
        row.as_ref().map(|r| r.location.as_str()),
    )?;
    let result = (|| -> Result<EraseReport> {
        let found = read_label(m.drive.as_mut())?;
        let known = row.as_ref().and_then(|r| r.volume_uuid);
        match (&found, force) {
            (LabelRead::Blank, _) | (_, true) => {}
            (LabelRead::Label(l), false)
                if Some(uuid::Uuid::from_bytes(l.volume_uuid)) == known => {}
            (LabelRead::Label(l), false) => {
                return Err(Error::Failed(format!(
                    "cartridge {barcode} holds tapevault volume {} of pool {} that this catalog does not know (read it with `tapevault catalog rebuild --barcode {barcode}`); erase it anyway with --force",
                    uuid::Uuid::from_bytes(l.volume_uuid),
                    l.pool_name
                )))
            }
            (LabelRead::Foreign(d), false) => {
                return Err(Error::Failed(format!(
                    "cartridge {barcode} holds data that is not tapevault's ({d}); erase it anyway with --force"
                )))
            }
        }
        if m.drive.status()?.write_protected {
            return Err(Error::Failed(format!(
                "cartridge {barcode} is write-protected: move its write-protect tab to erase it"
            )));
        }
        let forgotten = lifecycle::forget_contents(
            &cat,
            barcode,
            &format!(
                "erased: cartridge {barcode} was erased on {}",
                now.format("%Y-%m-%d")
            ),
            impact.is_harmless(),
        )?;
        m.drive
            .rewind()
            .with_context(|| format!("rewinding {barcode} to erase it"))?;
        m.drive
            .erase()
            .with_context(|| format!("erasing {barcode}"))?;
        let loc = row.as_ref().map(|r| r.location.clone()).unwrap_or_default();
        match &row {
            Some(_) => cat.unassign_media(barcode)?,
            None => cat.upsert_media(&MediaRow::new_blank(barcode, &loc))?,
        }
        Ok(EraseReport {
            barcode: barcode.to_string(),
            forgotten,
            forced: force,
        })
    })();
    let drive_index = m.drive_index;
    unmount(lib.as_mut(), m).with_context(|| format!("putting away drive {drive_index}"))?;
    sync_inventory(&cat, lib.as_mut())?;
    let rep = result?;
    ctx.out.emit(&rep, || {
        let mut s = format!("erased {}: it reads blank now", rep.barcode);
        if !rep.forgotten.is_empty() {
            s.push_str(&format!(
                "\nthe catalog forgot {} image(s): {}",
                rep.forgotten.len(),
                rep.forgotten
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        s
    });
    Ok(())
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Virtual library directory to serve (default: the home's virtual library).
    #[arg(long, value_name = "DIR")]
    pub library: Option<PathBuf>,
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3260")]
    pub listen: std::net::SocketAddr,
    /// Allow listening on a non-loopback address and initiators from other hosts (the
    /// target has no authentication: whoever can connect can use the library).
    #[arg(long)]
    pub allow_remote: bool,
    /// iSCSI target name (iqn., eui. or naa. form).
    #[arg(long, value_name = "IQN", default_value = iscsi_target::DEFAULT_TARGET_NAME)]
    pub target_name: String,
}

/// `tapevault library serve`: the library as an iSCSI target until a signal stops it.
mod serve {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;

    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use serde::Serialize;

    use super::ServeArgs;
    use crate::cli::{usage, Ctx};
    use crate::error::{Error, Result};

    #[derive(Serialize)]
    struct Lun {
        lun: u64,
        /// "changer" or "drive".
        kind: &'static str,
        /// Drive index in the library (drives only).
        #[serde(skip_serializing_if = "Option::is_none")]
        drive: Option<u64>,
        /// SCSI peripheral device type (1 tape, 8 medium changer).
        device_type: u8,
    }

    #[derive(Serialize)]
    struct Started {
        target: String,
        address: std::net::SocketAddr,
        library: std::path::PathBuf,
        luns: Vec<Lun>,
    }

    /// Write end of the self-pipe the signal handler writes to (-1: none).
    static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(sig: libc::c_int) {
        let fd = WAKE_FD.load(Ordering::SeqCst);
        if fd >= 0 {
            let b = sig as u8;
            // SAFETY: write(2) is async-signal-safe; the buffer is a local byte.
            unsafe {
                libc::write(fd, (&b as *const u8).cast(), 1);
            }
        }
    }

    /// Install SIGTERM/SIGINT handlers writing to a pipe; returns its read end.
    fn stop_signals() -> Result<OwnedFd> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::Failed(format!("creating the signal pipe: {e}")))?;
        WAKE_FD.store(w.as_raw_fd(), Ordering::SeqCst);
        // The write end lives as long as the process: the handler may run at any time.
        std::mem::forget(w);
        let act = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in [Signal::SIGTERM, Signal::SIGINT] {
            // SAFETY: the handler only loads an atomic and calls write(2).
            unsafe { sigaction(sig, &act) }
                .map_err(|e| Error::Failed(format!("installing the {sig} handler: {e}")))?;
        }
        Ok(r)
    }

    /// Block until a signal arrives; returns its name.
    fn wait_for_signal(r: &OwnedFd) -> Result<String> {
        let mut b = [0u8; 1];
        loop {
            match nix::unistd::read(r.as_raw_fd(), &mut b) {
                Ok(1) => {
                    return Ok(Signal::try_from(b[0] as i32)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|_| format!("signal {}", b[0])))
                }
                Ok(_) => return Err(Error::Failed("the signal pipe closed".into())),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::Failed(format!("waiting for a signal: {e}"))),
            }
        }
    }

    pub fn run(ctx: &Ctx, a: ServeArgs) -> Result<()> {
        if !a.listen.ip().is_loopback() && !a.allow_remote {
            return usage(format!(
                "--listen {} is not a loopback address and the target has no authentication: \
                 anyone who can reach it could use the library; add --allow-remote to serve it anyway",
                a.listen
            ));
        }
        let dir =
            match a.library {
                Some(d) => super::absolute(&d)?,
                None => {
                    let home = ctx.home()?;
                    match home.virtual_library_dir() {
                        Some(d) => d.to_path_buf(),
                        None => return usage(
                            "this home uses a real SCSI library; only a virtual library can be \
                             served (name one with --library DIR)",
                        ),
                    }
                }
            };
        if !vtl_sim::Library::exists(&dir) {
            return usage(format!(
                "{} holds no virtual library (create one with `tapevault init --library DIR`)",
                dir.display()
            ));
        }
        // Signals are caught before the target starts, so none is lost in between.
        let sig_pipe = stop_signals()?;
        let mut cfg = iscsi_target::TargetConfig::new(&dir);
        cfg.listen = a.listen;
        cfg.allow_remote = a.allow_remote;
        cfg.target_name = a.target_name;
        cfg.log = Some(Arc::new(|line: &str| eprintln!("{line}")));
        let handle = iscsi_target::Target::serve(cfg).map_err(|e| match e {
            iscsi_target::ServeError::NotLoopback(_) | iscsi_target::ServeError::BadName(_) => {
                Error::Usage(e.to_string())
            }
            e => Error::Failed(format!("serving {}: {e}", dir.display())),
        })?;
        let started = Started {
            target: handle.target_name().to_string(),
            address: handle.local_addr(),
            library: dir.clone(),
            luns: handle
                .luns()
                .into_iter()
                .map(|(lun, device_type)| Lun {
                    lun,
                    kind: if lun == 0 { "changer" } else { "drive" },
                    drive: (lun > 0).then(|| lun - 1),
                    device_type,
                })
                .collect(),
        };
        ctx.out.emit(&started, || {
            let mut s = format!(
                "serving {} as {} on {}\n",
                started.library.display(),
                started.target,
                started.address
            );
            for l in &started.luns {
                match l.drive {
                    None => s.push_str(&format!("  LUN {}: media changer\n", l.lun)),
                    Some(d) => s.push_str(&format!("  LUN {}: tape drive {d}\n", l.lun)),
                }
            }
            s
        });
        {
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        ctx.out.note("ready; stop with SIGTERM or Ctrl-C");
        let sig = wait_for_signal(&sig_pipe)?;
        ctx.out.note(format!(
            "{sig}: stopping ({} session(s) open), flushing the drives",
            handle.sessions()
        ));
        handle.shutdown().map_err(|e| {
            Error::Failed(format!(
                "stopping the target: flushing the drives failed: {e}"
            ))
        })?;
        ctx.out.note("stopped; every drive flushed");
        Ok(())
    }
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
