//! The SSC drive through the whole stack: our test initiator over loopback, the target,
//! vtl-sim cartridges on disk.

mod common;

use common::*;
use vtl_sim::{Library, Read};

const MIB: u64 = 1 << 20;

#[test]
fn empty_drive_says_no_medium_and_identifies_itself() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    // First contact: power-on unit attention, then an empty drive is 02/3A/00.
    let r = i.command(DRIVE0, &tur(), &[], 0).unwrap();
    assert_sense(&r, 6, 0x29, 0x00);
    let r = i.command(DRIVE0, &tur(), &[], 0).unwrap();
    assert_sense(&r, 2, 0x3a, 0x00);
    let r = i.command(DRIVE0, &inquiry(false, 0, 96), &[], 96).unwrap();
    assert_good(&r);
    assert_eq!(r.data.len(), 36);
    assert_eq!(r.data[0], 0x01);
    assert_eq!(r.residual, 60, "96 asked, 36 sent: underflow");
    let r = i
        .command(DRIVE0, &inquiry(true, 0x00, 255), &[], 255)
        .unwrap();
    assert_eq!(&r.data[4..], &[0x00, 0x80, 0x83]);
    let r = i
        .command(DRIVE0, &inquiry(true, 0x80, 255), &[], 255)
        .unwrap();
    let serial = String::from_utf8(r.data[4..].to_vec()).unwrap();
    assert!(serial.ends_with("D000"), "{serial}");
    // MODE SENSE(6) alloc 12 works with no medium (QEMU asks for the block size).
    let r = i
        .command(DRIVE0, &mode_sense6(0, 12, false), &[], 12)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data.len(), 12);
    assert_eq!(r.data[3], 8);
    // Allocation length shorter than the data and EDTL shorter still: overflow.
    let r = i
        .command_edtl(DRIVE0, &inquiry(false, 0, 255), &[], true, 16)
        .unwrap();
    assert_eq!(r.data.len(), 16);
    assert_eq!(r.residual, -20);
    let r = i
        .command(DRIVE0, &read6(512, false, false), &[], 512)
        .unwrap();
    assert_sense(&r, 2, 0x3a, 0x00);
    let r = i.command(DRIVE0, &[0x05, 0, 0, 0, 0, 0], &[], 6).unwrap();
    assert_good(&r);
    assert_eq!(&r.data[1..4], &[0xff, 0xff, 0xff]);
    assert_eq!(&r.data[4..6], &[0, 1]);
    let r = i
        .command(DRIVE0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256)
        .unwrap();
    assert_eq!(&r.data[0..4], &24u32.to_be_bytes());
    assert_eq!(i.logout().unwrap(), 0);
}

