//! The local WAL reconciled with the stream, and one owner per instance on
//! the stream, against a real NATS server (`WB_NATS_URL`, default
//! `nats://127.0.0.1:4222`, which `scripts/test` starts).
#![allow(clippy::unwrap_used)]
#![cfg(all(feature = "nats", feature = "sqlite"))]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;
use writebehind::{Backpressure, Durability, WriteBehind};

mod common {
    pub mod nats;
}
use common::nats::{nats_url, unique};

type Cache = WriteBehind<String, i64>;

fn builder(dir: &Path, url: &str, stream: &str, id: &str) -> writebehind::Builder<String, i64> {
    Cache::builder(dir)
        .replicate(
            writebehind::nats::JetStream::new(url)
                .stream(stream)
                .subject_prefix(stream),
        )
        .instance_id(id)
}

/// Copies a WAL directory as a power cut would leave it if the records
/// after this moment never reached the disk (the lock file left out).
fn snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name != "LOCK" && e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

async fn totals(url: &str) -> BTreeMap<String, i64> {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    let rows = sqlx::query("SELECT key, value FROM counters")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect()
}

/// A power cut took the local tail of a `Replicated` cache that JetStream
/// had acknowledged: the next open appends it from the stream before any
/// new write gets an LSN, so nothing acknowledged is lost and no LSN the
/// stream holds is given out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_tail_lost_to_a_power_cut_comes_back_from_the_stream() {
    let url = nats_url().await;
    let (stream, id) = (unique("PC"), unique("inst"));
    let a = tempfile::tempdir().unwrap();
    let cache = builder(a.path(), &url, &stream, &id)
        .durability(Durability::Replicated)
        .open()
        .await
        .unwrap();
    for i in 0..100i64 {
        cache.add(&format!("k{}", i % 5), 1).await.unwrap();
    }
    let cut = tempfile::tempdir().unwrap();
    let cut = cut.path().join("wal");
    snapshot(a.path(), &cut);
    for i in 0..50i64 {
        cache.add(&format!("k{}", i % 5), 1).await.unwrap();
    }
    assert_eq!(cache.stats().replicated_lsn, 150);
    drop(cache);

    let db = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/app.db?mode=rwc", db.path().display());
    let cache = builder(&cut, &url, &stream, &id)
        .durability(Durability::Replicated)
        .database(&db_url)
        .create_tables(true)
        .open()
        .await
        .unwrap();
    let r = cache.recovery();
    assert_eq!(r.reconciled_records, Some(50), "{r:?}");
    assert_eq!(r.wal.last_lsn, Some(100), "{r:?}");
    for k in 0..5 {
        assert_eq!(cache.get(&format!("k{k}")).await.unwrap(), Some(30));
    }
    // The next write continues after the stream's records.
    let lsn = cache.add("k0", 1).await.unwrap();
    assert_eq!(lsn, 151);
    cache.flush().await.unwrap();
    cache.close().await.unwrap();
    let t = totals(&db_url).await;
    let want: BTreeMap<String, i64> = (0..5)
        .map(|k| (format!("k{k}"), if k == 0 { 31 } else { 30 }))
        .collect();
    assert_eq!(t, want);

    // The stream holds one history: a rebuild from it reads the same
    // totals and flushes nothing twice.
    let c = tempfile::tempdir().unwrap();
    let copy = builder(c.path(), &url, &stream, &id)
        .database(&db_url)
        .open()
        .await
        .unwrap();
    for (k, v) in &want {
        assert_eq!(copy.get(k).await.unwrap(), Some(*v), "{k}");
    }
    copy.flush().await.unwrap();
    copy.close().await.unwrap();
    assert_eq!(totals(&db_url).await, want);
}

