#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::coalesce::change_payload;
use crate::error::{Error, Result};
use crate::snapshot::{Snapshot, SnapshotLayer};
use crate::types::{Change, Cut, Expected, FlushItem, ItemOutcome, Lsn, Value};

fn k(s: &str) -> Key {
    Key::from(s)
}
fn b(s: &str) -> Value {
    Value::Bytes(Arc::from(s.as_bytes()))
}
fn put_i(x: i64) -> Change {
    Change::Put(Value::Int(x))
}

/// check + expected + apply, as the root's write path does (in one lookup,
/// `check_expected`, which must answer exactly as `check` then `expected`).
fn write(state: &State, key: &str, change: Change, lsn: Lsn) -> Result<()> {
    let key = k(key);
    let mut g = state.lock(&key);
    let both = g.check_expected(&key, &change);
    let apart = g.check(&key, &change).map(|()| g.expected(&key));
    assert_eq!(both, apart, "{key} {change:?}");
    let expected = both?;
    g.apply(key, change, expected, lsn);
    Ok(())
}

fn written(version: i64, value: Value) -> ItemOutcome {
    ItemOutcome::Written {
        version: Some(version),
        value: Some(value),
    }
}
const UNKNOWN: ItemOutcome = ItemOutcome::Written {
    version: None,
    value: None,
};

fn cut(state: &State, position: Lsn) -> Cut {
    state.lock_all().take_cut(position).unwrap()
}

#[test]
fn state_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<State>();
    assert_send_sync::<Snapshot>();
}

/// Sequences of writes on one key with no flush: the exact read and dirty
/// bytes after each.
#[test]
fn write_sequences_read_back_exactly() {
    use Change::{Add, Delete};
    let cases: Vec<(Vec<Change>, Lookup, usize)> = vec![
        (vec![Add(1), Add(2)], Lookup::Delta(3), 1 + 8),
        (vec![put_i(5), Add(2)], Lookup::Value(Value::Int(7)), 1 + 8),
        (vec![Delete, Add(2)], Lookup::Value(Value::Int(2)), 1 + 8),
        (vec![Add(4), Delete], Lookup::Absent, 1),
        (
            vec![Add(4), Change::Put(b("hello"))],
            Lookup::Value(b("hello")),
            1 + 5,
        ),
        (
            vec![Change::Put(b("hello")), put_i(1)],
            Lookup::Value(Value::Int(1)),
            1 + 8,
        ),
        (vec![Delete, Delete], Lookup::Absent, 1),
    ];
    for (i, (changes, want, bytes)) in cases.into_iter().enumerate() {
        let state = State::new(Limits::default());
        for (lsn, c) in changes.into_iter().enumerate() {
            write(&state, "k", c, lsn as Lsn + 1).unwrap();
        }
        assert_eq!(state.get(&k("k")), want, "case {i}");
        assert_eq!(state.dirty_entries(), 1, "case {i}");
        assert_eq!(state.dirty_bytes(), bytes, "case {i}");
    }
}

#[test]
fn check_refuses_oversized_keys_and_values_and_changes_nothing() {
    let limits = Limits {
        max_key_bytes: 4,
        max_value_bytes: 3,
        ..Limits::default()
    };
    let state = State::new(limits);
    let long = k("abcde");
    let g = state.lock(&long);
    assert_eq!(
        g.check(&long, &Change::Add(1)),
        Err(Error::KeyTooLarge {
            key: long.clone(),
            len: 5,
            max: 4
        })
    );
    drop(g);
    let key = k("abcd");
    let g = state.lock(&key);
    assert_eq!(
        g.check(&key, &Change::Put(b("xyzw"))),
        Err(Error::ValueTooLarge {
            key: key.clone(),
            len: 4,
            max: 3
        })
    );
    assert_eq!(g.check(&key, &Change::Put(b("xyz"))), Ok(()));
    assert_eq!(g.check(&key, &put_i(i64::MAX)), Ok(()));
    drop(g);
    assert_eq!(state.stats(), CoreStats::default());
}

#[test]
fn check_refuses_add_on_bytes_pending_in_flight_and_clean() {
    let state = State::new(Limits::default());
    // Pending bytes.
    write(&state, "p", Change::Put(b("x")), 1).unwrap();
    assert_eq!(
        write(&state, "p", Change::Add(1), 2),
        Err(Error::TypeMismatch { key: k("p") })
    );
    // In flight bytes, nothing pending.
    cut(&state, 2);
    assert_eq!(
        write(&state, "p", Change::Add(1), 3),
        Err(Error::TypeMismatch { key: k("p") })
    );
    // Clean bytes.
    state.complete_cut(&[written(1, b("x"))]).unwrap();
    assert_eq!(state.get(&k("p")), Lookup::Value(b("x")));
    assert_eq!(
        write(&state, "p", Change::Add(1), 4),
        Err(Error::TypeMismatch { key: k("p") })
    );
    assert_eq!(state.dirty_entries(), 0);
    // A put of a counter over bytes is fine, and adds then work.
    write(&state, "p", put_i(1), 5).unwrap();
    write(&state, "p", Change::Add(1), 6).unwrap();
    assert_eq!(state.get(&k("p")), Lookup::Value(Value::Int(2)));
}

