//! What runs an order. [`ExecutorKind::Spawn`] is the real thing: profile,
//! work dir, confinement, spawn with retries, supervision. [`ExecutorKind::Noop`]
//! is for the placement/dispatch benchmark only: it reports the attempt
//! started and succeeded at once, without spawning anything.
//!
//! An attempt is begun ([`Executor::begin`], after which the runner reports
//! `Started` and acknowledges the order) and then finished ([`Begun::finish`]).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use broker::messages::{Outcome, RunOrder};
use tracing::{info, warn};

use crate::config::{Confinement, WorkerConfig};
use crate::confine::{self, Sandbox};
use crate::session_output::SessionOutput;
use crate::supervise::{
    AttemptLimits, Ending, Ids, LimitGuard, OutputMode, SpawnSpec, StopRx, Supervised, MARKER_VAR,
};
use crate::workdir;

/// Which executor the worker uses (a hidden `--executor` flag).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// Spawn confined, supervised agents.
    #[default]
    Spawn,
    /// Bench only: acknowledge at once, spawn nothing.
    Noop,
}

/// Runs orders per the worker's configuration.
#[derive(Debug, Clone)]
pub struct Executor {
    config: Arc<WorkerConfig>,
    /// Where agents' piped output goes (none: output is not read).
    sessions: Option<SessionOutput>,
    /// What confined agents see and run as, resolved once (at the first
    /// spawn, when the state dir exists).
    host: Arc<OnceLock<Host>>,
}

/// What the host offers confined agents, found once.
#[derive(Debug)]
struct Host {
    /// The worker's own paths hidden from confined agents.
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
    /// The host's system as agents see it (bwrap).
    system: Vec<confine::bwrap::SystemMount>,
    /// Where attempts' cgroups are made (Linux; none when no hierarchy
    /// can hold the limits).
    cgroups: Option<crate::cgroup::Hierarchy>,
    /// The user bwrap runs as (a root worker), or why none can be used.
    agent: Result<Option<Ids>, String>,
}

/// An attempt that has started.
#[derive(Debug)]
pub enum Begun {
    Agent {
        agent: Box<Supervised>,
        workdir: PathBuf,
        limits: AttemptLimits,
    },
    Noop,
}

impl Begun {
    /// The agent's pid (the launcher's, under confinement).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Begun::Agent { agent, .. } => Some(agent.pid()),
            Begun::Noop => None,
        }
    }
}

impl Executor {
    /// An executor that does not read its agents' output (`spawn-local`).
    pub fn new(config: Arc<WorkerConfig>) -> Executor {
        Executor {
            config,
            sessions: None,
            host: Arc::default(),
        }
    }

    /// Reads every agent's output as a glasspane session through `sessions`.
    pub fn with_sessions(mut self, sessions: SessionOutput) -> Executor {
        self.sessions = Some(sessions);
        self
    }

    fn host(&self) -> &Host {
        self.host.get_or_init(|| {
            let bwrap = self.config.confinement == Confinement::Bwrap;
            let cgroups = if bwrap {
                crate::cgroup::detect()
            } else {
                None
            };
            if bwrap && cgroups.is_none() {
                warn!("no cgroup hierarchy can hold agents' memory and process limits here (cgroup v2 without delegated memory and pids, and no writable v1 memory and pids)");
            }
            Host {
                dirs: existing(std::iter::once(self.config.state_dir.clone())),
                files: existing(self.config.secret_files()),
                system: if bwrap {
                    confine::bwrap::system_view()
                } else {
                    Vec::new()
                },
                cgroups,
                agent: self.config.agent_ids(),
            }
        })
    }

    /// Starts `order`, or says how it ended without running.
    pub async fn begin(&self, order: &RunOrder, stop: &mut StopRx) -> Result<Begun, Ending> {
        self.begin_with(order, stop, OutputMode::Piped).await
    }

