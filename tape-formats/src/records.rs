//! The record structures of the format (majors 1 and 2 share them), their encoders and
//! [`decode_block`].
use crate::wire::{
    begin_block, check_extensions, decode_prefix, finish_header, put_i64, put_opt16, put_str,
    put_u16, put_u32, put_u64, put_u8, set_extension, set_major, Cur, CRC_OFFSET,
};
use crate::*;

/// Record type codes (prefix bytes 12..14).
pub mod record_type {
    pub const VOLUME_LABEL: u16 = 0x0001;
    pub const IMAGE_HEADER: u16 = 0x0010;
    pub const DATA: u16 = 0x0011;
    pub const IMAGE_TRAILER: u16 = 0x0012;
    pub const SNAPSHOT_HEADER: u16 = 0x0020;
    pub const SNAPSHOT_CHUNK: u16 = 0x0021;
    pub const SNAPSHOT_TRAILER: u16 = 0x0022;
    pub const END_OF_SESSION: u16 = 0x0030;
}

/// Payload compression (1 byte on tape).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

impl Compression {
    fn decode(v: u8, record: &'static str) -> Result<Self, FormatError> {
        match v {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Zstd),
            _ => Err(FormatError::InvalidValue {
                record,
                field: "compression",
                value: v as u64,
            }),
        }
    }
}

/// Encryption algorithm code (1 byte on tape): 0 none, 1 AES-256-GCM.
const ENC_NONE: u8 = 0;
const ENC_AES256GCM: u8 = 1;

/// The encryption of a stream as announced by a header (image header, snapshot header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    None,
    /// AES-256-GCM under the key with this 16-byte fingerprint.
    Aes256Gcm {
        key_fingerprint: [u8; 16],
    },
}

impl Cipher {
    /// The fingerprint of the key the stream is encrypted under; `None` in the clear.
    pub fn key_fingerprint(&self) -> Option<[u8; 16]> {
        match self {
            Cipher::None => None,
            Cipher::Aes256Gcm { key_fingerprint } => Some(*key_fingerprint),
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Cipher::None => {
                put_u8(out, ENC_NONE);
                out.extend_from_slice(&[0u8; 16]);
            }
            Cipher::Aes256Gcm { key_fingerprint } => {
                put_u8(out, ENC_AES256GCM);
                out.extend_from_slice(key_fingerprint);
            }
        }
    }
    fn get(c: &mut Cur<'_>) -> Result<Self, FormatError> {
        let alg = c.u8("encryption")?;
        let fp: [u8; 16] = c.arr("key_fingerprint")?;
        match alg {
            ENC_NONE if fp == [0; 16] => Ok(Cipher::None),
            ENC_NONE => Err(FormatError::Inconsistent {
                record: c.record(),
                reason: "unencrypted but key fingerprint is not zero",
            }),
            ENC_AES256GCM => Ok(Cipher::Aes256Gcm {
                key_fingerprint: fp,
            }),
            v => Err(FormatError::InvalidValue {
                record: c.record(),
                field: "encryption",
                value: v as u64,
            }),
        }
    }
}

/// Per-record encryption fields (data records and snapshot chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordCrypto {
    None,
    /// AES-256-GCM: key fingerprint, the 96-bit nonce, and the 128-bit tag.
    Aes256Gcm {
        key_fingerprint: [u8; 16],
        nonce: [u8; 12],
        tag: [u8; 16],
    },
}

impl RecordCrypto {
    /// Encryption algorithm byte, key fingerprint, nonce, (payload CRC written by the
    /// caller in between), tag. `for_aad` zeroes the tag.
    fn parts(&self, for_aad: bool) -> (u8, [u8; 16], [u8; 12], [u8; 16]) {
        match *self {
            RecordCrypto::None => (ENC_NONE, [0; 16], [0; 12], [0; 16]),
            RecordCrypto::Aes256Gcm {
                key_fingerprint,
                nonce,
                tag,
            } => (
                ENC_AES256GCM,
                key_fingerprint,
                nonce,
                if for_aad { [0; 16] } else { tag },
            ),
        }
    }
    fn from_parts(
        alg: u8,
        key_fingerprint: [u8; 16],
        nonce: [u8; 12],
        tag: [u8; 16],
        record: &'static str,
    ) -> Result<Self, FormatError> {
        match alg {
            ENC_NONE if key_fingerprint == [0; 16] && nonce == [0; 12] && tag == [0; 16] => {
                Ok(RecordCrypto::None)
            }
            ENC_NONE => Err(FormatError::Inconsistent {
                record,
                reason: "unencrypted but key fingerprint, nonce or tag is not zero",
            }),
            ENC_AES256GCM => Ok(RecordCrypto::Aes256Gcm {
                key_fingerprint,
                nonce,
                tag,
            }),
            v => Err(FormatError::InvalidValue {
                record,
                field: "encryption",
                value: v as u64,
            }),
        }
    }
    /// The key fingerprint, if encrypted.
    pub fn key_fingerprint(&self) -> Option<[u8; 16]> {
        match self {
            RecordCrypto::None => None,
            RecordCrypto::Aes256Gcm {
                key_fingerprint, ..
            } => Some(*key_fingerprint),
        }
    }
}

