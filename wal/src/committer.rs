//! Group commit.
//!
//! Whoever holds the commit lock ([`CommitCell`]) drains the hand-off queue and writes the
//! group with one write call (looping only over short writes). When a record in the group asks
//! for `Fsync` (or `sync()` was called) it fdatasyncs right away; records that arrive during
//! that fdatasync queue up and form the next group, so every waiting record shares one
//! fdatasync. The lock holder is an appender waiting on its ticket (`Append::wait` or
//! `.await`) that found nobody committing (leader/follower: no thread hop for a lone or lightly
//! loaded writer), or the committer thread, which is kicked only when records would otherwise
//! sit: followers queued behind a holder, a full queue, a dropped ticket, `sync`, shutdown.
//! Timer-driven fdatasyncs (`Buffered`) run on a separate syncer thread so they never stall
//! appends that only wait for the write.

use std::path::PathBuf;
use std::sync::atomic::{fence, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::frame::{encode_segment_header, SEGMENT_HEADER_LEN};
use crate::io::{write_all, Io, IoFile};
use crate::progress::{Poisoned, Progress};
use crate::watermark::{self, WatermarkFile};
use crate::{segment_name, Durability, Files, Lsn, SegMeta};

/// Stop growing a group past this many bytes: bounds the buffer and the latency of one write.
const GROUP_BYTES: usize = 4 << 20;

/// How far preallocated zeros run ahead of the data, and how close the data may get to their
/// end before more are written. One extension (a page-cache write) per ~0.75 MiB of log.
const ZERO_AHEAD: u64 = 1 << 20;
const ZERO_LOW: u64 = 256 << 10;

/// What appenders hand to the committer.
pub(crate) enum Msg {
    /// A sealed frame.
    Record {
        lsn: Lsn,
        frame: Vec<u8>,
        mode: Durability,
    },
    /// fsync everything written so far.
    Sync,
    /// Write what is queued before this, then exit.
    Shutdown,
}

struct SyncState {
    file: Arc<dyn IoFile>,
    path: PathBuf,
    /// First LSN of `file` (the segment the watermark names).
    seg_first: Lsn,
    /// Where the data written to `file` ends (a group boundary).
    written_off: u64,
    /// The sync watermark file (`None` when the file system cannot keep one).
    wm: Option<WatermarkFile>,
    /// When the syncer thread fsyncs the watermark next (set when it changed).
    wm_due: Option<Instant>,
    /// When the watermark was last fsynced.
    wm_synced_at: Instant,
    /// Last LSN written (to `file`; everything in older files is durable).
    written: Lsn,
    /// Highest LSN someone needs durable.
    want: Lsn,
    durable: Lsn,
    busy: bool,
    stop: bool,
    failed: bool,
    /// `Buffered` timer: fdatasync what is written by then.
    deadline: Option<Instant>,
}

/// The fdatasync side of the pipeline.
pub(crate) struct Syncer {
    st: Mutex<SyncState>,
    cv: Condvar,
    progress: Arc<Progress>,
}

/// The watermark is fsynced at most this often while it changes (see [`crate::watermark`]).
const WATERMARK_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What the syncer starts with: the active segment and the watermark file.
pub(crate) struct SyncStart {
    pub(crate) file: Arc<dyn IoFile>,
    pub(crate) path: PathBuf,
    pub(crate) seg_first: Lsn,
    pub(crate) seg_len: u64,
    pub(crate) wm: Option<WatermarkFile>,
    pub(crate) last: Lsn,
}

impl Syncer {
    pub(crate) fn start(
        init: SyncStart,
        progress: Arc<Progress>,
    ) -> std::io::Result<(Arc<Syncer>, JoinHandle<()>)> {
        let s = Arc::new(Syncer {
            st: Mutex::new(SyncState {
                file: init.file,
                path: init.path,
                seg_first: init.seg_first,
                written_off: init.seg_len,
                wm: init.wm,
                wm_due: None,
                wm_synced_at: Instant::now(),
                written: init.last,
                want: init.last,
                durable: init.last,
                busy: false,
                stop: false,
                failed: false,
                deadline: None,
            }),
            cv: Condvar::new(),
            progress,
        });
        let s2 = s.clone();
        let h = std::thread::Builder::new()
            .name("wal-syncer".into())
            .spawn(move || s2.run())?;
        Ok((s, h))
    }

    fn run(&self) {
        let mut st = self.st.lock();
        loop {
            if st.failed {
                return;
            }
            if st.deadline.is_some_and(|d| Instant::now() >= d) {
                st.deadline = None;
                st.want = st.want.max(st.written);
            }
            if st.want > st.durable {
                let target = st.written;
                let target_off = st.written_off;
                let from = st.durable + 1;
                let file = st.file.clone();
                st.busy = true;
                let r = MutexGuard::unlocked(&mut st, || file.sync_data());
                st.busy = false;
                match r {
                    Ok(()) => {
                        st.durable = st.durable.max(target);
                        let d = st.durable;
                        let ok = self.note_synced(&mut st, target_off);
                        self.cv.notify_all();
                        if ok.is_err() {
                            return;
                        }
                        MutexGuard::unlocked(&mut st, || self.progress.set_durable(d));
                    }
                    Err(e) => {
                        // Never retried: the kernel may have dropped the dirty pages.
                        st.failed = true;
                        self.cv.notify_all();
                        self.progress
                            .poison("fsync", st.path.clone(), &e, (from, target));
                    }
                }
                continue;
            }
            if st.wm_due.is_some_and(|d| Instant::now() >= d) {
                st.wm_due = None;
                if let Some(wm) = st.wm.clone() {
                    st.busy = true;
                    let r = MutexGuard::unlocked(&mut st, || wm.file.sync_data());
                    st.busy = false;
                    self.cv.notify_all();
                    st.wm_synced_at = Instant::now();
                    if let Err(e) = r {
                        st.failed = true;
                        self.progress.poison("fsync", wm.path.clone(), &e, (0, 0));
                        return;
                    }
                }
                continue;
            }
            if st.stop {
                return;
            }
            match st.deadline.into_iter().chain(st.wm_due).min() {
                Some(d) => {
                    let _ = self.cv.wait_until(&mut st, d);
                }
                None => self.cv.wait(&mut st),
            }
        }
    }

    /// After a successful fsync of the active segment up to `off`: rewrites the watermark in
    /// place (no fsync here: the syncer thread fsyncs it within about a second). A failed
    /// write poisons the log.
    fn note_synced(&self, st: &mut MutexGuard<'_, SyncState>, off: u64) -> Result<(), Poisoned> {
        let Some(wm) = &st.wm else { return Ok(()) };
        if let Err(e) = wm.file.write_at(&watermark::encode(st.seg_first, off), 0) {
            let path = wm.path.clone();
            st.failed = true;
            self.progress.poison("write", path, &e, (0, 0));
            return Err(Poisoned);
        }
        if st.wm_due.is_none() {
            let due = st.wm_synced_at + WATERMARK_SYNC_INTERVAL;
            st.wm_due = Some(due);
            self.cv.notify_all();
        }
        Ok(())
    }

    /// Arms the `Buffered` timer: what is written gets fdatasynced by `deadline`.
    fn schedule(&self, deadline: Instant) {
        let mut st = self.st.lock();
        if st.deadline.is_none_or(|d| deadline < d) {
            st.deadline = Some(deadline);
            self.cv.notify_all();
        }
    }

    /// Records that `last` is written and the data ends at `off` (a later fdatasync covers it).
    fn written(&self, last: Lsn, off: u64) {
        let mut st = self.st.lock();
        st.written = last;
        st.written_off = off;
    }

    /// fdatasyncs the current file now, on the caller's thread (after any fdatasync in flight).
    fn sync_now(&self) -> Result<(), Poisoned> {
        let mut st = self.st.lock();
        self.sync_locked(&mut st, false)
    }

    /// Like `sync_now`, but fsyncs even with no new record (a truncation, say), and the data
    /// now ends at `off`.
    fn sync_forced(&self, off: u64) -> Result<(), Poisoned> {
        let mut st = self.st.lock();
        st.written_off = off;
        self.sync_locked(&mut st, true)
    }

    fn sync_locked(&self, st: &mut MutexGuard<'_, SyncState>, force: bool) -> Result<(), Poisoned> {
        while st.busy {
            self.cv.wait(st);
        }
        if st.failed {
            return Err(Poisoned);
        }
        if st.written > st.durable || force {
            if let Err(e) = st.file.sync_data() {
                // Poisons even a forced fsync: Linux reports a writeback error once, so a
                // later fsync of this file would succeed over dropped pages.
                st.failed = true;
                let range = (st.durable + 1, st.written);
                self.progress.poison("fsync", st.path.clone(), &e, range);
                return Err(Poisoned);
            }
            st.durable = st.written;
            st.want = st.want.max(st.durable);
            st.deadline = None;
            let d = st.durable;
            let off = st.written_off;
            self.note_synced(st, off)?;
            // Woken by the commit-lock holder once it lets go.
            self.progress.store_durable(d);
        }
        Ok(())
    }

    /// Records LSNs up to `lsn` as written and durable without a write (an imported
    /// checkpoint covers them).
    pub(crate) fn skip_to(&self, lsn: Lsn) {
        let mut st = self.st.lock();
        st.written = st.written.max(lsn);
        st.durable = st.durable.max(lsn);
        st.want = st.want.max(lsn);
    }

    /// At shutdown, after the last fsync: makes the watermark durable, so the next open
    /// reads the whole segment as synced. A failure poisons.
    fn finish(&self) -> Result<(), Poisoned> {
        let mut st = self.st.lock();
        while st.busy {
            self.cv.wait(&mut st);
        }
        if st.failed {
            return Err(Poisoned);
        }
        let Some(wm) = st.wm.clone() else {
            return Ok(());
        };
        if st.written > st.durable {
            // A drop without `close`: the data is not all synced, so neither is the watermark.
            return Ok(());
        }
        st.wm_due = None;
        if let Err(e) = wm.file.sync_data() {
            st.failed = true;
            self.progress.poison("fsync", wm.path.clone(), &e, (0, 0));
            return Err(Poisoned);
        }
        Ok(())
    }

    /// Makes the current file fully durable now, then lets `next` produce the new file, which
    /// later fdatasyncs target.
    ///
    /// The watermark is not fsynced here: until the first fsync of the new segment rewrites
    /// it, it names the old segment, which recovery reads as "the new segment may be torn
    /// anywhere after its header", the truth until then.
    fn switch_file(
        &self,
        first: Lsn,
        next: impl FnOnce() -> Result<(Arc<dyn IoFile>, PathBuf), Poisoned>,
    ) -> Result<(), Poisoned> {
        let mut st = self.st.lock();
        self.sync_locked(&mut st, false)?;
        let (file, path) = next()?;
        st.file = file;
        st.path = path;
        st.seg_first = first;
        st.written_off = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }

    fn stop(&self) {
        self.st.lock().stop = true;
        self.cv.notify_all();
    }
}

pub(crate) struct Committer {
    pub(crate) io: Arc<dyn Io>,
    pub(crate) dir: PathBuf,
    pub(crate) rx: Receiver<Msg>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) files: Arc<Mutex<Files>>,
    pub(crate) segment_size: u64,
    pub(crate) max_delay: Option<Duration>,
    pub(crate) file: Arc<dyn IoFile>,
    pub(crate) seg_path: PathBuf,
    pub(crate) seg_len: u64,
    /// Header flags of new segments ([`crate::FLAG_ZERO_TAIL`] or 0).
    pub(crate) new_flags: u32,
    /// The active segment may be zero-extended (its header says so).
    pub(crate) zero_tail: bool,
    /// Its file size: the end of the preallocated zeros (`seg_len` when there are none).
    pub(crate) zeroed_end: u64,
    pub(crate) syncer: Arc<Syncer>,
    pub(crate) syncer_thread: Option<JoinHandle<()>>,
    pub(crate) buf: Vec<u8>,
    pub(crate) buf_first: Lsn,
    pub(crate) buf_last: Lsn,
    pub(crate) sync_deadline: Option<Instant>,
    pub(crate) finished: bool,
    /// Gets every group right after its local write.
    pub(crate) replica: Option<Arc<dyn crate::ReplicaSink>>,
    /// Whether groups go to `replica` (not those imported from it).
    pub(crate) offer: bool,
}

