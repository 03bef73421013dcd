//! One dirty entry, laid out compactly: a dirty counter costs one 72-byte
//! node plus one table slot (see the memory figures in the README).

use std::sync::Arc;

use crate::coalesce::{
    change_payload, coalesce, coalesce_lenient, fold, fold_lenient, Base, FoldError, Visible,
};
use crate::snapshot::{SnapshotEntry, SnapshotLayer};
use crate::types::{Change, Expected, ItemOutcome, Key, Lsn, Value};

/// [`Base`] in 24 bytes: counters inline, a known bytes row boxed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    Unknown,
    Absent,
    ExpectAbsent,
    Version(i64),
    RowInt { version: i64, value: i64 },
    RowBytes(Box<(i64, Arc<[u8]>)>),
    RowInts(Box<(i64, Arc<[i64]>)>),
    Int(i64),
    Bytes(Arc<[u8]>),
    Ints(Arc<[i64]>),
}

impl Known {
    pub(crate) fn from_base(base: Base) -> Known {
        match base {
            Base::Unknown => Known::Unknown,
            Base::Absent => Known::Absent,
            Base::ExpectAbsent => Known::ExpectAbsent,
            Base::Version(v) => Known::Version(v),
            Base::Row {
                version,
                value: Value::Int(value),
            } => Known::RowInt { version, value },
            Base::Row {
                version,
                value: Value::Bytes(b),
            } => Known::RowBytes(Box::new((version, b))),
            Base::Row {
                version,
                value: Value::Ints(c),
            } => Known::RowInts(Box::new((version, c))),
            Base::Value(Value::Int(v)) => Known::Int(v),
            Base::Value(Value::Bytes(b)) => Known::Bytes(b),
            Base::Value(Value::Ints(c)) => Known::Ints(c),
        }
    }

    pub(crate) fn to_base(&self) -> Base {
        match self {
            Known::Unknown => Base::Unknown,
            Known::Absent => Base::Absent,
            Known::ExpectAbsent => Base::ExpectAbsent,
            Known::Version(v) => Base::Version(*v),
            Known::RowInt { version, value } => Base::Row {
                version: *version,
                value: Value::Int(*value),
            },
            Known::RowBytes(row) => Base::Row {
                version: row.0,
                value: Value::Bytes(row.1.clone()),
            },
            Known::RowInts(row) => Base::Row {
                version: row.0,
                value: Value::Ints(row.1.clone()),
            },
            Known::Int(v) => Base::Value(Value::Int(*v)),
            Known::Bytes(b) => Base::Value(Value::Bytes(b.clone())),
            Known::Ints(c) => Base::Value(Value::Ints(c.clone())),
        }
    }

    pub(crate) fn expected(&self) -> Expected {
        match self {
            Known::Unknown | Known::Int(_) | Known::Bytes(_) | Known::Ints(_) => Expected::Any,
            Known::Absent | Known::ExpectAbsent => Expected::Absent,
            Known::Version(version) | Known::RowInt { version, .. } => Expected::Version(*version),
            Known::RowBytes(row) => Expected::Version(row.0),
            Known::RowInts(row) => Expected::Version(row.0),
        }
    }

    pub(crate) fn visible(&self) -> Visible {
        match self {
            Known::Unknown | Known::ExpectAbsent | Known::Version(_) => Visible::Unknown,
            Known::Absent => Visible::Absent,
            Known::RowInt { value: v, .. } | Known::Int(v) => Visible::Known(Value::Int(*v)),
            Known::RowBytes(row) => Visible::Known(Value::Bytes(row.1.clone())),
            Known::Bytes(b) => Visible::Known(Value::Bytes(b.clone())),
            Known::RowInts(row) => Visible::Known(Value::Ints(row.1.clone())),
            Known::Ints(c) => Visible::Known(Value::Ints(c.clone())),
        }
    }

    pub(crate) fn payload(&self) -> usize {
        match self {
            Known::RowInt { .. } | Known::Int(_) => 8,
            Known::RowBytes(row) => row.1.len(),
            Known::Bytes(b) => b.len(),
            Known::RowInts(row) => 8 * row.1.len(),
            Known::Ints(c) => 8 * c.len(),
            _ => 0,
        }
    }

