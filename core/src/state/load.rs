//! Read-through loads into the clean cache, and invalidation: a shard's
//! generation refuses a load that began before the key changed.

use std::time::Instant;

use crate::entry::Node;
use crate::types::{Key, Value};

use super::State;

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

impl State {
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
}
