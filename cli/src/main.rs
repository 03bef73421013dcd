//! `writebehind`: flush, inspect, verify and dump a WAL; benchmark and
//! stress a database.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "nats")]
mod adopt;
mod bench;
mod chart;
mod flush;
mod stress;
mod wal;
mod workload;

/// The library's log (dead letters, retries, outages) on stderr: warnings
/// and errors by default, more with `RUST_LOG` (e.g. `RUST_LOG=writebehind=debug`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[derive(Parser)]
#[command(
    name = "writebehind",
    version,
    about = "An embedded, persistent write-behind cache: tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply a lost instance's replicated WAL (NATS JetStream) to the
    /// database, exactly once, then trim its stream.
    #[cfg(feature = "nats")]
    Adopt(adopt::Args),
    /// Flush-throughput benchmark against a database, with baselines.
    Bench(bench::Args),
    /// Open a WAL directory, recover, flush everything to the database, close.
    Flush(flush::Args),
    /// A load tool: concurrent counter adds with the background flusher.
    Stress(stress::Args),
    /// Look into a WAL directory without changing it.
    #[command(subcommand)]
    Wal(wal::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        #[cfg(feature = "nats")]
        Command::Adopt(args) => adopt::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Flush(args) => flush::run(args),
        Command::Stress(args) => stress::run(args),
        Command::Wal(cmd) => wal::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
