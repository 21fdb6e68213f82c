//! The virtual library (SMC changer) and its drives.
//!
//! Directory layout:
//! * `library.json`  the element state, replaced atomically (write, fsync, rename)
//! * `library.gen`   8-byte generation counter, bumped in place after every state change
//!   so open drives notice a load/unload with one pread instead of re-parsing the state
//! * `library.lock`  flock serializing state changes across processes
//! * `drives/N.lock` flock held by the process that has drive N open
//! * `cartridges/BARCODE/` cartridges in the library; `outside/BARCODE/` those taken out

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::fcntl::Flock;

use crate::cartridge::{CartStatus, Cartridge, Pos, Read, Written, DEFAULT_OPERATION_TIMEOUT};
use crate::drive_model::{Clock, DriveModel, DriveSim, DriveStats, SystemClock};
use crate::error::{io_err, Element, ElementKind, VtlError, VtlResult};
use crate::meta::{self, CartridgeMeta, Faults};

const STATE_FILE: &str = "library.json";
const GEN_FILE: &str = "library.gen";
const LOCK_FILE: &str = "library.lock";
const DRIVES_DIR: &str = "drives";
const CARTRIDGES_DIR: &str = "cartridges";
const OUTSIDE_DIR: &str = "outside";
const STATE_VERSION: u32 = 1;
/// Barcodes are `TV0001L9` .. `TV9999L9`: four digits, as LTO labels have six characters
/// before the media type.
const MAX_DATA_BARCODE: u32 = 9999;
const MAX_CLEANING_BARCODE: u32 = 999;

/// Shape of a new library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryConfig {
    pub slots: usize,
    pub drives: usize,
    pub mail_slots: usize,
    pub cartridges: usize,
    pub capacity: u64,
    pub early_warning: u64,
}

/// Early-warning zone for a cartridge of `capacity` bytes given the library's setting:
/// at most an eighth of the cartridge, so tiny test tapes still have room to write.
pub fn clamp_early_warning(capacity: u64, early_warning: u64) -> u64 {
    early_warning.min(capacity / 8)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriveSlot {
    pub barcode: Option<String>,
    /// The element the cartridge came from.
    pub source: Option<Element>,
    /// Bumped each time a cartridge is moved into the drive.
    pub load_gen: u64,
    /// Bumped when the loaded cartridge's flags or faults change.
    pub ctl_gen: u64,
    /// The drive's speed model; None: the drive takes data as fast as the files do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<DriveModel>,
}

/// The persisted state of a library.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LibraryState {
    pub version: u32,
    pub drives: Vec<DriveSlot>,
    pub slots: Vec<Option<String>>,
    pub mail_slots: Vec<Option<String>>,
    pub outside: Vec<String>,
    pub capacity: u64,
    /// The configured early-warning size, clamped per cartridge by [`clamp_early_warning`].
    pub early_warning: u64,
    pub initial_cartridges: usize,
    pub next_barcode: u32,
    pub next_cleaning: u32,
    pub operation_timeout_ms: u64,
}

impl LibraryState {
    pub fn find(&self, barcode: &str) -> Option<Element> {
        let b = Some(barcode);
        if let Some(i) = self.drives.iter().position(|d| d.barcode.as_deref() == b) {
            return Some(Element {
                kind: ElementKind::Drive,
                index: i,
            });
        }
        if let Some(i) = self.slots.iter().position(|s| s.as_deref() == b) {
            return Some(Element {
                kind: ElementKind::Slot,
                index: i,
            });
        }
        if let Some(i) = self.mail_slots.iter().position(|s| s.as_deref() == b) {
            return Some(Element {
                kind: ElementKind::MailSlot,
                index: i,
            });
        }
        None
    }

    pub fn get(&self, e: Element) -> VtlResult<Option<&String>> {
        let v = match e.kind {
            ElementKind::Drive => self.drives.get(e.index).map(|d| d.barcode.as_ref()),
            ElementKind::Slot => self.slots.get(e.index).map(|s| s.as_ref()),
            ElementKind::MailSlot => self.mail_slots.get(e.index).map(|s| s.as_ref()),
        };
        v.ok_or(VtlError::NoSuchElement { element: e })
    }

    fn set(&mut self, e: Element, v: Option<String>) {
        match e.kind {
            ElementKind::Drive => self.drives[e.index].barcode = v,
            ElementKind::Slot => self.slots[e.index] = v,
            ElementKind::MailSlot => self.mail_slots[e.index] = v,
        }
    }

    fn first_free(&self, kind: ElementKind) -> Option<Element> {
        let i = match kind {
            ElementKind::Drive => self.drives.iter().position(|d| d.barcode.is_none()),
            ElementKind::Slot => self.slots.iter().position(|s| s.is_none()),
            ElementKind::MailSlot => self.mail_slots.iter().position(|s| s.is_none()),
        }?;
        Some(Element { kind, index: i })
    }
}

