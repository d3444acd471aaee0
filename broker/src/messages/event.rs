//! Lifecycle events published by the scheduler: `colibri.task.<task>.state`
//! for every task transition, `colibri.worker.<worker>.state` for workers.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{TaskId, WorkerId};
use crate::tag::Tag;

/// A task's state on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, not placed (parked when no live worker qualifies).
    Queued,
    /// Placed on a worker, not started.
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    BudgetExceeded,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Queued,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::TimedOut,
        TaskState::BudgetExceeded,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            TaskState::Queued | TaskState::Assigned | TaskState::Running
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::TimedOut => "timed_out",
            TaskState::BudgetExceeded => "budget_exceeded",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`TaskState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("status: {0:?} is not a task state; use one of queued, assigned, running, succeeded, failed, cancelled, timed_out, budget_exceeded")]
pub struct UnknownTaskState(pub String);

impl std::str::FromStr for TaskState {
    type Err = UnknownTaskState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownTaskState(s.to_string()))
    }
}

/// Why a queued task is not placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParkReason {
    /// No live worker at all.
    NoWorkers,
    /// No live worker has every required tag (or the agent); `missing` is
    /// what the closest worker lacks.
    Unmatched {
        closest: WorkerId,
        missing_tags: Vec<Tag>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        missing_agent: Option<Tag>,
    },
    /// Qualifying workers exist, all slots are in use.
    Busy { qualifying: u32 },
    /// Waiting out retry backoff.
    Backoff { until_ms: i64 },
    /// A continued session waits for the worker holding its transcript.
    Home { worker: WorkerId },
}

impl fmt::Display for ParkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParkReason::NoWorkers => f.write_str("no live worker"),
            ParkReason::Unmatched {
                closest,
                missing_tags,
                missing_agent,
            } => {
                let mut parts = Vec::new();
                if !missing_tags.is_empty() {
                    let tags: Vec<_> = missing_tags.iter().map(Tag::as_str).collect();
                    parts.push(format!("tags {}", tags.join(",")));
                }
                if let Some(agent) = missing_agent {
                    parts.push(format!("agent {agent}"));
                }
                write!(
                    f,
                    "no live worker has {} (closest: {closest})",
                    parts.join(" and ")
                )
            }
            ParkReason::Busy { qualifying } => {
                write!(f, "all {qualifying} qualifying workers are full")
            }
            ParkReason::Home { worker } => {
                write!(
                    f,
                    "waiting for worker {worker}, which holds the session's transcript"
                )
            }
            ParkReason::Backoff { until_ms } => {
                write!(
                    f,
                    "retry backoff until {}",
                    crate::time_ms::rfc3339(*until_ms)
                )
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    #[serde(default = "super::wire_version")]
    pub v: u32,
    pub task_id: TaskId,
    pub state: TaskState,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerId>,
    /// Why (parked reason, failure cause, cancel reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<ParkReason>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Online,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerEvent {
    #[serde(default = "super::wire_version")]
    pub v: u32,
    pub worker: WorkerId,
    pub state: WorkerState,
    pub reason: String,
    pub at_ms: i64,
}
