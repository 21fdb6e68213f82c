//! Pools with drive (hardware) encryption (`encryption = "drive"` in pools.toml) through
//! the binary on the in-process virtual library, whose drives encrypt blocks at rest
//! with AES-256-GCM as the iSCSI target's do: the label stays clear and names the key,
//! every later block is the drive's ciphertext (no plaintext canary on the cartridge),
//! backup, restore and verify round-trip with the key, and a reader without the drive
//! key is refused.
#[path = "encryption_support.rs"]
mod support;

use support::*;
use tape_formats::decode_block;

/// Declare pool `hw` with key `k1` and drive encryption, and apply it.
fn drive_pool(env: &Env) -> String {
    let fp = env.create_key("k1");
    env.create_pool("hw", Some("k1"), false);
    std::fs::write(
        env.home.join("pools.toml"),
        "[pools.hw]\nencrypt_key = \"k1\"\nencryption = \"drive\"\ncompression = \"off\"\n",
    )
    .unwrap();
    env.ok(&["pool", "apply"]);
    fp
}

/// Every object of a cartridge with its index mark (encrypted or not).
fn flagged_blocks(dir: &std::path::Path) -> Vec<(Vec<u8>, bool)> {
    let mut c = vtl_sim::Cartridge::open(dir).unwrap();
    c.rewind().unwrap();
    let mut buf = vec![0u8; tape_formats::MAX_BLOCK_SIZE + 64];
    let mut out = Vec::new();
    loop {
        match c.read_block_flagged(&mut buf).unwrap() {
            (vtl_sim::Read::Block(n), e) => out.push((buf[..n].to_vec(), e)),
            (vtl_sim::Read::Filemark, _) => {}
            (vtl_sim::Read::EndOfData, _) => return out,
        }
    }
}

