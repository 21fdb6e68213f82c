//! `catalog backup` (the whole catalog onto a chosen cartridge) and `catalog check
//! --media` (the catalog against what the cartridges really hold).

use serde::Serialize;
use tape_formats::{decode_block, Block, BlockSink, BlockSource, EndOfSession, ReadStatus};
use uuid::Uuid;

use super::KeySource;
use crate::catalog::{self, Catalog, MediaState, SnapshotLocation};
use crate::codec::Sealer;
use crate::crypto::{Keystore, RecordKey};
use crate::error::{Context, Error, Result};
use crate::home::locks::JobLock;
use crate::home::Home;
use crate::media::volume::{position_for_append, read_label, LabelRead};
use crate::media::{mount, unmount, DriveSink, DriveSource, Mounted};
use tape_devices::changer::TapeLibrary;
use tape_devices::drive::TapeDrive;

/// What `catalog backup` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogBackupReport {
    pub barcode: String,
    pub tape_file: u64,
    pub block: u64,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    pub encrypted: bool,
    pub session: Uuid,
}

/// Write the whole catalog as a snapshot tape file plus an EndOfSession tape file at
/// the end of data of `barcode` (encrypted under its pool's key when the pool is).
pub fn backup_catalog(
    home: &Home,
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    barcode: &str,
    keys: &mut KeySource<'_>,
) -> Result<CatalogBackupReport> {
    let row = cat.media(barcode)?.ok_or_else(|| {
        Error::Usage(format!(
            "cartridge {barcode} is not in the catalog (see `tapevault media list`)"
        ))
    })?;
    let (Some(pool_name), Some(volume)) = (row.pool.clone(), row.volume_uuid) else {
        return Err(Error::Usage(format!(
            "cartridge {barcode} is not labelled into a pool: label it first (`tapevault label {barcode} --pool NAME`)"
        )));
    };
    if matches!(
        row.state,
        MediaState::Damaged | MediaState::Retired | MediaState::Expired
    ) {
        return Err(Error::Failed(format!(
            "cartridge {barcode} is {}; choose a cartridge in use",
            row.state
        )));
    }
    let pool = cat
        .pool(&pool_name)?
        .ok_or_else(|| Error::Failed(format!("pool {pool_name} is not in the catalog")))?;
    let _lock = JobLock::try_acquire(
        &home.locks_dir().join(format!("pool-{}.lock", pool.name)),
        &format!("catalog backup to {barcode} (pool {})", pool.name),
    )?;
    let m = mount(lib, barcode, Some(&row.location))?;
    let (m, result) = write_on(home, cat, m, barcode, volume, &pool, keys);
    let u = unmount(lib, m);
    let rep = result?;
    u?;
    Ok(rep)
}

/// What is settled before anything is written.
struct Prepared {
    label: tape_formats::VolumeLabel,
    sealer: Option<Sealer>,
    plain: Vec<u8>,
    block: u64,
    file: u64,
}

fn prepare(
    home: &Home,
    cat: &Catalog,
    m: &mut Mounted,
    barcode: &str,
    volume: Uuid,
    pool: &catalog::PoolRow,
    keys: &mut KeySource<'_>,
) -> Result<Prepared> {
    let label = match read_label(m.drive.as_mut())? {
        LabelRead::Label(l) if Uuid::from_bytes(l.volume_uuid) == volume => l,
        LabelRead::Label(l) => {
            return Err(Error::Failed(format!(
                "cartridge {barcode} holds volume {} but the catalog expects volume {volume}; not writing to it",
                Uuid::from_bytes(l.volume_uuid)
            )))
        }
        other => {
            return Err(Error::Failed(format!(
                "cartridge {barcode} has no tapevault label of volume {volume} ({other:?}); not writing to it"
            )))
        }
    };
    let want_fp = pool
        .key_fingerprint
        .as_deref()
        .and_then(crate::backup::fp_bytes);
    if want_fp != label.key_fingerprint {
        return Err(Error::Failed(format!(
            "cartridge {barcode}'s label names key {:?}, its pool {} key {:?}",
            label.key_fingerprint.map(|f| crate::crypto::to_hex(&f)),
            pool.name,
            pool.key_fingerprint
        )));
    }
    let sealer = match want_fp {
        Some(fp) => {
            keys.need(fp, &label.escrow, barcode)?;
            let key = keys.ring.get(&fp).expect("just made available");
            let owned = RecordKey::from_bytes(*key.raw());
            let nonces = Keystore::open(&home.dir)?.nonce_source(&fp)?;
            Some(Sealer::new(owned, nonces))
        }
        None => None,
    };
    let plain = cat.snapshot(catalog::SnapshotScope::All)?;
    let (block, file) = position_for_append(m.drive.as_mut())?;
    Ok(Prepared {
        label,
        sealer,
        plain,
        block,
        file,
    })
}

