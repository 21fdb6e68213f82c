//! Reading a disk from an NBD export: the export's address ([`NbdExport`], parsed from
//! `nbd+unix:///EXPORT?socket=PATH` and `nbd://HOST[:PORT]/EXPORT` URIs), a
//! [`SourceRead`] over it ([`NbdSource`]) that the [`ChunkReader`](super::disk::ChunkReader)
//! reads like a file, and the dirty extents of a `qemu:dirty-bitmap:NAME` context as an
//! [`ExtentStream`] ([`DirtyExtents`]).
//!
//! - READs are pipelined: the chunk reader announces each extent before reading it
//!   ([`SourceRead::will_read`]) and the source keeps [`READ_AHEAD_REQUESTS`] requests of
//!   [`READ_AHEAD_REQUEST_SIZE`] in flight over that extent's data (never beyond it, never
//!   over what `base:allocation` calls zero), so the server reads while the backup
//!   hashes and writes; memory stays at those buffers. A read of exactly one read
//!   ahead's bytes (each record of a full) takes its buffer over
//!   ([`SourceRead::take_read`]: no copy on the socket-reading thread). Reads not
//!   announced go through [`nbd_client::Client::read`] (itself pipelined over one
//!   call's requests).
//! - One connection: with qemu-nbd reading through O_DIRECT, nbdcopy from one
//!   connection with 16 x 512 KiB in flight was as fast as from 2 or 4 (see
//!   docs/BENCHMARKS.md, NBD sources), so `NBD_FLAG_CAN_MULTI_CONN` is not used.
//! - Holes: when the server grants `base:allocation`, ranges it flags `ZERO` are holes
//!   for the reader: never read, recorded as zero extents. `HOLE` without `ZERO`
//!   promises nothing and is read. A full backup therefore reads only allocated data,
//!   and a dirty range that is zero now (a trimmed or zeroed area) becomes a zero extent
//!   of the incremental: never skipped, never read.
//! - Dirty extents: block status of the dirty-bitmap context is asked on a connection of
//!   its own, window by window ([`STATUS_WINDOW`], at most [`STATUS_MAX_EXTENTS`] held),
//!   so memory stays bounded whatever the number of extents; they are aligned outwards
//!   to the tracking block and coalesced.
//!   Two connections are open at once: an export must allow two clients (`qemu-nbd
//!   --shared=2` or more; QEMU's built-in server, libvirt and nbdkit allow many).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nbd_client::{Address, Client, ConnectOptions, TlsConfig, STATE_DIRTY, STATE_ZERO};
use thiserror::Error;

use super::disk::{DataAt, Disk, DiskError, ExtentStream, SourceRead};
use super::input::Identity;
use crate::extents::Extent;

/// The meta context of allocation and zero information.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Prefix of QEMU's dirty bitmap meta contexts.
pub const DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// Range asked per block status round (4 GiB; the client sends requests of at most
/// 1 GiB until it is covered or [`STATUS_MAX_EXTENTS`] are held). The reads ahead wait
/// at the end of each window of `base:allocation` (the connection must be free for the
/// question), so windows are large: with 128 MiB, a 1 %-dirty incremental of a 4 GiB
/// disk stopped its reads ahead 27 times (on this project's 2-core machine the time it
/// lost was within the noise; a larger disk asks that many times more, see
/// docs/BENCHMARKS.md).
pub const STATUS_WINDOW: u64 = 4 << 30;

/// Most extents one block status round keeps (all contexts together): a fragmented
/// range comes back shorter instead of taking more memory (256 Ki extents: 6 MiB).
pub const STATUS_MAX_EXTENTS: usize = 256 * 1024;

/// The default NBD TCP port.
pub const DEFAULT_PORT: u16 = 10809;

#[derive(Debug, Error)]
pub enum NbdSourceError {
    #[error("{uri:?} is not an NBD URI: {problem}; use nbd+unix:///EXPORT?socket=/PATH or nbd://HOST[:PORT]/EXPORT (nbds:// for TLS)")]
    BadUri { uri: String, problem: String },
    #[error("NBD export {export}: {source}")]
    Nbd {
        export: String,
        #[source]
        source: nbd_client::Error,
    },
}

/// Where an export is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdExport {
    pub address: Address,
    /// The export name ("" is the server's default export).
    pub name: String,
    /// TLS credentials; `None`: plain text (Unix sockets, or a trusted network).
    pub tls: Option<TlsConfig>,
}

impl NbdExport {
    /// A URI naming the export, for messages and as its identity:
    /// `nbd+unix:///NAME?socket=PATH` or `nbd://HOST:PORT/NAME` (`nbds` with TLS).
    pub fn uri(&self) -> String {
        let s = if self.tls.is_some() { "s" } else { "" };
        match &self.address {
            Address::Unix(p) => format!("nbd{s}+unix:///{}?socket={}", self.name, p.display()),
            Address::Tcp(hp) => format!("nbd{s}://{hp}/{}", self.name),
        }
    }

    /// What makes two exports the same disk: the server and the export name.
    pub fn identity(&self) -> Identity {
        let canon = match &self.address {
            Address::Unix(p) => {
                let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                format!("nbd+unix:{}:{}", p.display(), self.name)
            }
            Address::Tcp(hp) => format!("nbd+tcp:{}:{}", hp.to_ascii_lowercase(), self.name),
        };
        Identity::named(&canon)
    }

