//! Cost modes in the worker: the fleet's mode followed live, and every
//! session's transcript appends put through `costmode`'s enforcement.
//!
//! - [`watch_fleet`] watches the keys `cost-mode` and `cost-ceiling` of the
//!   KV bucket `colibri-config` and keeps the latest values in a `watch`.
//! - [`CostGuard`] is the glasspane [`AppendGuard`] of one session: before
//!   each append it picks up a fleet change (so a `colibri set-cost-mode`
//!   applies to the very next append of every running session that follows
//!   the fleet), compacts tool results, and after each append carries
//!   `costmode`'s decisions back to the pump (summary and link events,
//!   rewrites, segment switches), logs compactions and escalations, and
//!   signals a crossed spend ceiling to the supervisor, which stops the
//!   tree and ends the attempt `budget_exceeded`.
//! - [`continued_prompt`] builds a continued session's prompt from the
//!   earlier session's compacted transcript.
//!
//! No threshold is read here: all of them come from the mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use broker::cost_mode::CostMode;
use broker::messages::session::Event;
use broker::messages::task::COMMAND_AGENT;
use broker::messages::{RunOrder, TaskSpec};
use broker::provision::{CONFIG_BUCKET, COST_CEILING_KEY, COST_MODE_KEY};
use broker::{SessionId, TaskId};
use costmode::{segment, Action, BuiltPrompt, Ledger, ModeSource, SessionCost};
use futures::StreamExt;
use glasspane::{AppendGuard, GuardAction};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Tool results reach the cost guard whole up to glasspane's line bound
/// (its result trim is raised to it): no result that arrived on one whole
/// line is cut before the guard, so a compacted result's sha256 and true
/// size are of the whole. `max` mode, which does not compact, keeps them up
/// to this size. (A line longer than the bound is cut by the reader, and
/// its result is hashed as received.)
pub const WHOLE_RESULT_BYTES: usize = glasspane::line_reader::DEFAULT_MAX_LINE;

/// The fleet's cost settings as the KV bucket holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetCost {
    pub mode: CostMode,
    /// No escalation goes past it.
    pub ceiling: CostMode,
}

impl Default for FleetCost {
    fn default() -> Self {
        FleetCost {
            mode: CostMode::default(),
            ceiling: CostMode::Max,
        }
    }
}