    pub(crate) fn invalidated(&self) -> Known {
        Known::from_base(self.to_base().invalidated())
    }

    /// Knowledge adopted from a WAL record's `Expected`.
    pub(crate) fn from_expected(expected: Expected) -> Known {
        Known::from_base(Base::from_expected(expected))
    }
}

/// The change handed to the writer in the cut in flight.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) change: Change,
    pub(crate) first_lsn: Lsn,
}

/// A change in flight with a newer one pending.
#[derive(Debug)]
pub(crate) struct Both {
    flight: InFlight,
    pending: Change,
}

/// The pending and in-flight changes in 24 bytes: the common "pending
/// only" case is inline, the rest (only while a cut is in flight) boxed.
#[derive(Debug)]
pub(crate) enum Layers {
    Pending(Change),
    InFlight(Box<InFlight>),
    Both(Box<Both>),
}

/// `coalesce_lenient(Some(&older), newer)`, summing a delta record's columns
/// in place when `older` holds the only reference to them (the common case:
/// a hot key's pending sum), so a write allocates nothing.
fn merge_into(mut older: Change, newer: &Change) -> Change {
    if let (Change::AddCols(a), Change::AddCols(d)) = (&mut older, newer) {
        if a.len() == d.len() {
            if let Some(cols) = Arc::get_mut(a) {
                for (x, y) in cols.iter_mut().zip(d.iter()) {
                    *x = x.wrapping_add(*y);
                }
                return older;
            }
        }
    }
    coalesce_lenient(Some(&older), newer)
}

/// One dirty key. Boxed in the table so a table slot is one pointer.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) key: Key,
    pub(crate) known: Known,
    pub(crate) layers: Layers,
    /// LSN of the oldest write in the pending change (unused without one).
    pub(crate) first_lsn: Lsn,
}

impl Node {
    pub(crate) fn new(key: Key, known: Known, change: Change, lsn: Lsn) -> Node {
        Node {
            key,
            known,
            layers: Layers::Pending(change),
            first_lsn: lsn,
        }
    }

    pub(crate) fn pending(&self) -> Option<&Change> {
        match &self.layers {
            Layers::Pending(c) => Some(c),
            Layers::InFlight(_) => None,
            Layers::Both(b) => Some(&b.pending),
        }
    }

