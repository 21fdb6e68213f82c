//! The conformance suite against the virtual drive: every check must pass. And against
//! deliberately broken drives: the suite must notice.

use tape_devices::changer::r#virtual::{VirtualLibrary, VirtualLibraryConfig};
use tape_devices::changer::{Changer, TapeLibrary};
use tape_devices::drive::conformance::{run, CheckResult, ConformanceOptions};
use tape_devices::drive::{
    Capabilities, DriveResult, DriveStatus, Position, ReadOutcome, TapeDrive, WriteOutcome,
};

fn opts() -> ConformanceOptions {
    ConformanceOptions {
        blocks_per_file: 650,
        block_size: 512,
        fill: true,
        fill_block_size: 16 * 1024,
        fill_limit_bytes: 64 << 20,
    }
}

fn library(tmp: &tempfile::TempDir) -> VirtualLibrary {
    let cfg = VirtualLibraryConfig {
        slots: 4,
        drives: 1,
        mail_slots: 1,
        cartridges: 2,
        capacity: 4 << 20,
        early_warning: 256 << 10,
    };
    let mut lib = VirtualLibrary::create(tmp.path(), &cfg).unwrap();
    lib.load("TV0001L9", 0).unwrap();
    lib
}

fn report(r: &[CheckResult]) -> String {
    r.iter()
        .map(|c| {
            format!(
                "{} {}: {}\n",
                if c.passed { "PASS" } else { "FAIL" },
                c.name,
                c.message
            )
        })
        .collect()
}

#[test]
fn virtual_drive_passes_every_check() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = library(&tmp);
    let mut d = lib.open_drive(0).unwrap();
    let r = run(d.as_mut(), &opts());
    assert!(r.iter().all(|c| c.passed), "{}", report(&r));
    assert_eq!(r.len(), 9, "{}", report(&r));
}

/// Hides LOCATE and READ POSITION so the suite repositions by spacing.
struct NoLocate(Box<dyn TapeDrive>);
/// Turns every filemark into end of data when read: a broken drive.
struct LosesFilemarks(Box<dyn TapeDrive>);
/// Reports success for spacing that stopped early.
struct NoResidual(Box<dyn TapeDrive>);

macro_rules! delegate {
    ($t:ty, { $($over:item)* }) => {
        impl TapeDrive for $t {
            $($over)*
            fn name(&self) -> String { self.0.name() }
            fn write_block(&mut self, d: &[u8]) -> DriveResult<WriteOutcome> { self.0.write_block(d) }
            fn write_filemarks(&mut self, n: u32, i: bool) -> DriveResult<()> { self.0.write_filemarks(n, i) }
            fn flush(&mut self) -> DriveResult<()> { self.0.flush() }
            fn rewind(&mut self) -> DriveResult<()> { self.0.rewind() }
            fn space_filemarks(&mut self, n: i64) -> DriveResult<()> { self.0.space_filemarks(n) }
            fn space_to_eod(&mut self) -> DriveResult<()> { self.0.space_to_eod() }
            fn status(&mut self) -> DriveResult<DriveStatus> { self.0.status() }
            fn unload(&mut self) -> DriveResult<()> { self.0.unload() }
            fn max_block_size(&self) -> usize { self.0.max_block_size() }
        }
    };
}

delegate!(NoLocate, {
    fn capabilities(&mut self) -> DriveResult<Capabilities> {
        let mut c = self.0.capabilities()?;
        c.locate = false;
        c.read_position = false;
        Ok(c)
    }
    fn read_block(&mut self, b: &mut [u8]) -> DriveResult<ReadOutcome> {
        self.0.read_block(b)
    }
    fn space_blocks(&mut self, n: i64) -> DriveResult<()> {
        self.0.space_blocks(n)
    }
    fn locate(&mut self, _: u64) -> DriveResult<()> {
        Err(tape_devices::drive::DriveError::Unsupported { op: "locate" })
    }
    fn position(&mut self) -> DriveResult<Position> {
        Err(tape_devices::drive::DriveError::Unsupported {
            op: "read position",
        })
    }
});

delegate!(LosesFilemarks, {
    fn capabilities(&mut self) -> DriveResult<Capabilities> {
        self.0.capabilities()
    }
    fn read_block(&mut self, b: &mut [u8]) -> DriveResult<ReadOutcome> {
        match self.0.read_block(b)? {
            ReadOutcome::Filemark => Ok(ReadOutcome::EndOfData),
            o => Ok(o),
        }
    }
    fn space_blocks(&mut self, n: i64) -> DriveResult<()> {
        self.0.space_blocks(n)
    }
    fn locate(&mut self, b: u64) -> DriveResult<()> {
        self.0.locate(b)
    }
    fn position(&mut self) -> DriveResult<Position> {
        self.0.position()
    }
});

delegate!(NoResidual, {
    fn capabilities(&mut self) -> DriveResult<Capabilities> {
        self.0.capabilities()
    }
    fn read_block(&mut self, b: &mut [u8]) -> DriveResult<ReadOutcome> {
        self.0.read_block(b)
    }
    fn space_blocks(&mut self, n: i64) -> DriveResult<()> {
        self.0.space_blocks(n).or(Ok(()))
    }
    fn locate(&mut self, b: u64) -> DriveResult<()> {
        self.0.locate(b)
    }
    fn position(&mut self) -> DriveResult<Position> {
        self.0.position()
    }
});

#[test]
fn drive_without_locate_is_repositioned_by_spacing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = library(&tmp);
    let mut d = NoLocate(lib.open_drive(0).unwrap());
    let o = ConformanceOptions {
        fill: false,
        ..opts()
    };
    let r = run(&mut d, &o);
    assert!(r.iter().all(|c| c.passed), "{}", report(&r));
    assert!(
        r.iter().any(|c| c.message.contains("rewind + fsf + fsr")),
        "{}",
        report(&r)
    );
}

#[test]
fn suite_catches_a_drive_that_loses_filemarks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = library(&tmp);
    let mut d = LosesFilemarks(lib.open_drive(0).unwrap());
    let r = run(
        &mut d,
        &ConformanceOptions {
            fill: false,
            ..opts()
        },
    );
    let c = r
        .iter()
        .find(|c| c.name == "read_back_one_filemark_between_files")
        .unwrap();
    assert!(!c.passed, "{}", report(&r));
    assert!(c.message.contains("Filemark"), "{}", c.message);
}

#[test]
fn suite_catches_a_drive_without_residuals() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = library(&tmp);
    let mut d = NoResidual(lib.open_drive(0).unwrap());
    let r = run(
        &mut d,
        &ConformanceOptions {
            fill: false,
            ..opts()
        },
    );
    let c = r
        .iter()
        .find(|c| c.name == "fsf_bsf_small_files_and_residuals")
        .unwrap();
    assert!(!c.passed, "{}", report(&r));
}

#[test]
fn bad_options_are_reported_not_panicked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = library(&tmp);
    let mut d = lib.open_drive(0).unwrap();
    let r = run(
        d.as_mut(),
        &ConformanceOptions {
            block_size: 3,
            ..opts()
        },
    );
    assert_eq!(r.len(), 1);
    assert!(!r[0].passed);
}