#[test]
fn write_read_filemarks_positions_and_residuals() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(2);
    load(&mut i, 0, 0);
    // Blocks of several sizes: one above FirstBurstLength so R2Ts are needed, one above
    // the initiator's MaxRecvDataSegmentLength so Data-In is split.
    let sizes = [1000usize, 65536, 600_000, 17];
    for (k, &n) in sizes.iter().enumerate() {
        let r = i
            .command(DRIVE0, &write6(n as u32, false), &block(k as u32, n), 0)
            .unwrap();
        assert_good(&r);
        if n > 262_144 {
            assert!(r.r2ts >= 1, "{n} bytes needed R2Ts: {r:?}");
        }
    }
    assert_good(&i.command(DRIVE0, &write_filemarks(1), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &write6(4096, false), &block(9, 4096), 0)
        .unwrap();
    assert_good(&r);
    // Objects: 4 blocks, filemark, 1 block: position 6, file 1.
    let r = i.command(DRIVE0, &read_position(0), &[], 20).unwrap();
    assert_good(&r);
    assert_eq!(r.data[0] & 0x80, 0, "not at BOP");
    assert_eq!(&r.data[4..8], &6u32.to_be_bytes());
    let r = i.command(DRIVE0, &read_position(6), &[], 32).unwrap();
    assert_eq!(&r.data[8..16], &6u64.to_be_bytes());
    assert_eq!(&r.data[16..24], &1u64.to_be_bytes());
    let r = i.command(DRIVE0, &read_position(8), &[], 32).unwrap();
    assert_eq!(&r.data[8..16], &6u64.to_be_bytes());

    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    let r = i.command(DRIVE0, &read_position(0), &[], 20).unwrap();
    assert_eq!(r.data[0] & 0x80, 0x80, "BOP after rewind");
    // Exact read.
    let r = i
        .command(DRIVE0, &read6(1000, false, false), &[], 1000)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data, block(0, 1000));
    // Asking for more than the block: ILI, INFORMATION = asked - actual, underflow.
    let r = i
        .command(DRIVE0, &read6(70000, false, false), &[], 70000)
        .unwrap();
    assert_sense(&r, 0, 0, 0);
    assert!(r.ili());
    assert_eq!(r.information(), Some(70000 - 65536));
    assert_eq!(r.data, block(1, 65536));
    assert_eq!(r.residual, 70000 - 65536);
    // Asking for less than the block: ILI with negative INFORMATION, data truncated,
    // and the tape is past the block. The 600000-byte block arrives in several Data-In.
    let r = i
        .command(DRIVE0, &read6(300_000, false, false), &[], 300_000)
        .unwrap();
    assert!(r.ili());
    assert_eq!(r.information(), Some(300_000 - 600_000));
    assert_eq!(r.data, block(2, 600_000)[..300_000].to_vec());
    assert!(r.data_in_pdus >= 2, "{r:?}");
    // SILI: a short block reads GOOD with the residual only in the transport.
    let r = i
        .command(DRIVE0, &read6(100, false, true), &[], 100)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data, block(3, 17));
    assert_eq!(r.residual, 83);
    // The filemark: NO SENSE + FILEMARK, INFORMATION = requested length; past the mark.
    let r = i
        .command(DRIVE0, &read6(512, false, false), &[], 512)
        .unwrap();
    assert_sense(&r, 0, 0x00, 0x01);
    assert!(r.filemark());
    assert_eq!(r.information(), Some(512));
    assert!(r.data.is_empty());
    let r = i
        .command(DRIVE0, &read6(4096, false, false), &[], 4096)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data, block(9, 4096));
    // End of data: BLANK CHECK 00/05, position unchanged.
    let r = i
        .command(DRIVE0, &read6(4096, false, false), &[], 4096)
        .unwrap();
    assert_sense(&r, 8, 0x00, 0x05);
    assert_eq!(r.information(), Some(4096));
    let r = i.command(DRIVE0, &read_position(0), &[], 20).unwrap();
    assert_eq!(&r.data[4..8], &6u32.to_be_bytes());

    // LOCATE(10) to object 2 and read the third block.
    assert_good(&i.command(DRIVE0, &locate10(2), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(600_000, false, false), &[], 600_000)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data, block(2, 600_000));
    // LOCATE(16) beyond end of data: BLANK CHECK, at EOD.
    let r = i.command(DRIVE0, &locate16(0, 99), &[], 0).unwrap();
    assert_sense(&r, 8, 0x00, 0x05);
    // LOCATE(16) to file 1 (just past the filemark).
    assert_good(&i.command(DRIVE0, &locate16(1, 1), &[], 0).unwrap());
    let r = i.command(DRIVE0, &read_position(6), &[], 32).unwrap();
    assert_eq!(&r.data[8..16], &5u64.to_be_bytes());

    // SPACE blocks forward over the filemark: stops past it, INFORMATION = residual.
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    let r = i.command(DRIVE0, &space6(0, 10), &[], 0).unwrap();
    assert_sense(&r, 0, 0x00, 0x01);
    assert!(r.filemark());
    assert_eq!(r.information(), Some(6));
    // SPACE blocks backward from file 1 over the filemark: stops before it, negative.
    let r = i.command(DRIVE0, &space6(0, -3), &[], 0).unwrap();
    assert_sense(&r, 0, 0x00, 0x01);
    assert_eq!(r.information(), Some(-3));
    // SPACE filemarks backward past BOT: EOM, 00/04, residual.
    let r = i.command(DRIVE0, &space6(1, -2), &[], 0).unwrap();
    assert_sense(&r, 0, 0x00, 0x04);
    assert!(r.eom());
    assert_eq!(r.information(), Some(-2));
    // SPACE filemarks forward past the last one: BLANK CHECK at EOD with residual.
    let r = i.command(DRIVE0, &space6(1, 3), &[], 0).unwrap();
    assert_sense(&r, 8, 0x00, 0x05);
    assert_eq!(r.information(), Some(2));
    // SPACE(16) to EOD, then READ POSITION long says file 1.
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    assert_good(&i.command(DRIVE0, &space16(3, 0), &[], 0).unwrap());
    let r = i.command(DRIVE0, &read_position(6), &[], 32).unwrap();
    assert_eq!(&r.data[8..16], &6u64.to_be_bytes());
    assert_eq!(&r.data[16..24], &1u64.to_be_bytes());
    // SPACE(16) blocks backward by 1 from EOD.
    assert_good(&i.command(DRIVE0, &space16(0, -1), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(4096, false, false), &[], 4096)
        .unwrap();
    assert_eq!(r.data, block(9, 4096));

    // ERASE from object 5: the last block and everything after is gone.
    assert_good(&i.command(DRIVE0, &locate10(5), &[], 0).unwrap());
    assert_good(&i.command(DRIVE0, &[0x19, 1, 0, 0, 0, 0], &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(4096, false, false), &[], 4096)
        .unwrap();
    assert_sense(&r, 8, 0x00, 0x05);
    assert_eq!(i.logout().unwrap(), 0);
    drop(i);

    // What was acknowledged is on the cartridge: read it in-process after shutdown.
    let mut s = s;
    s.shutdown();
    let lib = Library::open(s.dir.path()).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    d.locate(0).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for (k, &n) in sizes.iter().enumerate() {
        assert_eq!(d.read_block(&mut buf).unwrap(), Read::Block(n));
        assert_eq!(&buf[..n], &block(k as u32, n)[..]);
    }
    assert_eq!(d.read_block(&mut buf).unwrap(), Read::Filemark);
    assert_eq!(d.read_block(&mut buf).unwrap(), Read::EndOfData);
}

#[test]
fn fixed_block_mode_counts_blocks() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(3);
    load(&mut i, 1, 0);
    // MODE SELECT(6): header + block descriptor with 512-byte blocks.
    let mut p = vec![0u8, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 0x02, 0x00];
    let r = i.command(DRIVE0, &mode_select6(12), &p, 0).unwrap();
    assert_good(&r);
    let r = i
        .command(DRIVE0, &mode_sense6(0, 12, false), &[], 12)
        .unwrap();
    assert_eq!(&r.data[9..12], &[0, 2, 0]);
    assert_eq!(r.data[2] & 0x70, 0x10, "buffered mode 1");
    let r = i
        .command(DRIVE0, &write6(4, true), &block(1, 2048), 0)
        .unwrap();
    assert_good(&r);
    assert_good(&i.command(DRIVE0, &write_filemarks(1), &[], 0).unwrap());
    // A 100-byte block in variable mode inside fixed mode.
    assert_good(
        &i.command(DRIVE0, &write6(100, false), &block(2, 100), 0)
            .unwrap(),
    );
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    // Read 6 blocks: 4 come back, then the filemark, INFORMATION = 2 not read.
    let r = i
        .command(DRIVE0, &read6(6, true, false), &[], 3072)
        .unwrap();
    assert_sense(&r, 0, 0x00, 0x01);
    assert!(r.filemark());
    assert_eq!(r.information(), Some(2));
    assert_eq!(r.data, block(1, 2048));
    assert_eq!(r.residual, 1024);
    // The 100-byte block in fixed mode: wrong length, ILI, INFORMATION = 1.
    let r = i.command(DRIVE0, &read6(1, true, false), &[], 512).unwrap();
    assert_sense(&r, 0, 0, 0);
    assert!(r.ili());
    assert_eq!(r.information(), Some(1));
    // FIXED with SILI is invalid; FIXED with variable mode is invalid.
    let r = i.command(DRIVE0, &read6(1, true, true), &[], 512).unwrap();
    assert_sense(&r, 5, 0x24, 0x00);
    p[10] = 0;
    assert_good(&i.command(DRIVE0, &mode_select6(12), &p, 0).unwrap());
    let r = i.command(DRIVE0, &read6(1, true, false), &[], 512).unwrap();
    assert_sense(&r, 5, 0x24, 0x00);
    // A MODE SELECT with a bad block descriptor length: INVALID FIELD IN PARAMETER LIST.
    let bad = vec![0u8, 0, 0x10, 4, 0, 0, 0, 0, 0, 0, 2, 0];
    let r = i.command(DRIVE0, &mode_select6(12), &bad, 0).unwrap();
    assert_sense(&r, 5, 0x26, 0x00);
    // Parameter list longer than what was sent: the command is refused.
    let r = i
        .command_edtl(DRIVE0, &mode_select6(12), &p[..8], false, 8)
        .unwrap();
    assert_sense(&r, 5, 0x1a, 0x00);
}