/// The committer's state behind a lock: whoever holds it commits. That is an appender
/// waiting on its ticket (blocking `wait` or `.await`) that found nobody committing — it
/// writes (and fdatasyncs) the queued group itself, so a lone or lightly loaded writer never
/// waits on a thread hop — or the committer thread, which takes over what followers queued
/// while someone else held the lock, and records whose tickets nobody waits on.
pub(crate) struct CommitCell {
    state: Mutex<Option<Committer>>,
    progress: Arc<Progress>,
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
            progress: c.progress.clone(),
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
        if c.progress.is_poisoned() {
            return Err(Poisoned);
        }
        if let Some(ck) = jump {
            c.rotate(ck + 1)?;
            c.syncer.skip_to(ck);
            c.progress.set_durable(ck);
        }
        let (now, mut want_sync, mut shutdown) = (Instant::now(), true, false);
        c.offer = false;
        let mut r = Ok(());
        for (lsn, frame) in records {
            let msg = Msg::Record {
                lsn,
                frame: frame.to_vec(),
                mode: Durability::Fsync,
            };
            r = c.take(msg, now, &mut want_sync, &mut shutdown);
            if r.is_err() {
                break;
            }
        }
        let r = r.and_then(|()| c.flush(true));
        c.offer = true;
        r
    }

    /// After a group, outside the lock: wake whoever it satisfied (one may lead the next
    /// group at once), and hand records followers queued meanwhile to the committer thread.
    fn let_go(&self) {
        self.progress.wake_ready();
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
        self.progress.wake_ready();
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
        if !c.progress.is_poisoned() && c.cut_zeros().is_ok() {
            let _ = c.syncer.finish();
        }
        c.progress.close();
    }
}

