//! Opening a log directory: find the newest valid checkpoint, scan every segment, cut a torn
//! tail (after copying it aside), and refuse (or, in salvage mode, report and skip) damage
//! anywhere else.

use std::path::{Path, PathBuf};

use crate::frame::{decode_segment_header, FLAG_PREALLOCATED, SEGMENT_HEADER_LEN};
use crate::io::{write_all, Io};
use crate::reader::{DamageReason, Event, ScanState};
use crate::segment::{self, parse_lsn_name, Files, SegMeta, SEGMENT_SUFFIX};
use crate::{checkpoint, checkpoint_files, sync_watermark, Error, Lsn, Result};

/// The newest valid checkpoint found at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Its LSN.
    pub lsn: Lsn,
    /// Its file.
    pub path: PathBuf,
    /// Its file size in bytes.
    pub bytes: u64,
}

/// A torn tail cut at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment, which was cut.
    pub segment: PathBuf,
    /// Where it was cut: the end of the last whole record (0 if the header itself was torn).
    pub offset: u64,
    /// How many bytes were removed.
    pub bytes_cut: u64,
    /// Where the removed bytes were copied before the cut.
    pub saved_to: PathBuf,
    /// What made the first removed byte invalid.
    pub reason: String,
}

/// A damaged range skipped in salvage mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The segment file.
    pub segment: PathBuf,
    /// Offset of the first skipped byte.
    pub offset: u64,
    /// Number of bytes skipped (0 for an LSN gap between intact records).
    pub len: u64,
    /// Why.
    pub reason: String,
}

/// What `open` found. Also logged with `tracing` at info (warn for a torn tail or skips).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The newest valid checkpoint.
    pub checkpoint: Option<CheckpointInfo>,
    /// LSN of the first surviving record.
    pub first_lsn: Option<Lsn>,
    /// LSN of the last surviving record.
    pub last_lsn: Option<Lsn>,
    /// Number of surviving records.
    pub records: u64,
    /// Bytes of segment files scanned (after any cut).
    pub bytes: u64,
    /// The torn tail that was cut, if any.
    pub torn_tail: Option<TornTail>,
    /// Salvage mode only: every damaged range skipped.
    pub skipped: Vec<Skipped>,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
}

impl Recovery {
    /// Logs what open found: a torn tail or skipped ranges at warn, the rest at info.
    pub(crate) fn log(&self, dir: &Path) {
        if let Some(t) = &self.torn_tail {
            tracing::warn!(segment = %t.segment.display(), offset = t.offset, bytes_cut = t.bytes_cut,
                saved_to = %t.saved_to.display(), reason = %t.reason, "WAL torn tail cut");
        }
        for s in &self.skipped {
            tracing::warn!(segment = %s.segment.display(), offset = s.offset, len = s.len,
                reason = %s.reason, "WAL salvage skipped damaged range");
        }
        tracing::info!(dir = %dir.display(), records = self.records, bytes = self.bytes,
            first_lsn = ?self.first_lsn, last_lsn = ?self.last_lsn, next_lsn = self.next_lsn,
            checkpoint = ?self.checkpoint.as_ref().map(|c| c.lsn), "WAL opened");
    }
}

pub(crate) struct Recovered {
    pub(crate) files: Files,
    /// The last segment, if it can be appended to.
    pub(crate) active: Option<Active>,
    pub(crate) report: Recovery,
}

