//! Cross-process job locks (flock) with a note of who holds them.
//!
//! The kernel releases an flock when its holder dies, so a lock left by a killed process
//! never blocks anyone: the note it left behind is reported as stale and overwritten.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct JobLock {
    file: File,
    path: PathBuf,
    /// The note a dead previous holder left, if any.
    pub stale_note: Option<String>,
}

impl JobLock {
    /// Take the lock at `path` without waiting. `what` says what this process does with
    /// it ("backup to pool daily"); a busy lock gives an error naming its holder.
    pub fn try_acquire(path: &Path, what: &str) -> Result<JobLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::Failed(format!("cannot open lock {}: {e}", path.display())))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        let mut note = String::new();
        let _ = file.read_to_string(&mut note);
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = if note.trim().is_empty() {
                    "another process".to_string()
                } else {
                    note.trim().to_string()
                };
                return Err(Error::Failed(format!(
                    "{} is locked by {holder}; wait for it to finish",
                    path.file_name().and_then(|n| n.to_str()).unwrap_or("lock")
                )));
            }
            return Err(Error::Failed(format!(
                "cannot lock {}: {err}",
                path.display()
            )));
        }
        let stale_note = if note.trim().is_empty() {
            None
        } else {
            Some(note.trim().to_string())
        };
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        write!(file, "pid {} ({what}, since {now})", std::process::id())?;
        file.flush()?;
        Ok(JobLock {
            file,
            path: path.to_path_buf(),
            stale_note,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        // Clear the note so the next holder does not report a stale lock; the flock
        // itself goes with the file descriptor.
        let _ = self.file.set_len(0);
    }
}

/// Whether a lock is held by a live process right now (without taking it).
pub fn is_held(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new().read(true).write(true).open(path) else {
        return false;
    };
    // SAFETY: as above.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        false
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_holders_note() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("set.lock");
        let a = JobLock::try_acquire(&p, "backup to pool daily").unwrap();
        assert!(is_held(&p));
        let err = JobLock::try_acquire(&p, "rotate").unwrap_err().to_string();
        assert!(err.contains("backup to pool daily"), "{err}");
        drop(a);
        assert!(!is_held(&p));
        let b = JobLock::try_acquire(&p, "rotate").unwrap();
        assert!(b.stale_note.is_none());
    }
}