#[test]
fn early_warning_then_volume_overflow() {
    // 1 MiB cartridge, early warning 128 KiB before the end.
    let s = Served::new(MIB, 128 * 1024);
    let mut i = s.login(4);
    load(&mut i, 0, 0);
    let blk = 64 * 1024;
    let mut written = 0;
    let mut warned_at = None;
    loop {
        let r = i
            .command(DRIVE0, &write6(blk as u32, false), &block(written, blk), 0)
            .unwrap();
        if r.status == 0 {
            written += 1;
            continue;
        }
        if r.sense_code() == Some((0, 0, 2)) {
            // Early warning: EOM set, the block IS written, INFORMATION 0.
            assert!(r.eom());
            assert_eq!(r.information(), Some(0));
            warned_at.get_or_insert(written);
            written += 1;
            continue;
        }
        // Physical end: VOLUME OVERFLOW with EOM, nothing written.
        assert_sense(&r, 0x0d, 0x00, 0x02);
        assert!(r.eom());
        assert_eq!(r.information(), Some(blk as i32));
        break;
    }
    assert_eq!(
        warned_at,
        Some(14),
        "the 15th 64 KiB block enters the last 128 KiB"
    );
    assert_eq!(written, 16);
    // WRITE FILEMARKS in the zone reports EOM too.
    let r = i.command(DRIVE0, &write_filemarks(1), &[], 0).unwrap();
    assert_sense(&r, 0, 0x00, 0x02);
    // Reading up to EOD past early warning: BLANK CHECK with EOM.
    assert_good(&i.command(DRIVE0, &space16(3, 0), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(blk as u32, false, false), &[], blk as u32)
        .unwrap();
    assert_sense(&r, 8, 0x00, 0x05);
    assert!(r.eom());
    let r = i.command(DRIVE0, &read_position(0), &[], 20).unwrap();
    assert_eq!(r.data[0] & 0x01, 0x01, "BPEW");
}

#[test]
fn write_protect_unload_load_prevent_and_log_pages() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(5);
    load(&mut i, 0, 0);
    let bc = s.lib.state().unwrap().drives[0].barcode.clone().unwrap();
    s.lib.set_write_protect(&bc, true).unwrap();
    let r = i
        .command(DRIVE0, &write6(512, false), &block(0, 512), 0)
        .unwrap();
    assert_sense(&r, 7, 0x27, 0x00);
    let r = i.command(DRIVE0, &write_filemarks(1), &[], 0).unwrap();
    assert_sense(&r, 7, 0x27, 0x00);
    let r = i
        .command(DRIVE0, &mode_sense6(0x3f, 255, false), &[], 255)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data[2] & 0x80, 0x80, "WP bit");
    assert_eq!(r.data[0] as usize + 1, r.data.len());
    // TapeAlert: flag 9 (write protect) is set, and cleared by reading the page.
    let r = i
        .command(DRIVE0, &log_sense(0x2e, 1024), &[], 1024)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data[0], 0x2e);
    assert_eq!(u16::from_be_bytes([r.data[2], r.data[3]]), 64 * 5);
    let flag = |d: &[u8], n: usize| d[4 + (n - 1) * 5 + 4];
    assert_eq!(flag(&r.data, 9), 1);
    assert_eq!(flag(&r.data, 5), 0);
    let r = i
        .command(DRIVE0, &log_sense(0x2e, 1024), &[], 1024)
        .unwrap();
    assert_eq!(flag(&r.data, 9), 0);
    let r = i.command(DRIVE0, &log_sense(0x00, 64), &[], 64).unwrap();
    assert_eq!(&r.data[4..], &[0x00, 0x17, 0x2e]);
    let r = i
        .command(DRIVE0, &log_sense(0x17, 1024), &[], 1024)
        .unwrap();
    assert_good(&r);
    let text = String::from_utf8_lossy(&r.data).to_string();
    assert!(text.contains(&bc), "volume statistics name the barcode");
    let r = i
        .command(DRIVE0, &log_sense(0x33, 1024), &[], 1024)
        .unwrap();
    assert_sense(&r, 5, 0x24, 0x00);
    s.lib.set_write_protect(&bc, false).unwrap();
    assert_good(
        &i.command(DRIVE0, &write6(512, false), &block(0, 512), 0)
            .unwrap(),
    );

    // PREVENT: unload refused; ALLOW: unload, then the drive is empty; LOAD brings the
    // cartridge back at BOT.
    assert_good(&i.command(DRIVE0, &[0x1e, 0, 0, 0, 1, 0], &[], 0).unwrap());
    let r = i.command(DRIVE0, &[0x1b, 0, 0, 0, 0, 0], &[], 0).unwrap();
    assert_sense(&r, 5, 0x53, 0x02);
    assert_good(&i.command(DRIVE0, &[0x1e, 0, 0, 0, 0, 0], &[], 0).unwrap());
    assert_good(&i.command(DRIVE0, &[0x1b, 0, 0, 0, 0, 0], &[], 0).unwrap());
    let r = i.command(DRIVE0, &tur(), &[], 0).unwrap();
    assert_sense(&r, 2, 0x3a, 0x00);
    assert_good(&i.command(DRIVE0, &[0x1b, 0, 0, 0, 1, 0], &[], 0).unwrap());
    let r = settle(&mut i, DRIVE0);
    assert_good(&r);
    let r = i
        .command(DRIVE0, &read6(512, false, false), &[], 512)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data, block(0, 512));
    // REQUEST SENSE with nothing pending: NO SENSE.
    let r = i.command(DRIVE0, &[0x03, 0, 0, 0, 18, 0], &[], 18).unwrap();
    assert_good(&r);
    assert_eq!(r.data[2] & 0x0f, 0);
    // Unknown opcode, and a bad field.
    let r = i.command(DRIVE0, &[0xd9, 0, 0, 0, 0, 0], &[], 0).unwrap();
    assert_sense(&r, 5, 0x20, 0x00);
    let r = i.command(DRIVE0, &space6(2, 1), &[], 0).unwrap();
    assert_sense(&r, 5, 0x24, 0x00);
    let r = i.command(DRIVE0, &read_position(3), &[], 32).unwrap();
    assert_sense(&r, 5, 0x24, 0x00);
}

