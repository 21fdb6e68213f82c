//! Which image a reader takes for a point that has copies: the original or one of its
//! tape-to-tape copies, whichever is complete and has every cartridge in the library
//! (not offsite, exported, damaged or retired); the original first among equals. What
//! restore, verify of a point and the pull list use, and what they say they used.

use std::collections::HashSet;

use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{Catalog, ImageRow, ImageStatus, MediaState};
use crate::error::Result;

/// The image chosen to read a point from.
#[derive(Debug, Clone, Serialize)]
pub struct Chosen {
    /// The point (the original image's UUID).
    pub point: Uuid,
    /// The image read: the original, or a copy of it.
    pub image: Uuid,
    /// Set when the image read is a copy: the original it duplicates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<Uuid>,
    /// Why this one and not the original, when a copy was taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// How readable an image is now: `Ok` when every cartridge holding it is in the
/// library and usable, else the reason it is not.
fn readiness(cat: &Catalog, img: &ImageRow, present: &HashSet<String>) -> Result<Option<String>> {
    if img.status != ImageStatus::Complete {
        return Ok(Some(match &img.note {
            Some(n) => format!("it is {} ({n})", img.status),
            None => format!("it is {}", img.status),
        }));
    }
    let mut seen: Vec<String> = Vec::new();
    for s in cat.segments(img.uuid)? {
        if seen.contains(&s.barcode) {
            continue;
        }
        seen.push(s.barcode.clone());
        let m = cat.media(&s.barcode)?;
        if let Some(m) = &m {
            if matches!(m.state, MediaState::Damaged | MediaState::Retired) {
                return Ok(Some(format!("cartridge {} is {}", s.barcode, m.state)));
            }
        }
        if !present.contains(&s.barcode) {
            let loc = m.map(|m| m.location).unwrap_or_default();
            return Ok(Some(if loc.is_empty() {
                format!("cartridge {} is not in the library", s.barcode)
            } else {
                format!("cartridge {} is not in the library ({loc})", s.barcode)
            }));
        }
    }
    Ok(None)
}

/// Choose the image to read `original`'s point from (`present`: the barcodes the
/// library holds now). The first complete image whose cartridges are all in the
/// library wins, the original first; when none is, the first complete one (so the
/// pull list names what to fetch), else the original itself (its status then fails the
/// read with the reason).
pub fn choose(
    cat: &Catalog,
    original: &ImageRow,
    present: &HashSet<String>,
) -> Result<(ImageRow, Chosen)> {
    let reps = cat.representations(original)?;
    let mut not_original: Option<String> = None;
    let mut fallback: Option<ImageRow> = None;
    for r in &reps {
        match readiness(cat, r, present)? {
            None => {
                let why = (r.uuid != original.uuid).then(|| {
                    format!(
                        "the original {} cannot be read now: {}",
                        original.uuid,
                        not_original
                            .clone()
                            .unwrap_or_else(|| "it is not complete".into())
                    )
                });
                return Ok((r.clone(), chosen(original, r, why)));
            }
            Some(why) => {
                if r.uuid == original.uuid {
                    not_original = Some(why);
                }
                if fallback.is_none() && r.status == ImageStatus::Complete {
                    fallback = Some(r.clone());
                }
            }
        }
    }
    if not_original.is_none() {
        not_original = readiness(cat, original, present)?;
    }
    let pick = fallback.unwrap_or_else(|| original.clone());
    let why = (pick.uuid != original.uuid).then(|| {
        format!(
            "no image of this point has all its cartridges in the library; the original {}: {}",
            original.uuid,
            not_original.unwrap_or_default()
        )
    });
    let c = chosen(original, &pick, why);
    Ok((pick, c))
}

fn chosen(original: &ImageRow, r: &ImageRow, why: Option<String>) -> Chosen {
    Chosen {
        point: original.uuid,
        image: r.uuid,
        copy_of: r.copy_of,
        why,
    }
}
