//! Typed errors of the client.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::proto;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Why an option was refused during the handshake (`NBD_REP_ERR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionErrorKind {
    /// `NBD_REP_ERR_UNSUP`: the server does not know the option.
    Unsupported,
    /// `NBD_REP_ERR_POLICY`: known but forbidden by the server's policy.
    Policy,
    /// `NBD_REP_ERR_INVALID`: the server found the request invalid.
    Invalid,
    /// `NBD_REP_ERR_PLATFORM`: not supported on the server's platform.
    Platform,
    /// `NBD_REP_ERR_TLS_REQD`: the server requires TLS first.
    TlsRequired,
    /// `NBD_REP_ERR_UNKNOWN`: the export does not exist.
    UnknownExport,
    /// `NBD_REP_ERR_SHUTDOWN`: the server is shutting down.
    Shutdown,
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: the client must request block sizes.
    BlockSizeRequired,
    /// `NBD_REP_ERR_TOO_BIG`: the request or reply would be too large.
    TooBig,
    /// `NBD_REP_ERR_EXT_HEADER_REQD`: extended headers are required.
    ExtendedHeadersRequired,
    /// An error reply type this client does not know (the raw value).
    Other(u32),
}

impl OptionErrorKind {
    pub(crate) fn from_reply(reply: u32) -> OptionErrorKind {
        match reply {
            proto::REP_ERR_UNSUP => OptionErrorKind::Unsupported,
            proto::REP_ERR_POLICY => OptionErrorKind::Policy,
            proto::REP_ERR_INVALID => OptionErrorKind::Invalid,
            proto::REP_ERR_PLATFORM => OptionErrorKind::Platform,
            proto::REP_ERR_TLS_REQD => OptionErrorKind::TlsRequired,
            proto::REP_ERR_UNKNOWN => OptionErrorKind::UnknownExport,
            proto::REP_ERR_SHUTDOWN => OptionErrorKind::Shutdown,
            proto::REP_ERR_BLOCK_SIZE_REQD => OptionErrorKind::BlockSizeRequired,
            proto::REP_ERR_TOO_BIG => OptionErrorKind::TooBig,
            proto::REP_ERR_EXT_HEADER_REQD => OptionErrorKind::ExtendedHeadersRequired,
            other => OptionErrorKind::Other(other),
        }
    }
}

impl fmt::Display for OptionErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionErrorKind::Unsupported => f.write_str("NBD_REP_ERR_UNSUP"),
            OptionErrorKind::Policy => f.write_str("NBD_REP_ERR_POLICY"),
            OptionErrorKind::Invalid => f.write_str("NBD_REP_ERR_INVALID"),
            OptionErrorKind::Platform => f.write_str("NBD_REP_ERR_PLATFORM"),
            OptionErrorKind::TlsRequired => f.write_str("NBD_REP_ERR_TLS_REQD"),
            OptionErrorKind::UnknownExport => f.write_str("NBD_REP_ERR_UNKNOWN"),
            OptionErrorKind::Shutdown => f.write_str("NBD_REP_ERR_SHUTDOWN"),
            OptionErrorKind::BlockSizeRequired => f.write_str("NBD_REP_ERR_BLOCK_SIZE_REQD"),
            OptionErrorKind::TooBig => f.write_str("NBD_REP_ERR_TOO_BIG"),
            OptionErrorKind::ExtendedHeadersRequired => f.write_str("NBD_REP_ERR_EXT_HEADER_REQD"),
            OptionErrorKind::Other(v) => write!(f, "error reply type 0x{v:08x}"),
        }
    }
}

