//! ImageWriter -> MemTape -> ImageReader, damage located by position, spanning.
mod common;
use common::*;
use tape_formats::*;

struct Written {
    tape: MemTape,
    header: ImageHeader,
    trailer: ImageTrailer,
}

/// Write an image part with `n` records (unencrypted, uncompressed, 3 extents each).
fn write_part(
    tape: MemTape,
    header: ImageHeader,
    n: u64,
    digest: &mut ContentDigest,
    status: TrailerStatus,
) -> Written {
    let mut w = ImageWriter::start(tape, header.clone()).unwrap();
    for _ in 0..n {
        let seq = w.next_sequence();
        let base = seq * 3 * 4096;
        let extents = [
            Extent {
                offset: base,
                length: 4096,
                kind: ExtentKind::Data,
            },
            Extent {
                offset: base + 4096,
                length: 4096,
                kind: ExtentKind::Zero,
            },
            Extent {
                offset: base + 8192,
                length: 4096,
                kind: ExtentKind::Data,
            },
        ];
        let plain: Vec<u8> = (0..8192u64).map(|i| ((i + seq) % 253) as u8).collect();
        digest.update_record(&extents, &plain).unwrap();
        let f = w.fields(Compression::None, RecordCrypto::None, 8192);
        if seq % 2 == 1 {
            // Odd records: the header framed apart, the payload left where it was.
            let mut header = vec![0u8; data_header_len(extents.len())];
            w.write_framed_record_parts(&f, &extents, crc32fast::hash(&plain), &mut header, &plain)
                .unwrap();
        } else {
            w.write_record(&f, &extents, &plain).unwrap();
        }
    }
    let (tape, trailer, _) = w.finish(status, digest.finalize()).unwrap();
    Written {
        tape,
        header,
        trailer,
    }
}

/// One part of `n` records on a fresh tape, with the plain header.
fn plain_part(n: u64, status: TrailerStatus) -> Written {
    write_part(
        MemTape::new(),
        plain_header(),
        n,
        &mut ContentDigest::new(DigestScheme::NEWEST),
        status,
    )
}

fn plain_header() -> ImageHeader {
    ImageHeader {
        cipher: Cipher::None,
        compression: Compression::None,
        ..fixed_header()
    }
}

/// Read one tape file, returning (accepted sequences, problems, trailer).
fn read_part(
    tape: &mut MemTape,
) -> (
    Vec<u64>,
    Vec<StreamProblem>,
    Option<ImageTrailer>,
    ContentDigest,
) {
    let mut r = ImageReader::new(tape);
    let (mut seqs, mut probs, mut trailer) = (vec![], vec![], None);
    let mut digest = ContentDigest::new(DigestScheme::NEWEST);
    loop {
        match r.next_event().unwrap() {
            ReadEvent::Header(_) => {}
            ReadEvent::Record {
                record, problem, ..
            } => {
                seqs.push(record.fields.sequence);
                digest
                    .update_record(&record.extents, record.payload)
                    .unwrap();
                probs.extend(problem);
            }
            ReadEvent::Trailer {
                trailer: t,
                problem,
            } => {
                trailer = Some(t);
                probs.extend(problem);
            }
            ReadEvent::Problem(p) => probs.push(p),
            ReadEvent::End { problem, .. } => {
                probs.extend(problem);
                break;
            }
        }
    }
    (seqs, probs, trailer, digest)
}

#[test]
fn written_image_reads_back_clean_with_matching_digest() {
    let mut w = plain_part(5, TrailerStatus::Complete);
    assert_eq!(w.tape.items.len(), 1 + 5 + 1 + 1);
    assert_eq!(w.tape.items.last(), Some(&TapeItem::Filemark));
    let (seqs, probs, trailer, digest) = read_part(&mut w.tape);
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    assert!(probs.is_empty(), "{probs:?}");
    let t = trailer.unwrap();
    assert_eq!(t, w.trailer);
    assert_eq!(t.records_in_part, 5);
    assert_eq!(t.data_bytes, 5 * 8192);
    assert_eq!(t.zero_bytes, 5 * 4096);
    assert_eq!(digest.finalize(), t.digest);
}

fn blocks(t: &mut MemTape) -> &mut Vec<TapeItem> {
    &mut t.items
}

