//! "Wake me when the log reaches LSN n": one mechanism for every watermark of the crate (the
//! written and durable LSNs of [`crate::watermarks::Watermarks`], the replica's acknowledged LSN of
//! [`crate::ReplicaWatermark`]), blocking or async, with or without a deadline.
//!
//! A [`Mark`] is one watermark and the wakers parked on it, in a min-heap by LSN. Whoever
//! raises the mark wakes exactly the waiters it satisfies, each once, outside the lock; with
//! nobody parked that costs one atomic load. A blocking wait parks its thread behind a
//! [`ThreadWaker`]; an async wait registers its task's waker, once per waker. Deadlines are
//! entries like any other: a mark that takes them runs a timer thread that wakes the waiters
//! whose deadline passed, blocking or async alike.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::Lsn;

/// Longest sleep of a mark's timer thread: it notices a dropped mark within this.
const TIMER_IDLE: Duration = Duration::from_secs(1);

/// Wakes a thread blocked in [`Mark::block`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A parked waiter, ordered by LSN (min-heap), then by arrival.
#[derive(Debug)]
struct Entry {
    lsn: Lsn,
    seq: u64,
    deadline: Option<Instant>,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.lsn, self.seq) == (o.lsn, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap and the smallest LSN goes first.
        (o.lsn, o.seq).cmp(&(self.lsn, self.seq))
    }
}

#[derive(Debug, Default)]
struct Parked {
    heap: BinaryHeap<Entry>,
    seq: u64,
    /// The earliest deadline parked, or earlier (it goes stale when its waiter leaves).
    next_deadline: Option<Instant>,
}

/// A watermark (an LSN that only grows) and the waiters parked on it.
///
/// A waiter is resolved once the mark reaches its LSN, once its deadline passes, once the
/// mark is closed, or once the owner's own condition holds (the `also` of the calls below: a
/// poisoned log, say). Entries leave the heap only when resolved, so a waiter that is not
/// resolved is still parked.
#[derive(Debug)]
pub(crate) struct Mark {
    value: AtomicU64,
    closed: AtomicBool,
    /// Entries in the heap; read without the lock to skip it when nobody waits.
    parked: AtomicUsize,
    st: Mutex<Parked>,
    /// The timer thread sleeps on it (marks that take deadlines only).
    timer_cv: Condvar,
    has_timer: AtomicBool,
}

impl Mark {
    /// A mark at `value`, for waits without deadline.
    pub(crate) fn new(value: Lsn) -> Self {
        Mark {
            value: AtomicU64::new(value),
            closed: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            st: Mutex::new(Parked::default()),
            timer_cv: Condvar::new(),
            has_timer: AtomicBool::new(false),
        }
    }

