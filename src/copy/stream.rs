//! The reading half of a tape-to-tape job, reusable by any job that rebuilds an image
//! from records on tape: an image is read whole (every record checked, the content
//! digest against trailer and catalog) and its records handed on, in order, as
//! (extents, plain bytes), either
//!
//! * **streaming** from a drive of its own on a reader thread, through a bounded
//!   channel ([`CHANNEL_DEPTH`] records, buffers recycled), while the writer uses
//!   another drive; or
//! * **from a spool file** ([`super::spool`]) written before, when one drive must
//!   read and then write.
//!
//! Either way the consumer ([`RecordFeed::fill`]) also computes the content digest of
//! what it hands on under the source's key, and [`RecordFeed::finish`] checks it
//! against the catalog's: what was written is exactly what was verified.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use tape_formats::{decode_block, Block, ContentDigest, DigestScheme, Extent};

use crate::catalog::{ImageRow, Segment};
use crate::codec::{KeyRing, Opener};
use crate::crypto::to_hex;
use crate::error::{Error, Result};
use crate::restore::{read_image_records, ImageRead, MediaReader};
use tape_devices::changer::TapeLibrary;

use super::spool::{Overflow, Spool, SpoolFile, SpoolReader, SpoolWriter};

/// Records in flight between the reader thread and the writer's pipeline.
pub const CHANNEL_DEPTH: usize = crate::backup::PIPELINE_DEPTH * 2;

/// An image to read: the row read (an original or a copy of it), its segments, and
/// where the catalog last saw each cartridge (for messages).
#[derive(Clone)]
pub struct SourceImage {
    pub image: ImageRow,
    pub segments: Vec<Segment>,
    pub locations: HashMap<String, String>,
}

pub enum Msg {
    /// Sent once, before the first record: the content digest the source image's
    /// header names (a copy keeps its original's).
    Scheme(DigestScheme),
    Record(Vec<Extent>, Vec<u8>),
    End,
}

/// Read `src` whole from `lib` and send its records to `tx`; `End` only when every
/// check passed. Buffers come back through `free`.
pub fn read_to_channel(
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    src: &SourceImage,
    tx: SyncSender<Msg>,
    free: Receiver<(Vec<Extent>, Vec<u8>)>,
) -> Result<ImageRead> {
    let mut reader = MediaReader::new(lib, src.locations.clone());
    let mut opener = Opener::new()?;
    let r = read_image_records(
        &mut reader,
        keys,
        &mut opener,
        &src.image,
        &src.segments,
        &mut |_, ext, plain| {
            let (mut e, mut d) = free.try_recv().unwrap_or_default();
            e.clear();
            e.extend_from_slice(ext);
            d.clear();
            d.extend_from_slice(plain);
            tx.send(Msg::Record(e, d))
                .map_err(|_| Error::Failed("the copy's writer stopped".into()))
        },
        &mut |scheme| {
            tx.send(Msg::Scheme(scheme))
                .map_err(|_| Error::Failed("the copy's writer stopped".into()))
        },
    );
    let released = reader.release();
    let read = r?;
    released?;
    tx.send(Msg::End)
        .map_err(|_| Error::Failed("the copy's writer stopped".into()))?;
    Ok(read)
}

/// Read `src` whole from `lib` into a spool file of at most `budget` bytes.
/// `Ok(Err(Overflow))` when it does not fit (the partial file is removed).
pub fn read_to_spool(
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    src: &SourceImage,
    spool: &Spool,
    budget: u64,
) -> Result<std::result::Result<(SpoolFile, ImageRead), Overflow>> {
    let mut w = SpoolWriter::create(spool, src.image.uuid, budget)?;
    let mut reader = MediaReader::new(lib, src.locations.clone());
    let mut opener = Opener::new()?;
    let mut overflow = false;
    let r = read_image_records(
        &mut reader,
        keys,
        &mut opener,
        &src.image,
        &src.segments,
        &mut |raw, _, _| {
            if w.push(raw)?.is_err() {
                overflow = true;
                return Err(Error::Failed("spool budget".into()));
            }
            Ok(())
        },
        &mut |_| Ok(()),
    );
    let released = reader.release();
    if overflow {
        released?;
        return Ok(Err(Overflow));
    }
    let read = r?;
    released?;
    Ok(Ok((w.finish()?, read)))
}