/// A cartridge as the library reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartridgeRecord {
    pub meta: CartridgeMeta,
    /// None when the cartridge is outside the library.
    pub location: Option<Element>,
    pub bytes_used: u64,
}

/// Drives held open by this process: (canonical library dir, drive index). A process may
/// move a cartridge out of a drive it holds itself (a job changing volumes); another
/// process may not.
static HELD: Mutex<Option<HashSet<(PathBuf, usize)>>> = Mutex::new(None);

fn held_here(dir: &Path, index: usize) -> bool {
    HELD.lock()
        .map(|g| {
            g.as_ref()
                .is_some_and(|s| s.contains(&(dir.to_path_buf(), index)))
        })
        .unwrap_or(false)
}

fn set_held(dir: &Path, index: usize, on: bool) {
    if let Ok(mut g) = HELD.lock() {
        let s = g.get_or_insert_with(HashSet::new);
        if on {
            s.insert((dir.to_path_buf(), index));
        } else {
            s.remove(&(dir.to_path_buf(), index));
        }
    }
}

/// A virtual tape library in a directory.
#[derive(Debug)]
pub struct Library {
    dir: PathBuf,
}

impl Library {
    pub fn exists(dir: &Path) -> bool {
        dir.join(STATE_FILE).is_file()
    }

    /// Create a library with `cfg.cartridges` blank cartridges in its first slots.
    pub fn create(dir: &Path, cfg: &LibraryConfig) -> VtlResult<Library> {
        if Self::exists(dir) {
            return Err(VtlError::LibraryExists {
                path: dir.to_path_buf(),
            });
        }
        if cfg.capacity == 0 {
            return Err(VtlError::BadConfig(
                "capacity must be more than 0 bytes".into(),
            ));
        }
        if cfg.cartridges > cfg.slots + cfg.mail_slots {
            return Err(VtlError::BadConfig(format!(
                "{} cartridges do not fit in {} slots and {} mail slots",
                cfg.cartridges, cfg.slots, cfg.mail_slots
            )));
        }
        if cfg.cartridges as u64 > MAX_DATA_BARCODE as u64 {
            return Err(VtlError::BadConfig(format!(
                "at most {MAX_DATA_BARCODE} cartridges"
            )));
        }
        for d in [
            PathBuf::new(),
            PathBuf::from(DRIVES_DIR),
            PathBuf::from(CARTRIDGES_DIR),
            PathBuf::from(OUTSIDE_DIR),
        ] {
            let p = dir.join(d);
            fs::create_dir_all(&p).map_err(io_err("create directory", &p))?;
        }
        let dir = fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        let _l = meta::lock_file(&dir.join(LOCK_FILE))?;
        if Self::exists(&dir) {
            return Err(VtlError::LibraryExists { path: dir });
        }
        let state = LibraryState {
            version: STATE_VERSION,
            drives: vec![DriveSlot::default(); cfg.drives],
            slots: vec![None; cfg.slots],
            mail_slots: vec![None; cfg.mail_slots],
            outside: Vec::new(),
            capacity: cfg.capacity,
            early_warning: cfg.early_warning,
            initial_cartridges: cfg.cartridges,
            next_barcode: 1,
            next_cleaning: 1,
            operation_timeout_ms: DEFAULT_OPERATION_TIMEOUT.as_millis() as u64,
        };
        let gp = dir.join(GEN_FILE);
        File::create(&gp)
            .and_then(|f| f.write_all_at(&0u64.to_le_bytes(), 0))
            .map_err(io_err("create", &gp))?;
        let lib = Library { dir };
        let mut state = state;
        lib.add_locked(&mut state, cfg.cartridges, None, false)?;
        lib.save(&state)?;
        Ok(lib)
    }

