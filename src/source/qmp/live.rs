//! The running-QEMU driver: one consistent point in time over every disk of a VM.
//!
//! 1. Leftovers of a killed run are removed ([`leftovers`]); epoch bitmaps the catalog
//!    does not know are removed from each disk.
//! 2. A scratch qcow2 per disk (backed by the disk's node) is added as a node.
//! 3. Guest file systems are frozen through the guest agent, when one is given.
//! 4. ONE `transaction` over all disks: add the next epoch's bitmap, make a disabled
//!    copy of the current epoch's bitmap on the scratch node (the export's view of what
//!    changed), and start `blockdev-backup sync=none` into the scratch node (fleecing:
//!    a guest write first copies the old data to the scratch image).
//! 5. Thaw; start a private NBD server; export every scratch node read-only, named by
//!    the disk's UUID, with the frozen bitmap.
//! 6. After each disk's image is on tape and committed in the catalog,
//!    [`LiveBackup::committed`] removes that disk's previous epoch bitmap (the base's,
//!    or for a full the newest good image's when it is still there). A disk not
//!    committed keeps its previous bitmap and loses the new one, so no change is lost:
//!    after a failed full too, the next backup is an incremental on the newest image.
//! 7. Teardown on every exit path: [`LiveBackup::finish`], drop (errors, panics),
//!    SIGINT/SIGTERM ([`super::guard`]); kill -9 is cleaned up by the next run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::agent::GuestAgent;
use super::client::QmpClient;
use super::disks::{discover, node_bitmaps, VmDisk};
use super::epoch::{bitmap_name, decide, epoch_of, ChangeId, Decision, EXPORT_BITMAP, PREFIX};
use super::error::QmpError;
use super::guard::SignalGuard;
use super::leftovers;

/// The steps of starting a live backup, in order (reported to the observer, so an
/// operator sees where a slow or failing start stands, and tests can stop at each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Leftovers removed, stray epoch bitmaps removed.
    Cleaned,
    /// Scratch images created and added as nodes.
    ScratchAdded,
    /// Guest file systems frozen (only with a guest agent that answered).
    Frozen,
    /// The transaction ran: new epoch bitmaps exist, fleecing runs.
    Transaction,
    /// Guest file systems thawed.
    Thawed,
    /// The private NBD server listens.
    ServerStarted,
    /// Every disk is exported.
    Exported,
}

/// Which consistency the point in time has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consistency {
    /// The guest agent froze the guest's file systems around the transaction.
    Filesystem { frozen: u64 },
    /// As if the power had been cut at that instant, on every disk at the same instant.
    Crash { reason: String },
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Consistency::Filesystem { frozen } => write!(
                f,
                "filesystem-consistent ({frozen} guest file system(s) frozen by the guest agent)"
            ),
            Consistency::Crash { reason } => write!(f, "crash-consistent ({reason})"),
        }
    }
}

