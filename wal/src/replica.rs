//! The replication seam.
//!
//! Right after the committer writes a group to the local log it hands the group's exact frame
//! bytes and LSN range to a [`ReplicaSink`], which must not block the committer (it queues and
//! publishes on its own task). The sink reports how far the replica has stored the log through
//! [`ReplicaAcks`]: `Durability::Replicated` tickets resolve once the local write and that
//! watermark both cover them, or fail when their wait bound passes. Other modes never look at
//! it. Nothing here knows which replicated log is behind the trait.
//!
//! Also here: checking frames read back from a replica (checksums, LSN continuity, see
//! [`parse_frames`]) and seeding an empty log directory from them ([`seed`]).

use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::frame::{encode_segment_header, parse_frame};
use crate::io::Io;
use crate::{checkpoint, segment_name, Error, Lsn, Result};

/// One group as the committer wrote it: whole frames, LSNs `first..=last`, consecutive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// LSN of the first frame.
    pub first: Lsn,
    /// LSN of the last frame.
    pub last: Lsn,
    /// The frames, byte for byte as in the segment file.
    pub frames: Vec<u8>,
}

/// Where the committer hands each group after writing it locally.
///
/// `offer` runs on the commit path (often an appender's own thread): it must not block and
/// must not fail. Queue the group; when the queue is full, drop it and re-read the range from
/// the log later ([`crate::Wal::replay`] plus [`encode_frames`]), so a slow replica never
/// slows local writes. Groups are offered in LSN order, each exactly once.
pub trait ReplicaSink: Send + Sync + std::fmt::Debug {
    /// Takes a group the local log now holds.
    fn offer(&self, group: Group);
}

/// Re-encodes records as frames, byte for byte what the committer wrote for them.
pub fn encode_frames<'a>(records: impl IntoIterator<Item = &'a crate::Record>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&crate::frame::encode_frame(r.lsn, r.kind, &r.payload));
    }
    out
}

/// One frame found by [`parse_frames`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    /// Its LSN.
    pub lsn: Lsn,
    /// Its bytes within the buffer given to [`parse_frames`].
    pub range: Range<usize>,
}

/// Checks a buffer of whole frames (checksums, versions, consecutive LSNs) and returns where
/// each frame is. Bytes from a replica go through this before anything uses them: a damaged
/// frame is [`Error::ReplicaData`], a missing LSN [`Error::ReplicaGap`].
pub fn parse_frames(bytes: &[u8]) -> Result<Vec<FrameSpan>> {
    let mut out: Vec<FrameSpan> = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let f = parse_frame(bytes, pos).map_err(|reason| Error::ReplicaData {
            reason: format!("frame at byte {pos}: {reason}"),
        })?;
        if let Some(prev) = out.last() {
            if f.lsn != prev.lsn + 1 {
                return Err(Error::ReplicaGap {
                    expected: prev.lsn + 1,
                    found: f.lsn,
                });
            }
        }
        out.push(FrameSpan {
            lsn: f.lsn,
            range: pos..f.end,
        });
        pos = f.end;
    }
    Ok(out)
}

/// Rebuilds a log directory from a replica: the checkpoint file bytes `checkpoint` (as
/// [`Checkpoint`](crate::Checkpoint) files are stored, header and checksum included) and the
/// frames `frames` (checked with [`parse_frames`], consecutive from the checkpoint's LSN + 1
/// when there is one). `dir` must hold no segment or checkpoint yet. Every file is written to
/// a temp name, fsynced, renamed, and the directory fsynced.
pub fn seed(io: &dyn Io, dir: &Path, checkpoint: Option<&[u8]>, frames: &[u8]) -> Result<()> {
    io.create_dir_all(dir)
        .map_err(|e| Error::io("create dir", dir, e))?;
    let names = io.list(dir).map_err(|e| Error::io("list", dir, e))?;
    if names.iter().any(|n| {
        crate::parse_lsn_name(n, crate::SEGMENT_SUFFIX).is_some()
            || checkpoint::parse_file_name(n).is_some()
    }) {
        return Err(Error::Config {
            reason: format!(
                "{} already holds a log: a replica is only restored into an empty directory",
                dir.display()
            ),
        });
    }
    let spans = parse_frames(frames)?;
    let ckpt_lsn = match checkpoint {
        Some(bytes) => Some(
            checkpoint::decode(bytes)
                .map_err(|reason| Error::ReplicaData {
                    reason: format!("checkpoint: {reason}"),
                })?
                .lsn,
        ),
        None => None,
    };
    if let (Some(c), Some(first)) = (ckpt_lsn, spans.first()) {
        if first.lsn != c + 1 {
            return Err(Error::ReplicaGap {
                expected: c + 1,
                found: first.lsn,
            });
        }
    }
    let put = |name: String, parts: &[&[u8]]| -> Result<()> {
        let tmp = dir.join(format!("{name}.seed"));
        crate::io::put_file(io, &tmp, &dir.join(&name), parts, |_| {})
    };
    if let (Some(bytes), Some(c)) = (checkpoint, ckpt_lsn) {
        put(checkpoint::file_name(c), &[bytes])?;
    }
    if let Some(first) = spans.first() {
        put(
            segment_name(first.lsn),
            &[&encode_segment_header(first.lsn, 0), frames],
        )?;
    }
    io.sync_dir(dir).map_err(|e| Error::io("fsync dir", dir, e))
}

