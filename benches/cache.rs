//! Cache write and read throughput against the raw WAL append of the same
//! bytes, measured in the same run; ratios are printed at the end.
//!
//! `cargo bench --bench cache`
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use writebehind::{Durability, WriteBehind};
use writebehind_wal::WalBuilder;

const KEYS: usize = 1_000;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("counter:{i}")).collect()
}

fn modes() -> [(&'static str, Durability); 2] {
    [
        (
            "buffered",
            Durability::Buffered {
                interval: Duration::from_millis(10),
            },
        ),
        ("fsync", Durability::Fsync),
    ]
}

/// Runs `per_thread` operations on each of `threads` threads; returns the wall time.
fn parallel(threads: usize, per_thread: u64, op: impl Fn(usize, u64) + Sync) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let op = &op;
            s.spawn(move || {
                for i in 0..per_thread {
                    op(t, i);
                }
            });
        }
    });
    started.elapsed()
}

fn add(c: &mut Criterion) {
    let keys = keys();
    let mut ratios = Vec::new();
    for (name, durability) in modes() {
        for threads in [1usize, 2, 64] {
            let mut group = c.benchmark_group(format!("add/{name}/{threads}w"));
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(3));
            group.throughput(Throughput::Elements(1));
            let mut per_op = [0f64; 2];

            let dir = tempfile::tempdir().expect("tempdir");
            let (wal, _) = WalBuilder::new(dir.path())
                .durability(durability)
                .open()
                .expect("open wal");
            // The same record bytes the cache appends for an add.
            let payloads: Vec<Vec<u8>> = keys.iter().map(|k| raw_record(k)).collect();
            group.bench_function("raw-wal-append", |b| {
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(threads as u64);
                    let t = parallel(threads, per, |th, i| {
                        let p = &payloads[(th * 31 + i as usize) % KEYS];
                        black_box(wal.append(1, p).expect("append").wait().expect("ack"));
                    });
                    per_op[0] = t.as_secs_f64() / (per * threads as u64) as f64;
                    t.mul_f64(iters as f64 / (per * threads as u64) as f64)
                })
            });
            wal.close().expect("close");

            let dir = tempfile::tempdir().expect("tempdir");
            let cache = WriteBehind::<String, i64>::builder(dir.path())
                .durability(durability)
                .open_blocking()
                .expect("open cache");
            group.bench_function("cache-add", |b| {
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(threads as u64);
                    let t = parallel(threads, per, |th, i| {
                        let k = &keys[(th * 31 + i as usize) % KEYS];
                        black_box(cache.add_blocking(k.as_str(), 1).expect("add"));
                    });
                    per_op[1] = t.as_secs_f64() / (per * threads as u64) as f64;
                    t.mul_f64(iters as f64 / (per * threads as u64) as f64)
                })
            });
            cache.close_blocking().expect("close");
            group.finish();
            ratios.push((name, threads, per_op[0], per_op[1]));
        }
    }
    println!("\nadd vs raw WAL append (same record bytes, same durability, same threads):");
    println!(
        "{:<10} {:>7} {:>14} {:>14} {:>10}",
        "mode", "writers", "raw appends/s", "cache adds/s", "overhead"
    );
    for (name, threads, raw, cache) in ratios {
        println!(
            "{name:<10} {threads:>7} {:>14.0} {:>14.0} {:>9.1}%",
            1.0 / raw,
            1.0 / cache,
            (cache / raw - 1.0) * 100.0
        );
    }
}

/// The WAL payload of `add(key, 1)` (see `src/log.rs`).
fn raw_record(key: &str) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 0];
    v.extend_from_slice(&(key.len() as u64).to_le_bytes());
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&1i64.to_le_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v
}

fn get(c: &mut Criterion) {
    let keys = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(
        WriteBehind::<String, i64>::builder(dir.path())
            .durability(Durability::None)
            .open_blocking()
            .expect("open"),
    );
    for k in &keys {
        cache.add_blocking(k.as_str(), 1).expect("add");
    }
    let mut group = c.benchmark_group("get");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("hot-dirty-key", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(cache.get_blocking(keys[i].as_str()).expect("get"))
        })
    });
    group.finish();
}

criterion_group!(benches, add, get);
criterion_main!(benches);
