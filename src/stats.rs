//! Counters of what the cache did, and the [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::shared::Shared;

/// What the write and read paths count (the flush pipeline, backpressure
/// and compaction count their own).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    Writes,
    Adds,
    Puts,
    Deletes,
    Reads,
    Loads,
    Invalidations,
}

/// Event counts, one atomic each: the hot path pays one relaxed add.
#[derive(Default)]
pub(crate) struct Counters([AtomicU64; 7]);

impl Counters {
    /// Adds `n`; returns the count before.
    #[inline]
    pub(crate) fn add(&self, what: Count, n: u64) -> u64 {
        self.0[what as usize].fetch_add(n, Ordering::Relaxed)
    }

    pub(crate) fn get(&self, what: Count) -> u64 {
        self.0[what as usize].load(Ordering::Relaxed)
    }
}

/// A snapshot of the cache's figures: the same as its metrics (see the
/// table in [`metrics`](crate::metrics)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Acknowledged writes since open.
    pub writes: u64,
    /// Of those, counter adds.
    pub adds: u64,
    /// Of those, puts (including `update`s that put).
    pub puts: u64,
    /// Of those, deletes (including `update`s that delete).
    pub deletes: u64,
    /// `get` calls since open.
    pub reads: u64,
    /// Lookups answered from memory (dirty or clean entry).
    pub hits: u64,
    /// Lookups that needed the database (a miss, or a counter whose base is unknown).
    pub misses: u64,
    /// Read-through queries sent to the database.
    pub loads: u64,
    /// Dirty (unflushed) entries now.
    pub dirty_entries: usize,
    /// Bytes held by dirty entries now.
    pub dirty_bytes: usize,
    /// Clean entries cached now.
    pub clean_entries: usize,
    /// Age of the oldest write not yet in the database (zero without a database).
    pub oldest_unflushed: Duration,
    /// Last LSN assigned.
    pub last_lsn: u64,
    /// Last LSN on disk.
    pub durable_lsn: u64,
    /// Every write at or below this LSN is in the database.
    pub flushed_lsn: u64,
    /// WAL bytes on disk (segments and checkpoints).
    pub wal_bytes: u64,
    /// WAL segment files.
    pub wal_segments: usize,
    /// Flushes committed.
    pub flushes: u64,
    /// Rows written by those flushes.
    pub rows_flushed: u64,
    /// Flush rounds that failed (and will be retried).
    pub flush_failures: u64,
    /// Retries made by the flusher.
    pub retries: u64,
    /// Version conflicts met.
    pub conflicts: u64,
    /// Rows sent to the dead-letter table.
    pub dead_letters: u64,
    /// Writes that waited for room.
    pub backpressure_waits: u64,
    /// Writes refused for lack of room.
    pub backpressure_rejections: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// WAL records replayed when the cache was opened.
    pub recovery_records: u64,
    /// Time the open spent recovering.
    pub recovery_time: Duration,
    /// `NOTIFY` payloads sent announcing flushed keys (PostgreSQL).
    pub notifications: u64,
    /// Keys another instance announced that this one acted on: its copy
    /// dropped, loads in progress refused (announced keys it already held at
    /// the announced version are not counted).
    pub invalidations: u64,
    /// Panics caught in user hooks (`on_conflict`, a conflict resolver) and
    /// background tasks; each was logged and the work went on.
    pub panics: u64,
    /// Background checkpoints that failed (logged; retried on the next turn).
    pub checkpoint_failures: u64,
    /// The last failure of the flusher (cleared by the next committed flush).
    pub last_flush_error: Option<String>,
    /// Replication (feature `nats`): every write at or below this LSN is
    /// stored by JetStream (0 without replication).
    pub replicated_lsn: u64,
    /// Replication lag in LSNs: `last_lsn - replicated_lsn` (0 without replication).
    pub replication_lag_lsns: u64,
    /// Replication lag in time: how long JetStream has been behind the
    /// local WAL (zero when caught up or without replication).
    pub replication_lag: Duration,
    /// Replication sessions that failed (NATS unreachable, a publish not
    /// acknowledged); each was logged and retried with backoff.
    pub replication_failures: u64,
    /// Messages published to JetStream (each one or more WAL groups' frames).
    pub replication_messages: u64,
    /// Of those, ones JetStream reported as duplicates of a message it had
    /// (a publish retried after a lost acknowledgement): dropped by it.
    pub replication_duplicates: u64,
    /// Purges of the stream below a flushed position or a checkpoint.
    pub replication_purges: u64,
    /// Checkpoints stored in JetStream's object store.
    pub replication_checkpoints: u64,
    /// The replication's last failure (cleared by the next acknowledgement).
    pub last_replication_error: Option<String>,
}

impl Stats {
    /// hits / (hits + misses); 0 before any lookup.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

pub(crate) fn collect(sh: &Shared) -> Stats {
    let core = sh.state().stats();
    let c = sh.counters();
    let wal = sh.wal();
    let flush = sh.pipeline().map(|p| p.counts()).unwrap_or_default();
    #[cfg(feature = "nats")]
    let (replicates, replica) = match sh.replica() {
        Some(r) => (true, r.counts(wal.last_lsn())),
        None => (false, Default::default()),
    };
    #[cfg(not(feature = "nats"))]
    let (replicates, replica) = (false, ReplicaFigures::default());
    Stats {
        writes: c.get(Count::Writes),
        adds: c.get(Count::Adds),
        puts: c.get(Count::Puts),
        deletes: c.get(Count::Deletes),
        reads: c.get(Count::Reads),
        hits: core.hits,
        misses: core.misses,
        loads: c.get(Count::Loads),
        dirty_entries: core.dirty_entries,
        dirty_bytes: core.dirty_bytes,
        clean_entries: core.clean_entries,
        oldest_unflushed: sh.unflushed().age(sh.epoch()),
        last_lsn: wal.last_lsn(),
        durable_lsn: wal.durable_lsn(),
        flushed_lsn: flush.flushed_lsn,
        wal_bytes: wal.disk_usage(),
        wal_segments: wal.segment_count(),
        flushes: flush.flushes,
        rows_flushed: flush.rows,
        flush_failures: flush.failures,
        retries: flush.retries,
        conflicts: flush.conflicts,
        dead_letters: flush.dead_letters,
        backpressure_waits: sh.room().waits(),
        backpressure_rejections: sh.room().rejections(),
        checkpoints: sh.compactor().checkpoints(),
        recovery_records: sh.recovery().records_replayed,
        recovery_time: sh.recovery().elapsed,
        notifications: flush.notifications,
        invalidations: c.get(Count::Invalidations),
        panics: sh.supervisor().panics() + flush.hook_panics,
        checkpoint_failures: sh.supervisor().errors(),
        last_flush_error: flush.last_error,
        replicated_lsn: replica.acked,
        replication_lag_lsns: if replicates {
            wal.last_lsn().saturating_sub(replica.acked)
        } else {
            0
        },
        replication_lag: replica.lag_seconds,
        replication_failures: replica.failures,
        replication_messages: replica.messages,
        replication_duplicates: replica.duplicates,
        replication_purges: replica.purges,
        replication_checkpoints: replica.checkpoints,
        last_replication_error: replica.last_error,
    }
}

/// What [`collect`] shows without replication.
#[cfg(not(feature = "nats"))]
#[derive(Default)]
struct ReplicaFigures {
    acked: u64,
    lag_seconds: Duration,
    failures: u64,
    messages: u64,
    duplicates: u64,
    purges: u64,
    checkpoints: u64,
    last_error: Option<String>,
}
