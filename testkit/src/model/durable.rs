//! What reaches the disk: fsync of a file or a directory, a clean sync, and the power cut
//! that keeps only that (or, torn, a random part of the rest).

use std::collections::BTreeMap;

use crate::{Cut, CutReport, CutStats, FileCut};

use super::{DirOp, Kind, Model, Node, Res, PAGE, ROOT};

impl Model {
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
}
