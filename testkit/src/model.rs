//! The file system's state, with no FUSE in it: a tree of nodes, each file with
//! its visible bytes and its durable bytes, each directory with its visible and
//! its durable entries, and the log of directory operations not yet made
//! durable. [`crate::fuse`] maps kernel requests onto these methods; a cut is
//! [`Model::cut`].
//!
//! Here: the tree, its nodes and handles. By job: `ops` (what programs see: names and
//! bytes) and `durable` (what reaches the disk: fsyncs, and what a cut leaves).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::SystemTime;

use fuser::{Errno, FileType};

use crate::CutReport;

mod durable;
mod ops;

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
    use std::ffi::OsStr;

    use super::*;
    use crate::Cut;

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
