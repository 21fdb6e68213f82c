//! `tapevault jobs` (what ran) and `tapevault status` (what needs me now).

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use uuid::Uuid;

use super::shared::open_catalog;
use super::{human_bytes, usage, Ctx};
use crate::catalog::{ImageStatus, JobFilter, JobKind, JobResult, JobRow};
use crate::error::Result;
use crate::media::allocate::sync_inventory;
use crate::media::rotate::{self, CartridgeAction};
use crate::timefmt::show;

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only the newest N jobs.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Only jobs of this kind: backup, restore, verify, copy, rebuild, label, rotate,
    /// catalog-backup, erase.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only jobs that failed or did part of their work.
    #[arg(long)]
    pub failed: bool,
    /// Only jobs started at or after TIME (a time as tapevault prints it, a date
    /// YYYY-MM-DD meaning its start, UTC, or an age such as 90m, 24h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
}

/// `--since`: an age (`90m`, `24h`, `7d`), a date (its start, UTC), or a time.
fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let s = text.trim();
    if let Some((n, unit)) = s
        .char_indices()
        .last()
        .map(|(i, c)| (&s[..i], c))
        .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        let n: i64 = n.parse().unwrap_or(i64::MAX / 1_000_000);
        let secs = match unit {
            's' => Some(n),
            'm' => n.checked_mul(60),
            'h' => n.checked_mul(3600),
            'd' => n.checked_mul(86400),
            'w' => n.checked_mul(7 * 86400),
            _ => None,
        };
        if let Some(d) = secs.and_then(chrono::Duration::try_seconds) {
            return Ok(now - d);
        }
    }
    if s.len() == 10 {
        if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            let t = d.and_hms_opt(0, 0, 0).expect("midnight exists");
            return Ok(DateTime::from_naive_utc_and_offset(t, Utc));
        }
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    match crate::timefmt::parse_at(s) {
        Ok(t) => Ok(t),
        Err(e) => usage(format!(
            "--since {text:?}: {e}; or give an age such as 90m, 24h or 7d"
        )),
    }
}

