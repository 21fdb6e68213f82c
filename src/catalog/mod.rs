//! The media catalog: SQLite (WAL, foreign keys, busy timeout) in `<home>/catalog.db`.
//!
//! It records pools, media sets, cartridges, sessions, images with their segments
//! (where each run of records sits on tape) and extents (which disk ranges they
//! cover), and where catalog snapshots were written. Every fact can be re-derived from
//! the media: [`Catalog::merge_snapshot`] / [`Catalog::merge_image`] /
//! [`Catalog::merge_media`] rebuild it idempotently without overwriting newer facts.
//!
//! An image is usable only once [`Catalog::complete_image`] has committed (one
//! transaction: status, totals, digest, segments, extents). Running images of a dead
//! process are failed by [`Catalog::fail_running_images`]; failed, incomplete and
//! corrupt images are never a restore target nor a base.

mod check;
mod coverage;
mod dump;
mod images;
mod jobs;
mod libvirt;
mod lookup;
mod parts;
pub mod schema;
mod types;

pub use check::{Problem, ProblemKind};
pub use coverage::ExtentCursor;
pub use dump::{
    Conflict, MergeReport, SnapshotBase, SnapshotScope, DELTA_VERSION, DUMP_FORMAT, DUMP_VERSION,
};
pub use images::{ReadView, MAX_CHAIN_LEN};
pub use jobs::{JobEnd, JobFilter, JobId, JobKind, JobResult, JobRow, JobStart};
pub use lookup::{KnownDisk, MIN_PREFIX};
pub use parts::ScannedPart;
pub use types::*;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// How long a statement waits for another process's write lock before failing: longer
/// than any single catalog transaction (a `complete_image` with many segments).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// SQLite page size of a new catalog, bytes.
const PAGE_SIZE: i64 = 8192;
/// File name of the catalog inside a tapevault home.
pub const CATALOG_FILE: &str = "catalog.db";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("catalog {path} has schema version {found}, this tapevault knows up to {known}: use a newer tapevault")]
    NewerSchema {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("catalog database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{what} {key} is not in the catalog")]
    NotFound { what: &'static str, key: String },
    #[error("{what} {key} already exists in the catalog")]
    AlreadyExists { what: &'static str, key: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("image {image} is {status}, cannot {action}")]
    WrongStatus {
        image: Uuid,
        status: ImageStatus,
        action: &'static str,
    },
    #[error("no complete image of disk {disk} {at}")]
    NoImage { disk: Uuid, at: String },
    #[error("restore chain of image {target} is broken at image {broken}: {reason}")]
    BrokenChain {
        target: Uuid,
        broken: Uuid,
        reason: String,
    },
    #[error("catalog snapshot is unreadable: {0}")]
    BadSnapshot(String),
    #[error("writing catalog export: {0}")]
    Export(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, CatalogError>;

// ---- value conversion helpers (SQLite <-> Rust) ----

pub(crate) fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn tso(t: &Option<DateTime<Utc>>) -> Option<String> {
    t.as_ref().map(ts)
}

/// Round a time to what the catalog stores (microseconds).
pub fn catalog_time(t: DateTime<Utc>) -> DateTime<Utc> {
    ts(&t).parse().unwrap_or(t)
}

pub(crate) fn num(x: u64, what: &str) -> Result<i64> {
    i64::try_from(x).map_err(|_| CatalogError::Invalid {
        what: what.to_string(),
        reason: format!("{x} exceeds the catalog's integer range"),
    })
}

fn conv_err(idx: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, msg.into())
}

pub(crate) fn get_p<T: FromStr>(row: &Row, idx: usize) -> rusqlite::Result<T>
where
    T::Err: Display,
{
    let s: String = row.get(idx)?;
    s.parse().map_err(|e| conv_err(idx, format!("{e}: {s:?}")))
}

pub(crate) fn get_po<T: FromStr>(row: &Row, idx: usize) -> rusqlite::Result<Option<T>>
where
    T::Err: Display,
{
    let s: Option<String> = row.get(idx)?;
    s.map(|s| s.parse().map_err(|e| conv_err(idx, format!("{e}: {s:?}"))))
        .transpose()
}

pub(crate) fn get_u64(row: &Row, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| conv_err(idx, format!("negative count {v}")))
}

pub(crate) fn get_u64o(row: &Row, idx: usize) -> rusqlite::Result<Option<u64>> {
    let v: Option<i64> = row.get(idx)?;
    v.map(|v| u64::try_from(v).map_err(|_| conv_err(idx, format!("negative count {v}"))))
        .transpose()
}

pub(crate) const POOL_COLS: &str =
    "name, key_name, key_fingerprint, compression, retention_days, allocation, worm, escrow, created";
pub(crate) fn pool_row(r: &Row) -> rusqlite::Result<PoolRow> {
    Ok(PoolRow {
        name: r.get(0)?,
        key_name: r.get(1)?,
        key_fingerprint: r.get(2)?,
        compression: get_p(r, 3)?,
        retention_days: get_u64o(r, 4)?.map(|d| d.min(u32::MAX as u64) as u32),
        allocation: get_p(r, 5)?,
        worm: r.get(6)?,
        escrow: r.get(7)?,
        created: get_p(r, 8)?,
    })
}

pub(crate) const SET_COLS: &str = "uuid, pool, created, last_write, closed, format_major";
pub(crate) fn set_row(r: &Row) -> rusqlite::Result<MediaSetRow> {
    Ok(MediaSetRow {
        uuid: get_p(r, 0)?,
        pool: r.get(1)?,
        created: get_p(r, 2)?,
        last_write: get_po(r, 3)?,
        closed: r.get(4)?,
        format_major: r.get(5)?,
    })
}

pub(crate) const MEDIA_COLS: &str =
    "barcode, volume_uuid, pool, media_set_uuid, seq_in_set, state, location, \
     labelled_at, last_written, next_tape_file, bytes_written, errors";
pub(crate) fn media_row(r: &Row) -> rusqlite::Result<MediaRow> {
    Ok(MediaRow {
        barcode: r.get(0)?,
        volume_uuid: get_po(r, 1)?,
        pool: r.get(2)?,
        media_set_uuid: get_po(r, 3)?,
        seq_in_set: r.get(4)?,
        state: get_p(r, 5)?,
        location: r.get(6)?,
        labelled_at: get_po(r, 7)?,
        last_written: get_po(r, 8)?,
        next_tape_file: get_u64(r, 9)?,
        bytes_written: get_u64(r, 10)?,
        errors: get_u64(r, 11)?,
    })
}

pub(crate) const SESSION_COLS: &str = "uuid, pool, media_set_uuid, started, finished, status";
/// Reads [`SESSION_COLS`], optionally followed by `writer`: a session still marked
/// running whose writing process is gone reads as failed (see [`interrupted`]).
pub(crate) fn session_row(r: &Row) -> rusqlite::Result<SessionRow> {
    let mut status: SessionStatus = get_p(r, 5)?;
    if status == SessionStatus::Running && r.as_ref().column_count() > 6 {
        let writer: Option<String> = r.get(6)?;
        if interrupted(writer.as_deref()).is_some() {
            status = SessionStatus::Failed;
        }
    }
    Ok(SessionRow {
        uuid: get_p(r, 0)?,
        pool: r.get(1)?,
        media_set_uuid: get_po(r, 2)?,
        started: get_p(r, 3)?,
        finished: get_po(r, 4)?,
        status,
    })
}

/// For a row marked running: `Some(note)` when the process that writes it is gone
/// (killed, crashed, the machine restarted), so every reader shows it as failed at
/// once, without a write lock; the next writer records that in the catalog.
pub(crate) fn interrupted(writer: Option<&str>) -> Option<String> {
    if writer.is_some_and(writer_alive) {
        return None;
    }
    let pid = writer.and_then(|w| w.split(':').next()).unwrap_or("?");
    Some(format!(
        "interrupted: the writing process (pid {pid}) ended before the image trailer was written"
    ))
}

pub(crate) const SNAP_COLS: &str = "barcode, tape_file, block, session_uuid, time";
pub(crate) fn snap_row(r: &Row) -> rusqlite::Result<SnapshotLocation> {
    Ok(SnapshotLocation {
        barcode: r.get(0)?,
        tape_file: get_u64(r, 1)?,
        block: get_u64(r, 2)?,
        session_uuid: get_po(r, 3)?,
        time: get_p(r, 4)?,
    })
}

/// Identity of this process that survives pid reuse: `pid:start-time-ticks` (from
/// /proc), or `pid:?` where /proc is unavailable.
pub(crate) fn writer_id(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime) counted after the ")" that ends the command name.
    let after = &stat[stat.rfind(')')? + 1..];
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

pub(crate) fn this_writer() -> String {
    let pid = std::process::id();
    writer_id(pid).unwrap_or_else(|| format!("{pid}:?"))
}

/// Whether the process that wrote `writer` is still running.
pub(crate) fn writer_alive(writer: &str) -> bool {
    let Some((pid, start)) = writer.split_once(':') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if start == "?" {
        return nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
    }
    // A killed process not yet reaped by its parent (a zombie) writes nothing more.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            after.split_whitespace().next().map(str::to_string)
        });
    if matches!(state.as_deref(), Some("Z") | Some("X") | Some("x")) {
        return false;
    }
    writer_id(pid).as_deref() == Some(writer)
}

