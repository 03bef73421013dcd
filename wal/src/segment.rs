//! Segment files: their names, the list of those on disk, creating one, and deleting the
//! old ones ([`Wal::truncate_before`]). Their format is in `frame`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::frame::encode_segment_header;
use crate::io::{write_all, Io, IoFile};
use crate::{Error, Lsn, Result, Wal};

pub(crate) const SEGMENT_SUFFIX: &str = ".wal";

#[derive(Clone, Debug)]
pub(crate) struct SegMeta {
    pub(crate) first: Lsn,
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
}

/// Segment and checkpoint files currently on disk, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Files {
    pub(crate) segs: Vec<SegMeta>,
    pub(crate) ckpts: Vec<(Lsn, PathBuf, u64)>,
}

pub(crate) fn segment_name(first: Lsn) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

/// `<20 digits><suffix>` → the LSN.
pub(crate) fn parse_lsn_name(name: &str, suffix: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A step of [`create`] that failed: the caller decides whether it poisons the log.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) op: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) source: std::io::Error,
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Error {
        Error::io(f.op, f.path, f.source)
    }
}

/// Creates (or truncates) the segment at `path` starting at LSN `first`: writes its header
/// with `flags`, fsyncs it, then the directory, so the empty segment is durable.
pub(crate) fn create(
    io: &dyn Io,
    dir: &Path,
    path: &Path,
    first: Lsn,
    flags: u32,
) -> std::result::Result<Arc<dyn IoFile>, Failed> {
    let failed = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| Failed { op, path, source }
    };
    let f = io.create(path).map_err(failed("create", path))?;
    write_all(f.as_ref(), &encode_segment_header(first, flags)).map_err(failed("write", path))?;
    f.sync_data().map_err(failed("fsync", path))?;
    io.sync_dir(dir).map_err(failed("fsync dir", dir))?;
    Ok(f)
}

impl Wal {
    /// Deletes, durably, every segment whose records all have LSN `< lsn` (never the active
    /// segment). Returns the bytes freed.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<u64> {
        let mut files = self.files.lock();
        let mut freed = 0;
        let mut removed = 0;
        let mut result = Ok(());
        while removed + 1 < files.segs.len() && files.segs[removed + 1].first <= lsn {
            let s = &files.segs[removed];
            if let Err(e) = self.io.remove(&s.path) {
                result = Err(Error::io("remove", &s.path, e));
                break;
            }
            freed += s.len;
            removed += 1;
        }
        files.segs.drain(..removed);
        drop(files);
        if removed > 0 {
            self.sync_dir()?;
            tracing::debug!(segments = removed, freed, before = lsn, "WAL truncated");
        }
        result.map(|()| freed)
    }

    /// Number of segment files, the active one included.
    pub fn segment_count(&self) -> usize {
        self.files.lock().segs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        assert_eq!(segment_name(12), "00000000000000000012.wal");
        assert_eq!(parse_lsn_name("00000000000000000012.wal", ".wal"), Some(12));
        assert_eq!(parse_lsn_name("0000000000000000012.wal", ".wal"), None);
        assert_eq!(parse_lsn_name("0000000000000000001x.wal", ".wal"), None);
        assert_eq!(parse_lsn_name("99999999999999999999.wal", ".wal"), None);
    }
}
