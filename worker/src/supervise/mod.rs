//! Supervision of one running agent: its handle (pid, process group, start
//! time, output pipes), its limits (run time, idle time), stopping it on
//! request, and killing its whole tree so that nothing is left behind.
//!
//! - [`spawn`]: set-up, spawn in its own process group, retries with backoff;
//! - [`kill`]: SIGTERM, grace, SIGKILL of every process of the attempt;
//! - [`sandbox_status`]: bwrap's report that its sandbox runs the agent;
//! - [`procfs`]: the process table the killer reads.

pub mod child;
pub mod kill;
pub mod limits;
pub mod procfs;
pub mod sandbox_status;
pub mod spawn;

use std::time::{Duration, Instant};

use broker::messages::{Outcome, Usage};
use glasspane::{AgentEnding, AgentExit, SessionSummary};
use tokio::process::Child;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::session_output::{Session, SessionPlan};
pub use child::Ids;
pub use kill::{Tree, MARKER_VAR};
pub use limits::LimitGuard;
pub use spawn::{OutputMode, SpawnError, SpawnSpec};

/// Why an agent is being stopped from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    /// A cancel order (operator cancel, or fencing of a stale attempt).
    Cancel(String),
    /// The worker is shutting down.
    Shutdown,
}

impl StopCause {
    pub fn outcome(&self) -> Outcome {
        match self {
            StopCause::Cancel(_) => Outcome::Cancelled,
            StopCause::Shutdown => Outcome::Interrupted,
        }
    }

    pub fn reason(&self) -> String {
        match self {
            StopCause::Cancel(reason) => format!("cancelled: {reason}"),
            StopCause::Shutdown => "worker shutting down".to_string(),
        }
    }
}

/// The stop signal of one attempt: `None` while it may run.
pub type StopRx = watch::Receiver<Option<StopCause>>;

/// Limits of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    pub run: Duration,
    pub idle: Duration,
    pub kill_grace: Duration,
    /// Grace when the worker shuts down (bounded by its shutdown grace).
    pub shutdown_kill_grace: Duration,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    /// Tokens and cost the agent reported (none when it reported nothing).
    pub usage: Option<Usage>,
    /// The session's summary, when its output was read.
    pub session: Option<SessionSummary>,
}

impl Ending {
    /// An attempt that ended without running (refused, could not start).
    pub fn without_run(outcome: Outcome, reason: impl Into<String>) -> Ending {
        Ending {
            outcome,
            exit_code: None,
            signal: None,
            reason: Some(reason.into()),
            usage: None,
            session: None,
        }
    }
}

enum End {
    Exited(Option<std::process::ExitStatus>),
    Forced(Outcome, String),
}

/// A running agent.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
    pid: u32,
    started: Instant,
    tree: Tree,
    /// The glasspane session reading its output; none when the output is
    /// not piped to the worker (`spawn-local`).
    session: Option<Session>,
    cleanup: Vec<Vec<String>>,
    /// The attempt's resource limits, watched while it runs.
    guard: Option<LimitGuard>,
}

impl Supervised {
    /// Takes over a freshly spawned child: starts its session on its output
    /// (when `plan` is given and the output is piped).
    pub fn new(
        mut child: Child,
        marker: String,
        contained: bool,
        cleanup: Vec<Vec<String>>,
        plan: Option<SessionPlan>,
    ) -> Option<Supervised> {
        let pid = child.id()?;
        let started = Instant::now();
        let session = match (plan, child.stdout.take(), child.stderr.take()) {
            (Some(plan), Some(stdout), Some(stderr)) => Some(plan.start(stdout, stderr)),
            _ => None,
        };
        Some(Supervised {
            child,
            pid,
            started,
            tree: Tree {
                pgid: pid as i32,
                marker,
                contained,
                since: procfs::process(pid as i32).map_or(0, |p| p.start),
                forks_at_start: procfs::forks(),
            },
            session,
            cleanup,
            guard: None,
        })
    }

    /// Watches `guard`'s limits while the agent runs; crossing one ends
    /// the attempt `failed`, naming the limit.
    pub fn with_limits(mut self, guard: LimitGuard) -> Supervised {
        self.guard = Some(guard);
        self
    }

