//! `writebehind bench`: flush throughput against the user's database, with two baselines
//! measured in the same run on the same database:
//!
//! - **writebehind**: counter adds through the cache (WAL + background flusher), then a final
//!   flush; the clock stops when the last increment is in the database.
//! - **write-through**: one single-row upsert statement per increment (sqlx, autocommit).
//! - **raw batched**: the increments of the largest writebehind run of each batch size (same
//!   seeds, same count per writer), coalesced into as many batches as its flusher made (the
//!   run's increments per flush each), one multi-row upsert per batch (sqlx, one transaction
//!   per batch): what the flusher's SQL costs alone. Only the SQL is timed.
//!
//! Every contender writes its own table; at the end each table's total is checked against the
//! increments made (exit 1 if any differs). Tables are dropped afterwards.
//!
//! `--shape posts` runs the same on a table of the user's own shape through a delta record
//! (`posts`).
//!
//! Here: the options and the run as a whole. By job: `harness` (keys, writer tasks,
//! latencies, progress), `sql` (the baselines' SQL per backend), `counters` (the counter
//! table's contenders), `posts` (the posts table's), `report` (the figures, the table, the
//! JSON and the chart).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use sqlx::Row;
use writebehind::{Durability, WriteBehind};

use crate::chart;
use writebehind::redact_url as redact;

use crate::workload::{self, durability_name, parse_dist, DbArgs, Dist};

mod counters;
mod harness;
mod posts;
mod report;
mod sql;

// `posts` takes what the contenders share through `use super::*`: these globs and
// some of the `use` lines above are for it.
use counters::*;
use harness::*;
use report::*;
use sql::*;

/// The table the workload writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// The cache's own counter table: `(id, value, version)`, one counter per row.
    Counters,
    /// The user's `posts(id BIGINT PRIMARY KEY, title, views, likes)`, pre-filled, written
    /// through a derived delta record (views +1 per write, likes +1 per tenth).
    Posts,
}

/// Arguments of `writebehind bench`.
#[derive(clap::Args)]
pub struct Args {
    /// The database (default: an SQLite file in a temporary directory).
    #[command(flatten)]
    db: DbArgs,
    /// The table: `counters` (the cache's own) or `posts` (the user's, through a delta record).
    #[arg(long, value_enum, default_value = "counters")]
    shape: Shape,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Key distribution: `uniform`, or `zipf:S` (exponent S ≥ 0; larger is more skewed).
    #[arg(long, default_value = "zipf:1.1", value_parser = parse_dist)]
    dist: Dist,
    /// Concurrent writer tasks (for writebehind and write-through).
    #[arg(long, default_value_t = 4)]
    writers: u64,
    /// WAL durability, comma-separated to compare several: `fsync`, `buffered:<N>ms`, `none`.
    #[arg(long, default_value = "buffered:10ms", value_delimiter = ',', value_parser = parse_durability)]
    durability: Vec<Mode>,
    /// Flush batch size (`flush_dirty_entries`), comma-separated to compare several.
    #[arg(long, default_value = "10000", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Longest time between flushes, in milliseconds (`flush_interval`).
    #[arg(long, default_value_t = 100)]
    flush_interval_ms: u64,
    /// Increments per writebehind run (and the most for write-through).
    #[arg(long, default_value_t = 200_000)]
    ops: u64,
    /// Seconds per writebehind run, instead of a number of increments.
    #[arg(long)]
    duration: Option<f64>,
    /// Longest the write-through baseline may run, in seconds (it is slow by design).
    #[arg(long, default_value_t = 10.0)]
    baseline_secs: f64,
    /// Read each flushed row's totals back (`read_back`): `on` or `off`
    /// (default: the library's, on for `counters`, off for `posts`).
    #[arg(long, value_parser = parse_on_off)]
    read_back: Option<bool>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write a chart of throughput against batch size and durability to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, not {other:?}")),
    }
}

/// Opens a contender's cache on `table` with the run's durability, flush interval and
/// batch, and `--read-back` when given; every shape opens its cache here.
#[allow(clippy::too_many_arguments)]
async fn open_cache<K: writebehind::CacheKey, V: writebehind::CacheValue>(
    args: &Args,
    dir: &Path,
    url: &str,
    table: &str,
    mode: Mode,
    interval: Duration,
    batch: usize,
) -> Result<WriteBehind<K, V>, String> {
    let builder = WriteBehind::<K, V>::builder(dir)
        .database(url)
        .table(table)
        .create_tables(true)
        .durability(mode.durability)
        .flush_interval(interval)
        .flush_dirty_entries(batch);
    let builder = match args.read_back {
        Some(on) => builder.read_back(on),
        None => builder,
    };
    builder
        .open()
        .await
        .map_err(|e| format!("cannot open the cache in {}: {e}", dir.display()))
}

