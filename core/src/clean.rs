//! The bounded cache of clean rows (quick_cache, chosen by the bench in
//! `benches/core.rs`), with an optional TTL checked on read, an optional
//! byte budget, refresh-ahead, and counts of what left it and why.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use crate::limits::{Limits, Refresh};
use crate::types::{Key, Value};

/// One clean row: `None` means "the row does not exist".
#[derive(Clone, Debug)]
struct CleanRow {
    row: Option<(Value, i64)>,
    expires: Option<Instant>,
    /// What loading it took: XFetch's `delta` (a slow load refreshes earlier).
    cost: Duration,
    /// Key plus value bytes, fixed at insert (a weight must not change).
    bytes: usize,
}

/// Key bytes plus value bytes (8 per counter): the same measure as dirty bytes.
fn row_bytes(key: &str, row: &Option<(Value, i64)>) -> usize {
    key.len()
        + match row {
            Some((Value::Int(_), _)) => 8,
            Some((Value::Bytes(b), _)) => b.len(),
            Some((Value::Ints(c), _)) => 8 * c.len(),
            None => 0,
        }
}

/// Why clean copies left the cache, and what they hold now.
#[derive(Debug, Default)]
struct Counts {
    bytes: AtomicUsize,
    capacity: AtomicU64,
    expired: AtomicU64,
    invalidated: AtomicU64,
}

/// Figures of the clean cache; see [`CoreStats`](crate::CoreStats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CleanFigures {
    pub(crate) bytes: usize,
    pub(crate) capacity_evictions: u64,
    pub(crate) ttl_evictions: u64,
    pub(crate) invalidation_evictions: u64,
}

/// Weighs a row so one weight budget bounds both entries and bytes: with
/// `E` entries and `B` bytes allowed, a row weighs `max(bytes * E, B)` of
/// `E * B` (scaled down when that overflows 48 bits), so the weights
/// fitting means `sum(bytes) <= B` and `count <= E`. Without a byte budget
/// every row weighs 1 of `E`.
#[derive(Clone, Debug)]
struct Weigh {
    entries: u128,
    bytes: Option<u128>,
    scale: u128,
}

impl Weigh {
    fn new(entries: usize, bytes: Option<usize>) -> Self {
        let entries = entries as u128;
        let bytes = bytes.map(|b| b.max(1) as u128);
        let total = bytes.map_or(entries, |b| entries * b);
        Self {
            entries,
            bytes,
            scale: (total >> 48).max(1),
        }
    }

    fn capacity(&self) -> u64 {
        let total = self.bytes.map_or(self.entries, |b| self.entries * b);
        (total / self.scale) as u64
    }
}

impl Weighter<Key, CleanRow> for Weigh {
    fn weight(&self, _key: &Key, row: &CleanRow) -> u64 {
        match self.bytes {
            None => 1,
            Some(b) => {
                let w = (row.bytes as u128 * self.entries).max(b);
                (w.div_ceil(self.scale)).max(1) as u64
            }
        }
    }
}

/// Counts capacity evictions (quick_cache reports them here, and items
/// too large to admit too).
#[derive(Clone, Debug)]
struct Hooks(Arc<Counts>);

impl Lifecycle<Key, CleanRow> for Hooks {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: Key, row: CleanRow) {
        self.0.capacity.fetch_add(1, Ordering::Relaxed);
        self.0.bytes.fetch_sub(row.bytes, Ordering::Relaxed);
    }
}

type Rows = Cache<Key, CleanRow, Weigh, DefaultHashBuilder, Hooks>;

/// What the clean cache holds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) row: Option<(Value, i64)>,
    /// Serve it, and refresh it in the background (refresh-ahead only).
    pub(crate) refresh: bool,
}

/// Clean rows, bounded by entry count and optionally by bytes;
/// `capacity == 0` keeps nothing.
pub(crate) struct CleanCache {
    cache: Option<Rows>,
    ttl: Option<Duration>,
    refresh: Option<Refresh>,
    counts: Arc<Counts>,
    /// The last measured load time, nanoseconds: the cost of rows that
    /// came from a flush (no load was timed for them).
    last_cost: AtomicU64,
}

