//! The rebuild reads a cartridge in a standalone drive (no changer): the library-level
//! API behind `catalog rebuild --device`, driven here with a virtual drive.

mod dr_support;

use dr_support::*;
use tape_devices::drive::r#virtual::VirtualDrive;
use tapevault::catalog::Catalog;
use tapevault::error::Error;
use tapevault::events::{Recorded, Silent};
use tapevault::home::Home;
use tapevault::rebuild::{self, InDrive, KeySource, RebuildOptions};

#[test]
fn cartridge_in_a_standalone_drive_rebuilds_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lib = root.join("lib");
    let home = root.join("home");
    new_home(&home, &lib, "16M", 2, Some("p"));
    let d = root.join("d.img");
    make_disk(&d, 3, 31);
    let id = "dddddddd-0000-4000-8000-000000000001";
    backup_disk(&home, &d, id, "p");
    touch_disk(&d, 32);
    backup_disk(&home, &d, id, "p");
    let orig = images(&home);
    ok(&home, &["library", "load", "TV0001L9", "--drive", "0"]);

    for scan_all in [false, true] {
        let fresh = root.join(format!("fresh-{scan_all}"));
        home_on_library(&fresh, &lib);
        let h = Home::open(&fresh).unwrap();
        let cat = Catalog::open(&fresh).unwrap();
        let mut drive = VirtualDrive::open(&lib, 0).unwrap();
        let mut no_pass = |_: &str| -> tapevault::error::Result<String> {
            Err(Error::Key("no passphrase in this test".into()))
        };
        let mut keys = KeySource::new(&h, &mut no_pass);
        let mut carts = InDrive::new(&mut drive).unwrap();
        assert_eq!(carts.barcode, "TV0001L9");
        let opts = RebuildOptions {
            barcodes: vec![carts.barcode.clone()],
            scan: scan_all,
        };
        let said = Recorded::default();
        let rep = rebuild::rebuild(&cat, &mut carts, &opts, &mut keys, &said).unwrap();
        let want = if scan_all {
            rebuild::Method::Scan
        } else {
            rebuild::Method::Snapshot
        };
        assert_eq!(rep.cartridges[0].method, want, "{:?}", said.lines());
        assert!(rep.damage.is_empty() && rep.problems.is_empty(), "{rep:?}");
        // Another barcode cannot be read from this drive: exit 4.
        let e = rebuild::rebuild(
            &cat,
            &mut carts,
            &RebuildOptions {
                barcodes: vec!["TV0002L9".into()],
                scan: false,
            },
            &mut keys,
            &Silent,
        )
        .unwrap_err();
        assert_eq!(e.exit_code() as i32, 4, "{e}");
        drop(carts);
        drop(drive);
        drop(cat);
        assert_eq!(
            assert_same_restore_points(&orig, &images(&fresh), !scan_all),
            2
        );
    }
}
