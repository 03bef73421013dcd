//! The paths between the happy path and the crash: a database that is down,
//! hooks that panic, a restored WAL directory, rows the database refuses,
//! handles dropped without `close`, and what a failed write means. One test
//! per case that once hung, spun or lost data quietly, named after it.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;
use writebehind::{ConflictPolicy, Durability, Error, Resolution, RetryPolicy, WriteBehind};

#[path = "../writer/tests/common/proxy.rs"]
mod proxy;
use proxy::{via_proxy, Proxy};

fn env_url(var: &str, example: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set. Run the tests with scripts/test, or set it, e.g. {var}={example}")
    })
}

fn postgres_url() -> String {
    env_url("WB_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
}

fn mysql_url() -> String {
    env_url("WB_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
}

async fn sql(url: &str, q: &str) -> Vec<sqlx::any::AnyRow> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let rows = sqlx::query(sqlx::AssertSqlSafe(q))
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

/// `key -> value` of a counter table.
async fn counters(url: &str, table: &str) -> std::collections::BTreeMap<String, i64> {
    let q = if url.starts_with("mysql") {
        format!("SELECT `key`, `value` FROM {table}")
    } else {
        format!("SELECT key, value FROM {table}")
    };
    sql(url, &q)
        .await
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect()
}

/// A counter cache on `url`'s `table`, creating the tables.
async fn open_with_table(
    dir: &std::path::Path,
    url: &str,
    table: &str,
) -> WriteBehind<String, i64> {
    WriteBehind::<String, i64>::builder(dir)
        .database(url)
        .table(table)
        .create_tables(true)
        .open()
        .await
        .unwrap()
}

fn table_name(prefix: &str) -> String {
    format!("{prefix}_{}", fastrand::u32(..))
}

/// Retries that give up quickly, so rounds fail (and are counted) in a test's time.
fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        max_attempts: Some(3),
        breaker_cooldown: Duration::from_millis(200),
        ..RetryPolicy::default()
    }
}

async fn database_down_at_open(create_tables: bool) {
    let url = postgres_url();
    let table = table_name("down_at_open");
    if !create_tables {
        // Tables made by a first cache while the database is up.
        let dir = tempfile::tempdir().unwrap();
        let c = WriteBehind::<String, i64>::builder(dir.path())
            .database(&url)
            .table(&table)
            .create_tables(true)
            .open()
            .await
            .unwrap();
        c.close().await.unwrap();
    }
    let (upstream, _) = via_proxy(&url, 0);
    let proxy = Proxy::start(upstream).await;
    let (_, proxied) = via_proxy(&url, proxy.port);
    proxy.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let cache = WriteBehind::<String, i64>::builder(dir.path())
        .database(&proxied)
        .table(&table)
        .create_tables(create_tables)
        .retry(quick_retry())
        .wait_timeout(Duration::from_secs(2))
        .flush_interval(Duration::from_millis(50))
        .open()
        .await
        .unwrap();
    for i in 0..10 {
        cache.add(format!("k{i}").as_str(), i + 1).await.unwrap();
    }
    let started = Instant::now();
    let err = cache.flush().await.unwrap_err();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "flush waited {waited:?}");
    match &err {
        Error::FlushTimeout { cause, .. } => {
            assert!(cause.is_some(), "the timeout names the failure: {err}");
        }
        Error::Flush(_) => {}
        other => panic!("expected a flush error, got {other:?}"),
    }
    assert!(
        err.is_transient(),
        "an unreachable database is transient: {err:?}"
    );
    // Rounds fail, are counted and back off (no hot loop).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = cache.stats();
    assert!(stats.flush_failures >= 1, "{stats:?}");
    assert!(stats.flush_failures < 40, "rounds back off: {stats:?}");
    assert!(stats.last_flush_error.is_some(), "{stats:?}");
    assert_eq!(stats.flushes, 0);
    proxy.set_down(false);
    cache.flush().await.unwrap();
    cache.close().await.unwrap();
    let db = counters(&url, &table).await;
    assert_eq!(db.len(), 10);
    for i in 0..10 {
        assert_eq!(db[&format!("k{i}")], i + 1);
    }
}

#[tokio::test]
async fn flush_returns_within_its_bound_when_postgres_is_down_at_open_with_create_tables() {
    database_down_at_open(true).await;
}

