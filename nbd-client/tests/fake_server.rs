//! The client against an in-process fake NBD server (a thread on a Unix socket pair),
//! scripted per test, including malformed replies of every kind.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nbd_client::{
    Client, ConnectOptions, Error, Extent, Handshake, OptionErrorKind, ZeroFlags, FLAG_HAS_FLAGS,
    FLAG_READ_ONLY, FLAG_SEND_FAST_ZERO, FLAG_SEND_FLUSH, FLAG_SEND_FUA, FLAG_SEND_TRIM,
    FLAG_SEND_WRITE_ZEROES,
};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const SIMPLE: u32 = 0x6744_6698;
const STRUCTURED: u32 = 0x668e_33ef;
const REQ_MAGIC: u32 = 0x2560_9513;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED: u32 = 8;
const OPT_SET_META: u32 = 10;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META: u32 = 4;
const ERR_UNSUP: u32 = (1 << 31) | 1;
const ERR_POLICY: u32 = (1 << 31) | 2;

const DONE: u16 = 1;
const T_NONE: u16 = 0;
const T_DATA: u16 = 1;
const T_HOLE: u16 = 2;
const T_STATUS: u16 = 5;
const T_ERROR: u16 = 0x8001;
const T_ERROR_OFFSET: u16 = 0x8002;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

const BASE: u32 = 7;
const DIRTY: u32 = 9;
const SIZE: u64 = 16 << 20;
const ALL_FLAGS: u16 = FLAG_HAS_FLAGS
    | FLAG_SEND_FLUSH
    | FLAG_SEND_FUA
    | FLAG_SEND_TRIM
    | FLAG_SEND_WRITE_ZEROES
    | FLAG_SEND_FAST_ZERO;

struct Srv {
    s: UnixStream,
}

#[derive(Debug)]
struct Req {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    payload: Vec<u8>,
}

impl Srv {
    fn send(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        for p in parts {
            self.s.write_all(p)?;
        }
        Ok(())
    }
    fn u16(&mut self) -> io::Result<u16> {
        let mut b = [0; 2];
        self.s.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }
    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.s.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0; 8];
        self.s.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
    /// Greet, accept the client's first option (structured replies), and return the
    /// next option's code.
    fn structured_then_next(&mut self) -> io::Result<u32> {
        self.greet(3)?;
        let (opt, _) = self.option()?;
        assert_eq!(opt, OPT_STRUCTURED);
        self.reply(opt, REP_ACK, &[])?;
        Ok(self.option()?.0)
    }
    fn greet(&mut self, hflags: u16) -> io::Result<u32> {
        self.send(&[
            &NBDMAGIC.to_be_bytes(),
            &IHAVEOPT.to_be_bytes(),
            &hflags.to_be_bytes(),
        ])?;
        self.u32()
    }
    fn option(&mut self) -> io::Result<(u32, Vec<u8>)> {
        assert_eq!(self.u64()?, IHAVEOPT);
        let opt = self.u32()?;
        let len = self.u32()?;
        let mut d = vec![0; len as usize];
        self.s.read_exact(&mut d)?;
        Ok((opt, d))
    }
    fn reply(&mut self, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
        self.send(&[
            &REPLY_MAGIC.to_be_bytes(),
            &opt.to_be_bytes(),
            &kind.to_be_bytes(),
            &(data.len() as u32).to_be_bytes(),
            data,
        ])
    }
    fn info_export(&mut self, opt: u32, size: u64, flags: u16) -> io::Result<()> {
        let mut d = vec![0, 0];
        d.extend_from_slice(&size.to_be_bytes());
        d.extend_from_slice(&flags.to_be_bytes());
        self.reply(opt, REP_INFO, &d)
    }
    fn info_block(&mut self, opt: u32, min: u32, pref: u32, max: u32) -> io::Result<()> {
        let mut d = vec![0, 3];
        for v in [min, pref, max] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        self.reply(opt, REP_INFO, &d)
    }
    /// Answers options until NBD_OPT_GO: structured replies if `structured`, meta contexts
    /// from `contexts` (id, name) that were asked for, then the export.
    fn handshake(
        &mut self,
        structured: bool,
        contexts: &[(u32, &str)],
        flags: u16,
        max: u32,
    ) -> io::Result<()> {
        let cflags = self.greet(3)?;
        assert_eq!(cflags, 3, "client takes FIXED_NEWSTYLE and NO_ZEROES");
        loop {
            let (opt, data) = self.option()?;
            match opt {
                OPT_STRUCTURED => {
                    if structured {
                        self.reply(opt, REP_ACK, &[])?
                    } else {
                        self.reply(opt, ERR_UNSUP, b"no structured replies here")?
                    }
                }
                OPT_SET_META => {
                    for q in meta_queries(&data) {
                        if let Some((id, name)) = contexts.iter().find(|c| c.1 == q) {
                            let mut d = id.to_be_bytes().to_vec();
                            d.extend_from_slice(name.as_bytes());
                            self.reply(opt, REP_META, &d)?;
                        }
                    }
                    self.reply(opt, REP_ACK, &[])?;
                }
                OPT_GO => {
                    self.info_export(opt, SIZE, flags)?;
                    self.info_block(opt, 1, 4096, max)?;
                    self.reply(opt, REP_ACK, &[])?;
                    return Ok(());
                }
                other => panic!("unexpected option {other}"),
            }
        }
    }
    fn request(&mut self) -> io::Result<Req> {
        assert_eq!(self.u32()?, REQ_MAGIC);
        let flags = self.u16()?;
        let kind = self.u16()?;
        let cookie = self.u64()?;
        let offset = self.u64()?;
        let len = self.u32()?;
        let mut payload = Vec::new();
        if kind == CMD_WRITE {
            payload = vec![0; len as usize];
            self.s.read_exact(&mut payload)?;
        }
        Ok(Req {
            flags,
            kind,
            cookie,
            offset,
            len,
            payload,
        })
    }
    fn simple(&mut self, cookie: u64, error: u32, data: &[u8]) -> io::Result<()> {
        self.send(&[
            &SIMPLE.to_be_bytes(),
            &error.to_be_bytes(),
            &cookie.to_be_bytes(),
            data,
        ])
    }
    fn chunk(&mut self, flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> io::Result<()> {
        self.chunk_len(flags, kind, cookie, payload.len() as u32, payload)
    }
    fn chunk_len(
        &mut self,
        flags: u16,
        kind: u16,
        cookie: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        self.send(&[
            &STRUCTURED.to_be_bytes(),
            &flags.to_be_bytes(),
            &kind.to_be_bytes(),
            &cookie.to_be_bytes(),
            &len.to_be_bytes(),
            payload,
        ])
    }
    fn data(&mut self, flags: u16, cookie: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut p = offset.to_be_bytes().to_vec();
        p.extend_from_slice(data);
        self.chunk(flags, T_DATA, cookie, &p)
    }
    fn hole(&mut self, flags: u16, cookie: u64, offset: u64, len: u32) -> io::Result<()> {
        let mut p = offset.to_be_bytes().to_vec();
        p.extend_from_slice(&len.to_be_bytes());
        self.chunk(flags, T_HOLE, cookie, &p)
    }
    fn status(&mut self, flags: u16, cookie: u64, id: u32, descs: &[(u32, u32)]) -> io::Result<()> {
        let mut p = id.to_be_bytes().to_vec();
        for (l, f) in descs {
            p.extend_from_slice(&l.to_be_bytes());
            p.extend_from_slice(&f.to_be_bytes());
        }
        self.chunk(flags, T_STATUS, cookie, &p)
    }
    fn error(
        &mut self,
        flags: u16,
        cookie: u64,
        errno: u32,
        msg: &str,
        offset: Option<u64>,
    ) -> io::Result<()> {
        let mut p = errno.to_be_bytes().to_vec();
        p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        p.extend_from_slice(msg.as_bytes());
        let kind = match offset {
            Some(o) => {
                p.extend_from_slice(&o.to_be_bytes());
                T_ERROR_OFFSET
            }
            None => T_ERROR,
        };
        self.chunk(flags, kind, cookie, &p)
    }
}

