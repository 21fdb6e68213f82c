//! Property: over random image histories (including broken ones), `restore_chain`
//! returns either an error or a full-rooted, parent-linked, all-complete chain, and
//! agrees with a small reference model on which.
#[path = "catalog_support.rs"]
mod support;

use proptest::prelude::*;
use std::collections::HashMap;
use support::*;
use tapevault::catalog::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Gen {
    kind: u8,      // 0 full, 1..=3 incremental, 4 copy
    status: u8,    // 0..=3 complete, 4 failed, 5 corrupt, 6 incomplete, 7 running
    parent: usize, // index among earlier images; == index means "a parent never seen"
    hour: u8,
}

fn gen() -> impl Strategy<Value = Vec<Gen>> {
    proptest::collection::vec(
        (0u8..5, 0u8..8, any::<usize>(), 0u8..12).prop_map(|(kind, status, parent, hour)| Gen {
            kind,
            status,
            parent,
            hour,
        }),
        1..14,
    )
}

/// Reference model of a chain walk.
fn model_chain(all: &HashMap<Uuid, ImageRow>, target: &ImageRow) -> Option<Vec<Uuid>> {
    let mut chain = vec![target.uuid];
    let mut cur = target.clone();
    if cur.status != ImageStatus::Complete {
        return None;
    }
    loop {
        match cur.kind {
            ImageKind::Full | ImageKind::Copy => break,
            ImageKind::Incremental => {
                let p = all.get(&cur.parent_uuid?)?;
                if p.status != ImageStatus::Complete
                    || p.kind == ImageKind::Copy
                    || chain.contains(&p.uuid)
                {
                    return None;
                }
                chain.push(p.uuid);
                cur = p.clone();
            }
        }
    }
    chain.reverse();
    Some(chain)
}

fn assert_well_formed(chain: &[ImageRow], disk: Uuid) {
    assert!(!chain.is_empty());
    assert!(matches!(chain[0].kind, ImageKind::Full | ImageKind::Copy));
    assert_eq!(chain[0].parent_uuid, None);
    for w in chain.windows(2) {
        assert_eq!(w[1].parent_uuid, Some(w[0].uuid), "not parent-linked");
        assert_eq!(w[1].kind, ImageKind::Incremental);
    }
    assert!(chain
        .iter()
        .all(|i| i.status == ImageStatus::Complete && i.disk_uuid == disk));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn restore_chain_is_well_formed_or_an_error(hist in gen()) {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d);
        let disk = Uuid::new_v4();
        let mut ids: Vec<Uuid> = Vec::new();
        for (i, g) in hist.iter().enumerate() {
            let kind = match g.kind { 0 => ImageKind::Full, 4 => ImageKind::Copy, _ => ImageKind::Incremental };
            let parent = (kind == ImageKind::Incremental).then(|| {
                let k = g.parent % (i + 1);
                if k == i { Uuid::new_v4() } else { ids[k] }
            });
            let n = new_image(disk, kind, parent, g.hour as i64);
            let row = ImageRow {
                uuid: n.uuid, disk_uuid: disk, vm_name: None, disk_label: None, kind, parent_uuid: parent,
                change_id: None, from_change_id: None, disk_size: DISK_SIZE, block_size: 65536,
                session_uuid: None, pool: None, key_fingerprint: None, compression: Compression::Off,
                started: catalog_time(n.started), finished: None,
                status: match g.status {
                    0..=3 => ImageStatus::Complete, 4 => ImageStatus::Failed, 5 => ImageStatus::Corrupt,
                    6 => ImageStatus::Incomplete, _ => ImageStatus::Running,
                },
                records: 0, plain_bytes: 0, stored_bytes: 0, content_digest: None, digest_list: None, note: None, copy_of: None, synthetic_of: None,
            };
            c.merge_image(&ImageDump { image: row.clone(), segments: vec![], extents: vec![] }).unwrap();
            ids.push(row.uuid);
        }
        let all: HashMap<Uuid, ImageRow> = c.images(Some(disk)).unwrap().into_iter().map(|i| (i.uuid, i)).collect();
        // Images with the same start time: the one recorded later is the newer.
        let recorded: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(n, u)| (*u, n)).collect();
        let newest_complete = |limit: Option<u8>| {
            all.values()
                .filter(|i| i.status == ImageStatus::Complete)
                .filter(|i| !matches!(limit, Some(h) if i.started > t(h as i64)))
                .max_by_key(|i| (i.started, recorded[&i.uuid]))
                .cloned()
        };
        let mut ats: Vec<(At, Option<ImageRow>)> = vec![(At::Latest, newest_complete(None))];
        for h in 0..13u8 {
            ats.push((At::Time(t(h as i64)), newest_complete(Some(h))));
        }
        for id in &ids {
            ats.push((At::Image(*id), all.get(id).cloned()));
        }
        for (at, target) in ats {
            let got = c.restore_chain(disk, at);
            let expect = target.as_ref().and_then(|t| model_chain(&all, t));
            match (&got, &expect) {
                (Ok(chain), Some(e)) => {
                    assert_well_formed(chain, disk);
                    prop_assert_eq!(&uuids(chain), e);
                }
                (Err(_), None) => {}
                _ => prop_assert!(false, "at {:?}: catalog {:?}, model {:?}", at, got.map(|c| uuids(&c)), expect),
            }
        }
        // The incremental base is the newest complete non-copy image with an intact chain.
        let base = c.newest_good_image(disk).unwrap().map(|i| i.uuid);
        let model_base = {
            let mut cands: Vec<&ImageRow> = all.values()
                .filter(|i| i.status == ImageStatus::Complete && i.kind != ImageKind::Copy).collect();
            cands.sort_by_key(|i| std::cmp::Reverse((i.started, recorded[&i.uuid])));
            cands.into_iter().find(|i| model_chain(&all, i).is_some()).map(|i| i.uuid)
        };
        prop_assert_eq!(base, model_base);
    }
}
