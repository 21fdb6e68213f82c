//! JSON lines over a unix socket with deadlines: the framing QMP and the QEMU guest
//! agent share. Every read has a deadline; an expired one is an error, never a hang.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::error::QmpError;

/// Longest line accepted (64 MiB): `query-named-block-nodes` of a VM with many disks
/// and long backing chains is a few MiB; anything larger is not QMP.
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// A connected JSON-lines stream.
pub(crate) struct Wire {
    stream: UnixStream,
    path: PathBuf,
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as lines.
    start: usize,
}

impl Wire {
    pub(crate) fn connect(path: &Path, timeout: Duration) -> Result<Wire, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| QmpError::io(path, e))?;
        Ok(Wire {
            stream,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes raw bytes (one JSON document and a newline, or the agent's 0xFF sync byte).
    pub(crate) fn send_raw(&mut self, bytes: &[u8], what: &str) -> Result<(), QmpError> {
        self.stream.write_all(bytes).map_err(|e| {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                QmpError::Timeout {
                    path: self.path.clone(),
                    what: what.to_string(),
                }
            } else {
                QmpError::io(&self.path, e)
            }
        })
    }

    pub(crate) fn send(&mut self, v: &Value, what: &str) -> Result<(), QmpError> {
        let mut line = serde_json::to_vec(v).expect("a serde_json Value always serializes");
        line.push(b'\n');
        self.send_raw(&line, what)
    }

    /// Drops everything up to and including the next 0xFF byte (the guest agent's
    /// `guest-sync-delimited` marker), waiting until `deadline`.
    pub(crate) fn skip_to_delimiter(
        &mut self,
        deadline: Instant,
        what: &str,
    ) -> Result<(), QmpError> {
        loop {
            if let Some(p) = self.buf[self.start..].iter().position(|&b| b == 0xFF) {
                self.start += p + 1;
                return Ok(());
            }
            self.start = self.buf.len();
            self.fill(deadline, what)?;
        }
    }

    /// The next non-empty line parsed as JSON, waiting until `deadline`.
    pub(crate) fn next(&mut self, deadline: Instant, what: &str) -> Result<Value, QmpError> {
        loop {
            if let Some(p) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[self.start..self.start + p];
                self.start += p + 1;
                // A stray 0xFF (agent delimiter) or blank line is not a document.
                let line: Vec<u8> = line.iter().copied().filter(|&b| b != 0xFF).collect();
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                return serde_json::from_slice(&line).map_err(|e| QmpError::Protocol {
                    path: self.path.clone(),
                    message: format!(
                        "not JSON ({e}): {:?}",
                        String::from_utf8_lossy(&line[..line.len().min(200)])
                    ),
                });
            }
            if self.buf.len() - self.start > MAX_LINE {
                return Err(QmpError::Protocol {
                    path: self.path.clone(),
                    message: format!("a line longer than {MAX_LINE} bytes"),
                });
            }
            self.fill(deadline, what)?;
        }
    }

    fn fill(&mut self, deadline: Instant, what: &str) -> Result<(), QmpError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(QmpError::Timeout {
                path: self.path.clone(),
                what: what.to_string(),
            });
        }
        self.stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
            .map_err(|e| QmpError::io(&self.path, e))?;
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(QmpError::Closed {
                path: self.path.clone(),
                what: what.to_string(),
            }),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(QmpError::Timeout {
                    path: self.path.clone(),
                    what: what.to_string(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(QmpError::io(&self.path, e)),
        }
    }
}
