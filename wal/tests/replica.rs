//! The replication seam with an in-memory sink: what the committer hands over, when
//! `Replicated` tickets resolve, and rebuilding a log from what a replica holds.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use writebehind_wal::replica::{encode_frames, parse_frames, seed};
use writebehind_wal::{Durability, Error, Group, ReplicaSink, ReplicaWatermark, StdIo, WalBuilder};

/// Keeps every group; acknowledges them only when the test says so.
#[derive(Debug, Default)]
struct MemorySink {
    groups: Mutex<Vec<Group>>,
}

impl ReplicaSink for MemorySink {
    fn offer(&self, group: Group) {
        self.groups.lock().push(group);
    }
}

impl MemorySink {
    fn frames(&self) -> Vec<u8> {
        self.groups
            .lock()
            .iter()
            .flat_map(|g| g.frames.clone())
            .collect()
    }
}

fn open(
    dir: &std::path::Path,
    timeout: Duration,
) -> (writebehind_wal::Wal, Arc<MemorySink>, ReplicaWatermark) {
    let sink = Arc::new(MemorySink::default());
    let acks = ReplicaWatermark::new(0).unwrap();
    let (wal, _) = WalBuilder::new(dir)
        .replica(sink.clone(), acks.clone(), timeout)
        .open()
        .unwrap();
    (wal, sink, acks)
}

#[test]
fn every_group_reaches_the_sink_in_order_with_its_exact_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, sink, _acks) = open(tmp.path(), Duration::from_secs(5));
    for i in 0..50u32 {
        let mode = if i % 2 == 0 {
            Durability::Fsync
        } else {
            Durability::None
        };
        wal.append_with(1, &i.to_le_bytes(), mode)
            .unwrap()
            .wait()
            .unwrap();
    }
    wal.sync().unwrap();
    let groups = sink.groups.lock().clone();
    let mut next = 1;
    for g in &groups {
        assert_eq!(g.first, next);
        let spans = parse_frames(&g.frames).unwrap();
        assert_eq!(
            (spans[0].lsn, spans[spans.len() - 1].lsn),
            (g.first, g.last)
        );
        next = g.last + 1;
    }
    assert_eq!(next, 51);
    let records: Vec<_> = wal.replay(1).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(encode_frames(&records), sink.frames());
    wal.close().unwrap();
}

#[test]
fn replicated_resolves_after_the_ack_and_other_modes_never_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _sink, acks) = open(tmp.path(), Duration::from_secs(10));
    // Nobody acknowledges: Fsync, Buffered and None resolve all the same.
    for mode in [
        Durability::Fsync,
        Durability::None,
        Durability::Buffered {
            interval: Duration::from_millis(5),
        },
    ] {
        assert!(wal.append_with(1, b"x", mode).unwrap().wait().is_ok());
    }
    assert_eq!(acks.replicated(), 0);
    let t = wal.append_with(1, b"r", Durability::Replicated).unwrap();
    let lsn = t.lsn();
    assert_eq!(lsn, 4);
    let waiter = std::thread::spawn(move || t.wait());
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished());
    acks.advance(3);
    std::thread::sleep(Duration::from_millis(20));
    assert!(!waiter.is_finished());
    acks.advance(4);
    assert_eq!(waiter.join().unwrap().unwrap(), 4);
    wal.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_awaited_ticket_leads_then_waits_for_the_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, sink, acks) = open(tmp.path(), Duration::from_secs(10));
    let wal = Arc::new(wal);
    let acker = {
        let acks = acks.clone();
        let sink = sink.clone();
        tokio::spawn(async move {
            loop {
                if let Some(last) = sink.groups.lock().last().map(|g| g.last) {
                    acks.advance(last);
                    if last >= 20 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    for i in 1..=20u64 {
        let lsn = wal
            .append_with(1, b"a", Durability::Replicated)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(lsn, i);
        assert!(acks.replicated() >= i);
    }
    acker.await.unwrap();
    Arc::try_unwrap(wal).unwrap().close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_times_out_naming_the_sinks_error_and_stops_on_close() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _sink, acks) = open(tmp.path(), Duration::from_millis(100));
    acks.fail("replica unreachable: connection refused");
    let started = Instant::now();
    let e = wal
        .append_with(1, b"a", Durability::Replicated)
        .unwrap()
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(
        matches!(&e, Error::ReplicaTimeout { lsn: 1, replicated: 0, last_error: Some(m), .. } if m.contains("connection refused")),
        "{e:?}"
    );
    // The record is in the local log all the same.
    assert_eq!(wal.replay(1).unwrap().count(), 1);
    acks.close("sink task ended");
    let e = wal
        .append_with(1, b"b", Durability::Replicated)
        .unwrap()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ReplicaStopped { lsn: 2, .. }), "{e:?}");
    wal.close().unwrap();
}

#[test]
fn replicated_without_a_replica_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = WalBuilder::new(tmp.path()).open().unwrap();
    assert!(matches!(
        wal.append_with(1, b"a", Durability::Replicated),
        Err(Error::Config { .. })
    ));
    assert_eq!(wal.last_lsn(), 0);
    wal.close().unwrap();
}

