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
