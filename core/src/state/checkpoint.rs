//! Checkpoints: the dirty state as a snapshot, a state rebuilt from one,
//! and the oldest LSN the WAL must keep.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;

use crate::entry::Node;
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::snapshot::{Snapshot, SnapshotCut, SnapshotEntry};
use crate::types::{Cut, FlushItem, Key, Lsn};

use super::{AllGuard, State};

impl AllGuard<'_> {
    /// The whole dirty state at `position` (the last LSN assigned), for a
    /// checkpoint.
    pub fn snapshot(&self, position: Lsn) -> Snapshot {
        let mut entries: Vec<SnapshotEntry> = self
            .guards
            .iter()
            .flat_map(|g| g.table.iter().map(|n| n.snapshot()))
            .collect();
        entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let cut = self.state.cut.lock().as_ref().map(|c| SnapshotCut {
            position: c.position,
            items: c
                .items
                .iter()
                .map(|i| (i.key.clone(), i.expected))
                .collect(),
        });
        Snapshot {
            position,
            entries,
            cut,
        }
    }
}

impl State {
    /// Rebuilds a state from a checkpoint. The clean cache starts empty; a
    /// cut in flight in the snapshot is in flight again (complete or abort
    /// it once its commit is known).
    pub fn restore(limits: Limits, snap: Snapshot) -> Result<Self> {
        let state = Self::new(limits);
        let position = snap.position;
        let invalid = |key: Option<&Key>, reason| Error::InvalidSnapshot {
            position,
            key: key.cloned(),
            reason,
        };
        let mut in_flight_nodes = 0usize;
        for e in snap.entries {
            if e.pending.is_none() && e.in_flight.is_none() {
                return Err(invalid(
                    Some(&e.key),
                    "entry has neither a pending nor an in-flight change",
                ));
            }
            if e.in_flight.is_some() && snap.cut.is_none() {
                return Err(invalid(
                    Some(&e.key),
                    "in-flight change without a cut in flight",
                ));
            }
            let hash = state.hash(&e.key);
            let mut inner = state.shards[state.shard_of(hash)].inner.write();
            if inner.find(hash, &e.key).is_some() {
                return Err(invalid(Some(&e.key), "duplicate key"));
            }
            in_flight_nodes += usize::from(e.in_flight.is_some());
            let key = e.key.clone();
            let node = Box::new(Node::from_snapshot(e).ok_or_else(|| {
                invalid(
                    Some(&key),
                    "entry has neither a pending nor an in-flight change",
                )
            })?);
            state.dirty_entries.fetch_add(1, Ordering::Relaxed);
            state.dirty_bytes.fetch_add(node.bytes(), Ordering::Relaxed);
            let hasher = &state.hasher;
            inner
                .table
                .insert_unique(hash, node, |n| hasher.hash_one(&*n.key));
        }
        if let Some(SnapshotCut {
            position: at,
            items,
        }) = snap.cut
        {
            if items.len() != in_flight_nodes {
                return Err(invalid(None, "cut items and in-flight entries differ"));
            }
            let mut seen = HashSet::with_capacity(items.len());
            let mut flush = Vec::with_capacity(items.len());
            for (key, expected) in items {
                let hash = state.hash(&key);
                let inner = state.shards[state.shard_of(hash)].inner.read();
                let change = match inner.find(hash, &key).and_then(|n| n.in_flight()) {
                    Some(f) => f.change.clone(),
                    None => return Err(invalid(Some(&key), "cut item without an in-flight entry")),
                };
                drop(inner);
                if !seen.insert(key.clone()) {
                    return Err(invalid(Some(&key), "key twice in the cut"));
                }
                flush.push(FlushItem {
                    key,
                    change,
                    expected,
                });
            }
            state.in_flight_items.store(flush.len(), Ordering::Relaxed);
            *state.cut.lock() = Some(Cut {
                position: at,
                items: flush,
            });
            state.cut_active.store(true, Ordering::Release);
        }
        Ok(state)
    }

    /// The oldest LSN still needed by a dirty entry (pending or in flight):
    /// the WAL below it, and below the last checkpoint, may be cut. Scans
    /// every shard one at a time; the answer is never newer than the truth.
    pub fn oldest_dirty_lsn(&self) -> Option<Lsn> {
        self.shards
            .iter()
            .filter_map(|s| s.inner.read().table.iter().map(|n| n.oldest_lsn()).min())
            .min()
    }
}