#[test]
fn check_refuses_every_overflowing_sum() {
    let overflow = |key: &str, delta| Err(Error::CounterOverflow { key: k(key), delta });
    let state = State::new(Limits::default());
    // Pending sum.
    write(&state, "a", Change::Add(i64::MAX), 1).unwrap();
    assert_eq!(write(&state, "a", Change::Add(1), 2), overflow("a", 1));
    // Known value plus delta.
    write(&state, "b", put_i(i64::MIN), 3).unwrap();
    assert_eq!(write(&state, "b", Change::Add(-1), 4), overflow("b", -1));

    // The visible total fits (-5 + MAX + 4) but the merge an abort would
    // make (MAX + 4) does not: refused.
    let state = State::new(Limits::default());
    write(&state, "c", put_i(-5), 1).unwrap();
    cut(&state, 1);
    state.complete_cut(&[written(1, Value::Int(-5))]).unwrap();
    write(&state, "c", Change::Add(i64::MAX), 2).unwrap();
    cut(&state, 2);
    assert_eq!(write(&state, "c", Change::Add(4), 3), overflow("c", 4));
    assert_eq!(write(&state, "c", Change::Add(-1), 3), Ok(()));
    assert_eq!(state.get(&k("c")), Lookup::Value(Value::Int(i64::MAX - 6)));
    assert!(state.abort_cut());
    assert_eq!(state.get(&k("c")), Lookup::Value(Value::Int(i64::MAX - 6)));
    let c = cut(&state, 4);
    assert_eq!(c.items[0].change, Change::Add(i64::MAX - 1));
}

/// Outcomes for a cut, chosen per item.
fn outcomes(cut: &Cut, f: impl Fn(&FlushItem) -> ItemOutcome) -> Vec<ItemOutcome> {
    cut.items.iter().map(f).collect()
}

#[test]
fn cut_items_carry_the_base_expected_and_clean_rows_feed_the_next_expected() {
    let state = State::new(Limits::default());
    write(&state, "new", put_i(1), 1).unwrap();
    write(&state, "ctr", Change::Add(2), 2).unwrap();
    let c = cut(&state, 3);
    assert_eq!(c.position, 3);
    let mut items = c.items.clone();
    items.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(
        items,
        vec![
            FlushItem {
                key: k("ctr"),
                change: Change::Add(2),
                expected: Expected::Any
            },
            FlushItem {
                key: k("new"),
                change: put_i(1),
                expected: Expected::Any
            },
        ]
    );
    assert_eq!(state.stats().in_flight, 2);
    assert_eq!(state.dirty_entries(), 2);
    let done = outcomes(&c, |i| {
        if &*i.key == "new" {
            written(1, Value::Int(1))
        } else {
            written(4, Value::Int(12))
        }
    });
    state.complete_cut(&done).unwrap();
    assert_eq!(state.stats().in_flight, 0);
    assert!(!state.has_in_flight());
    assert_eq!(state.dirty_entries(), 0);
    assert_eq!(state.dirty_bytes(), 0);
    assert_eq!(state.stats().clean_entries, 2);
    assert_eq!(state.get(&k("ctr")), Lookup::Value(Value::Int(12)));
    // Writes now derive from the clean rows.
    let g = state.lock(&k("new"));
    assert_eq!(g.expected(&k("new")), Expected::Version(1));
    drop(g);
    write(&state, "new", put_i(9), 4).unwrap();
    write(&state, "ctr", Change::Add(1), 5).unwrap();
    assert_eq!(state.get(&k("ctr")), Lookup::Value(Value::Int(13)));
    assert_eq!(
        state.stats().clean_entries,
        0,
        "dirty keys leave the clean cache"
    );
    let c = cut(&state, 6);
    let mut items = c.items.clone();
    items.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(items[1].expected, Expected::Version(1));
    assert_eq!(items[0].expected, Expected::Version(4));
}

#[test]
fn a_put_while_in_flight_chains_onto_the_version_the_flush_reports() {
    let state = State::new(Limits::default());
    write(&state, "k", put_i(1), 1).unwrap();
    let c = cut(&state, 2);
    assert_eq!(c.items[0].expected, Expected::Any);
    let g = state.lock(&k("k"));
    assert_eq!(
        g.expected(&k("k")),
        Expected::Any,
        "unknown until the flush reports"
    );
    drop(g);
    write(&state, "k", put_i(2), 3).unwrap();
    assert_eq!(state.get(&k("k")), Lookup::Value(Value::Int(2)));
    state.complete_cut(&[written(7, Value::Int(1))]).unwrap();
    assert_eq!(state.dirty_entries(), 1);
    assert_eq!(state.get(&k("k")), Lookup::Value(Value::Int(2)));
    let c = cut(&state, 4);
    assert_eq!(
        c.items,
        vec![FlushItem {
            key: k("k"),
            change: put_i(2),
            expected: Expected::Version(7)
        }]
    );
}

#[test]
fn second_cut_while_one_is_in_flight_is_refused() {
    let state = State::new(Limits::default());
    write(&state, "k", Change::Add(1), 1).unwrap();
    cut(&state, 2);
    write(&state, "k", Change::Add(1), 3).unwrap();
    let err = state.lock_all().take_cut(4).unwrap_err();
    assert_eq!(err, Error::CutInFlight { position: 2 });
    assert_eq!(state.in_flight().map(|c| c.position), Some(2));
}

