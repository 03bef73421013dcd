//! What every handle of one cache shares: the parts, each behind its own
//! methods. This file only composes them; each part's rules live in its
//! own file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use writebehind_core::{Lsn, State};
use writebehind_wal::{ReadBack, Replica, Wal};

use crate::backpressure::Room;
use crate::checkpoint::Compactor;
use crate::config::Config;
use crate::lock::LockedWal;
use crate::metrics::{Metrics, Unflushed};
use crate::pipeline::Pipeline;
use crate::read::loads::Loads;
use crate::recovery::RecoveryReport;
use crate::stats::{Count, Counters, LoadTimes, Stats};
use crate::supervise::Supervisor;
use crate::{Error, Result};

pub(crate) struct Shared {
    cfg: Config,
    state: Arc<State>,
    /// With the directory lock. Shared with the flusher, and with the
    /// replica's task, which reads it back.
    wal: Arc<LockedWal>,
    /// The flush pipeline, when a database is set.
    pipeline: Option<Arc<Pipeline>>,
    room: Arc<Room>,
    compactor: Arc<Compactor>,
    counters: Counters,
    loads: Loads,
    load_times: LoadTimes,
    metrics: Arc<Metrics>,
    /// Times of the oldest unflushed writes.
    unflushed: Arc<Unflushed>,
    /// When the cache opened: the zero of `unflushed`'s timestamps.
    opened_at: Instant,
    supervisor: Arc<Supervisor>,
    recovery: RecoveryReport,
    /// Shared with the compactor, whose thread stops when it is set.
    closed: Arc<AtomicBool>,
    /// The WAL's replica, when replicated.
    replica: Option<Arc<dyn Replica>>,
}

/// The parts [`Shared::new`] composes.
pub(crate) struct Parts {
    pub(crate) cfg: Config,
    pub(crate) state: Arc<State>,
    pub(crate) wal: Arc<LockedWal>,
    pub(crate) pipeline: Option<Arc<Pipeline>>,
    pub(crate) room: Arc<Room>,
    pub(crate) compactor: Arc<Compactor>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) unflushed: Arc<Unflushed>,
    pub(crate) supervisor: Arc<Supervisor>,
    pub(crate) recovery: RecoveryReport,
    pub(crate) closed: Arc<AtomicBool>,
    pub(crate) replica: Option<Arc<dyn Replica>>,
}

impl Shared {
    pub(crate) fn new(p: Parts) -> Shared {
        Shared {
            cfg: p.cfg,
            state: p.state,
            wal: p.wal,
            pipeline: p.pipeline,
            room: p.room,
            compactor: p.compactor,
            counters: Counters::default(),
            loads: Loads::default(),
            load_times: LoadTimes::default(),
            metrics: p.metrics,
            unflushed: p.unflushed,
            opened_at: Instant::now(),
            supervisor: p.supervisor,
            recovery: p.recovery,
            closed: p.closed,
            replica: p.replica,
        }
    }

