//! Write-behind of a cartridge's data file: a thread that starts the writeback of
//! ranges of block data as the host writes them and waits for it, so at most about
//! [`WriteBehind::dirty_max`] bytes stay dirty in the page cache, as a drive writes to
//! the medium from its buffer while the host sends. The writer only hands ranges over:
//! starting writeback can block in the kernel (a full request queue), and the host's
//! writes must not wait for that, only for a full buffer.
//!
//! This is no durability: `sync_file_range(2)` flushes neither the file's metadata nor
//! the disk's cache. Only a flush (`fdatasync`) makes data durable, as before. The
//! thread opens the data file on its own, so a writeback error it meets is still
//! reported by the writer's next `fdatasync` (each open file sees an error once); it is
//! also kept here, and the next flush fails with it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How a cartridge writes block data behind the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBehind {
    /// Start the writeback of the data written since the last start once this many
    /// bytes have accumulated.
    pub start_every: u64,
    /// About the most block data left dirty in the page cache: the host's writes wait
    /// when the writeback falls this far behind (the drive's buffer is full).
    pub dirty_max: u64,
}

impl WriteBehind {
    /// The default of every cartridge opened: writeback started every 16 MiB, at most
    /// about 256 MiB dirty (a drive's buffer; a fraction of a second at disk speed).
    pub const DEFAULT: WriteBehind = WriteBehind {
        start_every: 16 << 20,
        dirty_max: 256 << 20,
    };
}

/// The running write-behind of one data file.
pub(crate) struct Writeback {
    tx: Option<SyncSender<(u64, u64)>>,
    thread: Option<JoinHandle<()>>,
    /// The first writeback error the thread met (taken by the next flush).
    error: Arc<Mutex<Option<io::Error>>>,
}

fn range(f: &File, from: u64, to: u64, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is the
    // open file `f`, borrowed for the call.
    let r = unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Writeback {
    /// Start the write-behind of the data file at `path`.
    pub(crate) fn start(path: &Path, wb: WriteBehind) -> io::Result<Writeback> {
        let file = OpenOptions::new().write(true).open(path)?;
        let step = wb.start_every.max(1);
        // Ranges handed over but not yet started, and ranges started but not yet waited
        // for: each about half the buffer.
        let half = (wb.dirty_max / 2).max(step);
        let queued = usize::try_from(half / step).unwrap_or(usize::MAX).max(1);
        let (tx, rx) = sync_channel::<(u64, u64)>(queued);
        let error = Arc::new(Mutex::new(None));
        let theirs = error.clone();
        let thread = std::thread::Builder::new()
            .name("vtl-writeback".into())
            .spawn(move || {
                let mut started: VecDeque<(u64, u64)> = VecDeque::new();
                let mut in_flight = 0u64;
                let mut off = false;
                for (from, to) in rx {
                    if off || to <= from {
                        continue;
                    }
                    let mut r = range(&file, from, to, libc::SYNC_FILE_RANGE_WRITE);
                    started.push_back((from, to));
                    in_flight += to - from;
                    while r.is_ok() && in_flight > half {
                        let (a, b) = started.pop_front().expect("in flight");
                        in_flight -= b - a;
                        r = range(
                            &file,
                            a,
                            b,
                            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                                | libc::SYNC_FILE_RANGE_WRITE
                                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                        );
                    }
                    if let Err(e) = r {
                        off = true;
                        match e.raw_os_error() {
                            // A file system without it: the page cache keeps the data
                            // until a flush, as without write-behind.
                            Some(libc::EINVAL | libc::ENOSYS | libc::ESPIPE | libc::EOPNOTSUPP) => {
                            }
                            _ => {
                                let mut g = theirs.lock().unwrap_or_else(|p| p.into_inner());
                                g.get_or_insert(e);
                            }
                        }
                    }
                }
            })?;
        Ok(Writeback {
            tx: Some(tx),
            thread: Some(thread),
            error,
        })
    }

    /// Hand over the block data in `from..to` (just written): blocks while the thread
    /// is a buffer's worth behind.
    pub(crate) fn written(&self, from: u64, to: u64) {
        if let Some(tx) = &self.tx {
            // The thread ends only when this side hangs up (or panicked): nothing then
            // keeps data dirty beyond what a flush writes anyway.
            let _ = tx.send((from, to));
        }
    }

    /// The writeback error met since the last call, if any.
    pub(crate) fn take_error(&self) -> Option<io::Error> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
