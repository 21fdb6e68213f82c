//! What an earlier crash left behind, put right before a new backup starts.

use std::path::PathBuf;

use crate::catalog::Catalog;
use crate::error::Result;
use crate::home::Home;

use super::*;
use crate::events::{Events, NoteKind};

/// Images and sessions left 'running' by a process that is gone (killed, crashed)
/// become 'failed' (the catalog records each writer's pid and start time), so they are
/// never a base; a digest list they left half-written is removed.
pub fn recover_interrupted(home: &Home, cat: &Catalog, events: &dyn Events) -> Result<()> {
    for uuid in cat.fail_running_images()? {
        let list = digest_list_path(home, uuid);
        let mut partial = list.clone().into_os_string();
        partial.push(".partial");
        let _ = std::fs::remove_file(&list);
        let _ = std::fs::remove_file(PathBuf::from(partial));
        let disk = cat
            .image(uuid)?
            .map(|i| i.disk_uuid.to_string())
            .unwrap_or_default();
        events.note(
            NoteKind::Recovery,
            format!(
            "image {uuid} of disk {disk} was interrupted by a crash; marked failed (it will never be a base)"
        ));
    }
    Ok(())
}