    pub fn open(dir: &Path) -> VtlResult<Library> {
        if !Self::exists(dir) {
            return Err(VtlError::NoLibrary {
                path: dir.to_path_buf(),
            });
        }
        let dir = fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        let lib = Library { dir };
        lib.state()?;
        Ok(lib)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current state, read fresh from disk.
    pub fn state(&self) -> VtlResult<LibraryState> {
        let st: LibraryState = meta::read_json(&self.dir.join(STATE_FILE))?;
        if st.version != STATE_VERSION {
            return Err(VtlError::Corrupt {
                path: self.dir.join(STATE_FILE),
                detail: format!(
                    "state version {} is not the supported {STATE_VERSION}",
                    st.version
                ),
            });
        }
        Ok(st)
    }

    fn save(&self, st: &LibraryState) -> VtlResult<()> {
        meta::write_json_atomic(&self.dir.join(STATE_FILE), st)?;
        bump_gen(&self.dir)
    }

    /// Run `f` on the state under the library lock, saving it if `f` succeeds.
    fn with_state<R>(&self, f: impl FnOnce(&mut LibraryState) -> VtlResult<R>) -> VtlResult<R> {
        let _l = meta::lock_file(&self.dir.join(LOCK_FILE))?;
        let mut st = self.state()?;
        let r = f(&mut st)?;
        self.save(&st)?;
        Ok(r)
    }

    pub fn cartridge_dir(&self, barcode: &str) -> PathBuf {
        let inside = self.dir.join(CARTRIDGES_DIR).join(barcode);
        if inside.is_dir() {
            inside
        } else {
            let out = self.dir.join(OUTSIDE_DIR).join(barcode);
            if out.is_dir() {
                out
            } else {
                inside
            }
        }
    }

    fn barcode_taken(&self, barcode: &str) -> bool {
        self.dir.join(CARTRIDGES_DIR).join(barcode).exists()
            || self.dir.join(OUTSIDE_DIR).join(barcode).exists()
    }

    fn add_locked(
        &self,
        st: &mut LibraryState,
        count: usize,
        capacity: Option<u64>,
        worm: bool,
    ) -> VtlResult<Vec<String>> {
        let free = st.slots.iter().filter(|s| s.is_none()).count()
            + st.mail_slots.iter().filter(|s| s.is_none()).count();
        if free < count {
            return Err(VtlError::NoFreeElement {
                kind: ElementKind::Slot,
            });
        }
        let (cap, ew) = match capacity {
            Some(0) => {
                return Err(VtlError::BadConfig(
                    "capacity must be more than 0 bytes".into(),
                ))
            }
            Some(c) => (c, clamp_early_warning(c, st.early_warning)),
            None => (
                st.capacity,
                clamp_early_warning(st.capacity, st.early_warning),
            ),
        };
        let mut out = Vec::new();
        for _ in 0..count {
            let bc = loop {
                if st.next_barcode > MAX_DATA_BARCODE {
                    return Err(VtlError::BadConfig(format!(
                        "all {MAX_DATA_BARCODE} barcodes are used"
                    )));
                }
                let bc = format!("TV{:04}L9", st.next_barcode);
                st.next_barcode += 1;
                if !self.barcode_taken(&bc) {
                    break bc;
                }
            };
            let mut m = CartridgeMeta::new(&bc, cap, ew);
            m.worm = worm;
            Cartridge::create(&self.dir.join(CARTRIDGES_DIR).join(&bc), &m)?;
            let el = st
                .first_free(ElementKind::Slot)
                .or_else(|| st.first_free(ElementKind::MailSlot))
                .ok_or(VtlError::NoFreeElement {
                    kind: ElementKind::Slot,
                })?;
            st.set(el, Some(bc.clone()));
            out.push(bc);
        }
        Ok(out)
    }

    /// Add blank cartridges into free slots, then free mail slots.
    pub fn add_cartridges(
        &self,
        count: usize,
        capacity: Option<u64>,
        worm: bool,
    ) -> VtlResult<Vec<String>> {
        self.with_state(|st| self.add_locked(st, count, capacity, worm))
    }

    /// Add a cleaning cartridge (`CLNnnnCU`) into a free slot or mail slot.
    pub fn add_cleaning_cartridge(&self) -> VtlResult<String> {
        self.with_state(|st| {
            let el = st
                .first_free(ElementKind::Slot)
                .or_else(|| st.first_free(ElementKind::MailSlot))
                .ok_or(VtlError::NoFreeElement {
                    kind: ElementKind::Slot,
                })?;
            let bc = loop {
                if st.next_cleaning > MAX_CLEANING_BARCODE {
                    return Err(VtlError::BadConfig("all cleaning barcodes are used".into()));
                }
                let bc = format!("CLN{:03}CU", st.next_cleaning);
                st.next_cleaning += 1;
                if !self.barcode_taken(&bc) {
                    break bc;
                }
            };
            let mut m = CartridgeMeta::new(&bc, 1, 0);
            m.cleaning = true;
            Cartridge::create(&self.dir.join(CARTRIDGES_DIR).join(&bc), &m)?;
            st.set(el, Some(bc.clone()));
            Ok(bc)
        })
    }

    /// Every cartridge, in the library or outside it, sorted by barcode.
    pub fn cartridges(&self) -> VtlResult<Vec<CartridgeRecord>> {
        let st = self.state()?;
        let mut out = Vec::new();
        for sub in [CARTRIDGES_DIR, OUTSIDE_DIR] {
            let d = self.dir.join(sub);
            let rd = fs::read_dir(&d).map_err(io_err("list", &d))?;
            for ent in rd {
                let ent = ent.map_err(io_err("list", &d))?;
                let p = ent.path();
                if !p.join(meta::META_FILE).is_file() {
                    continue;
                }
                let m = meta::read_meta(&p)?;
                let dp = p.join(crate::cartridge::DATA_FILE);
                let bytes_used = fs::metadata(&dp).map_err(io_err("stat", &dp))?.len();
                let location = st.find(&m.barcode);
                out.push(CartridgeRecord {
                    meta: m,
                    location,
                    bytes_used,
                });
            }
        }
        out.sort_by(|a, b| a.meta.barcode.cmp(&b.meta.barcode));
        Ok(out)
    }

    fn existing_dir(&self, barcode: &str) -> VtlResult<PathBuf> {
        let d = self.cartridge_dir(barcode);
        if d.join(meta::META_FILE).is_file() {
            Ok(d)
        } else {
            Err(VtlError::NotInLibrary {
                barcode: barcode.to_string(),
            })
        }
    }

    /// Change a cartridge's controls; a drive holding it sees the change on its next op.
    fn control_change(
        &self,
        barcode: &str,
        f: impl FnOnce(&Path) -> VtlResult<()>,
    ) -> VtlResult<()> {
        self.with_state(|st| {
            let d = self.existing_dir(barcode)?;
            f(&d)?;
            if let Some(dr) = st
                .drives
                .iter_mut()
                .find(|d| d.barcode.as_deref() == Some(barcode))
            {
                dr.ctl_gen += 1;
            }
            Ok(())
        })
    }

    pub fn set_application_label(&self, barcode: &str, label: &str) -> VtlResult<()> {
        self.control_change(barcode, |d| {
            meta::update_meta(d, |m| {
                m.application_label = if label.is_empty() {
                    None
                } else {
                    Some(label.to_string())
                };
                Ok(())
            })
        })
    }

    pub fn set_write_protect(&self, barcode: &str, on: bool) -> VtlResult<()> {
        self.control_change(barcode, |d| {
            meta::update_meta(d, |m| {
                m.write_protected = on;
                Ok(())
            })
        })
    }

    pub fn set_faults(&self, barcode: &str, faults: &Faults) -> VtlResult<()> {
        self.control_change(barcode, |d| meta::write_faults(d, faults))
    }

    pub fn faults(&self, barcode: &str) -> VtlResult<Faults> {
        meta::read_faults(&self.existing_dir(barcode)?)
    }

    fn drive_lock_path(&self, index: usize) -> PathBuf {
        self.dir.join(DRIVES_DIR).join(format!("{index}.lock"))
    }

    /// Give drive `drive` (every drive when None) a speed model, or take it away. A
    /// drive held open by any process follows on its next operation.
    pub fn set_drive_model(
        &self,
        drive: Option<usize>,
        model: Option<DriveModel>,
    ) -> VtlResult<()> {
        if let Some(m) = &model {
            m.validate().map_err(VtlError::BadConfig)?;
        }
        self.with_state(|st| {
            match drive {
                Some(i) => {
                    let element = Element {
                        kind: ElementKind::Drive,
                        index: i,
                    };
                    st.drives
                        .get_mut(i)
                        .ok_or(VtlError::NoSuchElement { element })?
                        .model = model;
                }
                None => st.drives.iter_mut().for_each(|d| d.model = model.clone()),
            }
            Ok(())
        })
    }

    /// The speed model configured for drive `drive` (the environment variable
    /// [`crate::DRIVE_MODEL_ENV`] may override it in a process).
    pub fn drive_model(&self, drive: usize) -> VtlResult<Option<DriveModel>> {
        let st = self.state()?;
        let element = Element {
            kind: ElementKind::Drive,
            index: drive,
        };
        Ok(st
            .drives
            .get(drive)
            .ok_or(VtlError::NoSuchElement { element })?
            .model
            .clone())
    }

    /// The statistics of a modelled drive as its last holder saved them (on flush,
    /// unload and close). All zero for a drive that never ran with a model.
    pub fn drive_stats(&self, drive: usize) -> VtlResult<DriveStats> {
        let st = self.state()?;
        if drive >= st.drives.len() {
            return Err(VtlError::NoSuchElement {
                element: Element {
                    kind: ElementKind::Drive,
                    index: drive,
                },
            });
        }
        read_drive_stats(&drive_stats_path(&self.dir, drive))
    }

    /// Move a cartridge between two elements (SMC MOVE MEDIUM).
    pub fn move_medium(&self, from: Element, to: Element) -> VtlResult<()> {
        self.with_state(|st| {
            let bc = st
                .get(from)?
                .cloned()
                .ok_or(VtlError::SourceEmpty { element: from })?;
            if let Some(other) = st.get(to)? {
                if from == to {
                    return Ok(());
                }
                return Err(VtlError::DestinationFull {
                    element: to,
                    barcode: other.clone(),
                });
            }
            // A cartridge in a drive another process holds cannot be taken out. The probe
            // lock is held until the state is saved.
            let _probe = if from.kind == ElementKind::Drive && !held_here(&self.dir, from.index) {
                match meta::try_lock_file(&self.drive_lock_path(from.index))? {
                    Some(l) => Some(l),
                    None => {
                        return Err(VtlError::Busy {
                            element: from,
                            detail: self.holder(from.index),
                        });
                    }
                }
            } else {
                None
            };
            st.set(from, None);
            st.set(to, Some(bc.clone()));
            if from.kind == ElementKind::Drive {
                let src = st.drives[from.index].source.take();
                if to.kind == ElementKind::Drive {
                    st.drives[to.index].source = src;
                }
            }
            if to.kind == ElementKind::Drive {
                let d = &mut st.drives[to.index];
                if from.kind != ElementKind::Drive {
                    d.source = Some(from);
                }
                d.load_gen += 1;
                meta::update_meta(&self.cartridge_dir(&bc), |m| {
                    m.load_count += 1;
                    Ok(())
                })?;
            }
            Ok(())
        })
    }

    fn holder(&self, index: usize) -> String {
        match fs::read_to_string(self.drive_lock_path(index)) {
            Ok(s) if !s.trim().is_empty() => format!("held by process {}", s.trim()),
            _ => "held by another process".to_string(),
        }
    }

    /// Load a data cartridge into a drive (cleaning cartridges are refused).
    pub fn load(&self, barcode: &str, drive: usize) -> VtlResult<()> {
        let st = self.state()?;
        if self
            .existing_dir(barcode)
            .ok()
            .and_then(|d| meta::read_meta(&d).ok())
            .is_some_and(|m| m.cleaning)
        {
            return Err(VtlError::CleaningCartridge {
                barcode: barcode.to_string(),
            });
        }
        let from = st.find(barcode).ok_or(VtlError::NotInLibrary {
            barcode: barcode.to_string(),
        })?;
        self.move_medium(
            from,
            Element {
                kind: ElementKind::Drive,
                index: drive,
            },
        )
    }

    /// Take a cartridge in a mail slot out of the library (it moves to `outside/`).
    pub fn remove_from_mail_slot(&self, barcode: &str) -> VtlResult<()> {
        self.with_state(|st| {
            let el = st.find(barcode).ok_or(VtlError::NotInLibrary {
                barcode: barcode.to_string(),
            })?;
            if el.kind != ElementKind::MailSlot {
                return Err(VtlError::NotInMailSlot {
                    barcode: barcode.to_string(),
                    element: el,
                });
            }
            let from = self.dir.join(CARTRIDGES_DIR).join(barcode);
            let to = self.dir.join(OUTSIDE_DIR).join(barcode);
            if from.is_dir() {
                fs::rename(&from, &to).map_err(io_err("move cartridge outside", &from))?;
                meta::sync_dir(&self.dir.join(OUTSIDE_DIR))?;
                meta::sync_dir(&self.dir.join(CARTRIDGES_DIR))?;
            }
            st.set(el, None);
            if !st.outside.iter().any(|b| b == barcode) {
                st.outside.push(barcode.to_string());
            }
            Ok(())
        })
    }

    /// Bring a cartridge from outside back into a free mail slot.
    pub fn insert_into_mail_slot(&self, barcode: &str) -> VtlResult<Element> {
        self.with_state(|st| {
            let from = self.dir.join(OUTSIDE_DIR).join(barcode);
            if !from.join(meta::META_FILE).is_file() {
                return Err(VtlError::NotOutside {
                    barcode: barcode.to_string(),
                });
            }
            if st.find(barcode).is_some() {
                return Err(VtlError::DuplicateBarcode {
                    barcode: barcode.to_string(),
                });
            }
            let el = st
                .first_free(ElementKind::MailSlot)
                .ok_or(VtlError::NoFreeElement {
                    kind: ElementKind::MailSlot,
                })?;
            let to = self.dir.join(CARTRIDGES_DIR).join(barcode);
            fs::rename(&from, &to).map_err(io_err("move cartridge inside", &from))?;
            meta::sync_dir(&self.dir.join(OUTSIDE_DIR))?;
            meta::sync_dir(&self.dir.join(CARTRIDGES_DIR))?;
            st.outside.retain(|b| b != barcode);
            st.set(el, Some(barcode.to_string()));
            Ok(el)
        })
    }

    /// Open drive `index` for exclusive use by this process until the handle is dropped.
    pub fn open_drive(&self, index: usize) -> VtlResult<Drive> {
        let st = self.state()?;
        let element = Element {
            kind: ElementKind::Drive,
            index,
        };
        if index >= st.drives.len() {
            return Err(VtlError::NoSuchElement { element });
        }
        let lp = self.drive_lock_path(index);
        let mut lock = match meta::try_lock_file(&lp)? {
            Some(l) => l,
            None => {
                return Err(VtlError::Busy {
                    element,
                    detail: self.holder(index),
                })
            }
        };
        let pid = format!("{}\n", std::process::id());
        lock.set_len(0)
            .and_then(|_| lock.write_all(pid.as_bytes()))
            .map_err(io_err("write", &lp))?;
        let gp = self.dir.join(GEN_FILE);
        let gen_file = File::open(&gp).map_err(io_err("open", &gp))?;
        let env_model = DriveModel::from_env().map_err(VtlError::BadConfig)?;
        set_held(&self.dir, index, true);
        Ok(Drive {
            sim: None,
            env_model,
            clock: Box::new(SystemClock::default()),
            stats_dirty: false,
            lib_dir: self.dir.clone(),
            index,
            _lock: lock,
            gen_file,
            seen_gen: None,
            timeout: Duration::from_millis(st.operation_timeout_ms),
            slot: DriveSlot::default(),
            cart: None,
            ejected_gen: None,
        })
    }
}

fn drive_stats_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(DRIVES_DIR).join(format!("{index}.stats.json"))
}

