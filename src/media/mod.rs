//! Media handling shared by the jobs: mounting cartridges in drives, volume labels,
//! keeping the catalog's view of the library current, allocation and spanning.

pub mod allocate;
pub mod drive_key;
pub mod lifecycle;
pub mod mount;
pub mod rotate;
pub mod segments;
pub mod sink;
pub mod snapshot;
pub mod vault;
pub mod volume;

pub use mount::{mount, unmount, unmount_all, Mounted};
pub use sink::{DriveSink, DriveSource};
