//! Integration tests against the real qemu-nbd (qemu-utils). Skipped with a printed reason
//! when qemu-img, qemu-io or qemu-nbd is missing.

#[path = "support/x509.rs"]
mod x509;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use nbd_client::{
    Address, Client, ConnectOptions, Error, Extent, Handshake, OptionErrorKind, TlsConfig,
    ZeroFlags, FLAG_READ_ONLY, FLAG_SEND_FAST_ZERO, FLAG_SEND_FUA, STATE_DIRTY, STATE_HOLE,
    STATE_ZERO,
};

const MIB: u64 = 1024 * 1024;
const KIB: u64 = 1024;
const SIZE: u64 = 64 * MIB;

fn have_qemu() -> bool {
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
    if let Ok(o) = Command::new("qemu-nbd").arg("--version").output() {
        let v = String::from_utf8_lossy(&o.stdout);
        eprintln!("testing against {}", v.lines().next().unwrap_or("qemu-nbd"));
    }
    true
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A qcow2 with data at known offsets, a hole, a zeroed range and a dirty bitmap `cp1`
/// (the commands of QEMU-CBT.md section 2).
fn make_image(dir: &Path) -> PathBuf {
    let img = dir.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("64M"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x11 0 4M"])
        .arg(&img));
    run(Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&img)
        .arg("cp1"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .args(["-c", "write -P 0x22 1M 64k"])
        .args(["-c", "write -P 0x33 10M 128k"])
        .args(["-c", "write -z 20M 1M"])
        .arg(&img));
    img
}

/// The byte the image holds at `off`.
fn expected(off: u64) -> u8 {
    if off < 4 * MIB {
        if (MIB..MIB + 64 * KIB).contains(&off) {
            0x22
        } else {
            0x11
        }
    } else if (10 * MIB..10 * MIB + 128 * KIB).contains(&off) {
        0x33
    } else {
        0
    }
}

/// A qemu-nbd daemon, killed on drop.
struct QemuNbd {
    pid: String,
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

fn start_qemu_nbd(dir: &Path, args: &[String], image: &Path) -> Result<QemuNbd, String> {
    let pidfile = dir.join(format!("qemu-nbd-{}.pid", args.len()));
    let _ = std::fs::remove_file(&pidfile);
    let out = Command::new("qemu-nbd")
        .args(args)
        .arg("--persistent")
        .arg("--fork")
        .arg(format!("--pid-file={}", pidfile.display()))
        .arg(image)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    // --fork returns once the server listens; the pid file may lag a moment.
    for _ in 0..200 {
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            if !pid.trim().is_empty() {
                return Ok(QemuNbd {
                    pid: pid.trim().to_string(),
                });
            }
        }
        sleep(Duration::from_millis(50));
    }
    Err("qemu-nbd wrote no pid file".into())
}

fn serve_unix(dir: &Path, image: &Path, extra: &[&str]) -> (QemuNbd, Address) {
    let sock = dir.join(format!("nbd-{}.sock", extra.len()));
    let mut args: Vec<String> = vec![
        "--format=qcow2".into(),
        format!("--socket={}", sock.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let q = start_qemu_nbd(dir, &args, image).expect("qemu-nbd starts");
    (q, Address::Unix(sock))
}

/// The read-only export "disk" with the bitmap and allocation depth (`-r -A -B cp1`).
fn serve_ro(dir: &Path, image: &Path) -> (QemuNbd, Address) {
    serve_unix(
        dir,
        image,
        &["--read-only", "-A", "--bitmap=cp1", "--export-name=disk"],
    )
}

fn ext(offset: u64, length: u64, flags: u32) -> Extent {
    Extent {
        offset,
        length,
        flags,
    }
}

fn check_bytes(buf: &[u8], at: u64) {
    for (i, b) in buf.iter().enumerate() {
        let off = at + i as u64;
        if *b != expected(off) {
            panic!(
                "byte at offset {off} is 0x{b:02x}, expected 0x{:02x}",
                expected(off)
            );
        }
    }
}

fn base_allocation_expected() -> Vec<Extent> {
    vec![
        ext(0, 4 * MIB, 0),
        ext(4 * MIB, 6 * MIB, STATE_HOLE | STATE_ZERO),
        ext(10 * MIB, 128 * KIB, 0),
        ext(
            10 * MIB + 128 * KIB,
            SIZE - 10 * MIB - 128 * KIB,
            STATE_HOLE | STATE_ZERO,
        ),
    ]
}

fn dirty_expected() -> Vec<Extent> {
    vec![
        ext(0, MIB, 0),
        ext(MIB, 64 * KIB, STATE_DIRTY),
        ext(MIB + 64 * KIB, 10 * MIB - MIB - 64 * KIB, 0),
        ext(10 * MIB, 128 * KIB, STATE_DIRTY),
        ext(10 * MIB + 128 * KIB, 20 * MIB - 10 * MIB - 128 * KIB, 0),
        ext(20 * MIB, MIB, STATE_DIRTY),
        ext(21 * MIB, SIZE - 21 * MIB, 0),
    ]
}

fn opts_all() -> ConnectOptions {
    ConnectOptions::new("disk")
        .meta_context("base:allocation")
        .meta_context("qemu:dirty-bitmap:cp1")
        .meta_context("qemu:allocation-depth")
}

#[test]
fn read_and_block_status_over_unix_socket() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path());
    let (_q, addr) = serve_ro(dir.path(), &img);
    let mut c = Client::connect(&addr, &opts_all()).unwrap();

    let info = c.info().clone();
    assert_eq!(info.size, SIZE);
    assert!(info.read_only() && info.has_flag(FLAG_READ_ONLY));
    assert!(info.block_size.advertised);
    assert_eq!(info.block_size.maximum, 32 * MIB as u32);
    assert!(info.block_size.minimum >= 1 && info.block_size.preferred >= info.block_size.minimum);
    assert!(c.structured_replies());
    let names: Vec<&str> = c.meta_contexts().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "base:allocation",
            "qemu:dirty-bitmap:cp1",
            "qemu:allocation-depth"
        ]
    );
    assert_eq!(c.max_payload(), 32 * MIB as u32);

    // The whole disk in windows that do not align with anything.
    let window = 5 * MIB + 4097;
    let mut buf = vec![0u8; window as usize];
    let mut off = 0;
    while off < SIZE {
        let n = (SIZE - off).min(window) as usize;
        c.read(off, &mut buf[..n]).unwrap();
        check_bytes(&buf[..n], off);
        off += n as u64;
    }
    // One read larger than the 32 MiB maximum: split in 2 MiB requests by default, and at
    // the 32 MiB maximum when asked for more.
    assert_eq!(c.request_size(), 2 * MIB as u32);
    let mut big = vec![0xeeu8; (40 * MIB) as usize];
    c.read(3 * MIB + 512, &mut big).unwrap();
    check_bytes(&big, 3 * MIB + 512);
    assert_eq!(c.set_request_size(u32::MAX), 32 * MIB as u32);
    big.fill(0xee);
    c.read(3 * MIB + 512, &mut big).unwrap();
    check_bytes(&big, 3 * MIB + 512);
    drop(big);

    let st = c.block_status(0, SIZE, false).unwrap();
    assert_eq!(st.len(), 3);
    assert_eq!(st[0].context, "base:allocation");
    assert_eq!(st[0].extents, base_allocation_expected());
    assert_eq!(st[1].context, "qemu:dirty-bitmap:cp1");
    assert_eq!(st[1].extents, dirty_expected());
    // Allocation depth: contiguous over the whole disk, depth 1 where data was written.
    let depth = &st[2].extents;
    assert_eq!(depth.first().unwrap().offset, 0);
    for w in depth.windows(2) {
        assert_eq!(w[0].offset + w[0].length, w[1].offset);
    }
    let last = depth.last().unwrap();
    assert_eq!(last.offset + last.length, SIZE);
    assert!(depth
        .iter()
        .any(|e| e.offset == 0 && e.length >= 4 * MIB && e.flags == 1));

    // REQ_ONE: one extent per context per request, same result.
    let one = c.block_status(0, SIZE, true).unwrap();
    assert_eq!(one, st);

    // A sub-range that starts and ends inside extents is clipped exactly.
    let part = c.block_status(MIB + 100, 10 * MIB, false).unwrap();
    assert_eq!(
        part[1].extents,
        vec![
            ext(MIB + 100, 64 * KIB - 100, 0).with_flags(STATE_DIRTY),
            ext(MIB + 64 * KIB, 9 * MIB - 64 * KIB, 0),
            ext(10 * MIB, 128 * KIB, STATE_DIRTY),
            ext(10 * MIB + 128 * KIB, MIB + 100 - 128 * KIB, 0),
        ]
    );
    assert_eq!(
        part[0].extents,
        vec![
            ext(MIB + 100, 3 * MIB - 100, 0),
            ext(4 * MIB, 6 * MIB, STATE_HOLE | STATE_ZERO),
            ext(10 * MIB, 128 * KIB, 0),
            ext(
                10 * MIB + 128 * KIB,
                MIB + 100 - 128 * KIB,
                STATE_HOLE | STATE_ZERO
            ),
        ]
    );

    // Checked locally before anything is sent; the connection stays usable.
    assert!(matches!(
        c.write(0, &[1, 2, 3], false),
        Err(Error::Unsupported(_))
    ));
    let mut one_byte = [0u8; 1];
    assert!(matches!(
        c.read(SIZE, &mut one_byte),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        c.block_status(SIZE - 1, 2, false),
        Err(Error::InvalidArgument(_))
    ));
    c.read(SIZE - 1, &mut one_byte).unwrap();
    assert_eq!(one_byte[0], 0);
    c.disconnect().unwrap();
}

