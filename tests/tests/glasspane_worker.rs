//! Glasspane wired into the worker, end to end over a real nats-server: an
//! attempt's output becomes session events on `colibri.session.<session>.>`
//! (in seq order, the same as the transcript on the worker's host), the
//! agent's own end signal decides the Finished outcome, a flood neither
//! blocks the agent nor balloons the worker, progress reaches the board, and
//! `colibri watch` replays a finished session.
//!
//! The pi-format cases run the fake agent as the worker's `pi` profile (a
//! `command` task is plain text by design, so its verdict is its exit code).

mod worker_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use broker::messages::session::{Event, SessionEvent};
use broker::messages::{decode, Outcome, ReportBody, RunOrder, TaskSpec, TaskState, WorkItem};
use broker::{subjects, SessionId, Tag, TagSet};
use futures::StreamExt;
use harness::{within, BoardClient, NatsServer, SchedulerHandle, WorkerHandle};
use worker::profiles::AgentProfile;
use worker::WorkerConfig;
use worker_support::{fake_agent, fake_task, Fleet, LONG};

/// Enables the `pi` profile, run by the fake agent; a task's `--model`
/// picks its behaviour (`ok`, `fail`, `no-final`, `slow`).
fn pi_is_the_fake_agent(cfg: &mut WorkerConfig) {
    let models = [
        ("ok", vec![]),
        ("fail", vec!["--fail"]),
        ("no-final", vec!["--no-final"]),
        ("slow", vec!["--sleep-ms", "1500"]),
    ]
    .into_iter()
    .map(|(m, args)| (m.to_string(), args.into_iter().map(String::from).collect()))
    .collect::<BTreeMap<_, _>>();
    cfg.agents.insert(AgentProfile {
        name: Tag::parse("pi").expect("valid agent tag"),
        argv: vec![fake_agent().display().to_string(), "{prompt}".into()],
        models,
        env: BTreeMap::new(),
    });
}

/// A pi task whose fake agent behaves as `model` says.
fn pi_task(model: &str) -> TaskSpec {
    let mut task = TaskSpec::command("pi via the fake agent", TagSet::new(), Vec::new());
    task.agent = Tag::parse("pi").expect("valid agent tag");
    task.prompt = Some("list the files".into());
    task.model = Some(model.into());
    task
}

/// Orders `task` on `worker` with a session id known in advance.
async fn run_with_session(
    fleet: &Fleet,
    worker: &broker::WorkerId,
    task: &TaskSpec,
) -> anyhow::Result<SessionId> {
    fleet
        .place(worker, worker_support::run_order(task, Default::default()))
        .await
}

/// Live events of one session from a core subscription, up to `end`.
async fn until_end(sub: &mut async_nats::Subscriber) -> anyhow::Result<Vec<SessionEvent>> {
    let mut out = Vec::new();
    loop {
        let Some(msg) = within(LONG, "a live session event", sub.next()).await? else {
            anyhow::bail!("session subscription ended before the end event");
        };
        let event: SessionEvent = decode(&msg.payload)?;
        let end = event.event.is_end();
        out.push(event);
        if end {
            return Ok(out);
        }
    }
}

