//! The virtual library through tapevault's Changer / TapeLibrary / TapeDrive traits.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tape_devices::changer::r#virtual::{VirtualLibrary, VirtualLibraryConfig};
use tape_devices::changer::{Changer, ChangerError, ElementKind, ElementRef, TapeLibrary};
use tape_devices::drive::{DriveError, ReadOutcome, SpaceStop, TapeDrive, WriteOutcome};

fn small() -> VirtualLibraryConfig {
    VirtualLibraryConfig {
        slots: 6,
        drives: 2,
        mail_slots: 2,
        cartridges: 4,
        capacity: 1 << 20,
        early_warning: 64 << 20,
    }
}

#[test]
fn default_config_matches_the_documented_shape() {
    let c = VirtualLibraryConfig::default();
    assert_eq!(
        (c.slots, c.drives, c.mail_slots, c.cartridges),
        (16, 2, 4, 16)
    );
    assert_eq!(c.capacity, 4 << 30);
    assert_eq!(c.early_warning, 64 << 20);
}

#[test]
fn create_open_exists_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(!VirtualLibrary::exists(tmp.path()));
    let e = VirtualLibrary::open(tmp.path()).unwrap_err();
    assert!(e.to_string().contains("no virtual tape library"), "{e}");
    let lib = VirtualLibrary::create(tmp.path(), &small()).unwrap();
    assert!(VirtualLibrary::exists(tmp.path()));
    assert!(VirtualLibrary::create(tmp.path(), &small()).is_err());
    assert_eq!(lib.config(), small());
    let lib = VirtualLibrary::open(tmp.path()).unwrap();
    let carts = lib.cartridges().unwrap();
    assert_eq!(
        carts.iter().map(|c| c.barcode.as_str()).collect::<Vec<_>>(),
        ["TV0001L9", "TV0002L9", "TV0003L9", "TV0004L9"]
    );
    assert_eq!(carts[0].location, Some(ElementRef::slot(0)));
    assert_eq!(carts[0].capacity, 1 << 20);
}

#[test]
fn inventory_load_unload_export_import() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = VirtualLibrary::create(tmp.path(), &small()).unwrap();
    lib.load("TV0003L9", 1).unwrap();
    let inv = lib.inventory().unwrap();
    assert_eq!(inv.drives[1].barcode.as_deref(), Some("TV0003L9"));
    assert_eq!(inv.drives[1].source, Some(ElementRef::slot(2)));
    assert!(inv.slots[2].barcode.is_none());
    // Loading another cartridge into the full drive sends the first home.
    lib.load("TV0001L9", 1).unwrap();
    let inv = lib.inventory().unwrap();
    assert_eq!(inv.slots[2].barcode.as_deref(), Some("TV0003L9"));
    assert_eq!(lib.unload(1).unwrap(), Some(ElementRef::slot(0)));
    let m = lib.export("TV0002L9").unwrap();
    assert_eq!(m.kind, ElementKind::MailSlot);
    lib.remove_from_mail_slot("TV0002L9").unwrap();
    let c = lib
        .cartridges()
        .unwrap()
        .into_iter()
        .find(|c| c.barcode == "TV0002L9")
        .unwrap();
    assert_eq!(c.location, None);
    assert!(matches!(
        lib.load("TV0002L9", 0),
        Err(ChangerError::NotInLibrary { .. })
    ));
    assert_eq!(
        lib.insert_into_mail_slot("TV0002L9").unwrap(),
        ElementRef::mail_slot(0)
    );
    assert_eq!(lib.import().unwrap(), vec!["TV0002L9".to_string()]);
    let added = lib.add_cartridges(2, Some(4096)).unwrap();
    assert_eq!(added, vec!["TV0005L9".to_string(), "TV0006L9".to_string()]);
    assert_eq!(
        lib.cartridges()
            .unwrap()
            .iter()
            .find(|c| c.barcode == "TV0006L9")
            .unwrap()
            .capacity,
        4096
    );
    // Slots are now full (6): the next two go to the mail slots, a third has no room.
    lib.add_cartridges(2, None).unwrap();
    assert!(matches!(
        lib.add_cartridges(1, None),
        Err(ChangerError::NoFreeElement { .. })
    ));
}

