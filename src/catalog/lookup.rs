//! Naming things the catalog knows without pasting whole UUIDs: a disk by its UUID, a
//! unique prefix of it, `VM/LABEL` (the manifest's VM name and disk label, as kept with
//! its images) or a VM name that has one disk; an image, session, media set or volume by
//! its UUID or a unique prefix. Each lookup gives exactly one match, or a usage error
//! (exit 2) that names the candidates when the name is ambiguous and the nearest known
//! values when nothing matches.

use super::*;
use crate::error::Error;

/// Shortest UUID prefix taken (shorter ones match too much to be meant).
pub const MIN_PREFIX: usize = 4;
/// Most candidates or known values an error lists.
const SHOWN: usize = 10;

/// A disk the catalog has images of, with the names it was backed up under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDisk {
    pub disk: Uuid,
    /// The newest VM name and disk label recorded with its images.
    pub vm: Option<String>,
    pub label: Option<String>,
    pub images: u64,
}

impl KnownDisk {
    /// `UUID (web01/root, 3 image(s))`.
    pub fn describe(&self) -> String {
        let name = match (&self.vm, &self.label) {
            (Some(v), Some(l)) => format!("{v}/{l}, "),
            (Some(v), None) => format!("VM {v}, "),
            _ => String::new(),
        };
        format!("{} ({name}{} image(s))", self.disk, self.images)
    }
}

/// The id part of a UUID text: lower-case hex digits, hyphens dropped.
fn hex_of(s: &str) -> Option<String> {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    (!h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit())).then(|| h.to_ascii_lowercase())
}

fn matches_prefix(id: &Uuid, prefix_hex: &str) -> bool {
    id.simple().to_string().starts_with(prefix_hex)
}

fn list(items: impl IntoIterator<Item = String>, more_hint: &str) -> String {
    let all: Vec<String> = items.into_iter().collect();
    let mut v: Vec<String> = all.iter().take(SHOWN).cloned().collect();
    if all.len() > SHOWN {
        v.push(format!("and {} more ({more_hint})", all.len() - SHOWN));
    }
    v.join(", ")
}

fn usage<T>(msg: String) -> crate::error::Result<T> {
    Err(Error::Usage(msg))
}

