//! Append, replay, reopen, rotation, truncation, checkpoints, concurrency.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use writebehind_wal::io::FaultyIo;
use writebehind_wal::{Durability, Error, Frame, Wal, WalBuilder, MAX_PAYLOAD_LEN};

fn payload(lsn: u64) -> Vec<u8> {
    format!("record-{lsn}").into_bytes()
}

fn replay_all(wal: &Wal, from: u64) -> Vec<Frame> {
    wal.replay(from)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn append_replay_reopen_on_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, rec) = WalBuilder::new(dir.path().join("log")).open().unwrap();
    assert_eq!(rec.next_lsn, 1);
    assert_eq!(rec.records, 0);
    for i in 1..=10u64 {
        let t = wal.append(i as u8, &payload(i)).unwrap();
        assert_eq!(t.lsn(), i);
        assert_eq!(t.wait().unwrap(), i);
    }
    assert_eq!(wal.last_lsn(), 10);
    assert_eq!(wal.durable_lsn(), 10);
    let got = replay_all(&wal, 4);
    assert_eq!(
        got.iter().map(|r| r.lsn).collect::<Vec<_>>(),
        (4..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        got[0],
        Frame {
            lsn: 4,
            kind: 4,
            payload: payload(4)
        }
    );
    wal.close().unwrap();

    let (wal, rec) = WalBuilder::new(dir.path().join("log")).open().unwrap();
    assert_eq!(
        (rec.first_lsn, rec.last_lsn, rec.records, rec.next_lsn),
        (Some(1), Some(10), 10, 11)
    );
    assert_eq!(rec.torn_tail, None);
    assert_eq!(wal.append(0, b"x").unwrap().wait().unwrap(), 11);
    assert_eq!(replay_all(&wal, 0).len(), 11);
    wal.close().unwrap();
}

#[test]
fn rotation_spreads_records_over_segments_and_replay_spans_them() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .segment_size(256)
        .open()
        .unwrap();
    let tickets: Vec<_> = (1..=100u64)
        .map(|i| wal.append(1, &payload(i)).unwrap())
        .collect();
    for t in tickets {
        t.wait().unwrap();
    }
    assert!(
        wal.segment_count() > 10,
        "only {} segments",
        wal.segment_count()
    );
    for f in fs.files() {
        // One record (20 + <=11 bytes) may push a segment over its size, never more.
        assert!(f.1 <= 256 + 31, "{f:?}");
    }
    let got = replay_all(&wal, 37);
    assert_eq!(
        got.iter().map(|r| r.lsn).collect::<Vec<_>>(),
        (37..=100).collect::<Vec<_>>()
    );
    assert_eq!(got[0].payload, payload(37));
    drop(wal);
    let (wal, rec) = WalBuilder::new("/w")
        .io(Arc::new(fs))
        .segment_size(256)
        .open()
        .unwrap();
    assert_eq!((rec.records, rec.next_lsn), (100, 101));
    assert_eq!(replay_all(&wal, 1).len(), 100);
}

#[test]
fn oversized_payload_is_rejected_and_nothing_is_written() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .open()
        .unwrap();
    let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
    let e = wal.append(1, &big).unwrap_err();
    assert!(
        matches!(e, Error::PayloadTooLarge { len, max } if len == MAX_PAYLOAD_LEN + 1 && max == MAX_PAYLOAD_LEN)
    );
    assert_eq!(wal.last_lsn(), 0);
    assert_eq!(wal.append(1, b"ok").unwrap().wait().unwrap(), 1);
    assert_eq!(replay_all(&wal, 1).len(), 1);
}

#[test]
fn concurrent_appenders_get_unique_gap_free_lsns_in_call_order() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs))
        .segment_size(4096)
        .queue_capacity(16)
        .open()
        .unwrap();
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..250u32 {
                    let mut p = vec![t];
                    p.extend_from_slice(&i.to_le_bytes());
                    let ticket = wal.append(t, &p).unwrap();
                    mine.push((ticket.lsn(), p));
                    if i % 7 == 0 {
                        ticket.wait().unwrap();
                    }
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for th in threads {
        let mine = th.join().unwrap();
        // Per thread, LSNs increase in call order.
        assert!(mine.windows(2).all(|w| w[0].0 < w[1].0));
        all.extend(mine);
    }
    wal.sync().unwrap();
    all.sort();
    assert_eq!(
        all.iter().map(|a| a.0).collect::<Vec<_>>(),
        (1..=2000).collect::<Vec<_>>()
    );
    let replayed = replay_all(&wal, 1);
    assert_eq!(replayed.len(), 2000);
    for (r, (lsn, p)) in replayed.iter().zip(&all) {
        assert_eq!((r.lsn, &r.payload), (*lsn, p));
    }
}

