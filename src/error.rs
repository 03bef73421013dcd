//! The error type of the public handle.

use std::path::PathBuf;
use std::time::Duration;

/// What a limit refers to when backpressure applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The number of dirty (unflushed) entries.
    DirtyEntries,
    /// The bytes held by dirty entries.
    DirtyBytes,
    /// The bytes of WAL on disk.
    WalBytes,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::DirtyEntries => "dirty entries",
            Limit::DirtyBytes => "dirty bytes",
            Limit::WalBytes => "WAL bytes",
        })
    }
}

/// Everything that can go wrong in the cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The write-ahead log failed (I/O, corruption, poisoned after a failed fsync).
    #[error("write-ahead log: {0}")]
    Wal(#[from] writebehind_wal::Error),
    /// The in-memory state refused the write (size limits, type mismatch, overflow).
    #[error("{0}")]
    Rejected(#[from] writebehind_core::Error),
    /// The database writer failed.
    #[error("database: {0}")]
    Database(#[from] writebehind_writer::Error),
    /// A limit is full and the backpressure policy gave up.
    #[error("backpressure: {limit} limit reached (waited {waited:?})")]
    Backpressure {
        /// Which limit is full.
        limit: Limit,
        /// How long the write waited before giving up.
        waited: Duration,
    },
    /// A key or value could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A WAL record could not be understood during recovery.
    #[error("recovery of {dir}: {reason} (lsn {lsn})")]
    Recovery {
        /// The WAL directory.
        dir: PathBuf,
        /// The record's LSN.
        lsn: u64,
        /// What was wrong.
        reason: String,
    },
    /// A flush round failed; the flusher keeps retrying in the background.
    #[error("flush failed: {0}")]
    Flush(String),
    /// A read-through load failed.
    #[error("loading key {key:?} from the database failed: {reason}")]
    Load {
        /// The key being loaded.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// `close` met these errors (what was not flushed stays in the WAL).
    #[error("close: {}", .0.join("; "))]
    Close(Vec<String>),
    /// The cache was closed or its background task stopped.
    #[error("the cache is closed")]
    Closed,
    /// I/O outside the WAL (the instance id file).
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
