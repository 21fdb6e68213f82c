//! Extent lists whose memory does not follow their length.
//!
//! A changed-extents file, a hash scan's result or an image's coverage may hold
//! millions of extents (16 M scattered 4 KiB areas are 256 MiB as bare `(offset,
//! length)` pairs, more in a tree). These lists are kept here: the newest items in
//! memory, up to a limit ([`run_limit`]: 256 k items by default), the rest in an unnamed
//! temporary file (gone when the list is dropped, or when the process dies).
//!
//! * [`Spool`]: an append-only sequence (items arrive in order: a hash scan's changes,
//!   the coverage a backup writes), finished into an [`ItemList`] that can be read from
//!   the start as many times as needed, each reader owning its handle.
//! * [`SortedExtents`]: extents arriving in any order, overlapping or not (a
//!   changed-extents file): each full buffer is sorted, coalesced and written as a
//!   run; [`SortedExtents::finish`] merges the runs (a k-way merge by offset) into one
//!   sorted, coalesced [`ExtentList`].
//!
//! The limit can be lowered with the environment variable `TAPEVAULT_EXTENT_RUN`
//! (items, at least 2), which tests use to take the on-disk paths with a few hundred
//! extents.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::extents::Extent;

/// Items held in memory before a list spills to its temporary file.
pub const DEFAULT_RUN_LIMIT: usize = 1 << 18;

/// Environment variable overriding [`DEFAULT_RUN_LIMIT`] (tests use a small one).
pub const RUN_LIMIT_ENV: &str = "TAPEVAULT_EXTENT_RUN";

/// Bytes read at a time from a spool file by one reader.
const READ_CHUNK: usize = 32 * 1024;

/// The number of items a list keeps in memory: `TAPEVAULT_EXTENT_RUN` if set to a
/// number of at least 2, else [`DEFAULT_RUN_LIMIT`].
pub fn run_limit() -> usize {
    std::env::var(RUN_LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 2)
        .unwrap_or(DEFAULT_RUN_LIMIT)
}

/// A fixed-size binary encoding for spooled items.
pub trait Item: Copy + Send + Sync + 'static {
    const SIZE: usize;
    fn put(&self, out: &mut [u8]);
    fn get(b: &[u8]) -> Self;
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Item for Extent {
    const SIZE: usize = 16;
    fn put(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        Extent::new(u64_at(b, 0), u64_at(b, 8))
    }
}

impl Item for crate::catalog::Extent {
    const SIZE: usize = 17;
    fn put(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.length.to_le_bytes());
        out[16] = self.is_zero as u8;
    }
    fn get(b: &[u8]) -> Self {
        crate::catalog::Extent {
            offset: u64_at(b, 0),
            length: u64_at(b, 8),
            is_zero: b[16] != 0,
        }
    }
}

fn write_items<T: Item>(mut file: &File, items: &[T]) -> io::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK / T::SIZE * T::SIZE];
    for chunk in items.chunks(buf.len() / T::SIZE) {
        let n = chunk.len() * T::SIZE;
        for (i, x) in chunk.iter().enumerate() {
            x.put(&mut buf[i * T::SIZE..(i + 1) * T::SIZE]);
        }
        file.write_all(&buf[..n])?;
    }
    Ok(())
}

/// An append-only list: the oldest items in a temporary file, the newest (at most the
/// run limit) in memory.
pub struct Spool<T: Item> {
    file: Option<Arc<File>>,
    on_disk: u64,
    mem: Vec<T>,
    limit: usize,
}

impl<T: Item> Default for Spool<T> {
    fn default() -> Self {
        Spool::new()
    }
}

impl<T: Item> Spool<T> {
    /// An empty spool with the limit of [`run_limit`].
    pub fn new() -> Self {
        Spool::with_limit(run_limit())
    }

    /// An empty spool that keeps at most `limit` (at least 2) items in memory.
    pub fn with_limit(limit: usize) -> Self {
        Spool {
            file: None,
            on_disk: 0,
            mem: Vec::new(),
            limit: limit.max(2),
        }
    }

