//! Runs the `prometheus` example's workload in-process (the example's own
//! code, included below), scrapes its HTTP endpoint with a plain GET and
//! checks every documented metric is there with the value the cache's
//! `stats()` reports.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

#[allow(dead_code)]
#[path = "../examples/prometheus.rs"]
mod example;

/// `name{labels}` → value, for the `writebehind_` lines of a scrape.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .lines()
        .filter(|l| l.starts_with("writebehind_"))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

/// The value of the one series of `name` whose labels contain all of `with`.
fn value(m: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    let found: Vec<f64> = m
        .iter()
        .filter(|(series, _)| {
            let (n, labels) = series.split_once('{').unwrap_or((series.as_str(), ""));
            n == name && with.iter().all(|w| labels.contains(w))
        })
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(found.len(), 1, "{name} {with:?} in {m:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_endpoint_serves_every_metric_with_the_stats_values() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = tempfile::tempdir().unwrap();
    let opts = example::Options {
        listen: Some(addr),
        db: None,
        wal: dir.path().join("wal"),
        table: "prom_test".into(),
        ops: 4_000,
        serve_secs: 0,
    };
    example::install(addr).unwrap();
    let stats = example::workload(&opts).await.unwrap();
    let m = scrape(addr);

    // Every documented metric is exported (histograms as summaries).
    for (name, kind, _) in writebehind::metrics::METRICS {
        let series = if *kind == "histogram" {
            format!("{name}_count")
        } else {
            (*name).to_owned()
        };
        assert!(
            m.keys()
                .any(|k| k.split('{').next() == Some(series.as_str())),
            "{series} missing"
        );
    }

    // Counters: exactly what stats() saw before close (close published them).
    let id = std::fs::read_to_string(dir.path().join("wal/instance.id")).unwrap();
    let inst = format!("instance=\"{}\"", id.trim());
    let v = |name: &str| value(&m, name, &[inst.as_str()]);
    let op = |op: &str| value(&m, "writebehind_writes_total", &[inst.as_str(), op]);
    assert_eq!(op("op=\"add\""), 3_200.0);
    assert_eq!(op("op=\"put\""), 400.0);
    assert_eq!(op("op=\"delete\""), 400.0);
    assert_eq!(
        (stats.adds, stats.puts, stats.deletes, stats.writes),
        (3_200, 400, 400, 4_000)
    );
    // 1 000 reads of 400 keys, half of which were never written. No read
    // came after stats() was taken, and the scrape is of close's last
    // publish (after the flusher and the checkpoint thread stopped): the
    // counters and the gauge are one snapshot, equal to stats().
    let (hits, misses) = (v("writebehind_hits_total"), v("writebehind_misses_total"));
    assert!(hits + misses >= 1_000.0, "{hits} + {misses}");
    assert!(hits > 0.0 && misses > 0.0, "{hits} {misses}");
    assert_eq!((hits, misses), (stats.hits as f64, stats.misses as f64));
    let ratio = v("writebehind_hit_ratio");
    assert!((ratio - hits / (hits + misses)).abs() < 1e-9, "{ratio}");
    assert!((ratio - stats.hit_ratio()).abs() < 1e-9, "{ratio}");
    assert!(v("writebehind_loads_total") >= 1.0);
    assert!(v("writebehind_flushes_total") >= 1.0);
    assert!(v("writebehind_flushes_total") >= stats.flushes as f64);
    let rows = v("writebehind_rows_flushed_total");
    assert!((250.0..4_000.0).contains(&rows), "{rows}");
    assert_eq!(v("writebehind_flush_failures_total"), 0.0);
    assert_eq!(v("writebehind_retries_total"), 0.0);
    assert_eq!(v("writebehind_conflicts_total"), 0.0);
    assert_eq!(v("writebehind_dead_letters_total"), 0.0);
    assert_eq!(v("writebehind_backpressure_rejections_total"), 0.0);
    assert_eq!(v("writebehind_notifications_total"), 0.0);
    // close() wrote a checkpoint.
    assert!(v("writebehind_checkpoints_total") >= 1.0);
    // Gauges after close: nothing dirty, nothing old.
    assert_eq!(v("writebehind_dirty_entries"), 0.0);
    // The limits the dirty figures are drawn against: the defaults here.
    assert_eq!(v("writebehind_max_dirty_entries"), 1_000_000.0);
    assert_eq!(v("writebehind_max_dirty_bytes"), (256u64 << 20) as f64);
    assert_eq!(v("writebehind_dirty_bytes"), 0.0);
    assert_eq!(v("writebehind_oldest_unflushed_seconds"), 0.0);
    assert!(v("writebehind_clean_entries") > 0.0);
    assert!(v("writebehind_wal_bytes") > 0.0);
    assert!(v("writebehind_wal_segments") >= 1.0);
    assert_eq!(v("writebehind_recovery_records"), 0.0);
    assert!(v("writebehind_recovery_seconds") < 5.0);
    // Histograms: one fsync wait per fsync-durability write (400) plus the
    // flush-start markers and close's sync; batches as many as flushes.
    let fsyncs = value(&m, "writebehind_fsync_seconds_count", &[inst.as_str()]);
    assert!(fsyncs >= 400.0 + stats.flushes as f64, "{fsyncs}");
    let batches = value(&m, "writebehind_flush_batch_rows_count", &[inst.as_str()]);
    assert_eq!(batches, v("writebehind_flushes_total"));
    let batch_rows = value(&m, "writebehind_flush_batch_rows_sum", &[inst.as_str()]);
    assert!(batch_rows >= rows, "{batch_rows} < {rows}");
    let flush_secs = value(&m, "writebehind_flush_seconds_sum", &[inst.as_str()]);
    assert!(flush_secs > 0.0 && flush_secs < 60.0, "{flush_secs}");

    // The read side: every figure equals stats(). Each count is published
    // once: publishes that overlap (the checkpoint thread's, a flush's)
    // publish in the order their figures were taken (src/metrics.rs).
    let evictions = |cause: &str| {
        value(
            &m,
            "writebehind_evictions_total",
            &[inst.as_str(), &format!("cause=\"{cause}\"")],
        )
    };
    // page:0, then page:1, page:10..=19 and page:100..=199 but those ending
    // in 7 or 9 (never written: those turns write item:*, and reads only
    // ask for multiples of 4): 1 + (1 + 8 + 80) clean copies.
    assert_eq!(stats.invalidation_evictions, 90);
    assert_eq!(
        evictions("invalidation"),
        stats.invalidation_evictions as f64
    );
    assert_eq!(evictions("capacity"), stats.capacity_evictions as f64);
    assert_eq!(evictions("ttl"), stats.ttl_evictions as f64);
    assert_eq!(v("writebehind_clean_bytes"), stats.clean_bytes as f64);
    assert!(stats.clean_bytes >= stats.clean_entries * 8 && stats.clean_bytes > 0);
    assert_eq!(v("writebehind_clean_entries"), stats.clean_entries as f64);
    assert_eq!(v("writebehind_loads_total"), stats.loads as f64);
    let loads = value(&m, "writebehind_load_seconds_count", &[inst.as_str()]);
    assert_eq!(loads, stats.loads as f64);
    assert_eq!(stats.load_latency.count(), stats.loads);
    let load_secs = value(&m, "writebehind_load_seconds_sum", &[inst.as_str()]);
    let stats_secs = stats.load_latency.sum().as_secs_f64();
    assert!(
        (load_secs - stats_secs).abs() < 1e-3 * loads,
        "{load_secs} {stats_secs}"
    );
    assert_eq!(v("writebehind_refreshes_total"), stats.refreshes as f64);
    assert_eq!(
        v("writebehind_refresh_failures_total"),
        stats.refresh_failures as f64
    );
    assert_eq!(
        v("writebehind_invalidation_broadcasts_total"),
        stats.invalidation_broadcasts as f64
    );
}

/// WARN events' messages and fields, captured process-wide.
mod capture {
    use std::sync::{Mutex, OnceLock};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    pub static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    struct Capture;
    struct Text(String);

    impl Visit for Text {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={:?} ", field.name(), value));
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            *m.level() <= Level::WARN
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut text = Text(String::new());
            event.record(&mut text);
            WARNINGS.lock().unwrap().push(text.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    pub fn install() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| tracing::subscriber::set_global_default(Capture).unwrap());
    }
}

/// A WAL disk that takes over a second per fsync: the waits are measured,
/// and the warning is logged once a second at most, not once per writer.
#[test]
fn slow_fsyncs_are_warned_about_once_a_second_at_most() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use writebehind::{Durability, WriteBehind};
    use writebehind_wal::io::FaultyIo;

    capture::install();
    let fs = FaultyIo::new();
    let dir = tempfile::tempdir().unwrap();
    let cache = WriteBehind::<String, i64>::builder(dir.path().join("slow-wal"))
        .durability(Durability::Fsync)
        .io(Arc::new(fs.clone()))
        .open_blocking()
        .unwrap();
    fs.set_sync_latency(Some(Duration::from_millis(1_100)));
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..8 {
            let cache = &cache;
            s.spawn(move || cache.add_blocking(format!("k{t}").as_str(), 1).unwrap());
        }
    });
    let elapsed = started.elapsed();
    fs.set_sync_latency(None);
    let slow: Vec<String> = capture::WARNINGS
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.contains("slow fsync") && w.contains("slow-wal"))
        .cloned()
        .collect();
    assert!(elapsed >= Duration::from_millis(1_100), "{elapsed:?}");
    assert!(!slow.is_empty(), "no slow-fsync warning");
    assert!(
        slow.len() as u64 <= elapsed.as_secs() + 1 && slow.len() < 8,
        "{} warnings in {elapsed:?}: {slow:?}",
        slow.len()
    );
    assert!(slow[0].contains("waited_ms="), "{}", slow[0]);
    assert_eq!(cache.stats().writes, 8);
    cache.close_blocking().unwrap();
}

