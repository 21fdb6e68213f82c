//! Command descriptor blocks (SPC-4, SSC-4, SMC-3), built as plain byte arrays.

pub const TEST_UNIT_READY: u8 = 0x00;
pub const READ_BLOCK_LIMITS: u8 = 0x05;
pub const INITIALIZE_ELEMENT_STATUS: u8 = 0x07;
pub const INQUIRY: u8 = 0x12;
pub const LOAD_UNLOAD: u8 = 0x1b;
pub const SPACE: u8 = 0x11;
pub const MODE_SENSE_6: u8 = 0x1a;
pub const READ_POSITION: u8 = 0x34;
pub const SECURITY_PROTOCOL_IN: u8 = 0xa2;
pub const MOVE_MEDIUM: u8 = 0xa5;
pub const SECURITY_PROTOCOL_OUT: u8 = 0xb5;
pub const READ_ELEMENT_STATUS: u8 = 0xb8;

pub fn test_unit_ready() -> [u8; 6] {
    [TEST_UNIT_READY, 0, 0, 0, 0, 0]
}

/// Standard INQUIRY data, `alloc` bytes (at most 255 with this 6-byte form's 2-byte field).
pub fn inquiry(alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [INQUIRY, 0, 0, a[0], a[1], 0]
}

/// LOAD UNLOAD (SSC-4 7.2): load (and thread) or unload the cartridge.
pub fn load_unload(load: bool) -> [u8; 6] {
    [LOAD_UNLOAD, 0, 0, 0, u8::from(load), 0]
}

/// SPACE(6) (SSC-4 7.10): `code` 0 blocks, 1 filemarks, 3 end of data; `count` is a
/// 24-bit two's-complement number (negative: backward).
pub fn space(code: u8, count: i32) -> [u8; 6] {
    let c = count.clamp(-0x80_0000, 0x7f_ffff).to_be_bytes();
    [SPACE, code & 0x07, c[1], c[2], c[3], 0]
}

/// READ BLOCK LIMITS (SSC-4 7.6): 6 bytes back.
pub fn read_block_limits() -> [u8; 6] {
    [READ_BLOCK_LIMITS, 0, 0, 0, 0, 0]
}

/// MODE SENSE(6); `dbd` disables block descriptors.
pub fn mode_sense_6(page: u8, subpage: u8, alloc: u8, dbd: bool) -> [u8; 6] {
    [
        MODE_SENSE_6,
        if dbd { 0x08 } else { 0 },
        page & 0x3f,
        subpage,
        alloc,
        0,
    ]
}

