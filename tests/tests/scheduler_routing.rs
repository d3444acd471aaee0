//! Placement end to end on a real nats-server: the scheduler service, and
//! simulated workers that heartbeat and read their orders.

use std::time::Duration;

use broker::messages::event::ParkReason;
use broker::messages::{Outcome, SharedTranscript, TaskSpec, TaskState};
use broker::TagSet;
use harness::{BoardClient, NatsServer, SchedulerHandle, SimWorker};

const T: Duration = Duration::from_secs(15);

fn task(title: &str, caps: &[&str]) -> TaskSpec {
    TaskSpec::command(
        title,
        TagSet::parse_lists(caps).unwrap(),
        vec!["/bin/true".into()],
    )
}

struct Env {
    nats: NatsServer,
    _dir: tempfile::TempDir,
    scheduler: SchedulerHandle,
    board: BoardClient,
}

async fn env() -> anyhow::Result<Env> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(&nats, &dir.path().join("board.db")).await?;
    let board = BoardClient::new(nats.client().await?);
    Ok(Env {
        nats,
        _dir: dir,
        scheduler,
        board,
    })
}

impl Env {
    async fn worker(&self, id: &str, tags: &[&str], slots: u32) -> anyhow::Result<SimWorker> {
        let w = SimWorker::start(self.nats.client().await?, id, tags, slots).await?;
        let id = w.id.clone();
        harness::eventually(T, "worker online", || async {
            self.board
                .status()
                .await
                .ok()?
                .workers
                .iter()
                .any(|s| s.worker == id && s.online)
                .then_some(())
        })
        .await?;
        Ok(w)
    }
}

#[tokio::test]
async fn multi_tag_task_runs_only_where_both_tags_are() -> anyhow::Result<()> {
    let env = env().await?;
    let mut render = env
        .worker("render-only", &["linux", "image-render"], 4)
        .await?;
    let mut shots = env
        .worker("shots-only", &["linux", "screenshot"], 4)
        .await?;
    let mut both = env
        .worker("both", &["linux", "image-render", "screenshot", "gpu"], 4)
        .await?;
    let spec = task("render and shoot", &["image-render", "screenshot"]);
    env.board.create(&spec).await?;
    let run = both.next_run(T).await?;
    assert_eq!(run.task.id, spec.id);
    assert_eq!(run.attempt, 1);
    assert!(render.no_order_within(Duration::from_millis(300)).await);
    assert!(shots.no_order_within(Duration::from_millis(10)).await);
    both.started(&run).await?;
    both.finished(&run, Outcome::Succeeded).await?;
    let d = env
        .board
        .wait_state(&spec.id, TaskState::Succeeded, T)
        .await?;
    assert_eq!(d.summary.worker.unwrap().as_str(), "both");
    env.scheduler.stop().await
}

#[tokio::test]
async fn best_fit_leaves_the_gpu_host_free() -> anyhow::Result<()> {
    let env = env().await?;
    let mut gpu = env.worker("gpu-host", &["linux", "gpu"], 4).await?;
    let mut plain = env.worker("plain", &["linux"], 1).await?;
    let first = task("needs linux", &["linux"]);
    env.board.create(&first).await?;
    assert_eq!(plain.next_run(T).await?.task.id, first.id);
    // plain is full now: the next linux task may take the GPU host.
    let second = task("needs linux too", &["linux"]);
    env.board.create(&second).await?;
    assert_eq!(gpu.next_run(T).await?.task.id, second.id);
    env.scheduler.stop().await
}

