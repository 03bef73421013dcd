//! The main job: a high-write counter service on embedded SQLite.
//!
//! Several tasks add to page-view counters as fast as they can; the cache
//! acknowledges each add once the WAL has it, and flushes the coalesced
//! counts to the database in the background. Live progress is printed every
//! second; at the end the cache is closed and the totals are read back from
//! the database and checked against what was added.
//!
//! ```text
//! cargo run --release --example counters
//! cargo run --release --example counters -- --db postgres://postgres@127.0.0.1/test
//! cargo run --release --example counters -- --increments 200000 --tasks 8 --keys 1000
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;
use writebehind::{Durability, WriteBehind};

struct Args {
    db: Option<String>,
    dir: std::path::PathBuf,
    increments: u64,
    tasks: u64,
    keys: u64,
    durability: Durability,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        db: None,
        dir: std::path::PathBuf::from("./data/counters"),
        increments: 2_000_000,
        tasks: 8,
        keys: 10_000,
        durability: Durability::Buffered {
            interval: Duration::from_millis(10),
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--db" => args.db = Some(value()?),
            "--dir" => args.dir = value()?.into(),
            "--increments" => {
                args.increments = value()?.parse().map_err(|e| format!("--increments: {e}"))?
            }
            "--tasks" => args.tasks = value()?.parse().map_err(|e| format!("--tasks: {e}"))?,
            "--keys" => args.keys = value()?.parse().map_err(|e| format!("--keys: {e}"))?,
            "--fsync" => args.durability = Durability::Fsync,
            "-h" | "--help" => {
                println!("usage: counters [--db URL] [--dir WAL_DIR] [--increments N] [--tasks N] [--keys N] [--fsync]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.tasks == 0 || args.keys == 0 {
        return Err("--tasks and --keys must be at least 1".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.dir)?;
    // A fresh run each time: the table is emptied and the WAL starts anew.
    let _ = std::fs::remove_dir_all(&args.dir);
    let url = match &args.db {
        Some(url) => url.clone(),
        None => {
            let file = args.dir.with_extension("db");
            let _ = std::fs::remove_file(&file);
            format!("sqlite://{}", file.display())
        }
    };
    let table = "page_views";
    reset_table(&url, table).await?;

    let cache = WriteBehind::<String, i64>::builder(&args.dir)
        .database(url.clone())
        .table(table)
        .create_tables(true)
        .durability(args.durability)
        .flush_interval(Duration::from_millis(200))
        .open()
        .await?;
    println!(
        "writebehind counters: {} increments from {} tasks over {} keys -> {url}",
        args.increments, args.tasks, args.keys
    );

    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..args.tasks {
        let cache = cache.clone();
        let done = done.clone();
        let share = args.increments / args.tasks + u64::from(t < args.increments % args.tasks);
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            for _ in 0..share {
                // Skewed traffic: a few pages get most views.
                let r = rng.f64();
                let k = ((r * r * r) * keys as f64) as u64;
                cache.add(format!("page:{k}").as_str(), 1).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, writebehind::Error>(())
        }));
    }
    let progress = {
        let cache = cache.clone();
        let done = done.clone();
        let total = args.increments;
        tokio::spawn(async move {
            let mut last = (0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = done.load(Ordering::Relaxed);
                let s = cache.stats();
                let rate = (n - last.0) as f64 / last.1.elapsed().as_secs_f64();
                last = (n, Instant::now());
                println!(
                    "  {n:>10}/{total} increments  {rate:>10.0}/s  dirty {:>6}  flushed rows {:>8}  WAL {:>6} KiB",
                    s.dirty_entries,
                    s.rows_flushed,
                    s.wal_bytes / 1024
                );
                if n >= total {
                    return;
                }
            }
        })
    };
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    progress.abort();
    let stats = cache.stats();
    cache.close().await?;
    println!(
        "added {} in {:.2}s ({:.0}/s); {} flushes wrote {} rows ({:.3} rows per increment)",
        args.increments,
        elapsed.as_secs_f64(),
        args.increments as f64 / elapsed.as_secs_f64(),
        stats.flushes,
        stats.rows_flushed,
        stats.rows_flushed as f64 / args.increments.max(1) as f64
    );

    let (sum, rows) = read_totals(&url, table).await?;
    println!("database: {rows} rows, total {sum}");
    if sum != args.increments as i64 {
        return Err(format!(
            "MISMATCH: added {} but the database holds {sum}",
            args.increments
        )
        .into());
    }
    println!("OK: the database holds exactly what was added");
    Ok(())
}

async fn reset_table(url: &str, table: &str) -> Result<(), sqlx::Error> {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
        format!("{url}?mode=rwc")
    } else {
        url.to_owned()
    };
    let pool = sqlx::AnyPool::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

async fn read_totals(url: &str, table: &str) -> Result<(i64, i64), sqlx::Error> {
    let pool = sqlx::AnyPool::connect(url).await?;
    let sum = if url.starts_with("postgres") {
        "COALESCE(SUM(value), 0)::BIGINT"
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        "CAST(COALESCE(SUM(value), 0) AS SIGNED)"
    } else {
        "COALESCE(SUM(value), 0)"
    };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {sum} AS s, COUNT(*) AS n FROM {table}"
    )))
    .fetch_one(&pool)
    .await?;
    let sum: i64 = row.try_get("s")?;
    let rows: i64 = row.try_get("n")?;
    pool.close().await;
    Ok((sum, rows))
}
