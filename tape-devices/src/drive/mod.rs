//! The tape drive boundary.
//!
//! [`TapeDrive`] is shaped after what the Linux `st` driver offers on a non-rewinding
//! device in variable-block mode, so that `st.rs` (real drives) and `virtual.rs` (the
//! file-backed virtual library) implement the same trait and the same conformance suite
//! runs against both. Conditions that are normal on tape (a filemark, end of data, early
//! warning) are values the caller must match; real failures are [`DriveError`]s.

use std::fmt;
use std::time::Duration;

pub mod conformance;
pub mod st;
pub mod r#virtual;

/// Largest block tapevault ever writes or expects to read (8 MiB). Real drives and HBAs
/// often limit blocks to 1 MiB or less; the writer's record size is chosen below
/// [`TapeDrive::max_block_size`].
pub const MAX_BLOCK_SIZE: usize = 8 * 1024 * 1024;

/// The outcome of reading one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A block of this many bytes was read into the start of the buffer.
    Block(usize),
    /// A filemark was read (a zero-length read in st terms); the position is now just
    /// past it.
    Filemark,
    /// End of recorded data (blank check). The position does not move.
    EndOfData,
}

/// The outcome of a successful write of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The block was written.
    Written,
    /// The block was written and the tape is now inside the early-warning zone: the
    /// writer should finish what it has in hand (trailer, filemark) and go on to the
    /// next volume.
    WrittenEarlyWarning,
}

/// Position of the tape, as READ POSITION (logical object) and st's MTIOCGET report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Position {
    /// Logical object number from BOT: every block and every filemark counts one.
    pub block: u64,
    /// Tape file number (filemarks passed since BOT).
    pub file: u64,
    /// Block number within the current tape file.
    pub block_in_file: u64,
}

/// Status flags of a drive, as `mt status` would show them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DriveStatus {
    pub loaded: bool,
    pub bot: bool,
    pub eod: bool,
    pub at_filemark: bool,
    pub early_warning: bool,
    pub write_protected: bool,
    pub worm: bool,
    /// None when the drive cannot report a position (no READ POSITION support and lost
    /// track of it).
    pub position: Option<Position>,
    /// The loaded cartridge's barcode when the drive or library knows it.
    pub barcode: Option<String>,
    /// Drive-specific detail (vendor, model, st's general status word, ...).
    pub detail: Option<String>,
}

/// Why a space operation stopped before it moved the full count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SpaceStop {
    /// Beginning of tape was reached.
    BeginningOfTape,
    /// End of data was reached.
    EndOfData,
    /// A filemark was met while spacing over blocks. Spacing forward leaves the
    /// position just past the filemark; spacing backward leaves it just before it (on
    /// the BOT side), as SSC and st do.
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

/// What a drive can do; `tape probe` prints this. Callers fall back where a capability
/// is missing (e.g. spacing from a known filemark instead of LOCATE).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    pub read_position: bool,
    pub locate: bool,
    pub early_warning: bool,
    pub hardware_encryption: bool,
    pub min_block_size: usize,
    pub max_block_size: usize,
}

