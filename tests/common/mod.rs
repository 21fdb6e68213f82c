//! Shared helpers for the end-to-end backup tests: a tapevault home with a small virtual
//! library in a temp dir, the real binary run with `--json`, test disks with patterns
//! (random writes, zeroed areas, resizes) and saved copies of every point in time, and
//! byte-level access to the virtual cartridges for corruption tests.
//!
//! Every test binary includes this module but uses only part of it.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use tempfile::TempDir;
use uuid::Uuid;

pub const BIN: &str = env!("CARGO_BIN_EXE_tapevault");

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
/// The hash-scan tracking block (tapevault's default): changed areas are counted in it.
pub const TRACK: u64 = 64 * KIB;

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON (Null when it is not JSON).
    pub json: Value,
}

impl Run {
    pub fn from_output(o: Output) -> Run {
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout,
            stderr,
            json,
        }
    }
}

/// A tapevault home with a virtual library, in its own temp dir.
pub struct Vault {
    _tmp: TempDir,
    /// Scratch space for disks, copies and restores.
    pub root: PathBuf,
    pub home: PathBuf,
    /// `TAPEVAULT_NOW` for the next commands (RFC 3339), if set.
    pub now: Option<String>,
}

impl Vault {
    /// `tapevault init` with these extra arguments (e.g. `--capacity 8M`).
    pub fn init(args: &[&str]) -> Vault {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().to_path_buf();
        let home = root.join("home");
        let v = Vault {
            _tmp: tmp,
            root,
            home,
            now: None,
        };
        let mut a = vec!["init"];
        a.extend_from_slice(args);
        v.ok(&a);
        v
    }

    /// A small library: `slots` cartridges of `capacity`, one drive.
    pub fn small(slots: usize, capacity: &str) -> Vault {
        let s = slots.to_string();
        Vault::init(&["--slots", &s, "--drives", "1", "--capacity", capacity])
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn library_dir(&self) -> PathBuf {
        tapevault::home::Home::default_library_dir(&self.home)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--home").arg(&self.home).arg("--json").args(args);
        c.env_remove("TAPEVAULT_HOME")
            .env_remove("TAPEVAULT_PASSPHRASE")
            .env_remove("TAPEVAULT_NOW");
        if let Some(n) = &self.now {
            c.env("TAPEVAULT_NOW", n);
        }
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let o = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        Run::from_output(o)
    }

    /// Run and require exit 0; returns the JSON output.
    pub fn ok(&self, args: &[&str]) -> Value {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "tapevault {args:?} failed with exit {}\nstdout: {}\nstderr: {}",
            r.code, r.stdout, r.stderr
        );
        r.json
    }

    /// Run and require a failure with `code`, reported as JSON on stdout too.
    pub fn fails(&self, args: &[&str], code: i32) -> Run {
        let r = self.run(args);
        assert_eq!(
            r.code, code,
            "tapevault {args:?}: expected exit {code}, got {}\nstdout: {}\nstderr: {}",
            r.code, r.stdout, r.stderr
        );
        assert_eq!(
            r.json["exit_code"].as_i64(),
            Some(code as i64),
            "the --json error report must carry exit_code {code}: {}",
            r.stdout
        );
        assert!(
            !r.stderr.trim().is_empty(),
            "a failure must say why on stderr"
        );
        r
    }

    /// A pool without compression (so stored bytes are predictable) or with it.
    pub fn pool(&self, name: &str, compression: &str) {
        self.ok(&["pool", "create", name, "--compression", compression]);
    }

    /// `backup --disk`; returns the single image report.
    pub fn backup(&self, disk: &TestDisk, pool: &str, extra: &[&str]) -> Value {
        let path = disk.path.to_string_lossy().into_owned();
        let id = disk.id.to_string();
        let mut a = vec!["backup", "--disk", &path, "--disk-id", &id, "--pool", pool];
        a.extend_from_slice(extra);
        let j = self.ok(&a);
        let imgs = j["images"].as_array().expect("images array");
        assert_eq!(imgs.len(), 1, "one disk, one image: {j}");
        let img = imgs[0].clone();
        assert_eq!(img["disk"].as_str(), Some(id.as_str()));
        img
    }