/// How far the replica has stored the log, and the waits on it.
///
/// The sink calls [`ack`](Self::ack) as the replica confirms groups and
/// [`fail`](Self::fail) when it cannot reach it (kept for the error a timed-out wait returns);
/// [`close`](Self::close) when it stops for good, which fails every waiter at once. A small
/// timer thread (one per watermark, gone within a second of the last handle) wakes waits
/// whose bound passed.
#[derive(Clone, Debug)]
pub struct ReplicaAcks {
    inner: Arc<Acks>,
}

#[derive(Debug)]
struct Acks {
    acked: AtomicU64,
    st: Mutex<AckState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct AckState {
    waiters: Vec<(Lsn, Instant, Waker)>,
    last_error: Option<String>,
    closed: bool,
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

impl ReplicaAcks {
    /// A watermark at `acked` (what the replica is known to hold).
    pub fn new(acked: Lsn) -> Result<Self> {
        let inner = Arc::new(Acks {
            acked: AtomicU64::new(acked),
            st: Mutex::new(AckState::default()),
            cv: Condvar::new(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("wal-replica-timer".into())
            .spawn(move || timer(weak))
            .map_err(|e| Error::io("spawn replica timer", "wal-replica-timer", e))?;
        Ok(ReplicaAcks { inner })
    }

    /// The highest LSN the replica acknowledged.
    pub fn acked(&self) -> Lsn {
        self.inner.acked.load(SeqCst)
    }

    /// The replica holds everything up to `lsn`: resolves the waits it covers, clears the
    /// last error.
    pub fn ack(&self, lsn: Lsn) {
        let acked = self.inner.acked.fetch_max(lsn, SeqCst).max(lsn);
        let mut ready = Vec::new();
        {
            let mut st = self.inner.st.lock();
            st.last_error = None;
            st.waiters.retain(|(l, _, w)| {
                let done = *l <= acked;
                if done {
                    ready.push(w.clone());
                }
                !done
            });
        }
        ready.into_iter().for_each(Waker::wake);
    }

    /// The replica could not be reached or refused a group: waits go on (the sink retries),
    /// and one that times out names this reason.
    pub fn fail(&self, reason: impl Into<String>) {
        self.inner.st.lock().last_error = Some(reason.into());
    }

    /// The last failure since the last acknowledgement.
    pub fn last_error(&self) -> Option<String> {
        self.inner.st.lock().last_error.clone()
    }

    /// The sink stopped for good (with `reason`): every wait, now and later, fails at once.
    pub fn close(&self, reason: impl Into<String>) {
        let waiters = {
            let mut st = self.inner.st.lock();
            st.closed = true;
            st.last_error.get_or_insert_with(|| reason.into());
            std::mem::take(&mut st.waiters)
        };
        self.inner.cv.notify_all();
        waiters.into_iter().for_each(|(_, _, w)| w.wake());
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.st.lock().closed
    }

    fn check(&self, lsn: Lsn, since: Instant, deadline: Instant) -> Option<Result<Lsn>> {
        let acked = self.acked();
        if acked >= lsn {
            return Some(Ok(lsn));
        }
        let st = self.inner.st.lock();
        if st.closed {
            return Some(Err(Error::ReplicaStopped {
                lsn,
                reason: st.last_error.clone().unwrap_or_default(),
            }));
        }
        if Instant::now() >= deadline {
            return Some(Err(Error::ReplicaTimeout {
                lsn,
                acked,
                waited: since.elapsed(),
                last_error: st.last_error.clone(),
            }));
        }
        None
    }

    fn register(&self, lsn: Lsn, deadline: Instant, waker: &Waker) {
        let mut st = self.inner.st.lock();
        if let Some(w) = st.waiters.iter_mut().find(|w| w.2.will_wake(waker)) {
            w.0 = lsn;
            w.1 = deadline;
        } else {
            st.waiters.push((lsn, deadline, waker.clone()));
        }
        drop(st);
        self.inner.cv.notify_all();
    }

    fn poll(
        &self,
        lsn: Lsn,
        since: Instant,
        deadline: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Lsn>> {
        if let Some(r) = self.check(lsn, since, deadline) {
            return Poll::Ready(r);
        }
        self.register(lsn, deadline, cx.waker());
        // An ack or a close between the check and the registration woke nobody.
        match self.check(lsn, since, deadline) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    /// Blocks until the replica holds `lsn`, the sink stops, or `deadline` passes.
    pub fn wait(&self, lsn: Lsn, deadline: Instant) -> Result<Lsn> {
        let since = Instant::now();
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(r) = self.poll(lsn, since, deadline, &mut cx) {
                return r;
            }
            std::thread::park_timeout(deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// Waits (async) until the replica holds `lsn`, the sink stops, or `deadline` passes.
    pub fn wait_async(&self, lsn: Lsn, deadline: Instant) -> ReplicaWait {
        ReplicaWait {
            acks: self.clone(),
            lsn,
            since: Instant::now(),
            deadline,
        }
    }

    pub(crate) fn poll_ticket(
        &self,
        lsn: Lsn,
        since: Instant,
        deadline: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Lsn>> {
        self.poll(lsn, since, deadline, cx)
    }

    pub(crate) fn resolved(&self, lsn: Lsn, since: Instant, deadline: Instant) -> bool {
        self.check(lsn, since, deadline).is_some()
    }
}

/// The future of [`ReplicaAcks::wait_async`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct ReplicaWait {
    acks: ReplicaAcks,
    lsn: Lsn,
    since: Instant,
    deadline: Instant,
}

impl Future for ReplicaWait {
    type Output = Result<Lsn>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Lsn>> {
        self.acks.poll(self.lsn, self.since, self.deadline, cx)
    }
}

/// Wakes the waits whose bound passed; exits once the watermark is closed or dropped.
fn timer(weak: Weak<Acks>) {
    loop {
        let Some(a) = weak.upgrade() else { return };
        let mut st = a.st.lock();
        if st.closed {
            return;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        st.waiters.retain(|(_, d, w)| {
            let due = *d <= now;
            if due {
                expired.push(w.clone());
            }
            !due
        });
        if !expired.is_empty() {
            drop(st);
            expired.into_iter().for_each(Waker::wake);
            continue;
        }
        // At most a second between looks, so a dropped watermark ends this thread.
        let next = st
            .waiters
            .iter()
            .map(|w| w.1)
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_secs(1));
        let _timed_out = a.cv.wait_until(&mut st, next);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::frame::encode_frame;

    #[test]
    fn parse_frames_checks_continuity_and_checksums() {
        let mut b = encode_frame(5, 1, b"a");
        b.extend_from_slice(&encode_frame(6, 1, b"bc"));
        let spans = parse_frames(&b).unwrap();
        assert_eq!(spans.iter().map(|s| s.lsn).collect::<Vec<_>>(), [5, 6]);
        assert_eq!(spans[1].range.end, b.len());

        let mut gap = encode_frame(5, 1, b"a");
        gap.extend_from_slice(&encode_frame(7, 1, b"c"));
        assert!(matches!(
            parse_frames(&gap),
            Err(Error::ReplicaGap {
                expected: 6,
                found: 7
            })
        ));

        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(parse_frames(&bad), Err(Error::ReplicaData { .. })));
        assert!(matches!(
            parse_frames(&b[..b.len() - 1]),
            Err(Error::ReplicaData { .. })
        ));
    }

    #[test]
    fn waits_resolve_on_ack_and_time_out_with_the_last_error() {
        let acks = ReplicaAcks::new(3).unwrap();
        let far = Instant::now() + Duration::from_secs(10);
        assert_eq!(acks.wait(2, far).unwrap(), 2);
        let a2 = acks.clone();
        let t = std::thread::spawn(move || a2.wait(9, Instant::now() + Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        acks.ack(9);
        assert_eq!(t.join().unwrap().unwrap(), 9);

        acks.fail("replica unreachable");
        let started = Instant::now();
        let e = acks
            .wait(10, Instant::now() + Duration::from_millis(50))
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(
            matches!(&e, Error::ReplicaTimeout { lsn: 10, acked: 9, last_error: Some(m), .. } if m == "replica unreachable"),
            "{e:?}"
        );
        acks.close("stopped");
        assert!(matches!(
            acks.wait(10, far),
            Err(Error::ReplicaStopped { lsn: 10, .. })
        ));
    }
}