fn no_payload(p: &Prefix, record: &'static str) -> Result<(), FormatError> {
    if p.payload_len != 0 {
        return Err(FormatError::UnexpectedPayload {
            record,
            len: p.payload_len,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- volume label

/// Tape file 0 of every cartridge: who the cartridge is and which set it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeLabel {
    pub volume_uuid: [u8; 16],
    pub media_set_uuid: [u8; 16],
    /// 0-based position of this cartridge within its media set.
    pub set_sequence: u32,
    /// Unix seconds.
    pub label_time: i64,
    /// Fingerprint of the pool's key, so an operator sees which key the cartridge needs.
    pub key_fingerprint: Option<[u8; 16]>,
    pub barcode: String,
    pub pool_name: String,
    pub writer_name: String,
    pub writer_version: String,
    /// Opaque key-escrow blob (e.g. a passphrase-wrapped key); empty when none.
    pub escrow: Vec<u8>,
}

const R_LABEL: &str = "volume label";

impl VolumeLabel {
    /// Append the encoded label block to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        let start = begin_block(out, record_type::VOLUME_LABEL);
        let r = (|| {
            out.extend_from_slice(&self.volume_uuid);
            out.extend_from_slice(&self.media_set_uuid);
            put_u32(out, self.set_sequence);
            put_i64(out, self.label_time);
            put_opt16(out, &self.key_fingerprint);
            put_str(out, &self.barcode, MAX_BARCODE_LEN, R_LABEL, "barcode")?;
            put_str(
                out,
                &self.pool_name,
                MAX_POOL_NAME_LEN,
                R_LABEL,
                "pool_name",
            )?;
            put_str(
                out,
                &self.writer_name,
                MAX_WRITER_LEN,
                R_LABEL,
                "writer_name",
            )?;
            put_str(
                out,
                &self.writer_version,
                MAX_WRITER_LEN,
                R_LABEL,
                "writer_version",
            )?;
            if self.escrow.len() > MAX_ESCROW_LEN {
                return Err(FormatError::LimitExceeded {
                    record: R_LABEL,
                    field: "escrow",
                    value: self.escrow.len() as u64,
                    max: MAX_ESCROW_LEN as u64,
                });
            }
            put_u32(out, self.escrow.len() as u32);
            out.extend_from_slice(&self.escrow);
            Ok(())
        })();
        if let Err(e) = r {
            out.truncate(start);
            return Err(e);
        }
        finish_header(out, start, 0, true, R_LABEL)
    }

    fn decode(c: &mut Cur<'_>) -> Result<Self, FormatError> {
        let volume_uuid = c.arr("volume_uuid")?;
        let media_set_uuid = c.arr("media_set_uuid")?;
        let set_sequence = c.u32("set_sequence")?;
        let label_time = c.i64("label_time")?;
        let key_fingerprint = c.opt16("key_fingerprint")?;
        let barcode = c.string(MAX_BARCODE_LEN, "barcode")?;
        let pool_name = c.string(MAX_POOL_NAME_LEN, "pool_name")?;
        let writer_name = c.string(MAX_WRITER_LEN, "writer_name")?;
        let writer_version = c.string(MAX_WRITER_LEN, "writer_version")?;
        let escrow_len = c.u32("escrow")? as usize;
        if escrow_len > MAX_ESCROW_LEN {
            return Err(FormatError::LimitExceeded {
                record: R_LABEL,
                field: "escrow",
                value: escrow_len as u64,
                max: MAX_ESCROW_LEN as u64,
            });
        }
        let escrow = c.take(escrow_len, "escrow")?.to_vec();
        Ok(VolumeLabel {
            volume_uuid,
            media_set_uuid,
            set_sequence,
            label_time,
            key_fingerprint,
            barcode,
            pool_name,
            writer_name,
            writer_version,
            escrow,
        })
    }
}

// ---------------------------------------------------------------- image header

/// What an image is relative to others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// Every allocated extent of the disk.
    Full = 1,
    /// Only extents changed since the parent image (`from_change_id`).
    Incremental = 2,
    /// A full copy outside the regular chain (does not reset incrementals).
    Copy = 3,
}

/// First block of every image part (tape file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageHeader {
    pub image_uuid: [u8; 16],
    pub disk_uuid: [u8; 16],
    pub session_uuid: [u8; 16],
    /// Required for incrementals: the image this one applies on top of.
    pub parent_image_uuid: Option<[u8; 16]>,
    pub kind: ImageKind,
    /// 0-based part number; part n+1 continues on the next volume of the media set.
    pub part: u32,
    /// Sequence number of the first data record in this part (= records in earlier parts).
    pub first_sequence: u64,
    pub disk_size: u64,
    /// Granularity of the change tracker, in bytes (non-zero).
    pub tracking_block_size: u32,
    /// Plain bytes per data record the writer aimed for (1 ..= MAX_RECORD_DATA_SIZE).
    pub record_data_size: u32,
    /// Unix seconds (time the image was taken).
    pub time: i64,
    pub compression: Compression,
    pub cipher: Cipher,
    pub vm_name: String,
    pub change_id: String,
    pub from_change_id: Option<String>,
    /// Set on a tape-to-tape copy: the image UUID of the original this image is a copy
    /// of (format 1.1, extension entry [`EXT_COPY_OF`]). A copy stands for its original
    /// in every chain: a reader looking for image X may read any image whose `copy_of`
    /// is X instead. `None` on every image that is not such a copy.
    pub copy_of: Option<[u8; 16]>,
    /// Format 1.1: this full image is a synthetic full, built from the restore chain of
    /// the image with this UUID (the point it reproduces, byte for byte), not read from
    /// the disk. Carried in the header's extension area (entry [`EXT_SYNTHETIC_OF`]).
    pub synthetic_of: Option<[u8; 16]>,
    /// The content digest the image's trailers carry, written as the header block's
    /// format major ([`DigestScheme::major`]): every part's header and trailer carry the
    /// same. New images are written with [`DigestScheme::NEWEST`].
    pub digest_scheme: DigestScheme,
}

const R_IHDR: &str = "image header";

/// Extension entry type (format 1.1) of an image header: the 16-byte image UUID of the
/// original this image is a tape-to-tape copy of.
pub const EXT_COPY_OF: u16 = 0x0001;
/// Extension entry type (format 1.1) of an image header: the 16-byte UUID of the image a
/// synthetic full reproduces.
pub const EXT_SYNTHETIC_OF: u16 = 0x0002;

/// The extension entries of a header's extension area (already checked to frame by
/// `check_extensions`): `(type, value)` in order.
pub fn extension_entries(mut ext: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if ext.len() < 4 {
            return None;
        }
        let ty = u16::from_le_bytes([ext[0], ext[1]]);
        let len = u16::from_le_bytes([ext[2], ext[3]]) as usize;
        let v = ext.get(4..4 + len)?;
        ext = &ext[4 + len..];
        Some((ty, v))
    })
}

impl ImageHeader {
    /// The header for the next part of this image, after `trailer` (status
    /// continued) closed the current part.
    pub fn next_part(&self, trailer: &ImageTrailer) -> ImageHeader {
        ImageHeader {
            part: self.part.wrapping_add(1),
            first_sequence: trailer.records_in_image,
            ..self.clone()
        }
    }

    fn validate(&self) -> Result<(), FormatError> {
        if self.kind == ImageKind::Incremental && self.parent_image_uuid.is_none() {
            return Err(FormatError::Inconsistent {
                record: R_IHDR,
                reason: "incremental image without a parent image UUID",
            });
        }
        if self.synthetic_of.is_some() && self.kind != ImageKind::Full {
            return Err(FormatError::Inconsistent {
                record: R_IHDR,
                reason: "only a full image can be a synthetic full",
            });
        }
        if self.tracking_block_size == 0 {
            return Err(FormatError::InvalidValue {
                record: R_IHDR,
                field: "tracking_block_size",
                value: 0,
            });
        }
        if self.record_data_size == 0 || self.record_data_size > MAX_RECORD_DATA_SIZE {
            return Err(FormatError::LimitExceeded {
                record: R_IHDR,
                field: "record_data_size",
                value: self.record_data_size as u64,
                max: MAX_RECORD_DATA_SIZE as u64,
            });
        }
        Ok(())
    }