/// The segment the log goes on writing after open.
pub(crate) struct Active {
    pub(crate) path: PathBuf,
    /// Its first LSN (its name).
    pub(crate) first: Lsn,
    /// Its data length (any preallocated zeros were cut).
    pub(crate) len: u64,
    /// The LSN its next record would carry.
    pub(crate) next: Lsn,
    /// Its header has [`crate::FLAG_PREALLOCATED`]: it may be zero-extended.
    pub(crate) preallocated: bool,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

/// `new_flags`: the header flags of a segment this has to write afresh.
pub(crate) fn recover(io: &dyn Io, dir: &Path, salvage: bool, new_flags: u32) -> Result<Recovered> {
    let names = io.list(dir).map_err(io_err("list", dir))?;
    let mut segs: Vec<(Lsn, String)> = Vec::new();
    let mut removed_tmp = false;
    for name in &names {
        if let Some(lsn) = parse_lsn_name(name, SEGMENT_SUFFIX) {
            segs.push((lsn, name.clone()));
        } else if checkpoint::parse_file_name(name).is_some() {
            // Read below, newest first.
        } else if name.ends_with(checkpoint::TMP_SUFFIX) {
            // A checkpoint that never got renamed: by construction not the newest valid one.
            let p = dir.join(name);
            io.remove(&p).map_err(io_err("remove", &p))?;
            removed_tmp = true;
        }
    }
    if removed_tmp {
        io.sync_dir(dir).map_err(io_err("fsync dir", dir))?;
    }
    segs.sort_unstable();
    let wm = sync_watermark::read(io, dir, &names)?;

    let mut files = Files::default();
    let mut checkpoint_info = None;
    for (lsn, name) in checkpoint_files::newest_first(&names) {
        if checkpoint_info.is_some() {
            // Older than the one in use: only its size counts (the next checkpoint removes it).
            let p = dir.join(name);
            let bytes = io.read(&p).map_err(io_err("read", &p))?;
            files.ckpts.push((lsn, p, bytes.len() as u64));
            continue;
        }
        let found = checkpoint_files::read(io, dir, lsn, name)?;
        if let Some(c) = &found.valid {
            checkpoint_info = Some(CheckpointInfo {
                lsn: c.lsn,
                path: found.path.clone(),
                bytes: found.bytes,
            });
        }
        files.ckpts.push((lsn, found.path, found.bytes));
    }
    files.ckpts.reverse();
    let ckpt_lsn = checkpoint_info.as_ref().map(|c| c.lsn);

    let mut rep = Recovery {
        checkpoint: checkpoint_info,
        first_lsn: None,
        last_lsn: None,
        records: 0,
        bytes: 0,
        torn_tail: None,
        skipped: Vec::new(),
        next_lsn: 1,
    };
    let mut expected: Option<Lsn> = None;
    let mut floor: Lsn = 1;
    let mut active = None;
    let n = segs.len();
    for (i, (name_lsn, name)) in segs.iter().enumerate() {
        let is_last = i + 1 == n;
        // How far the last segment is known synced (see `watermark`): damage from there on is
        // a torn tail, before it corruption. `None`: the rule from before the watermark.
        let synced = match wm {
            Some((f, off)) if is_last && f == *name_lsn => Some(off),
            Some((f, _)) if is_last && f < *name_lsn => Some(SEGMENT_HEADER_LEN as u64),
            _ => None,
        };
        let path = dir.join(name);
        let data = io.read(&path).map_err(io_err("read", &path))?;
        floor = floor.max(*name_lsn);
        let header = match decode_segment_header(&data) {
            Ok(h) if h.first == *name_lsn => Ok(h),
            Ok(_) => Err("segment header LSN does not match the file name"),
            Err(r) => Err(r),
        };
        let header = match header {
            Ok(h) => h,
            Err(reason)
                if is_last
                    && synced.is_none_or(|w| w <= SEGMENT_HEADER_LEN as u64)
                    && !crate::reader::has_frame_after(&data, 0, *name_lsn) =>
            {
                // Torn during rotation: keep the copy, start the segment afresh.
                let saved_to = save_aside(io, dir, name, 0, &data, &names)?;
                segment::create(io, dir, &path, *name_lsn, new_flags)?;
                rep.torn_tail = Some(TornTail {
                    segment: path.clone(),
                    offset: 0,
                    bytes_cut: data.len() as u64,
                    saved_to,
                    reason: reason.to_owned(),
                });
                let len = SEGMENT_HEADER_LEN as u64;
                rep.bytes += len;
                files.segs.push(SegMeta {
                    first: *name_lsn,
                    path: path.clone(),
                    len,
                });
                let next = expected.unwrap_or(*name_lsn).max(*name_lsn);
                expected = Some(next);
                active = Some(Active {
                    path,
                    first: *name_lsn,
                    len,
                    next: *name_lsn,
                    preallocated: new_flags & FLAG_PREALLOCATED != 0,
                });
                continue;
            }
            Err(reason) => {
                if !salvage {
                    return Err(Error::Corrupt {
                        segment: path,
                        offset: 0,
                        reason: reason.to_owned(),
                    });
                }
                rep.skipped.push(Skipped {
                    segment: path.clone(),
                    offset: 0,
                    len: data.len() as u64,
                    reason: reason.to_owned(),
                });
                files.segs.push(SegMeta {
                    first: *name_lsn,
                    path,
                    len: data.len() as u64,
                });
                continue;
            }
        };
        let first = header.first;
        if let Some(exp) = expected {
            // A jump forward is fine when the checkpoint covers everything in between.
            let covered = first > exp && ckpt_lsn.is_some_and(|c| c + 1 >= first);
            if first != exp && !covered {
                if !salvage {
                    return Err(Error::LsnGap {
                        segment: path,
                        offset: 0,
                        expected: exp,
                        found: first,
                    });
                }
                rep.skipped.push(Skipped {
                    segment: path.clone(),
                    offset: 0,
                    len: 0,
                    reason: DamageReason::Gap {
                        expected: exp,
                        found: first,
                    }
                    .to_string(),
                });
            }
        }
        let mut st = ScanState::new(header);
        let mut seg_last = None;
        let mut torn = None;
        while let Some(ev) = st.next_event(&data) {
            match ev {
                Event::Frame { lsn, .. } => {
                    rep.records += 1;
                    rep.first_lsn.get_or_insert(lsn);
                    rep.last_lsn = Some(lsn);
                    seg_last = Some(lsn);
                }
                Event::Damage(d)
                    if is_last && synced.map_or(d.resync.is_none(), |w| d.offset >= w) =>
                {
                    // Past the watermark even intact frames after the damage were never
                    // synced: the first hole ends the log.
                    torn = Some(d);
                    break;
                }
                Event::Damage(d) => {
                    if !salvage {
                        return Err(match d.reason {
                            DamageReason::Gap { expected, found } => Error::LsnGap {
                                segment: path,
                                offset: d.offset,
                                expected,
                                found,
                            },
                            r => Error::Corrupt {
                                segment: path,
                                offset: d.offset,
                                reason: r.to_string(),
                            },
                        });
                    }
                    rep.skipped.push(Skipped {
                        segment: path.clone(),
                        offset: d.offset,
                        len: d.len,
                        reason: d.reason.to_string(),
                    });
                }
            }
        }
        let end = torn.as_ref().map_or(st.pos() as u64, |d| d.offset);
        if let Some(w) = synced.filter(|w| end < *w) {
            // Bytes that were fsynced are gone (a zero run or the end of the file before it).
            let reason = format!("the segment ends at byte {end}, before its synced watermark {w}");
            if !salvage {
                return Err(Error::Corrupt {
                    segment: path,
                    offset: end,
                    reason,
                });
            }
            rep.skipped.push(Skipped {
                segment: path.clone(),
                offset: end,
                len: w - end,
                reason,
            });
        }
        let mut len = data.len() as u64;
        if let Some(end) = st.preallocated_from() {
            // Preallocated space, not damage. The active segment is cut back to its data so
            // appends resume at the end of the file.
            len = end as u64;
            if is_last {
                let f = io.open_append(&path).map_err(io_err("open", &path))?;
                f.set_len(len).map_err(io_err("truncate", &path))?;
                f.sync_data().map_err(io_err("fsync", &path))?;
            }
        }
        if let Some(d) = torn {
            let off = d.offset as usize;
            let saved_to = save_aside(io, dir, name, d.offset, &data[off..], &names)?;
            let f = io.open_append(&path).map_err(io_err("open", &path))?;
            f.set_len(d.offset).map_err(io_err("truncate", &path))?;
            f.sync_data().map_err(io_err("fsync", &path))?;
            rep.torn_tail = Some(TornTail {
                segment: path.clone(),
                offset: d.offset,
                bytes_cut: len - d.offset,
                saved_to,
                reason: d.reason.to_string(),
            });
            len = d.offset;
        }
        rep.bytes += len;
        let next = seg_last.map_or(first, |l| l + 1);
        expected = Some(next);
        files.segs.push(SegMeta {
            first,
            path: path.clone(),
            len,
        });
        if is_last {
            active = Some(Active {
                path,
                first,
                len,
                next,
                preallocated: header.preallocated,
            });
        }
    }
    rep.next_lsn = expected
        .unwrap_or(1)
        .max(floor)
        .max(ckpt_lsn.map_or(1, |c| c + 1));
    Ok(Recovered {
        files,
        active,
        report: rep,
    })
}

/// Copies damaged bytes to `<segment>.torn-<offset>[-k]`, fsyncs it and the directory.
fn save_aside(
    io: &dyn Io,
    dir: &Path,
    seg: &str,
    offset: u64,
    bytes: &[u8],
    names: &[String],
) -> Result<PathBuf> {
    let base = format!("{seg}.torn-{offset}");
    let mut name = base.clone();
    let mut k = 1;
    while names.contains(&name) {
        name = format!("{base}-{k}");
        k += 1;
    }
    let p = dir.join(name);
    let f = io.create(&p).map_err(io_err("create", &p))?;
    write_all(f.as_ref(), bytes).map_err(io_err("write", &p))?;
    f.sync_data().map_err(io_err("fsync", &p))?;
    io.sync_dir(dir).map_err(io_err("fsync dir", dir))?;
    Ok(p)
}
