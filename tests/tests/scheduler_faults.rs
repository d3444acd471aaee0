//! Faults end to end on a real nats-server: a worker that vanishes, a
//! scheduler killed and restarted, nats-server killed and restarted, and a
//! retried submit. Nothing accepted is lost and every task still ends.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use broker::messages::{encode, Outcome, TaskSpec, TaskState, WorkItem};
use broker::{subjects, TagSet};
use harness::{BoardClient, NatsServer, SchedulerHandle, SimWorker};

const T: Duration = Duration::from_secs(20);

fn task(title: &str, caps: &[&str]) -> TaskSpec {
    TaskSpec::command(
        title,
        TagSet::parse_lists(caps).unwrap(),
        vec!["/bin/true".into()],
    )
}

async fn online(board: &BoardClient, id: &broker::WorkerId) -> anyhow::Result<()> {
    harness::eventually(T, "worker online", || async {
        board
            .status()
            .await
            .ok()?
            .workers
            .iter()
            .any(|s| &s.worker == id && s.online)
            .then_some(())
    })
    .await
}

async fn intake(client: &async_nats::Client, spec: &TaskSpec) -> anyhow::Result<bool> {
    // Retried until acknowledged, as the CLI's caller would: the task id
    // is the Nats-Msg-Id, so a retry never makes a second task.
    let js = jetstream::new(client.clone());
    let ack = harness::eventually(T, "intake ack", || async {
        let publish = PublishMessage::build()
            .payload(encode(spec))
            .message_id(spec.id.to_string());
        js.send_publish(subjects::task_submit(&spec.id), publish)
            .await
            .ok()?
            .await
            .ok()
    })
    .await?;
    Ok(ack.duplicate)
}

#[tokio::test]
async fn lost_worker_work_is_placed_again_and_its_stale_attempt_is_fenced() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(&nats, &dir.path().join("b.db")).await?;
    let board = BoardClient::new(nats.client().await?);

    let mut debby = SimWorker::start(nats.client().await?, "debby", &["linux"], 2).await?;
    online(&board, &debby.id).await?;
    let running = task("started on debby", &["linux"]);
    let unstarted = task("placed on debby, not started", &["linux"]);
    board.create(&running).await?;
    board.create(&unstarted).await?;
    let r1 = debby.next_run(T).await?;
    let r2 = debby.next_run(T).await?;
    let (run, _idle) = if r1.task.id == running.id {
        (r1, r2)
    } else {
        (r2, r1)
    };
    debby.started(&run).await?;
    board.wait_state(&running.id, TaskState::Running, T).await?;

    // debby's link drops: no heartbeats, no reads.
    debby.go_silent();
    let mut domedog = SimWorker::start(nats.client().await?, "domedog", &["linux"], 2).await?;
    online(&board, &domedog.id).await?;
    let lost_at = std::time::Instant::now();
    let a = domedog.next_run(Duration::from_secs(30)).await?;
    let b = domedog.next_run(T).await?;
    // Offline within the documented bound (10 s silence, checked every tick).
    assert!(
        lost_at.elapsed() < Duration::from_secs(15),
        "took {:?}",
        lost_at.elapsed()
    );
    let mut ids = [a.task.id, b.task.id];
    ids.sort();
    let mut want = [running.id, unstarted.id];
    want.sort();
    assert_eq!(ids, want);
    assert!(
        a.attempt >= 2 && b.attempt >= 2,
        "new attempts are fenced from old ones"
    );
    let status = board.status().await?;
    assert!(status
        .workers
        .iter()
        .any(|w| w.worker.as_str() == "debby" && !w.online));

    // debby comes back, still claiming its old run, and reports it done: fenced.
    let debby_back = SimWorker::start(debby.client().clone(), "debby", &["linux"], 2).await?;
    drop(debby);
    debby_back.finished(&run, Outcome::Succeeded).await?;
    let d = board.show(&running.id).await?;
    assert_ne!(
        d.summary.state,
        TaskState::Succeeded,
        "a stale attempt must not finish the task"
    );
    let mut debby_back = debby_back;
    debby_back.claim_running(&run);
    let fenced = harness::within(T, "cancel for the stale attempt", async {
        loop {
            if let Ok(WorkItem::Cancel(c)) = debby_back.next_order(T).await {
                return c;
            }
        }
    })
    .await?;
    assert_eq!((fenced.task_id, fenced.attempt), (running.id, run.attempt));

    // The new attempts finish the tasks.
    for r in [&a, &b] {
        domedog.started(r).await?;
        domedog.finished(r, Outcome::Succeeded).await?;
    }
    for id in [running.id, unstarted.id] {
        let d = board.wait_state(&id, TaskState::Succeeded, T).await?;
        assert_eq!(d.summary.worker.unwrap().as_str(), "domedog");
    }
    scheduler.stop().await
}