impl Committer {
    /// Takes every queued message (one group), writes it, fdatasyncs if anyone needs it.
    /// `Ok(false)` once shut down or disconnected.
    fn run_group(&mut self) -> Result<bool, Poisoned> {
        if self.progress.is_poisoned() {
            return Err(Poisoned);
        }
        let now = Instant::now();
        let mut want_sync = false;
        let mut shutdown = false;
        let mut open = true;
        let mut got_any = false;
        let linger = self.max_delay.map(|d| now + d);
        while !shutdown && self.buf.len() < GROUP_BYTES {
            let m = match self.rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
                Err(TryRecvError::Empty) => match linger {
                    Some(t) if got_any => match self.rx.recv_deadline(t) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Disconnected) => {
                            open = false;
                            break;
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                    },
                    _ => break,
                },
            };
            got_any = true;
            self.take(m, now, &mut want_sync, &mut shutdown)?;
        }
        self.flush(want_sync)?;
        if let Some(d) = self.sync_deadline.take() {
            if !want_sync {
                // The syncer thread runs the timer: appends waiting only for the write keep
                // flowing, whoever commits.
                self.syncer.schedule(d);
            }
        }
        Ok(open && !shutdown)
    }

    fn take(
        &mut self,
        msg: Msg,
        now: Instant,
        want_sync: &mut bool,
        shutdown: &mut bool,
    ) -> Result<(), Poisoned> {
        match msg {
            Msg::Record { lsn, frame, mode } => {
                let pending = self.seg_len + self.buf.len() as u64;
                if pending + frame.len() as u64 > self.segment_size
                    && pending > SEGMENT_HEADER_LEN as u64
                {
                    self.flush(false)?;
                    self.rotate(lsn)?;
                }
                if self.buf.is_empty() {
                    self.buf_first = lsn;
                }
                self.buf.extend_from_slice(&frame);
                self.buf_last = lsn;
                match mode {
                    Durability::Fsync => *want_sync = true,
                    Durability::Buffered { interval } => {
                        let d = now + interval;
                        self.sync_deadline = Some(self.sync_deadline.map_or(d, |x| x.min(d)));
                    }
                    Durability::Replicated => {
                        let d = now + crate::REPLICATED_SYNC_INTERVAL;
                        self.sync_deadline = Some(self.sync_deadline.map_or(d, |x| x.min(d)));
                    }
                    Durability::None => {}
                }
            }
            Msg::Sync => *want_sync = true,
            Msg::Shutdown => *shutdown = true,
        }
        Ok(())
    }

    /// Writes the group buffer with one write (looping only over short writes), publishes it,
    /// and hands the fdatasync (if wanted) to the syncer.
    fn flush(&mut self, sync: bool) -> Result<(), Poisoned> {
        if !self.buf.is_empty() {
            self.zero_ahead(self.seg_len + self.buf.len() as u64);
            if let Err(e) = write_all(self.file.as_ref(), &self.buf) {
                self.progress.poison(
                    "write",
                    self.seg_path.clone(),
                    &e,
                    (self.buf_first, self.buf_last),
                );
                return Err(Poisoned);
            }
            self.seg_len += self.buf.len() as u64;
            self.progress.note_group(self.buf_last - self.buf_first + 1);
            if let Some(sink) = self.replica.as_ref().filter(|_| self.offer) {
                // Copied: the buffer is reused for the next group.
                sink.offer(crate::Group {
                    first: self.buf_first,
                    last: self.buf_last,
                    frames: self.buf.clone(),
                });
            }
            self.buf.clear();
            if let Some(active) = self.files.lock().segs.last_mut() {
                active.len = self.seg_len;
            }
            self.syncer.written(self.buf_last, self.seg_len);
            self.progress.store_written(self.buf_last);
        }
        if sync {
            // Someone waits for this fdatasync: run it here, without a thread hop. Records
            // arriving meanwhile queue up and form the next group.
            self.syncer.sync_now()?;
        }
        Ok(())
    }

    /// Keeps zeros preallocated past `upto` in a flagged segment, so the data lands on
    /// allocated blocks. Best effort: if it fails the log just appends (warned once).
    fn zero_ahead(&mut self, upto: u64) {
        if !self.zero_tail || upto + ZERO_LOW <= self.zeroed_end {
            return;
        }
        let to = (upto + ZERO_AHEAD).min(self.segment_size);
        if to <= self.zeroed_end.max(upto) {
            return;
        }
        match self.file.zero_extend(to) {
            Ok(true) => self.zeroed_end = to,
            Ok(false) => self.zero_tail = false,
            Err(e) => {
                // Zeros past the data are a clean end even if only some were written.
                tracing::warn!(segment = %self.seg_path.display(), error = %e,
                    "WAL preallocation failed; appending without it");
                self.zero_tail = false;
            }
        }
    }

    /// Cuts the preallocated zeros off the active segment (clean close, rotation) so the file
    /// ends at its last record, and fsyncs it. A failed cut leaves zeros that read as a clean
    /// end; a failed fsync poisons the log (it may report lost pages of unsynced records).
    fn cut_zeros(&mut self) -> Result<(), Poisoned> {
        if self.zeroed_end <= self.seg_len {
            return Ok(());
        }
        match self.file.set_len(self.seg_len) {
            Ok(()) => self.zeroed_end = self.seg_len,
            Err(e) => tracing::warn!(segment = %self.seg_path.display(), error = %e,
                "could not cut the WAL segment's preallocated zeros; they read as its end"),
        }
        self.syncer.sync_forced(self.seg_len)
    }

    /// Closes the active segment (fully synced, so no later segment can outlive its tail) and
    /// starts a new one named by `first_lsn`.
    fn rotate(&mut self, first_lsn: Lsn) -> Result<(), Poisoned> {
        self.cut_zeros()?;
        let path = self.dir.join(segment_name(first_lsn));
        let io = self.io.clone();
        let dir = self.dir.clone();
        let progress = self.progress.clone();
        let p2 = path.clone();
        let flags = self.new_flags;
        self.syncer.switch_file(first_lsn, move || {
            let step = (|| -> Result<Arc<dyn IoFile>, (&'static str, PathBuf, std::io::Error)> {
                let f = io.create(&p2).map_err(|e| ("create", p2.clone(), e))?;
                write_all(f.as_ref(), &encode_segment_header(first_lsn, flags))
                    .map_err(|e| ("write", p2.clone(), e))?;
                f.sync_data().map_err(|e| ("fsync", p2.clone(), e))?;
                io.sync_dir(&dir)
                    .map_err(|e| ("fsync dir", dir.clone(), e))?;
                Ok(f)
            })();
            match step {
                Ok(f) => Ok((f, p2)),
                Err((op, p, e)) => {
                    progress.poison(op, p, &e, (first_lsn, first_lsn));
                    Err(Poisoned)
                }
            }
        })?;
        tracing::debug!(segment = %path.display(), first_lsn, "WAL segment rotated");
        self.file = self.syncer.st.lock().file.clone();
        self.seg_path = path.clone();
        self.seg_len = SEGMENT_HEADER_LEN as u64;
        self.zero_tail = flags & crate::frame::FLAG_ZERO_TAIL != 0;
        self.zeroed_end = self.seg_len;
        self.files.lock().segs.push(SegMeta {
            first: first_lsn,
            path,
            len: self.seg_len,
        });
        Ok(())
    }
}
