//! The transmission phase: READ, WRITE, WRITE_ZEROES, TRIM, FLUSH, BLOCK_STATUS, DISC.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::handshake::{ConnectOptions, ExportInfo, Handshake, MetaContext};
use crate::proto::{self, *};
use crate::transport::{Address, Conn, Transport};

/// One extent of a block status answer: `length` bytes at `offset` share `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Absolute offset in the export.
    pub offset: u64,
    /// Length in bytes (never zero).
    pub length: u64,
    /// The context's flags: for `base:allocation` [`STATE_HOLE`](crate::STATE_HOLE) and
    /// [`STATE_ZERO`](crate::STATE_ZERO); for `qemu:dirty-bitmap:*`
    /// [`STATE_DIRTY`](crate::STATE_DIRTY).
    pub flags: u32,
}

/// The extents of one meta context over a queried range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextExtents {
    /// The context name.
    pub context: String,
    /// Extents in offset order, adjacent extents with equal flags merged, covering the
    /// queried range exactly.
    pub extents: Vec<Extent>,
}

/// Flags of [`Client::write_zeroes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// `NBD_CMD_FLAG_NO_HOLE`: keep the range allocated (write zeros instead of punching).
    pub no_hole: bool,
    /// `NBD_CMD_FLAG_FAST_ZERO`: fail with ENOTSUP instead of zeroing slowly. Needs
    /// `NBD_FLAG_SEND_FAST_ZERO`.
    pub fast_zero: bool,
    /// `NBD_CMD_FLAG_FUA`: durable before the reply. Needs `NBD_FLAG_SEND_FUA`.
    pub fua: bool,
}

/// A connection in the transmission phase. READs are pipelined (several in flight, see
/// [`Client::read`] and [`Client::submit_read`]); every other command waits for its reply.
pub struct Client {
    conn: Conn,
    info: ExportInfo,
    structured: bool,
    contexts: Vec<MetaContext>,
    max_payload: u32,
    request_size: u32,
    next_cookie: u64,
    broken: Option<String>,
    closed: bool,
    timeout: Option<Duration>,
    /// READs sent whose replies are not complete yet, in the order sent.
    pending: Vec<Pending>,
    max_in_flight: usize,
}

/// Default number of READ requests kept outstanding: with 2 MiB requests, 16 MiB on the
/// wire, enough to keep a server's reads and the socket busy while the client consumes.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

/// Upper bound of [`Client::set_max_in_flight`].
pub const MAX_IN_FLIGHT: usize = 64;

/// A submitted READ that completed ([`Client::next_read`]).
#[derive(Debug)]
pub struct ReadDone {
    /// The cookie [`Client::submit_read`] returned.
    pub cookie: u64,
    /// The offset read.
    pub offset: u64,
    /// The buffer given to `submit_read`, filled when `result` is `Ok`.
    pub buf: Vec<u8>,
    /// The server's answer to this request: `Ok`, or [`Error::Server`].
    pub result: Result<()>,
}

/// Where the data of a pending READ goes.
enum Dest {
    /// A buffer of its own ([`Client::submit_read`]).
    Owned(Vec<u8>),
    /// From this index of the buffer a [`Client::read`] call fills.
    Caller(usize),
}

/// A READ in flight.
struct Pending {
    req: Req,
    dest: Dest,
    cov: Coverage,
    first_err: Option<ServerError>,
}

enum Header {
    Simple { error: u32 },
    Chunk { flags: u16, kind: u16, length: u32 },
}

/// A request in flight, for validation and error messages.
#[derive(Clone, Copy)]
struct Req {
    cmd: u16,
    cookie: u64,
    offset: u64,
    length: u64,
}

/// Default size of READ/WRITE requests: big enough to amortise the round trip, small
/// enough that neither side churns through fresh multi-megabyte buffers (measured against
/// qemu-nbd: 4 and 32 MiB requests cost the server about twice the CPU of 1-2 MiB ones).
pub const DEFAULT_REQUEST_SIZE: u32 = 2 * 1024 * 1024;

fn bad(msg: String) -> Error {
    Error::Protocol(msg)
}

fn chunk_name(kind: u16) -> &'static str {
    match kind {
        REPLY_TYPE_NONE => "NBD_REPLY_TYPE_NONE",
        REPLY_TYPE_OFFSET_DATA => "NBD_REPLY_TYPE_OFFSET_DATA",
        REPLY_TYPE_OFFSET_HOLE => "NBD_REPLY_TYPE_OFFSET_HOLE",
        REPLY_TYPE_BLOCK_STATUS => "NBD_REPLY_TYPE_BLOCK_STATUS",
        REPLY_TYPE_ERROR => "NBD_REPLY_TYPE_ERROR",
        REPLY_TYPE_ERROR_OFFSET => "NBD_REPLY_TYPE_ERROR_OFFSET",
        _ => "unknown",
    }
}

/// First error chunk of a reply.
struct ServerError {
    errno: u32,
    message: String,
    offset: Option<u64>,
}

/// Which bytes of a READ request were answered; detects overlapping chunks.
/// In-order replies (the usual case) need no memory; out-of-order ones use one bit per
/// byte of the request (at most 4 MiB for the 32 MiB maximum).
struct Coverage {
    len: u64,
    next: u64,
    covered: u64,
    bits: Option<Vec<u64>>,
}

fn for_words(start: u64, end: u64, mut f: impl FnMut(usize, u64) -> bool) -> bool {
    let mut i = start;
    while i < end {
        let b = i % 64;
        let cnt = (64 - b).min(end - i);
        let mask = if cnt == 64 {
            !0
        } else {
            ((1u64 << cnt) - 1) << b
        };
        if !f((i / 64) as usize, mask) {
            return false;
        }
        i += cnt;
    }
    true
}

impl Coverage {
    fn new(len: u64) -> Coverage {
        Coverage {
            len,
            next: 0,
            covered: 0,
            bits: None,
        }
    }