    pub(crate) fn cfg(&self) -> &Config {
        &self.cfg
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn wal(&self) -> &Wal {
        &self.wal
    }

    pub(crate) fn pipeline(&self) -> Option<&Pipeline> {
        self.pipeline.as_deref()
    }

    /// A handle on the WAL that does not keep it open.
    pub(crate) fn wal_handle(&self) -> Weak<dyn ReadBack> {
        let weak: Weak<LockedWal> = Arc::downgrade(&self.wal);
        weak
    }

    /// The WAL's replica, when replicated.
    pub(crate) fn replica(&self) -> Option<&Arc<dyn Replica>> {
        self.replica.as_ref()
    }

    pub(crate) fn room(&self) -> &Room {
        &self.room
    }

    pub(crate) fn compactor(&self) -> &Compactor {
        &self.compactor
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn loads(&self) -> &Loads {
        &self.loads
    }

    pub(crate) fn load_times(&self) -> &LoadTimes {
        &self.load_times
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn unflushed(&self) -> &Unflushed {
        &self.unflushed
    }

    pub(crate) fn opened_at(&self) -> Instant {
        self.opened_at
    }

    pub(crate) fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    pub(crate) fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the cache closed; `false` if it already was.
    pub(crate) fn mark_closed(&self) -> bool {
        self.letting_go();
        !self.closed.swap(true, Ordering::AcqRel)
    }

    /// The last handle is going: an open of the same directory in this
    /// process may wait for the background work to let go of it.
    pub(crate) fn letting_go(&self) {
        self.wal.releasing();
    }

    /// Refuses work on a closed cache, and on a poisoned log: after a failed
    /// write the state in memory may hold a write the disk does not, so only
    /// the next open may say what persisted.
    pub(crate) fn usable(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        if self.wal.is_poisoned() {
            return Err(Error::Wal(writebehind_wal::Error::Poisoned));
        }
        // A newer owner claimed the instance on the stream: nothing written
        // here would be kept.
        if let Some(fenced) = self.replica.as_ref().and_then(|r| r.fenced()) {
            return Err(fenced.into());
        }
        Ok(())
    }

    /// A write's or wait's error, as [`Error::Fenced`] once a newer owner
    /// claimed the instance on the stream (the replica's watermark closed).
    pub(crate) fn owned(&self, e: Error) -> Error {
        match self.replica.as_ref().and_then(|r| r.fenced()) {
            Some(fenced) => fenced.into(),
            None => e,
        }
    }

    /// `wal.sync()`, timed.
    pub(crate) fn sync_wal(&self, what: &'static str) -> Result<Lsn> {
        let started = Instant::now();
        let lsn = self.wal.sync()?;
        self.metrics
            .fsync_waited(started.elapsed(), what, self.cfg.dir());
        Ok(lsn)
    }

    /// Publishes the metrics (counts as increments since the last call,
    /// and gauges).
    pub(crate) fn publish_metrics(&self) {
        crate::metrics::publish_with(&self.metrics, || self.stats());
    }

    /// The figures of [`WriteBehind::stats`](crate::WriteBehind::stats).
    pub(crate) fn stats(&self) -> Stats {
        let sh = self;
        let core = sh.state().stats();
        let c = sh.counters();
        let wal = sh.wal();
        let flush = sh.pipeline().map(|p| p.counts()).unwrap_or_default();
        let (replicates, replica) = match sh.replica() {
            Some(r) => (true, r.counts(wal.last_lsn())),
            None => (false, writebehind_wal::ReplicaCounts::default()),
        };
        Stats {
            writes: c.get(Count::Writes),
            adds: c.get(Count::Adds),
            puts: c.get(Count::Puts),
            deletes: c.get(Count::Deletes),
            reads: c.get(Count::Reads),
            hits: core.hits,
            misses: core.misses,
            loads: c.get(Count::Loads),
            load_latency: sh.load_times().latency(),
            refreshes: c.get(Count::Refreshes),
            refresh_failures: c.get(Count::RefreshFailures),
            dirty_entries: core.dirty_entries,
            dirty_bytes: core.dirty_bytes,
            clean_entries: core.clean_entries,
            clean_bytes: core.clean_bytes,
            capacity_evictions: core.capacity_evictions,
            ttl_evictions: core.ttl_evictions,
            invalidation_evictions: core.invalidation_evictions,
            oldest_unflushed: sh.unflushed().age(sh.opened_at()),
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
            invalidation_broadcasts: c.get(Count::InvalidationBroadcasts),
            panics: sh.supervisor().panics() + flush.hook_panics,
            checkpoint_failures: sh.supervisor().errors(),
            last_flush_error: flush.last_error,
            owner_epoch: flush.owner_epoch,
            fenced: flush.fenced,
            replicated_lsn: replica.replicated_lsn,
            replication_lag_lsns: if replicates {
                wal.last_lsn().saturating_sub(replica.replicated_lsn)
            } else {
                0
            },
            replication_lag: replica.lag,
            replication_failures: replica.failures,
            replication_messages: replica.messages,
            replication_duplicates: replica.duplicates,
            replication_purges: replica.purges,
            replication_checkpoints: replica.checkpoints,
            last_replication_error: replica.last_error,
        }
    }
}
