//! Opening an input file without ever blocking, and refusing what is not the kind of
//! file it should be.
//!
//! `open(2)` of a FIFO without a writer blocks for ever, and so does a read of a FIFO,
//! a terminal or a character device that has nothing to give. Every input of a job
//! (manifest, disk, changed-extents file) is therefore opened with `O_NONBLOCK`, its
//! kind taken from `fstat` of the opened descriptor (so a file swapped between a check
//! and the open cannot slip through), and anything but the accepted kinds refused
//! before a lock is taken or a session starts. `O_NONBLOCK` is then cleared: it has no
//! effect on regular files and block devices anyway.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// What an input may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Only a regular file (manifests, changed-extents files).
    RegularFile,
    /// A regular file or a block device (disks).
    FileOrBlockDevice,
}

#[derive(Debug, Error)]
pub enum InputError {
    #[error("{role} {path} does not exist; check the path")]
    Missing { role: String, path: PathBuf },
    #[error("{role} {path} cannot be read ({source}); check its permissions")]
    Unreadable {
        role: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{role} {path} is {kind}, not {wanted}; give {wanted}")]
    WrongKind {
        role: String,
        path: PathBuf,
        kind: &'static str,
        wanted: &'static str,
    },
}

impl InputError {
    pub fn path(&self) -> &Path {
        match self {
            InputError::Missing { path, .. }
            | InputError::Unreadable { path, .. }
            | InputError::WrongKind { path, .. } => path,
        }
    }
}

/// A human name for the kind of file `meta` describes ("a FIFO (named pipe)", ...).
pub fn kind_name(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn accepted(meta: &Metadata, accept: Accept) -> bool {
    let ft = meta.file_type();
    match accept {
        Accept::RegularFile => ft.is_file(),
        Accept::FileOrBlockDevice => ft.is_file() || ft.is_block_device(),
    }
}

fn wanted(accept: Accept) -> &'static str {
    match accept {
        Accept::RegularFile => "a regular file",
        Accept::FileOrBlockDevice => "a raw image file or a block device",
    }
}

/// Opens `path` read-only without blocking and checks its kind; `role` names the input
/// in errors ("disk", "manifest", ...). Returns the open file (blocking mode restored)
/// and its metadata.
pub fn open_checked(
    path: &Path,
    role: &str,
    accept: Accept,
) -> Result<(File, Metadata), InputError> {
    let wrong = |meta: &Metadata| InputError::WrongKind {
        role: role.to_string(),
        path: path.to_path_buf(),
        kind: kind_name(meta),
        wanted: wanted(accept),
    };
    // stat first (never blocks): a FIFO or a socket is named as what it is rather
    // than opened (opening a socket fails with an obscure ENXIO).
    match std::fs::metadata(path) {
        Ok(meta) if !accepted(&meta, accept) => return Err(wrong(&meta)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InputError::Missing {
                role: role.to_string(),
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(InputError::Unreadable {
                role: role.to_string(),
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => InputError::Missing {
                role: role.to_string(),
                path: path.to_path_buf(),
            },
            _ => InputError::Unreadable {
                role: role.to_string(),
                path: path.to_path_buf(),
                source,
            },
        })?;
    // The kind of what was really opened (it may have been replaced since the stat).
    let meta = file.metadata().map_err(|source| InputError::Unreadable {
        role: role.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    if !accepted(&meta, accept) {
        return Err(wrong(&meta));
    }
    set_blocking(&file).map_err(|source| InputError::Unreadable {
        role: role.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    Ok((file, meta))
}

fn set_blocking(file: &File) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

/// The identity of an opened input: two paths name the same disk exactly when their
/// identities are equal (hard links, `./d.img` and `d.img`, symlinks; for a block
/// device, two device nodes of the same device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    File {
        dev: u64,
        ino: u64,
    },
    BlockDevice {
        rdev: u64,
    },
    /// Anything else, by a digest of its canonical name (an NBD export's server and
    /// export name, see [`super::nbd`]).
    Named {
        digest: [u8; 16],
    },
}

impl Identity {
    /// The identity of a source known by a canonical name.
    pub fn named(canonical: &str) -> Identity {
        let h = blake3::hash(canonical.as_bytes());
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&h.as_bytes()[..16]);
        Identity::Named { digest }
    }
}

pub fn identity(meta: &Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    if meta.file_type().is_block_device() {
        Identity::BlockDevice { rdev: meta.rdev() }
    } else {
        Identity::File {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}