#[tokio::test]
async fn parked_task_waits_with_reason_then_runs_when_a_worker_appears() -> anyhow::Result<()> {
    let env = env().await?;
    let _linux = env.worker("linux-box", &["linux"], 2).await?;
    let spec = task("iso check", &["freebsd"]);
    env.board.create(&spec).await?;
    let d = env
        .board
        .wait_for(&spec.id, "parked with a reason", T, |d| {
            d.summary.parked.is_some()
        })
        .await?;
    assert_eq!(d.summary.state, TaskState::Queued);
    match d.summary.parked.unwrap() {
        ParkReason::Unmatched {
            closest,
            missing_tags,
            ..
        } => {
            assert_eq!(closest.as_str(), "linux-box");
            assert_eq!(
                missing_tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                ["freebsd"]
            );
        }
        other => panic!("unexpected reason {other:?}"),
    }
    let queued = env.board.list(Some(TaskState::Queued)).await?;
    assert!(queued
        .tasks
        .iter()
        .any(|t| t.task_id == spec.id && t.parked.is_some()));

    let mut bsd = env.worker("osa", &["freebsd"], 1).await?;
    let run = bsd.next_run(T).await?;
    assert_eq!(run.task.id, spec.id);
    env.board
        .wait_state(&spec.id, TaskState::Assigned, T)
        .await?;
    env.scheduler.stop().await
}

#[tokio::test]
async fn slots_are_never_exceeded_and_a_freed_slot_is_reused() -> anyhow::Result<()> {
    let env = env().await?;
    let mut w = env.worker("two-slots", &["linux"], 2).await?;
    let specs: Vec<_> = (0..3).map(|i| task(&format!("t{i}"), &["linux"])).collect();
    for s in &specs {
        env.board.create(s).await?;
    }
    let a = w.next_run(T).await?;
    let b = w.next_run(T).await?;
    assert!(
        w.no_order_within(Duration::from_millis(500)).await,
        "a third order exceeded 2 slots"
    );
    let third = specs
        .iter()
        .find(|s| s.id != a.task.id && s.id != b.task.id)
        .unwrap();
    let d = env
        .board
        .wait_for(&third.id, "third parked busy", T, |d| {
            d.summary.parked.is_some()
        })
        .await?;
    assert_eq!(d.summary.parked, Some(ParkReason::Busy { qualifying: 1 }));
    w.started(&a).await?;
    w.finished(&a, Outcome::Succeeded).await?;
    assert_eq!(w.next_run(T).await?.task.id, third.id);
    env.scheduler.stop().await
}

#[tokio::test]
async fn more_slots_advertised_unparks_at_once() -> anyhow::Result<()> {
    let env = env().await?;
    let mut w = env.worker("grows", &["linux"], 1).await?;
    let a = task("a", &["linux"]);
    let b = task("b", &["linux"]);
    env.board.create(&a).await?;
    env.board.create(&b).await?;
    w.next_run(T).await?;
    assert!(w.no_order_within(Duration::from_millis(300)).await);
    w.set_slots(2);
    assert_eq!(w.next_run(T).await?.task.id, b.id);
    env.scheduler.stop().await
}

#[tokio::test]
async fn cancel_of_a_queued_task_is_immediate_and_of_a_running_one_reaches_the_worker(
) -> anyhow::Result<()> {
    let env = env().await?;
    let parked = task("never placed", &["nowhere"]);
    env.board.create(&parked).await?;
    assert_eq!(
        env.board.cancel(&parked.id).await?.state,
        TaskState::Cancelled
    );

    let mut w = env.worker("runner", &["linux"], 1).await?;
    let spec = task("long", &["linux"]);
    env.board.create(&spec).await?;
    let run = w.next_run(T).await?;
    w.started(&run).await?;
    env.board
        .wait_state(&spec.id, TaskState::Running, T)
        .await?;
    env.board.cancel(&spec.id).await?;
    match w.next_order(T).await? {
        broker::messages::WorkItem::Cancel(c) => assert_eq!((c.task_id, c.attempt), (spec.id, 1)),
        other => panic!("expected cancel, got {other:?}"),
    }
    w.finished(&run, Outcome::Cancelled).await?;
    env.board
        .wait_state(&spec.id, TaskState::Cancelled, T)
        .await?;
    env.scheduler.stop().await
}

