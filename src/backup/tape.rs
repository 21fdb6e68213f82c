//! The tape side of a backup: the cartridge being written, how the next one is found,
//! labelled or checked, and positioned, and how it is released.

use std::collections::HashSet;
use std::sync::Mutex;

use tape_formats::VolumeLabel;
use uuid::Uuid;

use crate::catalog::{Catalog, MediaSetRow, MediaState, PoolRow};
use crate::error::{Context, Result};
use crate::media::allocate::Pick;
use crate::media::volume::{position_for_append, read_label, write_label_streaming, LabelRead};
use crate::media::{mount, DriveSink, Mounted};
use tape_devices::changer::TapeLibrary;

use super::*;
use crate::events::{Events, NoteKind};

/// The cartridge being written and how to get the next one.
pub(super) struct Tape<'a> {
    pub(super) cat: &'a Catalog,
    pub(super) lib: &'a mut dyn TapeLibrary,
    pub(super) pool: PoolRow,
    pub(super) set: MediaSetRow,
    pub(super) present: HashSet<String>,
    /// Cartridges this session filled or could not use.
    pub(super) exclude: HashSet<String>,
    pub(super) current: Option<Current>,
    pub(super) escrow: Option<Vec<u8>>,
    /// The drive's data key for a pool with drive encryption: loaded after the label is
    /// read or written, cleared when the drive is let go ([`crate::media::drive_key`]).
    pub(super) drive_key: Option<tape_devices::drive::DataKey>,
    pub(super) wait: Option<crate::media::allocate::MediaWait>,
    /// Cartridges flushed since an image waiting for its commit was last written to
    /// them: what the session's deferred commit may count on.
    pub(super) flushed: HashSet<String>,
    /// Where the job's notes about cartridges and waits go.
    pub(super) events: &'a dyn Events,
    /// When several drives of one session write at once: what they share.
    pub(super) shared: Option<std::sync::Arc<SharedDrives>>,
}

/// What the drives of one backup session writing at once share ([`super::session`]):
/// the cartridges they hold, so that none picks a cartridge another has mounted; its
/// lock is held while one of them picks, labels and mounts a cartridge, so a joining
/// cartridge's set sequence number is unique.
#[derive(Default)]
pub(super) struct SharedDrives {
    held: Mutex<HashSet<String>>,
}

impl SharedDrives {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) struct Current {
    pub(super) barcode: String,
    pub(super) drive_index: usize,
    pub(super) sink: Option<DriveSink>,
    /// File number the next tape file gets.
    pub(super) next_file: u64,
    pub(super) bytes_at_mount: u64,
}

