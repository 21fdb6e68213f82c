//! Model-based test: random operation sequences against a cartridge on disk and a tiny
//! in-memory reference model of an SSC tape must give identical observable results.

use proptest::prelude::*;
use vtl_sim::{Cartridge, CartridgeMeta, Read, SpaceStop, VtlError, WriteBehind, Written};

const CAPACITY: u64 = 4000;
const EARLY_WARNING: u64 = 600;

#[derive(Debug, Clone)]
enum Op {
    Write(usize, u8),
    WriteFm(u32),
    Read(usize),
    SpaceBlocks(i64),
    SpaceFm(i64),
    Eod,
    Rewind,
    Locate(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..400, any::<u8>()).prop_map(|(l, s)| Op::Write(l, s)),
        2 => (0u32..3).prop_map(Op::WriteFm),
        4 => prop_oneof![Just(1usize), 1usize..500].prop_map(Op::Read),
        2 => (-6i64..7).prop_map(Op::SpaceBlocks),
        2 => (-3i64..4).prop_map(Op::SpaceFm),
        1 => Just(Op::Eod),
        1 => Just(Op::Rewind),
        1 => (0u64..40).prop_map(Op::Locate),
        1 => Just(Op::Reopen),
    ]
}

/// What the caller can observe from one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Obs {
    Ok,
    Written(bool),
    Block(Vec<u8>),
    Filemark,
    Eod,
    Err(String),
}

