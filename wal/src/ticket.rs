//! Progress shared between appenders, waiters and the committer, and the `Append` ticket.

use std::collections::BinaryHeap;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;

use crate::committer::CommitCell;
use crate::{Error, Lsn, ReplicaAcks, Result};

/// What a `Replicated` ticket waits for after the local write.
#[derive(Debug)]
pub(crate) struct ReplicaTicket {
    pub(crate) acks: ReplicaAcks,
    pub(crate) since: std::time::Instant,
    pub(crate) deadline: std::time::Instant,
}

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

/// A parked waiter: woken when its watermark reaches `lsn`. Ordered by LSN (min-heap).
#[derive(Debug)]
struct Waiter {
    lsn: Lsn,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Waiter {
    fn eq(&self, o: &Self) -> bool {
        (self.lsn, self.seq) == (o.lsn, o.seq)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Waiter {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap and we pop the smallest LSN first.
        (o.lsn, o.seq).cmp(&(self.lsn, self.seq))
    }
}

#[derive(Debug, Default)]
struct WaitState {
    poison: Option<PoisonInfo>,
    on_written: BinaryHeap<Waiter>,
    on_durable: BinaryHeap<Waiter>,
    seq: u64,
}

/// Wakes a thread blocked in [`Progress::wait`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Written/durable watermarks plus the poison and close flags.
///
/// Waiters (blocking or async) register a `Waker` keyed by LSN; the committer wakes exactly
/// the ones a new watermark satisfies, each once, outside the lock (no thundering herd).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    written: AtomicU64,
    durable: AtomicU64,
    poisoned: AtomicBool,
    closed: AtomicBool,
    waiters: AtomicUsize,
    /// Records in the last group written: more than one means appenders overlap.
    last_group: AtomicU64,
    state: Mutex<WaitState>,
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

    /// Publishes a new written watermark; the caller calls [`Progress::wake_ready`] later
    /// (after releasing the commit lock).
    pub(crate) fn store_written(&self, written: Lsn) {
        self.written.fetch_max(written, SeqCst);
    }

    /// Publishes a new durable watermark (which implies written) without waking anyone.
    pub(crate) fn store_durable(&self, durable: Lsn) {
        self.written.fetch_max(durable, SeqCst);
        self.durable.fetch_max(durable, SeqCst);
    }

    /// Wakes every waiter the current watermarks satisfy.
    pub(crate) fn wake_ready(&self) {
        self.wake(false);
    }

    /// Publishes a new durable watermark (which implies written) and wakes whoever it satisfies.
    pub(crate) fn set_durable(&self, durable: Lsn) {
        self.written.fetch_max(durable, SeqCst);
        self.durable.fetch_max(durable, SeqCst);
        self.wake(false);
    }

    pub(crate) fn poison(
        &self,
        op: &'static str,
        path: PathBuf,
        err: &std::io::Error,
        affected: (Lsn, Lsn),
    ) {
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
        self.wake(true);
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, SeqCst);
        self.wake(true);
    }

    fn wake(&self, all: bool) {
        // Pairs with `register`: a waiter bumps the count before its final re-check.
        if self.waiters.load(SeqCst) == 0 {
            return;
        }
        let (w, d) = (self.written(), self.durable());
        let mut ready = Vec::new();
        {
            let mut guard = self.state.lock();
            let st = &mut *guard;
            for (heap, mark) in [(&mut st.on_written, w), (&mut st.on_durable, d)] {
                while heap.peek().is_some_and(|x| all || x.lsn <= mark) {
                    if let Some(x) = heap.pop() {
                        ready.push(x.waker);
                    }
                }
            }
            self.waiters
                .store(st.on_written.len() + st.on_durable.len(), SeqCst);
        }
        ready.into_iter().for_each(Waker::wake);
    }

