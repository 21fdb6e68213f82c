//! VM manifests and changed-extents files: parsing and the errors users see.

use std::path::Path;

use tapevault::extents::Extent;
use tapevault::source::changed::{ChangedExtents, ChangedExtentsError};
use tapevault::source::manifest::{ManifestError, VmManifest};

const ID1: &str = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d11";
const ID2: &str = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d12";

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn manifest_loads_disks_resolved_against_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "vm1.toml",
        &format!("name = \"vm1\"\n[[disk]]\nid = \"{ID1}\"\npath = \"d0.raw\"\nchanged_extents = \"d0.json\"\n[[disk]]\nid = \"{ID2}\"\npath = \"/dev/null\"\n"),
    );
    let m = VmManifest::load(&p).unwrap();
    assert_eq!(m.name, "vm1");
    assert_eq!(m.disks.len(), 2);
    assert_eq!(m.disks[0].id.to_string(), ID1);
    assert_eq!(m.disks[0].path, dir.path().join("d0.raw"));
    assert_eq!(m.disks[0].changed_extents, Some(dir.path().join("d0.json")));
    assert_eq!(m.disks[1].changed_extents, None);
}

fn load_err(text: &str) -> (ManifestError, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.toml", text);
    let e = VmManifest::load(&p).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bad.toml"), "error names the file: {msg}");
    (e, msg)
}

#[test]
fn manifest_with_invalid_uuid_names_the_field() {
    let (e, msg) = load_err("name = \"vm\"\n[[disk]]\nid = \"not-a-uuid\"\npath = \"a\"\n");
    assert!(
        matches!(e, ManifestError::Field { ref field, .. } if field == "disk[0].id"),
        "{msg}"
    );
    assert!(msg.contains("not-a-uuid"), "{msg}");
}

#[test]
fn manifest_with_nil_uuid_is_rejected() {
    let (e, _) = load_err(
        "name = \"vm\"\n[[disk]]\nid = \"00000000-0000-0000-0000-000000000000\"\npath = \"a\"\n",
    );
    assert!(matches!(e, ManifestError::Field { ref field, .. } if field == "disk[0].id"));
}

#[test]
fn manifest_with_duplicate_disk_ids_is_rejected() {
    // Same UUID spelt in two cases is the same disk.
    let (e, msg) = load_err(&format!(
        "name = \"vm\"\n[[disk]]\nid = \"{ID1}\"\npath = \"a\"\n[[disk]]\nid = \"{}\"\npath = \"b\"\n",
        ID1.to_uppercase()
    ));
    assert!(
        matches!(
            e,
            ManifestError::DuplicateDiskId {
                first: 0,
                second: 1,
                ..
            }
        ),
        "{msg}"
    );
}

#[test]
fn manifest_missing_fields_and_typos_are_rejected() {
    let (e, msg) = load_err(&format!("[[disk]]\nid = \"{ID1}\"\npath = \"a\"\n"));
    assert!(
        matches!(e, ManifestError::Syntax { .. }) && msg.contains("name"),
        "{msg}"
    );
    let (e, msg) = load_err("name = \"vm\"\n");
    assert!(
        matches!(e, ManifestError::Field { ref field, .. } if field == "disk"),
        "{msg}"
    );
    let (e, msg) = load_err(&format!(
        "name = \"vm\"\n[[disk]]\nid = \"{ID1}\"\npath = \"a\"\nchanged_extent = \"x\"\n"
    ));
    assert!(
        matches!(e, ManifestError::Syntax { .. }) && msg.contains("changed_extent"),
        "{msg}"
    );
    // A disk must say where it is read from: a path or a source.
    let (e, msg) = load_err(&format!("name = \"vm\"\n[[disk]]\nid = \"{ID1}\"\n"));
    assert!(
        matches!(e, ManifestError::Field { .. }) && msg.contains("neither path nor source"),
        "{msg}"
    );
    let (e, _) = load_err("name = \"\"\n");
    assert!(matches!(e, ManifestError::Field { ref field, .. } if field == "name"));
    let (e, _) = load_err("name = [\n");
    assert!(matches!(e, ManifestError::Syntax { .. }));
}

#[test]
fn manifest_that_does_not_exist_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = VmManifest::load(&dir.path().join("none.toml")).unwrap_err();
    assert!(matches!(e, ManifestError::Input(_)));
}

