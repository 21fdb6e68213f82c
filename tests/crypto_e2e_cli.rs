//! Encryption end to end through the binary: what reaches the cartridges, key
//! rotation, export/import, nonce uniqueness across relabel and overwrite, missing keys
//! and wrong passphrases, key escrow.
#[path = "encryption_support.rs"]
mod support;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;

use support::*;
use tape_formats::{decode_block, Block, RecordCrypto};
use tapevault::crypto::escrow;

#[test]
fn canary_reaches_clear_cartridges_but_no_byte_of_encrypted_ones() {
    let env = Env::init();
    let disk = env.path("disk.img");
    canary_disk(&disk, 3, 1);
    let fp = env.create_key("k1");
    env.create_pool("clear", None, false);
    env.create_pool("secret", Some("k1"), false);
    let clear = env.backup(&disk, DISK_A, "clear");
    let secret = env.backup(&disk, DISK_A, "secret");
    let clear_carts = cartridges_of(&clear);
    let secret_carts = cartridges_of(&secret);
    assert!(clear_carts.iter().all(|c| !secret_carts.contains(c)));

    // The check can fail: with a clear pool the canary is on tape.
    let clear_bytes: Vec<u8> = clear_carts
        .iter()
        .flat_map(|c| files_under(&env.cartridge_dir(c)))
        .flat_map(|(_, b)| b)
        .collect();
    assert!(
        contains(&clear_bytes, CANARY),
        "canary missing from the clear cartridge"
    );

    // Encrypted: in no byte of any file of the cartridge (data, index, metadata).
    for c in &secret_carts {
        for (path, bytes) in files_under(&env.cartridge_dir(c)) {
            assert!(
                !contains(&bytes, CANARY),
                "plaintext canary found in {}",
                path.display()
            );
        }
    }

    // Every data record and snapshot chunk is sealed under k1, and opens with it.
    let key = env.unlock("k1");
    assert_eq!(key.fingerprint_hex(), fp);
    let dir = env.cartridge_dir(&secret_carts[0]);
    let (mut records, mut chunks) = (0, 0);
    for b in blocks(&dir) {
        let crypto = match decode_block(&b).unwrap() {
            Block::Data(r) => {
                records += 1;
                r.fields.crypto
            }
            Block::SnapshotChunk(c) => {
                chunks += 1;
                c.fields.crypto
            }
            _ => continue,
        };
        match crypto {
            RecordCrypto::Aes256Gcm {
                key_fingerprint, ..
            } => assert_eq!(key_fingerprint, key.fingerprint),
            RecordCrypto::None => panic!("an unencrypted record on an encrypted pool's cartridge"),
        }
    }
    assert_eq!(records, 6, "3 MiB in 512 KiB records");
    assert!(chunks >= 1, "a catalog snapshot is on tape");
    let ring1 = ring(vec![key]);
    let mut restored = Vec::new();
    for b in data_blocks(&dir) {
        restored.extend(open_data(&ring1, &b).unwrap());
    }
    assert_eq!(restored, std::fs::read(&disk).unwrap());

    // The catalog snapshot: the clear one reads without a key and names the image; the
    // encrypted one needs the key, and its text is nowhere in the cartridge's bytes.
    let image = secret["images"][0]["image"].as_str().unwrap().to_string();
    let clear_image = clear["images"][0]["image"].as_str().unwrap().to_string();
    let clear_snaps = open_snapshots(&ring(vec![]), &env.cartridge_dir(&clear_carts[0])).unwrap();
    assert!(contains(
        clear_snaps.last().unwrap(),
        clear_image.as_bytes()
    ));
    let err = open_snapshots(&ring(vec![]), &dir).unwrap_err();
    assert!(err.contains(&fp), "{err}");
    let snaps = open_snapshots(&ring1, &dir).unwrap();
    let snap = snaps.last().unwrap();
    assert!(contains(snap, image.as_bytes()));
    assert!(
        contains(snap, b"k1"),
        "the snapshot holds the pool's key name"
    );
    let all: Vec<u8> = files_under(&dir).into_iter().flat_map(|(_, b)| b).collect();
    assert!(!contains(&all, image.as_bytes()));
    assert!(!contains(&all, &snap[snap.len() / 2..snap.len() / 2 + 48]));
}