#[tokio::test]
async fn flush_returns_within_its_bound_when_postgres_is_down_at_open_without_create_tables() {
    database_down_at_open(false).await;
}

/// Makes a conflict on `key`: the cache reads it (learning version 1), then
/// another program changes the row behind its back, then the cache puts.
async fn conflict_setup(dir: &std::path::Path, url: &str, table: &str) {
    let c = WriteBehind::<String, i64>::builder(dir)
        .database(url)
        .table(table)
        .create_tables(true)
        .open()
        .await
        .unwrap();
    c.put("row", &1).await.unwrap();
    c.close().await.unwrap();
}

async fn panicking_hook_or_resolver(resolver: bool) {
    let dbdir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/app.db", dbdir.path().display());
    let dir = tempfile::tempdir().unwrap();
    conflict_setup(dir.path(), &url, "counters").await;
    let mut builder = WriteBehind::<String, i64>::builder(dir.path())
        .database(&url)
        .create_tables(true)
        .wait_timeout(Duration::from_secs(10));
    builder = if resolver {
        builder.conflict_policy(ConflictPolicy::Resolve(Arc::new(|_c| -> Resolution {
            panic!("resolver bug")
        })))
    } else {
        builder.on_conflict(|_c| panic!("hook bug"))
    };
    let cache = builder.open().await.unwrap();
    assert_eq!(cache.get("row").await.unwrap(), Some(1));
    sql(
        &url,
        "UPDATE counters SET value = 50, version = version + 1",
    )
    .await;
    cache.put("row", &7).await.unwrap();
    cache.add("other", 3).await.unwrap();
    cache.flush().await.unwrap();
    // The pipeline goes on after the panic.
    cache.add("later", 4).await.unwrap();
    cache.flush().await.unwrap();
    let stats = cache.stats();
    assert_eq!(stats.panics, 1, "{stats:?}");
    assert_eq!(stats.conflicts, 1);
    assert_eq!(cache.get("row").await.unwrap(), Some(50));
    cache.close().await.unwrap();
    let db = counters(&url, "counters").await;
    assert_eq!(db["row"], 50, "the database's row is kept");
    assert_eq!(db["other"], 3);
    assert_eq!(db["later"], 4);
    let resolution: String =
        sql(&url, "SELECT resolution FROM writebehind_conflicts").await[0].get(0);
    assert_eq!(
        resolution,
        if resolver {
            "resolver_panicked"
        } else {
            "kept_database"
        }
    );
}

#[tokio::test]
async fn a_panicking_on_conflict_hook_does_not_stop_the_flusher() {
    panicking_hook_or_resolver(false).await;
}

#[tokio::test]
async fn a_panicking_conflict_resolver_keeps_the_database_row_and_goes_on() {
    panicking_hook_or_resolver(true).await;
}

