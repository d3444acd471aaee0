//! Cost modes end to end, against a real nats-server and an in-process
//! worker: a `set-cost-mode` (the KV put it makes) mid-session changes the
//! very next append of a running session; a task crossing its spend
//! ceiling is stopped and ends `budget_exceeded` with the figures; a session
//! too big for its mode escalates one step, stops at the operator's
//! ceiling and rolls over; no configuration can shadow a threshold.

mod worker_support;

use std::collections::BTreeMap;
use std::time::Duration;

use broker::cost_mode::CostMode;
use broker::messages::session::{Event, SessionEvent};
use broker::messages::{decode, Outcome, ReportBody, RunOrder, TaskSpec, WorkItem};
use broker::provision::{CONFIG_BUCKET, COST_CEILING_KEY, COST_MODE_KEY};
use broker::{subjects, SessionId, Tag, TagSet};
use costmode::{segment, Ledger};
use futures::StreamExt;
use harness::within;
use worker::profiles::AgentProfile;
use worker_support::{fake_agent, Fleet, Worker, LONG};

/// A pi-format agent written in sh: `turns` turns, each an assistant
/// message with usage, a tool call and its result, then `pause` seconds of
/// silence; then a last message and `agent_end`.
const PI_TURNS: &str = r#"
turns=$1; pause=$2; out=10
echo '{"type":"session","version":3,"id":"sh","timestamp":"0","cwd":"/"}'
i=1
while [ "$i" -le "$turns" ]; do
  echo '{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"turn '"$i"'"}],"usage":{"input":10,"output":'"$out"',"cost":{"total":0.0001}},"stopReason":"toolUse"}}'
  echo '{"type":"tool_execution_start","toolCallId":"c'"$i"'","toolName":"read","args":{"path":"src/f'"$i"'.rs"}}'
  echo '{"type":"tool_execution_end","toolCallId":"c'"$i"'","toolName":"read","result":{"content":[{"type":"text","text":"ok"}]},"isError":false}'
  sleep "$pause"
  i=$((i+1))
done
echo '{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"done"}],"usage":{"input":10,"output":1},"stopReason":"stop"}}'
echo '{"type":"agent_end","messages":[]}'
"#;

/// One turn, then `lines` stderr lines of 2,000 bytes in the same turn.
const PI_ONE_BIG_TURN: &str = r#"
echo '{"type":"session","version":3,"id":"sh","timestamp":"0","cwd":"/"}'
echo '{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"big"}],"usage":{"input":10,"output":1},"stopReason":"toolUse"}}'
awk -v n="$1" 'BEGIN { s = sprintf("%2000s", ""); gsub(/ /, "x", s); for (i = 0; i < n; i++) print s > "/dev/stderr" }'
echo '{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"done"}],"usage":{"input":10,"output":1},"stopReason":"stop"}}'
echo '{"type":"agent_end","messages":[]}'
"#;

/// A pi-format agent that reports `tokens` output tokens, then works on
/// (silently) for a minute: only a stop can end it early.
const PI_SPEND_THEN_WORK: &str = r#"
echo '{"type":"session","version":3,"id":"sh","timestamp":"0","cwd":"/"}'
echo '{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"spending"}],"usage":{"input":10,"output":'"$1"'},"stopReason":"toolUse"}}'
sleep 60
"#;

fn profile(name: &str, argv: Vec<String>) -> AgentProfile {
    AgentProfile {
        name: Tag::parse(name).expect("tag"),
        argv,
        models: BTreeMap::new(),
        env: BTreeMap::new(),
    }
}

