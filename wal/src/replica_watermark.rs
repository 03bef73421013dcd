//! How far the replica has stored the log ([`ReplicaWatermark`]), and the waits on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use parking_lot::Mutex;

use crate::waiters::Mark;
use crate::{Error, Lsn, Result};

/// How far the replica has stored the log, and the waits on it.
///
/// The sink calls [`advance`](Self::advance) as the replica confirms groups and
/// [`fail`](Self::fail) when it cannot reach it (kept for the error a timed-out wait returns);
/// [`close`](Self::close) when it stops for good, which fails every waiter at once. A small
/// timer thread (one per watermark, gone within a second of the last handle) wakes waits
/// whose bound passed.
#[derive(Clone, Debug)]
pub struct ReplicaWatermark {
    inner: Arc<Acks>,
}

#[derive(Debug)]
struct Acks {
    mark: Arc<Mark>,
    /// Set before `mark` is closed, so a closed watermark always has its reason.
    last_error: Mutex<Option<String>>,
}

impl ReplicaWatermark {
    /// A watermark at `acked` (what the replica is known to hold).
    pub fn new(acked: Lsn) -> Result<Self> {
        let mark = Mark::with_deadlines(acked, "wal-replica-timer")
            .map_err(|e| Error::io("spawn replica timer", "wal-replica-timer", e))?;
        Ok(ReplicaWatermark {
            inner: Arc::new(Acks {
                mark,
                last_error: Mutex::new(None),
            }),
        })
    }

    /// The highest LSN the replica acknowledged.
    pub fn replicated(&self) -> Lsn {
        self.inner.mark.get()
    }

    /// The replica holds everything up to `lsn`: resolves the waits it covers, clears the
    /// last error.
    pub fn advance(&self, lsn: Lsn) {
        self.inner.mark.raise(lsn);
        *self.inner.last_error.lock() = None;
        self.inner.mark.wake_reached();
    }

    /// The replica could not be reached or refused a group: waits go on (the sink retries),
    /// and one that times out names this reason.
    pub fn fail(&self, reason: impl Into<String>) {
        *self.inner.last_error.lock() = Some(reason.into());
    }

    /// The last failure since the last acknowledgement.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().clone()
    }

    /// The sink stopped for good (with `reason`): every wait, now and later, fails at once.
    pub fn close(&self, reason: impl Into<String>) {
        self.inner
            .last_error
            .lock()
            .get_or_insert_with(|| reason.into());
        self.inner.mark.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.mark.is_closed()
    }

    fn check(&self, lsn: Lsn, since: Instant, deadline: Instant) -> Option<Result<Lsn>> {
        let replicated = self.replicated();
        if replicated >= lsn {
            return Some(Ok(lsn));
        }
        if self.is_closed() {
            return Some(Err(Error::ReplicaStopped {
                lsn,
                reason: self.last_error().unwrap_or_default(),
            }));
        }
        if Instant::now() >= deadline {
            return Some(Err(Error::ReplicaTimeout {
                lsn,
                replicated,
                waited: since.elapsed(),
                last_error: self.last_error(),
            }));
        }
        None
    }

    /// Blocks until the replica holds `lsn`, the sink stops, or `deadline` passes.
    pub fn wait(&self, lsn: Lsn, deadline: Instant) -> Result<Lsn> {
        let since = Instant::now();
        loop {
            if let Some(r) = self.check(lsn, since, deadline) {
                return r;
            }
            self.inner.mark.block(lsn, Some(deadline), || false);
        }
    }

    /// Waits (async) until the replica holds `lsn`, the sink stops, or `deadline` passes.
    pub fn wait_async(&self, lsn: Lsn, deadline: Instant) -> ReplicaWait {
        ReplicaWait {
            acks: self.clone(),
            lsn,
            since: Instant::now(),
            deadline,
            parked: None,
        }
    }

    /// One poll of an async wait for `lsn` (`slot`: see [`Mark::poll`]).
    pub(crate) fn poll_ticket(
        &self,
        lsn: Lsn,
        since: Instant,
        deadline: Instant,
        slot: &mut Option<Waker>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Lsn>> {
        loop {
            if let Some(r) = self.check(lsn, since, deadline) {
                return Poll::Ready(r);
            }
            if self
                .inner
                .mark
                .poll(lsn, Some(deadline), slot, cx, || false)
                .is_pending()
            {
                return Poll::Pending;
            }
        }
    }

    pub(crate) fn resolved(&self, lsn: Lsn, since: Instant, deadline: Instant) -> bool {
        self.check(lsn, since, deadline).is_some()
    }
}

/// The future of [`ReplicaWatermark::wait_async`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct ReplicaWait {
    acks: ReplicaWatermark,
    lsn: Lsn,
    since: Instant,
    deadline: Instant,
    parked: Option<Waker>,
}

impl Future for ReplicaWait {
    type Output = Result<Lsn>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Lsn>> {
        let this = &mut *self;
        this.acks
            .poll_ticket(this.lsn, this.since, this.deadline, &mut this.parked, cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn waits_resolve_on_ack_and_time_out_with_the_last_error() {
        let acks = ReplicaWatermark::new(3).unwrap();
        let far = Instant::now() + Duration::from_secs(10);
        assert_eq!(acks.wait(2, far).unwrap(), 2);
        let a2 = acks.clone();
        let t = std::thread::spawn(move || a2.wait(9, Instant::now() + Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        acks.advance(9);
        assert_eq!(t.join().unwrap().unwrap(), 9);

        acks.fail("replica unreachable");
        let started = Instant::now();
        let e = acks
            .wait(10, Instant::now() + Duration::from_millis(50))
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(
            matches!(&e, Error::ReplicaTimeout { lsn: 10, replicated: 9, last_error: Some(m), .. } if m == "replica unreachable"),
            "{e:?}"
        );
        acks.close("stopped");
        assert!(matches!(
            acks.wait(10, far),
            Err(Error::ReplicaStopped { lsn: 10, .. })
        ));
    }
}
