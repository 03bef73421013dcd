//! Compaction: write the coalesced dirty state as a checkpoint and cut the
//! WAL below it, so disk use follows the number of dirty keys, not writes.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use writebehind_core::State;
use writebehind_wal::Replica;

use crate::config::Config;
use crate::events::{Checkpointed, Events};
use crate::lock::LockedWal;
use crate::log::{self, CheckpointData};
use crate::metrics::Metrics;
use crate::supervise::Supervisor;
use crate::{Error, Result};

/// Owns the WAL-size bookkeeping, the checkpoints and the checkpoint
/// thread's wake-ups.
pub(crate) struct Compactor {
    wake: Sender<()>,
    /// WAL disk usage right after the last checkpoint.
    bytes_at_checkpoint: AtomicU64,
    /// WAL disk usage as last read (refreshed every few hundred writes).
    bytes: AtomicU64,
    /// A flush completed since the thread last looked.
    flushed_since: AtomicBool,
    /// Serialises checkpoints.
    one_at_a_time: Mutex<()>,
    checkpoints: AtomicU64,
    /// Told after each checkpoint (it made room).
    checkpointed: Events<Checkpointed>,
    dir: PathBuf,
    checkpoint_bytes: u64,
    max_wal_bytes: u64,
    segment_size: u64,
    parts: CompactorParts,
}

/// What the compactor works on, handed to it when it is built.
pub(crate) struct CompactorParts {
    pub(crate) state: Arc<State>,
    pub(crate) wal: Arc<LockedWal>,
    /// Told of each checkpoint, which it publishes to the stream.
    pub(crate) replica: Option<Arc<dyn Replica>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Counts the thread's panics and failed checkpoints.
    pub(crate) supervisor: Arc<Supervisor>,
    /// Set when the cache closes: the thread stops.
    pub(crate) closed: Arc<AtomicBool>,
}

impl Compactor {
    /// A compactor over `parts`, and the receiving end of its wake-ups for
    /// [`spawn`].
    pub(crate) fn new(cfg: &Config, parts: CompactorParts) -> (Compactor, Receiver<()>) {
        let (wake, rx) = crossbeam_channel::bounded(1);
        let wal_bytes = parts.wal.disk_usage();
        let c = Compactor {
            wake,
            bytes_at_checkpoint: AtomicU64::new(wal_bytes),
            bytes: AtomicU64::new(wal_bytes),
            flushed_since: AtomicBool::new(false),
            one_at_a_time: Mutex::new(()),
            checkpoints: AtomicU64::new(0),
            checkpointed: Events::default(),
            dir: cfg.dir().to_path_buf(),
            checkpoint_bytes: cfg.checkpoint_bytes(),
            max_wal_bytes: cfg.max_wal_bytes(),
            segment_size: cfg.segment_size(),
            parts,
        };
        (c, rx)
    }

    /// `observer` is told after every checkpoint from now on; it must not
    /// block.
    pub(crate) fn on_checkpoint(&self, observer: impl Fn() + Send + Sync + 'static) {
        self.checkpointed.subscribe(move |_| observer());
    }

    /// Wakes the checkpoint thread (a full wake-up channel already will).
    pub(crate) fn wake(&self) {
        // Full means a wake-up is already pending: nothing is lost.
        let _pending = self.wake.try_send(());
    }

    /// WAL bytes on disk as last read.
    pub(crate) fn wal_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The WAL limit (`max_wal_bytes`).
    pub(crate) fn max_wal_bytes(&self) -> u64 {
        self.max_wal_bytes
    }