fn read_drive_stats(p: &Path) -> VtlResult<DriveStats> {
    if p.is_file() {
        meta::read_json(p)
    } else {
        Ok(DriveStats::default())
    }
}

fn read_gen(f: &File) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 0)?;
    Ok(u64::from_le_bytes(b))
}

fn bump_gen(dir: &Path) -> VtlResult<()> {
    let gp = dir.join(GEN_FILE);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gp)
        .map_err(io_err("open", &gp))?;
    let g = read_gen(&f).unwrap_or(0);
    f.write_all_at(&(g + 1).to_le_bytes(), 0)
        .map_err(io_err("write", &gp))
}

/// A drive of the library, held exclusively by this process. It follows the library:
/// a cartridge loaded or unloaded through the changer (from any process) is seen on the
/// next operation.
pub struct Drive {
    lib_dir: PathBuf,
    index: usize,
    _lock: Flock<File>,
    gen_file: File,
    seen_gen: Option<u64>,
    timeout: Duration,
    slot: DriveSlot,
    cart: Option<Cartridge>,
    /// The load generation of a cartridge this drive ejected (MTOFFL) and that the
    /// changer has not yet taken away.
    ejected_gen: Option<u64>,
    /// The speed model in force, with its state and statistics.
    sim: Option<DriveSim>,
    /// The model [`crate::DRIVE_MODEL_ENV`] imposes, read when the drive was opened.
    env_model: Option<Option<DriveModel>>,
    clock: Box<dyn Clock>,
    stats_dirty: bool,
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("library", &self.lib_dir)
            .field("index", &self.index)
            .field("barcode", &self.slot.barcode)
            .finish()
    }
}