/// Put the catalog (back) into WAL mode. Leaving a rollback journal needs every other
/// connection closed: while a merge writes through one ([`Catalog::bulk_journal`]) the
/// switch fails at once with "busy" (SQLite does not wait for it), and this connection
/// works in the rollback-journal mode until the merge's process switches back (SQLite's
/// locking serializes both modes alike; readers wait out the merge's commit).
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    match conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())) {
        Err(e) if is_busy(&e) => {
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            if mode.eq_ignore_ascii_case("wal") || mode.eq_ignore_ascii_case("delete") {
                Ok(())
            } else {
                Err(e)
            }
        }
        r => r,
    }
}

fn all_rows<T>(
    st: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    row: impl FnMut(&Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let rows = st
        .query_map(params, row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A bulk write through a rollback journal instead of the WAL, while it is held (see
/// [`Catalog::bulk_journal`]); back to WAL when dropped.
pub(crate) struct BulkJournal<'c> {
    conn: &'c Connection,
    /// Whether the catalog left WAL for this bulk write.
    on: bool,
}

impl Drop for BulkJournal<'_> {
    fn drop(&mut self) {
        if self.on {
            // Fails only when another process has opened the catalog meanwhile: its
            // open switched it back to WAL already, or the next open will.
            let _ = set_wal(self.conn);
        }
    }
}

/// Directory of the block digest lists inside a tapevault home (`Home::digests_dir`).
pub const DIGESTS_DIR: &str = "digests";

/// An open catalog. One per process; SQLite's locking (WAL + busy timeout) arbitrates
/// between processes.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
    /// Inside [`Catalog::rehearse`]: transactions become savepoints of its own.
    rehearsing: std::cell::Cell<bool>,
}

impl Catalog {
    /// Open or create `<home>/catalog.db`.
    pub fn open(home: &Path) -> Result<Catalog> {
        Catalog::open_path(&home.join(CATALOG_FILE))
    }

    /// Open or create the catalog at `path`, migrating it to [`schema::SCHEMA_VERSION`].
    /// A catalog written by a newer tapevault is refused, naming both versions.
    pub fn open_path(path: &Path) -> Result<Catalog> {
        let oerr = |source| CatalogError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(oerr)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(oerr)?;
        let found: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(oerr)?;
        if found > schema::SCHEMA_VERSION {
            return Err(CatalogError::NewerSchema {
                path: path.to_path_buf(),
                found,
                known: schema::SCHEMA_VERSION,
            });
        }
        // A new catalog gets 8 KiB pages (SQLite's default is 4 KiB): a rebuild that
        // loads 100 k images spends a tenth less in its inserts and a fifth less making
        // the indexes. Only a file with no page yet can take it.
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(oerr)?;
        if pages == 0 {
            conn.pragma_update(None, "page_size", PAGE_SIZE)
                .map_err(oerr)?;
        }
        set_wal(&conn).map_err(oerr)?;
        // FULL: a committed complete_image must survive power loss, because the tape
        // already holds the trailer the commit stands for.
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
            .map_err(oerr)?;
        let mut cat = Catalog {
            conn,
            path: path.to_path_buf(),
            rehearsing: std::cell::Cell::new(false),
        };
        cat.migrate()?;
        Ok(cat)
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Re-read under the write lock: another process may have migrated meanwhile.
        let mut v: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if v > schema::SCHEMA_VERSION {
            return Err(CatalogError::NewerSchema {
                path,
                found: v,
                known: schema::SCHEMA_VERSION,
            });
        }
        let migrated = (v as usize) < schema::MIGRATIONS.len();
        while (v as usize) < schema::MIGRATIONS.len() {
            tx.execute_batch(schema::MIGRATIONS[v as usize])?;
            v += 1;
            tx.pragma_update(None, "user_version", v)?;
        }
        tx.commit()?;
        // Only an older tapevault recorded absolute paths, and it could not open a
        // catalog of this schema: once migrated, the catalog holds none (a scan of every
        // image at each open cost 13 ms with 100 k images).
        if migrated {
            self.relativize_paths()?;
        }
        Ok(())
    }

    /// Nothing in the catalog points outside its home: a digest list recorded by an
    /// older tapevault as an absolute path becomes relative to the home when it lies
    /// inside it, and is forgotten otherwise (the next backup of that disk then takes
    /// a full and says why). The only path column is `images.digest_list`.
    fn relativize_paths(&self) -> Result<()> {
        let found: Vec<(String, String)> = self
            .conn
            .prepare(
                "SELECT uuid, digest_list FROM images WHERE digest_list IS NOT NULL \
                 AND (digest_list NOT LIKE 'digests/%' OR digest_list LIKE '%..%')",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if found.is_empty() {
            return Ok(());
        }
        let tx = self.write_tx()?;
        for (uuid, list) in found {
            let p = Path::new(&list);
            let mut rel = self.home_relative(p);
            if rel.is_none() && p.is_relative() {
                // Written relative to the directory an older tapevault ran in: only
                // this home's own list of the image is taken.
                if let Ok(u) = uuid.parse::<Uuid>() {
                    if p.ends_with(format!("{DIGESTS_DIR}/{u}.digests")) {
                        rel = self.local_digest_list(u);
                    }
                }
            }
            tx.execute(
                "UPDATE images SET digest_list=?2 WHERE uuid=?1",
                params![uuid, rel],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tapevault home this catalog belongs to (the directory holding it). Every
    /// path the catalog stores is relative to it.
    pub fn home_dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// `p` as the catalog stores it: relative to the home, with only plain components.
    /// `None` for a path outside the home.
    pub(crate) fn home_relative(&self, p: &Path) -> Option<String> {
        let plain = |r: &Path| {
            let ok = r.components().count() > 0
                && r.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            ok.then(|| r.to_string_lossy().into_owned())
        };
        let absolute = |q: &Path| {
            if q.is_absolute() {
                Some(q.to_path_buf())
            } else {
                std::env::current_dir().ok().map(|d| d.join(q))
            }
        };
        let (p, home) = (absolute(p)?, absolute(self.home_dir())?);
        if let Ok(r) = p.strip_prefix(&home) {
            return plain(r);
        }
        // The same directory named another way (a symlink, `..`).
        let home = std::fs::canonicalize(home).ok()?;
        let (dir, name) = (p.parent()?, p.file_name()?);
        let dir = std::fs::canonicalize(dir).ok()?;
        plain(&dir.strip_prefix(&home).ok()?.join(name))
    }

    /// The file an image's block digest list is in, inside this catalog's home; `None`
    /// when none is recorded (or what is recorded does not lie in the home).
    pub fn digest_list_file(&self, img: &ImageRow) -> Option<PathBuf> {
        let rel = img.digest_list.as_deref()?;
        let rel = Path::new(rel);
        if rel.is_absolute()
            || !rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return None;
        }
        Some(self.home_dir().join(rel))
    }

    /// The digest list this home holds for `image` (written by a backup from this
    /// home), as the catalog stores it; `None` when there is none. A rebuilt catalog
    /// takes digest lists only from here, never a path from the media or an export.
    pub(crate) fn local_digest_list(&self, image: Uuid) -> Option<String> {
        let rel = self.digest_list_rel(image);
        self.home_dir().join(&rel).is_file().then_some(rel)
    }

    /// Where the digest list of `image` is kept, relative to the home.
    pub(crate) fn digest_list_rel(&self, image: Uuid) -> String {
        format!("{DIGESTS_DIR}/{image}.digests")
    }

    /// Every image with a digest list in this home ([`Catalog::local_digest_list`] of
    /// many images at once: one directory read instead of a lookup per image). None
    /// when the directory cannot be read (then look each up).
    pub(crate) fn local_digest_lists(&self) -> Option<std::collections::HashSet<Uuid>> {
        let dir = match std::fs::read_dir(self.home_dir().join(DIGESTS_DIR)) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Some(std::collections::HashSet::new())
            }
            Err(_) => return None,
        };
        let mut out = std::collections::HashSet::new();
        for e in dir {
            let e = e.ok()?;
            let name = e.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".digests"))
                .and_then(|n| n.parse::<Uuid>().ok())
            else {
                continue;
            };
            if e.path().is_file()
                && self.digest_list_rel(id) == format!("{DIGESTS_DIR}/{}", name.to_string_lossy())
            {
                out.insert(id);
            }
        }
        Some(out)
    }

    /// The schema version of the open catalog.
    pub fn schema_version(&self) -> Result<u32> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Every row `sql` gives with `params`, each read by `row`.
    pub(crate) fn rows_of<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        all_rows(&mut self.conn.prepare(sql)?, params, row)
    }

    /// [`Catalog::rows_of`] through the statement cache, for a query asked per image
    /// of a listing.
    pub(crate) fn cached_rows_of<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut st = self.conn.prepare_cached(sql)?;
        all_rows(&mut st, params, row)
    }

    /// A write transaction that takes the write lock at once (waiting up to
    /// [`BUSY_TIMEOUT`]). A deferred one that read first could not wait for a lock
    /// taken meanwhile by another process: SQLite would fail it with "busy" at once.
    /// Inside [`Catalog::rehearse`] it is a savepoint of the rehearsal's transaction.
    pub(crate) fn write_tx(&self) -> Result<Tx<'_>> {
        Ok(Tx::begin(
            &self.conn,
            "BEGIN IMMEDIATE",
            self.rehearsing.get(),
        )?)
    }

    /// A read transaction (one consistent picture), or a savepoint inside
    /// [`Catalog::rehearse`] (which sees the rehearsal's writes).
    pub(crate) fn read_tx(&self) -> Result<Tx<'_>> {
        Ok(Tx::begin(
            &self.conn,
            "BEGIN DEFERRED",
            self.rehearsing.get(),
        )?)
    }

    /// Run `f` in a transaction that is rolled back afterwards: what `f` writes
    /// through this catalog is seen by its own reads, and none of it lasts. What a
    /// backup session writes to tape before its commit point (the catalog snapshot of
    /// its images as complete) is made this way; the catalog says so only after the
    /// flush.
    pub fn rehearse<R, E: From<CatalogError>>(
        &self,
        f: impl FnOnce(&Catalog) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E> {
        if self.rehearsing.get() {
            return Err(CatalogError::Invalid {
                what: "catalog rehearsal".into(),
                reason: "one is already under way".into(),
            }
            .into());
        }
        let tx = Tx::begin(&self.conn, "BEGIN IMMEDIATE", false).map_err(CatalogError::from)?;
        self.rehearsing.set(true);
        let r = f(self);
        self.rehearsing.set(false);
        drop(tx); // rolled back
        r
    }

    /// For a merge that writes most of the catalog's pages (a rebuild's snapshot into
    /// a fresh home: 100 MB for 100 k images): when this process is the only one with
    /// the catalog open, it leaves WAL for a rollback journal until the guard is
    /// dropped. A new page (past the file's end when the transaction began) needs no
    /// journal, so each page is written once, into catalog.db, instead of into the WAL
    /// and again by the checkpoint; the commit is as durable (`synchronous = FULL`
    /// syncs the journal and the file) and as atomic (a hot journal rolls a killed
    /// merge back when the catalog is next opened). With another connection open
    /// anywhere (SQLite refuses to leave WAL then), or inside a transaction, nothing
    /// changes: the merge goes through the WAL as any write.
    pub(crate) fn bulk_journal(&self) -> Result<BulkJournal<'_>> {
        let mut on = false;
        if !self.rehearsing.get() && self.conn.is_autocommit() {
            match self
                .conn
                .query_row("PRAGMA journal_mode = DELETE", [], |r| {
                    r.get::<_, String>(0)
                }) {
                Ok(mode) => on = mode.eq_ignore_ascii_case("delete"),
                Err(e) if is_busy(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(BulkJournal {
            conn: &self.conn,
            on,
        })
    }

    // ---- pools ----

    pub fn create_pool(&self, pool: &PoolRow) -> Result<()> {
        if self.pool(&pool.name)?.is_some() {
            return Err(CatalogError::AlreadyExists {
                what: "pool",
                key: pool.name.clone(),
            });
        }
        self.insert_pool(pool)
    }

    pub(crate) fn insert_pool(&self, p: &PoolRow) -> Result<()> {
        if p.name.is_empty() {
            return Err(CatalogError::Invalid {
                what: "pool name".into(),
                reason: "empty".into(),
            });
        }
        if p.key_name.is_some() != p.key_fingerprint.is_some() {
            return Err(CatalogError::Invalid {
                what: format!("pool {}", p.name),
                reason: "key name and key fingerprint must be given together".into(),
            });
        }
        self.conn.execute(
            &format!("INSERT INTO pools ({POOL_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
            params![
                p.name,
                p.key_name,
                p.key_fingerprint,
                p.compression.to_string(),
                p.retention_days,
                p.allocation.to_string(),
                p.worm,
                p.escrow,
                ts(&p.created)
            ],
        )?;
        Ok(())
    }

    /// Change a pool's settings (all but its name and creation time).
    pub fn update_pool(&self, p: &PoolRow) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE pools SET key_name=?2, key_fingerprint=?3, compression=?4, retention_days=?5, \
             allocation=?6, worm=?7, escrow=?8 WHERE name=?1",
            params![
                p.name,
                p.key_name,
                p.key_fingerprint,
                p.compression.to_string(),
                p.retention_days,
                p.allocation.to_string(),
                p.worm,
                p.escrow
            ],
        )?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                what: "pool",
                key: p.name.clone(),
            });
        }
        Ok(())
    }

    /// Delete a pool that no cartridge, media set or image refers to.
    pub fn delete_pool(&self, name: &str) -> Result<()> {
        let used: i64 = self.conn.query_row(
            "SELECT (SELECT count(*) FROM media WHERE pool=?1) + (SELECT count(*) FROM media_sets WHERE pool=?1) \
             + (SELECT count(*) FROM images WHERE pool=?1)",
            [name],
            |r| r.get(0),
        )?;
        if used > 0 {
            return Err(CatalogError::Invalid {
                what: format!("pool {name}"),
                reason: "still used by cartridges, media sets or images".into(),
            });
        }
        if self
            .conn
            .execute("DELETE FROM pools WHERE name=?1", [name])?
            == 0
        {
            return Err(CatalogError::NotFound {
                what: "pool",
                key: name.into(),
            });
        }
        Ok(())
    }

    pub fn pool(&self, name: &str) -> Result<Option<PoolRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {POOL_COLS} FROM pools WHERE name=?1"),
                [name],
                pool_row,
            )
            .optional()?)
    }

    pub fn pools(&self) -> Result<Vec<PoolRow>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {POOL_COLS} FROM pools ORDER BY name"))?;
        let rows = st
            .query_map([], pool_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    fn require_pool(&self, name: &str) -> Result<()> {
        if self.pool(name)?.is_none() {
            return Err(CatalogError::NotFound {
                what: "pool",
                key: name.into(),
            });
        }
        Ok(())
    }

    // ---- media sets ----

    /// Start a new media set in `pool`.
    pub fn create_media_set(&self, pool: &str, format_major: u32) -> Result<MediaSetRow> {
        self.require_pool(pool)?;
        let row = MediaSetRow {
            uuid: Uuid::new_v4(),
            pool: pool.to_string(),
            created: catalog_time(crate::home::clock::now()),
            last_write: None,
            closed: false,
            format_major,
        };
        self.insert_media_set(&row)?;
        Ok(row)
    }

    pub(crate) fn insert_media_set(&self, s: &MediaSetRow) -> Result<()> {
        self.conn.execute(
            &format!("INSERT INTO media_sets ({SET_COLS}) VALUES (?1,?2,?3,?4,?5,?6)"),
            params![
                s.uuid.to_string(),
                s.pool,
                ts(&s.created),
                tso(&s.last_write),
                s.closed,
                s.format_major
            ],
        )?;
        Ok(())
    }

    pub fn media_set(&self, uuid: Uuid) -> Result<Option<MediaSetRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {SET_COLS} FROM media_sets WHERE uuid=?1"),
                [uuid.to_string()],
                set_row,
            )
            .optional()?)
    }

    pub fn media_sets(&self, pool: Option<&str>) -> Result<Vec<MediaSetRow>> {
        self.rows_of(
            &format!(
            "SELECT {SET_COLS} FROM media_sets WHERE ?1 IS NULL OR pool=?1 ORDER BY created, rowid"
        ),
            [pool],
            set_row,
        )
    }

    /// The newest open media set of `pool`, if any.
    pub fn current_media_set(&self, pool: &str) -> Result<Option<MediaSetRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {SET_COLS} FROM media_sets WHERE pool=?1 AND closed=0 ORDER BY created DESC, rowid DESC LIMIT 1"
                ),
                [pool],
                set_row,
            )
            .optional()?)
    }

    pub fn close_media_set(&self, uuid: Uuid) -> Result<()> {
        self.set_update("UPDATE media_sets SET closed=1 WHERE uuid=?1", uuid)
    }

    /// Record a write to the set now.
    pub fn touch_media_set(&self, uuid: Uuid) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE media_sets SET last_write=?2 WHERE uuid=?1",
            params![uuid.to_string(), ts(&crate::home::clock::now())],
        )?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                what: "media set",
                key: uuid.to_string(),
            });
        }
        Ok(())
    }

    fn set_update(&self, sql: &str, uuid: Uuid) -> Result<()> {
        if self.conn.execute(sql, [uuid.to_string()])? == 0 {
            return Err(CatalogError::NotFound {
                what: "media set",
                key: uuid.to_string(),
            });
        }
        Ok(())
    }

    /// The cartridges of a media set in sequence order.
    pub fn media_in_set(&self, uuid: Uuid) -> Result<Vec<MediaRow>> {
        self.rows_of(
            &format!("SELECT {MEDIA_COLS} FROM media WHERE media_set_uuid=?1 ORDER BY seq_in_set"),
            [uuid.to_string()],
            media_row,
        )
    }

    // ---- media ----

    /// Insert or replace everything known about a cartridge.
    pub fn upsert_media(&self, m: &MediaRow) -> Result<()> {
        if let Some(p) = &m.pool {
            self.require_pool(p)?;
        }
        self.write_media_row(
            &format!(
                "INSERT INTO media ({MEDIA_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12) \
                 ON CONFLICT(barcode) DO UPDATE SET volume_uuid=excluded.volume_uuid, pool=excluded.pool, \
                 media_set_uuid=excluded.media_set_uuid, seq_in_set=excluded.seq_in_set, state=excluded.state, \
                 location=excluded.location, labelled_at=excluded.labelled_at, last_written=excluded.last_written, \
                 next_tape_file=excluded.next_tape_file, bytes_written=excluded.bytes_written, errors=excluded.errors"
            ),
            m,
        )
    }

    /// Run `sql`, an insert of [`MEDIA_COLS`] as `?1`..`?12`, with `m`'s values.
    pub(crate) fn write_media_row(&self, sql: &str, m: &MediaRow) -> Result<()> {
        self.conn.execute(
            sql,
            params![
                m.barcode,
                m.volume_uuid.map(|u| u.to_string()),
                m.pool,
                m.media_set_uuid.map(|u| u.to_string()),
                m.seq_in_set,
                m.state.as_str(),
                m.location,
                tso(&m.labelled_at),
                tso(&m.last_written),
                num(m.next_tape_file, "next tape file")?,
                num(m.bytes_written, "bytes written")?,
                num(m.errors, "error count")?
            ],
        )?;
        Ok(())
    }

    pub fn media(&self, barcode: &str) -> Result<Option<MediaRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {MEDIA_COLS} FROM media WHERE barcode=?1"),
                [barcode],
                media_row,
            )
            .optional()?)
    }

    /// Every cartridge, or those of one pool, by barcode.
    pub fn list_media(&self, pool: Option<&str>) -> Result<Vec<MediaRow>> {
        self.rows_of(
            &format!("SELECT {MEDIA_COLS} FROM media WHERE ?1 IS NULL OR pool=?1 ORDER BY barcode"),
            [pool],
            media_row,
        )
    }

    fn media_update(&self, barcode: &str, sql: &str, p: &[&dyn rusqlite::ToSql]) -> Result<()> {
        let mut all: Vec<&dyn rusqlite::ToSql> = vec![&barcode];
        all.extend_from_slice(p);
        if self.conn.execute(sql, all.as_slice())? == 0 {
            return Err(CatalogError::NotFound {
                what: "cartridge",
                key: barcode.into(),
            });
        }
        Ok(())
    }

    pub fn set_media_state(&self, barcode: &str, state: MediaState) -> Result<()> {
        self.media_update(
            barcode,
            "UPDATE media SET state=?2 WHERE barcode=?1",
            &[&state.as_str()],
        )
    }

    pub fn set_media_location(&self, barcode: &str, location: &str) -> Result<()> {
        self.media_update(
            barcode,
            "UPDATE media SET location=?2 WHERE barcode=?1",
            &[&location],
        )
    }

    /// Record a new label: the cartridge joins `pool`'s media set at `seq`, writable,
    /// appends starting at tape file 1. Any previous assignment is replaced.
    pub fn assign_media(
        &self,
        barcode: &str,
        pool: &str,
        media_set: Uuid,
        seq: u32,
        volume_uuid: Uuid,
    ) -> Result<()> {
        self.require_pool(pool)?;
        match self.media_set(media_set)? {
            Some(s) if s.pool == pool => {}
            Some(s) => {
                return Err(CatalogError::Invalid {
                    what: format!("media set {media_set}"),
                    reason: format!("belongs to pool {}, not {pool}", s.pool),
                })
            }
            None => {
                return Err(CatalogError::NotFound {
                    what: "media set",
                    key: media_set.to_string(),
                })
            }
        }
        self.media_update(
            barcode,
            "UPDATE media SET pool=?2, media_set_uuid=?3, seq_in_set=?4, volume_uuid=?5, state='writable', \
             labelled_at=?6, next_tape_file=1, bytes_written=0 WHERE barcode=?1",
            &[
                &pool,
                &media_set.to_string(),
                &seq,
                &volume_uuid.to_string(),
                &ts(&crate::home::clock::now()),
            ],
        )
    }

    /// Remove a cartridge from its pool (blank, unassigned; e.g. before relabelling).
    pub fn unassign_media(&self, barcode: &str) -> Result<()> {
        self.media_update(
            barcode,
            "UPDATE media SET pool=NULL, media_set_uuid=NULL, seq_in_set=NULL, volume_uuid=NULL, \
             state='blank', labelled_at=NULL, next_tape_file=1, bytes_written=0 WHERE barcode=?1",
            &[],
        )
    }

    /// After appending: where the next tape file goes and how many bytes were added.
    pub fn record_media_write(
        &self,
        barcode: &str,
        next_tape_file: u64,
        bytes_added: u64,
    ) -> Result<()> {
        self.media_update(
            barcode,
            "UPDATE media SET next_tape_file=?2, bytes_written=bytes_written+?3, last_written=?4 WHERE barcode=?1",
            &[
                &num(next_tape_file, "next tape file")?,
                &num(bytes_added, "bytes written")?,
                &ts(&crate::home::clock::now()),
            ],
        )
    }

    /// What a media scan saw at end of data: the next append goes at least to tape
    /// file `next_tape_file` (never lowers what the catalog knows).
    pub fn raise_next_tape_file(&self, barcode: &str, next_tape_file: u64) -> Result<()> {
        self.media_update(
            barcode,
            "UPDATE media SET next_tape_file=max(next_tape_file, ?2) WHERE barcode=?1",
            &[&num(next_tape_file, "next tape file")?],
        )
    }

    pub fn add_media_errors(&self, barcode: &str, n: u64) -> Result<()> {
        self.media_update(
            barcode,
            "UPDATE media SET errors=errors+?2 WHERE barcode=?1",
            &[&num(n, "error count")?],
        )
    }

    // ---- sessions ----

    pub fn begin_session(&self, pool: &str, media_set: Option<Uuid>) -> Result<SessionRow> {
        self.require_pool(pool)?;
        let s = SessionRow {
            uuid: Uuid::new_v4(),
            pool: pool.into(),
            media_set_uuid: media_set,
            started: catalog_time(crate::home::clock::now()),
            finished: None,
            status: SessionStatus::Running,
        };
        self.insert_session(&s, Some(&this_writer()))?;
        Ok(s)
    }

    pub(crate) fn insert_session(&self, s: &SessionRow, writer: Option<&str>) -> Result<()> {
        self.conn.execute(
            &format!("INSERT INTO sessions ({SESSION_COLS}, writer) VALUES (?1,?2,?3,?4,?5,?6,?7)"),
            params![
                s.uuid.to_string(),
                s.pool,
                s.media_set_uuid.map(|u| u.to_string()),
                ts(&s.started),
                tso(&s.finished),
                s.status.as_str(),
                writer
            ],
        )?;
        Ok(())
    }

    /// Close a session as complete or failed; also sets its media set's last write.
    pub fn finish_session(&self, uuid: Uuid, status: SessionStatus) -> Result<()> {
        if status == SessionStatus::Running {
            return Err(CatalogError::Invalid {
                what: format!("session {uuid}"),
                reason: "cannot finish as running".into(),
            });
        }
        let n = self.conn.execute(
            "UPDATE sessions SET finished=?2, status=?3 WHERE uuid=?1",
            params![
                uuid.to_string(),
                ts(&crate::home::clock::now()),
                status.as_str()
            ],
        )?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                what: "session",
                key: uuid.to_string(),
            });
        }
        Ok(())
    }

    pub fn session(&self, uuid: Uuid) -> Result<Option<SessionRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {SESSION_COLS}, writer FROM sessions WHERE uuid=?1"
            ))?
            .query_row([uuid.to_string()], session_row)
            .optional()?)
    }

    /// Every session, oldest first; sessions started at the same time (as under a
    /// simulated clock) in the order they were recorded.
    pub fn sessions(&self) -> Result<Vec<SessionRow>> {
        self.rows_of(
            &format!("SELECT {SESSION_COLS}, writer FROM sessions ORDER BY started, rowid"),
            [],
            session_row,
        )
    }

    // ---- catalog snapshots on media ----

    /// Note where a catalog snapshot was written (idempotent).
    pub fn record_snapshot(&self, s: &SnapshotLocation) -> Result<()> {
        self.insert_snapshot(s).map(|_| ())
    }

    /// Insert a snapshot location; false if it was already known.
    pub(crate) fn insert_snapshot(&self, s: &SnapshotLocation) -> Result<bool> {
        let n = self.conn.execute(
            &format!("INSERT OR IGNORE INTO snapshots ({SNAP_COLS}) VALUES (?1,?2,?3,?4,?5)"),
            params![
                s.barcode,
                num(s.tape_file, "tape file")?,
                num(s.block, "block")?,
                s.session_uuid.map(|u| u.to_string()),
                ts(&s.time)
            ],
        )?;
        Ok(n > 0)
    }

    /// Every recorded snapshot location, newest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotLocation>> {
        self.rows_of(
            &format!("SELECT {SNAP_COLS} FROM snapshots ORDER BY time DESC, barcode, tape_file"),
            [],
            snap_row,
        )
    }
}

