//! The media changer boundary (SMC): slots, drives, import/export (mail) slots and
//! barcoded cartridges. `virtual.rs` drives the vtl-sim library; `scsi.rs` a real
//! changer through SG_IO.

use std::fmt;

use crate::drive::{DriveError, TapeDrive};

pub mod scsi;
pub mod r#virtual;

/// The kind of an element of a library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElementKind {
    Drive,
    Slot,
    MailSlot,
}

/// One element, by kind and 0-based index within that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ElementRef {
    pub kind: ElementKind,
    pub index: usize,
}

impl ElementRef {
    pub fn drive(index: usize) -> Self {
        ElementRef {
            kind: ElementKind::Drive,
            index,
        }
    }
    pub fn slot(index: usize) -> Self {
        ElementRef {
            kind: ElementKind::Slot,
            index,
        }
    }
    pub fn mail_slot(index: usize) -> Self {
        ElementRef {
            kind: ElementKind::MailSlot,
            index,
        }
    }
}

impl fmt::Display for ElementRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            ElementKind::Drive => "drive",
            ElementKind::Slot => "slot",
            ElementKind::MailSlot => "mail slot",
        };
        write!(f, "{k} {}", self.index)
    }
}

/// The state of one element.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Element {
    pub element: ElementRef,
    /// The SCSI element address (real changers) or a synthetic one (virtual).
    pub address: u16,
    /// The barcode (volume tag) of the cartridge in it; `Some("")` for a cartridge
    /// without a readable label.
    pub barcode: Option<String>,
    /// Where the cartridge came from (SMC's source element), when known.
    pub source: Option<ElementRef>,
}

impl Element {
    pub fn is_full(&self) -> bool {
        self.barcode.is_some()
    }
}

/// A whole inventory, as READ ELEMENT STATUS with volume tags gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Inventory {
    pub drives: Vec<Element>,
    pub slots: Vec<Element>,
    pub mail_slots: Vec<Element>,
}

impl Inventory {
    /// Where the cartridge with this barcode is.
    pub fn find(&self, barcode: &str) -> Option<&Element> {
        self.all().find(|e| e.barcode.as_deref() == Some(barcode))
    }

    pub fn all(&self) -> impl Iterator<Item = &Element> {
        self.drives
            .iter()
            .chain(&self.slots)
            .chain(&self.mail_slots)
    }

    pub fn first_empty(&self, kind: ElementKind) -> Option<ElementRef> {
        let list = match kind {
            ElementKind::Drive => &self.drives,
            ElementKind::Slot => &self.slots,
            ElementKind::MailSlot => &self.mail_slots,
        };
        list.iter().find(|e| !e.is_full()).map(|e| e.element)
    }
}

/// Barcodes starting with this prefix are cleaning cartridges, refused for data.
pub const CLEANING_PREFIX: &str = "CLN";