impl CleanCache {
    pub(crate) fn new(limits: &Limits) -> Self {
        let counts = Arc::new(Counts::default());
        let cache = (limits.clean_capacity > 0).then(|| {
            let weigh = Weigh::new(limits.clean_capacity, limits.clean_capacity_bytes);
            let options = quick_cache::OptionsBuilder::new()
                .estimated_items_capacity(limits.clean_capacity)
                .weight_capacity(weigh.capacity())
                .build();
            match options {
                Ok(options) => Rows::with_options(
                    options,
                    weigh,
                    DefaultHashBuilder::default(),
                    Hooks(counts.clone()),
                ),
                // Unreachable: both figures are set above.
                Err(_) => Rows::with(
                    limits.clean_capacity,
                    weigh.capacity(),
                    weigh,
                    DefaultHashBuilder::default(),
                    Hooks(counts.clone()),
                ),
            }
        });
        Self {
            cache,
            ttl: limits.clean_ttl,
            refresh: limits.refresh.filter(|_| limits.clean_ttl.is_some()),
            counts,
            last_cost: AtomicU64::new(0),
        }
    }

    /// The row if cached and servable: `Some(None)` is a cached "no row".
    /// Past its TTL a row is dropped, unless refresh-ahead serves it for up
    /// to `max_stale` more while one load refreshes it.
    pub(crate) fn get(&self, key: &str) -> Option<Hit> {
        let cache = self.cache.as_ref()?;
        let hit = cache.get(key)?;
        let Some(at) = hit.expires else {
            return Some(Hit {
                row: hit.row,
                refresh: false,
            });
        };
        let now = Instant::now();
        let refresh = match &self.refresh {
            None if now >= at => None,
            None => Some(false),
            Some(r) if now >= at => (now < at + r.max_stale).then_some(true),
            Some(r) => Some(r.early(now, at, hit.cost)),
        };
        match refresh {
            Some(refresh) => Some(Hit {
                row: hit.row,
                refresh,
            }),
            None => {
                self.expire(key);
                None
            }
        }
    }

    /// Drops an expired row (another reader may have dropped it first).
    fn expire(&self, key: &str) {
        if let Some((_, gone)) = self.cache.as_ref().and_then(|c| c.remove(key)) {
            self.counts.expired.fetch_add(1, Ordering::Relaxed);
            self.counts.bytes.fetch_sub(gone.bytes, Ordering::Relaxed);
        }
    }