trait WithFlags {
    fn with_flags(self, flags: u32) -> Self;
}
impl WithFlags for Extent {
    fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }
}

#[test]
fn handshake_queries_and_refusals() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path());
    let (_q, addr) = serve_ro(dir.path(), &img);

    let mut hs = Handshake::connect(&addr, Some(Duration::from_secs(30))).unwrap();
    let exports = hs.list_exports().unwrap();
    assert_eq!(exports.len(), 1);
    assert_eq!(exports[0].name, "disk");
    let info = hs.info("disk").unwrap();
    assert_eq!(info.size, SIZE);
    assert!(info.read_only());
    match hs.info("nosuch") {
        Err(Error::OptionRefused {
            option: "NBD_OPT_INFO",
            kind: OptionErrorKind::UnknownExport,
            message,
        }) => assert!(message.contains("nosuch"), "message: {message}"),
        other => panic!("expected an unknown-export refusal, got {other:?}"),
    }
    // Listing meta contexts needs structured replies first.
    assert!(matches!(
        hs.list_meta_contexts("disk", &[]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(hs.structured_replies().unwrap());
    let mut all = hs.list_meta_contexts("disk", &[]).unwrap();
    all.sort();
    assert_eq!(
        all,
        [
            "base:allocation",
            "qemu:allocation-depth",
            "qemu:dirty-bitmap:cp1"
        ]
    );
    let bitmaps = hs
        .list_meta_contexts("disk", &["qemu:dirty-bitmap:"])
        .unwrap();
    assert_eq!(bitmaps, ["qemu:dirty-bitmap:cp1"]);
    match hs.set_meta_contexts("disk", &["base:allocation", "qemu:dirty-bitmap:nosuch"]) {
        Err(Error::MetaContextNotGranted {
            export,
            missing,
            granted,
        }) => {
            assert_eq!(export, "disk");
            assert_eq!(missing, "qemu:dirty-bitmap:nosuch");
            assert_eq!(granted, ["base:allocation"]);
        }
        other => panic!("expected MetaContextNotGranted, got {other:?}"),
    }
    // The session is still good: select properly and go.
    let granted = hs
        .set_meta_contexts("disk", &["qemu:dirty-bitmap:cp1"])
        .unwrap();
    assert_eq!(granted.len(), 1);
    let mut c = hs.go("disk").unwrap();
    let st = c.block_status(0, SIZE, false).unwrap();
    assert_eq!(st[0].extents, dirty_expected());
    c.disconnect().unwrap();

    // Unknown export at GO, through Client::connect.
    match Client::connect(&addr, &ConnectOptions::new("nosuch")) {
        Err(Error::OptionRefused {
            option: "NBD_OPT_GO",
            kind: OptionErrorKind::UnknownExport,
            ..
        }) => {}
        other => panic!("expected an unknown-export refusal, got {:?}", other.err()),
    }
    // A bitmap that is not exported.
    let opts = ConnectOptions::new("disk").meta_context("qemu:dirty-bitmap:cp2");
    match Client::connect(&addr, &opts) {
        Err(e @ Error::MetaContextNotGranted { .. }) => {
            assert!(e.to_string().contains("qemu:dirty-bitmap:cp2"), "{e}")
        }
        other => panic!("expected MetaContextNotGranted, got {:?}", other.err()),
    }
    // Abort leaves cleanly.
    let hs = Handshake::connect(&addr, Some(Duration::from_secs(30))).unwrap();
    hs.abort().unwrap();
}

#[test]
fn simple_replies_without_structured_negotiation() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path());
    let (_q, addr) = serve_ro(dir.path(), &img);
    let mut c = Client::connect(
        &addr,
        &ConnectOptions::new("disk").structured_replies(false),
    )
    .unwrap();
    assert!(!c.structured_replies());
    let mut buf = vec![0u8; (3 * MIB) as usize];
    c.read(MIB - 7, &mut buf).unwrap();
    check_bytes(&buf, MIB - 7);
    c.read(9 * MIB, &mut buf).unwrap();
    check_bytes(&buf, 9 * MIB);
    assert!(matches!(
        c.block_status(0, MIB, false),
        Err(Error::Unsupported(_))
    ));
    c.disconnect().unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn read_and_block_status_over_tcp() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path());
    // A free port can be taken by someone else between the probe and qemu-nbd: retry.
    let mut started = None;
    for _ in 0..5 {
        let port = free_port();
        let args: Vec<String> = [
            "--format=qcow2",
            "--read-only",
            "--bitmap=cp1",
            "--export-name=disk",
            "--bind=127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--port={port}")])
        .collect();
        if let Ok(q) = start_qemu_nbd(dir.path(), &args, &img) {
            started = Some((q, port));
            break;
        }
    }
    let (_q, port) = started.expect("qemu-nbd listens on a free TCP port");
    let addr = Address::Tcp(format!("127.0.0.1:{port}"));
    let opts = ConnectOptions::new("disk")
        .meta_context("qemu:dirty-bitmap:cp1")
        .meta_context("base:allocation");
    let mut c = Client::connect(&addr, &opts).unwrap();
    assert_eq!(c.size(), SIZE);
    let st = c.block_status(0, SIZE, false).unwrap();
    assert_eq!(st[0].extents, dirty_expected());
    assert_eq!(st[1].extents, base_allocation_expected());
    // Read every dirty extent, as an incremental backup would.
    for e in &st[0].extents {
        if e.flags & STATE_DIRTY != 0 {
            let mut buf = vec![0xffu8; e.length as usize];
            c.read(e.offset, &mut buf).unwrap();
            check_bytes(&buf, e.offset);
        }
    }
    c.disconnect().unwrap();
}

