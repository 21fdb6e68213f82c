//! [`Changer`] for a real SCSI media changer, with SMC-3 commands over SG_IO on its sg
//! node: MODE SENSE page 0x1D (element addresses), READ ELEMENT STATUS with volume tags,
//! MOVE MEDIUM and INITIALIZE ELEMENT STATUS. [`ScsiLibrary`] pairs it with the st
//! devices of its drives, given in drive-element order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    Changer, ChangerError, ChangerResult, Element, ElementKind, ElementRef, Inventory, TapeLibrary,
};
use crate::drive::st::StDrive;
use crate::drive::{DriveError, TapeDrive};
use crate::scsi::smc::{self, AddressAssignment, ElementStatus, ElementType};
use crate::scsi::{cdb, DataDirection, ScsiError, SenseKey, SgDevice};

/// Longest a MOVE MEDIUM may take: a large library's robot crossing frames, plus a
/// drive ejecting, takes minutes.
const MOVE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// INITIALIZE ELEMENT STATUS scans every barcode: up to an hour on big libraries.
const INIT_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// READ ELEMENT STATUS / MODE SENSE answer from the library's memory.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long a drive may take to become ready after a cartridge was moved into it
/// (LTO load and thread: about 15-20 s; older drives longer).
pub const LOAD_WAIT: Duration = Duration::from_secs(5 * 60);
/// Bytes per element descriptor we allow for (12 fixed + 2 x 36 volume tags + a device
/// identifier); used to size the READ ELEMENT STATUS allocation.
const DESCRIPTOR_ALLOWANCE: usize = 12 + 72 + 64;

fn scsi_err(e: ScsiError) -> ChangerError {
    if let ScsiError::Timeout { op, .. } = e {
        return ChangerError::Timeout { op };
    }
    if let ScsiError::Unsupported { op, .. } = e {
        return ChangerError::Unsupported { op };
    }
    ChangerError::Other(e.to_string())
}

/// A SCSI media changer on its sg node.
#[derive(Debug)]
pub struct ScsiChanger {
    sg: SgDevice,
    map: AddressAssignment,
    /// st devices of the drive elements, in element order (used to eject a cartridge
    /// before the robot takes it out of a drive).
    drives: Vec<PathBuf>,
}

impl ScsiChanger {
    pub fn open(changer: &Path, drives: &[PathBuf]) -> ChangerResult<ScsiChanger> {
        let sg = SgDevice::open(changer).map_err(|e| match e {
            ScsiError::Io { source, .. } => ChangerError::Io {
                op: "open changer",
                source,
            },
            e => scsi_err(e),
        })?;
        let map = read_address_assignment(&sg)?;
        if map.transport.1 == 0 {
            return Err(ChangerError::Other(format!(
                "{}: the changer reports no medium transport element",
                changer.display()
            )));
        }
        Ok(ScsiChanger {
            sg,
            map,
            drives: drives.to_vec(),
        })
    }

    pub fn addresses(&self) -> AddressAssignment {
        self.map
    }

    fn range(&self, kind: ElementKind) -> (u16, u16) {
        match kind {
            ElementKind::Drive => self.map.data_transfer,
            ElementKind::Slot => self.map.storage,
            ElementKind::MailSlot => self.map.import_export,
        }
    }

    /// The SCSI address of an element.
    pub fn address_of(&self, e: ElementRef) -> ChangerResult<u16> {
        let (first, n) = self.range(e.kind);
        if e.index >= n as usize {
            return Err(ChangerError::NoSuchElement { element: e });
        }
        first
            .checked_add(e.index as u16)
            .ok_or(ChangerError::NoSuchElement { element: e })
    }

    /// The element at a SCSI address.
    pub fn element_at(&self, address: u16) -> Option<ElementRef> {
        to_ref(&self.map, address)
    }

