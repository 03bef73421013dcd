//! Read-only inspection of a log directory: what tools (`writebehind wal inspect|verify|dump`)
//! use instead of opening a [`crate::Wal`], which would cut a torn tail.
//!
//! [`scan_dir`] reads every segment and checkpoint file with plain reads, never writes, and
//! reports each file's contents and every problem with its path and byte offset. The rules are
//! recovery's (see [`crate::reader`]): damage that runs to the end of the last segment is a torn
//! tail (recovery would cut it); any other damage, an LSN gap between segments not covered by
//! the newest valid checkpoint, or an invalid checkpoint file, is corruption.

use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::frame::{decode_segment_header, SEGMENT_HEADER_LEN};
use crate::reader::{has_frame_after, DamageReason, Event, ScanState};
use crate::{parse_lsn_name, Error, Frame, Lsn, Result, SEGMENT_SUFFIX};

/// What one segment file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The file.
    pub path: PathBuf,
    /// First LSN, from the file name.
    pub first_lsn: Lsn,
    /// LSN of the last intact record, if any.
    pub last_lsn: Option<Lsn>,
    /// Intact records.
    pub records: u64,
    /// File size.
    pub bytes: u64,
}

/// What one checkpoint file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// The file.
    pub path: PathBuf,
    /// LSN from the file name.
    pub lsn: Lsn,
    /// File size.
    pub bytes: u64,
    /// `None` if the file passes every check; otherwise which check failed.
    pub invalid: Option<String>,
}

/// The kind of a [`Problem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// Damage running to the end of the last segment: an interrupted write. Opening the log
    /// cuts it (after copying it aside); no acknowledged record is in it.
    TornTail,
    /// Damage anywhere else: opening the log refuses it (or skips it in salvage mode).
    Corrupt,
}

/// A damaged range or inconsistency found by [`scan_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Torn tail or corruption.
    pub kind: ProblemKind,
    /// The file.
    pub path: PathBuf,
    /// Byte offset of the first byte not accepted (0 for a file-level problem).
    pub offset: u64,
    /// Bytes affected (0 for an LSN gap between intact records).
    pub len: u64,
    /// What check failed.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ProblemKind::TornTail => "torn tail",
            ProblemKind::Corrupt => "corruption",
        };
        write!(
            f,
            "{kind} in {} at byte offset {} ({} bytes): {}",
            self.path.display(),
            self.offset,
            self.len,
            self.reason
        )
    }
}

/// Everything [`scan_dir`] found, files in LSN order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirReport {
    /// Segment files.
    pub segments: Vec<SegmentSummary>,
    /// Checkpoint files.
    pub checkpoints: Vec<CheckpointSummary>,
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
}

impl DirReport {
    /// Whether nothing is damaged, torn tail included.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether some damage is more than a torn tail.
    pub fn is_corrupt(&self) -> bool {
        self.problems.iter().any(|p| p.kind == ProblemKind::Corrupt)
    }

    /// Intact records in all segments.
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }
}

