//! What can go wrong talking to QEMU (QMP) or its guest agent, as typed values.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum QmpError {
    /// The socket could not be connected (no QEMU there, or no permission).
    #[error("cannot connect to {path}: {source} (is QEMU running with `-qmp unix:{path},server=on,wait=off`?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No answer within the time allowed.
    #[error("{path}: no answer to {what} in time")]
    Timeout { path: PathBuf, what: String },
    /// The other side closed the connection.
    #[error("{path}: the connection closed while waiting for {what}")]
    Closed { path: PathBuf, what: String },
    /// Something that is not QMP (or not the guest agent protocol).
    #[error("{path}: protocol error: {message}")]
    Protocol { path: PathBuf, message: String },
    /// QEMU refused a command: its error class and description.
    #[error("{command} failed: {desc} ({class})")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

impl QmpError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> QmpError {
        QmpError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The description of a refused command, if this is one.
    pub fn command_desc(&self) -> Option<&str> {
        match self {
            QmpError::Command { desc, .. } => Some(desc),
            _ => None,
        }
    }

    /// Whether QEMU answered "not found" for the object a command named (an export, a
    /// job, a node or a bitmap that is already gone).
    pub fn is_not_found(&self) -> bool {
        match self {
            QmpError::Command { class, desc, .. } => {
                class == "DeviceNotFound"
                    || desc.contains("not found")
                    || desc.contains("No job with id")
                    || desc.contains("Cannot find device")
                    || desc.contains("Failed to find node")
            }
            _ => false,
        }
    }
}