fn changed(text: &str, disk_size: u64) -> Result<ChangedExtents, ChangedExtentsError> {
    ChangedExtents::from_reader(text.as_bytes(), Path::new("cbt.json"), disk_size)
}

fn exts(c: &ChangedExtents) -> Vec<(u64, u64)> {
    c.iter()
        .map(|e| e.map(|e| (e.offset, e.len)))
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn changed_areas_are_sorted_merged_and_zero_lengths_dropped() {
    let c = changed(
        r#"{"from_change_id": "52 aa/1", "change_id": "52 aa/9", "startOffset": 0, "length": 1000,
            "changed_area": [{"start": 500, "length": 100}, {"start": 0, "length": 10},
                             {"start": 550, "length": 100}, {"start": 650, "length": 50},
                             {"start": 900, "length": 0}, {"start": 1000, "length": 0}]}"#,
        1000,
    )
    .unwrap();
    assert_eq!(c.from_change_id, "52 aa/1");
    assert_eq!(c.change_id, "52 aa/9");
    assert_eq!(exts(&c), vec![(0, 10), (500, 200)]);
}

#[test]
fn changed_area_beyond_disk_is_rejected_with_its_index() {
    let e = changed(
        r#"{"from_change_id": "a", "change_id": "b",
            "changed_area": [{"start": 0, "length": 10}, {"start": 990, "length": 11}]}"#,
        1000,
    )
    .unwrap_err();
    match e {
        ChangedExtentsError::BeyondDisk {
            index,
            start,
            length,
            disk_size,
            ..
        } => {
            assert_eq!((index, start, length, disk_size), (1, 990, 11, 1000));
        }
        other => panic!("unexpected {other}"),
    }
    // Overflowing start + length is also beyond the disk.
    let e = changed(
        r#"{"from_change_id": "a", "change_id": "b",
            "changed_area": [{"start": 18446744073709551615, "length": 2}]}"#,
        1000,
    )
    .unwrap_err();
    assert!(matches!(e, ChangedExtentsError::BeyondDisk { .. }));
}

#[test]
fn changed_file_missing_fields_or_bad_json_is_invalid() {
    for text in [
        r#"{"change_id": "b", "changed_area": []}"#,
        r#"{"from_change_id": "a", "changed_area": []}"#,
        r#"{"from_change_id": "a", "change_id": "b"}"#,
        r#"{"from_change_id": "", "change_id": "b", "changed_area": []}"#,
        r#"{"from_change_id": "a", "change_id": "b", "changed_area": [{"start": -1, "length": 1}]}"#,
        r#"{"from_change_id": "a", "change_id": "b", "changed_area": [{"start": 1}]}"#,
        r#"{"from_change_id": "a", "change_id": "b", "changed_area": []} trailing"#,
        r#"["not an object"]"#,
    ] {
        let e = changed(text, 1000).unwrap_err();
        assert!(
            matches!(e, ChangedExtentsError::Invalid { .. }),
            "{text}: {e}"
        );
        assert!(e.to_string().contains("cbt.json"));
    }
}

#[test]
fn changed_areas_align_to_tracking_blocks_clipped_to_disk() {
    let c = changed(
        r#"{"from_change_id": "a", "change_id": "b",
            "changed_area": [{"start": 5, "length": 10}, {"start": 70, "length": 1},
                             {"start": 200, "length": 50}]}"#,
        250,
    )
    .unwrap();
    let a: Vec<Extent> = c.aligned(64, 250).unwrap().to_vec().unwrap();
    assert_eq!(a, vec![Extent::new(0, 128), Extent::new(192, 58)]);
    assert!(c.aligned(48, 250).is_err());
}

#[test]
fn changed_file_loads_from_disk_and_missing_file_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "c.json",
        r#"{"from_change_id": "a", "change_id": "b", "changed_area": [{"start": 0, "length": 4096}]}"#,
    );
    assert_eq!(
        exts(&ChangedExtents::load(&p, 4096).unwrap()),
        vec![(0, 4096)]
    );
    assert!(matches!(
        ChangedExtents::load(&dir.path().join("none.json"), 4096),
        Err(ChangedExtentsError::Input(_))
    ));
}
