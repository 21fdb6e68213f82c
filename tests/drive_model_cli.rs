//! `tapevault init --drive-model`: the virtual library's drives get a speed model, a
//! backup goes through it (and its statistics), the environment variable overrides it,
//! and bad specs are refused with the offending value named.

mod common;

use common::*;

const FAST: &str = "speed=2G,min=1G,buffer=1Mi,reposition=20ms";

#[test]
fn init_sets_the_model_and_a_backup_is_counted_by_it() {
    let v = Vault::init(&[
        "--slots",
        "2",
        "--drives",
        "1",
        "--capacity",
        "64M",
        "--drive-model",
        FAST,
    ]);
    let lib = vtl_sim::Library::open(&v.library_dir()).unwrap();
    let m = lib.drive_model(0).unwrap().expect("a model");
    assert_eq!(m, FAST.parse().unwrap());
    assert_eq!(lib.drive_stats(0).unwrap(), Default::default());
    v.pool("p", "off");
    let disk = TestDisk::create(v.path("d.img"), 4 * MIB, 4 * MIB, 7);
    v.backup(&disk, "p", &[]);
    let st = lib.drive_stats(0).unwrap();
    assert!(st.bytes_written >= 4 * MIB, "{st:?}");
    assert!(st.streaming_ns > 0, "{st:?}");

    // The environment turns the model off for one process: nothing more is counted.
    let disk2 = TestDisk::create(v.path("e.img"), 2 * MIB, 2 * MIB, 8);
    let p = disk2.path.to_string_lossy().into_owned();
    let id = disk2.id.to_string();
    let o = v
        .command(&["backup", "--disk", &p, "--disk-id", &id, "--pool", "p"])
        .env(vtl_sim::DRIVE_MODEL_ENV, "off")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lib.drive_stats(0).unwrap(), st);

    // A malformed variable is an error naming it, not a silent default.
    let o = v
        .command(&["backup", "--disk", &p, "--disk-id", &id, "--pool", "p"])
        .env(vtl_sim::DRIVE_MODEL_ENV, "speed=fast")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(vtl_sim::DRIVE_MODEL_ENV), "{err}");
}

#[test]
fn init_refuses_a_bad_model_as_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    for bad in ["speed=100M,min=200M", "min=10M", "speed=100M,colour=blue"] {
        let o = std::process::Command::new(BIN)
            .arg("--home")
            .arg(&home)
            .args(["init", "--drive-model", bad])
            .env_remove("TAPEVAULT_HOME")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("drive model"), "{bad}: {err}");
        assert!(!home.join("config.toml").exists(), "{bad}: a home was made");
    }
}

#[test]
fn init_can_switch_the_model_off_on_an_adopted_library() {
    let v = Vault::init(&["--slots", "2", "--drives", "2", "--drive-model", FAST]);
    let lib_dir = v.library_dir();
    let tmp = tempfile::tempdir().unwrap();
    let home2 = tmp.path().join("home2");
    let o = std::process::Command::new(BIN)
        .arg("--home")
        .arg(&home2)
        .arg("--json")
        .args(["init", "--library"])
        .arg(&lib_dir)
        .args(["--drive-model", "off"])
        .env_remove("TAPEVAULT_HOME")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["drive_model"], "off");
    let lib = vtl_sim::Library::open(&lib_dir).unwrap();
    assert_eq!(lib.drive_model(0).unwrap(), None);
    assert_eq!(lib.drive_model(1).unwrap(), None);
}