    /// Items appended so far.
    pub fn len(&self) -> u64 {
        self.on_disk + self.mem.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some items went to the temporary file.
    pub fn spilled(&self) -> bool {
        self.on_disk > 0
    }

    /// Appends `x`. When the memory part is full, all of it but the last item goes to
    /// the file (the last stays, so [`last_mut`](Self::last_mut) can still extend it).
    pub fn push(&mut self, x: T) -> io::Result<()> {
        self.mem.push(x);
        if self.mem.len() >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    /// The newest item, to extend it in place.
    pub fn last_mut(&mut self) -> Option<&mut T> {
        self.mem.last_mut()
    }

    /// The newest item.
    pub fn last(&self) -> Option<&T> {
        self.mem.last()
    }

    fn spill(&mut self) -> io::Result<()> {
        let keep = self.mem.len().saturating_sub(1);
        if keep == 0 {
            return Ok(());
        }
        let file = match &self.file {
            Some(f) => f,
            None => self.file.insert(Arc::new(tempfile::tempfile()?)),
        };
        write_items(file, &self.mem[..keep])?;
        self.on_disk += keep as u64;
        self.mem.drain(..keep);
        Ok(())
    }

    /// Writes `items` after everything appended so far, straight to the file. For a
    /// caller that keeps its own bounded buffer (a [`Vec`] it extends in place) and
    /// hands over all of it but the last item when it is full; the memory part of this
    /// spool must then stay empty (use [`push`](Self::push) or this, not both).
    pub fn append_to_file(&mut self, items: &[T]) -> io::Result<()> {
        debug_assert!(self.mem.is_empty(), "append_to_file after push");
        if items.is_empty() {
            return Ok(());
        }
        let file = match &self.file {
            Some(f) => f,
            None => self.file.insert(Arc::new(tempfile::tempfile()?)),
        };
        write_items(file, items)?;
        self.on_disk += items.len() as u64;
        Ok(())
    }

    /// The finished list: what went to the file, then `tail` (the caller's buffer of
    /// [`append_to_file`](Self::append_to_file)).
    pub fn finish_with(mut self, tail: Vec<T>) -> io::Result<ItemList<T>> {
        debug_assert!(self.mem.is_empty(), "finish_with after push");
        self.mem = tail;
        self.finish()
    }

    /// The finished list, readable from the start any number of times.
    pub fn finish(mut self) -> io::Result<ItemList<T>> {
        self.mem.shrink_to_fit();
        Ok(ItemList {
            file: self.file,
            on_disk: self.on_disk,
            tail: Arc::new(self.mem),
        })
    }
}

impl<T: Item> std::fmt::Debug for Spool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("on_disk", &self.on_disk)
            .field("in_memory", &self.mem.len())
            .finish()
    }
}

/// An image's coverage being built in disk order (a backup writing it, a rebuild
/// scanning it): the newest rows in `tail`, which the segment builder extends in place
/// (its last row may still grow), the older ones in a temporary file once `tail`
/// holds [`run_limit`] rows.
#[derive(Debug, Default)]
pub struct CoverageBuf {
    pub tail: Vec<crate::catalog::Extent>,
    spool: Spool<crate::catalog::Extent>,
}

impl CoverageBuf {
    pub fn new() -> Self {
        CoverageBuf::default()
    }

    /// A coverage held in memory (read back from the catalog).
    pub fn from_vec(tail: Vec<crate::catalog::Extent>) -> Self {
        CoverageBuf {
            tail,
            spool: Spool::new(),
        }
    }

    /// After rows were added to `tail`: when it holds the limit, all of it but the
    /// last row goes to the temporary file.
    pub fn spill_if_full(&mut self) -> io::Result<()> {
        if self.tail.len() >= self.spool.limit {
            let keep = self.tail.len() - 1;
            self.spool.append_to_file(&self.tail[..keep])?;
            self.tail.drain(..keep);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.tail.is_empty() && self.spool.is_empty()
    }

    /// Every row in order: the spooled ones, then the tail.
    pub fn reader(&self) -> impl Iterator<Item = io::Result<crate::catalog::Extent>> + '_ {
        let spooled = ListReader {
            file: self.spool.file.clone(),
            on_disk: self.spool.on_disk,
            next: 0,
            buf: Vec::new(),
            at: 0,
            tail: Arc::new(Vec::new()),
            tail_at: 0,
        };
        spooled.chain(self.tail.iter().map(|e| Ok(*e)))
    }

    /// The finished list of every row.
    pub fn finish(self) -> io::Result<ItemList<crate::catalog::Extent>> {
        self.spool.finish_with(self.tail)
    }

