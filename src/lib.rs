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
//! This crate composes three others: `writebehind-wal` (the log),
//! `writebehind-core` (the in-memory state) and `writebehind-writer` (SQL).
//!
//! Operating it: every figure is exported through the `metrics` facade (the
//! names and how to install a recorder are in [`metrics`]) and returned by
//! [`WriteBehind::stats`]; open, recovery, flushes, checkpoints and close
//! are `tracing` spans. Several instances may share one database (each its
//! own WAL directory); on PostgreSQL they drop each other's flushed keys
//! through `LISTEN/NOTIFY` ([`Builder::notify`]).
#![doc = ""]
#![doc = "```no_run"]
#![doc = include_str!("../examples/readme.rs")]
#![doc = "```"]

mod cache;
mod checkpoint;
mod config;
mod error;
mod flusher;
mod instance;
mod key;
mod log;
pub mod metrics;
mod recovery;
mod stats;
mod value;

pub use cache::WriteBehind;
pub use config::{Backpressure, Builder, ConflictHook};
pub use error::{Error, Limit, Result};
pub use key::{CacheKey, KeyText};
pub use recovery::RecoveryReport;
pub use stats::Stats;
pub use value::{CacheValue, Record};

pub use writebehind_core::{Lsn, Value};
pub use writebehind_wal::Durability;
pub use writebehind_writer::{
    redact_url, Column, Conflict, ConflictPolicy, Ident, Resolution, RetryPolicy, SqlType, SqlValue,
};
