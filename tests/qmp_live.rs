//! The running-QEMU driver against a real TCG QEMU (no guest OS): one point in time
//! over two disks, guest writes during the backup not leaking into it, epochs across
//! backups, kill -9 of QEMU and of tapevault at every step, a disk added or resized
//! mid-chain, the guest agent. Exports are read with the nbd-client crate.

mod qmp_support;

use std::io::{BufRead, BufReader};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nbd_client::{Address, Client, ConnectOptions, STATE_DIRTY};
use qmp_support::{qemu_missing, Vm};
use serde_json::json;
use tapevault::source::qmp::disks::{discover, VmDisk};
use tapevault::source::qmp::epoch::{ChangeId, Decision};
use tapevault::source::qmp::live::{
    discover_clean, Consistency, DiskRequest, LiveBackup, LiveOptions, Step,
};
use tapevault::source::qmp::QmpClient;
use uuid::Uuid;

const MIB: u64 = 1024 * 1024;

/// A QEMU with these disks (name, size, serial) in a temporary directory, with a guest
/// agent channel if `agent`; None when QEMU is missing (the reason printed).
fn vm_with(disks: &[(&str, u64, &str)], agent: bool) -> Option<(tempfile::TempDir, Vm)> {
    if qemu_missing() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm = Vm::start(dir.path(), disks, agent);
    Some((dir, vm))
}

fn opts(dir: &Path, agent: Option<&Path>) -> LiveOptions {
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    LiveOptions {
        scratch_dir: scratch,
        agent: agent.map(Path::to_path_buf),
        freeze_timeout: Duration::from_secs(10),
        start_epoch: true,
    }
}

fn requests(c: &mut QmpClient, previous: &[(Uuid, String)]) -> Vec<DiskRequest> {
    requests_cleaned(c, previous).0
}

/// Like a backup run: leftovers removed, disks discovered, ids derived.
fn requests_cleaned(
    c: &mut QmpClient,
    previous: &[(Uuid, String)],
) -> (Vec<DiskRequest>, Vec<String>) {
    let (disks, removed) = discover_clean(c, Path::new("/nonexistent-scratch")).unwrap();
    let reqs = disks
        .into_iter()
        .map(|d| {
            let id = d.derived_id().expect("test disks have serials");
            DiskRequest {
                id,
                previous: previous.iter().find(|p| p.0 == id).map(|p| p.1.clone()),
                newest: None,
                disk: d,
            }
        })
        .collect();
    (reqs, removed)
}

/// The whole export and the ranges its bitmap context marks dirty.
fn read_export(socket: &Path, name: &str, bitmap: Option<&str>) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut o = ConnectOptions::new(name).timeout(Some(Duration::from_secs(30)));
    if let Some(b) = bitmap {
        o = o.meta_context(b);
    }
    let mut c = Client::connect(&Address::Unix(socket.to_path_buf()), &o).unwrap();
    let size = c.size();
    let mut data = vec![0u8; size as usize];
    for (i, chunk) in data.chunks_mut(4 * MIB as usize).enumerate() {
        c.read(i as u64 * 4 * MIB, chunk).unwrap();
    }
    let mut dirty = Vec::new();
    if bitmap.is_some() {
        let st = c.block_status(0, size, false).unwrap();
        for e in &st[0].extents {
            if e.flags & STATE_DIRTY != 0 {
                dirty.push((e.offset, e.length));
            }
        }
    }
    c.disconnect().unwrap();
    (data, dirty)
}

struct Model(Vec<Vec<u8>>);

impl Model {
    fn new(sizes: &[u64]) -> Model {
        Model(sizes.iter().map(|&s| vec![0u8; s as usize]).collect())
    }
    fn write(&mut self, vm: &Vm, c: &mut QmpClient, disk: usize, p: u8, off: u64, len: u64) {
        vm.write(c, disk, p, off, len);
        self.0[disk][off as usize..(off + len) as usize].fill(p);
    }
}

