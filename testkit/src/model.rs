//! The file system's state, with no FUSE in it: a tree of nodes, each file with
//! its visible bytes and its durable bytes, each directory with its visible and
//! its durable entries, and the log of directory operations not yet made
//! durable. [`crate::fuse`] maps kernel requests onto these methods; a cut is
//! [`Model::cut`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::SystemTime;

use fuser::{Errno, FileType};

use crate::{Cut, CutReport, CutStats, FileCut};

/// The page size of the model: what a torn cut keeps or drops as a unit.
pub const PAGE: u64 = 4096;

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

pub(crate) type Res<T> = std::result::Result<T, Errno>;

/// A file or a directory.
pub(crate) struct Node {
    pub(crate) mode: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
    pub(crate) kind: Kind,
}

pub(crate) enum Kind {
    File(FileNode),
    Dir(DirNode),
}

/// A regular file: what reads see, and what a cut would leave.
#[derive(Default)]
pub(crate) struct FileNode {
    /// The visible content (the "page cache").
    pub(crate) data: Vec<u8>,
    /// The content as of the last fsync (the "disk").
    pub(crate) durable: Vec<u8>,
    /// Pages of `data` changed since the last fsync (writes, zero-fill, truncation).
    pub(crate) dirty: BTreeSet<u64>,
}

/// A directory: its entries as seen, and as of its last fsync.
#[derive(Default)]
pub(crate) struct DirNode {
    pub(crate) parent: u64,
    pub(crate) entries: BTreeMap<OsString, u64>,
    pub(crate) durable: BTreeMap<OsString, u64>,
}

/// One directory operation not yet durable: its entry changes, applied together
/// (a rename is one operation of two changes, as in a journal).
struct DirOp {
    changes: Vec<(u64, OsString, Option<u64>)>,
}

/// The whole file system.
pub(crate) struct Model {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    log: Vec<DirOp>,
    /// Open handles: handle -> inode. A cut empties it, so older handles are stale.
    handles: HashMap<u64, u64>,
    next_fh: u64,
    pub(crate) last_cut: Option<CutReport>,
}

fn pages(from: u64, to: u64) -> std::ops::Range<u64> {
    // Pages overlapping the byte range [from, to).
    if to <= from {
        return 0..0;
    }
    from / PAGE..to.div_ceil(PAGE)
}

impl Node {
    fn new(mode: u16, uid: u32, gid: u32, kind: Kind) -> Node {
        let now = SystemTime::now();
        Node {
            mode,
            uid,
            gid,
            mtime: now,
            ctime: now,
            kind,
        }
    }

