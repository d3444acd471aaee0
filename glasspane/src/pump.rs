//! The pump: the one loop that turns an agent's stdout and stderr into a
//! session's events, and the worker's single entry point ([`run_session`]).
//!
//! For every line it: parses it with the session's [`Parser`], numbers each
//! resulting event (`seq` 1, 2, 3, ...), encodes it once, appends it to the
//! transcript, offers it to the publisher without waiting, and updates the
//! worker's [`LiveState`]. It also runs the pane state machine: `starting`
//! at once, `running` at the first line, `stalled` after `stall_after` of
//! silence, `running` again at the next line. When both streams are closed
//! it awaits the process exit, asks the parser for its [`Verdict`], and ends
//! the session with `dropped` (if any), `truncated` (if any), the final
//! `lifecycle` and `end`, which are never dropped.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use broker::messages::session::{Event, Pane, Stream};
use broker::messages::{Outcome, Usage};
use broker::{SessionId, TaskId, WorkerId};
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::guard::{AppendGuard, GuardAction, NoGuard};
use crate::line_reader::{LineReader, DEFAULT_MAX_LINE};
use crate::parser::{raw, AgentExit, AgentFormat, Limits, Verdict};
use crate::publish::{Outgoing, PublishStats, SessionPublisher};
use crate::transcript::{Transcript, TranscriptStats};

/// Who the session belongs to: copied into every event's envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMeta {
    pub session: SessionId,
    pub task_id: TaskId,
    pub attempt: u32,
    pub worker: WorkerId,
}

/// Tuning of one session's pump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpConfig {
    pub limits: Limits,
    /// Longest line kept whole (then cut with a marker and the true size).
    pub max_line: usize,
    /// Silence after which the pane turns `stalled`.
    pub stall_after: Duration,
    /// Bound on publishing and syncing the final events at the end.
    pub finish_timeout: Duration,
    /// Bytes of events one session publishes live (so stored in the
    /// sessions stream) at most: past it, messages, tool calls and raw lines
    /// are dropped live, counted in `dropped` events, and kept only in the
    /// transcript; lifecycle, usage and the end always go out.
    pub max_live_bytes: u64,
}

/// Default [`PumpConfig::max_live_bytes`]: 64 MiB per session.
pub const DEFAULT_MAX_LIVE_BYTES: u64 = 64 * 1024 * 1024;

impl Default for PumpConfig {
    fn default() -> Self {
        PumpConfig {
            limits: Limits::default(),
            max_line: DEFAULT_MAX_LINE,
            stall_after: Duration::from_secs(120),
            finish_timeout: Duration::from_secs(10),
            max_live_bytes: DEFAULT_MAX_LIVE_BYTES,
        }
    }
}

/// How the session ended, as the worker saw it: the process exit, and an
/// outcome the worker imposed when it stopped the agent itself (timeout,
/// cancel, budget, shutdown), which overrides the agent's own verdict.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentEnding {
    pub exit: AgentExit,
    pub imposed: Option<(Outcome, String)>,
}

impl From<AgentExit> for AgentEnding {
    fn from(exit: AgentExit) -> Self {
        AgentEnding {
            exit,
            imposed: None,
        }
    }
}

impl From<std::process::ExitStatus> for AgentEnding {
    fn from(status: std::process::ExitStatus) -> Self {
        AgentExit::from(status).into()
    }
}

/// What the worker reads while the session runs (idle timeouts, progress
/// reports). Receivers are notified when `pane`, `current_tool` or `usage`
/// change; `last_output` and `last_event_ms` are updated silently on every
/// line and event (read them with `borrow()`).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveState {
    pub pane: Pane,
    /// Wall clock of the last event, ms since the epoch.
    pub last_event_ms: i64,
    /// Name of the tool running now, if any.
    pub current_tool: Option<String>,
    /// Session totals so far.
    pub usage: Usage,
    /// When the agent last printed a line (monotonic, for idle timeouts).
    pub last_output: Instant,
    /// Events numbered so far (the last `seq`).
    pub events: u64,
    /// The latest cost-mode escalation of the session.
    pub escalation: Option<broker::messages::Escalated>,
}

impl Default for LiveState {
    fn default() -> Self {
        LiveState {
            pane: Pane::Starting,
            last_event_ms: broker::time_ms::now_ms(),
            current_tool: None,
            usage: Usage::default(),
            last_output: Instant::now(),
            events: 0,
            escalation: None,
        }
    }
}

