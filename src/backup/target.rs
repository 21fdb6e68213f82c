//! Writing images that do not come from a disk: the writing half of a backup session
//! (pool, key, pool lock, media set, session, cartridges, the bounded pipeline with
//! spanning, the session end) for jobs that build an image from other records, such as
//! tape-to-tape copies ([`crate::copy`]) and synthetic fulls. The records are written
//! under the target pool's policy: its compression, its key with fresh nonces.

use std::collections::HashSet;

use tape_formats::{Cipher, ImageHeader};
use uuid::Uuid;

use crate::catalog::{
    self, Catalog, MediaSetRow, MediaState, PoolRow, SessionStatus, SnapshotLocation,
};
use crate::codec::Sealer;
use crate::error::{Context as _, Error, Result};
use crate::events::{Events, NoteKind};
use crate::home::locks::JobLock;
use crate::home::Home;
use crate::media::allocate::session_media_set;
use crate::pipeline::StageTimes;
use tape_devices::changer::TapeLibrary;
use tape_devices::drive::DriveError;

use super::*;

/// An image as written: what the catalog commit needs.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    pub records: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub stored_bytes: u64,
    /// Content digest of the image as written (keyed with the target pool's key when
    /// it is encrypted).
    pub digest: [u8; 32],
    pub segments: Vec<catalog::Segment>,
    /// The disk ranges written, in disk order (beyond the in-memory limit in a
    /// temporary file): read with
    /// [`crate::extent_spool::ItemList::reader`].
    pub coverage: crate::extent_spool::ItemList<catalog::Extent>,
    pub cartridges: Vec<String>,
    pub stages: StageTimes,
}

/// How a session's writes are encrypted: tapevault's sealer (software), the drive's own
/// encryption under a data key (pools with `encryption = "drive"`), or neither; and the
/// key escrow the labels carry.
pub(super) struct PoolCrypto {
    pub(super) sealer: Option<Sealer>,
    pub(super) drive_key: Option<tape_devices::drive::DataKey>,
    pub(super) escrow: Option<Vec<u8>>,
}

impl PoolCrypto {
    /// The same encryption for another drive of a session writing at once: the same
    /// key, and a nonce source of its own (nonce ranges are reserved under the
    /// keystore's lock, so no two sources ever hand out the same nonce).
    pub(super) fn for_another_drive(&self, home: &Home) -> Result<PoolCrypto> {
        let sealer = match &self.sealer {
            None => None,
            Some(s) => {
                let nonces =
                    crate::crypto::Keystore::open(&home.dir)?.nonce_source(&s.key.fingerprint)?;
                Some(Sealer::new(s.key.clone(), nonces))
            }
        };
        Ok(PoolCrypto {
            sealer,
            drive_key: self
                .drive_key
                .as_ref()
                .map(|k| tape_devices::drive::DataKey {
                    key: k.key,
                    kad: k.kad,
                    encrypt: k.encrypt,
                }),
            escrow: self.escrow.clone(),
        })
    }
}

/// The pool's encryption from its unlocked key (nothing for a clear pool); a key that is
/// not the pool's, or none for an encrypted pool, is exit 5.
pub(super) fn pool_sealer(
    home: &Home,
    pool: &PoolRow,
    key: Option<KeyMaterial>,
    action: &str,
) -> Result<PoolCrypto> {
    match (&pool.key_fingerprint, key) {
        (None, _) => Ok(PoolCrypto {
            sealer: None,
            drive_key: None,
            escrow: None,
        }),
        (Some(fp), Some(k)) => {
            if &k.key.fingerprint_hex() != fp {
                return Err(Error::Key(format!(
                    "pool {} is encrypted with key {fp}, but key {} was given",
                    pool.name,
                    k.key.fingerprint_hex()
                )));
            }
            let escrow = match (&k.passphrase, pool.escrow) {
                (Some(p), true) => Some(crate::crypto::escrow::wrap(
                    &k.key,
                    p.as_bytes(),
                    crate::crypto::KdfParams::default(),
                )?),
                _ => None,
            };
            let pools = crate::home::pools_toml::load(&home.dir)?;
            if crate::home::pools_toml::drive_encrypted(&pools, &pool.name) {
                return Ok(PoolCrypto {
                    sealer: None,
                    drive_key: Some(k.key.drive_data_key(true)),
                    escrow,
                });
            }
            let nonces =
                crate::crypto::Keystore::open(&home.dir)?.nonce_source(&k.key.fingerprint)?;
            Ok(PoolCrypto {
                sealer: Some(Sealer::new(k.key, nonces)),
                drive_key: None,
                escrow,
            })
        }
        (Some(fp), None) => Err(Error::Key(format!(
            "pool {} is encrypted with key {fp}; unlock it to {action}",
            pool.name
        ))),
    }
}

