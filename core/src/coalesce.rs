//! Coalescing rules and the knowledge an entry has of its database row.
//!
//! Two operations, both pure: [`coalesce`] merges a newer change into an
//! older one (what the next flush sends), [`fold`] applies a change to a
//! visible state (what a read sees). The checked forms refuse overflow and
//! `add` on bytes; the lenient forms (used only where [`check`] already
//! passed, or on reads) never fail.
//!
//! [`check`]: crate::ShardGuard::check

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::types::{Change, Expected, Value};

/// What the cache knows of the database row under a dirty entry: its version
/// (for the `Expected` of the next put/delete) and its value (for reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Base {
    /// Nothing known: a put is unconditional, an add reads as a delta.
    Unknown,
    /// The row is known not to exist.
    Absent,
    /// The row was known absent but may have changed since (invalidated);
    /// a put still expects it absent, reads do not trust it.
    ExpectAbsent,
    /// The row's version is known, its value is not.
    Version(i64),
    /// Version and value are known.
    Row {
        /// Database row version.
        version: i64,
        /// Database row value.
        value: Value,
    },
    /// The value is known (we wrote it) but the backend did not report the version.
    Value(Value),
}

impl Base {
    /// The `Expected` a put or delete derived from this base carries.
    pub fn expected(&self) -> Expected {
        match self {
            Base::Unknown | Base::Value(_) => Expected::Any,
            Base::Absent | Base::ExpectAbsent => Expected::Absent,
            Base::Version(v) | Base::Row { version: v, .. } => Expected::Version(*v),
        }
    }

    /// The base as a read sees it.
    #[cfg(test)]
    pub(crate) fn visible(&self) -> Visible {
        match self {
            Base::Unknown | Base::ExpectAbsent | Base::Version(_) => Visible::Unknown,
            Base::Absent => Visible::Absent,
            Base::Row { value, .. } | Base::Value(value) => Visible::Known(value.clone()),
        }
    }

    /// Knowledge adopted from the `Expected` a WAL record carried, when the
    /// entry knows nothing itself (replay into a fresh state).
    pub(crate) fn from_expected(expected: Expected) -> Base {
        match expected {
            Expected::Any => Base::Unknown,
            // The record proves the version, not that the value is still absent.
            Expected::Absent => Base::ExpectAbsent,
            Expected::Version(v) => Base::Version(v),
        }
    }

    /// Forget the value (another writer changed the row), keep the version
    /// so our next put still detects the conflict.
    pub(crate) fn invalidated(&self) -> Base {
        match self {
            Base::Unknown | Base::Value(_) => Base::Unknown,
            Base::Absent | Base::ExpectAbsent => Base::ExpectAbsent,
            Base::Version(v) | Base::Row { version: v, .. } => Base::Version(*v),
        }
    }

    /// Bytes of value held, for dirty-byte accounting.
    #[cfg(test)]
    pub(crate) fn payload(&self) -> usize {
        match self {
            Base::Row { value, .. } | Base::Value(value) => value_payload(value),
            _ => 0,
        }
    }
}

/// A state as a read sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Visible {
    /// Nothing known.
    Unknown,
    /// No row.
    Absent,
    /// This value.
    Known(Value),
    /// Unknown base plus this sum of adds.
    Delta(i64),
    /// Unknown base plus these per-column sums of `AddCols` (a delta record).
    DeltaCols(Arc<[i64]>),
}

/// Why a change cannot be merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FoldError {
    /// A sum leaves the i64 range.
    Overflow,
    /// `add` on a bytes value, `AddCols` on a counter (or `Add` on a delta
    /// record), or `AddCols` of another column count.
    Mismatch,
}

/// Element-wise checked sum of two delta rows of the same length.
pub(crate) fn add_cols(a: &[i64], d: &[i64]) -> Result<Arc<[i64]>, FoldError> {
    if a.len() != d.len() {
        return Err(FoldError::Mismatch);
    }
    a.iter()
        .zip(d)
        .map(|(x, y)| x.checked_add(*y).ok_or(FoldError::Overflow))
        .collect()
}

/// Element-wise wrapping sum; a missing column counts as 0.
fn add_cols_wrapping(a: &[i64], d: &[i64]) -> Arc<[i64]> {
    (0..a.len().max(d.len()))
        .map(|i| {
            a.get(i)
                .copied()
                .unwrap_or(0)
                .wrapping_add(d.get(i).copied().unwrap_or(0))
        })
        .collect()
}

