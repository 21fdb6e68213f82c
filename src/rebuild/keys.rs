//! Keys for reading cartridges: a key a label names is unlocked from the keystore, or
//! from the escrow blob the label carries, each once with its passphrase.

use std::collections::HashMap;

use crate::codec::KeyRing;
use crate::crypto::{self, Keystore};
use crate::error::{Error, Result};
use crate::home::Home;

/// Where passphrases come from (the CLI's `--passphrase-file`, environment or prompt).
pub type PassphraseFn<'a> = dyn FnMut(&str) -> Result<String> + 'a;

/// Keys for reading cartridges: from the keystore (by the fingerprint the label names)
/// or from the label's escrow blob, each unlocked once with the passphrase.
pub struct KeySource<'a> {
    home: &'a Home,
    pub ring: KeyRing,
    passphrase: &'a mut PassphraseFn<'a>,
    /// Keystore names of the keys unlocked, by fingerprint hex.
    names: HashMap<String, String>,
}

impl<'a> KeySource<'a> {
    pub fn new(home: &'a Home, passphrase: &'a mut PassphraseFn<'a>) -> Self {
        KeySource {
            home,
            ring: KeyRing::new(),
            passphrase,
            names: HashMap::new(),
        }
    }

    /// The keystore name of a key (or its fingerprint when it came from escrow).
    pub fn name_of(&self, fp_hex: &str) -> String {
        self.names
            .get(fp_hex)
            .cloned()
            .unwrap_or_else(|| fp_hex.to_string())
    }

    /// The home the keys come from.
    pub fn home_dir(&self) -> &std::path::Path {
        &self.home.dir
    }

    /// Make the key with this fingerprint available, or fail with [`Error::Key`] naming it.
    pub fn need(&mut self, fp: [u8; 16], escrow: &[u8], barcode: &str) -> Result<()> {
        if self.ring.has(&fp) {
            return Ok(());
        }
        let hex = crypto::to_hex(&fp);
        let ks = Keystore::open(&self.home.dir)?;
        match ks.info(&hex) {
            Ok(info) => {
                let pass = (self.passphrase)(&format!("key {}", info.name))?;
                let key = ks.unlock(&hex, pass.as_bytes())?;
                self.names.insert(hex, info.name);
                self.ring.add(key);
                Ok(())
            }
            Err(crypto::CryptoError::KeyMissing { .. }) if !escrow.is_empty() => {
                let inside = crypto::escrow::fingerprint(escrow).map_err(|e| {
                    Error::Key(format!(
                        "cartridge {barcode} needs key {hex}; it is not in the keystore and the label's escrow is unreadable ({e})"
                    ))
                })?;
                if inside != fp {
                    return Err(Error::Key(format!(
                        "cartridge {barcode} needs key {hex}; it is not in the keystore and the label's escrow holds another key ({})",
                        crypto::to_hex(&inside)
                    )));
                }
                let pass = (self.passphrase)(&format!(
                    "the key escrowed on cartridge {barcode} (fingerprint {hex})"
                ))?;
                let key = crypto::escrow::unwrap(escrow, pass.as_bytes())?;
                self.ring.add(key);
                Ok(())
            }
            Err(crypto::CryptoError::KeyMissing { .. }) => Err(Error::Key(format!(
                "cartridge {barcode} is encrypted with key {hex}, which is not in the keystore (and its label carries no escrow): import that key with `tapevault key import FILE`"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}