    /// Parses an NBD URI (the subset of the NBD URI specification tapevault uses):
    /// `nbd+unix:///EXPORT?socket=PATH`, `nbd://HOST[:PORT]/EXPORT`, and their TLS forms
    /// `nbds+unix://` and `nbds://`, which need `tls_dir` (QEMU's x509 layout: ca-cert.pem,
    /// client-cert.pem, client-key.pem). `tls_dir` without TLS in the URI turns TLS on
    /// too. The certificate name checked is the host (for Unix sockets, `localhost`).
    pub fn parse(
        uri: &str,
        tls_dir: Option<&std::path::Path>,
    ) -> Result<NbdExport, NbdSourceError> {
        let bad = |problem: &str| NbdSourceError::BadUri {
            uri: uri.to_string(),
            problem: problem.to_string(),
        };
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (tls, unix) = match scheme {
            "nbd" => (false, false),
            "nbds" => (true, false),
            "nbd+unix" => (false, true),
            "nbds+unix" => (true, true),
            _ => return Err(bad(&format!("unknown scheme {scheme:?}"))),
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i + 1..]),
            None => (before_query, ""),
        };
        let name =
            percent_decode(path).ok_or_else(|| bad("bad percent-encoding in the export name"))?;
        let mut socket: Option<PathBuf> = None;
        for kv in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|s| !s.is_empty())
        {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "socket" if unix => {
                    let v =
                        percent_decode(v).ok_or_else(|| bad("bad percent-encoding in socket"))?;
                    socket = Some(PathBuf::from(v));
                }
                _ => return Err(bad(&format!("unsupported query parameter {k:?}"))),
            }
        }
        let (address, host) = if unix {
            if !authority.is_empty() {
                return Err(bad(
                    "a Unix socket URI has no host (three slashes: nbd+unix:///EXPORT?socket=PATH)",
                ));
            }
            let s = socket.ok_or_else(|| bad("socket=PATH is missing"))?;
            if !s.is_absolute() {
                return Err(bad("socket must be an absolute path"));
            }
            (Address::Unix(s), "localhost".to_string())
        } else {
            if authority.is_empty() {
                return Err(bad("the host is missing"));
            }
            let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad HOST:PORT"))?;
            let hp = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            (Address::Tcp(hp), host)
        };
        let tls = match (tls, tls_dir) {
            (_, Some(dir)) => Some(TlsConfig::from_qemu_dir(dir, &host)),
            (true, None) => return Err(bad("TLS (nbds) needs tls_creds_dir, a directory with ca-cert.pem (and client-cert.pem, client-key.pem)")),
            (false, None) => None,
        };
        Ok(NbdExport { address, name, tls })
    }

    /// Connection options for this export with `contexts`; `timeout` bounds every socket
    /// operation.
    pub fn options(&self, contexts: &[&str], timeout: Duration) -> ConnectOptions {
        let mut o = ConnectOptions::new(&self.name).timeout(Some(timeout));
        if let Some(t) = &self.tls {
            o = o.tls(t.clone());
        }
        for c in contexts {
            o = o.meta_context(c);
        }
        o
    }

    /// Connects with `contexts` (each must be granted).
    pub fn connect(&self, contexts: &[&str], timeout: Duration) -> Result<Client, NbdSourceError> {
        Client::connect(&self.address, &self.options(contexts, timeout)).map_err(|source| {
            NbdSourceError::Nbd {
                export: self.uri(),
                source,
            }
        })
    }
}

fn split_host_port(a: &str) -> Option<(String, u16)> {
    if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => DEFAULT_PORT,
            None => return None,
        };
        return Some((h.to_string(), port));
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((a.to_string(), DEFAULT_PORT)),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An NBD error as the I/O error a [`SourceRead`] returns; a timeout keeps its kind
/// ([`std::io::ErrorKind::TimedOut`]), which stalls the [`Disk`].
fn io_err(e: nbd_client::Error) -> std::io::Error {
    let kind = if e.is_timeout() {
        std::io::ErrorKind::TimedOut
    } else {
        std::io::ErrorKind::Other
    };
    std::io::Error::new(kind, e.to_string())
}

/// How many READ requests the source keeps outstanding ahead of the reader, each of
/// [`READ_AHEAD_REQUEST_SIZE`] (or the export's maximum, if smaller): the memory held for
/// reading ahead is at most their product (8 MiB).
pub const READ_AHEAD_REQUESTS: usize = 16;

/// Size of the READ requests of an NBD source. Measured against qemu-nbd serving a qcow2
/// (bench/nbd.sh): 16 requests of 512 KiB in flight cost the server less (no fresh
/// multi-megabyte buffers per request) than 8 of 2 MiB, for the same throughput or better.
pub const READ_AHEAD_REQUEST_SIZE: u32 = 512 * 1024;

/// An NBD export read like a file (see the module docs).
///
/// Read-ahead: the reader announces each extent before reading it, and may announce the
/// next few ahead of their reads ([`SourceRead::will_read`], ascending); the source
/// then keeps up to [`READ_AHEAD_REQUESTS`] READs in flight over the data of the
/// announced extents in order (as far as the allocation it has learnt tells), so the
/// server works while the backup hashes and writes, and an incremental's small scattered
/// extents are not read one round trip at a time. Nothing outside an announced extent
/// is read ahead, and nothing that `base:allocation` calls zero.
pub struct NbdSource {
    inner: Mutex<Inner>,
    /// Extents announced, not yet taken over by a read, in the order announced.
    hints: Mutex<Vec<(u64, u64)>>,
    size: u64,
    /// `base:allocation` was granted: zero ranges are holes.
    allocation: bool,
    /// Reads answered by handing a read ahead's buffer over ([`SourceRead::take_read`]).
    handed_over: std::sync::atomic::AtomicU64,
    /// The client's per-operation timeout: no call waits longer on the server.
    timeout: Option<Duration>,
}

/// A READ sent ahead.
struct Slot {
    offset: u64,
    len: usize,
    cookie: u64,
    /// The data once the reply is in (`None`: still in flight).
    data: Option<Vec<u8>>,
    /// The server's error for this request.
    error: Option<String>,
}

