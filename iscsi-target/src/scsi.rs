//! The transport-independent SCSI layer: logical units execute a CDB with its data-out
//! bytes and answer status, sense and data-in. Nothing here knows about iSCSI.
//!
//! Common SPC pieces live here too: fixed-format sense data, unit attentions per
//! I_T nexus, reservations, INQUIRY/VPD/mode-page builders and the LUN table that
//! answers REPORT LUNS and commands to absent LUNs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// SCSI status codes (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
}

/// Sense keys (SPC-4 table 48).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const BLANK_CHECK: u8 = 0x8;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const VOLUME_OVERFLOW: u8 = 0xd;
}

/// Fixed-format sense data (SPC-4 section 4.5.3), current errors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub filemark: bool,
    pub eom: bool,
    pub ili: bool,
    /// INFORMATION field (VALID bit set when present); negative values in two's complement.
    pub information: Option<i64>,
    /// Sense-key specific field pointer: (in CDB?, byte, bit).
    pub field: Option<(bool, u16, Option<u8>)>,
}

impl Sense {
    pub fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            ..Default::default()
        }
    }
    pub fn info(mut self, v: i64) -> Sense {
        self.information = Some(v);
        self
    }
    pub fn eom(mut self) -> Sense {
        self.eom = true;
        self
    }
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB with a pointer to the byte.
    pub fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some((true, byte, bit)),
            ..Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00)
        }
    }
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
    pub fn invalid_param_field(byte: u16) -> Sense {
        Sense {
            field: Some((false, byte, None)),
            ..Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00)
        }
    }
    pub fn invalid_opcode() -> Sense {
        Sense {
            field: Some((true, 0, None)),
            ..Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00)
        }
    }
    pub fn param_list_length() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00)
    }
    pub fn no_medium() -> Sense {
        Sense::new(key::NOT_READY, 0x3a, 0x00)
    }
    pub fn lun_not_supported() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00)
    }
    pub fn internal_failure() -> Sense {
        Sense::new(key::HARDWARE_ERROR, 0x44, 0x00)
    }

    /// The 18 bytes of fixed-format sense data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 18];
        b[0] = 0x70;
        if let Some(i) = self.information {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&(i as i32 as u32).to_be_bytes());
        }
        b[2] = self.key & 0x0f
            | if self.filemark { 0x80 } else { 0 }
            | if self.eom { 0x40 } else { 0 }
            | if self.ili { 0x20 } else { 0 };
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some((cd, byte, bit)) = self.field {
            b[15] = 0x80 | if cd { 0x40 } else { 0 };
            if let Some(bit) = bit {
                b[15] |= 0x08 | (bit & 7);
            }
            b[16..18].copy_from_slice(&byte.to_be_bytes());
        }
        b
    }
}

/// What a logical unit answers to one command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub status: u8,
    /// Fixed-format sense data with CHECK CONDITION.
    pub sense: Option<Sense>,
    /// Data for the initiator (already cut to the CDB's allocation length).
    pub data_in: Vec<u8>,
    /// Bytes of data-out the CDB called for; the transport compares it with what the
    /// initiator said it would send to report a residual.
    pub data_out_expected: usize,
}

impl Response {
    pub fn good() -> Response {
        Response::default()
    }
    pub fn data(mut data: Vec<u8>, alloc: usize) -> Response {
        data.truncate(alloc);
        Response {
            data_in: data,
            ..Default::default()
        }
    }
    pub fn check(sense: Sense) -> Response {
        Response {
            status: status::CHECK_CONDITION,
            sense: Some(sense),
            ..Default::default()
        }
    }
    pub fn with_data(mut self, data: Vec<u8>) -> Response {
        self.data_in = data;
        self
    }
    pub fn expecting(mut self, n: usize) -> Response {
        self.data_out_expected = n;
        self
    }
}

/// An I_T nexus: one initiator port talking to this target port. For iSCSI the
/// initiator port is InitiatorName + ISID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    pub initiator: String,
    pub isid: [u8; 6],
}

