//! Memory per dirty counter entry beyond the key's own bytes (target:
//! <= 128 bytes).
//!
//! The workspace forbids `unsafe`, so no counting allocator: the figure is
//! computed from what is allocated, exactly: `State::index_heap_bytes()`
//! (hashbrown's `allocation_size()` of every shard table + one boxed node
//! per entry + in-flight boxes) plus the `Arc<str>` header of each key
//! (2 × usize). Malloc's own per-allocation overhead is not included; the
//! RSS growth is printed next to it as a cross-check (Linux only).
//!
//! Run: `cargo bench -p writebehind-core --bench memory`.
#![allow(clippy::unwrap_used, missing_docs)]

use writebehind_core::{Change, ItemOutcome, Key, Limits, State, Value};

const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();

fn rss_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn add(state: &State, key: &Key, d: i64, lsn: u64) {
    let change = Change::Add(d);
    let mut g = state.lock(key);
    g.check(key, &change).unwrap();
    let e = g.expected(key);
    g.apply(key.clone(), change, e, lsn);
}

fn report(label: &str, n: usize, state: &State, rss: Option<usize>) {
    let index = state.index_heap_bytes();
    let per = (index + n * ARC_HEADER) as f64 / n as f64;
    // `rss` was taken after the keys were built, so the growth is the
    // index plus malloc overhead; the Arc headers are added like above.
    let rss = match (rss, rss_bytes()) {
        (Some(a), Some(b)) => format!(
            "{:.1} B/entry",
            b.saturating_sub(a) as f64 / n as f64 + ARC_HEADER as f64
        ),
        _ => "-".into(),
    };
    println!("{label:<26} n={n:>9}  computed {per:>6.1} B/entry   rss {rss}");
}

fn main() {
    // Each size runs in a fresh process so the RSS growth is not blurred by
    // memory the previous size freed.
    if let Some(n) = std::env::var("WB_MEMORY_N")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        measure(n);
        return;
    }
    // Layout (asserted in entry.rs `layouts_are_compact`): a 72-byte node
    // per entry, boxed; an 8-byte table slot + 1 control byte; a 32-byte
    // in-flight box (56 with a newer pending change) only during a flush.
    let exe = std::env::current_exe().unwrap();
    for n in [10_000usize, 100_000, 500_000, 1_000_000, 1_500_000] {
        let out = std::process::Command::new(&exe)
            .env("WB_MEMORY_N", n.to_string())
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn measure(n: usize) {
    let limits = Limits {
        max_dirty_entries: usize::MAX,
        ..Limits::default()
    };
    let keys: Vec<Key> = (0..n)
        .map(|i| Key::from(format!("page:views:{i:08}")))
        .collect();
    let state = State::new(limits);
    // Keys exist already: the growth from here is the index alone.
    let rss0 = rss_bytes();
    for (i, k) in keys.iter().enumerate() {
        add(&state, k, 1, i as u64 + 1);
    }
    report("blind counters", n, &state, rss0);

    // A flushed counter that keeps counting: known base + pending add.
    let cut = state.lock_all().take_cut(n as u64 + 1).unwrap();
    let outcomes: Vec<_> = cut
        .items
        .iter()
        .map(|_| ItemOutcome::Written {
            version: Some(1),
            value: Some(Value::Int(1)),
        })
        .collect();
    for (i, k) in keys.iter().enumerate() {
        add(&state, k, 1, (n + 2 + i) as u64);
    }
    report("counters during a flush", n, &state, None);
    state.complete_cut(&outcomes).unwrap();
    report("counters with known base", n, &state, None);
    println!();
}