    pub(crate) fn in_flight(&self) -> Option<&InFlight> {
        match &self.layers {
            Layers::Pending(_) => None,
            Layers::InFlight(f) => Some(f),
            Layers::Both(b) => Some(&b.flight),
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.key.len()
            + self.known.payload()
            + self.in_flight().map_or(0, |f| change_payload(&f.change))
            + self.pending().map_or(0, change_payload)
    }

    pub(crate) fn visible(&self) -> Visible {
        let mut v = self.known.visible();
        if let Some(f) = self.in_flight() {
            v = fold_lenient(v, &f.change);
        }
        if let Some(p) = self.pending() {
            v = fold_lenient(v, p);
        }
        v
    }

    pub(crate) fn oldest_lsn(&self) -> Lsn {
        match self.in_flight() {
            Some(f) => f.first_lsn,
            None => self.first_lsn,
        }
    }

    /// Would adding succeed? Checks every sum the entry may ever compute
    /// with it: the pending sum, the sum after an abort merges the in-flight
    /// change back, and the visible value either way.
    pub(crate) fn check_add(&self, change: &Change) -> Result<(), FoldError> {
        if let Change::AddCols(d) = change {
            if let Some(checked) = self.check_add_cols(d) {
                return checked;
            }
        }
        self.check_add_general(change)
    }

    /// [`check_add`](Self::check_add) of a delta record's columns when every
    /// layer is a column sum (or row) of the same width: the same checked
    /// sums, column by column, without building the intermediate changes.
    /// `None` for any other shape, which the general check decides.
    fn check_add_cols(&self, d: &[i64]) -> Option<Result<(), FoldError>> {
        let n = d.len();
        fn sums(c: Option<&Change>, n: usize) -> Option<Option<&[i64]>> {
            match c {
                None => Some(None),
                Some(Change::AddCols(a)) if a.len() == n => Some(Some(&a[..])),
                Some(_) => None,
            }
        }
        let pending = sums(self.pending(), n)?;
        let flight = sums(self.in_flight().map(|f| &f.change), n)?;
        // What a read sees of the row: nothing to overflow against when the
        // value is unknown or absent.
        let base: Option<&[i64]> = match &self.known {
            Known::Unknown | Known::Absent | Known::ExpectAbsent | Known::Version(_) => None,
            Known::RowInts(row) if row.1.len() == n => Some(&row.1),
            Known::Ints(c) if c.len() == n => Some(c),
            _ => return None,
        };
        let add = |a: i64, b: i64| a.checked_add(b).ok_or(FoldError::Overflow);
        let column = |i: usize| -> Result<(), FoldError> {
            let p = match pending {
                Some(a) => add(a[i], d[i])?,
                None => d[i],
            };
            let merged = match flight {
                Some(f) => add(f[i], p)?,
                None => p,
            };
            if let Some(b) = base {
                add(b[i], merged)?;
            }
            // Through the in-flight change leniently, as the general check.
            let seen = match (base, flight) {
                (Some(b), Some(f)) => Some(b[i].wrapping_add(f[i])),
                (Some(b), None) => Some(b[i]),
                (None, Some(f)) => Some(f[i]),
                (None, None) => None,
            };
            if let Some(v) = seen {
                add(v, p)?;
            }
            Ok(())
        };
        Some((0..n).try_for_each(column))
    }

    fn check_add_general(&self, change: &Change) -> Result<(), FoldError> {
        let pending = coalesce(self.pending(), change)?;
        let merged = match self.in_flight() {
            Some(f) => coalesce(Some(&f.change), &pending)?,
            None => pending.clone(),
        };
        fold(self.known.visible(), &merged)?;
        // Leniently through the in-flight change: an add in flight over a
        // base that turned out to be bytes is doomed already (the database
        // refuses it); it must not block a put that replaces it.
        let mut v = self.known.visible();
        if let Some(f) = self.in_flight() {
            v = fold_lenient(v, &f.change);
        }
        fold(v, &pending)?;
        Ok(())
    }

    /// Coalesces a checked change into the pending layer.
    pub(crate) fn push(&mut self, change: &Change, lsn: Lsn) {
        if self.pending().is_none() {
            self.first_lsn = lsn;
        }
        let layers = std::mem::replace(&mut self.layers, Layers::Pending(Change::Delete));
        self.layers = match layers {
            Layers::Pending(p) => Layers::Pending(merge_into(p, change)),
            Layers::InFlight(f) => Layers::Both(Box::new(Both {
                flight: *f,
                pending: coalesce_lenient(None, change),
            })),
            Layers::Both(mut b) => {
                let pending = std::mem::replace(&mut b.pending, Change::Delete);
                b.pending = merge_into(pending, change);
                Layers::Both(b)
            }
        };
    }

    /// Moves the pending change in flight; returns it (for the cut item).
    pub(crate) fn start_flight(&mut self) -> Option<Change> {
        let layers = std::mem::replace(&mut self.layers, Layers::Pending(Change::Delete));
        match layers {
            Layers::Pending(change) => {
                self.layers = Layers::InFlight(Box::new(InFlight {
                    change: change.clone(),
                    first_lsn: self.first_lsn,
                }));
                Some(change)
            }
            other => {
                self.layers = other;
                None
            }
        }
    }

    /// Drops the in-flight layer after its outcome; returns whether a
    /// pending change remains (else the entry is clean).
    pub(crate) fn land(&mut self, outcome: &ItemOutcome) -> bool {
        let layers = std::mem::replace(&mut self.layers, Layers::Pending(Change::Delete));
        let (flight, pending) = match layers {
            Layers::InFlight(f) => (f.change, None),
            Layers::Both(b) => (b.flight.change, Some(b.pending)),
            Layers::Pending(p) => {
                self.layers = Layers::Pending(p);
                return true;
            }
        };
        self.known = settle(&self.known, &flight, pending.as_ref(), outcome);
        match pending {
            Some(p) => {
                self.layers = Layers::Pending(p);
                true
            }
            None => false,
        }
    }

    /// Merges the in-flight change back under the pending one.
    pub(crate) fn unflight(&mut self) {
        let layers = std::mem::replace(&mut self.layers, Layers::Pending(Change::Delete));
        self.layers = match layers {
            Layers::InFlight(f) => {
                self.first_lsn = f.first_lsn;
                Layers::Pending(f.change)
            }
            Layers::Both(b) => {
                self.first_lsn = b.flight.first_lsn;
                // check() verified this merge when the pending change was accepted.
                Layers::Pending(coalesce_lenient(Some(&b.flight.change), &b.pending))
            }
            pending @ Layers::Pending(_) => pending,
        };
    }

    pub(crate) fn snapshot(&self) -> SnapshotEntry {
        SnapshotEntry {
            key: self.key.clone(),
            base: self.known.to_base(),
            in_flight: self.in_flight().map(|f| SnapshotLayer {
                change: f.change.clone(),
                first_lsn: f.first_lsn,
            }),
            pending: self.pending().map(|p| SnapshotLayer {
                change: p.clone(),
                first_lsn: self.first_lsn,
            }),
        }
    }

    /// Rebuilds a node from a snapshot entry; `None` if it has no change.
    pub(crate) fn from_snapshot(e: SnapshotEntry) -> Option<Node> {
        let known = Known::from_base(e.base);
        let (layers, first_lsn) = match (e.in_flight, e.pending) {
            (None, None) => return None,
            (None, Some(p)) => (Layers::Pending(p.change), p.first_lsn),
            (Some(f), None) => (
                Layers::InFlight(Box::new(InFlight {
                    change: f.change,
                    first_lsn: f.first_lsn,
                })),
                0,
            ),
            (Some(f), Some(p)) => (
                Layers::Both(Box::new(Both {
                    flight: InFlight {
                        change: f.change,
                        first_lsn: f.first_lsn,
                    },
                    pending: p.change,
                })),
                p.first_lsn,
            ),
        };
        Some(Node {
            key: e.key,
            known,
            layers,
            first_lsn,
        })
    }

    /// Heap bytes of the node and its boxes (not key or value allocations).
    pub(crate) fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Node>()
            + match &self.layers {
                Layers::Pending(_) => 0,
                Layers::InFlight(_) => std::mem::size_of::<InFlight>(),
                Layers::Both(_) => std::mem::size_of::<Both>(),
            }
            + match &self.known {
                Known::RowBytes(_) => std::mem::size_of::<(i64, Arc<[u8]>)>(),
                Known::RowInts(_) => std::mem::size_of::<(i64, Arc<[i64]>)>(),
                _ => 0,
            }
    }
}

