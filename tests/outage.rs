//! PostgreSQL taken away mid-stress through a loopback TCP proxy (live
//! connections cut, new ones refused) for many retry periods: writes keep
//! being acknowledged up to the dirty-entry limit (then refused by
//! backpressure), the flusher's retries back off instead of spinning,
//! nothing is lost, and the flush catches up once the database is back.
#![allow(clippy::unwrap_used)]
#![cfg(feature = "postgres")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::Row;
use writebehind::{Backpressure, Error, Limit, RetryPolicy, WriteBehind};

#[path = "../writer/tests/common/proxy.rs"]
mod proxy;
use proxy::{via_proxy, Proxy};

fn postgres_url() -> String {
    std::env::var("WB_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "WB_POSTGRES_URL is not set. Run the tests with scripts/test, or set it, e.g. \
             WB_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test"
        )
    })
}

async fn sql(url: &str, q: &str) -> Vec<sqlx::any::AnyRow> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let rows = sqlx::query(sqlx::AssertSqlSafe(q))
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

const DIRTY_LIMIT: usize = 100;
const KEYS: u64 = 300;

#[derive(Default)]
struct Writes {
    acked: BTreeMap<String, i64>,
    refused: u64,
}

/// Two writers adding 1 to random keys until `stop`; backpressure refusals are counted,
/// any other error fails the test.
async fn write_until(
    cache: &WriteBehind<String, i64>,
    stop: Instant,
    seed: u64,
    into: &mut Writes,
) {
    let tasks: Vec<_> = (0..2)
        .map(|w| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed + w);
                let mut out = Writes::default();
                while Instant::now() < stop {
                    let key = format!("k{}", rng.u64(0..KEYS));
                    match cache.add(key.as_str(), 1).await {
                        Ok(_) => *out.acked.entry(key).or_insert(0) += 1,
                        Err(Error::Backpressure {
                            limit: Limit::DirtyEntries,
                            ..
                        }) => out.refused += 1,
                        Err(e) => panic!("add to {key} failed: {e}"),
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                out
            })
        })
        .collect();
    for t in tasks {
        let out = t.await.unwrap();
        for (k, n) in out.acked {
            *into.acked.entry(k).or_insert(0) += n;
        }
        into.refused += out.refused;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_acks_to_the_limit_backs_off_and_catches_up() {
    let url = postgres_url();
    let table = format!("outage_{}", std::process::id());
    let (upstream, _) = via_proxy(&url, 0);
    let proxy = Proxy::start(upstream).await;
    let (_, proxied) = via_proxy(&url, proxy.port);
    let dir = tempfile::tempdir().unwrap();
    let cache = WriteBehind::<String, i64>::builder(dir.path())
        .database(&proxied)
        .table(&table)
        .create_tables(true)
        .flush_interval(Duration::from_millis(50))
        .max_dirty_entries(DIRTY_LIMIT)
        .backpressure(Backpressure::Fail)
        .retry(RetryPolicy {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            factor: 2.0,
            max_attempts: None,
            jitter: false,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_millis(200),
        })
        .open()
        .await
        .unwrap();

    // Healthy: writes flow to the database.
    let mut writes = Writes::default();
    write_until(
        &cache,
        Instant::now() + Duration::from_millis(300),
        1,
        &mut writes,
    )
    .await;
    cache.flush().await.unwrap();
    let healthy = cache.stats();
    assert_eq!(healthy.dirty_entries, 0);

    // Down for 2.5 s: at most 200 ms between retries, so well over ten retry periods.
    proxy.set_down(true);
    let outage = Duration::from_millis(2500);
    let mut during = Writes::default();
    write_until(&cache, Instant::now() + outage, 2, &mut during).await;
    let down = cache.stats();
    let acked_during: i64 = during.acked.values().sum();
    assert!(
        acked_during > 0,
        "no write was acknowledged during the outage"
    );
    assert!(
        during.refused > 0,
        "the dirty-entry limit was never reached"
    );
    // Rejections before the outage (the healthy phase can touch the limit too) do not count.
    assert_eq!(
        down.backpressure_rejections - healthy.backpressure_rejections,
        during.refused
    );
    // The limit is checked before each write, so it can be passed by one
    // write per other concurrent writer (core `State::over_limits`): two here.
    assert!(down.dirty_entries <= DIRTY_LIMIT + 1, "{down:?}");
    // Only keys already dirty could still take writes once the limit was full.
    assert!(
        during.acked.len() <= DIRTY_LIMIT + 1,
        "{} keys written",
        during.acked.len()
    );
    assert_eq!(
        down.flushed_lsn, healthy.flushed_lsn,
        "a flush got through a cut proxy"
    );
    let retries = down.retries - healthy.retries;
    // Backoff 20, 40, 80, 160, then 200 ms: about 15 retries in 2.5 s. A retry loop
    // without backoff would make hundreds.
    assert!(
        (5..=40).contains(&retries),
        "{retries} retries during a {outage:?} outage"
    );
    for (k, n) in during.acked {
        *writes.acked.entry(k).or_insert(0) += n;
    }

    // Back: the flush catches up, and every acknowledged add is there exactly once.
    proxy.set_down(false);
    let back = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), async {
        while cache.flush().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the flush did not catch up within 30 s of the database's return");
    let caught_up = back.elapsed();
    assert_eq!(cache.stats().dirty_entries, 0);
    cache.close().await.unwrap();

    let rows = sql(&url, &format!("SELECT key, value FROM {table}")).await;
    let db: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect();
    assert_eq!(db, writes.acked);
    println!(
        "outage {outage:?}: {acked_during} adds acked, {} refused, {retries} retries, caught up in {caught_up:?}",
        during.refused
    );
    sql(&url, &format!("DROP TABLE {table}")).await;
}
