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
//! A running VM is read over QMP instead (`backup --qmp`); its manifest names the QMP
//! socket and picks each disk by the device's `serial` or `wwn`, never by target name
//! or order, giving it the UUID the catalog knows it by:
//!
//! ```toml
//! name = "web01"
//! qmp = "/run/qemu/web01.qmp"
//! guest_agent = "/run/qemu/web01.qga"           # optional: freeze file systems
//! freeze_timeout = 60                           # optional, seconds (default 60)
//!
//! [[disk]]
//! id = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d11"
//! label = "root"
//! serial = "web01-root"                         # or wwn = "0x5000c50015ea71ac"
//! ```
//!
//! The VM's other disks are not backed up (said at each backup).
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
    /// With a [`LiveVm`]: the device of the running VM this disk is (its `path` is then
    /// empty until the VM says which image the device has open).
    pub device: Option<DeviceMatch>,
}

/// Which device of a running VM a manifest disk is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMatch {
    /// The device's `serial` property.
    Serial(String),
    /// The device's `wwn`, as `0x` and 16 lower-case hex digits.
    Wwn(String),
}

impl std::fmt::Display for DeviceMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceMatch::Serial(s) => write!(f, "serial {s:?}"),
            DeviceMatch::Wwn(w) => write!(f, "wwn {w}"),
        }
    }
}

/// A running VM whose disks are read over QMP (`backup --qmp`'s options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveVm {
    /// QEMU's QMP socket.
    pub qmp: PathBuf,
    /// The guest agent's socket, to freeze file systems around the instant.
    pub guest_agent: Option<PathBuf>,
    /// Seconds the guest agent gets to freeze (`--freeze-timeout`).
    pub freeze_timeout: Option<u64>,
}

/// A parsed, validated VM manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmManifest {
    pub name: String,
    pub disks: Vec<DiskEntry>,
    /// Set when the VM is running and read over QMP: every disk then has a `device`.
    pub live: Option<LiveVm>,
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
    qmp: Option<String>,
    guest_agent: Option<String>,
    freeze_timeout: Option<u64>,
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
    serial: Option<String>,
    wwn: Option<String>,
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
                "is missing: list at least one [[disk]] table with id and path (or serial, for a running VM)",
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
        let live = match (&raw.qmp, &raw.guest_agent, raw.freeze_timeout) {
            (None, None, None) => None,
            (None, _, _) => {
                return Err(field_err(
                    if raw.guest_agent.is_some() { "guest_agent" } else { "freeze_timeout" }.into(),
                    "applies to a running VM only: add `qmp = \"SOCKET\"` (QEMU's QMP socket) or remove it",
                ))
            }
            (Some(q), agent, timeout) => {
                if q.trim().is_empty() {
                    return Err(field_err("qmp".into(), "is empty; name QEMU's QMP socket"));
                }
                if agent.as_ref().is_some_and(|a| a.trim().is_empty()) {
                    return Err(field_err("guest_agent".into(), "is empty; name the guest agent's socket or remove the key"));
                }
                if timeout == Some(0) {
                    return Err(field_err("freeze_timeout".into(), "is 0; give the guest agent at least a second"));
                }
                if timeout.is_some() && agent.is_none() {
                    return Err(field_err("freeze_timeout".into(), "needs guest_agent (only the guest agent freezes)"));
                }
                Some(LiveVm {
                    qmp: base_dir.join(q.trim()),
                    guest_agent: agent.as_ref().map(|a| base_dir.join(a.trim())),
                    freeze_timeout: timeout,
                })
            }
        };
        let mut devices: HashMap<String, usize> = HashMap::new();
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
            let device = match (&d.serial, &d.wwn) {
                (Some(_), Some(_)) => {
                    return Err(field_err(
                        format!("disk[{i}]"),
                        "has both serial and wwn; give the one that identifies the device",
                    ))
                }
                (Some(sr), None) if sr.trim().is_empty() => {
                    return Err(field_err(format!("disk[{i}].serial"), "is empty"))
                }
                (Some(sr), None) => Some(DeviceMatch::Serial(sr.trim().to_string())),
                (None, Some(w)) => Some(DeviceMatch::Wwn(parse_wwn(w).ok_or_else(|| {
                    field_err(
                        format!("disk[{i}].wwn"),
                        &format!("{w:?} is not a WWN (16 hex digits, with or without 0x)"),
                    )
                })?)),
                (None, None) => None,
            };
            if live.is_some() {
                let Some(dev) = device else {
                    return Err(field_err(
                        format!("disk[{i}]"),
                        "has neither serial nor wwn: a disk of a running VM (qmp) is picked by its device's serial or wwn, never by name or position",
                    ));
                };
                for (key, set) in [
                    ("path", d.path.is_some()),
                    ("source", d.source.is_some()),
                    ("tls_creds_dir", d.tls_creds_dir.is_some()),
                    ("changed_extents", d.changed_extents.is_some()),
                ] {
                    if set {
                        return Err(field_err(
                            format!("disk[{i}].{key}"),
                            "does not apply to a running VM's disk (read over qmp, its changes tracked by QEMU's bitmaps); remove it",
                        ));
                    }
                }
                if let Some(first) = devices.insert(dev.to_string(), i) {
                    return Err(field_err(
                        format!("disk[{i}]"),
                        &format!("{dev} is also disk[{first}]'s; each device is listed once"),
                    ));
                }
                disks.push(DiskEntry {
                    id,
                    label,
                    path: PathBuf::new(),
                    changed_extents: None,
                    source: None,
                    device: Some(dev),
                });
                continue;
            }
            if device.is_some() {
                return Err(field_err(
                    format!("disk[{i}]"),
                    "has a serial or wwn, which picks a device of a running VM: add `qmp = \"SOCKET\"` at the top, or remove it",
                ));
            }
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
                device: None,
            });
        }
        Ok(VmManifest {
            name: name.to_string(),
            disks,
            live,
        })
    }
}