impl Nexus {
    pub fn new(initiator: &str, isid: [u8; 6]) -> Nexus {
        Nexus {
            initiator: initiator.to_string(),
            isid,
        }
    }
}

/// A logical unit. Implementations serialize their own state; `execute` may block for
/// as long as the medium operation takes.
pub trait LogicalUnit: Send + Sync {
    /// Peripheral device type (INQUIRY byte 0): 0x01 tape, 0x08 medium changer.
    fn device_type(&self) -> u8;
    fn execute(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Response;
    /// The I_T nexus ended (logout, connection loss, session reinstatement).
    fn nexus_lost(&self, _nexus: &Nexus) {}
    /// LOGICAL UNIT RESET task management function from `nexus`.
    fn reset(&self, _nexus: &Nexus) {}
    /// Make everything acknowledged durable and let go of what the unit holds (target
    /// shutdown).
    fn flush(&self) -> Result<(), String> {
        Ok(())
    }
    /// Called by the target a few times a second: let go of what is no longer in use.
    fn idle(&self) {}
}

/// Unit attention conditions and reservations for one logical unit, per I_T nexus.
#[derive(Default)]
pub struct NexusState {
    inner: Mutex<NexusInner>,
}

#[derive(Default)]
struct NexusInner {
    known: HashSet<Nexus>,
    ua: HashMap<Nexus, VecDeque<(u8, u8)>>,
    reserved_by: Option<Nexus>,
}

/// Most unit attentions queued per nexus; older ones are dropped first (SAM-5 allows
/// reporting a lesser condition when several are pending).
const MAX_QUEUED_UA: usize = 8;

/// Commands a unit attention does not hold up (SPC-4 / SAM-5).
fn ua_exempt(opcode: u8) -> bool {
    matches!(opcode, 0x12 | 0xa0 | 0x03)
}

/// Commands allowed through another nexus's RESERVE(6) (SPC-2 reservations).
fn reservation_exempt(opcode: u8) -> bool {
    matches!(
        opcode,
        0x12 | 0xa0 | 0x03 | 0x17 | 0x1e | 0x4d | 0x5a | 0x1a
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NexusState {
    /// Gate a command: a first contact from a nexus raises POWER ON OR RESET; a pending
    /// unit attention is reported (and cleared); a reservation held by another nexus
    /// gives RESERVATION CONFLICT.
    pub fn gate(&self, nexus: &Nexus, cdb: &[u8]) -> Option<Response> {
        let mut g = lock(&self.inner);
        if g.known.insert(nexus.clone()) {
            g.ua.entry(nexus.clone())
                .or_default()
                .push_back((0x29, 0x00));
        }
        let op = cdb.first().copied().unwrap_or(0);
        if let Some(r) = &g.reserved_by {
            if r != nexus && !reservation_exempt(op) {
                return Some(Response {
                    status: status::RESERVATION_CONFLICT,
                    ..Default::default()
                });
            }
        }
        if ua_exempt(op) {
            return None;
        }
        let q = g.ua.get_mut(nexus)?;
        let (asc, ascq) = q.pop_front()?;
        Some(Response::check(Sense::new(key::UNIT_ATTENTION, asc, ascq)))
    }

    /// A pending unit attention for REQUEST SENSE (cleared by reporting it).
    pub fn take_ua(&self, nexus: &Nexus) -> Option<Sense> {
        let mut g = lock(&self.inner);
        let (asc, ascq) = g.ua.get_mut(nexus)?.pop_front()?;
        Some(Sense::new(key::UNIT_ATTENTION, asc, ascq))
    }

    /// Raise a unit attention for every known nexus except `except`.
    pub fn raise(&self, asc: u8, ascq: u8, except: Option<&Nexus>) {
        let mut g = lock(&self.inner);
        let known: Vec<Nexus> = g.known.iter().cloned().collect();
        for n in known {
            if Some(&n) == except {
                continue;
            }
            let q = g.ua.entry(n).or_default();
            if !q.contains(&(asc, ascq)) {
                if q.len() >= MAX_QUEUED_UA {
                    q.pop_front();
                }
                q.push_back((asc, ascq));
            }
        }
    }

    /// Forget a nexus (its next contact is a new nexus with POWER ON OR RESET).
    pub fn lost(&self, nexus: &Nexus) {
        let mut g = lock(&self.inner);
        g.known.remove(nexus);
        g.ua.remove(nexus);
        if g.reserved_by.as_ref() == Some(nexus) {
            g.reserved_by = None;
        }
    }

    /// RESERVE(6) / RELEASE(6).
    pub fn reserve(&self, nexus: &Nexus) -> Response {
        let mut g = lock(&self.inner);
        match &g.reserved_by {
            Some(r) if r != nexus => Response {
                status: status::RESERVATION_CONFLICT,
                ..Default::default()
            },
            _ => {
                g.reserved_by = Some(nexus.clone());
                Response::good()
            }
        }
    }
    /// Whether some nexus holds a RESERVE(6) reservation.
    pub fn is_reserved(&self) -> bool {
        lock(&self.inner).reserved_by.is_some()
    }
    pub fn release(&self, nexus: &Nexus) -> Response {
        let mut g = lock(&self.inner);
        if g.reserved_by.as_ref() == Some(nexus) {
            g.reserved_by = None;
        }
        Response::good()
    }

    /// LOGICAL UNIT RESET: drop reservations, raise 29/03 for the other nexuses.
    pub fn reset(&self, from: &Nexus) {
        lock(&self.inner).reserved_by = None;
        self.raise(0x29, 0x03, Some(from));
    }
}

/// Identity strings of a logical unit for INQUIRY and VPD pages.
#[derive(Debug, Clone)]
pub struct Identity {
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub serial: String,
    /// Stable 60-bit number for the NAA locally assigned designator.
    pub naa_id: u64,
}

fn padded(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(n).collect();
    v.resize(n, b' ');
    v
}

/// FNV-1a, for stable identifiers derived from names.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The INQUIRY command (standard data and VPD pages 0x00, 0x80, 0x83).
pub fn inquiry(cdb: &[u8], ptype: u8, removable: bool, id: &Identity) -> Response {
    if cdb.len() < 6 {
        return Response::check(Sense::invalid_cdb_field(0, None));
    }
    let evpd = cdb[1] & 0x01 != 0;
    let page = cdb[2];
    let alloc = u16::from_be_bytes([cdb[3], cdb[4]]) as usize;
    if cdb[1] & 0xfe != 0 {
        return Response::check(Sense::invalid_cdb_field(1, None));
    }
    if !evpd {
        if page != 0 {
            return Response::check(Sense::invalid_cdb_field(2, None));
        }
        let mut d = vec![0u8; 36];
        d[0] = ptype & 0x1f;
        d[1] = if removable { 0x80 } else { 0 };
        d[2] = 0x06; // SPC-4
        d[3] = 0x12; // HiSup, response data format 2
        d[4] = 31;
        d[7] = 0x02; // CmdQue
        d[8..16].copy_from_slice(&padded(&id.vendor, 8));
        d[16..32].copy_from_slice(&padded(&id.product, 16));
        d[32..36].copy_from_slice(&padded(&id.revision, 4));
        return Response::data(d, alloc);
    }
    let body: Vec<u8> = match page {
        0x00 => vec![0x00, 0x80, 0x83],
        0x80 => id.serial.as_bytes().to_vec(),
        0x83 => {
            let mut b = Vec::new();
            // T10 vendor ID based designator, ASCII, associated with the LU.
            let mut t10 = padded(&id.vendor, 8);
            t10.extend_from_slice(&padded(&id.product, 16));
            t10.extend_from_slice(id.serial.as_bytes());
            b.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
            b.extend_from_slice(&t10);
            // NAA locally assigned (type 3), binary.
            let naa = (0x3u64 << 60) | (id.naa_id & 0x0fff_ffff_ffff_ffff);
            b.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
            b.extend_from_slice(&naa.to_be_bytes());
            b
        }
        _ => return Response::check(Sense::invalid_cdb_field(2, None)),
    };
    let mut d = vec![ptype & 0x1f, page];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(&body);
    Response::data(d, alloc)
}

/// Parsed MODE SENSE(6/10) CDB.
#[derive(Debug, Clone, Copy)]
pub struct ModeSenseCdb {
    pub ten: bool,
    pub dbd: bool,
    /// 0 current, 1 changeable, 2 default, 3 saved.
    pub pc: u8,
    pub page: u8,
    pub subpage: u8,
    pub alloc: usize,
}

pub fn parse_mode_sense(cdb: &[u8]) -> Result<ModeSenseCdb, Sense> {
    let ten = cdb[0] == 0x5a;
    if cdb.len() < if ten { 10 } else { 6 } {
        return Err(Sense::invalid_cdb_field(0, None));
    }
    let m = ModeSenseCdb {
        ten,
        dbd: cdb[1] & 0x08 != 0,
        pc: cdb[2] >> 6,
        page: cdb[2] & 0x3f,
        subpage: cdb[3],
        alloc: if ten {
            u16::from_be_bytes([cdb[7], cdb[8]]) as usize
        } else {
            cdb[4] as usize
        },
    };
    if m.pc == 3 {
        return Err(Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00));
    }
    if m.subpage != 0 && !(m.page == 0x3f && m.subpage == 0xff) {
        return Err(Sense::invalid_cdb_field(3, None));
    }
    Ok(m)
}

/// Assemble mode parameter data: header, optional block descriptor, pages.
pub fn mode_data(
    m: &ModeSenseCdb,
    device_specific: u8,
    block_desc: Option<[u8; 8]>,
    pages: &[u8],
) -> Response {
    let bd: &[u8] = match (&block_desc, m.dbd) {
        (Some(b), false) => b,
        _ => &[],
    };
    let mut d = Vec::new();
    if m.ten {
        let len = 6 + bd.len() + pages.len();
        d.extend_from_slice(&(len as u16).to_be_bytes());
        d.extend_from_slice(&[0, device_specific, 0, 0]);
        d.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        let len = 3 + bd.len() + pages.len();
        d.extend_from_slice(&[len.min(255) as u8, 0, device_specific, bd.len() as u8]);
    }
    d.extend_from_slice(bd);
    d.extend_from_slice(pages);
    Response::data(d, m.alloc)
}

/// Parsed MODE SELECT(6/10) parameter list: header fields, block descriptor and pages
/// as (page code, bytes including the 2-byte page header).
#[derive(Debug, Clone, Default)]
pub struct ModeSelect {
    pub device_specific: u8,
    pub block_desc: Option<[u8; 8]>,
    pub pages: Vec<(u8, Vec<u8>)>,
}

pub fn parse_mode_select(cdb: &[u8], data: &[u8]) -> Result<(ModeSelect, usize), Sense> {
    let ten = cdb[0] == 0x55;
    if cdb.len() < if ten { 10 } else { 6 } {
        return Err(Sense::invalid_cdb_field(0, None));
    }
    if cdb[1] & 0x01 != 0 {
        // SP: we keep no saved pages.
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    let len = if ten {
        u16::from_be_bytes([cdb[7], cdb[8]]) as usize
    } else {
        cdb[4] as usize
    };
    if len == 0 {
        return Ok((ModeSelect::default(), 0));
    }
    if data.len() < len {
        return Err(Sense::param_list_length());
    }
    let p = &data[..len];
    let hdr = if ten { 8 } else { 4 };
    if p.len() < hdr {
        return Err(Sense::param_list_length());
    }
    let (dev, bdl) = if ten {
        (p[3], u16::from_be_bytes([p[6], p[7]]) as usize)
    } else {
        (p[2], p[3] as usize)
    };
    let mut ms = ModeSelect {
        device_specific: dev,
        ..Default::default()
    };
    if bdl != 0 && bdl != 8 {
        return Err(Sense::invalid_param_field(if ten { 6 } else { 3 }));
    }
    if p.len() < hdr + bdl {
        return Err(Sense::param_list_length());
    }
    if bdl == 8 {
        ms.block_desc = Some(p[hdr..hdr + 8].try_into().expect("8 bytes"));
    }
    let mut off = hdr + bdl;
    while off < p.len() {
        if p.len() < off + 2 {
            return Err(Sense::param_list_length());
        }
        if p[off] & 0x40 != 0 {
            // Sub-page format: none of our pages has sub-pages.
            return Err(Sense::invalid_param_field(off as u16));
        }
        let code = p[off] & 0x3f;
        let plen = p[off + 1] as usize + 2;
        if p.len() < off + plen {
            return Err(Sense::param_list_length());
        }
        ms.pages.push((code, p[off..off + plen].to_vec()));
        off += plen;
    }
    Ok((ms, len))
}

/// Allocation length of LOG SENSE, and the checked page request.
#[derive(Debug, Clone, Copy)]
pub struct LogSenseCdb {
    pub page: u8,
    pub subpage: u8,
    pub pointer: u16,
    pub alloc: usize,
}

pub fn parse_log_sense(cdb: &[u8]) -> Result<LogSenseCdb, Sense> {
    if cdb.len() < 10 {
        return Err(Sense::invalid_cdb_field(0, None));
    }
    if cdb[1] & 0x01 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    Ok(LogSenseCdb {
        page: cdb[2] & 0x3f,
        subpage: cdb[3],
        pointer: u16::from_be_bytes([cdb[5], cdb[6]]),
        alloc: u16::from_be_bytes([cdb[7], cdb[8]]) as usize,
    })
}

/// One log parameter (SPC-4 section 7.3): code, control byte, value.
pub fn log_param(out: &mut Vec<u8>, code: u16, control: u8, value: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    out.push(control);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// A log page with its 4-byte header.
pub fn log_page(page: u8, params: &[u8], alloc: usize) -> Response {
    let mut d = vec![page, 0];
    d.extend_from_slice(&(params.len() as u16).to_be_bytes());
    d.extend_from_slice(params);
    Response::data(d, alloc)
}

/// One supported command for REPORT SUPPORTED OPERATION CODES: its opcode, service
/// action (when it has one) and CDB usage data (the bits the device server looks at;
/// the first byte is the opcode, the length is the CDB length).
pub struct OpInfo {
    pub op: u8,
    pub sa: Option<u16>,
    pub usage: &'static [u8],
}

/// MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) over `table`.
pub fn report_opcodes(cdb: &[u8], table: &[OpInfo]) -> Response {
    if cdb.len() < 12 {
        return Response::check(Sense::invalid_cdb_field(0, None));
    }
    let rctd = cdb[2] & 0x80 != 0;
    let option = cdb[2] & 0x07;
    let req_op = cdb[3];
    let req_sa = u16::from_be_bytes([cdb[4], cdb[5]]);
    let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]) as usize;
    // Command timeouts descriptor: no nominal or recommended timeout is specified.
    let timeouts = [0u8, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    match option {
        0 => {
            let mut body = Vec::new();
            for o in table {
                body.push(o.op);
                body.push(0);
                body.extend_from_slice(&o.sa.unwrap_or(0).to_be_bytes());
                body.push(0);
                body.push(if o.sa.is_some() { 0x01 } else { 0 } | if rctd { 0x02 } else { 0 });
                body.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
                if rctd {
                    body.extend_from_slice(&timeouts);
                }
            }
            let mut d = (body.len() as u32).to_be_bytes().to_vec();
            d.extend(body);
            Response::data(d, alloc)
        }
        1 | 2 => {
            let found = table.iter().find(|o| o.op == req_op);
            if let Some(o) = found {
                if option == 1 && o.sa.is_some() {
                    return Response::check(Sense::invalid_cdb_field(2, Some(0)));
                }
            }
            let found = table
                .iter()
                .find(|o| o.op == req_op && (option == 1 || o.sa == Some(req_sa)));
            if option == 2
                && found.is_none()
                && table.iter().any(|o| o.op == req_op && o.sa.is_none())
            {
                return Response::check(Sense::invalid_cdb_field(2, Some(0)));
            }
            let mut d = vec![0u8, 0];
            match found {
                Some(o) => {
                    d[1] = 0x03 | if rctd { 0x80 } else { 0 };
                    d.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
                    d.extend_from_slice(o.usage);
                    if rctd {
                        d.extend_from_slice(&timeouts);
                    }
                }
                None => {
                    d[1] = 0x01;
                    d.extend_from_slice(&[0, 0]);
                }
            }
            Response::data(d, alloc)
        }
        _ => Response::check(Sense::invalid_cdb_field(2, Some(0))),
    }
}

/// The logical units of one target, by LUN.
#[derive(Clone, Default)]
pub struct LunTable {
    luns: BTreeMap<u64, Arc<dyn LogicalUnit>>,
}

impl LunTable {
    pub fn new() -> LunTable {
        LunTable::default()
    }
    pub fn insert(&mut self, lun: u64, lu: Arc<dyn LogicalUnit>) {
        self.luns.insert(lun, lu);
    }
    pub fn get(&self, lun: u64) -> Option<&Arc<dyn LogicalUnit>> {
        self.luns.get(&lun)
    }
    pub fn all(&self) -> impl Iterator<Item = (&u64, &Arc<dyn LogicalUnit>)> {
        self.luns.iter()
    }

    /// Execute a command addressed to `lun` (a LUN number, not the 8-byte field).
    pub fn execute(
        &self,
        lun: Option<u64>,
        nexus: &Nexus,
        cdb: &[u8],
        data_out: &[u8],
    ) -> Response {
        if cdb.is_empty() {
            return Response::check(Sense::invalid_opcode());
        }
        if cdb[0] == 0xa0 {
            return self.report_luns(cdb);
        }
        match lun.and_then(|l| self.luns.get(&l)) {
            Some(lu) => lu.execute(nexus, cdb, data_out),
            None => match cdb[0] {
                0x12 => {
                    // Peripheral qualifier 3: not capable of supporting a device here.
                    if cdb.len() < 6 || cdb[1] & 0x01 != 0 {
                        return Response::check(Sense::lun_not_supported());
                    }
                    let alloc = u16::from_be_bytes([cdb[3], cdb[4]]) as usize;
                    let mut d = vec![0u8; 36];
                    d[0] = 0x7f;
                    d[2] = 0x06;
                    d[3] = 0x02;
                    d[4] = 31;
                    Response::data(d, alloc)
                }
                0x03 => {
                    let alloc = cdb.get(4).copied().unwrap_or(0) as usize;
                    Response::data(Sense::lun_not_supported().to_bytes(), alloc)
                }
                _ => Response::check(Sense::lun_not_supported()),
            },
        }
    }

    fn report_luns(&self, cdb: &[u8]) -> Response {
        if cdb.len() < 12 {
            return Response::check(Sense::invalid_cdb_field(0, None));
        }
        if cdb[2] > 2 {
            return Response::check(Sense::invalid_cdb_field(2, None));
        }
        let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]) as usize;
        if alloc < 16 {
            return Response::check(Sense::invalid_cdb_field(6, None));
        }
        let mut d = Vec::new();
        d.extend_from_slice(&((self.luns.len() * 8) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        for &l in self.luns.keys() {
            d.extend_from_slice(&encode_lun(l).to_be_bytes());
        }
        Response::data(d, alloc)
    }
}

/// SAM-5 LUN field for a LUN number: peripheral addressing below 256, flat above.
pub fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

/// The LUN number in an 8-byte LUN field, or None for an addressing method we do not
/// serve.
pub fn decode_lun(field: u64) -> Option<u64> {
    let first = (field >> 48) as u16;
    if field & 0x0000_ffff_ffff_ffff != 0 {
        return None;
    }
    match first >> 14 {
        0 if first >> 8 == 0 => Some((first & 0xff) as u64),
        1 => Some((first & 0x3fff) as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_bytes_carry_flags_information_and_field_pointer() {
        let mut s = Sense::new(key::NO_SENSE, 0, 1).info(-24);
        s.filemark = true;
        s.ili = true;
        let b = s.to_bytes();
        assert_eq!(b[0], 0xf0);
        assert_eq!(b[2], 0xa0);
        assert_eq!(&b[3..7], &(-24i32).to_be_bytes());
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0, 1));
        let b = Sense::invalid_cdb_field(4, Some(1)).to_bytes();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 5);
        assert_eq!((b[12], b[13]), (0x24, 0));
        assert_eq!(b[15], 0x80 | 0x40 | 0x08 | 1);
        assert_eq!(&b[16..18], &[0, 4]);
    }

    #[test]
    fn unit_attention_per_nexus_and_exempt_commands() {
        let st = NexusState::default();
        let a = Nexus::new("a", [1; 6]);
        let b = Nexus::new("b", [2; 6]);
        // INQUIRY passes on first contact without clearing the power-on UA.
        assert!(st.gate(&a, &[0x12, 0, 0, 0, 36, 0]).is_none());
        let r = st.gate(&a, &[0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(r.sense.unwrap(), Sense::new(key::UNIT_ATTENTION, 0x29, 0));
        assert!(st.gate(&a, &[0, 0, 0, 0, 0, 0]).is_none());
        assert!(st.gate(&b, &[0x12, 0, 0, 0, 36, 0]).is_none());
        assert!(st.take_ua(&b).is_some());
        st.raise(0x28, 0x00, Some(&a));
        assert!(st.gate(&a, &[0; 6]).is_none());
        let r = st.gate(&b, &[0; 6]).unwrap();
        assert_eq!(r.sense.unwrap().asc, 0x28);
    }

    #[test]
    fn reservation_conflicts_other_nexus_only() {
        let st = NexusState::default();
        let a = Nexus::new("a", [1; 6]);
        let b = Nexus::new("b", [2; 6]);
        st.lost(&a);
        let _ = st.take_ua(&a);
        assert_eq!(st.reserve(&a).status, status::GOOD);
        assert_eq!(st.reserve(&b).status, status::RESERVATION_CONFLICT);
        let _ = st.gate(&b, &[0x12, 0, 0, 0, 36, 0]);
        assert_eq!(
            st.gate(&b, &[0x08, 0, 0, 0, 1, 0]).unwrap().status,
            status::RESERVATION_CONFLICT
        );
        assert!(st.gate(&b, &[0x12, 0, 0, 0, 36, 0]).is_none());
        st.release(&a);
        assert_eq!(st.reserve(&b).status, status::GOOD);
    }

    #[test]
    fn lun_fields_roundtrip() {
        for l in [0u64, 1, 7, 255, 256, 1000] {
            assert_eq!(decode_lun(encode_lun(l)), Some(l));
        }
        assert_eq!(decode_lun(0x0001_0000_0000_0001), None);
        assert_eq!(decode_lun(0xc000_0000_0000_0000), None);
    }

    struct Dummy;
    impl LogicalUnit for Dummy {
        fn device_type(&self) -> u8 {
            1
        }
        fn execute(&self, _: &Nexus, _: &[u8], _: &[u8]) -> Response {
            Response::good()
        }
    }

    #[test]
    fn report_luns_and_absent_luns() {
        let mut t = LunTable::new();
        t.insert(0, Arc::new(Dummy));
        t.insert(3, Arc::new(Dummy));
        let n = Nexus::new("i", [0; 6]);
        let r = t.execute(Some(9), &n, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
        assert_eq!(r.data_in.len(), 24);
        assert_eq!(&r.data_in[0..4], &16u32.to_be_bytes());
        assert_eq!(&r.data_in[16..18], &[0, 3]);
        let r = t.execute(Some(0), &n, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], &[]);
        assert_eq!(r.sense.unwrap().asc, 0x24);
        let r = t.execute(Some(9), &n, &[0x12, 0, 0, 0, 96, 0], &[]);
        assert_eq!(r.data_in[0], 0x7f);
        let r = t.execute(Some(9), &n, &[0x00, 0, 0, 0, 0, 0], &[]);
        assert_eq!(r.sense.unwrap().asc, 0x25);
        let r = t.execute(Some(9), &n, &[], &[]);
        assert_eq!(r.sense.unwrap().asc, 0x20);
    }

    #[test]
    fn inquiry_std_and_vpd() {
        let id = Identity {
            vendor: "TAPEVALT".into(),
            product: "VDRIVE".into(),
            revision: "0001".into(),
            serial: "ABC123".into(),
            naa_id: 42,
        };
        let r = inquiry(&[0x12, 0, 0, 0, 96, 0], 1, true, &id);
        assert_eq!(r.data_in.len(), 36);
        assert_eq!(r.data_in[0], 1);
        assert_eq!(r.data_in[1], 0x80);
        assert_eq!(&r.data_in[8..16], b"TAPEVALT");
        let r = inquiry(&[0x12, 1, 0x00, 0, 255, 0], 1, true, &id);
        assert_eq!(r.data_in, vec![1, 0, 0, 3, 0, 0x80, 0x83]);
        let r = inquiry(&[0x12, 1, 0x80, 0, 255, 0], 1, true, &id);
        assert_eq!(&r.data_in[4..], b"ABC123");
        let r = inquiry(&[0x12, 1, 0x83, 0, 255, 0], 1, true, &id);
        assert_eq!(r.data_in[4], 0x02);
        let r = inquiry(&[0x12, 1, 0xb1, 0, 255, 0], 1, true, &id);
        assert_eq!(r.sense.unwrap().field, Some((true, 2, None)));
        let r = inquiry(&[0x12, 0, 0x80, 0, 255, 0], 1, true, &id);
        assert_eq!(r.sense.unwrap().asc, 0x24);
        let r = inquiry(&[0x12, 0, 0, 0, 5, 0], 1, true, &id);
        assert_eq!(r.data_in.len(), 5);
    }

    #[test]
    fn mode_select_parsing_checks_lengths() {
        // MODE SELECT(6), 12 bytes: header + block descriptor of 512-byte blocks.
        let cdb = [0x15, 0x10, 0, 0, 12, 0];
        let data = [0, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 2, 0];
        let (ms, n) = parse_mode_select(&cdb, &data).unwrap();
        assert_eq!(n, 12);
        assert_eq!(ms.block_desc.unwrap()[6], 2);
        assert!(parse_mode_select(&cdb, &data[..8]).is_err());
        let bad = [0, 0, 0x10, 4, 0, 0, 0, 0, 0, 0, 2, 0];
        assert_eq!(parse_mode_select(&cdb, &bad).unwrap_err().asc, 0x26);
        // A page that runs past the list.
        let cdb = [0x15, 0x10, 0, 0, 8, 0];
        let data = [0, 0, 0, 0, 0x0f, 14, 0, 0];
        assert_eq!(parse_mode_select(&cdb, &data).unwrap_err().asc, 0x1a);
        let cdb = [0x15, 0x11, 0, 0, 4, 0];
        assert_eq!(parse_mode_select(&cdb, &[0; 4]).unwrap_err().asc, 0x24);
    }
}