    fn read_status(
        &self,
        ty: ElementType,
        (first, n): (u16, u16),
    ) -> ChangerResult<Vec<ElementStatus>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let alloc = (8 + 8 + n as usize * DESCRIPTOR_ALLOWANCE).min(smc::MAX_ELEMENT_STATUS_LEN);
        let mut buf = vec![0u8; alloc];
        let c = self
            .sg
            .execute(
                "READ ELEMENT STATUS",
                &cdb::read_element_status(ty as u8, first, n, true, alloc as u32),
                DataDirection::FromDevice,
                &mut buf,
                STATUS_TIMEOUT,
            )
            .map_err(scsi_err)?;
        buf.truncate(c.transferred.max(8).min(alloc));
        smc::parse_element_status(&buf).map_err(|d| {
            ChangerError::Other(format!(
                "{}: bad READ ELEMENT STATUS reply: {d}",
                self.sg.path().display()
            ))
        })
    }

    /// Ask the library to re-inventory (scan barcodes).
    pub fn initialize_element_status(&mut self) -> ChangerResult<()> {
        self.sg
            .execute(
                "INITIALIZE ELEMENT STATUS",
                &cdb::initialize_element_status(),
                DataDirection::None,
                &mut [],
                INIT_TIMEOUT,
            )
            .map_err(scsi_err)?;
        Ok(())
    }

    fn eject_from_drive(&self, index: usize) {
        // Most libraries need the drive to unload the cartridge before the robot can
        // take it; tgt's does not care. Through st when the device is free; when a
        // process holds it open (st allows one opener), through the drive's sg node
        // (SSC LOAD UNLOAD with LOAD = 0). Failures are left to MOVE MEDIUM to report.
        let Some(p) = self.drives.get(index) else {
            return;
        };
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p)
        {
            Ok(f) => {
                let _ = crate::drive::st::ioctl::op(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    crate::drive::st::ioctl::MTOFFL,
                    1,
                );
            }
            Err(_) => {
                if let Some(sg) =
                    crate::scsi::sg_node_for_tape(p).and_then(|s| SgDevice::open(&s).ok())
                {
                    let _ = sg.execute(
                        "LOAD UNLOAD (unload)",
                        &cdb::load_unload(false),
                        DataDirection::None,
                        &mut [],
                        MOVE_TIMEOUT,
                    );
                }
            }
        }
    }
}

use std::os::unix::fs::OpenOptionsExt;

fn to_ref(map: &AddressAssignment, address: u16) -> Option<ElementRef> {
    for (kind, (first, n)) in [
        (ElementKind::Drive, map.data_transfer),
        (ElementKind::Slot, map.storage),
        (ElementKind::MailSlot, map.import_export),
    ] {
        if address >= first && (address as u32) < first as u32 + n as u32 {
            return Some(ElementRef {
                kind,
                index: (address - first) as usize,
            });
        }
    }
    None
}

fn read_address_assignment(sg: &SgDevice) -> ChangerResult<AddressAssignment> {
    let mut buf = [0u8; 255];
    let c = sg
        .execute(
            "MODE SENSE (element address assignment page)",
            &cdb::mode_sense_6(smc::ELEMENT_ADDRESS_PAGE, 0, 255, true),
            DataDirection::FromDevice,
            &mut buf,
            STATUS_TIMEOUT,
        )
        .map_err(scsi_err)?;
    smc::parse_address_assignment(&buf[..c.transferred.clamp(4, 255)])
        .map_err(|d| ChangerError::Other(format!("{}: {d}", sg.path().display())))
}

/// Build an inventory from element descriptors (pure; unit-tested).
pub fn inventory_from(map: &AddressAssignment, elements: &[ElementStatus]) -> Inventory {
    let mut inv = Inventory::default();
    for e in elements {
        let Some(r) = to_ref(map, e.address) else {
            continue;
        };
        let el = Element {
            element: r,
            address: e.address,
            barcode: e.full.then(|| e.volume_tag.clone().unwrap_or_default()),
            source: e.source.and_then(|s| to_ref(map, s)),
        };
        match r.kind {
            ElementKind::Drive => inv.drives.push(el),
            ElementKind::Slot => inv.slots.push(el),
            ElementKind::MailSlot => inv.mail_slots.push(el),
        }
    }
    for l in [&mut inv.drives, &mut inv.slots, &mut inv.mail_slots] {
        l.sort_by_key(|e| e.element.index);
    }
    inv
}