    /// When the agent last printed a line (its start, without a session).
    fn last_output(&self) -> tokio::time::Instant {
        match &self.session {
            Some(s) => s.last_output(),
            None => tokio::time::Instant::from_std(self.started),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Runs the agent to its end: its own exit, a limit, or a stop request.
    /// Whatever the end, the whole tree is gone when this returns.
    pub async fn wait(mut self, limits: AttemptLimits, stop: &mut StopRx) -> Ending {
        let deadline = tokio::time::Instant::from_std(later(self.started, limits.run));
        if let Some(session) = self.session.as_mut() {
            session.report_progress();
        }
        let mut stop_open = true;
        let end = loop {
            if let Some(cause) = stop.borrow().clone() {
                break End::Forced(cause.outcome(), cause.reason());
            }
            let idle_at = later_tokio(self.last_output(), limits.idle);
            tokio::select! {
                status = self.child.wait() => break End::Exited(status.ok()),
                _ = tokio::time::sleep_until(deadline) => {
                    break End::Forced(Outcome::TimedOut, format!("run time limit of {} s reached", limits.run.as_secs()));
                }
                _ = tokio::time::sleep_until(idle_at) => {
                    if self.last_output().elapsed() >= limits.idle {
                        break End::Forced(Outcome::TimedOut, format!("idle limit: no output for {} s", limits.idle.as_secs()));
                    }
                }
                reason = budget_stop(&mut self.session) => {
                    break End::Forced(Outcome::BudgetExceeded, reason);
                }
                reason = limit_crossed(&self.guard) => {
                    break End::Forced(Outcome::Failed, reason);
                }
                changed = stop.changed(), if stop_open => {
                    if changed.is_err() {
                        stop_open = false;
                    }
                }
            }
        };
        match end {
            End::Exited(status) => self.finish(None, status, limits).await,
            End::Forced(outcome, reason) => {
                self.finish(Some((outcome, reason)), None, limits).await
            }
        }
    }

    async fn finish(
        mut self,
        forced: Option<(Outcome, String)>,
        status: Option<std::process::ExitStatus>,
        limits: AttemptLimits,
    ) -> Ending {
        if let Some((outcome, reason)) = &forced {
            info!(pid = self.pid, ?outcome, %reason, "stopping the agent");
        }
        // Kill the tree in both cases: after a natural exit this removes
        // whatever the agent left running.
        let grace = match &forced {
            Some((Outcome::Interrupted, _)) => limits.kill_grace.min(limits.shutdown_kill_grace),
            Some(_) => limits.kill_grace,
            None => limits.kill_grace.min(Duration::from_secs(1)),
        };
        if forced.is_none() {
            // Exited by itself. In a sandbox, its end took every process with
            // it; unconfined, one look finds what it left running, if anything.
            self.tree.kill_group();
            if !self.tree.contained && !self.tree.members().is_empty() {
                self.tree.kill(grace).await;
            }
        } else {
            self.tree.kill(grace).await;
        }
        // A limit that fired as the agent ended (an OOM kill ends it at once)
        // decides over how it exited.
        let crossed = match (&self.guard, &forced) {
            (Some(guard), None) => guard.check_now().await,
            _ => None,
        };
        let forced = forced.or(crossed.clone().map(|r| (Outcome::Failed, r)));
        if let Some(guard) = &self.guard {
            guard.release().await;
        }
        let status = match status {
            Some(s) => Some(s),
            None => tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .ok()
                .and_then(|r| r.ok()),
        };
        let exit = status.map(AgentExit::from).unwrap_or_default();
        let exit_code = exit.code;
        let signal = exit.signal;
        let summary = match self.session.take() {
            Some(session) => {
                let ending = AgentEnding {
                    exit,
                    imposed: forced.clone(),
                };
                session.end(ending, Duration::from_secs(5)).await
            }
            None => None,
        };
        spawn::run_cleanup(&self.cleanup).await;
        debug!(
            pid = self.pid,
            ?exit_code,
            ?signal,
            events = summary.as_ref().map(|s| s.events),
            dropped = summary.as_ref().map(|s| s.dropped),
            "agent ended"
        );
        let (outcome, reason) = match (&summary, forced) {
            (_, Some((outcome, reason))) if crossed.is_some() => (outcome, Some(reason)),
            (Some(s), _) => (s.outcome, s.reason.clone()),
            (None, Some((outcome, reason))) => (outcome, Some(reason)),
            (None, None) => judge(exit_code, signal),
        };
        let usage = summary
            .as_ref()
            .map(|s| s.usage.clone())
            .filter(|u| *u != Usage::default());
        Ending {
            outcome,
            exit_code,
            signal,
            reason,
            usage,
            session: summary,
        }
    }
}

/// `at + d`, saturating at about a year ahead instead of overflowing.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(at)
}

/// `at + d` on tokio's clock, saturating like [`later`].
fn later_tokio(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(later(at.into_std(), d))
}

/// Success or failure of an agent that ended on its own when no session read
/// its output (`spawn-local`, or a pump that did not end): its exit status.
/// With a session, the agent's own end signal decides (see `glasspane`).
pub fn judge(exit_code: Option<i32>, signal: Option<i32>) -> (Outcome, Option<String>) {
    match (exit_code, signal) {
        (Some(0), _) => (Outcome::Succeeded, None),
        (Some(code), _) => (Outcome::Failed, Some(format!("exited with status {code}"))),
        (None, Some(sig)) => (Outcome::Failed, Some(format!("killed by signal {sig}"))),
        (None, None) => (Outcome::Failed, Some("exit status unknown".to_string())),
    }
}

/// The reason once `guard`'s limit is crossed; never without a guard.
async fn limit_crossed(guard: &Option<LimitGuard>) -> String {
    match guard {
        Some(g) => g.crossed().await,
        None => std::future::pending().await,
    }
}

/// The figures once `session` crosses its spend ceiling; never without a
/// session.
async fn budget_stop(session: &mut Option<Session>) -> String {
    match session {
        Some(s) => s.budget_exceeded().await,
        None => std::future::pending().await,
    }
}
