//! Speed of the in-memory state, each case with its baseline in the same run.
//!
//! - `get`: hot-key reads (dirty counters, dirty with known base, clean rows)
//!   against a bare `HashMap<Key, i64>` lookup; target >= 5 M gets/s.
//! - `write`: lock + check + expected + apply of an add, one thread.
//! - `clean_cache`: quick_cache vs moka (sync) get/insert at our capacity.
//! - `hasher`: foldhash (hashbrown's default) vs std SipHash on our keys.
//! - `shards`: two threads applying adds at 1 / 8 / 64 / 256 shards, and
//!   what `lock_all` (every flush and checkpoint) costs at 8 / 64 / 256.
//!
//! Run: `cargo bench -p writebehind-core --bench core`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use writebehind_core::{Change, ItemOutcome, Key, Limits, Lookup, State, Value};

const HOT: usize = 1000;

fn keys(n: usize) -> Vec<Key> {
    (0..n)
        .map(|i| Key::from(format!("page:views:{i:08}")))
        .collect()
}

fn add(state: &State, key: &Key, d: i64, lsn: u64) {
    let change = Change::Add(d);
    let mut g = state.lock(key);
    g.check(key, &change).unwrap();
    let e = g.expected(key);
    g.apply(key.clone(), change, e, lsn);
}

fn read_all(state: &State, keys: &[Key]) -> usize {
    let mut found = 0;
    for k in keys {
        if !matches!(state.get(k), Lookup::Miss) {
            found += 1;
        }
    }
    found
}

fn get(c: &mut Criterion) {
    let hot = keys(HOT);
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(HOT as u64));

    let baseline: HashMap<Key, i64> = hot.iter().map(|k| (k.clone(), 1)).collect();
    g.bench_function("baseline_std_hashmap", |b| {
        b.iter(|| {
            hot.iter()
                .map(|k| baseline.get(k).copied().unwrap_or(0))
                .sum::<i64>()
        })
    });

    let dirty = State::new(Limits::default());
    for (i, k) in hot.iter().enumerate() {
        add(&dirty, k, 1, i as u64 + 1);
    }
    g.bench_function("dirty_delta", |b| {
        b.iter(|| read_all(&dirty, black_box(&hot)))
    });

    // Known base: flushed once with reported rows, then added to again.
    let based = State::new(Limits::default());
    for (i, k) in hot.iter().enumerate() {
        add(&based, k, 1, i as u64 + 1);
    }
    let cut = based.lock_all().take_cut(HOT as u64 + 1).unwrap();
    for (i, k) in hot.iter().enumerate() {
        add(&based, k, 1, (HOT + 2 + i) as u64);
    }
    let outcomes: Vec<_> = cut
        .items
        .iter()
        .map(|_| ItemOutcome::Written {
            version: Some(1),
            value: Some(Value::Int(1)),
        })
        .collect();
    based.complete_cut(&outcomes).unwrap();
    g.bench_function("dirty_known_value", |b| {
        b.iter(|| read_all(&based, black_box(&hot)))
    });

    let clean = State::new(Limits::default());
    for k in &hot {
        let t = clean.load_ticket(k);
        assert!(clean.insert_loaded(t, Some((Value::Int(5), 1))));
    }
    g.bench_function("clean_hit", |b| {
        b.iter(|| read_all(&clean, black_box(&hot)))
    });

    let ttl = State::new(Limits {
        clean_ttl: Some(Duration::from_secs(3600)),
        ..Limits::default()
    });
    for k in &hot {
        let t = ttl.load_ticket(k);
        assert!(ttl.insert_loaded(t, Some((Value::Int(5), 1))));
    }
    g.bench_function("clean_hit_ttl", |b| {
        b.iter(|| read_all(&ttl, black_box(&hot)))
    });

    let empty = State::new(Limits::default());
    g.bench_function("miss", |b| b.iter(|| read_all(&empty, black_box(&hot))));
    g.finish();
}

