//! Disk sources: what to back up and how to read it.
//!
//! - [`manifest`]: the VM manifest (which disks, by stable UUID).
//! - [`changed`]: changed-extents files from the hypervisor (CBT).
//! - [`disk`]: opening a disk, reading it in bounded chunks with zero detection.
//! - [`input`]: opening inputs without blocking, refusing the wrong kinds of file.
//! - [`hashscan`]: per-block BLAKE3 digest lists and change detection by hash scan.
//! - [`nbd`]: reading a disk from an NBD export (holes from `base:allocation`, dirty
//!   extents from `qemu:dirty-bitmap:NAME`).
//! - [`qcow2_header`]: a qcow2 image's size, cluster size and bitmaps, read from its header.
//! - [`export`]: the driver contract for disks served as NBD exports, with epochs.
//! - [`qmp`]: a running QEMU over QMP: live point-in-time exports of all its disks.
//! - [`libvirt`]: a libvirt domain through virsh: pull-mode backups with checkpoints.

pub mod changed;
pub mod disk;
pub mod export;
pub mod hashscan;
pub mod input;
pub mod libvirt;
pub mod manifest;
pub mod nbd;
pub mod qcow2_header;
pub mod qemu_image;
pub mod qmp;

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

/// Image formats a `FORMAT:/path` disk source may name (served by qemu-nbd).
pub const IMAGE_FORMATS: &[&str] = &[
    "qcow2",
    "raw",
    "vmdk",
    "vdi",
    "vhdx",
    "vpc",
    "qed",
    "parallels",
];

/// Where a disk's bytes come from, when not a raw file or block device read directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// An image file served by a private qemu-nbd (`qcow2:/path`, `vmdk:/path`, ...,
    /// `image:/path` for the format qemu-img detects).
    Image {
        path: std::path::PathBuf,
        format: Option<String>,
    },
    /// An NBD export served by someone else (`nbd://`, `nbds://`, `nbd+unix://`).
    Nbd(nbd::NbdExport),
}

impl SourceSpec {
    /// Whether `text` is written as a source (a known prefix) rather than a plain path.
    pub fn looks_like(text: &str) -> bool {
        text.starts_with("nbd") && text.contains("://")
            || text
                .split_once(':')
                .is_some_and(|(p, _)| p == "image" || IMAGE_FORMATS.contains(&p))
    }

    /// Parses `FORMAT:PATH`, `image:PATH` or an NBD URI; relative image paths resolve
    /// against `base_dir`. `tls_dir`: QEMU x509 credentials for NBD over TLS.
    pub fn parse(
        text: &str,
        base_dir: &std::path::Path,
        tls_dir: Option<&std::path::Path>,
    ) -> Result<SourceSpec, String> {
        if text.starts_with("nbd") && text.contains("://") {
            return nbd::NbdExport::parse(text, tls_dir)
                .map(SourceSpec::Nbd)
                .map_err(|e| e.to_string());
        }
        if tls_dir.is_some() {
            return Err(format!(
                "tls_creds_dir is given for {text:?}, which is not an NBD URI; TLS applies to nbd:// and nbds:// sources only"
            ));
        }
        match text.split_once(':') {
            Some((f, p)) if f == "image" || IMAGE_FORMATS.contains(&f) => {
                if p.is_empty() {
                    return Err(format!("{text:?} names no image file; write {f}:/path/to/image"));
                }
                Ok(SourceSpec::Image {
                    path: base_dir.join(p),
                    format: (f != "image").then(|| f.to_string()),
                })
            }
            _ => Err(format!(
                "{text:?} is not a disk source; write FORMAT:/path (FORMAT one of image, {}), nbd+unix:///EXPORT?socket=/PATH or nbd://HOST[:PORT]/EXPORT",
                IMAGE_FORMATS.join(", ")
            )),
        }
    }

    /// What reports call the disk.
    pub fn display_path(&self) -> std::path::PathBuf {
        match self {
            SourceSpec::Image { path, .. } => path.clone(),
            SourceSpec::Nbd(e) => std::path::PathBuf::from(e.uri()),
        }
    }

    /// The driver that serves it.
    pub fn driver(&self) -> Result<export::DriverHandle, String> {
        Ok(match self {
            SourceSpec::Image { path, format } => {
                export::DriverHandle::new(qemu_image::QemuImage::new(path, format.as_deref())?)
            }
            SourceSpec::Nbd(e) => {
                export::DriverHandle::new(export::PlainExport { export: e.clone() })
            }
        })
    }
}
