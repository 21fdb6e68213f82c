//! tapevault: block-level backups of virtual machine disks to tape.
pub mod catalog;
pub mod changer;
pub mod crypto;
pub mod drive;
pub mod extents;
pub mod source;
