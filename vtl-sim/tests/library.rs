//! Library (changer) behaviour: elements, barcodes, mail slots, cleaning cartridges,
//! drives following the changer, and locks across processes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use vtl_sim::{Element, ElementKind, Library, LibraryConfig, Read, VtlError};

fn cfg() -> LibraryConfig {
    LibraryConfig {
        slots: 4,
        drives: 2,
        mail_slots: 2,
        cartridges: 3,
        capacity: 1 << 20,
        early_warning: 64 << 20,
    }
}
fn slot(i: usize) -> Element {
    Element {
        kind: ElementKind::Slot,
        index: i,
    }
}
fn drive(i: usize) -> Element {
    Element {
        kind: ElementKind::Drive,
        index: i,
    }
}
fn mail(i: usize) -> Element {
    Element {
        kind: ElementKind::MailSlot,
        index: i,
    }
}

#[test]
fn create_open_and_barcodes() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(!Library::exists(tmp.path()));
    assert!(matches!(
        Library::open(tmp.path()),
        Err(VtlError::NoLibrary { .. })
    ));
    let lib = Library::create(tmp.path(), &cfg()).unwrap();
    assert!(matches!(
        Library::create(tmp.path(), &cfg()),
        Err(VtlError::LibraryExists { .. })
    ));
    let st = lib.state().unwrap();
    assert_eq!(
        st.slots,
        vec![
            Some("TV0001L9".into()),
            Some("TV0002L9".into()),
            Some("TV0003L9".into()),
            None
        ]
    );
    let carts = lib.cartridges().unwrap();
    assert_eq!(carts.len(), 3);
    // Early warning is clamped to an eighth of a tiny cartridge.
    assert_eq!(carts[0].meta.early_warning, (1 << 20) / 8);
    let added = lib.add_cartridges(2, Some(4096), false).unwrap();
    assert_eq!(added, vec!["TV0004L9".to_string(), "TV0005L9".to_string()]);
    let st = Library::open(tmp.path()).unwrap().state().unwrap();
    assert_eq!(st.slots[3].as_deref(), Some("TV0004L9"));
    assert_eq!(st.mail_slots[0].as_deref(), Some("TV0005L9"));
    // 1 mail slot left: 2 more do not fit, and nothing is added.
    assert!(matches!(
        lib.add_cartridges(2, None, false),
        Err(VtlError::NoFreeElement { .. })
    ));
    assert_eq!(lib.cartridges().unwrap().len(), 5);
}

#[test]
fn moves_remember_source_and_refuse_bad_elements() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), &cfg()).unwrap();
    lib.move_medium(slot(1), drive(0)).unwrap();
    let st = lib.state().unwrap();
    assert_eq!(st.drives[0].barcode.as_deref(), Some("TV0002L9"));
    assert_eq!(st.drives[0].source, Some(slot(1)));
    assert!(matches!(
        lib.move_medium(slot(1), drive(1)),
        Err(VtlError::SourceEmpty { .. })
    ));
    assert!(matches!(
        lib.move_medium(slot(0), drive(0)),
        Err(VtlError::DestinationFull { .. })
    ));
    assert!(matches!(
        lib.move_medium(slot(0), slot(9)),
        Err(VtlError::NoSuchElement { .. })
    ));
    lib.move_medium(drive(0), drive(1)).unwrap();
    assert_eq!(lib.state().unwrap().drives[1].source, Some(slot(1)));
    lib.move_medium(drive(1), slot(3)).unwrap();
    let carts = lib.cartridges().unwrap();
    let c = carts.iter().find(|c| c.meta.barcode == "TV0002L9").unwrap();
    assert_eq!(c.location, Some(slot(3)));
    assert_eq!(c.meta.load_count, 2);
}

