//! `tapevault key ...`: the keystore of record keys (see docs/ENCRYPTION.md).
//!
//! Passphrases come from [`passphrase`] (`--passphrase-file`, `$TAPEVAULT_PASSPHRASE`,
//! or a prompt on a terminal). The new passphrase of `change-passphrase` comes from
//! `--new-passphrase-file`, `$TAPEVAULT_NEW_PASSPHRASE`, or a prompt with confirmation.
//! A wrong passphrase or a missing key exits 5.

use std::fs;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::passphrase::{check_policy, passphrase};
use super::shared::open_catalog;
use super::{usage, Ctx};
use crate::crypto::{escrow, KeyInfo, Keystore};
use crate::error::{Context, Error, Result};
use crate::media::allocate::sync_inventory;
use crate::media::volume::{read_label, LabelRead};
use crate::media::{mount, unmount};

/// The environment variable holding the new passphrase of `key change-passphrase`.
pub const NEW_PASSPHRASE_ENV: &str = "TAPEVAULT_NEW_PASSPHRASE";

/// Largest file `key import` reads: a key file is ~150 bytes and its paper form ~1 KiB;
/// anything much larger is not a key, and reading it whole would be unbounded.
const MAX_IMPORT_BYTES: u64 = 64 * 1024;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a new random 256-bit key, wrapped under a passphrase.
    Create { name: String },
    /// List keys: name, fingerprint, creation time (no passphrase needed).
    List,
    /// Export a key (still passphrase-wrapped) to a file, binary or printable paper form.
    Export(ExportArgs),
    /// Import an exported key file (binary or paper form).
    Import { file: PathBuf },
    /// Re-wrap a key under a new passphrase.
    ChangePassphrase(ChangePassphraseArgs),
    /// Recover a pool's key from the escrow in a cartridge's volume label (needs only
    /// the passphrase the key was escrowed under) and store it in the keystore.
    Recover(RecoverArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    pub name: String,
    /// Where to write the export (created with mode 0600; never overwritten).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Printable text with per-line checksums, for paper or a safe.
    #[arg(long)]
    pub paper: bool,
}

#[derive(Debug, Args)]
pub struct ChangePassphraseArgs {
    pub name: String,
    /// Read the new passphrase from this file (else $TAPEVAULT_NEW_PASSPHRASE, else a
    /// prompt with confirmation on a terminal).
    #[arg(long, value_name = "FILE")]
    pub new_passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// A cartridge of a media set written with key escrow (`pool create --escrow`).
    pub barcode: String,
    /// Name for the recovered key in the keystore (default: recovered-<fingerprint prefix>).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Serialize)]
struct ExportReport<'a> {
    name: &'a str,
    fingerprint: &'a str,
    file: &'a Path,
    form: &'static str,
}

#[derive(Serialize)]
struct RecoverReport<'a> {
    barcode: &'a str,
    key: &'a KeyInfo,
}

fn keystore(ctx: &Ctx) -> Result<Keystore> {
    let home = ctx.home()?;
    Ok(Keystore::open(&home.dir)?)
}

fn key_line(k: &KeyInfo) -> String {
    format!(
        "{:<24} {}  created {}",
        k.name,
        k.fingerprint,
        k.created.format("%Y-%m-%d %H:%M:%SZ")
    )
}

