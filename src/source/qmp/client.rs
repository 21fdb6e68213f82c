//! A blocking QMP client over a unix socket: the greeting, `qmp_capabilities`,
//! commands with ids, and events kept aside while a reply is awaited.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::error::QmpError;
use super::wire::Wire;

/// Default time allowed for one command's reply (30 s: `transaction` over many disks
/// and `blockdev-add` of a scratch image on slow storage stay well within it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Events kept aside at most; older ones are dropped (a VM emitting thousands of events
/// while tapevault waits must not grow memory).
pub const MAX_QUEUED_EVENTS: usize = 4096;

/// One QMP event as QEMU sent it.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

/// The QEMU version from the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    pub major: u64,
    pub minor: u64,
    pub micro: u64,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

pub struct QmpClient {
    wire: Wire,
    version: QemuVersion,
    next_id: u64,
    events: VecDeque<Event>,
    timeout: Duration,
}

impl QmpClient {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<QmpClient, QmpError> {
        let mut wire = Wire::connect(path, timeout)?;
        let deadline = Instant::now() + timeout;
        let greeting = wire.next(
            deadline,
            "the QMP greeting (is another client connected to this monitor?)",
        )?;
        let v = greeting
            .get("QMP")
            .and_then(|q| q.get("version"))
            .and_then(|v| v.get("qemu"))
            .ok_or_else(|| QmpError::Protocol {
                path: path.to_path_buf(),
                message: format!("expected a QMP greeting, got {}", short(&greeting)),
            })?;
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let version = QemuVersion {
            major: num("major"),
            minor: num("minor"),
            micro: num("micro"),
        };
        let mut c = QmpClient {
            wire,
            version,
            next_id: 1,
            events: VecDeque::new(),
            timeout,
        };
        c.execute("qmp_capabilities", None)?;
        Ok(c)
    }

    pub fn version(&self) -> QemuVersion {
        self.version
    }

    pub fn path(&self) -> &Path {
        self.wire.path()
    }

    /// Runs one command and returns its `return` value. Events that arrive meanwhile
    /// are kept for [`QmpClient::wait_event`]; replies to other ids (a command that
    /// timed out earlier and answered late) are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.execute_timeout(command, arguments, self.timeout)
    }

    pub fn execute_timeout(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = format!("tapevault-{}", self.next_id);
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        self.wire.send(&msg, command)?;
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.wire.next(deadline, command)?;
            if let Some(name) = v.get("event").and_then(Value::as_str) {
                self.keep_event(name, &v);
                continue;
            }
            if v.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: e
                        .get("class")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    desc: e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
            return Err(QmpError::Protocol {
                path: self.wire.path().to_path_buf(),
                message: format!("a reply without return or error: {}", short(&v)),
            });
        }
    }

    /// Waits for the first event (kept or new) for which `matches` holds, removing it.
    pub fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<Event, QmpError> {
        if let Some(i) = self.events.iter().position(&matches) {
            return Ok(self.events.remove(i).expect("index from position"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.wire.next(deadline, what)?;
            if let Some(name) = v.get("event").and_then(Value::as_str) {
                let ev = Event {
                    name: name.to_string(),
                    data: v.get("data").cloned().unwrap_or(Value::Null),
                };
                if matches(&ev) {
                    return Ok(ev);
                }
                self.push_event(ev);
            }
        }
    }

    /// Events received so far and not yet taken.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    fn keep_event(&mut self, name: &str, v: &Value) {
        self.push_event(Event {
            name: name.to_string(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
        });
    }

    fn push_event(&mut self, ev: Event) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }
}

/// The start of a JSON value for error messages.
pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A scripted monitor: sends the greeting, then answers each command line with the
    /// lines `answer` gives (events before the reply, a late reply, silence, ...).
    fn server(
        dir: &Path,
        answer: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) -> std::path::PathBuf {
        let path = dir.join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}}, \"capabilities\": []}}\n")
                .unwrap();
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line).unwrap();
                for out in answer(&v) {
                    if w.write_all(format!("{out}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            }
        });
        path
    }

    #[test]
    fn events_are_kept_aside_and_replies_matched_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let p = server(dir.path(), |v| {
            let id = v["id"].clone();
            match v["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![json!({"return": {}, "id": id}).to_string()],
                "query-x" => vec![
                    json!({"event": "JOB_STATUS_CHANGE", "data": {"id": "j", "status": "null"}}).to_string(),
                    // A late reply to an earlier command is skipped.
                    json!({"return": "stale", "id": "tapevault-999"}).to_string(),
                    json!({"return": [1, 2], "id": id}).to_string(),
                ],
                _ => vec![json!({"error": {"class": "GenericError", "desc": "Export 'e' is not found"}, "id": id}).to_string()],
            }
        });
        let mut c = QmpClient::connect(&p, Duration::from_secs(5)).unwrap();
        assert_eq!(
            c.version(),
            QemuVersion {
                major: 7,
                minor: 2,
                micro: 22
            }
        );
        assert_eq!(c.execute("query-x", None).unwrap(), json!([1, 2]));
        let ev = c
            .wait_event("job end", Duration::from_secs(1), |e| {
                e.name == "JOB_STATUS_CHANGE"
            })
            .unwrap();
        assert_eq!(ev.data["status"], "null");
        let e = c
            .execute("block-export-del", Some(json!({"id": "e"})))
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(matches!(e, QmpError::Command { ref class, .. } if class == "GenericError"));
    }

    #[test]
    fn silence_is_a_timeout_and_a_closed_socket_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let p = server(dir.path(), |v| match v["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![json!({"return": {}, "id": v["id"]}).to_string()],
            _ => vec![],
        });
        let mut c = QmpClient::connect(&p, Duration::from_secs(5)).unwrap();
        let e = c
            .execute_timeout("query-block", None, Duration::from_millis(200))
            .unwrap_err();
        assert!(
            matches!(e, QmpError::Timeout { ref what, .. } if what == "query-block"),
            "{e}"
        );
        let e = c
            .wait_event("an event", Duration::from_millis(100), |_| true)
            .unwrap_err();
        assert!(matches!(e, QmpError::Timeout { .. }), "{e}");

        // Not QMP at all.
        let p2 = dir.path().join("junk.sock");
        let l = UnixListener::bind(&p2).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"SSH-2.0-OpenSSH\n").unwrap();
        });
        let e = QmpClient::connect(&p2, Duration::from_secs(5))
            .err()
            .unwrap();
        assert!(matches!(e, QmpError::Protocol { .. }), "{e}");
        let e = QmpClient::connect(&dir.path().join("none.sock"), Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(matches!(e, QmpError::Connect { .. }), "{e}");
    }
}
