//! Reading one image back: every record checked (CRCs, authentication, image, part,
//! sequence, key), whole parts through the format's stream checks and the content
//! digest, or only the segments a restore needs; each data extent's plain bytes are
//! delivered to the caller.

use std::collections::HashMap;

use serde::Serialize;
use tape_formats::{
    decode_block, Block, ContentDigest, DigestScheme, ExtentKind, ImageHeader, PartChecker,
    PartJoiner, ReadStatus, TrailerStatus,
};
use uuid::Uuid;

use super::MediaReader;
use crate::catalog::{ImageRow, Segment};
use crate::codec::{KeyRing, OpenError, Opener};
use crate::crypto::to_hex;
use crate::error::{Context, Error, Result};

/// What [`read_image_records`] hands on for each data record: the block as read, its
/// extents and its authenticated plain bytes.
pub type OnRecord<'a> = dyn FnMut(&[u8], &[tape_formats::Extent], &[u8]) -> Result<()> + 'a;

/// What [`read_image_records`] tells once, when it has read the image's first header
/// (before any record): the content digest its trailers carry.
pub type OnScheme<'a> = dyn FnMut(DigestScheme) -> Result<()> + 'a;

/// What reading one image found.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRead {
    pub image: Uuid,
    /// Data records read and checked.
    pub records_read: u64,
    /// Records of the image not read (in segments that supplied nothing needed).
    pub records_skipped: u64,
    pub segments_read: usize,
    pub segments_skipped: usize,
    /// Whether the content digest over the whole image was computed and matched the
    /// trailer and the catalog (only possible when every record was read).
    pub digest_checked: bool,
    #[serde(rename = "barcodes")]
    pub cartridges: Vec<String>,
    /// The content digest the image's header announced (its format major); `None` when
    /// no header was read (an image without records).
    #[serde(skip)]
    pub digest_scheme: Option<DigestScheme>,
}

/// Where a failure happened, for messages.
fn at(image: Uuid, barcode: &str, block: Option<u64>) -> String {
    match block {
        Some(b) => format!("image {image}, cartridge {barcode}, block {b}"),
        None => format!("image {image}, cartridge {barcode}"),
    }
}

fn open_err(e: OpenError, image: Uuid, barcode: &str, block: Option<u64>) -> Error {
    match e {
        OpenError::MissingKey(fp) => Error::Key(format!(
            "{}: the record is encrypted with key {fp}, which is not unlocked: import it (`tapevault key import FILE`) and give its passphrase",
            at(image, barcode, block)
        )),
        other => Error::Integrity(format!(
            "{}: corrupt record: {other}",
            at(image, barcode, block)
        )),
    }
}

/// The key fingerprint every record of `image` must carry (None: clear image).
fn expected_key(image: &ImageRow) -> Result<Option<[u8; 16]>> {
    match &image.key_fingerprint {
        None => Ok(None),
        Some(hex) => crate::backup::fp_bytes(hex).map(Some).ok_or_else(|| {
            Error::Failed(format!(
                "image {} has a malformed key fingerprint {hex:?} in the catalog",
                image.uuid
            ))
        }),
    }
}

/// A record must be protected as its image is: an encrypted image's records are all
/// encrypted under the image's key (a clear record, CRC-valid, is not authenticated).
fn check_record_key(
    rec: &tape_formats::DataRecord<'_>,
    expected: Option<[u8; 16]>,
    image: Uuid,
    barcode: &str,
    block: Option<u64>,
) -> Result<()> {
    let found = rec.fields.crypto.key_fingerprint();
    if found != expected {
        let name = |k: Option<[u8; 16]>| match k {
            Some(k) => format!("key {}", to_hex(&k)),
            None => "no encryption".to_string(),
        };
        return Err(Error::Integrity(format!(
            "{}: the record carries {}, the image is written with {}: it was not written by this image's backup",
            at(image, barcode, block),
            name(found),
            name(expected)
        )));
    }
    Ok(())
}

