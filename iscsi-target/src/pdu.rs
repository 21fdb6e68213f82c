//! iSCSI PDU codec (RFC 7143 section 11): the 48-byte Basic Header Segment, optional
//! Additional Header Segments and the data segment padded to a multiple of 4 bytes.
//! Digests are never negotiated (HeaderDigest=None, DataDigest=None), so none are read
//! or written.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Largest data segment this codec reads at all. The 24-bit length field allows 16 MiB;
/// anything beyond what was negotiated is refused by the session layer, this limit only
/// keeps a hostile peer from making us allocate the full 16 MiB for a PDU it never sends.
pub const MAX_DATA_SEGMENT: usize = (1 << 24) - 1;

/// Opcodes (RFC 7143 section 11.1.1).
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TMF_REQ: u8 = 0x02;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const TEXT_REQ: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const SNACK_REQ: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESP: u8 = 0x21;
    pub const TMF_RESP: u8 = 0x22;
    pub const LOGIN_RESP: u8 = 0x23;
    pub const TEXT_RESP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MSG: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 section 11.17.1).
pub mod reject {
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// One PDU. The length fields of the BHS (TotalAHSLength, DataSegmentLength) are filled
/// from `ahs` and `data` when the PDU is written.
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

impl fmt::Debug for Pdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pdu(opcode 0x{:02x}, flags 0x{:02x}, itt 0x{:08x}, {} AHS bytes, {} data bytes)",
            self.opcode(),
            self.flags(),
            self.itt(),
            self.ahs.len(),
            self.data.len()
        )
    }
}

/// Why a PDU could not be read.
#[derive(Debug)]
pub enum PduError {
    /// The connection failed or closed (a clean close before a BHS is `Closed`).
    Io(io::Error),
    Closed,
    /// The data segment is longer than the reader accepts.
    TooLong {
        len: usize,
        max: usize,
    },
}

impl fmt::Display for PduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PduError::Io(e) => write!(f, "connection error: {e}"),
            PduError::Closed => f.write_str("the connection was closed"),
            PduError::TooLong { len, max } => write!(
                f,
                "data segment of {len} bytes exceeds the {max} bytes this side accepts"
            ),
        }
    }
}

impl std::error::Error for PduError {}

impl From<io::Error> for PduError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            PduError::Closed
        } else {
            PduError::Io(e)
        }
    }
}

/// Bytes of padding after a segment of `len` bytes.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

