//! The job hook: `hook = "COMMAND"` in config.toml is run (by `/bin/sh -c`) at the end of
//! every command, with a JSON document on stdin carrying the command's result (the same
//! document `--json` prints, or its error document). The hook cannot change the
//! outcome: its failure, or its running past `hook_timeout_secs`, is a warning on
//! stderr and the command keeps its exit code.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Version of the document the hook reads on stdin.
pub const HOOK_DOC_VERSION: u32 = 1;
/// How long a hook may run when config.toml does not say.
pub const DEFAULT_HOOK_TIMEOUT_SECS: u64 = 60;

/// What the hook of this run is and what it reports on.
pub struct Hook {
    /// The shell command from config.toml.
    pub command: String,
    pub timeout: Duration,
    /// The tapevault command that ran ("backup", "library erase").
    pub job: String,
    pub argv: Vec<String>,
    pub home: PathBuf,
}

static HOOK: OnceLock<Hook> = OnceLock::new();
static DONE: AtomicBool = AtomicBool::new(false);

/// Set the hook for this run (once, from `main`).
pub fn arm(h: Hook) {
    let _ = HOOK.set(h);
}

/// Whether a hook will run (results are only kept for it then).
pub fn armed() -> bool {
    HOOK.get().is_some()
}

/// Run the hook once, with the job's result document: what it printed, and when it
/// failed the error document (`error`, `kind`, `exit_code`, with the report it printed
/// if any). Called from [`super::job::finish`] on every way a command ends.
pub fn finish(exit_code: i32, result: Option<Value>) {
    let Some(h) = HOOK.get() else {
        return;
    };
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let result = result.unwrap_or(Value::Null);
    let doc = serde_json::json!({
        "hook_version": HOOK_DOC_VERSION,
        "command": h.job,
        "argv": h.argv,
        "home": h.home,
        "exit_code": exit_code,
        "ok": exit_code == 0,
        "finished": crate::timefmt::show(&chrono::Utc::now()),
        "result": result,
    });
    if let Err(e) = run(h, exit_code, &doc) {
        eprintln!(
            "tapevault: warning: the hook `{}` {e}; the result of `{}` (exit {exit_code}) stands",
            h.command, h.job
        );
    }
}

fn run(h: &Hook, exit_code: i32, doc: &Value) -> Result<(), String> {
    let body = serde_json::to_vec_pretty(doc).map_err(|e| format!("got no document: {e}"))?;
    // The hook's own output goes to stderr: stdout carries tapevault's result only.
    let out = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&h.command)
        .env("TAPEVAULT_HOOK_COMMAND", &h.job)
        .env("TAPEVAULT_HOOK_EXIT_CODE", exit_code.to_string())
        .env("TAPEVAULT_HOME", &h.home)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .map_err(|e| format!("could not start: {e}"))?;
    // Feed stdin from a thread: a hook that does not read it must not block us.
    let mut stdin = child.stdin.take();
    let feeder = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&body);
        }
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() >= h.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "ran longer than {} s and was stopped (hook_timeout_secs in config.toml)",
                    h.timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("could not be waited for: {e}")),
        }
    };
    let _ = feeder.join();
    if status.success() {
        Ok(())
    } else {
        Err(format!("failed ({status})"))
    }
}