/// Begin a writing session in `pool`: take the pool's lock for `what` (a stale lock of a
/// process that is gone is taken over, said out loud), pick the session's media set,
/// record the session as running, and make the job that writes its images, with the
/// pool's key escrow when the pool keeps one. Backups and [`ImageTarget`]s both start
/// here.
#[allow(clippy::too_many_arguments)]
pub(super) fn begin_pool_session<'a>(
    home: &'a Home,
    cat: &'a Catalog,
    lib: &'a mut dyn TapeLibrary,
    pool: &PoolRow,
    crypto: PoolCrypto,
    wait_for_media: bool,
    what: &str,
    events: &'a dyn Events,
) -> Result<(JobLock, MediaSetRow, Job<'a>)> {
    let lock = JobLock::try_acquire(
        &home.locks_dir().join(format!("pool-{}.lock", pool.name)),
        what,
    )?;
    if let Some(note) = &lock.stale_note {
        events.note(
            NoteKind::Recovery,
            format!(
                "found a stale lock of pool {} left by a process that is gone ({note}); taking it over",
                pool.name
            ),
        );
    }
    let now = crate::home::clock::now();
    let set = session_media_set(cat, pool, now)?;
    let session = cat.begin_session(&pool.name, Some(set.uuid))?;
    let job = Job::new(
        home,
        cat,
        lib,
        pool,
        &set,
        session.uuid,
        crypto,
        wait_for_media,
        events,
    );
    Ok((lock, set, job))
}

impl<'a> Job<'a> {
    /// The job that writes images of `session` into media set `set` of `pool` through
    /// `lib`, with the pool's encryption; no cartridge mounted yet.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        home: &'a Home,
        cat: &'a Catalog,
        lib: &'a mut dyn TapeLibrary,
        pool: &PoolRow,
        set: &MediaSetRow,
        session: Uuid,
        crypto: PoolCrypto,
        wait_for_media: bool,
        events: &'a dyn Events,
    ) -> Job<'a> {
        let PoolCrypto {
            sealer,
            drive_key,
            escrow,
        } = crypto;
        let tape = Tape {
            cat,
            lib,
            pool: pool.clone(),
            set: set.clone(),
            present: HashSet::new(),
            exclude: HashSet::new(),
            current: None,
            escrow,
            drive_key,
            flushed: HashSet::new(),
            events,
            shared: None,
            // Wait for media only when a person can insert it.
            wait: wait_for_media.then(|| crate::media::allocate::MediaWait {
                max: std::time::Duration::from_secs(home.config.media_wait_secs),
                poll: crate::media::allocate::MEDIA_POLL_INTERVAL,
            }),
        };
        Job {
            home,
            tape,
            sealer,
            session,
            image_parts: 0,
            seal_buf: Vec::new(),
            reproduce: None,
            image_time: crate::home::clock::now(),
            defer_commit: false,
            pending: Vec::new(),
            spool: crate::spool::Spool::Off,
        }
    }
}

/// A writing session in one pool: holds the pool lock; images go to the pool's media
/// set one after the other; [`ImageTarget::finish`] writes the session's catalog
/// snapshot and end-of-session marker.
pub struct ImageTarget<'a> {
    job: Job<'a>,
    _lock: JobLock,
    set: MediaSetRow,
}