/// Map a failed MOVE MEDIUM to the trait's errors.
pub fn move_error(
    e: ScsiError,
    from: ElementRef,
    to: ElementRef,
    inv: Option<&Inventory>,
) -> ChangerError {
    if let Some(s) = e.sense() {
        if s.key == SenseKey::IllegalRequest && s.asc == 0x3b {
            match s.ascq {
                0x0d => {
                    let barcode = inv
                        .and_then(|i| i.all().find(|x| x.element == to))
                        .and_then(|x| x.barcode.clone())
                        .unwrap_or_default();
                    return ChangerError::DestinationFull {
                        element: to,
                        barcode,
                    };
                }
                0x0e => return ChangerError::SourceEmpty { element: from },
                _ => {}
            }
        }
        if s.key == SenseKey::IllegalRequest && s.asc == 0x21 && s.ascq == 0x01 {
            return ChangerError::Other(format!(
                "moving {from} to {to}: the library rejects an element address ({s})"
            ));
        }
        return ChangerError::Other(format!("moving {from} to {to} failed: {s}"));
    }
    scsi_err(e)
}

impl Changer for ScsiChanger {
    fn name(&self) -> String {
        self.sg.path().display().to_string()
    }

    fn inventory(&mut self) -> ChangerResult<Inventory> {
        let mut all = self.read_status(ElementType::DataTransfer, self.map.data_transfer)?;
        all.extend(self.read_status(ElementType::Storage, self.map.storage)?);
        all.extend(self.read_status(ElementType::ImportExport, self.map.import_export)?);
        Ok(inventory_from(&self.map, &all))
    }

    fn move_medium(&mut self, from: ElementRef, to: ElementRef) -> ChangerResult<()> {
        let src = self.address_of(from)?;
        let dst = self.address_of(to)?;
        let inv = self.inventory()?;
        let find = |r: ElementRef| inv.all().find(|e| e.element == r).cloned();
        match find(from) {
            Some(e) if e.is_full() => {}
            _ => return Err(ChangerError::SourceEmpty { element: from }),
        }
        if let Some(e) = find(to).filter(|e| e.is_full()) {
            return Err(ChangerError::DestinationFull {
                element: to,
                barcode: e.barcode.unwrap_or_default(),
            });
        }
        if from.kind == ElementKind::Drive {
            self.eject_from_drive(from.index);
        }
        self.sg
            .execute(
                "MOVE MEDIUM",
                &cdb::move_medium(self.map.transport.0, src, dst),
                DataDirection::None,
                &mut [],
                MOVE_TIMEOUT,
            )
            .map_err(|e| move_error(e, from, to, Some(&inv)))?;
        Ok(())
    }
}

/// A real library: a SCSI changer and the st devices of its drives (in drive-element order).
pub struct ScsiLibrary {
    changer: ScsiChanger,
    drives: Vec<PathBuf>,
}

impl ScsiLibrary {
    pub fn open(changer: &Path, drives: &[PathBuf]) -> ChangerResult<ScsiLibrary> {
        let c = ScsiChanger::open(changer, drives)?;
        let n = c.map.data_transfer.1 as usize;
        if drives.len() > n {
            return Err(ChangerError::Other(format!(
                "{} drives configured but the changer {} has only {n} drive elements",
                drives.len(),
                changer.display()
            )));
        }
        Ok(ScsiLibrary {
            changer: c,
            drives: drives.to_vec(),
        })
    }

    pub fn scsi_changer(&mut self) -> &mut ScsiChanger {
        &mut self.changer
    }
}

impl TapeLibrary for ScsiLibrary {
    fn changer(&mut self) -> &mut dyn Changer {
        &mut self.changer
    }

    fn open_drive(&mut self, index: usize) -> ChangerResult<Box<dyn TapeDrive>> {
        let path = self.drives.get(index).ok_or(ChangerError::NoSuchElement {
            element: ElementRef::drive(index),
        })?;
        // The drive is opened (and so reserved) even when empty: jobs open a drive and
        // then have the changer load it. Operations wait for the cartridge to be ready
        // (a real drive threads the tape for some seconds after MOVE MEDIUM).
        let mut d = StDrive::open_reserved(path).map_err(|e| match e {
            DriveError::Busy { detail } => ChangerError::Busy {
                element: ElementRef::drive(index),
                detail,
            },
            e => e.into(),
        })?;
        d.set_load_wait(LOAD_WAIT);
        Ok(Box::new(d))
    }

