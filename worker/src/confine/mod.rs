//! Confinement: how an agent's argv is wrapped so that it runs isolated.
//! Each mechanism is a pure function from a [`Sandbox`] and the agent's argv
//! to the exact argv(s) to run, unit-tested to the letter.
//!
//! The agent's environment is never put on a command line (any host user can
//! read `/proc/PID/cmdline`, only the owner can read `/proc/PID/environ`):
//! the launcher process is started with a cleared environment holding exactly
//! the agent's variables, and bwrap passes it through. That is why the bwrap
//! argv has no `--clearenv`/`--setenv`: the effect is the same, without
//! secrets in `ps`. `jexec -l` discards the environment, so under a jail it
//! is restored with `env(1)` inside the jail (see [`jail`]).

pub mod bwrap;
pub mod jail;
pub mod unconfined;

use std::path::PathBuf;

use broker::messages::NetworkPolicy;

pub use crate::config::Confinement;

/// Where and how one agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The attempt's work dir: the only writable place. Absolute.
    pub workdir: PathBuf,
    pub network: NetworkPolicy,
    /// A name unique to the attempt (the jail's name and hostname).
    pub name: String,
    /// FreeBSD: the unprivileged user the agent runs as.
    pub agent_user: String,
}

/// The commands that run one confined agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Run first, each must exit 0 (e.g. `jail -c`); a failure is a spawn failure.
    pub before: Vec<Vec<String>>,
    /// The supervised process.
    pub argv: Vec<String>,
    /// Run when the attempt ends, whatever happened (e.g. `jail -r`).
    pub after: Vec<Vec<String>>,
}

/// The launch of `agent_argv` (with environment `env`) under `confinement`.
pub fn launch(
    confinement: Confinement,
    sandbox: &Sandbox,
    agent_argv: &[String],
    env: &[(String, String)],
) -> Launch {
    match confinement {
        Confinement::Bwrap => Launch {
            before: Vec::new(),
            argv: bwrap::argv(sandbox, agent_argv),
            after: Vec::new(),
        },
        Confinement::Jail => Launch {
            before: vec![jail::create_argv(sandbox)],
            argv: jail::exec_argv(sandbox, agent_argv, env),
            after: vec![jail::remove_argv(sandbox)],
        },
        Confinement::Unconfined => Launch {
            before: Vec::new(),
            argv: unconfined::argv(agent_argv),
            after: Vec::new(),
        },
    }
}