#[test]
fn cleaning_cartridge_cannot_be_loaded_for_data() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = VirtualLibrary::create(tmp.path(), &small()).unwrap();
    let cln = lib.add_cleaning_cartridge().unwrap();
    assert!(matches!(
        lib.load(&cln, 0),
        Err(ChangerError::CleaningCartridge { .. })
    ));
}

#[test]
fn statistics_label_and_protection_show_in_cartridge_info() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = VirtualLibrary::create(tmp.path(), &small()).unwrap();
    lib.set_application_label("TV0001L9", "weekly").unwrap();
    lib.load("TV0001L9", 0).unwrap();
    {
        let mut d = lib.open_drive(0).unwrap();
        assert_eq!(d.write_block(&[1u8; 1000]).unwrap(), WriteOutcome::Written);
        d.write_filemarks(1, false).unwrap();
        d.rewind().unwrap();
        let mut buf = vec![0u8; 2000];
        assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Block(1000));
        let st = d.status().unwrap();
        assert!(st.loaded);
        assert_eq!(st.barcode.as_deref(), Some("TV0001L9"));
    }
    lib.set_write_protect("TV0001L9", true).unwrap();
    let c = lib
        .cartridges()
        .unwrap()
        .into_iter()
        .find(|c| c.barcode == "TV0001L9")
        .unwrap();
    assert_eq!(c.application_label.as_deref(), Some("weekly"));
    assert_eq!(
        (c.bytes_used, c.bytes_written, c.bytes_read, c.load_count),
        (1000, 1000, 1000, 1)
    );
    assert!(c.write_protected);
    let lw = c.last_written.clone().expect("last written time");
    assert!(chrono::DateTime::parse_from_rfc3339(&lw).is_ok(), "{lw}");
    let mut d = lib.open_drive(0).unwrap();
    assert!(matches!(
        d.write_block(b"x"),
        Err(DriveError::WriteProtected)
    ));
    assert!(d.status().unwrap().write_protected);
    assert!(serde_json::to_string(&c)
        .unwrap()
        .contains("\"barcode\":\"TV0001L9\""));
}

#[test]
fn drive_opened_empty_sees_a_later_load() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = VirtualLibrary::create(tmp.path(), &small()).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    assert!(matches!(d.rewind(), Err(DriveError::NoMedium { .. })));
    assert!(!d.status().unwrap().loaded);
    // Another handle on the same library (as another process would have).
    let mut other = VirtualLibrary::open(tmp.path()).unwrap();
    other.load("TV0002L9", 0).unwrap();
    d.write_block(b"hello").unwrap();
    assert_eq!(d.position().unwrap().block, 1);
    // A job changing volumes while holding the drive.
    lib.unload(0).unwrap();
    assert!(matches!(
        d.read_block(&mut [0u8; 8]),
        Err(DriveError::NoMedium { .. })
    ));
    lib.load("TV0002L9", 0).unwrap();
    assert_eq!(d.read_block(&mut [0u8; 8]).unwrap(), ReadOutcome::Block(5));
    assert!(matches!(lib.open_drive(0), Err(ChangerError::Busy { .. })));
}

