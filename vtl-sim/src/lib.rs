//! vtl-sim: file-backed virtual tape cartridges, drives and a media changer.
//!
//! A [`Cartridge`] behaves like an SSC tape in variable-block mode as the Linux `st`
//! driver presents it (filemarks, spacing with residuals, end of data, early warning,
//! WORM, write protect), stores blocks so that any position is reached in O(1) or
//! O(log n), survives the death of the writing process at any instant, and takes
//! injected faults. It writes its block data behind the host ([`WriteBehind`]: the disk
//! works while the host writes, at most about 256 MiB left dirty), so a flush has little
//! left to write; only a flush makes data durable. A [`Library`] is an SMC changer over such cartridges with slots,
//! drives and mail slots, persisted in a directory and locked across processes.
//!
//! A drive can be given a [`DriveModel`] (native speed, speed-matching range, buffer,
//! reposition penalty): writes then take the time such a drive would, and a host too
//! slow to keep it streaming makes it reposition, counted in [`DriveStats`].
//!
//! The crate knows nothing of tapevault's on-tape format.

mod cartridge;
mod drive_model;
mod error;
mod library;
mod meta;
mod writeback;

pub use cartridge::{
    CartStatus, Cartridge, Pos, Read, WriteBehind, Written, DEFAULT_OPERATION_TIMEOUT,
    MAX_BLOCK_SIZE,
};
pub use drive_model::{
    Clock, DriveModel, DriveSim, DriveStats, SystemClock, DEFAULT_DRIVE_BUFFER, DEFAULT_REPOSITION,
    DRIVE_MODEL_ENV,
};
pub use error::{Element, ElementKind, SpaceStop, VtlError, VtlResult};
pub use library::{
    clamp_early_warning, CartridgeRecord, Drive, DriveSlot, Library, LibraryConfig, LibraryState,
};
pub use meta::{CartridgeMeta, FaultOp, Faults, Hang, CARTRIDGE_FORMAT_VERSION};
