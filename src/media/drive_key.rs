//! Drive (hardware) encryption for pools declared `encryption = "drive"` in pools.toml:
//! the tape drive encrypts and decrypts every block with AES-256-GCM under a data key
//! derived from the pool's keystore key ([`crate::crypto::RecordKey::drive_data_key`]).
//! The key goes to the drive over SCSI (SECURITY PROTOCOL OUT) only while this process
//! holds the drive, and never onto the cartridge; the label stays clear (it names the
//! key's fingerprint), everything after it is encrypted by the drive.
//!
//! A drive holding a key is wrapped in a [`KeyedDrive`], which clears the drive's key
//! when it is dropped: whatever way a job ends (success, an error, a cartridge change),
//! the drive is left without a key before the cartridge is put away.
//!
//! Readers (restore, verify, copy, rebuild) register the cartridges they will read with
//! [`expect_reads`]; [`crate::media::mount`] then loads the key (decrypt only, MIXED
//! mode) into whichever drive it mounts such a cartridge in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tape_devices::drive::{
    Capabilities, DataKey, DriveResult, DriveStatus, Position, ReadOutcome, TapeDrive, WriteOutcome,
};

use crate::error::{Error, Result};

/// Refuse a drive without usable hardware encryption for a drive-encrypted pool (exit 1),
/// naming the drive, the pool and the way out. Nothing has been written when this fails.
pub fn check_capable(drive: &mut dyn TapeDrive, barcode: &str, pool: &str) -> Result<()> {
    let caps = drive.capabilities().map_err(|e| {
        Error::Failed(format!(
            "pool {pool} uses drive encryption, and the capabilities of {} (holding {barcode}) could not be read: {e}",
            drive.name()
        ))
    })?;
    if !caps.hardware_encryption {
        return Err(Error::Failed(format!(
            "pool {pool} uses drive encryption (encryption = \"drive\" in pools.toml), but {} (holding {barcode}) offers no hardware encryption (SSC-4 AES-256-GCM under host control; `tapevault tape --device DEV probe` shows it); nothing was written in the clear. Use a drive that encrypts, or a pool with software encryption",
            drive.name()
        )));
    }
    Ok(())
}

/// Load `key` into the drive (after [`check_capable`]) and wrap it so that the key is
/// cleared when the drive is let go. On failure the drive is returned untouched with the
/// error, so the caller can put the cartridge away.
pub fn arm(
    mut drive: Box<dyn TapeDrive>,
    key: &DataKey,
    barcode: &str,
    pool: &str,
) -> std::result::Result<Box<dyn TapeDrive>, (Box<dyn TapeDrive>, Error)> {
    if let Err(e) = check_capable(drive.as_mut(), barcode, pool) {
        return Err((drive, e));
    }
    if let Err(e) = drive.set_data_key(Some(key)) {
        // A half-set key must not stay behind either.
        let _ = drive.set_data_key(None);
        let e = Error::Failed(format!(
            "loading pool {pool}'s data key into {} (holding {barcode}): {e}",
            drive.name()
        ));
        return Err((drive, e));
    }
    Ok(Box::new(KeyedDrive { inner: drive }))
}

/// A drive with a data key loaded; dropping it clears the key.
pub struct KeyedDrive {
    inner: Box<dyn TapeDrive>,
}

impl Drop for KeyedDrive {
    fn drop(&mut self) {
        // Best effort: a drive that went away (power loss, a reset) dropped its key
        // itself; the target and real drives also drop it on reset.
        let _ = self.inner.set_data_key(None);
    }
}

impl TapeDrive for KeyedDrive {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn capabilities(&mut self) -> DriveResult<Capabilities> {
        self.inner.capabilities()
    }
    fn read_block(&mut self, buf: &mut [u8]) -> DriveResult<ReadOutcome> {
        self.inner.read_block(buf)
    }
    fn write_block(&mut self, data: &[u8]) -> DriveResult<WriteOutcome> {
        self.inner.write_block(data)
    }
    fn write_block_parts(&mut self, parts: &[&[u8]]) -> DriveResult<WriteOutcome> {
        self.inner.write_block_parts(parts)
    }
    fn write_filemarks(&mut self, count: u32, immediate: bool) -> DriveResult<()> {
        self.inner.write_filemarks(count, immediate)
    }
    fn flush(&mut self) -> DriveResult<()> {
        self.inner.flush()
    }
    fn rewind(&mut self) -> DriveResult<()> {
        self.inner.rewind()
    }
    fn space_blocks(&mut self, count: i64) -> DriveResult<()> {
        self.inner.space_blocks(count)
    }
    fn space_filemarks(&mut self, count: i64) -> DriveResult<()> {
        self.inner.space_filemarks(count)
    }
    fn space_to_eod(&mut self) -> DriveResult<()> {
        self.inner.space_to_eod()
    }
    fn locate(&mut self, block: u64) -> DriveResult<()> {
        self.inner.locate(block)
    }
    fn position(&mut self) -> DriveResult<Position> {
        self.inner.position()
    }
    fn status(&mut self) -> DriveResult<DriveStatus> {
        self.inner.status()
    }
    fn unload(&mut self) -> DriveResult<()> {
        self.inner.unload()
    }
    fn erase(&mut self) -> DriveResult<()> {
        self.inner.erase()
    }
    fn set_data_key(&mut self, key: Option<&DataKey>) -> DriveResult<()> {
        self.inner.set_data_key(key)
    }
    fn max_block_size(&self) -> usize {
        self.inner.max_block_size()
    }
}

/// What a reader needs to load into a drive for one cartridge.
struct ReadKey {
    pool: String,
    key: Arc<DataKey>,
}

/// Cartridges this process will read that were written with drive encryption, by
/// barcode. Process-wide because every reader mounts through [`crate::media::mount`];
/// the CLI fills it before a job starts.
static READ_KEYS: Mutex<Option<HashMap<String, ReadKey>>> = Mutex::new(None);

/// Load `key` (decrypt only) whenever `barcode` is mounted by this process.
pub fn expect_reads(barcode: &str, pool: &str, key: Arc<DataKey>) {
    let mut g = READ_KEYS.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(HashMap::new).insert(
        barcode.to_string(),
        ReadKey {
            pool: pool.to_string(),
            key,
        },
    );
}

/// The registered (pool, key) for reading `barcode`, if any.
pub(crate) fn read_key_for(barcode: &str) -> Option<(String, Arc<DataKey>)> {
    let g = READ_KEYS.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref()?
        .get(barcode)
        .map(|r| (r.pool.clone(), r.key.clone()))
}
