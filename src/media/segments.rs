//! How an image's records become catalog segments and coverage extents. One piece of
//! code serves the backup writer and the media scanner, so a catalog rebuilt from the
//! cartridges holds exactly the facts the backup recorded.

use tape_formats::{Extent, ExtentKind};

use crate::catalog::{self, Segment};

/// Records per catalog segment: fine enough that a restore locates close to what it
/// needs, coarse enough that the catalog stays small (one row per ~32 MiB of disk).
pub const RECORDS_PER_SEGMENT: u64 = 64;

/// Where the records being noted sit: image part, cartridge and tape file.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub part: u32,
    pub barcode: &'a str,
    pub tape_file: u64,
}

/// Accumulates segments (one per [`RECORDS_PER_SEGMENT`] consecutive records of one
/// part; block numbers are the logical object numbers of the data records) and the
/// coalesced disk ranges the records cover.
#[derive(Debug, Default)]
pub struct SegmentBuilder {
    seg: Option<Segment>,
    seg_records: u64,
}

impl SegmentBuilder {
    /// Note one data record at logical block `block` with sequence `seq`.
    pub fn note(
        &mut self,
        place: Place<'_>,
        block: u64,
        seq: u64,
        extents: &[Extent],
        segments: &mut Vec<Segment>,
        coverage: &mut Vec<catalog::Extent>,
    ) {
        let (start, end) = match (extents.first(), extents.last()) {
            (Some(f), Some(l)) => (f.offset, l.offset + l.length),
            _ => return,
        };
        match self.seg.as_mut() {
            Some(s) => {
                s.last_block = block;
                s.last_seq = seq;
                s.disk_start = s.disk_start.min(start);
                s.disk_end = s.disk_end.max(end);
            }
            None => {
                self.seg = Some(Segment {
                    part: place.part,
                    barcode: place.barcode.to_string(),
                    tape_file: place.tape_file,
                    first_block: block,
                    last_block: block,
                    first_seq: seq,
                    last_seq: seq,
                    disk_start: start,
                    disk_end: end,
                });
            }
        }
        self.seg_records += 1;
        if self.seg_records >= RECORDS_PER_SEGMENT {
            self.close(segments);
        }
        for e in extents {
            let is_zero = e.kind == ExtentKind::Zero;
            match coverage.last_mut() {
                Some(last) if last.is_zero == is_zero && last.offset + last.length == e.offset => {
                    last.length += e.length
                }
                _ => coverage.push(catalog::Extent {
                    offset: e.offset,
                    length: e.length,
                    is_zero,
                }),
            }
        }
    }

    /// Close the open segment (at the end of a part, or of the image).
    pub fn close(&mut self, segments: &mut Vec<Segment>) {
        if let Some(s) = self.seg.take() {
            segments.push(s);
        }
        self.seg_records = 0;
    }
}