    /// [`Executor::begin`] with the output sent where `output` says
    /// (`spawn-local` streams it to the terminal).
    pub async fn begin_with(
        &self,
        order: &RunOrder,
        stop: &mut StopRx,
        output: OutputMode,
    ) -> Result<Begun, Ending> {
        if self.config.executor == ExecutorKind::Noop {
            return Ok(Begun::Noop);
        }
        let cfg = &self.config;
        let continued = crate::cost::continued_task(order, &cfg.state_dir)
            .map_err(|e| Ending::without_run(Outcome::Rejected, e.to_string()))?;
        let task = continued.as_ref().unwrap_or(&order.task);
        let agent = task.agent.as_str();
        let controls = cfg
            .agents
            .program(agent)
            .map(|program| {
                crate::agent_controls::for_agent(program, agent, order.cost_mode, &order.spent)
            })
            .unwrap_or_default();
        let invocation = cfg
            .agents
            .invocation_with(task, &order.session, &controls.args)
            .map_err(|refusal| Ending::without_run(Outcome::Rejected, refusal.0))?;
        let spawn_failed = |what: &str, e: &dyn std::fmt::Display| {
            Ending::without_run(Outcome::SpawnFailed, format!("{what}: {e}"))
        };
        let host = self.host();
        let agent_ids = host.agent.clone().map_err(|message| {
            Ending::without_run(Outcome::Rejected, format!("agent_user: {message}"))
        })?;
        let dir = workdir::create(&cfg.work_root(), &task.id, order.attempt)
            .map_err(|e| spawn_failed("creating the work dir", &e))?;
        let written = controls
            .write_files(&dir)
            .map_err(|e| spawn_failed("writing the agent's mode settings", &e))?;
        if let Some(ids) = agent_ids {
            workdir::hand_over(&cfg.state_dir, &dir, &written, ids)
                .map_err(|e| spawn_failed("handing the work dir to agent_user", &e))?;
        }
        let marker = uuid::Uuid::new_v4().simple().to_string();
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            ),
            ("HOME".into(), dir.to_string_lossy().into_owned()),
            ("TMPDIR".into(), "/tmp".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("COLIBRI_TASK_ID".into(), task.id.to_string()),
            ("COLIBRI_ATTEMPT".into(), order.attempt.to_string()),
            ("COLIBRI_SESSION_ID".into(), order.session.to_string()),
            (MARKER_VAR.into(), marker.clone()),
        ];
        for (k, v) in &invocation.env {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.expose().to_string()));
        }
        let sandbox = Sandbox {
            workdir: dir.clone(),
            network: task.network.unwrap_or(cfg.network.into()),
            name: format!("colibri_{}_{}", task.id.0.simple(), order.attempt),
            agent_user: cfg.agent_user.clone(),
            hide_dirs: host.dirs.clone(),
            hide_files: host.files.clone(),
            system: host.system.clone(),
            agent_paths: cfg.agent_paths.clone(),
            tmp_size: Some(cfg.limits.tmp),
        };
        let cgroup = match &host.cgroups {
            Some(hierarchy) => {
                let limits = crate::cgroup::CgroupLimits {
                    memory: cfg.limits.memory,
                    pids: cfg.limits.pids,
                };
                match crate::cgroup::AttemptCgroup::create(hierarchy, &sandbox.name, limits) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        workdir::finish(&dir, cfg.keep_workdirs, Outcome::SpawnFailed);
                        return Err(spawn_failed("making the attempt's cgroup", &e));
                    }
                }
            }
            None => None,
        };
        if cfg.confinement == Confinement::Jail {
            prepare_jail(&cfg.state_dir, &sandbox, &written, &env)
                .map_err(|(what, e)| spawn_failed(what, &e))?;
        }
        let mut launch = confine::launch(cfg.confinement, &sandbox, &invocation.argv);
        if cfg.confinement == Confinement::Jail {
            // rctl(8): the jail's memory and process limits.
            let (memory, pids) = (cfg.limits.memory, cfg.limits.pids);
            launch
                .before
                .push(confine::jail::rctl_add_argv(&sandbox, memory, pids));
            launch.after.push(confine::jail::rctl_remove_argv(&sandbox));
        }
        let cleanup = launch.after.clone();
        let spec = SpawnSpec {
            agent_program: invocation.argv.first().cloned().unwrap_or_default(),
            launch,
            env,
            workdir: dir.clone(),
            output,
            user: agent_ids,
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
        };
        let guard = LimitGuard {
            cgroup,
            workdir: dir.clone(),
            workdir_max: cfg.limits.workdir,
        };
        let spawned = tokio::select! {
            r = spec.spawn(cfg.limits.spawn_retries, cfg.limits.spawn_backoff) => r,
            cause = wait_stop(stop) => {
                // The try in flight may have created a jail: remove it.
                crate::supervise::spawn::run_cleanup(&cleanup).await;
                guard.release().await;
                workdir::finish(&dir, cfg.keep_workdirs, cause.outcome());
                return Err(Ending::without_run(cause.outcome(), cause.reason()));
            }
        };
        let child = match spawned {
            Ok(child) => child,
            Err(error) => {
                // Each failed try already ran the clean-up commands.
                warn!(task_id = %task.id, attempt = order.attempt, %error, "agent could not start");
                guard.release().await;
                workdir::finish(&dir, cfg.keep_workdirs, Outcome::SpawnFailed);
                return Err(Ending::without_run(
                    Outcome::SpawnFailed,
                    format!("{error} (after {} tries)", cfg.limits.spawn_retries + 1),
                ));
            }
        };
        let plan = self
            .sessions
            .as_ref()
            .map(|s| s.plan(order, invocation.agent.as_str()));
        // A pid namespace (bwrap) or a jail takes every process down with it.
        let contained = cfg.confinement != Confinement::Unconfined;
        let Some(agent) = Supervised::new(child, marker, contained, cleanup, plan) else {
            guard.release().await;
            return Err(Ending::without_run(
                Outcome::SpawnFailed,
                "the agent exited before it could be supervised",
            ));
        };
        let agent = agent.with_limits(guard);
        info!(task_id = %task.id, attempt = order.attempt, agent = %invocation.agent, pid = agent.pid(), "agent started");
        let secs = |s: Option<u64>| s.map(Duration::from_secs);
        let limits = AttemptLimits {
            run: secs(task.limits.timeout_secs)
                .map_or(cfg.limits.max_run, |t| t.min(cfg.limits.max_run)),
            idle: secs(task.limits.idle_secs).map_or(cfg.limits.idle, |t| t.min(cfg.limits.idle)),
            kill_grace: cfg.limits.kill_grace,
            shutdown_kill_grace: cfg.limits.shutdown_grace / 2,
        };
        Ok(Begun::Agent {
            agent: Box::new(agent),
            workdir: dir,
            limits,
        })
    }

    /// Runs a begun attempt to its end and applies the work-dir policy.
    pub async fn finish(&self, begun: Begun, stop: &mut StopRx) -> Ending {
        match begun {
            Begun::Noop => Ending {
                outcome: Outcome::Succeeded,
                exit_code: Some(0),
                signal: None,
                reason: None,
                usage: None,
                session: None,
            },
            Begun::Agent {
                agent,
                workdir: dir,
                limits,
            } => {
                let ending = agent.wait(limits, stop).await;
                workdir::finish(&dir, self.config.keep_workdirs, ending.outcome);
                ending
            }
        }
    }
}

