//! Counters of what the cache did, and the [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::Inner;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) writes: AtomicU64,
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
}

/// A snapshot of the cache's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Acknowledged writes since open.
    pub writes: u64,
    /// `get` calls since open.
    pub reads: u64,
    /// Read-through queries sent to the database.
    pub loads: u64,
    /// Dirty (unflushed) entries now.
    pub dirty_entries: usize,
    /// Bytes held by dirty entries now.
    pub dirty_bytes: usize,
    /// Clean entries cached now.
    pub clean_entries: usize,
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
}

pub(crate) fn collect(inner: &Inner) -> Stats {
    let core = inner.state.stats();
    let c = &inner.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Stats {
        writes: get(&c.writes),
        reads: get(&c.reads),
        loads: get(&c.loads),
        dirty_entries: core.dirty_entries,
        dirty_bytes: core.dirty_bytes,
        clean_entries: core.clean_entries,
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
    }
}
