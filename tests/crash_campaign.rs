//! Crash campaign, through the binary: a backup is cut off at many points spread over
//! its run, on a clear, a zstd and an encrypted pool, with small virtual cartridges so
//! that the run spans two of them. Most cuts are power cuts injected into the
//! simulated drive (`faults.json` of the cartridge, `power_cut_after_bytes`: the
//! drive loses power part way through a block, exactly N bytes of block data into the
//! run); some are a real SIGKILL of the backup process while its writes are slowed.
//!
//! After every cut, in a copy of the same starting state:
//! * every earlier restore point (a full and an incremental) restores bit-identical;
//! * the cut image is not complete (unless the cut fell after its trailer was
//!   committed, and then it restores bit-identical), and no reader shows it running;
//! * the next backup builds on an older complete image (never on the cut one) and
//!   restores bit-identical;
//! * `catalog check` finds no problem.
//!
//! The counts are in docs/RELIABILITY.md. `CRASH_POINTS=N` changes the number of
//! power-cut points per pool (default 64).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_same_bytes, copy_dir, Run, TestDisk, BIN, KIB, MIB};
use serde_json::Value;

const PASS: &str = "crash campaign passphrase";
const DISK: u64 = 3 * MIB;

fn tv_cmd(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--home")
        .arg(home)
        .arg("--json")
        .args(args)
        .env_remove("TAPEVAULT_HOME")
        .env_remove("TAPEVAULT_NOW")
        .env("TAPEVAULT_PASSPHRASE", PASS)
        .stdin(Stdio::null());
    c
}

