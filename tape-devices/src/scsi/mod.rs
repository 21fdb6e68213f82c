//! SCSI plumbing for real devices: SG_IO on Linux `sg` nodes, CDB builders, sense
//! decoding, the SMC element-status layout and the SSC data-encryption pages.
//!
//! Everything that parses or builds bytes is pure and unit-tested against hand-made
//! buffers laid out as in the T10 standards; only [`SgDevice::execute`] touches a device.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod cdb;
pub mod encryption;
pub mod sense;
pub mod smc;

pub use sense::{Sense, SenseKey};

/// Largest sense buffer we ask for (SPC: fixed format needs 18 bytes, descriptor format
/// up to 252).
pub const SENSE_BUFFER_LEN: usize = 252;

/// Direction of the data phase of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    None,
    ToDevice,
    FromDevice,
}

/// Failures of a SCSI command sent through SG_IO.
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    #[error("{op} on {device}: {source}")]
    Io {
        op: &'static str,
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} on {device} failed: {sense}")]
    Check {
        op: &'static str,
        device: String,
        sense: Sense,
    },
    #[error("{op} on {device}: the device does not support it ({sense})")]
    Unsupported {
        op: &'static str,
        device: String,
        sense: Sense,
    },
    #[error("{op} on {device} failed with SCSI status 0x{status:02x}")]
    Status {
        op: &'static str,
        device: String,
        status: u8,
    },
    #[error("{op} on {device} failed in transport (host status 0x{host:04x}, driver status 0x{driver:04x})")]
    Transport {
        op: &'static str,
        device: String,
        host: u16,
        driver: u16,
    },
    #[error("{op} on {device} timed out after {after:?}")]
    Timeout {
        op: &'static str,
        device: String,
        after: Duration,
    },
    #[error("{op} on {device}: malformed response: {detail}")]
    BadResponse {
        op: &'static str,
        device: String,
        detail: String,
    },
}

impl ScsiError {
    /// The decoded sense data, when the command ended with CHECK CONDITION.
    pub fn sense(&self) -> Option<&Sense> {
        match self {
            ScsiError::Check { sense, .. } | ScsiError::Unsupported { sense, .. } => Some(sense),
            _ => None,
        }
    }
}

/// What a successful command returned.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Bytes actually transferred (dxfer_len minus the residual).
    pub transferred: usize,
    /// Sense data that came with a GOOD or recovered status, if any.
    pub sense: Option<Sense>,
}

/// The `sg_io_hdr` of `<scsi/sg.h>`; layout checked in tests (88 bytes on 64-bit Linux).
#[repr(C)]
#[derive(Debug)]
pub struct SgIoHdr {
    pub interface_id: libc::c_int,
    pub dxfer_direction: libc::c_int,
    pub cmd_len: u8,
    pub mx_sb_len: u8,
    pub iovec_count: u16,
    pub dxfer_len: u32,
    pub dxferp: *mut libc::c_void,
    pub cmdp: *const u8,
    pub sbp: *mut u8,
    pub timeout: u32,
    pub flags: u32,
    pub pack_id: libc::c_int,
    pub usr_ptr: *mut libc::c_void,
    pub status: u8,
    pub masked_status: u8,
    pub msg_status: u8,
    pub sb_len_wr: u8,
    pub host_status: u16,
    pub driver_status: u16,
    pub resid: libc::c_int,
    pub duration: u32,
    pub info: u32,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<SgIoHdr>() == 88);

/// `SG_IO` from `<scsi/sg.h>` (not an _IOWR-encoded number).
pub const SG_IO: u64 = 0x2285;
const SG_DXFER_NONE: libc::c_int = -1;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;
/// SCSI status CHECK CONDITION.
const STATUS_CHECK_CONDITION: u8 = 0x02;
/// Host status DID_TIME_OUT of the SCSI midlayer.
const DID_TIME_OUT: u16 = 0x03;
/// Driver status DRIVER_TIMEOUT (low nibble) of the SCSI midlayer.
const DRIVER_TIMEOUT: u16 = 0x06;
/// Driver status DRIVER_SENSE: sense data is valid.
const DRIVER_SENSE: u16 = 0x08;

nix::ioctl_readwrite_bad!(sg_io_ioctl, SG_IO, SgIoHdr);

/// A SCSI generic node (`/dev/sgN`), opened read-write.
#[derive(Debug)]
pub struct SgDevice {
    file: File,
    path: PathBuf,
}

