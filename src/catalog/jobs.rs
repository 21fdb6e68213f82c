//! The job history: one row per job (a backup, restore, verify, copy, catalog rebuild,
//! label, rotation run, catalog backup, erase), written when it starts and closed when
//! it ends, whatever way it ends.
//!
//! ```ignore
//! let id = cat.job_start(&JobStart::new(JobKind::Copy, "copy"))?;
//! // ... the work ...
//! cat.job_finish(id, &JobEnd { result: JobResult::Ok, exit_code: 0, ..Default::default() })?;
//! ```
//!
//! A job whose process dies before [`Catalog::job_finish`] (killed, crashed, the
//! machine restarted) reads as failed at once, as an interrupted backup session does:
//! its row names the writing process, and a reader that finds that process gone shows
//! it failed with the reason; the next [`Catalog::job_start`] records that in the row.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;
use uuid::Uuid;

use super::types::text_enum;
use super::*;

text_enum!(
    /// What kind of job ran. Add a variant (and its text) for a new kind of job; the
    /// catalog stores the text, so old rows keep reading.
    JobKind {
        Backup = "backup",
        Restore = "restore",
        Verify = "verify",
        Copy = "copy",
        Rebuild = "rebuild",
        Label = "label",
        Rotate = "rotate",
        CatalogBackup = "catalog-backup",
        Erase = "erase",
    }
);

text_enum!(
    /// How a job ended. `partial`: it ended with an error but did part of its work
    /// (some disks backed up, a rebuild that recovered all but the damage).
    JobResult { Running = "running", Ok = "ok", Failed = "failed", Partial = "partial" }
);

/// A job's identity in the history (a UUID: it stays unique in a catalog rebuilt into a
/// new home).
pub type JobId = Uuid;

/// What is known when a job starts.
#[derive(Debug, Clone, Default)]
pub struct JobStart {
    pub kind: Option<JobKind>,
    /// The command as typed, without options ("backup", "catalog rebuild").
    pub command: String,
    pub pool: Option<String>,
    pub vms: Vec<String>,
    pub disks: Vec<String>,
}

impl JobStart {
    pub fn new(kind: JobKind, command: impl Into<String>) -> JobStart {
        JobStart {
            kind: Some(kind),
            command: command.into(),
            ..Default::default()
        }
    }
}

/// What is known when a job ends. Lists add to what [`JobStart`] said.
#[derive(Debug, Clone, Default)]
pub struct JobEnd {
    pub result: Option<JobResult>,
    pub exit_code: i32,
    pub bytes: u64,
    pub cartridges: Vec<String>,
    pub error: Option<String>,
    pub pool: Option<String>,
    pub vms: Vec<String>,
    pub disks: Vec<String>,
}

/// One job of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    /// The job's id: `job` in the JSON contract (an object carries its id under its name).
    #[serde(rename = "job")]
    pub id: JobId,
    pub kind: JobKind,
    pub command: String,
    #[serde(serialize_with = "crate::timefmt::serde_show::time")]
    pub started: DateTime<Utc>,
    #[serde(serialize_with = "crate::timefmt::serde_show::opt")]
    pub finished: Option<DateTime<Utc>>,
    pub result: JobResult,
    pub exit_code: Option<i32>,
    pub bytes: u64,
    /// Seconds from start to end (to now for a running job).
    pub duration_s: f64,
    /// The cartridges it used (a list of barcodes: `barcodes` in the JSON contract).
    #[serde(rename = "barcodes")]
    pub cartridges: Vec<String>,
    pub error: Option<String>,
    pub pool: Option<String>,
    pub vms: Vec<String>,
    pub disks: Vec<String>,
    /// Still running in a live process (`result` is `running`).
    #[serde(skip)]
    pub writer: Option<String>,
}

/// Which jobs [`Catalog::jobs`] returns.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub kind: Option<JobKind>,
    /// Only jobs that failed or did part of their work.
    pub failed: bool,
    /// Only jobs started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only the newest N.
    pub last: Option<usize>,
}

const JOB_COLS: &str = "id, kind, command, started, finished, result, exit_code, bytes, \
                        cartridges, error, pool, vms, disks, writer";

fn list(r: &Row, idx: usize) -> rusqlite::Result<Vec<String>> {
    let s: String = r.get(idx)?;
    Ok(serde_json::from_str(&s).unwrap_or_default())
}

