//! The cache with its flusher against real databases: SQLite always,
//! PostgreSQL (WB_POSTGRES_URL) and MariaDB/MySQL (WB_MYSQL_URL) when built
//! with their features (`scripts/test` builds all and sets both).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use writebehind::{ConflictPolicy, Durability, Error, WriteBehind};
use writebehind_wal::io::{CrashMode, FaultyIo};

struct Db {
    url: String,
    table: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("db.sqlite").display()
        );
        Db {
            url,
            table: table_name(),
            _dir: Some(dir),
        }
    }

    fn from_env(var: &str) -> Db {
        let url = std::env::var(var).unwrap_or_else(|_| {
            panic!(
                "{var} is not set. Run the tests with scripts/test, or set it, e.g. \
                 {var}=postgres://postgres@127.0.0.1:5432/test or mysql://root@127.0.0.1:3306/test"
            )
        });
        Db {
            url,
            table: table_name(),
            _dir: None,
        }
    }

    async fn pool(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.url).await.unwrap()
    }

    async fn exec(&self, sql: &str) {
        let pool = self.pool().await;
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    /// (value, version) of every row, by key.
    async fn rows(&self) -> std::collections::BTreeMap<String, (i64, i64)> {
        let pool = self.pool().await;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {}, value, version FROM {}",
            key_col(&self.url),
            self.table
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows.into_iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    (r.get::<i64, _>(1), r.get::<i64, _>(2)),
                )
            })
            .collect()
    }

    async fn drop_table(&self) {
        self.exec(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await;
    }
}

fn key_col(url: &str) -> &'static str {
    if url.starts_with("mysql") {
        "`key`"
    } else {
        "\"key\""
    }
}

fn table_name() -> String {
    format!("wb_t{:x}", fastrand::u64(..))
}

fn builder(db: &Db, dir: &std::path::Path) -> writebehind::Builder<String, i64> {
    WriteBehind::<String, i64>::builder(dir)
        .database(db.url.clone())
        .table(db.table.clone())
        .create_tables(true)
        .flush_interval(Duration::from_millis(50))
}