/// Starts following the fleet's cost settings; the receiver holds the
/// latest. The watch is retried (with backoff) while the bucket is missing
/// or the server is away; until then the defaults hold and every session
/// keeps its order's mode.
pub fn watch_fleet(
    js: jetstream::Context,
    shutdown: CancellationToken,
) -> watch::Receiver<FleetCost> {
    let (tx, rx) = watch::channel(FleetCost::default());
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match follow(&js, &tx, &shutdown).await {
                Ok(()) => delay = Duration::from_millis(200),
                Err(error) => {
                    warn!(%error, retry_in_ms = delay.as_millis() as u64, "watching the fleet cost mode failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
    rx
}

/// Follows both keys until the watch ends or shutdown.
async fn follow(
    js: &jetstream::Context,
    tx: &watch::Sender<FleetCost>,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let kv = js
        .get_key_value(CONFIG_BUCKET)
        .await
        .map_err(|e| format!("opening {CONFIG_BUCKET}: {e}"))?;
    let mut watch = kv
        .watch_many_with_history([COST_MODE_KEY, COST_CEILING_KEY])
        .await
        .map_err(|e| format!("watching {CONFIG_BUCKET}: {e}"))?;
    loop {
        let entry = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            e = watch.next() => e,
        };
        let entry = match entry {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err(format!("cost mode watch: {e}")),
            None => return Err("cost mode watch ended".into()),
        };
        let value = match entry.operation {
            jetstream::kv::Operation::Put => {
                let text = String::from_utf8_lossy(&entry.value);
                match text.trim().parse::<CostMode>() {
                    Ok(m) => Some(m),
                    Err(error) => {
                        warn!(key = %entry.key, %error, "ignoring an invalid cost setting");
                        continue;
                    }
                }
            }
            _ => None,
        };
        tx.send_if_modified(|f| {
            let before = *f;
            if entry.key == COST_MODE_KEY {
                f.mode = value.unwrap_or_default();
            } else if entry.key == COST_CEILING_KEY {
                f.ceiling = value.unwrap_or(CostMode::Max);
            }
            if *f != before {
                info!(mode = %f.mode, ceiling = %f.ceiling, "fleet cost settings changed");
            }
            *f != before
        });
    }
}

/// Where a session's mode comes from: the task's own mode is fixed; a task
/// without one starts at the order's mode (the fleet's when placed) and
/// follows the fleet.
pub fn mode_source(order: &RunOrder) -> ModeSource {
    match order.task.cost_mode {
        Some(_) => ModeSource::Task(order.cost_mode),
        None => ModeSource::Fleet(order.cost_mode),
    }
}

/// One session's [`AppendGuard`]: see the module docs.
pub struct CostGuard {
    cost: SessionCost,
    fleet: watch::Receiver<FleetCost>,
    state_dir: PathBuf,
    session: SessionId,
    task_id: TaskId,
    attempt: u32,
    budget: watch::Sender<Option<String>>,
}

impl CostGuard {
    /// A guard for the session of `meta`, whose mode comes from `source`;
    /// the returned receiver turns `Some(reason with the figures)` when the
    /// spend ceiling is crossed.
    pub fn new(
        meta: &glasspane::SessionMeta,
        source: ModeSource,
        spent: broker::messages::Usage,
        fleet: watch::Receiver<FleetCost>,
        state_dir: PathBuf,
    ) -> (CostGuard, watch::Receiver<Option<String>>) {
        // The order's mode is the start. The receiver is not marked seen: a
        // fleet change the worker saw before this session (the order may
        // have been placed under the older mode) applies at the first append.
        let ceiling = fleet.borrow().ceiling;
        let cost = SessionCost::new(meta.session, source, ceiling).with_spent_before(spent);
        let (budget, budget_rx) = watch::channel(None);
        let guard = CostGuard {
            cost,
            fleet,
            state_dir,
            session: meta.session,
            task_id: meta.task_id,
            attempt: meta.attempt,
            budget,
        };
        (guard, budget_rx)
    }
}

impl AppendGuard for CostGuard {
    fn imposed(&self) -> Option<(broker::messages::Outcome, String)> {
        self.budget
            .borrow()
            .clone()
            .map(|reason| (broker::messages::Outcome::BudgetExceeded, reason))
    }

    fn before_append(&mut self, event: &mut Event) {
        if self.fleet.has_changed().unwrap_or(false) {
            let f = *self.fleet.borrow_and_update();
            let from = (self.cost.mode(), self.cost.ceiling());
            let follows = self.cost.fleet_mode_changed(f.mode);
            self.cost.set_ceiling(f.ceiling);
            if from != (self.cost.mode(), self.cost.ceiling()) {
                info!(task_id = %self.task_id, attempt = self.attempt, session = %self.session,
                    from = %from.0, to = %self.cost.mode(), ceiling = %f.ceiling, follows_fleet = follows,
                    "cost mode in force for the next append");
            }
        }
        if let Some(c) = self.cost.before_append(event) {
            tracing::debug!(session = %self.session, true_size = c.true_size, sha256 = %c.sha256, "tool result compacted");
        }
    }

    fn after_append(&mut self, seq: u64, event: &Event, line: &[u8]) -> Vec<GuardAction> {
        let actions = self.cost.on_append(seq, event, line);
        let mut out = Vec::with_capacity(actions.len());
        for action in actions {
            match action {
                Action::Emit(e) => {
                    match &e {
                        Event::Summary(s) => info!(task_id = %self.task_id, attempt = self.attempt,
                            session = %self.session, mode = %s.mode, reason = %s.reason, turns = s.turns,
                            bytes = s.bytes, segment = self.cost.segment(), "transcript compacted"),
                        Event::Escalation {
                            from,
                            to,
                            ceiling,
                            reason,
                        } => info!(task_id = %self.task_id,
                            attempt = self.attempt, session = %self.session, from = %from, to = %to,
                            ceiling = %ceiling, reason = %reason, "cost mode escalated"),
                        Event::Segment { index, reason, .. } => info!(task_id = %self.task_id,
                            attempt = self.attempt, session = %self.session, segment = index,
                            reason = %reason, "transcript rolled over"),
                        _ => {}
                    }
                    out.push(GuardAction::Emit(e));
                }
                Action::Rewrite(bytes) => out.push(GuardAction::Rewrite(bytes)),
                Action::SwitchTo { index } => out.push(GuardAction::SwitchTo(segment::path(
                    &self.state_dir,
                    &self.session,
                    index,
                ))),
                Action::StopBudget(b) => {
                    warn!(task_id = %self.task_id, attempt = self.attempt, session = %self.session,
                        tokens = b.tokens, max_tokens = b.max_tokens, cost_usd = ?b.cost_usd,
                        max_cost_usd = b.max_cost_usd, mode = %b.mode, "spend ceiling crossed; stopping the task");
                    self.budget.send_replace(Some(b.to_string()));
                }
            }
        }
        out
    }
}

/// Why a continued session's prompt could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContinueError {
    #[error("session {0} has no transcript on this worker; not starting it from nothing")]
    NoTranscript(SessionId),
    #[error("reading the transcript {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// For a task continuing an earlier session (`--session ID`) with an agent
/// that takes a prompt: the task with its prompt built from that session's
/// transcript within the order's mode's budget. `None` for other tasks.
/// The built prompt replaces the `{prompt}` of the agent's argv; the
/// agents' own resume controls are not used (see `agent_controls`).
pub fn continued_task(
    order: &RunOrder,
    state_dir: &Path,
) -> Result<Option<TaskSpec>, ContinueError> {
    let task = &order.task;
    let Some(previous) = task.continue_session else {
        return Ok(None);
    };
    if task.agent.as_str() == COMMAND_AGENT {
        return Ok(None);
    }
    let instruction = task.prompt.as_deref().unwrap_or_default();
    let built = continued_prompt(state_dir, &previous, instruction, order.cost_mode)?;
    info!(task_id = %task.id, attempt = order.attempt, previous = %previous,
        kept_turns = built.kept_turns, dropped_turns = built.dropped_turns,
        estimated_tokens = built.estimated_tokens, within_budget = built.within_budget,
        "continued session prompt built");
    if !built.within_budget {
        warn!(task_id = %task.id, estimated_tokens = built.estimated_tokens,
            budget = order.cost_mode.limits().prompt_budget_tokens,
            "the instruction and latest summary alone exceed the prompt budget");
    }
    let mut task = task.clone();
    task.prompt = Some(built.text);
    Ok(Some(task))
}

/// The prompt continuing `previous` with `instruction`, from the latest
/// segment of its transcript, within `mode`'s prompt budget.
pub fn continued_prompt(
    state_dir: &Path,
    previous: &SessionId,
    instruction: &str,
    mode: CostMode,
) -> Result<BuiltPrompt, ContinueError> {
    let (_, path) = segment::latest_segment(state_dir, previous)
        .ok_or(ContinueError::NoTranscript(*previous))?;
    let data = std::fs::read(&path).map_err(|source| ContinueError::Read {
        path: path.clone(),
        source,
    })?;
    let ledger = Ledger::from_bytes(&data);
    Ok(costmode::prompt::continue_prompt(
        &ledger,
        instruction,
        mode,
    ))
}