    /// `backup --manifest`; returns the whole report.
    pub fn backup_manifest(&self, manifest: &Path, pool: &str, extra: &[&str]) -> Value {
        let m = manifest.to_string_lossy().into_owned();
        let mut a = vec!["backup", "--manifest", &m, "--pool", pool];
        a.extend_from_slice(extra);
        self.ok(&a)
    }

    /// `restore --disk ID --image UUID --to PATH`.
    pub fn restore_image(&self, disk: Uuid, image: &str, to: &Path) -> Run {
        let d = disk.to_string();
        let t = to.to_string_lossy().into_owned();
        self.run(&["restore", "--disk", &d, "--image", image, "--to", &t])
    }

    /// `restore --disk ID --at TIME --to PATH`.
    pub fn restore_at(&self, disk: Uuid, at: &str, to: &Path) -> Run {
        let d = disk.to_string();
        let t = to.to_string_lossy().into_owned();
        self.run(&["restore", "--disk", &d, "--at", at, "--to", &t])
    }

    /// The catalog, opened through the library (read-only use in tests).
    pub fn catalog(&self) -> tapevault::catalog::Catalog {
        tapevault::catalog::Catalog::open(&self.home).expect("open catalog")
    }

    /// The catalog's own consistency check finds nothing.
    pub fn assert_catalog_consistent(&self) {
        let problems = self.catalog().check().expect("catalog check");
        assert!(problems.is_empty(), "catalog problems: {problems:#?}");
    }

    pub fn image_row(&self, image: &str) -> tapevault::catalog::ImageRow {
        let u: Uuid = image.parse().expect("image uuid");
        self.catalog()
            .image(u)
            .expect("catalog query")
            .unwrap_or_else(|| panic!("image {image} is not in the catalog"))
    }

    pub fn cartridge_dir(&self, barcode: &str) -> PathBuf {
        self.library_dir().join("cartridges").join(barcode)
    }

    /// Make the next `times` writes to a cartridge take `millis` each, so a backup is
    /// reliably mid-stream when it is killed (the simulator's hang fault, read when the
    /// cartridge is loaded).
    pub fn slow_writes(&self, barcode: &str, millis: u64, times: u32) {
        let f = self.cartridge_dir(barcode).join("faults.json");
        let j = serde_json::json!({"hang": {"op": "write", "millis": millis, "times": times}});
        std::fs::write(f, j.to_string()).unwrap();
    }

