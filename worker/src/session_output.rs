//! Where an agent's output goes: glasspane's session pump. This module is
//! the thin adapter between supervision and [`glasspane::run_session`].
//!
//! For every attempt with piped output, [`SessionPlan::start`] spawns the
//! pump on the agent's stdout and stderr. It normalises each line into
//! session events, numbered per session and stamped with the task id, the
//! attempt and the worker; publishes them live on
//! `colibri.session.<session>.<worker>.<kind>`; writes them to the transcript
//! `<state_dir>/sessions/<session>.jsonl`; and keeps a [`LiveState`] whose
//! `last_output` the idle limit reads and whose changes become `progress`
//! reports ([`crate::progress`]). When the supervisor has the agent's exit
//! (and the outcome it imposed, if it stopped the agent itself), it hands
//! them to [`Session::end`], which returns the pump's [`SessionSummary`]:
//! the outcome by the agent's own rule (pi's `stopReason`, Claude's
//! `is_error`, Codex's `turn.completed`/`turn.failed`, the exit status of a
//! `command`), with the imposed outcome winning.
//!
//! The agent's stdout and stderr reach the pump only through the worker's
//! [`Redactor`]: every secret value of its profiles is `[redacted:NAME]` in
//! the events, and so in everything built from them (transcripts, shared
//! transcripts, progress and finished reports) before anything leaves the
//! worker.
//!
//! # One publisher per session, on the worker's one connection
//!
//! `run_session` takes its [`SessionPublisher`] by value and closes it at
//! the end, so a publisher cannot be shared by sessions; each session gets
//! its own (a bounded queue and a task) on the worker's single NATS
//! client. That is also the fairer shape: a flooding agent fills only its
//! own queue and loses only its own live events (counted in a `dropped`
//! event; the transcript keeps them), while the quiet sessions' queues stay
//! empty and their publisher tasks take turns with the flooder's on the
//! client's (FIFO) write path. A single shared queue would let one flood
//! crowd every other session's events out. The cost is one queue of at most
//! [`PUBLISH_CAPACITY`] encoded events per running attempt.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use broker::messages::{AttemptRef, Outcome, RunOrder};
use broker::WorkerId;
use glasspane::{
    AgentEnding, AgentExit, AgentFormat, LiveState, PumpConfig, SessionMeta, SessionPublisher,
    SessionSummary, Transcript, TranscriptConfig,
};
use tokio::io::AsyncRead;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cost::{CostGuard, FleetCost};
use crate::reports::Reporter;
use crate::secret::{RedactingReader, Redactor};

/// Events queued per session between the pump and NATS.
pub const PUBLISH_CAPACITY: usize = glasspane::publish::DEFAULT_CAPACITY;

/// Bound on the progress loop's last publish once the session is over.
const PROGRESS_STOP_LIMIT: Duration = Duration::from_secs(3);

/// The worker's side of glasspane: one per worker process, cloned into
/// every attempt.
#[derive(Clone)]
pub struct SessionOutput {
    client: async_nats::Client,
    reporter: Reporter,
    worker: WorkerId,
    state_dir: Arc<PathBuf>,
    pump: PumpConfig,
    /// The fleet's cost settings, followed live (see [`crate::cost`]).
    fleet_cost: watch::Receiver<FleetCost>,
    /// The secrets of the worker's profiles, cut out of agent output.
    redactor: Arc<Redactor>,
}

impl std::fmt::Debug for SessionOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOutput")
            .field("worker", &self.worker)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl SessionOutput {
    pub fn new(
        client: async_nats::Client,
        reporter: Reporter,
        worker: WorkerId,
        state_dir: PathBuf,
    ) -> SessionOutput {
        SessionOutput {
            client,
            reporter,
            worker,
            state_dir: Arc::new(state_dir),
            pump: PumpConfig {
                // Whole tool results reach the cost guard, which compacts
                // them by the mode (with the sha256 of the whole).
                limits: glasspane::Limits {
                    result: crate::cost::WHOLE_RESULT_BYTES,
                    ..Default::default()
                },
                ..PumpConfig::default()
            },
            fleet_cost: watch::channel(FleetCost::default()).1,
            redactor: Arc::new(Redactor::default()),
        }
    }

    /// Replaces these secrets in every agent's output.
    pub fn with_redactor(mut self, redactor: Redactor) -> SessionOutput {
        self.redactor = Arc::new(redactor);
        self
    }

    /// Marks a session `stalled` after `after` without output.
    pub fn with_stall_after(mut self, after: std::time::Duration) -> SessionOutput {
        self.pump.stall_after = after;
        self
    }

    /// Follows the fleet's cost settings from `fleet_cost`.
    pub fn with_fleet_cost(mut self, fleet_cost: watch::Receiver<FleetCost>) -> SessionOutput {
        self.fleet_cost = fleet_cost;
        self
    }

    /// The session of `order`, run by the agent profile `agent` (its name
    /// picks the output format; `command` and unknown names are plain text).
    pub fn plan(&self, order: &RunOrder, agent: &str) -> SessionPlan {
        SessionPlan {
            output: self.clone(),
            meta: SessionMeta {
                session: order.session,
                task_id: order.task.id,
                attempt: order.attempt,
                worker: self.worker.clone(),
            },
            format: AgentFormat::for_agent(agent),
            cost_source: crate::cost::mode_source(order),
            spent: order.spent.clone(),
        }
    }
}

