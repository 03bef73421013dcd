//! `Writer::flush` of N counter rows against the raw batched upsert of the
//! same rows by sqlx, in the same run. SQLite always; PostgreSQL when
//! `WB_POSTGRES_URL` is set and MySQL when `WB_MYSQL_URL` is set (with the
//! matching cargo feature). After the criterion groups, an interleaved A/B
//! run prints the throughput ratio (target: writer >= 85 % of raw).
//!
//! Then a mapped delta record (issue 22): `posts(id BIGINT PRIMARY KEY,
//! title TEXT, views, likes)`, existing rows, two counters per row, flushed
//! by the writer (`Change::AddCols`) against the raw batched `UPDATE posts
//! SET views = views + Δ, likes = likes + Δ` of the same rows on the same
//! table (SQLite: `UPDATE .. FROM (VALUES ..)`, PostgreSQL: `UPDATE .. FROM
//! UNNEST(..)`), interleaved (target: writer >= 90 % of raw).
//!
//! `WB_BENCH_ROWS` (default 10 000) sets N; `WB_BENCH_ROUNDS` (default 15)
//! the interleaved rounds.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tokio::runtime::Runtime;
use writebehind_writer::{
    Change, Column, Cut, Expected, FlushItem, Ident, KeyCodec, RowCodec, SqlType, SqlValue,
    TableSpec, WriteMode, Writer, WriterConfig,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The raw baseline: one transaction, chunked multi-row upserts, no RETURNING.
enum Raw {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Pg(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    My(sqlx::MySqlPool),
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        match url.split(':').next().unwrap_or_default() {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                // The same options the writer uses.
                let o = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(url)
                    .unwrap()
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
                Raw::Sqlite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(4)
                        .connect_with(o)
                        .await
                        .unwrap(),
                )
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Raw::Pg(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .connect(url)
                    .await
                    .unwrap(),
            ),
            #[cfg(feature = "mysql")]
            "mysql" => Raw::My(
                sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(4)
                    .connect(url)
                    .await
                    .unwrap(),
            ),
            other => panic!("no raw baseline for {other}"),
        }
    }

    async fn upsert(&self, table: &str, keys: &[String], deltas: &[i64]) {
        match self {
            #[cfg(feature = "sqlite")]
            Raw::Sqlite(pool) => {
                let mut tx = pool.begin().await.unwrap();
                for (ks, ds) in keys.chunks(5_000).zip(deltas.chunks(5_000)) {
                    let values = vec!["(?, ?, 1)"; ks.len()].join(", ");
                    let sql = format!(
                        "INSERT INTO \"{table}\" (\"key\", \"value\", \"version\") VALUES {values} ON CONFLICT (\"key\") \
                         DO UPDATE SET \"value\" = \"{table}\".\"value\" + excluded.\"value\", \"version\" = \"{table}\".\"version\" + 1"
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                    for (k, d) in ks.iter().zip(ds) {
                        q = q.bind(k).bind(d);
                    }
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
            #[cfg(feature = "postgres")]
            Raw::Pg(pool) => {
                let mut tx = pool.begin().await.unwrap();
                let sql = format!(
                    "INSERT INTO \"{table}\" (\"key\", \"value\", \"version\") SELECT k, d, 1 FROM UNNEST($1::text[], $2::int8[]) AS u(k, d) \
                     ON CONFLICT (\"key\") DO UPDATE SET \"value\" = \"{table}\".\"value\" + EXCLUDED.\"value\", \"version\" = \"{table}\".\"version\" + 1"
                );
                for (ks, ds) in keys.chunks(5_000).zip(deltas.chunks(5_000)) {
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(ks)
                        .bind(ds)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            #[cfg(feature = "mysql")]
            Raw::My(pool) => {
                let mut tx = pool.begin().await.unwrap();
                for (ks, ds) in keys.chunks(2_000).zip(deltas.chunks(2_000)) {
                    let values = vec!["(?, ?, 1)"; ks.len()].join(", ");
                    let sql = format!(
                        "INSERT INTO `{table}` (`key`, `value`, `version`) VALUES {values} \
                         ON DUPLICATE KEY UPDATE `value` = `value` + VALUES(`value`), `version` = `version` + 1"
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                    for (k, d) in ks.iter().zip(ds) {
                        q = q.bind(k).bind(d);
                    }
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
    }
}

struct Target {
    name: &'static str,
    writer: Writer,
    lean: Writer,
    raw: Raw,
    raw_table: String,
    keys: Vec<String>,
    deltas: Vec<i64>,
    position: AtomicU64,
    cleanup: Vec<String>,
}

impl Target {
    /// `urls`: where the read-back writer, the lean writer and the raw
    /// baseline write (one SQLite file each, so no one pays another's WAL checkpoints).
    async fn new(name: &'static str, urls: [&str; 3], rows: usize) -> Target {
        let tag = format!("{:08x}", fastrand::u32(..));
        let t = |s: &str| format!("wbbench_{tag}_{s}");
        let cfg = |table: &str, inst: &str| {
            WriterConfig::new(format!("bench-{tag}-{inst}"))
                .table(TableSpec::counter(table).unwrap())
                .progress_table(Ident::new(&t("progress")).unwrap())
                .conflicts_table(Ident::new(&t("conflicts")).unwrap())
                .dead_letter_table(Ident::new(&t("dead")).unwrap())
        };
        let writer = Writer::connect(urls[0], cfg(&t("writer"), "w"))
            .await
            .unwrap();
        writer.create_tables().await.unwrap();
        let lean = Writer::connect(urls[1], cfg(&t("lean"), "l").report_values(false))
            .await
            .unwrap();
        lean.create_tables().await.unwrap();
        // Same DDL for the raw table.
        let raw_setup = Writer::connect(urls[2], cfg(&t("raw"), "r")).await.unwrap();
        raw_setup.create_tables().await.unwrap();
        raw_setup.close().await;
        Target {
            name,
            writer,
            lean,
            raw: Raw::connect(urls[2]).await,
            raw_table: t("raw"),
            keys: (0..rows).map(|i| format!("key:{i:08}")).collect(),
            deltas: (0..rows).map(|i| (i % 13) as i64 + 1).collect(),
            position: AtomicU64::new(0),
            cleanup: ["writer", "lean", "raw", "progress", "conflicts", "dead"]
                .iter()
                .map(|s| t(s))
                .collect(),
        }
    }

    fn cut(&self) -> Cut {
        let position = self.position.fetch_add(1, Ordering::Relaxed) + 1;
        let items = self
            .keys
            .iter()
            .zip(&self.deltas)
            .map(|(k, d)| FlushItem {
                key: Arc::from(k.as_str()),
                change: Change::Add(*d),
                expected: Expected::Any,
            })
            .collect();
        Cut { position, items }
    }

    async fn flush_writer(&self, lean: bool) -> Duration {
        let cut = self.cut();
        let w = if lean { &self.lean } else { &self.writer };
        let start = Instant::now();
        let r = w.flush(&cut).await.unwrap();
        let e = start.elapsed();
        assert_eq!(r.rows, self.keys.len() as u64);
        e
    }

    async fn flush_raw(&self) -> Duration {
        let start = Instant::now();
        self.raw
            .upsert(&self.raw_table, &self.keys, &self.deltas)
            .await;
        start.elapsed()
    }

    async fn drop_tables(&self) {
        for t in &self.cleanup {
            let q = if self.writer.backend() == writebehind_writer::Backend::MySql {
                '`'
            } else {
                '"'
            };
            self.writer
                .execute_sql(&format!("DROP TABLE IF EXISTS {q}{t}{q}"))
                .await
                .unwrap();
        }
        self.writer.close().await;
        self.lean.close().await;
    }
}

/// `id BIGINT` key; key text is the integer.
struct IdKey(Vec<Column>);

impl KeyCodec for IdKey {
    fn columns(&self) -> &[Column] {
        &self.0
    }
    fn to_sql(&self, key: &str) -> Result<Vec<SqlValue>, String> {
        key.parse()
            .map(|n| vec![SqlValue::Int(n)])
            .map_err(|_| "not an integer".to_owned())
    }
    fn from_sql(&self, row: Vec<SqlValue>) -> Result<String, String> {
        match &row[..] {
            [SqlValue::Int(n)] => Ok(n.to_string()),
            _ => Err("not an integer".to_owned()),
        }
    }
}

/// `views`, `likes`: a delta record (never encoded as bytes).
struct PostCounters(Vec<Column>);

impl RowCodec for PostCounters {
    fn columns(&self) -> &[Column] {
        &self.0
    }
    fn to_row(&self, _: &[u8]) -> Result<Vec<SqlValue>, String> {
        Err("a delta record".into())
    }
    fn from_row(&self, _: Vec<SqlValue>) -> Result<Vec<u8>, String> {
        Err("a delta record".into())
    }
}

/// The mapped delta-record target: one `posts` table, the writer (three
/// ways) and the raw batched UPDATE all on it.
struct Delta {
    name: &'static str,
    writers: Vec<(&'static str, Writer)>,
    raw: Raw,
    table: String,
    ids: Vec<i64>,
    position: AtomicU64,
    cleanup: Vec<String>,
}

impl Delta {
    async fn new(name: &'static str, url: &str, rows: usize) -> Delta {
        let tag = format!("{:08x}", fastrand::u32(..));
        let t = |s: &str| format!("wbbench_{tag}_{s}");
        let table = t("posts");
        let setup = Writer::connect(url, WriterConfig::new("setup"))
            .await
            .unwrap();
        setup
            .execute_sql(&format!(
                "CREATE TABLE \"{table}\" (id BIGINT PRIMARY KEY, title TEXT, \
                 views BIGINT NOT NULL DEFAULT 0, likes BIGINT NOT NULL DEFAULT 0)"
            ))
            .await
            .unwrap();
        for lo in (0..rows).step_by(1_000) {
            let values: Vec<String> = (lo..(lo + 1_000).min(rows))
                .map(|i| format!("({i}, 'post {i}')"))
                .collect();
            setup
                .execute_sql(&format!(
                    "INSERT INTO \"{table}\" (id, title) VALUES {}",
                    values.join(", ")
                ))
                .await
                .unwrap();
        }
        setup.close().await;
        let spec = |mode| {
            TableSpec::record(
                &table,
                Arc::new(PostCounters(vec![
                    Column::counter("views").unwrap(),
                    Column::counter("likes").unwrap(),
                ])),
            )
            .unwrap()
            .key(Arc::new(IdKey(vec![Column::new(
                "id",
                SqlType::BigInt,
                false,
            )
            .unwrap()])))
            .version_column(None)
            .unwrap()
            .mode(mode)
        };
        let mut writers = Vec::new();
        for (label, mode, report) in [
            ("upsert", WriteMode::Upsert, true),
            ("upsert, no read-back", WriteMode::Upsert, false),
            ("update-only", WriteMode::UpdateOnly, true),
        ] {
            let cfg = WriterConfig::new(format!("bench-{tag}-{}", writers.len()))
                .table(spec(mode))
                .report_values(report)
                .bookkeeping_prefix(&format!("wbbench_{tag}_"))
                .unwrap();
            let w = Writer::connect(url, cfg).await.unwrap();
            w.check_schema().await.unwrap();
            w.create_tables().await.unwrap();
            writers.push((label, w));
        }
        Delta {
            name,
            writers,
            raw: Raw::connect(url).await,
            table,
            ids: (0..rows as i64).collect(),
            position: AtomicU64::new(0),
            cleanup: ["posts", "progress", "conflicts", "dead_letters"]
                .iter()
                .map(|s| t(s))
                .collect(),
        }
    }

    async fn flush_writer(&self, which: usize) -> Duration {
        let position = self.position.fetch_add(1, Ordering::Relaxed) + 1;
        let items = self
            .ids
            .iter()
            .map(|id| FlushItem {
                key: Arc::from(id.to_string().as_str()),
                change: Change::AddCols(Arc::from(&[1, id % 3][..])),
                expected: Expected::Any,
            })
            .collect();
        let cut = Cut { position, items };
        let start = Instant::now();
        let r = self.writers[which].1.flush(&cut).await.unwrap();
        let e = start.elapsed();
        assert_eq!(r.rows, self.ids.len() as u64);
        assert!(r.dead_letters.is_empty());
        e
    }

    async fn flush_raw(&self) -> Duration {
        let start = Instant::now();
        self.raw.update_counters(&self.table, &self.ids).await;
        start.elapsed()
    }

    async fn drop_tables(&self) {
        let w = &self.writers[0].1;
        for t in &self.cleanup {
            w.execute_sql(&format!("DROP TABLE IF EXISTS \"{t}\""))
                .await
                .unwrap();
        }
        for (_, w) in &self.writers {
            w.close().await;
        }
    }
}

impl Raw {
    /// The raw batched `UPDATE posts SET views = views + Δv, likes = likes
    /// + Δl` of `ids` (Δv = 1, Δl = id % 3), in one transaction.
    async fn update_counters(&self, table: &str, ids: &[i64]) {
        match self {
            #[cfg(feature = "sqlite")]
            Raw::Sqlite(pool) => {
                let mut tx = pool.begin().await.unwrap();
                for ks in ids.chunks(5_000) {
                    let values = vec!["(?, ?, ?)"; ks.len()].join(", ");
                    let sql = format!(
                        "WITH src(id, dv, dl) AS (VALUES {values}) UPDATE \"{table}\" \
                         SET views = \"{table}\".views + src.dv, likes = \"{table}\".likes + src.dl \
                         FROM src WHERE \"{table}\".id = src.id"
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                    for k in ks {
                        q = q.bind(k).bind(1i64).bind(k % 3);
                    }
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
            #[cfg(feature = "postgres")]
            Raw::Pg(pool) => {
                let mut tx = pool.begin().await.unwrap();
                let sql = format!(
                    "UPDATE \"{table}\" SET views = \"{table}\".views + u.dv, likes = \"{table}\".likes + u.dl \
                     FROM UNNEST($1::int8[], $2::int8[], $3::int8[]) AS u(id, dv, dl) WHERE \"{table}\".id = u.id"
                );
                for ks in ids.chunks(5_000) {
                    let dv = vec![1i64; ks.len()];
                    let dl: Vec<i64> = ks.iter().map(|k| k % 3).collect();
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(ks)
                        .bind(dv)
                        .bind(dl)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            #[allow(unreachable_patterns)]
            _ => panic!("no raw delta baseline for this backend"),
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rows = env_usize("WB_BENCH_ROWS", 10_000);
    let rounds = env_usize("WB_BENCH_ROUNDS", 15).max(1);
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _ = &dir;
    let mut urls: Vec<(&'static str, String)> = Vec::new();
    #[cfg(feature = "sqlite")]
    urls.push((
        "sqlite",
        format!("sqlite://{}", dir.path().join("bench.db").display()),
    ));
    #[cfg(feature = "postgres")]
    if let Ok(u) = std::env::var("WB_POSTGRES_URL") {
        urls.push(("postgres", u));
    }
    #[cfg(feature = "mysql")]
    if let Ok(u) = std::env::var("WB_MYSQL_URL") {
        urls.push(("mysql", u));
    }
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let mut summary = Vec::new();
    for (name, url) in urls {
        let urls: Vec<String> = if name == "sqlite" {
            (0..3)
                .map(|i| url.replace("bench.db", &format!("bench{i}.db")))
                .collect()
        } else {
            vec![url.clone(); 3]
        };
        let target = rt.block_on(Target::new(name, [&urls[0], &urls[1], &urls[2]], rows));
        let mut g = c.benchmark_group(format!("flush_{rows}_counters/{name}"));
        g.throughput(criterion::Throughput::Elements(rows as u64));
        g.bench_function("raw_sqlx_upsert", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        t += target.flush_raw().await;
                    }
                    t
                })
            })
        });
        for (label, lean) in [("writer_flush", false), ("writer_flush_no_read_back", true)] {
            g.bench_function(label, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut t = Duration::ZERO;
                        for _ in 0..iters {
                            t += target.flush_writer(lean).await;
                        }
                        t
                    })
                })
            });
        }
        g.finish();
        // Interleaved A/B: the machine is shared and noisy; medians of alternating runs.
        let (mut raw, mut wr, mut lean) = (Vec::new(), Vec::new(), Vec::new());
        rt.block_on(async {
            // Rotate who goes first: SQLite WAL checkpoints and autovacuum hit whoever runs then.
            for round in 0..rounds {
                for step in 0..3 {
                    match (round + step) % 3 {
                        0 => raw.push(target.flush_raw().await),
                        1 => wr.push(target.flush_writer(false).await),
                        _ => lean.push(target.flush_writer(true).await),
                    }
                }
            }
        });
        let (r, w, l) = (median(raw), median(wr), median(lean));
        let rps = |d: Duration| rows as f64 / d.as_secs_f64();
        let pct = |d: Duration| 100.0 * r.as_secs_f64() / d.as_secs_f64();
        summary.push(format!(
            "| {} | {rows} | {:.0} ({:.2} ms) | {:.0} ({:.2} ms) | {:.1}% | {:.0} ({:.2} ms) | {:.1}% |",
            target.name,
            rps(r),
            r.as_secs_f64() * 1e3,
            rps(w),
            w.as_secs_f64() * 1e3,
            pct(w),
            rps(l),
            l.as_secs_f64() * 1e3,
            pct(l),
        ));
        rt.block_on(target.drop_tables());
    }
    c.final_summary();
    let mut delta_summary = Vec::new();
    let mut delta_urls: Vec<(&'static str, String)> = Vec::new();
    #[cfg(feature = "sqlite")]
    delta_urls.push((
        "sqlite",
        format!("sqlite://{}", dir.path().join("delta.db").display()),
    ));
    #[cfg(feature = "postgres")]
    if let Ok(u) = std::env::var("WB_POSTGRES_URL") {
        delta_urls.push(("postgres", u));
    }
    for (name, url) in delta_urls {
        let target = rt.block_on(Delta::new(name, &url, rows));
        let n = target.writers.len() + 1;
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); n];
        rt.block_on(async {
            // Warm up each once, then rotate who goes first.
            let _ = target.flush_raw().await;
            for w in 0..n - 1 {
                let _ = target.flush_writer(w).await;
            }
            for round in 0..rounds {
                for step in 0..n {
                    let who = (round + step) % n;
                    let d = if who == 0 {
                        target.flush_raw().await
                    } else {
                        target.flush_writer(who - 1).await
                    };
                    times[who].push(d);
                }
            }
        });
        let medians: Vec<Duration> = times.into_iter().map(median).collect();
        let raw = medians[0];
        let rps = |d: Duration| rows as f64 / d.as_secs_f64();
        let mut line = format!(
            "| {} | {rows} | {:.0} ({:.2} ms) |",
            target.name,
            rps(raw),
            raw.as_secs_f64() * 1e3
        );
        for d in &medians[1..] {
            line.push_str(&format!(
                " {:.0} ({:.2} ms), {:.1}% |",
                rps(*d),
                d.as_secs_f64() * 1e3,
                100.0 * raw.as_secs_f64() / d.as_secs_f64()
            ));
        }
        delta_summary.push(line);
        rt.block_on(target.drop_tables());
    }
    println!("\nmapped delta record (two counters per row, existing rows), interleaved medians over {rounds} rounds, rows/s and % of raw (target: >= 90%):");
    println!("| backend | rows/flush | raw batched UPDATE | writer upsert | writer upsert, no read-back | writer update-only |");
    println!("|---|---|---|---|---|---|");
    for line in delta_summary {
        println!("{line}");
    }
    println!("\ninterleaved medians over {rounds} rounds, rows/s (target: writer >= 85% of raw):");
    println!("| backend | rows/flush | raw sqlx upsert | writer (read-back) | vs raw | writer (no read-back) | vs raw |");
    println!("|---|---|---|---|---|---|---|");
    for line in summary {
        println!("{line}");
    }
}
