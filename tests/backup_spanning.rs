//! End to end through the binary: an image larger than two cartridges spans at early
//! warning over at least three, and restores bit-identical.

mod common;

use common::*;

#[test]
fn an_image_larger_than_two_cartridges_spans_three_and_restores() {
    // 4 MiB cartridges (early warning 512 KiB before the end), a 12 MiB disk of random
    // data, no compression: at least three cartridges.
    let v = Vault::init(&[
        "--slots",
        "6",
        "--drives",
        "1",
        "--capacity",
        "4M",
        "--early-warning",
        "512K",
    ]);
    v.pool("p", "off");
    let mut d = TestDisk::create(v.path("big.img"), 12 * MIB, 12 * MIB, 51);
    d.write_zeros(5 * MIB, MIB);
    let full = v.backup(&d, "p", &[]);
    assert_eq!(s(&full, "kind"), "full");
    let carts: Vec<String> = full["barcodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(
        carts.len() >= 3,
        "11 MiB of data on 4 MiB cartridges: {carts:?}"
    );
    let full_copy = v.path("full.copy");
    d.save_copy(&full_copy);

    // Every part of the image is in the catalog: segments on each cartridge, in order,
    // covering the disk without gaps between parts.
    let cat = v.catalog();
    let segs = cat.segments(s(&full, "image").parse().unwrap()).unwrap();
    let mut seen: Vec<String> = Vec::new();
    for sg in &segs {
        if seen.last() != Some(&sg.barcode) {
            seen.push(sg.barcode.clone());
        }
    }
    assert_eq!(seen, carts, "segments follow the cartridges in order");
    let parts: std::collections::BTreeSet<u32> = segs.iter().map(|s| s.part).collect();
    assert_eq!(parts.len(), carts.len(), "one part per cartridge");
    for w in segs.windows(2) {
        assert_eq!(
            w[0].last_seq + 1,
            w[1].first_seq,
            "records continue across parts"
        );
    }
    // The filled cartridges are marked full and belong to one media set.
    let media = cat.list_media(Some("p")).unwrap();
    for bc in &carts[..carts.len() - 1] {
        let m = media.iter().find(|m| &m.barcode == bc).unwrap();
        assert_eq!(m.state.as_str(), "full", "{bc} reached early warning");
    }
    let sets: std::collections::BTreeSet<_> = media
        .iter()
        .filter(|m| carts.contains(&m.barcode))
        .map(|m| m.media_set_uuid)
        .collect();
    assert_eq!(sets.len(), 1);
    let seqs: Vec<_> = carts
        .iter()
        .map(|bc| media.iter().find(|m| &m.barcode == bc).unwrap().seq_in_set)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    drop(cat);

    // An incremental appends on the last cartridge of the set.
    let areas = d.random_writes(3, 100 * KIB);
    let inc = v.backup(&d, "p", &[]);
    assert_eq!(s(&inc, "kind"), "incremental");
    assert_eq!(
        inc["barcodes"][0].as_str(),
        carts.last().map(|s| s.as_str()),
        "{inc}"
    );
    assert_eq!(
        u(&inc, "data_bytes") + u(&inc, "zero_bytes"),
        tracked_bytes(&areas, d.size())
    );

    v.assert_catalog_consistent();

    let out = v.path("full.restored");
    let r = v.restore_image(d.id, s(&full, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &full_copy, "the spanned full");
    let out = v.path("inc.restored");
    let r = v.restore_image(d.id, s(&inc, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &d.path, "the incremental on the spanned full");
}

#[test]
fn an_early_warning_zone_smaller_than_one_record_still_spans() {
    // 1 MiB cartridges: the library clamps the early-warning zone to an eighth of the
    // capacity (128 KiB), less than one 512 KiB record. A record that starts before the
    // zone can end past the cartridge's end; the backup must still span, not stop
    // asking for media.
    let v = Vault::init(&[
        "--slots",
        "12",
        "--drives",
        "1",
        "--capacity",
        "1M",
        "--early-warning",
        "512K",
    ]);
    v.pool("p", "off");
    let d = TestDisk::create(v.path("big.img"), 4 * MIB, 4 * MIB, 52);
    let full = v.backup(&d, "p", &[]);
    let carts = full["barcodes"].as_array().unwrap();
    assert!(carts.len() >= 5, "4 MiB on 1 MiB cartridges: {carts:?}");
    v.assert_catalog_consistent();
    let out = v.path("full.restored");
    let r = v.restore_image(d.id, s(&full, "image"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out, &d.path, "the full spanned over small cartridges");
    let r = v.run(&["verify", "--image", s(&full, "image")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
