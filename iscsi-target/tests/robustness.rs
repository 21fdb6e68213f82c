//! Robustness of the target under misbehaving hosts and failing cartridges: a second
//! initiator on a drive another one has reserved, a power cut in one cartridge while the
//! other drive streams. (A dropped connection mid-command is in protocol.rs, a killed
//! initiator process in the workspace's tests/library_serve.rs.) Each ends by reading
//! the cartridges in-process: nothing torn, what was acknowledged is there.

mod common;

use common::*;
use iscsi_target::initiator::Initiator;
use vtl_sim::{Library, Read};

const MIB: u64 = 1 << 20;
const SECOND_HOST: &str = "iqn.2025-01.org.tapevault:second-host";
const RESERVATION_CONFLICT: u8 = 0x18;

fn reserve6() -> Vec<u8> {
    vec![0x16, 0, 0, 0, 0, 0]
}
fn release6() -> Vec<u8> {
    vec![0x17, 0, 0, 0, 0, 0]
}

/// Every object of drive `index`'s cartridge from BOT, in-process.
fn objects(lib: &Library, index: usize) -> Vec<Option<Vec<u8>>> {
    let mut d = lib.open_drive(index).unwrap();
    d.rewind().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    loop {
        match d.read_block(&mut buf).unwrap() {
            Read::Block(n) => out.push(Some(buf[..n].to_vec())),
            Read::Filemark => out.push(None),
            Read::EndOfData => return out,
        }
    }
}

