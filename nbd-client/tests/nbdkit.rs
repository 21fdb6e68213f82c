//! The client against nbdkit, a second NBD server with its own ways (block size policies,
//! injected errors, delays). Skipped with a printed reason when nbdkit is missing.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use nbd_client::{
    Address, Client, ConnectOptions, Error, Extent, ZeroFlags, FLAG_SEND_FAST_ZERO, STATE_HOLE,
    STATE_ZERO,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

fn have_nbdkit() -> bool {
    match Command::new("nbdkit").arg("--version").output() {
        Ok(o) if o.status.success() => {
            eprintln!(
                "testing against {}",
                String::from_utf8_lossy(&o.stdout).trim()
            );
            true
        }
        _ => {
            eprintln!("skipping: nbdkit is not installed (Debian package nbdkit)");
            false
        }
    }
}

/// An nbdkit daemon on a Unix socket, killed on drop.
struct Nbdkit {
    pid: String,
    addr: Address,
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

fn nbdkit(dir: &Path, args: &[&str]) -> Nbdkit {
    let sock = dir.join("nbdkit.sock");
    let pidfile = dir.join("nbdkit.pid");
    let out = Command::new("nbdkit")
        .arg("-U")
        .arg(&sock)
        .arg("-P")
        .arg(&pidfile)
        .args(args)
        .output()
        .expect("nbdkit runs");
    assert!(
        out.status.success(),
        "nbdkit {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..200 {
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            if !pid.trim().is_empty() {
                return Nbdkit {
                    pid: pid.trim().to_string(),
                    addr: Address::Unix(sock),
                };
            }
        }
        sleep(Duration::from_millis(50));
    }
    panic!("nbdkit wrote no pid file");
}

fn expected(off: u64) -> u8 {
    if off < 4096 {
        0x11
    } else if (MIB..MIB + 64 * KIB).contains(&off) {
        0x22
    } else if (5_000_000..5_000_010).contains(&off) {
        0x33
    } else {
        0
    }
}

fn ext(offset: u64, length: u64, flags: u32) -> Extent {
    Extent {
        offset,
        length,
        flags,
    }
}

/// A sparse read-only export with a 512-byte minimum and a 64 KiB maximum block size,
/// where unaligned requests are errors.
/// `filters` are `--filter=` options, `params` their parameters (after the plugin's).
fn data_export(dir: &Path, filters: &[&str], params: &[&str]) -> Nbdkit {
    let mut args = vec!["-r", "--filter=blocksize-policy"];
    args.extend_from_slice(filters);
    args.extend_from_slice(&[
        "data",
        "@0 0x11*4096 @1048576 0x22*65536 @5000000 0x33*10",
        "size=16M",
        "blocksize-minimum=512",
        "blocksize-preferred=4096",
        "blocksize-maximum=65536",
        "blocksize-error-policy=error",
    ]);
    args.extend_from_slice(params);
    nbdkit(dir, &args)
}

#[test]
fn sparse_data_export_with_block_size_policy() {
    if !have_nbdkit() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = data_export(dir.path(), &[], &[]);
    let opts = ConnectOptions::new("").meta_context("base:allocation");
    let mut c = Client::connect(&k.addr, &opts).unwrap();
    let bs = c.info().block_size;
    assert!(bs.advertised);
    assert_eq!((bs.minimum, bs.preferred, bs.maximum), (512, 4096, 65536));
    assert_eq!(c.max_payload(), 65536);

    // 6 MiB in one call: 96 requests of 64 KiB, each answered within the server's maximum.
    let mut buf = vec![0xaau8; (6 * MIB) as usize];
    c.read(0, &mut buf).unwrap();
    for (i, b) in buf.iter().enumerate() {
        assert_eq!(*b, expected(i as u64), "byte at offset {i}");
    }
    let st = c.block_status(0, 16 * MIB, false).unwrap();
    assert_eq!(
        st[0].extents,
        [
            ext(0, 32 * KIB, 0),
            ext(32 * KIB, MIB - 32 * KIB, STATE_HOLE | STATE_ZERO),
            ext(MIB, 64 * KIB, 0),
            ext(
                MIB + 64 * KIB,
                4_980_736 - MIB - 64 * KIB,
                STATE_HOLE | STATE_ZERO
            ),
            ext(4_980_736, 32 * KIB, 0),
            ext(5_013_504, 16 * MIB - 5_013_504, STATE_HOLE | STATE_ZERO),
        ]
    );
    assert_eq!(c.block_status(0, 16 * MIB, true).unwrap(), st);

    // An unaligned read is refused by this server's policy: a server error, and the
    // connection stays usable.
    let mut small = [0u8; 10];
    match c.read(100, &mut small) {
        Err(Error::Server {
            command: "NBD_CMD_READ",
            errno: 22,
            ..
        }) => {}
        other => panic!("expected EINVAL from the server, got {other:?}"),
    }
    let mut sector = [0u8; 512];
    c.read(0, &mut sector).unwrap();
    assert_eq!(sector, [0x11u8; 512]);
    c.disconnect().unwrap();

    // nbdkit offers no dirty bitmap.
    let opts = ConnectOptions::new("").meta_context("qemu:dirty-bitmap:cp1");
    match Client::connect(&k.addr, &opts) {
        Err(Error::MetaContextNotGranted { missing, .. }) => {
            assert_eq!(missing, "qemu:dirty-bitmap:cp1")
        }
        other => panic!("expected MetaContextNotGranted, got {:?}", other.err()),
    }
}