fn tapevault_objects(c: &mut QmpClient) -> Vec<String> {
    let mut out = Vec::new();
    for e in c
        .execute("query-block-exports", None)
        .unwrap()
        .as_array()
        .unwrap()
    {
        out.push(format!("export {}", e["id"]));
    }
    for j in c
        .execute("query-block-jobs", None)
        .unwrap()
        .as_array()
        .unwrap()
    {
        out.push(format!("job {}", j["device"]));
    }
    for n in c
        .execute("query-named-block-nodes", Some(json!({"flat": true})))
        .unwrap()
        .as_array()
        .unwrap()
    {
        let name = n["node-name"].as_str().unwrap_or("");
        if name.starts_with("tapevault-") {
            out.push(format!("node {name}"));
        }
    }
    out
}

fn bitmaps_of(c: &mut QmpClient, i: usize) -> Vec<String> {
    let d: Vec<VmDisk> = discover(c).unwrap();
    let mut v: Vec<String> = d[i].bitmaps.iter().map(|b| b.name.clone()).collect();
    v.sort();
    v
}

/// Takes the next point in time after `prev` (as a backup run does, without an agent).
fn begin(mut c: QmpClient, dir: &Path, prev: &[(Uuid, String)]) -> LiveBackup {
    let reqs = requests(&mut c, prev);
    LiveBackup::start(c, reqs, &opts(dir, None), &mut |_| {}).unwrap()
}

/// Commits every disk of the backup and finishes it; returns each disk's id and new
/// change id (the next backup's `prev`).
fn commit_all(mut lb: LiveBackup) -> Vec<(Uuid, String)> {
    let disks = lb.disks();
    for d in &disks {
        lb.committed(d.id).unwrap();
    }
    lb.finish().unwrap();
    disks
        .iter()
        .map(|d| (d.id, d.change_id.clone().unwrap()))
        .collect()
}

/// Starts a backup, checks each disk's decision kind, returns it.
fn start(
    c: QmpClient,
    dir: &Path,
    prev: &[(Uuid, String)],
    expect_incremental: &[bool],
) -> LiveBackup {
    let lb = begin(c, dir, prev);
    let kinds: Vec<bool> = lb
        .disks()
        .iter()
        .map(|d| matches!(d.decision, Decision::Incremental { .. }))
        .collect();
    assert_eq!(
        kinds,
        expect_incremental,
        "decisions: {:?}",
        lb.disks().iter().map(|d| &d.decision).collect::<Vec<_>>()
    );
    lb
}

