//! Counters of what the cache did, and the [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cache::Inner;
use crate::metrics::Op;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) writes: AtomicU64,
    /// Writes by op, indexed by `metrics::Op`.
    pub(crate) writes_by_op: [AtomicU64; 3],
    pub(crate) reads: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) rows_flushed: AtomicU64,
    pub(crate) flush_failures: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    pub(crate) backpressure_waits: AtomicU64,
    pub(crate) backpressure_rejections: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) notifications: AtomicU64,
    pub(crate) invalidations: AtomicU64,
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

pub(crate) fn collect(inner: &Inner) -> Stats {
    let core = inner.state.stats();
    let c = &inner.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Stats {
        writes: get(&c.writes),
        adds: get(&c.writes_by_op[Op::Add as usize]),
        puts: get(&c.writes_by_op[Op::Put as usize]),
        deletes: get(&c.writes_by_op[Op::Delete as usize]),
        reads: get(&c.reads),
        hits: core.hits,
        misses: core.misses,
        loads: get(&c.loads),
        dirty_entries: core.dirty_entries,
        dirty_bytes: core.dirty_bytes,
        clean_entries: core.clean_entries,
        oldest_unflushed: inner.unflushed.age(inner.epoch),
        last_lsn: inner.wal.last_lsn(),
        durable_lsn: inner.wal.durable_lsn(),
        flushed_lsn: inner.status.borrow().flushed,
        wal_bytes: inner.wal.disk_usage(),
        wal_segments: inner.wal.segment_count(),
        flushes: get(&c.flushes),
        rows_flushed: get(&c.rows_flushed),
        flush_failures: get(&c.flush_failures),
        retries: inner.retries(),
        conflicts: get(&c.conflicts),
        dead_letters: get(&c.dead_letters),
        backpressure_waits: get(&c.backpressure_waits),
        backpressure_rejections: get(&c.backpressure_rejections),
        checkpoints: get(&c.checkpoints),
        recovery_records: inner.recovery.records_replayed,
        recovery_time: inner.recovery.elapsed,
        notifications: get(&c.notifications),
        invalidations: get(&c.invalidations),
    }
}
