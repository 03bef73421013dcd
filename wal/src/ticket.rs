//! Progress shared between appenders, waiters and the committer, and the `Append` ticket.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};

use crate::{Error, Lsn, Result};

/// The I/O failure that poisoned the log, kept so affected tickets can report it.
#[derive(Debug)]
pub(crate) struct PoisonInfo {
    op: &'static str,
    path: PathBuf,
    kind: std::io::ErrorKind,
    message: String,
    /// Tickets with an LSN in this range had their data in the failed operation.
    affected: (Lsn, Lsn),
}

#[derive(Debug, Default)]
struct WaitState {
    poison: Option<PoisonInfo>,
    wakers: Vec<(Lsn, bool, Waker)>,
}

/// Written/durable watermarks plus the poison and close flags.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    written: AtomicU64,
    durable: AtomicU64,
    poisoned: AtomicBool,
    closed: AtomicBool,
    sleepers: AtomicUsize,
    wakers: AtomicUsize,
    state: Mutex<WaitState>,
    cond: Condvar,
}

impl Progress {
    pub(crate) fn new(initial: Lsn) -> Self {
        let p = Progress::default();
        p.written.store(initial, SeqCst);
        p.durable.store(initial, SeqCst);
        p
    }

    pub(crate) fn written(&self) -> Lsn {
        self.written.load(SeqCst)
    }

    pub(crate) fn durable(&self) -> Lsn {
        self.durable.load(SeqCst)
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(SeqCst)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Publishes new watermarks and wakes whoever they satisfy.
    pub(crate) fn advance(&self, written: Lsn, durable: Lsn) {
        self.written.store(written, SeqCst);
        self.durable.store(durable, SeqCst);
        self.wake();
    }

    pub(crate) fn poison(&self, op: &'static str, path: PathBuf, err: &std::io::Error, affected: (Lsn, Lsn)) {
        let mut st = self.state.lock();
        if st.poison.is_none() {
            st.poison = Some(PoisonInfo {
                op,
                path,
                kind: err.kind(),
                message: err.to_string(),
                affected,
            });
        }
        self.poisoned.store(true, SeqCst);
        drop(st);
        self.wake();
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, SeqCst);
        self.wake();
    }

    fn wake(&self) {
        // Dekker pairing with `wait`/`poll`: they bump the counters before re-checking.
        if self.sleepers.load(SeqCst) == 0 && self.wakers.load(SeqCst) == 0 {
            return;
        }
        let mut st = self.state.lock();
        self.cond.notify_all();
        if !st.wakers.is_empty() {
            let mut ready = Vec::new();
            st.wakers.retain(|(lsn, durable, w)| {
                if self.resolved(*lsn, *durable) {
                    ready.push(w.clone());
                    false
                } else {
                    true
                }
            });
            self.wakers.store(st.wakers.len(), SeqCst);
            drop(st);
            ready.into_iter().for_each(Waker::wake);
        }
    }

    /// Whether the ticket for `lsn` is resolved (without taking the state lock).
    fn resolved(&self, lsn: Lsn, need_durable: bool) -> bool {
        let mark = if need_durable { self.durable() } else { self.written() };
        mark >= lsn || self.is_poisoned() || self.is_closed()
    }

    /// `Some(result)` once the ticket for `lsn` is resolved.
    fn check(&self, lsn: Lsn, need_durable: bool) -> Option<Result<Lsn>> {
        let mark = if need_durable { self.durable() } else { self.written() };
        if mark >= lsn {
            return Some(Ok(lsn));
        }
        if self.is_poisoned() {
            return Some(Err(self.poison_error(lsn)));
        }
        if self.is_closed() {
            return Some(Err(Error::Closed));
        }
        None
    }

    fn poison_error(&self, lsn: Lsn) -> Error {
        let st = self.state.lock();
        match &st.poison {
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
        self.sleepers.fetch_add(1, SeqCst);
        let mut st = self.state.lock();
        let r = loop {
            // `check` may take the lock for the poison details: release it first.
            if self.resolved(lsn, need_durable) {
                break None;
            }
            self.cond.wait(&mut st);
        };
        drop(st);
        self.sleepers.fetch_sub(1, SeqCst);
        r.unwrap_or_else(|| self.check(lsn, need_durable).unwrap_or(Err(Error::Closed)))
    }

    fn poll_ticket(&self, lsn: Lsn, need_durable: bool, cx: &mut Context<'_>) -> Poll<Result<Lsn>> {
        if let Some(r) = self.check(lsn, need_durable) {
            return Poll::Ready(r);
        }
        {
            let mut st = self.state.lock();
            st.wakers.push((lsn, need_durable, cx.waker().clone()));
            self.wakers.store(st.wakers.len(), SeqCst);
        }
        match self.check(lsn, need_durable) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

/// The ticket `append` returns: the record's LSN is assigned; [`Append::wait`] (blocking) or
/// `.await` resolves once the record is as durable as its durability mode promises.
#[derive(Debug)]
#[must_use = "an append is only durable once its ticket resolves"]
pub struct Append {
    pub(crate) lsn: Lsn,
    pub(crate) need_durable: bool,
    pub(crate) progress: Arc<Progress>,
}

impl Append {
    /// The LSN assigned to the record.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Blocks until the record is durable per its mode; returns its LSN. After an I/O failure:
    /// the original I/O error if this record was part of the failed write or fsync, otherwise
    /// [`Error::Poisoned`]; [`Error::Closed`] if the log shut down first.
    pub fn wait(self) -> Result<Lsn> {
        self.progress.wait(self.lsn, self.need_durable)
    }

    /// Whether `wait` would return without blocking.
    pub fn is_ready(&self) -> bool {
        self.progress.check(self.lsn, self.need_durable).is_some()
    }
}

impl Future for Append {
    type Output = Result<Lsn>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.progress.poll_ticket(self.lsn, self.need_durable, cx)
    }
}