#[test]
fn complete_without_cut_or_with_wrong_count_changes_nothing() {
    let state = State::new(Limits::default());
    assert_eq!(state.complete_cut(&[]), Err(Error::NoCutInFlight));
    assert!(!state.abort_cut());
    write(&state, "a", Change::Add(1), 1).unwrap();
    write(&state, "b", Change::Add(1), 2).unwrap();
    let c = cut(&state, 3);
    let before = state.lock_all().snapshot(3);
    assert_eq!(
        state.complete_cut(&[UNKNOWN]),
        Err(Error::OutcomeCountMismatch {
            position: 3,
            items: 2,
            outcomes: 1
        })
    );
    assert_eq!(state.lock_all().snapshot(3), before);
    assert_eq!(state.in_flight(), Some(c));
}

#[test]
fn empty_cut_is_in_flight_until_completed() {
    let state = State::new(Limits::default());
    let c = cut(&state, 9);
    assert_eq!(
        c,
        Cut {
            position: 9,
            items: vec![]
        }
    );
    assert!(state.has_in_flight());
    state.complete_cut(&[]).unwrap();
    assert!(!state.has_in_flight());
}

#[test]
fn abort_merges_in_flight_under_pending() {
    use Change::{Add, Delete};
    // (in flight, pending after the cut, merged, read)
    let cases: Vec<(Change, Option<Change>, Change, Lookup)> = vec![
        (Add(2), None, Add(2), Lookup::Delta(2)),
        (Add(2), Some(Add(3)), Add(5), Lookup::Delta(5)),
        (
            put_i(2),
            Some(Add(3)),
            put_i(5),
            Lookup::Value(Value::Int(5)),
        ),
        (Delete, Some(Add(3)), put_i(3), Lookup::Value(Value::Int(3))),
        (Add(2), Some(Delete), Delete, Lookup::Absent),
        (
            Change::Put(b("x")),
            Some(put_i(1)),
            put_i(1),
            Lookup::Value(Value::Int(1)),
        ),
    ];
    for (i, (flight, pending, merged, read)) in cases.into_iter().enumerate() {
        let state = State::new(Limits::default());
        write(&state, "k", flight, 10).unwrap();
        cut(&state, 11);
        if let Some(p) = pending {
            write(&state, "k", p, 12).unwrap();
        }
        assert_eq!(state.get(&k("k")), read, "case {i} before abort");
        assert!(state.abort_cut());
        assert_eq!(state.get(&k("k")), read, "case {i} after abort");
        let snap = state.lock_all().snapshot(12);
        assert_eq!(
            snap.entries[0].pending,
            Some(SnapshotLayer {
                change: merged.clone(),
                first_lsn: 10
            }),
            "case {i}"
        );
        assert_eq!(snap.entries[0].in_flight, None, "case {i}");
        assert_eq!(state.dirty_bytes(), 1 + change_payload(&merged), "case {i}");
        assert_eq!(state.oldest_dirty_lsn(), Some(10), "case {i}");
    }
}

#[test]
fn conflict_keeps_database_row_and_a_pending_put_still_conflicts() {
    let state = State::new(Limits::default());
    // Clean row at version 3.
    let t = state.load_ticket(&k("k"));
    assert!(state.insert_loaded(t, Some((Value::Int(10), 3))));
    write(&state, "k", put_i(11), 1).unwrap();
    let c = cut(&state, 2);
    assert_eq!(c.items[0].expected, Expected::Version(3));
    write(&state, "k", put_i(12), 3).unwrap();
    state
        .complete_cut(&[ItemOutcome::ConflictKeptDatabase {
            version: Some(5),
            value: Some(Value::Int(50)),
        }])
        .unwrap();
    assert_eq!(state.get(&k("k")), Lookup::Value(Value::Int(12)));
    let c = cut(&state, 4);
    assert_eq!(
        c.items[0].expected,
        Expected::Version(3),
        "derived from the dropped change"
    );
    // An add over a conflicting put applies to the database row.
    state
        .complete_cut(&[ItemOutcome::ConflictKeptDatabase {
            version: Some(6),
            value: Some(Value::Int(60)),
        }])
        .unwrap();
    assert_eq!(state.get(&k("k")), Lookup::Value(Value::Int(60)));
    assert_eq!(state.dirty_entries(), 0);
    write(&state, "k", put_i(1), 5).unwrap();
    cut(&state, 6);
    write(&state, "k", Change::Add(2), 7).unwrap();
    state
        .complete_cut(&[ItemOutcome::ConflictKeptDatabase {
            version: Some(8),
            value: Some(Value::Int(80)),
        }])
        .unwrap();
    assert_eq!(state.get(&k("k")), Lookup::Value(Value::Int(82)));
    // A conflict with no row left.
    let c = cut(&state, 8);
    assert_eq!(c.items[0].change, Change::Add(2));
    state
        .complete_cut(&[ItemOutcome::ConflictKeptDatabase {
            version: None,
            value: None,
        }])
        .unwrap();
    assert_eq!(state.get(&k("k")), Lookup::Absent);
}

