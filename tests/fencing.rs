//! One owner per instance id (invariant 9, database side): two caches with
//! different WAL directories and the same explicit `instance_id` on one
//! database. The second's open claims the next owner epoch and fences the
//! first: its next flush fails with `Error::Fenced` at once, its later
//! writes are refused before the WAL, and the database holds exactly what
//! each flushed — nothing doubled, nothing skipped. SQLite always;
//! PostgreSQL (WB_POSTGRES_URL) and MariaDB/MySQL (WB_MYSQL_URL) with their
//! features.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::Row;
use writebehind::{Error, WriteBehind};

#[path = "../writer/tests/common/proxy.rs"]
mod proxy;

struct Db {
    url: String,
    table: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    #[allow(dead_code)]
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("db.sqlite").display()
        );
        Db {
            url,
            table: format!("wb_fence{:x}", fastrand::u64(..)),
            _dir: Some(dir),
        }
    }

    #[allow(dead_code)]
    fn from_env(var: &str, example: &str) -> Db {
        let url = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set. Run the tests with scripts/test, or set it, e.g. {var}={example}")
        });
        Db {
            url,
            table: format!("wb_fence{:x}", fastrand::u64(..)),
            _dir: None,
        }
    }

    async fn query(&self, q: &str) -> Vec<sqlx::any::AnyRow> {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&self.url).await.unwrap();
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows
    }

    fn q(&self, name: &str) -> String {
        if self.url.starts_with("mysql") {
            format!("`{name}`")
        } else {
            format!("\"{name}\"")
        }
    }

    /// `key -> (value, version)` of the counter table.
    async fn rows(&self) -> BTreeMap<String, (i64, i64)> {
        let q = format!(
            "SELECT {}, {}, {} FROM {}",
            self.q("key"),
            self.q("value"),
            self.q("version"),
            self.table
        );
        self.query(&q)
            .await
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    (r.get::<i64, _>(1), r.get::<i64, _>(2)),
                )
            })
            .collect()
    }

    /// `(position, owner_epoch)` of `instance`'s progress row.
    async fn progress(&self, instance: &str) -> (Option<i64>, i64) {
        let q = format!(
            "SELECT {}, {} FROM {} WHERE {} = '{instance}'",
            self.q("position"),
            self.q("owner_epoch"),
            self.q("writebehind_progress"),
            self.q("instance")
        );
        let rows = self.query(&q).await;
        let r = rows.first().expect("a progress row");
        (r.get::<Option<i64>, _>(0), r.get::<i64, _>(1))
    }

    async fn cleanup(&self) {
        self.query(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await;
    }
}

fn instance_id() -> String {
    format!("fence-{:x}", fastrand::u64(..))
}

/// A counter cache on `db` with `id`, flushed only when asked.
fn builder(db: &Db, dir: &std::path::Path, id: &str) -> writebehind::Builder<String, i64> {
    WriteBehind::<String, i64>::builder(dir)
        .database(db.url.clone())
        .table(db.table.clone())
        .instance_id(id)
        .create_tables(true)
        .flush_interval(Duration::from_secs(3600))
        .wait_timeout(Duration::from_secs(30))
}

fn assert_fenced_by(err: &Error, owner_epoch: u64) {
    assert_eq!(err.fenced_by(), Some(owner_epoch), "{err:?}");
}

