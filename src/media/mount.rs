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
    if el.element.kind == ElementKind::Drive {
        let i = el.element.index;
        let drive = lib.open_drive(i).with_context(|| {
            format!("cartridge {barcode} is in drive {i}, which another job is using")
        })?;
        return Ok(Mounted {
            drive_index: i,
            barcode: barcode.into(),
            drive,
        });
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
                return Ok(Mounted {
                    drive_index: i,
                    barcode: barcode.into(),
                    drive,
                });
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
