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

/// Make ready to read `barcodes` written by pools with drive encryption (pools.toml
/// `encryption = "drive"`): each such pool's key is unlocked (taken from `ring` when it
/// is there already) and its drive data key registered, so the drive decrypts when the
/// cartridge is mounted ([`crate::media::drive_key`]). Cartridges of other pools are
/// left alone. Returns the barcodes registered.
pub fn expect_drive_reads(
    ctx: &Ctx,
    home: &Home,
    cat: &crate::catalog::Catalog,
    barcodes: &[String],
    ring: &KeyRing,
) -> Result<Vec<String>> {
    let pools = crate::home::pools_toml::load(&home.dir)?;
    let mut armed = Vec::new();
    let mut keys: std::collections::HashMap<String, std::sync::Arc<tape_devices::drive::DataKey>> =
        std::collections::HashMap::new();
    for bc in barcodes {
        let Some(pool) = cat.media(bc)?.and_then(|m| m.pool) else {
            continue;
        };
        if !crate::home::pools_toml::drive_encrypted(&pools, &pool) {
            continue;
        }
        let key = match keys.get(&pool) {
            Some(k) => k.clone(),
            None => {
                let fp = cat.pool(&pool)?.and_then(|p| p.key_fingerprint).ok_or_else(|| {
                    Error::Usage(format!(
                        "pool {pool} is declared with encryption = \"drive\" in pools.toml but has no key in the catalog"
                    ))
                })?;
                let fpb: [u8; 16] = crate::crypto::from_hex(&fp)
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| {
                        Error::Failed(format!("pool {pool}: bad key fingerprint {fp}"))
                    })?;
                let k = match ring.get(&fpb) {
                    Some(k) => k.drive_data_key(false),
                    None => {
                        let r = unlock_keys(ctx, home, std::slice::from_ref(&fp))?;
                        r.get(&fpb).expect("just unlocked").drive_data_key(false)
                    }
                };
                let k = std::sync::Arc::new(k);
                keys.insert(pool.clone(), k.clone());
                k
            }
        };
        crate::media::drive_key::expect_reads(bc, &pool, key);
        armed.push(bc.clone());
    }
    Ok(armed)
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