fn write(c: &mut Criterion) {
    let hot = keys(HOT);
    let mut g = c.benchmark_group("write");
    g.throughput(Throughput::Elements(HOT as u64));
    let state = State::new(Limits::default());
    let mut lsn = 0;
    g.bench_function("add_hot_keys", |b| {
        b.iter(|| {
            for k in &hot {
                lsn += 1;
                add(&state, k, 1, lsn);
            }
        })
    });
    g.finish();
}

fn clean_cache(c: &mut Criterion) {
    let hot = keys(HOT);
    let cap = Limits::default().clean_capacity;
    let mut g = c.benchmark_group("clean_cache");
    g.throughput(Throughput::Elements(HOT as u64));
    let row = || Some((Value::Int(5), 1i64));

    let qc: quick_cache::sync::Cache<Key, Option<(Value, i64)>> =
        quick_cache::sync::Cache::new(cap);
    for k in &hot {
        qc.insert(k.clone(), row());
    }
    g.bench_function("quick_cache_get", |b| {
        b.iter(|| hot.iter().filter(|k| qc.get(*k).is_some()).count())
    });
    let mk: moka::sync::Cache<Key, Option<(Value, i64)>> = moka::sync::Cache::new(cap as u64);
    for k in &hot {
        mk.insert(k.clone(), row());
    }
    g.bench_function("moka_get", |b| {
        b.iter(|| hot.iter().filter(|k| mk.get(*k).is_some()).count())
    });

    // Inserts beyond capacity: eviction cost.
    let many = keys(cap * 2);
    let mut at = 0;
    g.bench_function("quick_cache_insert_evicting", |b| {
        b.iter(|| {
            for _ in 0..HOT {
                at = (at + 1) % many.len();
                qc.insert(many[at].clone(), row());
            }
        })
    });
    let mut at = 0;
    g.bench_function("moka_insert_evicting", |b| {
        b.iter(|| {
            for _ in 0..HOT {
                at = (at + 1) % many.len();
                mk.insert(many[at].clone(), row());
            }
        })
    });
    g.finish();
}

fn hasher(c: &mut Criterion) {
    let hot = keys(HOT);
    let mut g = c.benchmark_group("hasher");
    g.throughput(Throughput::Elements(HOT as u64));
    let fold = hashbrown::DefaultHashBuilder::default();
    g.bench_function("foldhash", |b| {
        b.iter(|| hot.iter().fold(0u64, |a, k| a ^ fold.hash_one(&**k)))
    });
    let sip = RandomState::new();
    g.bench_function("std_siphash", |b| {
        b.iter(|| hot.iter().fold(0u64, |a, k| a ^ sip.hash_one(&**k)))
    });
    g.finish();
}

fn shards(c: &mut Criterion) {
    let hot = Arc::new(keys(HOT * 10));
    let mut g = c.benchmark_group("shards_2_threads");
    const PER_THREAD: usize = 20_000; // amortises the thread spawns
    g.throughput(Throughput::Elements(2 * PER_THREAD as u64));
    for n in [1usize, 8, 64, 256] {
        let state = Arc::new(State::with_shards(Limits::default(), n));
        g.bench_function(format!("{n}"), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for t in 0..2usize {
                        let state = &state;
                        let hot = &hot;
                        s.spawn(move || {
                            for i in 0..PER_THREAD {
                                let k = &hot[(i * 7 + t * 5003) % hot.len()];
                                add(state, k, 1, 1);
                            }
                        });
                    }
                })
            })
        });
    }
    g.finish();

    // The price of more shards: every flush and checkpoint locks them all.
    let mut g = c.benchmark_group("lock_all");
    for n in [8usize, 64, 256] {
        let state = State::with_shards(Limits::default(), n);
        g.bench_function(format!("{n}"), |b| {
            b.iter(|| drop(black_box(state.lock_all())))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = get, write, clean_cache, hasher, shards
}
criterion_main!(benches);
