//! An SSC (sequential-access, tape) logical unit over one drive of a vtl-sim library.
//!
//! The cartridge stores variable-length blocks and filemarks; fixed-block mode (a block
//! length set with MODE SELECT) is layered on top here. Sense data follows SSC-4 and
//! the conventions the Linux st driver relies on (see the crate README).

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vtl_sim::{CartStatus, Drive, Library, Read, SpaceStop, VtlError, VtlResult, Written};

use crate::encryption::{self as enc, Opened};
use crate::scsi::{
    self, key, log_page, log_param, mode_data, parse_log_sense, parse_mode_select,
    parse_mode_sense, Identity, LogicalUnit, Nexus, NexusState, Response, Sense,
};

/// Largest block READ BLOCK LIMITS reports (the 24-bit field's maximum; the cartridge
/// itself takes up to 16 MiB).
pub const MAX_BLOCK_LEN: u32 = 0x00ff_ffff;
/// Largest transfer of one fixed-block READ(6)/WRITE(6) (count times block length):
/// the command's data is held in memory whole.
pub const MAX_FIXED_TRANSFER: u64 = 64 << 20;
/// Density code reported in the block descriptor (vendor-unique 0x00 would mean
/// "default"; we report one code and accept 0 or it in MODE SELECT).
pub const DENSITY_CODE: u8 = 0x00;
/// Longest USER MEDIUM TEXT LABEL attribute (SPC-4).
const MAM_LABEL_LEN: usize = 160;
/// Bytes in a "megabyte" of the volume statistics log page.
const MB: u64 = 1_000_000;

/// TapeAlert flags we raise (SSC-4 annex, flag numbers).
mod alert {
    pub const HARD_ERROR: u32 = 3;
    pub const MEDIA: u32 = 4;
    pub const READ_FAILURE: u32 = 5;
    pub const WRITE_FAILURE: u32 = 6;
    pub const WRITE_PROTECT: u32 = 9;
}

/// One object read from the tape.
enum One {
    /// True length of the block and its data (cut to what was asked for).
    Block(usize, Vec<u8>),
    Filemark,
    EndOfData,
    /// A block the drive cannot hand over under its encryption parameters (position
    /// past it): DATA PROTECT with this ASC 0x74 qualifier.
    Undecryptable(u8),
}

