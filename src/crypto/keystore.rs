//! The keystore: `<home>/keys/<name>.key`, one passphrase-wrapped record key per
//! file (mode 0600; layout in `wrap.rs`), plus the nonce counters of
//! [`super::nonces`]. Keys never leave it unwrapped; exports are the wrapped file
//! itself (binary or paper).

use super::nonces::NonceSource;
use super::record::RecordKey;
use super::wrap::{Wrapped, KEYFILE_MAGIC, MAX_NAME_LEN};
use super::{from_hex, paper, to_hex, CryptoError, KdfParams, FINGERPRINT_LEN};
use chrono::{DateTime, TimeZone, Utc};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest key file read (a real one is ~150 bytes); bounds reads of stray files.
const MAX_KEYFILE_BYTES: u64 = 64 * 1024;
const KEY_SUFFIX: &str = ".key";

/// What can be shown about a key without its passphrase.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub name: String,
    /// 32 lowercase hex digits.
    pub fingerprint: String,
    pub created: DateTime<Utc>,
}

impl KeyInfo {
    fn of(w: &Wrapped) -> KeyInfo {
        KeyInfo {
            name: w.name.clone(),
            fingerprint: to_hex(&w.fingerprint),
            created: Utc.timestamp_opt(w.created, 0).single().unwrap_or_default(),
        }
    }
}

/// A directory of wrapped keys.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
    kdf: KdfParams,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Write `bytes` to `path` atomically (temp file, fsync, rename, fsync dir), mode 0600.
pub(crate) fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<(), CryptoError> {
    write_private(path, bytes, false)
}

/// As [`write_private_atomic`], but fail with `AlreadyExists` instead of replacing an
/// existing file (hard link instead of rename), so two concurrent creates of one name
/// cannot silently overwrite each other.
fn write_private_new(path: &Path, bytes: &[u8]) -> Result<(), CryptoError> {
    write_private(path, bytes, true)
}

