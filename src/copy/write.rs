//! The copy job: resolve where each point is read from, open a session in the target
//! pool, and copy each point, streaming drive to drive or through the spool, committing
//! each copy only when it is whole and verified.

use std::collections::HashMap;
use std::time::Instant;

use tape_formats::{
    Compression as WireCompression, DigestScheme, ImageHeader, ImageKind as WireKind,
};
use uuid::Uuid;

use crate::backup::{ImageTarget, KeyMaterial, WrittenImage};
use crate::catalog::{Catalog, Compression, ImageKind, ImageRow, ImageStats};
use crate::codec::KeyRing;
use crate::crypto::to_hex;
use crate::error::{Context, Error, Result};
use crate::events::{Events, NoteKind};
use crate::home::Home;
use crate::media::allocate::sync_inventory;
use crate::restore::ImageRead;
use tape_devices::changer::TapeLibrary;

use super::report::{AlreadyCopied, CopiedImage, CopyReport};
use super::select::{Selected, Selection};
use super::spool::Spool;
use super::stream::{self, RecordFeed, SourceImage};

/// What to copy, where, and how.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    pub selection: Selection,
    pub to_pool: String,
    pub from_pool: Option<String>,
    /// Stage through this spool when the library has one drive.
    pub spool: Option<Spool>,
    /// Wait for a cartridge of the target pool when none is in the library (a person
    /// is at a terminal).
    pub wait_for_media: bool,
}

/// The image each selected point is read from (original or copy in the library), its
/// segments and where the catalog saw its cartridges; every cartridge must be in the
/// library (else exit 4 before anything is written).
pub fn sources(
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    originals: &[ImageRow],
) -> Result<Vec<SourceImage>> {
    let (_, present) = sync_inventory(cat, lib)?;
    let mut out = Vec::with_capacity(originals.len());
    let mut missing: Vec<String> = Vec::new();
    for o in originals {
        let (img, _) = super::choose(cat, o, &present)?;
        let segments = cat.segments(img.uuid)?;
        let mut locations = HashMap::new();
        for s in &segments {
            if !locations.contains_key(&s.barcode) {
                let loc = cat
                    .media(&s.barcode)?
                    .map(|m| m.location)
                    .unwrap_or_default();
                if !present.contains(&s.barcode)
                    && !missing.iter().any(|m| m.starts_with(&s.barcode))
                {
                    missing.push(if loc.is_empty() {
                        s.barcode.clone()
                    } else {
                        format!("{} ({loc})", s.barcode)
                    });
                }
                locations.insert(s.barcode.clone(), loc);
            }
        }
        out.push(SourceImage {
            image: img,
            segments,
            locations,
        });
    }
    if !missing.is_empty() {
        return Err(Error::MediaNeeded(format!(
            "the copy reads cartridges that are not in the library: {}; put them into a mail slot and run `tapevault library import`",
            missing.join(", ")
        )));
    }
    Ok(out)
}

/// Hex fingerprints of the keys reading `sources` needs.
pub fn source_keys(sources: &[SourceImage]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in sources {
        if let Some(fp) = &s.image.key_fingerprint {
            if !v.contains(fp) {
                v.push(fp.clone());
            }
        }
    }
    v
}

/// The copy's image header: the original's point (disk, kind, parent, size, time,
/// change ids) under the copy's UUID, the target session and policy, and `copy_of`.
fn header_for(
    orig: &ImageRow,
    copy: Uuid,
    session: Uuid,
    target: &ImageTarget<'_>,
    record_data_size: usize,
    digest_scheme: DigestScheme,
) -> ImageHeader {
    ImageHeader {
        image_uuid: *copy.as_bytes(),
        disk_uuid: *orig.disk_uuid.as_bytes(),
        session_uuid: *session.as_bytes(),
        parent_image_uuid: orig.parent_uuid.map(|p| *p.as_bytes()),
        kind: match orig.kind {
            ImageKind::Full => WireKind::Full,
            ImageKind::Incremental => WireKind::Incremental,
            ImageKind::Copy => WireKind::Copy,
        },
        part: 0,
        first_sequence: 0,
        disk_size: orig.disk_size,
        tracking_block_size: orig.block_size,
        record_data_size: record_data_size as u32,
        time: orig.started.timestamp(),
        compression: match target.pool().compression {
            Compression::Off => WireCompression::None,
            Compression::Zstd(_) => WireCompression::Zstd,
        },
        cipher: target.cipher(),
        vm_name: orig.vm_name.clone().unwrap_or_default(),
        change_id: orig.change_id.clone().unwrap_or_default(),
        from_change_id: if orig.kind == ImageKind::Incremental {
            orig.from_change_id.clone()
        } else {
            None
        },
        copy_of: Some(*orig.uuid.as_bytes()),
        // A copy of a synthetic full is one too (of the same point).
        synthetic_of: orig.synthetic_of.map(|u| *u.as_bytes()),
        // A copy carries its original's content digest: the same value under the same key.
        digest_scheme,
    }
}

