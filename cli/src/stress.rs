//! `writebehind stress`: concurrent `add(key, 1)` from N writers with the
//! background flusher running, then close; one JSON line at the end.
//!
//! With `--print-acks` every acknowledged add is written to stdout as
//! `ack <key>` straight away (one write(2) per line), so a parent that
//! SIGKILLs this process knows every printed ack was acknowledged.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use writebehind::{Durability, WriteBehind};

use writebehind::redact_url as redact;

use crate::workload::{durability_name, parse_dist, parse_durability, DbArgs, Dist, Picker};

/// Arguments of `writebehind stress`.
#[derive(clap::Args)]
pub struct Args {
    /// The WAL directory (created when absent; recovered when not empty).
    #[arg(long)]
    wal: PathBuf,
    #[command(flatten)]
    db: DbArgs,
    /// The counter table (created when absent).
    #[arg(long, default_value = "counters")]
    table: String,
    /// Number of keys, named `k0` … `k{N-1}`.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Total adds over all writers.
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4096))]
    writers: u64,
    /// `fsync`, `buffered:<N>ms`, `none` or `replicated` (needs `--replicate`).
    #[arg(long, default_value = "fsync", value_parser = parse_durability)]
    durability: Durability,
    /// Key distribution: `uniform` or `zipf:<exponent>`.
    #[arg(long, default_value = "uniform", value_parser = parse_dist)]
    dist: Dist,
    /// Seed of the key choices (random when absent; printed in the summary).
    #[arg(long)]
    seed: Option<u64>,
    /// Print `ack <key>` on stdout after each acknowledged add.
    #[arg(long)]
    print_acks: bool,
    /// With `--print-acks`: `ack <key> <µs since the Unix epoch>`, the time of the
    /// acknowledgement (to tell how old a write lost to a power cut was).
    #[arg(long, requires = "print_acks")]
    ack_times: bool,
    /// The cache's instance id (default: the directory's `instance.id`, random on first
    /// open). With `--replicate`, an explicit id on an empty directory rebuilds from the stream.
    #[arg(long)]
    instance_id: Option<String>,
    /// Longest time between background flushes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    flush_interval_ms: u64,
    /// WAL growth (bytes) that triggers a checkpoint (default: the library's, 64 MiB).
    #[arg(long)]
    checkpoint_bytes: Option<u64>,
    /// WAL segment size in bytes (default: the library's, 64 MiB).
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Do not zero-fill WAL segments ahead of the data (for copy-on-write file systems, and
    /// to measure what preallocation gains).
    #[arg(long)]
    no_preallocate: bool,
    /// Replicate the WAL to NATS JetStream at this URL (`--durability replicated`
    /// waits for it). The instance id to `adopt` is in `<wal>/instance.id`.
    #[cfg(feature = "nats")]
    #[arg(long, value_name = "URL")]
    replicate: Option<String>,
    #[cfg(feature = "nats")]
    #[command(flatten)]
    replica: crate::workload::ReplicaArgs,
}

/// What one writer did.
struct Outcome {
    acked: u64,
    latency: hdrhistogram::Histogram<u64>,
    error: Option<String>,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let url = args.db.required()?;
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    // Fail on a bad distribution before anything is opened.
    Picker::new(args.keys, args.dist)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.writers.clamp(1, 4) as usize)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(stress(args, &url, seed))
}

