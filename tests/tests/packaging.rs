//! Packaging: the FreeBSD rc.d scripts, newsyslog config, systemd units,
//! sample configs, the hub's nats-server config and the staging scripts.
//!
//! Everything here runs on Linux without privileges: shell files go through
//! `sh -n` and shellcheck, the staging scripts install into temp dirs from a
//! fake BINDIR, the rc.d scripts run against a small rc.subr shim (so the
//! start_precmd and the daemon(8) command line are checked for real), and the
//! units go through `systemd-analyze verify` in a temp root. Tools that are
//! missing are skipped with a `SKIP:` line on stderr, never counted as a pass.
//! Every child process runs under a deadline.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use scheduler::nats_config::{render, HubConfig};

const DEADLINE: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `cmd` with stdin closed, collecting its output; kills it and fails the
/// test when it outlives `deadline`.
fn run_bounded(cmd: &mut Command, deadline: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {deadline:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Finds an executable on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn skip(what: &str, why: &str) {
    eprintln!("SKIP: {what}: {why}");
}

/// Every shell file under packaging/ and scripts/: `*.sh` and files that
/// start with a `#!/bin/sh` line (the rc.d scripts).
fn shell_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "sh")
                || fs::read(&path).is_ok_and(|b| b.starts_with(b"#!/bin/sh"))
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("packaging"), &mut files);
    walk(&repo().join("scripts"), &mut files);
    walk(&repo().join(".ci"), &mut files);
    files.sort();
    files
}

