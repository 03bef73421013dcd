//! Compaction: write the coalesced dirty state as a checkpoint and cut the
//! WAL below it, so disk use follows the number of dirty keys, not writes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::cache::Inner;
use crate::log::{self, CheckpointData};
use crate::{Error, Result};

/// Starts the checkpoint thread. It runs when woken (WAL growth, backpressure)
/// and stops once the cache is closed or dropped.
pub(crate) fn spawn(inner: Arc<Inner>, wake: Receiver<()>) -> Result<std::thread::JoinHandle<()>> {
    let weak = Arc::downgrade(&inner);
    drop(inner);
    std::thread::Builder::new()
        .name("writebehind-checkpoint".into())
        .spawn(move || loop {
            match wake.recv_timeout(Duration::from_millis(200)) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let Some(inner) = weak.upgrade() else { return };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            let usage = inner.wal.disk_usage();
            inner.wal_bytes.store(usage, Ordering::Relaxed);
            let since = usage.saturating_sub(inner.wal_bytes_at_checkpoint.load(Ordering::Relaxed));
            // Right after a flush the dirty state is small, so a checkpoint is
            // cheap and lets every whole segment behind it go: disk use then
            // follows the dirty keys, not the writes, between thresholds too.
            let flushed = inner.flushed_since_checkpoint.swap(false, Ordering::AcqRel);
            let due = since >= inner.cfg.checkpoint_bytes
                || usage >= inner.cfg.max_wal_bytes
                || (flushed && since >= inner.cfg.segment_size);
            crate::metrics::publish(&inner);
            if due {
                if let Err(e) = checkpoint(&inner) {
                    tracing::error!(
                        dir = %inner.cfg.dir.display(),
                        wal_bytes = usage,
                        error = %e,
                        "checkpoint failed; the WAL keeps growing until one succeeds"
                    );
                }
            }
        })
        .map_err(|source| Error::Io {
            path: std::path::PathBuf::from("writebehind-checkpoint thread"),
            source,
        })
}

/// Writes a checkpoint of the current dirty state and truncates the WAL
/// below it. Writers are paused only while the state is copied.
pub(crate) fn checkpoint(inner: &Inner) -> Result<()> {
    let _one_at_a_time = inner.checkpoint_lock.lock();
    let span = tracing::info_span!("checkpoint", dir = %inner.cfg.dir.display());
    let _enter = span.enter();
    let started = Instant::now();
    let (snapshot, lsn) = {
        let all = inner.state.lock_all();
        // Under every shard lock no write is between its LSN and its apply,
        // so the state is exactly the WAL up to `lsn`.
        let lsn = inner.wal.last_lsn();
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
    inner.wal.write_checkpoint(lsn, &data)?;
    let freed = inner.wal.truncate_before(lsn + 1)?;
    let usage = inner.wal.disk_usage();
    inner
        .wal_bytes_at_checkpoint
        .store(usage, Ordering::Relaxed);
    inner.wal_bytes.store(usage, Ordering::Relaxed);
    inner.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
    inner
        .metrics
        .checkpoint_seconds
        .record(started.elapsed().as_secs_f64());
    inner.room_made();
    tracing::debug!(
        lsn,
        bytes = data.len(),
        freed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checkpoint written"
    );
    Ok(())
}