impl Slot {
    fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

struct Inner {
    client: Client,
    /// The data runs `base:allocation` told for `[known.0, known.1)` (the last window asked).
    known: (u64, u64),
    runs: Vec<(u64, u64)>,
    /// Reads sent ahead, ascending and disjoint.
    ahead: std::collections::VecDeque<Slot>,
    /// Cookies of reads sent ahead that are no longer wanted (their replies are dropped).
    orphans: Vec<u64>,
    /// Next offset to read ahead from, and the end of the extent it lies in (reads
    /// below `limit` are of announced extents).
    next: u64,
    limit: u64,
    /// Extents announced after the one `next` lies in, ascending.
    queued: std::collections::VecDeque<(u64, u64)>,
    /// Buffers for reads ahead, recycled.
    spare: Vec<Vec<u8>>,
    allocation: bool,
    size: u64,
    /// Most extents one round of `base:allocation` keeps ([`STATUS_MAX_EXTENTS`]).
    status_max_extents: usize,
}

impl Inner {
    /// Where data lies at or after `at` as far as known, up to `limit`: `Some((s, e))`
    /// the next data run, `None` nothing known (or nothing before `limit`).
    fn known_data(&self, at: u64, limit: u64) -> Option<(u64, u64)> {
        if !self.allocation {
            return (at < limit).then_some((at, limit));
        }
        if at < self.known.0 || at >= self.known.1 {
            return None;
        }
        self.runs
            .iter()
            .find(|r| r.1 > at)
            .map(|r| (r.0.max(at), r.1.min(limit)))
            .filter(|r| r.0 < r.1)
    }

    /// An extent announced (`[s, e)`): read ahead into it after the ones announced
    /// before it. One that does not come after them starts the read-ahead over (what
    /// was read ahead before it is not wanted); one inside the extent being read ahead
    /// narrows it, as a new announcement of the same extent.
    fn announce(&mut self, s: u64, e: u64) {
        let last_end = self.queued.back().map_or(self.limit, |q| q.1);
        if self.queued.is_empty() && s >= self.next && s < self.limit {
            self.next = s;
            self.limit = e;
        } else if s >= last_end {
            self.queued.push_back((s, e));
        } else {
            self.restart(s, e);
        }
    }

    /// Whether `offset` lies in an announced extent, the one being read ahead or an
    /// earlier one (`< limit`), or one announced after it: the reader moved on to that
    /// one before the read-ahead did, which then skips to it.
    fn reach(&mut self, offset: u64) -> bool {
        if offset < self.limit {
            return true;
        }
        while let Some(&(s, e)) = self.queued.front() {
            if e <= offset {
                self.queued.pop_front();
                continue;
            }
            if s > offset {
                return false;
            }
            self.queued.pop_front();
            self.next = offset.max(self.next);
            self.limit = e;
            return true;
        }
        false
    }

    /// Sends reads ahead until the window is full or the announced extents (as far as
    /// their data is known) are covered.
    fn top_up(&mut self) -> std::io::Result<()> {
        let step = self.client.request_size() as u64;
        while self.ahead.len() + self.orphans.len() < self.client.max_in_flight()
            && self.client.reads_in_flight() < self.client.max_in_flight()
        {
            if self.next >= self.limit {
                // This extent is covered: on to the next one announced.
                let Some((s, e)) = self.queued.pop_front() else {
                    break;
                };
                self.next = s.max(self.next);
                self.limit = e;
                continue;
            }
            let Some((s, e)) = self.known_data(self.next, self.limit) else {
                // Known to hold no more data: the extent's rest is a hole.
                if self.allocation && self.known.0 <= self.next && self.limit <= self.known.1 {
                    self.next = self.limit;
                    continue;
                }
                break;
            };
            // Requests end on multiples of their size (absolute offsets), as the chunk
            // reader's record windows do, so a record of data is one request's bytes;
            // a run that fits in one request is asked whole (an incremental's small
            // extents, packed several to a record, are then one request each, not two
            // where they cross the grid).
            let grid_end = (s / step + 1) * step;
            let len = if e - s <= step {
                (e - s) as usize
            } else {
                (e.min(grid_end) - s) as usize
            };
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.resize(len, 0);
            let cookie = self.client.submit_read(s, buf).map_err(io_err)?;
            self.ahead.push_back(Slot {
                offset: s,
                len,
                cookie,
                data: None,
                error: None,
            });
            self.next = s + len as u64;
        }
        Ok(())
    }

    /// Collects one reply of the reads ahead.
    fn collect_one(&mut self) -> std::io::Result<()> {
        let done = self.client.next_read().map_err(io_err)?;
        if let Some(i) = self.orphans.iter().position(|c| *c == done.cookie) {
            self.orphans.swap_remove(i);
            self.spare.push(done.buf);
            return Ok(());
        }
        let Some(slot) = self.ahead.iter_mut().find(|s| s.cookie == done.cookie) else {
            return Err(std::io::Error::other(format!(
                "a read ahead at offset {} completed that was never sent",
                done.offset
            )));
        };
        match done.result {
            Ok(()) => slot.data = Some(done.buf),
            Err(e) => {
                slot.error = Some(e.to_string());
                slot.data = Some(done.buf);
            }
        }
        Ok(())
    }

    /// Collects every read in flight (before another command, which needs the connection
    /// to itself).
    fn collect_all(&mut self) -> std::io::Result<()> {
        while self.client.reads_in_flight() > 0 {
            self.collect_one()?;
        }
        Ok(())
    }

    /// Drops the first read ahead (its buffer is recycled, or its reply dropped later).
    fn drop_front(&mut self) {
        if let Some(slot) = self.ahead.pop_front() {
            match slot.data {
                Some(buf) => self.spare.push(buf),
                None => self.orphans.push(slot.cookie),
            }
        }
    }

    /// Drops every read ahead.
    fn reset(&mut self) {
        while !self.ahead.is_empty() {
            self.drop_front();
        }
    }

    /// Drops every read ahead and every extent announced; reads ahead start again at
    /// `next`, within an extent ending at `limit`.
    fn restart(&mut self, next: u64, limit: u64) {
        self.reset();
        self.queued.clear();
        self.next = next;
        self.limit = limit;
    }

