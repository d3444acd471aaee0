//! Bad input end to end (issue 12, items 16 and 18): on a real nats-server,
//! every submit, report and request that breaks a rule ends somewhere a
//! user can see it (a `failed` task with the reason, a counter, an error
//! naming the field), and no reply is ever too large to be sent. Each test
//! is named after what broke.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use broker::messages::api::*;
use broker::messages::{encode, Report, ReportBody, TaskSpec, TaskState};
use broker::subjects::api as ep;
use broker::{subjects, TagSet, TaskId};
use futures::StreamExt;
use harness::{within, BoardClient, NatsServer, SchedulerHandle, SimWorker};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

struct Env {
    nats: NatsServer,
    _dir: tempfile::TempDir,
    _scheduler: SchedulerHandle,
    board: BoardClient,
    client: async_nats::Client,
    js: jetstream::Context,
}

async fn env() -> anyhow::Result<Env> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(&nats, &dir.path().join("board.db")).await?;
    let client = nats.client().await?;
    let board = BoardClient::new(client.clone());
    let js = jetstream::new(client.clone());
    Ok(Env {
        nats,
        _dir: dir,
        _scheduler: scheduler,
        board,
        client,
        js,
    })
}

impl Env {
    /// A request with a raw JSON payload, and the raw reply.
    async fn raw(&self, endpoint: &str, payload: Value) -> anyhow::Result<ApiReply<Value>> {
        let reply = within(
            T,
            endpoint,
            self.client.request(ep::subject(endpoint), encode(&payload)),
        )
        .await??;
        Ok(serde_json::from_slice(&reply.payload)?)
    }

    /// The `invalid` message a request is refused with.
    async fn refused(&self, endpoint: &str, payload: Value) -> anyhow::Result<String> {
        match self.raw(endpoint, payload.clone()).await? {
            ApiReply::Error(e) if e.kind == ApiErrorKind::Invalid => Ok(e.message),
            other => {
                anyhow::bail!("{endpoint} {payload}: expected an invalid error, got {other:?}")
            }
        }
    }

    /// Publishes `payload` on `colibri.task.<id>.submit` through JetStream.
    async fn submit_raw(&self, id: &TaskId, payload: Vec<u8>) -> anyhow::Result<()> {
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(id.to_string());
        within(T, "submit acknowledged", async {
            self.js
                .send_publish(subjects::task_submit(id), publish)
                .await?
                .await
        })
        .await??;
        Ok(())
    }

    async fn counter(&self, name: &str) -> u64 {
        self.board
            .status()
            .await
            .ok()
            .and_then(|s| s.counters.get(name).copied())
            .unwrap_or(0)
    }

    async fn worker(&self, id: &str, tags: &[&str]) -> anyhow::Result<SimWorker> {
        let w = SimWorker::start(self.nats.client().await?, id, tags, 4).await?;
        let id = w.id.clone();
        harness::eventually(T, "worker online", || async {
            let s = self.board.status().await.ok()?;
            s.workers
                .iter()
                .any(|s| s.worker == id && s.online)
                .then_some(())
        })
        .await?;
        Ok(w)
    }
}

fn spec_json(id: &TaskId) -> Value {
    json!({"v": 1, "id": id.to_string(), "title": "t", "agent": "command",
           "command": ["/bin/true"], "submitted_at_ms": 0})
}

// Regression: `{"max_attempts":2}` was refused ("missing field
// backoff_ms") although each retry field is documented with a default.
#[tokio::test]
async fn retry_with_only_max_attempts_was_refused() -> anyhow::Result<()> {
    let env = env().await?;
    let id = TaskId::new();
    let mut spec = spec_json(&id);
    spec["retry"] = json!({"max_attempts": 2});
    match env.raw(ep::CREATE_TASK, spec).await? {
        ApiReply::Ok(_) => {}
        other => anyhow::bail!("create-task refused a partial retry policy: {other:?}"),
    }
    let detail = env.board.show(&id).await?;
    assert_eq!(detail.spec.retry.max_attempts, 2);
    assert_eq!(detail.spec.retry.backoff_ms, 500);
    Ok(())
}

