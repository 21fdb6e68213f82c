//! Shared helpers for the catalog tests (included with `#[path]`; no tests here).
#![allow(dead_code)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use tapevault::catalog::*;
use uuid::Uuid;

pub const DISK_SIZE: u64 = 1 << 20;
pub const BARCODE: &str = "TV0001L8";

pub fn t(hour: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap() + Duration::hours(hour)
}

pub fn open(dir: &tempfile::TempDir) -> Catalog {
    Catalog::open(dir.path()).unwrap()
}

pub fn pool_row(name: &str) -> PoolRow {
    PoolRow {
        name: name.into(),
        key_name: None,
        key_fingerprint: None,
        compression: Compression::Zstd(3),
        retention_days: Some(30),
        allocation: Allocation::Continue,
        worm: false,
        escrow: false,
        created: catalog_time(t(0)),
    }
}

/// A catalog with pool "daily", one media set and cartridge BARCODE in it.
pub fn setup(dir: &tempfile::TempDir) -> (Catalog, Uuid) {
    let c = open(dir);
    c.create_pool(&pool_row("daily")).unwrap();
    let set = c.create_media_set("daily", 1).unwrap();
    c.upsert_media(&MediaRow::new_blank(BARCODE, "slot 1"))
        .unwrap();
    c.assign_media(BARCODE, "daily", set.uuid, 0, Uuid::new_v4())
        .unwrap();
    (c, set.uuid)
}

pub fn new_image(disk: Uuid, kind: ImageKind, parent: Option<Uuid>, hour: i64) -> NewImage {
    NewImage {
        uuid: Uuid::new_v4(),
        disk_uuid: disk,
        vm_name: Some("web1".into()),
        disk_label: None,
        kind,
        parent_uuid: parent,
        change_id: Some(format!("cid-{hour}")),
        from_change_id: parent.map(|_| format!("cid-{}", hour - 1)),
        disk_size: DISK_SIZE,
        block_size: 65536,
        session_uuid: None,
        pool: Some("daily".into()),
        key_fingerprint: None,
        compression: Compression::Zstd(3),
        started: t(hour),
        synthetic_of: None,
    }
}

pub fn seg(first_seq: u64, last_seq: u64, disk_start: u64, disk_end: u64) -> Segment {
    Segment {
        part: 0,
        barcode: BARCODE.into(),
        tape_file: 1,
        first_block: first_seq + 1,
        last_block: last_seq + 1,
        first_seq,
        last_seq,
        disk_start,
        disk_end,
    }
}

pub fn stats(records: u64) -> ImageStats {
    ImageStats {
        records,
        plain_bytes: records * 65536,
        stored_bytes: records * 30000,
        finished: None,
        digest_list: None,
    }
}

pub fn whole_disk() -> Vec<Extent> {
    vec![
        Extent {
            offset: 0,
            length: DISK_SIZE / 2,
            is_zero: false,
        },
        Extent {
            offset: DISK_SIZE / 2,
            length: DISK_SIZE / 2,
            is_zero: true,
        },
    ]
}

/// Begin and complete an image; returns its UUID.
pub fn image(c: &Catalog, disk: Uuid, kind: ImageKind, parent: Option<Uuid>, hour: i64) -> Uuid {
    let n = new_image(disk, kind, parent, hour);
    c.begin_image(&n).unwrap();
    let extents = if kind == ImageKind::Incremental {
        vec![Extent {
            offset: 65536,
            length: 65536,
            is_zero: false,
        }]
    } else {
        whole_disk()
    };
    let segs = [seg(0, 7, 0, DISK_SIZE / 2)];
    c.complete_image(
        n.uuid,
        &stats(8),
        &format!("{:064x}", hour),
        &segs,
        &extents,
    )
    .unwrap();
    n.uuid
}

pub fn full(c: &Catalog, disk: Uuid, hour: i64) -> Uuid {
    image(c, disk, ImageKind::Full, None, hour)
}

pub fn incr(c: &Catalog, disk: Uuid, parent: Uuid, hour: i64) -> Uuid {
    image(c, disk, ImageKind::Incremental, Some(parent), hour)
}

/// A chain of `N` images of `disk`: a full at hour 0, then an incremental an hour
/// on the one before; their UUIDs in chain order.
pub fn chain<const N: usize>(c: &Catalog, disk: Uuid) -> [Uuid; N] {
    let mut v = [Uuid::nil(); N];
    for h in 0..N {
        v[h] = match h {
            0 => full(c, disk, 0),
            _ => incr(c, disk, v[h - 1], h as i64),
        };
    }
    v
}

pub fn uuids(chain: &[ImageRow]) -> Vec<Uuid> {
    chain.iter().map(|i| i.uuid).collect()
}