    /// Hands over the read ahead that holds exactly `[offset, offset + buf.len())`,
    /// swapping its buffer into `buf` (whose allocation is kept for a later read ahead).
    /// `Ok(false)`: no read ahead matches; nothing changed but the window, which
    /// [`read`](Self::read) then serves from.
    fn take(&mut self, buf: &mut Vec<u8>, offset: u64) -> std::io::Result<bool> {
        let end = offset + buf.len() as u64;
        if !self.reach(offset) || end > self.limit.max(self.next) {
            return Ok(false);
        }
        if self.next < offset {
            self.next = offset;
        }
        self.top_up()?;
        while self.ahead.front().is_some_and(|s| s.end() <= offset) {
            self.drop_front();
        }
        if !self
            .ahead
            .front()
            .is_some_and(|s| s.offset == offset && s.len == buf.len())
        {
            return Ok(false);
        }
        while self.ahead.front().is_some_and(|s| s.data.is_none()) {
            self.collect_one()?;
        }
        if self.ahead.front().is_some_and(|s| s.error.is_some()) {
            // read() reports it.
            return Ok(false);
        }
        let mut slot = self.ahead.pop_front().expect("checked above");
        let mut data = slot.data.take().expect("collected above");
        std::mem::swap(&mut data, buf);
        self.spare.push(data);
        self.top_up()?;
        Ok(true)
    }

