//! Block-device-agnostic streaming: the [`BlockSink`] / [`BlockSource`] traits the drive
//! layer implements, an in-memory tape ([`MemTape`]), the [`ImageWriter`], the
//! [`PartChecker`] / [`ImageReader`] record-stream validators and the [`PartJoiner`].
use crate::*;
use thiserror::Error;

/// Outcome of a successful write: written, or written and the drive reported early
/// warning (the writer should close the part soon and continue on the next volume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    Written,
    WrittenEarlyWarning,
}

impl WriteStatus {
    pub fn is_early_warning(self) -> bool {
        self == WriteStatus::WrittenEarlyWarning
    }
}

/// Where blocks go (a tape drive, a file, a `Vec`). One call = one tape block.
pub trait BlockSink {
    type Error: std::error::Error + 'static;
    fn write_block(&mut self, block: &[u8]) -> Result<WriteStatus, Self::Error>;
    /// Write one block given as consecutive parts (a record's header and its payload
    /// held apart): exactly [`Self::write_block`] of their concatenation. The default
    /// joins them (a single part goes on as it is); a sink that can take parts
    /// overrides it.
    fn write_block_parts(&mut self, parts: &[&[u8]]) -> Result<WriteStatus, Self::Error> {
        match parts {
            [one] => self.write_block(one),
            _ => self.write_block(&parts.concat()),
        }
    }
    fn write_filemark(&mut self) -> Result<WriteStatus, Self::Error>;
}

impl<T: BlockSink + ?Sized> BlockSink for &mut T {
    type Error = T::Error;
    fn write_block(&mut self, block: &[u8]) -> Result<WriteStatus, Self::Error> {
        (**self).write_block(block)
    }
    fn write_block_parts(&mut self, parts: &[&[u8]]) -> Result<WriteStatus, Self::Error> {
        (**self).write_block_parts(parts)
    }
    fn write_filemark(&mut self) -> Result<WriteStatus, Self::Error> {
        (**self).write_filemark()
    }
}

/// What a read found: a block of n bytes (now in the buffer), a filemark, or end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    Block(usize),
    Filemark,
    EndOfData,
}

/// Where blocks come from. `read_block` reads the next block into `buf` and returns
/// `Block(n)`: the block is then `buf[..n]`. The source may grow `buf` (up to
/// [`MAX_BLOCK_SIZE`]) and may leave bytes beyond `n` in it, so a drive adapter can keep
/// one `MAX_BLOCK_SIZE` buffer and read into it without clearing it each time.
pub trait BlockSource {
    type Error: std::error::Error + 'static;
    fn read_block(&mut self, buf: &mut Vec<u8>) -> Result<ReadStatus, Self::Error>;
}

impl<T: BlockSource + ?Sized> BlockSource for &mut T {
    type Error = T::Error;
    fn read_block(&mut self, buf: &mut Vec<u8>) -> Result<ReadStatus, Self::Error> {
        (**self).read_block(buf)
    }
}

// ---------------------------------------------------------------- MemTape

/// One item on a [`MemTape`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapeItem {
    Block(Vec<u8>),
    Filemark,
}

/// An in-memory tape for tests and tools: a list of blocks and filemarks, an optional
/// early-warning threshold (in bytes written) and a read cursor.
#[derive(Debug, Clone, Default)]
pub struct MemTape {
    pub items: Vec<TapeItem>,
    /// Report early warning on every write once this many bytes have been written.
    pub early_warning_at: Option<u64>,
    pub bytes_written: u64,
    /// Read position (index into `items`).
    pub read_pos: usize,
}

/// Errors of [`MemTape`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MemTapeError {
    #[error("block of {len} bytes exceeds the maximum block size {max}")]
    BlockTooLarge { len: usize, max: usize },
}

impl MemTape {
    pub fn new() -> Self {
        Self::default()
    }
    fn status(&self) -> WriteStatus {
        match self.early_warning_at {
            Some(at) if self.bytes_written >= at => WriteStatus::WrittenEarlyWarning,
            _ => WriteStatus::Written,
        }
    }
}

