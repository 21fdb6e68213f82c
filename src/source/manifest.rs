//! The VM manifest: which disks of a VM to back up, identified by stable UUID.
//!
//! ```toml
//! name = "vm1"
//!
//! [[disk]]
//! id = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d11"   # the hypervisor's disk UUID
//! label = "root"                                # optional: names the disk as vm1/root
//! path = "/var/lib/vms/vm1/disk0.raw"           # raw image file or block device
//! changed_extents = "disk0.cbt.json"            # optional, see `changed`
//!
//! [[disk]]
//! id = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d12"
//! source = "qcow2:/var/lib/vms/vm1/disk1.qcow2" # or nbd+unix:///EXPORT?socket=/PATH,
//!                                               # nbd://HOST[:PORT]/EXPORT, nbds://...
//! tls_creds_dir = "/etc/pki/qemu"               # NBD over TLS only
//! ```
//!
//! A disk has either `path` (read directly) or `source` (see [`super::SourceSpec`]).
//!
//! Relative paths are resolved against the manifest's own directory, so a manifest
//! and its CBT files can be moved together. Unknown keys are rejected: a misspelt
//! `changed_extent` silently ignored would turn every incremental into a full.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use uuid::Uuid;

use super::input::{open_checked, Accept, InputError};

/// Most disks one manifest may list (a VM with more is almost certainly a generated
/// file gone wrong; hypervisors cap disks per VM well below this).
pub const MAX_DISKS: usize = 256;

/// Largest manifest file read (1 MiB: a manifest of [`MAX_DISKS`] disks is a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    /// The hypervisor's disk UUID: the disk's identity for the catalog.
    pub id: Uuid,
    /// The disk's name within its VM (`root`, `data`): with the VM name it names the
    /// disk wherever a disk is taken (`web01/root`).
    pub label: Option<String>,
    /// Raw image file or block device (resolved against the manifest directory).
    pub path: PathBuf,
    /// Changed-extents file for an incremental (resolved likewise).
    pub changed_extents: Option<PathBuf>,
    /// Where the disk comes from when it is not read directly from `path` (then
    /// `path` is only what reports show).
    pub source: Option<super::SourceSpec>,
}

/// A parsed, validated VM manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmManifest {
    pub name: String,
    pub disks: Vec<DiskEntry>,
}

#[derive(Debug, Error)]
pub enum ManifestError {
    /// Missing, unreadable, or not a regular file.
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("manifest {path} is {size} bytes long; at most {MAX_MANIFEST_BYTES} are read")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("cannot read manifest {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("manifest {path}: field `{field}` {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("manifest {path}: disk id {id} appears twice (disk[{first}] and disk[{second}]); each disk must be listed once")]
    DuplicateDiskId {
        path: PathBuf,
        id: Uuid,
        first: usize,
        second: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default)]
    disk: Vec<RawDisk>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    id: String,
    label: Option<String>,
    path: Option<String>,
    source: Option<String>,
    tls_creds_dir: Option<String>,
    changed_extents: Option<String>,
}

impl VmManifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<VmManifest, ManifestError> {
        use std::io::Read;
        // Never blocks: a FIFO or a device is refused before it is read.
        let (file, meta) = open_checked(path, "manifest", Accept::RegularFile)?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                path: path.to_path_buf(),
                size: meta.len(),
            });
        }
        let mut text = String::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|source| ManifestError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        VmManifest::parse(&text, path, base)
    }

    /// Parses manifest text. `origin` names the file in errors; relative disk and
    /// changed-extents paths are resolved against `base_dir`.
    pub fn parse(text: &str, origin: &Path, base_dir: &Path) -> Result<VmManifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Syntax {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let field_err = |field: String, problem: &str| ManifestError::Field {
            path: origin.to_path_buf(),
            field,
            problem: problem.to_string(),
        };
        let name = raw.name.trim();
        if name.is_empty() {
            return Err(field_err("name".into(), "is empty; give the VM a name"));
        }
        if raw.disk.is_empty() {
            return Err(field_err(
                "disk".into(),
                "is missing: list at least one [[disk]] table with id and path",
            ));
        }
        if raw.disk.len() > MAX_DISKS {
            return Err(field_err(
                "disk".into(),
                &format!(
                    "lists {} disks; at most {MAX_DISKS} are accepted",
                    raw.disk.len()
                ),
            ));
        }
        if let Err(why) = check_name(name, true) {
            return Err(field_err("name".into(), &why));
        }
        let mut seen: HashMap<Uuid, usize> = HashMap::new();
        let mut labels: HashMap<String, usize> = HashMap::new();
        let mut disks = Vec::with_capacity(raw.disk.len());
        for (i, d) in raw.disk.into_iter().enumerate() {
            let id = Uuid::parse_str(d.id.trim()).map_err(|e| {
                field_err(
                    format!("disk[{i}].id"),
                    &format!(
                        "is not a UUID ({:?}: {e}); use the hypervisor's disk UUID",
                        d.id
                    ),
                )
            })?;
            if id.is_nil() {
                return Err(field_err(
                    format!("disk[{i}].id"),
                    "is the nil UUID; use the hypervisor's disk UUID",
                ));
            }
            if let Some(&first) = seen.get(&id) {
                return Err(ManifestError::DuplicateDiskId {
                    path: origin.to_path_buf(),
                    id,
                    first,
                    second: i,
                });
            }
            seen.insert(id, i);
            let label = match d.label {
                None => None,
                Some(l) => {
                    let l = l.trim().to_string();
                    check_name(&l, false)
                        .map_err(|why| field_err(format!("disk[{i}].label"), &why))?;
                    if let Some(first) = labels.insert(l.clone(), i) {
                        return Err(field_err(
                            format!("disk[{i}].label"),
                            &format!("{l:?} is also the label of disk[{first}]; each disk of a VM needs its own label"),
                        ));
                    }
                    Some(l)
                }
            };
            let tls = d.tls_creds_dir.as_ref().map(|t| base_dir.join(t));
            let (path, source) = match (&d.path, &d.source) {
                (Some(_), Some(_)) => {
                    return Err(field_err(
                        format!("disk[{i}]"),
                        "has both path and source; give one (path: a raw file or block device read directly; source: an image through qemu-nbd or an NBD export)",
                    ))
                }
                (None, None) => {
                    return Err(field_err(
                        format!("disk[{i}]"),
                        "has neither path nor source; give one",
                    ))
                }
                (Some(p), None) => {
                    if p.trim().is_empty() {
                        return Err(field_err(format!("disk[{i}].path"), "is empty"));
                    }
                    if tls.is_some() {
                        return Err(field_err(
                            format!("disk[{i}].tls_creds_dir"),
                            "applies to an NBD source only",
                        ));
                    }
                    (base_dir.join(p), None)
                }
                (None, Some(src)) => {
                    let spec = super::SourceSpec::parse(src.trim(), base_dir, tls.as_deref())
                        .map_err(|e| field_err(format!("disk[{i}].source"), &e))?;
                    (spec.display_path(), Some(spec))
                }
            };
            let changed_extents = match d.changed_extents {
                Some(c) if c.trim().is_empty() => {
                    return Err(field_err(
                        format!("disk[{i}].changed_extents"),
                        "is empty; remove the key or name a file",
                    ))
                }
                Some(c) => Some(base_dir.join(c)),
                None => None,
            };
            disks.push(DiskEntry {
                id,
                label,
                path,
                changed_extents,
                source,
            });
        }
        Ok(VmManifest {
            name: name.to_string(),
            disks,
        })
    }
}

