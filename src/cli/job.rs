//! The one place where every job is recorded in the catalog's history and handed to the
//! hook: [`begin`] before the command runs (from `main`, for the commands listed in
//! [`kind_of`]), [`finish`] on every way out: success, an error returned to `main`, and
//! the paths that print a report and exit with its error (`fail_with`, `finish_with`).
//!
//! What a job did (bytes, cartridges, pool, VMs, disks) is read from the result
//! document it printed (the one `--json` shows), so a new command needs nothing more
//! than an entry in [`kind_of`]; a command may say more precisely with [`add_bytes`]
//! and [`touch_cartridge`].

use std::path::PathBuf;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::catalog::{Catalog, JobEnd, JobId, JobKind, JobResult, JobStart};

/// The command paths that are jobs, and their kind. A command missing here is not
/// recorded (listings, settings, the library's housekeeping).
pub fn kind_of(command: &str) -> Option<JobKind> {
    Some(match command {
        "backup" => JobKind::Backup,
        "restore" => JobKind::Restore,
        "verify" => JobKind::Verify,
        "copy" => JobKind::Copy,
        "catalog rebuild" => JobKind::Rebuild,
        "catalog backup" => JobKind::CatalogBackup,
        "label" => JobKind::Label,
        "rotate" => JobKind::Rotate,
        "library erase" => JobKind::Erase,
        c if c.starts_with("copy ") => JobKind::Copy,
        _ => return None,
    })
}

struct Running {
    id: JobId,
    start: JobStart,
    started: DateTime<Utc>,
    home: PathBuf,
    bytes: Option<u64>,
    cartridges: Vec<String>,
    vms: Vec<String>,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);
static RESULT: Mutex<Option<Value>> = Mutex::new(None);

fn running() -> std::sync::MutexGuard<'static, Option<Running>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Record that `start` begins, in the catalog of the home at `home`. A home that cannot
/// be opened records nothing (the command itself reports why it cannot run).
pub fn begin(home: &std::path::Path, start: JobStart) {
    let Ok(h) = crate::home::Home::open(home) else {
        return;
    };
    let Ok(cat) = Catalog::open(&h.dir) else {
        return;
    };
    match cat.job_start(&start) {
        Ok(id) => {
            *running() = Some(Running {
                id,
                start,
                started: crate::catalog::catalog_time(crate::home::clock::now()),
                home: h.dir,
                bytes: None,
                cartridges: Vec::new(),
                vms: Vec::new(),
            })
        }
        Err(e) => eprintln!("tapevault: warning: the job history could not record this job: {e}"),
    }
}

/// Whether this run is a recorded job.
pub fn active() -> bool {
    running().is_some()
}

/// Keep the result document the command printed (the last one counts).
pub fn record(v: Value) {
    *RESULT.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
}

/// The job moved `n` more bytes (for a command that counts its own work).
#[allow(dead_code)]
/// (counted instead of what its report says).
pub fn add_bytes(n: u64) {
    if let Some(r) = running().as_mut() {
        r.bytes = Some(r.bytes.unwrap_or(0) + n);
    }
}

/// The job used this cartridge (for a command that counts its own work).
#[allow(dead_code)]
pub fn touch_cartridge(barcode: &str) {
    if let Some(r) = running().as_mut() {
        if !r.cartridges.iter().any(|b| b == barcode) {
            r.cartridges.push(barcode.to_string());
        }
    }
}

/// The job works on this VM (one its report does not name).
pub fn add_vm(name: &str) {
    if let Some(r) = running().as_mut() {
        if !r.vms.iter().any(|v| v == name) {
            r.vms.push(name.to_string());
        }
    }
}

/// The command ends with `exit_code`; `error` is its error document (`{"error", "kind",
/// "exit_code", ...}`) when it failed. Records the job's end in the history, then runs
/// the hook with the result. Called once (later calls do nothing).
pub fn finish(exit_code: i32, error: Option<Value>) {
    let result = RESULT.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(r) = running().take() {
        let end = job_end(exit_code, result.as_ref(), error.as_ref(), &r);
        let recorded = Catalog::open(&r.home)
            .and_then(|cat| cat.job_finish_or_insert(r.id, &r.start, r.started, &end));
        if let Err(e) = recorded {
            eprintln!(
                "tapevault: warning: the job history could not record the end of job {}: {e}",
                r.id
            );
        }
    }
    // The hook reads the result, with the error's fields when it failed.
    let doc = match (result, error) {
        (Some(Value::Object(mut m)), Some(Value::Object(e))) => {
            m.extend(e);
            Some(Value::Object(m))
        }
        (r, e) => e.or(r),
    };
    super::hook::finish(exit_code, doc);
}