#[test]
fn writes_zeroes_trim_and_flush_on_a_writable_export() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("w.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("16M"));
    let (_q, addr) = serve_unix(dir.path(), &img, &["--discard=unmap", "--export-name=w"]);
    let opts = ConnectOptions::new("w").meta_context("base:allocation");
    let mut c = Client::connect(&addr, &opts).unwrap();
    assert!(!c.info().read_only());
    let fua = c.info().has_flag(FLAG_SEND_FUA);

    let data: Vec<u8> = (0..(3 * MIB) as usize).map(|i| (i % 251) as u8).collect();
    c.write(MIB, &data, fua).unwrap();
    c.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    c.read(MIB, &mut back).unwrap();
    assert!(back == data, "written data reads back");
    let st = c.block_status(0, 16 * MIB, false).unwrap();
    assert_eq!(
        st[0].extents[1],
        ext(MIB, 3 * MIB, 0),
        "{:?}",
        st[0].extents
    );

    // Zeroes that may punch a hole, zeroes that keep the allocation, and a trim.
    c.write_zeroes(MIB, 64 * KIB, ZeroFlags::default()).unwrap();
    c.write_zeroes(
        2 * MIB,
        64 * KIB,
        ZeroFlags {
            no_hole: true,
            ..Default::default()
        },
    )
    .unwrap();
    c.trim(3 * MIB, MIB).unwrap();
    let mut z = vec![0xffu8; (64 * KIB) as usize];
    c.read(MIB, &mut z).unwrap();
    assert!(z.iter().all(|b| *b == 0));
    c.read(2 * MIB, &mut z).unwrap();
    assert!(z.iter().all(|b| *b == 0));
    let mut t = vec![0xffu8; MIB as usize];
    c.read(3 * MIB, &mut t).unwrap();
    assert!(
        t.iter().all(|b| *b == 0),
        "trimmed range of a qcow2 without backing reads zeros"
    );
    let st = c.block_status(MIB, 3 * MIB, false).unwrap();
    let zero_at = |off: u64| {
        st[0]
            .extents
            .iter()
            .find(|e| e.offset <= off && off < e.offset + e.length)
            .map(|e| e.flags & STATE_ZERO != 0)
            .unwrap()
    };
    assert!(
        zero_at(MIB) && zero_at(2 * MIB) && zero_at(3 * MIB),
        "{:?}",
        st[0].extents
    );
    assert!(
        !zero_at(MIB + 64 * KIB),
        "untouched data stays data: {:?}",
        st[0].extents
    );

    if c.info().has_flag(FLAG_SEND_FAST_ZERO) {
        let r = c.write_zeroes(
            5 * MIB,
            MIB,
            ZeroFlags {
                fast_zero: true,
                ..Default::default()
            },
        );
        match r {
            Ok(()) => {}
            Err(Error::Server { errno: 95, .. }) => {} // ENOTSUP: allowed answer to FAST_ZERO
            Err(e) => panic!("fast zero: {e}"),
        }
    }
    // Beyond the end: refused before sending; the connection stays usable.
    assert!(matches!(
        c.write(16 * MIB - 1, &[0, 0], false),
        Err(Error::InvalidArgument(_))
    ));
    c.disconnect().unwrap();

    // A second connection sees what the first wrote.
    let mut c = Client::connect(&addr, &ConnectOptions::new("w")).unwrap();
    let mut back = vec![0u8; MIB as usize];
    c.read(MIB + 64 * KIB, &mut back[..(MIB - 64 * KIB) as usize])
        .unwrap();
    assert!(back[..(MIB - 64 * KIB) as usize] == data[(64 * KIB) as usize..MIB as usize]);
    c.disconnect().unwrap();
}

