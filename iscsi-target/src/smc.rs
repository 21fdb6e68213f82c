//! An SMC (medium changer) logical unit over a vtl-sim library: element status with
//! barcodes and drive identifiers, MOVE MEDIUM, EXCHANGE MEDIUM, mail slots as
//! import/export elements.

use std::sync::Arc;

use vtl_sim::{Element, ElementKind, Library, LibraryState, VtlError};

use crate::scsi::{
    self, key, mode_data, parse_mode_select, parse_mode_sense, Identity, LogicalUnit, Nexus,
    NexusState, Response, Sense,
};
use crate::ssc::TapeDrive;

/// Element addresses: one medium transport, then drives, mail slots and slots.
pub const TRANSPORT_ADDR: u16 = 0x0001;
pub const DRIVE_BASE: u16 = 0x0100;
pub const MAIL_BASE: u16 = 0x0300;
pub const SLOT_BASE: u16 = 0x0400;
/// Most elements of each kind the address map has room for.
pub const MAX_DRIVES: usize = (MAIL_BASE - DRIVE_BASE) as usize;
pub const MAX_MAIL_SLOTS: usize = (SLOT_BASE - MAIL_BASE) as usize;
pub const MAX_SLOTS: usize = (0xffff - SLOT_BASE) as usize;

/// SMC element type codes.
const ET_TRANSPORT: u8 = 1;
const ET_STORAGE: u8 = 2;
const ET_IMPORT_EXPORT: u8 = 3;
const ET_DATA_TRANSFER: u8 = 4;

