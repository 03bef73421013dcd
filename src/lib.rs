//! An embedded, persistent write-behind cache.
//!
//! A write ([`WriteBehind::add`], [`WriteBehind::put`],
//! [`WriteBehind::delete`]) lands in memory, is appended to a durable
//! write-ahead log and acknowledged; a background flusher writes the
//! coalesced result to SQL (SQLite, PostgreSQL, MySQL/MariaDB) in a few large
//! statements, with versioned conflict checks and retries. After a crash,
//! opening the cache replays the log: no acknowledged write is lost, and
//! none is applied twice (the flush position is committed in the same
//! transaction as the data).
//!
//! Writing into the user's own table: a [`Record`] maps a Rust type onto
//! an existing table (its [`Mapping`]: table, key columns, optional version
//! column, upsert or update-only), with keys in their native column types
//! ([`CacheKey`]: integers, text, bytes, UUID with the feature `uuid`, and
//! tuples for composite keys). Only the mapped columns are written. A
//! record whose columns are all counters ([`Merge::Counter`]) is a delta
//! record: [`WriteBehind::add`] adds it per column. The table is checked
//! against the mapping at open ([`Error::Schema`]).
//!
//! This crate composes three others: `writebehind-wal` (the log),
//! `writebehind-core` (the in-memory state) and `writebehind-writer` (SQL).
//!
//! Operating it: every figure is exported through the `metrics` facade (the
//! names and how to install a recorder are in [`metrics`]) and returned by
//! [`WriteBehind::stats`]; open, recovery, flushes, checkpoints and close
//! are `tracing` spans. Several instances may share one database (each its
//! own WAL directory); on PostgreSQL they drop each other's flushed keys
//! through `LISTEN/NOTIFY` ([`Builder::notify`]).
//!
//! Reads go through the cache: [`WriteBehind::get`] loads misses (one query
//! per key however many callers wait), [`WriteBehind::invalidate`] and
//! [`WriteBehind::invalidate_prefix`] drop clean copies of rows changed
//! behind the cache's back (never an unflushed write), and
//! [`Builder::refresh_ahead`] keeps hot keys' readers off the database
//! across their [`clean_ttl`](Builder::clean_ttl).
//!
//! The guide, the durability and failure semantics, replication, operations
//! and benchmarks are in the repository's `docs/` directory; the words used
//! here (cut, flush round, progress row, owner epoch, …) are defined in its
//! `docs/concepts.md`.
//!
//! # Opening a cache
//!
//! [`WriteBehind::builder`] takes the WAL directory (made if missing); every
//! setting has a default (the [`Builder`] methods state theirs), and
//! [`Builder::open`] recovers what the directory holds before it returns.
//! Without [`Builder::database`] the cache keeps everything in its WAL.
//!
//! ```
//! use std::time::Duration;
//! use writebehind::{Durability, WriteBehind};
//!
//! # #[tokio::main]
//! # async fn main() -> writebehind::Result<()> {
//! let dir = tempfile::tempdir().expect("a temporary directory");
//! let db = format!("sqlite://{}", dir.path().join("app.db").display());
//!
//! let cache = WriteBehind::<String, i64>::builder(dir.path().join("wal"))
//!     .database(db.clone())
//!     .create_tables(true) // the counter table and the bookkeeping tables
//!     .durability(Durability::Fsync) // the default: acknowledged once fdatasynced
//!     .flush_interval(Duration::from_millis(200))
//!     .open()
//!     .await?;
//!
//! cache.add("page:home", 1).await?;
//! cache.add("page:home", 2).await?; // coalesces with the add above
//! assert_eq!(cache.get("page:home").await?, Some(3));
//! cache.close().await?; // flushes the rest and returns every error
//!
//! // Opening the same directory again recovers it: the count is in the
//! // database now, and reads go through to it.
//! let cache = WriteBehind::<String, i64>::builder(dir.path().join("wal"))
//!     .database(db)
//!     .open()
//!     .await?;
//! assert_eq!(cache.get("page:home").await?, Some(3));
//! cache.close().await
//! # }
//! ```
//!
//! # Counters on your own table
//!
//! A delta record: two counter columns of an existing `posts` table, the
//! title left alone. `update_only` because the rows exist: a flush is one
//! `UPDATE posts SET views = views + Δ, likes = likes + Δ` per batch of posts.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use writebehind::{Record, WriteBehind};
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
//! #[writebehind(table = "posts", key(id), update_only)]
//! struct PostCounters {
//!     #[writebehind(counter)]
//!     views: i64,
//!     #[writebehind(counter)]
//!     likes: i64,
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let db = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
//! // The service's table, made by plain SQL before the cache opens.
//! let pool = sqlx::SqlitePool::connect(&db).await?;
//! sqlx::query(
//!     "CREATE TABLE posts (id BIGINT PRIMARY KEY, title TEXT NOT NULL, \
//!      views BIGINT NOT NULL DEFAULT 0, likes BIGINT NOT NULL DEFAULT 0)",
//! )
//! .execute(&pool)
//! .await?;
//! sqlx::query("INSERT INTO posts (id, title) VALUES (42, 'Hello')")
//!     .execute(&pool)
//!     .await?;
//!
//! let cache = WriteBehind::<i64, PostCounters>::builder(dir.path().join("wal"))
//!     .database(db)
//!     .create_tables(true) // the bookkeeping tables; posts is checked, not changed
//!     .open()
//!     .await?;
//! cache.add(&42, PostCounters { views: 1, likes: 0 }).await?;
//! cache.add(&42, PostCounters { views: 1, likes: 1 }).await?;
//! // The row plus the pending deltas.
//! assert_eq!(cache.get(&42).await?, Some(PostCounters { views: 2, likes: 1 }));
//! cache.close().await?;
//!
//! let (title, views, likes): (String, i64, i64) =
//!     sqlx::query_as("SELECT title, views, likes FROM posts WHERE id = 42")
//!         .fetch_one(&pool)
//!         .await?;
//! assert_eq!((title.as_str(), views, likes), ("Hello", 2, 1));
//! # Ok(())
//! # }
//! ```
//!
//! # A service's `main`
//!
//! `examples/readme.rs`, with its data under `./data`:
#![doc = ""]
#![doc = "```no_run"]
#![doc = include_str!("../examples/readme.rs")]
#![doc = "```"]