fn meta_queries(data: &[u8]) -> Vec<String> {
    let be = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
    let nlen = be(data);
    let mut p = 4 + nlen;
    let n = be(&data[p..]);
    p += 4;
    let mut out = Vec::new();
    for _ in 0..n {
        let l = be(&data[p..]);
        out.push(String::from_utf8(data[p + 4..p + 4 + l].to_vec()).unwrap());
        p += 4 + l;
    }
    out
}

/// Starts a scripted server; returns the client's end and the server thread.
fn server<T: Send + 'static>(
    script: impl FnOnce(&mut Srv) -> io::Result<T> + Send + 'static,
) -> (UnixStream, JoinHandle<io::Result<T>>) {
    let (c, s) = UnixStream::pair().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let h = thread::spawn(move || script(&mut Srv { s }));
    (c, h)
}

fn opts() -> ConnectOptions {
    ConnectOptions::new("disk").timeout(Some(Duration::from_secs(20)))
}

fn opts_meta() -> ConnectOptions {
    opts()
        .meta_context("base:allocation")
        .meta_context("qemu:dirty-bitmap:b")
}

const CTX: &[(u32, &str)] = &[(BASE, "base:allocation"), (DIRTY, "qemu:dirty-bitmap:b")];

/// A connected client (structured replies, both contexts) whose server then runs `script`.
fn session<T: Send + 'static>(
    script: impl FnOnce(&mut Srv) -> io::Result<T> + Send + 'static,
) -> (Client, JoinHandle<io::Result<T>>) {
    let (c, h) = server(move |s| {
        s.handshake(true, CTX, ALL_FLAGS, 1 << 20)?;
        script(s)
    });
    (
        Client::connect_transport(Box::new(c), &opts_meta()).unwrap(),
        h,
    )
}

fn protocol_error<T: std::fmt::Debug>(r: Result<T, Error>, needle: &str) {
    match r {
        Err(Error::Protocol(m)) => assert!(m.contains(needle), "message {m:?} lacks {needle:?}"),
        other => panic!("expected a protocol error containing {needle:?}, got {other:?}"),
    }
}

/// The client's handshake with a server scripted by `script` fails with a protocol
/// error naming `needle`.
fn handshake_refused(
    script: impl FnOnce(&mut Srv) -> io::Result<()> + Send + 'static,
    needle: &str,
) {
    let (c, h) = server(script);
    protocol_error(
        Client::connect_transport(Box::new(c), &opts()).map(|_| ()),
        needle,
    );
    // The client may close before the server has sent everything.
    let _ = h.join().unwrap();
}

fn ext(offset: u64, length: u64, flags: u32) -> Extent {
    Extent {
        offset,
        length,
        flags,
    }
}

// ---------------------------------------------------------------- handshake

#[test]
fn greeting_that_is_not_nbd_is_refused() {
    let (c, h) = server(|s| s.send(&[b"HTTP/1.1 400 Bad Request\r\n\r\n"]));
    protocol_error(
        Handshake::start(Box::new(c), None).map(|_| ()),
        "not an NBD server",
    );
    h.join().unwrap().unwrap();
}

#[test]
fn oldstyle_and_non_fixed_servers_are_unsupported() {
    let (c, h) = server(|s| {
        s.send(&[
            &NBDMAGIC.to_be_bytes(),
            &0x0000_4202_8186_1253u64.to_be_bytes(),
        ])
    });
    assert!(
        matches!(Handshake::start(Box::new(c), None), Err(Error::Unsupported(m)) if m.contains("oldstyle"))
    );
    h.join().unwrap().unwrap();
    let (c, h) = server(|s| {
        s.send(&[
            &NBDMAGIC.to_be_bytes(),
            &IHAVEOPT.to_be_bytes(),
            &0u16.to_be_bytes(),
        ])
    });
    assert!(
        matches!(Handshake::start(Box::new(c), None), Err(Error::Unsupported(m)) if m.contains("fixed newstyle"))
    );
    h.join().unwrap().unwrap();
}

#[test]
fn server_closing_during_the_greeting_is_closed() {
    let (c, h) = server(|s| s.send(&[&NBDMAGIC.to_be_bytes()]));
    h.join().unwrap().unwrap();
    assert!(matches!(
        Handshake::start(Box::new(c), None),
        Err(Error::Closed { .. })
    ));
}

#[test]
fn option_errors_are_typed_with_the_servers_message() {
    let (c, h) = server(|s| {
        let opt = s.structured_then_next()?;
        assert_eq!(opt, OPT_GO);
        s.reply(opt, ERR_POLICY, b"export disk is not for you")
    });
    match Client::connect_transport(Box::new(c), &opts()) {
        Err(Error::OptionRefused {
            option,
            kind,
            message,
        }) => {
            assert_eq!(option, "NBD_OPT_GO");
            assert_eq!(kind, OptionErrorKind::Policy);
            assert_eq!(message, "export disk is not for you");
        }
        other => panic!("expected OptionRefused, got {:?}", other.err()),
    }
    h.join().unwrap().unwrap();
}

#[test]
fn meta_context_not_granted_names_the_missing_one() {
    let (c, h) = server(|s| s.handshake(true, &[(BASE, "base:allocation")], ALL_FLAGS, 1 << 20));
    match Client::connect_transport(Box::new(c), &opts_meta()) {
        Err(Error::MetaContextNotGranted {
            export,
            missing,
            granted,
        }) => {
            assert_eq!(export, "disk");
            assert_eq!(missing, "qemu:dirty-bitmap:b");
            assert_eq!(granted, ["base:allocation"]);
        }
        other => panic!("expected MetaContextNotGranted, got {:?}", other.err()),
    }
    // The client gave up before GO: the server sees the connection close.
    assert!(h.join().unwrap().is_err());
}

