//! docs/FORMAT.md is complete: an independent reader written from it alone
//! (tests/spec-reader/read_cartridge.py, Python, sharing no code with tapevault) takes
//! the virtual cartridges of a real encrypted, compressed backup chain (a full that spans
//! cartridges, an incremental after the disk grew, one after it shrank), the key export
//! (binary, paper, or the label's escrow) and the passphrase, and rebuilds every point
//! in time bit for bit. It also refuses a damaged cartridge and a wrong passphrase, and
//! reads a clear chain with a copy in it without any key.
//!
//! Skips, saying why, when no Python 3 with cryptography, argon2-cffi, blake3 and
//! zstandard is installed (.ci/run installs them).
mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MODULES: &str =
    "import blake3, zstandard, argon2.low_level, cryptography.hazmat.primitives.ciphers.aead";

/// A Python 3 that has the reader's modules (the first of `python3` on PATH and
/// Debian's own), or why there is none.
fn python() -> Result<String, String> {
    let mut why = Vec::new();
    for py in ["python3", "/usr/bin/python3"] {
        match Command::new(py).args(["-c", MODULES]).output() {
            Ok(o) if o.status.success() => return Ok(py.to_string()),
            Ok(o) => why.push(format!(
                "{py}: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Err(e) => why.push(format!("{py}: {e}")),
        }
    }
    Err(why.join("; "))
}

fn reader() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spec-reader/read_cartridge.py")
}

struct Reader {
    py: String,
    carts: Vec<PathBuf>,
    pass: PathBuf,
}

impl Reader {
    fn run(&self, key: &[&str], extra: &[&str]) -> Run2 {
        let mut c = Command::new(&self.py);
        c.arg(reader()).args(&self.carts).args(key);
        c.arg("--passphrase-file").arg(&self.pass).args(extra);
        let o = c.output().expect("run the spec reader");
        Run2 {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

#[derive(Debug)]
struct Run2 {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `len` bytes of text-like data that zstd compresses well.
fn compressible(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "tape ", "vault ", "record ", "extent ", "block ", "image ", "chain ", "disk ",
    ];
    let mut out = Vec::with_capacity(len);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % 8) as usize].as_bytes());
    }
    out.truncate(len);
    out
}

