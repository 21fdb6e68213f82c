//! Naming disks and images without whole UUIDs, through the real binary: a unique UUID
//! prefix, `VM/LABEL` as the manifest named the disk, a VM with one disk; ambiguous and
//! unknown names are usage errors naming the candidates or the known disks. And
//! `manifest new` / `manifest check`: fresh UUIDs, labels, and the errors a bad manifest
//! gets before anything touches the home.

mod common;
use common::{s, TestDisk, Vault, MIB};

const A: &str = "abcd0001-0000-4000-8000-000000000001";
const B: &str = "abcd0002-0000-4000-8000-000000000002";

fn backup(v: &Vault, disk: &TestDisk, id: &str, vm: &str, label: &str) -> String {
    let p = disk.path.to_string_lossy().into_owned();
    let j = v.ok(&[
        "backup",
        "--disk",
        &p,
        "--disk-id",
        id,
        "--vm",
        vm,
        "--disk-label",
        label,
        "--pool",
        "p",
    ]);
    assert_eq!(j["images"][0]["disk_label"], label, "{j}");
    s(&j["images"][0], "image").to_string()
}

#[test]
fn disks_and_images_by_prefix_vm_label_and_vm() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let a = TestDisk::create(v.path("a.img"), MIB, MIB / 2, 1);
    let b = TestDisk::create(v.path("b.img"), MIB, MIB / 2, 2);
    let img_a = backup(&v, &a, A, "web01", "root");
    backup(&v, &b, B, "db01", "data");

    let disk_of = |name: &str| -> String {
        let j = v.ok(&["images", "--disk", name]);
        j["disks"][0]["disk"].as_str().unwrap().to_string()
    };
    assert_eq!(disk_of("web01/root"), A);
    assert_eq!(disk_of("db01/data"), B);
    assert_eq!(disk_of("abcd0001"), A, "a unique prefix");
    assert_eq!(disk_of("ABCD-0002"), B, "case and hyphens do not matter");
    assert_eq!(disk_of("db01"), B, "a VM with one disk");

    // Ambiguous: both candidates named; exit 2.
    let r = v.fails(&["images", "--disk", "abcd"], 2);
    let e = r.json["error"].as_str().unwrap();
    assert!(
        e.contains("ambiguous") && e.contains(A) && e.contains(B),
        "{e}"
    );
    // Unknown: the known disks with their VM/LABEL are named.
    let r = v.fails(&["images", "--disk", "web01/swap"], 2);
    let e = r.json["error"].as_str().unwrap();
    assert!(e.contains("web01/root"), "{e}");
    let r = v.fails(&["images", "--disk", "ffff"], 2);
    assert!(r.json["error"].as_str().unwrap().contains("db01/data"));

    // An image by a unique prefix, for restore and verify.
    let to = v.path("a.restored").to_string_lossy().into_owned();
    let j = v.ok(&[
        "restore",
        "--disk",
        "web01/root",
        "--image",
        &img_a[..8],
        "--to",
        &to,
    ]);
    assert_eq!(j["image"], img_a.as_str());
    common::assert_same_bytes(&v.path("a.restored"), &a.path, "restore by names");
    let j = v.ok(&["verify", "--image", &img_a[..13]]);
    assert_eq!(j["image"], img_a.as_str());
    // A cartridge by its volume UUID prefix.
    let vol = v.ok(&["media", "show", "TV0001L9"])["cartridge"]["volume"]
        .as_str()
        .unwrap()
        .to_string();
    let j = v.ok(&["media", "show", &vol[..6]]);
    assert_eq!(j["cartridge"]["barcode"], "TV0001L9");
    let r = v.fails(&["media", "show", "NOSUCH"], 2);
    assert!(
        r.json["error"].as_str().unwrap().contains(&vol),
        "{}",
        r.stdout
    );
    let r = v.fails(&["verify", "--image", "0000"], 2);
    assert!(
        r.json["error"].as_str().unwrap().contains(&img_a),
        "{}",
        r.stdout
    );
}