impl Pdu {
    /// A PDU with the given opcode and everything else zero.
    pub fn new(opcode: u8) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode & 0x3f;
        Pdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }

    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }
    pub fn set_immediate(&mut self, on: bool) {
        if on {
            self.bhs[0] |= 0x40;
        } else {
            self.bhs[0] &= !0x40;
        }
    }
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.bhs[1] = f;
    }
    /// Final bit (bit 7 of byte 1) for PDUs that have one.
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }
    /// TotalAHSLength in bytes as the header says.
    pub fn ahs_len_field(&self) -> usize {
        self.bhs[4] as usize * 4
    }
    /// DataSegmentLength as the header says.
    pub fn data_len_field(&self) -> usize {
        u32::from_be_bytes([0, self.bhs[5], self.bhs[6], self.bhs[7]]) as usize
    }
    pub fn lun(&self) -> u64 {
        self.u64_at(8)
    }
    pub fn set_lun(&mut self, l: u64) {
        self.set_u64(8, l)
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(16, v)
    }
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.bhs[off], self.bhs[off + 1]])
    }
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.bhs[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes(self.bhs[off..off + 4].try_into().expect("4 bytes"))
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.bhs[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn u64_at(&self, off: usize) -> u64 {
        u64::from_be_bytes(self.bhs[off..off + 8].try_into().expect("8 bytes"))
    }
    pub fn set_u64(&mut self, off: usize, v: u64) {
        self.bhs[off..off + 8].copy_from_slice(&v.to_be_bytes());
    }

    /// Fill the length fields of the BHS from `ahs` and `data`.
    pub fn fix_lengths(&mut self) {
        debug_assert!(self.ahs.len().is_multiple_of(4) && self.ahs.len() / 4 <= 255);
        self.bhs[4] = (self.ahs.len() / 4) as u8;
        let d = self.data.len() as u32;
        self.bhs[5..8].copy_from_slice(&d.to_be_bytes()[1..4]);
    }

    /// Encode to bytes (header, AHS, data, padding).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = self.clone();
        p.fix_lengths();
        let mut out = Vec::with_capacity(BHS_LEN + p.ahs.len() + p.data.len() + 3);
        out.extend_from_slice(&p.bhs);
        out.extend_from_slice(&p.ahs);
        out.extend_from_slice(&p.data);
        out.resize(out.len() + pad_len(p.data.len()), 0);
        out
    }

    /// Write the PDU. The header and a small data segment go out in one write.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        self.write_with_data(w, &self.data)
    }

    /// Write the PDU with `data` as its data segment instead of `self.data` (which is
    /// ignored): a sender's buffer goes out without being copied into the PDU first.
    pub fn write_with_data(&self, w: &mut impl Write, data: &[u8]) -> io::Result<()> {
        let mut hdr = self.bhs;
        hdr[4] = (self.ahs.len() / 4) as u8;
        let d = data.len() as u32;
        hdr[5..8].copy_from_slice(&d.to_be_bytes()[1..4]);
        let pad = [0u8; 3];
        if data.len() <= 8192 {
            let mut out = Vec::with_capacity(BHS_LEN + self.ahs.len() + data.len() + 3);
            out.extend_from_slice(&hdr);
            out.extend_from_slice(&self.ahs);
            out.extend_from_slice(data);
            out.extend_from_slice(&pad[..pad_len(data.len())]);
            w.write_all(&out)
        } else {
            // One gathered write: header and data leave together without a copy.
            let mut bufs = [
                IoSlice::new(&hdr),
                IoSlice::new(&self.ahs),
                IoSlice::new(data),
                IoSlice::new(&pad[..pad_len(data.len())]),
            ];
            let mut slices = &mut bufs[..];
            while !slices.is_empty() {
                match w.write_vectored(slices) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => IoSlice::advance_slices(&mut slices, n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }

    /// Read one PDU whose data segment may be at most `max_data` bytes. A segment over
    /// the limit (but within [`MAX_DATA_SEGMENT`]) is read and discarded so the stream
    /// stays in step, and reported as [`PduError::TooLong`] with the header kept in
    /// `rejected` so the caller can answer with a Reject.
    pub fn read_from(
        r: &mut impl Read,
        max_data: usize,
        rejected: &mut Option<[u8; BHS_LEN]>,
    ) -> Result<Pdu, PduError> {
        let mut bhs = [0u8; BHS_LEN];
        // Distinguish a clean close between PDUs from a truncated PDU.
        let mut got = 0;
        while got < BHS_LEN {
            match r.read(&mut bhs[got..]) {
                Ok(0) if got == 0 => return Err(PduError::Closed),
                Ok(0) => return Err(PduError::Closed),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut pdu = Pdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        };
        let ahs_len = pdu.ahs_len_field();
        if ahs_len > 0 {
            pdu.ahs = vec![0u8; ahs_len];
            r.read_exact(&mut pdu.ahs)?;
        }
        let dlen = pdu.data_len_field();
        let total = dlen + pad_len(dlen);
        if dlen > max_data {
            // Skip it in bounded chunks.
            let mut left = total;
            let mut sink = [0u8; 8192];
            while left > 0 {
                let n = left.min(sink.len());
                r.read_exact(&mut sink[..n])?;
                left -= n;
            }
            *rejected = Some(bhs);
            return Err(PduError::TooLong {
                len: dlen,
                max: max_data,
            });
        }
        if dlen > 0 {
            // Read into spare capacity: no zero-filling of a buffer about to be
            // overwritten (this is the data path of every write).
            let mut data = Vec::with_capacity(total);
            r.take(total as u64).read_to_end(&mut data)?;
            if data.len() < total {
                return Err(PduError::Closed);
            }
            data.truncate(dlen);
            pdu.data = data;
        }
        Ok(pdu)
    }
}

/// Serial number arithmetic (RFC 1982, 32 bits): is `a` before `b`?
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// Split a text data segment into `key=value` pairs (NUL separated).
pub fn parse_text(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = String::from_utf8_lossy(s);
            match s.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (s.to_string(), String::new()),
            }
        })
        .collect()
}

