//! The read side: explicit invalidation (by key, by prefix, never of a
//! dirty entry, broadcast to other instances on PostgreSQL), refresh-ahead
//! of hot keys past their TTL, and the sizing figures. Rows are changed
//! behind the cache's back with plain SQL. SQLite always; PostgreSQL
//! (WB_POSTGRES_URL) and MariaDB/MySQL (WB_MYSQL_URL) when built with their
//! features (`scripts/test` builds all and sets both).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use writebehind::{Durability, Error, RefreshAhead, WriteBehind};

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

    #[allow(dead_code)] // without the postgres and mysql features
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

    async fn exec(&self, sql: &str) {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&self.url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    /// Sets a row behind the cache's back, as another program would.
    async fn set(&self, key: &str, value: i64) {
        let col = if self.url.starts_with("mysql") {
            "`key`"
        } else {
            "\"key\""
        };
        self.exec(&format!(
            "UPDATE {} SET value = {value}, version = version + 1 WHERE {col} = '{key}'",
            self.table
        ))
        .await;
    }

    async fn drop_table(&self) {
        self.exec(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await;
    }

    fn builder(&self, wal: &std::path::Path) -> writebehind::Builder<String, i64> {
        WriteBehind::<String, i64>::builder(wal)
            .database(self.url.clone())
            .table(self.table.clone())
            .create_tables(true)
            .notify(false)
            // Flushes happen when the test asks.
            .flush_interval(Duration::from_secs(3_600))
            .durability(Durability::Buffered {
                interval: Duration::from_millis(5),
            })
    }
}

fn table_name() -> String {
    format!("wb_read{:x}", fastrand::u64(..))
}

/// invalidate drops a clean copy and the next get loads the row changed
/// behind the cache's back; invalidate_prefix does it for one prefix only.
async fn invalidation_reloads_rows_changed_behind_the_cache(db: Db) {
    let wal = tempfile::tempdir().unwrap();
    let cache = db.builder(wal.path()).open().await.unwrap();
    for (key, value) in [
        ("user:1", 10),
        ("user:2", 20),
        ("team:4:a", 1),
        ("team:4:b", 2),
        ("team:40:a", 3),
    ] {
        cache.put(key, &value).await.unwrap();
    }
    cache.flush().await.unwrap();
    let before = cache.stats();
    assert_eq!((before.clean_entries, before.dirty_entries), (5, 0));

    db.set("user:1", 11).await;
    // The cache still serves its copy: the change went around it.
    assert_eq!(cache.get("user:1").await.unwrap(), Some(10));
    assert!(cache.invalidate("user:1").await.unwrap());
    assert!(!cache.invalidate("user:1").await.unwrap(), "already gone");
    assert!(!cache.invalidate("never-cached").await.unwrap());
    assert_eq!(cache.get("user:1").await.unwrap(), Some(11));
    assert_eq!(cache.get("user:2").await.unwrap(), Some(20));

    db.set("team:4:a", 100).await;
    db.set("team:4:b", 200).await;
    db.set("team:40:a", 300).await;
    assert_eq!(cache.invalidate_prefix("team:4:").await.unwrap(), 2);
    assert_eq!(cache.get("team:4:a").await.unwrap(), Some(100));
    assert_eq!(cache.get("team:4:b").await.unwrap(), Some(200));
    // Not under the prefix: still the cached copy.
    assert_eq!(cache.get("team:40:a").await.unwrap(), Some(3));

    let after = cache.stats();
    assert_eq!(after.loads - before.loads, 3);
    assert_eq!(
        after.invalidation_evictions - before.invalidation_evictions,
        3
    );
    assert_eq!(after.load_latency.count(), after.loads);
    assert_eq!(after.clean_entries, 5);
    // Key plus value bytes, 8 per counter.
    let key_bytes: usize = ["user:1", "user:2", "team:4:a", "team:4:b", "team:40:a"]
        .iter()
        .map(|k| k.len())
        .sum();
    assert_eq!(after.clean_bytes, key_bytes + 5 * 8);
    // A put after the invalidation carries the reloaded version: no conflict.
    cache.put("user:1", &12).await.unwrap();
    cache.flush().await.unwrap();
    assert_eq!(cache.stats().conflicts, 0);
    cache.invalidate("user:1").await.unwrap();
    assert_eq!(cache.get("user:1").await.unwrap(), Some(12));
    cache.close().await.unwrap();
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reloads_rows_changed_behind_the_cache_sqlite() {
    invalidation_reloads_rows_changed_behind_the_cache(Db::sqlite()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reloads_rows_changed_behind_the_cache_postgres() {
    invalidation_reloads_rows_changed_behind_the_cache(Db::from_env("WB_POSTGRES_URL")).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reloads_rows_changed_behind_the_cache_mysql() {
    invalidation_reloads_rows_changed_behind_the_cache(Db::from_env("WB_MYSQL_URL")).await;
}

/// A dirty entry is ours: neither invalidate nor invalidate_prefix touches
/// it, and the flush writes it with the version check intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_never_loses_a_dirty_write() {
    let db = Db::sqlite();
    let wal = tempfile::tempdir().unwrap();
    let cache = db.builder(wal.path()).open().await.unwrap();
    cache.put("k", &1).await.unwrap();
    cache.add("c", 10).await.unwrap();
    cache.flush().await.unwrap();
    cache.put("k", &2).await.unwrap();
    cache.add("c", 5).await.unwrap();
    assert_eq!(cache.stats().dirty_entries, 2);

    assert!(!cache.invalidate("k").await.unwrap());
    assert!(!cache.invalidate("c").await.unwrap());
    assert_eq!(cache.invalidate_prefix("").await.unwrap(), 0);
    assert_eq!(cache.get("k").await.unwrap(), Some(2));
    assert_eq!(cache.get("c").await.unwrap(), Some(15));
    assert_eq!(cache.stats().dirty_entries, 2);

    cache.flush().await.unwrap();
    let s = cache.stats();
    assert_eq!((s.conflicts, s.dirty_entries), (0, 0));
    // The database holds both writes; reload it to be sure.
    assert_eq!(cache.invalidate_prefix("").await.unwrap(), 2);
    assert_eq!(cache.get("k").await.unwrap(), Some(2));
    assert_eq!(cache.get("c").await.unwrap(), Some(15));
    cache.close().await.unwrap();
}

/// A counter with a pending delta over a row another program changed:
/// invalidate drops the base the delta was added to, keeps the delta, and
/// the next get is the new row plus the delta (before the flush too);
/// invalidate_prefix does the same. The flush adds the deltas to the rows.
async fn invalidating_a_dirty_counter_reads_the_new_row_plus_the_delta(db: Db) {
    let wal = tempfile::tempdir().unwrap();
    let cache = db.builder(wal.path()).open().await.unwrap();
    for key in ["views:1", "views:2", "views:3"] {
        cache.add(key, 40).await.unwrap();
    }
    cache.flush().await.unwrap();
    for key in ["views:1", "views:2", "views:3"] {
        // The row is the base now, in memory.
        assert_eq!(cache.get(key).await.unwrap(), Some(40));
        cache.add(key, 5).await.unwrap();
        assert_eq!(cache.get(key).await.unwrap(), Some(45));
    }
    let loads = cache.stats().loads;
    db.set("views:1", 1040).await;
    db.set("views:2", 2040).await;
    db.set("views:3", 3040).await;
    // Not invalidated yet: the cache knows nothing of the change.
    assert_eq!(cache.get("views:1").await.unwrap(), Some(45));
    // No clean copy to drop (the entry is dirty), but the base goes.
    assert!(!cache.invalidate("views:1").await.unwrap());
    assert_eq!(cache.get("views:1").await.unwrap(), Some(1045));
    assert_eq!(cache.stats().loads, loads + 1);
    assert_eq!(cache.invalidate_prefix("views:2").await.unwrap(), 0);
    assert_eq!(cache.get("views:2").await.unwrap(), Some(2045));
    assert_eq!(
        cache.get("views:3").await.unwrap(),
        Some(45),
        "not invalidated"
    );
    assert_eq!(cache.stats().dirty_entries, 3);

    cache.flush().await.unwrap();
    let s = cache.stats();
    assert_eq!((s.conflicts, s.dirty_entries), (0, 0));
    assert_eq!(cache.get("views:1").await.unwrap(), Some(1045));
    assert_eq!(cache.invalidate_prefix("views:").await.unwrap(), 3);
    assert_eq!(cache.get("views:1").await.unwrap(), Some(1045));
    assert_eq!(cache.get("views:2").await.unwrap(), Some(2045));
    // The write-behind delta landed on the other program's row.
    assert_eq!(cache.get("views:3").await.unwrap(), Some(3045));
    cache.close().await.unwrap();
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_dirty_counter_reads_the_new_row_plus_the_delta_sqlite() {
    invalidating_a_dirty_counter_reads_the_new_row_plus_the_delta(Db::sqlite()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_dirty_counter_reads_the_new_row_plus_the_delta_postgres() {
    invalidating_a_dirty_counter_reads_the_new_row_plus_the_delta(Db::from_env("WB_POSTGRES_URL"))
        .await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_dirty_counter_reads_the_new_row_plus_the_delta_mysql() {
    invalidating_a_dirty_counter_reads_the_new_row_plus_the_delta(Db::from_env("WB_MYSQL_URL"))
        .await;
}

/// The blocking twins do the same from a plain thread.
#[test]
fn the_blocking_twins_invalidate_too() {
    let db = Db::sqlite();
    let wal = tempfile::tempdir().unwrap();
    let cache = db.builder(wal.path()).open_blocking().unwrap();
    cache.put_blocking("a:1", &1).unwrap();
    cache.put_blocking("a:2", &2).unwrap();
    cache.flush_blocking().unwrap();
    assert!(cache.invalidate_blocking("a:1").unwrap());
    assert_eq!(cache.invalidate_prefix_blocking("a:").unwrap(), 1);
    assert_eq!(cache.stats().clean_entries, 0);
    assert_eq!(cache.get_blocking("a:2").unwrap(), Some(2));
    cache.close_blocking().unwrap();
}

/// Settings that cannot work are refused at open with a typed error.
#[tokio::test]
async fn read_side_settings_that_cannot_work_are_refused() {
    let db = Db::sqlite();
    let wal = tempfile::tempdir().unwrap();
    let refused = |r: writebehind::Result<WriteBehind<String, i64>>, what: &str| match r {
        Err(Error::Config(msg)) => assert!(msg.contains(what), "{msg}"),
        Err(e) => panic!("{what}: {e}"),
        Ok(_) => panic!("{what}: opened"),
    };
    let no_ttl = db
        .builder(wal.path())
        .refresh_ahead(Some(RefreshAhead::default()))
        .open()
        .await;
    refused(no_ttl, "clean_ttl");
    let bad_beta = db
        .builder(wal.path())
        .clean_ttl(Some(Duration::from_secs(1)))
        .refresh_ahead(Some(RefreshAhead {
            beta: f64::NAN,
            ..RefreshAhead::default()
        }))
        .open()
        .await;
    refused(bad_beta, "beta");
    let zero = db
        .builder(wal.path())
        .clean_capacity_bytes(Some(0))
        .open()
        .await;
    refused(zero, "clean_capacity_bytes");
    let no_notify = db
        .builder(wal.path())
        .broadcast_invalidations(true)
        .open()
        .await;
    refused(no_notify, "notify");
}

/// Waits (at most 5 s) until `done` holds of the cache's stats.
async fn until(
    cache: &WriteBehind<String, i64>,
    what: &str,
    done: impl Fn(&writebehind::Stats) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(&cache.stats()) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within 5 s: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// 1 000 concurrent readers of a hot key past its TTL: every one is served
/// from memory (no miss, so none waited for the database) while exactly
/// one load refreshes the key; the next expiry, one more. β is 0 here, so
/// only expiry asks for a refresh: with β > 0 XFetch may also refresh a
/// fresh copy early, with a probability that depends on how slow loads are
/// on this machine (its rule is tested in `core/src/clean.rs`).
async fn a_hot_key_is_refreshed_by_one_load_while_its_readers_are_served(db: Db) {
    const READERS: usize = 1_000;
    let ttl = Duration::from_millis(300);
    let wal = tempfile::tempdir().unwrap();
    let cache = db
        .builder(wal.path())
        .clean_ttl(Some(ttl))
        .refresh_ahead(Some(RefreshAhead {
            beta: 0.0,
            max_stale: Duration::from_secs(30),
        }))
        .open()
        .await
        .unwrap();
    cache.put("hot", &1).await.unwrap();
    cache.flush().await.unwrap();
    for round in 1..=2u64 {
        let before = cache.stats();
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        db.set("hot", 1 + round as i64).await;
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let v = cache.get("hot").await.unwrap();
                    (v, started.elapsed())
                })
            })
            .collect();
        let mut slowest = Duration::ZERO;
        for r in readers {
            let (v, took) = r.await.unwrap();
            assert!(
                v == Some(round as i64) || v == Some(1 + round as i64),
                "{v:?}"
            );
            slowest = slowest.max(took);
        }
        // The refresh lands: polled with reads, which are served the old
        // copy meanwhile and start no second load.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut polls = 0;
        loop {
            polls += 1;
            if cache.get("hot").await.unwrap() == Some(1 + round as i64) {
                break;
            }
            assert!(Instant::now() < deadline, "{:?}", cache.stats());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let after = cache.stats();
        // Nobody went to the database: every read was answered from memory.
        assert_eq!(after.misses, before.misses, "round {round}");
        assert_eq!(
            after.hits - before.hits,
            READERS as u64 + polls,
            "round {round}"
        );
        assert_eq!(
            after.loads - before.loads,
            1,
            "round {round}: {before:?} {after:?}"
        );
        assert_eq!(after.refreshes - before.refreshes, 1, "round {round}");
        assert_eq!(after.refresh_failures, 0);
        eprintln!("round {round}: {READERS} readers, slowest {slowest:?}, one load");
    }
    cache.close().await.unwrap();
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_by_one_load_while_its_readers_are_served_sqlite() {
    a_hot_key_is_refreshed_by_one_load_while_its_readers_are_served(Db::sqlite()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_by_one_load_while_its_readers_are_served_postgres() {
    a_hot_key_is_refreshed_by_one_load_while_its_readers_are_served(Db::from_env(
        "WB_POSTGRES_URL",
    ))
    .await;
}

/// Without refresh-ahead the same expiry is a cliff: the first reader
/// after it misses and waits for the load (the figure the bench measures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_refresh_ahead_a_reader_past_the_ttl_waits_for_the_load() {
    let db = Db::sqlite();
    let ttl = Duration::from_millis(100);
    let wal = tempfile::tempdir().unwrap();
    let cache = db
        .builder(wal.path())
        .clean_ttl(Some(ttl))
        .open()
        .await
        .unwrap();
    cache.put("hot", &1).await.unwrap();
    cache.flush().await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let before = cache.stats();
    assert_eq!(cache.get("hot").await.unwrap(), Some(1));
    let after = cache.stats();
    assert_eq!(after.misses - before.misses, 1);
    assert_eq!(after.loads - before.loads, 1);
    assert_eq!(after.ttl_evictions - before.ttl_evictions, 1);
    assert_eq!(after.refreshes, 0);
    cache.close().await.unwrap();
}

/// A refresh that fails is counted, pauses refreshes (the database is not
/// asked once per read) and frees the key: the stale copy is still served,
/// and a read after the pause refreshes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_is_counted_and_does_not_wedge_the_key() {
    let db = Db::sqlite();
    let ttl = Duration::from_millis(100);
    let wal = tempfile::tempdir().unwrap();
    let cache = db
        .builder(wal.path())
        .clean_ttl(Some(ttl))
        .refresh_ahead(Some(RefreshAhead {
            beta: 1.0,
            max_stale: Duration::from_secs(30),
        }))
        .open()
        .await
        .unwrap();
    cache.put("hot", &1).await.unwrap();
    cache.flush().await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let hidden = format!("{}_away", db.table);
    db.exec(&format!("ALTER TABLE {} RENAME TO {hidden}", db.table))
        .await;
    assert_eq!(cache.get("hot").await.unwrap(), Some(1));
    until(&cache, "the failed refresh", |s| s.refresh_failures == 1).await;
    assert_eq!(cache.stats().refreshes, 1);
    // Still served from memory while the database cannot answer; 200 reads
    // over ~200 ms make a few refreshes (50 + 100 ms pauses), not one each.
    for _ in 0..200 {
        assert_eq!(cache.get("hot").await.unwrap(), Some(1));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let s = cache.stats();
    assert!(
        (2..=6).contains(&s.refreshes) && s.refresh_failures == s.refreshes,
        "{s:?}"
    );
    let misses = cache.stats().misses;
    db.exec(&format!("ALTER TABLE {hidden} RENAME TO {}", db.table))
        .await;
    db.set("hot", 5).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get("hot").await.unwrap() != Some(5) {
        assert!(Instant::now() < deadline, "{:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = cache.stats();
    assert_eq!(s.misses, misses, "no reader waited");
    assert!(
        s.refresh_failures >= 1 && s.refreshes > s.refresh_failures,
        "{s:?}"
    );
    cache.close().await.unwrap();
}

/// The byte budget holds: clean bytes stay under it and what it pushed out
/// is counted as capacity evictions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clean_byte_budget_holds_and_its_evictions_are_counted() {
    let db = Db::sqlite();
    let wal = tempfile::tempdir().unwrap();
    let cache = db
        .builder(wal.path())
        .clean_capacity(10_000)
        .clean_capacity_bytes(Some(4_000))
        .open()
        .await
        .unwrap();
    // 500 keys of 12 bytes + 8: 10 000 bytes of rows for a 4 000-byte budget.
    for i in 0..500 {
        cache
            .add(format!("counter:{i:04}").as_str(), 1)
            .await
            .unwrap();
    }
    cache.flush().await.unwrap();
    let s = cache.stats();
    assert!(s.clean_bytes <= 4_000, "{s:?}");
    assert_eq!(s.clean_bytes, s.clean_entries * 20);
    assert_eq!(s.capacity_evictions, 500 - s.clean_entries as u64);
    cache.close().await.unwrap();
}

/// Two instances on PostgreSQL: A's invalidations reach B, which drops its
/// clean copies (by key and by prefix) but never its dirty entries.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_invalidation_reaches_the_other_instance() {
    let db = Db::from_env("WB_POSTGRES_URL");
    let (da, dbb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = |dir: &std::path::Path| {
        db.builder(dir)
            .notify(true)
            .broadcast_invalidations(true)
            .open()
    };
    let a = Arc::new(open(da.path()).await.unwrap());
    let b = open(dbb.path()).await.unwrap();
    for (key, value) in [("user:1", 1), ("team:9:a", 2), ("team:9:b", 3)] {
        a.put(key, &value).await.unwrap();
    }
    a.flush().await.unwrap();
    // B learns of A's flush (3 keys), then caches the rows.
    until(&b, "A's flush announcement", |s| s.invalidations >= 3).await;
    for (key, value) in [("user:1", 1), ("team:9:a", 2), ("team:9:b", 3)] {
        assert_eq!(b.get(key).await.unwrap(), Some(value));
    }
    b.put("team:9:mine", &7).await.unwrap();
    let seen = b.stats().invalidations;

    db.set("user:1", 10).await;
    assert_eq!(b.get("user:1").await.unwrap(), Some(1), "stale until told");
    // A's own copy (read back by its flush) goes too.
    assert!(a.invalidate("user:1").await.unwrap());
    assert_eq!(a.stats().invalidation_broadcasts, 1);
    until(&b, "the key invalidation", |s| s.invalidations == seen + 1).await;
    assert_eq!(b.get("user:1").await.unwrap(), Some(10));

    db.set("team:9:a", 20).await;
    db.set("team:9:b", 30).await;
    a.invalidate_prefix("team:9:").await.unwrap();
    until(&b, "the prefix invalidation", |s| {
        s.invalidations == seen + 3
    })
    .await;
    assert_eq!(b.get("team:9:a").await.unwrap(), Some(20));
    assert_eq!(b.get("team:9:b").await.unwrap(), Some(30));
    // A ignores its own announcements.
    assert_eq!(a.stats().invalidations, 0);
    // B's own unflushed write is untouched, and flushes.
    assert_eq!(b.get("team:9:mine").await.unwrap(), Some(7));
    assert_eq!(b.stats().dirty_entries, 1);
    b.flush().await.unwrap();
    assert_eq!(b.stats().conflicts, 0);
    Arc::into_inner(a).unwrap().close().await.unwrap();
    b.close().await.unwrap();
    db.drop_table().await;
}
