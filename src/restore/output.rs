//! The restore target: a block device written in place, or a new sparse file that has
//! no name (`O_TMPFILE`) or a temporary one until it is complete and committed.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use std::sync::Mutex;

use crate::error::{Context, Error, Result};
use crate::source::nbd::NbdExport;
use crate::source::qemu_image::NbdServer;

/// A restore target other than a file or device path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Special {
    /// `qcow2:PATH`: a new qcow2 image, created with qemu-img and written through a
    /// private qemu-nbd (zero extents stay unallocated).
    Qcow2(PathBuf),
    /// An NBD export written in place (a VM's disk): zero extents become WRITE_ZEROES.
    Nbd(NbdExport),
}

/// What `--to` names when it is not a plain path: `qcow2:PATH` or an NBD URI (TLS
/// credentials: `tls_dir`).
pub fn special_target(to: &Path, tls_dir: Option<&Path>) -> Result<Option<Special>> {
    let text = to.to_string_lossy();
    if let Some(p) = text.strip_prefix("qcow2:") {
        if p.is_empty() {
            return Err(Error::Usage(
                "--to qcow2: names no file; write qcow2:/path/new.qcow2".into(),
            ));
        }
        return Ok(Some(Special::Qcow2(PathBuf::from(p))));
    }
    if text.starts_with("nbd") && text.contains("://") {
        return NbdExport::parse(&text, tls_dir)
            .map(|e| Some(Special::Nbd(e)))
            .map_err(|e| Error::Usage(format!("--to: {e}")));
    }
    Ok(None)
}

/// Check a restore target before anything else happens: a block device (returns
/// true), a new file in an existing directory, an empty file, or with `force` a
/// non-empty regular file. `qcow2:PATH` is checked like a new file; an NBD export is
/// checked when it is opened.
pub fn check_target(to: &Path, force: bool) -> Result<bool> {
    match special_target(to, None) {
        Ok(Some(Special::Qcow2(p))) => {
            check_target(&p, force)?;
            return Ok(false);
        }
        Ok(Some(Special::Nbd(_))) => return Ok(true),
        // An nbds:// URI needs its credentials, given when it is opened.
        Err(_) if to.to_string_lossy().starts_with("nbds") => return Ok(true),
        Err(e) => return Err(e),
        Ok(None) => {}
    }
    match std::fs::metadata(to) {
        Ok(m) if m.file_type().is_block_device() => Ok(true),
        Ok(m) if m.is_dir() => Err(Error::Usage(format!(
            "{} is a directory; give the path of the disk image to create",
            to.display()
        ))),
        Ok(m) if m.is_file() && m.len() > 0 && !force => Err(Error::Usage(format!(
            "{} exists and is not empty; give --force to replace it",
            to.display()
        ))),
        Ok(m) if !m.is_file() => Err(Error::Usage(format!(
            "{} is neither a regular file nor a block device",
            to.display()
        ))),
        Ok(_) => Ok(false),
        Err(_) => {
            let dir = match to.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dir.is_dir() {
                return Err(Error::Usage(format!(
                    "cannot create {}: {} is not a directory",
                    to.display(),
                    dir.display()
                )));
            }
            if to.file_name().is_none() {
                return Err(Error::Usage(format!("{} names no file", to.display())));
            }
            Ok(false)
        }
    }
}

/// The output: a new sparse file, or a block device. A new file has no name until it
/// is complete where the filesystem allows (`O_TMPFILE`), so a killed restore leaves
/// nothing behind; elsewhere it is written under a temporary name with the writer's
/// pid, which the next restore into the same directory removes once that pid is gone.
pub(super) struct Output {
    file: File,
    /// Where a regular file goes when complete.
    target: Option<NewFile>,
    /// Zero extents must be written (a device or an existing export), not left as holes.
    pub(super) device: bool,
    /// Writes go to an NBD export instead of `file`.
    nbd: Option<NbdOut>,
}

struct NbdOut {
    client: Mutex<Option<nbd_client::Client>>,
    /// The private qemu-nbd of a new qcow2 image, and the image (removed unless the
    /// restore completes).
    server: Option<NbdServer>,
    created: Option<PathBuf>,
}

