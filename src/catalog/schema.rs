//! Versioned schema migrations, tracked in `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes a catalog from version `i` to `i + 1`. Append only: never
//! edit a released migration. A catalog newer than `MIGRATIONS.len()` is refused.

/// Migration 1: the initial schema. Times are UTC text in one fixed-width RFC 3339
/// form (`2026-11-25T06:00:00.000000Z`) so they sort as text.
const V1: &str = r#"
CREATE TABLE pools (
    name            TEXT PRIMARY KEY,
    key_name        TEXT,
    key_fingerprint TEXT,
    compression     TEXT NOT NULL,
    retention_days  INTEGER CHECK (retention_days IS NULL OR retention_days >= 0),
    allocation      TEXT NOT NULL,
    worm            INTEGER NOT NULL DEFAULT 0,
    escrow          INTEGER NOT NULL DEFAULT 0,
    created         TEXT NOT NULL,
    CHECK ((key_name IS NULL) = (key_fingerprint IS NULL))
);
CREATE TABLE media_sets (
    uuid         TEXT PRIMARY KEY,
    pool         TEXT NOT NULL,
    created      TEXT NOT NULL,
    last_write   TEXT,
    closed       INTEGER NOT NULL DEFAULT 0,
    format_major INTEGER NOT NULL
);
CREATE INDEX media_sets_pool ON media_sets(pool, created);
CREATE TABLE media (
    barcode        TEXT PRIMARY KEY,
    volume_uuid    TEXT UNIQUE,
    pool           TEXT,
    media_set_uuid TEXT REFERENCES media_sets(uuid),
    seq_in_set     INTEGER,
    state          TEXT NOT NULL CHECK (state IN ('blank','writable','full','expired','damaged','retired')),
    location       TEXT NOT NULL,
    labelled_at    TEXT,
    last_written   TEXT,
    next_tape_file INTEGER NOT NULL DEFAULT 1,
    bytes_written  INTEGER NOT NULL DEFAULT 0,
    errors         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (media_set_uuid, seq_in_set)
);
CREATE TABLE sessions (
    uuid           TEXT PRIMARY KEY,
    pool           TEXT NOT NULL,
    media_set_uuid TEXT,
    started        TEXT NOT NULL,
    finished       TEXT,
    status         TEXT NOT NULL CHECK (status IN ('running','complete','failed')),
    writer         TEXT
);
CREATE TABLE images (
    uuid            TEXT PRIMARY KEY,
    disk_uuid       TEXT NOT NULL,
    vm_name         TEXT,
    kind            TEXT NOT NULL CHECK (kind IN ('full','incremental','copy')),
    parent_uuid     TEXT,
    change_id       TEXT,
    from_change_id  TEXT,
    disk_size       INTEGER NOT NULL,
    block_size      INTEGER NOT NULL,
    session_uuid    TEXT,
    pool            TEXT,
    key_fingerprint TEXT,
    compression     TEXT NOT NULL,
    started         TEXT NOT NULL,
    finished        TEXT,
    status          TEXT NOT NULL CHECK (status IN ('running','complete','failed','incomplete','corrupt')),
    records         INTEGER NOT NULL DEFAULT 0,
    plain_bytes     INTEGER NOT NULL DEFAULT 0,
    stored_bytes    INTEGER NOT NULL DEFAULT 0,
    content_digest  TEXT,
    digest_list     TEXT,
    note            TEXT,
    writer          TEXT
);
CREATE INDEX images_disk ON images(disk_uuid, started);
CREATE INDEX images_parent ON images(parent_uuid);
CREATE TABLE segments (
    image_uuid  TEXT NOT NULL REFERENCES images(uuid) ON DELETE CASCADE,
    part        INTEGER NOT NULL,
    barcode     TEXT NOT NULL,
    tape_file   INTEGER NOT NULL,
    first_block INTEGER NOT NULL,
    last_block  INTEGER NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    disk_start  INTEGER NOT NULL,
    disk_end    INTEGER NOT NULL,
    PRIMARY KEY (image_uuid, first_seq),
    CHECK (first_block <= last_block AND first_seq <= last_seq AND disk_start <= disk_end)
);
CREATE INDEX segments_barcode ON segments(barcode);
CREATE INDEX segments_disk ON segments(image_uuid, disk_start);
CREATE TABLE image_extents (
    image_uuid TEXT NOT NULL REFERENCES images(uuid) ON DELETE CASCADE,
    offset     INTEGER NOT NULL,
    length     INTEGER NOT NULL CHECK (length > 0),
    is_zero    INTEGER NOT NULL,
    PRIMARY KEY (image_uuid, offset)
);
CREATE TABLE snapshots (
    barcode      TEXT NOT NULL,
    tape_file    INTEGER NOT NULL,
    block        INTEGER NOT NULL,
    session_uuid TEXT,
    time         TEXT NOT NULL,
    PRIMARY KEY (barcode, tape_file, block)
);
"#;

