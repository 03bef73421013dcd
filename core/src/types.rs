//! The vocabulary shared by the cache and the SQL writer: keys, values,
//! pending changes, expected versions and the flush hand-off.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A WAL log sequence number. Monotonic for the life of a WAL directory.
pub type Lsn = u64;

/// A key in its canonical text form (the SQL key column is text).
pub type Key = Arc<str>;

/// A stored value: a counter, an encoded record or a delta record.
///
/// Encoded (bincode, WAL and checkpoints) as the variant index then the
/// payload: new variants only ever go at the end, so old data decodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A counter (BIGINT in SQL). `add` applies to it.
    Int(i64),
    /// A record, encoded by the codec; the writer maps it to columns.
    Bytes(Arc<[u8]>),
    /// A delta record: one i64 per counter column, in column order.
    /// `Change::AddCols` applies to it.
    Ints(Arc<[i64]>),
}

/// What the cache believes the database row's version is, for the
/// conditional statements a put or delete becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Expected {
    /// Not known (the row was never loaded): the write is unconditional.
    Any,
    /// The row is known not to exist: insert, and a present row is a conflict.
    Absent,
    /// The row is known at this version: update/delete only at this version.
    Version(i64),
}

/// A coalesced pending change for one key.
///
/// Coalescing: `Put`/`Delete` are last-write-wins; `Add` deltas sum; an
/// `Add` after a `Put(Int)` folds into the put, after a `Delete` it becomes
/// `Put(Int(delta))`. `AddCols` is `Add` per column: deltas sum element-wise
/// (same length), fold into a `Put(Ints)`, and after a `Delete` become
/// `Put(Ints(deltas))`. Sums are checked: an overflow refuses the write.
///
/// Encoded like [`Value`]: new variants only at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Counter increment, flushed as `value = value + d, version = version + 1`.
    Add(i64),
    /// Set the value, flushed as a versioned upsert.
    Put(Value),
    /// Remove the row, flushed as a versioned delete.
    Delete,
    /// Delta-record increment, one delta per counter column, flushed as
    /// `c = c + Δ` per column (commutative: never conflicts).
    AddCols(Arc<[i64]>),
}

/// One key's coalesced change, as handed to the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushItem {
    /// The key.
    pub key: Key,
    /// The coalesced change since the last flush.
    pub change: Change,
    /// The version the change was derived from (ignored for `Add`).
    pub expected: Expected,
}

/// A consistent cut of the dirty state: every write with LSN `<= position`
/// and none after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The WAL position this cut covers (inclusive).
    pub position: Lsn,
    /// One item per dirty key.
    pub items: Vec<FlushItem>,
}

/// What became of one [`FlushItem`] once its batch committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// The database now holds this row; `value`/`version` are the row as
    /// written when the backend could report it, `None` when it could not.
    Written {
        /// Row version after the write, if known.
        version: Option<i64>,
        /// Row value after the write, if known (counters: the new total).
        value: Option<Value>,
    },
    /// The row was deleted (or was already absent for a blind delete).
    Deleted,
    /// The expected version did not match and the policy kept the database
    /// row; `version`/`value` are the database's row (`None`: no row).
    ConflictKeptDatabase {
        /// The database row's version, `None` when there is no row.
        version: Option<i64>,
        /// The database row's value, `None` when there is no row.
        value: Option<Value>,
    },
    /// The row failed permanently and was written to the dead-letter table.
    DeadLettered,
}