/// What to back up from the VM.
#[derive(Debug, Clone)]
pub struct DiskRequest {
    /// The disk's identity (manifest UUID or derived from serial/wwn).
    pub id: Uuid,
    /// The disk as discovered.
    pub disk: VmDisk,
    /// The change id the disk's newest good image recorded; `None` asks for a full.
    pub previous: Option<String>,
    /// For a full asked for (`previous` is `None`): the change id the newest good image
    /// recorded all the same. Its bitmap stays until this disk's image is committed, so
    /// a failed full leaves the next backup an incremental on that image.
    pub newest: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Where scratch images and the NBD socket go (QEMU must be able to create files
    /// there; a scratch image grows up to the data the guest overwrites during the
    /// backup, at worst the disk's size).
    pub scratch_dir: PathBuf,
    /// The guest agent's host-side socket.
    pub agent: Option<PathBuf>,
    pub freeze_timeout: Duration,
    /// Start a new epoch (false for a one-off copy: bitmaps are left as they are).
    pub start_epoch: bool,
}

/// One exported disk.
#[derive(Debug, Clone)]
pub struct LiveDisk {
    pub id: Uuid,
    pub disk: VmDisk,
    /// NBD export name (the disk's UUID).
    pub export: String,
    /// The meta context carrying the frozen changed blocks (incrementals only).
    pub bitmap_context: Option<String>,
    pub decision: Decision,
    /// The change id the image of this point records (`None` for a copy).
    pub change_id: Option<String>,
    node: String,
    job: String,
    export_id: String,
    scratch: PathBuf,
    new_bitmap: Option<String>,
    /// The old epoch's bitmap, removed at [`LiveBackup::committed`].
    retire: Option<String>,
    committed: bool,
}

struct Inner {
    client: QmpClient,
    disks: Vec<LiveDisk>,
    server: bool,
    torn_down: bool,
}

pub struct LiveBackup {
    inner: Arc<Mutex<Inner>>,
    guard: Option<SignalGuard>,
    socket: PathBuf,
    consistency: Consistency,
    removed: Vec<String>,
}

/// Removes what a killed earlier run left (in QEMU and in `scratch_dir`), then lists
/// the VM's disks. Returns the disks and what was removed, in words.
pub fn discover_clean(
    c: &mut QmpClient,
    scratch_dir: &Path,
) -> Result<(Vec<VmDisk>, Vec<String>), QmpError> {
    let mut removed = leftovers::remove_all(c)?;
    removed.extend(leftovers::remove_files(scratch_dir));
    Ok((discover(c)?, removed))
}

impl LiveBackup {
    /// Takes the point in time and exports it. On error everything created is removed
    /// again and the previous epoch is left as it was.
    pub fn start(
        mut client: QmpClient,
        requests: Vec<DiskRequest>,
        opts: &LiveOptions,
        observer: &mut dyn FnMut(Step),
    ) -> Result<LiveBackup, QmpError> {
        let socket = opts.scratch_dir.join(format!("{PREFIX}nbd.sock"));
        // Normally done by [`discover_clean`] already; here again so that nothing of an
        // earlier run can be in the way.
        let mut removed = leftovers::remove_all(&mut client)?;
        removed.extend(leftovers::remove_files(&opts.scratch_dir));

        // Epoch numbers only grow per VM, so a name never comes back.
        let next = requests
            .iter()
            .flat_map(|r| {
                r.disk
                    .bitmaps
                    .iter()
                    .filter_map(|b| epoch_of(&b.name))
                    .chain(
                        r.previous
                            .as_deref()
                            .and_then(ChangeId::parse)
                            .map(|c| c.epoch),
                    )
            })
            .max()
            .unwrap_or(0)
            + 1;
        let mut disks = Vec::new();
        for (i, r) in requests.into_iter().enumerate() {
            let decision = if opts.start_epoch {
                decide(&r.disk, r.previous.as_deref())
            } else {
                Decision::Full {
                    reason: "a copy reads the whole disk and starts no epoch".to_string(),
                }
            };
            // The old epoch's bitmap, removed once this disk's image is committed: the
            // base's, or for a full the newest good image's when it is still there.
            let retire = match &decision {
                _ if !opts.start_epoch => None,
                Decision::Incremental { from } => Some(from.bitmap()),
                Decision::Full { .. } => r
                    .newest
                    .as_deref()
                    .and_then(ChangeId::parse)
                    .map(|c| c.bitmap())
                    .filter(|name| r.disk.bitmap(name).is_some()),
            };
            if opts.start_epoch {
                for b in &r.disk.bitmaps {
                    let stray = epoch_of(&b.name).is_some() && Some(&b.name) != retire.as_ref();
                    if stray || b.name == EXPORT_BITMAP {
                        leftovers::remove_bitmap(&mut client, &r.disk.node, &b.name)?;
                        removed.push(format!("bitmap {} of node {}", b.name, r.disk.node));
                    }
                }
            }
            let incremental = matches!(decision, Decision::Incremental { .. });
            disks.push(LiveDisk {
                id: r.id,
                export: r.id.to_string(),
                bitmap_context: incremental.then(|| format!("qemu:dirty-bitmap:{EXPORT_BITMAP}")),
                decision,
                change_id: None,
                node: format!("{PREFIX}fleece-{i}"),
                job: format!("{PREFIX}fleece-{i}"),
                export_id: format!("{PREFIX}export-{i}"),
                scratch: opts.scratch_dir.join(format!("{PREFIX}fleece-{i}.qcow2")),
                new_bitmap: opts.start_epoch.then(|| bitmap_name(next)),
                retire,
                committed: false,
                disk: r.disk,
            });
        }
        observer(Step::Cleaned);

        let inner = Arc::new(Mutex::new(Inner {
            client,
            disks,
            server: false,
            torn_down: false,
        }));
        let guard_inner = Arc::clone(&inner);
        let guard = SignalGuard::arm(move |_sig| {
            if let Ok(mut g) = guard_inner.lock() {
                let _ = g.teardown();
                let _ = g.abort_uncommitted();
            }
        })
        .map_err(|e| QmpError::io(&opts.scratch_dir, e))?;
        let mut lb = LiveBackup {
            inner,
            guard: Some(guard),
            socket,
            consistency: Consistency::Crash {
                reason: String::new(),
            },
            removed,
        };
        match lb.run_start(opts, observer) {
            Ok(c) => {
                lb.consistency = c;
                Ok(lb)
            }
            Err(e) => {
                // Drop tears down and removes the new bitmaps.
                drop(lb);
                Err(e)
            }
        }
    }

