//! The log's written and durable watermarks, its poison and close state, and the waits on
//! them (through [`crate::waiters`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::waiters::Mark;
use crate::{Error, Lsn, Result};

/// Marker: the log is poisoned (the details went to [`Watermarks::poison`]).
pub(crate) struct Poisoned;

/// The I/O failure that poisoned the log, kept so affected tickets can report it.
#[derive(Debug)]
struct PoisonInfo {
    op: &'static str,
    path: PathBuf,
    kind: std::io::ErrorKind,
    message: String,
    /// Tickets with an LSN in this range had their data in the failed operation.
    affected: (Lsn, Lsn),
}

/// Written/durable watermarks plus the poison and close flags.
///
/// Waiters (blocking or async) park on the watermark they need; the committer wakes exactly
/// the ones a new watermark satisfies, each once, outside the lock (no thundering herd).
#[derive(Debug)]
pub(crate) struct Watermarks {
    written: Mark,
    durable: Mark,
    poisoned: AtomicBool,
    poison: Mutex<Option<PoisonInfo>>,
    /// Records in the last group written: more than one means appenders overlap.
    last_group: AtomicU64,
}

impl Watermarks {
    pub(crate) fn new(initial: Lsn) -> Self {
        Watermarks {
            written: Mark::new(initial),
            durable: Mark::new(initial),
            poisoned: AtomicBool::new(false),
            poison: Mutex::new(None),
            last_group: AtomicU64::new(0),
        }
    }

    fn mark(&self, need_durable: bool) -> &Mark {
        if need_durable {
            &self.durable
        } else {
            &self.written
        }
    }

    pub(crate) fn durable(&self) -> Lsn {
        self.durable.get()
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(SeqCst)
    }

    /// Notes how many records the group just written held.
    pub(crate) fn note_group(&self, records: u64) {
        // Every async appender reads this line: store only on a change, so steady groups do
        // not invalidate it in their caches.
        if self.last_group.load(Relaxed) != records {
            self.last_group.store(records, Relaxed);
        }
    }

    /// Whether the last group held records of more than one appender: others are appending
    /// too, so an async appender lets them queue before it leads.
    pub(crate) fn shared_groups(&self) -> bool {
        self.last_group.load(Relaxed) > 1
    }

    /// Publishes a new written watermark; the caller calls [`Watermarks::wake_ready`] later
    /// (after releasing the commit lock).
    pub(crate) fn store_written(&self, written: Lsn) {
        self.written.raise(written);
    }

    /// Publishes a new durable watermark (which implies written) without waking anyone.
    pub(crate) fn store_durable(&self, durable: Lsn) {
        self.written.raise(durable);
        self.durable.raise(durable);
    }

    /// Wakes every waiter the current watermarks satisfy.
    pub(crate) fn wake_ready(&self) {
        self.written.wake_reached();
        self.durable.wake_reached();
    }

    /// Publishes a new durable watermark (which implies written) and wakes whoever it satisfies.
    pub(crate) fn set_durable(&self, durable: Lsn) {
        self.store_durable(durable);
        self.wake_ready();
    }

    pub(crate) fn poison(
        &self,
        op: &'static str,
        path: PathBuf,
        err: &std::io::Error,
        affected: (Lsn, Lsn),
    ) {
        self.poison.lock().get_or_insert_with(|| PoisonInfo {
            op,
            path,
            kind: err.kind(),
            message: err.to_string(),
            affected,
        });
        self.poisoned.store(true, SeqCst);
        self.written.wake_all();
        self.durable.wake_all();
    }

    pub(crate) fn close(&self) {
        self.written.close();
        self.durable.close();
    }

    /// Whether the ticket for `lsn` is resolved (without taking a lock).
    pub(crate) fn resolved(&self, lsn: Lsn, need_durable: bool) -> bool {
        self.mark(need_durable)
            .resolved(lsn, None, || self.is_poisoned())
    }

    /// `Some(result)` once the ticket for `lsn` is resolved.
    pub(crate) fn check(&self, lsn: Lsn, need_durable: bool) -> Option<Result<Lsn>> {
        let mark = self.mark(need_durable);
        if mark.get() >= lsn {
            return Some(Ok(lsn));
        }
        if self.is_poisoned() {
            return Some(Err(self.poison_error(lsn)));
        }
        if mark.is_closed() {
            return Some(Err(Error::Closed));
        }
        None
    }

    pub(crate) fn poison_error(&self, lsn: Lsn) -> Error {
        match &*self.poison.lock() {
            Some(p) if p.affected.0 <= lsn && lsn <= p.affected.1 => Error::Io {
                op: p.op,
                path: p.path.clone(),
                source: std::io::Error::new(p.kind, p.message.clone()),
            },
            _ => Error::Poisoned,
        }
    }

    /// Blocks until `lsn` is written (or durable) or the log failed.
    pub(crate) fn wait(&self, lsn: Lsn, need_durable: bool) -> Result<Lsn> {
        if let Some(r) = self.check(lsn, need_durable) {
            return r;
        }
        self.mark(need_durable)
            .block(lsn, None, || self.is_poisoned());
        self.check(lsn, need_durable).unwrap_or(Err(Error::Closed))
    }

    /// One poll of an async wait for `lsn` (`slot`: see [`Mark::poll`]).
    pub(crate) fn poll_ticket(
        &self,
        lsn: Lsn,
        need_durable: bool,
        slot: &mut Option<Waker>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Lsn>> {
        if let Some(r) = self.check(lsn, need_durable) {
            return Poll::Ready(r);
        }
        match self
            .mark(need_durable)
            .poll(lsn, None, slot, cx, || self.is_poisoned())
        {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                Poll::Ready(self.check(lsn, need_durable).unwrap_or(Err(Error::Closed)))
            }
        }
    }
}