/// The result of a session, for the worker's `finished` report.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSummary {
    pub outcome: Outcome,
    pub reason: Option<String>,
    /// The agent's own verdict (before any imposed outcome).
    pub verdict: Verdict,
    pub ending: AgentEnding,
    pub usage: Usage,
    /// Events numbered (the last `seq`).
    pub events: u64,
    /// Events not published live (all of them are in the transcript).
    pub dropped: u64,
    pub stdout_lines: u64,
    pub stderr_lines: u64,
    /// A read error on stdout or stderr, which ended that stream early.
    pub read_error: Option<String>,
    pub publish: Result<PublishStats, String>,
    pub transcript: Option<TranscriptStats>,
}

/// The worker's outcome and reason from the agent's verdict and the ending.
pub fn verdict(agent: &Verdict, ending: &AgentEnding) -> (Outcome, Option<String>) {
    if let Some((outcome, reason)) = &ending.imposed {
        return (*outcome, Some(reason.clone()));
    }
    if agent.success {
        (Outcome::Succeeded, agent.reason.clone())
    } else {
        (Outcome::Failed, agent.reason.clone())
    }
}

/// Runs one session from the agent's first byte to its `end` event.
///
/// `exit` resolves to how the process ended; it is awaited only after both
/// streams reach EOF. The returned summary carries the outcome.
#[allow(clippy::too_many_arguments)]
pub async fn run_session<O, E, X>(
    stdout: O,
    stderr: E,
    exit: X,
    meta: SessionMeta,
    format: AgentFormat,
    config: PumpConfig,
    publisher: SessionPublisher,
    transcript: Option<Transcript>,
    live: watch::Sender<LiveState>,
) -> SessionSummary
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
    X: Future<Output = AgentEnding>,
{
    run_session_with(
        stdout,
        stderr,
        exit,
        meta,
        format,
        config,
        publisher,
        transcript,
        live,
        Box::new(NoGuard),
    )
    .await
}

/// [`run_session`] with an [`AppendGuard`] that sees every recorded event
/// (the worker's cost-mode enforcement).
#[allow(clippy::too_many_arguments)]
pub async fn run_session_with<O, E, X>(
    stdout: O,
    stderr: E,
    exit: X,
    meta: SessionMeta,
    format: AgentFormat,
    config: PumpConfig,
    publisher: SessionPublisher,
    transcript: Option<Transcript>,
    live: watch::Sender<LiveState>,
    guard: Box<dyn AppendGuard>,
) -> SessionSummary
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
    X: Future<Output = AgentEnding>,
{
    let mut parser = format.parser(config.limits);
    let mut em = Emitter::new(meta, publisher, transcript, live, guard);
    em.max_live_bytes = config.max_live_bytes;
    em.pane(Pane::Starting, None);

    let mut out_r = LineReader::with_limit(stdout, config.max_line);
    let mut err_r = LineReader::with_limit(stderr, config.max_line);
    let (mut out_open, mut err_open) = (true, true);
    let (mut stdout_lines, mut stderr_lines) = (0u64, 0u64);
    let mut read_error = None;
    let mut events = Vec::new();
    let mut last_output = Instant::now();
    // Re-armed only when it fires, not on every line.
    let mut stall = pin!(tokio::time::sleep_until(last_output + config.stall_after));
    let mut rearm = false;

    while out_open || err_open {
        tokio::select! {
            r = out_r.next_line(), if out_open => match r {
                Ok(Some(line)) => {
                    stdout_lines += 1;
                    rearm |= em.pane == Pane::Stalled;
                    last_output = em.output();
                    parser.line(line, &mut events);
                    for e in events.drain(..) {
                        em.emit(e);
                    }
                }
                Ok(None) => out_open = false,
                Err(e) => {
                    read_error.get_or_insert_with(|| format!("stdout: {e}"));
                    out_open = false;
                }
            },
            r = err_r.next_line(), if err_open => match r {
                Ok(Some(line)) => {
                    stderr_lines += 1;
                    rearm |= em.pane == Pane::Stalled;
                    last_output = em.output();
                    em.emit(raw(Stream::Stderr, line, &config.limits));
                }
                Ok(None) => err_open = false,
                Err(e) => {
                    read_error.get_or_insert_with(|| format!("stderr: {e}"));
                    err_open = false;
                }
            },
            () = &mut stall, if em.pane != Pane::Stalled => {
                if Instant::now() >= last_output + config.stall_after {
                    let silent = format!("no output for {} s", config.stall_after.as_secs());
                    em.pane(Pane::Stalled, Some(silent));
                } else {
                    rearm = true;
                }
            },
        }
        if std::mem::take(&mut rearm) {
            stall.as_mut().reset(last_output + config.stall_after);
        }
    }

    let mut ending = exit.await;
    if ending.imposed.is_none() {
        ending.imposed = em.guard.imposed();
    }
    let agent = parser.verdict(&ending.exit);
    let (outcome, reason) = verdict(&agent, &ending);
    let success = outcome == Outcome::Succeeded;
    let deadline = Instant::now() + config.finish_timeout;
    let done = em.finish(success, reason.clone(), deadline).await;
    SessionSummary {
        outcome,
        reason,
        verdict: agent,
        ending,
        usage: done.usage,
        events: done.seq,
        dropped: done.dropped_total,
        stdout_lines,
        stderr_lines,
        read_error,
        publish: done.publish,
        transcript: done.transcript,
    }
}

