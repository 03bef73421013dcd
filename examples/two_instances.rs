//! Two cache instances, each with its own WAL directory, adding to the same counters in one
//! PostgreSQL table at the same time. Counters flush as `value = value + delta`, and each
//! instance records its own flush position, so the database ends with exactly the sum of both.
//!
//! ```text
//! cargo run --features postgres --example two_instances -- --db postgres://postgres@127.0.0.1:5432/test
//! WB_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo run --features postgres --example two_instances
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Row;
use writebehind::{Durability, WriteBehind};

const TABLE: &str = "two_instances_example";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut db = std::env::var("WB_POSTGRES_URL").ok();
    let mut adds: u64 = 50_000;
    let keys: u64 = 100;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--db" => db = Some(args.next().ok_or("--db needs a URL")?),
            "--adds" => adds = args.next().ok_or("--adds needs a number")?.parse()?,
            "-h" | "--help" => {
                println!("usage: two_instances [--db postgres://…] [--adds N per instance]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    let url = db.ok_or(
        "no database: pass --db postgres://… or set WB_POSTGRES_URL \
         (e.g. postgres://postgres@127.0.0.1:5432/test)",
    )?;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
        .execute(&pool)
        .await?;

    let scratch = std::env::temp_dir().join(format!("writebehind-two-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let mut caches = Vec::new();
    for name in ["a", "b"] {
        let cache = WriteBehind::<String, i64>::builder(scratch.join(name))
            .database(url.clone())
            .table(TABLE)
            .create_tables(true)
            .durability(Durability::Buffered {
                interval: Duration::from_millis(5),
            })
            .flush_interval(Duration::from_millis(50))
            .open()
            .await?;
        caches.push(cache);
    }

    // Instance a adds 1 to key i % keys, instance b adds 2 to key (i * 7) % keys: both hit every
    // key, interleaved, while both flushers run.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut tasks = Vec::new();
    for (n, cache) in caches.iter().enumerate() {
        let plan: Vec<(String, i64)> = (0..adds)
            .map(|i| {
                if n == 0 {
                    (format!("c{}", i % keys), 1)
                } else {
                    (format!("c{}", (i * 7) % keys), 2)
                }
            })
            .collect();
        for (k, d) in &plan {
            *expected.entry(k.clone()).or_default() += d;
        }
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            for (k, d) in plan {
                cache.add(k.as_str(), d).await?;
            }
            Ok::<_, writebehind::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    for cache in caches {
        let s = cache.stats();
        println!(
            "instance: {} writes, {} flushes, {} rows flushed",
            s.writes, s.flushes, s.rows_flushed
        );
        cache.close().await?;
    }

    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT \"key\" AS k, value AS v FROM {TABLE} ORDER BY \"key\""
    )))
    .fetch_all(&pool)
    .await?;
    let mut got = BTreeMap::new();
    for r in rows {
        got.insert(r.try_get::<String, _>("k")?, r.try_get::<i64, _>("v")?);
    }
    let total: i64 = got.values().sum();
    println!(
        "database: {} keys, total {total} (expected {})",
        got.len(),
        expected.values().sum::<i64>()
    );
    if got != expected {
        return Err("MISMATCH: the database does not hold the sum of both instances".into());
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&scratch);
    println!("OK: every counter is exactly the sum of both instances' adds");
    Ok(())
}