/// What is known of the database row after the in-flight change's outcome.
fn settle(
    known: &Known,
    flight: &Change,
    pending: Option<&Change>,
    outcome: &ItemOutcome,
) -> Known {
    let base = match outcome {
        ItemOutcome::Written { .. } if matches!(flight, Change::Delete) => Base::Absent,
        ItemOutcome::Written { version, value } => {
            // A put's value is what we wrote; a counter's total is only
            // known when the backend reports it (other instances add too).
            let value = value.clone().or_else(|| match flight {
                Change::Put(v) => Some(v.clone()),
                _ => None,
            });
            match (*version, value) {
                (Some(version), Some(value)) => Base::Row { version, value },
                (Some(version), None) => Base::Version(version),
                (None, Some(value)) => Base::Value(value),
                (None, None) => Base::Unknown,
            }
        }
        ItemOutcome::Deleted => Base::Absent,
        ItemOutcome::ConflictKeptDatabase { .. }
            if matches!(pending, Some(Change::Put(_) | Change::Delete)) =>
        {
            // The pending put/delete was written over our dropped change:
            // had they coalesced it would carry the old expectation and
            // conflict too, so keep that expectation (and forget values).
            return known.invalidated();
        }
        ItemOutcome::ConflictKeptDatabase { version, value } => match (version, value) {
            (Some(version), Some(value)) => Base::Row {
                version: *version,
                value: value.clone(),
            },
            (Some(version), None) => Base::Version(*version),
            (None, _) => Base::Absent,
        },
        // The database did not change; neither does what we know of it.
        ItemOutcome::DeadLettered => return known.clone(),
    };
    Known::from_base(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_compact() {
        assert_eq!(std::mem::size_of::<Known>(), 24);
        assert_eq!(std::mem::size_of::<Layers>(), 24);
        assert_eq!(std::mem::size_of::<Node>(), 72);
    }

    use proptest::prelude::*;

    /// Column values that reach the edges of i64, where the checks bite.
    fn col() -> impl Strategy<Value = i64> {
        prop_oneof![
            3 => -2i64..=2,
            1 => Just(i64::MAX),
            1 => Just(i64::MIN),
            1 => any::<i64>(),
        ]
    }

    fn cols(n: usize) -> impl Strategy<Value = Arc<[i64]>> {
        proptest::collection::vec(col(), n).prop_map(Arc::from)
    }

    /// A layer of a node: nothing, a column sum of width 2 or 3, or a put.
    fn layer() -> impl Strategy<Value = Option<Change>> {
        prop_oneof![
            Just(None),
            cols(2).prop_map(|c| Some(Change::AddCols(c))),
            cols(3).prop_map(|c| Some(Change::AddCols(c))),
            cols(2).prop_map(|c| Some(Change::Put(Value::Ints(c)))),
            Just(Some(Change::Delete)),
            Just(Some(Change::Add(1))),
        ]
    }

    fn known() -> impl Strategy<Value = Known> {
        prop_oneof![
            Just(Known::Unknown),
            Just(Known::Absent),
            Just(Known::ExpectAbsent),
            Just(Known::Version(3)),
            cols(2).prop_map(|c| Known::RowInts(Box::new((4, c)))),
            cols(2).prop_map(Known::Ints),
            cols(3).prop_map(Known::Ints),
            Just(Known::Int(5)),
        ]
    }

    fn node(known: Known, flight: Option<Change>, pending: Option<Change>) -> Node {
        let layers = match (flight, pending) {
            (None, p) => Layers::Pending(p.unwrap_or(Change::Delete)),
            (Some(f), None) => Layers::InFlight(Box::new(InFlight {
                change: f,
                first_lsn: 1,
            })),
            (Some(f), Some(p)) => Layers::Both(Box::new(Both {
                flight: InFlight {
                    change: f,
                    first_lsn: 1,
                },
                pending: p,
            })),
        };
        Node {
            key: Arc::from("k"),
            known,
            layers,
            first_lsn: 2,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The column-by-column check of a delta record decides exactly as
        /// the general one, overflow and mismatch included.
        #[test]
        fn the_column_check_agrees_with_the_general_one(
            known in known(),
            flight in layer(),
            pending in layer(),
            d in prop_oneof![cols(2), cols(3)],
        ) {
            let n = node(known, flight, pending);
            let change = Change::AddCols(d);
            prop_assert_eq!(n.check_add(&change), n.check_add_general(&change));
        }

        /// Summing in place gives what the lenient coalesce gives, and
        /// never changes a sum another holder still reads.
        #[test]
        fn merging_in_place_equals_the_lenient_coalesce(
            older in cols(2),
            newer in prop_oneof![cols(2), cols(3)],
            shared in any::<bool>(),
        ) {
            let older = Change::AddCols(older);
            let newer = Change::AddCols(newer);
            let want = coalesce_lenient(Some(&older), &newer);
            let before = older.clone();
            let kept = shared.then(|| older.clone());
            prop_assert_eq!(merge_into(older, &newer), want);
            if let Some(kept) = kept {
                prop_assert_eq!(kept, before);
            }
        }
    }

    #[test]
    fn known_round_trips_through_base() {
        let bytes: Arc<[u8]> = Arc::from(&b"ab"[..]);
        let bases = [
            Base::Unknown,
            Base::Absent,
            Base::ExpectAbsent,
            Base::Version(3),
            Base::Row {
                version: 4,
                value: Value::Int(-1),
            },
            Base::Row {
                version: 5,
                value: Value::Bytes(bytes.clone()),
            },
            Base::Value(Value::Int(7)),
            Base::Value(Value::Bytes(bytes)),
        ];
        for base in bases {
            let known = Known::from_base(base.clone());
            assert_eq!(known.to_base(), base);
            assert_eq!(known.expected(), base.expected());
            assert_eq!(known.visible(), base.visible());
            assert_eq!(known.payload(), base.payload());
            assert_eq!(known.invalidated().to_base(), base.invalidated());
        }
    }
}
