//! Recovery rules: a torn tail is copied aside and cut; damage before the tail is a typed
//! error unless salvage mode is on, which reports exactly what it skipped.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use writebehind_wal::io::FaultyIo;
use writebehind_wal::{
    Error, Frame, Skipped, Wal, WalBuilder, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};

fn payload(lsn: u64) -> Vec<u8> {
    // Varying lengths so frame boundaries are irregular.
    vec![lsn as u8; (lsn as usize * 7) % 23]
}

fn open(
    fs: &FaultyIo,
    seg: u64,
    salvage: bool,
) -> writebehind_wal::Result<(Wal, writebehind_wal::Recovery)> {
    WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .segment_size(seg)
        .salvage(salvage)
        .open()
}

/// A log of `n` records; returns the segment paths, oldest first.
fn build(fs: &FaultyIo, n: u64, seg: u64) -> Vec<PathBuf> {
    let (wal, _) = open(fs, seg, false).unwrap();
    for i in 1..=n {
        let _ = wal.append(1, &payload(i)).unwrap();
    }
    wal.close().unwrap();
    fs.files()
        .into_iter()
        .map(|f| f.0)
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect()
}

fn replay(wal: &Wal) -> Vec<Frame> {
    wal.replay(1)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn frame_len(lsn: u64) -> u64 {
    (FRAME_HEADER_LEN + payload(lsn).len()) as u64
}

#[test]
fn cutting_the_last_segment_at_every_offset_keeps_exactly_the_whole_records() {
    let base = FaultyIo::new();
    // Unflagged segments: in a preallocated one a cut leaving only zeros is a clean end.
    base.set_zero_extend(false);
    let segs = build(&base, 30, 512);
    assert!(segs.len() >= 2);
    let last = segs.last().unwrap().clone();
    let bytes = base.read_file(&last).unwrap();
    let first_lsn: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    // Frame boundaries in the last segment: (end offset, lsn).
    let mut ends = vec![(SEGMENT_HEADER_LEN as u64, first_lsn - 1)];
    let mut off = SEGMENT_HEADER_LEN as u64;
    for lsn in first_lsn..=30 {
        off += frame_len(lsn);
        ends.push((off, lsn));
    }
    assert_eq!(off, bytes.len() as u64);

    for cut in 0..=bytes.len() {
        let fs = FaultyIo::new();
        for p in &segs {
            fs.write_file(p, &base.read_file(p).unwrap());
        }
        fs.write_file(&last, &bytes[..cut]);
        let (wal, rec) = open(&fs, 512, false).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let (boundary, last_whole) = if cut < SEGMENT_HEADER_LEN {
            (0, first_lsn - 1)
        } else {
            *ends
                .iter()
                .rev()
                .find(|(end, _)| *end <= cut as u64)
                .unwrap()
        };
        assert_eq!(rec.last_lsn, Some(last_whole), "cut {cut}");
        assert_eq!(rec.next_lsn, last_whole + 1, "cut {cut}");
        let got = replay(&wal);
        assert_eq!(got.len() as u64, last_whole, "cut {cut}");
        assert!(got.iter().all(|r| r.payload == payload(r.lsn)));
        let torn_expected = cut as u64 != boundary || cut < SEGMENT_HEADER_LEN;
        match &rec.torn_tail {
            Some(t) if torn_expected => {
                assert_eq!(
                    (t.segment.as_path(), t.offset),
                    (last.as_path(), boundary),
                    "cut {cut}"
                );
                assert_eq!(t.bytes_cut, cut as u64 - boundary, "cut {cut}");
                assert_eq!(
                    fs.read_file(&t.saved_to).unwrap(),
                    &bytes[boundary as usize..cut],
                    "cut {cut}"
                );
            }
            None if !torn_expected => {}
            other => panic!("cut {cut}: torn_tail {other:?}, expected torn: {torn_expected}"),
        }
        // The cut is on disk and the log continues from the right LSN.
        assert_eq!(
            wal.append(2, b"after").unwrap().wait().unwrap(),
            last_whole + 1
        );
        drop(wal);
        let (_wal, rec) = open(&fs, 512, false).unwrap();
        assert_eq!(
            (rec.last_lsn, rec.torn_tail.clone()),
            (Some(last_whole + 1), None),
            "cut {cut}"
        );
    }
}

#[test]
fn zero_filled_and_garbage_tails_are_cut() {
    for junk in [
        vec![0u8; 300],
        vec![0xA5; 7],
        b"not a frame at all, just text".to_vec(),
    ] {
        let fs = FaultyIo::new();
        // Zeros after the records of a preallocated segment are a clean end, not a tail.
        fs.set_zero_extend(false);
        let segs = build(&fs, 10, 1 << 20);
        let p = &segs[0];
        let mut bytes = fs.read_file(p).unwrap();
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&junk);
        fs.write_file(p, &bytes);
        let (wal, rec) = open(&fs, 1 << 20, false).unwrap();
        let t = rec.torn_tail.unwrap();
        assert_eq!((t.offset, t.bytes_cut), (good, junk.len() as u64));
        assert_eq!(replay(&wal).len(), 10);
        assert_eq!(fs.read_file(p).unwrap().len() as u64, good);
    }
}

/// Offset of record `lsn`'s frame in a single-segment log.
fn offset_of(lsn: u64) -> u64 {
    SEGMENT_HEADER_LEN as u64 + (1..lsn).map(frame_len).sum::<u64>()
}

