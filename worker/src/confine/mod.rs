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
//! is restored inside the jail from a file the worker writes into the work
//! dir (see [`jail`]).

pub mod bwrap;
pub mod jail;
#[cfg(target_os = "linux")]
pub mod seccomp;
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
    /// The unprivileged user the agent runs as (FreeBSD: `jexec -U`;
    /// Linux: the user bwrap is started as when the worker is root).
    pub agent_user: String,
    /// Linux: directories the agent must not see (the worker's state dir:
    /// other attempts' work dirs and transcripts), each under an empty
    /// tmpfs. Absolute, existing.
    pub hide_dirs: Vec<PathBuf>,
    /// Linux: files the agent must not read (the worker's config with every
    /// agent's API keys, its NATS seed or credentials, its TLS key), each
    /// covered by `/dev/null`. Absolute, existing.
    pub hide_files: Vec<PathBuf>,
    /// Linux: what of the host's system the agent sees ([`bwrap::system_view`]).
    pub system: Vec<bwrap::SystemMount>,
    /// Host trees shown read-only where the agent's programs are installed
    /// (the worker's `agent_paths`). Absolute, existing.
    pub agent_paths: Vec<PathBuf>,
    /// Linux: the size of the fresh `/tmp`, in bytes.
    pub tmp_size: Option<u64>,
}

/// The commands that run one confined agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Run first, each must exit 0 (e.g. `jail -c`); a failure is a spawn failure.
    pub before: Vec<Vec<String>>,
    /// The supervised process.
    pub argv: Vec<String>,
    /// Run when the attempt ends, whatever happened (e.g. `jail -r`), and
    /// after each try that ran `before` but did not start the agent.
    pub after: Vec<Vec<String>>,
    /// bwrap: the spawn hands it its status pipes and seccomp programs at
    /// the fds its argv names ([`bwrap::INFO_FD`], ...) and checks its set-up.
    pub bwrap: bool,
}

/// The launch of `agent_argv` under `confinement` (the environment goes
/// to the launcher process, or under a jail into [`jail::env_file`]).
pub fn launch(confinement: Confinement, sandbox: &Sandbox, agent_argv: &[String]) -> Launch {
    match confinement {
        Confinement::Bwrap => Launch {
            before: Vec::new(),
            argv: bwrap::argv(sandbox, agent_argv),
            after: Vec::new(),
            bwrap: true,
        },
        Confinement::Jail => Launch {
            before: vec![jail::create_argv(sandbox)],
            argv: jail::exec_argv(sandbox, agent_argv),
            after: vec![jail::remove_argv(sandbox)],
            bwrap: false,
        },
        Confinement::Unconfined => Launch {
            before: Vec::new(),
            argv: unconfined::argv(agent_argv),
            after: Vec::new(),
            bwrap: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bwrap_launches_get_status_pipes_and_seccomp() {
        let sandbox = Sandbox {
            workdir: PathBuf::from("/w"),
            network: NetworkPolicy::None,
            name: "colibri_t_1".into(),
            agent_user: "agent".into(),
            hide_dirs: Vec::new(),
            hide_files: Vec::new(),
            system: Vec::new(),
            agent_paths: Vec::new(),
            tmp_size: None,
        };
        let agent = ["true".to_string()];
        let boxed = launch(Confinement::Bwrap, &sandbox, &agent);
        assert!(boxed.bwrap);
        assert_eq!(boxed.argv, bwrap::argv(&sandbox, &agent));
        let plain = launch(Confinement::Unconfined, &sandbox, &agent);
        assert!(!plain.bwrap);
        assert_eq!(plain.argv, agent);
    }
}