#[test]
fn every_shell_file_is_found_and_parses_with_sh_n() {
    let files = shell_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    for expected in [
        "packaging/freebsd/rc.d/colibri_scheduler",
        "packaging/freebsd/rc.d/colibri_worker",
        "scripts/stage-freebsd.sh",
        "scripts/stage-linux.sh",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    for file in &files {
        let out = run_bounded(Command::new("sh").arg("-n").arg(file), DEADLINE);
        assert!(
            out.status.success(),
            "sh -n {}: {}",
            file.display(),
            text(&out.stderr)
        );
    }
}

#[test]
fn every_shell_file_passes_shellcheck() {
    let Some(shellcheck) = which("shellcheck") else {
        skip(
            "shellcheck",
            "not installed (apt-get install -y shellcheck, or scripts/setup.sh)",
        );
        return;
    };
    let mut failures = Vec::new();
    for file in shell_files() {
        let relative = file.strip_prefix(repo()).unwrap().display().to_string();
        let mut cmd = Command::new(&shellcheck);
        cmd.arg("--shell=sh");
        let out = run_bounded(cmd.arg(&file), DEADLINE);
        if !out.status.success() {
            failures.push(format!(
                "{relative}:\n{}{}",
                text(&out.stdout),
                text(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "shellcheck:\n{}", failures.join("\n"));
}

// --- staging -------------------------------------------------------------

/// A BINDIR with the three binaries as empty executable files.
fn fake_bindir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["colibri-scheduler", "colibri-worker", "colibri"] {
        let path = dir.path().join(name);
        fs::write(&path, b"").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// Every path under `root` (relative) with its permission bits.
fn tree(root: &Path) -> BTreeSet<(String, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<(String, u32)>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            out.insert((relative, meta.permissions().mode() & 0o7777));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn stage(script: &str, root: &Path, bindir: &Path) -> Output {
    run_bounded(
        Command::new("sh")
            .arg(repo().join("scripts").join(script))
            .arg(root)
            .arg(bindir),
        DEADLINE,
    )
}

fn expected_tree(entries: &[(&str, u32)]) -> BTreeSet<(String, u32)> {
    entries.iter().map(|(p, m)| (p.to_string(), *m)).collect()
}

#[test]
fn stage_freebsd_installs_exact_tree_and_prints_steps() {
    let bindir = fake_bindir();
    let image = tempfile::tempdir().unwrap();
    let root = image.path().join("root");
    let out = stage("stage-freebsd.sh", &root, bindir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));

    let expected = expected_tree(&[
        ("usr", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
        ("usr/local/bin/colibri", 0o755),
        ("usr/local/bin/colibri-scheduler", 0o755),
        ("usr/local/bin/colibri-worker", 0o755),
        ("usr/local/etc", 0o755),
        ("usr/local/etc/colibri", 0o755),
        ("usr/local/etc/colibri/nats-server.conf", 0o644),
        ("usr/local/etc/colibri/rc.conf.sample", 0o644),
        ("usr/local/etc/colibri/scheduler.toml.sample", 0o644),
        ("usr/local/etc/colibri/worker.toml.sample", 0o644),
        ("usr/local/etc/newsyslog.conf.d", 0o755),
        ("usr/local/etc/newsyslog.conf.d/colibri.conf", 0o644),
        ("usr/local/etc/rc.d", 0o755),
        ("usr/local/etc/rc.d/colibri_scheduler", 0o755),
        ("usr/local/etc/rc.d/colibri_worker", 0o755),
        ("var", 0o755),
        ("var/db", 0o755),
        ("var/db/colibri", 0o750),
        ("var/db/colibri-worker", 0o750),
        ("var/log", 0o755),
        ("var/log/colibri", 0o750),
    ]);
    assert_eq!(tree(&root), expected);

    let pkg = repo().join("packaging/freebsd");
    for (source, installed) in [
        (
            "rc.d/colibri_scheduler",
            "usr/local/etc/rc.d/colibri_scheduler",
        ),
        ("rc.d/colibri_worker", "usr/local/etc/rc.d/colibri_worker"),
        (
            "newsyslog.conf.d/colibri.conf",
            "usr/local/etc/newsyslog.conf.d/colibri.conf",
        ),
        ("nats-server.conf", "usr/local/etc/colibri/nats-server.conf"),
        (
            "scheduler.toml",
            "usr/local/etc/colibri/scheduler.toml.sample",
        ),
        ("worker.toml", "usr/local/etc/colibri/worker.toml.sample"),
        ("rc.conf.sample", "usr/local/etc/colibri/rc.conf.sample"),
    ] {
        assert_eq!(
            read(pkg.join(source)),
            read(root.join(installed)),
            "{installed}"
        );
    }

    // Not the live system: the user steps are printed, not run.
    let stdout = text(&out.stdout);
    for line in [
        "  pw groupadd colibri\n",
        "  pw useradd colibri -g colibri -d /var/db/colibri -s /usr/sbin/nologin -c \"Colibri scheduler\"\n",
        "  pw useradd colibri-agent -g colibri-agent -d /nonexistent -s /usr/sbin/nologin -c \"Colibri agents\"\n",
        "  sysrc colibri_scheduler_enable=YES",
        "  sysrc colibri_worker_enable=YES",
        "  service colibri_scheduler start\n",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }

    // A second run over the same root succeeds and changes nothing.
    let again = stage("stage-freebsd.sh", &root, bindir.path());
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(tree(&root), expected);
}

#[test]
fn stage_linux_installs_exact_tree_and_prints_steps() {
    let bindir = fake_bindir();
    let image = tempfile::tempdir().unwrap();
    let root = image.path().join("root");
    let out = stage("stage-linux.sh", &root, bindir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));

    let expected = expected_tree(&[
        ("etc", 0o755),
        ("etc/colibri", 0o755),
        ("etc/colibri/nats-server.conf", 0o644),
        ("etc/colibri/scheduler.toml.sample", 0o644),
        ("etc/colibri/worker.toml.sample", 0o644),
        ("etc/systemd", 0o755),
        ("etc/systemd/system", 0o755),
        ("etc/systemd/system/colibri-scheduler.service", 0o644),
        ("etc/systemd/system/colibri-worker.service", 0o644),
        ("etc/systemd/system/nats-server.service", 0o644),
        ("usr", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
        ("usr/local/bin/colibri", 0o755),
        ("usr/local/bin/colibri-scheduler", 0o755),
        ("usr/local/bin/colibri-worker", 0o755),
    ]);
    assert_eq!(tree(&root), expected);

    let pkg = repo().join("packaging/systemd");
    for (source, installed) in [
        (
            "colibri-scheduler.service",
            "etc/systemd/system/colibri-scheduler.service",
        ),
        (
            "colibri-worker.service",
            "etc/systemd/system/colibri-worker.service",
        ),
        (
            "nats-server.service",
            "etc/systemd/system/nats-server.service",
        ),
        ("nats-server.conf", "etc/colibri/nats-server.conf"),
        ("scheduler.toml", "etc/colibri/scheduler.toml.sample"),
        ("worker.toml", "etc/colibri/worker.toml.sample"),
    ] {
        assert_eq!(
            read(pkg.join(source)),
            read(root.join(installed)),
            "{installed}"
        );
    }

    let stdout = text(&out.stdout);
    for line in [
        "  useradd --system --gid colibri --home-dir /var/lib/colibri --no-create-home --shell /usr/sbin/nologin colibri\n",
        "  useradd --system --gid colibri-agent --home-dir /var/lib/colibri-worker --no-create-home --shell /usr/sbin/nologin colibri-agent\n",
        "  systemctl daemon-reload\n",
        "  systemctl enable --now nats-server colibri-scheduler",
        "  systemctl enable --now colibri-worker",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn staging_without_binaries_or_arguments_fails_cleanly() {
    let image = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    for script in ["stage-freebsd.sh", "stage-linux.sh"] {
        let out = stage(script, &image.path().join("root"), empty.path());
        assert_eq!(out.status.code(), Some(1), "{script}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(
                "colibri-scheduler not found: build with cargo build --release, or give BINDIR"
            ),
            "{script}: {stderr}"
        );
        assert!(
            !image.path().join("root").exists(),
            "{script} wrote before checking"
        );

        let out = run_bounded(
            Command::new("sh").arg(repo().join("scripts").join(script)),
            DEADLINE,
        );
        assert_eq!(out.status.code(), Some(2), "{script} without ROOT");
        assert!(text(&out.stderr).contains("usage:"), "{script}");
    }
}

// --- FreeBSD rc.d ----------------------------------------------------------

fn rc_script(name: &str) -> String {
    read(repo().join("packaging/freebsd/rc.d").join(name))
}

/// Index of the line equal to `line`; fails when it is not there exactly once.
fn line_index(text: &str, line: &str) -> usize {
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == line)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "expected exactly one line {line:?}");
    hits[0]
}

#[test]
fn rc_scripts_have_the_rc_d_idioms_and_daemon_flags() {
    let scheduler = rc_script("colibri_scheduler");
    let load = line_index(&scheduler, "load_rc_config \"$name\"");
    let enable = line_index(&scheduler, ": ${colibri_scheduler_enable:=\"NO\"}");
    assert!(
        load < enable,
        "the NO default must come after load_rc_config"
    );
    line_index(
        &scheduler,
        "command_args=\"-P ${pidfile} -p ${colibri_scheduler_child_pidfile} -R ${colibri_scheduler_restart_delay} -t ${name} -H -o ${colibri_scheduler_logfile} ${colibri_scheduler_binary} --config ${colibri_scheduler_config} ${colibri_scheduler_args}\"",
    );
    line_index(
        &scheduler,
        "pidfile=\"${colibri_scheduler_rundir}/scheduler.pid\"",
    );
    line_index(&scheduler, ": ${colibri_scheduler_user:=\"colibri\"}");
    line_index(&scheduler, "required_files=\"${colibri_scheduler_config}\"");
    line_index(&scheduler, "start_precmd=\"colibri_scheduler_precmd\"");
    line_index(&scheduler, "procname=\"/usr/sbin/daemon\"");
    line_index(&scheduler, "command=\"/usr/sbin/daemon\"");
    line_index(&scheduler, "# KEYWORD: shutdown");

    let worker = rc_script("colibri_worker");
    let load = line_index(&worker, "load_rc_config \"$name\"");
    let enable = line_index(&worker, ": ${colibri_worker_enable:=\"NO\"}");
    assert!(
        load < enable,
        "the NO default must come after load_rc_config"
    );
    line_index(
        &worker,
        "command_args=\"-P ${pidfile} -p ${colibri_worker_child_pidfile} -R ${colibri_worker_restart_delay} -t ${name} -H -o ${colibri_worker_logfile} ${colibri_worker_binary} --config ${colibri_worker_config} ${colibri_worker_args}\"",
    );
    line_index(
        &worker,
        "pidfile=\"${colibri_worker_rundir}/colibri_worker.pid\"",
    );
    line_index(&worker, "required_files=\"${colibri_worker_config}\"");
    line_index(&worker, "start_precmd=\"colibri_worker_precmd\"");
    // The worker stays root: no ${name}_user, no daemon -u.
    assert!(!worker.contains("colibri_worker_user"));
    assert!(!worker.contains(" -u "));
}

#[test]
fn newsyslog_signals_the_supervisor_pidfiles_with_sighup() {
    let conf = read(repo().join("packaging/freebsd/newsyslog.conf.d/colibri.conf"));
    let entries: Vec<Vec<&str>> = conf
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        entries,
        vec![
            vec![
                "/var/log/colibri/scheduler.log",
                "colibri:colibri",
                "640",
                "10",
                "1024",
                "*",
                "JC",
                "/var/run/colibri/scheduler.pid",
                "1",
            ],
            vec![
                "/var/log/colibri/worker.log",
                "root:wheel",
                "640",
                "10",
                "1024",
                "*",
                "JC",
                "/var/run/colibri_worker.pid",
                "1",
            ],
        ]
    );
    // The pidfiles are the supervisors' (-P) defaults of the rc.d scripts.
    assert!(rc_script("colibri_scheduler")
        .contains(": ${colibri_scheduler_rundir:=\"/var/run/colibri\"}"));
    assert!(rc_script("colibri_worker").contains(": ${colibri_worker_rundir:=\"/var/run\"}"));
    assert!(rc_script("colibri_scheduler")
        .contains(": ${colibri_scheduler_logfile:=\"/var/log/colibri/scheduler.log\"}"));
    assert!(rc_script("colibri_worker")
        .contains(": ${colibri_worker_logfile:=\"/var/log/colibri/worker.log\"}"));
}

/// Just enough of FreeBSD's rc.subr to drive a script's start path: rc.conf
/// from $SHIM_RC_CONF, the enable check, required_files, the start_precmd,
/// then the daemon(8) command line printed instead of run. `precmd` runs the
/// start_precmd alone (past required_files).
const RC_SUBR_SHIM: &str = r#"
load_rc_config() { if [ -n "${SHIM_RC_CONF:-}" ]; then . "$SHIM_RC_CONF"; fi; }
warn() { echo "$name: WARNING: $*" >&2; }
err() { _code=$1; shift; echo "$name: ERROR: $*" >&2; exit "$_code"; }
checkyesno() {
	eval "_value=\${$1}"
	case $_value in
	[Yy][Ee][Ss] | [Tt][Rr][Uu][Ee] | [Oo][Nn] | 1) return 0 ;;
	*) return 1 ;;
	esac
}
run_rc_command() {
	case $1 in
	start)
		if ! checkyesno "$rcvar"; then
			echo "Cannot 'start' $name. Set $rcvar to YES in /etc/rc.conf or use 'onestart' instead of 'start'." >&2
			return 0
		fi
		for _f in $required_files; do
			if [ ! -r "$_f" ]; then
				warn "$_f is not readable."
				warn "failed precmd routine for $name"
				return 1
			fi
		done
		if ! eval "$start_precmd"; then
			warn "failed precmd routine for $name"
			return 1
		fi
		echo "Starting $name."
		# shellcheck disable=SC2086
		echo $command $command_args
		;;
	precmd)
		eval "$start_precmd"
		;;
	*)
		echo "shim: $1 not simulated" >&2
		return 3
		;;
	esac
}
"#;

