//! The recorder's handles of one cache: what each part records as it
//! goes, and the publishing of the figures the cache counts itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use parking_lot::Mutex;

use super::describe;
use crate::stats::Stats;

/// Index of a write's op in the per-op counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Add = 0,
    Put = 1,
    Delete = 2,
}

impl Op {
    pub(crate) fn of(change: &writebehind_core::Change) -> Op {
        match change {
            writebehind_core::Change::Add(_) | writebehind_core::Change::AddCols(_) => Op::Add,
            writebehind_core::Change::Put(_) => Op::Put,
            writebehind_core::Change::Delete => Op::Delete,
        }
    }
}

/// Waits longer than this are logged as slow fsyncs.
const SLOW_FSYNC: Duration = Duration::from_secs(1);

/// The recorder's handles of one cache, registered once at open.
pub(crate) struct Metrics {
    writes: [Counter; 3],
    hits: Counter,
    misses: Counter,
    hit_ratio: Gauge,
    loads: Counter,
    load_seconds: Histogram,
    refreshes: Counter,
    refresh_failures: Counter,
    /// By cause: capacity, ttl, invalidation.
    evictions: [Counter; 3],
    clean_bytes: Gauge,
    invalidation_broadcasts: Counter,
    dirty_entries: Gauge,
    dirty_bytes: Gauge,
    clean_entries: Gauge,
    oldest_unflushed: Gauge,
    wal_bytes: Gauge,
    wal_segments: Gauge,
    replication_lag_lsns: Gauge,
    replication_lag_seconds: Gauge,
    replication_failures: Counter,
    fsync: Histogram,
    owner_epoch: Gauge,
    fenced: Gauge,
    flushes: Counter,
    flush_failures: Counter,
    flush_rows: Histogram,
    flush_seconds: Histogram,
    rows_flushed: Counter,
    retries: Counter,
    conflicts: Counter,
    dead_letters: Counter,
    backpressure_waits: Counter,
    backpressure_rejections: Counter,
    checkpoints: Counter,
    checkpoint_seconds: Histogram,
    notifications: Counter,
    invalidations: Counter,
    panics: Counter,
    checkpoint_failures: Counter,
    /// What was last published, to turn totals into increments.
    published: Mutex<Stats>,
    /// When the last slow-fsync warning was logged (ms since `opened_at`), to log
    /// one per second at most: a slow disk slows every writer at once.
    last_slow_warning: AtomicU64,
    opened_at: Instant,
}

/// The dirty limits, set once at open: what the dirty figures are drawn
/// against (backpressure starts there).
pub(crate) fn set_limits(instance: &str, limits: &writebehind_core::Limits) {
    metrics::gauge!("writebehind_max_dirty_entries", "instance" => instance.to_owned())
        .set(limits.max_dirty_entries as f64);
    metrics::gauge!("writebehind_max_dirty_bytes", "instance" => instance.to_owned())
        .set(limits.max_dirty_bytes as f64);
}

