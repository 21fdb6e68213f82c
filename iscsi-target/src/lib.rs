//! iscsi-target: an iSCSI target (RFC 7143) serving the tape drives (SSC) and the media
//! changer (SMC) of a vtl-sim virtual tape library.
//!
//! Layers, bottom up: [`pdu`] (the wire format), [`params`] (login key negotiation),
//! [`scsi`] (the transport-independent SCSI layer: the [`scsi::LogicalUnit`] trait,
//! sense data, unit attentions), [`ssc`] and [`smc`] (the logical units over vtl-sim),
//! [`target`] (listener, login, full feature phase) and [`initiator`] (a small
//! initiator for tests and benchmarks).
//!
//! ```no_run
//! use iscsi_target::{Target, TargetConfig};
//! let handle = Target::serve(TargetConfig::new("/path/to/library")).unwrap();
//! println!("serving {} on {}", handle.target_name(), handle.local_addr());
//! handle.shutdown().unwrap();
//! ```

pub mod encryption;
pub mod initiator;
pub mod params;
pub mod pdu;
pub mod scsi;
pub mod smc;
pub mod ssc;
pub mod target;

pub use scsi::{LogicalUnit, LunTable, Nexus, Response, Sense};
pub use target::{Handle, ServeError, Target, TargetConfig, DEFAULT_PORT, DEFAULT_TARGET_NAME};
