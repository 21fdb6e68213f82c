//! Seven weeks (two month starts) of GFS rotation under a simulated clock, through the binary: daily
//! incrementals, Friday weekly fulls, month-start fulls that go offsite. Every day after
//! `rotate --apply`, every restore point a reference model says is kept (its set within
//! retention, or the newest of the disk) must still be complete with its whole chain on
//! cartridges that were never relabelled; and cartridges must actually be recycled.

mod rotation_support;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Datelike, Duration, Utc, Weekday};
use rotation_support::*;
use tapevault::catalog::ImageStatus;
use uuid::Uuid;

const DISK: &str = "5a1e0000-0000-4000-8000-000000000001";

struct Img {
    set: Uuid,
    pool: String,
    parent: Option<Uuid>,
    /// (barcode, volume uuid) of every cartridge with its data, at write time.
    volumes: Vec<(String, Uuid)>,
}

fn retention(pool: &str) -> i64 {
    match pool {
        "daily" => 6,
        "weekly" => 20,
        _ => 365,
    }
}

#[test]
fn gfs_rotation_over_seven_weeks_keeps_every_kept_restore_point_and_recycles_the_rest() {
    let mut tv = Tv::init(28, 4, "1M");
    std::fs::write(
        tv.home().join("pools.toml"),
        "[pools.daily]\nallocation = \"daily\"\nretention_days = 6\ncompression = \"off\"\n\n\
         [pools.weekly]\nallocation = \"weekly:fri\"\nretention_days = 20\ncompression = \"off\"\n\n\
         [pools.monthly]\nallocation = \"monthly\"\nretention_days = 365\ncompression = \"off\"\noffsite = \"vault1\"\noffsite_when = \"written\"\n",
    )
    .unwrap();
    let applied = tv.json(&["pool", "apply"]);
    assert_eq!(applied["changes"].as_array().unwrap().len(), 3);
    let disk = tv.path("disk.img");
    write_disk(&disk, 128 << 10, 7);

    let mut images: HashMap<Uuid, Img> = HashMap::new();
    let mut order: Vec<Uuid> = Vec::new();
    let mut recycled_total = 0usize;
    let mut vaulted: HashSet<String> = HashSet::new();
    let start = tv.now;
    for day in 0..49 {
        tv.now = start + Duration::days(day);
        touch_disk(&disk, (day as u64 * 4096) % (120 << 10), day as u8);
        let (pool, full) = if tv.now.day() == 1 {
            ("monthly", true)
        } else if tv.now.weekday() == Weekday::Fri {
            ("weekly", true)
        } else {
            ("daily", false)
        };
        let mut args = vec![
            "backup",
            "--disk",
            disk.to_str().unwrap(),
            "--disk-id",
            DISK,
            "--pool",
            pool,
        ];
        if full {
            args.push("--full");
        }
        let rep = tv.json(&args);
        let set: Uuid = rep["media_set"].as_str().unwrap().parse().unwrap();
        let img = &rep["images"][0];
        let uuid: Uuid = img["image"].as_str().unwrap().parse().unwrap();
        let cat = tv.catalog();
        let volumes = img["barcodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let b = b.as_str().unwrap().to_string();
                let v = cat.media(&b).unwrap().unwrap().volume_uuid.unwrap();
                (b, v)
            })
            .collect();
        images.insert(
            uuid,
            Img {
                set,
                pool: pool.to_string(),
                parent: img["parent"].as_str().map(|p| p.parse().unwrap()),
                volumes,
            },
        );
        order.push(uuid);
        drop(cat);

        let rot = tv.json(&["rotate", "--apply"]);
        recycled_total += rot["result"]["recycled"].as_array().unwrap().len();
        // The operator takes what rotation put into the mail slots to the vault.
        for m in rot["result"]["exported"].as_array().unwrap() {
            let bc = m["barcode"].as_str().unwrap();
            tv.ok(&["media", "vault", bc, "--location", "vault1"]);
            vaulted.insert(bc.to_string());
        }
        // The courier comes on Mondays: offsite cartridges due back are returned.
        if tv.now.weekday() == Weekday::Mon {
            for d in tv.json(&["media", "due"])["cartridges"].as_array().unwrap() {
                tv.ok(&["media", "return", d["barcode"].as_str().unwrap()]);
            }
        }
        check_kept(&tv, &images, &order, tv.now);
    }
    assert!(
        recycled_total >= 5,
        "only {recycled_total} cartridges were recycled in seven weeks"
    );
    assert!(vaulted.len() >= 2, "monthly sets went offsite: {vaulted:?}");
    let cat = tv.catalog();
    for bc in &vaulted {
        let m = cat.media(bc).unwrap().unwrap();
        assert_eq!(m.location, "vault:vault1", "{bc}");
        assert_eq!(m.pool.as_deref(), Some("monthly"));
    }
    // The library never ran dry: 49 sessions on 28 cartridges, 2+ of them offsite.
    let used: HashSet<String> = images
        .values()
        .flat_map(|i| i.volumes.iter().map(|v| v.0.clone()))
        .collect();
    assert!(used.len() < 28, "{} cartridges used", used.len());
    // Every volume the catalog knows is the one on the tape.
    verify_labels(&tv);
}