/// `pi` runs `script` under sh with `args`; `fake` runs the fake agent.
fn sh_profile(name: &str, script: &str, args: &[&str]) -> AgentProfile {
    let mut argv = vec!["sh".into(), "-c".into(), script.into(), "sh".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.push("{prompt}".into());
    profile(name, argv)
}

fn agent_task(agent: &str, own_mode: Option<CostMode>) -> TaskSpec {
    let mut t = TaskSpec::command("cost", TagSet::new(), vec![]);
    t.agent = Tag::parse(agent).expect("tag");
    t.command = Vec::new();
    t.prompt = Some("go".into());
    t.cost_mode = own_mode;
    t
}

async fn run(
    fleet: &Fleet,
    w: &Worker,
    task: &TaskSpec,
    mode: CostMode,
) -> anyhow::Result<SessionId> {
    fleet
        .place(&w.id, worker_support::run_order(task, mode))
        .await
}

async fn put(fleet: &Fleet, key: &str, value: &str) -> anyhow::Result<()> {
    let kv = fleet.js.get_key_value(CONFIG_BUCKET).await?;
    kv.put(key, value.to_string().into()).await?;
    Ok(())
}

/// Every event of every segment of `session`'s transcript, in file order.
fn transcript(w: &Worker, session: &SessionId) -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0.. {
        let Ok(data) = std::fs::read(segment::path(w.state.path(), session, i)) else {
            break;
        };
        out.extend(Ledger::from_bytes(&data).entries().map(|e| e.event.clone()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cost_mode_mid_session_changes_the_next_append() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet
        .worker("costly", |cfg| {
            cfg.agents
                .insert(sh_profile("pi", PI_TURNS, &["14", "0.6"]));
        })
        .await?;
    put(&fleet, COST_MODE_KEY, "max").await?;
    // The session starts once the worker applies `max` (its heartbeat says so).
    let id = w.id.clone();
    fleet
        .heartbeat(|hb| hb.worker == id && hb.cost_mode == Some(CostMode::Max))
        .await?;
    let task = agent_task("pi", None);
    let session = SessionId::new();
    let mut events = fleet
        .client
        .subscribe(subjects::session_any(&session))
        .await?;
    fleet.client.flush().await?;
    let order = RunOrder {
        task: task.clone(),
        attempt: 1,
        session,
        cost_mode: CostMode::Max,
        spent: Default::default(),
        continue_from: None,
    };
    fleet.order(&w.id, WorkItem::Run(Box::new(order))).await?;

    // Under max: 8 turns, no compaction.
    let mut turn_ends = 0;
    let mut last_seq = 0;
    within(LONG, "8 turns under max", async {
        while let Some(msg) = events.next().await {
            let ev: SessionEvent = decode(&msg.payload)?;
            last_seq = ev.seq;
            assert!(
                !matches!(ev.event, Event::Summary(_)),
                "max compacts nothing at 8 turns"
            );
            if matches!(ev.event, Event::ToolEnd { .. }) {
                turn_ends += 1;
                if turn_ends == 8 {
                    return Ok(());
                }
            }
        }
        anyhow::bail!("session subscription ended")
    })
    .await??;

    // The agent is silent for 0.6 s now: switch the fleet to fast.
    put(&fleet, COST_MODE_KEY, "fast").await?;
    let summary = within(LONG, "a summary after the switch", async {
        while let Some(msg) = events.next().await {
            let ev: SessionEvent = decode(&msg.payload)?;
            if let Event::Summary(s) = ev.event {
                return Ok((ev.seq, s));
            }
        }
        anyhow::bail!("session subscription ended")
    })
    .await??;
    let (seq, s) = summary;
    // The next append (the 9th turn's message, seq last+1) compacted.
    assert_eq!(seq, last_seq + 2, "compacted at the very next append");
    assert_eq!(s.mode, CostMode::Fast);
    assert_eq!(s.turns, 7, "9 turns, fast keeps 2");
    assert!(s.reason.contains("9 uncompacted turns > 5"), "{}", s.reason);
    assert!(s.files.contains(&"src/f1.rs".to_string()));
    assert_eq!(s.tools.get("read"), Some(&7));

    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::Succeeded, "{reason}");
    // The transcript on disk holds one summary and at most fast's turns.
    let data = std::fs::read(segment::path(w.state.path(), &session, 0))?;
    let ledger = Ledger::from_bytes(&data);
    assert!(ledger.summary().is_some());
    assert!(ledger.turn_count() <= 5, "{} turns", ledger.turn_count());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_stop_with_the_fake_agent_reporting_usage() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let fake = fake_agent().display().to_string();
    let w = fleet
        .worker("spender", |cfg| {
            cfg.agents.insert(profile(
                "pi",
                vec![
                    fake,
                    "--usage-tokens".into(),
                    "100000".into(),
                    "{prompt}".into(),
                ],
            ));
        })
        .await?;
    let task = agent_task("pi", Some(CostMode::Fast));
    run(&fleet, &w, &task, CostMode::Fast).await?;
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::BudgetExceeded, "{reason}");
    // Two responses: 1,200 + 50,000 then 1,200 + 100,000 tokens (under
    // 200,000), at $0.0036 + $0.000015 per output token: $2.2572 > $1.
    assert!(
        reason.contains("152400 tokens of 200000, $2.2572 of $1.00"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_stop_kills_a_running_agent() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet
        .worker("spender2", |cfg| {
            cfg.agents
                .insert(sh_profile("pi", PI_SPEND_THEN_WORK, &["250000"]));
        })
        .await?;
    let task = agent_task("pi", Some(CostMode::Fast));
    run(&fleet, &w, &task, CostMode::Fast).await?;
    let started = std::time::Instant::now();
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::BudgetExceeded, "{reason}");
    assert!(reason.contains("250010 tokens of 200000"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped, not waited for"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_stops_at_the_ceiling_then_rolls_over() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet
        .worker("bigturn", |cfg| {
            cfg.agents
                .insert(sh_profile("pi", PI_ONE_BIG_TURN, &["1400"]));
        })
        .await?;
    // The ceiling first: once the worker's heartbeat shows the mode, written
    // after it, the worker has seen both (one ordered watch).
    put(&fleet, COST_CEILING_KEY, "smart").await?;
    put(&fleet, COST_MODE_KEY, "fast").await?;
    let id = w.id.clone();
    fleet
        .heartbeat(|hb| hb.worker == id && hb.cost_mode == Some(CostMode::Fast))
        .await?;
    let task = agent_task("pi", None);
    let session = run(&fleet, &w, &task, CostMode::Fast).await?;
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::Succeeded, "{reason}");
    let events = transcript(&w, &session);
    let escalations: Vec<(CostMode, CostMode, CostMode)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Escalation {
                from, to, ceiling, ..
            } => Some((*from, *to, *ceiling)),
            _ => None,
        })
        .collect();
    assert_eq!(
        escalations,
        [(CostMode::Fast, CostMode::Smart, CostMode::Smart)],
        "one step, never past the ceiling"
    );
    // The escalation reaches the board through the attempt's progress.
    let reported = fleet
        .seen_reports
        .iter()
        .filter(|r| r.task_id == task.id)
        .find_map(|r| match &r.body {
            ReportBody::Progress {
                escalation: Some(e),
                ..
            } => Some((e.from, e.to, e.reason.clone())),
            _ => None,
        });
    assert!(
        matches!(&reported, Some((CostMode::Fast, CostMode::Smart, reason)) if !reason.is_empty()),
        "{reported:?}"
    );
    let segments = events
        .iter()
        .filter(|e| matches!(e, Event::Segment { .. }))
        .count();
    assert!(segments >= 1, "rolled over at the ceiling");
    assert!(segment::path(w.state.path(), &session, 1).exists());
    // Every segment file is within smart's limit plus one line.
    for i in 0..=segments as u32 {
        let len = std::fs::metadata(segment::path(w.state.path(), &session, i))?.len();
        assert!(
            len <= CostMode::Smart.limits().session_bytes + 4096,
            "segment {i}: {len} bytes"
        );
    }
    Ok(())
}

/// No shadow configuration: a `[cost]` table or a threshold key in
/// worker.toml is refused, and thresholds read the same whatever the
/// environment says.
/// One tool call whose result is `$1` bytes of `x` on one line (under the
/// reader's line bound), then a last message and `agent_end`.
const PI_BIG_RESULT: &str = r#"
echo '{"type":"session","version":3,"id":"sh","timestamp":"0","cwd":"/"}'
echo '{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"reading"}],"usage":{"input":10,"output":1},"stopReason":"toolUse"}}'
echo '{"type":"tool_execution_start","toolCallId":"c1","toolName":"read","args":{"path":"big.log"}}'
printf '%s' '{"type":"tool_execution_end","toolCallId":"c1","toolName":"read","result":{"content":[{"type":"text","text":"'
head -c "$1" /dev/zero | tr '\0' x
echo '"}]},"isError":false}'
echo '{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"done"}],"usage":{"input":10,"output":1},"stopReason":"stop"}}'
echo '{"type":"agent_end","messages":[]}'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_tool_result_keeps_the_size_and_sha256_of_the_whole() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet
        .worker("hasher", |cfg| {
            cfg.agents
                .insert(sh_profile("pi", PI_BIG_RESULT, &["200000"]));
        })
        .await?;
    let task = agent_task("pi", Some(CostMode::Fast));
    let session = run(&fleet, &w, &task, CostMode::Fast).await?;
    let (outcome, _, reason) = fleet.finished(&task).await?;
    assert_eq!(outcome, Outcome::Succeeded, "{reason}");
    let whole = "x".repeat(200_000);
    let sha = costmode::tool_result::sha256_hex(whole.as_bytes());
    let result = transcript(&w, &session)
        .into_iter()
        .find_map(|e| match e {
            Event::ToolEnd { result, .. } => Some(result),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no tool_end in the transcript"))?;
    assert!(
        result.contains(&format!("200000 bytes, sha256 {sha} of 200000 bytes")),
        "{}",
        &result[..result.len().min(300)]
    );
    assert!(
        result.len() < 5_000,
        "fast keeps 4,096 bytes: {}",
        result.len()
    );
    Ok(())
}

#[test]
fn no_shadow_configuration_in_worker_toml() {
    let flags = worker::config::WorkerFlags::default();
    for text in [
        "worker_id = \"w\"\nstate_dir = \"/tmp/x\"\n[cost]\nsession_bytes = 1\n",
        "worker_id = \"w\"\nstate_dir = \"/tmp/x\"\nsession_bytes = 1\n",
        "worker_id = \"w\"\nstate_dir = \"/tmp/x\"\ncost_mode = \"max\"\n",
        "worker_id = \"w\"\nstate_dir = \"/tmp/x\"\n[limits]\nuncompacted_turns = 100\n",
    ] {
        assert!(
            worker::config::resolve(Some(text), &flags).is_err(),
            "accepted: {text}"
        );
    }
    std::env::set_var("COLIBRI_SESSION_BYTES", "1");
    std::env::set_var("COLIBRI_UNCOMPACTED_TURNS", "1");
    assert_eq!(CostMode::Fast.limits().session_bytes, 500_000);
    assert_eq!(CostMode::Fast.limits().uncompacted_turns, 5);
}
