//! Low-level framing: the common block prefix, little-endian field helpers, the
//! extension area and resynchronisation.
use crate::{
    FormatError, FORMAT_MAJOR, FORMAT_MINOR, MAGIC, MAX_BLOCK_SIZE, MAX_EXTENSION_LEN,
    OLDEST_MAJOR, PREFIX_LEN,
};

/// Byte offset of the header CRC inside the prefix.
pub(crate) const CRC_OFFSET: usize = 24;

/// The decoded common prefix of a block (bytes 0..28).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub major: u16,
    pub minor: u16,
    pub record_type: u16,
    /// Length of the extension area at the end of the header.
    pub ext_len: usize,
    /// Length of the whole header (prefix + body + extension area).
    pub header_len: usize,
    /// Length of the payload that follows the header.
    pub payload_len: usize,
    pub header_crc: u32,
}

/// CRC-32 of a header: over bytes `[0, 24)` and `[28, header_len)`, i.e. the whole
/// header except the CRC field itself.
pub(crate) fn header_crc(header: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..CRC_OFFSET]);
    h.update(&header[PREFIX_LEN..]);
    h.finalize()
}

/// Decode and check the common prefix of `block`: length, magic, version, lengths and
/// the header CRC. Does not look at the record body or payload.
pub fn decode_prefix(block: &[u8]) -> Result<Prefix, FormatError> {
    if block.len() < PREFIX_LEN {
        return Err(FormatError::TooShort {
            len: block.len(),
            min: PREFIX_LEN,
        });
    }
    if block.len() > MAX_BLOCK_SIZE {
        return Err(FormatError::BlockTooLarge {
            len: block.len(),
            max: MAX_BLOCK_SIZE,
        });
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&block[..8]);
    if magic != MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let le16 = |o: usize| u16::from_le_bytes([block[o], block[o + 1]]);
    let le32 = |o: usize| u32::from_le_bytes([block[o], block[o + 1], block[o + 2], block[o + 3]]);
    let major = le16(8);
    let minor = le16(10);
    if !(OLDEST_MAJOR..=FORMAT_MAJOR).contains(&major) {
        return Err(FormatError::UnsupportedVersion {
            found_major: major,
            found_minor: minor,
            oldest_major: OLDEST_MAJOR,
            supported_major: FORMAT_MAJOR,
            supported_minor: FORMAT_MINOR,
        });
    }
    let record_type = le16(12);
    let ext_len = le16(14) as usize;
    let header_len = le32(16) as usize;
    let payload_len = le32(20) as usize;
    let stored_crc = le32(CRC_OFFSET);
    if header_len < PREFIX_LEN + ext_len || ext_len > MAX_EXTENSION_LEN {
        return Err(FormatError::BadHeaderLength {
            header_len,
            ext_len,
            min: PREFIX_LEN,
        });
    }
    if header_len.checked_add(payload_len) != Some(block.len()) {
        return Err(FormatError::LengthMismatch {
            header_len,
            payload_len,
            block_len: block.len(),
        });
    }
    let computed = self::header_crc(&block[..header_len]);
    if computed != stored_crc {
        return Err(FormatError::HeaderCrc {
            stored: stored_crc,
            computed,
        });
    }
    Ok(Prefix {
        major,
        minor,
        record_type,
        ext_len,
        header_len,
        payload_len,
        header_crc: stored_crc,
    })
}

/// Find the next block in a byte stream that lost its block boundaries (for example a
/// tape image copied with `dd` into one file, or a damaged region): the first offset
/// `>= from` where a prefix with a valid header CRC starts and the whole block fits in
/// `bytes`. Returns `(offset, block_len)`.
pub fn resync(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while at + PREFIX_LEN <= bytes.len() {
        let rest = &bytes[at..];
        let rel = rest.windows(MAGIC.len()).position(|w| w == MAGIC)?;
        let start = at + rel;
        let cand = &bytes[start..];
        if cand.len() >= PREFIX_LEN {
            let hl = u32::from_le_bytes([cand[16], cand[17], cand[18], cand[19]]) as usize;
            let pl = u32::from_le_bytes([cand[20], cand[21], cand[22], cand[23]]) as usize;
            if let Some(total) = hl.checked_add(pl) {
                if total <= cand.len()
                    && total <= MAX_BLOCK_SIZE
                    && decode_prefix(&cand[..total]).is_ok()
                {
                    return Some((start, total));
                }
            }
        }
        at = start + 1;
    }
    None
}

/// Check the extension area: a sequence of entries `type: u16, len: u16, value[len]`
/// that exactly fills it. Readers skip entries they do not know.
pub(crate) fn check_extensions(mut ext: &[u8]) -> Result<(), FormatError> {
    while !ext.is_empty() {
        if ext.len() < 4 {
            return Err(FormatError::BadExtension {
                reason: "entry shorter than its 4-byte type/length header",
            });
        }
        let len = u16::from_le_bytes([ext[2], ext[3]]) as usize;
        if ext.len() - 4 < len {
            return Err(FormatError::BadExtension {
                reason: "entry value runs past the end of the extension area",
            });
        }
        ext = &ext[4 + len..];
    }
    Ok(())
}