/// Run a copy of the `selected` points (from [`super::select`]) into `req.to_pool`:
/// `lib` writes, `read_lib` (a second handle on the same library) reads. `keys` holds
/// the keys the sources need ([`source_keys`]); `target_key` is the target pool's.
#[allow(clippy::too_many_arguments)]
pub fn run(
    home: &Home,
    cat: &Catalog,
    lib: &mut dyn TapeLibrary,
    read_lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    target_key: Option<KeyMaterial>,
    selected: &Selected,
    sources: &[SourceImage],
    req: &CopyRequest,
    events: &dyn Events,
) -> Result<CopyReport> {
    let t0 = Instant::now();
    let pool = cat.pool(&req.to_pool)?.ok_or_else(|| {
        Error::Usage(format!(
            "no pool named {}: create it with `tapevault pool create {}`",
            req.to_pool, req.to_pool
        ))
    })?;
    let spool = if lib.drive_count() >= 2 {
        None
    } else {
        req.spool.clone()
    };
    let mode = if spool.is_some() { "spool" } else { "stream" };
    let mut report = CopyReport {
        to_pool: pool.name.clone(),
        session: None,
        media_set: None,
        mode,
        copied: Vec::new(),
        already_copied: selected
            .already
            .iter()
            .map(|&(original, copy)| AlreadyCopied { original, copy })
            .collect(),
        refused: selected.refused.clone(),
        bytes: 0,
        seconds: 0.0,
    };
    if selected.to_copy.is_empty() {
        report.seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }
    if lib.drive_count() < 2 && spool.is_none() {
        return Err(Error::Usage(
            "the library has one drive: a copy reads one cartridge while it writes another; give --spool DIR --spool-size SIZE to stage through a spool directory".into(),
        ));
    }
    if let Some(sp) = &spool {
        sp.check()?;
        if let Some(big) = sources.iter().find(|s| s.image.stored_bytes > sp.size) {
            return Err(Error::Usage(format!(
                "image {} stores {} bytes on tape, more than --spool-size {} bytes: give a larger spool or copy with two drives",
                big.image.uuid, big.image.stored_bytes, sp.size
            )));
        }
        events.note(
            NoteKind::Decision,
            format!(
                "the library has one drive: copying through the spool directory {} (at most {} bytes at a time): each batch of images is read into it, then written from it",
                sp.dir.display(),
                sp.size
            ),
        );
    } else {
        events.note(
            NoteKind::Decision,
            "streaming drive to drive: reading each image on one drive while writing its copy on another".to_string(),
        );
    }
    crate::backup::recover_interrupted(home, cat, events)?;
    let mut target = ImageTarget::open(
        home,
        cat,
        lib,
        &pool,
        target_key,
        req.wait_for_media,
        &format!("copy to pool {}", pool.name),
        events,
    )?;
    report.session = Some(target.session());
    report.media_set = Some(target.media_set());
    let result = match &spool {
        None => copy_streaming(
            cat,
            &mut target,
            read_lib,
            keys,
            selected,
            sources,
            events,
            &mut report,
        ),
        Some(sp) => copy_spooled(
            cat,
            &mut target,
            read_lib,
            keys,
            selected,
            sources,
            sp,
            events,
            &mut report,
        ),
    };
    match result {
        Ok(()) => {
            target.finish()?;
        }
        Err(e) => {
            let _ = target.fail();
            return Err(e);
        }
    }
    report.bytes = report.copied.iter().map(|c| c.data_bytes).sum();
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn copy_streaming(
    cat: &Catalog,
    target: &mut ImageTarget<'_>,
    read_lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    selected: &Selected,
    sources: &[SourceImage],
    events: &dyn Events,
    report: &mut CopyReport,
) -> Result<()> {
    let max_plain = target.max_record_data_size()?;
    for (orig, src) in selected.to_copy.iter().zip(sources) {
        let started = Instant::now();
        let copy = Uuid::new_v4();
        begin(cat, target, orig, copy)?;
        let ((tx, free_rx), (rx, free_tx)) = stream::channel();
        let r = std::thread::scope(|s| -> Result<(ImageRead, WrittenImage)> {
            let reader = s.spawn(|| stream::read_to_channel(read_lib, keys, src, tx, free_rx));
            let written = (|| -> Result<WrittenImage> {
                let feed = RecordFeed::from_channel(keys, &src.image, rx, free_tx, max_plain)?;
                write_copy(target, orig, src, copy, max_plain, feed)
            })();
            // The feed (and with it the channel) is gone: a reader blocked on a full
            // channel stops.
            let read = reader
                .join()
                .unwrap_or_else(|_| Err(Error::Failed("the copy's reader thread panicked".into())));
            match (read, written) {
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(e),
                (Ok(r), Ok(w)) => Ok((r, w)),
            }
        });
        let done = commit(cat, target, orig, src, copy, r, false, started, events)?;
        report.copied.push(done);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn copy_spooled(
    cat: &Catalog,
    target: &mut ImageTarget<'_>,
    read_lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    selected: &Selected,
    sources: &[SourceImage],
    sp: &Spool,
    events: &dyn Events,
    report: &mut CopyReport,
) -> Result<()> {
    let items: Vec<(&ImageRow, &SourceImage)> = selected.to_copy.iter().zip(sources).collect();
    let mut next = 0;
    while next < items.len() {
        // Read: as many images as the spool holds, the drive free of the target.
        target.release()?;
        let mut batch = Vec::new();
        let mut used = 0u64;
        while next < items.len() {
            let (orig, src) = items[next];
            match stream::read_to_spool(read_lib, keys, src, sp, sp.size - used)
                .with_context(|| format!("reading image {} into the spool", src.image.uuid))?
            {
                Ok((file, read)) => {
                    used += file.bytes;
                    batch.push((orig, src, file, read));
                    next += 1;
                }
                Err(_) if batch.is_empty() => {
                    return Err(Error::Usage(format!(
                        "image {} does not fit in --spool-size {} bytes with its record headers: give a larger spool or copy with two drives",
                        src.image.uuid, sp.size
                    )))
                }
                Err(_) => break,
            }
        }
        events.note(
            NoteKind::Media,
            format!(
                "spooled {} image(s), {used} bytes, in {}; writing them with the same drive",
                batch.len(),
                sp.dir.display()
            ),
        );
        // Write them from the spool.
        let max_plain = target.max_record_data_size()?;
        for (orig, src, file, read) in batch {
            let started = Instant::now();
            let copy = Uuid::new_v4();
            begin(cat, target, orig, copy)?;
            let r = (|| -> Result<(ImageRead, WrittenImage)> {
                let feed = RecordFeed::from_spool(keys, &src.image, file, &read, max_plain)?;
                Ok((read, write_copy(target, orig, src, copy, max_plain, feed)?))
            })();
            let done = commit(cat, target, orig, src, copy, r, true, started, events)?;
            report.copied.push(done);
        }
    }
    Ok(())
}

/// Check that a copy covers exactly the disk ranges of `original` in the catalog, row
/// by row: the copy's coverage (spooled as it was written) and the original's rows
/// (read from the catalog in disk order) are walked side by side, never held.
fn same_coverage(
    cat: &Catalog,
    original: Uuid,
    written: &crate::extent_spool::ItemList<crate::catalog::Extent>,
) -> Result<()> {
    let spool_err = |e: std::io::Error| {
        Error::Failed(format!(
            "reading back the copy's coverage from its temporary file (check the space in TMPDIR): {e}"
        ))
    };
    let show = |e: Option<&crate::catalog::Extent>| match e {
        Some(e) => format!(
            "{} bytes at {}{}",
            e.length,
            e.offset,
            if e.is_zero { " (zeros)" } else { "" }
        ),
        None => "nothing".into(),
    };
    let mut mine = written.reader();
    let differs =
        cat.with_extent_cursors(&[original], |mut cursors| -> Result<Option<String>> {
            let theirs = cursors.pop().expect("one cursor");
            let mut row = 0u64;
            let mut theirs = theirs.map(|r| r.map_err(Error::from));
            loop {
                let want = theirs.next().transpose()?;
                let got = mine.next().transpose().map_err(spool_err)?;
                if want.is_none() && got.is_none() {
                    return Ok(None);
                }
                if got != want {
                    return Ok(Some(format!(
                        "extent {row}: the copy has {}, the original {}",
                        show(got.as_ref()),
                        show(want.as_ref())
                    )));
                }
                row += 1;
            }
        })??;
    match differs {
        None => Ok(()),
        Some(d) => Err(Error::Integrity(format!(
            "the copy covers other disk ranges than the original ({} extents written, {d})",
            written.len()
        ))),
    }
}

/// Write copy `copy` of `orig` from `feed` (its header carries the source's content
/// digest scheme, which the feed learned from the source's header), and check that the
/// feed handed on the whole source.
fn write_copy(
    target: &mut ImageTarget<'_>,
    orig: &ImageRow,
    src: &SourceImage,
    copy: Uuid,
    max_plain: usize,
    mut feed: RecordFeed<'_>,
) -> Result<WrittenImage> {
    let header = header_for(
        orig,
        copy,
        target.session(),
        target,
        max_plain,
        feed.scheme(),
    );
    if src.image.key_fingerprint == target.pool().key_fingerprint {
        // `commit` compares the writer's digest with the original's.
        feed.writer_digest_suffices();
    }
    let w = target.write_image(header, label(orig), orig.plain_bytes, &mut |e, d| {
        feed.fill(e, d)
    })?;
    feed.finish()?;
    Ok(w)
}

fn label(orig: &ImageRow) -> String {
    format!("copy {}", &orig.uuid.to_string()[..8])
}

fn begin(cat: &Catalog, target: &ImageTarget<'_>, orig: &ImageRow, copy: Uuid) -> Result<()> {
    let pool = target.pool();
    cat.begin_copy(
        orig,
        copy,
        &pool.name,
        target.session(),
        target.record_key_fingerprint(),
        pool.compression,
    )?;
    Ok(())
}

/// Commit a copy written whole and verified, or fail it (never counted) and return
/// the error.
#[allow(clippy::too_many_arguments)]
fn commit(
    cat: &Catalog,
    target: &ImageTarget<'_>,
    orig: &ImageRow,
    src: &SourceImage,
    copy: Uuid,
    r: Result<(ImageRead, WrittenImage)>,
    spooled: bool,
    started: Instant,
    events: &dyn Events,
) -> Result<CopiedImage> {
    let checked = r.and_then(|(read, w)| {
        if !read.digest_checked {
            return Err(Error::Integrity(format!(
                "image {}: its content digest could not be checked while reading it",
                src.image.uuid
            )));
        }
        let digest = to_hex(&w.digest);
        // Same key (or both clear): the copy's digest is the original's.
        if src.image.key_fingerprint == target.record_key_fingerprint()
            && src.image.content_digest.as_deref() != Some(digest.as_str())
        {
            return Err(Error::Integrity(format!(
                "the copy's content digest {digest} differs from the original's ({})",
                src.image.content_digest.as_deref().unwrap_or("none")
            )));
        }
        same_coverage(cat, orig.uuid, &w.coverage)?;
        Ok((read, w, digest))
    });
    let (read, w, digest) = match checked {
        Ok(v) => v,
        Err(e) => {
            let _ = cat.fail_image(copy, &format!("copy failed: {e}"));
            return Err(e).with_context(|| {
                format!(
                    "copying image {} as {copy} to pool {}",
                    orig.uuid,
                    target.pool().name
                )
            });
        }
    };
    let stats = ImageStats {
        records: w.records,
        plain_bytes: w.data_bytes,
        stored_bytes: w.stored_bytes,
        finished: Some(crate::home::clock::now()),
        digest_list: None,
    };
    if let Err(e) = cat.complete_image_from(copy, &stats, &digest, &w.segments, w.coverage.reader())
    {
        let _ = cat.fail_image(copy, &format!("copy failed: {e}"));
        return Err(e.into());
    }
    let done = CopiedImage {
        original: orig.uuid,
        copy,
        read_from: src.image.uuid,
        disk: orig.disk_uuid,
        kind: orig.kind,
        at: orig.started,
        records: w.records,
        data_bytes: w.data_bytes,
        stored_bytes: w.stored_bytes,
        source_cartridges: read.cartridges,
        cartridges: w.cartridges,
        digest,
        spooled,
        seconds: started.elapsed().as_secs_f64(),
    };
    if src.image.uuid != orig.uuid {
        events.note(
            NoteKind::Decision,
            format!(
                "image {} was read from its copy {} (the original is not in the library or not intact)",
                orig.uuid, src.image.uuid
            ),
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Allocation, Extent, MediaRow, NewImage, PoolRow, Segment, SessionStatus};
    use crate::extent_spool::{ItemList, Spool};

    fn row(offset: u64, length: u64, is_zero: bool) -> Extent {
        Extent {
            offset,
            length,
            is_zero,
        }
    }

    /// A catalog holding one complete full image covering `rows`.
    fn original(dir: &std::path::Path, rows: &[Extent]) -> (Catalog, Uuid) {
        let cat = Catalog::open(dir).unwrap();
        cat.create_pool(&PoolRow {
            name: "p".into(),
            key_name: None,
            key_fingerprint: None,
            compression: Compression::Off,
            retention_days: None,
            allocation: Allocation::PerSession,
            worm: false,
            escrow: false,
            created: chrono::Utc::now(),
        })
        .unwrap();
        let set = crate::media::lifecycle::create_media_set(&cat, "p", chrono::Utc::now()).unwrap();
        cat.upsert_media(&MediaRow::new_blank("TV0001L9", "slot 0"))
            .unwrap();
        cat.assign_media("TV0001L9", "p", set.uuid, 0, Uuid::new_v4())
            .unwrap();
        let sess = cat.begin_session("p", Some(set.uuid)).unwrap();
        let size = rows.last().map_or(0, |r| r.offset + r.length);
        let img = cat
            .begin_image(&NewImage {
                uuid: Uuid::new_v4(),
                disk_uuid: Uuid::new_v4(),
                vm_name: None,
                disk_label: None,
                kind: ImageKind::Full,
                parent_uuid: None,
                change_id: None,
                from_change_id: None,
                disk_size: size,
                block_size: 4096,
                session_uuid: Some(sess.uuid),
                pool: Some("p".into()),
                key_fingerprint: None,
                compression: Compression::Off,
                started: chrono::Utc::now(),
                synthetic_of: None,
            })
            .unwrap();
        cat.complete_image(
            img.uuid,
            &ImageStats {
                records: 1,
                finished: Some(chrono::Utc::now()),
                ..Default::default()
            },
            "00",
            &[Segment {
                part: 0,
                barcode: "TV0001L9".into(),
                tape_file: 1,
                first_block: 2,
                last_block: 2,
                first_seq: 0,
                last_seq: 0,
                disk_start: 0,
                disk_end: size,
            }],
            rows,
        )
        .unwrap();
        cat.finish_session(sess.uuid, SessionStatus::Complete)
            .unwrap();
        (cat, img.uuid)
    }

    /// A copy's coverage, spooled with 2 rows in memory (the rest in its file).
    fn written(rows: &[Extent]) -> ItemList<Extent> {
        let mut s = Spool::with_limit(2);
        for r in rows {
            s.push(*r).unwrap();
        }
        s.finish().unwrap()
    }

    #[test]
    fn a_copy_must_cover_what_the_original_covers_row_for_row() {
        let d = tempfile::tempdir().unwrap();
        let rows: Vec<Extent> = (0..7u64).map(|i| row(i * 4096, 4096, i % 2 == 1)).collect();
        let (cat, img) = original(d.path(), &rows);
        same_coverage(&cat, img, &written(&rows)).unwrap();

        let mut other = rows.clone();
        other[5].is_zero = !other[5].is_zero;
        let e = same_coverage(&cat, img, &written(&other)).unwrap_err();
        assert!(matches!(e, Error::Integrity(_)), "{e}");
        assert!(e.to_string().contains("extent 5:"), "{e}");

        let e = same_coverage(&cat, img, &written(&rows[..6])).unwrap_err();
        assert!(e.to_string().contains("the copy has nothing"), "{e}");

        let mut more = rows.clone();
        more.push(row(7 * 4096, 4096, false));
        let e = same_coverage(&cat, img, &written(&more)).unwrap_err();
        assert!(e.to_string().contains("the original nothing"), "{e}");
    }
}
