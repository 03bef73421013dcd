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
//! (`bench_posts.rs`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use sqlx::Row;
use writebehind::{Durability, WriteBehind};

use crate::chart;
use writebehind::redact_url as redact;

use crate::workload::{self, durability_name, parse_dist, DbArgs, Dist, Picker};

#[path = "bench_posts.rs"]
mod posts;

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
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write a chart of throughput against batch size and durability to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
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

/// One contender's figures (a row of the table, an element of the JSON `results`).
#[derive(Clone, Debug, Serialize)]
struct Outcome {
    contender: &'static str,
    durability: Option<String>,
    batch: Option<usize>,
    increments: u64,
    seconds: f64,
    increments_per_sec: f64,
    latency_p50_us: f64,
    latency_p99_us: f64,
    /// What one latency sample times: one increment, or one batch statement.
    latency_of: &'static str,
    sql_rows: u64,
    sql_rows_per_increment: f64,
    flush_rows_per_sec: f64,
    db_total: i64,
    totals_match: bool,
    /// Throughput divided by the write-through baseline's.
    vs_write_through: Option<f64>,
    /// Throughput divided by the raw batched baseline's at the same batch size.
    vs_raw_batched: Option<f64>,
    /// `--shape posts`: the table's likes total (`db_total` is its views total).
    #[serde(skip_serializing_if = "Option::is_none")]
    db_likes: Option<i64>,
    /// `--shape posts`: what the read-back found wrong (rows, counts, titles).
    #[serde(skip_serializing_if = "Option::is_none")]
    mismatch: Option<String>,
}

#[derive(Serialize)]
struct Report {
    database: String,
    backend: &'static str,
    shape: Shape,
    keys: u64,
    dist: String,
    writers: u64,
    flush_interval_ms: u64,
    ops: Option<u64>,
    duration_secs: Option<f64>,
    results: Vec<Outcome>,
    totals_match: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    fn from_url(url: &str) -> Result<Backend, String> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Ok(Backend::Mysql)
        } else {
            Err(format!(
                "database URL {} is not sqlite://, postgres:// or mysql://",
                redact(url)
            ))
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }

    fn placeholder(self, n: usize) -> String {
        match self {
            Backend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }

    /// `SUM(col)` as a BIGINT every backend decodes to i64.
    fn sum(self, col: &str) -> String {
        match self {
            Backend::Postgres => format!("CAST(COALESCE(SUM({col}), 0) AS BIGINT)"),
            Backend::Mysql => format!("CAST(COALESCE(SUM({col}), 0) AS SIGNED)"),
            Backend::Sqlite => format!("COALESCE(SUM({col}), 0)"),
        }
    }

    /// Upsert of `rows` (id, delta) rows into a baseline table.
    fn upsert(self, table: &str, rows: usize) -> String {
        let mut sql = format!("INSERT INTO {table} (id, total, version) VALUES ");
        for i in 0..rows {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "({}, {}, 1)",
                self.placeholder(2 * i + 1),
                self.placeholder(2 * i + 2)
            ));
        }
        match self {
            Backend::Mysql => sql.push_str(
                " ON DUPLICATE KEY UPDATE total = total + VALUES(total), version = version + 1",
            ),
            _ => sql.push_str(&format!(
                " ON CONFLICT (id) DO UPDATE SET total = {table}.total + excluded.total, \
                 version = {table}.version + 1"
            )),
        }
        sql
    }
}

