//! The remaining CDBs and fields, one behaviour each, through the whole stack.

mod common;

use common::*;
use iscsi_target::initiator::{CommandResult, Initiator};

const MIB: u64 = 1 << 20;

#[test]
fn mode_pages_and_mode_select_compression() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    // MODE SENSE(10) of the compression page: header 8 + descriptor 8 + page 16.
    let r = ask(&mut i, DRIVE0, &mode_sense10(0x0f, 255), 255);
    assert_good(&r);
    assert_eq!(r.data.len(), 32);
    assert_eq!(u16::from_be_bytes([r.data[6], r.data[7]]), 8);
    let p = &r.data[16..];
    assert_eq!((p[0], p[1]), (0x0f, 14));
    assert_eq!(p[2] & 0xc0, 0x40, "DCC set, DCE clear");
    // Changeable values: only DCE.
    let mut cdb = mode_sense6(0x0f, 255, true);
    cdb[2] |= 0x40;
    let r = ask(&mut i, DRIVE0, &cdb, 255);
    assert_eq!(r.data[4 + 2], 0x80);
    // Saved values are not supported.
    cdb[2] = 0xc0 | 0x0f;
    let r = ask(&mut i, DRIVE0, &cdb, 255);
    assert_sense(&r, 5, 0x39, 0x00);
    // MODE SELECT(6) turning DCE on, then it reads back on.
    let mut sel = vec![0u8, 0, 0x10, 0];
    let mut page = vec![0u8; 16];
    page[0] = 0x0f;
    page[1] = 14;
    page[2] = 0x80;
    sel.extend(&page);
    let r = i
        .command(DRIVE0, &mode_select6(sel.len() as u8), &sel, 0)
        .unwrap();
    assert_good(&r);
    let r = ask(&mut i, DRIVE0, &mode_sense6(0x0f, 255, true), 255);
    assert_eq!(r.data[4 + 2] & 0x80, 0x80);
    // Device configuration page; an unknown page is an invalid field.
    let r = ask(&mut i, DRIVE0, &mode_sense6(0x10, 255, true), 255);
    assert_eq!((r.data[4], r.data[5]), (0x10, 14));
    let r = ask(&mut i, DRIVE0, &mode_sense6(0x19, 255, true), 255);
    assert_sense(&r, 5, 0x24, 0x00);
    let mut bad = vec![0u8, 0, 0x10, 0, 0x19, 2, 0, 0];
    let r = i.command(DRIVE0, &mode_select6(8), &bad, 0).unwrap();
    assert_sense(&r, 5, 0x26, 0x00);
    // SP (save pages) is refused.
    bad.truncate(4);
    let r = i
        .command(DRIVE0, &[0x15, 0x11, 0, 0, 4, 0], &bad, 0)
        .unwrap();
    assert_sense(&r, 5, 0x24, 0x00);
}