    fn drive_count(&self) -> usize {
        self.drives.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::smc::tests::element_status_bytes;
    use crate::scsi::Sense;

    fn tgt_map() -> AddressAssignment {
        AddressAssignment {
            transport: (1, 1),
            storage: (0x1000, 8),
            import_export: (0x10, 1),
            data_transfer: (0x100, 2),
        }
    }

    #[test]
    fn inventory_maps_addresses_to_elements_with_barcodes_and_sources() {
        let b = element_status_bytes(&[
            (
                4,
                vec![(0x100, Some("TV0003L6"), Some(0x1002)), (0x101, None, None)],
            ),
            (
                2,
                vec![
                    (0x1000, Some("TV0001L6"), None),
                    (0x1001, None, None),
                    (0x1002, None, None),
                ],
            ),
            (3, vec![(0x10, Some("CLN001L1"), None)]),
        ]);
        let inv = inventory_from(&tgt_map(), &smc::parse_element_status(&b).unwrap());
        assert_eq!(inv.drives.len(), 2);
        assert_eq!(inv.drives[0].barcode.as_deref(), Some("TV0003L6"));
        assert_eq!(inv.drives[0].source, Some(ElementRef::slot(2)));
        assert_eq!(inv.drives[1].barcode, None);
        assert_eq!(inv.find("TV0001L6").unwrap().element, ElementRef::slot(0));
        assert_eq!(inv.mail_slots[0].element, ElementRef::mail_slot(0));
        assert_eq!(
            inv.first_empty(ElementKind::Slot),
            Some(ElementRef::slot(1))
        );
    }

    #[test]
    fn a_full_element_without_a_label_has_an_empty_barcode() {
        let mut b = element_status_bytes(&[(2, vec![(0x1000, Some(""), None)])]);
        b[16 + 2] |= 1;
        let inv = inventory_from(&tgt_map(), &smc::parse_element_status(&b).unwrap());
        assert_eq!(inv.slots[0].barcode.as_deref(), Some(""));
    }

    #[test]
    fn elements_outside_the_assignment_are_ignored() {
        let b = element_status_bytes(&[(2, vec![(0x2000, Some("X"), None)])]);
        assert!(
            inventory_from(&tgt_map(), &smc::parse_element_status(&b).unwrap())
                .slots
                .is_empty()
        );
    }

    fn check(key: u8, asc: u8, ascq: u8) -> ScsiError {
        let b = [
            0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0,
        ];
        ScsiError::Check {
            op: "MOVE MEDIUM",
            device: "/dev/sg2".into(),
            sense: Sense::parse(&b).unwrap(),
        }
    }

    #[test]
    fn move_sense_becomes_typed_errors() {
        let (s, d) = (ElementRef::slot(0), ElementRef::drive(1));
        assert!(
            matches!(move_error(check(5, 0x3b, 0x0e), s, d, None), ChangerError::SourceEmpty { element } if element == s)
        );
        assert!(
            matches!(move_error(check(5, 0x3b, 0x0d), s, d, None), ChangerError::DestinationFull { element, .. } if element == d)
        );
        let other = move_error(check(4, 0x53, 0x00), s, d, None).to_string();
        assert!(
            other.contains("media load or eject failed") && other.contains("slot 0"),
            "{other}"
        );
        let t = ScsiError::Timeout {
            op: "MOVE MEDIUM",
            device: "x".into(),
            after: MOVE_TIMEOUT,
        };
        assert!(matches!(
            move_error(t, s, d, None),
            ChangerError::Timeout { .. }
        ));
    }

    #[test]
    fn opening_a_missing_changer_names_the_problem() {
        let e = ScsiLibrary::open(Path::new("/nonexistent/sg7"), &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("open changer"), "{e}");
    }
}
