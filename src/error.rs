//! The error type of the public handle.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use writebehind_core::Lsn;
use writebehind_writer::ErrorClass;

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
///
/// What a failed write means: an error raised before the write reached the
/// WAL (`Rejected`, `KeyRefused`, `Backpressure`, `Codec`, `Closed`) changed
/// nothing. A `Wal` error from a write is *indeterminate*, like a failed
/// commit: the record may or may not be on disk. The log is then poisoned:
/// reads, writes and new flushes of this cache fail with that error, so no
/// one sees the uncertain state, and the next open decides it from what is
/// on disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The write-ahead log failed (I/O, corruption, poisoned after a failed fsync).
    #[error("write-ahead log: {0}")]
    Wal(#[from] writebehind_wal::Error),
    /// The in-memory state refused the write (size limits, type mismatch, overflow).
    #[error("{0}")]
    Rejected(#[from] writebehind_core::Error),
    /// The database cannot hold this key (e.g. a NUL byte on PostgreSQL, or
    /// longer than MySQL's key column). Refused before the WAL: nothing changed.
    #[error("key {key:?} refused: {reason}")]
    KeyRefused {
        /// The key (its first 64 characters).
        key: String,
        /// Why the database cannot hold it.
        reason: String,
    },
    /// A database operation failed; [`Error::class`] says whether a retry can help.
    #[error("database: {0}")]
    Database(writebehind_writer::Error),
    /// A failed attempt of the flusher, as waiters see it (its text and class).
    #[error("{message}")]
    DatabaseFailure {
        /// The database error's text.
        message: String,
        /// Whether a retry can help.
        class: ErrorClass,
    },
    /// A table or column name is not a plain identifier.
    #[error("invalid identifier {name:?}: {reason}")]
    InvalidIdentifier {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The table does not fit the mapping (checked at open, before any
    /// write is accepted): it is missing, a mapped column is missing or of
    /// an incompatible type, the key columns are not its primary key or a
    /// unique index, or the version column is not an integer.
    #[error(
        "table {table}{}: expected {expected}, found {found}",
        .column.as_ref().map(|c| format!(", column {c}")).unwrap_or_default()
    )]
    Schema {
        /// The table.
        table: String,
        /// The column, when the mismatch is one column's.
        column: Option<String>,
        /// What the mapping needs.
        expected: String,
        /// What the database has.
        found: String,
    },
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
    /// The WAL path exists and is not a directory.
    #[error("{path} is not a directory (the WAL needs a directory of its own)")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// Another cache (in this or another process) holds the WAL directory.
    #[error("the WAL directory {dir} is in use by another cache (its LOCK file is held)")]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The database has flushed this instance further than its WAL reaches:
    /// the directory was reset or restored from an old copy. Nothing is
    /// flushed (new writes would be taken for ones already applied); they
    /// stay in the WAL.
    #[error(
        "the database has flushed this instance up to position {database}, but the WAL in {dir} ends at {wal}: \
         the directory was reset or restored from an old copy; nothing is flushed from it (use a new WAL directory)"
    )]
    ProgressAhead {
        /// The WAL directory.
        dir: PathBuf,
        /// The position in the database's progress row.
        database: Lsn,
        /// The last position of the WAL when it was opened.
        wal: Lsn,
    },
    /// Another owner claimed this cache's instance id in the database (an
    /// `adopt`, a rebuild, a second process or WAL directory opened with the
    /// same `instance_id`): its owner epoch is newer than the one this cache
    /// claimed at open. Permanent: this cache flushes nothing more (its
    /// flusher stops; `flush`, `flushed` and reads waiting for a flush fail
    /// with this at once, `close` reports it among its errors) and refuses
    /// new writes with it before they reach the WAL. The writes already in
    /// the WAL stay there, unflushed: an operator can hand them to the new
    /// owner (`writebehind adopt`) or reopen the directory, which claims
    /// the instance back.
    #[error(
        "instance {instance:?} is owned by a newer owner (owner epoch {owner_epoch}; this cache claimed {ours}): \
         this cache is fenced, flushes nothing more and refuses writes; its unflushed writes stay in its WAL"
    )]
    Fenced {
        /// The instance id.
        instance: String,
        /// The owner epoch this cache claimed.
        ours: u64,
        /// The new owner's epoch, found in the database's progress row.
        owner_epoch: u64,
    },
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
    /// A flush round failed; the flusher retries in the background with backoff.
    #[error("flush failed: {0}")]
    Flush(#[source] Arc<Error>),
    /// The writes up to `target` did not reach the database within the
    /// wait bound. They stay safe in the WAL and are flushed when the
    /// database can take them.
    #[error(
        "the writes up to position {target} did not reach the database within {waited:?} (flushed up to {flushed}){}",
        cause_text(.cause)
    )]
    FlushTimeout {
        /// The position waited for.
        target: Lsn,
        /// The position the database has.
        flushed: Lsn,
        /// How long the call waited.
        waited: Duration,
        /// The last failure of the flusher, if it met one.
        cause: Option<Arc<Error>>,
    },
    /// A read-through load failed.
    #[error("loading key {key:?} from the database failed: {source}")]
    Load {
        /// The key being loaded.
        key: String,
        /// What went wrong.
        #[source]
        source: Arc<Error>,
    },
    /// A counter's database value is not known yet: a flush of it has not
    /// settled within the wait bound.
    #[error("counter {key:?}: a flush of it has not settled within {waited:?}, so its database value is not known{}", cause_text(.cause))]
    Unsettled {
        /// The counter.
        key: String,
        /// How long the read waited.
        waited: Duration,
        /// The flusher's last failure, if any.
        cause: Option<Arc<Error>>,
    },
    /// NATS JetStream replication failed: it could not be reached, or
    /// refused or lost what it was given. With `Durability::Replicated`
    /// writes this comes as a WAL `ReplicaTimeout` naming the same cause.
    #[error("NATS replication via {url}: {reason}")]
    Replication {
        /// The NATS server(s).
        url: String,
        /// What failed.
        reason: String,
    },
    /// Background work stopped (a panic or an aborted task): what it was
    /// and why. Writes stay in the WAL for the next open.
    #[error("the {task} stopped: {reason}")]
    Stopped {
        /// Which task.
        task: &'static str,
        /// What ended it.
        reason: String,
    },
    /// A user hook or conflict resolver panicked; the pipeline went on.
    #[error("{hook} panicked: {message}")]
    HookPanicked {
        /// Which hook.
        hook: &'static str,
        /// The panic's message.
        message: String,
    },
    /// `close` met these errors (what was not flushed stays in the WAL).
    #[error("close met {} error(s): {}", .0.len(), join(.0))]
    Close(Vec<Error>),
    /// The cache was closed.
    #[error("the cache is closed")]
    Closed,
    /// I/O outside the WAL (the instance id file, the lock file).
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn cause_text(cause: &Option<Arc<Error>>) -> String {
    match cause {
        Some(e) => format!("; last failure: {e}"),
        None => String::new(),
    }
}

