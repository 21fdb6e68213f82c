//! Running QEMU over QMP: the QMP and guest-agent clients, disk discovery, change
//! tracking epochs (persistent dirty bitmaps) and the live backup driver that exports
//! one consistent point in time of every disk over NBD.
//!
//! - [`client`]: the QMP client (greeting, capabilities, commands with ids, events).
//! - [`agent`]: the guest agent (sync, file system freeze and thaw).
//! - [`disks`]: a VM's disks and their identity (serial / wwn, never names or order).
//! - [`epoch`]: epoch bitmaps, change ids, full-or-incremental decisions.
//! - [`live`]: the driver: transaction, fleecing, NBD exports, commit, teardown.
//! - [`driver`]: the backup's `ExportDriver` contract on top of [`live`].
//! - [`leftovers`]: what a killed run left in QEMU, found by name and removed.
//! - [`guard`]: teardown on SIGINT/SIGTERM.
//! - [`error`]: typed errors.

pub mod agent;
pub mod client;
pub mod disks;
pub mod driver;
pub mod epoch;
pub mod error;
pub mod guard;
pub mod leftovers;
pub mod live;
mod wire;

pub use client::QmpClient;
pub use error::QmpError;
