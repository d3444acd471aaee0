//! Starting an agent: the confinement's set-up commands, then the launcher
//! in its own process group with piped (or inherited) output, retried with
//! exponential backoff and jitter when it cannot start.
//!
//! A missing agent binary is found before spawning (the confined view of the
//! filesystem is the host's, read-only), so that "not installed" is a spawn
//! failure rather than an agent that exited 1 under bwrap. For the same
//! reason bwrap's own set-up is checked right after it is spawned (see
//! [`super::sandbox_status`]): a sandbox it could not build is a spawn
//! failure carrying bwrap's message, retried like the others.
//!
//! A try that fails after its set-up commands (`jail -c`) runs the clean-up
//! commands (`jail -r`) before the next, which would otherwise find the jail
//! already there.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::process::{Child, Command};
use tracing::warn;

use super::child::{ChildSetup, Ids};
use super::sandbox_status::status_pipes;
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
    /// The user the launcher runs as, when the worker is root (bwrap then
    /// makes its own user namespace as that user).
    pub user: Option<Ids>,
    /// The attempt's `cgroup.procs` files, joined before exec.
    pub cgroup_procs: Vec<PathBuf>,
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
    /// bwrap ran but could not build the sandbox; `message` is its own.
    #[error("bubblewrap could not start the agent: {message}")]
    Sandbox { message: String },
}

/// How long bwrap may take to build a sandbox (or to exit once it failed).
const SANDBOX_SETUP_LIMIT: Duration = Duration::from_secs(10);

impl SpawnSpec {
    fn path_var(&self) -> Option<std::ffi::OsString> {
        self.env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.into())
    }

    /// One try: checks, set-up commands, spawn. A try that ran the set-up
    /// commands but did not start the agent runs the clean-up commands
    /// (`jail -r`), so that the next try starts from scratch.
    pub async fn spawn_once(&self) -> Result<Child, SpawnError> {
        let path = self.path_var();
        if find_program_in(&self.agent_program, path.as_deref()).is_none() {
            return Err(SpawnError::NotFound {
                program: self.agent_program.clone(),
            });
        }
        let mut started = Ok(());
        for argv in &self.launch.before {
            started = run_setup(argv).await;
            if started.is_err() {
                break;
            }
        }
        let started = match started {
            Ok(()) => self.start().await,
            Err(e) => Err(e),
        };
        if started.is_err() && !self.launch.before.is_empty() {
            run_cleanup(&self.launch.after).await;
        }
        started
    }

    /// Spawns the launcher; under bwrap, waits until its sandbox runs the agent.
    async fn start(&self) -> Result<Child, SpawnError> {
        let io_error = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| SpawnError::Io {
                program: what,
                message: e.to_string(),
            }
        };
        let mut setup = ChildSetup {
            user: self.user,
            ..ChildSetup::default()
        };
        for path in &self.cgroup_procs {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_error(&path.display().to_string()))?;
            setup.cgroups.push(file.into());
        }
        let readers = if self.launch.bwrap {
            let readers = status_pipes(&mut setup).map_err(io_error("status pipe"))?;
            pass_seccomp(&mut setup).map_err(io_error("seccomp"))?;
            Some(readers)
        } else {
            None
        };
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
        setup.install(&mut cmd);
        let spawned = cmd.spawn();
        // Closes the worker's copies of the fds passed to the child.
        drop(cmd);
        let mut child = spawned.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SpawnError::NotFound {
                program: program.clone(),
            },
            _ => SpawnError::Io {
                program: program.clone(),
                message: e.to_string(),
            },
        })?;
        let Some(readers) = readers else {
            return Ok(child);
        };
        match readers.check(&mut child, SANDBOX_SETUP_LIMIT).await {
            Ok(()) => Ok(child),
            Err(message) => Err(SpawnError::Sandbox { message }),
        }
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

/// Hands bwrap its seccomp programs, each in a pipe of its own at the fd
/// its argv names ([`crate::confine::bwrap::SECCOMP_FDS`]).
#[cfg(target_os = "linux")]
fn pass_seccomp(setup: &mut ChildSetup) -> std::io::Result<()> {
    use std::io::Write;
    let programs = crate::confine::seccomp::programs()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    for (program, target) in programs.iter().zip(crate::confine::bwrap::SECCOMP_FDS) {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // A program is a few hundred bytes: it fits in the pipe's buffer.
        std::fs::File::from(write).write_all(program)?;
        setup.pass(read, target)?;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn pass_seccomp(_setup: &mut ChildSetup) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "bwrap needs Linux",
    ))
}

