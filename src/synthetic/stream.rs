//! The two-drive path of a synthetic full: the full's records stream from one drive
//! to the writer on the other, merged in disk order with the chain's newer extents,
//! so reading the chain and writing the new full overlap (about one restore's time)
//! instead of following each other through a scratch file of the whole disk.
//!
//! 1. **Staging** ([`stage_incrementals`]): the incrementals of the chain supply
//!    what the restore planner gives them (newest extent wins), read in media order
//!    on one drive, every record checked as in a restore; their bytes go to a scratch
//!    file with no name in `$TMPDIR` at their disk offsets. The file is sparse: it
//!    takes the incrementals' data only (what they supply to the point), never the
//!    full's. Where they supply it is the union of their restore plans' lists, merged
//!    into a spooled [`ExtentList`] (beyond the in-memory limit in a temporary file).
//! 2. **Streaming** ([`Merged`]): a reader thread reads the full (its needed
//!    segments, in order; every record checked) on a drive of its own and hands the
//!    bytes it supplies to the point, in disk order, through a bounded channel
//!    ([`CHANNEL_DEPTH`] pieces). The backup writer reads the disk from [`Merged`], a
//!    [`SourceRead`]: at each offset the staged bytes where an incremental supplies
//!    them, the full's where it does, zeros elsewhere (and holes there, so zeros are
//!    not read). Which source holds an offset is looked up in the full's, the staged
//!    and the combined extent lists through [`Seeker`]s, which walk them in disk order
//!    as the writer reads: memory does not follow the number of extents.
//!    The writer is the normal one: block digest list, content digest,
//!    records under the pool's policy, and the check against the point's digest list
//!    before the trailer may say complete ([`super::verify`]).
//!
//! A full whose records are not in disk order (never written by tapevault, which
//! writes a full front to back) fails the job with the reason; nothing is committed.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use crate::catalog::{ImageKind, Segment};
use crate::codec::{KeyRing, Opener};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::extent_spool::{ExtentList, Seeker};
use crate::extents::Extent;
use crate::restore::{read_image, ImageRead, MediaReader, Prepared};
use crate::source::disk::{DataAt, SourceRead};
use tape_devices::changer::TapeLibrary;

/// Pieces of the full in flight between its reader and the writer. A piece is at most
/// one record's data (a few MiB), so this bounds the memory of the stream.
pub const CHANNEL_DEPTH: usize = crate::backup::PIPELINE_DEPTH * 2;

/// The incrementals' bytes, staged.
pub struct Staged {
    /// Sparse scratch file (no name): the incrementals' supplied bytes at their disk
    /// offsets.
    pub file: File,
    /// The bytes the incrementals supply (read from `file`), spooled.
    pub data: ExtentList,
    /// Data bytes staged.
    pub bytes: u64,
    /// Cartridges mounted, in order.
    pub mounts: Vec<String>,
}

fn plan_err(e: std::io::Error) -> Error {
    Error::Failed(format!(
        "reading or writing the restore plan's extents in their temporary file (check the space in TMPDIR): {e}"
    ))
}

/// Whether segment `s` of chain image `i` holds bytes the point needs.
fn needed(p: &Prepared, i: usize, s: &Segment) -> bool {
    !p.plans[i].can_skip_segment(s.disk_start, s.disk_end.saturating_sub(s.disk_start))
}

fn locations(p: &Prepared) -> HashMap<String, String> {
    p.pull_list
        .iter()
        .map(|i| (i.barcode.clone(), i.location.clone()))
        .collect()
}

/// Whether `p` can take the two-drive path: its chain starts with a full.
pub fn applies(p: &Prepared) -> bool {
    p.chain.first().is_some_and(|f| f.kind == ImageKind::Full) && p.chain.len() >= 2
}

