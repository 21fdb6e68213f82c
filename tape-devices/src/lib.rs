//! Tape devices, apart from the business: the [`drive::TapeDrive`] trait with the Linux
//! `st` driver and the virtual drive, the [`changer::Changer`] / [`changer::TapeLibrary`]
//! traits with the SCSI media changer (SG_IO) and the virtual library, and the SCSI
//! plumbing under them (CDB builders, sense decoding, SMC element status, SSC-4
//! encryption pages).
//!
//! This crate knows nothing of pools, images, records or the catalog: it moves blocks,
//! filemarks and cartridges. Tape conditions that are normal on tape (filemark, end of
//! data, early warning) are values; real failures are typed errors.
pub mod changer;
pub mod drive;
pub mod scsi;
