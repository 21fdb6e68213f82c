//! A backup killed mid-image leaves a failed image: restores ignore it, the next
//! backup does not build on it, and verify --barcode notes its truncated tape file
//! without calling the cartridge damaged.

#[path = "restore_support.rs"]
mod support;

use support::*;
use uuid::Uuid;

#[test]
fn restore_around_a_failed_incremental() {
    let env = Env::new(4, "128M");
    env.ok(&["pool", "create", "p", "--compression", "off"]);
    let id = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 2 << 20, 41);
    let full = env.backup(&disk.path, id, "p", &time(0), &[]);
    let p0 = env.path("p0.img");
    disk.snapshot(&p0);
    let bc = env.segments(full)[0].barcode.clone();

    // The next backup is killed while the drive hangs writing its first block.
    disk.write_random(0, 1 << 20);
    env.library()
        .set_faults(
            &bc,
            vtl_sim::Faults {
                hang: Some(vtl_sim::Hang {
                    op: vtl_sim::FaultOp::Write,
                    millis: 20_000,
                    times: 1,
                }),
                ..Default::default()
            },
        )
        .unwrap();
    let d = disk.path.to_str().unwrap().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tapevault"))
        .arg("--home")
        .arg(&env.home)
        .args([
            "backup",
            "--disk",
            &d,
            "--disk-id",
            &id.to_string(),
            "--pool",
            "p",
        ])
        .env("TAPEVAULT_NOW", time(1))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the image is recorded as running and the drive hangs in its first
    // write (the one-shot fault is consumed), then kill the writer.
    let faults = env.library().cartridge_dir(&bc).join("faults.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let running = env
            .catalog()
            .images(Some(id))
            .unwrap()
            .into_iter()
            .any(|i| i.status.as_str() == "running");
        let hanging = !std::fs::read_to_string(&faults)
            .unwrap_or_default()
            .contains("millis");
        if running && hanging {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let failed: Vec<_> = env
        .catalog()
        .images(Some(id))
        .unwrap()
        .into_iter()
        .filter(|i| i.uuid != full)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_ne!(failed[0].status.as_str(), "complete");

    // The newest restorable point is the full.
    let out = env.path("latest.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&p0, &out);
    let r = env.restore(
        id,
        &["--image", &failed[0].uuid.to_string()],
        &env.path("x.img"),
    );
    assert_eq!(r.code, 3, "{}", r.stderr);

    // The next backup succeeds and builds on the full.
    let inc = env.backup(&disk.path, id, "p", &time(2), &[]);
    let row = env.catalog().image(inc).unwrap().unwrap();
    assert!(row.parent_uuid.is_none() || row.parent_uuid == Some(full));
    let out = env.path("after.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&disk.path, &out);
    let out = env.path("before.img");
    let r = env.restore(id, &["--at", &time(1)], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&p0, &out);

    // verify --barcode: the cartridge is fine; if the killed backup got as far as a
    // tape file, it is noted (the catalog knows the image failed), not damage.
    let r = env.run(&["--json", "verify", "--barcode", &bc]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    if let Some(f) = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["image"] == failed[0].uuid.to_string())
    {
        assert_eq!(f["ok"], true, "{f}");
    }
}

/// Regression test: after a write fails with a power cut, the drive has reloaded the
/// cartridge (position: beginning of tape). The backup's error path once wrote its
/// "aborted" trailer and filemark there, overwriting the volume label and every image on
/// the cartridge; it now writes nothing after a drive failure.
#[test]
fn a_power_cut_during_backup_keeps_earlier_images_restorable() {
    // Clear (one transform thread) and zstd (two): the writer's failure must stop
    // every stage either way.
    for compression in ["off", "zstd:3"] {
        let env = Env::new(4, "128M");
        env.ok(&["pool", "create", "p", "--compression", compression]);
        let id = Uuid::new_v4();
        let mut disk = Disk::create(env.path("disk.img"), 2 << 20, 42);
        let full = env.backup(&disk.path, id, "p", &time(0), &[]);
        let p0 = env.path("p0.img");
        disk.snapshot(&p0);
        let bc = env.segments(full)[0].barcode.clone();
        disk.write_random(0, 1 << 20);
        env.library()
            .set_faults(
                &bc,
                vtl_sim::Faults {
                    power_cut_after_bytes: Some(200 * 1024),
                    ..Default::default()
                },
            )
            .unwrap();
        let d = disk.path.to_str().unwrap().to_string();
        let r = env.run_at(
            Some(&time(1)),
            &[
                "backup",
                "--disk",
                &d,
                "--disk-id",
                &id.to_string(),
                "--pool",
                "p",
            ],
        );
        assert_ne!(r.code, 0);
        let out = env.path("latest.img");
        let r = env.restore(id, &[], &out);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_same(&p0, &out);
    }
}
