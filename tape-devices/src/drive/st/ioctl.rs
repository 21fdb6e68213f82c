//! The Linux st driver's ioctl interface (`<linux/mtio.h>`), with the struct layouts
//! checked against the kernel's in the tests below.

use std::os::fd::RawFd;

/// `struct mtop`: an operation and its count.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MtOp {
    pub mt_op: libc::c_short,
    pub mt_count: libc::c_int,
}

/// `struct mtget`: st's status.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MtGet {
    pub mt_type: libc::c_long,
    /// st puts the partition number here, not a residual.
    pub mt_resid: libc::c_long,
    pub mt_dsreg: libc::c_long,
    pub mt_gstat: libc::c_long,
    pub mt_erreg: libc::c_long,
    /// File number, -1 when st does not know it.
    pub mt_fileno: libc::c_int,
    /// Block number within the file, -1 when st does not know it.
    pub mt_blkno: libc::c_int,
}

/// `struct mtpos`: READ POSITION's block number.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MtPos {
    pub mt_blkno: libc::c_long,
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
const _: () = {
    assert!(std::mem::size_of::<MtOp>() == 8);
    assert!(std::mem::size_of::<MtGet>() == 48);
    assert!(std::mem::size_of::<MtPos>() == 8);
};

// Operation codes (mt_op).
pub const MTFSF: i16 = 1;
pub const MTBSF: i16 = 2;
pub const MTFSR: i16 = 3;
pub const MTBSR: i16 = 4;
pub const MTWEOF: i16 = 5;
pub const MTREW: i16 = 6;
pub const MTOFFL: i16 = 7;
pub const MTNOP: i16 = 8;
pub const MTEOM: i16 = 12;
pub const MTERASE: i16 = 13;
pub const MTSETBLK: i16 = 20;
pub const MTSEEK: i16 = 22;
pub const MTSETDRVBUFFER: i16 = 24;
pub const MTLOAD: i16 = 30;
pub const MTWEOFI: i16 = 35;

// General status bits (mt_gstat).
pub const GMT_EOF: u32 = 0x8000_0000;
pub const GMT_BOT: u32 = 0x4000_0000;
pub const GMT_EOT: u32 = 0x2000_0000;
pub const GMT_EOD: u32 = 0x0800_0000;
pub const GMT_WR_PROT: u32 = 0x0400_0000;
pub const GMT_ONLINE: u32 = 0x0100_0000;
pub const GMT_DR_OPEN: u32 = 0x0004_0000;
pub const GMT_CLN: u32 = 0x0000_8000;

/// MTSETDRVBUFFER argument: set the given boolean options.
pub const MT_ST_SETBOOLEANS: i32 = 0x3000_0000;
/// Option: READ POSITION/LOCATE use logical block numbers (BT = 0).
pub const MT_ST_SCSI2LOGICAL: i32 = 0x800;

/// Largest count one SPACE command carries (24-bit signed field).
pub const MAX_SPACE_COUNT: i32 = 0x7f_ffff;

nix::ioctl_write_ptr!(mtioctop, b'm', 1, MtOp);
nix::ioctl_read!(mtiocget, b'm', 2, MtGet);
nix::ioctl_read!(mtiocpos, b'm', 3, MtPos);

/// MTIOCTOP.
pub fn op(fd: RawFd, mt_op: i16, count: i32) -> nix::Result<()> {
    let o = MtOp {
        mt_op,
        mt_count: count,
    };
    // SAFETY: MTIOCTOP reads one `struct mtop` from the pointer, which is valid for the call.
    unsafe { mtioctop(fd, &o) }.map(|_| ())
}

/// MTIOCGET.
pub fn get(fd: RawFd) -> nix::Result<MtGet> {
    let mut g = MtGet::default();
    // SAFETY: MTIOCGET writes one `struct mtget` into the pointer, valid for the call.
    unsafe { mtiocget(fd, &mut g) }?;
    Ok(g)
}

/// MTIOCPOS (READ POSITION).
pub fn pos(fd: RawFd) -> nix::Result<u64> {
    let mut p = MtPos::default();
    // SAFETY: MTIOCPOS writes one `struct mtpos` into the pointer, valid for the call.
    unsafe { mtiocpos(fd, &mut p) }?;
    Ok(p.mt_blkno as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn request_numbers_equal_the_kernels() {
        // _IOW('m', 1, struct mtop), _IOR('m', 2, struct mtget), _IOR('m', 3, struct mtpos)
        // as <linux/mtio.h> defines them on x86_64.
        assert_eq!(
            nix::request_code_write!(b'm', 1, size_of::<MtOp>()) as u64,
            0x4008_6d01
        );
        assert_eq!(
            nix::request_code_read!(b'm', 2, size_of::<MtGet>()) as u64,
            0x8030_6d02
        );
        assert_eq!(
            nix::request_code_read!(b'm', 3, size_of::<MtPos>()) as u64,
            0x8008_6d03
        );
    }

    #[test]
    fn struct_layouts_equal_the_kernels() {
        assert_eq!(offset_of!(MtOp, mt_count), 4);
        assert_eq!(offset_of!(MtGet, mt_resid), 8);
        assert_eq!(offset_of!(MtGet, mt_dsreg), 16);
        assert_eq!(offset_of!(MtGet, mt_gstat), 24);
        assert_eq!(offset_of!(MtGet, mt_erreg), 32);
        assert_eq!(offset_of!(MtGet, mt_fileno), 40);
        assert_eq!(offset_of!(MtGet, mt_blkno), 44);
        assert_eq!(size_of::<MtGet>(), 48);
    }

    #[test]
    fn ioctls_on_a_regular_file_fail_cleanly() {
        use std::os::fd::AsRawFd;
        let f = tempfile::tempfile().unwrap();
        assert_eq!(get(f.as_raw_fd()).unwrap_err(), nix::errno::Errno::ENOTTY);
        assert_eq!(
            op(f.as_raw_fd(), MTREW, 1).unwrap_err(),
            nix::errno::Errno::ENOTTY
        );
    }
}