impl SgDevice {
    pub fn open(path: &Path) -> Result<SgDevice, ScsiError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| ScsiError::Io {
                op: "open",
                device: path.display().to_string(),
                source,
            })?;
        Ok(SgDevice {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send one command. `data` is the data-out buffer (ToDevice) or the data-in
    /// buffer (FromDevice); ignored for None.
    pub fn execute(
        &self,
        op: &'static str,
        cdb: &[u8],
        dir: DataDirection,
        data: &mut [u8],
        timeout: Duration,
    ) -> Result<Completion, ScsiError> {
        let device = self.path.display().to_string();
        let mut sense = [0u8; SENSE_BUFFER_LEN];
        let (dxfer_direction, dxferp, dxfer_len) = match dir {
            DataDirection::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0u32),
            DataDirection::ToDevice => {
                (SG_DXFER_TO_DEV, data.as_mut_ptr().cast(), data.len() as u32)
            }
            DataDirection::FromDevice => (
                SG_DXFER_FROM_DEV,
                data.as_mut_ptr().cast(),
                data.len() as u32,
            ),
        };
        let mut hdr = SgIoHdr {
            interface_id: b'S' as libc::c_int,
            dxfer_direction,
            cmd_len: cdb.len() as u8,
            mx_sb_len: SENSE_BUFFER_LEN as u8,
            iovec_count: 0,
            dxfer_len,
            dxferp,
            cmdp: cdb.as_ptr(),
            sbp: sense.as_mut_ptr(),
            timeout: timeout.as_millis().min(u32::MAX as u128) as u32,
            flags: 0,
            pack_id: 0,
            usr_ptr: std::ptr::null_mut(),
            status: 0,
            masked_status: 0,
            msg_status: 0,
            sb_len_wr: 0,
            host_status: 0,
            driver_status: 0,
            resid: 0,
            duration: 0,
            info: 0,
        };
        // SAFETY: SG_IO reads `hdr` and the buffers it points to (cdb, data, sense), all
        // of which outlive the call and have the lengths given in the header.
        let r = unsafe { sg_io_ioctl(self.file.as_raw_fd(), &mut hdr) };
        if let Err(errno) = r {
            return Err(ScsiError::Io {
                op,
                device,
                source: std::io::Error::from(errno),
            });
        }
        let sense_len = (hdr.sb_len_wr as usize).min(SENSE_BUFFER_LEN);
        let decoded = if sense_len > 0 {
            Sense::parse(&sense[..sense_len])
        } else {
            None
        };
        if hdr.host_status == DID_TIME_OUT || (hdr.driver_status & 0x0f) == DRIVER_TIMEOUT {
            return Err(ScsiError::Timeout {
                op,
                device,
                after: timeout,
            });
        }
        if hdr.status == STATUS_CHECK_CONDITION
            || (hdr.driver_status & DRIVER_SENSE != 0 && decoded.is_some())
        {
            let sense = decoded.unwrap_or_default();
            if sense.key == SenseKey::RecoveredError
                || sense.key == SenseKey::NoSense && !sense.has_condition()
            {
                return Ok(Completion {
                    transferred: transferred(&hdr),
                    sense: Some(sense),
                });
            }
            if sense.is_unsupported_command() {
                return Err(ScsiError::Unsupported { op, device, sense });
            }
            return Err(ScsiError::Check { op, device, sense });
        }
        if hdr.status != 0 {
            return Err(ScsiError::Status {
                op,
                device,
                status: hdr.status,
            });
        }
        if hdr.host_status != 0 || (hdr.driver_status & !DRIVER_SENSE) != 0 {
            return Err(ScsiError::Transport {
                op,
                device,
                host: hdr.host_status,
                driver: hdr.driver_status,
            });
        }
        Ok(Completion {
            transferred: transferred(&hdr),
            sense: decoded,
        })
    }
}

fn transferred(hdr: &SgIoHdr) -> usize {
    (hdr.dxfer_len as i64 - hdr.resid.max(0) as i64).max(0) as usize
}

/// The sg node of an st device, through sysfs
/// (`/sys/class/scsi_tape/<name>/device/scsi_generic/sgN`). `st_path` may be a symlink
/// such as `/dev/tape/by-id/...-nst`.
pub fn sg_node_for_tape(st_path: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(st_path).ok()?;
    let name = real.file_name()?.to_str()?.to_string();
    let dir = Path::new("/sys/class/scsi_tape")
        .join(&name)
        .join("device/scsi_generic");
    let entry = std::fs::read_dir(dir).ok()?.flatten().next()?;
    Some(Path::new("/dev").join(entry.file_name()))
}

use std::os::unix::fs::OpenOptionsExt;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn sg_io_hdr_layout_matches_the_kernel() {
        // Offsets from <scsi/sg.h> on x86_64 (checked with offsetof in C).
        assert_eq!(offset_of!(SgIoHdr, dxfer_direction), 4);
        assert_eq!(offset_of!(SgIoHdr, cmd_len), 8);
        assert_eq!(offset_of!(SgIoHdr, mx_sb_len), 9);
        assert_eq!(offset_of!(SgIoHdr, dxfer_len), 12);
        assert_eq!(offset_of!(SgIoHdr, dxferp), 16);
        assert_eq!(offset_of!(SgIoHdr, cmdp), 24);
        assert_eq!(offset_of!(SgIoHdr, sbp), 32);
        assert_eq!(offset_of!(SgIoHdr, timeout), 40);
        assert_eq!(offset_of!(SgIoHdr, usr_ptr), 56);
        assert_eq!(offset_of!(SgIoHdr, status), 64);
        assert_eq!(offset_of!(SgIoHdr, sb_len_wr), 67);
        assert_eq!(offset_of!(SgIoHdr, host_status), 68);
        assert_eq!(offset_of!(SgIoHdr, resid), 72);
        assert_eq!(offset_of!(SgIoHdr, info), 80);
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
    }

    #[test]
    fn opening_a_missing_sg_node_names_it() {
        let err = SgDevice::open(Path::new("/nonexistent/sg9")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/sg9"), "{err}");
    }

    #[test]
    fn sg_node_of_a_plain_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("nst7");
        std::fs::write(&f, b"").unwrap();
        assert_eq!(sg_node_for_tape(&f), None);
    }
}
