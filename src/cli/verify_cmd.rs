//! `tapevault verify`.

use clap::Args;

use super::shared::open_catalog;
use super::shared::{expect_drive_reads, fail_with, unlock_keys};
use super::{usage, Ctx, Terminal};
use crate::error::{Error, Result};
use crate::verify;

#[derive(Debug, Args)]
#[command(after_long_help = "\
Nothing is written except the catalog's verdict.

--image reads every part and record of the image (across cartridges), with every check a
restore makes plus the content digest against the trailer and the catalog. On an
integrity failure the image is marked corrupt in the catalog, so no restore uses it and no
later backup builds on it; the command exits 3 naming image, cartridge and block.

--barcode walks every tape file of the cartridge (volume label, image parts, catalog
snapshots, end-of-session markers) and reports each; damaged records are reported by block
and the walk goes on. Images with damage are marked corrupt (images the catalog already
knows failed are only noted). A cartridge the catalog knows as blank verifies as blank
(exit 0); blank where the catalog expects a label is damage. Exit 3 if anything is
damaged, 4 if the cartridge is not in the library, 5 if a key is missing.")]
pub struct VerifyArgs {
    /// Read back every part and record of this image (its UUID or a unique prefix).
    #[arg(long, value_name = "IMAGE", conflicts_with = "barcode")]
    pub image: Option<String>,
    /// Read back every tape file of this cartridge.
    #[arg(long, value_name = "BARCODE")]
    pub barcode: Option<String>,
}

pub fn verify(ctx: &Ctx, a: VerifyArgs) -> Result<()> {
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let mut lib = home.open_library()?;
    match (a.image, a.barcode) {
        (Some(name), None) => {
            let id = cat.resolve_image(&name, None)?;
            let mut img = cat
                .image(id)?
                .ok_or_else(|| Error::Usage(format!("image {id} is not in the catalog")))?;
            let term = Terminal::new(ctx.out);
            // An original whose cartridges are not in the library (offsite, exported)
            // is verified through a complete copy that is, said out loud.
            if img.copy_of.is_none() {
                let (_, present) = crate::media::allocate::sync_inventory(&cat, lib.as_mut())?;
                let away = cat
                    .segments(id)?
                    .iter()
                    .any(|s| !present.contains(&s.barcode));
                if away {
                    let (c, chosen) = crate::copy::choose(&cat, &img, &present)?;
                    if c.uuid != id {
                        let ev: &dyn crate::events::Events = &term;
                        ev.note(
                            crate::events::NoteKind::Decision,
                            format!(
                                "tapevault: note: verifying image {id} through its copy {}: {}",
                                c.uuid,
                                chosen.why.unwrap_or_default()
                            ),
                        );
                        img = c;
                    }
                }
            }
            let id = img.uuid;
            let fps: Vec<String> = img.key_fingerprint.iter().cloned().collect();
            let keys = unlock_keys(ctx, &home, &fps)?;
            let mut bcs: Vec<String> = Vec::new();
            for s in cat.segments(id)? {
                if !bcs.contains(&s.barcode) {
                    bcs.push(s.barcode);
                }
            }
            expect_drive_reads(ctx, &home, &cat, &bcs, &keys)?;
            let r = verify::verify_image(&cat, lib.as_mut(), &keys, id, &term)?;
            if !r.ok {
                let msg = format!(
                    "image {id} failed verification and is now marked corrupt in the catalog: {}",
                    r.error.clone().unwrap_or_default()
                );
                return fail_with(ctx, Error::Integrity(msg), &r);
            }
            ctx.out.emit(&r, || {
                let read = r.read.as_ref();
                format!(
                    "image {id} verified: {} records on {}, content digest matches the trailer and the catalog{}",
                    read.map(|x| x.records_read).unwrap_or(0),
                    read.map(|x| x.cartridges.join(", ")).unwrap_or_default(),
                    if r.status == crate::catalog::ImageStatus::Corrupt {
                        " (it stays marked corrupt in the catalog from an earlier verification)"
                    } else {
                        ""
                    }
                )
            });
            Ok(())
        }
        (None, Some(bc)) => {
            // Keys this cartridge may need: its pool's, and those of the images on it.
            let mut fps: Vec<String> = Vec::new();
            if let Some(pool) = cat.media(&bc)?.and_then(|m| m.pool) {
                if let Some(fp) = cat.pool(&pool)?.and_then(|p| p.key_fingerprint) {
                    fps.push(fp);
                }
            }
            for i in cat.images_on_media(&bc)? {
                if let Some(fp) = i.key_fingerprint {
                    if !fps.contains(&fp) {
                        fps.push(fp);
                    }
                }
            }
            let keys = unlock_keys(ctx, &home, &fps)?;
            expect_drive_reads(ctx, &home, &cat, std::slice::from_ref(&bc), &keys)?;
            let term = Terminal::new(ctx.out);
            let r = verify::verify_media(&cat, lib.as_mut(), &keys, &bc, &term)?;
            if !r.ok {
                let bad: Vec<String> = r
                    .files
                    .iter()
                    .filter(|f| !f.ok)
                    .map(|f| format!("tape file {}: {}", f.file, f.problems.join("; ")))
                    .collect();
                let msg = format!(
                    "cartridge {bc}: {} damaged tape file(s): {}{}",
                    bad.len(),
                    bad.join(" | "),
                    if r.marked_corrupt.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; image(s) marked corrupt: {}",
                            r.marked_corrupt
                                .iter()
                                .map(|u| u.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
                return fail_with(ctx, Error::Integrity(msg), &r);
            }
            if r.files.len() == 1 && r.files[0].kind == "blank" {
                ctx.out.emit(&r, || {
                    format!("cartridge {bc} is blank, as the catalog says: nothing to verify")
                });
                return Ok(());
            }
            ctx.out.emit(&r, || {
                format!(
                    "cartridge {bc} verified: {} tape file(s), all records and digests check out",
                    r.files.len()
                )
            });
            Ok(())
        }
        _ => usage("give --image UUID or --barcode BARCODE"),
    }
}
