//! `tapevault library serve` through the real binary: the library served over iSCSI on a
//! loopback port, driven with the iscsi-target crate's test initiator, stopped with
//! SIGTERM; what was written through the target is then read in-process.

mod common;

use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Stdio};

use common::*;
use iscsi_target::initiator::{CommandResult, Initiator};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const INITIATOR: &str = "iqn.2025-01.org.tapevault:serve-test";

/// A running `tapevault library serve`, with its startup document.
struct Serving {
    child: Child,
    stderr: Option<ChildStderr>,
    started: Value,
}

impl Serving {
    fn start(v: &Vault, extra: &[&str]) -> Serving {
        let mut args = vec!["library", "serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = v
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tapevault library serve");
        // The startup document is pretty-printed JSON ending with a "}" line.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut doc = String::new();
        loop {
            let mut line = String::new();
            let n = out.read_line(&mut line).unwrap();
            if n == 0 {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                let _ = child.wait();
                panic!("serve exited before its startup document: {doc}\nstderr: {err}");
            }
            doc.push_str(&line);
            if line.trim_end() == "}" {
                break;
            }
        }
        let started: Value = serde_json::from_str(&doc).expect("startup JSON");
        let stderr = child.stderr.take();
        Serving {
            child,
            stderr,
            started,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.started["address"].as_str().unwrap().parse().unwrap()
    }

    fn login(&self, isid_last: u8) -> Initiator {
        Initiator::login(
            self.addr(),
            INITIATOR,
            Some(self.started["target"].as_str().unwrap()),
            [0x80, 0, 0, 0, 0, isid_last],
        )
        .expect("login")
    }

    /// SIGTERM, then the exit code and everything the target logged.
    fn terminate(mut self) -> (i32, String) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let mut err = String::new();
        self.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let st = self.child.wait().unwrap();
        (st.code().unwrap_or(-1), err)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // A failed assertion must not leave the target running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settle(i: &mut Initiator, lun: u64) -> CommandResult {
    for _ in 0..8 {
        let r = i.command(lun, &[0; 6], &[], 0).unwrap();
        if r.sense_key() != Some(6) {
            return r;
        }
    }
    panic!("unit attentions never stopped on LUN {lun}");
}

fn inquiry(i: &mut Initiator, lun: u64) -> Vec<u8> {
    let r = i.command(lun, &[0x12, 0, 0, 0, 96, 0], &[], 96).unwrap();
    assert_eq!(r.status, 0, "INQUIRY of LUN {lun}: {r:?}");
    r.data
}

fn write6(len: u32) -> Vec<u8> {
    let l = len.to_be_bytes();
    vec![0x0a, 0, l[1], l[2], l[3], 0]
}

#[test]
fn serve_answers_inquiry_and_stops_cleanly_on_sigterm() {
    let v = Vault::init(&[
        "--slots",
        "3",
        "--drives",
        "2",
        "--mailslots",
        "1",
        "--capacity",
        "16M",
    ]);
    let s = Serving::start(&v, &[]);
    assert_eq!(s.started["target"], iscsi_target::DEFAULT_TARGET_NAME);
    let luns = s.started["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 3, "{}", s.started);
    assert_eq!(luns[0]["kind"], "changer");
    assert_eq!(luns[0]["device_type"], 8);
    assert_eq!(luns[1]["kind"], "drive");
    assert_eq!(luns[1]["drive"], 0);
    assert_eq!(luns[2]["lun"], 2);
    assert_eq!(
        s.started["library"].as_str().unwrap(),
        v.library_dir().to_str().unwrap()
    );

    let mut i = s.login(1);
    let changer = inquiry(&mut i, 0);
    assert_eq!(changer[0] & 0x1f, 0x08, "LUN 0 is a medium changer");
    assert_eq!(&changer[16..31], b"VIRTUAL LIBRARY");
    let drive = inquiry(&mut i, 1);
    assert_eq!(drive[0] & 0x1f, 0x01, "LUN 1 is a tape drive");
    assert_eq!(&drive[8..16], b"TAPEVALT");

    // Load the first slot's cartridge into drive 0 and write a block and a filemark.
    settle(&mut i, 0);
    let mv = [0xa5, 0, 0, 0, 0x04, 0x00, 0x01, 0x00, 0, 0, 0, 0];
    let r = i.command(0, &mv, &[], 0).unwrap();
    assert_eq!(r.status, 0, "MOVE MEDIUM: {r:?}");
    assert_eq!(settle(&mut i, 1).status, 0);
    let canary = b"served-canary-block-0123456789".repeat(100);
    let r = i
        .command(1, &write6(canary.len() as u32), &canary, 0)
        .unwrap();
    assert_eq!(r.status, 0, "WRITE(6): {r:?}");
    let r = i.command(1, &[0x10, 0, 0, 0, 1, 0], &[], 0).unwrap();
    assert_eq!(r.status, 0, "WRITE FILEMARKS: {r:?}");
    // The session stays logged in: SIGTERM must close it and flush the drive.
    let (code, log) = s.terminate();
    assert_eq!(code, 0, "serve exit code; stderr:\n{log}");
    assert!(log.contains(INITIATOR), "the login is logged:\n{log}");
    assert!(log.contains("SIGTERM"), "the stop is logged:\n{log}");
    drop(i);

    // In-process: the home sees the cartridge in drive 0, and it holds what was written.
    let st = v.ok(&["library", "status"]);
    let drives = &st["inventory"]["drives"];
    assert!(
        drives.to_string().contains("\"barcode\""),
        "drive 0 holds the cartridge: {st}"
    );
    let lib = vtl_sim::Library::open(&v.library_dir()).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    d.rewind().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    match d.read_block(&mut buf).unwrap() {
        vtl_sim::Read::Block(n) => assert_eq!(&buf[..n], &canary[..]),
        other => panic!("expected the canary block, read {other:?}"),
    }
    assert!(matches!(
        d.read_block(&mut buf).unwrap(),
        vtl_sim::Read::Filemark
    ));
    assert!(matches!(
        d.read_block(&mut buf).unwrap(),
        vtl_sim::Read::EndOfData
    ));
}

#[test]
fn serve_refuses_a_remote_address_without_allow_remote() {
    let v = Vault::small(2, "8M");
    let r = v.fails(&["library", "serve", "--listen", "0.0.0.0:0"], 2);
    assert!(
        r.stderr.contains("--allow-remote") || r.stdout.contains("--allow-remote"),
        "{r:?}"
    );
    let r = v.fails(
        &[
            "library",
            "serve",
            "--library",
            v.path("nowhere").to_str().unwrap(),
        ],
        2,
    );
    assert!(
        r.stdout.contains("nowhere") || r.stderr.contains("nowhere"),
        "{r:?}"
    );
}

#[test]
fn serve_with_library_dir_and_sigint() {
    // --library DIR needs no home; SIGINT stops it as SIGTERM does.
    let v = Vault::small(2, "8M");
    let lib = v.library_dir();
    let other = Vault::small(1, "8M"); // a home whose library is not the one served
    let s = Serving::start(&other, &["--library", lib.to_str().unwrap()]);
    assert_eq!(
        s.started["library"].as_str().unwrap(),
        lib.to_str().unwrap()
    );
    assert_eq!(s.started["luns"].as_array().unwrap().len(), 2);
    let mut i = s.login(2);
    assert_eq!(inquiry(&mut i, 1)[0] & 0x1f, 1);
    assert_eq!(i.logout().unwrap(), 0);
    kill(Pid::from_raw(s.child.id() as i32), Signal::SIGINT).unwrap();
    let mut s = s;
    let st = s.child.wait().unwrap();
    assert_eq!(st.code(), Some(0));
}

#[test]
fn tapevault_and_the_target_share_one_drive_lock() {
    let v = Vault::init(&["--slots", "2", "--drives", "1", "--capacity", "8M"]);
    // Serving takes no drive: tapevault can use it before anyone logs in.
    let s = Serving::start(&v, &[]);
    v.ok(&["tape", "status"]);
    let mut i = s.login(3);
    settle(&mut i, 0);
    let mv = [0xa5, 0, 0, 0, 0x04, 0x00, 0x01, 0x00, 0, 0, 0, 0];
    assert_eq!(i.command(0, &mv, &[], 0).unwrap().status, 0);
    assert_eq!(settle(&mut i, 1).status, 0);
    // The host keeps the drive open (st sends PREVENT MEDIUM REMOVAL on open).
    let r = i.command(1, &[0x1e, 0, 0, 0, 1, 0], &[], 0).unwrap();
    assert_eq!(r.status, 0, "PREVENT: {r:?}");
    let r = v.run(&["tape", "status"]);
    assert_ne!(r.code, 0, "tape status on a drive the host holds: {r:?}");
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("in use by another process"),
        "{r:?}"
    );
    // The host closes the device and logs out: tapevault gets the drive.
    assert_eq!(
        i.command(1, &[0x1e, 0, 0, 0, 0, 0], &[], 0).unwrap().status,
        0
    );
    assert_eq!(i.logout().unwrap(), 0);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = v.run(&["tape", "status"]);
        if r.code == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the target never let the drive go: {r:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, log) = s.terminate();
    assert_eq!(code, 0, "{log}");
}

/// The writer process of `a_killed_initiator_process_leaves_what_it_had_acknowledged`:
/// runs only when that test starts this test binary with TV_SERVE_WRITER=ADDR,TARGET.
/// It writes numbered 4 KiB blocks to drive 0 forever, printing `ACK n` after each one
/// the target acknowledged.
#[test]
fn killed_writer_child() {
    let Ok(spec) = std::env::var("TV_SERVE_WRITER") else {
        return;
    };
    use std::io::Write as _;
    let (addr, target) = spec.split_once(',').unwrap();
    let mut i = Initiator::login(
        addr.parse().unwrap(),
        "iqn.2025-01.org.tapevault:killed-writer",
        Some(target),
        [0x80, 0, 0, 0, 0, 9],
    )
    .unwrap();
    assert_eq!(settle(&mut i, 1).status, 0);
    assert_eq!(
        i.command(1, &[0x01, 0, 0, 0, 0, 0], &[], 0).unwrap().status,
        0
    );
    let mut out = std::io::stdout().lock();
    for n in 0u32.. {
        let r = i.command(1, &write6(4096), &numbered(n), 0).unwrap();
        assert_eq!(r.status, 0, "WRITE {n}: {r:?}");
        writeln!(out, "ACK {n}").unwrap();
        out.flush().unwrap();
    }
}

fn numbered(n: u32) -> Vec<u8> {
    let mut b: Vec<u8> = (0..4096u32)
        .map(|k| (k.wrapping_mul(7) ^ n) as u8)
        .collect();
    b[..4].copy_from_slice(&n.to_be_bytes());
    b
}

#[test]
fn a_killed_initiator_process_leaves_what_it_had_acknowledged() {
    let v = Vault::init(&["--slots", "2", "--drives", "2", "--capacity", "64M"]);
    let s = Serving::start(&v, &[]);
    let mut i = s.login(4);
    settle(&mut i, 0);
    let mv = [0xa5, 0, 0, 0, 0x04, 0x00, 0x01, 0x00, 0, 0, 0, 0];
    assert_eq!(i.command(0, &mv, &[], 0).unwrap().status, 0);

    // Another process writes to drive 0 and is killed (SIGKILL: no logout, no FIN
    // handshake it controls) once it has had 40 blocks acknowledged.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "TV_SERVE_WRITER",
            format!("{},{}", s.addr(), s.started["target"].as_str().unwrap()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked: Option<u32> = None;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(l)) = lines.next() {
        if let Some(n) = l.strip_prefix("ACK ") {
            let n: u32 = n.parse().unwrap();
            acked = Some(n);
            if n >= 40 {
                break;
            }
        }
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let acked = acked.expect("the writer never had a block acknowledged");
    assert!(acked >= 40, "the writer stopped early at {acked}");

    // The target keeps serving: drive 1 and the changer answer at once; drive 0 comes
    // back to another host once the dead session is gone.
    let r = settle(&mut i, 2);
    assert_eq!(
        r.sense_key(),
        Some(2),
        "the empty drive 1 says no medium: {r:?}"
    );
    assert_eq!(inquiry(&mut i, 2)[0] & 0x1f, 1);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = settle(&mut i, 1);
        if r.status == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "drive 0 stayed busy after its initiator died: {r:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        i.command(1, &[0x01, 0, 0, 0, 0, 0], &[], 0).unwrap().status,
        0
    );
    let mut n = 0u32;
    loop {
        // READ(6), SILI: a whole block or a sense at end of data.
        let r = i
            .command(1, &[0x08, 0x02, 0, 0x10, 0, 0], &[], 4096)
            .unwrap();
        if r.status != 0 {
            assert_eq!(r.sense_key(), Some(8), "after {n} blocks: {r:?}");
            break;
        }
        assert_eq!(
            r.data,
            numbered(n),
            "block {n} is not the writer's block {n}"
        );
        n += 1;
    }
    assert!(
        n > acked,
        "only {n} blocks on the cartridge, {} were acknowledged",
        acked + 1
    );
    let (code, log) = s.terminate();
    assert_eq!(code, 0, "{log}");
    drop(i);

    // In-process, the cartridge opens consistent with the same blocks.
    let lib = vtl_sim::Library::open(&v.library_dir()).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    d.rewind().unwrap();
    let mut buf = vec![0u8; 8192];
    for k in 0..n {
        assert_eq!(d.read_block(&mut buf).unwrap(), vtl_sim::Read::Block(4096));
        assert_eq!(&buf[..4096], &numbered(k)[..], "in-process block {k}");
    }
    assert_eq!(d.read_block(&mut buf).unwrap(), vtl_sim::Read::EndOfData);
}
