//! Linux confinement with bubblewrap. The agent sees only what it needs of
//! the host, read-only: the system dirs (`/usr`, `/bin`, `/lib*`, `/etc`
//! less its secrets, `/opt`), its own program and the install trees the
//! worker's `agent_paths` name; its work dir writable; fresh `/dev`, `/proc`
//! (with `/proc/sys` read-only, as bwrap mounts it) and a size-limited
//! `/tmp`. `/root`, `/home`, `/run` (and every unix socket there), `/var`
//! (the board, the nats-server store, the worker's state dir) are simply
//! not there. It runs in its own user, pid, ipc, uts and cgroup namespaces
//! (and network namespace when the policy is `none`), with no capability,
//! no nested user namespace (`--disable-userns`), the seccomp filters of
//! [`super::seccomp`], killed with its parent, in a new session (no
//! terminal injection via TIOCSTI).
//!
//! Order matters: the system dirs first, then their secret covers, then the
//! fresh `/tmp`, the worker's own hidden paths (those in sight), the agent's
//! program and install trees, and the work dir last, so that a work dir
//! under a hidden dir stays visible while nothing else of the worker's is;
//! then the sandbox's root is made read-only.
//!
//! bwrap reports on its set-up through two fds: `--info-fd` gets the
//! sandbox's `child-pid` and reaches end of file once the sandboxed child
//! has exec'd the agent or died setting up; `--json-status-fd` gets the same
//! `child-pid`, then an `exit-code` only if the set-up completed. The
//! supervisor reads both to tell "bwrap could not start the agent" (a spawn
//! failure, retried) from "the agent ran and failed". They and the seccomp
//! programs sit at fixed numbers ([`INFO_FD`], ...) in bwrap's fd table,
//! which the spawn sets up between fork and exec, so the argv is pure.

use std::path::{Path, PathBuf};

use super::Sandbox;
use broker::messages::NetworkPolicy;

/// The bubblewrap program.
pub const BWRAP: &str = "bwrap";

/// bwrap's `--info-fd`, in its own fd table.
pub const INFO_FD: i32 = 3;
/// bwrap's `--json-status-fd`.
pub const JSON_STATUS_FD: i32 = 4;
/// The fds bwrap reads the seccomp programs from (`--add-seccomp-fd`), in
/// the order of [`super::seccomp::programs`].
pub const SECCOMP_FDS: [i32; 2] = [5, 6];
/// How many argv items after `bwrap` name these fds (a benchmark running
/// bwrap without them skips them).
pub const FD_ARGS: usize = 8;

/// One part of the host's system the agent sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemMount {
    /// A host dir shown read-only at the same path.
    ReadOnly(PathBuf),
    /// A host symlink made again in the sandbox (`/bin -> usr/bin`).
    Symlink { path: PathBuf, target: PathBuf },
    /// A secret file under a shown dir, covered by `/dev/null`.
    CoverFile(PathBuf),
    /// A secret dir under a shown dir, covered by an empty tmpfs.
    CoverDir(PathBuf),
}

/// The host dirs an agent sees when they exist.
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/etc",
];

/// Secrets under `/etc` covered when they exist (files or dirs); the ssh
/// host keys are found by name (`/etc/ssh/ssh_host_*_key`).
pub const ETC_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssl/private",
    "/etc/colibri",
    "/etc/nats",
    "/etc/nats-server",
];

/// What of the host an agent sees, found on this host: [`SYSTEM_DIRS`]
/// (dirs shown, symlinks made again), the covers of [`ETC_SECRETS`] and the
/// ssh host keys, and the canonical target of `/etc/resolv.conf` when it
/// points outside (a systemd-resolved stub file under `/run`).
pub fn system_view() -> Vec<SystemMount> {
    let mut view = Vec::new();
    for dir in SYSTEM_DIRS {
        let path = PathBuf::from(dir);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(&path) {
                    view.push(SystemMount::Symlink { path, target });
                }
            }
            Ok(m) if m.is_dir() => view.push(SystemMount::ReadOnly(path)),
            _ => {}
        }
    }
    let mut secrets: Vec<PathBuf> = ETC_SECRETS.iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir("/etc/ssh") {
        let mut keys: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ssh_host_") && n.ends_with("_key"))
            })
            .collect();
        keys.sort();
        secrets.extend(keys);
    }
    for secret in secrets {
        match std::fs::symlink_metadata(&secret) {
            Ok(m) if m.is_dir() => view.push(SystemMount::CoverDir(secret)),
            Ok(m) if m.is_file() => view.push(SystemMount::CoverFile(secret)),
            _ => {}
        }
    }
    if let Ok(resolv) = std::fs::canonicalize("/etc/resolv.conf") {
        if !shown(&resolv, &view) && resolv.is_file() {
            view.push(SystemMount::ReadOnly(resolv));
        }
    }
    view
}

