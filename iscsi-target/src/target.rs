//! The iSCSI target: listener, login, and the full feature phase of each connection.
//!
//! Threads: one accept thread; per connection one reader thread (login, then every PDU
//! the initiator sends: NOP-Out is answered at once, Data-Out gathered, task management
//! decided) and one worker thread that executes the session's SCSI commands in order
//! and sends their Data-In / SCSI Response. Writes to the socket are serialized by a
//! mutex, so a long tape operation never holds up a NOP-In.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vtl_sim::{Library, VtlError};

use crate::params::{Negotiated, OUR_MAX_RECV_DATA_SEGMENT};
use crate::pdu::{encode_text, op, parse_text, reject, sn_lt, Pdu, PduError, BHS_LEN};
use crate::scsi::{decode_lun, encode_lun, fnv1a, status, LogicalUnit, LunTable, Nexus, Response};
use crate::smc::{Changer, MAX_DRIVES, MAX_MAIL_SLOTS, MAX_SLOTS};
use crate::ssc::TapeDrive;

/// The iSCSI port registered with IANA.
pub const DEFAULT_PORT: u16 = 3260;
/// Default target name (an iqn-format name; RFC 7143 section 4.2.7.2).
pub const DEFAULT_TARGET_NAME: &str = "iqn.2025-01.org.tapevault:vtl";
/// Commands a session may have queued before MaxCmdSN stops the initiator.
pub const COMMAND_WINDOW: u32 = 16;
/// Largest data-out one SCSI command may carry (WRITE data is gathered whole before it
/// runs): a 16 MiB block plus room for fixed-mode transfers.
pub const MAX_DATA_OUT: u32 = 64 << 20;
/// Most tasks a session may hold at once (queued, gathering data or running); more get
/// TASK SET FULL.
const MAX_TASKS: usize = 2 * COMMAND_WINDOW as usize;
/// Largest text a login or text negotiation may accumulate over continuation PDUs.
const MAX_TEXT: usize = 64 * 1024;
/// How long a reinstated session's in-flight command may take to finish before the new
/// session goes ahead anyway (the drive lock still serializes them).
const REINSTATE_WAIT: Duration = Duration::from_secs(30);
/// Target portal group tag of our single portal group.
const TPGT: u16 = 1;

/// Receives one line per session event.
pub type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Where and what to serve.
#[derive(Clone)]
pub struct TargetConfig {
    /// Directory of the vtl-sim library to serve.
    pub library: PathBuf,
    /// Address to listen on; 127.0.0.1:3260 by default.
    pub listen: SocketAddr,
    /// Required to listen on anything but a loopback address (no CHAP in this version:
    /// anyone who can connect can use the library).
    pub allow_remote: bool,
    pub target_name: String,
    /// Called with one line per session event (login, logout, connection loss,
    /// reinstatement). The library never prints.
    pub log: Option<LogFn>,
}

impl fmt::Debug for TargetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetConfig")
            .field("library", &self.library)
            .field("listen", &self.listen)
            .field("allow_remote", &self.allow_remote)
            .field("target_name", &self.target_name)
            .finish()
    }
}

