//! When a pool's plain `backup` also builds a synthetic full: the pool's
//! `synthetic_full` setting in `pools.toml` ("incremental forever with periodic
//! synthetic fulls").
//!
//! ```toml
//! [pools.daily]
//! synthetic_full = "weekly"          # or "daily", "days:N", "incrementals:N", "off"
//! ```
//!
//! The policy is judged per disk after its backup: a synthetic full is due when the
//! chain of the disk's newest restore point has grown past the limit since its full
//! (a real or a synthetic one): `days:N` once the full's point is N days old,
//! `incrementals:N` once N incrementals follow it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{ImageKind, ImageRow};

/// A pool's synthetic-full policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SyntheticPolicy {
    /// Never on its own (`backup --synthetic-full` still works).
    Off,
    /// When the chain's full is at least this many days old.
    Days(u32),
    /// When at least this many incrementals follow the chain's full.
    Incrementals(u32),
}

impl FromStr for SyntheticPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "synthetic_full {s:?} is not a policy: give \"off\", \"daily\", \"weekly\", \"days:N\" or \"incrementals:N\" (N at least 1)"
            )
        };
        let n = |v: &str| v.parse::<u32>().ok().filter(|&n| n >= 1).ok_or_else(bad);
        match s {
            "off" => Ok(SyntheticPolicy::Off),
            "daily" => Ok(SyntheticPolicy::Days(1)),
            "weekly" => Ok(SyntheticPolicy::Days(7)),
            _ => match s.split_once(':') {
                Some(("days", v)) => Ok(SyntheticPolicy::Days(n(v)?)),
                Some(("incrementals", v)) => Ok(SyntheticPolicy::Incrementals(n(v)?)),
                _ => Err(bad()),
            },
        }
    }
}

impl TryFrom<String> for SyntheticPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<SyntheticPolicy> for String {
    fn from(p: SyntheticPolicy) -> String {
        p.to_string()
    }
}

impl fmt::Display for SyntheticPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyntheticPolicy::Off => f.write_str("off"),
            SyntheticPolicy::Days(1) => f.write_str("daily"),
            SyntheticPolicy::Days(7) => f.write_str("weekly"),
            SyntheticPolicy::Days(n) => write!(f, "days:{n}"),
            SyntheticPolicy::Incrementals(n) => write!(f, "incrementals:{n}"),
        }
    }
}

impl SyntheticPolicy {
    /// Whether a synthetic full of the newest point, whose restore chain is `chain`
    /// (full first), is due at `now`; the reason when it is.
    pub fn due(&self, chain: &[ImageRow], now: DateTime<Utc>) -> Option<String> {
        let root = chain.first()?;
        let incrementals = chain
            .iter()
            .filter(|i| i.kind == ImageKind::Incremental)
            .count();
        if incrementals == 0 {
            // The newest point is a full already.
            return None;
        }
        let full = if root.synthetic_of.is_some() {
            "synthetic full"
        } else {
            "full"
        };
        match *self {
            SyntheticPolicy::Off => None,
            SyntheticPolicy::Days(d) => {
                let age = now - root.started;
                (age >= Duration::days(i64::from(d))).then(|| {
                    format!(
                        "pool policy synthetic_full = \"{self}\": the chain's {full} {} is {} day(s) old",
                        root.uuid,
                        age.num_days()
                    )
                })
            }
            SyntheticPolicy::Incrementals(n) => (incrementals >= n as usize).then(|| {
                format!(
                    "pool policy synthetic_full = \"{self}\": {incrementals} incremental(s) follow the chain's {full} {}",
                    root.uuid
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print_back() {
        for s in ["off", "daily", "weekly", "days:3", "incrementals:20"] {
            let p: SyntheticPolicy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        for bad in ["", "monthly", "days:0", "incrementals:x", "days:"] {
            let e = bad.parse::<SyntheticPolicy>().unwrap_err();
            assert!(e.contains("incrementals:N"), "{e}");
        }
    }
}
