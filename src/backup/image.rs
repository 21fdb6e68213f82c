//! Streaming one image to tape: the record size for the drive, the image header, the
//! read -> transform -> write pipeline, and closing the last part (trailer, filemark,
//! flush) before the catalog may call it complete.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use tape_formats::{
    Cipher, Compression as WireCompression, ContentDigest, DigestScheme, Extent, ExtentKind,
    ImageHeader, ImageKind as WireKind, ImageWriter, TrailerStatus,
};
use uuid::Uuid;

use crate::catalog::{self, ImageKind, Segment};
use crate::codec::{Compressor, Sealer};
use crate::error::{Context, Error, Result};
use crate::extent_spool::{run_limit, ExtentList, ItemList, Spool};
use crate::media::segments::{Place, SegmentBuilder};
use crate::media::DriveSink;
use crate::pipeline::{Buffer, StageTimes};
use crate::source::disk::{source_timeout, ChunkConfig, ChunkReader, Disk, ExtentKind as SrcKind};
use crate::source::hashscan::{DigestFeed, DigestListError, DigestListSummary};
use crate::source::nbd::DirtyExtents;
use crate::source::DEFAULT_BLOCK_SIZE;

use super::stages::TransformWorker;
use super::*;
use crate::events::Event;

/// Per-part and per-image bookkeeping of the consumer.
pub(super) struct ImageProgress {
    pub(super) header: ImageHeader,
    pub(super) stages: StageTimes,
    pub(super) writer: Option<ImageWriter<DriveSink>>,
    pub(super) barcode: String,
    pub(super) tape_file: u64,
    /// Logical block of the next data record.
    pub(super) next_block: u64,
    pub(super) segments: Vec<Segment>,
    pub(super) segs: SegmentBuilder,
    /// The newest coverage extents (the last one may still grow); older ones go to
    /// `coverage_spool` when this holds [`crate::extent_spool::run_limit`] of them.
    pub(super) coverage: Vec<catalog::Extent>,
    pub(super) coverage_spool: Spool<catalog::Extent>,
    pub(super) coverage_limit: usize,
    pub(super) digest: [u8; 32],
    pub(super) records: u64,
    pub(super) data_bytes: u64,
    pub(super) zero_bytes: u64,
    /// Bytes read from the disk (the holes of a thin file are not read).
    pub(super) read_bytes: u64,
    pub(super) stored_bytes: u64,
    pub(super) cartridges: Vec<String>,
    /// The block digest list built while streaming, committed (its summary) or why not.
    pub(super) list: Option<std::result::Result<DigestListSummary, DigestListError>>,
}

impl ImageProgress {
    pub(super) fn close_segment(&mut self) {
        self.segs.close(&mut self.segments);
    }

    /// Notes a record's segment and coverage. Coverage beyond the limit goes to the
    /// image's temporary coverage file (all but the newest extent, which may still
    /// grow), so memory does not follow the number of extents.
    pub(super) fn note_record(
        &mut self,
        block: u64,
        seq: u64,
        extents: &[Extent],
    ) -> std::io::Result<()> {
        let place = Place {
            part: self.header.part,
            barcode: &self.barcode,
            tape_file: self.tape_file,
        };
        self.segs.note(
            place,
            block,
            seq,
            extents,
            &mut self.segments,
            &mut self.coverage,
        );
        if self.coverage.len() >= self.coverage_limit {
            let keep = self.coverage.len() - 1;
            self.coverage_spool.append_to_file(&self.coverage[..keep])?;
            self.coverage.drain(..keep);
        }
        Ok(())
    }

    /// The image's whole coverage, in disk order (spooled part first), leaving none.
    pub(super) fn take_coverage(&mut self) -> std::io::Result<ItemList<catalog::Extent>> {
        let spool = std::mem::take(&mut self.coverage_spool);
        spool.finish_with(std::mem::take(&mut self.coverage))
    }
}