    fn run_start(
        &mut self,
        opts: &LiveOptions,
        observer: &mut dyn FnMut(Step),
    ) -> Result<Consistency, QmpError> {
        let mut g = self.inner.lock().expect("live backup state");
        let inner = &mut *g;
        for d in &inner.disks {
            create_scratch(&d.scratch, d.disk.size)?;
            inner.client.execute(
                "blockdev-add",
                Some(json!({
                    "driver": "qcow2", "node-name": d.node, "discard": "unmap",
                    "file": {"driver": "file", "filename": d.scratch.to_string_lossy()},
                    "backing": d.disk.node,
                })),
            )?;
        }
        observer(Step::ScratchAdded);

        let mut agent = None;
        let mut consistency = Consistency::Crash {
            reason: "no guest agent socket was given".to_string(),
        };
        if let Some(path) = &opts.agent {
            match GuestAgent::connect(path) {
                Err(e) => {
                    consistency = Consistency::Crash {
                        reason: format!("the guest agent did not answer: {e}"),
                    }
                }
                Ok(mut a) => match a.freeze(opts.freeze_timeout) {
                    Ok(n) if n > 0 => {
                        consistency = Consistency::Filesystem { frozen: n };
                        agent = Some(a);
                        observer(Step::Frozen);
                    }
                    Ok(_) => {
                        consistency = Consistency::Crash {
                            reason: "the guest agent froze no file system".to_string(),
                        };
                        agent = Some(a);
                    }
                    Err(e) => {
                        consistency = Consistency::Crash {
                            reason: format!("the guest agent's freeze failed: {e}"),
                        };
                        // A freeze that timed out may still complete in the guest.
                        agent = Some(a);
                    }
                },
            }
        }

        let mut actions = Vec::new();
        for d in &inner.disks {
            if let Some(b) = &d.new_bitmap {
                actions.push(json!({"type": "block-dirty-bitmap-add", "data": {
                    "node": d.disk.node, "name": b,
                    // Only qcow2 stores bitmaps; elsewhere the epoch lives in QEMU's
                    // memory and a restart of QEMU means a full (the bitmap is missing).
                    "persistent": d.disk.driver == "qcow2"}}));
            }
            if let Decision::Incremental { from } = &d.decision {
                actions.push(json!({"type": "block-dirty-bitmap-add", "data": {
                    "node": d.node, "name": EXPORT_BITMAP, "persistent": false,
                    "disabled": true, "granularity": from.granularity}}));
                actions.push(json!({"type": "block-dirty-bitmap-merge", "data": {
                    "node": d.node, "target": EXPORT_BITMAP,
                    "bitmaps": [{"node": d.disk.node, "name": from.bitmap()}]}}));
            }
            actions.push(json!({"type": "blockdev-backup", "data": {
                "job-id": d.job, "device": d.disk.node, "target": d.node, "sync": "none",
                "auto-dismiss": true}}));
        }
        let tx = inner
            .client
            .execute("transaction", Some(json!({"actions": actions})));
        let tx_ok = tx.is_ok();
        if tx_ok {
            observer(Step::Transaction);
        }
        if let Some(mut a) = agent {
            match a.thaw(opts.freeze_timeout) {
                Ok(_) => {
                    if matches!(consistency, Consistency::Filesystem { .. }) {
                        observer(Step::Thawed);
                    }
                }
                Err(e) => {
                    // The point in time is taken; a guest left frozen is worse than a
                    // failed backup, so say it loudly.
                    return Err(QmpError::Protocol {
                        path: opts.agent.clone().unwrap_or_default(),
                        message: format!(
                            "thawing the guest's file systems failed ({e}); check with `guest-fsfreeze-status` and thaw by hand"
                        ),
                    });
                }
            }
        }
        tx?;
        // The new bitmaps exist now: record their granularity in the change id.
        for d in &mut inner.disks {
            if let Some(b) = &d.new_bitmap {
                let gran = node_bitmaps(&mut inner.client, &d.disk.node)?
                    .iter()
                    .find(|x| &x.name == b)
                    .map(|x| x.granularity)
                    .ok_or_else(|| QmpError::Protocol {
                        path: inner.client.path().to_path_buf(),
                        message: format!(
                            "bitmap {b} is not on node {} after the transaction",
                            d.disk.node
                        ),
                    })?;
                d.change_id = Some(
                    ChangeId {
                        epoch: epoch_of(b).expect("our own bitmap name"),
                        size: d.disk.size,
                        granularity: gran,
                    }
                    .to_string(),
                );
            }
        }

        let server = inner.client.execute(
            "nbd-server-start",
            Some(
                json!({"addr": {"type": "unix", "data": {"path": self.socket.to_string_lossy()}}}),
            ),
        );
        match server {
            Ok(_) => inner.server = true,
            Err(e)
                if e.command_desc()
                    .is_some_and(|d| d.contains("already running")) =>
            {
                return Err(QmpError::Command {
                    command: "nbd-server-start".into(),
                    class: "GenericError".into(),
                    desc: "QEMU already runs an NBD server that tapevault did not start (another backup tool, or a migration): QEMU has only one; stop it (`nbd-server-stop`) or wait until it is done".into(),
                });
            }
            Err(e) => return Err(e),
        }
        observer(Step::ServerStarted);
        for d in &inner.disks {
            let mut args = json!({"type": "nbd", "id": d.export_id, "node-name": d.node,
                "name": d.export, "writable": false});
            if d.bitmap_context.is_some() {
                args["bitmaps"] = json!([EXPORT_BITMAP]);
            }
            inner.client.execute("block-export-add", Some(args))?;
        }
        observer(Step::Exported);
        Ok(consistency)
    }