impl<'a> ImageTarget<'a> {
    /// Open a session in `pool` for `what` (named in the lock, e.g. "copy to pool X").
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        home: &'a Home,
        cat: &'a Catalog,
        lib: &'a mut dyn TapeLibrary,
        pool: &PoolRow,
        key: Option<KeyMaterial>,
        wait_for_media: bool,
        what: &str,
        events: &'a dyn Events,
    ) -> Result<ImageTarget<'a>> {
        let crypto = pool_sealer(home, pool, key, what)?;
        let (lock, set, job) =
            begin_pool_session(home, cat, lib, pool, crypto, wait_for_media, what, events)?;
        Ok(ImageTarget {
            job,
            _lock: lock,
            set,
        })
    }

    pub fn session(&self) -> Uuid {
        self.job.session
    }

    pub fn pool(&self) -> &PoolRow {
        &self.job.tape.pool
    }

    /// The fingerprint of the key records are sealed with here: the pool's key for a
    /// pool with software encryption, None for a clear pool or one the drive encrypts.
    pub fn record_key_fingerprint(&self) -> Option<String> {
        self.job
            .sealer
            .as_ref()
            .and(self.job.tape.pool.key_fingerprint.clone())
    }

    pub fn media_set(&self) -> Uuid {
        self.set.uuid
    }

    /// The cipher records are sealed with (the pool's key), for image headers.
    pub fn cipher(&self) -> Cipher {
        self.job
            .sealer
            .as_ref()
            .map_or(Cipher::None, Sealer::cipher)
    }

    /// The key of the content digest of images written here (None: clear pool).
    pub fn digest_key(&self) -> Option<[u8; 32]> {
        self.job.sealer.as_ref().map(|s| *s.key.digest_key())
    }

    /// Mount a cartridge of the set (if none is) and say the most plain bytes a record
    /// may carry on its drive.
    pub fn max_record_data_size(&mut self) -> Result<usize> {
        self.job.tape.ensure_mounted()?;
        let max_block = self
            .job
            .tape
            .current()
            .sink
            .as_ref()
            .map(|s| s.drive.max_block_size())
            .unwrap_or(tape_formats::MAX_BLOCK_SIZE)
            .min(tape_formats::MAX_BLOCK_SIZE);
        record_data_size_for(max_block).ok_or_else(|| {
            Error::Failed(format!(
                "the drive's largest block ({max_block} bytes) is too small for tapevault records"
            ))
        })
    }

    /// The cartridge being written, if one is mounted.
    pub fn current_barcode(&self) -> Option<String> {
        self.job.tape.current.as_ref().map(|c| c.barcode.clone())
    }

    /// Put the cartridge being written away (flushed), e.g. to free the only drive.
    pub fn release(&mut self) -> Result<()> {
        self.job.tape.release()
    }

    /// Write one image: `header` (part 0) then the records `fill` produces, until it
    /// returns `false`; the trailer, filemark and flush. On error, the cartridge is
    /// marked as the drive error says (damaged after a media error, full at end of
    /// medium) and nothing is committed: the caller fails its image row.
    pub fn write_image(
        &mut self,
        header: ImageHeader,
        label: String,
        total: u64,
        fill: &mut FillRecord<'_>,
    ) -> Result<WrittenImage> {
        let r = (|| -> Result<image::ImageProgress> {
            let mut st = self.job.stream_records(header, label, total, fill, None)?;
            self.job.close_image(&mut st)?;
            Ok(st)
        })();
        match r.and_then(|mut st| {
            let coverage = st
                .take_coverage()
                .context("keeping the image's coverage in its temporary file")?;
            Ok((st, coverage))
        }) {
            Ok((st, coverage)) => Ok(WrittenImage {
                records: st.records,
                data_bytes: st.data_bytes,
                zero_bytes: st.zero_bytes,
                stored_bytes: st.stored_bytes,
                digest: st.digest,
                segments: st.segments,
                coverage,
                cartridges: st.cartridges,
                stages: st.stages,
            }),
            Err(e) => {
                let cat = self.job.tape.cat;
                if let Some(c) = &self.job.tape.current {
                    match root_drive_error(&e) {
                        Some(DriveError::MediaError { .. }) | Some(DriveError::Io { .. }) => {
                            let _ = cat.add_media_errors(&c.barcode, 1);
                            let _ = cat.set_media_state(&c.barcode, MediaState::Damaged);
                        }
                        Some(DriveError::EndOfMedium) => {
                            let _ = cat.set_media_state(&c.barcode, MediaState::Full);
                        }
                        _ => {}
                    }
                }
                Err(e)
            }
        }
    }

    /// End the session: complete in the catalog, the catalog snapshot of the media set
    /// and the end-of-session marker on tape, the cartridge put away.
    pub fn finish(mut self) -> Result<SnapshotLocation> {
        let cat = self.job.tape.cat;
        let r = (|| -> Result<SnapshotLocation> {
            cat.finish_session(self.job.session, SessionStatus::Complete)?;
            self.job.tape.touch()?;
            self.job.write_session_end()
        })();
        let released = self.job.tape.release();
        match r {
            Ok(loc) => {
                released?;
                Ok(loc)
            }
            Err(e) => {
                let _ = cat.finish_session(self.job.session, SessionStatus::Failed);
                Err(e)
            }
        }
    }

    /// End the session as failed (nothing more is written), the cartridge put away.
    pub fn fail(mut self) -> Result<()> {
        let cat = self.job.tape.cat;
        let _ = cat.finish_session(self.job.session, SessionStatus::Failed);
        self.job.tape.release()
    }
}
