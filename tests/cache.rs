//! The cache without a database: read-your-writes, coalescing, exact sums
//! across threads and reopens, backpressure and compaction.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use writebehind::{Backpressure, Durability, Error, Limit, WriteBehind};

fn counters(dir: &std::path::Path) -> writebehind::Builder<String, i64> {
    WriteBehind::<String, i64>::builder(dir)
}

#[test]
fn reads_see_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let cache = counters(dir.path()).open_blocking().unwrap();
    cache.add_blocking("a", 2).unwrap();
    cache.add_blocking("a", 3).unwrap();
    assert_eq!(cache.get_blocking("a").unwrap(), Some(5));
    cache.put_blocking("a", &10).unwrap();
    cache.add_blocking("a", 1).unwrap();
    assert_eq!(cache.get_blocking("a").unwrap(), Some(11));
    cache.delete_blocking("a").unwrap();
    assert_eq!(cache.get_blocking("a").unwrap(), None);
    cache.add_blocking("a", 4).unwrap();
    assert_eq!(cache.get_blocking("a").unwrap(), Some(4));
    assert_eq!(cache.get_blocking("never").unwrap(), None);
    let stats = cache.stats();
    assert_eq!(stats.writes, 6);
    assert_eq!(stats.dirty_entries, 1);
    cache.close_blocking().unwrap();
}

#[test]
fn eight_threads_sum_exactly_before_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    const THREADS: usize = 8;
    const ADDS: usize = 100_000;
    const KEYS: usize = 1_000;
    let cache = counters(dir.path())
        .durability(Durability::None)
        .open_blocking()
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let cache = cache.clone();
            s.spawn(move || {
                for i in 0..ADDS {
                    let key = format!("k{}", (i * 7 + t) % KEYS);
                    cache.add_blocking(key.as_str(), 1).unwrap();
                }
            });
        }
    });
    let sum = |cache: &WriteBehind<String, i64>| -> i64 {
        (0..KEYS)
            .map(|k| {
                cache
                    .get_blocking(format!("k{k}").as_str())
                    .unwrap()
                    .unwrap_or(0)
            })
            .sum()
    };
    assert_eq!(sum(&cache), (THREADS * ADDS) as i64);
    assert_eq!(cache.stats().dirty_entries, KEYS);
    cache.close_blocking().unwrap();

    let cache = counters(dir.path()).open_blocking().unwrap();
    assert_eq!(cache.recovery().dirty_entries, KEYS);
    assert_eq!(sum(&cache), (THREADS * ADDS) as i64);
    cache.close_blocking().unwrap();
}

#[test]
fn a_reopen_without_close_replays_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = counters(dir.path()).open_blocking().unwrap();
        for i in 0..100 {
            cache
                .add_blocking(format!("k{}", i % 10).as_str(), i)
                .unwrap();
        }
        cache.put_blocking("p", &-5).unwrap();
        cache.delete_blocking("k0").unwrap();
        drop(cache); // no close: everything acknowledged under Fsync is in the WAL
    }
    let cache = counters(dir.path()).open_blocking().unwrap();
    assert_eq!(cache.recovery().records_replayed, 102);
    assert_eq!(cache.get_blocking("k0").unwrap(), None);
    // k3 got 3 + 13 + … + 93
    assert_eq!(
        cache.get_blocking("k3").unwrap(),
        Some((0..10).map(|j| 3 + 10 * j).sum())
    );
    assert_eq!(cache.get_blocking("p").unwrap(), Some(-5));
    cache.close_blocking().unwrap();
}

#[test]
fn backpressure_fail_rejects_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = counters(dir.path())
        .max_dirty_entries(10)
        .backpressure(Backpressure::Fail)
        .open_blocking()
        .unwrap();
    for i in 0..10 {
        cache.add_blocking(format!("k{i}").as_str(), 1).unwrap();
    }
    let lsn = cache.stats().last_lsn;
    let err = cache.add_blocking("k10", 1).unwrap_err();
    assert!(matches!(
        err,
        Error::Backpressure {
            limit: Limit::DirtyEntries,
            ..
        }
    ));
    assert_eq!(cache.get_blocking("k10").unwrap(), None);
    let stats = cache.stats();
    assert_eq!(stats.last_lsn, lsn);
    assert_eq!(stats.dirty_entries, 10);
    assert_eq!(stats.backpressure_rejections, 1);
    // A key that is already dirty takes no new room and is still accepted.
    cache.add_blocking("k3", 1).unwrap();
    assert_eq!(cache.get_blocking("k3").unwrap(), Some(2));
    cache.close_blocking().unwrap();
}