/// The age of the oldest unflushed write grows while nothing flushes, and
/// drops to zero once everything is in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oldest_unflushed_age_grows_until_a_flush() {
    use std::time::Duration;
    use writebehind::WriteBehind;

    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("db.sqlite").display()
    );
    let cache = WriteBehind::<String, i64>::builder(dir.path().join("wal"))
        .database(url)
        .create_tables(true)
        .flush_interval(Duration::from_secs(3_600))
        .open()
        .await
        .unwrap();
    assert_eq!(cache.stats().oldest_unflushed, Duration::ZERO);
    cache.add("a", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cache.add("b", 1).await.unwrap();
    let age = cache.stats().oldest_unflushed;
    assert!(
        age >= Duration::from_millis(300) && age < Duration::from_secs(30),
        "{age:?}"
    );
    cache.flush().await.unwrap();
    let stats = cache.stats();
    assert_eq!(stats.oldest_unflushed, Duration::ZERO);
    assert_eq!((stats.dirty_entries, stats.rows_flushed), (0, 2));
    // Reads: "a" is clean now (a hit); "zzz" is nowhere (a miss, one load).
    assert_eq!(cache.get("a").await.unwrap(), Some(1));
    assert_eq!(cache.get("zzz").await.unwrap(), None);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.loads), (1, 1, 1));
    assert_eq!(stats.hit_ratio(), 0.5);
    cache.close().await.unwrap();
}