#[test]
fn two_disks_share_one_epoch_incrementals_carry_exactly_the_changes_and_failures_keep_the_old_epoch(
) {
    let Some((dir, vm)) = vm_with(&[("a", 64 * MIB, "SER-A"), ("b", 32 * MIB, "SER-B")], false)
    else {
        return;
    };
    let mut m = Model::new(&[64 * MIB, 32 * MIB]);
    let mut c = vm.qmp();
    m.write(&vm, &mut c, 0, 0x11, 0, 4 * MIB);
    m.write(&vm, &mut c, 1, 0x21, MIB, MIB);
    drop(c);

    // Full of both disks.
    let lb = start(vm.qmp(), dir.path(), &[], &[false, false]);
    assert!(matches!(lb.consistency(), Consistency::Crash { .. }));
    let disks = lb.disks();
    assert_ne!(
        disks[0].export, "vd0",
        "the export is named by the disk's identity"
    );
    let mut prev = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let (data, _) = read_export(lb.nbd_socket(), &d.export, None);
        assert!(
            data == m.0[i],
            "disk {i}: the full export differs from the guest's data"
        );
        prev.push((d.id, d.change_id.clone().unwrap()));
    }
    let ids: Vec<ChangeId> = prev
        .iter()
        .map(|p| ChangeId::parse(&p.1).unwrap())
        .collect();
    assert_eq!(ids[0].epoch, ids[1].epoch, "one epoch for the whole VM");
    let mut lb = lb;
    for d in &disks {
        lb.committed(d.id).unwrap();
    }
    lb.finish().unwrap();
    let mut c = vm.qmp();
    assert_eq!(
        tapevault_objects(&mut c),
        Vec::<String>::new(),
        "teardown left objects"
    );
    assert_eq!(bitmaps_of(&mut c, 0), vec![ids[0].bitmap()]);

    // Epoch 2: writes, zeroing; then the backup; then writes that must not leak.
    m.write(&vm, &mut c, 0, 0x12, 10 * MIB, 128 * 1024);
    vm.write_zeroes(&mut c, 0, 0, MIB);
    m.0[0][..MIB as usize].fill(0);
    m.write(&vm, &mut c, 1, 0x22, 20 * MIB, 64 * 1024);
    let frozen = m.0.clone();
    drop(c);
    let lb = begin(vm.qmp(), dir.path(), &prev);
    let disks = lb.disks();
    let mut next = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        assert!(
            matches!(d.decision, Decision::Incremental { .. }),
            "disk {i}: {:?}",
            d.decision
        );
        let (data, dirty) = read_export(lb.nbd_socket(), &d.export, d.bitmap_context.as_deref());
        assert!(
            data == frozen[i],
            "disk {i}: the export is not the frozen state"
        );
        let expect: Vec<(u64, u64)> = if i == 0 {
            vec![(0, MIB), (10 * MIB, 128 * 1024)]
        } else {
            vec![(20 * MIB, 64 * 1024)]
        };
        assert_eq!(dirty, expect, "disk {i}: dirty ranges");
        next.push((d.id, d.change_id.clone().unwrap()));
    }
    let mut lb = lb;
    lb.committed(disks[0].id).unwrap();
    // Disk 1 is not committed (its image failed): it keeps epoch 1's bitmap.
    lb.finish().unwrap();
    let mut c = vm.qmp();
    let e2 = ChangeId::parse(&next[0].1).unwrap();
    assert_eq!(e2.epoch, ids[0].epoch + 1);
    assert_eq!(
        bitmaps_of(&mut c, 0),
        vec![e2.bitmap()],
        "disk 0 moved to the new epoch"
    );
    assert_eq!(
        bitmaps_of(&mut c, 1),
        vec![ids[1].bitmap()],
        "disk 1 kept the old epoch"
    );
    assert_eq!(tapevault_objects(&mut c), Vec::<String>::new());
    drop(c);
    drop(vm);
}

/// The driver's connection is the only one QEMU's monitor serves, so guest writes
/// during a backup come from a second monitor.
#[test]
fn guest_writes_after_the_instant_do_not_leak_into_the_export() {
    let Some((dir, vm)) = vm_with(&[("a", 64 * MIB, "SER-A"), ("b", 32 * MIB, "SER-B")], false)
    else {
        return;
    };
    let mut w = vm.test_monitor();
    let w = &mut w;
    let mut m = Model::new(&[64 * MIB, 32 * MIB]);
    m.write(&vm, w, 0, 0x31, 0, 2 * MIB);
    m.write(&vm, w, 1, 0x41, 0, 2 * MIB);
    let lb = start(vm.qmp(), dir.path(), &[], &[false, false]);
    let frozen = m.0.clone();
    // After the instant: overwrite what was there, and write where nothing was.
    m.write(&vm, w, 0, 0x32, 0, 64 * 1024);
    m.write(&vm, w, 0, 0x33, 40 * MIB, MIB);
    m.write(&vm, w, 1, 0x42, MIB, 256 * 1024);
    let disks = lb.disks();
    let mut prev = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let (data, _) = read_export(lb.nbd_socket(), &d.export, None);
        assert!(
            data == frozen[i],
            "disk {i}: a write after the instant leaked into the export"
        );
        prev.push((d.id, d.change_id.clone().unwrap()));
    }
    let mut lb = lb;
    for d in &disks {
        lb.committed(d.id).unwrap();
    }
    lb.finish().unwrap();
    // Those writes belong to the next epoch: the next incremental has exactly them.
    let frozen = m.0.clone();
    let lb = start(vm.qmp(), dir.path(), &prev, &[true, true]);
    for (i, d) in lb.disks().iter().enumerate() {
        let (data, dirty) = read_export(lb.nbd_socket(), &d.export, d.bitmap_context.as_deref());
        assert!(data == frozen[i]);
        let expect: Vec<(u64, u64)> = if i == 0 {
            vec![(0, 64 * 1024), (40 * MIB, MIB)]
        } else {
            vec![(MIB, 256 * 1024)]
        };
        assert_eq!(dirty, expect, "disk {i}");
    }
    lb.finish().unwrap();
}

