//! Metrics, through the [`metrics`] facade: install any recorder (the
//! `prometheus` example wires `metrics-exporter-prometheus`) **before**
//! opening a cache, since a cache registers its handles once, at open.
//!
//! Every metric carries the label `instance`: the cache's instance id (the
//! `instance.id` file of its WAL directory), or the WAL directory's path
//! when no database is set. [`WriteBehind::stats`](crate::WriteBehind::stats)
//! returns the same figures as a plain struct.
//!
//! The write path touches only atomics: event counts are published to the
//! recorder by the background threads (every 200 ms and after each flush),
//! gauges likewise; histograms are recorded per flush, per checkpoint, and
//! per write with fsync durability.
//!
//! | Name | Kind | Meaning |
//! |------|------|---------|
//! | `writebehind_writes_total{op}` | counter | Acknowledged writes; `op` is `add`, `put` or `delete` |
//! | `writebehind_hits_total` | counter | Reads answered from memory |
//! | `writebehind_misses_total` | counter | Reads that needed the database (or found nothing without one) |
//! | `writebehind_hit_ratio` | gauge | hits / (hits + misses) since open |
//! | `writebehind_loads_total` | counter | Read-through queries sent to the database (refresh-ahead loads included) |
//! | `writebehind_load_seconds` | histogram | Time of each read-through or refresh-ahead load |
//! | `writebehind_refreshes_total` | counter | Refresh-ahead loads started (hot keys reloaded before or just after their TTL) |
//! | `writebehind_refresh_failures_total` | counter | Refresh-ahead loads that failed, timed out or panicked (logged; retried by a later read) |
//! | `writebehind_evictions_total{cause}` | counter | Clean entries that left the cache; `cause` is `capacity` (entry or byte budget), `ttl` or `invalidation` |
//! | `writebehind_clean_bytes` | gauge | Bytes held by clean entries (key plus value, 8 per counter) |
//! | `writebehind_dirty_entries` | gauge | Unflushed entries |
//! | `writebehind_dirty_bytes` | gauge | Bytes held by unflushed entries |
//! | `writebehind_max_dirty_entries` | gauge | The dirty-entry limit (`Builder::max_dirty_entries`), set at open |
//! | `writebehind_max_dirty_bytes` | gauge | The dirty-byte limit (`Builder::max_dirty_bytes`), set at open |
//! | `writebehind_clean_entries` | gauge | Clean entries cached for reads |
//! | `writebehind_oldest_unflushed_seconds` | gauge | Age of the oldest write not yet in the database (0 without a database) |
//! | `writebehind_wal_bytes` | gauge | WAL bytes on disk (segments and checkpoints) |
//! | `writebehind_wal_segments` | gauge | WAL segment files |
//! | `writebehind_fsync_seconds` | histogram | Waits for an fsync: each fsync-durability write's group commit, flush-start markers, explicit syncs |
//! | `writebehind_owner_epoch` | gauge | The owner epoch this cache claimed for its instance id (0 before the claim) |
//! | `writebehind_fenced` | gauge | 1 once another owner claimed the instance id (the cache flushes nothing more and refuses writes), else 0 |
//! | `writebehind_flushes_total` | counter | Flushes committed |
//! | `writebehind_flush_failures_total` | counter | Flush rounds that failed after their retries (retried later) |
//! | `writebehind_flush_batch_rows` | histogram | Keys per flushed batch (cut) |
//! | `writebehind_flush_seconds` | histogram | Time to write one batch, retries included |
//! | `writebehind_rows_flushed_total` | counter | Data rows written by flushes |
//! | `writebehind_retries_total` | counter | Flush attempts retried after a transient error |
//! | `writebehind_conflicts_total` | counter | Version conflicts met |
//! | `writebehind_dead_letters_total` | counter | Rows sent to the dead-letter table |
//! | `writebehind_backpressure_waits_total` | counter | Writes that waited for room |
//! | `writebehind_backpressure_rejections_total` | counter | Writes refused for lack of room |
//! | `writebehind_recovery_records` | gauge | WAL records replayed at open |
//! | `writebehind_recovery_seconds` | gauge | Time the open spent recovering |
//! | `writebehind_checkpoints_total` | counter | Checkpoints written |
//! | `writebehind_checkpoint_seconds` | histogram | Time to write one checkpoint |
//! | `writebehind_notifications_total` | counter | `NOTIFY` payloads sent announcing flushed keys (PostgreSQL) |
//! | `writebehind_invalidations_total` | counter | Keys another instance flushed or invalidated whose copies (and loads in progress) were dropped here |
//! | `writebehind_invalidation_broadcasts_total` | counter | `NOTIFY` payloads sent announcing this instance's invalidations |
//! | `writebehind_panics_total` | counter | Panics caught in user hooks, conflict resolvers and background tasks (each logged; the work went on) |
//! | `writebehind_checkpoint_failures_total` | counter | Background checkpoints that failed (logged; retried on the next turn) |
//! | `writebehind_replication_lag_lsns` | gauge | WAL records not yet stored by NATS JetStream (0 without replication) |
//! | `writebehind_replication_lag_seconds` | gauge | How long JetStream has been behind the local WAL (0 when caught up) |
//! | `writebehind_replication_failures_total` | counter | Replication sessions that failed (NATS unreachable, a publish not acknowledged), each retried with backoff |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Unit};
use parking_lot::Mutex;

