//! The QEMU guest agent (qemu-ga) over its virtio-serial socket on the host:
//! `guest-sync-delimited` first (the channel may hold a stale reply of an earlier
//! client), then `guest-fsfreeze-freeze`/`thaw`/`status`, each with a timeout.
//!
//! The agent has no greeting and no ids: a reply is the next JSON document after the
//! request, which is why every exchange starts from a fresh sync.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::short;
use super::error::QmpError;
use super::wire::Wire;

/// Time allowed for `guest-sync` (the agent answers at once if it runs at all).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for a freeze: a guest flushing a lot of dirty pages may take long,
/// but an application stalled by a freeze must not stay stalled because of us.
pub const DEFAULT_FREEZE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct GuestAgent {
    wire: Wire,
    sync_id: u64,
}

impl GuestAgent {
    /// Connects and synchronizes; fails with [`QmpError::Timeout`] when no agent
    /// answers (none installed or not running in the guest, or no guest OS at all).
    pub fn connect(path: &Path) -> Result<GuestAgent, QmpError> {
        let wire = Wire::connect(path, SYNC_TIMEOUT)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (std::process::id() as u64) << 32;
        let mut a = GuestAgent {
            wire,
            sync_id: seed & 0x7fff_ffff_ffff,
        };
        a.sync(SYNC_TIMEOUT)?;
        Ok(a)
    }

    /// `guest-sync-delimited`: discards whatever was pending in the channel.
    pub fn sync(&mut self, timeout: Duration) -> Result<(), QmpError> {
        self.sync_id += 1;
        let id = self.sync_id;
        let deadline = Instant::now() + timeout;
        self.wire.send_raw(&[0xFF], "guest-sync-delimited")?;
        self.wire.send(
            &json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}),
            "guest-sync-delimited",
        )?;
        loop {
            self.wire
                .skip_to_delimiter(deadline, "guest-sync-delimited")?;
            let v = self.wire.next(deadline, "guest-sync-delimited")?;
            if v.get("return").and_then(Value::as_u64) == Some(id) {
                return Ok(());
            }
        }
    }

    fn call(&mut self, command: &str, timeout: Duration) -> Result<Value, QmpError> {
        self.sync(SYNC_TIMEOUT.min(timeout))?;
        let deadline = Instant::now() + timeout;
        self.wire.send(&json!({"execute": command}), command)?;
        let v = self.wire.next(deadline, command)?;
        if let Some(r) = v.get("return") {
            return Ok(r.clone());
        }
        if let Some(e) = v.get("error") {
            return Err(QmpError::Command {
                command: command.to_string(),
                class: e.get("class").and_then(Value::as_str).unwrap_or("?").into(),
                desc: e.get("desc").and_then(Value::as_str).unwrap_or("").into(),
            });
        }
        Err(QmpError::Protocol {
            path: self.wire.path().to_path_buf(),
            message: format!("{command}: unexpected reply {}", short(&v)),
        })
    }

    /// Freezes the guest's file systems; returns how many were frozen.
    pub fn freeze(&mut self, timeout: Duration) -> Result<u64, QmpError> {
        let v = self.call("guest-fsfreeze-freeze", timeout)?;
        Ok(v.as_u64().unwrap_or(0))
    }

    /// Thaws them; returns how many were thawed.
    pub fn thaw(&mut self, timeout: Duration) -> Result<u64, QmpError> {
        let v = self.call("guest-fsfreeze-thaw", timeout)?;
        Ok(v.as_u64().unwrap_or(0))
    }

    /// "thawed" or "frozen".
    pub fn status(&mut self, timeout: Duration) -> Result<String, QmpError> {
        let v = self.call("guest-fsfreeze-status", timeout)?;
        Ok(v.as_str().unwrap_or("").to_string())
    }
}