// Regression: API errors carried serde's text ("invalid type: ... at line 1
// column 12") and `limit: 0` was silently clamped; every error names its
// field.
#[tokio::test]
async fn api_errors_did_not_name_their_field() -> anyhow::Result<()> {
    let env = env().await?;
    assert_eq!(
        env.refused(ep::LIST_TASKS, json!({"limit": 0})).await?,
        "limit: must be 1..1000"
    );
    assert_eq!(
        env.refused(ep::SNAPSHOT, json!({"limit": 1001})).await?,
        "limit: must be 1..1000"
    );
    let m = env.refused(ep::LIST_TASKS, json!({"limit": "ten"})).await?;
    assert!(m.starts_with("limit: ") && !m.contains("line 1"), "{m}");
    let m = env
        .refused(ep::LIST_TASKS, json!({"status": "sleeping"}))
        .await?;
    assert!(m.starts_with("status: "), "{m}");
    assert_eq!(
        env.refused(ep::SHOW_TASK, json!({})).await?,
        "task_id: required"
    );
    let m = env.refused(ep::STATUS, json!({"workers_after": 5})).await?;
    assert!(m.starts_with("workers_after: "), "{m}");
    let id = TaskId::new();
    let mut no_title = spec_json(&id);
    no_title.as_object_mut().map(|o| o.remove("title"));
    assert_eq!(
        env.refused(ep::CREATE_TASK, no_title).await?,
        "title: required"
    );
    let mut bad_tag = spec_json(&id);
    bad_tag["capabilities"] = json!(["linux", "GPU"]);
    let m = env.refused(ep::CREATE_TASK, bad_tag).await?;
    assert!(m.starts_with("capabilities[1]: "), "{m}");
    let mut many = spec_json(&id);
    many["capabilities"] = json!((0..65).map(|i| format!("t{i}")).collect::<Vec<_>>());
    let m = env.refused(ep::CREATE_TASK, many).await?;
    assert!(m.starts_with("capabilities: 65 names"), "{m}");
    let m = env
        .refused(ep::CANCEL, json!({"task_id": "not-a-uuid"}))
        .await?;
    assert!(m.starts_with("task_id: "), "{m}");
    Ok(())
}

// Regression: a submit whose body named another id than its subject was
// applied under the body's id; it is stored failed under the subject's.
#[tokio::test]
async fn submit_with_another_id_than_its_subject_was_applied() -> anyhow::Result<()> {
    let env = env().await?;
    let (subject_id, body_id) = (TaskId::new(), TaskId::new());
    env.submit_raw(&subject_id, serde_json::to_vec(&spec_json(&body_id))?)
        .await?;
    let detail = env
        .board
        .wait_state(&subject_id, TaskState::Failed, T)
        .await?;
    let reason = detail.summary.reason.unwrap_or_default();
    assert!(
        reason.contains("id: must equal the subject's task id"),
        "{reason}"
    );
    assert!(
        env.board.show(&body_id).await.is_err(),
        "no task under the body's id"
    );
    Ok(())
}

// Regression: a submit that was JSON but broke a type rule (a bad tag, a
// string for a number, another wire version) was acknowledged and vanished.
#[tokio::test]
async fn acked_submits_that_broke_a_rule_vanished() -> anyhow::Result<()> {
    let env = env().await?;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"capabilities": ["GPU"]}), "capabilities[0]: "),
        (json!({"retry": "twice"}), "retry: "),
        (
            json!({"limits": {"timeout_secs": -1}}),
            "limits.timeout_secs: ",
        ),
        (json!({"v": 2}), "payload version 2"),
        (json!({"title": ""}), "title: must not be empty"),
    ];
    let mut ids = Vec::new();
    for (patch, _) in &cases {
        let id = TaskId::new();
        let mut spec = spec_json(&id);
        for (k, v) in patch.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        env.submit_raw(&id, serde_json::to_vec(&spec)?).await?;
        ids.push(id);
    }
    // JSON that is not even an object still has the subject's id.
    let scalar = TaskId::new();
    env.submit_raw(&scalar, b"42".to_vec()).await?;
    for (id, (_, expect)) in ids.iter().zip(&cases) {
        let d = env.board.wait_state(id, TaskState::Failed, T).await?;
        let reason = d.summary.reason.unwrap_or_default();
        assert!(
            reason.starts_with("rejected at intake: ") && reason.contains(expect),
            "{reason} should name {expect}"
        );
    }
    env.board.wait_state(&scalar, TaskState::Failed, T).await?;
    // What is not JSON at all is counted and dropped.
    env.submit_raw(&TaskId::new(), b"{not json".to_vec())
        .await?;
    harness::eventually(T, "malformed submission counted", || async {
        (env.counter("malformed_submissions").await == 1).then_some(())
    })
    .await?;
    Ok(())
}

