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

    /// A list result printed element by element as it is made, so that neither the
    /// list nor its document is held whole: the same bytes [`Output::emit_list`] prints.
    /// `None` when something keeps the whole document (a hook, a job record): then
    /// build the list and use `emit_list`.
    pub fn list_stream(&self, key: &'static str) -> Option<ListStream> {
        if super::hook::armed() || super::job::active() {
            return None;
        }
        // The document's keys are sorted: `command`, then the list, then `schema`.
        debug_assert!(key > "command" && key < super::json::SCHEMA_KEY);
        Some(ListStream {
            json: self.json,
            key,
            out: std::io::BufWriter::with_capacity(256 << 10, std::io::stdout().lock()),
            items: 0,
            pending: String::new(),
            scratch: Vec::new(),
        })
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

/// See [`Output::list_stream`].
pub struct ListStream {
    json: bool,
    key: &'static str,
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    items: usize,
    /// Text of the latest element, held back: the last one is printed trimmed.
    pending: String,
    /// The JSON of the latest element (reused).
    scratch: Vec<u8>,
}

impl ListStream {
    /// Print one element: under `--json` its object in the document, else `text`.
    pub fn item<T: Serialize>(&mut self, item: &T, text: impl FnOnce(&T) -> String) {
        if self.json {
            let v = serde_json::to_value(item).unwrap_or(serde_json::Value::Null);
            let v = super::json::list_item(v, self.key);
            let s = serde_json::to_string_pretty(&v).unwrap_or_default();
            self.open_item();
            // Pretty JSON has no raw newline inside a string: each line is indented
            // two levels deeper, as inside the whole document.
            for (n, line) in s.lines().enumerate() {
                if n > 0 {
                    let _ = writeln!(self.out);
                }
                let _ = write!(self.out, "    {line}");
            }
        } else {
            let _ = self.out.write_all(self.pending.as_bytes());
            self.pending = text(item);
        }
        self.items += 1;
    }

    /// [`ListStream::item`] of an element whose `Serialize` already gives the contract's
    /// names and forms, its fields in the order of their names (as
    /// `super::json::list_item` leaves it): serialized straight to the output, with no
    /// `serde_json::Value` in between.
    pub fn item_in_contract_form<T: Serialize>(
        &mut self,
        item: &T,
        text: impl FnOnce(&T) -> String,
    ) {
        if !self.json {
            return self.item(item, text);
        }
        self.open_item();
        self.scratch.clear();
        let _ = serde_json::to_writer_pretty(&mut self.scratch, item);
        // Each line indented two levels deeper, as inside the whole document (pretty
        // JSON has no raw newline inside a string).
        let _ = self.out.write_all(b"    ");
        for (n, line) in self.scratch.split(|&b| b == b'\n').enumerate() {
            if n > 0 {
                let _ = self.out.write_all(b"\n    ");
            }
            let _ = self.out.write_all(line);
        }
        self.items += 1;
    }

    /// Under `--json`, what comes before an element: the document's head before the
    /// first, a comma after the one before.
    fn open_item(&mut self) {
        if self.items == 0 {
            let _ = writeln!(self.out, "{{");
            if let Some(c) = super::json::command() {
                let c = serde_json::to_string(c).unwrap_or_default();
                let _ = writeln!(self.out, "  \"command\": {c},");
            }
            let _ = writeln!(self.out, "  \"{}\": [", self.key);
        } else {
            let _ = writeln!(self.out, ",");
        }
    }

    /// End the document (or the text; `empty` when there was no element).
    pub fn finish(mut self, empty: impl FnOnce() -> String) {
        if self.json {
            if self.items == 0 {
                let mut m = serde_json::Map::new();
                m.insert(self.key.to_string(), serde_json::Value::Array(Vec::new()));
                let d = super::json::document(serde_json::Value::Object(m));
                let _ = serde_json::to_writer_pretty(&mut self.out, &d);
                let _ = writeln!(self.out);
            } else {
                let _ = write!(
                    self.out,
                    "\n  ],\n  \"schema\": {}\n}}\n",
                    serde_json::to_string(super::json::SCHEMA).unwrap_or_default()
                );
            }
        } else {
            let t = if self.items == 0 {
                empty()
            } else {
                std::mem::take(&mut self.pending)
            };
            if !t.is_empty() {
                let _ = writeln!(self.out, "{}", t.trim_end());
            }
        }
        let _ = self.out.flush();
    }
}
