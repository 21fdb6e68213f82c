//! What a killed tapevault left inside QEMU: exports, fleecing jobs, scratch nodes and
//! the NBD server, all found by the [`PREFIX`] of their names and removed before a new
//! backup starts. Also the way every backup tears its own objects down.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::QmpClient;
use super::epoch::PREFIX;
use super::error::QmpError;

/// Time allowed for an export to close or a job to cancel.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

fn ours(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| s.starts_with(PREFIX))
        .map(str::to_string)
}

/// Removes every tapevault export, job and node QEMU holds, and the NBD server when
/// any of them existed (an NBD server of someone else is left alone). Returns what was
/// removed, in words. Objects already gone are not an error.
pub fn remove_all(c: &mut QmpClient) -> Result<Vec<String>, QmpError> {
    let mut removed = Vec::new();
    let exports = c.execute("query-block-exports", None)?;
    for id in exports
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| ours(e, "id"))
    {
        del_export(c, &id)?;
        removed.push(format!("export {id}"));
    }
    let jobs = c.execute("query-block-jobs", None)?;
    for id in jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| ours(j, "device"))
    {
        cancel_job(c, &id)?;
        removed.push(format!("job {id}"));
    }
    let nodes = c.execute("query-named-block-nodes", Some(json!({"flat": true})))?;
    let nodes: Vec<String> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| ours(n, "node-name"))
        .collect();
    if (!removed.is_empty() || !nodes.is_empty()) && stop_server(c)? {
        removed.push("NBD server".to_string());
    }
    for n in nodes {
        del_node(c, &n)?;
        removed.push(format!("node {n}"));
    }
    Ok(removed)
}

pub(crate) fn del_export(c: &mut QmpClient, id: &str) -> Result<(), QmpError> {
    match c.execute("block-export-del", Some(json!({"id": id, "mode": "hard"}))) {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    }
    c.wait_event(
        &format!("BLOCK_EXPORT_DELETED of {id}"),
        EVENT_TIMEOUT,
        |ev| {
            ev.name == "BLOCK_EXPORT_DELETED"
                && ev.data.get("id").and_then(Value::as_str) == Some(id)
        },
    )?;
    Ok(())
}

pub(crate) fn cancel_job(c: &mut QmpClient, id: &str) -> Result<(), QmpError> {
    match c.execute(
        "block-job-cancel",
        Some(json!({"device": id, "force": true})),
    ) {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    }
    // sync=none jobs never finish by themselves: a cancel ends them; the job is gone
    // (auto-dismissed) once its status is "null".
    c.wait_event(&format!("the end of job {id}"), EVENT_TIMEOUT, |ev| {
        ev.name == "JOB_STATUS_CHANGE"
            && ev.data.get("id").and_then(Value::as_str) == Some(id)
            && ev.data.get("status").and_then(Value::as_str) == Some("null")
    })?;
    Ok(())
}

/// Stops QEMU's NBD server; false when none was running.
pub(crate) fn stop_server(c: &mut QmpClient) -> Result<bool, QmpError> {
    match c.execute("nbd-server-stop", None) {
        Ok(_) => Ok(true),
        Err(e) if e.command_desc().is_some_and(|d| d.contains("not running")) => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn del_node(c: &mut QmpClient, node: &str) -> Result<(), QmpError> {
    match c.execute("blockdev-del", Some(json!({"node-name": node}))) {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn remove_bitmap(c: &mut QmpClient, node: &str, name: &str) -> Result<(), QmpError> {
    match c.execute(
        "block-dirty-bitmap-remove",
        Some(json!({"node": node, "name": name})),
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes scratch files and the NBD socket a killed run left in `dir`.
pub fn remove_files(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(PREFIX)
            && (name.ends_with(".qcow2") || name.ends_with(".sock"))
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed.push(format!("file {}", e.path().display()));
        }
    }
    removed
}