    /// Bytes in a virtual cartridge's data file (0 before its first write).
    pub fn cartridge_data_len(&self, barcode: &str) -> u64 {
        std::fs::metadata(self.cartridge_dir(barcode).join("data"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Where logical object `block` of a virtual cartridge lies in its data file:
    /// (offset, length). Reads the simulator's index (16-byte header, then 16-byte
    /// entries: offset u64 LE, length u32 LE with bit 31 = filemark, CRC-32).
    pub fn block_location(&self, barcode: &str, block: u64) -> (u64, u32) {
        let idx = File::open(self.cartridge_dir(barcode).join("index")).expect("cartridge index");
        let mut e = [0u8; 16];
        idx.read_exact_at(&mut e, 16 + 16 * block)
            .unwrap_or_else(|err| panic!("index entry {block} of {barcode}: {err}"));
        let off = u64::from_le_bytes(e[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(e[8..12].try_into().unwrap());
        assert_eq!(
            len & (1 << 31),
            0,
            "block {block} of {barcode} is a filemark"
        );
        (off, len)
    }

    /// Flip one byte in the middle of logical block `block` of a cartridge, as a media
    /// defect would (the simulator's own index stays valid).
    pub fn flip_byte_in_block(&self, barcode: &str, block: u64) {
        let (off, len) = self.block_location(barcode, block);
        assert!(
            len > 64,
            "block {block} of {barcode} is too short to corrupt"
        );
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.cartridge_dir(barcode).join("data"))
            .expect("cartridge data");
        let at = off + len as u64 / 2;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x5a;
        f.write_all_at(&b, at).unwrap();
        f.sync_all().unwrap();
    }
}

/// A disk image file with a stable UUID, changed by seeded random patterns.
pub struct TestDisk {
    pub path: PathBuf,
    pub id: Uuid,
    rng: StdRng,
}

impl TestDisk {
    /// A disk of `size` bytes: the first `data` bytes random, the rest holes (zeros).
    pub fn create(path: PathBuf, size: u64, data: u64, seed: u64) -> TestDisk {
        let mut d = TestDisk {
            path,
            id: Uuid::new_v4(),
            rng: StdRng::seed_from_u64(seed),
        };
        File::create(&d.path).expect("create disk");
        d.resize(size);
        if data > 0 {
            d.write_random(0, data.min(size));
        }
        d
    }

    pub fn size(&self) -> u64 {
        std::fs::metadata(&self.path).expect("disk metadata").len()
    }

    fn file(&self) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .expect("open disk")
    }

    pub fn write_random(&mut self, offset: u64, len: u64) {
        let mut buf = vec![0u8; len as usize];
        self.rng.fill_bytes(&mut buf);
        // Never all-zero by accident in a way that changes what the test expects.
        buf[0] |= 1;
        self.file().write_all_at(&buf, offset).expect("write disk");
    }

    pub fn write_zeros(&mut self, offset: u64, len: u64) {
        let buf = vec![0u8; len as usize];
        self.file().write_all_at(&buf, offset).expect("zero disk");
    }

    /// Grow (new space reads as zeros) or shrink the disk.
    pub fn resize(&mut self, size: u64) {
        self.file().set_len(size).expect("resize disk");
    }

    /// `n` random writes of up to `max_len` bytes at random offsets; returns the areas
    /// written as (start, length).
    pub fn random_writes(&mut self, n: usize, max_len: u64) -> Vec<(u64, u64)> {
        let size = self.size();
        let mut areas = Vec::new();
        for _ in 0..n {
            let len = self.rng.gen_range(1..=max_len.min(size));
            let off = self.rng.gen_range(0..=size - len);
            self.write_random(off, len);
            areas.push((off, len));
        }
        areas
    }

    /// A random area of up to `max_len` bytes, zeroed; returns it.
    pub fn random_zero(&mut self, max_len: u64) -> (u64, u64) {
        let size = self.size();
        let len = self.rng.gen_range(1..=max_len.min(size));
        let off = self.rng.gen_range(0..=size - len);
        self.write_zeros(off, len);
        (off, len)
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Save a copy of the disk as it is now (the expected result of restoring this point).
    pub fn save_copy(&self, to: &Path) {
        std::fs::copy(&self.path, to).expect("copy disk");
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read disk")
    }
}

/// A changed-extents file in VMware's QueryChangedDiskAreas shape.
pub fn write_changed_extents(path: &Path, from: &str, to: &str, areas: &[(u64, u64)]) {
    let v = serde_json::json!({
        "from_change_id": from,
        "change_id": to,
        "changed_area": areas
            .iter()
            .map(|(s, l)| serde_json::json!({"start": s, "length": l}))
            .collect::<Vec<_>>(),
    });
    let mut f = File::create(path).expect("create changed-extents file");
    f.write_all(v.to_string().as_bytes()).unwrap();
}

/// Assert two files are byte-identical; on a difference, name the first differing
/// offset and the sizes.
pub fn assert_same_bytes(actual: &Path, expected: &Path, what: &str) {
    let mut a = Vec::new();
    let mut e = Vec::new();
    File::open(actual)
        .unwrap_or_else(|err| panic!("{what}: cannot open {}: {err}", actual.display()))
        .read_to_end(&mut a)
        .unwrap();
    File::open(expected).unwrap().read_to_end(&mut e).unwrap();
    if a != e {
        let first = a.iter().zip(e.iter()).position(|(x, y)| x != y);
        panic!(
            "{what}: restored {} ({} bytes) differs from the expected {} ({} bytes); first differing byte: {:?}",
            actual.display(),
            a.len(),
            expected.display(),
            e.len(),
            first
        );
    }
}

/// Bytes of the tracking blocks an area touches (what a hash scan must re-read at most).
pub fn tracked_bytes(areas: &[(u64, u64)], disk_size: u64) -> u64 {
    let mut blocks = std::collections::BTreeSet::new();
    for &(s, l) in areas {
        if l == 0 {
            continue;
        }
        for b in s / TRACK..=(s + l - 1) / TRACK {
            blocks.insert(b);
        }
    }
    blocks
        .iter()
        .map(|b| (disk_size - b * TRACK).min(TRACK))
        .sum()
}

/// RFC 3339 for a fixed test clock: `2026-01-01T00:00:00Z` plus `hours`.
pub fn test_time(hours: u64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    (base + chrono::Duration::hours(hours as i64))
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The image of `disk` in a `backup --json` result (panics naming the result if none).
pub fn image_of<'a>(j: &'a Value, disk: &str) -> &'a Value {
    j["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["disk"].as_str() == Some(disk))
        .unwrap_or_else(|| panic!("no image of disk {disk} in {j}"))
}

/// The images of a `backup --json` result, by disk UUID.
pub fn by_disk(report: &Value) -> std::collections::HashMap<String, Value> {
    report["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| (s(i, "disk").to_string(), i.clone()))
        .collect()
}

/// Field of an image report as str.
pub fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("field {field} missing or not a string in {v}"))
}

pub fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("field {field} missing or not a number in {v}"))
}

/// How long [`Vault::run_within`] lets a command run before it counts as hung.
pub const HANG_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

impl Vault {
    /// Run with extra environment variables, killing the process if it has not ended
    /// within `limit`: a hang is reported as `Err` (with what it printed so far) instead
    /// of blocking the test for ever.
    pub fn run_within(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        limit: std::time::Duration,
    ) -> Result<Run, String> {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        run_with_limit(c, limit).map_err(|e| format!("tapevault {args:?}: {e}"))
    }
}

/// Spawn `c` (stdout and stderr captured) and wait at most `limit` for it to end; on a
/// timeout the process is killed and the error says so.
pub fn run_with_limit(mut c: Command, limit: std::time::Duration) -> Result<Run, String> {
    use std::time::Instant;
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Run::from_output(Output {
            status,
            stdout,
            stderr,
        })),
        None => Err(format!(
            "did not end within {limit:?} (killed); stderr so far: {}",
            String::from_utf8_lossy(&stderr)
        )),
    }
}

