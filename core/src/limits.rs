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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_dirty_entries: 1_000_000,
            max_dirty_bytes: 256 << 20,
            max_key_bytes: 1 << 10,
            max_value_bytes: 1 << 20,
            clean_capacity: 100_000,
            clean_ttl: None,
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
