//! Group commit: what one commit does.
//!
//! Whoever holds the commit lock ([`crate::commit_cell::CommitCell`]) drains the hand-off queue and writes the
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
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use parking_lot::Mutex;

use crate::frame::SEGMENT_HEADER_LEN;
use crate::io::{write_all, Io, IoFile};
use crate::segment::{self, segment_name, Files, SegMeta};
use crate::syncer::Syncer;
use crate::watermarks::{Poisoned, Watermarks};
use crate::{Durability, Lsn};

/// Stop growing a group past this many bytes: bounds the buffer and the latency of one write.
const GROUP_BYTES: usize = 4 << 20;

/// How far preallocated zeros run ahead of the data, and how close the data may get to their
/// end before more are written. One extension (a page-cache write) per ~0.75 MiB of log.
const ZERO_AHEAD: u64 = 1 << 20;
const ZERO_LOW: u64 = 256 << 10;

/// What appenders hand to the committer.
pub(crate) enum Msg {
    /// A sealed frame.
    Frame {
        lsn: Lsn,
        frame: Vec<u8>,
        mode: Durability,
    },
    /// fsync everything written so far.
    Sync,
    /// Write what is queued before this, then exit.
    Shutdown,
}

pub(crate) struct Committer {
    pub(crate) io: Arc<dyn Io>,
    pub(crate) dir: PathBuf,
    pub(crate) rx: Receiver<Msg>,
    pub(crate) watermarks: Arc<Watermarks>,
    pub(crate) files: Arc<Mutex<Files>>,
    pub(crate) segment_size: u64,
    pub(crate) max_delay: Option<Duration>,
    pub(crate) file: Arc<dyn IoFile>,
    pub(crate) seg_path: PathBuf,
    pub(crate) seg_len: u64,
    /// Header flags of new segments ([`crate::FLAG_PREALLOCATED`] or 0).
    pub(crate) new_flags: u32,
    /// The active segment may be zero-extended (its header says so).
    pub(crate) preallocated: bool,
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

impl Committer {
    /// Takes every queued message (one group), writes it, fdatasyncs if anyone needs it.
    /// `Ok(false)` once shut down or disconnected.
    pub(crate) fn run_group(&mut self) -> Result<bool, Poisoned> {
        if self.watermarks.is_poisoned() {
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
        self.write_group(want_sync)?;
        if let Some(d) = self.sync_deadline.take() {
            if !want_sync {
                // The syncer thread runs the timer: appends waiting only for the write keep
                // flowing, whoever commits.
                self.syncer.schedule(d);
            }
        }
        Ok(open && !shutdown)
    }

    pub(crate) fn take(
        &mut self,
        msg: Msg,
        now: Instant,
        want_sync: &mut bool,
        shutdown: &mut bool,
    ) -> Result<(), Poisoned> {
        match msg {
            Msg::Frame { lsn, frame, mode } => {
                let pending = self.seg_len + self.buf.len() as u64;
                if pending + frame.len() as u64 > self.segment_size
                    && pending > SEGMENT_HEADER_LEN as u64
                {
                    self.write_group(false)?;
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
    pub(crate) fn write_group(&mut self, sync: bool) -> Result<(), Poisoned> {
        if !self.buf.is_empty() {
            self.zero_ahead(self.seg_len + self.buf.len() as u64);
            if let Err(e) = write_all(self.file.as_ref(), &self.buf) {
                self.watermarks.poison(
                    "write",
                    self.seg_path.clone(),
                    &e,
                    (self.buf_first, self.buf_last),
                );
                return Err(Poisoned);
            }
            self.seg_len += self.buf.len() as u64;
            self.watermarks
                .note_group(self.buf_last - self.buf_first + 1);
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
            self.watermarks.store_written(self.buf_last);
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
        if !self.preallocated || upto + ZERO_LOW <= self.zeroed_end {
            return;
        }
        let to = (upto + ZERO_AHEAD).min(self.segment_size);
        if to <= self.zeroed_end.max(upto) {
            return;
        }
        match self.file.zero_extend(to) {
            Ok(true) => self.zeroed_end = to,
            Ok(false) => self.preallocated = false,
            Err(e) => {
                // Zeros past the data are a clean end even if only some were written.
                tracing::warn!(segment = %self.seg_path.display(), error = %e,
                    "WAL preallocation failed; appending without it");
                self.preallocated = false;
            }
        }
    }

    /// Cuts the preallocated zeros off the active segment (clean close, rotation) so the file
    /// ends at its last record, and fsyncs it. A failed cut leaves zeros that read as a clean
    /// end; a failed fsync poisons the log (it may report lost pages of unsynced records).
    pub(crate) fn cut_zeros(&mut self) -> Result<(), Poisoned> {
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
    pub(crate) fn rotate(&mut self, first_lsn: Lsn) -> Result<(), Poisoned> {
        self.cut_zeros()?;
        let path = self.dir.join(segment_name(first_lsn));
        let io = self.io.clone();
        let dir = self.dir.clone();
        let watermarks = self.watermarks.clone();
        let p2 = path.clone();
        let flags = self.new_flags;
        self.syncer.switch_file(first_lsn, move || {
            match segment::create(io.as_ref(), &dir, &p2, first_lsn, flags) {
                Ok(f) => Ok((f, p2)),
                Err(f) => {
                    watermarks.poison(f.op, f.path, &f.source, (first_lsn, first_lsn));
                    Err(Poisoned)
                }
            }
        })?;
        tracing::debug!(segment = %path.display(), first_lsn, "WAL segment rotated");
        self.file = self.syncer.file();
        self.seg_path = path.clone();
        self.seg_len = SEGMENT_HEADER_LEN as u64;
        self.preallocated = flags & crate::frame::FLAG_PREALLOCATED != 0;
        self.zeroed_end = self.seg_len;
        self.files.lock().segs.push(SegMeta {
            first: first_lsn,
            path,
            len: self.seg_len,
        });
        Ok(())
    }
}