fn duration_text(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

fn job_line(j: &JobRow) -> String {
    let mut s = format!(
        "{}  {}  {:<14} {:<8} exit {}  {}  {}",
        &j.id.to_string()[..8],
        show(&j.started),
        j.command,
        j.result.as_str(),
        j.exit_code.map_or("-".to_string(), |c| c.to_string()),
        human_bytes(j.bytes),
        duration_text(j.duration_s),
    );
    if let Some(p) = &j.pool {
        s.push_str(&format!("  pool {p}"));
    }
    if !j.vms.is_empty() {
        s.push_str(&format!("  vm {}", j.vms.join(",")));
    }
    if !j.cartridges.is_empty() {
        s.push_str(&format!("  cartridges {}", j.cartridges.join(",")));
    }
    if let Some(e) = &j.error {
        s.push_str(&format!("\n    error: {e}"));
    }
    s
}

#[derive(Serialize)]
struct JobsReport {
    jobs: Vec<JobRow>,
}

pub fn jobs(ctx: &Ctx, a: JobsArgs) -> Result<()> {
    let kind = match &a.kind {
        None => None,
        Some(k) => Some(k.parse::<JobKind>().or_else(|_| {
            usage(format!(
                "--kind {k:?} is not a kind of job (one of: {})",
                JobKind::ALL
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
    };
    if a.last == Some(0) {
        return usage("--last 0 shows nothing: give --last N with N at least 1");
    }
    let now = crate::home::clock::now();
    let since = a
        .since
        .as_deref()
        .map(|s| parse_since(s, now))
        .transpose()?;
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let rows = cat.jobs(&JobFilter {
        kind,
        failed: a.failed,
        since,
        last: a.last,
    })?;
    let rep = JobsReport { jobs: rows };
    ctx.out.emit(&rep, || {
        if rep.jobs.is_empty() {
            return "no jobs recorded (that match)".into();
        }
        rep.jobs.iter().map(job_line).collect::<Vec<_>>().join("\n")
    });
    Ok(())
}

// ---------------------------------------------------------------- status

#[derive(Serialize)]
struct DriveStatus {
    drive: usize,
    /// The cartridge in it.
    barcode: Option<String>,
    /// Held by a process (a running job); null where it cannot be told without opening
    /// the drive (a real library).
    busy: Option<bool>,
    /// Who holds it, when busy.
    holder: Option<String>,
}

#[derive(Serialize)]
struct DiskStatus {
    disk: Uuid,
    vm: Option<String>,
    /// The newest image that can be restored.
    last_good_image: Option<Uuid>,
    #[serde(serialize_with = "crate::timefmt::serde_show::opt")]
    last_good: Option<DateTime<Utc>>,
    /// Seconds since `last_good`.
    age_s: Option<i64>,
}

#[derive(Serialize)]
struct Unrestorable {
    image: Uuid,
    disk: Uuid,
    vm: Option<String>,
    #[serde(serialize_with = "crate::timefmt::serde_show::time")]
    started: DateTime<Utc>,
    status: ImageStatus,
    reason: String,
}

#[derive(Serialize)]
struct StatusReport {
    #[serde(serialize_with = "crate::timefmt::serde_show::time")]
    now: DateTime<Utc>,
    drives: Vec<DriveStatus>,
    running_jobs: Vec<JobRow>,
    disks: Vec<DiskStatus>,
    /// Pools whose next session finds no writable or scratch cartridge in the library.
    pools_short_of_media: Vec<String>,
    /// Cartridges to take out of the library and send offsite today.
    due_offsite: Vec<CartridgeAction>,
    /// Cartridges to bring back into the library today.
    due_back: Vec<CartridgeAction>,
    /// Images that cannot be restored (corrupt, incomplete, or on a broken chain).
    unrestorable: Vec<Unrestorable>,
    /// Jobs that failed (or did part of their work) since the last success of their kind.
    failed_jobs: Vec<JobRow>,
    /// One line per thing that needs a person; empty when all is well.
    needs_attention: Vec<String>,
}

pub fn status(ctx: &Ctx) -> Result<()> {
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let now = crate::home::clock::now();
    let mut lib = home.open_library()?;
    let inv = lib.changer().inventory()?;
    let (_, present) = sync_inventory(&cat, lib.as_mut())?;
    let running_jobs = cat.running_jobs()?;
    // Whether a drive is held is read without opening it: opening would hold it for a
    // moment, and a job starting then would find it busy.
    let vtl_dir = home.virtual_library_dir().map(std::path::Path::to_path_buf);
    let mut drives = Vec::new();
    for (i, d) in inv.drives.iter().enumerate() {
        let (busy, holder) = match &vtl_dir {
            Some(dir) => match flock_holder(&dir.join("drives").join(format!("{i}.lock"))) {
                Some(pid) => {
                    let job = running_jobs.iter().find(|j| {
                        j.writer
                            .as_deref()
                            .and_then(|w| w.split(':').next())
                            .and_then(|p| p.parse::<u32>().ok())
                            == Some(pid)
                    });
                    let who = match job {
                        Some(j) => {
                            format!("{} job {} (pid {pid})", j.command, &j.id.to_string()[..8])
                        }
                        None => format!("process {pid}"),
                    };
                    (Some(true), Some(who))
                }
                None => (Some(false), None),
            },
            // A real library's drive is not probed (see above): unknown.
            None => (None, None),
        };
        drives.push(DriveStatus {
            drive: i,
            barcode: d.barcode.clone(),
            busy,
            holder,
        });
    }
    let mut disks = Vec::new();
    let mut unrestorable = Vec::new();
    for (disk, vm, _) in cat.known_disks()? {
        let images = cat.images(Some(disk))?;
        let mut good = None;
        for img in images.iter().rev() {
            let reason = match img.status {
                ImageStatus::Running | ImageStatus::Failed => continue,
                ImageStatus::Complete => cat.unrestorable_reason(img)?,
                s => Some(img.note.clone().unwrap_or_else(|| format!("it is {s}"))),
            };
            match reason {
                None => {
                    if good.is_none() {
                        good = Some(img.clone());
                    }
                }
                // Only what is newer than the last good image matters now.
                Some(reason) if good.is_none() => unrestorable.push(Unrestorable {
                    image: img.uuid,
                    disk,
                    vm: img.vm_name.clone().or_else(|| vm.clone()),
                    started: img.started,
                    status: img.status,
                    reason,
                }),
                Some(_) => {}
            }
        }
        disks.push(DiskStatus {
            disk,
            vm,
            last_good_image: good.as_ref().map(|g| g.uuid),
            last_good: good.as_ref().map(|g| g.started),
            age_s: good.as_ref().map(|g| (now - g.started).num_seconds()),
        });
    }
    let pools_cfg = crate::home::pools_toml::load(&home.dir)?;
    let plan = rotate::plan(&cat, &present, &pools_cfg, &home.locks_dir(), now)?;
    // Failed jobs since the last success of their kind.
    let all = cat.jobs(&JobFilter::default())?;
    let mut failed_jobs = Vec::new();
    for j in all.iter().rev() {
        if !matches!(j.result, JobResult::Failed | JobResult::Partial) {
            continue;
        }
        let later_ok = all
            .iter()
            .any(|o| o.kind == j.kind && o.result == JobResult::Ok && o.started > j.started);
        if !later_ok {
            failed_jobs.push(j.clone());
        }
    }
    failed_jobs.reverse();
    let mut needs = Vec::new();
    for d in &disks {
        if d.last_good.is_none() {
            needs.push(format!(
                "disk {}{} has no restorable image",
                d.disk,
                d.vm.as_deref()
                    .map(|v| format!(" (vm {v})"))
                    .unwrap_or_default()
            ));
        }
    }
    for n in &plan.needs {
        needs.push(format!("pool short of media: {n}"));
    }
    for a in &plan.remove {
        needs.push(format!(
            "send cartridge {} offsite{}",
            a.barcode,
            a.to.as_deref()
                .map(|t| format!(" to {t}"))
                .unwrap_or_default()
        ));
    }
    for a in &plan.insert {
        needs.push(format!(
            "bring cartridge {} back from {}",
            a.barcode, a.location
        ));
    }
    for u in &unrestorable {
        needs.push(format!(
            "image {} of disk {} cannot be restored: {}",
            u.image, u.disk, u.reason
        ));
    }
    for j in &failed_jobs {
        needs.push(format!(
            "{} job {} {} at {}{}",
            j.command,
            &j.id.to_string()[..8],
            j.result,
            show(&j.started),
            j.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    let rep = StatusReport {
        now,
        drives,
        running_jobs,
        disks,
        pools_short_of_media: plan.needs.clone(),
        due_offsite: plan.remove.clone(),
        due_back: plan.insert.clone(),
        unrestorable,
        failed_jobs,
        needs_attention: needs,
    };
    ctx.out.emit(&rep, || status_text(&rep));
    Ok(())
}

/// The process holding an flock on `path`, from /proc/locks (matched by inode, and
/// checked against the process's open files when they can be read). Reads only: takes
/// no lock.
fn flock_holder(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let canon = std::fs::canonicalize(path).ok();
    for line in locks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END"; waiters have "->".
        if f.len() < 6 || f[1] != "FLOCK" || f[3] != "WRITE" {
            continue;
        }
        if f[5].rsplit(':').next().and_then(|i| i.parse::<u64>().ok()) != Some(ino) {
            continue;
        }
        let Ok(pid) = f[4].parse::<u32>() else {
            continue;
        };
        match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => {
                let holds = fds
                    .flatten()
                    .any(|e| std::fs::read_link(e.path()).ok().as_deref() == canon.as_deref());
                if holds {
                    return Some(pid);
                }
            }
            Err(_) => return Some(pid),
        }
    }
    None
}

fn age_text(s: i64) -> String {
    let s = s.max(0);
    if s < 3600 {
        format!("{} min ago", s / 60)
    } else if s < 2 * 86400 {
        format!("{} h ago", s / 3600)
    } else {
        format!("{} days ago", s / 86400)
    }
}

fn status_text(r: &StatusReport) -> String {
    let mut s = String::new();
    for d in &r.drives {
        s.push_str(&format!(
            "drive {}: {}{}\n",
            d.drive,
            d.barcode
                .as_deref()
                .map(|b| format!("cartridge {b}"))
                .unwrap_or_else(|| "empty".into()),
            match (d.busy, &d.holder) {
                (Some(true), Some(h)) => format!(", busy: {h}"),
                (Some(true), None) => ", busy".into(),
                (Some(false), _) => ", idle".into(),
                (None, _) => String::new(),
            }
        ));
    }
    if r.running_jobs.is_empty() {
        s.push_str("running jobs: none\n");
    }
    for j in &r.running_jobs {
        s.push_str(&format!(
            "running: {} job {} since {}\n",
            j.command,
            &j.id.to_string()[..8],
            show(&j.started)
        ));
    }
    for d in &r.disks {
        s.push_str(&format!(
            "disk {}{}: {}\n",
            d.disk,
            d.vm.as_deref()
                .map(|v| format!(" (vm {v})"))
                .unwrap_or_default(),
            match (&d.last_good, d.age_s) {
                (Some(t), Some(a)) => format!("last good backup {} ({})", show(t), age_text(a)),
                _ => "NO restorable image".into(),
            }
        ));
    }
    if r.needs_attention.is_empty() {
        s.push_str("nothing needs attention\n");
    } else {
        s.push_str(&format!("needs attention ({}):\n", r.needs_attention.len()));
        for n in &r.needs_attention {
            s.push_str(&format!("  - {n}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_ages_dates_and_times() {
        let now: DateTime<Utc> = "2026-12-04T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_since("24h", now).unwrap(),
            "2026-12-03T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse_since("2026-12-01", now).unwrap(),
            "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse_since("2026-12-01T05:06:07.000001Z", now).unwrap(),
            "2026-12-01T05:06:07.000001Z"
                .parse::<DateTime<Utc>>()
                .unwrap()
        );
        assert!(parse_since("yesterday", now).is_err());
    }
}