    /// Whether the ticket for `lsn` is resolved (without taking the state lock).
    pub(crate) fn resolved(&self, lsn: Lsn, need_durable: bool) -> bool {
        let mark = if need_durable {
            self.durable()
        } else {
            self.written()
        };
        mark >= lsn || self.is_poisoned() || self.is_closed()
    }

    /// `Some(result)` once the ticket for `lsn` is resolved.
    fn check(&self, lsn: Lsn, need_durable: bool) -> Option<Result<Lsn>> {
        let mark = if need_durable {
            self.durable()
        } else {
            self.written()
        };
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

    pub(crate) fn poison_error(&self, lsn: Lsn) -> Error {
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

    /// Registers `waker`; returns false (and registers nothing) if already resolved.
    fn register(&self, lsn: Lsn, need_durable: bool, waker: &Waker) -> bool {
        let mut st = self.state.lock();
        self.waiters.fetch_add(1, SeqCst);
        if self.resolved(lsn, need_durable) {
            self.waiters.fetch_sub(1, SeqCst);
            return false;
        }
        st.seq += 1;
        let w = Waiter {
            lsn,
            seq: st.seq,
            waker: waker.clone(),
        };
        if need_durable {
            st.on_durable.push(w);
        } else {
            st.on_written.push(w);
        }
        true
    }

    /// Blocks until `lsn` is written (or durable) or the log failed.
    pub(crate) fn wait(&self, lsn: Lsn, need_durable: bool) -> Result<Lsn> {
        if let Some(r) = self.check(lsn, need_durable) {
            return r;
        }
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        if self.register(lsn, need_durable, &waker) {
            // Spurious unparks are possible: re-check until resolved.
            while !self.resolved(lsn, need_durable) {
                std::thread::park();
            }
        }
        self.check(lsn, need_durable).unwrap_or(Err(Error::Closed))
    }

    fn poll_ticket(&self, lsn: Lsn, need_durable: bool, cx: &mut Context<'_>) -> Poll<Result<Lsn>> {
        if let Some(r) = self.check(lsn, need_durable) {
            return Poll::Ready(r);
        }
        if self.register(lsn, need_durable, cx.waker()) {
            return Poll::Pending;
        }
        Poll::Ready(self.check(lsn, need_durable).unwrap_or(Err(Error::Closed)))
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
    /// [`Error::Poisoned`]; [`Error::Closed`] if the log shut down first.
    ///
    /// If nobody is committing, the calling thread writes (and fdatasyncs) the queued group
    /// itself instead of waiting for the committer thread to be scheduled.
    ///
    /// A `Replicated` record then waits for the replica's acknowledgement, within the
    /// replica's wait bound ([`Error::ReplicaTimeout`], [`Error::ReplicaStopped`]).
    pub fn wait(self) -> Result<Lsn> {
        if !self.progress.resolved(self.lsn, self.need_durable) {
            self.commit.try_lead();
        }
        let lsn = self.progress.wait(self.lsn, self.need_durable)?;
        match &self.replica {
            None => Ok(lsn),
            Some(r) => r.acks.wait(lsn, r.deadline),
        }
    }

    /// Whether `wait` would return without blocking.
    pub fn is_ready(&self) -> bool {
        match self.progress.check(self.lsn, self.need_durable) {
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
        if !self.progress.resolved(self.lsn, false) {
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
            if self.ticket.progress.shared_groups()
                && !self.ticket.progress.resolved(lsn, need_durable)
            {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if !self.led {
            self.led = true;
            if !self.ticket.progress.resolved(lsn, need_durable) {
                self.ticket.commit.try_lead();
            }
        }
        match self.ticket.progress.poll_ticket(lsn, need_durable, cx) {
            Poll::Ready(Ok(lsn)) => match &self.ticket.replica {
                None => Poll::Ready(Ok(lsn)),
                Some(r) => r.acks.poll_ticket(lsn, r.since, r.deadline, cx),
            },
            other => other,
        }
    }
}
