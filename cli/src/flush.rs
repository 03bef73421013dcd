//! `writebehind flush`: open a WAL directory (recovering it), flush every
//! write it holds to the database, close. Exit 0 only when all of it is in.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use writebehind::{Builder, WriteBehind};

use writebehind::redact_url as redact;

use crate::workload::DbArgs;

/// Arguments of `writebehind flush`.
#[derive(clap::Args)]
pub struct Args {
    /// The WAL directory to recover and flush.
    #[arg(long)]
    wal: PathBuf,
    #[command(flatten)]
    db: DbArgs,
    /// The counter table (created when absent).
    #[arg(long, default_value = "counters")]
    table: String,
    /// Give up after this many seconds (what is not flushed stays in the WAL).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The cache's instance id (default: the directory's `instance.id`).
    #[arg(long)]
    instance_id: Option<String>,
    /// Open with replication to NATS JetStream at this URL, as the writer did: the
    /// local WAL is reconciled with the stream first (what a power cut took from
    /// the local tail comes back from the stream).
    #[cfg(feature = "nats")]
    #[arg(long, value_name = "URL")]
    replicate: Option<String>,
    #[cfg(feature = "nats")]
    #[command(flatten)]
    replica: crate::workload::ReplicaArgs,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    // Checked first so a typo creates nothing (opening would make the directory).
    if !args.wal.is_dir() {
        return Err(format!(
            "{} is not a WAL directory (it does not exist or is not a directory)",
            args.wal.display()
        ));
    }
    let url = args.db.required()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let timeout = Duration::from_secs(args.timeout);
    rt.block_on(async move {
        let flushing = flush(&args.wal, &args.table, &url, timeout, |mut b| {
            if let Some(id) = &args.instance_id {
                b = b.instance_id(id);
            }
            #[cfg(feature = "nats")]
            if let Some(nats) = &args.replicate {
                b = args.replica.apply(b, nats);
            }
            b
        });
        match tokio::time::timeout(timeout, flushing).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "flushing {} to {} did not finish within {}s; the rest stays in the WAL",
                args.wal.display(),
                redact(&url),
                args.timeout
            )),
        }
    })
}

/// Opens the WAL directory `wal` (recovering it; `configure` adds settings,
/// such as `adopt`'s replication), flushes everything to `url`, closes.
pub(crate) async fn flush(
    wal: &std::path::Path,
    table: &str,
    url: &str,
    timeout: Duration,
    configure: impl FnOnce(Builder<String, i64>) -> Builder<String, i64>,
) -> Result<ExitCode, String> {
    let started = Instant::now();
    let db = redact(url);
    // The cache opens while its database is down (writes still go to the WAL), so an
    // unreachable database is caught here, before the WAL is touched.
    probe(url)
        .await
        .map_err(|e| format!("cannot reach the database {db}: {e}"))?;
    let builder = WriteBehind::<String, i64>::builder(wal)
        .database(url)
        .table(table)
        .create_tables(true)
        .close_timeout(timeout)
        .wait_timeout(timeout);
    let spinner = std::io::stderr().is_terminal().then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.set_message(format!("recovering {}", wal.display()));
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let opened = configure(builder).open().await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let cache = opened.map_err(|e| format!("opening {} for {db} failed: {e}", wal.display()))?;
    let report = cache.recovery();
    let (replayed, checkpoint) = (report.records_replayed, report.checkpoint_lsn);
    let mut found = String::new();
    if let Some(n) = report.rebuilt_records {
        found.push_str(&format!(", {n} records rebuilt from the stream"));
        if let Some(c) = report.rebuilt_checkpoint {
            found.push_str(&format!(" after its checkpoint {c}"));
        }
    }
    if let Some(lsn) = report.in_flight {
        found.push_str(&format!(", a flush in flight at {lsn} resumed"));
    }
    if let Some(t) = &report.wal.torn_tail {
        found.push_str(&format!(
            ", torn tail cut at {} of {} (saved to {})",
            t.offset,
            t.segment.display(),
            t.saved_to.display()
        ));
    }
    let dirty = cache.stats().dirty_entries as u64;

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(dirty);
        bar.set_message("entries flushed");
        bar
    });
    let watch = bar.clone().map(|bar| {
        let cache = cache.clone();
        tokio::spawn(async move {
            loop {
                let left = cache.stats().dirty_entries as u64;
                bar.set_position(dirty.saturating_sub(left));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let flushed = cache.flush().await;
    if let Some(w) = watch {
        w.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let stats = cache.stats();
    let closed = cache.close().await;
    flushed
        .and(closed)
        .map_err(|e| format!("flushing {} to {db} failed: {e}", wal.display()))?;
    println!(
        "flushed {} rows in {} flushes from {} ({} records replayed{}{found}) to {db} in {:.2}s",
        stats.rows_flushed,
        stats.flushes,
        wal.display(),
        replayed,
        checkpoint.map_or(String::new(), |l| format!(" after checkpoint {l}")),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

async fn probe(url: &str) -> Result<(), writebehind_writer::Error> {
    let cfg = writebehind_writer::WriterConfig::new("writebehind-flush-probe")
        .acquire_timeout(Duration::from_secs(5));
    let writer = writebehind_writer::Writer::connect(url, cfg).await?;
    let result = writer.execute_sql("SELECT 1").await;
    writer.close().await;
    result
}