#[test]
fn lsns_continue_across_truncate_and_reopen() {
    let fs = FaultyIo::new();
    let open = || {
        WalBuilder::new("/w")
            .io(Arc::new(fs.clone()))
            .segment_size(200)
            .open()
            .unwrap()
    };
    let (wal, _) = open();
    for i in 1..=50u64 {
        let _ = wal.append(0, &payload(i)).unwrap();
    }
    wal.sync().unwrap();
    let before = wal.segment_count();
    let usage = wal.disk_usage();
    let freed = wal.truncate_before(51).unwrap();
    assert_eq!(
        wal.segment_count(),
        1,
        "only the active segment remains (had {before})"
    );
    assert_eq!(wal.disk_usage(), usage - freed);
    assert!(freed > 0);
    // The active segment holds the newest records; nothing older is replayed.
    let left = replay_all(&wal, 1);
    assert!(
        left.iter().all(|r| r.lsn > 40) && left.last().unwrap().lsn == 50,
        "{left:?}"
    );
    wal.close().unwrap();

    let (wal, rec) = open();
    assert_eq!(rec.next_lsn, 51);
    assert_eq!(wal.append(0, b"x").unwrap().wait().unwrap(), 51);
    wal.write_checkpoint(51, b"snap").unwrap();
    // Lose the segment history entirely: the checkpoint alone keeps LSNs moving forward.
    drop(wal);
    for (p, _) in fs.files() {
        if p.extension().is_some_and(|e| e == "wal") {
            fs.write_file(&p, b"");
        }
    }
    let (wal, rec) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .segment_size(200)
        .salvage(true)
        .open()
        .unwrap();
    assert!(rec.next_lsn >= 52, "next_lsn {}", rec.next_lsn);
    assert!(wal.append(0, b"y").unwrap().wait().unwrap() >= 52);
}

#[test]
fn truncate_keeps_segments_that_reach_the_lsn() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs))
        .segment_size(200)
        .open()
        .unwrap();
    for i in 1..=40u64 {
        let _ = wal.append(0, &payload(i)).unwrap();
    }
    wal.sync().unwrap();
    wal.truncate_before(20).unwrap();
    let left = replay_all(&wal, 1);
    assert!(
        left.first().unwrap().lsn <= 20,
        "record 20 was deleted: first left {}",
        left[0].lsn
    );
    assert_eq!(left.last().unwrap().lsn, 40);
    assert_eq!(wal.truncate_before(0).unwrap(), 0);
}

#[test]
fn checkpoints_replace_older_ones_and_reject_bad_lsns() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .open()
        .unwrap();
    assert_eq!(wal.load_checkpoint().unwrap(), None);
    for i in 1..=5u64 {
        let _ = wal.append(0, &payload(i)).unwrap();
    }
    wal.write_checkpoint(3, b"three").unwrap();
    wal.write_checkpoint(5, b"five").unwrap();
    let c = wal.load_checkpoint().unwrap().unwrap();
    assert_eq!((c.lsn, c.data.as_slice()), (5, &b"five"[..]));
    let names: Vec<_> = fs
        .files()
        .into_iter()
        .filter(|f| f.0.to_string_lossy().contains("ckpt"))
        .collect();
    assert_eq!(names.len(), 1, "older checkpoint removed: {names:?}");
    assert!(matches!(
        wal.write_checkpoint(9, b""),
        Err(Error::CheckpointAhead { lsn: 9, last: 5 })
    ));
    assert!(matches!(
        wal.write_checkpoint(4, b""),
        Err(Error::CheckpointBehind { lsn: 4, newest: 5 })
    ));
    drop(wal);
    let (_wal, rec) = WalBuilder::new("/w").io(Arc::new(fs)).open().unwrap();
    let info = rec.checkpoint.unwrap();
    assert_eq!((info.lsn, info.bytes), (5, 40 + 4));
}