#[test]
fn outcomes_settle_the_base_exactly() {
    use Change::{Add, Delete};
    // (in-flight change, outcome, read after, clean entries after)
    let cases: Vec<(Change, ItemOutcome, Lookup, usize)> = vec![
        (
            Add(2),
            written(3, Value::Int(7)),
            Lookup::Value(Value::Int(7)),
            1,
        ),
        (Add(2), UNKNOWN, Lookup::Miss, 0),
        (
            Add(2),
            ItemOutcome::Written {
                version: Some(3),
                value: None,
            },
            Lookup::Miss,
            0,
        ),
        (
            put_i(4),
            ItemOutcome::Written {
                version: Some(3),
                value: None,
            },
            Lookup::Value(Value::Int(4)),
            1,
        ),
        (put_i(4), UNKNOWN, Lookup::Miss, 0),
        (Delete, ItemOutcome::Deleted, Lookup::Absent, 1),
        (Delete, UNKNOWN, Lookup::Absent, 1),
        (Add(2), ItemOutcome::DeadLettered, Lookup::Miss, 0),
    ];
    for (i, (flight, outcome, read, clean)) in cases.into_iter().enumerate() {
        let state = State::new(Limits::default());
        write(&state, "k", flight, 1).unwrap();
        cut(&state, 2);
        state.complete_cut(&[outcome]).unwrap();
        assert_eq!(state.get(&k("k")), read, "case {i}");
        assert_eq!(state.stats().clean_entries, clean, "case {i}");
        assert_eq!(state.dirty_entries(), 0, "case {i}");
        assert_eq!(state.dirty_bytes(), 0, "case {i}");
        assert_eq!(state.oldest_dirty_lsn(), None, "case {i}");
    }
}

#[test]
fn outcome_for_a_dirty_entry_updates_its_base_for_reads() {
    let state = State::new(Limits::default());
    write(&state, "k", Change::Add(2), 1).unwrap();
    cut(&state, 2);
    write(&state, "k", Change::Add(3), 3).unwrap();
    assert_eq!(state.get(&k("k")), Lookup::Delta(5));
    assert_eq!(state.oldest_dirty_lsn(), Some(1));
    state.complete_cut(&[written(1, Value::Int(102))]).unwrap();
    assert_eq!(state.get(&k("k")), Lookup::Value(Value::Int(105)));
    assert_eq!(state.oldest_dirty_lsn(), Some(3));
    // base 8 bytes + pending 8 bytes + key 1 byte
    assert_eq!(state.dirty_bytes(), 17);
    state.invalidate(&k("k"));
    assert_eq!(
        state.get(&k("k")),
        Lookup::Delta(3),
        "the base value is stale now"
    );
    assert_eq!(state.dirty_bytes(), 9);
}

#[test]
fn a_clean_copy_never_outlives_a_write() {
    let state = State::new(Limits::default());
    let t = state.load_ticket(&k("k"));
    assert!(state.insert_loaded(t, Some((Value::Int(1), 1))));
    write(&state, "k", put_i(2), 1).unwrap();
    assert_eq!(state.stats().clean_entries, 0);
    assert_eq!(state.get(&k("k")), Lookup::Value(Value::Int(2)));
    // A flush whose row is not reported drops the clean copy rather than
    // keeping an old one.
    cut(&state, 2);
    state.complete_cut(&[UNKNOWN]).unwrap();
    assert_eq!(state.stats().clean_entries, 0);
    assert_eq!(state.get(&k("k")), Lookup::Miss);
}

#[test]
fn a_load_that_raced_a_write_is_refused() {
    let state = State::new(Limits::default());
    let row = Some((Value::Int(1), 1));
    // Dirty at insert time.
    let t = state.load_ticket(&k("k"));
    write(&state, "k", Change::Add(1), 1).unwrap();
    assert!(!state.insert_loaded(t, row.clone()));
    // Written, flushed and cleaned while the load ran.
    let t = state.load_ticket(&k("k"));
    cut(&state, 2);
    state.complete_cut(&[UNKNOWN]).unwrap();
    assert!(!state.insert_loaded(t, row.clone()));
    assert_eq!(state.get(&k("k")), Lookup::Miss);
    // Invalidated while the load ran.
    let t = state.load_ticket(&k("k"));
    state.invalidate(&k("k"));
    assert!(!state.insert_loaded(t, row.clone()));
    // An undisturbed load is cached; a load of "no row" too.
    let t = state.load_ticket(&k("k"));
    assert!(state.insert_loaded(t, row));
    assert_eq!(state.get(&k("k")), Lookup::Value(Value::Int(1)));
    let t = state.load_ticket(&k("gone"));
    assert!(state.insert_loaded(t, None));
    assert_eq!(state.get(&k("gone")), Lookup::Absent);
    let s = state.stats();
    assert_eq!((s.hits, s.misses), (2, 1));
}

#[test]
fn clean_rows_expire_after_the_ttl() {
    let limits = Limits {
        clean_ttl: Some(Duration::from_millis(20)),
        ..Limits::default()
    };
    let state = State::new(limits);
    let t = state.load_ticket(&k("k"));
    assert!(state.insert_loaded(t, Some((Value::Int(1), 1))));
    assert_eq!(state.get(&k("k")), Lookup::Value(Value::Int(1)));
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(state.get(&k("k")), Lookup::Miss);
    // An expired row is not used as the base of a write either.
    let t = state.load_ticket(&k("j"));
    assert!(state.insert_loaded(t, Some((Value::Int(5), 2))));
    std::thread::sleep(Duration::from_millis(40));
    write(&state, "j", Change::Add(1), 1).unwrap();
    assert_eq!(state.get(&k("j")), Lookup::Delta(1));
}