    /// Append the encoded header block to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        self.validate()?;
        let start = begin_block(out, record_type::IMAGE_HEADER);
        set_major(out, start, self.digest_scheme.major());
        let r = (|| {
            out.extend_from_slice(&self.image_uuid);
            out.extend_from_slice(&self.disk_uuid);
            out.extend_from_slice(&self.session_uuid);
            put_opt16(out, &self.parent_image_uuid);
            put_u8(out, self.kind as u8);
            put_u32(out, self.part);
            put_u64(out, self.first_sequence);
            put_u64(out, self.disk_size);
            put_u32(out, self.tracking_block_size);
            put_u32(out, self.record_data_size);
            put_i64(out, self.time);
            put_u8(out, self.compression as u8);
            self.cipher.put(out);
            put_str(out, &self.vm_name, MAX_VM_NAME_LEN, R_IHDR, "vm_name")?;
            put_str(out, &self.change_id, MAX_CHANGE_ID_LEN, R_IHDR, "change_id")?;
            match &self.from_change_id {
                None => {
                    put_u8(out, 0);
                    put_u16(out, 0);
                }
                Some(s) => {
                    put_u8(out, 1);
                    put_str(out, s, MAX_CHANGE_ID_LEN, R_IHDR, "from_change_id")?;
                }
            }
            // Format 1.1: one extension entry each; the block is then written with minor
            // 1. A 1.0 reader skips the entries (it sees a full, or the original image).
            if let Some(orig) = &self.copy_of {
                put_u16(out, EXT_COPY_OF);
                put_u16(out, 16);
                out.extend_from_slice(orig);
                set_extension(out, start, FORMAT_MINOR, 20);
            }
            if let Some(of) = &self.synthetic_of {
                put_u16(out, EXT_SYNTHETIC_OF);
                put_u16(out, 16);
                out.extend_from_slice(of);
                set_extension(out, start, FORMAT_MINOR, 20);
            }
            Ok(())
        })();
        if let Err(e) = r {
            out.truncate(start);
            return Err(e);
        }
        finish_header(out, start, 0, true, R_IHDR)
    }

    fn decode(c: &mut Cur<'_>, ext: &[u8], scheme: DigestScheme) -> Result<Self, FormatError> {
        let image_uuid = c.arr("image_uuid")?;
        let disk_uuid = c.arr("disk_uuid")?;
        let session_uuid = c.arr("session_uuid")?;
        let parent_image_uuid = c.opt16("parent_image_uuid")?;
        let kind = match c.u8("kind")? {
            1 => ImageKind::Full,
            2 => ImageKind::Incremental,
            3 => ImageKind::Copy,
            v => {
                return Err(FormatError::InvalidValue {
                    record: R_IHDR,
                    field: "kind",
                    value: v as u64,
                })
            }
        };
        let part = c.u32("part")?;
        let first_sequence = c.u64("first_sequence")?;
        let disk_size = c.u64("disk_size")?;
        let tracking_block_size = c.u32("tracking_block_size")?;
        let record_data_size = c.u32("record_data_size")?;
        let time = c.i64("time")?;
        let compression = Compression::decode(c.u8("compression")?, R_IHDR)?;
        let cipher = Cipher::get(c)?;
        let vm_name = c.string(MAX_VM_NAME_LEN, "vm_name")?;
        let change_id = c.string(MAX_CHANGE_ID_LEN, "change_id")?;
        let from_change_id = match c.u8("from_change_id")? {
            0 => {
                if c.u16("from_change_id")? != 0 {
                    return Err(FormatError::Inconsistent {
                        record: R_IHDR,
                        reason: "absent from_change_id has a non-zero length",
                    });
                }
                None
            }
            1 => Some(c.string(MAX_CHANGE_ID_LEN, "from_change_id")?),
            v => {
                return Err(FormatError::InvalidValue {
                    record: R_IHDR,
                    field: "from_change_id",
                    value: v as u64,
                })
            }
        };
        let h = ImageHeader {
            image_uuid,
            disk_uuid,
            session_uuid,
            parent_image_uuid,
            kind,
            part,
            first_sequence,
            disk_size,
            tracking_block_size,
            record_data_size,
            time,
            compression,
            cipher,
            vm_name,
            change_id,
            from_change_id,
            copy_of: uuid_entry(ext, EXT_COPY_OF, "copy_of")?,
            synthetic_of: uuid_entry(ext, EXT_SYNTHETIC_OF, "synthetic_of")?,
            digest_scheme: scheme,
        };
        h.validate()?;
        Ok(h)
    }
}

