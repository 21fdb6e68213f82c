//! The SMC changer through the whole stack.

mod common;

use common::*;

const MIB: u64 = 1 << 20;

/// Parse READ ELEMENT STATUS data into (type, address, full, barcode, source, id).
fn elements(d: &[u8]) -> Vec<(u8, u16, bool, String, Option<u16>, String)> {
    let mut out = Vec::new();
    let total = u32::from_be_bytes([0, d[5], d[6], d[7]]) as usize;
    let end = (8 + total).min(d.len());
    let mut off = 8;
    while off + 8 <= end {
        let etype = d[off];
        let voltag = d[off + 1] & 0x80 != 0;
        let dlen = u16::from_be_bytes([d[off + 2], d[off + 3]]) as usize;
        let bytes = u32::from_be_bytes([0, d[off + 5], d[off + 6], d[off + 7]]) as usize;
        let mut p = off + 8;
        while p + dlen <= (off + 8 + bytes).min(end) {
            let e = &d[p..p + dlen];
            let addr = u16::from_be_bytes([e[0], e[1]]);
            let full = e[2] & 1 != 0;
            let src = (e[9] & 0x80 != 0).then(|| u16::from_be_bytes([e[10], e[11]]));
            let mut bc = String::new();
            let mut rest = 12;
            if voltag {
                bc = String::from_utf8_lossy(&e[12..44])
                    .trim_matches(|c| c == ' ' || c == '\0')
                    .to_string();
                rest = 48;
            }
            let mut id = String::new();
            if e.len() > rest + 4 {
                let n = e[rest + 3] as usize;
                id = String::from_utf8_lossy(&e[rest + 4..rest + 4 + n])
                    .trim()
                    .to_string();
            }
            out.push((etype, addr, full, bc, src, id));
            p += dlen;
        }
        off += 8 + bytes;
    }
    out
}

#[test]
fn element_status_moves_and_errors() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    let r = i.command(CHANGER, &inquiry(false, 0, 96), &[], 96).unwrap();
    assert_eq!(r.data[0], 0x08);
    settle(&mut i, CHANGER);
    // Element address assignment page.
    let r = i
        .command(CHANGER, &mode_sense6(0x1d, 255, true), &[], 255)
        .unwrap();
    assert_good(&r);
    let p = &r.data[4..];
    assert_eq!(p[0], 0x1d);
    let at = |o: usize| u16::from_be_bytes([p[o], p[o + 1]]);
    assert_eq!((at(2), at(4)), (1, 1));
    assert_eq!((at(6), at(8)), (SLOT_BASE, 4));
    assert_eq!((at(10), at(12)), (MAIL_BASE, 1));
    assert_eq!((at(14), at(16)), (DRIVE_BASE, 2));
    let r = i
        .command(CHANGER, &mode_sense10(0x3f, 1024), &[], 1024)
        .unwrap();
    assert_good(&r);
    assert_eq!(
        u16::from_be_bytes([r.data[0], r.data[1]]) as usize + 2,
        r.data.len()
    );

    // Everything, with barcodes and drive identifiers.
    let r = i
        .command(
            CHANGER,
            &read_element_status(0, 0, 100, true, 65536),
            &[],
            65536,
        )
        .unwrap();
    assert_good(&r);
    let els = elements(&r.data);
    assert_eq!(u16::from_be_bytes([r.data[2], r.data[3]]), 8);
    assert_eq!(els.len(), 8, "{els:?}");
    let slots: Vec<_> = els.iter().filter(|e| e.0 == 2).collect();
    assert_eq!(slots.len(), 4);
    assert_eq!(slots[0].3, "TV0001L9");
    assert!(slots[0].2 && slots[2].2 && !slots[3].2);
    let drives: Vec<_> = els.iter().filter(|e| e.0 == 4).collect();
    let serial0 = {
        let r = i
            .command(DRIVE0, &inquiry(true, 0x80, 255), &[], 255)
            .unwrap();
        String::from_utf8(r.data[4..].to_vec()).unwrap()
    };
    assert!(
        drives[0].5.ends_with(&serial0),
        "DVCID {:?} names serial {serial0}",
        drives[0].5
    );
    assert!(!drives[0].2);

    // Allocation length too small: truncated, header still tells the whole size.
    let r = i
        .command(CHANGER, &read_element_status(0, 0, 100, false, 16), &[], 16)
        .unwrap();
    assert_eq!(r.data.len(), 16);
    let full = u32::from_be_bytes([0, r.data[5], r.data[6], r.data[7]]);
    assert!(full > 8);
    // Only storage elements from the third slot on.
    let r = i
        .command(
            CHANGER,
            &read_element_status(2, SLOT_BASE + 2, 10, false, 4096),
            &[],
            4096,
        )
        .unwrap();
    let els = elements(&r.data);
    assert_eq!(els.len(), 2);
    assert_eq!(els[0].1, SLOT_BASE + 2);

    // MOVE MEDIUM slot 0 -> drive 0: the drive shows it with its source.
    assert_good(
        &i.command(CHANGER, &move_medium(SLOT_BASE, DRIVE_BASE), &[], 0)
            .unwrap(),
    );
    let r = i
        .command(
            CHANGER,
            &read_element_status(4, 0, 10, false, 4096),
            &[],
            4096,
        )
        .unwrap();
    let els = elements(&r.data);
    assert_eq!(els[0].3, "TV0001L9");
    assert_eq!(els[0].4, Some(SLOT_BASE));
    // Errors: source empty, destination full, no such element, bad transport.
    let r = i
        .command(CHANGER, &move_medium(SLOT_BASE + 3, SLOT_BASE), &[], 0)
        .unwrap();
    assert_sense(&r, 5, 0x3b, 0x0e);
    let r = i
        .command(CHANGER, &move_medium(SLOT_BASE + 1, DRIVE_BASE), &[], 0)
        .unwrap();
    assert_sense(&r, 5, 0x3b, 0x0d);
    let r = i
        .command(CHANGER, &move_medium(SLOT_BASE + 50, SLOT_BASE + 3), &[], 0)
        .unwrap();
    assert_sense(&r, 5, 0x21, 0x01);
    let mut bad = move_medium(SLOT_BASE + 1, SLOT_BASE + 3);
    bad[3] = 0x77;
    let r = i.command(CHANGER, &bad, &[], 0).unwrap();
    assert_sense(&r, 5, 0x21, 0x01);
    // The drive sees the new medium: UNIT ATTENTION 28/00, then ready.
    let r = i.command(DRIVE0, &tur(), &[], 0).unwrap();
    assert_eq!(r.sense_key(), Some(6));
    let r = settle(&mut i, DRIVE0);
    assert_good(&r);
    // A drive with removal prevented keeps its cartridge.
    assert_good(&i.command(DRIVE0, &[0x1e, 0, 0, 0, 1, 0], &[], 0).unwrap());
    let r = i
        .command(CHANGER, &move_medium(DRIVE_BASE, SLOT_BASE), &[], 0)
        .unwrap();
    assert_sense(&r, 5, 0x53, 0x02);
    assert_good(&i.command(DRIVE0, &[0x1e, 0, 0, 0, 0, 0], &[], 0).unwrap());
    // Write something, then unload through the changer: flushed and back in its slot.
    assert_good(
        &i.command(DRIVE0, &write6(512, false), &block(1, 512), 0)
            .unwrap(),
    );
    assert_good(
        &i.command(CHANGER, &move_medium(DRIVE_BASE, SLOT_BASE), &[], 0)
            .unwrap(),
    );
    let r = i.command(DRIVE0, &tur(), &[], 0).unwrap();
    assert_sense(&r, 2, 0x3a, 0x00);

    // EXCHANGE MEDIUM slot 0 <-> slot 1 (second destination = source).
    let x = [0xa6, 0, 0, 0, 0x04, 0x00, 0x04, 0x01, 0x04, 0x00, 0, 0];
    assert_good(&i.command(CHANGER, &x, &[], 0).unwrap());
    let r = i
        .command(
            CHANGER,
            &read_element_status(2, 0, 10, false, 4096),
            &[],
            4096,
        )
        .unwrap();
    let els = elements(&r.data);
    assert_eq!(els[0].3, "TV0002L9");
    assert_eq!(els[1].3, "TV0001L9");
    // INITIALIZE ELEMENT STATUS, POSITION TO ELEMENT, OPEN/CLOSE I/E.
    assert_good(&i.command(CHANGER, &[0x07, 0, 0, 0, 0, 0], &[], 0).unwrap());
    assert_good(
        &i.command(CHANGER, &[0x2b, 0, 0, 0, 0x04, 0x00, 0, 0, 0, 0], &[], 0)
            .unwrap(),
    );
    assert_good(
        &i.command(CHANGER, &[0x1b, 0, 0x03, 0x00, 0, 0], &[], 0)
            .unwrap(),
    );
    let r = i
        .command(CHANGER, &[0x1b, 0, 0x04, 0x00, 0, 0], &[], 0)
        .unwrap();
    assert_sense(&r, 5, 0x21, 0x01);
}

