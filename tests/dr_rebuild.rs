//! Disaster recovery end to end, through the binary: a history of backups (two VMs,
//! incremental chains, an image spanning cartridges, a clear and an encrypted pool, a
//! failed session), then the home is lost and rebuilt from the
//! cartridges and the exported key alone, by the fast path and by a full scan.

mod dr_support;

use std::path::Path;

use dr_support::*;

const A1: &str = "a1a1a1a1-0000-4000-8000-000000000001";
const A2: &str = "a2a2a2a2-0000-4000-8000-000000000002";
const B1: &str = "b1b1b1b1-0000-4000-8000-000000000003";

struct History {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    lib: std::path::PathBuf,
    home: std::path::PathBuf,
    key_file: std::path::PathBuf,
    key_fp: String,
}

fn build_history() -> History {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    if std::env::var_os("DR_KEEP").is_some() {
        eprintln!("history in {}", root.display());
    }
    let lib = root.join("library");
    let home = root.join("home");
    let l = lib.to_str().unwrap();
    ok(
        &home,
        &["init", "--library", l, "--capacity", "8M", "--slots", "8"],
    );
    ok(&home, &["key", "create", "k1"]);
    let key_file = root.join("k1.key");
    ok(
        &home,
        &["key", "export", "k1", "--out", key_file.to_str().unwrap()],
    );
    let keys: serde_json::Value =
        serde_json::from_str(&ok(&home, &["--json", "key", "list"])).unwrap();
    let key_fp = keys["keys"][0]["fingerprint"].as_str().unwrap().to_string();
    ok(&home, &["pool", "create", "clear"]);
    ok(&home, &["pool", "create", "secret", "--encrypt-key", "k1"]);

    let (a1, a2, b1) = (
        root.join("a1.img"),
        root.join("a2.img"),
        root.join("b1.img"),
    );
    make_disk(&a1, 4, 1);
    make_disk(&a2, 2, 2);
    make_disk(&b1, 10, 3);
    let vm_a = manifest(&root, "vm-a", &[(A1, &a1), (A2, &a2)]);
    let vm_a = vm_a.to_str().unwrap();
    let b = |home: &Path, extra: &[&str]| {
        let mut args = vec![
            "backup",
            "--disk",
            b1.to_str().unwrap(),
            "--disk-id",
            B1,
            "--vm",
            "vm-b",
            "--pool",
            "secret",
        ];
        args.extend_from_slice(extra);
        tv(home, &args)
    };
    // Clear pool: vm-a full, then incrementals (hash scan).
    ok(&home, &["backup", "--manifest", vm_a, "--pool", "clear"]);
    // Encrypted pool: a full that spans two 8 MiB cartridges.
    let o = b(&home, &[]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("early warning"),
        "the full of b1 should span cartridges:\n{}",
        show(&o)
    );
    touch_disk(&a1, 10);
    ok(&home, &["backup", "--manifest", vm_a, "--pool", "clear"]);
    touch_disk(&b1, 11);
    let o = b(&home, &[]);
    assert!(o.status.success(), "{}", show(&o));
    touch_disk(&b1, 12);
    let o = b(&home, &[]);
    assert!(o.status.success(), "{}", show(&o));
    // A failed session, the last on its cartridge: the drive loses power in the middle
    // of vm-a's first disk (a power cut injected in the simulator after 100 KiB of the
    // first disk's incremental, about 200 KiB). No snapshot follows that image. (A cut
    // after a whole image's trailer would leave a complete image on tape that the
    // catalog holds failed, never flushed before the session's commit point: a scan
    // then completes it, which the merge checks below do not expect.) (A missing disk can no
    // longer make a failed session: inputs are checked before a session starts.)
    touch_disk(&a1, 13);
    make_disk(&a2, 2, 14);
    let cartridges: Vec<std::path::PathBuf> = std::fs::read_dir(lib.join("cartridges"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for c in &cartridges {
        std::fs::write(
            c.join("faults.json"),
            serde_json::json!({"power_cut_after_bytes": 100 * 1024}).to_string(),
        )
        .unwrap();
    }
    let o = tv(&home, &["backup", "--manifest", vm_a, "--pool", "clear"]);
    for c in &cartridges {
        let _ = std::fs::remove_file(c.join("faults.json"));
    }
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let tmp = if std::env::var_os("DR_KEEP").is_some() {
        let _ = tmp.keep();
        tempfile::tempdir().unwrap()
    } else {
        tmp
    };
    History {
        _tmp: tmp,
        root,
        lib,
        home,
        key_file,
        key_fp,
    }
}

fn fresh_home(h: &History, name: &str, with_key: bool) -> std::path::PathBuf {
    let home = h.root.join(name);
    home_on_library(&home, &h.lib);
    if with_key {
        ok(&home, &["key", "import", h.key_file.to_str().unwrap()]);
    }
    home
}

#[test]
fn history_rebuilds_from_cartridges_and_keys_alone_both_ways() {
    let h = build_history();
    let orig = images(&h.home);
    let complete = orig
        .values()
        .filter(|i| i["image"]["status"] == "complete")
        .count();
    assert_eq!(complete, 7, "2 vm-a sessions (2+2 images) + 3 of b1");
    let spanned = orig
        .values()
        .filter(|i| {
            let s = i["segments"].as_array().unwrap();
            s.iter().any(|x| x["barcode"] != s[0]["barcode"])
        })
        .count();
    assert!(spanned >= 1, "an image spans cartridges");

    // Fast path.
    let fast = fresh_home(&h, "fast", true);
    let (code, rep) = json(&fast, &["catalog", "rebuild"]);
    assert_eq!(code, 0, "{rep:#}");
    let methods: Vec<&str> = rep["cartridges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert!(methods.contains(&"snapshot"), "{methods:?}");
    assert!(
        !methods.contains(&"scan"),
        "no cartridge needed a full scan: {rep:#}"
    );
    // The failed session's complete image follows the cartridge's last snapshot: only
    // that tape file was scanned.
    let scanned: u64 = rep["cartridges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["files_scanned"].as_u64().unwrap())
        .sum();
    assert!(scanned >= 1, "{rep:#}");
    let got = images(&fast);
    assert_eq!(assert_same_restore_points(&orig, &got, true), complete);
    let (code, chk) = json(&fast, &["catalog", "check", "--media"]);
    assert_eq!(code, 0, "{chk:#}");
    assert!(chk["media"]["segments_checked"].as_u64().unwrap() > 0);

    // Idempotent: again, nothing changes.
    let (code, again) = json(&fast, &["catalog", "rebuild"]);
    assert_eq!(code, 0, "{again:#}");
    for k in [
        "images_added",
        "images_updated",
        "segments_added",
        "media_added",
        "sessions_added",
    ] {
        assert_eq!(again["merged"][k], 0, "{k}: {again:#}");
    }
    assert_eq!(again["merged"]["conflicts"].as_array().unwrap().len(), 0);

    // Full scan, onto a fresh home.
    let scan = fresh_home(&h, "scan", true);
    let (code, rep) = json(&scan, &["catalog", "rebuild", "--scan"]);
    assert_eq!(code, 0, "{rep:#}");
    assert!(rep["cartridges"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| ["scan", "blank"].contains(&c["method"].as_str().unwrap())));
    let got = images(&scan);
    assert_eq!(assert_same_restore_points(&orig, &got, false), complete);
    let (code, chk) = json(&scan, &["catalog", "check", "--media"]);
    assert_eq!(code, 0, "{chk:#}");

    // A box of tapes read in batches, one cartridge per rebuild and last cartridge
    // first: a spanned image is incomplete (and refuses to restore) until the run that
    // reads its last missing part joins it with the parts earlier runs kept.
    let batches = fresh_home(&h, "batches", true);
    let mut barcodes: Vec<String> = orig
        .values()
        .flat_map(|i| i["segments"].as_array().unwrap().iter())
        .map(|s| s["barcode"].as_str().unwrap().to_string())
        .collect();
    barcodes.sort();
    barcodes.dedup();
    barcodes.reverse();
    let (span_uuid, span) = orig
        .iter()
        .find(|(_, i)| {
            let s = i["segments"].as_array().unwrap();
            i["image"]["status"] == "complete" && s.iter().any(|x| x["barcode"] != s[0]["barcode"])
        })
        .unwrap();
    let span_bcs: Vec<&str> = span["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["barcode"].as_str().unwrap())
        .collect();
    let mut seen_span_cartridges = 0;
    for (n, bc) in barcodes.iter().enumerate() {
        let (code, rep) = json(&batches, &["catalog", "rebuild", "--scan", "--barcode", bc]);
        assert!(code == 0 || code == 3, "batch {n} ({bc}): {rep:#}");
        if span_bcs.contains(&bc.as_str()) {
            seen_span_cartridges += 1;
        }
        let now = images(&batches);
        let status = now.get(span_uuid).map(|i| i["image"]["status"].clone());
        if seen_span_cartridges == 0 {
            assert_eq!(status, None, "batch {n}");
        } else if seen_span_cartridges < 2 {
            assert_eq!(status, Some("incomplete".into()), "batch {n}: {rep:#}");
            let to = h.root.join("span.partial.img");
            let o = tv(
                &batches,
                &[
                    "restore",
                    "--disk",
                    span["image"]["disk_uuid"].as_str().unwrap(),
                    "--image",
                    span_uuid,
                    "--to",
                    to.to_str().unwrap(),
                ],
            );
            assert_ne!(o.status.code(), Some(0), "{}", show(&o));
            assert!(!to.exists(), "a refused restore leaves no file");
        } else {
            assert_eq!(status, Some("complete".into()), "batch {n}: {rep:#}");
        }
    }
    assert_eq!(
        assert_same_restore_points(&orig, &images(&batches), false),
        complete
    );
    let (code, chk) = json(&batches, &["catalog", "check", "--media"]);
    assert_eq!(code, 0, "{chk:#}");
    // Once whole, nothing is kept for joining: a rebuild of everything changes nothing.
    let (code, again) = json(&batches, &["catalog", "rebuild", "--scan"]);
    assert_eq!(code, 0, "{again:#}");
    assert_eq!(again["merged"]["images_updated"], 0, "{again:#}");
    assert_eq!(again["merged"]["conflicts"].as_array().unwrap().len(), 0);

    // Every restore point restores byte-identical from the rebuilt catalogs to what the
    // original catalog gives.
    let mut restored = 0;
    for (u, i) in &orig {
        if i["image"]["status"] != "complete" {
            continue;
        }
        let disk = i["image"]["disk_uuid"].as_str().unwrap();
        let mut outs = Vec::new();
        for (name, home) in [
            ("orig", &h.home),
            ("fast", &fast),
            ("scan", &scan),
            ("batches", &batches),
        ] {
            let to = h.root.join(format!("{u}.{name}.img"));
            ok(
                home,
                &[
                    "restore",
                    "--disk",
                    disk,
                    "--image",
                    u,
                    "--to",
                    to.to_str().unwrap(),
                ],
            );
            outs.push(std::fs::read(&to).unwrap());
            std::fs::remove_file(&to).unwrap();
        }
        assert_eq!(
            outs[0].len() as u64,
            i["image"]["disk_size"].as_u64().unwrap()
        );
        assert!(
            outs[0] == outs[1],
            "image {u}: fast-path catalog restores other bytes"
        );
        assert!(
            outs[0] == outs[2],
            "image {u}: scanned catalog restores other bytes"
        );
        assert!(
            outs[0] == outs[3],
            "image {u}: catalog scanned in batches restores other bytes"
        );
        restored += 1;
    }
    assert_eq!(restored, complete);

    // A scan merged onto the snapshot-built catalog and onto the original one adds
    // nothing that contradicts them and loses nothing.
    for home in [&fast, &h.home] {
        let (code, rep) = json(home, &["catalog", "rebuild", "--scan"]);
        assert_eq!(code, 0, "{rep:#}");
        assert_eq!(
            rep["merged"]["conflicts"].as_array().unwrap().len(),
            0,
            "{rep:#}"
        );
        assert_eq!(rep["merged"]["images_updated"], 0, "{rep:#}");
        assert_eq!(
            assert_same_restore_points(&orig, &images(home), true),
            complete
        );
    }

    // Without the key: the clear pool imports, the encrypted cartridges are refused
    // with exit 5 naming the key; with the key imported they import cleanly.
    let nokey = fresh_home(&h, "nokey", false);
    let o = tv(&nokey, &["catalog", "rebuild"]);
    assert_eq!(o.status.code(), Some(5), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&h.key_fp),
        "{}",
        show(&o)
    );
    let partial = images(&nokey);
    for (u, i) in &orig {
        if i["image"]["status"] == "complete" {
            assert_eq!(
                partial.contains_key(u),
                i["image"]["pool"] == "clear",
                "image {u} of pool {}",
                i["image"]["pool"]
            );
        }
    }
    ok(&nokey, &["key", "import", h.key_file.to_str().unwrap()]);
    let (code, rep) = json(&nokey, &["catalog", "rebuild"]);
    assert_eq!(code, 0, "{rep:#}");
    assert_eq!(
        assert_same_restore_points(&orig, &images(&nokey), false),
        complete
    );
}

#[test]
fn catalog_backup_puts_the_whole_catalog_on_one_cartridge() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("home");
    new_home(&home, &root.join("lib"), "8M", 4, Some("p1"));
    ok(&home, &["pool", "create", "p2"]);
    let (d1, d2) = (root.join("d1.img"), root.join("d2.img"));
    make_disk(&d1, 2, 5);
    make_disk(&d2, 2, 6);
    for (d, id, pool) in [(&d1, A1, "p1"), (&d2, A2, "p2")] {
        backup_disk(&home, d, id, pool);
    }
    let orig = images(&home);
    let p2_cart = orig[&orig
        .iter()
        .find(|(_, i)| i["image"]["pool"] == "p2")
        .unwrap()
        .0
        .clone()]["segments"][0]["barcode"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, rep) = json(&home, &["catalog", "backup", "--barcode", &p2_cart]);
    assert_eq!(code, 0, "{rep:#}");
    // Only that cartridge is read: it now knows both pools' images.
    let fresh = root.join("fresh");
    home_on_library(&fresh, &root.join("lib"));
    let (code, rep) = json(&fresh, &["catalog", "rebuild", "--barcode", &p2_cart]);
    assert_eq!(code, 0, "{rep:#}");
    assert_eq!(rep["cartridges"][0]["method"], "snapshot");
    assert_eq!(assert_same_restore_points(&orig, &images(&fresh), true), 2);
    // Export to a file is the same document as to stdout.
    let out = root.join("export.json");
    ok(
        &fresh,
        &["catalog", "export", "--out", out.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["images"].as_array().unwrap().len(), 2);
}

/// The kind and plain length (0 when not known) of every catalog snapshot a home
/// recorded, in tape order.
fn snapshot_kinds(home: &Path) -> Vec<(String, u64, String)> {
    let raw = rusqlite::Connection::open(home.join("catalog.db")).unwrap();
    let mut st = raw
        .prepare("SELECT kind, plain_len, barcode FROM snapshots ORDER BY barcode, tape_file")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64,
                r.get(2)?,
            ))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    rows
}

#[test]
fn delta_snapshots_rebuild_the_same_catalog() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lib = root.join("library");
    let home = root.join("home");
    new_home(&home, &lib, "64M", 4, Some("p"));
    let (a, b) = (root.join("a.img"), root.join("b.img"));
    make_disk(&a, 2, 31);
    make_disk(&b, 1, 32);
    let vm = manifest(root, "vm", &[(A1, &a), (A2, &b)]);
    let vm = vm.to_str().unwrap();
    // A full, then a chain of incrementals: each session's snapshot is a delta over
    // the ones before it on the cartridge, until the deltas outgrow the full.
    ok(&home, &["backup", "--manifest", vm, "--pool", "p"]);
    for i in 0..12 {
        touch_disk(&a, 100 + i);
        ok(&home, &["backup", "--manifest", vm, "--pool", "p"]);
    }
    let kinds = snapshot_kinds(&home);
    assert_eq!(kinds.len(), 13, "one snapshot per session: {kinds:?}");
    assert_eq!(kinds[0].0, "full", "{kinds:?}");
    let deltas = kinds.iter().filter(|k| k.0 == "delta").count();
    assert!(deltas >= 6, "most sessions wrote deltas: {kinds:?}");
    // A delta carries the session, not the set: the deltas stay about the same size
    // while the full snapshots grow with the chain.
    let fulls: Vec<u64> = kinds
        .iter()
        .filter(|k| k.0 == "full")
        .map(|k| k.1)
        .collect();
    let max_delta = kinds
        .iter()
        .filter(|k| k.0 == "delta")
        .map(|k| k.1)
        .max()
        .unwrap();
    assert!(
        max_delta < *fulls.last().unwrap(),
        "a delta is smaller than the newest full snapshot: {kinds:?}"
    );
    // The newest snapshot is a delta, so the fast path has to combine the chain.
    assert_eq!(kinds.last().unwrap().0, "delta", "{kinds:?}");
    let orig = images(&home);
    assert_eq!(orig.len(), 26);

    let fast = root.join("fast");
    home_on_library(&fast, &lib);
    let (code, rep) = json(&fast, &["catalog", "rebuild"]);
    assert_eq!(code, 0, "{rep:#}");
    let carts = rep["cartridges"].as_array().unwrap();
    assert!(
        carts.iter().any(|c| c["method"] == "snapshot")
            && carts.iter().all(|c| c["method"] != "scan"),
        "the fast path combined the deltas without a scan: {rep:#}"
    );
    assert!(
        carts.iter().all(|c| c["files_scanned"] == 0),
        "no tape file was scanned: {rep:#}"
    );
    let got = images(&fast);
    assert_eq!(got.len(), orig.len(), "every image is back");
    assert_eq!(assert_same_restore_points(&orig, &got, true), 26);
    // The rebuilt home restores the newest point, and its next session writes a full
    // snapshot (a rebuild does not know the plain lengths of the chain it read).
    let out = root.join("a-restored.img");
    ok(
        &fast,
        &["restore", "--disk", A1, "--to", out.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&a).unwrap());
    touch_disk(&a, 200);
    ok(&fast, &["backup", "--manifest", vm, "--pool", "p"]);
    let after = snapshot_kinds(&fast);
    assert_eq!(after.last().unwrap().0, "full", "{after:?}");
    // And a full scan finds the same images.
    let scan = root.join("scan");
    home_on_library(&scan, &lib);
    let (code, rep) = json(&scan, &["catalog", "rebuild", "--scan"]);
    assert_eq!(code, 0, "{rep:#}");
    assert_eq!(images(&scan).len(), 28);
}

/// Adds `n` complete full images (one disk each) to `home`'s catalog, each with one
/// segment on a cartridge of the same media set that is kept in the vault, as
/// bench/catalog_scale.sh does: the next session's snapshot of the set carries them.
fn add_generated_images(home: &Path, n: u32) {
    let mut c = rusqlite::Connection::open(home.join("catalog.db")).unwrap();
    let tx = c.transaction().unwrap();
    tx.execute(
        "INSERT INTO media (barcode, volume_uuid, pool, media_set_uuid, seq_in_set, state, \
         location, labelled_at, last_written, next_tape_file, bytes_written, errors) \
         SELECT 'GEN000L8', '99999999-0000-4000-8000-000000000000', pool, media_set_uuid, \
         seq_in_set + 1, 'full', 'vault', labelled_at, last_written, ?1, bytes_written, 0 \
         FROM media WHERE media_set_uuid IS NOT NULL LIMIT 1",
        [n + 1],
    )
    .unwrap();
    let gen = "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ?1) ";
    let id = "printf('%08x-0000-4000-8000-%012x', i, i)";
    tx.execute(
        &format!(
            "{gen} INSERT INTO images (uuid, disk_uuid, vm_name, kind, disk_size, block_size, \
             session_uuid, pool, key_fingerprint, compression, started, finished, status, \
             records, plain_bytes, stored_bytes, content_digest) \
             SELECT {id}, printf('%08x-1111-4000-8000-%012x', i, i), 'gen' || i, 'full', \
             1048576, block_size, session_uuid, pool, key_fingerprint, compression, started, \
             finished, 'complete', 2, 1048576, 1048576, content_digest \
             FROM g, (SELECT * FROM images LIMIT 1)"
        ),
        [n],
    )
    .unwrap();
    tx.execute(
        &format!(
            "{gen} INSERT INTO segments (image_uuid, part, barcode, tape_file, first_block, \
             last_block, first_seq, last_seq, disk_start, disk_end) \
             SELECT {id}, 0, 'GEN000L8', i, 10 * i, 10 * i + 1, 0, 1, 0, 1048576 FROM g"
        ),
        [n],
    )
    .unwrap();
    tx.execute(
        &format!(
            "{gen} INSERT INTO image_extents (image_uuid, offset, length, is_zero) \
             SELECT {id}, 0, 1048576, 0 FROM g"
        ),
        [n],
    )
    .unwrap();
    tx.commit().unwrap();
}

/// Rows of `table` in a home's catalog, after checking its integrity (a connection of
/// its own: after a kill, opening it rolls a hot journal back first, as the next
/// tapevault command would).
fn count(home: &Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open(home.join("catalog.db")).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "catalog.db of {}", home.display());
    let made: bool = c
        .query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type='table' AND name=?1",
            [table],
            |r| r.get(0),
        )
        .unwrap();
    if !made {
        // Killed before the first open made the catalog's tables.
        return 0;
    }
    c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{table} of {}: {e}", home.display()))
}

