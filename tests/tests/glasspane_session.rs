//! Glasspane end to end against a real nats-server: a fixture agent's output
//! is pumped through `run_session`, a wildcard subscriber sees every event in
//! seq order, a late `follow(from_start)` replays the session and ends, the
//! pane stalls and resumes, and a flood drops live events but accounts for
//! every one of them.

use std::time::Duration;

use broker::messages::session::{Event, Pane, SessionEvent};
use broker::{SessionId, TaskId, WorkerId};
use futures::StreamExt;
use glasspane::{
    follow, run_session, AgentEnding, AgentExit, AgentFormat, LiveState, PumpConfig, SessionMeta,
    SessionPublisher, Transcript,
};
use harness::{eventually, within, NatsServer};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

const T: Duration = Duration::from_secs(20);

fn meta() -> SessionMeta {
    SessionMeta {
        session: SessionId::new(),
        task_id: TaskId::new(),
        attempt: 1,
        worker: WorkerId::parse("debby").expect("valid worker id"),
    }
}

fn fixture(rel: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../glasspane/tests/fixtures")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn setup() -> anyhow::Result<(
    NatsServer,
    async_nats::Client,
    async_nats::jetstream::Context,
)> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    within(
        T,
        "provision",
        broker::provision::provision_all(&js, &Default::default()),
    )
    .await??;
    Ok((nats, client, js))
}

/// Reads decoded events from a core subscription until the `end` event.
async fn collect_until_end(sub: &mut async_nats::Subscriber) -> anyhow::Result<Vec<SessionEvent>> {
    let mut out = Vec::new();
    while let Some(msg) = within(T, "live session event", sub.next()).await? {
        let e: SessionEvent = broker::messages::decode(&msg.payload)?;
        assert_eq!(
            msg.subject.as_str(),
            broker::subjects::session(&e.session, &e.worker, e.kind())
        );
        let end = e.event.is_end();
        out.push(e);
        if end {
            break;
        }
    }
    Ok(out)
}

#[tokio::test]
async fn pi_session_is_live_in_order_and_replays_after_the_end() -> anyhow::Result<()> {
    let (_nats, client, js) = setup().await?;
    let state = tempfile::tempdir()?;
    let meta = meta();
    let mut sub = client.subscribe(broker::subjects::SESSION_ALL).await?;
    within(T, "subscribe flush", client.flush()).await??;

    let stdout = fixture("pi/success.jsonl");
    let publisher = SessionPublisher::spawn(client.clone(), 1024);
    let transcript = Transcript::create(state.path(), &meta.session, Default::default())?;
    let (live, live_rx) = watch::channel(LiveState::default());
    let summary = within(
        T,
        "run_session",
        run_session(
            &stdout[..],
            &b"warning: using default model\n"[..],
            async { AgentEnding::from(AgentExit::success()) },
            meta.clone(),
            AgentFormat::for_agent("pi"),
            PumpConfig::default(),
            publisher,
            Some(transcript),
            live,
        ),
    )
    .await?;
    assert_eq!(
        summary.outcome,
        broker::messages::Outcome::Succeeded,
        "{summary:?}"
    );
    assert_eq!(summary.dropped, 0);
    assert_eq!(summary.stderr_lines, 1);
    assert!(
        summary.publish.as_ref().is_ok_and(|p| p.end_acked),
        "{summary:?}"
    );
    assert_eq!(live_rx.borrow().pane, Pane::Stopped);
    assert_eq!(live_rx.borrow().usage.input_tokens, 2700);

    let live_events = collect_until_end(&mut sub).await?;
    let seqs: Vec<u64> = live_events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=summary.events).collect::<Vec<_>>());
    assert!(live_events.iter().all(|e| e.session == meta.session
        && e.task_id == meta.task_id
        && e.attempt == 1
        && e.worker == meta.worker));
    let kinds: Vec<&str> = live_events.iter().map(SessionEvent::kind).collect();
    assert_eq!(&kinds[..2], ["lifecycle", "lifecycle"]); // starting, running
    assert!(kinds.contains(&"tool_start") && kinds.contains(&"usage") && kinds.contains(&"raw"));
    assert!(matches!(
        live_events[live_events.len() - 2].event,
        Event::Lifecycle {
            pane: Pane::Stopped,
            ..
        }
    ));

    // Transcript: the same events, one per line.
    let text = std::fs::read_to_string(glasspane::transcript::transcript_path(
        state.path(),
        &meta.session,
    ))?;
    let from_disk: Vec<SessionEvent> = text
        .lines()
        .map(|l| broker::messages::decode(l.as_bytes()))
        .collect::<Result<_, _>>()?;
    assert_eq!(from_disk, live_events);

    // A late watcher replays everything and its stream ends by itself.
    let replay = within(T, "follow", follow(&js, meta.session, true)).await??;
    let replayed: Vec<SessionEvent> = within(T, "replay to the end", replay.collect::<Vec<_>>())
        .await?
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert_eq!(replayed, live_events);
    Ok(())
}