/// Where a feed's records come from.
pub enum FeedFrom {
    Channel {
        rx: Receiver<Msg>,
        free: SyncSender<(Vec<Extent>, Vec<u8>)>,
    },
    Spool {
        _file: SpoolFile,
        reader: SpoolReader,
        opener: Opener,
        block: Vec<u8>,
    },
}

/// The records of one source image as the writer's pipeline takes them.
pub struct RecordFeed<'k> {
    from: FeedFrom,
    keys: &'k KeyRing,
    image: ImageRow,
    /// The digest of what is handed on under the source's key; None when the writer's
    /// own digest of the copy is checked against the source's instead
    /// ([`RecordFeed::writer_digest_suffices`]).
    digest: Option<ContentDigest>,
    /// The source's content digest scheme.
    scheme: DigestScheme,
    /// Largest plain bytes a record may carry on the target drive.
    max_plain: usize,
    pub records: u64,
    ended: bool,
}

impl<'k> RecordFeed<'k> {
    /// A feed of `image`'s records from a reader thread (`channel()` gives the pair).
    pub fn from_channel(
        keys: &'k KeyRing,
        image: &ImageRow,
        rx: Receiver<Msg>,
        free: SyncSender<(Vec<Extent>, Vec<u8>)>,
        max_plain: usize,
    ) -> Result<Self> {
        // The reader names the source's content digest when it has read its first
        // header, before any record; an image without records has no header to read
        // (its digest is the same in both schemes).
        let (scheme, ended) = match rx.recv() {
            Ok(Msg::Scheme(s)) => (s, false),
            Ok(Msg::End) => (DigestScheme::NEWEST, true),
            Ok(Msg::Record(..)) => {
                return Err(Error::Integrity(format!(
                    "image {}: a record came before the image header",
                    image.uuid
                )))
            }
            Err(_) => {
                return Err(Error::Failed(format!(
                    "reading image {} stopped before its header",
                    image.uuid
                )))
            }
        };
        let mut feed = Self::new(
            keys,
            image,
            scheme,
            FeedFrom::Channel { rx, free },
            max_plain,
        )?;
        feed.ended = ended;
        Ok(feed)
    }

    /// A feed of `image`'s records from its spool file; `read` is what reading it into
    /// the spool found.
    pub fn from_spool(
        keys: &'k KeyRing,
        image: &ImageRow,
        file: SpoolFile,
        read: &ImageRead,
        max_plain: usize,
    ) -> Result<Self> {
        let reader = file.reader()?;
        Self::new(
            keys,
            image,
            read.digest_scheme.unwrap_or(DigestScheme::NEWEST),
            FeedFrom::Spool {
                _file: file,
                reader,
                opener: Opener::new()?,
                block: Vec::new(),
            },
            max_plain,
        )
    }

    fn new(
        keys: &'k KeyRing,
        image: &ImageRow,
        scheme: DigestScheme,
        from: FeedFrom,
        max_plain: usize,
    ) -> Result<Self> {
        let fp = match &image.key_fingerprint {
            Some(h) => Some(crate::backup::fp_bytes(h).ok_or_else(|| {
                Error::Failed(format!(
                    "image {} has a malformed key fingerprint",
                    image.uuid
                ))
            })?),
            None => None,
        };
        let dk = keys.digest_key_of(fp.as_ref()).map_err(|fp| {
            Error::Key(format!(
                "image {} is encrypted with key {fp}, which is not unlocked",
                image.uuid
            ))
        })?;
        Ok(RecordFeed {
            from,
            keys,
            image: image.clone(),
            digest: Some(ContentDigest::with_key(scheme, dk)),
            scheme,
            max_plain,
            records: 0,
            ended: false,
        })
    }

    /// The content digest of the source image (its header's format major): a copy
    /// is written with the same.
    pub fn scheme(&self) -> DigestScheme {
        self.scheme
    }

