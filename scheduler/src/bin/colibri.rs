//! `colibri`: the operator CLI (see `colibri --help`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use scheduler::cli::{self, Cli};

fn main() -> ExitCode {
    // clap exits 2 on usage errors by itself.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("colibri: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ cli::CliError::Exit(_)) => e.exit_code(),
        Err(e) => {
            eprintln!("colibri: {e:#}");
            e.exit_code()
        }
    }
}
