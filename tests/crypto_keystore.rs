//! Keystore, paper keys, escrow: real files in temp dirs, cheap KDF parameters.
use std::os::unix::fs::PermissionsExt;
use tapevault::crypto::{escrow, paper, CryptoError, KdfParams, Keystore, RecordKey};

fn store(dir: &tempfile::TempDir) -> Keystore {
    Keystore::open(dir.path())
        .unwrap()
        .with_kdf(KdfParams::INSECURE_FOR_TESTS)
}

#[test]
fn create_list_unlock_and_file_is_private() {
    let d = tempfile::tempdir().unwrap();
    let ks = store(&d);
    let info = ks.create("offsite", b"pw").unwrap();
    assert_eq!(info.fingerprint.len(), 32);
    let mode = std::fs::metadata(d.path().join("keys/offsite.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let list = ks.list().unwrap();
    assert_eq!(list, vec![info.clone()]);
    let k = ks.unlock("offsite", b"pw").unwrap();
    assert_eq!(k.fingerprint_hex(), info.fingerprint);
    let k2 = ks.unlock(&info.fingerprint, b"pw").unwrap();
    assert_eq!(k2.fingerprint, k.fingerprint);
    assert!(matches!(
        ks.create("offsite", b"x"),
        Err(CryptoError::DuplicateName { .. })
    ));
    assert!(matches!(
        ks.create("../evil", b"x"),
        Err(CryptoError::InvalidName { .. })
    ));
}

#[test]
fn wrong_passphrase_is_a_distinct_error() {
    let d = tempfile::tempdir().unwrap();
    let ks = store(&d);
    ks.create("k", b"right").unwrap();
    match ks.unlock("k", b"wrong") {
        Err(CryptoError::WrongPassphrase { name }) => assert_eq!(name, "k"),
        other => panic!("expected WrongPassphrase, got {other:?}"),
    }
}

#[test]
fn missing_key_names_what_is_needed() {
    let d = tempfile::tempdir().unwrap();
    let ks = store(&d);
    let fp = "00112233445566778899aabbccddeeff";
    match ks.unlock(fp, b"pw") {
        Err(e @ CryptoError::KeyMissing { .. }) => assert!(e.to_string().contains(fp)),
        other => panic!("expected KeyMissing, got {other:?}"),
    }
}

#[test]
fn tampered_key_file_is_detected_at_every_byte() {
    let d = tempfile::tempdir().unwrap();
    let ks = store(&d);
    ks.create("k", b"pw").unwrap();
    let path = d.path().join("keys/k.key");
    let orig = std::fs::read(&path).unwrap();
    for i in 0..orig.len() {
        let mut b = orig.clone();
        b[i] ^= 0x01;
        std::fs::write(&path, &b).unwrap();
        let r = ks.unlock("k", b"pw");
        assert!(
            matches!(
                r,
                Err(CryptoError::Corrupt { .. }) | Err(CryptoError::UnsupportedVersion { .. })
            ),
            "flip at byte {i} gave {r:?}"
        );
    }
    // A forger who also fixes the checksum still fails authentication (header is AAD).
    let mut b = orig.clone();
    let name_at = b.len() - (12 + 32 + 16 + 16) - 1; // last byte of the name
    b[name_at] = b'j';
    let body = b.len() - 16;
    let sum = *blake3::hash(&b[..body]).as_bytes();
    b[body..].copy_from_slice(&sum[..16]);
    std::fs::write(d.path().join("keys/j.key"), &b).unwrap();
    assert!(matches!(
        ks.unlock("j", b"pw"),
        Err(CryptoError::WrongPassphrase { .. })
    ));
    // Truncation.
    std::fs::write(&path, &orig[..orig.len() - 1]).unwrap();
    assert!(matches!(
        ks.unlock("k", b"pw"),
        Err(CryptoError::Corrupt { .. })
    ));
}

#[test]
fn export_import_round_trip_binary_and_paper() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ksa = store(&a);
    let ksb = store(&b);
    let info = ksa.create("vault", b"pw").unwrap();
    assert!(matches!(
        ksa.export("vault", b"no"),
        Err(CryptoError::WrongPassphrase { .. })
    ));
    let bin = ksa.export("vault", b"pw").unwrap();
    assert_eq!(ksb.import(&bin).unwrap(), info);
    assert_eq!(ksb.import(&bin).unwrap(), info, "re-import is a no-op");
    let ka = ksa.unlock("vault", b"pw").unwrap();
    let kb = ksb.unlock("vault", b"pw").unwrap();
    let mut x = b"data".to_vec();
    let tag = ka.seal([1; 12], b"h", &mut x);
    kb.open([1; 12], b"h", &mut x, tag).unwrap();
    assert_eq!(x, b"data");

    let c = tempfile::tempdir().unwrap();
    let ksc = store(&c);
    let text = ksa.export_paper("vault", b"pw").unwrap();
    assert!(text.contains(&info.fingerprint));
    // Lowercase, extra spaces and O/I look-alikes are all accepted.
    let relaxed = text.to_lowercase();
    assert_eq!(ksc.import(relaxed.as_bytes()).unwrap(), info);

    // A different key under the same name is refused.
    let e = tempfile::tempdir().unwrap();
    let kse = store(&e);
    kse.create("vault", b"pw").unwrap();
    assert!(matches!(
        kse.import(&bin),
        Err(CryptoError::DuplicateName { .. })
    ));
}

#[test]
fn paper_typo_is_located_by_line() {
    let d = tempfile::tempdir().unwrap();
    let ks = store(&d);
    ks.create("p", b"pw").unwrap();
    let text = ks.export_paper("p", b"pw").unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let data_lines: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert!(data_lines.len() >= 3);
    for (k, &li) in data_lines.iter().enumerate() {
        let mut l: Vec<char> = lines[li].chars().collect();
        // Change one data character (position 5 is inside the first group).
        l[5] = if l[5] == 'Z' { 'Y' } else { 'Z' };
        let mut copy: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        copy[li] = l.into_iter().collect();
        match paper::decode(&copy.join("\n")) {
            Err(CryptoError::Paper { line, reason }) => {
                assert_eq!(
                    line,
                    li + 1,
                    "typo on data line {} reported as {line}: {reason}",
                    k + 1
                );
                assert!(reason.contains(&format!("key line {}", k + 1)), "{reason}");
            }
            other => panic!("typo not caught: {other:?}"),
        }
    }
    // A dropped line is reported.
    let mut copy: Vec<&str> = lines.clone();
    copy.remove(data_lines[1]);
    assert!(matches!(
        paper::decode(&copy.join("\n")),
        Err(CryptoError::Paper { .. })
    ));
    // A dropped last line is caught by the whole-key checksum.
    let mut copy: Vec<&str> = lines.clone();
    copy.remove(*data_lines.last().unwrap());
    assert!(matches!(
        paper::decode(&copy.join("\n")),
        Err(CryptoError::Paper { .. })
    ));
}

#[test]
fn base32_round_trips() {
    for n in 0..64usize {
        let v: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
        assert_eq!(paper::base32_decode(&paper::base32_encode(&v)).unwrap(), v);
    }
}

#[test]
fn change_passphrase() {
    let d = tempfile::tempdir().unwrap();
    let ks = store(&d);
    let info = ks.create("k", b"old").unwrap();
    assert!(matches!(
        ks.change_passphrase("k", b"bad", b"new"),
        Err(CryptoError::WrongPassphrase { .. })
    ));
    ks.change_passphrase("k", b"old", b"new").unwrap();
    assert!(matches!(
        ks.unlock("k", b"old"),
        Err(CryptoError::WrongPassphrase { .. })
    ));
    assert_eq!(
        ks.unlock("k", b"new").unwrap().fingerprint_hex(),
        info.fingerprint
    );
    assert_eq!(ks.list().unwrap(), vec![info]);
}

#[test]
fn escrow_round_trip() {
    let k = RecordKey::generate();
    let blob = escrow::wrap(&k, b"label pass", KdfParams::INSECURE_FOR_TESTS).unwrap();
    assert_eq!(escrow::fingerprint(&blob).unwrap(), k.fingerprint);
    let back = escrow::unwrap(&blob, b"label pass").unwrap();
    assert_eq!(back.fingerprint, k.fingerprint);
    assert!(matches!(
        escrow::unwrap(&blob, b"nope"),
        Err(CryptoError::WrongPassphrase { .. })
    ));
    let mut bad = blob.clone();
    bad[40] ^= 4;
    assert!(matches!(
        escrow::unwrap(&bad, b"label pass"),
        Err(CryptoError::Corrupt { .. })
    ));
    // An escrowed key can be stored in a keystore.
    let d = tempfile::tempdir().unwrap();
    let ks = store(&d);
    let info = ks.add("recovered", &back, b"pw").unwrap();
    assert_eq!(info.fingerprint, k.fingerprint_hex());
}

#[test]
fn default_kdf_params_are_accepted() {
    // Only checks they are valid argon2 parameters; timing is not asserted.
    let k = RecordKey::generate();
    let p = KdfParams {
        m_cost_kib: 1024,
        ..KdfParams::default()
    };
    let blob = escrow::wrap(&k, b"x", p).unwrap();
    assert!(escrow::unwrap(&blob, b"x").is_ok());
}

/// Measurement, not a check: `cargo test --release --test crypto_keystore -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_default_kdf_cost() {
    let k = RecordKey::generate();
    let blob = escrow::wrap(&k, b"x", KdfParams::default()).unwrap();
    let t = std::time::Instant::now();
    escrow::unwrap(&blob, b"x").unwrap();
    println!(
        "default argon2id {:?}: unlock took {:?}",
        KdfParams::default(),
        t.elapsed()
    );
}

