//! Libvirt checkpoints tapevault created, with their XML (migration 8): what the
//! libvirt driver (`source::libvirt`) redefines when libvirt lost a checkpoint.

use rusqlite::{params, OptionalExtension};

use super::*;

impl Catalog {
    /// Records (or replaces) the XML of checkpoint `name` of domain `domain`.
    pub fn put_libvirt_checkpoint(
        &self,
        domain: &str,
        name: &str,
        domain_uuid: Option<&str>,
        xml: &str,
    ) -> Result<()> {
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO libvirt_checkpoints (domain, name, domain_uuid, xml, created) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (domain, name) DO UPDATE SET domain_uuid=?3, xml=?4",
            params![domain, name, domain_uuid, xml, ts(&chrono::Utc::now())],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The XML recorded for checkpoint `name` of domain `domain`.
    pub fn libvirt_checkpoint(&self, domain: &str, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT xml FROM libvirt_checkpoints WHERE domain=?1 AND name=?2",
                params![domain, name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The names of the checkpoints recorded for domain `domain`.
    pub fn libvirt_checkpoint_names(&self, domain: &str) -> Result<Vec<String>> {
        Ok(self
            .conn()
            .prepare("SELECT name FROM libvirt_checkpoints WHERE domain=?1 ORDER BY created")?
            .query_map(params![domain], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets checkpoint `name` of domain `domain` (it was retired).
    pub fn delete_libvirt_checkpoint(&self, domain: &str, name: &str) -> Result<()> {
        let tx = self.write_tx()?;
        tx.execute(
            "DELETE FROM libvirt_checkpoints WHERE domain=?1 AND name=?2",
            params![domain, name],
        )?;
        tx.commit()?;
        Ok(())
    }
}