/// The commands this drive supports, for REPORT SUPPORTED OPERATION CODES.
const OPCODES: &[scsi::OpInfo] = &[
    op(0x00, None, &[0x00, 0, 0, 0, 0, 0]),
    op(0x01, None, &[0x01, 0x01, 0, 0, 0, 0]),
    op(0x03, None, &[0x03, 0x01, 0, 0, 0xff, 0]),
    op(0x05, None, &[0x05, 0x01, 0, 0, 0, 0]),
    op(0x08, None, &[0x08, 0x03, 0xff, 0xff, 0xff, 0]),
    op(0x0a, None, &[0x0a, 0x01, 0xff, 0xff, 0xff, 0]),
    op(0x10, None, &[0x10, 0x03, 0xff, 0xff, 0xff, 0]),
    op(0x11, None, &[0x11, 0x0f, 0xff, 0xff, 0xff, 0]),
    op(0x12, None, &[0x12, 0x01, 0xff, 0xff, 0xff, 0]),
    op(0x15, None, &[0x15, 0x11, 0, 0, 0xff, 0]),
    op(0x16, None, &[0x16, 0, 0, 0, 0, 0]),
    op(0x17, None, &[0x17, 0, 0, 0, 0, 0]),
    op(0x19, None, &[0x19, 0x03, 0, 0, 0, 0]),
    op(0x1a, None, &[0x1a, 0x08, 0xff, 0xff, 0xff, 0]),
    op(0x1b, None, &[0x1b, 0x01, 0, 0, 0x0f, 0]),
    op(0x1e, None, &[0x1e, 0, 0, 0, 0x03, 0]),
    op(
        0x2b,
        None,
        &[0x2b, 0x07, 0, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0],
    ),
    op(0x34, None, &[0x34, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op(0x4c, None, &[0x4c, 0x03, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op(
        0x4d,
        None,
        &[0x4d, 0x01, 0xff, 0xff, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    op(0x55, None, &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op(
        0x5a,
        None,
        &[0x5a, 0x08, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0],
    ),
    op(
        0x8c,
        None,
        &[
            0x8c, 0x1f, 0, 0, 0, 0xff, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(
        0x8d,
        None,
        &[
            0x8d, 0, 0, 0, 0, 0xff, 0, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(
        0x91,
        None,
        &[
            0x91, 0x0f, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(
        0x92,
        None,
        &[
            0x92, 0x3a, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ],
    ),
    op(
        0xa0,
        None,
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    op(
        0xa2,
        None,
        &[
            0xa2, 0xff, 0xff, 0xff, 0x80, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(
        0xa3,
        Some(0x0c),
        &[
            0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(
        0xab,
        Some(0x01),
        &[0xab, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    op(
        0xb5,
        None,
        &[
            0xb5, 0xff, 0xff, 0xff, 0x80, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
];

const fn op(op: u8, sa: Option<u16>, usage: &'static [u8]) -> scsi::OpInfo {
    scsi::OpInfo { op, sa, usage }
}

/// How long a drive nobody keeps (no PREVENT MEDIUM REMOVAL, no reservation) stays held
/// after its last command before the target lets other processes have it.
pub const IDLE_RELEASE: Duration = Duration::from_secs(2);

/// The drive as this process holds it: `None` while vtl-sim's drive lock is left to
/// other processes (tapevault jobs) between uses by initiators. Every operation on a
/// drive not held fails as if it were empty; [`TapeDrive`] takes the lock before any
/// command that needs it.
pub(crate) struct HeldDrive(Option<Drive>);

macro_rules! delegate {
    ($( fn $name:ident(&mut self $(, $a:ident: $t:ty)*) -> $r:ty; )*) => {
        impl HeldDrive {
            $(
                pub(crate) fn $name(&mut self $(, $a: $t)*) -> VtlResult<$r> {
                    match self.0.as_mut() {
                        Some(d) => d.$name($($a),*),
                        None => Err(VtlError::NoMedium { drive: String::new() }),
                    }
                }
            )*
        }
    };
}

delegate! {
    fn barcode(&mut self) -> Option<String>;
    fn status(&mut self) -> Option<CartStatus>;
    fn read_block_flagged(&mut self, buf: &mut [u8]) -> (Read, bool);
    fn peek(&mut self) -> (Read, bool);
    fn write_block_flagged(&mut self, data: &[u8], encrypted: bool) -> Written;
    fn write_filemarks(&mut self, n: u32, immediate: bool) -> ();
    fn flush(&mut self) -> ();
    fn rewind(&mut self) -> ();
    fn space_blocks(&mut self, n: i64) -> ();
    fn space_filemarks(&mut self, n: i64) -> ();
    fn space_to_eod(&mut self) -> ();
    fn locate(&mut self, block: u64) -> ();
    fn erase(&mut self) -> ();
    fn reload(&mut self) -> ();
    fn unload(&mut self) -> ();
}

/// The state of one drive behind its lock. The changer takes the same lock to move a
/// cartridge out of the drive.
pub struct DriveState {
    pub(crate) drive: HeldDrive,
    /// When the last command that needed the drive ran.
    last_use: Instant,
    /// Nexuses that used the drive and are still logged in.
    users: HashSet<Nexus>,
    /// 0: variable-block mode.
    block_size: u32,
    dce: bool,
    buffer_mode: u8,
    pub(crate) prevent: HashSet<Nexus>,
    last_barcode: Option<String>,
    /// Set by the changer when it loaded a cartridge into this drive.
    pub(crate) media_changed: bool,
    tapealert: u64,
    /// Data encryption parameters and key set with SECURITY PROTOCOL OUT (memory only).
    encryption: Option<enc::Params>,
}

impl DriveState {
    fn alert(&mut self, flag: u32) {
        self.tapealert |= 1u64 << (flag - 1);
    }

    /// Forget the data encryption key (reset, power loss).
    pub(crate) fn clear_key(&mut self) {
        self.encryption = None;
    }

    /// A cartridge left the drive: the key goes if the host asked for that (CKOD,
    /// clear key on demount); otherwise it stays for the next cartridge, as SSC-4 has
    /// it, so a host that set it once never writes the next cartridge in the clear.
    fn demounted(&mut self) {
        if self.encryption.as_ref().is_some_and(|p| p.ckod) {
            self.encryption = None;
        }
    }
}

/// An SSC tape drive logical unit.
pub struct TapeDrive {
    index: usize,
    id: Identity,
    lib: Library,
    nexus: NexusState,
    state: Mutex<DriveState>,
    log: Option<crate::target::LogFn>,
}

/// Map a simulator error to sense data. `writing` picks WRITE ERROR over
/// UNRECOVERED READ ERROR for media errors.
pub fn vtl_sense(e: &VtlError, writing: bool) -> Sense {
    match e {
        VtlError::NoMedium { .. } => Sense::no_medium(),
        VtlError::MediaError { .. } if writing => Sense::new(key::MEDIUM_ERROR, 0x0c, 0x00),
        VtlError::MediaError { .. } => Sense::new(key::MEDIUM_ERROR, 0x11, 0x00),
        VtlError::WriteProtected => Sense::new(key::DATA_PROTECT, 0x27, 0x00),
        VtlError::WormOverwrite { .. } => Sense::new(key::DATA_PROTECT, 0x30, 0x0c),
        VtlError::Timeout { .. } => Sense::new(key::HARDWARE_ERROR, 0x3e, 0x02),
        VtlError::Corrupt { .. } => Sense::new(key::MEDIUM_ERROR, 0x31, 0x00),
        VtlError::CleaningCartridge { .. } => Sense::new(key::NOT_READY, 0x30, 0x03),
        VtlError::BeyondEndOfData { .. } => Sense::new(key::BLANK_CHECK, 0x00, 0x05),
        VtlError::EndOfMedium => Sense::new(key::VOLUME_OVERFLOW, 0x00, 0x02).eom(),
        _ => Sense::internal_failure(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn be24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

fn signed24(b: &[u8]) -> i64 {
    (((b[0] as i32) << 24 | (b[1] as i32) << 16 | (b[2] as i32) << 8) >> 8) as i64
}

/// CDB length by group code.
fn cdb_len(op: u8) -> usize {
    match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 6,
    }
}

impl TapeDrive {
    /// Serve drive `index` of `lib`. The drive's lock (shared with every other user of
    /// the library) is taken while an initiator uses the drive: from the first command
    /// that needs it until no nexus prevents medium removal or holds a reservation and
    /// [`IDLE_RELEASE`] has passed, or every nexus that used it is gone, or the changer
    /// takes the cartridge out. `drive`, if given, is already held by this process.
    pub fn new(
        lib: Library,
        index: usize,
        drive: Option<Drive>,
        serial: String,
        naa_id: u64,
    ) -> TapeDrive {
        TapeDrive {
            index,
            id: Identity {
                vendor: "TAPEVALT".into(),
                product: "VIRTUAL TAPE".into(),
                revision: "0001".into(),
                serial,
                naa_id,
            },
            lib,
            nexus: NexusState::default(),
            state: Mutex::new(DriveState {
                drive: HeldDrive(drive),
                last_use: Instant::now(),
                users: HashSet::new(),
                block_size: 0,
                dce: false,
                buffer_mode: 1,
                prevent: HashSet::new(),
                last_barcode: None,
                media_changed: false,
                tapealert: 0,
                encryption: None,
            }),
            log: None,
        }
    }

    /// Report real failures (I/O errors of the backing files, corrupt cartridges,
    /// injected faults) with their cause to `log`: the initiator only sees sense data.
    pub fn with_log(mut self, log: Option<crate::target::LogFn>) -> TapeDrive {
        self.log = log;
        self
    }

    pub fn index(&self) -> usize {
        self.index
    }
    pub fn serial(&self) -> &str {
        &self.id.serial
    }
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// The drive's state, locked (the changer uses this around a move).
    pub(crate) fn lock_state(&self) -> MutexGuard<'_, DriveState> {
        lock(&self.state)
    }

    /// Whether this process holds the drive's lock now.
    pub fn held(&self) -> bool {
        lock(&self.state).drive.0.is_some()
    }

    /// Take the drive's lock for this process unless it is held already. Another process
    /// (a tapevault job) holding it gives RESERVATION CONFLICT, as another host's
    /// reservation does on a shared drive.
    fn acquire(&self, st: &mut DriveState) -> Result<(), Response> {
        if st.drive.0.is_none() {
            match self.lib.open_drive(self.index) {
                Ok(d) => st.drive.0 = Some(d),
                Err(VtlError::Busy { .. }) => {
                    return Err(Response {
                        status: scsi::status::RESERVATION_CONFLICT,
                        ..Default::default()
                    })
                }
                Err(e) => return Err(Response::check(self.fail(st, &e, false))),
            }
        }
        st.last_use = Instant::now();
        Ok(())
    }

    /// Flush and let go of the drive's lock (the position is kept for the next holder).
    pub(crate) fn release(&self, st: &mut DriveState) -> Result<(), String> {
        if let Some(mut d) = st.drive.0.take() {
            match d.flush() {
                Ok(()) | Err(VtlError::NoMedium { .. }) => {}
                Err(e) => {
                    st.drive.0 = Some(d);
                    return Err(format!("drive {}: {e}", self.index));
                }
            }
        }
        Ok(())
    }

    /// Whether some nexus keeps the drive: PREVENT MEDIUM REMOVAL (st sends it while
    /// the device is open) or a reservation.
    fn kept(&self, st: &DriveState) -> bool {
        !st.prevent.is_empty() || self.nexus.is_reserved()
    }

    /// Raise MEDIUM MAY HAVE CHANGED when another cartridge is in the drive than last
    /// time we looked, or the changer says it loaded one.
    fn check_media_change(&self, st: &mut DriveState) {
        if st.drive.0.is_none() {
            return;
        }
        let bc = st.drive.barcode().ok().flatten();
        let changed = bc != st.last_barcode || st.media_changed;
        if changed {
            st.media_changed = false;
            if st.last_barcode.is_some() {
                st.demounted();
            }
            st.last_barcode = bc.clone();
            st.block_size = 0;
            if bc.is_some() {
                self.nexus.raise(0x28, 0x00, None);
            }
        }
    }

    fn fail(&self, st: &mut DriveState, e: &VtlError, writing: bool) -> Sense {
        match e {
            VtlError::MediaError { .. } => {
                st.alert(alert::MEDIA);
                st.alert(if writing {
                    alert::WRITE_FAILURE
                } else {
                    alert::READ_FAILURE
                });
            }
            VtlError::WriteProtected | VtlError::WormOverwrite { .. } => {
                st.alert(alert::WRITE_PROTECT)
            }
            VtlError::PowerCut { .. } | VtlError::Timeout { .. } | VtlError::Io { .. } => {
                st.alert(alert::HARD_ERROR)
            }
            _ => {}
        }
        if let Some(log) = &self.log {
            if matches!(
                e,
                VtlError::Io { .. }
                    | VtlError::Corrupt { .. }
                    | VtlError::PowerCut { .. }
                    | VtlError::Timeout { .. }
                    | VtlError::MediaError { .. }
            ) {
                log(&format!("drive {}: {e}", self.index));
            }
        }
        if let VtlError::PowerCut { .. } = e {
            // The drive lost power (and its key): every nexus sees the power-on
            // condition next.
            st.clear_key();
            self.nexus.raise(0x29, 0x01, None);
        }
        vtl_sense(e, writing)
    }

    fn early_warning(st: &mut DriveState) -> bool {
        matches!(st.drive.status(), Ok(Some(s)) if s.early_warning)
    }

    fn read6(&self, st: &mut DriveState, cdb: &[u8]) -> Response {
        let fixed = cdb[1] & 0x01 != 0;
        let sili = cdb[1] & 0x02 != 0;
        if cdb[1] & 0xfc != 0 {
            return Response::check(Sense::invalid_cdb_field(1, None));
        }
        if fixed && sili {
            return Response::check(Sense::invalid_cdb_field(1, Some(1)));
        }
        let len = be24(&cdb[2..5]);
        if fixed && st.block_size == 0 {
            return Response::check(Sense::invalid_cdb_field(1, Some(0)));
        }
        if let Err(e) = st.drive.status().and_then(|s| {
            s.ok_or(VtlError::NoMedium {
                drive: String::new(),
            })
        }) {
            return Response::check(self.fail(st, &e, false));
        }
        if len == 0 {
            return Response::good();
        }
        if fixed {
            self.read_fixed(st, len, st.block_size)
        } else {
            self.read_variable(st, len, sili)
        }
    }

    /// Read one block of whatever length into a buffer of `want` bytes: returns the
    /// block's true length and the (possibly truncated) data.
    ///
    /// An encrypted block is read whole (its plaintext length is the block length the
    /// host sees) and opened under the drive's encryption parameters.
    fn read_one(st: &mut DriveState, want: usize) -> Result<One, VtlError> {
        // Room for an encrypted block of `want` plaintext bytes.
        let mut buf = vec![0u8; want.saturating_add(enc::OVERHEAD)];
        let (r, encrypted) = match st.drive.read_block_flagged(&mut buf) {
            Err(VtlError::BufferTooSmall { block_len, .. }) => {
                // The block is longer than asked for: read it whole (the position
                // did not move) and hand back its first `want` bytes.
                buf = vec![0u8; block_len];
                st.drive.read_block_flagged(&mut buf)?
            }
            r => r?,
        };
        match r {
            Read::Block(n) => {
                buf.truncate(n);
                match enc::open(st.encryption.as_ref(), buf, encrypted) {
                    Opened::Plain(mut data) => {
                        let n = data.len();
                        data.truncate(want);
                        Ok(One::Block(n, data))
                    }
                    Opened::UnableToDecrypt => Ok(One::Undecryptable(0x01)),
                    Opened::UnencryptedWhileDecrypting => Ok(One::Undecryptable(0x02)),
                }
            }
            Read::Filemark => Ok(One::Filemark),
            Read::EndOfData => Ok(One::EndOfData),
        }
    }

    fn eod_sense(st: &mut DriveState, info: i64) -> Sense {
        let mut s = Sense::new(key::BLANK_CHECK, 0x00, 0x05).info(info);
        s.eom = Self::early_warning(st);
        s
    }

    fn read_variable(&self, st: &mut DriveState, len: u32, sili: bool) -> Response {
        let want = len as usize;
        match Self::read_one(st, want) {
            Ok(One::Block(n, data)) => {
                if n == want || (n < want && sili) {
                    Response::good().with_data(data)
                } else {
                    let mut s = Sense::new(key::NO_SENSE, 0, 0).info(want as i64 - n as i64);
                    s.ili = true;
                    Response::check(s).with_data(data)
                }
            }
            Ok(One::EndOfData) => Response::check(Self::eod_sense(st, want as i64)),
            Ok(One::Undecryptable(q)) => {
                Response::check(Sense::new(key::DATA_PROTECT, 0x74, q).info(want as i64))
            }
            Ok(One::Filemark) => {
                let mut s = Sense::new(key::NO_SENSE, 0x00, 0x01).info(want as i64);
                s.filemark = true;
                Response::check(s)
            }
            Err(e) => Response::check(self.fail(st, &e, false).info(want as i64)),
        }
    }

    fn read_fixed(&self, st: &mut DriveState, count: u32, bs: u32) -> Response {
        let total = count as u64 * bs as u64;
        if total > MAX_FIXED_TRANSFER {
            return Response::check(Sense::invalid_cdb_field(2, None));
        }
        let mut out = Vec::with_capacity(total as usize);
        for i in 0..count {
            let left = (count - i) as i64;
            match Self::read_one(st, bs as usize) {
                Ok(One::Block(n, data)) if n == bs as usize => out.extend_from_slice(&data),
                Ok(One::Block(..)) => {
                    let mut s = Sense::new(key::NO_SENSE, 0, 0).info(left);
                    s.ili = true;
                    return Response::check(s).with_data(out);
                }
                Ok(One::EndOfData) => {
                    return Response::check(Self::eod_sense(st, left)).with_data(out)
                }
                Ok(One::Undecryptable(q)) => {
                    return Response::check(Sense::new(key::DATA_PROTECT, 0x74, q).info(left))
                        .with_data(out)
                }
                Ok(One::Filemark) => {
                    let mut s = Sense::new(key::NO_SENSE, 0x00, 0x01).info(left);
                    s.filemark = true;
                    return Response::check(s).with_data(out);
                }
                Err(e) => {
                    return Response::check(self.fail(st, &e, false).info(left)).with_data(out)
                }
            }
        }
        Response::good().with_data(out)
    }

    fn write6(&self, st: &mut DriveState, cdb: &[u8], data: &[u8]) -> Response {
        let fixed = cdb[1] & 0x01 != 0;
        if cdb[1] & 0xfe != 0 {
            return Response::check(Sense::invalid_cdb_field(1, None));
        }
        let len = be24(&cdb[2..5]);
        if fixed && st.block_size == 0 {
            return Response::check(Sense::invalid_cdb_field(1, Some(0)));
        }
        let (count, bs) = if fixed {
            (len as u64, st.block_size as u64)
        } else {
            (if len == 0 { 0 } else { 1 }, len as u64)
        };
        let expected = count * bs;
        if expected > MAX_FIXED_TRANSFER.max(MAX_BLOCK_LEN as u64) {
            return Response::check(Sense::invalid_cdb_field(2, None));
        }
        let expected = expected as usize;
        let r = self.write_blocks(st, fixed, count, bs as usize, expected, data);
        r.expecting(expected)
    }

    fn write_blocks(
        &self,
        st: &mut DriveState,
        fixed: bool,
        count: u64,
        bs: usize,
        expected: usize,
        data: &[u8],
    ) -> Response {
        if let Err(e) = st.drive.status().and_then(|s| {
            s.ok_or(VtlError::NoMedium {
                drive: String::new(),
            })
        }) {
            return Response::check(self.fail(st, &e, true));
        }
        if count == 0 {
            return Response::good();
        }
        if data.len() < expected {
            // The initiator sent less than the CDB asks for: nothing is written.
            return Response::check(Sense::invalid_cdb_field(2, None));
        }
        let encrypting = st.encryption.as_ref().is_some_and(|p| p.encrypting());
        if encrypting && bs + enc::OVERHEAD > vtl_sim::MAX_BLOCK_SIZE {
            // No room for the nonce and tag beside the block.
            return Response::check(Sense::invalid_cdb_field(2, None));
        }
        let mut ew = false;
        for i in 0..count {
            let plain = &data[i as usize * bs..(i as usize + 1) * bs];
            let left = if fixed { (count - i) as i64 } else { bs as i64 };
            // With encryption on, only the sealed block reaches the cartridge.
            let sealed = match st.encryption.as_ref().filter(|p| p.encrypting()) {
                Some(p) => match p.seal(plain) {
                    Some(c) => Some(c),
                    None => return Response::check(Sense::internal_failure().info(left)),
                },
                None => None,
            };
            let block = sealed.as_deref().unwrap_or(plain);
            let res = match st.drive.write_block_flagged(block, encrypting) {
                // vtl-sim models st's "fail the next write once" itself; a SCSI drive
                // keeps writing and reports EOM each time, so write again.
                Err(VtlError::EarlyWarning) => st
                    .drive
                    .write_block_flagged(block, encrypting)
                    .map(|_| Written::EarlyWarning),
                r => r,
            };
            match res {
                Ok(Written::EarlyWarning) => ew = true,
                Ok(Written::Written) => {}
                Err(VtlError::EndOfMedium) => {
                    return Response::check(
                        Sense::new(key::VOLUME_OVERFLOW, 0x00, 0x02)
                            .eom()
                            .info(left),
                    )
                }
                Err(e) => return Response::check(self.fail(st, &e, true).info(left)),
            }
        }
        if ew || Self::early_warning(st) {
            return Response::check(Sense::new(key::NO_SENSE, 0x00, 0x02).eom().info(0));
        }
        Response::good()
    }

    fn write_filemarks(&self, st: &mut DriveState, cdb: &[u8]) -> Response {
        let immed = cdb[1] & 0x01 != 0;
        if cdb[1] & 0x02 != 0 {
            // WSMK: setmarks are not supported.
            return Response::check(Sense::invalid_cdb_field(1, Some(1)));
        }
        let n = be24(&cdb[2..5]);
        match st.drive.write_filemarks(n, immed) {
            Ok(()) => {
                if n > 0 && Self::early_warning(st) {
                    Response::check(Sense::new(key::NO_SENSE, 0x00, 0x02).eom().info(0))
                } else {
                    Response::good()
                }
            }
            Err(e) => Response::check(self.fail(st, &e, true).info(n as i64)),
        }
    }

    fn space(&self, st: &mut DriveState, code: u8, count: i64) -> Response {
        let r = match code {
            0 => {
                if count == 0 {
                    return self.ready(st);
                }
                st.drive.space_blocks(count)
            }
            1 => {
                if count == 0 {
                    return self.ready(st);
                }
                st.drive.space_filemarks(count)
            }
            3 => st.drive.space_to_eod(),
            _ => return Response::check(Sense::invalid_cdb_field(1, None)),
        };
        match r {
            Ok(()) => Response::good(),
            Err(VtlError::SpaceStopped { stop, residual, .. }) => {
                let info = if count < 0 {
                    -(residual as i64)
                } else {
                    residual as i64
                };
                match stop {
                    SpaceStop::Filemark => {
                        let mut s = Sense::new(key::NO_SENSE, 0x00, 0x01).info(info);
                        s.filemark = true;
                        Response::check(s)
                    }
                    SpaceStop::EndOfData => Response::check(Self::eod_sense(st, info)),
                    SpaceStop::BeginningOfTape => {
                        Response::check(Sense::new(key::NO_SENSE, 0x00, 0x04).eom().info(info))
                    }
                }
            }
            Err(e) => Response::check(self.fail(st, &e, false)),
        }
    }

    fn ready(&self, st: &mut DriveState) -> Response {
        match st.drive.status() {
            Ok(Some(_)) => Response::good(),
            Ok(None) => Response::check(Sense::no_medium()),
            Err(e) => Response::check(self.fail(st, &e, false)),
        }
    }

    fn read_position(&self, st: &mut DriveState, cdb: &[u8]) -> Response {
        let sa = cdb[1] & 0x1f;
        let s = match st.drive.status() {
            Ok(Some(s)) => s,
            Ok(None) => return Response::check(Sense::no_medium()),
            Err(e) => return Response::check(self.fail(st, &e, false)),
        };
        let flags = if s.bot { 0x80 } else { 0 } | if s.early_warning { 0x01 } else { 0 };
        let p = s.position;
        match sa {
            0 | 1 => {
                if cdb[7] != 0 || cdb[8] != 0 {
                    return Response::check(Sense::invalid_cdb_field(7, None));
                }
                if p.block > u32::MAX as u64 {
                    // Short form cannot express it: block position unknown.
                    let mut d = vec![0u8; 20];
                    d[0] = flags | 0x04;
                    return Response::data(d, 20);
                }
                let mut d = vec![0u8; 20];
                d[0] = flags;
                d[4..8].copy_from_slice(&(p.block as u32).to_be_bytes());
                d[8..12].copy_from_slice(&(p.block as u32).to_be_bytes());
                Response::data(d, 20)
            }
            6 => {
                if cdb[7] != 0 || cdb[8] != 0 {
                    return Response::check(Sense::invalid_cdb_field(7, None));
                }
                let mut d = vec![0u8; 32];
                d[0] = flags;
                d[8..16].copy_from_slice(&p.block.to_be_bytes());
                d[16..24].copy_from_slice(&p.file.to_be_bytes());
                Response::data(d, 32)
            }
            8 => {
                let alloc = u16::from_be_bytes([cdb[7], cdb[8]]) as usize;
                let mut d = vec![0u8; 32];
                d[0] = flags;
                d[2..4].copy_from_slice(&0x1cu16.to_be_bytes());
                d[8..16].copy_from_slice(&p.block.to_be_bytes());
                d[16..24].copy_from_slice(&p.block.to_be_bytes());
                Response::data(d, alloc)
            }
            _ => Response::check(Sense::invalid_cdb_field(1, Some(4))),
        }
    }

    fn locate(&self, st: &mut DriveState, block: u64) -> Response {
        match st.drive.locate(block) {
            Ok(()) => Response::good(),
            Err(VtlError::BeyondEndOfData { .. }) => {
                Response::check(Self::eod_sense(st, 0).info(0))
            }
            Err(e) => Response::check(self.fail(st, &e, false)),
        }
    }

    fn locate_file(&self, st: &mut DriveState, file: u64) -> Response {
        if let Err(e) = st.drive.rewind() {
            return Response::check(self.fail(st, &e, false));
        }
        if file == 0 {
            return Response::good();
        }
        match st.drive.space_filemarks(file.min(i64::MAX as u64) as i64) {
            Ok(()) => Response::good(),
            Err(VtlError::SpaceStopped { .. }) => Response::check(Self::eod_sense(st, 0)),
            Err(e) => Response::check(self.fail(st, &e, false)),
        }
    }

    fn load_unload(&self, st: &mut DriveState, cdb: &[u8]) -> Response {
        let load = cdb[4] & 0x01 != 0;
        if cdb[4] & 0x04 != 0 && load {
            // EOT together with LOAD is invalid.
            return Response::check(Sense::invalid_cdb_field(4, Some(2)));
        }
        if load {
            match st.drive.reload().and_then(|_| st.drive.rewind()) {
                Ok(()) => Response::good(),
                Err(e) => Response::check(self.fail(st, &e, false)),
            }
        } else {
            if !st.prevent.is_empty() {
                return Response::check(Sense::new(key::ILLEGAL_REQUEST, 0x53, 0x02));
            }
            match st.drive.rewind().and_then(|_| st.drive.unload()) {
                Ok(()) => {
                    st.demounted();
                    Response::good()
                }
                Err(e) => Response::check(self.fail(st, &e, false)),
            }
        }
    }

    fn block_descriptor(&self, st: &DriveState, changeable: bool) -> [u8; 8] {
        let mut bd = [0u8; 8];
        if changeable {
            bd[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        } else {
            bd[0] = DENSITY_CODE;
            bd[5..8].copy_from_slice(&st.block_size.to_be_bytes()[1..4]);
        }
        bd
    }

    fn mode_page(&self, st: &DriveState, page: u8, pc: u8) -> Option<Vec<u8>> {
        let changeable = pc == 1;
        let default = pc == 2;
        Some(match page {
            0x01 => {
                let mut p = vec![0u8; 12];
                p[0] = 0x01;
                p[1] = 10;
                p
            }
            0x0a => {
                let mut p = vec![0u8; 12];
                p[0] = 0x0a;
                p[1] = 10;
                p
            }
            0x0f => {
                let mut p = vec![0u8; 16];
                p[0] = 0x0f;
                p[1] = 14;
                if changeable {
                    p[2] = 0x80;
                } else {
                    let dce = st.dce && !default;
                    p[2] = if dce { 0x80 } else { 0 } | 0x40; // DCE, DCC
                    p[3] = 0x80; // DDE
                    p[4..8].copy_from_slice(&1u32.to_be_bytes());
                    p[8..12].copy_from_slice(&1u32.to_be_bytes());
                }
                p
            }
            0x10 => {
                let mut p = vec![0u8; 16];
                p[0] = 0x10;
                p[1] = 14;
                if !changeable {
                    p[8] = 0x40; // BIS: block identifiers supported
                    p[10] = 0x18; // EEG, SEW
                    p[14] = if st.dce && !default { 1 } else { 0 };
                }
                p
            }
            _ => return None,
        })
    }

    fn mode_sense(&self, st: &mut DriveState, cdb: &[u8]) -> Response {
        let m = match parse_mode_sense(cdb) {
            Ok(m) => m,
            Err(s) => return Response::check(s),
        };
        let mut pages = Vec::new();
        match m.page {
            0x00 => {}
            0x3f => {
                for p in [0x01, 0x0a, 0x0f, 0x10] {
                    pages.extend(self.mode_page(st, p, m.pc).expect("known page"));
                }
            }
            p => match self.mode_page(st, p, m.pc) {
                Some(b) => pages = b,
                None => return Response::check(Sense::invalid_cdb_field(2, Some(5))),
            },
        }
        let wp = matches!(st.drive.status(), Ok(Some(s)) if s.write_protected);
        let dev = if wp { 0x80 } else { 0 } | (st.buffer_mode & 7) << 4;
        let bd = self.block_descriptor(st, m.pc == 1);
        mode_data(&m, dev, Some(bd), &pages)
    }

    fn mode_select(&self, st: &mut DriveState, cdb: &[u8], data: &[u8]) -> Response {
        let (ms, len) = match parse_mode_select(cdb, data) {
            Ok(v) => v,
            Err(s) => return Response::check(s),
        };
        let hdr = if cdb[0] == 0x55 { 8 } else { 4 };
        let mut new_bs = st.block_size;
        if let Some(bd) = ms.block_desc {
            if bd[0] != 0 && bd[0] != DENSITY_CODE {
                return Response::check(Sense::invalid_param_field(hdr as u16)).expecting(len);
            }
            let bs = be24(&bd[5..8]);
            if bs > MAX_BLOCK_LEN {
                return Response::check(Sense::invalid_param_field(hdr as u16 + 5)).expecting(len);
            }
            new_bs = bs;
        }
        let mut new_dce = st.dce;
        for (code, p) in &ms.pages {
            match code {
                0x0f => {
                    if p.len() < 16 {
                        return Response::check(Sense::param_list_length()).expecting(len);
                    }
                    new_dce = p[2] & 0x80 != 0;
                }
                0x10 if p.len() >= 16 => {
                    if p[14] != 0 {
                        new_dce = true;
                    }
                }
                0x01 | 0x0a | 0x10 => {}
                _ => return Response::check(Sense::invalid_param_field(hdr as u16)).expecting(len),
            }
        }
        st.block_size = new_bs;
        st.dce = new_dce;
        st.buffer_mode = (ms.device_specific >> 4) & 7;
        Response::good().expecting(len)
    }

    fn log_sense(&self, st: &mut DriveState, cdb: &[u8]) -> Response {
        let l = match parse_log_sense(cdb) {
            Ok(l) => l,
            Err(s) => return Response::check(s),
        };
        if l.subpage != 0 {
            return Response::check(Sense::invalid_cdb_field(3, None));
        }
        match l.page {
            0x00 => log_page(0x00, &[0x00, 0x17, 0x2e], l.alloc),
            0x2e => {
                let mut p = Vec::new();
                for flag in 1..=64u16 {
                    if flag < l.pointer {
                        continue;
                    }
                    let on = st.tapealert >> (flag - 1) & 1;
                    log_param(&mut p, flag, 0x03, &[on as u8]);
                }
                // Reading the page clears the flags (SSC-4 TapeAlert).
                st.tapealert = 0;
                log_page(0x2e, &p, l.alloc)
            }
            0x17 => self.volume_statistics(st, l.pointer, l.alloc),
            _ => Response::check(Sense::invalid_cdb_field(2, Some(5))),
        }
    }

    fn volume_statistics(&self, st: &mut DriveState, pointer: u16, alloc: usize) -> Response {
        let rec = match self.record(st) {
            Ok(r) => r,
            Err(s) => return Response::check(s),
        };
        let m = &rec.meta;
        let mut p = Vec::new();
        let mut add = |code: u16, control: u8, v: &[u8]| {
            if code >= pointer {
                log_param(&mut p, code, control, v);
            }
        };
        add(0x0000, 0x03, &[1]);
        add(0x0001, 0x03, &(m.load_count as u32).to_be_bytes());
        add(0x0010, 0x03, &((m.bytes_written / MB) as u32).to_be_bytes());
        add(0x0011, 0x03, &((m.bytes_read / MB) as u32).to_be_bytes());
        add(0x0016, 0x03, &((m.capacity / MB) as u32).to_be_bytes());
        add(0x0017, 0x03, &((rec.bytes_used / MB) as u32).to_be_bytes());
        let mut tag = m.barcode.as_bytes().to_vec();
        tag.resize(tag.len().div_ceil(4) * 4, b' ');
        add(0x0042, 0x01, &tag);
        add(0x0080, 0x03, &[m.write_protected as u8]);
        add(0x0081, 0x03, &[m.worm as u8]);
        log_page(0x17, &p, alloc)
    }

    /// The cartridge in the drive as the library records it (statistics flushed).
    fn record(&self, st: &mut DriveState) -> Result<vtl_sim::CartridgeRecord, Sense> {
        let bc = match st.drive.barcode() {
            Ok(Some(b)) => b,
            Ok(None) => return Err(Sense::no_medium()),
            Err(e) => return Err(self.fail(st, &e, false)),
        };
        if let Err(e) = st.drive.flush() {
            return Err(self.fail(st, &e, false));
        }
        match self.lib.cartridges() {
            Ok(all) => all
                .into_iter()
                .find(|r| r.meta.barcode == bc)
                .ok_or_else(Sense::internal_failure),
            Err(e) => Err(self.fail(st, &e, false)),
        }
    }

    /// Medium auxiliary memory attributes of the loaded cartridge (SPC-4 7.4):
    /// (identifier, read only, format, value). Format 0 binary, 1 ASCII, 2 text.
    fn attributes(rec: &vtl_sim::CartridgeRecord) -> Vec<(u16, bool, u8, Vec<u8>)> {
        let m = &rec.meta;
        let mib = |b: u64| (b >> 20).to_be_bytes().to_vec();
        let ascii = |s: &str, n: usize| {
            let mut v: Vec<u8> = s.bytes().take(n).collect();
            v.resize(n, b' ');
            v
        };
        let medium_type = if m.cleaning {
            0x01
        } else if m.worm {
            0x80
        } else {
            0x00
        };
        let mut label: Vec<u8> = m.application_label.clone().unwrap_or_default().into_bytes();
        label.truncate(MAM_LABEL_LEN);
        vec![
            (
                0x0000,
                true,
                0,
                mib(m.capacity.saturating_sub(rec.bytes_used)),
            ),
            (0x0001, true, 0, mib(m.capacity)),
            (0x0003, true, 0, m.load_count.to_be_bytes().to_vec()),
            (
                0x0220,
                true,
                0,
                (m.bytes_written >> 20).to_be_bytes().to_vec(),
            ),
            (0x0221, true, 0, (m.bytes_read >> 20).to_be_bytes().to_vec()),
            (0x0400, true, 1, ascii("TAPEVALT", 8)),
            (0x0401, true, 1, ascii(&m.barcode, 32)),
            (0x0408, true, 0, vec![medium_type]),
            (0x0803, false, 2, label),
            (0x0806, true, 1, ascii(&m.barcode, 32)),
        ]
    }

    fn read_attribute(&self, st: &mut DriveState, cdb: &[u8]) -> Response {
        let sa = cdb[1] & 0x1f;
        if cdb[5] != 0 {
            return Response::check(Sense::invalid_cdb_field(5, None));
        }
        if cdb[7] != 0 {
            return Response::check(Sense::invalid_cdb_field(7, None));
        }
        let first = u16::from_be_bytes([cdb[8], cdb[9]]);
        let alloc = u32::from_be_bytes(cdb[10..14].try_into().expect("4 bytes")) as usize;
        let rec = match self.record(st) {
            Ok(r) => r,
            Err(s) => return Response::check(s),
        };
        let attrs = Self::attributes(&rec);
        let body: Vec<u8> = match sa {
            0x00 => {
                let mut b = Vec::new();
                for (id, ro, fmt, v) in attrs.iter().filter(|a| a.0 >= first) {
                    b.extend_from_slice(&id.to_be_bytes());
                    b.push(if *ro { 0x80 } else { 0 } | fmt);
                    b.extend_from_slice(&(v.len() as u16).to_be_bytes());
                    b.extend_from_slice(v);
                }
                b
            }
            0x01 | 0x05 => attrs
                .iter()
                .filter(|a| a.0 >= first)
                .flat_map(|a| a.0.to_be_bytes())
                .collect(),
            // One logical volume, one partition.
            0x02 | 0x03 => {
                return Response::data(vec![0, 2, 0, 1], alloc);
            }
            _ => return Response::check(Sense::invalid_cdb_field(1, Some(4))),
        };
        let mut d = (body.len() as u32).to_be_bytes().to_vec();
        d.extend(body);
        Response::data(d, alloc)
    }

    fn write_attribute(&self, st: &mut DriveState, cdb: &[u8], data: &[u8]) -> Response {
        let len = u32::from_be_bytes(cdb[10..14].try_into().expect("4 bytes")) as usize;
        if cdb[5] != 0 || cdb[7] != 0 {
            return Response::check(Sense::invalid_cdb_field(
                if cdb[5] != 0 { 5 } else { 7 },
                None,
            ))
            .expecting(len);
        }
        if data.len() < len || (len > 0 && len < 4) {
            return Response::check(Sense::param_list_length()).expecting(len);
        }
        let bc = match st.drive.barcode() {
            Ok(Some(b)) => b,
            Ok(None) => return Response::check(Sense::no_medium()).expecting(len),
            Err(e) => return Response::check(self.fail(st, &e, true)).expecting(len),
        };
        if len == 0 {
            return Response::good();
        }
        let p = &data[..len];
        let avail = u32::from_be_bytes(p[0..4].try_into().expect("4 bytes")) as usize;
        if avail + 4 > len {
            return Response::check(Sense::param_list_length()).expecting(len);
        }
        // Check every attribute before changing anything.
        let mut off = 4;
        let mut label = None;
        while off < 4 + avail {
            if off + 5 > 4 + avail {
                return Response::check(Sense::param_list_length()).expecting(len);
            }
            let id = u16::from_be_bytes([p[off], p[off + 1]]);
            let n = u16::from_be_bytes([p[off + 3], p[off + 4]]) as usize;
            if off + 5 + n > 4 + avail {
                return Response::check(Sense::param_list_length()).expecting(len);
            }
            if id != 0x0803 || n > MAM_LABEL_LEN {
                // Only the user medium text label is kept (in the cartridge's metadata).
                return Response::check(Sense::invalid_param_field(off as u16)).expecting(len);
            }
            let v = &p[off + 5..off + 5 + n];
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            label = Some(String::from_utf8_lossy(&v[..end]).trim_end().to_string());
            off += 5 + n;
        }
        if let Some(l) = label {
            if let Err(e) = self.lib.set_application_label(&bc, &l) {
                return Response::check(self.fail(st, &e, true)).expecting(len);
            }
        }
        Response::good().expecting(len)
    }

    fn request_sense(&self, st: &mut DriveState, nexus: &Nexus, cdb: &[u8]) -> Response {
        if cdb[1] & 0x01 != 0 {
            return Response::check(Sense::invalid_cdb_field(1, Some(0)));
        }
        let alloc = cdb[4] as usize;
        let s = if let Some(ua) = self.nexus.take_ua(nexus) {
            ua
        } else {
            match st.drive.status() {
                Ok(Some(s)) => {
                    let mut sense = Sense::new(key::NO_SENSE, 0, 0);
                    sense.eom = s.early_warning;
                    sense
                }
                Ok(None) => Sense::no_medium(),
                Err(e) => self.fail(st, &e, false),
            }
        };
        Response::data(s.to_bytes(), alloc)
    }

    /// SECURITY PROTOCOL IN: protocol 0 (supported protocols) and the tape data
    /// encryption pages of protocol 0x20 (0x0000, 0x0001, 0x0010, 0x0020, and 0x0021: the
    /// next block encryption status, which stenc shows as the volume's encryption).
    fn security_in(&self, st: &mut DriveState, cdb: &[u8]) -> Response {
        if cdb[4] & 0x80 != 0 {
            // INC_512: allocation length in 512-byte units is not offered.
            return Response::check(Sense::invalid_cdb_field(4, Some(7)));
        }
        let page = u16::from_be_bytes([cdb[2], cdb[3]]);
        let alloc = u32::from_be_bytes(cdb[6..10].try_into().expect("4 bytes")) as usize;
        let d = match (cdb[1], page) {
            (enc::PROTOCOL_INFO, 0x0000) => enc::supported_protocols(),
            (enc::PROTOCOL_TAPE, 0x0000) => enc::supported_in_pages(),
            (enc::PROTOCOL_TAPE, 0x0001) => enc::supported_out_pages(),
            (enc::PROTOCOL_TAPE, 0x0010) => {
                enc::capabilities(matches!(st.drive.barcode(), Ok(Some(_))))
            }
            (enc::PROTOCOL_TAPE, 0x0020) => enc::status(st.encryption.as_ref()),
            (enc::PROTOCOL_TAPE, 0x0021) => {
                let pos = match st.drive.status() {
                    Ok(Some(s)) => s.position.block,
                    Ok(None) => return Response::check(Sense::no_medium()),
                    Err(e) => return Response::check(self.fail(st, &e, false)),
                };
                let next = match st.drive.peek() {
                    Ok((vtl_sim::Read::Block(_), encrypted)) => {
                        enc::NextObject::Block { encrypted }
                    }
                    Ok((vtl_sim::Read::Filemark, _)) => enc::NextObject::Filemark,
                    Ok((vtl_sim::Read::EndOfData, _)) => enc::NextObject::EndOfData,
                    Err(e) => return Response::check(self.fail(st, &e, false)),
                };
                enc::next_block_status(st.encryption.as_ref(), pos, next)
            }
            (enc::PROTOCOL_INFO | enc::PROTOCOL_TAPE, _) => {
                return Response::check(Sense::invalid_cdb_field(2, None))
            }
            _ => return Response::check(Sense::invalid_cdb_field(1, None)),
        };
        Response::data(d, alloc)
    }

    /// SECURITY PROTOCOL OUT, protocol 0x20 page 0x0010 (set data encryption).
    fn security_out(&self, st: &mut DriveState, cdb: &[u8], data: &[u8]) -> Response {
        let len = u32::from_be_bytes(cdb[6..10].try_into().expect("4 bytes")) as usize;
        if cdb[1] != enc::PROTOCOL_TAPE {
            return Response::check(Sense::invalid_cdb_field(1, None)).expecting(len);
        }
        if cdb[4] & 0x80 != 0 {
            return Response::check(Sense::invalid_cdb_field(4, Some(7))).expecting(len);
        }
        if data.len() < len {
            return Response::check(Sense::param_list_length()).expecting(len);
        }
        match enc::parse_set(&data[..len]) {
            Ok(p) => {
                st.encryption = Some(p);
                Response::good().expecting(len)
            }
            // The field pointer names the byte; the key itself is never echoed.
            Err(at) => Response::check(Sense::invalid_param_field(at)).expecting(len),
        }
    }

    fn dispatch(&self, st: &mut DriveState, nexus: &Nexus, cdb: &[u8], data: &[u8]) -> Response {
        match cdb[0] {
            0x00 => self.ready(st),
            0x01 => match st.drive.rewind() {
                Ok(()) => Response::good(),
                Err(e) => Response::check(self.fail(st, &e, false)),
            },
            0x03 => self.request_sense(st, nexus, cdb),
            0x05 => {
                if cdb[1] & 0x01 != 0 {
                    return Response::check(Sense::invalid_cdb_field(1, Some(0)));
                }
                let mut d = vec![0u8; 6];
                d[1..4].copy_from_slice(&MAX_BLOCK_LEN.to_be_bytes()[1..4]);
                d[4..6].copy_from_slice(&1u16.to_be_bytes());
                Response::data(d, 6)
            }
            0x08 => self.read6(st, cdb),
            0x0a => self.write6(st, cdb, data),
            0x10 => self.write_filemarks(st, cdb),
            0x11 => {
                let code = cdb[1] & 0x0f;
                self.space(st, code, signed24(&cdb[2..5]))
            }
            0x91 => {
                let code = cdb[1] & 0x0f;
                if cdb[12] != 0 || cdb[13] != 0 {
                    return Response::check(Sense::invalid_cdb_field(12, None));
                }
                let count = i64::from_be_bytes(cdb[4..12].try_into().expect("8 bytes"));
                self.space(st, code, count)
            }
            0x12 => scsi::inquiry(cdb, 0x01, true, &self.id),
            0x15 | 0x55 => self.mode_select(st, cdb, data),
            0x1a | 0x5a => self.mode_sense(st, cdb),
            0x16 => self.nexus.reserve(nexus),
            0x17 => self.nexus.release(nexus),
            0x19 => match st.drive.erase() {
                Ok(()) => Response::good(),
                Err(e) => Response::check(self.fail(st, &e, true)),
            },
            0x1b => self.load_unload(st, cdb),
            0x1e => match cdb[4] & 0x03 {
                0 => {
                    st.prevent.remove(nexus);
                    Response::good()
                }
                1 => {
                    st.prevent.insert(nexus.clone());
                    Response::good()
                }
                _ => Response::check(Sense::invalid_cdb_field(4, Some(1))),
            },
            0x2b => {
                if cdb[1] & 0x02 != 0 && cdb[8] != 0 {
                    return Response::check(Sense::invalid_cdb_field(8, None));
                }
                let block = u32::from_be_bytes(cdb[3..7].try_into().expect("4 bytes"));
                self.locate(st, block as u64)
            }
            0x92 => {
                if cdb[1] & 0x02 != 0 && cdb[3] != 0 {
                    return Response::check(Sense::invalid_cdb_field(3, None));
                }
                let id = u64::from_be_bytes(cdb[4..12].try_into().expect("8 bytes"));
                match (cdb[1] >> 3) & 0x07 {
                    0 => self.locate(st, id),
                    1 => self.locate_file(st, id),
                    3 => match st.drive.space_to_eod() {
                        Ok(()) => Response::good(),
                        Err(e) => Response::check(self.fail(st, &e, false)),
                    },
                    _ => Response::check(Sense::invalid_cdb_field(1, Some(5))),
                }
            }
            0x34 => self.read_position(st, cdb),
            0x4c => {
                // LOG SELECT: only PCR (reset all parameters) with no parameter list.
                let len = u16::from_be_bytes([cdb[7], cdb[8]]);
                if len != 0 || cdb[1] & 0x02 == 0 {
                    return Response::check(Sense::invalid_cdb_field(1, Some(1)));
                }
                st.tapealert = 0;
                Response::good()
            }
            0x4d => self.log_sense(st, cdb),
            0x8c => self.read_attribute(st, cdb),
            0xa3 if cdb[1] & 0x1f == 0x0c => scsi::report_opcodes(cdb, OPCODES),
            0xa3 => Response::check(Sense::invalid_cdb_field(1, Some(4))),
            // READ MEDIA SERIAL NUMBER: the cartridge's barcode.
            0xab if cdb[1] & 0x1f == 0x01 => {
                let alloc = u32::from_be_bytes(cdb[6..10].try_into().expect("4 bytes")) as usize;
                match st.drive.barcode() {
                    Ok(Some(bc)) => {
                        let mut sn = bc.into_bytes();
                        sn.resize(sn.len().div_ceil(4) * 4, b' ');
                        let mut d = (sn.len() as u32).to_be_bytes().to_vec();
                        d.extend(sn);
                        Response::data(d, alloc)
                    }
                    Ok(None) => Response::check(Sense::no_medium()),
                    Err(e) => Response::check(self.fail(st, &e, false)),
                }
            }
            0xab => Response::check(Sense::invalid_cdb_field(1, Some(4))),
            0x8d => self.write_attribute(st, cdb, data),
            0xa2 => self.security_in(st, cdb),
            0xb5 => self.security_out(st, cdb, data),
            _ => Response::check(Sense::invalid_opcode()),
        }
    }
}

impl LogicalUnit for TapeDrive {
    fn device_type(&self) -> u8 {
        0x01
    }

    fn execute(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Response {
        if cdb.is_empty() {
            return Response::check(Sense::invalid_opcode());
        }
        if cdb.len() < cdb_len(cdb[0]) {
            return Response::check(Sense::invalid_cdb_field(0, None));
        }
        let mut st = lock(&self.state);
        // Identification needs no drive; everything else takes its lock.
        if !matches!(cdb[0], 0x12 | 0xa0 | 0xa3 | 0x05) {
            if let Err(r) = self.acquire(&mut st) {
                return r;
            }
            st.users.insert(nexus.clone());
        }
        self.check_media_change(&mut st);
        if let Some(r) = self.nexus.gate(nexus, cdb) {
            return r;
        }
        let r = self.dispatch(&mut st, nexus, cdb, data_out);
        st.last_use = Instant::now();
        r
    }

    fn nexus_lost(&self, nexus: &Nexus) {
        self.nexus.lost(nexus);
        let mut st = lock(&self.state);
        st.prevent.remove(nexus);
        st.users.remove(nexus);
        if st.users.is_empty() && !self.kept(&st) {
            if let Err(e) = self.release(&mut st) {
                if let Some(log) = &self.log {
                    log(&e);
                }
            }
        }
    }

    fn reset(&self, nexus: &Nexus) {
        self.nexus.reset(nexus);
        let mut st = lock(&self.state);
        st.prevent.clear();
        st.clear_key();
    }

    fn idle(&self) {
        // Never wait for a running command: it is using the drive.
        let Ok(mut st) = self.state.try_lock() else {
            return;
        };
        if st.drive.0.is_some() && !self.kept(&st) && st.last_use.elapsed() >= IDLE_RELEASE {
            if let Err(e) = self.release(&mut st) {
                if let Some(log) = &self.log {
                    log(&e);
                }
            }
        }
    }

    fn flush(&self) -> Result<(), String> {
        let mut st = lock(&self.state);
        self.release(&mut st)
    }
}