#[test]
fn seed_rebuilds_a_log_from_replica_frames() {
    let src = tempfile::tempdir().unwrap();
    let (wal, sink, _acks) = open(src.path(), Duration::from_secs(5));
    for i in 0..10u32 {
        wal.append(1, &i.to_le_bytes()).unwrap().wait().unwrap();
    }
    wal.write_checkpoint(4, b"state at 4").unwrap();
    let records: Vec<_> = wal.replay(5).unwrap().map(|r| r.unwrap()).collect();
    let ckpt = std::fs::read(src.path().join("00000000000000000004.ckpt")).unwrap();
    wal.close().unwrap();
    let frames = sink.frames();
    let spans = parse_frames(&frames).unwrap();
    let from5 = &frames[spans[4].range.start..];

    let dst = tempfile::tempdir().unwrap();
    seed(&StdIo, dst.path(), Some(&ckpt), from5).unwrap();
    let (copy, rec) = WalBuilder::new(dst.path()).open().unwrap();
    assert_eq!(rec.next_lsn, 11);
    assert_eq!(copy.load_checkpoint().unwrap().unwrap().data, b"state at 4");
    let copied: Vec<_> = copy.replay(1).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(copied, records);
    copy.close().unwrap();

    // Not into a directory that holds a log.
    assert!(matches!(
        seed(&StdIo, dst.path(), None, from5),
        Err(Error::Config { .. })
    ));
    // The frames must follow the checkpoint without a hole.
    let gap = tempfile::tempdir().unwrap();
    let from6 = &frames[spans[5].range.start..];
    assert!(matches!(
        seed(&StdIo, gap.path(), Some(&ckpt), from6),
        Err(Error::ReplicaGap {
            expected: 5,
            found: 6
        })
    ));
    assert!(std::fs::read_dir(gap.path()).unwrap().next().is_none());
}

fn records(from: u64, to: u64) -> Vec<writebehind_wal::Frame> {
    (from..=to)
        .map(|lsn| writebehind_wal::Frame {
            lsn,
            kind: 3,
            payload: format!("imported {lsn}").into_bytes(),
        })
        .collect()
}

fn all(wal: &writebehind_wal::Wal) -> Vec<writebehind_wal::Frame> {
    wal.replay(1).unwrap().map(|r| r.unwrap()).collect()
}

/// What the stream holds past the local end is imported: appends continue after it, and a
/// reopen sees it as ordinary records.
#[test]
fn import_continues_the_log_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = WalBuilder::new(tmp.path())
        .segment_size(400)
        .open()
        .unwrap();
    for _ in 0..3 {
        wal.append(1, b"local").unwrap().wait().unwrap();
    }
    wal.close().unwrap();
    let (wal, _) = WalBuilder::new(tmp.path())
        .segment_size(400)
        .open()
        .unwrap();
    let imported = records(4, 20);
    assert_eq!(wal.import(None, &encode_frames(&imported)).unwrap(), 20);
    assert_eq!((wal.last_lsn(), wal.durable_lsn()), (20, 20));
    assert!(
        wal.segment_count() > 1,
        "the import rotated like appends do"
    );
    assert_eq!(wal.append(1, b"next").unwrap().wait().unwrap(), 21);
    let got = all(&wal);
    assert_eq!(got.len(), 21);
    assert_eq!(&got[3..20], &imported[..]);
    drop(wal);
    let (wal, rec) = WalBuilder::new(tmp.path())
        .segment_size(400)
        .open()
        .unwrap();
    assert_eq!((rec.next_lsn, rec.torn_tail), (22, None));
    assert_eq!(&all(&wal)[3..20], &imported[..]);
}

