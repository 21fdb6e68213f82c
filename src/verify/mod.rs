//! The verify job: read back without writing anything but the catalog's verdict.
//!
//! * [`verify_image`]: every part and record of one image, with every check a restore
//!   makes (CRCs, AEAD tags, image/part/sequence continuity, trailer counts) and the
//!   content digest against the trailer and the catalog. On an integrity failure the
//!   image is marked 'corrupt' in the catalog, so no later backup builds on it and no
//!   restore uses it.
//! * [`verify_media`]: every tape file of one cartridge (label, image parts, catalog
//!   snapshots, end-of-session markers), reported per tape file. Blocks are
//!   independent, so a damaged record is reported and the walk goes on.
//!
//! `image.rs` holds the first, `media.rs` the second.

mod image;
mod media;

pub use image::{image_pull_list, verify_image, ImageVerifyReport};
pub use media::{
    verify_media, LabelInfo, MediaVerifyReport, TapeFileReport, MAX_PROBLEMS_PER_FILE,
};
