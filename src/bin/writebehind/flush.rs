//! `writebehind flush` (being written).

use std::process::ExitCode;

/// Arguments of `writebehind flush`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<ExitCode, String> {
    Err("`writebehind flush` is not built yet".into())
}
