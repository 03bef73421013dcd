//! The sharded dirty overlay, the flush cut and the read path.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::clean::CleanCache;
use crate::coalesce::{coalesce_lenient, fold, Base, FoldError, Visible};
use crate::entry::{Known, Node};
use crate::error::{Error, Result};
use crate::limits::{LimitKind, Limits};
use crate::snapshot::{Snapshot, SnapshotCut, SnapshotEntry};
use crate::types::{Change, Cut, Expected, FlushItem, ItemOutcome, Key, Lsn, Value};

/// Shards of a [`State::new`] state. 64 keeps writer contention low on
/// machines up to ~32 cores while `lock_all` stays cheap (see the README).
pub const DEFAULT_SHARDS: usize = 64;

/// What a read finds in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The latest acknowledged value.
    Value(Value),
    /// A tombstone, or a clean "row does not exist".
    Absent,
    /// Only adds are pending over an unknown base: the caller reads the
    /// database value (0 if absent) and adds this.
    Delta(i64),
    /// Only `AddCols` are pending over an unknown base (a delta record):
    /// the caller reads the database row (zeros if absent) and adds these
    /// per column.
    DeltaCols(std::sync::Arc<[i64]>),
    /// Not in memory: read through.
    Miss,
}

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

/// What a read finds in memory, and whether the clean copy it found is due
/// for a refresh-ahead load; see [`State::read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// What the read sees now.
    pub lookup: Lookup,
    /// The answer is a clean copy near or just past its TTL: serve it and
    /// start one background load (only with [`Limits::refresh`]).
    pub refresh: bool,
}

/// Proof that a read-through load began at a point in time; see
/// [`State::load_ticket`].
#[derive(Clone, Debug)]
pub struct LoadTicket {
    key: Key,
    shard: usize,
    generation: u64,
    /// When the load began: its cost, for refresh-ahead.
    started: Instant,
}

impl LoadTicket {
    /// The key being loaded.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Whether both tickets are of one key and no cut cleaned it and no
    /// invalidation dropped it between them (a load begun at one is still
    /// fit to serve at the other, as far as this state knows).
    pub fn same_generation(&self, other: &LoadTicket) -> bool {
        self.key == other.key && self.shard == other.shard && self.generation == other.generation
    }
}

