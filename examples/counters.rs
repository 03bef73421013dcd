//! The main job: view and like counters on the user's own `posts` table,
//! on embedded SQLite.
//!
//! The example creates `posts(id, title, views, likes)` with plain SQL and
//! inserts the rows with their titles, as an existing service would have
//! them. Then several tasks add views and likes as fast as they can through
//! a delta record (`#[derive(Record)]`, two counter columns): the cache
//! acknowledges each add once the WAL has it, coalesces the adds per post
//! and per column, and flushes them in the background as
//! `views = views + Δ, likes = likes + Δ`, touching no other column. Live
//! progress is printed every second; at the end the cache is closed and the
//! table is read back: every post's views and likes must equal what was
//! added, and every title must be untouched (exit status 1 otherwise).
//!
//! ```text
//! cargo run --release --example counters
//! cargo run --release --example counters -- --db postgres://postgres@127.0.0.1/test
//! cargo run --release --example counters -- --increments 200000 --tasks 8 --keys 1000
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Row;
use writebehind::{Durability, Record, WriteBehind};

/// The two counter columns of `posts`: a delta record. `cache.add(&id, ..)`
/// adds it per column; the key is the `id` column, and `title` is not
/// mapped, so the cache never writes it. `update_only`: the posts exist,
/// the cache only counts on them (`UPDATE posts SET views = views + Δ, ..`;
/// an upsert would have to insert a row without its `NOT NULL` title).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(table = "posts", key(id), update_only)]
struct PostCounters {
    #[writebehind(counter)]
    views: i64,
    #[writebehind(counter)]
    likes: i64,
}

/// The table as the user's service has it, created by plain SQL (the same
/// text on SQLite, PostgreSQL and MySQL/MariaDB).
const CREATE_POSTS: &str = "CREATE TABLE IF NOT EXISTS posts (\
     id BIGINT PRIMARY KEY, \
     title TEXT NOT NULL, \
     views BIGINT NOT NULL DEFAULT 0, \
     likes BIGINT NOT NULL DEFAULT 0)";

fn title(id: u64) -> String {
    format!("Post number {id}")
}

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
                println!("  --increments N  adds of a PostCounters delta record, over all tasks");
                println!("  --keys N        posts (rows of `posts`, ids 0..N)");
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
    // A fresh run each time: the WAL starts anew and the table is made again.
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let url = match &args.db {
        Some(url) => url.clone(),
        None => {
            let file = args.dir.with_extension("db");
            let _ = std::fs::remove_file(&file);
            format!("sqlite://{}", file.display())
        }
    };
    create_posts(&url, args.keys).await?;

    // The table exists: the cache checks it at open (columns, types, the
    // key is the primary key) and creates only its own bookkeeping tables.
    let cache = WriteBehind::<i64, PostCounters>::builder(&args.dir)
        .database(url.clone())
        .create_tables(true)
        .durability(args.durability)
        .flush_interval(Duration::from_millis(200))
        .open()
        .await?;
    println!(
        "writebehind counters: {} adds of (views, likes) from {} tasks over {} posts -> {}",
        args.increments,
        args.tasks,
        args.keys,
        writebehind::redact_url(&url)
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
            // What this task added, per post: (views, likes).
            let mut added = vec![(0i64, 0i64); keys as usize];
            for _ in 0..share {
                // Skewed traffic: a few posts get most views; one view in ten likes.
                let r = rng.f64();
                let id = ((r * r * r) * keys as f64) as usize;
                let likes = i64::from(rng.u8(..10) == 0);
                cache
                    .add(&(id as i64), PostCounters { views: 1, likes })
                    .await?;
                added[id].0 += 1;
                added[id].1 += likes;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, writebehind::Error>(added)
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
                    "  {n:>10}/{total} adds  {rate:>10.0}/s  dirty {:>6}  flushed rows {:>8}  WAL {:>6} KiB",
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
    let mut expected = vec![(0i64, 0i64); args.keys as usize];
    for t in tasks {
        for (e, a) in expected.iter_mut().zip(t.await??) {
            e.0 += a.0;
            e.1 += a.1;
        }
    }
    let elapsed = started.elapsed();
    progress.abort();

    // Reads go through the cache: the row as flushed so far plus the adds
    // still pending, per column.
    for (id, &(views, likes)) in expected.iter().enumerate().take(100) {
        let read = cache.get(&(id as i64)).await?.unwrap_or_default();
        if read != (PostCounters { views, likes }) {
            return Err(format!(
                "MISMATCH: post {id}: the cache reads {read:?}, but views {views}, likes {likes} were added"
            )
            .into());
        }
    }

    let stats = cache.stats();
    cache.close().await?;
    println!(
        "added {} in {:.2}s ({:.0}/s); {} flushes wrote {} rows ({:.3} rows per add)",
        args.increments,
        elapsed.as_secs_f64(),
        args.increments as f64 / elapsed.as_secs_f64(),
        stats.flushes,
        stats.rows_flushed,
        stats.rows_flushed as f64 / args.increments.max(1) as f64
    );

    check_posts(&url, &expected).await?;
    Ok(())
}

/// Any pool on `url`; SQLite's file is created when missing.
async fn connect(url: &str) -> Result<sqlx::AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
        format!("{url}?mode=rwc")
    } else {
        url.to_owned()
    };
    sqlx::AnyPool::connect(&url).await
}

