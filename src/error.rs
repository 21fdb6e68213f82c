//! The top-level error of tapevault's jobs and the one place where each kind of failure
//! maps to the documented exit code (docs/CLI.md).

use tape_devices::changer::ChangerError;
use tape_devices::drive::DriveError;

/// Documented exit codes. Scripts depend on these numbers: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    /// The operation failed (I/O, busy, bad state, ...).
    Failed = 1,
    /// The command line was wrong.
    Usage = 2,
    /// Integrity failure: checksum, authentication, missing or out-of-order record.
    Integrity = 3,
    /// A cartridge is needed that is not available (not in the library, full, none free).
    MediaNeeded = 4,
    /// A key is missing, or its passphrase is wrong.
    Key = 5,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Integrity(String),
    #[error("{0}")]
    MediaNeeded(String),
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Drive(#[from] DriveError),
    #[error(transparent)]
    Changer(#[from] ChangerError),
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::Failed(_) => ExitCode::Failed,
            Error::Integrity(_) => ExitCode::Integrity,
            Error::MediaNeeded(_) => ExitCode::MediaNeeded,
            Error::Key(_) => ExitCode::Key,
            Error::Drive(e) => drive_exit_code(e),
            Error::Changer(e) => match e {
                ChangerError::NotInLibrary { .. }
                | ChangerError::NoFreeElement { .. }
                | ChangerError::SourceEmpty { .. } => ExitCode::MediaNeeded,
                ChangerError::Drive(d) => drive_exit_code(d),
                _ => ExitCode::Failed,
            },
            Error::Context { source, .. } => source.exit_code(),
        }
    }

    /// A short machine-readable name of the kind, for `--json` error output.
    pub fn kind(&self) -> &'static str {
        match self.exit_code() {
            ExitCode::Success => "ok",
            ExitCode::Failed => "failed",
            ExitCode::Usage => "usage",
            ExitCode::Integrity => "integrity",
            ExitCode::MediaNeeded => "media-needed",
            ExitCode::Key => "key",
        }
    }
}

fn drive_exit_code(e: &DriveError) -> ExitCode {
    match e {
        DriveError::NoMedium { .. } | DriveError::EndOfMedium | DriveError::EarlyWarning => {
            ExitCode::MediaNeeded
        }
        DriveError::MediaError { .. } => ExitCode::Integrity,
        DriveError::EncryptedNoKey { .. } => ExitCode::Key,
        _ => ExitCode::Failed,
    }
}

/// Adds "while doing X" context to errors on their way up.
pub trait Context<T> {
    fn context<C: Into<String>>(self, c: C) -> Result<T>;
    fn with_context<C: Into<String>, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context<C: Into<String>>(self, c: C) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: c.into(),
            source: Box::new(e.into()),
        })
    }
    fn with_context<C: Into<String>, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: f().into(),
            source: Box::new(e.into()),
        })
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Failed(e.to_string())
    }
}

impl From<crate::catalog::CatalogError> for Error {
    fn from(e: crate::catalog::CatalogError) -> Self {
        use crate::catalog::CatalogError as C;
        match e {
            C::BrokenChain { .. } => Error::Integrity(e.to_string()),
            _ => Error::Failed(e.to_string()),
        }
    }
}

impl From<crate::crypto::CryptoError> for Error {
    fn from(e: crate::crypto::CryptoError) -> Self {
        use crate::crypto::CryptoError as C;
        match e {
            // A damaged key file (in the keystore, a label's escrow or an import) is a
            // key that cannot be used: exit 5 like a missing one.
            C::WrongPassphrase { .. } | C::KeyMissing { .. } | C::Corrupt { .. } => {
                Error::Key(e.to_string())
            }
            _ => Error::Failed(e.to_string()),
        }
    }
}