/// Encode `key=value` pairs as a text data segment.
pub fn encode_text(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn write_with_data_sends_what_write_to_sends_with_that_data() {
        for len in [0usize, 5, 8192, 8193, 262_144] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut p = Pdu::new(op::SCSI_CMD);
            p.set_itt(7);
            p.data = vec![0xaa; 3]; // ignored by write_with_data
            let mut a = Vec::new();
            p.write_with_data(&mut a, &data).unwrap();
            p.data = data.clone();
            let mut b = Vec::new();
            p.write_to(&mut b).unwrap();
            assert_eq!(a, b, "{len} bytes");
            assert_eq!(a.len(), BHS_LEN + len + pad_len(len));
        }
    }

    use super::*;

    #[test]
    fn roundtrip_pads_data_and_keeps_ahs() {
        let mut p = Pdu::new(op::SCSI_CMD);
        p.set_immediate(true);
        p.set_flags(0xa0);
        p.set_lun(0x0001_0000_0000_0000);
        p.set_itt(0xdead_beef);
        p.ahs = vec![1, 2, 3, 4, 5, 6, 7, 8];
        p.data = b"hello".to_vec();
        let bytes = p.encode();
        assert_eq!(bytes.len(), 48 + 8 + 8);
        assert_eq!(bytes[4], 2);
        assert_eq!(&bytes[5..8], &[0, 0, 5]);
        assert_eq!(&bytes[61..64], &[0, 0, 0]);
        let mut rej = None;
        let q = Pdu::read_from(&mut &bytes[..], 1024, &mut rej).unwrap();
        assert_eq!(q.opcode(), op::SCSI_CMD);
        assert!(q.immediate());
        assert_eq!(q.flags(), 0xa0);
        assert_eq!(q.itt(), 0xdead_beef);
        assert_eq!(q.lun(), 0x0001_0000_0000_0000);
        assert_eq!(q.ahs, p.ahs);
        assert_eq!(q.data, b"hello");
        let mut w = Vec::new();
        p.write_to(&mut w).unwrap();
        assert_eq!(w, bytes);
    }

    #[test]
    fn large_data_writes_the_same_bytes_as_encode() {
        let mut p = Pdu::new(op::DATA_IN);
        p.data = vec![7u8; 10001];
        let mut w = Vec::new();
        p.write_to(&mut w).unwrap();
        assert_eq!(w, p.encode());
        assert_eq!(w.len(), 48 + 10004);
    }

    #[test]
    fn oversized_segment_is_skipped_and_reported() {
        let mut p = Pdu::new(op::NOP_OUT);
        p.data = vec![1u8; 100];
        let mut next = Pdu::new(op::NOP_OUT);
        next.set_itt(5);
        let mut bytes = p.encode();
        bytes.extend(next.encode());
        let mut r = &bytes[..];
        let mut rej = None;
        match Pdu::read_from(&mut r, 64, &mut rej) {
            Err(PduError::TooLong { len: 100, max: 64 }) => {}
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert!(rej.is_some());
        let q = Pdu::read_from(&mut r, 64, &mut rej).unwrap();
        assert_eq!(q.itt(), 5);
    }

    #[test]
    fn truncated_pdus_are_closed_not_panics() {
        let p = Pdu::new(op::NOP_OUT).encode();
        let mut rej = None;
        assert!(matches!(
            Pdu::read_from(&mut &p[..20], 64, &mut rej),
            Err(PduError::Closed)
        ));
        assert!(matches!(
            Pdu::read_from(&mut &[][..], 64, &mut rej),
            Err(PduError::Closed)
        ));
        let mut q = Pdu::new(op::NOP_OUT);
        q.data = vec![0; 10];
        let b = q.encode();
        assert!(matches!(
            Pdu::read_from(&mut &b[..50], 64, &mut rej),
            Err(PduError::Closed)
        ));
    }

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_lt(1, 2));
        assert!(!sn_lt(2, 1));
        assert!(sn_lt(0xffff_fffe, 3));
        assert!(!sn_lt(5, 5));
    }

    #[test]
    fn text_roundtrip() {
        let pairs = vec![
            ("InitiatorName".to_string(), "iqn.x".to_string()),
            ("HeaderDigest".to_string(), "None,CRC32C".to_string()),
        ];
        let t = encode_text(&pairs);
        assert_eq!(parse_text(&t), pairs);
        assert_eq!(
            parse_text(b"A=1\0\0B\0"),
            vec![("A".into(), "1".into()), ("B".into(), "".into())]
        );
    }
}
