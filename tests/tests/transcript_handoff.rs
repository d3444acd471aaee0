//! A continued session on another worker, against a real nats-server and
//! two in-process workers: the first worker shares the session's
//! transcript in the transcript object store when its attempt ends (and
//! says so in the Finished report); a second worker, which never ran the
//! session, fetches it byte for byte and builds the continued prompt from
//! it; a transcript replaced in the store is refused by its digest; a
//! session shared nowhere is refused, never started from nothing.

mod worker_support;

use std::collections::BTreeMap;
use std::path::Path;

use broker::cost_mode::CostMode;
use broker::messages::{Outcome, ReportBody, RunOrder, SharedTranscript, TaskSpec};
use broker::{SessionId, Tag, TagSet};
use costmode::segment;
use harness::within;
use worker::profiles::AgentProfile;
use worker_support::{Fleet, Worker, LONG};

/// A pi-format agent in sh: writes the prompt it was given ($2) to
/// `$1/<task id>.prompt`, then three turns that each read a file, then
/// `agent_end`.
const PI_RECORDING: &str = r#"
printf '%s' "$2" > "$1/$COLIBRI_TASK_ID.prompt"
echo '{"type":"session","version":3,"id":"sh","timestamp":"0","cwd":"/"}'
for i in 1 2 3; do
  echo '{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"looked at part '"$i"'"}],"usage":{"input":10,"output":5},"stopReason":"toolUse"}}'
  echo '{"type":"tool_execution_start","toolCallId":"c'"$i"'","toolName":"read","args":{"path":"src/part'"$i"'.rs"}}'
  echo '{"type":"tool_execution_end","toolCallId":"c'"$i"'","toolName":"read","result":{"content":[{"type":"text","text":"ok"}]},"isError":false}'
done
echo '{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"done"}],"usage":{"input":10,"output":1},"stopReason":"stop"}}'
echo '{"type":"agent_end","messages":[]}'
"#;

