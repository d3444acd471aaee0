//! `watch TASK|SESSION [--from-now] [--json]`: follows one agent session's
//! glasspane events from `COLIBRI_SESSIONS`, live, and exits when the session
//! ends: 0 if it succeeded, 1 if not.
//!
//! Given a task id, it asks `show-task` for the task's latest attempt and
//! follows that attempt's session, polling (up to `--wait` seconds) while the
//! task has no attempt yet. An id the scheduler does not know as a task is
//! taken as a session id. By default the session is replayed from its first
//! stored event; `--from-now` shows only what comes next. Each event is one
//! readable line (seq, time, kind, a short text), or with `--json` the
//! event's JSON, one per line.
//!
//! Only the worker of the session's attempt speaks for it: the board says
//! which (the task's attempt, or for a session id the attempt of the task its
//! stored events name, confirmed by `show-task`). Events from any other host,
//! a forged `end` included, are skipped and counted, and the count is said
//! on stderr at the end.

use std::time::Duration;

use anyhow::{anyhow, Context};
use broker::messages::api::{ApiErrorKind, ApiReply, AttemptRecord, TaskDetail, TaskRef};
use broker::messages::session::{Event, Phase, Role, SessionEvent};
use broker::messages::Usage;
use broker::subjects::api;
use broker::{SessionId, WorkerId};
use clap::Args;
use futures::StreamExt;

use super::{render, ApiClient, CliError};

/// How often a task without an attempt is asked again.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Bound on one `show-task` request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest text shown for one event on a readable line (characters).
const TEXT_WIDTH: usize = 100;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// A task id (its latest attempt's session) or a session id.
    pub id: uuid::Uuid,
    /// Show only events from now on (default: replay from the first).
    #[arg(long = "from-now")]
    pub from_now: bool,
    /// One JSON event per line.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for a task's first attempt, in seconds.
    #[arg(long = "wait", value_name = "SECS", default_value_t = 300)]
    pub wait_secs: u64,
}

pub async fn run(api_client: &ApiClient, args: WatchArgs) -> Result<(), CliError> {
    let skipped = glasspane::Skipped::default();
    let result = watch(api_client, args, skipped.clone()).await;
    if skipped.count() > 0 {
        eprintln!(
            "watch: skipped {} event(s) not published by the session's worker",
            skipped.count()
        );
    }
    result
}

async fn watch(
    api_client: &ApiClient,
    args: WatchArgs,
    skipped: glasspane::Skipped,
) -> Result<(), CliError> {
    let (session, task, worker) =
        resolve(api_client, args.id, Duration::from_secs(args.wait_secs)).await?;
    let js = async_nats::jetstream::new(api_client.client.clone());
    let worker = match (task, worker) {
        (Some(_), worker) => worker,
        (None, _) => session_worker(api_client, &js, &session).await?,
    };
    if worker.is_none() {
        eprintln!("watch: no scheduler knows session {session}: events from any host are believed");
    }
    if args.from_now {
        // A session that has already ended sends nothing more: its stored
        // `end` is the answer.
        if let Some(end) = stored_end(&js, &session, worker.as_ref()).await? {
            print_event(&end, args.json)?;
            return verdict(&session, &end.event);
        }
    }
    let events = glasspane::follow_worker(&js, session, worker, !args.from_now, skipped)
        .await
        .with_context(|| format!("following session {session}"))?;
    let mut events = std::pin::pin!(events);
    // A worker that dies mid-session never publishes the `end`: the board
    // then ends the attempt, and that ends the watch.
    let board_end = attempt_end(api_client, task, session);
    let mut board_end = std::pin::pin!(board_end);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            attempt = &mut board_end => return ended_on_board(&session, attempt),
        };
        let Some(event) = event else { break };
        let event = event.with_context(|| format!("following session {session}"))?;
        print_event(&event, args.json)?;
        if event.event.is_end() {
            return verdict(&session, &event.event);
        }
    }
    Err(anyhow!("session {session}: the event stream ended before the session did").into())
}

fn print_event(event: &SessionEvent, json: bool) -> Result<(), CliError> {
    if json {
        println!(
            "{}",
            serde_json::to_string(event).context("encoding an event")?
        );
    } else {
        println!("{}", line(event));
    }
    Ok(())
}