#[test]
fn kill9_of_qemu_makes_the_next_backup_a_full_with_the_reason() {
    let Some((dir, mut vm)) = vm_with(&[("a", 32 * MIB, "SER-A")], false) else {
        return;
    };
    let prev = commit_all(start(vm.qmp(), dir.path(), &[], &[false]));

    // A bitmap created in this QEMU run is simply missing after kill -9.
    vm.kill9();
    vm.boot();
    let mut c = vm.qmp();
    let reqs = requests(&mut c, &prev);
    match tapevault::source::qmp::epoch::decide(&reqs[0].disk, Some(&prev[0].1)) {
        Decision::Full { reason } => assert!(reason.contains("missing"), "{reason}"),
        other => panic!("expected a full, got {other:?}"),
    }
    drop(c);
    let prev = commit_all(start(vm.qmp(), dir.path(), &prev, &[false]));

    // Stored by a clean quit, then QEMU killed: the bitmap is there but inconsistent.
    let c = vm.qmp();
    vm.quit(c);
    vm.boot();
    let mut c = vm.qmp();
    c.execute("human-monitor-command", Some(json!({"command-line": "qemu-io -d /machine/peripheral/vd0/virtio-backend \"write -P 0x5 0 64k\""}))).unwrap();
    let reqs = requests(&mut c, &prev);
    assert_eq!(
        tapevault::source::qmp::epoch::decide(&reqs[0].disk, Some(&prev[0].1)),
        Decision::Incremental {
            from: ChangeId::parse(&prev[0].1).unwrap()
        },
        "a clean restart keeps the epoch"
    );
    drop(c);
    vm.kill9();
    vm.boot();
    let mut c = vm.qmp();
    let reqs = requests(&mut c, &prev);
    match tapevault::source::qmp::epoch::decide(&reqs[0].disk, Some(&prev[0].1)) {
        Decision::Full { reason } => assert!(reason.contains("inconsistent"), "{reason}"),
        other => panic!("expected a full, got {other:?}"),
    }
    drop(c);
    // The full removes the broken bitmap and starts a fresh epoch.
    let lb = start(vm.qmp(), dir.path(), &prev, &[false]);
    lb.finish().unwrap();
    let mut c = vm.qmp();
    let names = bitmaps_of(&mut c, 0);
    assert!(
        !names.contains(&ChangeId::parse(&prev[0].1).unwrap().bitmap()),
        "{names:?}"
    );
}

