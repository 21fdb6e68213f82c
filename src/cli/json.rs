//! The JSON contract (docs/JSON.md, docs/schema/*.json): every document a command prints
//! with `--json` (and hands to the hook) passes through [`document`], which gives it the
//! one shape scripts can rely on whatever type produced it:
//!
//! - a top-level object carrying `"schema": "tapevault/1"` and the `"command"` that ran
//!   (a list result is wrapped as `{"items": [...]}`);
//! - one name per concept: a reference to an image, disk, session, media set or volume is
//!   `image`, `disk`, `session`, `media_set`, `volume` (never `*_uuid`, `uuid` or `set`),
//!   an object describing one of them carries its id under that same name, a VM name is
//!   `vm` (a list of barcodes is `barcodes` and a `cartridges` list holds objects: the
//!   types say so with `#[serde(rename)]`);
//! - every time is RFC 3339 UTC with exactly six fractional digits (as `--at` takes back);
//! - every location (`location`, `from`, `to`, `source`, `element`, `via`) is an object
//!   `{"kind", "index"?, "vault"?, "text"}`, whether the catalog keeps it as text
//!   (`slot 3`, `vault:NAME`, `outside`) or the changer reports an element.
//!
//! The row types of the catalog keep their own field names: they are also the catalog
//! snapshot format on tape (docs/FORMAT.md), which this layer never touches.

use std::sync::OnceLock;

use serde_json::{Map, Value};

/// The contract's version: bumped only when a name or shape changes incompatibly.
pub const SCHEMA: &str = "tapevault/1";

/// The key the contract's version is under (the last of a document's sorted keys).
pub const SCHEMA_KEY: &str = "schema";

static COMMAND: OnceLock<String> = OnceLock::new();

/// The command path of this run ("backup", "media list"), named in every document.
pub fn set_command(path: &str) {
    let _ = COMMAND.set(path.to_string());
}

/// A command's result or error as the contract has it.
pub fn document(v: Value) -> Value {
    let mut body = match v {
        Value::Object(m) => m,
        Value::Array(a) => {
            let mut m = Map::new();
            m.insert("items".into(), Value::Array(a));
            m
        }
        Value::Null => Map::new(),
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    normalize_map(&mut body, None);
    let mut doc = Map::new();
    doc.insert("schema".into(), SCHEMA.into());
    if let Some(c) = COMMAND.get() {
        doc.insert("command".into(), c.clone().into());
    }
    for (k, v) in body {
        if k != "schema" && k != "command" {
            doc.insert(k, v);
        }
    }
    Value::Object(doc)
}

/// The command path set by [`set_command`], if any.
pub fn command() -> Option<&'static str> {
    COMMAND.get().map(String::as_str)
}

/// One element of the list a document carries under `key`, normalized exactly as
/// [`document`] normalizes it inside the whole list (for printing a list element by
/// element).
pub fn list_item(mut v: Value, key: &str) -> Value {
    normalize(&mut v, Some(key));
    v
}

/// A pool as the contract has it: its name under `pool`, as everywhere else.
pub fn pool(row: &crate::catalog::PoolRow) -> Value {
    let mut v = serde_json::to_value(row).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        if let Some(n) = m.remove("name") {
            m.insert("pool".into(), n);
        }
    }
    v
}

/// Field names that drift in the internal types, and the contract's name for each.
const RENAMES: &[(&str, &str)] = &[
    ("disk_uuid", "disk"),
    ("disk_id", "disk"),
    ("image_uuid", "image"),
    ("parent_uuid", "parent"),
    ("parent_image_uuid", "parent"),
    ("session_uuid", "session"),
    ("media_set_uuid", "media_set"),
    ("set", "media_set"),
    ("volume_uuid", "volume"),
    ("vm_name", "vm"),
    ("plain_bytes", "data_bytes"),
];

/// Keys whose value is a place in or out of the library.
const LOCATION_KEYS: &[&str] = &["location", "from", "to", "source", "element", "via"];

/// What an object's own `uuid` is, by the key (or list) it sits under.
fn entity_of(parent: Option<&str>) -> Option<&'static str> {
    Some(match parent? {
        "images" | "image" | "chain" | "skipped" | "dependents" => "image",
        "media_sets" | "media_set" | "sets" => "media_set",
        "sessions" | "session" => "session",
        "volumes" | "volume" => "volume",
        _ => return None,
    })
}

fn normalize_map(m: &mut Map<String, Value>, parent: Option<&str>) {
    let old = std::mem::take(m);
    for (k, mut v) in old {
        let mut key = RENAMES
            .iter()
            .find(|(from, _)| *from == k)
            .map(|(_, to)| to.to_string())
            .unwrap_or(k);
        if key == "uuid" {
            if let Some(e) = entity_of(parent) {
                key = e.to_string();
            }
        }
        if key == "location" && v.is_null() {
            // The virtual library's word for a cartridge out of it.
            v = location(Value::String(crate::media::vault::OUTSIDE.into()));
        } else if LOCATION_KEYS.contains(&key.as_str()) {
            v = location(v);
        } else {
            normalize(&mut v, Some(&key));
        }
        // A renamed field never overwrites one already carrying the contract's name.
        if !m.contains_key(&key) {
            m.insert(key, v);
        }
    }
}

