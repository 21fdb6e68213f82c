//! Restore and verify on a drive without LOCATE or READ POSITION: positioning falls
//! back to rewind + space filemarks + space blocks, through the library API.

#[path = "restore_support.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use support::*;
use tape_devices::changer::{Changer, ChangerResult, TapeLibrary};
use tape_devices::drive::*;
use tapevault::catalog::At;
use tapevault::codec::KeyRing;
use tapevault::events::Silent;
use uuid::Uuid;

/// A drive that cannot locate or report its position, counting spacing operations.
struct Plain {
    inner: Box<dyn TapeDrive>,
    spaces: Arc<AtomicU64>,
}

impl TapeDrive for Plain {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn capabilities(&mut self) -> DriveResult<Capabilities> {
        let mut c = self.inner.capabilities()?;
        c.locate = false;
        c.read_position = false;
        Ok(c)
    }
    fn read_block(&mut self, buf: &mut [u8]) -> DriveResult<ReadOutcome> {
        self.inner.read_block(buf)
    }
    fn write_block(&mut self, data: &[u8]) -> DriveResult<WriteOutcome> {
        self.inner.write_block(data)
    }
    fn write_filemarks(&mut self, count: u32, immediate: bool) -> DriveResult<()> {
        self.inner.write_filemarks(count, immediate)
    }
    fn flush(&mut self) -> DriveResult<()> {
        self.inner.flush()
    }
    fn rewind(&mut self) -> DriveResult<()> {
        self.inner.rewind()
    }
    fn space_blocks(&mut self, count: i64) -> DriveResult<()> {
        self.spaces.fetch_add(1, Ordering::SeqCst);
        self.inner.space_blocks(count)
    }
    fn space_filemarks(&mut self, count: i64) -> DriveResult<()> {
        self.spaces.fetch_add(1, Ordering::SeqCst);
        self.inner.space_filemarks(count)
    }
    fn space_to_eod(&mut self) -> DriveResult<()> {
        self.inner.space_to_eod()
    }
    fn locate(&mut self, _block: u64) -> DriveResult<()> {
        Err(DriveError::Unsupported { op: "locate" })
    }
    fn position(&mut self) -> DriveResult<Position> {
        Err(DriveError::Unsupported {
            op: "read position",
        })
    }
    fn status(&mut self) -> DriveResult<DriveStatus> {
        self.inner.status()
    }
    fn unload(&mut self) -> DriveResult<()> {
        self.inner.unload()
    }
    fn max_block_size(&self) -> usize {
        self.inner.max_block_size()
    }
}

struct PlainLibrary {
    inner: tape_devices::changer::r#virtual::VirtualLibrary,
    spaces: Arc<AtomicU64>,
}

impl TapeLibrary for PlainLibrary {
    fn changer(&mut self) -> &mut dyn Changer {
        self.inner.changer()
    }
    fn open_drive(&mut self, index: usize) -> ChangerResult<Box<dyn TapeDrive>> {
        Ok(Box::new(Plain {
            inner: self.inner.open_drive(index)?,
            spaces: self.spaces.clone(),
        }))
    }
    fn drive_count(&self) -> usize {
        self.inner.drive_count()
    }
}

#[test]
fn restore_and_verify_without_locate_space_to_the_records() {
    let env = Env::new(4, "512M");
    env.ok(&["pool", "create", "p", "--compression", "off"]);
    let id = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 40 << 20, 9);
    disk.write_random(0, 40 << 20);
    let full = env.backup(&disk.path, id, "p", &time(0), &[]);
    let first = env.segments(full)[0].clone();
    disk.write_random(
        first.disk_start,
        (first.disk_end - first.disk_start) as usize,
    );
    disk.scribble(2);
    let inc = env.backup(&disk.path, id, "p", &time(1), &[]);

    let cat = env.catalog();
    let spaces = Arc::new(AtomicU64::new(0));
    let mut lib = PlainLibrary {
        inner: env.library(),
        spaces: spaces.clone(),
    };
    let p = tapevault::restore::prepare(&cat, &mut lib, id, At::Latest).unwrap();
    assert_eq!(p.chain.len(), 2);
    let out = env.path("out.img");
    let report = tapevault::restore::run(
        &mut lib,
        &KeyRing::new(),
        &p,
        &tapevault::restore::RestoreOptions {
            to: out.clone(),
            force: false,
            tls_creds_dir: None,
        },
        &Silent,
    )
    .unwrap();
    assert_same(&disk.path, &out);
    assert!(
        spaces.load(Ordering::SeqCst) > 0,
        "positioning must have spaced"
    );
    let full_read = report.images[0].read.as_ref().unwrap();
    assert_eq!(full_read.segments_skipped, 1);
    assert!(!full_read.digest_checked);
    assert!(report.images[1].read.as_ref().unwrap().digest_checked);

    let r = tapevault::verify::verify_image(&cat, &mut lib, &KeyRing::new(), inc, &Silent).unwrap();
    assert!(r.ok, "{:?}", r.error);
    let r =
        tapevault::verify::verify_media(&cat, &mut lib, &KeyRing::new(), &first.barcode, &Silent)
            .unwrap();
    assert!(r.ok, "{:?}", r.files);
    assert!(r.files.iter().all(|f| f.first_block.is_none()));
}