#[test]
fn a_disk_added_or_resized_mid_chain_gets_a_full_with_the_reason() {
    let Some((dir, mut vm)) = vm_with(&[("a", 32 * MIB, "SER-A")], false) else {
        return;
    };
    let prev = commit_all(start(vm.qmp(), dir.path(), &[], &[false]));
    // A second disk (given before the first on the command line: order is not identity).
    let c = vm.qmp();
    vm.quit(c);
    vm.disks.insert(
        0,
        qmp_support::TestDiskSpec {
            file: dir.path().join("b.qcow2"),
            size: 16 * MIB,
            serial: "SER-B".into(),
        },
    );
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.path().join("b.qcow2"))
        .arg((16 * MIB).to_string())
        .status()
        .unwrap();
    vm.boot();
    let lb = begin(vm.qmp(), dir.path(), &prev);
    let disks = lb.disks();
    let new = disks
        .iter()
        .find(|x| x.disk.serial.as_deref() == Some("SER-B"))
        .unwrap();
    let old = disks
        .iter()
        .find(|x| x.disk.serial.as_deref() == Some("SER-A"))
        .unwrap();
    assert!(
        matches!(old.decision, Decision::Incremental { .. }),
        "{:?}",
        old.decision
    );
    match &new.decision {
        Decision::Full { reason } => assert!(reason.contains("no earlier good image"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut prev = commit_all(lb);
    // Grow disk A.
    let mut c = vm.qmp();
    let node = discover(&mut c)
        .unwrap()
        .into_iter()
        .find(|x| x.serial.as_deref() == Some("SER-A"))
        .unwrap()
        .node;
    c.execute(
        "block_resize",
        Some(json!({"node-name": node, "size": 48 * MIB})),
    )
    .unwrap();
    let lb = begin(c, dir.path(), &prev);
    for x in lb.disks() {
        match (&x.decision, x.disk.serial.as_deref()) {
            (Decision::Full { reason }, Some("SER-A")) => {
                assert!(reason.contains("virtual size changed"), "{reason}")
            }
            (Decision::Incremental { .. }, Some("SER-B")) => {}
            other => panic!("{other:?}"),
        }
    }
    prev.clear();
    lb.finish().unwrap();
}

// ---- kill -9 of tapevault at every step of the epoch switch ----

const CHILD_ENV: &str = "TAPEVAULT_TEST_QMP_CHILD";

/// Runs `child_stops_at_a_step` of this test binary in a child process: it takes the
/// next point in time after `prev` in `dir` and stops at `step`.
fn spawn_child(dir: &Path, step: &str, prev: &[(Uuid, String)]) -> Child {
    let spec = json!({"dir": dir.to_string_lossy(), "step": step,
        "prev": prev.iter().map(|p| json!([p.0.to_string(), p.1])).collect::<Vec<_>>()});
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_stops_at_a_step",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits until the child says it reached a step, and returns that step's name.
fn wait_for_step(dir: &Path, child: &mut Child, step: &str) -> String {
    let marker = dir.join("child-step");
    let reached = loop {
        if let Ok(s) = std::fs::read_to_string(&marker) {
            if !s.is_empty() {
                break s;
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the child ended ({st}) before step {step}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::fs::remove_file(&marker).unwrap();
    reached
}

/// The child half of the kill -9 test: starts a backup and stops at the step named in
/// the environment, announcing it on stdout, until it is killed.
#[test]
fn child_stops_at_a_step() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let dir = Path::new(v["dir"].as_str().unwrap());
    let step = v["step"].as_str().unwrap().to_string();
    let prev: Vec<(Uuid, String)> = v["prev"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().parse().unwrap(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut c = QmpClient::connect(&dir.join("qmp.sock"), Duration::from_secs(30)).unwrap();
    let reqs = requests(&mut c, &prev);
    // The parent polls for this file (the child's stdout may be buffered by the harness).
    let marker = dir.join("child-step");
    let stop = |name: &str| {
        std::fs::write(&marker, name).unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let mut lb = LiveBackup::start(c, reqs, &opts(dir, None), &mut |s: Step| {
        if format!("{s:?}") == step {
            stop(&step);
        }
    })
    .unwrap();
    if step == "Committed" {
        let id = lb.disks()[0].id;
        lb.committed(id).unwrap();
        stop(&step);
    }
    lb.finish().unwrap();
    stop("done");
}

#[test]
fn kill9_of_tapevault_at_every_step_leaves_nothing_and_the_next_backup_is_right() {
    let Some((dir, vm)) = vm_with(&[("a", 32 * MIB, "SER-A"), ("b", 16 * MIB, "SER-B")], false)
    else {
        return;
    };
    let mut prev = commit_all(start(vm.qmp(), dir.path(), &[], &[false, false]));
    let mut m = Model::new(&[32 * MIB, 16 * MIB]);
    let mut pattern = 0x40u8;
    // Writes since the last committed image accumulate: every killed run must leave
    // them in the bitmap the catalog knows.
    let mut since: Vec<Vec<(u64, u64)>> = vec![Vec::new(), Vec::new()];
    for (k, step) in [
        "Cleaned",
        "ScratchAdded",
        "Transaction",
        "ServerStarted",
        "Exported",
        "Committed",
    ]
    .iter()
    .enumerate()
    {
        let mut c = vm.qmp();
        pattern += 1;
        let off = (k as u64 + 1) * MIB;
        m.write(&vm, &mut c, 0, pattern, off, 64 * 1024);
        m.write(&vm, &mut c, 1, pattern, off, 64 * 1024);
        since[0].push((off, 64 * 1024));
        since[1].push((off, 64 * 1024));
        drop(c);
        let mut child = spawn_child(dir.path(), step, &prev);
        assert_eq!(wait_for_step(dir.path(), &mut child, step), *step);
        child.kill().unwrap();
        child.wait().unwrap();

        // The next run cleans up first.
        let mut cc = vm.qmp();
        let (_, mut removed) = discover_clean(&mut cc, &dir.path().join("scratch")).unwrap();
        // "Committed": the child committed disk 0 (its catalog now names the new epoch).
        if *step == "Committed" {
            let d = discover(&mut cc)
                .unwrap()
                .into_iter()
                .find(|d| d.serial.as_deref() == Some("SER-A"))
                .unwrap();
            let old = ChangeId::parse(&prev[0].1).unwrap().bitmap();
            let new = d.bitmaps.iter().find(|b| b.name != old).unwrap();
            assert!(
                d.bitmap(&old).is_none(),
                "committed() removes the old epoch's bitmap"
            );
            let epoch = tapevault::source::qmp::epoch::epoch_of(&new.name).unwrap();
            prev[0].1 = ChangeId {
                epoch,
                size: d.size,
                granularity: new.granularity,
            }
            .to_string();
            since[0].clear();
        }
        // ... and reads exactly what changed since the committed images.
        let (reqs, more) = requests_cleaned(&mut cc, &prev);
        removed.extend(more);
        let lb = LiveBackup::start(cc, reqs, &opts(dir.path(), None), &mut |_| {}).unwrap();
        removed.extend(lb.removed_leftovers().iter().cloned());
        if *step != "Cleaned" {
            assert!(
                removed.iter().any(|r| r.starts_with("node ")),
                "step {step}: nothing was cleaned up: {removed:?}"
            );
        }
        let frozen = m.0.clone();
        let disks = lb.disks();
        for (i, d) in disks.iter().enumerate() {
            let i_model = if d.disk.serial.as_deref() == Some("SER-A") {
                0
            } else {
                1
            };
            assert!(
                matches!(d.decision, Decision::Incremental { .. }),
                "step {step}, disk {i}: {:?}",
                d.decision
            );
            let (data, dirty) =
                read_export(lb.nbd_socket(), &d.export, d.bitmap_context.as_deref());
            assert!(data == frozen[i_model], "step {step}: disk {i} differs");
            let mut expect = since[i_model].clone();
            expect.sort();
            assert_eq!(dirty, expect, "step {step}: dirty ranges of disk {i}");
        }
        // This run fails before its catalog commit: nothing committed, so the epoch the
        // catalog knows stays and keeps collecting.
        lb.finish().unwrap();
        let mut c = vm.qmp();
        assert_eq!(
            tapevault_objects(&mut c),
            Vec::<String>::new(),
            "after step {step}"
        );
        for (i, p) in prev.iter().enumerate() {
            let _ = i;
            let d = discover(&mut c)
                .unwrap()
                .into_iter()
                .find(|d| d.derived_id() == Some(p.0))
                .unwrap();
            let names: Vec<&str> = d.bitmaps.iter().map(|b| b.name.as_str()).collect();
            assert_eq!(
                names,
                vec![ChangeId::parse(&p.1).unwrap().bitmap().as_str()],
                "step {step}"
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("scratch"))
            .unwrap()
            .flatten()
            .collect();
        assert!(
            leftovers.is_empty(),
            "step {step}: scratch files left: {leftovers:?}"
        );
    }
}

// ---- guest agent ----

#[test]
fn a_silent_guest_agent_means_crash_consistent_with_the_reason() {
    let Some((dir, vm)) = vm_with(&[("a", 16 * MIB, "SER-A")], true) else {
        return;
    };
    let mut c = vm.qmp();
    let reqs = requests(&mut c, &[]);
    let o = opts(dir.path(), vm.agent.as_deref());
    let lb = LiveBackup::start(c, reqs, &o, &mut |_| {}).unwrap();
    match lb.consistency() {
        Consistency::Crash { reason } => {
            assert!(reason.contains("guest agent did not answer"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    lb.finish().unwrap();
}

/// A stand-in agent on a unix socket (the real one runs inside a guest OS this test
/// has not got): answers sync, freeze and thaw, and records the order of calls.
fn fake_agent(path: &Path, log: std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::Write;
    use std::os::unix::net::UnixListener;
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let mut w = s.try_clone().unwrap();
            let r = BufReader::new(s);
            for line in r.split(b'\n') {
                let Ok(line) = line else { break };
                let line: Vec<u8> = line.into_iter().filter(|&b| b != 0xFF).collect();
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                    continue;
                };
                let cmd = v["execute"].as_str().unwrap_or("").to_string();
                log.lock().unwrap().push(cmd.clone());
                let reply = match cmd.as_str() {
                    "guest-sync-delimited" => {
                        w.write_all(&[0xFF]).unwrap();
                        json!({"return": v["arguments"]["id"]})
                    }
                    "guest-fsfreeze-freeze" | "guest-fsfreeze-thaw" => json!({"return": 2}),
                    _ => json!({"error": {"class": "CommandNotFound", "desc": "no"}}),
                };
                w.write_all(format!("{reply}\n").as_bytes()).unwrap();
            }
        }
    });
}

#[test]
fn an_answering_guest_agent_freezes_around_the_transaction() {
    let Some((dir, vm)) = vm_with(&[("a", 16 * MIB, "SER-A")], false) else {
        return;
    };
    let agent = dir.path().join("fake-qga.sock");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    fake_agent(&agent, log.clone());
    let mut c = vm.qmp();
    let reqs = requests(&mut c, &[]);
    let mut steps = Vec::new();
    let lb = LiveBackup::start(c, reqs, &opts(dir.path(), Some(&agent)), &mut |s| {
        steps.push(s)
    })
    .unwrap();
    assert_eq!(lb.consistency(), &Consistency::Filesystem { frozen: 2 });
    assert_eq!(
        steps,
        vec![
            Step::Cleaned,
            Step::ScratchAdded,
            Step::Frozen,
            Step::Transaction,
            Step::Thawed,
            Step::ServerStarted,
            Step::Exported
        ]
    );
    let calls: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|c| !c.starts_with("guest-sync"))
        .cloned()
        .collect();
    assert_eq!(calls, vec!["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]);
    lb.finish().unwrap();
}

#[test]
fn sigterm_of_tapevault_tears_everything_down_and_keeps_each_disks_epoch_right() {
    let Some((dir, vm)) = vm_with(&[("a", 32 * MIB, "SER-A"), ("b", 16 * MIB, "SER-B")], false)
    else {
        return;
    };
    let prev = commit_all(start(vm.qmp(), dir.path(), &[], &[false, false]));
    // The child takes the next point in time, commits disk 0 only, and waits.
    let mut child = spawn_child(dir.path(), "Committed", &prev);
    wait_for_step(dir.path(), &mut child, "Committed");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(128 + 15), "exit status after SIGTERM: {st}");
    // No cleanup by a next run: the signal path removed everything itself.
    let mut c = vm.qmp();
    assert_eq!(tapevault_objects(&mut c), Vec::<String>::new());
    let disks = discover(&mut c).unwrap();
    let a = disks
        .iter()
        .find(|d| d.serial.as_deref() == Some("SER-A"))
        .unwrap();
    let b = disks
        .iter()
        .find(|d| d.serial.as_deref() == Some("SER-B"))
        .unwrap();
    let old = ChangeId::parse(&prev[0].1).unwrap().bitmap();
    let names = |d: &VmDisk| d.bitmaps.iter().map(|b| b.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(b),
        vec![old.clone()],
        "disk B was not committed: it keeps the old epoch only"
    );
    assert_eq!(names(a).len(), 1, "{:?}", names(a));
    assert_ne!(
        names(a)[0],
        old,
        "disk A was committed: it moved to the new epoch"
    );
    let scratch: Vec<_> = std::fs::read_dir(dir.path().join("scratch"))
        .unwrap()
        .flatten()
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");
}
