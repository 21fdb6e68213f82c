//! Restore and verify of an encrypted pool: the key comes from the keystore, a wrong
//! passphrase or a missing key is exit 5 naming the key, and nothing is written.

#[path = "restore_support.rs"]
mod support;

use support::*;
use tapevault::crypto::{KdfParams, Keystore};
use uuid::Uuid;

#[test]
fn encrypted_chain_restores_and_a_missing_key_exits_5() {
    let env = Env::new(4, "128M");
    let info = Keystore::open(&env.home)
        .unwrap()
        .with_kdf(KdfParams::INSECURE_FOR_TESTS)
        .create("k1", PASS.as_bytes())
        .unwrap();
    env.ok(&["pool", "create", "sec", "--encrypt-key", "k1"]);
    let id = Uuid::new_v4();
    let mut disk = Disk::create(env.path("disk.img"), 2 << 20, 11);
    let full = env.backup(&disk.path, id, "sec", &time(0), &[]);
    disk.scribble(3);
    env.backup(&disk.path, id, "sec", &time(1), &[]);
    assert_eq!(
        env.catalog()
            .image(full)
            .unwrap()
            .unwrap()
            .key_fingerprint
            .as_deref(),
        Some(info.fingerprint.as_str())
    );

    let out = env.path("out.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&disk.path, &out);

    // Every tape file of the cartridge, including the encrypted catalog snapshot.
    let bc = env.segments(full)[0].barcode.clone();
    let r = env.run(&["--json", "verify", "--barcode", &bc]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert!(v["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == "catalog snapshot" && f["digest_checked"] == true));

    // Wrong passphrase: exit 5.
    let pf = env.path("wrong.pass");
    std::fs::write(&pf, "not it\n").unwrap();
    let out = env.path("wrong.img");
    let r = env.run(&[
        "--passphrase-file",
        pf.to_str().unwrap(),
        "restore",
        "--disk",
        &id.to_string(),
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(!out.exists());

    // The key gone from the keystore: exit 5 naming the fingerprint.
    std::fs::rename(env.home.join("keys/k1.key"), env.path("k1.key.away")).unwrap();
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains(&info.fingerprint), "{}", r.stderr);
    assert!(!out.exists());
    let r = env.run(&["verify", "--image", &full.to_string()]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert_eq!(
        env.catalog().image(full).unwrap().unwrap().status.as_str(),
        "complete"
    );
}

/// A clear record with valid CRCs spliced into an encrypted image is refused: it is
/// not authenticated, so it must never reach the output.
#[test]
fn clear_record_spliced_into_an_encrypted_image_is_refused() {
    use tape_devices::changer::TapeLibrary;
    use tape_formats::{decode_block, encode_data_record, Block, DataFields, RecordCrypto};

    let env = Env::new(4, "128M");
    Keystore::open(&env.home)
        .unwrap()
        .with_kdf(KdfParams::INSECURE_FOR_TESTS)
        .create("k1", PASS.as_bytes())
        .unwrap();
    env.ok(&["pool", "create", "sec", "--encrypt-key", "k1"]);
    let id = Uuid::new_v4();
    let disk = Disk::create(env.path("disk.img"), 1 << 20, 12);
    let full = env.backup(&disk.path, id, "sec", &time(0), &[]);
    let seg = env.segments(full)[0].clone();

    let mut lib = env.library();
    lib.changer().load(&seg.barcode, 0).unwrap();
    {
        let mut d = lib.open_drive(0).unwrap();
        d.locate(seg.first_block).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let n = match d.read_block(&mut buf).unwrap() {
            tape_devices::drive::ReadOutcome::Block(n) => n,
            o => panic!("{o:?}"),
        };
        let Block::Data(rec) = decode_block(&buf[..n]).unwrap() else {
            panic!("not a data record")
        };
        let fields = DataFields {
            crypto: RecordCrypto::None,
            compression: tape_formats::Compression::None,
            ..rec.fields
        };
        let forged_payload = vec![0x5a; rec.fields.plain_len as usize];
        let mut forged = Vec::new();
        encode_data_record(&fields, &rec.extents, &forged_payload, &mut forged).unwrap();
        d.locate(seg.first_block).unwrap();
        d.write_block(&forged).unwrap();
        d.write_filemarks(1, false).unwrap();
    }
    lib.changer().unload(0).unwrap();

    let out = env.path("out.img");
    let r = env.restore(id, &[], &out);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("not written by this image's backup"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}
