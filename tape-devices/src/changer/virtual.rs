//! The embedded virtual tape library: [`Changer`] and [`TapeLibrary`] over vtl-sim.

use std::path::{Path, PathBuf};

use vtl_sim::{Library, LibraryConfig, VtlError};

use super::{
    Changer, ChangerError, ChangerResult, Element, ElementKind, ElementRef, Inventory, TapeLibrary,
};
use crate::drive::r#virtual::{map_err as map_drive_err, VirtualDrive};
use crate::drive::TapeDrive;

/// Early-warning zone of a default cartridge. Clamped to an eighth of the capacity for
/// tiny (test) cartridges.
pub const DEFAULT_EARLY_WARNING: u64 = 64 << 20;
/// Capacity of a default cartridge.
pub const DEFAULT_CAPACITY: u64 = 4 << 30;

/// The shape of a virtual library.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VirtualLibraryConfig {
    pub slots: usize,
    pub drives: usize,
    pub mail_slots: usize,
    /// Blank cartridges created with the library.
    pub cartridges: usize,
    /// Bytes per cartridge.
    pub capacity: u64,
    /// Size of the early-warning zone before the end of a cartridge.
    pub early_warning: u64,
}

impl Default for VirtualLibraryConfig {
    fn default() -> Self {
        VirtualLibraryConfig {
            slots: 16,
            drives: 2,
            mail_slots: 4,
            cartridges: 16,
            capacity: DEFAULT_CAPACITY,
            early_warning: DEFAULT_EARLY_WARNING,
        }
    }
}

/// A cartridge of the virtual library with its MAM-like statistics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CartridgeInfo {
    pub barcode: String,
    /// None when the cartridge is outside the library.
    pub location: Option<ElementRef>,
    pub capacity: u64,
    pub bytes_used: u64,
    pub load_count: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// RFC 3339.
    pub last_written: Option<String>,
    pub application_label: Option<String>,
    pub worm: bool,
    pub write_protected: bool,
}

/// A file-backed virtual tape library in a directory.
#[derive(Debug)]
pub struct VirtualLibrary {
    lib: Library,
}

fn el_from(e: vtl_sim::Element) -> ElementRef {
    ElementRef {
        kind: match e.kind {
            vtl_sim::ElementKind::Drive => ElementKind::Drive,
            vtl_sim::ElementKind::Slot => ElementKind::Slot,
            vtl_sim::ElementKind::MailSlot => ElementKind::MailSlot,
        },
        index: e.index,
    }
}

fn el_to(e: ElementRef) -> vtl_sim::Element {
    vtl_sim::Element {
        kind: match e.kind {
            ElementKind::Drive => vtl_sim::ElementKind::Drive,
            ElementKind::Slot => vtl_sim::ElementKind::Slot,
            ElementKind::MailSlot => vtl_sim::ElementKind::MailSlot,
        },
        index: e.index,
    }
}

fn kind_from(k: vtl_sim::ElementKind) -> ElementKind {
    el_from(vtl_sim::Element { kind: k, index: 0 }).kind
}

fn map_err(e: VtlError) -> ChangerError {
    match e {
        VtlError::NotInLibrary { barcode } => ChangerError::NotInLibrary { barcode },
        VtlError::NoSuchElement { element } => ChangerError::NoSuchElement {
            element: el_from(element),
        },
        VtlError::SourceEmpty { element } => ChangerError::SourceEmpty {
            element: el_from(element),
        },
        VtlError::DestinationFull { element, barcode } => ChangerError::DestinationFull {
            element: el_from(element),
            barcode,
        },
        VtlError::NoFreeElement { kind } => ChangerError::NoFreeElement {
            kind: kind_from(kind),
        },
        VtlError::CleaningCartridge { barcode } => ChangerError::CleaningCartridge { barcode },
        VtlError::Busy { element, detail } => ChangerError::Busy {
            element: el_from(element),
            detail,
        },
        VtlError::DuplicateBarcode { barcode } => ChangerError::DuplicateBarcode { barcode },
        VtlError::Io { op, path, source } => ChangerError::Io {
            op,
            source: std::io::Error::new(source.kind(), format!("{}: {source}", path.display())),
        },
        e @ (VtlError::NoLibrary { .. }
        | VtlError::LibraryExists { .. }
        | VtlError::NotOutside { .. }
        | VtlError::NotInMailSlot { .. }
        | VtlError::BadConfig(_)
        | VtlError::Corrupt { .. }) => ChangerError::Other(e.to_string()),
        other => ChangerError::Drive(map_drive_err(other)),
    }
}

