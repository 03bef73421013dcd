//! Many writer threads with a concurrent flusher: counters sum exactly and
//! accounting returns to zero.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use writebehind_core::{Change, ItemOutcome, Key, Limits, Lookup, State, Value};

const THREADS: usize = 8;
const ADDS: usize = 20_000;
const KEYS: usize = 1_000;

fn keys() -> Vec<Key> {
    (0..KEYS).map(|i| Key::from(format!("c{i}"))).collect()
}

/// The root's write path, with a shared counter standing in for the WAL.
fn add(state: &State, wal: &AtomicU64, key: &Key, d: i64) {
    let change = Change::Add(d);
    let mut g = state.lock(key);
    g.check(key, &change).unwrap();
    let expected = g.expected(key);
    let lsn = wal.fetch_add(1, Ordering::SeqCst) + 1;
    g.apply(key.clone(), change, expected, lsn);
}

/// One flush against a map standing in for the database; `commit == false`
/// plays a failed transaction.
fn flush(
    state: &State,
    wal: &AtomicU64,
    db: &Mutex<HashMap<Key, (i64, i64)>>,
    commit: bool,
    vague: bool,
) {
    let cut = {
        let mut all = state.lock_all();
        let position = wal.fetch_add(1, Ordering::SeqCst) + 1;
        all.take_cut(position).unwrap()
    };
    if !commit {
        assert!(state.abort_cut());
        return;
    }
    let mut db = db.lock();
    let outcomes: Vec<_> = cut
        .items
        .iter()
        .map(|item| {
            let Change::Add(d) = item.change else {
                panic!("only adds were written: {item:?}")
            };
            let row = db.entry(item.key.clone()).or_insert((0, 0));
            row.0 += d;
            row.1 += 1;
            if vague {
                ItemOutcome::Written {
                    version: None,
                    value: None,
                }
            } else {
                ItemOutcome::Written {
                    version: Some(row.1),
                    value: Some(Value::Int(row.0)),
                }
            }
        })
        .collect();
    drop(db);
    state.complete_cut(&outcomes).unwrap();
}

#[test]
fn eight_writers_and_a_flusher_sum_exactly() {
    let state = Arc::new(State::new(Limits::default()));
    let wal = Arc::new(AtomicU64::new(0));
    let db = Arc::new(Mutex::new(HashMap::new()));
    let keys = Arc::new(keys());
    let done = Arc::new(AtomicBool::new(false));

    let flusher = {
        let (state, wal, db, done) = (state.clone(), wal.clone(), db.clone(), done.clone());
        std::thread::spawn(move || {
            let mut round = 0u32;
            while !done.load(Ordering::SeqCst) {
                round += 1;
                flush(
                    &state,
                    &wal,
                    &db,
                    !round.is_multiple_of(5),
                    round.is_multiple_of(2),
                );
            }
            round
        })
    };
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (state, wal, keys) = (state.clone(), wal.clone(), keys.clone());
            std::thread::spawn(move || {
                for i in 0..ADDS {
                    add(&state, &wal, &keys[(i * 31 + t * 7) % KEYS], 1);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let rounds = flusher.join().unwrap();
    assert!(rounds > 0);

    // Nothing flushed yet reads as a delta or a known value; all exact.
    let per_key = (THREADS * ADDS / KEYS) as i64;
    for k in keys.iter() {
        let db_value = db.lock().get(k).map_or(0, |r| r.0);
        let total = match state.get(k) {
            Lookup::Value(Value::Int(v)) => v,
            Lookup::Delta(d) => db_value + d,
            Lookup::Miss => db_value,
            other => panic!("{k:?}: {other:?}"),
        };
        assert_eq!(total, per_key, "{k:?}");
    }
    flush(&state, &wal, &db, true, false);
    let db = db.lock();
    assert_eq!(db.len(), KEYS);
    assert!(db.values().all(|r| r.0 == per_key));
    assert_eq!(state.dirty_entries(), 0);
    assert_eq!(state.dirty_bytes(), 0);
    assert_eq!(state.oldest_dirty_lsn(), None);
    assert!(!state.has_in_flight());
}
