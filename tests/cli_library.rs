//! The library and tape commands through the real binary: --json shapes, exit codes,
//! and that they act on the virtual library the way mt and mtx would.

use std::path::Path;
use std::process::{Command, Output};

fn tv(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tapevault"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("TAPEVAULT_HOME")
        .env_remove("TAPEVAULT_PASSPHRASE")
        .output()
        .expect("run tapevault")
}

fn ok_json(home: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = tv(home, &a);
    assert!(
        o.status.success(),
        "tapevault {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn init(dir: &Path) -> std::path::PathBuf {
    let home = dir.join("home");
    ok_json(
        &home,
        &[
            "init",
            "--slots",
            "4",
            "--drives",
            "2",
            "--mailslots",
            "2",
            "--capacity",
            "8M",
        ],
    );
    home
}

#[test]
fn init_creates_a_library_with_barcoded_cartridges_in_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    let st = ok_json(&home, &["library", "status"]);
    let slots = st["inventory"]["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 4);
    let barcodes: Vec<&str> = slots
        .iter()
        .map(|s| s["barcode"].as_str().unwrap())
        .collect();
    assert_eq!(barcodes, ["TV0001L9", "TV0002L9", "TV0003L9", "TV0004L9"]);
    assert_eq!(st["inventory"]["drives"].as_array().unwrap().len(), 2);
    assert!(st["inventory"]["mail_slots"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["barcode"].is_null()));
    // A second init on the same home is refused, and changes nothing.
    let o = tv(&home, &["init"]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("already a tapevault home"));
}

#[test]
fn an_uninitialised_home_says_to_run_init() {
    let dir = tempfile::tempdir().unwrap();
    let o = tv(&dir.path().join("nothing"), &["library", "status"]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("tapevault init"));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    assert_eq!(code(&tv(&home, &["library", "load"])), 2);
    assert_eq!(code(&tv(&home, &["tape", "fsf", "notanumber"])), 2);
    assert_eq!(code(&tv(&home, &["frobnicate"])), 2);
}

#[test]
fn load_unload_export_import_move_cartridges_and_keep_barcodes() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    ok_json(&home, &["library", "load", "TV0003L9", "--drive", "1"]);
    let st = ok_json(&home, &["library", "status"]);
    assert_eq!(st["inventory"]["drives"][1]["barcode"], "TV0003L9");
    assert!(st["inventory"]["slots"][2]["barcode"].is_null());
    // Unload goes back to the slot it came from.
    let u = ok_json(&home, &["library", "unload", "--drive", "1"]);
    assert_eq!(u["to"]["kind"], "slot");
    assert_eq!(u["to"]["index"], 2);
    // Export two, then import them back.
    ok_json(&home, &["library", "export", "TV0001L9", "TV0004L9"]);
    let st = ok_json(&home, &["library", "status"]);
    let mail: Vec<_> = st["inventory"]["mail_slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["barcode"].clone())
        .collect();
    assert_eq!(
        mail,
        [serde_json::json!("TV0001L9"), serde_json::json!("TV0004L9")]
    );
    // A cartridge that is not there: exit 4.
    let o = tv(&home, &["library", "load", "TV9999L9"]);
    assert_eq!(code(&o), 4, "{}", String::from_utf8_lossy(&o.stderr));
    let imp = ok_json(&home, &["library", "import"]);
    assert_eq!(imp["barcodes"].as_array().unwrap().len(), 2);
    let st = ok_json(&home, &["library", "status"]);
    assert!(st["inventory"]["mail_slots"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["barcode"].is_null()));
}

#[test]
fn added_cartridges_get_the_next_barcodes() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    ok_json(&home, &["library", "export", "TV0002L9"]);
    ok_json(&home, &["library", "remove", "TV0002L9"]);
    let added = ok_json(&home, &["library", "add-cartridge", "--count", "1"]);
    assert_eq!(added["barcodes"][0], "TV0005L9");
    let st = ok_json(&home, &["library", "status"]);
    let outside: Vec<_> = st["cartridges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["location"]["kind"] == "outside")
        .collect();
    assert_eq!(outside.len(), 1);
    assert_eq!(outside[0]["barcode"], "TV0002L9");
}

#[test]
fn tape_commands_have_mt_semantics_on_the_virtual_drive() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    // No cartridge: media needed.
    let o = tv(&home, &["tape", "--drive", "0", "status"]);
    assert!(o.status.success());
    assert_eq!(code(&tv(&home, &["tape", "--drive", "0", "rewind"])), 4);
    ok_json(&home, &["library", "load", "TV0001L9", "--drive", "0"]);
    let st = ok_json(&home, &["tape", "--drive", "0", "status"]);
    assert_eq!(st["loaded"], true);
    assert_eq!(st["bot"], true);
    assert_eq!(st["barcode"], "TV0001L9");
    // Three filemarks at BOT make three empty files.
    let w = ok_json(&home, &["tape", "weof", "3"]);
    assert_eq!(w["position"]["file"], 3);
    ok_json(&home, &["tape", "rewind"]);
    let f = ok_json(&home, &["tape", "fsf", "2"]);
    assert_eq!(f["position"]["file"], 2);
    assert_eq!(f["position"]["block"], 2);
    let b = ok_json(&home, &["tape", "bsf", "1"]);
    // bsf leaves the tape on the BOT side of the filemark it crossed.
    assert_eq!(b["position"]["block"], 1);
    let t = ok_json(&home, &["tape", "tell"]);
    assert_eq!(t["position"]["block"], 1);
    ok_json(&home, &["tape", "seek", "0"]);
    let r = ok_json(&home, &["tape", "read"]);
    assert_eq!(r["blocks"][0]["kind"], "filemark");
    ok_json(&home, &["tape", "eod"]);
    let t = ok_json(&home, &["tape", "tell"]);
    assert_eq!(t["position"]["block"], 3);
    // Spacing past end of data stops there: an error, and the position says where.
    let o = tv(&home, &["tape", "fsf", "5"]);
    assert_ne!(code(&o), 0);
}

#[test]
fn conformance_refuses_without_destroy_data_and_passes_on_the_virtual_drive() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok_json(&home, &["init", "--slots", "2", "--capacity", "64M"]);
    ok_json(&home, &["library", "load", "TV0001L9"]);
    assert_eq!(code(&tv(&home, &["tape", "conformance"])), 2);
    let r = ok_json(
        &home,
        &[
            "tape",
            "conformance",
            "--destroy-data",
            "--blocks",
            "700",
            "--block-size",
            "16K",
            "--fill",
        ],
    );
    let checks = r["results"].as_array().unwrap();
    assert!(checks.len() >= 8);
    assert!(checks.iter().all(|c| c["passed"] == true), "{r:#}");
}