impl Metrics {
    /// Registers every handle with the installed recorder (no-ops without one).
    pub(crate) fn register(instance: &str) -> Metrics {
        describe();
        let id = instance.to_owned();
        let c = |name: &'static str| metrics::counter!(name, "instance" => id.clone());
        let g = |name: &'static str| metrics::gauge!(name, "instance" => id.clone());
        let h = |name: &'static str| metrics::histogram!(name, "instance" => id.clone());
        let w = |op: &'static str| metrics::counter!("writebehind_writes_total", "instance" => id.clone(), "op" => op);
        Metrics {
            writes: [w("add"), w("put"), w("delete")],
            hits: c("writebehind_hits_total"),
            misses: c("writebehind_misses_total"),
            hit_ratio: g("writebehind_hit_ratio"),
            loads: c("writebehind_loads_total"),
            load_seconds: h("writebehind_load_seconds"),
            refreshes: c("writebehind_refreshes_total"),
            refresh_failures: c("writebehind_refresh_failures_total"),
            evictions: ["capacity", "ttl", "invalidation"].map(|cause| {
                metrics::counter!("writebehind_evictions_total", "instance" => id.clone(), "cause" => cause)
            }),
            clean_bytes: g("writebehind_clean_bytes"),
            invalidation_broadcasts: c("writebehind_invalidation_broadcasts_total"),
            dirty_entries: g("writebehind_dirty_entries"),
            dirty_bytes: g("writebehind_dirty_bytes"),
            clean_entries: g("writebehind_clean_entries"),
            oldest_unflushed: g("writebehind_oldest_unflushed_seconds"),
            wal_bytes: g("writebehind_wal_bytes"),
            wal_segments: g("writebehind_wal_segments"),
            replication_lag_lsns: g("writebehind_replication_lag_lsns"),
            replication_lag_seconds: g("writebehind_replication_lag_seconds"),
            replication_failures: c("writebehind_replication_failures_total"),
            fsync: h("writebehind_fsync_seconds"),
            owner_epoch: g("writebehind_owner_epoch"),
            fenced: g("writebehind_fenced"),
            flushes: c("writebehind_flushes_total"),
            flush_failures: c("writebehind_flush_failures_total"),
            flush_rows: h("writebehind_flush_batch_rows"),
            flush_seconds: h("writebehind_flush_seconds"),
            rows_flushed: c("writebehind_rows_flushed_total"),
            retries: c("writebehind_retries_total"),
            conflicts: c("writebehind_conflicts_total"),
            dead_letters: c("writebehind_dead_letters_total"),
            backpressure_waits: c("writebehind_backpressure_waits_total"),
            backpressure_rejections: c("writebehind_backpressure_rejections_total"),
            checkpoints: c("writebehind_checkpoints_total"),
            checkpoint_seconds: h("writebehind_checkpoint_seconds"),
            notifications: c("writebehind_notifications_total"),
            invalidations: c("writebehind_invalidations_total"),
            panics: c("writebehind_panics_total"),
            checkpoint_failures: c("writebehind_checkpoint_failures_total"),
            published: Mutex::new(Stats::default()),
            last_slow_warning: AtomicU64::new(0),
            opened_at: Instant::now(),
        }
    }

    /// Records one flushed batch: its keys and how long it took.
    pub(crate) fn flushed(&self, rows: usize, took: Duration) {
        self.flush_rows.record(rows as f64);
        self.flush_seconds.record(took.as_secs_f64());
    }

    /// Records one load's time.
    pub(crate) fn loaded(&self, took: Duration) {
        self.load_seconds.record(took.as_secs_f64());
    }

    /// Records one checkpoint's time.
    pub(crate) fn checkpointed(&self, took: Duration) {
        self.checkpoint_seconds.record(took.as_secs_f64());
    }

    /// Records the figures of recovery (once, at open).
    pub(crate) fn recovered(&self, instance: &str, records: u64, elapsed: Duration) {
        metrics::gauge!("writebehind_recovery_records", "instance" => instance.to_owned())
            .set(records as f64);
        metrics::gauge!("writebehind_recovery_seconds", "instance" => instance.to_owned())
            .set(elapsed.as_secs_f64());
    }

    /// Records one wait for an fsync; warns (once a second at most) when it was slow.
    pub(crate) fn fsync_waited(
        &self,
        elapsed: Duration,
        what: &'static str,
        dir: &std::path::Path,
    ) {
        self.fsync.record(elapsed.as_secs_f64());
        if elapsed > SLOW_FSYNC {
            let now = self.opened_at.elapsed().as_millis() as u64 + 1;
            let last = self.last_slow_warning.load(Ordering::Relaxed);
            if (last == 0 || now.saturating_sub(last) >= 1_000)
                && self
                    .last_slow_warning
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    dir = %dir.display(),
                    waited_ms = elapsed.as_millis() as u64,
                    what,
                    "slow fsync: the WAL disk took over a second (logged once a second at most)"
                );
            }
        }
    }
}

