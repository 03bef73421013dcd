//! The replication seam.
//!
//! Right after the committer writes a group to the local log it hands the group's exact frame
//! bytes and LSN range to a [`ReplicaSink`], which must not block the committer (it queues and
//! publishes on its own task). The sink reports how far the replica has stored the log through
//! [`ReplicaWatermark`]: `Durability::Replicated` tickets resolve once the local write and that
//! watermark both cover them, or fail when their wait bound passes. Other modes never look at
//! it. Nothing here knows which replicated log is behind the trait.
//!
//! Also here: checking frames read back from a replica (checksums, LSN continuity, see
//! [`parse_frames`]) and seeding an empty log directory from them ([`seed`]).

use std::ops::Range;
use std::path::Path;

use crate::frame::{encode_segment_header, parse_frame};
use crate::io::Io;
use crate::{checkpoint, segment_name, Error, Lsn, Result};

pub use crate::replica_watermark::{ReplicaWait, ReplicaWatermark};

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
pub fn encode_frames<'a>(records: impl IntoIterator<Item = &'a crate::Frame>) -> Vec<u8> {
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
}
