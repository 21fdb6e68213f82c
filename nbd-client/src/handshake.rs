//! The fixed newstyle handshake and option haggling.

use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, OptionErrorKind, Result};
use crate::proto::{self, *};
use crate::tls::{TlsConfig, TlsStream};
use crate::transport::{Address, Conn, Transport};

/// An export as listed by `NBD_OPT_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportEntry {
    /// The export name.
    pub name: String,
    /// The server's description (may be empty).
    pub description: String,
}

/// A meta context the server granted, with the id it uses in block status replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContext {
    /// The server-chosen context id.
    pub id: u32,
    /// The context name, e.g. `base:allocation` or `qemu:dirty-bitmap:cp1`.
    pub name: String,
}

/// Block size constraints of an export (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Minimum block size: requests should be aligned to it.
    pub minimum: u32,
    /// Preferred block size.
    pub preferred: u32,
    /// Maximum payload of one READ or WRITE.
    pub maximum: u32,
    /// Whether the server sent these values (otherwise they are the protocol's defaults).
    pub advertised: bool,
}

/// What the server says about an export (`NBD_OPT_INFO` / `NBD_OPT_GO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The export name that was asked for.
    pub name: String,
    /// The export's canonical name, if the server sent `NBD_INFO_NAME`.
    pub canonical_name: Option<String>,
    /// The export's description, if the server sent `NBD_INFO_DESCRIPTION`.
    pub description: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`FLAG_*` constants of this crate).
    pub flags: u16,
    /// Block size constraints.
    pub block_size: BlockSize,
}

impl ExportInfo {
    /// `NBD_FLAG_READ_ONLY`.
    pub fn read_only(&self) -> bool {
        self.flags & FLAG_READ_ONLY != 0
    }
    /// Whether the export advertises a transmission flag.
    pub fn has_flag(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// Options for [`Client::connect`]: which export, which meta contexts, timeouts.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Export name ("" is the server's default export).
    pub export: String,
    /// Meta contexts to select; every one must be granted or the connection fails with
    /// [`Error::MetaContextNotGranted`]. Needs structured replies.
    pub meta_contexts: Vec<String>,
    /// Ask for structured replies (default true). Without them READ uses simple replies
    /// and BLOCK_STATUS is unavailable.
    pub structured_replies: bool,
    /// Timeout of every socket read and write (and of the TCP connect); `None` waits forever.
    pub timeout: Option<Duration>,
    /// Upgrade to TLS with `NBD_OPT_STARTTLS` before anything else; a server that refuses
    /// fails the connection (no fallback to plain text).
    pub tls: Option<TlsConfig>,
    /// Size of the READ/WRITE requests longer transfers are split into (see
    /// [`Client::set_request_size`]); `None` keeps the default of 2 MiB.
    pub request_size: Option<u32>,
}

impl ConnectOptions {
    /// Options for `export` with structured replies, no meta context and a 60 s timeout.
    pub fn new(export: &str) -> ConnectOptions {
        ConnectOptions {
            export: export.to_string(),
            meta_contexts: Vec::new(),
            structured_replies: true,
            timeout: Some(Duration::from_secs(60)),
            tls: None,
            request_size: None,
        }
    }

    /// Requires TLS with these credentials.
    pub fn tls(mut self, tls: TlsConfig) -> ConnectOptions {
        self.tls = Some(tls);
        self
    }

    /// Adds a meta context to select.
    pub fn meta_context(mut self, name: &str) -> ConnectOptions {
        self.meta_contexts.push(name.to_string());
        self
    }

    /// Sets the per-operation timeout.
    pub fn timeout(mut self, timeout: Option<Duration>) -> ConnectOptions {
        self.timeout = timeout;
        self
    }

    /// Enables or disables structured replies.
    pub fn structured_replies(mut self, on: bool) -> ConnectOptions {
        self.structured_replies = on;
        self
    }
}

/// The option haggling phase of a connection, after the server's greeting.
///
/// Query the server ([`list_exports`](Self::list_exports), [`info`](Self::info),
/// [`list_meta_contexts`](Self::list_meta_contexts)), negotiate features, then enter the
/// transmission phase with [`go`](Self::go).
pub struct Handshake {
    conn: Conn,
    no_zeroes: bool,
    structured: bool,
    meta: Option<(String, Vec<MetaContext>)>,
    timeout: Option<Duration>,
    tls: bool,
}

struct OptReply {
    reply: u32,
    data: Vec<u8>,
}

fn bad(msg: String) -> Error {
    Error::Protocol(msg)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad(format!("{what} is not valid UTF-8")))
}