#[test]
fn manifest_new_writes_fresh_uuids_and_check_finds_problems_early() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let root = TestDisk::create(v.path("root.img"), 2 * MIB, MIB, 3);
    TestDisk::create(v.path("data.img"), MIB, MIB / 2, 4);
    let m = v.path("web01.toml").to_string_lossy().into_owned();
    let root_arg = format!("root={}", root.path.display());
    let data_arg = format!("data={}", v.path("data.img").display());
    let j = v.ok(&[
        "manifest", "new", "--vm", "web01", "--disk", &root_arg, "--disk", &data_arg, "--out", &m,
    ]);
    let ids: Vec<&str> = j["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["disk"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "each disk gets its own UUID");
    let text = std::fs::read_to_string(&m).unwrap();
    assert!(
        text.contains("label = \"root\"") && text.contains(ids[0]),
        "{text}"
    );
    // Never overwritten without --force (the disks would get new identities).
    let r = v.fails(
        &[
            "manifest", "new", "--vm", "web01", "--disk", &root_arg, "--out", &m,
        ],
        2,
    );
    assert!(r.json["error"].as_str().unwrap().contains("--force"));
    // What it wrote backs up as is, and names the disk web01/root.
    let b = v.backup_manifest(std::path::Path::new(&m), "p", &[]);
    assert_eq!(b["vm"], "web01");
    assert_eq!(b["images"][0]["disk_label"], "root");
    let j = v.ok(&["images", "--disk", "web01/root"]);
    assert_eq!(j["disks"][0]["disk"], ids[0]);

    // Bad input: refused with exit 2 naming the problem.
    for (args, says) in [
        (vec!["--disk", "root"], "LABEL=PATH"),
        (vec!["--disk", "a/b=/x"], "`/`"),
        (vec!["--disk", "x=/no/such/disk.img"], "does not exist"),
    ] {
        let mut a = vec!["manifest", "new", "--vm", "vm1"];
        a.extend(args);
        let r = v.fails(&a, 2);
        assert!(
            r.json["error"].as_str().unwrap().contains(says),
            "{a:?}: {}",
            r.stdout
        );
    }
    let dup = format!("root={}", v.path("data.img").display());
    let r = v.fails(
        &[
            "manifest", "new", "--vm", "vm1", "--disk", &root_arg, "--disk", &dup,
        ],
        2,
    );
    assert!(r.json["error"].as_str().unwrap().contains("own label"));
    // `manifest new` without --out prints the manifest; with --json it is in the document.
    let j = v.ok(&["manifest", "new", "--vm", "vm1", "--disk", &root_arg]);
    assert!(j["manifest"].as_str().unwrap().contains("[[disk]]"));
    assert_eq!(j["path"], serde_json::Value::Null);

    // `manifest check`: a manifest naming a disk that is gone, and a changed-extents file
    // of another size, fail before anything is locked or written.
    let bad = v.path("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "name = \"vm2\"\n[[disk]]\nid = \"{A}\"\nlabel = \"root\"\npath = \"{}\"\n",
            v.path("gone.img").display()
        ),
    )
    .unwrap();
    let r = v.fails(&["manifest", "check", bad.to_str().unwrap()], 2);
    assert!(r.json["error"].as_str().unwrap().contains("gone.img"));
    let ce = v.path("ce.json");
    common::write_changed_extents(&ce, "1", "2", &[(0, 64 * MIB)]);
    std::fs::write(
        &bad,
        format!(
            "name = \"vm2\"\n[[disk]]\nid = \"{A}\"\npath = \"{}\"\nchanged_extents = \"{}\"\n",
            root.path.display(),
            ce.display()
        ),
    )
    .unwrap();
    v.fails(&["manifest", "check", bad.to_str().unwrap()], 2);
    common::write_changed_extents(&ce, "1", "2", &[(0, MIB)]);
    let j = v.ok(&["manifest", "check", bad.to_str().unwrap()]);
    assert_eq!(j["disks"][0]["changed_extents"]["changed_bytes"], MIB);
    assert_eq!(j["disks"][0]["size"], 2 * MIB);
}

#[test]
fn results_go_to_stdout_and_notes_to_stderr() {
    let v = Vault::small(3, "64M");
    v.pool("p", "off");
    let d = TestDisk::create(v.path("d.img"), MIB, MIB / 2, 5);
    let id = d.id.to_string();
    let p = d.path.to_string_lossy().into_owned();
    let o = std::process::Command::new(common::BIN)
        .arg("--home")
        .arg(&v.home)
        .args(["backup", "--disk", &p, "--disk-id", &id, "--pool", "p"])
        .env_remove("TAPEVAULT_HOME")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    // The per-disk result and the session line are both results: stdout.
    assert!(out.contains(&format!("disk {id}: full image")), "{out}");
    assert!(
        out.contains("session ") && out.contains("complete"),
        "{out}"
    );
    assert!(!err.contains(&format!("disk {id}: full image")), "{err}");
    // Notes (a cartridge joining a set) are on stderr.
    assert!(err.contains("joins media set"), "{err}");

    // A rebuild says each cartridge it read once.
    let o = std::process::Command::new(common::BIN)
        .arg("--home")
        .arg(&v.home)
        .args(["catalog", "rebuild", "--scan"])
        .env_remove("TAPEVAULT_HOME")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(all.matches("TV0001L9:").count(), 1, "{all}");
}
