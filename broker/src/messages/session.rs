//! Glasspane events on `colibri.session.<session>.<kind>`: one agent run's
//! output, normalised, each with a per-session sequence number.

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, TaskId, WorkerId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    #[serde(default = "super::wire_version")]
    pub v: u32,
    pub session: SessionId,
    /// 1, 2, 3, ... within the session, gap-free in the transcript.
    pub seq: u64,
    pub task_id: TaskId,
    pub attempt: u32,
    pub worker: WorkerId,
    pub at_ms: i64,
    /// The normalised event: an object with a `kind` field (see subjects.md).
    pub event: serde_json::Value,
}

impl SessionEvent {
    /// The event kind (`lifecycle`, `message`, `tool_start`, ...), the last
    /// subject token.
    pub fn kind(&self) -> &str {
        self.event
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("raw")
    }
}