use crate::stats::Stats;

/// Every metric: name, kind, meaning (the table above, for tools and tests).
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "writebehind_writes_total",
        "counter",
        "Acknowledged writes, by op (add, put, delete)",
    ),
    (
        "writebehind_hits_total",
        "counter",
        "Reads answered from memory",
    ),
    (
        "writebehind_misses_total",
        "counter",
        "Reads that needed the database",
    ),
    (
        "writebehind_hit_ratio",
        "gauge",
        "hits / (hits + misses) since open",
    ),
    (
        "writebehind_loads_total",
        "counter",
        "Read-through queries sent to the database",
    ),
    (
        "writebehind_load_seconds",
        "histogram",
        "Time of each read-through or refresh-ahead load",
    ),
    (
        "writebehind_refreshes_total",
        "counter",
        "Refresh-ahead loads started",
    ),
    (
        "writebehind_refresh_failures_total",
        "counter",
        "Refresh-ahead loads that failed, timed out or panicked",
    ),
    (
        "writebehind_evictions_total",
        "counter",
        "Clean entries that left the cache, by cause (capacity, ttl, invalidation)",
    ),
    (
        "writebehind_clean_bytes",
        "gauge",
        "Bytes held by clean entries",
    ),
    ("writebehind_dirty_entries", "gauge", "Unflushed entries"),
    (
        "writebehind_dirty_bytes",
        "gauge",
        "Bytes held by unflushed entries",
    ),
    (
        "writebehind_max_dirty_entries",
        "gauge",
        "The dirty-entry limit, set at open",
    ),
    (
        "writebehind_max_dirty_bytes",
        "gauge",
        "The dirty-byte limit, set at open",
    ),
    (
        "writebehind_clean_entries",
        "gauge",
        "Clean entries cached for reads",
    ),
    (
        "writebehind_oldest_unflushed_seconds",
        "gauge",
        "Age of the oldest write not yet in the database",
    ),
    ("writebehind_wal_bytes", "gauge", "WAL bytes on disk"),
    (
        "writebehind_replication_lag_lsns",
        "gauge",
        "WAL records not yet stored by NATS JetStream",
    ),
    (
        "writebehind_replication_lag_seconds",
        "gauge",
        "How long JetStream has been behind the local WAL",
    ),
    (
        "writebehind_replication_failures_total",
        "counter",
        "Replication sessions that failed (retried with backoff)",
    ),
    ("writebehind_wal_segments", "gauge", "WAL segment files"),
    (
        "writebehind_fsync_seconds",
        "histogram",
        "Waits for a WAL fsync",
    ),
    (
        "writebehind_owner_epoch",
        "gauge",
        "The owner epoch this cache claimed for its instance id",
    ),
    (
        "writebehind_fenced",
        "gauge",
        "1 once another owner claimed the instance id (nothing more is flushed)",
    ),
    ("writebehind_flushes_total", "counter", "Flushes committed"),
    (
        "writebehind_flush_failures_total",
        "counter",
        "Flush rounds that failed after their retries",
    ),
    (
        "writebehind_flush_batch_rows",
        "histogram",
        "Keys per flushed batch",
    ),
    (
        "writebehind_flush_seconds",
        "histogram",
        "Time to write one batch, retries included",
    ),
    (
        "writebehind_rows_flushed_total",
        "counter",
        "Data rows written by flushes",
    ),
    (
        "writebehind_retries_total",
        "counter",
        "Flush attempts retried after a transient error",
    ),
    (
        "writebehind_conflicts_total",
        "counter",
        "Version conflicts met",
    ),
    (
        "writebehind_dead_letters_total",
        "counter",
        "Rows sent to the dead-letter table",
    ),
    (
        "writebehind_backpressure_waits_total",
        "counter",
        "Writes that waited for room",
    ),
    (
        "writebehind_backpressure_rejections_total",
        "counter",
        "Writes refused for lack of room",
    ),
    (
        "writebehind_recovery_records",
        "gauge",
        "WAL records replayed at open",
    ),
    (
        "writebehind_recovery_seconds",
        "gauge",
        "Time the open spent recovering",
    ),
    (
        "writebehind_checkpoints_total",
        "counter",
        "Checkpoints written",
    ),
    (
        "writebehind_checkpoint_seconds",
        "histogram",
        "Time to write one checkpoint",
    ),
    (
        "writebehind_notifications_total",
        "counter",
        "NOTIFY payloads sent announcing flushed keys",
    ),
    (
        "writebehind_invalidations_total",
        "counter",
        "Keys another instance flushed or invalidated whose copies were dropped here",
    ),
    (
        "writebehind_invalidation_broadcasts_total",
        "counter",
        "NOTIFY payloads sent announcing this instance's invalidations",
    ),
    (
        "writebehind_panics_total",
        "counter",
        "Panics caught in user hooks, conflict resolvers and background tasks",
    ),
    (
        "writebehind_checkpoint_failures_total",
        "counter",
        "Background checkpoints that failed (retried on the next turn)",
    ),
];

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
    /// When the last slow-fsync warning was logged (ms since `epoch`), to log
    /// one per second at most: a slow disk slows every writer at once.
    last_slow_warning: AtomicU64,
    epoch: Instant,
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    for &(name, kind, help) in METRICS {
        let seconds = name.ends_with("_seconds");
        let bytes = name.ends_with("_bytes");
        match (kind, seconds, bytes) {
            ("counter", ..) => describe_counter!(name, Unit::Count, help),
            ("histogram", true, _) => describe_histogram!(name, Unit::Seconds, help),
            ("histogram", ..) => describe_histogram!(name, Unit::Count, help),
            (_, true, _) => describe_gauge!(name, Unit::Seconds, help),
            (_, _, true) => describe_gauge!(name, Unit::Bytes, help),
            _ => describe_gauge!(name, help),
        }
    }
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
            epoch: Instant::now(),
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
            let now = self.epoch.elapsed().as_millis() as u64 + 1;
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

