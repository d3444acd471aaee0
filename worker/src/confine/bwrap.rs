//! Linux confinement with bubblewrap: the host's filesystem read-only, the
//! work dir writable, fresh `/dev`, `/proc` and `/tmp`, its own pid, ipc and
//! uts namespaces (and network namespace when the policy is `none`), killed
//! with its parent, in a new session (no terminal injection via TIOCSTI).
//!
//! Order matters: the work dir is bound after the fresh `/tmp` and after the
//! hidden paths (the worker's state dir under an empty tmpfs, its config,
//! seed and keys under `/dev/null`), so a work dir under either stays
//! visible while nothing else of the worker's is.
//!
//! bwrap reports on its set-up through two inherited fds: `--info-fd` gets
//! the sandbox's `child-pid` and reaches end of file once the sandboxed child
//! has exec'd the agent or died setting up; `--json-status-fd` gets the same
//! `child-pid`, then an `exit-code` only if the set-up completed. The
//! supervisor reads both to tell "bwrap could not start the agent" (a spawn
//! failure, retried) from "the agent ran and failed".

use super::Sandbox;
use broker::messages::NetworkPolicy;

/// The bubblewrap program.
pub const BWRAP: &str = "bwrap";

/// The fds, in bwrap's own fd table, it reports its set-up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFds {
    pub info: i32,
    pub json_status: i32,
}

impl StatusFds {
    /// Stands in for the real numbers, which each spawn try fills in at
    /// [`STATUS_FD_SLOTS`].
    pub const UNSET: StatusFds = StatusFds {
        info: -1,
        json_status: -1,
    };
}

/// Where in [`argv`] the `--info-fd` and `--json-status-fd` values sit.
pub const STATUS_FD_SLOTS: [usize; 2] = [2, 4];

