//! What a job tells the person who runs it, while it runs.
//!
//! Jobs never print. They hand typed [`Event`]s to an [`Events`] sink they are given,
//! and return typed reports when they end. The CLI (`src/cli/terminal.rs`) is the one
//! sink that reaches a person: it turns notes into lines on stderr, byte-counted tasks
//! into progress bars on a terminal, waits into spinners, and finished items into the
//! summary lines a script's log keeps. Library users and tests pass [`Silent`].

use std::fmt;

/// A sink for a job's events. It is shared with the job's worker threads (`Sync`).
pub trait Events: Sync {
    fn emit(&self, event: Event<'_>);
}

/// One thing a job has to say.
pub enum Event<'a> {
    /// Something a person should read: a decision and its reason, a recovery, a
    /// cartridge joining a set, an image skipped.
    Note(Note),
    /// A byte-counted task starts (reading a disk, a restore, verifying a cartridge).
    TaskStarted { label: String, total: u64 },
    /// What the current task is doing now (for example which image it reads).
    TaskLabel(String),
    /// `n` more bytes of the current task are done.
    TaskProgress(u64),
    /// The current task ended (done or failed).
    TaskEnded,
    /// The job waits for something outside it: a cartridge, a drive, positioning.
    Waiting(Wait),
    /// The wait announced last is over.
    WaitOver,
    /// One item of the job is finished: its typed result, for the running log.
    Finished(Finished<'a>),
}

/// A note: what kind of thing it says, and the sentence saying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub kind: NoteKind,
    pub text: String,
}

/// Why a job speaks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// A choice that is not the obvious one, with its reason (a full instead of an
    /// incremental, a hash scan instead of a changed-extents file, an older base).
    Decision,
    /// State left by an earlier crash or kill was found and put right.
    Recovery,
    /// A cartridge was labelled, joined a set, was skipped, filled up or was changed.
    Media,
    /// Something was passed over (a newer image that cannot be restored, a record).
    Skipped,
    /// Something is wrong but the job goes on.
    Warning,
}

/// What a job is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub what: WaitFor,
    /// The sentence a person reads: what exactly, and what to do.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// A cartridge must be put into the library.
    Cartridge,
    /// A drive is busy with another job.
    Drive,
    /// The drive is loading, rewinding or locating.
    Positioning,
}

/// A finished item, typed by job.
pub enum Finished<'a> {
    /// Backup: one disk's image is on tape and in the catalog.
    Image(&'a crate::backup::DiskReport),
    /// Restore: one image of the chain has supplied its part of the point in time.
    RestoredFrom(&'a crate::restore::ImageUse),
    /// Verify: one tape file of a cartridge has been read and checked.
    TapeFile {
        barcode: &'a str,
        file: &'a crate::verify::TapeFileReport,
    },
    /// Catalog rebuild: one cartridge has been read.
    Cartridge {
        barcode: &'a str,
        files: u64,
        bytes: u64,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl dyn Events + '_ {
    /// Say something a person should read.
    pub fn note(&self, kind: NoteKind, text: impl Into<String>) {
        self.emit(Event::Note(Note {
            kind,
            text: text.into(),
        }));
    }

    pub fn task(&self, label: impl Into<String>, total: u64) {
        self.emit(Event::TaskStarted {
            label: label.into(),
            total,
        });
    }

    pub fn progress(&self, n: u64) {
        self.emit(Event::TaskProgress(n));
    }

    pub fn waiting(&self, what: WaitFor, text: impl Into<String>) {
        self.emit(Event::Waiting(Wait {
            what,
            text: text.into(),
        }));
    }
}

/// Events nobody hears: for library users and tests.
pub struct Silent;

impl Events for Silent {
    fn emit(&self, _: Event<'_>) {}
}

/// Events collected as text (notes and waits), for tests that check what a job said.
#[derive(Default)]
pub struct Recorded {
    pub lines: std::sync::Mutex<Vec<String>>,
}

impl Recorded {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Events for Recorded {
    fn emit(&self, event: Event<'_>) {
        let text = match event {
            Event::Note(n) => n.text,
            Event::Waiting(w) => w.text,
            _ => return,
        };
        if let Ok(mut v) = self.lines.lock() {
            v.push(text);
        }
    }
}
