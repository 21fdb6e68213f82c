//! Printing results: human text on stdout, or one JSON document with `--json` (in the
//! contract's shape, see [`super::json`]).

use std::io::{IsTerminal, Write};

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Print a result: JSON when asked for, else the text `text()` makes.
    pub fn emit<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        let keep = super::hook::armed() || super::job::active();
        let doc = if self.json || keep {
            serde_json::to_value(value).ok().map(super::json::document)
        } else {
            None
        };
        if let Some(d) = &doc {
            if keep {
                super::job::record(d.clone());
            }
        }
        let mut out = std::io::stdout().lock();
        if self.json {
            if let Some(d) = &doc {
                let _ = serde_json::to_writer_pretty(&mut out, d);
                let _ = writeln!(out);
            }
        } else {
            let t = text();
            if !t.is_empty() {
                let _ = writeln!(out, "{}", t.trim_end());
            }
        }
    }

    /// Print a list result: under `--json` the document `{"KEY": [...]}` (every document
    /// is an object, docs/JSON.md), else the text `text()` makes.
    pub fn emit_list<T: Serialize>(&self, key: &str, items: &T, text: impl FnOnce() -> String) {
        let mut m = serde_json::Map::new();
        m.insert(
            key.to_string(),
            serde_json::to_value(items).unwrap_or(serde_json::Value::Null),
        );
        self.emit(&serde_json::Value::Object(m), text)
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
