//! A btape-style conformance suite, written once against [`TapeDrive`] and run against
//! every drive: the virtual one in tests, a real one through the `st` driver (in a QEMU
//! guest or on hardware) from the CLI. It only uses the trait, never panics on drive
//! behaviour, and reports one [`CheckResult`] per check.
//!
//! The suite is destructive: it writes from the beginning of the tape.
//!
//! Modelled on Bacula's `btape test`: two files of N blocks, read back with exactly one
//! filemark between them; repositioning to file:block positions; appending at end of
//! data; re-reading the last block by backspacing over the filemark and one block;
//! forward and backward file spacing over files of 1, 2, 3, 2, 1 blocks; optionally
//! filling the tape to early warning and the hard end. Where the drive cannot LOCATE or
//! READ POSITION, it repositions by rewind + space filemarks + space blocks.

use super::{Capabilities, DriveError, ReadOutcome, SpaceStop, TapeDrive, WriteOutcome};

/// Magic at the start of every block the suite writes.
const MAGIC: &[u8; 8] = b"TVCONF01";
/// Smallest block size the suite can use: the header (magic, file, block) fits.
pub const MIN_BLOCK_SIZE: usize = 24;

/// How to run the suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceOptions {
    /// Blocks in each of the two large files (btape's N). At least 601 so the
    /// positions 0:200, 1:600 exist; smaller values skip those positions.
    pub blocks_per_file: u64,
    /// Size of every block written (at least [`MIN_BLOCK_SIZE`]).
    pub block_size: usize,
    /// Fill the tape to early warning and the hard end (long on real tapes).
    pub fill: bool,
    /// Block size used while filling.
    pub fill_block_size: usize,
    /// Give up filling after this many bytes without reaching the end.
    pub fill_limit_bytes: u64,
}

impl Default for ConformanceOptions {
    fn default() -> Self {
        ConformanceOptions {
            blocks_per_file: 1000,
            block_size: 64 * 1024,
            fill: false,
            fill_block_size: 256 * 1024,
            fill_limit_bytes: 20 << 40,
        }
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub passed: bool,
    /// What was verified, or what went wrong.
    pub message: String,
}

type Check = Result<String, String>;

fn de(what: &str, e: DriveError) -> String {
    format!("{what}: {e}")
}

struct Suite<'a> {
    d: &'a mut dyn TapeDrive,
    o: ConformanceOptions,
    caps: Capabilities,
    buf: Vec<u8>,
    expect: Vec<u8>,
    /// Number of tape files written so far by the suite.
    files: u64,
}

