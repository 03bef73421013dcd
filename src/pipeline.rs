//! The flush pipeline: take a cut, write it with the progress row in one
//! transaction, complete it, announce it, report. [`Pipeline`] owns every
//! rule of that protocol and its state (cut generation, status, failures, the
//! progress check); the rest of the crate calls its methods.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use writebehind_core::{Lsn, State};
use writebehind_wal::Replica;
use writebehind_writer::{Retrier, Writer};

use crate::config::{Config, ConflictHook};
use crate::events::{FlushEvents, Flushed};
use crate::lock::LockedWal;
use crate::metrics::{Metrics, Unflushed};
use crate::supervise::panic_message;
use crate::supervise::Supervisor;
use crate::{Error, Result};

mod at_open;
mod round;

/// Where the flusher stands, watched by waiters.
#[derive(Clone, Debug, Default)]
pub(crate) struct FlushStatus {
    /// Every write with an LSN at or below this is in the database.
    flushed: Lsn,
    /// Failed flush rounds since open.
    failures: u64,
    /// The flusher's last failure (a round's or an attempt's); cleared by a
    /// committed flush.
    last_error: Option<Arc<Error>>,
    /// Whether `last_error` ended a round and retrying will not cure it.
    last_permanent: bool,
    /// The flusher task is gone (cancelled or panicked outside a round).
    stopped: Option<Arc<Error>>,
}

/// The pipeline's counts, for `stats()`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) flushed_lsn: Lsn,
    pub(crate) flushes: u64,
    pub(crate) rows: u64,
    pub(crate) failures: u64,
    pub(crate) retries: u64,
    pub(crate) conflicts: u64,
    pub(crate) dead_letters: u64,
    pub(crate) notifications: u64,
    pub(crate) hook_panics: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) owner_epoch: Option<u64>,
    pub(crate) fenced: Option<u64>,
}

#[derive(Default)]
struct Tally {
    flushes: AtomicU64,
    rows: AtomicU64,
    conflicts: AtomicU64,
    dead_letters: AtomicU64,
    notifications: AtomicU64,
    hook_panics: AtomicU64,
}

pub(crate) struct Pipeline {
    writer: Writer,
    retrier: Retrier,
    status: watch::Sender<FlushStatus>,
    /// Shared with the parts that wake the flusher (`waker`).
    wake: Arc<Notify>,
    /// Bumped when a cut is taken and when one settles: reads that combine
    /// a loaded row with pending deltas start over when it moves.
    cut_generation: AtomicU64,
    create_tables: bool,
    tables_ready: AtomicBool,
    /// Whether the data table was checked against the mapping (nothing is
    /// flushed before; a mismatch refuses the open, or every round).
    schema_checked: AtomicBool,
    /// The WAL's last position at open, until the database's progress row
    /// has been checked against it. Nothing is flushed before that.
    unchecked: Mutex<Option<Lsn>>,
    /// Set when the check failed: every round fails with it.
    refused: OnceLock<Arc<Error>>,
    /// The least owner epoch to claim (an epoch taken on the replication
    /// stream; 0 otherwise).
    at_least: u64,
    /// Set when a newer owner claimed the instance: `(ours, theirs)`.
    /// Nothing is flushed from then on, and writes are refused.
    fenced: OnceLock<(u64, u64)>,
    /// Serialises rounds (the background loop, `close`).
    one_round: tokio::sync::Mutex<()>,
    on_conflict: Option<ConflictHook>,
    notify: bool,
    wait_timeout: Duration,
    dir: std::path::PathBuf,
    tally: Tally,
    /// Told of each finished flush.
    events: FlushEvents,
    /// What a round cuts from, logs to and times.
    parts: FlushParts,
}

/// What the pipeline works on, handed to it when it is built.
pub(crate) struct FlushParts {
    pub(crate) state: Arc<State>,
    pub(crate) wal: Arc<LockedWal>,
    pub(crate) unflushed: Arc<Unflushed>,
    pub(crate) metrics: Arc<Metrics>,
    /// The WAL's replica: a flush waits until it holds the flush's start.
    pub(crate) replica: Option<Arc<dyn Replica>>,
}