impl TargetConfig {
    pub fn new(library: impl Into<PathBuf>) -> TargetConfig {
        TargetConfig {
            library: library.into(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
            allow_remote: false,
            target_name: DEFAULT_TARGET_NAME.to_string(),
            log: None,
        }
    }
}

/// Why the target could not start.
#[derive(Debug)]
pub enum ServeError {
    NotLoopback(SocketAddr),
    Library(VtlError),
    Bind(SocketAddr, io::Error),
    TooLarge(String),
    BadName(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::NotLoopback(a) => write!(
                f,
                "refusing to listen on {a}: it is not a loopback address and the target has no \
                 authentication; listen on 127.0.0.1 or allow remote initiators explicitly"
            ),
            ServeError::Library(e) => write!(f, "{e}"),
            ServeError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            ServeError::TooLarge(s) => write!(f, "{s}"),
            ServeError::BadName(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// Serves a library over iSCSI.
pub struct Target;

impl Target {
    /// Open the library and start listening. LUN 0 is the media changer, LUN n+1 is
    /// drive n. A drive's lock (vtl-sim's, shared with tapevault and every other user of
    /// the library) is taken only while initiators use the drive (see
    /// [`TapeDrive::new`]); a drive another process holds answers RESERVATION CONFLICT.
    pub fn serve(cfg: TargetConfig) -> Result<Handle, ServeError> {
        check_config(&cfg)?;
        let lib = Library::open(&cfg.library).map_err(ServeError::Library)?;
        let st = lib.state().map_err(ServeError::Library)?;
        if st.drives.len() > MAX_DRIVES
            || st.mail_slots.len() > MAX_MAIL_SLOTS
            || st.slots.len() > MAX_SLOTS
        {
            return Err(ServeError::TooLarge(format!(
                "the library has {} drives, {} mail slots and {} slots; the changer's address map holds at most {MAX_DRIVES}, {MAX_MAIL_SLOTS} and {MAX_SLOTS}",
                st.drives.len(),
                st.mail_slots.len(),
                st.slots.len()
            )));
        }
        let base = fnv1a(lib.dir().to_string_lossy().as_bytes());
        let mut luns = LunTable::new();
        let mut drives = Vec::new();
        let mut drive_luns = Vec::new();
        for i in 0..st.drives.len() {
            let serial = format!("{:08X}D{:03}", base as u32, i);
            let lu = Arc::new(
                TapeDrive::new(
                    Library::open(lib.dir()).map_err(ServeError::Library)?,
                    i,
                    None,
                    serial,
                    base.wrapping_add(i as u64 + 1),
                )
                .with_log(cfg.log.clone()),
            );
            luns.insert(i as u64 + 1, lu.clone() as Arc<dyn LogicalUnit>);
            drive_luns.push(i as u64 + 1);
            drives.push(lu);
        }
        let changer = Arc::new(Changer::new(
            Library::open(lib.dir()).map_err(ServeError::Library)?,
            drives,
            drive_luns,
            format!("{:08X}L", base as u32),
            base,
        ));
        luns.insert(0, changer);
        Target::serve_units(cfg, luns)
    }

    /// Serve the given logical units instead of a library's (`cfg.library` is not
    /// used): the iSCSI layer is the same whatever the units are.
    pub fn serve_units(cfg: TargetConfig, luns: LunTable) -> Result<Handle, ServeError> {
        check_config(&cfg)?;
        let listener =
            TcpListener::bind(cfg.listen).map_err(|e| ServeError::Bind(cfg.listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Bind(cfg.listen, e))?;
        let shared = Arc::new(Shared {
            name: cfg.target_name.clone(),
            luns,
            allow_remote: cfg.allow_remote,
            stopping: AtomicBool::new(false),
            sessions: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_tsih: AtomicU16::new(1),
            next_conn: AtomicU64::new(1),
            task_tables: Mutex::new(HashMap::new()),
            log: cfg.log.clone(),
        });
        // Housekeeping: units let go of what they no longer use (idle drives).
        let s3 = shared.clone();
        let idle = std::thread::Builder::new()
            .name("iscsi-idle".into())
            .spawn(move || {
                while !s3.stopping.load(Ordering::SeqCst) {
                    for (_, lu) in s3.luns.all() {
                        lu.idle();
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
            .map_err(|e| ServeError::Bind(addr, e))?;
        lock(&shared.threads).push(idle);
        let s2 = shared.clone();
        let accept = std::thread::Builder::new()
            .name("iscsi-accept".into())
            .spawn(move || accept_loop(s2, listener))
            .map_err(|e| ServeError::Bind(addr, e))?;
        Ok(Handle {
            addr,
            shared,
            accept: Some(accept),
        })
    }
}

fn check_config(cfg: &TargetConfig) -> Result<(), ServeError> {
    if !cfg.listen.ip().is_loopback() && !cfg.allow_remote {
        return Err(ServeError::NotLoopback(cfg.listen));
    }
    if !valid_name(&cfg.target_name) {
        return Err(ServeError::BadName(format!(
            "target name {:?} is not an iqn./eui./naa. name of lower-case letters, digits, '.', '-' and ':'",
            cfg.target_name
        )));
    }
    Ok(())
}

fn valid_name(n: &str) -> bool {
    (n.starts_with("iqn.") || n.starts_with("eui.") || n.starts_with("naa."))
        && n.len() <= 223
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b))
}

/// A running target. [`Handle::shutdown`] stops it; dropping the handle does too.
pub struct Handle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Handle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn target_name(&self) -> &str {
        &self.shared.name
    }
    /// LUN numbers with their peripheral device types.
    pub fn luns(&self) -> Vec<(u64, u8)> {
        self.shared
            .luns
            .all()
            .map(|(l, lu)| (*l, lu.device_type()))
            .collect()
    }
    /// Normal sessions currently logged in.
    pub fn sessions(&self) -> usize {
        lock(&self.shared.sessions).len()
    }

    /// Stop accepting, close every connection (a command being executed completes
    /// first; queued ones are dropped unacknowledged), flush every drive and release
    /// the library. Returns the drives that failed to flush.
    pub fn shutdown(mut self) -> Result<(), String> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), String> {
        let Some(accept) = self.accept.take() else {
            return Ok(());
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept thread.
        let wake = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), self.addr.port())
            }
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(2));
        let _ = accept.join();
        for s in lock(&self.shared.conns).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
        let mut errs = Vec::new();
        for (_, lu) in self.shared.luns.all() {
            if let Err(e) = lu.flush() {
                errs.push(e);
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

struct SessionEntry {
    tsih: u16,
    conn_id: u64,
    done: Arc<Done>,
}

#[derive(Default)]
struct Done {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Done {
    fn set(&self) {
        *lock(&self.flag) = true;
        self.cv.notify_all();
    }
    fn wait(&self, t: Duration) {
        let g = lock(&self.flag);
        let _ = self.cv.wait_timeout_while(g, t, |d| !*d);
    }
}

struct Shared {
    name: String,
    luns: LunTable,
    allow_remote: bool,
    stopping: AtomicBool,
    /// Normal sessions by (InitiatorName, ISID).
    sessions: Mutex<HashMap<(String, [u8; 6]), SessionEntry>>,
    /// Open connections (to close them on shutdown or reinstatement).
    conns: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_tsih: AtomicU16,
    next_conn: AtomicU64,
    /// The task table of every session in full feature phase, by connection, so a LUN
    /// reset or CLEAR TASK SET can abort the tasks other sessions have queued.
    task_tables: Mutex<HashMap<u64, Arc<Mutex<Tasks>>>>,
    log: Option<LogFn>,
}

impl Shared {
    fn log(&self, msg: String) {
        if let Some(l) = &self.log {
            l(&msg);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(_) if shared.stopping.load(Ordering::SeqCst) => return,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if !shared.allow_remote && !peer.ip().is_loopback() {
            shared.log(format!(
                "refused connection from {peer}: not a loopback address"
            ));
            continue;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(s) = stream.try_clone() {
            lock(&shared.conns).insert(id, s);
        }
        let s2 = shared.clone();
        let t = std::thread::Builder::new()
            .name(format!("iscsi-conn-{id}"))
            .spawn(move || {
                let _ = stream.set_nodelay(true);
                connection(&s2, stream, peer, id);
                lock(&s2.conns).remove(&id);
            });
        if let Ok(t) = t {
            let mut th = lock(&shared.threads);
            th.retain(|t| !t.is_finished());
            th.push(t);
        }
    }
}

/// Sequence numbers shared by the reader and the worker.
struct Seq {
    exp_cmd_sn: AtomicU32,
    /// Non-immediate commands received and not yet answered.
    queued: AtomicU32,
}

impl Seq {
    fn max_cmd_sn(&self) -> u32 {
        let q = self.queued.load(Ordering::SeqCst).min(COMMAND_WINDOW - 1);
        self.exp_cmd_sn
            .load(Ordering::SeqCst)
            .wrapping_add(COMMAND_WINDOW - 1 - q)
    }
}

/// The sending half of a connection.
struct Out {
    w: BufWriter<TcpStream>,
    stat_sn: u32,
}

struct Conn {
    out: Mutex<Out>,
    seq: Seq,
    stream: TcpStream,
}

impl Conn {
    /// Send a PDU; `status` says whether it carries a StatSN that advances.
    fn send(&self, mut p: Pdu, advance_stat: bool, stat_off: Option<usize>) -> io::Result<()> {
        let mut o = lock(&self.out);
        if let Some(off) = stat_off {
            p.set_u32(off, o.stat_sn);
            p.set_u32(off + 4, self.seq.exp_cmd_sn.load(Ordering::SeqCst));
            p.set_u32(off + 8, self.seq.max_cmd_sn());
        }
        if advance_stat {
            o.stat_sn = o.stat_sn.wrapping_add(1);
        }
        p.write_to(&mut o.w)?;
        o.w.flush()
    }

    fn reject(&self, reason: u8, bhs: &[u8; BHS_LEN]) {
        let mut p = Pdu::new(op::REJECT);
        p.set_flags(0x80);
        p.bhs[2] = reason;
        p.set_itt(0xffff_ffff);
        p.data = bhs.to_vec();
        let _ = self.send(p, true, Some(24));
    }
}

/// A SCSI command on its way to the worker.
struct Task {
    itt: u32,
    lun: u64,
    cdb: Vec<u8>,
    data_out: Vec<u8>,
    edtl: u32,
    read: bool,
    write: bool,
    /// Counted in the CmdSN window (non-immediate).
    counted: bool,
    /// Set when the reader already knows the answer (e.g. data-out too large).
    preset: Option<Response>,
}

enum Job {
    Cmd(Task),
    Tmf {
        itt: u32,
        response: u8,
        reset: Vec<u64>,
        close: bool,
    },
    Logout {
        itt: u32,
    },
}

#[derive(Default)]
struct Tasks {
    /// ITT -> (LUN field, aborted)
    pending: HashMap<u32, (u64, bool)>,
}

/// Write data being gathered from immediate data, unsolicited Data-Out and R2Ts.
struct PendingWrite {
    task: Task,
    received: usize,
    /// End of the unsolicited part (immediate data plus unsolicited Data-Out).
    unsolicited_end: usize,
    unsolicited_done: bool,
    next_offset: usize,
    r2t: Option<(u32, usize)>,
    r2tsn: u32,
    /// DataSN and buffer offset the next Data-Out must carry (data in order).
    expect_sn: u32,
    expect_off: usize,
}

/// Non-immediate SCSI commands in CmdSN order on their way to the worker: a command
/// whose data is complete waits behind an earlier write still gathering its data (by
/// R2T), so a tape executes them in the order sent (RFC 7143 section 3.2.2.1: ordered
/// delivery). Immediate commands go straight through.
#[derive(Default)]
struct InOrder {
    seq: std::collections::VecDeque<Slot>,
}

enum Slot {
    Gathering(u32),
    Ready(Task),
}

impl InOrder {
    /// A command ready to execute.
    fn ready(&mut self, tx: &mpsc::Sender<Job>, task: Task) {
        if !task.counted || self.seq.is_empty() {
            let _ = tx.send(Job::Cmd(task));
        } else {
            self.seq.push_back(Slot::Ready(task));
        }
    }

    /// A non-immediate write waiting for its data.
    fn gathering(&mut self, itt: u32) {
        self.seq.push_back(Slot::Gathering(itt));
    }

    /// A write whose data is in (or that failed while gathering it).
    fn completed(&mut self, tx: &mpsc::Sender<Job>, task: Task) {
        let itt = task.itt;
        match self
            .seq
            .iter_mut()
            .find(|s| matches!(s, Slot::Gathering(i) if *i == itt))
        {
            Some(slot) => *slot = Slot::Ready(task),
            None => {
                let _ = tx.send(Job::Cmd(task));
            }
        }
        self.flush(tx);
    }

    /// A write aborted while gathering its data: it never reaches the worker.
    fn forget(&mut self, tx: &mpsc::Sender<Job>, itt: u32) {
        self.seq
            .retain(|s| !matches!(s, Slot::Gathering(i) if *i == itt));
        self.flush(tx);
    }

    fn flush(&mut self, tx: &mpsc::Sender<Job>) {
        while matches!(self.seq.front(), Some(Slot::Ready(_))) {
            if let Some(Slot::Ready(t)) = self.seq.pop_front() {
                let _ = tx.send(Job::Cmd(t));
            }
        }
    }
}

fn connection(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, conn_id: u64) {
    let Ok(rs) = stream.try_clone() else { return };
    let Ok(ws) = stream.try_clone() else { return };
    let mut reader = BufReader::with_capacity(256 * 1024, rs);
    let out = Out {
        w: BufWriter::with_capacity(256 * 1024, ws),
        stat_sn: 0,
    };
    let conn = Arc::new(Conn {
        out: Mutex::new(out),
        seq: Seq {
            exp_cmd_sn: AtomicU32::new(0),
            queued: AtomicU32::new(0),
        },
        stream,
    });
    let login = match login(shared, &conn, &mut reader, conn_id) {
        Some(l) => l,
        None => return,
    };
    let kind = if login.params.discovery {
        "discovery"
    } else {
        "normal"
    };
    let initiator = login.params.initiator_name.clone().unwrap_or_default();
    shared.log(format!(
        "login: {initiator} isid {} tsih {} from {peer} ({kind} session)",
        hex(&login.isid),
        login.tsih
    ));
    let nexus = Nexus::new(&initiator, login.isid);
    let reason = full_feature(shared, &conn, &mut reader, &login, &nexus, conn_id);
    if !login.params.discovery {
        for (_, lu) in shared.luns.all() {
            lu.nexus_lost(&nexus);
        }
        let mut s = lock(&shared.sessions);
        if s.get(&(initiator.clone(), login.isid))
            .is_some_and(|e| e.conn_id == conn_id)
        {
            s.remove(&(initiator.clone(), login.isid));
        }
    }
    login.done.set();
    let _ = conn.stream.shutdown(Shutdown::Both);
    shared.log(format!(
        "session end: {initiator} isid {} tsih {}: {reason}",
        hex(&login.isid),
        login.tsih
    ));
}

fn hex(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

struct LoginOk {
    params: Negotiated,
    isid: [u8; 6],
    tsih: u16,
    done: Arc<Done>,
}

/// Login status classes/details (RFC 7143 section 11.13.5).
const LOGIN_INITIATOR_ERROR: u16 = 0x0200;
const LOGIN_AUTH_FAILED: u16 = 0x0201;
const LOGIN_NOT_FOUND: u16 = 0x0203;
const LOGIN_UNSUPPORTED_VERSION: u16 = 0x0205;
const LOGIN_MISSING_PARAMETER: u16 = 0x0207;
const LOGIN_SESSION_DOES_NOT_EXIST: u16 = 0x020a;
const LOGIN_INVALID_REQUEST: u16 = 0x020b;

fn login(
    shared: &Arc<Shared>,
    conn: &Conn,
    reader: &mut impl io::Read,
    conn_id: u64,
) -> Option<LoginOk> {
    let mut params = Negotiated::default();
    let mut stage = 0u8;
    let mut first = true;
    let mut isid = [0u8; 6];
    let mut text: Vec<u8> = Vec::new();
    let mut declared_mrdsl = false;
    let mut sent_tpgt = false;
    // The starting StatSN of the connection.
    let mut stat_sn: u32 = 1;
    loop {
        let mut rej = None;
        let req = match Pdu::read_from(reader, MAX_TEXT, &mut rej) {
            Ok(p) => p,
            Err(_) => return None,
        };
        if req.opcode() != op::LOGIN_REQ {
            return None;
        }
        let flags = req.flags();
        let transit = flags & 0x80 != 0;
        let cont = flags & 0x40 != 0;
        let csg = (flags >> 2) & 3;
        let nsg = flags & 3;
        let cmd_sn = req.u32_at(24);
        if first {
            isid.copy_from_slice(&req.bhs[8..14]);
            conn.seq.exp_cmd_sn.store(cmd_sn, Ordering::SeqCst);
        }
        let respond = |status: u16, flags: u8, tsih: u16, data: Vec<u8>, stat_sn: u32| {
            let mut p = Pdu::new(op::LOGIN_RESP);
            p.set_flags(flags);
            p.bhs[2] = 0; // version-max
            p.bhs[3] = 0; // version-active
            p.bhs[8..14].copy_from_slice(&isid);
            p.set_u16(14, tsih);
            p.set_itt(req.itt());
            p.set_u32(24, stat_sn);
            p.set_u32(28, cmd_sn);
            p.set_u32(32, cmd_sn.wrapping_add(COMMAND_WINDOW - 1));
            p.set_u16(36, status);
            p.data = data;
            let mut o = lock(&conn.out);
            p.write_to(&mut o.w).and_then(|_| o.w.flush())
        };
        let fail = |status: u16| {
            let _ = respond(status, (csg << 2) & 0x0c, 0, Vec::new(), stat_sn);
            None
        };
        if req.bhs[3] > 0 {
            return fail(LOGIN_UNSUPPORTED_VERSION);
        }
        // CSG 2 is reserved and 3 is not a login stage; T and C together are an error.
        if csg >= 2 || csg < stage || (transit && (cont || nsg <= csg || nsg == 2)) {
            return fail(LOGIN_INVALID_REQUEST);
        }
        if first && req.u16_at(14) != 0 {
            // Adding a connection to an existing session: we allow one connection.
            return fail(LOGIN_SESSION_DOES_NOT_EXIST);
        }
        text.extend_from_slice(&req.data);
        if text.len() > MAX_TEXT {
            return fail(LOGIN_INITIATOR_ERROR);
        }
        if cont {
            if respond(0, (csg << 2) & 0x0c, 0, Vec::new(), stat_sn).is_err() {
                return None;
            }
            stat_sn = stat_sn.wrapping_add(1);
            continue;
        }
        let keys = parse_text(&text);
        text.clear();
        let round = params.negotiate(&keys, csg == 0);
        if first {
            first = false;
            let Some(name) = params.initiator_name.clone() else {
                return fail(LOGIN_MISSING_PARAMETER);
            };
            if name.is_empty() {
                return fail(LOGIN_MISSING_PARAMETER);
            }
            if !params.discovery {
                match &params.target_name {
                    None => return fail(LOGIN_MISSING_PARAMETER),
                    Some(t) if *t != shared.name => return fail(LOGIN_NOT_FOUND),
                    Some(_) => {}
                }
            }
        }
        if let Some(f) = round.fatal {
            shared.log(format!("login refused: {f}"));
            return fail(if f.starts_with("AuthMethod") {
                LOGIN_AUTH_FAILED
            } else {
                LOGIN_INITIATOR_ERROR
            });
        }
        let mut reply = round.reply;
        if !params.discovery && !sent_tpgt {
            reply.push(("TargetPortalGroupTag".into(), TPGT.to_string()));
            sent_tpgt = true;
        }
        if csg == 1 && !declared_mrdsl {
            reply.push((
                "MaxRecvDataSegmentLength".into(),
                OUR_MAX_RECV_DATA_SEGMENT.to_string(),
            ));
            declared_mrdsl = true;
        }
        let to_ffp = transit && nsg == 3;
        let mut tsih = 0;
        let mut done = None;
        if to_ffp {
            tsih = match shared.next_tsih.fetch_add(1, Ordering::SeqCst) {
                0 => shared.next_tsih.fetch_add(1, Ordering::SeqCst),
                t => t,
            };
            let d = Arc::new(Done::default());
            if !params.discovery {
                let key = (params.initiator_name.clone().unwrap_or_default(), isid);
                let old = lock(&shared.sessions).remove(&key);
                if let Some(old) = old {
                    // Session reinstatement: close the old session, let its running
                    // command finish.
                    shared.log(format!(
                        "reinstating session of {} isid {}: closing tsih {}",
                        key.0,
                        hex(&isid),
                        old.tsih
                    ));
                    if let Some(s) = lock(&shared.conns).get(&old.conn_id) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                    old.done.wait(REINSTATE_WAIT);
                }
                lock(&shared.sessions).insert(
                    key,
                    SessionEntry {
                        tsih,
                        conn_id,
                        done: d.clone(),
                    },
                );
            }
            done = Some(d);
        }
        let rflags = if transit {
            0x80 | (csg << 2) | nsg
        } else {
            csg << 2
        };
        if respond(0, rflags, tsih, encode_text(&reply), stat_sn).is_err() {
            return None;
        }
        stat_sn = stat_sn.wrapping_add(1);
        if transit {
            stage = nsg;
        }
        if let Some(done) = done {
            lock(&conn.out).stat_sn = stat_sn;
            return Some(LoginOk {
                params,
                isid,
                tsih,
                done,
            });
        }
    }
}

fn full_feature(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    reader: &mut impl io::Read,
    login: &LoginOk,
    nexus: &Nexus,
    conn_id: u64,
) -> String {
    let params = &login.params;
    let tasks = Arc::new(Mutex::new(Tasks::default()));
    lock(&shared.task_tables).insert(conn_id, tasks.clone());
    let (tx, rx) = mpsc::channel::<Job>();
    let worker = {
        let conn = conn.clone();
        let tasks = tasks.clone();
        let shared = shared.clone();
        let nexus = nexus.clone();
        let mrdsl = params.initiator_mrdsl as usize;
        std::thread::Builder::new()
            .name("iscsi-worker".into())
            .spawn(move || worker(&shared, &conn, &tasks, rx, &nexus, mrdsl))
    };
    let Ok(worker) = worker else {
        return "could not start the worker thread".into();
    };
    let mut writes: HashMap<u32, PendingWrite> = HashMap::new();
    let mut order = InOrder::default();
    let mut next_ttt: u32 = 1;
    let mut text_acc: Vec<u8> = Vec::new();
    let mut logged_out = false;
    let reason = loop {
        let mut rej = None;
        let mut pdu = match Pdu::read_from(reader, OUR_MAX_RECV_DATA_SEGMENT as usize, &mut rej) {
            Ok(p) => p,
            Err(PduError::TooLong { .. }) => {
                if let Some(b) = rej {
                    conn.reject(reject::PROTOCOL_ERROR, &b);
                }
                continue;
            }
            Err(PduError::Closed) if logged_out => break "logged out".to_string(),
            Err(PduError::Closed) => break "connection closed".to_string(),
            Err(e) => break e.to_string(),
        };
        // CmdSN of non-immediate requests. `exp` is ExpCmdSN before this request: a
        // CmdSN below it was received (or skipped by a later one) earlier.
        let carries_cmdsn = matches!(
            pdu.opcode(),
            op::SCSI_CMD | op::NOP_OUT | op::TMF_REQ | op::TEXT_REQ | op::LOGOUT_REQ
        );
        let exp = conn.seq.exp_cmd_sn.load(Ordering::SeqCst);
        if carries_cmdsn && !pdu.immediate() {
            let sn = pdu.u32_at(24);
            let max = conn.seq.max_cmd_sn();
            if sn_lt(sn, exp) || sn_lt(max, sn) {
                // Outside the window: silently ignored (RFC 7143 section 4.2.2.1).
                continue;
            }
            conn.seq
                .exp_cmd_sn
                .store(sn.wrapping_add(1), Ordering::SeqCst);
        }
        match pdu.opcode() {
            op::NOP_OUT => {
                if pdu.itt() == 0xffff_ffff {
                    continue;
                }
                let mut p = Pdu::new(op::NOP_IN);
                p.set_flags(0x80);
                p.set_lun(pdu.lun());
                p.set_itt(pdu.itt());
                p.set_u32(20, 0xffff_ffff);
                p.data = pdu.data.clone();
                if conn.send(p, true, Some(24)).is_err() {
                    break "send failed".into();
                }
            }
            op::SCSI_CMD => {
                if params.discovery {
                    conn.reject(reject::PROTOCOL_ERROR, &pdu.bhs);
                    continue;
                }
                let flags = pdu.flags();
                let mut cdb = pdu.bhs[32..48].to_vec();
                // Extended CDB AHS (type 1): the bytes beyond 16.
                let mut ahs = &pdu.ahs[..];
                while ahs.len() >= 4 {
                    let len = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
                    let total = (3 + len).div_ceil(4) * 4;
                    if ahs[2] == 1 && len >= 1 && ahs.len() >= 3 + len {
                        cdb.extend_from_slice(&ahs[4..3 + len]);
                    }
                    if total > ahs.len() {
                        break;
                    }
                    ahs = &ahs[total..];
                }
                let itt = pdu.itt();
                let edtl = pdu.u32_at(20);
                let counted = !pdu.immediate();
                let full;
                {
                    let mut t = lock(&tasks);
                    if t.pending.contains_key(&itt) {
                        drop(t);
                        conn.reject(reject::INVALID_PDU_FIELD, &pdu.bhs);
                        continue;
                    }
                    // Immediate commands bypass the CmdSN window; this bounds them.
                    full = t.pending.len() >= MAX_TASKS;
                    t.pending.insert(itt, (pdu.lun(), false));
                }
                if counted {
                    conn.seq.queued.fetch_add(1, Ordering::SeqCst);
                }
                let write = flags & 0x20 != 0;
                let mut task = Task {
                    itt,
                    lun: pdu.lun(),
                    cdb,
                    data_out: Vec::new(),
                    edtl,
                    read: flags & 0x40 != 0,
                    write,
                    counted,
                    preset: None,
                };
                if full {
                    task.preset = Some(Response {
                        status: status::TASK_SET_FULL,
                        ..Default::default()
                    });
                    order.ready(&tx, task);
                    continue;
                }
                if !write {
                    if !pdu.data.is_empty() {
                        task.preset = Some(Response::check(crate::scsi::Sense::invalid_cdb_field(
                            0, None,
                        )));
                    }
                    order.ready(&tx, task);
                    continue;
                }
                let imm = pdu.data.len();
                if (imm > 0 && !params.immediate_data)
                    || imm > params.first_burst as usize
                    || imm > edtl as usize
                {
                    conn.reject(reject::PROTOCOL_ERROR, &pdu.bhs);
                    lock(&tasks).pending.remove(&itt);
                    if counted {
                        conn.seq.queued.fetch_sub(1, Ordering::SeqCst);
                    }
                    continue;
                }
                if edtl > MAX_DATA_OUT {
                    task.preset = Some(Response::check(crate::scsi::Sense::invalid_cdb_field(
                        0, None,
                    )));
                    order.ready(&tx, task);
                    continue;
                }
                if imm == edtl as usize {
                    // All the data came with the command: take it as it is.
                    task.data_out = std::mem::take(&mut pdu.data);
                } else {
                    task.data_out = vec![0u8; edtl as usize];
                    task.data_out[..imm].copy_from_slice(&pdu.data);
                }
                let final_bit = flags & 0x80 != 0;
                let unsolicited_end = if params.initial_r2t || final_bit {
                    imm
                } else {
                    (params.first_burst as usize).min(edtl as usize)
                };
                let mut pw = PendingWrite {
                    task,
                    received: imm,
                    unsolicited_end,
                    unsolicited_done: unsolicited_end == imm,
                    next_offset: unsolicited_end,
                    r2t: None,
                    r2tsn: 0,
                    expect_sn: 0,
                    expect_off: imm,
                };
                match advance_write(conn, &mut pw, params.max_burst as usize, &mut next_ttt) {
                    Ok(true) => order.ready(&tx, pw.task),
                    Ok(false) => {
                        if pw.task.counted {
                            order.gathering(itt);
                        }
                        writes.insert(itt, pw);
                    }
                    Err(_) => break "send failed".into(),
                }
            }
            op::DATA_OUT => {
                let itt = pdu.itt();
                let Some(pw) = writes.get_mut(&itt) else {
                    // Data for an aborted or unknown task: dropped.
                    continue;
                };
                let off = pdu.u32_at(40) as usize;
                let ttt = pdu.u32_at(20);
                let data_sn = pdu.u32_at(36);
                let len = pdu.data.len();
                let expected_ttt = match pw.r2t {
                    Some((t, _)) => t,
                    None if !pw.unsolicited_done => 0xffff_ffff,
                    None => 0,
                };
                // ErrorRecoveryLevel 0: a Data-Out out of sequence ends the task with
                // CHECK CONDITION, ABORTED COMMAND (DATA PHASE / DATA OFFSET ERROR);
                // what the initiator still sends for it is dropped.
                let error = if ttt != expected_ttt || data_sn != pw.expect_sn {
                    Some(0x00)
                } else if off != pw.expect_off || off + len > pw.task.data_out.len() {
                    Some(0x05)
                } else {
                    None
                };
                if let Some(ascq) = error {
                    if let Some(mut pw) = writes.remove(&itt) {
                        pw.task.preset = Some(Response::check(crate::scsi::Sense::new(
                            crate::scsi::key::ABORTED_COMMAND,
                            0x4b,
                            ascq,
                        )));
                        order.completed(&tx, pw.task);
                    }
                    continue;
                }
                pw.expect_sn = pw.expect_sn.wrapping_add(1);
                pw.expect_off = off + len;
                pw.task.data_out[off..off + len].copy_from_slice(&pdu.data);
                pw.received += len;
                let fin = pdu.final_bit();
                if ttt == 0xffff_ffff {
                    if fin || pw.received >= pw.unsolicited_end {
                        pw.unsolicited_done = true;
                    }
                } else if let Some((t, left)) = pw.r2t {
                    if t == ttt {
                        let left = left.saturating_sub(len);
                        pw.r2t = if fin || left == 0 {
                            None
                        } else {
                            Some((t, left))
                        };
                    }
                }
                match advance_write(conn, pw, params.max_burst as usize, &mut next_ttt) {
                    Ok(true) => {
                        if let Some(pw) = writes.remove(&itt) {
                            order.completed(&tx, pw.task);
                        }
                    }
                    Ok(false) => {}
                    Err(_) => break "send failed".into(),
                }
            }
            op::TMF_REQ => {
                let function = pdu.flags() & 0x7f;
                let lun = pdu.lun();
                let ref_itt = pdu.u32_at(20);
                let ref_cmd_sn = pdu.u32_at(32);
                let cmd_sn = pdu.u32_at(24);
                let mut reset = Vec::new();
                let mut close = false;
                let mut abort_where = |pred: &dyn Fn(u32, u64) -> bool| {
                    let mut t = lock(&tasks);
                    let ids: Vec<u32> = t
                        .pending
                        .iter()
                        .filter(|(i, (l, _))| pred(**i, *l))
                        .map(|(i, _)| *i)
                        .collect();
                    for i in &ids {
                        if let Some(pw) = writes.remove(i) {
                            // Never reached the worker: forget it here.
                            order.forget(&tx, *i);
                            t.pending.remove(i);
                            if pw.task.counted {
                                conn.seq.queued.fetch_sub(1, Ordering::SeqCst);
                            }
                        } else if let Some(e) = t.pending.get_mut(i) {
                            e.1 = true;
                        }
                    }
                    ids.len()
                };
                let response = match function {
                    // ABORT TASK (RFC 7143 section 11.5.1). A task still pending is
                    // aborted: the worker sends no response for it, and the TMF
                    // response, queued behind it, follows. A task not pending either
                    // completed (its response is sent or queued ahead of this one: "task
                    // does not exist") or never arrived: numbered inside the window, at
                    // or above ExpCmdSN and before this request, it counts as received
                    // and aborted ("function complete").
                    1 => {
                        if abort_where(&|i, _| i == ref_itt) > 0
                            || (!sn_lt(ref_cmd_sn, exp) && sn_lt(ref_cmd_sn, cmd_sn))
                        {
                            0
                        } else {
                            1
                        }
                    }
                    2 => {
                        abort_where(&|_, l| l == lun);
                        0
                    }
                    // CLEAR TASK SET and LOGICAL UNIT RESET reach every nexus's tasks.
                    4 => {
                        abort_where(&|_, l| l == lun);
                        abort_elsewhere(shared, conn_id, decode_lun(lun));
                        0
                    }
                    5 => match decode_lun(lun).filter(|l| shared.luns.get(*l).is_some()) {
                        Some(l) => {
                            abort_where(&|_, x| x == lun);
                            abort_elsewhere(shared, conn_id, Some(l));
                            reset.push(l);
                            0
                        }
                        None => 2,
                    },
                    6 | 7 => {
                        abort_where(&|_, _| true);
                        abort_elsewhere(shared, conn_id, None);
                        reset.extend(shared.luns.all().map(|(l, _)| *l));
                        close = function == 7;
                        0
                    }
                    8 => 4,
                    _ => 5,
                };
                let _ = tx.send(Job::Tmf {
                    itt: pdu.itt(),
                    response,
                    reset,
                    close,
                });
            }
            op::TEXT_REQ => {
                text_acc.extend_from_slice(&pdu.data);
                if text_acc.len() > MAX_TEXT {
                    text_acc.clear();
                    conn.reject(reject::PROTOCOL_ERROR, &pdu.bhs);
                    continue;
                }
                let cont = pdu.flags() & 0x40 != 0;
                let mut p = Pdu::new(op::TEXT_RESP);
                p.set_lun(pdu.lun());
                p.set_itt(pdu.itt());
                if cont {
                    p.set_u32(20, next_ttt);
                    next_ttt = next_ttt.wrapping_add(1).max(1);
                } else {
                    p.set_flags(0x80);
                    p.set_u32(20, 0xffff_ffff);
                    let keys = parse_text(&text_acc);
                    text_acc.clear();
                    p.data = text_response(shared, conn, &keys, params.discovery);
                }
                if conn.send(p, true, Some(24)).is_err() {
                    break "send failed".into();
                }
            }
            op::LOGOUT_REQ => {
                let _ = tx.send(Job::Logout { itt: pdu.itt() });
                logged_out = true;
            }
            op::LOGIN_REQ => conn.reject(reject::PROTOCOL_ERROR, &pdu.bhs),
            _ => conn.reject(reject::COMMAND_NOT_SUPPORTED, &pdu.bhs),
        }
    };
    // Whatever the worker has not started is never answered (session failure at ERL 0).
    lock(&shared.task_tables).remove(&conn_id);
    for e in lock(&tasks).pending.values_mut() {
        e.1 = true;
    }
    drop(tx);
    let _ = worker.join();
    reason
}

/// Mark the tasks other sessions hold for `lun` (all LUNs when None) aborted: queued
/// ones are never executed, a running one completes unanswered.
fn abort_elsewhere(shared: &Shared, own: u64, lun: Option<u64>) {
    let tables: Vec<Arc<Mutex<Tasks>>> = lock(&shared.task_tables)
        .iter()
        .filter(|(c, _)| **c != own)
        .map(|(_, t)| t.clone())
        .collect();
    for t in tables {
        for (field, aborted) in lock(&t).pending.values_mut() {
            if lun.is_none() || decode_lun(*field) == lun {
                *aborted = true;
            }
        }
    }
}

/// Issue the next R2T if the unsolicited part is over and none is outstanding. Returns
/// true when every byte of the write has arrived.
fn advance_write(
    conn: &Conn,
    pw: &mut PendingWrite,
    max_burst: usize,
    next_ttt: &mut u32,
) -> io::Result<bool> {
    let total = pw.task.data_out.len();
    if pw.received >= total && pw.r2t.is_none() {
        return Ok(true);
    }
    if !pw.unsolicited_done || pw.r2t.is_some() || pw.next_offset >= total {
        return Ok(false);
    }
    let len = (total - pw.next_offset).min(max_burst);
    let ttt = *next_ttt;
    *next_ttt = next_ttt.wrapping_add(1).max(1);
    if *next_ttt == 0xffff_ffff {
        *next_ttt = 1;
    }
    let mut p = Pdu::new(op::R2T);
    p.set_flags(0x80);
    p.set_lun(pw.task.lun);
    p.set_itt(pw.task.itt);
    p.set_u32(20, ttt);
    p.set_u32(36, pw.r2tsn);
    p.set_u32(40, pw.next_offset as u32);
    p.set_u32(44, len as u32);
    pw.r2tsn += 1;
    pw.expect_sn = 0;
    pw.expect_off = pw.next_offset;
    pw.next_offset += len;
    pw.r2t = Some((ttt, len));
    conn.send(p, false, Some(24))?;
    Ok(false)
}

fn text_response(
    shared: &Shared,
    conn: &Conn,
    keys: &[(String, String)],
    _discovery: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in keys {
        if k == "SendTargets" {
            if v == "All" || v.is_empty() || *v == shared.name {
                out.push(("TargetName".to_string(), shared.name.clone()));
                if let Ok(a) = conn.stream.local_addr() {
                    let addr = match a {
                        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
                        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                    };
                    out.push(("TargetAddress".to_string(), format!("{addr},{TPGT}")));
                }
            }
        } else {
            out.push((k.clone(), "NotUnderstood".to_string()));
        }
    }
    encode_text(&out)
}

fn worker(
    shared: &Shared,
    conn: &Conn,
    tasks: &Mutex<Tasks>,
    rx: mpsc::Receiver<Job>,
    nexus: &Nexus,
    mrdsl: usize,
) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Cmd(t) => {
                let aborted = lock(tasks).pending.get(&t.itt).is_none_or(|e| e.1);
                let resp = if aborted {
                    None
                } else if let Some(r) = t.preset.clone() {
                    Some(r)
                } else {
                    Some(
                        shared
                            .luns
                            .execute(decode_lun(t.lun), nexus, &t.cdb, &t.data_out),
                    )
                };
                let aborted = lock(tasks).pending.remove(&t.itt).is_none_or(|e| e.1);
                if t.counted {
                    conn.seq.queued.fetch_sub(1, Ordering::SeqCst);
                }
                if let (Some(r), false) = (resp, aborted) {
                    if send_response(conn, &t, r, mrdsl).is_err() {
                        let _ = conn.stream.shutdown(Shutdown::Both);
                    }
                }
            }
            Job::Tmf {
                itt,
                response,
                reset,
                close,
            } => {
                for l in reset {
                    if let Some(lu) = shared.luns.get(l) {
                        lu.reset(nexus);
                    }
                }
                let mut p = Pdu::new(op::TMF_RESP);
                p.set_flags(0x80);
                p.bhs[2] = response;
                p.set_itt(itt);
                let _ = conn.send(p, true, Some(24));
                if close {
                    let _ = conn.stream.shutdown(Shutdown::Both);
                }
            }
            Job::Logout { itt } => {
                let mut p = Pdu::new(op::LOGOUT_RESP);
                p.set_flags(0x80);
                p.set_itt(itt);
                let _ = conn.send(p, true, Some(24));
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Data-In PDUs (at most `mrdsl` bytes each) and the status, collapsed into the last
/// Data-In when the command succeeded without sense data.
fn send_response(conn: &Conn, t: &Task, r: Response, mrdsl: usize) -> io::Result<()> {
    let edtl = t.edtl as usize;
    let (send_len, over, under) = if t.read {
        let n = r.data_in.len();
        (n.min(edtl), n.saturating_sub(edtl), edtl.saturating_sub(n))
    } else if t.write {
        let x = r.data_out_expected;
        (0, x.saturating_sub(edtl), edtl.saturating_sub(x))
    } else {
        (0, r.data_in.len(), 0)
    };
    let res_flags = if over > 0 {
        0x04
    } else if under > 0 {
        0x02
    } else {
        0
    };
    let residual = over.max(under) as u32;
    let collapse = r.status == status::GOOD && r.sense.is_none() && send_len > 0;
    let mut data_sn = 0u32;
    let mut off = 0;
    let mrdsl = mrdsl.max(512);
    let mut data_in = r.data_in;
    data_in.truncate(send_len);
    while off < send_len {
        let n = (send_len - off).min(mrdsl);
        let last = off + n == send_len;
        let mut p = Pdu::new(op::DATA_IN);
        let mut flags = if last { 0x80 } else { 0 };
        if last && collapse {
            flags |= 0x01 | res_flags;
            p.bhs[3] = r.status;
            p.set_u32(44, residual);
        }
        p.set_flags(flags);
        p.set_lun(t.lun);
        p.set_itt(t.itt);
        p.set_u32(20, 0xffff_ffff);
        p.set_u32(36, data_sn);
        p.set_u32(40, off as u32);
        p.data = if off == 0 && last {
            // The common case, one PDU: hand over the buffer instead of copying it.
            std::mem::take(&mut data_in)
        } else {
            data_in[off..off + n].to_vec()
        };
        conn.send(p, last && collapse, Some(24))?;
        data_sn += 1;
        off += n;
    }
    if collapse {
        return Ok(());
    }
    let mut p = Pdu::new(op::SCSI_RESP);
    p.set_flags(0x80 | res_flags);
    p.bhs[2] = 0;
    p.bhs[3] = r.status;
    p.set_itt(t.itt);
    p.set_u32(36, data_sn);
    p.set_u32(44, residual);
    if let Some(s) = &r.sense {
        let b = s.to_bytes();
        let mut d = (b.len() as u16).to_be_bytes().to_vec();
        d.extend(b);
        p.data = d;
    }
    conn.send(p, true, Some(24))
}

/// The LUN field for a LUN number (for initiators and tests).
pub fn lun_field(lun: u64) -> u64 {
    encode_lun(lun)
}
