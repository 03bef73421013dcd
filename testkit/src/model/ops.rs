//! What programs see: directory entries and file bytes. Every change here is visible at
//! once and durable only after its fsync.

use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::{Errno, FileType};

use super::{pages, DirOp, Kind, Model, Res, ROOT};

impl Model {
    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Res<u64> {
        let d = self.dir(parent)?;
        if name == "." {
            return Ok(parent);
        }
        if name == ".." {
            return Ok(d.parent);
        }
        d.entries.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// Records a directory operation and applies it to the visible entries.
    fn dir_op(&mut self, changes: Vec<(u64, OsString, Option<u64>)>) -> Res<()> {
        for (dir, name, to) in &changes {
            let d = self.dir_mut(*dir)?;
            match to {
                Some(ino) => d.entries.insert(name.clone(), *ino),
                None => d.entries.remove(name),
            };
            self.node_mut(*dir)?.touch();
        }
        self.log.push(DirOp { changes });
        Ok(())
    }

    /// Creates `name` in `parent` (a file, or with `dir` a directory).
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u16,
        uid: u32,
        gid: u32,
        dir: bool,
    ) -> Res<u64> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = if dir {
            Model::new_dir(mode, uid, gid, parent)
        } else {
            Model::new_file(mode, uid, gid, Vec::new())
        };
        self.nodes.insert(ino, node);
        self.dir_op(vec![(parent, name.to_owned(), Some(ino))])?;
        Ok(ino)
    }

    /// Removes `name` from `parent`: a file (`dir` false) or an empty directory.
    pub(crate) fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        match (&self.node(ino)?.kind, dir) {
            (Kind::Dir(_), false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            (Kind::Dir(d), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        self.node_mut(ino)?.ctime = SystemTime::now();
        self.dir_op(vec![(parent, name.to_owned(), None)])
    }

    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        let is_dir = matches!(self.node(ino)?.kind, Kind::Dir(_));
        if let Some(&old) = self.dir(newparent)?.entries.get(newname) {
            if old == ino {
                return Ok(());
            }
            if noreplace {
                return Err(Errno::EEXIST);
            }
            match (&self.node(old)?.kind, is_dir) {
                (Kind::Dir(_), false) => return Err(Errno::EISDIR),
                (Kind::File(_), true) => return Err(Errno::ENOTDIR),
                (Kind::Dir(d), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        if is_dir {
            // Not into itself or below it.
            let mut up = newparent;
            while up != ROOT {
                if up == ino {
                    return Err(Errno::EINVAL);
                }
                up = self.dir(up)?.parent;
            }
            self.dir_mut(ino)?.parent = newparent;
        }
        self.dir_op(vec![
            (parent, name.to_owned(), None),
            (newparent, newname.to_owned(), Some(ino)),
        ])
    }

    pub(crate) fn readdir(&self, ino: u64) -> Res<Vec<(u64, FileType, OsString)>> {
        let d = self.dir(ino)?;
        let mut out = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (d.parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, &child) in &d.entries {
            out.push((child, self.node(child)?.file_type(), name.clone()));
        }
        Ok(out)
    }

    pub(crate) fn read(&self, ino: u64, offset: u64, size: u32) -> Res<&[u8]> {
        let f = self.file(ino)?;
        let len = f.data.len() as u64;
        let from = offset.min(len) as usize;
        let to = offset.saturating_add(u64::from(size)).min(len) as usize;
        Ok(&f.data[from..to])
    }

    pub(crate) fn write(&mut self, ino: u64, offset: u64, buf: &[u8]) -> Res<u32> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= 1 << 40)
            .ok_or(Errno::EFBIG)?;
        let f = self.file_mut(ino)?;
        let old = f.data.len() as u64;
        if end > old {
            f.data.resize(end as usize, 0);
            // A hole before `offset` reads as zeros it did not hold durably.
            f.dirty.extend(pages(old, offset));
        }
        f.data[offset as usize..end as usize].copy_from_slice(buf);
        f.dirty.extend(pages(offset, end));
        self.node_mut(ino)?.touch();
        Ok(buf.len() as u32)
    }

    pub(crate) fn set_len(&mut self, ino: u64, len: u64) -> Res<()> {
        if len > 1 << 40 {
            return Err(Errno::EFBIG);
        }
        let f = self.file_mut(ino)?;
        let old = f.data.len() as u64;
        f.data.resize(len as usize, 0);
        f.dirty.extend(pages(old.min(len), old.max(len)));
        self.node_mut(ino)?.touch();
        Ok(())
    }

    pub(crate) fn set_mode(&mut self, ino: u64, mode: u16) -> Res<()> {
        let n = self.node_mut(ino)?;
        n.mode = mode & 0o7777;
        n.ctime = SystemTime::now();
        Ok(())
    }
}
