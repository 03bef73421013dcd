//! A long database outage under steady load, measured: counters flow into
//! PostgreSQL through a loopback proxy, the proxy is cut for `--outage-secs`
//! while writers keep going, then restored. Memory and WAL disk must stay
//! bounded (backpressure once the limits fill), nothing acknowledged may be
//! lost, and everything must arrive exactly once after the database returns.
//!
//! ```sh
//! cargo run --release --all-features --example outage_soak -- --outage-secs 600
//! ```
//!
//! Prints the figures (peak RSS, peak WAL bytes, acknowledged and refused
//! writes, catch-up time) and exits non-zero when the database does not
//! equal the acknowledged adds.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;
use writebehind::{Backpressure, Durability, Error, WriteBehind};

#[path = "../writer/tests/common/proxy.rs"]
mod proxy;
use proxy::{via_proxy, Proxy};

struct Args {
    db: String,
    outage: Duration,
    before: Duration,
    after: Duration,
    writers: u64,
    keys: u64,
    max_dirty: usize,
    rate: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        db: std::env::var("WB_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        outage: Duration::from_secs(600),
        before: Duration::from_secs(5),
        after: Duration::from_secs(5),
        writers: 4,
        keys: 100_000,
        max_dirty: 50_000,
        rate: 20_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let secs = |v: String| {
            v.parse::<f64>()
                .map(Duration::from_secs_f64)
                .map_err(|e| format!("{v}: {e}"))
        };
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--db" => a.db = value()?,
            "--outage-secs" => a.outage = secs(value()?)?,
            "--before-secs" => a.before = secs(value()?)?,
            "--after-secs" => a.after = secs(value()?)?,
            "--writers" => a.writers = num(value()?)?,
            "--keys" => a.keys = num(value()?)?,
            "--max-dirty" => a.max_dirty = num(value()?)? as usize,
            "--rate" => a.rate = num(value()?)?,
            other => {
                return Err(format!(
                    "unknown option {other}; options: --db URL --outage-secs S --before-secs S \
                     --after-secs S --writers N --keys N --max-dirty N --rate ADDS_PER_SEC"
                ))
            }
        }
    }
    Ok(a)
}

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[derive(Default)]
struct Tally {
    acked: BTreeMap<String, i64>,
    refused: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("outage_soak: {e}");
            std::process::exit(2);
        }
    };
    let table = format!("soak_{}", std::process::id());
    let (upstream, _) = via_proxy(&args.db, 0);
    let proxy = Proxy::start(upstream).await;
    let (_, proxied) = via_proxy(&args.db, proxy.port);
    let dir = tempfile::tempdir().unwrap();
    let cache = WriteBehind::<String, i64>::builder(dir.path())
        .database(&proxied)
        .table(&table)
        .create_tables(true)
        .durability(Durability::Buffered {
            interval: Duration::from_millis(10),
        })
        .flush_interval(Duration::from_millis(200))
        .max_dirty_entries(args.max_dirty)
        .backpressure(Backpressure::Fail)
        .segment_size(4 << 20)
        .checkpoint_bytes(16 << 20)
        .open()
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let peak_wal = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (cache, stop, peak_wal) = (cache.clone(), stop.clone(), peak_wal.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak_wal.fetch_max(cache.stats().wal_bytes, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let per_writer = Duration::from_secs_f64(args.writers as f64 / args.rate.max(1) as f64);
    let writers: Vec<_> = (0..args.writers)
        .map(|w| {
            let (cache, stop) = (cache.clone(), stop.clone());
            let keys = args.keys;
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(w);
                let mut t = Tally::default();
                let mut next = tokio::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{}", rng.u64(0..keys));
                    match cache.add(key.as_str(), 1).await {
                        Ok(_) => *t.acked.entry(key).or_insert(0) += 1,
                        Err(Error::Backpressure { .. }) => t.refused += 1,
                        Err(e) => panic!("add to {key}: {e}"),
                    }
                    next += per_writer;
                    tokio::time::sleep_until(next).await;
                }
                t
            })
        })
        .collect();

    tokio::time::sleep(args.before).await;
    let healthy = cache.stats();
    eprintln!(
        "healthy: {} adds, {} flushes; cutting the database for {:?}",
        healthy.adds, healthy.flushes, args.outage
    );
    proxy.set_down(true);
    let outage_started = Instant::now();
    while outage_started.elapsed() < args.outage {
        tokio::time::sleep(Duration::from_secs(10).min(args.outage)).await;
        let s = cache.stats();
        eprintln!(
            "  {:>5.0} s down: dirty {}, WAL {} KiB, refused {}, flush failures {}, RSS peak {} MiB",
            outage_started.elapsed().as_secs_f64(),
            s.dirty_entries,
            s.wal_bytes / 1024,
            s.backpressure_rejections,
            s.flush_failures,
            peak_rss() >> 20
        );
    }
    let down = cache.stats();
    proxy.set_down(false);
    let back = Instant::now();
    // Caught up: every write acknowledged before the database returned is in it
    // (the writers go on, so the cache is never entirely clean).
    let target = down.last_lsn;
    let caught_up = loop {
        if cache.stats().flushed_lsn >= target {
            break back.elapsed();
        }
        if back.elapsed() > Duration::from_secs(300) {
            eprintln!("outage_soak: not caught up 300 s after the database returned");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(args.after).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for w in writers {
        let t = w.await.unwrap();
        for (k, n) in t.acked {
            *total.acked.entry(k).or_insert(0) += n;
        }
        total.refused += t.refused;
    }
    sampler.await.unwrap();
    cache.flush().await.unwrap();
    let end = cache.stats();
    cache.close().await.unwrap();

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&args.db).await.unwrap();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT key, value FROM {table}"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let db: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let acked: i64 = total.acked.values().sum();
    let exact = db == total.acked;
    println!(
        "{{\"outage_secs\":{:.0},\"acked\":{acked},\"acked_during_outage\":{},\"refused\":{},\
         \"peak_rss_bytes\":{},\"peak_wal_bytes\":{},\"dirty_at_end_of_outage\":{},\
         \"flush_failures\":{},\"retries\":{},\"caught_up_ms\":{},\"database_equals_acks\":{exact}}}",
        args.outage.as_secs_f64(),
        down.adds - healthy.adds,
        total.refused,
        peak_rss(),
        peak_wal.load(Ordering::Relaxed),
        down.dirty_entries,
        end.flush_failures,
        end.retries,
        caught_up.as_millis(),
    );
    if !exact {
        let missing = total
            .acked
            .iter()
            .filter(|(k, v)| db.get(*k) != Some(v))
            .count();
        eprintln!("outage_soak: {missing} keys differ between the database and the acks");
        std::process::exit(1);
    }
}