/// With a checkpoint past the local end the log jumps to it: the checkpoint is the newest,
/// frames and appends continue after it, and the next open accepts the jump.
#[test]
fn import_with_a_checkpoint_jumps_past_the_local_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = WalBuilder::new(tmp.path()).open().unwrap();
    wal.append(1, b"local").unwrap().wait().unwrap();
    wal.close().unwrap();
    let (wal, _) = WalBuilder::new(tmp.path()).open().unwrap();
    let ck = writebehind_wal::checkpoint::encode(50, b"state at 50");
    let imported = records(51, 53);
    assert_eq!(
        wal.import(Some((50, &ck)), &encode_frames(&imported))
            .unwrap(),
        53
    );
    assert_eq!(wal.load_checkpoint().unwrap().unwrap().lsn, 50);
    assert_eq!(wal.append(1, b"next").unwrap().wait().unwrap(), 54);
    assert_eq!(wal.replay(51).unwrap().count(), 4);
    wal.close().unwrap();
    let (wal, rec) = WalBuilder::new(tmp.path()).open().unwrap();
    assert_eq!(rec.checkpoint.map(|c| c.lsn), Some(50));
    assert_eq!(rec.next_lsn, 55);
    assert_eq!(&all(&wal)[1..4], &imported[..]);
    // A checkpoint with no frames: the next append takes the LSN after it.
    drop(wal);
    let tmp2 = tempfile::tempdir().unwrap();
    let (wal, _) = WalBuilder::new(tmp2.path()).open().unwrap();
    let ck = writebehind_wal::checkpoint::encode(9, b"nine");
    assert_eq!(wal.import(Some((9, &ck)), &[]).unwrap(), 9);
    assert_eq!(wal.sync().unwrap(), 9);
    assert_eq!(wal.append(1, b"ten").unwrap().wait().unwrap(), 10);
    wal.close().unwrap();
    let (_wal, rec) = WalBuilder::new(tmp2.path()).open().unwrap();
    assert_eq!(rec.next_lsn, 11);
}

fn dir_snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A gap, a bad checksum or a stale checkpoint is refused and changes nothing on disk; an
/// import after an append is refused.
#[test]
fn import_refuses_gaps_damage_and_late_calls_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = WalBuilder::new(tmp.path()).open().unwrap();
    wal.sync().unwrap();
    let before = dir_snapshot(tmp.path());

    let e = wal
        .import(None, &encode_frames(&records(2, 3)))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ReplicaGap {
                expected: 1,
                found: 2
            }
        ),
        "{e:?}"
    );
    let mut bad = encode_frames(&records(1, 3));
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        wal.import(None, &bad),
        Err(Error::ReplicaData { .. })
    ));
    let ck = writebehind_wal::checkpoint::encode(5, b"five");
    let e = wal
        .import(Some((5, &ck)), &encode_frames(&records(7, 8)))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ReplicaGap {
                expected: 6,
                found: 7
            }
        ),
        "{e:?}"
    );
    let mut bad_ck = ck.clone();
    bad_ck[42] ^= 1;
    assert!(matches!(
        wal.import(Some((5, &bad_ck)), &[]),
        Err(Error::ReplicaData { .. })
    ));
    assert_eq!(dir_snapshot(tmp.path()), before);
    assert_eq!(wal.last_lsn(), 0);
    assert!(!wal.is_poisoned());

    assert_eq!(wal.append(1, b"local").unwrap().wait().unwrap(), 1);
    let e = wal
        .import(None, &encode_frames(&records(2, 3)))
        .unwrap_err();
    assert!(matches!(e, Error::ImportAfterAppend { last: 1 }), "{e:?}");
    assert_eq!(wal.last_lsn(), 1);
}

/// Imported frames came from the replica: they are not offered back to the sink.
#[test]
fn imported_frames_are_not_offered_to_the_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, sink, _acks) = open(tmp.path(), Duration::from_secs(5));
    assert_eq!(wal.import(None, &encode_frames(&records(1, 2))).unwrap(), 2);
    assert!(sink.groups.lock().is_empty());
    wal.append(1, b"x").unwrap().wait().unwrap();
    assert_eq!(sink.groups.lock().len(), 1);
}