    /// Every row (what is kept in the catalog for a later join).
    pub fn to_vec(&self) -> io::Result<Vec<crate::catalog::Extent>> {
        self.reader().collect()
    }
}

/// A finished list of items: cheap to clone (the file and the tail are shared).
pub struct ItemList<T: Item> {
    file: Option<Arc<File>>,
    on_disk: u64,
    tail: Arc<Vec<T>>,
}

impl<T: Item> Clone for ItemList<T> {
    fn clone(&self) -> Self {
        ItemList {
            file: self.file.clone(),
            on_disk: self.on_disk,
            tail: self.tail.clone(),
        }
    }
}

impl<T: Item> std::fmt::Debug for ItemList<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemList")
            .field("on_disk", &self.on_disk)
            .field("in_memory", &self.tail.len())
            .finish()
    }
}

impl<T: Item> Default for ItemList<T> {
    fn default() -> Self {
        ItemList {
            file: None,
            on_disk: 0,
            tail: Arc::new(Vec::new()),
        }
    }
}

impl<T: Item> ItemList<T> {
    /// A list held in memory.
    pub fn from_vec(v: Vec<T>) -> Self {
        ItemList {
            file: None,
            on_disk: 0,
            tail: Arc::new(v),
        }
    }

    pub fn len(&self) -> u64 {
        self.on_disk + self.tail.len() as u64
    }

