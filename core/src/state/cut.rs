//! The flush cut: taken under every shard's lock, then completed with the
//! writer's outcomes or aborted.

use std::sync::atomic::Ordering;

use parking_lot::RwLockWriteGuard;

use crate::entry::{Known, Node};
use crate::error::{Error, Result};
use crate::types::{Cut, FlushItem, ItemOutcome, Key, Lsn, Value};

use super::read::{to_lookup, Lookup};
use super::{ShardInner, State};

/// Cuts of at least this many items land on two threads.
const PARALLEL_LANDING: usize = 8_192;

impl State {
    /// Whether a cut is in flight (one atomic load).
    pub fn has_in_flight(&self) -> bool {
        self.cut_active.load(Ordering::Acquire)
    }

    /// A copy of the cut in flight (for recovery and retries). Clones every
    /// item: use [`has_in_flight`](Self::has_in_flight) to just ask.
    pub fn in_flight(&self) -> Option<Cut> {
        self.cut.lock().clone()
    }

    /// The cut committed: applies per-item outcomes, in `cut.items` order.
    ///
    /// An entry whose in-flight change was written becomes clean unless
    /// newer writes are pending; then its base version/value is updated so
    /// the next cut carries the right `Expected`. Entries that become clean
    /// go to the clean cache when value and version (or "no row") are
    /// known, else any clean copy is dropped. `Written { version: None,
    /// value: None }` (commit known, rows not) is always accepted.
    ///
    /// Locks every shard. Errors (state unchanged, cut still in flight):
    /// no cut in flight, or `outcomes.len()` differs from the cut's items.
    pub fn complete_cut(&self, outcomes: &[ItemOutcome]) -> Result<()> {
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.inner.write()).collect();
        let mut slot = self.cut.lock();
        let cut = match slot.as_ref() {
            None => return Err(Error::NoCutInFlight),
            Some(cut) if cut.items.len() != outcomes.len() => {
                return Err(Error::OutcomeCountMismatch {
                    position: cut.position,
                    items: cut.items.len(),
                    outcomes: outcomes.len(),
                })
            }
            Some(_) => slot.take(),
        };
        let items = cut.as_ref().map_or(&[][..], |c| &c.items[..]);
        // Hashed once: with two threads each must find its own items.
        let hashes: Vec<u64> = items.iter().map(|i| self.hash(&i.key)).collect();
        let mut inners: Vec<&mut ShardInner> = guards.iter_mut().map(|g| &mut **g).collect();
        let half = inners.len() / 2;
        if items.len() >= PARALLEL_LANDING && half > 0 {
            // Every writer waits on these locks: land half the shards on a
            // second thread.
            let (low, high) = inners.split_at_mut(half);
            std::thread::scope(|s| {
                s.spawn(|| self.land(items, &hashes, outcomes, high, half));
                self.land(items, &hashes, outcomes, low, 0);
            });
        } else {
            self.land(items, &hashes, outcomes, &mut inners, 0);
        }
        self.in_flight_items.store(0, Ordering::Relaxed);
        self.cut_active.store(false, Ordering::Release);
        Ok(())
    }

    /// Applies the outcomes of the items (their keys' `hashes` alongside)
    /// whose shards are `inners` (shards `first..first + inners.len()`);
    /// the rest are skipped.
    fn land(
        &self,
        items: &[FlushItem],
        hashes: &[u64],
        outcomes: &[ItemOutcome],
        inners: &mut [&mut ShardInner],
        first: usize,
    ) {
        for ((item, &hash), outcome) in items.iter().zip(hashes).zip(outcomes) {
            let Some(inner) = self
                .shard_of(hash)
                .checked_sub(first)
                .and_then(|i| inners.get_mut(i))
            else {
                continue;
            };
            let Ok(mut entry) = inner.table.find_entry(hash, |n| *n.key == *item.key) else {
                continue;
            };
            let node = entry.get_mut();
            if node.in_flight().is_none() {
                continue;
            }
            let old = node.bytes();
            if node.land(outcome) {
                self.add_bytes(old, node.bytes());
                continue;
            }
            let (node, _) = entry.remove();
            self.dirty_entries.fetch_sub(1, Ordering::Relaxed);
            self.dirty_bytes.fetch_sub(old, Ordering::Relaxed);
            inner.generation += 1;
            let Node { key, known, .. } = *node;
            match known {
                Known::RowInt { version, value } => {
                    self.clean
                        .insert(key, Some((Value::Int(value), version)), None)
                }
                Known::RowBytes(row) => {
                    let (version, bytes) = *row;
                    self.clean
                        .insert(key, Some((Value::Bytes(bytes), version)), None)
                }
                Known::RowInts(row) => {
                    let (version, cols) = *row;
                    self.clean
                        .insert(key, Some((Value::Ints(cols), version)), None)
                }
                Known::Absent => self.clean.insert(key, None, None),
                _ => self.clean.remove(&key),
            }
        }
    }

    /// The cut failed or was not committed: every in-flight change merges
    /// back under the newer pending one. Returns whether a cut was in flight.
    pub fn abort_cut(&self) -> bool {
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.inner.write()).collect();
        let Some(cut) = self.cut.lock().take() else {
            return false;
        };
        for item in &cut.items {
            let hash = self.hash(&item.key);
            let inner = &mut *guards[self.shard_of(hash)];
            let Some(node) = inner.table.find_mut(hash, |n| *n.key == *item.key) else {
                continue;
            };
            if node.in_flight().is_none() {
                continue;
            }
            let old = node.bytes();
            node.unflight();
            self.add_bytes(old, node.bytes());
        }
        self.in_flight_items.store(0, Ordering::Relaxed);
        self.cut_active.store(false, Ordering::Release);
        true
    }
}

