//! The read-side patterns on one cache: write-behind and write-through
//! writes, read-through, a write-around change fixed by `invalidate` and
//! `invalidate_prefix`, and refresh-ahead keeping a hot key's readers off
//! the database across its expiry. Exits non-zero when a check fails.
//!
//! ```text
//! cargo run --example read_patterns
//! cargo run --example read_patterns --features postgres -- --db postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! Flags: `--db URL` (default: an SQLite file in a temporary directory),
//! `--ttl-ms` (the clean TTL, default 300), `--readers` (concurrent readers
//! of the hot key, default 1 000).

use std::time::{Duration, Instant};

use clap::Parser;
use writebehind::{Durability, RefreshAhead, Stats, WriteBehind};

/// What to run.
#[derive(Parser, Debug)]
struct Options {
    /// Database URL; default an SQLite file in a temporary directory.
    #[arg(long)]
    db: Option<String>,
    /// Clean TTL in milliseconds.
    #[arg(long, default_value_t = 300)]
    ttl_ms: u64,
    /// Concurrent readers of the hot key past its TTL.
    #[arg(long, default_value_t = 1_000)]
    readers: usize,
}

type Failure = Box<dyn std::error::Error>;

/// Fails the run with `what` unless `ok`.
fn check(ok: bool, what: String) -> Result<(), Failure> {
    if ok {
        println!("ok: {what}");
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

/// Runs one statement on its own connection. Keys and table names here
/// are this example's own constants, not user text.
async fn exec(url: &str, sql: String) -> Result<(), Failure> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await?;
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Another program changes a row behind the cache's back (write-around).
async fn write_around(url: &str, table: &str, key: &str, value: i64) -> Result<(), Failure> {
    let col = if url.starts_with("mysql") {
        "`key`"
    } else {
        "\"key\""
    };
    exec(
        url,
        format!("UPDATE {table} SET value = {value}, version = version + 1 WHERE {col} = '{key}'"),
    )
    .await
}

async fn run(opts: &Options) -> Result<Stats, Failure> {
    let tmp = tempfile::tempdir()?;
    let url = match &opts.db {
        Some(url) => url.clone(),
        None => format!(
            "sqlite://{}?mode=rwc",
            tmp.path().join("example.sqlite").display()
        ),
    };
    let table = format!("read_patterns_{:x}", fastrand::u32(..));
    let ttl = Duration::from_millis(opts.ttl_ms);
    let cache = WriteBehind::<String, i64>::builder(tmp.path().join("wal"))
        .database(url.clone())
        .table(table.clone())
        .create_tables(true)
        .durability(Durability::Buffered {
            interval: Duration::from_millis(5),
        })
        .flush_interval(Duration::from_millis(200))
        .clean_ttl(Some(ttl))
        .clean_capacity_bytes(Some(64 << 20))
        .refresh_ahead(Some(RefreshAhead {
            beta: 1.0,
            max_stale: ttl * 10,
        }))
        .open()
        .await?;

    // Write-behind: acknowledged from memory and the WAL, flushed later.
    cache.put("user:1", &100).await?;
    cache.put("team:7:alice", &1).await?;
    cache.put("team:7:bob", &2).await?;
    // Write-through for the one write that must be in the database now.
    let lsn = cache.put("hot", &1).await?;
    cache.flushed(lsn).await?;
    cache.flush().await?;

    // Write-around, then invalidation by key.
    write_around(&url, &table, "user:1", 101).await?;
    let stale = cache.get("user:1").await?;
    check(
        stale == Some(100),
        format!("the cached copy is served until invalidated ({stale:?})"),
    )?;
    let dropped = cache.invalidate("user:1").await?;
    let fresh = cache.get("user:1").await?;
    check(
        dropped && fresh == Some(101),
        format!("invalidate + get reads the changed row ({fresh:?})"),
    )?;

    // Invalidation by prefix.
    write_around(&url, &table, "team:7:alice", 10).await?;
    write_around(&url, &table, "team:7:bob", 20).await?;
    let n = cache.invalidate_prefix("team:7:").await?;
    let (a, b) = (
        cache.get("team:7:alice").await?,
        cache.get("team:7:bob").await?,
    );
    check(
        n == 2 && a == Some(10) && b == Some(20),
        format!("invalidate_prefix dropped {n} copies; reads {a:?} {b:?}"),
    )?;

    // Refresh-ahead: past the TTL, every reader is served from memory while
    // one background load refreshes the hot key.
    tokio::time::sleep(ttl + ttl / 5).await;
    write_around(&url, &table, "hot", 2).await?;
    let before = cache.stats();
    let started = Instant::now();
    let readers: Vec<_> = (0..opts.readers)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                cache.get("hot").await.map(|v| (v, t.elapsed()))
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for r in readers {
        let (_, took) = r.await??;
        slowest = slowest.max(took);
    }
    let all = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.get("hot").await? != Some(2) {
        if Instant::now() > deadline {
            return Err("the hot key was not refreshed within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = cache.stats();
    check(
        after.misses == before.misses,
        format!(
            "{} readers past the TTL, none waited for the database (slowest {slowest:?}, all in {all:?})",
            opts.readers
        ),
    )?;
    // One refresh for the expiry; XFetch (β 1) may add an early one when
    // loads are slow. Either way, one load per refresh and no other load.
    let (loads, refreshes) = (
        after.loads - before.loads,
        after.refreshes - before.refreshes,
    );
    check(
        refreshes >= 1 && loads == refreshes && after.refresh_failures == 0,
        format!("one load per refresh ({loads} loads, {refreshes} refreshes)"),
    )?;
    let last = cache.stats();
    cache.close().await?;
    exec(&url, format!("DROP TABLE {table}")).await?;
    Ok(last)
}

#[tokio::main]
async fn main() {
    let opts = Options::parse();
    match run(&opts).await {
        Ok(s) => {
            println!(
                "hit ratio {:.3}, loads {} (p99 under {:?}), refreshes {}, clean {} entries / {} bytes, evictions: capacity {}, ttl {}, invalidation {}",
                s.hit_ratio(),
                s.loads,
                s.load_latency.quantile_bound(0.99),
                s.refreshes,
                s.clean_entries,
                s.clean_bytes,
                s.capacity_evictions,
                s.ttl_evictions,
                s.invalidation_evictions
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
