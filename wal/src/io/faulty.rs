//! An in-memory, fault-injecting file system for crash tests.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Io, IoFile};

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

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
}

/// In-memory file system implementing [`Io`], with fault injection.
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

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Set when `data` stopped being `durable` plus appended bytes (truncated or recreated):
    /// the next fsync copies it whole instead of just the new tail.
    reshaped: bool,
}

#[derive(Debug, Default)]
struct Fs {
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    generation: u64,
    fail_sync_in: Option<u64>,
    short_writes: bool,
    space_left: Option<u64>,
    syncs: u64,
    failed_syncs: u64,
    sync_latency: Option<std::time::Duration>,
    rng: u64,
}

impl Fs {
    fn rand(&mut self) -> u64 {
        // xorshift64*: deterministic per seed, good enough for picking crash points.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn rand_upto(&mut self, max: usize) -> usize {
        if max == 0 {
            0
        } else {
            (self.rand() % (max as u64 + 1)) as usize
        }
    }

    /// Consumes one fsync slot; `Err` if this one is scheduled to fail.
    fn take_sync(&mut self) -> io::Result<()> {
        self.syncs += 1;
        match self.fail_sync_in {
            Some(0) => {
                self.fail_sync_in = None;
                self.failed_syncs += 1;
                Err(io::Error::from_raw_os_error(EIO))
            }
            Some(n) => {
                self.fail_sync_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn ino(&self, path: &Path) -> io::Result<u64> {
        self.names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display())))
    }

    fn new_inode(&mut self) -> u64 {
        self.next_ino += 1;
        self.inodes.insert(self.next_ino, Inode::default());
        self.next_ino
    }
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
        let mut fs = self.fs.lock();
        fs.generation += 1;
        fs.names = fs.durable_names.clone();
        let live: Vec<u64> = fs.names.values().copied().collect();
        fs.inodes.retain(|ino, _| live.contains(ino));
        let mut inos: Vec<u64> = fs.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(inode) = fs.inodes.remove(&ino) else {
                continue;
            };
            let Inode {
                data, mut durable, ..
            } = inode;
            if data.len() > durable.len() && data.starts_with(&durable) {
                let tail = &data[durable.len()..];
                let keep = match mode {
                    CrashMode::LoseUnsynced => 0,
                    _ => fs.rand_upto(tail.len()),
                };
                durable.extend_from_slice(&tail[..keep]);
                match mode {
                    CrashMode::GarbleTail if keep > 0 => {
                        let n = (1 + fs.rand_upto(15)).min(keep);
                        let len = durable.len();
                        for b in &mut durable[len - n..] {
                            *b = fs.rand() as u8;
                        }
                    }
                    CrashMode::ZeroFillTail => {
                        durable.resize(durable.len() + (tail.len() - keep), 0);
                    }
                    _ => {}
                }
            }
            let data = durable.clone();
            fs.inodes.insert(
                ino,
                Inode {
                    data,
                    durable,
                    reshaped: false,
                },
            );
        }
    }

    /// The next `n` fsyncs (of files or directories) succeed and the one after fails with EIO.
    /// The failed fsync leaves that file's unsynced bytes unsynced.
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
            inode.reshaped = false;
        }
    }
}

#[derive(Debug)]
struct MemFile {
    fs: Arc<Mutex<Fs>>,
    ino: u64,
    generation: u64,
}

impl MemFile {
    fn check(&self, fs: &Fs) -> io::Result<()> {
        if fs.generation == self.generation {
            Ok(())
        } else {
            // A handle from before a simulated crash: the process that held it is "dead".
            Err(io::Error::from_raw_os_error(EIO))
        }
    }
}

impl IoFile for MemFile {
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut fs = self.fs.lock();
        self.check(&fs)?;
        let mut n = buf.len();
        if fs.short_writes && n > 1 {
            n /= 2;
        }
        let mut full = false;
        if let Some(left) = fs.space_left {
            if (n as u64) > left {
                n = left as usize;
                full = true;
            }
            fs.space_left = Some(left - n as u64);
        }
        if n == 0 && full {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        let inode = fs
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::from_raw_os_error(EIO))?;
        inode.data.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut fs = self.fs.lock();
        self.check(&fs)?;
        fs.take_sync()?;
        // What the fsync covers: the data as of its start. Usually only the appended tail
        // needs copying (fsyncs stay O(new bytes)).
        let snapshot = fs.inodes.get(&self.ino).map(|i| {
            if i.reshaped || i.durable.len() > i.data.len() {
                (i.data.len(), Some(i.data.clone()))
            } else {
                (i.data.len(), None)
            }
        });
        if let Some(latency) = fs.sync_latency {
            drop(fs);
            std::thread::sleep(latency);
            fs = self.fs.lock();
            self.check(&fs)?;
        }
        let inode = fs
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::from_raw_os_error(EIO))?;
        match snapshot {
            Some((_, Some(whole))) => {
                inode.durable = whole;
                inode.reshaped = false;
            }
            Some((len, None)) if !inode.reshaped && len <= inode.data.len() => {
                let from = inode.durable.len();
                if from < len {
                    inode.durable.extend_from_slice(&inode.data[from..len]);
                }
            }
            // Reshaped during the fsync: the fsync covered the old bytes only partly; keep
            // the previous durable state (conservative).
            _ => {}
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut fs = self.fs.lock();
        self.check(&fs)?;
        let inode = fs
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::from_raw_os_error(EIO))?;
        inode.data.resize(len as usize, 0);
        inode.reshaped = true;
        Ok(())
    }
}

impl Io for FaultyIo {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories exist implicitly; a path's parent is its directory.
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let fs = self.fs.lock();
        Ok(fs
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let fs = self.fs.lock();
        let ino = fs.ino(path)?;
        Ok(fs
            .inodes
            .get(&ino)
            .map(|i| i.data.clone())
            .unwrap_or_default())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let mut fs = self.fs.lock();
        let ino = match fs.names.get(path) {
            Some(ino) => {
                let ino = *ino;
                if let Some(inode) = fs.inodes.get_mut(&ino) {
                    inode.data.clear();
                    inode.reshaped = true;
                }
                ino
            }
            None => {
                let ino = fs.new_inode();
                fs.names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        Ok(Arc::new(MemFile {
            fs: self.fs.clone(),
            ino,
            generation: fs.generation,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let fs = self.fs.lock();
        let ino = fs.ino(path)?;
        Ok(Arc::new(MemFile {
            fs: self.fs.clone(),
            ino,
            generation: fs.generation,
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        fs.ino(path)?;
        fs.names.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        let ino = fs.ino(from)?;
        fs.names.remove(from);
        fs.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        fs.take_sync()?;
        fs.durable_names.retain(|p, _| p.parent() != Some(dir));
        let entries: Vec<(PathBuf, u64)> = fs
            .names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        fs.durable_names.extend(entries);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::io::write_all;

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