/// Fill `out` with the contents of block `block` of tape file `file`.
fn pattern(out: &mut [u8], file: u64, block: u64) {
    if out.len() < MIN_BLOCK_SIZE {
        return;
    }
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&file.to_le_bytes());
    out[16..24].copy_from_slice(&block.to_le_bytes());
    let mut x = (file << 32) ^ block ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in out[24..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

impl Suite<'_> {
    fn write(&mut self, file: u64, block: u64) -> Result<WriteOutcome, String> {
        let n = self.o.block_size;
        pattern(&mut self.expect[..n], file, block);
        self.d
            .write_block(&self.expect[..n])
            .map_err(|e| de(&format!("writing block {file}:{block}"), e))
    }

    fn write_file(&mut self, blocks: u64) -> Result<(), String> {
        let file = self.files;
        for b in 0..blocks {
            self.write(file, b)?;
        }
        self.d
            .write_filemarks(1, false)
            .map_err(|e| de(&format!("writing the filemark after file {file}"), e))?;
        self.files += 1;
        Ok(())
    }

    /// Read the next block and check it is `file:block`.
    fn read_expect(&mut self, file: u64, block: u64) -> Result<(), String> {
        let got = self
            .d
            .read_block(&mut self.buf)
            .map_err(|e| de(&format!("reading block {file}:{block}"), e))?;
        match got {
            ReadOutcome::Block(n) if n == self.o.block_size => {
                pattern(&mut self.expect[..n], file, block);
                if self.buf[..n] != self.expect[..n] {
                    let (f, b) = decode(&self.buf[..n]);
                    return Err(format!(
                        "expected block {file}:{block}, read different contents (it says {f}:{b})"
                    ));
                }
                Ok(())
            }
            ReadOutcome::Block(n) => Err(format!(
                "expected block {file}:{block} of {} bytes, read a block of {n} bytes",
                self.o.block_size
            )),
            other => Err(format!("expected block {file}:{block}, got {other:?}")),
        }
    }

    fn read_outcome(&mut self, want: ReadOutcome, what: &str) -> Result<(), String> {
        let got = self.d.read_block(&mut self.buf).map_err(|e| de(what, e))?;
        if got != want {
            return Err(format!("{what}: expected {want:?}, got {got:?}"));
        }
        Ok(())
    }

    /// Position before block `block` of file `file`.
    fn goto(&mut self, file: u64, block: u64) -> Result<(), String> {
        if self.caps.locate {
            let n = self.o.blocks_per_file;
            // Files 0 and 1 have N blocks + 1 filemark each.
            let logical = file * (n + 1) + block;
            self.d
                .locate(logical)
                .map_err(|e| de(&format!("locate to {file}:{block} (object {logical})"), e))?;
        } else {
            self.d.rewind().map_err(|e| de("rewind", e))?;
            if file > 0 {
                self.d
                    .space_filemarks(file as i64)
                    .map_err(|e| de(&format!("fsf {file}"), e))?;
            }
            if block > 0 {
                self.d
                    .space_blocks(block as i64)
                    .map_err(|e| de(&format!("fsr {block}"), e))?;
            }
        }
        self.check_pos(file, block)
    }

    fn check_pos(&mut self, file: u64, block: u64) -> Result<(), String> {
        if !self.caps.read_position {
            return Ok(());
        }
        let p = self.d.position().map_err(|e| de("read position", e))?;
        if (p.file, p.block_in_file) != (file, block) {
            return Err(format!(
                "position reports file {} block {} (object {}), expected {file}:{block}",
                p.file, p.block_in_file, p.block
            ));
        }
        Ok(())
    }

    fn expect_stop(
        &mut self,
        r: Result<(), DriveError>,
        what: &str,
        stop: SpaceStop,
        residual: u64,
    ) -> Result<(), String> {
        match r {
            Err(DriveError::SpaceStopped {
                stop: s,
                residual: res,
                ..
            }) if s == stop && res == residual => Ok(()),
            Err(e) => Err(format!(
                "{what}: expected to stop at {stop} with residual {residual}, got: {e}"
            )),
            Ok(()) => Err(format!(
                "{what}: expected to stop at {stop} with residual {residual}, but it succeeded"
            )),
        }
    }

    // ---- the checks ----

    fn two_files(&mut self) -> Check {
        self.d.rewind().map_err(|e| de("rewind", e))?;
        self.files = 0;
        let n = self.o.blocks_per_file;
        self.write_file(n)?;
        self.write_file(n)?;
        self.check_pos(2, 0)?;
        Ok(format!(
            "wrote 2 files of {n} blocks of {} bytes, each closed by a filemark",
            self.o.block_size
        ))
    }

    fn read_back(&mut self) -> Check {
        self.d.rewind().map_err(|e| de("rewind", e))?;
        let n = self.o.blocks_per_file;
        for f in 0..2 {
            for b in 0..n {
                self.read_expect(f, b)?;
            }
            self.read_outcome(
                ReadOutcome::Filemark,
                &format!("the filemark after file {f}"),
            )?;
        }
        self.read_outcome(ReadOutcome::EndOfData, "end of data after two files")?;
        self.read_outcome(
            ReadOutcome::EndOfData,
            "end of data read again (position must not move)",
        )?;
        Ok(format!(
            "read back {} blocks with exactly one filemark after each file, then end of data",
            2 * n
        ))
    }

    fn reposition(&mut self) -> Check {
        let n = self.o.blocks_per_file;
        let mut done = Vec::new();
        for (f, b) in [
            (0, 4),
            (0, 200),
            (0, n.saturating_sub(1)),
            (1, 0),
            (1, 600),
            (1, n.saturating_sub(1)),
        ] {
            if b >= n {
                continue;
            }
            self.goto(f, b)?;
            self.read_expect(f, b)?;
            done.push(format!("{f}:{b}"));
        }
        let how = if self.caps.locate {
            "locate"
        } else {
            "rewind + fsf + fsr"
        };
        Ok(format!(
            "repositioned by {how} to {} and read the right blocks",
            done.join(", ")
        ))
    }

    fn buffer_too_small(&mut self) -> Check {
        self.goto(0, 1)?;
        let small = self.o.block_size / 2;
        match self.d.read_block(&mut self.buf[..small]) {
            Err(DriveError::BufferTooSmall { block_len, .. }) if block_len == self.o.block_size => {
            }
            Err(e) => {
                return Err(format!(
                    "reading into a {small}-byte buffer: expected 'buffer too small', got: {e}"
                ))
            }
            Ok(o) => {
                return Err(format!(
                    "reading into a {small}-byte buffer succeeded ({o:?}): a block was truncated"
                ))
            }
        }
        self.check_pos(0, 1)?;
        self.read_expect(0, 1)?;
        Ok(format!("a {}-byte block into a {small}-byte buffer is refused naming its size; position unchanged", self.o.block_size))
    }

    fn append(&mut self) -> Check {
        self.d.rewind().map_err(|e| de("rewind", e))?;
        self.d
            .space_to_eod()
            .map_err(|e| de("space to end of data", e))?;
        self.check_pos(2, 0)?;
        let n = self.o.blocks_per_file;
        self.write_file(n)?;
        self.d.rewind().map_err(|e| de("rewind", e))?;
        let mut files = 0;
        loop {
            match self.d.space_filemarks(1) {
                Ok(()) => files += 1,
                Err(DriveError::SpaceStopped {
                    stop: SpaceStop::EndOfData,
                    residual: 1,
                    ..
                }) => break,
                Err(e) => return Err(de(&format!("fsf after {files} files"), e)),
            }
            if files > 10 {
                return Err("more than 10 files found after writing 3".into());
            }
        }
        if files != 3 {
            return Err(format!(
                "found {files} files after appending the third, expected 3"
            ));
        }
        self.check_pos(3, 0)?;
        self.goto(2, 0)?;
        self.read_expect(2, 0)?;
        Ok("appended a third file at end of data; counted 3 files by spacing filemarks".into())
    }

    fn reread_last_block(&mut self) -> Check {
        self.d
            .space_to_eod()
            .map_err(|e| de("space to end of data", e))?;
        self.d
            .space_filemarks(-1)
            .map_err(|e| de("bsf 1 from end of data", e))?;
        self.d.space_blocks(-1).map_err(|e| de("bsr 1", e))?;
        let last = self.files - 1;
        let n = self.o.blocks_per_file;
        self.check_pos(last, n - 1)?;
        self.read_expect(last, n - 1)?;
        self.read_outcome(ReadOutcome::Filemark, "the filemark after the last block")?;
        self.read_outcome(
            ReadOutcome::EndOfData,
            "end of data after the last filemark",
        )?;
        Ok("bsf 1 + bsr 1 from end of data re-reads the last block, then the filemark, then end of data".into())
    }

    fn small_files(&mut self) -> Check {
        self.d
            .space_to_eod()
            .map_err(|e| de("space to end of data", e))?;
        let first = self.files;
        let sizes = [1u64, 2, 3, 2, 1];
        for s in sizes {
            self.write_file(s)?;
        }
        // Forward: fsf from file to file, reading each first block.
        self.d.rewind().map_err(|e| de("rewind", e))?;
        self.d
            .space_filemarks(first as i64)
            .map_err(|e| de(&format!("fsf {first}"), e))?;
        for (i, _) in sizes.iter().enumerate() {
            let f = first + i as u64;
            self.check_pos(f, 0)?;
            self.read_expect(f, 0)?;
            self.d
                .space_filemarks(1)
                .map_err(|e| de(&format!("fsf 1 in file {f}"), e))?;
        }
        self.read_outcome(ReadOutcome::EndOfData, "end of data after the small files")?;
        // Backward: bsf 2 + fsf 1 reaches the start of the previous file, each time.
        for i in (0..sizes.len()).rev() {
            let f = first + i as u64;
            self.d
                .space_filemarks(-2)
                .map_err(|e| de(&format!("bsf 2 to reach file {f}"), e))?;
            self.d
                .space_filemarks(1)
                .map_err(|e| de("fsf 1 after bsf 2", e))?;
            self.read_expect(f, 0)?;
            // Back to just past this file's filemark for the next round.
            let rest = sizes[i] - 1;
            if rest > 0 {
                self.d
                    .space_blocks(rest as i64)
                    .map_err(|e| de("fsr over the rest of the file", e))?;
            }
            self.read_outcome(
                ReadOutcome::Filemark,
                &format!("the filemark closing file {f}"),
            )?;
            // Step back onto the BOT side of that filemark: the next round's bsf 2 then
            // crosses the filemarks closing files f-1 and f-2.
            self.d.space_filemarks(-1).map_err(|e| de("bsf 1", e))?;
        }
        // Residuals. In the 3-block file, fsr 5 stops past its filemark with 2 left.
        let f3 = first + 2;
        self.goto_file(f3)?;
        let r = self.d.space_blocks(5);
        self.expect_stop(r, "fsr 5 in a 3-block file", SpaceStop::Filemark, 2)?;
        self.check_pos(f3 + 1, 0)?;
        // From the start of the next file, bsr 1 crosses the filemark and stops on its BOT side.
        let r = self.d.space_blocks(-1);
        self.expect_stop(r, "bsr 1 at the start of a file", SpaceStop::Filemark, 1)?;
        self.read_outcome(ReadOutcome::Filemark, "the filemark bsr stopped before")?;
        // fsf past the end of data stops there with the residual.
        let remaining = self.files - (f3 + 1);
        let r = self.d.space_filemarks(remaining as i64 + 2);
        self.expect_stop(r, "fsf beyond end of data", SpaceStop::EndOfData, 2)?;
        // bsf beyond the beginning stops at BOT.
        let r = self.d.space_filemarks(-(self.files as i64 + 3));
        self.expect_stop(
            r,
            "bsf beyond beginning of tape",
            SpaceStop::BeginningOfTape,
            3,
        )?;
        self.check_pos(0, 0)?;
        let r = self.d.space_blocks(-1);
        self.expect_stop(r, "bsr at beginning of tape", SpaceStop::BeginningOfTape, 1)?;
        Ok("fsf/bsf over files of 1,2,3,2,1 blocks reach each file; fsr/bsr/fsf/bsf stop at filemark, end of data and BOT with the right residual".into())
    }

    fn goto_file(&mut self, file: u64) -> Result<(), String> {
        self.d.rewind().map_err(|e| de("rewind", e))?;
        self.d
            .space_filemarks(file as i64)
            .map_err(|e| de(&format!("fsf {file}"), e))?;
        self.check_pos(file, 0)
    }

    fn fill(&mut self) -> Check {
        if !self.caps.early_warning {
            return Ok("skipped: the drive does not report early warning".into());
        }
        self.d
            .space_to_eod()
            .map_err(|e| de("space to end of data", e))?;
        let bs = self.o.fill_block_size.max(MIN_BLOCK_SIZE);
        let mut block = vec![0u8; bs];
        let file = self.files;
        let mut written: u64 = 0;
        let mut b = 0u64;
        // Phase 1: until the write that enters early warning.
        loop {
            pattern(&mut block, file, b);
            match self.d.write_block(&block) {
                Ok(WriteOutcome::Written) => {}
                Ok(WriteOutcome::WrittenEarlyWarning) => break,
                Err(e) => {
                    return Err(de(
                        &format!(
                            "filling, block {b} after {written} bytes, before any early warning"
                        ),
                        e,
                    ))
                }
            }
            b += 1;
            written += bs as u64;
            if written > self.o.fill_limit_bytes {
                return Err(format!("no early warning after {written} bytes"));
            }
        }
        let ew_at = b;
        b += 1;
        // Phase 2: the next write fails once, writing nothing.
        pattern(&mut block, file, b);
        match self.d.write_block(&block) {
            Err(DriveError::EarlyWarning) => {}
            Err(e) => return Err(de("the write after early warning", e)),
            Ok(o) => {
                return Err(format!(
                    "the write after early warning succeeded ({o:?}); it must fail once"
                ))
            }
        }
        // Phase 3: writes go on until the hard end.
        let mut after = 0u64;
        loop {
            pattern(&mut block, file, b);
            match self.d.write_block(&block) {
                Ok(_) => {
                    b += 1;
                    after += 1;
                }
                Err(DriveError::EndOfMedium) => break,
                Err(e) => {
                    return Err(de(
                        &format!("writing block {b} in the early-warning zone"),
                        e,
                    ))
                }
            }
            if after * bs as u64 > self.o.fill_limit_bytes {
                return Err("no end of medium in the early-warning zone".into());
            }
        }
        if after == 0 {
            return Err(
                "no block could be written after the early-warning error (no room for a trailer)"
                    .into(),
            );
        }
        // The last block written is intact: backspace one and read it.
        self.d
            .space_blocks(-1)
            .map_err(|e| de("bsr 1 at end of medium", e))?;
        let got = self
            .d
            .read_block(&mut self.buf)
            .map_err(|e| de("reading the last block", e))?;
        pattern(&mut block, file, b - 1);
        match got {
            ReadOutcome::Block(n) if n == bs && self.buf[..n] == block[..] => {}
            other => return Err(format!("the last block written is not intact: {other:?}")),
        }
        self.read_outcome(ReadOutcome::EndOfData, "end of data after the last block")?;
        Ok(format!(
            "early warning after {} blocks of {bs} bytes, the next write failed once, then {after} more blocks until end of medium",
            ew_at + 1
        ))
    }
}

