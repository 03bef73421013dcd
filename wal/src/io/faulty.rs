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
    /// Each 4 KiB page (by file offset) of the unsynced bytes independently reaches the disk
    /// or not: a page that does not keeps its old content (zeros past the old end). Either the
    /// file size reached the disk or it ends after the last page that did. Pages of one file
    /// written back in any order, as after a power cut.
    TornPages,
}

/// Page size of [`CrashMode::TornPages`].
pub const PAGE: usize = 4096;

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
    /// The byte range changed since the last fsync (`None`: nothing to write back). A failed
    /// fsync clears it too: like Linux, the dirty pages are dropped and the next fsync
    /// reports success without writing them.
    dirty_from: Option<(usize, usize)>,
}

impl Inode {
    fn dirty(&mut self, from: usize, to: usize) {
        self.dirty_from = Some(
            self.dirty_from
                .map_or((from, to), |(f, t)| (f.min(from), t.max(to))),
        );
    }

    /// Writes `buf` at `at` (zeros fill any gap past the end).
    fn put(&mut self, at: usize, buf: &[u8]) {
        let end = at + buf.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[at..end].copy_from_slice(buf);
        self.dirty(at, end);
    }
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
    /// Files do not support [`IoFile::zero_extend`] (segments are not preallocated).
    no_zero_extend: bool,
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

    /// What the disk holds after a crash: `durable` plus whatever part of the unsynced bytes
    /// of `data` (those that differ from `durable`, from the first difference on) `mode` keeps.
    fn after_crash(&mut self, data: Vec<u8>, durable: Vec<u8>, mode: CrashMode) -> Vec<u8> {
        let from = data
            .iter()
            .zip(&durable)
            .position(|(a, b)| a != b)
            .unwrap_or(data.len().min(durable.len()));
        if from >= data.len() {
            // Nothing new (a truncation that was not synced is lost too).
            return durable;
        }
        let mut out = durable;
        let tail = &data[from..];
        let overlay = |out: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            if out.len() < at + bytes.len() {
                out.resize(at + bytes.len(), 0);
            }
            out[at..at + bytes.len()].copy_from_slice(bytes);
        };
        match mode {
            CrashMode::LoseUnsynced => {}
            CrashMode::KeepPrefix | CrashMode::GarbleTail | CrashMode::ZeroFillTail => {
                let keep = self.rand_upto(tail.len());
                overlay(&mut out, from, &tail[..keep]);
                if mode == CrashMode::GarbleTail && keep > 0 {
                    let n = (1 + self.rand_upto(15)).min(keep);
                    for b in &mut out[from + keep - n..from + keep] {
                        *b = self.rand() as u8;
                    }
                }
                if mode == CrashMode::ZeroFillTail && out.len() < data.len() {
                    out.resize(data.len(), 0);
                }
            }
            CrashMode::TornPages => {
                let mut at = from;
                while at < data.len() {
                    let end = ((at / PAGE + 1) * PAGE).min(data.len());
                    if self.rand() & 1 == 1 {
                        overlay(&mut out, at, &data[at..end]);
                    }
                    at = end;
                }
                if self.rand() & 1 == 1 && out.len() < data.len() {
                    out.resize(data.len(), 0);
                }
            }
        }
        out
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
            let durable = fs.after_crash(inode.data, inode.durable, mode);
            fs.inodes.insert(
                ino,
                Inode {
                    data: durable.clone(),
                    durable,
                    dirty_from: None,
                },
            );
        }
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

    /// Whether files support [`IoFile::zero_extend`] (default `true`, so crash tests cover
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

#[derive(Debug)]
struct MemFile {
    fs: Arc<Mutex<Fs>>,
    ino: u64,
    generation: u64,
    /// Where the next write goes: the end of the data, which zero-extension runs ahead of.
    pos: Mutex<u64>,
}

impl MemFile {
    fn handle(fs: &FaultyIo, ino: u64, generation: u64, pos: u64) -> Arc<dyn IoFile> {
        Arc::new(MemFile {
            fs: fs.fs.clone(),
            ino,
            generation,
            pos: Mutex::new(pos),
        })
    }

