//! Nonces that never repeat under one key: across records, processes, relabels and
//! overwrites of cartridges.
//!
//! # Scheme
//! A 96-bit GCM nonce is `installation_id (32 bits) || counter (64 bits)`, big-endian.
//!
//! * For each key, the keystore holds a counter file `<keys>/<fingerprint>.nonce`:
//!   magic, a random 32-bit installation id chosen when the file is created, the next
//!   unreserved counter value, and a checksum.
//! * A process reserves a range of [`DEFAULT_RESERVATION`] counter values at a time:
//!   under an exclusive `flock` of `<fingerprint>.nonce.lock` it reads the file,
//!   writes back `next + N` (temp file, fsync, rename, fsync directory) and only then
//!   uses `[next, next + N)`. A crash loses the unused rest of a range, never reuses it.
//!   Two processes (or two sources in one process) serialize on the lock, so their
//!   ranges are disjoint.
//! * The counter never goes backwards, whatever happens to cartridges: relabelling or
//!   overwriting a tape does not touch it, so rewriting a tape uses fresh nonces.
//! * If the counter file is lost (a home rebuilt from cartridges, the key imported
//!   into a second installation), a new file gets a new random installation id, so
//!   the new nonces differ from all old ones unless two ids collide (2^-32 per pair of
//!   counter files ever made for one key). Deleting a damaged counter file is
//!   therefore safe; tapevault refuses to guess a damaged one's value.
//! * 2^64 counter values per installation id; running out is a typed error.

use super::keystore::write_private_atomic;
use super::{to_hex, CryptoError, FINGERPRINT_LEN, NONCE_LEN};
use nix::fcntl::{Flock, FlockArg};
use rand::RngCore;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Counter values reserved per trip to the counter file: large enough that the fsync
/// cost is amortized over many records (a record is >= 64 KiB, so one reservation
/// covers >= 4 GiB of data), small against 2^64 so lost remainders do not matter.
pub const DEFAULT_RESERVATION: u64 = 1 << 16;
const MAGIC: &[u8; 8] = b"TVNONCE1";
const FILE_LEN: usize = 8 + 4 + 8 + 8;

#[derive(Debug)]
struct State {
    installation: u32,
    next: u64,
    end: u64,
}

/// Hands out unique nonces for one key. `Send + Sync`; `next` takes `&self`.
#[derive(Debug)]
pub struct NonceSource {
    path: PathBuf,
    lock_path: PathBuf,
    fingerprint: String,
    reservation: u64,
    state: Mutex<State>,
}

impl NonceSource {
    /// The nonce source for the key with this fingerprint, persisted in `keys_dir`.
    pub fn open(
        keys_dir: &Path,
        fingerprint: &[u8; FINGERPRINT_LEN],
    ) -> Result<NonceSource, CryptoError> {
        Self::open_with_reservation(keys_dir, fingerprint, DEFAULT_RESERVATION)
    }

    /// As [`open`](Self::open) with a chosen range size (tests use small ones).
    pub fn open_with_reservation(
        keys_dir: &Path,
        fingerprint: &[u8; FINGERPRINT_LEN],
        reservation: u64,
    ) -> Result<NonceSource, CryptoError> {
        let fp = to_hex(fingerprint);
        Ok(NonceSource {
            path: keys_dir.join(format!("{fp}.nonce")),
            lock_path: keys_dir.join(format!("{fp}.nonce.lock")),
            fingerprint: fp,
            reservation: reservation.max(1),
            state: Mutex::new(State {
                installation: 0,
                next: 0,
                end: 0,
            }),
        })
    }

    /// The next nonce. Reserves a new range (one locked, fsynced file update) when the
    /// current one is used up.
    pub fn next(&self) -> Result<[u8; NONCE_LEN], CryptoError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.next == st.end {
            let (installation, start) = self.reserve()?;
            st.installation = installation;
            st.next = start;
            st.end = start + self.reservation;
        }
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&st.installation.to_be_bytes());
        n[4..].copy_from_slice(&st.next.to_be_bytes());
        st.next += 1;
        Ok(n)
    }

    fn corrupt(&self, reason: &str) -> CryptoError {
        CryptoError::Corrupt {
            what: self.path.display().to_string(),
            reason: format!(
                "{reason}; deleting this nonce counter file is safe (a new one starts a new random nonce space)"
            ),
        }
    }

    /// Reserve `[start, start + reservation)`; returns (installation id, start).
    fn reserve(&self) -> Result<(u32, u64), CryptoError> {
        let lock_file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| CryptoError::io("open", &self.lock_path, e))?;
        let _guard = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| CryptoError::io("lock", &self.lock_path, errno.into()))?;
        let (installation, next) = match fs::read(&self.path) {
            Ok(b) => {
                if b.len() != FILE_LEN || &b[..8] != MAGIC {
                    return Err(self.corrupt("not a nonce counter file"));
                }
                if blake3::hash(&b[..20]).as_bytes()[..8] != b[20..] {
                    return Err(self.corrupt("checksum mismatch"));
                }
                (
                    u32::from_be_bytes(b[8..12].try_into().unwrap()),
                    u64::from_be_bytes(b[12..20].try_into().unwrap()),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (rand::rngs::OsRng.next_u32(), 0),
            Err(e) => return Err(CryptoError::io("read", &self.path, e)),
        };
        let new_next =
            next.checked_add(self.reservation)
                .ok_or_else(|| CryptoError::NonceExhausted {
                    fingerprint: self.fingerprint.clone(),
                })?;
        let mut b = Vec::with_capacity(FILE_LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&installation.to_be_bytes());
        b.extend_from_slice(&new_next.to_be_bytes());
        let sum = blake3::hash(&b);
        b.extend_from_slice(&sum.as_bytes()[..8]);
        write_private_atomic(&self.path, &b)?;
        Ok((installation, next))
    }
}