fn decode(b: &[u8]) -> (String, String) {
    if b.len() < MIN_BLOCK_SIZE || &b[..8] != MAGIC {
        return ("?".into(), "?".into());
    }
    let f = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    let k = u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8]));
    (f.to_string(), k.to_string())
}

/// Run the suite. Every check is reported; a failed check does not stop the others
/// unless it leaves the tape without the files the later checks need.
pub fn run(drive: &mut dyn TapeDrive, opts: &ConformanceOptions) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let mut push = |name, r: Check| {
        let passed = r.is_ok();
        out.push(CheckResult {
            name,
            passed,
            message: r.unwrap_or_else(|e| e),
        });
        passed
    };
    if opts.block_size < MIN_BLOCK_SIZE
        || opts.block_size > drive.max_block_size()
        || opts.blocks_per_file == 0
    {
        push(
            "options",
            Err(format!(
                "block size must be {MIN_BLOCK_SIZE}..={} bytes and files need at least one block",
                drive.max_block_size()
            )),
        );
        return out;
    }
    let caps = match drive.capabilities() {
        Ok(c) => c,
        Err(e) => {
            push("capabilities", Err(de("querying capabilities", e)));
            return out;
        }
    };
    push(
        "capabilities",
        Ok(format!(
            "read position: {}, locate: {}, early warning: {}, block sizes {}..={}",
            caps.read_position,
            caps.locate,
            caps.early_warning,
            caps.min_block_size,
            caps.max_block_size
        )),
    );
    let size = opts.block_size.max(opts.fill_block_size);
    let mut s = Suite {
        d: drive,
        o: opts.clone(),
        caps,
        buf: vec![0u8; size],
        expect: vec![0u8; size],
        files: 0,
    };
    if !push("write_two_files", s.two_files()) {
        return out;
    }
    push("read_back_one_filemark_between_files", s.read_back());
    push("reposition_file_block", s.reposition());
    push("buffer_too_small_is_an_error", s.buffer_too_small());
    if !push("append_at_end_of_data", s.append()) {
        return out;
    }
    push("reread_last_block_bsf_bsr", s.reread_last_block());
    push("fsf_bsf_small_files_and_residuals", s.small_files());
    if opts.fill {
        push("fill_to_end_of_medium", s.fill());
    }
    out
}