#[test]
fn flipped_bit_before_the_tail_is_a_typed_error_and_salvage_reports_it() {
    let fs = FaultyIo::new();
    let segs = build(&fs, 10, 1 << 20);
    let p = &segs[0];
    let mut bytes = fs.read_file(p).unwrap();
    let at = offset_of(4);
    bytes[at as usize + FRAME_HEADER_LEN] ^= 0x01; // first payload byte of record 4
    fs.write_file(p, &bytes);

    let e = open(&fs, 1 << 20, false).unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { segment, offset, reason } if segment == p && *offset == at && reason == "frame checksum mismatch"),
        "{e:?}"
    );
    // Nothing was changed by the failed open.
    assert_eq!(fs.read_file(p).unwrap(), bytes);

    let (wal, rec) = open(&fs, 1 << 20, true).unwrap();
    assert_eq!(
        rec.skipped,
        vec![
            Skipped {
                segment: p.clone(),
                offset: at,
                len: frame_len(4),
                reason: "frame checksum mismatch".into()
            },
            Skipped {
                segment: p.clone(),
                offset: at + frame_len(4),
                len: 0,
                reason: "LSN gap: expected 4, found 5".into()
            },
        ]
    );
    assert_eq!(rec.torn_tail, None);
    assert_eq!((rec.records, rec.next_lsn), (9, 11));
    let lsns: Vec<u64> = replay(&wal).iter().map(|r| r.lsn).collect();
    assert_eq!(lsns, vec![1, 2, 3, 5, 6, 7, 8, 9, 10]);
}

#[test]
fn replay_reports_damage_that_appears_after_open() {
    let fs = FaultyIo::new();
    let segs = build(&fs, 40, 300);
    let (wal, _) = open(&fs, 300, false).unwrap();
    let victim = &segs[0];
    let mut bytes = fs.read_file(victim).unwrap();
    bytes[SEGMENT_HEADER_LEN + 3] ^= 0x04; // length field of record 1
    fs.write_file(victim, &bytes);
    let mut it = wal.replay(1).unwrap();
    let e = it.next().unwrap().unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { segment, offset, .. } if segment == victim && *offset == SEGMENT_HEADER_LEN as u64),
        "{e:?}"
    );
    assert!(it.next().is_none(), "replay ends after an error");
    // Reading from a later segment does not touch the damaged one.
    let from = name_lsn(&segs[1]);
    let n = wal
        .replay(from)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .len() as u64;
    assert_eq!(n, 40 - from + 1);
}

#[test]
fn corruption_in_an_older_segment_names_it() {
    let fs = FaultyIo::new();
    let segs = build(&fs, 40, 300);
    assert!(segs.len() >= 3);
    let victim = &segs[1];
    let mut bytes = fs.read_file(victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80; // last record of a non-last segment: nothing follows it there
    fs.write_file(victim, &bytes);
    let e = open(&fs, 300, false).unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { segment, .. } if segment == victim),
        "{e:?}"
    );
    let (_wal, rec) = open(&fs, 300, true).unwrap();
    // The damaged last record of that segment, then the LSN it leaves missing.
    let next = segs[2].clone();
    let lost = name_lsn(&next) - 1;
    assert_eq!(
        rec.skipped,
        vec![
            Skipped {
                segment: victim.clone(),
                offset: (bytes.len() as u64) - frame_len(lost),
                len: frame_len(lost),
                reason: "frame checksum mismatch".into()
            },
            Skipped {
                segment: next,
                offset: 0,
                len: 0,
                reason: format!("LSN gap: expected {lost}, found {}", lost + 1)
            },
        ]
    );
    assert_eq!(rec.records, 39);
}

#[test]
fn missing_middle_segment_is_an_lsn_gap() {
    let fs = FaultyIo::new();
    let segs = build(&fs, 40, 300);
    assert!(segs.len() >= 3);
    let (wal, _) = open(&fs, 300, false).unwrap();
    drop(wal);
    // Remove the middle segment by hand (not via truncate_before).
    let gone = segs[1].clone();
    let after = segs[2].clone();
    let expected: u64 = name_lsn(&gone);
    let found: u64 = name_lsn(&after);
    let keep: Vec<(PathBuf, Vec<u8>)> = segs
        .iter()
        .filter(|p| **p != gone)
        .map(|p| (p.clone(), fs.read_file(p).unwrap()))
        .collect();
    let fs = FaultyIo::new();
    for (p, b) in &keep {
        fs.write_file(p, b);
    }
    let e = open(&fs, 300, false).unwrap_err();
    assert!(
        matches!(&e, Error::LsnGap { segment, offset: 0, expected: x, found: y } if *segment == after && *x == expected && *y == found),
        "{e:?}"
    );
    let (_wal, rec) = open(&fs, 300, true).unwrap();
    assert_eq!(rec.skipped.len(), 1);
    assert_eq!(
        rec.skipped[0].reason,
        format!("LSN gap: expected {expected}, found {found}")
    );
}

fn name_lsn(p: &Path) -> u64 {
    p.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn torn_tail_on_real_files_is_saved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = WalBuilder::new(dir.path()).open().unwrap();
    for i in 1..=5 {
        let _ = wal.append(0, &payload(i)).unwrap();
    }
    wal.close().unwrap();
    let seg = dir.path().join(format!("{:020}.wal", 1));
    let mut bytes = std::fs::read(&seg).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&seg, &bytes).unwrap();
    let (wal, rec) = WalBuilder::new(dir.path()).open().unwrap();
    let t = rec.torn_tail.unwrap();
    assert_eq!((t.offset, t.bytes_cut), (good as u64, 3));
    assert_eq!(std::fs::read(&t.saved_to).unwrap(), vec![1, 2, 3]);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good as u64);
    assert_eq!(replay(&wal).len(), 5);
}