/// The exact bwrap argv running `agent_argv` in `sandbox`, reporting its
/// set-up on `fds`.
pub fn argv(sandbox: &Sandbox, agent_argv: &[String], fds: StatusFds) -> Vec<String> {
    let workdir = sandbox.workdir.to_string_lossy().into_owned();
    let mut argv: Vec<String> = vec![
        BWRAP.into(),
        "--info-fd".into(),
        fds.info.to_string(),
        "--json-status-fd".into(),
        fds.json_status.to_string(),
    ];
    argv.extend(
        [
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
        ]
        .map(String::from),
    );
    // The worker's secrets and other attempts' data, out of sight; then the
    // work dir, which may lie under a hidden dir.
    for dir in &sandbox.hide_dirs {
        argv.push("--tmpfs".into());
        argv.push(dir.to_string_lossy().into_owned());
    }
    for file in &sandbox.hide_files {
        argv.extend(["--ro-bind".into(), "/dev/null".into()]);
        argv.push(file.to_string_lossy().into_owned());
    }
    // The agent's own program stays reachable when it lies where the
    // sandbox shows something else (a checkout under /tmp, say).
    if let Some(program) = agent_argv
        .first()
        .map(std::path::Path::new)
        .filter(|p| p.is_absolute())
    {
        let covered =
            program.starts_with("/tmp") || sandbox.hide_dirs.iter().any(|d| program.starts_with(d));
        if covered {
            let program = program.to_string_lossy().into_owned();
            argv.extend(["--ro-bind".into(), program.clone(), program]);
        }
    }
    argv.push("--bind".into());
    argv.push(workdir.clone());
    argv.push(workdir.clone());
    argv.extend(["--unshare-pid", "--unshare-ipc", "--unshare-uts"].map(String::from));
    if sandbox.network == NetworkPolicy::None {
        argv.push("--unshare-net".into());
    }
    argv.extend(["--die-with-parent", "--new-session", "--chdir"].map(String::from));
    argv.push(workdir);
    argv.push("--".into());
    argv.extend(agent_argv.iter().cloned());
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const FDS: StatusFds = StatusFds {
        info: 5,
        json_status: 7,
    };

    fn sandbox(network: NetworkPolicy) -> Sandbox {
        Sandbox {
            workdir: PathBuf::from("/var/db/colibri-worker/work/t-1"),
            network,
            name: "colibri_t_1".into(),
            agent_user: "colibri-agent".into(),
            hide_dirs: Vec::new(),
            hide_files: Vec::new(),
        }
    }

    #[test]
    fn bwrap_argv_without_network() {
        let got = argv(
            &sandbox(NetworkPolicy::None),
            &[
                "pi".into(),
                "--mode".into(),
                "json".into(),
                "hi there".into(),
            ],
            FDS,
        );
        let want = "bwrap --info-fd 5 --json-status-fd 7 --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp \
            --bind /var/db/colibri-worker/work/t-1 /var/db/colibri-worker/work/t-1 \
            --unshare-pid --unshare-ipc --unshare-uts --unshare-net --die-with-parent --new-session \
            --chdir /var/db/colibri-worker/work/t-1 -- pi --mode json";
        let mut want: Vec<String> = want.split_whitespace().map(String::from).collect();
        want.push("hi there".into());
        assert_eq!(got, want);
    }

    #[test]
    fn bwrap_argv_with_host_network() {
        let got = argv(&sandbox(NetworkPolicy::Host), &["true".into()], FDS);
        let want: Vec<String> = "bwrap --info-fd 5 --json-status-fd 7 --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp \
            --bind /var/db/colibri-worker/work/t-1 /var/db/colibri-worker/work/t-1 \
            --unshare-pid --unshare-ipc --unshare-uts --die-with-parent --new-session \
            --chdir /var/db/colibri-worker/work/t-1 -- true"
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn bwrap_argv_hides_the_workers_secrets_before_binding_the_work_dir() {
        let mut sb = sandbox(NetworkPolicy::Host);
        sb.hide_dirs = vec![PathBuf::from("/var/db/colibri-worker")];
        sb.hide_files = vec![
            PathBuf::from("/etc/colibri/worker.toml"),
            PathBuf::from("/etc/colibri/identities/debby.nk"),
        ];
        let got = argv(&sb, &["true".into()], FDS);
        let want: Vec<String> = "bwrap --info-fd 5 --json-status-fd 7 --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp \
            --tmpfs /var/db/colibri-worker \
            --ro-bind /dev/null /etc/colibri/worker.toml --ro-bind /dev/null /etc/colibri/identities/debby.nk \
            --bind /var/db/colibri-worker/work/t-1 /var/db/colibri-worker/work/t-1 \
            --unshare-pid --unshare-ipc --unshare-uts --die-with-parent --new-session \
            --chdir /var/db/colibri-worker/work/t-1 -- true"
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn an_agent_program_under_tmp_stays_reachable() {
        let got = argv(
            &sandbox(NetworkPolicy::Host),
            &["/tmp/ci/target/debug/agent".into(), "x".into()],
            FDS,
        );
        let want: Vec<String> = "bwrap --info-fd 5 --json-status-fd 7 --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp \
            --ro-bind /tmp/ci/target/debug/agent /tmp/ci/target/debug/agent \
            --bind /var/db/colibri-worker/work/t-1 /var/db/colibri-worker/work/t-1 \
            --unshare-pid --unshare-ipc --unshare-uts --die-with-parent --new-session \
            --chdir /var/db/colibri-worker/work/t-1 -- /tmp/ci/target/debug/agent x"
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn status_fd_slots_point_at_the_fd_values() {
        let got = argv(&sandbox(NetworkPolicy::Host), &["true".into()], FDS);
        assert_eq!(got[STATUS_FD_SLOTS[0] - 1], "--info-fd");
        assert_eq!(got[STATUS_FD_SLOTS[0]], "5");
        assert_eq!(got[STATUS_FD_SLOTS[1] - 1], "--json-status-fd");
        assert_eq!(got[STATUS_FD_SLOTS[1]], "7");
    }
}
