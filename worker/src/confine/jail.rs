//! FreeBSD confinement: one ephemeral jail per agent. The worker (root)
//! creates it, runs the agent inside as an unprivileged user with `jexec -l
//! -U`, and removes it with `jail -r` when the attempt ends, which also kills
//! every process left inside.
//!
//! `jexec -l` starts from a clean environment, so the agent's variables
//! (its API keys among them) reach it through a file, never a command line
//! (any host user can read command lines with `ps`): the worker writes
//! [`env_file`] into the work dir (mode 0600, owned by the agent user), and
//! the shell that starts the agent inside the jail, from an empty
//! environment (`env -i`), exports what it sources, deletes the file, and
//! execs the agent in the work dir.

use std::path::PathBuf;

use super::Sandbox;
use broker::messages::NetworkPolicy;

/// The env file's name in the work dir.
pub const ENV_FILE: &str = ".colibri-env";

/// Run by `/bin/sh -c` inside the jail as `$0` = the work dir, `$1` = the
/// env file, then the agent's argv: export the file's variables, delete it,
/// start the agent in the work dir.
pub const START_SCRIPT: &str =
    "set -a && . \"$1\" && rm -f -- \"$1\" && set +a && shift && cd \"$0\" && exec \"$@\"";

/// Where the env file of `sandbox` goes.
pub fn env_file_path(sandbox: &Sandbox) -> PathBuf {
    sandbox.workdir.join(ENV_FILE)
}

/// A variable name the shell cannot set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable name {0:?} is not a shell name ([A-Za-z_][A-Za-z0-9_]*)")]
pub struct BadEnvName(pub String);

/// The env file: one `NAME='value'` line per variable, each value single
/// quoted (a `'` in it written `'\''`), so the shell takes every byte as is.
pub fn env_file(env: &[(String, String)]) -> Result<String, BadEnvName> {
    let mut out = String::new();
    for (name, value) in env {
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(BadEnvName(name.clone()));
        }
        out.push_str(name);
        out.push_str("='");
        out.push_str(&value.replace('\'', "'\\''"));
        out.push_str("'\n");
    }
    Ok(out)
}

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

/// `jexec -l -U USER NAME /usr/bin/env -i /bin/sh -c START_SCRIPT WORKDIR
/// ENVFILE ARGV`: no variable on the command line.
pub fn exec_argv(sandbox: &Sandbox, agent_argv: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "jexec".into(),
        "-l".into(),
        "-U".into(),
        sandbox.agent_user.clone(),
        sandbox.name.clone(),
        "/usr/bin/env".into(),
        "-i".into(),
        "/bin/sh".into(),
        "-c".into(),
        START_SCRIPT.into(),
        sandbox.workdir.to_string_lossy().into_owned(),
        env_file_path(sandbox).to_string_lossy().into_owned(),
    ];
    argv.extend(agent_argv.iter().cloned());
    argv
}

/// `rctl -a ...`: the attempt's memory and process limits on its jail, run
/// right after `jail -c` (rctl needs `kern.racct.enable=1` in
/// `/boot/loader.conf`; docs/CONFIG.md says so).
pub fn rctl_add_argv(sandbox: &Sandbox, memory: u64, pids: u32) -> Vec<String> {
    vec![
        "rctl".into(),
        "-a".into(),
        format!("jail:{}:memoryuse:deny={memory}", sandbox.name),
        format!("jail:{}:maxproc:deny={pids}", sandbox.name),
    ]
}

/// `rctl -r jail:NAME`: removes the jail's rules once it is gone.
pub fn rctl_remove_argv(sandbox: &Sandbox) -> Vec<String> {
    vec!["rctl".into(), "-r".into(), format!("jail:{}", sandbox.name)]
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
            system: Vec::new(),
            agent_paths: Vec::new(),
            tmp_size: None,
        }
    }

    #[test]
    fn rctl_limits_the_jail_and_is_removed_with_it() {
        let sb = sandbox(NetworkPolicy::None);
        assert_eq!(
            rctl_add_argv(&sb, 4 << 30, 512),
            [
                "rctl",
                "-a",
                "jail:colibri_0190ab_1:memoryuse:deny=4294967296",
                "jail:colibri_0190ab_1:maxproc:deny=512",
            ]
        );
        assert_eq!(
            rctl_remove_argv(&sb),
            ["rctl", "-r", "jail:colibri_0190ab_1"]
        );
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
                "/bin/sh",
                "-c",
                "set -a && . \"$1\" && rm -f -- \"$1\" && set +a && shift && cd \"$0\" && exec \"$@\"",
                "/var/db/colibri-worker/work/t-1",
                "/var/db/colibri-worker/work/t-1/.colibri-env",
                "pi",
                "--mode",
                "json",
                "hi",
            ]
        );
        assert!(
            !got.iter().any(|a| a.contains("HOME=")),
            "no variable on the command line"
        );
        assert_eq!(
            remove_argv(&sandbox(NetworkPolicy::None)),
            vec!["jail", "-r", "colibri_0190ab_1"]
        );
    }

    #[test]
    fn env_file_quotes_every_byte_and_refuses_bad_names() {
        let env = vec![
            ("HOME".to_string(), "/w".to_string()),
            (
                "KEY".to_string(),
                "it's $HOME `x` \"q\"\nline2 \\".to_string(),
            ),
        ];
        assert_eq!(
            env_file(&env).unwrap(),
            "HOME='/w'\nKEY='it'\\''s $HOME `x` \"q\"\nline2 \\'\n"
        );
        for bad in ["", "1A", "A-B", "A B", "A=B"] {
            assert_eq!(
                env_file(&[(bad.to_string(), "v".to_string())]),
                Err(BadEnvName(bad.to_string()))
            );
        }
    }

    /// The start script, run here by the same `env -i /bin/sh -c` the jail
    /// runs (without `jexec`): the agent gets exactly the file's variables,
    /// byte for byte, in the work dir, and the file is gone.
    #[test]
    fn start_script_exports_the_file_deletes_it_and_starts_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox {
            workdir: dir.path().to_path_buf(),
            ..sandbox(NetworkPolicy::None)
        };
        let tricky = "it's $HOME `id` \"q\"\nline2 \\ \u{e9}";
        let env = vec![
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("ANTHROPIC_API_KEY".to_string(), tricky.to_string()),
        ];
        let file = env_file_path(&sandbox);
        std::fs::write(&file, env_file(&env).unwrap()).unwrap();
        let argv = exec_argv(
            &sandbox,
            &[
                "/bin/sh".into(),
                "-c".into(),
                "pwd; printf '%s' \"$ANTHROPIC_API_KEY\"; echo; echo \"${HOME-unset}\"".into(),
            ],
        );
        // Skip `jexec -l -U USER NAME`: run from `/usr/bin/env -i` on.
        let out = std::process::Command::new(&argv[5])
            .args(&argv[6..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let cwd = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(text, format!("{}\n{tricky}\nunset\n", cwd.display()));
        assert!(
            !file.exists(),
            "the env file is deleted before the agent starts"
        );
    }
}