/// A stream problem's text without its leading "block N: " (N counts within the tape
/// file); callers name the absolute block themselves.
pub(crate) fn problem_text(p: &tape_formats::StreamProblem) -> String {
    let t = p.to_string();
    if let Some(rest) = t.strip_prefix("block ") {
        if let Some((n, msg)) = rest.split_once(": ") {
            if n.bytes().all(|b| b.is_ascii_digit()) {
                return msg.to_string();
            }
        }
    }
    t
}

/// Group an image's segments by part, in part order; check they are self-consistent.
fn parts_of(image: &ImageRow, segs: &[Segment]) -> Result<Vec<Vec<Segment>>> {
    let mut parts: Vec<Vec<Segment>> = Vec::new();
    for s in segs {
        if s.last_block - s.first_block != s.last_seq - s.first_seq {
            return Err(Error::Failed(format!(
                "catalog segment of image {} on {} (blocks {}..={}, records {}..={}) is inconsistent: run `tapevault catalog check`",
                image.uuid, s.barcode, s.first_block, s.last_block, s.first_seq, s.last_seq
            )));
        }
        match parts.last_mut() {
            Some(p) if p[0].part == s.part => {
                if p[0].barcode != s.barcode || p[0].tape_file != s.tape_file {
                    return Err(Error::Failed(format!(
                        "catalog segments of image {} part {} name two places ({} file {} and {} file {}): run `tapevault catalog check`",
                        image.uuid, s.part, p[0].barcode, p[0].tape_file, s.barcode, s.tape_file
                    )));
                }
                p.push(s.clone());
            }
            _ => parts.push(vec![s.clone()]),
        }
    }
    Ok(parts)
}

