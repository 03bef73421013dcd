//! What a read finds in memory: the dirty entry first, then the clean cache.

use std::sync::atomic::Ordering;

use crate::coalesce::Visible;
use crate::types::{Key, Value};

use super::State;

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

/// What a read finds in memory, and whether the clean copy it found is due
/// for a refresh-ahead load; see [`State::read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// What the read sees now.
    pub lookup: Lookup,
    /// The answer is a clean copy near or just past its TTL: serve it and
    /// start one background load (only with [`Limits::refresh`](crate::Limits::refresh)).
    pub refresh: bool,
}

pub(super) fn to_lookup(v: Visible) -> Lookup {
    match v {
        Visible::Unknown => Lookup::Miss,
        Visible::Absent => Lookup::Absent,
        Visible::Known(v) => Lookup::Value(v),
        Visible::Delta(d) => Lookup::Delta(d),
        Visible::DeltaCols(d) => Lookup::DeltaCols(d),
    }
}

impl State {
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

    pub(super) fn clean_lookup(&self, key: &str) -> Lookup {
        self.clean_read(key).lookup
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
}
