//! Reading a replicated log back into a local one.
//!
//! A replica (a sibling crate: NATS JetStream, Kafka, …) hands back what it holds of an
//! instance as a [`RebuildSource`]; [`rebuild`] writes it into an empty log directory, and an
//! owner whose local tail a power cut took appends [`RebuildSource::frames_from`] its local
//! end with [`crate::Wal::import`]. [`is_empty_log`] says which of the two applies.

use std::path::Path;

use crate::io::Io;
use crate::replica::seed;
use crate::{checkpoint, Error, Lsn, Result};

/// What a replica holds of one instance's log, as its owners' claims allow.
pub trait RebuildSource: Send {
    /// The last LSN the replica holds or covers (by a checkpoint, or by a floor below which
    /// it dropped what a flush made unneeded).
    fn last_lsn(&self) -> Lsn;
    /// Where a rebuild into an empty directory starts: the checkpoint file bytes (as
    /// [`Checkpoint`](crate::Checkpoint) files are stored) if it starts from one, and the
    /// first LSN of the frames that follow.
    fn rebuild_start(&self) -> (Option<&[u8]>, Lsn);
    /// The whole frames from `start` on, consecutive, and their count. A missing LSN is
    /// [`Error::ReplicaGap`], never skipped.
    fn frames_from(&self, start: Lsn) -> Result<(Vec<u8>, u64)>;
}

/// What [`rebuild`] restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// The checkpoint it started from (its LSN).
    pub checkpoint: Option<Lsn>,
    /// Records written after it.
    pub records: u64,
}

/// Rebuilds the empty log directory `dir` from `source`: its checkpoint, then every frame
/// after it (checked: checksums, LSN continuity). See [`seed`].
pub fn rebuild(io: &dyn Io, dir: &Path, source: &dyn RebuildSource) -> Result<Rebuilt> {
    let (ckpt, start) = source.rebuild_start();
    let (frames, records) = source.frames_from(start)?;
    let checkpoint = match ckpt {
        Some(bytes) => Some(
            checkpoint::decode(bytes)
                .map_err(|reason| Error::ReplicaData {
                    reason: format!("checkpoint: {reason}"),
                })?
                .lsn,
        ),
        None => None,
    };
    seed(io, dir, ckpt, &frames)?;
    Ok(Rebuilt {
        checkpoint,
        records,
    })
}

/// Whether `dir` holds no log yet (no segment, no checkpoint; a missing directory is empty).
pub fn is_empty_log(io: &dyn Io, dir: &Path) -> Result<bool> {
    let names = match io.list(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    Ok(!names.iter().any(|n| is_log_file(n)))
}

/// A segment or checkpoint file name.
pub(crate) fn is_log_file(name: &str) -> bool {
    crate::parse_lsn_name(name, crate::SEGMENT_SUFFIX).is_some()
        || checkpoint::parse_file_name(name).is_some()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::frame::encode_frame;
    use crate::StdIo;

    struct Held {
        frames: Vec<(Lsn, Vec<u8>)>,
    }

    impl RebuildSource for Held {
        fn last_lsn(&self) -> Lsn {
            self.frames.last().map_or(0, |f| f.0)
        }
        fn rebuild_start(&self) -> (Option<&[u8]>, Lsn) {
            (None, 1)
        }
        fn frames_from(&self, start: Lsn) -> Result<(Vec<u8>, u64)> {
            let mut out = Vec::new();
            let mut n = 0;
            for (lsn, f) in self.frames.iter().filter(|f| f.0 >= start) {
                if *lsn != start + n {
                    return Err(Error::ReplicaGap {
                        expected: start + n,
                        found: *lsn,
                    });
                }
                out.extend_from_slice(f);
                n += 1;
            }
            Ok((out, n))
        }
    }

    #[test]
    fn a_rebuilt_directory_is_no_longer_empty_and_replays_the_frames() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        assert!(is_empty_log(&StdIo, &dir).unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("instance.id"), "a").unwrap();
        assert!(is_empty_log(&StdIo, &dir).unwrap());
        let held = Held {
            frames: vec![(1, encode_frame(1, 1, b"a")), (2, encode_frame(2, 1, b"b"))],
        };
        let rebuilt = rebuild(&StdIo, &dir, &held).unwrap();
        assert_eq!(
            rebuilt,
            Rebuilt {
                checkpoint: None,
                records: 2
            }
        );
        assert!(!is_empty_log(&StdIo, &dir).unwrap());
        let (wal, _) = crate::WalBuilder::new(dir).open().unwrap();
        let got: Vec<_> = wal.replay(1).unwrap().map(|r| r.unwrap().payload).collect();
        assert_eq!(got, [b"a".to_vec(), b"b".to_vec()]);
    }
}