#[test]
fn clean_cache_is_bounded_and_zero_disables_it() {
    let limits = Limits {
        clean_capacity: 100,
        ..Limits::default()
    };
    let state = State::new(limits);
    for i in 0..1000 {
        let t = state.load_ticket(&k(&format!("k{i}")));
        assert!(state.insert_loaded(t, Some((Value::Int(i), 1))));
    }
    let n = state.stats().clean_entries;
    assert!((50..=100).contains(&n), "{n} clean entries");
    let state = State::new(Limits {
        clean_capacity: 0,
        ..Limits::default()
    });
    let t = state.load_ticket(&k("k"));
    assert!(state.insert_loaded(t, Some((Value::Int(1), 1))));
    assert_eq!(state.get(&k("k")), Lookup::Miss);
}

#[test]
fn dirty_entries_are_never_evicted_and_limits_report_exactly() {
    let limits = Limits {
        max_dirty_entries: 1000,
        max_dirty_bytes: 100_000,
        clean_capacity: 10,
        ..Limits::default()
    };
    let state = State::new(limits);
    for i in 0..999 {
        write(&state, &format!("{i:04}"), Change::Add(i), i as Lsn + 1).unwrap();
    }
    assert_eq!(state.over_limits(), None);
    write(&state, "0000", Change::Add(1), 1000).unwrap();
    assert_eq!(state.over_limits(), None, "an existing key adds no entry");
    write(&state, "x", Change::Put(b("x")), 1001).unwrap();
    assert_eq!(state.over_limits(), Some(LimitKind::DirtyEntries));
    assert_eq!(state.dirty_entries(), 1000);
    assert_eq!(state.dirty_bytes(), 999 * (4 + 8) + 2);
    for i in 0..999 {
        assert_eq!(
            state.get(&k(&format!("{i:04}"))),
            Lookup::Delta(i + i64::from(i == 0))
        );
    }
    let big = State::new(Limits {
        max_dirty_bytes: 10,
        ..Limits::default()
    });
    write(&big, "k", Change::Put(b("123456789")), 1).unwrap();
    assert_eq!(big.over_limits(), Some(LimitKind::DirtyBytes));
    write(&big, "k", Change::Delete, 2).unwrap();
    assert_eq!(big.over_limits(), None);
    assert_eq!(big.dirty_bytes(), 1);
}

#[test]
fn replay_adopts_the_expected_of_the_records() {
    // What the root does on recovery: apply records into a fresh state.
    let state = State::new(Limits::default());
    let key = k("k");
    let mut g = state.lock(&key);
    g.apply(key.clone(), put_i(3), Expected::Version(4), 1);
    g.apply(key.clone(), Change::Add(1), Expected::Version(4), 2);
    drop(g);
    let mut g = state.lock(&k("n"));
    g.apply(k("n"), Change::Add(2), Expected::Absent, 3);
    drop(g);
    assert_eq!(state.get(&key), Lookup::Value(Value::Int(4)));
    assert_eq!(
        state.get(&k("n")),
        Lookup::Delta(2),
        "absent is not trusted for reads"
    );
    let c = cut(&state, 4);
    let mut items = c.items;
    items.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(items[0].expected, Expected::Version(4));
    assert_eq!(items[1].expected, Expected::Absent);
    // The root only knows the batch committed.
    state.complete_cut(&[UNKNOWN, UNKNOWN]).unwrap();
    assert_eq!(state.dirty_entries(), 0);
    assert_eq!(state.get(&key), Lookup::Miss);
}

#[test]
fn check_refuses_a_key_of_another_shard() {
    let state = State::new(Limits::default());
    let a = k("a");
    let other = (0..1000)
        .map(|i| k(&format!("o{i}")))
        .find(|o| state.shard_of(state.hash(o)) != state.shard_of(state.hash(&a)))
        .unwrap();
    let g = state.lock(&a);
    assert!(matches!(
        g.check(&other, &Change::Add(1)),
        Err(Error::WrongShard { .. })
    ));
    assert!(matches!(
        g.check_expected(&other, &Change::Add(1)),
        Err(Error::WrongShard { .. })
    ));
}

#[test]
#[should_panic(expected = "another shard")]
fn apply_with_a_key_of_another_shard_panics() {
    let state = State::new(Limits::default());
    let a = k("a");
    let other = (0..1000)
        .map(|i| k(&format!("o{i}")))
        .find(|o| state.shard_of(state.hash(o)) != state.shard_of(state.hash(&a)))
        .unwrap();
    state
        .lock(&a)
        .apply(other, Change::Add(1), Expected::Any, 1);
}

fn sample_state() -> State {
    let state = State::new(Limits::default());
    let t = state.load_ticket(&k("row"));
    assert!(state.insert_loaded(t, Some((b("v1"), 3))));
    write(&state, "row", Change::Put(b("v2")), 1).unwrap();
    write(&state, "ctr", Change::Add(5), 2).unwrap();
    write(&state, "gone", Change::Delete, 3).unwrap();
    cut(&state, 4);
    write(&state, "ctr", Change::Add(1), 5).unwrap();
    write(&state, "late", put_i(8), 6).unwrap();
    state
}