/// Read an image. `needed` says which segments must be read (restore: those holding
/// data the image supplies); when all are needed, every part is read whole from its
/// header to its trailer with the format's stream checks ([`PartChecker`],
/// [`PartJoiner`]) and the content digest is compared with the final trailer and the
/// catalog. Otherwise each needed segment is located and its records checked one by
/// one (CRCs, authentication, image, part, sequence). `on_data` receives every data
/// extent's authenticated plain bytes. Any problem is an error: Integrity (exit 3)
/// naming image, cartridge and block; Key (exit 5) for a missing key.
pub fn read_image(
    reader: &mut MediaReader<'_>,
    keys: &KeyRing,
    opener: &mut Opener,
    image: &ImageRow,
    segments: &[Segment],
    needed: &dyn Fn(&Segment) -> bool,
    on_data: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<ImageRead> {
    let wanted: Vec<bool> = segments.iter().map(needed).collect();
    if wanted.iter().all(|&w| w) {
        return read_image_records(
            reader,
            keys,
            opener,
            image,
            segments,
            &mut |_, ext, plain| deliver(ext, plain, on_data),
            &mut |_| Ok(()),
        );
    }
    let parts = parts_of(image, segments)?;
    let key = expected_key(image)?;
    let mut out = ImageRead {
        image: image.uuid,
        records_read: 0,
        records_skipped: 0,
        segments_read: 0,
        segments_skipped: 0,
        digest_checked: false,
        cartridges: Vec::new(),
        digest_scheme: None,
    };
    let mut plain = Vec::new();
    // Header block of each part's tape file (for drives that space instead of locating).
    let file_starts: HashMap<u32, u64> = parts
        .iter()
        .map(|p| (p[0].part, p[0].first_block.saturating_sub(1)))
        .collect();
    for (idx, s) in segments.iter().enumerate() {
        let file_start = file_starts[&s.part];
        {
            if !wanted[idx] {
                out.segments_skipped += 1;
                out.records_skipped += s.last_seq - s.first_seq + 1;
                continue;
            }
            if !out.cartridges.contains(&s.barcode) {
                out.cartridges.push(s.barcode.clone());
            }
            reader.seek(&s.barcode, s.tape_file, file_start, s.first_block)?;
            for (i, seq) in (s.first_seq..=s.last_seq).enumerate() {
                let block = s.first_block + i as u64;
                let (_, st) = reader
                    .read()
                    .with_context(|| at(image.uuid, &s.barcode, Some(block)))?;
                let n = match st {
                    ReadStatus::Block(n) => n,
                    other => {
                        return Err(Error::Integrity(format!(
                            "{}: expected data record {seq}, found {}",
                            at(image.uuid, &s.barcode, Some(block)),
                            if other == ReadStatus::Filemark {
                                "a filemark"
                            } else {
                                "end of data"
                            }
                        )))
                    }
                };
                let rec = match decode_block(reader.block(n)) {
                    Ok(Block::Data(r)) => r,
                    Ok(other) => {
                        return Err(Error::Integrity(format!(
                            "{}: expected data record {seq}, found a {}",
                            at(image.uuid, &s.barcode, Some(block)),
                            other.kind_name()
                        )))
                    }
                    Err(e) => {
                        return Err(Error::Integrity(format!(
                            "{}: corrupt record: {e}",
                            at(image.uuid, &s.barcode, Some(block))
                        )))
                    }
                };
                let f = &rec.fields;
                if f.image_uuid != *image.uuid.as_bytes() || f.part != s.part || f.sequence != seq {
                    return Err(Error::Integrity(format!(
                        "{}: expected record {seq} of part {} of this image, found record {} of part {} of image {}",
                        at(image.uuid, &s.barcode, Some(block)),
                        s.part,
                        f.sequence,
                        f.part,
                        Uuid::from_bytes(f.image_uuid)
                    )));
                }
                check_record_key(&rec, key, image.uuid, &s.barcode, Some(block))?;
                opener
                    .open_data(keys, &rec, &mut plain)
                    .map_err(|e| open_err(e, image.uuid, &s.barcode, Some(block)))?;
                deliver(&rec.extents, &plain, on_data)?;
                out.records_read += 1;
            }
            out.segments_read += 1;
        }
    }
    Ok(out)
}

/// Read an image whole, every part from its header to its trailer, with the format's
/// stream checks ([`PartChecker`], [`PartJoiner`]), and check its content digest
/// against the final trailer and the catalog. `on_record` receives each data record as
/// it was read (the raw block), its extents and its authenticated plain bytes, in
/// sequence order; a caller that acts on them (a copy) must wait for `Ok` before it
/// trusts the whole, as the digest is checked at the end. Errors as [`read_image`].
pub fn read_image_records(
    reader: &mut MediaReader<'_>,
    keys: &KeyRing,
    opener: &mut Opener,
    image: &ImageRow,
    segments: &[Segment],
    on_record: &mut OnRecord<'_>,
    on_scheme: &mut OnScheme<'_>,
) -> Result<ImageRead> {
    let parts = parts_of(image, segments)?;
    let key = expected_key(image)?;
    let mut out = ImageRead {
        image: image.uuid,
        records_read: 0,
        records_skipped: 0,
        segments_read: 0,
        segments_skipped: 0,
        digest_checked: false,
        cartridges: Vec::new(),
        digest_scheme: None,
    };
    let mut plain = Vec::new();
    {
        // An encrypted image's content digest is keyed: reading it whole needs the
        // image's key (as decrypting its records does).
        let digest_key = keys.digest_key_of(key.as_ref()).map_err(|fp| {
            Error::Key(format!(
                "image {} is encrypted with key {fp}, which is not available: import it with `tapevault key import FILE`",
                image.uuid
            ))
        })?;
        if segments.is_empty() {
            // An image without records (an incremental with no changes): nothing on
            // tape to read; its digest is that of no records (the same in both schemes).
            let empty =
                to_hex(&ContentDigest::with_key(DigestScheme::NEWEST, digest_key).finalize());
            out.digest_checked = image.content_digest.as_deref() == Some(empty.as_str());
            return Ok(out);
        }
        let mut joiner = PartJoiner::new();
        // Of the scheme the first header names.
        let mut digest: Option<ContentDigest> = None;
        for part in &parts {
            let first = &part[0];
            if !out.cartridges.contains(&first.barcode) {
                out.cartridges.push(first.barcode.clone());
            }
            let header_block = first.first_block.checked_sub(1).ok_or_else(|| {
                Error::Failed(format!(
                    "catalog segment of image {} starts at block 0: run `tapevault catalog check`",
                    image.uuid
                ))
            })?;
            reader.seek(&first.barcode, first.tape_file, header_block, header_block)?;
            read_part_whole(
                reader,
                keys,
                opener,
                image,
                first,
                &mut joiner,
                &mut ContentCheck {
                    key: digest_key,
                    digest: &mut digest,
                },
                &mut plain,
                &mut out,
                on_record,
                on_scheme,
            )?;
            out.segments_read += part.len();
        }
        let bc = parts
            .last()
            .map(|p| p[0].barcode.clone())
            .unwrap_or_default();
        let last = joiner
            .finish()
            .map_err(|e| Error::Integrity(format!("{}: {e}", at(image.uuid, &bc, None))))?;
        let got = digest
            .as_ref()
            .map(ContentDigest::finalize)
            .ok_or_else(|| {
                Error::Integrity(format!(
                    "{}: no image header was read",
                    at(image.uuid, &bc, None)
                ))
            })?;
        if got != last.digest {
            return Err(Error::Integrity(format!(
                "{}: content digest of the records read ({}) differs from the trailer's ({})",
                at(image.uuid, &bc, None),
                to_hex(&got),
                to_hex(&last.digest)
            )));
        }
        match image.content_digest.as_deref() {
            Some(d) if d.eq_ignore_ascii_case(&to_hex(&got)) => {}
            Some(d) => {
                return Err(Error::Integrity(format!(
                    "image {}: content digest on tape ({}) differs from the catalog's ({d})",
                    image.uuid,
                    to_hex(&got)
                )))
            }
            None => {
                return Err(Error::Failed(format!(
                    "image {} has no content digest in the catalog",
                    image.uuid
                )))
            }
        }
        if image.records != 0 && out.records_read != image.records {
            return Err(Error::Integrity(format!(
                "image {}: {} records on tape, the catalog says {}",
                image.uuid, out.records_read, image.records
            )));
        }
        out.digest_checked = true;
        Ok(out)
    }
}

/// Hand a record's data extents to `on_data` (zero extents carry no bytes).
fn deliver(
    extents: &[tape_formats::Extent],
    plain: &[u8],
    on_data: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut rest = plain;
    for e in extents {
        if e.kind == ExtentKind::Data {
            let n = e.length as usize;
            if n > rest.len() {
                return Err(Error::Integrity(
                    "record data shorter than its extents".into(),
                ));
            }
            let (this, tail) = rest.split_at(n);
            on_data(e.offset, this)?;
            rest = tail;
        }
    }
    Ok(())
}

/// The content digest of an image being read whole: started, of the scheme its first
/// header names, when that header is read.
struct ContentCheck<'a, 'k> {
    key: Option<&'k [u8; 32]>,
    digest: &'a mut Option<ContentDigest>,
}

/// Read one image part whole (the reader is at its header): header, every record,
/// trailer, filemark.
#[allow(clippy::too_many_arguments)]
fn read_part_whole(
    reader: &mut MediaReader<'_>,
    keys: &KeyRing,
    opener: &mut Opener,
    image: &ImageRow,
    first: &Segment,
    joiner: &mut PartJoiner,
    check: &mut ContentCheck<'_, '_>,
    plain: &mut Vec<u8>,
    out: &mut ImageRead,
    on_record: &mut OnRecord<'_>,
    on_scheme: &mut OnScheme<'_>,
) -> Result<()> {
    let bc = first.barcode.clone();
    let header_block = first.first_block - 1;
    let mut checker = PartChecker::new();
    let mut header: Option<ImageHeader> = None;
    let mut rel = 0u64;
    loop {
        let block = header_block + rel;
        let (_, st) = reader
            .read()
            .with_context(|| at(image.uuid, &bc, Some(block)))?;
        let n = match st {
            ReadStatus::Block(n) => n,
            ReadStatus::Filemark | ReadStatus::EndOfData => {
                if let Some(p) = checker.end(rel) {
                    return Err(Error::Integrity(format!(
                        "{}: part {} is truncated: {}",
                        at(image.uuid, &bc, Some(block)),
                        first.part,
                        problem_text(&p)
                    )));
                }
                return Ok(());
            }
        };
        let raw = reader.block(n);
        let decoded = decode_block(raw);
        let verdict = checker.check(rel, decoded.as_ref());
        if let Some(p) = verdict.problem {
            return Err(Error::Integrity(format!(
                "{}: {}",
                at(image.uuid, &bc, Some(block)),
                problem_text(&p)
            )));
        }
        match decoded {
            Ok(Block::ImageHeader(h)) => {
                if h.image_uuid != *image.uuid.as_bytes() || h.part != first.part {
                    return Err(Error::Integrity(format!(
                        "{}: expected the header of part {} of this image, found part {} of image {}",
                        at(image.uuid, &bc, Some(block)),
                        first.part,
                        h.part,
                        Uuid::from_bytes(h.image_uuid)
                    )));
                }
                if h.cipher.key_fingerprint() != expected_key(image)? {
                    return Err(Error::Integrity(format!(
                        "{}: the image header's encryption differs from the catalog's key for this image",
                        at(image.uuid, &bc, Some(block))
                    )));
                }
                if check.digest.is_none() {
                    *check.digest = Some(ContentDigest::with_key(h.digest_scheme, check.key));
                    out.digest_scheme = Some(h.digest_scheme);
                    on_scheme(h.digest_scheme)?;
                }
                header = Some(h);
            }
            Ok(Block::Data(rec)) => {
                check_record_key(&rec, expected_key(image)?, image.uuid, &bc, Some(block))?;
                opener
                    .open_data(keys, &rec, plain)
                    .map_err(|e| open_err(e, image.uuid, &bc, Some(block)))?;
                let digest = check
                    .digest
                    .as_mut()
                    .expect("checker accepted a header first");
                digest.update_record(&rec.extents, plain).map_err(|e| {
                    Error::Integrity(format!("{}: {e}", at(image.uuid, &bc, Some(block))))
                })?;
                on_record(raw, &rec.extents, plain)?;
                out.records_read += 1;
            }
            Ok(Block::ImageTrailer(t)) => {
                let h = header.as_ref().expect("checker accepted a header first");
                joiner.accept(h, &t).map_err(|e| {
                    Error::Integrity(format!("{}: {e}", at(image.uuid, &bc, Some(block))))
                })?;
                if t.status == TrailerStatus::Aborted {
                    return Err(Error::Integrity(format!(
                        "{}: the writer aborted this image",
                        at(image.uuid, &bc, Some(block))
                    )));
                }
                let digest = check
                    .digest
                    .as_ref()
                    .expect("checker accepted a header first");
                if digest.finalize() != t.digest {
                    return Err(Error::Integrity(format!(
                        "{}: content digest through part {} differs from its trailer's",
                        at(image.uuid, &bc, Some(block)),
                        t.part
                    )));
                }
            }
            _ => {
                return Err(Error::Integrity(format!(
                    "{}: unexpected block",
                    at(image.uuid, &bc, Some(block))
                )))
            }
        }
        rel += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_problem_text_drops_the_in_file_position() {
        let p = tape_formats::StreamProblem::DuplicateRecord {
            position: 7,
            sequence: 3,
        };
        assert_eq!(problem_text(&p), "record 3 is a duplicate");
    }
}