/// Exit status of the watch from the session's `end` event.
fn verdict(session: &SessionId, end: &Event) -> Result<(), CliError> {
    match end {
        Event::End { success: true, .. } => Ok(()),
        Event::End {
            reason: Some(reason),
            ..
        } => Err(anyhow!("session {session} failed: {reason}").into()),
        _ => Err(anyhow!("session {session} failed").into()),
    }
}

/// The session's stored `end` event, if it has ended: on `worker`'s own
/// subject when the session's worker is known.
async fn stored_end(
    js: &async_nats::jetstream::Context,
    session: &SessionId,
    worker: Option<&WorkerId>,
) -> Result<Option<SessionEvent>, CliError> {
    let stream = js
        .get_stream(broker::provision::SESSIONS_STREAM)
        .await
        .with_context(|| format!("reading {}", broker::provision::SESSIONS_STREAM))?;
    let subject = match worker {
        Some(worker) => broker::subjects::session(session, worker, "end"),
        None => broker::subjects::session_kind(session, "end"),
    };
    match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(raw) => Ok(broker::messages::decode::<SessionEvent>(&raw.payload)
            .ok()
            .filter(|e| glasspane::watch::published_by_its_worker(raw.subject.as_str(), e))),
        Err(e)
            if e.kind()
                == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            Ok(None)
        }
        Err(e) => Err(anyhow!("looking up the end of session {session}: {e}").into()),
    }
}

/// Stored events read to find which task a session id belongs to.
const SESSION_LOOKUP_EVENTS: u64 = 16;

/// The worker of the attempt that ran `session`, from the board: the stored
/// events name their task, and `show-task` of that task says which attempt
/// has this session and where it ran. A forged event naming another task
/// finds no such attempt there and is passed over. `None` when no scheduler
/// answers or no stored event leads to the session's attempt.
async fn session_worker(
    api_client: &ApiClient,
    js: &async_nats::jetstream::Context,
    session: &SessionId,
) -> Result<Option<WorkerId>, CliError> {
    let stream = js
        .get_stream(broker::provision::SESSIONS_STREAM)
        .await
        .with_context(|| format!("reading {}", broker::provision::SESSIONS_STREAM))?;
    let subject = broker::subjects::session_any(session);
    let mut tasks_asked = std::collections::HashSet::new();
    let mut sequence = 0;
    for _ in 0..SESSION_LOOKUP_EVENTS {
        let raw = match stream
            .get_first_raw_message_by_subject(&subject, sequence + 1)
            .await
        {
            Ok(raw) => raw,
            Err(_) => return Ok(None),
        };
        sequence = raw.sequence;
        let Ok(event) = broker::messages::decode::<SessionEvent>(&raw.payload) else {
            continue;
        };
        if !tasks_asked.insert(event.task_id) {
            continue;
        }
        let Some(detail) = show_task(api_client, event.task_id.0).await? else {
            continue;
        };
        if let Some(attempt) = detail.attempts.iter().find(|a| a.session == *session) {
            return Ok(Some(attempt.worker.clone()));
        }
    }
    Ok(None)
}

/// How often the board is asked whether the watched attempt has ended.
const BOARD_EVERY: Duration = Duration::from_secs(2);

/// After the board shows the attempt ended, how long its `end` event may
/// still take to arrive before the watch ends without it.
const END_GRACE: Duration = Duration::from_secs(5);

/// Resolves once the board shows the attempt of `session` ended (and the
/// grace for its `end` event has passed); never, without a task to ask about.
async fn attempt_end(
    api_client: &ApiClient,
    task: Option<broker::TaskId>,
    session: SessionId,
) -> AttemptRecord {
    let Some(task) = task else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(BOARD_EVERY).await;
        let Ok(Some(detail)) = show_task(api_client, task.0).await else {
            continue;
        };
        let ended = detail
            .attempts
            .into_iter()
            .find(|a| a.session == session && a.ended_at_ms.is_some());
        if let Some(attempt) = ended {
            tokio::time::sleep(END_GRACE).await;
            return attempt;
        }
    }
}

fn ended_on_board(session: &SessionId, attempt: AttemptRecord) -> Result<(), CliError> {
    let outcome = attempt.outcome.map_or_else(
        || "ended".to_string(),
        |o| {
            serde_json::to_string(&o)
                .unwrap_or_default()
                .trim_matches('"')
                .to_string()
        },
    );
    let reason = attempt.reason.map(|r| format!(": {r}")).unwrap_or_default();
    let what = format!(
        "session {session}: no end event; the board ended attempt {} {outcome}{reason}",
        attempt.attempt
    );
    match attempt.outcome {
        Some(broker::messages::Outcome::Succeeded) => {
            eprintln!("{what}");
            Ok(())
        }
        _ => Err(anyhow!(what).into()),
    }
}