pub fn key(ctx: &Ctx, c: KeyCommand) -> Result<()> {
    match c {
        KeyCommand::Create { name } => {
            let ks = keystore(ctx)?;
            // Refuse a taken name before asking for a passphrase.
            if ks.list()?.iter().any(|k| k.name == name) {
                return Err(Error::Failed(format!(
                    "a key named {name} already exists; choose another name"
                )));
            }
            let pass = passphrase(&ctx.global, &format!("the new key {name}"), true)?;
            check_policy(&pass, &format!("the new key {name}"))?;
            let info = ks.create(&name, pass.as_bytes())?;
            ctx.out.emit(&info, || {
                format!(
                    "created key {} (fingerprint {})\nexport it now and store the export offsite: tapevault key export {} --out FILE [--paper]",
                    info.name, info.fingerprint, info.name
                )
            });
        }
        KeyCommand::List => {
            let keys = keystore(ctx)?.list()?;
            ctx.out.emit_list("keys", &keys, || {
                if keys.is_empty() {
                    "no keys (create one with `tapevault key create NAME`)".into()
                } else {
                    keys.iter().map(|k| key_line(k) + "\n").collect()
                }
            });
        }
        KeyCommand::Export(a) => {
            let ks = keystore(ctx)?;
            let info = ks.info(&a.name)?;
            if a.out.exists() {
                return usage(format!(
                    "{} already exists; tapevault does not overwrite key exports, choose another path",
                    a.out.display()
                ));
            }
            let pass = passphrase(&ctx.global, &format!("key {}", info.name), false)?;
            let bytes = if a.paper {
                ks.export_paper(&info.name, pass.as_bytes())?.into_bytes()
            } else {
                ks.export(&info.name, pass.as_bytes())?
            };
            write_new_private(&a.out, &bytes)?;
            let rep = ExportReport {
                name: &info.name,
                fingerprint: &info.fingerprint,
                file: &a.out,
                form: if a.paper { "paper" } else { "binary" },
            };
            ctx.out.emit(&rep, || {
                format!(
                    "exported key {} ({}) to {} ({} form, still wrapped under its passphrase)",
                    info.name,
                    info.fingerprint,
                    a.out.display(),
                    rep.form
                )
            });
        }
        KeyCommand::Import { file } => {
            let ks = keystore(ctx)?;
            let bytes = read_bounded(&file)?;
            let info = ks
                .import(&bytes)
                .with_context(|| format!("importing {}", file.display()))?;
            ctx.out.emit(&info, || {
                format!("imported key {} ({})", info.name, info.fingerprint)
            });
        }
        KeyCommand::ChangePassphrase(a) => {
            let ks = keystore(ctx)?;
            let info = ks.info(&a.name)?;
            let old = passphrase(&ctx.global, &format!("key {}", info.name), false)?;
            // Check the old passphrase before asking for a new one.
            ks.unlock(&info.name, old.as_bytes())?;
            let new = new_passphrase(a.new_passphrase_file.as_deref(), &info.name)?;
            check_policy(&new, &format!("key {}", info.name))?;
            ks.change_passphrase(&info.name, old.as_bytes(), new.as_bytes())?;
            ctx.out.emit(&info, || {
                format!(
                    "changed the passphrase of key {} ({}); earlier exports and escrow copies still open with the old passphrase",
                    info.name, info.fingerprint
                )
            });
        }
        KeyCommand::Recover(a) => recover(ctx, a)?,
    }
    Ok(())
}

