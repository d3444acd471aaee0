//! `colibri-worker`: the per-host daemon. A thin main: parse and validate
//! the whole configuration before any runtime exists, then hand over to
//! [`worker::run`]. Exit codes: 0 clean stop, 1 bad configuration file or
//! fatal error, 2 usage error on the command line (a bad flag, or a required
//! value given nowhere; the message names the flag).
//! `spawn-local` exits with the agent's own code.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use broker::connect::Role;
use broker::messages::{RunOrder, TaskSpec};
use broker::{SessionId, Tag, TagSet, WorkerId};
use clap::{Parser, Subcommand};
use worker::config::{ConfigError, Confinement, WorkerFlags};
use worker::executor::Executor;
use worker::profiles::{builtin_argv, AgentProfile};
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
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let temp_state = match &cli.command {
        Some(Command::SpawnLocal(_)) => spawn_local_defaults(&mut cli.flags),
        _ => None,
    };
    let config = match worker::config::load(&cli.flags) {
        Ok(config) => config,
        Err(error @ ConfigError::Missing(_)) => {
            eprintln!("colibri-worker: {error}");
            return ExitCode::from(2);
        }
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
            let result = runtime().and_then(|rt| rt.block_on(spawn_local(config, args)));
            if let Some(dir) = temp_state {
                remove_temp_state(&dir, matches!(result, Ok(ExitCode::SUCCESS)));
            }
            result
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
    match &config.config_file {
        Some(path) => println!("config file: {}", path.display()),
        None => println!("config file: none (flags and environment only)"),
    }
    if config.confinement == Confinement::Unconfined {
        println!("warning: confinement = unconfined: agents get full access to this host");
    }
}

async fn daemon_main(config: WorkerConfig) -> anyhow::Result<()> {
    daemon::logging::init(&config.log)?;
    match &config.config_file {
        Some(path) => tracing::info!(config = %path.display(), "configuration read"),
        None => tracing::info!("no config file: flags and environment only"),
    }
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
    } else if config.agents.get(task.agent.as_str()).is_none() {
        // Asked for by name: a known agent the config leaves out runs with
        // its built-in template.
        if let Some(argv) = builtin_argv(task.agent.as_str()) {
            config.agents.insert(AgentProfile {
                name: task.agent.clone(),
                argv,
                models: Default::default(),
                env: Default::default(),
            });
        }
    }
    // Output goes to the terminal, so no idle limit can be measured.
    config.limits.idle = config.limits.max_run;
    let order = RunOrder {
        task,
        attempt: 1,
        session: args.session_id,
        cost_mode: Default::default(),
        spent: Default::default(),
        continue_from: None,
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

/// `spawn-local` needs no daemon config: a worker id and a state dir that no
/// flag, variable or config file gives default to the host name and a fresh
/// private temporary dir, which is returned (to be removed afterwards).
fn spawn_local_defaults(flags: &mut WorkerFlags) -> Option<PathBuf> {
    let file: toml::Table = worker::config::config_file(flags)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| toml::from_str(&text).ok())
        .unwrap_or_default();
    if flags.worker_id.is_none() && !file.contains_key("worker_id") {
        flags.worker_id = host_worker_id();
    }
    if flags.state_dir.is_some() || file.contains_key("state_dir") {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("colibri-spawn-local-{}", uuid::Uuid::now_v7()));
    // On failure the config reports the missing state dir.
    std::fs::DirBuilder::new().mode(0o700).create(&dir).ok()?;
    flags.state_dir = Some(dir.clone());
    Some(dir)
}

/// The host name made into a worker name (lowercase, other characters to
/// `-`), or `spawn-local` when that does not give one.
fn host_worker_id() -> Option<WorkerId> {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name: String = host
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .take(broker::tag::MAX_TAG_LEN)
        .collect();
    let name = name.trim_start_matches(['.', '_', '-']);
    WorkerId::parse(name)
        .or_else(|_| WorkerId::parse("spawn-local"))
        .ok()
}

/// Removes the temporary state dir; after a failed run, keeps whatever the
/// run left there and says where.
fn remove_temp_state(dir: &Path, success: bool) {
    if success {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    let _ = std::fs::remove_dir(dir.join("work"));
    if std::fs::remove_dir(dir).is_err() && dir.exists() {
        eprintln!(
            "colibri-worker: state dir kept for inspection: {}",
            dir.display()
        );
    }
}