#[test]
fn half_written_newer_checkpoint_is_ignored() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .open()
        .unwrap();
    for i in 1..=5u64 {
        let _ = wal.append(0, &payload(i)).unwrap();
    }
    wal.write_checkpoint(2, b"good").unwrap();
    wal.write_checkpoint(4, b"newer").unwrap();
    let newer = std::path::Path::new("/w/00000000000000000004.ckpt");
    let full = fs.read_file(newer).unwrap();
    // A newer checkpoint cut short, plus a leftover temp file.
    fs.write_file(newer, &full[..full.len() - 2]);
    fs.write_file(
        std::path::Path::new("/w/00000000000000000002.ckpt"),
        &checkpoint_bytes(2, b"good"),
    );
    fs.write_file(
        std::path::Path::new("/w/00000000000000000005.ckpt.tmp"),
        b"junk",
    );
    let c = wal.load_checkpoint().unwrap().unwrap();
    assert_eq!((c.lsn, c.data), (2, b"good".to_vec()));
    drop(wal);
    let (wal, rec) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .open()
        .unwrap();
    assert_eq!(rec.checkpoint.map(|c| c.lsn), Some(2));
    assert_eq!(
        fs.read_file(std::path::Path::new("/w/00000000000000000005.ckpt.tmp")),
        None
    );
    assert_eq!(wal.load_checkpoint().unwrap().map(|c| c.lsn), Some(2));
}

/// Re-creates the checkpoint file for `lsn` (the writer deleted it when the newer one landed).
fn checkpoint_bytes(lsn: u64, data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = WalBuilder::new(dir.path()).open().unwrap();
    for _ in 0..lsn {
        let _ = wal.append(0, b"").unwrap();
    }
    wal.write_checkpoint(lsn, data).unwrap();
    std::fs::read(dir.path().join(format!("{lsn:020}.ckpt"))).unwrap()
}

#[test]
fn buffered_mode_fsyncs_within_the_interval() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .durability(Durability::Buffered {
            interval: Duration::from_millis(20),
        })
        .open()
        .unwrap();
    let t = wal.append(0, b"a").unwrap();
    assert_eq!(t.wait().unwrap(), 1);
    let start = std::time::Instant::now();
    while wal.durable_lsn() < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "timer fsync never happened"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // A per-append Fsync override is durable when its ticket resolves.
    let t = wal.append_with(0, b"b", Durability::Fsync).unwrap();
    assert_eq!(t.wait().unwrap(), 2);
    assert_eq!(wal.durable_lsn(), 2);
}

#[test]
fn none_mode_resolves_on_write_and_sync_makes_durable() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .durability(Durability::None)
        .open()
        .unwrap();
    let syncs = fs.sync_count();
    for i in 1..=20u64 {
        assert_eq!(wal.append(0, &payload(i)).unwrap().wait().unwrap(), i);
    }
    assert_eq!(
        fs.sync_count(),
        syncs,
        "None mode must not fsync on its own"
    );
    assert_eq!(wal.durable_lsn(), 0);
    assert_eq!(wal.sync().unwrap(), 20);
    assert_eq!(wal.durable_lsn(), 20);
    assert_eq!(fs.sync_count(), syncs + 1);
}

#[test]
fn max_delay_groups_records_into_fewer_fsyncs() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .max_delay(Some(Duration::from_millis(50)))
        .open()
        .unwrap();
    let syncs = fs.sync_count();
    let tickets: Vec<_> = (0..10).map(|_| wal.append(0, b"x").unwrap()).collect();
    for t in tickets {
        t.wait().unwrap();
    }
    assert_eq!(fs.sync_count() - syncs, 1);
}