#[tokio::test]
async fn duplicate_submit_makes_one_task() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(&nats, &dir.path().join("b.db")).await?;
    let client = nats.client().await?;
    let board = BoardClient::new(client.clone());
    let spec = task("submitted twice", &["nowhere"]);
    assert!(!intake(&client, &spec).await?);
    assert!(
        intake(&client, &spec).await?,
        "the second publish is a JetStream duplicate"
    );
    // Even past the duplicate window, the board keeps one task.
    let again = board.create(&spec).await?;
    assert!(!again.created);
    let all = board.list(None).await?;
    assert_eq!(all.tasks.iter().filter(|t| t.task_id == spec.id).count(), 1);
    scheduler.stop().await
}

#[tokio::test]
async fn scheduler_restart_loses_nothing() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("b.db");
    let client = nats.client().await?;
    let board = BoardClient::new(client.clone());
    let scheduler = SchedulerHandle::start(&nats, &db).await?;
    let mut w = SimWorker::start(nats.client().await?, "w", &["linux"], 4).await?;
    online(&board, &w.id).await?;
    let running = task("running across the restart", &["linux"]);
    board.create(&running).await?;
    let run = w.next_run(T).await?;
    w.started(&run).await?;
    board.wait_state(&running.id, TaskState::Running, T).await?;

    // Down: a submission and a report wait in the stream.
    scheduler.stop().await?;
    let while_down = task("submitted while the scheduler is down", &["linux"]);
    intake(&client, &while_down).await?;
    w.finished(&run, Outcome::Succeeded).await?;

    let scheduler = SchedulerHandle::start(&nats, &db).await?;
    board
        .wait_state(&running.id, TaskState::Succeeded, T)
        .await?;
    let next = w.next_run(T).await?;
    assert_eq!(next.task.id, while_down.id);
    w.started(&next).await?;
    w.finished(&next, Outcome::Succeeded).await?;
    board
        .wait_state(&while_down.id, TaskState::Succeeded, T)
        .await?;
    scheduler.stop().await
}

#[tokio::test]
async fn scheduler_kill_9_loses_no_accepted_task() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("b.db");
    let client = nats.client().await?;
    let board = BoardClient::new(client.clone());
    let mut proc = harness::SchedulerProcess::start(&nats.url(), &db)?;
    let mut w = SimWorker::start(nats.client().await?, "w", &["linux"], 64).await?;
    online(&board, &w.id).await?;
    // A burst through the intake, killed mid-way.
    let specs: Vec<_> = (0..40)
        .map(|i| task(&format!("burst {i}"), &["linux"]))
        .collect();
    for s in &specs[..20] {
        intake(&client, s).await?;
    }
    proc.kill();
    for s in &specs[20..] {
        intake(&client, s).await?;
    }
    proc.start_again()?;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < specs.len() {
        let run = w.next_run(T).await?;
        if seen.insert(run.task.id) {
            w.started(&run).await?;
            w.finished(&run, Outcome::Succeeded).await?;
        }
    }
    for s in &specs {
        board.wait_state(&s.id, TaskState::Succeeded, T).await?;
    }
    Ok(())
}

#[tokio::test]
async fn nats_server_restart_mid_run_loses_nothing() -> anyhow::Result<()> {
    harness::init_logging();
    let mut nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let client = nats.client().await?;
    let board = BoardClient::new(client.clone());
    let scheduler = SchedulerHandle::start(&nats, &dir.path().join("b.db")).await?;
    let mut w = SimWorker::start(nats.client().await?, "w", &["linux"], 4).await?;
    online(&board, &w.id).await?;
    let spec = task("across a nats restart", &["linux"]);
    board.create(&spec).await?;
    let run = w.next_run(T).await?;
    w.started(&run).await?;
    board.wait_state(&spec.id, TaskState::Running, T).await?;

    nats.restart()?; // kill -9 and start on the same port and store

    // Clients reconnect by themselves; the report and a new task go through.
    w.finished(&run, Outcome::Succeeded).await?;
    board
        .wait_state(&spec.id, TaskState::Succeeded, Duration::from_secs(30))
        .await?;
    let after = task("after the restart", &["linux"]);
    intake(&client, &after).await?;
    let run = w.next_run(Duration::from_secs(30)).await?;
    assert_eq!(run.task.id, after.id);
    scheduler.stop().await
}