/// Read the label of `barcode`, unwrap its escrow blob with the passphrase, and store
/// the key (wrapped under that same passphrase) in the keystore.
fn recover(ctx: &Ctx, a: RecoverArgs) -> Result<()> {
    let home = ctx.home()?;
    let ks = Keystore::open(&home.dir)?;
    let cat = open_catalog(&home)?;
    let mut lib = home.open_library()?;
    sync_inventory(&cat, lib.as_mut())?;
    let location = cat.media(&a.barcode)?.map(|r| r.location);
    let mut m = mount(lib.as_mut(), &a.barcode, location.as_deref())?;
    let found = read_label(m.drive.as_mut());
    let drive_index = m.drive_index;
    unmount(lib.as_mut(), m).with_context(|| format!("putting away drive {drive_index}"))?;
    let label = match found? {
        LabelRead::Label(l) => l,
        LabelRead::Blank => {
            return Err(Error::Failed(format!(
                "cartridge {} is blank: it has no label and no key escrow",
                a.barcode
            )))
        }
        LabelRead::Foreign(d) => {
            return Err(Error::Failed(format!(
                "cartridge {} does not hold a tapevault label ({d})",
                a.barcode
            )))
        }
    };
    if label.escrow.is_empty() {
        let fp = label
            .key_fingerprint
            .map(|f| crate::crypto::to_hex(&f))
            .unwrap_or_else(|| "none (not encrypted)".into());
        return Err(Error::Key(format!(
            "the label of cartridge {} carries no key escrow (key fingerprint {fp}); import the key from an export instead (tapevault key import FILE)",
            a.barcode
        )));
    }
    let fp = escrow::fingerprint(&label.escrow)?;
    let fp_hex = crate::crypto::to_hex(&fp);
    let name = a
        .name
        .unwrap_or_else(|| format!("recovered-{}", &fp_hex[..8]));
    let pass = passphrase(
        &ctx.global,
        &format!("the key escrowed on {} ({fp_hex})", a.barcode),
        false,
    )?;
    let key = escrow::unwrap(&label.escrow, pass.as_bytes()).map_err(|e| match e {
        crate::crypto::CryptoError::WrongPassphrase { .. } => Error::Key(format!(
            "wrong passphrase for the key {fp_hex} escrowed on cartridge {}",
            a.barcode
        )),
        other => other.into(),
    })?;
    // Already in the keystore under another name: nothing to add.
    if let Some(existing) = ks.list()?.into_iter().find(|k| k.fingerprint == fp_hex) {
        ctx.out.emit(
            &RecoverReport {
                barcode: &a.barcode,
                key: &existing,
            },
            || {
                format!(
                    "key {fp_hex} is already in the keystore as {}",
                    existing.name
                )
            },
        );
        return Ok(());
    }
    let info = ks.add(&name, &key, pass.as_bytes())?;
    ctx.out.emit(
        &RecoverReport {
            barcode: &a.barcode,
            key: &info,
        },
        || {
            format!(
                "recovered key {} ({}) from the escrow on {}",
                info.name, info.fingerprint, a.barcode
            )
        },
    );
    Ok(())
}

/// The new passphrase of `change-passphrase`: a file, the environment, or a prompt
/// (with confirmation) on a terminal; never a prompt without one (exit 5 instead).
fn new_passphrase(file: Option<&Path>, name: &str) -> Result<String> {
    if let Some(f) = file {
        let s = fs::read_to_string(f).map_err(|e| {
            Error::Key(format!(
                "cannot read the new passphrase file {}: {e}",
                f.display()
            ))
        })?;
        let s = s.trim_end_matches(['\n', '\r']).to_string();
        if s.is_empty() {
            return Err(Error::Key(format!(
                "the new passphrase file {} is empty",
                f.display()
            )));
        }
        return Ok(s);
    }
    if let Ok(s) = std::env::var(NEW_PASSPHRASE_ENV) {
        if !s.is_empty() {
            return Ok(s);
        }
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let read = |prompt: &str| {
            rpassword::prompt_password(prompt)
                .map_err(|e| Error::Key(format!("cannot read a passphrase: {e}")))
        };
        let p = read(&format!("New passphrase for key {name}: "))?;
        if p.is_empty() {
            return Err(Error::Key("an empty passphrase is not allowed".into()));
        }
        if read("Repeat the new passphrase: ")? != p {
            return Err(Error::Key("the new passphrases differ".into()));
        }
        return Ok(p);
    }
    Err(Error::Key(format!(
        "a new passphrase is needed for key {name}: give --new-passphrase-file FILE or set {NEW_PASSPHRASE_ENV} (no terminal to ask on)"
    )))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let f = fs::File::open(path)
        .map_err(|e| Error::Failed(format!("cannot open the key file {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(MAX_IMPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Failed(format!("cannot read the key file {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_IMPORT_BYTES {
        return Err(Error::Failed(format!(
            "{} is larger than {MAX_IMPORT_BYTES} bytes: not a tapevault key export",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Create `path` (mode 0600, failing if it exists), write and fsync it.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |op: &str, e: std::io::Error| {
        Error::Failed(format!(
            "cannot {op} the key export {}: {e}",
            path.display()
        ))
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err("create", e))?;
    let r = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| err("write", e));
    if r.is_err() {
        let _ = fs::remove_file(path);
    }
    r
}