// ---------------------------------------------------------------------------------
// Killing a job mid-write (what a SIGKILL leaves behind): slow blank cartridges, the
// job started in the background, killed once it has written enough.
// ---------------------------------------------------------------------------------

impl Vault {
    /// Start `tapevault ARGS` in the background, its output discarded.
    pub fn spawn_quiet(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tapevault {args:?}: {e}"))
    }

    /// The library's cartridges other than `used` (the blank ones a job will write to).
    pub fn cartridges_except(&self, used: &[String]) -> Vec<String> {
        self.catalog()
            .list_media(None)
            .unwrap()
            .into_iter()
            .filter(|m| !used.contains(&m.barcode))
            .map(|m| m.barcode)
            .collect()
    }

    /// [`slow_writes`](Self::slow_writes) on each of `barcodes`.
    pub fn slow_writes_on(&self, barcodes: &[String], millis: u64, times: u32) {
        for b in barcodes {
            self.slow_writes(b, millis, times);
        }
    }

    /// Remove the faults set on `barcodes` (those a killed job did not use up).
    pub fn clear_faults(&self, barcodes: &[String]) {
        for b in barcodes {
            let _ = std::fs::remove_file(self.cartridge_dir(b).join("faults.json"));
        }
    }

    /// Bytes written to all of `barcodes`' data files.
    pub fn data_len_of(&self, barcodes: &[String]) -> u64 {
        barcodes.iter().map(|b| self.cartridge_data_len(b)).sum()
    }
}

