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

/// Largest reply the scheduler sends, in bytes (NATS's default
/// `max_payload` is 1 MiB). Pages are cut by bytes to stay under it, texts
/// are trimmed; a reply that would still exceed it is an `internal` error,
/// logged, never a silent timeout.
pub const MAX_REPLY_BYTES: usize = 768 * 1024;
/// Bytes of task rows in one `list-tasks` page (`snapshot`: half).
pub const PAGE_BYTES: usize = 512 * 1024;
/// Bytes of workers in one `status` reply, and of its running attempts.
pub const STATUS_WORKERS_BYTES: usize = 128 * 1024;
pub const STATUS_RUNNING_BYTES: usize = 128 * 1024;
/// Longest reason, tool name or argument in a reply, in bytes; longer ones
/// are cut on a UTF-8 boundary and end with `…`.
pub const REPLY_TEXT_BYTES: usize = 2 * 1024;
/// Longest prompt `show-task` returns, in bytes.
pub const REPLY_PROMPT_BYTES: usize = 64 * 1024;

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

impl ListTasksRequest {
    /// Checks the request's rules (`limit: must be 1..1000`).
    pub fn validate(&self) -> Result<(), ApiError> {
        if self
            .limit
            .is_some_and(|l| !(1..=LIST_MAX_LIMIT).contains(&l))
        {
            return Err(ApiError::invalid(
                "limit",
                &format!("must be 1..{LIST_MAX_LIMIT}"),
            ));
        }
        Ok(())
    }
}

impl ApiError {
    /// An `invalid` error naming `field` and the rule it broke.
    pub fn invalid(field: &str, rule: &str) -> ApiError {
        ApiError {
            kind: ApiErrorKind::Invalid,
            message: format!("{field}: {rule}"),
        }
    }
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

impl TaskSummary {
    /// Texts cut for a reply: title to its 200 characters, reason to
    /// [`REPLY_TEXT_BYTES`].
    pub fn trim(&mut self) {
        if self.title.len() > super::task::MAX_TITLE_LEN {
            self.title = self
                .title
                .chars()
                .take(super::task::MAX_TITLE_LEN)
                .collect();
        }
        trim_opt(&mut self.reason);
    }
}

fn trim_opt(text: &mut Option<String>) {
    if let Some(t) = text.as_mut().filter(|t| t.len() > REPLY_TEXT_BYTES) {
        *t = super::trim_text(t, REPLY_TEXT_BYTES);
    }
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
    /// Texts were cut (prompt to [`REPLY_PROMPT_BYTES`], other texts to
    /// [`REPLY_TEXT_BYTES`]) or the oldest attempts and transitions left
    /// out (`omitted`) to keep the reply under [`MAX_REPLY_BYTES`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trimmed: bool,
    /// How many of the oldest attempts and transitions were left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<Omitted>,
}

/// Counts of the oldest records a bounded reply left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Omitted {
    pub attempts: usize,
    pub transitions: usize,
}