/// A FreeBSD-less sandbox for one rc.d script: the script with rc.subr
/// replaced by the shim, an rc.conf pointing every path into a temp dir, and
/// a fake binary whose `check-config` accepts a file with a `db =` or
/// `worker_id =` line and otherwise reports a field error and exits 1.
struct RcSandbox {
    dir: tempfile::TempDir,
    script: PathBuf,
    name: &'static str,
}

impl RcSandbox {
    fn new(name: &'static str, binary: &str) -> RcSandbox {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("rc.subr");
        fs::write(&shim, RC_SUBR_SHIM).unwrap();
        let original = rc_script(name);
        line_index(&original, ". /etc/rc.subr");
        let script = dir.path().join(name);
        fs::write(
            &script,
            original.replace(". /etc/rc.subr\n", &format!(". {}\n", shim.display())),
        )
        .unwrap();

        let bin = dir.path().join(binary);
        fs::write(
            &bin,
            "#!/bin/sh\n\
             [ \"$1\" = check-config ] && [ \"$2\" = --config ] || { echo \"fake: bad argv: $*\" >&2; exit 2; }\n\
             if grep -q -e '^db = ' -e '^worker_id = ' \"$3\"; then exit 0; fi\n\
             echo \"$3: db: missing field\" >&2\n\
             exit 1\n",
        )
        .unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        RcSandbox { dir, script, name }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes the shim's rc.conf: `enable`, and every path into the sandbox.
    fn rc_conf(&self, enable: bool, binary: &str) {
        let me = text(&run_bounded(Command::new("id").arg("-un"), DEADLINE).stdout);
        let group = text(&run_bounded(Command::new("id").arg("-gn"), DEADLINE).stdout);
        let n = self.name;
        let mut conf = String::new();
        if enable {
            conf.push_str(&format!("{n}_enable=\"YES\"\n"));
        }
        conf.push_str(&format!(
            "{n}_config=\"{}\"\n{n}_binary=\"{}\"\n{n}_rundir=\"{}\"\n{n}_logfile=\"{}\"\n",
            self.path("etc/config.toml").display(),
            self.path(binary).display(),
            self.path("run").display(),
            self.path("log/daemon.log").display(),
        ));
        if n == "colibri_scheduler" {
            conf.push_str(&format!(
                "{n}_dbdir=\"{}\"\n{n}_user=\"{}\"\n{n}_group=\"{}\"\n",
                self.path("db").display(),
                me.trim(),
                group.trim()
            ));
        }
        fs::write(self.path("rc.conf"), conf).unwrap();
    }

    fn write_config(&self, content: &str) {
        fs::create_dir_all(self.path("etc")).unwrap();
        fs::write(self.path("etc/config.toml"), content).unwrap();
    }

    fn run(&self, arg: &str) -> Output {
        run_bounded(
            Command::new("sh")
                .arg(&self.script)
                .arg(arg)
                .env("SHIM_RC_CONF", self.path("rc.conf")),
            DEADLINE,
        )
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn rc_scheduler_starts_daemon_with_exact_argv_when_config_is_valid() {
    let sb = RcSandbox::new("colibri_scheduler", "colibri-scheduler");
    sb.rc_conf(true, "colibri-scheduler");
    sb.write_config("db = \"/var/db/colibri/board.db\"\n");
    let out = sb.run("start");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let p = |r: &str| sb.path(r).display().to_string();
    assert_eq!(
        text(&out.stdout),
        format!(
            "Starting colibri_scheduler.\n/usr/sbin/daemon -P {run}/scheduler.pid -p {run}/scheduler.child.pid -R 5 -t colibri_scheduler -H -o {log} {bin} --config {cfg}\n",
            run = p("run"),
            log = p("log/daemon.log"),
            bin = p("colibri-scheduler"),
            cfg = p("etc/config.toml"),
        )
    );
    // The precmd made the run, db and log directories, private to the user.
    for dir in ["run", "db", "log"] {
        assert_eq!(mode(&sb.path(dir)), 0o750, "{dir}");
    }
}

#[test]
fn rc_worker_starts_daemon_as_root_with_exact_argv() {
    let sb = RcSandbox::new("colibri_worker", "colibri-worker");
    sb.rc_conf(true, "colibri-worker");
    sb.write_config("worker_id = \"hub\"\n");
    let out = sb.run("start");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let p = |r: &str| sb.path(r).display().to_string();
    assert_eq!(
        text(&out.stdout),
        format!(
            "Starting colibri_worker.\n/usr/sbin/daemon -P {run}/colibri_worker.pid -p {run}/colibri_worker.child.pid -R 5 -t colibri_worker -H -o {log} {bin} --config {cfg}\n",
            run = p("run"),
            log = p("log/daemon.log"),
            bin = p("colibri-worker"),
            cfg = p("etc/config.toml"),
        )
    );
    assert_eq!(mode(&sb.path("log")), 0o750);
}

#[test]
fn rc_start_is_refused_unless_enabled_in_rc_conf() {
    for (name, binary) in [
        ("colibri_scheduler", "colibri-scheduler"),
        ("colibri_worker", "colibri-worker"),
    ] {
        let sb = RcSandbox::new(name, binary);
        sb.rc_conf(false, binary);
        sb.write_config("db = \"x\"\nworker_id = \"x\"\n");
        let out = sb.run("start");
        assert_eq!(
            text(&out.stdout),
            "",
            "{name} started without {name}_enable"
        );
        assert!(text(&out.stderr).contains(&format!("Set {name}_enable to YES")));
    }
}

#[test]
fn rc_start_fails_with_exit_1_and_a_clear_message_when_config_is_missing() {
    for (name, binary) in [
        ("colibri_scheduler", "colibri-scheduler"),
        ("colibri_worker", "colibri-worker"),
    ] {
        let sb = RcSandbox::new(name, binary);
        sb.rc_conf(true, binary);
        let config = sb.path("etc/config.toml").display().to_string();

        // Through rc.subr: required_files stops it.
        let out = sb.run("start");
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert_eq!(text(&out.stdout), "", "{name}: daemon(8) must not start");
        assert!(text(&out.stderr).contains(&format!("{config} is not readable.")));

        // The precmd on its own says what to do.
        let out = sb.run("precmd");
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert_eq!(
            text(&out.stderr),
            format!(
                "{name}: WARNING: config {config} is missing: copy {config}.sample and edit it\n"
            )
        );
        assert!(
            !sb.path("run").exists(),
            "{name}: precmd went on after the failure"
        );
    }
}

#[test]
fn rc_start_fails_with_exit_1_and_the_binarys_findings_when_config_is_invalid() {
    for (name, binary) in [
        ("colibri_scheduler", "colibri-scheduler"),
        ("colibri_worker", "colibri-worker"),
    ] {
        let sb = RcSandbox::new(name, binary);
        sb.rc_conf(true, binary);
        sb.write_config("slots = \"many\"\n");
        let config = sb.path("etc/config.toml").display().to_string();
        let out = sb.run("start");
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert_eq!(text(&out.stdout), "", "{name}: daemon(8) must not start");
        assert_eq!(
            text(&out.stderr),
            format!(
                "{name}: WARNING: config {config} is invalid; not starting:\n\
                 {config}: db: missing field\n\
                 {name}: WARNING: failed precmd routine for {name}\n"
            )
        );
    }
}

// --- nats-server hub config -------------------------------------------------

#[test]
fn shipped_hub_configs_equal_the_generator_output() {
    let freebsd = read(repo().join("packaging/freebsd/nats-server.conf"));
    let linux = read(repo().join("packaging/systemd/nats-server.conf"));
    assert_eq!(freebsd, render(&HubConfig::freebsd()).unwrap());
    assert_eq!(linux, render(&HubConfig::linux()).unwrap());
    for conf in [&freebsd, &linux] {
        line_index(conf, "include \"authorization.conf\"");
        line_index(conf, "  sync_interval: always");
        line_index(conf, "host: \"127.0.0.1\"");
        line_index(conf, "port: 4222");
        assert!(!conf.contains("0.0.0.0\""));
    }
    line_index(&freebsd, "  store_dir: \"/var/db/nats\"");
    line_index(&linux, "  store_dir: \"/var/lib/nats\"");
}

/// nats-server as the harness finds it, if any.
fn nats_server() -> Option<PathBuf> {
    harness::nats::nats_server_binary().ok()
}

#[test]
fn nats_server_accepts_the_shipped_hub_configs() {
    let Some(nats) = nats_server() else {
        skip("nats-server -t", "nats-server not found (scripts/setup.sh)");
        return;
    };
    for (conf, store) in [
        ("packaging/freebsd/nats-server.conf", "/var/db/nats"),
        ("packaging/systemd/nats-server.conf", "/var/lib/nats"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let text_in = read(repo().join(conf));
        let local = text_in.replace(
            &format!("store_dir: \"{store}\""),
            &format!("store_dir: \"{}\"", dir.path().join("js").display()),
        );
        assert_ne!(local, text_in, "{conf}: store_dir not found");
        let file = dir.path().join("nats-server.conf");
        fs::write(&file, local).unwrap();
        // Authenticated by default (issue 13): without the identities'
        // authorization.conf next to it, nats-server refuses to start.
        let out = run_bounded(Command::new(&nats).arg("-t").arg("-c").arg(&file), DEADLINE);
        assert!(!out.status.success(), "{conf}: started without identities");
        assert!(
            text(&out.stderr).contains("authorization.conf"),
            "{conf}: {}",
            text(&out.stderr)
        );
        fs::write(dir.path().join("authorization.conf"), hub_authorization()).unwrap();
        let out = run_bounded(Command::new(&nats).arg("-t").arg("-c").arg(&file), DEADLINE);
        assert!(
            out.status.success(),
            "{conf}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// What `colibri admin add-user scheduler hub` writes as authorization.conf.
fn hub_authorization() -> String {
    use broker::identity::{self, render, Entry, Registry, Role};
    let mut reg = Registry::default();
    let id = identity::generate().unwrap();
    let entry = Entry {
        role: Role::Scheduler,
        public_key: id.public_key().to_string(),
        capabilities: broker::TagSet::new(),
    };
    reg.add(identity::parse_name("hub").unwrap(), entry)
        .unwrap();
    render::authorization_block(&reg)
}

// --- sample configs ------------------------------------------------------------

/// Keys (`section.key`) of a TOML text, commented-out ones included, read line
/// by line: enough for the flat samples and the blocks of docs/CONFIG.md.
fn toml_keys(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut active = BTreeSet::new();
    let mut commented = BTreeSet::new();
    let mut section = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix('[') {
            if let Some(end) = rest.find(']') {
                section = rest[..end].to_string();
            }
            continue;
        }
        let (is_comment, body) = match line.strip_prefix('#') {
            Some(body) => (true, body.trim()),
            None => (false, line),
        };
        let Some((key, _)) = body.split_once(" = ") else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let full = if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        };
        if is_comment {
            commented.insert(full);
        } else {
            active.insert(full);
        }
    }
    (active, commented)
}

/// The `scheduler.toml` and `worker.toml` blocks of docs/CONFIG.md.
fn documented_schema() -> (String, String) {
    let doc = read(repo().join("docs/CONFIG.md"));
    let blocks: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or(""))
        .collect();
    assert_eq!(blocks.len(), 2, "docs/CONFIG.md has two toml blocks");
    (blocks[0].to_string(), blocks[1].to_string())
}

#[test]
fn sample_configs_use_exactly_the_documented_keys() {
    let (scheduler_doc, worker_doc) = documented_schema();
    let (sched_active, sched_commented) = toml_keys(&scheduler_doc);
    // worker.toml's [nats] and [log] are "as above".
    let (mut worker_active, mut worker_commented) = toml_keys(&worker_doc);
    for key in sched_active
        .iter()
        .filter(|k| k.starts_with("nats.") || k.starts_with("log."))
    {
        worker_active.insert(key.clone());
    }
    for key in sched_commented
        .iter()
        .filter(|k| k.starts_with("nats.") || k.starts_with("log."))
    {
        worker_commented.insert(key.clone());
    }

    for platform in ["freebsd", "systemd"] {
        for (file, doc_active, doc_commented) in [
            ("scheduler.toml", &sched_active, &sched_commented),
            ("worker.toml", &worker_active, &worker_commented),
        ] {
            let sample = read(repo().join("packaging").join(platform).join(file));
            let (active, commented) = toml_keys(&sample);
            let known: BTreeSet<String> = doc_active.union(doc_commented).cloned().collect();
            let unknown: Vec<&String> = active
                .union(&commented)
                .filter(|k| !known.contains(*k))
                .collect();
            assert!(
                unknown.is_empty(),
                "{platform}/{file}: undocumented keys {unknown:?}"
            );
            let missing: Vec<&String> = doc_active.difference(&active).collect();
            assert!(
                missing.is_empty(),
                "{platform}/{file}: documented keys missing {missing:?}"
            );
        }
    }
}

#[test]
fn sample_configs_use_the_platform_paths_and_confinement() {
    let pkg = repo().join("packaging");
    let fb_sched = read(pkg.join("freebsd/scheduler.toml"));
    let fb_worker = read(pkg.join("freebsd/worker.toml"));
    let lx_sched = read(pkg.join("systemd/scheduler.toml"));
    let lx_worker = read(pkg.join("systemd/worker.toml"));
    line_index(&fb_sched, "db = \"/var/db/colibri/board.db\"");
    line_index(&fb_worker, "confinement = \"jail\"");
    line_index(&fb_worker, "state_dir = \"/var/db/colibri-worker\"");
    line_index(&lx_sched, "db = \"/var/lib/colibri/board.db\"");
    line_index(&lx_worker, "confinement = \"bwrap\"");
    line_index(&lx_worker, "state_dir = \"/var/lib/colibri-worker\"");
    for text in [&fb_sched, &fb_worker] {
        assert!(!text.contains("/etc/colibri/") || text.contains("/usr/local/etc/colibri/"));
        assert!(!text.contains("/var/lib/"));
    }
    for text in [&lx_sched, &lx_worker] {
        assert!(!text.contains("/usr/local/etc/"));
        assert!(!text.contains("/var/db/"));
    }
}

// --- systemd -----------------------------------------------------------------

fn unit(name: &str) -> String {
    read(repo().join("packaging/systemd").join(name))
}

#[test]
fn units_have_notify_reload_and_no_restart_on_config_errors() {
    for name in ["colibri-scheduler.service", "colibri-worker.service"] {
        let u = unit(name);
        for line in [
            "Type=notify",
            "NotifyAccess=main",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            "RestartPreventExitStatus=1 2",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=",
            "SystemCallFilter=@system-service",
        ]
        .iter()
        .filter(|l| !(name == "colibri-worker.service" && l.starts_with("SystemCallFilter")))
        {
            line_index(&u, line);
        }
        assert!(
            !u.lines().any(|l| l.starts_with("ExecStartPre=")),
            "{name}: a failing ExecStartPre would be restarted"
        );
    }
    let scheduler = unit("colibri-scheduler.service");
    line_index(&scheduler, "User=colibri");
    line_index(
        &scheduler,
        "ExecStart=/usr/local/bin/colibri-scheduler --config /etc/colibri/scheduler.toml",
    );
    line_index(
        &scheduler,
        "ReadWritePaths=/var/lib/colibri /var/log/colibri",
    );
    line_index(&scheduler, "RestrictNamespaces=yes");
    line_index(
        &scheduler,
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    );

    let worker = unit("colibri-worker.service");
    line_index(&worker, "User=colibri-agent");
    line_index(
        &worker,
        "ExecStart=/usr/local/bin/colibri-worker --config /etc/colibri/worker.toml",
    );
    line_index(&worker, "RestrictNamespaces=user mnt pid net ipc uts");
    line_index(
        &worker,
        "SystemCallFilter=@system-service @mount sethostname",
    );
    line_index(
        &worker,
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    );
    line_index(&worker, "KillMode=mixed");
    // Settings that would break bwrap or the agents' JIT (see the unit's header).
    for absent in [
        "ProtectKernelTunables=",
        "ProtectKernelLogs=",
        "ProtectProc=",
        "ProcSubset=",
        "ProtectHostname=",
        "MemoryDenyWriteExecute=",
    ] {
        assert!(
            !worker.lines().any(|l| l.starts_with(absent)),
            "colibri-worker.service sets {absent}"
        );
    }

    let nats = unit("nats-server.service");
    line_index(
        &nats,
        "ExecStart=/usr/local/bin/nats-server -c /etc/colibri/nats-server.conf",
    );
    line_index(&nats, "StateDirectory=nats");
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = which("systemd-analyze") else {
        skip("systemd-analyze verify", "systemd-analyze not installed");
        return;
    };
    let Ok(system_units) =
        fs::read_dir("/lib/systemd/system").or_else(|_| fs::read_dir("/usr/lib/systemd/system"))
    else {
        skip(
            "systemd-analyze verify",
            "no /lib/systemd/system to build a root from",
        );
        return;
    };
    // A root with the host's units (for sysinit.target and friends), the
    // units under test, and stand-ins for the binaries they execute.
    let root = tempfile::tempdir().unwrap();
    let units_dir = root.path().join("usr/lib/systemd/system");
    fs::create_dir_all(&units_dir).unwrap();
    for entry in system_units.flatten() {
        let path = entry.path();
        if path.is_file() {
            let _ = fs::copy(&path, units_dir.join(entry.file_name()));
        }
    }
    for exe in [
        "bin/kill",
        "usr/local/bin/colibri-scheduler",
        "usr/local/bin/colibri-worker",
        "usr/local/bin/nats-server",
    ] {
        let path = root.path().join(exe);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let system = root.path().join("etc/systemd/system");
    fs::create_dir_all(&system).unwrap();
    let names = [
        "colibri-scheduler.service",
        "colibri-worker.service",
        "nats-server.service",
    ];
    for name in names {
        fs::copy(
            repo().join("packaging/systemd").join(name),
            system.join(name),
        )
        .unwrap();
    }
    let out = run_bounded(
        Command::new(analyze)
            .arg("verify")
            .arg("--man=no")
            .arg(format!("--root={}", root.path().display()))
            .args(names.iter().map(|n| system.join(n))),
        DEADLINE,
    );
    // verify exits 0 on some warnings (an unknown key, a bad value), so any
    // output at all is a failure.
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && all.trim().is_empty(),
        "systemd-analyze verify:\n{all}"
    );
}

/// The scheduler's precmd runs `check-config` as the service user (su -m), so
/// a config only root can read fails at start instead of in a restart loop.
#[test]
fn rc_scheduler_checks_config_as_the_service_user() {
    let id = |arg: &str| text(&run_bounded(Command::new("id").arg(arg), DEADLINE).stdout);
    if id("-u").trim() != "0" || which("su").is_none() {
        skip("rc.d check-config as another user", "needs root and su");
        return;
    }
    let nobody = run_bounded(Command::new("id").arg("-gn").arg("nobody"), DEADLINE);
    if !nobody.status.success() {
        skip("rc.d check-config as another user", "no user nobody");
        return;
    }
    let sb = RcSandbox::new("colibri_scheduler", "colibri-scheduler");
    fs::set_permissions(sb.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    sb.rc_conf(true, "colibri-scheduler");
    let mut conf = read(sb.path("rc.conf"));
    conf.push_str(&format!(
        "colibri_scheduler_user=\"nobody\"\ncolibri_scheduler_group=\"{}\"\n",
        text(&nobody.stdout).trim()
    ));
    fs::write(sb.path("rc.conf"), conf).unwrap();
    sb.write_config("db = \"/var/db/colibri/board.db\"\n");
    fs::set_permissions(sb.path("etc"), fs::Permissions::from_mode(0o755)).unwrap();

    // Readable by nobody: starts.
    fs::set_permissions(
        sb.path("etc/config.toml"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let start = || {
        run_bounded(
            Command::new("sh")
                .arg(&sb.script)
                .arg("start")
                .env("SHIM_RC_CONF", sb.path("rc.conf"))
                .env("SHELL", "/bin/sh"),
            DEADLINE,
        )
    };
    let out = start();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("/usr/sbin/daemon -P "));

    // Readable by root only: the check, run as nobody, fails the start.
    fs::set_permissions(
        sb.path("etc/config.toml"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = start();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("is invalid; not starting:"),
        "{}",
        text(&out.stderr)
    );
}

/// The shipped samples pass the daemons' own `check-config`, when the
/// binaries are built (target/<profile>/; `cargo build --bins` first, since
/// this test does not build them).
#[test]
fn sample_configs_pass_the_daemons_check_config() {
    let mut cases = vec![
        ("colibri-scheduler", "packaging/freebsd/scheduler.toml"),
        ("colibri-scheduler", "packaging/systemd/scheduler.toml"),
        ("colibri-worker", "packaging/systemd/worker.toml"),
    ];
    // confinement = "jail" is only valid on FreeBSD.
    if cfg!(target_os = "freebsd") {
        cases.push(("colibri-worker", "packaging/freebsd/worker.toml"));
    }
    for (binary, sample) in cases {
        let bin = harness::workspace_bin(binary);
        if !bin.is_file() {
            skip(
                &format!("{binary} check-config {sample}"),
                &format!("{} not built (cargo build --bins)", bin.display()),
            );
            continue;
        }
        let out = run_bounded(
            Command::new(&bin)
                .arg("check-config")
                .arg("--config")
                .arg(repo().join(sample))
                .env_remove("COLIBRI_CONFIG"),
            DEADLINE,
        );
        assert!(
            out.status.success(),
            "{binary} check-config {sample}:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}