/// Migration 2: image parts read by `catalog rebuild --scan` whose image is not whole
/// yet, so a later rebuild that reads the cartridges holding the other parts can join
/// them (a box of tapes is often read in batches, as many as the library has slots).
/// `header` and `trailer` are the part's image header and trailer blocks exactly as
/// on tape; `coverage` is the part's disk coverage as JSON. Rows go when the image is
/// whole, and when the catalog forgets the cartridge's contents.
const V2: &str = r#"
CREATE TABLE scanned_parts (
    image_uuid   TEXT NOT NULL,
    barcode      TEXT NOT NULL,
    tape_file    INTEGER NOT NULL,
    part         INTEGER NOT NULL,
    header       BLOB NOT NULL,
    trailer      BLOB,
    records      INTEGER NOT NULL,
    data_bytes   INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    damaged      INTEGER NOT NULL,
    coverage     TEXT NOT NULL,
    PRIMARY KEY (image_uuid, barcode, tape_file)
);
CREATE INDEX scanned_parts_barcode ON scanned_parts(barcode);
"#;

/// Migration 3: the job history (`tapevault jobs`, `tapevault status`). One row per
/// job (backup, restore, verify, copy, rebuild, label, rotate, catalog backup, erase):
/// `result` is `running` until the job ends; a running row whose `writer` process is
/// gone reads as failed (interrupted). `cartridges`, `vms` and `disks` are JSON arrays
/// of text. The history is this home's record: it is not in the snapshots on tape.
const V3: &str = r#"
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    command     TEXT NOT NULL,
    started     TEXT NOT NULL,
    finished    TEXT,
    result      TEXT NOT NULL CHECK (result IN ('running','ok','failed','partial')),
    exit_code   INTEGER,
    bytes       INTEGER NOT NULL DEFAULT 0,
    cartridges  TEXT NOT NULL DEFAULT '[]',
    error       TEXT,
    pool        TEXT,
    vms         TEXT NOT NULL DEFAULT '[]',
    disks       TEXT NOT NULL DEFAULT '[]',
    writer      TEXT
);
CREATE INDEX jobs_started ON jobs(started);
CREATE INDEX jobs_result ON jobs(result, started);
"#;

/// Migration 4: the disk's label within its VM (`root` of `web01/root`), as the
/// manifest gave it when the image was taken; with `vm_name` it names the disk wherever
/// a disk is taken.
const V4: &str = r#"
ALTER TABLE images ADD COLUMN disk_label TEXT;
CREATE INDEX images_vm_label ON images(vm_name, disk_label);
"#;

/// Migration 5: tape-to-tape copies. A copy is an image row of its own (its own UUID,
/// segments, pool, key and content digest) whose `copy_of` names the original image it
/// duplicates; it stands for the original in every restore chain and is never listed as
/// a point of its own (see `Catalog::representations`).
const V5: &str = r#"
ALTER TABLE images ADD COLUMN copy_of TEXT;
CREATE INDEX images_copy_of ON images(copy_of);
"#;

/// Migration 6: synthetic fulls. `synthetic_of` names the image whose restore point a
/// synthetic full reproduces byte for byte (built from the chain on tape, not read
/// from the disk); NULL for every other image.
const V6: &str = r#"
ALTER TABLE images ADD COLUMN synthetic_of TEXT;
"#;

