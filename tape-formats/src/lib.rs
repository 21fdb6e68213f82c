//! tapevault's on-tape format, majors 1 and 2 (see `docs/FORMAT.md` for the byte-level spec).
//!
//! Pure encode/decode: bytes in, bytes out. No device I/O, no catalog, no cryptography
//! library. Encryption is done by the caller; this crate carries the fields (key
//! fingerprint, nonce, tag) and defines the associated data ([`data_record_aad`],
//! [`snapshot_chunk_aad`]) that an AEAD must authenticate.
//!
//! Every tape block is exactly one record and starts with a fixed 28-byte prefix
//! ([`PREFIX_LEN`]): magic, format major/minor, record type, lengths and a CRC-32 of the
//! header, so a reader dropped at any block can tell what it holds ([`decode_block`]).
#![forbid(unsafe_code)]

mod digest;
mod error;
mod records;
mod stream;
mod wire;

pub use digest::{
    digest_key, piece_digest, pieces, snapshot_digest, ContentDigest, DigestScheme, SnapshotDigest,
    DIGEST_KEY_CONTEXT, DIGEST_PIECE_SIZE,
};
pub use error::FormatError;
pub use records::*;
pub use stream::*;
pub use wire::{decode_prefix, resync, Prefix};

/// The 8 magic bytes every block starts with (ASCII `TAPEVLT` then 0x00).
pub const MAGIC: [u8; 8] = *b"TAPEVLT\0";
/// Newest major format version this crate reads and writes. A reader refuses blocks with
/// a major it does not know. Majors 1 and 2 share every layout; they differ only in the
/// content digest an image's header and trailer announce ([`DigestScheme`]): tapevault
/// writes the header and trailer of a new image with major 2, every other block with
/// major 1 (the lowest version that describes it).
pub const FORMAT_MAJOR: u16 = 2;
/// Oldest major format version this crate reads (and the one its blocks other than image
/// headers and trailers are written with).
pub const OLDEST_MAJOR: u16 = 1;
/// Newest minor format version this crate reads and writes. Newer minors only add
/// extension-area entries (TLV) and new record types, both of which older readers skip.
/// Minor 1 (1.1, and 2.1 for major 2) adds the image header's `copy_of` ([`EXT_COPY_OF`]) and `synthetic_of`
/// ([`EXT_SYNTHETIC_OF`]) entries.
pub const FORMAT_MINOR: u16 = 1;
/// The minor a block is written with when it uses nothing newer than 1.0: every block
/// carries the lowest minor that describes it (1 only for the header of a copy or a synthetic full),
/// so a 1.0 reader sees exactly what it always saw.
pub const BASE_MINOR: u16 = 0;

/// Length of the common block prefix (magic .. header CRC).
pub const PREFIX_LEN: usize = 28;
/// Largest block this format ever writes or accepts. 1 MiB because many real drives and
/// HBAs (and the Linux `st` driver with default settings) cannot transfer larger blocks.
pub const MAX_BLOCK_SIZE: usize = 1024 * 1024;
/// Default plain (uncompressed) data carried per data record: 512 KiB. Large enough that
/// framing costs < 0.03 %, small enough that a lost record loses little.
pub const DEFAULT_RECORD_DATA_SIZE: u32 = 512 * 1024;
/// Largest plain data per record. Leaves 64 KiB of the 1 MiB block for the header so an
/// incompressible record with the maximum number of extents still fits one block.
pub const MAX_RECORD_DATA_SIZE: u32 = 960 * 1024;
/// Most extents in one data record. 960 KiB at a 512-byte tracking granularity gives
/// 1920 data extents; with zero extents between them this bounds the header at ~35 KiB.
pub const MAX_EXTENTS_PER_RECORD: usize = 2048;
/// Largest extension area (TLV entries) in a header; fits the u16 field with room.
pub const MAX_EXTENSION_LEN: usize = 16 * 1024;
/// Longest cartridge barcode (LTO barcodes are 8 characters; leaves room for others).
pub const MAX_BARCODE_LEN: usize = 32;
/// Longest pool name.
pub const MAX_POOL_NAME_LEN: usize = 128;
/// Longest writer name and writer version strings.
pub const MAX_WRITER_LEN: usize = 64;
/// Longest VM name (vSphere allows 80, libvirt more; 255 is plenty).
pub const MAX_VM_NAME_LEN: usize = 255;
/// Longest change id (VMware change ids are ~60 characters).
pub const MAX_CHANGE_ID_LEN: usize = 512;
/// Largest key-escrow blob in a volume label (a passphrase-wrapped 32-byte key with KDF
/// parameters is < 1 KiB; 16 KiB leaves room without letting a label grow unbounded).
pub const MAX_ESCROW_LEN: usize = 16 * 1024;
/// Plain bytes per catalog-snapshot chunk written by default.
pub const DEFAULT_SNAPSHOT_CHUNK_SIZE: u32 = 512 * 1024;
