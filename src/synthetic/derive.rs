//! The point's block digest list when this home has none (a catalog rebuilt from the
//! media imports no lists): derived from the point as read from its chain.
//!
//! Reading the chain checks every record (CRCs, AES-GCM tag, image, part, sequence)
//! and each image's content digest against the one its trailer recorded, so the
//! scratch file holds exactly the point's bytes once the read succeeded. The list made
//! from it here is what the synthetic full's own list is then checked against, block
//! for block, before its trailer may say complete: the image written must hold what
//! was read. Holes in the (sparse) scratch file are zero blocks, hashed without being
//! read; memory is one read buffer and the list writer's.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::disk::{DataAt, SourceRead};
use crate::source::hashscan::DigestFeed;

/// Bytes read at a time from the scratch file.
const CHUNK: usize = 1 << 20;

/// Write the block digest list of the `disk_size` bytes of `file` in `block_size`
/// blocks to `out`.
pub fn point_list(file: &File, disk_size: u64, block_size: u64, out: &Path) -> Result<()> {
    let list_err = |e: crate::source::hashscan::DigestListError| {
        Error::Failed(format!("{}: {e}", out.display()))
    };
    let io_err = |e: std::io::Error| {
        Error::Failed(format!(
            "reading the restored point to derive its block digest list: {e}"
        ))
    };
    let mut feed = DigestFeed::new(out, block_size, disk_size, None).map_err(list_err)?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < disk_size {
        let (start, end) = match SourceRead::find_data(file, at).map_err(io_err)? {
            DataAt::Run(s, e) => (s.min(disk_size), e.min(disk_size)),
            DataAt::HoleToEnd { .. } => (disk_size, disk_size),
        };
        if start > at {
            feed.feed_zero(at, start - at).map_err(list_err)?;
            at = start;
        }
        while at < end {
            let n = (end - at).min(CHUNK as u64) as usize;
            let got = SourceRead::read_at(file, &mut buf[..n], at).map_err(io_err)?;
            if got == 0 {
                return Err(Error::Failed(format!(
                    "the restored point ends at byte {at}, before its {disk_size} bytes"
                )));
            }
            feed.feed_data(at, &buf[..got]).map_err(list_err)?;
            at += got as u64;
        }
    }
    feed.finish().map_err(list_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::hashscan::DigestListReader;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_sparse_file_gives_the_list_of_its_bytes() {
        let d = tempfile::tempdir().unwrap();
        let size = 5 * 65536 + 1000;
        let mut bytes = vec![0u8; size];
        for (i, b) in bytes[65536 + 7..3 * 65536].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        bytes[size - 3] = 9;
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("disk"))
            .unwrap();
        f.set_len(size as u64).unwrap();
        f.write_all_at(&bytes[65536..3 * 65536], 65536).unwrap();
        f.write_all_at(&bytes[size - 3..], (size - 3) as u64)
            .unwrap();
        let out = d.path().join("list");
        point_list(&f, size as u64, 65536, &out).unwrap();
        let mut r = DigestListReader::open(&out, Some(65536)).unwrap();
        for chunk in bytes.chunks(65536) {
            let want = *blake3::hash(chunk).as_bytes();
            assert_eq!(r.next_digest().unwrap(), Some(want));
        }
        assert_eq!(r.next_digest().unwrap(), None);
    }
}
