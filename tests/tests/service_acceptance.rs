//! The acceptance runbook (docs/ACCEPTANCE-RUNBOOK.md) proven on Linux: the
//! real `colibri-scheduler` driven as a service manager drives it, with
//! Debian's `start-stop-daemon` in the role FreeBSD's rc.d and daemon(8) play
//! on the hub. `check-config` gates the start, as the rc.d `start_precmd`
//! does; the pidfile is created on start and removed on stop; SIGHUP reopens
//! the log, as newsyslog needs; the runbook's `colibri` commands work against
//! the running service. Skipped, with a `skipped:` line, where
//! start-stop-daemon (dpkg) is not installed.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use broker::messages::api::{ListTasksReply, StatusReply};
use harness::{NatsServer, WorkerHandle};

const T: Duration = Duration::from_secs(30);

/// `start-stop-daemon` from PATH, or from the sbin dirs a non-root PATH lacks.
fn start_stop_daemon() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("start-stop-daemon"))
        .find(|p| p.is_file())
}

/// Runs a program (bounded), without the caller's `COLIBRI_*` settings.
async fn run(program: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("COLIBRI_") {
            cmd.env_remove(key);
        }
    }
    let what = format!("{} {}", program.display(), args.join(" "));
    Ok(harness::within(T, &what, cmd.output()).await??)
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Alive and not a zombie (a container's init may not reap the daemon).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            Some(state != "Z")
        })
        .unwrap_or(false)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The scheduler as a service: its config, pidfile and log.
struct Service {
    config: PathBuf,
    pidfile: PathBuf,
    log: PathBuf,
}

impl Service {
    fn in_dir(dir: &Path) -> Service {
        Service {
            config: dir.join("scheduler.toml"),
            pidfile: dir.join("colibri_scheduler.pid"),
            log: dir.join("scheduler.log"),
        }
    }

    /// The rc.d `start_precmd`: `colibri-scheduler check-config`.
    async fn check_config(&self) -> anyhow::Result<()> {
        let config = self.config.to_string_lossy();
        let bin = harness::workspace_bin("colibri-scheduler");
        let out = run(&bin, &["check-config", "--config", &config]).await?;
        anyhow::ensure!(out.status.success(), "check-config failed: {}", text(&out));
        Ok(())
    }

    /// Start: the config check first, then start-stop-daemon only if it passed.
    async fn start(&self, ssd: &Path) -> anyhow::Result<u32> {
        self.check_config().await?;
        let bin = harness::workspace_bin("colibri-scheduler");
        let (pidfile, bin, config) = (
            self.pidfile.to_string_lossy(),
            bin.to_string_lossy(),
            self.config.to_string_lossy(),
        );
        let out = run(
            ssd,
            &[
                "--start",
                "--background",
                "--make-pidfile",
                "--pidfile",
                &pidfile,
                "--exec",
                &bin,
                "--",
                "--config",
                &config,
            ],
        )
        .await?;
        anyhow::ensure!(out.status.success(), "start failed: {}", text(&out));
        harness::eventually(T, "pidfile naming a live process", || async {
            let pid: u32 = read(&self.pidfile).trim().parse().ok()?;
            alive(pid).then_some(pid)
        })
        .await
    }

    async fn stop(&self, ssd: &Path) -> anyhow::Result<()> {
        let pidfile = self.pidfile.to_string_lossy();
        let args = ["--stop", "--pidfile", &pidfile, "--remove-pidfile"];
        let out = run(ssd, &[&args[..], &["--retry", "TERM/10/KILL/5"]].concat()).await?;
        anyhow::ensure!(out.status.success(), "stop failed: {}", text(&out));
        Ok(())
    }
}

/// Kills the daemon if the test fails half-way, so nothing outlives it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// `colibri ARGS` against the test's nats-server.
struct Cli {
    url: String,
}