    /// How many of the items are held in memory (the rest are in the file).
    pub fn in_memory(&self) -> usize {
        self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether part of the list lies in its temporary file.
    pub fn spilled(&self) -> bool {
        self.on_disk > 0
    }

    /// A reader from the first item; it owns its handles (the list may be dropped).
    pub fn reader(&self) -> ListReader<T> {
        ListReader {
            file: self.file.clone(),
            on_disk: self.on_disk,
            next: 0,
            buf: Vec::new(),
            at: 0,
            tail: self.tail.clone(),
            tail_at: 0,
        }
    }

    /// Every item, in order (for tests and small lists).
    pub fn to_vec(&self) -> io::Result<Vec<T>> {
        self.reader().collect()
    }

    /// Item `k` (< [`len`](Self::len)): one read of the file, or the memory tail.
    pub fn get(&self, k: u64) -> io::Result<T> {
        if k >= self.on_disk {
            return Ok(self.tail[(k - self.on_disk) as usize]);
        }
        let file = self.file.as_ref().expect("items on disk have a file");
        let mut b = [0u8; 64];
        let b = &mut b[..T::SIZE];
        file.read_exact_at(b, k * T::SIZE as u64)?;
        Ok(T::get(b))
    }

    /// The first index whose item does not satisfy `pred`, for a `pred` true on a
    /// prefix of the list (a binary search: O(log n) reads of the file).
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> io::Result<u64> {
        let (mut lo, mut hi) = (0u64, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(&self.get(mid)?) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// A reader from item `k` on.
    pub fn reader_from(&self, k: u64) -> ListReader<T> {
        let mut r = self.reader();
        if k >= self.on_disk {
            r.next = self.on_disk;
            r.tail_at = (k - self.on_disk) as usize;
        } else {
            r.next = k;
        }
        r
    }
}

/// Reads an [`ItemList`] from its start: the file in chunks, then the memory tail.
pub struct ListReader<T: Item> {
    file: Option<Arc<File>>,
    on_disk: u64,
    /// Items read from the file so far.
    next: u64,
    buf: Vec<u8>,
    at: usize,
    tail: Arc<Vec<T>>,
    tail_at: usize,
}

impl<T: Item> ListReader<T> {
    fn refill(&mut self) -> io::Result<()> {
        let file = self.file.as_ref().expect("items on disk have a file");
        let per = (READ_CHUNK / T::SIZE).max(1) as u64;
        let n = per.min(self.on_disk - self.next) as usize;
        self.buf.resize(n * T::SIZE, 0);
        file.read_exact_at(&mut self.buf, self.next * T::SIZE as u64)?;
        self.next += n as u64;
        self.at = 0;
        Ok(())
    }
}

impl<T: Item> Iterator for ListReader<T> {
    type Item = io::Result<T>;
    fn next(&mut self) -> Option<io::Result<T>> {
        if self.at >= self.buf.len() && self.next < self.on_disk {
            if let Err(e) = self.refill() {
                self.next = self.on_disk;
                self.buf.clear();
                return Some(Err(e));
            }
        }
        if self.at < self.buf.len() {
            let x = T::get(&self.buf[self.at..self.at + T::SIZE]);
            self.at += T::SIZE;
            return Some(Ok(x));
        }
        let x = self.tail.get(self.tail_at).copied()?;
        self.tail_at += 1;
        Some(Ok(x))
    }
}

/// A sorted list of disjoint, non-adjacent extents (ascending), with its totals.
#[derive(Debug, Clone, Default)]
pub struct ExtentList {
    items: ItemList<Extent>,
    total_bytes: u64,
}

impl ExtentList {
    /// Number of (coalesced) extents.
    pub fn range_count(&self) -> u64 {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Whether part of the list lies in its temporary file.
    pub fn spilled(&self) -> bool {
        self.items.spilled()
    }

    /// The extents in ascending order.
    pub fn reader(&self) -> ListReader<Extent> {
        self.items.reader()
    }

    /// Every extent (for tests and small lists).
    pub fn to_vec(&self) -> io::Result<Vec<Extent>> {
        self.items.to_vec()
    }

    /// A list of extents already sorted, disjoint and not touching.
    pub fn from_items(items: ItemList<Extent>, total_bytes: u64) -> ExtentList {
        ExtentList { items, total_bytes }
    }

    /// Appends to `out` the parts of `[offset, offset + len)` in the list, ascending:
    /// a binary search for the first extent ending after `offset`, then a walk.
    pub fn intersect_into(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> io::Result<()> {
        let query = Extent::new(offset, len);
        if len == 0 || self.is_empty() {
            return Ok(());
        }
        let first = self.items.partition_point(|e| e.end() <= offset)?;
        for e in self.items.reader_from(first) {
            let e = e?;
            if e.offset >= query.end() {
                break;
            }
            if let Some(x) = e.intersection(&query) {
                out.push(x);
            }
        }
        Ok(())
    }

    /// Whether any byte of `[offset, offset + len)` is in the list.
    pub fn overlaps(&self, offset: u64, len: u64) -> io::Result<bool> {
        if len == 0 || self.is_empty() {
            return Ok(false);
        }
        let first = self.items.partition_point(|e| e.end() <= offset)?;
        if first >= self.items.len() {
            return Ok(false);
        }
        Ok(self.items.get(first)?.offset < offset.saturating_add(len))
    }

    /// The list as an in-memory interval set (for the callers that still combine sets:
    /// memory then follows the number of extents).
    pub fn to_set(&self) -> io::Result<crate::extents::ExtentSet> {
        let mut set = crate::extents::ExtentSet::new();
        for e in self.reader() {
            let e = e?;
            set.insert(e.offset, e.len);
        }
        Ok(set)
    }

    /// Whether the byte at `offset` is in the list.
    pub fn contains(&self, offset: u64) -> io::Result<bool> {
        self.overlaps(offset, 1)
    }

    /// Builds from extents that come ascending (each starting at or after the end of
    /// the one before), coalescing touching ones. One that comes out of order is an
    /// error naming it.
    pub fn from_ascending<I>(extents: I, limit: usize) -> io::Result<ExtentList>
    where
        I: IntoIterator<Item = io::Result<Extent>>,
    {
        let mut b = Ascending::new(limit);
        for e in extents {
            b.push(e?)?;
        }
        b.finish()
    }

    /// Every extent widened to whole blocks of `block_size` (a power of two), clipped
    /// to `disk_size`, coalesced.
    pub fn aligned(&self, block_size: u64, disk_size: u64) -> io::Result<ExtentList> {
        let mask = block_size - 1;
        let mut b = Ascending::new(run_limit());
        for e in self.reader() {
            let e = e?;
            let start = e.offset & !mask;
            let end = (e.end().saturating_add(mask) & !mask).min(disk_size);
            if end > start {
                b.push_overlapping(Extent::new(start, end - start))?;
            }
        }
        b.finish()
    }
}

impl ExtentList {
    /// The last extent, if any (one read of the file at most).
    pub fn last(&self) -> io::Result<Option<Extent>> {
        match self.items.len() {
            0 => Ok(None),
            n => self.items.get(n - 1).map(Some),
        }
    }

    /// The end of the data before `limit`: the end of the last extent starting before
    /// `limit`, clipped to it (0 when none does). A binary search.
    pub fn end_before(&self, limit: u64) -> io::Result<u64> {
        let k = self.items.partition_point(|e| e.offset < limit)?;
        if k == 0 {
            return Ok(0);
        }
        Ok(self.items.get(k - 1)?.end().min(limit))
    }

    /// The union of `lists`, sorted and coalesced: a k-way merge by offset of their
    /// readers (one read chunk each in memory), the result spooled like any list.
    pub fn union(lists: &[&ExtentList]) -> io::Result<ExtentList> {
        let mut readers: Vec<ListReader<Extent>> = lists.iter().map(|l| l.reader()).collect();
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(e) = r.next() {
                let e = e?;
                heap.push(Reverse(((e.offset, e.len), i)));
            }
        }
        let mut out = Ascending::new(run_limit());
        while let Some(Reverse(((offset, len), i))) = heap.pop() {
            out.push_overlapping(Extent::new(offset, len))?;
            if let Some(e) = readers[i].next() {
                let e = e?;
                heap.push(Reverse(((e.offset, e.len), i)));
            }
        }
        out.finish()
    }
}

/// Steps a [`Seeker`] walks forward before it binary-searches instead.
const SEEK_WALK: usize = 64;

/// A position in an [`ExtentList`] for queries that mostly move forward (a reader
/// walking a disk in order): each query walks on from where the last one stopped (a
/// few steps), else binary-searches the list; memory is one read chunk of the list's
/// file, whatever its length.
pub struct Seeker {
    list: ExtentList,
    /// The first extent not yet passed (None: past the last one).
    cur: Option<Extent>,
    /// End of the extent before `cur` (0 before the first).
    prev_end: u64,
    /// Reads the extents after `cur`.
    reader: ListReader<Extent>,
}

impl std::fmt::Debug for Seeker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seeker")
            .field("list", &self.list)
            .field("cur", &self.cur)
            .finish()
    }
}

impl Seeker {
    pub fn new(list: ExtentList) -> io::Result<Seeker> {
        let mut reader = list.reader();
        let cur = reader.next().transpose()?;
        Ok(Seeker {
            list,
            cur,
            prev_end: 0,
            reader,
        })
    }

    /// The list walked.
    pub fn list(&self) -> &ExtentList {
        &self.list
    }

    fn advance(&mut self) -> io::Result<()> {
        if let Some(c) = self.cur {
            self.prev_end = c.end();
            self.cur = self.reader.next().transpose()?;
        }
        Ok(())
    }

    /// Positions at the first extent ending after `offset`.
    fn seek(&mut self, offset: u64) -> io::Result<()> {
        if offset < self.prev_end {
            return self.jump(offset);
        }
        let mut steps = 0;
        while let Some(c) = self.cur {
            if c.end() > offset {
                return Ok(());
            }
            if steps == SEEK_WALK {
                return self.jump(offset);
            }
            self.advance()?;
            steps += 1;
        }
        Ok(())
    }

    fn jump(&mut self, offset: u64) -> io::Result<()> {
        let items = &self.list.items;
        let k = items.partition_point(|e| e.end() <= offset)?;
        self.prev_end = if k == 0 { 0 } else { items.get(k - 1)?.end() };
        self.reader = items.reader_from(k);
        self.cur = self.reader.next().transpose()?;
        Ok(())
    }

    /// The first extent ending after `offset` (it may start before it), if any.
    pub fn next_from(&mut self, offset: u64) -> io::Result<Option<Extent>> {
        self.seek(offset)?;
        Ok(self.cur)
    }

    /// Appends to `out` the parts of `[offset, offset + len)` in the list, ascending
    /// (what [`ExtentList::intersect_into`] gives, without its binary search when the
    /// queries move forward).
    pub fn intersect_into(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let query = Extent::new(offset, len);
        self.seek(offset)?;
        while let Some(c) = self.cur {
            if c.offset >= query.end() {
                break;
            }
            if let Some(x) = c.intersection(&query) {
                out.push(x);
            }
            if c.end() > query.end() {
                break;
            }
            self.advance()?;
        }
        Ok(())
    }
}

/// Builds an [`ExtentList`] from ascending extents, coalescing touching ones.
pub struct Ascending {
    spool: Spool<Extent>,
    total: u64,
}

impl Ascending {
    /// Keeps at most `limit` extents in memory, the rest in a temporary file.
    pub fn new(limit: usize) -> Self {
        Ascending {
            spool: Spool::with_limit(limit),
            total: 0,
        }
    }

    /// Appends `e`, which must not start before the end of the last one.
    pub fn push(&mut self, e: Extent) -> io::Result<()> {
        if let Some(last) = self.spool.last() {
            if e.offset < last.end() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "extent at {} of length {} comes before the end of the one before ({})",
                        e.offset,
                        e.len,
                        last.end()
                    ),
                ));
            }
        }
        self.push_overlapping(e)
    }

    /// Like `push`, but `e` may overlap the last extent (never start before its start).
    pub fn push_overlapping(&mut self, e: Extent) -> io::Result<()> {
        if e.len == 0 {
            return Ok(());
        }
        if let Some(last) = self.spool.last_mut() {
            if e.offset <= last.end() {
                let end = last.end().max(e.end());
                self.total += end - last.end();
                last.len = end - last.offset;
                return Ok(());
            }
        }
        self.total += e.len;
        self.spool.push(e)
    }

    pub fn finish(self) -> io::Result<ExtentList> {
        Ok(ExtentList {
            items: self.spool.finish()?,
            total_bytes: self.total,
        })
    }
}