    fn read(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        // A read outside what was announced ends the read-ahead.
        if !self.reach(offset) || end > self.limit.max(self.next) {
            self.restart(self.limit, self.limit);
        } else if self.next < offset {
            self.next = offset;
        }
        self.top_up()?;
        let mut pos = offset;
        while pos < end {
            while self.ahead.front().is_some_and(|s| s.end() <= pos) {
                self.drop_front();
            }
            let covered = self
                .ahead
                .front()
                .is_some_and(|s| s.offset <= pos && pos < s.end());
            if !covered {
                // Not read ahead: read it now (the connection must be free for that).
                let stop = self.ahead.front().map_or(end, |s| s.offset.clamp(pos, end));
                self.collect_all()?;
                let a = (pos - offset) as usize;
                let b = (stop - offset) as usize;
                self.client.read(pos, &mut buf[a..b]).map_err(io_err)?;
                pos = stop;
                continue;
            }
            while self.ahead.front().is_some_and(|s| s.data.is_none()) {
                self.collect_one()?;
            }
            let slot = self.ahead.front().expect("checked above");
            if let Some(e) = &slot.error {
                let e = std::io::Error::other(e.clone());
                self.drop_front();
                return Err(e);
            }
            let data = slot.data.as_ref().expect("collected above");
            let from = (pos - slot.offset) as usize;
            let n = (slot.end().min(end) - pos) as usize;
            let a = (pos - offset) as usize;
            buf[a..a + n].copy_from_slice(&data[from..from + n]);
            pos += n as u64;
            if pos >= slot.end() {
                self.drop_front();
                self.top_up()?;
            }
        }
        Ok(())
    }
}

impl NbdSource {
    /// Connects to `export` asking for `base:allocation` (a server without it is read
    /// whole).
    pub fn connect(export: &NbdExport, timeout: Duration) -> Result<NbdSource, NbdSourceError> {
        let (client, allocation) = match export.connect(&[BASE_ALLOCATION], timeout) {
            Ok(c) => (c, true),
            Err(NbdSourceError::Nbd {
                source:
                    nbd_client::Error::MetaContextNotGranted { .. } | nbd_client::Error::Unsupported(_),
                ..
            }) => (export.connect(&[], timeout)?, false),
            Err(e) => return Err(e),
        };
        let size = client.size();
        let mut client = client;
        client.set_request_size(READ_AHEAD_REQUEST_SIZE);
        client.set_max_in_flight(READ_AHEAD_REQUESTS);
        let timeout = client.timeout();
        Ok(NbdSource {
            inner: Mutex::new(Inner {
                client,
                known: (0, 0),
                runs: Vec::new(),
                ahead: std::collections::VecDeque::new(),
                orphans: Vec::new(),
                next: 0,
                limit: 0,
                queued: std::collections::VecDeque::new(),
                spare: Vec::new(),
                allocation,
                size,
                status_max_extents: STATUS_MAX_EXTENTS,
            }),
            hints: Mutex::new(Vec::new()),
            size,
            allocation,
            handed_over: std::sync::atomic::AtomicU64::new(0),
            timeout,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `base:allocation` tells holes.
    pub fn has_allocation(&self) -> bool {
        self.allocation
    }

    /// How many reads were answered by handing a read ahead's buffer over (no copy).
    pub fn handed_over(&self) -> u64 {
        self.handed_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let hints = std::mem::take(&mut *self.hints.lock().unwrap_or_else(|e| e.into_inner()));
        for (s, e) in hints {
            let e = e.min(inner.size);
            inner.announce(s, e);
        }
        inner
    }
}

impl SourceRead for NbdSource {
    fn bounded_wait(&self) -> Option<Duration> {
        self.timeout
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        let mut inner = self.inner();
        let r = inner.read(&mut buf[..n], offset);
        if r.is_err() {
            // After a failure nothing read ahead is trusted.
            inner.restart(0, 0);
        }
        r.map(|()| n)
    }

    fn take_read(&self, buf: &mut Vec<u8>, offset: u64) -> std::io::Result<bool> {
        if offset >= self.size || buf.len() as u64 > self.size - offset {
            return Ok(false);
        }
        let mut inner = self.inner();
        let r = inner.take(buf, offset);
        if let Ok(true) = r {
            self.handed_over
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if r.is_err() {
            // After a failure nothing read ahead is trusted.
            inner.restart(0, 0);
        }
        r
    }

    fn will_read(&self, offset: u64, len: u64) {
        self.hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((offset, offset.saturating_add(len)));
    }

    fn find_data(&self, from: u64) -> std::io::Result<DataAt> {
        if !self.allocation {
            return Ok(DataAt::Run(from, u64::MAX));
        }
        let mut inner = self.inner();
        // BLOCK_STATUS needs the connection to itself: collect the reads ahead first
        // (they stay ready).
        inner.collect_all()?;
        let mut at = from;
        let mut start: Option<u64> = None;
        while at < self.size {
            let len = (self.size - at).min(STATUS_WINDOW);
            let max = inner.status_max_extents;
            let (status, covered) = inner
                .client
                .block_status_upto(at, len, false, max)
                .map_err(io_err)?;
            let len = covered - at;
            let ctx = status
                .iter()
                .find(|s| s.context == BASE_ALLOCATION)
                .ok_or_else(|| {
                    std::io::Error::other("base:allocation missing from the block status answer")
                })?;
            // Remember this window's data runs for reading ahead.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for e in ctx.extents.iter().filter(|e| e.flags & STATE_ZERO == 0) {
                match runs.last_mut() {
                    Some(last) if last.1 == e.offset => last.1 = e.offset + e.length,
                    _ => runs.push((e.offset, e.offset + e.length)),
                }
            }
            inner.runs = runs;
            inner.known = (at, at + len);
            for e in &ctx.extents {
                let zero = e.flags & STATE_ZERO != 0;
                match (start, zero) {
                    (None, false) => start = Some(e.offset.max(from)),
                    (Some(s), true) => return Ok(DataAt::Run(s, e.offset)),
                    _ => {}
                }
            }
            at += len;
            // A run that reaches the end of a window: report it so far (the next
            // question continues from there).
            if let Some(s) = start {
                return Ok(DataAt::Run(s, at));
            }
        }
        match start {
            Some(s) => Ok(DataAt::Run(s, self.size)),
            None => Ok(DataAt::HoleToEnd {
                file_len: self.size,
            }),
        }
    }
}

/// Opens an export as a [`Disk`] named by its URI.
pub fn open_disk(export: &NbdExport) -> Result<(Disk, bool), NbdSourceError> {
    let src = NbdSource::connect(export, super::disk::source_timeout())?;
    let size = src.size();
    let allocation = src.has_allocation();
    let disk = Disk::from_source(Arc::new(src), &export.uri(), size, export.identity());
    Ok((disk, allocation))
}

/// The dirty extents of a `qemu:dirty-bitmap:NAME` context, streamed window by window,
/// aligned outwards to `block` bytes (the tracking block) and coalesced.
pub struct DirtyExtents {
    client: Client,
    context: String,
    size: u64,
    block: u64,
    /// Next offset to ask about.
    at: u64,
    /// The extents of the current window and how many were used.
    window: Vec<nbd_client::Extent>,
    used: usize,
    /// The run being grown (aligned).
    run: Option<(u64, u64)>,
    /// Dirty bytes as the bitmap reports them (before alignment).
    dirty_bytes: u64,
    /// Most extents one block status round keeps ([`STATUS_MAX_EXTENTS`]).
    max_extents: usize,
}

impl DirtyExtents {
    /// Connects to `export` with only `context` (a `qemu:dirty-bitmap:NAME`; it must be
    /// granted). `block` is the tracking block (a power of two).
    pub fn connect(
        export: &NbdExport,
        context: &str,
        block: u64,
        timeout: Duration,
    ) -> Result<DirtyExtents, NbdSourceError> {
        let client = export.connect(&[context], timeout)?;
        let size = client.size();
        Ok(DirtyExtents {
            client,
            context: context.to_string(),
            size,
            block,
            at: 0,
            window: Vec::new(),
            used: 0,
            run: None,
            dirty_bytes: 0,
            max_extents: STATUS_MAX_EXTENTS,
        })
    }

    /// The dirty bytes reported so far (at the bitmap's granularity, before alignment
    /// to the tracking block).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Walks the whole bitmap once and returns the dirty bytes and the extents after
    /// alignment (for estimates and benchmarks; the backup streams instead).
    pub fn count(mut self) -> Result<(u64, u64), DiskError> {
        let mut aligned = 0;
        while let Some(e) = self.next_extent()? {
            aligned += e.len;
        }
        Ok((self.dirty_bytes, aligned))
    }

    fn fill(&mut self) -> Result<bool, DiskError> {
        if self.at >= self.size {
            return Ok(false);
        }
        let len = (self.size - self.at).min(STATUS_WINDOW);
        let (mut status, covered) = self
            .client
            .block_status_upto(self.at, len, false, self.max_extents)
            .map_err(|e| DiskError::Read {
                path: PathBuf::from(&self.context),
                offset: self.at,
                source: io_err(e),
            })?;
        let i = status
            .iter()
            .position(|s| s.context == self.context)
            .ok_or_else(|| {
                DiskError::Config(format!(
                    "{} missing from the block status answer",
                    self.context
                ))
            })?;
        self.window = std::mem::take(&mut status[i].extents);
        self.used = 0;
        self.at = covered;
        Ok(true)
    }
}

impl ExtentStream for DirtyExtents {
    fn next_extent(&mut self) -> Result<Option<Extent>, DiskError> {
        let bs = self.block;
        loop {
            if self.used >= self.window.len() && !self.fill()? {
                return Ok(self.run.take().map(|(s, e)| Extent::new(s, e - s)));
            }
            let e = self.window[self.used];
            self.used += 1;
            if e.flags & STATE_DIRTY == 0 {
                continue;
            }
            self.dirty_bytes += e.length;
            let s = e.offset & !(bs - 1);
            let end = (e.offset + e.length)
                .div_ceil(bs)
                .saturating_mul(bs)
                .min(self.size);
            match &mut self.run {
                Some((_, re)) if s <= *re => *re = (*re).max(end),
                Some(_) => {
                    let (rs, re) = self.run.replace((s, end)).expect("some");
                    return Ok(Some(Extent::new(rs, re - rs)));
                }
                None => self.run = Some((s, end)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_to_addresses() {
        let e = NbdExport::parse("nbd+unix:///vda?socket=/run/x/nbd.sock", None).unwrap();
        assert_eq!(e.address, Address::Unix("/run/x/nbd.sock".into()));
        assert_eq!(e.name, "vda");
        assert!(e.tls.is_none());
        assert_eq!(e.uri(), "nbd+unix:///vda?socket=/run/x/nbd.sock");
        let e = NbdExport::parse("nbd://host.example:10810/disk%200", None).unwrap();
        assert_eq!(e.address, Address::Tcp("host.example:10810".into()));
        assert_eq!(e.name, "disk 0");
        let e = NbdExport::parse("nbd://10.0.0.1/x", None).unwrap();
        assert_eq!(e.address, Address::Tcp("10.0.0.1:10809".into()));
        let e = NbdExport::parse("nbd://[::1]:99/x", None).unwrap();
        assert_eq!(e.address, Address::Tcp("[::1]:99".into()));
        let e = NbdExport::parse("nbds://h:1/x", Some(std::path::Path::new("/pki"))).unwrap();
        let t = e.tls.unwrap();
        assert_eq!(t.server_name, "h");
        assert_eq!(t.ca_cert, PathBuf::from("/pki/ca-cert.pem"));
        for bad in [
            "nbds://h/x",
            "http://h/x",
            "nbd+unix:///x",
            "nbd+unix:///x?socket=rel",
            "nbd+unix://h/x?socket=/s",
            "nbd:///x",
            "nbd://h:notaport/x",
            "nbd://h/x?tls=1",
            "/just/a/path",
        ] {
            let err = NbdExport::parse(bad, None).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    /// The dirty extents streamed in rounds cut short by a small extent budget are
    /// those of rounds that hold the whole disk (qemu-nbd serving a qcow2's bitmap).
    #[test]
    fn dirty_extents_are_the_same_whatever_the_rounds_hold() {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.qcow2");
        let ok = |c: &mut Command| c.stdout(Stdio::null()).status().map(|s| s.success());
        if !matches!(
            ok(Command::new("qemu-img")
                .args(["create", "-f", "qcow2"])
                .arg(&img)
                .arg("64M")),
            Ok(true)
        ) {
            eprintln!("skipping: qemu-img cannot run");
            return;
        }
        assert!(ok(Command::new("qemu-img")
            .args(["bitmap", "--add", "-g", "65536"])
            .arg(&img)
            .arg("b"))
        .unwrap());
        let mut io = Command::new("qemu-io");
        io.args(["-f", "qcow2"]);
        for i in 0..40u64 {
            // 40 pieces, some touching (coalesced after alignment), most apart.
            let off = i * 1_572_864 + (i % 3) * 4096;
            io.arg("-c")
                .arg(format!("write -P 7 {off} {}", 70_000 + i * 1000));
        }
        assert!(ok(io.arg(&img)).unwrap());
        let Some((_served, export)) =
            read_ahead_tests_support::serve_with(dir.path(), &img, &["-f", "qcow2", "-B", "b"])
        else {
            return;
        };
        let ctx = "qemu:dirty-bitmap:b";
        let walk = |max: usize| {
            let mut d =
                DirtyExtents::connect(&export, ctx, 65536, Duration::from_secs(30)).unwrap();
            d.max_extents = max;
            let mut v = Vec::new();
            while let Some(e) = d.next_extent().unwrap() {
                v.push((e.offset, e.len));
            }
            (v, d.dirty_bytes())
        };
        let whole = walk(STATUS_MAX_EXTENTS);
        let small = walk(3);
        assert!(whole.0.len() >= 20, "{:?}", whole.0);
        assert_eq!(small, whole);
    }

    #[test]
    fn identity_ignores_spelling_of_the_host() {
        let a = NbdExport::parse("nbd://Host:1/x", None).unwrap();
        let b = NbdExport::parse("nbd://host:1/x", None).unwrap();
        let c = NbdExport::parse("nbd://host:1/y", None).unwrap();
        assert_eq!(a.identity(), b.identity());
        assert_ne!(a.identity(), c.identity());
    }
}

#[cfg(test)]
mod read_ahead_tests_support {
    use super::*;
    use std::process::{Child, Command, Stdio};

    /// qemu-nbd serving an image read-only on a socket in `dir`; killed on drop.
    pub struct Served(Child);
    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A raw file served as export `d`; None (the reason printed) without qemu-nbd.
    pub fn serve(dir: &std::path::Path, img: &std::path::Path) -> Option<(Served, NbdExport)> {
        serve_with(dir, img, &["-f", "raw"])
    }

    /// Like [`serve`], with qemu-nbd's `args` (the image's format, a bitmap).
    pub fn serve_with(
        dir: &std::path::Path,
        img: &std::path::Path,
        args: &[&str],
    ) -> Option<(Served, NbdExport)> {
        let sock = dir.join("nbd.sock");
        let child = match Command::new("qemu-nbd")
            .args(["--read-only", "--shared=2", "--persistent", "-x", "d"])
            .args(args)
            .arg("-k")
            .arg(&sock)
            .arg(img)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => Served(c),
            Err(e) => {
                eprintln!("skipping: qemu-nbd cannot run ({e})");
                return None;
            }
        };
        for _ in 0..200 {
            if sock.exists() {
                let uri = format!("nbd+unix:///d?socket={}", sock.display());
                return Some((child, NbdExport::parse(&uri, None).unwrap()));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("qemu-nbd did not listen");
    }

    pub fn byte(off: u64) -> u8 {
        (off.wrapping_mul(2_654_435_761) >> 13) as u8 | 1
    }
}

#[cfg(test)]
mod read_ahead_tests {
    use super::read_ahead_tests_support::*;
    use super::*;

    /// Small extents announced ahead of their reads (as an incremental's dirty extents
    /// are) are read ahead across: while the first is read, the next ones are already
    /// in flight, each handed over whole; one announced that does not come after the
    /// others starts over from it; one the reader skips is skipped by the read-ahead.
    #[test]
    fn read_ahead_runs_across_extents_announced_in_advance() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        let size: u64 = 32 << 20;
        std::fs::write(&img, (0..size).map(byte).collect::<Vec<u8>>()).unwrap();
        let Some((_served, export)) = serve(dir.path(), &img) else {
            return;
        };
        let src = NbdSource::connect(&export, Duration::from_secs(30)).unwrap();
        // Twelve extents of 256 KiB, 1 MiB apart (each in its own request grid cell).
        let extents: Vec<(u64, u64)> = (0..12u64).map(|i| ((2 * i + 1) << 20, 256 << 10)).collect();
        for &(o, l) in &extents {
            src.will_read(o, l);
        }
        // The chunk reader asks where the data lies first (one status window here).
        assert_eq!(src.find_data(0).unwrap(), DataAt::Run(0, size));
        let mut buf = vec![0u8; 256 << 10];
        assert!(src.take_read(&mut buf, extents[0].0).unwrap());
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == byte(extents[0].0 + i as u64)));
        {
            let inner = src.inner.lock().unwrap();
            let offsets: Vec<u64> = inner.ahead.iter().map(|s| s.offset).collect();
            assert_eq!(
                offsets,
                extents[1..].iter().map(|e| e.0).collect::<Vec<_>>(),
                "the later extents are in flight while the first is read"
            );
        }
        // The reader skips extents 1-3 (say their blocks were found to be holes): the
        // read-ahead drops them and serves the fifth.
        assert!(src.take_read(&mut buf, extents[4].0).unwrap());
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == byte(extents[4].0 + i as u64)));
        for &(o, _) in &extents[5..] {
            let mut piece = vec![0u8; 100_000];
            assert_eq!(src.read_at(&mut piece, o).unwrap(), piece.len());
            assert!(piece
                .iter()
                .enumerate()
                .all(|(i, &b)| b == byte(o + i as u64)));
            assert!(src.take_read(&mut buf, o).is_ok());
        }
        // Announced out of order: the read-ahead starts over from it.
        src.will_read(8 << 20, 1 << 20);
        src.will_read(2 << 20, 1 << 20);
        let mut piece = vec![0u8; 300_000];
        src.read_at(&mut piece, 2 << 20).unwrap();
        assert!(piece
            .iter()
            .enumerate()
            .all(|(i, &b)| b == byte((2 << 20) + i as u64)));
        let inner = src.inner.lock().unwrap();
        assert!(
            inner
                .ahead
                .iter()
                .all(|s| s.offset >= 2 << 20 && s.end() <= 3 << 20),
            "nothing of the extent announced before is read ahead"
        );
        assert!(inner.queued.is_empty());
    }

    /// Block status rounds that end early (the extent budget reached) still tell every
    /// data run and hole: each question continues where the last answer ended, and the
    /// reads ahead stop at the end of what is known.
    #[test]
    fn status_rounds_cut_short_by_the_extent_budget_find_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        // A sparse 3 GiB file: the client asks at most 1 GiB per request, and a budget
        // of 2 extents ends each round after its first request.
        let size: u64 = 3 << 30;
        const MIB: u64 = 1 << 20;
        let mut runs: Vec<(u64, u64)> = (0..12u64)
            .map(|i| {
                (
                    i * 256 * MIB + 3 * MIB,
                    i * 256 * MIB + 3 * MIB + (64 << 10),
                )
            })
            .collect();
        // One run across the end of the first request.
        runs.push(((1 << 30) - (32 << 10), (1 << 30) + (32 << 10)));
        runs.sort();
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::File::create(&img).unwrap();
            f.set_len(size).unwrap();
            for &(s, e) in &runs {
                f.seek(SeekFrom::Start(s)).unwrap();
                f.write_all(&(s..e).map(byte).collect::<Vec<u8>>()).unwrap();
            }
        }
        let Some((_served, export)) = serve(dir.path(), &img) else {
            return;
        };
        let src = NbdSource::connect(&export, Duration::from_secs(30)).unwrap();
        assert!(src.has_allocation());
        src.inner().status_max_extents = 2;
        let mut found: Vec<(u64, u64)> = Vec::new();
        let mut at = 0;
        loop {
            match src.find_data(at).unwrap() {
                DataAt::Run(s, e) => {
                    assert!(s >= at && e > s);
                    let known = src.inner().known;
                    assert!(
                        known.1 - known.0 <= 1 << 30,
                        "a round of one request: {known:?}"
                    );
                    match found.last_mut() {
                        Some(last) if last.1 == s => last.1 = e,
                        _ => found.push((s, e)),
                    }
                    at = e;
                }
                DataAt::HoleToEnd { file_len } => {
                    assert_eq!(file_len, size);
                    break;
                }
            }
        }
        assert_eq!(found, runs);
        // The run across the rounds' boundary, read through the read-ahead.
        let (s, e) = runs[4];
        assert_eq!(s, (1 << 30) - (32 << 10));
        src.will_read(s, e - s);
        src.find_data(s).unwrap();
        let mut buf = vec![0u8; (e - s) as usize];
        src.read_at(&mut buf, s).unwrap();
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == byte(s + i as u64)));
    }

    /// Reads ahead within announced extents and serves every pattern of reads (inside,
    /// across request boundaries, outside the announced extent, a new extent) with the
    /// file's bytes; holes read as zeros.
    #[test]
    fn read_ahead_serves_exactly_the_files_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        let size: u64 = 24 << 20;
        // Data in [0, 10 MiB) and [16 MiB, 24 MiB), a hole between.
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::File::create(&img).unwrap();
            f.set_len(size).unwrap();
            for (s, e) in [(0u64, 10u64 << 20), (16 << 20, 24 << 20)] {
                f.seek(SeekFrom::Start(s)).unwrap();
                let data: Vec<u8> = (s..e).map(byte).collect();
                f.write_all(&data).unwrap();
            }
        }
        let Some((_served, export)) = serve(dir.path(), &img) else {
            return;
        };
        let src = NbdSource::connect(&export, Duration::from_secs(30)).unwrap();
        assert!(src.has_allocation());
        let want = |off: u64, len: usize| -> Vec<u8> {
            (off..off + len as u64)
                .map(|o| {
                    if (10 << 20..16 << 20).contains(&o) {
                        0
                    } else {
                        byte(o)
                    }
                })
                .collect()
        };
        // The whole disk announced, read as the chunk reader does: find the data, read
        // it in 512 KiB + 100 byte pieces (not aligned to the requests).
        src.will_read(0, size);
        let mut at = 0;
        let piece = 512 * 1024 + 100;
        let mut buf = vec![0u8; piece];
        while at < size {
            let (s, e) = match src.find_data(at).unwrap() {
                DataAt::Run(s, e) => (s, e.min(size)),
                DataAt::HoleToEnd { .. } => break,
            };
            let mut pos = s;
            while pos < e {
                let n = ((e - pos) as usize).min(piece);
                assert_eq!(src.read_at(&mut buf[..n], pos).unwrap(), n);
                assert!(buf[..n] == want(pos, n)[..], "read at {pos}");
                pos += n as u64;
            }
            at = e;
        }
        assert_eq!(at, size, "the second run reaches the end");
        {
            let inner = src.inner.lock().unwrap();
            assert!(inner.ahead.is_empty(), "nothing left read ahead");
            assert_eq!(inner.client.reads_in_flight(), 0);
        }
        // A new extent, read partly, then a read elsewhere (not announced) and a read
        // before the extent: the right bytes every time, the read-ahead given up.
        src.will_read(1 << 20, 4 << 20);
        let mut b = vec![0u8; 300_000];
        src.read_at(&mut b, 1 << 20).unwrap();
        assert!(b == want(1 << 20, b.len()));
        src.read_at(&mut b, 17 << 20).unwrap();
        assert!(b == want(17 << 20, b.len()));
        src.read_at(&mut b, 12345).unwrap();
        assert!(b == want(12345, b.len()));
        // A read into the hole (not announced): zeros. A read past the end: nothing.
        src.read_at(&mut b, 11 << 20).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(src.read_at(&mut b, size).unwrap(), 0);
        // Announced again from the start: reads ahead of the reader, bounded.
        src.will_read(0, 10 << 20);
        src.read_at(&mut b, 0).unwrap();
        assert!(b == want(0, b.len()));
        let inner = src.inner.lock().unwrap();
        let ahead: u64 = inner.ahead.iter().map(|s| s.len as u64).sum();
        assert!(
            inner.ahead.len() <= READ_AHEAD_REQUESTS,
            "{}",
            inner.ahead.len()
        );
        assert!(ahead <= READ_AHEAD_REQUESTS as u64 * READ_AHEAD_REQUEST_SIZE as u64);
        assert!(
            inner.ahead.iter().all(|s| s.end() <= 10 << 20),
            "never beyond the extent"
        );
    }
}

