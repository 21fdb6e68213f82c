//! A hand-started libvirtd for the libvirt driver's tests: no system service. The
//! daemon runs in a private mount namespace (`unshare -m`) where /etc/libvirt,
//! /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are
//! directories of the test, with its own qemu.conf (root, no security driver, no
//! cgroups) and its sockets in the test's directory; `virsh` reaches it with
//! `qemu+unix:///system?socket=...`. Guests are TCG QEMUs with no OS; guest writes go
//! through the disk device's backend with HMP `qemu-io` (docs: QEMU-CBT.md 4).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn have(bin: &str, arg: &str) -> bool {
    Command::new(bin)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// True (and the reason printed) when something the tests need is missing.
pub fn libvirt_missing() -> bool {
    for (b, arg, pkg) in [
        ("virsh", "--version", "libvirt-clients"),
        (
            "libvirtd",
            "--version",
            "libvirt-daemon, libvirt-daemon-driver-qemu",
        ),
        ("qemu-system-x86_64", "--version", "qemu-system-x86"),
        ("qemu-img", "--version", "qemu-utils"),
        ("qemu-io", "--version", "qemu-utils"),
        ("unshare", "--version", "util-linux"),
    ] {
        if !have(b, arg) {
            eprintln!("skipped: {b} is not installed (Debian: {pkg})");
            return true;
        }
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the hand-started libvirtd needs root (a private mount namespace)");
        return true;
    }
    let ns = Command::new("unshare")
        .args(["-m", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ns {
        eprintln!("skipped: `unshare -m` is not permitted here (the hand-started libvirtd runs in a private mount namespace)");
        return true;
    }
    false
}

const QEMU_CONF: &str = r#"user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
"#;

pub struct Libvirtd {
    pub dir: PathBuf,
    pub uri: String,
    child: Option<Child>,
    domains: Vec<String>,
}

impl Libvirtd {
    pub fn start(dir: &Path) -> Libvirtd {
        Libvirtd::start_with(dir, "")
    }

    /// [`Libvirtd::start`] with more qemu.conf lines.
    pub fn start_with(dir: &Path, qemu_conf: &str) -> Libvirtd {
        let b = dir.join("libvirt");
        for d in ["etc", "run", "lib/qemu", "log/qemu", "cache/qemu", "sock"] {
            std::fs::create_dir_all(b.join(d)).unwrap();
        }
        std::fs::write(b.join("etc/qemu.conf"), format!("{QEMU_CONF}{qemu_conf}")).unwrap();
        std::fs::write(
            b.join("etc/libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n",
                b.join("sock").display()
            ),
        )
        .unwrap();
        // The QEMU driver refuses to start without its compiled-in user: a private
        // passwd/group with it, bind-mounted in the namespace only.
        let mut passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let mut group = std::fs::read_to_string("/etc/group").unwrap();
        if !group.lines().any(|l| l.starts_with("libvirt-qemu:")) {
            group.push_str("libvirt-qemu:x:64055:\n");
        }
        if !passwd.lines().any(|l| l.starts_with("libvirt-qemu:")) {
            passwd.push_str("libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin\n");
        }
        std::fs::write(b.join("passwd"), passwd).unwrap();
        std::fs::write(b.join("group"), group).unwrap();
        let bd = b.display();
        // A QEMU other than the system's (QEMU 10 unpacked by .ci/qemu10.sh, first on
        // PATH): its firmware/data and modules are bind-mounted over the compiled-in
        // /usr/share/qemu and module directory in the namespace, where only this
        // libvirtd and its QEMUs see them (libvirt passes no QEMU_MODULE_DIR or -L).
        let emu = emulator();
        let mut qemu_mounts = String::new();
        if emu != Path::new(SYSTEM_QEMU) {
            let root = emu.parent().and_then(Path::parent).unwrap();
            let data = root.join("share/qemu");
            if data.is_dir() {
                qemu_mounts.push_str(&format!(
                    "mount --bind {} /usr/share/qemu\n",
                    data.display()
                ));
            }
            let modules = std::env::var_os("QEMU_MODULE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("lib/x86_64-linux-gnu/qemu"));
            if modules.is_dir() && Path::new(SYSTEM_MODULES).is_dir() {
                qemu_mounts.push_str(&format!(
                    "mount --bind {} {SYSTEM_MODULES}\n",
                    modules.display()
                ));
            }
        }
        let script = format!(
            "set -e
mount --bind {bd}/passwd /etc/passwd
mount --bind {bd}/group /etc/group
{qemu_mounts}mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
mount -t tmpfs tmpfs /etc/libvirt
cp {bd}/etc/qemu.conf {bd}/etc/libvirtd.conf /etc/libvirt/
mount --bind {bd}/run /run/libvirt
mount --bind {bd}/lib /var/lib/libvirt
mount --bind {bd}/log /var/log/libvirt
mount --bind {bd}/cache /var/cache/libvirt
exec libvirtd -f /etc/libvirt/libvirtd.conf -p {bd}/libvirtd.pid
"
        );
        let log = std::fs::File::create(b.join("libvirtd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let uri = format!(
            "qemu+unix:///system?socket={}",
            b.join("sock/libvirt-sock").display()
        );
        let d = Libvirtd {
            dir: b.clone(),
            uri,
            child: Some(child),
            domains: Vec::new(),
        };
        let t = Instant::now();
        loop {
            if d.try_virsh(&["uri"]).is_ok() {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                panic!(
                    "libvirtd did not answer within 60 s: {}",
                    std::fs::read_to_string(b.join("libvirtd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    pub fn try_virsh(&self, args: &[&str]) -> Result<String, String> {
        let mut c = Command::new("timeout");
        c.args(["60", "virsh", "-q", "-c", &self.uri])
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        let o = c.output().map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!(
                "virsh {args:?}: {}{}",
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout)
            ))
        }
    }

    pub fn virsh(&self, args: &[&str]) -> String {
        self.try_virsh(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Defines and starts a domain with these disks (name, size, serial), qcow2 images
    /// in `dir`, virtio targets vda, vdb, ... in order; two spare PCIe ports for
    /// hot-plugged disks.
    pub fn start_domain(&mut self, name: &str, dir: &Path, disks: &[(&str, u64, &str)]) {
        self.start_domain_with(name, dir, disks, "")
    }

    /// [`Libvirtd::start_domain`] with more device XML (a guest agent channel, ...).
    pub fn start_domain_with(
        &mut self,
        name: &str,
        dir: &Path,
        disks: &[(&str, u64, &str)],
        extra: &str,
    ) {
        let mut devs = String::new();
        for (i, (file, size, serial)) in disks.iter().enumerate() {
            // A name ending in `.raw` is a raw image, any other a qcow2 one.
            if file.ends_with(".raw") {
                let path = dir.join(file);
                std::fs::File::create(&path)
                    .unwrap()
                    .set_len(*size)
                    .unwrap();
                devs.push_str(
                    &disk_xml(&path, &target(i), serial).replace("type='qcow2'", "type='raw'"),
                );
            } else {
                let path = dir.join(format!("{file}.qcow2"));
                create_qcow2(&path, *size);
                devs.push_str(&disk_xml(&path, &target(i), serial));
            }
        }
        let emu = emulator().display().to_string();
        let xml = format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>{emu}</emulator>
{devs}{extra}    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <memballoon model='none'/>
  </devices>
</domain>
"
        );
        let f = dir.join(format!("{name}.xml"));
        std::fs::write(&f, xml).unwrap();
        self.virsh(&["define", &f.to_string_lossy()]);
        self.virsh(&["start", name]);
        self.domains.push(name.to_string());
        // The domain runs the emulator asked for (QEMU 10 under .ci/qemu10.sh).
        let pidf = self.dir.join(format!("run/qemu/{name}.pid"));
        let pid =
            std::fs::read_to_string(&pidf).unwrap_or_else(|e| panic!("{}: {e}", pidf.display()));
        let exe = std::fs::read_link(format!("/proc/{}/exe", pid.trim())).unwrap();
        assert_eq!(exe, Path::new(&emu), "domain {name} runs another QEMU");
        let v = self.virsh(&["qemu-monitor-command", name, "--hmp", "info version"]);
        eprintln!("domain {name}: {} QEMU {}", emu, v.trim());
    }

    /// Hot-plugs one more qcow2 disk.
    pub fn attach_disk(&self, dom: &str, path: &Path, size: u64, target: &str, serial: &str) {
        create_qcow2(path, size);
        let f = path.with_extension("xml");
        std::fs::write(&f, disk_xml(path, target, serial)).unwrap();
        self.virsh(&["attach-device", dom, &f.to_string_lossy(), "--live"]);
    }

    /// The QOM path of the disk's backend where guest writes enter (libvirt's alias).
    pub fn backend(&self, dom: &str, target: &str) -> String {
        let xml = self.virsh(&["dumpxml", dom]);
        let at = xml
            .find(&format!("<target dev='{target}'"))
            .unwrap_or_else(|| panic!("no disk {target} in {xml}"));
        let rest = &xml[at..];
        let a = rest.find("<alias name='").unwrap() + "<alias name='".len();
        let alias = &rest[a..a + rest[a..].find('\'').unwrap()];
        format!("/machine/peripheral/{alias}/virtio-backend")
    }

    /// A guest write of `len` bytes of `pattern` (`None`: write zeroes) at `off`.
    pub fn write(&self, dom: &str, target: &str, pattern: Option<u8>, off: u64, len: u64) {
        let op = match pattern {
            Some(p) => format!("write -P 0x{p:02x} {off} {len}"),
            None => format!("write -z {off} {len}"),
        };
        let cmd = format!("qemu-io -d {} \"{op}\"", self.backend(dom, target));
        let out = self.virsh(&["qemu-monitor-command", dom, "--hmp", &cmd]);
        assert!(
            !out.to_lowercase().contains("error") && !out.to_lowercase().contains("failed"),
            "{cmd}: {out}"
        );
    }
}

const SYSTEM_QEMU: &str = "/usr/bin/qemu-system-x86_64";
const SYSTEM_MODULES: &str = "/usr/lib/x86_64-linux-gnu/qemu";

/// The `qemu-system-x86_64` first on PATH (the domains' `<emulator>`).
pub fn emulator() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .map(|p| p.canonicalize().unwrap_or(p))
        .unwrap_or_else(|| PathBuf::from(SYSTEM_QEMU))
}

/// A guest agent channel (no guest OS runs, so no agent ever answers on it).
pub const AGENT_CHANNEL: &str = "    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
";

/// The virtio target of the `i`th disk of a domain (vda, vdb, ...).
pub fn target(i: usize) -> String {
    format!("vd{}", (b'a' + i as u8) as char)
}

fn create_qcow2(path: &Path, size: u64) {
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn disk_xml(path: &Path, target: &str, serial: &str) -> String {
    format!(
        "    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{}'/>
      <target dev='{target}' bus='virtio'/>
      <serial>{serial}</serial>
    </disk>
",
        path.display()
    )
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        for d in &self.domains {
            let _ = self.try_virsh(&["destroy", d]);
        }
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // A QEMU that outlived its daemon, by its pid file.
        if let Ok(rd) = std::fs::read_dir(self.dir.join("run/qemu")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "pid") {
                    if let Some(pid) = std::fs::read_to_string(e.path())
                        .ok()
                        .and_then(|s| s.trim().parse::<i32>().ok())
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
    }
}

impl Libvirtd {
    /// kill -9 of the domain's QEMU (by its pid file), then start the domain again.
    /// The guest's writes are flushed first (as a guest OS would have), so only the
    /// change tracking is lost, not data.
    pub fn kill9_qemu_and_restart(&self, dom: &str, target: &str) {
        let cmd = format!("qemu-io -d {} \"flush\"", self.backend(dom, target));
        self.virsh(&["qemu-monitor-command", dom, "--hmp", &cmd]);
        let pidf = self.dir.join(format!("run/qemu/{dom}.pid"));
        let pid: i32 = std::fs::read_to_string(&pidf)
            .unwrap_or_else(|e| panic!("{}: {e}", pidf.display()))
            .trim()
            .parse()
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let t = Instant::now();
        while !self.virsh(&["domstate", dom]).contains("shut off") {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "domain {dom} did not stop"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.virsh(&["start", dom]);
    }
}
