//! Preallocated segments on real files: zeros run ahead of the data while the log is open, a
//! copy taken then (what a crash leaves) recovers every record with no torn tail, and a clean
//! close or a rotation cuts the zeros.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use writebehind_wal::reader::read_segment;
use writebehind_wal::{inspect, WalBuilder, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};

const N: u64 = 1000;
const PAYLOAD: usize = 100;

fn payload(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8 + 1; PAYLOAD]
}

fn data_len(records: u64) -> u64 {
    SEGMENT_HEADER_LEN as u64 + records * (FRAME_HEADER_LEN + PAYLOAD) as u64
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn append_n(wal: &writebehind_wal::Wal, from: u64, to: u64) {
    for i in from..=to {
        assert_eq!(wal.append(1, &payload(i)).unwrap().wait().unwrap(), i);
    }
}

fn replayed(wal: &writebehind_wal::Wal) -> Vec<(u64, Vec<u8>)> {
    wal.replay(1)
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload)).unwrap())
        .collect()
}

#[test]
fn a_copy_of_an_open_log_recovers_every_record_and_a_clean_close_cuts_the_zeros() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let (wal, _) = WalBuilder::new(&live).open().unwrap();
    append_n(&wal, 1, N);
    let seg = segments(&live).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let data = data_len(N) as usize;
    assert!(bytes.len() > data, "no zeros ahead: {} bytes", bytes.len());
    assert!(bytes[data..].iter().all(|&b| b == 0));
    assert_eq!(bytes[12], 1, "segment header without the zero-tail flag");

    // What a kill -9 leaves: the data and the zeros after it.
    let crashed = tmp.path().join("crashed");
    copy_dir(&live, &crashed);
    wal.close().unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), data as u64);

    let report = inspect::scan_dir(&crashed, |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.records(), N);

    let (wal, rec) = WalBuilder::new(&crashed).open().unwrap();
    assert_eq!((rec.records, rec.next_lsn), (N, N + 1));
    assert_eq!(rec.torn_tail, None);
    assert_eq!(rec.skipped, vec![]);
    let cseg = segments(&crashed).pop().unwrap();
    // Cut back at open; appends go on from the last record.
    append_n(&wal, N + 1, N + 10);
    wal.close().unwrap();
    assert_eq!(std::fs::metadata(&cseg).unwrap().len(), data_len(N + 10));
    let (wal, rec) = WalBuilder::new(&crashed).open().unwrap();
    assert_eq!((rec.records, rec.torn_tail), (N + 10, None));
    let got = replayed(&wal);
    assert_eq!(
        got,
        (1..=N + 10).map(|i| (i, payload(i))).collect::<Vec<_>>()
    );
    wal.close().unwrap();
}

#[test]
fn bytes_other_than_zeros_after_the_data_are_still_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let (wal, _) = WalBuilder::new(&live).open().unwrap();
    append_n(&wal, 1, N);
    let crashed = tmp.path().join("crashed");
    copy_dir(&live, &crashed);
    wal.close().unwrap();

    let seg = segments(&crashed).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let data = data_len(N) as usize;
    bytes[data + 3] = 0x5a;
    std::fs::write(&seg, &bytes).unwrap();
    let (wal, rec) = WalBuilder::new(&crashed).open().unwrap();
    assert_eq!(rec.records, N);
    let torn = rec.torn_tail.unwrap();
    assert_eq!(torn.offset, data as u64);
    assert_eq!(torn.bytes_cut, (bytes.len() - data) as u64);
    assert_eq!(std::fs::read(&torn.saved_to).unwrap(), &bytes[data..]);
    append_n(&wal, N + 1, N + 1);
    wal.close().unwrap();
}

#[test]
fn rotated_segments_end_at_their_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let (wal, _) = WalBuilder::new(&live)
        .segment_size(40 << 10)
        .open()
        .unwrap();
    append_n(&wal, 1, N);
    let segs = segments(&live);
    assert!(segs.len() >= 3, "{segs:?}");
    for s in &segs[..segs.len() - 1] {
        let bytes = std::fs::read(s).unwrap();
        let c = read_segment(&bytes, false).unwrap();
        assert_eq!(c.damage, vec![]);
        assert_eq!(c.valid_len, bytes.len() as u64, "{}", s.display());
    }
    let last = std::fs::read(segs.last().unwrap()).unwrap();
    assert_eq!(
        last.len() as u64,
        40 << 10,
        "active segment not zero-filled to its size"
    );
    wal.close().unwrap();
    let (wal, rec) = WalBuilder::new(&live).open().unwrap();
    assert_eq!((rec.records, rec.torn_tail), (N, None));
    assert_eq!(replayed(&wal).len() as u64, N);
    wal.close().unwrap();
}

#[test]
fn without_preallocation_segments_are_plain_and_zeros_are_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let (wal, _) = WalBuilder::new(&live).preallocate(false).open().unwrap();
    append_n(&wal, 1, N);
    let seg = segments(&live).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(bytes.len() as u64, data_len(N));
    assert_eq!(bytes[12], 0);
    wal.close().unwrap();

    // A later open with preallocation on keeps writing that segment plainly: its header
    // does not promise zeros.
    let (wal, _) = WalBuilder::new(&live).open().unwrap();
    append_n(&wal, N + 1, N + 5);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), data_len(N + 5));
    wal.close().unwrap();

    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend([0u8; 4096]);
    std::fs::write(&seg, &bytes).unwrap();
    let (wal, rec) = WalBuilder::new(&live).open().unwrap();
    assert_eq!(rec.records, N + 5);
    let torn = rec.torn_tail.unwrap();
    assert_eq!((torn.offset, torn.bytes_cut), (data_len(N + 5), 4096));
    wal.close().unwrap();
}