fn job_row(r: &Row) -> rusqlite::Result<JobRow> {
    let started: DateTime<Utc> = get_p(r, 3)?;
    let mut finished: Option<DateTime<Utc>> = get_po(r, 4)?;
    let mut result: JobResult = get_p(r, 5)?;
    let mut error: Option<String> = r.get(9)?;
    let writer: Option<String> = r.get(13)?;
    let mut exit_code: Option<i32> = r.get(6)?;
    if result == JobResult::Running {
        if let Some(note) = job_interrupted(writer.as_deref()) {
            result = JobResult::Failed;
            error = Some(error.map_or(note.clone(), |e| format!("{note}; {e}")));
            exit_code = exit_code.or(Some(crate::error::ExitCode::Failed as i32));
            finished = finished.or(Some(started));
        }
    }
    let end = finished.unwrap_or_else(crate::home::clock::now);
    let duration_s = ((end - started).num_microseconds().unwrap_or(0).max(0) as f64) / 1e6;
    Ok(JobRow {
        id: get_p(r, 0)?,
        kind: get_p(r, 1)?,
        command: r.get(2)?,
        started,
        finished,
        result,
        exit_code,
        bytes: get_u64(r, 7)?,
        duration_s,
        cartridges: list(r, 8)?,
        error,
        pool: r.get(10)?,
        vms: list(r, 11)?,
        disks: list(r, 12)?,
        writer: (result == JobResult::Running).then_some(writer).flatten(),
    })
}