impl Drive {
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn name(&self) -> String {
        format!("vtl drive {}", self.index)
    }

    /// Take time from `clock` instead of the system's (tests inject a fake clock).
    pub fn set_clock(&mut self, clock: Box<dyn Clock>) {
        self.clock = clock;
    }

    /// The speed model in force (None: unthrottled).
    pub fn drive_model(&mut self) -> VtlResult<Option<DriveModel>> {
        self.refresh()?;
        Ok(self.sim.as_ref().map(|s| s.model().clone()))
    }

    /// The drive's statistics up to now, including what is not saved yet. All zero for
    /// a drive that never ran with a model.
    pub fn drive_stats(&mut self) -> VtlResult<DriveStats> {
        self.refresh()?;
        match self.sim.as_mut() {
            Some(s) => {
                s.advance(self.clock.now());
                Ok(s.stats().clone())
            }
            None => read_drive_stats(&drive_stats_path(&self.lib_dir, self.index)),
        }
    }

    /// Take on the model the library (or the environment) gives this drive.
    fn apply_model(&mut self, configured: Option<DriveModel>) -> VtlResult<()> {
        let want = match &self.env_model {
            Some(m) => m.clone(),
            None => configured,
        };
        if let Some(m) = &want {
            m.validate().map_err(|e| {
                VtlError::BadConfig(format!(
                    "drive {} in {}: {e}",
                    self.index,
                    self.lib_dir.join(STATE_FILE).display()
                ))
            })?;
        }
        match (want, self.sim.as_mut()) {
            (None, None) => {}
            (Some(m), Some(s)) => {
                if *s.model() != m {
                    s.set_model(m);
                }
            }
            (Some(m), None) => {
                let stats = read_drive_stats(&drive_stats_path(&self.lib_dir, self.index))?;
                self.sim = Some(DriveSim::new(m, stats));
            }
            (None, Some(_)) => {
                self.settle(false)?;
                self.persist_drive_stats()?;
                self.sim = None;
            }
        }
        Ok(())
    }

