//! Fault injection: failed fsyncs poison, ENOSPC and short writes, and the crash property:
//! after a crash at any point, recovery yields exactly a prefix of what was appended that
//! contains every record acknowledged under `Fsync`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use writebehind_wal::io::{CrashMode, FaultyIo};
use writebehind_wal::{Durability, Error, Wal, WalBuilder};

fn open(fs: &FaultyIo) -> (Wal, writebehind_wal::Recovery) {
    WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .segment_size(512)
        .open()
        .unwrap()
}

fn replay_lsns(wal: &Wal) -> Vec<u64> {
    wal.replay(1).unwrap().map(|r| r.unwrap().lsn).collect()
}

#[test]
fn eio_on_fsync_poisons_and_is_never_retried() {
    let fs = FaultyIo::new();
    let (wal, _) = open(&fs);
    assert_eq!(wal.append(0, b"one").unwrap().wait().unwrap(), 1);
    fs.fail_sync_after(0);
    let e = wal.append(0, b"two").unwrap().wait().unwrap_err();
    assert!(
        matches!(&e, Error::Io { op: "fsync", source, .. } if source.raw_os_error().is_none() && source.to_string().contains("os error 5")),
        "{e:?}"
    );
    assert!(wal.is_poisoned());
    assert_eq!(wal.durable_lsn(), 1);
    let syncs = fs.sync_count();
    assert!(matches!(wal.append(0, b"three"), Err(Error::Poisoned)));
    assert!(matches!(wal.sync(), Err(Error::Poisoned)));
    assert!(matches!(wal.close(), Err(Error::Poisoned)));
    assert_eq!(fs.sync_count(), syncs, "no fsync after the failed one");
    assert_eq!(fs.failed_sync_count(), 1);
    // The unsynced record is gone after a power loss; the durable one is not.
    fs.crash(CrashMode::LoseUnsynced);
    let (wal, rec) = open(&fs);
    assert_eq!((rec.last_lsn, rec.next_lsn), (Some(1), 2));
    assert_eq!(replay_lsns(&wal), vec![1]);
}

#[test]
fn tickets_queued_behind_a_failed_fsync_are_poisoned() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .max_delay(Some(Duration::from_millis(30)))
        .open()
        .unwrap();
    fs.fail_sync_after(0);
    let tickets: Vec<_> = (0..5).map(|_| wal.append(0, b"x").unwrap()).collect();
    let errs: Vec<Error> = tickets.into_iter().map(|t| t.wait().unwrap_err()).collect();
    // All five were in the failed group (max_delay gathered them): each sees the I/O error.
    assert!(
        errs.iter()
            .all(|e| matches!(e, Error::Io { op: "fsync", .. })),
        "{errs:?}"
    );
}

/// Async appenders gathered by the yield under load share a failed fdatasync: each sees the
/// I/O error, none waits past it.
#[test]
fn overlapping_async_appenders_all_see_their_failed_fsync() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .open()
        .unwrap();
    let wal = Arc::new(wal);
    wal.hold_committer_thread(true);
    // A group of two records: appenders overlap.
    let first = wal.append(0, b"a").unwrap();
    assert_eq!(wal.append(0, b"b").unwrap().wait().unwrap(), 2);
    assert_eq!(first.wait().unwrap(), 1);
    fs.fail_sync_after(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let wal = wal.clone();
                tokio::spawn(async move { wal.append(0, b"c").unwrap().await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(
                tokio::time::timeout(Duration::from_secs(10), t)
                    .await
                    .expect("a ticket outlived the failed fsync")
                    .unwrap(),
            );
        }
        out
    });
    assert_eq!(results.len(), 20);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(Error::Io { op: "fsync", .. }))),
        "{results:?}"
    );
    assert_eq!(fs.failed_sync_count(), 1);
    assert!(wal.is_poisoned());
    assert_eq!(wal.durable_lsn(), 2);
    wal.hold_committer_thread(false);
}

