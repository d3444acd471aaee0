//! Linux confinement with bubblewrap: the host's filesystem read-only, the
//! work dir writable, fresh `/dev`, `/proc` and `/tmp`, its own pid, ipc and
//! uts namespaces (and network namespace when the policy is `none`), killed
//! with its parent, in a new session (no terminal injection via TIOCSTI).
//!
//! Order matters: the work dir is bound after the fresh `/tmp`, so a work dir
//! under `/tmp` stays visible.

use super::Sandbox;
use broker::messages::NetworkPolicy;

/// The bubblewrap program.
pub const BWRAP: &str = "bwrap";

/// The exact bwrap argv running `agent_argv` in `sandbox`.
pub fn argv(sandbox: &Sandbox, agent_argv: &[String]) -> Vec<String> {
    let workdir = sandbox.workdir.to_string_lossy().into_owned();
    let mut argv: Vec<String> = [
        BWRAP,
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--bind",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
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

    fn sandbox(network: NetworkPolicy) -> Sandbox {
        Sandbox {
            workdir: PathBuf::from("/var/db/colibri-worker/work/t-1"),
            network,
            name: "colibri_t_1".into(),
            agent_user: "colibri-agent".into(),
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
        );
        let want = "bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp \
            --bind /var/db/colibri-worker/work/t-1 /var/db/colibri-worker/work/t-1 \
            --unshare-pid --unshare-ipc --unshare-uts --unshare-net --die-with-parent --new-session \
            --chdir /var/db/colibri-worker/work/t-1 -- pi --mode json";
        let mut want: Vec<String> = want.split_whitespace().map(String::from).collect();
        want.push("hi there".into());
        assert_eq!(got, want);
    }

    #[test]
    fn bwrap_argv_with_host_network() {
        let got = argv(&sandbox(NetworkPolicy::Host), &["true".into()]);
        let want: Vec<String> = "bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp \
            --bind /var/db/colibri-worker/work/t-1 /var/db/colibri-worker/work/t-1 \
            --unshare-pid --unshare-ipc --unshare-uts --die-with-parent --new-session \
            --chdir /var/db/colibri-worker/work/t-1 -- true"
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(got, want);
    }
}
