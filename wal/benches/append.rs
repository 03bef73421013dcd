//! Append throughput per durability mode and appender count, against a raw
//! `write`+`fdatasync`-per-record baseline and sled 0.34 as the log, all in the same run and
//! the same temp directory (set `WB_BENCH_DIR` to pick the disk). Recovery throughput in MB/s.
//!
//! `Buffered`/`None` appenders are pipelined: each keeps up to 1024 tickets outstanding and
//! waits for them in order (the realistic way to use a write-behind log from one thread).
//! `Fsync` appenders wait for every ticket before the next append (closed loop).
//!
//! Run: `cargo bench -p writebehind-wal --bench append`. Quick run: `WB_BENCH_QUICK=1`.
//! Ratios are printed at the end.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use writebehind_wal::{Durability, Wal, WalBuilder};

const PAYLOAD: [u8; 32] = [7u8; 32];
const WINDOW: usize = 1024;
const APPENDERS: [usize; 3] = [1, 4, 64];
const BUFFERED: Duration = Duration::from_millis(100);

static RESULTS: Mutex<BTreeMap<String, (u64, Duration)>> = Mutex::new(BTreeMap::new());

fn record(name: &str, n: u64, d: Duration) {
    let mut r = RESULTS.lock().unwrap();
    let e = r.entry(name.to_owned()).or_insert((0, Duration::ZERO));
    e.0 += n;
    e.1 += d;
}

fn rate(name: &str) -> Option<f64> {
    let r = RESULTS.lock().unwrap();
    r.get(name).map(|(n, d)| *n as f64 / d.as_secs_f64())
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("WB_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(PathBuf::from(d)).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn quick() -> bool {
    std::env::var_os("WB_BENCH_QUICK").is_some()
}

fn configure(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("append_32b");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(if quick() { 200 } else { 1000 }));
    g.measurement_time(Duration::from_millis(if quick() { 1000 } else { 4000 }));
    g.throughput(Throughput::Elements(1));
    g
}

fn mode_name(m: Durability) -> &'static str {
    match m {
        Durability::Fsync => "fsync",
        Durability::Buffered { .. } => "buffered",
        Durability::None => "none",
        Durability::Replicated => "replicated",
    }
}

/// Runs `per_thread` operations on each of `threads` threads; returns the wall time.
fn run_threads(threads: usize, per_thread: u64, f: Arc<dyn Fn(u64) + Send + Sync>) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let b = barrier.clone();
            let f = f.clone();
            std::thread::spawn(move || {
                b.wait();
                f(per_thread);
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in hs {
        h.join().unwrap();
    }
    start.elapsed()
}

fn wal_appends(wal: &Wal, n: u64, mode: Durability) {
    if mode == Durability::Fsync {
        for _ in 0..n {
            wal.append(0, &PAYLOAD).unwrap().wait().unwrap();
        }
    } else {
        let mut q = VecDeque::with_capacity(WINDOW);
        for _ in 0..n {
            if q.len() == WINDOW {
                let t: writebehind_wal::Append = q.pop_front().unwrap();
                t.wait().unwrap();
            }
            q.push_back(wal.append(0, &PAYLOAD).unwrap());
        }
        for t in q {
            t.wait().unwrap();
        }
    }
}

/// One `write`+`fdatasync` per record for `dur` in `dir`: the baseline, measured right next
/// to each `Fsync` run too, because the shared disk's fsync latency drifts over minutes.
fn baseline_burst(dir: &std::path::Path, dur: Duration) -> (u64, Duration) {
    let path = dir.join("baseline-burst.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let rec = [7u8; 52];
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < dur {
        f.write_all(&rec).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    // The file is kept (and reopened next time) so no slice pays for creating it.
    (n, start.elapsed())
}

fn bench_ours(c: &mut Criterion) {
    let mut g = configure(c);
    for mode in [
        Durability::Fsync,
        Durability::Buffered { interval: BUFFERED },
        Durability::None,
    ] {
        for threads in APPENDERS {
            let dir = bench_dir();
            let adjacent = format!("baseline_adjacent/{threads}");
            if mode == Durability::Fsync {
                let (n, d) = baseline_burst(dir.path(), Duration::from_millis(750));
                record(&adjacent, n, d);
            }
            let (wal, _) = WalBuilder::new(dir.path()).durability(mode).open().unwrap();
            let wal = Arc::new(wal);
            let name = format!("wal/{}/{threads}", mode_name(mode));
            g.bench_function(
                BenchmarkId::new("wal", format!("{}/{threads}", mode_name(mode))),
                |b| {
                    b.iter_custom(|iters| {
                        let per = (iters / threads as u64).max(1);
                        let w = wal.clone();
                        let d =
                            run_threads(threads, per, Arc::new(move |n| wal_appends(&w, n, mode)));
                        record(&name, per * threads as u64, d);
                        wal.truncate_before(wal.last_lsn()).unwrap();
                        d.mul_f64(iters as f64 / (per * threads as u64) as f64)
                    })
                },
            );
            Arc::try_unwrap(wal).unwrap().close().unwrap();
            if mode == Durability::Fsync {
                let (n, d) = baseline_burst(dir.path(), Duration::from_millis(750));
                record(&adjacent, n, d);
            }
        }
    }
    g.finish();
}

fn bench_baseline(c: &mut Criterion) {
    let mut g = configure(c);
    let dir = bench_dir();
    let path = dir.path().join("baseline.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    // Same bytes per record as our frame: 20-byte header + 32-byte payload.
    let rec = [7u8; 52];
    g.bench_function("baseline_write_fdatasync/1", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                f.write_all(&rec).unwrap();
                f.sync_data().unwrap();
            }
            let d = start.elapsed();
            record("baseline", iters, d);
            d
        })
    });
    g.finish();
}