impl Pipeline {
    /// A pipeline over `writer`, starting at `flushed`. `wal_last` is the
    /// WAL's last position at open, which the progress row is checked
    /// against. `at_least` is the least owner epoch to claim in the
    /// database (the epoch replication took on the stream; 0 without).
    pub(crate) fn new(
        cfg: &Config,
        writer: Writer,
        notify: bool,
        flushed: Lsn,
        wal_last: Lsn,
        at_least: u64,
        parts: FlushParts,
    ) -> Pipeline {
        let (status, _) = watch::channel(FlushStatus {
            flushed,
            ..FlushStatus::default()
        });
        Pipeline {
            writer,
            retrier: Retrier::new(cfg.retry().clone()),
            status,
            wake: Arc::default(),
            cut_generation: AtomicU64::new(0),
            create_tables: cfg.create_tables(),
            tables_ready: AtomicBool::new(false),
            schema_checked: AtomicBool::new(false),
            unchecked: Mutex::new(Some(wal_last)),
            refused: OnceLock::new(),
            at_least,
            fenced: OnceLock::new(),
            one_round: tokio::sync::Mutex::new(()),
            on_conflict: cfg.on_conflict().cloned(),
            notify,
            wait_timeout: cfg.wait_timeout(),
            dir: cfg.dir().to_path_buf(),
            tally: Tally::default(),
            events: FlushEvents::default(),
            parts,
        }
    }

    /// `observer` is told of every flush the database commits from now on.
    pub(crate) fn on_flushed(&self, observer: impl Fn(&Flushed) + Send + Sync + 'static) {
        self.events.subscribe(observer);
    }

    pub(crate) fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Runs the next round now instead of at the interval.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// What [`wake`](Self::wake) notifies (`notify_one`), for a part that
    /// wakes the flusher without holding the pipeline.
    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The cut generation (see the field).
    pub(crate) fn cut_generation(&self) -> u64 {
        self.cut_generation.load(Ordering::Acquire)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<FlushStatus> {
        self.status.subscribe()
    }

    pub(crate) fn counts(&self) -> Counts {
        let s = self.status.borrow();
        let t = &self.tally;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            flushed_lsn: s.flushed,
            flushes: get(&t.flushes),
            rows: get(&t.rows),
            failures: s.failures,
            retries: self.retrier.retries(),
            conflicts: get(&t.conflicts),
            dead_letters: get(&t.dead_letters),
            notifications: get(&t.notifications),
            hook_panics: get(&t.hook_panics),
            last_error: s.last_error.as_ref().map(|e| e.to_string()),
            owner_epoch: self.owner_epoch(),
            fenced: self.fenced_by(),
        }
    }

    /// The owner epoch this cache claimed in the database; `None` until
    /// the claim succeeded (at open, or before the first flush when the
    /// database was down at open).
    pub(crate) fn owner_epoch(&self) -> Option<u64> {
        self.writer.claimed_epoch()
    }

    /// The newer owner's epoch, once this cache was fenced.
    pub(crate) fn fenced_by(&self) -> Option<u64> {
        self.fenced.get().map(|&(_, theirs)| theirs)
    }

    /// `Err(Error::Fenced)` once a newer owner claimed the instance: the
    /// write path asks before anything reaches the WAL.
    pub(crate) fn check_owner(&self) -> Result<()> {
        match self.fenced_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn fenced_error(&self) -> Option<Error> {
        self.fenced.get().map(|&(ours, owner_epoch)| Error::Fenced {
            instance: self.writer.config().instance().to_owned(),
            ours,
            owner_epoch,
        })
    }

    /// A flush found a newer owner: stop for good, tell every waiter.
    fn fence(&self, ours: u64, owner_epoch: u64) {
        if self.fenced.set((ours, owner_epoch)).is_err() {
            return;
        }
        let error = self.fenced_error().map(Arc::new);
        tracing::error!(
            dir = %self.dir.display(),
            instance = %self.writer.config().instance(),
            ours,
            owner_epoch,
            "fenced: another owner claimed this instance id in the database; this cache flushes nothing more and refuses writes; its unflushed writes stay in its WAL (adopt them, or reopen to claim the instance back)"
        );
        self.status.send_modify(|s| {
            s.failures += 1;
            s.last_error = error;
            s.last_permanent = true;
        });
    }

    /// The flusher's last failure, if the last round did not commit.
    pub(crate) fn last_error(&self) -> Option<Arc<Error>> {
        self.status.borrow().last_error.clone()
    }

    // ---- waiting ----

    /// Waits until the write at `lsn` is in the database, within the wait
    /// bound. A permanent failure of a round that ran during the wait is
    /// returned at once; a transient one only when the bound passes.
    pub(crate) async fn wait_flushed(&self, lsn: Lsn) -> Result<()> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.wait_timeout;
        let mut rx = self.status.subscribe();
        let failures_before = rx.borrow().failures;
        loop {
            {
                let s = rx.borrow_and_update();
                // Nothing dirty (in flight included) means everything is flushed.
                if s.flushed >= lsn || self.parts.state.dirty_entries() == 0 {
                    return Ok(());
                }
                self.check_owner()?;
                if let Some(e) = self.halted(&s) {
                    return Err(Error::Flush(e));
                }
                if s.failures > failures_before && s.last_permanent {
                    if let Some(e) = &s.last_error {
                        return Err(Error::Flush(e.clone()));
                    }
                }
            }
            self.wake();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => {
                    let s = rx.borrow();
                    return Err(Error::FlushTimeout {
                        target: lsn,
                        flushed: s.flushed,
                        waited: started.elapsed(),
                        cause: s.last_error.clone(),
                    });
                }
            }
        }
    }

    /// Waits for the status to move (a round settled or failed), until
    /// `deadline`. For reads that wait for the cut in flight; `key` names
    /// the counter in the error.
    pub(crate) async fn wait_settled(
        &self,
        rx: &mut watch::Receiver<FlushStatus>,
        deadline: tokio::time::Instant,
        started: Instant,
        key: &str,
    ) -> Result<()> {
        self.wake();
        let unsettled = |rx: &watch::Receiver<FlushStatus>| Error::Unsettled {
            key: key.to_owned(),
            waited: started.elapsed(),
            cause: rx.borrow().last_error.clone(),
        };
        self.check_owner()?;
        if let Some(e) = self.halted(&rx.borrow()) {
            return Err(Error::Flush(e));
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(unsettled(rx)),
        }
    }

    /// Why no round will ever succeed: the flusher task is gone, or the
    /// progress check refused this WAL.
    fn halted(&self, s: &FlushStatus) -> Option<Arc<Error>> {
        s.stopped.as_ref().or(self.refused.get()).cloned()
    }

    /// The bound on `flush`, `flushed` and reads that wait for a cut.
    pub(crate) fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }
}