/// True when `path` lies in a dir of `system` shown read-only.
pub fn shown(path: &Path, system: &[SystemMount]) -> bool {
    system.iter().any(|m| match m {
        SystemMount::ReadOnly(root) => path.starts_with(root),
        _ => false,
    })
}

/// The exact bwrap argv running `agent_argv` in `sandbox`.
pub fn argv(sandbox: &Sandbox, agent_argv: &[String]) -> Vec<String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let workdir = s(&sandbox.workdir);
    let mut argv: Vec<String> = vec![
        BWRAP.into(),
        "--info-fd".into(),
        INFO_FD.to_string(),
        "--json-status-fd".into(),
        JSON_STATUS_FD.to_string(),
    ];
    for fd in SECCOMP_FDS {
        argv.extend(["--add-seccomp-fd".into(), fd.to_string()]);
    }
    for mount in &sandbox.system {
        match mount {
            SystemMount::ReadOnly(p) => argv.extend(["--ro-bind".into(), s(p), s(p)]),
            SystemMount::Symlink { path, target } => {
                argv.extend(["--symlink".into(), s(target), s(path)])
            }
            SystemMount::CoverFile(p) => {
                argv.extend(["--ro-bind".into(), "/dev/null".into(), s(p)])
            }
            SystemMount::CoverDir(p) => argv.extend(["--tmpfs".into(), s(p)]),
        }
    }
    argv.extend(["--dev", "/dev", "--proc", "/proc"].map(String::from));
    if let Some(bytes) = sandbox.tmp_size {
        argv.extend(["--size".into(), bytes.to_string()]);
    }
    argv.extend(["--tmpfs".into(), "/tmp".into()]);
    // The worker's secrets and other attempts' data, where they would be in
    // sight; then the work dir, which may lie under a hidden dir.
    for dir in sandbox
        .hide_dirs
        .iter()
        .filter(|d| shown(d, &sandbox.system))
    {
        argv.extend(["--tmpfs".into(), s(dir)]);
    }
    for file in sandbox
        .hide_files
        .iter()
        .filter(|f| shown(f, &sandbox.system))
    {
        argv.extend(["--ro-bind".into(), "/dev/null".into(), s(file)]);
    }
    // The agent's install trees, then its own program when it lies where
    // the sandbox shows nothing or something else (a checkout, /tmp).
    for tree in &sandbox.agent_paths {
        argv.extend(["--ro-bind".into(), s(tree), s(tree)]);
    }
    if let Some(program) = agent_argv
        .first()
        .map(Path::new)
        .filter(|p| p.is_absolute())
    {
        let reachable = shown(program, &sandbox.system)
            && !sandbox.hide_dirs.iter().any(|d| program.starts_with(d))
            || sandbox.agent_paths.iter().any(|t| program.starts_with(t));
        if !reachable {
            argv.extend(["--ro-bind".into(), s(program), s(program)]);
        }
    }
    argv.extend(["--bind".into(), workdir.clone(), workdir.clone()]);
    // The sandbox's own root (a tmpfs holding the mount points, and the
    // dirs bwrap made on the way to the work dir) read-only: nothing is
    // written outside the work dir and /tmp, not even into memory.
    argv.extend(["--remount-ro".into(), "/".into()]);
    argv.extend(
        [
            "--unshare-user",
            "--disable-userns",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
        .map(String::from),
    );
    if sandbox.network == NetworkPolicy::None {
        argv.push("--unshare-net".into());
    }
    argv.extend(
        [
            "--cap-drop",
            "ALL",
            "--die-with-parent",
            "--new-session",
            "--chdir",
        ]
        .map(String::from),
    );
    argv.push(workdir);
    argv.push("--".into());
    argv.extend(agent_argv.iter().cloned());
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(network: NetworkPolicy) -> Sandbox {
        Sandbox {
            workdir: PathBuf::from("/var/db/colibri-worker/work/t-1"),
            network,
            name: "colibri_t_1".into(),
            agent_user: "colibri-agent".into(),
            hide_dirs: Vec::new(),
            hide_files: Vec::new(),
            system: vec![
                SystemMount::ReadOnly("/usr".into()),
                SystemMount::Symlink {
                    path: "/bin".into(),
                    target: "usr/bin".into(),
                },
                SystemMount::ReadOnly("/etc".into()),
                SystemMount::CoverFile("/etc/shadow".into()),
                SystemMount::CoverDir("/etc/ssl/private".into()),
            ],
            agent_paths: Vec::new(),
            tmp_size: Some(1 << 30),
        }
    }

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    const HEAD: &str =
        "bwrap --info-fd 3 --json-status-fd 4 --add-seccomp-fd 5 --add-seccomp-fd 6 \
        --ro-bind /usr /usr --symlink usr/bin /bin --ro-bind /etc /etc \
        --ro-bind /dev/null /etc/shadow --tmpfs /etc/ssl/private \
        --dev /dev --proc /proc --size 1073741824 --tmpfs /tmp";

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
        let mut want = words(&format!(
            "{HEAD} --bind /var/db/colibri-worker/work/t-1 /var/db/colibri-worker/work/t-1 --remount-ro / \
            --unshare-user --disable-userns --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try \
            --unshare-net --cap-drop ALL --die-with-parent --new-session \
            --chdir /var/db/colibri-worker/work/t-1 -- pi --mode json"
        ));
        want.push("hi there".into());
        assert_eq!(got, want);
    }

    #[test]
    fn bwrap_argv_with_host_network() {
        let got = argv(&sandbox(NetworkPolicy::Host), &["true".into()]);
        let want = words(&format!(
            "{HEAD} --bind /var/db/colibri-worker/work/t-1 /var/db/colibri-worker/work/t-1 --remount-ro / \
            --unshare-user --disable-userns --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try \
            --cap-drop ALL --die-with-parent --new-session \
            --chdir /var/db/colibri-worker/work/t-1 -- true"
        ));
        assert_eq!(got, want);
    }

    #[test]
    fn bwrap_argv_hides_the_workers_secrets_in_sight_before_binding_the_work_dir() {
        let mut sb = sandbox(NetworkPolicy::Host);
        sb.hide_dirs = vec![
            PathBuf::from("/var/db/colibri-worker"),
            PathBuf::from("/etc/colibri-state"),
        ];
        sb.hide_files = vec![
            PathBuf::from("/etc/colibri/worker.toml"),
            PathBuf::from("/home/op/debby.nk"),
        ];
        let got = argv(&sb, &["true".into()]);
        // /var and /home are not shown at all: nothing to cover there.
        let want = words(&format!(
            "{HEAD} --tmpfs /etc/colibri-state --ro-bind /dev/null /etc/colibri/worker.toml \
            --bind /var/db/colibri-worker/work/t-1 /var/db/colibri-worker/work/t-1 --remount-ro / \
            --unshare-user --disable-userns --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try \
            --cap-drop ALL --die-with-parent --new-session \
            --chdir /var/db/colibri-worker/work/t-1 -- true"
        ));
        assert_eq!(got, want);
    }

    #[test]
    fn an_agent_program_out_of_sight_is_bound_alone_and_install_trees_whole() {
        let mut sb = sandbox(NetworkPolicy::Host);
        sb.agent_paths = vec![PathBuf::from("/home/op/.npm-global")];
        let got = argv(&sb, &["/tmp/ci/target/debug/agent".into(), "x".into()]);
        let want = words(&format!(
            "{HEAD} --ro-bind /home/op/.npm-global /home/op/.npm-global \
            --ro-bind /tmp/ci/target/debug/agent /tmp/ci/target/debug/agent \
            --bind /var/db/colibri-worker/work/t-1 /var/db/colibri-worker/work/t-1 --remount-ro / \
            --unshare-user --disable-userns --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try \
            --cap-drop ALL --die-with-parent --new-session \
            --chdir /var/db/colibri-worker/work/t-1 -- /tmp/ci/target/debug/agent x"
        ));
        assert_eq!(got, want);
        // In a shown dir or an install tree: not bound again.
        for program in ["/usr/bin/pi", "/home/op/.npm-global/bin/pi"] {
            let got = argv(&sb, &[program.into()]);
            let bound = got
                .windows(2)
                .any(|w| w[0] == "--ro-bind" && w[1] == program);
            assert!(!bound, "{program} bound again");
        }
    }

    #[test]
    fn the_fd_arguments_are_the_first_after_bwrap() {
        let got = argv(&sandbox(NetworkPolicy::Host), &["true".into()]);
        assert_eq!(got[1 + FD_ARGS], "--ro-bind");
        assert!(got[1..=FD_ARGS].iter().any(|a| a == "--add-seccomp-fd"));
    }

    #[test]
    fn this_hosts_view_shows_usr_and_etc_and_covers_shadow() {
        let view = system_view();
        assert!(shown(Path::new("/usr/bin/env"), &view), "{view:?}");
        assert!(shown(Path::new("/etc/passwd"), &view), "{view:?}");
        assert!(!shown(Path::new("/root/x"), &view));
        assert!(!shown(Path::new("/home/x"), &view));
        assert!(!shown(Path::new("/var/lib/x"), &view));
        assert!(!shown(Path::new("/run/docker.sock"), &view));
        if Path::new("/etc/shadow").exists() {
            assert!(view.contains(&SystemMount::CoverFile("/etc/shadow".into())));
        }
    }
}
