//! The one place where a job's events reach a person: notes as lines on stderr,
//! byte-counted tasks as progress bars (with throughput and ETA) and waits as spinners
//! when stderr is a terminal, and each finished item (an image written, a cartridge
//! scanned) as a result line on stdout, printed as soon as it is known (not under
//! `--json`: the document carries them). The command's final result (text or `--json`)
//! goes to stdout through [`super::Output`].

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::format::finished_line;
use super::Output;
use crate::events::{Event, Events};

/// A job's events, shown on the terminal (or written to stderr as lines).
pub struct Terminal {
    out: Output,
    interactive: bool,
    /// Result lines go to stderr (stdout carries data: `restore --to -`).
    results_on_stderr: bool,
    bar: Mutex<Option<ProgressBar>>,
    spinner: Mutex<Option<ProgressBar>>,
}

impl Terminal {
    pub fn new(out: Output) -> Terminal {
        Terminal {
            out,
            interactive: out.interactive(),
            results_on_stderr: false,
            bar: Mutex::new(None),
            spinner: Mutex::new(None),
        }
    }

    /// A terminal for a job whose stdout carries data: its result lines go to stderr.
    pub fn results_on_stderr(out: Output) -> Terminal {
        let mut t = Terminal::new(out);
        t.results_on_stderr = true;
        t
    }

    /// A result line on stdout (stderr when stdout carries data), above a bar or
    /// spinner when one is shown.
    fn result(&self, text: &str) {
        if self.results_on_stderr {
            return self.line(text);
        }
        let print = || {
            use std::io::Write;
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{text}");
            let _ = o.flush();
        };
        if let Ok(bar) = self.bar.lock() {
            if let Some(b) = bar.as_ref() {
                return b.suspend(print);
            }
        }
        if let Ok(sp) = self.spinner.lock() {
            if let Some(s) = sp.as_ref() {
                return s.suspend(print);
            }
        }
        print()
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
                if !self.out.json {
                    self.result(&finished_line(&f));
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
