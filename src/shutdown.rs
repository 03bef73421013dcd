//! Shutdown: `close` stops every background task (awaiting each), flushes
//! within the close timeout, checkpoints and syncs, and returns every
//! error; dropping the last handle only stops the background work.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::Instrument;

use crate::shared::Shared;
use crate::{Error, Result};

/// The background work of one cache, stopped when the last handle goes.
pub(crate) struct Lifetime {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The runtime of a cache opened with `open_blocking`.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    /// Drops the clean copies of keys other instances flush.
    listener: Mutex<Option<writebehind_writer::Listener>>,
}

impl Lifetime {
    pub(crate) fn new(
        shared: Arc<Shared>,
        shutdown: watch::Sender<bool>,
        flusher: Option<tokio::task::JoinHandle<()>>,
        checkpointer: std::thread::JoinHandle<()>,
        listener: Option<writebehind_writer::Listener>,
    ) -> Lifetime {
        Lifetime {
            shared,
            shutdown,
            flusher: Mutex::new(flusher),
            checkpointer: Mutex::new(Some(checkpointer)),
            runtime: Mutex::new(None),
            listener: Mutex::new(listener),
        }
    }

    /// Hands over the runtime of a cache opened with `open_blocking`.
    pub(crate) fn set_runtime(&self, rt: tokio::runtime::Runtime) {
        *self.runtime.lock() = Some(rt);
    }

    /// The cache's own runtime, or `Error::Config(needs)` without one.
    pub(crate) fn runtime_handle(&self, needs: &str) -> Result<tokio::runtime::Handle> {
        match self.runtime.lock().as_ref() {
            Some(rt) => Ok(rt.handle().clone()),
            None => Err(Error::Config(needs.to_owned())),
        }
    }

    fn signal_shutdown(&self) {
        // No receiver left means the flusher is gone already.
        let _gone = self.shutdown.send(true);
    }
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        self.shared.letting_go();
        self.signal_shutdown();
        if !self.shared.is_closed() {
            let stats = self.shared.state().stats();
            tracing::warn!(
                dir = %self.shared.cfg().dir().display(),
                dirty = stats.dirty_entries,
                "cache dropped without close(): unflushed writes stay in the WAL until the next open"
            );
        }
        // The flusher ends at its next await; the directory lock goes with
        // the last part that holds the shared state (an open of the same
        // directory in this process waits for that).
        if let Some(task) = self.flusher.lock().take() {
            task.abort();
        }
        if let Some(r) = self.shared.replica() {
            r.abort();
        }
        drop(self.listener.lock().take());
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

/// How long `close` waits for the database pool's connections to come back.
const POOL_CLOSE: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn close(sh: &Arc<Shared>, life: &Lifetime) -> Result<()> {
    let span = tracing::info_span!("close", dir = %sh.cfg().dir().display());
    close_in(sh, life).instrument(span).await
}

async fn close_in(sh: &Arc<Shared>, life: &Lifetime) -> Result<()> {
    if !sh.mark_closed() {
        return Err(Error::Closed);
    }
    let mut errors = Vec::new();
    life.signal_shutdown();
    // The loop stops between rounds; one mid-round is cancelled (its cut
    // stays in flight and the final flush below resumes it).
    let flusher = life.flusher.lock().take();
    if let Some(task) = flusher {
        task.abort();
        match task.await {
            Ok(()) => {}
            Err(e) if e.is_cancelled() => {}
            Err(e) => errors.push(Error::Stopped {
                task: "flusher",
                reason: e.to_string(),
            }),
        }
    }
    if let Some(p) = sh.pipeline() {
        let deadline = sh.cfg().close_timeout();
        match tokio::time::timeout(deadline, p.flush_all()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push(Error::FlushTimeout {
                target: sh.wal().last_lsn(),
                flushed: p.counts().flushed_lsn,
                waited: deadline,
                cause: p.last_error(),
            }),
        }
    }
    if !sh.wal().is_poisoned() {
        if let Err(e) = sh.compactor().checkpoint() {
            errors.push(e);
        }
    }
    drop(life.listener.lock().take());
    if let Some(p) = sh.pipeline() {
        // Waits for checked-out connections; a load stuck on a dead server
        // must not hold close forever.
        if tokio::time::timeout(POOL_CLOSE, p.writer().close())
            .await
            .is_err()
        {
            tracing::warn!(waited = ?POOL_CLOSE, "database connections still busy at close; dropped");
        }
    }
    let checkpointer = life.checkpointer.lock().take();
    if let Some(t) = checkpointer {
        // The thread sees `closed` within its 200 ms tick, or at once when woken.
        sh.compactor().wake();
        if let Err(panic) = t.join() {
            errors.push(Error::Stopped {
                task: "checkpoint thread",
                reason: crate::supervise::panic_message(&*panic),
            });
        }
    }
    if let Err(e) = sh.sync_wal("close") {
        errors.push(e);
    }
    if let Some(e) = stop_replication(sh).await {
        errors.push(e);
    }
    sh.publish_metrics();
    if errors.is_empty() {
        tracing::info!("closed");
        Ok(())
    } else {
        tracing::error!(errors = ?errors, "close met errors; what was not flushed stays in the WAL");
        Err(Error::Close(errors))
    }
}

/// Lets the replica publish what is left (within the close timeout, at
/// most 10 s: it may be down), then stops it. What it could not publish is
/// in the local WAL and goes at the next open.
async fn stop_replication(sh: &Arc<Shared>) -> Option<Error> {
    let r = sh.replica()?;
    let bound = sh
        .cfg()
        .close_timeout()
        .min(std::time::Duration::from_secs(10));
    r.stop(bound).await.err().map(Error::from)
}