#[test]
fn meta_contexts_need_structured_replies() {
    let (c, h) = server(|s| s.handshake(false, CTX, ALL_FLAGS, 1 << 20));
    assert!(matches!(
        Client::connect_transport(Box::new(c), &opts_meta()),
        Err(Error::Unsupported(m)) if m.contains("structured")
    ));
    let _ = h.join().unwrap();
    // Without contexts, a server without structured replies is fine: simple replies.
    let (c, h) = server(|s| {
        s.handshake(false, CTX, ALL_FLAGS, 1 << 20)?;
        let r = s.request()?;
        assert_eq!(r.kind, CMD_READ);
        s.simple(r.cookie, 0, &[7u8; 100])?;
        let r = s.request()?;
        s.simple(r.cookie, 5, &[])?; // EIO: no payload follows
        let r = s.request()?;
        s.simple(r.cookie, 0, &[8u8; 10])?;
        s.request()
    });
    let mut cl = Client::connect_transport(Box::new(c), &opts()).unwrap();
    assert!(!cl.structured_replies());
    let mut buf = [0u8; 100];
    cl.read(0, &mut buf).unwrap();
    assert_eq!(buf, [7u8; 100]);
    assert!(matches!(
        cl.read(0, &mut buf),
        Err(Error::Server { errno: 5, .. })
    ));
    cl.read(0, &mut buf[..10]).unwrap();
    assert_eq!(buf[..10], [8u8; 10]);
    assert!(matches!(
        cl.block_status(0, 10, false),
        Err(Error::Unsupported(_))
    ));
    cl.disconnect().unwrap();
    assert_eq!(h.join().unwrap().unwrap().kind, CMD_DISC);
}

#[test]
fn malformed_option_replies_are_protocol_errors() {
    // Wrong reply magic.
    handshake_refused(
        |s| {
            s.greet(3)?;
            s.option()?;
            s.send(&[&0xdead_beef_u64.to_be_bytes(), &[0u8; 12]])
        },
        "magic",
    );
    // Oversized reply length: refused before reading (or allocating) it.
    handshake_refused(
        |s| {
            s.greet(3)?;
            let (opt, _) = s.option()?;
            s.send(&[
                &REPLY_MAGIC.to_be_bytes(),
                &opt.to_be_bytes(),
                &REP_ACK.to_be_bytes(),
                &u32::MAX.to_be_bytes(),
            ])
        },
        "4294967295",
    );
    // Reply for another option.
    handshake_refused(
        |s| {
            s.greet(3)?;
            s.option()?;
            s.reply(OPT_GO, REP_ACK, &[])
        },
        "option 7",
    );
    // GO ends without NBD_INFO_EXPORT.
    handshake_refused(
        |s| {
            let opt = s.structured_then_next()?;
            s.reply(opt, REP_ACK, &[])
        },
        "NBD_INFO_EXPORT",
    );
    // Impossible block sizes.
    handshake_refused(
        |s| {
            let opt = s.structured_then_next()?;
            s.info_export(opt, SIZE, ALL_FLAGS)?;
            s.info_block(opt, 3, 4096, 1 << 20)?;
            s.reply(opt, REP_ACK, &[])
        },
        "minimum block size 3",
    );
    // An INFO of the wrong length.
    handshake_refused(
        |s| {
            let opt = s.structured_then_next()?;
            s.reply(opt, REP_INFO, &[0, 0, 1, 2, 3])
        },
        "NBD_INFO_EXPORT is 5 bytes",
    );
}

#[test]
fn go_unsupported_falls_back_to_export_name() {
    let (c, h) = server(|s| {
        s.greet(3)?;
        let (opt, _) = s.option()?;
        s.reply(opt, ERR_UNSUP, &[])?;
        let (opt, _) = s.option()?;
        assert_eq!(opt, OPT_GO);
        s.reply(opt, ERR_UNSUP, &[])?;
        let (opt, name) = s.option()?;
        assert_eq!((opt, name.as_slice()), (OPT_EXPORT_NAME, &b"disk"[..]));
        // NO_ZEROES was negotiated: size and flags only.
        s.send(&[
            &12345u64.to_be_bytes(),
            &(FLAG_HAS_FLAGS | FLAG_READ_ONLY).to_be_bytes(),
        ])?;
        s.request()
    });
    let c = Client::connect_transport(Box::new(c), &opts()).unwrap();
    assert_eq!(c.size(), 12345);
    assert!(c.info().read_only());
    assert!(!c.info().block_size.advertised);
    drop(c); // sends NBD_CMD_DISC
    assert_eq!(h.join().unwrap().unwrap().kind, CMD_DISC);
}

// ---------------------------------------------------------------- READ

#[test]
fn structured_read_assembles_out_of_order_data_and_holes() {
    let (mut c, h) = session(|s| {
        let r = s.request()?;
        assert_eq!((r.kind, r.offset, r.len), (CMD_READ, 1000, 300));
        s.hole(0, r.cookie, 1200, 100)?;
        s.data(0, r.cookie, 1100, &[2u8; 100])?;
        s.data(0, r.cookie, 1000, &[1u8; 100])?;
        s.chunk(DONE, T_NONE, r.cookie, &[])?;
        let r = s.request()?;
        s.data(DONE, r.cookie, r.offset, &vec![3u8; r.len as usize])?;
        s.request()
    });
    let mut buf = [0xffu8; 300];
    c.read(1000, &mut buf).unwrap();
    assert_eq!(buf[..100], [1u8; 100]);
    assert_eq!(buf[100..200], [2u8; 100]);
    assert_eq!(buf[200..], [0u8; 100]);
    c.read(5, &mut buf[..7]).unwrap();
    assert_eq!(buf[..7], [3u8; 7]);
    c.disconnect().unwrap();
    assert_eq!(h.join().unwrap().unwrap().kind, CMD_DISC);
}

#[test]
fn reads_are_split_at_the_maximum_block_size() {
    let (c, h) = server(|s| {
        s.handshake(true, CTX, ALL_FLAGS, 64 * 1024)?;
        let mut seen = Vec::new();
        loop {
            let r = s.request()?;
            if r.kind == CMD_DISC {
                return Ok(seen);
            }
            seen.push((r.offset, r.len));
            let fill: Vec<u8> = (0..r.len as u64)
                .map(|i| ((r.offset + i) % 253) as u8)
                .collect();
            s.data(DONE, r.cookie, r.offset, &fill)?;
        }
    });
    let mut c = Client::connect_transport(Box::new(c), &opts()).unwrap();
    assert_eq!(c.max_payload(), 64 * 1024);
    assert_eq!(
        c.request_size(),
        64 * 1024,
        "the default 2 MiB is capped at the maximum"
    );
    let pattern = |buf: &[u8]| {
        buf.iter()
            .enumerate()
            .all(|(i, b)| *b == ((10 + i as u64) % 253) as u8)
    };
    let mut buf = vec![0u8; 200 * 1024];
    c.read(10, &mut buf).unwrap();
    assert!(pattern(&buf));
    // A smaller request size splits further.
    assert_eq!(c.set_request_size(40000), 40000);
    buf.fill(0);
    c.read(10, &mut buf[..100_000]).unwrap();
    assert!(pattern(&buf[..100_000]));
    c.disconnect().unwrap();
    let seen = h.join().unwrap().unwrap();
    assert_eq!(
        seen,
        [
            (10, 65536),
            (65546, 65536),
            (131082, 65536),
            (196618, 8192),
            (10, 40000),
            (40010, 40000),
            (80010, 20000)
        ]
    );
}