/// The 16-byte UUID value of the `ty` entry of an image header's extension area
/// ([`EXT_COPY_OF`], [`EXT_SYNTHETIC_OF`]; the area is already checked to frame), if
/// present. Other entries are skipped (a newer minor may add them).
fn uuid_entry(ext: &[u8], ty: u16, name: &'static str) -> Result<Option<[u8; 16]>, FormatError> {
    let mut found = None;
    for (t, value) in extension_entries(ext) {
        if t != ty {
            continue;
        }
        let v: [u8; 16] = value.try_into().map_err(|_| FormatError::BadExtension {
            reason: match name {
                "copy_of" => "the image header's copy_of entry is not 16 bytes",
                _ => "the image header's synthetic_of entry is not 16 bytes",
            },
        })?;
        if found.replace(v).is_some() {
            return Err(FormatError::BadExtension {
                reason: match name {
                    "copy_of" => "the image header's copy_of entry is given twice",
                    _ => "the image header's synthetic_of entry is given twice",
                },
            });
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------- image trailer

/// How an image part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrailerStatus {
    /// The image is complete; this is its last part.
    Complete = 1,
    /// The image continues with part + 1 on the next volume of the media set.
    Continued = 2,
    /// The writer gave up; the image must never be restored from or used as a base.
    Aborted = 3,
}

/// Last block of every image part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTrailer {
    pub image_uuid: [u8; 16],
    pub part: u32,
    pub status: TrailerStatus,
    /// Data records in this part.
    pub records_in_part: u64,
    /// Data records in the image so far (all parts up to and including this one).
    pub records_in_image: u64,
    /// Sum of plain lengths (data extents) of the records in this part.
    pub data_bytes: u64,
    /// Sum of zero-extent lengths of the records in this part.
    pub zero_bytes: u64,
    /// Sum of stored payload lengths of the records in this part.
    pub stored_bytes: u64,
    /// [`ContentDigest`] of the image's records so far (through this part).
    pub digest: [u8; 32],
    /// Which content digest `digest` is, written as the trailer block's format major;
    /// always its header's.
    pub digest_scheme: DigestScheme,
}

const R_ITRL: &str = "image trailer";

impl ImageTrailer {
    /// Append the encoded trailer block to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        if self.records_in_part > self.records_in_image {
            return Err(FormatError::Inconsistent {
                record: R_ITRL,
                reason: "records_in_part exceeds records_in_image",
            });
        }
        let start = begin_block(out, record_type::IMAGE_TRAILER);
        set_major(out, start, self.digest_scheme.major());
        out.extend_from_slice(&self.image_uuid);
        put_u32(out, self.part);
        put_u8(out, self.status as u8);
        put_u64(out, self.records_in_part);
        put_u64(out, self.records_in_image);
        put_u64(out, self.data_bytes);
        put_u64(out, self.zero_bytes);
        put_u64(out, self.stored_bytes);
        out.extend_from_slice(&self.digest);
        finish_header(out, start, 0, true, R_ITRL)
    }

    fn decode(c: &mut Cur<'_>, scheme: DigestScheme) -> Result<Self, FormatError> {
        let image_uuid = c.arr("image_uuid")?;
        let part = c.u32("part")?;
        let status = match c.u8("status")? {
            1 => TrailerStatus::Complete,
            2 => TrailerStatus::Continued,
            3 => TrailerStatus::Aborted,
            v => {
                return Err(FormatError::InvalidValue {
                    record: R_ITRL,
                    field: "status",
                    value: v as u64,
                })
            }
        };
        let t = ImageTrailer {
            image_uuid,
            part,
            status,
            records_in_part: c.u64("records_in_part")?,
            records_in_image: c.u64("records_in_image")?,
            data_bytes: c.u64("data_bytes")?,
            zero_bytes: c.u64("zero_bytes")?,
            stored_bytes: c.u64("stored_bytes")?,
            digest: c.arr("digest")?,
            digest_scheme: scheme,
        };
        if t.records_in_part > t.records_in_image {
            return Err(FormatError::Inconsistent {
                record: R_ITRL,
                reason: "records_in_part exceeds records_in_image",
            });
        }
        Ok(t)
    }
}

// ---------------------------------------------------------------- data record

/// Whether an extent's bytes are in the payload or are all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// `length` bytes of the payload (after decompression/decryption) belong here.
    Data = 0,
    /// The disk range is all zero bytes; nothing in the payload.
    Zero = 1,
}

/// A range of the disk carried by a data record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub kind: ExtentKind,
}

/// Bytes per extent on tape: offset u64, length u64, kind u8.
pub const EXTENT_LEN: usize = 17;

/// Check extent rules: 1..=MAX_EXTENTS_PER_RECORD extents, each non-empty and not
/// overflowing u64, ascending and non-overlapping; returns the sum of data lengths.
pub fn validate_extents(extents: &[Extent]) -> Result<u64, FormatError> {
    const R: &str = "data record";
    if extents.is_empty() || extents.len() > MAX_EXTENTS_PER_RECORD {
        return Err(FormatError::LimitExceeded {
            record: R,
            field: "extent_count",
            value: extents.len() as u64,
            max: MAX_EXTENTS_PER_RECORD as u64,
        });
    }
    let mut data = 0u64;
    let mut prev_end: Option<u64> = None;
    for (index, e) in extents.iter().enumerate() {
        let bad = |reason| FormatError::BadExtent {
            record: R,
            index,
            reason,
        };
        if e.length == 0 {
            return Err(bad("zero length"));
        }
        let end = e
            .offset
            .checked_add(e.length)
            .ok_or(bad("offset + length overflows"))?;
        if let Some(p) = prev_end {
            if e.offset < p {
                return Err(bad("not ascending or overlaps the previous extent"));
            }
        }
        prev_end = Some(end);
        if e.kind == ExtentKind::Data {
            data = data
                .checked_add(e.length)
                .ok_or(bad("data length sum overflows"))?;
        }
    }
    Ok(data)
}

/// The fixed fields of a data record (everything but the extents and payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataFields {
    pub image_uuid: [u8; 16],
    pub part: u32,
    /// Continuous across the parts of an image, starting at 0.
    pub sequence: u64,
    pub compression: Compression,
    pub crypto: RecordCrypto,
    /// Plain length: the sum of the data extents' lengths (<= MAX_RECORD_DATA_SIZE).
    pub plain_len: u32,
}

/// A decoded data record; the payload borrows from the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRecord<'a> {
    pub fields: DataFields,
    pub extents: Vec<Extent>,
    /// Stored payload: the data extents' bytes concatenated, compressed, encrypted.
    pub payload: &'a [u8],
    /// CRC-32 of the stored payload (verified by [`decode_block`]).
    pub payload_crc: u32,
    /// The header bytes exactly as on tape (`[0, header_len)`, extension area
    /// included): what [`DataRecord::aad`] authenticates, so the version and any
    /// extension entries are covered too.
    pub header: &'a [u8],
}

const R_DATA: &str = "data record";

fn check_data(
    fields: &DataFields,
    extents: &[Extent],
    stored_len: usize,
) -> Result<(), FormatError> {
    let sum = validate_extents(extents)?;
    if fields.plain_len > MAX_RECORD_DATA_SIZE {
        return Err(FormatError::LimitExceeded {
            record: R_DATA,
            field: "plain_len",
            value: fields.plain_len as u64,
            max: MAX_RECORD_DATA_SIZE as u64,
        });
    }
    if sum != fields.plain_len as u64 {
        return Err(FormatError::Inconsistent {
            record: R_DATA,
            reason: "plain_len is not the sum of the data extents' lengths",
        });
    }
    if fields.compression == Compression::None && stored_len != fields.plain_len as usize {
        return Err(FormatError::Inconsistent {
            record: R_DATA,
            reason: "uncompressed record whose stored length differs from its plain length",
        });
    }
    Ok(())
}

