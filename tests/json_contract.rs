//! The JSON contract (docs/JSON.md): every command is run with `--json` on a real home
//! (a virtual library, pools, keys, backups) and what it prints is validated against its
//! schema in docs/schema/. The commands come from the CLI definition itself: a command
//! without a schema file, or that no step of this test runs, fails the test by name, so a
//! new command cannot ship without its documented output.
//!
//! Set `TAPEVAULT_CONTRACT_DUMP=DIR` to keep every document printed (one file per step).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use clap::CommandFactory;
use serde_json::Value;

mod common;
#[path = "common/jsonschema.rs"]
mod jsonschema;
#[path = "qmp_support/mod.rs"]
mod qmp_support;

use common::{s, TestDisk, Vault, MIB};
use jsonschema::Schemas;

/// Commands that print no JSON document, and why (each is still run to check that).
const NO_DOCUMENT: &[(&str, &str)] = &[
    ("completions", "prints a shell script"),
    (
        "man",
        "prints a man page (with --out-dir it prints a JSON document: man.json)",
    ),
];

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema")
}

/// A command path's schema file: "media pull-list" -> media-pull-list.json.
pub fn schema_file(command: &str) -> String {
    format!("{}.json", command.replace(' ', "-"))
}

fn leaf_commands(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    for s in cmd.get_subcommands() {
        if s.get_name() == "help" {
            continue;
        }
        let path = if prefix.is_empty() {
            s.get_name().to_string()
        } else {
            format!("{prefix} {}", s.get_name())
        };
        if s.get_subcommands().next().is_some() {
            leaf_commands(s, &path, out);
        } else {
            out.push(path);
        }
    }
}

struct Contract {
    schemas: Schemas,
    covered: BTreeMap<String, usize>,
    failures: Vec<String>,
    dump: Option<PathBuf>,
    step: usize,
}

impl Contract {
    fn new() -> Contract {
        let dump = std::env::var_os("TAPEVAULT_CONTRACT_DUMP").map(PathBuf::from);
        if let Some(d) = &dump {
            std::fs::create_dir_all(d).unwrap();
        }
        Contract {
            schemas: Schemas::new(&schema_dir()),
            covered: BTreeMap::new(),
            failures: Vec::new(),
            dump,
            step: 0,
        }
    }

    /// Validate one printed document: a result against its command's schema, an error
    /// against error.json. Every document names the schema version and the command.
    fn check(&mut self, command: &str, code: i32, stdout: &str, args: &[&str]) -> Value {
        self.step += 1;
        let doc: Value = match serde_json::from_str(stdout) {
            Ok(d) => d,
            Err(e) => {
                self.failures.push(format!(
                    "`{}`: stdout is not one JSON document ({e}): {stdout}",
                    args.join(" ")
                ));
                return Value::Null;
            }
        };
        if let Some(d) = &self.dump {
            std::fs::write(
                d.join(format!(
                    "{:03}-{}.json",
                    self.step,
                    command.replace(' ', "-")
                )),
                serde_json::to_string_pretty(&doc).unwrap(),
            )
            .unwrap();
        }
        let file = if code == 0 {
            schema_file(command)
        } else {
            "error.json".to_string()
        };
        if code == 0 {
            *self.covered.entry(command.to_string()).or_default() += 1;
        }
        if !self.schemas.exists(&file) {
            self.failures.push(format!(
                "`{command}` has no schema: docs/schema/{file} is missing"
            ));
            return doc;
        }
        match self.schemas.validate(&file, &doc) {
            Ok(errs) if errs.is_empty() => {}
            Ok(errs) => self.failures.push(format!(
                "`{}` (exit {code}) does not follow docs/schema/{file}:\n    {}\n  document: {}",
                args.join(" "),
                errs.join("\n    "),
                serde_json::to_string(&doc).unwrap()
            )),
            Err(e) => self.failures.push(e),
        }
        assert_eq!(doc["schema"], "tapevault/1", "`{}`: {doc}", args.join(" "));
        doc
    }