impl Cli {
    async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let url = ["--nats-url", &self.url];
        let out = run(
            &harness::workspace_bin("colibri"),
            &[args, &url[..]].concat(),
        )
        .await?;
        anyhow::ensure!(
            out.status.success(),
            "colibri {}: {}",
            args.join(" "),
            text(&out)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    async fn queued(&self) -> Option<ListTasksReply> {
        let json = self
            .ok(&["list-tasks", "--status", "queued", "--json"])
            .await
            .ok()?;
        serde_json::from_str(&json).ok()
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill {sig} {pid} failed");
    Ok(())
}

#[tokio::test]
async fn runbook_under_start_stop_daemon() -> anyhow::Result<()> {
    let Some(ssd) = start_stop_daemon() else {
        println!("skipped: start-stop-daemon not found (install dpkg)");
        return Ok(());
    };
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let service = Service::in_dir(dir.path());
    std::fs::write(
        &service.config,
        format!(
            "db = {:?}\n\n[nats]\nurl = [{:?}]\n\n[log]\nlevel = \"info\"\nformat = \"text\"\nfile = {:?}\n",
            dir.path().join("board.db"),
            nats.url(),
            service.log,
        ),
    )?;

    // Start: check-config passes, the pidfile names the running daemon.
    let pid = service.start(&ssd).await?;
    let _guard = KillOnDrop(pid);
    let cmdline = read(Path::new(&format!("/proc/{pid}/cmdline")));
    assert!(
        cmdline.contains("colibri-scheduler"),
        "pid {pid}: {cmdline}"
    );

    // The runbook. A Linux host is online, so the freebsd task's parked
    // reason names the tag it lacks (with no worker at all it would read
    // "no live worker").
    let _linux = WorkerHandle::start(&nats, "linux-host", &["linux"], 1, |_| {}).await?;
    let cli = Cli { url: nats.url() };
    harness::eventually(T, "colibri status shows the Linux host", || async {
        let json = cli.ok(&["status", "--json"]).await.ok()?;
        let status: StatusReply = serde_json::from_str(&json).ok()?;
        status
            .workers
            .iter()
            .any(|w| w.worker.as_str() == "linux-host" && w.online)
            .then_some(())
    })
    .await?;
    let status = cli.ok(&["status"]).await?;
    assert!(status.contains("linux-host"), "{status}");
    let iso = cli.ok(&["create-task", "--title", "iso check"]).await?;
    let iso = iso.trim();
    let queued = cli
        .queued()
        .await
        .ok_or_else(|| anyhow::anyhow!("list-tasks --status queued --json failed"))?;
    assert!(queued.tasks.iter().any(|t| t.task_id.to_string() == iso));
    let intake = cli
        .ok(&[
            "intake-task",
            "--title",
            "iso intake check",
            "--capability",
            "freebsd",
        ])
        .await?;
    let intake = intake.trim();
    let parked = harness::eventually(T, "intake task parked for freebsd", || async {
        let queued = cli.queued().await?;
        let task = queued
            .tasks
            .into_iter()
            .find(|t| t.task_id.to_string() == intake)?;
        let reason = task.parked?.to_string();
        reason.contains("freebsd").then_some(reason)
    })
    .await?;
    let listing = cli.ok(&["list-tasks", "--status", "queued"]).await?;
    assert!(
        listing.contains("iso intake check") && listing.contains(&parked),
        "{listing}"
    );

    // newsyslog: rotate the log away, SIGHUP, a fresh log appears.
    let rotated = dir.path().join("scheduler.log.0");
    std::fs::rename(&service.log, &rotated)?;
    signal(pid, "-HUP")?;
    harness::eventually(T, "log reopened after SIGHUP", || async {
        read(&service.log)
            .contains("log file reopened")
            .then_some(())
    })
    .await?;
    assert!(alive(pid), "SIGHUP killed the scheduler");
    assert!(!read(&rotated).is_empty(), "rotated log is empty");

    // Stop: SIGTERM, a clean exit, the pidfile removed.
    service.stop(&ssd).await?;
    assert!(!alive(pid), "scheduler {pid} still running after stop");
    assert!(!service.pidfile.exists(), "pidfile left behind");
    assert!(
        read(&service.log).contains("SIGTERM"),
        "no clean shutdown logged: {}",
        read(&service.log)
    );
    Ok(())
}

#[tokio::test]
async fn missing_config_fails_start_before_the_daemon() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let service = Service::in_dir(dir.path());
    let config = service.config.to_string_lossy();
    let bin = harness::workspace_bin("colibri-scheduler");
    let out = run(&bin, &["check-config", "--config", &config]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains(&*config),
        "does not name the file: {stderr}"
    );

    // start stops at the config check: start-stop-daemon is never run (a
    // path that does not exist would fail differently) and no pidfile appears.
    let ssd = Path::new("/nonexistent/start-stop-daemon");
    let error = match service.start(ssd).await {
        Ok(pid) => anyhow::bail!("started with a missing config: pid {pid}"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.starts_with("check-config failed"), "{error}");
    assert!(!service.pidfile.exists(), "start was attempted");
    Ok(())
}