#[test]
fn a_second_initiator_on_a_reserved_drive_gets_conflict_and_nothing_interleaves() {
    let mut s = Served::new(64 * MIB, MIB);
    let mut a = s.login(1);
    let mut b =
        Initiator::login(s.addr, SECOND_HOST, Some(&s.name), [0x80, 0, 0, 0, 0, 2]).unwrap();
    load(&mut a, 0, 0);
    assert_good(&settle(&mut a, DRIVE0));
    assert_good(&settle(&mut b, DRIVE0));
    assert_good(&a.command(DRIVE0, &reserve6(), &[], 0).unwrap());
    assert_good(&a.command(DRIVE0, &rewind(), &[], 0).unwrap());
    // A streams; between each of its writes B tries everything that would move the
    // tape or put its data between A's blocks.
    let intruder = block(999, 4096);
    for k in 0..10 {
        assert_good(
            &a.command(DRIVE0, &write6(4096, false), &block(k, 4096), 0)
                .unwrap(),
        );
        let tries: [(&str, Vec<u8>, &[u8], u32); 7] = [
            ("WRITE", write6(4096, false), &intruder, 0),
            ("WRITE FILEMARKS", write_filemarks(1), &[], 0),
            ("REWIND", rewind(), &[], 0),
            ("READ", read6(4096, false, false), &[], 4096),
            ("LOCATE(16)", locate16(0, 0), &[], 0),
            ("SPACE", space6(1, -1), &[], 0),
            ("RESERVE", reserve6(), &[], 0),
        ];
        for (what, cdb, data, len) in tries {
            let r = b.command(DRIVE0, &cdb, data, len).unwrap();
            assert_eq!(
                r.status, RESERVATION_CONFLICT,
                "{what} from the second host during A's block {k}: {r:?}"
            );
        }
        // What does not touch the medium still answers.
        assert_good(&b.command(DRIVE0, &inquiry(false, 0, 96), &[], 96).unwrap());
    }
    assert_good(&a.command(DRIVE0, &write_filemarks(1), &[], 0).unwrap());
    // A's position was never moved by B: READ POSITION says 11 objects.
    let r = a.command(DRIVE0, &read_position(0), &[], 20).unwrap();
    assert_good(&r);
    assert_eq!(u32::from_be_bytes(r.data[4..8].try_into().unwrap()), 11);
    assert_good(&a.command(DRIVE0, &release6(), &[], 0).unwrap());

    // Released: B reads A's file, whole and in order, and may now write.
    assert_good(&settle(&mut b, DRIVE0));
    assert_good(&b.command(DRIVE0, &rewind(), &[], 0).unwrap());
    for k in 0..10 {
        let r = b
            .command(DRIVE0, &read6(8192, false, true), &[], 8192)
            .unwrap();
        assert_good(&r);
        assert_eq!(r.data, block(k, 4096), "block {k}");
    }
    let r = b
        .command(DRIVE0, &read6(8192, false, true), &[], 8192)
        .unwrap();
    assert_sense(&r, 0, 0x00, 0x01);

    // A reservation dies with its holder's session: B is not locked out forever.
    assert_good(&a.command(DRIVE0, &reserve6(), &[], 0).unwrap());
    assert_eq!(
        b.command(DRIVE0, &tur(), &[], 0).unwrap().status,
        RESERVATION_CONFLICT
    );
    a.drop_connection();
    let mut freed = false;
    for _ in 0..200 {
        let r = b.command(DRIVE0, &tur(), &[], 0).unwrap();
        if r.status != RESERVATION_CONFLICT {
            freed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(freed, "the dead session's reservation was never dropped");
    assert_good(&settle(&mut b, DRIVE0));
    assert_good(&b.command(DRIVE0, &space6(3, 0), &[], 0).unwrap());
    assert_good(
        &b.command(DRIVE0, &write6(512, false), &block(50, 512), 0)
            .unwrap(),
    );
    s.shutdown();

    let lib = Library::open(s.dir.path()).unwrap();
    let got = objects(&lib, 0);
    let mut want: Vec<Option<Vec<u8>>> = (0..10).map(|k| Some(block(k, 4096))).collect();
    want.push(None);
    want.push(Some(block(50, 512)));
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the cartridge is not A's file then B's block");
}

#[test]
fn a_power_cut_in_one_cartridge_leaves_the_other_drive_serving() {
    let mut s = Served::new(64 * MIB, MIB);
    let mut a = s.login(1);
    let mut b = s.login(2);
    load(&mut a, 0, 0);
    load(&mut a, 1, 1);
    assert_good(&settle(&mut a, DRIVE0));
    assert_good(&settle(&mut b, DRIVE1));
    let bc = s.lib.state().unwrap().drives[0].barcode.clone().unwrap();
    // The cut hits the drive-0 cartridge's third 4 KiB block.
    s.lib
        .set_faults(
            &bc,
            &vtl_sim::Faults {
                power_cut_after_bytes: Some(10_000),
                ..Default::default()
            },
        )
        .unwrap();
    let mut acked0 = 0;
    let mut cut = false;
    for k in 0..8u32 {
        // Drive 1 streams throughout, from its own session.
        assert_good(
            &b.command(DRIVE1, &write6(4096, false), &block(100 + k, 4096), 0)
                .unwrap(),
        );
        if cut {
            continue;
        }
        let r = a
            .command(DRIVE0, &write6(4096, false), &block(k, 4096), 0)
            .unwrap();
        if r.status == 0 {
            acked0 += 1;
        } else {
            assert_sense(&r, 4, 0x44, 0x00);
            cut = true;
        }
    }
    assert!(cut, "the power cut never happened");
    assert_eq!(acked0, 2, "two blocks fit before the cut");
    assert_good(&b.command(DRIVE1, &write_filemarks(1), &[], 0).unwrap());
    // Drive 0 came back after its power cut: power-on unit attention, then it serves.
    let r = a.command(DRIVE0, &tur(), &[], 0).unwrap();
    assert_sense(&r, 6, 0x29, 0x01);
    assert_good(&settle(&mut a, DRIVE0));
    // Drive 1 reads back everything it wrote while drive 0 was down.
    assert_good(&b.command(DRIVE1, &rewind(), &[], 0).unwrap());
    for k in 0..8u32 {
        let r = b
            .command(DRIVE1, &read6(8192, false, true), &[], 8192)
            .unwrap();
        assert_good(&r);
        assert_eq!(r.data, block(100 + k, 4096), "drive 1 block {k}");
    }
    s.shutdown();

    // In-process, both cartridges open consistent: drive 0 holds exactly what was
    // acknowledged (no torn third block), drive 1 its eight blocks and the filemark.
    let lib = Library::open(s.dir.path()).unwrap();
    let got0 = objects(&lib, 0);
    let want0: Vec<Option<Vec<u8>>> = (0..acked0).map(|k| Some(block(k, 4096))).collect();
    assert!(
        got0 == want0,
        "drive 0: {} objects, want {}",
        got0.len(),
        want0.len()
    );
    let got1 = objects(&lib, 1);
    let mut want1: Vec<Option<Vec<u8>>> = (0..8).map(|k| Some(block(100 + k, 4096))).collect();
    want1.push(None);
    assert!(got1 == want1, "drive 1: {} objects", got1.len());
}
