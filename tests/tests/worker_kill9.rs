//! `kill -9` of a real `colibri-worker` process mid-run: the accepted task is
//! not lost. Whether the worker stays away (its lease ends and another
//! worker runs a new attempt) or comes straight back under the same id (a new
//! incarnation: what the old process ran is lost and retried at once), the
//! task still ends `succeeded`.

use std::process::Stdio;
use std::time::Duration;

use broker::messages::{TaskSpec, TaskState};
use broker::TagSet;
use harness::{BoardClient, NatsServer, SchedulerHandle};

const T: Duration = Duration::from_secs(40);

struct WorkerProcess {
    child: tokio::process::Child,
    _state: tempfile::TempDir,
}

fn spawn_worker(nats: &NatsServer, id: &str, tags: &str) -> anyhow::Result<WorkerProcess> {
    let state = tempfile::tempdir()?;
    let child = tokio::process::Command::new(harness::workspace_bin("colibri-worker"))
        .args([
            "--worker-id",
            id,
            "--capabilities",
            tags,
            "--slots",
            "2",
            "--allow-command",
        ])
        .args(["--confinement", "unconfined", "--state-dir"])
        .arg(state.path())
        .args(["--nats-url", &nats.url()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok(WorkerProcess {
        child,
        _state: state,
    })
}

/// Sleeps long on attempt 1 (a marker file says it ran), exits 0 at once after.
fn task(marker: &std::path::Path) -> TaskSpec {
    let script = format!(
        "if [ -e {m} ]; then exit 0; fi; touch {m}; sleep 60",
        m = marker.display()
    );
    let mut spec = TaskSpec::command(
        "killed mid-run",
        TagSet::parse_lists(["linux"]).unwrap(),
        vec!["/bin/sh".into(), "-c".into(), script],
    );
    spec.retry.backoff_ms = 50;
    spec
}

async fn running_on(board: &BoardClient, spec: &TaskSpec, worker: &str) -> anyhow::Result<()> {
    board
        .wait_for(&spec.id, &format!("running on {worker}"), T, |d| {
            d.summary.state == TaskState::Running
                && d.summary
                    .worker
                    .as_ref()
                    .is_some_and(|w| w.as_str() == worker)
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn kill_9_of_a_worker_that_stays_away_moves_the_task() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(&nats, &dir.path().join("b.db")).await?;
    let board = BoardClient::new(nats.client().await?);
    let mut doomed = spawn_worker(&nats, "doomed", "linux")?;
    let spec = task(&dir.path().join("ran-once"));
    board.create(&spec).await?;
    running_on(&board, &spec, "doomed").await?;
    // Someone follows the session that is about to lose its worker.
    let watch = tokio::process::Command::new(harness::workspace_bin("colibri"))
        .args(["watch", &spec.id.to_string(), "--nats-url", &nats.url()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;

    doomed.child.start_kill()?; // SIGKILL
    doomed.child.wait().await?;
    let _rescuer = spawn_worker(&nats, "rescuer", "linux")?;
    let d = board.wait_state(&spec.id, TaskState::Succeeded, T).await?;
    assert_eq!(d.summary.worker.unwrap().as_str(), "rescuer");
    assert!(
        d.summary.attempt >= 2,
        "a new attempt, fenced from the lost one"
    );
    // The dead worker never sent the session's end: the board's end of the
    // attempt ends the watch, as a failure.
    let watched = harness::within(T, "colibri watch to end", watch.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert_eq!(watched.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no end event"), "{stderr}");
    scheduler.stop().await
}

#[tokio::test]
async fn kill_9_and_quick_restart_under_the_same_id_retries_at_once() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(&nats, &dir.path().join("b.db")).await?;
    let board = BoardClient::new(nats.client().await?);
    let mut first = spawn_worker(&nats, "phoenix", "linux")?;
    let spec = task(&dir.path().join("ran-once"));
    board.create(&spec).await?;
    running_on(&board, &spec, "phoenix").await?;

    first.child.start_kill()?;
    first.child.wait().await?;
    // Back before the 10 s offline bound: the new incarnation tells the scheduler.
    let restarted_at = std::time::Instant::now();
    let _again = spawn_worker(&nats, "phoenix", "linux")?;
    let d = board.wait_state(&spec.id, TaskState::Succeeded, T).await?;
    assert!(d.summary.attempt >= 2);
    assert!(
        restarted_at.elapsed() < Duration::from_secs(10),
        "retried on the restart, not after the offline bound: {:?}",
        restarted_at.elapsed()
    );
    scheduler.stop().await
}
