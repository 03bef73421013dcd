//! Checkpoint files in the log directory: finding the newest valid one (at open and in
//! [`Wal::load_checkpoint`]) and installing a new one atomically. Their format is in
//! [`crate::checkpoint`].

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Checkpoint};
use crate::io::{self, Io};
use crate::{Error, Lsn, Result, Wal};

/// The checkpoint files among `names`, newest first.
pub(crate) fn newest_first(names: &[String]) -> Vec<(Lsn, &String)> {
    let mut ckpts: Vec<(Lsn, &String)> = names
        .iter()
        .filter_map(|n| checkpoint::parse_file_name(n).map(|l| (l, n)))
        .collect();
    ckpts.sort_unstable_by(|a, b| b.cmp(a));
    ckpts
}

/// A checkpoint file read back.
pub(crate) struct Read {
    pub(crate) path: PathBuf,
    /// Its size in bytes.
    pub(crate) bytes: u64,
    /// Its contents, when valid and for the LSN its name says (otherwise warned about).
    pub(crate) valid: Option<Checkpoint>,
}

/// Reads and checks the checkpoint file `name` (for `lsn`, by its name) in `dir`.
pub(crate) fn read(io: &dyn Io, dir: &Path, lsn: Lsn, name: &str) -> Result<Read> {
    let path = dir.join(name);
    let data = io.read(&path).map_err(|e| Error::io("read", &path, e))?;
    let valid = match checkpoint::decode(&data) {
        Ok(c) if c.lsn == lsn => Some(c),
        Ok(c) => {
            tracing::warn!(path = %path.display(), lsn = c.lsn,
                "checkpoint LSN does not match its name; ignored");
            None
        }
        Err(reason) => {
            tracing::warn!(path = %path.display(), reason, "invalid checkpoint ignored");
            None
        }
    };
    Ok(Read {
        path,
        bytes: data.len() as u64,
        valid,
    })
}

impl Wal {
    /// Stores `data` as the checkpoint for `lsn` atomically (temp file, fsync, rename,
    /// directory fsync), then removes older checkpoints. A crash at any point leaves the
    /// previous checkpoint or the new one loadable.
    pub fn write_checkpoint(&self, lsn: Lsn, data: &[u8]) -> Result<()> {
        let last = self.last_lsn();
        if lsn > last {
            return Err(Error::CheckpointAhead { lsn, last });
        }
        self.install_checkpoint(lsn, &checkpoint::encode(lsn, data))
    }

    /// Writes the checkpoint file `bytes` (already encoded) for `lsn`: temp file, fsync,
    /// rename, directory fsync; then removes older checkpoints. A failed fsync poisons.
    pub(crate) fn install_checkpoint(&self, lsn: Lsn, bytes: &[u8]) -> Result<()> {
        let _guard = self.ckpt_lock.lock();
        let newest = self.files.lock().ckpts.iter().map(|c| c.0).max();
        if let Some(newest) = newest.filter(|n| *n > lsn) {
            return Err(Error::CheckpointBehind { lsn, newest });
        }
        let name = checkpoint::file_name(lsn);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(&name);
        io::put_file(self.io.as_ref(), &tmp, &path, &[bytes], |e| {
            self.watermarks.poison("fsync", tmp.clone(), e, (0, 0));
        })?;
        self.sync_dir()?;
        let mut files = self.files.lock();
        let mut stale = Vec::new();
        files.ckpts.retain(|c| {
            if c.0 < lsn {
                stale.push(c.1.clone());
            }
            c.0 > lsn
        });
        files.ckpts.push((lsn, path, bytes.len() as u64));
        drop(files);
        if !stale.is_empty() {
            for p in &stale {
                self.io.remove(p).map_err(|e| Error::io("remove", p, e))?;
            }
            self.sync_dir()?;
        }
        tracing::debug!(lsn, bytes = bytes.len(), "WAL checkpoint written");
        Ok(())
    }

    /// The newest valid checkpoint. A newer file that is half-written or corrupt is skipped
    /// (and reported with `tracing::warn`).
    pub fn load_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let names = self
            .io
            .list(&self.dir)
            .map_err(|e| Error::io("list", &self.dir, e))?;
        for (lsn, name) in newest_first(&names) {
            if let Some(c) = read(self.io.as_ref(), &self.dir, lsn, name)?.valid {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}
