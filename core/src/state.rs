//! The sharded dirty overlay: the [`State`], its shards and their
//! accounting. The rest by job: `read` (what a read finds), `load`
//! (read-through loads and invalidation), `write` (the write path under a
//! shard lock), `cut` (the flush cut), `checkpoint` (snapshot and restore).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, RwLock};

use crate::clean::CleanCache;
use crate::entry::Node;
use crate::limits::{LimitKind, Limits};
use crate::types::{Cut, Key};

mod checkpoint;
mod cut;
mod load;
mod read;
mod write;

pub use cut::AllGuard;
pub use load::LoadTicket;
pub use read::{Lookup, Read};
pub use write::ShardGuard;

/// Shards of a [`State::new`] state. 64 keeps writer contention low on
/// machines up to ~32 cores while `lock_all` stays cheap (see the README).
pub const DEFAULT_SHARDS: usize = 64;

/// Counters of the state, exact when no write is in progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreStats {
    /// Keys with a pending or in-flight change.
    pub dirty_entries: usize,
    /// Key bytes plus value bytes (8 per counter) held by dirty entries:
    /// base value, in-flight and pending change.
    pub dirty_bytes: usize,
    /// Rows in the clean cache.
    pub clean_entries: usize,
    /// Reads answered from memory (`Value` or `Absent`).
    pub hits: u64,
    /// Reads that need the database (`Miss` or `Delta`).
    pub misses: u64,
    /// Items of the cut in flight (0 when none).
    pub in_flight: usize,
    /// Key plus value bytes (8 per counter) held by clean rows.
    pub clean_bytes: usize,
    /// Clean rows evicted to stay within the entry or byte budget.
    pub capacity_evictions: u64,
    /// Clean rows dropped because their TTL passed.
    pub ttl_evictions: u64,
    /// Clean rows dropped by an invalidation (explicit or announced).
    pub invalidation_evictions: u64,
}

#[repr(align(128))] // one shard per cache line pair: no false sharing of locks
struct Shard {
    inner: RwLock<ShardInner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct ShardInner {
    table: HashTable<Box<Node>>,
    /// Bumped whenever a key of this shard may have changed in the
    /// database without being dirty here (cleaned by a cut, invalidated):
    /// loads that began before are refused.
    generation: u64,
}

impl ShardInner {
    fn find(&self, hash: u64, key: &str) -> Option<&Node> {
        self.table.find(hash, |n| *n.key == *key).map(|b| &**b)
    }
}

/// The in-memory state: dirty entries (never evicted) in shards, a bounded
/// clean cache, the cut in flight and the accounting for backpressure.
///
/// `Send + Sync`; share it by `Arc`. Lock order: shards in index order,
/// then the cut slot. Never call a `State` method that locks (everything
/// except [`stats`](Self::stats), [`over_limits`](Self::over_limits) and
/// [`has_in_flight`](Self::has_in_flight)) while holding a guard.
pub struct State {
    shards: Box<[Shard]>,
    mask: usize,
    hasher: DefaultHashBuilder,
    limits: Limits,
    clean: CleanCache,
    dirty_entries: AtomicUsize,
    dirty_bytes: AtomicUsize,
    cut: Mutex<Option<Cut>>,
    cut_active: AtomicBool,
    in_flight_items: AtomicUsize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("shards", &self.shards.len())
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl State {
    /// An empty state with [`DEFAULT_SHARDS`] shards.
    pub fn new(limits: Limits) -> Self {
        Self::with_shards(limits, DEFAULT_SHARDS)
    }

    /// An empty state with `shards` shards (rounded up to a power of two,
    /// 1 to 65 536).
    pub fn with_shards(limits: Limits, shards: usize) -> Self {
        let n = shards.clamp(1, 1 << 16).next_power_of_two();
        let shards = (0..n)
            .map(|_| Shard {
                inner: RwLock::new(ShardInner {
                    table: HashTable::new(),
                    generation: 0,
                }),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            })
            .collect();
        Self {
            shards,
            mask: n - 1,
            hasher: DefaultHashBuilder::default(),
            clean: CleanCache::new(&limits),
            limits,
            dirty_entries: AtomicUsize::new(0),
            dirty_bytes: AtomicUsize::new(0),
            cut: Mutex::new(None),
            cut_active: AtomicBool::new(false),
            in_flight_items: AtomicUsize::new(0),
        }
    }

    /// The limits this state was built with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Shard of a hash. Middle bits: hashbrown uses the low bits for the
    /// bucket and the top 7 for its tag, and both must stay random within a
    /// shard.
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> 40) as usize & self.mask
    }