fn bench_sled(c: &mut Criterion) {
    let mut g = configure(c);
    for mode in [
        Durability::Fsync,
        Durability::Buffered { interval: BUFFERED },
        Durability::None,
    ] {
        for threads in APPENDERS {
            let dir = bench_dir();
            let flush_ms = match mode {
                Durability::Buffered { interval } => Some(interval.as_millis() as u64),
                _ => None,
            };
            let db = sled::Config::new()
                .path(dir.path())
                .flush_every_ms(flush_ms)
                .open()
                .unwrap();
            let next = Arc::new(AtomicU64::new(1));
            let name = format!("sled/{}/{threads}", mode_name(mode));
            g.bench_function(
                BenchmarkId::new("sled", format!("{}/{threads}", mode_name(mode))),
                |b| {
                    b.iter_custom(|iters| {
                        let per = (iters / threads as u64).max(1);
                        let (db2, next2) = (db.clone(), next.clone());
                        let d = run_threads(
                            threads,
                            per,
                            Arc::new(move |n| {
                                for _ in 0..n {
                                    let lsn = next2.fetch_add(1, Ordering::Relaxed);
                                    db2.insert(lsn.to_be_bytes(), &PAYLOAD[..]).unwrap();
                                    if mode == Durability::Fsync {
                                        db2.flush().unwrap();
                                    }
                                }
                            }),
                        );
                        record(&name, per * threads as u64, d);
                        db.clear().unwrap();
                        d.mul_f64(iters as f64 / (per * threads as u64) as f64)
                    })
                },
            );
        }
    }
    g.finish();
}

fn bench_recovery(c: &mut Criterion) {
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(if quick() { 2 } else { 5 }));
    let dir = bench_dir();
    let records: u64 = if quick() { 200_000 } else { 1_000_000 };
    let (wal, _) = WalBuilder::new(dir.path())
        .durability(Durability::None)
        .open()
        .unwrap();
    wal_appends(&wal, records, Durability::None);
    let bytes = wal.disk_usage();
    wal.close().unwrap();
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(format!("open_and_replay/{}MB", bytes >> 20), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let (wal, rec) = WalBuilder::new(dir.path()).open().unwrap();
                assert_eq!(rec.records, records);
                let n = wal.replay(1).unwrap().filter(|r| r.is_ok()).count() as u64;
                assert_eq!(n, records);
                drop(wal);
            }
            let d = start.elapsed();
            record("recovery_bytes", bytes * iters, d);
            d
        })
    });
    g.finish();
}

