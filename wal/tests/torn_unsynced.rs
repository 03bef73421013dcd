//! A torn unsynced region is a torn tail, not corruption: past the sync watermark the first
//! damaged byte of the last segment ends the log, even when intact frames follow it; before
//! the watermark damage stays a loud error.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use writebehind_wal::io::{CrashMode, FaultyIo};
use writebehind_wal::replica::encode_frames;
use writebehind_wal::{
    sync_watermark, Durability, Error, Frame, Wal, WalBuilder, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};

const SEG: &str = "/w/00000000000000000001.wal";
const PAYLOAD: usize = 40;
const FRAME: usize = FRAME_HEADER_LEN + PAYLOAD;

fn open(fs: &FaultyIo) -> writebehind_wal::Result<(Wal, writebehind_wal::Recovery)> {
    WalBuilder::new("/w").io(Arc::new(fs.clone())).open()
}

fn payload(lsn: u64) -> Vec<u8> {
    vec![lsn as u8 | 0x80; PAYLOAD]
}

fn offset_of(lsn: u64) -> usize {
    SEGMENT_HEADER_LEN + (lsn as usize - 1) * FRAME
}

fn lsns(wal: &Wal) -> Vec<u64> {
    wal.replay(1).unwrap().map(|r| r.unwrap().lsn).collect()
}

/// Records 1..=`synced` fsynced, `synced+1..=total` written in one unsynced group, then a
/// power cut after which the disk holds the segment bytes `damage` makes of what was written
/// (into preallocated zeros), and the watermark as last written.
fn crashed_log(synced: u64, total: u64, damage: impl FnOnce(&mut Vec<u8>)) -> FaultyIo {
    let fs = FaultyIo::new();
    let (wal, _) = open(&fs).unwrap();
    for l in 1..=synced {
        assert_eq!(wal.append(1, &payload(l)).unwrap().wait().unwrap(), l);
    }
    let tickets: Vec<_> = (synced + 1..=total)
        .map(|l| wal.append_with(1, &payload(l), Durability::None).unwrap())
        .collect();
    for t in tickets {
        t.wait().unwrap();
    }
    assert_eq!(wal.durable_lsn(), synced);
    let mut seg = fs.read_file(Path::new(SEG)).unwrap();
    assert!(seg.len() > offset_of(total + 1), "preallocated");
    let wm_path = PathBuf::from("/w").join(sync_watermark::FILE_NAME);
    let wm = fs.read_file(&wm_path).unwrap();
    fs.crash(CrashMode::LoseUnsynced);
    drop(wal);
    damage(&mut seg);
    fs.write_file(Path::new(SEG), &seg);
    fs.write_file(&wm_path, &wm);
    fs
}

#[test]
fn a_zero_hole_past_the_watermark_followed_by_intact_frames_is_a_torn_tail() {
    let fs = crashed_log(3, 8, |s| s[offset_of(5)..offset_of(6)].fill(0));
    let (wal, rec) = open(&fs).unwrap();
    let t = rec.torn_tail.unwrap();
    assert_eq!(
        (t.segment.as_path(), t.offset),
        (Path::new(SEG), offset_of(5) as u64)
    );
    assert_eq!(t.reason, "frame LSN is 0");
    assert_eq!(lsns(&wal), vec![1, 2, 3, 4]);
    assert_eq!(rec.next_lsn, 5);
    // The cut bytes were copied aside, intact frames after the hole included.
    let saved = fs.read_file(&t.saved_to).unwrap();
    assert_eq!(&saved[FRAME..2 * FRAME], &encode_frames(&[rec6()])[..]);
    assert_eq!(wal.append(1, b"after").unwrap().wait().unwrap(), 5);
    drop(wal);
    let (wal, rec) = open(&fs).unwrap();
    assert_eq!(rec.torn_tail, None);
    assert_eq!(lsns(&wal), vec![1, 2, 3, 4, 5]);
}

fn rec6() -> Frame {
    Frame {
        lsn: 6,
        kind: 1,
        payload: payload(6),
    }
}

#[test]
fn a_half_written_frame_past_the_watermark_followed_by_intact_frames_is_a_torn_tail() {
    let fs = crashed_log(3, 8, |s| s[offset_of(4) + FRAME / 2..offset_of(5)].fill(0));
    let (wal, rec) = open(&fs).unwrap();
    let t = rec.torn_tail.unwrap();
    assert_eq!(t.offset, offset_of(4) as u64);
    assert_eq!(t.reason, "frame checksum mismatch");
    assert_eq!(lsns(&wal), vec![1, 2, 3]);
    assert_eq!(rec.next_lsn, 4);
}

#[test]
fn the_same_damage_before_the_watermark_is_corruption_naming_segment_and_offset() {
    for (what, at) in [
        ("hole", offset_of(2)),
        ("half frame", offset_of(2) + FRAME / 2),
    ] {
        let fs = crashed_log(3, 8, |s| s[at..offset_of(3)].fill(0));
        let before = fs.files();
        let e = open(&fs).unwrap_err();
        assert!(
            matches!(&e, Error::Corrupt { segment, offset, .. }
                if segment == Path::new(SEG) && *offset == offset_of(2) as u64),
            "{what}: {e:?}"
        );
        assert_eq!(fs.files(), before, "{what}: a refused open changes nothing");
        // Salvage mode opens and says what it skipped.
        let (_wal, rec) = WalBuilder::new("/w")
            .io(Arc::new(fs.clone()))
            .salvage(true)
            .open()
            .unwrap();
        assert_eq!(rec.skipped[0].offset, offset_of(2) as u64, "{what}");
    }
}