/// Runs one READ of 100 bytes at offset 1000 against a reply script; returns the error,
/// checks that the connection is then unusable, and that nothing hangs.
fn bad_read(script: impl FnOnce(&mut Srv, &Req) -> io::Result<()> + Send + 'static) -> Error {
    let (mut c, h) = session(move |s| {
        let r = s.request()?;
        script(s, &r)
    });
    let mut buf = [0u8; 100];
    let e = c.read(1000, &mut buf).unwrap_err();
    if e.to_string().contains("protocol violation") || matches!(e, Error::Closed { .. }) {
        assert!(matches!(c.read(1000, &mut buf), Err(Error::Broken(_))));
    }
    drop(c);
    let _ = h.join().unwrap();
    e
}

#[test]
fn malformed_read_replies_are_protocol_errors() {
    protocol_error::<()>(
        Err(bad_read(|s, _| {
            s.send(&[&0x1234_5678u32.to_be_bytes(), &[0u8; 12]])
        })),
        "reply magic 0x12345678",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| {
            s.data(DONE, r.cookie + 1, 1000, &[0u8; 100])
        })),
        "cookie",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| s.data(DONE, r.cookie, 1050, &[0u8; 100]))),
        "outside the request",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| s.data(DONE, r.cookie, 900, &[0u8; 100]))),
        "outside the request",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| s.hole(DONE, r.cookie, 1090, 11))),
        "outside the request",
    );
    // A length far beyond the request: refused from the header, nothing allocated or read.
    protocol_error::<()>(
        Err(bad_read(|s, r| {
            s.chunk_len(DONE, T_DATA, r.cookie, 0xffff_fff0, &1000u64.to_be_bytes())
        })),
        "4294967280 bytes",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| {
            s.chunk_len(DONE, T_HOLE, r.cookie, 13, &[0u8; 13])
        })),
        "expected 12",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| {
            s.data(0, r.cookie, 1000, &[0u8; 60])?;
            s.data(DONE, r.cookie, 1050, &[0u8; 50])
        })),
        "overlaps",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| {
            s.hole(0, r.cookie, 1050, 50)?;
            s.hole(DONE, r.cookie, 1040, 20)
        })),
        "overlaps",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| s.data(DONE, r.cookie, 1000, &[0u8; 60]))),
        "only 60 bytes answered",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| s.chunk(0, T_NONE, r.cookie, &[]))),
        "without the DONE flag",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| s.status(DONE, r.cookie, BASE, &[(100, 0)]))),
        "chunk type 5",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| s.chunk(DONE, 77, r.cookie, &[]))),
        "chunk type 77",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| s.simple(r.cookie, 0, &[0u8; 100]))),
        "simple reply",
    );
    // Error chunks with inconsistent lengths, or error value 0.
    protocol_error::<()>(
        Err(bad_read(|s, r| {
            let mut p = 5u32.to_be_bytes().to_vec();
            p.extend_from_slice(&500u16.to_be_bytes());
            p.extend_from_slice(b"short");
            s.chunk(DONE, T_ERROR, r.cookie, &p)
        })),
        "message of 500 bytes",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| s.error(DONE, r.cookie, 0, "fine?", None))),
        "error value 0",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| {
            s.error(DONE, r.cookie, 5, "bad", Some(5000))
        })),
        "error offset 5000",
    );
    protocol_error::<()>(
        Err(bad_read(|s, r| {
            s.chunk_len(DONE, T_ERROR, r.cookie, 3, &[0, 0, 0])
        })),
        "error chunk of 3 bytes",
    );
}

