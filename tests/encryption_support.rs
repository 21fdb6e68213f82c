//! Shared helpers for the encryption end-to-end tests (included with `#[path]`; no
//! tests here): a tapevault home driven through the real binary, disks with a canary
//! pattern, and raw access to the virtual library's cartridges.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tape_formats::{decode_block, Block};
use tapevault::codec::{KeyRing, Opener};
use tapevault::crypto::{Keystore, RecordKey};

/// A byte pattern that never occurs by chance in the pseudo-random filler.
pub const CANARY: &[u8] = b"<<tapevault canary 5d1e8b7f: this plaintext must never reach tape>>";
/// Passphrase of every key the tests create.
pub const PASS: &str = "correct horse battery staple";
pub const DISK_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
pub const DISK_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
}

/// The result of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn to_run(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

impl Env {
    /// A fresh home with a virtual library of six 16 MiB cartridges.
    pub fn init() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let env = Env { tmp, home };
        env.ok(&["init", "--capacity", "16M", "--slots", "6"]);
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Run tapevault with this home and the given passphrase (None: no passphrase).
    pub fn run_with(&self, args: &[&str], pass: Option<&str>, extra: &[(&str, &str)]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tapevault"));
        c.arg("--home").arg(&self.home).args(args);
        c.env_remove("TAPEVAULT_HOME")
            .env_remove("TAPEVAULT_PASSPHRASE")
            .env_remove("TAPEVAULT_NEW_PASSPHRASE")
            .stdin(std::process::Stdio::null());
        if let Some(p) = pass {
            c.env("TAPEVAULT_PASSPHRASE", p);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        to_run(c.output().expect("run tapevault"))
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, Some(PASS), &[])
    }