impl Tape<'_> {
    /// Make sure a writable cartridge of the set is mounted and positioned at end of
    /// data; returns its barcode.
    pub(super) fn ensure_mounted(&mut self) -> Result<()> {
        if self.current.is_some() {
            return Ok(());
        }
        // With other drives of the session: one mount at a time, never a cartridge
        // another of them holds.
        let shared = self.shared.clone();
        let mut held = shared.as_deref().map(SharedDrives::lock);
        loop {
            let exclude: HashSet<String> = match &held {
                Some(h) => self.exclude.union(h).cloned().collect(),
                None => self.exclude.clone(),
            };
            let (pick, present) = crate::media::allocate::pick_or_wait(
                self.cat,
                self.lib,
                &self.pool,
                &self.set,
                &exclude,
                self.wait,
                self.events,
            )?;
            self.present = present;
            let row = pick.row().clone();
            let mut m = mount::mount(self.lib, &row.barcode, Some(&row.location))?;
            if self.drive_key.is_some() {
                // Before anything is written (a label included): a drive that cannot
                // encrypt refuses the pool, it never writes the pool's data in the clear.
                if let Err(e) = crate::media::drive_key::check_capable(
                    m.drive.as_mut(),
                    &row.barcode,
                    &self.pool.name,
                ) {
                    let _ = mount::unmount(self.lib, m);
                    return Err(e);
                }
            }
            match self.prepare(&pick, &mut m) {
                Ok(Some((block, file))) => {
                    let Mounted {
                        drive_index,
                        barcode,
                        drive,
                    } = m;
                    let drive = match &self.drive_key {
                        None => drive,
                        Some(k) => {
                            match crate::media::drive_key::arm(drive, k, &barcode, &self.pool.name)
                            {
                                Ok(d) => d,
                                Err((d, e)) => {
                                    let _ = mount::unmount(
                                        self.lib,
                                        Mounted {
                                            drive_index,
                                            barcode,
                                            drive: d,
                                        },
                                    );
                                    return Err(e);
                                }
                            }
                        }
                    };
                    if let Some(h) = held.as_mut() {
                        h.insert(row.barcode.clone());
                    }
                    self.current = Some(Current {
                        barcode: row.barcode.clone(),
                        drive_index,
                        sink: Some(DriveSink::new(drive, block)),
                        next_file: file,
                        bytes_at_mount: 0,
                    });
                    return Ok(());
                }
                Ok(None) => {
                    // Not usable (foreign data, label of another volume): skip it.
                    self.exclude.insert(row.barcode.clone());
                    mount::unmount(self.lib, m)?;
                }
                Err(e) => {
                    let _ = mount::unmount(self.lib, m);
                    return Err(e);
                }
            }
        }
    }

    /// Label a joining cartridge, or check the label of an appended one; position at
    /// end of data. None: the cartridge must not be written (reason reported).
    pub(super) fn prepare(&mut self, pick: &Pick, m: &mut Mounted) -> Result<Option<(u64, u64)>> {
        let drive = m.drive.as_mut();
        let row = pick.row();
        let found =
            read_label(drive).with_context(|| format!("reading the label of {}", row.barcode))?;
        match pick {
            Pick::Append(row) => {
                match found {
                    LabelRead::Label(l)
                        if Some(Uuid::from_bytes(l.volume_uuid)) == row.volume_uuid
                            && Uuid::from_bytes(l.media_set_uuid) == self.set.uuid => {}
                    other => {
                        self.events.note(NoteKind::Media, format!(
                            "cartridge {} should hold volume {} of media set {} but holds {}; not writing to it",
                            row.barcode,
                            row.volume_uuid.map(|u| u.to_string()).unwrap_or_default(),
                            self.set.uuid,
                            describe(&other)
                        ));
                        self.cat
                            .set_media_state(&row.barcode, MediaState::Damaged)?;
                        return Ok(None);
                    }
                }
                let (block, file) = position_for_append(drive)?;
                Ok(Some((block, file)))
            }
            Pick::Join(row) => {
                // A WORM pool takes only WORM cartridges, and a WORM cartridge (which can
                // never be recycled) only joins a WORM pool.
                if let Ok(st) = drive.status() {
                    if st.worm != self.pool.worm {
                        self.events.note(
                            NoteKind::Media,
                            format!(
                                "cartridge {} is {}a WORM cartridge and pool {} {}; skipping it",
                                row.barcode,
                                if st.worm { "" } else { "not " },
                                self.pool.name,
                                if self.pool.worm {
                                    "takes only WORM cartridges"
                                } else {
                                    "is not a WORM pool"
                                }
                            ),
                        );
                        return Ok(None);
                    }
                }
                // Never overwrite what the catalog does not know to be disposable.
                let ok = match &found {
                    LabelRead::Blank => true,
                    LabelRead::Label(l) => Some(Uuid::from_bytes(l.volume_uuid)) == row.volume_uuid,
                    LabelRead::Foreign(_) => false,
                };
                if !ok {
                    self.events.note(NoteKind::Media, format!(
                        "cartridge {} holds {} that this catalog does not know; skipping it (run `tapevault catalog rebuild --barcode {}` to import it, or `tapevault label {} --pool {} --force` to overwrite it)",
                        row.barcode,
                        describe(&found),
                        row.barcode,
                        row.barcode,
                        self.pool.name
                    ));
                    return Ok(None);
                }
                let seq = self
                    .cat
                    .media_in_set(self.set.uuid)?
                    .iter()
                    .filter_map(|m| m.seq_in_set)
                    .max()
                    .map(|s| s + 1)
                    .unwrap_or(0);
                let volume = Uuid::new_v4();
                let label = VolumeLabel {
                    volume_uuid: *volume.as_bytes(),
                    media_set_uuid: *self.set.uuid.as_bytes(),
                    set_sequence: seq,
                    label_time: crate::home::clock::now().timestamp(),
                    key_fingerprint: self.pool.key_fingerprint.as_deref().and_then(fp_bytes),
                    barcode: row.barcode.clone(),
                    pool_name: self.pool.name.clone(),
                    writer_name: "tapevault".into(),
                    writer_version: env!("CARGO_PKG_VERSION").into(),
                    escrow: self.escrow.clone().unwrap_or_default(),
                };
                // Buffered: the first image follows on a streaming tape; its commit flush
                // puts the label on tape too.
                write_label_streaming(drive, &label)
                    .with_context(|| format!("labelling {}", row.barcode))?;
                self.cat
                    .assign_media(&row.barcode, &self.pool.name, self.set.uuid, seq, volume)?;
                self.events.note(
                    NoteKind::Media,
                    format!(
                        "cartridge {} joins media set {} of pool {} as volume {}",
                        row.barcode, self.set.uuid, self.pool.name, seq
                    ),
                );
                let p = drive
                    .position()
                    .context("reading the position after the label")?;
                Ok(Some((p.block, p.file)))
            }
        }
    }

    pub(super) fn current(&mut self) -> &mut Current {
        self.current.as_mut().expect("mounted")
    }

    /// Take the sink to start a tape file; returns (sink, barcode, tape file number).
    pub(super) fn take_sink(&mut self) -> Result<(DriveSink, String, u64)> {
        self.ensure_mounted()?;
        let c = self.current();
        let sink = c.sink.take().expect("sink present between tape files");
        Ok((sink, c.barcode.clone(), c.next_file))
    }

    /// Give the sink back after a tape file was closed by a filemark.
    pub(super) fn put_sink(&mut self, sink: DriveSink) -> Result<()> {
        let c = self.current();
        c.next_file += 1;
        let added = sink.bytes - c.bytes_at_mount;
        c.bytes_at_mount = sink.bytes;
        let (bc, nf) = (c.barcode.clone(), c.next_file);
        c.sink = Some(sink);
        self.cat.record_media_write(&bc, nf, added)?;
        Ok(())
    }

    /// The cartridge is full (early warning): mark it, put it away, and exclude it.
    pub(super) fn retire_current(&mut self, state: MediaState) -> Result<()> {
        if let Some(c) = &self.current {
            self.cat.set_media_state(&c.barcode, state)?;
            self.exclude.insert(c.barcode.clone());
        }
        self.release()
    }

    /// Flush the drive of the cartridge being written, if any: everything written to
    /// it is then on tape. A cartridge whose state is unknown (its sink was dropped
    /// after a drive failure) cannot be flushed: an error.
    pub(super) fn flush_current(&mut self) -> Result<()> {
        let Some(c) = self.current.as_mut() else {
            return Ok(());
        };
        let sink = c.sink.as_mut().ok_or_else(|| {
            crate::error::Error::Failed(format!(
                "cartridge {} is in an unknown state after a drive error: what was written to it since its last flush cannot be counted on",
                c.barcode
            ))
        })?;
        sink.drive
            .flush()
            .with_context(|| format!("flushing {}", c.barcode))?;
        self.flushed.insert(c.barcode.clone());
        Ok(())
    }

    pub(super) fn touch(&mut self) -> Result<()> {
        crate::media::lifecycle::record_set_write(
            self.cat,
            self.set.uuid,
            crate::home::clock::now(),
        )?;
        Ok(())
    }

    /// Flush and put the cartridge away. A cartridge in early warning is marked full.
    pub(super) fn release(&mut self) -> Result<()> {
        let Some(c) = self.current.take() else {
            return Ok(());
        };
        if let Some(s) = &self.shared {
            s.lock().remove(&c.barcode);
        }
        let mut full = false;
        if let Some(sink) = c.sink {
            full = sink.early_warning;
            let mut drive = sink.drive;
            drive
                .flush()
                .with_context(|| format!("flushing {}", c.barcode))?;
            drop(drive);
            self.flushed.insert(c.barcode.clone());
        }
        if full {
            self.cat.set_media_state(&c.barcode, MediaState::Full)?;
        }
        self.lib
            .changer()
            .unload(c.drive_index)
            .with_context(|| format!("unloading {} from drive {}", c.barcode, c.drive_index))?;
        Ok(())
    }
}

pub(super) fn describe(l: &LabelRead) -> String {
    match l {
        LabelRead::Blank => "nothing (blank)".into(),
        LabelRead::Label(l) => format!(
            "tapevault volume {} of pool {} (media set {})",
            Uuid::from_bytes(l.volume_uuid),
            l.pool_name,
            Uuid::from_bytes(l.media_set_uuid)
        ),
        LabelRead::Foreign(d) => format!("foreign data ({d})"),
    }
}
