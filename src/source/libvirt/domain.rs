//! A libvirt domain as `virsh` shows it: its disks and their identity (serial / wwn,
//! never the target name or order), its checkpoints, and a backup job of tapevault's
//! that a killed run left running.

use std::path::Path;

use uuid::Uuid;

use super::virsh::{Virsh, VirshError};
use super::xml::{self, Element};
use crate::source::qmp::disks::{derive_disk_id, identity_source};

/// Every checkpoint, socket and scratch file tapevault makes starts with this.
pub const PREFIX: &str = "tapevault-";

/// One disk of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// The target name (`vda`): the export's name and libvirt's key in checkpoint and
    /// backup XML, never the disk's identity.
    pub target: String,
    /// `disk`, `cdrom`, `floppy`, `lun`.
    pub device: String,
    /// The format libvirt opens (`qcow2` keeps checkpoint bitmaps; `raw` cannot).
    pub format: String,
    /// The image file or block device (or `protocol:name` of a network disk).
    pub source: String,
    pub size: u64,
    pub read_only: bool,
    pub serial: Option<String>,
    /// As `0x` and 16 lowercase hex digits (as QMP reports it, so the identity is the
    /// same through either driver).
    pub wwn: Option<String>,
}

impl DomainDisk {
    pub fn derived_id(&self) -> Option<Uuid> {
        derive_disk_id(self.serial.as_deref(), self.wwn.as_deref())
    }

    pub fn identity_source(&self) -> String {
        identity_source(self.serial.as_deref(), self.wwn.as_deref())
    }

    /// Whether a backup takes it: a writable disk with a medium.
    pub fn backed_up(&self) -> bool {
        matches!(self.device.as_str(), "disk" | "lun") && !self.read_only && !self.source.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub uuid: Option<String>,
    /// `running`, `paused`, `shut off`, ... as `virsh domstate` says.
    pub state: String,
    pub disks: Vec<DomainDisk>,
    /// The guest agent channel (`org.qemu.guest_agent.0`): `None` when the domain has
    /// none; else its live `state` (`connected`, `disconnected`, or empty when libvirt
    /// does not say).
    pub agent: Option<String>,
}

/// The virtio-serial port name of the QEMU guest agent.
pub const AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// Reads the domain's live XML, state and disk sizes.
pub fn inspect(v: &Virsh, dom: &str) -> Result<Domain, VirshError> {
    let text = v.run(&["dumpxml", dom])?;
    let bad = |m: String| VirshError {
        command: format!("virsh dumpxml {dom}"),
        message: m,
    };
    let root = xml::parse(&text).map_err(|e| bad(format!("unreadable domain XML: {e}")))?;
    let state = v.run(&["domstate", dom])?.trim().to_string();
    let mut disks = Vec::new();
    if let Some(devs) = root.child("devices") {
        for d in devs.children_named("disk") {
            let mut disk = parse_disk(d);
            if disk.backed_up() {
                disk.size = capacity(v, dom, &disk.target)?;
            }
            disks.push(disk);
        }
    }
    let agent = root.child("devices").and_then(|devs| {
        devs.children_named("channel")
            .filter_map(|c| c.child("target"))
            .find(|t| t.attr("name") == Some(AGENT_CHANNEL))
            .map(|t| t.attr("state").unwrap_or("").to_string())
    });
    Ok(Domain {
        agent,
        name: root
            .child("name")
            .map(|n| n.text.trim().to_string())
            .unwrap_or_else(|| dom.to_string()),
        uuid: root.child("uuid").map(|n| n.text.trim().to_string()),
        state,
        disks,
    })
}

fn parse_disk(d: &Element) -> DomainDisk {
    let src = d.child("source");
    let source = src
        .and_then(|s| {
            s.attr("file")
                .or_else(|| s.attr("dev"))
                .map(str::to_string)
                .or_else(|| {
                    let name = s.attr("name")?;
                    Some(match s.attr("protocol") {
                        Some(p) => format!("{p}:{name}"),
                        None => match s.attr("pool") {
                            Some(pool) => format!("{pool}/{name}"),
                            None => name.to_string(),
                        },
                    })
                })
                .or_else(|| s.attr("volume").map(str::to_string))
        })
        .unwrap_or_default();
    let text = |n: &str| {
        d.child(n)
            .map(|e| e.text.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    DomainDisk {
        target: d
            .child("target")
            .and_then(|t| t.attr("dev"))
            .unwrap_or("")
            .to_string(),
        device: d.attr("device").unwrap_or("disk").to_string(),
        format: d
            .child("driver")
            .and_then(|t| t.attr("type"))
            .unwrap_or("raw")
            .to_string(),
        source,
        size: 0,
        read_only: d.child("readonly").is_some(),
        serial: text("serial"),
        wwn: text("wwn").map(|w| {
            let w = w.trim_start_matches("0x").to_ascii_lowercase();
            format!("0x{w:0>16}")
        }),
    }
}

/// The disk's virtual size in bytes (`virsh domblkinfo`).
pub fn capacity(v: &Virsh, dom: &str, target: &str) -> Result<u64, VirshError> {
    let out = v.run(&["domblkinfo", dom, target])?;
    out.lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("Capacity:")?;
            rest.trim().parse().ok()
        })
        .ok_or_else(|| VirshError {
            command: format!("virsh domblkinfo {dom} {target}"),
            message: format!("no capacity in its output {out:?}"),
        })
}

/// What a qcow2 image's header says of its persistent bitmaps
/// (`qemu-img info --force-share`, read while QEMU has the image open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBitmaps {
    pub cluster_size: u64,
    /// (name, granularity in bytes) of the bitmaps stored in the image. QEMU stores a
    /// bitmap created while it runs only when it closes the image (shutdown,
    /// migration): a checkpoint made in the running QEMU is not listed yet.
    pub bitmaps: Vec<(String, u64)>,
}