/// The envelope as written: the same JSON as `SessionEvent`, borrowed.
#[derive(Serialize)]
struct Envelope<'a> {
    v: u32,
    session: &'a SessionId,
    seq: u64,
    task_id: &'a TaskId,
    attempt: u32,
    worker: &'a WorkerId,
    at_ms: i64,
    event: &'a Event,
}

/// Numbers, encodes, records and publishes events; owns the pane state.
struct Emitter {
    meta: SessionMeta,
    subject_prefix: String,
    publisher: SessionPublisher,
    transcript: Option<Transcript>,
    live: watch::Sender<LiveState>,
    seq: u64,
    pane: Pane,
    usage: Usage,
    /// Live events dropped since the last `dropped` event.
    dropped_pending: u64,
    dropped_total: u64,
    /// Bytes published live so far, and the session's bound on them.
    live_bytes: u64,
    max_live_bytes: u64,
    buf: Vec<u8>,
    guard: Box<dyn AppendGuard>,
    /// The guard's actions not yet carried out, in order.
    guard_actions: std::collections::VecDeque<GuardAction>,
}

/// What is left of an [`Emitter`] once the session is closed.
struct Finished {
    publish: Result<PublishStats, String>,
    transcript: Option<TranscriptStats>,
    usage: Usage,
    seq: u64,
    dropped_total: u64,
}

impl Emitter {
    fn new(
        meta: SessionMeta,
        publisher: SessionPublisher,
        transcript: Option<Transcript>,
        live: watch::Sender<LiveState>,
        guard: Box<dyn AppendGuard>,
    ) -> Self {
        let subject_prefix = broker::subjects::session(&meta.session, &meta.worker, "");
        Emitter {
            meta,
            subject_prefix,
            publisher,
            transcript,
            live,
            seq: 0,
            pane: Pane::Starting,
            usage: Usage::default(),
            dropped_pending: 0,
            dropped_total: 0,
            live_bytes: 0,
            max_live_bytes: DEFAULT_MAX_LIVE_BYTES,
            buf: Vec::with_capacity(1024),
            guard,
            guard_actions: std::collections::VecDeque::new(),
        }
    }

    /// Carries out the guard's pending actions (emitting may add more).
    fn run_guard_actions(&mut self) {
        while let Some(action) = self.guard_actions.pop_front() {
            match action {
                GuardAction::Emit(event) => self.emit(event),
                GuardAction::Rewrite(bytes) => {
                    if let Some(t) = self.transcript.as_mut() {
                        t.rewrite(&bytes);
                    }
                }
                GuardAction::SwitchTo(path) => {
                    if let Some(t) = self.transcript.as_mut() {
                        t.switch_to(path);
                    }
                }
            }
        }
    }

    /// The agent printed a line: note it, and leave `starting`/`stalled`.
    fn output(&mut self) -> Instant {
        let now = Instant::now();
        self.live.send_if_modified(|s| {
            s.last_output = now;
            false
        });
        if matches!(self.pane, Pane::Starting | Pane::Stalled) {
            self.pane(Pane::Running, None);
        }
        now
    }

    fn pane(&mut self, pane: Pane, reason: Option<String>) {
        self.pane = pane;
        self.emit(Event::Lifecycle { pane, reason });
    }

    fn emit(&mut self, event: Event) {
        if self.dropped_pending > 0 && self.publisher.room() >= 2 {
            let count = std::mem::take(&mut self.dropped_pending);
            let marker = self.record(Event::Dropped { count });
            // Room was checked and only the pump sends: this cannot fail.
            let _ = self.publisher.try_publish(marker);
        }
        let bulky = matches!(
            event,
            Event::Message { .. }
                | Event::ToolStart { .. }
                | Event::ToolEnd { .. }
                | Event::Raw { .. }
        );
        let msg = self.record(event);
        let len = msg.payload.len() as u64;
        let over = bulky && self.live_bytes + len > self.max_live_bytes;
        if over || self.publisher.try_publish(msg).is_err() {
            self.dropped_pending += 1;
            self.dropped_total += 1;
        } else {
            self.live_bytes += len;
        }
        self.run_guard_actions();
    }