async fn stress(args: Args, url: &str, seed: u64) -> Result<ExitCode, String> {
    let db = redact(url);
    let mut builder = WriteBehind::<String, i64>::builder(&args.wal)
        .database(url)
        .table(&args.table)
        .create_tables(true)
        .durability(args.durability)
        .preallocate(!args.no_preallocate)
        .flush_interval(Duration::from_millis(args.flush_interval_ms.max(1)));
    if let Some(n) = args.checkpoint_bytes {
        builder = builder.checkpoint_bytes(n);
    }
    if let Some(n) = args.segment_bytes {
        builder = builder.segment_size(n);
    }
    if let Some(id) = &args.instance_id {
        builder = builder.instance_id(id);
    }
    #[cfg(feature = "nats")]
    if let Some(nats) = &args.replicate {
        builder = args.replica.apply(builder, nats);
    }
    let cache = builder
        .open()
        .await
        .map_err(|e| format!("opening {} for {db} failed: {e}", args.wal.display()))?;

    let done = Arc::new(AtomicU64::new(0));
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(args.ops);
        bar.set_message("adds acknowledged");
        bar
    });
    let watch = bar.clone().map(|bar| {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let share = args.ops / args.writers + u64::from(w < args.ops % args.writers);
        let cache = cache.clone();
        let done = done.clone();
        let picker = Picker::new(args.keys, args.dist)?;
        let mut rng = StdRng::seed_from_u64(seed ^ w.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let print = args.print_acks;
        let times = args.ack_times;
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome {
                acked: 0,
                latency: hdrhistogram::Histogram::new(3).expect("3 significant figures is valid"),
                error: None,
            };
            for _ in 0..share {
                let key = format!("k{}", picker.pick(&mut rng));
                let t = Instant::now();
                if let Err(e) = cache.add(key.as_str(), 1).await {
                    out.error = Some(format!("add to {key} failed: {e}"));
                    break;
                }
                let _ = out.latency.record(t.elapsed().as_micros() as u64);
                out.acked += 1;
                done.fetch_add(1, Ordering::Relaxed);
                if print && ack(&key, times).is_err() {
                    // The reader is gone: nobody can count further acks.
                    out.error = Some("stdout closed while printing acks".into());
                    break;
                }
            }
            out
        }));
    }
    let mut acked = 0;
    let mut latency = hdrhistogram::Histogram::<u64>::new(3).expect("valid");
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(o) => {
                acked += o.acked;
                let _ = latency.add(&o.latency);
                errors.extend(o.error);
            }
            Err(e) => errors.push(format!("a writer task failed: {e}")),
        }
    }
    let write_secs = started.elapsed().as_secs_f64();
    if let Some(w) = watch {
        w.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // A clone outlives `close` so the figures include the final flush.
    let probe = cache.clone();
    let closed = cache.close().await;
    let after = probe.stats();
    drop(probe);
    let total_secs = started.elapsed().as_secs_f64();
    if let Err(e) = &closed {
        errors.push(format!("closing {} failed: {e}", args.wal.display()));
    }
    let summary = serde_json::json!({
        "ops": args.ops,
        "acked": acked,
        "errors": errors.len(),
        "first_error": errors.first(),
        "writers": args.writers,
        "keys": args.keys,
        "durability": durability_name(args.durability),
        "preallocate": !args.no_preallocate,
        "dist": match args.dist { Dist::Uniform => "uniform".to_string(), Dist::Zipf(s) => format!("zipf:{s}") },
        "seed": seed,
        "write_secs": round3(write_secs),
        "total_secs": round3(total_secs),
        "adds_per_sec": round3(acked as f64 / write_secs.max(1e-9)),
        "p50_us": latency.value_at_quantile(0.5),
        "p99_us": latency.value_at_quantile(0.99),
        "max_us": latency.max(),
        "flushes": after.flushes,
        "rows_flushed": after.rows_flushed,
        "retries": after.retries,
        "checkpoints": after.checkpoints,
        "replicated_lsn": after.replicated_lsn,
        "replication_failures": after.replication_failures,
        "closed_clean": closed.is_ok(),
    });
    println!("{summary}");
    match errors.first() {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => Err(e.clone()),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One `ack <key>` line (with `times`, `ack <key> <µs since the epoch>`), written
/// through to fd 1 at once.
fn ack(key: &str, times: bool) -> std::io::Result<()> {
    let line = if times {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        format!("ack {key} {us}\n")
    } else {
        format!("ack {key}\n")
    };
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()
}