/// QEMU-layout test certificates in `dir` (see `support/x509.rs`).
fn make_certs(dir: &Path) -> bool {
    x509::make_qemu_x509(dir)
}

#[test]
fn tls_over_tcp_with_qemu_x509_credentials() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    if !make_certs(dir.path()) {
        return;
    }
    let img = make_image(dir.path());
    let srv = dir.path().join("srv");
    let mut started = None;
    for _ in 0..5 {
        let port = free_port();
        let args: Vec<String> = vec![
            "--object".into(),
            format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=on",
                srv.display()
            ),
            "--tls-creds=tls0".into(),
            "--format=qcow2".into(),
            "--read-only".into(),
            "--bitmap=cp1".into(),
            "--export-name=disk".into(),
            "--bind=127.0.0.1".into(),
            format!("--port={port}"),
        ];
        if let Ok(q) = start_qemu_nbd(dir.path(), &args, &img) {
            started = Some((q, port));
            break;
        }
    }
    let (_q, port) = started.expect("qemu-nbd with TLS listens on a free TCP port");
    let addr = Address::Tcp(format!("127.0.0.1:{port}"));
    let tls = TlsConfig::from_qemu_dir(&dir.path().join("cli"), "localhost");
    assert!(tls.client_cert.is_some() && tls.client_key.is_some());

    let opts = ConnectOptions::new("disk")
        .meta_context("qemu:dirty-bitmap:cp1")
        .tls(tls.clone());
    let mut c = Client::connect(&addr, &opts).unwrap();
    assert_eq!(c.size(), SIZE);
    let st = c.block_status(0, SIZE, false).unwrap();
    assert_eq!(st[0].extents, dirty_expected());
    let mut buf = vec![0u8; (33 * MIB) as usize];
    c.read(0, &mut buf).unwrap();
    check_bytes(&buf, 0);
    c.disconnect().unwrap();

    // The certificate may also be checked against the IP address.
    let mut by_ip = tls.clone();
    by_ip.server_name = "127.0.0.1".into();
    let c = Client::connect(&addr, &ConnectOptions::new("disk").tls(by_ip)).unwrap();
    c.disconnect().unwrap();

    // Plain text is refused by the server.
    match Client::connect(&addr, &ConnectOptions::new("disk")) {
        Err(Error::OptionRefused {
            kind: OptionErrorKind::TlsRequired,
            ..
        }) => {}
        other => panic!("expected a TLS-required refusal, got {:?}", other.err()),
    }
    // A server certificate from another CA, or for another name, does not verify.
    let wrong_ca = TlsConfig {
        ca_cert: dir.path().join("other/ca-cert.pem"),
        ..tls.clone()
    };
    match Client::connect(&addr, &ConnectOptions::new("disk").tls(wrong_ca)) {
        Err(Error::Tls(m)) => assert!(m.contains("certificate"), "{m}"),
        other => panic!("expected a TLS error, got {:?}", other.err()),
    }
    let mut wrong_name = tls.clone();
    wrong_name.server_name = "backup.example".into();
    match Client::connect(&addr, &ConnectOptions::new("disk").tls(wrong_name)) {
        Err(Error::Tls(m)) => assert!(m.contains("certificate"), "{m}"),
        other => panic!("expected a TLS error, got {:?}", other.err()),
    }
    // verify-peer=on: without a client certificate the server hangs up.
    let anonymous = TlsConfig {
        client_cert: None,
        client_key: None,
        ..tls.clone()
    };
    let r = Client::connect(&addr, &ConnectOptions::new("disk").tls(anonymous));
    assert!(
        matches!(r, Err(Error::Tls(_)) | Err(Error::Closed { .. })),
        "{:?}",
        r.err()
    );
    // Unreadable credentials are named.
    let missing = TlsConfig::from_qemu_dir(&dir.path().join("nosuch"), "localhost");
    match Client::connect(&addr, &ConnectOptions::new("disk").tls(missing)) {
        Err(Error::Tls(m)) => assert!(m.contains("ca-cert.pem"), "{m}"),
        other => panic!("expected a TLS error, got {:?}", other.err()),
    }
}