#[tokio::test]
async fn a_restored_wal_opened_while_postgres_is_down_is_never_flushed_as_already_applied() {
    let url = postgres_url();
    let table = table_name("restored");
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let c = WriteBehind::<String, i64>::builder(dir.path())
        .database(&url)
        .table(&table)
        .create_tables(true)
        .open()
        .await
        .unwrap();
    c.add("old", 1).await.unwrap();
    c.close().await.unwrap();
    copy_dir(dir.path(), backup.path());
    let c = WriteBehind::<String, i64>::builder(dir.path())
        .database(&url)
        .table(&table)
        .open()
        .await
        .unwrap();
    for _ in 0..20 {
        c.add("old", 1).await.unwrap();
        c.flush().await.unwrap();
    }
    c.close().await.unwrap();
    // Restore the backup, and open it while the database is unreachable.
    std::fs::remove_dir_all(dir.path()).unwrap();
    copy_dir(backup.path(), dir.path());
    let (upstream, _) = via_proxy(&url, 0);
    let proxy = Proxy::start(upstream).await;
    let (_, proxied) = via_proxy(&url, proxy.port);
    proxy.set_down(true);
    let cache = WriteBehind::<String, i64>::builder(dir.path())
        .database(&proxied)
        .table(&table)
        .retry(quick_retry())
        .wait_timeout(Duration::from_secs(5))
        .open()
        .await
        .unwrap();
    cache.add("new", 5).await.unwrap();
    proxy.set_down(false);
    let err = cache.flush().await.unwrap_err();
    match &err {
        Error::Flush(e) => assert!(
            matches!(**e, Error::ProgressAhead { .. }),
            "expected ProgressAhead, got {e:?}"
        ),
        other => panic!("expected a refused flush, got {other:?}"),
    }
    let err = cache.close().await.unwrap_err();
    assert!(matches!(err, Error::Close(_)), "{err:?}");
    let db = counters(&url, &table).await;
    assert_eq!(
        db.get("new"),
        None,
        "nothing of the restored WAL was marked applied"
    );
    assert_eq!(db["old"], 21);
    // The write is still in the WAL.
    let again = WriteBehind::<String, i64>::builder(dir.path())
        .open()
        .await
        .unwrap();
    assert_eq!(again.get("new").await.unwrap(), Some(5));
    again.close().await.unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "LOCK" {
            continue;
        }
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn a_nul_key_is_refused_at_write_time_on_postgres() {
    let url = postgres_url();
    let table = table_name("nul_key");
    let dir = tempfile::tempdir().unwrap();
    let cache = open_with_table(dir.path(), &url, &table).await;
    let before = cache.stats().last_lsn;
    let err = cache.add("a\0b", 1).await.unwrap_err();
    assert!(matches!(err, Error::KeyRefused { .. }), "{err:?}");
    assert_eq!(cache.stats().last_lsn, before, "nothing reached the WAL");
    assert_eq!(cache.get("a\0b").await.unwrap(), None);
    cache.add("good", 2).await.unwrap();
    cache.close().await.unwrap();
    assert_eq!(counters(&url, &table).await["good"], 2);
}

/// A WAL written before the key check (here: by a cache without a
/// database) holds a NUL key. On PostgreSQL the data table refuses it and
/// so does the dead-letter table: it goes to the local dead-letter file
/// and every other key is flushed.
#[tokio::test]
async fn a_nul_key_already_in_the_wal_goes_to_the_local_dead_letter_file_and_the_rest_flushes() {
    let url = postgres_url();
    let table = table_name("nul_wal");
    let dir = tempfile::tempdir().unwrap();
    let c = WriteBehind::<String, i64>::builder(dir.path())
        .open()
        .await
        .unwrap();
    for i in 0..50 {
        c.add(format!("k{i}").as_str(), 1).await.unwrap();
    }
    c.add("bad\0key", 9).await.unwrap();
    c.close().await.unwrap();
    let cache = WriteBehind::<String, i64>::builder(dir.path())
        .database(&url)
        .table(&table)
        .create_tables(true)
        .retry(quick_retry())
        .open()
        .await
        .unwrap();
    cache.flush().await.unwrap();
    let stats = cache.stats();
    assert_eq!(stats.dead_letters, 1, "{stats:?}");
    assert_eq!(stats.dirty_entries, 0);
    cache.close().await.unwrap();
    let db = counters(&url, &table).await;
    assert_eq!(db.len(), 50);
    assert!(db.values().all(|&v| v == 1));
    let local = writebehind::local_dead_letters(dir.path()).unwrap();
    assert_eq!(local.len(), 1);
    assert_eq!(local[0].key, "bad\0key");
    assert_eq!(local[0].table, table);
    assert_eq!(local[0].change, writebehind::Change::Add(9));
}

#[tokio::test]
async fn a_counter_that_overflows_only_in_sqlite_is_dead_lettered_with_its_key() {
    let dbdir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/app.db", dbdir.path().display());
    let dir = tempfile::tempdir().unwrap();
    let cache = WriteBehind::<String, i64>::builder(dir.path())
        .database(&url)
        .create_tables(true)
        .read_through(false)
        .open()
        .await
        .unwrap();
    sql(
        &url,
        &format!(
            "INSERT INTO counters (key, value, version) VALUES ('big', {}, 1)",
            i64::MAX - 1
        ),
    )
    .await;
    for i in 0..20 {
        cache.add(format!("k{i}").as_str(), 1).await.unwrap();
    }
    cache.add("big", 5).await.unwrap();
    cache.flush().await.unwrap();
    assert_eq!(cache.stats().dead_letters, 1);
    cache.close().await.unwrap();
    let db = counters(&url, "counters").await;
    assert_eq!(db["big"], i64::MAX - 1, "the row is unchanged");
    assert_eq!(db.len(), 21);
    let dead = sql(&url, "SELECT key, error FROM writebehind_dead_letters").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].get::<String, _>(0), "big");
}