    /// Checkpoints written.
    pub(crate) fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }

    /// A flush completed: its segments may go at the next checkpoint.
    pub(crate) fn flushed(&self) {
        self.flushed_since.store(true, Ordering::Release);
        self.wake();
    }

    /// Re-reads the WAL's disk use and wakes the thread when it grew past
    /// the compaction threshold.
    pub(crate) fn refresh(&self) {
        let usage = self.parts.wal.disk_usage();
        self.bytes.store(usage, Ordering::Relaxed);
        let since = usage.saturating_sub(self.bytes_at_checkpoint.load(Ordering::Relaxed));
        if since >= self.checkpoint_bytes {
            self.wake();
        }
    }

    /// Writes a checkpoint of the current dirty state and truncates the WAL
    /// below it. Writers are paused only while the state is copied.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let _one = self.one_at_a_time.lock();
        let span = tracing::info_span!("checkpoint", dir = %self.dir.display());
        let _enter = span.enter();
        let started = Instant::now();
        let wal = &self.parts.wal;
        let (snapshot, lsn) = {
            let all = self.parts.state.lock_all();
            // Under every shard lock no write is between its LSN and its
            // apply, so the state is exactly the WAL up to `lsn`.
            let lsn = wal.last_lsn();
            (all.snapshot(lsn), lsn)
        };
        if lsn == 0 {
            return Ok(());
        }
        let data = writebehind_wal::codec::encode(&CheckpointData {
            format: log::FORMAT,
            snapshot,
        })
        .map_err(|e| Error::Codec(e.to_string()))?;
        wal.write_checkpoint(lsn, &data)?;
        if let Some(r) = &self.parts.replica {
            r.checkpointed(lsn);
        }
        let freed = wal.truncate_before(lsn + 1)?;
        let usage = wal.disk_usage();
        self.bytes_at_checkpoint.store(usage, Ordering::Relaxed);
        self.bytes.store(usage, Ordering::Relaxed);
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.parts.metrics.checkpointed(started.elapsed());
        self.checkpointed.announce(&Checkpointed);
        tracing::debug!(
            lsn,
            bytes = data.len(),
            freed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        Ok(())
    }

    /// Whether a checkpoint is due now (and forgets a pending flush note).
    fn due(&self) -> (bool, u64) {
        let usage = self.parts.wal.disk_usage();
        self.bytes.store(usage, Ordering::Relaxed);
        let since = usage.saturating_sub(self.bytes_at_checkpoint.load(Ordering::Relaxed));
        // Right after a flush the dirty state is small, so a checkpoint is
        // cheap and lets every whole segment behind it go.
        let flushed = self.flushed_since.swap(false, Ordering::AcqRel);
        let due = since >= self.checkpoint_bytes
            || usage >= self.max_wal_bytes
            || (flushed && since >= self.segment_size);
        (due, usage)
    }

    /// One turn of the thread: `each_turn` (the metrics), then a
    /// checkpoint when one is due.
    fn turn(&self, each_turn: &dyn Fn()) {
        let (due, usage) = self.due();
        each_turn();
        if due {
            if let Err(e) = self.checkpoint() {
                tracing::error!(
                    dir = %self.dir.display(),
                    wal_bytes = usage,
                    error = %e,
                    "checkpoint failed; the WAL keeps growing until one succeeds"
                );
                self.parts.supervisor.failed();
            }
        }
    }
}

/// Starts the checkpoint thread of the cache `owner`. It runs when woken
/// (WAL growth, backpressure, a flush) or every 200 ms, calls `each_turn`
/// with the owner (which publishes the metrics), and stops once the cache
/// is closed or dropped. A panic in one turn is caught, logged and
/// counted; the thread goes on.
pub(crate) fn spawn<T: Send + Sync + 'static>(
    c: &Arc<Compactor>,
    wake: Receiver<()>,
    owner: Weak<T>,
    each_turn: impl Fn(&T) + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    let c = Arc::downgrade(c);
    std::thread::Builder::new()
        .name("writebehind-checkpoint".into())
        .spawn(move || run(c, wake, owner, each_turn))
        .map_err(|source| Error::Io {
            path: std::path::PathBuf::from("writebehind-checkpoint thread"),
            source,
        })
}

fn run<T>(c: Weak<Compactor>, wake: Receiver<()>, owner: Weak<T>, each_turn: impl Fn(&T)) {
    loop {
        match wake.recv_timeout(Duration::from_millis(200)) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // The owner first: the compactor may outlive the cache a moment
        // (the flush observers hold it), and no turn runs then.
        let Some(owner) = owner.upgrade() else { return };
        let Some(c) = c.upgrade() else { return };
        if c.parts.closed.load(Ordering::Acquire) {
            return;
        }
        let turn = std::panic::catch_unwind(AssertUnwindSafe(|| c.turn(&|| each_turn(&owner))));
        if let Err(panic) = turn {
            let message = crate::supervise::panic_message(&*panic);
            tracing::error!(dir = %c.dir.display(), %message, "checkpoint thread panicked; it goes on");
            c.parts.supervisor.panicked();
        }
    }
}