/// A data key for the drive's own (hardware) encryption, SSC-4 security protocol 0x20:
/// AES-256-GCM done by the drive on every block it writes (with `encrypt`) and reads.
/// The key-associated data the drive records with each encrypted block is `kad` (the
/// key's fingerprint, never the key). Reading runs in MIXED decryption mode: clear
/// blocks (a volume label written before the key was set) read as they are. The key
/// bytes are wiped when this is dropped.
pub struct DataKey {
    pub key: [u8; 32],
    pub kad: [u8; 16],
    /// Encrypt what is written (a writer); without it the drive only decrypts.
    pub encrypt: bool,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("kad", &self.kad)
            .field("encrypt", &self.encrypt)
            .finish_non_exhaustive()
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        for b in self.key.iter_mut() {
            // SAFETY: a valid, aligned, exclusively borrowed byte.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Failures at the drive boundary. Each carries what a person needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("no cartridge is loaded in {drive}")]
    NoMedium { drive: String },
    #[error("the block at this position is {block_len} bytes but the read buffer holds only {buffer_len}")]
    BufferTooSmall { block_len: usize, buffer_len: usize },
    #[error("early warning: the tape is near its end; nothing was written, finish with a trailer and change volumes")]
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
    #[error("the drive is in use by another process ({detail})")]
    Busy { detail: String },
    #[error("the drive does not support {op}")]
    Unsupported { op: &'static str },
    #[error("locate to block {block} failed: it is beyond end of data")]
    BeyondEndOfData { block: u64 },
    #[error("{op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The block is encrypted by the drive and the drive holds no key that opens it.
    #[error("the block at {block} was encrypted by the drive and the drive has no key that decrypts it (load the key the cartridge was written with)")]
    EncryptedNoKey { block: u64 },
    #[error("{0}")]
    Other(String),
}

pub type DriveResult<T> = Result<T, DriveError>;

/// A tape drive with a cartridge (possibly) loaded: SSC semantics in variable-block mode.
///
/// Writing anywhere but at end of data discards everything after that point, as tape
/// does. Blocks are written whole: one `write_block` is one tape block.
pub trait TapeDrive: Send {
    /// A human-readable name ("vtl drive 0", "/dev/nst0").
    fn name(&self) -> String;

    /// What this drive supports.
    fn capabilities(&mut self) -> DriveResult<Capabilities>;

    /// Read the next block into `buf`. A block larger than `buf` fails with
    /// [`DriveError::BufferTooSmall`] naming its size, and the position does not move.
    fn read_block(&mut self, buf: &mut [u8]) -> DriveResult<ReadOutcome>;

    /// Write one block at the current position (discarding anything after it).
    /// In the early-warning zone st's contract applies: the write that enters the zone
    /// returns [`WriteOutcome::WrittenEarlyWarning`]; the next write fails once with
    /// [`DriveError::EarlyWarning`] and writes nothing; after that writes are allowed
    /// again until the hard end ([`DriveError::EndOfMedium`]).
    fn write_block(&mut self, data: &[u8]) -> DriveResult<WriteOutcome>;

    /// Write one block given as consecutive parts (a record's header and its payload,
    /// held apart by the host): exactly [`Self::write_block`] of their concatenation. A
    /// drive that can take the parts as they are overrides this; the default joins them
    /// (a tape block must reach the device in one write), and passes a single part on
    /// as it is.
    fn write_block_parts(&mut self, parts: &[&[u8]]) -> DriveResult<WriteOutcome> {
        match parts {
            [one] => self.write_block(one),
            _ => self.write_block(&parts.concat()),
        }
    }

    /// Write `count` filemarks. With `immediate == false` the drive's buffer is flushed
    /// to the medium before returning (st's MTWEOF), with `true` it may not be (MTWEOFI).
    fn write_filemarks(&mut self, count: u32, immediate: bool) -> DriveResult<()>;

    /// Make every completed write durable on the medium.
    fn flush(&mut self) -> DriveResult<()>;

    fn rewind(&mut self) -> DriveResult<()>;

    /// Space over `count` blocks, forward when positive, backward when negative (st's
    /// MTFSR/MTBSR). Stopping early gives [`DriveError::SpaceStopped`] with the residual.
    fn space_blocks(&mut self, count: i64) -> DriveResult<()>;

    /// Space over `count` filemarks, forward when positive (ending just past the n-th
    /// filemark, st's MTFSF) or backward when negative (ending just before it, on its
    /// BOT side, st's MTBSF).
    fn space_filemarks(&mut self, count: i64) -> DriveResult<()>;

    /// Space to end of recorded data, ready to append.
    fn space_to_eod(&mut self) -> DriveResult<()>;

    /// Locate to a logical object number (blocks and filemarks both count).
    fn locate(&mut self, block: u64) -> DriveResult<()>;

    /// The current position.
    fn position(&mut self) -> DriveResult<Position>;

    fn status(&mut self) -> DriveResult<DriveStatus>;

    /// Rewind and unload the cartridge (st's MTOFFL).
    fn unload(&mut self) -> DriveResult<()>;

    /// Erase from the current position on (SSC ERASE, short form; st's MTERASE 0): end
    /// of data is written here and everything after it is gone. At BOT the cartridge
    /// reads as blank afterwards. Drives without it say so.
    fn erase(&mut self) -> DriveResult<()> {
        Err(DriveError::Unsupported { op: "erase" })
    }

    /// Load `key` into the drive's hardware encryption (`Some`), or turn it off and drop
    /// the key (`None`). Drives without hardware encryption say so
    /// ([`DriveError::Unsupported`]); check [`Capabilities::hardware_encryption`] first
    /// for the reason in plain words.
    fn set_data_key(&mut self, key: Option<&DataKey>) -> DriveResult<()> {
        let _ = key;
        Err(DriveError::Unsupported {
            op: "hardware encryption",
        })
    }

    /// Largest block this drive accepts.
    fn max_block_size(&self) -> usize;
}