// Regression: a report was applied to the task its body named, whatever
// task its subject named.
#[tokio::test]
async fn report_naming_another_task_than_its_subject_was_applied() -> anyhow::Result<()> {
    let env = env().await?;
    let mut w = env.worker("reporter", &["linux"]).await?;
    let spec = TaskSpec::command("held", TagSet::new(), vec!["/bin/true".into()]);
    env.board.create(&spec).await?;
    let run = w.next_run(T).await?;
    w.started(&run).await?;
    env.board
        .wait_state(&spec.id, TaskState::Running, T)
        .await?;
    let forged = Report {
        v: broker::WIRE_VERSION,
        task_id: spec.id,
        attempt: run.attempt,
        worker: w.id.clone(),
        incarnation: w.incarnation,
        at_ms: broker::time_ms::now_ms(),
        body: ReportBody::Finished {
            outcome: broker::messages::Outcome::Succeeded,
            exit_code: Some(0),
            signal: None,
            reason: None,
            usage: None,
            transcript: None,
        },
    };
    let other = TaskId::new();
    within(T, "forged report acknowledged", async {
        env.js
            .publish(subjects::task_report(&other, &w.id), encode(&forged))
            .await?
            .await
    })
    .await??;
    harness::eventually(T, "report counted as a task mismatch", || async {
        (env.counter("reports_task_mismatch").await == 1).then_some(())
    })
    .await?;
    assert_eq!(
        env.board.show(&spec.id).await?.summary.state,
        TaskState::Running
    );
    Ok(())
}

// Regression: a task submitted with a deadline already past was placed and
// ran; it ends timed_out without an order.
#[tokio::test]
async fn a_past_deadline_was_placed_and_ran() -> anyhow::Result<()> {
    let env = env().await?;
    let mut w = env.worker("idle", &["linux"]).await?;
    let mut spec = TaskSpec::command("late", TagSet::new(), vec!["/bin/true".into()]);
    spec.limits.deadline_ms = Some(broker::time_ms::now_ms() - 1_000);
    env.board.create(&spec).await?;
    let d = env
        .board
        .wait_state(&spec.id, TaskState::TimedOut, T)
        .await?;
    assert_eq!(d.summary.attempt, 0);
    assert!(w.no_order_within(Duration::from_millis(300)).await);
    Ok(())
}

// Regression: show-task and list-tasks of a task with a 1 MB title built
// replies over NATS's 1 MiB limit, which were never sent (the client timed
// out, nothing was logged).
#[tokio::test]
async fn replies_over_a_mebibyte_were_never_sent() -> anyhow::Result<()> {
    let env = env().await?;
    let id = TaskId::new();
    let mut spec = spec_json(&id);
    spec["title"] = json!("x".repeat(1_000_000));
    env.submit_raw(&id, serde_json::to_vec(&spec)?).await?;
    let d = env.board.wait_state(&id, TaskState::Failed, T).await?;
    assert!(d.summary.title.len() <= 200);
    assert!(d.spec.title.len() <= 200);
    let list = env.board.list(None).await?;
    assert!(list.tasks.iter().all(|t| t.title.len() <= 200));
    Ok(())
}

// Regression: a list-tasks page of 1000 long titles was over 1 MiB and
// never sent; pages are cut by bytes and `next` continues them.
#[tokio::test]
async fn a_page_of_long_rows_was_never_sent() -> anyhow::Result<()> {
    let env = env().await?;
    const N: usize = 1_000;
    // 200 four-byte characters: 800 bytes of title per row.
    let title = "𝄞".repeat(200);
    let mut acks = Vec::new();
    for _ in 0..N {
        let mut spec = TaskSpec::command(
            &title,
            TagSet::parse_lists(["nowhere"])?,
            vec!["/bin/true".into()],
        );
        spec.id = TaskId::new();
        let publish = PublishMessage::build()
            .payload(encode(&spec))
            .message_id(spec.id.to_string());
        acks.push(
            env.js
                .send_publish(subjects::task_submit(&spec.id), publish)
                .await?,
        );
    }
    within(Duration::from_secs(60), "submits acknowledged", async {
        futures::stream::iter(acks)
            .for_each_concurrent(64, |ack| async move {
                let _ = ack.await;
            })
            .await
    })
    .await?;
    harness::eventually(
        Duration::from_secs(60),
        "all tasks on the board",
        || async {
            let counts = env.board.status().await.ok()?.tasks;
            (counts.get(&TaskState::Queued).copied().unwrap_or(0) >= N as u64).then_some(())
        },
    )
    .await?;
    let mut after = None;
    let (mut pages, mut seen) = (0, 0);
    loop {
        let req = json!({"limit": 1000, "after": after});
        let reply = within(
            T,
            "list-tasks page",
            env.client
                .request(ep::subject(ep::LIST_TASKS), encode(&req)),
        )
        .await??;
        assert!(
            reply.payload.len() <= MAX_REPLY_BYTES,
            "{}",
            reply.payload.len()
        );
        let page: ApiReply<ListTasksReply> = serde_json::from_slice(&reply.payload)?;
        let ApiReply::Ok(page) = page else {
            anyhow::bail!("list-tasks failed: {page:?}");
        };
        pages += 1;
        seen += page.tasks.len();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        anyhow::ensure!(pages < 100, "paging does not end");
    }
    assert_eq!(seen, N);
    assert!(
        pages > 1,
        "a 1000-row page of 800-byte titles is cut by bytes"
    );
    Ok(())
}
