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
    /// Linux: directories the agent must not see (the worker's state dir:
    /// other attempts' work dirs and transcripts), each under an empty
    /// tmpfs. Absolute, existing.
    pub hide_dirs: Vec<PathBuf>,
    /// Linux: files the agent must not read (the worker's config with every
    /// agent's API keys, its NATS seed or credentials, its TLS key), each
    /// covered by `/dev/null`. Absolute, existing.
    pub hide_files: Vec<PathBuf>,
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
    /// bwrap: where in `argv` its status fds go ([`bwrap::STATUS_FD_SLOTS`]);
    /// each try fills in the fds of its own pipes.
    pub status_fd_slots: Option<[usize; 2]>,
}

impl Launch {
    /// `argv` with the status fds filled in (unchanged without slots).
    pub fn argv_with(&self, fds: bwrap::StatusFds) -> Vec<String> {
        let mut argv = self.argv.clone();
        if let Some([info, json_status]) = self.status_fd_slots {
            for (at, fd) in [(info, fds.info), (json_status, fds.json_status)] {
                if let Some(slot) = argv.get_mut(at) {
                    *slot = fd.to_string();
                }
            }
        }
        argv
    }
}

/// The launch of `agent_argv` under `confinement` (the environment goes
/// to the launcher process, or under a jail into [`jail::env_file`]).
pub fn launch(confinement: Confinement, sandbox: &Sandbox, agent_argv: &[String]) -> Launch {
    match confinement {
        Confinement::Bwrap => Launch {
            before: Vec::new(),
            argv: bwrap::argv(sandbox, agent_argv, bwrap::StatusFds::UNSET),
            after: Vec::new(),
            status_fd_slots: Some(bwrap::STATUS_FD_SLOTS),
        },
        Confinement::Jail => Launch {
            before: vec![jail::create_argv(sandbox)],
            argv: jail::exec_argv(sandbox, agent_argv),
            after: vec![jail::remove_argv(sandbox)],
            status_fd_slots: None,
        },
        Confinement::Unconfined => Launch {
            before: Vec::new(),
            argv: unconfined::argv(agent_argv),
            after: Vec::new(),
            status_fd_slots: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bwrap_launch_fills_in_each_tries_status_fds() {
        let sandbox = Sandbox {
            workdir: PathBuf::from("/w"),
            network: NetworkPolicy::None,
            name: "colibri_t_1".into(),
            agent_user: "agent".into(),
            hide_dirs: Vec::new(),
            hide_files: Vec::new(),
        };
        let agent = ["true".to_string()];
        let launch = launch(Confinement::Bwrap, &sandbox, &agent);
        let fds = bwrap::StatusFds {
            info: 9,
            json_status: 12,
        };
        assert_eq!(launch.argv_with(fds), bwrap::argv(&sandbox, &agent, fds));
        let plain = launch_plain(&sandbox, &agent);
        assert_eq!(plain.argv_with(fds), plain.argv);
    }

    fn launch_plain(sandbox: &Sandbox, agent: &[String]) -> Launch {
        launch(Confinement::Unconfined, sandbox, agent)
    }
}
