//! Backpressure: one place decides whether a write has room, waits for the
//! background work to make some, or fails with [`Error::Backpressure`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;
use writebehind_core::Key;

use crate::config::Backpressure;
use crate::error::Limit;
use crate::shared::Shared;
use crate::{Error, Result};

/// Wakes writers waiting for room, and counts them.
#[derive(Default)]
pub(crate) struct Room {
    generation: Mutex<u64>,
    cvar: Condvar,
    notify: Notify,
    waits: AtomicU64,
    rejections: AtomicU64,
}

impl Room {
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
    pub(crate) async fn wait_async(&self, sh: &Shared, key: &Key) -> Result<()> {
        let started = Instant::now();
        let Some(wait) = self.room_or_wait(sh, key, started)? else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(limit) = over_limit(sh, key) else {
                return Ok(());
            };
            make_room(sh, limit);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return match over_limit(sh, key) {
                    None => Ok(()),
                    Some(limit) => Err(self.reject(limit, started)),
                };
            }
        }
    }

    /// Blocking [`wait_async`](Self::wait_async).
    pub(crate) fn wait_blocking(&self, sh: &Shared, key: &Key) -> Result<()> {
        let started = Instant::now();
        let Some(wait) = self.room_or_wait(sh, key, started)? else {
            return Ok(());
        };
        let deadline = started + wait;
        let mut generation = self.generation.lock();
        loop {
            let Some(limit) = over_limit(sh, key) else {
                return Ok(());
            };
            make_room(sh, limit);
            // Short waits as well as notifications: the flusher runs elsewhere.
            let step = Instant::now() + Duration::from_millis(50);
            if self
                .cvar
                .wait_until(&mut generation, step.min(deadline))
                .timed_out()
                && Instant::now() >= deadline
            {
                return match over_limit(sh, key) {
                    None => Ok(()),
                    Some(limit) => Err(self.reject(limit, started)),
                };
            }
        }
    }

    /// `None` when there is room, the time to wait when the policy says
    /// wait, the `Backpressure` error when it says fail.
    fn room_or_wait(&self, sh: &Shared, key: &Key, started: Instant) -> Result<Option<Duration>> {
        let Some(limit) = over_limit(sh, key) else {
            return Ok(None);
        };
        match sh.cfg().backpressure() {
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
}

/// The limit a write to `key` would break, if any. A key that is already
/// dirty takes no new entry, so only bytes and WAL limits apply to it.
fn over_limit(sh: &Shared, key: &Key) -> Option<Limit> {
    let limits = sh.cfg().limits();
    let state = sh.state();
    if state.dirty_entries() >= limits.max_dirty_entries && !state.is_dirty(key) {
        Some(Limit::DirtyEntries)
    } else if state.dirty_bytes() >= limits.max_dirty_bytes {
        Some(Limit::DirtyBytes)
    } else if sh.compactor().wal_bytes() >= sh.cfg().max_wal_bytes() {
        Some(Limit::WalBytes)
    } else {
        None
    }
}

/// Asks the background work that frees `limit` to run now.
fn make_room(sh: &Shared, limit: Limit) {
    match limit {
        Limit::WalBytes => sh.compactor().wake(),
        Limit::DirtyEntries | Limit::DirtyBytes => {
            if let Some(p) = sh.pipeline() {
                p.wake();
            }
        }
    }
}
