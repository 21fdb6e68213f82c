//! Cartridges of the first format stay readable: images written by tapevault before
//! format major 2 (their headers and trailers are major 1, their content digest the
//! digest of the bytes, docs/FORMAT.md 4.4) are rebuilt into a new catalog, restored bit
//! for bit, verified, and copied (a copy keeps its original's major, so under the same
//! key its digest is the original's), while a new backup writes major 2 beside them.
//!
//! The fixture (`tests/fixtures/format-major1/`, see its README) is a virtual library
//! written by tapevault at 55eaa55: a clear full and incremental of disk A, an encrypted
//! full and incremental of disk B, the key export and its passphrase, and the disks as
//! they were at each point (zstd).

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;

const DISK_A: &str = "0a1d0000-0000-4000-8000-00000000000a";
const DISK_B: &str = "0a1d0000-0000-4000-8000-00000000000b";
/// (disk, image, expected file) of the four points on the fixture's cartridges.
const POINTS: [(&str, &str, &str); 4] = [
    (DISK_A, "0ea74f6d-0a8a-4bb6-a69b-a4fd5a938589", "a-full"),
    (DISK_A, "60854d95-4645-4f72-982c-eaf2ccf78439", "a-inc"),
    (DISK_B, "e1fa048f-2754-4498-a451-6b851dda6218", "b-full"),
    (DISK_B, "cb969305-21e4-425f-a24d-13e0802c51dc", "b-inc"),
];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-major1")
}

/// The disk as it was at a fixture point.
fn expected(name: &str) -> Vec<u8> {
    let z = std::fs::read(fixture().join(format!("expected/{name}.img.zst"))).unwrap();
    zstd::decode_all(&z[..]).unwrap()
}

/// (image UUID, format major) of every image header on a virtual cartridge, read from
/// its raw blocks (the simulator's index: a 16-byte header, then 16-byte entries:
/// offset u64 LE, length u32 LE with bit 31 = filemark, CRC-32).
fn header_majors(cartridge: &Path) -> Vec<(uuid::Uuid, u16)> {
    let index = std::fs::read(cartridge.join("index")).unwrap();
    let data = std::fs::File::open(cartridge.join("data")).unwrap();
    let mut out = Vec::new();
    for e in index[16..].chunks_exact(16) {
        let off = u64::from_le_bytes(e[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(e[8..12].try_into().unwrap());
        if len & (1 << 31) != 0 || len < 44 {
            continue;
        }
        let mut b = [0u8; 44];
        data.read_exact_at(&mut b, off).unwrap();
        if u16::from_le_bytes([b[12], b[13]]) == 0x0010 {
            let image = uuid::Uuid::from_bytes(b[28..44].try_into().unwrap());
            out.push((image, u16::from_le_bytes([b[8], b[9]])));
        }
    }
    out
}

fn majors_in(library: &Path) -> std::collections::HashMap<uuid::Uuid, u16> {
    let mut all = std::collections::HashMap::new();
    for e in std::fs::read_dir(library.join("cartridges")).unwrap() {
        let dir = e.unwrap().path();
        if dir.join("index").is_file() && dir.join("data").is_file() {
            for (image, major) in header_majors(&dir) {
                let before = all.insert(image, major);
                assert!(
                    before.is_none() || before == Some(major),
                    "image {image} has parts of majors {before:?} and {major}"
                );
            }
        }
    }
    all
}

#[test]
fn first_format_images_rebuild_restore_verify_and_copy_beside_new_ones() {
    let kept = tempfile::tempdir().unwrap();
    let library = kept.path().join("library");
    copy_dir(&fixture().join("library"), &library);
    // Git keeps no empty directories: the library's (empty) outside shelf.
    std::fs::create_dir_all(library.join("outside")).unwrap();
    let lib = library.to_str().unwrap().to_string();
    let pass = fixture().join("pass");
    let pf = pass.to_str().unwrap().to_string();
    let key = fixture().join("old1.key");

    // A new home adopts the old library; the catalog comes back from the media.
    let v = Vault::init(&["--library", &lib]);
    v.ok(&["key", "import", key.to_str().unwrap()]);
    v.ok(&["--passphrase-file", &pf, "catalog", "rebuild"]);
    v.ok(&["catalog", "check"]);
    let majors = majors_in(&library);
    for (_, image, _) in POINTS {
        assert_eq!(
            majors.get(&image.parse().unwrap()),
            Some(&1),
            "fixture image {image} is of the first format"
        );
    }

    // Every point restores bit for bit, its digest of the bytes checked.
    for (disk, image, name) in POINTS {
        let to = v.path(&format!("{name}.img"));
        let t = to.to_str().unwrap();
        let r = v.ok(&[
            "--passphrase-file",
            &pf,
            "restore",
            "--disk",
            disk,
            "--image",
            image,
            "--to",
            t,
        ]);
        assert_eq!(
            std::fs::read(&to).unwrap(),
            expected(name),
            "{name} ({image}) restored: {r}"
        );
    }
    for barcode in ["TV0001L9", "TV0002L9"] {
        v.ok(&["--passphrase-file", &pf, "verify", "--barcode", barcode]);
    }

    // Copies (two drives: streamed) into a clear pool: the clear images' copies carry
    // the original's digest, the encrypted ones' are checked by the feed under the
    // source's key; every copy keeps major 1.
    v.pool("copies", "off");
    let c = v.ok(&[
        "--passphrase-file",
        &pf,
        "copy",
        "--to-pool",
        "copies",
        "--all-uncopied",
    ]);
    let copied = c["copied"].as_array().expect("copied").clone();
    assert_eq!(copied.len(), 4, "{c}");
    let majors = majors_in(&library);
    let mut copy_cartridges = Vec::new();
    for cp in &copied {
        let copy: uuid::Uuid = s(cp, "copy").parse().unwrap();
        assert_eq!(
            majors.get(&copy),
            Some(&1),
            "copy {copy} keeps major 1: {cp}"
        );
        let orig = s(cp, "image");
        if orig == POINTS[0].1 || orig == POINTS[1].1 {
            // Clear original, clear copy: the same digest.
            assert_eq!(s(cp, "digest"), v.image_row(orig).content_digest.unwrap());
        }
        for b in cp["barcodes"].as_array().unwrap() {
            copy_cartridges.push(b.as_str().unwrap().to_string());
        }
    }
    copy_cartridges.sort();
    copy_cartridges.dedup();
    for barcode in &copy_cartridges {
        v.ok(&["--passphrase-file", &pf, "verify", "--barcode", barcode]);
    }

    // A new backup beside them: major 2 (the piece digest), restored bit for bit.
    let disk = v.path("disk-a.img");
    let mut bytes = expected("a-inc");
    bytes[5000..70_000].fill(0x77);
    std::fs::write(&disk, &bytes).unwrap();
    let j = v.ok(&[
        "backup",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-id",
        DISK_A,
        "--pool",
        "clear",
    ]);
    let new = s(&j["images"][0], "image").to_string();
    assert_eq!(
        majors_in(&library).get(&new.parse().unwrap()),
        Some(&2),
        "a new image is written with major 2: {j}"
    );
    let to = v.path("new.img");
    v.ok(&[
        "restore",
        "--disk",
        DISK_A,
        "--image",
        &new,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&to).unwrap(), bytes);
    v.ok(&["--passphrase-file", &pf, "verify", "--barcode", "TV0001L9"]);
    v.assert_catalog_consistent();
}