/// Moves every pending change of these shards in flight, one item each,
/// in shard order.
fn start_flights(inners: &mut [&mut ShardInner]) -> Vec<FlushItem> {
    let mut items = Vec::with_capacity(inners.iter().map(|i| i.table.len()).sum());
    for inner in inners {
        for node in inner.table.iter_mut() {
            if let Some(change) = node.start_flight() {
                items.push(FlushItem {
                    key: node.key.clone(),
                    change,
                    expected: node.known.expected(),
                });
            }
        }
    }
    items
}

/// Every shard's write lock; see [`State::lock_all`].
pub struct AllGuard<'a> {
    pub(super) state: &'a State,
    pub(super) guards: Vec<RwLockWriteGuard<'a, ShardInner>>,
}

impl std::fmt::Debug for AllGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllGuard")
            .field("shards", &self.guards.len())
            .finish()
    }
}

impl AllGuard<'_> {
    /// Takes a flush cut: every pending change moves to "in flight" and
    /// becomes one item, with the `Expected` of the entry's base. `position`
    /// is the LSN just assigned under this guard (the flush-begin record).
    /// An error if a cut is already in flight.
    pub fn take_cut(&mut self, position: Lsn) -> Result<Cut> {
        let state = self.state;
        let mut slot = state.cut.lock();
        if let Some(cut) = slot.as_ref() {
            return Err(Error::CutInFlight {
                position: cut.position,
            });
        }
        let mut inners: Vec<&mut ShardInner> = self.guards.iter_mut().map(|g| &mut **g).collect();
        let half = inners.len() / 2;
        let items = if state.dirty_entries() >= PARALLEL_LANDING && half > 0 {
            // As in `complete_cut`: writers wait; half the shards on a second thread.
            let (low, high) = inners.split_at_mut(half);
            let (mut items, rest) = std::thread::scope(|s| {
                let high = s.spawn(|| start_flights(high));
                (start_flights(low), high.join())
            });
            match rest {
                Ok(rest) => items.extend(rest),
                Err(panic) => std::panic::resume_unwind(panic),
            }
            items
        } else {
            start_flights(&mut inners)
        };
        let cut = Cut { position, items };
        state
            .in_flight_items
            .store(cut.items.len(), Ordering::Relaxed);
        *slot = Some(cut.clone());
        state.cut_active.store(true, Ordering::Release);
        Ok(cut)
    }

    /// What a read of `key` sees (not counted in hits/misses).
    pub fn get(&self, key: &Key) -> Lookup {
        let state = self.state;
        let hash = state.hash(key);
        match self.guards[state.shard_of(hash)].find(hash, key) {
            Some(node) => to_lookup(node.visible()),
            None => state.clean_lookup(key),
        }
    }
}
