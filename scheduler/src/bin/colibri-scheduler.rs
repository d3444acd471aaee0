//! `colibri-scheduler`: the scheduler service. Configuration is resolved and
//! checked before the runtime starts. Exit 2 on a usage error and 1 on a
//! configuration error (a supervisor does not restart either: it would spin);
//! exit 3 when the service stops on a runtime error, which a restart may fix.
//! A JetStream that is not ready at start is waited for, not an exit.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use scheduler::config::{SchedulerArgs, SchedulerConfig};
use scheduler::service::{self, ServiceConfig};

#[derive(Debug, Parser)]
#[command(
    name = "colibri-scheduler",
    version,
    about = "Colibri scheduler: places tasks on workers"
)]
struct Cli {
    #[command(flatten)]
    args: SchedulerArgs,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Check the configuration, print every problem with its field, and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let config = match SchedulerConfig::resolve(&cli.args, &matches) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("colibri-scheduler: {e}");
            return ExitCode::from(1);
        }
    };
    if matches!(cli.command, Some(Sub::CheckConfig)) {
        match &config.config_file {
            Some(path) => println!("configuration ok: {}", path.display()),
            None => println!("configuration ok: no config file (flags and environment only)"),
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("colibri-scheduler: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "scheduler stopped");
            eprintln!("colibri-scheduler: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 3 for a runtime error a restart may fix (the NATS connection or a
/// subscription failed after start); 1 for configuration: a setting the
/// server refuses, limits the disk cannot hold, a board that cannot open.
fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<service::ServiceError>() {
        Some(service::ServiceError::Nats { .. }) => 3,
        Some(service::ServiceError::Provision(e)) if e.is_transient() => 3,
        _ => 1,
    }
}

async fn serve(config: SchedulerConfig) -> anyhow::Result<()> {
    daemon::logging::init(&config.log)?;
    match &config.config_file {
        Some(path) => tracing::info!(config = %path.display(), "configuration read"),
        None => tracing::info!("no config file: flags and environment only"),
    }
    let shutdown = daemon::shutdown::on_signals()?;
    let client = config
        .connect
        .connect("colibri-scheduler", broker::connect::Role::Daemon)
        .await?;
    let mut svc = ServiceConfig::new(config.db.clone());
    svc.provision = config.provision.clone();
    svc.hosts = config.hosts.clone();
    service::run(client, svc, shutdown).await?;
    daemon::notify_stopping();
    Ok(())
}