    /// Write the buffer out (the host waits when `wait`); the tape stands positioned.
    fn settle(&mut self, wait: bool) -> VtlResult<()> {
        if let Some(s) = self.sim.as_mut() {
            let w = s.positioned(self.clock.now());
            self.stats_dirty = true;
            if wait {
                self.clock.sleep(w);
            }
        }
        Ok(())
    }

    /// The host's data reached the drive: the model may hold the host back.
    fn model_write(&mut self, n: u64) {
        if let Some(s) = self.sim.as_mut() {
            let w = s.write(self.clock.now(), n);
            self.stats_dirty = true;
            self.clock.sleep(w);
        }
    }

    /// A flush: the buffer goes to tape and the tape stops.
    fn model_sync(&mut self) {
        if let Some(s) = self.sim.as_mut() {
            let w = s.sync(self.clock.now());
            self.stats_dirty = true;
            self.clock.sleep(w);
        }
    }

    fn persist_drive_stats(&mut self) -> VtlResult<()> {
        if !self.stats_dirty {
            return Ok(());
        }
        if let Some(s) = self.sim.as_ref() {
            meta::write_json_atomic(&drive_stats_path(&self.lib_dir, self.index), s.stats())?;
        }
        self.stats_dirty = false;
        Ok(())
    }