/// A second owner of one instance id (a rebuild elsewhere while the first
/// still runs) fences the first: its `Replicated` writes fail instead of
/// being acknowledged, and what it published after the claim is not part
/// of the instance's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_owner_fences_the_first_on_the_stream() {
    let url = nats_url().await;
    let (stream, id) = (unique("FN"), unique("inst"));
    let a = tempfile::tempdir().unwrap();
    let first = builder(a.path(), &url, &stream, &id)
        .durability(Durability::Replicated)
        .backpressure(Backpressure::Wait(Duration::from_secs(2)))
        .open()
        .await
        .unwrap();
    for _ in 0..20 {
        first.add("k", 1).await.unwrap();
    }
    let b = tempfile::tempdir().unwrap();
    let second = builder(b.path(), &url, &stream, &id)
        .durability(Durability::Replicated)
        .open()
        .await
        .unwrap();
    assert_eq!(second.recovery().rebuilt_records, Some(20));
    assert_eq!(second.recovery().stream_owner_epoch, Some(2));
    let started = Instant::now();
    let e = first.add("k", 1).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains("fenced"), "{e}");
    assert!(
        matches!(
            e,
            writebehind::Error::Fenced {
                ours: 1,
                owner_epoch: 2,
                ..
            }
        ),
        "{e:?}"
    );
    // Later writes are refused too.
    assert!(first.add("k", 1).await.is_err());
    for _ in 0..5 {
        second.add("k", 1).await.unwrap();
    }
    second.close().await.unwrap();
    assert!(first.close().await.is_err());

    let c = tempfile::tempdir().unwrap();
    let copy = builder(c.path(), &url, &stream, &id).open().await.unwrap();
    assert_eq!(copy.get("k").await.unwrap(), Some(25));
    copy.close().await.unwrap();
}

/// `adopt` while the original owner is alive and writing: the original is
/// fenced within a bounded time, and per key the database holds every
/// write acknowledged to anyone, none twice (a write that failed may or may
/// not have landed: at most one per writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopting_a_live_instance_fences_it_and_keeps_every_acknowledged_write_once() {
    const WRITERS: usize = 4;
    const KEYS: usize = 8;
    let url = nats_url().await;
    let (stream, id) = (unique("AD"), unique("inst"));
    let db = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/app.db?mode=rwc", db.path().display());
    let a = tempfile::tempdir().unwrap();
    let original = Arc::new(
        builder(a.path(), &url, &stream, &id)
            .durability(Durability::Replicated)
            .backpressure(Backpressure::Wait(Duration::from_secs(2)))
            .database(&db_url)
            .create_tables(true)
            .flush_interval(Duration::from_millis(30))
            .open()
            .await
            .unwrap(),
    );
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let failed: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (cache, acked, failed, stop) = (
            original.clone(),
            acked.clone(),
            failed.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = w;
            let mut first_error = None;
            while !stop.load(Ordering::Acquire) {
                let k = i % KEYS;
                match cache.add(&format!("k{k}"), 1).await {
                    Ok(_) => {
                        acked[k].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed[k].fetch_add(1, Ordering::Relaxed);
                        first_error = Some((Instant::now(), e.to_string()));
                        break;
                    }
                }
                i += WRITERS;
            }
            first_error
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The adopter: an empty directory, the same id, the same database.
    let adopted_at = Instant::now();
    let b = tempfile::tempdir().unwrap();
    let adopter = builder(b.path(), &url, &stream, &id)
        .database(&db_url)
        .open()
        .await
        .unwrap();
    adopter.flush().await.unwrap();
    adopter.close().await.unwrap();

    let mut fenced_after = Vec::new();
    for w in writers {
        let r = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a writer of the fenced owner did not stop within 10 s")
            .unwrap();
        let (at, text) = r.expect("the original owner was never refused");
        assert!(text.contains("fenced"), "{text}");
        fenced_after.push(at.saturating_duration_since(adopted_at));
    }
    stop.store(true, Ordering::Release);
    let slowest = fenced_after.iter().max().copied().unwrap();
    assert!(slowest < Duration::from_secs(5), "fenced after {slowest:?}");
    let original = Arc::try_unwrap(original).ok().unwrap();
    assert!(original.close().await.is_err());

    let t = totals(&db_url).await;
    let mut total_acked = 0;
    for k in 0..KEYS {
        let (a, f) = (
            acked[k].load(Ordering::Relaxed) as i64,
            failed[k].load(Ordering::Relaxed) as i64,
        );
        total_acked += a;
        let got = t.get(&format!("k{k}")).copied().unwrap_or(0);
        assert!(
            a <= got && got <= a + f,
            "k{k}: acked {a}, failed {f}, database {got}"
        );
    }
    assert!(total_acked > 0);

    // A second adopt changes nothing.
    let c = tempfile::tempdir().unwrap();
    let again = builder(c.path(), &url, &stream, &id)
        .database(&db_url)
        .open()
        .await
        .unwrap();
    again.flush().await.unwrap();
    again.close().await.unwrap();
    assert_eq!(totals(&db_url).await, t);
}
