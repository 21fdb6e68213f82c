//! One lock shared between the target and in-process users of the library: the target
//! takes a drive's vtl-sim lock only while initiators use the drive, a drive held by
//! another user answers RESERVATION CONFLICT, and the cartridges pass between the two.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vtl_sim::{Read, VtlError};

const MIB: u64 = 1 << 20;

/// Wait until the drive can be opened in-process (the target let it go); a generous
/// bound so a slow machine never fails the test, while a target that keeps the drive
/// for good does.
fn open_when_free(s: &Served, drive: usize) -> vtl_sim::Drive {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match s.lib.open_drive(drive) {
            Ok(d) => return d,
            Err(VtlError::Busy { .. }) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("drive {drive} never released by the target: {e}"),
        }
    }
}

fn prevent(on: bool) -> Vec<u8> {
    vec![0x1e, 0, 0, 0, on as u8, 0]
}

#[test]
fn a_drive_held_by_another_user_answers_reservation_conflict() {
    let s = Served::new(8 * MIB, 0);
    // Serving takes no drive: an in-process user (a tapevault job) has drive 0.
    let mut held = s.lib.open_drive(0).unwrap();
    let mut i = s.login(1);
    // Identification still works.
    let r = i.command(DRIVE0, &inquiry(false, 0, 36), &[], 36).unwrap();
    assert_good(&r);
    assert_eq!(r.data[0], 0x01);
    // Anything that needs the drive is refused as another host's reservation would be.
    for cdb in [tur(), rewind(), read_position(0), write6(4, false)] {
        let out: &[u8] = if cdb[0] == 0x0a { &[0; 4] } else { &[] };
        let r = i.command(DRIVE0, &cdb, out, 0).unwrap();
        assert_eq!(r.status, 0x18, "RESERVATION CONFLICT for {cdb:02x?}: {r:?}");
    }
    // The other drive is free.
    assert_eq!(
        settle(&mut i, DRIVE1).status,
        2,
        "drive 1 is empty: NOT READY"
    );
    // The in-process user loads a cartridge and writes (vtl-sim directly, as tapevault's
    // virtual library does).
    s.lib
        .move_medium(
            vtl_sim::Element {
                kind: vtl_sim::ElementKind::Slot,
                index: 0,
            },
            vtl_sim::Element {
                kind: vtl_sim::ElementKind::Drive,
                index: 0,
            },
        )
        .unwrap();
    held.rewind().unwrap();
    held.write_block(b"written in-process").unwrap();
    held.write_filemarks(1, false).unwrap();
    // Once the in-process user lets go, the target takes the drive and sees its work.
    drop(held);
    let r = settle(&mut i, DRIVE0);
    assert_good(&r);
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(4096, false, true), &[], 4096)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data, b"written in-process");
    // Now the target holds it: the in-process user is told the drive is busy.
    match s.lib.open_drive(0) {
        Err(VtlError::Busy { .. }) => {}
        other => panic!("expected the drive busy while the target uses it, got {other:?}"),
    }
    assert_eq!(i.logout().unwrap(), 0);
    // Logging out lets the drive go.
    drop(open_when_free(&s, 0));
}

#[test]
fn the_target_keeps_a_drive_while_prevented_and_lets_it_go_when_idle() {
    let s = Served::new(8 * MIB, 0);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    let data = block(7, 3000);
    assert_good(&i.command(DRIVE0, &write6(3000, false), &data, 0).unwrap());
    assert_good(&i.command(DRIVE0, &write_filemarks(1), &[], 0).unwrap());
    // PREVENT MEDIUM REMOVAL (st sends it while the device is open): the drive stays
    // the target's however long the initiator is idle.
    assert_good(&i.command(DRIVE0, &prevent(true), &[], 0).unwrap());
    std::thread::sleep(iscsi_target::ssc::IDLE_RELEASE * 2);
    match s.lib.open_drive(0) {
        Err(VtlError::Busy { .. }) => {}
        other => panic!("a prevented drive must stay held, got {other:?}"),
    }
    // ALLOW: once idle, the drive is released while the session stays logged in.
    assert_good(&i.command(DRIVE0, &prevent(false), &[], 0).unwrap());
    let mut d = open_when_free(&s, 0);
    // In-process: the block written through the target is there, and the position the
    // target left is kept (after the filemark).
    assert_eq!(d.position().unwrap().block, 2);
    d.write_block(b"appended in-process").unwrap();
    d.flush().unwrap();
    d.locate(0).unwrap();
    let mut buf = vec![0u8; 8192];
    assert_eq!(d.read_block(&mut buf).unwrap(), Read::Block(3000));
    assert_eq!(&buf[..3000], &data[..]);
    drop(d);
    // The same session goes on, and reads what the in-process user appended.
    let r = i.command(DRIVE0, &read_position(0), &[], 20).unwrap();
    assert_good(&r);
    assert_good(&i.command(DRIVE0, &locate10(2), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(8192, false, true), &[], 8192)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.data, b"appended in-process");
    // RESERVE(6) keeps it too, until RELEASE.
    assert_good(&i.command(DRIVE0, &[0x16, 0, 0, 0, 0, 0], &[], 0).unwrap());
    std::thread::sleep(iscsi_target::ssc::IDLE_RELEASE * 2);
    assert!(matches!(s.lib.open_drive(0), Err(VtlError::Busy { .. })));
    assert_good(&i.command(DRIVE0, &[0x17, 0, 0, 0, 0, 0], &[], 0).unwrap());
    drop(open_when_free(&s, 0));
    assert_eq!(i.logout().unwrap(), 0);
}