/// Migration 7: catalog snapshots on tape may be deltas (docs/FORMAT.md 4.5): each
/// snapshot location says whether it is a `full` snapshot of its media set or a
/// `delta` over the snapshots before it on the same cartridge, and its plain length
/// (NULL when not known, e.g. a location found by a rebuild: the next session then
/// writes a full one). Indexes for the queries that scanned a table with 100 k images.
const V7: &str = r#"
ALTER TABLE snapshots ADD COLUMN kind TEXT NOT NULL DEFAULT 'full' CHECK (kind IN ('full','delta'));
ALTER TABLE snapshots ADD COLUMN plain_len INTEGER;
CREATE INDEX sessions_set ON sessions(media_set_uuid, started);
CREATE INDEX images_session ON images(session_uuid);
"#;

/// Migration 8: libvirt checkpoints tapevault created, with the XML libvirt gave for
/// each (`virsh checkpoint-dumpxml`, the domain's XML included), so that a checkpoint
/// libvirt lost (the domain was undefined and defined again, its metadata deleted) can
/// be redefined with `virsh checkpoint-create --redefine`. Keyed by the domain's name
/// and the checkpoint's; a row goes when tapevault retires the checkpoint.
const V8: &str = r#"
CREATE TABLE libvirt_checkpoints (
    domain      TEXT NOT NULL,
    name        TEXT NOT NULL,
    domain_uuid TEXT,
    xml         TEXT NOT NULL,
    created     TEXT NOT NULL,
    PRIMARY KEY (domain, name)
);
"#;

/// Migration 9: images in the order every listing of them uses (`images`, rotation's
/// evaluation): with 100 k images, sorting them for each query was a third of
/// `rotate --dry-run`. `rowid`, the last sort key, is implicit in every index.
const V9: &str = r#"
CREATE INDEX images_order ON images(started, (synthetic_of IS NOT NULL));
"#;

/// Migration 10: segments and extents are kept in their primary key's order
/// (`WITHOUT ROWID`): a row is stored once, in the B-tree of its key, instead of once
/// in a rowid table and again in the key's index. With 100 k images that is 10 MB
/// (a ninth) less catalog.db, and one B-tree insert less per segment and extent, for
/// a rebuild that writes them all. Nothing reads their rowids.
const V10: &str = r#"
CREATE TABLE segments_v10 (
    image_uuid  TEXT NOT NULL REFERENCES images(uuid) ON DELETE CASCADE,
    part        INTEGER NOT NULL,
    barcode     TEXT NOT NULL,
    tape_file   INTEGER NOT NULL,
    first_block INTEGER NOT NULL,
    last_block  INTEGER NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    disk_start  INTEGER NOT NULL,
    disk_end    INTEGER NOT NULL,
    PRIMARY KEY (image_uuid, first_seq),
    CHECK (first_block <= last_block AND first_seq <= last_seq AND disk_start <= disk_end)
) WITHOUT ROWID;
INSERT INTO segments_v10 (image_uuid, part, barcode, tape_file, first_block, last_block,
                          first_seq, last_seq, disk_start, disk_end)
    SELECT image_uuid, part, barcode, tape_file, first_block, last_block,
           first_seq, last_seq, disk_start, disk_end FROM segments;
DROP TABLE segments;
ALTER TABLE segments_v10 RENAME TO segments;
CREATE INDEX segments_barcode ON segments(barcode);
CREATE INDEX segments_disk ON segments(image_uuid, disk_start);
CREATE TABLE image_extents_v10 (
    image_uuid TEXT NOT NULL REFERENCES images(uuid) ON DELETE CASCADE,
    offset     INTEGER NOT NULL,
    length     INTEGER NOT NULL CHECK (length > 0),
    is_zero    INTEGER NOT NULL,
    PRIMARY KEY (image_uuid, offset)
) WITHOUT ROWID;
INSERT INTO image_extents_v10 (image_uuid, offset, length, is_zero)
    SELECT image_uuid, offset, length, is_zero FROM image_extents;
DROP TABLE image_extents;
ALTER TABLE image_extents_v10 RENAME TO image_extents;
"#;

/// Migration 11: the index of copies holds copies only (`copy_of` is NULL for every
/// other image, and the one query using it asks `copy_of = ?`, which implies `IS NOT
/// NULL`): a rebuild of 100 k images made it in 0.013 s instead of 0.027 s.
const V11: &str = r#"
DROP INDEX images_copy_of;
CREATE INDEX images_copy_of ON images(copy_of) WHERE copy_of IS NOT NULL;
"#;

/// Every migration, oldest first. The catalog's version is the number applied.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11];

/// The schema version this code writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;