    pub fn set_operation_timeout(&mut self, t: Duration) {
        self.timeout = t;
        if let Some(c) = self.cart.as_mut() {
            c.set_operation_timeout(t);
        }
    }

    /// Where the position of the loaded cartridge is kept between holders of the drive.
    fn position_path(&self) -> PathBuf {
        self.lib_dir
            .join(DRIVES_DIR)
            .join(format!("{}.pos", self.index))
    }

    /// The position the previous holder left for this very load of `barcode`, consumed
    /// so that a holder killed mid-operation leaves none (the drive then starts at BOT,
    /// as after a reset).
    fn take_saved_position(&self, barcode: &str, load_gen: u64) -> Option<u64> {
        let path = self.position_path();
        let text = fs::read_to_string(&path).ok()?;
        let _ = fs::remove_file(&path);
        let mut it = text.split_whitespace();
        let g: u64 = it.next()?.parse().ok()?;
        let block: u64 = it.next()?.parse().ok()?;
        (g == load_gen && it.next() == Some(barcode)).then_some(block)
    }

    fn refresh(&mut self) -> VtlResult<()> {
        let gp = self.lib_dir.join(GEN_FILE);
        let g = read_gen(&self.gen_file).map_err(io_err("read", &gp))?;
        if self.seen_gen == Some(g) {
            return Ok(());
        }
        let st: LibraryState = meta::read_json(&self.lib_dir.join(STATE_FILE))?;
        let slot = st.drives.get(self.index).cloned().unwrap_or_default();
        if slot.model != self.slot.model || self.seen_gen.is_none() {
            self.apply_model(slot.model.clone())?;
        }
        if slot.barcode != self.slot.barcode || slot.load_gen != self.slot.load_gen {
            self.settle(false)?;
            if let Some(mut c) = self.cart.take() {
                // The cartridge may already be outside; statistics are best effort.
                let _ = c.persist_stats();
            }
            self.ejected_gen = None;
            if let Some(bc) = &slot.barcode {
                let lib = Library {
                    dir: self.lib_dir.clone(),
                };
                let mut c = Cartridge::open(&lib.cartridge_dir(bc))?;
                c.set_operation_timeout(self.timeout);
                // A real drive keeps its position between opens of the device while the
                // cartridge stays loaded: take over where the last holder left it.
                if let Some(block) = self.take_saved_position(bc, slot.load_gen) {
                    c.restore_position(block);
                }
                self.cart = Some(c);
            }
        } else if slot.ctl_gen != self.slot.ctl_gen {
            if let Some(c) = self.cart.as_mut() {
                c.reload_controls()?;
            }
        }
        self.slot = slot;
        self.seen_gen = Some(g);
        Ok(())
    }

    fn cart(&mut self) -> VtlResult<&mut Cartridge> {
        self.refresh()?;
        if self.ejected_gen.is_some() && self.ejected_gen == Some(self.slot.load_gen) {
            return Err(VtlError::NoMedium { drive: self.name() });
        }
        let name = self.name();
        self.cart.as_mut().ok_or(VtlError::NoMedium { drive: name })
    }

    /// The barcode of the cartridge in the drive.
    pub fn barcode(&mut self) -> VtlResult<Option<String>> {
        self.refresh()?;
        Ok(self.slot.barcode.clone())
    }

