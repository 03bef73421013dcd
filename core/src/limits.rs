//! Capacity limits and what "over the limit" means.

use std::time::Duration;

/// Bounds of the in-memory state.
///
/// Dirty entries are never evicted, so `max_dirty_*` are backpressure
/// thresholds the caller enforces through [`State::over_limits`](crate::State::over_limits);
/// key and value sizes are enforced by [`ShardGuard::check`](crate::ShardGuard::check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most dirty (not yet flushed) keys. Default: 1 000 000.
    pub max_dirty_entries: usize,
    /// Most dirty bytes (see [`CoreStats::dirty_bytes`](crate::CoreStats::dirty_bytes)). Default: 256 MiB.
    pub max_dirty_bytes: usize,
    /// Longest key in bytes. Default: 1 KiB.
    pub max_key_bytes: usize,
    /// Longest `Bytes` value in bytes. Default: 1 MiB.
    pub max_value_bytes: usize,
    /// Clean rows kept in the bounded clean cache (entries; 0 disables it). Default: 100 000.
    pub clean_capacity: usize,
    /// How long a clean row may be served before it counts as a miss. Default: none.
    pub clean_ttl: Option<Duration>,
    /// Most bytes (key plus value, 8 per counter) held by clean rows, on
    /// top of `clean_capacity`. Default: none (entries alone).
    pub clean_capacity_bytes: Option<usize>,
    /// Refresh clean rows before and just after their TTL while readers
    /// keep being served (needs `clean_ttl`). Default: none.
    pub refresh: Option<Refresh>,
}

/// Refresh-ahead of clean rows that have a TTL.
///
/// Before expiry a read asks for a refresh early with the XFetch
/// probability (Vattani et al., VLDB 2015), which grows as expiry nears and
/// with what the row's load took, times `beta`. After expiry the row is
/// still served for up to `max_stale` while one load refreshes it; past
/// that, a read waits for the load as without refresh-ahead.
#[derive(Clone, Copy, Debug)]
pub struct Refresh {
    /// XFetch's β: above 1 refreshes earlier, 0 only after expiry. Default: 1.
    pub beta: f64,
    /// How long past its TTL a row may still be served while it is being
    /// refreshed. Default: 1 s.
    pub max_stale: Duration,
}

impl Default for Refresh {
    fn default() -> Self {
        Self {
            beta: 1.0,
            max_stale: Duration::from_secs(1),
        }
    }
}

impl PartialEq for Refresh {
    fn eq(&self, other: &Self) -> bool {
        self.beta.to_bits() == other.beta.to_bits() && self.max_stale == other.max_stale
    }
}

impl Eq for Refresh {}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_dirty_entries: 1_000_000,
            max_dirty_bytes: 256 << 20,
            max_key_bytes: 1 << 10,
            max_value_bytes: 1 << 20,
            clean_capacity: 100_000,
            clean_ttl: None,
            clean_capacity_bytes: None,
            refresh: None,
        }
    }
}

/// Which dirty limit is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitKind {
    /// `dirty_entries >= max_dirty_entries`.
    DirtyEntries,
    /// `dirty_bytes >= max_dirty_bytes`.
    DirtyBytes,
}
