//! A restore killed half-way leaves nothing beside its target (the file it writes has
//! no name until complete, or a named temporary that the next restore into the same
//! place removes), and a damaged key file is exit 5 naming the file and the way out.

#[path = "restore_support.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use support::*;
use tapevault::crypto::{KdfParams, Keystore};
use uuid::Uuid;

/// Names in `dir` other than `keep`.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// Whether process `pid` has a file open in `dir` (the restore's output).
fn writes_into(pid: u32, dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    rd.flatten().any(|e| {
        std::fs::read_link(e.path())
            .map(|t| t.starts_with(dir))
            .unwrap_or(false)
    })
}

#[test]
fn a_killed_restore_leaves_no_temporary_file() {
    if !Path::new("/proc/self/fd").is_dir() {
        eprintln!("skipped: no /proc to see the restore's open files");
        return;
    }
    let env = Env::new(4, "512M");
    env.ok(&["pool", "create", "p"]);
    let id = Uuid::new_v4();
    let disk = Disk::create(env.path("disk.img"), 48 << 20, 3);
    env.backup(&disk.path, id, "p", &time(0), &[]);
    let outdir = env.path("out");
    std::fs::create_dir(&outdir).unwrap();
    let to = outdir.join("disk.img");

    // Kill a restore while it writes (retry if one finished before it could be caught).
    let mut killed = false;
    for _ in 0..5 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tapevault"))
            .arg("--home")
            .arg(&env.home)
            .args(["restore", "--disk", &id.to_string(), "--to"])
            .arg(&to)
            .env_remove("TAPEVAULT_HOME")
            .env_remove("TAPEVAULT_NOW")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        loop {
            if writes_into(pid, &outdir) {
                let _ = child.kill();
                let st = child.wait().unwrap();
                killed = st.code().is_none();
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if killed {
            break;
        }
        let _ = std::fs::remove_file(&to);
    }
    if !killed {
        eprintln!("skipped: every restore finished before it could be killed");
        return;
    }
    assert!(!to.exists(), "a killed restore must not leave its target");
    let left = others(&outdir, &[]);
    if !left.is_empty() {
        // A filesystem without unnamed files: the next restore there cleans up.
        eprintln!("the killed restore left {left:?} (no O_TMPFILE here)");
    }
    // The next restore into the same place succeeds and leaves only its target.
    let r = env.restore(id, &[], &to);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&disk.path, &to);
    assert_eq!(others(&outdir, &["disk.img"]), Vec::<String>::new());
}

#[test]
fn a_damaged_key_file_is_exit_5_naming_it() {
    let env = Env::new(4, "128M");
    Keystore::open(&env.home)
        .unwrap()
        .with_kdf(KdfParams::INSECURE_FOR_TESTS)
        .create("k1", PASS.as_bytes())
        .unwrap();
    env.ok(&["pool", "create", "sec", "--encrypt-key", "k1"]);
    let id = Uuid::new_v4();
    let disk = Disk::create(env.path("disk.img"), 1 << 20, 9);
    env.backup(&disk.path, id, "sec", &time(0), &[]);

    let key = env.home.join("keys/k1.key");
    let orig = std::fs::read(&key).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad magic", {
            let mut b = orig.clone();
            b[0] ^= 0xff;
            b
        }),
        ("truncated", orig[..orig.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("text", b"not a key at all\n".to_vec()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&key, &bytes).unwrap();
        let out = env.path("out.img");
        let r = env.restore(id, &[], &out);
        assert_eq!(r.code, 5, "{what}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("k1.key"), "{what}: {}", r.stderr);
        assert!(r.stderr.contains("key import"), "{what}: {}", r.stderr);
        assert!(!out.exists());
        // A backup to the pool says the same.
        let d = disk.path.to_str().unwrap().to_string();
        let r = env.run(&[
            "backup",
            "--disk",
            &d,
            "--disk-id",
            &id.to_string(),
            "--pool",
            "sec",
        ]);
        assert_eq!(r.code, 5, "{what}: backup: {}", r.stderr);
        assert!(r.stderr.contains("k1.key"), "{what}: {}", r.stderr);
    }
    std::fs::write(&key, &orig).unwrap();
    let out = env.path("ok.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
