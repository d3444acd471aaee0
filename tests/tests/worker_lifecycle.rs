//! A worker end to end against a real nats-server: orders in, reports out,
//! and every way an attempt can end: success, refusal, cancel (with
//! grandchildren that ignore SIGTERM), run-time and idle limits, spawn
//! failure, worker shutdown, malformed orders.

mod worker_support;

use std::time::Duration;

use broker::messages::{Outcome, ReportBody};
use broker::Tag;
use harness::{eventually, within};
use worker_support::{alive, command_task, fake_task, Fleet, LONG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_order_reports_started_then_finished() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", |_| {}).await?;
    let hb = fleet.heartbeat(|hb| hb.worker == w.id).await?;
    assert!(hb.agents.iter().any(|a| a.as_str() == "command"));
    let task = fake_task(&["--sleep-ms", "300", "--usage-tokens", "50"]);
    fleet.run(&w.id, &task, 1).await?;
    let started = fleet.report(&task, "started").await?;
    assert!(matches!(
        started.body,
        ReportBody::Started { pid: Some(_), .. }
    ));
    // While it runs, heartbeats renew its lease.
    fleet
        .heartbeat(|hb| {
            hb.running
                .iter()
                .any(|a| a.task_id == task.id && a.attempt == 1)
        })
        .await?;
    let (outcome, code, _) = fleet.finished(&task).await?;
    assert_eq!((outcome, code), (Outcome::Succeeded, Some(0)));

    // A duplicate of a finished order is acknowledged and ignored: the next
    // order's Finished arrives with no second Started for the first task.
    fleet.run(&w.id, &task, 1).await?;
    let failing = fake_task(&["--exit-code", "7"]);
    fleet.run(&w.id, &failing, 1).await?;
    let (outcome, code, reason) = fleet.finished(&failing).await?;
    assert_eq!((outcome, code), (Outcome::Failed, Some(7)), "{reason}");
    let starts = fleet
        .seen_reports
        .iter()
        .filter(|r| r.task_id == task.id && r.body.kind() == "started")
        .count();
    assert_eq!(starts, 1);
    assert!(
        !w.workdir(&task, 1).exists(),
        "work dir of a success is removed (on-failure policy)"
    );
    assert!(
        w.workdir(&failing, 1).exists(),
        "work dir of a failure is kept (on-failure policy)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_not_enabled_is_rejected_with_the_reason() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet
        .worker("debby", |c| c.agents.set_allow_command(false))
        .await?;
    let mut task = fake_task(&[]);
    fleet.run(&w.id, &task, 1).await?;
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::Rejected);
    assert!(reason.contains("--allow-command"), "{reason}");
    task.id = broker::TaskId::new();
    task.agent = Tag::parse("claude")?;
    task.prompt = Some("hi".into());
    fleet.run(&w.id, &task, 1).await?;
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::Rejected);
    assert!(reason.contains("claude is not enabled"), "{reason}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_grandchildren_that_ignore_sigterm() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", |_| {}).await?;
    let pidfile = w.state.path().join("pids");
    let pidfile_arg = pidfile.display().to_string();
    let task = fake_task(&[
        "--grandchildren",
        "3",
        "--ignore-term",
        "--hang",
        "--pidfile",
        &pidfile_arg,
    ]);
    fleet.run(&w.id, &task, 1).await?;
    fleet.report(&task, "started").await?;
    let pids: Vec<i32> = eventually(LONG, "pidfile with 4 pids", || async {
        let text = std::fs::read_to_string(&pidfile).ok()?;
        let pids: Vec<i32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        (pids.len() == 4).then_some(pids)
    })
    .await?;
    assert!(pids.iter().all(|p| alive(*p)));
    fleet.cancel(&w.id, &task, 1).await?;
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::Cancelled, "{reason}");
    let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes of the task remain: {left:?}");
    // A cancel for an attempt this worker does not know is acknowledged.
    fleet.cancel(&w.id, &fake_task(&[]), 1).await?;
    fleet
        .heartbeat(|hb| hb.worker == w.id && hb.running.is_empty())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_time_limit_times_out() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", |_| {}).await?;
    let mut task = fake_task(&["--sleep-ms", "60000"]);
    task.limits.timeout_secs = Some(1);
    fleet.run(&w.id, &task, 1).await?;
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::TimedOut);
    assert!(reason.contains("run time limit"), "{reason}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_limit_times_out() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet
        .worker("debby", |c| c.limits.idle = Duration::from_secs(1))
        .await?;
    let task = fake_task(&["--hang"]);
    fleet.run(&w.id, &task, 1).await?;
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::TimedOut);
    assert!(reason.contains("idle limit"), "{reason}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_binary_is_spawn_failed_after_retries() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet
        .worker("debby", |c| c.limits.spawn_retries = 2)
        .await?;
    let task = command_task(&["/nonexistent/agent", "x"]);
    fleet.run(&w.id, &task, 1).await?;
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::SpawnFailed);
    assert!(
        reason.contains("/nonexistent/agent") && reason.contains("after 3 tries"),
        "{reason}"
    );
    assert_eq!(
        outcome.failure_class(),
        Some(broker::messages::FailureClass::Infrastructure)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_interrupts_agents_and_sends_leaving() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", |_| {}).await?;
    let task = fake_task(&["--hang", "--ignore-term", "--grandchildren", "1"]);
    fleet.run(&w.id, &task, 1).await?;
    fleet.report(&task, "started").await?;
    w.shutdown.cancel();
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::Interrupted, "{reason}");
    let bye = fleet
        .heartbeat(|hb| hb.worker == w.id && hb.leaving)
        .await?;
    assert!(bye.running.is_empty());
    within(Duration::from_secs(6), "worker::run to return", w.handle).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_orders_are_dropped_and_the_worker_carries_on() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", |_| {}).await?;
    fleet.raw_order(&w.id, b"not json".to_vec()).await?;
    fleet
        .raw_order(&w.id, br#"{"v":99,"kind":"run"}"#.to_vec())
        .await?;
    let task = fake_task(&[
        "--garbage",
        "--non-utf8",
        "--huge-line",
        "3000000",
        "--flood",
        "2000",
    ]);
    fleet.run(&w.id, &task, 1).await?;
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::Succeeded, "{reason}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_run_loses_no_report() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", |_| {}).await?;
    let task = fake_task(&["--sleep-ms", "1500"]);
    fleet.run(&w.id, &task, 1).await?;
    fleet.report(&task, "started").await?;
    fleet.nats.restart()?;
    // Our own subscriptions died with the connection: read the stored report.
    let client = fleet.nats.client().await?;
    let js = async_nats::jetstream::new(client);
    let finished = eventually(LONG, "finished report stored in the intake", || {
        let js = js.clone();
        let subject = broker::subjects::task_report(&task.id, &w.id);
        async move {
            let stream = js.get_stream(broker::provision::INTAKE_STREAM).await.ok()?;
            let msg = stream
                .get_last_raw_message_by_subject(&subject)
                .await
                .ok()?;
            let report: broker::messages::Report = broker::messages::decode(&msg.payload).ok()?;
            matches!(report.body, ReportBody::Finished { .. }).then_some(report)
        }
    })
    .await?;
    assert!(matches!(
        finished.body,
        ReportBody::Finished {
            outcome: Outcome::Succeeded,
            ..
        }
    ));
    // And orders placed after the restart still reach the worker.
    let next = fake_task(&[]);
    fleet.run(&w.id, &next, 1).await?;
    eventually(LONG, "second task finished", || {
        let js = js.clone();
        let subject = broker::subjects::task_report(&next.id, &w.id);
        async move {
            let stream = js.get_stream(broker::provision::INTAKE_STREAM).await.ok()?;
            let msg = stream
                .get_last_raw_message_by_subject(&subject)
                .await
                .ok()?;
            let report: broker::messages::Report = broker::messages::decode(&msg.payload).ok()?;
            matches!(report.body, ReportBody::Finished { .. }).then_some(())
        }
    })
    .await?;
    Ok(())
}
