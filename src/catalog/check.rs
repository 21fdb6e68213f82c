//! `catalog check`: consistency problems a person should look at.

use super::images::{validate_segment, ExtentCheck};
use super::*;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// SQLite's own integrity or foreign-key check failed.
    Database,
    /// A segment names a cartridge the catalog does not know.
    SegmentUnknownMedia,
    /// A segment's ranges are reversed or outside the disk.
    BadSegment,
    /// A complete (or running) incremental's parent is not in the catalog.
    MissingParent,
    /// A parent link that can never restore: parent is a copy, of another disk,
    /// not complete under a complete child, or kinds and parents disagree.
    BadParent,
    /// A complete image with records but no segments: cannot be located on tape.
    CompleteWithoutSegments,
    /// A complete image without extents: what it covers is unknown.
    CompleteWithoutExtents,
    /// Extents outside the disk, overlapping, or a full not covering the disk.
    BadExtents,
    /// A row names a pool the catalog does not know.
    UnknownPool,
    /// A cartridge's pool differs from its media set's pool.
    PoolMismatch,
    /// An image or session is marked running but its process is gone.
    StaleRunning,
    /// A copy whose `copy_of` names an image the catalog does not know: the point it
    /// claims to hold is unknown (expiry never leaves this: an original whose point a
    /// copy holds keeps its row).
    DanglingCopy,
    /// A complete copy whose point cannot be restored because the original's chain is
    /// gone (a base the point needs was forgotten or is damaged with no copy).
    OrphanedCopy,
    /// A synthetic full whose `synthetic_of` names an image of another disk, or a
    /// copy: it cannot have reproduced that point. (An image it names that is gone is
    /// fine: an expired chain is what a synthetic full lets go.)
    BadSynthetic,
}

/// One consistency problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// What it is about: `image <uuid>`, `cartridge <barcode>`, ...
    pub subject: String,
    pub detail: String,
}