async fn counters_sum_exactly(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(db, dir.path())
        .durability(Durability::Buffered {
            interval: Duration::from_millis(5),
        })
        .open()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..2_000u64 {
                cache
                    .add(format!("k{}", (i * 13 + t) % 100).as_str(), 1)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    cache.flush().await.unwrap();
    let rows = db.rows().await;
    assert_eq!(rows.len(), 100);
    assert_eq!(rows.values().map(|(v, _)| v).sum::<i64>(), 16_000);
    let stats = cache.stats();
    assert!(stats.flushes >= 1);
    assert!(
        stats.rows_flushed >= 100 && stats.rows_flushed < 16_000,
        "{stats:?}"
    );
    assert_eq!(stats.dirty_entries, 0);
    // Reads after the flush still see the totals (clean copies or read-through).
    assert_eq!(cache.get("k0").await.unwrap(), Some(rows["k0"].0));
    cache.close().await.unwrap();
    assert_eq!(
        db.rows().await.values().map(|(v, _)| v).sum::<i64>(),
        16_000
    );
    db.drop_table().await;
}

async fn reads_go_through_and_add_to_the_database_value(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(db, dir.path()).open().await.unwrap();
    db.exec(&format!(
        "INSERT INTO {} ({}, value, version) VALUES ('ext', 10, 3)",
        db.table,
        key_col(&db.url)
    ))
    .await;
    assert_eq!(cache.get("ext").await.unwrap(), Some(10));
    assert_eq!(cache.get("missing").await.unwrap(), None);
    cache.add("ext", 5).await.unwrap();
    assert_eq!(cache.get("ext").await.unwrap(), Some(15));
    cache.flush().await.unwrap();
    assert_eq!(db.rows().await["ext"], (15, 4));
    // A counter never read: its pending delta sits on the database's value.
    db.exec(&format!(
        "INSERT INTO {} ({}, value, version) VALUES ('blind', 100, 1)",
        db.table,
        key_col(&db.url)
    ))
    .await;
    let dir2 = tempfile::tempdir().unwrap();
    let cache2 = builder(db, dir2.path()).open().await.unwrap();
    cache2.add("blind", 1).await.unwrap();
    assert_eq!(cache2.get("blind").await.unwrap(), Some(101));
    cache2.close().await.unwrap();
    cache.close().await.unwrap();
    assert_eq!(db.rows().await["blind"], (101, 2));
    db.drop_table().await;
}

async fn conflicting_put_is_reported_and_keeps_the_database_row(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let hook = seen.clone();
    let cache = builder(db, dir.path())
        .conflict_policy(ConflictPolicy::KeepDatabase)
        .on_conflict(move |_| {
            hook.fetch_add(1, Ordering::Relaxed);
        })
        .open()
        .await
        .unwrap();
    cache.put("p", &1).await.unwrap();
    cache.flush().await.unwrap();
    assert_eq!(db.rows().await["p"], (1, 1));
    // Someone else changes the row behind the cache's back.
    db.exec(&format!(
        "UPDATE {} SET value = 50, version = 2 WHERE {} = 'p'",
        db.table,
        key_col(&db.url)
    ))
    .await;
    cache.put("p", &7).await.unwrap();
    cache.flush().await.unwrap();
    assert_eq!(db.rows().await["p"], (50, 2));
    assert_eq!(seen.load(Ordering::Relaxed), 1);
    assert_eq!(cache.stats().conflicts, 1);
    // The cache now serves the database's row.
    assert_eq!(cache.get("p").await.unwrap(), Some(50));
    cache.close().await.unwrap();
    db.drop_table().await;
}

/// The crash the progress row exists for: the flush committed in SQL, but
/// its end never reached the WAL. Reopening must not apply it again.
async fn crash_between_commit_and_wal_cut_applies_nothing_twice(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyIo::with_seed(7);
    let open = || {
        builder(db, dir.path())
            .io(Arc::new(fs.clone()))
            .flush_interval(Duration::from_secs(3600))
            .open()
    };
    let cache = open().await.unwrap();
    for i in 0..300u64 {
        cache.add(format!("k{}", i % 30).as_str(), 1).await.unwrap();
    }
    cache.flush().await.unwrap();
    assert_eq!(db.rows().await.values().map(|(v, _)| v).sum::<i64>(), 300);
    // The end-of-flush marker is appended without an fsync: lose it.
    fs.crash(CrashMode::LoseUnsynced);
    drop(cache);

    let cache = open().await.unwrap();
    assert!(cache.recovery().in_flight.is_some());
    cache.add("k0", 1).await.unwrap();
    cache.flush().await.unwrap();
    cache.close().await.unwrap();
    let rows = db.rows().await;
    assert_eq!(rows.values().map(|(v, _)| v).sum::<i64>(), 301);
    assert_eq!(rows["k0"].0, 11);
    db.drop_table().await;
}

/// Regression: right after reopening, a counter whose last flush committed
/// but whose end marker was lost was read as database value + that flush's
/// delta + pending, counting the flush twice.
async fn reads_after_a_crash_do_not_count_an_unconfirmed_flush_twice(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyIo::with_seed(11);
    let open = || {
        builder(db, dir.path())
            .io(Arc::new(fs.clone()))
            .flush_interval(Duration::from_secs(3600))
            .open()
    };
    let cache = open().await.unwrap();
    for i in 0..300u64 {
        cache.add(format!("k{}", i % 30).as_str(), 1).await.unwrap();
    }
    cache.flush().await.unwrap();
    fs.crash(CrashMode::LoseUnsynced);
    drop(cache);

    let cache = open().await.unwrap();
    assert!(cache.recovery().in_flight.is_some());
    cache.add("k0", 1).await.unwrap();
    // Before any flush of this run: the database has 10, one add is pending.
    assert_eq!(cache.get("k0").await.unwrap(), Some(11));
    assert_eq!(cache.get("k1").await.unwrap(), Some(10));
    assert_eq!(
        cache.update("k2", |v| v.map(|n| n * 2)).await.unwrap(),
        Some(20)
    );
    cache.close().await.unwrap();
    let rows = db.rows().await;
    assert_eq!(rows["k0"].0, 11);
    assert_eq!(rows["k1"].0, 10);
    assert_eq!(rows["k2"].0, 20);
    db.drop_table().await;
}

/// With the database flushing, checkpoints after flushes let whole segments
/// go: the WAL follows the dirty keys even below the compaction threshold.
async fn flushed_segments_are_dropped_after_flushes(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(db, dir.path())
        .durability(Durability::None)
        .segment_size(64 << 10)
        .checkpoint_bytes(1 << 30)
        .flush_interval(Duration::from_millis(20))
        .open()
        .await
        .unwrap();
    for i in 0..60_000u64 {
        cache
            .add(format!("k{}", i % 100).as_str(), 1)
            .await
            .unwrap();
    }
    cache.flush().await.unwrap();
    // The checkpoint thread runs right after the flush's wake-up (or within 200 ms).
    let mut wal = u64::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        wal = cache.stats().wal_bytes;
        if wal < 512 << 10 {
            break;
        }
    }
    // 60 000 records take ~2.4 MB of WAL; after the checkpoints a few segments remain.
    assert!(wal < 512 << 10, "WAL still holds {wal} bytes");
    assert!(cache.stats().checkpoints >= 1);
    cache.close().await.unwrap();
    assert_eq!(
        db.rows().await.values().map(|(v, _)| v).sum::<i64>(),
        60_000
    );
    db.drop_table().await;
}

