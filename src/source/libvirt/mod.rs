//! Libvirt domains through `virsh` (a subprocess against a connection URI; no libvirt
//! library): pull-mode backups with checkpoints, read over NBD.
//!
//! - [`virsh`]: running virsh, bounded in time, errors in virsh's words.
//! - [`xml`]: reading the domain and checkpoint XML virsh prints.
//! - [`domain`]: a domain's disks and their identity, checkpoints, leftover jobs.
//! - [`driver`]: the backup's `ExportDriver` contract: `virsh backup-begin` in pull
//!   mode, checkpoint epochs, checkpoint XML kept in the catalog and redefined.

pub mod domain;
pub mod driver;
pub mod virsh;
pub mod xml;