fn write_at(disk: &TestDisk, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.path)
        .unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn a_reader_written_from_the_spec_alone_restores_every_point_of_an_encrypted_chain() {
    let py = match python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipping: no Python 3 with the spec reader's modules ({why})");
            return;
        }
    };
    // Small cartridges, so the full spans two of them.
    let v = Vault::small(6, "4M");
    let pass = v.path("pass.txt");
    std::fs::write(&pass, "a long passphrase for the spec reader\n").unwrap();
    let pf = pass.to_str().unwrap().to_string();
    v.ok(&["--passphrase-file", &pf, "key", "create", "k1"]);
    v.ok(&[
        "pool",
        "create",
        "enc",
        "--compression",
        "zstd:3",
        "--encrypt-key",
        "k1",
        "--escrow",
    ]);

    // 8 MiB: 5 MiB random (stored raw), 1 MiB of text (zstd), the rest zeros.
    let mut disk = TestDisk::create(v.path("disk.img"), 8 * MIB, 5 * MIB, 7);
    write_at(&disk, 5 * MIB, &compressible(1, MIB as usize));
    let mut points: Vec<(String, PathBuf)> = Vec::new();
    let mut carts: BTreeSet<String> = BTreeSet::new();
    let mut backup = |disk: &TestDisk, kind: &str, n: usize| {
        let img = v.backup(disk, "enc", &["--passphrase-file", &pf]);
        assert_eq!(s(&img, "kind"), kind, "{img}");
        for c in img["barcodes"].as_array().unwrap() {
            carts.insert(c.as_str().unwrap().to_string());
        }
        let copy = v.path(&format!("point{n}.img"));
        disk.save_copy(&copy);
        points.push((s(&img, "image").to_string(), copy));
    };
    backup(&disk, "full", 0);

    // Incremental 1: the disk grew to 11 MiB; writes old and new, an area zeroed.
    disk.random_writes(6, 200 * KIB);
    disk.write_zeros(MIB, 300 * KIB);
    disk.resize(11 * MIB);
    disk.write_random(9 * MIB, 500 * KIB);
    write_at(&disk, 10 * MIB, &compressible(2, 300 * KIB as usize));
    backup(&disk, "incremental", 1);

    // Incremental 2: the disk shrank to 7 MiB and changed a little.
    disk.resize(7 * MIB);
    disk.random_writes(3, 100 * KIB);
    backup(&disk, "incremental", 2);
    assert!(carts.len() >= 2, "the chain spans cartridges: {carts:?}");

    let key_bin = v.path("k1.key");
    let key_paper = v.path("k1.txt");
    v.ok(&[
        "--passphrase-file",
        &pf,
        "key",
        "export",
        "k1",
        "--out",
        key_bin.to_str().unwrap(),
    ]);
    v.ok(&[
        "--passphrase-file",
        &pf,
        "key",
        "export",
        "k1",
        "--out",
        key_paper.to_str().unwrap(),
        "--paper",
    ]);
    let r = Reader {
        py,
        carts: carts.iter().map(|c| v.cartridge_dir(c)).collect(),
        pass: pass.clone(),
    };
    let bin = ["--key", key_bin.to_str().unwrap()];
    let paper = ["--key", key_paper.to_str().unwrap()];
    let escrow = ["--escrow"];

    let list = r.run(&bin, &["--list"]);
    assert_eq!(list.code, 0, "{list:?}");
    let listed: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");

    for (n, (image, expected)) in points.iter().enumerate() {
        let out = v.path(&format!("spec{n}.img"));
        let key: &[&str] = match n {
            0 => &bin,
            1 => &paper,
            _ => &escrow,
        };
        let snap = v.path(&format!("snap{n}.json"));
        let run = r.run(
            key,
            &[
                "--image",
                image,
                "--out",
                out.to_str().unwrap(),
                "--snapshot-out",
                snap.to_str().unwrap(),
            ],
        );
        assert_eq!(run.code, 0, "point {n}: {run:?}");
        eprintln!("point {n}: {}", run.stdout.trim());
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let read = &report["read"];
        assert_eq!(report["chain"].as_array().unwrap().len(), n + 1, "{report}");
        assert_eq!(read["records"], read["encrypted_records"], "{report}");
        assert!(
            u(read, "zstd_records") > 0 && u(read, "raw_records") > 0,
            "{report}"
        );
        assert!(u(read, "zero_extents") > 0, "{report}");
        assert!(u(read, "zero_only_records") > 0, "{report}");
        assert!(
            u(read, "parts") > n as u64 + 1,
            "the full spans cartridges: {report}"
        );
        assert_same_bytes(
            &out,
            expected,
            &format!("point {n} rebuilt by the spec reader"),
        );
        let snapshot = std::fs::read_to_string(&snap).unwrap();
        assert!(
            snapshot.contains(image.as_str()),
            "point {n}: the decrypted catalog snapshot names the image"
        );
    }

    // It can fail: a wrong passphrase is refused (5), a damaged record too (3).
    let wrong = v.path("wrong.txt");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    let bad = Reader {
        py: r.py.clone(),
        carts: r.carts.clone(),
        pass: wrong,
    };
    let run = bad.run(&bin, &["--list"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("wrong passphrase"), "{run:?}");

    let first = carts.iter().next().unwrap();
    // Logical objects: 0 label, 1 filemark, 2 image header, 3 the first data record.
    v.flip_byte_in_block(first, 3);
    let out = v.path("damaged.img");
    let run = r.run(
        &bin,
        &["--image", &points[0].0, "--out", out.to_str().unwrap()],
    );
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("payload CRC"), "{run:?}");
}