/// Marks the pipeline stopped when the flusher task ends other than by
/// shutdown (cancelled, or a panic outside the per-round guard).
struct StopGuard<'a> {
    pipeline: &'a Pipeline,
    normal: bool,
}

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        if !self.normal {
            self.pipeline.stop(Error::Stopped {
                task: "flusher",
                reason: "the task was cancelled or panicked; writes stay in the WAL".into(),
            });
        }
    }
}

/// The background loop: a round on every interval, threshold or barrier,
/// until shutdown. Each round runs under `catch_unwind`: a panic is logged,
/// counted and handed to waiters like any failure, and the loop goes on.
/// After a failure the next round waits for a growing pause.
pub(crate) async fn run(
    p: Arc<Pipeline>,
    interval: Duration,
    supervisor: Arc<Supervisor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut guard = StopGuard {
        pipeline: &p,
        normal: false,
    };
    let mut failures: u32 = 0;
    loop {
        if failures == 0 {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = p.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(p.pause_after(failures)) => {}
                _ = shutdown.changed() => break,
            }
        }
        if *shutdown.borrow() {
            break;
        }
        match AssertUnwindSafe(p.round()).catch_unwind().await {
            Ok(Ok(())) => failures = 0,
            // Fenced: no round will ever succeed, so none is tried again.
            // Waiters were told by `round`; `close` finds the loop ended.
            Ok(Err(_)) if p.fenced_by().is_some() => break,
            // Logged, counted and handed to waiters by `round`.
            Ok(Err(_)) => failures = failures.saturating_add(1),
            Err(panic) => {
                failures = failures.saturating_add(1);
                let message = panic_message(&*panic);
                tracing::error!(dir = %p.dir.display(), %message, "a flush round panicked; the cut stays in flight and is retried");
                supervisor.panicked();
                p.failed(
                    &Arc::new(Error::Stopped {
                        task: "flush round",
                        reason: format!("panicked: {message}"),
                    }),
                    false,
                );
            }
        }
    }
    guard.normal = true;
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The claim at open honours `at_least` (the epoch replication took on
    /// the stream) and still only grows.
    #[tokio::test]
    async fn the_claim_at_open_honours_at_least() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let cfg = crate::WriteBehind::<String, i64>::builder(dir.path().join("wal"))
            .database(url.clone())
            .create_tables(true)
            .cfg;
        let open = |at_least| {
            let (cfg, url) = (&cfg, &url);
            async move {
                let w = Writer::connect(url, writebehind_writer::WriterConfig::new("i"))
                    .await
                    .unwrap();
                let wal_dir = tempfile::tempdir().unwrap();
                let (wal, _) = writebehind_wal::WalBuilder::new(wal_dir.path())
                    .open()
                    .unwrap();
                let parts = FlushParts {
                    state: Arc::new(State::new(cfg.limits().clone())),
                    wal: Arc::new(LockedWal::new(wal, None)),
                    unflushed: Arc::default(),
                    metrics: Arc::new(Metrics::register("i")),
                    replica: None,
                };
                let p = Pipeline::new(cfg, w, false, 0, 0, at_least, parts);
                p.at_open().await.unwrap();
                let epoch = p.owner_epoch();
                p.writer().close().await;
                epoch
            }
        };
        assert_eq!(open(7).await, Some(7));
        assert_eq!(open(0).await, Some(8));
        assert_eq!(open(3).await, Some(9));
        assert_eq!(open(20).await, Some(20));
    }
}
