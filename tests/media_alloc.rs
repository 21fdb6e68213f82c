//! Allocation when the library is short of cartridges: exit 4 with a message naming
//! what is needed (and which cartridges outside would do); waiting for media when a
//! person can insert it.

mod rotation_support;

use std::collections::HashSet;
use std::time::Duration;

use rotation_support::*;
use tapevault::media::allocate::{pick_or_wait, session_media_set, MediaWait, Pick};

const DISK: &str = "5a1e0000-0000-4000-8000-0000000000a1";

#[test]
fn a_library_without_a_usable_cartridge_fails_with_exit_4_naming_what_is_needed() {
    let tv = Tv::init(3, 1, "1M");
    tv.ok(&[
        "pool",
        "create",
        "p",
        "--allocation",
        "per-session",
        "--compression",
        "off",
    ]);
    // One of the three cartridges is outside the library.
    let bc = "TV0003L9".to_string();
    tv.ok(&["media", "list"]);
    tv.ok(&["library", "export", &bc]);
    tv.ok(&["library", "remove", &bc]);
    let disk = tv.path("d.img");
    write_disk(&disk, 32 << 10, 4);
    let args = [
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        "p",
    ];
    tv.json(&args);
    tv.json(&args);
    // Both cartridges inside hold kept sets (retention forever): nothing left.
    let r = tv.run(&[
        "--json",
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        "p",
    ]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("pool p needs a writable cartridge"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("Insert one into a mail slot"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json()["kind"], "media-needed");
    assert_eq!(r.json()["exit_code"], 4);
    let cat = tv.catalog();
    assert!(cat
        .images(None)
        .unwrap()
        .iter()
        .all(|i| i.status != tapevault::catalog::ImageStatus::Running));
    drop(cat);

    // It comes back, is labelled into the pool as scratch, and goes to a vault: the
    // message names it.
    tv.ok(&["media", "return", &bc]);
    tv.ok(&["label", &bc, "--pool", "p"]);
    tv.ok(&["media", "export", &bc]);
    tv.ok(&["media", "vault", &bc, "--location", "shelf"]);
    let r = tv.run(&args);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("{bc} (vault:shelf)")),
        "{}",
        r.stderr
    );
    // Back in the library, the backup runs on it.
    tv.ok(&["media", "return", &bc]);
    let b = tv.json(&args);
    assert_eq!(b["images"][0]["barcodes"][0], bc.as_str());
}

#[test]
fn a_job_waits_for_a_cartridge_to_be_inserted_then_uses_it() {
    let tv = Tv::init(2, 1, "1M");
    tv.ok(&["pool", "create", "p", "--allocation", "per-session"]);
    // Take both blank cartridges out of the library.
    let bcs: Vec<String> = tv.json(&["media", "list"])["cartridges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["barcode"].as_str().unwrap().to_string())
        .collect();
    for b in &bcs {
        tv.ok(&["library", "export", b]);
        tv.ok(&["library", "remove", b]);
    }
    let cat = tv.catalog();
    let pool = cat.pool("p").unwrap().unwrap();
    let set = session_media_set(&cat, &pool, tv.now).unwrap();
    let mut lib = tv.library();
    // Without waiting: exit 4 at once.
    let said = tapevault::events::Recorded::default();
    let e = pick_or_wait(&cat, &mut lib, &pool, &set, &HashSet::new(), None, &said).unwrap_err();
    assert_eq!(e.exit_code() as i32, 4);
    // Waiting with nobody inserting: exit 4 after the wait, same message.
    let w = MediaWait {
        max: Duration::from_millis(300),
        poll: Duration::from_millis(50),
    };
    let e2 =
        pick_or_wait(&cat, &mut lib, &pool, &set, &HashSet::new(), Some(w), &said).unwrap_err();
    assert_eq!(e2.exit_code() as i32, 4);
    assert!(e2.to_string().starts_with(&e.to_string()), "{e2}");
    assert!(
        said.lines().iter().any(|l| l.contains("Waiting up to")),
        "{:?}",
        said.lines()
    );
    // An operator inserts one while the job waits.
    let home = tv.home();
    let b0 = bcs[0].clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut l = tape_devices::changer::r#virtual::VirtualLibrary::open(
            &tapevault::home::Home::default_library_dir(&home),
        )
        .unwrap();
        l.insert_into_mail_slot(&b0).unwrap();
    });
    let w = MediaWait {
        max: Duration::from_secs(20),
        poll: Duration::from_millis(50),
    };
    let (p, present) = pick_or_wait(
        &cat,
        &mut lib,
        &pool,
        &set,
        &HashSet::new(),
        Some(w),
        &tapevault::events::Silent,
    )
    .unwrap();
    t.join().unwrap();
    assert!(matches!(p, Pick::Join(_)));
    assert_eq!(p.row().barcode, bcs[0]);
    assert!(present.contains(&bcs[0]));
}

#[test]
fn a_worm_pool_writes_only_worm_cartridges() {
    let tv = Tv::init_with(4, 1, "1M", &["--cartridges", "3"]);
    let worm = tv.library().add_worm_cartridges(1, None).unwrap().remove(0);
    tv.ok(&["pool", "create", "w", "--worm", "--compression", "off"]);
    tv.ok(&["pool", "create", "n", "--compression", "off"]);
    let disk = tv.path("d.img");
    write_disk(&disk, 16 << 10, 11);
    let d = disk.to_str().unwrap();
    // The ordinary pool skips the WORM cartridge whatever the allocation order offers.
    let b = tv.json(&["backup", "--disk", d, "--disk-id", DISK, "--pool", "n"]);
    assert_ne!(b["images"][0]["barcodes"][0], worm.as_str());
    let b = tv.json(&[
        "backup",
        "--disk",
        d,
        "--disk-id",
        DISK,
        "--pool",
        "w",
        "--full",
    ]);
    assert_eq!(b["images"][0]["barcodes"][0], worm.as_str(), "{b}");
}

/// Every time the catalog records comes from the job's clock, so a simulated clock
/// (`TAPEVAULT_NOW`, as rotation dry runs and these tests use) sees one consistent
/// history: sessions, media sets, labels and writes, images.
#[test]
fn catalog_times_follow_the_jobs_clock() {
    let mut tv = Tv::init(3, 1, "16M");
    tv.advance(400);
    let t = tv.now;
    tv.ok(&["pool", "create", "p", "--compression", "off"]);
    let disk = tv.path("d.img");
    write_disk(&disk, 1 << 20, 7);
    tv.json(&[
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK,
        "--pool",
        "p",
    ]);
    let cat = tv.catalog();
    let sessions = cat.sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].started, t);
    assert_eq!(sessions[0].finished, Some(t));
    let sets = cat.media_sets(Some("p")).unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!((sets[0].created, sets[0].last_write), (t, Some(t)));
    let bc = cat.media_in_set(sets[0].uuid).unwrap()[0].barcode.clone();
    let m = cat.media(&bc).unwrap().unwrap();
    assert_eq!((m.labelled_at, m.last_written), (Some(t), Some(t)));
    let imgs = cat.images_on_media(&bc).unwrap();
    assert_eq!(imgs.len(), 1);
    assert_eq!((imgs[0].started, imgs[0].finished), (t, Some(t)));
}