#[test]
fn enospc_poisons_and_reopen_keeps_the_whole_records() {
    let fs = FaultyIo::new();
    let (wal, _) = open(&fs);
    fs.set_space_limit(Some(100));
    let mut ok = Vec::new();
    let mut err = None;
    for i in 0..20u8 {
        match wal.append(0, &[i; 10]).and_then(|t| t.wait()) {
            Ok(l) => ok.push(l),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.unwrap();
    assert!(
        matches!(&e, Error::Io { op: "write", source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
        "{e:?}"
    );
    // 100 bytes hold three 30-byte frames; the fourth is cut short.
    assert_eq!(ok, vec![1, 2, 3]);
    assert!(matches!(wal.append(0, b"later"), Err(Error::Poisoned)));
    drop(wal);
    fs.clear_faults();
    let (wal, rec) = open(&fs);
    assert_eq!(rec.torn_tail.as_ref().map(|t| t.bytes_cut), Some(10));
    assert_eq!(replay_lsns(&wal), vec![1, 2, 3]);
    assert_eq!(rec.next_lsn, 4);
}

#[test]
fn short_writes_are_completed() {
    let fs = FaultyIo::new();
    fs.set_short_writes(true);
    let (wal, _) = open(&fs);
    let tickets: Vec<_> = (0..100u32)
        .map(|i| wal.append(1, &i.to_le_bytes()).unwrap())
        .collect();
    for t in tickets {
        t.wait().unwrap();
    }
    let got: Vec<_> = wal.replay(1).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(got.len(), 100);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, r)| r.payload == (i as u32).to_le_bytes()));
    drop(wal);
    fs.crash(CrashMode::LoseUnsynced);
    let (_wal, rec) = open(&fs);
    assert_eq!(rec.last_lsn, Some(100));
}

#[test]
fn failed_directory_fsync_at_rotation_poisons() {
    let fs = FaultyIo::new();
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .segment_size(512)
        .durability(Durability::None)
        .open()
        .unwrap();
    // Rotation: fsync the old segment, fsync the new one's header, fsync the directory.
    fs.fail_sync_after(2);
    // 84-byte frames: five fit after the 32-byte header, the sixth rotates.
    let tickets: Vec<_> = (0..6).map(|_| wal.append(0, &[0u8; 64]).unwrap()).collect();
    let results: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
    assert!(results[..5].iter().all(|r| r.is_ok()), "{results:?}");
    let e = results[5].as_ref().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Io {
                op: "fsync dir",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(wal.is_poisoned());
    assert!(matches!(wal.append(0, b"x"), Err(Error::Poisoned)));
    assert_eq!(
        wal.durable_lsn(),
        5,
        "the old segment was synced before the new one was made"
    );
}

fn cases() -> u32 {
    std::env::var("WB_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

#[derive(Clone, Debug)]
struct Batch {
    payload_lens: Vec<usize>,
    mode: Durability,
}

fn mode() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Fsync),
        (0u64..3).prop_map(|ms| Durability::Buffered {
            interval: Duration::from_millis(ms)
        }),
        Just(Durability::None),
    ]
}

fn crash_mode() -> impl Strategy<Value = CrashMode> {
    prop_oneof![
        Just(CrashMode::LoseUnsynced),
        Just(CrashMode::KeepPrefix),
        Just(CrashMode::GarbleTail),
        Just(CrashMode::ZeroFillTail),
        Just(CrashMode::TornPages),
    ]
}

fn batches() -> impl Strategy<Value = Vec<Batch>> {
    prop::collection::vec(
        (prop::collection::vec(0usize..80, 1..12), mode())
            .prop_map(|(payload_lens, mode)| Batch { payload_lens, mode }),
        1..12,
    )
}

fn body(lsn: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (lsn as usize * 31 + i) as u8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn crash_anywhere_recovers_a_prefix_holding_every_fsync_ack(
        batches in batches(),
        crash_after in 0usize..12,
        wait_last in any::<bool>(),
        mode in crash_mode(),
        seg in prop_oneof![Just(128u64), Just(400), Just(1 << 16)],
        seed in any::<u64>(),
        fail_sync in prop::option::of(0u64..20),
    ) {
        let fs = FaultyIo::with_seed(seed);
        let (wal, _) = WalBuilder::new("/w").io(Arc::new(fs.clone())).segment_size(seg).open().unwrap();
        if let Some(n) = fail_sync {
            fs.fail_sync_after(n);
        }
        let mut appended: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut fsync_acked = 0u64;
        let crash_at = crash_after.min(batches.len() - 1);
        let mut in_flight = Vec::new();
        'outer: for (i, b) in batches.iter().enumerate() {
            let mut tickets = Vec::new();
            for len in &b.payload_lens {
                let lsn = wal.last_lsn() + 1;
                let data = body(lsn, *len);
                match wal.append_with(7, &data, b.mode) {
                    Ok(t) => {
                        prop_assert_eq!(t.lsn(), lsn);
                        appended.push((lsn, data));
                        tickets.push((t, b.mode));
                    }
                    Err(e) => {
                        prop_assert!(matches!(e, Error::Poisoned), "{:?}", e);
                        break 'outer;
                    }
                }
            }
            if i == crash_at && !wait_last {
                // Crash with this batch possibly half written.
                in_flight = tickets;
                break;
            }
            for (t, m) in tickets {
                let lsn = t.lsn();
                if t.wait().is_ok() && m == Durability::Fsync {
                    fsync_acked = fsync_acked.max(lsn);
                }
            }
            if i == crash_at {
                break;
            }
        }
        fs.crash(mode);
        // Tickets that resolve now were satisfied before the crash, or fail.
        for (t, m) in in_flight {
            let lsn = t.lsn();
            if t.wait().is_ok() && m == Durability::Fsync {
                fsync_acked = fsync_acked.max(lsn);
            }
        }
        drop(wal);
        fs.clear_faults();
        let (wal, rec) = WalBuilder::new("/w").io(Arc::new(fs.clone())).segment_size(seg).open()
            .map_err(|e| TestCaseError::fail(format!("reopen failed: {e}")))?;
        let got: Vec<_> = wal.replay(1).unwrap().collect::<Result<Vec<_>, _>>()
            .map_err(|e| TestCaseError::fail(format!("replay failed: {e}")))?;
        let n = got.len();
        prop_assert!(n <= appended.len());
        for (r, (lsn, data)) in got.iter().zip(&appended) {
            prop_assert_eq!(r.lsn, *lsn);
            prop_assert_eq!(&r.payload, data);
            prop_assert_eq!(r.kind, 7);
        }
        prop_assert!(n as u64 >= fsync_acked, "lost an fsync-acked record: recovered {} acked {}", n, fsync_acked);
        prop_assert_eq!(rec.next_lsn, n as u64 + 1);
        prop_assert_eq!(rec.records, n as u64);
        // The log is usable afterwards.
        prop_assert_eq!(wal.append(0, b"after").unwrap().wait().unwrap(), n as u64 + 1);
    }
}

