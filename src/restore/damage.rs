//! Remembering damage: the image a failed restore found damaged is marked corrupt in
//! the catalog with every image built on it.

use uuid::Uuid;

use super::Prepared;
use crate::catalog::Catalog;
use crate::error::{Error, Result};

/// Mark the image a failed restore found damaged (see [`Prepared::damaged_image`])
/// corrupt, with every image built on it, so the next restore and the next backup pass
/// it over. Returns the images marked, the damaged one first; empty when the failure
/// was not an integrity failure of one image.
pub fn record_damage(cat: &Catalog, p: &Prepared, err: &Error) -> Result<Vec<Uuid>> {
    let Some(image) = p.damaged_image() else {
        return Ok(Vec::new());
    };
    let mut marked = vec![image];
    marked.extend(cat.mark_corrupt(image, &format!("restore: {err}"))?);
    Ok(marked)
}
