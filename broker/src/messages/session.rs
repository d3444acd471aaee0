//! Glasspane events on `colibri.session.<session>.<worker>.<kind>`: one agent run's
//! output, normalised, each with a per-session sequence number.
//!
//! A [`SessionEvent`] is the envelope (who, which attempt, which sequence
//! number, when); [`Event`] is the normalised payload, tagged by `kind`, whose
//! value is also the last subject token. Every agent format (pi, Claude Code,
//! Codex, plain text) is mapped onto the same small set of kinds by the
//! `glasspane` crate; anything it does not recognise becomes [`Event::Raw`].
//!
//! Texts (messages, tool arguments and results, raw lines) are trimmed to a
//! limit chosen by the worker; the `*_len` fields always carry the true size
//! in bytes, so a reader knows how much was cut.

use serde::{Deserialize, Serialize};

use crate::cost_mode::CostMode;
use crate::ids::{SessionId, TaskId, WorkerId};
use crate::messages::report::Usage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    #[serde(default = "super::wire_version")]
    pub v: u32,
    pub session: SessionId,
    /// 1, 2, 3, ... within the session, gap-free in the transcript. A live
    /// subscriber sees a gap only where an [`Event::Dropped`] says so.
    pub seq: u64,
    pub task_id: TaskId,
    pub attempt: u32,
    pub worker: WorkerId,
    pub at_ms: i64,
    /// The normalised event (see subjects.md, "Session events").
    pub event: Event,
}

impl SessionEvent {
    /// The event kind (`lifecycle`, `message`, `tool_start`, ...), the last
    /// subject token.
    pub fn kind(&self) -> &'static str {
        self.event.kind()
    }
}

/// The pane state machine of one session:
/// `starting → running ⇄ stalled → stopped | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pane {
    /// Spawned, nothing read from it yet.
    Starting,
    /// Printing output.
    Running,
    /// Silent for longer than the worker's stall threshold; back to
    /// `running` at its next line.
    Stalled,
    /// Ended, judged successful.
    Stopped,
    /// Ended, judged failed.
    Failed,
}

impl Pane {
    pub fn as_str(self) -> &'static str {
        match self {
            Pane::Starting => "starting",
            Pane::Running => "running",
            Pane::Stalled => "stalled",
            Pane::Stopped => "stopped",
            Pane::Failed => "failed",
        }
    }

    /// `stopped` or `failed`: no further state change follows.
    pub fn is_final(self) -> bool {
        matches!(self, Pane::Stopped | Pane::Failed)
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The agent's answer text.
    Assistant,
    /// The model's visible reasoning (Claude thinking, Codex reasoning).
    Thinking,
}

/// Start or end of an agent-side operation (compaction, retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    End,
}