#[test]
fn mail_slot_access_and_unit_attentions_per_nexus() {
    let s = Served::new(64 * MIB, MIB);
    let mut a = s.login(1);
    let mut b = s.login(2);
    settle(&mut a, CHANGER);
    settle(&mut b, CHANGER);
    settle(&mut b, DRIVE1);
    // Export slot 2's cartridge to the mail slot: the other nexus gets 28/01.
    assert_good(
        &a.command(CHANGER, &move_medium(SLOT_BASE + 2, MAIL_BASE), &[], 0)
            .unwrap(),
    );
    assert_good(&a.command(CHANGER, &tur(), &[], 0).unwrap());
    let r = b.command(CHANGER, &tur(), &[], 0).unwrap();
    assert_sense(&r, 6, 0x28, 0x01);
    assert_good(&b.command(CHANGER, &tur(), &[], 0).unwrap());
    // The operator takes it out; the slot is empty and the cartridge outside.
    s.lib.remove_from_mail_slot("TV0003L9").unwrap();
    let r = a
        .command(
            CHANGER,
            &read_element_status(3, 0, 10, true, 4096),
            &[],
            4096,
        )
        .unwrap();
    let d = &r.data;
    assert_eq!(d[8], 3);
    assert_eq!(d[16 + 2] & 1, 0, "mail slot empty");
    assert_eq!(d[16 + 2] & 0x30, 0x30, "import and export enabled");
    // Loading drive 1 from session a: session b, which talked to drive 1, gets 28/00.
    assert_good(
        &a.command(CHANGER, &move_medium(SLOT_BASE + 1, DRIVE_BASE + 1), &[], 0)
            .unwrap(),
    );
    let r = b.command(DRIVE1, &tur(), &[], 0).unwrap();
    assert_sense(&r, 6, 0x28, 0x00);
    assert_good(&b.command(DRIVE1, &tur(), &[], 0).unwrap());
}
