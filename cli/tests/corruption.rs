//! Damage on disk, seen through the library and the `writebehind flush` CLI:
//! a flipped byte mid-segment is refused loudly (segment and offset named)
//! and the database is left alone; a cut tail recovers exactly the prefix;
//! a half-written newer checkpoint is ignored in favour of the previous one
//! plus the WAL.
#![allow(clippy::unwrap_used)]
#![cfg(feature = "sqlite")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::Row;
use writebehind::{Durability, Error, WriteBehind};

const BIN: &str = env!("CARGO_BIN_EXE_writebehind");

/// Key of the `i`-th add: a fixed order, so any prefix has a known state.
fn key(i: usize) -> String {
    format!("k{}", i % 7)
}

fn model(adds: usize) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for i in 0..adds {
        *m.entry(key(i)).or_insert(0) += 1;
    }
    m
}

fn builder(dir: &Path) -> writebehind::Builder<String, i64> {
    WriteBehind::<String, i64>::builder(dir)
        .durability(Durability::Fsync)
        .segment_size(4096)
}

/// Adds `from..to` in order, then drops the cache without closing it (as a
/// crash would: close would checkpoint and cut the WAL).
fn write(dir: &Path, from: usize, to: usize) -> WriteBehind<String, i64> {
    let cache = builder(dir).open_blocking().unwrap();
    for i in from..to {
        cache.add_blocking(key(i).as_str(), 1).unwrap();
    }
    cache
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn state(cache: &WriteBehind<String, i64>) -> BTreeMap<String, i64> {
    (0..7)
        .filter_map(|k| {
            let key = format!("k{k}");
            cache.get_blocking(key.as_str()).unwrap().map(|v| (key, v))
        })
        .collect()
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display())
}

