//! Requests and replies of the scheduler's `$SRV` service endpoints
//! (`colibri.api.<endpoint>`). Every reply is an [`ApiReply`]: either
//! `{"ok": ...}` or `{"error": {"kind": ..., "message": ...}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cost_mode::CostMode;
use crate::ids::{SessionId, TaskId, WorkerId};
use crate::tag::TagSet;

use super::event::{ParkReason, TaskState};
use super::report::{Outcome, Usage};

/// Default and largest page of `list-tasks`.
pub const LIST_DEFAULT_LIMIT: u32 = 100;
pub const LIST_MAX_LIMIT: u32 = 1_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiReply<T> {
    Ok(T),
    Error(ApiError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorKind {
    /// The request broke a rule (names the field); the CLI exits 2.
    Invalid,
    NotFound,
    /// The request cannot apply in the task's current state.
    Conflict,
    Internal,
}

impl std::fmt::Display for ApiErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiErrorKind::Invalid => "invalid",
            ApiErrorKind::NotFound => "not_found",
            ApiErrorKind::Conflict => "conflict",
            ApiErrorKind::Internal => "internal",
        })
    }
}

/// Reply of `create-task` (request: a [`super::TaskSpec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateTaskReply {
    pub task_id: TaskId,
    pub state: TaskState,
    /// False when the id already existed (a retried create).
    pub created: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListTasksRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskState>,
    /// Page size; [`LIST_DEFAULT_LIMIT`] when absent, at most [`LIST_MAX_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Continue after this task id (the previous page's `next`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<TaskId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListTasksReply {
    pub tasks: Vec<TaskSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<TaskId>,
}

/// One row of the board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task_id: TaskId,
    pub title: String,
    pub state: TaskState,
    pub agent: String,
    pub capabilities: TagSet,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerId>,
    /// Why a queued task is not placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<ParkReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRef {
    pub task_id: TaskId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub task_id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelReply {
    pub task_id: TaskId,
    /// The state after the request: `cancelled` at once for an unplaced
    /// task, or still `assigned`/`running` while the worker stops it.
    pub state: TaskState,
}

/// Reply of `show-task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    pub summary: TaskSummary,
    pub spec: super::TaskSpec,
    pub attempts: Vec<AttemptRecord>,
    pub transitions: Vec<Transition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker: WorkerId,
    pub session: SessionId,
    pub assigned_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Live session summary of a running attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pane: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The session's latest cost-mode escalation (its `to` is the mode in
    /// force since), with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<super::report::Escalated>,
    /// Where the session's transcript was shared for continuing elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<super::report::SharedTranscript>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub state: TaskState,
    pub attempt: u32,
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Reply of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub workers: Vec<WorkerStatus>,
    pub tasks: BTreeMap<TaskState, u64>,
    pub cost_mode: CostMode,
    /// Running attempts with their live session summary.
    #[serde(default)]
    pub running: Vec<RunningAttempt>,
    /// Scheduler counters: malformed messages dropped, stale reports fenced, ...
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub worker: WorkerId,
    pub host: String,
    pub online: bool,
    pub tags: TagSet,
    pub agents: TagSet,
    pub slots: u32,
    pub slots_used: u32,
    pub version: String,
    pub last_seen_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningAttempt {
    pub task_id: TaskId,
    pub title: String,
    pub record: AttemptRecord,
}

/// Reply of `snapshot`: the whole board (tasks paginated like `list-tasks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReply {
    pub status: StatusReply,
    pub tasks: Vec<TaskSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<TaskId>,
}