/// Encode a data record header. `aad` mode zeroes the header CRC, payload CRC and tag.
fn put_data_header(
    out: &mut Vec<u8>,
    f: &DataFields,
    extents: &[Extent],
    stored_len: usize,
    payload_crc: u32,
    aad: bool,
) -> Result<usize, FormatError> {
    check_data(f, extents, stored_len)?;
    let start = begin_block(out, record_type::DATA);
    let (alg, fp, nonce, tag) = f.crypto.parts(aad);
    out.extend_from_slice(&f.image_uuid);
    put_u32(out, f.part);
    put_u64(out, f.sequence);
    put_u8(out, f.compression as u8);
    put_u8(out, alg);
    put_u16(out, extents.len() as u16);
    put_u32(out, f.plain_len);
    out.extend_from_slice(&fp);
    out.extend_from_slice(&nonce);
    put_u32(out, if aad { 0 } else { payload_crc });
    out.extend_from_slice(&tag);
    for e in extents {
        put_u64(out, e.offset);
        put_u64(out, e.length);
        put_u8(out, e.kind as u8);
    }
    finish_header(out, start, stored_len, !aad, R_DATA)?;
    Ok(start)
}

/// Append a complete data record block (header + `payload`) to `out`.
/// `payload` is the stored payload (compressed and, if `fields.crypto` says so, encrypted).
pub fn encode_data_record(
    fields: &DataFields,
    extents: &[Extent],
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    put_data_header(
        out,
        fields,
        extents,
        payload.len(),
        crc32fast::hash(payload),
        false,
    )?;
    out.extend_from_slice(payload);
    Ok(())
}

/// Bytes of one extent entry in a data record header: offset u64, length u64, kind u8.
const EXTENT_ENTRY_LEN: usize = 17;

/// Length of a data record's header with `extent_count` extents, as this version writes
/// it (no extension entries): the payload of a record starts at this offset.
pub fn data_header_len(extent_count: usize) -> usize {
    DATA_TAG_AT + 16 + EXTENT_ENTRY_LEN * extent_count
}

/// Frame a data record whose payload a caller already placed in `block` after room for
/// the header: writes the header into `block[..data_header_len(extents.len())]` for the
/// payload `block[data_header_len(..)..]`, whose CRC-32 is `payload_crc`. The result is
/// byte for byte what [`encode_data_record`] produces; it lets a pipeline compress or
/// encrypt straight into the block it will write, and checksum the payload on another
/// thread, instead of copying the payload once more to frame it.
pub fn frame_data_record(
    fields: &DataFields,
    extents: &[Extent],
    payload_crc: u32,
    block: &mut [u8],
) -> Result<(), FormatError> {
    let header_len = data_header_len(extents.len());
    let Some(payload_len) = block.len().checked_sub(header_len) else {
        return Err(FormatError::Inconsistent {
            record: R_DATA,
            reason: "block shorter than the data record header",
        });
    };
    frame_data_header(
        fields,
        extents,
        payload_len,
        payload_crc,
        &mut block[..header_len],
    )
}

/// As [`frame_data_record`] for a payload held apart: writes the header of a record
/// whose stored payload is `payload_len` bytes with CRC-32 `payload_crc` into `header`,
/// which must be exactly [`data_header_len`] of the extents long. The block on tape is
/// `header` followed by the payload (a drive may take the two as parts of one block).
pub fn frame_data_header(
    fields: &DataFields,
    extents: &[Extent],
    payload_len: usize,
    payload_crc: u32,
    header: &mut [u8],
) -> Result<(), FormatError> {
    let header_len = data_header_len(extents.len());
    if header.len() != header_len {
        return Err(FormatError::Inconsistent {
            record: R_DATA,
            reason: "header room differs from the data record header's length",
        });
    }
    let mut framed = Vec::with_capacity(header_len);
    put_data_header(
        &mut framed,
        fields,
        extents,
        payload_len,
        payload_crc,
        false,
    )?;
    if framed.len() != header_len {
        return Err(FormatError::Inconsistent {
            record: R_DATA,
            reason: "data record header length differs from data_header_len",
        });
    }
    header.copy_from_slice(&framed);
    Ok(())
}

/// Append the associated data an AEAD must authenticate for this record to `out`: the
/// header exactly as on tape but with header CRC, payload CRC and tag set to zero.
/// Covers magic, version, type, lengths (stored length = `stored_len`), image UUID,
/// part, sequence, compression, encryption, extent count, plain length, key
/// fingerprint, nonce and every extent. Computable before encryption (the AES-GCM
/// ciphertext has the plaintext's length).
pub fn data_record_aad(
    fields: &DataFields,
    extents: &[Extent],
    stored_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    put_data_header(out, fields, extents, stored_len, 0, true).map(|_| ())
}

/// Offsets of the payload CRC and the tag in a data record header.
const DATA_PAYLOAD_CRC_AT: usize = 92;
const DATA_TAG_AT: usize = 96;
/// Offsets of the payload CRC and the tag in a snapshot chunk header.
const CHUNK_PAYLOAD_CRC_AT: usize = 88;
const CHUNK_TAG_AT: usize = 92;

/// The AAD of a decoded block: its header as on tape with the header CRC, payload CRC
/// and tag zeroed (FORMAT.md section 6). Taken from the bytes read, not re-encoded, so
/// the minor version and the extension area a writer put there are authenticated too.
fn aad_of_header(header: &[u8], crc_at: usize, tag_at: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(header);
    let h = &mut out[start..];
    h[crate::wire::CRC_OFFSET..crate::wire::CRC_OFFSET + 4].fill(0);
    h[crc_at..crc_at + 4].fill(0);
    h[tag_at..tag_at + 16].fill(0);
}