#[tokio::test]
async fn a_key_longer_than_the_mariadb_key_column_is_refused_at_write_time() {
    let url = mysql_url();
    let table = table_name("long_key");
    let dir = tempfile::tempdir().unwrap();
    let cache = open_with_table(dir.path(), &url, &table).await;
    let long = "x".repeat(601);
    let err = cache.add(long.as_str(), 1).await.unwrap_err();
    assert!(matches!(err, Error::KeyRefused { .. }), "{err:?}");
    // 512 characters fit, even when they take more bytes.
    let fits = format!("{}{}", "é".repeat(500), "x".repeat(12));
    cache.add(fits.as_str(), 2).await.unwrap();
    cache.close().await.unwrap();
    let db = counters(&url, &table).await;
    assert_eq!(db.len(), 1);
    assert_eq!(db[&fits], 2);
}

async fn drop_then_reopen(rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..rounds {
        let cache = WriteBehind::<String, i64>::builder(dir.path())
            .open()
            .await
            .unwrap_or_else(|e| panic!("round {i}: {e}"));
        assert_eq!(cache.get("n").await.unwrap().unwrap_or(0), i as i64);
        cache.add("n", 1).await.unwrap();
        drop(cache);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn reopening_right_after_a_drop_works_on_a_current_thread_runtime() {
    drop_then_reopen(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_right_after_a_drop_works_on_a_multi_thread_runtime() {
    drop_then_reopen(20).await;
}

#[test]
fn reopening_right_after_a_drop_works_with_open_blocking() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let cache = WriteBehind::<String, i64>::builder(dir.path())
            .open_blocking()
            .unwrap();
        assert_eq!(cache.get_blocking("n").unwrap().unwrap_or(0), i);
        cache.add_blocking("n", 1).unwrap();
        drop(cache);
    }
}

#[tokio::test]
async fn setup_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = WriteBehind::<String, i64>::builder(&file)
        .open()
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("is not a directory"), "{err}");

    let wal = dir.path().join("wal");
    let first = WriteBehind::<String, i64>::builder(&wal)
        .open()
        .await
        .unwrap();
    let started = Instant::now();
    // Held by a live cache: refused at once.
    let err = WriteBehind::<String, i64>::builder(&wal)
        .open()
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    first.close().await.unwrap();

    let err = WriteBehind::<String, i64>::builder(dir.path().join("w2"))
        .database(format!("sqlite://{}/x.db", dir.path().display()))
        .table("no such; table")
        .open()
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::InvalidIdentifier { .. }), "{err:?}");
}

/// A write whose fsync failed is indeterminate: it may or may not be on
/// disk. The cache then refuses reads, writes and flushes (so nobody sees
/// a state the disk may not have), `close` reports the error, and the next
/// open decides from what is on disk; the acknowledged writes are all there.
#[test]
fn after_a_failed_fsync_reads_flushes_and_the_next_open_agree() {
    use writebehind_wal::io::{CrashMode, FaultyIo};
    let fs = FaultyIo::new();
    let open = |fs: &FaultyIo| {
        WriteBehind::<String, i64>::builder("/wal")
            .durability(Durability::Fsync)
            .io(Arc::new(fs.clone()))
            .open_blocking()
            .unwrap()
    };
    let cache = open(&fs);
    let acked = AtomicU64::new(0);
    for _ in 0..10 {
        cache.add_blocking("k", 1).unwrap();
        acked.fetch_add(1, Ordering::SeqCst);
    }
    fs.fail_sync_after(0);
    let err = cache.add_blocking("k", 1).unwrap_err();
    assert!(matches!(err, Error::Wal(_)), "{err:?}");
    let read = cache.get_blocking("k").unwrap_err();
    assert!(matches!(read, Error::Wal(_)), "{read:?}");
    assert!(cache.add_blocking("k", 1).is_err());
    assert!(cache.flush_blocking().is_err());
    assert!(matches!(
        cache.clone().close_blocking(),
        Err(Error::Close(_))
    ));
    drop(cache);
    fs.clear_faults();
    fs.crash(CrashMode::LoseUnsynced);
    let cache = open(&fs);
    let after = cache.get_blocking("k").unwrap().unwrap();
    assert_eq!(after, acked.load(Ordering::SeqCst) as i64);
    cache.close_blocking().unwrap();
}
