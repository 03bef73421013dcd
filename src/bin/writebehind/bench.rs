//! `writebehind bench` (being written).

use std::process::ExitCode;

/// Arguments of `writebehind bench`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<ExitCode, String> {
    Err("`writebehind bench` is not built yet".into())
}
