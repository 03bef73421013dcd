//! Counters of what the cache did, and the [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    Refreshes,
    RefreshFailures,
    InvalidationBroadcasts,
}

/// Event counts, one atomic each: the hot path pays one relaxed add.
#[derive(Default)]
pub(crate) struct Counters([AtomicU64; 10]);

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

/// Upper bounds of the load-latency buckets (the last bucket is unbounded).
const LOAD_BOUNDS_MICROS: [u64; 12] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

/// Times of read-through and refresh loads, in fixed buckets.
#[derive(Default)]
pub(crate) struct LoadTimes {
    buckets: [AtomicU64; LOAD_BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl LoadTimes {
    pub(crate) fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = LOAD_BOUNDS_MICROS.partition_point(|&b| b < micros);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn latency(&self) -> LoadLatency {
        LoadLatency {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: Duration::from_micros(self.sum_micros.load(Ordering::Relaxed)),
        }
    }
}

/// How long loads from the database took (read-through and refresh-ahead
/// loads; not [`warm`](crate::WriteBehind::warm)), in fixed buckets from
/// 250 µs to 5 s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadLatency {
    counts: Vec<u64>,
    sum: Duration,
}

impl LoadLatency {
    /// `(upper bound, loads in the bucket)`, fastest first; the last
    /// bucket's bound is `None` (slower than 5 s).
    pub fn buckets(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        let bounds = LOAD_BOUNDS_MICROS
            .iter()
            .map(|&b| Some(Duration::from_micros(b)))
            .chain(std::iter::once(None));
        bounds.zip(self.counts.iter().copied())
    }

    /// Loads timed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Their total time.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// The upper bound of the bucket holding quantile `q` (0 to 1), `None`
    /// when nothing was timed or it is in the unbounded bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bound, n) in self.buckets() {
            seen += n;
            if seen >= rank {
                return bound;
            }
        }
        None
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
    /// Read-through queries sent to the database (refresh-ahead loads included).
    pub loads: u64,
    /// How long those loads took.
    pub load_latency: LoadLatency,
    /// Refresh-ahead loads started (each also counts as a load).
    pub refreshes: u64,
    /// Refresh-ahead loads that failed, timed out or panicked (logged; the
    /// old copy is served until `max_stale`, and a later read tries again).
    pub refresh_failures: u64,
    /// Dirty (unflushed) entries now.
    pub dirty_entries: usize,
    /// Bytes held by dirty entries now.
    pub dirty_bytes: usize,
    /// Clean entries cached now.
    pub clean_entries: usize,
    /// Bytes held by clean entries now (key plus value bytes, 8 per counter).
    pub clean_bytes: usize,
    /// Clean entries evicted to stay within `clean_capacity` (or
    /// `clean_capacity_bytes`).
    pub capacity_evictions: u64,
    /// Clean entries dropped because their `clean_ttl` passed.
    pub ttl_evictions: u64,
    /// Clean entries dropped by an invalidation: `invalidate`,
    /// `invalidate_prefix`, or another instance's announcement.
    pub invalidation_evictions: u64,
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
    /// Keys another instance announced (flushed, or invalidated with
    /// `broadcast_invalidations`) that this one acted on: its copy dropped,
    /// loads in progress refused (flushed keys it already held at the
    /// announced version are not counted; invalidated keys count when a
    /// clean copy was dropped).
    pub invalidations: u64,
    /// `NOTIFY` payloads sent announcing this instance's `invalidate` and
    /// `invalidate_prefix` calls (with `broadcast_invalidations`).
    pub invalidation_broadcasts: u64,
    /// Panics caught in user hooks (`on_conflict`, a conflict resolver) and
    /// background tasks; each was logged and the work went on.
    pub panics: u64,
    /// Background checkpoints that failed (logged; retried on the next turn).
    pub checkpoint_failures: u64,
    /// The last failure of the flusher (cleared by the next committed flush).
    pub last_flush_error: Option<String>,
    /// The owner epoch this cache claimed for its instance id in the
    /// database (at open, or before the first flush when the database was
    /// down); `None` before the claim and without a database.
    pub owner_epoch: Option<u64>,
    /// Set when another owner claimed the instance id since (its epoch): the
    /// cache is fenced, flushes nothing more and refuses writes
    /// ([`Error::Fenced`](crate::Error::Fenced)).
    pub fenced: Option<u64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_times_land_in_their_buckets() {
        let t = LoadTimes::default();
        assert_eq!(t.latency().quantile_bound(0.99), None);
        for _ in 0..98 {
            t.record(Duration::from_micros(400));
        }
        t.record(Duration::from_millis(30));
        t.record(Duration::from_secs(9));
        let s = t.latency();
        assert_eq!(s.count(), 100);
        assert_eq!(
            s.sum(),
            Duration::from_micros(98 * 400 + 30_000 + 9_000_000)
        );
        assert_eq!(s.quantile_bound(0.5), Some(Duration::from_micros(500)));
        assert_eq!(s.quantile_bound(0.99), Some(Duration::from_millis(50)));
        assert_eq!(s.quantile_bound(1.0), None);
        let b: Vec<_> = s.buckets().filter(|b| b.1 > 0).collect();
        assert_eq!(
            b,
            vec![
                (Some(Duration::from_micros(500)), 98),
                (Some(Duration::from_millis(50)), 1),
                (None, 1)
            ]
        );
    }
}