fn to_lookup(v: Visible) -> Lookup {
    match v {
        Visible::Unknown => Lookup::Miss,
        Visible::Absent => Lookup::Absent,
        Visible::Known(v) => Lookup::Value(v),
        Visible::Delta(d) => Lookup::Delta(d),
        Visible::DeltaCols(d) => Lookup::DeltaCols(d),
    }
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

    /// The latest acknowledged state of `key`: dirty entry first, then the
    /// clean cache.
    pub fn get(&self, key: &str) -> Lookup {
        self.read(key).lookup
    }

    /// [`get`](Self::get), and whether the clean copy it answers from is
    /// due for a refresh-ahead load (never for a dirty entry).
    pub fn read(&self, key: &str) -> Read {
        let hash = self.hash(key);
        let shard = &self.shards[self.shard_of(hash)];
        let found = {
            let inner = shard.inner.read();
            match inner.find(hash, key) {
                Some(node) => Read {
                    lookup: to_lookup(node.visible()),
                    refresh: false,
                },
                None => self.clean_read(key),
            }
        };
        let counter = match found.lookup {
            Lookup::Value(_) | Lookup::Absent => &shard.hits,
            Lookup::Delta(_) | Lookup::DeltaCols(_) | Lookup::Miss => &shard.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Whether `key`'s clean copy is due for a refresh-ahead load now (not
    /// counted as a read): a loader that won the key's load slot checks it
    /// again, since another refresh may have landed since its read.
    pub fn refresh_due(&self, key: &str) -> bool {
        let hash = self.hash(key);
        let inner = self.shards[self.shard_of(hash)].inner.read();
        inner.find(hash, key).is_none() && self.clean.get(key).is_some_and(|hit| hit.refresh)
    }

    fn clean_read(&self, key: &str) -> Read {
        match self.clean.get(key) {
            Some(hit) => Read {
                lookup: match hit.row {
                    Some((v, _)) => Lookup::Value(v),
                    None => Lookup::Absent,
                },
                refresh: hit.refresh,
            },
            None => Read {
                lookup: Lookup::Miss,
                refresh: false,
            },
        }
    }

    fn clean_lookup(&self, key: &str) -> Lookup {
        self.clean_read(key).lookup
    }

    /// Dirty keys right now (one atomic load).
    pub fn dirty_entries(&self) -> usize {
        self.dirty_entries.load(Ordering::Relaxed)
    }

    /// Whether `key` has a change in the cut in flight: the database may or
    /// may not hold it yet, so its row cannot serve as this key's base.
    pub fn is_in_flight(&self, key: &str) -> bool {
        let hash = self.hash(key);
        self.shards[self.shard_of(hash)]
            .inner
            .read()
            .find(hash, key)
            .is_some_and(|node| node.in_flight().is_some())
    }

    /// Whether `key` has a pending or in-flight change (a write to it takes
    /// no new dirty entry).
    pub fn is_dirty(&self, key: &Key) -> bool {
        let hash = self.hash(key);
        self.shards[self.shard_of(hash)]
            .inner
            .read()
            .find(hash, key)
            .is_some()
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
        for (item, outcome) in cut.iter().flat_map(|c| &c.items).zip(outcomes) {
            let hash = self.hash(&item.key);
            let inner = &mut *guards[self.shard_of(hash)];
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
        self.in_flight_items.store(0, Ordering::Relaxed);
        self.cut_active.store(false, Ordering::Release);
        Ok(())
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

    /// Starts a read-through load of `key`: pass the ticket to
    /// [`insert_loaded`](Self::insert_loaded) with what the database returned.
    pub fn load_ticket(&self, key: &Key) -> LoadTicket {
        let shard = self.shard_of(self.hash(key));
        LoadTicket {
            key: key.clone(),
            shard,
            generation: self.shards[shard].inner.read().generation,
            started: Instant::now(),
        }
    }

    /// Caches a row loaded from the database (`None`: no such row) unless
    /// the key is dirty, or was cleaned by a cut or invalidated since the
    /// ticket was taken (the load may predate that write). Returns whether
    /// it was accepted (with `clean_capacity == 0` an accepted row is not
    /// kept).
    pub fn insert_loaded(&self, ticket: LoadTicket, row: Option<(Value, i64)>) -> bool {
        let hash = self.hash(&ticket.key);
        let shard = self.shard_of(hash);
        if shard != ticket.shard {
            return false; // a ticket from another State
        }
        let inner = self.shards[shard].inner.write();
        if inner.generation != ticket.generation || inner.find(hash, &ticket.key).is_some() {
            return false;
        }
        let cost = ticket.started.elapsed();
        self.clean.insert(ticket.key, row, Some(cost));
        true
    }

    /// Another writer changed the row: drops the clean copy, makes a dirty
    /// entry forget the base value (it keeps the version, so our next put
    /// still detects the conflict) and refuses loads in progress.
    pub fn invalidate(&self, key: &Key) {
        let hash = self.hash(key);
        let mut inner = self.shards[self.shard_of(hash)].inner.write();
        inner.generation += 1;
        self.clean.invalidate(key);
        if let Some(node) = inner.table.find_mut(hash, |n| *n.key == **key) {
            self.forget_base(node);
        }
    }

    /// The row of `key` was changed behind the cache (an explicit
    /// invalidation): drops the clean copy, refuses loads of it in progress,
    /// and makes a dirty entry forget the row value it was derived from.
    /// The dirty entry's own write stays whole: a put or delete is still
    /// what reads see and what is flushed, with the same version check (the
    /// version is kept); a counter's pending delta stays, over an unknown
    /// base, so the next read loads the row and adds the delta (the old base
    /// would hide the other program's change until the flush). Returns
    /// whether a clean copy was dropped.
    pub fn drop_clean(&self, key: &Key) -> bool {
        let hash = self.hash(key);
        let mut inner = self.shards[self.shard_of(hash)].inner.write();
        inner.generation += 1;
        if let Some(node) = inner.table.find_mut(hash, |n| *n.key == **key) {
            self.forget_base(node);
        }
        self.clean.invalidate(key)
    }

    /// [`drop_clean`](Self::drop_clean) for every key starting with
    /// `prefix`. Loads in progress of any key are refused (their readers
    /// still get their rows; the rows are just not kept). Returns how many
    /// clean copies were dropped.
    pub fn drop_clean_prefix(&self, prefix: &str) -> usize {
        // Generations first: a load that began before this call cannot
        // bring an old row back after the sweep.
        for shard in self.shards.iter() {
            let mut inner = shard.inner.write();
            inner.generation += 1;
            for node in inner.table.iter_mut() {
                if node.key.starts_with(prefix) {
                    self.forget_base(node);
                }
            }
        }
        self.clean.invalidate_prefix(prefix)
    }

    /// A dirty entry forgets the row value its state was derived from,
    /// keeping the version its next put or delete is checked against.
    fn forget_base(&self, node: &mut Node) {
        let old = node.bytes();
        node.known = node.known.invalidated();
        self.add_bytes(old, node.bytes());
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

/// The write lock of one shard; see [`State::lock`].
pub struct ShardGuard<'a> {
    state: &'a State,
    index: usize,
    inner: RwLockWriteGuard<'a, ShardInner>,
}

impl std::fmt::Debug for ShardGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardGuard")
            .field("shard", &self.index)
            .finish_non_exhaustive()
    }
}

impl ShardGuard<'_> {
    /// Validates `change` on `key` without changing anything: key and value
    /// size limits, `Add` on a bytes value, counter overflow (of the value
    /// and of every pending sum). Returns the error the write must fail with.
    pub fn check(&self, key: &Key, change: &Change) -> Result<()> {
        let hash = self.state.hash(key);
        let node = match change {
            Change::Add(_) | Change::AddCols(_) => self.inner.find(hash, key),
            _ => None,
        };
        self.check_found(hash, node, key, change)
    }

    /// [`check`](Self::check), then [`expected`](Self::expected), with one
    /// hash and one lookup of `key`: the write path's step under the lock.
    pub fn check_expected(&self, key: &Key, change: &Change) -> Result<Expected> {
        let hash = self.state.hash(key);
        let node = self.inner.find(hash, key);
        self.check_found(hash, node, key, change)?;
        Ok(self.expected_found(node, key))
    }

    /// `check` with `key`'s hash and its dirty node, when it has one.
    fn check_found(
        &self,
        hash: u64,
        node: Option<&Node>,
        key: &Key,
        change: &Change,
    ) -> Result<()> {
        let state = self.state;
        let key_shard = state.shard_of(hash);
        if key_shard != self.index {
            return Err(Error::WrongShard {
                key: key.clone(),
                key_shard,
                locked: self.index,
            });
        }
        if key.len() > state.limits.max_key_bytes {
            return Err(Error::KeyTooLarge {
                key: key.clone(),
                len: key.len(),
                max: state.limits.max_key_bytes,
            });
        }
        match change {
            Change::Put(Value::Bytes(b)) if b.len() > state.limits.max_value_bytes => {
                Err(Error::ValueTooLarge {
                    key: key.clone(),
                    len: b.len(),
                    max: state.limits.max_value_bytes,
                })
            }
            Change::Put(Value::Ints(c)) | Change::AddCols(c)
                if 8 * c.len() > state.limits.max_value_bytes =>
            {
                Err(Error::ValueTooLarge {
                    key: key.clone(),
                    len: 8 * c.len(),
                    max: state.limits.max_value_bytes,
                })
            }
            Change::AddCols(deltas) => {
                let checked = match node {
                    Some(node) => node.check_add(change),
                    None => match state.clean.get(key).and_then(|hit| hit.row) {
                        Some((v, _)) => fold(Visible::Known(v), change).map(drop),
                        None => Ok(()),
                    },
                };
                checked.map_err(|e| match e {
                    FoldError::Overflow => Error::ColumnsOverflow {
                        key: key.clone(),
                        deltas: deltas.to_vec(),
                    },
                    FoldError::Mismatch => Error::ColumnsMismatch {
                        key: key.clone(),
                        columns: deltas.len(),
                    },
                })
            }
            Change::Add(delta) => {
                let checked = match node {
                    Some(node) => node.check_add(change),
                    None => match state.clean.get(key).and_then(|hit| hit.row) {
                        Some((v, _)) => fold(Visible::Known(v), change).map(drop),
                        None => Ok(()),
                    },
                };
                checked.map_err(|e| match e {
                    FoldError::Overflow => Error::CounterOverflow {
                        key: key.clone(),
                        delta: *delta,
                    },
                    FoldError::Mismatch => Error::TypeMismatch { key: key.clone() },
                })
            }
            _ => Ok(()),
        }
    }

    /// The expected version a put/delete on `key` would carry right now,
    /// for the WAL record. `Any` while the key's previous change is in
    /// flight: the version it produces is learnt at `complete_cut`, and the
    /// next cut carries it.
    pub fn expected(&self, key: &Key) -> Expected {
        self.expected_found(self.inner.find(self.state.hash(key), key), key)
    }

    /// `expected` with `key`'s dirty node, when it has one.
    fn expected_found(&self, node: Option<&Node>, key: &Key) -> Expected {
        match node {
            Some(node) if node.in_flight().is_some() => Expected::Any,
            Some(node) => node.known.expected(),
            None => match self.state.clean.get(key).map(|hit| hit.row) {
                Some(Some((_, version))) => Expected::Version(version),
                Some(None) => Expected::Absent,
                None => Expected::Any,
            },
        }
    }

    /// Applies a checked change with its LSN: coalesces into the pending
    /// change. Never fails after [`check`](Self::check) passed under this
    /// guard. `expected` is what the WAL record carries: an entry that knows
    /// nothing of its row adopts it (this is how replay restores versions).
    ///
    /// # Panics
    ///
    /// If `key` belongs to another shard ([`check`](Self::check) returns
    /// [`Error::WrongShard`] for it): applying it here would lose it.
    pub fn apply(&mut self, key: Key, change: Change, expected: Expected, lsn: Lsn) {
        let state = self.state;
        let hash = state.hash(&key);
        assert_eq!(
            state.shard_of(hash),
            self.index,
            "ShardGuard::apply with a key of another shard"
        );
        if let Some(node) = self.inner.table.find_mut(hash, |n| *n.key == *key) {
            let old = node.bytes();
            if node.in_flight().is_none() && node.known == Known::Unknown {
                node.known = Known::from_expected(expected);
            }
            node.push(&change, lsn);
            state.add_bytes(old, node.bytes());
            return;
        }
        // A clean copy becomes the base; it must not outlive the write.
        let known = match state.clean.take(&key) {
            Some(Some((value, version))) => Known::from_base(Base::Row { version, value }),
            Some(None) => Known::Absent,
            None => Known::from_expected(expected),
        };
        let node = Box::new(Node::new(key, known, coalesce_lenient(None, &change), lsn));
        state.dirty_entries.fetch_add(1, Ordering::Relaxed);
        state.dirty_bytes.fetch_add(node.bytes(), Ordering::Relaxed);
        let hasher = &state.hasher;
        self.inner
            .table
            .insert_unique(hash, node, |n| hasher.hash_one(&*n.key));
    }

    /// What a read of `key` sees (not counted in hits/misses).
    pub fn get(&self, key: &Key) -> Lookup {
        match self.inner.find(self.state.hash(key), key) {
            Some(node) => to_lookup(node.visible()),
            None => self.state.clean_lookup(key),
        }
    }
}

/// Every shard's write lock; see [`State::lock_all`].
pub struct AllGuard<'a> {
    state: &'a State,
    guards: Vec<RwLockWriteGuard<'a, ShardInner>>,
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
        let mut items = Vec::with_capacity(state.dirty_entries());
        for inner in &mut self.guards {
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
        let cut = Cut { position, items };
        state
            .in_flight_items
            .store(cut.items.len(), Ordering::Relaxed);
        *slot = Some(cut.clone());
        state.cut_active.store(true, Ordering::Release);
        Ok(cut)
    }

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

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
