//! The service lifecycle the rc.d scripts and systemd units rely on, proven on
//! Linux with the real binaries: JSON logs to a file reopened on SIGHUP (what
//! newsyslog and logrotate do), a clean stop on SIGTERM within a bounded
//! grace (the worker reports its agents interrupted), and a clear non-zero
//! exit on a fatal configuration error, so a supervisor does not spin.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use broker::messages::{Outcome, TaskSpec, TaskState};
use broker::TagSet;
use harness::{BoardClient, NatsServer};

const T: Duration = Duration::from_secs(30);

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill {sig} {pid} failed");
    Ok(())
}

async fn exits_within(
    child: &mut tokio::process::Child,
    limit: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    Ok(harness::within(limit, "process exit", child.wait()).await??)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn daemons_reopen_logs_on_sighup_and_stop_cleanly_on_sigterm() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("scheduler.log");
    let mut scheduler = tokio::process::Command::new(harness::workspace_bin("colibri-scheduler"))
        .arg("--db")
        .arg(dir.path().join("board.db"))
        .args([
            "--nats-url",
            &nats.url(),
            "--log-format",
            "json",
            "--log-file",
        ])
        .arg(&log)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let board = BoardClient::new(nats.client().await?);
    harness::eventually(T, "scheduler answers", || async {
        board.status().await.ok()
    })
    .await?;
    harness::eventually(T, "json log lines", || async {
        let l = lines(&log);
        (!l.is_empty()
            && l.iter()
                .all(|x| serde_json::from_str::<serde_json::Value>(x).is_ok()))
        .then_some(())
    })
    .await?;

    // A worker with a task running under it.
    let state = tempfile::tempdir()?;
    let worker_log = dir.path().join("worker.log");
    let mut worker = tokio::process::Command::new(harness::workspace_bin("colibri-worker"))
        .args([
            "--worker-id",
            "svc",
            "--capabilities",
            "linux",
            "--allow-command",
            "--confinement",
            "unconfined",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .args(["--nats-url", &nats.url(), "--log-file"])
        .arg(&worker_log)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut spec = TaskSpec::command(
        "long",
        TagSet::parse_lists(["linux"])?,
        vec!["/bin/sh".into(), "-c".into(), "sleep 30".into()],
    );
    spec.retry.max_attempts = 1;
    board.create(&spec).await?;
    board.wait_state(&spec.id, TaskState::Running, T).await?;

    // Rotation: move the log away, SIGHUP, and the daemon writes a fresh file.
    let rotated = dir.path().join("scheduler.log.0");
    std::fs::rename(&log, &rotated)?;
    signal(scheduler.id().unwrap_or_default(), "-HUP")?;
    harness::eventually(T, "scheduler log reopened", || async {
        log.exists().then_some(())
    })
    .await?;
    board
        .create(&TaskSpec::command(
            "after rotation",
            TagSet::parse_lists(["nowhere"])?,
            vec!["true".into()],
        ))
        .await?;
    harness::eventually(T, "new lines in the fresh log", || async {
        lines(&log)
            .iter()
            .any(|l| l.contains("task queued"))
            .then_some(())
    })
    .await?;
    assert!(!lines(&rotated).is_empty());

    // SIGTERM to the worker: its agent is stopped and reported interrupted.
    signal(worker.id().unwrap_or_default(), "-TERM")?;
    let status = exits_within(&mut worker, Duration::from_secs(30)).await?;
    assert!(status.success(), "worker exit: {status}");
    // The worker's `leaving` heartbeat (core NATS) may overtake its stored
    // `finished` report: the task fails on the first, the attempt's outcome
    // arrives with the second.
    let d = board
        .wait_for(&spec.id, "failed, the attempt's outcome known", T, |d| {
            d.summary.state == TaskState::Failed
                && d.attempts.first().is_some_and(|a| a.outcome.is_some())
        })
        .await?;
    assert_eq!(d.attempts[0].outcome, Some(Outcome::Interrupted));
    let status = board.status().await?;
    assert!(
        status
            .workers
            .iter()
            .any(|w| w.worker.as_str() == "svc" && !w.online),
        "left at once"
    );

    signal(scheduler.id().unwrap_or_default(), "-TERM")?;
    let status = exits_within(&mut scheduler, Duration::from_secs(15)).await?;
    assert!(status.success(), "scheduler exit: {status}");
    Ok(())
}

#[tokio::test]
async fn fatal_configuration_exits_non_zero_with_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "db = 3\nbogus = true\n")?;
    for (bin, args, code, needle) in [
        (
            "colibri-scheduler",
            vec!["--config", bad.to_str().unwrap()],
            1,
            "config",
        ),
        ("colibri-scheduler", vec![], 1, "db: required"),
        (
            "colibri-scheduler",
            vec!["check-config", "--config", "/nonexistent.toml"],
            1,
            "cannot read",
        ),
        (
            "colibri-worker",
            vec!["--worker-id", "Bad Name", "--state-dir", "/tmp"],
            2,
            "worker-id",
        ),
        (
            "colibri-worker",
            vec!["check-config", "--config", bad.to_str().unwrap()],
            1,
            "bogus",
        ),
    ] {
        let out = harness::within(
            T,
            bin,
            tokio::process::Command::new(harness::workspace_bin(bin))
                .args(&args)
                .env_remove("COLIBRI_DB")
                .output(),
        )
        .await??;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{bin} {args:?}: {err}");
        assert!(err.contains(needle), "{bin} {args:?}: {err}");
    }
    Ok(())
}

// Regression (issue 6): the SIGHUP handler was installed only with a log
// file, so `service ... reload`, systemd's ExecReload or newsyslog killed a
// daemon logging to stderr, the shipped default.
#[tokio::test]
async fn daemon_without_a_log_file_survives_sighup() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let stderr = dir.path().join("stderr");
    let mut scheduler = tokio::process::Command::new(harness::workspace_bin("colibri-scheduler"))
        .arg("--db")
        .arg(dir.path().join("board.db"))
        .args(["--nats-url", &nats.url()])
        .env("RUST_LOG", "info")
        .env_remove("COLIBRI_LOG_FILE")
        .env_remove("COLIBRI_CONFIG")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr)?)
        .kill_on_drop(true)
        .spawn()?;
    let board = BoardClient::new(nats.client().await?);
    harness::eventually(T, "scheduler answers", || async {
        board.status().await.ok()
    })
    .await?;

    signal(scheduler.id().unwrap_or_default(), "-HUP")?;
    harness::eventually(T, "SIGHUP handled without a log file", || async {
        lines(&stderr)
            .iter()
            .any(|l| l.contains("nothing to reopen"))
            .then_some(())
    })
    .await?;
    assert!(
        scheduler.try_wait()?.is_none(),
        "SIGHUP killed the scheduler"
    );
    // Not a terminal (daemon(8) -o, the journal): no colour escapes in the log.
    assert!(
        !lines(&stderr).iter().any(|l| l.contains('\x1b')),
        "ANSI escapes in a non-terminal log"
    );
    board.status().await?;

    signal(scheduler.id().unwrap_or_default(), "-TERM")?;
    let status = exits_within(&mut scheduler, Duration::from_secs(15)).await?;
    assert!(status.success(), "scheduler exit: {status}");
    Ok(())
}