async fn run_setup(argv: &[String]) -> Result<(), SpawnError> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let setup_error = |message: String| SpawnError::Setup {
        program: program.clone(),
        message,
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ChildSetup::default().install(&mut cmd);
    let child = cmd.spawn();
    drop(cmd);
    let out = child
        .map_err(|e| setup_error(e.to_string()))?
        .wait_with_output()
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
                bwrap: false,
            },
            agent_program: program.into(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            workdir: std::env::temp_dir(),
            output: OutputMode::Piped,
            user: None,
            cgroup_procs: Vec::new(),
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

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    /// A launch that records its set-up and clean-up in `log`, as `jail -c`
    /// and `jail -r` would run them.
    fn recording(log: &std::path::Path, launcher: &str, create: &str) -> SpawnSpec {
        let mut spec = spec("true");
        let log = log.display();
        spec.launch = Launch {
            before: vec![sh(&format!("echo create >> {log}; {create}"))],
            argv: vec![launcher.into()],
            after: vec![sh(&format!("echo remove >> {log}"))],
            bwrap: false,
        };
        spec
    }

    // Regression: a failed try left its jail behind, so every retry failed
    // with "already exists". Each failed try now removes what it created.
    #[tokio::test]
    async fn a_failed_try_removes_its_jail_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let err = recording(&log, "/nonexistent/jexec", "true")
            .spawn(2, Duration::from_millis(1))
            .await
            .unwrap_err();
        assert!(matches!(err, SpawnError::NotFound { .. }), "{err}");
        let got = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            got.split_whitespace().collect::<Vec<_>>(),
            ["create", "remove", "create", "remove", "create", "remove"]
        );
    }

    #[tokio::test]
    async fn a_failed_create_is_cleaned_up_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let err = recording(&log, "true", "echo already exists >&2; exit 1")
            .spawn(1, Duration::from_millis(1))
            .await
            .unwrap_err();
        assert!(matches!(err, SpawnError::Setup { .. }), "{err}");
        assert!(err.to_string().contains("already exists"), "{err}");
        let got = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            got.split_whitespace().collect::<Vec<_>>(),
            ["create", "remove", "create", "remove"]
        );
    }

    #[tokio::test]
    async fn a_started_agent_is_not_cleaned_up_by_spawn() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut child = recording(&log, "true", "true")
            .spawn(2, Duration::from_millis(1))
            .await
            .unwrap();
        assert!(child.wait().await.unwrap().success());
        assert_eq!(std::fs::read_to_string(&log).unwrap().trim(), "create");
    }

    /// bwrap around `agent`, with `extra` options first; `None` when bwrap
    /// cannot make namespaces here.
    fn bwrapped(extra: &[&str], agent: &str) -> Option<SpawnSpec> {
        let works = std::process::Command::new("bwrap")
            .args(["--ro-bind", "/", "/", "--unshare-pid", "--", "true"])
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            eprintln!("SKIPPED: bwrap cannot create namespaces here");
            return None;
        }
        let sandbox = crate::confine::Sandbox {
            workdir: std::env::temp_dir(),
            network: broker::messages::NetworkPolicy::None,
            name: "colibri_spawn_test".into(),
            agent_user: String::new(),
            hide_dirs: Vec::new(),
            hide_files: Vec::new(),
            system: crate::confine::bwrap::system_view(),
            agent_paths: Vec::new(),
            tmp_size: None,
        };
        let mut launch = crate::confine::launch(
            crate::config::Confinement::Bwrap,
            &sandbox,
            &[agent.to_string()],
        );
        let at = 1 + crate::confine::bwrap::FD_ARGS;
        let extra = extra.iter().map(|s| s.to_string());
        launch.argv.splice(at..at, extra);
        let mut spec = spec(agent);
        spec.launch = launch;
        Some(spec)
    }

    #[tokio::test]
    async fn a_sandbox_bwrap_cannot_build_is_a_spawn_failure() {
        let Some(spec) = bwrapped(&["--bind", "/nonexistent/colibri", "/x"], "true") else {
            return;
        };
        let err = spec.spawn(1, Duration::from_millis(1)).await.unwrap_err();
        assert!(matches!(err, SpawnError::Sandbox { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/colibri"), "{err}");
    }

    #[tokio::test]
    async fn agents_in_a_sandbox_run_whether_quick_slow_or_failing() {
        for (agent, ok) in [("true", true), ("false", false)] {
            let Some(spec) = bwrapped(&[], agent) else {
                return;
            };
            let mut child = spec.spawn(0, Duration::from_millis(1)).await.unwrap();
            assert_eq!(child.wait().await.unwrap().success(), ok, "{agent}");
        }
        let Some(mut spec) = bwrapped(&[], "sleep") else {
            return;
        };
        let at = spec.launch.argv.len();
        spec.launch.argv.insert(at, "0.3".into());
        let started = std::time::Instant::now();
        let mut child = spec.spawn(0, Duration::from_millis(1)).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "waited for the agent"
        );
        assert!(child.wait().await.unwrap().success());
    }
}