impl ImageBitmaps {
    pub fn granularity(&self, name: &str) -> Option<u64> {
        self.bitmaps
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, g)| *g)
    }
}

/// The granularity QEMU gives a bitmap added without one on a node with this cluster
/// size: the cluster size, at least 4 KiB and at most 64 KiB. libvirt never names a
/// granularity for a checkpoint's bitmap (its checkpoint XML has no such attribute).
pub fn default_granularity(cluster_size: u64) -> u64 {
    if cluster_size == 0 {
        65536
    } else {
        cluster_size.clamp(4096, 65536)
    }
}

/// Reads a local image's bitmap directory with `qemu-img info --force-share`.
pub fn image_bitmaps(path: &str) -> Result<ImageBitmaps, String> {
    let o = std::process::Command::new("qemu-img")
        .args(["info", "--force-share", "--output=json", path])
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run qemu-img (Debian: qemu-utils): {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "`qemu-img info --force-share {path}` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    parse_image_bitmaps(&String::from_utf8_lossy(&o.stdout))
        .map_err(|e| format!("`qemu-img info --force-share {path}`: {e}"))
}

fn parse_image_bitmaps(text: &str) -> Result<ImageBitmaps, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("unreadable JSON: {e}"))?;
    let cluster_size = v
        .get("cluster-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or("no cluster-size (not a qcow2 image?)")?;
    let bitmaps = v
        .pointer("/format-specific/data/bitmaps")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|b| {
                    Some((
                        b.get("name")?.as_str()?.to_string(),
                        b.get("granularity")?.as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ImageBitmaps {
        cluster_size,
        bitmaps,
    })
}

/// Whether a connection URI names this host (no host part: `qemu:///system`,
/// `qemu+unix:///system?socket=...`); `None` is virsh's default, LIBVIRT_DEFAULT_URI.
pub fn is_local_uri(uri: Option<&str>) -> bool {
    let env = std::env::var("LIBVIRT_DEFAULT_URI").ok();
    match uri.or(env.as_deref()) {
        None => true,
        Some(u) => match u.split_once("://") {
            Some((_, rest)) => rest.starts_with('/'),
            None => true,
        },
    }
}

/// The names of the domain's checkpoints.
pub fn checkpoints(v: &Virsh, dom: &str) -> Result<Vec<String>, VirshError> {
    Ok(v.run(&["checkpoint-list", dom, "--name"])?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// A checkpoint's XML as libvirt gives it (with the domain's XML).
pub fn checkpoint_xml(v: &Virsh, dom: &str, name: &str) -> Result<String, VirshError> {
    v.run(&["checkpoint-dumpxml", dom, name])
}

/// The targets of the disks a checkpoint holds a bitmap of.
pub fn checkpoint_disks(text: &str) -> Result<Vec<String>, String> {
    let root = xml::parse(text)?;
    Ok(root
        .child("disks")
        .map(|d| {
            d.children_named("disk")
                .filter(|x| x.attr("checkpoint") == Some("bitmap"))
                .filter_map(|x| x.attr("name").map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// The checkpoint XML without its `<parent>` (libvirt refuses to redefine a
/// checkpoint whose parent it does not know; tapevault retires parents).
pub fn without_parent(text: &str) -> String {
    let end_head = text.find("<domain ").unwrap_or(text.len());
    match (text.find("<parent>"), text.find("</parent>")) {
        (Some(a), Some(b)) if a < b && b < end_head => {
            format!("{}{}", &text[..a], &text[b + "</parent>".len()..])
        }
        _ => text.to_string(),
    }
}

/// Defines a checkpoint again from its saved XML (libvirt lost its metadata); a
/// parent libvirt no longer knows is left out.
pub fn redefine(v: &Virsh, dom: &str, text: &str, dir: &Path) -> Result<(), VirshError> {
    let known = checkpoints(v, dom)?;
    let parent = xml::parse(text).ok().and_then(|r| {
        r.child("parent")
            .and_then(|p| p.child("name"))
            .map(|n| n.text.trim().to_string())
    });
    let text = match parent {
        Some(p) if !known.contains(&p) => without_parent(text),
        _ => text.to_string(),
    };
    let f = dir.join(format!("{PREFIX}redefine.xml"));
    std::fs::write(&f, text).map_err(|e| VirshError {
        command: format!("virsh checkpoint-create {dom} --redefine"),
        message: format!("cannot write {}: {e}", f.display()),
    })?;
    let r = v.run(&[
        "checkpoint-create",
        dom,
        "--redefine",
        "--xmlfile",
        &f.to_string_lossy(),
    ]);
    let _ = std::fs::remove_file(&f);
    r.map(|_| ())
}

/// Deletes a checkpoint (its bitmaps merge into its parent's); when libvirt cannot
/// find the bitmaps any more (QEMU died, the image was replaced) only the metadata.
pub fn delete_checkpoint(v: &Virsh, dom: &str, name: &str) -> Result<(), VirshError> {
    match v.run(&["checkpoint-delete", dom, name]) {
        Ok(_) => Ok(()),
        Err(e) => v
            .run(&["checkpoint-delete", dom, name, "--metadata"])
            .map(|_| ())
            .map_err(|e2| VirshError {
                command: e2.command,
                message: format!("{} (after: {})", e2.message, e.message),
            }),
    }
}

/// The domain's running pull-mode backup job, as `virsh backup-dumpxml` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    /// The export's server: the unix socket path, or `tcp HOST:PORT`.
    pub server: String,
    /// Whether it is tapevault's: its socket's file name, or else every exported
    /// disk's export name, starts with [`PREFIX`].
    pub ours: bool,
}

/// The domain's running backup job, if there is one.
pub fn running_backup_job(v: &Virsh, dom: &str) -> Option<RunningJob> {
    let text = v.run(&["backup-dumpxml", dom]).ok()?;
    Some(parse_running_job(&text))
}

fn parse_running_job(text: &str) -> RunningJob {
    let Ok(root) = xml::parse(text) else {
        return RunningJob {
            server: String::new(),
            ours: false,
        };
    };
    let server = root.child("server");
    if let Some(sock) = server.and_then(|s| s.attr("socket")) {
        return RunningJob {
            server: sock.to_string(),
            ours: Path::new(sock)
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(PREFIX)),
        };
    }
    let names: Vec<Option<&str>> = root
        .child("disks")
        .map(|d| {
            d.children_named("disk")
                .filter(|x| x.attr("backup") != Some("no"))
                .map(|x| x.attr("exportname"))
                .collect()
        })
        .unwrap_or_default();
    RunningJob {
        server: match server {
            Some(s) => format!(
                "{} {}:{}",
                s.attr("transport").unwrap_or("tcp"),
                s.attr("name").unwrap_or(""),
                s.attr("port").unwrap_or("")
            ),
            None => String::new(),
        },
        ours: !names.is_empty()
            && names
                .iter()
                .all(|n| n.is_some_and(|n| n.starts_with(PREFIX))),
    }
}

/// Ends a backup job of tapevault's that a killed run left. Another backup job is an
/// error naming it. Returns what was removed, in words.
pub fn abort_leftover_job(v: &Virsh, dom: &str) -> Result<Option<String>, String> {
    let Some(job) = running_backup_job(v, dom) else {
        return Ok(None);
    };
    if !job.ours {
        return Err(format!(
            "domain {dom} runs a backup job that is not tapevault's (server {:?}): wait for it to end, or end it with `virsh domjobabort {dom}`",
            job.server
        ));
    }
    v.run(&["domjobabort", dom]).map_err(|e| e.to_string())?;
    Ok(Some(format!(
        "backup job of domain {dom} (server {})",
        job.server
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_read_with_their_identity() {
        let root = xml::parse(
            "<domain><devices>\
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/v/a.qcow2'/>\
             <target dev='vda' bus='virtio'/><serial>SER-A</serial></disk>\
             <disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='sdb'/><wwn>5000C50015EA71AC</wwn></disk>\
             <disk type='file' device='cdrom'><target dev='sdc'/><readonly/></disk>\
             </devices></domain>",
        )
        .unwrap();
        let d: Vec<DomainDisk> = root
            .child("devices")
            .unwrap()
            .children_named("disk")
            .map(parse_disk)
            .collect();
        assert_eq!(d[0].source, "/v/a.qcow2");
        assert_eq!(d[0].format, "qcow2");
        assert!(d[0].backed_up());
        assert_eq!(
            d[0].derived_id(),
            derive_disk_id(Some("SER-A"), None),
            "the same id as the QMP driver derives"
        );
        assert_eq!(d[1].wwn.as_deref(), Some("0x5000c50015ea71ac"));
        assert_eq!(d[1].format, "raw");
        assert!(!d[2].backed_up());
        assert_eq!(d[2].derived_id(), None);
    }

    #[test]
    fn a_parent_is_left_out_of_a_redefinition() {
        let x = "<domaincheckpoint>\n  <name>tapevault-3</name>\n  <parent>\n    <name>tapevault-2</name>\n  </parent>\n  <domain type='qemu'><name>d</name></domain>\n</domaincheckpoint>";
        let y = without_parent(x);
        assert!(!y.contains("tapevault-2"), "{y}");
        assert!(xml::parse(&y).is_ok());
        assert_eq!(without_parent(&y), y);
    }

    #[test]
    fn image_bitmaps_and_their_default_granularity() {
        let j = r#"{"virtual-size": 67108864, "cluster-size": 16384, "format": "qcow2",
            "format-specific": {"type": "qcow2", "data": {"bitmaps": [
              {"flags": ["in-use", "auto"], "name": "tapevault-1", "granularity": 65536},
              {"flags": ["auto"], "name": "x", "granularity": 16384}]}}}"#;
        let b = parse_image_bitmaps(j).unwrap();
        assert_eq!(b.cluster_size, 16384);
        assert_eq!(b.granularity("tapevault-1"), Some(65536));
        assert_eq!(b.granularity("tapevault-2"), None);
        let raw = r#"{"virtual-size": 1, "format": "raw"}"#;
        assert!(parse_image_bitmaps(raw).is_err());
        assert_eq!(default_granularity(65536), 65536);
        assert_eq!(default_granularity(2 << 20), 65536);
        assert_eq!(default_granularity(512), 4096);
        assert_eq!(default_granularity(16384), 16384);
    }

    #[test]
    fn a_running_job_is_ours_by_its_socket_or_its_export_names() {
        let j = parse_running_job("<domainbackup mode='pull'><server transport='unix' socket='/s/tapevault-nbd.sock'/><disks><disk name='vda' backup='yes' exportname='vda'/></disks></domainbackup>");
        assert!(j.ours);
        let j = parse_running_job("<domainbackup mode='pull'><server transport='unix' socket='/s/other.sock'/></domainbackup>");
        assert!(!j.ours);
        let j = parse_running_job("<domainbackup mode='pull'><server transport='tcp' name='10.0.0.1' port='10809'/><disks><disk name='vda' backup='yes' exportname='tapevault-vda'/><disk name='vdb' backup='no'/></disks></domainbackup>");
        assert!(j.ours);
        assert_eq!(j.server, "tcp 10.0.0.1:10809");
        let j = parse_running_job("<domainbackup mode='pull'><server transport='tcp' name='h' port='1'/><disks><disk name='vda' backup='yes' exportname='tapevault-vda'/><disk name='vdb' backup='yes'/></disks></domainbackup>");
        assert!(!j.ours);
    }

    #[test]
    fn local_and_remote_uris() {
        assert!(is_local_uri(Some("qemu:///system")));
        assert!(is_local_uri(Some("qemu+unix:///system?socket=/x/s")));
        assert!(!is_local_uri(Some("qemu+ssh://root@kvm1/system")));
        assert!(!is_local_uri(Some("qemu+tls://kvm1.example/system")));
    }

    #[test]
    fn checkpoint_disks_are_those_with_a_bitmap() {
        let x = "<domaincheckpoint><name>tapevault-2</name><disks>\
                 <disk name='vda' checkpoint='bitmap' bitmap='tapevault-2'/>\
                 <disk name='vdb' checkpoint='no'/></disks></domaincheckpoint>";
        assert_eq!(checkpoint_disks(x).unwrap(), vec!["vda".to_string()]);
    }
}
