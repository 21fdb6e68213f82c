//! Disaster recovery from damaged media: a damaged catalog snapshot falls back to the
//! scan; a damaged data record is reported by position and everything else recovered;
//! an image part cut off by a power cut is recorded incomplete.

mod dr_support;

use std::path::{Path, PathBuf};

use dr_support::*;
use serde_json::Value;

const D1: &str = "d1d1d1d1-0000-4000-8000-000000000001";
const D2: &str = "d2d2d2d2-0000-4000-8000-000000000002";
const CART: &str = "TV0001L9";

struct Small {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    lib: PathBuf,
    orig: std::collections::BTreeMap<String, Value>,
    export: Value,
}

/// Two sessions of a two-disk VM (full, then incremental) on one cartridge.
fn small_history() -> Small {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let lib = root.join("library");
    let home = root.join("home");
    new_home(&home, &lib, "16M", 2, Some("p"));
    let (d1, d2) = (root.join("d1.img"), root.join("d2.img"));
    make_disk(&d1, 3, 21);
    make_disk(&d2, 2, 22);
    let vm = manifest(&root, "vm", &[(D1, &d1), (D2, &d2)]);
    ok(
        &home,
        &["backup", "--manifest", vm.to_str().unwrap(), "--pool", "p"],
    );
    touch_disk(&d1, 23);
    touch_disk(&d2, 24);
    ok(
        &home,
        &["backup", "--manifest", vm.to_str().unwrap(), "--pool", "p"],
    );
    let orig = images(&home);
    let export: Value = serde_json::from_str(&ok(&home, &["catalog", "export"])).unwrap();
    Small {
        _tmp: tmp,
        root,
        lib,
        orig,
        export,
    }
}

fn home_on(s: &Small, name: &str, lib: &Path) -> PathBuf {
    let h = s.root.join(name);
    home_on_library(&h, lib);
    h
}

fn cart(lib: &Path) -> PathBuf {
    lib.join("cartridges").join(CART)
}

/// Rebuild into a new home; the cartridge must have been scanned because its newest
/// snapshot (`newest`) was unusable, the reason naming it and saying `why`. The home.
fn rebuild_falls_back_to_the_scan(s: &Small, newest: &serde_json::Value, why: &str) -> PathBuf {
    let home = home_on(s, "rebuilt", &s.lib);
    let (code, rep) = json(&home, &["catalog", "rebuild"]);
    assert_eq!(code, 0, "{rep:#}");
    let c = &rep["cartridges"][0];
    assert_eq!(c["method"], "scan", "{rep:#}");
    let reason = c["fallback_reason"].as_str().unwrap();
    assert!(
        reason.contains(why) && reason.contains(&newest["tape_file"].to_string()),
        "{reason}"
    );
    home
}

