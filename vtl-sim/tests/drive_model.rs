//! The drive model through a real library and drive (real files), with a fake clock:
//! configured per drive in the library, throttling writes, repositioning for a slow
//! host, statistics kept across opens, and off by default.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vtl_sim::{Clock, DriveModel, Library, LibraryConfig, VtlError};

/// A clock whose sleeps only move time forward; the host's own pace is added by the
/// test with `pass`.
#[derive(Clone, Default)]
struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    fn pass(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
    fn now_d(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        self.now_d()
    }
    fn sleep(&self, d: Duration) {
        self.pass(d);
    }
}

fn library(dir: &std::path::Path) -> Library {
    let lib = Library::create(
        dir,
        &LibraryConfig {
            slots: 2,
            drives: 2,
            mail_slots: 0,
            cartridges: 2,
            capacity: 1 << 30,
            early_warning: 1 << 20,
        },
    )
    .unwrap();
    lib.load("TV0001L9", 0).unwrap();
    lib
}

/// 1 MiB blocks at `rate` bytes/s of host time, `n` of them, then a sync filemark.
fn feed(d: &mut vtl_sim::Drive, clock: &FakeClock, rate: f64, n: usize) {
    let block = vec![0x5au8; 1 << 20];
    for _ in 0..n {
        d.write_block(&block).unwrap();
        clock.pass(Duration::from_secs_f64(block.len() as f64 / rate));
    }
    d.write_filemarks(1, false).unwrap();
}

fn small_model() -> DriveModel {
    // 100 MB/s down to 50 MB/s, 8 MiB buffer, 2 s per reposition.
    "speed=100M,min=50M,buffer=8Mi,reposition=2s"
        .parse()
        .unwrap()
}

#[test]
fn off_by_default_and_writes_are_not_held_back() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    assert_eq!(lib.drive_model(0).unwrap(), None);
    let clock = FakeClock::default();
    let mut d = lib.open_drive(0).unwrap();
    d.set_clock(Box::new(clock.clone()));
    assert_eq!(d.drive_model().unwrap(), None);
    feed(&mut d, &clock, 1e6, 20);
    // Only the host's own pace passed: the drive added nothing.
    assert_eq!(
        clock.now_d(),
        Duration::from_secs_f64(20.0 * 1048576.0 / 1e6)
    );
    assert_eq!(d.drive_stats().unwrap(), Default::default());
    drop(d);
    assert_eq!(lib.drive_stats(0).unwrap(), Default::default());
}

#[test]
fn model_is_per_drive_and_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    lib.set_drive_model(Some(1), Some(small_model())).unwrap();
    assert_eq!(lib.drive_model(0).unwrap(), None);
    assert_eq!(lib.drive_model(1).unwrap(), Some(small_model()));
    lib.set_drive_model(None, Some(small_model())).unwrap();
    assert_eq!(lib.drive_model(0).unwrap(), Some(small_model()));
    let mut bad = small_model();
    bad.min_speed = bad.native_speed + 1;
    match lib.set_drive_model(Some(0), Some(bad)) {
        Err(VtlError::BadConfig(m)) => assert!(m.contains("min="), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        lib.set_drive_model(Some(7), Some(small_model())),
        Err(VtlError::NoSuchElement { .. })
    ));
    lib.set_drive_model(None, None).unwrap();
    assert_eq!(lib.drive_model(1).unwrap(), None);
}

#[test]
fn fast_host_is_held_to_native_speed_and_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    lib.set_drive_model(Some(0), Some(small_model())).unwrap();
    let clock = FakeClock::default();
    let mut d = lib.open_drive(0).unwrap();
    d.set_clock(Box::new(clock.clone()));
    // The host could go at 1 GB/s; 200 MiB at 100 MB/s take about 2.1 s.
    feed(&mut d, &clock, 1e9, 200);
    let secs = clock.now_d().as_secs_f64();
    assert!((2.0..2.3).contains(&secs), "{secs}");
    let st = d.drive_stats().unwrap();
    assert_eq!(st.repositions, 0);
    assert_eq!(st.buffer_underruns, 0);
    assert_eq!(st.bytes_written, 200 << 20);
    assert!(st.host_wait_ns > 1_500_000_000, "{st:?}");
    // The data is on the cartridge as always.
    assert_eq!(d.status().unwrap().unwrap().position.block, 201);
}

