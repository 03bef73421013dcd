//! The one error type of this crate.

use crate::types::{Key, Lsn};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a write was refused or a state transition could not happen.
///
/// Every refused write leaves the state unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is longer than [`Limits::max_key_bytes`](crate::Limits::max_key_bytes).
    #[error("key of {len} bytes exceeds the limit of {max} bytes (key starts with {:?})", prefix(.key))]
    KeyTooLarge {
        /// The refused key.
        key: Key,
        /// Its length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The value is longer than [`Limits::max_value_bytes`](crate::Limits::max_value_bytes).
    #[error("value of {len} bytes for key {:?} exceeds the limit of {max} bytes", prefix(.key))]
    ValueTooLarge {
        /// The key written.
        key: Key,
        /// The value's length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// `add` on a key whose current value is a `Bytes` record, not a counter.
    #[error("add on key {:?}, which holds a bytes value, not a counter", prefix(.key))]
    TypeMismatch {
        /// The key written.
        key: Key,
    },
    /// The counter (or a pending sum of deltas) would leave the `i64` range.
    #[error("adding {delta} to counter {:?} would overflow i64", prefix(.key))]
    CounterOverflow {
        /// The key written.
        key: Key,
        /// The refused delta.
        delta: i64,
    },
    /// A delta record's per-column sum (pending, or with the known row)
    /// would leave the `i64` range.
    #[error("adding {deltas:?} to the counter columns of {:?} would overflow i64", prefix(.key))]
    ColumnsOverflow {
        /// The key written.
        key: Key,
        /// The refused deltas, one per column.
        deltas: Vec<i64>,
    },
    /// A per-column add on a key that holds a counter, an encoded record,
    /// or a delta record of another column count.
    #[error("add of {columns} column deltas on key {:?}, which holds a counter, an encoded record or another number of columns", prefix(.key))]
    ColumnsMismatch {
        /// The key written.
        key: Key,
        /// Columns in the refused add.
        columns: usize,
    },
    /// A key was used with the guard of another shard.
    #[error("key {:?} belongs to shard {key_shard}, not to the locked shard {locked}", prefix(.key))]
    WrongShard {
        /// The key.
        key: Key,
        /// The shard that owns the key.
        key_shard: usize,
        /// The shard the guard holds.
        locked: usize,
    },
    /// `take_cut` while another cut is still in flight.
    #[error("a cut at position {position} is still in flight; complete or abort it first")]
    CutInFlight {
        /// The position of the cut in flight.
        position: Lsn,
    },
    /// `complete_cut` with no cut in flight.
    #[error("no cut is in flight")]
    NoCutInFlight,
    /// `complete_cut` got a different number of outcomes than the cut has items.
    #[error("the cut at position {position} has {items} items but {outcomes} outcomes were given")]
    OutcomeCountMismatch {
        /// The position of the cut in flight.
        position: Lsn,
        /// Items in the cut.
        items: usize,
        /// Outcomes given.
        outcomes: usize,
    },
    /// A snapshot handed to [`State::restore`](crate::State::restore) is not
    /// internally consistent.
    #[error("invalid snapshot at position {position}: {reason} (key {:?})", .key.as_deref().map(prefix))]
    InvalidSnapshot {
        /// The snapshot's position.
        position: Lsn,
        /// The offending key, when one is to blame.
        key: Option<Key>,
        /// What is inconsistent.
        reason: &'static str,
    },
}

/// At most 64 bytes of a key (cut at a char boundary), so huge keys do not
/// flood logs.
fn prefix(key: &str) -> &str {
    let mut end = key.len().min(64);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_truncates_long_keys_at_a_char_boundary() {
        let key: Key = "é".repeat(100).into();
        let err = Error::KeyTooLarge {
            key: key.clone(),
            len: key.len(),
            max: 10,
        };
        let shown = err.to_string();
        assert_eq!(
            shown,
            format!(
                "key of 200 bytes exceeds the limit of 10 bytes (key starts with {:?})",
                "é".repeat(32)
            )
        );
    }
}