#[test]
fn injected_read_errors_are_server_errors() {
    if !have_nbdkit() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = data_export(
        dir.path(),
        &["--filter=error"],
        &["error-pread=EIO", "error-pread-rate=100%"],
    );
    let opts = ConnectOptions::new("").meta_context("base:allocation");
    let mut c = Client::connect(&k.addr, &opts).unwrap();
    let mut buf = vec![0u8; 8192];
    for _ in 0..2 {
        match c.read(0, &mut buf) {
            Err(Error::Server {
                command: "NBD_CMD_READ",
                errno: 5,
                offset: 0,
                length: 8192,
                ..
            }) => {}
            other => panic!("expected EIO, got {other:?}"),
        }
    }
    // Block status is not affected by read errors.
    let st = c.block_status(0, MIB, false).unwrap();
    assert_eq!(st[0].extents[0], ext(0, 32 * KIB, 0));
    c.disconnect().unwrap();
}

#[test]
fn a_server_slower_than_the_timeout_gives_a_timeout() {
    if !have_nbdkit() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = data_export(dir.path(), &["--filter=delay"], &["delay-read=30"]);
    let opts = ConnectOptions::new("").timeout(Some(Duration::from_millis(500)));
    let mut c = Client::connect(&k.addr, &opts).unwrap();
    let mut buf = vec![0u8; 4096];
    match c.read(0, &mut buf) {
        Err(e @ Error::Timeout { .. }) => assert!(e.to_string().contains("NBD_CMD_READ"), "{e}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(matches!(c.read(0, &mut buf), Err(Error::Broken(_))));
}

#[test]
fn writable_memory_export() {
    if !have_nbdkit() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = nbdkit(dir.path(), &["memory", "size=8M"]);
    let opts = ConnectOptions::new("").meta_context("base:allocation");
    let mut c = Client::connect(&k.addr, &opts).unwrap();
    assert!(!c.info().read_only());
    let data: Vec<u8> = (0..(2 * MIB) as usize)
        .map(|i| (i % 241) as u8 + 1)
        .collect();
    c.write(MIB, &data, false).unwrap();
    c.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    c.read(MIB, &mut back).unwrap();
    assert!(back == data);

    c.write_zeroes(MIB, 64 * KIB, ZeroFlags::default()).unwrap();
    c.write_zeroes(
        MIB + 64 * KIB,
        64 * KIB,
        ZeroFlags {
            no_hole: true,
            ..Default::default()
        },
    )
    .unwrap();
    c.trim(2 * MIB, MIB).unwrap();
    if c.info().has_flag(FLAG_SEND_FAST_ZERO) {
        c.write_zeroes(
            6 * MIB,
            MIB,
            ZeroFlags {
                fast_zero: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
    c.read(MIB, &mut back).unwrap();
    assert!(back[..(128 * KIB) as usize].iter().all(|b| *b == 0));
    assert!(back[(128 * KIB) as usize..MIB as usize] == data[(128 * KIB) as usize..MIB as usize]);
    assert!(
        back[MIB as usize..].iter().all(|b| *b == 0),
        "trimmed memory reads as zeros"
    );
    let st = c.block_status(0, 8 * MIB, false).unwrap();
    let at = |off: u64| {
        st[0]
            .extents
            .iter()
            .find(|e| e.offset <= off && off < e.offset + e.length)
            .unwrap()
            .flags
    };
    assert_eq!(at(0), STATE_HOLE | STATE_ZERO, "{:?}", st[0].extents);
    assert_eq!(at(MIB + 256 * KIB), 0, "{:?}", st[0].extents);
    assert_eq!(at(2 * MIB), STATE_HOLE | STATE_ZERO, "{:?}", st[0].extents);
    c.disconnect().unwrap();
}