impl Job<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_image(
        &mut self,
        disk: &Disk,
        disk_id: Uuid,
        plan: &Plan,
        scanned: Option<&ExtentList>,
        new_list: &Path,
        image_uuid: Uuid,
        kind: ImageKind,
        parent: Option<Uuid>,
        change_id: Option<String>,
        from_change_id: Option<String>,
        req: &BackupRequest,
    ) -> Result<ImageProgress> {
        let size = disk.size();
        let bs = DEFAULT_BLOCK_SIZE;
        // Records must fit the drive's largest block (real drives and HBAs may take less
        // than 1 MiB): plain data + the largest header a record of a chunk can have.
        // Stored payloads are never larger than plain ones (incompressible data is
        // stored raw).
        self.tape.ensure_mounted()?;
        let max_block = self
            .tape
            .current()
            .sink
            .as_ref()
            .map(|s| s.drive.max_block_size())
            .unwrap_or(tape_formats::MAX_BLOCK_SIZE)
            .min(tape_formats::MAX_BLOCK_SIZE);
        let record_data_size = record_data_size_for(max_block).ok_or_else(|| {
            Error::Failed(format!(
                "the drive's largest block ({max_block} bytes) is too small for tapevault records (at least {} bytes are needed)",
                MAX_RECORD_HEADER + 4096
            ))
        })?;
        let cfg = ChunkConfig {
            record_data_size,
            block_size: bs,
        };
        let dl_err = |e: crate::source::hashscan::DigestListError| {
            Error::Failed(format!("block digest list: {e}"))
        };
        // The digest list is fed in disk order by the writer's side of the pipeline,
        // from the block digests the transform workers compute (the reader only reads).
        let (reader, feed) = match plan {
            Plan::Full { .. } => {
                let feed = DigestFeed::new(new_list, bs, size, None).map_err(dl_err)?;
                let mut r =
                    ChunkReader::whole_disk(disk, cfg).map_err(|e| Error::Failed(e.to_string()))?;
                r.check_digests(&feed).map_err(dl_err)?;
                (r, Some(feed))
            }
            Plan::ChangedExtents {
                extents, base_list, ..
            } => {
                let feed = DigestFeed::new(new_list, bs, size, Some(base_list)).map_err(dl_err)?;
                let mut r = ChunkReader::list(disk, cfg, extents)
                    .map_err(|e| Error::Failed(e.to_string()))?;
                r.check_digests(&feed).map_err(dl_err)?;
                (r, Some(feed))
            }
            Plan::HashScan { .. } => (
                ChunkReader::list(disk, cfg, scanned.expect("scan ran"))
                    .map_err(|e| Error::Failed(e.to_string()))?,
                None,
            ),
            Plan::DirtyBitmap {
                export,
                context,
                base_list,
                ..
            } => {
                let feed = DigestFeed::new(new_list, bs, size, Some(base_list)).map_err(dl_err)?;
                let dirty = DirtyExtents::connect(export, context, bs, source_timeout())
                    .map_err(|e| Error::Failed(e.to_string()))?;
                let mut r = ChunkReader::stream(disk, cfg, Box::new(dirty))
                    .map_err(|e| Error::Failed(e.to_string()))?;
                r.check_digests(&feed).map_err(dl_err)?;
                (r, Some(feed))
            }
        };
        let total: u64 = match plan {
            Plan::Full { .. } => size,
            Plan::ChangedExtents { extents, .. } => extents.total_bytes(),
            Plan::HashScan { .. } => scanned.map(|s| s.total_bytes()).unwrap_or(0),
            // One pass over the bitmap (block status only) for the progress total.
            Plan::DirtyBitmap {
                export, context, ..
            } => {
                DirtyExtents::connect(export, context, bs, source_timeout())
                    .map_err(|e| Error::Failed(e.to_string()))?
                    .count()
                    .map_err(|e| Error::Failed(e.to_string()))?
                    .1
            }
        };
        let pool = self.tape.pool.clone();
        let cipher = self.sealer.as_ref().map_or(Cipher::None, Sealer::cipher);
        let header = ImageHeader {
            image_uuid: *image_uuid.as_bytes(),
            disk_uuid: *disk_id.as_bytes(),
            session_uuid: *self.session.as_bytes(),
            parent_image_uuid: parent.map(|p| *p.as_bytes()),
            kind: match kind {
                ImageKind::Full => WireKind::Full,
                ImageKind::Incremental => WireKind::Incremental,
                ImageKind::Copy => WireKind::Copy,
            },
            part: 0,
            first_sequence: 0,
            disk_size: size,
            tracking_block_size: bs as u32,
            record_data_size: cfg.record_data_size as u32,
            // The image's point in time, as the catalog records it (a synthetic full's
            // is the point's it reproduces).
            time: self.image_time.timestamp(),
            compression: match pool.compression {
                catalog::Compression::Off => WireCompression::None,
                catalog::Compression::Zstd(_) => WireCompression::Zstd,
            },
            cipher,
            vm_name: req.vm_name.clone().unwrap_or_default(),
            change_id: change_id.unwrap_or_default(),
            from_change_id: if kind == ImageKind::Incremental {
                from_change_id
            } else {
                None
            },
            copy_of: None,
            // A new image: its trailers carry the digest of its pieces (format major 2).
            digest_scheme: DigestScheme::NEWEST,
            synthetic_of: self.reproduce.as_ref().map(|r| *r.point.as_bytes()),
        };
        let mut reader = reader;
        let mut state = self.stream_records(
            header,
            format!("disk {}", &disk_id.to_string()[..8]),
            total,
            &mut |extents, data| {
                let Some(chunk) = reader.next_chunk().map_err(|e| {
                    Error::Failed(format!("reading {}: {e}", disk.path().display()))
                })?
                else {
                    return Ok(false);
                };
                extents.clear();
                extents.extend(chunk.extents.iter().map(|s| Extent {
                    offset: s.offset,
                    length: s.len,
                    kind: match s.kind {
                        SrcKind::Data => ExtentKind::Data,
                        SrcKind::Zero => ExtentKind::Zero,
                    },
                }));
                reader.swap_data(data);
                Ok(true)
            },
            feed,
        )?;
        let (stats, _) = reader.finish();
        state.read_bytes = stats.read_bytes;
        if let Some(Err(e)) = state.list.take() {
            let e = Error::Failed(format!(
                "writing the block digest list {}: {e}",
                new_list.display()
            ));
            self.abort_part(&mut state, &e);
            return Err(e);
        }
        // A synthetic full must hold exactly the bytes of the point it reproduces: its
        // block digest list (of what was written) must equal the point's, before the
        // trailer may say complete. A mismatch aborts the image on tape too, so not even
        // a catalog rebuilt from the media ever takes it for a base.
        if let Some((list, point)) = self.reproduce.as_ref().map(|r| (r.list.clone(), r.point)) {
            if let Err(e) = crate::synthetic::verify::same_disk(new_list, &list, point) {
                self.abort_part(&mut state, &e);
                return Err(e);
            }
        }
        self.close_image(&mut state)?;
        Ok(state)
    }

    /// Stream the records `fill` produces (each call fills one record's extents and
    /// plain data, in disk order; `false` at the end) as image `header` under the
    /// pool's policy: content digest (keyed with the pool's key when encrypted), the
    /// bounded read -> transform (digests, zstd, AES-GCM) -> write pipeline, spanning at
    /// early warning. With `digests`, the image's block digest list is built on the way
    /// and committed at the end (`list` of the result says how that went). The last part is left open: [`Self::close_image`] writes its trailer.
    /// On error the open part is closed as aborted where that is safe.
    pub(super) fn stream_records(
        &mut self,
        header: ImageHeader,
        label: String,
        total: u64,
        fill: &mut FillRecord<'_>,
        digests: Option<DigestFeed>,
    ) -> Result<ImageProgress> {
        let pool = self.tape.pool.clone();
        let events = self.tape.events;
        events.task(label, total);
        let scheme = header.digest_scheme;
        let digest =
            ContentDigest::with_key(scheme, self.sealer.as_ref().map(|s| s.key.digest_key()));
        let mut state = ImageProgress {
            stages: StageTimes::default(),
            header: header.clone(),
            writer: None,
            barcode: String::new(),
            tape_file: 0,
            next_block: 0,
            segments: Vec::new(),
            segs: SegmentBuilder::default(),
            coverage: Vec::new(),
            coverage_spool: Spool::new(),
            coverage_limit: run_limit(),
            // The digest of no records yet (a part may end before its first record).
            digest: digest.finalize(),
            records: 0,
            data_bytes: 0,
            zero_bytes: 0,
            read_bytes: 0,
            stored_bytes: 0,
            cartridges: Vec::new(),
            list: None,
        };
        self.start_part(&mut state)?;

        // Encryption runs in the transform stage, off the writer's thread, so the drive
        // keeps streaming. The AAD needs the record's part and sequence: the sequence is
        // the record's index in the image; the part is the one being written now, which
        // only changes at early warning, when the writer re-seals the few records
        // prepared ahead for the old part (`write_record`).
        let sealer = self.sealer.take();
        let part_now = AtomicU32::new(state.header.part);
        let image_uuid_bytes = state.header.image_uuid;
        // The transform stage hashes the blocks for the digest list, compresses and
        // encrypts: the records are prepared on two threads (item i on worker i % 2),
        // each with its own compressor and AAD buffer. The content digest is one chain
        // over the records: the writer's side extends it, taking the records in order
        // (with the plain data the workers pass on), so no worker waits for another.
        let n_workers = TRANSFORM_WORKERS;
        let mut digest = digest;
        let disk_size = state.header.disk_size;
        let block_size = u64::from(state.header.tracking_block_size);
        let blocks = digests.as_ref().map(|_| (block_size, disk_size));
        let mut feed = digests;
        let mut feed_error: Option<DigestListError> = None;
        let mut workers = Vec::with_capacity(n_workers);
        for w in 0..n_workers {
            let mut worker = TransformWorker {
                compressor: Compressor::new(pool.compression)?,
                aad: Vec::new(),
                next_sequence: state.header.first_sequence + w as u64,
                step: n_workers as u64,
                sealer: sealer.as_ref(),
                part_now: &part_now,
                image_uuid: image_uuid_bytes,
                pieces: scheme == DigestScheme::Pieces,
                blocks,
            };
            workers.push(move |c: &mut ReadChunk, p: &mut Prepared| worker.prepare(c, p));
        }
        // The spool: taken out of the job while the writer (which borrows the job) runs.
        let spool = std::mem::take(&mut self.spool);
        let codec = super::spooled::PreparedCodec { events };
        let buffer = match &spool {
            crate::spool::Spool::Off => Buffer::None,
            crate::spool::Spool::Memory(bytes) => {
                Buffer::Memory(super::session::spool_records(*bytes, pool.compression))
            }
            // Paced for the drive's speeds: its model when the library has one, else
            // as configured (the pool's drive_speeds, else the default).
            crate::spool::Spool::File(f) => {
                let speeds = self
                    .tape
                    .current
                    .as_ref()
                    .and_then(|c| self.tape.lib.speed_model(c.drive_index))
                    .map_or(f.speeds, |m| crate::spool::DriveSpeeds::from_model(&m));
                Buffer::File {
                    file: f,
                    pace: crate::spool::Pacer::new(speeds, f.capacity()),
                    codec: &codec,
                }
            }
        };
        let run = crate::pipeline::run_buffered::<ReadChunk, Prepared, Error, _, _, _, _>(
            PIPELINE_DEPTH,
            buffer,
            |c| fill(&mut c.extents, &mut c.data),
            workers,
            // In record order, before the spool: the content digest and the digest list
            // (so the spool never holds plain data).
            |p| {
                match scheme {
                    // The workers hashed the pieces: this only chains their digests.
                    DigestScheme::Pieces => {
                        digest.update_record_pieces(&p.extents, &p.blocks.pieces)
                    }
                    DigestScheme::Bytes => digest.update_record(&p.extents, &p.plain),
                }
                .map_err(|e| Error::Failed(format!("content digest: {e}")))?;
                p.digest = digest.finalize();
                if let Some(f) = feed.as_mut() {
                    // A digest list is a by-product: its failure is reported when the
                    // image ends (dropping the feed removes its unfinished file).
                    if let Err(e) = p.blocks.feed(&p.extents, f, block_size, disk_size) {
                        feed = None;
                        feed_error = Some(e);
                    }
                }
                Ok(())
            },
            |p| {
                self.write_record(&mut state, p, sealer.as_ref())?;
                part_now.store(state.header.part, Ordering::Release);
                events.progress(p.data_bytes + p.zero_bytes);
                Ok(())
            },
        );
        self.spool = spool;
        self.sealer = sealer;
        events.emit(Event::TaskEnded);
        if let Ok(times) = &run {
            state.stages = *times;
        }
        if let Err(e) = run {
            self.abort_part(&mut state, &e);
            return Err(e);
        }
        state.list = match (feed, feed_error) {
            (_, Some(e)) => Some(Err(e)),
            (Some(f), None) => Some(f.finish()),
            (None, None) => None,
        };
        Ok(state)
    }

    /// Close the last part of an image [`Self::stream_records`] wrote: trailer,
    /// filemark, flush (in a backup session, the flush is the session's commit point's,
    /// [`Self::commit_pending`]); only then may the catalog say complete.
    pub(super) fn close_image(&mut self, state: &mut ImageProgress) -> Result<()> {
        let w = state.writer.take().expect("part open");
        let (sink, _trailer, _) = w
            .finish(TrailerStatus::Complete, state.digest)
            .map_err(sink_err)?;
        let mut sink = sink;
        // A backup session flushes once, at its commit point, for all its images.
        if !self.defer_commit {
            sink.drive
                .flush()
                .context("flushing the drive after the image trailer")?;
        }
        state.close_segment();
        self.tape.put_sink(sink)?;
        self.image_parts += 1;
        Ok(())
    }

    /// Close the open part as aborted so a reader knows, but only when the failure was
    /// not the drive's and the tape is provably where this writer left it: after a
    /// reset or power cut the drive may be back at BOT, and writing there would destroy
    /// the cartridge.
    fn abort_part(&mut self, state: &mut ImageProgress, e: &Error) {
        if let Some(mut w) = state.writer.take() {
            let drive_failed = root_drive_error(e).is_some();
            let sink = w.sink_mut();
            let in_place = sink
                .drive
                .position()
                .map(|p| p.block == sink.block)
                .unwrap_or(false);
            if !drive_failed && in_place {
                if let Ok((sink, _, _)) = w.finish(TrailerStatus::Aborted, state.digest) {
                    let _ = self.tape.put_sink(sink);
                }
            } else {
                // The cartridge's state is unknown: never write to it again in this
                // session; the next append closes the unterminated file.
                drop(w);
                if let Some(c) = self.tape.current.as_mut() {
                    c.sink = None;
                }
            }
        }
    }
}