#[test]
fn new_key_for_new_backups_leaves_old_cartridges_readable_with_the_old_key() {
    let env = Env::init();
    let disk_a = env.path("a.img");
    let disk_b = env.path("b.img");
    canary_disk(&disk_a, 2, 10);
    canary_disk(&disk_b, 2, 11);
    let fp1 = env.create_key("k2025");
    env.create_pool("p2025", Some("k2025"), false);
    let old = env.backup(&disk_a, DISK_A, "p2025");
    env.ok(&[
        "key",
        "export",
        "k2025",
        "--out",
        env.path("k2025.key").to_str().unwrap(),
    ]);

    // Rotation: a new key, a new pool; the old pool cannot switch keys.
    let fp2 = env.create_key("k2026");
    assert_ne!(fp1, fp2);
    let r = env.run(&["pool", "update", "p2025", "--encrypt-key", "k2026"]);
    assert_eq!(r.code, 2, "{r:?}");
    env.create_pool("p2026", Some("k2026"), false);
    let new = env.backup(&disk_b, DISK_B, "p2026");

    let k1 = env.unlock("k2025");
    let k2 = env.unlock("k2026");
    let old_dir = env.cartridge_dir(&cartridges_of(&old)[0]);
    let new_dir = env.cartridge_dir(&cartridges_of(&new)[0]);
    assert_eq!(label_of(&old_dir).key_fingerprint, Some(k1.fingerprint));
    assert_eq!(label_of(&new_dir).key_fingerprint, Some(k2.fingerprint));
    let only_new = ring(vec![env.unlock("k2026")]);
    let both = ring(vec![k1, k2]);
    let read_all = |ring: &tapevault::codec::KeyRing, dir: &std::path::Path| {
        data_blocks(dir)
            .iter()
            .map(|b| open_data(ring, b))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.concat())
    };
    // The old cartridge needs the old key, and says which.
    let err = read_all(&only_new, &old_dir).unwrap_err();
    assert!(err.contains(&fp1), "{err}");
    assert_eq!(
        read_all(&both, &old_dir).unwrap(),
        std::fs::read(&disk_a).unwrap()
    );
    assert_eq!(
        read_all(&both, &new_dir).unwrap(),
        std::fs::read(&disk_b).unwrap()
    );

    // Restore through the binary: each image with the key it was written with.
    let old_image = old["images"][0]["image"].as_str().unwrap().to_string();
    let new_image = new["images"][0]["image"].as_str().unwrap().to_string();
    let restore = |disk: &str, image: &str, to: &str| {
        let to = env.path(to);
        let r = env.run(&[
            "restore",
            "--disk",
            disk,
            "--image",
            image,
            "--to",
            to.to_str().unwrap(),
        ]);
        (r, to)
    };
    let (r, to) = restore(DISK_A, &old_image, "old.img");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::read(to).unwrap(), std::fs::read(&disk_a).unwrap());
    let (r, to) = restore(DISK_B, &new_image, "new.img");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::read(to).unwrap(), std::fs::read(&disk_b).unwrap());

    // Retiring the old key from the keystore and bringing it back from its export.
    std::fs::remove_file(env.home.join("keys/k2025.key")).unwrap();
    let (r, to) = restore(DISK_A, &old_image, "old-nokey.img");
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains(&fp1), "names the missing key: {r:?}");
    assert!(!to.exists());
    let r = env.run(&[
        "backup",
        "--disk",
        disk_a.to_str().unwrap(),
        "--disk-id",
        DISK_A,
        "--pool",
        "p2025",
    ]);
    assert_eq!(r.code, 5, "{r:?}");
    env.ok(&["key", "import", env.path("k2025.key").to_str().unwrap()]);
    let k1 = env.unlock("k2025");
    assert_eq!(k1.fingerprint_hex(), fp1);
    assert_eq!(
        read_all(&ring(vec![k1]), &old_dir).unwrap(),
        std::fs::read(&disk_a).unwrap()
    );
    let (r, to) = restore(DISK_A, &old_image, "old-again.img");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::read(to).unwrap(), std::fs::read(&disk_a).unwrap());
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn export_and_import_round_trip_binary_and_paper_and_paper_typos_are_located() {
    let a = Env::init();
    let fp = a.create_key("offsite");
    assert_eq!(mode(&a.home.join("keys/offsite.key")), 0o600);
    assert_eq!(mode(&a.home.join("keys")), 0o700);
    let bin = a.path("offsite.key");
    let paper = a.path("offsite.txt");
    let r = a.ok(&[
        "--json",
        "key",
        "export",
        "offsite",
        "--out",
        bin.to_str().unwrap(),
    ]);
    assert_eq!(r.json()["fingerprint"], fp.as_str());
    a.ok(&[
        "key",
        "export",
        "offsite",
        "--out",
        paper.to_str().unwrap(),
        "--paper",
    ]);
    assert_eq!(mode(&bin), 0o600);
    assert_eq!(mode(&paper), 0o600);
    // Never overwrites an export; a wrong passphrase exports nothing.
    let r = a.run(&["key", "export", "offsite", "--out", bin.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    let other = a.path("other.key");
    let r = a.run_with(
        &["key", "export", "offsite", "--out", other.to_str().unwrap()],
        Some("wrong"),
        &[],
    );
    assert_eq!(r.code, 5, "{r:?}");
    assert!(!other.exists());

    let text = std::fs::read_to_string(&paper).unwrap();
    assert!(text.is_ascii() && text.contains(&fp));

    for export in [&bin, &paper] {
        let b = Env::init();
        let r = b.ok(&["--json", "key", "import", export.to_str().unwrap()]);
        assert_eq!(r.json()["fingerprint"], fp.as_str());
        assert_eq!(r.json()["name"], "offsite");
        assert_eq!(mode(&b.home.join("keys/offsite.key")), 0o600);
        let listed = b.ok(&["--json", "key", "list"]).json();
        assert_eq!(listed["keys"][0]["fingerprint"], fp.as_str());
        // The same key, behind the same passphrase.
        assert_eq!(b.unlock("offsite").fingerprint_hex(), fp);
        let r = b.run_with(
            &[
                "key",
                "export",
                "offsite",
                "--out",
                b.path("x").to_str().unwrap(),
            ],
            Some("wrong"),
            &[],
        );
        assert_eq!(r.code, 5);
        // Importing again is a no-op.
        b.ok(&["key", "import", export.to_str().unwrap()]);
    }

    // A retyped paper key with a typo: the import names the line to retype.
    let lines: Vec<&str> = text.lines().collect();
    let (idx, line) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.starts_with("03 "))
        .unwrap();
    let mut chars: Vec<char> = line.chars().collect();
    let pos = 5; // first data character of the line
    chars[pos] = if chars[pos] == 'X' { 'Y' } else { 'X' };
    let mut typo = lines.clone();
    let bad_line: String = chars.into_iter().collect();
    typo[idx] = &bad_line;
    let typo_file = a.path("typo.txt");
    std::fs::write(&typo_file, typo.join("\n")).unwrap();
    let c = Env::init();
    let r = c.run(&["key", "import", typo_file.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains(&format!("line {}", idx + 1)), "{r:?}");
    assert!(r.stderr.contains("key line 3"), "{r:?}");
    assert!(c.ok(&["--json", "key", "list"]).json()["keys"]
        .as_array()
        .unwrap()
        .is_empty());
    // Lower case, dropped header lines and extra blanks are fine.
    let relaxed: String = text
        .lines()
        .filter(|l| {
            !l.starts_with("tapevault") && !l.starts_with("name") && !l.starts_with("fingerprint")
        })
        .map(|l| l.to_lowercase() + "\n\n")
        .collect();
    std::fs::write(c.path("relaxed.txt"), relaxed).unwrap();
    let r = c.ok(&[
        "--json",
        "key",
        "import",
        c.path("relaxed.txt").to_str().unwrap(),
    ]);
    assert_eq!(r.json()["fingerprint"], fp.as_str());
}

#[test]
fn change_passphrase_rewraps_and_the_old_passphrase_stops_working() {
    let env = Env::init();
    let fp = env.create_key("k");
    let newpass = env.path("new.pass");
    std::fs::write(&newpass, "a new passphrase\n").unwrap();
    // Wrong old passphrase: exit 5, nothing changes.
    let r = env.run_with(
        &[
            "key",
            "change-passphrase",
            "k",
            "--new-passphrase-file",
            newpass.to_str().unwrap(),
        ],
        Some("wrong"),
        &[],
    );
    assert_eq!(r.code, 5, "{r:?}");
    assert_eq!(env.unlock("k").fingerprint_hex(), fp);
    // No new passphrase and no terminal: exit 5.
    let r = env.run(&["key", "change-passphrase", "k"]);
    assert_eq!(r.code, 5, "{r:?}");
    env.ok(&[
        "key",
        "change-passphrase",
        "k",
        "--new-passphrase-file",
        newpass.to_str().unwrap(),
    ]);
    let ks = env.keystore();
    assert!(ks.unlock("k", PASS.as_bytes()).is_err());
    assert_eq!(
        ks.unlock("k", b"a new passphrase")
            .unwrap()
            .fingerprint_hex(),
        fp
    );
    assert_eq!(mode(&env.home.join("keys/k.key")), 0o600);
    // From the environment too.
    let r = env.run_with(
        &["key", "change-passphrase", "k"],
        Some("a new passphrase"),
        &[("TAPEVAULT_NEW_PASSPHRASE", "the third passphrase")],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        ks.unlock("k", b"the third passphrase")
            .unwrap()
            .fingerprint_hex(),
        fp
    );
}

/// Every nonce of every sealed record and chunk on a cartridge.
fn nonces(dir: &std::path::Path) -> Vec<[u8; 12]> {
    blocks(dir)
        .iter()
        .filter_map(|b| match decode_block(b).unwrap() {
            Block::Data(r) => Some(r.fields.crypto),
            Block::SnapshotChunk(c) => Some(c.fields.crypto),
            _ => None,
        })
        .map(|c| match c {
            RecordCrypto::Aes256Gcm { nonce, .. } => nonce,
            RecordCrypto::None => panic!("unencrypted record"),
        })
        .collect()
}

#[test]
fn nonces_stay_unique_across_sessions_a_lost_counter_and_an_overwrite_elsewhere() {
    let env = Env::init();
    let disk = env.path("d.img");
    canary_disk(&disk, 2, 3);
    let fp = env.create_key("k");
    let export = env.path("k.key");
    env.ok(&["key", "export", "k", "--out", export.to_str().unwrap()]);
    env.create_pool("p", Some("k"), false);
    let first = env.backup(&disk, DISK_A, "p");
    let barcode = cartridges_of(&first)[0].clone();
    let dir = env.cartridge_dir(&barcode);
    let mut seen: Vec<[u8; 12]> = nonces(&dir);
    assert!(seen.len() >= 5, "4 records and a snapshot chunk");

    // The counter file is lost (say, restored from an old backup of the home): a new
    // random nonce space; the next session appends to the same cartridge.
    std::fs::remove_file(env.home.join(format!("keys/{fp}.nonce"))).unwrap();
    let second = env.backup(&disk, DISK_A, "p");
    assert_eq!(cartridges_of(&second), vec![barcode.clone()]);
    let now = nonces(&dir);
    assert_eq!(now[..seen.len()], seen[..], "first session still on tape");
    seen = now;
    let label1 = label_of(&dir);

    // A second installation (the key imported from its export, so a counter file of
    // its own) relabels the cartridge and overwrites it with the same key.
    let other = tempfile::tempdir().unwrap();
    let b = Env {
        home: other.path().join("home"),
        tmp: other,
    };
    b.ok(&["init", "--library", env.library_dir().to_str().unwrap()]);
    b.ok(&["key", "import", export.to_str().unwrap()]);
    b.create_pool("p", Some("k"), false);
    b.ok(&["label", &barcode, "--pool", "p", "--force"]);
    let third = b.backup(&disk, DISK_A, "p");
    assert_eq!(
        cartridges_of(&third),
        vec![barcode.clone()],
        "the relabelled cartridge is reused"
    );
    assert_ne!(
        label_of(&dir).volume_uuid,
        label1.volume_uuid,
        "overwritten"
    );
    let third_nonces = nonces(&dir);
    assert!(third_nonces.len() >= 5);
    seen.extend(&third_nonces);

    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a nonce was reused under one key");
    // Three installation ids in the nonces: original, after the loss, the other home.
    let ids: HashSet<_> = seen.iter().map(|n| n[..4].to_vec()).collect();
    assert_eq!(ids.len(), 3);
    // The same plaintext written again never gives the same ciphertext.
    let mut payloads = HashSet::new();
    for b in data_blocks(&dir) {
        assert!(payloads.insert(b[b.len() - 64..].to_vec()));
    }
}

#[test]
fn missing_key_exits_5_naming_the_fingerprint_and_wrong_passphrase_exits_5() {
    let env = Env::init();
    let disk = env.path("d.img");
    canary_disk(&disk, 1, 4);
    let fp = env.create_key("k");
    env.create_pool("p", Some("k"), false);
    let args = [
        "--json",
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK_A,
        "--pool",
        "p",
    ];

    let r = env.run_with(&args, Some("not the passphrase"), &[]);
    assert_eq!(r.code, 5, "{r:?}");
    assert_eq!(r.json()["kind"], "key");
    let r = env.run_with(&args, None, &[]);
    assert_eq!(r.code, 5, "no passphrase and no terminal: {r:?}");

    std::fs::rename(env.home.join("keys/k.key"), env.path("k.key")).unwrap();
    let r = env.run(&args);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(
        r.stderr.contains(&fp),
        "the error names the fingerprint: {r:?}"
    );
    assert_eq!(r.json()["kind"], "key");
    // Nothing was written to any cartridge.
    for c in ["TV0001L9", "TV0002L9"] {
        assert!(blocks(&env.cartridge_dir(c)).is_empty(), "{c} was written");
    }
    let r = env.run(&[
        "key",
        "export",
        "k",
        "--out",
        env.path("x").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 5);
    let r = env.run(&["pool", "create", "q", "--encrypt-key", "nosuchkey"]);
    assert_eq!(r.code, 5, "{r:?}");
    std::fs::rename(env.path("k.key"), env.home.join("keys/k.key")).unwrap();
    env.ok(&args);
}

#[test]
fn escrow_in_the_label_lets_the_passphrase_alone_recover_the_key() {
    let env = Env::init();
    let disk = env.path("d.img");
    canary_disk(&disk, 1, 5);
    let fp = env.create_key("k");
    env.create_pool("escrowed", Some("k"), true);
    env.create_pool("plain", Some("k"), false);
    let e = env.backup(&disk, DISK_A, "escrowed");
    let p = env.backup(&disk, DISK_B, "plain");
    let dir = env.cartridge_dir(&cartridges_of(&e)[0]);
    let label = label_of(&dir);
    assert_eq!(
        label.key_fingerprint.map(|f| tapevault::crypto::to_hex(&f)),
        Some(fp.clone())
    );
    assert!(!label.escrow.is_empty());
    assert!(label_of(&env.cartridge_dir(&cartridges_of(&p)[0]))
        .escrow
        .is_empty());
    // The blob tells which key it holds without the passphrase, refuses a wrong one.
    assert_eq!(
        tapevault::crypto::to_hex(&escrow::fingerprint(&label.escrow).unwrap()),
        fp
    );
    assert!(matches!(
        escrow::unwrap(&label.escrow, b"wrong"),
        Err(tapevault::crypto::CryptoError::WrongPassphrase { .. })
    ));
    let key = escrow::unwrap(&label.escrow, PASS.as_bytes()).unwrap();
    assert_eq!(key.fingerprint_hex(), fp);
    let plain: Vec<u8> = data_blocks(&dir)
        .iter()
        .flat_map(|b| {
            open_data(
                &ring(vec![escrow::unwrap(&label.escrow, PASS.as_bytes()).unwrap()]),
                b,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(plain, std::fs::read(&disk).unwrap());

    // Disaster recovery: a new home on the same library, no keystore at all.
    let lib = env.library_dir();
    let dr = tempfile::tempdir().unwrap();
    let dr_env = Env {
        home: dr.path().join("home"),
        tmp: dr,
    };
    dr_env.ok(&["init", "--library", lib.to_str().unwrap()]);
    let barcode = cartridges_of(&e)[0].clone();
    let r = dr_env.run_with(&["key", "recover", &barcode], Some("wrong"), &[]);
    assert_eq!(r.code, 5, "{r:?}");
    let r = dr_env.ok(&["--json", "key", "recover", &barcode, "--name", "k-dr"]);
    assert_eq!(r.json()["key"]["fingerprint"], fp.as_str());
    assert_eq!(dr_env.unlock("k-dr").fingerprint_hex(), fp);
    // A label without escrow says so (exit 5: the key must come from an export).
    let r = dr_env.run(&["key", "recover", &cartridges_of(&p)[0]]);
    assert_eq!(r.code, 5, "{r:?}");
}

#[test]
fn an_image_spanning_cartridges_is_sealed_for_the_part_each_record_lands_in() {
    // Records are sealed ahead of the writer; at early warning the part changes and the
    // records prepared for the old part are sealed again for the new one.
    let env = Env::init();
    let disk = env.path("big.img");
    canary_disk(&disk, 24, 6);
    env.create_key("k");
    env.create_pool("p", Some("k"), false);
    let r = env.backup(&disk, DISK_A, "p");
    let carts = cartridges_of(&r);
    assert!(
        carts.len() >= 2,
        "a 24 MiB image spans 16 MiB cartridges: {carts:?}"
    );
    let ring1 = ring(vec![env.unlock("k")]);
    let mut plain = Vec::new();
    let mut seen = HashSet::new();
    let mut parts = HashSet::new();
    let mut next_seq = 0;
    for c in &carts {
        let dir = env.cartridge_dir(c);
        for b in data_blocks(&dir) {
            let Ok(Block::Data(rec)) = decode_block(&b) else {
                unreachable!()
            };
            if rec.fields.sequence < next_seq {
                continue; // another image's records (none here) or a replay
            }
            assert_eq!(rec.fields.sequence, next_seq);
            next_seq += 1;
            parts.insert(rec.fields.part);
            assert!(!contains(&b, CANARY));
            plain.extend(open_data(&ring1, &b).unwrap());
        }
        seen.extend(nonces(&dir));
    }
    assert!(parts.len() >= 2, "records of several parts: {parts:?}");
    assert_eq!(plain, std::fs::read(&disk).unwrap());
    let all: Vec<_> = carts
        .iter()
        .flat_map(|c| nonces(&env.cartridge_dir(c)))
        .collect();
    assert_eq!(seen.len(), all.len(), "no nonce twice");
}
