//! `tapevault pool ...`, `tapevault label` and `tapevault media list`.

use clap::{Args, Subcommand};
use serde::Serialize;
use uuid::Uuid;

use super::shared::open_catalog;
use super::{usage, Ctx};
use crate::catalog::{Allocation, Compression, MediaRow, MediaState, PoolRow};
use crate::error::{Context, Error, Result};
use crate::media::allocate::sync_inventory;
use crate::media::volume::{read_label, write_label, LabelRead};
use crate::media::{mount, unmount};

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool of cartridges with its policy.
    Create(PoolArgs),
    /// Change a pool's policy (the key of an existing pool cannot change).
    Update(PoolArgs),
    /// List pools.
    List,
    /// Show one pool with its media sets (and their retention) and cartridges.
    Show { name: String },
    /// Create and update pools from the home's pools.toml.
    Apply {
        /// Only say what would change.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct PoolArgs {
    pub name: String,
    /// Encrypt everything written to this pool with this key (see `tapevault key`): by
    /// tapevault, or by the tape drive when pools.toml declares the pool with
    /// encryption = "drive".
    #[arg(long, value_name = "KEY")]
    pub encrypt_key: Option<String>,
    /// Keep restore points this many days after the media set's last write (default: forever).
    #[arg(long, value_name = "DAYS")]
    pub retention: Option<u32>,
    /// Keep restore points forever (clears --retention on update).
    #[arg(long, conflicts_with = "retention")]
    pub forever: bool,
    /// off, or zstd:LEVEL (default zstd:3).
    #[arg(long)]
    pub compression: Option<Compression>,
    /// continue, per-session, daily, weekly:<weekday>, monthly (default continue).
    #[arg(long)]
    pub allocation: Option<Allocation>,
    /// Only WORM cartridges.
    #[arg(long)]
    pub worm: bool,
    /// Write the passphrase-wrapped key into every volume label (key escrow).
    #[arg(long)]
    pub escrow: bool,
    /// Finished media sets of this pool go to this vault (`tapevault rotate` lists them
    /// for removal); kept in pools.toml.
    #[arg(long, value_name = "VAULT")]
    pub offsite: Option<String>,
    /// Clear the offsite vault.
    #[arg(long, conflicts_with = "offsite")]
    pub no_offsite: bool,
}

