//! The I/O seam: every file-system operation of the WAL goes through [`Io`].
//!
//! [`StdIo`] is the real file system. `FaultyIo` (feature `fault-injection`) is an in-memory
//! file system that can lose or garble unsynced bytes at a simulated crash, fail an fsync,
//! write short and run out of space.
//!
//! [`StdIo`] makes every directory `0700` and every file `0600` (see [`crate::fs`]).

use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use crate::fs::Exposure;

#[cfg(any(test, feature = "fault-injection"))]
mod faulty;
#[cfg(any(test, feature = "fault-injection"))]
pub use faulty::{CrashMode, FaultyIo};

/// An open file, written sequentially from its current end.
///
/// Methods take `&self` so one thread can fsync while another writes (pipelined group commit).
pub trait IoFile: Send + Sync + Debug {
    /// Writes some prefix of `buf` at the end of the file and returns how many bytes it wrote
    /// (possibly fewer than `buf.len()`: callers loop).
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes; later writes go to the new end.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// The file-system operations the WAL needs. Paths are absolute or relative to the process.
pub trait Io: Send + Sync + Debug {
    /// Creates `dir` and its parents if missing, accessible to the owner only.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether users other than the owner can get into the existing directory `dir`
    /// ([`crate::fs::check_private_dir`]). The default says no: a file system without
    /// permission bits has nothing to report.
    fn dir_exposure(&self, dir: &Path) -> io::Result<Option<Exposure>> {
        let _ = dir;
        Ok(None)
    }
    /// File names (not paths) of the regular files directly inside `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates `path` (truncating it if it exists), readable by the owner only, and opens it
    /// for writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Writes all of `buf`, looping over short writes.
pub(crate) fn write_all(file: &dyn IoFile, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write(buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
            Ok(n) => buf = &buf[n.min(buf.len())..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The real file system (`std::fs`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo;

#[derive(Debug)]
struct StdFile(File);

impl IoFile for StdFile {
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.0).write(buf)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Io for StdIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        crate::fs::create_dir_all_private(dir)
    }
    fn dir_exposure(&self, dir: &Path) -> io::Result<Option<Exposure>> {
        crate::fs::check_private_dir(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    out.push(name.to_owned());
                }
            }
        }
        Ok(out)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(StdFile(crate::fs::create_private(path)?)))
    }
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let f = fs::OpenOptions::new().append(true).open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