impl DataRecord<'_> {
    /// The AEAD associated data of this record: its header as read, with the header
    /// CRC, payload CRC and tag zeroed. For a record this version wrote, the same bytes
    /// as [`data_record_aad`] of its fields.
    pub fn aad(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        aad_of_header(self.header, DATA_PAYLOAD_CRC_AT, DATA_TAG_AT, out);
        Ok(())
    }

    fn decode<'a>(
        c: &mut Cur<'_>,
        header: &'a [u8],
        payload: &'a [u8],
    ) -> Result<DataRecord<'a>, FormatError> {
        let image_uuid = c.arr("image_uuid")?;
        let part = c.u32("part")?;
        let sequence = c.u64("sequence")?;
        let compression = Compression::decode(c.u8("compression")?, R_DATA)?;
        let alg = c.u8("encryption")?;
        let count = c.u16("extent_count")? as usize;
        let plain_len = c.u32("plain_len")?;
        let fp = c.arr("key_fingerprint")?;
        let nonce = c.arr("nonce")?;
        let payload_crc = c.u32("payload_crc")?;
        let tag = c.arr("tag")?;
        let crypto = RecordCrypto::from_parts(alg, fp, nonce, tag, R_DATA)?;
        if count == 0 || count > MAX_EXTENTS_PER_RECORD {
            return Err(FormatError::LimitExceeded {
                record: R_DATA,
                field: "extent_count",
                value: count as u64,
                max: MAX_EXTENTS_PER_RECORD as u64,
            });
        }
        let raw = c.take(count * EXTENT_LEN, "extents")?;
        let mut extents = Vec::with_capacity(count);
        for (i, e) in raw.chunks_exact(EXTENT_LEN).enumerate() {
            let mut o = [0u8; 8];
            o.copy_from_slice(&e[0..8]);
            let mut l = [0u8; 8];
            l.copy_from_slice(&e[8..16]);
            let kind = match e[16] {
                0 => ExtentKind::Data,
                1 => ExtentKind::Zero,
                _ => {
                    return Err(FormatError::BadExtent {
                        record: R_DATA,
                        index: i,
                        reason: "kind is neither 0 (data) nor 1 (zero)",
                    })
                }
            };
            extents.push(Extent {
                offset: u64::from_le_bytes(o),
                length: u64::from_le_bytes(l),
                kind,
            });
        }
        let fields = DataFields {
            image_uuid,
            part,
            sequence,
            compression,
            crypto,
            plain_len,
        };
        check_data(&fields, &extents, payload.len())?;
        Ok(DataRecord {
            fields,
            extents,
            payload,
            payload_crc,
            header,
        })
    }
}

// ---------------------------------------------------------------- catalog snapshot

/// Opens the catalog-snapshot tape file written after a backup session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub session_uuid: [u8; 16],
    pub media_set_uuid: [u8; 16],
    /// Unix seconds.
    pub time: i64,
    pub compression: Compression,
    pub cipher: Cipher,
    /// Plain length of the whole snapshot (sum of chunk plain lengths).
    pub total_plain_len: u64,
    /// Plain bytes per chunk the writer aimed for (1 ..= MAX_RECORD_DATA_SIZE).
    pub chunk_data_size: u32,
}

const R_SHDR: &str = "snapshot header";

impl SnapshotHeader {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        if self.chunk_data_size == 0 || self.chunk_data_size > MAX_RECORD_DATA_SIZE {
            return Err(FormatError::LimitExceeded {
                record: R_SHDR,
                field: "chunk_data_size",
                value: self.chunk_data_size as u64,
                max: MAX_RECORD_DATA_SIZE as u64,
            });
        }
        let start = begin_block(out, record_type::SNAPSHOT_HEADER);
        out.extend_from_slice(&self.session_uuid);
        out.extend_from_slice(&self.media_set_uuid);
        put_i64(out, self.time);
        put_u8(out, self.compression as u8);
        self.cipher.put(out);
        put_u64(out, self.total_plain_len);
        put_u32(out, self.chunk_data_size);
        finish_header(out, start, 0, true, R_SHDR)
    }
    fn decode(c: &mut Cur<'_>) -> Result<Self, FormatError> {
        let h = SnapshotHeader {
            session_uuid: c.arr("session_uuid")?,
            media_set_uuid: c.arr("media_set_uuid")?,
            time: c.i64("time")?,
            compression: Compression::decode(c.u8("compression")?, R_SHDR)?,
            cipher: Cipher::get(c)?,
            total_plain_len: c.u64("total_plain_len")?,
            chunk_data_size: c.u32("chunk_data_size")?,
        };
        if h.chunk_data_size == 0 || h.chunk_data_size > MAX_RECORD_DATA_SIZE {
            return Err(FormatError::LimitExceeded {
                record: R_SHDR,
                field: "chunk_data_size",
                value: h.chunk_data_size as u64,
                max: MAX_RECORD_DATA_SIZE as u64,
            });
        }
        Ok(h)
    }
}

/// The fixed fields of a snapshot chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkFields {
    pub session_uuid: [u8; 16],
    /// 0-based, continuous within the snapshot.
    pub sequence: u64,
    pub compression: Compression,
    pub crypto: RecordCrypto,
    pub plain_len: u32,
}

/// A decoded snapshot chunk; the payload borrows from the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk<'a> {
    pub fields: ChunkFields,
    pub payload: &'a [u8],
    pub payload_crc: u32,
    /// The header bytes exactly as on tape; what [`SnapshotChunk::aad`] authenticates.
    pub header: &'a [u8],
}

const R_CHUNK: &str = "snapshot chunk";

fn check_chunk(f: &ChunkFields, stored_len: usize) -> Result<(), FormatError> {
    if f.plain_len == 0 || f.plain_len > MAX_RECORD_DATA_SIZE {
        return Err(FormatError::LimitExceeded {
            record: R_CHUNK,
            field: "plain_len",
            value: f.plain_len as u64,
            max: MAX_RECORD_DATA_SIZE as u64,
        });
    }
    if f.compression == Compression::None && stored_len != f.plain_len as usize {
        return Err(FormatError::Inconsistent {
            record: R_CHUNK,
            reason: "uncompressed chunk whose stored length differs from its plain length",
        });
    }
    Ok(())
}

fn put_chunk_header(
    out: &mut Vec<u8>,
    f: &ChunkFields,
    stored_len: usize,
    payload_crc: u32,
    aad: bool,
) -> Result<(), FormatError> {
    check_chunk(f, stored_len)?;
    let start = begin_block(out, record_type::SNAPSHOT_CHUNK);
    let (alg, fp, nonce, tag) = f.crypto.parts(aad);
    out.extend_from_slice(&f.session_uuid);
    put_u64(out, f.sequence);
    put_u8(out, f.compression as u8);
    put_u8(out, alg);
    put_u16(out, 0); // reserved
    put_u32(out, f.plain_len);
    out.extend_from_slice(&fp);
    out.extend_from_slice(&nonce);
    put_u32(out, if aad { 0 } else { payload_crc });
    out.extend_from_slice(&tag);
    finish_header(out, start, stored_len, !aad, R_CHUNK)
}

/// Append a complete snapshot chunk block to `out`.
pub fn encode_snapshot_chunk(
    fields: &ChunkFields,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    put_chunk_header(out, fields, payload.len(), crc32fast::hash(payload), false)?;
    out.extend_from_slice(payload);
    Ok(())
}