async fn backpressure_wait_is_relieved_by_the_flusher(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(db, dir.path())
        .max_dirty_entries(20)
        .backpressure(writebehind::Backpressure::Wait(Duration::from_secs(20)))
        .durability(Durability::None)
        .open()
        .await
        .unwrap();
    for i in 0..500u64 {
        cache.add(format!("k{i}").as_str(), 1).await.unwrap();
    }
    let stats = cache.stats();
    assert!(stats.backpressure_waits > 0, "{stats:?}");
    assert_eq!(stats.backpressure_rejections, 0);
    cache.close().await.unwrap();
    assert_eq!(db.rows().await.len(), 500);
    db.drop_table().await;
}

async fn close_reports_an_unreachable_database_and_keeps_the_wal(db: &Db) {
    // Create the table once, then run a cache that may not recreate it.
    builder(db, tempfile::tempdir().unwrap().path())
        .open()
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(db, dir.path())
        .create_tables(false)
        .close_timeout(Duration::from_millis(500))
        .flush_interval(Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    cache.add("x", 3).await.unwrap();
    db.drop_table().await; // the flush now fails on every attempt
    let err = cache.close().await.unwrap_err();
    assert!(matches!(err, Error::Close(_)), "{err:?}");
    // Reopen (which recreates the table): the add is still there and lands once.
    let cache = builder(db, dir.path()).open().await.unwrap();
    assert_eq!(cache.recovery().dirty_entries, 1);
    cache.close().await.unwrap();
    assert_eq!(db.rows().await["x"], (3, 1));
    db.drop_table().await;
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Db::sqlite()).await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Db::from_env("WB_POSTGRES_URL")).await;
                }
            )*
        }
        #[cfg(feature = "mysql")]
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Db::from_env("WB_MYSQL_URL")).await;
                }
            )*
        }
    };
}

suite!(
    counters_sum_exactly,
    reads_go_through_and_add_to_the_database_value,
    conflicting_put_is_reported_and_keeps_the_database_row,
    crash_between_commit_and_wal_cut_applies_nothing_twice,
    reads_after_a_crash_do_not_count_an_unconfirmed_flush_twice,
    flushed_segments_are_dropped_after_flushes,
    backpressure_wait_is_relieved_by_the_flusher,
    close_reports_an_unreachable_database_and_keeps_the_wal,
);

/// A cache opens and takes writes while its database is down; the writes
/// reach the database after a reopen once it is back.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_and_accepts_writes_while_the_database_is_down() {
    let db = Db::from_env("WB_POSTGRES_URL");
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let down = Db {
        url: "postgres://postgres@127.0.0.1:1/test".into(),
        table: db.table.clone(),
        _dir: None,
    };
    let cache = builder(&down, dir.path())
        .close_timeout(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    cache.add("k", 2).await.unwrap();
    cache.add("k", 3).await.unwrap();
    assert_eq!(cache.stats().dirty_entries, 1);
    let err = cache.close().await.unwrap_err();
    assert!(matches!(err, Error::Close(_)), "{err:?}");

    let cache = builder(&db, dir.path()).open().await.unwrap();
    cache.flush().await.unwrap();
    cache.close().await.unwrap();
    assert_eq!(db.rows().await["k"], (5, 1));
    db.drop_table().await;
}
