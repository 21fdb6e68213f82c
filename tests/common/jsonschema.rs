//! A validator for the subset of JSON Schema (draft 07) that docs/schema/*.json use:
//! `type` (one or a list), `required`, `properties`, `additionalProperties` (false or a
//! schema), `items`, `enum`, `const`, `minimum`, `anyOf`, `format` (`date-time` in the
//! contract's one form, `uuid`) and `$ref` to `#/definitions/NAME` or
//! `FILE.json#/definitions/NAME` (another file of the same directory). A keyword outside
//! this subset is an error, so a schema cannot silently check less than it says.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

const KNOWN: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "definitions",
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "anyOf",
    "format",
    "$ref",
];

/// The schema files of one directory, loaded on demand.
pub struct Schemas {
    dir: PathBuf,
    files: HashMap<String, Value>,
}

impl Schemas {
    pub fn new(dir: &Path) -> Schemas {
        Schemas {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
        }
    }

    pub fn exists(&self, file: &str) -> bool {
        self.dir.join(file).is_file()
    }

    fn load(&mut self, file: &str) -> Result<Value, String> {
        if let Some(v) = self.files.get(file) {
            return Ok(v.clone());
        }
        let p = self.dir.join(file);
        let text =
            std::fs::read_to_string(&p).map_err(|e| format!("schema {}: {e}", p.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("schema {}: {e}", p.display()))?;
        self.files.insert(file.to_string(), v.clone());
        Ok(v)
    }

    /// Every violation of `file`'s schema by `doc`, each with its JSON path.
    pub fn validate(&mut self, file: &str, doc: &Value) -> Result<Vec<String>, String> {
        let root = self.load(file)?;
        let mut errs = Vec::new();
        self.check(file, &root, doc, "$", &mut errs)?;
        Ok(errs)
    }

    fn resolve(&mut self, file: &str, r: &str) -> Result<(String, Value), String> {
        let (f, frag) = r.split_once('#').unwrap_or((r, ""));
        let f = if f.is_empty() {
            file.to_string()
        } else {
            f.to_string()
        };
        let mut v = self.load(&f)?;
        for part in frag.split('/').filter(|p| !p.is_empty()) {
            v = v
                .get(part)
                .cloned()
                .ok_or_else(|| format!("{file}: $ref {r} does not resolve"))?;
        }
        Ok((f, v))
    }

    fn check(
        &mut self,
        file: &str,
        s: &Value,
        v: &Value,
        path: &str,
        errs: &mut Vec<String>,
    ) -> Result<(), String> {
        let Some(s) = s.as_object() else {
            if s == &Value::Bool(true) {
                return Ok(());
            }
            return Err(format!("{file}: a schema at {path} is not an object"));
        };
        for k in s.keys() {
            if !KNOWN.contains(&k.as_str()) {
                return Err(format!(
                    "{file}: keyword {k:?} is outside the validator's subset"
                ));
            }
        }
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let (f, target) = self.resolve(file, r)?;
            return self.check(&f, &target, v, path, errs);
        }
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(x) => vec![x.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => return Err(format!("{file}: bad type at {path}")),
            };
            if !types.iter().any(|t| is_type(v, t)) {
                errs.push(format!(
                    "{path}: expected {}, got {}",
                    types.join(" or "),
                    short(v)
                ));
                return Ok(());
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                errs.push(format!(
                    "{path}: {} is not one of {}",
                    short(v),
                    Value::Array(e.clone())
                ));
            }
        }
        if let Some(c) = s.get("const") {
            if c != v {
                errs.push(format!("{path}: expected {c}, got {}", short(v)));
            }
        }
        if let (Some(m), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
            if n < m {
                errs.push(format!("{path}: {n} is below the minimum {m}"));
            }
        }
        if let (Some(f), Some(x)) = (s.get("format").and_then(Value::as_str), v.as_str()) {
            let ok = match f {
                "date-time" => is_time(x),
                "uuid" => is_uuid(x),
                other => return Err(format!("{file}: format {other:?} is not supported")),
            };
            if !ok {
                errs.push(format!("{path}: {x:?} is not a {f} in the contract's form"));
            }
        }
        if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
            let mut matched = false;
            let mut why = Vec::new();
            for alt in any {
                let mut e = Vec::new();
                self.check(file, alt, v, path, &mut e)?;
                if e.is_empty() {
                    matched = true;
                    break;
                }
                why.push(e.join("; "));
            }
            if !matched {
                errs.push(format!(
                    "{path}: matches none of anyOf ({})",
                    why.join(" | ")
                ));
            }
        }
        if let Some(obj) = v.as_object() {
            if let Some(req) = s.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !obj.contains_key(r) {
                        errs.push(format!("{path}: required field {r:?} is missing"));
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, x) in obj {
                let sub = format!("{path}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => self.check(file, &ps.clone(), x, &sub, errs)?,
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            errs.push(format!("{sub}: field {k:?} is not in the schema"))
                        }
                        Some(ap @ Value::Object(_)) => {
                            self.check(file, &ap.clone(), x, &sub, errs)?
                        }
                        _ => {}
                    },
                }
            }
        }
        if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
            for (i, x) in arr.iter().enumerate() {
                self.check(file, &items.clone(), x, &format!("{path}[{i}]"), errs)?;
            }
        }
        Ok(())
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_u64() || v.is_i64(),
        _ => false,
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}...", &s[..80])
    } else {
        s
    }
}

/// RFC 3339 UTC with exactly six fractional digits: `2026-12-03T16:48:16.520000Z`.
pub fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b[i].is_ascii_digit());
    b.len() == 27
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26)
        && b[26] == b'Z'
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}