/// Collects extents in any order, overlapping or not, into a sorted, coalesced
/// [`ExtentList`], in bounded memory: each full buffer is sorted and written as a run
/// to a temporary file; [`finish`](Self::finish) merges the runs.
pub struct SortedExtents {
    mem: Vec<Extent>,
    limit: usize,
    file: Option<File>,
    /// (first item, item count) of each run in the file.
    runs: Vec<(u64, u64)>,
    on_disk: u64,
}

impl Default for SortedExtents {
    fn default() -> Self {
        SortedExtents::new()
    }
}

/// Sorts and coalesces `v` in place.
fn sort_coalesce(v: &mut Vec<Extent>) {
    v.retain(|e| e.len > 0);
    v.sort_unstable_by_key(|e| e.offset);
    let mut out = 0usize;
    for i in 0..v.len() {
        let e = v[i];
        if out > 0 && e.offset <= v[out - 1].end() {
            let last = &mut v[out - 1];
            let end = last.end().max(e.end());
            last.len = end - last.offset;
        } else {
            v[out] = e;
            out += 1;
        }
    }
    v.truncate(out);
}

impl SortedExtents {
    pub fn new() -> Self {
        SortedExtents::with_limit(run_limit())
    }

    /// Keeps at most `limit` (at least 2) extents in memory.
    pub fn with_limit(limit: usize) -> Self {
        SortedExtents {
            mem: Vec::new(),
            limit: limit.max(2),
            file: None,
            runs: Vec::new(),
            on_disk: 0,
        }
    }