/// Many threads appending (mixed durability) while the crash happens at a random moment.
#[test]
fn crash_during_concurrent_appends_keeps_every_fsync_ack() {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    let rounds = (cases() / 4).max(8);
    for round in 0..rounds as u64 {
        let fs = FaultyIo::with_seed(round + 1);
        // Slow fsyncs: records keep arriving while one is in flight.
        fs.set_sync_latency(Some(Duration::from_micros(150)));
        let (wal, _) = WalBuilder::new("/w")
            .io(Arc::new(fs.clone()))
            .segment_size(700)
            .open()
            .unwrap();
        let wal = Arc::new(wal);
        let log: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
        let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let (wal, log, acked) = (wal.clone(), log.clone(), acked.clone());
                std::thread::spawn(move || {
                    for i in 0..200u32 {
                        let mode = if (i + u32::from(t)) % 3 == 0 {
                            Durability::None
                        } else {
                            Durability::Fsync
                        };
                        let p = [t, i as u8, (i >> 8) as u8];
                        let Ok(ticket) = wal.append_with(t, &p, mode) else {
                            return;
                        };
                        log.lock().unwrap().insert(ticket.lsn(), p.to_vec());
                        let lsn = ticket.lsn();
                        match ticket.wait() {
                            Ok(_) if mode == Durability::Fsync => acked.lock().unwrap().push(lsn),
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(200 + round * 137 % 3000));
        let mode = [
            CrashMode::LoseUnsynced,
            CrashMode::KeepPrefix,
            CrashMode::GarbleTail,
            CrashMode::ZeroFillTail,
        ][round as usize % 4];
        fs.crash(mode);
        for t in threads {
            t.join().unwrap();
        }
        drop(wal);
        fs.set_sync_latency(None);
        let (wal, rec) = open(&fs);
        let got: Vec<_> = wal.replay(1).unwrap().map(|r| r.unwrap()).collect();
        let log = log.lock().unwrap();
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.lsn, i as u64 + 1, "round {round}: not a gap-free prefix");
            assert_eq!(
                Some(&r.payload),
                log.get(&r.lsn),
                "round {round}: payload of {}",
                r.lsn
            );
        }
        let max_acked = acked.lock().unwrap().iter().copied().max().unwrap_or(0);
        assert!(
            got.len() as u64 >= max_acked,
            "round {round}: recovered {} but {max_acked} was acked",
            got.len()
        );
        assert_eq!(rec.next_lsn, got.len() as u64 + 1);
    }
}

/// A group spanning a rotation: the old segment's records are written unsynced, then the
/// rotation cuts the preallocated zeros and fsyncs, which fails. Linux reports a writeback
/// error once, so the fsync that follows would "succeed" over dropped pages: the failure must
/// poison, and none of the old segment's tickets may resolve as durable.
#[test]
fn failed_fsync_cutting_the_preallocated_zeros_at_rotation_poisons() {
    let fs = FaultyIo::new();
    let (wal, _) = open(&fs);
    wal.hold_committer_thread(true);
    // 84-byte frames: five fit after the 32-byte header, the sixth rotates in the same group.
    let tickets: Vec<_> = (0..6).map(|_| wal.append(0, &[1u8; 64]).unwrap()).collect();
    fs.fail_sync_after(0);
    let results: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
    assert!(
        results[..5]
            .iter()
            .all(|r| matches!(r, Err(Error::Io { op: "fsync", .. }))),
        "{results:?}"
    );
    assert!(results[5].is_err(), "{results:?}");
    assert!(wal.is_poisoned());
    assert_eq!(wal.durable_lsn(), 0);
    assert_eq!(fs.failed_sync_count(), 1);
    let syncs = fs.sync_count();
    assert!(matches!(wal.close(), Err(Error::Poisoned)));
    assert_eq!(fs.sync_count(), syncs, "no fsync after the failed one");
    // After the power cut nothing acknowledged is missing, and the log opens.
    fs.crash(CrashMode::LoseUnsynced);
    fs.clear_faults();
    let (wal, rec) = open(&fs);
    assert!(rec.next_lsn <= 7);
    assert_eq!(replay_lsns(&wal), (1..rec.next_lsn).collect::<Vec<_>>());
}

/// The preallocated zeros are cut and fsynced at a clean close too: a failure there is reported.
#[test]
fn failed_fsync_cutting_the_preallocated_zeros_at_close_is_reported() {
    let fs = FaultyIo::new();
    let (wal, _) = open(&fs);
    assert_eq!(wal.append(0, b"one").unwrap().wait().unwrap(), 1);
    assert!(
        fs.files()
            .iter()
            .any(|(p, len)| p.extension().is_some_and(|e| e == "wal") && *len > 200),
        "the segment is preallocated"
    );
    fs.fail_sync_after(0);
    assert!(wal.close().is_err());
    assert_eq!(fs.failed_sync_count(), 1);
}
