//! `catalog backup`: the whole catalog written onto a chosen cartridge as a snapshot
//! tape file and an end-of-session marker.

use serde::Serialize;
use tape_formats::{BlockSink, EndOfSession};
use uuid::Uuid;

use super::KeySource;
use crate::catalog::{self, Catalog, MediaState, SnapshotLocation};
use crate::codec::Sealer;
use crate::crypto::{Keystore, RecordKey};
use crate::error::{Context, Error, Result};
use crate::home::locks::JobLock;
use crate::home::Home;
use crate::media::volume::{position_for_append, read_label, LabelRead};
use crate::media::{mount, unmount, DriveSink, Mounted};
use tape_devices::changer::TapeLibrary;

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
    /// The export, spooled (never held in memory), and its length.
    plain: crate::media::snapshot::Spool,
    plain_len: u64,
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
    let mut plain = crate::media::snapshot::Spool::new(cat.home_dir())?;
    let plain_len = plain.fill(|w| Ok(cat.write_snapshot(catalog::SnapshotScope::All, w)?))?;
    let (block, file) = position_for_append(m.drive.as_mut())?;
    Ok(Prepared {
        label,
        sealer,
        plain,
        plain_len,
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
        mut plain,
        plain_len,
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
    let r = plain.reader().and_then(|mut rd| {
        write_snapshot_files(
            &mut sink,
            &mut rd,
            plain_len,
            session,
            &label,
            sealer.as_mut(),
        )
    });
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
            plain_bytes: plain_len,
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
    plain: &mut dyn std::io::Read,
    plain_len: u64,
    session: Uuid,
    label: &tape_formats::VolumeLabel,
    sealer: Option<&mut Sealer>,
) -> Result<u64> {
    let now = crate::home::clock::now().timestamp();
    let stored_total = crate::media::snapshot::write_snapshot_file_from(
        sink,
        plain,
        plain_len,
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
