//! A TCG QEMU with qcow2 disks and a QMP socket, for the live-backup tests (no guest
//! OS: guest writes go through the device's backend with HMP `qemu-io`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tapevault::source::qmp::QmpClient;

pub fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// None (and the reason printed) when QEMU is missing.
pub fn qemu_missing() -> bool {
    for b in ["qemu-system-x86_64", "qemu-img"] {
        if !have(b) {
            eprintln!("skipped: {b} is not installed (Debian: qemu-system-x86, qemu-utils)");
            return true;
        }
    }
    false
}

pub struct TestDiskSpec {
    pub file: PathBuf,
    pub size: u64,
    pub serial: String,
}

pub struct Vm {
    pub dir: PathBuf,
    pub qmp: PathBuf,
    pub agent: Option<PathBuf>,
    child: Option<Child>,
    pub disks: Vec<TestDiskSpec>,
}

/// Connects to a QEMU monitor socket. QEMU's monitor serves one client: a connection
/// closed a moment ago (a killed client) may still be refused for a short while, and so
/// may one made as QEMU starts.
fn connect_retrying(socket: &Path) -> QmpClient {
    let t = Instant::now();
    loop {
        match QmpClient::connect(socket, Duration::from_secs(30)) {
            Ok(c) => return c,
            Err(_) if t.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect QMP at {}: {e}", socket.display()),
        }
    }
}

impl Vm {
    /// Creates the images (if missing) and starts QEMU.
    pub fn start(dir: &Path, disks: &[(&str, u64, &str)], agent_channel: bool) -> Vm {
        let specs: Vec<TestDiskSpec> = disks
            .iter()
            .map(|(name, size, serial)| TestDiskSpec {
                file: dir.join(format!("{name}.qcow2")),
                size: *size,
                serial: serial.to_string(),
            })
            .collect();
        for d in &specs {
            if !d.file.exists() {
                let st = Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&d.file)
                    .arg(d.size.to_string())
                    .status()
                    .unwrap();
                assert!(st.success());
            }
        }
        let mut vm = Vm {
            dir: dir.to_path_buf(),
            qmp: dir.join("qmp.sock"),
            agent: agent_channel.then(|| dir.join("qga.sock")),
            child: None,
            disks: specs,
        };
        vm.boot();
        vm
    }

    pub fn boot(&mut self) {
        let _ = std::fs::remove_file(&self.qmp);
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-m",
            "64",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-S",
        ]);
        for (i, d) in self.disks.iter().enumerate() {
            c.arg("-blockdev").arg(format!(
                "driver=file,node-name=file{i},filename={}",
                d.file.display()
            ));
            c.arg("-blockdev")
                .arg(format!("driver=qcow2,node-name=drive{i},file=file{i}"));
            c.arg("-device").arg(format!(
                "virtio-blk-pci,id=vd{i},drive=drive{i},serial={}",
                d.serial
            ));
        }
        if let Some(a) = &self.agent {
            let _ = std::fs::remove_file(a);
            c.arg("-chardev").arg(format!(
                "socket,id=qga0,path={},server=on,wait=off",
                a.display()
            ));
            c.args(["-device", "virtio-serial-pci,id=vser0"]);
            c.args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ]);
        }
        c.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", self.qmp.display()));
        // A second monitor for the test's own guest writes while tapevault holds the first.
        let _ = std::fs::remove_file(self.test_qmp());
        c.arg("-qmp").arg(format!(
            "unix:{},server=on,wait=off",
            self.test_qmp().display()
        ));
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = c.spawn().expect("start qemu-system-x86_64");
        self.child = Some(child);
        // Both monitors: QEMU creates the second socket a moment after the first, and
        // a test connecting to it at once was refused now and then.
        let t = Instant::now();
        while !self.qmp.exists() || !self.test_qmp().exists() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = self
                    .child
                    .as_mut()
                    .unwrap()
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err);
                panic!("QEMU exited ({st}): {err}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "QEMU did not create its QMP socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn test_qmp(&self) -> PathBuf {
        self.dir.join("qmp-test.sock")
    }

    /// The test's own monitor (see [`Vm::boot`]).
    pub fn test_monitor(&self) -> QmpClient {
        connect_retrying(&self.test_qmp())
    }

    pub fn qmp(&self) -> QmpClient {
        connect_retrying(&self.qmp)
    }

    /// A guest write of `len` bytes of `pattern` at `off` to disk `i`, through the
    /// device (so fleecing sees it).
    pub fn write(&self, c: &mut QmpClient, i: usize, pattern: u8, off: u64, len: u64) {
        let cmd = format!(
            "qemu-io -d /machine/peripheral/vd{i}/virtio-backend \"write -P 0x{pattern:02x} {off} {len}\""
        );
        let r = c
            .execute("human-monitor-command", Some(json!({"command-line": cmd})))
            .unwrap();
        assert_eq!(r.as_str(), Some(""), "qemu-io said {r}");
    }

    pub fn write_zeroes(&self, c: &mut QmpClient, i: usize, off: u64, len: u64) {
        let cmd =
            format!("qemu-io -d /machine/peripheral/vd{i}/virtio-backend \"write -z {off} {len}\"");
        c.execute("human-monitor-command", Some(json!({"command-line": cmd})))
            .unwrap();
    }

    /// QEMU quits cleanly (persistent bitmaps are stored in the images).
    pub fn quit(&mut self, c: QmpClient) {
        let mut c = c;
        let _ = c.execute("quit", None);
        drop(c);
        if let Some(mut ch) = self.child.take() {
            ch.wait().unwrap();
        }
    }

    /// kill -9 of QEMU.
    pub fn kill9(&mut self) {
        if let Some(mut ch) = self.child.take() {
            ch.kill().unwrap();
            ch.wait().unwrap();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Asserts that `vm disks --json` lists exactly one dirty bitmap per disk, tapevault's
/// epoch bitmap (`tapevault-N`): nothing else of tapevault's left in QEMU.
pub fn assert_one_epoch_bitmap_per_disk(vm_disks: &serde_json::Value) {
    for disk in vm_disks["disks"].as_array().unwrap() {
        let names: Vec<&str> = disk["bitmaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("tapevault-"), "{names:?}");
    }
}