/// The newest catalog snapshot on the cartridge, as the export places it.
fn newest_snapshot(s: &Small) -> serde_json::Value {
    s.export["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["barcode"] == CART)
        .max_by_key(|x| x["tape_file"].as_u64().unwrap())
        .unwrap()
        .clone()
}

#[test]
fn damaged_snapshot_falls_back_to_the_scan() {
    let s = small_history();
    // The newest snapshot on the cartridge: damage its first chunk.
    let newest = newest_snapshot(&s);
    damage_block(&cart(&s.lib), newest["block"].as_u64().unwrap() + 1);
    let home = rebuild_falls_back_to_the_scan(&s, &newest, "snapshot");
    assert_eq!(
        assert_same_restore_points(&s.orig, &images(&home), false),
        4
    );
    let (code, chk) = json(&home, &["catalog", "check", "--media"]);
    assert_eq!(code, 0, "{chk:#}");
}

#[test]
fn damaged_record_is_reported_by_position_and_the_rest_recovered() {
    let s = small_history();
    // The second data record of disk 1's full image.
    let (victim, img) = s
        .orig
        .iter()
        .find(|(_, i)| i["image"]["disk_uuid"] == D1 && i["image"]["kind"] == "full")
        .unwrap();
    let seg = &img["segments"][0];
    let block = seg["first_block"].as_u64().unwrap() + 1;
    assert!(block <= seg["last_block"].as_u64().unwrap());
    damage_block(&cart(&s.lib), block);
    let home = home_on(&s, "rebuilt", &s.lib);
    let (code, rep) = json(&home, &["catalog", "rebuild", "--scan"]);
    assert_eq!(code, 3, "damage is an integrity failure: {rep:#}");
    let damage = rep["damage"].as_array().unwrap();
    assert!(
        damage.iter().any(|d| d["barcode"] == CART
            && d["logical_block"] == block
            && d["tape_file"] == seg["tape_file"]
            && d["detail"].as_str().unwrap().contains("corrupt")),
        "{rep:#}"
    );
    let got = images(&home);
    assert_eq!(got[victim]["image"]["status"], "corrupt");
    // The images built on it are marked with it; every other image is recovered whole.
    let rest = without_chain_of(&s.orig, victim, &got);
    assert_eq!(assert_same_restore_points(&rest, &got, false), 2);
}

#[test]
fn image_cut_off_by_a_power_cut_is_incomplete_and_the_rest_recovered() {
    let s = small_history();
    // The image part written last on the cartridge: keep its header and first record.
    let (victim, img) = s
        .orig
        .iter()
        .max_by_key(|(_, i)| i["segments"][0]["first_block"].as_u64().unwrap_or(0))
        .unwrap();
    let first = img["segments"][0]["first_block"].as_u64().unwrap();
    cut_tape(&cart(&s.lib), first + 1);
    let home = home_on(&s, "rebuilt", &s.lib);
    // The fast path finds the previous session's snapshot and scans what follows it.
    let (code, rep) = json(&home, &["catalog", "rebuild"]);
    assert_eq!(code, 0, "{rep:#}");
    assert_eq!(rep["cartridges"][0]["method"], "snapshot", "{rep:#}");
    assert!(rep["cartridges"][0]["files_scanned"].as_u64().unwrap() >= 1);
    let got = images(&home);
    assert_eq!(
        got[victim]["image"]["status"], "incomplete",
        "{}",
        got[victim]
    );
    assert!(got[victim]["image"]["note"]
        .as_str()
        .unwrap()
        .contains("no trailer"));
    let mut rest = s.orig.clone();
    rest.remove(victim);
    assert_eq!(assert_same_restore_points(&rest, &got, false), 3);
    // The same by a full scan.
    let home2 = home_on(&s, "rebuilt2", &s.lib);
    let (code, rep) = json(&home2, &["catalog", "rebuild", "--scan"]);
    assert_eq!(code, 0, "{rep:#}");
    let got = images(&home2);
    assert_eq!(got[victim]["image"]["status"], "incomplete");
    assert_eq!(assert_same_restore_points(&rest, &got, false), 3);
}

#[test]
fn media_contradicting_the_catalog_is_a_reported_conflict_and_the_catalog_is_kept() {
    use std::os::unix::fs::FileExt;
    let s = small_history();
    let home = s.root.join("home");
    // Rewrite one image's trailer with another (well-formed) content digest.
    let (victim, img) = s
        .orig
        .iter()
        .find(|(_, i)| i["image"]["kind"] == "full")
        .unwrap();
    let segs = img["segments"].as_array().unwrap();
    let trailer_block = segs.last().unwrap()["last_block"].as_u64().unwrap() + 1;
    let (off, len) = block_extent(&cart(&s.lib), trailer_block);
    let data = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(cart(&s.lib).join("data"))
        .unwrap();
    let mut b = vec![0u8; len as usize];
    data.read_exact_at(&mut b, off).unwrap();
    let mut t = match tape_formats::decode_block(&b).unwrap() {
        tape_formats::Block::ImageTrailer(t) => t,
        other => panic!("block {trailer_block} is a {}", other.kind_name()),
    };
    t.digest[0] ^= 0xff;
    let mut forged = Vec::new();
    t.encode(&mut forged).unwrap();
    assert_eq!(forged.len(), b.len());
    data.write_all_at(&forged, off).unwrap();

    let (code, rep) = json(&home, &["catalog", "rebuild", "--scan"]);
    assert_eq!(code, 3, "a conflict is an integrity failure: {rep:#}");
    let conflicts = rep["merged"]["conflicts"].as_array().unwrap();
    assert!(
        conflicts
            .iter()
            .any(|c| c["what"] == "image" && c["key"] == victim.as_str()),
        "{rep:#}"
    );
    // Nothing was overwritten.
    let now = images(&home);
    assert_eq!(
        now[victim]["image"]["content_digest"],
        img["image"]["content_digest"]
    );
    assert_eq!(assert_same_restore_points(&s.orig, &now, true), 4);
}

#[test]
fn unreadable_block_is_reported_and_the_scan_goes_on() {
    let s = small_history();
    let (victim, img) = s
        .orig
        .iter()
        .find(|(_, i)| i["image"]["disk_uuid"] == D2 && i["image"]["kind"] == "full")
        .unwrap();
    let block = img["segments"][0]["first_block"].as_u64().unwrap();
    let mut vl = tape_devices::changer::r#virtual::VirtualLibrary::open(&s.lib).unwrap();
    vl.set_faults(
        CART,
        vtl_sim::Faults {
            media_error_blocks: vec![block],
            ..Default::default()
        },
    )
    .unwrap();
    drop(vl);
    let home = home_on(&s, "rebuilt", &s.lib);
    let (code, rep) = json(&home, &["catalog", "rebuild", "--scan"]);
    assert_eq!(code, 3, "{rep:#}");
    assert!(
        rep["damage"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["logical_block"] == block
                && d["detail"].as_str().unwrap().contains("media error")),
        "{rep:#}"
    );
    let got = images(&home);
    assert_eq!(got[victim]["image"]["status"], "corrupt");
    let rest = without_chain_of(&s.orig, victim, &got);
    assert_eq!(assert_same_restore_points(&rest, &got, false), 2);
}

/// `orig` without `victim` and the images built on it, after checking that the
/// rebuilt catalog marks those corrupt too, each naming the damaged base.
fn without_chain_of(
    orig: &std::collections::BTreeMap<String, serde_json::Value>,
    victim: &str,
    got: &std::collections::BTreeMap<String, serde_json::Value>,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut rest = orig.clone();
    rest.remove(victim);
    let mut gone = vec![victim.to_string()];
    loop {
        let next: Vec<String> = rest
            .iter()
            .filter(|(_, i)| {
                i["image"]["parent_uuid"]
                    .as_str()
                    .is_some_and(|p| gone.iter().any(|g| g == p))
            })
            .map(|(u, _)| u.clone())
            .collect();
        if next.is_empty() {
            break;
        }
        for u in next {
            let b = &got[&u]["image"];
            assert_eq!(
                b["status"], "corrupt",
                "image {u} is built on {victim}: {b}"
            );
            assert!(
                b["note"].as_str().unwrap_or("").contains("its base image"),
                "{b}"
            );
            rest.remove(&u);
            gone.push(u);
        }
    }
    assert!(
        gone.len() > 1,
        "the damaged full has incrementals built on it"
    );
    rest
}

/// The newest snapshot is merged while it is still being read: a snapshot whose chunks
/// all read well but whose end is damaged (its trailer, which carries the digest of the
/// whole document, checked only once every chunk was merged) must leave nothing of
/// it in the catalog: the merge rolls back and the cartridge is scanned instead.
#[test]
fn snapshot_damaged_after_its_chunks_merges_nothing_of_it() {
    let s = small_history();
    let newest = newest_snapshot(&s);
    // The header, then the chunks (a small catalog's document fits one), then the
    // trailer: the last block before the next tape file's first.
    let header = newest["block"].as_u64().unwrap();
    let trailer = header + 2;
    let (_, len) = block_extent(&cart(&s.lib), trailer + 1);
    assert_eq!(
        len,
        0,
        "block {} should be the filemark after the trailer",
        trailer + 1
    );
    damage_block(&cart(&s.lib), trailer);
    let home = rebuild_falls_back_to_the_scan(&s, &newest, "unusable");
    // Only the damaged snapshot knows the second session's images with their exact
    // start times; the scan finds them with the image headers' whole seconds.
    let rebuilt = images(&home);
    let mut second = 0;
    for (u, a) in &s.orig {
        if a["image"]["kind"] != "incremental" {
            continue;
        }
        let exact = a["image"]["started"].as_str().unwrap();
        assert!(exact.contains('.'), "image {u}: started {exact}");
        assert_ne!(
            rebuilt[u]["image"]["started"], a["image"]["started"],
            "image {u} has the damaged snapshot's start time"
        );
        second += 1;
    }
    assert_eq!(second, 2);
    assert_eq!(assert_same_restore_points(&s.orig, &rebuilt, false), 4);
    let (code, chk) = json(&home, &["catalog", "check", "--media"]);
    assert_eq!(code, 0, "{chk:#}");
}
