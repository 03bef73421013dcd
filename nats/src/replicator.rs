//! The replica of one instance: the WAL's sink, the state its task shares
//! with the cache, and the [`Replica`] calls the cache makes on it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};
use writebehind_wal::replication::BoxFuture;
use writebehind_wal::{
    Group, Lsn, ReadBack, RebuildSource, Replica, ReplicaCounts, ReplicaSink, ReplicaWatermark,
};

use crate::history::take_over;
use crate::names::Names;
use crate::owner::Claim;
use crate::{Error, Result, QUEUE};

/// The WAL's replica sink, and the state its task shares with the cache.
#[derive(Debug)]
pub(crate) struct Replicator {
    pub(crate) names: Names,
    pub(crate) watermark: ReplicaWatermark,
    tx: mpsc::Sender<Group>,
    rx: Mutex<Option<mpsc::Receiver<Group>>>,
    /// A full queue dropped a group: re-read from the local WAL.
    pub(crate) dropped: AtomicBool,
    /// Last LSN offered.
    offered: AtomicU64,
    /// Since when the replica is behind what was offered.
    behind_since: Mutex<Option<Instant>>,
    /// Purge below this flush position (0: nothing asked).
    pub(crate) trim_to: AtomicU64,
    /// A local checkpoint was written at this LSN: publish it.
    pub(crate) checkpoint_at: AtomicU64,
    pub(crate) wake: Notify,
    pub(crate) failures: AtomicU64,
    pub(crate) messages: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) purges: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    /// This owner's claim on the stream: taken at open, or by the task
    /// once NATS answers when it could not be reached at open.
    claim: Mutex<Option<Claim>>,
    /// A claim the task takes: the first LSN this owner gives out.
    pub(crate) base: AtomicU64,
    /// A claim the task takes: at least this epoch.
    pub(crate) at_least: AtomicU64,
    /// A newer owner's epoch, once this one was fenced (0: not fenced).
    fenced: AtomicU64,
    /// The local WAL, read back for what the queue dropped (set at start).
    log: OnceLock<Weak<dyn ReadBack>>,
    /// The publishing task and its stop signal, once started.
    task: Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
}

impl ReplicaSink for Replicator {
    fn offer(&self, group: Group) {
        let last = group.last;
        {
            let mut b = self.behind_since.lock();
            if b.is_none() {
                *b = Some(Instant::now());
            }
        }
        self.offered.store(last, Ordering::Release);
        if self.tx.try_send(group).is_err() {
            // Full (or the task is gone): the task re-reads it from the WAL.
            self.dropped.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }
}

impl Replicator {
    pub(crate) fn new(names: Names) -> Result<Arc<Replicator>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok(Arc::new(Replicator {
            names,
            watermark: ReplicaWatermark::new(0)?,
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicBool::new(false),
            offered: AtomicU64::new(0),
            behind_since: Mutex::new(None),
            trim_to: AtomicU64::new(0),
            checkpoint_at: AtomicU64::new(0),
            wake: Notify::new(),
            failures: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            purges: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            claim: Mutex::new(None),
            base: AtomicU64::new(Lsn::MAX),
            at_least: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            log: OnceLock::new(),
            task: Mutex::new(None),
        }))
    }

    /// The claim this owner holds.
    pub(crate) fn claim(&self) -> Option<Claim> {
        *self.claim.lock()
    }

    /// The claim taken at open, or by the task later.
    pub(crate) fn set_claim(&self, claim: Claim) {
        *self.claim.lock() = Some(claim);
    }

    /// The local WAL, while the cache holds it.
    pub(crate) fn log(&self) -> Option<Arc<dyn ReadBack>> {
        self.log.get().and_then(Weak::upgrade)
    }