    /// Run a command that must succeed; validate and return its document.
    fn ok(&mut self, v: &Vault, command: &str, args: &[&str]) -> Value {
        let r = v.run(args);
        assert_eq!(
            r.code, 0,
            "tapevault {args:?} failed with exit {}\nstdout: {}\nstderr: {}",
            r.code, r.stdout, r.stderr
        );
        self.check(command, 0, &r.stdout, args)
    }

    /// Run a command that must fail with `code`; validate its error document.
    fn fails(&mut self, v: &Vault, command: &str, args: &[&str], code: i32) -> Value {
        let r = v.run(args);
        assert_eq!(
            r.code, code,
            "tapevault {args:?}: expected exit {code}, got {}\nstdout: {}\nstderr: {}",
            r.code, r.stdout, r.stderr
        );
        let d = self.check(command, code, &r.stdout, args);
        assert_eq!(d["exit_code"], code, "{d}");
        d
    }
}

fn write_passphrase(v: &Vault) -> String {
    let p = v.path("pass");
    std::fs::write(&p, "correct horse battery staple\n").unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn every_command_prints_its_documented_json() {
    let mut c = Contract::new();
    let v = Vault::init(&[
        "--slots",
        "8",
        "--drives",
        "2",
        "--mailslots",
        "2",
        "--cartridges",
        "6",
        "--capacity",
        "64M",
    ]);
    // init itself, into a second home (the first was made by Vault::init).
    {
        let other = v.path("home2");
        let o = other.to_string_lossy().into_owned();
        let r = std::process::Command::new(common::BIN)
            .args([
                "--json",
                "--home",
                &o,
                "init",
                "--slots",
                "2",
                "--capacity",
                "8M",
            ])
            .env_remove("TAPEVAULT_HOME")
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(0));
        c.check("init", 0, &String::from_utf8_lossy(&r.stdout), &["init"]);
    }
    let pass = write_passphrase(&v);
    let pf = ["--passphrase-file", pass.as_str()];
    let with_pass =
        |a: &[&str]| -> Vec<String> { pf.iter().chain(a.iter()).map(|s| s.to_string()).collect() };
    let run_p = |c: &mut Contract, command: &str, a: &[&str]| -> Value {
        let args = with_pass(a);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.ok(&v, command, &args)
    };

    // Keys and pools.
    run_p(&mut c, "key create", &["key", "create", "k"]);
    c.ok(&v, "key list", &["key", "list"]);
    let export = v.path("k.key");
    let ex = export.to_string_lossy().into_owned();
    run_p(&mut c, "key export", &["key", "export", "k", "--out", &ex]);
    c.ok(
        &v,
        "pool create",
        &["pool", "create", "p", "--compression", "off"],
    );
    c.ok(
        &v,
        "pool create",
        &[
            "pool",
            "create",
            "enc",
            "--encrypt-key",
            "k",
            "--escrow",
            "--retention",
            "7",
        ],
    );
    c.ok(
        &v,
        "pool update",
        &["pool", "update", "p", "--retention", "30"],
    );
    c.ok(&v, "pool list", &["pool", "list"]);
    c.ok(&v, "pool show", &["pool", "show", "p"]);
    let pools_toml = v.home.join("pools.toml");
    std::fs::write(
        &pools_toml,
        "[pools.p]\ncompression = \"off\"\nretention_days = 30\n\n[pools.fresh]\ncompression = \"zstd:3\"\n",
    )
    .unwrap();
    c.ok(&v, "pool apply", &["pool", "apply"]);
    c.ok(&v, "label", &["label", "TV0001L9", "--pool", "p"]);
    run_p(&mut c, "label", &["label", "TV0002L9", "--pool", "enc"]);

    // Backups: a manifest made by `manifest new`, then an incremental.
    let mut d1 = TestDisk::create(v.path("root.img"), 4 * MIB, MIB, 1);
    let d2 = TestDisk::create(v.path("data.img"), 2 * MIB, MIB / 2, 2);
    let manifest = v.path("web01.toml");
    let m = manifest.to_string_lossy().into_owned();
    let root_arg = format!("root={}", d1.path.display());
    let data_arg = format!("data={}", d2.path.display());
    c.ok(
        &v,
        "manifest new",
        &[
            "manifest", "new", "--vm", "web01", "--disk", &root_arg, "--disk", &data_arg, "--out",
            &m,
        ],
    );
    let checked = c.ok(&v, "manifest check", &["manifest", "check", &m]);
    let root_id = checked["disks"][0]["disk"].as_str().unwrap().to_string();
    c.ok(&v, "backup", &["backup", "--manifest", &m, "--pool", "p"]);
    d1.random_writes(4, 64 * 1024);
    let inc = c.ok(&v, "backup", &["backup", "--manifest", &m, "--pool", "p"]);
    let image = s(&inc["images"][0], "image").to_string();
    let session = s(&inc, "session").to_string();
    let _ = session;
    let enc_disk = TestDisk::create(v.path("enc.img"), MIB, MIB / 2, 3);
    let ep = enc_disk.path.to_string_lossy().into_owned();
    let eid = enc_disk.id.to_string();
    run_p(
        &mut c,
        "backup",
        &[
            "backup",
            "--disk",
            &ep,
            "--disk-id",
            &eid,
            "--vm",
            "db01",
            "--pool",
            "enc",
        ],
    );

    c.ok(&v, "pool show", &["pool", "show", "p"]);

    // Images, restore, verify.
    c.ok(&v, "images", &["images"]);
    c.ok(&v, "images", &["images", "--disk", "web01/root"]);
    let to = v.path("restored.img").to_string_lossy().into_owned();
    c.ok(&v, "restore", &["restore", "--disk", &root_id, "--to", &to]);
    c.ok(&v, "verify", &["verify", "--image", &image]);
    c.ok(&v, "verify", &["verify", "--barcode", "TV0001L9"]);

    // Media.
    c.ok(&v, "media list", &["media", "list"]);
    c.ok(&v, "media show", &["media", "show", "TV0001L9"]);
    c.ok(
        &v,
        "media pull-list",
        &["media", "pull-list", "--disk", &root_id],
    );
    c.ok(&v, "media offsite", &["media", "offsite"]);
    c.ok(&v, "media due", &["media", "due"]);

    // The catalog.
    c.ok(
        &v,
        "catalog backup",
        &["catalog", "backup", "--barcode", "TV0001L9"],
    );
    let exp = v.path("catalog.json").to_string_lossy().into_owned();
    c.ok(&v, "catalog export", &["catalog", "export", "--out", &exp]);
    c.ok(&v, "catalog check", &["catalog", "check"]);
    c.ok(&v, "catalog check", &["catalog", "check", "--media"]);
    run_p(&mut c, "catalog rebuild", &["catalog", "rebuild"]);

    // Key recovery from the escrow on an encrypted cartridge, and import of an export.
    run_p(
        &mut c,
        "key recover",
        &["key", "recover", "TV0002L9", "--name", "again"],
    );
    {
        let other = v.path("home3");
        let o = other.to_string_lossy().into_owned();
        let st = std::process::Command::new(common::BIN)
            .args(["--home", &o, "init", "--slots", "1", "--capacity", "8M"])
            .env_remove("TAPEVAULT_HOME")
            .output()
            .unwrap();
        assert_eq!(st.status.code(), Some(0));
        let r = std::process::Command::new(common::BIN)
            .args(["--json", "--home", &o, "key", "import", &ex])
            .env_remove("TAPEVAULT_HOME")
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(0), "{:?}", r);
        c.check(
            "key import",
            0,
            &String::from_utf8_lossy(&r.stdout),
            &["key", "import"],
        );
    }

    // A new passphrase for the key (nothing after this unlocks it with the old one).
    let newpass = v.path("newpass");
    std::fs::write(&newpass, "a different fine passphrase\n").unwrap();
    let np = newpass.to_string_lossy().into_owned();
    run_p(
        &mut c,
        "key change-passphrase",
        &[
            "key",
            "change-passphrase",
            "k",
            "--new-passphrase-file",
            &np,
        ],
    );

    // Copies: the root disk's points into a second pool (two drives: one reads while
    // the other writes); a second run finds them copied. A restore or pull list then
    // says which copy of each point it reads (`used`).
    c.ok(
        &v,
        "pool create",
        &["pool", "create", "p2", "--compression", "off"],
    );
    c.ok(&v, "label", &["label", "TV0006L9", "--pool", "p2"]);
    let copied = c.ok(&v, "copy", &["copy", "--disk", &root_id, "--to-pool", "p2"]);
    assert_eq!(copied["copied"].as_array().unwrap().len(), 2, "{copied}");
    let again = c.ok(&v, "copy", &["copy", "--disk", &root_id, "--to-pool", "p2"]);
    assert_eq!(
        again["already_copied"].as_array().unwrap().len(),
        2,
        "{again}"
    );
    assert!(again["session"].is_null(), "{again}");
    let pulled = c.ok(
        &v,
        "media pull-list",
        &["media", "pull-list", "--disk", &root_id],
    );
    assert_eq!(pulled["used"].as_array().unwrap().len(), 2, "{pulled}");

    // Offsite and back: export the set, vault it, return it.
    c.ok(&v, "media export", &["media", "export", "TV0001L9"]);
    c.ok(
        &v,
        "media vault",
        &["media", "vault", "TV0001L9", "--location", "offsite"],
    );
    c.ok(&v, "media offsite", &["media", "offsite"]);
    // Months later: retention is over, so something is due back and rotation has work.
    for (cmd, args) in [("media due", ["media", "due"]), ("rotate", ["rotate", ""])] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let r = v
            .command(&args)
            .env("TAPEVAULT_NOW", "2027-09-01T00:00:00Z")
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(0), "{args:?}: {r:?}");
        c.check(cmd, 0, &String::from_utf8_lossy(&r.stdout), &args);
    }
    c.ok(&v, "media return", &["media", "return", "TV0001L9"]);
    c.ok(&v, "rotate", &["rotate"]);
    c.ok(&v, "media retire", &["media", "retire", "TV0005L9"]);
    c.ok(&v, "media damaged", &["media", "damaged", "TV0006L9"]);

    // The library.
    c.ok(&v, "library status", &["library", "status"]);
    c.ok(
        &v,
        "library load",
        &["library", "load", "TV0003L9", "--drive", "0"],
    );
    // Low-level tape operations on the loaded scratch cartridge.
    for (cmd, a) in [
        ("tape status", vec!["status"]),
        ("tape weof", vec!["weof", "2"]),
        ("tape rewind", vec!["rewind"]),
        ("tape fsf", vec!["fsf", "1"]),
        ("tape bsf", vec!["bsf", "1"]),
        ("tape eod", vec!["eod"]),
        ("tape tell", vec!["tell"]),
        ("tape seek", vec!["seek", "0"]),
        ("tape fsr", vec!["fsr", "0"]),
        ("tape bsr", vec!["bsr", "0"]),
        ("tape read", vec!["read", "--count", "1"]),
        ("tape probe", vec!["probe"]),
        (
            "tape conformance",
            vec!["conformance", "--destroy-data", "--blocks", "8"],
        ),
    ] {
        let mut args = vec!["tape", "--drive", "0"];
        args.extend(a);
        c.ok(&v, cmd, &args);
    }
    c.ok(
        &v,
        "library unload",
        &["library", "unload", "--drive", "0", "--slot", "6"],
    );
    c.ok(&v, "library transfer", &["library", "transfer", "6", "7"]);
    c.ok(
        &v,
        "library erase",
        &["library", "erase", "TV0003L9", "--force"],
    );
    c.ok(&v, "library export", &["library", "export", "TV0004L9"]);
    c.ok(&v, "library import", &["library", "import"]);
    c.ok(&v, "library eject", &["library", "eject", "TV0004L9"]);
    c.ok(&v, "library insert", &["library", "insert", "TV0004L9"]);
    c.ok(&v, "library import", &["library", "import"]);
    c.ok(&v, "library export", &["library", "export", "TV0004L9"]);
    c.ok(&v, "library remove", &["library", "remove", "TV0004L9"]);
    c.ok(&v, "library add-cartridge", &["library", "add-cartridge"]);
    serve(&mut c, &v);

    // Generators.
    let pages = v.path("man").to_string_lossy().into_owned();
    c.ok(&v, "man", &["man", "--out-dir", &pages]);
    for (cmd, args) in [
        ("completions", vec!["completions", "bash"]),
        ("man", vec!["man"]),
    ] {
        let r = v.run(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(!r.stdout.trim().is_empty(), "`{cmd}` prints its text");
    }

    // Errors: a usage error found by the argument parser, one found by a command, and
    // the nearest values a lookup names.
    c.fails(&v, "restore", &["restore", "--disk"], 2);
    let to2 = v.path("restored2.img").to_string_lossy().into_owned();
    let e = c.fails(
        &v,
        "restore",
        &["restore", "--disk", "nosuchvm/root", "--to", &to2],
        2,
    );
    assert!(
        e["error"].as_str().unwrap().contains("web01/root"),
        "an unknown VM/LABEL names the known disks: {e}"
    );
    // A unique prefix of a disk's UUID names it; so does VM/LABEL.
    let prefix = &root_id[..8];
    let by_prefix = c.ok(&v, "images", &["images", "--disk", prefix]);
    assert_eq!(by_prefix["disks"][0]["disk"], root_id.as_str());
    c.fails(&v, "pool show", &["pool", "show", "nope"], 2);

    // The job history (every command above that is a job is in it) and what needs
    // attention now.
    let jobs = c.ok(&v, "jobs", &["jobs"]);
    assert!(!jobs["jobs"].as_array().unwrap().is_empty(), "{jobs}");
    let failed = c.ok(&v, "jobs", &["jobs", "--failed"]);
    assert!(
        failed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["result"] != "ok"),
        "{failed}"
    );
    c.ok(&v, "status", &["status"]);

    // A running VM's disks, from a TCG QEMU's QMP socket; without QEMU, the error a
    // socket nobody listens on gives.
    vm_disks(&mut c, &v);

    // Every command the CLI defines has a schema and was run here.
    let mut leaves = Vec::new();
    leaf_commands(&tapevault::cli::Cli::command(), "", &mut leaves);
    let no_doc: BTreeSet<&str> = NO_DOCUMENT.iter().map(|(c, _)| *c).collect();
    let mut missing_schema = Vec::new();
    let mut not_run = Vec::new();
    for l in &leaves {
        if no_doc.contains(l.as_str()) && l != "man" {
            continue;
        }
        if !schema_dir().join(schema_file(l)).is_file() {
            missing_schema.push(format!("{l} (docs/schema/{})", schema_file(l)));
        }
        if !c.covered.contains_key(l) {
            not_run.push(l.clone());
        }
    }
    let mut report = Vec::new();
    if !missing_schema.is_empty() {
        report.push(format!(
            "commands without a schema: {}",
            missing_schema.join(", ")
        ));
    }
    if !not_run.is_empty() {
        report.push(format!(
            "commands this test does not run (add a step): {}",
            not_run.join(", ")
        ));
    }
    report.extend(c.failures.iter().cloned());
    assert!(report.is_empty(), "{}", report.join("\n\n"));
}

