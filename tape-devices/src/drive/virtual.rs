//! [`TapeDrive`] over a drive of the vtl-sim virtual library.

use std::path::Path;
use std::time::Duration;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;
use vtl_sim::VtlError;

use super::{
    Capabilities, DataKey, DriveError, DriveResult, DriveStatus, Position, ReadOutcome, SpaceStop,
    TapeDrive, WriteOutcome, MAX_BLOCK_SIZE,
};

/// A drive of a virtual library, held exclusively by this process until dropped. It
/// follows the changer: a cartridge loaded later (by this or another process) is seen on
/// the next operation; an empty drive gives [`DriveError::NoMedium`].
#[derive(Debug)]
pub struct VirtualDrive {
    drive: vtl_sim::Drive,
    library: String,
    /// Hardware encryption: the cipher of the key loaded with [`TapeDrive::set_data_key`]
    /// and whether written blocks are encrypted. Lives only in this process.
    crypt: Option<(Aes256Gcm, bool)>,
    /// Scratch for sealing and opening encrypted blocks.
    scratch: Vec<u8>,
}

/// An encrypted block at rest is `nonce || ciphertext || tag`, marked encrypted in the
/// cartridge index: the layout of the iSCSI target's drives, so a cartridge written
/// encrypted by either reads with the same key through the other.
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

impl VirtualDrive {
    /// Wrap a drive opened through [`vtl_sim::Library::open_drive`].
    pub fn new(drive: vtl_sim::Drive, library_dir: &Path) -> Self {
        VirtualDrive {
            drive,
            library: library_dir.display().to_string(),
            crypt: None,
            scratch: Vec::new(),
        }
    }

    /// Open drive `index` of the library in `dir`.
    pub fn open(dir: &Path, index: usize) -> DriveResult<Self> {
        let lib = vtl_sim::Library::open(dir).map_err(map_err)?;
        let drive = lib.open_drive(index).map_err(map_err)?;
        Ok(Self::new(drive, lib.dir()))
    }

    /// How long an operation may hang before it fails with [`DriveError::Timeout`].
    pub fn set_operation_timeout(&mut self, timeout: Duration) {
        self.drive.set_operation_timeout(timeout);
    }
}

fn map_stop(s: vtl_sim::SpaceStop) -> SpaceStop {
    match s {
        vtl_sim::SpaceStop::BeginningOfTape => SpaceStop::BeginningOfTape,
        vtl_sim::SpaceStop::EndOfData => SpaceStop::EndOfData,
        vtl_sim::SpaceStop::Filemark => SpaceStop::Filemark,
    }
}

/// One to one from the simulator's conditions onto the drive boundary's.
pub(crate) fn map_err(e: VtlError) -> DriveError {
    match e {
        VtlError::NoMedium { drive } => DriveError::NoMedium { drive },
        VtlError::BufferTooSmall {
            block_len,
            buffer_len,
        } => DriveError::BufferTooSmall {
            block_len,
            buffer_len,
        },
        VtlError::EarlyWarning => DriveError::EarlyWarning,
        VtlError::EndOfMedium => DriveError::EndOfMedium,
        VtlError::SpaceStopped { op, stop, residual } => DriveError::SpaceStopped {
            op,
            stop: map_stop(stop),
            residual,
        },
        VtlError::MediaError { block, detail } => DriveError::MediaError { block, detail },
        VtlError::WriteProtected => DriveError::WriteProtected,
        VtlError::WormOverwrite { block } => DriveError::WormOverwrite { block },
        VtlError::Timeout { op, after } => DriveError::Timeout { op, after },
        VtlError::BeyondEndOfData { block } => DriveError::BeyondEndOfData { block },
        VtlError::Busy { element, detail } => DriveError::Busy {
            detail: format!("{element} {detail}"),
        },
        VtlError::Io { op, path, source } => DriveError::Io {
            op,
            source: std::io::Error::new(source.kind(), format!("{}: {source}", path.display())),
        },
        e @ VtlError::PowerCut { op } => DriveError::Io {
            op,
            source: std::io::Error::other(e.to_string()),
        },
        other => DriveError::Other(other.to_string()),
    }
}

fn map_pos(p: vtl_sim::Pos) -> Position {
    Position {
        block: p.block,
        file: p.file,
        block_in_file: p.block_in_file,
    }
}

impl TapeDrive for VirtualDrive {
    fn name(&self) -> String {
        format!("{} of {}", self.drive.name(), self.library)
    }

    fn capabilities(&mut self) -> DriveResult<Capabilities> {
        Ok(Capabilities {
            read_position: true,
            locate: true,
            early_warning: true,
            hardware_encryption: true,
            min_block_size: 1,
            max_block_size: MAX_BLOCK_SIZE,
        })
    }

