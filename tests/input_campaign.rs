//! The bad-input campaign: a table of wrong inputs (manifests, UUIDs, paths of every
//! kind of file, changed-extents files with every kind of wrong content, times, sizes,
//! pool and key names), each run through the real binary against a home that already
//! holds a backup. Every one must end within a time limit (a hang fails the test, it
//! does not block it), exit with its documented code, name the offending value, never
//! panic, and leave the catalog exactly as it was (`catalog export` before and after).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use serde_json::Value;

/// One bad input.
struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Expected exit code.
    code: i32,
    /// Each must appear in stderr: the offending value (path, UUID, field, text).
    names: Vec<String>,
    /// Run as an unprivileged user (for permission cases when the tests run as root).
    unprivileged: bool,
}

/// The catalog as `catalog export` prints it, without its creation time.
fn export(v: &Vault) -> Value {
    let r = v.run(&["catalog", "export"]);
    assert_eq!(r.code, 0, "catalog export: {}", r.stderr);
    let mut j: Value = serde_json::from_str(&r.stdout).expect("catalog export is JSON");
    if let Some(o) = j.as_object_mut() {
        o.remove("created");
    }
    j
}

fn p(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[test]
fn every_bad_input_is_refused_cleanly_and_leaves_the_catalog_alone() {
    let v = Vault::small(3, "64M");
    v.pool("p", "off");
    let d = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 1);
    let e = TestDisk::create(v.path("e.img"), MIB, MIB, 2);
    let did = d.id.to_string();
    let eid = e.id.to_string();
    let good_cbt = v.path("good.json");
    write_changed_extents(&good_cbt, "*", "c1", &[(0, d.size())]);
    let full = v.backup(&d, "p", &["--changed-extents", &p(&good_cbt)]);
    assert_eq!(s(&full, "kind"), "full");

    let root = v.root.clone();
    let w = |name: &str, text: &str| -> String {
        let path = root.join(name);
        std::fs::write(&path, text).unwrap();
        p(&path)
    };
    let disk_toml = |id: &str, path: &str| format!("[[disk]]\nid = \"{id}\"\npath = \"{path}\"\n");
    let vm = |disks: &str| format!("name = \"vm\"\n{disks}");

    // Files of every kind.
    let dir = v.path("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let fifo = v.path("a.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let sock = v.path("a.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let missing = v.path("no-such.img");
    let link = v.path("link.img");
    std::os::unix::fs::symlink(&d.path, &link).unwrap();
    let hard = v.path("hard.img");
    std::fs::hard_link(&d.path, &hard).unwrap();
    let secret = v.path("secret.img");
    std::fs::write(&secret, vec![1u8; 65536]).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let in_file = d.path.join("x");

    let backup_disk = |path: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["backup", "--pool", "p", "--disk", path, "--disk-id", &did]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let backup_manifest = |m: &str| -> Vec<String> {
        ["backup", "--pool", "p", "--manifest", m]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let dpath = p(&d.path);
    let with_cbt =
        |name: &str, text: &str| backup_disk(&dpath, &["--changed-extents", &w(name, text)]);
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |c: Case| cases.push(c);
    let mk = |name: &'static str, args: Vec<String>, code: i32, names: &[&str]| Case {
        name,
        args,
        code,
        names: names.iter().map(|s| s.to_string()).collect(),
        unprivileged: false,
    };

    // --- Manifests ---
    let m = w("bad.toml", "name = \"vm\n[[disk]]\n");
    add(mk("manifest: bad TOML", backup_manifest(&m), 2, &[&m]));
    let m = w("noname.toml", &disk_toml(&did, &dpath));
    add(mk(
        "manifest: no name",
        backup_manifest(&m),
        2,
        &[&m, "name"],
    ));
    let m = w(
        "emptyname.toml",
        &format!("name = \"  \"\n{}", disk_toml(&did, &dpath)),
    );
    add(mk(
        "manifest: empty name",
        backup_manifest(&m),
        2,
        &[&m, "name"],
    ));
    let m = w("nodisk.toml", "name = \"vm\"\n");
    add(mk(
        "manifest: no disk",
        backup_manifest(&m),
        2,
        &[&m, "disk"],
    ));
    let m = w("noid.toml", &vm(&format!("[[disk]]\npath = \"{dpath}\"\n")));
    add(mk(
        "manifest: disk without id",
        backup_manifest(&m),
        2,
        &[&m, "id"],
    ));
    let m = w("nopath.toml", &vm(&format!("[[disk]]\nid = \"{did}\"\n")));
    add(mk(
        "manifest: disk without path",
        backup_manifest(&m),
        2,
        &[&m, "path"],
    ));
    let m = w("emptypath.toml", &vm(&disk_toml(&did, "")));
    add(mk(
        "manifest: empty path",
        backup_manifest(&m),
        2,
        &[&m, "path"],
    ));
    let m = w(
        "typo.toml",
        &vm(&format!(
            "{}changed_extent = \"x.json\"\n",
            disk_toml(&did, &dpath)
        )),
    );
    add(mk(
        "manifest: misspelt key",
        backup_manifest(&m),
        2,
        &[&m, "changed_extent"],
    ));
    let m = w("baduuid.toml", &vm(&disk_toml("not-a-uuid", &dpath)));
    add(mk(
        "manifest: bad UUID",
        backup_manifest(&m),
        2,
        &["not-a-uuid"],
    ));
    let m = w(
        "niluuid.toml",
        &vm(&disk_toml("00000000-0000-0000-0000-000000000000", &dpath)),
    );
    add(mk(
        "manifest: nil UUID",
        backup_manifest(&m),
        2,
        &["disk[0].id", "nil"],
    ));
    let m = w(
        "dupid.toml",
        &vm(&format!(
            "{}{}",
            disk_toml(&did, &dpath),
            disk_toml(&did, &p(&e.path))
        )),
    );
    add(mk(
        "manifest: same UUID twice",
        backup_manifest(&m),
        2,
        &[&did],
    ));
    let m = w(
        "samefile.toml",
        &vm(&format!(
            "{}{}",
            disk_toml(&did, "d.img"),
            disk_toml(&eid, "./d.img")
        )),
    );
    add(mk(
        "manifest: same file as d.img and ./d.img",
        backup_manifest(&m),
        2,
        &[&did, &eid, "same file"],
    ));
    let m = w(
        "symlink.toml",
        &vm(&format!(
            "{}{}",
            disk_toml(&did, &dpath),
            disk_toml(&eid, &p(&link))
        )),
    );
    add(mk(
        "manifest: same file through a symlink",
        backup_manifest(&m),
        2,
        &[&did, &eid, &p(&link)],
    ));
    let m = w(
        "hardlink.toml",
        &vm(&format!(
            "{}{}",
            disk_toml(&did, &dpath),
            disk_toml(&eid, &p(&hard))
        )),
    );
    add(mk(
        "manifest: same file through a hard link",
        backup_manifest(&m),
        2,
        &[&did, &eid, &p(&hard)],
    ));
    let m = w("missingdisk.toml", &vm(&disk_toml(&did, &p(&missing))));
    add(mk(
        "manifest: disk file missing",
        backup_manifest(&m),
        2,
        &[&p(&missing)],
    ));
    add(mk(
        "manifest: missing",
        backup_manifest(&p(&v.path("none.toml"))),
        2,
        &[&p(&v.path("none.toml"))],
    ));
    add(mk(
        "manifest: a directory",
        backup_manifest(&p(&dir)),
        2,
        &[&p(&dir), "directory"],
    ));
    add(mk(
        "manifest: a FIFO",
        backup_manifest(&p(&fifo)),
        2,
        &[&p(&fifo), "FIFO"],
    ));
    let m = w("empty.toml", "");
    add(mk(
        "manifest: empty file",
        backup_manifest(&m),
        2,
        &[&m, "name"],
    ));

    // --- Disk paths of every kind ---
    add(mk(
        "disk: missing",
        backup_disk(&p(&missing), &[]),
        2,
        &[&p(&missing)],
    ));
    add(mk(
        "disk: a directory",
        backup_disk(&p(&dir), &[]),
        2,
        &[&p(&dir), "directory"],
    ));
    add(mk(
        "disk: a FIFO",
        backup_disk(&p(&fifo), &[]),
        2,
        &[&p(&fifo), "FIFO"],
    ));
    add(mk(
        "disk: a unix socket",
        backup_disk(&p(&sock), &[]),
        2,
        &[&p(&sock), "socket"],
    ));
    add(mk(
        "disk: /dev/null (character device)",
        backup_disk("/dev/null", &[]),
        2,
        &["/dev/null", "character device"],
    ));
    add(mk(
        "disk: path through a file",
        backup_disk(&p(&in_file), &[]),
        2,
        &[&p(&in_file)],
    ));
    let mut unreadable = mk(
        "disk: unreadable",
        backup_disk(&p(&secret), &[]),
        2,
        &[&p(&secret), "ermission"],
    );
    unreadable.unprivileged = true;
    add(unreadable);
    add(mk(
        "disk: --disk-id not a UUID",
        vec![
            "backup".into(),
            "--pool".into(),
            "p".into(),
            "--disk".into(),
            dpath.clone(),
            "--disk-id".into(),
            "disk-zero".into(),
        ],
        2,
        &["disk-zero"],
    ));

    // --- Changed-extents files ---
    let size = d.size().to_string();
    add(mk(
        "changed: beyond the disk",
        with_cbt(
            "beyond.json",
            &format!(
                r#"{{"from_change_id":"c1","change_id":"c2","changed_area":[{{"start":{},"length":65536}}]}}"#,
                d.size() - 4096
            ),
        ),
        2,
        &["changed_area[0]", &size],
    ));
    add(mk(
        "changed: start + length overflows",
        with_cbt(
            "overflow.json",
            r#"{"from_change_id":"c1","change_id":"c2","changed_area":[{"start":18446744073709551615,"length":2}]}"#,
        ),
        2,
        &["18446744073709551615"],
    ));
    add(mk(
        "changed: later area beyond the disk",
        with_cbt(
            "beyond2.json",
            &format!(
                r#"{{"from_change_id":"c1","change_id":"c2","changed_area":[{{"start":0,"length":4096}},{{"start":{},"length":1}}]}}"#,
                d.size()
            ),
        ),
        2,
        &["changed_area[1]"],
    ));
    add(mk(
        "changed: negative start",
        with_cbt(
            "negative.json",
            r#"{"from_change_id":"c1","change_id":"c2","changed_area":[{"start":-4096,"length":4096}]}"#,
        ),
        2,
        &["-4096"],
    ));
    add(mk(
        "changed: non-numeric length",
        with_cbt(
            "nonnum.json",
            r#"{"from_change_id":"c1","change_id":"c2","changed_area":[{"start":0,"length":"lots"}]}"#,
        ),
        2,
        &["lots"],
    ));
    add(mk(
        "changed: fractional start",
        with_cbt(
            "fraction.json",
            r#"{"from_change_id":"c1","change_id":"c2","changed_area":[{"start":1.5,"length":4096}]}"#,
        ),
        2,
        &["1.5"],
    ));
    add(mk(
        "changed: area without length",
        with_cbt(
            "nolength.json",
            r#"{"from_change_id":"c1","change_id":"c2","changed_area":[{"start":0}]}"#,
        ),
        2,
        &["length"],
    ));
    add(mk(
        "changed: changed_area not an array",
        with_cbt(
            "notarray.json",
            r#"{"from_change_id":"c1","change_id":"c2","changed_area":{"start":0}}"#,
        ),
        2,
        &["changed_area", "notarray.json"],
    ));
    let other = uuid::Uuid::new_v4().to_string();
    add(mk(
        "changed: names another disk",
        with_cbt(
            "otherdisk.json",
            &format!(
                r#"{{"disk_id":"{other}","from_change_id":"c1","change_id":"c2","changed_area":[]}}"#
            ),
        ),
        2,
        &[&other, &did],
    ));
    add(mk(
        "changed: disk_id not a UUID",
        with_cbt(
            "baddiskid.json",
            r#"{"disk_id":"disk-b","from_change_id":"c1","change_id":"c2","changed_area":[]}"#,
        ),
        2,
        &["disk-b"],
    ));
    let long = "x".repeat(600);
    add(mk(
        "changed: change_id longer than the format's 512 bytes",
        with_cbt(
            "longid.json",
            &format!(r#"{{"from_change_id":"c1","change_id":"{long}","changed_area":[]}}"#),
        ),
        2,
        &["change_id", "600", "512"],
    ));
    add(mk(
        "changed: from_change_id longer than 512 bytes",
        with_cbt(
            "longfrom.json",
            &format!(r#"{{"from_change_id":"{long}","change_id":"c2","changed_area":[]}}"#),
        ),
        2,
        &["from_change_id", "600"],
    ));
    add(mk(
        "changed: empty change_id",
        with_cbt(
            "emptyid.json",
            r#"{"from_change_id":"c1","change_id":" ","changed_area":[]}"#,
        ),
        2,
        &["change_id", "empty"],
    ));
    add(mk(
        "changed: missing changed_area",
        with_cbt("noarea.json", r#"{"from_change_id":"c1","change_id":"c2"}"#),
        2,
        &["changed_area"],
    ));
    add(mk(
        "changed: bad JSON",
        with_cbt("badjson.json", r#"{"from_change_id":"c1","change_id":"#),
        2,
        &["badjson.json"],
    ));
    add(mk(
        "changed: empty file",
        with_cbt("empty.json", ""),
        2,
        &["empty.json"],
    ));
    add(mk(
        "changed: a JSON array",
        with_cbt("array.json", "[1, 2]"),
        2,
        &["array.json"],
    ));
    add(mk(
        "changed: trailing garbage",
        with_cbt(
            "trailing.json",
            r#"{"from_change_id":"c1","change_id":"c2","changed_area":[]} more"#,
        ),
        2,
        &["trailing.json"],
    ));
    add(mk(
        "changed: missing file",
        backup_disk(&dpath, &["--changed-extents", &p(&v.path("none.json"))]),
        2,
        &[&p(&v.path("none.json"))],
    ));
    add(mk(
        "changed: a FIFO",
        backup_disk(&dpath, &["--changed-extents", &p(&fifo)]),
        2,
        &[&p(&fifo), "FIFO"],
    ));
    add(mk(
        "changed: a directory",
        backup_disk(&dpath, &["--changed-extents", &p(&dir)]),
        2,
        &[&p(&dir), "directory"],
    ));
    add(mk(
        "changed: /dev/null",
        backup_disk(&dpath, &["--changed-extents", "/dev/null"]),
        2,
        &["/dev/null", "character device"],
    ));

    // --- Times, sizes, pool and key names ---
    let out = p(&v.path("restored.img"));
    for (name, at) in [
        ("time: words", "yesterday-ish"),
        ("time: month 13", "2026-13-45T10:00:00Z"),
        ("time: hour 25", "2026-12-01T25:00:00Z"),
    ] {
        add(mk(
            name,
            ["restore", "--disk", &did, "--at", at, "--to", &out]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            2,
            &[at],
        ));
    }
    for (name, cap) in [
        ("size: unknown unit", "12Q"),
        ("size: negative", "-5"),
        ("size: overflow", "99999999999T"),
    ] {
        add(mk(
            name,
            ["library", "add-cartridge", "--capacity", cap]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            2,
            &[cap],
        ));
    }
    add(mk(
        "pool: unknown for a backup",
        [
            "backup",
            "--pool",
            "nosuchpool",
            "--disk",
            &dpath,
            "--disk-id",
            &did,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        2,
        &["nosuchpool"],
    ));
    add(mk(
        "pool: unknown to show",
        ["pool", "show", "nosuchpool"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        2,
        &["nosuchpool"],
    ));
    add(mk(
        "pool: bad compression level",
        ["pool", "create", "q", "--compression", "zstd:99"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        2,
        &["99"],
    ));
    add(mk(
        "key: unknown for a new pool",
        ["pool", "create", "q", "--encrypt-key", "nosuchkey"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        5,
        &["nosuchkey"],
    ));
    add(mk(
        "restore: disk id not a UUID",
        ["restore", "--disk", "disk-zero", "--to", &out]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        2,
        &["disk-zero"],
    ));

    assert!(cases.len() >= 40, "the campaign has {} cases", cases.len());
    let mut before = export(&v);
    let mut failures = Vec::new();
    for c in &cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let r = if c.unprivileged
            && std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
        {
            // Root reads any file: run as nobody (the home is not needed to refuse the
            // input, which is checked first).
            let mut cmd = std::process::Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
                .arg("--home")
                .arg(&v.home)
                .arg("--json")
                .args(&args)
                .stdin(std::process::Stdio::null());
            std::fs::set_permissions(&v.root, std::fs::Permissions::from_mode(0o755)).unwrap();
            let r = run_with_limit(cmd, HANG_LIMIT);
            std::fs::set_permissions(&v.root, std::fs::Permissions::from_mode(0o700)).unwrap();
            match r {
                Ok(r) if r.stderr.contains("setpriv:") => {
                    eprintln!(
                        "skipping {}: setpriv cannot drop privileges here: {}",
                        c.name, r.stderr
                    );
                    continue;
                }
                other => other,
            }
        } else {
            v.run_within(&args, &[], HANG_LIMIT)
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: HUNG: {e}", c.name));
                continue;
            }
        };
        let mut why = Vec::new();
        if r.code != c.code {
            why.push(format!("exit {} (expected {})", r.code, c.code));
        }
        if r.stderr.contains("panicked") {
            why.push("panicked".into());
        }
        for n in &c.names {
            if !r.stderr.contains(n.as_str()) {
                why.push(format!("stderr does not name {n:?}"));
            }
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {}\n    stderr: {}",
                c.name,
                why.join("; "),
                r.stderr.trim()
            ));
        }
        let after = export(&v);
        if after != before {
            failures.push(format!("{}: the catalog changed", c.name));
            // Compare the next cases with the catalog as it is now.
            before = after;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not handled cleanly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The pool is not left locked: the next good backup runs.
    let next = v.backup(&d, "p", &[]);
    assert_eq!(s(&next, "kind"), "incremental");
}

/// Areas that are unsorted, overlapping, of zero length or unaligned are not wrong:
/// the union of the areas (widened to tracking blocks) is read, and the restore is exact.
#[test]
fn unsorted_overlapping_and_unaligned_areas_are_read_as_their_union() {
    let v = Vault::small(2, "64M");
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("d.img"), 2 * MIB, MIB, 7);
    let cbt = v.path("cbt.json");
    let cbt_s = p(&cbt);
    write_changed_extents(&cbt, "*", "c1", &[(0, d.size())]);
    v.backup(&d, "p", &["--changed-extents", &cbt_s]);
    let areas = [
        (MIB + 100, 5000),
        (4096, 70_000),
        (10_000, 200),
        (MIB, 0),
        (20_000, 60_000),
    ];
    for &(o, l) in &areas {
        if l > 0 {
            d.write_random(o, l);
        }
    }
    write_changed_extents(&cbt, "c1", "c2", &areas);
    let inc = v.backup(&d, "p", &["--changed-extents", &cbt_s]);
    assert_eq!(s(&inc, "method"), "changed-extents", "{inc}");
    assert_eq!(
        u(&inc, "data_bytes") + u(&inc, "zero_bytes"),
        tracked_bytes(&areas, d.size())
    );
    let copy = v.path("expected.img");
    d.save_copy(&copy);
    let out = v.path("restored.img");
    let r = v.restore_image(d.id, s(&inc, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &copy, "restore after an unsorted, overlapping file");
}
