//! `tapevault media ...`: cartridges, their life cycle and their whereabouts.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Serialize;

use super::shared::open_catalog;
use super::{human_bytes, usage, Ctx};
use crate::catalog::{At, ImageRow, MediaRow, MediaState};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::media::allocate::sync_inventory;
use crate::media::lifecycle::{self, Impact, SetStatus};
use crate::media::vault::{self, Lib};

#[derive(Debug, Subcommand)]
pub enum MediaCommand {
    /// Every cartridge the catalog knows, with pool, set, state and location.
    List {
        #[arg(long)]
        pool: Option<String>,
    },
    /// One cartridge: state, media set, retention, what overwriting it would lose.
    Show {
        /// Its barcode, or its volume UUID or a unique prefix of it.
        #[arg(value_name = "BARCODE|VOLUME")]
        barcode: String,
    },
    /// Send a whole media set to the mail slots for removal (refused if its catalog
    /// snapshot is not on it, or if part of the set would stay, unless --force).
    Export {
        /// Cartridges to export (their whole sets are expected).
        #[arg(required_unless_present = "set")]
        barcodes: Vec<String>,
        /// The media set to export: its UUID or a unique prefix.
        #[arg(long, value_name = "MEDIA_SET")]
        set: Option<String>,
        /// Export even an incomplete set or part of a set.
        #[arg(long)]
        force: bool,
    },
    /// Record that cartridges taken out of the mail slots went to a vault (the virtual
    /// library also takes them out of the mail slots).
    Vault {
        #[arg(required = true)]
        barcodes: Vec<String>,
        /// The vault's name.
        #[arg(long, value_name = "NAME")]
        location: String,
    },
    /// Bring cartridges back from a vault into the library (from a mail slot).
    Return {
        #[arg(required = true)]
        barcodes: Vec<String>,
    },
    /// What is outside the library, where, and until when it is kept.
    Offsite {
        /// Judge retention at this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
    },
    /// Offsite cartridges due back: their media sets expired (or they are scratch).
    Due {
        /// Judge retention at this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
    },
    /// The cartridges a restore needs, in reading order, with their locations.
    PullList {
        /// The disk: its UUID, a unique prefix, VM/LABEL or a VM name with one disk.
        #[arg(long, value_name = "DISK")]
        disk: String,
        /// The newest restorable image at or before this time (as `restore --at`:
        /// `now`, a date, or a time with a zone, counted to the precision given).
        #[arg(long, conflicts_with = "image", value_parser = crate::timefmt::parse_at)]
        at: Option<DateTime<Utc>>,
        /// Exactly this image: its UUID or a unique prefix.
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
    },
    /// Take a cartridge out of use for good (its restore points stay readable).
    Retire { barcode: String },
    /// Mark a cartridge damaged: never written again (its restore points stay listed).
    Damaged { barcode: String },
}

fn media_line(m: &MediaRow) -> String {
    format!(
        "{:<10} {:<9} pool {:<10} set {} #{} {} written, at {}\n",
        m.barcode,
        m.state.to_string(),
        m.pool.as_deref().unwrap_or("-"),
        m.media_set_uuid
            .map(|u| u.to_string()[..8].to_string())
            .unwrap_or_else(|| "-".into()),
        m.seq_in_set
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        human_bytes(m.bytes_written),
        m.location
    )
}

fn require_media(cat: &crate::catalog::Catalog, barcode: &str) -> Result<MediaRow> {
    cat.media(barcode)?.ok_or_else(|| {
        Error::Usage(format!(
            "cartridge {barcode} is not in the catalog (see `tapevault media list`)"
        ))
    })
}

/// Run `f` with the library, giving the virtual library's operator hands when it is one.
fn with_lib<T>(home: &Home, f: impl FnOnce(&mut Lib) -> Result<T>) -> Result<T> {
    if home.virtual_library_dir().is_some() {
        let mut v = home.open_virtual_library()?;
        f(&mut Lib::Virtual(&mut v))
    } else {
        let mut l = home.open_library()?;
        f(&mut Lib::Real(l.as_mut()))
    }
}

#[derive(Serialize)]
struct ShowReport {
    cartridge: MediaRow,
    /// The cartridge's media set and its retention state, one object.
    media_set: Option<serde_json::Value>,
    images: Vec<ImageRow>,
    overwrite_impact: Impact,
}

