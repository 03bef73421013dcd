//! Derived records through a real cache on SQLite: a table created by plain
//! SQL (a delta record of two counters beside an unmapped column), and a
//! record of every column type in a table the cache creates from the
//! derived mapping, written, flushed and read back through the database.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use writebehind::{Record, WriteBehind};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(table = "posts", key(id))]
struct PostCounters {
    #[writebehind(counter)]
    views: i64,
    #[writebehind(column = "like_count", counter)]
    likes: i32,
}

async fn sqlite(dir: &std::path::Path) -> Result<(String, sqlx::SqlitePool), sqlx::Error> {
    let url = format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display());
    let pool = sqlx::SqlitePool::connect(&url).await?;
    Ok((url, pool))
}

fn builder<K: writebehind::CacheKey, V: writebehind::CacheValue>(
    url: &str,
    wal: &std::path::Path,
) -> writebehind::Builder<K, V> {
    WriteBehind::<K, V>::builder(wal)
        .database(url)
        .create_tables(true)
        .flush_interval(Duration::from_secs(3600))
        .wait_timeout(Duration::from_secs(20))
}

#[tokio::test]
async fn a_derived_delta_record_adds_per_column_and_leaves_the_title() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (url, pool) = sqlite(dir.path()).await?;
    sqlx::query(
        "CREATE TABLE posts (id BIGINT PRIMARY KEY, title TEXT, \
         views BIGINT NOT NULL DEFAULT 0, like_count BIGINT NOT NULL DEFAULT 0)",
    )
    .execute(&pool)
    .await?;
    sqlx::query("INSERT INTO posts VALUES (1, 'hello', 10, 0)")
        .execute(&pool)
        .await?;

    let cache = builder::<i64, PostCounters>(&url, &dir.path().join("wal"))
        .open()
        .await?;
    for _ in 0..3 {
        cache.add(&1, PostCounters { views: 1, likes: 0 }).await?;
    }
    cache.add(&1, PostCounters { views: 0, likes: 2 }).await?;
    cache.add(&2, PostCounters { views: 5, likes: 1 }).await?;
    assert_eq!(
        cache.get(&1).await?,
        Some(PostCounters {
            views: 13,
            likes: 2
        })
    );
    cache.close().await?;

    let rows = sqlx::query("SELECT id, title, views, like_count FROM posts ORDER BY id")
        .fetch_all(&pool)
        .await?;
    let rows: Vec<(i64, Option<String>, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(rows, [(1, Some("hello".into()), 13, 2), (2, None, 5, 1)]);
    Ok(())
}

/// Every column type, created by the cache from the derived mapping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
#[writebehind(table = "things", key(name), version = "version")]
struct Thing {
    n: i32,
    x: f64,
    flag: bool,
    label: String,
    blob: Vec<u8>,
    id: uuid::Uuid,
    at: time::OffsetDateTime,
    seen: chrono::DateTime<chrono::Utc>,
    #[serde(with = "writebehind::__private::json_text")]
    doc: serde_json::Value,
    note: Option<String>,
    #[writebehind(skip)]
    scratch: u64,
}

#[tokio::test]
async fn every_column_type_is_written_and_read_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (url, _pool) = sqlite(dir.path()).await?;
    let thing = Thing {
        n: -7,
        x: 2.5,
        flag: true,
        label: "label".into(),
        blob: vec![0, 255, 7],
        id: uuid::Uuid::from_u128(0xfeed_beef),
        at: time::OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_000_001_000)?,
        seen: chrono::DateTime::from_timestamp_micros(1_600_000_000_000_002).ok_or("range")?,
        doc: serde_json::json!({"a": [1, 2]}),
        note: None,
        scratch: 0,
    };
    let cache = builder::<String, Thing>(&url, &dir.path().join("wal"))
        .open()
        .await?;
    cache.put("one", &thing).await?;
    cache.close().await?;

    // A fresh cache reads the row through: from_row on what SQLite gives back.
    let cache = builder::<String, Thing>(&url, &dir.path().join("wal2"))
        .open()
        .await?;
    assert_eq!(cache.get("one").await?, Some(thing));
    cache.close().await?;
    Ok(())
}