/// AEAD associated data of a snapshot chunk: its header with header CRC, payload CRC
/// and tag zeroed (same rule as [`data_record_aad`]).
pub fn snapshot_chunk_aad(
    fields: &ChunkFields,
    stored_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    put_chunk_header(out, fields, stored_len, 0, true)
}

impl SnapshotChunk<'_> {
    /// The AEAD associated data: the chunk header as read, with header CRC, payload CRC
    /// and tag zeroed (see [`DataRecord::aad`]).
    pub fn aad(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        aad_of_header(self.header, CHUNK_PAYLOAD_CRC_AT, CHUNK_TAG_AT, out);
        Ok(())
    }
    fn decode<'a>(
        c: &mut Cur<'_>,
        header: &'a [u8],
        payload: &'a [u8],
    ) -> Result<SnapshotChunk<'a>, FormatError> {
        let session_uuid = c.arr("session_uuid")?;
        let sequence = c.u64("sequence")?;
        let compression = Compression::decode(c.u8("compression")?, R_CHUNK)?;
        let alg = c.u8("encryption")?;
        let reserved = c.u16("reserved")?;
        if reserved != 0 {
            return Err(FormatError::InvalidValue {
                record: R_CHUNK,
                field: "reserved",
                value: reserved as u64,
            });
        }
        let plain_len = c.u32("plain_len")?;
        let fp = c.arr("key_fingerprint")?;
        let nonce = c.arr("nonce")?;
        let payload_crc = c.u32("payload_crc")?;
        let tag = c.arr("tag")?;
        let fields = ChunkFields {
            session_uuid,
            sequence,
            compression,
            crypto: RecordCrypto::from_parts(alg, fp, nonce, tag, R_CHUNK)?,
            plain_len,
        };
        check_chunk(&fields, payload.len())?;
        Ok(SnapshotChunk {
            fields,
            payload,
            payload_crc,
            header,
        })
    }
}

/// Closes the catalog-snapshot tape file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTrailer {
    pub session_uuid: [u8; 16],
    pub chunk_count: u64,
    pub total_plain_len: u64,
    /// BLAKE3 of the plain snapshot bytes ([`snapshot_digest`]).
    pub digest: [u8; 32],
}

impl SnapshotTrailer {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        let start = begin_block(out, record_type::SNAPSHOT_TRAILER);
        out.extend_from_slice(&self.session_uuid);
        put_u64(out, self.chunk_count);
        put_u64(out, self.total_plain_len);
        out.extend_from_slice(&self.digest);
        finish_header(out, start, 0, true, "snapshot trailer")
    }
    fn decode(c: &mut Cur<'_>) -> Result<Self, FormatError> {
        Ok(SnapshotTrailer {
            session_uuid: c.arr("session_uuid")?,
            chunk_count: c.u64("chunk_count")?,
            total_plain_len: c.u64("total_plain_len")?,
            digest: c.arr("digest")?,
        })
    }
}

/// Marks the end of a backup session on this cartridge (its own one-block tape file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOfSession {
    pub session_uuid: [u8; 16],
    pub media_set_uuid: [u8; 16],
    /// Unix seconds.
    pub time: i64,
    /// Image parts the session wrote to this cartridge.
    pub image_parts: u32,
    /// `set_sequence` of this cartridge (repeated so a stray block is self-explaining).
    pub set_sequence: u32,
}

impl EndOfSession {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        let start = begin_block(out, record_type::END_OF_SESSION);
        out.extend_from_slice(&self.session_uuid);
        out.extend_from_slice(&self.media_set_uuid);
        put_i64(out, self.time);
        put_u32(out, self.image_parts);
        put_u32(out, self.set_sequence);
        finish_header(out, start, 0, true, "end of session")
    }
    fn decode(c: &mut Cur<'_>) -> Result<Self, FormatError> {
        Ok(EndOfSession {
            session_uuid: c.arr("session_uuid")?,
            media_set_uuid: c.arr("media_set_uuid")?,
            time: c.i64("time")?,
            image_parts: c.u32("image_parts")?,
            set_sequence: c.u32("set_sequence")?,
        })
    }
}

// ---------------------------------------------------------------- decode_block

/// Every kind of block. Data records and snapshot chunks borrow their payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block<'a> {
    VolumeLabel(VolumeLabel),
    ImageHeader(ImageHeader),
    Data(DataRecord<'a>),
    ImageTrailer(ImageTrailer),
    SnapshotHeader(SnapshotHeader),
    SnapshotChunk(SnapshotChunk<'a>),
    SnapshotTrailer(SnapshotTrailer),
    EndOfSession(EndOfSession),
    /// A record type added by a newer minor version: valid framing and header CRC, but
    /// unknown to this reader, which skips it.
    Unknown {
        record_type: u16,
        minor: u16,
        header: &'a [u8],
        payload: &'a [u8],
    },
}

impl Block<'_> {
    /// Short name of the block kind, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Block::VolumeLabel(_) => "volume label",
            Block::ImageHeader(_) => R_IHDR,
            Block::Data(_) => R_DATA,
            Block::ImageTrailer(_) => R_ITRL,
            Block::SnapshotHeader(_) => R_SHDR,
            Block::SnapshotChunk(_) => R_CHUNK,
            Block::SnapshotTrailer(_) => "snapshot trailer",
            Block::EndOfSession(_) => "end of session",
            Block::Unknown { .. } => "unknown record",
        }
    }
}

