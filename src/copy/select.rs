//! Which images a copy takes: the selection (a disk, a VM, a session, a media set,
//! or everything not yet copied to the target pool), narrowed to restore points that
//! are not already copied there, with the ones that cannot be copied and why.

use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{Catalog, ImageRow, ImageStatus};
use crate::error::{Error, Result};

/// What to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Disk(Uuid),
    Vm(String),
    Session(Uuid),
    MediaSet(Uuid),
    Image(Uuid),
    /// Every restore point with no complete copy in the target pool yet.
    AllUncopied,
}

/// A selected image that is not copied, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub image: Uuid,
    pub disk: Uuid,
    pub reason: String,
}

/// The outcome of a selection.
#[derive(Debug, Clone, Default)]
pub struct Selected {
    /// Originals to copy, oldest first (a chain's parents before their children).
    pub to_copy: Vec<ImageRow>,
    /// Originals that already have a complete copy in the target pool: (original, copy).
    pub already: Vec<(Uuid, Uuid)>,
    /// Selected images that cannot be copied (not restorable), with the reason.
    pub refused: Vec<Refused>,
}

/// Resolve `sel` against the catalog for a copy into `to_pool`, optionally only from
/// `from_pool`. Images still being written, failed and incomplete ones are not restore
/// points and are left out (an `Image` selection of one is refused); copies are never
/// copied again (their original is). An empty selection is a usage error naming what
/// was asked.
pub fn select(
    cat: &Catalog,
    sel: &Selection,
    to_pool: &str,
    from_pool: Option<&str>,
) -> Result<Selected> {
    let all = cat.images(None)?;
    let session_set =
        |s: &Uuid| -> Result<Option<Uuid>> { Ok(cat.session(*s)?.and_then(|r| r.media_set_uuid)) };
    let mut picked: Vec<ImageRow> = Vec::new();
    for img in all {
        let original = img.copy_of.is_none();
        let hit = match sel {
            Selection::Disk(d) => img.disk_uuid == *d,
            Selection::Vm(v) => img.vm_name.as_deref() == Some(v.as_str()),
            Selection::Session(s) => img.session_uuid == Some(*s),
            Selection::MediaSet(m) => match &img.session_uuid {
                Some(s) => session_set(s)? == Some(*m),
                None => false,
            },
            Selection::Image(u) => img.uuid == *u,
            Selection::AllUncopied => true,
        };
        if !hit {
            continue;
        }
        if let Selection::Image(u) = sel {
            if !original {
                return Err(Error::Usage(format!(
                    "image {u} is itself a copy (of {}): copy the original, `tapevault copy --image {}`",
                    img.identity(),
                    img.identity()
                )));
            }
        }
        if !original {
            continue;
        }
        if let Some(fp) = from_pool {
            if img.pool.as_deref() != Some(fp) {
                continue;
            }
        }
        picked.push(img);
    }
    if picked.is_empty() {
        let what = match sel {
            Selection::Disk(d) => format!("disk {d}"),
            Selection::Vm(v) => format!("VM {v}"),
            Selection::Session(s) => format!("session {s}"),
            Selection::MediaSet(m) => format!("media set {m}"),
            Selection::Image(u) => format!("image {u}"),
            Selection::AllUncopied => "the catalog".into(),
        };
        if *sel == Selection::AllUncopied {
            return Ok(Selected::default());
        }
        return Err(Error::Usage(format!(
            "{what} has no images{} to copy: `tapevault images` lists them",
            from_pool
                .map(|p| format!(" in pool {p}"))
                .unwrap_or_default()
        )));
    }
    let mut out = Selected::default();
    for img in picked {
        if img.pool.as_deref() == Some(to_pool) {
            if matches!(sel, Selection::AllUncopied) {
                continue;
            }
            return Err(Error::Usage(format!(
                "image {} is in pool {to_pool} already: a copy goes to another pool (--to-pool)",
                img.uuid
            )));
        }
        match img.status {
            ImageStatus::Running => continue,
            ImageStatus::Failed | ImageStatus::Incomplete => {
                if let Selection::Image(u) = sel {
                    return Err(Error::Integrity(format!(
                        "image {u} cannot be copied: it is {}{}",
                        img.status,
                        img.note
                            .as_deref()
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default()
                    )));
                }
                continue;
            }
            _ => {}
        }
        if let Some(c) = cat
            .copies_of(img.uuid)?
            .into_iter()
            .find(|c| c.status == ImageStatus::Complete && c.pool.as_deref() == Some(to_pool))
        {
            out.already.push((img.uuid, c.uuid));
            continue;
        }
        match cat.unrestorable_reason(&img)? {
            Some(reason) => out.refused.push(Refused {
                image: img.uuid,
                disk: img.disk_uuid,
                reason,
            }),
            None => out.to_copy.push(img),
        }
    }
    Ok(out)
}
