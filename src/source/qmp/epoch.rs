//! Change-tracking epochs of a running VM's disk: one persistent dirty bitmap per
//! epoch, `tapevault-<N>`, and the change id an image records for it (bitmap, virtual
//! size, granularity). Which disk gets an incremental, and why the others get a full.

use super::disks::VmDisk;

/// Every QEMU object tapevault creates starts with this (bitmaps, nodes, jobs,
/// exports), so a later run can find and remove what a killed one left.
pub const PREFIX: &str = "tapevault-";

/// The disabled, frozen copy of an epoch's bitmap that an export carries.
pub const EXPORT_BITMAP: &str = "tapevault-export";

/// The bitmap name of epoch `n`.
pub fn bitmap_name(epoch: u64) -> String {
    format!("{PREFIX}{epoch}")
}

/// The epoch number of a tapevault epoch bitmap name.
pub fn epoch_of(name: &str) -> Option<u64> {
    let n = name.strip_prefix(PREFIX)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

/// What an image records as its change id: the epoch that started at its freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeId {
    pub epoch: u64,
    pub size: u64,
    pub granularity: u64,
}

impl ChangeId {
    pub fn bitmap(&self) -> String {
        bitmap_name(self.epoch)
    }

    pub fn parse(s: &str) -> Option<ChangeId> {
        let rest = s.strip_prefix("qemu-bitmap:")?;
        let mut parts = rest.split(':');
        let epoch = epoch_of(parts.next()?)?;
        let size = parts.next()?.strip_prefix("size=")?.parse().ok()?;
        let granularity = parts.next()?.strip_prefix("granularity=")?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(ChangeId {
            epoch,
            size,
            granularity,
        })
    }
}

impl std::fmt::Display for ChangeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "qemu-bitmap:{}:size={}:granularity={}",
            self.bitmap(),
            self.size,
            self.granularity
        )
    }
}

/// How one disk is read this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Read the whole disk (unallocated ranges may still be skipped); the reason is
    /// said out loud.
    Full { reason: String },
    /// Read what the previous epoch's bitmap marks dirty.
    Incremental { from: ChangeId },
}

/// Decides from the change id the disk's newest good image recorded (`previous`) and
/// what QEMU holds now. Never a guess: anything that does not prove the bitmap covers
/// every write since that image is a full, with the reason.
pub fn decide(disk: &VmDisk, previous: Option<&str>) -> Decision {
    let full = |reason: String| Decision::Full { reason };
    let Some(prev) = previous else {
        return full("no earlier good image of this disk with a QEMU bitmap epoch (a disk new to the VM, or the first backup)".into());
    };
    let Some(id) = ChangeId::parse(prev) else {
        return full(format!(
            "the newest good image recorded change id {prev:?}, which is not a tapevault QEMU bitmap epoch"
        ));
    };
    let name = id.bitmap();
    let Some(b) = disk.bitmap(&name) else {
        return full(format!(
            "bitmap {name} is missing on node {} (QEMU was restarted after a crash or kill, the VM moved host, or the image was replaced): changes since the last image are unknown",
            disk.node
        ));
    };
    if b.inconsistent {
        return full(format!(
            "bitmap {name} on node {} is inconsistent (QEMU died with the image open, so it may have missed writes)",
            disk.node
        ));
    }
    if !b.recording {
        return full(format!(
            "bitmap {name} on node {} is not recording (someone disabled it), so it may have missed writes",
            disk.node
        ));
    }
    if b.busy {
        return full(format!(
            "bitmap {name} on node {} is busy (in use by another job)",
            disk.node
        ));
    }
    if b.granularity != id.granularity {
        return full(format!(
            "bitmap {name} has granularity {} bytes, the epoch recorded {}",
            b.granularity, id.granularity
        ));
    }
    if disk.size != id.size {
        return full(format!(
            "the virtual size changed from {} to {} bytes since the last image (a shrink and regrow loses dirty bits)",
            id.size, disk.size
        ));
    }
    Decision::Incremental { from: id }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::qmp::disks::Bitmap;

    fn disk(bitmaps: Vec<Bitmap>) -> VmDisk {
        VmDisk {
            qdev: "/machine/peripheral/vd0/virtio-backend".into(),
            node: "drive0".into(),
            driver: "qcow2".into(),
            filename: "x".into(),
            size: 1 << 26,
            read_only: false,
            serial: Some("S".into()),
            wwn: None,
            bitmaps,
        }
    }

    fn bm(name: &str) -> Bitmap {
        Bitmap {
            name: name.into(),
            granularity: 65536,
            recording: true,
            persistent: true,
            inconsistent: false,
            busy: false,
            count: 0,
        }
    }

    #[test]
    fn change_id_round_trips_and_rejects_others() {
        let id = ChangeId {
            epoch: 7,
            size: 1 << 26,
            granularity: 65536,
        };
        assert_eq!(ChangeId::parse(&id.to_string()), Some(id));
        for bad in [
            "",
            "52-7",
            "qemu-bitmap:tapevault-07:size=1:granularity=2",
            "qemu-bitmap:cp1:size=1:granularity=2",
            "qemu-bitmap:tapevault-1:size=1:granularity=2:x",
        ] {
            assert_eq!(ChangeId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_doubt_is_a_full_with_its_reason() {
        let prev = ChangeId {
            epoch: 3,
            size: 1 << 26,
            granularity: 65536,
        }
        .to_string();
        assert_eq!(
            decide(&disk(vec![bm("tapevault-3")]), Some(&prev)),
            Decision::Incremental {
                from: ChangeId::parse(&prev).unwrap()
            }
        );
        let reason = |d: Decision| match d {
            Decision::Full { reason } => reason,
            other => panic!("expected a full, got {other:?}"),
        };
        assert!(reason(decide(&disk(vec![]), None)).contains("no earlier good image"));
        assert!(reason(decide(&disk(vec![bm("tapevault-2")]), Some(&prev))).contains("missing"));
        let mut b = bm("tapevault-3");
        b.inconsistent = true;
        assert!(reason(decide(&disk(vec![b]), Some(&prev))).contains("inconsistent"));
        let mut b = bm("tapevault-3");
        b.granularity = 4096;
        assert!(reason(decide(&disk(vec![b]), Some(&prev))).contains("granularity"));
        let mut d = disk(vec![bm("tapevault-3")]);
        d.size += 65536;
        assert!(reason(decide(&d, Some(&prev))).contains("virtual size"));
        assert!(reason(decide(&disk(vec![bm("tapevault-3")]), Some("52-7")))
            .contains("not a tapevault"));
    }
}