/// A rebuild killed (SIGKILL) at any point leaves the catalog whole: without any of the
/// snapshot's images or with all of them (one transaction), never half; the next
/// command opens it in WAL mode again and a rebuild run again completes it.
#[test]
fn a_rebuild_killed_anywhere_leaves_the_catalog_old_or_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (lib, home) = (root.join("library"), root.join("home"));
    new_home(&home, &lib, "64M", 2, Some("p"));
    let d = root.join("d.img");
    make_disk(&d, 1, 41);
    backup_disk(&home, &d, A1, "p");
    add_generated_images(&home, 4000);
    touch_disk(&d, 42);
    backup_disk(&home, &d, A1, "p");
    let orig = images(&home);
    assert_eq!(orig.len(), 4002);

    // Unkilled: every image, and how long it takes.
    let whole = root.join("whole");
    home_on_library(&whole, &lib);
    let started = std::time::Instant::now();
    ok(&whole, &["catalog", "rebuild"]);
    let took = started.elapsed();
    assert_eq!(images(&whole).len(), orig.len());
    let rows = |h: &Path| [count(h, "segments"), count(h, "image_extents")];
    let whole_rows = rows(&whole);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("kill points from seed {seed}, a rebuild takes {took:?}");
    let mut x = seed | 1;
    let (mut none, mut all) = (0, 0);
    for k in 0..10u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Spread over the whole run: the k-th tenth, at a random point in it.
        let at = took.mul_f64((f64::from(k) + (x % 1000) as f64 / 1000.0) / 10.0);
        let h = root.join(format!("killed-{k}"));
        home_on_library(&h, &lib);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tapevault"))
            .arg("--home")
            .arg(&h)
            .args(["catalog", "rebuild"])
            .env_remove("TAPEVAULT_HOME")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill();
        child.wait().unwrap();
        let n = count(&h, "images");
        assert!(
            n == 0 || n == orig.len() as i64,
            "killed after {at:?}: {n} of {} images",
            orig.len()
        );
        if n == 0 {
            assert_eq!(rows(&h), [0, 0], "killed after {at:?}");
            none += 1;
        } else {
            assert_eq!(rows(&h), whole_rows, "killed after {at:?}");
            all += 1;
        }
        // The next command finds the catalog usable, in WAL mode again.
        ok(&h, &["catalog", "check"]);
        let c = rusqlite::Connection::open(h.join("catalog.db")).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal", "killed after {at:?}");
        drop(c);
        ok(&h, &["catalog", "rebuild"]);
        assert_eq!(images(&h).len(), orig.len(), "rebuilt again after a kill");
    }
    eprintln!("killed before the merge committed: {none}, after: {all}");
}