/// The second owner's open fences the first; see the module comment.
async fn the_second_owner_fences_the_first(db: &Db) {
    let id = instance_id();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // B's WAL is written first, without a database, so its positions lie
    // past everything A flushes (a WAL the database is ahead of is refused
    // at open as restored; that check is not what is tested here).
    let b = WriteBehind::<String, i64>::builder(dir_b.path())
        .instance_id(&id)
        .open()
        .await
        .unwrap();
    for i in 0..20 {
        b.add(format!("b{}", i % 4).as_str(), 1000).await.unwrap();
    }
    b.add("shared", 7).await.unwrap();
    b.close().await.unwrap();

    let a = builder(db, dir_a.path(), &id).open().await.unwrap();
    assert_eq!(a.stats().owner_epoch, Some(1));
    assert_eq!(a.stats().fenced, None);
    a.add("a", 1).await.unwrap();
    a.add("shared", 10).await.unwrap();
    a.flush().await.unwrap();
    a.add("a", 2).await.unwrap();
    a.flush().await.unwrap();
    let (flushed_by_a, epoch) = db.progress(&id).await;
    assert_eq!(epoch, 1);

    // B opens: the database's progress row is behind B's WAL, so the
    // claim goes ahead and takes epoch 2.
    let b = builder(db, dir_b.path(), &id).open().await.unwrap();
    assert_eq!(b.stats().owner_epoch, Some(2));
    assert_eq!(db.progress(&id).await, (flushed_by_a, 2));

    // A does not know yet: its write reaches its WAL, its flush is refused.
    a.add("a", 100).await.unwrap();
    let started = Instant::now();
    let err = a.flush().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fenced after {:?}, not at once",
        started.elapsed()
    );
    assert!(
        matches!(&err, Error::Fenced { instance, ours: 1, owner_epoch: 2 } if *instance == id),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let stats = a.stats();
    assert_eq!(stats.fenced, Some(2));
    assert_eq!(stats.owner_epoch, Some(1));
    // Every later wait fails at once, and writes are refused before the WAL.
    let err = a.flush().await.unwrap_err();
    assert_fenced_by(&err, 2);
    let err = a.flushed(stats.last_lsn).await.unwrap_err();
    assert_fenced_by(&err, 2);
    let err = a.add("a", 1000).await.unwrap_err();
    assert!(
        matches!(err, Error::Fenced { owner_epoch: 2, .. }),
        "{err:?}"
    );
    assert_eq!(
        a.stats().last_lsn,
        stats.last_lsn,
        "a refused write reached the WAL"
    );
    assert_eq!(a.stats().writes, stats.writes);

    // B flushes its own writes: none is skipped as already applied.
    b.add("b0", 1).await.unwrap();
    b.flush().await.unwrap();
    assert_eq!(b.stats().fenced, None);

    let started = Instant::now();
    let err = a.close().await.unwrap_err();
    assert_fenced_by(&err, 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    b.close().await.unwrap();

    let rows = db.rows().await;
    let values: BTreeMap<&str, i64> = rows.iter().map(|(k, (v, _))| (k.as_str(), *v)).collect();
    assert_eq!(
        values,
        BTreeMap::from([
            ("a", 3),     // A's two flushed adds; not the 100 after the fence
            ("b0", 5001), // B's five adds of 1000, then 1
            ("b1", 5000),
            ("b2", 5000),
            ("b3", 5000),
            ("shared", 17), // A's 10 and B's 7, each once
        ]),
        "{rows:?}"
    );
    assert_eq!(rows["a"].1, 2, "A flushed `a` twice, each once");
    assert_eq!(rows["shared"].1, 2, "one version per flush that touched it");
    let (position, epoch) = db.progress(&id).await;
    assert_eq!(epoch, 2);
    assert!(
        position > flushed_by_a,
        "B's flushes advanced the progress row"
    );

    // A's fenced write is still in its WAL: reopening A's directory (now
    // behind the database's progress row) is refused, and nothing is flushed.
    let reopened = builder(db, dir_a.path(), &id).open().await;
    assert!(
        matches!(reopened, Err(Error::ProgressAhead { .. })),
        "{:?}",
        reopened.err()
    );
    let wal_only = WriteBehind::<String, i64>::builder(dir_a.path())
        .instance_id(&id)
        .open()
        .await
        .unwrap();
    assert_eq!(wal_only.stats().dirty_entries, 1, "A's fenced add of 100");
    wal_only.close().await.unwrap();
    assert_eq!(db.progress(&id).await.1, 2, "a refused open claims nothing");
    db.cleanup().await;
}

/// Each open of one directory takes the next epoch; the data stays exact.
async fn claims_grow_across_reopen(db: &Db) {
    let id = instance_id();
    let dir = tempfile::tempdir().unwrap();
    for round in 1..=3u64 {
        let c = builder(db, dir.path(), &id).open().await.unwrap();
        assert_eq!(c.stats().owner_epoch, Some(round));
        assert_eq!(db.progress(&id).await.1, round as i64);
        c.add("k", 1).await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(c.stats().owner_epoch, Some(round));
        assert_eq!(c.stats().fenced, None);
        c.close().await.unwrap();
    }
    assert_eq!(db.rows().await["k"], (3, 3));
    db.cleanup().await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_second_owner_fences_the_first() {
        super::the_second_owner_fences_the_first(&Db::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_grow_across_reopen() {
        super::claims_grow_across_reopen(&Db::sqlite()).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    fn db() -> Db {
        Db::from_env("WB_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_second_owner_fences_the_first() {
        super::the_second_owner_fences_the_first(&db()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_grow_across_reopen() {
        super::claims_grow_across_reopen(&db()).await;
    }

    /// The database is down at open: nothing is claimed then, and the claim
    /// comes (through the retries) before the first flush.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_down_at_open_is_claimed_before_the_first_flush() {
        use proxy::{via_proxy, Proxy};
        use writebehind::RetryPolicy;
        let db = db();
        let id = instance_id();
        // A first owner, so the claim below must take epoch 2.
        let first = tempfile::tempdir().unwrap();
        let c = builder(&db, first.path(), &id).open().await.unwrap();
        assert_eq!(c.stats().owner_epoch, Some(1));
        c.close().await.unwrap();

        let (upstream, _) = via_proxy(&db.url, 0);
        let proxy = Proxy::start(upstream).await;
        let (_, proxied) = via_proxy(&db.url, proxy.port);
        proxy.set_down(true);
        let dir = tempfile::tempdir().unwrap();
        let cache = WriteBehind::<String, i64>::builder(dir.path())
            .database(&proxied)
            .table(db.table.clone())
            .instance_id(&id)
            .retry(RetryPolicy {
                min_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(100),
                max_attempts: Some(3),
                breaker_cooldown: Duration::from_millis(200),
                ..RetryPolicy::default()
            })
            .flush_interval(Duration::from_millis(50))
            .wait_timeout(Duration::from_secs(20))
            .open()
            .await
            .unwrap();
        assert_eq!(cache.stats().owner_epoch, None);
        cache.add("late", 4).await.unwrap();
        assert_eq!(db.progress(&id).await.1, 1, "nothing claimed while down");
        proxy.set_down(false);
        cache.flush().await.unwrap();
        assert_eq!(cache.stats().owner_epoch, Some(2));
        assert_eq!(db.progress(&id).await.1, 2);
        cache.close().await.unwrap();
        assert_eq!(db.rows().await["late"], (4, 1));
        db.cleanup().await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;

    fn db() -> Db {
        Db::from_env("WB_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_second_owner_fences_the_first() {
        super::the_second_owner_fences_the_first(&db()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_grow_across_reopen() {
        super::claims_grow_across_reopen(&db()).await;
    }
}
