//! `writebehind adopt`: apply a lost instance's replicated WAL to the
//! database. The log is rebuilt from the NATS stream into a temporary WAL
//! directory (checksums and LSN continuity checked: a gap is an error), then
//! the path `writebehind flush` takes runs on it under the lost instance's id:
//! recovery skips what the database's progress row already covers, so every
//! write lands exactly once, and a second adopt finds nothing to do. Closing
//! trims the stream below what was flushed.

use std::process::ExitCode;
use std::time::Duration;

use writebehind::redact_url as redact;

use crate::workload::{DbArgs, ReplicaArgs};

/// Arguments of `writebehind adopt`.
#[derive(clap::Args)]
pub struct Args {
    /// The lost instance's id (its `<wal>/instance.id`).
    #[arg(long)]
    instance: String,
    /// The NATS server(s) holding its stream, e.g. `nats://127.0.0.1:4222`
    /// (several comma-separated).
    #[arg(long, value_name = "URL")]
    replicate: String,
    #[command(flatten)]
    replica: ReplicaArgs,
    #[command(flatten)]
    db: DbArgs,
    /// The counter table (created when absent).
    #[arg(long, default_value = "counters")]
    table: String,
    /// Give up after this many seconds (the stream keeps what was not flushed).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let url = args.db.required()?;
    let tmp = tempfile::Builder::new()
        .prefix("writebehind-adopt-")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary WAL directory: {e}"))?;
    let wal = tmp.path().join("wal");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let timeout = Duration::from_secs(args.timeout);
    let instance = args.instance.clone();
    let replica = args.replica.clone();
    let nats = args.replicate.clone();
    rt.block_on(async move {
        let adopting = crate::flush::flush(&wal, &args.table, &url, timeout, |b| {
            replica.apply(b, &nats).instance_id(&instance)
        });
        match tokio::time::timeout(timeout, adopting).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "adopting {} from {} into {} did not finish within {}s; the stream keeps what was not flushed",
                args.instance,
                args.replicate,
                redact(&url),
                args.timeout
            )),
        }
    })
}
