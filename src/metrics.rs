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

mod handles;
mod unflushed;

use metrics::Unit;

pub(crate) use handles::{publish_with, set_limits, Metrics, Op};
pub(crate) use unflushed::Unflushed;

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use metrics::{Counter, Gauge, Histogram};
    use parking_lot::Mutex;

    use super::*;
    use crate::stats::Stats;

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