/// Tracks the age of the oldest unflushed write with two timestamps (ms
/// since open, plus one; 0 is none): the first write since the last cut,
/// and the first write of the cut in flight.
#[derive(Default)]
pub(crate) struct Unflushed {
    pending: AtomicU64,
    in_cut: AtomicU64,
}

impl Unflushed {
    /// After a write: remembers its time if it is the first since the last cut.
    /// One atomic load on the common path.
    #[inline]
    pub(crate) fn wrote(&self, epoch: Instant) {
        if self.pending.load(Ordering::Relaxed) == 0 {
            let now = epoch.elapsed().as_millis() as u64 + 1;
            let _ = self
                .pending
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Something recovered at open is unflushed: its age counts from the open.
    pub(crate) fn recovered(&self) {
        self.pending.store(1, Ordering::Relaxed);
    }

    /// A new cut took every dirty entry (called under every shard lock).
    pub(crate) fn cut_taken(&self) {
        let first = self.pending.swap(0, Ordering::Relaxed);
        self.in_cut.store(first, Ordering::Relaxed);
    }

    /// The cut in flight is in the database.
    pub(crate) fn cut_done(&self) {
        self.in_cut.store(0, Ordering::Relaxed);
    }

    /// The age of the oldest write not yet flushed.
    pub(crate) fn age(&self, epoch: Instant) -> Duration {
        let oldest = [&self.in_cut, &self.pending]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&t| t != 0)
            .min();
        match oldest {
            Some(t) => epoch.elapsed().saturating_sub(Duration::from_millis(t - 1)),
            None => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn age_follows_the_oldest_unflushed_write() {
        let epoch = Instant::now() - Duration::from_secs(10);
        let u = Unflushed::default();
        assert_eq!(u.age(epoch), Duration::ZERO);
        u.wrote(epoch);
        u.cut_taken();
        let after_cut = u.age(epoch);
        assert!(after_cut < Duration::from_millis(500), "{after_cut:?}");
        u.recovered(); // pending since the epoch: 10 s old
        assert!(u.age(epoch) >= Duration::from_secs(10));
        u.cut_done();
        assert!(u.age(epoch) >= Duration::from_secs(10));
        u.cut_taken();
        u.cut_done();
        assert_eq!(u.age(epoch), Duration::ZERO);
    }

    /// Counters and gauges by name, as a recorder sees them.
    #[derive(Default)]
    struct Seen(Mutex<std::collections::HashMap<String, Arc<AtomicU64>>>);

    impl Seen {
        fn handle(&self, key: &metrics::Key) -> Arc<AtomicU64> {
            let name = match key.labels().find(|l| l.key() == "cause") {
                Some(cause) => format!("{}/{}", key.name(), cause.value()),
                None => key.name().to_owned(),
            };
            self.0.lock().entry(name).or_default().clone()
        }

        fn counter(&self, name: &str) -> u64 {
            self.0.lock()[name].load(Ordering::Relaxed)
        }

        fn gauge(&self, name: &str) -> f64 {
            f64::from_bits(self.0.lock()[name].load(Ordering::Relaxed))
        }
    }

    impl metrics::Recorder for Seen {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<Unit>, _: metrics::SharedString) {
        }
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<Unit>, _: metrics::SharedString) {}
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Counter {
            Counter::from_arc(self.handle(key))
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.handle(key))
        }
        fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Two publishes overlap: the first took its figures (no invalidation
    /// yet, hit ratio 1/2), then a second took newer ones (1 invalidation,
    /// ratio 3/4) and published them. The counter must count the
    /// invalidation once, and the gauge must end on the newer figures, as
    /// a third publish of the same figures leaves them.
    #[test]
    fn overlapping_publishes_count_every_event_once() {
        use std::sync::mpsc;
        let seen = Seen::default();
        let m = metrics::with_local_recorder(&seen, || Metrics::register("test"));
        let older = Stats {
            hits: 1,
            misses: 1,
            ..Stats::default()
        };
        let newer = Stats {
            hits: 3,
            misses: 1,
            invalidation_evictions: 1,
            ..Stats::default()
        };
        let (collected, collected_rx) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let (m, older) = (&m, &older);
            let first = s.spawn(move || {
                publish_with(m, || {
                    let figures = older.clone();
                    collected.send(()).unwrap_or_else(|e| panic!("{e}"));
                    // The second publish runs meanwhile, unless it waits
                    // for this one (then this waits out the second).
                    let _ = go_rx.recv_timeout(Duration::from_secs(1));
                    figures
                });
            });
            collected_rx.recv().unwrap_or_else(|e| panic!("{e}"));
            let second = s.spawn(|| publish_with(m, || newer.clone()));
            second.join().unwrap_or_else(|_| panic!("second publish"));
            let _ = go.send(());
            first.join().unwrap_or_else(|_| panic!("first publish"));
        });
        let inv = "writebehind_evictions_total/invalidation";
        let ratio = seen.gauge("writebehind_hit_ratio");
        publish_with(&m, || newer.clone());
        assert_eq!(seen.counter(inv), 1);
        assert_eq!(seen.counter("writebehind_hits_total"), 3);
        assert_eq!(seen.counter("writebehind_misses_total"), 1);
        assert_eq!(ratio, 0.75, "the gauge from the older figures");
        assert_eq!(seen.gauge("writebehind_hit_ratio"), 0.75);
    }

    #[test]
    fn every_metric_name_is_prefixed_and_unique() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.0).collect();
        assert!(names.iter().all(|n| n.starts_with("writebehind_")));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
