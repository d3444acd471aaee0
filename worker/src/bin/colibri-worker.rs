//! `colibri-worker`: the per-host daemon. A thin main: parse and validate
//! the whole configuration before any runtime exists, then hand over to
//! [`worker::run`]. Exit codes: 0 clean stop, 1 bad configuration or fatal
//! error, 2 usage error on the command line.

use std::process::ExitCode;

use anyhow::Context;
use broker::connect::Role;
use broker::messages::{RunOrder, TaskSpec};
use broker::{SessionId, Tag, TagSet};
use clap::{Parser, Subcommand};
use worker::config::{Confinement, WorkerFlags};
use worker::executor::Executor;
use worker::supervise::{OutputMode, StopCause};
use worker::WorkerConfig;

/// Colibri's per-host worker: runs the agents the scheduler places here.
#[derive(Debug, Parser)]
#[command(name = "colibri-worker", version)]
struct Cli {
    #[command(flatten)]
    flags: WorkerFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration, report every problem, exit 1 if any.
    CheckConfig,
    /// Spawn one agent confined as a task would be, stream its output, exit
    /// with its status (for debugging a profile).
    SpawnLocal(SpawnLocal),
}

#[derive(Debug, clap::Args)]
struct SpawnLocal {
    /// Agent profile (pi, claude, codex, or command with `-- ARGV`).
    agent: String,
    /// Session id of the run.
    #[arg(long = "session-id")]
    session_id: SessionId,
    /// Prompt given to the agent.
    #[arg(long)]
    prompt: Option<String>,
    /// argv of a `command` agent.
    #[arg(last = true)]
    argv: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let config = match worker::config::load(&cli.flags) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("colibri-worker: {error}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Some(Command::CheckConfig) => {
            check_config(&config);
            return ExitCode::SUCCESS;
        }
        Some(Command::SpawnLocal(args)) => {
            runtime().and_then(|rt| rt.block_on(spawn_local(config, args)))
        }
        None => runtime()
            .and_then(|rt| rt.block_on(daemon_main(config)))
            .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("colibri-worker: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")
}

fn check_config(config: &WorkerConfig) {
    println!(
        "configuration OK: worker {} tags [{}] slots {} agents [{}] confinement {} state dir {}",
        config.worker_id,
        config.capabilities.joined(),
        config.slots,
        config.agents.enabled().joined(),
        config.confinement.as_str(),
        config.state_dir.display()
    );
    if config.confinement == Confinement::Unconfined {
        println!("warning: confinement = unconfined: agents get full access to this host");
    }
}

async fn daemon_main(config: WorkerConfig) -> anyhow::Result<()> {
    daemon::logging::init(&config.log)?;
    let shutdown = daemon::shutdown::on_signals().context("installing signal handlers")?;
    let name = format!("colibri-worker {}", config.worker_id);
    let client = config.connect.connect(&name, Role::Daemon).await?;
    worker::run(client, config, shutdown).await?;
    Ok(())
}

async fn spawn_local(mut config: WorkerConfig, args: SpawnLocal) -> anyhow::Result<ExitCode> {
    daemon::logging::init(&config.log)?;
    let agent = Tag::parse_name("agent", &args.agent)?;
    let mut task = TaskSpec::command("spawn-local", TagSet::new(), args.argv);
    task.agent = agent;
    task.prompt = args.prompt;
    if task.agent.as_str() == broker::messages::task::COMMAND_AGENT {
        config.agents.set_allow_command(true);
    }
    // Output goes to the terminal, so no idle limit can be measured.
    config.limits.idle = config.limits.max_run;
    let order = RunOrder {
        task,
        attempt: 1,
        session: args.session_id,
        cost_mode: Default::default(),
    };
    let executor = Executor::new(std::sync::Arc::new(config));
    let (stop_tx, mut stop) = tokio::sync::watch::channel(None);
    let signals = daemon::shutdown::on_signals().context("installing signal handlers")?;
    tokio::spawn(async move {
        signals.cancelled().await;
        let _ = stop_tx.send(Some(StopCause::Cancel("interrupted".into())));
    });
    let ending = match executor
        .begin_with(&order, &mut stop, OutputMode::Inherit)
        .await
    {
        Ok(begun) => executor.finish(begun, &mut stop).await,
        Err(ending) => ending,
    };
    if let Some(reason) = &ending.reason {
        eprintln!("colibri-worker: {:?}: {reason}", ending.outcome);
    }
    let code = match (ending.exit_code, ending.signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
