//! `spawn-local AGENT --session-id ID [-- ARGV]`: runs the worker's own
//! spawn path (`colibri-worker spawn-local`), confined exactly as a task
//! would be, and streams the agent's output here. For debugging a profile.

use std::path::PathBuf;
use std::process::Command;

use anyhow::anyhow;
use broker::connect::ConnectArgs;
use clap::Args;

use super::CliError;

#[derive(Debug, Args)]
pub struct SpawnLocalArgs {
    /// Agent profile (pi, claude, codex, command).
    pub agent: String,
    #[arg(long = "session-id")]
    pub session_id: String,
    #[arg(long)]
    pub prompt: Option<String>,
    /// Worker config file whose profiles and confinement to use.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(last = true)]
    pub argv: Vec<String>,
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
    cmd.arg("spawn-local")
        .arg(&args.agent)
        .arg("--session-id")
        .arg(&args.session_id);
    if let Some(p) = &args.prompt {
        cmd.arg("--prompt").arg(p);
    }
    if !args.argv.is_empty() {
        cmd.arg("--").args(&args.argv);
    }
    let status = cmd
        .status()
        .map_err(|e| anyhow!("running colibri-worker spawn-local: {e}"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(2) => Err(CliError::Usage(
            "spawn-local: usage error (see above)".into(),
        )),
        code => Err(CliError::Other(anyhow!("agent exited with {code:?}"))),
    }
}