#[test]
fn the_spec_reader_restores_a_clear_chain_and_a_copy_without_a_key() {
    let py = match python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipping: no Python 3 with the spec reader's modules ({why})");
            return;
        }
    };
    let v = Vault::small(4, "32M");
    v.pool("clear", "zstd:3");
    let pass = v.path("unused.txt");
    std::fs::write(&pass, "unused\n").unwrap();
    let mut disk = TestDisk::create(v.path("disk.img"), 4 * MIB, 2 * MIB, 11);
    write_at(&disk, 2 * MIB, &compressible(3, 512 * KIB as usize));
    let full = v.backup(&disk, "clear", &[]);
    let p0 = v.path("p0.img");
    disk.save_copy(&p0);
    disk.random_writes(4, 64 * KIB);
    disk.write_zeros(0, 128 * KIB);
    let copy = v.backup(&disk, "clear", &["--copy"]);
    assert_eq!(s(&copy, "kind"), "copy", "{copy}");
    let p1 = v.path("p1.img");
    disk.save_copy(&p1);
    disk.random_writes(2, 64 * KIB);
    let inc = v.backup(&disk, "clear", &[]);
    assert_eq!(s(&inc, "kind"), "incremental", "{inc}");
    let p2 = v.path("p2.img");
    disk.save_copy(&p2);

    let mut carts: BTreeSet<String> = BTreeSet::new();
    for img in [&full, &copy, &inc] {
        for c in img["barcodes"].as_array().unwrap() {
            carts.insert(c.as_str().unwrap().to_string());
        }
    }
    let r = Reader {
        py,
        carts: carts.iter().map(|c| v.cartridge_dir(c)).collect(),
        pass,
    };
    for (n, (img, expected, chain)) in [(&full, &p0, 1), (&copy, &p1, 1), (&inc, &p2, 2)]
        .into_iter()
        .enumerate()
    {
        let out = v.path(&format!("spec{n}.img"));
        let run = r.run(
            &[],
            &["--image", s(img, "image"), "--out", out.to_str().unwrap()],
        );
        assert_eq!(run.code, 0, "point {n}: {run:?}");
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        // The incremental's parent is the full, never the copy.
        assert_eq!(report["chain"].as_array().unwrap().len(), chain, "{report}");
        assert_eq!(
            report["chain"][0].as_str(),
            Some(s(if n == 1 { &copy } else { &full }, "image"))
        );
        assert_eq!(report["read"]["encrypted_records"], 0, "{report}");
        assert_same_bytes(
            &out,
            expected,
            &format!("clear point {n} rebuilt by the spec reader"),
        );
    }
}

#[test]
fn the_spec_reader_restores_cartridges_of_the_first_format() {
    // tests/fixtures/format-major1: images whose headers and trailers are major 1, so
    // their content digest is the digest of the bytes (FORMAT.md 4.4), one chain
    // clear and one encrypted.
    let py = match python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipping: no Python 3 with the spec reader's modules ({why})");
            return;
        }
    };
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-major1");
    let r = Reader {
        py,
        carts: vec![
            fx.join("library/cartridges/TV0001L9"),
            fx.join("library/cartridges/TV0002L9"),
        ],
        pass: fx.join("pass"),
    };
    let key = fx.join("old1.key");
    let key = ["--key", key.to_str().unwrap()];
    let out = tempfile::tempdir().unwrap();
    for (image, name) in [
        ("0ea74f6d-0a8a-4bb6-a69b-a4fd5a938589", "a-full"),
        ("60854d95-4645-4f72-982c-eaf2ccf78439", "a-inc"),
        ("e1fa048f-2754-4498-a451-6b851dda6218", "b-full"),
        ("cb969305-21e4-425f-a24d-13e0802c51dc", "b-inc"),
    ] {
        let to = out.path().join(format!("{name}.img"));
        let run = r.run(&key, &["--image", image, "--out", to.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{image}: {run:?}");
        let z = std::fs::read(fx.join(format!("expected/{name}.img.zst"))).unwrap();
        assert_eq!(
            std::fs::read(&to).unwrap(),
            zstd::decode_all(&z[..]).unwrap(),
            "{name} ({image}) as the spec reader restores it"
        );
    }
}