    /// The newer owner's epoch, when this one was fenced.
    pub(crate) fn fenced_by(&self) -> Option<u64> {
        match self.fenced.load(Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    /// Fenced by `epoch`: every `Replicated` wait fails at once, naming it.
    pub(crate) fn fence(&self, ours: u64, epoch: u64) -> Error {
        self.fenced.store(epoch.max(1), Ordering::Release);
        let e = fenced_error(&self.names.instance, ours, epoch);
        tracing::error!(instance = %self.names.instance, ours, owner_epoch = epoch,
            "fenced: a newer owner claimed this instance on the stream; nothing more is published or acknowledged, and writes are refused");
        self.watermark.close(e.to_string());
        e
    }

    /// The replica holds everything up to `lsn`.
    pub(crate) fn advance_replicated(&self, lsn: Lsn) {
        self.watermark.advance(lsn);
        let mut b = self.behind_since.lock();
        *b = (self.offered.load(Ordering::Acquire) > lsn).then(Instant::now);
    }
}

impl Replica for Replicator {
    fn watermark(&self) -> &ReplicaWatermark {
        &self.watermark
    }

    fn take_over(&self, patience: Duration) -> BoxFuture<'_, Result<Box<dyn RebuildSource>>> {
        Box::pin(async move {
            let t = take_over(&self.names, 0, patience).await?;
            self.set_claim(t.claim);
            Ok(Box::new(t.history) as Box<dyn RebuildSource>)
        })
    }

    fn defer_claim(&self, base: Lsn) {
        self.base.store(base, Ordering::Release);
        self.at_least.store(0, Ordering::Release);
    }

    fn epoch(&self) -> Option<u64> {
        self.claim().map(|c| c.epoch)
    }

    fn fenced(&self) -> Option<Error> {
        let owner_epoch = self.fenced_by()?;
        Some(fenced_error(
            &self.names.instance,
            self.epoch().unwrap_or(0),
            owner_epoch,
        ))
    }

    fn flushed(&self, position: Lsn) {
        self.trim_to.fetch_max(position, Ordering::AcqRel);
        self.wake.notify_one();
    }

    fn checkpointed(&self, lsn: Lsn) {
        self.checkpoint_at.fetch_max(lsn, Ordering::AcqRel);
        self.wake.notify_one();
    }

    fn counts(&self, last_lsn: Lsn) -> ReplicaCounts {
        let acked = self.watermark.replicated();
        let lag = if acked >= last_lsn {
            Duration::ZERO
        } else {
            self.behind_since
                .lock()
                .map_or(Duration::ZERO, |t| t.elapsed())
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReplicaCounts {
            replicated_lsn: acked,
            lag,
            failures: get(&self.failures),
            messages: get(&self.messages),
            duplicates: get(&self.duplicates),
            purges: get(&self.purges),
            checkpoints: get(&self.checkpoints),
            last_error: self.watermark.last_error(),
        }
    }

    /// Starts the publishing task, supervised: a panic or an error is
    /// logged, counted and handed to every waiter (their waits fail at once).
    fn start(
        self: Arc<Self>,
        log: Weak<dyn ReadBack>,
        panicked: Box<dyn Fn() + Send + Sync>,
    ) -> Result<()> {
        let Some(rx) = self.rx.lock().take() else {
            return Ok(());
        };
        if self.log.set(log.clone()).is_err() {
            return Err(Error::Config("the replica was started twice".into()));
        }
        let (stop, stop_rx) = watch::channel(false);
        let rep = self.clone();
        let task = tokio::spawn(async move {
            let work = crate::task::run(&rep, &log, rx, stop_rx);
            supervised(work, &rep.watermark, &rep.names.url, &panicked).await;
        });
        *self.task.lock() = Some((stop, task));
        Ok(())
    }

    /// Asks the task to publish what is left and waits for it (within
    /// `bound`: NATS may be down), then stops it. What it could not
    /// publish is in the local WAL and goes at the next open.
    fn stop(&self, bound: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let Some((stop, mut task)) = self.task.lock().take() else {
                return Ok(());
            };
            // Fails only when the task already ended: then there is nothing to stop.
            let _stopping = stop.send(true);
            let ended = tokio::time::timeout(bound, &mut task).await;
            if ended.is_err() {
                task.abort();
            }
            let last = self.log().map_or(0, |log| log.wal().last_lsn());
            let acked = self.watermark.replicated();
            self.watermark.close("the cache is closed");
            match ended {
                Ok(Err(e)) if !e.is_cancelled() => Err(Error::Stopped {
                    reason: e.to_string(),
                }),
                _ if acked < last => Err(self.names.error(format!(
                    "LSN {}..={last} not replicated at close{}; they stay in the local WAL and are published at the next open",
                    acked + 1,
                    self.watermark.last_error().map(|e| format!(" ({e})")).unwrap_or_default()
                ))),
                _ => Ok(()),
            }
        })
    }

    fn abort(&self) {
        if let Some((_, task)) = self.task.lock().take() {
            task.abort();
        }
    }
}

/// The error a fenced owner's waits and writes get.
pub(crate) fn fenced_error(instance: &str, ours: u64, owner_epoch: u64) -> Error {
    Error::Fenced {
        instance: instance.to_owned(),
        ours,
        owner_epoch,
    }
}

/// Runs the task's work; a panic is logged, counted (`panicked`) and
/// closes the watermark, so every `Replicated` wait fails at once naming it.
pub(crate) async fn supervised(
    work: impl Future<Output = ()>,
    acks: &ReplicaWatermark,
    url: &str,
    panicked: impl FnOnce(),
) {
    let Err(panic) = std::panic::AssertUnwindSafe(work).catch_unwind().await else {
        return;
    };
    panicked();
    let reason = format!("the replication task panicked: {}", panic_message(&*panic));
    tracing::error!(url, %reason, "replication stopped");
    acks.close(reason);
}

/// A panic's message, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_fails_every_replicated_wait_at_once() {
        let acks = ReplicaWatermark::new(0).unwrap();
        let waiting = acks.wait_async(1, Instant::now() + Duration::from_secs(30));
        let mut counted = 0;
        supervised(
            async { panic!("boom") },
            &acks,
            "nats://127.0.0.1:4222",
            || counted += 1,
        )
        .await;
        assert_eq!(counted, 1);
        let started = Instant::now();
        let e = waiting.await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(&e, writebehind_wal::Error::ReplicaStopped { lsn: 1, reason } if reason == "the replication task panicked: boom"),
            "{e:?}"
        );
    }
}