    /// Run and insist on exit 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "tapevault {args:?} failed: {r:?}");
        r
    }

    pub fn library_dir(&self) -> PathBuf {
        tapevault::home::Home::default_library_dir(&self.home)
    }

    pub fn cartridge_dir(&self, barcode: &str) -> PathBuf {
        self.library_dir().join("cartridges").join(barcode)
    }

    pub fn keystore(&self) -> Keystore {
        Keystore::open(&self.home).unwrap()
    }

    pub fn unlock(&self, name: &str) -> RecordKey {
        self.keystore().unlock(name, PASS.as_bytes()).unwrap()
    }

    /// `key create NAME`; returns the fingerprint.
    pub fn create_key(&self, name: &str) -> String {
        let r = self.ok(&["--json", "key", "create", name]);
        r.json()["fingerprint"].as_str().unwrap().to_string()
    }

    /// `pool create NAME [--encrypt-key KEY] [--escrow] --compression off`.
    pub fn create_pool(&self, name: &str, key: Option<&str>, escrow: bool) {
        let mut args = vec!["pool", "create", name, "--compression", "off"];
        if let Some(k) = key {
            args.extend(["--encrypt-key", k]);
        }
        if escrow {
            args.push("--escrow");
        }
        self.ok(&args);
    }

    /// Back up `disk` as disk `id` to `pool` (a full); returns the JSON report.
    pub fn backup(&self, disk: &Path, id: &str, pool: &str) -> serde_json::Value {
        let r = self.ok(&[
            "--json",
            "backup",
            "--disk",
            disk.to_str().unwrap(),
            "--disk-id",
            id,
            "--pool",
            pool,
            "--full",
        ]);
        r.json()
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough that zstd
/// cannot hide anything and distinct per seed.
pub fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A disk image of `mib` MiB: pseudo-random data with [`CANARY`] at every 64 KiB.
pub fn canary_disk(path: &Path, mib: usize, seed: u64) {
    let mut d = filler(seed, mib << 20);
    for off in (0..d.len()).step_by(64 << 10) {
        let end = (off + 1000 + CANARY.len()).min(d.len());
        d[off + 1000..end].copy_from_slice(&CANARY[..end - off - 1000]);
    }
    std::fs::write(path, d).unwrap();
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of every file under `dir`, with the file it came from.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// One object of a cartridge, in tape order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obj {
    Block(Vec<u8>),
    Filemark,
}

/// Read every object of a cartridge (it must not be loaded by a running tapevault).
pub fn read_cartridge(dir: &Path) -> Vec<Obj> {
    read_objects(dir, usize::MAX)
}

/// The first `max` objects of a cartridge.
pub fn read_objects(dir: &Path, max: usize) -> Vec<Obj> {
    let mut c = vtl_sim::Cartridge::open(dir).unwrap();
    c.rewind().unwrap();
    let mut buf = vec![0u8; tape_formats::MAX_BLOCK_SIZE];
    let mut out = Vec::new();
    while out.len() < max {
        match c.read_block(&mut buf).unwrap() {
            vtl_sim::Read::Block(n) => out.push(Obj::Block(buf[..n].to_vec())),
            vtl_sim::Read::Filemark => out.push(Obj::Filemark),
            vtl_sim::Read::EndOfData => return out,
        }
    }
    out
}

/// The blocks of a cartridge (filemarks left out).
pub fn blocks(dir: &Path) -> Vec<Vec<u8>> {
    read_cartridge(dir)
        .into_iter()
        .filter_map(|o| match o {
            Obj::Block(b) => Some(b),
            Obj::Filemark => None,
        })
        .collect()
}

/// The data-record blocks of a cartridge.
pub fn data_blocks(dir: &Path) -> Vec<Vec<u8>> {
    blocks(dir)
        .into_iter()
        .filter(|b| matches!(decode_block(b), Ok(Block::Data(_))))
        .collect()
}

pub fn label_of(dir: &Path) -> tape_formats::VolumeLabel {
    let Some(Obj::Block(b)) = read_objects(dir, 1).pop() else {
        panic!("{} is blank", dir.display())
    };
    match decode_block(&b).unwrap() {
        Block::VolumeLabel(l) => l,
        other => panic!("first block is a {}", other.kind_name()),
    }
}

pub fn ring(keys: Vec<RecordKey>) -> KeyRing {
    let mut r = KeyRing::new();
    for k in keys {
        r.add(k);
    }
    r
}

/// Open a data-record block with the keys in `ring`: the plain bytes, or why not.
pub fn open_data(ring: &KeyRing, block: &[u8]) -> Result<Vec<u8>, String> {
    let rec = match decode_block(block).map_err(|e| format!("framing: {e}"))? {
        Block::Data(r) => r,
        other => return Err(format!("not a data record but a {}", other.kind_name())),
    };
    let mut plain = Vec::new();
    Opener::new()
        .unwrap()
        .open_data(ring, &rec, &mut plain)
        .map_err(|e| e.to_string())?;
    Ok(plain)
}

/// The decoded plain catalog snapshot(s) on a cartridge, opened with `ring`.
pub fn open_snapshots(ring: &KeyRing, dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    let mut cipher = tape_formats::Cipher::None;
    let mut opener = Opener::new().unwrap();
    for b in blocks(dir) {
        match decode_block(&b).map_err(|e| e.to_string())? {
            Block::SnapshotHeader(h) => {
                cur = Some(Vec::new());
                cipher = h.cipher;
            }
            Block::SnapshotChunk(c) => {
                let mut plain = Vec::new();
                opener
                    .open_chunk(ring, &c, &mut plain)
                    .map_err(|e| e.to_string())?;
                cur.as_mut().expect("chunk inside a snapshot").extend(plain);
            }
            Block::SnapshotTrailer(t) => {
                let s = cur.take().expect("trailer after a header");
                // Keyed with the snapshot key's digest key when encrypted.
                let key = ring.digest_key_for(&cipher)?;
                assert_eq!(t.digest, tape_formats::snapshot_digest(key, &s));
                if key.is_some() {
                    assert_ne!(t.digest, tape_formats::snapshot_digest(None, &s));
                }
                out.push(s);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Barcodes of the cartridges a backup report says image 0 went to.
pub fn cartridges_of(report: &serde_json::Value) -> Vec<String> {
    report["images"][0]["barcodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Byte offset and length of every object in a cartridge's `data` file, from its index
/// (vtl-sim layout: 16-byte header, then 16-byte entries: offset u64 LE, length u32 LE
/// with bit 31 the filemark flag, CRC-32). Lets a test alter a block in place, as an
/// attacker with the cartridge would.
pub fn block_offsets(dir: &Path) -> Vec<(u64, u32)> {
    let idx = std::fs::read(dir.join("index")).unwrap();
    idx[16..]
        .chunks_exact(16)
        .filter_map(|e| {
            let off = u64::from_le_bytes(e[0..8].try_into().unwrap());
            let lf = u32::from_le_bytes(e[8..12].try_into().unwrap());
            (lf & (1 << 31) == 0).then_some((off, lf))
        })
        .collect()
}