#[test]
fn server_closing_mid_reply_or_going_silent_is_typed() {
    // Half the data, then the server closes.
    let e = bad_read(|s, r| {
        s.chunk_len(DONE, T_DATA, r.cookie, 108, &1000u64.to_be_bytes())?;
        s.send(&[&[0u8; 40]])
    });
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    // A chunk without DONE, then the server closes.
    let e = bad_read(|s, r| s.data(0, r.cookie, 1000, &[0u8; 100]));
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    // A chunk without DONE, then silence: the timeout fires.
    let (c, h) = server(|s| {
        s.handshake(true, CTX, ALL_FLAGS, 1 << 20)?;
        let r = s.request()?;
        s.data(0, r.cookie, r.offset, &vec![0u8; r.len as usize])?;
        // Wait until the client gives up and closes.
        let mut b = [0u8; 1];
        let _ = s.s.read(&mut b);
        Ok(())
    });
    let o = opts().timeout(Some(Duration::from_millis(300)));
    let mut c = Client::connect_transport(Box::new(c), &o).unwrap();
    let mut buf = [0u8; 10];
    match c.read(0, &mut buf) {
        Err(e @ Error::Timeout { .. }) => {
            assert!(e.is_timeout());
            assert!(e.to_string().contains("NBD_CMD_READ"), "{e}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(matches!(c.read(0, &mut buf), Err(Error::Broken(_))));
    drop(c);
    h.join().unwrap().unwrap();
}

#[test]
fn error_chunks_are_server_errors_and_the_connection_stays_usable() {
    let (mut c, h) = session(|s| {
        let r = s.request()?;
        s.data(0, r.cookie, 1000, &[1u8; 50])?;
        s.error(0, r.cookie, 5, "bad sector", Some(1060))?;
        s.error(0, r.cookie, 22, "second error is not reported", None)?;
        s.chunk(DONE, T_NONE, r.cookie, &[])?;
        let r = s.request()?;
        s.data(DONE, r.cookie, r.offset, &[9u8; 100])?;
        // An unknown error chunk type still carries an errno and message.
        let r = s.request()?;
        let mut p = 28u32.to_be_bytes().to_vec();
        p.extend_from_slice(&4u16.to_be_bytes());
        p.extend_from_slice(b"full");
        p.extend_from_slice(&[1, 2, 3]);
        s.chunk(DONE, 0x8077, r.cookie, &p)?;
        s.request()
    });
    let mut buf = [0u8; 100];
    match c.read(1000, &mut buf) {
        Err(Error::Server {
            command,
            offset,
            length,
            errno,
            error_offset,
            message,
        }) => {
            assert_eq!(
                (command, offset, length, errno),
                ("NBD_CMD_READ", 1000, 100, 5)
            );
            assert_eq!(error_offset, Some(1060));
            assert_eq!(message, "bad sector");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    c.read(2000, &mut buf).unwrap();
    assert_eq!(buf, [9u8; 100]);
    let e = c.read(0, &mut buf).unwrap_err();
    assert!(matches!(e, Error::Server { errno: 28, .. }), "{e:?}");
    assert!(
        e.to_string().contains("ENOSPC") && e.to_string().contains("full"),
        "{e}"
    );
    c.disconnect().unwrap();
    assert_eq!(h.join().unwrap().unwrap().kind, CMD_DISC);
}

#[test]
fn eshutdown_makes_the_client_disconnect() {
    let (mut c, h) = session(|s| {
        let r = s.request()?;
        s.error(DONE, r.cookie, 108, "shutting down", None)?;
        s.request()
    });
    let mut buf = [0u8; 10];
    assert!(matches!(
        c.read(0, &mut buf),
        Err(Error::Server { errno: 108, .. })
    ));
    assert_eq!(h.join().unwrap().unwrap().kind, CMD_DISC);
    assert!(matches!(c.read(0, &mut buf), Err(Error::Broken(_))));
}

#[test]
fn structured_chunk_without_negotiation_is_a_protocol_error() {
    let (c, h) = server(|s| {
        s.handshake(false, CTX, ALL_FLAGS, 1 << 20)?;
        let r = s.request()?;
        s.data(DONE, r.cookie, r.offset, &[0u8; 10])
    });
    let mut c = Client::connect_transport(Box::new(c), &opts()).unwrap();
    let mut buf = [0u8; 10];
    protocol_error(c.read(0, &mut buf), "not negotiated");
    // The client may close before the server has sent everything.
    let _ = h.join().unwrap();
}

// ---------------------------------------------------------------- BLOCK_STATUS

#[test]
fn block_status_iterates_when_contexts_answer_different_lengths() {
    const K: u32 = 1024;
    let (mut c, h) = session(|s| {
        let mut seen = Vec::new();
        // 1st request [0, 1M): base covers 512K, dirty covers all of it.
        let r = s.request()?;
        seen.push((r.kind, r.flags, r.offset, r.len));
        s.status(0, r.cookie, DIRTY, &[(128 * K, 0), (896 * K, 1)])?;
        s.status(DONE, r.cookie, BASE, &[(256 * K, 0), (256 * K, 3)])?;
        // 2nd request [512K, 1M): base covers the rest (its last extent runs past the end
        // of the request: clipped); dirty repeats what is already known.
        let r = s.request()?;
        seen.push((r.kind, r.flags, r.offset, r.len));
        s.status(0, r.cookie, BASE, &[(256 * K, 3), (1024 * K, 0)])?;
        s.status(0, r.cookie, DIRTY, &[(64 * K, 1)])?;
        s.chunk(DONE, T_NONE, r.cookie, &[])?;
        s.request()?;
        Ok(seen)
    });
    let st = c.block_status(0, 1 << 20, false).unwrap();
    assert_eq!(st[0].context, "base:allocation");
    let k = 1024u64;
    assert_eq!(
        st[0].extents,
        [
            ext(0, 256 * k, 0),
            ext(256 * k, 512 * k, 3),
            ext(768 * k, 256 * k, 0)
        ]
    );
    assert_eq!(st[1].context, "qemu:dirty-bitmap:b");
    assert_eq!(
        st[1].extents,
        [ext(0, 128 * k, 0), ext(128 * k, 896 * k, 1)]
    );
    c.disconnect().unwrap();
    let seen = h.join().unwrap().unwrap();
    assert_eq!(
        seen,
        [
            (CMD_BLOCK_STATUS, 0, 0, 1 << 20),
            (CMD_BLOCK_STATUS, 0, 512 * 1024, 512 * 1024)
        ]
    );
}

#[test]
fn block_status_upto_stops_at_the_extent_budget_and_says_how_far_it_got() {
    const K: u32 = 1024;
    let (mut c, h) = session(|s| {
        let mut seen = Vec::new();
        // 1st request [0, 4M): base answers 1M in 3 extents, dirty 2M in 2.
        let r = s.request()?;
        seen.push((r.offset, r.len));
        s.status(
            0,
            r.cookie,
            BASE,
            &[(256 * K, 0), (256 * K, 3), (512 * K, 0)],
        )?;
        s.status(DONE, r.cookie, DIRTY, &[(1536 * K, 1), (512 * K, 0)])?;
        // 2nd request from 1M (the shortest answer): 5 extents held, under the budget
        // of 6. base answers 1M more in 2, dirty the rest in 1.
        let r = s.request()?;
        seen.push((r.offset, r.len));
        s.status(0, r.cookie, BASE, &[(512 * K, 3), (512 * K, 0)])?;
        s.status(DONE, r.cookie, DIRTY, &[(3072 * K, 1)])?;
        // Not asked again: 8 extents held, over the budget.
        s.request()?;
        Ok(seen)
    });
    let k = 1024u64;
    let (st, end) = c.block_status_upto(0, 4 << 20, false, 6).unwrap();
    assert_eq!(
        end,
        2048 * k,
        "covered as far as the shortest context answered"
    );
    assert_eq!(
        st[0].extents,
        [
            ext(0, 256 * k, 0),
            ext(256 * k, 256 * k, 3),
            ext(512 * k, 512 * k, 0),
            ext(1024 * k, 512 * k, 3),
            ext(1536 * k, 512 * k, 0)
        ]
    );
    // The dirty context answered further: cut back to the common end.
    assert_eq!(
        st[1].extents,
        [ext(0, 1536 * k, 1), ext(1536 * k, 512 * k, 0)]
    );
    c.disconnect().unwrap();
    let seen = h.join().unwrap().unwrap();
    assert_eq!(seen, [(0, 4 << 20), (1 << 20, 3 << 20)]);
}

#[test]
fn block_status_req_one_sets_the_flag_and_iterates() {
    let (mut c, h) = session(|s| {
        let mut flags = Vec::new();
        for _ in 0..4 {
            let r = s.request()?;
            flags.push(r.flags);
            let half = (r.len / 2).max(1);
            s.status(0, r.cookie, BASE, &[(half, 0)])?;
            s.status(DONE, r.cookie, DIRTY, &[(r.len, 1)])?;
        }
        Ok(flags)
    });
    let st = c.block_status(0, 8, true).unwrap();
    assert_eq!(st[0].extents, [ext(0, 8, 0)]);
    assert_eq!(st[1].extents, [ext(0, 8, 1)]);
    drop(c);
    let flags = h.join().unwrap().unwrap();
    assert_eq!(flags, [8, 8, 8, 8], "NBD_CMD_FLAG_REQ_ONE on every request");
}

fn bad_status(
    script: impl FnOnce(&mut Srv, &Req) -> io::Result<()> + Send + 'static,
    req_one: bool,
) -> Error {
    let (mut c, h) = session(move |s| {
        let r = s.request()?;
        script(s, &r)
    });
    let e = c.block_status(0, 4096, req_one).unwrap_err();
    if e.to_string().contains("protocol violation") {
        assert!(matches!(
            c.block_status(0, 4096, false),
            Err(Error::Broken(_))
        ));
    }
    drop(c);
    let _ = h.join().unwrap();
    e
}

#[test]
fn malformed_block_status_replies_are_protocol_errors() {
    protocol_error::<()>(
        Err(bad_status(
            |s, r| s.status(DONE, r.cookie, BASE, &[(4096, 0)]),
            false,
        )),
        "no extents for context \"qemu:dirty-bitmap:b\"",
    );
    protocol_error::<()>(
        Err(bad_status(
            |s, r| s.status(DONE, r.cookie, 42, &[(4096, 0)]),
            false,
        )),
        "context id 42",
    );
    protocol_error::<()>(
        Err(bad_status(
            |s, r| {
                s.status(0, r.cookie, BASE, &[(4096, 0)])?;
                s.status(DONE, r.cookie, BASE, &[(4096, 0)])
            },
            false,
        )),
        "two block status chunks",
    );
    protocol_error::<()>(
        Err(bad_status(
            |s, r| s.status(DONE, r.cookie, BASE, &[(0, 0)]),
            false,
        )),
        "zero-length",
    );
    protocol_error::<()>(
        Err(bad_status(
            |s, r| s.status(DONE, r.cookie, BASE, &[(4096, 0), (512, 1)]),
            false,
        )),
        "beyond the request",
    );
    protocol_error::<()>(
        Err(bad_status(
            |s, r| s.status(DONE, r.cookie, BASE, &[(512, 0), (512, 1)]),
            true,
        )),
        "NBD_CMD_FLAG_REQ_ONE",
    );
    protocol_error::<()>(
        Err(bad_status(
            |s, r| s.chunk(DONE, T_STATUS, r.cookie, &[0u8; 8]),
            false,
        )),
        "4 + 8*n",
    );
    protocol_error::<()>(
        Err(bad_status(
            |s, r| s.chunk_len(DONE, T_STATUS, r.cookie, 0x7fff_fffc, &BASE.to_be_bytes()),
            false,
        )),
        "descriptors",
    );
    protocol_error::<()>(
        Err(bad_status(|s, r| s.simple(r.cookie, 0, &[]), false)),
        "needs a structured reply",
    );
    protocol_error::<()>(
        Err(bad_status(
            |s, r| s.data(DONE, r.cookie, 0, &[0u8; 10]),
            false,
        )),
        "chunk type 1",
    );
    // A server error (here as a simple reply) is a server error.
    let e = bad_status(|s, r| s.simple(r.cookie, 22, &[]), false);
    assert!(
        matches!(
            e,
            Error::Server {
                errno: 22,
                command: "NBD_CMD_BLOCK_STATUS",
                ..
            }
        ),
        "{e:?}"
    );
}

// ---------------------------------------------------------------- WRITE, WRITE_ZEROES, TRIM, FLUSH

#[test]
fn write_commands_send_the_right_requests_and_flags() {
    let (mut c, h) = session(|s| {
        let mut seen = Vec::new();
        loop {
            let r = s.request()?;
            if r.kind == CMD_DISC {
                return Ok(seen);
            }
            match r.kind {
                CMD_TRIM => s.error(DONE, r.cookie, 28, "no space", None)?,
                CMD_FLUSH => s.chunk(DONE, T_NONE, r.cookie, &[])?,
                _ => s.simple(r.cookie, 0, &[])?,
            }
            seen.push((r.kind, r.flags, r.offset, r.len, r.payload));
        }
    });
    c.write(4096, &[5u8; 3000], true).unwrap();
    c.write_zeroes(
        8192,
        100,
        ZeroFlags {
            no_hole: true,
            fast_zero: true,
            fua: false,
        },
    )
    .unwrap();
    c.write_zeroes(0, 1, ZeroFlags::default()).unwrap();
    let e = c.trim(0, 512).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Server {
                errno: 28,
                command: "NBD_CMD_TRIM",
                ..
            }
        ),
        "{e:?}"
    );
    c.flush().unwrap();
    // Out of range: refused locally.
    assert!(matches!(
        c.write(SIZE - 1, &[1, 2], false),
        Err(Error::InvalidArgument(_))
    ));
    c.disconnect().unwrap();
    let seen = h.join().unwrap().unwrap();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0], (CMD_WRITE, 1, 4096, 3000, vec![5u8; 3000]));
    assert_eq!(seen[1], (CMD_WRITE_ZEROES, 2 | 16, 8192, 100, vec![]));
    assert_eq!(seen[2], (CMD_WRITE_ZEROES, 0, 0, 1, vec![]));
    assert_eq!(seen[3], (CMD_TRIM, 0, 0, 512, vec![]));
    assert_eq!(seen[4], (CMD_FLUSH, 0, 0, 0, vec![]));
}

#[test]
fn commands_the_export_does_not_advertise_are_refused_locally() {
    let (c, h) = server(|s| {
        s.handshake(true, CTX, FLAG_HAS_FLAGS | FLAG_READ_ONLY, 1 << 20)?;
        s.request()
    });
    let mut c = Client::connect_transport(Box::new(c), &opts()).unwrap();
    for r in [
        c.write(0, &[1], false),
        c.write_zeroes(0, 1, ZeroFlags::default()),
        c.trim(0, 1),
        c.flush(),
    ] {
        assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
    }
    assert!(
        matches!(c.block_status(0, 1, false), Err(Error::Unsupported(m)) if m.contains("meta context"))
    );
    c.disconnect().unwrap();
    // Nothing but the disconnect reached the server.
    assert_eq!(h.join().unwrap().unwrap().kind, CMD_DISC);

    let (c, h) = server(|s| {
        s.handshake(true, CTX, FLAG_HAS_FLAGS | FLAG_SEND_WRITE_ZEROES, 1 << 20)?;
        s.request()
    });
    let mut c = Client::connect_transport(Box::new(c), &opts()).unwrap();
    let e = c
        .write_zeroes(
            0,
            1,
            ZeroFlags {
                fast_zero: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("NBD_FLAG_SEND_FAST_ZERO"), "{e}");
    let e = c.write(0, &[1], true).unwrap_err();
    assert!(e.to_string().contains("NBD_FLAG_SEND_FUA"), "{e}");
    drop(c);
    assert_eq!(h.join().unwrap().unwrap().kind, CMD_DISC);
}

// ---------------------------------------------------------------- STARTTLS

#[test]
fn starttls_refusal_and_garbage_after_the_ack_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tls = nbd_client::TlsConfig {
        ca_cert: dir.path().join("ca-cert.pem"),
        client_cert: None,
        client_key: None,
        server_name: "localhost".into(),
    };
    // Credentials are read before the handshake: a missing CA file is named.
    let (c, h) = server(|s| {
        s.greet(3)?;
        let (opt, _) = s.option()?;
        assert_eq!(opt, 5, "STARTTLS comes first");
        s.reply(opt, REP_ACK, &[])
    });
    match Client::connect_transport(Box::new(c), &opts().tls(tls.clone())) {
        Err(Error::Tls(m)) => assert!(m.contains("ca-cert.pem"), "{m}"),
        other => panic!("expected a TLS error, got {:?}", other.err()),
    }
    let _ = h.join().unwrap();

    // A real CA file, so that the TLS handshake itself starts.
    let made = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-days",
            "2",
        ])
        .args(["-subj", "/CN=test-ca"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !made {
        eprintln!("skipping the rest: openssl is not installed (needed to make a test CA)");
        return;
    }
    // The server refuses TLS: no fallback to plain text.
    let (c, h) = server(|s| {
        s.greet(3)?;
        let (opt, _) = s.option()?;
        s.reply(opt, ERR_POLICY, b"no TLS configured")
    });
    match Client::connect_transport(Box::new(c), &opts().tls(tls.clone())) {
        Err(Error::OptionRefused {
            option: "NBD_OPT_STARTTLS",
            kind: OptionErrorKind::Policy,
            message,
        }) => assert_eq!(message, "no TLS configured"),
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
    let _ = h.join().unwrap();
    // The server acknowledges, then speaks plain text instead of TLS.
    let (c, h) = server(|s| {
        s.greet(3)?;
        let (opt, _) = s.option()?;
        s.reply(opt, REP_ACK, &[])?;
        let mut hello = [0u8; 5];
        s.s.read_exact(&mut hello)?;
        assert_eq!(hello[0], 22, "a TLS handshake record from the client");
        s.send(&[b"NBD says hello in plain text, which is not TLS at all"])
    });
    match Client::connect_transport(Box::new(c), &opts().tls(tls)) {
        Err(Error::Tls(m)) => assert!(!m.contains("ca-cert.pem"), "{m}"),
        other => panic!("expected a TLS error, got {:?}", other.err()),
    }
    // The server saw the client's TLS hello.
    h.join().unwrap().unwrap();
}

// ---------------------------------------------------------------- pipelining

/// The byte at `off` of the fake disk.
fn pat(off: u64) -> u8 {
    (off % 251) as u8
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pat(offset + i)).collect()
}

#[test]
fn read_keeps_several_requests_in_flight_and_takes_replies_in_any_order() {
    // The server takes all four requests before answering any: a client sending one at
    // a time would leave it waiting (and the test would fail on the server's timeout).
    let (c, h) = server(|s| {
        s.handshake(true, CTX, ALL_FLAGS, 64 * 1024)?;
        let reqs: Vec<Req> = (0..4).map(|_| s.request()).collect::<io::Result<_>>()?;
        for r in &reqs {
            assert_eq!(r.kind, CMD_READ);
        }
        let cookies: std::collections::HashSet<u64> = reqs.iter().map(|r| r.cookie).collect();
        assert_eq!(cookies.len(), 4, "distinct cookies");
        // Last request first; the first two answered with chunks interleaved.
        let r = &reqs[3];
        s.data(DONE, r.cookie, r.offset, &pattern(r.offset, r.len as usize))?;
        let (a, b) = (&reqs[0], &reqs[1]);
        let half = a.len as u64 / 2;
        s.data(
            0,
            a.cookie,
            a.offset + half,
            &pattern(a.offset + half, half as usize),
        )?;
        s.data(0, b.cookie, b.offset, &pattern(b.offset, b.len as usize))?;
        s.data(0, a.cookie, a.offset, &pattern(a.offset, half as usize))?;
        s.chunk(DONE, T_NONE, b.cookie, &[])?;
        let r = &reqs[2];
        s.hole(DONE, r.cookie, r.offset, r.len)?;
        s.chunk(DONE, T_NONE, a.cookie, &[])?;
        let offsets: Vec<(u64, u32)> = reqs.iter().map(|r| (r.offset, r.len)).collect();
        let disc = s.request()?;
        Ok((offsets, disc.kind))
    });
    let mut c = Client::connect_transport(Box::new(c), &opts()).unwrap();
    assert_eq!(c.max_in_flight(), nbd_client::DEFAULT_MAX_IN_FLIGHT);
    let mut buf = vec![0xeeu8; 4 * 65536 - 100];
    c.read(100, &mut buf).unwrap();
    let hole = 2 * 65536..3 * 65536;
    for (i, b) in buf.iter().enumerate() {
        let want = if hole.contains(&i) {
            0
        } else {
            pat(100 + i as u64)
        };
        assert_eq!(*b, want, "byte {i}");
    }
    c.disconnect().unwrap();
    let (offsets, disc) = h.join().unwrap().unwrap();
    assert_eq!(
        offsets,
        [
            (100, 65536),
            (65636, 65536),
            (131172, 65536),
            (196708, 65436)
        ]
    );
    assert_eq!(disc, CMD_DISC);
}

#[test]
fn read_window_is_bounded_by_max_in_flight() {
    // With two in flight, the server sees at most two requests before it answers.
    let (c, h) = server(|s| {
        s.handshake(true, CTX, ALL_FLAGS, 4096)?;
        let mut most = 0usize;
        let mut queue: Vec<Req> = Vec::new();
        loop {
            // Take what the client sent (it sends at most its window before reading).
            s.s.set_read_timeout(Some(Duration::from_millis(200)))?;
            loop {
                match s.request() {
                    Ok(r) if r.kind == CMD_DISC => return Ok(most),
                    Ok(r) => queue.push(r),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            most = most.max(queue.len());
            let r = queue.remove(0);
            s.data(DONE, r.cookie, r.offset, &pattern(r.offset, r.len as usize))?;
        }
    });
    let mut c = Client::connect_transport(Box::new(c), &opts()).unwrap();
    assert_eq!(c.set_max_in_flight(2), 2);
    assert_eq!(c.set_max_in_flight(0), 1, "at least one");
    assert_eq!(c.set_max_in_flight(1000), nbd_client::MAX_IN_FLIGHT);
    c.set_max_in_flight(2);
    let mut buf = vec![0u8; 6 * 4096];
    c.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(0, buf.len()));
    c.disconnect().unwrap();
    assert_eq!(h.join().unwrap().unwrap(), 2);
}

#[test]
fn an_error_for_one_of_several_reads_is_reported_and_the_rest_collected() {
    let (c, h) = server(|s| {
        s.handshake(true, CTX, ALL_FLAGS, 4096)?;
        let reqs: Vec<Req> = (0..3).map(|_| s.request()).collect::<io::Result<_>>()?;
        // The middle one fails; the others succeed, answered after it.
        s.error(
            DONE,
            reqs[1].cookie,
            5,
            "bad sector",
            Some(reqs[1].offset + 10),
        )?;
        for r in [&reqs[2], &reqs[0]] {
            s.data(DONE, r.cookie, r.offset, &pattern(r.offset, r.len as usize))?;
        }
        // The connection is still in step: one more read.
        let r = s.request()?;
        s.data(DONE, r.cookie, r.offset, &pattern(r.offset, r.len as usize))?;
        s.request()
    });
    let mut c = Client::connect_transport(Box::new(c), &opts()).unwrap();
    let mut buf = vec![0u8; 3 * 4096];
    match c.read(8192, &mut buf) {
        Err(Error::Server {
            command,
            offset,
            errno,
            error_offset,
            message,
            ..
        }) => {
            assert_eq!((command, offset, errno), ("NBD_CMD_READ", 12288, 5));
            assert_eq!(error_offset, Some(12298));
            assert_eq!(message, "bad sector");
        }
        other => panic!("expected the server error, got {other:?}"),
    }
    c.read(0, &mut buf[..100]).unwrap();
    assert_eq!(buf[..100], pattern(0, 100)[..]);
    c.disconnect().unwrap();
    assert_eq!(h.join().unwrap().unwrap().kind, CMD_DISC);
}

#[test]
fn submitted_reads_complete_in_server_order_with_their_own_outcome() {
    let (mut c, h) = session(|s| {
        let reqs: Vec<Req> = (0..3).map(|_| s.request()).collect::<io::Result<_>>()?;
        s.data(
            DONE,
            reqs[2].cookie,
            reqs[2].offset,
            &pattern(reqs[2].offset, 10),
        )?;
        s.error(DONE, reqs[0].cookie, 28, "full", None)?;
        s.data(
            DONE,
            reqs[1].cookie,
            reqs[1].offset,
            &pattern(reqs[1].offset, 20),
        )?;
        // After all were collected, other commands work again.
        let r = s.request()?;
        assert_eq!(r.kind, CMD_FLUSH);
        s.simple(r.cookie, 0, &[])?;
        s.request()
    });
    let a = c.submit_read(1000, vec![0; 30]).unwrap();
    let b = c.submit_read(2000, vec![0; 20]).unwrap();
    let d = c.submit_read(3000, vec![0; 10]).unwrap();
    assert_eq!(c.reads_in_flight(), 3);
    // Other commands wait until the reads are collected.
    let e = c.flush().unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("3 submitted reads")),
        "{e:?}"
    );
    let e = c.read(0, &mut [0u8; 10]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let first = c.next_read().unwrap();
    assert_eq!((first.cookie, first.offset), (d, 3000));
    assert!(first.result.is_ok());
    assert_eq!(first.buf, pattern(3000, 10));
    let second = c.next_read().unwrap();
    assert_eq!(second.cookie, a);
    assert!(
        matches!(
            second.result,
            Err(Error::Server {
                errno: 28,
                offset: 1000,
                ..
            })
        ),
        "{:?}",
        second.result
    );
    assert_eq!(second.buf.len(), 30, "the buffer comes back");
    let third = c.next_read().unwrap();
    assert_eq!(third.cookie, b);
    assert_eq!(third.buf, pattern(2000, 20));
    assert_eq!(c.reads_in_flight(), 0);
    assert!(matches!(c.next_read(), Err(Error::InvalidArgument(_))));
    c.flush().unwrap();
    c.disconnect().unwrap();
    assert_eq!(h.join().unwrap().unwrap().kind, CMD_DISC);
}

#[test]
fn submit_read_refuses_beyond_the_window_and_the_maximum_payload() {
    let (mut c, h) = session(|s| {
        let mut reqs = Vec::new();
        for _ in 0..2 {
            reqs.push(s.request()?);
        }
        for r in &reqs {
            s.data(DONE, r.cookie, r.offset, &pattern(r.offset, r.len as usize))?;
        }
        s.request()
    });
    c.set_max_in_flight(2);
    c.submit_read(0, vec![0; 8]).unwrap();
    c.submit_read(8, vec![0; 8]).unwrap();
    let e = c.submit_read(16, vec![0; 8]).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("already in flight")),
        "{e:?}"
    );
    let e = c.submit_read(0, vec![0; (1 << 20) + 1]).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("1048577")),
        "{e:?}"
    );
    let e = c.submit_read(SIZE - 4, vec![0; 8]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert_eq!(c.next_read().unwrap().buf, pattern(0, 8));
    assert_eq!(c.next_read().unwrap().buf, pattern(8, 8));
    c.disconnect().unwrap();
    assert_eq!(h.join().unwrap().unwrap().kind, CMD_DISC);
}