fn job_end(exit_code: i32, result: Option<&Value>, error: Option<&Value>, r: &Running) -> JobEnd {
    let mut end = JobEnd {
        exit_code,
        ..Default::default()
    };
    // A report printed with an error (fail_with, finish_with) is in the error document.
    let doc = result.or(error);
    // What a rotation touched is what it applied, not what its plan mentions.
    let touched = match (r.start.kind, doc) {
        (Some(JobKind::Rotate), Some(d)) => d.get("result"),
        (_, d) => d,
    };
    if let Some(doc) = touched {
        end.bytes = bytes_of(doc);
        let mut carts = Vec::new();
        walk_strings(
            doc,
            &["barcode", "barcodes", "cartridges", "cartridge"],
            &mut carts,
        );
        end.cartridges = carts;
        let mut vms = Vec::new();
        walk_strings(doc, &["vm", "vm_name"], &mut vms);
        end.vms = vms;
        let mut disks = Vec::new();
        walk_strings(doc, &["disk", "disk_uuid"], &mut disks);
        end.disks = disks;
    }
    if let Some(doc) = doc {
        end.pool = doc.get("pool").and_then(Value::as_str).map(str::to_string);
    }
    if let Some(b) = r.bytes {
        end.bytes = b;
    }
    for v in &r.vms {
        if !end.vms.contains(v) {
            end.vms.push(v.clone());
        }
    }
    for c in &r.cartridges {
        if !end.cartridges.contains(c) {
            end.cartridges.push(c.clone());
        }
    }
    end.error = error
        .and_then(|e| e.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string);
    end.result = Some(if exit_code == 0 {
        JobResult::Ok
    } else if (result.is_some()
        || error.is_some_and(|e| e.as_object().is_some_and(|m| m.len() > 3)))
        && (end.bytes > 0 || merged_something(doc))
    {
        // It printed a report of work it did before the error (bytes moved, or facts
        // merged by a rebuild): cartridges merely named (a pull list) are not work.
        JobResult::Partial
    } else {
        JobResult::Failed
    });
    end
}

/// Whether a rebuild's report says it merged anything into the catalog.
fn merged_something(doc: Option<&Value>) -> bool {
    doc.and_then(|d| d.get("merged"))
        .and_then(Value::as_object)
        .is_some_and(|m| {
            m.iter()
                .any(|(k, v)| k.ends_with("_added") && v.as_u64().is_some_and(|n| n > 0))
        })
}

/// The bytes a report says the job moved: the first of these keys found (summed over
/// every place it occurs: per image, per cartridge).
fn bytes_of(doc: &Value) -> u64 {
    for key in [
        "bytes_written",
        "stored_bytes",
        "bytes_restored",
        "bytes_read",
        "bytes",
        "plain_bytes",
        "data_bytes",
    ] {
        let mut total = None;
        sum_key(doc, key, &mut total);
        if let Some(t) = total {
            return t;
        }
    }
    0
}

fn sum_key(v: &Value, key: &str, total: &mut Option<u64>) {
    match v {
        Value::Object(m) => {
            if let Some(n) = m.get(key).and_then(Value::as_u64) {
                *total = Some(total.unwrap_or(0) + n);
                return;
            }
            for x in m.values() {
                sum_key(x, key, total);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| sum_key(x, key, total)),
        _ => {}
    }
}

/// Every string under one of `keys` (a string, an array of strings, or objects with a
/// `barcode`), in order of appearance, without repeats.
fn walk_strings(v: &Value, keys: &[&str], out: &mut Vec<String>) {
    let mut push = |s: &str| {
        if !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if keys.contains(&k.as_str()) {
                    match x {
                        Value::String(s) => push(s),
                        Value::Array(a) => {
                            for e in a {
                                if let Some(s) = e.as_str() {
                                    push(s);
                                } else if let Some(s) = e.get("barcode").and_then(Value::as_str) {
                                    push(s);
                                }
                            }
                        }
                        Value::Object(o) => {
                            if let Some(s) = o.get("barcode").and_then(Value::as_str) {
                                push(s);
                            }
                        }
                        _ => {}
                    }
                }
            }
            for x in m.values() {
                walk_strings(x, keys, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk_strings(x, keys, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_fields_are_found() {
        let doc = serde_json::json!({
            "pool": "daily",
            "images": [
                {"disk": "d1", "stored_bytes": 10, "cartridges": ["A1", "A2"]},
                {"disk": "d2", "stored_bytes": 5, "cartridges": ["A2"]}
            ],
            "snapshot": {"barcode": "A2"}
        });
        assert_eq!(bytes_of(&doc), 15);
        let mut c = Vec::new();
        walk_strings(&doc, &["barcode", "cartridges"], &mut c);
        assert_eq!(c, vec!["A1".to_string(), "A2".to_string()]);
    }
}
