//! Shared helpers for the media/rotation tests: a tapevault home in a tempdir, the
//! binary run under a simulated clock (`TAPEVAULT_NOW`), JSON output parsed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tapevault");

pub struct Tv {
    pub dir: tempfile::TempDir,
    pub now: DateTime<Utc>,
}

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

impl Tv {
    /// A home with a virtual library of small cartridges.
    pub fn init(slots: usize, mailslots: usize, capacity: &str) -> Tv {
        Tv::init_with(slots, mailslots, capacity, &[])
    }

    /// Same, with more `init` arguments (e.g. `--early-warning`).
    pub fn init_with(slots: usize, mailslots: usize, capacity: &str, extra: &[&str]) -> Tv {
        let tv = Tv {
            dir: tempfile::tempdir().unwrap(),
            now: "2026-01-01T06:00:00Z".parse().unwrap(),
        };
        tv.ok(&[
            "init",
            "--slots",
            &slots.to_string(),
            "--drives",
            "2",
            "--mailslots",
            &mailslots.to_string(),
            "--capacity",
            capacity,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>());
        tv
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("TAPEVAULT_HOME", self.home())
            .env(
                "TAPEVAULT_NOW",
                self.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
            .env_remove("TAPEVAULT_PASSPHRASE")
            .stdin(std::process::Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let o: Output = self.cmd(args).output().unwrap();
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "tapevault {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            r.code, r.stdout, r.stderr
        );
        r
    }

    /// Run with --json and parse stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        self.ok(&a).json()
    }

    pub fn advance(&mut self, days: i64) {
        self.now += Duration::days(days);
    }

    pub fn catalog(&self) -> tapevault::catalog::Catalog {
        tapevault::catalog::Catalog::open(&self.home()).unwrap()
    }

    pub fn library(&self) -> tape_devices::changer::r#virtual::VirtualLibrary {
        tape_devices::changer::r#virtual::VirtualLibrary::open(
            &tapevault::home::Home::default_library_dir(&self.home()),
        )
        .unwrap()
    }
}

/// A disk image with deterministic content.
pub fn write_disk(path: &Path, len: usize, seed: u64) {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, v).unwrap();
}

/// Change a few bytes of a disk image (so an incremental has something to carry).
pub fn touch_disk(path: &Path, at: u64, seed: u8) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[seed; 64]).unwrap();
}