/// Scans `dir` read-only: every checkpoint, then every segment in LSN order, calling
/// `on_record` with each intact record (damaged ranges are skipped and reported, the scan goes
/// on). Fails only if the directory or a file cannot be read; damage is in the report.
pub fn scan_dir(dir: &Path, mut on_record: impl FnMut(&Path, &Frame)) -> Result<DirReport> {
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e| Error::io(op, path, e)
    };
    let mut segs = Vec::new();
    let mut ckpts = Vec::new();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        names.push(name.clone());
        if let Some(lsn) = parse_lsn_name(&name, SEGMENT_SUFFIX) {
            segs.push((lsn, dir.join(name)));
        } else if let Some(lsn) = checkpoint::parse_file_name(&name) {
            ckpts.push((lsn, dir.join(name)));
        }
    }
    segs.sort_unstable();
    ckpts.sort_unstable();
    // Recovery's rule: past the sync watermark of the last segment, the
    // first damage is a torn tail even with intact frames after it.
    let wm = crate::sync_watermark::read(&crate::StdIo, dir, &names)?;

    let mut rep = DirReport::default();
    let mut newest_valid_ckpt = None;
    for (lsn, path) in ckpts {
        let bytes = std::fs::read(&path).map_err(io_err("read", &path))?;
        let invalid = match checkpoint::decode(&bytes) {
            Ok(c) if c.lsn == lsn => None,
            Ok(_) => Some("checkpoint LSN does not match its file name".to_owned()),
            Err(reason) => Some(reason.to_owned()),
        };
        match &invalid {
            None => newest_valid_ckpt = Some(lsn),
            Some(reason) => rep.problems.push(Problem {
                kind: ProblemKind::Corrupt,
                path: path.clone(),
                offset: 0,
                len: bytes.len() as u64,
                reason: reason.clone(),
            }),
        }
        rep.checkpoints.push(CheckpointSummary {
            path,
            lsn,
            bytes: bytes.len() as u64,
            invalid,
        });
    }

    let mut expected: Option<Lsn> = None;
    let n = segs.len();
    for (i, (name_lsn, path)) in segs.into_iter().enumerate() {
        let is_last = i + 1 == n;
        let data = std::fs::read(&path).map_err(io_err("read", &path))?;
        let mut sum = SegmentSummary {
            path: path.clone(),
            first_lsn: name_lsn,
            last_lsn: None,
            records: 0,
            bytes: data.len() as u64,
        };
        let header = match decode_segment_header(&data) {
            Ok(h) if h.first == name_lsn => Ok(h),
            Ok(_) => Err("segment header LSN does not match the file name"),
            Err(r) => Err(r),
        };
        let header = match header {
            Ok(h) => h,
            Err(reason) => {
                // Same rule as recovery: a bad header with nothing valid after it in the last
                // segment was torn during rotation.
                let torn = is_last && !has_frame_after(&data, 0, name_lsn);
                rep.problems.push(Problem {
                    kind: if torn {
                        ProblemKind::TornTail
                    } else {
                        ProblemKind::Corrupt
                    },
                    path,
                    offset: 0,
                    len: data.len() as u64,
                    reason: reason.to_owned(),
                });
                rep.segments.push(sum);
                continue;
            }
        };
        if let Some(exp) = expected {
            let covered =
                name_lsn > exp && newest_valid_ckpt.is_some_and(|c: Lsn| c + 1 >= name_lsn);
            if name_lsn != exp && !covered {
                rep.problems.push(Problem {
                    kind: ProblemKind::Corrupt,
                    path: path.clone(),
                    offset: 0,
                    len: 0,
                    reason: DamageReason::Gap {
                        expected: exp,
                        found: name_lsn,
                    }
                    .to_string(),
                });
            }
        }
        let synced = match wm {
            Some((f, off)) if is_last && f == name_lsn => Some(off),
            Some((f, _)) if is_last && f < name_lsn => Some(SEGMENT_HEADER_LEN as u64),
            _ => None,
        };
        let mut st = ScanState::new(header);
        while let Some(ev) = st.next_event(&data) {
            match ev {
                Event::Frame { lsn, kind, payload } => {
                    sum.records += 1;
                    sum.last_lsn = Some(lsn);
                    on_record(
                        &path,
                        &Frame {
                            lsn,
                            kind,
                            payload: payload.to_vec(),
                        },
                    );
                }
                Event::Damage(d) if is_last && synced.is_some_and(|w| d.offset >= w) => {
                    rep.problems.push(Problem {
                        kind: ProblemKind::TornTail,
                        path: path.clone(),
                        offset: d.offset,
                        len: data.len() as u64 - d.offset,
                        reason: d.reason.to_string(),
                    });
                    break;
                }
                Event::Damage(d) => rep.problems.push(Problem {
                    kind: if d.resync.is_none() && is_last {
                        ProblemKind::TornTail
                    } else {
                        ProblemKind::Corrupt
                    },
                    path: path.clone(),
                    offset: d.offset,
                    len: d.len,
                    reason: d.reason.to_string(),
                }),
            }
        }
        expected = Some(sum.last_lsn.map_or(name_lsn, |l| l + 1));
        rep.segments.push(sum);
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::frame::{encode_frame, encode_segment_header, SEGMENT_HEADER_LEN};

    fn write_segment(dir: &Path, first: Lsn, n: u64) -> (PathBuf, Vec<u8>) {
        let mut s = encode_segment_header(first, 0).to_vec();
        for l in first..first + n {
            s.extend(encode_frame(l, 1, &l.to_le_bytes()));
        }
        let p = dir.join(crate::segment_name(first));
        std::fs::write(&p, &s).unwrap();
        (p, s)
    }

    #[test]
    fn clean_directory_lists_everything() {
        let tmp = tempfile::tempdir().unwrap();
        write_segment(tmp.path(), 1, 3);
        write_segment(tmp.path(), 4, 2);
        std::fs::write(
            tmp.path().join(checkpoint::file_name(2)),
            checkpoint::encode(2, b"x"),
        )
        .unwrap();
        let mut lsns = Vec::new();
        let rep = scan_dir(tmp.path(), |_, r| lsns.push(r.lsn)).unwrap();
        assert_eq!(lsns, vec![1, 2, 3, 4, 5]);
        assert!(rep.is_clean());
        assert_eq!(rep.records(), 5);
        assert_eq!(rep.segments[1].last_lsn, Some(5));
        assert_eq!(rep.checkpoints[0].invalid, None);
    }

    #[test]
    fn tail_garbage_is_torn_and_mid_log_flip_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, mut bytes) = write_segment(tmp.path(), 1, 3);
        let (last, mut tail) = write_segment(tmp.path(), 4, 1);
        tail.extend([7u8; 9]);
        std::fs::write(&last, &tail).unwrap();
        let rep = scan_dir(tmp.path(), |_, _| {}).unwrap();
        assert_eq!(rep.problems.len(), 1);
        assert_eq!(rep.problems[0].kind, ProblemKind::TornTail);
        assert_eq!(rep.problems[0].offset, tail.len() as u64 - 9);
        assert!(!rep.is_corrupt());

        bytes[SEGMENT_HEADER_LEN + 28 + 21] ^= 1; // inside record 2
        std::fs::write(&first, &bytes).unwrap();
        let rep = scan_dir(tmp.path(), |_, _| {}).unwrap();
        assert!(rep.is_corrupt());
        assert_eq!(rep.problems[0].path, first);
        assert_eq!(rep.problems[0].offset, SEGMENT_HEADER_LEN as u64 + 28);
        assert_eq!(rep.problems[0].reason, "frame checksum mismatch");
    }

    #[test]
    fn missing_segment_is_a_gap_unless_a_checkpoint_covers_it() {
        let tmp = tempfile::tempdir().unwrap();
        write_segment(tmp.path(), 1, 2);
        write_segment(tmp.path(), 6, 1);
        let rep = scan_dir(tmp.path(), |_, _| {}).unwrap();
        assert_eq!(rep.problems.len(), 1);
        assert_eq!(rep.problems[0].reason, "LSN gap: expected 3, found 6");
        std::fs::write(
            tmp.path().join(checkpoint::file_name(5)),
            checkpoint::encode(5, b""),
        )
        .unwrap();
        assert!(scan_dir(tmp.path(), |_, _| {}).unwrap().is_clean());
    }

    #[test]
    fn scanning_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (p, mut bytes) = write_segment(tmp.path(), 1, 2);
        bytes.extend([0u8; 50]);
        std::fs::write(&p, &bytes).unwrap();
        scan_dir(tmp.path(), |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
