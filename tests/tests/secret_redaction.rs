//! Secrets never leave the worker in events (issue 13, item 7): an agent
//! that prints its own API key, whole and split across two writes, puts
//! `[redacted:ANTHROPIC_API_KEY]` and never the key into the sessions
//! stream, the transcript on disk, the shared transcript and the reports.

mod worker_support;

use std::collections::BTreeMap;

use broker::messages::{ReportBody, TaskSpec};
use broker::{SessionId, Tag, TagSet};
use futures::StreamExt;
use harness::within;
use tokio::io::AsyncReadExt;
use worker::profiles::AgentProfile;
use worker::secret::Secret;
use worker::WorkerConfig;
use worker_support::{Fleet, LONG};

const KEY: &str = "sk-ant-e2e-0123456789abcdef";
const REDACTED: &str = "[redacted:ANTHROPIC_API_KEY]";

/// The `pi` profile holds the key in its environment and runs an "agent"
/// that prints it: whole on stdout, then on stderr in two writes a moment
/// apart (two pipe reads), the way a secret gets split across chunks.
fn agent_prints_its_key(cfg: &mut WorkerConfig) {
    let script = r#"echo "my key is $ANTHROPIC_API_KEY"
k=$ANTHROPIC_API_KEY; head=${k%??????????}
printf 'split: %s' "$head" >&2; sleep 0.2; printf '%s\n' "${k#"$head"}" >&2"#;
    cfg.agents.insert(AgentProfile {
        name: Tag::parse("pi").expect("valid agent tag"),
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            script.into(),
            "{prompt}".into(),
        ],
        models: BTreeMap::new(),
        env: [("ANTHROPIC_API_KEY".to_string(), Secret::new(KEY))].into(),
    });
}

fn pi_task() -> TaskSpec {
    let mut task = TaskSpec::command("prints its key", TagSet::new(), Vec::new());
    task.agent = Tag::parse("pi").expect("valid agent tag");
    task.prompt = Some("print your key".into());
    task
}

/// Every stored event of `session`, as JSON text, up to its `end`.
async fn stored_events(
    js: &async_nats::jetstream::Context,
    session: SessionId,
) -> anyhow::Result<Vec<String>> {
    let events = within(LONG, "follow", glasspane::follow(js, session, true)).await??;
    let mut events = std::pin::pin!(events);
    let mut out = Vec::new();
    while let Some(event) = within(LONG, "a stored session event", events.next()).await? {
        out.push(serde_json::to_string(&event?)?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_printing_its_key_leaves_only_its_name() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("debby", agent_prints_its_key).await?;
    let task = pi_task();
    let session = fleet
        .place(&w.id, worker_support::run_order(&task, Default::default()))
        .await?;
    let report = fleet.report(&task, "finished").await?;

    // The sessions stream: the key's name, never the key.
    let events = stored_events(&fleet.js, session).await?;
    let all = events.join("\n");
    assert!(!all.contains(KEY), "key in the sessions stream:\n{all}");
    assert!(
        all.contains(&format!("my key is {REDACTED}")),
        "stdout not redacted:\n{all}"
    );
    assert!(
        all.contains(&format!("split: {REDACTED}")),
        "the key split across two writes not redacted:\n{all}"
    );

    // The transcript on the worker's disk.
    let path = glasspane::transcript::transcript_path(w.state.path(), &session);
    let transcript = std::fs::read_to_string(&path)?;
    assert!(!transcript.contains(KEY), "key in {}", path.display());
    assert!(transcript.contains(REDACTED));

    // The finished report, and the transcript it shared.
    let text = serde_json::to_string(&report)?;
    assert!(!text.contains(KEY), "key in the finished report: {text}");
    let ReportBody::Finished { transcript, .. } = report.body else {
        anyhow::bail!("not a finished report");
    };
    let shared = transcript.ok_or_else(|| anyhow::anyhow!("the transcript was not shared"))?;
    let store = fleet
        .js
        .get_object_store(broker::provision::TRANSCRIPTS_BUCKET)
        .await?;
    let mut object = within(
        LONG,
        "shared transcript",
        store.get(shared.session.to_string()),
    )
    .await??;
    let mut body = String::new();
    within(LONG, "reading it", object.read_to_string(&mut body)).await??;
    assert!(!body.contains(KEY), "key in the shared transcript");
    assert!(body.contains(REDACTED));
    Ok(())
}