/// A session about to start: who it belongs to and how to read it.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    output: SessionOutput,
    meta: SessionMeta,
    format: AgentFormat,
    cost_source: costmode::ModeSource,
    /// The task's earlier attempts' usage (its spend ceiling is per task).
    spent: broker::messages::Usage,
}

impl SessionPlan {
    /// Starts the pump on the agent's output.
    pub fn start<O, E>(self, stdout: O, stderr: E) -> Session
    where
        O: AsyncRead + Unpin + Send + 'static,
        E: AsyncRead + Unpin + Send + 'static,
    {
        let SessionPlan {
            output,
            meta,
            format,
            cost_source,
            spent,
        } = self;
        let (guard, budget) = CostGuard::new(
            &meta,
            cost_source,
            spent,
            output.fleet_cost.clone(),
            output.state_dir.to_path_buf(),
        );
        let transcript = match Transcript::create(
            &output.state_dir,
            &meta.session,
            TranscriptConfig::default(),
        ) {
            Ok(t) => Some(t),
            Err(error) => {
                warn!(task_id = %meta.task_id, attempt = meta.attempt, session = %meta.session, %error,
                    "no transcript for this session");
                None
            }
        };
        let publisher = SessionPublisher::spawn(output.client.clone(), PUBLISH_CAPACITY);
        let (live_tx, live) = watch::channel(LiveState::default());
        let (ending_tx, ending_rx) = oneshot::channel();
        let exit = async move {
            ending_rx.await.unwrap_or_else(|_| AgentEnding {
                exit: AgentExit::default(),
                imposed: Some((
                    Outcome::Failed,
                    "the worker lost track of the agent's exit".into(),
                )),
            })
        };
        let attempt = AttemptRef {
            task_id: meta.task_id,
            attempt: meta.attempt,
        };
        let session = meta.session;
        let finish_timeout = output.pump.finish_timeout;
        let stdout = RedactingReader::new(stdout, output.redactor.clone());
        let stderr = RedactingReader::new(stderr, output.redactor.clone());
        let pump = tokio::spawn(glasspane::run_session_with(
            stdout,
            stderr,
            exit,
            meta,
            format,
            output.pump.clone(),
            publisher,
            transcript,
            live_tx,
            Box::new(guard),
        ));
        Session {
            live,
            budget,
            ending: Some(ending_tx),
            pump,
            finish_timeout,
            progress: Progress {
                reporter: output.reporter,
                attempt,
                session,
                stop: CancellationToken::new(),
                task: None,
            },
        }
    }
}

struct Progress {
    reporter: Reporter,
    attempt: AttemptRef,
    session: broker::SessionId,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// One attempt's running session.
pub struct Session {
    live: watch::Receiver<LiveState>,
    /// `Some(reason with the figures)` once the spend ceiling is crossed.
    budget: watch::Receiver<Option<String>>,
    ending: Option<oneshot::Sender<AgentEnding>>,
    pump: JoinHandle<SessionSummary>,
    finish_timeout: Duration,
    progress: Progress,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session", &self.progress.session)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// When the agent last printed a line (for the idle limit).
    pub fn last_output(&self) -> tokio::time::Instant {
        self.live.borrow().last_output
    }

    /// Resolves, with the figures, once the session crosses its spend
    /// ceiling (never, if it does not).
    pub async fn budget_exceeded(&mut self) -> String {
        let reason = match self.budget.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Starts sending `progress` reports (once the attempt is reported
    /// started, so that progress never precedes it).
    pub fn report_progress(&mut self) {
        if self.progress.task.is_some() {
            return;
        }
        let p = &self.progress;
        self.progress.task = Some(tokio::spawn(crate::progress::report(
            p.reporter.clone(),
            p.attempt,
            p.session,
            self.live.clone(),
            p.stop.clone(),
        )));
    }

    /// Hands the pump the agent's ending and waits for the session's end:
    /// the output read to EOF (within `eof_limit`; the tree is dead by now,
    /// so the pipes are closing), the final events published. Progress
    /// reports have stopped when this returns, so the caller's `finished`
    /// report comes after the last of them. `None` if the pump did not end
    /// in time.
    pub async fn end(
        mut self,
        mut ending: AgentEnding,
        eof_limit: Duration,
    ) -> Option<SessionSummary> {
        // A session that crossed its spend ceiling ends `budget_exceeded`
        // even when the agent exited before the stop reached it.
        if ending.imposed.is_none() {
            if let Some(reason) = self.budget.borrow().clone() {
                ending.imposed = Some((Outcome::BudgetExceeded, reason));
            }
        }
        if let Some(tx) = self.ending.take() {
            let _ = tx.send(ending);
        }
        let limit = eof_limit + self.finish_timeout;
        let summary = match tokio::time::timeout(limit, &mut self.pump).await {
            Ok(Ok(summary)) => Some(summary),
            Ok(Err(error)) => {
                warn!(session = %self.progress.session, %error, "session pump failed");
                None
            }
            Err(_) => {
                warn!(session = %self.progress.session, limit_ms = limit.as_millis() as u64,
                    "session pump did not end in time; abandoned");
                self.pump.abort();
                None
            }
        };
        self.progress.stop.cancel();
        if let Some(mut task) = self.progress.task.take() {
            if tokio::time::timeout(PROGRESS_STOP_LIMIT, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        summary
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.progress.stop.cancel();
    }
}