#[tokio::test]
async fn claude_without_result_fails_and_says_so() -> anyhow::Result<()> {
    let (_nats, client, js) = setup().await?;
    let meta = meta();
    // Follow from now, before the session starts.
    let events = within(T, "follow", follow(&js, meta.session, false)).await??;
    let stdout = fixture("claude/missing_result.jsonl");
    let (live, _rx) = watch::channel(LiveState::default());
    let summary = within(
        T,
        "run_session",
        run_session(
            &stdout[..],
            tokio::io::empty(),
            async { AgentEnding::from(AgentExit::code(1)) },
            meta.clone(),
            AgentFormat::Claude,
            PumpConfig::default(),
            SessionPublisher::spawn(client.clone(), 1024),
            None,
            live,
        ),
    )
    .await?;
    assert_eq!(summary.outcome, broker::messages::Outcome::Failed);
    let reason = summary.reason.clone().unwrap_or_default();
    assert!(reason.contains("without its final result line"), "{reason}");
    let got: Vec<SessionEvent> = within(T, "followed session", events.collect::<Vec<_>>())
        .await?
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert_eq!(got.len() as u64, summary.events);
    match &got.last().map(|e| &e.event) {
        Some(Event::End {
            success: false,
            reason: Some(r),
        }) => assert_eq!(r, &reason),
        other => panic!("last event {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn pane_stalls_when_silent_and_runs_again_on_output() -> anyhow::Result<()> {
    let (_nats, client, _js) = setup().await?;
    let (mut agent_out, stdout) = tokio::io::duplex(4096);
    let (live, live_rx) = watch::channel(LiveState::default());
    let config = PumpConfig {
        stall_after: Duration::from_millis(200),
        ..Default::default()
    };
    let pump = tokio::spawn(run_session(
        stdout,
        tokio::io::empty(),
        async { AgentEnding::from(AgentExit::success()) },
        meta(),
        AgentFormat::Text,
        config,
        SessionPublisher::spawn(client, 64),
        None,
        live,
    ));
    let pane = |want: Pane| {
        let rx = live_rx.clone();
        move || {
            let ok = rx.borrow().pane == want;
            async move { ok.then_some(()) }
        }
    };
    within(T, "write", agent_out.write_all(b"working\n")).await??;
    eventually(T, "pane running", pane(Pane::Running)).await?;
    eventually(T, "pane stalled after silence", pane(Pane::Stalled)).await?;
    within(T, "write", agent_out.write_all(b"still here\n")).await??;
    eventually(T, "pane running again", pane(Pane::Running)).await?;
    drop(agent_out);
    let summary = within(T, "pump end", pump).await??;
    assert_eq!(summary.outcome, broker::messages::Outcome::Succeeded);
    assert_eq!(live_rx.borrow().pane, Pane::Stopped);
    Ok(())
}

#[tokio::test]
async fn flood_drops_live_events_but_accounts_for_each() -> anyhow::Result<()> {
    let (_nats, client, _js) = setup().await?;
    let state = tempfile::tempdir()?;
    let meta = meta();
    let mut sub = client
        .subscribe(broker::subjects::session_any(&meta.session))
        .await?;
    within(T, "subscribe flush", client.flush()).await??;
    let mut stdout = Vec::new();
    for i in 0..20_000 {
        stdout.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    let (live, _rx) = watch::channel(LiveState::default());
    let summary = within(
        T,
        "run_session",
        run_session(
            &stdout[..],
            tokio::io::empty(),
            async { AgentEnding::from(AgentExit::success()) },
            meta.clone(),
            AgentFormat::Text,
            PumpConfig::default(),
            SessionPublisher::spawn(client.clone(), 4),
            Some(Transcript::create(
                state.path(),
                &meta.session,
                Default::default(),
            )?),
            live,
        ),
    )
    .await?;
    let live_events = collect_until_end(&mut sub).await?;
    let announced: u64 = live_events
        .iter()
        .map(|e| match e.event {
            Event::Dropped { count } => count,
            _ => 0,
        })
        .sum();
    assert_eq!(announced, summary.dropped);
    assert_eq!(live_events.len() as u64 + summary.dropped, summary.events);
    // The transcript has every event, gap-free.
    let text = std::fs::read_to_string(glasspane::transcript::transcript_path(
        state.path(),
        &meta.session,
    ))?;
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| broker::messages::decode::<SessionEvent>(l.as_bytes()).map(|e| e.seq))
        .collect::<Result<_, _>>()?;
    assert_eq!(seqs, (1..=summary.events).collect::<Vec<_>>());
    Ok(())
}

/// One session publishes at most `max_live_bytes` of bulky events live (so
/// stored in the sessions stream); past it they are dropped live and
/// counted, lifecycle and the end still go out, and the transcript keeps all.
#[tokio::test]
async fn live_bytes_per_session_are_bounded() -> anyhow::Result<()> {
    let (_nats, client, _js) = setup().await?;
    let state = tempfile::tempdir()?;
    let meta = meta();
    let mut sub = client
        .subscribe(broker::subjects::session_any(&meta.session))
        .await?;
    within(T, "subscribe flush", client.flush()).await??;
    let mut stdout = Vec::new();
    for i in 0..2_000 {
        stdout.extend_from_slice(format!("line {i} {}\n", "x".repeat(100)).as_bytes());
    }
    let config = PumpConfig {
        max_live_bytes: 20_000,
        ..Default::default()
    };
    let (live, _rx) = watch::channel(LiveState::default());
    let summary = within(
        T,
        "run_session",
        run_session(
            &stdout[..],
            tokio::io::empty(),
            async { AgentEnding::from(AgentExit::success()) },
            meta.clone(),
            AgentFormat::Text,
            config,
            // Room for everything: only the byte bound drops.
            SessionPublisher::spawn(client.clone(), 4096),
            Some(Transcript::create(
                state.path(),
                &meta.session,
                Default::default(),
            )?),
            live,
        ),
    )
    .await?;
    let live_events = collect_until_end(&mut sub).await?;
    let bulky_bytes: usize = live_events
        .iter()
        .filter(|e| e.event.kind() == "raw")
        .map(|e| serde_json::to_vec(e).map(|v| v.len()).unwrap_or(0))
        .sum();
    assert!(
        bulky_bytes <= 20_000,
        "{bulky_bytes} bytes of raw lines live"
    );
    assert!(summary.dropped > 1_500, "{} dropped", summary.dropped);
    let announced: u64 = live_events
        .iter()
        .map(|e| match e.event {
            Event::Dropped { count } => count,
            _ => 0,
        })
        .sum();
    assert_eq!(announced, summary.dropped, "every drop is announced");
    assert!(live_events.iter().any(|e| e.event.is_end()));
    let text = std::fs::read_to_string(glasspane::transcript::transcript_path(
        state.path(),
        &meta.session,
    ))?;
    assert_eq!(
        text.lines().count() as u64,
        summary.events,
        "the transcript keeps all"
    );
    Ok(())
}

/// `colibri`, built once for this test binary.
fn colibri_bin() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
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

/// Stores `event` in the sessions stream on the subject of `on` (the
/// publishing host's own, which its permissions allow).
async fn store_event(
    js: &async_nats::jetstream::Context,
    on: &WorkerId,
    event: &SessionEvent,
) -> anyhow::Result<()> {
    let subject = broker::subjects::session(&event.session, on, event.kind());
    let ack = js.publish(subject, broker::messages::encode(event)).await?;
    within(
        T,
        "session event stored",
        std::future::IntoFuture::into_future(ack),
    )
    .await??;
    Ok(())
}

/// Regression (issue 13): a host may publish only on its own session
/// subjects, but `colibri watch` believed any host that did, so a forged
/// `end` from another host into debby's session made `watch` exit 0 while
/// the task still ran. Now only the worker of the session's attempt (from
/// the board) speaks for it; the forged event is skipped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_session_end_from_another_worker_is_ignored_by_watch() -> anyhow::Result<()> {
    let (nats, client, js) = setup().await?;
    let dir = tempfile::tempdir()?;
    let _scheduler = harness::SchedulerHandle::start(&nats, &dir.path().join("board.db")).await?;
    let mut debby = harness::SimWorker::start(nats.client().await?, "debby", &["linux"], 1).await?;
    let board = harness::BoardClient::new(client.clone());
    let spec = broker::messages::TaskSpec::command(
        "watched",
        broker::TagSet::parse_lists(["linux"])?,
        vec!["/bin/true".into()],
    );
    board.create(&spec).await?;
    let run = debby.next_run(T).await?;
    debby.started(&run).await?;

    let event = |worker: &WorkerId, seq, event| SessionEvent {
        v: 1,
        session: run.session,
        seq,
        task_id: run.task.id,
        attempt: run.attempt,
        worker: worker.clone(),
        at_ms: broker::time_ms::now_ms(),
        event,
    };
    let domedog = WorkerId::parse("domedog")?;
    let running = Event::Lifecycle {
        pane: Pane::Running,
        reason: None,
    };
    let forged = Event::End {
        success: true,
        reason: Some("forged by domedog".into()),
    };
    let real = Event::End {
        success: false,
        reason: Some("the real end".into()),
    };
    store_event(&js, &debby.id, &event(&debby.id, 1, running)).await?;
    store_event(&js, &domedog, &event(&domedog, 2, forged)).await?;
    store_event(&js, &debby.id, &event(&debby.id, 2, real)).await?;

    for id in [run.task.id.0, run.session.0] {
        let mut cmd = tokio::process::Command::new(colibri_bin());
        cmd.args(["watch", &id.to_string(), "--json"])
            .env("COLIBRI_NATS_URL", nats.url())
            .kill_on_drop(true);
        let out = within(T, "colibri watch", cmd.output()).await??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "watch {id}: {stdout}{stderr}");
        assert!(stderr.contains("the real end"), "watch {id}: {stderr}");
        assert!(
            !stdout.contains("forged by domedog"),
            "watch {id}: {stdout}"
        );
        assert!(
            stderr.contains("skipped 1 event(s) not published by the session's worker"),
            "watch {id}: {stderr}"
        );
    }
    Ok(())
}