async fn rows(url: &str) -> Vec<(String, i64, i64)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let rows = sqlx::query("SELECT key, value, version FROM counters ORDER BY key")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn exec(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// The database helpers are async; the cache here is opened with `open_blocking`,
/// which refuses to run inside a runtime, so each helper call gets its own.
fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn flush_cli(wal: &Path, url: &str) -> std::process::Output {
    Command::new(BIN)
        .arg("flush")
        .arg("--wal")
        .arg(wal)
        .args(["--db", url, "--timeout", "60"])
        .output()
        .unwrap()
}

fn values(rows: &[(String, i64, i64)]) -> BTreeMap<String, i64> {
    rows.iter().map(|(k, v, _)| (k.clone(), *v)).collect()
}

fn offset_in(msg: &str) -> u64 {
    let rest = msg
        .split("at offset ")
        .nth(1)
        .unwrap_or_else(|| panic!("no offset in {msg:?}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn flipped_byte_mid_segment_fails_flush_and_open_and_leaves_the_database_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    drop(write(&wal, 0, 600));
    let segments = files(&wal, ".wal");
    assert!(segments.len() >= 3, "{segments:?}");
    let victim = &segments[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let flip = bytes.len() / 2;
    bytes[flip] ^= 0x5A;
    std::fs::write(victim, &bytes).unwrap();
    let before: Vec<Vec<u8>> = segments.iter().map(|p| std::fs::read(p).unwrap()).collect();

    let url = sqlite_url(tmp.path());
    block(exec(&url, "CREATE TABLE counters (key TEXT PRIMARY KEY, value BIGINT NOT NULL, version BIGINT NOT NULL)"));
    block(exec(&url, "INSERT INTO counters VALUES ('k0', 1000, 7)"));

    let out = flush_cli(&wal, &url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let name = victim.file_name().unwrap().to_string_lossy();
    assert!(stderr.contains(name.as_ref()), "{stderr}");
    let at = offset_in(&stderr);
    assert!(
        at <= flip as u64 && flip as u64 - at < 128,
        "offset {at}, flipped {flip}: {stderr}"
    );
    assert_eq!(block(rows(&url)), vec![("k0".to_owned(), 1000, 7)]);

    let err = builder(&wal).open_blocking().err().unwrap();
    assert!(matches!(err, Error::Wal(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(name.as_ref()) && offset_in(&msg) == at,
        "{msg}"
    );
    // Corruption before the tail is never cut away.
    let after: Vec<Vec<u8>> = segments.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(before == after, "a failed open changed the segments");

    // Salvage mode opens, and says what it skipped.
    let cache = builder(&wal).salvage(true).open_blocking().unwrap();
    assert!(!cache.recovery().wal.skipped.is_empty());
}

#[test]
fn a_cut_tail_recovers_exactly_the_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    drop(write(&wal, 0, 500));
    let last = files(&wal, ".wal").pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    // The log's sync watermark says those bytes were fsynced: losing them is
    // damage, refused loudly, not a torn tail.
    let err = builder(&wal).open_blocking().err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains(last.file_name().unwrap().to_string_lossy().as_ref())
            && msg.contains("corrupt"),
        "{msg}"
    );
    // Without a watermark (a log written before it, or one whose watermark
    // was never synced) the end of the last segment may be torn.
    std::fs::remove_file(wal.join("sync.watermark")).unwrap();
    let copy = tmp.path().join("copy");
    copy_dir(&wal, &copy);

    // The library: the torn record is cut, saved aside and reported.
    let cache = builder(&wal).open_blocking().unwrap();
    let torn = cache.recovery().wal.torn_tail.clone().unwrap();
    assert_eq!(torn.segment, last);
    assert_eq!(torn.offset + torn.bytes_cut, len - 3);
    assert!(torn.saved_to.exists());
    assert_eq!(state(&cache), model(499));
    drop(cache);

    // The CLI on the untouched copy: the database gets exactly the prefix.
    let url = sqlite_url(tmp.path());
    let out = flush_cli(&copy, &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(values(&block(rows(&url))), model(499));
}

#[test]
fn a_half_written_checkpoint_is_ignored_for_the_previous_one_plus_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cache = write(&wal, 0, 300);
    cache.checkpoint().unwrap();
    let first = files(&wal, ".ckpt");
    assert_eq!(first.len(), 1);
    for i in 300..450 {
        cache.add_blocking(key(i).as_str(), 1).unwrap();
    }
    drop(cache);

    // A newer checkpoint, written in a copy, then planted half-written.
    let copy = tmp.path().join("copy");
    copy_dir(&wal, &copy);
    let c = builder(&copy).open_blocking().unwrap();
    c.checkpoint().unwrap();
    drop(c);
    let newer = files(&copy, ".ckpt").pop().unwrap();
    assert_ne!(newer.file_name(), first[0].file_name());
    let bytes = std::fs::read(&newer).unwrap();
    let planted = wal.join(newer.file_name().unwrap());
    std::fs::write(&planted, &bytes[..bytes.len() / 2]).unwrap();

    let cache = builder(&wal).open_blocking().unwrap();
    let lsn_of = |p: &Path| -> u64 {
        let n = p.file_name().unwrap().to_string_lossy();
        n.trim_end_matches(".ckpt").parse().unwrap()
    };
    assert_eq!(cache.recovery().checkpoint_lsn, Some(lsn_of(&first[0])));
    assert_eq!(cache.recovery().records_replayed, 150);
    assert_eq!(state(&cache), model(450));
    drop(cache);

    let url = sqlite_url(tmp.path());
    let out = flush_cli(&wal, &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(values(&block(rows(&url))), model(450));
}

/// Regression: `open_blocking` handed its runtime to the async `open`, which
/// dropped it inside `block_on` when recovery failed: a panic ("Cannot drop a
/// runtime in a context where blocking is not allowed") instead of the error.
#[test]
fn open_blocking_on_a_corrupt_wal_returns_the_error_instead_of_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    drop(write(&wal, 0, 200));
    let first = files(&wal, ".wal").remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&first, &bytes).unwrap();
    let result = std::panic::catch_unwind(|| builder(&wal).open_blocking().err());
    let err = result.expect("open_blocking panicked").unwrap();
    assert!(matches!(err, Error::Wal(_)), "{err}");
}

#[test]
fn flush_cli_on_a_missing_directory_fails_in_one_line_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("nope");
    let url = sqlite_url(tmp.path());
    let out = flush_cli(&wal, &url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&*wal.to_string_lossy()), "{stderr}");
    assert!(!wal.exists());
    assert!(!tmp.path().join("db.sqlite").exists());
}

#[test]
fn flush_cli_against_an_unreachable_database_fails_in_one_line_and_leaves_the_wal_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    drop(write(&wal, 0, 50));
    let before: Vec<(PathBuf, Vec<u8>)> = files(&wal, "")
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    // Nothing listens on port 1.
    let url = "postgres://postgres@127.0.0.1:1/test";
    let out = flush_cli(&wal, url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(url), "{stderr}");
    let after: Vec<(PathBuf, Vec<u8>)> = files(&wal, "")
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    assert!(before == after, "the WAL directory changed");
    // And it still flushes once a database is there.
    let url = sqlite_url(tmp.path());
    let out = flush_cli(&wal, &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(values(&block(rows(&url))), model(50));
}
