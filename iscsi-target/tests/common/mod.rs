//! Shared setup for the target tests: a temporary library served on a loopback port,
//! and CDB builders.
#![allow(dead_code)]

use std::net::SocketAddr;

use iscsi_target::initiator::{CommandResult, Initiator};
use iscsi_target::{Handle, Target, TargetConfig};
use vtl_sim::{Library, LibraryConfig};

pub const INITIATOR: &str = "iqn.2025-01.org.tapevault:test-initiator";
pub const CHANGER: u64 = 0;
pub const DRIVE0: u64 = 1;
pub const DRIVE1: u64 = 2;
pub const SLOT_BASE: u16 = 0x0400;
pub const DRIVE_BASE: u16 = 0x0100;
pub const MAIL_BASE: u16 = 0x0300;

pub struct Served {
    pub dir: tempfile::TempDir,
    pub handle: Option<Handle>,
    pub lib: Library,
    pub addr: SocketAddr,
    pub name: String,
}

impl Served {
    pub fn new(capacity: u64, early_warning: u64) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::create(
            dir.path(),
            &LibraryConfig {
                slots: 4,
                drives: 2,
                mail_slots: 1,
                cartridges: 3,
                capacity,
                early_warning,
            },
        )
        .unwrap();
        let mut cfg = TargetConfig::new(dir.path());
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        let handle = Target::serve(cfg).unwrap();
        let addr = handle.local_addr();
        let name = handle.target_name().to_string();
        Served {
            dir,
            handle: Some(handle),
            lib,
            addr,
            name,
        }
    }

    pub fn login(&self, isid_last: u8) -> Initiator {
        Initiator::login(
            self.addr,
            INITIATOR,
            Some(&self.name),
            [0x80, 0, 0, 0, 0, isid_last],
        )
        .unwrap()
    }

    pub fn shutdown(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().unwrap();
        }
    }
}

/// Send TEST UNIT READY until no unit attention is reported; return the last result.
pub fn settle(i: &mut Initiator, lun: u64) -> CommandResult {
    for _ in 0..8 {
        let r = i.command(lun, &tur(), &[], 0).unwrap();
        if r.sense_key() != Some(6) {
            return r;
        }
    }
    panic!("unit attentions never stopped");
}

pub fn tur() -> Vec<u8> {
    vec![0; 6]
}
pub fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    vec![0x12, evpd as u8, page, (alloc >> 8) as u8, alloc as u8, 0]
}
pub fn read6(len: u32, fixed: bool, sili: bool) -> Vec<u8> {
    vec![
        0x08,
        fixed as u8 | (sili as u8) << 1,
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        0,
    ]
}
pub fn write6(len: u32, fixed: bool) -> Vec<u8> {
    vec![
        0x0a,
        fixed as u8,
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        0,
    ]
}
pub fn write_filemarks(n: u32) -> Vec<u8> {
    vec![0x10, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8, 0]
}
pub fn space6(code: u8, count: i32) -> Vec<u8> {
    let c = count.to_be_bytes();
    vec![0x11, code, c[1], c[2], c[3], 0]
}
pub fn space16(code: u8, count: i64) -> Vec<u8> {
    let mut v = vec![0x91, code, 0, 0];
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v
}
pub fn rewind() -> Vec<u8> {
    vec![0x01, 0, 0, 0, 0, 0]
}
pub fn read_position(sa: u8) -> Vec<u8> {
    let alloc: u16 = if sa == 8 { 32 } else { 0 };
    vec![0x34, sa, 0, 0, 0, 0, 0, (alloc >> 8) as u8, alloc as u8, 0]
}
pub fn locate10(block: u32) -> Vec<u8> {
    let b = block.to_be_bytes();
    vec![0x2b, 0, 0, b[0], b[1], b[2], b[3], 0, 0, 0]
}
pub fn locate16(dest_type: u8, id: u64) -> Vec<u8> {
    let mut v = vec![0x92, dest_type << 3, 0, 0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v
}
pub fn mode_sense6(page: u8, alloc: u8, dbd: bool) -> Vec<u8> {
    vec![0x1a, if dbd { 0x08 } else { 0 }, page, 0, alloc, 0]
}
pub fn mode_sense10(page: u8, alloc: u16) -> Vec<u8> {
    vec![
        0x5a,
        0,
        page,
        0,
        0,
        0,
        0,
        (alloc >> 8) as u8,
        alloc as u8,
        0,
    ]
}
pub fn mode_select6(len: u8) -> Vec<u8> {
    vec![0x15, 0x10, 0, 0, len, 0]
}
pub fn log_sense(page: u8, alloc: u16) -> Vec<u8> {
    vec![
        0x4d,
        0,
        0x40 | page,
        0,
        0,
        0,
        0,
        (alloc >> 8) as u8,
        alloc as u8,
        0,
    ]
}
pub fn move_medium(src: u16, dst: u16) -> Vec<u8> {
    let s = src.to_be_bytes();
    let d = dst.to_be_bytes();
    vec![0xa5, 0, 0, 0, s[0], s[1], d[0], d[1], 0, 0, 0, 0]
}
pub fn read_element_status(etype: u8, start: u16, count: u16, dvcid: bool, alloc: u32) -> Vec<u8> {
    let s = start.to_be_bytes();
    let c = count.to_be_bytes();
    let a = alloc.to_be_bytes();
    vec![
        0xb8,
        0x10 | etype,
        s[0],
        s[1],
        c[0],
        c[1],
        dvcid as u8,
        a[1],
        a[2],
        a[3],
        0,
        0,
    ]
}

/// Run a command without data-out (the transport must not fail), expecting up to
/// `read_len` bytes in.
#[track_caller]
pub fn ask(i: &mut Initiator, lun: u64, cdb: &[u8], read_len: u32) -> CommandResult {
    i.command(lun, cdb, &[], read_len).unwrap()
}

/// Assert a CHECK CONDITION with this key/ASC/ASCQ.
#[track_caller]
pub fn assert_sense(r: &CommandResult, key: u8, asc: u8, ascq: u8) {
    assert_eq!(r.status, 2, "expected CHECK CONDITION, got {r:?}");
    assert_eq!(r.sense_code(), Some((key, asc, ascq)), "sense of {r:?}");
}

#[track_caller]
pub fn assert_good(r: &CommandResult) {
    assert_eq!(r.status, 0, "expected GOOD, got {r:?}");
}

/// A block of `len` bytes whose content depends on `seed`.
pub fn block(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Load cartridge in slot `slot` into drive `drive` through the changer LUN, and clear
/// the drive's unit attentions.
pub fn load(i: &mut Initiator, slot: u16, drive: u16) {
    settle(i, CHANGER);
    let r = i
        .command(
            CHANGER,
            &move_medium(SLOT_BASE + slot, DRIVE_BASE + drive),
            &[],
            0,
        )
        .unwrap();
    assert_good(&r);
    let r = settle(i, drive as u64 + 1);
    assert_good(&r);
}