impl Drop for NbdOut {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        if let Some(p) = self.created.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

struct NewFile {
    dir: PathBuf,
    to: PathBuf,
    /// The temporary name the data is written under; `None` while it has no name.
    named: Option<PathBuf>,
}

/// Prefix of the temporary names of restores into `name` (the pid follows).
fn temp_prefix(name: &str) -> String {
    format!(".{name}.tapevault-restore.")
}

/// Remove temporary files of earlier restores into `name` whose writer is gone.
fn sweep_stale_temps(dir: &Path, name: &str) {
    let prefix = temp_prefix(name);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let fname = entry.file_name();
        let Some(pid) = fname
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = pid > 0
            && !matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            );
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A file in `dir` with no name (`O_TMPFILE`), when the filesystem supports it and
/// `/proc/self/fd` is there to give it a name later.
fn unnamed_file(dir: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if !Path::new("/proc/self/fd").is_dir() {
        return None;
    }
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o666)
        .open(dir)
        .ok()
}

/// The scratch file a restore to a stream is written into: no name (`O_TMPFILE` in the
/// temporary directory, `$TMPDIR`), else a name removed at once, so nothing is left
/// behind whatever happens. Sparse: it takes the disk's allocated bytes.
fn scratch_file(size: u64) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(&dir)
    {
        Ok(f) => f,
        Err(_) => {
            let tmp = dir.join(format!(
                ".tapevault-restore-stream.{}.{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| {
                    format!(
                        "creating a scratch file in {} (set TMPDIR to a directory with room for the disk)",
                        dir.display()
                    )
                })?;
            let _ = std::fs::remove_file(&tmp);
            f
        }
    };
    file.set_len(size).with_context(|| {
        format!(
            "sizing a scratch file in {} to {size} bytes (set TMPDIR to a directory with room for the disk)",
            dir.display()
        )
    })?;
    Ok(file)
}

/// Bytes copied at once from the scratch file to the stream.
const STREAM_CHUNK: usize = 1024 * 1024;

impl Output {
    /// A restore to a stream: written into a scratch file first (images supply their
    /// data in media order, not disk order), copied out in order by [`Output::stream_to`].
    pub(super) fn open_stream(size: u64) -> Result<Output> {
        Ok(Output {
            file: scratch_file(size)?,
            target: None,
            device: false,
            nbd: None,
        })
    }

    /// The scratch file itself, complete (a synthetic full reads it as its disk).
    pub(super) fn into_file(self) -> Result<File> {
        self.file
            .try_clone()
            .context("keeping the scratch file of the restored disk")
    }

