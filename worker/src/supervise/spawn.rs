//! Starting an agent: the confinement's set-up commands, then the launcher
//! in its own process group with piped (or inherited) output, retried with
//! exponential backoff and jitter when it cannot start.
//!
//! A missing agent binary is found before spawning (the confined view of the
//! filesystem is the host's, read-only), so that "not installed" is a spawn
//! failure rather than an agent that exited 1 under bwrap.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::process::{Child, Command};
use tracing::warn;

use crate::config::find_program_in;
use crate::confine::Launch;

/// Where the agent's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Read by the supervisor (the session-output seam).
    Piped,
    /// The worker's own terminal (`spawn-local`).
    Inherit,
}

/// Everything needed to start one agent.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub launch: Launch,
    /// The agent's program as the task names it (checked before spawning).
    pub agent_program: String,
    /// The complete environment of the launcher and the agent.
    pub env: Vec<(String, String)>,
    /// The launcher's working directory.
    pub workdir: PathBuf,
    pub output: OutputMode,
}

/// Why an agent could not be started.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    #[error("{program}: not found or not executable")]
    NotFound { program: String },
    #[error("{program}: {message}")]
    Io { program: String, message: String },
    #[error("set-up command {program} failed: {message}")]
    Setup { program: String, message: String },
}

impl SpawnSpec {
    fn path_var(&self) -> Option<std::ffi::OsString> {
        self.env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.into())
    }

    /// One try: set-up commands, checks, spawn.
    pub async fn spawn_once(&self) -> Result<Child, SpawnError> {
        for argv in &self.launch.before {
            run_setup(argv).await?;
        }
        let path = self.path_var();
        if find_program_in(&self.agent_program, path.as_deref()).is_none() {
            return Err(SpawnError::NotFound {
                program: self.agent_program.clone(),
            });
        }
        let Some((program, args)) = self.launch.argv.split_first() else {
            return Err(SpawnError::NotFound {
                program: String::new(),
            });
        };
        let (stdout, stderr) = match self.output {
            OutputMode::Piped => (Stdio::piped(), Stdio::piped()),
            OutputMode::Inherit => (Stdio::inherit(), Stdio::inherit()),
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.workdir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SpawnError::NotFound {
                program: program.clone(),
            },
            _ => SpawnError::Io {
                program: program.clone(),
                message: e.to_string(),
            },
        })
    }

    /// Tries `1 + retries` times, backing off from `backoff` (doubling, with
    /// jitter, at most 10 s apart); the last error when every try failed.
    pub async fn spawn(&self, retries: u32, backoff: Duration) -> Result<Child, SpawnError> {
        let policy = ExponentialBuilder::default()
            .with_min_delay(backoff)
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(retries as usize)
            .with_jitter();
        (|| self.spawn_once())
            .retry(policy)
            .notify(|error: &SpawnError, after: Duration| {
                warn!(%error, retry_in_ms = after.as_millis() as u64, "agent did not start; retrying");
            })
            .await
    }
}

async fn run_setup(argv: &[String]) -> Result<(), SpawnError> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let setup_error = |message: String| SpawnError::Setup {
        program: program.clone(),
        message,
    };
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| setup_error(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(setup_error(format!("{}: {}", out.status, stderr.trim())))
    }
}

/// Runs clean-up commands (e.g. `jail -r`), logging failures.
pub async fn run_cleanup(commands: &[Vec<String>]) {
    for argv in commands {
        if let Err(error) = run_setup(argv).await {
            warn!(%error, "clean-up command failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str) -> SpawnSpec {
        SpawnSpec {
            launch: Launch {
                before: vec![],
                argv: vec![program.into()],
                after: vec![],
            },
            agent_program: program.into(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            workdir: std::env::temp_dir(),
            output: OutputMode::Piped,
        }
    }

    #[tokio::test]
    async fn missing_binary_fails_after_retries() {
        let started = std::time::Instant::now();
        let err = spec("/nonexistent/agent")
            .spawn(2, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, SpawnError::NotFound { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn true_spawns_in_its_own_group() {
        let mut child = spec("true")
            .spawn(0, Duration::from_millis(10))
            .await
            .unwrap();
        let pid = child.id().unwrap() as i32;
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)));
        assert!(pgid.map(|g| g.as_raw() == pid).unwrap_or(true));
        assert!(child.wait().await.unwrap().success());
    }
}