#[test]
fn snapshot_restore_round_trip_is_equal() {
    let state = sample_state();
    let snap = state.lock_all().snapshot(6);
    assert_eq!(snap.entries.len(), 4);
    assert_eq!(snap.cut.as_ref().map(|c| c.items.len()), Some(3));
    let restored = State::restore(Limits::default(), snap.clone()).unwrap();
    assert_eq!(restored.lock_all().snapshot(6), snap);
    assert_eq!(restored.in_flight(), state.in_flight());
    assert_eq!(restored.dirty_entries(), state.dirty_entries());
    assert_eq!(restored.dirty_bytes(), state.dirty_bytes());
    assert_eq!(restored.oldest_dirty_lsn(), Some(1));
    for key in ["row", "ctr", "gone", "late", "none"] {
        assert_eq!(restored.get(&k(key)), state.get(&k(key)), "{key}");
    }
    // Through bincode, as the root stores it.
    let bytes = bincode::serialize(&snap).unwrap();
    let back: Snapshot = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back, snap);
    // The restored cut completes like the original.
    let n = restored.in_flight().unwrap().items.len();
    restored.complete_cut(&vec![UNKNOWN; n]).unwrap();
    assert_eq!(restored.dirty_entries(), 2);
}

#[test]
fn restore_refuses_inconsistent_snapshots() {
    let good = sample_state().lock_all().snapshot(6);
    let reason = |snap: Snapshot| match State::restore(Limits::default(), snap) {
        Err(Error::InvalidSnapshot {
            reason, position, ..
        }) => {
            assert_eq!(position, 6);
            reason
        }
        other => panic!("expected InvalidSnapshot, got {other:?}"),
    };
    let mut s = good.clone();
    s.entries.push(s.entries[0].clone());
    assert_eq!(reason(s), "duplicate key");
    let mut s = good.clone();
    s.entries[0].pending = None;
    s.entries[0].in_flight = None;
    assert_eq!(
        reason(s),
        "entry has neither a pending nor an in-flight change"
    );
    let mut s = good.clone();
    s.cut = None;
    assert_eq!(reason(s), "in-flight change without a cut in flight");
    let mut s = good.clone();
    if let Some(c) = s.cut.as_mut() {
        c.items.pop();
    }
    assert_eq!(reason(s), "cut items and in-flight entries differ");
    let mut s = good.clone();
    if let Some(c) = s.cut.as_mut() {
        c.items[0].0 = k("late");
    }
    assert_eq!(reason(s), "cut item without an in-flight entry");
    let mut s = good;
    if let Some(c) = s.cut.as_mut() {
        let first = c.items[0].clone();
        c.items[1] = first;
    }
    assert_eq!(reason(s), "key twice in the cut");
}

#[test]
fn index_heap_bytes_counts_nodes_and_tables() {
    let state = State::new(Limits::default());
    assert_eq!(state.index_heap_bytes(), 0);
    write(&state, "k", Change::Add(1), 1).unwrap();
    let one = state.index_heap_bytes();
    assert!(one >= 72 + std::mem::size_of::<usize>(), "{one}");
    cut(&state, 2);
    assert_eq!(state.index_heap_bytes(), one + 32, "the in-flight box");
    write(&state, "k", Change::Add(1), 3).unwrap();
    assert_eq!(state.index_heap_bytes(), one + 56, "in flight and pending");
    state.complete_cut(&[written(1, Value::Int(1))]).unwrap();
    assert_eq!(
        state.index_heap_bytes(),
        one,
        "known counter base is inline"
    );
}

/// Regression (found by the model test): a doomed add in flight over a base
/// that turned out to be bytes made every later add refused, even after a
/// put of a counter replaced the value.
#[test]
fn doomed_add_in_flight_does_not_block_adds_after_a_put() {
    let state = State::new(Limits::default());
    write(&state, "k", Change::Put(b("x")), 1).unwrap();
    cut(&state, 2);
    write(&state, "k", put_i(0), 3).unwrap();
    // The bytes were written (version not reported).
    state.complete_cut(&[UNKNOWN]).unwrap();
    cut(&state, 4);
    write(&state, "k", Change::Add(1), 5).unwrap();
    // The counter put is dead-lettered: an add is pending over bytes.
    state.complete_cut(&[ItemOutcome::DeadLettered]).unwrap();
    assert_eq!(state.get(&k("k")), Lookup::Value(b("x")));
    assert_eq!(
        write(&state, "k", Change::Add(1), 6),
        Err(Error::TypeMismatch { key: k("k") })
    );
    // The doomed add goes in flight; a counter put replaces the value.
    cut(&state, 6);
    write(&state, "k", put_i(0), 7).unwrap();
    assert_eq!(write(&state, "k", Change::Add(2), 8), Ok(()));
    assert_eq!(state.get(&k("k")), Lookup::Value(Value::Int(2)));
}

#[test]
fn is_dirty_follows_pending_and_in_flight_changes() {
    let state = State::new(Limits::default());
    assert!(!state.is_dirty(&k("k")));
    write(&state, "k", Change::Add(1), 1).unwrap();
    assert!(state.is_dirty(&k("k")));
    cut(&state, 2);
    assert!(state.is_dirty(&k("k")));
    state
        .complete_cut(&[ItemOutcome::Written {
            version: Some(1),
            value: Some(Value::Int(1)),
        }])
        .unwrap();
    assert!(!state.is_dirty(&k("k")));
    assert!(!state.is_dirty(&k("other")));
}

