//! Shared helpers for the restore and verify tests (included with `#[path]`; no tests
//! here): a tapevault home on a small virtual library driven through the real binary,
//! disks with deterministic pseudo-random content, and fault injection on cartridges.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use tape_devices::changer::r#virtual::VirtualLibrary;
use tapevault::catalog::{Catalog, Segment};
use uuid::Uuid;

pub const PASS: &str = "correct horse battery staple";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
}

/// Result of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

fn run_of(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A point in time for backup `i` (minutes after a fixed start).
pub fn time(i: u32) -> String {
    format!("2026-01-01T{:02}:{:02}:00Z", i / 60, i % 60)
}

impl Env {
    /// A home with a virtual library of `slots` cartridges of `capacity` each.
    pub fn new(slots: usize, capacity: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let env = Env { dir, home };
        let slots_s = slots.to_string();
        env.ok(&[
            "init",
            "--slots",
            &slots_s,
            "--drives",
            "2",
            "--mailslots",
            "2",
            "--capacity",
            capacity,
        ]);
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn run_at(&self, now: Option<&str>, args: &[&str]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tapevault"));
        c.arg("--home").arg(&self.home).args(args);
        c.env_remove("TAPEVAULT_HOME");
        c.env("TAPEVAULT_PASSPHRASE", PASS);
        match now {
            Some(t) => c.env("TAPEVAULT_NOW", t),
            None => c.env_remove("TAPEVAULT_NOW"),
        };
        run_of(c.output().unwrap())
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_at(None, args)
    }

    /// Run and require exit 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "tapevault {args:?} failed\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        r
    }

    /// Back up `disk` as `id` at time `now`; returns the image UUID.
    pub fn backup(&self, disk: &Path, id: Uuid, pool: &str, now: &str, extra: &[&str]) -> Uuid {
        let d = disk.to_str().unwrap().to_string();
        let ids = id.to_string();
        let mut args = vec![
            "--json",
            "backup",
            "--disk",
            &d,
            "--disk-id",
            &ids,
            "--pool",
            pool,
        ];
        args.extend_from_slice(extra);
        let r = self.run_at(Some(now), &args);
        assert_eq!(r.code, 0, "backup failed\n{}\n{}", r.stdout, r.stderr);
        let v = r.json();
        v["images"][0]["image"].as_str().unwrap().parse().unwrap()
    }

    pub fn restore(&self, disk: Uuid, sel: &[&str], to: &Path) -> Run {
        let ds = disk.to_string();
        let ts = to.to_str().unwrap().to_string();
        let mut args = vec!["--json", "restore", "--disk", &ds, "--to", &ts];
        args.extend_from_slice(sel);
        self.run(&args)
    }

    pub fn catalog(&self) -> Catalog {
        Catalog::open(&self.home).unwrap()
    }

    pub fn segments(&self, image: Uuid) -> Vec<Segment> {
        self.catalog().segments(image).unwrap()
    }

    pub fn library(&self) -> VirtualLibrary {
        VirtualLibrary::open(&tapevault::home::Home::default_library_dir(&self.home)).unwrap()
    }

    /// Flip one bit in the payload of the block at logical object `block` of
    /// cartridge `barcode` (straight in the virtual cartridge's data file).
    pub fn flip_bit(&self, barcode: &str, block: u64) {
        let dir = self.library().cartridge_dir(barcode);
        let index = std::fs::File::open(dir.join("index")).unwrap();
        let mut e = [0u8; 16];
        index.read_exact_at(&mut e, 16 + 16 * block).unwrap();
        let offset = u64::from_le_bytes(e[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(e[8..12].try_into().unwrap()) & !(1 << 31);
        assert!(len > 200, "block {block} of {barcode} is not a data record");
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("data"))
            .unwrap();
        let at = offset + len as u64 - 7;
        let mut b = [0u8; 1];
        data.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x10;
        data.write_all_at(&b, at).unwrap();
    }
}

/// A disk image with deterministic content.
pub struct Disk {
    pub path: PathBuf,
    rng: rand::rngs::StdRng,
}

impl Disk {
    /// `size` bytes: pseudo-random data, with the second half of every 1 MiB zero.
    pub fn create(path: PathBuf, size: u64, seed: u64) -> Disk {
        let mut d = Disk {
            path,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        };
        std::fs::write(&d.path, b"").unwrap();
        let f = OpenOptions::new().write(true).open(&d.path).unwrap();
        f.set_len(size).unwrap();
        let mut off = 0;
        while off < size {
            let n = (512 * 1024).min(size - off);
            let mut buf = vec![0u8; n as usize];
            d.rng.fill_bytes(&mut buf);
            f.write_all_at(&buf, off).unwrap();
            off += 1 << 20;
        }
        d
    }

    pub fn size(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }

    pub fn write_random(&mut self, offset: u64, len: usize) {
        let mut buf = vec![0u8; len];
        self.rng.fill_bytes(&mut buf);
        let f = OpenOptions::new().write(true).open(&self.path).unwrap();
        f.write_all_at(&buf, offset).unwrap();
    }

    pub fn zero(&mut self, offset: u64, len: usize) {
        let f = OpenOptions::new().write(true).open(&self.path).unwrap();
        f.write_all_at(&vec![0u8; len], offset).unwrap();
    }

    /// A few random overwrites of random lengths anywhere on the disk.
    pub fn scribble(&mut self, count: usize) {
        let size = self.size();
        for _ in 0..count {
            let len = self.rng.gen_range(1..200_000usize).min(size as usize);
            let off = self.rng.gen_range(0..size - len as u64);
            self.write_random(off, len);
        }
    }

    pub fn resize(&mut self, size: u64) {
        let f = OpenOptions::new().write(true).open(&self.path).unwrap();
        f.set_len(size).unwrap();
    }

    pub fn snapshot(&self, to: &Path) {
        std::fs::copy(&self.path, to).unwrap();
    }
}

/// Files equal byte for byte (reports the first difference).
pub fn assert_same(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap();
    let y = std::fs::read(b).unwrap();
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{} and {} differ at byte {i}", a.display(), b.display());
    }
}
