//! Disk faults under concurrent writers, through the WAL's fault-injecting
//! file system: EIO on fsync and ENOSPC reach the writers whose data they
//! affect as errors, poison the log (every later write fails), and after a
//! crash and reopen every write acknowledged before is there.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use writebehind::{Durability, Error, WriteBehind};
use writebehind_wal::io::{CrashMode, FaultyIo};

const WRITERS: usize = 4;

fn open(fs: &FaultyIo) -> WriteBehind<String, i64> {
    WriteBehind::<String, i64>::builder("/wal")
        .durability(Durability::Fsync)
        .segment_size(8192)
        .io(Arc::new(fs.clone()))
        .open_blocking()
        .unwrap()
}

/// What one writer saw: adds acknowledged, then the first error.
struct Seen {
    acked: i64,
    error: Error,
    later: Vec<Error>,
}

/// `WRITERS` threads add 1 to their own key until a write fails, then try
/// three more writes. `inject` runs once `before` adds were acknowledged.
fn run_until_failure(
    cache: &WriteBehind<String, i64>,
    before: u64,
    inject: impl FnOnce() + Send,
) -> Vec<Seen> {
    let total = AtomicU64::new(0);
    let injected = AtomicBool::new(false);
    let start = Barrier::new(WRITERS + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|t| {
                let (cache, total, start) = (cache.clone(), &total, &start);
                s.spawn(move || {
                    let key = format!("w{t}");
                    start.wait();
                    let mut acked = 0;
                    let error = loop {
                        match cache.add_blocking(key.as_str(), 1) {
                            Ok(_) => {
                                acked += 1;
                                total.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => break e,
                        }
                    };
                    let later = (0..3)
                        .filter_map(|_| cache.add_blocking(key.as_str(), 1).err())
                        .collect();
                    Seen {
                        acked,
                        error,
                        later,
                    }
                })
            })
            .collect();
        start.wait();
        while total.load(Ordering::SeqCst) < before {
            std::thread::yield_now();
        }
        inject();
        injected.store(true, Ordering::SeqCst);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Crash (losing every unsynced byte), reopen, and check every writer's key
/// holds exactly what was acknowledged.
fn crash_and_check(fs: &FaultyIo, cache: WriteBehind<String, i64>, seen: &[Seen]) {
    fs.crash(CrashMode::LoseUnsynced);
    drop(cache);
    fs.clear_faults();
    let cache = open(fs);
    for (t, s) in seen.iter().enumerate() {
        let got = cache.get_blocking(format!("w{t}").as_str()).unwrap();
        assert_eq!(got.unwrap_or(0), s.acked, "writer {t}");
    }
    // The reopened log is healthy again.
    cache.add_blocking("after", 1).unwrap();
    assert_eq!(cache.get_blocking("after").unwrap(), Some(1));
}

#[test]
fn eio_on_fsync_reaches_the_writers_and_poisons_the_log() {
    let fs = FaultyIo::with_seed(1);
    let cache = open(&fs);
    let seen = run_until_failure(&cache, 300, || fs.fail_sync_after(0));
    assert_eq!(fs.failed_sync_count(), 1);
    for (t, s) in seen.iter().enumerate() {
        // The failed fsync is named to the writers it hit; later ones see the poison.
        let msg = s.error.to_string();
        assert!(matches!(s.error, Error::Wal(_)), "writer {t}: {msg}");
        assert!(
            msg.contains("Input/output error") || msg.contains("poisoned"),
            "writer {t}: {msg}"
        );
        assert_eq!(
            s.later.len(),
            3,
            "writer {t}: a write after the failure succeeded"
        );
        for e in &s.later {
            assert!(e.to_string().contains("poisoned"), "writer {t}: {e}");
        }
    }
    assert!(
        seen.iter()
            .any(|s| s.error.to_string().contains("Input/output error")),
        "nobody was told of the EIO itself"
    );
    assert!(seen.iter().map(|s| s.acked).sum::<i64>() >= 300);
    crash_and_check(&fs, cache, &seen);
}

#[test]
fn enospc_reaches_the_writers_and_poisons_the_log() {
    let fs = FaultyIo::with_seed(2);
    let cache = open(&fs);
    let seen = run_until_failure(&cache, 300, || fs.set_space_limit(Some(2_000)));
    for (t, s) in seen.iter().enumerate() {
        let msg = s.error.to_string();
        assert!(matches!(s.error, Error::Wal(_)), "writer {t}: {msg}");
        assert!(
            msg.contains("No space left") || msg.contains("poisoned"),
            "writer {t}: {msg}"
        );
        assert_eq!(
            s.later.len(),
            3,
            "writer {t}: a write after the failure succeeded"
        );
    }
    assert!(
        seen.iter()
            .any(|s| s.error.to_string().contains("No space left")),
        "nobody was told of the ENOSPC itself"
    );
    // Space coming back does not un-poison the log: only a reopen does.
    fs.clear_faults();
    let e = cache.add_blocking("w0", 1).unwrap_err();
    assert!(e.to_string().contains("poisoned"), "{e}");
    crash_and_check(&fs, cache, &seen);
}
