//! The crate's one error type.

use std::path::PathBuf;

use crate::Lsn;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"write"`, `"fsync"`, `"rename"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An earlier write or fsync failed; the log accepts nothing more until it is reopened.
    #[error("the WAL is poisoned by an earlier I/O failure; reopen it to recover")]
    Poisoned,
    /// The WAL was closed (or dropped) before the operation completed.
    #[error("the WAL is closed")]
    Closed,
    /// A record or header before the tail failed its checks (checksum, length, magic, version).
    #[error("corrupt WAL segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the damaged frame in that file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// Records are intact but an LSN is missing between them.
    #[error("LSN gap in WAL segment {segment} at offset {offset}: expected LSN {expected}, found {found}")]
    LsnGap {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the first record after the gap (0 for a segment header).
        offset: u64,
        /// The LSN that should have come next.
        expected: Lsn,
        /// The LSN found instead.
        found: Lsn,
    },
    /// A checkpoint file failed its checks.
    #[error("corrupt checkpoint {path}: {reason}")]
    CorruptCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// A payload larger than [`crate::MAX_PAYLOAD_LEN`] was passed to `append`; nothing was written.
    #[error("record payload of {len} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The maximum accepted.
        max: usize,
    },
    /// A checkpoint was requested for an LSN that has not been assigned yet.
    #[error("checkpoint LSN {lsn} is beyond the last assigned LSN {last}")]
    CheckpointAhead {
        /// The requested checkpoint LSN.
        lsn: Lsn,
        /// The last LSN assigned by this log.
        last: Lsn,
    },
    /// A checkpoint was requested for an LSN older than the newest existing checkpoint.
    #[error("checkpoint LSN {lsn} is older than the existing checkpoint at LSN {newest}")]
    CheckpointBehind {
        /// The requested checkpoint LSN.
        lsn: Lsn,
        /// The newest checkpoint already on disk.
        newest: Lsn,
    },
    /// A builder setting is out of range.
    #[error("invalid WAL configuration: {reason}")]
    Config {
        /// Which setting and why.
        reason: String,
    },
    /// A `Replicated` append was not acknowledged by the replica within its wait bound. The
    /// record is in the local log; the sink goes on trying to replicate it.
    #[error("the replica did not acknowledge LSN {lsn} within {waited:?} (it holds up to LSN {replicated}){}", last_error.as_ref().map(|e| format!("; last replica error: {e}")).unwrap_or_default())]
    ReplicaTimeout {
        /// The append's LSN.
        lsn: Lsn,
        /// The replicated watermark: every LSN up to it is in the replica.
        replicated: Lsn,
        /// How long the append waited.
        waited: std::time::Duration,
        /// The sink's last failure, if any since its last acknowledgement.
        last_error: Option<String>,
    },
    /// The replication sink stopped before the replica acknowledged this append.
    #[error("replication stopped before LSN {lsn} was acknowledged: {reason}")]
    ReplicaStopped {
        /// The append's LSN.
        lsn: Lsn,
        /// Why the sink stopped.
        reason: String,
    },
    /// Bytes read back from a replica failed their checks (checksum, length, version).
    #[error("replica data is corrupt: {reason}")]
    ReplicaData {
        /// What check failed, and where.
        reason: String,
    },
    /// Records read back from a replica are intact but an LSN is missing between them.
    #[error("LSN gap in the replica: expected LSN {expected}, found {found}")]
    ReplicaGap {
        /// The LSN that should have come next.
        expected: Lsn,
        /// The LSN found instead.
        found: Lsn,
    },
    /// [`crate::Wal::import`] was called after this log handed out an LSN to an append:
    /// imported records must come before any local one.
    #[error("WAL import refused: this log already took an append (last LSN {last})")]
    ImportAfterAppend {
        /// The last LSN assigned.
        last: Lsn,
    },
    /// Encoding or decoding a value through [`crate::codec`] failed.
    #[error("codec: {source}")]
    Codec {
        /// The bincode error.
        #[source]
        source: bincode::Error,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