/// Resolves when a stop is requested (never, once the sender is gone).
pub async fn wait_stop(stop: &mut StopRx) -> crate::supervise::StopCause {
    loop {
        if let Some(cause) = stop.borrow_and_update().clone() {
            return cause;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The paths of `paths` that exist, made absolute and free of links (what
/// bwrap mounts over must exist; `/` is never hidden).
fn existing(paths: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = paths
        .into_iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| p.parent().is_some())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What a jailed agent needs on the host before it starts: the state dir's
/// modes ([`workdir::open_for_jail`]), its work dir and the files written
/// into it handed to the agent user, and its environment file (mode 0600,
/// the agent user's), which the start script inside the jail sources and
/// deletes. On failure: which step, and why.
fn prepare_jail(
    state_dir: &std::path::Path,
    sandbox: &confine::Sandbox,
    written: &[PathBuf],
    env: &[(String, String)],
) -> Result<(), (&'static str, std::io::Error)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let user = sandbox.agent_user.as_str();
    workdir::open_for_jail(state_dir)
        .map_err(|e| ("setting the state dir's modes for jails", e))?;
    for path in std::iter::once(&sandbox.workdir).chain(written) {
        workdir::give_to(path, user).map_err(|e| ("handing the work dir to agent_user", e))?;
    }
    let writing = |e| ("writing the jailed agent's environment", e);
    let text = confine::jail::env_file(env)
        .map_err(|e| writing(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let path = confine::jail::env_file_path(sandbox);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(writing)?;
    file.write_all(text.as_bytes()).map_err(writing)?;
    drop(file);
    workdir::give_to(&path, user).map_err(writing)
}