/// A transaction of the catalog's connection, or a savepoint of the one open inside
/// [`Catalog::rehearse`] (elsewhere a transaction inside another is refused, as
/// SQLite does). Rolled back when dropped uncommitted.
pub(crate) struct Tx<'a> {
    conn: &'a Connection,
    nested: bool,
    done: bool,
}

impl<'a> Tx<'a> {
    fn begin(conn: &'a Connection, begin: &str, rehearsing: bool) -> rusqlite::Result<Tx<'a>> {
        let nested = rehearsing && !conn.is_autocommit();
        conn.execute_batch(if nested { "SAVEPOINT tv_nested" } else { begin })?;
        Ok(Tx {
            conn,
            nested,
            done: false,
        })
    }

    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        self.done = true;
        self.conn.execute_batch(if self.nested {
            "RELEASE tv_nested"
        } else {
            "COMMIT"
        })
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch(if self.nested {
                "ROLLBACK TO tv_nested; RELEASE tv_nested"
            } else {
                "ROLLBACK"
            });
        }
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

#[cfg(test)]
mod rehearse_tests {
    use super::*;

    #[test]
    fn a_rehearsal_sees_its_own_writes_and_none_of_them_last() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        cat.put_libvirt_checkpoint("vm", "kept", None, "<a/>")
            .unwrap();
        let seen = cat
            .rehearse(|c| -> Result<_> {
                c.put_libvirt_checkpoint("vm", "rehearsed", None, "<b/>")?;
                // A read transaction inside sees it (the snapshot's queries do).
                let tx = c.read_tx()?;
                let n: i64 =
                    tx.query_row("SELECT count(*) FROM libvirt_checkpoints", [], |r| r.get(0))?;
                drop(tx);
                Ok((c.libvirt_checkpoint("vm", "rehearsed")?, n))
            })
            .unwrap();
        assert_eq!(seen, (Some("<b/>".to_string()), 2));
        assert_eq!(cat.libvirt_checkpoint("vm", "rehearsed").unwrap(), None);
        assert_eq!(
            cat.libvirt_checkpoint("vm", "kept").unwrap().as_deref(),
            Some("<a/>")
        );
        // An error inside is returned, and nothing of it lasts either.
        let r: Result<()> = cat.rehearse(|c| {
            c.put_libvirt_checkpoint("vm", "lost", None, "<c/>")?;
            Err(CatalogError::Invalid {
                what: "test".into(),
                reason: "fails".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(cat.libvirt_checkpoint("vm", "lost").unwrap(), None);
        // Writes work again afterwards, for real; and outside a rehearsal a write
        // transaction inside a read view is refused (never silently rolled back).
        cat.put_libvirt_checkpoint("vm", "after", None, "<d/>")
            .unwrap();
        assert!(cat.libvirt_checkpoint("vm", "after").unwrap().is_some());
        let view = cat.read_view().unwrap();
        assert!(cat
            .put_libvirt_checkpoint("vm", "in-view", None, "<e/>")
            .is_err());
        drop(view);
        assert_eq!(cat.libvirt_checkpoint("vm", "in-view").unwrap(), None);
    }
}

#[cfg(test)]
mod bulk_journal_tests {
    use super::*;

    fn mode(c: &Catalog) -> String {
        c.conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_catalog_has_8_kib_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let page = |c: &Catalog| -> i64 {
            c.conn()
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(page(&Catalog::open(dir.path()).unwrap()), PAGE_SIZE);
        assert_eq!(page(&Catalog::open(dir.path()).unwrap()), PAGE_SIZE);
        let old = dir.path().join("old.db");
        let raw = Connection::open(&old).unwrap();
        raw.execute_batch("PRAGMA page_size = 4096; CREATE TABLE t (x);")
            .unwrap();
        drop(raw);
        assert_eq!(page(&Catalog::open_path(&old).unwrap()), 4096);
    }

    #[test]
    fn a_bulk_journal_needs_the_catalog_to_itself_and_never_locks_others_out() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        // Another connection open: the merge stays in WAL.
        let other = Catalog::open(dir.path()).unwrap();
        {
            let b = cat.bulk_journal().unwrap();
            assert!(!b.on);
            assert_eq!(mode(&cat), "wal");
        }
        drop(other);
        let b = cat.bulk_journal().unwrap();
        assert!(b.on);
        assert_eq!(mode(&cat), "delete");
        assert!(!dir.path().join("catalog.db-wal").exists());
        // A process opening the catalog while the merge holds a lock cannot switch it
        // back to WAL (SQLite says busy at once): it opens it all the same, in the
        // rollback mode, and reads it.
        let rtx = cat.read_tx().unwrap();
        let n: i64 = cat
            .conn()
            .query_row("SELECT COUNT(*) FROM media", [], |r| r.get(0))
            .unwrap();
        let path = dir.path().to_path_buf();
        let opener = std::thread::spawn(move || {
            let other = Catalog::open(&path)?;
            Ok::<_, CatalogError>((mode(&other), other.list_media(None)?.len()))
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(rtx);
        let (other_mode, seen) = opener.join().unwrap().unwrap();
        assert!(
            ["wal", "delete"].contains(&other_mode.as_str()),
            "{other_mode}"
        );
        assert_eq!(seen as i64, n);
        drop(b);
        let b = cat.bulk_journal().unwrap();
        assert!(b.on);
        // Inside a transaction nothing changes either.
        let tx = cat.write_tx().unwrap();
        assert!(!cat.bulk_journal().unwrap().on);
        drop(tx);
        drop(b);
        assert_eq!(mode(&cat), "wal");
        // With the merge idle, a process that opens the catalog puts it back in WAL.
        let b = cat.bulk_journal().unwrap();
        assert!(b.on);
        let other = Catalog::open(dir.path()).unwrap();
        assert_eq!(mode(&other), "wal");
        cat.put_libvirt_checkpoint("vm", "c", None, "<a/>").unwrap();
        drop((b, other));
        assert_eq!(mode(&cat), "wal");
    }
}