/// Decode one tape block. Checks the prefix (magic, version, lengths, header CRC), the
/// extension area framing, every field against its limit, and the payload CRC of data
/// records and snapshot chunks (encrypted or not; the AEAD tag is the caller's).
pub fn decode_block(block: &[u8]) -> Result<Block<'_>, FormatError> {
    let p = decode_prefix(block)?;
    let body_end = p.header_len - p.ext_len;
    check_extensions(&block[body_end..p.header_len])?;
    let body = &block[crate::PREFIX_LEN..body_end];
    let payload = &block[p.header_len..];
    let out = match p.record_type {
        record_type::VOLUME_LABEL => {
            no_payload(&p, R_LABEL)?;
            let mut c = Cur::new(body, R_LABEL);
            let v = VolumeLabel::decode(&mut c)?;
            c.end()?;
            Block::VolumeLabel(v)
        }
        record_type::IMAGE_HEADER => {
            no_payload(&p, R_IHDR)?;
            let mut c = Cur::new(body, R_IHDR);
            let v = ImageHeader::decode(&mut c, &block[body_end..p.header_len], scheme_of(&p))?;
            c.end()?;
            Block::ImageHeader(v)
        }
        record_type::IMAGE_TRAILER => {
            no_payload(&p, R_ITRL)?;
            let mut c = Cur::new(body, R_ITRL);
            let v = ImageTrailer::decode(&mut c, scheme_of(&p))?;
            c.end()?;
            Block::ImageTrailer(v)
        }
        record_type::DATA => {
            let mut c = Cur::new(body, R_DATA);
            let v = DataRecord::decode(&mut c, &block[..p.header_len], payload)?;
            c.end()?;
            check_payload_crc(v.payload_crc, payload)?;
            Block::Data(v)
        }
        record_type::SNAPSHOT_HEADER => {
            no_payload(&p, R_SHDR)?;
            let mut c = Cur::new(body, R_SHDR);
            let v = SnapshotHeader::decode(&mut c)?;
            c.end()?;
            Block::SnapshotHeader(v)
        }
        record_type::SNAPSHOT_CHUNK => {
            let mut c = Cur::new(body, R_CHUNK);
            let v = SnapshotChunk::decode(&mut c, &block[..p.header_len], payload)?;
            c.end()?;
            check_payload_crc(v.payload_crc, payload)?;
            Block::SnapshotChunk(v)
        }
        record_type::SNAPSHOT_TRAILER => {
            no_payload(&p, "snapshot trailer")?;
            let mut c = Cur::new(body, "snapshot trailer");
            let v = SnapshotTrailer::decode(&mut c)?;
            c.end()?;
            Block::SnapshotTrailer(v)
        }
        record_type::END_OF_SESSION => {
            no_payload(&p, "end of session")?;
            let mut c = Cur::new(body, "end of session");
            let v = EndOfSession::decode(&mut c)?;
            c.end()?;
            Block::EndOfSession(v)
        }
        other if p.minor > FORMAT_MINOR => Block::Unknown {
            record_type: other,
            minor: p.minor,
            header: &block[..p.header_len],
            payload,
        },
        other => {
            return Err(FormatError::UnknownRecordType {
                record_type: other,
                minor: p.minor,
            })
        }
    };
    Ok(out)
}

/// The content digest an image header or trailer of this major announces
/// ([`decode_prefix`] accepts only the majors that name one).
fn scheme_of(p: &crate::Prefix) -> DigestScheme {
    DigestScheme::of_major(p.major).unwrap_or(DigestScheme::NEWEST)
}

fn check_payload_crc(stored: u32, payload: &[u8]) -> Result<(), FormatError> {
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(FormatError::PayloadCrc { stored, computed });
    }
    Ok(())
}

/// Byte offset of the header CRC (for documentation and tests).
pub const HEADER_CRC_OFFSET: usize = CRC_OFFSET;

#[cfg(test)]
mod copy_header_tests {
    use super::*;

    fn header(copy_of: Option<[u8; 16]>) -> ImageHeader {
        ImageHeader {
            image_uuid: [1; 16],
            disk_uuid: [2; 16],
            session_uuid: [3; 16],
            parent_image_uuid: Some([4; 16]),
            kind: ImageKind::Incremental,
            part: 0,
            first_sequence: 0,
            disk_size: 1 << 20,
            tracking_block_size: 65536,
            record_data_size: 524288,
            time: 1,
            compression: Compression::None,
            cipher: Cipher::None,
            vm_name: String::new(),
            change_id: String::new(),
            from_change_id: None,
            copy_of,
            synthetic_of: None,
            digest_scheme: DigestScheme::NEWEST,
        }
    }

    #[test]
    fn the_header_and_trailer_majors_name_the_content_digest() {
        for scheme in [DigestScheme::Bytes, DigestScheme::Pieces] {
            let h = ImageHeader {
                digest_scheme: scheme,
                ..header(None)
            };
            let mut b = Vec::new();
            h.encode(&mut b).unwrap();
            assert_eq!(u16::from_le_bytes([b[8], b[9]]), scheme.major());
            assert_eq!(decode_block(&b).unwrap(), Block::ImageHeader(h));
            let t = ImageTrailer {
                image_uuid: [1; 16],
                part: 0,
                status: TrailerStatus::Complete,
                records_in_part: 0,
                records_in_image: 0,
                data_bytes: 0,
                zero_bytes: 0,
                stored_bytes: 0,
                digest: [7; 32],
                digest_scheme: scheme,
            };
            let mut b = Vec::new();
            t.encode(&mut b).unwrap();
            assert_eq!(u16::from_le_bytes([b[8], b[9]]), scheme.major());
            assert_eq!(decode_block(&b).unwrap(), Block::ImageTrailer(t));
        }
        // Every other block keeps major 1.
        let mut b = Vec::new();
        let fields = DataFields {
            image_uuid: [1; 16],
            part: 0,
            sequence: 0,
            compression: Compression::None,
            crypto: RecordCrypto::None,
            plain_len: 1,
        };
        let e = [Extent {
            offset: 0,
            length: 1,
            kind: ExtentKind::Data,
        }];
        encode_data_record(&fields, &e, b"x", &mut b).unwrap();
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 1);
    }

    #[test]
    fn a_copy_header_is_format_1_1_with_the_original_in_its_extension_area() {
        let mut b = Vec::new();
        header(Some([9; 16])).encode(&mut b).unwrap();
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), FORMAT_MINOR);
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), 20);
        match decode_block(&b).unwrap() {
            Block::ImageHeader(h) => assert_eq!(h.copy_of, Some([9; 16])),
            other => panic!("{other:?}"),
        }
        // Not a copy: exactly the 1.0 bytes as before, no extension area.
        let mut plain = Vec::new();
        header(None).encode(&mut plain).unwrap();
        assert_eq!(u16::from_le_bytes([plain[10], plain[11]]), 0);
        assert_eq!(plain.len() + 20, b.len());
        match decode_block(&plain).unwrap() {
            Block::ImageHeader(h) => assert_eq!(h.copy_of, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_copy_of_entry_of_the_wrong_length_is_refused() {
        let mut b = Vec::new();
        header(Some([9; 16])).encode(&mut b).unwrap();
        // Cut the value to 15 bytes: entry len 15, ext_len 19, header_len - 1.
        let n = b.len();
        b.remove(n - 1);
        b[n - 18..n - 16].copy_from_slice(&15u16.to_le_bytes());
        b[14..16].copy_from_slice(&19u16.to_le_bytes());
        let hl = (n - 1) as u32;
        b[16..20].copy_from_slice(&hl.to_le_bytes());
        let crc = crate::wire::header_crc(&b);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_block(&b).is_err());
    }
}
