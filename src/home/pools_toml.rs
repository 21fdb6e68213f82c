//! Pools declared in the home's `pools.toml`, for admins who keep their rotation in a
//! file under version control rather than in a series of `pool create` commands:
//!
//! ```toml
//! [pools.daily]
//! allocation = "daily"          # continue | per-session | daily | weekly:fri | monthly
//! retention_days = 14           # omit to keep forever
//! compression = "zstd:3"        # or "off"
//!
//! [pools.monthly]
//! allocation = "monthly"
//! retention_days = 365
//! encrypt_key = "offsite"       # a keystore key name
//! escrow = true
//! offsite = "ironmountain"      # finished sets go to this vault (see `tapevault rotate`)
//! offsite_when = "written"      # ... as soon as written (default "finished")
//!
//! [pools.lto]
//! allocation = "continue"
//! encrypt_key = "lto"           # the drive encrypts under a key derived from this one
//! encryption = "drive"          # "software" (default): tapevault's AES-256-GCM records
//!
//! [pools.nightly]
//! allocation = "daily"
//! copy_to = "vaultcopy"          # each session is copied to this pool at its end;
//!                                # rotate sends the copies offsite, keeps these on site
//! copy_spool = "/var/spool/tapevault"  # one drive: stage the copy through this directory,
//! copy_spool_size = "64G"              # at most this many bytes at a time
//!
//! [pools.vaultcopy]
//! allocation = "per-session"
//! offsite = "ironmountain"      # where the copies go (default: nightly's offsite, else "offsite")
//!
//! [pools.vms]
//! allocation = "daily"
//! drives = 2                    # a backup of several disks writes on up to 2 drives at
//!                               # once (`backup --drives N` overrides it; default 1)
//! drive_speeds = "speed=300M,min=100M,reposition=3s"  # for the backup spool's bursts
//!                               # (default: 400M, min 120M, 3s; a virtual drive's model wins)
//!
//! [pools.forever]
//! allocation = "weekly:sun"
//! retention_days = 28
//! synthetic_full = "weekly"     # plain backups also build a synthetic full when due
//! ```
//!
//! `tapevault pool apply` creates and updates the catalog's pools from it. `offsite`,
//! `copy_to`, `copy_spool`, `copy_spool_size`, `synthetic_full`, `encryption`, `drives` and `drive_speeds` live only here (the catalog has no column for them); `pool create|update --offsite`
//! write it here too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{Allocation, Catalog, Compression, PoolRow};
use crate::error::{Context, Error, Result};

/// File name of the pool declarations inside a tapevault home.
pub const POOLS_FILE: &str = "pools.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsFile {
    #[serde(default)]
    pub pools: BTreeMap<String, PoolSpec>,
}

/// One pool's declaration. Fields left out keep their default (on create) or their
/// current value (on update), except `retention_days`, whose absence means forever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt_key: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub worm: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escrow: bool,
    /// Vault that finished media sets of this pool go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<String>,
    /// When a set may leave: `finished` (default: closed, or the pool's allocation would
    /// start a new set at the next session) or `written` (as soon as its newest session
    /// completed with its catalog snapshot; the export closes the set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite_when: Option<OffsiteWhen>,
    /// "Incremental forever with periodic synthetic fulls": when a plain `backup` to
    /// this pool also builds a synthetic full of each disk it backed up, from the chain
    /// on tape (`"weekly"`, `"daily"`, `"days:N"`, `"incrementals:N"`, `"off"`; see
    /// [`crate::synthetic::policy`]). Lives only here, like `offsite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_full: Option<crate::synthetic::SyntheticPolicy>,
    /// Only the offsite setting was written (by `pool create|update --offsite`): apply
    /// leaves the catalog's policy of this pool alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offsite_only: bool,
    /// A pool every backup session of this pool is copied to at its end (`tapevault
    /// copy`); `rotate` then sends that pool's finished sets offsite and keeps this
    /// pool's on site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_to: Option<String>,
    /// With `copy_to` on a one-drive library: the spool directory the copy stages each
    /// image through (as `copy --spool DIR`), bounded by `copy_spool_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_spool: Option<PathBuf>,
    /// The most bytes `copy_spool` may hold at once (as `copy --spool-size SIZE`,
    /// e.g. "64G").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_spool_size: Option<String>,
    /// Who encrypts the pool's data under `encrypt_key`: tapevault (`"software"`, the
    /// default) or the tape drive (`"drive"`, SSC-4 hardware encryption; a drive without
    /// it refuses the pool). Lives only here, like `offsite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionBy>,
    /// Drives a backup session of this pool may write at once (1 to 64; as `backup
    /// --drives N`, which overrides it; default 1). Lives only here, like `offsite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drives: Option<u16>,
    /// The speeds of the drives this pool's backups write on, for the backup spool
    /// ([`crate::spool::DriveSpeeds`]): `"speed=RATE,min=RATE,reposition=DURATION"`,
    /// e.g. `"speed=300M,min=100M,reposition=3s"`. Default: an LTO-9-class drive
    /// (400 MB/s, matching down to 120 MB/s, 3 s per reposition); a virtual drive's
    /// model overrides it. Lives only here, like `offsite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drive_speeds: Option<String>,
}

