//! The `colibri` operator CLI: one file per subcommand. Read commands take
//! `--json`. Exit codes: 0 success, 1 failure, 2 usage error (a flag or
//! value broke a rule; the message names it).

mod client;
mod render;
mod task_args;

mod admin;
mod cancel;
mod cost_mode;
mod events;
mod list;
mod show;
mod snapshot;
mod spawn_local;
mod status;
mod submit;
mod watch;

use std::process::ExitCode;

use broker::connect::ConnectArgs;
use clap::{Parser, Subcommand};

pub use client::ApiClient;

#[derive(Debug, Parser)]
#[command(
    name = "colibri",
    version,
    about = "Operate a Colibri fleet: submit, follow and cancel tasks"
)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Workers online with tags and slots in use, tasks by state, cost mode.
    Status(status::StatusArgs),
    /// Store a task now (synchronous: prints the id once stored).
    CreateTask(task_args::TaskArgs),
    /// Submit a task through the durable intake (placed at the scheduler's next turn).
    IntakeTask(task_args::TaskArgs),
    /// List tasks, oldest first, a page at a time.
    ListTasks(list::ListArgs),
    /// Everything about one task: attempts, workers, times, exit status, parked reason.
    ShowTask(show::ShowArgs),
    /// Cancel a task (queued: at once; running: the worker stops it).
    Cancel(cancel::CancelArgs),
    /// The whole board as JSON.
    Snapshot(snapshot::SnapshotArgs),
    /// Set the fleet's cost mode (fast, smart, max).
    SetCostMode(cost_mode::SetCostModeArgs),
    /// Task and worker lifecycle events, live.
    Events(events::EventsArgs),
    /// Follow one agent session's events (a task's latest, or a session id) until it ends.
    Watch(watch::WatchArgs),
    /// Spawn an agent locally, confined as a task would be, and stream its output.
    SpawnLocal(spawn_local::SpawnLocalArgs),
    /// Identities: add a host or user, print the server's authorization block.
    Admin(admin::AdminArgs),
}

/// A failure of a CLI call, by class.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or value broke a rule: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
    /// A child's own non-zero exit code, passed on unchanged (the child has
    /// already said why).
    #[error("exited with status {0}")]
    Exit(u8),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Other(_) => ExitCode::from(1),
            CliError::Exit(code) => ExitCode::from(*code),
        }
    }
}

/// Runs one CLI call.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        CliCommand::SpawnLocal(args) => spawn_local::run(args, &cli.connect),
        CliCommand::Admin(args) => admin::run(args),
        // The spec is built and checked before connecting, so a usage error
        // exits 2 whatever the server's state.
        CliCommand::CreateTask(args) => {
            let spec = args.to_spec()?;
            submit::create(&ApiClient::connect(&cli.connect).await?, spec).await
        }
        CliCommand::IntakeTask(args) => {
            let spec = args.to_spec()?;
            submit::intake(&ApiClient::connect(&cli.connect).await?, spec).await
        }
        command => {
            let api = ApiClient::connect(&cli.connect).await?;
            match command {
                CliCommand::Status(args) => status::run(&api, args).await,
                CliCommand::ListTasks(args) => list::run(&api, args).await,
                CliCommand::ShowTask(args) => show::run(&api, args).await,
                CliCommand::Cancel(args) => cancel::run(&api, args).await,
                CliCommand::Snapshot(args) => snapshot::run(&api, args).await,
                CliCommand::SetCostMode(args) => cost_mode::run(&api, args).await,
                CliCommand::Events(args) => events::run(&api, args).await,
                CliCommand::Watch(args) => watch::run(&api, args).await,
                CliCommand::SpawnLocal(_)
                | CliCommand::Admin(_)
                | CliCommand::CreateTask(_)
                | CliCommand::IntakeTask(_) => unreachable!("handled above"),
            }
        }
    }
}
