//! SIGINT/SIGTERM while a live backup holds QEMU objects: a watcher thread tears them
//! down (exports, fleecing jobs, scratch nodes, the new epoch's bitmaps) and then ends
//! the process with 128 + the signal, as the default action would have. kill -9 cannot
//! be caught; the next run removes what it left ([`super::leftovers`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The write end of the pipe the handler writes the signal number to (-1: none).
static PIPE_W: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_W.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is one byte on the stack.
        unsafe {
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
        }
    }
}

/// Armed while it lives; dropping it restores the previous handlers and stops the thread.
pub struct SignalGuard {
    w: OwnedFd,
    old: Vec<(Signal, SigAction)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SignalGuard {
    /// Runs `on_signal` (on a watcher thread) when SIGINT or SIGTERM arrives, then exits
    /// the process with 128 + the signal number.
    pub fn arm(on_signal_do: impl FnOnce(i32) + Send + 'static) -> std::io::Result<SignalGuard> {
        let (r, w) = nix::unistd::pipe().map_err(std::io::Error::from)?;
        PIPE_W.store(w.as_raw_fd(), Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let mut old = Vec::new();
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler only calls write(2) on a descriptor kept open while armed.
            let prev = unsafe { sigaction(sig, &action) }.map_err(std::io::Error::from)?;
            old.push((sig, prev));
        }
        let thread = std::thread::spawn(move || {
            let mut b = [0u8; 1];
            loop {
                match nix::unistd::read(r.as_raw_fd(), &mut b) {
                    Ok(1) if b[0] != 0 => {
                        let sig = b[0] as i32;
                        on_signal_do(sig);
                        std::process::exit(128 + sig);
                    }
                    Ok(_) => return,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return,
                }
            }
        });
        Ok(SignalGuard {
            w,
            old,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, prev) in self.old.drain(..) {
            // SAFETY: restoring the disposition that was in place before arm().
            let _ = unsafe { sigaction(sig, &prev) };
        }
        PIPE_W.store(-1, Ordering::SeqCst);
        // A zero byte tells the watcher to stop.
        let _ = nix::unistd::write(&self.w, &[0u8]);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
