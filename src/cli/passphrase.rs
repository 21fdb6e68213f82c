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

/// The shortest passphrase a key may get (`key create`, `key change-passphrase`).
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// The fewest different characters it must hold (refuses `aaaaaaaaaaaa`).
pub const MIN_PASSPHRASE_DISTINCT: usize = 5;

/// The passphrase policy (docs/ENCRYPTION.md): a new key passphrase must have at least
/// [`MIN_PASSPHRASE_CHARS`] characters (Unicode scalar values, not bytes) of which at
/// least [`MIN_PASSPHRASE_DISTINCT`] differ. The same passphrase wraps the key in the
/// keystore, in exports and in the escrow copy on every label of an escrowing pool,
/// where anyone holding a cartridge can guess offline. A usage error (exit 2) naming
/// the rule otherwise.
pub fn check_policy(pass: &str, what: &str) -> Result<()> {
    let n = pass.chars().count();
    let distinct = pass.chars().collect::<std::collections::HashSet<_>>().len();
    if n < MIN_PASSPHRASE_CHARS {
        return Err(Error::Usage(format!(
            "the passphrase for {what} is too short ({n} characters): a key passphrase needs at least {MIN_PASSPHRASE_CHARS} characters (e.g. four or more random words)"
        )));
    }
    if distinct < MIN_PASSPHRASE_DISTINCT {
        return Err(Error::Usage(format!(
            "the passphrase for {what} repeats too few characters ({distinct} different): a key passphrase needs at least {MIN_PASSPHRASE_DISTINCT} different characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_policy;

    #[test]
    fn policy_counts_characters_not_bytes_and_wants_variety() {
        assert!(check_policy("short", "k").is_err());
        assert!(check_policy("elevenchars", "k").is_err());
        assert!(check_policy("twelve chars", "k").is_ok());
        assert!(check_policy("aaaaaaaaaaaaaaaa", "k").is_err());
        assert!(check_policy("ababababababab", "k").is_err());
        // 11 characters of 2 bytes each: 22 bytes, still too short.
        assert!(check_policy("ééééééééééé", "k").is_err());
        assert!(check_policy("correct horse battery staple", "k").is_ok());
    }
}