/// A scratch directory removed on drop (WAL directories, the default SQLite file).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p =
            std::env::temp_dir().join(format!("writebehind-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)
            .map_err(|e| format!("cannot create scratch directory {}: {e}", p.display()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Rows per statement in the raw baseline: two parameters per row stays under every
/// backend's parameter limit.
const ROWS_PER_STATEMENT: usize = 5_000;

/// Key generator of one writer: the same seed gives the same sequence in every contender.
struct Keys {
    rng: StdRng,
    picker: Picker,
}

impl Keys {
    fn new(dist: Dist, keys: u64, writer: u64) -> Result<Keys, String> {
        Ok(Keys {
            rng: StdRng::seed_from_u64(0x5EED_0000 + writer),
            picker: Picker::new(keys, dist).map_err(|e| format!("--dist: {e}"))?,
        })
    }

    fn next_key(&mut self) -> u64 {
        self.picker.pick(&mut self.rng)
    }
}

fn key_text(k: u64) -> String {
    format!("k{k}")
}

/// A writer task: its latencies and how many writes it made.
type WriterTask<E> = tokio::task::JoinHandle<Result<(Histogram<u64>, u64), E>>;

/// Waits for every writer task: their latencies merged, each one's count,
/// and the failure if one failed (`what` names its operation).
async fn join_writers<E: std::fmt::Display>(
    tasks: Vec<WriterTask<E>>,
    what: &str,
) -> (Histogram<u64>, Vec<u64>, Option<String>) {
    let mut hist = histogram();
    let mut counts = Vec::new();
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok((h, n))) => {
                // Same bounds, saturating: adding cannot fail.
                let _ = hist.add(&h);
                counts.push(n);
            }
            Ok(Err(e)) => failure = Some(format!("{what} failed: {e}")),
            Err(e) => failure = Some(format!("writer task failed: {e}")),
        }
    }
    (hist, counts, failure)
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 1 h, 3 significant digits: cannot fail for these bounds.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1_000.0
    }
}

/// How long a writer keeps going.
#[derive(Clone, Copy)]
enum Quota {
    Ops(u64),
    Until(Instant),
}

impl Quota {
    fn more(self, done: u64) -> bool {
        match self {
            Quota::Ops(n) => done < n,
            // Checking the clock every 64 increments keeps it off the hot path.
            Quota::Until(t) => done & 63 != 0 || Instant::now() < t,
        }
    }
}