/// Write the snapshot onto the mounted cartridge; the mount is handed back whatever
/// happens, so the caller can put the cartridge away.
fn write_on(
    home: &Home,
    cat: &Catalog,
    mut m: Mounted,
    barcode: &str,
    volume: Uuid,
    pool: &catalog::PoolRow,
    keys: &mut KeySource<'_>,
) -> (Mounted, Result<CatalogBackupReport>) {
    let p = match prepare(home, cat, &mut m, barcode, volume, pool, keys) {
        Ok(p) => p,
        Err(e) => return (m, Err(e)),
    };
    let Prepared {
        label,
        mut sealer,
        plain,
        block,
        file,
    } = p;
    let Mounted {
        drive_index,
        barcode: mounted_bc,
        drive,
    } = m;
    let mut sink = DriveSink::new(drive, block);
    let session = Uuid::new_v4();
    let r = write_snapshot_files(&mut sink, &plain, session, &label, sealer.as_mut());
    let bytes = sink.bytes;
    let flushed = sink.drive.flush();
    let m = Mounted {
        drive_index,
        barcode: mounted_bc,
        drive: sink.drive,
    };
    let rep = (|| {
        let stored = r.with_context(|| format!("writing the catalog to {barcode}"))?;
        flushed.with_context(|| format!("flushing {barcode}"))?;
        let now = crate::home::clock::now();
        let loc = SnapshotLocation {
            barcode: barcode.to_string(),
            tape_file: file,
            block,
            session_uuid: Some(session),
            time: catalog::catalog_time(now),
        };
        cat.record_snapshot(&loc)?;
        cat.record_media_write(barcode, file + 2, bytes)?;
        Ok(CatalogBackupReport {
            barcode: barcode.to_string(),
            tape_file: file,
            block,
            plain_bytes: plain.len() as u64,
            stored_bytes: stored,
            encrypted: sealer.is_some(),
            session,
        })
    })();
    (m, rep)
}

/// Snapshot tape file (header, chunks, trailer, filemark) then an EndOfSession tape
/// file. Returns the stored bytes of the chunks.
pub(crate) fn write_snapshot_files(
    sink: &mut DriveSink,
    plain: &[u8],
    session: Uuid,
    label: &tape_formats::VolumeLabel,
    sealer: Option<&mut Sealer>,
) -> Result<u64> {
    let now = crate::home::clock::now().timestamp();
    let stored_total = crate::media::snapshot::write_snapshot_file(
        sink,
        plain,
        session,
        label.media_set_uuid,
        now,
        sealer,
    )?;
    let mut buf = Vec::new();
    EndOfSession {
        session_uuid: *session.as_bytes(),
        media_set_uuid: label.media_set_uuid,
        time: now,
        image_parts: 0,
        set_sequence: label.set_sequence,
    }
    .encode(&mut buf)
    .map_err(|e| Error::Failed(format!("encoding the end-of-session marker: {e}")))?;
    sink.write_block(&buf)?;
    sink.write_filemark()?;
    Ok(stored_total)
}

/// A disagreement between the catalog and a cartridge.
#[derive(Debug, Clone, Serialize)]
pub struct MediaProblem {
    pub barcode: String,
    pub detail: String,
}

/// What `catalog check --media` looked at.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaCheck {
    pub cartridges_checked: Vec<String>,
    /// Cartridges the catalog has data on that are not in the library.
    pub not_in_library: Vec<String>,
    pub segments_checked: u64,
    pub problems: Vec<MediaProblem>,
}

