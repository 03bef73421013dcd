//! Replicated writes against local `Fsync`, side by side in one run: for
//! 1, 16 and 64 concurrent writers, each mode adds for a fixed time to
//! 1000 counters (WAL only, no database, so the write path is what is
//! measured) and the table gives adds/s, the ratio to local `Fsync` at the
//! same writer count, and the p50/p99 acknowledgement latency.
//!
//! ```text
//! cargo run --release --features nats --example replication_bench -- \
//!   --r1 nats://127.0.0.1:4222 [--r3 nats://h1:p1,nats://h2:p2,nats://h3:p3] [--secs 3]
//! ```
//!
//! `scripts/replication-bench` starts a three-node JetStream cluster on
//! loopback ports for `--r3` and runs this. Each mode writes to a stream of
//! its own, deleted afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use writebehind::{Durability, WriteBehind};

#[derive(Parser)]
struct Args {
    /// A NATS server for the R1 stream.
    #[arg(long)]
    r1: String,
    /// The servers of a three-node cluster for the R3 stream (comma-separated).
    #[arg(long)]
    r3: Option<String>,
    /// Seconds of writing per mode and writer count.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Writer counts.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    writers: Vec<usize>,
}

struct Mode {
    name: &'static str,
    nats: Option<(String, usize)>,
}

struct Run {
    adds: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut modes = vec![
        Mode {
            name: "fsync (local)",
            nats: None,
        },
        Mode {
            name: "replicated R1",
            nats: Some((args.r1.clone(), 1)),
        },
    ];
    if let Some(r3) = &args.r3 {
        modes.push(Mode {
            name: "replicated R3",
            nats: Some((r3.clone(), 3)),
        });
    }
    println!("| writers | mode | adds/s | vs fsync | p50 ack | p99 ack |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &writers in &args.writers {
        let mut fsync_rate = None;
        for mode in &modes {
            let r = measure(mode, writers, Duration::from_secs(args.secs)).await?;
            let rate = r.adds as f64 / r.secs;
            let base = *fsync_rate.get_or_insert(rate);
            println!(
                "| {writers} | {} | {:.0} | {:.2} | {} µs | {} µs |",
                mode.name,
                rate,
                rate / base,
                r.p50_us,
                r.p99_us
            );
        }
    }
    Ok(())
}

async fn measure(
    mode: &Mode,
    writers: usize,
    time: Duration,
) -> Result<Run, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let tag = format!("BENCH-{}-{:08x}", std::process::id(), fastrand::u32(..));
    let mut b = WriteBehind::<String, i64>::builder(dir.path()).max_dirty_entries(10_000_000);
    b = match &mode.nats {
        None => b.durability(Durability::Fsync),
        Some((url, replicas)) => b
            .replicate(
                writebehind::nats::JetStream::new(url.as_str())
                    .stream(&tag)
                    .subject_prefix(&tag)
                    .replicas(*replicas),
            )
            .durability(Durability::Replicated),
    };
    let cache = b.open().await?;
    // The stream is made by the replication task: wait for a first ack.
    cache.add("warm-up", 1).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let cache = cache.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = w as u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    cache.add(&format!("k{}", i % 1000), 1).await?;
                    lat.push(t.elapsed().as_micros() as u64);
                    i += 7;
                }
                Ok::<_, writebehind::Error>(lat)
            })
        })
        .collect();
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    cache.close().await?;
    if let Some((url, _)) = &mode.nats {
        let first = url.split(',').next().unwrap_or(url);
        let js = async_nats::jetstream::new(async_nats::connect(first).await?);
        js.delete_stream(&tag).await?;
        js.delete_object_store(format!("{tag}-checkpoints"))
            .await
            .ok();
    }
    lat.sort_unstable();
    let at = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Run {
        adds: lat.len() as u64,
        secs,
        p50_us: at(0.5),
        p99_us: at(0.99),
    })
}
