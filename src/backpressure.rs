//! Backpressure: one place decides whether a write has room, waits for the
//! background work to make some, or fails with [`Error::Backpressure`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;
use writebehind_core::{Key, Limits, State};

use crate::checkpoint::Compactor;
use crate::config::{Backpressure, Config};
use crate::error::Limit;
use crate::{Error, Result};

/// Decides on room for writes, wakes the writers waiting for it, and
/// counts them.
pub(crate) struct Room {
    generation: Mutex<u64>,
    cvar: Condvar,
    notify: Notify,
    waits: AtomicU64,
    rejections: AtomicU64,
    policy: Backpressure,
    limits: Limits,
    state: Arc<State>,
    /// Knows the WAL's size and frees WAL bytes.
    compactor: Arc<Compactor>,
    /// Wakes the flusher (as `Pipeline::wake`), when a database is set.
    flusher: Option<Arc<Notify>>,
}

impl Room {
    /// The room of a cache over `state`, whose WAL the compactor keeps, and
    /// whose flusher (if any) `flusher` wakes.
    pub(crate) fn new(
        cfg: &Config,
        state: Arc<State>,
        compactor: Arc<Compactor>,
        flusher: Option<Arc<Notify>>,
    ) -> Room {
        Room {
            generation: Mutex::new(0),
            cvar: Condvar::new(),
            notify: Notify::new(),
            waits: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            policy: cfg.backpressure(),
            limits: cfg.limits().clone(),
            state,
            compactor,
            flusher,
        }
    }

    /// Room was made (a flush or a checkpoint): wakes the waiting writers.
    pub(crate) fn made(&self) {
        *self.generation.lock() += 1;
        self.cvar.notify_all();
        self.notify.notify_waiters();
    }

    /// Writes that waited for room.
    pub(crate) fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Writes refused for lack of room.
    pub(crate) fn rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }

    /// Returns once a write to `key` has room, or the policy's error.
    pub(crate) async fn wait_async(&self, key: &Key) -> Result<()> {
        let started = Instant::now();
        let Some(wait) = self.room_or_wait(key, started)? else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(limit) = self.over_limit(key) else {
                return Ok(());
            };
            self.make_room(limit);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return match self.over_limit(key) {
                    None => Ok(()),
                    Some(limit) => Err(self.reject(limit, started)),
                };
            }
        }
    }

    /// Blocking [`wait_async`](Self::wait_async).
    pub(crate) fn wait_blocking(&self, key: &Key) -> Result<()> {
        let started = Instant::now();
        let Some(wait) = self.room_or_wait(key, started)? else {
            return Ok(());
        };
        let deadline = started + wait;
        let mut generation = self.generation.lock();
        loop {
            let Some(limit) = self.over_limit(key) else {
                return Ok(());
            };
            self.make_room(limit);
            // Short waits as well as notifications: the flusher runs elsewhere.
            let step = Instant::now() + Duration::from_millis(50);
            if self
                .cvar
                .wait_until(&mut generation, step.min(deadline))
                .timed_out()
                && Instant::now() >= deadline
            {
                return match self.over_limit(key) {
                    None => Ok(()),
                    Some(limit) => Err(self.reject(limit, started)),
                };
            }
        }
    }

    /// `None` when there is room, the time to wait when the policy says
    /// wait, the `Backpressure` error when it says fail.
    fn room_or_wait(&self, key: &Key, started: Instant) -> Result<Option<Duration>> {
        let Some(limit) = self.over_limit(key) else {
            return Ok(None);
        };
        match self.policy {
            Backpressure::Fail => Err(self.reject(limit, started)),
            Backpressure::Wait(wait) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                Ok(Some(wait))
            }
        }
    }

    fn reject(&self, limit: Limit, started: Instant) -> Error {
        self.rejections.fetch_add(1, Ordering::Relaxed);
        Error::Backpressure {
            limit,
            waited: started.elapsed(),
        }
    }

    /// The limit a write to `key` would break, if any. A key that is already
    /// dirty takes no new entry, so only bytes and WAL limits apply to it.
    fn over_limit(&self, key: &Key) -> Option<Limit> {
        let limits = &self.limits;
        let state = &self.state;
        if state.dirty_entries() >= limits.max_dirty_entries && !state.is_dirty(key) {
            Some(Limit::DirtyEntries)
        } else if state.dirty_bytes() >= limits.max_dirty_bytes {
            Some(Limit::DirtyBytes)
        } else if self.compactor.wal_bytes() >= self.compactor.max_wal_bytes() {
            Some(Limit::WalBytes)
        } else {
            None
        }
    }

    /// Asks the background work that frees `limit` to run now.
    fn make_room(&self, limit: Limit) {
        match limit {
            Limit::WalBytes => self.compactor.wake(),
            Limit::DirtyEntries | Limit::DirtyBytes => {
                if let Some(flusher) = &self.flusher {
                    flusher.notify_one();
                }
            }
        }
    }
}