/// For a running row: `Some(reason)` when its process is gone.
fn job_interrupted(writer: Option<&str>) -> Option<String> {
    if writer.is_some_and(writer_alive) {
        return None;
    }
    let pid = writer.and_then(|w| w.split(':').next()).unwrap_or("?");
    Some(format!(
        "interrupted: the process that ran it (pid {pid}) ended before the job finished"
    ))
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn merged(a: Vec<String>, b: &[String]) -> Vec<String> {
    let mut out = a;
    for x in b {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

impl Catalog {
    /// Record that a job starts now, in this process. Rows of earlier jobs whose
    /// process is gone are closed as failed (interrupted) first.
    pub fn job_start(&self, s: &JobStart) -> Result<JobId> {
        let kind = s.kind.ok_or_else(|| CatalogError::Invalid {
            what: format!("job {:?}", s.command),
            reason: "no kind".into(),
        })?;
        self.close_interrupted_jobs()?;
        let id = Uuid::new_v4();
        self.conn().execute(
            &format!("INSERT INTO jobs ({JOB_COLS}) VALUES (?1,?2,?3,?4,NULL,'running',NULL,0,?5,NULL,?6,?7,?8,?9)"),
            params![
                id.to_string(),
                kind.as_str(),
                s.command,
                ts(&catalog_time(crate::home::clock::now())),
                "[]",
                s.pool,
                json_list(&s.vms),
                json_list(&s.disks),
                this_writer()
            ],
        )?;
        Ok(id)
    }

    /// Record how job `id` ended. A job this catalog does not hold (its start was
    /// recorded in a catalog that has since been replaced) is recorded whole, started
    /// at `started_hint`.
    pub fn job_finish_or_insert(
        &self,
        id: JobId,
        start: &JobStart,
        started_hint: DateTime<Utc>,
        end: &JobEnd,
    ) -> Result<()> {
        if self.job(id)?.is_none() {
            let kind = start.kind.unwrap_or(JobKind::Backup);
            self.conn().execute(
                &format!("INSERT INTO jobs ({JOB_COLS}) VALUES (?1,?2,?3,?4,NULL,'running',NULL,0,'[]',NULL,?5,?6,?7,?8)"),
                params![
                    id.to_string(),
                    kind.as_str(),
                    start.command,
                    ts(&catalog_time(started_hint)),
                    start.pool,
                    json_list(&start.vms),
                    json_list(&start.disks),
                    this_writer()
                ],
            )?;
        }
        self.job_finish(id, end)
    }

    /// Record how job `id` ended: its result (by default ok for exit code 0, else
    /// failed), bytes, the cartridges it touched, its error.
    pub fn job_finish(&self, id: JobId, e: &JobEnd) -> Result<()> {
        let tx = self.write_tx()?;
        let row = self.job(id)?.ok_or_else(|| CatalogError::NotFound {
            what: "job",
            key: id.to_string(),
        })?;
        let result = e.result.unwrap_or(if e.exit_code == 0 {
            JobResult::Ok
        } else {
            JobResult::Failed
        });
        if result == JobResult::Running {
            return Err(CatalogError::Invalid {
                what: format!("job {id}"),
                reason: "cannot finish as running".into(),
            });
        }
        tx.execute(
            "UPDATE jobs SET finished=?2, result=?3, exit_code=?4, bytes=?5, cartridges=?6, \
             error=?7, pool=coalesce(?8, pool), vms=?9, disks=?10 WHERE id=?1",
            params![
                id.to_string(),
                ts(&catalog_time(crate::home::clock::now())),
                result.as_str(),
                e.exit_code,
                num(e.bytes, "job bytes")?,
                json_list(&merged(row.cartridges, &e.cartridges)),
                e.error,
                e.pool,
                json_list(&merged(row.vms, &e.vms)),
                json_list(&merged(row.disks, &e.disks)),
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Close rows still marked running whose process is gone as failed (interrupted).
    pub fn close_interrupted_jobs(&self) -> Result<usize> {
        let running: Vec<(String, Option<String>, String)> = self
            .conn()
            .prepare("SELECT id, writer, started FROM jobs WHERE result='running'")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut n = 0;
        for (id, writer, started) in running {
            if let Some(note) = job_interrupted(writer.as_deref()) {
                n += self.conn().execute(
                    "UPDATE jobs SET result='failed', finished=?2, exit_code=?3, \
                     error=coalesce(error, ?4) WHERE id=?1 AND result='running'",
                    params![id, started, crate::error::ExitCode::Failed as i32, note],
                )?;
            }
        }
        Ok(n)
    }

    pub fn job(&self, id: JobId) -> Result<Option<JobRow>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id=?1"),
                [id.to_string()],
                job_row,
            )
            .optional()?)
    }

    /// Jobs matching `f`, oldest first (the newest `f.last` of them when given).
    pub fn jobs(&self, f: &JobFilter) -> Result<Vec<JobRow>> {
        let mut st = self.conn().prepare(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE (?1 IS NULL OR kind=?1) AND (?2 IS NULL OR started>=?2) \
             ORDER BY started DESC, rowid DESC"
        ))?;
        let since = f.since.map(|t| ts(&catalog_time(t)));
        let rows = st.query_map(params![f.kind.map(|k| k.as_str()), since], job_row)?;
        let mut out = Vec::new();
        for r in rows {
            let r = r?;
            if f.failed && !matches!(r.result, JobResult::Failed | JobResult::Partial) {
                continue;
            }
            out.push(r);
            if f.last.is_some_and(|n| out.len() >= n) {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Jobs running now in a live process.
    pub fn running_jobs(&self) -> Result<Vec<JobRow>> {
        let mut st = self.conn().prepare(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE result='running' ORDER BY started, rowid"
        ))?;
        let rows = st
            .query_map([], job_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows
            .into_iter()
            .filter(|r| r.result == JobResult::Running)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_start_finish_filter_and_read_dead_writers_as_failed() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let mut s = JobStart::new(JobKind::Backup, "backup");
        s.pool = Some("daily".into());
        let a = cat.job_start(&s).unwrap();
        assert_eq!(
            cat.running_jobs().unwrap().len(),
            1,
            "this process is alive"
        );
        cat.job_finish(
            a,
            &JobEnd {
                exit_code: 0,
                bytes: 42,
                cartridges: vec!["TV0001L9".into()],
                vms: vec!["web".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let b = cat
            .job_start(&JobStart::new(JobKind::Restore, "restore"))
            .unwrap();
        cat.job_finish(
            b,
            &JobEnd {
                exit_code: 4,
                error: Some("cartridge TV0002L9 is needed".into()),
                ..Default::default()
            },
        )
        .unwrap();
        // A row left running by a process that is gone.
        cat.conn()
            .execute(
                "INSERT INTO jobs (id, kind, command, started, result, writer) \
                 VALUES (?1, 'verify', 'verify', ?2, 'running', '999999999:1')",
                params![Uuid::new_v4().to_string(), ts(&crate::home::clock::now())],
            )
            .unwrap();
        let all = cat.jobs(&JobFilter::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].result, JobResult::Ok);
        assert_eq!(all[0].bytes, 42);
        assert_eq!(all[0].pool.as_deref(), Some("daily"));
        assert_eq!(all[0].cartridges, vec!["TV0001L9".to_string()]);
        assert_eq!(all[1].result, JobResult::Failed);
        assert_eq!(all[1].exit_code, Some(4));
        assert_eq!(all[2].result, JobResult::Failed, "dead writer");
        assert!(all[2].error.as_deref().unwrap().starts_with("interrupted"));
        assert!(cat.running_jobs().unwrap().is_empty());
        let failed = cat
            .jobs(&JobFilter {
                failed: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(failed.len(), 2);
        let last = cat
            .jobs(&JobFilter {
                last: Some(1),
                kind: Some(JobKind::Restore),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(last[0].id, b);
        // The next start closes the dead row in the catalog itself.
        cat.job_start(&JobStart::new(JobKind::Label, "label"))
            .unwrap();
        let n: i64 = cat
            .conn()
            .query_row(
                "SELECT count(*) FROM jobs WHERE result='running'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "only the label job, alive");
        // Finishing a job the catalog does not hold records it whole.
        let c = Uuid::new_v4();
        cat.job_finish_or_insert(
            c,
            &JobStart::new(JobKind::Rebuild, "catalog rebuild"),
            crate::home::clock::now(),
            &JobEnd::default(),
        )
        .unwrap();
        assert_eq!(cat.job(c).unwrap().unwrap().result, JobResult::Ok);
    }
}