#[test]
fn request_sense_reports_and_clears_unit_attention() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    let r = ask(&mut i, DRIVE0, &[0x03, 0, 0, 0, 252, 0], 252);
    assert_good(&r);
    assert_eq!(r.data.len(), 18);
    assert_eq!((r.data[2] & 0x0f, r.data[12], r.data[13]), (6, 0x29, 0x00));
    // Cleared: next TUR reports the empty drive, REQUEST SENSE says NOT READY 3A.
    let r = ask(&mut i, DRIVE0, &tur(), 0);
    assert_sense(&r, 2, 0x3a, 0x00);
    let r = ask(&mut i, DRIVE0, &[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!((r.data[2] & 0x0f, r.data[12]), (2, 0x3a));
    // Descriptor format is not supported.
    let r = ask(&mut i, DRIVE0, &[0x03, 1, 0, 0, 18, 0], 18);
    assert_sense(&r, 5, 0x24, 0x00);
    // The changer's REQUEST SENSE.
    let r = ask(&mut i, CHANGER, &[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!((r.data[2] & 0x0f, r.data[12]), (6, 0x29));
    let r = ask(&mut i, CHANGER, &[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!(r.data[2] & 0x0f, 0);
}

#[test]
fn positioning_field_checks_and_log_select() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    for k in 0..3 {
        assert_good(
            &i.command(DRIVE0, &write6(100, false), &block(k, 100), 0)
                .unwrap(),
        );
    }
    // WRITE FILEMARKS with IMMED, and with WSMK (setmarks: invalid).
    assert_good(&ask(&mut i, DRIVE0, &[0x10, 1, 0, 0, 2, 0], 0));
    let r = ask(&mut i, DRIVE0, &[0x10, 2, 0, 0, 1, 0], 0);
    assert_sense(&r, 5, 0x24, 0x00);
    // REWIND with IMMED.
    assert_good(&ask(&mut i, DRIVE0, &[0x01, 1, 0, 0, 0, 0], 0));
    // LOCATE(10) with CP and a partition other than 0: invalid.
    let mut l = locate10(1);
    l[1] = 0x02;
    l[8] = 1;
    let r = ask(&mut i, DRIVE0, &l, 0);
    assert_sense(&r, 5, 0x24, 0x00);
    // LOCATE(16) to end of data.
    assert_good(&ask(&mut i, DRIVE0, &locate16(3, 0), 0));
    let r = ask(&mut i, DRIVE0, &read_position(6), 32);
    assert_eq!(&r.data[8..16], &5u64.to_be_bytes());
    assert_eq!(&r.data[16..24], &2u64.to_be_bytes());
    // SPACE(16) with a parameter list length: invalid.
    let mut sp = space16(0, 1);
    sp[13] = 4;
    let r = ask(&mut i, DRIVE0, &sp, 0);
    assert_sense(&r, 5, 0x24, 0x00);
    // SPACE count 0 is no motion.
    assert_good(&ask(&mut i, DRIVE0, &space6(0, 0), 0));
    // READ POSITION short form with an allocation length: invalid.
    let mut rp = read_position(0);
    rp[8] = 20;
    let r = ask(&mut i, DRIVE0, &rp, 20);
    assert_sense(&r, 5, 0x24, 0x00);
    // READ POSITION extended form cut to its allocation length.
    let mut rp = read_position(8);
    rp[8] = 16;
    let r = ask(&mut i, DRIVE0, &rp, 16);
    assert_eq!(r.data.len(), 16);
    assert_eq!(&r.data[8..16], &5u64.to_be_bytes());
    // LOG SELECT with PCR resets; anything else is refused.
    assert_good(&ask(
        &mut i,
        DRIVE0,
        &[0x4c, 0x02, 0, 0, 0, 0, 0, 0, 0, 0],
        0,
    ));
    let r = ask(&mut i, DRIVE0, &[0x4c, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0);
    assert_sense(&r, 5, 0x24, 0x00);
    // LOG SENSE with SP set: invalid.
    let mut ls = log_sense(0x2e, 255);
    ls[1] = 1;
    let r = ask(&mut i, DRIVE0, &ls, 255);
    assert_sense(&r, 5, 0x24, 0x00);
    // TapeAlert from parameter 60 on: 5 parameters.
    let mut ls = log_sense(0x2e, 255);
    ls[6] = 60;
    let r = ask(&mut i, DRIVE0, &ls, 255);
    assert_eq!(u16::from_be_bytes([r.data[2], r.data[3]]), 25);
    // PREVENT with the obsolete values 2/3: invalid.
    let r = ask(&mut i, DRIVE0, &[0x1e, 0, 0, 0, 2, 0], 0);
    assert_sense(&r, 5, 0x24, 0x00);
    // A write with less data than the CDB asks for: refused, nothing written; the
    // transport reports the overflow.
    let r = i
        .command_edtl(DRIVE0, &write6(200, false), &block(1, 100), false, 100)
        .unwrap();
    assert_sense(&r, 5, 0x24, 0x00);
    assert_eq!(r.residual, -100);
}

#[test]
fn changer_extra_commands() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    settle(&mut i, CHANGER);
    // INITIALIZE ELEMENT STATUS WITH RANGE over valid and invalid ranges.
    let r = ask(
        &mut i,
        CHANGER,
        &[0xe7, 1, 0x04, 0x00, 0, 0, 0, 2, 0, 0, 0, 0],
        0,
    );
    assert_good(&r);
    let r = ask(
        &mut i,
        CHANGER,
        &[0xe7, 1, 0x09, 0x00, 0, 0, 0, 2, 0, 0, 0, 0],
        0,
    );
    assert_sense(&r, 5, 0x21, 0x01);
    // Transport geometry and device capabilities pages.
    let r = ask(&mut i, CHANGER, &mode_sense6(0x1e, 255, true), 255);
    assert_eq!(&r.data[4..6], &[0x1e, 2]);
    let r = ask(&mut i, CHANGER, &mode_sense6(0x1f, 255, true), 255);
    assert_eq!(&r.data[4..6], &[0x1f, 0x12]);
    assert_eq!(r.data[4 + 2], 0x0e);
    // MODE SELECT of page 0x1d accepted, a block descriptor refused.
    let mut sel = vec![0u8, 0, 0, 0];
    let mut p = vec![0u8; 20];
    p[0] = 0x1d;
    p[1] = 0x12;
    sel.extend(&p);
    assert_good(&i.command(CHANGER, &mode_select6(24), &sel, 0).unwrap());
    let bd = vec![0u8, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0];
    let r = i.command(CHANGER, &mode_select6(12), &bd, 0).unwrap();
    assert_sense(&r, 5, 0x26, 0x00);
    // EXCHANGE MEDIUM slot0 -> slot3 (empty) with slot3's... source and first
    // destination both must be full.
    let x = [0xa6, 0, 0, 0, 0x04, 0x00, 0x04, 0x03, 0x04, 0x00, 0, 0];
    let r = ask(&mut i, CHANGER, &x, 0);
    assert_sense(&r, 5, 0x3b, 0x0e);
    // Exchange slot0 -> slot1, slot1's cartridge -> slot3.
    let x = [0xa6, 0, 0, 0, 0x04, 0x00, 0x04, 0x01, 0x04, 0x03, 0, 0];
    assert_good(&ask(&mut i, CHANGER, &x, 0));
    let st = s.lib.state().unwrap();
    assert_eq!(st.slots[0], None);
    assert_eq!(st.slots[1].as_deref(), Some("TV0001L9"));
    assert_eq!(st.slots[3].as_deref(), Some("TV0002L9"));
    // MOVE MEDIUM with INVERT: not supported.
    let mut m = move_medium(SLOT_BASE + 1, SLOT_BASE);
    m[10] = 1;
    let r = ask(&mut i, CHANGER, &m, 0);
    assert_sense(&r, 5, 0x24, 0x00);
    // An unknown changer opcode.
    let r = ask(&mut i, CHANGER, &[0x08, 0, 0, 0, 1, 0], 512);
    assert_sense(&r, 5, 0x20, 0x00);
}

/// READ ATTRIBUTE (service action `sa`, from attribute `first`) with 4096 bytes in.
fn read_attributes(i: &mut Initiator, sa: u8, first: u16) -> CommandResult {
    let f = first.to_be_bytes();
    let cdb = [0x8c, sa, 0, 0, 0, 0, 0, 0, f[0], f[1], 0, 0, 0x10, 0, 0, 0];
    ask(i, DRIVE0, &cdb, 4096)
}

/// WRITE ATTRIBUTE of the parameter list `p`.
fn write_attribute(p: &[u8]) -> [u8; 16] {
    let l = (p.len() as u32).to_be_bytes();
    [
        0x8d, 0, 0, 0, 0, 0, 0, 0, 0, 0, l[0], l[1], l[2], l[3], 0, 0,
    ]
}

/// REPORT SUPPORTED OPERATION CODES with these options (RCTD and reporting options),
/// requested opcode and service action, and `alloc` bytes in.
fn rsoc(options: u8, opcode: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let (s, a) = (sa.to_be_bytes(), alloc.to_be_bytes());
    vec![
        0xa3, 0x0c, options, opcode, s[0], s[1], a[0], a[1], a[2], a[3], 0, 0,
    ]
}

/// Attribute values as (id, read only, format, value).
fn attrs(d: &[u8]) -> Vec<(u16, bool, u8, Vec<u8>)> {
    let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut off = 4;
    while off < 4 + n {
        let id = u16::from_be_bytes([d[off], d[off + 1]]);
        let len = u16::from_be_bytes([d[off + 3], d[off + 4]]) as usize;
        out.push((
            id,
            d[off + 2] & 0x80 != 0,
            d[off + 2] & 3,
            d[off + 5..off + 5 + len].to_vec(),
        ));
        off += 5 + len;
    }
    out
}

#[test]
fn medium_auxiliary_memory_attributes() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    settle(&mut i, DRIVE0);
    let r = read_attributes(&mut i, 0, 0);
    assert_sense(&r, 2, 0x3a, 0x00);
    load(&mut i, 0, 0);
    assert_good(
        &i.command(DRIVE0, &write6(3 << 20, false), &block(1, 3 << 20), 0)
            .unwrap(),
    );
    let r = read_attributes(&mut i, 0, 0);
    assert_good(&r);
    let a = attrs(&r.data);
    let get = |id: u16| a.iter().find(|x| x.0 == id).cloned().unwrap();
    assert_eq!(
        get(0x0001).3,
        64u64.to_be_bytes().to_vec(),
        "maximum capacity in MiB"
    );
    assert_eq!(
        get(0x0000).3,
        61u64.to_be_bytes().to_vec(),
        "remaining capacity in MiB"
    );
    assert_eq!(get(0x0003).3, 1u64.to_be_bytes().to_vec(), "load count");
    assert_eq!(get(0x0220).3, 3u64.to_be_bytes().to_vec(), "MiB written");
    let bc = get(0x0806);
    assert!(bc.1 && bc.2 == 1);
    assert_eq!(String::from_utf8(bc.3).unwrap().trim(), "TV0001L9");
    assert!(!get(0x0803).1, "the user label is writable");
    // From a first attribute on; the attribute list; partitions.
    let r = read_attributes(&mut i, 0, 0x0800);
    assert_eq!(
        attrs(&r.data).iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![0x0803, 0x0806]
    );
    let r = read_attributes(&mut i, 1, 0);
    assert_eq!(
        u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize,
        (r.data.len() - 4)
    );
    let r = read_attributes(&mut i, 3, 0);
    assert_eq!(r.data, vec![0, 2, 0, 1]);
    let r = read_attributes(&mut i, 0x1f, 0);
    assert_sense(&r, 5, 0x24, 0x00);
    // WRITE ATTRIBUTE of the user medium text label; it lands in the cartridge metadata.
    let text = b"pool-A";
    let mut p = ((5 + text.len()) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&[0x08, 0x03, 0x02, 0, text.len() as u8]);
    p.extend_from_slice(text);
    let cdb = write_attribute(&p);
    assert_good(&i.command(DRIVE0, &cdb, &p, 0).unwrap());
    let rec = s
        .lib
        .cartridges()
        .unwrap()
        .into_iter()
        .find(|r| r.meta.barcode == "TV0001L9")
        .unwrap();
    assert_eq!(rec.meta.application_label.as_deref(), Some("pool-A"));
    let r = read_attributes(&mut i, 0, 0x0803);
    assert_eq!(attrs(&r.data)[0].3, b"pool-A");
    // READ MEDIA SERIAL NUMBER: the barcode.
    let r = ask(
        &mut i,
        DRIVE0,
        &[0xab, 0x01, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        256,
    );
    assert_good(&r);
    assert_eq!(&r.data[..], b"\0\0\0\x08TV0001L9");
    // A read-only attribute cannot be written.
    let mut p = 7u32.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x04, 0x01, 0x01, 0, 2, b'x', b'y']);
    let cdb = write_attribute(&p);
    let r = i.command(DRIVE0, &cdb, &p, 0).unwrap();
    assert_sense(&r, 5, 0x26, 0x00);
}

#[test]
fn report_supported_operation_codes_matches_what_is_executed() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    settle(&mut i, DRIVE0);
    settle(&mut i, CHANGER);
    for lun in [DRIVE0, CHANGER] {
        let r = ask(&mut i, lun, &rsoc(0, 0, 0, 4096), 4096);
        assert_good(&r);
        let n = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert!(n / 8 >= 15, "{} commands", n / 8);
        for d in r.data[4..4 + n].chunks(8) {
            let (op, len) = (d[0], u16::from_be_bytes([d[6], d[7]]) as usize);
            if matches!(op, 0x19 | 0x1b | 0x01) {
                continue; // they move the tape; covered elsewhere
            }
            // Every listed command is known: a CDB of the listed length is never answered
            // INVALID COMMAND OPERATION CODE.
            let mut cdb = vec![0u8; len];
            cdb[0] = op;
            if d[5] & 1 != 0 {
                cdb[1] = d[3];
            }
            let r = ask(&mut i, lun, &cdb, 0);
            assert_ne!(
                r.sense_code().map(|c| (c.1, c.2)),
                Some((0x20, 0x00)),
                "opcode {op:02x} on LUN {lun}"
            );
        }
    }
    // One command: READ(6) is supported, with its usage data; 0x44 is not.
    let r = ask(&mut i, DRIVE0, &rsoc(0x01, 0x08, 0, 256), 256);
    assert_eq!(r.data[1] & 0x07, 3);
    assert_eq!(&r.data[2..4], &[0, 6]);
    assert_eq!(&r.data[4..10], &[0x08, 0x03, 0xff, 0xff, 0xff, 0]);
    let r = ask(&mut i, DRIVE0, &rsoc(0x01, 0x44, 0, 256), 256);
    assert_eq!(r.data[1] & 0x07, 1);
    // With timeouts descriptors.
    let r = ask(&mut i, CHANGER, &rsoc(0x80, 0, 0, 4096), 4096);
    let n = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
    assert_eq!(n % 20, 0);
    assert_eq!(r.data[4 + 5] & 0x02, 0x02, "CTDP");
    // Asking by opcode for a command with a service action needs option 2.
    let r = ask(&mut i, DRIVE0, &rsoc(0x01, 0xa3, 0, 256), 256);
    assert_sense(&r, 5, 0x24, 0x00);
    let r = ask(&mut i, DRIVE0, &rsoc(0x02, 0xa3, 0x000c, 256), 256);
    assert_eq!(r.data[1] & 0x07, 3);
}