fn tv(home: &Path, args: &[&str]) -> Run {
    let o = tv_cmd(home, args).output().expect("run tapevault");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    Run {
        code: o.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(home: &Path, args: &[&str]) -> Value {
    let r = tv(home, args);
    assert_eq!(
        r.code, 0,
        "tapevault {args:?}: exit {}\n{}\n{}",
        r.code, r.stdout, r.stderr
    );
    r.json
}

/// The starting state of every point: a home and its library with a full and an
/// incremental of a disk, and the disk changed again for the run that is cut.
struct Template {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    pool: String,
    disk: PathBuf,
    disk_id: String,
    /// Earlier restore points: (image, expected bytes).
    points: Vec<(String, PathBuf)>,
    /// Block data the cut run writes to each cartridge, in the order it writes them.
    run: Vec<(String, u64)>,
}

fn cart_dir(lib: &Path, bc: &str) -> PathBuf {
    lib.join("cartridges").join(bc)
}

fn data_lens(lib: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(lib.join("cartridges"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let len = std::fs::metadata(e.path().join("data"))
                .map(|m| m.len())
                .unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    v.sort();
    v
}

impl Template {
    fn new(kind: &str, seed: u64) -> Template {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let (home, lib) = (root.join("home"), root.join("lib"));
        // 6 MiB cartridges with 768 KiB early warning (the simulator allows at most an
        // eighth of the capacity; it must exceed one 512 KiB record): the cut run
        // spans two.
        ok(
            &home,
            &[
                "init",
                "--library",
                lib.to_str().unwrap(),
                "--slots",
                "4",
                "--drives",
                "1",
                "--capacity",
                "6M",
                "--early-warning",
                "768K",
            ],
        );
        let pool = kind.to_string();
        match kind {
            "clear" => ok(&home, &["pool", "create", &pool, "--compression", "off"]),
            "zstd" => ok(&home, &["pool", "create", &pool, "--compression", "zstd:3"]),
            "encrypted" => {
                ok(&home, &["key", "create", "k"]);
                ok(&home, &["pool", "create", &pool, "--encrypt-key", "k"])
            }
            _ => unreachable!(),
        };
        let mut d = TestDisk::create(root.join("d.img"), DISK, DISK, seed);
        // A compressible area, so the zstd pool has something to compress.
        {
            use std::os::unix::fs::FileExt;
            let text: Vec<u8> = b"tapevault crash campaign "
                .iter()
                .copied()
                .cycle()
                .take(256 * KIB as usize)
                .collect();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&d.path)
                .unwrap();
            f.write_all_at(&text, MIB).unwrap();
        }
        let disk_id = d.id.to_string();
        let path = d.path.to_string_lossy().into_owned();
        let backup = |extra: &[&str]| {
            let mut a = vec![
                "backup",
                "--disk",
                &path,
                "--disk-id",
                &disk_id,
                "--pool",
                &pool,
            ];
            a.extend_from_slice(extra);
            let j = ok(&home, &a);
            j["images"][0]["image"].as_str().unwrap().to_string()
        };
        let mut points = Vec::new();
        let full = backup(&[]);
        let c0 = root.join("p0.copy");
        d.save_copy(&c0);
        points.push((full, c0));
        d.write_random(256 * KIB, 256 * KIB);
        let inc = backup(&[]);
        let c1 = root.join("p1.copy");
        d.save_copy(&c1);
        points.push((inc, c1));
        // The content of the run that is cut.
        d.write_random(0, 128 * KIB);
        d.write_random(DISK - 512 * KIB, 384 * KIB);
        let mut t = Template {
            root: root.clone(),
            pool,
            disk: d.path.clone(),
            disk_id: disk_id.clone(),
            points,
            run: Vec::new(),
            _tmp: tmp,
        };
        // A dry run in a copy: what the run writes where.
        let w = t.work("dry");
        let before = data_lens(&w.lib);
        let r = tv(&w.home, &t.cut_run_args());
        assert_eq!(r.code, 0, "dry run: {}\n{}", r.stdout, r.stderr);
        let after = data_lens(&w.lib);
        let mut run: Vec<(String, u64, u64)> = after
            .iter()
            .map(|(bc, a)| {
                let b = before.iter().find(|x| &x.0 == bc).map_or(0, |x| x.1);
                (bc.clone(), b, a - b)
            })
            .filter(|x| x.2 > 0)
            .collect();
        // The cartridge already in use first, then the new ones by barcode (the order
        // the allocator takes blanks in).
        run.sort_by_key(|x| (x.1 == 0, x.0.clone()));
        t.run = run.into_iter().map(|(bc, _, n)| (bc, n)).collect();
        assert!(
            t.run.len() >= 2,
            "the cut run must span cartridges: {:?}",
            t.run
        );
        std::fs::remove_dir_all(w.root).unwrap();
        t
    }

    fn total(&self) -> u64 {
        self.run.iter().map(|x| x.1).sum()
    }

    fn cut_run_args(&self) -> Vec<&str> {
        vec![
            "backup",
            "--disk",
            self.disk.to_str().unwrap(),
            "--disk-id",
            &self.disk_id,
            "--pool",
            &self.pool,
            "--full",
        ]
    }

    /// A copy of the starting state to cut a run in.
    fn work(&self, name: &str) -> Work {
        let root = self.root.join(name);
        let _ = std::fs::remove_dir_all(&root);
        let (home, lib) = (root.join("home"), root.join("lib"));
        copy_dir(&self.root.join("home"), &home);
        copy_dir(&self.root.join("lib"), &lib);
        let cfg = home.join("config.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let old = self.root.join("lib");
        let text = text.replace(old.to_str().unwrap(), lib.to_str().unwrap());
        assert!(text.contains(lib.to_str().unwrap()), "{text}");
        std::fs::write(&cfg, text).unwrap();
        Work { root, home, lib }
    }
}

struct Work {
    root: PathBuf,
    home: PathBuf,
    lib: PathBuf,
}

fn images(home: &Path) -> Vec<Value> {
    let j = ok(home, &["images"]);
    let mut out = Vec::new();
    for d in j["disks"].as_array().unwrap() {
        for c in d["chains"].as_array().unwrap() {
            out.extend(c["images"].as_array().unwrap().iter().cloned());
        }
    }
    out
}

fn restores(w: &Work, disk_id: &str, image: &str, expected: &Path, what: &str) {
    let out = w.root.join(format!("{}.restored", &image[..8]));
    let r = tv(
        &w.home,
        &[
            "restore",
            "--disk",
            disk_id,
            "--image",
            image,
            "--to",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        r.code, 0,
        "{what}: restore {image}: {}\n{}",
        r.stdout, r.stderr
    );
    assert_same_bytes(&out, expected, what);
    std::fs::remove_file(out).unwrap();
}

/// Everything checked after a cut (see the module doc). Returns whether the cut run
/// left a complete image.
fn check_after_cut(t: &Template, w: &Work, what: &str, cut_exit: i32) -> bool {
    let earlier: HashSet<&str> = t.points.iter().map(|p| p.0.as_str()).collect();
    let imgs = images(&w.home);
    assert!(
        imgs.iter().all(|i| i["status"] != "running"),
        "{what}: no reader shows a dead run as running: {imgs:?}"
    );
    let cut: Vec<&Value> = imgs
        .iter()
        .filter(|i| !earlier.contains(i["image"].as_str().unwrap()))
        .collect();
    assert!(cut.len() <= 1, "{what}: {cut:?}");
    let cut_complete = cut.first().is_some_and(|i| i["status"] == "complete");
    if cut_exit == 0 {
        assert!(
            cut_complete,
            "{what}: the run said it succeeded, so its image is complete: {cut:?}"
        );
    }
    for (n, (img, copy)) in t.points.iter().enumerate() {
        restores(
            w,
            &t.disk_id,
            img,
            copy,
            &format!("{what}: earlier point {n}"),
        );
    }
    if cut_complete {
        let img = cut[0]["image"].as_str().unwrap();
        restores(
            w,
            &t.disk_id,
            img,
            &t.disk,
            &format!("{what}: the completed run"),
        );
    }
    // The next run.
    let r = tv(
        &w.home,
        &[
            "backup",
            "--disk",
            t.disk.to_str().unwrap(),
            "--disk-id",
            &t.disk_id,
            "--pool",
            &t.pool,
        ],
    );
    assert_eq!(
        r.code, 0,
        "{what}: the next run: {}\n{}",
        r.stdout, r.stderr
    );
    let next = &r.json["images"][0];
    let next_img = next["image"].as_str().unwrap();
    if next["kind"] == "incremental" {
        let parent = next["parent"].as_str().unwrap();
        let ok_parent =
            earlier.contains(parent) || (cut_complete && cut[0]["image"].as_str() == Some(parent));
        assert!(
            ok_parent,
            "{what}: the next run builds on {parent}, not an older complete image: {next}"
        );
    }
    if let Some(c) = cut.first() {
        if !cut_complete {
            assert_ne!(
                next["parent"].as_str(),
                c["image"].as_str(),
                "{what}: never on the cut image"
            );
        }
    }
    restores(
        w,
        &t.disk_id,
        next_img,
        &t.disk,
        &format!("{what}: the next run"),
    );
    let chk = tv(&w.home, &["catalog", "check"]);
    assert_eq!(
        chk.code, 0,
        "{what}: catalog check: {}\n{}",
        chk.stdout, chk.stderr
    );
    cut_complete
}

struct Tally {
    points: usize,
    cut_complete: usize,
}

/// How far before the end of the dry run's block data the last power cut falls.
const END_SLACK: u64 = 256;

/// Power cuts at `n` points spread evenly over the run's block data.
fn power_cuts(kind: &str, seed: u64) -> Tally {
    let t = Template::new(kind, seed);
    let n: u64 = std::env::var("CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_POINTS);
    let total = t.total();
    let mut tally = Tally {
        points: 0,
        cut_complete: 0,
    };
    for i in 0..n {
        // From the first byte to the last block (the catalog snapshot at the end), but
        // END_SLACK bytes short of the dry run's end: a run's last blocks vary by a few
        // bytes between runs (numbers printed into the snapshot, such as durations and
        // the writer's pid), and a cut past a shorter run's end would never happen.
        let at = i * (total - 1 - END_SLACK) / (n - 1).max(1);
        let w = t.work("w");
        let mut left = at;
        let mut cut_on = None;
        for (bc, len) in &t.run {
            if left < *len {
                cut_on = Some(bc.clone());
                break;
            }
            left -= len;
        }
        let bc = cut_on.expect("the point lies in the run");
        let f = serde_json::json!({ "power_cut_after_bytes": left });
        std::fs::write(cart_dir(&w.lib, &bc).join("faults.json"), f.to_string()).unwrap();
        let r = tv(&w.home, &t.cut_run_args());
        let what = format!("{kind} pool, power cut {i} at byte {at} of {total} ({bc} +{left})");
        assert_ne!(r.code, 0, "{what}: a power cut fails the run: {}", r.stdout);
        assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
        for (bc, _) in &t.run {
            let _ = std::fs::remove_file(cart_dir(&w.lib, bc).join("faults.json"));
        }
        if check_after_cut(&t, &w, &what, r.code) {
            tally.cut_complete += 1;
        }
        tally.points += 1;
        std::fs::remove_dir_all(&w.root).unwrap();
    }
    eprintln!(
        "crash campaign: {kind} pool: {} power cuts over {total} bytes on {} cartridges, {} left a complete image",
        tally.points,
        t.run.len(),
        tally.cut_complete
    );
    tally
}

/// Real SIGKILLs of the backup process, its writes slowed, once `targets` bytes of
/// block data of the run have reached the cartridges.
fn sigkills(kind: &str, seed: u64, targets: &[f64]) -> Tally {
    let t = Template::new(kind, seed);
    let total = t.total();
    let mut tally = Tally {
        points: 0,
        cut_complete: 0,
    };
    for (i, frac) in targets.iter().enumerate() {
        let target = (total as f64 * frac) as u64;
        let w = t.work("k");
        let hang = serde_json::json!({"hang": {"op": "write", "millis": 25, "times": 100000}});
        for (bc, _) in &t.run {
            std::fs::write(cart_dir(&w.lib, bc).join("faults.json"), hang.to_string()).unwrap();
        }
        let base: u64 = data_lens(&w.lib).iter().map(|x| x.1).sum();
        let mut child = tv_cmd(&w.home, &t.cut_run_args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let mut exited = None;
        loop {
            let now: u64 = data_lens(&w.lib).iter().map(|x| x.1).sum();
            if now >= base + target {
                break;
            }
            if let Some(st) = child.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{kind}: the run never reached byte {target}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let code = match exited {
            Some(st) => st.code().unwrap_or(-1),
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                -9
            }
        };
        for (bc, _) in &t.run {
            let _ = std::fs::remove_file(cart_dir(&w.lib, bc).join("faults.json"));
        }
        let what = format!("{kind} pool, SIGKILL {i} after byte {target} of {total}");
        if check_after_cut(&t, &w, &what, code) {
            tally.cut_complete += 1;
        }
        tally.points += 1;
        std::fs::remove_dir_all(&w.root).unwrap();
    }
    eprintln!(
        "crash campaign: {kind} pool: {} SIGKILLs, {} left a complete image",
        tally.points, tally.cut_complete
    );
    tally
}

/// Power-cut points per pool unless `CRASH_POINTS` says otherwise.
const DEFAULT_POINTS: u64 = 64;

const KILLS: [f64; 8] = [0.0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.97];

#[test]
fn crash_campaign_clear_pool() {
    let p = power_cuts("clear", 201);
    let k = sigkills("clear", 202, &KILLS);
    assert_eq!(k.points, KILLS.len());
    assert!(p.points >= 2);
}

#[test]
fn crash_campaign_zstd_pool() {
    let p = power_cuts("zstd", 301);
    let k = sigkills("zstd", 302, &KILLS);
    assert_eq!(k.points, KILLS.len());
    assert!(p.points >= 2);
}

#[test]
fn crash_campaign_encrypted_pool() {
    let p = power_cuts("encrypted", 401);
    let k = sigkills("encrypted", 402, &KILLS);
    assert_eq!(k.points, KILLS.len());
    assert!(p.points >= 2);
}