#[test]
fn mail_slot_export_remove_and_insert() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), &cfg()).unwrap();
    assert!(matches!(
        lib.remove_from_mail_slot("TV0001L9"),
        Err(VtlError::NotInMailSlot { .. })
    ));
    lib.move_medium(slot(0), mail(1)).unwrap();
    lib.remove_from_mail_slot("TV0001L9").unwrap();
    assert!(tmp.path().join("outside/TV0001L9/data").is_file());
    assert!(!tmp.path().join("cartridges/TV0001L9").exists());
    let carts = lib.cartridges().unwrap();
    assert_eq!(
        carts
            .iter()
            .find(|c| c.meta.barcode == "TV0001L9")
            .unwrap()
            .location,
        None
    );
    assert!(lib.state().unwrap().find("TV0001L9").is_none());
    assert!(matches!(
        lib.load("TV0001L9", 0),
        Err(VtlError::NotInLibrary { .. })
    ));
    assert_eq!(lib.insert_into_mail_slot("TV0001L9").unwrap(), mail(0));
    assert!(matches!(
        lib.insert_into_mail_slot("TV0001L9"),
        Err(VtlError::NotOutside { .. })
    ));
    lib.load("TV0001L9", 0).unwrap();
}

#[test]
fn cleaning_cartridge_is_refused_for_data() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), &cfg()).unwrap();
    let cln = lib.add_cleaning_cartridge().unwrap();
    assert!(cln.starts_with("CLN"));
    assert!(matches!(
        lib.load(&cln, 0),
        Err(VtlError::CleaningCartridge { .. })
    ));
    // Moved in by element (as for cleaning), the drive refuses data operations.
    let from = lib.state().unwrap().find(&cln).unwrap();
    lib.move_medium(from, drive(0)).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    assert!(matches!(
        d.write_block(b"x"),
        Err(VtlError::CleaningCartridge { .. })
    ));
}

#[test]
fn open_drive_follows_loads_and_unloads() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), &cfg()).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    assert!(matches!(
        d.write_block(b"x"),
        Err(VtlError::NoMedium { .. })
    ));
    assert!(d.status().unwrap().is_none());
    lib.load("TV0001L9", 0).unwrap();
    d.write_block(b"first").unwrap();
    d.write_filemarks(1, false).unwrap();
    lib.move_medium(drive(0), slot(0)).unwrap();
    assert!(matches!(
        d.read_block(&mut [0u8; 8]),
        Err(VtlError::NoMedium { .. })
    ));
    lib.load("TV0002L9", 0).unwrap();
    assert_eq!(d.barcode().unwrap().as_deref(), Some("TV0002L9"));
    assert_eq!(d.read_block(&mut [0u8; 8]).unwrap(), Read::EndOfData);
    lib.move_medium(drive(0), slot(1)).unwrap();
    lib.load("TV0001L9", 0).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(d.read_block(&mut buf).unwrap(), Read::Block(5));
    assert_eq!(&buf[..5], b"first");
    // MTOFFL: the drive is empty for data until the changer reloads it.
    d.unload().unwrap();
    assert!(matches!(d.rewind(), Err(VtlError::NoMedium { .. })));
    let c = lib
        .cartridges()
        .unwrap()
        .into_iter()
        .find(|c| c.meta.barcode == "TV0001L9")
        .unwrap();
    assert_eq!(c.meta.bytes_written, 5);
    assert_eq!(c.meta.bytes_read, 5);
    assert_eq!(c.meta.load_count, 2);
    assert!(c.meta.last_written.is_some());
    // A drive cannot be opened twice.
    assert!(matches!(lib.open_drive(0), Err(VtlError::Busy { .. })));
}

#[test]
fn controls_reach_a_loaded_drive() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), &cfg()).unwrap();
    lib.load("TV0001L9", 1).unwrap();
    let mut d = lib.open_drive(1).unwrap();
    d.write_block(b"abc").unwrap();
    lib.set_write_protect("TV0001L9", true).unwrap();
    assert!(matches!(
        d.write_block(b"abc"),
        Err(VtlError::WriteProtected)
    ));
    assert!(d.status().unwrap().unwrap().write_protected);
    lib.set_write_protect("TV0001L9", false).unwrap();
    d.write_block(b"abc").unwrap();
    lib.set_application_label("TV0001L9", "daily").unwrap();
    let c = lib
        .cartridges()
        .unwrap()
        .into_iter()
        .find(|c| c.meta.barcode == "TV0001L9")
        .unwrap();
    assert_eq!(c.meta.application_label.as_deref(), Some("daily"));
    assert_eq!(c.bytes_used, 6);
}