/// The session's transcript: its first segment, then each rolled-over one
/// (`<session>.<n>.jsonl`) in order.
fn transcript(state_dir: &Path, session: &SessionId) -> anyhow::Result<Vec<SessionEvent>> {
    let dir = state_dir.join("sessions");
    let mut text = std::fs::read_to_string(dir.join(format!("{session}.jsonl")))?;
    for n in 1.. {
        match std::fs::read_to_string(dir.join(format!("{session}.{n}.jsonl"))) {
            Ok(more) => text.push_str(&more),
            Err(_) => break,
        }
    }
    text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

fn end_of(events: &[SessionEvent]) -> Option<(bool, Option<String>)> {
    events.iter().rev().find_map(|e| match &e.event {
        Event::End { success, reason } => Some((*success, reason.clone())),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pi_session_is_published_in_order_and_matches_the_transcript() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", pi_is_the_fake_agent).await?;
    let task = pi_task("ok");
    // Subscribe before the order so that the live stream is complete.
    let session = SessionId::new();
    let mut sub = fleet
        .client
        .subscribe(subjects::session_any(&session))
        .await?;
    fleet.client.flush().await?;
    let order = RunOrder {
        task: task.clone(),
        attempt: 1,
        session,
        cost_mode: Default::default(),
        spent: Default::default(),
        continue_from: None,
    };
    fleet.order(&w.id, WorkItem::Run(Box::new(order))).await?;

    let live = until_end(&mut sub).await?;
    let seqs: Vec<u64> = live.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=live.len() as u64).collect();
    assert_eq!(seqs, expected, "live events in seq order, none missing");
    assert!(live.iter().all(|e| e.task_id == task.id
        && e.attempt == 1
        && e.worker == w.id
        && e.session == session));
    assert!(live
        .iter()
        .any(|e| matches!(&e.event, Event::ToolStart { name, .. } if name == "bash")));
    assert_eq!(end_of(&live), Some((true, None)));

    let report = fleet.report(&task, "finished").await?;
    let ReportBody::Finished {
        outcome,
        usage,
        reason,
        ..
    } = report.body
    else {
        anyhow::bail!("not a finished report");
    };
    assert_eq!(outcome, Outcome::Succeeded, "{reason:?}");
    let usage = usage.ok_or_else(|| anyhow::anyhow!("no usage in the finished report"))?;
    assert_eq!(
        usage.output_tokens, 180,
        "both assistant responses counted once"
    );
    assert!(usage.cost_usd.is_some_and(|c| c > 0.0));

    // The Finished report follows the end of the pump, so the transcript is
    // complete and synced by now.
    let written = transcript(w.state.path(), &session)?;
    assert_eq!(written, live, "transcript holds exactly the live events");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pi_stop_reason_error_fails_the_attempt_with_the_reason() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", pi_is_the_fake_agent).await?;
    let task = pi_task("fail");
    run_with_session(&fleet, &w.id, &task).await?;
    let (outcome, code, reason) = fleet.finished(&task).await?;
    // pi exits 0 even when it failed: only stopReason tells.
    assert_eq!((outcome, code), (Outcome::Failed, Some(0)), "{reason}");
    assert!(reason.contains("stopReason error"), "{reason}");
    assert!(reason.contains("simulated failure"), "{reason}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pi_exiting_without_its_final_event_fails() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", pi_is_the_fake_agent).await?;
    let task = pi_task("no-final");
    let session = run_with_session(&fleet, &w.id, &task).await?;
    let (outcome, code, reason) = fleet.finished(&task).await?;
    assert_eq!((outcome, code), (Outcome::Failed, Some(0)), "{reason}");
    assert!(reason.contains("without its final"), "{reason}");
    let written = transcript(w.state.path(), &session)?;
    assert_eq!(end_of(&written).map(|(ok, _)| ok), Some(false));
    Ok(())
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// 200,000 lines of a `command` agent (plain text: one event per line) as
/// fast as it can print them: it is never held back (it ends, succeeded,
/// well within the deadline), the worker's memory stays bounded, and the
/// session ends with an `end` event, whatever was dropped live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_never_blocks_the_agent_and_memory_stays_bounded() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", |_| {}).await?;
    let task = fake_task(&["--flood", "200000"]);
    let baseline = vm_rss_kib();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                peak.fetch_max(vm_rss_kib(), Ordering::Relaxed);
            }
        })
    };
    let started = std::time::Instant::now();
    let session = SessionId::new();
    let mut end = fleet
        .client
        .subscribe(subjects::session_kind(&session, "end"))
        .await?;
    fleet.client.flush().await?;
    let order = RunOrder {
        task: task.clone(),
        attempt: 1,
        session,
        cost_mode: Default::default(),
        spent: Default::default(),
        continue_from: None,
    };
    fleet.order(&w.id, WorkItem::Run(Box::new(order))).await?;
    // A debug build pumps far slower than a release one: allow for it.
    within(
        Duration::from_secs(120),
        "the flood's end event",
        end.next(),
    )
    .await?;
    let (outcome, code, reason) = fleet.finished(&task).await?;
    sampler.abort();
    eprintln!(
        "flood of 200000 lines pumped in {:?}; peak RSS growth {} KiB",
        started.elapsed(),
        peak.load(Ordering::Relaxed).saturating_sub(baseline)
    );
    assert_eq!((outcome, code), (Outcome::Succeeded, Some(0)), "{reason}");
    let grown_mib = peak.load(Ordering::Relaxed).saturating_sub(baseline) / 1024;
    assert!(
        grown_mib <= 64,
        "worker RSS grew by {grown_mib} MiB during the flood"
    );

    let written = transcript(w.state.path(), &session)?;
    assert_eq!(
        end_of(&written),
        Some((true, None)),
        "the transcript's end is never lost"
    );
    let seqs: Vec<u64> = written.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|p| p[0] < p[1]),
        "transcript in seq order"
    );
    Ok(())
}

