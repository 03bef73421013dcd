//! Model-based crash test: random writes, checkpoints (some failing half-way),
//! crashes and reopens against a plain HashMap. Under `Fsync` every
//! acknowledged write survives every crash, exactly.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use writebehind::{Durability, Error, WriteBehind};
use writebehind_wal::io::{CrashMode, FaultyIo};

#[derive(Clone, Debug)]
enum Op {
    Add(u8, i64),
    Put(u8, i64),
    Delete(u8),
    Get(u8),
    Checkpoint,
    /// A checkpoint whose `n`-th fsync fails: the log is poisoned mid-way.
    FailingCheckpoint(u64),
    Crash(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, -5i64..6).prop_map(|(k, d)| Op::Add(k, d)),
        2 => (0u8..6, -100i64..100).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0u8..6).prop_map(Op::Delete),
        3 => (0u8..6).prop_map(Op::Get),
        1 => Just(Op::Checkpoint),
        1 => (0u64..4).prop_map(Op::FailingCheckpoint),
        1 => (0u8..4).prop_map(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

fn open(fs: &FaultyIo) -> WriteBehind<String, i64> {
    WriteBehind::<String, i64>::builder("/wal")
        .durability(Durability::Fsync)
        .segment_size(4096)
        .io(Arc::new(fs.clone()))
        .open_blocking()
        .unwrap()
}

fn mode(m: u8) -> CrashMode {
    match m {
        0 => CrashMode::LoseUnsynced,
        1 => CrashMode::KeepPrefix,
        2 => CrashMode::GarbleTail,
        _ => CrashMode::ZeroFillTail,
    }
}

fn assert_equal(cache: &WriteBehind<String, i64>, model: &HashMap<String, i64>) {
    for k in 0..6u8 {
        let key = format!("k{k}");
        assert_eq!(
            cache.get_blocking(key.as_str()).unwrap(),
            model.get(&key).copied(),
            "key {key}"
        );
    }
}

fn run(ops: Vec<Op>, seed: u64) {
    let fs = FaultyIo::with_seed(seed);
    let mut cache = open(&fs);
    let mut model: HashMap<String, i64> = HashMap::new();
    let mut poisoned = false;
    for op in ops {
        match op {
            Op::Add(k, d) => {
                let key = format!("k{k}");
                match cache.add_blocking(key.as_str(), d) {
                    Ok(_) => *model.entry(key).or_insert(0) += d,
                    Err(e) => assert!(poisoned, "add failed on a healthy log: {e}"),
                }
            }
            Op::Put(k, v) => {
                let key = format!("k{k}");
                match cache.put_blocking(key.as_str(), &v) {
                    Ok(_) => {
                        model.insert(key, v);
                    }
                    Err(e) => assert!(poisoned, "put failed on a healthy log: {e}"),
                }
            }
            Op::Delete(k) => {
                let key = format!("k{k}");
                match cache.delete_blocking(key.as_str()) {
                    Ok(_) => {
                        model.remove(&key);
                    }
                    Err(e) => assert!(poisoned, "delete failed on a healthy log: {e}"),
                }
            }
            Op::Get(k) => {
                let key = format!("k{k}");
                // A poisoned log refuses reads: memory may hold a write the
                // disk does not (see `Error`); the next open decides.
                match cache.get_blocking(key.as_str()) {
                    Ok(v) => assert_eq!(v, model.get(&key).copied()),
                    Err(e) => assert!(
                        poisoned && matches!(e, Error::Wal(_)),
                        "get failed on a healthy log: {e}"
                    ),
                }
            }
            Op::Checkpoint => {
                let r = cache.checkpoint();
                assert!(r.is_ok() || poisoned, "checkpoint failed: {r:?}");
            }
            Op::FailingCheckpoint(n) => {
                let failed_before = fs.failed_sync_count();
                fs.fail_sync_after(n);
                let r = cache.checkpoint();
                fs.clear_faults();
                if fs.failed_sync_count() > failed_before {
                    poisoned = true;
                } else {
                    assert!(r.is_ok() || poisoned, "checkpoint failed: {r:?}");
                }
            }
            Op::Crash(m) => {
                fs.crash(mode(m));
                drop(cache);
                cache = open(&fs);
                poisoned = false;
                assert_equal(&cache, &model);
            }
            Op::Reopen => {
                let r = cache.close_blocking();
                assert!(r.is_ok() || poisoned, "close failed: {r:?}");
                cache = open(&fs);
                poisoned = false;
                assert_equal(&cache, &model);
            }
        }
    }
    fs.crash(CrashMode::LoseUnsynced);
    drop(cache);
    let cache = open(&fs);
    assert_equal(&cache, &model);
}

fn cases() -> u32 {
    std::env::var("WB_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn every_acknowledged_write_survives_crashes(ops in proptest::collection::vec(op(), 1..120), seed in any::<u64>()) {
        run(ops, seed);
    }
}