pub fn pool(ctx: &Ctx, c: PoolCommand) -> Result<()> {
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    match c {
        PoolCommand::Create(a) => {
            let (key_name, key_fingerprint) = match &a.encrypt_key {
                Some(k) => {
                    let info = crate::crypto::Keystore::open(&home.dir)?.info(k)?;
                    (Some(info.name), Some(info.fingerprint))
                }
                None => (None, None),
            };
            if a.escrow && key_name.is_none() {
                return usage("--escrow needs --encrypt-key");
            }
            let row = PoolRow {
                name: a.name.clone(),
                key_name,
                key_fingerprint,
                compression: a.compression.unwrap_or(Compression::Zstd(3)),
                retention_days: a.retention,
                allocation: a.allocation.unwrap_or(Allocation::Continue),
                worm: a.worm,
                escrow: a.escrow,
                created: crate::catalog::catalog_time(crate::home::clock::now()),
            };
            cat.create_pool(&row)?;
            if let Some(v) = &a.offsite {
                crate::media::vault::check_vault_name(v)?;
                crate::home::pools_toml::set_offsite(&home.dir, &row.name, Some(v))?;
            }
            ctx.out.emit(&super::json::pool(&row), || {
                format!("created pool {}", row.name)
            });
        }
        PoolCommand::Update(a) => {
            let mut row = cat
                .pool(&a.name)?
                .ok_or_else(|| Error::Usage(format!("no pool named {}", a.name)))?;
            if let Some(k) = &a.encrypt_key {
                let info = crate::crypto::Keystore::open(&home.dir)?.info(k)?;
                if row.key_fingerprint.as_deref() != Some(info.fingerprint.as_str()) {
                    return usage(format!(
                        "pool {} cannot change its key: cartridges of its media sets need the key they were written with; create a new pool",
                        a.name
                    ));
                }
            }
            if let Some(r) = a.retention {
                row.retention_days = Some(r);
            }
            if a.forever {
                row.retention_days = None;
            }
            if let Some(c) = a.compression {
                row.compression = c;
            }
            if let Some(al) = a.allocation {
                row.allocation = al;
            }
            if a.worm {
                row.worm = true;
            }
            if a.escrow {
                if row.key_name.is_none() {
                    return usage("--escrow needs an encrypted pool");
                }
                row.escrow = true;
            }
            cat.update_pool(&row)?;
            if let Some(v) = &a.offsite {
                crate::media::vault::check_vault_name(v)?;
                crate::home::pools_toml::set_offsite(&home.dir, &row.name, Some(v))?;
            } else if a.no_offsite {
                crate::home::pools_toml::set_offsite(&home.dir, &row.name, None)?;
            }
            ctx.out.emit(&super::json::pool(&row), || {
                format!("updated pool {}", row.name)
            });
        }
        PoolCommand::List => {
            let pools = cat.pools()?;
            let docs: Vec<serde_json::Value> = pools.iter().map(super::json::pool).collect();
            ctx.out.emit_list("pools", &docs, || {
                pools
                    .iter()
                    .map(|p| {
                        format!(
                            "{:<16} key {:<12} compression {:<8} retention {:<10} allocation {}\n",
                            p.name,
                            p.key_name.as_deref().unwrap_or("-"),
                            p.compression.to_string(),
                            p.retention_days
                                .map(|d| format!("{d} days"))
                                .unwrap_or_else(|| "forever".into()),
                            p.allocation
                        )
                    })
                    .collect()
            });
        }
        PoolCommand::Show { name } => {
            let p = cat
                .pool(&name)?
                .ok_or_else(|| Error::Usage(format!("no pool named {name}")))?;
            let sets = cat.media_sets(Some(&name))?;
            let media = cat.list_media(Some(&name))?;
            let ev = crate::media::lifecycle::evaluate(&cat, crate::home::clock::now())?;
            let offsite = crate::home::pools_toml::offsite_of(
                &crate::home::pools_toml::load(&home.dir)?,
                &name,
            );
            let retention: Vec<&crate::media::lifecycle::SetStatus> =
                sets.iter().filter_map(|s| ev.set(s.uuid)).collect();
            // The pool's own fields, then its media sets (each with its retention
            // state) and its cartridges.
            let mut v = super::json::pool(&p);
            if let Some(m) = v.as_object_mut() {
                m.insert("offsite".into(), offsite.as_deref().into());
                let set_docs: Vec<serde_json::Value> = sets
                    .iter()
                    .map(|s| match retention.iter().find(|r| r.set.uuid == s.uuid) {
                        Some(st) => super::media_cmd::set_status_json(st),
                        None => serde_json::to_value(s).unwrap_or_default(),
                    })
                    .collect();
                m.insert("media_sets".into(), set_docs.into());
                m.insert(
                    "cartridges".into(),
                    serde_json::to_value(&media).unwrap_or_default(),
                );
            }
            ctx.out.emit(&v, || {
                let mut s = format!(
                    "pool {}: key {}, compression {}, retention {}, allocation {}\n",
                    p.name,
                    p.key_name.as_deref().unwrap_or("none"),
                    p.compression,
                    p.retention_days
                        .map(|d| format!("{d} days"))
                        .unwrap_or_else(|| "forever".into()),
                    p.allocation
                );
                if let Some(o) = &offsite {
                    s.push_str(&format!("  finished sets go offsite to vault {o}\n"));
                }
                for set in &sets {
                    let verdict = match ev.set(set.uuid).map(|x| &x.verdict) {
                        Some(crate::media::lifecycle::Verdict::Kept { until: Some(t), .. }) => {
                            format!("kept until {}", t.format("%Y-%m-%d"))
                        }
                        Some(crate::media::lifecycle::Verdict::Kept { until: None, .. }) => {
                            "kept".into()
                        }
                        Some(crate::media::lifecycle::Verdict::Held { holds }) => {
                            format!("held by {} kept restore point(s)", holds.len())
                        }
                        Some(crate::media::lifecycle::Verdict::Expired { since }) => {
                            format!("expired since {}", since.format("%Y-%m-%d"))
                        }
                        None => "-".into(),
                    };
                    s.push_str(&format!(
                        "  media set {} created {}{}, {verdict}\n",
                        set.uuid,
                        set.created.format("%Y-%m-%d %H:%M"),
                        if set.closed { " (closed)" } else { "" }
                    ));
                    for m in media.iter().filter(|m| m.media_set_uuid == Some(set.uuid)) {
                        s.push_str(&format!(
                            "    {} #{} {} at {}\n",
                            m.barcode,
                            m.seq_in_set.unwrap_or(0),
                            m.state,
                            m.location
                        ));
                    }
                }
                for m in media.iter().filter(|m| m.media_set_uuid.is_none()) {
                    s.push_str(&format!(
                        "  scratch {} {} at {}\n",
                        m.barcode, m.state, m.location
                    ));
                }
                s
            });
        }
        PoolCommand::Apply { dry_run } => {
            let f = crate::home::pools_toml::load(&home.dir)?;
            let changes = crate::home::pools_toml::apply(
                &cat,
                &home.dir,
                &f,
                crate::home::clock::now(),
                dry_run,
            )?;
            let docs: Vec<serde_json::Value> = changes
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "pool": c.pool,
                        "action": c.action,
                        "settings": super::json::pool(&c.row),
                    })
                })
                .collect();
            ctx.out.emit_list("changes", &docs, || {
                if changes.is_empty() {
                    return format!(
                        "{} declares no pools",
                        crate::home::pools_toml::path(&home.dir).display()
                    );
                }
                changes
                    .iter()
                    .map(|c| {
                        format!(
                            "pool {}: {}{}\n",
                            c.pool,
                            if dry_run && c.action != "unchanged" {
                                "would be "
                            } else {
                                ""
                            },
                            c.action
                        )
                    })
                    .collect()
            });
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    pub barcode: String,
    /// The pool the cartridge joins (as scratch, until a backup puts it in a media set;
    /// default: `default_pool` in the home's config.toml).
    #[arg(long)]
    pub pool: Option<String>,
    /// Overwrite whatever the cartridge holds, even restore points (they are lost).
    #[arg(long)]
    pub force: bool,
}

