//! An in-memory, fault-injecting file system for crash tests: [`FaultyIo`], its faults and
//! what a simulated crash keeps.

mod disk;
mod file;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use disk::Fs;

/// What a simulated crash does to bytes written but not yet fsynced.
///
/// Fsynced bytes and directory entries made durable by a directory fsync always survive;
/// names created, renamed or removed since the last fsync of their directory are rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced byte is lost.
    LoseUnsynced,
    /// A random-length prefix of each file's unsynced bytes survives intact.
    KeepPrefix,
    /// A random-length prefix survives, but its last 1..=16 bytes are replaced by random bytes
    /// (a torn sector).
    GarbleTail,
    /// A random-length prefix survives and the rest of the unsynced length reads as zeros
    /// (the file size reached the disk, the data did not).
    ZeroFillTail,
    /// Each 4 KiB page (by file offset) of the unsynced bytes independently reaches the disk
    /// or not: a page that does not keeps its old content (zeros past the old end). Either the
    /// file size reached the disk or it ends after the last page that did. Pages of one file
    /// written back in any order, as after a power cut.
    TornPages,
}

/// Page size of [`CrashMode::TornPages`].
pub const PAGE: usize = 4096;

/// In-memory file system implementing [`Io`](crate::io::Io), with fault injection.
///
/// Cheap to clone; clones share one file system. Typical crash test: open a `Wal` with
/// `WalBuilder::new(dir).io(Arc::new(fs.clone()))`, append, call [`FaultyIo::crash`], drop the
/// old `Wal` (its file handles now fail with EIO), and open a new `Wal` on the same `fs`.
///
/// Faults (each one-shot or until cleared with [`FaultyIo::clear_faults`]):
/// [`FaultyIo::fail_sync_after`] (EIO on an fsync), [`FaultyIo::set_short_writes`],
/// [`FaultyIo::set_space_limit`] (ENOSPC after N bytes).
#[derive(Clone, Debug)]
pub struct FaultyIo {
    fs: Arc<Mutex<Fs>>,
}

impl Default for FaultyIo {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultyIo {
    /// An empty file system with a fixed random seed.
    pub fn new() -> Self {
        Self::with_seed(0x5EED)
    }

