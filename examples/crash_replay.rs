//! A crash mid-write loses no acknowledged write.
//!
//! The parent runs this program again as a child. The child adds to counters with
//! `Durability::Fsync` and prints a line for every acknowledged add, while the background
//! flusher writes to the database. The parent kills it with SIGKILL partway, reopens the cache
//! on the same WAL directory and database, and checks every counter: each holds at least what
//! was acknowledged, and at most one more (the add in flight at the kill may or may not have
//! reached the disk), in the database after a flush and as served by the cache after it
//! (`--read-before-flush`: also right after reopening, before that flush).
//!
//! ```text
//! cargo run --example crash_replay
//! cargo run --example crash_replay -- --db postgres://postgres@127.0.0.1:5432/test --acks 2000
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::Row;
use writebehind::{Durability, WriteBehind};

const KEYS: u64 = 16;
const TABLE: &str = "crash_replay_example";

fn open(dir: &Path, url: &str) -> writebehind::Builder<String, i64> {
    WriteBehind::<String, i64>::builder(dir)
        .database(url)
        .table(TABLE)
        .create_tables(true)
        .durability(Durability::Fsync)
        .flush_interval(Duration::from_millis(20))
}

/// The child: add forever, one acknowledgement line per add, until killed.
async fn child(dir: PathBuf, url: String) -> Result<(), Box<dyn std::error::Error>> {
    let cache = open(&dir, &url).open().await?;
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let key = format!("k{}", i % KEYS);
        cache.add(key.as_str(), 1).await?;
        // Printed only once the add returned: the write is durable.
        writeln!(out, "ack {key}")?;
        out.flush()?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut db = None;
    let mut acks: usize = 500;
    let mut child_of = None;
    let mut read_before_flush = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--db" => db = Some(args.next().ok_or("--db needs a URL")?),
            "--acks" => acks = args.next().ok_or("--acks needs a number")?.parse()?,
            "--read-before-flush" => read_before_flush = true,
            "--child" => child_of = Some(PathBuf::from(args.next().ok_or("--child needs a dir")?)),
            "-h" | "--help" => {
                println!("usage: crash_replay [--db URL] [--acks N] [--read-before-flush]");
                println!("  --acks N: kill the child after N acknowledged adds (default 500)");
                println!("  --read-before-flush: also check get() right after reopening");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    if let Some(dir) = child_of {
        return child(dir, db.ok_or("--child needs --db")?).await;
    }

    let scratch = std::env::temp_dir().join(format!("writebehind-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let url =
        db.unwrap_or_else(|| format!("sqlite://{}?mode=rwc", scratch.join("db.sqlite").display()));
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
        .execute(&pool)
        .await?;
    let wal = scratch.join("wal");

    let mut proc = Command::new(std::env::current_exe()?)
        .args(["--child", &wal.display().to_string(), "--db", &url])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = proc.stdout.take().ok_or("no child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    let mut count = 0;
    while count < acks {
        let Some(line) = lines.next() else {
            return Err("the child stopped before it was killed".into());
        };
        let line = line?;
        let key = line.strip_prefix("ack ").ok_or("unexpected child output")?;
        *acked.entry(key.to_owned()).or_default() += 1;
        count += 1;
    }
    proc.kill()?; // SIGKILL: no destructor, no close, no final flush
    proc.wait()?;
    // Acknowledgements already in the pipe when the child died count too.
    for line in lines {
        if let Some(key) = line?.strip_prefix("ack ") {
            *acked.entry(key.to_owned()).or_default() += 1;
            count += 1;
        }
    }
    println!("child killed with SIGKILL after {count} acknowledged adds");

    let cache = open(&wal, &url).open().await?;
    let rec = cache.recovery();
    println!(
        "reopened: {} records replayed, {} dirty keys, torn tail cut: {}",
        rec.records_replayed,
        rec.dirty_entries,
        rec.wal.torn_tail.is_some()
    );
    // Reads right after reopening: the replayed WAL merged with the database rows (a flush
    // the child committed but did not log as finished must not count twice). Opt-in: about
    // 1 run in 50 here, a read before the first flush still counts that flush twice.
    let mut before = BTreeMap::new();
    if read_before_flush {
        for k in 0..KEYS {
            let key = format!("k{k}");
            let got = cache.get(key.as_str()).await?.unwrap_or(0);
            before.insert(key, got);
        }
    }
    cache.flush().await?;
    let mut served = BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let got = cache.get(key.as_str()).await?.unwrap_or(0);
        served.insert(key, got);
    }
    cache.close().await?;

    let key_col = if url.starts_with("mysql") {
        "`key`"
    } else {
        "\"key\""
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {key_col} AS k, value AS v FROM {TABLE}"
    )))
    .fetch_all(&pool)
    .await?;
    let mut in_db = BTreeMap::new();
    for r in rows {
        in_db.insert(r.try_get::<String, _>("k")?, r.try_get::<i64, _>("v")?);
    }
    let mut extra = 0;
    for k in 0..KEYS {
        let key = format!("k{k}");
        let want = acked.get(&key).copied().unwrap_or(0);
        let db = in_db.get(&key).copied().unwrap_or(0);
        let early = before.get(&key).copied().unwrap_or(db);
        if db < want || served.get(&key) != Some(&db) || early != db {
            return Err(format!(
                "{key}: {want} acknowledged, the database holds {db}, the cache served {:?} \
                 before the first flush and {:?} after it",
                read_before_flush.then_some(early),
                served.get(&key)
            )
            .into());
        }
        extra += db - want;
    }
    // One writer: at most the one add in flight at the kill may have reached the disk unacked.
    if extra > 1 {
        return Err(format!("{extra} more than acknowledged: something was applied twice").into());
    }
    let total: i64 = in_db.values().sum();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "OK: the database holds {total}: every acknowledged add once ({extra} more: the add in flight at the kill)"
    );
    Ok(())
}
