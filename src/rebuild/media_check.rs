//! `catalog check --media`: the catalog against what the cartridges really hold.

use serde::Serialize;
use tape_formats::{decode_block, Block, BlockSource, ReadStatus};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::error::{Context, Result};
use crate::media::volume::{read_label, LabelRead};
use crate::media::{mount, unmount, DriveSource};
use tape_devices::changer::TapeLibrary;
use tape_devices::drive::TapeDrive;

/// A disagreement between the catalog and a cartridge.
#[derive(Debug, Clone, Serialize)]
pub struct MediaProblem {
    pub barcode: String,
    pub detail: String,
}

/// What `catalog check --media` looked at.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaCheck {
    pub cartridges_checked: Vec<String>,
    /// Cartridges the catalog has data on that are not in the library.
    pub not_in_library: Vec<String>,
    pub segments_checked: u64,
    pub problems: Vec<MediaProblem>,
}

/// Check every labelled cartridge in the library against the catalog: the label (volume,
/// pool, media set, sequence) and, for each segment on it, that its first and last
/// blocks hold the data records the catalog claims (image, part, sequence, tape file).
pub fn check_media(
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    present: &std::collections::HashSet<String>,
) -> Result<MediaCheck> {
    let mut out = MediaCheck::default();
    let mut buf = Vec::new();
    for row in cat.list_media(None)? {
        let Some(volume) = row.volume_uuid else {
            continue;
        };
        let bc = row.barcode.clone();
        if !present.contains(&bc) {
            if !cat.images_on_media(&bc)?.is_empty() {
                out.not_in_library.push(bc);
            }
            continue;
        }
        let mut problem = |detail: String| {
            out.problems.push(MediaProblem {
                barcode: bc.clone(),
                detail,
            })
        };
        let mut m = mount(lib, &bc, Some(&row.location))?;
        let r = (|| -> Result<u64> {
            let drive = m.drive.as_mut();
            match read_label(drive)? {
                LabelRead::Label(l) => {
                    let checks = [
                        (
                            "volume",
                            Uuid::from_bytes(l.volume_uuid).to_string(),
                            volume.to_string(),
                        ),
                        (
                            "pool",
                            l.pool_name.clone(),
                            row.pool.clone().unwrap_or_default(),
                        ),
                        (
                            "media set",
                            super::collected::nonzero(l.media_set_uuid)
                                .map(|u| u.to_string())
                                .unwrap_or_default(),
                            row.media_set_uuid
                                .map(|u| u.to_string())
                                .unwrap_or_default(),
                        ),
                        (
                            "set sequence",
                            super::collected::nonzero(l.media_set_uuid)
                                .map(|_| l.set_sequence.to_string())
                                .unwrap_or_default(),
                            row.seq_in_set.map(|s| s.to_string()).unwrap_or_default(),
                        ),
                    ];
                    for (what, tape, catalog) in checks {
                        if tape != catalog {
                            problem(format!(
                                "label says {what} {tape:?}, the catalog {catalog:?}"
                            ));
                        }
                    }
                }
                other => {
                    problem(format!(
                        "expected the label of volume {volume}, found {other:?}"
                    ));
                    return Ok(0);
                }
            }
            let mut n = 0;
            for img in cat.images_on_media(&bc)? {
                for s in cat.segments(img.uuid)? {
                    if s.barcode != bc {
                        continue;
                    }
                    n += 1;
                    for (block, seq) in [(s.first_block, s.first_seq), (s.last_block, s.last_seq)] {
                        if let Some(d) =
                            check_block(drive, &mut buf, block, s.tape_file, img.uuid, s.part, seq)?
                        {
                            problem(format!(
                                "image {} part {} record {seq} should be at logical block {block} (tape file {}): {d}",
                                img.uuid, s.part, s.tape_file
                            ));
                        }
                        if s.first_block == s.last_block {
                            break;
                        }
                    }
                }
            }
            Ok(n)
        })();
        let u = unmount(lib, m);
        out.segments_checked += r.with_context(|| format!("checking cartridge {bc}"))?;
        u?;
        out.cartridges_checked.push(row.barcode.clone());
    }
    Ok(out)
}

/// Locate to `block` and check it is the data record claimed. `Some(reason)` if not.
fn check_block(
    drive: &mut dyn TapeDrive,
    buf: &mut Vec<u8>,
    block: u64,
    tape_file: u64,
    image: Uuid,
    part: u32,
    seq: u64,
) -> Result<Option<String>> {
    if let Err(e) = drive.locate(block) {
        return Ok(Some(format!("cannot locate there: {e}")));
    }
    let p = drive.position().context("reading the position")?;
    if p.file != tape_file {
        return Ok(Some(format!("that block is in tape file {}", p.file)));
    }
    let mut src = DriveSource::new(drive, block);
    let n = match src.read_block(buf) {
        Ok(ReadStatus::Block(n)) => n,
        Ok(other) => return Ok(Some(format!("found {other:?}"))),
        Err(e) => return Ok(Some(format!("read failed: {e}"))),
    };
    Ok(match decode_block(&buf[..n]) {
        Ok(Block::Data(r)) => {
            let f = &r.fields;
            if f.image_uuid != *image.as_bytes() {
                Some(format!(
                    "it holds a record of image {}",
                    Uuid::from_bytes(f.image_uuid)
                ))
            } else if f.part != part || f.sequence != seq {
                Some(format!("it holds part {} record {}", f.part, f.sequence))
            } else {
                None
            }
        }
        Ok(other) => Some(format!("it holds a {}", other.kind_name())),
        Err(e) => Some(format!("it is damaged: {e}")),
    })
}