/// Merges `newer` into `older` (the pending change since the last flush).
pub(crate) fn coalesce(older: Option<&Change>, newer: &Change) -> Result<Change, FoldError> {
    match (older, newer) {
        (_, Change::Put(v)) => Ok(Change::Put(v.clone())),
        (_, Change::Delete) => Ok(Change::Delete),
        (None, Change::Add(d)) => Ok(Change::Add(*d)),
        (Some(Change::Add(a)), Change::Add(d)) => a
            .checked_add(*d)
            .map(Change::Add)
            .ok_or(FoldError::Overflow),
        (Some(Change::Put(Value::Int(x))), Change::Add(d)) => x
            .checked_add(*d)
            .map(|s| Change::Put(Value::Int(s)))
            .ok_or(FoldError::Overflow),
        (
            Some(Change::Put(Value::Bytes(_) | Value::Ints(_)) | Change::AddCols(_)),
            Change::Add(_),
        ) => Err(FoldError::Mismatch),
        (Some(Change::Delete), Change::Add(d)) => Ok(Change::Put(Value::Int(*d))),
        (None, Change::AddCols(d)) => Ok(Change::AddCols(d.clone())),
        (Some(Change::AddCols(a)), Change::AddCols(d)) => add_cols(a, d).map(Change::AddCols),
        (Some(Change::Put(Value::Ints(x))), Change::AddCols(d)) => {
            add_cols(x, d).map(|s| Change::Put(Value::Ints(s)))
        }
        (Some(Change::Delete), Change::AddCols(d)) => Ok(Change::Put(Value::Ints(d.clone()))),
        (
            Some(Change::Add(_) | Change::Put(Value::Int(_) | Value::Bytes(_))),
            Change::AddCols(_),
        ) => Err(FoldError::Mismatch),
    }
}

/// [`coalesce`] for a change that already passed `check`: cannot fail there;
/// if it is called without `check`, sums wrap and an add over a bytes put
/// counts from zero.
pub(crate) fn coalesce_lenient(older: Option<&Change>, newer: &Change) -> Change {
    match coalesce(older, newer) {
        Ok(c) => c,
        Err(_) => match (older, newer) {
            (Some(Change::Add(a)), Change::Add(d)) => Change::Add(a.wrapping_add(*d)),
            (Some(Change::Put(Value::Int(x))), Change::Add(d)) => {
                Change::Put(Value::Int(x.wrapping_add(*d)))
            }
            (_, Change::Add(d)) => Change::Put(Value::Int(*d)),
            (Some(Change::AddCols(a)), Change::AddCols(d)) => {
                Change::AddCols(add_cols_wrapping(a, d))
            }
            (Some(Change::Put(Value::Ints(x))), Change::AddCols(d)) => {
                Change::Put(Value::Ints(add_cols_wrapping(x, d)))
            }
            (_, Change::AddCols(d)) => Change::Put(Value::Ints(d.clone())),
            (_, other) => other.clone(),
        },
    }
}

/// Applies `change` to what a read would see.
pub(crate) fn fold(state: Visible, change: &Change) -> Result<Visible, FoldError> {
    match (state, change) {
        (_, Change::Put(v)) => Ok(Visible::Known(v.clone())),
        (_, Change::Delete) => Ok(Visible::Absent),
        (Visible::Unknown, Change::Add(d)) => Ok(Visible::Delta(*d)),
        (Visible::Delta(a), Change::Add(d)) => a
            .checked_add(*d)
            .map(Visible::Delta)
            .ok_or(FoldError::Overflow),
        (Visible::Absent, Change::Add(d)) => Ok(Visible::Known(Value::Int(*d))),
        (Visible::Known(Value::Int(x)), Change::Add(d)) => x
            .checked_add(*d)
            .map(|s| Visible::Known(Value::Int(s)))
            .ok_or(FoldError::Overflow),
        (
            Visible::Known(Value::Bytes(_) | Value::Ints(_)) | Visible::DeltaCols(_),
            Change::Add(_),
        ) => Err(FoldError::Mismatch),
        (Visible::Unknown, Change::AddCols(d)) => Ok(Visible::DeltaCols(d.clone())),
        (Visible::DeltaCols(a), Change::AddCols(d)) => add_cols(&a, d).map(Visible::DeltaCols),
        (Visible::Absent, Change::AddCols(d)) => Ok(Visible::Known(Value::Ints(d.clone()))),
        (Visible::Known(Value::Ints(x)), Change::AddCols(d)) => {
            add_cols(&x, d).map(|s| Visible::Known(Value::Ints(s)))
        }
        (
            Visible::Known(Value::Int(_) | Value::Bytes(_)) | Visible::Delta(_),
            Change::AddCols(_),
        ) => Err(FoldError::Mismatch),
    }
}