    /// Fill the next record's extents and plain bytes; false at the end.
    pub fn fill(&mut self, extents: &mut Vec<Extent>, data: &mut Vec<u8>) -> Result<bool> {
        if self.ended {
            return Ok(false);
        }
        match &mut self.from {
            FeedFrom::Channel { rx, free } => match rx.recv() {
                Ok(Msg::Record(mut e, mut d)) => {
                    std::mem::swap(extents, &mut e);
                    std::mem::swap(data, &mut d);
                    let _ = free.try_send((e, d));
                }
                Ok(Msg::End) => {
                    self.ended = true;
                    return Ok(false);
                }
                Ok(Msg::Scheme(_)) => {
                    return Err(Error::Integrity(format!(
                        "image {}: a second image header where a record belongs",
                        self.image.uuid
                    )))
                }
                Err(_) => {
                    return Err(Error::Failed(format!(
                        "reading image {} stopped before its end",
                        self.image.uuid
                    )))
                }
            },
            FeedFrom::Spool {
                reader,
                opener,
                block,
                ..
            } => {
                if !reader.next(block)? {
                    self.ended = true;
                    return Ok(false);
                }
                let rec = match decode_block(block) {
                    Ok(Block::Data(r)) => r,
                    Ok(other) => {
                        return Err(Error::Integrity(format!(
                            "spool of image {}: a {} where a data record belongs",
                            self.image.uuid,
                            other.kind_name()
                        )))
                    }
                    Err(e) => {
                        return Err(Error::Integrity(format!(
                            "spool of image {}: corrupt record: {e}",
                            self.image.uuid
                        )))
                    }
                };
                if rec.fields.image_uuid != *self.image.uuid.as_bytes()
                    || rec.fields.sequence != self.records
                {
                    return Err(Error::Integrity(format!(
                        "spool of image {}: expected record {}, found record {} of image {}",
                        self.image.uuid,
                        self.records,
                        rec.fields.sequence,
                        uuid::Uuid::from_bytes(rec.fields.image_uuid)
                    )));
                }
                opener.open_data(self.keys, &rec, data).map_err(|e| {
                    Error::Integrity(format!(
                        "spool of image {}: record {}: {e}",
                        self.image.uuid, self.records
                    ))
                })?;
                extents.clear();
                extents.extend_from_slice(&rec.extents);
            }
        }
        if data.len() > self.max_plain {
            return Err(Error::Failed(format!(
                "record {} of image {} carries {} plain bytes, more than the target drive's blocks take ({}): copy with a drive that takes larger blocks",
                self.records,
                self.image.uuid,
                data.len(),
                self.max_plain
            )));
        }
        if let Some(d) = self.digest.as_mut() {
            d.update_record(extents, data)
                .map_err(|e| Error::Integrity(format!("image {}: {e}", self.image.uuid)))?;
        }
        self.records += 1;
        Ok(true)
    }

    /// The target writes under the same digest key as the source (the same key, or
    /// both clear): the digest the writer computes over the records it writes is then
    /// the source's content digest exactly when they are the source's bytes, and the
    /// caller compares the two before the copy counts. The feed's own pass over every
    /// byte would compute the same value again, so it is skipped; [`Self::finish`] still
    /// checks that the feed reached the image's end. Copies to a pool with another key
    /// keep the feed's digest (the writer's is keyed differently).
    pub fn writer_digest_suffices(&mut self) {
        self.digest = None;
    }

    /// After the last record: the digest of everything handed on must be the source
    /// image's content digest in the catalog (which its trailer was checked against).
    pub fn finish(&self) -> Result<()> {
        if !self.ended {
            return Err(Error::Failed(format!(
                "image {} was not read to its end",
                self.image.uuid
            )));
        }
        let Some(digest) = &self.digest else {
            return Ok(());
        };
        let got = to_hex(&digest.finalize());
        match self.image.content_digest.as_deref() {
            Some(d) if d.eq_ignore_ascii_case(&got) => Ok(()),
            other => Err(Error::Integrity(format!(
                "image {}: the records copied have content digest {got}, the catalog says {}",
                self.image.uuid,
                other.unwrap_or("nothing")
            ))),
        }
    }
}

/// A record's buffers, recycled between the reader and the feed.
pub type Buffers = (Vec<Extent>, Vec<u8>);
/// The reader thread's end of the channel: records out, buffers back.
pub type ReaderEnd = (SyncSender<Msg>, Receiver<Buffers>);
/// The feed's end: records in, buffers back.
pub type FeedEnd = (Receiver<Msg>, SyncSender<Buffers>);

/// The channel between a reader thread and a [`RecordFeed`].
pub fn channel() -> (ReaderEnd, FeedEnd) {
    let (tx, rx) = sync_channel(CHANNEL_DEPTH);
    let (free_tx, free_rx) = sync_channel(CHANNEL_DEPTH + 2);
    ((tx, free_rx), (rx, free_tx))
}