impl Catalog {
    /// Look for inconsistencies. An empty list means none were found.
    pub fn check(&self) -> Result<Vec<Problem>> {
        let mut out = Vec::new();
        let mut add = |kind, subject: String, detail: String| {
            out.push(Problem {
                kind,
                subject,
                detail,
            })
        };
        let c = self.conn();
        let qc: Vec<String> = c
            .prepare("PRAGMA quick_check")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if qc != ["ok"] {
            add(ProblemKind::Database, "catalog.db".into(), qc.join("; "));
        }
        let fk: Vec<String> = c
            .prepare("PRAGMA foreign_key_check")?
            .query_map([], |r| {
                Ok(format!(
                    "{} row {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for f in fk {
            add(
                ProblemKind::Database,
                "catalog.db".into(),
                format!("foreign key violated: {f}"),
            );
        }

        let pools: HashSet<String> = self.pools()?.into_iter().map(|p| p.name).collect();
        let media = self.list_media(None)?;
        let barcodes: HashSet<&str> = media.iter().map(|m| m.barcode.as_str()).collect();
        let sets: HashMap<Uuid, MediaSetRow> = self
            .media_sets(None)?
            .into_iter()
            .map(|s| (s.uuid, s))
            .collect();
        for s in sets.values() {
            if !pools.contains(&s.pool) {
                add(
                    ProblemKind::UnknownPool,
                    format!("media set {}", s.uuid),
                    format!("pool {} is unknown", s.pool),
                );
            }
        }
        for m in &media {
            if let Some(p) = &m.pool {
                if !pools.contains(p) {
                    add(
                        ProblemKind::UnknownPool,
                        format!("cartridge {}", m.barcode),
                        format!("pool {p} is unknown"),
                    );
                }
            }
            if let Some(s) = m.media_set_uuid.and_then(|u| sets.get(&u)) {
                if m.pool.as_deref() != Some(s.pool.as_str()) {
                    add(
                        ProblemKind::PoolMismatch,
                        format!("cartridge {}", m.barcode),
                        format!(
                            "in pool {:?} but its media set {} is in pool {}",
                            m.pool, s.uuid, s.pool
                        ),
                    );
                }
            }
        }

        let images: HashMap<Uuid, ImageRow> = self
            .images(None)?
            .into_iter()
            .map(|i| (i.uuid, i))
            .collect();
        let mut sorted: Vec<&ImageRow> = images.values().collect();
        sorted.sort_by_key(|i| (i.started, i.uuid));
        for img in sorted {
            let subj = format!("image {}", img.uuid);
            if let Some(p) = &img.pool {
                if !pools.contains(p) {
                    add(
                        ProblemKind::UnknownPool,
                        subj.clone(),
                        format!("pool {p} is unknown"),
                    );
                }
            }
            // Only a full can be synthetic (the image it reproduces may be gone: an
            // expired chain is what a synthetic full lets go).
            if let (Some(of), true) = (img.synthetic_of, img.kind != ImageKind::Full) {
                add(
                    ProblemKind::BadParent,
                    subj.clone(),
                    format!("a {} image recorded as a synthetic full of {of}", img.kind),
                );
            }
            if let Some(of) = img.synthetic_of {
                if let Some(o) = images.get(&of) {
                    if o.disk_uuid != img.disk_uuid || o.copy_of.is_some() {
                        add(
                            ProblemKind::BadSynthetic,
                            subj.clone(),
                            format!(
                                "a synthetic full of image {of}, which is {}",
                                if o.copy_of.is_some() {
                                    "a copy (a synthetic full names the original point)".to_string()
                                } else {
                                    format!("of disk {}", o.disk_uuid)
                                }
                            ),
                        );
                    }
                }
            }
            if let Some(of) = img.copy_of {
                match images.get(&of) {
                    None => add(
                        ProblemKind::DanglingCopy,
                        subj.clone(),
                        format!(
                            "a copy of image {of}, which is not in the catalog: the point it holds is unknown (`tapevault catalog rebuild --scan` of the original's cartridges imports it again; `tapevault images --disk {}` lists what is known)",
                            img.disk_uuid
                        ),
                    ),
                    Some(o) => {
                        if o.copy_of.is_some() || o.disk_uuid != img.disk_uuid {
                            add(
                                ProblemKind::DanglingCopy,
                                subj.clone(),
                                format!(
                                    "a copy of image {of}, which is {}",
                                    if o.copy_of.is_some() {
                                        "itself a copy".to_string()
                                    } else {
                                        format!("of disk {}", o.disk_uuid)
                                    }
                                ),
                            );
                        } else if img.status == ImageStatus::Complete {
                            if let Some(why) = self.unrestorable_reason(o)? {
                                add(
                                    ProblemKind::OrphanedCopy,
                                    subj.clone(),
                                    format!(
                                        "a complete copy of image {of}, but that point cannot be restored: {why}"
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            match (img.kind, img.parent_uuid) {
                (ImageKind::Incremental, None) => add(
                    ProblemKind::BadParent,
                    subj.clone(),
                    "incremental without a parent".into(),
                ),
                (ImageKind::Full | ImageKind::Copy, Some(p)) => add(
                    ProblemKind::BadParent,
                    subj.clone(),
                    format!("{} image with parent {p}", img.kind),
                ),
                (ImageKind::Incremental, Some(p)) => match images.get(&p) {
                    // A corrupt or failed image whose base was recycled after it (an
                    // older chain expiring under incremental forever) already says it
                    // cannot be restored and why: only an image that claims to be
                    // restorable (or is being written) needs its parent.
                    None if !matches!(img.status, ImageStatus::Complete | ImageStatus::Running) => {
                    }
                    None => add(
                        ProblemKind::MissingParent,
                        subj.clone(),
                        format!("parent {p} is not in the catalog"),
                    ),
                    Some(parent) => {
                        if parent.kind == ImageKind::Copy {
                            add(
                                ProblemKind::BadParent,
                                subj.clone(),
                                format!("parent {p} is a copy"),
                            );
                        }
                        if parent.disk_uuid != img.disk_uuid {
                            add(
                                ProblemKind::BadParent,
                                subj.clone(),
                                format!("parent {p} is of disk {}", parent.disk_uuid),
                            );
                        }
                        // A parent point held by a complete copy is restorable.
                        if img.status == ImageStatus::Complete && !self.held_by_complete(parent)? {
                            add(
                                ProblemKind::BadParent,
                                subj.clone(),
                                format!(
                                    "complete, but its parent {p} is {}: it cannot be restored",
                                    parent.status
                                ),
                            );
                        }
                    }
                },
                _ => {}
            }
            let segments = self.segments(img.uuid)?;
            for s in &segments {
                if !barcodes.contains(s.barcode.as_str()) {
                    add(
                        ProblemKind::SegmentUnknownMedia,
                        subj.clone(),
                        format!(
                            "records {}..={} are on cartridge {}, which the catalog does not know",
                            s.first_seq, s.last_seq, s.barcode
                        ),
                    );
                }
                if let Err(e) = validate_segment(img, s) {
                    add(ProblemKind::BadSegment, subj.clone(), error_reason(e));
                }
            }
            if img.status == ImageStatus::Complete {
                if segments.is_empty() && img.records > 0 {
                    add(
                        ProblemKind::CompleteWithoutSegments,
                        subj.clone(),
                        format!("{} records, no segments", img.records),
                    );
                }
                // The extents are read one at a time in disk order (an image may
                // hold millions), checked as they come; the first problem ends it.
                let mut check = ExtentCheck::new(img);
                let mut any = false;
                let mut bad: Option<CatalogError> = None;
                let read = self.for_each_extent(img.uuid, |e| {
                    any = true;
                    check.next(&e).map_err(|err| {
                        bad = Some(err);
                        CatalogError::Invalid {
                            what: format!("extents of image {}", img.uuid),
                            reason: "checking stopped at the first problem".into(),
                        }
                    })
                });
                if bad.is_none() {
                    read?;
                }
                // An incremental with no changes legitimately covers nothing.
                if !any && img.disk_size > 0 && img.kind != ImageKind::Incremental {
                    add(
                        ProblemKind::CompleteWithoutExtents,
                        subj.clone(),
                        "no extents recorded".into(),
                    );
                } else if let Some(e) = bad.map_or_else(|| check.finish().err(), Some) {
                    add(ProblemKind::BadExtents, subj.clone(), error_reason(e));
                }
            }
        }

        for table in ["images", "sessions"] {
            let stale: Vec<(String, Option<String>)> = c
                .prepare(&format!(
                    "SELECT uuid, writer FROM {table} WHERE status='running'"
                ))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (uuid, writer) in stale {
                if !writer.as_deref().is_some_and(writer_alive) {
                    add(
                        ProblemKind::StaleRunning,
                        format!("{} {uuid}", &table[..table.len() - 1]),
                        "marked running but its process is gone (the next backup marks it failed)"
                            .into(),
                    );
                }
            }
        }
        Ok(out)
    }
}

fn error_reason(e: CatalogError) -> String {
    match e {
        CatalogError::Invalid { reason, .. } => reason,
        e => e.to_string(),
    }
}