/// [`fold`] for reads: sums wrap and an add over bytes leaves the bytes.
/// Both only happen when the database changed under a dirty entry (a
/// conflict outcome reported a row of another type or size); the flush of
/// that add then fails in the database, where it is reported.
pub(crate) fn fold_lenient(state: Visible, change: &Change) -> Visible {
    match (state, change) {
        (Visible::Delta(a), Change::Add(d)) => Visible::Delta(a.wrapping_add(*d)),
        (Visible::Known(Value::Int(x)), Change::Add(d)) => {
            Visible::Known(Value::Int(x.wrapping_add(*d)))
        }
        (Visible::DeltaCols(a), Change::AddCols(d)) => Visible::DeltaCols(add_cols_wrapping(&a, d)),
        (Visible::Known(Value::Ints(x)), Change::AddCols(d)) => {
            Visible::Known(Value::Ints(add_cols_wrapping(&x, d)))
        }
        (
            bytes @ (Visible::Known(Value::Bytes(_) | Value::Ints(_)) | Visible::DeltaCols(_)),
            Change::Add(_),
        ) => bytes,
        (
            other @ (Visible::Known(Value::Int(_) | Value::Bytes(_)) | Visible::Delta(_)),
            Change::AddCols(_),
        ) => other,
        (state, change) => match fold(state, change) {
            Ok(v) => v,
            // Unreachable: every failing pair is matched above.
            Err(_) => Visible::Unknown,
        },
    }
}

/// Bytes of a value, for accounting: the record length, 8 for a counter.
pub(crate) fn value_payload(v: &Value) -> usize {
    match v {
        Value::Int(_) => 8,
        Value::Bytes(b) => b.len(),
        Value::Ints(c) => 8 * c.len(),
    }
}