/// Everything that can go wrong talking to an NBD server.
///
/// After [`Error::Io`], [`Error::Timeout`], [`Error::Closed`] and [`Error::Protocol`] the
/// connection is out of step with the server and every later call returns
/// [`Error::Broken`]. [`Error::Server`] (an error the server reported for one command)
/// leaves the connection usable, except for `ESHUTDOWN`, after which the client disconnects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on the socket.
    #[error("NBD I/O error while {during}: {source}")]
    Io {
        /// What the client was doing.
        during: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The server did not answer within the per-operation timeout.
    #[error(
        "the NBD server did not answer within {timeout:?} while {during}; the connection was given up (raise the timeout if the server is just slow)"
    )]
    Timeout {
        /// What the client was doing.
        during: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The server closed the connection (end of stream) where more data was due.
    #[error("the NBD server closed the connection while {during}")]
    Closed {
        /// What the client was doing.
        during: String,
    },
    /// The server sent something the protocol does not allow (bad magic, wrong cookie,
    /// a chunk outside the request, an oversized length, a missing DONE flag, ...).
    #[error("NBD protocol violation by the server: {0}")]
    Protocol(String),
    /// The server refused an option during the handshake.
    #[error("the NBD server refused {option} ({kind}){}", message_suffix(message))]
    OptionRefused {
        /// The option's name, e.g. `NBD_OPT_GO`.
        option: &'static str,
        /// Which `NBD_REP_ERR_*` the server sent.
        kind: OptionErrorKind,
        /// The server's message (may be empty).
        message: String,
    },
    /// A meta context requested with `NBD_OPT_SET_META_CONTEXT` was not granted
    /// (for `qemu:dirty-bitmap:NAME` this usually means the bitmap is not exported).
    #[error(
        "the NBD server did not grant meta context {missing:?} on export {export:?} (granted: {}); for a qemu dirty bitmap, export it (qemu-nbd -B NAME, or block-export-add bitmaps)",
        granted_list(granted)
    )]
    MetaContextNotGranted {
        /// The export the contexts were requested for.
        export: String,
        /// The first requested context that is missing.
        missing: String,
        /// The contexts the server did grant.
        granted: Vec<String>,
    },
    /// The server answered one command with an error.
    #[error(
        "NBD {command} of {length} bytes at offset {offset} failed on the server: {} (errno {errno}){}{}",
        errno_name(*errno),
        error_offset.map(|o| format!(" at offset {o}")).unwrap_or_default(),
        message_suffix(message)
    )]
    Server {
        /// The command, e.g. `NBD_CMD_READ`.
        command: &'static str,
        /// The request's offset.
        offset: u64,
        /// The request's length.
        length: u64,
        /// The NBD error value (an errno: 1 EPERM, 5 EIO, 12 ENOMEM, 22 EINVAL, 28 ENOSPC,
        /// 75 EOVERFLOW, 95 ENOTSUP, 108 ESHUTDOWN).
        errno: u32,
        /// The offset the error applies to, from an `NBD_REPLY_TYPE_ERROR_OFFSET` chunk.
        error_offset: Option<u64>,
        /// The server's message (may be empty).
        message: String,
    },
    /// The export or the negotiated features do not allow the operation (checked before
    /// anything is sent).
    #[error("{0}")]
    Unsupported(String),
    /// The caller's arguments are out of range (checked before anything is sent).
    #[error("{0}")]
    InvalidArgument(String),
    /// TLS could not be set up: unreadable credentials, a certificate that does not
    /// verify, or a failed TLS handshake.
    #[error("NBD over TLS: {0}")]
    Tls(String),
    /// An earlier failure left the connection unusable.
    #[error("the NBD connection is unusable after an earlier failure ({0}); reconnect")]
    Broken(String),
}

impl Error {
    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// Whether this error leaves the connection out of step with the server.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::Timeout { .. } | Error::Closed { .. } | Error::Protocol(_)
        )
    }
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

fn granted_list(granted: &[String]) -> String {
    if granted.is_empty() {
        "none".to_string()
    } else {
        granted.join(", ")
    }
}

/// The symbolic name of an NBD error value.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        proto::EPERM => "EPERM",
        proto::EIO => "EIO",
        proto::ENOMEM => "ENOMEM",
        proto::EINVAL => "EINVAL",
        proto::ENOSPC => "ENOSPC",
        proto::EOVERFLOW => "EOVERFLOW",
        proto::ENOTSUP => "ENOTSUP",
        proto::ESHUTDOWN => "ESHUTDOWN",
        _ => "unknown error",
    }
}

/// Maps an I/O error of the transport to the typed error.
pub(crate) fn io_error(during: &str, e: io::Error, timeout: Option<Duration>) -> Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Error::Closed {
            during: during.to_string(),
        },
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => match timeout {
            Some(timeout) => Error::Timeout {
                during: during.to_string(),
                timeout,
            },
            None => Error::Io {
                during: during.to_string(),
                source: e,
            },
        },
        _ => Error::Io {
            during: during.to_string(),
            source: e,
        },
    }
}