/// Who encrypts an encrypted pool's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionBy {
    /// tapevault's per-record AES-256-GCM.
    #[default]
    Software,
    /// The tape drive's hardware encryption (AES-256-GCM in the drive), under a data
    /// key derived from the pool's key; labels stay clear.
    Drive,
}

/// Whether `pool` is declared with drive (hardware) encryption.
pub fn drive_encrypted(f: &PoolsFile, pool: &str) -> bool {
    f.pools.get(pool).and_then(|s| s.encryption) == Some(EncryptionBy::Drive)
}

pub fn path(home: &Path) -> PathBuf {
    home.join(POOLS_FILE)
}

/// Read `<home>/pools.toml`; a missing file is an empty declaration.
pub fn load(home: &Path) -> Result<PoolsFile> {
    let p = path(home);
    match std::fs::read_to_string(&p) {
        Ok(text) => {
            let f: PoolsFile = toml::from_str(&text)
                .map_err(|e| Error::Usage(format!("{} is not valid: {e}", p.display())))?;
            for (name, spec) in &f.pools {
                copy_spool_of(&f, name)
                    .map_err(|e| Error::Usage(format!("{} is not valid: {e}", p.display())))?;
                drive_speeds_of(&f, name)
                    .map_err(|e| Error::Usage(format!("{} is not valid: {e}", p.display())))?;
                if let Some(n) = spec.drives.filter(|n| !(1..=64).contains(n)) {
                    return Err(Error::Usage(format!(
                        "{} is not valid: pool {name}: drives = {n} is not a number of drives from 1 to 64 (the most drives a backup of the pool writes at once)",
                        p.display()
                    )));
                }
            }
            Ok(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PoolsFile::default()),
        Err(e) => Err(Error::Failed(format!("cannot read {}: {e}", p.display()))),
    }
}

/// Write `<home>/pools.toml` atomically (comments in a hand-written file are not kept).
pub fn save(home: &Path, f: &PoolsFile) -> Result<()> {
    let p = path(home);
    let text = toml::to_string_pretty(f)
        .map_err(|e| Error::Failed(format!("serialising {}: {e}", p.display())))?;
    let tmp = p.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// When a media set of an offsite pool is ready to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsiteWhen {
    #[default]
    Finished,
    Written,
}

/// When sets of `pool` go offsite.
pub fn offsite_when(f: &PoolsFile, pool: &str) -> OffsiteWhen {
    f.pools
        .get(pool)
        .and_then(|s| s.offsite_when)
        .unwrap_or_default()
}

/// The synthetic-full policy of `pool` (off when not declared).
pub fn synthetic_policy_of(f: &PoolsFile, pool: &str) -> crate::synthetic::SyntheticPolicy {
    f.pools
        .get(pool)
        .and_then(|s| s.synthetic_full)
        .unwrap_or(crate::synthetic::SyntheticPolicy::Off)
}

/// The vault finished sets of `pool` go to, if any. A pool that others copy to
/// (`copy_to`) goes to its own `offsite`, else that of a pool copying to it, else the
/// vault `offsite`; a pool that is copied (has `copy_to`) stays on site.
pub fn offsite_of(f: &PoolsFile, pool: &str) -> Option<String> {
    let own = f.pools.get(pool).and_then(|s| s.offsite.clone());
    let sources: Vec<&String> = f
        .pools
        .iter()
        .filter(|(_, s)| s.copy_to.as_deref() == Some(pool))
        .map(|(n, _)| n)
        .collect();
    if !sources.is_empty() {
        return own
            .or_else(|| sources.iter().find_map(|p| f.pools[*p].offsite.clone()))
            .or_else(|| Some(DEFAULT_COPY_VAULT.to_string()));
    }
    if copy_to_of(f, pool).is_some() {
        return None;
    }
    own
}

/// The vault copies go to when neither pool names one.
pub const DEFAULT_COPY_VAULT: &str = "offsite";

/// The pool each session of `pool` is copied to, if any.
/// The most drives a backup session of `pool` writes at once when `backup --drives` is
/// not given (`drives`; None: not declared).
pub fn drives_of(f: &PoolsFile, pool: &str) -> Option<usize> {
    f.pools.get(pool).and_then(|s| s.drives).map(usize::from)
}

/// The speeds of the drives `pool`'s backups write on (`drive_speeds`), else the
/// default ([`crate::spool::DriveSpeeds::LTO_DEFAULT`]). The error names the pool and
/// the setting.
pub fn drive_speeds_of(
    f: &PoolsFile,
    pool: &str,
) -> std::result::Result<crate::spool::DriveSpeeds, String> {
    match f.pools.get(pool).and_then(|s| s.drive_speeds.as_deref()) {
        None => Ok(crate::spool::DriveSpeeds::LTO_DEFAULT),
        Some(spec) => crate::spool::DriveSpeeds::parse(spec)
            .map_err(|e| format!("pool {pool}: drive_speeds = {spec:?}: {e}")),
    }
}

pub fn copy_to_of(f: &PoolsFile, pool: &str) -> Option<String> {
    f.pools.get(pool).and_then(|s| s.copy_to.clone())
}

/// The spool the copy after each session of `pool` stages through (`copy_spool` and
/// `copy_spool_size`), if declared. Both or neither, and only with `copy_to`; the size
/// as `copy --spool-size` takes it. Errors say which setting of which pool is wrong.
pub fn copy_spool_of(
    f: &PoolsFile,
    pool: &str,
) -> std::result::Result<Option<crate::copy::Spool>, String> {
    let Some(spec) = f.pools.get(pool) else {
        return Ok(None);
    };
    match (&spec.copy_spool, &spec.copy_spool_size) {
        (None, None) => Ok(None),
        (Some(_), None) | (None, Some(_)) => Err(format!(
            "pool {pool}: copy_spool and copy_spool_size go together (the spool directory and the most bytes it may hold, e.g. copy_spool = \"/var/spool/tapevault\" and copy_spool_size = \"64G\")"
        )),
        (Some(_), Some(_)) if spec.copy_to.is_none() => Err(format!(
            "pool {pool}: copy_spool is for the copy after each session, but the pool has no copy_to"
        )),
        (Some(dir), Some(size)) => {
            let size = crate::copy::parse_size(size).map_err(|e| {
                format!("pool {pool}: copy_spool_size = {size:?}: {e}")
            })?;
            Ok(Some(crate::copy::Spool {
                dir: dir.clone(),
                size,
            }))
        }
    }
}

/// Set or clear the offsite vault of a pool in `<home>/pools.toml`.
pub fn set_offsite(home: &Path, pool: &str, vault: Option<&str>) -> Result<()> {
    let mut f = load(home)?;
    let e = f.pools.entry(pool.to_string()).or_insert_with(|| PoolSpec {
        offsite_only: true,
        ..Default::default()
    });
    e.offsite = vault.map(str::to_string);
    save(home, &f)
}

/// One change `apply` makes (or would make).
#[derive(Debug, Clone, Serialize)]
pub struct PoolChange {
    pub pool: String,
    /// created | updated | unchanged
    pub action: &'static str,
    pub row: PoolRow,
}

/// Create or update the catalog's pools from the declarations. With `dry_run` nothing is
/// written. A declared key that differs from an existing pool's key is refused (its
/// cartridges need the key they were written with).
pub fn apply(
    cat: &Catalog,
    home: &Path,
    f: &PoolsFile,
    now: chrono::DateTime<chrono::Utc>,
    dry_run: bool,
) -> Result<Vec<PoolChange>> {
    let mut out = Vec::new();
    for (name, spec) in &f.pools {
        if spec.offsite_only {
            continue;
        }
        let key = match &spec.encrypt_key {
            Some(k) => {
                let info = crate::crypto::Keystore::open(home)?.info(k)?;
                Some((info.name, info.fingerprint))
            }
            None => None,
        };
        if spec.encryption == Some(EncryptionBy::Drive) && key.is_none() {
            return Err(Error::Usage(format!(
                "pools.toml: pool {name} has encryption = \"drive\" but no encrypt_key (the drive encrypts under a key from the keystore: add encrypt_key = \"NAME\")"
            )));
        }
        if spec.escrow && key.is_none() {
            return Err(Error::Usage(format!(
                "pools.toml: pool {name} has escrow = true but no encrypt_key"
            )));
        }
        let (action, row) = match cat.pool(name)? {
            None => {
                let row = PoolRow {
                    name: name.clone(),
                    key_name: key.as_ref().map(|k| k.0.clone()),
                    key_fingerprint: key.as_ref().map(|k| k.1.clone()),
                    compression: spec.compression.unwrap_or(Compression::Zstd(3)),
                    retention_days: spec.retention_days,
                    allocation: spec.allocation.unwrap_or(Allocation::Continue),
                    worm: spec.worm,
                    escrow: spec.escrow,
                    created: crate::catalog::catalog_time(now),
                };
                if !dry_run {
                    cat.create_pool(&row)?;
                }
                ("created", row)
            }
            Some(old) => {
                if let Some((_, fp)) = &key {
                    if old.key_fingerprint.as_deref() != Some(fp.as_str()) {
                        return Err(Error::Usage(format!(
                            "pools.toml: pool {name} cannot change its key: cartridges of its media sets need the key they were written with; declare a new pool"
                        )));
                    }
                }
                let mut row = old.clone();
                row.retention_days = spec.retention_days;
                if let Some(a) = spec.allocation {
                    row.allocation = a;
                }
                if let Some(c) = spec.compression {
                    row.compression = c;
                }
                row.worm = spec.worm;
                row.escrow = spec.escrow && row.key_name.is_some();
                if row == old {
                    ("unchanged", row)
                } else {
                    if !dry_run {
                        cat.update_pool(&row)?;
                    }
                    ("updated", row)
                }
            }
        };
        out.push(PoolChange {
            pool: name.clone(),
            action,
            row,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_parse_and_apply_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            path(dir.path()),
            "[pools.daily]\nallocation = \"daily\"\nretention_days = 14\n\n[pools.monthly]\nallocation = \"monthly\"\nretention_days = 365\noffsite = \"vault1\"\n",
        )
        .unwrap();
        let f = load(dir.path()).unwrap();
        assert_eq!(offsite_of(&f, "monthly").as_deref(), Some("vault1"));
        let cat = Catalog::open(dir.path()).unwrap();
        let now = chrono::Utc::now();
        let ch = apply(&cat, dir.path(), &f, now, false).unwrap();
        assert!(ch.iter().all(|c| c.action == "created"));
        assert_eq!(cat.pool("daily").unwrap().unwrap().retention_days, Some(14));
        let ch = apply(&cat, dir.path(), &f, now, false).unwrap();
        assert!(ch.iter().all(|c| c.action == "unchanged"), "{ch:?}");
        set_offsite(dir.path(), "daily", Some("v2")).unwrap();
        let f = load(dir.path()).unwrap();
        assert_eq!(offsite_of(&f, "daily").as_deref(), Some("v2"));
        assert_eq!(f.pools["daily"].retention_days, Some(14));
        std::fs::write(path(dir.path()), "[pools.x]\nretention = 3\n").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("retention"), "{e}");
    }
}
