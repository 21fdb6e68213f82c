//! The check a synthetic full passes before its trailer may say complete: the block
//! digest list of what it wrote equals the list recorded for the point it reproduces.
//!
//! A block digest list is BLAKE3 of every 64 KiB block of the disk at an image's point
//! in time (for an incremental too: the base's digests where nothing changed), with a
//! checksum over the whole list; two lists are equal exactly when the two disks are,
//! block for block. The point's list was made when the point was backed up (from the
//! disk itself); the synthetic full's is made from the bytes it writes to tape. Both
//! lists are streamed: memory does not grow with the disk.

use std::path::Path;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::source::hashscan::DigestListReader;

/// Check that the disk written (digest list `written`) is the point `point` (digest
/// list `point_list`), block for block. A difference is an integrity error (exit 3)
/// naming the first block that differs; an unreadable or damaged list is a failure.
pub fn same_disk(written: &Path, point_list: &Path, point: Uuid) -> Result<()> {
    let list_err = |what: &str, e: crate::source::hashscan::DigestListError| {
        Error::Failed(format!("{what}: {e}"))
    };
    let mut a = DigestListReader::open(written, None)
        .map_err(|e| list_err("the synthetic full's block digest list", e))?;
    let mut b = DigestListReader::open(point_list, None).map_err(|e| {
        list_err(
            &format!("the block digest list of image {point} (the point reproduced)"),
            e,
        )
    })?;
    let (sa, sb) = (a.summary(), b.summary());
    if sa.block_size != sb.block_size || sa.disk_size != sb.disk_size {
        return Err(Error::Integrity(format!(
            "the synthetic full is {} bytes in {}-byte blocks, image {point} (the point it reproduces) is {} bytes in {}-byte blocks: it does not reproduce that point; it is not committed and never a base",
            sa.disk_size, sa.block_size, sb.disk_size, sb.block_size
        )));
    }
    loop {
        let i = a.next_index();
        let da = a
            .next_digest()
            .map_err(|e| list_err("the synthetic full's block digest list", e))?;
        let db = b.next_digest().map_err(|e| {
            list_err(
                &format!("the block digest list of image {point} (the point reproduced)"),
                e,
            )
        })?;
        match (da, db) {
            (None, None) => return Ok(()),
            (Some(x), Some(y)) if x == y => {}
            _ => {
                let off = i * sa.block_size;
                return Err(Error::Integrity(format!(
                    "the synthetic full differs from image {point} (the point it reproduces) in the block at bytes {off}..{}: its content digest does not match the point's; it is not committed and never a base",
                    (off + sa.block_size).min(sa.disk_size)
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::hashscan::DigestListWriter;

    fn list(dir: &Path, name: &str, blocks: &[[u8; 32]], size: u64) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut w = DigestListWriter::create(&p, 65536, size).unwrap();
        for b in blocks {
            w.push(b).unwrap();
        }
        w.finish().unwrap();
        p
    }

    #[test]
    fn equal_lists_pass_and_the_first_difference_is_named() {
        let d = tempfile::tempdir().unwrap();
        let size = 3 * 65536 - 10;
        let a = list(d.path(), "a", &[[1; 32], [2; 32], [3; 32]], size);
        let b = list(d.path(), "b", &[[1; 32], [2; 32], [3; 32]], size);
        let c = list(d.path(), "c", &[[1; 32], [9; 32], [3; 32]], size);
        let p = Uuid::new_v4();
        same_disk(&a, &b, p).unwrap();
        let e = same_disk(&a, &c, p).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::Integrity);
        assert!(e.to_string().contains("bytes 65536..131072"), "{e}");
        let short = list(d.path(), "s", &[[1; 32], [2; 32]], 2 * 65536);
        let e = same_disk(&a, &short, p).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::Integrity);
    }
}