/// Publishes counts (as increments since the last call) and gauges, from
/// the figures `collect` returns.
/// Called by the checkpoint thread every 200 ms, after every flush and at
/// close, so two calls may overlap. They are collected under
/// the lock of what was last published: calls then publish in the order
/// their figures were taken, so `last` never goes back. (Collected before
/// the lock, a call that took older figures could publish after a newer
/// one; its `last` then went back, and the next call counted the
/// difference again: 91 invalidation evictions for 90, and a hit-ratio
/// gauge from other figures than the hit and miss counters.)
pub(crate) fn publish_with(m: &Metrics, collect: impl FnOnce() -> Stats) {
    let mut last = m.published.lock();
    let s = collect();
    let inc = |c: &Counter, now: u64, before: u64| {
        if now > before {
            c.increment(now - before);
        }
    };
    inc(&m.writes[Op::Add as usize], s.adds, last.adds);
    inc(&m.writes[Op::Put as usize], s.puts, last.puts);
    inc(&m.writes[Op::Delete as usize], s.deletes, last.deletes);
    inc(&m.hits, s.hits, last.hits);
    inc(&m.misses, s.misses, last.misses);
    inc(&m.loads, s.loads, last.loads);
    inc(&m.refreshes, s.refreshes, last.refreshes);
    inc(
        &m.refresh_failures,
        s.refresh_failures,
        last.refresh_failures,
    );
    inc(
        &m.evictions[0],
        s.capacity_evictions,
        last.capacity_evictions,
    );
    inc(&m.evictions[1], s.ttl_evictions, last.ttl_evictions);
    inc(
        &m.evictions[2],
        s.invalidation_evictions,
        last.invalidation_evictions,
    );
    inc(
        &m.invalidation_broadcasts,
        s.invalidation_broadcasts,
        last.invalidation_broadcasts,
    );
    inc(&m.flushes, s.flushes, last.flushes);
    inc(&m.flush_failures, s.flush_failures, last.flush_failures);
    inc(&m.rows_flushed, s.rows_flushed, last.rows_flushed);
    inc(&m.retries, s.retries, last.retries);
    inc(&m.conflicts, s.conflicts, last.conflicts);
    inc(&m.dead_letters, s.dead_letters, last.dead_letters);
    inc(
        &m.backpressure_waits,
        s.backpressure_waits,
        last.backpressure_waits,
    );
    inc(
        &m.backpressure_rejections,
        s.backpressure_rejections,
        last.backpressure_rejections,
    );
    inc(&m.checkpoints, s.checkpoints, last.checkpoints);
    inc(&m.notifications, s.notifications, last.notifications);
    inc(&m.invalidations, s.invalidations, last.invalidations);
    inc(&m.panics, s.panics, last.panics);
    inc(
        &m.checkpoint_failures,
        s.checkpoint_failures,
        last.checkpoint_failures,
    );
    m.hit_ratio.set(s.hit_ratio());
    m.dirty_entries.set(s.dirty_entries as f64);
    m.dirty_bytes.set(s.dirty_bytes as f64);
    m.clean_entries.set(s.clean_entries as f64);
    m.clean_bytes.set(s.clean_bytes as f64);
    m.oldest_unflushed.set(s.oldest_unflushed.as_secs_f64());
    m.wal_bytes.set(s.wal_bytes as f64);
    m.wal_segments.set(s.wal_segments as f64);
    m.owner_epoch.set(s.owner_epoch.unwrap_or(0) as f64);
    m.fenced.set(if s.fenced.is_some() { 1.0 } else { 0.0 });
    m.replication_lag_lsns.set(s.replication_lag_lsns as f64);
    m.replication_lag_seconds
        .set(s.replication_lag.as_secs_f64());
    inc(
        &m.replication_failures,
        s.replication_failures,
        last.replication_failures,
    );
    *last = s;
}