/// A media set's row and its retention state as one `media_set` object of the contract.
pub(super) fn set_status_json(st: &SetStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(st).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        if let Some(serde_json::Value::Object(set)) = m.remove("set") {
            for (k, x) in set {
                m.entry(k).or_insert(x);
            }
        }
        if let Some(b) = m.remove("media") {
            m.insert("barcodes".into(), b);
        }
    }
    v
}

pub fn media(ctx: &Ctx, c: MediaCommand) -> Result<()> {
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let now = crate::home::clock::now();
    // Bring locations up to date when the library can be reached (a report of what is
    // offsite is still useful when it cannot).
    if let Ok(mut lib) = home.open_library() {
        sync_inventory(&cat, lib.as_mut())?;
    }
    match c {
        MediaCommand::List { pool } => {
            let rows = cat.list_media(pool.as_deref())?;
            ctx.out.emit_list("cartridges", &rows, || {
                rows.iter().map(media_line).collect()
            });
        }
        MediaCommand::Show { barcode } => {
            let barcode = cat.resolve_volume(&barcode)?;
            let m = require_media(&cat, &barcode)?;
            let ev = lifecycle::evaluate(&cat, now)?;
            let set = m.media_set_uuid.and_then(|s| ev.set(s).cloned());
            let r = ShowReport {
                images: cat.images_on_media(&barcode)?,
                overwrite_impact: lifecycle::overwrite_impact(&cat, &barcode, now)?,
                media_set: set.as_ref().map(set_status_json),
                cartridge: m,
            };
            ctx.out.emit(&r, || {
                let mut s = media_line(&r.cartridge);
                if let Some(st) = &set {
                    s.push_str(&format!(
                        "media set {} of pool {}, last write {}, {}\n",
                        st.set.uuid,
                        st.set.pool,
                        st.last_write.format("%Y-%m-%d %H:%M UTC"),
                        match &st.verdict {
                            lifecycle::Verdict::Kept {
                                until: Some(t),
                                reason,
                            } =>
                                format!("kept until {} ({reason})", t.format("%Y-%m-%d %H:%M UTC")),
                            lifecycle::Verdict::Kept {
                                until: None,
                                reason,
                            } => format!("kept ({reason})"),
                            lifecycle::Verdict::Held { holds } => format!(
                                "past retention, held: {}",
                                holds
                                    .iter()
                                    .map(|h| h.describe())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                            lifecycle::Verdict::Expired { since } =>
                                format!("expired since {}", since.format("%Y-%m-%d %H:%M UTC")),
                        }
                    ));
                }
                for i in &r.images {
                    s.push_str(&format!(
                        "  {} image {} of disk {} taken {} ({})\n",
                        i.kind,
                        i.uuid,
                        i.disk_uuid,
                        crate::timefmt::show(&i.started),
                        i.status
                    ));
                }
                if r.overwrite_impact.is_harmless() {
                    s.push_str("overwriting it loses nothing that is kept\n");
                } else {
                    s.push_str(&format!(
                        "overwriting it would destroy {}\n",
                        r.overwrite_impact.describe()
                    ));
                }
                s
            });
        }
        MediaCommand::Export {
            barcodes,
            set,
            force,
        } => {
            let set = match &set {
                Some(s) => Some(cat.resolve_media_set(s)?),
                None => None,
            };
            let rep = with_lib(&home, |l| {
                vault::export(&cat, l.library(), &barcodes, set, force)
            })?;
            ctx.out.emit(&rep, || {
                let mut s = String::new();
                for w in &rep.warnings {
                    s.push_str(&format!("warning: {w}\n"));
                }
                for m in &rep.moved {
                    s.push_str(&format!("{} {} -> {}\n", m.barcode, m.from, m.to));
                }
                for m in &rep.already_out {
                    s.push_str(&format!("{} already out of storage ({})\n", m.barcode, m.to));
                }
                for c in &rep.closed_sets {
                    s.push_str(&format!("media set {c} closed (it went offsite)\n"));
                }
                s.push_str("take them out of the mail slots, then record where: `tapevault media vault BARCODE... --location NAME`");
                s
            });
        }
        MediaCommand::Vault { barcodes, location } => {
            let moved = with_lib(&home, |l| vault::vault(&cat, l, &barcodes, &location))?;
            ctx.out.emit_list("moved", &moved, || {
                moved
                    .iter()
                    .map(|m| format!("{} {} -> {}\n", m.barcode, m.from, m.to))
                    .collect()
            });
        }
        MediaCommand::Return { barcodes } => {
            let r = with_lib(&home, |l| vault::return_media(&cat, l, &barcodes, now))?;
            ctx.out.emit_list("returned", &r, || {
                r.iter()
                    .map(|x| {
                        format!(
                            "{} {} -> {} ({}{})\n",
                            x.barcode,
                            x.from,
                            x.to,
                            x.state,
                            if x.expired {
                                "; expired: `tapevault rotate --apply` recycles it"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect()
            });
        }
        MediaCommand::Offsite { at } => {
            let r = vault::offsite(&cat, at.unwrap_or(now))?;
            ctx.out.emit_list("cartridges", &r, || {
                offsite_text(&r, "nothing is outside the library")
            });
        }
        MediaCommand::Due { at } => {
            let r = vault::due(&cat, at.unwrap_or(now))?;
            ctx.out
                .emit_list("cartridges", &r, || offsite_text(&r, "nothing is due back"));
        }
        MediaCommand::PullList { disk, at, image } => {
            let disk = cat.resolve_disk(&disk)?;
            let image = match &image {
                Some(i) => Some(cat.resolve_image(i, Some(disk))?),
                None => None,
            };
            let at = match (at, image) {
                (Some(t), None) => At::Time(t),
                (None, Some(i)) => At::Image(i),
                (None, None) => At::Latest,
                (Some(_), Some(_)) => return usage("give --at or --image, not both"),
            };
            let mut lib = home.open_library()?;
            let r = vault::pull_list(&cat, lib.as_mut(), disk, at)?;
            ctx.out.emit(&r, || {
                let mut s = format!(
                    "restore of disk {} reads {} image(s) from {} cartridge(s):\n",
                    r.disk,
                    r.chain.len(),
                    r.cartridges.len()
                );
                for c in &r.cartridges {
                    s.push_str(&format!(
                        "  {:<10} {:<18} {}{}\n",
                        c.barcode,
                        c.location,
                        if c.in_library {
                            "in the library"
                        } else {
                            "FETCH"
                        },
                        c.state.map(|s| format!(" ({s})")).unwrap_or_default()
                    ));
                }
                if !r.to_fetch.is_empty() {
                    s.push_str(&format!("to fetch: {}\n", r.to_fetch.join(" ")));
                }
                s
            });
        }
        MediaCommand::Retire { barcode } => set_state(ctx, &cat, &barcode, MediaState::Retired)?,
        MediaCommand::Damaged { barcode } => set_state(ctx, &cat, &barcode, MediaState::Damaged)?,
    }
    Ok(())
}

fn offsite_text(r: &[vault::OffsiteEntry], empty: &str) -> String {
    if r.is_empty() {
        return empty.into();
    }
    r.iter()
        .map(|e| {
            format!(
                "{:<10} {:<20} pool {:<10} {:<9} {}\n",
                e.barcode,
                e.location,
                e.pool.as_deref().unwrap_or("-"),
                e.state.to_string(),
                match (e.retention, e.kept_until) {
                    ("kept", Some(t)) => format!("kept until {}", t.format("%Y-%m-%d")),
                    (r, _) => r.to_string(),
                }
            )
        })
        .collect()
}

fn set_state(
    ctx: &Ctx,
    cat: &crate::catalog::Catalog,
    barcode: &str,
    state: MediaState,
) -> Result<()> {
    let m = require_media(cat, barcode)?;
    cat.set_media_state(barcode, state)?;
    let kept = cat
        .images_on_media(barcode)?
        .iter()
        .filter(|i| i.status == crate::catalog::ImageStatus::Complete)
        .count();
    ctx.out.emit(
        &serde_json::json!({"barcode": barcode, "previous_state": m.state, "state": state, "restore_points": kept}),
        || {
            format!(
                "{barcode}: {} -> {state}; it is never written again ({kept} restore point(s) on it stay readable)",
                m.state
            )
        },
    );
    Ok(())
}