    /// Whether runs went to the temporary file.
    pub fn spilled(&self) -> bool {
        !self.runs.is_empty()
    }

    /// Adds `[offset, offset + len)` (empty ones are dropped).
    pub fn insert(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.mem.push(Extent::new(offset, len));
        if self.mem.len() >= self.limit {
            sort_coalesce(&mut self.mem);
            // A buffer that coalesced well keeps filling.
            if self.mem.len() * 2 >= self.limit {
                self.write_run()?;
            }
        }
        Ok(())
    }

    fn write_run(&mut self) -> io::Result<()> {
        if self.mem.is_empty() {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(tempfile::tempfile()?),
        };
        write_items(file, &self.mem)?;
        self.runs.push((self.on_disk, self.mem.len() as u64));
        self.on_disk += self.mem.len() as u64;
        self.mem.clear();
        Ok(())
    }

    /// The sorted, coalesced list of everything inserted.
    pub fn finish(mut self) -> io::Result<ExtentList> {
        sort_coalesce(&mut self.mem);
        if self.runs.is_empty() {
            let total = self.mem.iter().map(|e| e.len).sum();
            let mem = std::mem::take(&mut self.mem);
            return Ok(ExtentList {
                items: ItemList::from_vec(mem),
                total_bytes: total,
            });
        }
        self.write_run()?;
        let file = Arc::new(self.file.take().expect("runs were written"));
        let mut readers: Vec<ListReader<Extent>> = self
            .runs
            .iter()
            .map(|&(first, count)| ListReader {
                file: Some(file.clone()),
                on_disk: first + count,
                next: first,
                buf: Vec::new(),
                at: 0,
                tail: Arc::new(Vec::new()),
                tail_at: 0,
            })
            .collect();
        // A k-way merge by offset: the heap holds each run's next extent.
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(e) = r.next() {
                let e = e?;
                heap.push(Reverse(((e.offset, e.len), i)));
            }
        }
        let mut out = Ascending::new(self.limit);
        while let Some(Reverse(((offset, len), i))) = heap.pop() {
            out.push_overlapping(Extent::new(offset, len))?;
            if let Some(e) = readers[i].next() {
                let e = e?;
                heap.push(Reverse(((e.offset, e.len), i)));
            }
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extents::ExtentSet;
    use proptest::prelude::*;

    /// The same ranges inserted into a spooled list (at most `limit` in memory) and
    /// into the in-memory interval set.
    fn spooled_and_in_memory(limit: usize, raw: &[(u64, u64)]) -> (ExtentList, ExtentSet) {
        let mut s = SortedExtents::with_limit(limit);
        let mut set = ExtentSet::new();
        for &(o, l) in raw {
            s.insert(o, l).unwrap();
            set.insert(o, l);
        }
        (s.finish().unwrap(), set)
    }

    fn pairs(v: &[Extent]) -> Vec<(u64, u64)> {
        v.iter().map(|e| (e.offset, e.len)).collect()
    }

    #[test]
    fn spool_spills_and_reads_back_in_order() {
        let mut s = Spool::with_limit(3);
        for i in 0..10u64 {
            s.push(Extent::new(i * 10, 5)).unwrap();
        }
        assert!(s.spilled());
        s.last_mut().unwrap().len = 7;
        let list = s.finish().unwrap();
        assert_eq!(list.len(), 10);
        let v = list.to_vec().unwrap();
        assert_eq!(v.len(), 10);
        assert_eq!(v[9], Extent::new(90, 7));
        assert!(v.windows(2).all(|w| w[0].offset < w[1].offset));
        // A second reader reads the same.
        assert_eq!(list.reader().count(), 10);
    }

    #[test]
    fn catalog_extents_round_trip() {
        let mut s = Spool::with_limit(2);
        let items = [
            crate::catalog::Extent {
                offset: 0,
                length: 4096,
                is_zero: false,
            },
            crate::catalog::Extent {
                offset: 4096,
                length: u64::MAX >> 1,
                is_zero: true,
            },
            crate::catalog::Extent {
                offset: u64::MAX - 1,
                length: 1,
                is_zero: false,
            },
        ];
        for x in items {
            s.push(x).unwrap();
        }
        assert_eq!(s.finish().unwrap().to_vec().unwrap(), items.to_vec());
    }

    #[test]
    fn aligned_widens_and_coalesces() {
        let mut s = SortedExtents::with_limit(2);
        for (o, l) in [(70_000, 10), (5, 1), (65_536, 1), (200_000, 100_000)] {
            s.insert(o, l).unwrap();
        }
        let list = s.finish().unwrap();
        let a = list.aligned(65_536, 250_000).unwrap();
        assert_eq!(
            pairs(&a.to_vec().unwrap()),
            vec![(0, 131_072), (196_608, 250_000 - 196_608)]
        );
        assert_eq!(a.total_bytes(), 131_072 + 250_000 - 196_608);
    }

    #[test]
    fn coverage_buf_spills_all_but_the_growing_row() {
        let mut c = CoverageBuf::from_vec(Vec::new());
        c.spool = Spool::with_limit(2);
        let row = |offset, length, is_zero| crate::catalog::Extent {
            offset,
            length,
            is_zero,
        };
        for i in 0..5u64 {
            c.tail.push(row(i * 10, 10, i % 2 == 0));
            c.spill_if_full().unwrap();
        }
        // The last row stays in memory and may still grow.
        assert_eq!(c.tail.len(), 1);
        c.tail.last_mut().unwrap().length = 15;
        let v = c.to_vec().unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[4], row(40, 15, true));
        assert_eq!(c.finish().unwrap().to_vec().unwrap(), v);
    }