/// A progress bar on a terminal, nothing in a pipe.
struct Progress {
    bar: ProgressBar,
    done: Arc<AtomicU64>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(label: String, total: Option<u64>) -> Progress {
        let bar = if std::io::stderr().is_terminal() {
            match total {
                Some(n) => {
                    let b = ProgressBar::new(n);
                    if let Ok(style) = ProgressStyle::with_template(
                        "{msg:<34} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
                    ) {
                        b.set_style(style.progress_chars("=> "));
                    }
                    b
                }
                None => {
                    let b = ProgressBar::new_spinner();
                    if let Ok(style) = ProgressStyle::with_template("{msg:<34} {spinner} {pos}") {
                        b.set_style(style);
                    }
                    b
                }
            }
        } else {
            ProgressBar::hidden()
        };
        bar.set_message(label);
        let done = Arc::new(AtomicU64::new(0));
        let ticker = {
            let (bar, done) = (bar.clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    bar.set_position(done.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Progress { bar, done, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
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

async fn connect(url: &str, max: u32) -> Result<sqlx::AnyPool, String> {
    sqlx::any::install_default_drivers();
    // One plain connection first: a pool would retry until its timeout and hide the cause.
    let probe = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
    let _ = sqlx::Connection::close(probe).await;
    sqlx::pool::PoolOptions::<sqlx::Any>::new()
        .max_connections(max)
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))
}

/// SQL text for sqlx. The baselines measure raw sqlx on purpose, so they
/// build their own statements: only tables the bench named itself, every
/// value a bind parameter.
fn sql_text(sql: &str) -> sqlx::SqlStr {
    use sqlx::SqlSafeStr;
    sqlx::AssertSqlSafe(sql).into_sql_str()
}

async fn exec(pool: &sqlx::AnyPool, sql: &str) -> Result<(), String> {
    sqlx::query(sql_text(sql))
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("{sql}: {e}"))
}

async fn total(
    pool: &sqlx::AnyPool,
    backend: Backend,
    table: &str,
    col: &str,
) -> Result<i64, String> {
    let sql = format!("SELECT {} AS s FROM {table}", backend.sum(col));
    let row = sqlx::query(sql_text(&sql))
        .fetch_one(pool)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    row.try_get::<i64, _>("s")
        .map_err(|e| format!("{sql}: {e}"))
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

fn report_points(rep: &Report) -> Vec<chart::Series> {
    let mut series: Vec<chart::Series> = Vec::new();
    for r in &rep.results {
        let name = match r.contender {
            "writebehind" | "writebehind flush" => {
                format!("{} {}", r.contender, r.durability.as_deref().unwrap_or(""))
            }
            other => other.to_owned(),
        };
        let Some(batch) = r.batch else {
            continue;
        };
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push((batch as f64, r.increments_per_sec)),
            None => series.push(chart::Series {
                name,
                points: vec![(batch as f64, r.increments_per_sec)],
                dashed: r.contender != "writebehind",
            }),
        }
    }
    if let Some(wt) = rep.results.iter().find(|r| r.contender == "write-through") {
        let batches: Vec<f64> = rep
            .results
            .iter()
            .filter_map(|r| r.batch.map(|b| b as f64))
            .collect();
        let lo = batches.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = batches.iter().copied().fold(0.0, f64::max);
        if lo.is_finite() {
            series.push(chart::Series {
                name: "write-through".into(),
                points: vec![(lo, wt.increments_per_sec), (hi, wt.increments_per_sec)],
                dashed: true,
            });
        }
    }
    series
}

fn print_table(rep: &Report) {
    println!(
        "writebehind bench: {} ({}), {}{} keys {}, {} writers, flush interval {} ms, {}",
        rep.database,
        rep.backend,
        match rep.shape {
            Shape::Counters => "",
            Shape::Posts => "posts table (views, likes), ",
        },
        rep.keys,
        rep.dist,
        rep.writers,
        rep.flush_interval_ms,
        match (rep.ops, rep.duration_secs) {
            (_, Some(d)) => format!("{d} s per run"),
            (Some(n), None) => format!("{n} increments per run"),
            (None, None) => String::new(),
        }
    );
    println!(
        "{:<17} {:<14} {:>7} {:>10} {:>8} {:>12} {:>10} {:>10} {:>9} {:>11} {:>7} {:>7} {:>6}",
        "contender",
        "durability",
        "batch",
        "increments",
        "seconds",
        "incr/s",
        "p50 µs",
        "p99 µs",
        "rows/incr",
        "flush rows/s",
        "vs WT",
        "vs raw",
        "total"
    );
    for r in &rep.results {
        let ratio = |x: Option<f64>| x.map_or_else(|| "-".into(), |v| format!("{v:.2}x"));
        let lat = |v: f64| {
            if r.latency_of == "batch" {
                format!("{v:.0}/b")
            } else {
                format!("{v:.1}")
            }
        };
        println!(
            "{:<17} {:<14} {:>7} {:>10} {:>8.2} {:>12.0} {:>10} {:>10} {:>9.4} {:>11.0} {:>7} {:>7} {:>6}",
            r.contender,
            r.durability.as_deref().unwrap_or("-"),
            r.batch.map_or_else(|| "-".into(), |b| b.to_string()),
            r.increments,
            r.seconds,
            r.increments_per_sec,
            lat(r.latency_p50_us),
            lat(r.latency_p99_us),
            r.sql_rows_per_increment,
            r.flush_rows_per_sec,
            ratio(r.vs_write_through),
            ratio(r.vs_raw_batched),
            if r.totals_match { "ok" } else { "WRONG" }
        );
    }
    println!("latency: per increment; `/b` = per batch statement (raw batched). vs WT / vs raw: throughput ratios.");
    if rep.shape == Shape::Posts {
        println!("increments: writes of (views +1, likes +1 per tenth); total ok: every row's views, likes and title read back as written.");
        println!("writebehind flush: the cache's flush() alone on the raw batches (`/b` per flush); its vs raw is the flush-throughput ratio.");
    }
}

#[allow(clippy::too_many_arguments)]
async fn contenders(
    args: &Args,
    scratch: &Path,
    url: &str,
    backend: Backend,
    pool: &sqlx::AnyPool,
    tag: &str,
    tables: &mut Vec<String>,
) -> Result<Vec<Outcome>, String> {
    let mut out = Vec::new();
    // Per batch size: increments per flush and per writer of its largest writebehind run.
    let mut shares: Vec<(usize, u64, Vec<u64>)> = Vec::new();
    let mut run = 0;
    for &batch in &args.batch {
        for mode in &args.durability {
            run += 1;
            let table = format!("wb_bench_{tag}_wb{run}");
            tables.push(table.clone());
            let dir = scratch.join(format!("wal-{run}"));
            let (o, flushes, per_writer) =
                writebehind_run(args, &dir, url, backend, pool, &table, *mode, batch).await?;
            if let Ok(id) = std::fs::read_to_string(dir.join("instance.id")) {
                // The progress row of this throw-away instance.
                let _ = exec(
                    pool,
                    &format!(
                        "DELETE FROM writebehind_progress WHERE instance = '{}'",
                        id.trim().replace('\'', "")
                    ),
                )
                .await;
            }
            // The raw baseline replays the largest run of each batch size.
            let window = o.increments.div_ceil(flushes.max(1)).max(1);
            match shares.iter_mut().find(|(b, _, _)| *b == batch) {
                Some(s) if s.2.iter().sum::<u64>() >= o.increments => {}
                Some(s) => *s = (batch, window, per_writer),
                None => shares.push((batch, window, per_writer)),
            }
            out.push(o);
        }
    }
    for (batch, window, per_writer) in &shares {
        let table = format!("wb_bench_{tag}_raw{batch}");
        tables.push(table.clone());
        out.push(raw_run(args, backend, pool, &table, *batch, *window, per_writer).await?);
    }
    let table = format!("wb_bench_{tag}_wt");
    tables.push(table.clone());
    out.push(write_through_run(args, backend, pool, &table).await?);
    Ok(out)
}

async fn baseline_table(pool: &sqlx::AnyPool, backend: Backend, table: &str) -> Result<(), String> {
    let id = match backend {
        Backend::Mysql => "VARCHAR(64)",
        _ => "TEXT",
    };
    exec(pool, &format!("DROP TABLE IF EXISTS {table}")).await?;
    exec(
        pool,
        &format!(
            "CREATE TABLE {table} (id {id} PRIMARY KEY, total BIGINT NOT NULL, version BIGINT NOT NULL)"
        ),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn writebehind_run(
    args: &Args,
    dir: &Path,
    url: &str,
    backend: Backend,
    pool: &sqlx::AnyPool,
    table: &str,
    mode: Mode,
    batch: usize,
) -> Result<(Outcome, u64, Vec<u64>), String> {
    exec(pool, &format!("DROP TABLE IF EXISTS {table}")).await?;
    let cache = WriteBehind::<String, i64>::builder(dir)
        .database(url)
        .table(table)
        .create_tables(true)
        .durability(mode.durability)
        .flush_interval(Duration::from_millis(args.flush_interval_ms))
        .flush_dirty_entries(batch)
        .open()
        .await
        .map_err(|e| format!("cannot open the cache in {}: {e}", dir.display()))?;
    let quota_total = args.duration.is_none().then_some(args.ops);
    let progress = Progress::start(format!("writebehind {mode} batch {batch}"), quota_total);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let cache = cache.clone();
        let done = progress.done.clone();
        let mut keys = Keys::new(args.dist, args.keys, w)?;
        let quota = match args.duration {
            Some(d) => Quota::Until(start + Duration::from_secs_f64(d)),
            None => Quota::Ops(args.ops / args.writers + u64::from(w < args.ops % args.writers)),
        };
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut n = 0u64;
            while quota.more(n) {
                let key = key_text(keys.next_key());
                let t0 = Instant::now();
                cache.add(key.as_str(), 1).await?;
                h.saturating_record(t0.elapsed().as_nanos() as u64);
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, writebehind::Error>((h, n))
        }));
    }
    let (hist, per_writer, failure) = join_writers(tasks, "writebehind add").await;
    progress.finish();
    if let Some(f) = failure {
        let _ = cache.close().await;
        return Err(f);
    }
    cache
        .flush()
        .await
        .map_err(|e| format!("writebehind final flush failed: {e}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let stats = cache.stats();
    cache
        .close()
        .await
        .map_err(|e| format!("closing the cache failed: {e}"))?;
    let increments: u64 = per_writer.iter().sum();
    let db_total = total(pool, backend, table, "value").await?;
    let o = Outcome {
        contender: "writebehind",
        durability: Some(mode.to_string()),
        batch: Some(batch),
        increments,
        seconds,
        increments_per_sec: increments as f64 / seconds,
        latency_p50_us: micros(&hist, 0.5),
        latency_p99_us: micros(&hist, 0.99),
        latency_of: "increment",
        sql_rows: stats.rows_flushed,
        sql_rows_per_increment: stats.rows_flushed as f64 / increments.max(1) as f64,
        flush_rows_per_sec: stats.rows_flushed as f64 / seconds,
        db_total,
        totals_match: db_total == increments as i64,
        vs_write_through: None,
        vs_raw_batched: None,
        db_likes: None,
        mismatch: None,
    };
    Ok((o, stats.flushes, per_writer))
}

/// The increments of a writebehind run (same seeds, same counts per writer, interleaved),
/// coalesced like its flusher did: a batch closes after `window` increments (the run's
/// increments per flush). `flush_dirty_entries` only triggers a flush, and a cut takes every
/// dirty key, so a flusher running behind writes fewer, larger batches than `--batch`; a
/// distinct-key cap here would make the baseline write more rows than the cache did.
fn coalesced_batches(
    args: &Args,
    window: u64,
    per_writer: &[u64],
) -> Result<Vec<Vec<(u64, i64)>>, String> {
    let mut gens = per_writer
        .iter()
        .enumerate()
        .map(|(w, n)| Ok((Keys::new(args.dist, args.keys, w as u64)?, *n)))
        .collect::<Result<Vec<_>, String>>()?;
    let mut out = Vec::new();
    let mut cur: HashMap<u64, i64> = HashMap::new();
    let mut in_window = 0u64;
    let mut left: u64 = per_writer.iter().sum();
    while left > 0 {
        for (g, n) in gens.iter_mut() {
            if *n == 0 {
                continue;
            }
            *n -= 1;
            left -= 1;
            let k = g.next_key();
            if in_window == window {
                out.push(cur.drain().collect());
                in_window = 0;
            }
            *cur.entry(k).or_default() += 1;
            in_window += 1;
        }
    }
    if !cur.is_empty() {
        out.push(cur.drain().collect());
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn raw_run(
    args: &Args,
    backend: Backend,
    pool: &sqlx::AnyPool,
    table: &str,
    batch: usize,
    window: u64,
    per_writer: &[u64],
) -> Result<Outcome, String> {
    baseline_table(pool, backend, table).await?;
    let batches = coalesced_batches(args, window, per_writer)?;
    let increments: u64 = per_writer.iter().sum();
    let rows: u64 = batches.iter().map(|b| b.len() as u64).sum();
    let progress = Progress::start(format!("raw batched, batch {batch}"), Some(rows));
    let mut hist = histogram();
    let start = Instant::now();
    for b in &batches {
        let t0 = Instant::now();
        let mut tx = pool
            .begin()
            .await
            .map_err(|e| format!("raw batched: BEGIN: {e}"))?;
        for chunk in b.chunks(ROWS_PER_STATEMENT) {
            let sql = backend.upsert(table, chunk.len());
            let mut q = sqlx::query(sql_text(&sql));
            for (k, d) in chunk {
                q = q.bind(key_text(*k)).bind(*d);
            }
            q.execute(&mut *tx)
                .await
                .map_err(|e| format!("raw batched upsert: {e}"))?;
        }
        tx.commit()
            .await
            .map_err(|e| format!("raw batched: COMMIT: {e}"))?;
        hist.saturating_record(t0.elapsed().as_nanos() as u64);
        progress.done.fetch_add(b.len() as u64, Ordering::Relaxed);
    }
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    let db_total = total(pool, backend, table, "total").await?;
    Ok(Outcome {
        contender: "raw batched",
        durability: None,
        batch: Some(batch),
        increments,
        seconds,
        increments_per_sec: increments as f64 / seconds,
        latency_p50_us: micros(&hist, 0.5),
        latency_p99_us: micros(&hist, 0.99),
        latency_of: "batch",
        sql_rows: rows,
        sql_rows_per_increment: rows as f64 / increments.max(1) as f64,
        flush_rows_per_sec: rows as f64 / seconds,
        db_total,
        totals_match: db_total == increments as i64,
        vs_write_through: None,
        vs_raw_batched: None,
        db_likes: None,
        mismatch: None,
    })
}

async fn write_through_run(
    args: &Args,
    backend: Backend,
    pool: &sqlx::AnyPool,
    table: &str,
) -> Result<Outcome, String> {
    baseline_table(pool, backend, table).await?;
    let sql = sql_text(&backend.upsert(table, 1));
    let progress = Progress::start("write-through".into(), None);
    let start = Instant::now();
    let limit = args
        .duration
        .unwrap_or(f64::INFINITY)
        .min(args.baseline_secs);
    let deadline = start + Duration::from_secs_f64(limit);
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let pool = pool.clone();
        let sql = sql.clone();
        let done = progress.done.clone();
        let mut keys = Keys::new(args.dist, args.keys, w)?;
        let ops = args.ops / args.writers + u64::from(w < args.ops % args.writers);
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut n = 0u64;
            while n < ops && Instant::now() < deadline {
                let key = key_text(keys.next_key());
                let t0 = Instant::now();
                sqlx::query(sql.clone())
                    .bind(key)
                    .bind(1i64)
                    .execute(&pool)
                    .await?;
                h.saturating_record(t0.elapsed().as_nanos() as u64);
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, sqlx::Error>((h, n))
        }));
    }
    let (hist, per_writer, failure) = join_writers(tasks, "write-through upsert").await;
    let increments: u64 = per_writer.iter().sum();
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    if let Some(f) = failure {
        return Err(f);
    }
    let db_total = total(pool, backend, table, "total").await?;
    Ok(Outcome {
        contender: "write-through",
        durability: None,
        batch: None,
        increments,
        seconds,
        increments_per_sec: increments as f64 / seconds,
        latency_p50_us: micros(&hist, 0.5),
        latency_p99_us: micros(&hist, 0.99),
        latency_of: "increment",
        sql_rows: increments,
        sql_rows_per_increment: 1.0,
        flush_rows_per_sec: increments as f64 / seconds,
        db_total,
        totals_match: db_total == increments as i64,
        vs_write_through: None,
        vs_raw_batched: None,
        db_likes: None,
        mismatch: None,
    })
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

    #[test]
    fn batches_hold_every_increment_once() {
        let cli =
            <crate::Cli as clap::Parser>::try_parse_from(["writebehind", "bench", "--keys", "50"])
                .unwrap();
        let crate::Command::Bench(args) = cli.command else {
            panic!("not bench")
        };
        // One window of all 204 increments: one batch, each key once.
        let b = coalesced_batches(&args, 1_000, &[100, 99, 0, 5]).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].iter().map(|(_, d)| d).sum::<i64>(), 204);
        assert!(b[0].iter().all(|(k, _)| *k < 50));
        let mut keys: Vec<u64> = b[0].iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), b[0].len());
        // A window of 10 increments: 21 batches, 20 of exactly 10 and the last of 4.
        let w = coalesced_batches(&args, 10, &[100, 99, 0, 5]).unwrap();
        assert_eq!(w.len(), 21);
        let sums: Vec<i64> = w.iter().map(|x| x.iter().map(|(_, d)| d).sum()).collect();
        assert_eq!(sums[..20], [10; 20]);
        assert_eq!(sums[20], 4);
    }

    #[test]
    fn sql_shapes() {
        assert_eq!(
            Backend::Postgres.upsert("t", 2),
            "INSERT INTO t (id, total, version) VALUES ($1, $2, 1),($3, $4, 1) ON CONFLICT (id) \
             DO UPDATE SET total = t.total + excluded.total, version = t.version + 1"
        );
        assert!(Backend::Mysql
            .upsert("t", 1)
            .ends_with("version = version + 1"));
    }
}
