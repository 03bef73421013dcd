//! The file operations of [`super::FaultyIo`]: handles on the simulated disk, and the
//! [`Io`] calls the WAL makes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::disk::{Fs, EIO, ENOSPC};
use super::FaultyIo;
use crate::io::{Io, IoFile};

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
