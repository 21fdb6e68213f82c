//! Where passphrases come from: `--passphrase-file`, `$TAPEVAULT_PASSPHRASE`, or a
//! prompt on a terminal. Never a prompt without a terminal: scripts get exit 5 instead.

use std::io::IsTerminal;

use super::GlobalArgs;
use crate::error::{Error, Result};

pub const PASSPHRASE_ENV: &str = "TAPEVAULT_PASSPHRASE";

pub fn passphrase(g: &GlobalArgs, purpose: &str, confirm: bool) -> Result<String> {
    if let Some(f) = &g.passphrase_file {
        let s = std::fs::read_to_string(f).map_err(|e| {
            Error::Key(format!(
                "cannot read the passphrase file {}: {e}",
                f.display()
            ))
        })?;
        let s = s.trim_end_matches(['\n', '\r']).to_string();
        if s.is_empty() {
            return Err(Error::Key(format!(
                "the passphrase file {} is empty",
                f.display()
            )));
        }
        return Ok(s);
    }
    if let Ok(s) = std::env::var(PASSPHRASE_ENV) {
        if !s.is_empty() {
            return Ok(s);
        }
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let p = rpassword::prompt_password(format!("Passphrase for {purpose}: "))
            .map_err(|e| Error::Key(format!("cannot read a passphrase: {e}")))?;
        if confirm {
            let q = rpassword::prompt_password("Repeat the passphrase: ")
                .map_err(|e| Error::Key(format!("cannot read a passphrase: {e}")))?;
            if p != q {
                return Err(Error::Key("the passphrases differ".into()));
            }
        }
        if p.is_empty() {
            return Err(Error::Key("an empty passphrase is not allowed".into()));
        }
        return Ok(p);
    }
    Err(Error::Key(format!(
        "a passphrase is needed for {purpose}: give --passphrase-file FILE or set {PASSPHRASE_ENV} (no terminal to ask on)"
    )))
}