/// The session to follow, and its task and worker when `id` is a task's:
/// the latest attempt's session (waiting up to `wait` for one), else `id`
/// itself.
async fn resolve(
    api_client: &ApiClient,
    id: uuid::Uuid,
    wait: Duration,
) -> Result<(SessionId, Option<broker::TaskId>, Option<WorkerId>), CliError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Some(detail) = show_task(api_client, id).await? else {
            return Ok((SessionId(id), None, None));
        };
        if let Some(attempt) = detail.attempts.iter().max_by_key(|a| a.attempt) {
            return Ok((
                attempt.session,
                Some(detail.summary.task_id),
                Some(attempt.worker.clone()),
            ));
        }
        if detail.summary.state.is_terminal() {
            return Err(anyhow!(
                "task {id} ended ({}) without an attempt",
                detail.summary.state
            )
            .into());
        }
        if tokio::time::Instant::now() + POLL_EVERY > deadline {
            return Err(anyhow!(
                "task {id} has no attempt after {} s (state {})",
                wait.as_secs(),
                detail.summary.state
            )
            .into());
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// `show-task` of `id`: `None` when the scheduler knows no such task, or
/// when no scheduler answers (then `id` can only be followed as a session).
async fn show_task(api_client: &ApiClient, id: uuid::Uuid) -> Result<Option<TaskDetail>, CliError> {
    let subject = api::subject(api::SHOW_TASK);
    let payload = serde_json::to_vec(&TaskRef {
        task_id: broker::TaskId(id),
    })
    .context("encoding the request")?;
    let reply = tokio::time::timeout(
        REQUEST_TIMEOUT,
        api_client.client.request(subject.clone(), payload.into()),
    )
    .await
    .map_err(|_| anyhow!("{subject}: the scheduler did not answer within {REQUEST_TIMEOUT:?}"))?;
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => return Ok(None),
        Err(e) => return Err(anyhow!("{subject}: {e}").into()),
    };
    let reply: ApiReply<TaskDetail> = serde_json::from_slice(&reply.payload)
        .with_context(|| format!("{subject}: unreadable reply"))?;
    match reply {
        ApiReply::Ok(detail) => Ok(Some(detail)),
        ApiReply::Error(e) if e.kind == ApiErrorKind::NotFound => Ok(None),
        ApiReply::Error(e) if e.kind == ApiErrorKind::Invalid => Err(CliError::Usage(e.message)),
        ApiReply::Error(e) => Err(anyhow!("{subject}: {}", e.message).into()),
    }
}

/// One readable line: `seq  time  kind  text`.
pub fn line(e: &SessionEvent) -> String {
    let text = describe(&e.event);
    let line = format!(
        "{:>6}  {}  {:<13} {}",
        e.seq,
        render::time(e.at_ms),
        e.event.kind(),
        text
    );
    line.trim_end().to_string()
}

