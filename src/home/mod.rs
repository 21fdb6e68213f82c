//! The tapevault home: configuration, catalog, keystore, digest lists, and (by default)
//! the virtual library directory.

pub mod clock;
pub mod locks;
pub mod pools_toml;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use tape_devices::changer::r#virtual::VirtualLibrary;
use tape_devices::changer::TapeLibrary;

/// Name of the configuration file inside the home.
pub const CONFIG_FILE: &str = "config.toml";

/// Which library the home uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LibraryConfig {
    /// The file-backed virtual library in a directory.
    Virtual { path: PathBuf },
    /// A real SCSI media changer (its sg node) and its drives (st nodes) in drive
    /// element order.
    Scsi {
        changer: PathBuf,
        drives: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    pub library: LibraryConfig,
    /// How long a job waits for a needed cartridge on a terminal before failing with
    /// exit 4 (seconds). Without a terminal it fails at once.
    #[serde(default = "default_media_wait")]
    pub media_wait_secs: u64,
    /// The pool `backup` and `label` use when `--pool` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pool: Option<String>,
    /// Where key passphrases come from when neither `--passphrase-file` nor
    /// `$TAPEVAULT_PASSPHRASE` is given (before a prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<PathBuf>,
    /// A shell command run at the end of every command with its JSON result on stdin
    /// (docs/CLI.md, "Hook"); its failure is a warning, never the command's failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// How long the hook may run before it is stopped (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_timeout_secs: Option<u64>,
    /// Run the hook only after these commands (e.g. `["backup", "rotate", "catalog
    /// rebuild"]`; a name matches itself and its subcommands). Default: every command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_on: Option<Vec<String>>,
    /// Where a backup's spool file goes (`backup --spool-dir` overrides it); default
    /// `spool/` in the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,
}

impl Config {
    /// A configuration with this library and every other setting at its default.
    pub fn new(library: LibraryConfig) -> Config {
        Config {
            library,
            media_wait_secs: default_media_wait(),
            default_pool: None,
            passphrase_file: None,
            hook: None,
            hook_timeout_secs: None,
            hook_on: None,
            spool_dir: None,
        }
    }
}

fn default_media_wait() -> u64 {
    300
}

#[derive(Debug, Clone)]
pub struct Home {
    pub dir: PathBuf,
    pub config: Config,
}

impl Home {
    /// `--home DIR`, else `$TAPEVAULT_HOME`, else the XDG data dir.
    pub fn resolve(arg: Option<&Path>) -> PathBuf {
        if let Some(p) = arg {
            return p.to_path_buf();
        }
        if let Some(p) = std::env::var_os("TAPEVAULT_HOME").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
            return PathBuf::from(p).join("tapevault");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| ".".into());
        home.join(".local/share/tapevault")
    }

    /// Where `init` puts a new virtual library by default: beside the home, never inside
    /// it (`<home>-library`, e.g. `~/.local/share/tapevault-library`), so losing the home
    /// (the catalog) does not lose the cartridges a `catalog rebuild` needs.
    pub fn default_library_dir(home: &Path) -> PathBuf {
        let name = home
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .unwrap_or_else(|| "tapevault".into());
        home.with_file_name(format!("{name}-library"))
    }

    pub fn is_initialised(dir: &Path) -> bool {
        dir.join(CONFIG_FILE).is_file()
    }

    pub fn open(dir: &Path) -> Result<Home> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Failed(format!(
                    "{} is not a tapevault home (no {CONFIG_FILE}); run `tapevault init` first",
                    dir.display()
                ))
            } else {
                Error::Failed(format!("cannot read {}: {e}", path.display()))
            }
        })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| Error::Failed(format!("{} is not valid: {e}", path.display())))?;
        Ok(Home {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// Create the home directory and its configuration.
    pub fn create(dir: &Path, config: Config) -> Result<Home> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let home = Home {
            dir: dir.to_path_buf(),
            config,
        };
        home.save_config()?;
        std::fs::create_dir_all(home.digests_dir())?;
        Ok(home)
    }

    pub fn save_config(&self) -> Result<()> {
        let text = toml::to_string_pretty(&self.config)
            .map_err(|e| Error::Failed(format!("serialising config: {e}")))?;
        let path = self.dir.join(CONFIG_FILE);
        let tmp = self.dir.join(format!("{CONFIG_FILE}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.dir.join("catalog.db")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// Per-image block digest lists (hash-scan incrementals).
    pub fn digests_dir(&self) -> PathBuf {
        self.dir.join("digests")
    }

    /// Lock files of jobs (media sets, cartridges).
    pub fn locks_dir(&self) -> PathBuf {
        self.dir.join("locks")
    }

    /// The virtual library directory, when the home uses one.
    pub fn virtual_library_dir(&self) -> Option<&Path> {
        match &self.config.library {
            LibraryConfig::Virtual { path } => Some(path),
            LibraryConfig::Scsi { .. } => None,
        }
    }

    pub fn open_virtual_library(&self) -> Result<VirtualLibrary> {
        match &self.config.library {
            LibraryConfig::Virtual { path } => Ok(VirtualLibrary::open(path)
                .with_context(|| format!("opening the virtual library {}", path.display()))?),
            LibraryConfig::Scsi { .. } => Err(Error::Usage(
                "this home uses a real SCSI library; this command is for the virtual library only"
                    .into(),
            )),
        }
    }

    /// Open the configured library (virtual or real).
    pub fn open_library(&self) -> Result<Box<dyn TapeLibrary>> {
        match &self.config.library {
            LibraryConfig::Virtual { .. } => Ok(Box::new(self.open_virtual_library()?)),
            LibraryConfig::Scsi { changer, drives } => Ok(Box::new(
                tape_devices::changer::scsi::ScsiLibrary::open(changer, drives)
                    .with_context(|| format!("opening the SCSI changer {}", changer.display()))?,
            )),
        }
    }
}

/// Parse a size such as `4G`, `64MiB`, `100M`, `512k` or `1048576` (binary multiples).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4G, 64MiB, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("'{s}' has an unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
