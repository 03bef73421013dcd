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
//!
//! ```
//! use writebehind_core::{Change, ItemOutcome, Key, Limits, Lookup, State, Value};
//!
//! let state = State::new(Limits::default());
//! let key = Key::from("page:home");
//! for lsn in 1..=3 {
//!     let change = Change::Add(1);
//!     let mut shard = state.lock(&key);
//!     let expected = shard.check_expected(&key, &change)?; // goes into the WAL record
//!     shard.apply(key.clone(), change, expected, lsn);
//! }
//! // Base unknown: the caller adds the database value.
//! assert_eq!(state.get(&key), Lookup::Delta(3));
//!
//! let cut = state.lock_all().take_cut(4)?;
//! assert_eq!(cut.items[0].change, Change::Add(3));
//! // The writer committed the batch and reported the row.
//! state.complete_cut(&[ItemOutcome::Written { version: Some(1), value: Some(Value::Int(3)) }])?;
//! assert_eq!(state.get(&key), Lookup::Value(Value::Int(3))); // now a clean row
//! assert_eq!(state.dirty_entries(), 0);
//! # Ok::<(), writebehind_core::Error>(())
//! ```

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
pub use limits::{LimitKind, Limits, Refresh};
pub use snapshot::{Snapshot, SnapshotCut, SnapshotEntry, SnapshotLayer};
pub use state::{AllGuard, CoreStats, LoadTicket, Lookup, Read, ShardGuard, State, DEFAULT_SHARDS};
pub use types::*;