fn write_private(path: &Path, bytes: &[u8], no_clobber: bool) -> Result<(), CryptoError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Unique per process and per call, so concurrent writers never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{seq}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| CryptoError::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| CryptoError::io("write", &tmp, e))?;
        f.sync_all()
            .map_err(|e| CryptoError::io("fsync", &tmp, e))?;
        if no_clobber {
            fs::hard_link(&tmp, path).map_err(|e| CryptoError::io("create", path, e))?;
            fs::remove_file(&tmp).map_err(|e| CryptoError::io("remove", &tmp, e))?;
        } else {
            fs::rename(&tmp, path).map_err(|e| CryptoError::io("rename into place", path, e))?;
        }
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| CryptoError::io("fsync directory", dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What to do about a damaged key file in the keystore.
const DAMAGED_WAY_OUT: &str = "move the file out of the keystore and import the key again from its export (tapevault key import FILE) or recover it from a cartridge label (tapevault key recover BARCODE)";

impl Keystore {
    /// Open (creating if needed, mode 0700) the keystore of a tapevault home.
    pub fn open(home: &Path) -> Result<Keystore, CryptoError> {
        let dir = home.join("keys");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| CryptoError::io("create keystore directory", &dir, e))?;
        Ok(Keystore {
            dir,
            kdf: KdfParams::default(),
        })
    }

    /// Use these argon2id parameters for keys wrapped from now on (existing files keep
    /// theirs). Tests pass [`KdfParams::INSECURE_FOR_TESTS`].
    pub fn with_kdf(mut self, kdf: KdfParams) -> Keystore {
        self.kdf = kdf;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{KEY_SUFFIX}"))
    }

    fn read(&self, path: &Path) -> Result<Wrapped, CryptoError> {
        let what = path.display().to_string();
        let meta = fs::metadata(path).map_err(|e| CryptoError::io("read", path, e))?;
        if meta.len() > MAX_KEYFILE_BYTES {
            return Err(CryptoError::Corrupt {
                what,
                reason: format!(
                    "{} bytes is too large for a key file; {DAMAGED_WAY_OUT}",
                    meta.len()
                ),
            });
        }
        let bytes = fs::read(path).map_err(|e| CryptoError::io("read", path, e))?;
        Wrapped::decode(&bytes, KEYFILE_MAGIC, &what).map_err(|e| match e {
            CryptoError::Corrupt { what, reason } => CryptoError::Corrupt {
                what,
                reason: format!("{reason}; {DAMAGED_WAY_OUT}"),
            },
            other => other,
        })
    }

    fn all(&self) -> Result<Vec<Wrapped>, CryptoError> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| CryptoError::io("list", &self.dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| CryptoError::io("list", &self.dir, e))?;
            let fname = entry.file_name();
            let Some(name) = fname.to_str().and_then(|n| n.strip_suffix(KEY_SUFFIX)) else {
                continue;
            };
            if !valid_name(name) {
                continue;
            }
            out.push(self.read(&entry.path())?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Find a key by name, or by fingerprint (full 32 hex digits).
    fn find(&self, name_or_fp: &str) -> Result<Wrapped, CryptoError> {
        if valid_name(name_or_fp) && self.path_of(name_or_fp).exists() {
            return self.read(&self.path_of(name_or_fp));
        }
        if let Some(fp) = from_hex(name_or_fp).filter(|b| b.len() == FINGERPRINT_LEN) {
            if let Some(w) = self
                .all()?
                .into_iter()
                .find(|w| w.fingerprint[..] == fp[..])
            {
                return Ok(w);
            }
        }
        Err(CryptoError::KeyMissing {
            wanted: name_or_fp.to_string(),
            dir: self.dir.clone(),
        })
    }

    /// Create a new random key named `name`, wrapped under `passphrase`.
    pub fn create(&self, name: &str, passphrase: &[u8]) -> Result<KeyInfo, CryptoError> {
        self.add(name, &RecordKey::generate(), passphrase)
    }

    /// Store an existing key (e.g. one recovered from a cartridge's escrow blob).
    /// Storing the same key again under the same name is a no-op.
    pub fn add(
        &self,
        name: &str,
        key: &RecordKey,
        passphrase: &[u8],
    ) -> Result<KeyInfo, CryptoError> {
        if !valid_name(name) {
            return Err(CryptoError::InvalidName { name: name.into() });
        }
        if self.path_of(name).exists() {
            let existing = self.read(&self.path_of(name))?;
            if existing.fingerprint == key.fingerprint {
                return Ok(KeyInfo::of(&existing));
            }
            return Err(CryptoError::DuplicateName {
                name: name.into(),
                existing: to_hex(&existing.fingerprint),
            });
        }
        let w = Wrapped::seal(
            KEYFILE_MAGIC,
            key.raw(),
            name,
            Utc::now().timestamp(),
            passphrase,
            self.kdf,
        )?;
        self.store_new(name, &w.encode(), &w)
    }

    /// Write a new key file; if the name was taken meanwhile, the same key is a no-op
    /// and a different key a [`CryptoError::DuplicateName`].
    fn store_new(&self, name: &str, blob: &[u8], w: &Wrapped) -> Result<KeyInfo, CryptoError> {
        let path = self.path_of(name);
        match write_private_new(&path, blob) {
            Ok(()) => Ok(KeyInfo::of(w)),
            Err(CryptoError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                let existing = self.read(&path)?;
                if existing.fingerprint == w.fingerprint {
                    Ok(KeyInfo::of(&existing))
                } else {
                    Err(CryptoError::DuplicateName {
                        name: name.into(),
                        existing: to_hex(&existing.fingerprint),
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Every key, by name.
    pub fn list(&self) -> Result<Vec<KeyInfo>, CryptoError> {
        Ok(self.all()?.iter().map(KeyInfo::of).collect())
    }

    /// Information on one key (by name or fingerprint) without unlocking it.
    pub fn info(&self, name_or_fingerprint: &str) -> Result<KeyInfo, CryptoError> {
        Ok(KeyInfo::of(&self.find(name_or_fingerprint)?))
    }

    /// Unlock a key for use. Errors: [`CryptoError::KeyMissing`] naming what was asked
    /// for, [`CryptoError::WrongPassphrase`].
    pub fn unlock(
        &self,
        name_or_fingerprint: &str,
        passphrase: &[u8],
    ) -> Result<RecordKey, CryptoError> {
        let w = self.find(name_or_fingerprint)?;
        Ok(RecordKey::from_bytes(*w.open(passphrase)?))
    }

    /// The key file, self-contained (still wrapped under its passphrase). The
    /// passphrase is checked first so an export is known to be recoverable.
    pub fn export(&self, name: &str, passphrase: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let w = self.find(name)?;
        w.open(passphrase)?;
        Ok(w.encode())
    }

    /// The key file as printable text (see [`paper`]).
    pub fn export_paper(&self, name: &str, passphrase: &[u8]) -> Result<String, CryptoError> {
        let w = self.find(name)?;
        w.open(passphrase)?;
        Ok(paper::encode(&w.encode(), &w.name, &to_hex(&w.fingerprint)))
    }

    /// Import an exported key, binary or paper text. Importing the same key twice is a
    /// no-op; a different key under an existing name is refused.
    pub fn import(&self, bytes_or_paper: &[u8]) -> Result<KeyInfo, CryptoError> {
        // Anything that is not a binary key file but is text is read as paper, so a
        // retyped key without its header lines still gets line-by-line checking.
        let is_binary = bytes_or_paper.starts_with(KEYFILE_MAGIC);
        let blob = if !is_binary
            && (paper::is_paper(bytes_or_paper) || std::str::from_utf8(bytes_or_paper).is_ok())
        {
            let text = std::str::from_utf8(bytes_or_paper).map_err(|_| CryptoError::Paper {
                line: 0,
                reason: "not UTF-8 text".into(),
            })?;
            paper::decode(text)?
        } else {
            bytes_or_paper.to_vec()
        };
        let w = Wrapped::decode(&blob, KEYFILE_MAGIC, "imported key")?;
        if !valid_name(&w.name) {
            return Err(CryptoError::InvalidName {
                name: w.name.clone(),
            });
        }
        let path = self.path_of(&w.name);
        if path.exists() {
            let existing = self.read(&path)?;
            if existing.fingerprint == w.fingerprint {
                return Ok(KeyInfo::of(&existing));
            }
            return Err(CryptoError::DuplicateName {
                name: w.name.clone(),
                existing: to_hex(&existing.fingerprint),
            });
        }
        self.store_new(&w.name, &blob, &w)
    }

    /// Re-wrap a key under a new passphrase (new salt, current KDF parameters).
    pub fn change_passphrase(&self, name: &str, old: &[u8], new: &[u8]) -> Result<(), CryptoError> {
        let w = self.find(name)?;
        let key = w.open(old)?;
        let rewrapped = Wrapped::seal(KEYFILE_MAGIC, &key, &w.name, w.created, new, self.kdf)?;
        write_private_atomic(&self.path_of(&w.name), &rewrapped.encode())
    }

    /// The nonce source for a key, persisted in this keystore.
    pub fn nonce_source(
        &self,
        fingerprint: &[u8; FINGERPRINT_LEN],
    ) -> Result<NonceSource, CryptoError> {
        NonceSource::open(&self.dir, fingerprint)
    }
}