#[test]
fn faults_reach_the_drive_as_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = VirtualLibrary::create(tmp.path(), &small()).unwrap();
    lib.load("TV0001L9", 0).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    for i in 0..4u8 {
        d.write_block(&[i; 100]).unwrap();
    }
    lib.set_faults(
        "TV0001L9",
        vtl_sim::Faults {
            media_error_blocks: vec![1],
            ..Default::default()
        },
    )
    .unwrap();
    d.rewind().unwrap();
    let mut buf = [0u8; 100];
    d.read_block(&mut buf).unwrap();
    assert!(matches!(
        d.read_block(&mut buf),
        Err(DriveError::MediaError { block: 1, .. })
    ));
    d.space_blocks(1).unwrap();
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Block(100));
    assert_eq!(buf[0], 2);
    let r = d.space_blocks(5);
    assert!(
        matches!(
            r,
            Err(DriveError::SpaceStopped {
                stop: SpaceStop::EndOfData,
                residual: 4,
                ..
            })
        ),
        "{r:?}"
    );

    lib.set_faults(
        "TV0001L9",
        vtl_sim::Faults {
            hang: Some(vtl_sim::Hang {
                op: vtl_sim::FaultOp::Locate,
                millis: 600_000,
                times: 1,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    drop(d);
    let mut d = tape_devices::drive::r#virtual::VirtualDrive::open(tmp.path(), 0).unwrap();
    d.set_operation_timeout(Duration::from_millis(50));
    // The new holder finds the tape where the previous one left it (end of data).
    let before = d.position().unwrap().block;
    assert_eq!(before, 4);
    assert!(matches!(d.locate(2), Err(DriveError::Timeout { .. })));
    // A timed-out locate leaves the position where it was.
    assert_eq!(d.position().unwrap().block, before);
    d.locate(2).unwrap();

    lib.set_faults(
        "TV0001L9",
        vtl_sim::Faults {
            power_cut_after_bytes: Some(50),
            ..Default::default()
        },
    )
    .unwrap();
    d.space_to_eod().unwrap();
    assert!(matches!(
        d.write_block(&[9u8; 100]),
        Err(DriveError::Io { .. })
    ));
    d.space_to_eod().unwrap();
    assert_eq!(d.position().unwrap().block, 4);
}

const HOLDER_ENV: &str = "TAPEVAULT_VTL_TEST_HOLDER";

#[test]
fn holder_child() {
    let Ok(dir) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let mut lib = VirtualLibrary::open(std::path::Path::new(&dir)).unwrap();
    let _d = lib.open_drive(0).unwrap();
    println!("HELD");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn cartridge_in_a_drive_another_process_holds_is_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = VirtualLibrary::create(tmp.path(), &small()).unwrap();
    lib.load("TV0001L9", 0).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "holder_child", "--nocapture", "--test-threads=1"])
        .env(HOLDER_ENV, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HELD") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child exited before holding the drive"
        );
    }
    let e = lib.unload(0).unwrap_err();
    assert!(
        matches!(e, ChangerError::Busy { element, .. } if element == ElementRef::drive(0)),
        "{e}"
    );
    assert!(e.to_string().contains("drive 0"), "{e}");
    assert!(matches!(lib.open_drive(0), Err(ChangerError::Busy { .. })));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lib.unload(0).unwrap(), Some(ElementRef::slot(0)));
}

#[test]
fn early_warning_contract_through_the_trait() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = VirtualLibraryConfig {
        capacity: 80_000,
        early_warning: 1 << 30,
        ..small()
    };
    let mut lib = VirtualLibrary::create(tmp.path(), &cfg).unwrap();
    lib.load("TV0001L9", 0).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    // Early warning is clamped to capacity / 8 = 10 000 bytes: zone starts at 70 000.
    let b = [0u8; 10_000];
    for _ in 0..7 {
        assert_eq!(d.write_block(&b).unwrap(), WriteOutcome::Written);
    }
    assert_eq!(
        d.write_block(&b).unwrap(),
        WriteOutcome::WrittenEarlyWarning
    );
    assert!(matches!(d.write_block(&b), Err(DriveError::EarlyWarning)));
    d.write_filemarks(1, false).unwrap();
    assert!(matches!(d.write_block(&b), Err(DriveError::EndOfMedium)));
    d.write_block(&[1u8; 100]).unwrap_err();
    assert!(d.status().unwrap().early_warning);
}

#[test]
fn a_block_written_in_parts_reads_back_whole_clear_and_drive_encrypted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = VirtualLibrary::create(tmp.path(), &small()).unwrap();
    lib.load("TV0001L9", 0).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    let head = [7u8; 129];
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
    let whole = [&head[..], &payload[..]].concat();
    // Clear, then with the drive encrypting (its parts sealed together).
    d.write_block_parts(&[&head, &payload]).unwrap();
    d.set_data_key(Some(&tape_devices::drive::DataKey {
        key: [3; 32],
        kad: [0; 16],
        encrypt: true,
    }))
    .unwrap();
    d.write_block_parts(&[&head, &payload]).unwrap();
    d.write_block_parts(&[&whole]).unwrap();
    d.write_filemarks(1, false).unwrap();
    d.rewind().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..3 {
        match d.read_block(&mut buf).unwrap() {
            ReadOutcome::Block(n) => assert_eq!(&buf[..n], &whole[..]),
            other => panic!("{other:?}"),
        }
    }
}