/// `colibri`, built once per test binary.
fn colibri_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "-q", "-p", "colibri-scheduler", "--bin", "colibri"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status();
            assert!(status.is_ok_and(|s| s.success()), "building colibri failed");
            harness::workspace_bin("colibri")
        })
        .clone()
}

async fn colibri(nats: &NatsServer, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(colibri_bin());
    cmd.args(args)
        .env("COLIBRI_NATS_URL", nats.url())
        .kill_on_drop(true);
    within(LONG, &format!("colibri {}", args.join(" ")), cmd.output())
        .await?
        .map_err(Into::into)
}

/// Through the scheduler: progress reports reach the board while the agent
/// runs (and its final pane after), then `colibri watch TASK` replays the
/// finished session from its first event and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_the_board_and_watch_replays_the_session() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let db = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(&nats, &db.path().join("board.db")).await?;
    let worker = WorkerHandle::start(&nats, "debby", &[], 1, pi_is_the_fake_agent).await?;
    let board = BoardClient::new(nats.client().await?);
    let task = pi_task("slow");
    let id = board.create(&task).await?.task_id;

    let running = board
        .wait_for(&id, "a running attempt with a pane", LONG, |d| {
            d.summary.state == TaskState::Running && d.attempts.iter().any(|a| a.pane.is_some())
        })
        .await?;
    let pane = running.attempts.iter().find_map(|a| a.pane.clone());
    assert!(
        matches!(pane.as_deref(), Some("starting" | "running")),
        "{pane:?}"
    );
    let done = board.wait_state(&id, TaskState::Succeeded, LONG).await?;
    let attempt = done
        .attempts
        .last()
        .ok_or_else(|| anyhow::anyhow!("no attempt"))?;
    assert_eq!(
        attempt.pane.as_deref(),
        Some("stopped"),
        "final pane flushed before finished"
    );
    assert!(attempt.usage.as_ref().is_some_and(|u| u.output_tokens > 0));

    let out = colibri(&nats, &["watch", &id.to_string(), "--json"]).await?;
    assert!(
        out.status.success(),
        "watch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let watched: Vec<SessionEvent> = String::from_utf8(out.stdout)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect::<anyhow::Result<_>>()?;
    let written = transcript(worker.state.path(), &attempt.session)?;
    assert_eq!(watched, written, "watch replays every event of the session");

    let out = colibri(&nats, &["watch", &attempt.session.to_string()]).await?;
    assert!(
        out.status.success(),
        "watch by session failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.lines().count(), written.len(), "{text}");
    assert!(
        text.lines().last().is_some_and(|l| l.contains("end")),
        "{text}"
    );

    // `--from-now` on a session that has already ended: its stored end
    // answers at once (nothing more will ever arrive).
    let out = colibri(&nats, &["watch", &id.to_string(), "--from-now"]).await?;
    assert!(
        out.status.success(),
        "watch --from-now failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("end"), "{text}");

    worker.stop().await?;
    scheduler.stop().await?;
    Ok(())
}

/// `colibri watch` exits 1 when the session failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_1_for_a_failed_session() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", pi_is_the_fake_agent).await?;
    let task = pi_task("fail");
    let session = run_with_session(&fleet, &w.id, &task).await?;
    fleet.finished(&task).await?;
    let out = colibri(&fleet.nats, &["watch", &session.to_string()]).await?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