/// The validator is not a rubber stamp: drift in a name, a type, a time's form or a
/// location's shape is caught.
#[test]
fn the_schemas_catch_drift() {
    let mut sc = Schemas::new(&schema_dir());
    let good = serde_json::json!({
        "schema": "tapevault/1", "command": "media retire", "barcode": "TV0001L9",
        "previous_state": "full", "state": "retired", "restore_points": 2
    });
    assert_eq!(
        sc.validate("media-retire.json", &good).unwrap(),
        Vec::<String>::new()
    );
    let mut renamed = good.clone();
    renamed["from"] = renamed["previous_state"].take();
    renamed.as_object_mut().unwrap().remove("previous_state");
    assert!(!sc
        .validate("media-retire.json", &renamed)
        .unwrap()
        .is_empty());
    let mut bad_state = good.clone();
    bad_state["state"] = "gone".into();
    assert!(!sc
        .validate("media-retire.json", &bad_state)
        .unwrap()
        .is_empty());
    let mut old = good.clone();
    old["schema"] = "tapevault/0".into();
    assert!(!sc.validate("media-retire.json", &old).unwrap().is_empty());
    assert!(jsonschema::is_time("2026-12-03T16:48:16.520000Z"));
    assert!(!jsonschema::is_time("2026-12-03T16:48:16Z"));
    assert!(!jsonschema::is_time("2026-12-03T16:48:16.520000123Z"));
    let text_location = serde_json::json!({
        "schema": "tapevault/1", "command": "library unload", "barcode": "A",
        "drive": 0, "to": "slot 3"
    });
    assert!(!sc
        .validate("library-unload.json", &text_location)
        .unwrap()
        .is_empty());
    let err =
        serde_json::json!({"schema": "tapevault/1", "error": "x", "kind": "usage", "exit_code": 2});
    assert_eq!(
        sc.validate("error.json", &err).unwrap(),
        Vec::<String>::new()
    );
    let mut no_code = err.clone();
    no_code.as_object_mut().unwrap().remove("exit_code");
    assert!(!sc.validate("error.json", &no_code).unwrap().is_empty());
}

