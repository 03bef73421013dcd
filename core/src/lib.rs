//! The in-memory state of writebehind: it owns keys, values and versions,
//! the dirty overlay with its coalescing rules, the flush cut hand-off, the
//! bounded clean cache and the accounting for backpressure. No I/O: the
//! root crate composes it with the WAL and the SQL writer.
//!
//! Write path (the caller's): [`State::lock`] the key's shard,
//! [`ShardGuard::check`], append to the WAL with [`ShardGuard::expected`],
//! [`ShardGuard::apply`] with the LSN, unlock. Flush: [`State::lock_all`] +
//! [`AllGuard::take_cut`], then [`State::complete_cut`] or
//! [`State::abort_cut`]. Checkpoint: [`AllGuard::snapshot`] and
//! [`State::restore`].
//!
//! Each dirty entry has three layers: the *base* (what the database holds
//! as far as known, [`Base`]), the change *in flight* (in the cut being
//! written), and the *pending* change (accepted since). Reads fold them in
//! that order; `Put`/`Delete` are last-write-wins and `Add`s sum (see
//! [`Change`]). Dirty entries are never evicted.

mod clean;
mod coalesce;
mod entry;
mod error;
mod limits;
mod snapshot;
mod state;
pub mod types;

pub use coalesce::Base;
pub use error::{Error, Result};
pub use limits::{LimitKind, Limits};
pub use snapshot::{Snapshot, SnapshotCut, SnapshotEntry, SnapshotLayer};
pub use state::{AllGuard, CoreStats, LoadTicket, Lookup, ShardGuard, State, DEFAULT_SHARDS};
pub use types::*;
