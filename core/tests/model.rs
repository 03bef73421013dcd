//! Model-based test: random writes, cuts, outcomes, aborts, external
//! writes, read-through loads and checkpoints against a plain `HashMap`
//! model of the database plus the list of acknowledged operations.
//!
//! After every step, every key read through the cache (a `Delta` or `Miss`
//! resolved against the simulated database, as the root does) equals the
//! model, dirty accounting is exact, and no conflict is reported for a key
//! no one else wrote. Cases: `WB_PROPTEST_CASES` (default 256).
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use writebehind_core::{
    Base, Change, Cut, Error, Expected, ItemOutcome, Key, Limits, Lookup, Lsn, Snapshot, State,
    Value,
};

const KEYS: usize = 5;
const MAX_VALUE: usize = 8;

#[derive(Clone, Debug)]
enum Op {
    Put(usize, Value),
    Delete(usize),
    Add(usize, i64),
    /// A delta record's per-column add (two columns).
    AddCols(usize, [i64; 2]),
    Cut,
    Complete(u64),
    Abort,
    /// Another instance writes the row (`None`: deletes it).
    External(usize, Option<i64>),
    /// Read-through of a miss; `true`: a write races the load.
    Load(usize, bool),
    Checkpoint,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-1000i64..1000).prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(|b| Value::Bytes(Arc::from(b))),
        proptest::collection::vec(-1000i64..1000, 2..=2).prop_map(|c| Value::Ints(Arc::from(c))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    prop_oneof![
        3 => (key.clone(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => key.clone().prop_map(Op::Delete),
        5 => (key.clone(), -1000i64..1000).prop_map(|(k, d)| Op::Add(k, d)),
        3 => (key.clone(), -1000i64..1000, -1000i64..1000).prop_map(|(k, a, b)| Op::AddCols(k, [a, b])),
        2 => Just(Op::Cut),
        2 => any::<u64>().prop_map(Op::Complete),
        1 => Just(Op::Abort),
        1 => (key.clone(), proptest::option::of(-1000i64..1000)).prop_map(|(k, v)| Op::External(k, v)),
        2 => (key, any::<bool>()).prop_map(|(k, r)| Op::Load(k, r)),
        1 => Just(Op::Checkpoint),
    ]
}

fn name(i: usize) -> Key {
    Key::from(format!("key-{i}"))
}

fn payload(v: &Value) -> usize {
    match v {
        Value::Int(_) => 8,
        Value::Bytes(b) => b.len(),
        Value::Ints(c) => 8 * c.len(),
    }
}

fn change_payload(c: &Change) -> usize {
    match c {
        Change::Add(_) => 8,
        Change::Put(v) => payload(v),
        Change::Delete => 0,
        Change::AddCols(d) => 8 * d.len(),
    }
}

/// One operation on a value, as a user sees it (and as the root resolves
/// a `Delta` over the database value).
fn fold(v: Option<Value>, c: &Change) -> Option<Value> {
    match (v, c) {
        (_, Change::Put(v)) => Some(v.clone()),
        (_, Change::Delete) => None,
        (None, Change::Add(d)) => Some(Value::Int(*d)),
        (Some(Value::Int(x)), Change::Add(d)) => Some(Value::Int(x + d)),
        // Only reachable when the cache could not see the bytes: the add is
        // doomed (the database dead-letters it) and reads ignore it.
        (bytes @ Some(Value::Bytes(_) | Value::Ints(_)), Change::Add(_)) => bytes,
        (None, Change::AddCols(d)) => Some(Value::Ints(d.clone())),
        (Some(Value::Ints(x)), Change::AddCols(d)) if x.len() == d.len() => Some(Value::Ints(
            x.iter().zip(d.iter()).map(|(a, b)| a + b).collect(),
        )),
        // Same: an add of another shape is refused or dead-lettered.
        (other, Change::AddCols(_)) => other,
    }
}

#[derive(Default)]
struct Model {
    db: HashMap<Key, (Value, i64)>,
    in_flight: HashMap<Key, Vec<(Change, Lsn)>>,
    pending: HashMap<Key, Vec<(Change, Lsn)>>,
    cut: Option<Lsn>,
    touched: HashSet<Key>,
    lsn: Lsn,
}

impl Model {
    fn visible(&self, key: &Key) -> Option<Value> {
        let mut v = self.db.get(key).map(|(v, _)| v.clone());
        for ops in [self.in_flight.get(key), self.pending.get(key)]
            .into_iter()
            .flatten()
        {
            for (c, _) in ops {
                v = fold(v, c);
            }
        }
        v
    }

    /// The writer's semantics for one item (keep-database conflict policy).
    fn write_db(&mut self, key: &Key, change: &Change, expected: Expected) -> ItemOutcome {
        let row = self.db.get(key).cloned();
        let matches = match (expected, &row) {
            (Expected::Any, _) => true,
            (Expected::Absent, row) => row.is_none(),
            (Expected::Version(n), Some((_, v))) => *v == n,
            (Expected::Version(_), None) => false,
        };
        let conflict = || ItemOutcome::ConflictKeptDatabase {
            version: row.as_ref().map(|r| r.1),
            value: row.as_ref().map(|r| r.0.clone()),
        };
        let version = row.as_ref().map_or(1, |r| r.1 + 1);
        match change {
            Change::Add(d) => {
                let total = match &row {
                    None => *d,
                    Some((Value::Int(x), _)) => x + d,
                    Some((Value::Bytes(_) | Value::Ints(_), _)) => {
                        return ItemOutcome::DeadLettered
                    }
                };
                self.db.insert(key.clone(), (Value::Int(total), version));
                ItemOutcome::Written {
                    version: Some(version),
                    value: Some(Value::Int(total)),
                }
            }
            Change::AddCols(d) => {
                let total: Arc<[i64]> = match &row {
                    None => d.clone(),
                    Some((Value::Ints(x), _)) if x.len() == d.len() => {
                        x.iter().zip(d.iter()).map(|(a, b)| a + b).collect()
                    }
                    Some(_) => return ItemOutcome::DeadLettered,
                };
                self.db
                    .insert(key.clone(), (Value::Ints(total.clone()), version));
                ItemOutcome::Written {
                    version: Some(version),
                    value: Some(Value::Ints(total)),
                }
            }
            Change::Put(v) if matches => {
                self.db.insert(key.clone(), (v.clone(), version));
                ItemOutcome::Written {
                    version: Some(version),
                    value: Some(v.clone()),
                }
            }
            Change::Delete if matches => {
                self.db.remove(key);
                ItemOutcome::Deleted
            }
            _ => conflict(),
        }
    }

    fn dirty_keys(&self) -> usize {
        let mut keys: HashSet<&Key> = self.in_flight.keys().collect();
        keys.extend(self.pending.keys());
        keys.len()
    }

    fn oldest_lsn(&self) -> Option<Lsn> {
        self.in_flight
            .values()
            .chain(self.pending.values())
            .filter_map(|ops| ops.first().map(|(_, l)| *l))
            .min()
    }
}

fn snapshot_bytes(s: &Snapshot) -> usize {
    s.entries
        .iter()
        .map(|e| {
            let base = match &e.base {
                Base::Row { value, .. } | Base::Value(value) => payload(value),
                _ => 0,
            };
            e.key.len()
                + base
                + e.in_flight
                    .as_ref()
                    .map_or(0, |l| change_payload(&l.change))
                + e.pending.as_ref().map_or(0, |l| change_payload(&l.change))
        })
        .sum()
}

struct Harness {
    state: State,
    model: Model,
    limits: Limits,
    shards: usize,
}

impl Harness {
    fn write(&mut self, key: Key, change: Change) {
        let mut g = self.state.lock(&key);
        match g.check(&key, &change) {
            Ok(()) => {
                self.model.lsn += 1;
                let expected = g.expected(&key);
                g.apply(key.clone(), change.clone(), expected, self.model.lsn);
                self.model
                    .pending
                    .entry(key)
                    .or_default()
                    .push((change, self.model.lsn));
            }
            Err(Error::ValueTooLarge { len, max, .. }) => {
                assert!(len > max);
                assert_eq!(max, MAX_VALUE);
            }
            Err(Error::TypeMismatch { .. }) => {
                assert!(matches!(
                    self.model.visible(&key),
                    Some(Value::Bytes(_) | Value::Ints(_))
                ));
            }
            Err(Error::ColumnsMismatch { columns, .. }) => {
                assert_eq!(columns, 2);
                assert!(matches!(
                    self.model.visible(&key),
                    Some(Value::Bytes(_) | Value::Int(_))
                ));
            }
            Err(e) => panic!("unexpected refusal {e}"),
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Put(k, v) => {
                let too_big = matches!(&v, Value::Bytes(b) if b.len() > MAX_VALUE);
                let before = self.state.dirty_bytes();
                self.write(name(k), Change::Put(v));
                if too_big {
                    assert_eq!(
                        self.state.dirty_bytes(),
                        before,
                        "refused write changed nothing"
                    );
                }
            }
            Op::Delete(k) => self.write(name(k), Change::Delete),
            Op::Add(k, d) => {
                let key = name(k);
                let sees_bytes = matches!(
                    self.state.get(&key),
                    Lookup::Value(Value::Bytes(_) | Value::Ints(_)) | Lookup::DeltaCols(_)
                );
                let before = self.model.lsn;
                self.write(key, Change::Add(d));
                if sees_bytes {
                    assert_eq!(self.model.lsn, before, "add over visible bytes accepted");
                }
            }
            Op::AddCols(k, d) => {
                let key = name(k);
                let sees_other = matches!(
                    self.state.get(&key),
                    Lookup::Value(Value::Bytes(_) | Value::Int(_)) | Lookup::Delta(_)
                );
                let before = self.model.lsn;
                self.write(key, Change::AddCols(Arc::from(d)));
                if sees_other {
                    assert_eq!(self.model.lsn, before, "column add over a counter accepted");
                }
            }
            Op::Cut => {
                let mut all = self.state.lock_all();
                match self.model.cut {
                    Some(position) => {
                        assert_eq!(
                            all.take_cut(self.model.lsn + 1),
                            Err(Error::CutInFlight { position })
                        );
                    }
                    None => {
                        self.model.lsn += 1;
                        let cut = all.take_cut(self.model.lsn).unwrap();
                        drop(all);
                        assert_eq!(cut.position, self.model.lsn);
                        let keys: HashSet<Key> = cut.items.iter().map(|i| i.key.clone()).collect();
                        let want: HashSet<Key> = self.model.pending.keys().cloned().collect();
                        assert_eq!(keys, want);
                        assert_eq!(keys.len(), cut.items.len());
                        assert!(self.model.in_flight.is_empty());
                        self.model.in_flight = std::mem::take(&mut self.model.pending);
                        self.model.cut = Some(cut.position);
                    }
                }
            }
            Op::Complete(seed) => {
                let Some(cut) = self.state.in_flight() else {
                    assert_eq!(self.state.complete_cut(&[]), Err(Error::NoCutInFlight));
                    return;
                };
                let outcomes = self.flush(&cut, seed);
                self.state.complete_cut(&outcomes).unwrap();
                self.model.in_flight.clear();
                self.model.cut = None;
            }
            Op::Abort => {
                assert_eq!(self.state.abort_cut(), self.model.cut.is_some());
                for (key, mut ops) in std::mem::take(&mut self.model.in_flight) {
                    let later = self.model.pending.remove(&key).unwrap_or_default();
                    ops.extend(later);
                    self.model.pending.insert(key, ops);
                }
                self.model.cut = None;
            }
            Op::External(k, v) => {
                let key = name(k);
                match v {
                    Some(x) => {
                        let version = self.model.db.get(&key).map_or(1, |r| r.1 + 1);
                        self.model.db.insert(key.clone(), (Value::Int(x), version));
                    }
                    None => {
                        self.model.db.remove(&key);
                    }
                }
                self.model.touched.insert(key.clone());
                self.state.invalidate(&key);
            }
            Op::Load(k, race) => {
                let key = name(k);
                if self.state.get(&key) != Lookup::Miss {
                    return;
                }
                let ticket = self.state.load_ticket(&key);
                let row = self.model.db.get(&key).cloned();
                if race {
                    self.write(key.clone(), Change::Put(Value::Int(7)));
                }
                assert_eq!(self.state.insert_loaded(ticket, row), !race);
            }
            Op::Checkpoint => {
                let snap = self.state.lock_all().snapshot(self.model.lsn);
                let bytes = bincode::serialize(&snap).unwrap();
                let decoded: Snapshot = bincode::deserialize(&bytes).unwrap();
                let restored = State::restore(self.limits.clone(), decoded).unwrap();
                assert_eq!(restored.lock_all().snapshot(self.model.lsn), snap);
                assert_eq!(restored.in_flight(), self.state.in_flight());
                self.state = restored;
            }
        }
    }

    /// Plays the writer: applies every item to the model database and
    /// reports outcomes fully, vaguely (commit known, rows not) or as dead
    /// letters, chosen by `seed`.
    fn flush(&mut self, cut: &Cut, mut seed: u64) -> Vec<ItemOutcome> {
        let mut outcomes = Vec::with_capacity(cut.items.len());
        for item in &cut.items {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mode = (seed >> 33) % 8;
            let ops = self
                .model
                .in_flight
                .get(&item.key)
                .cloned()
                .unwrap_or_default();
            if mode == 0 {
                outcomes.push(ItemOutcome::DeadLettered);
                continue;
            }
            let before = self.model.db.get(&item.key).map(|r| r.0.clone());
            let outcome = self.model.write_db(&item.key, &item.change, item.expected);
            match &outcome {
                ItemOutcome::ConflictKeptDatabase { .. } => {
                    assert!(
                        self.model.touched.contains(&item.key),
                        "spurious conflict on {:?} expecting {:?}",
                        item.key,
                        item.expected
                    );
                }
                ItemOutcome::DeadLettered => {}
                _ => {
                    // The coalesced item does exactly what its operations do.
                    let want = ops.iter().fold(before, |v, (c, _)| fold(v, c));
                    assert_eq!(self.model.db.get(&item.key).map(|r| r.0.clone()), want);
                }
            }
            let vague = mode <= 3;
            outcomes.push(match outcome {
                ItemOutcome::Written { .. } if vague => ItemOutcome::Written {
                    version: None,
                    value: None,
                },
                other => other,
            });
        }
        outcomes
    }

    fn check(&self) {
        for i in 0..KEYS {
            let key = name(i);
            let db = self.model.db.get(&key).map(|r| r.0.clone());
            let read = match self.state.get(&key) {
                Lookup::Value(v) => Some(v),
                Lookup::Absent => None,
                Lookup::Delta(d) => fold(db, &Change::Add(d)),
                Lookup::DeltaCols(d) => fold(db, &Change::AddCols(d)),
                Lookup::Miss => db,
            };
            assert_eq!(
                read,
                self.model.visible(&key),
                "read of {key:?} ({} shards)",
                self.shards
            );
        }
        assert_eq!(self.state.dirty_entries(), self.model.dirty_keys());
        assert_eq!(self.state.oldest_dirty_lsn(), self.model.oldest_lsn());
        assert_eq!(self.state.has_in_flight(), self.model.cut.is_some());
        let snap = self.state.lock_all().snapshot(self.model.lsn);
        assert_eq!(self.state.dirty_bytes(), snapshot_bytes(&snap));
        assert_eq!(snap.entries.len(), self.model.dirty_keys());
    }
}

fn cases() -> u32 {
    std::env::var("WB_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn cache_reads_equal_the_model(
        ops in proptest::collection::vec(op(), 1..80),
        shards in prop_oneof![Just(1usize), Just(2), Just(64)],
        clean_capacity in prop_oneof![Just(0usize), Just(2), Just(100)],
    ) {
        let limits = Limits { max_value_bytes: MAX_VALUE, clean_capacity, ..Limits::default() };
        let mut h = Harness {
            state: State::with_shards(limits.clone(), shards),
            model: Model::default(),
            limits,
            shards,
        };
        for op in ops {
            h.step(op);
            h.check();
        }
        // Drain: everything flushed fully leaves nothing dirty.
        h.step(Op::Abort);
        h.step(Op::Cut);
        let cut = h.state.in_flight().unwrap();
        let outcomes: Vec<_> = cut
            .items
            .iter()
            .map(|i| h.model.write_db(&i.key, &i.change, i.expected))
            .collect();
        h.state.complete_cut(&outcomes).unwrap();
        h.model.in_flight.clear();
        h.model.cut = None;
        h.check();
        prop_assert_eq!(h.state.dirty_entries(), 0);
        prop_assert_eq!(h.state.dirty_bytes(), 0);
    }
}