impl BlockSink for MemTape {
    type Error = MemTapeError;
    fn write_block(&mut self, block: &[u8]) -> Result<WriteStatus, MemTapeError> {
        if block.len() > MAX_BLOCK_SIZE {
            return Err(MemTapeError::BlockTooLarge {
                len: block.len(),
                max: MAX_BLOCK_SIZE,
            });
        }
        self.items.push(TapeItem::Block(block.to_vec()));
        self.bytes_written += block.len() as u64;
        Ok(self.status())
    }
    fn write_filemark(&mut self) -> Result<WriteStatus, MemTapeError> {
        self.items.push(TapeItem::Filemark);
        Ok(self.status())
    }
}

impl BlockSource for MemTape {
    type Error = MemTapeError;
    fn read_block(&mut self, buf: &mut Vec<u8>) -> Result<ReadStatus, MemTapeError> {
        buf.clear();
        match self.items.get(self.read_pos) {
            None => Ok(ReadStatus::EndOfData),
            Some(item) => {
                self.read_pos += 1;
                match item {
                    TapeItem::Filemark => Ok(ReadStatus::Filemark),
                    TapeItem::Block(b) => {
                        buf.extend_from_slice(b);
                        Ok(ReadStatus::Block(b.len()))
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- ImageWriter

/// Errors of [`ImageWriter`].
#[derive(Debug, Error)]
pub enum WriterError<E: std::error::Error + 'static> {
    #[error("block sink failed: {0}")]
    Sink(#[source] E),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("record fields do not belong here: {reason} (expected image part {part}, sequence {sequence})")]
    WrongFields {
        reason: &'static str,
        part: u32,
        sequence: u64,
    },
}

/// Writes one image part: header block, numbered data records, trailer block and
/// filemark. The caller compresses and encrypts; the writer frames, numbers, counts and
/// surfaces early warning.
///
/// Encrypting callers: build the record's fields with [`ImageWriter::fields`], compute
/// the AAD with [`data_record_aad`], encrypt, put the tag into `fields.crypto`, then call
/// [`ImageWriter::write_record`].
#[derive(Debug)]
pub struct ImageWriter<S: BlockSink> {
    sink: S,
    header: ImageHeader,
    next_sequence: u64,
    records_in_part: u64,
    data_bytes: u64,
    zero_bytes: u64,
    stored_bytes: u64,
    early_warning: bool,
    buf: Vec<u8>,
}

impl<S: BlockSink> ImageWriter<S> {
    /// Write the image header block and return the writer. For part n > 0 pass
    /// [`ImageHeader::next_part`] of the previous part's header.
    pub fn start(mut sink: S, header: ImageHeader) -> Result<Self, WriterError<S::Error>> {
        let mut buf = Vec::with_capacity(MAX_BLOCK_SIZE);
        header.encode(&mut buf)?;
        let st = sink.write_block(&buf).map_err(WriterError::Sink)?;
        Ok(ImageWriter {
            sink,
            next_sequence: header.first_sequence,
            header,
            records_in_part: 0,
            data_bytes: 0,
            zero_bytes: 0,
            stored_bytes: 0,
            early_warning: st.is_early_warning(),
            buf,
        })
    }

    pub fn header(&self) -> &ImageHeader {
        &self.header
    }
    /// Sequence number the next record must carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }
    /// True once the sink reported early warning: finish this part as
    /// [`TrailerStatus::Continued`] and go on with the next volume.
    pub fn early_warning(&self) -> bool {
        self.early_warning
    }

    /// The sink, e.g. to check where the device is before deciding to write more.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// The fields of the next record (image UUID, part, sequence filled in).
    pub fn fields(
        &self,
        compression: Compression,
        crypto: RecordCrypto,
        plain_len: u32,
    ) -> DataFields {
        DataFields {
            image_uuid: self.header.image_uuid,
            part: self.header.part,
            sequence: self.next_sequence,
            compression,
            crypto,
            plain_len,
        }
    }

    /// Frame and write one data record. `fields` must come from [`Self::fields`] (image,
    /// part and sequence are checked); `stored` is the compressed (and encrypted) payload.
    pub fn write_record(
        &mut self,
        fields: &DataFields,
        extents: &[Extent],
        stored: &[u8],
    ) -> Result<WriteStatus, WriterError<S::Error>> {
        self.check_fields(fields)?;
        self.buf.clear();
        encode_data_record(fields, extents, stored, &mut self.buf)?;
        let st = self
            .sink
            .write_block(&self.buf)
            .map_err(WriterError::Sink)?;
        self.note_written(st, extents, stored.len());
        Ok(st)
    }

    /// As [`write_record`](Self::write_record) for a payload already in place:
    /// `block[data_header_len(extents.len())..]` is the stored payload and `payload_crc`
    /// its CRC-32; the header is framed into the front of `block` (see
    /// [`frame_data_record`]) and the block written as it is, without another copy.
    pub fn write_framed_record(
        &mut self,
        fields: &DataFields,
        extents: &[Extent],
        payload_crc: u32,
        block: &mut [u8],
    ) -> Result<WriteStatus, WriterError<S::Error>> {
        self.check_fields(fields)?;
        frame_data_record(fields, extents, payload_crc, block)?;
        let st = self.sink.write_block(block).map_err(WriterError::Sink)?;
        self.note_written(st, extents, block.len() - data_header_len(extents.len()));
        Ok(st)
    }

    /// As [`write_framed_record`](Self::write_framed_record) for a payload held apart
    /// from its header: `header` is exactly [`data_header_len`] of the extents long and
    /// gets the header framed into it; the block written is `header` then `payload`
    /// (whose CRC-32 is `payload_crc`), handed to the sink as two parts.
    pub fn write_framed_record_parts(
        &mut self,
        fields: &DataFields,
        extents: &[Extent],
        payload_crc: u32,
        header: &mut [u8],
        payload: &[u8],
    ) -> Result<WriteStatus, WriterError<S::Error>> {
        self.check_fields(fields)?;
        frame_data_header(fields, extents, payload.len(), payload_crc, header)?;
        let st = self
            .sink
            .write_block_parts(&[header, payload])
            .map_err(WriterError::Sink)?;
        self.note_written(st, extents, payload.len());
        Ok(st)
    }

    fn check_fields(&self, fields: &DataFields) -> Result<(), WriterError<S::Error>> {
        let wrong = |reason| WriterError::WrongFields {
            reason,
            part: self.header.part,
            sequence: self.next_sequence,
        };
        if fields.image_uuid != self.header.image_uuid {
            return Err(wrong("image UUID differs from the image header"));
        }
        if fields.part != self.header.part {
            return Err(wrong("part differs from the image header"));
        }
        if fields.sequence != self.next_sequence {
            return Err(wrong("sequence is not the next one"));
        }
        if fields.plain_len > self.header.record_data_size {
            return Err(wrong("plain length exceeds the image's record data size"));
        }
        Ok(())
    }

    fn note_written(&mut self, st: WriteStatus, extents: &[Extent], stored_len: usize) {
        self.early_warning |= st.is_early_warning();
        self.next_sequence += 1;
        self.records_in_part += 1;
        for e in extents {
            match e.kind {
                ExtentKind::Data => self.data_bytes += e.length,
                ExtentKind::Zero => self.zero_bytes += e.length,
            }
        }
        self.stored_bytes += stored_len as u64;
    }

    /// Write the trailer and a filemark. `digest` is the [`ContentDigest`] of the image's
    /// records so far. Returns the sink, the trailer written and the filemark's status.
    pub fn finish(
        mut self,
        status: TrailerStatus,
        digest: [u8; 32],
    ) -> Result<(S, ImageTrailer, WriteStatus), WriterError<S::Error>> {
        let trailer = ImageTrailer {
            image_uuid: self.header.image_uuid,
            part: self.header.part,
            status,
            records_in_part: self.records_in_part,
            records_in_image: self.next_sequence,
            data_bytes: self.data_bytes,
            zero_bytes: self.zero_bytes,
            stored_bytes: self.stored_bytes,
            digest,
            digest_scheme: self.header.digest_scheme,
        };
        self.buf.clear();
        trailer.encode(&mut self.buf)?;
        self.sink
            .write_block(&self.buf)
            .map_err(WriterError::Sink)?;
        let st = self.sink.write_filemark().map_err(WriterError::Sink)?;
        Ok((self.sink, trailer, st))
    }
}

// ---------------------------------------------------------------- validation

/// A problem in a record stream, located by block position within the tape file
/// (0 = the image header). Non-fatal: the reader reports it and goes on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StreamProblem {
    #[error("block {position}: corrupt: {source}")]
    Corrupt {
        position: u64,
        #[source]
        source: FormatError,
    },
    #[error("block {position}: expected an image header, found a {found}")]
    MissingHeader { position: u64, found: &'static str },
    #[error("block {position}: unexpected {found} inside an image part")]
    UnexpectedBlock { position: u64, found: &'static str },
    #[error("block {position}: record of another image {found:02x?} (expected {expected:02x?})")]
    ForeignRecord {
        position: u64,
        expected: [u8; 16],
        found: [u8; 16],
    },
    #[error("block {position}: record claims part {found}, this is part {expected}")]
    WrongPart {
        position: u64,
        expected: u32,
        found: u32,
    },
    #[error("block {position}: records {expected_sequence}..{found_sequence} are lost")]
    LostRecords {
        position: u64,
        expected_sequence: u64,
        found_sequence: u64,
    },
    #[error("block {position}: record {sequence} is a duplicate")]
    DuplicateRecord { position: u64, sequence: u64 },
    #[error("block {position}: record {sequence} is stale or out of order (expected {expected_sequence})")]
    ReorderedRecord {
        position: u64,
        sequence: u64,
        expected_sequence: u64,
    },
    #[error("block {position}: stream ends without an image trailer (next record would be {expected_sequence})")]
    Truncated {
        position: u64,
        expected_sequence: u64,
    },
    #[error("block {position}: trailer says {field} = {trailer}, the stream has {counted}")]
    TrailerMismatch {
        position: u64,
        field: &'static str,
        trailer: u64,
        counted: u64,
    },
    #[error("block {position}: {found} after the image trailer (expected a filemark)")]
    AfterTrailer { position: u64, found: &'static str },
    #[error("block {position}: the image trailer is format major {trailer_major}, its header major {header_major} (they name the content digest, so they must agree)")]
    DigestScheme {
        position: u64,
        header_major: u16,
        trailer_major: u16,
    },
}

/// What [`PartChecker::check`] decided about a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The block belongs to the image and should be used (restored/verified).
    pub accept: bool,
    /// A problem found at this block, if any (an accepted record can still carry one,
    /// e.g. the records before it were lost).
    pub problem: Option<StreamProblem>,
}

/// Pure state machine validating one image part's block stream: header first, data
/// records of that image and part with continuous sequence numbers, then a trailer whose
/// counts match. Feed it every block (or decode error) with its position.
#[derive(Debug, Clone, Default)]
pub struct PartChecker {
    header: Option<ImageHeader>,
    trailer: Option<ImageTrailer>,
    next_sequence: u64,
    last_sequence: Option<u64>,
    records: u64,
    data_bytes: u64,
    zero_bytes: u64,
    stored_bytes: u64,
}

impl PartChecker {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn header(&self) -> Option<&ImageHeader> {
        self.header.as_ref()
    }
    pub fn trailer(&self) -> Option<&ImageTrailer> {
        self.trailer.as_ref()
    }
    /// Records accepted so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Check one decoded block (or the error decoding it) at `position`.
    pub fn check(&mut self, position: u64, block: Result<&Block<'_>, &FormatError>) -> Verdict {
        let reject = |problem| Verdict {
            accept: false,
            problem: Some(problem),
        };
        let ok = Verdict {
            accept: true,
            problem: None,
        };
        let block = match block {
            Ok(b) => b,
            Err(e) => {
                return reject(StreamProblem::Corrupt {
                    position,
                    source: e.clone(),
                })
            }
        };
        if let Some(_t) = &self.trailer {
            return reject(StreamProblem::AfterTrailer {
                position,
                found: block.kind_name(),
            });
        }
        let Some(h) = &self.header else {
            return match block {
                Block::ImageHeader(h) => {
                    self.next_sequence = h.first_sequence;
                    self.header = Some(h.clone());
                    ok
                }
                other => reject(StreamProblem::MissingHeader {
                    position,
                    found: other.kind_name(),
                }),
            };
        };
        match block {
            Block::Data(r) => {
                let f = &r.fields;
                if f.image_uuid != h.image_uuid {
                    return reject(StreamProblem::ForeignRecord {
                        position,
                        expected: h.image_uuid,
                        found: f.image_uuid,
                    });
                }
                if f.part != h.part {
                    return reject(StreamProblem::WrongPart {
                        position,
                        expected: h.part,
                        found: f.part,
                    });
                }
                let mut problem = None;
                if f.sequence != self.next_sequence {
                    if Some(f.sequence) == self.last_sequence {
                        return reject(StreamProblem::DuplicateRecord {
                            position,
                            sequence: f.sequence,
                        });
                    }
                    if f.sequence < self.next_sequence {
                        return reject(StreamProblem::ReorderedRecord {
                            position,
                            sequence: f.sequence,
                            expected_sequence: self.next_sequence,
                        });
                    }
                    problem = Some(StreamProblem::LostRecords {
                        position,
                        expected_sequence: self.next_sequence,
                        found_sequence: f.sequence,
                    });
                }
                self.last_sequence = Some(f.sequence);
                self.next_sequence = f.sequence + 1;
                self.records += 1;
                for e in &r.extents {
                    match e.kind {
                        ExtentKind::Data => self.data_bytes += e.length,
                        ExtentKind::Zero => self.zero_bytes += e.length,
                    }
                }
                self.stored_bytes += r.payload.len() as u64;
                Verdict {
                    accept: true,
                    problem,
                }
            }
            Block::ImageTrailer(t) => {
                if t.image_uuid != h.image_uuid {
                    return reject(StreamProblem::ForeignRecord {
                        position,
                        expected: h.image_uuid,
                        found: t.image_uuid,
                    });
                }
                if t.part != h.part {
                    return reject(StreamProblem::WrongPart {
                        position,
                        expected: h.part,
                        found: t.part,
                    });
                }
                if t.digest_scheme != h.digest_scheme {
                    return reject(StreamProblem::DigestScheme {
                        position,
                        header_major: h.digest_scheme.major(),
                        trailer_major: t.digest_scheme.major(),
                    });
                }
                self.trailer = Some(t.clone());
                let counted_in_image = self.next_sequence;
                let checks = [
                    ("records_in_image", t.records_in_image, counted_in_image),
                    ("records_in_part", t.records_in_part, self.records),
                    ("data_bytes", t.data_bytes, self.data_bytes),
                    ("zero_bytes", t.zero_bytes, self.zero_bytes),
                    ("stored_bytes", t.stored_bytes, self.stored_bytes),
                ];
                for (field, trailer, counted) in checks {
                    if trailer != counted {
                        return Verdict {
                            accept: true,
                            problem: Some(StreamProblem::TrailerMismatch {
                                position,
                                field,
                                trailer,
                                counted,
                            }),
                        };
                    }
                }
                ok
            }
            other => reject(StreamProblem::UnexpectedBlock {
                position,
                found: other.kind_name(),
            }),
        }
    }

    /// The tape file ended (filemark or end of data) at `position`.
    pub fn end(&mut self, position: u64) -> Option<StreamProblem> {
        if self.trailer.is_some() {
            None
        } else {
            Some(StreamProblem::Truncated {
                position,
                expected_sequence: self.next_sequence,
            })
        }
    }
}

/// An event from [`ImageReader::next_event`].
#[derive(Debug)]
pub enum ReadEvent<'a> {
    Header(ImageHeader),
    /// A data record of this image part; `problem` is set when records before it are lost.
    Record {
        position: u64,
        record: DataRecord<'a>,
        problem: Option<StreamProblem>,
    },
    Trailer {
        trailer: ImageTrailer,
        problem: Option<StreamProblem>,
    },
    /// A block that was skipped (corrupt, foreign, duplicate, ...).
    Problem(StreamProblem),
    /// The tape file ended (filemark or end of data); `problem` is set if it ended early.
    End {
        position: u64,
        filemark: bool,
        problem: Option<StreamProblem>,
    },
}

/// Reads one image part (one tape file) from a [`BlockSource`], validating it with a
/// [`PartChecker`]. Problems are events, not errors: the caller decides whether to go on.
/// Only a failing source is an `Err`.
#[derive(Debug)]
pub struct ImageReader<S: BlockSource> {
    source: S,
    buf: Vec<u8>,
    position: u64,
    checker: PartChecker,
    ended: bool,
}

impl<S: BlockSource> ImageReader<S> {
    /// Start reading at the first block of a tape file (the image header).
    pub fn new(source: S) -> Self {
        ImageReader {
            source,
            buf: Vec::with_capacity(MAX_BLOCK_SIZE),
            position: 0,
            checker: PartChecker::new(),
            ended: false,
        }
    }
    pub fn checker(&self) -> &PartChecker {
        &self.checker
    }
    pub fn into_source(self) -> S {
        self.source
    }

    /// The next event. After `End`, keeps returning `End`.
    pub fn next_event(&mut self) -> Result<ReadEvent<'_>, S::Error> {
        if self.ended {
            return Ok(ReadEvent::End {
                position: self.position,
                filemark: false,
                problem: None,
            });
        }
        let position = self.position;
        let n = match self.source.read_block(&mut self.buf)? {
            st @ (ReadStatus::Filemark | ReadStatus::EndOfData) => {
                self.ended = true;
                return Ok(ReadEvent::End {
                    position,
                    filemark: st == ReadStatus::Filemark,
                    problem: self.checker.end(position),
                });
            }
            ReadStatus::Block(n) => n,
        };
        self.position += 1;
        let block = self.buf.get(..n).unwrap_or(&self.buf[..]);
        let decoded = decode_block(block);
        let verdict = self.checker.check(position, decoded.as_ref());
        match (decoded, verdict) {
            (Ok(Block::ImageHeader(h)), Verdict { accept: true, .. }) => Ok(ReadEvent::Header(h)),
            (
                Ok(Block::Data(record)),
                Verdict {
                    accept: true,
                    problem,
                },
            ) => Ok(ReadEvent::Record {
                position,
                record,
                problem,
            }),
            (
                Ok(Block::ImageTrailer(trailer)),
                Verdict {
                    accept: true,
                    problem,
                },
            ) => Ok(ReadEvent::Trailer { trailer, problem }),
            (_, Verdict { problem, .. }) => Ok(ReadEvent::Problem(problem.unwrap_or(
                StreamProblem::UnexpectedBlock {
                    position,
                    found: "block",
                },
            ))),
        }
    }
}

// ---------------------------------------------------------------- PartJoiner

/// Why the parts of a spanned image do not join up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpanError {
    #[error("part {part} belongs to image {found:02x?}, not {expected:02x?}")]
    ForeignPart {
        part: u32,
        expected: [u8; 16],
        found: [u8; 16],
    },
    #[error("part {found} arrived but part {expected} was expected: parts {expected}..{found} are missing")]
    MissingPart { expected: u32, found: u32 },
    #[error("part {part} arrived twice")]
    DuplicatePart { part: u32 },
    #[error("part {found} is out of order (expected part {expected})")]
    OutOfOrderPart { expected: u32, found: u32 },
    #[error("part {part} starts at record {found_first}, but earlier parts end at record {expected_first}")]
    SequenceGap {
        part: u32,
        expected_first: u64,
        found_first: u64,
    },
    #[error("part {part} follows a part whose trailer says the image is {status:?}")]
    AfterLastPart { part: u32, status: TrailerStatus },
    #[error("part {part}: header and trailer disagree: {reason}")]
    HeaderTrailerMismatch { part: u32, reason: &'static str },
    #[error("part {part}: field {field} differs from part 0's header")]
    HeaderChanged { part: u32, field: &'static str },
    #[error(
        "image is incomplete: part {next_part} (on the next volume of the media set) is missing"
    )]
    Incomplete { next_part: u32 },
    #[error("image was aborted by its writer in part {part}")]
    Aborted { part: u32 },
    #[error("no part has been seen")]
    Empty,
}

/// Joins the parts of an image that spans volumes. Feed each part's header and trailer
/// in tape order; errors name the missing, duplicated or out-of-order part.
#[derive(Debug, Clone, Default)]
pub struct PartJoiner {
    first: Option<ImageHeader>,
    last: Option<ImageTrailer>,
}

impl PartJoiner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn accept(
        &mut self,
        header: &ImageHeader,
        trailer: &ImageTrailer,
    ) -> Result<(), SpanError> {
        let part = header.part;
        if trailer.image_uuid != header.image_uuid || trailer.part != header.part {
            return Err(SpanError::HeaderTrailerMismatch {
                part,
                reason: "image UUID or part differ",
            });
        }
        if trailer.digest_scheme != header.digest_scheme {
            return Err(SpanError::HeaderTrailerMismatch {
                part,
                reason: "format majors (which name the content digest) differ",
            });
        }
        if trailer
            .records_in_image
            .checked_sub(trailer.records_in_part)
            != Some(header.first_sequence)
        {
            return Err(SpanError::HeaderTrailerMismatch {
                part,
                reason: "records_in_image - records_in_part != first_sequence",
            });
        }
        let (expected_part, expected_first) = match (&self.first, &self.last) {
            (Some(first), Some(last)) => {
                if header.image_uuid != first.image_uuid {
                    return Err(SpanError::ForeignPart {
                        part,
                        expected: first.image_uuid,
                        found: header.image_uuid,
                    });
                }
                if last.status != TrailerStatus::Continued {
                    return Err(SpanError::AfterLastPart {
                        part,
                        status: last.status,
                    });
                }
                let same = [
                    ("disk_uuid", header.disk_uuid == first.disk_uuid),
                    ("session_uuid", header.session_uuid == first.session_uuid),
                    ("kind", header.kind == first.kind),
                    (
                        "parent_image_uuid",
                        header.parent_image_uuid == first.parent_image_uuid,
                    ),
                    ("disk_size", header.disk_size == first.disk_size),
                    ("change_id", header.change_id == first.change_id),
                    ("cipher", header.cipher == first.cipher),
                    ("digest_scheme", header.digest_scheme == first.digest_scheme),
                ];
                for (field, eq) in same {
                    if !eq {
                        return Err(SpanError::HeaderChanged { part, field });
                    }
                }
                (last.part.saturating_add(1), last.records_in_image)
            }
            _ => (0, 0),
        };
        if part != expected_part {
            return Err(if part > expected_part {
                SpanError::MissingPart {
                    expected: expected_part,
                    found: part,
                }
            } else if Some(part) == self.last.as_ref().map(|l| l.part) {
                SpanError::DuplicatePart { part }
            } else {
                SpanError::OutOfOrderPart {
                    expected: expected_part,
                    found: part,
                }
            });
        }
        if header.first_sequence != expected_first {
            return Err(SpanError::SequenceGap {
                part,
                expected_first,
                found_first: header.first_sequence,
            });
        }
        if self.first.is_none() {
            self.first = Some(header.clone());
        }
        self.last = Some(trailer.clone());
        Ok(())
    }

    /// True when the last accepted part completed the image.
    pub fn is_complete(&self) -> bool {
        matches!(&self.last, Some(t) if t.status == TrailerStatus::Complete)
    }

    /// The final trailer if the image is complete, else why not.
    pub fn finish(&self) -> Result<&ImageTrailer, SpanError> {
        match &self.last {
            None => Err(SpanError::Empty),
            Some(t) => match t.status {
                TrailerStatus::Complete => Ok(t),
                TrailerStatus::Continued => Err(SpanError::Incomplete {
                    next_part: t.part.saturating_add(1),
                }),
                TrailerStatus::Aborted => Err(SpanError::Aborted { part: t.part }),
            },
        }
    }
}
