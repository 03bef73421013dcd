//! What an owner of a log (the cache) asks of a replicated copy of it.
//!
//! A replicated log lives in a crate of its own (`writebehind-nats` for NATS JetStream) that
//! depends on this crate only. The owner gets its settings as a [`ReplicatedLog`] and makes
//! one [`Replica`] per instance: at open it takes the instance over (an owner epoch that
//! fences earlier owners) and reads back what the replica holds ([`RebuildSource`]); the WAL
//! then hands it every group ([`ReplicaSink`]) and waits on its [`ReplicaWatermark`]; the owner
//! tells it what it may drop (a flush, a checkpoint), asks whether it was fenced and for its
//! figures, and stops it at close.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::rebuild::RebuildSource;
use crate::{Error, Lsn, ReplicaSink, ReplicaWatermark, Wal};

/// A future a replica returns (its traits stay object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The local log as a replica reads it back (what its queue dropped, a checkpoint to
/// store). An owner may wrap the log with what must live exactly as long (its directory
/// lock): a replica holds it only through a `Weak` and only while reading.
pub trait ReadBack: Send + Sync {
    /// The log.
    fn wal(&self) -> &Wal;
}

impl ReadBack for Wal {
    fn wal(&self) -> &Wal {
        self
    }
}

/// A replicated log's settings: where it is, and the [`Replica`] of an instance.
pub trait ReplicatedLog: Send + Sync + Debug {
    /// Where the replica is (for errors and logs).
    fn url(&self) -> &str;
    /// Checks the settings before anything is opened ([`ReplicaError::Config`]).
    fn check(&self) -> Result<(), ReplicaError>;
    /// The replica of `instance`: nothing claimed, nothing started yet.
    fn replica(&self, instance: &str) -> Result<Arc<dyn Replica>, ReplicaError>;
}

/// One instance's replica: the WAL's sink, and what its owner asks of it.
pub trait Replica: ReplicaSink {
    /// How far the replica holds the log (the WAL's `Replicated` waits use it).
    fn watermark(&self) -> &ReplicaWatermark;
    /// At open, before the local log is opened: claims the instance (a newer owner epoch:
    /// earlier owners are fenced from here on) and reads back what the replica holds, which
    /// no earlier owner can add to any more. An unreachable replica is retried for
    /// `patience`, then [`ReplicaError::Replication`].
    fn take_over(
        &self,
        patience: Duration,
    ) -> BoxFuture<'_, Result<Box<dyn RebuildSource>, ReplicaError>>;
    /// The replica could not be reached at open: claim once it answers, from `base` (the
    /// first LSN this owner gives out; older owners' records from there on are superseded).
    fn defer_claim(&self, base: Lsn);
    /// The owner epoch claimed, once claimed.
    fn epoch(&self) -> Option<u64>;
    /// [`ReplicaError::Fenced`] once a newer owner claimed the instance: nothing written
    /// here is kept any more.
    fn fenced(&self) -> Option<ReplicaError>;
    /// A flush committed everything below `position` to the database: the replica may drop
    /// it (as far as the local log is durable).
    fn flushed(&self, position: Lsn);
    /// A local checkpoint was written at `lsn`: the replica stores it and may drop what
    /// precedes it.
    fn checkpointed(&self, lsn: Lsn);
    /// Figures for stats and metrics; `last_lsn` is the local log's end.
    fn counts(&self, last_lsn: Lsn) -> ReplicaCounts;
    /// Starts replicating on the current tokio runtime. `log` is read back for what the
    /// sink's queue dropped; `panicked` counts a panic of the replica's task (its waits then
    /// fail at once).
    fn start(
        self: Arc<Self>,
        log: Weak<dyn ReadBack>,
        panicked: Box<dyn Fn() + Send + Sync>,
    ) -> Result<(), ReplicaError>;
    /// Replicates what is left and stops, within `bound`. An error names what the replica
    /// did not get (it stays in the local log for the next open) or why the task stopped.
    fn stop(&self, bound: Duration) -> BoxFuture<'_, Result<(), ReplicaError>>;
    /// Stops at once (the owner went away without closing).
    fn abort(&self);
}

/// A replica's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    /// Every LSN up to this one is in the replica.
    pub replicated_lsn: Lsn,
    /// How long the replica has been behind the local log (zero when caught up).
    pub lag: Duration,
    /// Sessions that failed (replica unreachable, a publish not acknowledged).
    pub failures: u64,
    /// Messages published.
    pub messages: u64,
    /// Messages the replica already held (a retried publish).
    pub duplicates: u64,
    /// Purges of what a flush or a checkpoint made unneeded.
    pub purges: u64,
    /// Checkpoints stored.
    pub checkpoints: u64,
    /// The last failure since the last acknowledgement.
    pub last_error: Option<String>,
}

/// What a replicated log reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The replica could not be reached, refused a request, or holds something unexpected.
    #[error("replication via {url}: {reason}")]
    Replication {
        /// Where the replica is.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A newer owner claimed the instance on the replica.
    #[error(
        "instance {instance:?} is owned by a newer owner (owner epoch {owner_epoch}; this cache claimed {ours}): \
         this cache is fenced, flushes nothing more and refuses writes; its unflushed writes stay in its WAL"
    )]
    Fenced {
        /// The instance id.
        instance: String,
        /// The owner epoch this owner claimed.
        ours: u64,
        /// The newer owner's epoch.
        owner_epoch: u64,
    },
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// The replica's task stopped (a panic, or it was aborted).
    #[error("the replication task stopped: {reason}")]
    Stopped {
        /// What ended it.
        reason: String,
    },
    /// The local log, or bytes read back from the replica, failed.
    #[error(transparent)]
    Wal(#[from] Error),
}
