//! The worker's configuration: `worker.toml` (see `docs/CONFIG.md`), then
//! `COLIBRI_*` environment variables, then flags; a later source overrides an
//! earlier one. Everything is validated here, before any runtime starts:
//! [`load`] returns either a [`WorkerConfig`] that the daemon can trust or
//! every problem found, each naming its field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use broker::connect::ConnectArgs;
use broker::messages::NetworkPolicy;
use broker::{TagSet, WorkerId};
use daemon::logging::{LogConfig, LogFormat};
use serde::Deserialize;

use crate::executor::ExecutorKind;
use crate::profiles::Profiles;

pub use daemon::config_checks as checks;
mod file;

use file::parse_file;

/// How agents are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Confinement {
    /// Linux bubblewrap: read-only host, writable work dir, own namespaces.
    Bwrap,
    /// FreeBSD: one ephemeral jail per agent.
    Jail,
    /// Plain process: only for development, logged loudly at start.
    Unconfined,
}

impl Confinement {
    pub fn as_str(self) -> &'static str {
        match self {
            Confinement::Bwrap => "bwrap",
            Confinement::Jail => "jail",
            Confinement::Unconfined => "unconfined",
        }
    }
}

/// Default network policy of the worker's agents (a task may ask otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    None,
    Host,
}

impl From<Network> for NetworkPolicy {
    fn from(n: Network) -> NetworkPolicy {
        match n {
            Network::None => NetworkPolicy::None,
            Network::Host => NetworkPolicy::Host,
        }
    }
}

/// What becomes of an attempt's work dir when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepWorkdirs {
    Never,
    OnFailure,
    Always,
}

/// Time and retry limits, in the units the code uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Per-attempt run time (a task may ask less).
    pub max_run: Duration,
    /// No output this long: timed out.
    pub idle: Duration,
    /// No output this long: the session's pane shows `stalled` (it runs on).
    pub stall: Duration,
    /// SIGTERM to SIGKILL.
    pub kill_grace: Duration,
    /// Spawn failures retried this many times (after the first try).
    pub spawn_retries: u32,
    /// First backoff delay between spawn tries (doubled, with jitter).
    pub spawn_backoff: Duration,
    /// Bound on the whole shutdown: agents stopped, reports sent.
    pub shutdown_grace: Duration,
    /// Memory of one attempt, in bytes (its cgroup's limit).
    pub memory: u64,
    /// Processes and threads of one attempt (its cgroup's limit).
    pub pids: u32,
    /// Size of an attempt's fresh `/tmp`, in bytes.
    pub tmp: u64,
    /// Size of an attempt's work dir, in bytes, checked while it runs.
    pub workdir: u64,
}

const MIB: u64 = 1 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Six hours: long agent runs live on defaults; a task's
            // --timeout is capped at this.
            max_run: Duration::from_secs(21600),
            idle: Duration::from_secs(600),
            stall: Duration::from_secs(120),
            kill_grace: Duration::from_secs(10),
            spawn_retries: 3,
            spawn_backoff: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(20),
            memory: 4096 * MIB,
            pids: 512,
            tmp: 1024 * MIB,
            workdir: 10240 * MIB,
        }
    }
}

/// A validated worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub worker_id: WorkerId,
    pub capabilities: TagSet,
    pub slots: u32,
    /// Work dirs live under `<state_dir>/work`. Always absolute.
    pub state_dir: PathBuf,
    pub confinement: Confinement,
    pub network: Network,
    /// The unprivileged user agents run as: `jexec -U` on FreeBSD; on
    /// Linux the user bwrap runs as when the worker is root.
    pub agent_user: String,
    /// Host trees where agents' programs are installed, shown read-only in
    /// the sandbox (the system dirs are always shown).
    pub agent_paths: Vec<PathBuf>,
    pub keep_workdirs: KeepWorkdirs,
    pub limits: Limits,
    /// Agent profiles; `command` is enabled by `allow_command` inside.
    pub agents: Profiles,
    pub executor: ExecutorKind,
    pub heartbeat_interval: Duration,
    pub connect: ConnectArgs,
    pub log: LogConfig,
    /// The file the configuration was read from: `--config`, else the
    /// platform's default if it exists ([`checks::default_config_path`]).
    pub config_file: Option<PathBuf>,
}