#[test]
fn lost_duplicated_reordered_and_foreign_records_are_reported_by_position() {
    let mut w = plain_part(6, TrailerStatus::Complete);
    let mut other = write_part(
        MemTape::new(),
        ImageHeader {
            image_uuid: [0x99; 16],
            ..plain_header()
        },
        2,
        &mut ContentDigest::new(DigestScheme::NEWEST),
        TrailerStatus::Complete,
    );
    let items = blocks(&mut w.tape);
    // positions: 0 header, 1..=6 records 0..=5, 7 trailer
    let rec2 = items[3].clone();
    items.remove(2); // lose record 1 (position 2)
    items.insert(3, rec2.clone()); // duplicate record 2 right after itself
    items.insert(5, rec2); // record 2 again later: stale/reordered
    let foreign = other.tape.items[1].clone();
    items.insert(6, foreign);
    let (seqs, probs, _, _) = read_part(&mut w.tape);
    assert_eq!(seqs, vec![0, 2, 3, 4, 5]);
    assert_eq!(
        probs[0],
        StreamProblem::LostRecords {
            position: 2,
            expected_sequence: 1,
            found_sequence: 2
        }
    );
    assert_eq!(
        probs[1],
        StreamProblem::DuplicateRecord {
            position: 3,
            sequence: 2
        }
    );
    assert_eq!(
        probs[2],
        StreamProblem::ReorderedRecord {
            position: 5,
            sequence: 2,
            expected_sequence: 4
        }
    );
    assert!(
        matches!(probs[3], StreamProblem::ForeignRecord { position: 6, found, .. } if found == [0x99; 16])
    );
    // the trailer counts 6 records; 5 were accepted
    assert!(probs.iter().any(|p| matches!(
        p,
        StreamProblem::TrailerMismatch {
            field: "records_in_part",
            trailer: 6,
            counted: 5,
            ..
        }
    )));
    let _ = &mut other;
}

#[test]
fn corrupt_record_is_skipped_and_located_and_digest_mismatch_shows() {
    let mut w = plain_part(4, TrailerStatus::Complete);
    if let TapeItem::Block(b) = &mut w.tape.items[3] {
        let n = b.len();
        b[n - 10] ^= 0x04;
    }
    let (seqs, probs, trailer, digest) = read_part(&mut w.tape);
    assert_eq!(seqs, vec![0, 1, 3]);
    assert!(matches!(
        probs[0],
        StreamProblem::Corrupt {
            position: 3,
            source: FormatError::PayloadCrc { .. }
        }
    ));
    assert!(matches!(
        probs[1],
        StreamProblem::LostRecords {
            position: 4,
            expected_sequence: 2,
            found_sequence: 3
        }
    ));
    assert_ne!(digest.finalize(), trailer.unwrap().digest);
}

#[test]
fn truncated_stream_without_trailer_is_reported() {
    let mut w = plain_part(3, TrailerStatus::Complete);
    w.tape.items.truncate(3); // header + 2 records, then end of data
    let (seqs, probs, trailer, _) = read_part(&mut w.tape);
    assert_eq!(seqs, vec![0, 1]);
    assert!(trailer.is_none());
    assert_eq!(
        probs,
        vec![StreamProblem::Truncated {
            position: 3,
            expected_sequence: 2
        }]
    );
}

#[test]
fn stream_not_starting_with_a_header_is_reported() {
    let mut w = plain_part(2, TrailerStatus::Complete);
    w.tape.items.remove(0);
    let (seqs, probs, _, _) = read_part(&mut w.tape);
    assert!(seqs.is_empty());
    assert!(matches!(
        probs[0],
        StreamProblem::MissingHeader {
            position: 0,
            found: "data record"
        }
    ));
}

#[test]
fn writer_refuses_fields_of_another_sequence_or_image() {
    let mut w = ImageWriter::start(MemTape::new(), plain_header()).unwrap();
    let ext = [Extent {
        offset: 0,
        length: 4,
        kind: ExtentKind::Data,
    }];
    let mut f = w.fields(Compression::None, RecordCrypto::None, 4);
    f.sequence = 5;
    assert!(matches!(
        w.write_record(&f, &ext, b"abcd"),
        Err(WriterError::WrongFields { .. })
    ));
    let mut f = w.fields(Compression::None, RecordCrypto::None, 4);
    f.image_uuid = [0; 16];
    assert!(matches!(
        w.write_record(&f, &ext, b"abcd"),
        Err(WriterError::WrongFields { .. })
    ));
    let f = w.fields(Compression::None, RecordCrypto::None, 4);
    assert!(w.write_record(&f, &ext, b"abcd").is_ok());
    assert_eq!(w.next_sequence(), 1);
}

