//! `Writer::flush` of N counter rows against the raw batched upsert of the
//! same rows by sqlx, in the same run. SQLite always; PostgreSQL when
//! `WB_POSTGRES_URL` is set and MySQL when `WB_MYSQL_URL` is set (with the
//! matching cargo feature). After the criterion groups, an interleaved A/B
//! run prints the throughput ratio (target: writer >= 85 % of raw).
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
    Change, Cut, Expected, FlushItem, Ident, TableSpec, Writer, WriterConfig,
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
    println!("\ninterleaved medians over {rounds} rounds, rows/s (target: writer >= 85% of raw):");
    println!("| backend | rows/flush | raw sqlx upsert | writer (read-back) | vs raw | writer (no read-back) | vs raw |");
    println!("|---|---|---|---|---|---|---|");
    for line in summary {
        println!("{line}");
    }
}