/// Check every labelled cartridge in the library against the catalog: the label (volume,
/// pool, media set, sequence) and, for each segment on it, that its first and last
/// blocks hold the data records the catalog claims (image, part, sequence, tape file).
pub fn check_media(
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    present: &std::collections::HashSet<String>,
) -> Result<MediaCheck> {
    let mut out = MediaCheck::default();
    let mut buf = Vec::new();
    for row in cat.list_media(None)? {
        let Some(volume) = row.volume_uuid else {
            continue;
        };
        let bc = row.barcode.clone();
        if !present.contains(&bc) {
            if !cat.images_on_media(&bc)?.is_empty() {
                out.not_in_library.push(bc);
            }
            continue;
        }
        let mut problem = |detail: String| {
            out.problems.push(MediaProblem {
                barcode: bc.clone(),
                detail,
            })
        };
        let mut m = mount(lib, &bc, Some(&row.location))?;
        let r = (|| -> Result<u64> {
            let drive = m.drive.as_mut();
            match read_label(drive)? {
                LabelRead::Label(l) => {
                    let checks = [
                        (
                            "volume",
                            Uuid::from_bytes(l.volume_uuid).to_string(),
                            volume.to_string(),
                        ),
                        (
                            "pool",
                            l.pool_name.clone(),
                            row.pool.clone().unwrap_or_default(),
                        ),
                        (
                            "media set",
                            super::nonzero(l.media_set_uuid)
                                .map(|u| u.to_string())
                                .unwrap_or_default(),
                            row.media_set_uuid
                                .map(|u| u.to_string())
                                .unwrap_or_default(),
                        ),
                        (
                            "set sequence",
                            super::nonzero(l.media_set_uuid)
                                .map(|_| l.set_sequence.to_string())
                                .unwrap_or_default(),
                            row.seq_in_set.map(|s| s.to_string()).unwrap_or_default(),
                        ),
                    ];
                    for (what, tape, catalog) in checks {
                        if tape != catalog {
                            problem(format!(
                                "label says {what} {tape:?}, the catalog {catalog:?}"
                            ));
                        }
                    }
                }
                other => {
                    problem(format!(
                        "expected the label of volume {volume}, found {other:?}"
                    ));
                    return Ok(0);
                }
            }
            let mut n = 0;
            for img in cat.images_on_media(&bc)? {
                for s in cat.segments(img.uuid)? {
                    if s.barcode != bc {
                        continue;
                    }
                    n += 1;
                    for (block, seq) in [(s.first_block, s.first_seq), (s.last_block, s.last_seq)] {
                        if let Some(d) =
                            check_block(drive, &mut buf, block, s.tape_file, img.uuid, s.part, seq)?
                        {
                            problem(format!(
                                "image {} part {} record {seq} should be at logical block {block} (tape file {}): {d}",
                                img.uuid, s.part, s.tape_file
                            ));
                        }
                        if s.first_block == s.last_block {
                            break;
                        }
                    }
                }
            }
            Ok(n)
        })();
        let u = unmount(lib, m);
        out.segments_checked += r.with_context(|| format!("checking cartridge {bc}"))?;
        u?;
        out.cartridges_checked.push(row.barcode.clone());
    }
    Ok(out)
}

/// Locate to `block` and check it is the data record claimed. `Some(reason)` if not.
fn check_block(
    drive: &mut dyn TapeDrive,
    buf: &mut Vec<u8>,
    block: u64,
    tape_file: u64,
    image: Uuid,
    part: u32,
    seq: u64,
) -> Result<Option<String>> {
    if let Err(e) = drive.locate(block) {
        return Ok(Some(format!("cannot locate there: {e}")));
    }
    let p = drive.position().context("reading the position")?;
    if p.file != tape_file {
        return Ok(Some(format!("that block is in tape file {}", p.file)));
    }
    let mut src = DriveSource::new(drive, block);
    let n = match src.read_block(buf) {
        Ok(ReadStatus::Block(n)) => n,
        Ok(other) => return Ok(Some(format!("found {other:?}"))),
        Err(e) => return Ok(Some(format!("read failed: {e}"))),
    };
    Ok(match decode_block(&buf[..n]) {
        Ok(Block::Data(r)) => {
            let f = &r.fields;
            if f.image_uuid != *image.as_bytes() {
                Some(format!(
                    "it holds a record of image {}",
                    Uuid::from_bytes(f.image_uuid)
                ))
            } else if f.part != part || f.sequence != seq {
                Some(format!("it holds part {} record {}", f.part, f.sequence))
            } else {
                None
            }
        }
        Ok(other) => Some(format!("it holds a {}", other.kind_name())),
        Err(e) => Some(format!("it is damaged: {e}")),
    })
}
