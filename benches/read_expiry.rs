//! Read latency of a hot key across its clean TTL, without and with
//! refresh-ahead, measured in the same run. Each iteration is a burst of
//! concurrent readers (tokio tasks); the TTL is short so a run crosses
//! thousands of expiries. Without refresh-ahead the burst that meets an
//! expiry waits for the reload; with it, that burst is served the old copy
//! while one background load refreshes the key. Per-read percentiles and
//! their ratio are printed at the end.
//!
//! `cargo bench --bench read_expiry` (SQLite in a temporary directory; set
//! `WB_BENCH_DB` to a database URL, with its feature, to use another).
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use parking_lot::Mutex;
use writebehind::{Durability, RefreshAhead, WriteBehind};

const READERS: usize = 16;
const TTL: Duration = Duration::from_millis(2);

fn open(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    url: &str,
    refresh: bool,
) -> WriteBehind<String, i64> {
    rt.block_on(async {
        let cache = WriteBehind::<String, i64>::builder(dir.join(format!("wal-{refresh}")))
            .database(url.to_owned())
            .table(format!("bench_expiry_{:x}", fastrand::u32(..)))
            .create_tables(true)
            .notify(false)
            .durability(Durability::None)
            .clean_ttl(Some(TTL))
            .refresh_ahead(refresh.then(|| RefreshAhead {
                beta: 1.0,
                max_stale: Duration::from_secs(1),
            }))
            .open()
            .await
            .expect("open");
        cache.put("hot", &1).await.expect("put");
        cache.flush().await.expect("flush");
        cache
    })
}

/// One burst: `READERS` tasks read the hot key at once; returns the wall
/// time and records each read's latency.
async fn burst(cache: &WriteBehind<String, i64>, lat: &Mutex<Vec<Duration>>) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..READERS)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let v = cache.get("hot").await.expect("get");
                assert_eq!(v, Some(1));
                t.elapsed()
            })
        })
        .collect();
    let mut took = Vec::with_capacity(READERS);
    for t in tasks {
        took.push(t.await.expect("reader"));
    }
    let wall = started.elapsed();
    lat.lock().extend(took);
    wall
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn across_expiry(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = std::env::var("WB_BENCH_DB").unwrap_or_else(|_| {
        format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.sqlite").display()
        )
    });
    let mut group = c.benchmark_group("hot_key_across_expiry");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let mut rows = Vec::new();
    for (name, refresh) in [
        ("without_refresh_ahead", false),
        ("with_refresh_ahead", true),
    ] {
        let cache = open(&rt, dir.path(), &url, refresh);
        let lat = Arc::new(Mutex::new(Vec::new()));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += burst(&cache, &lat).await;
                    }
                    total
                })
            })
        });
        let mut all = std::mem::take(&mut *lat.lock());
        all.sort_unstable();
        let s = cache.stats();
        rows.push((
            name,
            all.len(),
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            percentile(&all, 0.999),
            all.last().copied().unwrap_or_default(),
            s.loads,
            s.refreshes,
            s.misses,
        ));
        rt.block_on(cache.close()).expect("close");
    }
    group.finish();
    println!(
        "\nhot key across its {TTL:?} TTL, {READERS} concurrent readers per burst ({url_kind}):",
        url_kind = url.split(':').next().unwrap_or("?")
    );
    println!(
        "{:<24} {:>9} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9} {:>7}",
        "", "reads", "p50", "p99", "p99.9", "max", "loads", "refreshes", "misses"
    );
    for r in &rows {
        println!(
            "{:<24} {:>9} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?} {:>7} {:>9} {:>7}",
            r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8
        );
    }
    if let [without, with] = &rows[..] {
        println!(
            "p99 without / with refresh-ahead: {:.1}x",
            without.3.as_secs_f64() / with.3.as_secs_f64().max(1e-9)
        );
    }
}

criterion_group!(benches, across_expiry);
criterion_main!(benches);
