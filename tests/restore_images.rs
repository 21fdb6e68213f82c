//! `tapevault images`: images grouped as chains, with status and cartridges.

#[path = "restore_support.rs"]
mod support;

use support::*;
use uuid::Uuid;

#[test]
fn images_groups_chains_with_branches_and_copies() {
    let env = Env::new(4, "128M");
    env.ok(&["pool", "create", "p"]);
    let id = Uuid::new_v4();
    let other = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 1 << 20, 31);
    let full = env.backup(&disk.path, id, "p", &time(0), &[]);
    disk.scribble(1);
    let inc1 = env.backup(&disk.path, id, "p", &time(1), &[]);
    disk.scribble(1);
    let inc2 = env.backup(&disk.path, id, "p", &time(2), &[]);
    env.catalog().mark_corrupt(inc2, "test damage").unwrap();
    disk.scribble(1);
    let inc3 = env.backup(&disk.path, id, "p", &time(3), &[]);
    let copy = env.backup(&disk.path, id, "p", &time(4), &["--copy"]);
    let d2 = Disk::create(env.path("other.img"), 1 << 20, 32);
    env.backup(&d2.path, other, "p", &time(5), &[]);

    let v = env
        .ok(&["--json", "images", "--disk", &id.to_string()])
        .json();
    let disks = v["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "--disk filters");
    let chains = disks[0]["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2);
    assert_eq!(chains[0]["root"], full.to_string());
    let ids: Vec<&str> = chains[0]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["image"].as_str().unwrap())
        .collect();
    let want = [full, inc1, inc2, inc3].map(|u| u.to_string());
    assert_eq!(ids, want.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let e2 = &chains[0]["images"][2];
    assert_eq!(e2["status"], "corrupt");
    assert_eq!(e2["note"], "test damage");
    let e3 = &chains[0]["images"][3];
    assert_eq!(
        e3["parent"],
        inc1.to_string(),
        "the next backup avoided the corrupt image"
    );
    assert_eq!(e3["depth"], 2);
    assert!(!e3["barcodes"].as_array().unwrap().is_empty() || e3["records"] == 0);
    assert_eq!(chains[1]["root"], copy.to_string());
    assert_eq!(chains[1]["images"][0]["kind"], "copy");

    let all = env.ok(&["--json", "images"]).json();
    assert_eq!(all["disks"].as_array().unwrap().len(), 2);
    let text = env.ok(&["images"]).stdout;
    assert!(text.contains(&format!("[on {inc1}]")), "{text}");
    assert!(text.contains("corrupt"));
}