/// Poll `ready` until it holds, then SIGKILL `child` and reap it. The test fails if the
/// child ends first ("`what`: ended before it could be killed") or `ready` does not
/// hold within `limit`.
pub fn kill_when(
    child: &mut std::process::Child,
    what: &str,
    limit: std::time::Duration,
    mut ready: impl FnMut() -> bool,
) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what}: ended before it could be killed"
        );
        assert!(
            started.elapsed() < limit,
            "{what}: not reached within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

impl Vault {
    /// `pool create NAME --compression C --allocation per-session`: each session
    /// writes a media set of its own (one to send offsite per copy).
    pub fn pool_per_session(&self, name: &str, compression: &str) {
        self.ok(&[
            "pool",
            "create",
            name,
            "--compression",
            compression,
            "--allocation",
            "per-session",
        ]);
    }
}

/// A library of `slots` 64 MiB cartridges and `drives` drives with the pools `pools`
/// (name, compression), and a disk of `size` bytes (`data` of them random, `seed`)
/// backed up `--full` to the first pool, its bytes saved as `p0.img` in the vault's
/// directory: (vault, disk, the full's report). The set-up of the copy tests.
pub fn vault_with_full(
    slots: usize,
    drives: usize,
    pools: &[(&str, &str)],
    (size, data, seed): (u64, u64, u64),
) -> (Vault, TestDisk, Value) {
    let (slots, drives) = (slots.to_string(), drives.to_string());
    let v = Vault::init(&["--slots", &slots, "--drives", &drives, "--capacity", "64M"]);
    for (name, compression) in pools {
        v.pool(name, compression);
    }
    let d = TestDisk::create(v.path("d.img"), size, data, seed);
    let full = v.backup(&d, pools[0].0, &["--full"]);
    d.save_copy(&v.path("p0.img"));
    (v, d, full)
}

// ---- qemu-utils: the tools the qcow2 tests drive (tests/qemu_image.rs, tests/multi_drive.rs)

/// Whether qemu-img, qemu-io and qemu-nbd are installed (a reason printed when not).
pub fn have_qemu() -> bool {
    for bin in ["qemu-img", "qemu-io", "qemu-nbd"] {
        let ok = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("skipping: {bin} is not installed (Debian package qemu-utils)");
            return false;
        }
    }
    true
}

/// Runs a qemu tool, asserts it succeeded and returns its standard output.
pub fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run a qemu tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `qemu-io -c CMD...` on a qcow2 image; any error it reports fails the test.
pub fn qemu_io(img: &Path, cmds: &[impl AsRef<str>]) {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg("qcow2");
    for x in cmds {
        c.arg("-c").arg(x.as_ref());
    }
    c.arg(img);
    let out = run_tool(&mut c);
    assert!(!out.contains("error") && !out.contains("failed"), "{out}");
}

/// `qemu-img info -U --output=json` of an image (readable while QEMU holds it).
pub fn qemu_img_info(img: &Path) -> serde_json::Value {
    let out = run_tool(
        Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(img),
    );
    serde_json::from_str(&out).unwrap()
}

/// Copy a directory tree (files and directories only), as a fixture or a saved state.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}