    /// Removes and returns the fresh row, if any (it becomes a dirty
    /// entry's base: not an eviction).
    pub(crate) fn take(&self, key: &Key) -> Option<Option<(Value, i64)>> {
        let (_, hit) = self.cache.as_ref()?.remove(key)?;
        self.counts.bytes.fetch_sub(hit.bytes, Ordering::Relaxed);
        match hit.expires {
            Some(at) if Instant::now() >= at => {
                self.counts.expired.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => Some(hit.row),
        }
    }

    /// Caches a row. `cost` is what loading it took (`None`: it came from
    /// a flush). Callers hold the key's shard lock, so inserts of one key
    /// never race; the entry API keeps the byte count exact on replace.
    pub(crate) fn insert(&self, key: Key, row: Option<(Value, i64)>, cost: Option<Duration>) {
        let Some(cache) = &self.cache else {
            return;
        };
        let cost = match cost {
            Some(c) => {
                let nanos = u64::try_from(c.as_nanos()).unwrap_or(u64::MAX);
                self.last_cost.store(nanos, Ordering::Relaxed);
                c
            }
            None => Duration::from_nanos(self.last_cost.load(Ordering::Relaxed)),
        };
        // A TTL too large for the clock means "never expires".
        let expires = self.ttl.and_then(|ttl| Instant::now().checked_add(ttl));
        let bytes = row_bytes(&key, &row);
        let mut fresh = Some(CleanRow {
            row,
            expires,
            cost,
            bytes,
        });
        // Counted before it goes in: an item too large to admit is
        // reported as evicted at once.
        self.counts.bytes.fetch_add(bytes, Ordering::Relaxed);
        let replaced = cache.entry(&key, Some(Duration::ZERO), |_, old| match fresh.take() {
            Some(new) => EntryAction::Retain(std::mem::replace(old, new).bytes),
            None => EntryAction::Retain(0),
        });
        match replaced {
            EntryResult::Retained(old) => {
                self.counts.bytes.fetch_sub(old, Ordering::Relaxed);
            }
            EntryResult::Vacant(guard) => {
                if let Some(new) = fresh.take() {
                    if guard.insert(new).is_err() {
                        // The slot was taken meanwhile: nothing cached.
                        self.counts.bytes.fetch_sub(bytes, Ordering::Relaxed);
                    }
                }
            }
            EntryResult::Removed(_, gone) | EntryResult::Replaced(_, gone) => {
                self.counts.bytes.fetch_sub(gone.bytes, Ordering::Relaxed);
            }
            EntryResult::Timeout => {
                // No placeholders are used here; counted as not cached.
                self.counts.bytes.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
    }

    /// Drops a row that is no longer clean (not an eviction).
    pub(crate) fn remove(&self, key: &Key) {
        if let Some((_, gone)) = self.cache.as_ref().and_then(|c| c.remove(key)) {
            self.counts.bytes.fetch_sub(gone.bytes, Ordering::Relaxed);
        }
    }

    /// Drops the row because it was invalidated. Returns whether one was cached.
    pub(crate) fn invalidate(&self, key: &Key) -> bool {
        match self.cache.as_ref().and_then(|c| c.remove(key)) {
            Some((_, gone)) => {
                self.counts.invalidated.fetch_add(1, Ordering::Relaxed);
                self.counts.bytes.fetch_sub(gone.bytes, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Drops every row whose key starts with `prefix`. Returns how many.
    pub(crate) fn invalidate_prefix(&self, prefix: &str) -> usize {
        let Some(cache) = &self.cache else {
            return 0;
        };
        let dropped = AtomicUsize::new(0);
        cache.retain(|key, row| {
            if key.starts_with(prefix) {
                dropped.fetch_add(1, Ordering::Relaxed);
                self.counts.bytes.fetch_sub(row.bytes, Ordering::Relaxed);
                false
            } else {
                true
            }
        });
        let dropped = dropped.into_inner();
        self.counts
            .invalidated
            .fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    pub(crate) fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
    }

    pub(crate) fn figures(&self) -> CleanFigures {
        let c = &self.counts;
        CleanFigures {
            bytes: c.bytes.load(Ordering::Relaxed),
            capacity_evictions: c.capacity.load(Ordering::Relaxed),
            ttl_evictions: c.expired.load(Ordering::Relaxed),
            invalidation_evictions: c.invalidated.load(Ordering::Relaxed),
        }
    }
}

impl Refresh {
    /// XFetch (Vattani et al., VLDB 2015): refresh now with a probability
    /// that grows as expiry nears and with the cost of a load:
    /// `now - cost * beta * ln(u) >= expires`, `u` uniform in (0, 1].
    fn early(&self, now: Instant, expires: Instant, cost: Duration) -> bool {
        if cost.is_zero() || self.beta <= 0.0 {
            return false;
        }
        let u = 1.0 - fastrand::f64(); // (0, 1]: ln stays finite
        let lead = cost.as_secs_f64() * self.beta * -u.ln();
        Duration::try_from_secs_f64(lead).is_ok_and(|lead| now + lead >= expires)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(capacity: usize, bytes: Option<usize>) -> Limits {
        Limits {
            clean_capacity: capacity,
            clean_capacity_bytes: bytes,
            ..Limits::default()
        }
    }

    fn bytes_row(n: usize) -> Option<(Value, i64)> {
        Some((Value::Bytes(vec![0u8; n].into()), 1))
    }

    #[test]
    fn bytes_are_counted_exactly_through_replace_remove_and_invalidate() {
        let c = CleanCache::new(&limits(100, None));
        c.insert(Key::from("ab"), bytes_row(10), None);
        assert_eq!(c.figures().bytes, 12);
        c.insert(Key::from("ab"), Some((Value::Int(1), 1)), None);
        assert_eq!(c.figures().bytes, 10);
        c.insert(Key::from("cd"), None, None);
        assert_eq!((c.figures().bytes, c.len()), (12, 2));
        assert!(c.invalidate(&Key::from("ab")));
        assert!(!c.invalidate(&Key::from("ab")));
        assert_eq!(c.figures().bytes, 2);
        c.remove(&Key::from("cd"));
        let f = c.figures();
        assert_eq!((f.bytes, f.invalidation_evictions, c.len()), (0, 1, 0));
    }

    #[test]
    fn a_byte_budget_bounds_bytes_and_an_entry_budget_bounds_entries() {
        // 1 000 entries allowed but only 10 000 bytes: 100-byte rows stop near 100.
        let c = CleanCache::new(&limits(1_000, Some(10_000)));
        for i in 0..1_000 {
            c.insert(Key::from(format!("k{i:03}")), bytes_row(96), None);
        }
        let f = c.figures();
        assert!(f.bytes <= 10_000, "{f:?}");
        assert_eq!(f.bytes, c.len() * 100);
        assert_eq!(f.capacity_evictions, 1_000 - c.len() as u64);
        // Tiny rows: the entry budget binds, not the bytes.
        let c = CleanCache::new(&limits(100, Some(1 << 30)));
        for i in 0..1_000 {
            c.insert(Key::from(format!("k{i:03}")), None, None);
        }
        assert!(c.len() <= 100, "{}", c.len());
        assert_eq!(c.figures().capacity_evictions, 1_000 - c.len() as u64);
        assert_eq!(c.figures().bytes, c.len() * 4);
    }

    #[test]
    fn prefix_invalidation_drops_only_that_prefix() {
        let c = CleanCache::new(&limits(100, None));
        for k in ["team:1:a", "team:1:b", "team:10:a", "team:2:a"] {
            c.insert(Key::from(k), None, None);
        }
        assert_eq!(c.invalidate_prefix("team:1:"), 2);
        assert!(c.get("team:1:a").is_none());
        assert!(c.get("team:10:a").is_some());
        assert_eq!(c.figures().invalidation_evictions, 2);
        assert_eq!(c.figures().bytes, 9 + 8);
    }

    #[test]
    fn expiry_is_counted_and_refresh_ahead_serves_stale_within_its_bound() {
        let ttl = Duration::from_millis(30);
        let plain = CleanCache::new(&Limits {
            clean_ttl: Some(ttl),
            ..Limits::default()
        });
        plain.insert(Key::from("k"), None, Some(Duration::from_millis(1)));
        std::thread::sleep(ttl * 2);
        assert!(plain.get("k").is_none());
        assert_eq!(plain.figures().ttl_evictions, 1);
        assert_eq!(plain.figures().bytes, 0);

        let ahead = CleanCache::new(&Limits {
            clean_ttl: Some(ttl),
            refresh: Some(Refresh {
                beta: 1.0,
                max_stale: Duration::from_millis(200),
            }),
            ..Limits::default()
        });
        ahead.insert(Key::from("k"), None, Some(Duration::from_nanos(1)));
        assert_eq!(
            ahead.get("k"),
            Some(Hit {
                row: None,
                refresh: false
            })
        );
        std::thread::sleep(ttl * 2);
        // Expired but within max_stale: served, with a refresh asked for.
        assert_eq!(
            ahead.get("k"),
            Some(Hit {
                row: None,
                refresh: true
            })
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(ahead.get("k").is_none());
        assert_eq!(ahead.figures().ttl_evictions, 1);
    }

    #[test]
    fn xfetch_refreshes_early_only_when_a_load_is_slow_relative_to_the_time_left() {
        let r = Refresh {
            beta: 1.0,
            max_stale: Duration::ZERO,
        };
        let now = Instant::now();
        let expires = now + Duration::from_secs(1);
        // A load costing 1 µs, 1 s before expiry: e^-1e6, never.
        assert!((0..10_000).all(|_| !r.early(now, expires, Duration::from_micros(1))));
        // A load costing 1 000 s: refresh with probability 1 - e^-0.001 per read.
        let early = (0..1_000)
            .filter(|_| r.early(now, expires, Duration::from_secs(1_000)))
            .count();
        assert!(early > 900, "{early}");
        // A zero cost or beta never refreshes early.
        assert!(!r.early(now, expires, Duration::ZERO));
        let off = Refresh { beta: 0.0, ..r };
        assert!(!off.early(now, expires, Duration::from_secs(1_000)));
    }
}
