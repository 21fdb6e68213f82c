//! Errors of the simulator. Conditions a real drive reports through sense data are
//! variants here so the adapter can map them one to one.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why a space operation stopped before it moved the full count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceStop {
    BeginningOfTape,
    EndOfData,
    /// Forward: positioned just past the filemark; backward: on its BOT side.
    Filemark,
}

impl fmt::Display for SpaceStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpaceStop::BeginningOfTape => "beginning of tape",
            SpaceStop::EndOfData => "end of data",
            SpaceStop::Filemark => "a filemark",
        })
    }
}

/// The kind of a library element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElementKind {
    Drive,
    Slot,
    MailSlot,
}

/// One element of the library by kind and 0-based index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Element {
    pub kind: ElementKind,
    pub index: usize,
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            ElementKind::Drive => "drive",
            ElementKind::Slot => "slot",
            ElementKind::MailSlot => "mail slot",
        };
        write!(f, "{k} {}", self.index)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VtlError {
    #[error("no cartridge is loaded in {drive}")]
    NoMedium { drive: String },
    #[error("the block at this position is {block_len} bytes but the read buffer holds only {buffer_len}")]
    BufferTooSmall { block_len: usize, buffer_len: usize },
    #[error("block of {len} bytes refused: blocks must be 1 to {max} bytes")]
    BadBlockSize { len: usize, max: usize },
    #[error("early warning: the tape is near its end; nothing was written")]
    EarlyWarning,
    #[error("end of medium: the cartridge is full, nothing was written")]
    EndOfMedium,
    #[error("{op} stopped at {stop} with {residual} not done")]
    SpaceStopped {
        op: &'static str,
        stop: SpaceStop,
        residual: u64,
    },
    #[error("media error at block {block}: {detail}")]
    MediaError { block: u64, detail: String },
    #[error("the cartridge is write protected")]
    WriteProtected,
    #[error("the cartridge is WORM (append only): refusing to overwrite at block {block}")]
    WormOverwrite { block: u64 },
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("power cut (injected fault) during {op}: the drive lost power; the cartridge is reloaded on the next operation")]
    PowerCut { op: &'static str },
    #[error("locate to block {block} failed: it is beyond end of data")]
    BeyondEndOfData { block: u64 },
    #[error("{barcode} is a cleaning cartridge and cannot hold data")]
    CleaningCartridge { barcode: String },
    #[error("cartridge data at {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path} holds no virtual tape library (create one first)")]
    NoLibrary { path: PathBuf },
    #[error("{path} already holds a virtual tape library")]
    LibraryExists { path: PathBuf },
    #[error("no cartridge with barcode {barcode} is in the library")]
    NotInLibrary { barcode: String },
    #[error("no cartridge with barcode {barcode} is outside the library")]
    NotOutside { barcode: String },
    #[error("{barcode} is in {element}, not in a mail slot")]
    NotInMailSlot { barcode: String, element: Element },
    #[error("{element} does not exist")]
    NoSuchElement { element: Element },
    #[error("{element} is empty")]
    SourceEmpty { element: Element },
    #[error("{element} is full (holds {barcode})")]
    DestinationFull { element: Element, barcode: String },
    #[error("no free {kind:?} element")]
    NoFreeElement { kind: ElementKind },
    #[error("{element} is in use by another process ({detail})")]
    Busy { element: Element, detail: String },
    #[error("a cartridge with barcode {barcode} already exists")]
    DuplicateBarcode { barcode: String },
    #[error("invalid library configuration: {0}")]
    BadConfig(String),
    #[error("{op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type VtlResult<T> = Result<T, VtlError>;

pub(crate) fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> VtlError {
    let path = path.to_path_buf();
    move |source| VtlError::Io { op, path, source }
}