/// Read what the chain's incrementals (chain images 1..) supply into a sparse scratch
/// file, in media order, each cartridge once.
pub fn stage_incrementals(
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    p: &Prepared,
    events: &dyn Events,
) -> Result<Staged> {
    let file = tempfile::tempfile()
        .and_then(|f| {
            // The disk's size up front (a hole): zero pages left unwritten at the end
            // of the last piece still read back.
            f.set_len(p.target().disk_size)?;
            Ok(f)
        })
        .map_err(|e| {
            Error::Failed(format!(
                "cannot create the scratch file for the chain's incrementals in the temporary directory ($TMPDIR): {e}"
            ))
        })?;
    let lists: Vec<&ExtentList> = p.plans[1..].iter().map(|plan| &plan.data).collect();
    let data = ExtentList::union(&lists).map_err(plan_err)?;
    events.task("staging incrementals", data.total_bytes());
    let mut reader = MediaReader::new(lib, locations(p));
    let mut opener = Opener::new()?;
    let mut bytes = 0u64;
    let r = (|| -> Result<()> {
        for &i in p.order.iter().filter(|&&i| i != 0) {
            let img = &p.chain[i];
            let plan = &p.plans[i];
            let mut supplied = 0u64;
            let mut pieces = Vec::new();
            let mut on_data = |offset: u64, b: &[u8]| -> Result<()> {
                pieces.clear();
                plan.data
                    .intersect_into(offset, b.len() as u64, &mut pieces)
                    .map_err(|e| {
                        Error::Failed(format!(
                            "reading back the restore plan from its temporary file: {e}"
                        ))
                    })?;
                for &x in &pieces {
                    let from = (x.offset - offset) as usize;
                    write_sparse(&file, &b[from..from + x.len as usize], x.offset)
                        .map_err(|e| {
                            Error::Failed(format!(
                                "writing the chain's incrementals to the scratch file in $TMPDIR: {e}"
                            ))
                        })?;
                    supplied += x.len;
                    events.progress(x.len);
                }
                Ok(())
            };
            read_image(
                &mut reader,
                keys,
                &mut opener,
                img,
                &p.segments[i],
                &|s| needed(p, i, s),
                &mut on_data,
            )?;
            if supplied != plan.data.total_bytes() {
                return Err(Error::Integrity(format!(
                    "image {} supplied {supplied} of the {} data bytes the catalog says it holds for this point: records are missing",
                    img.uuid,
                    plan.data.total_bytes()
                )));
            }
            bytes += supplied;
        }
        Ok(())
    })();
    let released = reader.release();
    let mounts = std::mem::take(&mut reader.mounted);
    events.emit(crate::events::Event::TaskEnded);
    r?;
    released?;
    Ok(Staged {
        file,
        data,
        bytes,
        mounts,
    })
}

/// Pages of zeros a staged piece skips (the scratch file is new: what is not written
/// reads as zeros, and takes no space).
const SPARSE_PAGE: usize = 4096;