    async fn emit_wait(&mut self, event: Event, deadline: Instant) {
        let msg = self.record(event);
        let sent = tokio::time::timeout_at(deadline, self.publisher.publish(msg)).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.dropped_total += 1;
        }
        self.run_guard_actions();
    }

    /// Numbers and encodes `event`, writes it to the transcript, updates
    /// the live state; returns it ready to publish.
    fn record(&mut self, mut event: Event) -> Outgoing {
        self.guard.before_append(&mut event);
        self.seq += 1;
        let at_ms = broker::time_ms::now_ms();
        self.buf.clear();
        let env = Envelope {
            v: broker::WIRE_VERSION,
            session: &self.meta.session,
            seq: self.seq,
            task_id: &self.meta.task_id,
            attempt: self.meta.attempt,
            worker: &self.meta.worker,
            at_ms,
            event: &event,
        };
        // Serializing these plain types into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, &env);
        self.buf.push(b'\n');
        if let Some(t) = self.transcript.as_mut() {
            t.append(&event, &self.buf);
        }
        let actions = self.guard.after_append(self.seq, &event, &self.buf);
        self.guard_actions.extend(actions);
        let payload = bytes::Bytes::copy_from_slice(&self.buf[..self.buf.len() - 1]);
        let kind = event.kind();
        self.update_live(&event, at_ms);
        Outgoing {
            subject: format!("{}{kind}", self.subject_prefix),
            payload,
            is_end: event.is_end(),
        }
    }

    fn update_live(&mut self, event: &Event, at_ms: i64) {
        let seq = self.seq;
        if let Event::Usage { total, .. } = event {
            self.usage = total.clone();
        }
        self.live.send_if_modified(|s| {
            s.last_event_ms = at_ms;
            s.events = seq;
            match event {
                Event::Lifecycle { pane, .. } => {
                    s.pane = *pane;
                    true
                }
                Event::ToolStart { name, .. } => {
                    s.current_tool = Some(name.clone());
                    true
                }
                Event::ToolEnd { .. } => s.current_tool.take().is_some(),
                Event::Usage { total, .. } => {
                    s.usage = total.clone();
                    true
                }
                Event::Escalation {
                    from, to, reason, ..
                } => {
                    s.escalation = Some(broker::messages::Escalated {
                        from: *from,
                        to: *to,
                        reason: reason.clone(),
                        at_ms,
                    });
                    true
                }
                _ => false,
            }
        });
    }

    /// Emits the final events, waiting for room, then closes the publisher
    /// and the transcript.
    async fn finish(
        mut self,
        success: bool,
        reason: Option<String>,
        deadline: Instant,
    ) -> Finished {
        if self.dropped_pending > 0 {
            let count = std::mem::take(&mut self.dropped_pending);
            self.emit_wait(Event::Dropped { count }, deadline).await;
        }
        if let Some((events, bytes)) = self.transcript.as_ref().map(Transcript::skipped) {
            if events > 0 {
                self.emit_wait(Event::Truncated { events, bytes }, deadline)
                    .await;
            }
        }
        let pane = if success { Pane::Stopped } else { Pane::Failed };
        self.pane = pane;
        let lifecycle = Event::Lifecycle {
            pane,
            reason: reason.clone(),
        };
        self.emit_wait(lifecycle, deadline).await;
        self.emit_wait(Event::End { success, reason }, deadline)
            .await;
        let Emitter {
            publisher,
            transcript,
            usage,
            seq,
            dropped_total,
            ..
        } = self;
        let transcript = match transcript {
            Some(t) => Some(t.finish().await),
            None => None,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let publish = publisher
            .finish(remaining.max(Duration::from_millis(100)))
            .await
            .map_err(|e| e.to_string());
        Finished {
            publish,
            transcript,
            usage,
            seq,
            dropped_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imposed_outcome_wins() {
        let ending = AgentEnding {
            exit: AgentExit {
                code: None,
                signal: Some(9),
            },
            imposed: Some((Outcome::TimedOut, "run time limit 60 s".into())),
        };
        let (o, r) = verdict(&Verdict::failed("killed"), &ending);
        assert_eq!(o, Outcome::TimedOut);
        assert_eq!(r.as_deref(), Some("run time limit 60 s"));
        let (o, _) = verdict(&Verdict::ok(), &AgentExit::code(1).into());
        assert_eq!(o, Outcome::Succeeded);
    }
}