fn recording_pi(prompts: &Path) -> AgentProfile {
    let dir = prompts.display().to_string();
    AgentProfile {
        name: Tag::parse("pi").expect("tag"),
        argv: ["sh", "-c", PI_RECORDING, "sh", &dir, "{prompt}"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        models: BTreeMap::new(),
        env: BTreeMap::new(),
    }
}

fn pi_task(prompt: &str, continues: Option<SessionId>) -> TaskSpec {
    let mut t = TaskSpec::command("handoff", TagSet::new(), vec![]);
    t.agent = Tag::parse("pi").expect("tag");
    t.command = Vec::new();
    t.prompt = Some(prompt.into());
    t.continue_session = continues;
    t
}

async fn run(fleet: &Fleet, w: &Worker, task: &TaskSpec) -> anyhow::Result<SessionId> {
    run_from(fleet, w, task, None).await
}

/// Runs `task` on `w`, its order carrying `continue_from` as the scheduler
/// would for a continued session whose transcript was shared.
async fn run_from(
    fleet: &Fleet,
    w: &Worker,
    task: &TaskSpec,
    continue_from: Option<SharedTranscript>,
) -> anyhow::Result<SessionId> {
    let order = RunOrder {
        continue_from,
        ..worker_support::run_order(task, CostMode::Smart)
    };
    fleet.place(&w.id, order).await
}

async fn shared(fleet: &mut Fleet, task: &TaskSpec) -> anyhow::Result<Option<SharedTranscript>> {
    match fleet.report(task, "finished").await?.body {
        ReportBody::Finished {
            outcome,
            reason,
            transcript,
            ..
        } => {
            anyhow::ensure!(outcome == Outcome::Succeeded, "{outcome:?}: {reason:?}");
            Ok(transcript)
        }
        other => anyhow::bail!("not a finished report: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_continues_on_another_worker_from_the_shared_transcript() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let prompts = tempfile::tempdir()?;
    let prompt_of = |task: &TaskSpec| prompts.path().join(format!("{}.prompt", task.id));
    let home = fleet
        .worker("home", |cfg| {
            cfg.agents.insert(recording_pi(prompts.path()))
        })
        .await?;
    let first = pi_task("map the parser", None);
    let session = run(&fleet, &home, &first).await?;
    let share = shared(&mut fleet, &first)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the Finished report shares no transcript"))?;
    assert_eq!(
        std::fs::read_to_string(prompt_of(&first))?,
        "map the parser"
    );
    let original = std::fs::read(segment::path(home.state.path(), &session, 0))?;
    assert_eq!(share.session, session);
    assert_eq!(share.segment, 0);
    assert_eq!(share.bytes, original.len() as u64);
    assert!(share.digest.starts_with("SHA-256="), "{}", share.digest);

    // Home goes away; a worker that never ran the session continues it.
    home.shutdown.cancel();
    within(LONG, "home stops", home.handle).await???;
    let other = fleet
        .worker("other", |cfg| {
            cfg.agents.insert(recording_pi(prompts.path()))
        })
        .await?;
    let next = pi_task("now fix the parser", Some(session));
    let next_session = run_from(&fleet, &other, &next, Some(share.clone())).await?;
    let next_share = shared(&mut fleet, &next).await?;
    let fetched = std::fs::read(segment::path(other.state.path(), &session, 0))?;
    assert_eq!(fetched, original, "fetched byte for byte");
    let prompt = std::fs::read_to_string(prompt_of(&next))?;
    assert!(prompt.contains("now fix the parser"), "{prompt}");
    assert!(prompt.contains("looked at part 3"), "{prompt}");
    // The continuation is itself continuable elsewhere.
    let next_share =
        next_share.ok_or_else(|| anyhow::anyhow!("the continuation shared nothing"))?;
    assert_eq!(next_share.session, next_session);

    // A transcript replaced in the store (by another host) is refused: its
    // digest is not the one its worker reported.
    let store = fleet
        .js
        .get_object_store(broker::provision::TRANSCRIPTS_BUCKET)
        .await?;
    store
        .put(
            next_session.to_string().as_str(),
            &mut &b"{\"forged\":true}\n"[..],
        )
        .await?;
    let third = fleet
        .worker("third", |cfg| {
            cfg.agents.insert(recording_pi(prompts.path()))
        })
        .await?;
    let forged = pi_task("continue the fix", Some(next_session));
    run_from(&fleet, &third, &forged, Some(next_share)).await?;
    let (outcome, _, reason) = fleet.finished(&forged).await?;
    assert_eq!(outcome, Outcome::Rejected);
    assert!(
        reason.contains("refusing a replaced transcript"),
        "{reason}"
    );
    assert!(!prompt_of(&forged).exists(), "the agent never started");
    assert!(segment::latest_segment(third.state.path(), &next_session).is_none());

    // An object in the store that no run order vouches for is not trusted.
    let unvouched = pi_task("continue without a share", Some(session));
    run(&fleet, &third, &unvouched).await?;
    let (outcome, _, reason) = fleet.finished(&unvouched).await?;
    assert_eq!(outcome, Outcome::Rejected);
    assert!(reason.contains("reported no share"), "{reason}");
    assert!(segment::latest_segment(third.state.path(), &session).is_none());
    let sessions = third.state.path().join("sessions");
    let leftovers: Vec<_> = std::fs::read_dir(&sessions)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".fetching"))
        .collect();
    assert!(leftovers.is_empty(), "partial fetches left: {leftovers:?}");

    // A session shared nowhere is refused, never started from nothing.
    let orphan = pi_task("continue what?", Some(SessionId::new()));
    run(&fleet, &other, &orphan).await?;
    let (outcome, _, reason) = fleet.finished(&orphan).await?;
    assert_eq!(outcome, Outcome::Rejected);
    assert!(reason.contains("not starting it from nothing"), "{reason}");
    assert!(reason.contains("not in the transcript store"), "{reason}");
    assert!(!prompt_of(&orphan).exists(), "the agent never started");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_tasks_share_nothing() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("plain", |_| {}).await?;
    let task = worker_support::command_task(&["sh", "-c", "echo hi"]);
    fleet.run(&w.id, &task, 1).await?;
    assert_eq!(shared(&mut fleet, &task).await?, None);
    Ok(())
}
