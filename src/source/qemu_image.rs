//! The offline image driver: any image QEMU reads (qcow2, raw, vmdk, ...) served by a
//! private, read-only `qemu-nbd` on a Unix socket in a directory of its own, torn down on
//! every exit path (the guard kills it; it runs in its own process group with
//! `PR_SET_PDEATHSIG`, so a kill -9 of tapevault takes it along).
//!
//! Change tracking (qcow2 only): one persistent dirty bitmap per epoch, named
//! `tapevault-<16 hex digits>`. The change id recorded with an image is the epoch's
//! identity, `qcow2-bitmap:NAME;size=VIRTUAL_SIZE;granularity=G`. A backup:
//!
//! 1. `prepare`: the image's size and bitmaps, from its qcow2 header
//!    ([`qcow2_header`](super::qcow2_header)) or, for a header that reader does not
//!    understand and for a copy, `qemu-img info`. `qemu-img info` and the bitmap changes
//!    below fail while a running VM holds the image's write lock: use the live driver
//!    then. The base's bitmap is usable when it exists, is
//!    not flagged `in-use` (a writer that died: its bits are not trustworthy), and the
//!    image's virtual size and the bitmap's granularity are those of the change id; else
//!    the backup is a full and the reason says which. Every other `tapevault-*` bitmap
//!    (left by a crash, or unusable) but the old epoch's (step 3) is removed; bitmaps
//!    tapevault did not create are left alone (they belong to someone else, e.g.
//!    libvirt checkpoints). Then the next epoch's bitmap is added (`qemu-img bitmap
//!    --add -g G`, G being QEMU's default granularity asked explicitly, so the epoch is
//!    known without another `qemu-img info`), unless the backup is a copy.
//! 2. `open`: `qemu-nbd --read-only --cache=none --shared=4 --persistent` (O_DIRECT:
//!    no copy out of the page cache; without it where the file system refuses
//!    O_DIRECT), exporting the base's bitmap when it is usable.
//! 3. After the tape flush and the catalog commit (`committed`): qemu-nbd is stopped
//!    and only then the old bitmap removed. A crash before leaves the old bitmap, which
//!    still covers every change since the base: no change is lost, and the next backup
//!    removes the new, unused one. The old bitmap is the base's, or for a full (asked
//!    with `--full`, or for a reason) the newest good image's when it is still there:
//!    a failed full leaves the next backup an incremental on that image.
//!
//! A shrink followed by a regrow to the same size between two backups cannot be told
//! from no resize (QEMU drops the dirty bits beyond the shrink); see docs/OPERATIONS.md.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::export::{DirtySince, EpochGuard, EpochRequest, ExportDriver, OpenedExport};
use super::input::{identity, Identity};
use super::nbd::{NbdExport, DIRTY_BITMAP_PREFIX};
use super::qcow2_header;

/// Prefix of the bitmaps tapevault owns.
pub const BITMAP_PREFIX: &str = "tapevault-";

/// Prefix of the change ids this driver records.
pub const CHANGE_ID_PREFIX: &str = "qcow2-bitmap:";

/// How long qemu-nbd may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    /// The cluster size, for formats that have one.
    pub cluster_size: Option<u64>,
    pub bitmaps: Vec<BitmapInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    pub name: String,
    pub granularity: u64,
    pub flags: Vec<String>,
}

impl BitmapInfo {
    fn in_use(&self) -> bool {
        self.flags.iter().any(|f| f == "in-use")
    }
}

/// An epoch's identity, as recorded in the change id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub bitmap: String,
    pub virtual_size: u64,
    pub granularity: u64,
}

impl Epoch {
    pub fn change_id(&self) -> String {
        format!(
            "{CHANGE_ID_PREFIX}{};size={};granularity={}",
            self.bitmap, self.virtual_size, self.granularity
        )
    }