#[test]
fn drive_encrypted_pool_round_trips_and_leaves_no_plaintext() {
    let env = Env::init();
    let fp = drive_pool(&env);
    let disk = env.path("disk.img");
    canary_disk(&disk, 3, 7);
    let report = env.backup(&disk, DISK_A, "hw");
    let image = report["images"][0]["image"].as_str().unwrap().to_string();
    let carts = cartridges_of(&report);
    assert!(!carts.is_empty());

    // The images are not software-encrypted (the drive did it): no key in the catalog
    // row, and the records tapevault handed the drive were clear.
    let r = env.ok(&["--json", "images", "--disk", DISK_A]);
    assert!(r.stdout.contains(&image), "{r:?}");

    for c in &carts {
        let dir = env.cartridge_dir(c);
        for (path, bytes) in files_under(&dir) {
            assert!(
                !contains(&bytes, CANARY),
                "plaintext canary found in {}",
                path.display()
            );
        }
        let blocks = flagged_blocks(&dir);
        assert!(
            blocks.len() >= 3,
            "label, image header, records: {}",
            blocks.len()
        );
        // The label is clear and names the pool's key; everything after it is the
        // drive's ciphertext (marked encrypted, no tapevault block decodes from it).
        let (label, enc) = &blocks[0];
        assert!(!enc, "the label must stay clear");
        let l = label_of(&dir);
        assert_eq!(l.pool_name, "hw");
        assert_eq!(
            l.key_fingerprint.map(|f| tapevault::crypto::to_hex(&f)),
            Some(fp.clone())
        );
        assert!(decode_block(label).is_ok());
        for (i, (b, enc)) in blocks.iter().enumerate().skip(1) {
            assert!(enc, "block {i} of {c} is not marked encrypted");
            assert!(
                decode_block(b).is_err(),
                "block {i} of {c} decodes as a clear tapevault block"
            );
        }
    }

    // The check can fail: the same disk to a clear pool puts the canary on tape.
    env.create_pool("clear", None, false);
    let clear = env.backup(&disk, DISK_B, "clear");
    let clear_bytes: Vec<u8> = cartridges_of(&clear)
        .iter()
        .flat_map(|c| files_under(&env.cartridge_dir(c)))
        .flat_map(|(_, b)| b)
        .collect();
    assert!(contains(&clear_bytes, CANARY), "the search is blind");

    // Restore and verify with the key: bit-identical.
    let out = env.path("restored.img");
    env.ok(&[
        "restore",
        "--disk",
        DISK_A,
        "--image",
        &image,
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&disk).unwrap());
    env.ok(&["verify", "--image", &image]);
    env.ok(&["verify", "--barcode", &carts[0]]);
    // The media check reads the first and last record of each segment: with the key.
    env.ok(&["catalog", "check", "--media"]);

    // Without the passphrase the pool key cannot be unlocked: exit 5, nothing restored.
    let out2 = env.path("nokey.img");
    let r = env.run_with(
        &[
            "restore",
            "--disk",
            DISK_A,
            "--image",
            &image,
            "--to",
            out2.to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_eq!(r.code, 5, "{r:?}");

    // A reader that does not load the drive key (the pool no longer declared drive
    // encrypted) meets the drive's ciphertext: refused, exit 5, never garbage.
    std::fs::write(
        env.home.join("pools.toml"),
        "[pools.hw]\nencrypt_key = \"k1\"\ncompression = \"off\"\n",
    )
    .unwrap();
    let out3 = env.path("nodrivekey.img");
    let r = env.run(&[
        "restore",
        "--disk",
        DISK_A,
        "--image",
        &image,
        "--to",
        out3.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("encrypted by the drive"), "{r:?}");
    let r = env.run(&["verify", "--image", &image]);
    assert_ne!(r.code, 0, "{r:?}");

    // A missing key is not damage: declared again, the image restores and is not
    // marked corrupt.
    std::fs::write(
        env.home.join("pools.toml"),
        "[pools.hw]\nencrypt_key = \"k1\"\nencryption = \"drive\"\ncompression = \"off\"\n",
    )
    .unwrap();
    let out4 = env.path("again.img");
    env.ok(&["restore", "--disk", DISK_A, "--to", out4.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out4).unwrap(), std::fs::read(&disk).unwrap());
    let imgs = env.ok(&["--json", "images", "--disk", DISK_A]).stdout;
    assert!(!imgs.contains("corrupt"), "{imgs}");
}

#[test]
fn drive_encryption_needs_a_key_in_pools_toml() {
    let env = Env::init();
    std::fs::write(
        env.home.join("pools.toml"),
        "[pools.hw]\nencryption = \"drive\"\n",
    )
    .unwrap();
    let r = env.run(&["pool", "apply"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("encrypt_key"), "{r:?}");
    std::fs::write(
        env.home.join("pools.toml"),
        "[pools.hw]\nencrypt_key = \"k\"\nencryption = \"hardware\"\n",
    )
    .unwrap();
    let r = env.run(&["pool", "apply"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("encryption"), "{r:?}");
}

/// A fresh home on the same library, with the exported key imported.
fn dr_home(env: &Env, key_file: &std::path::Path) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let dr = Env { tmp, home };
    dr.ok(&["init", "--library", env.library_dir().to_str().unwrap()]);
    dr.ok(&["key", "import", key_file.to_str().unwrap()]);
    dr
}

#[test]
fn disaster_recovery_needs_the_declaration_and_the_key() {
    let env = Env::init();
    drive_pool(&env);
    let disk = env.path("disk.img");
    canary_disk(&disk, 2, 11);
    let report = env.backup(&disk, DISK_A, "hw");
    let cart = cartridges_of(&report)[0].clone();
    let key_file = env.path("k1.key");
    env.ok(&["key", "export", "k1", "--out", key_file.to_str().unwrap()]);

    // The key alone: the label reads (it names the key), the snapshot and the records
    // after it are the drive's ciphertext, so nothing is imported.
    let blind = dr_home(&env, &key_file);
    let r = blind.run(&["--json", "catalog", "rebuild", "--barcode", &cart]);
    assert_ne!(r.code, 0, "{r:?}");
    let imgs = blind.run(&["--json", "images", "--disk", DISK_A]);
    assert!(!imgs.stdout.contains("\"full\""), "{imgs:?}");

    // pools.toml (kept under version control) declares the pool: the rebuild loads the
    // drive key, finds the snapshot, and the disk restores bit-identical.
    let dr = dr_home(&env, &key_file);
    std::fs::write(
        dr.home.join("pools.toml"),
        "[pools.hw]\nencrypt_key = \"k1\"\nencryption = \"drive\"\ncompression = \"off\"\n",
    )
    .unwrap();
    let r = dr.ok(&["--json", "catalog", "rebuild", "--barcode", &cart]);
    assert!(r.stdout.contains("\"snapshot\""), "{r:?}");
    let out = dr.path("dr.img");
    dr.ok(&["restore", "--disk", DISK_A, "--to", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&disk).unwrap());
}

#[test]
fn a_drive_encrypted_pool_is_copied_and_the_copy_restores() {
    let env = Env::init();
    drive_pool(&env);
    let disk = env.path("disk.img");
    canary_disk(&disk, 3, 7);
    let report = env.backup(&disk, DISK_A, "hw");
    let image = report["images"][0]["image"].as_str().unwrap().to_string();
    // A clear pool on the same (one-drive) library: the copy reads the drive's
    // ciphertext with the pool's drive key loaded, through a spool.
    env.create_pool("vault", None, false);
    let spool = env.path("spool");
    std::fs::create_dir(&spool).unwrap();
    let c = env.ok(&[
        "--json",
        "copy",
        "--image",
        &image,
        "--to-pool",
        "vault",
        "--spool",
        spool.to_str().unwrap(),
        "--spool-size",
        "64M",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    let copy = doc["copied"][0]["copy"].as_str().unwrap().to_string();
    env.ok(&["verify", "--image", &copy]);
    let out = env.path("from-copy.img");
    env.ok(&[
        "restore",
        "--disk",
        DISK_A,
        "--image",
        &copy,
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&disk).unwrap());
}
