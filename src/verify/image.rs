//! Verifying one image: every part and record, across cartridges, with the content
//! digest against the trailer and the catalog; an integrity failure marks it corrupt.

use std::collections::HashMap;

use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{Catalog, ImageKind, ImageStatus};
use crate::codec::{KeyRing, Opener};
use crate::error::{Error, ExitCode, Result};
use crate::events::{Event, Events};
use crate::media::allocate::sync_inventory;
use crate::restore::{check_pull_list, read_image, ImageRead, MediaReader, PullItem};
use tape_devices::changer::TapeLibrary;

#[derive(Debug, Clone, Serialize)]
pub struct ImageVerifyReport {
    pub image: Uuid,
    pub disk: Uuid,
    pub kind: ImageKind,
    pub ok: bool,
    /// The image's catalog status after verification.
    pub status: ImageStatus,
    pub pull_list: Vec<PullItem>,
    /// Set when the image read back clean.
    pub read: Option<ImageRead>,
    /// Why it failed (also the error the command exits with).
    pub error: Option<String>,
    /// Set when the image verified is a tape-to-tape copy: the original it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<Uuid>,
}

/// Cartridges an image is read from, in order, with where they are.
pub fn image_pull_list(
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    image: Uuid,
) -> Result<Vec<PullItem>> {
    let (_, present) = sync_inventory(cat, lib)?;
    let mut list: Vec<PullItem> = Vec::new();
    for s in cat.segments(image)? {
        if list.iter().any(|p| p.barcode == s.barcode) {
            continue;
        }
        let location = cat
            .media(&s.barcode)?
            .map(|m| m.location)
            .unwrap_or_default();
        list.push(PullItem {
            in_library: present.contains(&s.barcode),
            barcode: s.barcode,
            location,
            images: vec![image],
        });
    }
    Ok(list)
}

/// Verify one image. `Ok` carries the report whether or not the image is intact; an
/// intact image gives `ok: true`. Media (exit 4) and key (exit 5) problems are errors
/// and leave the catalog alone; integrity failures mark the image corrupt. `events`
/// hears the progress in bytes read.
pub fn verify_image(
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    image: Uuid,
    events: &dyn Events,
) -> Result<ImageVerifyReport> {
    let img = cat
        .image(image)?
        .ok_or_else(|| Error::Usage(format!("image {image} is not in the catalog")))?;
    match img.status {
        ImageStatus::Complete | ImageStatus::Corrupt => {}
        ImageStatus::Running => {
            return Err(Error::Failed(format!(
                "image {image} is still being written; verify it when its backup has finished"
            )))
        }
        other => {
            return Err(Error::Failed(format!(
                "image {image} is {other}: it never completed, so the catalog knows no segments to read (verify its cartridges with --barcode)"
            )))
        }
    }
    let pull_list = image_pull_list(cat, lib, image)?;
    check_pull_list(&pull_list)?;
    if let Some(fp) = &img.key_fingerprint {
        if !crate::backup::fp_bytes(fp).is_some_and(|b| keys.has(&b)) {
            return Err(Error::Key(format!(
                "image {image} is encrypted with key {fp}, which is not unlocked"
            )));
        }
    }
    let segments = cat.segments(image)?;
    let locations: HashMap<String, String> = pull_list
        .iter()
        .map(|p| (p.barcode.clone(), p.location.clone()))
        .collect();
    let mut reader = MediaReader::new(lib, locations);
    events.task(
        format!("verify {}", &image.to_string()[..8]),
        img.stored_bytes,
    );
    reader.report_progress(events);
    let mut opener = Opener::new()?;
    let result = read_image(
        &mut reader,
        keys,
        &mut opener,
        &img,
        &segments,
        &|_| true,
        &mut |_, _| Ok(()),
    );
    let released = reader.release();
    events.emit(Event::TaskEnded);
    let mut report = ImageVerifyReport {
        image,
        disk: img.disk_uuid,
        kind: img.kind,
        ok: false,
        status: img.status,
        pull_list,
        read: None,
        error: None,
        copy_of: img.copy_of,
    };
    match result {
        Ok(read) if read.digest_checked => {
            released?;
            report.ok = true;
            report.read = Some(read);
            Ok(report)
        }
        Ok(_) => {
            released?;
            // Only an image without records can come back unchecked: its catalog
            // digest is not that of no records.
            let msg = format!(
                "image {image} has no records on tape but its catalog digest is not that of an empty image"
            );
            cat.mark_corrupt(image, &msg)?;
            report.status = ImageStatus::Corrupt;
            report.error = Some(msg);
            Ok(report)
        }
        Err(e) if e.exit_code() == ExitCode::Integrity => {
            let msg = format!("verify: {e}");
            cat.mark_corrupt(image, &msg)?;
            report.status = ImageStatus::Corrupt;
            report.error = Some(e.to_string());
            Ok(report)
        }
        Err(e) => Err(e),
    }
}
