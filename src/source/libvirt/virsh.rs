//! `virsh` as a subprocess against one connection URI, every call bounded in time.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Time allowed for one virsh call (a backup-begin of many disks included).
pub const VIRSH_TIMEOUT: Duration = Duration::from_secs(60);

/// A virsh call that failed: the command and what virsh said.
#[derive(Debug, Clone)]
pub struct VirshError {
    pub command: String,
    pub message: String,
}

impl std::fmt::Display for VirshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` failed: {}", self.command, self.message)
    }
}

/// virsh against one connection URI (`None`: virsh's default, `LIBVIRT_DEFAULT_URI`).
#[derive(Debug, Clone)]
pub struct Virsh {
    pub uri: Option<String>,
    pub timeout: Duration,
}

impl Virsh {
    pub fn new(uri: Option<String>) -> Virsh {
        Virsh {
            uri,
            timeout: VIRSH_TIMEOUT,
        }
    }

    fn shown(&self, args: &[&str]) -> String {
        let mut s = String::from("virsh");
        if let Some(u) = &self.uri {
            s.push_str(&format!(" -c {u}"));
        }
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    /// Runs `virsh [-c URI] ARGS`; its standard output, or what it said on failure.
    pub fn run(&self, args: &[&str]) -> Result<String, VirshError> {
        let err = |message: String| VirshError {
            command: self.shown(args),
            message,
        };
        let mut cmd = Command::new("virsh");
        if let Some(u) = &self.uri {
            cmd.arg("-c").arg(u);
        }
        cmd.arg("-q")
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::NotFound {
                "virsh is not installed (Debian: libvirt-clients)".to_string()
            } else {
                format!("cannot start virsh: {e}")
            })
        })?;
        let mut out = child.stdout.take().expect("piped stdout");
        let mut errp = child.stderr.take().expect("piped stderr");
        let t_out = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let t_err = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = errp.read_to_end(&mut v);
            v
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if start.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err(format!(
                        "no answer within {} s (is libvirtd running and the URI right?)",
                        self.timeout.as_secs()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(err(format!("waiting for virsh: {e}"))),
            }
        };
        let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
        if status.success() {
            Ok(stdout)
        } else {
            let msg = stderr
                .lines()
                .map(|l| l.trim().trim_start_matches("error: ").trim())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            Err(err(if msg.is_empty() {
                format!("exit status {status}")
            } else {
                msg
            }))
        }
    }
}