#[doc(hidden)]
#[path = "derive_support.rs"]
pub mod __private;
/// `#[serde(with = "writebehind::json_text")]` for a `serde_json::Value`
/// field of a record (feature `json`): the log keeps it as JSON text.
#[cfg(feature = "json")]
pub use __private::json_text;
mod backpressure;
mod blocking;
mod cache;
mod checkpoint;
mod config;
mod error;
mod events;
mod instance;
mod key;
mod lock;
mod log;
pub mod metrics;
mod open;
mod pipeline;
mod read;
mod recovery;
mod shared;
mod shutdown;
mod stats;
mod supervise;
mod value;
mod write;

// `#[derive(Record)]`: the derive, under the trait's name (`use
// writebehind::Record;` imports both, as with serde).
pub use writebehind_derive::Record;

pub use cache::WriteBehind;
pub use config::{Backpressure, Builder, ConflictHook};
pub use error::{Error, Limit, Result};
pub use key::{CacheKey, KeyText};
pub use recovery::RecoveryReport;
pub use stats::{LoadLatency, Stats};
pub use value::{CacheValue, Delta, Mapping, Record};

pub use writebehind_core::{Change, Lsn, Refresh as RefreshAhead, Value};
/// Replication to NATS JetStream (`Builder::replicate(nats::JetStream::new(url))`).
#[cfg(feature = "nats")]
pub use writebehind_nats as nats;
pub use writebehind_wal::Durability;
pub use writebehind_writer::{
    redact_url, Column, Conflict, ConflictPolicy, ErrorClass, Ident, LocalDeadLetter, Merge,
    Resolution, RetryPolicy, SqlType, SqlValue, WriteMode,
};

/// The rows in the local dead-letter file of the WAL directory `dir`: rows
/// the database refused and its dead-letter table could not hold either
/// (none when there is no such file).
pub fn local_dead_letters(dir: impl AsRef<std::path::Path>) -> Result<Vec<LocalDeadLetter>> {
    let path = dir.as_ref().join(open::DEAD_LETTER_FILE);
    Ok(writebehind_writer::read_local_dead_letters(&path)?)
}

// The README's and the guide's Rust blocks compile as doc tests, so the
// first code a user copies stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/guide.md")]
struct GuideDoctests;
