//! Disk sources: what to back up and how to read it.
//!
//! - [`manifest`]: the VM manifest (which disks, by stable UUID).
//! - [`changed`]: changed-extents files from the hypervisor (CBT).
//! - [`disk`]: opening a disk, reading it in bounded chunks with zero detection.
//! - [`input`]: opening inputs without blocking, refusing the wrong kinds of file.
//! - [`hashscan`]: per-block BLAKE3 digest lists and change detection by hash scan.
//! - [`nbd`]: reading a disk from an NBD export (holes from `base:allocation`, dirty
//!   extents from `qemu:dirty-bitmap:NAME`).
//! - [`export`]: the driver contract for disks served as NBD exports, with epochs.

pub mod changed;
pub mod disk;
pub mod export;
pub mod hashscan;
pub mod input;
pub mod manifest;
pub mod nbd;

/// Default tracking-block size (64 KiB): the granularity of zero detection and of the
/// digest list. Matches VMware's CBT granularity order of magnitude while keeping a
/// digest list at 1/2048 of the disk size.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 * 1024;

/// Smallest tracking block accepted (one sector): anything smaller makes digest lists
/// larger than the disk data they describe is worth.
pub const MIN_BLOCK_SIZE: u64 = 512;

/// Largest tracking block accepted (64 MiB): blocks are read whole into memory.
pub const MAX_BLOCK_SIZE: u64 = 64 * 1024 * 1024;

/// Whether `block_size` is a power of two within [`MIN_BLOCK_SIZE`]..=[`MAX_BLOCK_SIZE`].
pub fn valid_block_size(block_size: u64) -> bool {
    block_size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
}
