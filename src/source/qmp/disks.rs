//! A running VM's disks as QEMU sees them (`query-block`, `query-named-block-nodes`,
//! `qom-get`), and each disk's identity: the manifest's UUID, or one derived from the
//! device's `serial` or `wwn`. Node names, device ids and order are never identity.

use serde_json::{json, Value};
use uuid::Uuid;

use super::client::QmpClient;
use super::error::QmpError;

/// The namespace of disk ids derived from a serial or a WWN (UUIDv5), fixed forever:
/// changing it would start every chain anew.
pub const IDENTITY_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_3c3a_9a55_4f0e_b2f1_7a6e_3c11_d0e5);

/// A disk's id derived from its device, shared by the QMP and libvirt drivers so a
/// disk keeps its identity whichever way it is reached: a serial that is a UUID is
/// taken as is (OpenStack and many tools use the volume UUID as serial); otherwise
/// UUIDv5 of the WWN (as `0x` and 16 lowercase hex digits), else of the serial. `None`
/// when the device has neither.
pub fn derive_disk_id(serial: Option<&str>, wwn: Option<&str>) -> Option<Uuid> {
    if let Some(s) = serial {
        if let Ok(u) = Uuid::parse_str(s) {
            return Some(u);
        }
    }
    if let Some(w) = wwn {
        return Some(Uuid::new_v5(
            &IDENTITY_NAMESPACE,
            format!("wwn:{w}").as_bytes(),
        ));
    }
    serial.map(|s| Uuid::new_v5(&IDENTITY_NAMESPACE, format!("serial:{s}").as_bytes()))
}

/// How [`derive_disk_id`] found the identity, for listings and errors.
pub fn identity_source(serial: Option<&str>, wwn: Option<&str>) -> String {
    match (serial, wwn) {
        (Some(s), _) if Uuid::parse_str(s).is_ok() => format!("serial {s}"),
        (_, Some(w)) => format!("wwn {w}"),
        (Some(s), None) => format!("serial {s:?}"),
        (None, None) => "none (the device has no serial or wwn)".to_string(),
    }
}

/// One dirty bitmap of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    pub name: String,
    pub granularity: u64,
    pub recording: bool,
    pub persistent: bool,
    /// Set after QEMU died with the image open (the bitmap is "in-use" in the qcow2).
    pub inconsistent: bool,
    pub busy: bool,
    /// Dirty bytes (at granularity resolution).
    pub count: u64,
}

/// One disk of the VM: a device with a medium.
#[derive(Debug, Clone)]
pub struct VmDisk {
    /// QOM path of the device's block backend (where guest writes enter), e.g.
    /// `/machine/peripheral/vd0/virtio-backend`.
    pub qdev: String,
    /// The node the device reads and writes (bitmaps live here).
    pub node: String,
    /// Its format driver (`qcow2` stores bitmaps in the image; other formats keep them
    /// in QEMU's memory only).
    pub driver: String,
    pub filename: String,
    pub size: u64,
    pub read_only: bool,
    pub serial: Option<String>,
    /// As `0x` and 16 hex digits.
    pub wwn: Option<String>,
    pub bitmaps: Vec<Bitmap>,
}

impl VmDisk {
    /// The id derived from the device ([`derive_disk_id`]); `None` when the device
    /// has neither a serial nor a wwn.
    pub fn derived_id(&self) -> Option<Uuid> {
        derive_disk_id(self.serial.as_deref(), self.wwn.as_deref())
    }

    /// How the identity was found, for listings and errors.
    pub fn identity_source(&self) -> String {
        identity_source(self.serial.as_deref(), self.wwn.as_deref())
    }

    /// The device id as the operator named it (`vd0` of `/machine/peripheral/vd0/...`).
    pub fn device_name(&self) -> &str {
        let p = self.qdev.trim_end_matches("/virtio-backend");
        p.rsplit('/').next().unwrap_or(p)
    }

    pub fn bitmap(&self, name: &str) -> Option<&Bitmap> {
        self.bitmaps.iter().find(|b| b.name == name)
    }
}