#[derive(Serialize)]
struct LabelReport {
    barcode: String,
    pool: String,
    volume: Uuid,
    overwritten: Vec<Uuid>,
}

pub fn label(ctx: &Ctx, a: LabelArgs) -> Result<()> {
    let home = ctx.home()?;
    let cat = open_catalog(&home)?;
    let pool_name = ctx.pool_or_default(a.pool.clone())?;
    let pool = cat
        .pool(&pool_name)?
        .ok_or_else(|| Error::Usage(format!("no pool named {pool_name}")))?;
    let mut lib = home.open_library()?;
    sync_inventory(&cat, lib.as_mut())?;
    let row = cat.media(&a.barcode)?;
    // What relabelling destroys: every restore point on it, and incrementals elsewhere
    // that need them. Refused while any of it is kept, unless --force.
    let now = crate::home::clock::now();
    let impact = crate::media::lifecycle::overwrite_impact(&cat, &a.barcode, now)?;
    if let (Some(why), false) = (&impact.kept_because, a.force) {
        return Err(Error::Failed(format!(
            "cartridge {} still holds kept restore points ({why}); relabelling would destroy {}. Use --force to overwrite anyway.",
            a.barcode,
            impact.describe()
        )));
    }
    let at_risk: Vec<_> = impact
        .images
        .iter()
        .chain(&impact.dependents)
        .cloned()
        .collect();
    let mut m = mount(
        lib.as_mut(),
        &a.barcode,
        row.as_ref().map(|r| r.location.as_str()),
    )?;
    let result = (|| -> Result<LabelReport> {
        let found = read_label(m.drive.as_mut())?;
        let known = row.as_ref().and_then(|r| r.volume_uuid);
        match (&found, a.force) {
            (LabelRead::Blank, _) | (_, true) => {}
            (LabelRead::Label(l), false) if Some(Uuid::from_bytes(l.volume_uuid)) == known => {}
            (LabelRead::Label(l), false) => {
                return Err(Error::Failed(format!(
                    "cartridge {} holds tapevault volume {} of pool {} (media set {}) that this catalog does not know; import it with `tapevault catalog rebuild --barcode {}` or overwrite with --force",
                    a.barcode,
                    Uuid::from_bytes(l.volume_uuid),
                    l.pool_name,
                    Uuid::from_bytes(l.media_set_uuid),
                    a.barcode
                )))
            }
            (LabelRead::Foreign(d), false) => {
                return Err(Error::Failed(format!(
                    "cartridge {} holds data that is not tapevault's ({d}); overwrite it with --force",
                    a.barcode
                )))
            }
        }
        let volume = Uuid::new_v4();
        let label = tape_formats::VolumeLabel {
            volume_uuid: *volume.as_bytes(),
            media_set_uuid: [0; 16],
            set_sequence: 0,
            label_time: crate::home::clock::now().timestamp(),
            key_fingerprint: pool
                .key_fingerprint
                .as_deref()
                .and_then(crate::backup::fp_bytes),
            barcode: a.barcode.clone(),
            pool_name: pool.name.clone(),
            writer_name: "tapevault".into(),
            writer_version: env!("CARGO_PKG_VERSION").into(),
            escrow: Vec::new(),
        };
        // The catalog forgets first: if writing the label then fails, the catalog never
        // claims restore points that are no longer on the cartridge.
        crate::media::lifecycle::forget_contents(
            &cat,
            &a.barcode,
            &format!(
                "overwritten: cartridge {} was relabelled on {}",
                a.barcode,
                now.format("%Y-%m-%d")
            ),
            false,
        )?;
        write_label(m.drive.as_mut(), &label)?;
        let mut r = row
            .clone()
            .unwrap_or_else(|| MediaRow::new_blank(&a.barcode, ""));
        r.volume_uuid = Some(volume);
        r.pool = Some(pool.name.clone());
        r.media_set_uuid = None;
        r.seq_in_set = None;
        r.state = MediaState::Writable;
        r.labelled_at = Some(crate::catalog::catalog_time(crate::home::clock::now()));
        r.next_tape_file = 1;
        r.bytes_written = 0;
        cat.upsert_media(&r)?;
        Ok(LabelReport {
            barcode: a.barcode.clone(),
            pool: pool.name.clone(),
            volume,
            overwritten: at_risk.iter().map(|i| i.uuid).collect(),
        })
    })();
    let drive_index = m.drive_index;
    unmount(lib.as_mut(), m).with_context(|| format!("putting away drive {drive_index}"))?;
    sync_inventory(&cat, lib.as_mut())?;
    let rep = result?;
    ctx.out.emit(&rep, || {
        let mut s = format!(
            "labelled {} into pool {} (volume {}) as scratch",
            rep.barcode, rep.pool, rep.volume
        );
        if !rep.overwritten.is_empty() {
            s.push_str(&format!(
                "\noverwrote {} restore point(s): {}",
                rep.overwritten.len(),
                rep.overwritten
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        s
    });
    Ok(())
}