/// Longest VM name or disk label.
pub const MAX_NAME: usize = 128;

/// Whether `s` can be a VM name (`vm`) or a disk label: not empty, at most
/// [`MAX_NAME`] bytes, no control characters; a label has no `/` either (the last `/`
/// of `web01/root` separates VM and label).
pub fn check_name(s: &str, vm: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > MAX_NAME {
        return Err(format!(
            "is {} bytes long; at most {MAX_NAME} are accepted",
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("{s:?} contains the control character {c:?}"));
    }
    if !vm && s.contains('/') {
        return Err(format!(
            "{s:?} contains `/`; a disk label may not (the last `/` separates VM and label in VM/LABEL)"
        ));
    }
    Ok(())
}

impl VmManifest {
    /// The manifest as TOML text in the documented form (docs/CLI.md, "Backup inputs"),
    /// readable back by [`VmManifest::parse`]. Paths are written as they are held.
    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut t = format!("name = {}\n", q(&self.name));
        for d in &self.disks {
            t.push_str("\n[[disk]]\n");
            t.push_str(&format!("id = {}\n", q(&d.id.to_string())));
            if let Some(l) = &d.label {
                t.push_str(&format!("label = {}\n", q(l)));
            }
            t.push_str(&format!("path = {}\n", q(&d.path.to_string_lossy())));
            if let Some(c) = &d.changed_extents {
                t.push_str(&format!("changed_extents = {}\n", q(&c.to_string_lossy())));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VmManifest, ManifestError> {
        VmManifest::parse(text, Path::new("vm.toml"), Path::new("/vms"))
    }

    #[test]
    fn relative_paths_resolve_against_manifest_dir() {
        let m = parse(
            r#"name = "vm1"
[[disk]]
id = "6000C298-1f5e-4b0c-a8a4-2f7c3b9e0d11"
path = "d0.raw"
changed_extents = "/abs/d0.json"
[[disk]]
id = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d12"
path = "/dev/vg/d1"
"#,
        )
        .unwrap();
        assert_eq!(m.name, "vm1");
        assert_eq!(m.disks[0].path, Path::new("/vms/d0.raw"));
        assert_eq!(
            m.disks[0].changed_extents.as_deref(),
            Some(Path::new("/abs/d0.json"))
        );
        assert_eq!(m.disks[1].path, Path::new("/dev/vg/d1"));
        assert_eq!(m.disks[1].changed_extents, None);
    }

    #[test]
    fn labels_are_checked_and_the_toml_reads_back() {
        let text = r#"name = "web01"
[[disk]]
id = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d11"
label = "root"
path = "/vms/a \"b\".raw"
"#;
        let m = parse(text).unwrap();
        assert_eq!(m.disks[0].label.as_deref(), Some("root"));
        assert_eq!(parse(&m.to_toml()).unwrap(), m);
        let dup = format!(
            "{text}[[disk]]\nid = \"6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d12\"\nlabel = \"root\"\npath = \"b\"\n"
        );
        let e = parse(&dup).unwrap_err().to_string();
        assert!(e.contains("disk[1].label") && e.contains("disk[0]"), "{e}");
        let slash = text.replace("label = \"root\"", "label = \"a/b\"");
        let e = parse(&slash).unwrap_err().to_string();
        assert!(e.contains("`/`"), "{e}");
    }
}