#[cfg(test)]
mod take_read_tests {
    use super::read_ahead_tests_support::*;
    use super::*;

    /// Reads that match a read ahead exactly are handed over without a copy (the
    /// buffer given is kept by the source and another comes back), with the right
    /// bytes; any other read is refused by `take_read` and served by `read_at`.
    #[test]
    fn exact_reads_are_handed_over_and_others_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        let size: u64 = 12 << 20;
        {
            let data: Vec<u8> = (0..size).map(byte).collect();
            std::fs::write(&img, data).unwrap();
        }
        let Some((_served, export)) = serve(dir.path(), &img) else {
            return;
        };
        let src = NbdSource::connect(&export, Duration::from_secs(30)).unwrap();
        let step = READ_AHEAD_REQUEST_SIZE as u64;
        src.will_read(0, 8 << 20);
        // As the chunk reader does: where the data lies first (reads ahead go only there).
        assert_eq!(src.find_data(0).unwrap(), DataAt::Run(0, size));
        let mut at = 0;
        while at < 4 << 20 {
            let mut buf = vec![0u8; step as usize];
            let before = buf.as_ptr();
            assert!(src.take_read(&mut buf, at).unwrap(), "take at {at}");
            assert_ne!(buf.as_ptr(), before, "a buffer of the source's came back");
            assert_eq!(buf.len(), step as usize);
            assert!(buf
                .iter()
                .enumerate()
                .all(|(i, &b)| b == byte(at + i as u64)));
            at += step;
        }
        // Not on a read ahead's boundaries, or not its length: refused, then read.
        let mut buf = vec![0u8; step as usize];
        assert!(!src.take_read(&mut buf, at + 4096).unwrap());
        let mut short = vec![0u8; 1000];
        assert!(!src.take_read(&mut short, at).unwrap());
        assert_eq!(src.read_at(&mut buf, at + 4096).unwrap(), buf.len());
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == byte(at + 4096 + i as u64)));
        // Outside the announced extent: refused; beyond the end: refused.
        assert!(!src.take_read(&mut buf, 9 << 20).unwrap());
        assert!(!src.take_read(&mut buf, size - 100).unwrap());
        let inner = src.inner.lock().unwrap();
        assert!(inner.ahead.len() <= READ_AHEAD_REQUESTS);
        assert!(inner.spare.len() <= READ_AHEAD_REQUESTS + 1);
    }

    /// A full read through the chunk reader (records of 512 KiB, as a backup reads)
    /// gets every record by hand-over, with the export's bytes, zero blocks included.
    #[test]
    fn a_whole_disk_read_by_the_chunk_reader_is_handed_over() {
        use crate::source::disk::{ChunkConfig, ChunkReader, ExtentKind};
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        let size: u64 = 6 << 20;
        // Data, with one 64 KiB block of zeros inside it (read, then found zero).
        let mut data: Vec<u8> = (0..size).map(byte).collect();
        data[(1 << 20)..(1 << 20) + 65536].fill(0);
        std::fs::write(&img, &data).unwrap();
        let Some((_served, export)) = serve(dir.path(), &img) else {
            return;
        };
        let src = Arc::new(NbdSource::connect(&export, Duration::from_secs(30)).unwrap());
        let disk = Disk::from_source(src.clone(), &export.uri(), size, export.identity());
        let cfg = ChunkConfig {
            record_data_size: READ_AHEAD_REQUEST_SIZE as usize,
            ..ChunkConfig::default()
        };
        let mut r = ChunkReader::whole_disk(&disk, cfg).unwrap();
        let mut seen = 0u64;
        let mut zero = 0u64;
        while let Some(c) = r.next_chunk().unwrap() {
            let mut at = 0usize;
            for e in c.extents {
                match e.kind {
                    ExtentKind::Data => {
                        let n = e.len as usize;
                        let want = &data[e.offset as usize..e.offset as usize + n];
                        assert!(&c.data[at..at + n] == want, "bytes at {}", e.offset);
                        at += n;
                    }
                    ExtentKind::Zero => zero += e.len,
                }
                seen += e.len;
            }
        }
        assert_eq!(seen, size);
        assert_eq!(zero, 65536);
        assert_eq!(
            src.handed_over(),
            size / READ_AHEAD_REQUEST_SIZE as u64,
            "every record was handed over"
        );
    }
}