/// The commands the changer supports, for REPORT SUPPORTED OPERATION CODES.
const OPCODES: &[scsi::OpInfo] = &[
    op(0x00, None, &[0x00, 0, 0, 0, 0, 0]),
    op(0x03, None, &[0x03, 0x01, 0, 0, 0xff, 0]),
    op(0x07, None, &[0x07, 0, 0, 0, 0, 0]),
    op(0x12, None, &[0x12, 0x01, 0xff, 0xff, 0xff, 0]),
    op(0x15, None, &[0x15, 0x11, 0, 0, 0xff, 0]),
    op(0x16, None, &[0x16, 0, 0, 0, 0, 0]),
    op(0x17, None, &[0x17, 0, 0, 0, 0, 0]),
    op(0x1a, None, &[0x1a, 0x08, 0xff, 0xff, 0xff, 0]),
    op(0x1b, None, &[0x1b, 0, 0xff, 0xff, 0x1f, 0]),
    op(0x1e, None, &[0x1e, 0, 0, 0, 0x03, 0]),
    op(0x2b, None, &[0x2b, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
    op(0x55, None, &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op(
        0x5a,
        None,
        &[0x5a, 0x08, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0],
    ),
    op(
        0xa0,
        None,
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    op(
        0xa3,
        Some(0x0c),
        &[
            0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(
        0xa5,
        None,
        &[0xa5, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0],
    ),
    op(
        0xa6,
        None,
        &[
            0xa6, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03, 0,
        ],
    ),
    op(
        0xb8,
        None,
        &[
            0xb8, 0x1f, 0xff, 0xff, 0xff, 0xff, 0x01, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(
        0xe7,
        None,
        &[0xe7, 0x01, 0xff, 0xff, 0, 0, 0xff, 0xff, 0, 0, 0, 0],
    ),
];

const fn op(op: u8, sa: Option<u16>, usage: &'static [u8]) -> scsi::OpInfo {
    scsi::OpInfo { op, sa, usage }
}

/// The media changer logical unit.
pub struct Changer {
    lib: Library,
    id: Identity,
    nexus: NexusState,
    /// The drives served beside the changer, by drive index.
    drives: Vec<Arc<TapeDrive>>,
    /// LUN of each drive (for the element descriptor's LU field).
    drive_luns: Vec<u64>,
    /// Serializes changer commands among themselves.
    op: std::sync::Mutex<()>,
}

/// One element as reported.
struct Elem {
    addr: u16,
    etype: u8,
    barcode: Option<String>,
    source: Option<u16>,
    drive: Option<usize>,
}

fn addr_of(e: Element) -> u16 {
    match e.kind {
        ElementKind::Drive => DRIVE_BASE + e.index as u16,
        ElementKind::MailSlot => MAIL_BASE + e.index as u16,
        ElementKind::Slot => SLOT_BASE + e.index as u16,
    }
}

fn changer_sense(e: &VtlError) -> Sense {
    match e {
        VtlError::SourceEmpty { .. } => Sense::new(key::ILLEGAL_REQUEST, 0x3b, 0x0e),
        VtlError::DestinationFull { .. } => Sense::new(key::ILLEGAL_REQUEST, 0x3b, 0x0d),
        VtlError::NoSuchElement { .. } => Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x01),
        VtlError::Busy { .. } => Sense::new(key::ILLEGAL_REQUEST, 0x53, 0x02),
        _ => Sense::internal_failure(),
    }
}

impl Changer {
    pub fn new(
        lib: Library,
        drives: Vec<Arc<TapeDrive>>,
        drive_luns: Vec<u64>,
        serial: String,
        naa_id: u64,
    ) -> Changer {
        Changer {
            lib,
            id: Identity {
                vendor: "TAPEVALT".into(),
                product: "VIRTUAL LIBRARY".into(),
                revision: "0001".into(),
                serial,
                naa_id,
            },
            nexus: NexusState::default(),
            drives,
            drive_luns,
            op: std::sync::Mutex::new(()),
        }
    }

    fn element(&self, st: &LibraryState, addr: u16) -> Option<Element> {
        let (kind, index) = if (DRIVE_BASE..MAIL_BASE).contains(&addr) {
            (ElementKind::Drive, (addr - DRIVE_BASE) as usize)
        } else if (MAIL_BASE..SLOT_BASE).contains(&addr) {
            (ElementKind::MailSlot, (addr - MAIL_BASE) as usize)
        } else if addr >= SLOT_BASE {
            (ElementKind::Slot, (addr - SLOT_BASE) as usize)
        } else {
            return None;
        };
        let n = match kind {
            ElementKind::Drive => st.drives.len(),
            ElementKind::MailSlot => st.mail_slots.len(),
            ElementKind::Slot => st.slots.len(),
        };
        (index < n).then_some(Element { kind, index })
    }

    fn elements(&self, st: &LibraryState) -> Vec<Elem> {
        let mut v = vec![Elem {
            addr: TRANSPORT_ADDR,
            etype: ET_TRANSPORT,
            barcode: None,
            source: None,
            drive: None,
        }];
        for (i, d) in st.drives.iter().enumerate() {
            v.push(Elem {
                addr: DRIVE_BASE + i as u16,
                etype: ET_DATA_TRANSFER,
                barcode: d.barcode.clone(),
                source: d.source.map(addr_of),
                drive: Some(i),
            });
        }
        for (i, s) in st.mail_slots.iter().enumerate() {
            v.push(Elem {
                addr: MAIL_BASE + i as u16,
                etype: ET_IMPORT_EXPORT,
                barcode: s.clone(),
                source: None,
                drive: None,
            });
        }
        for (i, s) in st.slots.iter().enumerate() {
            v.push(Elem {
                addr: SLOT_BASE + i as u16,
                etype: ET_STORAGE,
                barcode: s.clone(),
                source: None,
                drive: None,
            });
        }
        v
    }

    fn read_element_status(&self, cdb: &[u8]) -> Response {
        let voltag = cdb[1] & 0x10 != 0;
        let etype = cdb[1] & 0x0f;
        if etype > 4 {
            return Response::check(Sense::invalid_cdb_field(1, Some(0)));
        }
        let start = u16::from_be_bytes([cdb[2], cdb[3]]);
        let count = u16::from_be_bytes([cdb[4], cdb[5]]) as usize;
        let dvcid = cdb[6] & 0x01 != 0;
        let alloc = u32::from_be_bytes([0, cdb[7], cdb[8], cdb[9]]) as usize;
        let st = match self.lib.state() {
            Ok(s) => s,
            Err(e) => return Response::check(changer_sense(&e)),
        };
        let mut els: Vec<Elem> = self
            .elements(&st)
            .into_iter()
            .filter(|e| (etype == 0 || e.etype == etype) && e.addr >= start)
            .collect();
        els.sort_by_key(|e| e.addr);
        els.truncate(count);
        // Group consecutive elements of one type into element status pages.
        let mut pages: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < els.len() {
            let t = els[i].etype;
            let mut j = i;
            while j < els.len() && els[j].etype == t {
                j += 1;
            }
            let with_id = dvcid && t == ET_DATA_TRANSFER;
            let mut descs = Vec::new();
            let mut dlen = 0;
            for e in &els[i..j] {
                let d = self.descriptor(e, voltag, with_id);
                dlen = d.len();
                descs.extend(d);
            }
            pages.push(t);
            pages.push(if voltag { 0x80 } else { 0 });
            pages.extend_from_slice(&(dlen as u16).to_be_bytes());
            pages.push(0);
            pages.extend_from_slice(&(descs.len() as u32).to_be_bytes()[1..4]);
            pages.extend(descs);
            i = j;
        }
        let mut d = Vec::with_capacity(8 + pages.len());
        d.extend_from_slice(&els.first().map(|e| e.addr).unwrap_or(0).to_be_bytes());
        d.extend_from_slice(&(els.len() as u16).to_be_bytes());
        d.push(0);
        d.extend_from_slice(&(pages.len() as u32).to_be_bytes()[1..4]);
        d.extend(pages);
        Response::data(d, alloc)
    }

    fn descriptor(&self, e: &Elem, voltag: bool, with_id: bool) -> Vec<u8> {
        let mut d = vec![0u8; 12];
        d[0..2].copy_from_slice(&e.addr.to_be_bytes());
        let full = e.barcode.is_some();
        d[2] = match e.etype {
            ET_IMPORT_EXPORT => 0x08 | 0x20 | 0x10 | full as u8, // Access, InEnab, ExEnab
            ET_TRANSPORT => full as u8,
            _ => 0x08 | full as u8,
        };
        if e.etype == ET_DATA_TRANSFER {
            if let Some(lun) = e.drive.and_then(|i| self.drive_luns.get(i)) {
                if *lun < 8 {
                    d[6] = 0x10 | *lun as u8; // LUValid
                }
            }
        }
        if full {
            // Medium type 1: data medium (cleaning cartridges are CLN barcodes).
            let cleaning = e.barcode.as_deref().is_some_and(|b| b.starts_with("CLN"));
            d[9] = if cleaning { 2 } else { 1 };
            if let Some(src) = e.source {
                d[9] |= 0x80;
                d[10..12].copy_from_slice(&src.to_be_bytes());
            }
        }
        if voltag {
            let mut tag = vec![b' '; 32];
            if let Some(b) = &e.barcode {
                for (k, c) in b.bytes().take(32).enumerate() {
                    tag[k] = c;
                }
            } else {
                tag = vec![0; 32];
            }
            d.extend(tag);
            d.extend_from_slice(&[0, 0, 0, 0]);
        }
        if with_id {
            // Device identifier: T10 vendor ID designator of the drive.
            let mut ident = Vec::new();
            if let Some(drive) = e
                .drive
                .and_then(|i| self.drives.iter().find(|d| d.index() == i))
            {
                let id = drive.identity();
                let mut v: Vec<u8> = id.vendor.bytes().take(8).collect();
                v.resize(8, b' ');
                let mut p: Vec<u8> = id.product.bytes().take(16).collect();
                p.resize(16, b' ');
                ident.extend(v);
                ident.extend(p);
                ident.extend(id.serial.bytes());
            }
            ident.resize(ident.len().div_ceil(4) * 4, b' ');
            // Fixed size so every descriptor of the page has the same length.
            ident.resize(36, b' ');
            d.extend_from_slice(&[0x02, 0x01, 0x00, ident.len() as u8]);
            d.extend(ident);
        }
        d
    }

    fn drive_for(&self, e: Element) -> Option<&Arc<TapeDrive>> {
        (e.kind == ElementKind::Drive)
            .then(|| self.drives.iter().find(|d| d.index() == e.index))
            .flatten()
    }

    /// Move one cartridge, holding the lock of any drive involved so no command of
    /// that drive runs half before and half after the move.
    fn move_one(&self, from: Element, to: Element) -> Result<(), Sense> {
        let src_drive = self.drive_for(from);
        let dst_drive = self.drive_for(to);
        let mut src_guard = src_drive.map(|d| d.lock_state());
        if let Some(g) = src_guard.as_mut() {
            if !g.prevent.is_empty() {
                return Err(Sense::new(key::ILLEGAL_REQUEST, 0x53, 0x02));
            }
            match g.drive.flush() {
                Ok(()) | Err(VtlError::NoMedium { .. }) => {}
                Err(e) => return Err(crate::ssc::vtl_sense(&e, true)),
            }
        }
        let same = src_drive.is_some()
            && dst_drive.is_some()
            && src_drive.map(|d| d.index()) == dst_drive.map(|d| d.index());
        let mut dst_guard = if same {
            None
        } else {
            dst_drive.map(|d| d.lock_state())
        };
        self.lib
            .move_medium(from, to)
            .map_err(|e| changer_sense(&e))?;
        // The cartridge left the drive: its lock is free for other processes again.
        if let (Some(d), Some(g)) = (src_drive, src_guard.as_mut()) {
            if !same {
                let _ = d.release(g);
            }
        }
        if let Some(g) = dst_guard.as_mut() {
            g.media_changed = true;
        } else if same {
            if let Some(g) = src_guard.as_mut() {
                g.media_changed = true;
            }
        }
        Ok(())
    }

    fn check_transport(&self, cdb: &[u8]) -> Result<(), Sense> {
        let t = u16::from_be_bytes([cdb[2], cdb[3]]);
        if t != 0 && t != TRANSPORT_ADDR {
            return Err(Sense {
                field: Some((true, 2, None)),
                ..Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x01)
            });
        }
        Ok(())
    }

    fn lookup(&self, st: &LibraryState, cdb: &[u8], off: usize) -> Result<Element, Sense> {
        let a = u16::from_be_bytes([cdb[off], cdb[off + 1]]);
        self.element(st, a).ok_or(Sense {
            field: Some((true, off as u16, None)),
            ..Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x01)
        })
    }

    fn move_medium(&self, nexus: &Nexus, cdb: &[u8]) -> Response {
        if cdb[10] & 0x01 != 0 {
            return Response::check(Sense::invalid_cdb_field(10, Some(0)));
        }
        let r = (|| {
            self.check_transport(cdb)?;
            let st = self.lib.state().map_err(|e| changer_sense(&e))?;
            let from = self.lookup(&st, cdb, 4)?;
            let to = self.lookup(&st, cdb, 6)?;
            self.move_one(from, to)?;
            if from.kind == ElementKind::MailSlot || to.kind == ElementKind::MailSlot {
                self.nexus.raise(0x28, 0x01, Some(nexus));
            }
            Ok(())
        })();
        match r {
            Ok(()) => Response::good(),
            Err(s) => Response::check(s),
        }
    }

    fn exchange_medium(&self, nexus: &Nexus, cdb: &[u8]) -> Response {
        if cdb[10] & 0x03 != 0 {
            return Response::check(Sense::invalid_cdb_field(10, Some(0)));
        }
        let r = (|| {
            self.check_transport(cdb)?;
            let st = self.lib.state().map_err(|e| changer_sense(&e))?;
            let src = self.lookup(&st, cdb, 4)?;
            let d1 = self.lookup(&st, cdb, 6)?;
            let d2 = self.lookup(&st, cdb, 8)?;
            let get = |e| st.get(e).ok().flatten().cloned();
            if get(src).is_none() || get(d1).is_none() {
                return Err(Sense::new(key::ILLEGAL_REQUEST, 0x3b, 0x0e));
            }
            if d2 == src {
                // Swap through a free storage element (the robot's second gripper).
                let tmp = st
                    .slots
                    .iter()
                    .position(|s| s.is_none())
                    .map(|i| Element {
                        kind: ElementKind::Slot,
                        index: i,
                    })
                    .ok_or(Sense::new(key::ILLEGAL_REQUEST, 0x3b, 0x0d))?;
                self.move_one(d1, tmp)?;
                self.move_one(src, d1)?;
                self.move_one(tmp, src)?;
            } else {
                if get(d2).is_some() {
                    return Err(Sense::new(key::ILLEGAL_REQUEST, 0x3b, 0x0d));
                }
                self.move_one(d1, d2)?;
                self.move_one(src, d1)?;
            }
            if [src, d1, d2]
                .iter()
                .any(|e| e.kind == ElementKind::MailSlot)
            {
                self.nexus.raise(0x28, 0x01, Some(nexus));
            }
            Ok(())
        })();
        match r {
            Ok(()) => Response::good(),
            Err(s) => Response::check(s),
        }
    }

    fn mode_sense(&self, cdb: &[u8]) -> Response {
        let m = match parse_mode_sense(cdb) {
            Ok(m) => m,
            Err(s) => return Response::check(s),
        };
        let st = match self.lib.state() {
            Ok(s) => s,
            Err(e) => return Response::check(changer_sense(&e)),
        };
        let changeable = m.pc == 1;
        let page_1d = || {
            let mut p = vec![0u8; 20];
            p[0] = 0x1d;
            p[1] = 0x12;
            if !changeable {
                let put = |p: &mut Vec<u8>, off: usize, v: u16| {
                    p[off..off + 2].copy_from_slice(&v.to_be_bytes())
                };
                put(&mut p, 2, TRANSPORT_ADDR);
                put(&mut p, 4, 1);
                put(&mut p, 6, SLOT_BASE);
                put(&mut p, 8, st.slots.len() as u16);
                put(&mut p, 10, MAIL_BASE);
                put(&mut p, 12, st.mail_slots.len() as u16);
                put(&mut p, 14, DRIVE_BASE);
                put(&mut p, 16, st.drives.len() as u16);
            }
            p
        };
        let page_1e = || {
            let mut p = vec![0u8; 4];
            p[0] = 0x1e;
            p[1] = 0x02;
            p
        };
        let page_1f = || {
            let mut p = vec![0u8; 20];
            p[0] = 0x1f;
            p[1] = 0x12;
            if !changeable {
                // Storage: ST, I/E, DT can hold media.
                p[2] = 0x0e;
                // Moves from MT/ST/IE/DT to ST, IE or DT.
                p[4] = 0x0e;
                p[5] = 0x0e;
                p[6] = 0x0e;
                p[7] = 0x0e;
                // Exchanges likewise.
                p[12] = 0x0e;
                p[13] = 0x0e;
                p[14] = 0x0e;
                p[15] = 0x0e;
            }
            p
        };
        let pages = match m.page {
            0x1d => page_1d(),
            0x1e => page_1e(),
            0x1f => page_1f(),
            0x3f => {
                let mut v = page_1d();
                v.extend(page_1e());
                v.extend(page_1f());
                v
            }
            _ => return Response::check(Sense::invalid_cdb_field(2, Some(5))),
        };
        mode_data(&m, 0, None, &pages)
    }

    fn dispatch(&self, nexus: &Nexus, cdb: &[u8], data: &[u8]) -> Response {
        match cdb[0] {
            0x00 => match self.lib.state() {
                Ok(_) => Response::good(),
                Err(e) => Response::check(changer_sense(&e)),
            },
            0x03 => {
                if cdb[1] & 0x01 != 0 {
                    return Response::check(Sense::invalid_cdb_field(1, Some(0)));
                }
                let s = self
                    .nexus
                    .take_ua(nexus)
                    .unwrap_or_else(|| Sense::new(key::NO_SENSE, 0, 0));
                Response::data(s.to_bytes(), cdb[4] as usize)
            }
            // INITIALIZE ELEMENT STATUS (and WITH RANGE): the inventory is the library
            // state on disk, always current; check it reads.
            0x07 | 0xe7 => match self.lib.state() {
                Ok(st) => {
                    if cdb[0] == 0xe7 && cdb[1] & 0x01 != 0 {
                        let a = u16::from_be_bytes([cdb[2], cdb[3]]);
                        let n = u16::from_be_bytes([cdb[6], cdb[7]]);
                        if n > 0 && self.element(&st, a).is_none() && a != TRANSPORT_ADDR {
                            return Response::check(Sense {
                                field: Some((true, 2, None)),
                                ..Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x01)
                            });
                        }
                    }
                    Response::good()
                }
                Err(e) => Response::check(changer_sense(&e)),
            },
            0x12 => scsi::inquiry(cdb, 0x08, false, &self.id),
            0x15 | 0x55 => match parse_mode_select(cdb, data) {
                Ok((ms, len)) => {
                    if ms.block_desc.is_some()
                        || ms.pages.iter().any(|(c, _)| !matches!(c, 0x1d..=0x1f))
                    {
                        Response::check(Sense::invalid_param_field(0)).expecting(len)
                    } else {
                        Response::good().expecting(len)
                    }
                }
                Err(s) => Response::check(s),
            },
            0x16 => self.nexus.reserve(nexus),
            0x17 => self.nexus.release(nexus),
            0x1a | 0x5a => self.mode_sense(cdb),
            // OPEN/CLOSE IMPORT/EXPORT ELEMENT: our mail slots are always open to both.
            0x1b => match self.lib.state() {
                Ok(st) => {
                    let a = u16::from_be_bytes([cdb[2], cdb[3]]);
                    match self.element(&st, a) {
                        Some(e) if e.kind == ElementKind::MailSlot && cdb[4] & 0x1f <= 1 => {
                            Response::good()
                        }
                        Some(e) if e.kind == ElementKind::MailSlot => {
                            Response::check(Sense::invalid_cdb_field(4, None))
                        }
                        _ => Response::check(Sense {
                            field: Some((true, 2, None)),
                            ..Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x01)
                        }),
                    }
                }
                Err(e) => Response::check(changer_sense(&e)),
            },
            0x1e => match cdb[4] & 0x03 {
                0 | 1 => Response::good(),
                _ => Response::check(Sense::invalid_cdb_field(4, Some(1))),
            },
            // POSITION TO ELEMENT: nothing moves physically; validate the addresses.
            0x2b => {
                let r = (|| {
                    self.check_transport(cdb)?;
                    let st = self.lib.state().map_err(|e| changer_sense(&e))?;
                    self.lookup(&st, cdb, 4).map(|_| ())
                })();
                match r {
                    Ok(()) => Response::good(),
                    Err(s) => Response::check(s),
                }
            }
            0xa3 if cdb[1] & 0x1f == 0x0c => scsi::report_opcodes(cdb, OPCODES),
            0xa3 => Response::check(Sense::invalid_cdb_field(1, Some(4))),
            0xa5 => self.move_medium(nexus, cdb),
            0xa6 => self.exchange_medium(nexus, cdb),
            0xb8 => self.read_element_status(cdb),
            _ => Response::check(Sense::invalid_opcode()),
        }
    }
}

impl LogicalUnit for Changer {
    fn device_type(&self) -> u8 {
        0x08
    }

    fn execute(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Response {
        if cdb.is_empty() {
            return Response::check(Sense::invalid_opcode());
        }
        let need = match cdb[0] >> 5 {
            0 => 6,
            1 | 2 => 10,
            4 => 16,
            5 | 7 => 12,
            _ => 6,
        };
        if cdb.len() < need {
            return Response::check(Sense::invalid_cdb_field(0, None));
        }
        let _g = self.op.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self.nexus.gate(nexus, cdb) {
            return r;
        }
        self.dispatch(nexus, cdb, data_out)
    }

    fn nexus_lost(&self, nexus: &Nexus) {
        self.nexus.lost(nexus);
    }

    fn reset(&self, nexus: &Nexus) {
        self.nexus.reset(nexus);
    }
}