#[derive(Debug, thiserror::Error)]
pub enum ChangerError {
    #[error("no cartridge with barcode {barcode} is in the library")]
    NotInLibrary { barcode: String },
    #[error("{element} does not exist")]
    NoSuchElement { element: ElementRef },
    #[error("{element} is empty")]
    SourceEmpty { element: ElementRef },
    #[error("{element} is full (holds {barcode})")]
    DestinationFull {
        element: ElementRef,
        barcode: String,
    },
    #[error("no free {kind:?} element")]
    NoFreeElement { kind: ElementKind },
    #[error("{barcode} is a cleaning cartridge and cannot hold data")]
    CleaningCartridge { barcode: String },
    #[error("{element} is in use by another process ({detail})")]
    Busy { element: ElementRef, detail: String },
    #[error("a cartridge with barcode {barcode} already exists")]
    DuplicateBarcode { barcode: String },
    #[error("the changer does not support {op}")]
    Unsupported { op: &'static str },
    #[error("{op} timed out")]
    Timeout { op: &'static str },
    #[error(transparent)]
    Drive(#[from] DriveError),
    #[error("{op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type ChangerResult<T> = Result<T, ChangerError>;

/// A media changer. Moves are by element; `load`/`unload`/`export`/`import` are built
/// on them and may be overridden by backends that have better primitives.
pub trait Changer: Send {
    fn name(&self) -> String;

    fn inventory(&mut self) -> ChangerResult<Inventory>;

    /// Move a cartridge from one element to another (SMC MOVE MEDIUM).
    fn move_medium(&mut self, from: ElementRef, to: ElementRef) -> ChangerResult<()>;

    /// Load the cartridge with this barcode into drive `drive`. If the drive holds
    /// another cartridge, it is first unloaded to its home slot.
    fn load(&mut self, barcode: &str, drive: usize) -> ChangerResult<()> {
        if barcode.starts_with(CLEANING_PREFIX) {
            return Err(ChangerError::CleaningCartridge {
                barcode: barcode.to_string(),
            });
        }
        let inv = self.inventory()?;
        let from = inv
            .find(barcode)
            .ok_or_else(|| ChangerError::NotInLibrary {
                barcode: barcode.to_string(),
            })?
            .element;
        let target = ElementRef::drive(drive);
        if from == target {
            return Ok(());
        }
        let d = inv
            .drives
            .get(drive)
            .ok_or(ChangerError::NoSuchElement { element: target })?;
        if d.is_full() {
            self.unload(drive)?;
        }
        self.move_medium(from, target)
    }

    /// Unload drive `drive` to the slot the cartridge came from, or the first free slot.
    /// Returns the slot it went to, or None if the drive was empty.
    fn unload(&mut self, drive: usize) -> ChangerResult<Option<ElementRef>> {
        let inv = self.inventory()?;
        let target = ElementRef::drive(drive);
        let d = inv
            .drives
            .get(drive)
            .ok_or(ChangerError::NoSuchElement { element: target })?;
        if !d.is_full() {
            return Ok(None);
        }
        let home = d
            .source
            .filter(|s| {
                s.kind == ElementKind::Slot
                    && inv
                        .slots
                        .get(s.index)
                        .map(|e| !e.is_full())
                        .unwrap_or(false)
            })
            .or_else(|| inv.first_empty(ElementKind::Slot))
            .ok_or(ChangerError::NoFreeElement {
                kind: ElementKind::Slot,
            })?;
        self.move_medium(target, home)?;
        Ok(Some(home))
    }

    /// Move a cartridge to a free mail slot for removal. Returns the mail slot.
    fn export(&mut self, barcode: &str) -> ChangerResult<ElementRef> {
        let inv = self.inventory()?;
        let from = inv
            .find(barcode)
            .ok_or_else(|| ChangerError::NotInLibrary {
                barcode: barcode.to_string(),
            })?
            .element;
        if from.kind == ElementKind::MailSlot {
            return Ok(from);
        }
        if from.kind == ElementKind::Drive {
            self.unload(from.index)?;
            return self.export(barcode);
        }
        let to = inv
            .first_empty(ElementKind::MailSlot)
            .ok_or(ChangerError::NoFreeElement {
                kind: ElementKind::MailSlot,
            })?;
        self.move_medium(from, to)?;
        Ok(to)
    }

    /// Move every cartridge in the mail slots into free storage slots. Returns the
    /// barcodes imported.
    fn import(&mut self) -> ChangerResult<Vec<String>> {
        let inv = self.inventory()?;
        let mut free: Vec<ElementRef> = inv
            .slots
            .iter()
            .filter(|e| !e.is_full())
            .map(|e| e.element)
            .collect();
        free.reverse();
        let mut done = Vec::new();
        for m in inv.mail_slots.iter().filter(|e| e.is_full()) {
            let to = free.pop().ok_or(ChangerError::NoFreeElement {
                kind: ElementKind::Slot,
            })?;
            self.move_medium(m.element, to)?;
            done.push(m.barcode.clone().unwrap_or_default());
        }
        Ok(done)
    }
}

/// A library: a changer plus the drives it serves. Jobs use this and never need to know
/// whether the library is virtual or real.
pub trait TapeLibrary: Send {
    fn changer(&mut self) -> &mut dyn Changer;
    /// Open drive `index` for exclusive use by this process (held until dropped).
    fn open_drive(&mut self, index: usize) -> ChangerResult<Box<dyn TapeDrive>>;
    fn drive_count(&self) -> usize;
    /// The speed model of drive `index` when the library knows it (a virtual drive
    /// given one); None for a real drive, whose speeds the host is not told.
    fn speed_model(&self, index: usize) -> Option<vtl_sim::DriveModel> {
        let _ = index;
        None
    }
}
