//! tapevault: block-level backups of virtual machine disks to tape.
pub mod backup;
pub mod catalog;
pub mod changer;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod config_pools;
pub mod crypto;
pub mod drive;
pub mod error;
pub mod extents;
pub mod home;
pub mod locks;
pub mod media;
pub mod pipeline;
pub mod progress;
pub mod source;