/// Synthetic SMC element addresses: mail slots from 0x10, drives from 0x100, storage
/// slots from 0x1000 (real libraries use similar separate ranges).
fn address(kind: ElementKind, index: usize) -> u16 {
    let base = match kind {
        ElementKind::MailSlot => 0x10,
        ElementKind::Drive => 0x100,
        ElementKind::Slot => 0x1000,
    };
    (base + index).min(u16::MAX as usize) as u16
}

fn rfc3339(secs: u64) -> Option<String> {
    chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

impl VirtualLibrary {
    /// Create a library in `dir` (an error if one already exists there).
    pub fn create(dir: &Path, cfg: &VirtualLibraryConfig) -> ChangerResult<Self> {
        let c = LibraryConfig {
            slots: cfg.slots,
            drives: cfg.drives,
            mail_slots: cfg.mail_slots,
            cartridges: cfg.cartridges,
            capacity: cfg.capacity,
            early_warning: cfg.early_warning,
        };
        Ok(VirtualLibrary {
            lib: Library::create(dir, &c).map_err(map_err)?,
        })
    }

    /// Open the library in `dir`.
    pub fn open(dir: &Path) -> ChangerResult<Self> {
        Ok(VirtualLibrary {
            lib: Library::open(dir).map_err(map_err)?,
        })
    }

    pub fn exists(dir: &Path) -> bool {
        Library::exists(dir)
    }

    pub fn dir(&self) -> &Path {
        self.lib.dir()
    }

    /// The library's shape and cartridge defaults. If the state cannot be read, the
    /// defaults are returned (every other call reports the error).
    pub fn config(&self) -> VirtualLibraryConfig {
        match self.lib.state() {
            Ok(st) => VirtualLibraryConfig {
                slots: st.slots.len(),
                drives: st.drives.len(),
                mail_slots: st.mail_slots.len(),
                cartridges: st.initial_cartridges,
                capacity: st.capacity,
                early_warning: st.early_warning,
            },
            Err(_) => VirtualLibraryConfig::default(),
        }
    }

    /// Give every drive a speed model (see `vtl_sim::DriveModel`), or none.
    pub fn set_drive_model(&mut self, model: Option<vtl_sim::DriveModel>) -> ChangerResult<()> {
        self.lib.set_drive_model(None, model).map_err(map_err)
    }

    /// The speed model of drive `drive`, None when it is unthrottled.
    pub fn drive_model(&self, drive: usize) -> ChangerResult<Option<vtl_sim::DriveModel>> {
        self.lib.drive_model(drive).map_err(map_err)
    }

    /// The saved statistics of a modelled drive (repositions, underruns, time).
    pub fn drive_stats(&self, drive: usize) -> ChangerResult<vtl_sim::DriveStats> {
        self.lib.drive_stats(drive).map_err(map_err)
    }

    /// Add blank cartridges into free slots, then free mail slots.
    pub fn add_cartridges(
        &mut self,
        count: usize,
        capacity: Option<u64>,
    ) -> ChangerResult<Vec<String>> {
        self.lib
            .add_cartridges(count, capacity, false)
            .map_err(map_err)
    }

    /// Add blank WORM (append-only) cartridges.
    pub fn add_worm_cartridges(
        &mut self,
        count: usize,
        capacity: Option<u64>,
    ) -> ChangerResult<Vec<String>> {
        self.lib
            .add_cartridges(count, capacity, true)
            .map_err(map_err)
    }

    /// Add a cleaning cartridge (barcode `CLNnnnCU`); it cannot be loaded for data.
    pub fn add_cleaning_cartridge(&mut self) -> ChangerResult<String> {
        self.lib.add_cleaning_cartridge().map_err(map_err)
    }

    /// Every cartridge, including those outside the library.
    pub fn cartridges(&self) -> ChangerResult<Vec<CartridgeInfo>> {
        Ok(self
            .lib
            .cartridges()
            .map_err(map_err)?
            .into_iter()
            .map(|r| CartridgeInfo {
                barcode: r.meta.barcode,
                location: r.location.map(el_from),
                capacity: r.meta.capacity,
                bytes_used: r.bytes_used,
                load_count: r.meta.load_count,
                bytes_written: r.meta.bytes_written,
                bytes_read: r.meta.bytes_read,
                last_written: r.meta.last_written.and_then(rfc3339),
                application_label: r.meta.application_label,
                worm: r.meta.worm,
                write_protected: r.meta.write_protected,
            })
            .collect())
    }

    pub fn set_application_label(&mut self, barcode: &str, label: &str) -> ChangerResult<()> {
        self.lib
            .set_application_label(barcode, label)
            .map_err(map_err)
    }

    /// Take a cartridge in a mail slot out of the library (its files move to `outside/`).
    pub fn remove_from_mail_slot(&mut self, barcode: &str) -> ChangerResult<()> {
        self.lib.remove_from_mail_slot(barcode).map_err(map_err)
    }

    /// Bring a cartridge from outside back into a free mail slot.
    pub fn insert_into_mail_slot(&mut self, barcode: &str) -> ChangerResult<ElementRef> {
        self.lib
            .insert_into_mail_slot(barcode)
            .map(el_from)
            .map_err(map_err)
    }

    /// Inject faults (tests); a drive holding the cartridge sees them on its next op.
    pub fn set_faults(&mut self, barcode: &str, faults: vtl_sim::Faults) -> ChangerResult<()> {
        self.lib.set_faults(barcode, &faults).map_err(map_err)
    }

    pub fn set_write_protect(&mut self, barcode: &str, on: bool) -> ChangerResult<()> {
        self.lib.set_write_protect(barcode, on).map_err(map_err)
    }

    /// Where the cartridge's files are (in the library or outside it).
    pub fn cartridge_dir(&self, barcode: &str) -> PathBuf {
        self.lib.cartridge_dir(barcode)
    }
}

impl Changer for VirtualLibrary {
    fn name(&self) -> String {
        format!("virtual library {}", self.lib.dir().display())
    }

    fn inventory(&mut self) -> ChangerResult<Inventory> {
        let st = self.lib.state().map_err(map_err)?;
        let mk = |kind, index, barcode: Option<&String>, source: Option<ElementRef>| Element {
            element: ElementRef { kind, index },
            address: address(kind, index),
            barcode: barcode.cloned(),
            source,
        };
        Ok(Inventory {
            drives: st
                .drives
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    mk(
                        ElementKind::Drive,
                        i,
                        d.barcode.as_ref(),
                        d.source.map(el_from),
                    )
                })
                .collect(),
            slots: st
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| mk(ElementKind::Slot, i, s.as_ref(), None))
                .collect(),
            mail_slots: st
                .mail_slots
                .iter()
                .enumerate()
                .map(|(i, s)| mk(ElementKind::MailSlot, i, s.as_ref(), None))
                .collect(),
        })
    }

    fn move_medium(&mut self, from: ElementRef, to: ElementRef) -> ChangerResult<()> {
        self.lib
            .move_medium(el_to(from), el_to(to))
            .map_err(map_err)
    }
}

impl TapeLibrary for VirtualLibrary {
    fn changer(&mut self) -> &mut dyn Changer {
        self
    }

    fn open_drive(&mut self, index: usize) -> ChangerResult<Box<dyn TapeDrive>> {
        let d = self.lib.open_drive(index).map_err(map_err)?;
        Ok(Box::new(VirtualDrive::new(d, self.lib.dir())))
    }

    fn drive_count(&self) -> usize {
        self.lib.state().map(|s| s.drives.len()).unwrap_or(0)
    }

    /// The library's model of the drive, or the one the environment gives every drive
    /// of this process (`VTL_SIM_DRIVE_MODEL`), as the drive itself takes it.
    fn speed_model(&self, index: usize) -> Option<vtl_sim::DriveModel> {
        match vtl_sim::DriveModel::from_env() {
            Ok(Some(m)) => m,
            _ => self.lib.drive_model(index).ok().flatten(),
        }
    }
}