fn normalize(v: &mut Value, parent: Option<&str>) {
    match v {
        Value::Object(m) => normalize_map(m, parent),
        Value::Array(a) => {
            for x in a {
                normalize(x, parent);
            }
        }
        Value::String(s) => {
            if let Some(t) = time(s) {
                *s = t;
            }
        }
        _ => {}
    }
}

/// A text value as [`document`] leaves it: an RFC 3339 time in tapevault's one form,
/// anything else as it is (for types that serialize in the contract's form themselves).
pub fn text(s: &str) -> std::borrow::Cow<'_, str> {
    match time(s) {
        Some(t) => t.into(),
        None => s.into(),
    }
}

/// An RFC 3339 time in the one form tapevault prints (UTC, six fractional digits).
fn time(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't') {
        return None;
    }
    if is_shown(b) {
        // Already as `timefmt::show` prints it (parsing it would give it back): a
        // document of 100 k images holds 200 k such times.
        return None;
    }
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(crate::timefmt::show(&t.with_timezone(&chrono::Utc)))
}

/// Whether `b` has the exact shape `timefmt::show` prints:
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn is_shown(b: &[u8]) -> bool {
    b.len() == 27
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            26 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// A location object from the catalog's text (`slot 3`, `drive 0`, `mail slot 1`,
/// `vault:NAME`, `outside`) or a changer element `{"kind", "index"}`; null stays null
/// (not known).
pub fn location(v: Value) -> Value {
    match v {
        Value::String(s) => location_text(&s),
        Value::Object(mut m) => {
            let kind = m.get("kind").and_then(Value::as_str).map(str::to_string);
            let index = m.get("index").and_then(Value::as_u64);
            if let (Some(k), Some(i), false) = (kind, index, m.contains_key("text")) {
                let human = if k == "mailslot" { "mail slot" } else { &k };
                m.insert("text".into(), format!("{human} {i}").into());
            }
            Value::Object(m)
        }
        other => other,
    }
}

fn location_text(s: &str) -> Value {
    let t = s.trim();
    let element = |kind: &str, rest: &str| -> Option<Value> {
        let i: u64 = rest.trim().parse().ok()?;
        Some(serde_json::json!({"kind": kind, "index": i, "text": t}))
    };
    let parsed = if let Some(r) = t.strip_prefix("mail slot ") {
        element("mailslot", r)
    } else if let Some(r) = t.strip_prefix("slot ") {
        element("slot", r)
    } else if let Some(r) = t.strip_prefix("drive ") {
        element("drive", r)
    } else if let Some(name) = t.strip_prefix(crate::media::vault::VAULT_PREFIX) {
        Some(serde_json::json!({"kind": "vault", "vault": name, "text": t}))
    } else if t == crate::media::vault::OUTSIDE {
        Some(serde_json::json!({"kind": "outside", "text": t}))
    } else {
        None
    };
    parsed.unwrap_or_else(|| serde_json::json!({"kind": "unknown", "text": t}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_times_locations_and_lists_follow_the_contract() {
        let d = document(json!([{
            "uuid": "x", "disk_uuid": "d", "media_set_uuid": null, "vm_name": "web01",
            "started": "2026-12-03T16:48:16Z", "location": "vault:offsite",
            "from": {"kind": "mailslot", "index": 1}
        }]));
        assert_eq!(d["schema"], SCHEMA);
        let i = &d["items"][0];
        assert_eq!(i["disk"], "d");
        assert_eq!(i["media_set"], Value::Null);
        assert_eq!(i["vm"], "web01");
        assert_eq!(
            i["uuid"], "x",
            "a uuid under no known list stays (the schema test catches it)"
        );
        assert_eq!(i["started"], "2026-12-03T16:48:16.000000Z");
        assert_eq!(
            i["location"],
            json!({"kind": "vault", "vault": "offsite", "text": "vault:offsite"})
        );
        assert_eq!(i["from"]["text"], "mail slot 1");
        let d = document(json!({"images": [{"uuid": "i"}], "sets": [{"uuid": "s"}]}));
        assert_eq!(d["images"][0]["image"], "i");
        assert_eq!(d["sets"][0]["media_set"], "s");
    }

    #[test]
    fn times_with_offsets_become_utc_microseconds_and_other_text_stays() {
        assert_eq!(
            time("2026-12-03T18:48:16.5+02:00").as_deref(),
            Some("2026-12-03T16:48:16.500000Z")
        );
        assert_eq!(time("52 0f 1"), None);
        assert_eq!(time("2026-12-03T16:48:16.500000Z"), None, "already shown");
        assert_eq!(
            time("2026-12-03T16:48:16.500000+00:00").as_deref(),
            Some("2026-12-03T16:48:16.500000Z")
        );
        assert_eq!(time("2026-12-03"), None);
    }
}
