//! Importing what a replica holds past the local end: [`Wal::import`].

use std::sync::atomic::Ordering;

use crate::{checkpoint, replica, Error, Lsn, Result, Wal};

impl Wal {
    /// Imports records a replica holds past the local end (replication reconcile at open,
    /// after a power cut took the local tail), before this log takes its first append.
    ///
    /// `frames` are whole encoded frames as [`replica::encode_frames`] makes them and stream
    /// messages carry (checked with [`replica::parse_frames`]). Without a checkpoint their
    /// LSNs start at [`Wal::last_lsn`]` + 1`. With `checkpoint = Some((c, bytes))` (`bytes` in
    /// [`checkpoint::encode`] format for LSN `c`, `c > last_lsn()`), the checkpoint is written
    /// as the log's newest (temp file, fsync, rename, directory fsync), the log continues in a
    /// new segment named `c + 1`, and `frames` (possibly empty) start at `c + 1`.
    ///
    /// Everything imported is fsynced (segment and directory) before this returns the new
    /// last LSN; from then on replay, appends and the next recovery see ordinary records. The
    /// frames are not offered to the log's [`ReplicaSink`](crate::ReplicaSink): they came from the replica.
    ///
    /// Refused, with nothing written: after an append ([`Error::ImportAfterAppend`]), frames
    /// that do not continue the log ([`Error::ReplicaGap`]), damaged frames or checkpoint
    /// ([`Error::ReplicaData`]). An I/O failure while writing poisons the log.
    pub fn import(&self, checkpoint: Option<(Lsn, &[u8])>, frames: &[u8]) -> Result<Lsn> {
        let mut st = self.append.lock();
        if st.tx.is_none() {
            return Err(Error::Closed);
        }
        if self.watermarks.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let last = st.next_lsn - 1;
        if st.appended {
            return Err(Error::ImportAfterAppend { last });
        }
        let spans = replica::parse_frames(frames)?;
        let start = match checkpoint {
            Some((c, bytes)) => {
                let found = checkpoint::decode(bytes)
                    .map_err(|reason| Error::ReplicaData {
                        reason: format!("checkpoint: {reason}"),
                    })?
                    .lsn;
                if found != c {
                    return Err(Error::ReplicaData {
                        reason: format!("checkpoint file is for LSN {found}, not {c}"),
                    });
                }
                if c <= last {
                    return Err(Error::ReplicaData {
                        reason: format!(
                            "checkpoint at LSN {c} is not past the local log's last LSN {last}"
                        ),
                    });
                }
                c
            }
            None => last,
        };
        if let Some(first) = spans.first().filter(|f| f.lsn != start + 1) {
            return Err(Error::ReplicaGap {
                expected: start + 1,
                found: first.lsn,
            });
        }
        let new_last = spans.last().map_or(start, |s| s.lsn);
        if new_last == last {
            return Ok(last);
        }
        if let Some((c, bytes)) = checkpoint {
            self.install_checkpoint(c, bytes)?;
        }
        let jump = checkpoint.map(|(c, _)| c);
        let records = spans.iter().map(|s| (s.lsn, &frames[s.range.clone()]));
        if self.commit.import(jump, records).is_err() {
            return Err(if self.watermarks.is_poisoned() {
                self.watermarks.poison_error(new_last)
            } else {
                Error::Closed
            });
        }
        self.sync_dir()?;
        st.next_lsn = new_last + 1;
        self.last_assigned.store(new_last, Ordering::SeqCst);
        tracing::info!(from = last + 1, to = new_last, checkpoint = ?jump, "WAL imported records");
        Ok(new_last)
    }
}
