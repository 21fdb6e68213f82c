//! tapevault: block-level backups of virtual machine disks to tape.
pub mod changer;
pub mod drive;
pub mod extents;
pub mod source;
