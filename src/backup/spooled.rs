//! A prepared record in the spool file ([`crate::spool`]): what the writer needs of it
//! (the stored payload as it goes to tape, its extents, checksum, the fields it was
//! sealed for, the content digest through it and its byte counts), never its plain data
//! (the content digest and the digest list are computed before the spool). With an
//! encrypted pool the payload in the spool is already sealed.

use tape_formats::{Compression as WireCompression, DataFields, Extent, ExtentKind, RecordCrypto};

use crate::error::Error;
use crate::pipeline::Codec;
use crate::spool::SpoolError;

use super::stages::Prepared;

pub(super) struct PreparedCodec<'a> {
    /// Where a spool file's failure is told (the backup goes on without it).
    pub(super) events: &'a dyn crate::events::Events,
}

fn compression_byte(c: WireCompression) -> u8 {
    match c {
        WireCompression::None => 0,
        WireCompression::Zstd => 1,
    }
}

fn compression_of(b: u8) -> Option<WireCompression> {
    match b {
        0 => Some(WireCompression::None),
        1 => Some(WireCompression::Zstd),
        _ => None,
    }
}

impl Codec<Prepared, Error> for PreparedCodec<'_> {
    fn encode(&self, p: &Prepared, out: &mut Vec<u8>) {
        out.extend_from_slice(&(p.header_room as u32).to_le_bytes());
        out.extend_from_slice(&p.payload_crc.to_le_bytes());
        out.push(p.compression.map_or(2, compression_byte));
        out.extend_from_slice(&p.plain_len.to_le_bytes());
        out.extend_from_slice(&p.data_bytes.to_le_bytes());
        out.extend_from_slice(&p.zero_bytes.to_le_bytes());
        out.extend_from_slice(&p.digest);
        match &p.sealed {
            None => out.push(0),
            Some(f) => {
                out.push(1);
                out.extend_from_slice(&f.image_uuid);
                out.extend_from_slice(&f.part.to_le_bytes());
                out.extend_from_slice(&f.sequence.to_le_bytes());
                out.push(compression_byte(f.compression));
                out.extend_from_slice(&f.plain_len.to_le_bytes());
                match &f.crypto {
                    RecordCrypto::None => out.push(0),
                    RecordCrypto::Aes256Gcm {
                        key_fingerprint,
                        nonce,
                        tag,
                    } => {
                        out.push(1);
                        out.extend_from_slice(key_fingerprint);
                        out.extend_from_slice(nonce);
                        out.extend_from_slice(tag);
                    }
                }
            }
        }
        out.extend_from_slice(&(p.extents.len() as u32).to_le_bytes());
        for e in &p.extents {
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.length.to_le_bytes());
            out.push(match e.kind {
                ExtentKind::Data => 0,
                ExtentKind::Zero => 1,
            });
        }
        out.extend_from_slice(p.stored());
    }

    fn decode(&self, bytes: &[u8], p: &mut Prepared) -> Result<(), Error> {
        let mut r = Reader { b: bytes, at: 0 };
        decode_into(&mut r, p).ok_or_else(|| {
            Error::Failed(format!(
                "the backup spool file gave back a damaged record ({} bytes, cut at byte {}): the spool's file system returned other bytes than were written",
                bytes.len(),
                r.at
            ))
        })
    }

    fn size(&self, p: &Prepared) -> u64 {
        p.stored().len() as u64
    }

    fn spool_error(&self, e: SpoolError) -> Error {
        Error::Failed(e.what)
    }

    fn spool_failed(&self, e: &SpoolError) {
        self.events.note(
            crate::events::NoteKind::Warning,
            format!(
                "{e}: the backup goes on without its spool file (records go to the drive as they come, so a slow source stops the drive more often)"
            ),
        );
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn arr<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.arr()?))
    }
}