    /// Marks `[rel, rel + n)`; false if any byte was already covered.
    fn add(&mut self, rel: u64, n: u64) -> bool {
        debug_assert!(rel + n <= self.len);
        if self.bits.is_none() {
            if rel == self.next {
                self.next += n;
                self.covered += n;
                return true;
            }
            if rel < self.next {
                return false;
            }
            let mut bits = vec![0u64; self.len.div_ceil(64) as usize];
            for_words(0, self.next, |w, m| {
                bits[w] |= m;
                true
            });
            self.bits = Some(bits);
        }
        let bits = self.bits.as_mut().expect("bitmap set above");
        if !for_words(rel, rel + n, |w, m| bits[w] & m == 0) {
            return false;
        }
        for_words(rel, rel + n, |w, m| {
            bits[w] |= m;
            true
        });
        self.covered += n;
        true
    }

    fn complete(&self) -> bool {
        self.covered == self.len
    }
}

/// Cuts a context's extents (ascending, contiguous) back to end at `end`.
fn truncate_extents(list: &mut Vec<Extent>, end: u64) {
    while list.last().is_some_and(|l| l.offset >= end) {
        list.pop();
    }
    if let Some(last) = list.last_mut() {
        last.length = last.length.min(end - last.offset);
    }
}

fn push_merged(list: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = list.last_mut() {
        if last.offset + last.length == e.offset && last.flags == e.flags {
            last.length += e.length;
            return;
        }
    }
    list.push(e);
}

impl Client {
    pub(crate) fn new(
        conn: Conn,
        info: ExportInfo,
        structured: bool,
        contexts: Vec<MetaContext>,
        timeout: Option<Duration>,
    ) -> Client {
        let min = info.block_size.minimum.max(1);
        let mut max = info.block_size.maximum.min(proto::MAX_PAYLOAD);
        max -= max % min;
        Client {
            conn,
            info,
            structured,
            contexts,
            max_payload: max.max(min),
            request_size: DEFAULT_REQUEST_SIZE.min(max.max(min)),
            next_cookie: 1,
            broken: None,
            closed: false,
            timeout,
            pending: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Connects to `address`, negotiates structured replies (if asked) and the meta contexts
    /// of `options` (each must be granted), and enters transmission with `NBD_OPT_GO`.
    pub fn connect(address: &Address, options: &ConnectOptions) -> Result<Client> {
        let hs = Handshake::connect(address, options.timeout)?;
        Self::negotiate(hs, options)
    }

    /// Like [`connect`](Self::connect) over an already connected stream.
    pub fn connect_transport(
        transport: Box<dyn Transport>,
        options: &ConnectOptions,
    ) -> Result<Client> {
        let hs = Handshake::start(transport, options.timeout)?;
        Self::negotiate(hs, options)
    }

    fn negotiate(mut hs: Handshake, options: &ConnectOptions) -> Result<Client> {
        if let Some(tls) = &options.tls {
            hs.starttls(tls)?;
        }
        if options.structured_replies || !options.meta_contexts.is_empty() {
            let ok = hs.structured_replies()?;
            if !ok && !options.meta_contexts.is_empty() {
                return Err(Error::Unsupported(format!(
                    "the NBD server does not support structured replies, which meta contexts {:?} need",
                    options.meta_contexts
                )));
            }
        }
        if !options.meta_contexts.is_empty() {
            let wanted: Vec<&str> = options.meta_contexts.iter().map(|s| s.as_str()).collect();
            hs.set_meta_contexts(&options.export, &wanted)?;
        }
        let mut client = hs.go(&options.export)?;
        if let Some(n) = options.request_size {
            client.set_request_size(n);
        }
        Ok(client)
    }

    /// The export's size, flags and block sizes.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Whether structured replies are in use.
    pub fn structured_replies(&self) -> bool {
        self.structured
    }

    /// The meta contexts granted for this export (answered by every BLOCK_STATUS).
    pub fn meta_contexts(&self) -> &[MetaContext] {
        &self.contexts
    }

    /// The largest READ/WRITE payload sent in one request: the export's maximum block size,
    /// capped at 32 MiB. Longer reads and writes are split.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// The size of the READ and WRITE requests longer transfers are split into (default
    /// 2 MiB, never above [`max_payload`](Self::max_payload)).
    pub fn request_size(&self) -> u32 {
        self.request_size
    }

    /// Sets the request size: clamped to the export's minimum and
    /// [`max_payload`](Self::max_payload) and rounded down to a multiple of the minimum
    /// block size. Returns the size in force.
    pub fn set_request_size(&mut self, bytes: u32) -> u32 {
        let min = self.info.block_size.minimum.max(1);
        let n = bytes.clamp(min, self.max_payload);
        self.request_size = n - n % min;
        self.request_size
    }

    fn usable(&self) -> Result<()> {
        if let Some(r) = &self.broken {
            return Err(Error::Broken(r.clone()));
        }
        if self.closed {
            return Err(Error::Broken("the client disconnected".into()));
        }
        Ok(())
    }

    /// Records a failure that leaves the connection unusable.
    fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.breaks_connection() {
                self.broken = Some(e.to_string());
                self.pending.clear();
                self.conn.shutdown();
            } else if let Error::Server {
                errno: proto::ESHUTDOWN,
                ..
            } = e
            {
                // The protocol asks the client to disconnect on ESHUTDOWN.
                let _ = self.send_disc();
                self.pending.clear();
                self.broken = Some("the server is shutting down (ESHUTDOWN)".into());
                self.conn.shutdown();
            }
        }
        r
    }