    fn list_of(limit: usize, r: &[(u64, u64)]) -> ExtentList {
        let mut s = SortedExtents::with_limit(limit);
        for &(o, l) in r {
            s.insert(o, l).unwrap();
        }
        let l = s.finish().unwrap();
        ExtentList::from_ascending(l.reader(), limit).unwrap()
    }

    #[test]
    fn union_last_and_end_before() {
        let a = list_of(2, &[(0, 10), (100, 10), (300, 50)]);
        let b = list_of(2, &[(10, 5), (200, 10), (340, 100)]);
        let u = ExtentList::union(&[&a, &b, &ExtentList::default()]).unwrap();
        assert_eq!(
            pairs(&u.to_vec().unwrap()),
            vec![(0, 15), (100, 10), (200, 10), (300, 140)]
        );
        assert_eq!(u.total_bytes(), 15 + 10 + 10 + 140);
        assert_eq!(u.last().unwrap(), Some(Extent::new(300, 140)));
        assert_eq!(ExtentList::default().last().unwrap(), None);
        assert_eq!(u.end_before(1000).unwrap(), 440);
        assert_eq!(u.end_before(305).unwrap(), 305);
        assert_eq!(u.end_before(300).unwrap(), 210);
        assert_eq!(u.end_before(0).unwrap(), 0);
    }

