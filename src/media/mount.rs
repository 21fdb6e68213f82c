//! Getting a cartridge into a drive this process holds.

use crate::error::{Context, Error, Result};
use tape_devices::changer::{ChangerError, ElementKind, TapeLibrary, CLEANING_PREFIX};
use tape_devices::drive::TapeDrive;

/// A cartridge loaded in a drive held (locked) by this process.
pub struct Mounted {
    pub drive_index: usize,
    pub barcode: String,
    pub drive: Box<dyn TapeDrive>,
}

/// Load `barcode` into a drive this process can hold and return the drive. `location`
/// is where the catalog last saw the cartridge, for the message when it is not in the
/// library (exit 4).
pub fn mount(lib: &mut dyn TapeLibrary, barcode: &str, location: Option<&str>) -> Result<Mounted> {
    if barcode.starts_with(CLEANING_PREFIX) {
        return Err(Error::Usage(format!(
            "{barcode} is a cleaning cartridge and cannot hold data"
        )));
    }
    let inv = lib
        .changer()
        .inventory()
        .context("reading the library inventory")?;
    let Some(el) = inv.find(barcode) else {
        let whereabouts = match location {
            Some(l) if !l.is_empty() => format!(" (last known location: {l})"),
            _ => String::new(),
        };
        return Err(Error::MediaNeeded(format!(
            "cartridge {barcode} is needed but is not in the library{whereabouts}: put it into a mail slot and run `tapevault library import`"
        )));
    };
    if el.element.kind == ElementKind::MailSlot {
        check_can_put_back(&inv, std::slice::from_ref(&barcode.to_string()))?;
    }
    if el.element.kind == ElementKind::Drive {
        let i = el.element.index;
        let drive = lib.open_drive(i).with_context(|| {
            format!("cartridge {barcode} is in drive {i}, which another job is using")
        })?;
        return with_read_key(lib, i, barcode, drive);
    }
    // Prefer an empty drive, then one whose cartridge can be put away; skip busy ones.
    let mut order: Vec<usize> = inv
        .drives
        .iter()
        .filter(|d| !d.is_full())
        .map(|d| d.element.index)
        .collect();
    order.extend(
        inv.drives
            .iter()
            .filter(|d| d.is_full())
            .map(|d| d.element.index),
    );
    let mut busy = Vec::new();
    for i in order {
        match lib.open_drive(i) {
            Ok(drive) => {
                lib.changer()
                    .load(barcode, i)
                    .with_context(|| format!("loading {barcode} into drive {i}"))?;
                return with_read_key(lib, i, barcode, drive);
            }
            Err(ChangerError::Busy { detail, .. }) => busy.push(format!("drive {i}: {detail}")),
            Err(e) => return Err(Error::from(e)).with_context(|| format!("opening drive {i}")),
        }
    }
    Err(Error::Failed(format!(
        "no drive is free to load {barcode}; all are in use ({}); try again when a job finishes",
        busy.join("; ")
    )))
}

/// The mounted cartridge, with its pool's drive data key loaded when this process
/// registered one for reading it ([`crate::media::drive_key::expect_reads`]). A drive
/// that cannot take the key gets its cartridge put away and the error returned.
fn with_read_key(
    lib: &mut dyn TapeLibrary,
    i: usize,
    barcode: &str,
    drive: Box<dyn TapeDrive>,
) -> Result<Mounted> {
    let drive = match crate::media::drive_key::read_key_for(barcode) {
        None => drive,
        Some((pool, key)) => match crate::media::drive_key::arm(drive, &key, barcode, &pool) {
            Ok(d) => d,
            Err((d, e)) => {
                drop(d);
                let _ = lib.changer().unload(i);
                return Err(e);
            }
        },
    };
    Ok(Mounted {
        drive_index: i,
        barcode: barcode.into(),
        drive,
    })
}

/// Cartridges among `barcodes` that sit in mail slots go to a free storage slot when
/// they are unloaded (a drive never unloads into a mail slot): with fewer free storage
/// slots than such cartridges, the last ones would stay stuck in a drive. Refuse (exit
/// 4) before anything is loaded, naming them and the way out.
pub fn check_can_put_back(
    inv: &tape_devices::changer::Inventory,
    barcodes: &[String],
) -> Result<()> {
    let in_mail: Vec<String> = inv
        .mail_slots
        .iter()
        .filter_map(|e| {
            let b = e.barcode.as_ref()?;
            barcodes
                .contains(b)
                .then(|| format!("{b} (mail slot {})", e.element.index))
        })
        .collect();
    let free = inv.slots.iter().filter(|s| !s.is_full()).count();
    if in_mail.len() <= free {
        return Ok(());
    }
    Err(Error::MediaNeeded(format!(
        "{} cartridge(s) to read are in mail slots: {}; after reading, a cartridge goes back to a free storage slot and the library has {free} free: loading them would leave a cartridge stuck in a drive, so none was loaded. Free storage slots first (`tapevault library eject BARCODE` for cartridges not needed now, or `tapevault media export`), then `tapevault library import`, and run again; or read the others now and these in a later batch with --barcode",
        in_mail.len(),
        in_mail.join(", ")
    )))
}

/// Release the drive and put the cartridge back into its home slot.
pub fn unmount(lib: &mut dyn TapeLibrary, m: Mounted) -> Result<()> {
    let Mounted {
        drive_index,
        barcode,
        drive,
    } = m;
    drop(drive);
    lib.changer()
        .unload(drive_index)
        .with_context(|| format!("unloading {barcode} from drive {drive_index}"))?;
    Ok(())
}

/// Unmount every cartridge in `ms` (best effort after the first error, which is
/// returned).
pub fn unmount_all(lib: &mut dyn TapeLibrary, ms: Vec<Mounted>) -> Result<()> {
    let mut first = Ok(());
    for m in ms {
        let r = unmount(lib, m);
        if first.is_ok() {
            first = r;
        }
    }
    first
}
