//! Helpers every command handler shares: opening the catalog, unlocking keys, and
//! failing with a JSON document that carries a partial report.

use serde::Serialize;

use super::passphrase::passphrase;
use super::Ctx;
use crate::catalog::Catalog;
use crate::codec::KeyRing;
use crate::error::{Context, Error, Result};
use crate::home::Home;

/// Open the home's catalog, naming the home in the error.
pub fn open_catalog(home: &Home) -> Result<Catalog> {
    Catalog::open(&home.dir)
        .with_context(|| format!("opening the catalog in {}", home.dir.display()))
}

/// Unlock the keys with these fingerprints (hex) from the home's keystore. A key that
/// is not there is exit 5 naming its fingerprint.
pub fn unlock_keys(ctx: &Ctx, home: &Home, fps: &[String]) -> Result<KeyRing> {
    let mut ring = KeyRing::new();
    if fps.is_empty() {
        return Ok(ring);
    }
    let ks = crate::crypto::Keystore::open(&home.dir)?;
    for fp in fps {
        let info = ks.info(fp)?;
        let pass = passphrase(
            &ctx.global,
            &format!("key {} ({})", info.name, info.fingerprint),
            false,
        )?;
        ring.add(ks.unlock(fp, pass.as_bytes())?);
    }
    Ok(ring)
}

/// With `--json`, print one JSON error document with extra fields (a pull list, a
/// report) and exit with the error's code; without, return the error for `main`.
pub fn fail_with<T: Serialize>(ctx: &Ctx, err: Error, extra: &T) -> Result<()> {
    if !ctx.out.json {
        return Err(err);
    }
    let code = err.exit_code() as i32;
    let mut doc = serde_json::to_value(extra).unwrap_or(serde_json::Value::Null);
    if !doc.is_object() {
        doc = serde_json::json!({ "detail": doc });
    }
    if let Some(m) = doc.as_object_mut() {
        m.insert("error".into(), err.to_string().into());
        m.insert("kind".into(), err.kind().into());
        m.insert("exit_code".into(), code.into());
    }
    let doc = super::json::document(doc);
    eprintln!("tapevault: error: {err}");
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
    );
    super::job::finish(code, Some(doc));
    std::process::exit(code);
}
