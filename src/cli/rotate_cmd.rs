//! `tapevault rotate [--dry-run | --apply]`.

use clap::Args;
use serde::Serialize;

use super::shared::open_catalog;
use super::Ctx;
use crate::error::Result;
use crate::media::allocate::sync_inventory;
use crate::media::rotate::{self, ApplyReport, CartridgeAction, RotationPlan};

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Only say what today's rotation would do (the default).
    #[arg(long, conflicts_with = "apply")]
    pub dry_run: bool,
    /// Expire, recycle and move the cartridges to remove into the mail slots.
    #[arg(long)]
    pub apply: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    applied: bool,
    plan: &'a RotationPlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a ApplyReport>,
}

fn actions(s: &mut String, title: &str, list: &[CartridgeAction]) {
    if list.is_empty() {
        return;
    }
    s.push_str(&format!("{title}:\n"));
    for a in list {
        s.push_str(&format!(
            "  {:<10} at {:<18}{} ({})\n",
            a.barcode,
            a.location,
            a.to.as_deref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default(),
            a.reason
        ));
    }
}

pub fn rotate(ctx: &Ctx, a: RotateArgs) -> Result<()> {
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let now = crate::home::clock::now();
    let mut lib = home.open_library()?;
    let (_, present) = sync_inventory(&cat, lib.as_mut())?;
    let pools_cfg = crate::home::pools_toml::load(&home.dir)?;
    let locks_dir = home.locks_dir();
    let plan = rotate::plan(&cat, &present, &pools_cfg, &locks_dir, now)?;
    let result = if a.apply {
        Some(rotate::apply(&cat, lib.as_mut(), &locks_dir, &plan, now)?)
    } else {
        None
    };
    let rep = Report {
        applied: a.apply,
        plan: &plan,
        result: result.as_ref(),
    };
    ctx.out.emit(&rep, || {
        let mut s = format!(
            "rotation for {}{}\n",
            now.format("%Y-%m-%d %H:%M UTC"),
            if a.apply { "" } else { " (dry run: nothing changed; use --apply)" }
        );
        for e in &plan.expire {
            s.push_str(&format!(
                "expire media set {} of pool {} (last write {}, retention over since {}): {}\n",
                e.set,
                e.pool,
                e.last_write.format("%Y-%m-%d"),
                e.expired_since.format("%Y-%m-%d"),
                e.cartridges.join(" ")
            ));
        }
        for h in &plan.held {
            s.push_str(&format!(
                "keep media set {} of pool {} past its retention: {}\n",
                h.set,
                h.pool,
                h.holds
                    .iter()
                    .map(|x| x.describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        actions(&mut s, "back to full (needed again)", &plan.unexpire);
        actions(&mut s, "recycle into the pool's scratch", &plan.recycle);
        actions(&mut s, "REMOVE today", &plan.remove);
        actions(&mut s, "INSERT today", &plan.insert);
        for n in &plan.needs {
            s.push_str(&format!("needed: {n}\n"));
        }
        for l in &plan.locks {
            match l.state {
                "stale" => s.push_str(&format!(
                    "stale lock {}: left by a process that is gone ({}); the next job takes it over\n",
                    l.lock, l.note
                )),
                _ => s.push_str(&format!("lock {} is held: {}\n", l.lock, l.note)),
            }
        }
        if let Some(r) = &result {
            s.push_str(&format!(
                "applied: {} expired, {} recycled ({} image(s) forgotten), {} back to full, {} moved to mail slots\n",
                r.expired.len(),
                r.recycled.len(),
                r.forgotten_images,
                r.unexpired.len(),
                r.exported.len()
            ));
            for m in &r.exported {
                s.push_str(&format!("  {} {} -> {}\n", m.barcode, m.from, m.to));
            }
            for x in r.skipped_pools.iter().chain(&r.stale_locks).chain(&r.warnings) {
                s.push_str(&format!("note: {x}\n"));
            }
        }
        s
    });
    Ok(())
}