impl WorkerConfig {
    /// A configuration with every default, for tests and tools: no agent
    /// enabled, one slot, bwrap confinement, no network.
    pub fn new(worker_id: WorkerId, state_dir: impl Into<PathBuf>) -> WorkerConfig {
        let state_dir = state_dir.into();
        WorkerConfig {
            worker_id,
            capabilities: TagSet::new(),
            slots: 1,
            state_dir: std::path::absolute(&state_dir).unwrap_or(state_dir),
            confinement: Confinement::Bwrap,
            network: Network::None,
            agent_user: DEFAULT_AGENT_USER.to_string(),
            agent_paths: Vec::new(),
            keep_workdirs: KeepWorkdirs::OnFailure,
            limits: Limits::default(),
            agents: Profiles::default(),
            executor: ExecutorKind::Spawn,
            heartbeat_interval: Duration::from_millis(
                broker::messages::presence::HEARTBEAT_INTERVAL_MS,
            ),
            connect: ConnectArgs::default(),
            log: LogConfig::default(),
            config_file: None,
        }
    }

    /// Files that hold the worker's secrets (its config, with every agent's
    /// API keys; its NATS seed or credentials; its TLS key): confined agents
    /// never see them.
    pub fn secret_files(&self) -> Vec<PathBuf> {
        [
            self.config_file.as_ref(),
            self.connect.nkey.as_ref(),
            self.connect.creds.as_ref(),
            self.connect.tls_key.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// The user and group bwrap runs as: `None` when the worker is not
    /// root (bwrap then runs as the worker's own user) or agents are not
    /// confined by bwrap; an error naming `agent_user` when the worker is
    /// root and that user cannot be used.
    pub fn agent_ids(&self) -> Result<Option<crate::supervise::Ids>, String> {
        if self.confinement != Confinement::Bwrap || !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        agent_ids(&self.agent_user).map(Some)
    }

    /// Where attempts' work dirs are made.
    pub fn work_root(&self) -> PathBuf {
        self.state_dir.join("work")
    }
}

const DEFAULT_AGENT_USER: &str = "colibri-agent";

/// `user`'s uid and gid, when it is a usable agent user: it exists and is
/// neither root's uid nor root's group.
pub fn agent_ids(user: &str) -> Result<crate::supervise::Ids, String> {
    let hint = "the worker runs as root, so agents run as agent_user";
    if user.trim().is_empty() {
        return Err(format!(
            "{hint}: name an unprivileged user (e.g. colibri-agent)"
        ));
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) if u.uid.is_root() || u.gid.as_raw() == 0 => Err(format!(
            "{hint}: {user:?} has uid {} gid {}; it must not be root",
            u.uid, u.gid
        )),
        Ok(Some(u)) => Ok(crate::supervise::Ids {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        Ok(None) => Err(format!(
            "{hint}: no user {user:?} on this host; create it (useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {user}, as scripts/setup.sh does) or name another"
        )),
        Err(e) => Err(format!("{hint}: looking up {user:?}: {e}")),
    }
}

/// The worker's flags; each has a `COLIBRI_*` variable. Global, so that they
/// can be given before or after a subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerFlags {
    /// Configuration file (TOML, see docs/CONFIG.md).
    #[arg(long, env = "COLIBRI_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// This worker's name, unique in the fleet ([a-z0-9][a-z0-9._-]*).
    #[arg(long = "worker-id", env = "COLIBRI_WORKER_ID", global = true, value_parser = parse_worker_id)]
    pub worker_id: Option<WorkerId>,
    /// Capability tags this worker advertises (comma list).
    #[arg(long, env = "COLIBRI_CAPABILITIES", global = true, value_parser = parse_capabilities)]
    pub capabilities: Option<TagSet>,
    /// Attempts this worker runs at once (1 to 4096).
    #[arg(long, env = "COLIBRI_SLOTS", global = true, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub slots: Option<u32>,
    /// State dir; work dirs are made under <state-dir>/work.
    #[arg(long = "state-dir", env = "COLIBRI_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Run plain `-- ARGV` tasks (the `command` agent).
    #[arg(long = "allow-command", env = "COLIBRI_ALLOW_COMMAND", global = true)]
    pub allow_command: bool,
    /// How agents are confined.
    #[arg(long, env = "COLIBRI_CONFINEMENT", global = true)]
    pub confinement: Option<Confinement>,
    /// Default network policy of agents.
    #[arg(long, env = "COLIBRI_NETWORK", global = true)]
    pub network: Option<Network>,
    /// Log format.
    #[arg(long = "log-format", env = "COLIBRI_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Log file (reopened on SIGHUP); stderr when absent.
    #[arg(long = "log-file", env = "COLIBRI_LOG_FILE", global = true)]
    pub log_file: Option<PathBuf>,
    /// Bench only: `noop` acknowledges orders without spawning.
    #[arg(long, env = "COLIBRI_EXECUTOR", global = true, hide = true)]
    pub executor: Option<ExecutorKind>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn parse_worker_id(value: &str) -> Result<WorkerId, String> {
    WorkerId::parse(value).map_err(|e| e.to_string())
}

fn parse_capabilities(value: &str) -> Result<TagSet, String> {
    if value.trim().is_empty() {
        return Ok(TagSet::new());
    }
    TagSet::parse_lists([value]).map_err(|e| format!("capabilities: {e}"))
}

use daemon::config_file::render;
pub use daemon::config_file::Problem;

/// Why no configuration could be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), render(.0))]
    Invalid(Vec<Problem>),
    /// The only problems are required values given nowhere: a usage error
    /// (exit 2). Each problem names the flag to pass.
    #[error("missing on the command line:\n{}", render(.0))]
    Missing(Vec<Problem>),
}

impl ConfigError {
    /// Every problem found (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) | ConfigError::Missing(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

fn secs(
    field: &str,
    value: Option<i64>,
    default: Duration,
    min: i64,
    problems: &mut Vec<Problem>,
) -> Duration {
    match value {
        None => default,
        Some(v) if v < min => {
            problems.push(Problem::new(
                field,
                format!("must be at least {min}, not {v}"),
            ));
            default
        }
        Some(v) => Duration::from_secs(v.unsigned_abs()),
    }
}

/// A size given in MiB, at least `min`, in bytes.
fn mib(
    field: &str,
    value: Option<i64>,
    default: u64,
    min: i64,
    problems: &mut Vec<Problem>,
) -> u64 {
    match value {
        None => default,
        Some(v) if v < min || v > (1 << 30) => {
            problems.push(Problem::new(
                field,
                format!("must be between {min} and 1073741824 MiB, not {v}"),
            ));
            default
        }
        Some(v) => v.unsigned_abs() * MIB,
    }
}

/// The config file to read: `--config` (or `COLIBRI_CONFIG`), else the
/// platform's default `worker.toml` if it exists, else none.
pub fn config_file(flags: &WorkerFlags) -> Option<PathBuf> {
    let default = checks::default_config_path("worker");
    checks::config_path(flags.config.as_deref(), &default)
}

/// Reads the config file ([`config_file`]), applies env and flags, and
/// validates the result, collecting every problem.
pub fn load(flags: &WorkerFlags) -> Result<WorkerConfig, ConfigError> {
    load_with_default(flags, &checks::default_config_path("worker"))
}

/// [`load`] with the default config path given.
pub fn load_with_default(flags: &WorkerFlags, default: &Path) -> Result<WorkerConfig, ConfigError> {
    let flags = WorkerFlags {
        config: checks::config_path(flags.config.as_deref(), default),
        ..flags.clone()
    };
    let text = match &flags.config {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    resolve(text.as_deref(), &flags)
}

/// [`load`] on a file already read (`None`: no file).
pub fn resolve(text: Option<&str>, flags: &WorkerFlags) -> Result<WorkerConfig, ConfigError> {
    let mut problems = Vec::new();
    // Problems that are only a required value given nowhere.
    let mut missing = 0;
    let file = text
        .map(|t| parse_file(t, &mut problems))
        .unwrap_or_default();

    let worker_id = match (&flags.worker_id, &file.worker_id) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(raw)) => match WorkerId::parse(raw) {
            Ok(id) => Some(id),
            Err(e) => {
                problems.push(Problem::new("worker_id", e.to_string()));
                None
            }
        },
        (None, None) => {
            problems.push(Problem::new(
                "worker_id",
                "required: pass --worker-id NAME (or set COLIBRI_WORKER_ID, or worker_id in the config file)",
            ));
            missing += 1;
            None
        }
    };
    let capabilities = match (&flags.capabilities, &file.capabilities) {
        (Some(caps), _) => caps.clone(),
        (None, Some(list)) => TagSet::parse_lists(list).unwrap_or_else(|e| {
            problems.push(Problem::new("capabilities", e.to_string()));
            TagSet::new()
        }),
        (None, None) => TagSet::new(),
    };
    let slots = match flags.slots.map(i64::from).or(file.slots) {
        None => 1,
        Some(n) if (1..=4096).contains(&n) => n as u32,
        Some(n) => {
            problems.push(Problem::new(
                "slots",
                format!("must be between 1 and 4096, not {n}"),
            ));
            1
        }
    };
    let state_dir = match flags.state_dir.clone().or(file.state_dir) {
        Some(dir) if dir.as_os_str().is_empty() => {
            problems.push(Problem::new("state_dir", "must not be empty"));
            None
        }
        Some(dir) => Some(std::path::absolute(&dir).unwrap_or(dir)),
        None => {
            problems.push(Problem::new(
                "state_dir",
                "required: pass --state-dir DIR (or set COLIBRI_STATE_DIR, or state_dir in the config file)",
            ));
            missing += 1;
            None
        }
    };
    let allow_command = flags.allow_command || file.allow_command.unwrap_or(false);
    let confinement = flags
        .confinement
        .or(file.confinement)
        .unwrap_or(Confinement::Bwrap);
    check_confinement(confinement, &mut problems);
    let network = flags.network.or(file.network).unwrap_or(Network::None);
    let agent_user = file
        .agent_user
        .unwrap_or_else(|| DEFAULT_AGENT_USER.to_string());
    if confinement == Confinement::Jail && agent_user.trim().is_empty() {
        problems.push(Problem::new(
            "agent_user",
            "must name a user when confinement is jail",
        ));
    }
    if confinement == Confinement::Bwrap && nix::unistd::geteuid().is_root() {
        if let Err(message) = agent_ids(&agent_user) {
            problems.push(Problem::new("agent_user", message));
        }
    }
    let mut agent_paths = Vec::new();
    for path in file.agent_paths.unwrap_or_default() {
        match std::fs::canonicalize(&path) {
            Ok(p) if p.parent().is_some() => agent_paths.push(p),
            Ok(_) => problems.push(Problem::new("agent_paths", "must not hold /")),
            Err(e) => problems.push(Problem::new(
                "agent_paths",
                format!("{}: {e}", path.display()),
            )),
        }
    }
    let keep_workdirs = file.keep_workdirs.unwrap_or(KeepWorkdirs::OnFailure);

    let d = Limits::default();
    let l = &file.limits;
    let spawn_retries = match l.spawn_retries {
        None => d.spawn_retries,
        Some(n) if (0..=100).contains(&n) => n as u32,
        Some(n) => {
            problems.push(Problem::new(
                "limits.spawn_retries",
                format!("must be between 0 and 100, not {n}"),
            ));
            d.spawn_retries
        }
    };
    let limits = Limits {
        max_run: secs(
            "limits.max_run_secs",
            l.max_run_secs,
            d.max_run,
            1,
            &mut problems,
        ),
        idle: secs("limits.idle_secs", l.idle_secs, d.idle, 1, &mut problems),
        stall: secs("limits.stall_secs", l.stall_secs, d.stall, 1, &mut problems),
        kill_grace: secs(
            "limits.kill_grace_secs",
            l.kill_grace_secs,
            d.kill_grace,
            0,
            &mut problems,
        ),
        spawn_retries,
        spawn_backoff: d.spawn_backoff,
        memory: mib(
            "limits.memory_mib",
            l.memory_mib,
            d.memory,
            16,
            &mut problems,
        ),
        pids: match l.pids {
            None => d.pids,
            Some(n) if (16..=1_000_000).contains(&n) => n as u32,
            Some(n) => {
                problems.push(Problem::new(
                    "limits.pids",
                    format!("must be between 16 and 1000000, not {n}"),
                ));
                d.pids
            }
        },
        tmp: mib("limits.tmp_mib", l.tmp_mib, d.tmp, 1, &mut problems),
        workdir: mib(
            "limits.workdir_mib",
            l.workdir_mib,
            d.workdir,
            1,
            &mut problems,
        ),
        shutdown_grace: secs(
            "limits.shutdown_grace_secs",
            l.shutdown_grace_secs,
            d.shutdown_grace,
            1,
            &mut problems,
        ),
    };

    let agents = Profiles::from_file(&file.agents, allow_command, &mut problems);

    let mut connect = flags.connect.clone();
    let nats = file.nats;
    // A flag or COLIBRI_* variable wins; clap fills the URL's default, so
    // the file's URL applies whenever the URL is still that default.
    if !nats.url.is_empty() && connect.nats_url == [broker::connect::DEFAULT_NATS_URL] {
        connect.nats_url.clone_from(&nats.url);
    }
    nats.fill_in(&mut connect);
    for (field, message) in checks::check_connect(&connect) {
        problems.push(Problem::new(field, message));
    }
    let mut log = file.log;
    if let Some(format) = flags.log_format {
        log.format = format;
    }
    if let Some(path) = &flags.log_file {
        log.file = Some(path.clone());
    }
    if let Some(level) = &log.level {
        if tracing_subscriber::EnvFilter::try_new(level).is_err() {
            problems.push(Problem::new(
                "log.level",
                format!("{level:?} is not a valid filter"),
            ));
        }
    }
    if let Some(Err(message)) = log.file.as_deref().map(checks::appendable_file) {
        problems.push(Problem::new("log.file", message));
    }

    match (worker_id, state_dir) {
        (Some(worker_id), Some(state_dir)) if problems.is_empty() => Ok(WorkerConfig {
            worker_id,
            capabilities,
            slots,
            state_dir,
            confinement,
            network,
            agent_user,
            agent_paths,
            keep_workdirs,
            limits,
            agents,
            executor: flags.executor.unwrap_or(ExecutorKind::Spawn),
            heartbeat_interval: Duration::from_millis(
                broker::messages::presence::HEARTBEAT_INTERVAL_MS,
            ),
            connect,
            log,
            config_file: flags.config.clone(),
        }),
        _ if problems.len() == missing => Err(ConfigError::Missing(problems)),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

fn check_confinement(confinement: Confinement, problems: &mut Vec<Problem>) {
    match confinement {
        Confinement::Bwrap if !cfg!(target_os = "linux") => problems.push(Problem::new(
            "confinement",
            "bwrap needs Linux; use jail on FreeBSD",
        )),
        Confinement::Bwrap if find_program("bwrap").is_none() => problems.push(Problem::new(
            "confinement",
            "bwrap is not installed (no bwrap on PATH); install bubblewrap",
        )),
        Confinement::Jail if !cfg!(target_os = "freebsd") => problems.push(Problem::new(
            "confinement",
            "jail needs FreeBSD; use bwrap on Linux",
        )),
        _ => {}
    }
}

/// Finds `program` as `execvp` would: a path with a `/` as is, otherwise on PATH.
pub fn find_program(program: &str) -> Option<PathBuf> {
    find_program_in(program, std::env::var_os("PATH").as_deref())
}

/// [`find_program`] with an explicit PATH.
pub fn find_program_in(program: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return runnable(&p).then_some(p);
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(program))
        .find(|p| runnable(p))
}

#[cfg(test)]
mod tests;