#[test]
fn server_closing_with_reads_in_flight_fails_them_all_without_hanging() {
    // One of three answered, then the server closes.
    let (mut c, h) = session(|s| {
        let reqs: Vec<Req> = (0..3).map(|_| s.request()).collect::<io::Result<_>>()?;
        s.data(
            DONE,
            reqs[1].cookie,
            reqs[1].offset,
            &pattern(reqs[1].offset, 64),
        )?;
        // Half a chunk of the next.
        s.chunk_len(
            DONE,
            T_DATA,
            reqs[0].cookie,
            8 + 64,
            &reqs[0].offset.to_be_bytes(),
        )?;
        s.send(&[&[0u8; 10]])
    });
    for off in [0u64, 64, 128] {
        c.submit_read(off, vec![0; 64]).unwrap();
    }
    let done = c.next_read().unwrap();
    assert_eq!((done.offset, done.buf.clone()), (64, pattern(64, 64)));
    let e = c.next_read().unwrap_err();
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    assert!(e.to_string().contains("NBD_CMD_READ"), "{e}");
    assert_eq!(c.reads_in_flight(), 0, "the lost reads are dropped");
    assert!(matches!(c.next_read(), Err(Error::Broken(_))));
    assert!(matches!(
        c.submit_read(0, vec![0; 8]),
        Err(Error::Broken(_))
    ));
    drop(c);
    h.join().unwrap().unwrap();

    // The same through read(): the error is typed, the connection broken.
    let (c, h) = server(|s| {
        s.handshake(true, CTX, ALL_FLAGS, 4096)?;
        let reqs: Vec<Req> = (0..4).map(|_| s.request()).collect::<io::Result<_>>()?;
        let r = &reqs[0];
        s.data(DONE, r.cookie, r.offset, &pattern(r.offset, r.len as usize))?;
        Ok(())
    });
    let mut c = Client::connect_transport(Box::new(c), &opts()).unwrap();
    let mut buf = vec![0u8; 4 * 4096];
    let e = c.read(0, &mut buf).unwrap_err();
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    assert!(matches!(c.read(0, &mut buf), Err(Error::Broken(_))));
    drop(c);
    h.join().unwrap().unwrap();

    // Replies stop with reads in flight: the timeout fires, nothing hangs.
    let (c, h) = server(|s| {
        s.handshake(true, CTX, ALL_FLAGS, 4096)?;
        let r = s.request()?;
        s.data(DONE, r.cookie, r.offset, &pattern(r.offset, r.len as usize))?;
        let mut b = [0u8; 1];
        s.s.set_read_timeout(Some(Duration::from_secs(20)))?;
        // Drain the other requests until the client gives up and closes.
        while s.s.read(&mut b).map(|n| n > 0).unwrap_or(false) {}
        Ok(())
    });
    let o = opts().timeout(Some(Duration::from_millis(300)));
    let mut c = Client::connect_transport(Box::new(c), &o).unwrap();
    let mut buf = vec![0u8; 3 * 4096];
    match c.read(0, &mut buf) {
        Err(e @ Error::Timeout { .. }) => assert!(e.to_string().contains("2 NBD_CMD_READ"), "{e}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(c);
    h.join().unwrap().unwrap();
}

#[test]
fn a_reply_for_an_unknown_cookie_among_several_is_a_protocol_error() {
    let (mut c, h) = session(|s| {
        let reqs: Vec<Req> = (0..2).map(|_| s.request()).collect::<io::Result<_>>()?;
        s.data(DONE, reqs[0].cookie + reqs[1].cookie + 7, 0, &[0u8; 8])
    });
    c.submit_read(0, vec![0; 8]).unwrap();
    c.submit_read(8, vec![0; 8]).unwrap();
    protocol_error(c.next_read().map(|_| ()), "no request in flight");
    assert!(matches!(c.next_read(), Err(Error::Broken(_))));
    drop(c);
    let _ = h.join().unwrap();
}