fn err(e: VtlError) -> Obs {
    Obs::Err(match e {
        VtlError::BufferTooSmall {
            block_len,
            buffer_len,
        } => format!("small {block_len} {buffer_len}"),
        VtlError::EarlyWarning => "ew".into(),
        VtlError::EndOfMedium => "eom".into(),
        VtlError::SpaceStopped { stop, residual, .. } => format!("stop {stop:?} {residual}"),
        VtlError::BeyondEndOfData { block } => format!("beyond {block}"),
        VtlError::WormOverwrite { block } => format!("worm {block}"),
        other => format!("unexpected: {other}"),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ew {
    None,
    Pending,
    Passed,
}

/// The reference: a vector of objects (Some(block) or None for a filemark).
struct Model {
    objs: Vec<Option<Vec<u8>>>,
    pos: usize,
    ew: Ew,
    worm: bool,
}

impl Model {
    fn offset(&self, p: usize) -> u64 {
        self.objs[..p]
            .iter()
            .map(|o| o.as_ref().map_or(0, |b| b.len() as u64))
            .sum()
    }
    fn apply(&mut self, op: &Op) -> (Obs, (u64, u64, u64)) {
        let stop = |s: SpaceStop, r: u64| Obs::Err(format!("stop {s:?} {r}"));
        let obs = match *op {
            Op::Write(..) | Op::WriteFm(1..) if self.worm && self.pos < self.objs.len() => {
                Obs::Err(format!("worm {}", self.pos))
            }
            Op::Write(len, seed) => {
                if self.ew == Ew::Pending {
                    self.ew = Ew::Passed;
                    Obs::Err("ew".into())
                } else {
                    let end = self.offset(self.pos) + len as u64;
                    if end > CAPACITY {
                        Obs::Err("eom".into())
                    } else {
                        self.objs.truncate(self.pos);
                        self.objs.push(Some(block(len, seed)));
                        self.pos = self.objs.len();
                        if end > CAPACITY - EARLY_WARNING && self.ew == Ew::None {
                            self.ew = Ew::Pending;
                            Obs::Written(true)
                        } else {
                            Obs::Written(false)
                        }
                    }
                }
            }
            Op::WriteFm(n) => {
                if n > 0 {
                    self.objs.truncate(self.pos);
                    for _ in 0..n {
                        self.objs.push(None);
                    }
                    self.pos = self.objs.len();
                }
                Obs::Ok
            }
            Op::Read(buflen) => match self.objs.get(self.pos) {
                None => Obs::Eod,
                Some(None) => {
                    self.pos += 1;
                    Obs::Filemark
                }
                Some(Some(b)) if b.len() > buflen => {
                    Obs::Err(format!("small {} {buflen}", b.len()))
                }
                Some(Some(b)) => {
                    let b = b.clone();
                    self.pos += 1;
                    Obs::Block(b)
                }
            },
            Op::SpaceBlocks(n) => {
                self.ew = Ew::None;
                let mut done = 0u64;
                let want = n.unsigned_abs();
                let mut res = Obs::Ok;
                while done < want {
                    if n > 0 {
                        match self.objs.get(self.pos) {
                            None => {
                                res = stop(SpaceStop::EndOfData, want - done);
                                break;
                            }
                            Some(None) => {
                                self.pos += 1;
                                res = stop(SpaceStop::Filemark, want - done);
                                break;
                            }
                            Some(Some(_)) => self.pos += 1,
                        }
                    } else {
                        if self.pos == 0 {
                            res = stop(SpaceStop::BeginningOfTape, want - done);
                            break;
                        }
                        if self.objs[self.pos - 1].is_none() {
                            self.pos -= 1;
                            res = stop(SpaceStop::Filemark, want - done);
                            break;
                        }
                        self.pos -= 1;
                    }
                    done += 1;
                }
                res
            }
            Op::SpaceFm(n) => {
                self.ew = Ew::None;
                let want = n.unsigned_abs();
                let mut done = 0u64;
                let mut res = Obs::Ok;
                while done < want {
                    if n > 0 {
                        match self.objs[self.pos..].iter().position(|o| o.is_none()) {
                            Some(i) => self.pos += i + 1,
                            None => {
                                self.pos = self.objs.len();
                                res = stop(SpaceStop::EndOfData, want - done);
                                break;
                            }
                        }
                    } else {
                        match self.objs[..self.pos].iter().rposition(|o| o.is_none()) {
                            Some(i) => self.pos = i,
                            None => {
                                self.pos = 0;
                                res = stop(SpaceStop::BeginningOfTape, want - done);
                                break;
                            }
                        }
                    }
                    done += 1;
                }
                res
            }
            Op::Eod => {
                self.ew = Ew::None;
                self.pos = self.objs.len();
                Obs::Ok
            }
            Op::Rewind => {
                self.ew = Ew::None;
                self.pos = 0;
                Obs::Ok
            }
            Op::Locate(b) => {
                self.ew = Ew::None;
                if b as usize > self.objs.len() {
                    self.pos = self.objs.len();
                    Obs::Err(format!("beyond {b}"))
                } else {
                    self.pos = b as usize;
                    Obs::Ok
                }
            }
            Op::Reopen => {
                self.ew = Ew::None;
                self.pos = 0;
                Obs::Ok
            }
        };
        let file = self.objs[..self.pos].iter().filter(|o| o.is_none()).count() as u64;
        let bif = match self.objs[..self.pos].iter().rposition(|o| o.is_none()) {
            Some(i) => (self.pos - i - 1) as u64,
            None => self.pos as u64,
        };
        (obs, (self.pos as u64, file, bif))
    }
}

/// Write-behind after every block, waited for a few blocks behind: the model holds
/// with the writeback thread busy under every write, overwrite and reopen.
const TINY_WRITE_BEHIND: WriteBehind = WriteBehind {
    start_every: 1,
    dirty_max: 4096,
};

fn block(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add(i as u8).wrapping_mul(31))
        .collect()
}

fn apply_real(c: &mut Cartridge, dir: &std::path::Path, op: &Op) -> Obs {
    match *op {
        Op::Write(len, seed) => {
            let b = block(len, seed);
            // Odd seeds write the block as two parts (a record's header and payload
            // held apart): the cartridge must not tell the difference.
            let written = if seed % 2 == 1 {
                let (head, tail) = b.split_at(seed as usize % len);
                c.write_block_parts(&[head, tail])
            } else {
                c.write_block(&b)
            };
            match written {
                Ok(w) => Obs::Written(w == Written::EarlyWarning),
                Err(e) => err(e),
            }
        }
        Op::WriteFm(n) => c
            .write_filemarks(n, true)
            .map(|_| Obs::Ok)
            .unwrap_or_else(err),
        Op::Read(buflen) => {
            let mut buf = vec![0u8; buflen];
            match c.read_block(&mut buf) {
                Ok(Read::Block(n)) => Obs::Block(buf[..n].to_vec()),
                Ok(Read::Filemark) => Obs::Filemark,
                Ok(Read::EndOfData) => Obs::Eod,
                Err(e) => err(e),
            }
        }
        Op::SpaceBlocks(n) => c.space_blocks(n).map(|_| Obs::Ok).unwrap_or_else(err),
        Op::SpaceFm(n) => c.space_filemarks(n).map(|_| Obs::Ok).unwrap_or_else(err),
        Op::Eod => c.space_to_eod().map(|_| Obs::Ok).unwrap_or_else(err),
        Op::Rewind => c.rewind().map(|_| Obs::Ok).unwrap_or_else(err),
        Op::Locate(b) => c.locate(b).map(|_| Obs::Ok).unwrap_or_else(err),
        Op::Reopen => {
            *c = Cartridge::open(dir).expect("reopen");
            c.set_write_behind(Some(TINY_WRITE_BEHIND));
            Obs::Ok
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn cartridge_matches_reference_model(ops in proptest::collection::vec(op(), 1..80), worm in proptest::bool::weighted(0.25)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("TV0001L9");
        let mut meta = CartridgeMeta::new("TV0001L9", CAPACITY, EARLY_WARNING);
        meta.worm = worm;
        Cartridge::create(&dir, &meta).unwrap();
        let mut c = Cartridge::open(&dir).unwrap();
        c.set_write_behind(Some(TINY_WRITE_BEHIND));
        let mut m = Model { objs: Vec::new(), pos: 0, ew: Ew::None, worm };
        for (i, op) in ops.iter().enumerate() {
            let got = apply_real(&mut c, &dir, op);
            let (want, (blk, file, bif)) = m.apply(op);
            prop_assert_eq!(&got, &want, "op #{} {:?}", i, op);
            let p = c.position().unwrap();
            prop_assert_eq!((p.block, p.file, p.block_in_file), (blk, file, bif), "position after op #{} {:?}", i, op);
            let st = c.status().unwrap();
            prop_assert_eq!(st.bot, blk == 0);
            prop_assert_eq!(st.eod, blk as usize == m.objs.len());
            prop_assert_eq!(st.at_filemark, blk > 0 && m.objs[blk as usize - 1].is_none());
        }
        prop_assert_eq!(c.bytes_used(), m.offset(m.objs.len()));
    }
}