/// Write `b` at `at` in a new file, leaving its whole zero pages (aligned to the disk
/// offset) unwritten: a changed area is widened to its 64 KiB tracking block, mostly
/// zeros when a few KiB changed, and the scratch file then takes what changed.
fn write_sparse(file: &File, b: &[u8], at: u64) -> std::io::Result<()> {
    let page = SPARSE_PAGE as u64;
    // Start of the current run of pages holding data.
    let mut run: Option<usize> = None;
    let mut i = 0usize;
    while i < b.len() {
        let page_end = ((at + i as u64) / page + 1) * page;
        let end = ((page_end - at) as usize).min(b.len());
        let zero = crate::source::disk::is_zero(&b[i..end]);
        match (zero, run) {
            (false, None) => run = Some(i),
            (true, Some(s)) => {
                file.write_all_at(&b[s..i], at + s as u64)?;
                run = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(s) = run {
        file.write_all_at(&b[s..], at + s as u64)?;
    }
    Ok(())
}

/// What the full's reader hands on.
pub enum Piece {
    /// Bytes the full supplies at this disk offset.
    Data(u64, Vec<u8>),
    /// Every needed record was read and checked, and supplied what the catalog says.
    End,
}

/// The reader side's channel ends (pieces out, buffers back).
pub type ReaderEnd = (SyncSender<Piece>, Receiver<Vec<u8>>);

/// What the full's reader needs (a [`Prepared`] stays on the writer's thread).
pub struct FullRead {
    pub image: crate::catalog::ImageRow,
    pub segments: Vec<Segment>,
    pub plan: crate::restore::ImagePlan,
    pub locations: HashMap<String, String>,
}

impl FullRead {
    pub fn of(p: &Prepared) -> FullRead {
        FullRead {
            image: p.chain[0].clone(),
            segments: p.segments[0].clone(),
            plan: p.plans[0].clone(),
            locations: locations(p),
        }
    }
}

/// Read the full (chain image 0) on `lib`'s drive and send the bytes it supplies to
/// the point in disk order; `End` only when all checks passed.
pub fn read_full(
    lib: &mut dyn TapeLibrary,
    keys: &KeyRing,
    f: &FullRead,
    (tx, free): ReaderEnd,
) -> Result<(ImageRead, Vec<String>)> {
    let img = &f.image;
    let plan = &f.plan;
    let mut reader = MediaReader::new(lib, f.locations.clone());
    let mut opener = Opener::new()?;
    let mut next = 0u64;
    let mut supplied = 0u64;
    let stopped = || Error::Failed("the synthetic full's writer stopped".into());
    let r = read_image(
        &mut reader,
        keys,
        &mut opener,
        img,
        &f.segments,
        &|s| !plan.can_skip_segment(s.disk_start, s.disk_end.saturating_sub(s.disk_start)),
        &mut |offset, b| {
            let mut pieces = Vec::new();
            plan.data
                .intersect_into(offset, b.len() as u64, &mut pieces)
                .map_err(|e| {
                    Error::Failed(format!(
                        "reading back the restore plan from its temporary file: {e}"
                    ))
                })?;
            for x in pieces {
                if x.offset < next {
                    return Err(Error::Failed(format!(
                        "the records of full image {} are not in disk order (bytes at {} after bytes up to {next}): the two-drive synthetic full streams a full front to back; build it with one drive (the scratch-file path)",
                        img.uuid, x.offset
                    )));
                }
                let from = (x.offset - offset) as usize;
                let mut buf = free.try_recv().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(&b[from..from + x.len as usize]);
                tx.send(Piece::Data(x.offset, buf)).map_err(|_| stopped())?;
                next = x.offset + x.len;
                supplied += x.len;
            }
            Ok(())
        },
    );
    let released = reader.release();
    let mounts = std::mem::take(&mut reader.mounted);
    let read = r?;
    released?;
    if supplied != plan.data.total_bytes() {
        return Err(Error::Integrity(format!(
            "image {} supplied {supplied} of the {} data bytes the catalog says it holds for this point: records are missing",
            img.uuid,
            plan.data.total_bytes()
        )));
    }
    tx.send(Piece::End).map_err(|_| stopped())?;
    Ok((read, mounts))
}

struct Feed {
    /// None once closed ([`Merged::close`]).
    rx: Option<Receiver<Piece>>,
    free: SyncSender<Vec<u8>>,
    /// The piece being consumed: (disk offset, bytes, bytes of it already used).
    cur: Option<(u64, Vec<u8>)>,
    ended: bool,
}

impl Feed {
    fn broken(&self) -> std::io::Error {
        std::io::Error::other(
            "reading the full from tape stopped before its end (its reader's error says why)",
        )
    }

    /// The next piece, into `cur`; false at the end.
    fn advance(&mut self) -> std::io::Result<bool> {
        if let Some((_, b)) = self.cur.take() {
            let _ = self.free.try_send(b);
        }
        if self.ended {
            return Ok(false);
        }
        let Some(rx) = &self.rx else {
            return Err(self.broken());
        };
        match rx.recv() {
            Ok(Piece::Data(o, b)) => {
                self.cur = Some((o, b));
                Ok(true)
            }
            Ok(Piece::End) => {
                self.ended = true;
                Ok(false)
            }
            Err(_) => Err(self.broken()),
        }
    }

    /// Wait for the first piece (so the reader holds its drive before the writer
    /// chooses one). Errors when the reader stopped.
    fn prime(&mut self) -> std::io::Result<()> {
        if self.cur.is_none() && !self.ended {
            self.advance()?;
        }
        Ok(())
    }

    /// Copy the full's bytes of `[off, off + dst.len())` into `dst`, in disk order.
    fn take(&mut self, mut off: u64, mut dst: &mut [u8]) -> std::io::Result<()> {
        while !dst.is_empty() {
            if self.cur.is_none() && !self.advance()? {
                return Err(std::io::Error::other(format!(
                    "the full's records ended before disk byte {off}, which the catalog says it holds"
                )));
            }
            let (po, pb) = self.cur.as_ref().expect("a piece");
            let (po, pend) = (*po, *po + pb.len() as u64);
            if pend <= off {
                // A piece before the offset asked for: the writer skipped it.
                self.advance()?;
                continue;
            }
            if po > off {
                return Err(std::io::Error::other(format!(
                    "the full's records hold no bytes at disk offset {off} (next at {po}), which the catalog says they do"
                )));
            }
            let n = ((pend - off) as usize).min(dst.len());
            let from = (off - po) as usize;
            dst[..n].copy_from_slice(&pb[from..from + n]);
            dst = &mut dst[n..];
            off += n as u64;
            if off >= pend {
                self.advance()?;
            }
        }
        Ok(())
    }

    /// After the disk's last byte was asked for: the reader must have ended with every
    /// check passed.
    fn finish(&mut self) -> std::io::Result<()> {
        loop {
            if let Some((o, _)) = self.cur.as_ref() {
                return Err(std::io::Error::other(format!(
                    "the full supplied bytes at disk offset {o} that the synthetic full did not take"
                )));
            }
            if self.ended {
                return Ok(());
            }
            self.advance()?;
        }
    }
}

/// The disk at the point, read in disk order: staged incrementals' bytes, the full's
/// streamed bytes, zeros elsewhere.
pub struct Merged {
    size: u64,
    staged: File,
    /// End of the last data byte: the read reaching it is the last to take bytes of
    /// the full, and waits for the reader's end.
    data_end: u64,
    state: Mutex<State>,
}

/// What a read of [`Merged`] moves along: the full's feed and the positions in the
/// extent lists.
struct State {
    feed: Feed,
    /// The bytes the full supplies.
    full: Seeker,
    /// The bytes the staged incrementals supply.
    staged: Seeker,
    /// Where any data lies (the rest reads as zeros and is reported as holes).
    all: Seeker,
    /// Scratch for the pieces of one read.
    pieces: Vec<Extent>,
}

/// The feed's channel ends (pieces in, buffers back).
pub type FeedEnd = (Receiver<Piece>, SyncSender<Vec<u8>>);

/// The channel between [`read_full`] and a [`Merged`].
pub fn channel() -> (ReaderEnd, FeedEnd) {
    let (tx, rx) = sync_channel(CHANNEL_DEPTH);
    let (free_tx, free_rx) = sync_channel(CHANNEL_DEPTH + 2);
    ((tx, free_rx), (rx, free_tx))
}

impl Merged {
    pub fn new(p: &Prepared, staged: Staged, feed: FeedEnd) -> Result<Merged> {
        Merged::from_parts(p.target().disk_size, p.plans[0].data.clone(), staged, feed)
    }

    /// A disk of `size` bytes: the full supplies `full_data` (through `feed`, in disk
    /// order), the staged file the rest of the data; bytes past `size` are not read.
    pub fn from_parts(
        size: u64,
        full_data: ExtentList,
        staged: Staged,
        (rx, free): FeedEnd,
    ) -> Result<Merged> {
        let all_data = ExtentList::union(&[&full_data, &staged.data]).map_err(plan_err)?;
        let data_end = all_data.end_before(size).map_err(plan_err)?;
        Ok(Merged {
            size,
            staged: staged.file,
            data_end,
            state: Mutex::new(State {
                feed: Feed {
                    rx: Some(rx),
                    free,
                    cur: None,
                    ended: false,
                },
                full: Seeker::new(full_data).map_err(plan_err)?,
                staged: Seeker::new(staged.data).map_err(plan_err)?,
                all: Seeker::new(all_data).map_err(plan_err)?,
                pieces: Vec::new(),
            }),
        })
    }

    /// Wait until the full's reader delivered its first bytes (or ended).
    pub fn prime(&self) -> std::io::Result<()> {
        self.lock()?.feed.prime()
    }

    /// Drop the receiving end: a reader blocked on the full channel stops (its next
    /// send fails), whoever still holds this source.
    pub fn close(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.feed.rx = None;
            st.feed.cur = None;
        }
    }

    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| std::io::Error::other("the synthetic full's feed was poisoned"))
    }
}

