//! The spool of a copy with one drive: an image's records are read from the source
//! cartridge (every check made, the content digest included) into a file of a bounded
//! spool directory, the source is put away, and the records are then written from the
//! file to the target cartridge in the same drive. The file holds the records exactly
//! as they are on tape (an encrypted image stays encrypted: no plain data reaches the
//! spool), each as a u32 length (little-endian) then the block. Files are removed when
//! written, when the copy fails, and when a later copy finds them left by a process
//! that is gone.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Prefix of spool file names: `tapevault-copy-PID-IMAGE.spool`.
const PREFIX: &str = "tapevault-copy-";

/// A spool directory and the most bytes its files may hold at once.
#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
    pub size: u64,
}

impl Spool {
    /// Check the directory exists and is writable; remove spool files left by copies
    /// whose process is gone.
    pub fn check(&self) -> Result<()> {
        let md = std::fs::metadata(&self.dir).map_err(|e| {
            Error::Usage(format!(
                "--spool {}: {e}; give an existing directory",
                self.dir.display()
            ))
        })?;
        if !md.is_dir() {
            return Err(Error::Usage(format!(
                "--spool {} is not a directory",
                self.dir.display()
            )));
        }
        if self.size == 0 {
            return Err(Error::Usage("--spool-size must be more than 0".into()));
        }
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix(PREFIX) else {
                    continue;
                };
                let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
                if let Some(pid) = pid {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        Ok(())
    }

    fn path_for(&self, image: uuid::Uuid) -> PathBuf {
        self.dir
            .join(format!("{PREFIX}{}-{image}.spool", std::process::id()))
    }
}

/// A spool file being filled, within a byte budget.
pub struct SpoolWriter {
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    budget: u64,
}

/// The budget was exceeded: the caller removes the file and writes what is spooled.
#[derive(Debug)]
pub struct Overflow;

impl SpoolWriter {
    pub fn create(spool: &Spool, image: uuid::Uuid, budget: u64) -> Result<SpoolWriter> {
        let path = spool.path_for(image);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                Error::Failed(format!("creating the spool file {}: {e}", path.display()))
            })?;
        Ok(SpoolWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, f),
            bytes: 0,
            budget,
        })
    }

    /// Append one block. `Ok(Err(Overflow))` when it would pass the budget.
    pub fn push(&mut self, block: &[u8]) -> Result<std::result::Result<(), Overflow>> {
        let n = 4 + block.len() as u64;
        if self.bytes + n > self.budget {
            return Ok(Err(Overflow));
        }
        let w = (|| {
            self.out.write_all(&(block.len() as u32).to_le_bytes())?;
            self.out.write_all(block)
        })();
        w.map_err(|e| {
            Error::Failed(format!(
                "writing the spool file {}: {e}",
                self.path.display()
            ))
        })?;
        self.bytes += n;
        Ok(Ok(()))
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Flush and hand over the file for reading.
    pub fn finish(mut self) -> Result<SpoolFile> {
        self.out.flush().map_err(|e| {
            Error::Failed(format!(
                "writing the spool file {}: {e}",
                self.path.display()
            ))
        })?;
        Ok(SpoolFile {
            path: std::mem::take(&mut self.path),
            bytes: self.bytes,
        })
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A complete spool file; removed when dropped.
pub struct SpoolFile {
    path: PathBuf,
    pub bytes: u64,
}

impl SpoolFile {
    pub fn reader(&self) -> Result<SpoolReader> {
        let f = File::open(&self.path).map_err(|e| {
            Error::Failed(format!(
                "opening the spool file {}: {e}",
                self.path.display()
            ))
        })?;
        Ok(SpoolReader {
            path: self.path.clone(),
            inp: BufReader::with_capacity(1 << 20, f),
        })
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub struct SpoolReader {
    path: PathBuf,
    inp: BufReader<File>,
}

impl SpoolReader {
    /// The next block into `buf`; false at the end.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        let err = |e: std::io::Error| {
            Error::Failed(format!(
                "reading the spool file {}: {e}",
                self.path.display()
            ))
        };
        let mut len = [0u8; 4];
        match self.inp.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(err(e)),
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > tape_formats::MAX_BLOCK_SIZE {
            return Err(Error::Integrity(format!(
                "spool file {}: a {n}-byte block, larger than any record",
                self.path.display()
            )));
        }
        buf.resize(n, 0);
        self.inp.read_exact(buf).map_err(err)?;
        Ok(true)
    }
}

/// Parse a size: bytes, or with a K, M, G or T suffix (powers of 1024, `KiB`/`MB`
/// spellings accepted).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("bad size {s:?} (expected a number with an optional K, M, G or T suffix)")
    })?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => {
            return Err(format!(
                "bad size unit {other:?} in {s:?} (expected K, M, G or T)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn a_spool_file_keeps_its_budget_and_reads_back_in_order() {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool {
            dir: d.path().to_path_buf(),
            size: 100,
        };
        let mut w = SpoolWriter::create(&sp, uuid::Uuid::nil(), 30).unwrap();
        assert!(w.push(&[1; 10]).unwrap().is_ok());
        assert!(w.push(&[2; 12]).unwrap().is_ok());
        assert!(w.push(&[3; 5]).unwrap().is_err(), "4+10+4+12+4+5 > 30");
        let f = w.finish().unwrap();
        let mut r = f.reader().unwrap();
        let mut b = Vec::new();
        assert!(r.next(&mut b).unwrap());
        assert_eq!(b, vec![1; 10]);
        assert!(r.next(&mut b).unwrap());
        assert_eq!(b, vec![2; 12]);
        assert!(!r.next(&mut b).unwrap());
        let p = f.path.clone();
        drop(f);
        assert!(!p.exists(), "removed when dropped");
    }
}
