//! Compaction: write the coalesced dirty state as a checkpoint and cut the
//! WAL below it, so disk use follows the number of dirty keys, not writes.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::log::{self, CheckpointData};
use crate::shared::Shared;
use crate::{Error, Result};

/// Owns the WAL-size bookkeeping and the checkpoint thread's wake-ups.
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
}

impl Compactor {
    /// A compactor for a WAL now `wal_bytes` large, and the receiving end
    /// of its wake-ups for [`spawn`].
    pub(crate) fn new(wal_bytes: u64) -> (Compactor, Receiver<()>) {
        let (wake, rx) = crossbeam_channel::bounded(1);
        let c = Compactor {
            wake,
            bytes_at_checkpoint: AtomicU64::new(wal_bytes),
            bytes: AtomicU64::new(wal_bytes),
            flushed_since: AtomicBool::new(false),
            one_at_a_time: Mutex::new(()),
            checkpoints: AtomicU64::new(0),
        };
        (c, rx)
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
    pub(crate) fn refresh(&self, sh: &Shared) {
        let usage = sh.wal().disk_usage();
        self.bytes.store(usage, Ordering::Relaxed);
        let since = usage.saturating_sub(self.bytes_at_checkpoint.load(Ordering::Relaxed));
        if since >= sh.cfg().checkpoint_bytes() {
            self.wake();
        }
    }

    /// Writes a checkpoint of the current dirty state and truncates the WAL
    /// below it. Writers are paused only while the state is copied.
    pub(crate) fn checkpoint(&self, sh: &Shared) -> Result<()> {
        let _one = self.one_at_a_time.lock();
        let span = tracing::info_span!("checkpoint", dir = %sh.cfg().dir().display());
        let _enter = span.enter();
        let started = Instant::now();
        let wal = sh.wal();
        let (snapshot, lsn) = {
            let all = sh.state().lock_all();
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
        if let Some(r) = sh.replica() {
            r.checkpointed(lsn);
        }
        let freed = wal.truncate_before(lsn + 1)?;
        let usage = wal.disk_usage();
        self.bytes_at_checkpoint.store(usage, Ordering::Relaxed);
        self.bytes.store(usage, Ordering::Relaxed);
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        sh.metrics().checkpointed(started.elapsed());
        sh.room().made();
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
    fn due(&self, sh: &Shared) -> (bool, u64) {
        let usage = sh.wal().disk_usage();
        self.bytes.store(usage, Ordering::Relaxed);
        let since = usage.saturating_sub(self.bytes_at_checkpoint.load(Ordering::Relaxed));
        // Right after a flush the dirty state is small, so a checkpoint is
        // cheap and lets every whole segment behind it go.
        let flushed = self.flushed_since.swap(false, Ordering::AcqRel);
        let cfg = sh.cfg();
        let due = since >= cfg.checkpoint_bytes()
            || usage >= cfg.max_wal_bytes()
            || (flushed && since >= cfg.segment_size());
        (due, usage)
    }
}

/// Starts the checkpoint thread. It runs when woken (WAL growth,
/// backpressure, a flush) or every 200 ms, publishes metrics, and stops
/// once the cache is closed or dropped. A panic in one turn is caught,
/// logged and counted; the thread goes on.
pub(crate) fn spawn(sh: &Arc<Shared>, wake: Receiver<()>) -> Result<std::thread::JoinHandle<()>> {
    let weak = Arc::downgrade(sh);
    std::thread::Builder::new()
        .name("writebehind-checkpoint".into())
        .spawn(move || run(weak, wake))
        .map_err(|source| Error::Io {
            path: std::path::PathBuf::from("writebehind-checkpoint thread"),
            source,
        })
}

fn run(weak: Weak<Shared>, wake: Receiver<()>) {
    loop {
        match wake.recv_timeout(Duration::from_millis(200)) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(sh) = weak.upgrade() else { return };
        if sh.is_closed() {
            return;
        }
        let turn = std::panic::catch_unwind(AssertUnwindSafe(|| turn(&sh)));
        if let Err(panic) = turn {
            let message = crate::supervise::panic_message(&*panic);
            tracing::error!(dir = %sh.cfg().dir().display(), %message, "checkpoint thread panicked; it goes on");
            sh.supervisor().panicked();
        }
    }
}

fn turn(sh: &Shared) {
    let c = sh.compactor();
    let (due, usage) = c.due(sh);
    sh.publish_metrics();
    if due {
        if let Err(e) = c.checkpoint(sh) {
            tracing::error!(
                dir = %sh.cfg().dir().display(),
                wal_bytes = usage,
                error = %e,
                "checkpoint failed; the WAL keeps growing until one succeeds"
            );
            sh.supervisor().failed();
        }
    }
}
