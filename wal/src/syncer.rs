//! The fdatasync side of group commit: [`Syncer`] fdatasyncs the active segment on the
//! caller's thread when a waiter needs it now, and on its own thread for the `Buffered`
//! timer, and keeps the sync watermark file (see [`crate::sync_watermark`]) in step.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::frame::SEGMENT_HEADER_LEN;
use crate::io::IoFile;
use crate::sync_watermark::{self, WatermarkFile};
use crate::watermarks::{Poisoned, Watermarks};
use crate::Lsn;

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
    watermarks: Arc<Watermarks>,
}

/// The watermark is fsynced at most this often while it changes (see [`crate::sync_watermark`]).
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
        watermarks: Arc<Watermarks>,
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
            watermarks,
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
                        MutexGuard::unlocked(&mut st, || self.watermarks.set_durable(d));
                    }
                    Err(e) => {
                        // Never retried: the kernel may have dropped the dirty pages.
                        st.failed = true;
                        self.cv.notify_all();
                        self.watermarks
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
                        self.watermarks.poison("fsync", wm.path.clone(), &e, (0, 0));
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
        if let Err(e) = wm
            .file
            .write_at(&sync_watermark::encode(st.seg_first, off), 0)
        {
            let path = wm.path.clone();
            st.failed = true;
            self.watermarks.poison("write", path, &e, (0, 0));
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
    pub(crate) fn schedule(&self, deadline: Instant) {
        let mut st = self.st.lock();
        if st.deadline.is_none_or(|d| deadline < d) {
            st.deadline = Some(deadline);
            self.cv.notify_all();
        }
    }

    /// Records that `last` is written and the data ends at `off` (a later fdatasync covers it).
    pub(crate) fn written(&self, last: Lsn, off: u64) {
        let mut st = self.st.lock();
        st.written = last;
        st.written_off = off;
    }

    /// fdatasyncs the current file now, on the caller's thread (after any fdatasync in flight).
    pub(crate) fn sync_now(&self) -> Result<(), Poisoned> {
        let mut st = self.st.lock();
        self.sync_locked(&mut st, false)
    }

    /// Like `sync_now`, but fsyncs even with no new record (a truncation, say), and the data
    /// now ends at `off`.
    pub(crate) fn sync_forced(&self, off: u64) -> Result<(), Poisoned> {
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
                self.watermarks.poison("fsync", st.path.clone(), &e, range);
                return Err(Poisoned);
            }
            st.durable = st.written;
            st.want = st.want.max(st.durable);
            st.deadline = None;
            let d = st.durable;
            let off = st.written_off;
            self.note_synced(st, off)?;
            // Woken by the commit-lock holder once it lets go.
            self.watermarks.store_durable(d);
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
    pub(crate) fn finish(&self) -> Result<(), Poisoned> {
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
            self.watermarks.poison("fsync", wm.path.clone(), &e, (0, 0));
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
    pub(crate) fn switch_file(
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

    /// The file fdatasyncs go to (the active segment).
    pub(crate) fn file(&self) -> Arc<dyn IoFile> {
        self.st.lock().file.clone()
    }

    pub(crate) fn stop(&self) {
        self.st.lock().stop = true;
        self.cv.notify_all();
    }
}