#[test]
fn two_bitmaps_of_successive_epochs_at_once() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("epochs.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("16M"));
    run(Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&img)
        .arg("tv-1"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x44 1M 64k"])
        .arg(&img));
    run(Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&img)
        .arg("tv-2"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x55 3M 128k"])
        .arg(&img));
    let (_q, addr) = serve_unix(
        dir.path(),
        &img,
        &["--read-only", "--bitmap=tv-1", "--bitmap=tv-2"],
    );

    // Discover the bitmaps, then select them by exact name.
    let mut hs = Handshake::connect(&addr, Some(Duration::from_secs(30))).unwrap();
    assert!(hs.structured_replies().unwrap());
    let mut found = hs.list_meta_contexts("", &["qemu:dirty-bitmap:"]).unwrap();
    found.sort();
    assert_eq!(found, ["qemu:dirty-bitmap:tv-1", "qemu:dirty-bitmap:tv-2"]);
    let mut wanted = vec!["base:allocation"];
    wanted.extend(found.iter().map(|s| s.as_str()));
    hs.set_meta_contexts("", &wanted).unwrap();
    let mut c = hs.go("").unwrap();
    let st = c.block_status(0, 16 * MIB, false).unwrap();
    let names: Vec<&str> = st.iter().map(|s| s.context.as_str()).collect();
    assert_eq!(names, wanted);
    let tail = |from: u64| 16 * MIB - from;
    assert_eq!(
        st[0].extents,
        [
            ext(0, MIB, STATE_HOLE | STATE_ZERO),
            ext(MIB, 64 * KIB, 0),
            ext(MIB + 64 * KIB, 2 * MIB - 64 * KIB, STATE_HOLE | STATE_ZERO),
            ext(3 * MIB, 128 * KIB, 0),
            ext(
                3 * MIB + 128 * KIB,
                tail(3 * MIB + 128 * KIB),
                STATE_HOLE | STATE_ZERO
            ),
        ]
    );
    // tv-1 saw both writes, tv-2 only the one after it was added.
    assert_eq!(
        st[1].extents,
        [
            ext(0, MIB, 0),
            ext(MIB, 64 * KIB, STATE_DIRTY),
            ext(MIB + 64 * KIB, 2 * MIB - 64 * KIB, 0),
            ext(3 * MIB, 128 * KIB, STATE_DIRTY),
            ext(3 * MIB + 128 * KIB, tail(3 * MIB + 128 * KIB), 0),
        ]
    );
    assert_eq!(
        st[2].extents,
        [
            ext(0, 3 * MIB, 0),
            ext(3 * MIB, 128 * KIB, STATE_DIRTY),
            ext(3 * MIB + 128 * KIB, tail(3 * MIB + 128 * KIB), 0),
        ]
    );
    c.disconnect().unwrap();
}