#[test]
fn is_in_flight_is_true_only_between_cut_and_completion() {
    let state = State::new(Limits::default());
    write(&state, "k", Change::Add(1), 1).unwrap();
    assert!(!state.is_in_flight("k"));
    cut(&state, 2);
    assert!(state.is_in_flight("k"));
    write(&state, "k", Change::Add(1), 3).unwrap();
    assert!(state.is_in_flight("k"));
    state
        .complete_cut(&[ItemOutcome::Written {
            version: None,
            value: None,
        }])
        .unwrap();
    assert!(!state.is_in_flight("k"));
    assert!(state.is_dirty(&k("k")));
}

#[test]
fn drop_clean_refuses_loads_in_progress_and_keeps_dirty_writes_over_a_forgotten_base() {
    let state = State::new(Limits::default());
    let row = Some((Value::Int(1), 1));
    // A counter whose base is known: the row changed behind the cache, so
    // the base goes and the pending delta stays (read as row + delta); the
    // version stays for the next put's check.
    write(&state, "d", put_i(7), 1).unwrap();
    cut(&state, 2);
    state.complete_cut(&[written(3, Value::Int(7))]).unwrap();
    write(&state, "d", Change::Add(1), 3).unwrap();
    assert_eq!(state.get(&k("d")), Lookup::Value(Value::Int(8)));
    let bytes = state.dirty_bytes();
    assert!(!state.drop_clean(&k("d")));
    assert_eq!(state.get(&k("d")), Lookup::Delta(1));
    assert_eq!(state.lock(&k("d")).expected(&k("d")), Expected::Version(3));
    assert_eq!(state.dirty_bytes(), bytes - 8, "the base value's 8 bytes");
    assert_eq!(state.stats().dirty_entries, 1);
    // A clean copy goes, and a load that began before cannot bring it back.
    let t = state.load_ticket(&k("c"));
    assert!(state.insert_loaded(t, row.clone()));
    let t = state.load_ticket(&k("c"));
    assert!(state.drop_clean(&k("c")));
    assert!(!state.insert_loaded(t, row.clone()));
    assert_eq!(state.get(&k("c")), Lookup::Miss);
    // By prefix: only that prefix, loads of any key refused, dirty kept.
    for key in ["team:1:a", "team:1:b", "team:2:a"] {
        let t = state.load_ticket(&k(key));
        assert!(state.insert_loaded(t, row.clone()));
    }
    write(&state, "team:1:dirty", put_i(5), 4).unwrap();
    // Counters over a loaded row: under the prefix and not.
    for key in ["team:1:n", "team:2:n"] {
        let t = state.load_ticket(&k(key));
        assert!(state.insert_loaded(t, Some((Value::Int(40), 2))));
        write(&state, key, Change::Add(5), 5).unwrap();
        assert_eq!(state.get(&k(key)), Lookup::Value(Value::Int(45)));
    }
    let t = state.load_ticket(&k("team:1:c"));
    assert_eq!(state.drop_clean_prefix("team:1:"), 2);
    assert!(!state.insert_loaded(t, row.clone()));
    assert_eq!(state.get(&k("team:1:a")), Lookup::Miss);
    assert_eq!(state.get(&k("team:2:a")), Lookup::Value(Value::Int(1)));
    assert_eq!(state.get(&k("team:1:dirty")), Lookup::Value(Value::Int(5)));
    assert_eq!(state.get(&k("team:1:n")), Lookup::Delta(5));
    assert_eq!(state.get(&k("team:2:n")), Lookup::Value(Value::Int(45)));
    let n = k("team:1:n");
    assert_eq!(state.lock(&n).expected(&n), Expected::Version(2));
    let s = state.stats();
    assert_eq!((s.invalidation_evictions, s.clean_entries), (3, 1));
    assert_eq!(s.clean_bytes, "team:2:a".len() + 8);
}

#[test]
fn refresh_due_follows_the_copy_and_never_a_dirty_entry() {
    let ttl = Duration::from_millis(20);
    let state = State::new(Limits {
        clean_ttl: Some(ttl),
        refresh: Some(crate::Refresh {
            beta: 0.0,
            max_stale: Duration::from_secs(60),
        }),
        ..Limits::default()
    });
    let t = state.load_ticket(&k("k"));
    assert!(state.insert_loaded(t, Some((Value::Int(1), 1))));
    assert!(!state.refresh_due("k"));
    std::thread::sleep(ttl * 2);
    assert!(state.refresh_due("k"));
    let read = state.read("k");
    assert_eq!(
        (read.lookup, read.refresh),
        (Lookup::Value(Value::Int(1)), true)
    );
    // Refreshed: fresh again.
    let t = state.load_ticket(&k("k"));
    assert!(state.insert_loaded(t, Some((Value::Int(2), 2))));
    assert!(!state.refresh_due("k"));
    std::thread::sleep(ttl * 2);
    write(&state, "k", Change::Add(1), 1).unwrap();
    assert!(!state.refresh_due("k"));
    assert!(!state.read("k").refresh);
    assert_eq!(state.stats().hits, 1);
}

fn cols(c: &[i64]) -> Change {
    Change::AddCols(Arc::from(c))
}
fn ints(c: &[i64]) -> Value {
    Value::Ints(Arc::from(c))
}