fn join(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A replica's errors, as the cache reports them.
impl From<writebehind_wal::ReplicaError> for Error {
    fn from(e: writebehind_wal::ReplicaError) -> Self {
        use writebehind_wal::ReplicaError as R;
        match e {
            R::Replication { url, reason } => Error::Replication { url, reason },
            R::Fenced {
                instance,
                ours,
                owner_epoch,
            } => Error::Fenced {
                instance,
                ours,
                owner_epoch,
            },
            R::Config(reason) => Error::Config(reason),
            R::Stopped { reason } => Error::Stopped {
                task: "replication task",
                reason,
            },
            R::Wal(e) => Error::Wal(e),
            // A variant added later, as the replica worded it.
            other => Error::Stopped {
                task: "replication task",
                reason: other.to_string(),
            },
        }
    }
}

impl From<writebehind_writer::Error> for Error {
    fn from(e: writebehind_writer::Error) -> Self {
        match e {
            writebehind_writer::Error::InvalidIdent { name, reason } => {
                Error::InvalidIdentifier { name, reason }
            }
            writebehind_writer::Error::Fenced {
                instance,
                ours,
                current,
            } => Error::Fenced {
                instance,
                ours,
                owner_epoch: current,
            },
            writebehind_writer::Error::Schema {
                table,
                column,
                expected,
                found,
            } => Error::Schema {
                table,
                column,
                expected,
                found,
            },
            other => Error::Database(other),
        }
    }
}

impl Error {
    /// For an error that came from the database: whether retrying can help
    /// ([`ErrorClass::Transient`]: unreachable, deadlock, serialization) or
    /// not ([`ErrorClass::Permanent`]: schema, data). `None` for errors of
    /// other kinds. Looks through flush, load and timeout wrappers.
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            Error::Database(e) => Some(e.class()),
            Error::DatabaseFailure { class, .. } => Some(*class),
            Error::Flush(e) | Error::Load { source: e, .. } => e.class(),
            Error::FlushTimeout { cause, .. } | Error::Unsettled { cause, .. } => {
                cause.as_ref().and_then(|e| e.class())
            }
            Error::Fenced { .. } | Error::Schema { .. } => Some(ErrorClass::Permanent),
            _ => None,
        }
    }

    /// When this cache was fenced ([`Error::Fenced`]), the new owner's
    /// epoch; looks through flush and close wrappers.
    pub fn fenced_by(&self) -> Option<u64> {
        match self {
            Error::Fenced { owner_epoch, .. } => Some(*owner_epoch),
            Error::Flush(e) => e.fenced_by(),
            Error::Close(errors) => errors.iter().find_map(Error::fenced_by),
            _ => None,
        }
    }

    /// Whether this is a database failure that a retry can cure.
    pub fn is_transient(&self) -> bool {
        self.class() == Some(ErrorClass::Transient)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_errors_read_once() {
        let e = Error::Close(vec![Error::Closed, Error::Config("x".into())]);
        assert_eq!(
            e.to_string(),
            "close met 2 error(s): the cache is closed; invalid configuration: x"
        );
    }

    #[test]
    fn flush_errors_keep_their_source_and_class() {
        let inner = Arc::new(Error::Database(writebehind_writer::Error::Config(
            "bad".into(),
        )));
        let e = Error::Flush(inner);
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.class(), Some(ErrorClass::Permanent));
        assert!(!e.is_transient());
    }

    #[test]
    fn a_fenced_writer_error_becomes_fenced_and_is_permanent() {
        let e: Error = writebehind_writer::Error::Fenced {
            instance: "i".into(),
            ours: 3,
            current: 4,
        }
        .into();
        assert!(
            matches!(&e, Error::Fenced { instance, ours: 3, owner_epoch: 4 } if instance == "i"),
            "{e:?}"
        );
        assert_eq!(e.class(), Some(ErrorClass::Permanent));
        assert_eq!(Error::Close(vec![Error::Closed, e]).fenced_by(), Some(4));
        assert_eq!(Error::Closed.fenced_by(), None);
    }

    #[test]
    fn a_schema_mismatch_keeps_its_fields_and_is_permanent() {
        let e: Error = writebehind_writer::Error::Schema {
            table: "posts".into(),
            column: Some("views".into()),
            expected: "BIGINT".into(),
            found: "text".into(),
        }
        .into();
        assert!(
            matches!(&e, Error::Schema { table, column: Some(c), expected, found }
                if table == "posts" && c == "views" && expected == "BIGINT" && found == "text"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "table posts, column views: expected BIGINT, found text"
        );
        assert_eq!(e.class(), Some(ErrorClass::Permanent));
    }

    #[test]
    fn invalid_identifiers_are_their_own_variant() {
        let e: Error = writebehind_writer::Error::InvalidIdent {
            name: "a b".into(),
            reason: "spaces",
        }
        .into();
        assert!(matches!(e, Error::InvalidIdentifier { .. }));
    }
}