/// The reference model: which images are kept restore points at `now`.
fn check_kept(tv: &Tv, images: &HashMap<Uuid, Img>, order: &[Uuid], now: DateTime<Utc>) {
    let mut last_write: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    let mut written: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    let t0: DateTime<Utc> = "2026-01-01T06:00:00Z".parse().unwrap();
    for (i, u) in order.iter().enumerate() {
        let t = t0 + Duration::days(i as i64);
        written.insert(*u, t);
        let e = last_write.entry(images[u].set).or_insert(t);
        *e = (*e).max(t);
    }
    let mut kept: Vec<Uuid> = order
        .iter()
        .filter(|u| {
            let i = &images[u];
            now < last_write[&i.set] + Duration::days(retention(&i.pool))
        })
        .copied()
        .collect();
    kept.push(*order.last().unwrap());
    let cat = tv.catalog();
    for k in kept {
        let mut cur = Some(k);
        while let Some(u) = cur {
            let img = cat
                .image(u)
                .unwrap()
                .unwrap_or_else(|| panic!("{now}: image {u} (needed by kept {k}) is gone"));
            assert_eq!(
                img.status,
                ImageStatus::Complete,
                "{now}: image {u} needed by kept {k}: {:?}",
                img.note
            );
            for (bc, vol) in &images[&u].volumes {
                let m = cat.media(bc).unwrap().unwrap();
                assert_eq!(
                    m.volume_uuid,
                    Some(*vol),
                    "{now}: cartridge {bc} holding image {u} (needed by kept {k}) was relabelled"
                );
                assert_eq!(
                    m.media_set_uuid,
                    Some(images[&u].set),
                    "{now}: {bc} left its set"
                );
            }
            cur = images[&u].parent;
        }
    }
}

fn verify_labels(tv: &Tv) {
    use tape_devices::changer::TapeLibrary;
    use tapevault::media::volume::{read_label, LabelRead};
    let cat = tv.catalog();
    let mut lib = tv.library();
    let present: Vec<_> = cat
        .list_media(None)
        .unwrap()
        .into_iter()
        .filter(|m| m.volume_uuid.is_some() && m.location.starts_with("slot"))
        .collect();
    assert!(!present.is_empty());
    for m in present {
        let mut mnt = tapevault::media::mount(&mut lib, &m.barcode, None).unwrap();
        match read_label(mnt.drive.as_mut()).unwrap() {
            LabelRead::Label(l) => assert_eq!(
                Some(Uuid::from_bytes(l.volume_uuid)),
                m.volume_uuid,
                "{}",
                m.barcode
            ),
            other => panic!("{}: {other:?}", m.barcode),
        }
        let _ = lib.drive_count();
        tapevault::media::unmount(&mut lib, mnt).unwrap();
    }
}
