//! The `Append` ticket and its future.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::commit_cell::CommitCell;
use crate::watermarks::Watermarks;
use crate::{Lsn, ReplicaWatermark, Result};

/// What a `Replicated` ticket waits for after the local write.
#[derive(Debug)]
pub(crate) struct ReplicaTicket {
    pub(crate) acks: ReplicaWatermark,
    pub(crate) since: std::time::Instant,
    pub(crate) deadline: std::time::Instant,
}

/// The ticket `append` returns: the record's LSN is assigned; [`Append::wait`] (blocking) or
/// `.await` resolves once the record is as durable as its durability mode promises.
#[derive(Debug)]
#[must_use = "an append is only durable once its ticket resolves"]
pub struct Append {
    pub(crate) lsn: Lsn,
    pub(crate) need_durable: bool,
    pub(crate) watermarks: Arc<Watermarks>,
    pub(crate) commit: Arc<CommitCell>,
    pub(crate) replica: Option<ReplicaTicket>,
}

impl Append {
    /// The LSN assigned to the record.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Blocks until the record is durable per its mode; returns its LSN. After an I/O failure:
    /// the original I/O error if this record was part of the failed write or fsync, otherwise
    /// [`Error::Poisoned`](crate::Error::Poisoned); [`Error::Closed`](crate::Error::Closed)
    /// if the log shut down first.
    ///
    /// If nobody is committing, the calling thread writes (and fdatasyncs) the queued group
    /// itself instead of waiting for the committer thread to be scheduled.
    ///
    /// A `Replicated` record then waits for the replica's acknowledgement, within the
    /// replica's wait bound ([`Error::ReplicaTimeout`](crate::Error::ReplicaTimeout),
    /// [`Error::ReplicaStopped`](crate::Error::ReplicaStopped)).
    pub fn wait(self) -> Result<Lsn> {
        if !self.watermarks.resolved(self.lsn, self.need_durable) {
            self.commit.try_lead();
        }
        let lsn = self.watermarks.wait(self.lsn, self.need_durable)?;
        match &self.replica {
            None => Ok(lsn),
            Some(r) => r.acks.wait(lsn, r.deadline),
        }
    }

    /// Whether `wait` would return without blocking.
    pub fn is_ready(&self) -> bool {
        match self.watermarks.check(self.lsn, self.need_durable) {
            Some(Ok(_)) => self
                .replica
                .as_ref()
                .is_none_or(|r| r.acks.resolved(self.lsn, r.since, r.deadline)),
            Some(Err(_)) => true,
            None => false,
        }
    }
}

impl Drop for Append {
    fn drop(&mut self) {
        // Nobody will lead for this record (a cancelled future, a dropped ticket): leave it
        // to the committer thread rather than in the queue.
        if !self.watermarks.resolved(self.lsn, false) {
            self.commit.kick();
        }
    }
}

impl IntoFuture for Append {
    type Output = Result<Lsn>;
    type IntoFuture = AppendFuture;

    fn into_future(self) -> AppendFuture {
        AppendFuture {
            ticket: self,
            yielded: false,
            led: false,
            parked: None,
            replica_parked: None,
        }
    }
}

/// The future of an [`Append`] ticket (`ticket.await`).
///
/// Like [`Append::wait`], it writes the queued group itself when nobody is committing: a
/// write to the OS (microseconds), and the fdatasync when the group holds a `Fsync` record,
/// on the polling thread. A lone appender does so on its first poll. When the last group held
/// more than one record (others are appending), the first poll yields to the executor once
/// and the second leads, so the appenders queued meanwhile share one write. At most one
/// thread commits at a time, so under load a single executor thread is ever in the log's I/O;
/// other waiters are woken by waker.
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct AppendFuture {
    ticket: Append,
    yielded: bool,
    led: bool,
    /// The wakers parked on the log's and on the replica's watermark (see `Mark::poll`).
    parked: Option<Waker>,
    replica_parked: Option<Waker>,
}

impl Future for AppendFuture {
    type Output = Result<Lsn>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (lsn, need_durable) = (self.ticket.lsn, self.ticket.need_durable);
        if !self.yielded {
            self.yielded = true;
            // Under load, yield once before leading: the executor runs the other appenders
            // first, their records join this group, and one write serves them all instead of
            // a write (a syscall of several µs) per record or two. A lone appender skips it.
            if self.ticket.watermarks.shared_groups()
                && !self.ticket.watermarks.resolved(lsn, need_durable)
            {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if !self.led {
            self.led = true;
            if !self.ticket.watermarks.resolved(lsn, need_durable) {
                self.ticket.commit.try_lead();
            }
        }
        let this = &mut *self;
        match this
            .ticket
            .watermarks
            .poll_ticket(lsn, need_durable, &mut this.parked, cx)
        {
            Poll::Ready(Ok(lsn)) => match &this.ticket.replica {
                None => Poll::Ready(Ok(lsn)),
                Some(r) => {
                    r.acks
                        .poll_ticket(lsn, r.since, r.deadline, &mut this.replica_parked, cx)
                }
            },
            other => other,
        }
    }
}
