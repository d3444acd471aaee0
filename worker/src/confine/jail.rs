//! FreeBSD confinement: one ephemeral jail per agent. The worker (root)
//! creates it, runs the agent inside as an unprivileged user with `jexec -l
//! -U`, and removes it with `jail -r` when the attempt ends, which also kills
//! every process left inside.
//!
//! `jexec -l` starts from a clean environment, so the agent's variables are
//! set again with `env -i` inside the jail. Unlike bwrap this puts them on
//! the command line of a process running as root on the host (readable with
//! `ps` by host users); run FreeBSD workers where host users are trusted, or
//! see the closing note of the issue for the env-file alternative.

use super::Sandbox;
use broker::messages::NetworkPolicy;

/// `jail -c ...`: creates the agent's jail (root `/`, the work dir as cwd).
///
/// No `mount.devfs`: with `path=/` it would mount a devfs restricted by the
/// jail ruleset over the host's own `/dev` until `jail -r`, hiding the
/// host's devices from the host. The jail sees the host's `/dev`, with its
/// permissions, as any process of the agent user would. A per-attempt root
/// (nullfs of the host read-only, the work dir read-write, a fresh `/tmp`,
/// its own devfs) is the next step; see the closing note of the issue.
pub fn create_argv(sandbox: &Sandbox) -> Vec<String> {
    let ip4 = match sandbox.network {
        NetworkPolicy::None => "ip4=disable",
        NetworkPolicy::Host => "ip4=inherit",
    };
    vec![
        "jail".into(),
        "-c".into(),
        format!("name={}", sandbox.name),
        "path=/".into(),
        format!("host.hostname={}", sandbox.name),
        ip4.into(),
        "securelevel=3".into(),
        "children.max=0".into(),
        "persist".into(),
    ]
}

/// `jexec -l -U USER NAME env -i K=V... sh -c 'cd WORKDIR && exec "$@"' agent ARGV`.
pub fn exec_argv(
    sandbox: &Sandbox,
    agent_argv: &[String],
    env: &[(String, String)],
) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "jexec".into(),
        "-l".into(),
        "-U".into(),
        sandbox.agent_user.clone(),
        sandbox.name.clone(),
        "/usr/bin/env".into(),
        "-i".into(),
    ];
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend([
        "/bin/sh".into(),
        "-c".into(),
        "cd \"$0\" && exec \"$@\"".into(),
        sandbox.workdir.to_string_lossy().into_owned(),
    ]);
    argv.extend(agent_argv.iter().cloned());
    argv
}

/// `jail -r NAME`: removes the jail and kills what is left in it.
pub fn remove_argv(sandbox: &Sandbox) -> Vec<String> {
    vec!["jail".into(), "-r".into(), sandbox.name.clone()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sandbox(network: NetworkPolicy) -> Sandbox {
        Sandbox {
            workdir: PathBuf::from("/var/db/colibri-worker/work/t-1"),
            network,
            name: "colibri_0190ab_1".into(),
            agent_user: "colibri-agent".into(),
            hide_dirs: Vec::new(),
            hide_files: Vec::new(),
        }
    }

    #[test]
    fn create_argv_to_the_letter() {
        assert_eq!(
            create_argv(&sandbox(NetworkPolicy::None)).join(" "),
            "jail -c name=colibri_0190ab_1 path=/ host.hostname=colibri_0190ab_1 ip4=disable securelevel=3 children.max=0 persist"
        );
        assert_eq!(
            create_argv(&sandbox(NetworkPolicy::Host)).join(" "),
            "jail -c name=colibri_0190ab_1 path=/ host.hostname=colibri_0190ab_1 ip4=inherit securelevel=3 children.max=0 persist"
        );
    }

    #[test]
    fn exec_and_remove_argv_to_the_letter() {
        let got = exec_argv(
            &sandbox(NetworkPolicy::None),
            &["pi".into(), "--mode".into(), "json".into(), "hi".into()],
            &[("HOME".into(), "/var/db/colibri-worker/work/t-1".into())],
        );
        assert_eq!(
            got,
            vec![
                "jexec",
                "-l",
                "-U",
                "colibri-agent",
                "colibri_0190ab_1",
                "/usr/bin/env",
                "-i",
                "HOME=/var/db/colibri-worker/work/t-1",
                "/bin/sh",
                "-c",
                "cd \"$0\" && exec \"$@\"",
                "/var/db/colibri-worker/work/t-1",
                "pi",
                "--mode",
                "json",
                "hi",
            ]
        );
        assert_eq!(
            remove_argv(&sandbox(NetworkPolicy::None)),
            vec!["jail", "-r", "colibri_0190ab_1"]
        );
    }
}
