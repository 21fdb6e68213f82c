//! The operator's first hour, through the real binary: where `init` puts the cartridges,
//! library verbs that never jam, the passphrase policy, completions and man pages,
//! systemd units, config defaults and the job hook.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{TestDisk, Vault, MIB};

const BIN: &str = env!("CARGO_BIN_EXE_tapevault");

fn tv_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.arg("--home")
        .arg(home)
        .args(args)
        .env_remove("TAPEVAULT_HOME")
        .env_remove("TAPEVAULT_PASSPHRASE")
        .env_remove("TAPEVAULT_NEW_PASSPHRASE")
        .env_remove("TAPEVAULT_NOW");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run tapevault")
}

fn tv(home: &Path, args: &[&str]) -> Output {
    tv_env(home, args, &[])
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok_json(home: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = tv(home, &a);
    assert!(
        o.status.success(),
        "tapevault {args:?} failed: {}\n{}",
        stderr(&o),
        stdout(&o)
    );
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

fn barcodes(list: &[Value]) -> Vec<Option<String>> {
    list.iter()
        .map(|e| e["barcode"].as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------
// 1. Disaster recovery: the default library lives beside the home.

#[test]
fn init_puts_the_library_beside_the_home_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let o = tv(
        &home,
        &["init", "--slots", "2", "--drives", "1", "--capacity", "8M"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lib: PathBuf = dir.path().join("home-library");
    let text = stdout(&o);
    assert!(
        text.contains(&lib.display().to_string()),
        "init names the library directory: {text}"
    );
    assert!(lib.join("cartridges").join("TV0001L9").is_dir());
    assert!(!home.join("library").exists(), "nothing inside the home");
    let cfg = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert!(cfg.contains("home-library"), "{cfg}");

    // Losing the home does not lose the cartridges: a new home adopts them, and its
    // JSON report names the library.
    std::fs::remove_dir_all(&home).unwrap();
    let home2 = dir.path().join("new-home");
    let r = ok_json(&home2, &["init", "--library", lib.to_str().unwrap()]);
    assert_eq!(r["adopted"], true);
    assert_eq!(r["library"]["path"], lib.to_str().unwrap());
    assert_eq!(r["barcodes"].as_array().unwrap().len(), 2);

    // A fresh JSON init reports the default path too.
    let home3 = dir.path().join("third");
    let r = ok_json(&home3, &["init", "--slots", "1", "--capacity", "8M"]);
    assert_eq!(
        r["library"]["path"],
        dir.path().join("third-library").to_str().unwrap()
    );
    assert_eq!(r["adopted"], false);
}

// ---------------------------------------------------------------------------------
// 2. The library never jams.

fn outside(v: &Vault) -> Vec<String> {
    v.ok(&["library", "status"])["cartridges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["location"]["kind"] == "outside")
        .map(|c| c["barcode"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn add_cartridge_uses_storage_slots_only_and_eject_frees_one() {
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
    // Full: refused, nothing lands in a mail slot.
    let r = v.fails(&["library", "add-cartridge"], 1);
    assert!(r.stderr.contains("no free storage slot"), "{}", r.stderr);
    let inv = v.ok(&["library", "status"])["inventory"].clone();
    assert_eq!(
        barcodes(inv["mail_slots"].as_array().unwrap()),
        vec![None, None]
    );
    // Eject one: it leaves through a mail slot and is outside the library.
    let e = v.ok(&["library", "eject", "TV0001L9"]);
    assert_eq!(e["offline"], true);
    assert_eq!(outside(&v), vec!["TV0001L9".to_string()]);
    let inv = v.ok(&["library", "status"])["inventory"].clone();
    assert_eq!(
        barcodes(inv["slots"].as_array().unwrap()),
        vec![None, Some("TV0002L9".into())]
    );
    assert_eq!(
        barcodes(inv["mail_slots"].as_array().unwrap()),
        vec![None, None]
    );
    // More than fit: refused naming how many fit, nothing added.
    let r = v.fails(&["library", "add-cartridge", "--count", "3"], 2);
    assert!(r.stderr.contains("at most --count 1"), "{}", r.stderr);
    let n = v.ok(&["library", "status"])["cartridges"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 2, "nothing was added");
    let a = v.ok(&["library", "add-cartridge", "--count", "1"]);
    let added = a["barcodes"][0].as_str().unwrap().to_string();
    let inv = v.ok(&["library", "status"])["inventory"].clone();
    assert_eq!(inv["slots"][0]["barcode"].as_str(), Some(added.as_str()));
    // Ejecting what is not there is a usage error naming the way to list them.
    let r = v.fails(&["library", "eject", "TV0001L9"], 2);
    assert!(r.stderr.contains("library status"), "{}", r.stderr);
}

#[test]
fn unload_to_a_chosen_slot_and_transfer_between_slots() {
    let v = Vault::init(&[
        "--slots",
        "4",
        "--cartridges",
        "2",
        "--drives",
        "1",
        "--mailslots",
        "1",
        "--capacity",
        "8M",
    ]);
    v.ok(&["library", "load", "TV0001L9", "--drive", "0"]);
    let u = v.ok(&["library", "unload", "--drive", "0", "--slot", "3"]);
    assert_eq!(u["to"]["index"], 3);
    let inv = v.ok(&["library", "status"])["inventory"].clone();
    assert_eq!(
        barcodes(inv["slots"].as_array().unwrap()),
        vec![None, Some("TV0002L9".into()), None, Some("TV0001L9".into())]
    );
    // An empty drive, a full slot and a slot that does not exist are refused.
    let r = v.fails(&["library", "unload", "--drive", "0", "--slot", "2"], 1);
    assert!(r.stderr.contains("drive 0 is empty"), "{}", r.stderr);
    v.ok(&["library", "load", "TV0002L9", "--drive", "0"]);
    let r = v.fails(&["library", "unload", "--slot", "3"], 2);
    assert!(
        r.stderr
            .contains("slot 3 is full (holds TV0001L9); free slots: 0, 1, 2"),
        "{}",
        r.stderr
    );
    let r = v.fails(&["library", "unload", "--slot", "9"], 2);
    assert!(r.stderr.contains("no such storage slot"), "{}", r.stderr);
    v.ok(&["library", "unload", "--slot", "0"]);

    let t = v.ok(&["library", "transfer", "3", "2"]);
    assert_eq!(t["barcode"], "TV0001L9");
    let inv = v.ok(&["library", "status"])["inventory"].clone();
    assert_eq!(
        barcodes(inv["slots"].as_array().unwrap()),
        vec![Some("TV0002L9".into()), None, Some("TV0001L9".into()), None]
    );
    let r = v.fails(&["library", "transfer", "3", "1"], 2);
    assert!(r.stderr.contains("slot 3 is empty"), "{}", r.stderr);
    let r = v.fails(&["library", "transfer", "2", "0"], 2);
    assert!(r.stderr.contains("slot 0 is full"), "{}", r.stderr);
    // Eject straight out of a drive.
    v.ok(&["library", "load", "TV0001L9", "--drive", "0"]);
    let e = v.ok(&["library", "eject", "TV0001L9"]);
    assert_eq!(e["from"]["kind"], "drive");
    assert_eq!(outside(&v), vec!["TV0001L9".to_string()]);
    // The catalog knows where it went.
    let m = v.catalog().media("TV0001L9").unwrap().unwrap();
    assert_eq!(m.location, "outside");
}

#[test]
fn erase_refuses_live_data_without_force_and_blanks_the_cartridge() {
    let v = Vault::init(&[
        "--slots",
        "3",
        "--drives",
        "1",
        "--mailslots",
        "1",
        "--capacity",
        "16M",
    ]);
    v.pool("p", "off");
    let disk = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 7);
    let img = v.backup(&disk, "p", &[]);
    let image = img["image"]
        .as_str()
        .or(img["uuid"].as_str())
        .unwrap()
        .to_string();
    let cat = v.catalog();
    let used: Vec<String> = cat
        .list_media(None)
        .unwrap()
        .into_iter()
        .filter(|m| m.media_set_uuid.is_some())
        .map(|m| m.barcode)
        .collect();
    assert_eq!(used.len(), 1, "{used:?}");
    let bc = used[0].clone();
    drop(cat);

    // Live data: refused, naming the cartridge and the restore point; nothing changes.
    let r = v.fails(&["library", "erase", &bc], 1);
    assert!(
        r.stderr.contains(&bc) && r.stderr.contains(&image),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    let data = v.cartridge_dir(&bc).join("data");
    assert!(std::fs::metadata(&data).unwrap().len() > 0);

    // A blank cartridge erases without --force.
    let blank = ["TV0001L9", "TV0002L9", "TV0003L9"]
        .into_iter()
        .find(|b| *b != bc)
        .unwrap();
    v.ok(&["library", "erase", blank]);

    // Forced: the cartridge reads blank, the catalog forgets the image and the pool.
    let e = v.ok(&["library", "erase", &bc, "--force"]);
    assert_eq!(e["forgotten"][0].as_str(), Some(image.as_str()));
    assert_eq!(
        std::fs::metadata(&data).unwrap().len(),
        0,
        "the data is gone"
    );
    let m = v.catalog().media(&bc).unwrap().unwrap();
    assert_eq!(m.pool, None);
    assert_eq!(m.media_set_uuid, None);
    assert_eq!(m.state.as_str(), "blank");
    let row = v.image_row(&image);
    assert_eq!(row.status.as_str(), "corrupt", "{row:?}");
    // Back in its slot, and labelling it again needs no --force.
    let inv = v.ok(&["library", "status"])["inventory"].clone();
    assert!(inv["drives"][0]["barcode"].is_null());
    v.ok(&["label", &bc, "--pool", "p"]);
}

// ---------------------------------------------------------------------------------
// 3. Passphrase policy.

#[test]
fn short_or_repetitive_key_passphrases_are_refused_with_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let o = tv(&home, &["init", "--slots", "1", "--capacity", "8M"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for weak in ["abc", "elevenchars", "aaaaaaaaaaaaaaaa"] {
        let o = tv_env(
            &home,
            &["--json", "key", "create", "k"],
            &[("TAPEVAULT_PASSPHRASE", weak)],
        );
        assert_eq!(code(&o), 2, "{weak}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("at least 12 characters") || e.contains("at least 5 different"),
            "{weak}: {e}"
        );
        let j: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["exit_code"], 2);
    }
    let keys = ok_json(&home, &["key", "list"]);
    assert_eq!(
        keys["keys"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );
    let good = "twelve chars";
    let o = tv_env(
        &home,
        &["key", "create", "k"],
        &[("TAPEVAULT_PASSPHRASE", good)],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Changing to a weak one is refused too; the old passphrase still works.
    let o = tv_env(
        &home,
        &["key", "change-passphrase", "k"],
        &[
            ("TAPEVAULT_PASSPHRASE", good),
            ("TAPEVAULT_NEW_PASSPHRASE", "short"),
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("at least 12 characters"));
    let out = dir.path().join("k.key");
    let o = tv_env(
        &home,
        &["key", "export", "k", "--out", out.to_str().unwrap()],
        &[("TAPEVAULT_PASSPHRASE", good)],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------
// 5. Completions, man pages, systemd units.

fn all_subcommands(cmd: &clap::Command, out: &mut Vec<String>) {
    for s in cmd.get_subcommands() {
        if s.get_name() == "help" {
            continue;
        }
        out.push(s.get_name().to_string());
        all_subcommands(s, out);
    }
}

#[test]
fn completion_scripts_name_every_subcommand() {
    use clap::CommandFactory;
    let mut names = Vec::new();
    all_subcommands(&tapevault::cli::Cli::command(), &mut names);
    assert!(names.iter().any(|n| n == "erase"), "{names:?}");
    let nowhere = Path::new("/nonexistent/tapevault-home");
    for shell in ["bash", "zsh", "fish"] {
        let o = tv(nowhere, &["completions", shell]);
        assert_eq!(code(&o), 0, "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        for n in &names {
            assert!(
                script.contains(n.as_str()),
                "the {shell} completion script does not mention `{n}`"
            );
        }
    }
    let o = tv(nowhere, &["completions", "tcsh"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn man_pages_are_generated_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no-home");
    let o = tv(&nowhere, &["man"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let page = stdout(&o);
    assert!(
        page.contains(".TH tapevault 1"),
        "{}",
        &page[..page.len().min(300)]
    );
    assert!(page.contains("completions"));
    let out = dir.path().join("man1");
    let r = ok_json(&nowhere, &["man", "--out-dir", out.to_str().unwrap()]);
    let pages: Vec<&str> = r["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in [
        "tapevault.1",
        "tapevault-backup.1",
        "tapevault-library-erase.1",
        "tapevault-library-transfer.1",
    ] {
        assert!(pages.contains(&p), "{p} missing from {pages:?}");
        let text = std::fs::read_to_string(out.join(p)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{p}");
    }
    assert!(!nowhere.exists(), "no home is created");
}

#[test]
fn shipped_systemd_units_pass_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    let Some(analyze) = analyze else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    if !Path::new("/usr/bin/flock").exists() {
        eprintln!("skipped: /usr/bin/flock (util-linux), which the units run, is missing");
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for (file, as_name) in [
        ("tapevault-backup@.service", "tapevault-backup@vm1.service"),
        ("tapevault-backup@.timer", "tapevault-backup@vm1.timer"),
        ("tapevault-rotate.service", "tapevault-rotate.service"),
        ("tapevault-rotate.timer", "tapevault-rotate.timer"),
    ] {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        assert!(text.contains("/usr/local/bin/tapevault") || file.ends_with(".timer"));
        // The installed path does not exist here: verify against the built binary.
        let text = text.replace("/usr/local/bin/tapevault", BIN);
        let p = dir.path().join(as_name);
        std::fs::write(&p, text).unwrap();
        units.push(p);
    }
    let o = Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .args(&units)
        .output()
        .expect("run systemd-analyze");
    let err = stderr(&o);
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(dir.path().to_str().unwrap()) || l.contains("tapevault"))
        .collect();
    if !o.status.success() && err.contains("Failed to initialize manager") {
        eprintln!("skipped: systemd-analyze cannot run here: {err}");
        return;
    }
    assert!(o.status.success(), "systemd-analyze verify failed: {err}");
    assert!(ours.is_empty(), "systemd-analyze verify warns: {ours:?}");
}

// ---------------------------------------------------------------------------------
// 6. config.toml defaults and the job hook.

/// Put top-level keys into the home's config.toml (above its tables).
fn configure(home: &Path, lines: &str) {
    let p = home.join("config.toml");
    let old = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("{lines}\n{old}")).unwrap();
}

#[test]
fn default_pool_and_passphrase_file_come_from_config() {
    let v = Vault::init(&["--slots", "2", "--drives", "1", "--capacity", "8M"]);
    v.pool("p", "off");
    let r = v.fails(&["label", "TV0001L9"], 2);
    assert!(r.stderr.contains("default_pool"), "{}", r.stderr);
    std::fs::write(v.home.join("pass.txt"), "a passphrase from config\n").unwrap();
    configure(
        &v.home,
        "default_pool = \"p\"\npassphrase_file = \"pass.txt\"",
    );
    let l = v.ok(&["label", "TV0001L9"]);
    assert_eq!(l["pool"], "p");
    // No --passphrase-file and no $TAPEVAULT_PASSPHRASE: the config's file is used.
    v.ok(&["key", "create", "k"]);
    let ks = tapevault::crypto::Keystore::open(&v.home).unwrap();
    assert!(ks.unlock("k", b"a passphrase from config").is_ok());
    // The environment still wins over the config: a wrong one there is exit 5.
    let out = v.path("k.key");
    let o = v
        .command(&["key", "export", "k", "--out", out.to_str().unwrap()])
        .env("TAPEVAULT_PASSPHRASE", "not the configured passphrase")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let r = v.run(&["key", "export", "k", "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
}

fn hook_script(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("hook.sh");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn the_hook_gets_every_result_and_never_fails_the_job() {
    let v = Vault::init(&["--slots", "2", "--drives", "1", "--capacity", "8M"]);
    let got = v.path("got.json");
    let env = v.path("env.txt");
    let script = hook_script(
        &v.root,
        &format!(
            "cat > {}\necho \"$TAPEVAULT_HOOK_COMMAND $TAPEVAULT_HOOK_EXIT_CODE\" > {}\necho hook-says-hello",
            got.display(),
            env.display()
        ),
    );
    configure(&v.home, &format!("hook = \"{}\"", script.display()));

    // Text mode too: the hook gets the JSON result; stdout stays the command's own.
    let o = tv(&v.home, &["library", "status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stdout(&o).contains("hook-says-hello"));
    assert!(stderr(&o).contains("hook-says-hello"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&got).unwrap()).unwrap();
    assert_eq!(doc["command"], "library status");
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["hook_version"], 1);
    assert_eq!(
        doc["result"]["inventory"]["slots"][0]["barcode"],
        "TV0001L9"
    );
    assert_eq!(
        std::fs::read_to_string(&env).unwrap().trim(),
        "library status 0"
    );

    // A failing command: the hook sees the error document and the exit code.
    let r = v.fails(&["label", "TV0001L9", "--pool", "nope"], 2);
    assert!(r.stderr.contains("no pool named nope"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&got).unwrap()).unwrap();
    assert_eq!(doc["command"], "label");
    assert_eq!(doc["exit_code"], 2);
    assert_eq!(doc["result"]["kind"], r.json["kind"]);

    // A failing hook is a warning; the command keeps exit 0.
    hook_script(&v.root, "cat > /dev/null; exit 7");
    let r = v.run(&["library", "status"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("warning: the hook"), "{}", r.stderr);
    assert!(
        r.json["inventory"].is_object(),
        "stdout is still the result"
    );

    // A hook that hangs is stopped after hook_timeout_secs.
    hook_script(&v.root, "sleep 30");
    configure(&v.home, "hook_timeout_secs = 1");
    let r = v.run(&["library", "status"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("ran longer than 1 s"), "{}", r.stderr);

    // hook_on limits it to the commands named.
    std::fs::remove_file(&got).unwrap();
    hook_script(&v.root, &format!("cat > {}", got.display()));
    configure(&v.home, "hook_on = [\"library erase\", \"backup\"]");
    v.ok(&["library", "status"]);
    assert!(!got.exists(), "library status is not in hook_on");
    v.ok(&["library", "erase", "TV0002L9"]);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&got).unwrap()).unwrap();
    assert_eq!(doc["command"], "library erase");
    assert_eq!(doc["result"]["barcode"], "TV0002L9");
}