impl SourceRead for Merged {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        let buf = &mut buf[..n];
        buf.fill(0);
        let mut guard = self.lock()?;
        let st = &mut *guard;
        st.pieces.clear();
        st.full.intersect_into(offset, n as u64, &mut st.pieces)?;
        for x in &st.pieces {
            let from = (x.offset - offset) as usize;
            st.feed
                .take(x.offset, &mut buf[from..from + x.len as usize])?;
        }
        st.pieces.clear();
        st.staged.intersect_into(offset, n as u64, &mut st.pieces)?;
        for x in &st.pieces {
            let from = (x.offset - offset) as usize;
            self.staged
                .read_exact_at(&mut buf[from..from + x.len as usize], x.offset)?;
        }
        if offset + n as u64 >= self.data_end {
            st.feed.finish()?;
        }
        Ok(n)
    }

    fn find_data(&self, from: u64) -> std::io::Result<DataAt> {
        let mut st = self.lock()?;
        let next = if from < self.size {
            st.all.next_from(from)?.filter(|x| x.offset < self.size)
        } else {
            None
        };
        match next {
            Some(x) => Ok(DataAt::Run(x.offset.max(from), x.end().min(self.size))),
            // (The writer may ask ahead of its reads: the reader's end is awaited by
            // the read of the last data byte, or here when there is no data at all.)
            None => {
                if self.data_end == 0 {
                    st.feed.finish()?;
                }
                Ok(DataAt::HoleToEnd {
                    file_len: self.size,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list spooled with a limit of 2 (through its temporary file).
    fn list(r: &[(u64, u64)]) -> ExtentList {
        ExtentList::from_ascending(r.iter().map(|&(o, l)| Ok(Extent::new(o, l))), 2).unwrap()
    }

    /// A disk of 1000 bytes: the full has bytes 0..300 and 500..900 (value 1), the
    /// staged incrementals 250..350 (value 2, newer: the planner took 250..300 from
    /// the full's share) and 950..1000; 350..500 and 900..950 are zeros.
    fn disk(send: &[(u64, u64)], end: bool) -> Merged {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&[2u8; 100], 250).unwrap();
        file.write_all_at(&[2u8; 50], 950).unwrap();
        let staged = Staged {
            file,
            data: list(&[(250, 100), (950, 50)]),
            bytes: 150,
            mounts: Vec::new(),
        };
        let ((tx, _free_rx), feed) = channel();
        let pieces: Vec<(u64, u64)> = send.to_vec();
        std::thread::spawn(move || {
            for (o, l) in pieces {
                if tx.send(Piece::Data(o, vec![1u8; l as usize])).is_err() {
                    return;
                }
            }
            if end {
                let _ = tx.send(Piece::End);
            }
        });
        Merged::from_parts(1000, list(&[(0, 250), (500, 400)]), staged, feed).unwrap()
    }

    fn expected() -> Vec<u8> {
        let mut v = vec![0u8; 1000];
        v[..250].fill(1);
        v[250..350].fill(2);
        v[500..900].fill(1);
        v[950..].fill(2);
        v
    }

    #[test]
    fn staged_pieces_leave_zero_pages_unwritten() {
        let file = tempfile::tempfile().unwrap();
        // A piece from disk offset 1000: zeros to 8192, data to 9000, zeros to
        // 20480, data on its last byte.
        let at = 1000u64;
        let mut b = vec![0u8; 20481 - 1000];
        b[8192 - 1000..9000 - 1000].fill(7);
        b[20480 - 1000] = 9;
        write_sparse(&file, &b, at).unwrap();
        let mut back = vec![0xAAu8; b.len()];
        file.read_exact_at(&mut back, at).unwrap();
        assert_eq!(back, b);
        // Two pages written: 8192..12288 and 20480..20481.
        use std::os::unix::fs::MetadataExt;
        assert!(file.metadata().unwrap().blocks() * 512 <= 3 * 4096);
    }

    #[test]
    fn merges_the_full_and_the_staged_extents_in_disk_order() {
        let m = disk(&[(0, 100), (100, 150), (500, 400)], true);
        m.prime().unwrap();
        assert_eq!(m.find_data(0).unwrap(), DataAt::Run(0, 350));
        assert_eq!(m.find_data(350).unwrap(), DataAt::Run(500, 900));
        // The writer may ask ahead of its reads.
        assert_eq!(
            m.find_data(1000).unwrap(),
            DataAt::HoleToEnd { file_len: 1000 }
        );
        let mut out = vec![9u8; 1000];
        for off in (0..1000).step_by(128) {
            let n = m
                .read_at(&mut out[off..(off + 128).min(1000)], off as u64)
                .unwrap();
            assert_eq!(n, 128.min(1000 - off));
        }
        assert_eq!(out, expected());
    }

    #[test]
    fn a_full_that_stops_early_or_lacks_bytes_fails_the_read() {
        // No End: the read of the last data byte fails.
        let m = disk(&[(0, 250), (500, 400)], false);
        let mut out = vec![0u8; 1000];
        let e = m.read_at(&mut out, 0).unwrap_err();
        assert!(e.to_string().contains("stopped before its end"), "{e}");
        // A gap where the catalog says the full has bytes.
        let m = disk(&[(0, 250), (600, 300)], true);
        let e = m.read_at(&mut out, 0).unwrap_err();
        assert!(e.to_string().contains("at disk offset 500"), "{e}");
        // Bytes the writer never took.
        let m = disk(&[(0, 250), (500, 400), (900, 10)], true);
        let e = m.read_at(&mut out, 0).unwrap_err();
        assert!(e.to_string().contains("did not take"), "{e}");
    }
}
