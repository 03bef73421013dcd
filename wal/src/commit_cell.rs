//! Who commits: the commit lock ([`CommitCell`]) taken by an appender waiting on its ticket
//! when nobody else holds it (leader/follower), and the committer thread, kicked when records
//! would otherwise sit. What a commit does is in [`crate::committer`].

use std::sync::atomic::{fence, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::{Condvar, Mutex};

use crate::committer::{Committer, Msg};
use crate::watermarks::{Poisoned, Watermarks};
use crate::{Durability, Lsn};

/// The committer's state behind a lock: whoever holds it commits. That is an appender
/// waiting on its ticket (blocking `wait` or `.await`) that found nobody committing — it
/// writes (and fdatasyncs) the queued group itself, so a lone or lightly loaded writer never
/// waits on a thread hop — or the committer thread, which takes over what followers queued
/// while someone else held the lock, and records whose tickets nobody waits on.
pub(crate) struct CommitCell {
    state: Mutex<Option<Committer>>,
    watermarks: Arc<Watermarks>,
    /// To see, after letting go of the lock, whether followers left records behind.
    rx: Receiver<Msg>,
    /// Set (under its lock) to get the committer thread going.
    kick: Mutex<bool>,
    kick_cv: Condvar,
    /// Test hook: while set, the committer thread does not commit.
    #[cfg(feature = "fault-injection")]
    held: std::sync::atomic::AtomicBool,
}

/// How long the committer thread sleeps without a kick: a backstop, every path that
/// strands records kicks it.
const IDLE: Duration = Duration::from_millis(10);

impl std::fmt::Debug for CommitCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitCell").finish_non_exhaustive()
    }
}

impl CommitCell {
    pub(crate) fn new(c: Committer) -> Arc<CommitCell> {
        Arc::new(CommitCell {
            watermarks: c.watermarks.clone(),
            rx: c.rx.clone(),
            state: Mutex::new(Some(c)),
            kick: Mutex::new(false),
            kick_cv: Condvar::new(),
            #[cfg(feature = "fault-injection")]
            held: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Commits what is queued on the caller's thread, unless someone else is committing;
    /// then the committer thread is kicked, to take the lock (and this caller's record, queued
    /// before this call) the moment the holder lets go.
    pub(crate) fn try_lead(&self) {
        // Pairs with the fence in `let_go`: a follower whose `try_lock` fails queued its
        // record before the holder looks at the queue (store-load on both sides).
        fence(SeqCst);
        if let Some(mut g) = self.state.try_lock() {
            let mut ended = false;
            if let Some(c) = g.as_mut().filter(|c| !c.finished) {
                if !matches!(c.run_group(), Ok(true)) {
                    c.finished = true;
                    ended = true;
                }
            }
            drop(g);
            self.let_go();
            if ended {
                // The thread closes the log: stop the syncer, tell every waiter.
                self.kick();
            }
        } else {
            // Under load: the next group starts as soon as this one is done.
            self.kick();
        }
    }

    /// Writes imported frames `(lsn, bytes)` (consecutive) and fsyncs them, on the caller's
    /// thread; with `jump = Some(c)` first starts a new segment at `c + 1` (a checkpoint
    /// covers the LSNs skipped: a jump is accepted only between segments). Only before any
    /// append: nothing else is queued.
    pub(crate) fn import<'a>(
        &self,
        jump: Option<Lsn>,
        records: impl Iterator<Item = (Lsn, &'a [u8])>,
    ) -> Result<(), Poisoned> {
        let mut g = self.state.lock();
        let Some(c) = g.as_mut().filter(|c| !c.finished) else {
            return Err(Poisoned);
        };
        if c.watermarks.is_poisoned() {
            return Err(Poisoned);
        }
        if let Some(ck) = jump {
            c.rotate(ck + 1)?;
            c.syncer.skip_to(ck);
            c.watermarks.set_durable(ck);
        }
        let (now, mut want_sync, mut shutdown) = (Instant::now(), true, false);
        c.offer = false;
        let mut r = Ok(());
        for (lsn, frame) in records {
            let msg = Msg::Frame {
                lsn,
                frame: frame.to_vec(),
                mode: Durability::Fsync,
            };
            r = c.take(msg, now, &mut want_sync, &mut shutdown);
            if r.is_err() {
                break;
            }
        }
        let r = r.and_then(|()| c.write_group(true));
        c.offer = true;
        r
    }

    /// After a group, outside the lock: wake whoever it satisfied (one may lead the next
    /// group at once), and hand records followers queued meanwhile to the committer thread.
    fn let_go(&self) {
        self.watermarks.wake_ready();
        fence(SeqCst);
        if !self.rx.is_empty() {
            self.kick();
        }
    }

    /// Gets the committer thread to commit what is queued.
    pub(crate) fn kick(&self) {
        let mut k = self.kick.lock();
        if !*k {
            *k = true;
            self.kick_cv.notify_one();
        }
    }

    /// Test hook: keeps the committer thread from committing until `release_thread`.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn hold_thread(&self, on: bool) {
        self.held.store(on, SeqCst);
        if !on {
            self.kick();
        }
    }

    #[cfg(feature = "fault-injection")]
    fn thread_held(&self) -> bool {
        self.held.load(SeqCst)
    }

    #[cfg(not(feature = "fault-injection"))]
    fn thread_held(&self) -> bool {
        false
    }

    /// The committer thread: commits when kicked (followers left records, a queue is full,
    /// a ticket was dropped unresolved, `sync` or shutdown), and as a backstop every `IDLE`.
    pub(crate) fn run(self: Arc<Self>) {
        loop {
            let kicked = {
                let mut k = self.kick.lock();
                if !*k {
                    let _ = self.kick_cv.wait_for(&mut k, IDLE);
                }
                std::mem::take(&mut *k)
            };
            if self.thread_held() {
                continue;
            }
            let mut g = self.state.lock();
            let Some(c) = g.as_mut() else { return };
            if c.finished {
                break;
            }
            if !kicked && self.rx.is_empty() {
                continue;
            }
            match c.run_group() {
                Ok(true) => {
                    drop(g);
                    self.let_go();
                }
                Ok(false) => {
                    c.finished = true;
                    break;
                }
                Err(Poisoned) => {
                    tracing::error!(dir = %c.dir.display(), "WAL committer stopped: log poisoned");
                    c.finished = true;
                    break;
                }
            }
        }
        self.watermarks.wake_ready();
        let Some(mut c) = self.state.lock().take() else {
            return;
        };
        // Let the syncer finish what was asked of it before tickets see "closed".
        c.syncer.stop();
        if let Some(h) = c.syncer_thread.take() {
            if h.join().is_err() {
                tracing::error!(dir = %c.dir.display(), "WAL syncer thread panicked");
            }
        }
        // A failure here poisons (tickets see it); nothing else to do with it.
        if !c.watermarks.is_poisoned() && c.cut_zeros().is_ok() {
            let _ = c.syncer.finish();
        }
        c.watermarks.close();
    }
}