#[test]
fn early_warning_spans_the_image_onto_the_next_volume() {
    let header = plain_header();
    let mut digest = ContentDigest::new(DigestScheme::NEWEST);
    let mut vol1 = MemTape {
        early_warning_at: Some(30_000),
        ..MemTape::new()
    };
    let mut w = ImageWriter::start(&mut vol1, header.clone()).unwrap();
    let ext = [Extent {
        offset: 0,
        length: 8192,
        kind: ExtentKind::Data,
    }];
    let plain = vec![1u8; 8192];
    let mut total = 0;
    while !w.early_warning() {
        let f = w.fields(Compression::None, RecordCrypto::None, 8192);
        let e = [Extent {
            offset: f.sequence * 8192,
            ..ext[0]
        }];
        digest.update_record(&e, &plain).unwrap();
        w.write_record(&f, &e, &plain).unwrap();
        total += 1;
    }
    let (_, t1, _) = w
        .finish(TrailerStatus::Continued, digest.finalize())
        .unwrap();
    assert_eq!(t1.records_in_part, total);
    let h2 = header.next_part(&t1);
    assert_eq!((h2.part, h2.first_sequence), (1, total));
    let mut vol2 = MemTape::new();
    let mut w = ImageWriter::start(&mut vol2, h2.clone()).unwrap();
    for _ in 0..2 {
        let f = w.fields(Compression::None, RecordCrypto::None, 8192);
        let e = [Extent {
            offset: f.sequence * 8192,
            ..ext[0]
        }];
        digest.update_record(&e, &plain).unwrap();
        w.write_record(&f, &e, &plain).unwrap();
    }
    let (_, t2, _) = w
        .finish(TrailerStatus::Complete, digest.finalize())
        .unwrap();
    assert_eq!(t2.records_in_image, total + 2);

    // Both parts validate on their own and join.
    let (s1, p1, _, _) = read_part(&mut vol1);
    let (s2, p2, _, _) = read_part(&mut vol2);
    assert!(p1.is_empty() && p2.is_empty());
    assert_eq!(s2.first(), Some(&total));
    assert_eq!(s1.len() as u64, total);
    let mut j = PartJoiner::new();
    j.accept(&header, &t1).unwrap();
    assert_eq!(j.finish(), Err(SpanError::Incomplete { next_part: 1 }));
    j.accept(&h2, &t2).unwrap();
    assert_eq!(j.finish().unwrap().digest, digest.finalize());
}

#[test]
fn part_joiner_detects_missing_duplicate_out_of_order_foreign_and_gaps() {
    let h0 = plain_header();
    let t = |part, status, in_part, in_image| ImageTrailer {
        image_uuid: h0.image_uuid,
        part,
        status,
        records_in_part: in_part,
        records_in_image: in_image,
        data_bytes: 0,
        zero_bytes: 0,
        stored_bytes: 0,
        digest: [0; 32],
        digest_scheme: h0.digest_scheme,
    };
    let t0 = t(0, TrailerStatus::Continued, 10, 10);
    let h1 = h0.next_part(&t0);
    let t1 = t(1, TrailerStatus::Continued, 5, 15);
    let h2 = h1.next_part(&t1);
    let t2 = t(2, TrailerStatus::Complete, 1, 16);

    let mut j = PartJoiner::new();
    assert_eq!(
        j.accept(&h1, &t1),
        Err(SpanError::MissingPart {
            expected: 0,
            found: 1
        })
    );
    j.accept(&h0, &t0).unwrap();
    assert_eq!(
        j.accept(&h0, &t0),
        Err(SpanError::DuplicatePart { part: 0 })
    );
    assert_eq!(
        j.accept(&h2, &t2),
        Err(SpanError::MissingPart {
            expected: 1,
            found: 2
        })
    );
    let foreign = ImageHeader {
        image_uuid: [1; 16],
        ..h1.clone()
    };
    let tf = ImageTrailer {
        image_uuid: [1; 16],
        ..t1.clone()
    };
    assert!(matches!(
        j.accept(&foreign, &tf),
        Err(SpanError::ForeignPart { .. })
    ));
    let gap = ImageHeader {
        first_sequence: 11,
        ..h1.clone()
    };
    let tgap = t(1, TrailerStatus::Continued, 4, 15);
    assert_eq!(
        j.accept(&gap, &tgap),
        Err(SpanError::SequenceGap {
            part: 1,
            expected_first: 10,
            found_first: 11
        })
    );
    j.accept(&h1, &t1).unwrap();
    assert_eq!(
        j.accept(&h0, &t0),
        Err(SpanError::OutOfOrderPart {
            expected: 2,
            found: 0
        })
    );
    j.accept(&h2, &t2).unwrap();
    assert!(j.is_complete());
    let h3 = h2.next_part(&t2);
    let t3 = t(3, TrailerStatus::Complete, 0, 16);
    assert_eq!(
        j.accept(&h3, &t3),
        Err(SpanError::AfterLastPart {
            part: 3,
            status: TrailerStatus::Complete
        })
    );
}