impl TaskDetail {
    /// Cuts texts, then, while the reply is still over `budget` bytes,
    /// leaves out the oldest attempts and transitions (the newest say the
    /// most). Sets `trimmed` when anything was cut.
    pub fn bound(&mut self, budget: usize) {
        let before = self.clone();
        self.summary.trim();
        let prompt = self.spec.prompt.take();
        self.spec = self.spec.trimmed(REPLY_TEXT_BYTES);
        self.spec.prompt = prompt.map(|p| super::trim_text(&p, REPLY_PROMPT_BYTES));
        for a in self.attempts.iter_mut() {
            a.trim();
        }
        for t in self.transitions.iter_mut() {
            trim_opt(&mut t.reason);
        }
        let mut omitted = Omitted::default();
        while super::encode(self).len() > budget
            && (self.attempts.len() > 1 || self.transitions.len() > 1)
        {
            // Halve the older half away at a time: a few encodes at most.
            let drop_t = self.transitions.len() / 2;
            self.transitions.drain(..drop_t);
            omitted.transitions += drop_t;
            let drop_a = self.attempts.len() / 2;
            self.attempts.drain(..drop_a);
            omitted.attempts += drop_a;
        }
        if omitted != Omitted::default() {
            self.omitted = Some(omitted);
        }
        self.trimmed = *self != before;
    }
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

impl AttemptRecord {
    /// Texts cut to [`REPLY_TEXT_BYTES`].
    pub fn trim(&mut self) {
        trim_opt(&mut self.reason);
        trim_opt(&mut self.current_tool);
        trim_opt(&mut self.pane);
        if let Some(e) = self.escalation.as_mut() {
            e.reason = super::trim_text(&e.reason, REPLY_TEXT_BYTES);
        }
        if let Some(t) = self.transcript.as_mut() {
            t.digest = super::trim_text(&t.digest, REPLY_TEXT_BYTES);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub state: TaskState,
    pub attempt: u32,
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Request of `status` (`{}` for the first page of workers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Continue the worker list after this worker (the previous reply's
    /// `workers_next`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_after: Option<WorkerId>,
}

/// Reply of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Workers by id, as many as fit in [`STATUS_WORKERS_BYTES`].
    pub workers: Vec<WorkerStatus>,
    /// More workers follow: pass as `workers_after`; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_next: Option<WorkerId>,
    pub tasks: BTreeMap<TaskState, u64>,
    pub cost_mode: CostMode,
    /// Running attempts with their live session summary, oldest task
    /// first, as many as fit in [`STATUS_RUNNING_BYTES`].
    #[serde(default)]
    pub running: Vec<RunningAttempt>,
    /// Running attempts left out of `running` for its byte bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub running_omitted: usize,
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

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningAttempt {
    pub task_id: TaskId,
    pub title: String,
    pub record: AttemptRecord,
}

impl RunningAttempt {
    /// Texts cut for a reply.
    pub fn trim(&mut self) {
        if self.title.len() > super::task::MAX_TITLE_LEN {
            self.title = self
                .title
                .chars()
                .take(super::task::MAX_TITLE_LEN)
                .collect();
        }
        self.record.trim();
    }
}

/// The longest prefix of `items` whose JSON fits in `budget` bytes, and
/// whether anything was left out. Each item is encoded once.
pub fn fit_bytes<T: Serialize>(items: Vec<T>, budget: usize) -> (Vec<T>, bool) {
    let mut used = 2; // the brackets
    let mut out = Vec::with_capacity(items.len());
    let total = items.len();
    for item in items {
        let len = super::encode(&item).len() + 1; // and a comma
        if used + len > budget {
            break;
        }
        used += len;
        out.push(item);
    }
    let cut = out.len() < total;
    (out, cut)
}

/// Reply of `snapshot`: the whole board (tasks paginated like `list-tasks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReply {
    pub status: StatusReply,
    pub tasks: Vec<TaskSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<TaskId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Regression: `limit: 0` was clamped to 1 and a limit over 1000 to
    // 1000 without a word; both are errors that name the field.
    #[test]
    fn limit_must_be_in_range() {
        let req = |limit| ListTasksRequest {
            limit: Some(limit),
            ..Default::default()
        };
        for bad in [0, LIST_MAX_LIMIT + 1] {
            let e = req(bad).validate().unwrap_err();
            assert_eq!(e.kind, ApiErrorKind::Invalid);
            assert_eq!(e.message, "limit: must be 1..1000");
        }
        req(1).validate().unwrap();
        req(LIST_MAX_LIMIT).validate().unwrap();
        ListTasksRequest::default().validate().unwrap();
    }

    #[test]
    fn fit_bytes_keeps_a_prefix_under_the_budget() {
        let items: Vec<String> = (0..100).map(|_| "x".repeat(98)).collect();
        let (kept, cut) = fit_bytes(items, 1_000);
        assert!(cut);
        assert_eq!(kept.len(), 9);
        assert!(crate::messages::encode(&kept).len() <= 1_000);
        let (kept, cut) = fit_bytes(vec![1, 2, 3], 1_000);
        assert_eq!((kept.len(), cut), (3, false));
    }

    fn detail(title_bytes: usize, transitions: usize) -> TaskDetail {
        let spec =
            crate::messages::TaskSpec::command("t", crate::tag::TagSet::new(), vec!["true".into()]);
        let mut big = spec.clone();
        big.title = "x".repeat(title_bytes);
        big.prompt = Some("p".repeat(title_bytes));
        TaskDetail {
            summary: TaskSummary {
                task_id: spec.id,
                title: big.title.clone(),
                state: TaskState::Failed,
                agent: "command".into(),
                capabilities: Default::default(),
                attempt: 0,
                worker: None,
                parked: None,
                reason: Some("r".repeat(title_bytes)),
                created_at_ms: 0,
                updated_at_ms: 0,
            },
            spec: big,
            attempts: vec![],
            transitions: (0..transitions)
                .map(|i| Transition {
                    state: TaskState::Queued,
                    attempt: i as u32,
                    at_ms: 0,
                    reason: Some("why".repeat(300)),
                })
                .collect(),
            trimmed: false,
            omitted: None,
        }
    }

    // Regression: show-task of a task with a 1 MB title produced a reply
    // over NATS's 1 MiB max_payload, which was never sent.
    #[test]
    fn a_detail_is_bounded() {
        let mut d = detail(1 << 20, 2);
        d.bound(MAX_REPLY_BYTES);
        assert!(d.trimmed);
        assert!(crate::messages::encode(&d).len() <= MAX_REPLY_BYTES);
        assert_eq!(d.summary.title.len(), crate::messages::task::MAX_TITLE_LEN);
        let mut d = detail(10, 5_000);
        d.bound(MAX_REPLY_BYTES);
        assert!(crate::messages::encode(&d).len() <= MAX_REPLY_BYTES);
        let omitted = d.omitted.clone().unwrap();
        assert_eq!(omitted.transitions + d.transitions.len(), 5_000);
        let mut small = detail(10, 2);
        small.summary.reason = None;
        small.spec.prompt = None;
        small.transitions.clear();
        small.bound(MAX_REPLY_BYTES);
        assert!(!small.trimmed);
    }
}
