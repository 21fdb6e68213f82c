//! Software tape position: what tapevault knows of where the tape is, kept on every
//! operation so that drives without READ POSITION/LOCATE (and tgt's emulator, whose block
//! spacing ignores filemarks) can still be positioned exactly.
//!
//! A position has three coordinates: the logical object number from BOT (blocks and
//! filemarks both count), the tape file number and the block within the file. Each may
//! be unknown; `starts` remembers the logical number of the first block of each file seen,
//! which converts between them.

use std::collections::BTreeMap;

use crate::drive::Position;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Track {
    pub block: Option<u64>,
    pub file: Option<u64>,
    pub bif: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Tracker {
    pub cur: Track,
    /// file number -> logical object number of its first block.
    pub starts: BTreeMap<u64, u64>,
    /// Logical object number of end of data, when known.
    pub eod: Option<u64>,
}

impl Tracker {
    /// At beginning of tape.
    pub fn at_bot(&mut self) {
        self.cur = Track {
            block: Some(0),
            file: Some(0),
            bif: Some(0),
        };
        self.starts.insert(0, 0);
    }

    /// Position lost (an error, an operation whose result cannot be known).
    pub fn lost(&mut self) {
        self.cur = Track::default();
    }

    /// Another cartridge (or none): forget everything.
    pub fn forget_medium(&mut self) {
        *self = Tracker::default();
    }

    /// Derive unknown coordinates from known ones and learn file starts.
    pub fn fill(&mut self) {
        let Track { block, file, bif } = self.cur;
        if let (Some(f), Some(b), Some(i)) = (file, block, bif) {
            if b >= i {
                self.starts.insert(f, b - i);
            }
            return;
        }
        if let (Some(f), Some(i), None) = (file, bif, block) {
            if let Some(s) = self.starts.get(&f) {
                self.cur.block = Some(s + i);
            }
        }
        if let (Some(f), Some(b), None) = (file, block, bif) {
            if let Some(s) = self.starts.get(&f) {
                self.cur.bif = b.checked_sub(*s);
            }
        }
        if let (None, Some(b), _) = (file, block, bif) {
            // The file whose start is the largest at or below b, if the next file's
            // start is known to lie beyond b (otherwise b may be in a later file).
            let best = self
                .starts
                .iter()
                .filter(|(_, &s)| s <= b)
                .max_by_key(|(_, &s)| s);
            if let Some((&f, &s)) = best {
                let next_known_beyond = self.starts.get(&(f + 1)).is_some_and(|&n| n > b);
                if next_known_beyond {
                    self.cur.file = Some(f);
                    self.cur.bif = Some(b - s);
                }
            }
        }
    }

    pub fn position(&self) -> Option<Position> {
        let Track { block, file, bif } = self.cur;
        Some(Position {
            block: block?,
            file: file?,
            block_in_file: bif?,
        })
    }

    /// Moved forward over one block (read, written or spaced).
    pub fn forward_block(&mut self) {
        self.cur.block = self.cur.block.map(|b| b + 1);
        self.cur.bif = self.cur.bif.map(|b| b + 1);
    }

    /// Moved backward over `n` blocks within the current file.
    pub fn backward_blocks(&mut self, n: u64) {
        self.cur.block = self.cur.block.and_then(|b| b.checked_sub(n));
        self.cur.bif = self.cur.bif.and_then(|b| b.checked_sub(n));
    }

    /// Moved forward over one filemark (read, written or spaced): at the start of the
    /// next file.
    pub fn forward_filemark(&mut self) {
        self.cur.block = self.cur.block.map(|b| b + 1);
        self.cur.file = self.cur.file.map(|f| f + 1);
        self.cur.bif = Some(0);
        if let (Some(f), Some(b)) = (self.cur.file, self.cur.block) {
            self.starts.insert(f, b);
        }
        self.fill();
    }

    /// Moved backward over a filemark: now just before it (BOT side), at the end of the
    /// previous file.
    pub fn backward_filemark(&mut self) {
        let start = self.cur.file.and_then(|f| self.starts.get(&f).copied());
        self.cur.file = self.cur.file.and_then(|f| f.checked_sub(1));
        self.cur.block = start.and_then(|s| s.checked_sub(1));
        self.cur.bif = None;
        self.fill();
    }

    /// Something was written here: everything after it is gone; this is end of data.
    pub fn wrote(&mut self) {
        if let Some(f) = self.cur.file {
            self.starts.retain(|&k, _| k <= f);
        } else if let Some(b) = self.cur.block {
            self.starts.retain(|_, &mut s| s <= b);
        }
        self.eod = self.cur.block;
    }

    /// True when the position is known to be end of data.
    pub fn at_eod(&self) -> bool {
        self.eod.is_some() && self.eod == self.cur.block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &Tracker) -> (u64, u64, u64) {
        let p = t.position().unwrap();
        (p.block, p.file, p.block_in_file)
    }

    #[test]
    fn writing_two_files_learns_their_starts() {
        let mut t = Tracker::default();
        t.at_bot();
        for _ in 0..3 {
            t.forward_block();
            t.wrote();
        }
        t.forward_filemark();
        t.wrote();
        t.forward_block();
        t.wrote();
        assert_eq!(p(&t), (5, 1, 1));
        assert_eq!(t.starts.get(&1), Some(&4));
        assert_eq!(t.eod, Some(5));
        assert!(t.at_eod());
    }

    #[test]
    fn backward_over_a_filemark_lands_at_the_end_of_the_previous_file() {
        let mut t = Tracker::default();
        t.at_bot();
        t.forward_block();
        t.forward_block();
        t.forward_filemark(); // file 1 starts at 3
        t.forward_block();
        t.backward_blocks(1);
        t.backward_filemark();
        assert_eq!(p(&t), (2, 0, 2));
    }

    #[test]
    fn a_block_number_alone_maps_to_a_file_only_when_unambiguous() {
        let mut t = Tracker::default();
        t.starts.insert(0, 0);
        t.starts.insert(1, 4);
        t.cur.block = Some(2);
        t.fill();
        assert_eq!(p(&t), (2, 0, 2));
        let mut t2 = t.clone();
        t2.cur = Track {
            block: Some(9),
            ..Track::default()
        };
        t2.fill();
        assert_eq!(
            t2.position(),
            None,
            "block 9 may lie in file 1 or a later one"
        );
        t2.starts.insert(2, 12);
        t2.fill();
        assert_eq!(p(&t2), (9, 1, 5));
    }

    #[test]
    fn writing_in_the_middle_discards_later_file_starts() {
        let mut t = Tracker::default();
        t.at_bot();
        t.starts.insert(1, 4);
        t.starts.insert(2, 8);
        t.cur = Track {
            block: Some(4),
            file: Some(1),
            bif: Some(0),
        };
        t.forward_block();
        t.wrote();
        assert_eq!(t.starts.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(t.eod, Some(5));
    }

    #[test]
    fn lost_position_is_unknown_until_refound() {
        let mut t = Tracker::default();
        t.at_bot();
        t.lost();
        assert_eq!(t.position(), None);
        t.forward_block();
        assert_eq!(t.position(), None);
    }
}