    proptest! {
        /// Queries on a spooled list (binary search through the file) answer as the
        /// in-memory interval set does.
        #[test]
        fn spooled_queries_match_the_interval_set(
            limit in 2usize..6,
            raw in prop::collection::vec((0u64..3_000, 1u64..200), 0..80),
            queries in prop::collection::vec((0u64..3_300, 0u64..400), 1..20),
        ) {
            let (list, set) = spooled_and_in_memory(limit, &raw);
            let list = ExtentList::from_ascending(list.reader(), limit).unwrap();
            for (o, l) in queries {
                let mut got = Vec::new();
                list.intersect_into(o, l, &mut got).unwrap();
                prop_assert_eq!(got, set.intersect_range(o, l).collect::<Vec<_>>());
                prop_assert_eq!(list.overlaps(o, l).unwrap(), set.overlaps(o, l));
                prop_assert_eq!(list.contains(o).unwrap(), set.contains(o));
            }
        }

        /// A seeker answers any sequence of queries, forward, backward or far
        /// ahead, as the interval set does, and the union of lists as the union of
        /// the sets.
        #[test]
        fn seeker_and_union_match_the_interval_set(
            limit in 2usize..6,
            raw in prop::collection::vec((0u64..30_000, 1u64..200), 0..300),
            other in prop::collection::vec((0u64..30_000, 1u64..200), 0..50),
            queries in prop::collection::vec((0u64..31_000, 0u64..2_000), 1..60),
        ) {
            let mut set = ExtentSet::new();
            for &(o, l) in &raw {
                set.insert(o, l);
            }
            let list = list_of(limit, &raw);
            let mut seek = Seeker::new(list.clone()).unwrap();
            let mut sorted = queries.clone();
            sorted.sort_unstable();
            for (o, l) in queries.iter().chain(sorted.iter()).copied() {
                let mut got = Vec::new();
                seek.intersect_into(o, l, &mut got).unwrap();
                prop_assert_eq!(got, set.intersect_range(o, l).collect::<Vec<_>>());
                let want = set.iter().find(|e| e.end() > o);
                prop_assert_eq!(seek.next_from(o).unwrap(), want);
            }
            let mut both = set.clone();
            for &(o, l) in &other {
                both.insert(o, l);
            }
            let u = ExtentList::union(&[&list, &list_of(limit, &other)]).unwrap();
            prop_assert_eq!(u.to_vec().unwrap(), both.iter().collect::<Vec<_>>());
            prop_assert_eq!(u.total_bytes(), both.total_bytes());
        }

        /// External runs (a limit of 2 to 9) give exactly what the in-memory
        /// interval set gives.
        #[test]
        fn sorted_runs_match_the_interval_set(
            limit in 2usize..10,
            raw in prop::collection::vec((0u64..5_000, 0u64..300), 0..200),
        ) {
            let (list, set) = spooled_and_in_memory(limit, &raw);
            prop_assert_eq!(list.total_bytes(), set.total_bytes());
            prop_assert_eq!(list.range_count(), set.range_count() as u64);
            prop_assert_eq!(list.to_vec().unwrap(), set.iter().collect::<Vec<_>>());
        }
    }
}