    fn add_bytes(&self, old: usize, new: usize) {
        // Equal is the common case (an add onto an add): skip the shared
        // cache line entirely.
        if new > old {
            self.dirty_bytes.fetch_add(new - old, Ordering::Relaxed);
        } else if new < old {
            self.dirty_bytes.fetch_sub(old - new, Ordering::Relaxed);
        }
    }

    /// Locks the shard that owns `key`. The caller checks, appends to the
    /// WAL (which assigns the LSN), applies with that LSN and unlocks, so
    /// per key the WAL order is the apply order.
    pub fn lock(&self, key: &Key) -> ShardGuard<'_> {
        let index = self.shard_of(self.hash(key));
        ShardGuard {
            state: self,
            index,
            inner: self.shards[index].inner.write(),
        }
    }

    /// Locks every shard in index order: inside, no write is between its
    /// LSN assignment and its apply, so the state is a consistent cut.
    pub fn lock_all(&self) -> AllGuard<'_> {
        AllGuard {
            state: self,
            guards: self.shards.iter().map(|s| s.inner.write()).collect(),
        }
    }

    /// Dirty keys right now (one atomic load).
    pub fn dirty_entries(&self) -> usize {
        self.dirty_entries.load(Ordering::Relaxed)
    }

    /// Dirty bytes right now (one atomic load); see [`CoreStats::dirty_bytes`].
    pub fn dirty_bytes(&self) -> usize {
        self.dirty_bytes.load(Ordering::Relaxed)
    }

    /// All counters. Sums per-shard hit counters: call it for metrics, use
    /// [`dirty_entries`](Self::dirty_entries) on hot paths.
    pub fn stats(&self) -> CoreStats {
        let (hits, misses) = self.shards.iter().fold((0, 0), |(h, m), s| {
            (
                h + s.hits.load(Ordering::Relaxed),
                m + s.misses.load(Ordering::Relaxed),
            )
        });
        let clean = self.clean.figures();
        CoreStats {
            dirty_entries: self.dirty_entries(),
            dirty_bytes: self.dirty_bytes(),
            clean_entries: self.clean.len(),
            hits,
            misses,
            in_flight: self.in_flight_items.load(Ordering::Relaxed),
            clean_bytes: clean.bytes,
            capacity_evictions: clean.capacity_evictions,
            ttl_evictions: clean.ttl_evictions,
            invalidation_evictions: clean.invalidation_evictions,
        }
    }

    /// Which dirty limit is reached (`>=`), entries first. Checked before a
    /// write, so usage exceeds a limit by at most one write per concurrent
    /// writer.
    pub fn over_limits(&self) -> Option<LimitKind> {
        if self.dirty_entries() >= self.limits.max_dirty_entries {
            Some(LimitKind::DirtyEntries)
        } else if self.dirty_bytes() >= self.limits.max_dirty_bytes {
            Some(LimitKind::DirtyBytes)
        } else {
            None
        }
    }

    /// Heap bytes of the dirty index itself: hash tables, entry nodes and
    /// in-flight boxes. Excludes key and value allocations (shared `Arc`s).
    pub fn index_heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let inner = s.inner.read();
                inner.table.allocation_size()
                    + inner.table.iter().map(|n| n.heap_bytes()).sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