    /// Copy the complete disk, in order, from the scratch file to `w` (bounded memory).
    pub(super) fn stream_to(self, w: &mut dyn std::io::Write) -> Result<()> {
        let size = self
            .file
            .metadata()
            .context("reading the scratch file's size")?
            .len();
        let mut buf = vec![0u8; STREAM_CHUNK];
        let mut off = 0u64;
        while off < size {
            let n = ((size - off) as usize).min(STREAM_CHUNK);
            self.file
                .read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("reading the scratch file at offset {off}"))?;
            w.write_all(&buf[..n]).with_context(|| {
                format!("writing the restored disk to the stream at offset {off}")
            })?;
            off += n as u64;
        }
        w.flush()
            .context("flushing the restored disk to the stream")?;
        Ok(())
    }

    /// Opens an NBD target: a new qcow2 image (created here) or an export.
    fn open_special(special: Special, size: u64, force: bool) -> Result<Output> {
        let timeout = crate::source::disk::source_timeout();
        let (export, server, created, device) = match special {
            Special::Qcow2(path) => {
                check_target(&path, force)?;
                if force && path.exists() {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("replacing {}", path.display()))?;
                }
                let out = std::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&path)
                    .arg(size.to_string())
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| {
                        Error::Failed(format!("cannot run qemu-img ({e}); install qemu-utils"))
                    })?;
                if !out.status.success() {
                    return Err(Error::Failed(format!(
                        "qemu-img create {}: {}",
                        path.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                let server = match NbdServer::start_with(&path, "qcow2", None, true) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        return Err(Error::Failed(e));
                    }
                };
                // A new image reads as zeros: zero extents are left unallocated.
                (server.export.clone(), Some(server), Some(path), false)
            }
            Special::Nbd(e) => (e, None, None, true),
        };
        let mut nbd = NbdOut {
            client: Mutex::new(None),
            server,
            created,
        };
        let c = export
            .connect(&[], timeout)
            .map_err(|e| Error::Failed(e.to_string()))?;
        let c = nbd
            .client
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .insert(c);
        if c.info().read_only() {
            return Err(Error::Usage(format!(
                "NBD export {} is read-only; export it writable to restore into it",
                export.uri()
            )));
        }
        if c.size() < size {
            return Err(Error::Usage(format!(
                "NBD export {} holds {} bytes, the disk is {size} bytes",
                export.uri(),
                c.size()
            )));
        }
        // `file` is not written; a scratch descriptor keeps the struct uniform.
        let file = File::open("/dev/null").context("opening /dev/null")?;
        Ok(Output {
            file,
            target: None,
            device,
            nbd: Some(nbd),
        })
    }

    pub(super) fn open_with(
        to: &Path,
        size: u64,
        force: bool,
        tls_dir: Option<&Path>,
    ) -> Result<Output> {
        if let Some(special) = special_target(to, tls_dir)? {
            return Output::open_special(special, size, force);
        }
        Output::open(to, size, force)
    }

    pub(super) fn open(to: &Path, size: u64, force: bool) -> Result<Output> {
        if let Some(special) = special_target(to, None)? {
            return Output::open_special(special, size, force);
        }
        if check_target(to, force)? {
            let mut file = OpenOptions::new()
                .write(true)
                .open(to)
                .with_context(|| format!("opening block device {}", to.display()))?;
            let dev_size = file
                .seek(SeekFrom::End(0))
                .with_context(|| format!("reading the size of {}", to.display()))?;
            if dev_size < size {
                return Err(Error::Usage(format!(
                    "block device {} holds {dev_size} bytes, the disk is {size} bytes",
                    to.display()
                )));
            }
            return Ok(Output {
                file,
                target: None,
                device: true,
                nbd: None,
            });
        }
        let name = to
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{} names no file", to.display())))?
            .to_string_lossy()
            .into_owned();
        let dir = match to.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        sweep_stale_temps(&dir, &name);
        let tmp = dir.join(format!("{}{}", temp_prefix(&name), std::process::id()));
        let (file, named) = match unnamed_file(&dir) {
            Some(f) => (f, None),
            None => {
                let _ = std::fs::remove_file(&tmp);
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                (f, Some(tmp.clone()))
            }
        };
        let out = Output {
            file,
            target: Some(NewFile {
                dir,
                to: to.to_path_buf(),
                named,
            }),
            device: false,
            nbd: None,
        };
        out.file
            .set_len(size)
            .with_context(|| format!("sizing a new file for {} to {size} bytes", to.display()))?;
        Ok(out)
    }

    pub(super) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if let Some(n) = &self.nbd {
            let mut g = n.client.lock().unwrap_or_else(|e| e.into_inner());
            let c = g
                .as_mut()
                .ok_or_else(|| Error::Failed("the NBD target is closed".into()))?;
            return c.write(offset, buf, false).map_err(|e| {
                Error::Failed(format!(
                    "writing {} bytes at offset {offset}: {e}",
                    buf.len()
                ))
            });
        }
        self.file
            .write_all_at(buf, offset)
            .with_context(|| format!("writing {} bytes at offset {offset}", buf.len()))
    }

    /// Makes `[offset, offset + len)` read as zeros without writing zeros as data where
    /// the target can: NBD WRITE_ZEROES (the server may unmap), a block device's
    /// zero-out (`fallocate` ZERO_RANGE); else zeros are written, `chunk` bytes at a
    /// time. `progress` hears each piece.
    pub(super) fn write_zeros(
        &self,
        offset: u64,
        len: u64,
        chunk: usize,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        if let Some(n) = &self.nbd {
            let mut g = n.client.lock().unwrap_or_else(|e| e.into_inner());
            let c = g
                .as_mut()
                .ok_or_else(|| Error::Failed("the NBD target is closed".into()))?;
            if c.info().has_flag(nbd_client::FLAG_SEND_WRITE_ZEROES) {
                let mut off = offset;
                let end = offset + len;
                while off < end {
                    // Bounded per request (1 GiB) so a huge run still moves progress.
                    let n = (end - off).min(1 << 30);
                    c.write_zeroes(off, n, nbd_client::ZeroFlags::default())
                        .map_err(|e| {
                            Error::Failed(format!("zeroing {n} bytes at offset {off}: {e}"))
                        })?;
                    progress(n);
                    off += n;
                }
                return Ok(());
            }
        } else {
            use std::os::fd::AsRawFd;
            let r = nix::fcntl::fallocate(
                self.file.as_raw_fd(),
                nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE,
                offset as i64,
                len as i64,
            );
            if r.is_ok() {
                progress(len);
                return Ok(());
            }
        }
        let zeros = vec![0u8; chunk];
        let mut off = offset;
        while off < offset + len {
            let n = ((offset + len - off) as usize).min(chunk);
            self.write_at(&zeros[..n], off)?;
            progress(n as u64);
            off += n as u64;
        }
        Ok(())
    }

    pub(super) fn commit(mut self) -> Result<()> {
        use std::os::fd::AsRawFd;
        if let Some(mut n) = self.nbd.take() {
            let c = n.client.get_mut().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(mut c) = c {
                if c.info().has_flag(nbd_client::FLAG_SEND_FLUSH) {
                    c.flush()
                        .map_err(|e| Error::Failed(format!("flushing the restored disk: {e}")))?;
                }
                c.disconnect()
                    .map_err(|e| Error::Failed(format!("closing the NBD target: {e}")))?;
            }
            // Close the image cleanly (qemu-nbd writes its metadata), and keep it.
            if let Some(s) = n.server.take() {
                s.stop();
            }
            n.created = None;
            return Ok(());
        }
        self.file.sync_all().context("flushing the restored disk")?;
        let Some(t) = self.target.as_mut() else {
            return Ok(());
        };
        let tmp = match &t.named {
            Some(tmp) => tmp.clone(),
            None => {
                // Give the complete file its temporary name (a hard link from the
                // descriptor), then rename it over the target, which may exist (--force).
                let name =
                    t.to.file_name()
                        .expect("checked")
                        .to_string_lossy()
                        .into_owned();
                let tmp = t
                    .dir
                    .join(format!("{}{}", temp_prefix(&name), std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                let fd_path = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
                nix::unistd::linkat(
                    None,
                    &fd_path,
                    None,
                    &tmp,
                    nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                )
                .map_err(|e| {
                    Error::Failed(format!("naming the restored disk {}: {e}", tmp.display()))
                })?;
                t.named = Some(tmp.clone());
                tmp
            }
        };
        std::fs::rename(&tmp, &t.to)
            .with_context(|| format!("renaming {} to {}", tmp.display(), t.to.display()))?;
        t.named = None;
        if let Ok(d) = File::open(&t.dir) {
            let _ = d.sync_all();
        }
        self.target = None;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // Not committed: never leave a plausible-looking partial file.
        if let Some(tmp) = self.target.take().and_then(|t| t.named) {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_before_anything_moves() {
        let d = tempfile::tempdir().unwrap();
        let new = d.path().join("new.img");
        assert!(!check_target(&new, false).unwrap());
        let empty = d.path().join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        assert!(!check_target(&empty, false).unwrap());
        let full = d.path().join("full.img");
        std::fs::write(&full, b"x").unwrap();
        assert_eq!(
            check_target(&full, false).unwrap_err().exit_code(),
            crate::error::ExitCode::Usage
        );
        assert!(!check_target(&full, true).unwrap());
        assert!(check_target(d.path(), true).is_err(), "a directory");
        assert!(check_target(&d.path().join("no/such/dir.img"), false).is_err());
    }

    #[test]
    fn a_failed_restore_leaves_no_file_and_a_committed_one_is_renamed() {
        let d = tempfile::tempdir().unwrap();
        let to = d.path().join("disk.img");
        {
            let out = Output::open(&to, 1 << 20, false).unwrap();
            out.write_at(b"abc", 4096).unwrap();
            // Dropped without commit.
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        let out = Output::open(&to, 1 << 20, false).unwrap();
        out.write_at(b"abc", 4096).unwrap();
        out.commit().unwrap();
        let got = std::fs::read(&to).unwrap();
        assert_eq!(got.len(), 1 << 20);
        assert_eq!(&got[4096..4099], b"abc");
        assert!(got[..4096].iter().all(|&b| b == 0));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