const HOLDER_ENV: &str = "VTL_SIM_HOLDER_LIB";

/// Child: hold drive 0 until killed.
#[test]
fn drive_holder_child() {
    let Ok(dir) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let lib = Library::open(std::path::Path::new(&dir)).unwrap();
    let _d = lib.open_drive(0).unwrap();
    println!("HELD");
    std::thread::sleep(std::time::Duration::from_secs(120));
}

#[test]
fn drive_held_by_another_process_is_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), &cfg()).unwrap();
    lib.load("TV0001L9", 0).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "drive_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The test harness prints its own lines first; wait for ours.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HELD") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child exited before holding the drive"
        );
    }
    let e = lib.open_drive(0).unwrap_err();
    assert!(
        matches!(e, VtlError::Busy { element, .. } if element == drive(0)),
        "{e}"
    );
    assert!(e.to_string().contains(&child.id().to_string()), "{e}");
    let e = lib.move_medium(drive(0), slot(0)).unwrap_err();
    assert!(
        matches!(e, VtlError::Busy { element, .. } if element == drive(0)),
        "{e}"
    );
    // Loading into the other drive still works.
    lib.load("TV0002L9", 1).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The lock died with the process.
    lib.move_medium(drive(0), slot(0)).unwrap();
    let _d = lib.open_drive(0).unwrap();
}

#[test]
fn concurrent_state_changes_are_serialized() {
    let tmp = tempfile::tempdir().unwrap();
    let c = LibraryConfig {
        slots: 20,
        drives: 1,
        mail_slots: 0,
        cartridges: 0,
        capacity: 4096,
        early_warning: 512,
    };
    Library::create(tmp.path(), &c).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let dir = tmp.path().to_path_buf();
            std::thread::spawn(move || {
                let lib = Library::open(&dir).unwrap();
                (0..3)
                    .flat_map(|_| lib.add_cartridges(1, None, false).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 12, "barcodes were handed out twice: {all:?}");
    let lib = Library::open(tmp.path()).unwrap();
    let st = lib.state().unwrap();
    assert_eq!(st.slots.iter().filter(|s| s.is_some()).count(), 12);
    assert_eq!(lib.cartridges().unwrap().len(), 12);
}

#[test]
fn erase_cuts_the_tape_here_and_reload_brings_an_ejected_cartridge_back_at_bot() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), &cfg()).unwrap();
    lib.load("TV0001L9", 0).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    for b in [b"one", b"two", b"six"] {
        d.write_block(b).unwrap();
    }
    d.write_filemarks(1, false).unwrap();
    d.locate(1).unwrap();
    d.erase().unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(d.read_block(&mut buf).unwrap(), Read::EndOfData);
    d.rewind().unwrap();
    assert_eq!(d.read_block(&mut buf).unwrap(), Read::Block(3));
    assert_eq!(d.read_block(&mut buf).unwrap(), Read::EndOfData);
    // Ejected: no medium for data until reloaded; reloaded at the beginning.
    d.unload().unwrap();
    assert!(matches!(
        d.read_block(&mut buf),
        Err(VtlError::NoMedium { .. })
    ));
    d.reload().unwrap();
    assert_eq!(d.position().unwrap().block, 0);
    assert_eq!(d.read_block(&mut buf).unwrap(), Read::Block(3));
    // An empty drive cannot reload anything.
    let mut e = lib.open_drive(1).unwrap();
    assert!(matches!(e.reload(), Err(VtlError::NoMedium { .. })));
    // Write protected: erase refused.
    drop(d);
    lib.set_write_protect("TV0001L9", true).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    assert!(matches!(d.erase(), Err(VtlError::WriteProtected)));
}