    /// A mark at `value` whose waits may carry a deadline, with its timer thread `name`
    /// (gone within a second once the mark is closed or dropped).
    pub(crate) fn with_deadlines(value: Lsn, name: &str) -> std::io::Result<Arc<Self>> {
        let m = Arc::new(Mark::new(value));
        m.has_timer.store(true, SeqCst);
        let weak = Arc::downgrade(&m);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run_timer(weak))?;
        Ok(m)
    }

    /// The mark's value.
    pub(crate) fn get(&self) -> Lsn {
        self.value.load(SeqCst)
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Raises the mark to at least `to` without waking anyone; returns the new value.
    pub(crate) fn raise(&self, to: Lsn) -> Lsn {
        self.value.fetch_max(to, SeqCst).max(to)
    }

    /// Wakes every waiter the mark's value reached.
    pub(crate) fn wake_reached(&self) {
        // Pairs with `register`: a waiter bumps the count before its final re-check.
        if self.parked.load(SeqCst) == 0 {
            return;
        }
        let mark = self.get();
        let mut ready = Vec::new();
        {
            let mut st = self.st.lock();
            while st.heap.peek().is_some_and(|e| e.lsn <= mark) {
                if let Some(e) = st.heap.pop() {
                    ready.push(e.waker);
                }
            }
            self.parked.store(st.heap.len(), SeqCst);
        }
        ready.into_iter().for_each(Waker::wake);
    }

    /// Wakes every waiter: the owner's own condition now resolves them all (set it first).
    pub(crate) fn wake_all(&self) {
        let parked = {
            let mut st = self.st.lock();
            self.parked.store(0, SeqCst);
            std::mem::take(&mut st.heap)
        };
        parked.into_iter().for_each(|e| e.waker.wake());
    }

    /// No wait on this mark goes on: wakes every waiter now and resolves every later one.
    pub(crate) fn close(&self) {
        self.closed.store(true, SeqCst);
        self.wake_all();
        self.timer_cv.notify_all();
    }

    /// Whether a wait for `lsn` until `deadline` is resolved (`also`: the owner's condition).
    pub(crate) fn resolved(
        &self,
        lsn: Lsn,
        deadline: Option<Instant>,
        also: impl Fn() -> bool,
    ) -> bool {
        self.get() >= lsn
            || self.is_closed()
            || also()
            || deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Parks `waker` until the wait for `lsn` is resolved; false (nothing parked) if it
    /// already is.
    fn register(
        &self,
        lsn: Lsn,
        deadline: Option<Instant>,
        waker: &Waker,
        also: impl Fn() -> bool,
    ) -> bool {
        let mut st = self.st.lock();
        self.parked.fetch_add(1, SeqCst);
        if self.resolved(lsn, deadline, also) {
            self.parked.fetch_sub(1, SeqCst);
            return false;
        }
        st.seq += 1;
        let seq = st.seq;
        if let Some(d) = deadline {
            debug_assert!(
                self.has_timer.load(SeqCst),
                "a deadline on a mark without timer"
            );
            if st.next_deadline.is_none_or(|n| d < n) {
                st.next_deadline = Some(d);
                self.timer_cv.notify_all();
            }
        }
        st.heap.push(Entry {
            lsn,
            seq,
            deadline,
            waker: waker.clone(),
        });
        true
    }

    /// Blocks the calling thread until the wait for `lsn` is resolved.
    pub(crate) fn block(&self, lsn: Lsn, deadline: Option<Instant>, also: impl Fn() -> bool) {
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        if self.register(lsn, deadline, &waker, &also) {
            // Spurious unparks are possible: re-check until resolved.
            while !self.resolved(lsn, deadline, &also) {
                std::thread::park();
            }
        }
    }

    /// One poll of an async wait for `lsn`: `Ready` once resolved, otherwise the task's
    /// waker is parked (once: `slot` remembers the waker parked last, still in the heap
    /// while the wait is unresolved).
    pub(crate) fn poll(
        &self,
        lsn: Lsn,
        deadline: Option<Instant>,
        slot: &mut Option<Waker>,
        cx: &mut Context<'_>,
        also: impl Fn() -> bool,
    ) -> Poll<()> {
        if self.resolved(lsn, deadline, &also) {
            return Poll::Ready(());
        }
        if slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if self.register(lsn, deadline, cx.waker(), also) {
            *slot = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(())
    }

    /// Removes and returns the wakers whose deadline passed by `now`.
    fn take_expired(&self, st: &mut Parked, now: Instant) -> Vec<Waker> {
        let mut due = Vec::new();
        if st.next_deadline.is_some_and(|d| d <= now) {
            st.heap.retain(|e| {
                let expired = e.deadline.is_some_and(|d| d <= now);
                if expired {
                    due.push(e.waker.clone());
                }
                !expired
            });
            st.next_deadline = st.heap.iter().filter_map(|e| e.deadline).min();
            self.parked.store(st.heap.len(), SeqCst);
        }
        due
    }
}

/// The timer of a mark with deadlines: wakes the waiters whose deadline passed; exits once
/// the mark is closed or dropped.
fn run_timer(weak: Weak<Mark>) {
    loop {
        let Some(m) = weak.upgrade() else { return };
        if m.is_closed() {
            return;
        }
        let mut st = m.st.lock();
        let now = Instant::now();
        let due = m.take_expired(&mut st, now);
        if !due.is_empty() {
            drop(st);
            due.into_iter().for_each(Waker::wake);
            continue;
        }
        let until = st
            .next_deadline
            .map_or(now + TIMER_IDLE, |d| d.min(now + TIMER_IDLE));
        // Woken early by an earlier deadline or a close; either way, look again.
        let _timed_out = m.timer_cv.wait_until(&mut st, until);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_raise_wakes_exactly_the_waiters_it_reaches() {
        let m = Arc::new(Mark::new(0));
        let hs: Vec<_> = [3, 5]
            .into_iter()
            .map(|lsn| {
                let m = m.clone();
                std::thread::spawn(move || {
                    m.block(lsn, None, || false);
                    m.get()
                })
            })
            .collect();
        while m.parked.load(SeqCst) < 2 {
            std::thread::yield_now();
        }
        m.raise(4);
        m.wake_reached();
        assert_eq!(m.parked.load(SeqCst), 1);
        m.raise(5);
        m.wake_reached();
        let got: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(got[0] >= 4 && got[1] == 5, "{got:?}");
        assert_eq!(m.parked.load(SeqCst), 0);
    }

    #[test]
    fn deadlines_wake_blocking_and_async_waiters_and_leave_the_heap() {
        let m = Mark::with_deadlines(0, "test-timer").unwrap();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(50);
        m.block(7, Some(deadline), || false);
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(m.get(), 0);
        assert_eq!(m.parked.load(SeqCst), 0);

        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut slot = None;
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(m
            .poll(7, Some(deadline), &mut slot, &mut cx, || false)
            .is_pending());
        // Polled again with the same waker: still one entry.
        assert!(m
            .poll(7, Some(deadline), &mut slot, &mut cx, || false)
            .is_pending());
        assert_eq!(m.parked.load(SeqCst), 1);
        // The timer wakes this thread at the deadline and drops the entry.
        while m.parked.load(SeqCst) != 0 {
            std::thread::park_timeout(Duration::from_millis(100));
        }
        assert!(Instant::now() >= deadline);
        assert!(m
            .poll(7, Some(deadline), &mut slot, &mut cx, || false)
            .is_ready());
        m.close();
        assert!(m.resolved(9, None, || false));
    }
}