fn print_ratios() {
    let base = rate("baseline").unwrap_or(f64::NAN);
    println!("\n== writebehind-wal append throughput (32-byte payloads, records/s) ==");
    println!("baseline write+fdatasync per record: {base:.0}/s");
    println!("fsync rows: 'adj' is the baseline measured just before and after that run (the disk drifts)");
    println!(
        "{:<10} {:>9} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "mode", "appenders", "wal", "sled", "adj", "wal/base", "wal/adj", "wal/sled"
    );
    for mode in ["fsync", "buffered", "none"] {
        for t in APPENDERS {
            let ours = rate(&format!("wal/{mode}/{t}")).unwrap_or(f64::NAN);
            let sled = rate(&format!("sled/{mode}/{t}")).unwrap_or(f64::NAN);
            let adj = if mode == "fsync" {
                rate(&format!("baseline_adjacent/{t}")).unwrap_or(f64::NAN)
            } else {
                f64::NAN
            };
            println!(
                "{mode:<10} {t:>9} {ours:>12.0} {sled:>12.0} {adj:>9.0} {:>9.1} {:>9.1} {:>9.2}",
                ours / base,
                ours / adj,
                ours / sled
            );
        }
    }
    println!(
        "Fsync in alternating 300 ms slices (same disk state): wal, wal without preallocated \
         segments, sled, and the baseline"
    );
    for t in APPENDERS {
        let r = |k: &str| rate(&format!("interleaved_{k}/{t}")).unwrap_or(f64::NAN);
        let (w, p, s, b) = (r("wal"), r("plain"), r("sled"), r("base"));
        println!(
            "  {t:>2} appenders: wal {w:>8.0}/s  plain {p:>8.0}/s  sled {s:>8.0}/s  baseline \
             {b:>7.0}/s  wal/plain {:>4.2}  wal/sled {:>4.2}  wal/base {:>5.2}",
            w / p,
            w / s,
            w / b
        );
    }
    if let Some(r) = rate("recovery_bytes") {
        println!("recovery (open + full replay): {:.0} MB/s", r / 1e6);
    }
    println!(
        "note: sled's flush() uses sync_file_range on Linux (no device cache flush, no metadata),"
    );
    println!("      a weaker guarantee than the fdatasync behind wal Fsync and the baseline.");
}

/// One operation of an interleaved contender.
type Op = Arc<dyn Fn() + Send + Sync>;

/// `threads` threads calling `op` in a loop for `slice`: (calls, elapsed).
fn slice_run(threads: usize, slice: Duration, op: Op) -> (u64, Duration) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (op, stop, count) = (op.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    op();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(slice);
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    (count.load(Ordering::Relaxed), start.elapsed())
}

/// `Fsync` against the baseline, against itself without preallocated segments, and against
/// sled (insert + flush), in alternating slices of equal length, so all see the same disk (its
/// fsync latency on this shared machine swings 20x within minutes).
fn fsync_interleaved() {
    let rounds = if quick() { 3 } else { 8 };
    let slice = Duration::from_millis(300);
    for threads in APPENDERS {
        let dir = bench_dir();
        let wal = |name: &str, prealloc: bool| {
            let (w, _) = WalBuilder::new(dir.path().join(name))
                .preallocate(prealloc)
                .open()
                .unwrap();
            Arc::new(w)
        };
        let (pre, plain) = (wal("pre", true), wal("plain", false));
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .unwrap();
        let next = Arc::new(AtomicU64::new(1));
        let append = |w: &Arc<Wal>| -> Op {
            let w = w.clone();
            Arc::new(move || {
                w.append(0, &PAYLOAD).unwrap().wait().unwrap();
            })
        };
        let contenders: [(&str, Op); 3] = [
            ("interleaved_wal", append(&pre)),
            ("interleaved_plain", append(&plain)),
            (
                "interleaved_sled",
                Arc::new(move || {
                    let lsn = next.fetch_add(1, Ordering::Relaxed);
                    db.insert(lsn.to_be_bytes(), &PAYLOAD[..]).unwrap();
                    db.flush().unwrap();
                }),
            ),
        ];
        for _ in 0..rounds {
            let (n, d) = baseline_burst(dir.path(), slice);
            record(&format!("interleaved_base/{threads}"), n, d);
            for (name, op) in &contenders {
                let (n, d) = slice_run(threads, slice, op.clone());
                record(&format!("{name}/{threads}"), n, d);
            }
        }
        drop(contenders);
        for w in [pre, plain] {
            Arc::try_unwrap(w).unwrap().close().unwrap();
        }
    }
}

criterion_group!(
    benches,
    bench_baseline,
    bench_ours,
    bench_sled,
    bench_recovery
);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    fsync_interleaved();
    print_ratios();
}
