//! The write path under one shard's lock: check, expected version, apply.

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;

use parking_lot::RwLockWriteGuard;

use crate::coalesce::{coalesce_lenient, fold, Base, FoldError, Visible};
use crate::entry::{Known, Node};
use crate::error::{Error, Result};
use crate::types::{Change, Expected, Key, Lsn, Value};

use super::read::{to_lookup, Lookup};
use super::{ShardInner, State};

/// The write lock of one shard; see [`State::lock`].
pub struct ShardGuard<'a> {
    pub(super) state: &'a State,
    pub(super) index: usize,
    pub(super) inner: RwLockWriteGuard<'a, ShardInner>,
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
