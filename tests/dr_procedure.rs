//! Disaster recovery as docs/OPERATIONS.md tells it: the ```sh dr-procedure block is
//! run literally by bash on a fresh machine state that holds only the library directory,
//! the key export and the passphrase file; the restored disk must be bit-identical. And
//! a rebuild that could not put a cartridge back refuses before loading it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// The ```sh dr-procedure block of docs/OPERATIONS.md.
fn dr_block() -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/OPERATIONS.md"))
            .expect("docs/OPERATIONS.md");
    let start = doc
        .find("```sh dr-procedure\n")
        .expect("OPERATIONS.md has a ```sh dr-procedure block");
    let body = &doc[start + "```sh dr-procedure\n".len()..];
    let end = body.find("\n```").expect("the block ends");
    body[..end].to_string()
}

const PASS: &str = "correct horse battery staple for the vault";

#[test]
fn the_documented_dr_procedure_restores_a_disk_bit_identical() {
    if Command::new("bash").arg("-c").arg("true").status().is_err() {
        eprintln!("skipping: no bash");
        return;
    }
    let v = Vault::small(3, "32M");
    let pass = v.path("k1.pass");
    std::fs::write(&pass, format!("{PASS}\n")).unwrap();
    let pf = pass.to_str().unwrap().to_string();
    let with_pass = |args: &[&str]| {
        let mut a = vec!["--passphrase-file", pf.as_str()];
        a.extend_from_slice(args);
        v.ok(&a)
    };
    with_pass(&["key", "create", "k1"]);
    with_pass(&[
        "pool",
        "create",
        "p",
        "--encrypt-key",
        "k1",
        "--compression",
        "off",
        "--offsite",
        "ironmountain",
    ]);
    let mut d = TestDisk::create(v.path("d.img"), 4 * MIB, 3 * MIB, 7);
    let id = d.id.to_string();
    let dp = d.path.to_string_lossy().into_owned();
    let backup = |extra: &[&str]| {
        let mut a = vec![
            "--passphrase-file",
            pf.as_str(),
            "backup",
            "--disk",
            &dp,
            "--disk-id",
            &id,
            "--pool",
            "p",
            "--vm",
            "db",
        ];
        a.extend_from_slice(extra);
        v.ok(&a)
    };
    backup(&[]);
    d.write_random(MIB, MIB / 2);
    let expected = v.path("expected.img");
    d.save_copy(&expected);
    let inc = backup(&[]);
    assert_eq!(inc["images"][0]["kind"], "incremental");
    let key_file = v.path("k1.key");
    with_pass(&["key", "export", "k1", "--out", key_file.to_str().unwrap()]);

    // The disaster: the home is gone. Kept: the library directory, the key export and
    // the passphrase file, moved to a new place; everything else is new.
    let kept = v.path("kept");
    std::fs::create_dir(&kept).unwrap();
    let library = kept.join("library");
    std::fs::rename(v.library_dir(), &library).unwrap();
    std::fs::rename(&key_file, kept.join("k1.key")).unwrap();
    std::fs::rename(&pass, kept.join("k1.pass")).unwrap();
    std::fs::remove_dir_all(&v.home).unwrap();
    std::fs::remove_file(&d.path).unwrap();
    let user_home = v.path("fresh-user-home");
    std::fs::create_dir(&user_home).unwrap();
    let new_home = v.path("new-tapevault-home");
    let restored = v.path("restored.img");

    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .arg("-c")
        .arg(dr_block())
        .current_dir(&user_home)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &user_home)
        .env("LIBRARY", &library)
        .env("KEY_FILE", kept.join("k1.key"))
        .env("PASSFILE", kept.join("k1.pass"))
        .env("TAPEVAULT_HOME", &new_home)
        .env("DISK", &id)
        .env("RESTORE_TO", &restored)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the DR procedure failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_bytes(
        &restored,
        &expected,
        "the disk restored by the DR procedure",
    );

    // The pool's pools.toml settings came back from the media: rotate still knows the
    // vault its sets go to.
    let nv = |args: &[&str]| {
        let o = Command::new(BIN)
            .arg("--home")
            .arg(&new_home)
            .arg("--json")
            .args(args)
            .env_remove("TAPEVAULT_HOME")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let pools_toml = std::fs::read_to_string(new_home.join("pools.toml")).unwrap();
    assert!(pools_toml.contains("ironmountain"), "{pools_toml}");
    let shown = nv(&["pool", "show", "p"]);
    assert!(shown.to_string().contains("ironmountain"), "{shown:#}");
    // The rebuild is the first job of the new home's history.
    let jobs = nv(&["jobs"]);
    let kinds: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["rebuild", "restore"], "{jobs:#}");
}

#[test]
fn a_rebuild_that_could_not_put_a_cartridge_back_refuses_before_loading() {
    let v = Vault::init(&[
        "--slots",
        "2",
        "--drives",
        "1",
        "--mailslots",
        "2",
        "--capacity",
        "8M",
    ]);
    v.pool("p", "off");
    let d = TestDisk::create(v.path("d.img"), MIB, MIB / 2, 8);
    let img = v.backup(&d, "p", &[]);
    let bc = img["barcodes"][0].as_str().unwrap().to_string();
    // The written cartridge to the mail slot, and a new one in its storage slot: the
    // library is full and the cartridge can only come back to a storage slot.
    v.ok(&["library", "export", &bc]);
    v.ok(&["library", "add-cartridge"]);
    std::fs::remove_file(v.home.join("catalog.db")).unwrap();
    for f in ["catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(v.home.join(f));
    }
    let r = v.fails(&["catalog", "rebuild"], 4);
    assert!(r.stderr.contains(&bc), "{}", r.stderr);
    assert!(r.stderr.contains("free storage slot"), "{}", r.stderr);
    assert!(r.stderr.contains("--barcode"), "{}", r.stderr);
    // Nothing was loaded: the drive is empty, the cartridge still in its mail slot.
    let inv = v.ok(&["library", "status"])["inventory"].clone();
    assert!(inv["drives"][0]["barcode"].is_null(), "{inv:#}");
    assert_eq!(inv["mail_slots"][0]["barcode"], bc.as_str(), "{inv:#}");
    // Restore and backup refuse the same way instead of jamming the drive.
    let out = v.path("r.img");
    let r = v.run(&[
        "restore",
        "--disk",
        &d.id.to_string(),
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
    let inv = v.ok(&["library", "status"])["inventory"].clone();
    assert!(inv["drives"][0]["barcode"].is_null(), "{inv:#}");
    // The way out the error names: free a storage slot, import, rebuild.
    let other = inv["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| s["barcode"].as_str().filter(|b| *b != bc))
        .unwrap()
        .to_string();
    v.ok(&["library", "eject", &other]);
    v.ok(&["library", "import"]);
    let r = v.ok(&["catalog", "rebuild"]);
    assert_eq!(r["merged"]["images_added"], 1, "{r:#}");
}
