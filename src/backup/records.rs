//! The writer stage: one prepared record framed and written to the current part,
//! resealed with a fresh nonce when it lands in another part than it was sealed for;
//! opening a part, and spanning to the next cartridge at early warning.

use tape_formats::DataFields;

use tape_formats::{Compression as WireCompression, ImageWriter, RecordCrypto, TrailerStatus};
use uuid::Uuid;

use crate::catalog::MediaState;
use crate::codec::Sealer;
use crate::error::{Context, Result};

use super::*;
use crate::events::NoteKind;

impl Job<'_> {
    /// Open a new image part on the current (or next) cartridge.
    pub(super) fn start_part(&mut self, st: &mut ImageProgress) -> Result<()> {
        let (sink, barcode, file) = self.tape.take_sink()?;
        let header_block = sink.block;
        st.barcode = barcode.clone();
        st.tape_file = file;
        st.next_block = header_block + 1;
        if !st.cartridges.contains(&barcode) {
            st.cartridges.push(barcode.clone());
        }
        let w = ImageWriter::start(sink, st.header.clone())
            .map_err(sink_err)
            .with_context(|| {
                format!(
                    "writing the header of image {} part {} on {barcode}",
                    Uuid::from_bytes(st.header.image_uuid),
                    st.header.part
                )
            })?;
        st.writer = Some(w);
        Ok(())
    }

    pub(super) fn write_record(
        &mut self,
        st: &mut ImageProgress,
        p: &mut Prepared,
        sealer: Option<&Sealer>,
    ) -> Result<()> {
        // Early warning seen: close this part as continued and go on with the next
        // cartridge of the media set.
        if st
            .writer
            .as_ref()
            .map(|w| w.early_warning())
            .unwrap_or(false)
            && st.records > 0
        {
            self.span(st)?;
        }
        match self.try_write_record(st, p, sealer)? {
            Written::Yes => Ok(()),
            // The record does not fit before the cartridge's end although no early
            // warning came: the early-warning zone is smaller than one record (a small
            // virtual cartridge, whose zone the library clamps to an eighth of its
            // capacity). Nothing of the record was written; the part ends here with its
            // trailer (a few hundred bytes, which fit where the record did not) and the
            // record goes to the next cartridge, as at early warning.
            Written::EndOfMedium => {
                self.tape.events.note(
                    NoteKind::Media,
                    format!(
                        "cartridge {} has no room for record {} of image {} ({} bytes) and gave no early warning before (its early-warning zone is smaller than one record); spanning to the next cartridge",
                        st.barcode,
                        st.records,
                        Uuid::from_bytes(st.header.image_uuid),
                        p.block_len()
                    ),
                );
                self.span(st)?;
                match self.try_write_record(st, p, sealer)? {
                    Written::Yes => Ok(()),
                    Written::EndOfMedium => Err(Error::Drive(DriveError::EndOfMedium))
                        .with_context(|| {
                            format!(
                                "writing record {} of image {} ({} bytes) right after the header on cartridge {}: a record does not fit on a whole cartridge of this pool",
                                st.records,
                                Uuid::from_bytes(st.header.image_uuid),
                                p.block_len(),
                                st.barcode
                            )
                        }),
                }
            }
        }
    }

    /// Write one record to the open part. A record the drive refused for lack of room
    /// (end of medium, nothing written) is [`Written::EndOfMedium`]; the part is intact.
    fn try_write_record(
        &mut self,
        st: &mut ImageProgress,
        p: &mut Prepared,
        sealer: Option<&Sealer>,
    ) -> Result<Written> {
        let w = st.writer.as_mut().expect("part open");
        let compression = p.compression.unwrap_or(WireCompression::None);
        let mut fields = w.fields(compression, RecordCrypto::None, p.plain_len);
        let seq = fields.sequence;
        let block = st.next_block;
        let r = match (sealer, &p.sealed) {
            // Stored as read: header and payload go to the drive as two parts.
            (None, _) if p.payload_in_plain => w.write_framed_record_parts(
                &fields,
                &p.extents,
                p.payload_crc,
                &mut p.block[..p.header_room],
                &p.plain,
            ),
            (None, _) => w.write_framed_record(&fields, &p.extents, p.payload_crc, &mut p.block),
            // Sealed in the transform stage for exactly this header: write as is.
            (Some(_), Some(sf))
                if DataFields {
                    crypto: RecordCrypto::None,
                    ..*sf
                } == fields =>
            {
                w.write_framed_record(sf, &p.extents, p.payload_crc, &mut p.block)
            }
            // Sealed for another part (early warning came in between), or not sealed:
            // seal for the header it really gets, with a fresh nonce.
            (Some(s), sealed) => {
                let buf = &mut self.seal_buf;
                buf.clear();
                buf.extend_from_slice(p.stored());
                let mut aad = Vec::new();
                match sealed {
                    Some(sf) => s.reseal_data(sf, &mut fields, &p.extents, buf, &mut aad)?,
                    None => s.seal_data_with(&mut fields, &p.extents, buf, &mut aad)?,
                }
                w.write_record(&fields, &p.extents, buf)
            }
        };
        match r {
            Err(WriterError::Sink(DriveError::EndOfMedium)) => return Ok(Written::EndOfMedium),
            r => r.map_err(sink_err).with_context(|| {
                format!(
                    "writing record {seq} of image {} to {} at block {block}",
                    Uuid::from_bytes(st.header.image_uuid),
                    st.barcode
                )
            })?,
        };
        st.next_block += 1;
        st.note_record(block, seq, &p.extents).with_context(|| {
            format!(
                "keeping the coverage of image {} in a temporary file (check the space in TMPDIR)",
                Uuid::from_bytes(st.header.image_uuid)
            )
        })?;
        st.digest = p.digest;
        st.records += 1;
        st.data_bytes += p.data_bytes;
        st.zero_bytes += p.zero_bytes;
        st.stored_bytes += p.stored().len() as u64;
        Ok(Written::Yes)
    }

    pub(super) fn span(&mut self, st: &mut ImageProgress) -> Result<()> {
        let w = st.writer.take().expect("part open");
        let (sink, trailer, _) = w
            .finish(TrailerStatus::Continued, st.digest)
            .map_err(sink_err)
            .with_context(|| {
                format!(
                    "closing part {} of image {} on {}",
                    st.header.part,
                    Uuid::from_bytes(st.header.image_uuid),
                    st.barcode
                )
            })?;
        let mut sink = sink;
        sink.drive
            .flush()
            .context("flushing before changing cartridges")?;
        st.close_segment();
        self.tape.put_sink(sink)?;
        self.tape.events.note(NoteKind::Media, format!(
            "cartridge {} reached early warning; image {} continues on the next cartridge of media set {}",
            st.barcode,
            Uuid::from_bytes(st.header.image_uuid),
            self.tape.set.uuid
        ));
        self.image_parts += 1;
        self.tape.retire_current(MediaState::Full)?;
        st.header = st.header.next_part(&trailer);
        self.start_part(st)
    }
}

/// Whether the drive took a record.
enum Written {
    Yes,
    /// Refused at the end of the medium; nothing was written.
    EndOfMedium,
}
