//! Reading the on-disk log back: [`Wal::replay`] and its iterator.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use crate::reader::{Event, ScanState};
use crate::segment::SegMeta;
use crate::{frame, Error, Frame, Io, Lsn, Result, Wal};

impl Wal {
    /// Reads the on-disk log: every record with LSN `>= from`, in LSN order, as written
    /// when this is called (records still queued are not included). A damaged range yields
    /// [`Error::Corrupt`] and ends the iteration (salvage mode skips it instead).
    pub fn replay(&self, from: Lsn) -> Result<Replay> {
        let segs = self.files.lock().segs.clone();
        // Skip segments that end before `from`: segment i ends where segment i+1 starts.
        let start = segs.iter().rposition(|s| s.first <= from).unwrap_or(0);
        Ok(Replay {
            io: self.io.clone(),
            segs: segs.into_iter().skip(start).collect(),
            from,
            salvage: self.salvage,
            cur: None,
            done: false,
        })
    }
}

/// Iterator over on-disk records from an LSN; see [`Wal::replay`].
#[derive(Debug)]
pub struct Replay {
    io: Arc<dyn Io>,
    segs: VecDeque<SegMeta>,
    from: Lsn,
    salvage: bool,
    cur: Option<(Vec<u8>, ScanState, PathBuf)>,
    done: bool,
}

impl Replay {
    fn load_next(&mut self) -> Result<bool> {
        let Some(seg) = self.segs.pop_front() else {
            return Ok(false);
        };
        let mut data = self
            .io
            .read(&seg.path)
            .map_err(|e| Error::io("read", &seg.path, e))?;
        // The active segment may be mid-write past what the committer published.
        data.truncate(seg.len as usize);
        match frame::decode_segment_header(&data) {
            Ok(h) => {
                self.cur = Some((data, ScanState::new(h), seg.path));
                Ok(true)
            }
            Err(_) if self.salvage => Ok(true),
            Err(reason) => Err(Error::Corrupt {
                segment: seg.path,
                offset: 0,
                reason: reason.to_owned(),
            }),
        }
    }
}

impl Iterator for Replay {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if let Some((buf, st, path)) = &mut self.cur {
                match st.next_event(buf) {
                    Some(Event::Frame { lsn, kind, payload }) => {
                        if lsn >= self.from {
                            return Some(Ok(Frame {
                                lsn,
                                kind,
                                payload: payload.to_vec(),
                            }));
                        }
                    }
                    Some(Event::Damage(_)) if self.salvage => {}
                    Some(Event::Damage(d)) => {
                        self.done = true;
                        return Some(Err(Error::Corrupt {
                            segment: path.clone(),
                            offset: d.offset,
                            reason: d.reason.to_string(),
                        }));
                    }
                    None => self.cur = None,
                }
                continue;
            }
            match self.load_next() {
                Ok(true) => {}
                Ok(false) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}