    fn check(&self, fs: &Fs) -> io::Result<()> {
        if fs.generation == self.generation {
            Ok(())
        } else {
            // A handle from before a simulated crash: the process that held it is "dead".
            Err(io::Error::from_raw_os_error(EIO))
        }
    }

    /// Writes some prefix of `buf` at `at`; only bytes past the file's end use up space.
    fn write_into(&self, fs: &mut Fs, buf: &[u8], at: u64) -> io::Result<usize> {
        self.check(fs)?;
        let mut n = buf.len();
        if fs.short_writes && n > 1 {
            n /= 2;
        }
        let len = fs.inodes.get(&self.ino).map_or(0, |i| i.data.len() as u64);
        let mut full = false;
        if let Some(left) = fs.space_left {
            let grow = |n: usize| (at + n as u64).saturating_sub(len);
            if grow(n) > left {
                n = n.saturating_sub((grow(n) - left) as usize);
                full = true;
            }
            fs.space_left = Some(left.saturating_sub(grow(n)));
        }
        if n == 0 && full {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        let inode = fs
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::from_raw_os_error(EIO))?;
        inode.put(at as usize, &buf[..n]);
        Ok(n)
    }
}

impl IoFile for MemFile {
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut fs = self.fs.lock();
        let mut pos = self.pos.lock();
        let n = self.write_into(&mut fs, buf, *pos)?;
        *pos += n as u64;
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut fs = self.fs.lock();
        let mut at = offset;
        let mut rest = buf;
        while !rest.is_empty() {
            let n = self.write_into(&mut fs, rest, at)?;
            at += n as u64;
            rest = &rest[n..];
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut fs = self.fs.lock();
        self.check(&fs)?;
        if let Err(e) = fs.take_sync() {
            // Linux: the dirty pages are marked clean without reaching the disk.
            if let Some(i) = fs.inodes.get_mut(&self.ino) {
                i.dirty_from = None;
            }
            return Err(e);
        }
        // What the fsync covers: the bytes changed before it started (O(changed bytes)).
        let snapshot = fs.inodes.get_mut(&self.ino).map(|i| {
            let len = i.data.len();
            let (from, to) = i.dirty_from.take().unwrap_or((len, len));
            let (from, to) = (from.min(len), to.min(len));
            (from, i.data[from..to.max(from)].to_vec(), len)
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
        if let Some((from, bytes, len)) = snapshot {
            // Bytes outside the dirty range that differ were dropped by a failed fsync: the
            // disk keeps its own (zeros past its old end).
            let d = &mut inode.durable;
            d.resize(len, 0);
            d[from..from + bytes.len()].copy_from_slice(&bytes);
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
        let old = inode.data.len();
        inode.data.resize(len as usize, 0);
        inode.dirty(old.min(len as usize), len as usize);
        *self.pos.lock() = len;
        Ok(())
    }

    fn zero_extend(&self, len: u64) -> io::Result<bool> {
        let mut fs = self.fs.lock();
        let cur = fs.inodes.get(&self.ino).map_or(0, |i| i.data.len() as u64);
        let mut at = cur.max(*self.pos.lock());
        while at < len {
            let n = (len - at).min(64 << 10) as usize;
            let w = self.write_into(&mut fs, &vec![0u8; n], at)?;
            at += w as u64;
        }
        Ok(true)
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
                    inode.dirty(0, 0);
                }
                ino
            }
            None => {
                let ino = fs.new_inode();
                fs.names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        Ok(MemFile::handle(self, ino, fs.generation, 0))
    }

    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let fs = self.fs.lock();
        let ino = fs.ino(path)?;
        let len = fs.inodes.get(&ino).map_or(0, |i| i.data.len() as u64);
        Ok(MemFile::handle(self, ino, fs.generation, len))
    }

    fn zero_extends(&self) -> bool {
        !self.fs.lock().no_zero_extend
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
