//! Printing results: human text on stdout, or one JSON document with `--json`.

use std::io::{IsTerminal, Write};

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Print a result: JSON when asked for, else the text `text()` makes.
    pub fn emit<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        if super::hook::armed() || super::job::active() {
            if let Ok(v) = serde_json::to_value(value) {
                super::job::record(v);
            }
        }
        let mut out = std::io::stdout().lock();
        if self.json {
            let _ = serde_json::to_writer_pretty(&mut out, value);
            let _ = writeln!(out);
        } else {
            let t = text();
            if !t.is_empty() {
                let _ = writeln!(out, "{}", t.trim_end());
            }
        }
    }

    /// A progress or status line for people; goes to stderr so stdout stays parseable.
    pub fn info(&self, line: impl AsRef<str>) {
        if !self.json {
            eprintln!("{}", line.as_ref());
        }
    }

    /// A note people must see (a fallback and its reason, a cartridge joining a set):
    /// on stderr, with `--json` too (stdout keeps only the JSON document).
    pub fn note(&self, line: impl AsRef<str>) {
        eprintln!("{}", line.as_ref());
    }

    /// Whether progress bars make sense (a terminal on stderr, not JSON).
    pub fn interactive(&self) -> bool {
        !self.json && std::io::stderr().is_terminal()
    }
}