fn put_string(out: &mut Vec<u8>, s: &str, what: &str) -> Result<()> {
    if s.len() > MAX_STRING {
        return Err(Error::InvalidArgument(format!(
            "{what} is {} bytes long; NBD allows at most {MAX_STRING}",
            s.len()
        )));
    }
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

impl Handshake {
    /// Connects to `address` and performs the greeting.
    pub fn connect(address: &Address, timeout: Option<Duration>) -> Result<Handshake> {
        let t = address.connect(timeout)?;
        Handshake::start(t, timeout)
    }

    /// Performs the greeting over an already connected stream: checks the server's magic
    /// numbers, requires fixed newstyle and sends the client flags (with `NO_ZEROES` when
    /// offered).
    pub fn start(transport: Box<dyn Transport>, timeout: Option<Duration>) -> Result<Handshake> {
        let mut conn = Conn::new(transport, timeout)?;
        let during = "reading the server's greeting";
        let magic = conn.read_u64(during)?;
        if magic != NBDMAGIC {
            return Err(bad(format!(
                "greeting starts with 0x{magic:016x}, not NBDMAGIC: this is not an NBD server"
            )));
        }
        let magic2 = conn.read_u64(during)?;
        if magic2 == OLDSTYLE_MAGIC {
            return Err(Error::Unsupported(
                "the server speaks the oldstyle NBD handshake (no export names, no options); only fixed newstyle servers are supported (qemu-nbd, qemu-storage-daemon, nbdkit and nbd-server all are)".to_string(),
            ));
        }
        if magic2 != IHAVEOPT {
            return Err(bad(format!(
                "greeting has 0x{magic2:016x} where IHAVEOPT was expected"
            )));
        }
        let hflags = conn.read_u16(during)?;
        if hflags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(Error::Unsupported(format!(
                "the server does not offer fixed newstyle negotiation (handshake flags 0x{hflags:04x}); options cannot be negotiated with it"
            )));
        }
        let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
        let cflags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
        conn.write_all(&[&cflags.to_be_bytes()], "sending the client flags")?;
        Ok(Handshake {
            conn,
            no_zeroes,
            structured: false,
            meta: None,
            timeout,
            tls: false,
        })
    }

    fn send_option(&mut self, opt: u32, data: &[u8]) -> Result<()> {
        let mut hdr = [0u8; 16];
        hdr[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        hdr[8..12].copy_from_slice(&opt.to_be_bytes());
        hdr[12..].copy_from_slice(&(data.len() as u32).to_be_bytes());
        let during = format!("sending {}", option_name(opt));
        self.conn.write_all(&[&hdr, data], &during)
    }

    /// Reads one option reply; error replies become [`Error::OptionRefused`].
    fn read_reply(&mut self, opt: u32) -> Result<OptReply> {
        let during = format!("reading the reply to {}", option_name(opt));
        let magic = self.conn.read_u64(&during)?;
        if magic != OPTION_REPLY_MAGIC {
            return Err(bad(format!(
                "option reply to {} has magic 0x{magic:016x}, expected 0x{OPTION_REPLY_MAGIC:016x}",
                option_name(opt)
            )));
        }
        let echoed = self.conn.read_u32(&during)?;
        if echoed != opt {
            return Err(bad(format!(
                "option reply is for option {echoed}, but {} ({opt}) was sent",
                option_name(opt)
            )));
        }
        let reply = self.conn.read_u32(&during)?;
        let len = self.conn.read_u32(&during)?;
        if len > MAX_OPTION_REPLY {
            return Err(bad(format!(
                "reply to {} announces {len} bytes of data; at most {MAX_OPTION_REPLY} are accepted",
                option_name(opt)
            )));
        }
        let data = self.conn.read_vec(len as usize, &during)?;
        if reply & REP_ERR_BIT != 0 {
            return Err(Error::OptionRefused {
                option: option_name(opt),
                kind: OptionErrorKind::from_reply(reply),
                message: String::from_utf8_lossy(&data).into_owned(),
            });
        }
        Ok(OptReply { reply, data })
    }

    fn unexpected(opt: u32, r: &OptReply) -> Error {
        bad(format!(
            "unexpected reply type {} ({} bytes) to {}",
            r.reply,
            r.data.len(),
            option_name(opt)
        ))
    }

    fn expect_ack(&mut self, opt: u32) -> Result<()> {
        let r = self.read_reply(opt)?;
        if r.reply != REP_ACK {
            return Err(Self::unexpected(opt, &r));
        }
        if !r.data.is_empty() {
            return Err(bad(format!(
                "NBD_REP_ACK to {} carries {} bytes of data",
                option_name(opt),
                r.data.len()
            )));
        }
        Ok(())
    }

    /// `NBD_OPT_STARTTLS`: upgrades the connection to TLS (send it first, so that all
    /// negotiation is encrypted). A refusal is [`Error::OptionRefused`]; a failed TLS
    /// handshake is [`Error::Tls`], after which the connection is unusable.
    pub fn starttls(&mut self, tls: &TlsConfig) -> Result<()> {
        if self.tls {
            return Err(Error::InvalidArgument(
                "TLS is already active on this connection".into(),
            ));
        }
        self.send_option(OPT_STARTTLS, &[])?;
        self.expect_ack(OPT_STARTTLS)?;
        self.conn.upgrade(|sock, timeout| {
            Ok(Box::new(TlsStream::handshake(sock, tls, timeout)?) as Box<dyn Transport>)
        })?;
        self.tls = true;
        Ok(())
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the server's greeting offered `NBD_FLAG_NO_ZEROES` (and the client took it).
    pub fn no_zeroes(&self) -> bool {
        self.no_zeroes
    }

    /// Whether structured replies were negotiated.
    pub fn structured(&self) -> bool {
        self.structured
    }

    /// `NBD_OPT_LIST`: the server's exports.
    pub fn list_exports(&mut self) -> Result<Vec<ExportEntry>> {
        self.send_option(OPT_LIST, &[])?;
        let mut out = Vec::new();
        loop {
            let r = self.read_reply(OPT_LIST)?;
            match r.reply {
                REP_ACK => return Ok(out),
                REP_SERVER => {
                    if r.data.len() < 4 {
                        return Err(bad(format!(
                            "NBD_REP_SERVER of {} bytes is too short",
                            r.data.len()
                        )));
                    }
                    let n = be32(&r.data) as usize;
                    if n > r.data.len() - 4 {
                        return Err(bad(format!(
                            "NBD_REP_SERVER name length {n} exceeds its {}-byte payload",
                            r.data.len()
                        )));
                    }
                    out.push(ExportEntry {
                        name: utf8(&r.data[4..4 + n], "an export name")?,
                        description: String::from_utf8_lossy(&r.data[4 + n..]).into_owned(),
                    });
                    if out.len() > 100_000 {
                        return Err(bad("NBD_OPT_LIST returned over 100000 exports".into()));
                    }
                }
                _ => return Err(Self::unexpected(OPT_LIST, &r)),
            }
        }
    }

    /// `NBD_OPT_STRUCTURED_REPLY`. Returns false when the server does not support it
    /// (`NBD_REP_ERR_UNSUP`); other refusals are errors.
    pub fn structured_replies(&mut self) -> Result<bool> {
        self.send_option(OPT_STRUCTURED_REPLY, &[])?;
        match self.expect_ack(OPT_STRUCTURED_REPLY) {
            Ok(()) => {
                self.structured = true;
                Ok(true)
            }
            Err(Error::OptionRefused {
                kind: OptionErrorKind::Unsupported,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn meta_request(export: &str, queries: &[&str]) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        put_string(&mut data, export, "the export name")?;
        data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            put_string(&mut data, q, "a meta context query")?;
        }
        Ok(data)
    }

    fn meta_replies(&mut self, opt: u32) -> Result<Vec<MetaContext>> {
        let mut out: Vec<MetaContext> = Vec::new();
        loop {
            let r = self.read_reply(opt)?;
            match r.reply {
                REP_ACK => return Ok(out),
                REP_META_CONTEXT => {
                    if r.data.len() < 5 {
                        return Err(bad(format!(
                            "NBD_REP_META_CONTEXT of {} bytes is too short",
                            r.data.len()
                        )));
                    }
                    let id = be32(&r.data);
                    let name = utf8(&r.data[4..], "a meta context name")?;
                    if opt == OPT_SET_META_CONTEXT && out.iter().any(|c| c.id == id) {
                        return Err(bad(format!(
                            "meta context id {id} granted twice ({name:?})"
                        )));
                    }
                    out.push(MetaContext { id, name });
                    if out.len() > 100_000 {
                        return Err(bad(format!(
                            "{} returned over 100000 contexts",
                            option_name(opt)
                        )));
                    }
                }
                _ => return Err(Self::unexpected(opt, &r)),
            }
        }
    }

    fn require_structured(&self, what: &str) -> Result<()> {
        if !self.structured {
            return Err(Error::InvalidArgument(format!(
                "{what} needs structured replies; negotiate them first (the server may not support them)"
            )));
        }
        Ok(())
    }

    /// `NBD_OPT_LIST_META_CONTEXT`: the context names the server offers for `export` that
    /// match `queries` (all contexts when `queries` is empty, e.g. `["qemu:dirty-bitmap:"]`
    /// lists QEMU's exported bitmaps). Needs structured replies.
    pub fn list_meta_contexts(&mut self, export: &str, queries: &[&str]) -> Result<Vec<String>> {
        self.require_structured("NBD_OPT_LIST_META_CONTEXT")?;
        let data = Self::meta_request(export, queries)?;
        self.send_option(OPT_LIST_META_CONTEXT, &data)?;
        Ok(self
            .meta_replies(OPT_LIST_META_CONTEXT)?
            .into_iter()
            .map(|c| c.name)
            .collect())
    }

    /// `NBD_OPT_SET_META_CONTEXT`: selects `contexts` for `export` and checks that every
    /// one was granted ([`Error::MetaContextNotGranted`] names the first missing one).
    /// Returns all granted contexts: the requested ones in the order asked for, then any
    /// extra ones a wildcard query selected.
    /// Replaces any earlier selection. Needs structured replies. Give exact names: what a
    /// wildcard query (`qemu:dirty-bitmap:`) selects is up to the server (QEMU selects
    /// nothing), so find names with [`list_meta_contexts`](Self::list_meta_contexts) first.
    pub fn set_meta_contexts(
        &mut self,
        export: &str,
        contexts: &[&str],
    ) -> Result<Vec<MetaContext>> {
        self.require_structured("NBD_OPT_SET_META_CONTEXT")?;
        self.meta = None;
        let data = Self::meta_request(export, contexts)?;
        self.send_option(OPT_SET_META_CONTEXT, &data)?;
        let granted = self.meta_replies(OPT_SET_META_CONTEXT)?;
        // Requested contexts first, in the order asked for; extras (from wildcard queries)
        // after them, in the server's order.
        let mut ordered = Vec::with_capacity(granted.len());
        for want in contexts {
            match granted.iter().find(|g| g.name == *want) {
                Some(g) => {
                    if !ordered.contains(g) {
                        ordered.push(g.clone())
                    }
                }
                None => {
                    return Err(Error::MetaContextNotGranted {
                        export: export.to_string(),
                        missing: want.to_string(),
                        granted: granted.iter().map(|g| g.name.clone()).collect(),
                    })
                }
            }
        }
        for g in &granted {
            if !ordered.contains(g) {
                ordered.push(g.clone());
            }
        }
        let granted = ordered;
        self.meta = Some((export.to_string(), granted.clone()));
        Ok(granted)
    }

    fn info_request(export: &str) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        put_string(&mut data, export, "the export name")?;
        let wanted = [INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION];
        data.extend_from_slice(&(wanted.len() as u16).to_be_bytes());
        for w in wanted {
            data.extend_from_slice(&w.to_be_bytes());
        }
        Ok(data)
    }

    fn info_replies(&mut self, opt: u32, export: &str) -> Result<ExportInfo> {
        let mut size_flags: Option<(u64, u16)> = None;
        let mut block: Option<(u32, u32, u32)> = None;
        let mut canonical_name = None;
        let mut description = None;
        loop {
            let r = self.read_reply(opt)?;
            match r.reply {
                REP_ACK => break,
                REP_INFO => {
                    let d = &r.data;
                    if d.len() < 2 {
                        return Err(bad(format!(
                            "NBD_REP_INFO of {} bytes is too short",
                            d.len()
                        )));
                    }
                    let kind = u16::from_be_bytes([d[0], d[1]]);
                    match kind {
                        INFO_EXPORT => {
                            if d.len() != 12 {
                                return Err(bad(format!(
                                    "NBD_INFO_EXPORT is {} bytes, expected 12",
                                    d.len()
                                )));
                            }
                            let size = u64::from_be_bytes(d[2..10].try_into().unwrap());
                            let flags = u16::from_be_bytes([d[10], d[11]]);
                            size_flags = Some((size, flags));
                        }
                        INFO_BLOCK_SIZE => {
                            if d.len() != 14 {
                                return Err(bad(format!(
                                    "NBD_INFO_BLOCK_SIZE is {} bytes, expected 14",
                                    d.len()
                                )));
                            }
                            block = Some((be32(&d[2..]), be32(&d[6..]), be32(&d[10..])));
                        }
                        INFO_NAME => canonical_name = Some(utf8(&d[2..], "NBD_INFO_NAME")?),
                        INFO_DESCRIPTION => {
                            description = Some(String::from_utf8_lossy(&d[2..]).into_owned())
                        }
                        _ => {} // unknown information types are ignored, as the protocol asks
                    }
                }
                _ => return Err(Self::unexpected(opt, &r)),
            }
        }
        let Some((size, flags)) = size_flags else {
            return Err(bad(format!(
                "{} ended without NBD_INFO_EXPORT (export size and flags)",
                option_name(opt)
            )));
        };
        check_flags(flags)?;
        let block_size = match block {
            Some((min, pref, max)) => check_block_size(min, pref, max)?,
            None => default_block_size(),
        };
        Ok(ExportInfo {
            name: export.to_string(),
            canonical_name,
            description,
            size,
            flags,
            block_size,
        })
    }

    /// `NBD_OPT_INFO`: size, flags and block sizes of `export` without entering
    /// transmission. Unknown exports give [`OptionErrorKind::UnknownExport`].
    pub fn info(&mut self, export: &str) -> Result<ExportInfo> {
        let data = Self::info_request(export)?;
        self.send_option(OPT_INFO, &data)?;
        self.info_replies(OPT_INFO, export)
    }

    /// `NBD_OPT_GO`: enters the transmission phase on `export`. Meta contexts selected
    /// with [`set_meta_contexts`](Self::set_meta_contexts) must be for the same export.
    /// Falls back to `NBD_OPT_EXPORT_NAME` when the server does not know `NBD_OPT_GO`.
    pub fn go(mut self, export: &str) -> Result<Client> {
        let contexts = match self.meta.take() {
            Some((e, c)) if e == export => c,
            Some((e, _)) => {
                return Err(Error::InvalidArgument(format!(
                    "meta contexts were selected for export {e:?}, not for {export:?}"
                )))
            }
            None => Vec::new(),
        };
        let data = Self::info_request(export)?;
        self.send_option(OPT_GO, &data)?;
        let info = match self.info_replies(OPT_GO, export) {
            Ok(info) => info,
            Err(Error::OptionRefused {
                kind: OptionErrorKind::Unsupported,
                ..
            }) if contexts.is_empty() && !self.structured => self.export_name(export)?,
            Err(e) => return Err(e),
        };
        Ok(Client::new(
            self.conn,
            info,
            self.structured,
            contexts,
            self.timeout,
        ))
    }

    /// `NBD_OPT_EXPORT_NAME`, for servers without `NBD_OPT_GO`.
    fn export_name(&mut self, export: &str) -> Result<ExportInfo> {
        if export.len() > MAX_STRING {
            return Err(Error::InvalidArgument(format!(
                "the export name is {} bytes long; NBD allows at most {MAX_STRING}",
                export.len()
            )));
        }
        self.send_option(OPT_EXPORT_NAME, export.as_bytes())?;
        let during = format!(
            "reading the reply to NBD_OPT_EXPORT_NAME (a server closes the connection for an unknown export such as {export:?})"
        );
        let size = self.conn.read_u64(&during)?;
        let flags = self.conn.read_u16(&during)?;
        if !self.no_zeroes {
            let mut zeroes = [0u8; 124];
            self.conn.read_exact(&mut zeroes, &during)?;
        }
        check_flags(flags)?;
        Ok(ExportInfo {
            name: export.to_string(),
            canonical_name: None,
            description: None,
            size,
            flags,
            block_size: default_block_size(),
        })
    }

    /// `NBD_OPT_ABORT`: ends the session cleanly without entering transmission.
    pub fn abort(mut self) -> Result<()> {
        self.send_option(OPT_ABORT, &[])?;
        // The server should ACK; older servers just close. Both are fine.
        match self.read_reply(OPT_ABORT) {
            Ok(_) | Err(Error::Closed { .. }) => {}
            Err(e) => return Err(e),
        }
        self.conn.shutdown();
        Ok(())
    }
}

fn check_flags(flags: u16) -> Result<()> {
    if flags & FLAG_HAS_FLAGS == 0 {
        return Err(bad(format!(
            "transmission flags 0x{flags:04x} lack NBD_FLAG_HAS_FLAGS"
        )));
    }
    Ok(())
}

fn default_block_size() -> BlockSize {
    BlockSize {
        minimum: 1,
        preferred: 4096,
        maximum: proto::MAX_PAYLOAD,
        advertised: false,
    }
}

fn check_block_size(min: u32, pref: u32, max: u32) -> Result<BlockSize> {
    if min == 0 || !min.is_power_of_two() || min > 64 * 1024 {
        return Err(bad(format!(
            "minimum block size {min} is not a power of two between 1 and 65536"
        )));
    }
    if pref < min || !pref.is_power_of_two() {
        return Err(bad(format!(
            "preferred block size {pref} is not a power of two of at least the minimum {min}"
        )));
    }
    if max < min || (max != u32::MAX && !max.is_multiple_of(min)) {
        return Err(bad(format!(
            "maximum block size {max} is not a multiple of the minimum {min}"
        )));
    }
    Ok(BlockSize {
        minimum: min,
        preferred: pref,
        maximum: max,
        advertised: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::Mem;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn greeting() -> Vec<u8> {
        let mut v = NBDMAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&3u16.to_be_bytes());
        v
    }

    /// The options `run_all` sends, in order.
    const SEQUENCE: [u32; 6] = [
        OPT_STRUCTURED_REPLY,
        OPT_LIST,
        OPT_LIST_META_CONTEXT,
        OPT_SET_META_CONTEXT,
        OPT_INFO,
        OPT_GO,
    ];

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 10..11).prop_map(|mut v| {
                v.splice(0..0, [0, 0]);
                v
            }),
            proptest::collection::vec(any::<u8>(), 12..13).prop_map(|mut v| {
                v.splice(0..0, [0, 3]);
                v
            }),
        ]
    }

    /// For every option of `SEQUENCE`, a few replies with valid headers and random types
    /// and payloads, optionally closed by an ACK.
    fn replies() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            (
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just(REP_ACK),
                            Just(REP_SERVER),
                            Just(REP_INFO),
                            Just(REP_META_CONTEXT),
                            any::<u32>()
                        ],
                        payload(),
                    ),
                    0..4,
                ),
                any::<bool>(),
            ),
            6..7,
        )
        .prop_map(|per_opt| {
            let mut v = Vec::new();
            for (opt, (rs, ack)) in SEQUENCE.iter().zip(per_opt) {
                let acks = if ack { vec![(REP_ACK, vec![])] } else { vec![] };
                for (kind, data) in rs.into_iter().chain(acks) {
                    v.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
                    v.extend_from_slice(&opt.to_be_bytes());
                    v.extend_from_slice(&kind.to_be_bytes());
                    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
                    v.extend_from_slice(&data);
                }
            }
            v
        })
    }

    fn run_all(input: Vec<u8>) {
        let t = Box::new(Mem(Cursor::new(input)));
        let Ok(mut hs) = Handshake::start(t, None) else {
            return;
        };
        let _ = hs.structured_replies();
        let _ = hs.list_exports();
        let _ = hs.list_meta_contexts("d", &[]);
        let _ = hs.set_meta_contexts("d", &["base:allocation"]);
        let _ = hs.info("d");
        let _ = hs.go("d");
    }

    proptest! {
        #[test]
        fn option_reply_parser_never_panics_on_random_bytes(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut input = greeting();
            input.extend_from_slice(&tail);
            run_all(input);
            run_all(tail);
        }

        #[test]
        fn option_reply_parser_never_panics_on_framed_replies(r in replies()) {
            let mut input = greeting();
            input.extend_from_slice(&r);
            run_all(input);
        }
    }
}