/// Bytes of a change, for accounting.
pub(crate) fn change_payload(c: &Change) -> usize {
    match c {
        Change::Add(_) => 8,
        Change::Put(v) => value_payload(v),
        Change::Delete => 0,
        Change::AddCols(d) => 8 * d.len(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn bytes(s: &str) -> Value {
        Value::Bytes(Arc::from(s.as_bytes()))
    }
    fn put_i(x: i64) -> Change {
        Change::Put(Value::Int(x))
    }
    fn put_b(s: &str) -> Change {
        Change::Put(bytes(s))
    }

    /// Every pair of (older, newer) with its exact merged change.
    #[test]
    fn coalesce_table() {
        use Change::{Add, Delete};
        let cases: Vec<(Option<Change>, Change, Result<Change, FoldError>)> = vec![
            (None, Add(5), Ok(Add(5))),
            (None, put_i(7), Ok(put_i(7))),
            (None, put_b("a"), Ok(put_b("a"))),
            (None, Delete, Ok(Delete)),
            (Some(Add(5)), Add(-7), Ok(Add(-2))),
            (Some(Add(5)), put_i(1), Ok(put_i(1))),
            (Some(Add(5)), put_b("x"), Ok(put_b("x"))),
            (Some(Add(5)), Delete, Ok(Delete)),
            (Some(put_i(10)), Add(3), Ok(put_i(13))),
            (Some(put_i(10)), put_i(4), Ok(put_i(4))),
            (Some(put_i(10)), put_b("y"), Ok(put_b("y"))),
            (Some(put_i(10)), Delete, Ok(Delete)),
            (Some(put_b("a")), Add(1), Err(FoldError::Mismatch)),
            (Some(put_b("a")), put_b("b"), Ok(put_b("b"))),
            (Some(put_b("a")), put_i(2), Ok(put_i(2))),
            (Some(put_b("a")), Delete, Ok(Delete)),
            (Some(Delete), Add(4), Ok(put_i(4))),
            (Some(Delete), put_i(9), Ok(put_i(9))),
            (Some(Delete), put_b("z"), Ok(put_b("z"))),
            (Some(Delete), Delete, Ok(Delete)),
            (Some(Add(i64::MAX)), Add(1), Err(FoldError::Overflow)),
            (Some(Add(i64::MIN)), Add(-1), Err(FoldError::Overflow)),
            (Some(put_i(i64::MAX)), Add(1), Err(FoldError::Overflow)),
            (Some(Add(i64::MAX)), Add(-1), Ok(Add(i64::MAX - 1))),
        ];
        for (i, (older, newer, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                coalesce(older.as_ref(), &newer),
                want,
                "case {i}: {older:?} then {newer:?}"
            );
        }
    }

    fn ints(c: &[i64]) -> Value {
        Value::Ints(Arc::from(c))
    }
    fn cols(c: &[i64]) -> Change {
        Change::AddCols(Arc::from(c))
    }

    /// Every pair involving a per-column add, with its exact result.
    #[test]
    fn coalesce_table_of_delta_records() {
        use Change::{Add, Delete};
        let put_c = |c: &[i64]| Change::Put(ints(c));
        let cases: Vec<(Option<Change>, Change, Result<Change, FoldError>)> = vec![
            (None, cols(&[1, 2]), Ok(cols(&[1, 2]))),
            (Some(cols(&[1, 2])), cols(&[10, -5]), Ok(cols(&[11, -3]))),
            (Some(put_c(&[4, 4])), cols(&[1, 0]), Ok(put_c(&[5, 4]))),
            (Some(Delete), cols(&[1, 2]), Ok(put_c(&[1, 2]))),
            (Some(cols(&[1, 2])), put_c(&[0, 0]), Ok(put_c(&[0, 0]))),
            (Some(cols(&[1, 2])), Delete, Ok(Delete)),
            (Some(cols(&[1, 2])), cols(&[1]), Err(FoldError::Mismatch)),
            (Some(Add(1)), cols(&[1, 2]), Err(FoldError::Mismatch)),
            (Some(cols(&[1, 2])), Add(1), Err(FoldError::Mismatch)),
            (Some(put_i(3)), cols(&[1]), Err(FoldError::Mismatch)),
            (Some(put_b("a")), cols(&[1]), Err(FoldError::Mismatch)),
            (Some(put_c(&[1])), Add(1), Err(FoldError::Mismatch)),
            (
                Some(cols(&[0, i64::MAX])),
                cols(&[0, 1]),
                Err(FoldError::Overflow),
            ),
            (
                Some(put_c(&[i64::MIN, 0])),
                cols(&[-1, 0]),
                Err(FoldError::Overflow),
            ),
        ];
        for (i, (older, newer, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                coalesce(older.as_ref(), &newer),
                want,
                "case {i}: {older:?} then {newer:?}"
            );
        }
        assert_eq!(
            coalesce_lenient(Some(&cols(&[i64::MAX, 1])), &cols(&[1, 1])),
            cols(&[i64::MIN, 2])
        );
        assert_eq!(coalesce_lenient(Some(&Add(1)), &cols(&[2])), put_c(&[2]));
    }

    #[test]
    fn fold_table_of_delta_records() {
        use Visible::{Absent, Delta, DeltaCols, Known, Unknown};
        let dc = |c: &[i64]| DeltaCols(Arc::from(c));
        let cases: Vec<(Visible, Change, Result<Visible, FoldError>)> = vec![
            (Unknown, cols(&[1, 2]), Ok(dc(&[1, 2]))),
            (dc(&[1, 2]), cols(&[3, 4]), Ok(dc(&[4, 6]))),
            (Absent, cols(&[1, 2]), Ok(Known(ints(&[1, 2])))),
            (
                Known(ints(&[10, 20])),
                cols(&[1, -2]),
                Ok(Known(ints(&[11, 18]))),
            ),
            (Known(ints(&[10, 20])), cols(&[1]), Err(FoldError::Mismatch)),
            (Known(Value::Int(1)), cols(&[1]), Err(FoldError::Mismatch)),
            (Delta(1), cols(&[1]), Err(FoldError::Mismatch)),
            (dc(&[1]), Change::Add(1), Err(FoldError::Mismatch)),
            (Known(ints(&[1])), Change::Add(1), Err(FoldError::Mismatch)),
            (dc(&[i64::MAX]), cols(&[1]), Err(FoldError::Overflow)),
            (dc(&[1, 2]), Change::Delete, Ok(Absent)),
        ];
        for (i, (state, change, want)) in cases.into_iter().enumerate() {
            let shown = format!("{state:?} then {change:?}");
            assert_eq!(fold(state, &change), want, "case {i}: {shown}");
        }
        assert_eq!(
            fold_lenient(Known(Value::Int(1)), &cols(&[1])),
            Known(Value::Int(1))
        );
        assert_eq!(fold_lenient(dc(&[i64::MAX]), &cols(&[1])), dc(&[i64::MIN]));
        assert_eq!(change_payload(&cols(&[1, 2, 3])), 24);
        assert_eq!(value_payload(&ints(&[1, 2])), 16);
    }

    #[test]
    fn coalesce_lenient_matches_checked_and_never_fails() {
        use Change::Add;
        assert_eq!(coalesce_lenient(Some(&Add(1)), &Add(2)), Add(3));
        assert_eq!(
            coalesce_lenient(Some(&Add(i64::MAX)), &Add(1)),
            Add(i64::MIN)
        );
        assert_eq!(
            coalesce_lenient(Some(&put_i(i64::MAX)), &Add(2)),
            put_i(i64::MIN + 1)
        );
        assert_eq!(coalesce_lenient(Some(&put_b("a")), &Add(2)), put_i(2));
        assert_eq!(
            coalesce_lenient(Some(&put_b("a")), &Change::Delete),
            Change::Delete
        );
    }

    /// Every (visible state, change) pair with its exact result.
    #[test]
    fn fold_table() {
        use Change::{Add, Delete};
        use Visible::{Absent, Delta, Known, Unknown};
        let cases: Vec<(Visible, Change, Result<Visible, FoldError>)> = vec![
            (Unknown, Add(3), Ok(Delta(3))),
            (Unknown, put_i(1), Ok(Known(Value::Int(1)))),
            (Unknown, Delete, Ok(Absent)),
            (Absent, Add(3), Ok(Known(Value::Int(3)))),
            (Absent, put_b("q"), Ok(Known(bytes("q")))),
            (Delta(2), Add(3), Ok(Delta(5))),
            (Delta(2), put_i(9), Ok(Known(Value::Int(9)))),
            (Delta(2), Delete, Ok(Absent)),
            (Known(Value::Int(10)), Add(-3), Ok(Known(Value::Int(7)))),
            (Known(Value::Int(10)), Delete, Ok(Absent)),
            (Known(bytes("r")), Add(1), Err(FoldError::Mismatch)),
            (Known(bytes("r")), put_i(1), Ok(Known(Value::Int(1)))),
            (
                Known(Value::Int(i64::MAX)),
                Add(1),
                Err(FoldError::Overflow),
            ),
            (Delta(i64::MIN), Add(-1), Err(FoldError::Overflow)),
        ];
        for (i, (state, change, want)) in cases.into_iter().enumerate() {
            let shown = format!("{state:?} then {change:?}");
            assert_eq!(fold(state, &change), want, "case {i}: {shown}");
        }
        assert_eq!(fold_lenient(Known(bytes("r")), &Add(1)), Known(bytes("r")));
        assert_eq!(fold_lenient(Delta(i64::MAX), &Add(1)), Delta(i64::MIN));
        assert_eq!(
            fold_lenient(Known(Value::Int(i64::MAX)), &Add(1)),
            Known(Value::Int(i64::MIN))
        );
        assert_eq!(fold_lenient(Absent, &Add(1)), Known(Value::Int(1)));
    }

    #[test]
    fn base_expected_visible_and_invalidation() {
        let row = Base::Row {
            version: 4,
            value: Value::Int(2),
        };
        let cases = [
            (
                Base::Unknown,
                Expected::Any,
                Visible::Unknown,
                Base::Unknown,
            ),
            (
                Base::Absent,
                Expected::Absent,
                Visible::Absent,
                Base::ExpectAbsent,
            ),
            (
                Base::ExpectAbsent,
                Expected::Absent,
                Visible::Unknown,
                Base::ExpectAbsent,
            ),
            (
                Base::Version(3),
                Expected::Version(3),
                Visible::Unknown,
                Base::Version(3),
            ),
            (
                row.clone(),
                Expected::Version(4),
                Visible::Known(Value::Int(2)),
                Base::Version(4),
            ),
            (
                Base::Value(bytes("v")),
                Expected::Any,
                Visible::Known(bytes("v")),
                Base::Unknown,
            ),
        ];
        for (base, expected, visible, invalidated) in cases {
            assert_eq!(base.expected(), expected, "{base:?}");
            assert_eq!(base.visible(), visible, "{base:?}");
            assert_eq!(base.invalidated(), invalidated, "{base:?}");
        }
        assert_eq!(Base::from_expected(Expected::Any), Base::Unknown);
        assert_eq!(Base::from_expected(Expected::Absent), Base::ExpectAbsent);
        assert_eq!(Base::from_expected(Expected::Version(8)), Base::Version(8));
    }

    #[test]
    fn payload_sizes() {
        assert_eq!(change_payload(&Change::Add(1)), 8);
        assert_eq!(change_payload(&Change::Delete), 0);
        assert_eq!(change_payload(&put_b("hello")), 5);
        assert_eq!(
            Base::Row {
                version: 1,
                value: bytes("abc")
            }
            .payload(),
            3
        );
        assert_eq!(Base::Version(1).payload(), 0);
    }
}
