//! `spawn-local AGENT [--session-id UUID] [-- ARGV]`: runs the worker's own
//! spawn path (`colibri-worker spawn-local`), confined exactly as a task
//! would be, and streams the agent's output here. For debugging a profile.
//! Without a worker config the worker defaults its id to the host name and
//! its state dir to a fresh temporary one. Exits with the agent's own code.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::anyhow;
use broker::connect::ConnectArgs;
use broker::{SessionId, WorkerId};
use clap::Args;

use super::CliError;

#[derive(Debug, Args)]
pub struct SpawnLocalArgs {
    /// Agent profile (pi, claude, codex, command).
    pub agent: String,
    /// Session id of the run (a UUID); a new one when absent.
    #[arg(long = "session-id", value_parser = parse_session_id)]
    pub session_id: Option<SessionId>,
    #[arg(long)]
    pub prompt: Option<String>,
    /// Worker config file whose profiles and confinement to use.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Worker name for the run (default: the config's, else the host name).
    #[arg(long = "worker-id", value_parser = parse_worker_id)]
    pub worker_id: Option<WorkerId>,
    /// State dir for the run's work dir (default: the config's, else a temporary one).
    #[arg(long = "state-dir")]
    pub state_dir: Option<PathBuf>,
    #[arg(last = true)]
    pub argv: Vec<String>,
}

fn parse_session_id(value: &str) -> Result<SessionId, String> {
    value.parse().map_err(|_| {
        format!("{value:?} is not a UUID; a session id is a UUID such as {}, or leave it out for a new one", SessionId::new())
    })
}

fn parse_worker_id(value: &str) -> Result<WorkerId, String> {
    WorkerId::parse(value).map_err(|e| e.to_string())
}

fn worker_binary() -> PathBuf {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("colibri-worker")));
    match sibling {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("colibri-worker"),
    }
}

pub fn run(args: SpawnLocalArgs, _connect: &ConnectArgs) -> Result<(), CliError> {
    let mut cmd = Command::new(worker_binary());
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    if let Some(id) = &args.worker_id {
        cmd.arg("--worker-id").arg(id.as_str());
    }
    if let Some(dir) = &args.state_dir {
        cmd.arg("--state-dir").arg(dir);
    }
    cmd.arg("spawn-local")
        .arg(&args.agent)
        .arg("--session-id")
        .arg(args.session_id.unwrap_or_default().to_string());
    if let Some(p) = &args.prompt {
        cmd.arg("--prompt").arg(p);
    }
    if !args.argv.is_empty() {
        cmd.arg("--").args(&args.argv);
    }
    let status = cmd
        .status()
        .map_err(|e| anyhow!("running colibri-worker spawn-local: {e}"))?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        // The agent's (or the worker's) own code, unchanged; it said why.
        (Some(code), _) => Err(CliError::Exit(code.clamp(0, 255) as u8)),
        (None, Some(sig)) => Err(CliError::Exit((128 + sig).clamp(0, 255) as u8)),
        (None, None) => Err(anyhow!("colibri-worker spawn-local ended without a status").into()),
    }
}