#[test]
fn paper_without_header_lines_still_imports_and_checks() {
    let a = tempfile::tempdir().unwrap();
    let ks = store(&a);
    let info = ks.create("bare", b"pw").unwrap();
    let text = ks.export_paper("bare", b"pw").unwrap();
    let bare: String = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) || l.starts_with("key checksum"))
        .map(|l| format!("{l}\n"))
        .collect();
    let b = tempfile::tempdir().unwrap();
    assert_eq!(store(&b).import(bare.as_bytes()).unwrap(), info);
    let typo = bare.replacen(|c: char| c.is_ascii_uppercase(), "0", 1);
    let c = tempfile::tempdir().unwrap();
    assert!(matches!(
        store(&c).import(typo.as_bytes()),
        Err(CryptoError::Paper { line: 1, .. })
    ));
}

#[test]
fn concurrent_creates_of_one_name_never_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let results: Vec<_> = (0..4)
        .map(|_| {
            let p = d.path().to_path_buf();
            std::thread::spawn(move || {
                Keystore::open(&p)
                    .unwrap()
                    .with_kdf(KdfParams::INSECURE_FOR_TESTS)
                    .create("race", b"pw")
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(results
        .iter()
        .filter(|r| r.is_err())
        .all(|r| matches!(r, Err(CryptoError::DuplicateName { .. }))));
    let ks = store(&d);
    assert_eq!(
        ks.unlock("race", b"pw").unwrap().fingerprint_hex(),
        winners[0].fingerprint
    );
    assert_eq!(ks.list().unwrap().len(), 1);
}