/// The short text of one event.
pub fn describe(event: &Event) -> String {
    match event {
        Event::Lifecycle { pane, reason } => with_reason(pane.as_str(), reason.as_deref()),
        Event::AgentSession {
            agent_session_id,
            model,
        } => [agent_session_id.as_deref(), model.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" "),
        Event::Message { role, text, len } => {
            let who = match role {
                Role::Assistant => "",
                Role::Thinking => "(thinking) ",
            };
            format!("{who}{}", short(text, *len))
        }
        Event::ToolStart {
            name,
            args,
            args_len,
            ..
        } => format!("{name} {}", short(args, *args_len)),
        Event::ToolEnd {
            name,
            result,
            result_len,
            is_error,
            ..
        } => {
            let status = if *is_error { "error" } else { "ok" };
            format!("{name} {status}: {}", short(result, *result_len))
        }
        Event::Usage { response, total } => {
            format!("+{}  total {}", tokens(response), tokens(total))
        }
        Event::Compaction {
            phase,
            reason,
            tokens_before,
            error,
        } => {
            let mut s = phase_str(*phase).to_string();
            if let Some(r) = reason {
                s.push_str(&format!(" ({r})"));
            }
            if let Some(t) = tokens_before {
                s.push_str(&format!(" {t} tokens before"));
            }
            if let Some(e) = error {
                s.push_str(&format!(": {}", one_line(e)));
            }
            s
        }
        Event::Retry {
            phase,
            attempt,
            max_attempts,
            error,
            success,
            ..
        } => {
            let mut s = phase_str(*phase).to_string();
            match (attempt, max_attempts) {
                (Some(a), Some(m)) => s.push_str(&format!(" {a}/{m}")),
                (Some(a), None) => s.push_str(&format!(" {a}")),
                _ => {}
            }
            match success {
                Some(true) => s.push_str(" ok"),
                Some(false) => s.push_str(" gave up"),
                None => {}
            }
            if let Some(e) = error {
                s.push_str(&format!(": {}", one_line(e)));
            }
            s
        }
        Event::Raw { stream, text, len } => {
            let from = match stream {
                broker::messages::session::Stream::Stdout => "stdout",
                broker::messages::session::Stream::Stderr => "stderr",
            };
            format!("{from}: {}", short(text, *len))
        }
        Event::Dropped { count } => {
            format!("{count} events not published live (in the transcript)")
        }
        Event::Truncated { events, bytes } => {
            format!("{events} events ({bytes} bytes) past the transcript's cap")
        }
        Event::End { success, reason } => {
            let verdict = if *success { "succeeded" } else { "failed" };
            with_reason(verdict, reason.as_deref())
        }
        // Kinds added later (or unknown to this build): the kind says it.
        _ => String::new(),
    }
}

fn with_reason(what: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("{what}: {}", one_line(r)),
        None => what.to_string(),
    }
}

fn phase_str(phase: Phase) -> &'static str {
    match phase {
        Phase::Start => "start",
        Phase::End => "end",
    }
}

fn tokens(u: &Usage) -> String {
    let mut s = format!("{} in / {} out", u.input_tokens, u.output_tokens);
    if u.cache_read_tokens > 0 {
        s.push_str(&format!(" / {} cached", u.cache_read_tokens));
    }
    if let Some(c) = u.cost_usd {
        s.push_str(&format!(" ${c:.4}"));
    }
    s
}

/// `text` on one line, cut at [`TEXT_WIDTH`] characters; the true size is
/// added when anything was cut (here or by the worker).
fn short(text: &str, len: usize) -> String {
    let flat = one_line(text);
    let cut = flat.chars().count() > TEXT_WIDTH;
    let mut out: String = flat.chars().take(TEXT_WIDTH).collect();
    if cut || len > text.len() {
        out.push_str(&format!("… ({len} bytes)"));
    }
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::messages::session::Pane;

    #[test]
    fn events_read_as_short_lines() {
        let tool = Event::ToolStart {
            id: "t1".into(),
            name: "bash".into(),
            args: "{\"command\":\"ls\"}".into(),
            args_len: 16,
        };
        assert_eq!(describe(&tool), "bash {\"command\":\"ls\"}");
        let failed = Event::End {
            success: false,
            reason: Some("pi stopped with stopReason error:\n boom".into()),
        };
        assert_eq!(
            describe(&failed),
            "failed: pi stopped with stopReason error: boom"
        );
        let stalled = Event::Lifecycle {
            pane: Pane::Stalled,
            reason: Some("no output for 120 s".into()),
        };
        assert_eq!(describe(&stalled), "stalled: no output for 120 s");
    }

    #[test]
    fn long_or_trimmed_text_is_cut_with_its_true_size() {
        let long = "word ".repeat(50);
        let msg = Event::Message {
            role: Role::Assistant,
            text: long.clone(),
            len: long.len(),
        };
        let d = describe(&msg);
        assert!(d.ends_with("… (250 bytes)"), "{d}");
        let trimmed = Event::Message {
            role: Role::Thinking,
            text: "abc".into(),
            len: 9000,
        };
        assert_eq!(describe(&trimmed), "(thinking) abc… (9000 bytes)");
    }

    #[test]
    fn usage_shows_response_and_totals() {
        let u = |o| Usage {
            input_tokens: 10,
            output_tokens: o,
            cost_usd: Some(0.5),
            ..Default::default()
        };
        let e = Event::Usage {
            response: u(2),
            total: u(5),
        };
        assert_eq!(
            describe(&e),
            "+10 in / 2 out $0.5000  total 10 in / 5 out $0.5000"
        );
    }
}