impl Catalog {
    /// Every disk with images, with its newest VM name and label, by UUID.
    pub fn known_disk_names(&self) -> Result<Vec<KnownDisk>> {
        let mut st = self.conn().prepare(
            "SELECT disk_uuid, \
               (SELECT vm_name FROM images j WHERE j.disk_uuid=i.disk_uuid AND vm_name IS NOT NULL \
                ORDER BY started DESC LIMIT 1), \
               (SELECT disk_label FROM images j WHERE j.disk_uuid=i.disk_uuid AND disk_label IS NOT NULL \
                ORDER BY started DESC LIMIT 1), COUNT(*) \
             FROM images i GROUP BY disk_uuid ORDER BY disk_uuid",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(KnownDisk {
                    disk: get_p(r, 0)?,
                    vm: r.get(1)?,
                    label: r.get(2)?,
                    images: get_u64(r, 3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Disks any of whose images were taken as `vm`/`label` (`label` None: any label).
    fn disks_named(&self, vm: &str, label: Option<&str>) -> Result<Vec<Uuid>> {
        let mut st = self.conn().prepare(
            "SELECT DISTINCT disk_uuid FROM images WHERE vm_name=?1 AND (?2 IS NULL OR disk_label=?2) \
             ORDER BY disk_uuid",
        )?;
        let rows = st
            .query_map(params![vm, label], |r| get_p(r, 0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The one disk `name` means (see the module documentation).
    pub fn resolve_disk(&self, name: &str) -> crate::error::Result<Uuid> {
        let name = name.trim();
        let known = self.known_disk_names()?;
        let known_list = || {
            if known.is_empty() {
                "the catalog has no images at all (back up first, or `tapevault catalog rebuild` from the cartridges)".to_string()
            } else {
                format!(
                    "known disks: {}",
                    list(known.iter().map(KnownDisk::describe), "`tapevault images`")
                )
            }
        };
        let describe = |d: &Uuid| {
            known
                .iter()
                .find(|k| k.disk == *d)
                .map(KnownDisk::describe)
                .unwrap_or_else(|| d.to_string())
        };
        if let Ok(u) = Uuid::parse_str(name) {
            if known.iter().any(|k| k.disk == u) {
                return Ok(u);
            }
            return usage(format!(
                "unknown disk {u}: the catalog has no images of it; {}",
                known_list()
            ));
        }
        if let Some((vm, label)) = name.rsplit_once('/') {
            let found = self.disks_named(vm, Some(label))?;
            return match found.as_slice() {
                [one] => Ok(*one),
                [] => {
                    let same_vm: Vec<String> = known
                        .iter()
                        .filter(|k| k.vm.as_deref() == Some(vm))
                        .map(KnownDisk::describe)
                        .collect();
                    let nearest = if same_vm.is_empty() {
                        known_list()
                    } else {
                        format!("disks of VM {vm}: {}", list(same_vm, "`tapevault images`"))
                    };
                    usage(format!(
                        "unknown disk {name}: no image was taken of a disk labelled {label:?} of VM {vm:?}; {nearest}"
                    ))
                }
                many => usage(format!(
                    "disk {name} is ambiguous: {} disks were backed up as {name}: {}; name one by its UUID",
                    many.len(),
                    list(many.iter().map(describe), "`tapevault images`")
                )),
            };
        }
        let mut found: Vec<Uuid> = match hex_of(name) {
            Some(h) if h.len() >= MIN_PREFIX => known
                .iter()
                .filter(|k| matches_prefix(&k.disk, &h))
                .map(|k| k.disk)
                .collect(),
            _ => Vec::new(),
        };
        if found.is_empty() {
            // A VM name alone names its disk when it has one.
            found = self.disks_named(name, None)?;
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] => usage(format!(
                "unknown disk {name:?}: give a disk UUID, a unique prefix of one (at least {MIN_PREFIX} hex digits), VM/LABEL or a VM name with one disk; {}",
                known_list()
            )),
            many => usage(format!(
                "disk {name:?} is ambiguous: it matches {} disks: {}; give more of the UUID or VM/LABEL",
                many.len(),
                list(many.iter().map(describe), "`tapevault images`")
            )),
        }
    }

    /// The one image `name` (a UUID or a unique prefix) means; with `disk`, only that
    /// disk's images are candidates for a prefix. A full UUID is returned as it is (the
    /// caller says what is wrong with an image that is not there).
    pub fn resolve_image(&self, name: &str, disk: Option<Uuid>) -> crate::error::Result<Uuid> {
        let name = name.trim();
        if let Ok(u) = Uuid::parse_str(name) {
            return Ok(u);
        }
        let images = self.images(disk)?;
        let of = disk.map(|d| format!(" of disk {d}")).unwrap_or_default();
        let h = match hex_of(name) {
            Some(h) if h.len() >= MIN_PREFIX => h,
            _ => {
                return usage(format!(
                    "bad image {name:?}: give an image UUID or a unique prefix of one (at least {MIN_PREFIX} hex digits)"
                ))
            }
        };
        let found: Vec<&ImageRow> = images
            .iter()
            .filter(|i| matches_prefix(&i.uuid, &h))
            .collect();
        let line = |i: &ImageRow| {
            format!(
                "{} ({} {} of disk {})",
                i.uuid,
                i.kind,
                crate::timefmt::show(&i.started),
                i.disk_uuid
            )
        };
        match found.as_slice() {
            [one] => Ok(one.uuid),
            [] => {
                let newest = images.iter().rev().map(line);
                let nearest = if images.is_empty() {
                    "the catalog has no images".to_string()
                } else {
                    format!(
                        "the newest images{of}: {}",
                        list(newest, "`tapevault images`")
                    )
                };
                usage(format!(
                    "unknown image {name:?}: no image{of} starts with it; {nearest}"
                ))
            }
            many => usage(format!(
                "image {name:?} is ambiguous: it matches {} images{of}: {}; give more of the UUID",
                many.len(),
                list(many.iter().map(|i| line(i)), "`tapevault images`")
            )),
        }
    }

    /// The one media set `name` (a UUID or a unique prefix) means.
    pub fn resolve_media_set(&self, name: &str) -> crate::error::Result<Uuid> {
        let sets =
            self.described("SELECT uuid, 'pool ' || pool FROM media_sets ORDER BY created")?;
        self.resolve_id(name, "media set", sets, "`tapevault media list`")
    }

    /// (id, "id (what)") of each row of a two-column query.
    fn described(&self, sql: &str) -> Result<Vec<(Uuid, String)>> {
        let mut st = self.conn().prepare(sql)?;
        let rows = st
            .query_map([], |r| {
                let u: Uuid = get_p(r, 0)?;
                let what: String = r.get(1)?;
                Ok((u, format!("{u} ({what})")))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The one backup session `name` (a UUID or a unique prefix) means.
    pub fn resolve_session(&self, name: &str) -> crate::error::Result<Uuid> {
        let sessions = self.described(
            "SELECT uuid, 'pool ' || pool || ', started ' || started FROM sessions ORDER BY started",
        )?;
        self.resolve_id(name, "session", sessions, "`tapevault catalog export`")
    }

    /// The barcode of the one cartridge whose volume UUID `name` (a UUID or a unique
    /// prefix) is, or `name` itself when it is a barcode the catalog knows.
    pub fn resolve_volume(&self, name: &str) -> crate::error::Result<String> {
        if self.media(name.trim())?.is_some() {
            return Ok(name.trim().to_string());
        }
        let media = self.list_media(None)?;
        let vols: Vec<(Uuid, String)> = media
            .iter()
            .filter_map(|m| m.volume_uuid.map(|v| (v, format!("{v} ({})", m.barcode))))
            .collect();
        let v = self.resolve_id(
            name,
            "cartridge (barcode) or volume",
            vols,
            "`tapevault media list`",
        )?;
        Ok(media
            .into_iter()
            .find(|m| m.volume_uuid == Some(v))
            .map(|m| m.barcode)
            .unwrap_or_default())
    }

    /// One of `known` (id, description) by full UUID or unique prefix.
    fn resolve_id(
        &self,
        name: &str,
        what: &str,
        known: Vec<(Uuid, String)>,
        hint: &str,
    ) -> crate::error::Result<Uuid> {
        let name = name.trim();
        let known_list = || {
            if known.is_empty() {
                format!("the catalog knows no {what}")
            } else {
                format!(
                    "known: {}",
                    list(known.iter().rev().map(|(_, d)| d.clone()), hint)
                )
            }
        };
        let found: Vec<&(Uuid, String)> = match (Uuid::parse_str(name), hex_of(name)) {
            (Ok(u), _) => known.iter().filter(|(k, _)| *k == u).collect(),
            (Err(_), Some(h)) if h.len() >= MIN_PREFIX => known
                .iter()
                .filter(|(k, _)| matches_prefix(k, &h))
                .collect(),
            _ => {
                return usage(format!(
                    "bad {what} {name:?}: give its UUID or a unique prefix of one (at least {MIN_PREFIX} hex digits); {}",
                    known_list()
                ))
            }
        };
        match found.as_slice() {
            [one] => Ok(one.0),
            [] => usage(format!(
                "unknown {what} {name:?}: not in the catalog; {}",
                known_list()
            )),
            many => usage(format!(
                "{what} {name:?} is ambiguous: it matches {}: {}; give more of the UUID",
                many.len(),
                list(many.iter().map(|(_, d)| d.clone()), hint)
            )),
        }
    }
}
