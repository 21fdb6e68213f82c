//! The software tape position that StDrive keeps for drives without READ POSITION,
//! checked against a reference model of a tape: whatever the tracker claims to know must
//! be true, whatever sequence of operations the drive layer performs.

use proptest::prelude::*;
use tape_devices::drive::st::track::{Track, Tracker};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Obj {
    Block,
    Filemark,
}

#[derive(Debug, Clone)]
enum Op {
    WriteBlock,
    WriteFilemark,
    Read,
    Rewind,
    /// Back over n blocks, only when they lie in the current file (as StDrive does).
    BackWithinFile(u64),
    /// Back over the filemark before the current file start.
    BackOverFilemark,
    Lost,
}

struct Model {
    tape: Vec<Obj>,
    pos: usize,
}

impl Model {
    fn file(&self) -> u64 {
        self.tape[..self.pos]
            .iter()
            .filter(|o| **o == Obj::Filemark)
            .count() as u64
    }
    fn bif(&self) -> u64 {
        let start = self.tape[..self.pos]
            .iter()
            .rposition(|o| *o == Obj::Filemark)
            .map(|i| i + 1)
            .unwrap_or(0);
        (self.pos - start) as u64
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::WriteBlock),
        2 => Just(Op::WriteFilemark),
        4 => Just(Op::Read),
        1 => Just(Op::Rewind),
        2 => (1u64..4).prop_map(Op::BackWithinFile),
        1 => Just(Op::BackOverFilemark),
        1 => Just(Op::Lost),
    ]
}

proptest! {
    #[test]
    fn what_the_tracker_knows_is_true(ops in proptest::collection::vec(op(), 1..120)) {
        let mut m = Model { tape: Vec::new(), pos: 0 };
        let mut t = Tracker::default();
        t.at_bot();
        for o in ops {
            match o {
                Op::WriteBlock => {
                    m.tape.truncate(m.pos);
                    m.tape.push(Obj::Block);
                    m.pos += 1;
                    t.forward_block();
                    t.wrote();
                }
                Op::WriteFilemark => {
                    m.tape.truncate(m.pos);
                    m.tape.push(Obj::Filemark);
                    m.pos += 1;
                    t.forward_filemark();
                    t.wrote();
                }
                Op::Read => {
                    if t.at_eod() {
                        prop_assert_eq!(m.pos, m.tape.len(), "tracker claims end of data");
                        continue;
                    }
                    match m.tape.get(m.pos) {
                        Some(Obj::Block) => { m.pos += 1; t.forward_block(); }
                        Some(Obj::Filemark) => { m.pos += 1; t.forward_filemark(); }
                        None => { t.eod = t.cur.block; }
                    }
                }
                Op::Rewind => { m.pos = 0; t.at_bot(); }
                Op::BackWithinFile(n) => {
                    if m.bif() >= n {
                        m.pos -= n as usize;
                        t.backward_blocks(n);
                    }
                }
                Op::BackOverFilemark => {
                    if m.bif() == 0 && m.pos > 0 && t.cur.bif == Some(0) {
                        m.pos -= 1;
                        t.backward_filemark();
                    }
                }
                Op::Lost => {
                    t.lost();
                    // The drive layer finds its way back from BOT.
                    m.pos = 0;
                    t.at_bot();
                }
            }
            let Track { block, file, bif } = t.cur;
            if let Some(b) = block { prop_assert_eq!(b, m.pos as u64); }
            if let Some(f) = file { prop_assert_eq!(f, m.file()); }
            if let Some(i) = bif { prop_assert_eq!(i, m.bif()); }
            if let Some(e) = t.eod { prop_assert_eq!(e, m.tape.len() as u64, "end of data"); }
            for (&f, &s) in &t.starts {
                // file f starts right after the f-th filemark
                let fm_positions: Vec<usize> = m.tape.iter().enumerate().filter(|(_, o)| **o == Obj::Filemark).map(|(i, _)| i + 1).collect();
                let expect = if f == 0 { Some(0) } else { fm_positions.get(f as usize - 1).copied() };
                prop_assert_eq!(Some(s as usize), expect, "start of file {}", f);
            }
        }
    }
}