#[test]
fn backpressure_wait_gives_up_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cache = counters(dir.path())
        .max_dirty_entries(2)
        .backpressure(Backpressure::Wait(Duration::from_millis(200)))
        .open_blocking()
        .unwrap();
    cache.add_blocking("a", 1).unwrap();
    cache.add_blocking("b", 1).unwrap();
    let started = Instant::now();
    let err = cache.add_blocking("c", 1).unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(
        err,
        Error::Backpressure {
            limit: Limit::DirtyEntries,
            ..
        }
    ));
    assert!(
        waited >= Duration::from_millis(200),
        "waited only {waited:?}"
    );
    assert_eq!(cache.get_blocking("c").unwrap(), None);
    assert_eq!(cache.stats().backpressure_waits, 1);
    cache.close_blocking().unwrap();
}

#[test]
fn oversized_keys_and_values_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = counters(dir.path())
        .max_key_bytes(8)
        .open_blocking()
        .unwrap();
    let err = cache.add_blocking("123456789", 1).unwrap_err();
    assert!(matches!(err, Error::Rejected(_)), "{err:?}");
    assert_eq!(cache.stats().last_lsn, 0);
    assert_eq!(cache.stats().dirty_entries, 0);
    cache.add_blocking("12345678", 1).unwrap();
    assert_eq!(cache.stats().last_lsn, 1);
    cache.close_blocking().unwrap();
}

#[test]
fn counter_overflow_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = counters(dir.path()).open_blocking().unwrap();
    cache.put_blocking("x", &i64::MAX).unwrap();
    let err = cache.add_blocking("x", 1).unwrap_err();
    assert!(matches!(err, Error::Rejected(_)), "{err:?}");
    assert_eq!(cache.get_blocking("x").unwrap(), Some(i64::MAX));
    cache.close_blocking().unwrap();
}

#[test]
fn compaction_bounds_the_wal_while_nothing_is_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = counters(dir.path())
        .durability(Durability::None)
        .segment_size(1 << 20)
        .checkpoint_bytes(2 << 20)
        .open_blocking()
        .unwrap();
    let wal_dir = dir.path().to_path_buf();
    let mut largest = 0u64;
    for i in 0..1_000_000u64 {
        cache
            .add_blocking(format!("k{}", i % 1_000).as_str(), 1)
            .unwrap();
        if i % 50_000 == 0 {
            largest = largest.max(dir_size(&wal_dir));
        }
    }
    cache.checkpoint().unwrap();
    largest = largest.max(dir_size(&wal_dir));
    // Without compaction 1M records take tens of MiB; with it the directory
    // stays near checkpoint_bytes + a segment or two.
    assert!(largest < 8 << 20, "WAL directory reached {largest} bytes");
    assert!(cache.stats().checkpoints >= 1);
    cache.close_blocking().unwrap();
    let cache = counters(dir.path()).open_blocking().unwrap();
    let total: i64 = (0..1_000)
        .map(|k| {
            cache
                .get_blocking(format!("k{k}").as_str())
                .unwrap()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 1_000_000);
    cache.close_blocking().unwrap();
}

#[test]
fn async_writes_and_update_are_atomic() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(counters(dir.path()).open().await.unwrap());
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    cache
                        .update("n", |v| Some(v.unwrap_or(0) + 2))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(cache.get("n").await.unwrap(), Some(16 * 50 * 2));
        let v = cache.update("n", |_| None).await.unwrap();
        assert_eq!(v, None);
        assert_eq!(cache.get("n").await.unwrap(), None);
        Arc::try_unwrap(cache).ok().unwrap().close().await.unwrap();
    });
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[test]
fn a_second_cache_on_the_same_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let first = counters(dir.path()).open_blocking().unwrap();
    first.add_blocking("a", 1).unwrap();
    let err = counters(dir.path()).open_blocking().err().unwrap();
    assert!(
        matches!(err, Error::Locked { .. }) && err.to_string().contains("in use"),
        "{err:?}"
    );
    first.close_blocking().unwrap();
    let second = counters(dir.path()).open_blocking().unwrap();
    assert_eq!(second.get_blocking("a").unwrap(), Some(1));
    second.close_blocking().unwrap();
}