    /// The private NBD server's socket.
    pub fn nbd_socket(&self) -> &Path {
        &self.socket
    }

    pub fn consistency(&self) -> &Consistency {
        &self.consistency
    }

    /// What a killed earlier run left and this one removed, in words.
    pub fn removed_leftovers(&self) -> &[String] {
        &self.removed
    }

    pub fn disks(&self) -> Vec<LiveDisk> {
        self.inner.lock().expect("live backup state").disks.clone()
    }

    /// Call after the disk's image is on tape and committed in the catalog: the
    /// previous epoch's bitmap is no longer needed and is removed.
    pub fn committed(&mut self, id: Uuid) -> Result<(), QmpError> {
        let mut g = self.inner.lock().expect("live backup state");
        let inner = &mut *g;
        let Some(d) = inner.disks.iter_mut().find(|d| d.id == id) else {
            return Ok(());
        };
        d.committed = true;
        if let Some(old) = d.retire.take() {
            leftovers::remove_bitmap(&mut inner.client, &d.disk.node, &old)?;
        }
        Ok(())
    }

    /// Ends the backup: exports, jobs, the server, scratch nodes and files are removed;
    /// disks not [`committed`](LiveBackup::committed) lose the new epoch's bitmap.
    pub fn finish(mut self) -> Result<(), QmpError> {
        self.guard.take();
        let mut g = self.inner.lock().expect("live backup state");
        let t = g.teardown();
        let a = g.abort_uncommitted();
        t.and(a)
    }
}

impl Inner {
    fn teardown(&mut self) -> Result<(), QmpError> {
        if self.torn_down {
            return Ok(());
        }
        let mut first_err = None;
        let mut note = |r: Result<(), QmpError>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        for d in &self.disks {
            note(leftovers::del_export(&mut self.client, &d.export_id));
        }
        for d in &self.disks {
            note(leftovers::cancel_job(&mut self.client, &d.job));
        }
        if self.server {
            note(leftovers::stop_server(&mut self.client).map(|_| ()));
            self.server = false;
        }
        for d in &self.disks {
            note(leftovers::del_node(&mut self.client, &d.node));
            let _ = std::fs::remove_file(&d.scratch);
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.torn_down = true;
        Ok(())
    }

    /// The catalog still names the previous epoch for these disks: drop the new one.
    fn abort_uncommitted(&mut self) -> Result<(), QmpError> {
        let mut first_err = None;
        for d in &mut self.disks {
            if d.committed {
                continue;
            }
            if let Some(b) = d.new_bitmap.take() {
                if let Err(e) = leftovers::remove_bitmap(&mut self.client, &d.disk.node, &b) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for LiveBackup {
    fn drop(&mut self) {
        self.guard.take();
        if let Ok(mut g) = self.inner.lock() {
            let _ = g.teardown();
            let _ = g.abort_uncommitted();
        }
    }
}

/// Creates an empty qcow2 scratch image of `size` bytes (its backing node is given when
/// it is added, so the file names none).
fn create_scratch(path: &Path, size: u64) -> Result<(), QmpError> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string())
        .output()
        .map_err(|e| QmpError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                e.kind(),
                format!("running qemu-img (is it installed?): {e}"),
            ),
        })?;
    if !out.status.success() {
        return Err(QmpError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "qemu-img create failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    Ok(())
}