    /// An empty file system whose crash randomness (kept prefix lengths, garbage) derives from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        let fs = Fs {
            rng: seed | 1,
            ..Fs::default()
        };
        FaultyIo {
            fs: Arc::new(Mutex::new(fs)),
        }
    }

    /// Simulates a power loss: unsynced bytes are treated per `mode`, directory changes not
    /// made durable by a directory fsync are rolled back, and every file handle opened before
    /// the crash fails with EIO from now on. Pending faults are kept.
    pub fn crash(&self, mode: CrashMode) {
        self.fs.lock().crash(mode);
    }

    /// The next `n` fsyncs (of files or directories) succeed and the one after fails with EIO.
    /// As on Linux, a failed file fsync drops that file's dirty bytes: they stay readable and
    /// unsynced (a crash may or may not keep them), and the next fsync of the file succeeds
    /// without writing them.
    pub fn fail_sync_after(&self, n: u64) {
        self.fs.lock().fail_sync_in = Some(n);
    }

    /// Makes every write store at most half of its buffer (at least one byte).
    pub fn set_short_writes(&self, on: bool) {
        self.fs.lock().short_writes = on;
    }

    /// After `bytes` more bytes have been written, writes fail with ENOSPC (the write that
    /// crosses the limit stores what fits, then fails). `None` removes the limit.
    pub fn set_space_limit(&self, bytes: Option<u64>) {
        self.fs.lock().space_left = bytes;
    }

    /// Makes every file fsync take this long. An fsync persists what was written before it
    /// started; writes during it stay unsynced (as on a real disk), so races between writers
    /// and fsync become observable. A crash during the fsync makes it fail.
    pub fn set_sync_latency(&self, latency: Option<std::time::Duration>) {
        self.fs.lock().sync_latency = latency;
    }

    /// Whether files support [`IoFile::zero_extend`](crate::io::IoFile::zero_extend) (default `true`, so crash tests cover
    /// preallocated segments; zeros written ahead are unsynced bytes like any other).
    pub fn set_zero_extend(&self, on: bool) {
        self.fs.lock().no_zero_extend = !on;
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        let mut fs = self.fs.lock();
        fs.fail_sync_in = None;
        fs.short_writes = false;
        fs.space_left = None;
    }

    /// Number of fsync calls so far (files and directories, failed ones included).
    pub fn sync_count(&self) -> u64 {
        self.fs.lock().syncs
    }

    /// Number of fsync calls that failed because of [`FaultyIo::fail_sync_after`].
    pub fn failed_sync_count(&self) -> u64 {
        self.fs.lock().failed_syncs
    }

    /// Every file path currently visible, sorted, with its length.
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        let fs = self.fs.lock();
        fs.names
            .iter()
            .map(|(p, ino)| {
                let len = fs.inodes.get(ino).map_or(0, |i| i.data.len() as u64);
                (p.clone(), len)
            })
            .collect()
    }

    /// The current contents of a file (synced or not), or `None` if it does not exist.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.fs.lock();
        let ino = fs.names.get(path)?;
        fs.inodes.get(ino).map(|i| i.data.clone())
    }

    /// Replaces a file's contents (creating it if needed) and makes them and its name durable,
    /// as if corrupted or planted on disk by someone else.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut fs = self.fs.lock();
        let ino = match fs.names.get(path) {
            Some(ino) => *ino,
            None => {
                let ino = fs.new_inode();
                fs.names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        fs.durable_names.insert(path.to_path_buf(), ino);
        if let Some(inode) = fs.inodes.get_mut(&ino) {
            inode.data = bytes.to_vec();
            inode.durable = bytes.to_vec();
            inode.dirty_from = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::disk::EIO;
    use super::*;
    use crate::io::{write_all, Io};
    use std::io;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn crash_keeps_synced_bytes_and_durable_names_only() {
        let fs = FaultyIo::new();
        let f = fs.create(&p("/d/a")).unwrap();
        write_all(f.as_ref(), b"hello").unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        write_all(f.as_ref(), b" world").unwrap();
        let g = fs.create(&p("/d/b")).unwrap();
        write_all(g.as_ref(), b"x").unwrap();
        g.sync_data().unwrap(); // data synced, but its name never was
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(fs.read_file(&p("/d/a")), Some(b"hello".to_vec()));
        assert_eq!(fs.read_file(&p("/d/b")), None);
        assert_eq!(f.write(b"!").unwrap_err().raw_os_error(), Some(EIO));
    }

    #[test]
    fn truncation_is_durable_only_after_fsync() {
        let fs = FaultyIo::new();
        let f = fs.create(&p("/d/a")).unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        write_all(f.as_ref(), b"abcdef").unwrap();
        f.sync_data().unwrap();
        f.set_len(2).unwrap();
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(fs.read_file(&p("/d/a")), Some(b"abcdef".to_vec()));
        let f = fs.open_append(&p("/d/a")).unwrap();
        f.set_len(2).unwrap();
        f.sync_data().unwrap();
        write_all(f.as_ref(), b"Z").unwrap();
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(fs.read_file(&p("/d/a")), Some(b"ab".to_vec()));
    }

    #[test]
    fn torn_crash_modes_only_touch_unsynced_bytes() {
        for seed in 0..50 {
            for mode in [
                CrashMode::KeepPrefix,
                CrashMode::GarbleTail,
                CrashMode::ZeroFillTail,
            ] {
                let fs = FaultyIo::with_seed(seed);
                let f = fs.create(&p("/d/a")).unwrap();
                fs.sync_dir(&p("/d")).unwrap();
                write_all(f.as_ref(), b"synced|").unwrap();
                f.sync_data().unwrap();
                write_all(f.as_ref(), b"unsynced bytes").unwrap();
                fs.crash(mode);
                let got = fs.read_file(&p("/d/a")).unwrap();
                assert!(got.starts_with(b"synced|"), "{mode:?} {seed}: {got:?}");
                assert!(got.len() <= 21, "{mode:?} {seed}: {got:?}");
                if mode == CrashMode::KeepPrefix {
                    assert!(
                        b"synced|unsynced bytes".starts_with(&got),
                        "{seed}: {got:?}"
                    );
                }
                if mode == CrashMode::ZeroFillTail {
                    assert_eq!(got.len(), 21, "{seed}: the size reached the disk");
                }
            }
        }
    }

    #[test]
    fn failed_fsync_leaves_bytes_unsynced_and_counts() {
        let fs = FaultyIo::new();
        let f = fs.create(&p("/d/a")).unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        write_all(f.as_ref(), b"data").unwrap();
        fs.fail_sync_after(0);
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(EIO));
        assert_eq!((fs.sync_count(), fs.failed_sync_count()), (2, 1));
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(fs.read_file(&p("/d/a")), Some(Vec::new()));
    }

    #[test]
    fn space_limit_and_short_writes() {
        let fs = FaultyIo::new();
        let f = fs.create(&p("/d/a")).unwrap();
        fs.set_short_writes(true);
        assert_eq!(f.write(b"abcd").unwrap(), 2);
        fs.set_space_limit(Some(1));
        assert_eq!(f.write(b"xy").unwrap(), 1);
        assert_eq!(
            f.write(b"z").unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        fs.clear_faults();
        write_all(f.as_ref(), b"!!").unwrap();
        assert_eq!(fs.read_file(&p("/d/a")), Some(b"abx!!".to_vec()));
    }
}