#[test]
fn media_error_is_reported_as_medium_error() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(6);
    load(&mut i, 0, 0);
    for k in 0..3 {
        assert_good(
            &i.command(DRIVE0, &write6(512, false), &block(k, 512), 0)
                .unwrap(),
        );
    }
    let bc = s.lib.state().unwrap().drives[0].barcode.clone().unwrap();
    s.lib
        .set_faults(
            &bc,
            &vtl_sim::Faults {
                media_error_blocks: vec![1],
                ..Default::default()
            },
        )
        .unwrap();
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    assert_good(
        &i.command(DRIVE0, &read6(512, false, false), &[], 512)
            .unwrap(),
    );
    let r = i
        .command(DRIVE0, &read6(512, false, false), &[], 512)
        .unwrap();
    assert_sense(&r, 3, 0x11, 0x00);
    let r = i
        .command(DRIVE0, &log_sense(0x2e, 1024), &[], 1024)
        .unwrap();
    assert_eq!(r.data[4 + 3 * 5 + 4], 1, "TapeAlert flag 4 (media)");
}

#[test]
fn power_cut_in_the_cartridge_under_the_target() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(7);
    load(&mut i, 0, 0);
    let bc = s.lib.state().unwrap().drives[0].barcode.clone().unwrap();
    s.lib
        .set_faults(
            &bc,
            &vtl_sim::Faults {
                power_cut_after_bytes: Some(1000),
                ..Default::default()
            },
        )
        .unwrap();
    assert_good(
        &i.command(DRIVE0, &write6(512, false), &block(0, 512), 0)
            .unwrap(),
    );
    // The cut hits the second block: not acknowledged, HARDWARE ERROR.
    let r = i
        .command(DRIVE0, &write6(1024, false), &block(1, 1024), 0)
        .unwrap();
    assert_sense(&r, 4, 0x44, 0x00);
    // The drive came back: power-on unit attention, then it works; what was
    // acknowledged is there, the torn block is not.
    let r = i.command(DRIVE0, &tur(), &[], 0).unwrap();
    assert_sense(&r, 6, 0x29, 0x01);
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(4096, false, true), &[], 4096)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data, block(0, 512));
    let r = i
        .command(DRIVE0, &read6(4096, false, true), &[], 4096)
        .unwrap();
    assert_sense(&r, 8, 0x00, 0x05);
    assert_good(
        &i.command(DRIVE0, &write6(256, false), &block(2, 256), 0)
            .unwrap(),
    );
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    assert_good(&i.command(DRIVE0, &space6(0, 1), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(256, false, false), &[], 256)
        .unwrap();
    assert_eq!(r.data, block(2, 256));
}