    pub fn parse(change_id: &str) -> Option<Epoch> {
        let rest = change_id.strip_prefix(CHANGE_ID_PREFIX)?;
        let mut parts = rest.split(';');
        let bitmap = parts.next()?.to_string();
        let virtual_size = parts.next()?.strip_prefix("size=")?.parse().ok()?;
        let granularity = parts.next()?.strip_prefix("granularity=")?.parse().ok()?;
        if parts.next().is_some() || !bitmap.starts_with(BITMAP_PREFIX) {
            return None;
        }
        Some(Epoch {
            bitmap,
            virtual_size,
            granularity,
        })
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what} ({e}); install qemu-utils"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// `qemu-img info` of `path`. Without `-U`: a process holding the image's write lock (a
/// running VM) makes it fail, which is what we want to know.
pub fn image_info(path: &Path, format: Option<&str>) -> Result<ImageInfo, String> {
    let mut cmd = Command::new("qemu-img");
    cmd.arg("info").arg("--output=json");
    if let Some(f) = format {
        cmd.arg("-f").arg(f);
    }
    cmd.arg(path);
    let out = run(&mut cmd, &format!("qemu-img info {}", path.display())).map_err(lock_hint)?;
    let v: serde_json::Value = serde_json::from_slice(&out)
        .map_err(|e| format!("qemu-img info {}: unreadable answer: {e}", path.display()))?;
    let format = v["format"].as_str().unwrap_or("").to_string();
    let virtual_size = v["virtual-size"]
        .as_u64()
        .ok_or_else(|| format!("qemu-img info {}: no virtual-size", path.display()))?;
    let mut bitmaps = Vec::new();
    if let Some(list) = v["format-specific"]["data"]["bitmaps"].as_array() {
        for b in list {
            bitmaps.push(BitmapInfo {
                name: b["name"].as_str().unwrap_or("").to_string(),
                granularity: b["granularity"].as_u64().unwrap_or(0),
                flags: b["flags"]
                    .as_array()
                    .map(|f| {
                        f.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    Ok(ImageInfo {
        format,
        virtual_size,
        cluster_size: v["cluster-size"].as_u64(),
        bitmaps,
    })
}

/// A qemu-img error that says the image is locked, explained.
fn lock_hint(e: String) -> String {
    if e.contains("lock") {
        format!("{e}; the image is in use by a running process (a VM?): stop it, or back it up through the live QEMU/libvirt driver")
    } else {
        e
    }
}

/// What a backup that starts an epoch needs to know of the image: read from a qcow2
/// header directly when [`qcow2_header`] understands it (no qemu-img process), else
/// from `qemu-img info`. The direct read does not see a running VM's lock; the bitmap
/// changes that follow (`qemu-img bitmap`) take the write lock and fail then, with the
/// same explanation.
fn epoch_info(path: &Path, format: Option<&str>) -> Result<ImageInfo, String> {
    if matches!(format, None | Some("qcow2")) {
        if let qcow2_header::Header::Qcow2(info) = qcow2_header::read(path)? {
            return Ok(info);
        }
    }
    image_info(path, format)
}

/// The granularity QEMU gives a new bitmap by default, asked explicitly so that the
/// epoch's identity is known without asking qemu-img again: the cluster size within
/// 4 KiB..=64 KiB, 64 KiB without one.
pub fn default_granularity(cluster_size: Option<u64>) -> u64 {
    cluster_size.unwrap_or(65536).clamp(4096, 65536)
}

/// `qemu-img bitmap ARGS... PATH NAME`.
fn bitmap_cmd(path: &Path, args: &[&str], name: &str) -> Result<(), String> {
    run(
        Command::new("qemu-img")
            .arg("bitmap")
            .args(args)
            .arg("-f")
            .arg("qcow2")
            .arg(path)
            .arg(name),
        &format!(
            "qemu-img bitmap {} {} {name}",
            args.join(" "),
            path.display()
        ),
    )
    .map(|_| ())
    .map_err(lock_hint)
}

/// A new epoch's bitmap name.
fn new_bitmap_name() -> String {
    let u = uuid::Uuid::new_v4();
    format!("{BITMAP_PREFIX}{}", &u.simple().to_string()[..16])
}

/// An image file served by a private qemu-nbd; see the module docs.
pub struct QemuImage {
    path: PathBuf,
    /// The format asked for (`qcow2:`, `vmdk:`, ...); `None`: as qemu-img detects it.
    format: Option<String>,
    identity: Identity,
    plan: Option<Prepared>,
}

#[derive(Debug, Clone)]
struct Prepared {
    format: String,
    /// The base's bitmap when usable, with its epoch.
    dirty: Option<Epoch>,
    full_reason: Option<String>,
    /// The epoch this backup starts.
    new_epoch: Option<Epoch>,
    /// The old epoch's bitmap, removed once the new image is committed (only when an
    /// epoch starts).
    retire: Option<String>,
    /// The image's virtual size when prepared.
    virtual_size: u64,
}

impl QemuImage {
    /// An image at `path` (which must exist), read as `format` or as qemu-img detects.
    pub fn new(path: &Path, format: Option<&str>) -> Result<QemuImage, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("image {}: {e}; check the path", path.display()))?;
        if !(meta.is_file() || std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type())) {
            return Err(format!(
                "image {} is {}, not an image file",
                path.display(),
                super::input::kind_name(&meta)
            ));
        }
        Ok(QemuImage {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            format: format.map(str::to_string),
            identity: identity(&meta),
            plan: None,
        })
    }

    fn prepare_inner(&mut self, req: &EpochRequest) -> Result<Prepared, String> {
        let info = if req.start_epoch {
            epoch_info(&self.path, self.format.as_deref())?
        } else {
            image_info(&self.path, self.format.as_deref())?
        };
        if let Some(f) = &self.format {
            if *f != info.format {
                return Err(format!(
                    "image {} is {}, not {f}",
                    self.path.display(),
                    info.format
                ));
            }
        }
        if info.format != "qcow2" {
            // No persistent bitmaps: read like a raw file (fulls skip what is not
            // allocated; incrementals are hash scans).
            return Ok(Prepared {
                format: info.format,
                dirty: None,
                full_reason: None,
                new_epoch: None,
                retire: None,
                virtual_size: info.virtual_size,
            });
        }
        let base = req.base_change_id.as_deref();
        let mut dirty = None;
        let mut full_reason = None;
        match base.map(|b| (b, Epoch::parse(b))) {
            None => {}
            Some((b, None)) => {
                full_reason = Some(format!(
                    "the base image recorded change id {b:?}, which is not a tapevault qcow2 bitmap epoch"
                ))
            }
            Some((_, Some(e))) => match info.bitmaps.iter().find(|x| x.name == e.bitmap) {
                None => {
                    full_reason = Some(format!(
                        "bitmap {} of the base's epoch is missing from {} (removed, or the image was replaced or restored)",
                        e.bitmap,
                        self.path.display()
                    ))
                }
                Some(bm) if bm.in_use() => {
                    full_reason = Some(format!(
                        "bitmap {} of {} is flagged in-use (the last writer of the image did not close it cleanly, so its record of changes is incomplete)",
                        e.bitmap,
                        self.path.display()
                    ))
                }
                Some(_) if info.virtual_size != e.virtual_size => {
                    full_reason = Some(format!(
                        "the virtual size of {} changed from {} to {} bytes since the base",
                        self.path.display(),
                        e.virtual_size,
                        info.virtual_size
                    ))
                }
                Some(bm) if bm.granularity != e.granularity => {
                    full_reason = Some(format!(
                        "bitmap {} has granularity {} but {} was recorded",
                        e.bitmap, bm.granularity, e.granularity
                    ))
                }
                Some(_) => dirty = Some(e),
            },
        }
        // The old epoch's bitmap, retired only once the new image is committed: the
        // base's, or for a full the newest good image's (a failed full leaves the next
        // backup its incremental).
        let retire = if req.start_epoch {
            dirty.as_ref().map(|d| d.bitmap.clone()).or_else(|| {
                let newest = req.newest_change_id.as_deref().and_then(Epoch::parse)?;
                info.bitmaps
                    .iter()
                    .any(|b| b.name == newest.bitmap)
                    .then_some(newest.bitmap)
            })
        } else {
            None
        };
        // Remove our stale bitmaps (a crash's leftovers, unusable ones) but never the
        // old epoch's, nor anyone else's. A copy changes nothing.
        if req.start_epoch {
            for bm in &info.bitmaps {
                let keep = retire.as_ref() == Some(&bm.name);
                if bm.name.starts_with(BITMAP_PREFIX) && !keep {
                    bitmap_cmd(&self.path, &["--remove"], &bm.name)?;
                }
            }
        }
        let new_epoch = if req.start_epoch {
            // The granularity is asked, so the epoch's identity is known without
            // another `qemu-img info`; the next backup checks it against the image.
            let name = new_bitmap_name();
            let granularity = default_granularity(info.cluster_size);
            bitmap_cmd(
                &self.path,
                &["--add", "-g", &granularity.to_string()],
                &name,
            )?;
            Some(Epoch {
                bitmap: name,
                virtual_size: info.virtual_size,
                granularity,
            })
        } else {
            None
        };
        Ok(Prepared {
            format: info.format,
            dirty,
            full_reason,
            new_epoch,
            retire,
            virtual_size: info.virtual_size,
        })
    }
}

impl ExportDriver for QemuImage {
    fn describe(&self) -> String {
        match &self.format {
            Some(f) => format!("{f} image {}", self.path.display()),
            None => format!("image {}", self.path.display()),
        }
    }

    fn identity(&self) -> Identity {
        self.identity
    }

    fn prepare(&mut self, req: &EpochRequest) -> Result<(), String> {
        let p = self.prepare_inner(req)?;
        self.plan = Some(p);
        Ok(())
    }

    fn size_hint(&self) -> Option<u64> {
        self.plan.as_ref().map(|p| p.virtual_size)
    }

    fn open(&mut self) -> Result<OpenedExport, String> {
        let p = match &self.plan {
            Some(p) => p.clone(),
            None => self.prepare_inner(&EpochRequest {
                base_change_id: None,
                base_disk_size: None,
                newest_change_id: None,
                start_epoch: false,
            })?,
        };
        let server = NbdServer::start(
            &self.path,
            &p.format,
            p.dirty.as_ref().map(|e| e.bitmap.as_str()),
        )?;
        let export = server.export.clone();
        Ok(OpenedExport {
            export,
            dirty: p.dirty.as_ref().map(|e| DirtySince {
                context: format!("{DIRTY_BITMAP_PREFIX}{}", e.bitmap),
                change_id: e.change_id(),
            }),
            full_reason: p.full_reason.clone(),
            change_id: p.new_epoch.as_ref().map(Epoch::change_id),
            guard: Box::new(ImageGuard {
                server: Some(server),
                path: self.path.clone(),
                retire: p.retire.clone(),
            }),
        })
    }
}

/// Why qemu-nbd did not start.
enum SpawnError {
    /// It exited before listening (its message included).
    Exited(String),
    Other(String),
}

impl SpawnError {
    fn into_message(self) -> String {
        match self {
            SpawnError::Exited(m) | SpawnError::Other(m) => m,
        }
    }
}

/// A private qemu-nbd serving one image read-only.
pub struct NbdServer {
    child: Child,
    dir: tempfile::TempDir,
    pub export: NbdExport,
}

impl NbdServer {
    /// Starts `qemu-nbd` on a socket in a new private directory; returns once it
    /// listens.
    pub fn start(image: &Path, format: &str, bitmap: Option<&str>) -> Result<NbdServer, String> {
        NbdServer::start_with(image, format, bitmap, false)
    }

    /// Like [`start`](Self::start); `writable` serves the image read-write (a restore
    /// target), with discards and zero writes unmapping clusters so it stays thin.
    pub fn start_with(
        image: &Path,
        format: &str,
        bitmap: Option<&str>,
        writable: bool,
    ) -> Result<NbdServer, String> {
        if writable {
            return NbdServer::spawn(image, format, bitmap, true, false)
                .map_err(SpawnError::into_message);
        }
        // Read-only: the image is read with O_DIRECT (`--cache=none`), so qemu-nbd does
        // not copy every byte out of the page cache (most of its CPU time for a full:
        // about 3.6 s of 4.8 s per 4 GiB) and a backup does not fill the host's page cache
        // with a disk it reads once. A file system that refuses O_DIRECT makes qemu-nbd
        // exit at once: then it is served through the page cache.
        match NbdServer::spawn(image, format, bitmap, false, true) {
            Ok(s) => Ok(s),
            Err(SpawnError::Exited(_)) => NbdServer::spawn(image, format, bitmap, false, false)
                .map_err(SpawnError::into_message),
            Err(e) => Err(e.into_message()),
        }
    }

    fn spawn(
        image: &Path,
        format: &str,
        bitmap: Option<&str>,
        writable: bool,
        direct: bool,
    ) -> Result<NbdServer, SpawnError> {
        let dir = tempfile::Builder::new()
            .prefix("tapevault-nbd-")
            .tempdir()
            .map_err(|e| {
                SpawnError::Other(format!(
                    "cannot make a directory for qemu-nbd's socket: {e}"
                ))
            })?;
        let sock = dir.path().join("nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        if writable {
            cmd.arg("--discard=unmap");
        } else {
            cmd.arg("--read-only");
        }
        if direct {
            cmd.arg("--cache=none");
        }
        cmd.arg("--persistent")
            .arg("--shared=4")
            .arg(format!("--format={format}"))
            .arg("--export-name=disk")
            .arg(format!("--socket={}", sock.display()));
        if let Some(b) = bitmap {
            cmd.arg(format!("--bitmap={b}"));
        }
        cmd.arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        spawn_tied(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            SpawnError::Other(format!("cannot run qemu-nbd ({e}); install qemu-utils"))
        })?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    use std::io::Read;
                    let _ = s.read_to_string(&mut err);
                }
                return Err(SpawnError::Exited(format!(
                    "qemu-nbd for {} exited ({status}): {}",
                    image.display(),
                    err.trim()
                )));
            }
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::Other(format!(
                    "qemu-nbd for {} did not listen within {} s",
                    image.display(),
                    START_TIMEOUT.as_secs()
                )));
            }
            // qemu-nbd listens within milliseconds: look often at first.
            let pause = if started.elapsed() < Duration::from_millis(200) {
                2
            } else {
                20
            };
            std::thread::sleep(Duration::from_millis(pause));
        }
        // stderr is not read any more: don't let a full pipe stall it.
        drop(child.stderr.take());
        Ok(NbdServer {
            child,
            export: NbdExport {
                address: nbd_client::Address::Unix(sock),
                name: "disk".into(),
                tls: None,
            },
            dir,
        })
    }

    /// Stops the server and waits for it (the image is closed when this returns).
    pub fn stop(mut self) {
        self.kill();
    }

    /// Asks the server to exit (TERM) without waiting: it closes the image while the
    /// caller goes on; [`stop`](Self::stop) or dropping the server waits for it.
    pub fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            // A stopped server (kill -STOP, a debugger) takes the TERM when continued.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
            // qemu-nbd exits within a millisecond or two of the TERM: look often at
            // first (the old epoch's bitmap waits for it), then every 10 ms.
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                let pause = if started.elapsed() < Duration::from_millis(50) {
                    1
                } else {
                    10
                };
                std::thread::sleep(Duration::from_millis(pause));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes a child die with tapevault: its own process group (a terminal's ^C goes to
/// tapevault, which tears it down in order) and `PR_SET_PDEATHSIG` (a kill -9 of
/// tapevault kills it).
pub fn spawn_tied(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid, _exit) between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

struct ImageGuard {
    server: Option<NbdServer>,
    path: PathBuf,
    /// The old epoch's bitmap, removed once the new image is committed.
    retire: Option<String>,
}

impl EpochGuard for ImageGuard {
    /// qemu-nbd is told to exit as soon as the image is read: it closes the image while
    /// the session writes its end, and a VM's other disks do not keep one each.
    /// `committed` waits for its exit before the bitmaps change.
    fn read_done(&mut self) {
        if let Some(s) = self.server.as_mut() {
            s.terminate();
        }
    }

    fn committed(&mut self) -> Result<(), String> {
        // The image must be closed before its bitmaps change.
        if let Some(s) = self.server.take() {
            s.stop();
        }
        if let Some(old) = self.retire.take() {
            bitmap_cmd(&self.path, &["--remove"], &old)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_trip_and_refuse_foreign_ids() {
        let e = Epoch {
            bitmap: "tapevault-0123456789abcdef".into(),
            virtual_size: 1 << 30,
            granularity: 65536,
        };
        assert_eq!(
            e.change_id(),
            "qcow2-bitmap:tapevault-0123456789abcdef;size=1073741824;granularity=65536"
        );
        assert_eq!(Epoch::parse(&e.change_id()), Some(e));
        for bad in [
            "52 de 3f/1234",
            "qcow2-bitmap:cp1;size=1;granularity=2",
            "qcow2-bitmap:tapevault-x;size=1",
            "qcow2-bitmap:tapevault-x;size=a;granularity=2",
        ] {
            assert_eq!(Epoch::parse(bad), None, "{bad}");
        }
    }

    /// The header reader agrees with `qemu-img info` on real images: bitmaps of several
    /// granularities, a disabled one, a v2 image, a raw file.
    #[test]
    fn the_qcow2_header_reader_agrees_with_qemu_img() {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("skipping: qemu-img is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sh = |args: &[&str]| {
            let st = Command::new("qemu-img").args(args).status().unwrap();
            assert!(st.success(), "qemu-img {args:?}");
        };
        let create = |name: &str, options: &str, size: &str| {
            let path = dir.path().join(name);
            let p = path.to_str().unwrap();
            sh(&["create", "-q", "-f", "qcow2", "-o", options, p, size]);
            path
        };
        let v3 = create("v3.qcow2", "cluster_size=512", "100M");
        let v3s = v3.to_str().unwrap();
        sh(&["bitmap", "--add", v3s, "tapevault-0123456789abcdef"]);
        sh(&["bitmap", "--add", "-g", "1M", v3s, "someone-elses"]);
        sh(&["bitmap", "--add", v3s, "off"]);
        sh(&["bitmap", "--disable", v3s, "off"]);
        let v2 = create("v2.qcow2", "compat=0.10", "3G");
        let plain = create("plain.qcow2", "cluster_size=2M", "1T");
        for img in [&v3, &v2, &plain] {
            let qemu = image_info(img, None).unwrap();
            match qcow2_header::read(img).unwrap() {
                qcow2_header::Header::Qcow2(ours) => assert_eq!(ours, qemu, "{}", img.display()),
                other => panic!("{}: {other:?}", img.display()),
            }
        }
        assert_eq!(image_info(&v3, None).unwrap().bitmaps.len(), 3);
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, vec![7u8; 4096]).unwrap();
        assert_eq!(
            qcow2_header::read(&raw).unwrap(),
            qcow2_header::Header::NotQcow2
        );
        assert_eq!(epoch_info(&raw, None).unwrap().format, "raw");
        // The granularity asked for a new epoch is QEMU's default.
        assert_eq!(default_granularity(Some(512)), 4096);
        assert_eq!(default_granularity(Some(65536)), 65536);
        assert_eq!(default_granularity(Some(2 << 20)), 65536);
        assert_eq!(default_granularity(None), 65536);
    }
}
