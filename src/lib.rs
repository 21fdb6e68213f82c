//! tapevault: block-level backups of virtual machine disks to tape.
pub mod backup;
pub mod catalog;
pub mod cli;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod events;
pub mod extents;
pub mod home;
pub mod media;
pub mod pipeline;
pub mod rebuild;
pub mod restore;
pub mod source;
pub mod synthetic;
pub mod timefmt;
pub mod verify;