/// Start a block in `out`: writes the prefix with zero lengths and CRC. Returns the
/// block's start offset for [`finish_header`].
pub(crate) fn begin_block(out: &mut Vec<u8>, record_type: u16) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    put_u16(out, OLDEST_MAJOR);
    put_u16(out, crate::BASE_MINOR);
    put_u16(out, record_type);
    put_u16(out, 0); // extension area length: this version writes none
    put_u32(out, 0); // header length, patched by finish_header
    put_u32(out, 0); // payload length, patched by finish_header
    put_u32(out, 0); // header CRC, patched by finish_header
    start
}

/// Set the major version of the block begun at `start` (call before [`finish_header`]).
pub(crate) fn set_major(out: &mut [u8], start: usize, major: u16) {
    out[start + 8..start + 10].copy_from_slice(&major.to_le_bytes());
}

/// Mark the last `ext_len` bytes written to the block begun at `start` as its
/// extension area, and the block as written with `minor` (call before
/// [`finish_header`]).
pub(crate) fn set_extension(out: &mut [u8], start: usize, minor: u16, ext_len: usize) {
    let cur = u16::from_le_bytes([out[start + 14], out[start + 15]]) as usize;
    let total = (cur + ext_len) as u16;
    out[start + 14..start + 16].copy_from_slice(&total.to_le_bytes());
    let m = u16::from_le_bytes([out[start + 10], out[start + 11]]).max(minor);
    out[start + 10..start + 12].copy_from_slice(&m.to_le_bytes());
}

/// Patch the header length, payload length and (if `with_crc`) header CRC of the block
/// begun at `start`; the header is everything from `start` to the end of `out`.
pub(crate) fn finish_header(
    out: &mut Vec<u8>,
    start: usize,
    payload_len: usize,
    with_crc: bool,
    record: &'static str,
) -> Result<(), FormatError> {
    let header_len = out.len() - start;
    let total = header_len + payload_len;
    if total > MAX_BLOCK_SIZE {
        out.truncate(start);
        return Err(FormatError::LimitExceeded {
            record,
            field: "block length (header + payload)",
            value: total as u64,
            max: MAX_BLOCK_SIZE as u64,
        });
    }
    out[start + 16..start + 20].copy_from_slice(&(header_len as u32).to_le_bytes());
    out[start + 20..start + 24].copy_from_slice(&(payload_len as u32).to_le_bytes());
    if with_crc {
        let crc = header_crc(&out[start..]);
        out[start + CRC_OFFSET..start + PREFIX_LEN].copy_from_slice(&crc.to_le_bytes());
    }
    Ok(())
}

pub(crate) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}
pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}
/// Optional 16-byte value: presence byte (0 or 1) then 16 bytes (zero when absent).
pub(crate) fn put_opt16(out: &mut Vec<u8>, v: &Option<[u8; 16]>) {
    match v {
        Some(b) => {
            out.push(1);
            out.extend_from_slice(b);
        }
        None => {
            out.push(0);
            out.extend_from_slice(&[0u8; 16]);
        }
    }
}
/// String: u16 byte length then UTF-8 bytes; length checked against `max`.
pub(crate) fn put_str(
    out: &mut Vec<u8>,
    s: &str,
    max: usize,
    record: &'static str,
    field: &'static str,
) -> Result<(), FormatError> {
    if s.len() > max {
        return Err(FormatError::LimitExceeded {
            record,
            field,
            value: s.len() as u64,
            max: max as u64,
        });
    }
    put_u16(out, s.len() as u16);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// A bounds-checked little-endian reader over a record body.
pub(crate) struct Cur<'a> {
    buf: &'a [u8],
    pos: usize,
    record: &'static str,
}

impl<'a> Cur<'a> {
    pub(crate) fn new(buf: &'a [u8], record: &'static str) -> Self {
        Cur {
            buf,
            pos: 0,
            record,
        }
    }
    pub(crate) fn record(&self) -> &'static str {
        self.record
    }
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FormatError> {
        if self.buf.len() - self.pos < n {
            return Err(FormatError::Truncated {
                record: self.record,
                field,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn arr<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, FormatError> {
        Ok(self.arr::<1>(field)?[0])
    }
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.arr(field)?))
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.arr(field)?))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.arr(field)?))
    }
    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(self.arr(field)?))
    }
    pub(crate) fn opt16(&mut self, field: &'static str) -> Result<Option<[u8; 16]>, FormatError> {
        let flag = self.u8(field)?;
        let v: [u8; 16] = self.arr(field)?;
        match flag {
            0 if v == [0u8; 16] => Ok(None),
            0 => Err(FormatError::Inconsistent {
                record: self.record,
                reason: "absent optional field has non-zero bytes",
            }),
            1 => Ok(Some(v)),
            other => Err(FormatError::InvalidValue {
                record: self.record,
                field,
                value: other as u64,
            }),
        }
    }
    pub(crate) fn string(
        &mut self,
        max: usize,
        field: &'static str,
    ) -> Result<String, FormatError> {
        let len = self.u16(field)? as usize;
        if len > max {
            return Err(FormatError::LimitExceeded {
                record: self.record,
                field,
                value: len as u64,
                max: max as u64,
            });
        }
        let b = self.take(len, field)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| FormatError::InvalidUtf8 {
                record: self.record,
                field,
            })
    }
    pub(crate) fn end(&self) -> Result<(), FormatError> {
        if self.pos != self.buf.len() {
            return Err(FormatError::TrailingBytes {
                record: self.record,
                extra: self.buf.len() - self.pos,
            });
        }
        Ok(())
    }
}
