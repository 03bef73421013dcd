//! `writebehind wal …` (being written).

use std::process::ExitCode;

/// `writebehind wal` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Segments, LSN ranges, sizes, checkpoint.
    Inspect,
}

pub fn run(_cmd: Command) -> Result<ExitCode, String> {
    Err("`writebehind wal` is not built yet".into())
}
