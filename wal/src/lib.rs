//! `writebehind-wal` owns writebehind's write-ahead log: segment files, record framing and
//! checksums, group commit, durability modes, the recovery scan, truncation and checkpoint
//! files. It knows nothing of keys, values or SQL: records are `(lsn, kind, payload)`.
//!
//! ```
//! # fn main() -> writebehind_wal::Result<()> {
//! # let tmp = tempfile::tempdir().map_err(|e| writebehind_wal::Error::Config { reason: e.to_string() })?;
//! use writebehind_wal::{Durability, WalBuilder};
//! let (wal, recovery) = WalBuilder::new(tmp.path()).durability(Durability::Fsync).open()?;
//! assert_eq!(recovery.next_lsn, 1);
//! let lsn = wal.append(1, b"hello")?.wait()?; // durable once this returns
//! let records: Vec<_> = wal.replay(1)?.collect::<Result<_, _>>()?;
//! assert_eq!((records[0].lsn, records[0].payload.as_slice()), (lsn, &b"hello"[..]));
//! wal.close()?;
//! # Ok(()) }
//! ```
//!
//! On-disk formats: see the `frame` and `checkpoint` module docs. Torn tail versus corruption:
//! see [`reader`].

use std::time::Duration;

// The path of a record: `wal` (append) → `commit_cell` (who commits) → `committer` (the
// group write, segment rotation) → `syncer` (fdatasync) → `watermarks` (written and durable LSNs; waits
// through `waiters`) → `ticket` (the caller's `Append`). Opening: `builder` → `recovery`.
mod builder;
pub mod checkpoint;
mod checkpoint_files;
pub mod codec;
mod commit_cell;
mod committer;
mod error;
mod frame;
pub mod fs;
mod import;
pub mod inspect;
pub mod io;
pub mod reader;
pub mod rebuild;
mod recovery;
mod replay;
pub mod replica;
mod replica_watermark;
pub mod replication;
mod segment;
pub mod sync_watermark;
mod syncer;
mod ticket;
mod waiters;
mod wal;
mod watermarks;

pub use builder::WalBuilder;
pub use checkpoint::Checkpoint;
pub use error::{Error, Result};
pub use frame::{FLAG_PREALLOCATED, FRAME_HEADER_LEN, MAX_PAYLOAD_LEN, SEGMENT_HEADER_LEN};
pub use io::{Io, StdIo};
pub use rebuild::{is_empty_log, RebuildSource, Rebuilt};
pub use recovery::{CheckpointInfo, Recovery, Skipped, TornTail};
pub use replay::Replay;
pub use replica::{Group, ReplicaSink, ReplicaWait, ReplicaWatermark};
pub use replication::{ReadBack, Replica, ReplicaCounts, ReplicaError, ReplicatedLog};
pub use ticket::{Append, AppendFuture};
pub use wal::Wal;

pub(crate) use segment::{parse_lsn_name, segment_name, SEGMENT_SUFFIX};

/// Log sequence number. The first record ever gets 1; 0 means "nothing".
pub type Lsn = u64;

/// Smallest accepted segment size.
pub const MIN_SEGMENT_SIZE: u64 = 128;
/// Default segment size (64 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Default capacity of the hand-off queue, in records.
pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;

/// When an append's ticket resolves, and so what a crash can lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The ticket resolves after the record is fdatasynced. Loss window: none — a resolved
    /// ticket survives power loss. Concurrent appends share one fdatasync (group commit).
    Fsync,
    /// The ticket resolves once the record is written to the OS; the committer fdatasyncs at
    /// most `interval` after the write. Loss window: a process crash loses nothing resolved;
    /// a power loss or kernel crash loses at most the last `interval` of resolved records.
    Buffered {
        /// Longest time a written record stays unsynced.
        interval: Duration,
    },
    /// The ticket resolves once the record is written to the OS; the log fsyncs only when a
    /// segment rotates, on `sync`/`close`, or for a `Fsync` append. Loss window: a process
    /// crash loses nothing resolved; a power loss may lose anything not yet synced.
    None,
    /// The ticket resolves once the record is written to the OS and the replica (see
    /// [`WalBuilder::replica`]) acknowledged it; the committer fdatasyncs it locally within
    /// [`REPLICATED_SYNC_INTERVAL`]. Loss window: none while the replica survives, even when
    /// this machine is lost. A log without a replica refuses it. A replica that does not
    /// acknowledge within the replica's wait bound fails the ticket with
    /// [`Error::ReplicaTimeout`] (the record stays in the local log).
    Replicated,
}

/// Longest time a `Replicated` record stays unsynced locally (the replica holds it already).
pub const REPLICATED_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// A frame read back from the log: one appended payload with its LSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its LSN.
    pub lsn: Lsn,
    /// The caller's payload kind.
    pub kind: u8,
    /// The caller's bytes.
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn wal_is_send_sync() {
        assert_send_sync::<Wal>();
        assert_send_sync::<Append>();
    }
}