/// A delta record reads as its base row plus the pending per-column sums,
/// through a flush and with a new add in flight, exactly like a counter.
#[test]
fn delta_records_read_base_plus_pending_across_a_flush() {
    let state = State::new(Limits::default());
    write(&state, "post:1", cols(&[1, 0]), 1).unwrap();
    write(&state, "post:1", cols(&[2, 5]), 2).unwrap();
    assert_eq!(
        state.get("post:1"),
        Lookup::DeltaCols(Arc::from(&[3i64, 5][..]))
    );

    let c = cut(&state, 3);
    assert_eq!(c.items[0].change, cols(&[3, 5]));
    // An add accepted while the cut is in flight stacks on top.
    write(&state, "post:1", cols(&[0, 1]), 4).unwrap();
    assert_eq!(
        state.get("post:1"),
        Lookup::DeltaCols(Arc::from(&[3i64, 6][..]))
    );
    // The writer reports the row's totals (another instance added 100 views).
    state.complete_cut(&[written(7, ints(&[103, 5]))]).unwrap();
    assert_eq!(state.get("post:1"), Lookup::Value(ints(&[103, 6])));
    // Nothing reported: the base is unknown again, the pending delta stays.
    let _ = cut(&state, 5);
    state.complete_cut(&[UNKNOWN]).unwrap();
    assert_eq!(state.get("post:1"), Lookup::Miss);

    // A put of the whole record, then adds: one put of the sum.
    write(&state, "post:2", Change::Put(ints(&[10, 10])), 6).unwrap();
    write(&state, "post:2", cols(&[1, -1]), 7).unwrap();
    let c = cut(&state, 8);
    assert_eq!(c.items[0].change, Change::Put(ints(&[11, 9])));
    state.complete_cut(&[written(1, ints(&[11, 9]))]).unwrap();
    // Clean now: the clean copy is the row.
    assert_eq!(state.dirty_entries(), 0);
    assert_eq!(state.get("post:2"), Lookup::Value(ints(&[11, 9])));
    // An add over a clean row folds into it for reads.
    write(&state, "post:2", cols(&[1, 1]), 9).unwrap();
    assert_eq!(state.get("post:2"), Lookup::Value(ints(&[12, 10])));
}

#[test]
fn delta_record_adds_are_checked() {
    let state = State::new(Limits::default());
    write(&state, "p", cols(&[i64::MAX, 0]), 1).unwrap();
    assert_eq!(
        write(&state, "p", cols(&[1, 0]), 2),
        Err(Error::ColumnsOverflow {
            key: k("p"),
            deltas: vec![1, 0]
        })
    );
    assert_eq!(
        write(&state, "p", cols(&[1]), 2),
        Err(Error::ColumnsMismatch {
            key: k("p"),
            columns: 1
        })
    );
    assert_eq!(
        write(&state, "p", Change::Add(1), 2),
        Err(Error::TypeMismatch { key: k("p") })
    );
    write(&state, "c", Change::Add(1), 3).unwrap();
    assert_eq!(
        write(&state, "c", cols(&[1]), 4),
        Err(Error::ColumnsMismatch {
            key: k("c"),
            columns: 1
        })
    );
    // Refused writes changed nothing.
    assert_eq!(
        state.get("p"),
        Lookup::DeltaCols(Arc::from(&[i64::MAX, 0][..]))
    );
    assert_eq!(state.dirty_bytes(), 1 + 16 + 1 + 8);
}

/// A cut large enough to land on two threads leaves exactly the state the
/// one-thread landing (a single shard) leaves: the written rows clean with
/// their totals, the keys written again during the flight dirty over them.
#[test]
fn a_large_cut_lands_on_two_threads_as_on_one() {
    let n = 3 * 8_192;
    let limits = Limits {
        clean_capacity: 2 * n,
        ..Limits::default()
    };
    let run = |state: &State| {
        for i in 0..n {
            write(state, &format!("c{i}"), Change::Add(1), i as Lsn + 1).unwrap();
        }
        let c = cut(state, n as Lsn + 1);
        assert_eq!(c.items.len(), n);
        for i in (0..n).step_by(7) {
            write(state, &format!("c{i}"), Change::Add(5), (n + i) as Lsn + 2).unwrap();
        }
        let done = outcomes(&c, |item| {
            let i: i64 = item.key[1..].parse().unwrap();
            if i % 11 == 0 {
                UNKNOWN
            } else {
                written(2, Value::Int(100 + i))
            }
        });
        state.complete_cut(&done).unwrap();
        assert!(!state.has_in_flight());
        (0..n)
            .map(|i| state.get(&k(&format!("c{i}"))))
            .collect::<Vec<_>>()
    };
    let two = State::with_shards(limits.clone(), 64);
    let one = State::with_shards(limits, 1);
    let (seen_two, seen_one) = (run(&two), run(&one));
    assert_eq!(seen_two, seen_one);
    for (i, seen) in seen_two.iter().enumerate() {
        let want = match (i % 7 == 0, i % 11 == 0) {
            (true, true) => Lookup::Delta(5),
            (true, false) => Lookup::Value(Value::Int(100 + i as i64 + 5)),
            (false, true) => Lookup::Miss,
            (false, false) => Lookup::Value(Value::Int(100 + i as i64)),
        };
        assert_eq!(*seen, want, "c{i}");
    }
    let again = (0..n).step_by(7).count();
    let clean = (0..n).filter(|i| i % 7 != 0 && i % 11 != 0).count();
    for s in [&two, &one] {
        assert_eq!(s.dirty_entries(), again);
        assert_eq!(s.stats().clean_entries, clean);
    }
    assert_eq!(two.dirty_bytes(), one.dirty_bytes());
}