    fn check_range(&self, cmd: u16, offset: u64, length: u64) -> Result<()> {
        match offset.checked_add(length) {
            Some(end) if end <= self.info.size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "{} of {length} bytes at offset {offset} goes beyond the end of export {:?} ({} bytes)",
                command_name(cmd),
                self.info.name,
                self.info.size
            ))),
        }
    }

    fn need_flag(&self, flag: u16, flag_name: &str, what: &str) -> Result<()> {
        if self.info.flags & flag == 0 {
            return Err(Error::Unsupported(format!(
                "export {:?} does not advertise {flag_name}, so {what} cannot be used",
                self.info.name
            )));
        }
        Ok(())
    }

    fn need_writable(&self, what: &str) -> Result<()> {
        if self.info.read_only() {
            return Err(Error::Unsupported(format!(
                "export {:?} is read-only; {what} refused",
                self.info.name
            )));
        }
        Ok(())
    }

    fn send(
        &mut self,
        flags: u16,
        cmd: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<Req> {
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let mut h = [0u8; 28];
        h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        h[4..6].copy_from_slice(&flags.to_be_bytes());
        h[6..8].copy_from_slice(&cmd.to_be_bytes());
        h[8..16].copy_from_slice(&cookie.to_be_bytes());
        h[16..24].copy_from_slice(&offset.to_be_bytes());
        h[24..28].copy_from_slice(&length.to_be_bytes());
        let during = format!("sending {} at offset {offset}", command_name(cmd));
        self.conn.write_all(&[&h, payload], &during)?;
        Ok(Req {
            cmd,
            cookie,
            offset,
            length: length as u64,
        })
    }

    fn send_disc(&mut self) -> Result<()> {
        self.send(0, CMD_DISC, 0, 0, &[]).map(|_| ())
    }

    fn during(req: &Req) -> String {
        format!(
            "waiting for the reply to {} of {} bytes at offset {}",
            command_name(req.cmd),
            req.length,
            req.offset
        )
    }

    fn read_header(&mut self, req: &Req) -> Result<Header> {
        let during = Self::during(req);
        let magic = self.conn.read_u32(&during)?;
        let (header, cookie) = match magic {
            SIMPLE_REPLY_MAGIC => {
                let error = self.conn.read_u32(&during)?;
                let cookie = self.conn.read_u64(&during)?;
                (Header::Simple { error }, cookie)
            }
            STRUCTURED_REPLY_MAGIC => {
                if !self.structured {
                    return Err(bad(format!(
                        "structured reply chunk to {} although structured replies were not negotiated",
                        command_name(req.cmd)
                    )));
                }
                let flags = self.conn.read_u16(&during)?;
                let kind = self.conn.read_u16(&during)?;
                let cookie = self.conn.read_u64(&during)?;
                let length = self.conn.read_u32(&during)?;
                (Header::Chunk { flags, kind, length }, cookie)
            }
            EXTENDED_REPLY_MAGIC => {
                return Err(bad(
                    "extended-header reply although extended headers were not negotiated".into(),
                ))
            }
            other => {
                return Err(bad(format!(
                    "reply magic 0x{other:08x} is neither simple (0x{SIMPLE_REPLY_MAGIC:08x}) nor structured (0x{STRUCTURED_REPLY_MAGIC:08x})"
                )))
            }
        };
        if cookie != req.cookie {
            return Err(bad(format!(
                "reply carries cookie {cookie}, but the request in flight ({}) has cookie {}",
                command_name(req.cmd),
                req.cookie
            )));
        }
        Ok(header)
    }

    fn read_error_chunk(&mut self, req: &Req, kind: u16, length: u32) -> Result<ServerError> {
        if !(6..=MAX_ERROR_CHUNK).contains(&length) {
            return Err(bad(format!(
                "error chunk of {length} bytes in the reply to {}: must be 6..={MAX_ERROR_CHUNK}",
                command_name(req.cmd)
            )));
        }
        let d = self.conn.read_vec(length as usize, &Self::during(req))?;
        let errno = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        if errno == 0 {
            return Err(bad(format!(
                "error chunk with error value 0 in the reply to {}",
                command_name(req.cmd)
            )));
        }
        let mlen = u16::from_be_bytes([d[4], d[5]]) as usize;
        if 6 + mlen > d.len() {
            return Err(bad(format!(
                "error chunk message of {mlen} bytes exceeds the chunk's {length} bytes"
            )));
        }
        let message = String::from_utf8_lossy(&d[6..6 + mlen]).into_owned();
        let rest = &d[6 + mlen..];
        let offset = match kind {
            REPLY_TYPE_ERROR if !rest.is_empty() => {
                return Err(bad(format!(
                    "NBD_REPLY_TYPE_ERROR has {} stray bytes after its message",
                    rest.len()
                )))
            }
            REPLY_TYPE_ERROR_OFFSET => {
                if rest.len() != 8 {
                    return Err(bad(format!(
                        "NBD_REPLY_TYPE_ERROR_OFFSET has {} bytes after its message, expected 8",
                        rest.len()
                    )));
                }
                let off = u64::from_be_bytes(rest.try_into().expect("8 bytes"));
                if off < req.offset || off - req.offset >= req.length {
                    return Err(bad(format!(
                        "error offset {off} lies outside the request [{}, {})",
                        req.offset,
                        req.offset + req.length
                    )));
                }
                Some(off)
            }
            _ => None,
        };
        Ok(ServerError {
            errno,
            message,
            offset,
        })
    }

    fn server_error(req: &Req, e: ServerError) -> Error {
        Error::Server {
            command: command_name(req.cmd),
            offset: req.offset,
            length: req.length,
            errno: e.errno,
            error_offset: e.offset,
            message: e.message,
        }
    }

    fn simple_error(req: &Req, errno: u32) -> Error {
        Error::Server {
            command: command_name(req.cmd),
            offset: req.offset,
            length: req.length,
            errno,
            error_offset: None,
            message: String::new(),
        }
    }

    /// Waits for the reply to a command without reply payload.
    fn finish_plain(&mut self, req: &Req) -> Result<()> {
        let mut first_err = None;
        let mut chunks = 0u32;
        loop {
            match self.read_header(req)? {
                Header::Simple { error } => {
                    if chunks > 0 {
                        return Err(bad(format!(
                            "simple reply in the middle of a structured reply to {}",
                            command_name(req.cmd)
                        )));
                    }
                    return if error == 0 {
                        Ok(())
                    } else {
                        Err(Self::simple_error(req, error))
                    };
                }
                Header::Chunk {
                    flags,
                    kind,
                    length,
                } => {
                    chunks = chunks.saturating_add(1);
                    let done = flags & REPLY_FLAG_DONE != 0;
                    match kind {
                        REPLY_TYPE_NONE => {
                            if length != 0 {
                                return Err(bad(format!(
                                    "NBD_REPLY_TYPE_NONE with a {length}-byte payload"
                                )));
                            }
                            if !done {
                                return Err(
                                    bad("NBD_REPLY_TYPE_NONE without the DONE flag".into()),
                                );
                            }
                        }
                        k if k & REPLY_TYPE_ERROR_BIT != 0 => {
                            let e = self.read_error_chunk(req, k, length)?;
                            first_err.get_or_insert(e);
                        }
                        k => {
                            return Err(bad(format!(
                                "chunk type {k} ({}) in the reply to {}",
                                chunk_name(k),
                                command_name(req.cmd)
                            )))
                        }
                    }
                    if done {
                        break;
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(Self::server_error(req, e)),
            None => Ok(()),
        }
    }

    /// Reads `buf.len()` bytes at `offset`. Split into requests of at most
    /// [`request_size`](Self::request_size), up to [`max_in_flight`](Self::max_in_flight)
    /// of them outstanding at once (their replies may arrive in any order, their chunks
    /// interleaved); holes are zero-filled. `offset` and the length should be multiples
    /// of the export's minimum block size. A server error for one request is reported
    /// (the lowest offset's, after every outstanding reply has been received, so the
    /// connection stays usable); `buf` is then partly filled. Refused while
    /// [`submit_read`](Self::submit_read) reads are in flight.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.usable()?;
        self.idle("NBD_CMD_READ")?;
        self.check_range(CMD_READ, offset, buf.len() as u64)?;
        let max = self.request_size as usize;
        let mut next = 0usize;
        let mut first_err: Option<Error> = None;
        loop {
            while next < buf.len() && self.pending.len() < self.max_in_flight {
                let n = (buf.len() - next).min(max);
                let r = self.send_read(offset + next as u64, n as u32, Dest::Caller(next));
                self.guard(r)?;
                next += n;
            }
            if self.pending.is_empty() {
                break;
            }
            let r = self.pump(buf);
            let (_, result) = self.guard(r)?;
            if let Err(e) = result {
                // Stop asking; collect what is outstanding so the connection stays in step.
                next = buf.len();
                let lower = match (&first_err, &e) {
                    (Some(Error::Server { offset: a, .. }), Error::Server { offset: b, .. }) => {
                        b < a
                    }
                    (None, _) => true,
                    _ => false,
                };
                if lower {
                    first_err = Some(e);
                }
            }
        }
        match first_err {
            Some(e) => {
                let r = Err(e);
                self.guard(r)
            }
            None => Ok(()),
        }
    }

    /// Sends a READ of `buf.len()` bytes at `offset` without waiting for its reply, and
    /// returns its cookie. The reply fills `buf`, which [`next_read`](Self::next_read)
    /// hands back. At most [`max_in_flight`](Self::max_in_flight) reads may be
    /// outstanding and `buf` may hold at most [`max_payload`](Self::max_payload) bytes
    /// (both are [`Error::InvalidArgument`]); other commands are refused until every
    /// submitted read has been collected.
    pub fn submit_read(&mut self, offset: u64, buf: Vec<u8>) -> Result<u64> {
        self.usable()?;
        if buf.is_empty() || buf.len() > self.max_payload as usize {
            return Err(Error::InvalidArgument(format!(
                "a submitted NBD_CMD_READ must be 1..={} bytes (the export's maximum payload), not {}",
                self.max_payload,
                buf.len()
            )));
        }
        if self.pending.len() >= self.max_in_flight {
            return Err(Error::InvalidArgument(format!(
                "{} reads are already in flight, the most this client allows (collect one with next_read first)",
                self.pending.len()
            )));
        }
        self.check_range(CMD_READ, offset, buf.len() as u64)?;
        let n = buf.len() as u32;
        let r = self.send_read(offset, n, Dest::Owned(buf));
        self.guard(r)
    }

    /// Number of submitted reads whose replies have not been collected yet.
    pub fn reads_in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The most READ requests kept outstanding at once (default [`DEFAULT_MAX_IN_FLIGHT`]).
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Sets how many READ requests may be outstanding at once (clamped to
    /// 1..=[`MAX_IN_FLIGHT`]; 1 is one request at a time). Returns the value in force.
    pub fn set_max_in_flight(&mut self, n: usize) -> usize {
        self.max_in_flight = n.clamp(1, MAX_IN_FLIGHT);
        self.max_in_flight
    }

    /// Waits for the next submitted read to complete, in whatever order the server answers.
    /// The outer error is a failure of the connection (it is then unusable and every read
    /// in flight is lost); [`ReadDone::result`] is the server's answer to that one request
    /// (an [`Error::Server`] leaves the connection and the other reads usable).
    pub fn next_read(&mut self) -> Result<ReadDone> {
        self.usable()?;
        if self.pending.is_empty() {
            return Err(Error::InvalidArgument(
                "next_read with no submitted read in flight".into(),
            ));
        }
        if self
            .pending
            .iter()
            .any(|p| matches!(p.dest, Dest::Caller(_)))
        {
            return Err(Error::InvalidArgument(
                "next_read during a read() call".into(),
            ));
        }
        let r = self.pump(&mut []);
        let (p, result) = self.guard(r)?;
        let buf = match p.dest {
            Dest::Owned(v) => v,
            Dest::Caller(_) => unreachable!("checked above"),
        };
        let result = match result {
            Err(e) => {
                let r = Err(e);
                self.guard(r)
            }
            Ok(()) => Ok(()),
        };
        Ok(ReadDone {
            cookie: p.req.cookie,
            offset: p.req.offset,
            buf,
            result,
        })
    }

    /// Refuses a command other than READ while reads are outstanding (replies would have
    /// to be sorted out of the stream for it).
    fn idle(&self, what: &str) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "{what} while {} submitted reads are in flight; collect them with next_read first",
            self.pending.len()
        )))
    }

    fn send_read(&mut self, offset: u64, len: u32, dest: Dest) -> Result<u64> {
        let req = self.send(0, CMD_READ, offset, len, &[])?;
        self.pending.push(Pending {
            req,
            dest,
            cov: Coverage::new(len as u64),
            first_err: None,
        });
        Ok(req.cookie)
    }

    /// The destination slice of pending read `i`: its own buffer, or its part of `ext`.
    fn dest<'a>(p: &'a mut Pending, ext: &'a mut [u8]) -> Result<&'a mut [u8]> {
        let len = p.req.length as usize;
        match &mut p.dest {
            Dest::Owned(v) => Ok(&mut v[..len]),
            Dest::Caller(base) => ext
                .get_mut(*base..*base + len)
                .ok_or_else(|| Error::InvalidArgument("read destination out of range".into())),
        }
    }

    /// Receives reply chunks of the pending reads until one of them is complete; removes
    /// and returns it with its outcome (`Err` only for an error the server reported).
    fn pump(&mut self, ext: &mut [u8]) -> Result<(Pending, Result<()>)> {
        let during = if self.pending.len() == 1 {
            Self::during(&self.pending[0].req)
        } else {
            format!(
                "waiting for the replies to {} NBD_CMD_READ requests from offset {}",
                self.pending.len(),
                self.pending.iter().map(|p| p.req.offset).min().unwrap_or(0)
            )
        };
        loop {
            let magic = self.conn.read_u32(&during)?;
            let (header, cookie) = match magic {
                SIMPLE_REPLY_MAGIC => {
                    let error = self.conn.read_u32(&during)?;
                    let cookie = self.conn.read_u64(&during)?;
                    (Header::Simple { error }, cookie)
                }
                STRUCTURED_REPLY_MAGIC => {
                    if !self.structured {
                        return Err(bad(
                            "structured reply chunk to NBD_CMD_READ although structured replies were not negotiated".into(),
                        ));
                    }
                    let flags = self.conn.read_u16(&during)?;
                    let kind = self.conn.read_u16(&during)?;
                    let cookie = self.conn.read_u64(&during)?;
                    let length = self.conn.read_u32(&during)?;
                    (Header::Chunk { flags, kind, length }, cookie)
                }
                EXTENDED_REPLY_MAGIC => {
                    return Err(bad(
                        "extended-header reply although extended headers were not negotiated"
                            .into(),
                    ))
                }
                other => {
                    return Err(bad(format!(
                        "reply magic 0x{other:08x} is neither simple (0x{SIMPLE_REPLY_MAGIC:08x}) nor structured (0x{STRUCTURED_REPLY_MAGIC:08x})"
                    )))
                }
            };
            let Some(i) = self.pending.iter().position(|p| p.req.cookie == cookie) else {
                let cookies: Vec<u64> = self.pending.iter().map(|p| p.req.cookie).collect();
                return Err(bad(format!(
                    "reply carries cookie {cookie}, which no request in flight has (NBD_CMD_READ cookies {cookies:?})"
                )));
            };
            let (flags, kind, length) = match header {
                Header::Simple { error } => {
                    if self.structured {
                        return Err(bad(format!(
                            "simple reply (error {error}) to NBD_CMD_READ although structured replies were negotiated"
                        )));
                    }
                    let p = self.pending.remove(i);
                    if error != 0 {
                        let e = Self::simple_error(&p.req, error);
                        return Ok((p, Err(e)));
                    }
                    let mut p = p;
                    let d = Self::during(&p.req);
                    let dst = Self::dest(&mut p, ext)?;
                    self.conn.read_exact(dst, &d)?;
                    return Ok((p, Ok(())));
                }
                Header::Chunk {
                    flags,
                    kind,
                    length,
                } => (flags, kind, length),
            };
            let done = flags & REPLY_FLAG_DONE != 0;
            let req = self.pending[i].req;
            let len = req.length;
            match kind {
                REPLY_TYPE_NONE => {
                    if length != 0 {
                        return Err(bad(format!(
                            "NBD_REPLY_TYPE_NONE with a {length}-byte payload"
                        )));
                    }
                    if !done {
                        return Err(bad("NBD_REPLY_TYPE_NONE without the DONE flag".into()));
                    }
                }
                REPLY_TYPE_OFFSET_DATA => {
                    if length < 9 || length as u64 - 8 > len {
                        return Err(bad(format!(
                            "NBD_REPLY_TYPE_OFFSET_DATA of {length} bytes in the reply to a {len}-byte read: must be 9..={}",
                            len + 8
                        )));
                    }
                    let n = length as u64 - 8;
                    let off = self.conn.read_u64(&Self::during(&req))?;
                    let rel = self.chunk_place(&req, off, n, "data")?;
                    if !self.pending[i].cov.add(rel, n) {
                        return Err(bad(format!(
                            "data chunk at offset {off} of {n} bytes overlaps an earlier chunk of the same read"
                        )));
                    }
                    let (a, b) = (rel as usize, (rel + n) as usize);
                    let dst = Self::dest(&mut self.pending[i], ext)?;
                    self.conn.read_exact(&mut dst[a..b], &Self::during(&req))?;
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    if length != 12 {
                        return Err(bad(format!(
                            "NBD_REPLY_TYPE_OFFSET_HOLE of {length} bytes, expected 12"
                        )));
                    }
                    let off = self.conn.read_u64(&Self::during(&req))?;
                    let n = self.conn.read_u32(&Self::during(&req))? as u64;
                    if n == 0 {
                        return Err(bad(format!("hole chunk of length 0 at offset {off}")));
                    }
                    let rel = self.chunk_place(&req, off, n, "hole")?;
                    if !self.pending[i].cov.add(rel, n) {
                        return Err(bad(format!(
                            "hole chunk at offset {off} of {n} bytes overlaps an earlier chunk of the same read"
                        )));
                    }
                    let dst = Self::dest(&mut self.pending[i], ext)?;
                    dst[rel as usize..(rel + n) as usize].fill(0);
                }
                k if k & REPLY_TYPE_ERROR_BIT != 0 => {
                    let e = self.read_error_chunk(&req, k, length)?;
                    self.pending[i].first_err.get_or_insert(e);
                }
                k => {
                    return Err(bad(format!(
                        "chunk type {k} ({}) in the reply to NBD_CMD_READ",
                        chunk_name(k)
                    )))
                }
            }
            if !done {
                continue;
            }
            let mut p = self.pending.remove(i);
            if let Some(e) = p.first_err.take() {
                let e = Self::server_error(&p.req, e);
                return Ok((p, Err(e)));
            }
            if !p.cov.complete() {
                return Err(bad(format!(
                    "the reply to NBD_CMD_READ of {len} bytes at offset {} ended with only {} bytes answered and no error",
                    req.offset, p.cov.covered
                )));
            }
            return Ok((p, Ok(())));
        }
    }

    /// Checks that `[off, off + n)` lies within the request; returns the offset relative to it.
    fn chunk_place(&self, req: &Req, off: u64, n: u64, what: &str) -> Result<u64> {
        match off.checked_sub(req.offset) {
            Some(rel) if rel <= req.length && n <= req.length - rel => Ok(rel),
            _ => Err(bad(format!(
                "{what} chunk at offset {off} of {n} bytes lies outside the request [{}, {})",
                req.offset,
                req.offset.saturating_add(req.length)
            ))),
        }
    }

    /// Writes `data` at `offset` (split into [`request_size`](Self::request_size) requests);
    /// `fua` asks for each request to be durable before its reply.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.usable()?;
        self.idle("NBD_CMD_WRITE")?;
        self.need_writable("NBD_CMD_WRITE")?;
        if fua {
            self.need_flag(FLAG_SEND_FUA, "NBD_FLAG_SEND_FUA", "FUA")?;
        }
        self.check_range(CMD_WRITE, offset, data.len() as u64)?;
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        let step = self.request_size as usize;
        for (i, part) in data.chunks(step).enumerate() {
            let off = offset + (i * step) as u64;
            let r = self
                .send(flags, CMD_WRITE, off, part.len() as u32, part)
                .and_then(|req| self.finish_plain(&req));
            self.guard(r)?;
        }
        Ok(())
    }

    fn ranged(&mut self, cmd: u16, flags: u16, offset: u64, length: u64) -> Result<()> {
        self.idle(command_name(cmd))?;
        self.check_range(cmd, offset, length)?;
        let mut pos = offset;
        let end = offset + length;
        while pos < end {
            let n = (end - pos).min(MAX_ZERO_REQUEST);
            let r = self
                .send(flags, cmd, pos, n as u32, &[])
                .and_then(|req| self.finish_plain(&req));
            self.guard(r)?;
            pos += n;
        }
        Ok(())
    }

    /// `NBD_CMD_WRITE_ZEROES` over `[offset, offset + length)`. Needs
    /// `NBD_FLAG_SEND_WRITE_ZEROES` (and the flags' own transmission flags).
    pub fn write_zeroes(&mut self, offset: u64, length: u64, flags: ZeroFlags) -> Result<()> {
        self.usable()?;
        self.need_writable("NBD_CMD_WRITE_ZEROES")?;
        self.need_flag(
            FLAG_SEND_WRITE_ZEROES,
            "NBD_FLAG_SEND_WRITE_ZEROES",
            "WRITE_ZEROES",
        )?;
        let mut f = 0;
        if flags.no_hole {
            f |= CMD_FLAG_NO_HOLE;
        }
        if flags.fast_zero {
            self.need_flag(FLAG_SEND_FAST_ZERO, "NBD_FLAG_SEND_FAST_ZERO", "FAST_ZERO")?;
            f |= CMD_FLAG_FAST_ZERO;
        }
        if flags.fua {
            self.need_flag(FLAG_SEND_FUA, "NBD_FLAG_SEND_FUA", "FUA")?;
            f |= CMD_FLAG_FUA;
        }
        self.ranged(CMD_WRITE_ZEROES, f, offset, length)
    }

    /// `NBD_CMD_TRIM` (discard) over `[offset, offset + length)`. Needs `NBD_FLAG_SEND_TRIM`.
    pub fn trim(&mut self, offset: u64, length: u64) -> Result<()> {
        self.usable()?;
        self.need_writable("NBD_CMD_TRIM")?;
        self.need_flag(FLAG_SEND_TRIM, "NBD_FLAG_SEND_TRIM", "TRIM")?;
        self.ranged(CMD_TRIM, 0, offset, length)
    }

    /// `NBD_CMD_FLUSH`. Needs `NBD_FLAG_SEND_FLUSH`.
    pub fn flush(&mut self) -> Result<()> {
        self.usable()?;
        self.idle("NBD_CMD_FLUSH")?;
        self.need_flag(FLAG_SEND_FLUSH, "NBD_FLAG_SEND_FLUSH", "FLUSH")?;
        let r = self
            .send(0, CMD_FLUSH, 0, 0, &[])
            .and_then(|req| self.finish_plain(&req));
        self.guard(r)
    }

    /// Block status of every granted meta context over `[offset, offset + length)`.
    ///
    /// Sends as many `NBD_CMD_BLOCK_STATUS` requests as needed: contexts may answer
    /// different lengths, and the next request starts where the shortest answer ended.
    /// Returns one [`ContextExtents`] per granted context, in the order of
    /// [`meta_contexts`](Self::meta_contexts), each covering the range exactly.
    /// `req_one` sets `NBD_CMD_FLAG_REQ_ONE` (one extent per context per reply).
    /// Memory grows with the number of distinct extents in the range: query a large
    /// export window by window (e.g. 1 GiB at a time), or with
    /// [`block_status_upto`](Self::block_status_upto).
    pub fn block_status(
        &mut self,
        offset: u64,
        length: u64,
        req_one: bool,
    ) -> Result<Vec<ContextExtents>> {
        let (out, covered) = self.block_status_upto(offset, length, req_one, usize::MAX)?;
        debug_assert_eq!(covered, offset + length);
        Ok(out)
    }

    /// Like [`block_status`](Self::block_status), but stops asking once the contexts
    /// hold `max_extents` extents or more between them (after at least one request):
    /// returns the extents and the end of the range they cover, `offset < end <=
    /// offset + length` (every context covers `[offset, end)` exactly). Memory is
    /// bounded by `max_extents` plus one reply's worth, whatever `length`; a
    /// fragmented range simply comes back shorter.
    pub fn block_status_upto(
        &mut self,
        offset: u64,
        length: u64,
        req_one: bool,
        max_extents: usize,
    ) -> Result<(Vec<ContextExtents>, u64)> {
        self.usable()?;
        self.idle("NBD_CMD_BLOCK_STATUS")?;
        if self.contexts.is_empty() {
            return Err(Error::Unsupported(
                "no meta context was negotiated, so NBD_CMD_BLOCK_STATUS cannot be used; ask for e.g. base:allocation when connecting".into(),
            ));
        }
        self.check_range(CMD_BLOCK_STATUS, offset, length)?;
        let end = offset + length;
        let mut out: Vec<ContextExtents> = self
            .contexts
            .iter()
            .map(|c| ContextExtents {
                context: c.name.clone(),
                extents: Vec::new(),
            })
            .collect();
        let mut covered = vec![offset; self.contexts.len()];
        loop {
            let start = *covered.iter().min().expect("at least one context");
            if start >= end {
                break;
            }
            let held: usize = out.iter().map(|c| c.extents.len()).sum();
            if start > offset && held >= max_extents {
                // Enough held: every context is cut back to the shortest answer.
                for c in &mut out {
                    truncate_extents(&mut c.extents, start);
                }
                return Ok((out, start));
            }
            let n = (end - start).min(MAX_STATUS_REQUEST);
            let r = self.block_status_one(start, n as u32, req_one);
            let per = self.guard(r)?;
            for (i, descs) in per.into_iter().enumerate() {
                let mut pos = start;
                for (len, flags) in descs {
                    let (s, e) = (pos, pos + len);
                    pos = e;
                    if e <= covered[i] {
                        continue;
                    }
                    let s = s.max(covered[i]);
                    push_merged(
                        &mut out[i].extents,
                        Extent {
                            offset: s,
                            length: e - s,
                            flags,
                        },
                    );
                    covered[i] = e;
                }
            }
        }
        Ok((out, end))
    }

    /// One BLOCK_STATUS request; per context (in `self.contexts` order) its descriptors
    /// `(length, flags)` from `offset`, clipped to the request.
    fn block_status_one(
        &mut self,
        offset: u64,
        length: u32,
        req_one: bool,
    ) -> Result<Vec<Vec<(u64, u32)>>> {
        let flags = if req_one { CMD_FLAG_REQ_ONE } else { 0 };
        let req = self.send(flags, CMD_BLOCK_STATUS, offset, length, &[])?;
        let mut per: Vec<Option<Vec<(u64, u32)>>> = vec![None; self.contexts.len()];
        let mut budget = MAX_STATUS_DESCRIPTORS;
        let mut first_err = None;
        let mut chunks = 0u32;
        loop {
            let (cflags, kind, clen) = match self.read_header(&req)? {
                Header::Simple { error } => {
                    if chunks > 0 {
                        return Err(bad(
                            "simple reply in the middle of a structured reply to NBD_CMD_BLOCK_STATUS".into(),
                        ));
                    }
                    if error == 0 {
                        return Err(bad(
                            "simple reply without error to NBD_CMD_BLOCK_STATUS, which needs a structured reply".into(),
                        ));
                    }
                    return Err(Self::simple_error(&req, error));
                }
                Header::Chunk {
                    flags,
                    kind,
                    length,
                } => (flags, kind, length),
            };
            chunks = chunks.saturating_add(1);
            let done = cflags & REPLY_FLAG_DONE != 0;
            match kind {
                REPLY_TYPE_BLOCK_STATUS => {
                    if clen < 12 || (clen - 4) % 8 != 0 {
                        return Err(bad(format!(
                            "NBD_REPLY_TYPE_BLOCK_STATUS of {clen} bytes: must be 4 + 8*n with n >= 1"
                        )));
                    }
                    let count = (clen - 4) / 8;
                    if count > budget {
                        return Err(bad(format!(
                            "NBD_CMD_BLOCK_STATUS reply has more than {MAX_STATUS_DESCRIPTORS} descriptors"
                        )));
                    }
                    budget -= count;
                    if req_one && count != 1 {
                        return Err(bad(format!(
                            "{count} descriptors for one context although NBD_CMD_FLAG_REQ_ONE was set"
                        )));
                    }
                    let during = Self::during(&req);
                    let id = self.conn.read_u32(&during)?;
                    let Some(idx) = self.contexts.iter().position(|c| c.id == id) else {
                        return Err(bad(format!(
                            "block status for context id {id}, which was not negotiated"
                        )));
                    };
                    if per[idx].is_some() {
                        return Err(bad(format!(
                            "two block status chunks for context {:?} in one reply",
                            self.contexts[idx].name
                        )));
                    }
                    let mut list: Vec<(u64, u32)> = Vec::new();
                    let mut pos = 0u64;
                    for _ in 0..count {
                        let l = self.conn.read_u32(&during)? as u64;
                        let f = self.conn.read_u32(&during)?;
                        if l == 0 {
                            return Err(bad(format!(
                                "zero-length block status descriptor for context {:?}",
                                self.contexts[idx].name
                            )));
                        }
                        if pos >= length as u64 {
                            return Err(bad(format!(
                                "block status descriptor for context {:?} starts at offset {} beyond the request [{offset}, {})",
                                self.contexts[idx].name,
                                offset + pos,
                                offset + length as u64
                            )));
                        }
                        let take = l.min(length as u64 - pos);
                        pos += l;
                        match list.last_mut() {
                            Some(last) if last.1 == f => last.0 += take,
                            _ => list.push((take, f)),
                        }
                    }
                    per[idx] = Some(list);
                }
                REPLY_TYPE_NONE => {
                    if clen != 0 {
                        return Err(bad(format!(
                            "NBD_REPLY_TYPE_NONE with a {clen}-byte payload"
                        )));
                    }
                    if !done {
                        return Err(bad("NBD_REPLY_TYPE_NONE without the DONE flag".into()));
                    }
                }
                k if k & REPLY_TYPE_ERROR_BIT != 0 => {
                    let e = self.read_error_chunk(&req, k, clen)?;
                    first_err.get_or_insert(e);
                }
                k => {
                    return Err(bad(format!(
                        "chunk type {k} ({}) in the reply to NBD_CMD_BLOCK_STATUS",
                        chunk_name(k)
                    )))
                }
            }
            if done {
                break;
            }
        }
        if let Some(e) = first_err {
            return Err(Self::server_error(&req, e));
        }
        let mut out = Vec::with_capacity(per.len());
        for (i, p) in per.into_iter().enumerate() {
            match p {
                Some(l) => out.push(l),
                None => {
                    return Err(bad(format!(
                        "the reply to NBD_CMD_BLOCK_STATUS at offset {offset} has no extents for context {:?}",
                        self.contexts[i].name
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Ends the session cleanly with `NBD_CMD_DISC` and closes the socket.
    pub fn disconnect(mut self) -> Result<()> {
        self.usable()?;
        let r = self.send_disc();
        self.closed = true;
        self.conn.shutdown();
        r
    }

    /// The per-operation timeout in force.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if !self.closed && self.broken.is_none() {
            let _ = self.send_disc();
        }
        self.conn.shutdown();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::handshake::BlockSize;
    use proptest::prelude::*;
    use std::io::{self, Cursor, Read, Write};

    /// A transport that reads scripted bytes and swallows writes.
    pub(crate) struct Mem(pub(crate) Cursor<Vec<u8>>);
    impl Read for Mem {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Mem {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Transport for Mem {
        fn set_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    fn client(input: Vec<u8>, structured: bool) -> Client {
        let conn = Conn::new(Box::new(Mem(Cursor::new(input))), None).unwrap();
        let info = ExportInfo {
            name: "x".into(),
            canonical_name: None,
            description: None,
            size: 1 << 20,
            flags: FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES,
            block_size: BlockSize {
                minimum: 1,
                preferred: 4096,
                maximum: 65536,
                advertised: true,
            },
        };
        let contexts = vec![
            MetaContext {
                id: 1,
                name: "base:allocation".into(),
            },
            MetaContext {
                id: 2,
                name: "qemu:dirty-bitmap:b".into(),
            },
        ];
        Client::new(conn, info, structured, contexts, None)
    }

    #[test]
    fn a_client_can_move_to_another_thread() {
        fn is_send<T: Send>() {}
        is_send::<Client>();
        is_send::<Handshake>();
    }

    #[test]
    fn coverage_detects_overlap_in_and_out_of_order() {
        let mut c = Coverage::new(200);
        assert!(c.add(0, 10));
        assert!(c.add(10, 5));
        assert!(!c.add(14, 1), "overlap with in-order prefix");
        assert!(c.add(100, 70));
        assert!(!c.add(160, 20), "overlap with out-of-order chunk");
        assert!(c.add(15, 85));
        assert!(!c.complete());
        assert!(c.add(170, 30));
        assert!(c.complete());
    }

    /// A chunk header with the right magic and cookie 1 followed by random bytes.
    fn framed() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<u16>(),
            0u16..8,
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..256),
        )
            .prop_map(|(flags, kind, len, tail)| {
                let kind = if kind >= 6 { 0x8000 | (kind - 5) } else { kind };
                let mut v = Vec::new();
                v.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
                v.extend_from_slice(&flags.to_be_bytes());
                v.extend_from_slice(&kind.to_be_bytes());
                v.extend_from_slice(&1u64.to_be_bytes());
                v.extend_from_slice(&(len % 300).to_be_bytes());
                v.extend_from_slice(&tail);
                v
            })
    }

    proptest! {
        #[test]
        fn reply_parser_never_panics_on_random_bytes(input in proptest::collection::vec(any::<u8>(), 0..512), structured: bool) {
            let mut c = client(input.clone(), structured);
            let mut buf = vec![0u8; 4096];
            let _ = c.read(0, &mut buf);
            let mut c = client(input.clone(), structured);
            let _ = c.block_status(0, 1 << 20, false);
            let mut c = client(input, structured);
            let _ = c.flush();
        }

        #[test]
        fn reply_parser_never_panics_on_framed_chunks(input in framed(), req_one: bool) {
            let mut c = client(input.clone(), true);
            let mut buf = vec![0u8; 512];
            let r = c.read(100, &mut buf);
            // Whatever the outcome, a failed read never leaves a usable-looking connection
            // behind a protocol error.
            if let Err(e) = r {
                if e.breaks_connection() {
                    prop_assert!(matches!(c.read(0, &mut buf), Err(Error::Broken(_))));
                }
            }
            let mut c = client(input.clone(), true);
            let _ = c.block_status(0, 1 << 20, req_one);
            let mut c = client(input, true);
            let _ = c.trim(0, 4096);
        }
    }
}
