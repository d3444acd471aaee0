//! Reports on `colibri.task.<task>.report`: a worker tells the scheduler what
//! happened to one attempt. Published through JetStream with
//! `Nats-Msg-Id: <task>:<attempt>:<kind>` so a retried publish is deduplicated;
//! `progress` reports, of which an attempt sends many, add the worker's
//! incarnation and the report's `seq` (`<task>:<attempt>:progress:<incarnation>:<seq>`).

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, TaskId, WorkerId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    #[serde(default = "super::wire_version")]
    pub v: u32,
    pub task_id: TaskId,
    pub attempt: u32,
    pub worker: WorkerId,
    /// The reporting worker process (changes at every worker start).
    pub incarnation: uuid::Uuid,
    pub at_ms: i64,
    #[serde(flatten)]
    pub body: ReportBody,
}

impl Report {
    /// The `Nats-Msg-Id` of this report: one per kind and attempt, except
    /// `progress`, which is unique per report of one worker process.
    pub fn msg_id(&self) -> String {
        match &self.body {
            ReportBody::Progress { seq, .. } => format!(
                "{}:{}:progress:{}:{seq}",
                self.task_id,
                self.attempt,
                self.incarnation.simple()
            ),
            body => format!("{}:{}:{}", self.task_id, self.attempt, body.kind()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportBody {
    /// The agent process is running.
    Started {
        session: SessionId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    /// The attempt ended.
    Finished {
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// The session's transcript, shared through the transcript object
        /// store so that another worker can continue the session; absent
        /// when the attempt had no transcript or sharing it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transcript: Option<SharedTranscript>,
    },
    /// Live session summary (pane state, current tool, spend so far), sent
    /// when it changes, at most a few times a second.
    Progress {
        session: SessionId,
        pane: String,
        last_event_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_tool: Option<String>,
        #[serde(default)]
        usage: Usage,
        /// Numbers this attempt's progress reports (1, 2, ...) so that each
        /// has its own `Nats-Msg-Id`; 0 from senders that predate it.
        #[serde(default)]
        seq: u64,
        /// The session's latest cost-mode escalation, if it escalated.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        escalation: Option<Escalated>,
    },
}

impl ReportBody {
    pub fn kind(&self) -> &'static str {
        match self {
            ReportBody::Started { .. } => "started",
            ReportBody::Finished { .. } => "finished",
            ReportBody::Progress { .. } => "progress",
        }
    }
}

/// A session's transcript in the object store `colibri-transcripts`: the
/// object is named by the session id and holds the latest segment (the
/// compacted one a continued session's prompt is built from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedTranscript {
    pub session: SessionId,
    /// The segment index the object holds (0 for `<session>.jsonl`).
    pub segment: u32,
    pub bytes: u64,
    /// The object store's digest (`SHA-256=<base64url>`), checked on fetch.
    pub digest: String,
}

/// A session's cost mode went one step looser (see `Event::Escalation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalated {
    pub from: crate::cost_mode::CostMode,
    pub to: crate::cost_mode::CostMode,
    pub reason: String,
    pub at_ms: i64,
}

/// How an attempt ended, as judged by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The agent's own end signal says success.
    Succeeded,
    /// The agent ran and failed (its own end signal, or exit status).
    Failed,
    Cancelled,
    /// Run time or idle limit reached.
    TimedOut,
    /// Spend ceiling crossed.
    BudgetExceeded,
    /// The worker shut down under it.
    Interrupted,
    /// Could not start (missing binary, confinement error) after the
    /// worker's own spawn retries.
    SpawnFailed,
    /// The worker refused the order (agent not enabled, bad argv).
    Rejected,
}

/// Whose fault a failure was: the fleet's or the agent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    Infrastructure,
    Agent,
}

impl Outcome {
    pub fn failure_class(self) -> Option<FailureClass> {
        match self {
            Outcome::Succeeded | Outcome::Cancelled => None,
            Outcome::Failed | Outcome::TimedOut | Outcome::BudgetExceeded => {
                Some(FailureClass::Agent)
            }
            Outcome::Interrupted | Outcome::SpawnFailed | Outcome::Rejected => {
                Some(FailureClass::Infrastructure)
            }
        }
    }
}

/// Tokens and cost, summed over a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Nothing used.
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }

    /// The sum of `self` and `other` (a cost is known if either knows it).
    pub fn plus(&self, other: &Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens + other.input_tokens,
            output_tokens: self.output_tokens + other.output_tokens,
            cache_read_tokens: self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens + other.cache_write_tokens,
            cost_usd: match (self.cost_usd, other.cost_usd) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(body: ReportBody) -> Report {
        Report {
            v: 1,
            task_id: TaskId::new(),
            attempt: 2,
            worker: WorkerId::parse("debby").expect("valid worker id"),
            incarnation: uuid::Uuid::new_v4(),
            at_ms: 0,
            body,
        }
    }

    fn progress(seq: u64) -> ReportBody {
        ReportBody::Progress {
            session: SessionId::new(),
            pane: "running".into(),
            last_event_ms: 0,
            current_tool: None,
            usage: Usage::default(),
            seq,
            escalation: None,
        }
    }

    #[test]
    fn progress_reports_have_distinct_msg_ids() {
        let a = report(progress(1));
        let mut b = a.clone();
        b.body = progress(2);
        assert_ne!(a.msg_id(), b.msg_id());
        assert!(a
            .msg_id()
            .starts_with(&format!("{}:2:progress:", a.task_id)));
        let started = report(ReportBody::Started {
            session: SessionId::new(),
            pid: None,
        });
        assert_eq!(started.msg_id(), format!("{}:2:started", started.task_id));
    }

    #[test]
    fn progress_without_seq_still_decodes() {
        let r = report(progress(7));
        let mut json = serde_json::to_value(&r).expect("encodes");
        json.as_object_mut().map(|o| o.remove("seq"));
        let back: Report = serde_json::from_value(json).expect("decodes");
        assert!(matches!(back.body, ReportBody::Progress { seq: 0, .. }));
    }
}