/// Fsynced data missing (the file ends, or zeros start, before the watermark) is loud too.
#[test]
fn a_segment_ending_before_its_watermark_is_corruption() {
    let fs = crashed_log(3, 3, |s| s[offset_of(3)..].fill(0));
    let e = open(&fs).unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { offset, .. } if *offset == offset_of(3) as u64),
        "{e:?}"
    );
}

/// A log without a watermark (written before it existed) keeps the old rule: intact frames
/// after damage make it corruption.
#[test]
fn without_a_watermark_the_old_rule_holds() {
    let fs = crashed_log(3, 8, |s| s[offset_of(5)..offset_of(6)].fill(0));
    let wm_path = PathBuf::from("/w").join(sync_watermark::FILE_NAME);
    fs.write_file(&wm_path, b"");
    assert!(matches!(open(&fs), Err(Error::Corrupt { .. })));
    let fs = crashed_log(3, 8, |s| s[offset_of(5)..].fill(0));
    // Zeros to the end of a preallocated segment: a clean end, as before.
    let (wal, rec) = open(&fs).unwrap();
    assert_eq!((rec.torn_tail, lsns(&wal)), (None, vec![1, 2, 3, 4]));
}

/// On real files: a closed log (watermark at its end) that then gets a zero hole and intact
/// frames appended, as a torn group over preallocated space leaves them.
#[test]
fn real_files_zero_hole_then_frames_past_the_watermark_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (wal, _) = WalBuilder::new(dir).open().unwrap();
    for l in 1..=3 {
        wal.append(1, &payload(l)).unwrap().wait().unwrap();
    }
    wal.close().unwrap();
    let seg = dir.join("00000000000000000001.wal");
    let mut bytes = std::fs::read(&seg).unwrap();
    let good = bytes.len() as u64;
    let later: Vec<Frame> = (5..=6)
        .map(|lsn| Frame {
            lsn,
            kind: 1,
            payload: payload(lsn),
        })
        .collect();
    bytes.extend_from_slice(&[0u8; FRAME]);
    bytes.extend_from_slice(&encode_frames(&later));
    bytes.extend_from_slice(&[0u8; 8192]);
    std::fs::write(&seg, &bytes).unwrap();
    // The read-only check (`writebehind wal verify`) reads it as recovery
    // does: one torn tail from the hole to the end, no corruption.
    let scan = writebehind_wal::inspect::scan_dir(dir, |_, _| {}).unwrap();
    assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
    let p = &scan.problems[0];
    assert_eq!(
        (p.kind, p.offset, p.len),
        (
            writebehind_wal::inspect::ProblemKind::TornTail,
            good,
            bytes.len() as u64 - good
        )
    );
    assert_eq!(scan.records(), 3);
    let (wal, rec) = WalBuilder::new(dir).open().unwrap();
    let t = rec.torn_tail.unwrap();
    assert_eq!((t.offset, t.bytes_cut), (good, bytes.len() as u64 - good));
    assert_eq!(lsns(&wal), vec![1, 2, 3]);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good);
}

fn cases() -> u32 {
    std::env::var("WB_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Groups with fsyncs between some of them, then a power cut that keeps an arbitrary
    /// subset of the unsynced bytes' 4 KiB pages (the rest keep their old content: zeros
    /// where preallocated, nothing past the old end). The log always opens, keeps every
    /// fsynced record, and stops at the first record not intact on disk.
    #[test]
    fn torn_pages_always_open_keep_every_fsynced_record_and_stop_at_the_first_hole(
        groups in prop::collection::vec((1usize..40, 0usize..300, any::<bool>()), 1..10),
        prealloc in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let fs = FaultyIo::with_seed(seed);
        fs.set_zero_extend(prealloc);
        let (wal, _) = open(&fs).unwrap();
        let mut written: Vec<Frame> = Vec::new();
        for (n, len, sync) in &groups {
            let tickets: Vec<_> = (0..*n)
                .map(|_| {
                    let lsn = wal.last_lsn() + 1;
                    let p: Vec<u8> = (0..*len).map(|i| (lsn as usize * 7 + i) as u8 | 1).collect();
                    written.push(Frame { lsn, kind: 2, payload: p.clone() });
                    wal.append_with(2, &p, Durability::None).unwrap()
                })
                .collect();
            for t in tickets {
                t.wait().unwrap();
            }
            if *sync {
                wal.sync().unwrap();
            }
        }
        let synced = wal.durable_lsn();
        fs.crash(CrashMode::TornPages);
        drop(wal);
        let image = fs.read_file(Path::new(SEG)).unwrap();
        // Records intact on disk at their place, up to the first one that is not.
        let mut intact = 0;
        let mut at = SEGMENT_HEADER_LEN;
        for r in &written {
            let f = encode_frames([r]);
            if image.get(at..at + f.len()) != Some(&f[..]) {
                break;
            }
            intact += 1;
            at += f.len();
        }
        let (wal, rec) = open(&fs).map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
        let got: Vec<Frame> = wal.replay(1).unwrap().collect::<Result<_, _>>().unwrap();
        prop_assert!(got.len() as u64 >= synced, "lost fsynced records: {} < {}", got.len(), synced);
        prop_assert_eq!(got.len(), intact);
        prop_assert_eq!(&got[..], &written[..got.len()]);
        prop_assert_eq!(rec.next_lsn, got.len() as u64 + 1);
        prop_assert_eq!(wal.append(0, b"after").unwrap().wait().unwrap(), got.len() as u64 + 1);
    }
}