    pub(crate) fn file_type(&self) -> FileType {
        match self.kind {
            Kind::File(_) => FileType::RegularFile,
            Kind::Dir(_) => FileType::Directory,
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

impl Model {
    /// An empty file system (the root directory only).
    pub(crate) fn new(root_mode: u16, uid: u32, gid: u32) -> Model {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node::new(
                root_mode,
                uid,
                gid,
                Kind::Dir(DirNode {
                    parent: ROOT,
                    ..DirNode::default()
                }),
            ),
        );
        Model {
            nodes,
            next_ino: ROOT + 1,
            log: Vec::new(),
            handles: HashMap::new(),
            next_fh: 1,
            last_cut: None,
        }
    }

    pub(crate) fn node(&self, ino: u64) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Res<&DirNode> {
        match &self.node(ino)?.kind {
            Kind::Dir(d) => Ok(d),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Res<&mut DirNode> {
        match &mut self.node_mut(ino)?.kind {
            Kind::Dir(d) => Ok(d),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file(&self, ino: u64) -> Res<&FileNode> {
        match &self.node(ino)?.kind {
            Kind::File(f) => Ok(f),
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Res<&mut FileNode> {
        match &mut self.node_mut(ino)?.kind {
            Kind::File(f) => Ok(f),
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    /// Adds a node that is already durable (loading the backing directory).
    pub(crate) fn load_node(&mut self, parent: u64, name: OsString, node: Node) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        if let Ok(d) = self.dir_mut(parent) {
            d.entries.insert(name.clone(), ino);
            d.durable.insert(name, ino);
        }
        ino
    }

    pub(crate) fn new_file(mode: u16, uid: u32, gid: u32, data: Vec<u8>) -> Node {
        Node::new(
            mode,
            uid,
            gid,
            Kind::File(FileNode {
                durable: data.clone(),
                data,
                dirty: BTreeSet::new(),
            }),
        )
    }

    pub(crate) fn new_dir(mode: u16, uid: u32, gid: u32, parent: u64) -> Node {
        Node::new(
            mode,
            uid,
            gid,
            Kind::Dir(DirNode {
                parent,
                ..DirNode::default()
            }),
        )
    }

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

    /// fsync/fdatasync of a file: its data and size become durable.
    pub(crate) fn fsync(&mut self, ino: u64) -> Res<()> {
        let f = match &mut self.node_mut(ino)?.kind {
            Kind::File(f) => f,
            Kind::Dir(_) => return self.fsyncdir(ino),
        };
        f.durable.resize(f.data.len(), 0);
        let len = f.data.len() as u64;
        for &p in &f.dirty {
            let (from, to) = (p * PAGE, ((p + 1) * PAGE).min(len));
            if from < to {
                f.durable[from as usize..to as usize]
                    .copy_from_slice(&f.data[from as usize..to as usize]);
            }
        }
        f.dirty.clear();
        Ok(())
    }

    /// fsync of a directory: every pending operation that touched it becomes
    /// durable (the whole operation: both sides of a rename).
    pub(crate) fn fsyncdir(&mut self, ino: u64) -> Res<()> {
        self.dir(ino)?;
        let (now, later): (Vec<DirOp>, Vec<DirOp>) = std::mem::take(&mut self.log)
            .into_iter()
            .partition(|op| op.changes.iter().any(|(d, _, _)| *d == ino));
        self.log = later;
        for op in now {
            self.apply_durably(op);
        }
        self.gc();
        Ok(())
    }

    fn apply_durably(&mut self, op: DirOp) {
        for (dir, name, to) in op.changes {
            if let Ok(d) = self.dir_mut(dir) {
                match to {
                    Some(ino) => d.durable.insert(name, ino),
                    None => d.durable.remove(&name),
                };
            }
        }
    }

    /// Makes everything durable (a clean unmount, `sync`).
    pub(crate) fn sync_all(&mut self) {
        for op in std::mem::take(&mut self.log) {
            self.apply_durably(op);
        }
        let inos: Vec<u64> = self.nodes.keys().copied().collect();
        for ino in inos {
            let _ = self.fsync(ino);
        }
        self.gc();
    }

    pub(crate) fn open_handle(&mut self, ino: u64) -> Res<u64> {
        self.node(ino)?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, ino);
        Ok(fh)
    }

    /// The inode of an open handle; EIO for a handle a cut made stale.
    pub(crate) fn handle(&self, fh: u64) -> Res<u64> {
        self.handles.get(&fh).copied().ok_or(Errno::EIO)
    }

    pub(crate) fn close_handle(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    pub(crate) fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// Forgets nodes that no name (visible, durable or pending) and no open
    /// handle reaches.
    fn gc(&mut self) {
        let mut keep: HashSet<u64> = self.handles.values().copied().collect();
        keep.insert(ROOT);
        for op in &self.log {
            for (d, _, to) in &op.changes {
                keep.insert(*d);
                keep.extend(to);
            }
        }
        for n in self.nodes.values() {
            if let Kind::Dir(d) = &n.kind {
                keep.extend(d.entries.values());
                keep.extend(d.durable.values());
            }
        }
        self.nodes.retain(|ino, _| keep.contains(ino));
    }

    /// Inode -> path (relative to the root) over the durable entries.
    pub(crate) fn durable_paths(&self) -> BTreeMap<u64, PathBuf> {
        let mut out = BTreeMap::new();
        let mut todo = vec![(ROOT, PathBuf::new())];
        while let Some((ino, path)) = todo.pop() {
            if let Ok(d) = self.dir(ino) {
                for (name, &child) in &d.durable {
                    let p = path.join(name);
                    if out.insert(child, p.clone()).is_none() {
                        todo.push((child, p));
                    }
                }
            }
        }
        out
    }

    /// The power cut: the visible state becomes the durable one (with `Torn`,
    /// after a random part of what was pending reached the disk). Every open
    /// handle becomes stale.
    pub(crate) fn cut(&mut self, how: Cut) -> CutReport {
        let mut rng = match how {
            Cut::Torn { seed } => Some(fastrand::Rng::with_seed(seed)),
            Cut::DropUnsynced => None,
        };
        let mut stats = CutStats::default();
        self.handles.clear();

        // Directory operations: a prefix of the log reached the journal.
        let log = std::mem::take(&mut self.log);
        let keep_ops = rng.as_mut().map_or(0, |r| r.usize(0..=log.len()));
        stats.dir_ops_kept = keep_ops as u64;
        stats.dir_ops_dropped = (log.len() - keep_ops) as u64;
        for op in log.into_iter().take(keep_ops) {
            self.apply_durably(op);
        }

        // File pages: each unsynced page independently reached the disk or not.
        let keep_share = rng.as_mut().map_or(0.0, |r| r.f64());
        let mut kept_by_ino = BTreeMap::new();
        let mut inos: Vec<u64> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(Node {
                kind: Kind::File(f),
                ..
            }) = self.nodes.get_mut(&ino)
            else {
                continue;
            };
            let mut kept = Vec::new();
            let mut dropped = Vec::new();
            for &p in &f.dirty {
                if rng.as_mut().is_some_and(|r| r.f64() < keep_share) {
                    kept.push(p);
                } else {
                    dropped.push(p);
                }
            }
            let (len, durable_len) = (f.data.len() as u64, f.durable.len() as u64);
            let page_bytes = |p: u64| ((p + 1) * PAGE).min(len.max(durable_len)) - p * PAGE;
            stats.pages_kept += kept.len() as u64;
            stats.pages_dropped += dropped.len() as u64;
            stats.bytes_kept += kept.iter().map(|&p| page_bytes(p)).sum::<u64>();
            stats.bytes_dropped += dropped.iter().map(|&p| page_bytes(p)).sum::<u64>();
            let new_len = if len < durable_len {
                // An unsynced truncation: its size change reached the disk or not.
                if rng.as_mut().is_some_and(|r| r.bool()) {
                    len
                } else {
                    durable_len
                }
            } else {
                let reach = kept.iter().map(|&p| (p + 1) * PAGE).max().unwrap_or(0);
                durable_len.max(reach.min(len))
            };
            f.durable.resize(new_len as usize, 0);
            let upto = new_len.min(len);
            for &p in &kept {
                let (from, to) = (p * PAGE, ((p + 1) * PAGE).min(upto));
                if from < to {
                    f.durable[from as usize..to as usize]
                        .copy_from_slice(&f.data[from as usize..to as usize]);
                }
            }
            f.data = f.durable.clone();
            f.dirty.clear();
            if !kept.is_empty() || !dropped.is_empty() {
                kept_by_ino.insert(ino, (kept, dropped, new_len));
            }
        }

        // The visible entries are the durable ones; what they no longer reach is gone.
        for n in self.nodes.values_mut() {
            if let Kind::Dir(d) = &mut n.kind {
                d.entries = d.durable.clone();
            }
        }
        let paths = self.durable_paths();
        // Directory parents follow the durable tree.
        for (&ino, path) in &paths {
            let parent = path
                .parent()
                .and_then(|pp| paths.iter().find(|(_, q)| q.as_path() == pp))
                .map_or(ROOT, |(&i, _)| i);
            if let Ok(d) = self.dir_mut(ino) {
                d.parent = parent;
            }
        }
        let before = self.nodes.len();
        self.nodes
            .retain(|ino, _| *ino == ROOT || paths.contains_key(ino));
        let gone = before - self.nodes.len();
        stats.nodes_vanished = gone as u64;
        let files = kept_by_ino
            .into_iter()
            .filter_map(|(ino, (kept_pages, dropped_pages, len))| {
                Some(FileCut {
                    path: paths.get(&ino)?.clone(),
                    kept_pages,
                    dropped_pages,
                    len,
                })
            })
            .collect();
        let report = CutReport { stats, files };
        self.last_cut = Some(report.clone());
        report
    }

    /// Every node reachable over the durable entries, for saving: (path, node), parents first.
    pub(crate) fn durable_tree(&self) -> Vec<(PathBuf, &Node)> {
        let mut out: Vec<(PathBuf, &Node)> = self
            .durable_paths()
            .into_iter()
            .filter_map(|(ino, p)| Some((p, self.nodes.get(&ino)?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// All inode numbers (to invalidate the kernel's caches after a cut).
    pub(crate) fn inodes(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(m: &mut Model, name: &str) -> u64 {
        m.create(ROOT, OsStr::new(name), 0o600, 0, 0, false)
            .unwrap()
    }

    #[test]
    fn unsynced_writes_are_visible_until_a_cut_drops_them() {
        let mut m = Model::new(0o700, 0, 0);
        let f = file(&mut m, "a");
        m.fsyncdir(ROOT).unwrap();
        m.write(f, 0, b"durable").unwrap();
        m.fsync(f).unwrap();
        m.write(f, 7, b" and not").unwrap();
        assert_eq!(m.read(f, 0, 100).unwrap(), b"durable and not");
        let r = m.cut(Cut::DropUnsynced);
        assert_eq!(m.read(f, 0, 100).unwrap(), b"durable");
        assert_eq!(r.stats.pages_dropped, 1);
    }

    #[test]
    fn a_name_needs_its_directory_fsynced() {
        let mut m = Model::new(0o700, 0, 0);
        let f = file(&mut m, "a");
        m.write(f, 0, b"x").unwrap();
        m.fsync(f).unwrap();
        let r = m.cut(Cut::DropUnsynced);
        assert!(matches!(m.lookup(ROOT, OsStr::new("a")), Err(e) if e == Errno::ENOENT));
        assert_eq!(r.stats.nodes_vanished, 1);
    }

    #[test]
    fn a_shrink_not_synced_is_undone() {
        let mut m = Model::new(0o700, 0, 0);
        let f = file(&mut m, "a");
        m.write(f, 0, &[7; 10_000]).unwrap();
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.set_len(f, 10).unwrap();
        m.cut(Cut::DropUnsynced);
        assert_eq!(m.read(f, 0, 20_000).unwrap(), &[7; 10_000][..]);
    }
}
