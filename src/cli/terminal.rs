//! The one place where a job's events reach a person: notes as lines on stderr,
//! byte-counted tasks as progress bars (with throughput and ETA) and waits as spinners
//! when stderr is a terminal, and each finished item as a summary line for the log (a
//! backed-up disk's line on stdout, as it is a result; the others on stderr).
//! Results themselves (text or `--json`) go to stdout through [`super::Output`].

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::format::finished_line;
use super::Output;
use crate::events::{Event, Events, Finished};

/// A job's events, shown on the terminal (or written to stderr as lines).
pub struct Terminal {
    out: Output,
    interactive: bool,
    bar: Mutex<Option<ProgressBar>>,
    spinner: Mutex<Option<ProgressBar>>,
}

impl Terminal {
    pub fn new(out: Output) -> Terminal {
        Terminal {
            out,
            interactive: out.interactive(),
            bar: Mutex::new(None),
            spinner: Mutex::new(None),
        }
    }

    /// Whether a person is watching (bars and spinners are shown).
    pub fn interactive(&self) -> bool {
        self.interactive
    }

    /// A line for people on stderr, above a bar or spinner when one is shown.
    fn line(&self, text: &str) {
        if let Ok(bar) = self.bar.lock() {
            if let Some(b) = bar.as_ref() {
                b.println(text);
                return;
            }
        }
        if let Ok(sp) = self.spinner.lock() {
            if let Some(s) = sp.as_ref() {
                s.println(text);
                return;
            }
        }
        eprintln!("{text}");
    }

    /// A result line on stdout (with a bar or spinner on stderr held while it prints).
    fn result_line(&self, text: &str) {
        let print = || {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        };
        if let Ok(bar) = self.bar.lock() {
            if let Some(b) = bar.as_ref() {
                b.suspend(print);
                return;
            }
        }
        if let Ok(sp) = self.spinner.lock() {
            if let Some(s) = sp.as_ref() {
                s.suspend(print);
                return;
            }
        }
        print();
    }

    fn end_bar(&self) {
        if let Ok(mut bar) = self.bar.lock() {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
        }
    }

    fn end_spinner(&self) {
        if let Ok(mut sp) = self.spinner.lock() {
            if let Some(s) = sp.take() {
                s.finish_and_clear();
            }
        }
    }
}

impl Events for Terminal {
    fn emit(&self, event: Event<'_>) {
        match event {
            // Notes go to stderr also under --json: stdout stays one JSON document.
            Event::Note(n) => self.line(&n.text),
            Event::TaskStarted { label, total } => {
                if !self.interactive {
                    return;
                }
                self.end_bar();
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg:20!} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_message(label);
                if let Ok(mut b) = self.bar.lock() {
                    *b = Some(bar);
                }
            }
            Event::TaskLabel(label) => {
                if let Ok(bar) = self.bar.lock() {
                    if let Some(b) = bar.as_ref() {
                        b.set_message(label);
                    }
                }
            }
            Event::TaskProgress(n) => {
                if let Ok(bar) = self.bar.lock() {
                    if let Some(b) = bar.as_ref() {
                        b.inc(n);
                    }
                }
            }
            Event::TaskEnded => self.end_bar(),
            Event::Waiting(w) => {
                if !self.interactive {
                    self.line(&w.text);
                    return;
                }
                self.end_spinner();
                let sp = ProgressBar::new_spinner();
                sp.set_style(
                    ProgressStyle::with_template("{spinner} {wide_msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                sp.set_message(w.text);
                sp.enable_steady_tick(Duration::from_millis(120));
                if let Ok(mut s) = self.spinner.lock() {
                    *s = Some(sp);
                }
            }
            Event::WaitOver => self.end_spinner(),
            Event::Finished(f) => {
                if self.out.json {
                    return;
                }
                match f {
                    // A disk's backup result is a result: on stdout, with the session
                    // line that follows it.
                    Finished::Image(_) => self.result_line(&finished_line(&f)),
                    // The others say how a job goes (a restore may stream the disk
                    // itself on stdout): stderr.
                    _ => self.line(&finished_line(&f)),
                }
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.end_bar();
        self.end_spinner();
    }
}
