//! `writebehind stress` (being written).

use std::process::ExitCode;

/// Arguments of `writebehind stress`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<ExitCode, String> {
    Err("`writebehind stress` is not built yet".into())
}
