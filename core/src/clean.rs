//! The bounded cache of clean rows (quick_cache, chosen by the bench in
//! `benches/core.rs`), with an optional TTL checked on read.

use std::time::{Duration, Instant};

use crate::types::{Key, Value};

/// One clean row: `None` means "the row does not exist".
#[derive(Clone, Debug)]
struct CleanRow {
    row: Option<(Value, i64)>,
    expires: Option<Instant>,
}

/// Clean rows, bounded by entry count; `capacity == 0` keeps nothing.
pub(crate) struct CleanCache {
    cache: Option<quick_cache::sync::Cache<Key, CleanRow>>,
    ttl: Option<Duration>,
}

impl CleanCache {
    pub(crate) fn new(capacity: usize, ttl: Option<Duration>) -> Self {
        Self {
            cache: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
            ttl,
        }
    }

    /// The row if cached and fresh: `Some(None)` is a cached "no row".
    pub(crate) fn get(&self, key: &str) -> Option<Option<(Value, i64)>> {
        let cache = self.cache.as_ref()?;
        let hit = cache.get(key)?;
        if let Some(at) = hit.expires {
            if Instant::now() >= at {
                cache.remove(key);
                return None;
            }
        }
        Some(hit.row)
    }

    /// Removes and returns the fresh row, if any.
    pub(crate) fn take(&self, key: &Key) -> Option<Option<(Value, i64)>> {
        let (_, hit) = self.cache.as_ref()?.remove(key)?;
        match hit.expires {
            Some(at) if Instant::now() >= at => None,
            _ => Some(hit.row),
        }
    }

    pub(crate) fn insert(&self, key: Key, row: Option<(Value, i64)>) {
        if let Some(cache) = &self.cache {
            // A TTL too large for the clock means "never expires".
            let expires = self.ttl.and_then(|ttl| Instant::now().checked_add(ttl));
            cache.insert(key, CleanRow { row, expires });
        }
    }

    pub(crate) fn remove(&self, key: &Key) {
        if let Some(cache) = &self.cache {
            cache.remove(key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
    }
}