#[test]
fn half_speed_host_within_range_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    // 100 MB/s matching down to 35 MB/s; the host gives half the native speed.
    let m: DriveModel = "speed=100M,min=35M,buffer=64Mi".parse().unwrap();
    lib.set_drive_model(Some(0), Some(m)).unwrap();
    let clock = FakeClock::default();
    let mut d = lib.open_drive(0).unwrap();
    d.set_clock(Box::new(clock.clone()));
    feed(&mut d, &clock, 50e6, 400);
    let st = d.drive_stats().unwrap();
    assert_eq!(st.repositions, 0, "{st:?}");
    assert_eq!(st.buffer_underruns, 0, "{st:?}");
}

#[test]
fn slow_host_shoe_shines_and_stats_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    lib.set_drive_model(Some(0), Some(small_model())).unwrap();
    let clock = FakeClock::default();
    let mut d = lib.open_drive(0).unwrap();
    d.set_clock(Box::new(clock.clone()));
    // 10 MB/s against a lowest speed of 50 MB/s: the buffer runs dry again and again.
    feed(&mut d, &clock, 10e6, 100);
    let st = d.drive_stats().unwrap();
    assert!(st.repositions >= 10, "{st:?}");
    assert_eq!(st.repositioning_ns, st.repositions * 2_000_000_000);
    assert!(st.buffer_underruns.abs_diff(st.repositions) <= 1, "{st:?}");
    // The penalty is real (fake) time the host lived through.
    assert!(clock.now_d() >= Duration::from_secs(10) + st.repositioning_time() / 2);
    drop(d);
    assert_eq!(lib.drive_stats(0).unwrap(), st);
    // Another holder (a new open, as another process would) carries on counting.
    let mut d = lib.open_drive(0).unwrap();
    d.set_clock(Box::new(clock.clone()));
    assert_eq!(d.drive_stats().unwrap(), st);
    feed(&mut d, &clock, 10e6, 30);
    let st2 = d.drive_stats().unwrap();
    assert!(st2.repositions > st.repositions);
    assert_eq!(st2.bytes_written, st.bytes_written + (30 << 20));
    drop(d);
    assert_eq!(lib.drive_stats(0).unwrap(), st2);
    // Drive 1 never ran with a model.
    assert_eq!(lib.drive_stats(1).unwrap(), Default::default());
}

#[test]
fn an_open_drive_follows_a_model_change() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let clock = FakeClock::default();
    let mut d = lib.open_drive(0).unwrap();
    d.set_clock(Box::new(clock.clone()));
    assert_eq!(d.drive_model().unwrap(), None);
    lib.set_drive_model(Some(0), Some(small_model())).unwrap();
    assert_eq!(d.drive_model().unwrap(), Some(small_model()));
    feed(&mut d, &clock, 1e9, 50);
    assert_eq!(d.drive_stats().unwrap().bytes_written, 50 << 20);
    lib.set_drive_model(Some(0), None).unwrap();
    assert_eq!(d.drive_model().unwrap(), None);
    // Switched off, the saved statistics stay readable.
    assert_eq!(lib.drive_stats(0).unwrap().bytes_written, 50 << 20);
}

#[test]
fn a_hand_broken_model_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    lib.set_drive_model(Some(0), Some(small_model())).unwrap();
    let state = tmp.path().join("library.json");
    let text = std::fs::read_to_string(&state).unwrap();
    let broken = text.replace("\"min_speed\": 50000000", "\"min_speed\": 0");
    assert_ne!(text, broken, "library.json layout changed: {text}");
    std::fs::write(&state, broken).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    match d.write_block(&[1u8; 512]) {
        Err(VtlError::BadConfig(m)) => {
            assert!(m.contains("library.json") && m.contains("min="), "{m}")
        }
        other => panic!("{other:?}"),
    }
}