#[test]
fn aborted_image_is_never_complete() {
    let w = plain_part(1, TrailerStatus::Aborted);
    let mut j = PartJoiner::new();
    j.accept(&w.header, &w.trailer).unwrap();
    assert_eq!(j.finish(), Err(SpanError::Aborted { part: 0 }));
}

/// A drive-like source: one fixed 1 MiB scratch buffer, stale bytes left beyond `n`.
struct ScratchSource(MemTape);
impl BlockSource for ScratchSource {
    type Error = MemTapeError;
    fn read_block(&mut self, buf: &mut Vec<u8>) -> Result<ReadStatus, MemTapeError> {
        if buf.len() < MAX_BLOCK_SIZE {
            buf.resize(MAX_BLOCK_SIZE, 0xEE);
        }
        let mut tmp = Vec::new();
        let st = self.0.read_block(&mut tmp)?;
        if let ReadStatus::Block(n) = st {
            buf[..n].copy_from_slice(&tmp);
        }
        Ok(st)
    }
}

#[test]
fn reader_uses_only_the_first_n_bytes_of_a_reused_buffer() {
    let w = plain_part(3, TrailerStatus::Complete);
    let mut r = ImageReader::new(ScratchSource(w.tape));
    let mut n = 0;
    loop {
        match r.next_event().unwrap() {
            ReadEvent::Record { problem: None, .. }
            | ReadEvent::Header(_)
            | ReadEvent::Trailer { problem: None, .. } => n += 1,
            ReadEvent::End {
                problem: None,
                filemark: true,
                ..
            } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(n, 5);
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Damage {
        Drop(usize),
        Dup(usize),
        Swap(usize),
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a reference model: after any drops/duplicates/swaps of record blocks,
        /// the reader accepts exactly the strictly increasing subsequence it can trust and
        /// reports a problem iff the stream differs from the original.
        #[test]
        fn reader_accepts_increasing_sequences_and_flags_any_damage(
            n in 1u64..12,
            damage in proptest::collection::vec(
                prop_oneof![(0usize..12).prop_map(Damage::Drop), (0usize..12).prop_map(Damage::Dup), (0usize..12).prop_map(Damage::Swap)],
                0..4),
        ) {
            let mut w = plain_part(n, TrailerStatus::Complete);
            let mut recs: Vec<TapeItem> = w.tape.items[1..=n as usize].to_vec();
            let orig = recs.clone();
            for dmg in &damage {
                let len = recs.len();
                if len == 0 { break; }
                match *dmg {
                    Damage::Drop(i) => { recs.remove(i % len); }
                    Damage::Dup(i) => { let x = recs[i % len].clone(); recs.insert(i % len, x); }
                    Damage::Swap(i) => { if len > 1 { recs.swap(i % len, (i + 1) % len); } }
                }
            }
            let seq_of = |it: &TapeItem| match it {
                TapeItem::Block(b) => match decode_block(b).unwrap() { Block::Data(r) => r.fields.sequence, _ => unreachable!() },
                TapeItem::Filemark => unreachable!(),
            };
            // model: keep a record iff its sequence is above every kept one
            let mut expect = vec![];
            for it in &recs {
                let s = seq_of(it);
                if !matches!(expect.last(), Some(&l) if s <= l) { expect.push(s); }
            }
            let damaged = recs != orig;
            let mut items = vec![w.tape.items[0].clone()];
            items.extend(recs);
            items.extend(w.tape.items[n as usize + 1..].iter().cloned());
            w.tape.items = items;
            let (seqs, probs, _, _) = read_part(&mut w.tape);
            prop_assert_eq!(seqs, expect);
            prop_assert_eq!(!probs.is_empty(), damaged, "{:?}", probs);
        }
    }
}
