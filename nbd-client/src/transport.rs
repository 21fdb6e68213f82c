//! Byte streams the client runs over, and the framing helpers on top of them.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{io_error, Error, Result};

/// A connected byte stream to an NBD server.
///
/// Implemented for [`UnixStream`] and [`TcpStream`]; implement it for another stream (a TLS
/// session, a test double) to run the client over it.
pub trait Transport: Read + Write + Send {
    /// Sets the read and write timeout of every later socket operation (`None`: wait forever).
    /// A read or write that times out must fail with `WouldBlock` or `TimedOut`.
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;

    /// Closes both directions (best effort).
    fn shutdown(&mut self) {}
}

impl Transport for UnixStream {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }

    fn shutdown(&mut self) {
        let _ = UnixStream::shutdown(self, Shutdown::Both);
    }
}

impl Transport for TcpStream {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }

    fn shutdown(&mut self) {
        let _ = TcpStream::shutdown(self, Shutdown::Both);
    }
}

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A TCP `host:port` (port 10809 is the NBD default).
    Tcp(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl Address {
    /// Opens a plain stream to the address; `timeout` bounds the TCP connect.
    pub fn connect(&self, timeout: Option<Duration>) -> Result<Box<dyn Transport>> {
        let during = format!("connecting to {self}");
        match self {
            Address::Unix(path) => {
                let s = UnixStream::connect(path).map_err(|e| Error::Io {
                    during: during.clone(),
                    source: e,
                })?;
                Ok(Box::new(s))
            }
            Address::Tcp(addr) => {
                let addrs: Vec<_> = addr
                    .to_socket_addrs()
                    .map_err(|e| Error::Io {
                        during: format!("resolving {addr:?} (expected host:port)"),
                        source: e,
                    })?
                    .collect();
                let mut last = None;
                for a in addrs {
                    let r = match timeout {
                        Some(t) => TcpStream::connect_timeout(&a, t),
                        None => TcpStream::connect(a),
                    };
                    match r {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            return Ok(Box::new(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let e = last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address")
                });
                Err(io_error(&during, e, timeout))
            }
        }
    }
}

/// A transport with a read buffer and typed error mapping.
pub(crate) struct Conn {
    stream: BufReader<Box<dyn Transport>>,
    timeout: Option<Duration>,
}

impl Conn {
    pub(crate) fn new(
        mut transport: Box<dyn Transport>,
        timeout: Option<Duration>,
    ) -> Result<Conn> {
        transport.set_timeout(timeout).map_err(|e| Error::Io {
            during: "setting the socket timeout".to_string(),
            source: e,
        })?;
        Ok(Conn {
            stream: BufReader::with_capacity(64 * 1024, transport),
            timeout,
        })
    }

    pub(crate) fn read_exact(&mut self, buf: &mut [u8], during: &str) -> Result<()> {
        self.stream
            .read_exact(buf)
            .map_err(|e| io_error(during, e, self.timeout))
    }

    pub(crate) fn read_u16(&mut self, during: &str) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b, during)?;
        Ok(u16::from_be_bytes(b))
    }

    pub(crate) fn read_u32(&mut self, during: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, during)?;
        Ok(u32::from_be_bytes(b))
    }

    pub(crate) fn read_u64(&mut self, during: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, during)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Reads `len` bytes into a new vector; callers bound `len` first.
    pub(crate) fn read_vec(&mut self, len: usize, during: &str) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read_exact(&mut v, during)?;
        Ok(v)
    }

    pub(crate) fn write_all(&mut self, parts: &[&[u8]], during: &str) -> Result<()> {
        let timeout = self.timeout;
        let w = self.stream.get_mut();
        for p in parts {
            w.write_all(p).map_err(|e| io_error(during, e, timeout))?;
        }
        w.flush().map_err(|e| io_error(during, e, timeout))
    }

    pub(crate) fn shutdown(&mut self) {
        self.stream.get_mut().shutdown();
    }

    /// Replaces the transport with `f(transport)` (the TLS upgrade). The server must not
    /// have sent anything the client has not consumed yet.
    pub(crate) fn upgrade(
        &mut self,
        f: impl FnOnce(Box<dyn Transport>, Option<Duration>) -> Result<Box<dyn Transport>>,
    ) -> Result<()> {
        if !self.stream.buffer().is_empty() {
            return Err(Error::Protocol(format!(
                "{} unexpected bytes from the server right after its STARTTLS acknowledgement",
                self.stream.buffer().len()
            )));
        }
        let old = std::mem::replace(&mut self.stream, BufReader::new(Box::new(Gone)));
        let upgraded = f(old.into_inner(), self.timeout)?;
        self.stream = BufReader::with_capacity(64 * 1024, upgraded);
        Ok(())
    }
}

/// Stands in for a transport while it is being upgraded (and after a failed upgrade).
struct Gone;

impl Read for Gone {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "connection given up",
        ))
    }
}

impl Write for Gone {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "connection given up",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Gone {
    fn set_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}