    fn read_block(&mut self, buf: &mut [u8]) -> DriveResult<ReadOutcome> {
        // Blocks are read into the scratch buffer with room for the encryption overhead;
        // a clear block is copied out, an encrypted one opened in place.
        let want = buf.len() + OVERHEAD;
        if self.scratch.len() < want {
            self.scratch.resize(want, 0);
        }
        let block = self.drive.position().map_err(map_err)?.block;
        let (n, encrypted) = match self.drive.read_block_flagged(&mut self.scratch[..want]) {
            Ok((vtl_sim::Read::Block(n), e)) => (n, e),
            Ok((vtl_sim::Read::Filemark, _)) => return Ok(ReadOutcome::Filemark),
            Ok((vtl_sim::Read::EndOfData, _)) => return Ok(ReadOutcome::EndOfData),
            Err(VtlError::BufferTooSmall { block_len, .. }) => {
                return Err(DriveError::BufferTooSmall {
                    block_len,
                    buffer_len: buf.len(),
                })
            }
            Err(e) => return Err(map_err(e)),
        };
        if !encrypted {
            if n > buf.len() {
                // Fits the scratch (room for the overhead) but not the caller's buffer:
                // step back so the position does not move, as for any short buffer.
                self.drive.space_blocks(-1).map_err(map_err)?;
                return Err(DriveError::BufferTooSmall {
                    block_len: n,
                    buffer_len: buf.len(),
                });
            }
            buf[..n].copy_from_slice(&self.scratch[..n]);
            return Ok(ReadOutcome::Block(n));
        }
        let Some((cipher, _)) = self.crypt.as_ref() else {
            return Err(DriveError::EncryptedNoKey { block });
        };
        if n < OVERHEAD {
            return Err(DriveError::EncryptedNoKey { block });
        }
        let stored = &mut self.scratch[..n];
        let nonce: [u8; NONCE_LEN] = stored[..NONCE_LEN].try_into().expect("12 bytes");
        let tag: [u8; TAG_LEN] = stored[n - TAG_LEN..].try_into().expect("16 bytes");
        cipher
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &[],
                (&mut stored[NONCE_LEN..n - TAG_LEN]).into(),
                &Tag::from(tag),
            )
            .map_err(|_| DriveError::EncryptedNoKey { block })?;
        let len = n - OVERHEAD;
        buf[..len].copy_from_slice(&stored[NONCE_LEN..n - TAG_LEN]);
        Ok(ReadOutcome::Block(len))
    }

    fn write_block(&mut self, data: &[u8]) -> DriveResult<WriteOutcome> {
        self.write_block_parts(&[data])
    }

    /// The parts go to the cartridge as they are, or, when the drive encrypts, are
    /// sealed together (the scratch buffer joins them on the way).
    fn write_block_parts(&mut self, parts: &[&[u8]]) -> DriveResult<WriteOutcome> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_BLOCK_SIZE {
            return Err(DriveError::Other(format!(
                "block of {len} bytes is larger than the largest block ({MAX_BLOCK_SIZE} bytes)"
            )));
        }
        let written = match self.crypt.as_ref() {
            Some((cipher, true)) => {
                let mut nonce = [0u8; NONCE_LEN];
                rand::rngs::OsRng.fill_bytes(&mut nonce);
                self.scratch.clear();
                self.scratch.extend_from_slice(&nonce);
                for part in parts {
                    self.scratch.extend_from_slice(part);
                }
                let tag = cipher
                    .encrypt_inout_detached(
                        &Nonce::from(nonce),
                        &[],
                        (&mut self.scratch[NONCE_LEN..]).into(),
                    )
                    .map_err(|_| DriveError::Other("AES-GCM sealing failed".into()))?;
                self.scratch.extend_from_slice(&tag);
                self.drive.write_block_flagged(&self.scratch, true)
            }
            _ => self.drive.write_block_parts(parts),
        };
        match written.map_err(map_err)? {
            vtl_sim::Written::Written => Ok(WriteOutcome::Written),
            vtl_sim::Written::EarlyWarning => Ok(WriteOutcome::WrittenEarlyWarning),
        }
    }

    fn write_filemarks(&mut self, count: u32, immediate: bool) -> DriveResult<()> {
        self.drive
            .write_filemarks(count, immediate)
            .map_err(map_err)
    }

    fn flush(&mut self) -> DriveResult<()> {
        self.drive.flush().map_err(map_err)
    }

    fn rewind(&mut self) -> DriveResult<()> {
        self.drive.rewind().map_err(map_err)
    }

    fn space_blocks(&mut self, count: i64) -> DriveResult<()> {
        self.drive.space_blocks(count).map_err(map_err)
    }

    fn space_filemarks(&mut self, count: i64) -> DriveResult<()> {
        self.drive.space_filemarks(count).map_err(map_err)
    }

    fn space_to_eod(&mut self) -> DriveResult<()> {
        self.drive.space_to_eod().map_err(map_err)
    }

    fn locate(&mut self, block: u64) -> DriveResult<()> {
        self.drive.locate(block).map_err(map_err)
    }

    fn position(&mut self) -> DriveResult<Position> {
        self.drive.position().map(map_pos).map_err(map_err)
    }

    fn status(&mut self) -> DriveResult<DriveStatus> {
        let barcode = self.drive.barcode().map_err(map_err)?;
        let detail = Some(format!(
            "virtual drive {} of library {}",
            self.drive.index(),
            self.library
        ));
        Ok(match self.drive.status().map_err(map_err)? {
            None => DriveStatus {
                loaded: false,
                barcode,
                detail,
                ..DriveStatus::default()
            },
            Some(s) => DriveStatus {
                loaded: true,
                bot: s.bot,
                eod: s.eod,
                at_filemark: s.at_filemark,
                early_warning: s.early_warning,
                write_protected: s.write_protected,
                worm: s.worm,
                position: Some(map_pos(s.position)),
                barcode,
                detail,
            },
        })
    }

    fn unload(&mut self) -> DriveResult<()> {
        self.drive.unload().map_err(map_err)
    }

    fn erase(&mut self) -> DriveResult<()> {
        self.drive.erase().map_err(map_err)
    }

    fn set_data_key(&mut self, key: Option<&DataKey>) -> DriveResult<()> {
        self.crypt = key.map(|k| {
            (
                Aes256Gcm::new_from_slice(&k.key).expect("32-byte key"),
                k.encrypt,
            )
        });
        Ok(())
    }

    fn max_block_size(&self) -> usize {
        MAX_BLOCK_SIZE
    }
}