/// READ POSITION, short form (SSC-4 7.7, service action 0): 20 bytes back.
pub fn read_position_short() -> [u8; 10] {
    [READ_POSITION, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// READ ELEMENT STATUS (SMC-3 6.10). `element_type`: 0 all, 1 transport, 2 storage,
/// 3 import/export, 4 data transfer. `voltag` asks for volume tags (barcodes).
pub fn read_element_status(
    element_type: u8,
    start: u16,
    count: u16,
    voltag: bool,
    alloc: u32,
) -> [u8; 12] {
    let s = start.to_be_bytes();
    let n = count.to_be_bytes();
    let a = alloc.min(0x00ff_ffff).to_be_bytes();
    [
        READ_ELEMENT_STATUS,
        (u8::from(voltag) << 4) | (element_type & 0x0f),
        s[0],
        s[1],
        n[0],
        n[1],
        0,
        a[1],
        a[2],
        a[3],
        0,
        0,
    ]
}

/// MOVE MEDIUM (SMC-3 6.6) with the given transport element.
pub fn move_medium(transport: u16, source: u16, destination: u16) -> [u8; 12] {
    let t = transport.to_be_bytes();
    let s = source.to_be_bytes();
    let d = destination.to_be_bytes();
    [
        MOVE_MEDIUM,
        0,
        t[0],
        t[1],
        s[0],
        s[1],
        d[0],
        d[1],
        0,
        0,
        0,
        0,
    ]
}

/// INITIALIZE ELEMENT STATUS (SMC-3 6.2): the library re-inventories (scans barcodes).
pub fn initialize_element_status() -> [u8; 6] {
    [INITIALIZE_ELEMENT_STATUS, 0, 0, 0, 0, 0]
}

/// SECURITY PROTOCOL IN (SPC-4 6.30), allocation length in bytes (INC_512 = 0).
pub fn security_protocol_in(protocol: u8, specific: u16, alloc: u32) -> [u8; 12] {
    let s = specific.to_be_bytes();
    let a = alloc.to_be_bytes();
    [
        SECURITY_PROTOCOL_IN,
        protocol,
        s[0],
        s[1],
        0,
        0,
        a[0],
        a[1],
        a[2],
        a[3],
        0,
        0,
    ]
}

/// SECURITY PROTOCOL OUT (SPC-4 6.31), transfer length in bytes (INC_512 = 0).
pub fn security_protocol_out(protocol: u8, specific: u16, len: u32) -> [u8; 12] {
    let s = specific.to_be_bytes();
    let l = len.to_be_bytes();
    [
        SECURITY_PROTOCOL_OUT,
        protocol,
        s[0],
        s[1],
        0,
        0,
        l[0],
        l[1],
        l[2],
        l[3],
        0,
        0,
    ]
}

/// READ BLOCK LIMITS data: (granularity, max block length, min block length).
pub fn parse_block_limits(b: &[u8]) -> Option<(u8, u32, u16)> {
    if b.len() < 6 {
        return None;
    }
    Some((
        b[0] & 0x1f,
        u32::from_be_bytes([0, b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
    ))
}

/// Vendor and product identification from standard INQUIRY data.
pub fn parse_inquiry_ids(b: &[u8]) -> Option<(String, String, String)> {
    if b.len() < 36 {
        return None;
    }
    let t = |r: std::ops::Range<usize>| String::from_utf8_lossy(&b[r]).trim().to_string();
    Some((t(8..16), t(16..32), t(32..36)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_element_status_layout() {
        let c = read_element_status(2, 0x1000, 8, true, 0x012345);
        assert_eq!(
            c,
            [0xb8, 0x12, 0x10, 0x00, 0x00, 0x08, 0, 0x01, 0x23, 0x45, 0, 0]
        );
        // allocation lengths above 24 bits are clamped, never wrapped
        assert_eq!(
            &read_element_status(0, 0, 1, false, u32::MAX)[7..10],
            &[0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn move_medium_layout() {
        assert_eq!(
            move_medium(1, 0x1000, 0x100),
            [0xa5, 0, 0, 1, 0x10, 0, 0x01, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn security_protocol_layouts() {
        assert_eq!(
            security_protocol_in(0x20, 0x0020, 8192),
            [0xa2, 0x20, 0, 0x20, 0, 0, 0, 0, 0x20, 0, 0, 0]
        );
        assert_eq!(
            security_protocol_out(0x20, 0x0010, 84),
            [0xb5, 0x20, 0, 0x10, 0, 0, 0, 0, 0, 84, 0, 0]
        );
    }

    #[test]
    fn small_cdbs() {
        assert_eq!(
            mode_sense_6(0x1d, 0, 0xff, true),
            [0x1a, 0x08, 0x1d, 0, 0xff, 0]
        );
        assert_eq!(inquiry(96), [0x12, 0, 0, 0, 96, 0]);
        assert_eq!(read_block_limits(), [5, 0, 0, 0, 0, 0]);
        assert_eq!(load_unload(false), [0x1b, 0, 0, 0, 0, 0]);
        assert_eq!(load_unload(true), [0x1b, 0, 0, 0, 1, 0]);
        assert_eq!(space(1, 1), [0x11, 1, 0, 0, 1, 0]);
        assert_eq!(space(0, -2), [0x11, 0, 0xff, 0xff, 0xfe, 0]);
        assert_eq!(initialize_element_status(), [7, 0, 0, 0, 0, 0]);
        assert_eq!(read_position_short()[0], 0x34);
    }

    #[test]
    fn block_limits_as_tgt_reports_them() {
        // Captured from tgt's emulated drive: "Block limits 4 - 1048576 bytes".
        assert_eq!(
            parse_block_limits(&[0x09, 0x10, 0x00, 0x00, 0x00, 0x04]),
            Some((9, 1 << 20, 4))
        );
        assert_eq!(parse_block_limits(&[0; 5]), None);
    }

    #[test]
    fn inquiry_ids() {
        let mut b = vec![0x01, 0x80, 5, 0x12, 0x3d, 0, 0, 2];
        b.extend_from_slice(b"IET     VIRTUAL-TAPE    0001");
        assert_eq!(
            parse_inquiry_ids(&b),
            Some((
                "IET".to_string(),
                "VIRTUAL-TAPE".to_string(),
                "0001".to_string()
            ))
        );
        assert_eq!(parse_inquiry_ids(&b[..20]), None);
    }
}
