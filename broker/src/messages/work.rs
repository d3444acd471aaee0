//! Orders on `colibri.work.<worker>`: the scheduler's instructions to one
//! worker, in a work-queue stream the worker consumes durably.

use serde::{Deserialize, Serialize};

use crate::cost_mode::CostMode;
use crate::ids::{SessionId, TaskId};

use super::report::Usage;
use super::task::TaskSpec;

/// Envelope of every order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkMessage {
    #[serde(default = "super::wire_version")]
    pub v: u32,
    #[serde(flatten)]
    pub item: WorkItem,
}

impl WorkMessage {
    pub fn new(item: WorkItem) -> Self {
        WorkMessage {
            v: crate::WIRE_VERSION,
            item,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkItem {
    Run(Box<RunOrder>),
    Cancel(CancelOrder),
}

/// Run `task` as attempt `attempt`. The pair (task id, attempt) is the
/// fencing token: reports for any other attempt are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOrder {
    pub task: TaskSpec,
    pub attempt: u32,
    pub session: SessionId,
    /// Cost mode in force when placed (the task's own, or the fleet's).
    pub cost_mode: CostMode,
    /// What the task's earlier attempts used: the spend ceiling is per task,
    /// so this attempt starts from it.
    #[serde(default, skip_serializing_if = "Usage::is_zero")]
    pub spent: Usage,
    /// For a task continuing a session whose transcript was shared: the
    /// share its worker reported. A worker fetching the transcript refuses
    /// an object whose digest differs (another host replaced it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_from: Option<super::report::SharedTranscript>,
}

/// Stop attempt `attempt` of `task_id` (cancel, or fencing of a stale attempt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelOrder {
    pub task_id: TaskId,
    pub attempt: u32,
    pub reason: String,
}