fn str_field(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

/// Lists the VM's disks: every device with an inserted medium. Devices without one
/// (an empty CD-ROM drive) are left out; read-only media are listed and marked.
pub fn discover(c: &mut QmpClient) -> Result<Vec<VmDisk>, QmpError> {
    let blocks = c.execute("query-block", None)?;
    let nodes = c.execute("query-named-block-nodes", Some(json!({"flat": true})))?;
    let empty = Vec::new();
    let nodes = nodes.as_array().unwrap_or(&empty);
    let mut out = Vec::new();
    for b in blocks.as_array().unwrap_or(&empty) {
        let Some(ins) = b.get("inserted") else {
            continue;
        };
        let qdev = str_field(b, "qdev");
        if qdev.is_empty() {
            // A -drive without a device: no guest sees it.
            continue;
        }
        let node = str_field(ins, "node-name");
        if str_field(ins, "drv") == "copy-before-write" {
            return Err(QmpError::Protocol {
                path: c.path().to_path_buf(),
                message: format!(
                    "device {qdev} is being read by a backup job (a copy-before-write filter sits above its disk); if it is a killed tapevault's, `live::discover_clean` removes it first, else wait until that backup ends"
                ),
            });
        }
        let image = ins.get("image").cloned().unwrap_or(Value::Null);
        let bitmaps = nodes
            .iter()
            .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node.as_str()))
            .and_then(|n| n.get("dirty-bitmaps"))
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(parse_bitmap).collect())
            .unwrap_or_default();
        let serial = qom_string(c, &qdev, "serial")?;
        let wwn = qom_u64(c, &qdev, "wwn")?
            .filter(|&w| w != 0)
            .map(|w| format!("0x{w:016x}"));
        out.push(VmDisk {
            node,
            driver: str_field(ins, "drv"),
            filename: str_field(ins, "file"),
            size: image
                .get("virtual-size")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            read_only: ins.get("ro").and_then(Value::as_bool).unwrap_or(false),
            serial: serial.filter(|s| !s.is_empty()),
            wwn,
            bitmaps,
            qdev,
        });
    }
    Ok(out)
}

/// The bitmaps of one node, now.
pub fn node_bitmaps(c: &mut QmpClient, node: &str) -> Result<Vec<Bitmap>, QmpError> {
    let nodes = c.execute("query-named-block-nodes", Some(json!({"flat": true})))?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node))
        .and_then(|n| n.get("dirty-bitmaps"))
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(parse_bitmap).collect())
        .unwrap_or_default())
}

fn parse_bitmap(v: &Value) -> Option<Bitmap> {
    let b = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    Some(Bitmap {
        name: v.get("name")?.as_str()?.to_string(),
        granularity: v.get("granularity").and_then(Value::as_u64).unwrap_or(0),
        recording: b("recording"),
        persistent: b("persistent"),
        inconsistent: b("inconsistent"),
        busy: b("busy"),
        count: v.get("count").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// A property of the device, or of its proxy when the backend has none
/// (`virtio-blk-pci` forwards its properties; other devices keep them on the device).
fn qom_get(c: &mut QmpClient, qdev: &str, prop: &str) -> Result<Option<Value>, QmpError> {
    let mut paths = vec![qdev.to_string()];
    if let Some(parent) = qdev.strip_suffix("/virtio-backend") {
        paths.push(parent.to_string());
    }
    for p in paths {
        match c.execute("qom-get", Some(json!({"path": p, "property": prop}))) {
            Ok(v) => return Ok(Some(v)),
            Err(QmpError::Command { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn qom_string(c: &mut QmpClient, qdev: &str, prop: &str) -> Result<Option<String>, QmpError> {
    Ok(qom_get(c, qdev, prop)?.and_then(|v| v.as_str().map(str::to_string)))
}

fn qom_u64(c: &mut QmpClient, qdev: &str, prop: &str) -> Result<Option<u64>, QmpError> {
    Ok(qom_get(c, qdev, prop)?.and_then(|v| v.as_u64()))
}

/// Disks taken (with their ids) and the writable disks left out.
pub type Selected = (Vec<(Uuid, VmDisk)>, Vec<VmDisk>);

/// The disks of a running VM a manifest names (`qmp` manifests, docs/CLI.md), each
/// matched by its device's serial or WWN and given the manifest's id. Returns them with
/// the VM's writable disks the manifest does not name (not backed up, said by the
/// caller). A named device the VM does not have, or one that is read-only, is an error
/// naming the VM's devices.
pub fn select_by_device(
    found: Vec<VmDisk>,
    wanted: &[(Uuid, crate::source::manifest::DeviceMatch)],
) -> Result<Selected, String> {
    use crate::source::manifest::DeviceMatch;
    let matches = |d: &VmDisk, m: &DeviceMatch| match m {
        DeviceMatch::Serial(s) => d.serial.as_deref() == Some(s.as_str()),
        DeviceMatch::Wwn(w) => d.wwn.as_deref() == Some(w.as_str()),
    };
    let mut chosen = Vec::new();
    for (id, m) in wanted {
        let Some(d) = found.iter().find(|d| matches(d, m)) else {
            let have: Vec<String> = found
                .iter()
                .map(|d| format!("{} ({})", d.device_name(), d.identity_source()))
                .collect();
            return Err(format!(
                "disk {id}: the VM has no device with {m} (its disks: {})",
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ));
        };
        if d.read_only {
            return Err(format!(
                "disk {id}: device {} ({m}) is read-only in the VM; tapevault backs up the disks a guest writes",
                d.device_name()
            ));
        }
        chosen.push((*id, d.clone()));
    }
    let others = found
        .into_iter()
        .filter(|d| !d.read_only && !chosen.iter().any(|(_, c)| c.qdev == d.qdev))
        .collect();
    Ok((chosen, others))
}
