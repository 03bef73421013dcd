//! The I/O seam: every file-system operation of the WAL goes through [`Io`].
//!
//! [`StdIo`] is the real file system. `FaultyIo` (feature `fault-injection`) is an in-memory
//! file system that can lose or garble unsynced bytes at a simulated crash, fail an fsync,
//! write short and run out of space.
//!
//! [`StdIo`] makes every directory `0700` and every file `0600` (see [`crate::fs`]).

use std::fmt::Debug;
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Writes zeros from the file's current size up to `len` bytes without moving where the
    /// next [`write`](Self::write) goes, so later writes overwrite allocated blocks and their
    /// fdatasync has no file-size or allocation change to commit. `Ok(false)` when the file
    /// cannot do this (the default); the caller then just appends.
    fn zero_extend(&self, _len: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// Writes all of `buf` at `offset`, without moving where the next
    /// [`write`](Self::write) goes (the sync watermark file is rewritten in place this way).
    /// The default says `Unsupported`; the log then keeps no watermark (see
    /// [`crate::sync_watermark`]).
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "positional writes are not supported",
        ))
    }
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
    /// Whether files from [`create`](Self::create) and [`open_append`](Self::open_append)
    /// support [`IoFile::zero_extend`]. Segments get [`crate::FLAG_PREALLOCATED`] only then.
    fn zero_extends(&self) -> bool {
        false
    }
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

/// Writes `parts` to `tmp`, fsyncs it and renames it to `path` (the caller fsyncs the
/// directory). On a failed fsync `on_sync_fail` runs first (the temp file is abandoned and
/// removed: an fsync is never retried).
pub(crate) fn put_file(
    io: &dyn Io,
    tmp: &Path,
    path: &Path,
    parts: &[&[u8]],
    on_sync_fail: impl FnOnce(&io::Error),
) -> crate::Result<()> {
    use crate::Error;
    let written = (|| {
        let f = io.create(tmp).map_err(|e| Error::io("create", tmp, e))?;
        for p in parts {
            write_all(f.as_ref(), p).map_err(|e| Error::io("write", tmp, e))?;
        }
        f.sync_data().map_err(|e| {
            on_sync_fail(&e);
            Error::io("fsync", tmp, e)
        })
    })();
    if let Err(e) = written {
        let _ = io.remove(tmp);
        return Err(e);
    }
    io.rename(tmp, path)
        .map_err(|e| Error::io("rename", tmp, e))
}

/// The real file system (`std::fs`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo;

/// Positional writes (`pwrite`): the end of the data is `pos`, not the file size, which
/// [`IoFile::zero_extend`] runs ahead of it.
#[derive(Debug)]
struct StdFile {
    file: File,
    /// Where the next write goes. Only the commit-lock holder writes; the atomic is for `&self`.
    pos: AtomicU64,
    /// The file size once zero-extended past `pos`.
    zeroed: AtomicU64,
}

impl StdFile {
    fn new(file: File) -> io::Result<StdFile> {
        let len = file.metadata()?.len();
        Ok(StdFile {
            file,
            pos: AtomicU64::new(len),
            zeroed: AtomicU64::new(len),
        })
    }
}

#[cfg(unix)]
fn write_at(f: &File, buf: &[u8], at: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(f, buf, at)
}

#[cfg(windows)]
fn write_at(f: &File, buf: &[u8], at: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(f, buf, at)
}

/// Zeros written per call while zero-extending.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl IoFile for StdFile {
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let pos = self.pos.load(Ordering::Acquire);
        let n = write_at(&self.file, buf, pos)?;
        self.pos.store(pos + n as u64, Ordering::Release);
        Ok(n)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.pos.store(len, Ordering::Release);
        self.zeroed.store(len, Ordering::Release);
        Ok(())
    }
    fn write_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match write_at(&self.file, buf, offset) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn zero_extend(&self, len: u64) -> io::Result<bool> {
        let mut at = self
            .zeroed
            .load(Ordering::Acquire)
            .max(self.pos.load(Ordering::Acquire));
        while at < len {
            let n = ZEROS.len().min((len - at) as usize);
            let w = write_at(&self.file, &ZEROS[..n], at)?;
            if w == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
            }
            at += w as u64;
            self.zeroed.store(at, Ordering::Release);
        }
        Ok(true)
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
        Ok(Arc::new(StdFile::new(crate::fs::create_private(path)?)?))
    }
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        // Not O_APPEND: positional writes must land at `pos`, which may be short of the end.
        let f = fs::OpenOptions::new().write(true).open(path)?;
        Ok(Arc::new(StdFile::new(f)?))
    }
    fn zero_extends(&self) -> bool {
        true
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