/// A durability mode, shown as its option text.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    durability: Durability,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&durability_name(self.durability))
    }
}

fn parse_durability(s: &str) -> Result<Mode, String> {
    workload::parse_durability(s).map(|durability| Mode { durability })
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    if args.keys == 0 || args.writers == 0 || args.batch.contains(&0) {
        return Err("--keys, --writers and --batch must be at least 1".into());
    }
    if args.duration.is_some_and(|d| !(d > 0.0 && d.is_finite()))
        || !(args.baseline_secs > 0.0 && args.baseline_secs.is_finite())
    {
        return Err("--duration and --baseline-secs must be positive numbers of seconds".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(bench(args))
}

async fn bench(args: Args) -> Result<ExitCode, String> {
    let scratch = Scratch::new()?;
    let given = args.db.url()?;
    let url = match &given {
        Some(u) => u.clone(),
        None => format!("sqlite://{}?mode=rwc", scratch.0.join("bench.db").display()),
    };
    let backend = Backend::from_url(&url)?;
    let pool = connect(&url, args.writers.min(64) as u32 + 1).await?;
    if backend == Backend::Sqlite {
        // The cache's writer uses WAL journal mode; the baselines get the same.
        exec(&pool, "PRAGMA journal_mode=WAL").await?;
    }
    let tag = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() % 1_000_000)
    );
    let mut tables = Vec::new();
    let result = match args.shape {
        Shape::Counters => {
            contenders(&args, &scratch.0, &url, backend, &pool, &tag, &mut tables).await
        }
        Shape::Posts => {
            posts::contenders(&args, &scratch.0, &url, backend, &pool, &tag, &mut tables).await
        }
    };
    for t in &tables {
        let _ = exec(&pool, &format!("DROP TABLE IF EXISTS {t}")).await;
    }
    pool.close().await;
    let mut results = result?;

    let wt = results
        .iter()
        .find(|r| r.contender == "write-through")
        .map(|r| r.increments_per_sec);
    let raw: HashMap<usize, f64> = results
        .iter()
        .filter(|r| r.contender == "raw batched")
        .filter_map(|r| Some((r.batch?, r.increments_per_sec)))
        .collect();
    for r in &mut results {
        if r.contender != "write-through" {
            r.vs_write_through = wt.filter(|w| *w > 0.0).map(|w| r.increments_per_sec / w);
        }
        if r.contender.starts_with("writebehind") {
            r.vs_raw_batched = r
                .batch
                .and_then(|b| raw.get(&b))
                .filter(|w| **w > 0.0)
                .map(|w| r.increments_per_sec / w);
        }
    }
    let ok = results.iter().all(|r| r.totals_match);
    let report = Report {
        database: if given.is_some() {
            redact(&url)
        } else {
            "sqlite (temporary file)".into()
        },
        backend: backend.name(),
        shape: args.shape,
        keys: args.keys,
        dist: args.dist.to_string(),
        writers: args.writers,
        flush_interval_ms: args.flush_interval_ms,
        ops: args.duration.is_none().then_some(args.ops),
        duration_secs: args.duration,
        results,
        totals_match: ok,
    };
    if let Some(path) = &args.svg {
        let svg = chart::throughput_svg(&report_points(&report));
        std::fs::write(path, svg)
            .map_err(|e| format!("cannot write the chart to {}: {e}", path.display()))?;
    }
    if args.json {
        let s = serde_json::to_string(&report).map_err(|e| format!("cannot encode JSON: {e}"))?;
        println!("{s}");
    } else {
        print_table(&report);
    }
    if !ok {
        for r in report.results.iter().filter(|r| !r.totals_match) {
            if let Some(m) = &r.mismatch {
                eprintln!(
                    "error: {} ({}) made {} writes but its table is wrong: {m}",
                    r.contender,
                    r.durability.as_deref().unwrap_or("-"),
                    r.increments
                );
                continue;
            }
            eprintln!(
                "error: {} ({}) made {} increments but its table holds {}",
                r.contender,
                r.durability.as_deref().unwrap_or("-"),
                r.increments,
                r.db_total
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn options_parse_and_reject() {
        assert!(matches!(parse_dist("uniform"), Ok(Dist::Uniform)));
        assert!(matches!(parse_dist("zipf:1.5"), Ok(Dist::Zipf(s)) if s == 1.5));
        assert!(parse_dist("zipf:-1").is_err());
        assert!(parse_dist("pareto").is_err());
        assert_eq!(
            parse_durability("buffered:10ms").unwrap().to_string(),
            "buffered:10ms"
        );
        assert_eq!(parse_durability("fsync").unwrap().to_string(), "fsync");
        assert!(parse_durability("buffered:0ms").is_err());
        assert!(parse_durability("sometimes").is_err());
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