#[test]
fn tickets_are_futures() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w").io(Arc::new(fs)).open().unwrap();
    let wal = Arc::new(wal);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lsns = rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..50 {
            let wal = wal.clone();
            handles.push(tokio::spawn(async move {
                wal.append(0, b"async").unwrap().await.unwrap()
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    });
    let set: HashSet<_> = lsns.into_iter().collect();
    assert_eq!(set, (1..=50).collect());
    assert_eq!(wal.durable_lsn(), 50);
}

/// A lone writer commits its own group: with the committer thread held, every ticket still
/// resolves, async and blocking, in every mode.
#[test]
fn lone_writer_is_acknowledged_without_the_committer_thread() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .open()
        .unwrap();
    wal.hold_committer_thread(true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let modes = [
        Durability::None,
        Durability::Buffered {
            interval: Duration::from_secs(60),
        },
        Durability::Fsync,
    ];
    let mut lsn = 0;
    for mode in modes {
        for _ in 0..100 {
            lsn += 1;
            let ticket = wal.append_with(0, &payload(lsn), mode).unwrap();
            let acked =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), ticket).await });
            assert_eq!(
                acked
                    .expect("async ack waited on the committer thread")
                    .unwrap(),
                lsn
            );
            lsn += 1;
            assert_eq!(
                wal.append_with(0, &payload(lsn), mode)
                    .unwrap()
                    .wait()
                    .unwrap(),
                lsn
            );
        }
    }
    assert_eq!(wal.durable_lsn(), lsn, "the Fsync appends were fdatasynced");
    assert_eq!(replay_all(&wal, 1).len() as u64, lsn);
    wal.hold_committer_thread(false);
    wal.close().unwrap();
}

/// Under load an awaited ticket yields once before leading, so the appenders queued meanwhile
/// share its write and fdatasync: 20 tasks on one executor thread, one fdatasync.
#[test]
fn overlapping_async_appenders_share_one_group() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .durability(Durability::Fsync)
        .open()
        .unwrap();
    let wal = Arc::new(wal);
    wal.hold_committer_thread(true);
    // A group of two records: appenders overlap.
    let first = wal.append(0, b"a").unwrap();
    assert_eq!(wal.append(0, b"b").unwrap().wait().unwrap(), 2);
    assert_eq!(first.wait().unwrap(), 1);
    let syncs = fs.sync_count();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut lsns = rt.block_on(async {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let wal = wal.clone();
                tokio::spawn(async move { wal.append(0, b"c").unwrap().await.unwrap() })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(
                tokio::time::timeout(Duration::from_secs(10), t)
                    .await
                    .expect("an ack waited on the committer thread")
                    .unwrap(),
            );
        }
        out
    });
    lsns.sort_unstable();
    assert_eq!(lsns, (3..=22).collect::<Vec<u64>>());
    assert_eq!(
        fs.sync_count() - syncs,
        1,
        "one fdatasync for the 20 records"
    );
    assert_eq!(wal.durable_lsn(), 22);
    // Alone again: each append is still committed by its own task (the first yields once
    // more, as the last group held 20), one fdatasync each.
    assert_eq!(
        rt.block_on(async { wal.append(0, b"d").unwrap().await })
            .unwrap(),
        23
    );
    assert_eq!(
        rt.block_on(async { wal.append(0, b"e").unwrap().await })
            .unwrap(),
        24
    );
    assert_eq!(fs.sync_count() - syncs, 3);
    wal.hold_committer_thread(false);
    Arc::into_inner(wal).unwrap().close().unwrap();
}

/// Nobody leads for a dropped ticket: the committer thread writes its record.
#[test]
fn records_of_dropped_tickets_are_written() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs))
        .durability(Durability::None)
        .open()
        .unwrap();
    drop(wal.append(0, b"dropped").unwrap());
    let start = std::time::Instant::now();
    while replay_all(&wal, 1).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "never written");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A queue filled by appends nobody waits on drains too.
    let (wal, _) = WalBuilder::new("/w2")
        .io(Arc::new(FaultyIo::new()))
        .queue_capacity(4)
        .durability(Durability::None)
        .open()
        .unwrap();
    let tickets: Vec<_> = (0..64).map(|_| wal.append(0, b"x").unwrap()).collect();
    assert_eq!(tickets.len(), 64);
    wal.close().unwrap();
}

#[test]
fn closed_log_rejects_appends_and_bad_config_is_typed() {
    let fs = FaultyIo::new();
    let e = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .segment_size(10)
        .open()
        .unwrap_err();
    assert!(matches!(e, Error::Config { .. }));
    let e = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .queue_capacity(0)
        .open()
        .unwrap_err();
    assert!(matches!(e, Error::Config { .. }));
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs))
        .durability(Durability::None)
        .open()
        .unwrap();
    let t = wal.append(0, b"x").unwrap();
    wal.close().unwrap();
    assert_eq!(t.wait().unwrap(), 1);
}