    /// The cartridge, after the model wrote the drive's buffer out: for operations
    /// that move the tape.
    fn cart_positioned(&mut self) -> VtlResult<&mut Cartridge> {
        self.cart()?;
        self.settle(true)?;
        self.cart()
    }

    pub fn read_block(&mut self, buf: &mut [u8]) -> VtlResult<Read> {
        self.cart_positioned()?.read_block(buf)
    }
    /// Read the next block and whether it is marked encrypted
    /// ([`Cartridge::read_block_flagged`]).
    pub fn read_block_flagged(&mut self, buf: &mut [u8]) -> VtlResult<(Read, bool)> {
        self.cart_positioned()?.read_block_flagged(buf)
    }
    /// The next logical object without moving ([`Cartridge::peek`]).
    pub fn peek(&mut self) -> VtlResult<(Read, bool)> {
        self.cart_positioned()?.peek()
    }
    /// Write one block marked encrypted or not ([`Cartridge::write_block_flagged`]).
    pub fn write_block_flagged(&mut self, data: &[u8], encrypted: bool) -> VtlResult<Written> {
        let w = self.cart()?.write_block_flagged(data, encrypted)?;
        self.model_write(data.len() as u64);
        Ok(w)
    }
    pub fn write_block(&mut self, data: &[u8]) -> VtlResult<Written> {
        self.write_block_parts(&[data])
    }
    /// Write one block given as consecutive parts ([`Cartridge::write_block_parts`]).
    pub fn write_block_parts(&mut self, parts: &[&[u8]]) -> VtlResult<Written> {
        let w = self.cart()?.write_block_parts(parts)?;
        self.model_write(parts.iter().map(|p| p.len() as u64).sum());
        Ok(w)
    }
    pub fn write_filemarks(&mut self, n: u32, immediate: bool) -> VtlResult<()> {
        self.cart()?.write_filemarks(n, immediate)?;
        if !immediate {
            self.model_sync();
            self.persist_drive_stats()?;
        }
        Ok(())
    }
    pub fn flush(&mut self) -> VtlResult<()> {
        self.cart()?.flush()?;
        self.model_sync();
        self.persist_drive_stats()
    }
    pub fn rewind(&mut self) -> VtlResult<()> {
        self.cart_positioned()?.rewind()
    }
    pub fn space_blocks(&mut self, n: i64) -> VtlResult<()> {
        self.cart_positioned()?.space_blocks(n)
    }
    pub fn space_filemarks(&mut self, n: i64) -> VtlResult<()> {
        self.cart_positioned()?.space_filemarks(n)
    }
    pub fn space_to_eod(&mut self) -> VtlResult<()> {
        self.cart_positioned()?.space_to_eod()
    }
    pub fn locate(&mut self, block: u64) -> VtlResult<()> {
        self.cart_positioned()?.locate(block)
    }
    pub fn position(&mut self) -> VtlResult<Pos> {
        self.cart()?.position()
    }

    pub fn erase(&mut self) -> VtlResult<()> {
        self.cart_positioned()?.erase()
    }

    /// Load again a cartridge this drive ejected ([`Drive::unload`]) while it still sits
    /// in the drive (SSC LOAD after UNLOAD): it comes back at the beginning of tape.
    /// With no cartridge in the drive this fails with [`VtlError::NoMedium`].
    pub fn reload(&mut self) -> VtlResult<()> {
        self.refresh()?;
        if self.ejected_gen.is_some() && self.ejected_gen == Some(self.slot.load_gen) {
            self.ejected_gen = None;
            self.slot = DriveSlot::default();
            self.seen_gen = None;
            self.refresh()?;
        }
        self.cart().map(|_| ())
    }

    /// Status of the loaded cartridge, None when the drive is empty.
    pub fn status(&mut self) -> VtlResult<Option<CartStatus>> {
        match self.cart() {
            Ok(c) => Ok(Some(c.status()?)),
            Err(VtlError::NoMedium { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Rewind and eject (MTOFFL). The drive is empty for data until the changer moves
    /// the cartridge away and loads another (or the same) one.
    pub fn unload(&mut self) -> VtlResult<()> {
        let c = self.cart()?;
        c.flush()?;
        self.settle(true)?;
        self.persist_drive_stats()?;
        self.cart = None;
        self.ejected_gen = Some(self.slot.load_gen);
        Ok(())
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        // The drive writes its buffer out on its own; the holder does not wait.
        let _ = self.settle(false);
        let _ = self.persist_drive_stats();
        if let Some(mut c) = self.cart.take() {
            let _ = c.persist_stats();
            if let (Some(bc), Ok(p)) = (self.slot.barcode.clone(), c.position()) {
                let _ = fs::write(
                    self.position_path(),
                    format!("{} {} {}\n", self.slot.load_gen, p.block, bc),
                );
            }
        }
        set_held(&self.lib_dir, self.index, false);
    }
}
