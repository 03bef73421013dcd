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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    //! Golden bytes: WAL records and checkpoints hold these types in bincode
    //! 1.3.3's fixint little-endian encoding (the root's codec). Old data
    //! must keep decoding: new variants go last, the old ones keep their bytes.

    use super::*;
    use crate::{Base, Snapshot, SnapshotEntry, SnapshotLayer};

    fn enc<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::serialize(v).unwrap()
    }

    fn u32le(n: u32) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    fn i64le(n: i64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    #[test]
    fn old_variants_keep_their_bytes_and_decode() {
        let add5 = [0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(enc(&Change::Add(5)), add5);
        assert_eq!(
            bincode::deserialize::<Change>(&add5).unwrap(),
            Change::Add(5)
        );
        let put_bytes = [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b'];
        let v = Change::Put(Value::Bytes(Arc::from(&b"ab"[..])));
        assert_eq!(enc(&v), put_bytes);
        assert_eq!(bincode::deserialize::<Change>(&put_bytes).unwrap(), v);
        assert_eq!(enc(&Change::Delete), [2, 0, 0, 0]);
        assert_eq!(
            enc(&Value::Int(-1)),
            [0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255]
        );
    }

    #[test]
    fn delta_record_variants_are_frozen() {
        let ints = Value::Ints(Arc::from(&[1i64, -2][..]));
        let want = [u32le(2), i64le(2), i64le(1), i64le(-2)].concat();
        assert_eq!(enc(&ints), want);
        assert_eq!(bincode::deserialize::<Value>(&want).unwrap(), ints);

        let add = Change::AddCols(Arc::from(&[3i64, 0][..]));
        let want = [u32le(3), i64le(2), i64le(3), i64le(0)].concat();
        assert_eq!(enc(&add), want);
        assert_eq!(bincode::deserialize::<Change>(&want).unwrap(), add);

        let put = Change::Put(Value::Ints(Arc::from(&[7i64][..])));
        let want = [u32le(1), u32le(2), i64le(1), i64le(7)].concat();
        assert_eq!(enc(&put), want);
    }

    /// A checkpoint of a dirty delta record: base row known, a per-column
    /// add pending.
    #[test]
    fn snapshot_of_a_delta_record_is_frozen() {
        let snap = Snapshot {
            position: 9,
            entries: vec![SnapshotEntry {
                key: Key::from("p"),
                base: Base::Row {
                    version: 2,
                    value: Value::Ints(Arc::from(&[5i64, 6][..])),
                },
                in_flight: None,
                pending: Some(SnapshotLayer {
                    change: Change::AddCols(Arc::from(&[1i64, 0][..])),
                    first_lsn: 8,
                }),
            }],
            cut: None,
        };
        let want = [
            i64le(9),      // position
            i64le(1),      // one entry
            i64le(1),      // key length
            b"p".to_vec(), // key
            u32le(4),      // Base::Row
            i64le(2),      // version
            u32le(2),      // Value::Ints
            i64le(2),      // two columns
            i64le(5),
            i64le(6),
            vec![0],  // in_flight: None
            vec![1],  // pending: Some
            u32le(3), // Change::AddCols
            i64le(2),
            i64le(1),
            i64le(0),
            i64le(8), // first_lsn
            vec![0],  // cut: None
        ]
        .concat();
        assert_eq!(enc(&snap), want);
        assert_eq!(bincode::deserialize::<Snapshot>(&want).unwrap(), snap);
    }
}
