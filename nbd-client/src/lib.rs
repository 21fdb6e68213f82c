//! A small blocking NBD client (Network Block Device protocol), std I/O only.
//!
//! Written from the NBD protocol specification for reading VM disks exported by
//! `qemu-nbd`, `qemu-storage-daemon`, QEMU's built-in NBD server (fleecing exports),
//! libvirt pull-mode backups and nbdkit, including their changed-block information.
//!
//! # Supported
//! - Transports: Unix domain sockets and TCP ([`Address`]), optionally with TLS, or any
//!   stream implementing [`Transport`]. Every socket read and write has a timeout
//!   ([`ConnectOptions::timeout`]); an expired one is [`Error::Timeout`], never a hang.
//! - Handshake ([`Handshake`]): fixed newstyle only, with `NBD_FLAG_C_NO_ZEROES` when offered;
//!   `NBD_OPT_LIST`, `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_LIST_META_CONTEXT`,
//!   `NBD_OPT_SET_META_CONTEXT` (every requested context must be granted, else
//!   [`Error::MetaContextNotGranted`] names the missing one), `NBD_OPT_INFO`, `NBD_OPT_GO`
//!   (requesting `NBD_INFO_BLOCK_SIZE`, `NBD_INFO_NAME`, `NBD_INFO_DESCRIPTION`; falls back to
//!   `NBD_OPT_EXPORT_NAME` on servers without `NBD_OPT_GO`), `NBD_OPT_ABORT`. Refusals
//!   (`NBD_REP_ERR_*`) are [`Error::OptionRefused`] with the server's message.
//! - Transmission ([`Client`]): `READ` (split into requests of 2 MiB by default, never
//!   above the export's maximum block size nor 32 MiB, up to [`DEFAULT_MAX_IN_FLIGHT`] of
//!   them outstanding at once; or submitted one by one with [`Client::submit_read`] and
//!   collected in completion order with [`Client::next_read`]), `WRITE` (optionally FUA), `WRITE_ZEROES` (`NO_HOLE`, `FAST_ZERO`, FUA, each
//!   checked against the transmission flags), `TRIM`, `FLUSH`, `BLOCK_STATUS` over any set of
//!   contexts (e.g. `base:allocation` and `qemu:dirty-bitmap:NAME` together; contexts may
//!   answer different lengths, the client iterates until the asked range is covered;
//!   optional `NBD_CMD_FLAG_REQ_ONE`), `DISC`.
//! - Replies: simple replies, and structured replies (chunks of different READs in flight
//!   may interleave; each is routed by its cookie) (`OFFSET_DATA`, `OFFSET_HOLE` zero-filled,
//!   `NONE`, `BLOCK_STATUS`, `ERROR`, `ERROR_OFFSET`) validated strictly: magic, cookie, chunk
//!   lengths, chunks inside the request and not overlapping, a complete successful read,
//!   one block status chunk per context, the `DONE` flag. A violation is
//!   [`Error::Protocol`] (and the connection is then unusable: [`Error::Broken`]); a server
//!   error is [`Error::Server`] with the errno and message, and the connection stays usable.
//! - Memory: READs in flight are bounded by [`Client::max_in_flight`] (at most
//!   [`MAX_IN_FLIGHT`]) and land in the caller's buffers; every other command is alone on
//!   the wire (refused with [`Error::InvalidArgument`] while submitted reads are
//!   outstanding); a READ or WRITE never moves more than [`Client::max_payload`] bytes per
//!   request; reply lengths are checked before anything
//!   is allocated (error chunks ≤ 64 KiB, option replies ≤ 12 KiB, at most
//!   [`MAX_STATUS_DESCRIPTORS`] block status descriptors per reply).
//!
//! - TLS: `NBD_OPT_STARTTLS` as the first option, then rustls (TLS 1.2/1.3, ring provider)
//!   with QEMU's x509 credentials layout ([`TlsConfig::from_qemu_dir`]: `ca-cert.pem`,
//!   `client-cert.pem`, `client-key.pem`), i.e. what `qemu-nbd --tls-creds` and
//!   `nbd-server-start tls-creds=...` expect. No fallback to plain text; failures are
//!   [`Error::Tls`].
//!
//! # Not supported
//! Extended headers (64-bit lengths), oldstyle servers, several non-READ requests in
//! flight, several connections (`NBD_FLAG_CAN_MULTI_CONN`), `NBD_CMD_CACHE`, `NBD_CMD_RESIZE`, TLS-PSK.
//!
//! A write to a socket the server closed raises SIGPIPE; Rust programs ignore it by
//! default, other hosts of this library must too.
//!
//! # Example
//! ```no_run
//! use nbd_client::{Address, Client, ConnectOptions, STATE_DIRTY, STATE_ZERO};
//! let opts = ConnectOptions::new("disk")
//!     .meta_context("base:allocation")
//!     .meta_context("qemu:dirty-bitmap:cp1");
//! let mut c = Client::connect(&Address::Unix("/tmp/nbd.sock".into()), &opts)?;
//! let status = c.block_status(0, c.size().min(1 << 30), false)?;
//! for e in &status[1].extents {
//!     if e.flags & STATE_DIRTY != 0 {
//!         let mut buf = vec![0u8; e.length.min(1 << 20) as usize];
//!         c.read(e.offset, &mut buf)?;
//!     }
//! }
//! c.disconnect()?;
//! # Ok::<(), nbd_client::Error>(())
//! ```

mod client;
mod error;
mod handshake;
mod proto;
mod tls;
mod transport;

pub use client::{
    Client, ContextExtents, Extent, ReadDone, ZeroFlags, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REQUEST_SIZE, MAX_IN_FLIGHT,
};
pub use error::{errno_name, Error, OptionErrorKind, Result};
pub use handshake::{BlockSize, ConnectOptions, ExportEntry, ExportInfo, Handshake, MetaContext};
pub use proto::{
    FLAG_CAN_MULTI_CONN, FLAG_HAS_FLAGS, FLAG_READ_ONLY, FLAG_ROTATIONAL, FLAG_SEND_CACHE,
    FLAG_SEND_DF, FLAG_SEND_FAST_ZERO, FLAG_SEND_FLUSH, FLAG_SEND_FUA, FLAG_SEND_RESIZE,
    FLAG_SEND_TRIM, FLAG_SEND_WRITE_ZEROES, MAX_PAYLOAD, MAX_STATUS_DESCRIPTORS, STATE_DIRTY,
    STATE_HOLE, STATE_ZERO,
};
pub use tls::TlsConfig;
pub use transport::{Address, Transport};