fn decode_into(r: &mut Reader<'_>, p: &mut Prepared) -> Option<()> {
    let header_room = r.u32()? as usize;
    p.payload_crc = r.u32()?;
    p.compression = match r.u8()? {
        2 => None,
        b => Some(compression_of(b)?),
    };
    p.plain_len = r.u32()?;
    p.data_bytes = r.u64()?;
    p.zero_bytes = r.u64()?;
    p.digest = r.arr()?;
    p.sealed = match r.u8()? {
        0 => None,
        1 => {
            let image_uuid = r.arr()?;
            let part = r.u32()?;
            let sequence = r.u64()?;
            let compression = compression_of(r.u8()?)?;
            let plain_len = r.u32()?;
            let crypto = match r.u8()? {
                0 => RecordCrypto::None,
                1 => RecordCrypto::Aes256Gcm {
                    key_fingerprint: r.arr()?,
                    nonce: r.arr()?,
                    tag: r.arr()?,
                },
                _ => return None,
            };
            Some(DataFields {
                image_uuid,
                part,
                sequence,
                compression,
                crypto,
                plain_len,
            })
        }
        _ => return None,
    };
    let n = r.u32()? as usize;
    p.extents.clear();
    for _ in 0..n {
        let offset = r.u64()?;
        let length = r.u64()?;
        let kind = match r.u8()? {
            0 => ExtentKind::Data,
            1 => ExtentKind::Zero,
            _ => return None,
        };
        p.extents.push(Extent {
            offset,
            length,
            kind,
        });
    }
    let stored = &r.b[r.at..];
    p.header_room = header_room;
    p.block.clear();
    p.block.resize(header_room, 0);
    p.block.extend_from_slice(stored);
    p.payload_in_plain = false;
    r.at = r.b.len();
    // Not carried: the plain data and the block digests were used before the spool.
    p.plain.clear();
    p.blocks.clear();
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sealed: bool) -> Prepared {
        let mut p = Prepared {
            extents: vec![
                Extent {
                    offset: 4096,
                    length: 8192,
                    kind: ExtentKind::Data,
                },
                Extent {
                    offset: 12288,
                    length: 1 << 20,
                    kind: ExtentKind::Zero,
                },
            ],
            header_room: 77,
            payload_crc: 0xdead_beef,
            compression: Some(WireCompression::Zstd),
            plain_len: 8192,
            data_bytes: 8192,
            zero_bytes: 1 << 20,
            digest: [7; 32],
            ..Prepared::default()
        };
        p.block = vec![0; 77];
        p.block.extend((0..5000u32).map(|i| (i * 13) as u8));
        if sealed {
            p.sealed = Some(DataFields {
                image_uuid: [3; 16],
                part: 2,
                sequence: 99,
                compression: WireCompression::Zstd,
                crypto: RecordCrypto::Aes256Gcm {
                    key_fingerprint: [1; 16],
                    nonce: [2; 12],
                    tag: [4; 16],
                },
                plain_len: 8192,
            });
        }
        p
    }

    #[test]
    fn a_prepared_record_comes_back_as_it_went_in() {
        for sealed in [false, true] {
            let p = sample(sealed);
            let mut bytes = Vec::new();
            PreparedCodec {
                events: &crate::events::Silent,
            }
            .encode(&p, &mut bytes);
            // Decoded into a recycled record holding something else.
            let mut q = sample(!sealed);
            q.block = vec![9; 10_000];
            q.plain = vec![1; 100];
            PreparedCodec {
                events: &crate::events::Silent,
            }
            .decode(&bytes, &mut q)
            .unwrap();
            assert_eq!(q.extents, p.extents);
            assert_eq!(q.block, p.block);
            assert_eq!(q.stored(), p.stored());
            assert_eq!(
                (q.header_room, q.payload_crc, q.compression, q.plain_len),
                (p.header_room, p.payload_crc, p.compression, p.plain_len)
            );
            assert_eq!(
                (q.data_bytes, q.zero_bytes, q.digest),
                (p.data_bytes, p.zero_bytes, p.digest)
            );
            assert_eq!(q.sealed, p.sealed);
            assert!(q.plain.is_empty());
            // Every cut short of the whole is refused, never a panic.
            for cut in [0, 1, 10, 60, bytes.len() - 5001] {
                let e = PreparedCodec {
                    events: &crate::events::Silent,
                }
                .decode(&bytes[..cut], &mut q)
                .unwrap_err();
                assert!(e.to_string().contains("damaged"), "{e}");
            }
        }
    }
}

#[cfg(test)]
mod payload_in_plain_tests {
    use super::*;

    #[test]
    fn a_record_stored_as_read_comes_back_whole_in_its_block() {
        // The payload left in the plain buffer (not copied into the block) goes into
        // the spool and comes back as one block: header room, then the payload.
        let mut p = Prepared {
            extents: vec![Extent {
                offset: 0,
                length: 4096,
                kind: ExtentKind::Data,
            }],
            header_room: 129,
            compression: Some(WireCompression::None),
            plain_len: 4096,
            data_bytes: 4096,
            payload_in_plain: true,
            ..Prepared::default()
        };
        p.block = vec![0; 129];
        p.plain = (0..4096u32).map(|i| (i * 7) as u8).collect();
        p.payload_crc = crc32fast::hash(&p.plain);
        let codec = PreparedCodec {
            events: &crate::events::Silent,
        };
        let mut bytes = Vec::new();
        codec.encode(&p, &mut bytes);
        assert_eq!(codec.size(&p), 4096);
        let mut q = Prepared {
            payload_in_plain: true,
            plain: vec![5; 10],
            ..Prepared::default()
        };
        codec.decode(&bytes, &mut q).unwrap();
        assert!(!q.payload_in_plain);
        assert!(q.plain.is_empty());
        assert_eq!(q.block.len(), 129 + 4096);
        assert_eq!(q.stored(), &p.plain[..]);
        assert_eq!(q.block_len(), p.block_len());
    }
}