/// A WWN as QEMU reports it (`0x` and 16 lower-case hex digits), from 16 hex digits
/// with or without `0x`.
pub fn parse_wwn(w: &str) -> Option<String> {
    let h = w.trim();
    let h = h
        .strip_prefix("0x")
        .or_else(|| h.strip_prefix("0X"))
        .unwrap_or(h);
    if h.len() != 16 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("0x{}", h.to_ascii_lowercase()))
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
        if let Some(l) = &self.live {
            t.push_str(&format!("qmp = {}\n", q(&l.qmp.to_string_lossy())));
            if let Some(a) = &l.guest_agent {
                t.push_str(&format!("guest_agent = {}\n", q(&a.to_string_lossy())));
            }
            if let Some(s) = l.freeze_timeout {
                t.push_str(&format!("freeze_timeout = {s}\n"));
            }
        }
        for d in &self.disks {
            t.push_str("\n[[disk]]\n");
            t.push_str(&format!("id = {}\n", q(&d.id.to_string())));
            if let Some(l) = &d.label {
                t.push_str(&format!("label = {}\n", q(l)));
            }
            match &d.device {
                Some(DeviceMatch::Serial(s)) => {
                    t.push_str(&format!("serial = {}\n", q(s)));
                    continue;
                }
                Some(DeviceMatch::Wwn(w)) => {
                    t.push_str(&format!("wwn = {}\n", q(w)));
                    continue;
                }
                None => {}
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
    fn a_running_vm_picks_disks_by_serial_or_wwn() {
        let text = r#"name = "web01"
qmp = "run/web01.qmp"
guest_agent = "/run/web01.qga"
freeze_timeout = 10
[[disk]]
id = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d11"
label = "root"
serial = "web01-root"
[[disk]]
id = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d12"
wwn = "5000C50015EA71AC"
"#;
        let m = parse(text).unwrap();
        let live = m.live.clone().unwrap();
        assert_eq!(live.qmp, Path::new("/vms/run/web01.qmp"));
        assert_eq!(
            live.guest_agent.as_deref(),
            Some(Path::new("/run/web01.qga"))
        );
        assert_eq!(live.freeze_timeout, Some(10));
        assert_eq!(
            m.disks[0].device,
            Some(DeviceMatch::Serial("web01-root".into()))
        );
        assert_eq!(
            m.disks[1].device,
            Some(DeviceMatch::Wwn("0x5000c50015ea71ac".into()))
        );
        assert_eq!(parse(&m.to_toml()).unwrap(), m);
        let bad = |t: String, want: &str| {
            let e = parse(&t).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        };
        bad(
            text.replace("serial = \"web01-root\"", ""),
            "neither serial nor wwn",
        );
        bad(
            text.replace("serial = \"web01-root\"", "serial = \"a\"\npath = \"x\""),
            "disk[0].path",
        );
        bad(text.replace("5000C50015EA71AC", "50"), "is not a WWN");
        bad(
            text.replace("wwn = \"5000C50015EA71AC\"", "serial = \"web01-root\""),
            "also disk[0]",
        );
        bad(
            text.replace("qmp = \"run/web01.qmp\"\n", ""),
            "running VM only",
        );
        bad(
            "name = \"a\"\n[[disk]]\nid = \"6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d11\"\nserial = \"s\"\n".into(),
            "add `qmp",
        );
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
