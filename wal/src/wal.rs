//! The open log: appending, `sync`, closing, and what it reports about itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;

use crate::commit_cell::CommitCell;
use crate::committer::Msg;
use crate::frame::PendingFrame;
use crate::segment::Files;
use crate::watermarks::Watermarks;
use crate::{
    ticket, Append, Durability, Error, Io, Lsn, ReplicaWatermark, Result, MAX_PAYLOAD_LEN,
};

#[derive(Debug)]
pub(crate) struct AppendState {
    pub(crate) next_lsn: Lsn,
    pub(crate) tx: Option<Sender<Msg>>,
    /// An append took an LSN: [`Wal::import`] is refused from then on.
    pub(crate) appended: bool,
}

/// An open write-ahead log. `Send + Sync`: share it with `Arc<Wal>`.
///
/// Dropping it stops the committer after it wrote what was queued, without an extra fsync;
/// call [`Wal::close`] to make everything durable and see any error.
pub struct Wal {
    pub(crate) dir: PathBuf,
    pub(crate) io: Arc<dyn Io>,
    pub(crate) salvage: bool,
    pub(crate) durability: Durability,
    pub(crate) append: Mutex<AppendState>,
    pub(crate) last_assigned: AtomicU64,
    pub(crate) watermarks: Arc<Watermarks>,
    pub(crate) commit: Arc<CommitCell>,
    pub(crate) files: Arc<Mutex<Files>>,
    pub(crate) committer: Mutex<Option<JoinHandle<()>>>,
    pub(crate) ckpt_lock: Mutex<()>,
    pub(crate) replica: Option<(ReplicaWatermark, Duration)>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("last_lsn", &self.last_lsn())
            .field("durable_lsn", &self.durable_lsn())
            .field("poisoned", &self.is_poisoned())
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Appends with the log's default durability. See [`Wal::append_with`].
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<Append> {
        self.append_with(kind, payload, self.durability)
    }

    /// Assigns the next LSN and enqueues the record (blocking only while the bounded queue is
    /// full). LSNs are assigned in call order; when this returns `Ok`, `ticket.lsn()` is
    /// assigned. The ticket resolves when the record is durable per `durability`.
    /// Fails without writing anything on an oversized payload, a poisoned or a closed log.
    pub fn append_with(&self, kind: u8, payload: &[u8], durability: Durability) -> Result<Append> {
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(Error::PayloadTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        if self.watermarks.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let replica = match (durability, &self.replica) {
            (Durability::Replicated, Some((acks, timeout))) => {
                let now = std::time::Instant::now();
                Some(ticket::ReplicaTicket {
                    acks: acks.clone(),
                    since: now,
                    deadline: now + *timeout,
                })
            }
            (Durability::Replicated, None) => {
                return Err(Error::Config {
                    reason: "Durability::Replicated needs a replica (WalBuilder::replica)".into(),
                })
            }
            _ => None,
        };
        // The payload checksum is computed here, outside the lock.
        let mut frame = PendingFrame::new(kind, payload);
        let mut st = self.append.lock();
        let lsn = st.next_lsn;
        let Some(tx) = st.tx.as_ref() else {
            return Err(Error::Closed);
        };
        frame.seal(lsn);
        let msg = Msg::Frame {
            lsn,
            frame: frame.buf,
            mode: durability,
        };
        if self.enqueue(tx, msg).is_err() {
            return Err(self.stopped_error());
        }
        st.next_lsn = lsn + 1;
        st.appended = true;
        self.last_assigned.store(lsn, Ordering::SeqCst);
        drop(st);
        Ok(Append {
            lsn,
            need_durable: durability == Durability::Fsync,
            watermarks: self.watermarks.clone(),
            commit: self.commit.clone(),
            replica,
        })
    }

    /// Queues `msg`; while the queue is full, has the committer thread drain it (appenders
    /// that do not wait on their tickets never lead).
    fn enqueue(&self, tx: &Sender<Msg>, msg: Msg) -> std::result::Result<(), ()> {
        match tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) => {
                self.commit.kick();
                tx.send(msg).map_err(drop)
            }
            Err(TrySendError::Disconnected(_)) => Err(()),
        }
    }

    /// Test hook: keeps the committer thread from committing (appenders that wait on their
    /// tickets still commit their own groups) until called with `false`.
    #[cfg(feature = "fault-injection")]
    pub fn hold_committer_thread(&self, on: bool) {
        self.commit.hold_thread(on);
    }

    fn stopped_error(&self) -> Error {
        if self.watermarks.is_poisoned() {
            Error::Poisoned
        } else {
            Error::Closed
        }
    }

    /// The last LSN assigned (0 if none).
    pub fn last_lsn(&self) -> Lsn {
        self.last_assigned.load(Ordering::SeqCst)
    }

    /// The replica's watermark, when the log has one.
    pub fn replica_watermark(&self) -> Option<&ReplicaWatermark> {
        self.replica.as_ref().map(|r| &r.0)
    }

    /// The last LSN known fdatasynced.
    pub fn durable_lsn(&self) -> Lsn {
        self.watermarks.durable()
    }

    /// Makes everything appended so far durable; returns the durable LSN.
    pub fn sync(&self) -> Result<Lsn> {
        if self.watermarks.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let target = self.last_lsn();
        if self.watermarks.durable() >= target {
            return Ok(self.watermarks.durable());
        }
        {
            let st = self.append.lock();
            let Some(tx) = st.tx.as_ref() else {
                return Err(Error::Closed);
            };
            if self.enqueue(tx, Msg::Sync).is_err() {
                return Err(self.stopped_error());
            }
        }
        self.commit.try_lead();
        self.watermarks.wait(target, true)?;
        Ok(self.watermarks.durable())
    }

    /// A directory fsync failure poisons the log: the state of its entries is unknown.
    pub(crate) fn sync_dir(&self) -> Result<()> {
        self.io.sync_dir(&self.dir).map_err(|e| {
            self.watermarks
                .poison("fsync dir", self.dir.clone(), &e, (0, 0));
            Error::io("fsync dir", &self.dir, e)
        })
    }

    /// Bytes of segment and checkpoint files.
    pub fn disk_usage(&self) -> u64 {
        let f = self.files.lock();
        f.segs.iter().map(|s| s.len).sum::<u64>() + f.ckpts.iter().map(|c| c.2).sum::<u64>()
    }

    /// Whether a failed write or fsync has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.watermarks.is_poisoned()
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Syncs, stops the committer, and reports any error (including an earlier poisoning).
    pub fn close(self) -> Result<()> {
        let synced = self.sync();
        let stopped = self.shutdown();
        synced?;
        stopped?;
        if self.watermarks.is_poisoned() {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    fn shutdown(&self) -> Result<()> {
        let tx = self.append.lock().tx.take();
        if let Some(tx) = tx {
            #[cfg(feature = "fault-injection")]
            self.commit.hold_thread(false);
            let _ = self.enqueue(&tx, Msg::Shutdown);
            self.commit.kick();
        }
        let handle = self.committer.lock().take();
        if let Some(h) = handle {
            if h.join().is_err() {
                self.watermarks.close();
                tracing::error!(dir = %self.dir.display(), "WAL committer thread panicked");
                return Err(Error::Closed);
            }
        }
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