/// `vm disks` against a real QEMU (when installed) and against a missing socket.
fn vm_disks(c: &mut Contract, v: &Vault) {
    let e = c.fails(
        v,
        "vm disks",
        &["vm", "disks", "--qmp", "/nonexistent/qmp.sock"],
        1,
    );
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/qmp.sock"),
        "{e}"
    );
    // --libvirt against a libvirtd that is not there: the error names the domain.
    let nobody = "qemu+unix:///system?socket=/nonexistent/libvirt-sock";
    let e = c.fails(
        v,
        "vm disks",
        &["vm", "disks", "--libvirt", "tv-none", "--connect", nobody],
        1,
    );
    assert!(
        e["error"].as_str().unwrap().contains("--libvirt tv-none"),
        "{e}"
    );
    let e = c.fails(
        v,
        "backup",
        &[
            "backup",
            "--libvirt",
            "tv-none",
            "--connect",
            nobody,
            "--pool",
            "p",
        ],
        1,
    );
    assert!(
        e["error"].as_str().unwrap().contains("--libvirt tv-none"),
        "{e}"
    );
    if qmp_support::qemu_missing() {
        eprintln!("skipped: `vm disks` against a running VM (no QEMU): only its error document was checked");
        return;
    }
    let dir = v.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let vm = qmp_support::Vm::start(
        &dir,
        &[("d0", 16 * MIB, "SER-A"), ("d1", 8 * MIB, "SER-B")],
        false,
    );
    let qmp = vm.qmp.to_string_lossy().into_owned();
    let d = c.ok(v, "vm disks", &["vm", "disks", "--qmp", &qmp]);
    let disks = d["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{d}");
    assert_eq!(disks[0]["serial"], "SER-A", "{d}");
    assert_eq!(disks[0]["size"], 16 * MIB, "{d}");
    drop(vm);
}

/// `library serve` prints its document when listening, then runs until SIGTERM.
fn serve(c: &mut Contract, v: &Vault) {
    let args = ["library", "serve", "--listen", "127.0.0.1:0"];
    let mut child = v
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap_or(0) > 0 {
        text.push_str(&line);
        let done = line.starts_with('}');
        line.clear();
        if done {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "serve stops cleanly on SIGTERM");
    c.check("library serve", 0, &text, &args);
}