#[tokio::test]
async fn a_continued_session_runs_where_its_transcript_is_or_waits_for_it() -> anyhow::Result<()> {
    let env = env().await?;
    let mut home = env.worker("home", &["linux", "gpu"], 2).await?;
    let first = task("first session", &["linux"]);
    env.board.create(&first).await?;
    let run = home.next_run(T).await?;
    home.started(&run).await?;
    home.finished(&run, Outcome::Succeeded).await?;
    env.board
        .wait_state(&first.id, TaskState::Succeeded, T)
        .await?;

    // A tighter fit is free, but the transcript is on `home`.
    let mut plain = env.worker("plain", &["linux"], 2).await?;
    let mut next = task("continue it", &["linux"]);
    next.continue_session = Some(run.session);
    env.board.create(&next).await?;
    let next_run = home.next_run(T).await?;
    assert_eq!(next_run.task.id, next.id);
    home.started(&next_run).await?;
    assert!(plain.no_order_within(Duration::from_millis(200)).await);

    // With `home` gone, a continuation waits for it, with the reason.
    home.go_silent();
    let mut later = task("continue again", &["linux"]);
    later.continue_session = Some(run.session);
    env.board.create(&later).await?;
    let d = env
        .board
        .wait_for(&later.id, "parked for home", Duration::from_secs(30), |d| {
            matches!(d.summary.parked, Some(ParkReason::Home { .. }))
        })
        .await?;
    assert_eq!(d.summary.state, TaskState::Queued);
    // So does one continuing the session `home` was running when it went.
    let mut waits = task("waits for the share", &["linux"]);
    waits.continue_session = Some(next_run.session);
    env.board.create(&waits).await?;
    env.board
        .wait_for(&waits.id, "parked for home", Duration::from_secs(30), |d| {
            matches!(d.summary.parked, Some(ParkReason::Home { .. }))
        })
        .await?;
    assert!(plain.no_order_within(Duration::from_millis(200)).await);

    // The lost worker's last report shares that session's transcript: the
    // waiting continuation moves to `plain`, and so does a new one.
    let shared = SharedTranscript {
        session: next_run.session,
        segment: 0,
        bytes: 42,
        digest: "SHA-256=test".into(),
    };
    home.finished_sharing(&next_run, Outcome::Succeeded, Some(shared.clone()))
        .await?;
    let moved = plain.next_run(T).await?;
    assert_eq!(moved.task.id, waits.id);
    assert_eq!(
        moved.continue_from.as_ref(),
        Some(&shared),
        "the order names the share"
    );
    let mut elsewhere = task("continue the shared one", &["linux"]);
    elsewhere.continue_session = Some(next_run.session);
    env.board.create(&elsewhere).await?;
    let elsewhere_run = plain.next_run(T).await?;
    assert_eq!(elsewhere_run.task.id, elsewhere.id);
    let d = env.board.show(&next.id).await?;
    assert_eq!(d.attempts[0].transcript, Some(shared));
    // The unshared session still waits for `home`.
    assert!(plain.no_order_within(Duration::from_millis(200)).await);

    // A worker that cannot use the share (gone from the store, or replaced)
    // refuses the attempt: the share is forgotten and the continuation waits
    // for `home` again, its try not counted, never failed.
    plain.finished(&elsewhere_run, Outcome::Rejected).await?;
    let d = env
        .board
        .wait_for(
            &elsewhere.id,
            "parked for home again",
            Duration::from_secs(30),
            |d| matches!(d.summary.parked, Some(ParkReason::Home { .. })),
        )
        .await?;
    assert_eq!(d.summary.state, TaskState::Queued);
    assert_eq!(env.board.show(&next.id).await?.attempts[0].transcript, None);

    // An unknown session is refused, never started from nothing.
    let mut orphan = task("continue nothing", &["linux"]);
    orphan.continue_session = Some(broker::SessionId::new());
    let err = env.board.create(&orphan).await.unwrap_err().to_string();
    assert!(err.contains("continue_session"), "{err}");
    env.scheduler.stop().await
}