/// Which output stream a raw line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One normalised glasspane event. The `kind` tag is the subject's last
/// token. Readers must accept kinds they do not know ([`Event::Unknown`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The pane changed state.
    Lifecycle {
        pane: Pane,
        /// Why (for `stalled`: how long silent; for `failed`: the verdict).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The agent announced its own session (pi's header, Claude's
    /// `system/init`, Codex's `thread.started`).
    AgentSession {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_session_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// A complete assistant (or thinking) message.
    Message {
        role: Role,
        /// The text, trimmed to the worker's limit.
        text: String,
        /// True length of the text in bytes.
        len: usize,
    },
    /// A tool call began.
    ToolStart {
        id: String,
        name: String,
        /// Arguments as compact JSON (or the command line), trimmed.
        args: String,
        args_len: usize,
    },
    /// A tool call ended.
    ToolEnd {
        id: String,
        name: String,
        /// The result text, trimmed.
        result: String,
        result_len: usize,
        is_error: bool,
    },
    /// Tokens (and cost where the agent reports it) of one model response,
    /// counted once per response, with the session totals so far.
    Usage { response: Usage, total: Usage },
    /// The agent compacting its own context.
    Compaction {
        phase: Phase,
        /// `threshold`, `overflow`, `manual`, `auto`, ...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens_before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The agent retrying a failed model call. Never final on its own.
    Retry {
        phase: Phase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_attempts: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// On `end`: whether the retry got through.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        success: Option<bool>,
    },
    /// A line glasspane did not recognise (or any stderr line), trimmed.
    Raw {
        stream: Stream,
        text: String,
        len: usize,
    },
    /// `count` live events were not published because the agent produced
    /// them faster than NATS took them. They are in the transcript.
    Dropped { count: u64 },
    /// The transcript stopped keeping bulky events at its byte cap; this
    /// many events (bytes) are missing from it but were published live.
    Truncated { events: u64, bytes: u64 },
    /// The session's last event: the verdict.
    End {
        success: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The worker compacted the session's transcript under its cost mode:
    /// older turns were replaced by this one entry, which records what was
    /// removed (it subsumes any earlier summary of the same segment).
    Summary(Box<Summary>),
    /// The transcript continues in a new segment file
    /// (`<session>.<index>.jsonl`); the first entry of every later segment.
    Segment {
        index: u32,
        /// File name of the previous segment, in the same directory.
        previous: String,
        reason: String,
    },
    /// The session's cost mode went one step looser because compaction
    /// could not bring it under its limits.
    Escalation {
        from: CostMode,
        to: CostMode,
        /// The operator's ceiling, beyond which no escalation goes.
        ceiling: CostMode,
        reason: String,
    },
    /// A kind this build does not know (from a newer writer).
    #[serde(other)]
    Unknown,
}

/// What a cost-mode compaction removed from a transcript segment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// The mode in force when it was compacted.
    pub mode: CostMode,
    /// Why (`6 uncompacted turns > 5`, `512000 bytes > 500000`, ...).
    pub reason: String,
    /// Turns, events and transcript bytes removed (all compactions so far).
    pub turns: u64,
    pub events: u64,
    pub bytes: u64,
    /// `seq` range of the removed events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// Tools used in the removed turns, with their call counts.
    #[serde(default)]
    pub tools: std::collections::BTreeMap<String, u64>,
    /// Files named in the removed tool calls' arguments (where known).
    #[serde(default)]
    pub files: Vec<String>,
    /// Tokens reported by the removed turns' usage events.
    #[serde(default)]
    pub tokens: u64,
    /// The removed assistant messages' last words, trimmed: a reader's (and
    /// a continued prompt's) memory of what happened.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
}

impl Event {
    /// The `kind` tag, also the last subject token.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Lifecycle { .. } => "lifecycle",
            Event::AgentSession { .. } => "agent_session",
            Event::Message { .. } => "message",
            Event::ToolStart { .. } => "tool_start",
            Event::ToolEnd { .. } => "tool_end",
            Event::Usage { .. } => "usage",
            Event::Compaction { .. } => "compaction",
            Event::Retry { .. } => "retry",
            Event::Raw { .. } => "raw",
            Event::Dropped { .. } => "dropped",
            Event::Truncated { .. } => "truncated",
            Event::End { .. } => "end",
            Event::Summary(_) => "summary",
            Event::Segment { .. } => "segment",
            Event::Escalation { .. } => "escalation",
            Event::Unknown => "unknown",
        }
    }

    /// The session's last event.
    pub fn is_end(&self) -> bool {
        matches!(self, Event::End { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_the_serde_tag() {
        let events = [
            Event::Lifecycle {
                pane: Pane::Running,
                reason: None,
            },
            Event::Dropped { count: 3 },
            Event::End {
                success: true,
                reason: None,
            },
        ];
        for e in events {
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["kind"], e.kind());
            let back: Event = serde_json::from_value(v).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn unknown_kinds_are_accepted() {
        let e: Event = serde_json::from_str(r#"{"kind":"from_the_future","x":1}"#).unwrap();
        assert_eq!(e, Event::Unknown);
    }
}
