//! `tej-hub bench`: hands its arguments to `tej-hub-bench`, the benchmark crate's binary, found
//! beside this one, telling it which hub binary to spawn. The load generators live in their own
//! crate (`bench/`) so the hub does not compile them.

use std::ffi::OsString;
use std::process::{Command, ExitCode};

use clap::Args;

use crate::Failure;

/// `bench` arguments: passed through unchanged.
#[derive(Args)]
pub(crate) struct Bench {
    /// The workload and its flags (`tej-hub bench --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Runs `tej-hub-bench` with `args`; its exit status is ours (it printed its own reasons).
pub(crate) fn run(args: &Bench) -> Result<ExitCode, Failure> {
    let exe = std::env::current_exe()
        .map_err(|error| Failure::Failed(format!("cannot find this program: {error}")))?;
    let bench = exe.with_file_name("tej-hub-bench");
    let status = Command::new(&bench)
        .args(&args.args)
        .env("TEJ_HUB_BIN", &exe)
        .status()
        .map_err(|error| {
            Failure::Failed(format!(
                "cannot run {} ({error}): build it with `cargo build --release` \
                 (or `cargo build --release -p tej-hub-bench`)",
                bench.display()
            ))
        })?;
    match status.code().and_then(|code| u8::try_from(code).ok()) {
        Some(code) => Ok(ExitCode::from(code)),
        None => Err(Failure::Failed(format!("tej-hub-bench ended: {status}"))),
    }
}