/// Makes `posts` anew, the way the user's service would have it: plain SQL,
/// rows with titles and zero counts.
async fn create_posts(url: &str, keys: u64) -> Result<(), sqlx::Error> {
    let pool = connect(url).await?;
    sqlx::query("DROP TABLE IF EXISTS posts")
        .execute(&pool)
        .await?;
    sqlx::query(CREATE_POSTS).execute(&pool).await?;
    let ids: Vec<u64> = (0..keys).collect();
    for chunk in ids.chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|id| format!("({id}, '{}')", title(*id)))
            .collect();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO posts (id, title) VALUES {}",
            rows.join(", ")
        )))
        .execute(&pool)
        .await?;
    }
    pool.close().await;
    Ok(())
}

/// Every post holds exactly what was added, and its title as it was.
async fn check_posts(url: &str, expected: &[(i64, i64)]) -> Result<(), Box<dyn std::error::Error>> {
    let pool = connect(url).await?;
    let rows = sqlx::query("SELECT id, title, views, likes FROM posts ORDER BY id")
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    let mut problems = Vec::new();
    if rows.len() != expected.len() {
        problems.push(format!(
            "{} rows in posts, {} expected",
            rows.len(),
            expected.len()
        ));
    }
    let (mut views_sum, mut likes_sum) = (0i64, 0i64);
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        let title_now: String = row.try_get("title")?;
        let views: i64 = row.try_get("views")?;
        let likes: i64 = row.try_get("likes")?;
        views_sum += views;
        likes_sum += likes;
        let Some(&(want_views, want_likes)) =
            usize::try_from(id).ok().and_then(|i| expected.get(i))
        else {
            problems.push(format!("post {id}: a row nobody inserted"));
            continue;
        };
        if (views, likes) != (want_views, want_likes) {
            problems.push(format!(
                "post {id}: views {views}, likes {likes} in the table; {want_views}, {want_likes} added"
            ));
        }
        if title_now != title(id as u64) {
            problems.push(format!("post {id}: title changed to {title_now:?}"));
        }
    }
    println!(
        "database: {} posts, views {views_sum}, likes {likes_sum}",
        rows.len()
    );
    if !problems.is_empty() {
        for p in problems.iter().take(20) {
            eprintln!("  {p}");
        }
        return Err(format!("MISMATCH: {} problems in posts", problems.len()).into());
    }
    println!("OK: every post holds exactly what was added, and every title is untouched");
    Ok(())
}
