//! The group-commit thread: drains the hand-off queue, writes each group with one write and
//! at most one fdatasync, rotates segments, and runs the `Buffered` fsync timer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;

use crate::frame::{encode_segment_header, SEGMENT_HEADER_LEN};
use crate::io::{write_all, Io, IoFile};
use crate::ticket::Progress;
use crate::{segment_name, Durability, Files, Lsn, SegMeta};

/// Stop growing a group past this many bytes: bounds the buffer and the latency of one write.
const GROUP_BYTES: usize = 4 << 20;

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

/// Marker: the log is poisoned (the details went to [`Progress::poison`]).
struct Poisoned;

pub(crate) struct Committer {
    pub(crate) io: Arc<dyn Io>,
    pub(crate) dir: PathBuf,
    pub(crate) rx: Receiver<Msg>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) files: Arc<Mutex<Files>>,
    pub(crate) segment_size: u64,
    pub(crate) max_delay: Option<Duration>,
    pub(crate) file: Box<dyn IoFile>,
    pub(crate) seg_path: PathBuf,
    pub(crate) seg_len: u64,
    pub(crate) written: Lsn,
    pub(crate) durable: Lsn,
    pub(crate) buf: Vec<u8>,
    pub(crate) buf_first: Lsn,
    pub(crate) buf_last: Lsn,
    pub(crate) sync_deadline: Option<Instant>,
}

impl Committer {
    pub(crate) fn run(mut self) {
        if self.run_inner().is_err() {
            tracing::error!(dir = %self.dir.display(), "WAL committer stopped: log poisoned");
        }
        self.progress.close();
    }

    fn run_inner(&mut self) -> Result<(), Poisoned> {
        loop {
            if self.progress.is_poisoned() {
                // Poisoned elsewhere (a directory fsync): stop writing.
                return Err(Poisoned);
            }
            let first = match self.sync_deadline {
                Some(deadline) => match self.rx.recv_deadline(deadline) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        self.sync()?;
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                },
                None => match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => return Ok(()),
                },
            };
            let now = Instant::now();
            let mut want_sync = false;
            let mut shutdown = false;
            self.take(first, now, &mut want_sync, &mut shutdown)?;
            let linger = self.max_delay.map(|d| now + d);
            while !shutdown && self.buf.len() < GROUP_BYTES {
                let m = match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => match linger {
                        Some(t) => match self.rx.recv_deadline(t) {
                            Ok(m) => m,
                            Err(_) => break,
                        },
                        None => break,
                    },
                };
                self.take(m, now, &mut want_sync, &mut shutdown)?;
            }
            self.flush()?;
            if want_sync || self.sync_deadline.is_some_and(|d| Instant::now() >= d) {
                self.sync()?;
            }
            if shutdown {
                return Ok(());
            }
        }
    }

    fn take(&mut self, msg: Msg, now: Instant, want_sync: &mut bool, shutdown: &mut bool) -> Result<(), Poisoned> {
        match msg {
            Msg::Record { lsn, frame, mode } => {
                let pending = self.seg_len + self.buf.len() as u64;
                if pending + frame.len() as u64 > self.segment_size && pending > SEGMENT_HEADER_LEN as u64 {
                    self.flush()?;
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
                    Durability::None => {}
                }
            }
            Msg::Sync => *want_sync = true,
            Msg::Shutdown => *shutdown = true,
        }
        Ok(())
    }

    /// Writes the group buffer with one write (looping only over short writes).
    fn flush(&mut self) -> Result<(), Poisoned> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = write_all(self.file.as_mut(), &self.buf) {
            self.progress
                .poison("write", self.seg_path.clone(), &e, (self.buf_first, self.buf_last));
            return Err(Poisoned);
        }
        self.seg_len += self.buf.len() as u64;
        self.written = self.buf_last;
        self.buf.clear();
        if let Some(active) = self.files.lock().segs.last_mut() {
            active.len = self.seg_len;
        }
        self.progress.advance(self.written, self.durable);
        Ok(())
    }

    /// fdatasync the active segment if anything is unsynced. Never retried: a failure poisons.
    fn sync(&mut self) -> Result<(), Poisoned> {
        self.sync_deadline = None;
        if self.written == self.durable {
            return Ok(());
        }
        if let Err(e) = self.file.sync_data() {
            self.progress
                .poison("fsync", self.seg_path.clone(), &e, (self.durable + 1, self.written));
            return Err(Poisoned);
        }
        self.durable = self.written;
        self.progress.advance(self.written, self.durable);
        Ok(())
    }

    /// Closes the active segment (fully synced, so no later segment can outlive its tail) and
    /// starts a new one named by `first_lsn`.
    fn rotate(&mut self, first_lsn: Lsn) -> Result<(), Poisoned> {
        self.sync()?;
        let path = self.dir.join(segment_name(first_lsn));
        let step = (|| -> Result<Box<dyn IoFile>, (&'static str, PathBuf, std::io::Error)> {
            let mut f = self.io.create(&path).map_err(|e| ("create", path.clone(), e))?;
            write_all(f.as_mut(), &encode_segment_header(first_lsn)).map_err(|e| ("write", path.clone(), e))?;
            f.sync_data().map_err(|e| ("fsync", path.clone(), e))?;
            self.io.sync_dir(&self.dir).map_err(|e| ("fsync dir", self.dir.clone(), e))?;
            Ok(f)
        })();
        match step {
            Ok(f) => {
                tracing::debug!(segment = %path.display(), first_lsn, "WAL segment rotated");
                self.file = f;
                self.seg_path = path.clone();
                self.seg_len = SEGMENT_HEADER_LEN as u64;
                self.files.lock().segs.push(SegMeta {
                    first: first_lsn,
                    path,
                    len: self.seg_len,
                });
                Ok(())
            }
            Err((op, p, e)) => {
                self.progress.poison(op, p, &e, (first_lsn, first_lsn));
                Err(Poisoned)
            }
        }
    }
}
