//! `TaskSpec`: what an operator submits (`colibri.task.<id>.submit`, or the
//! `create-task` endpoint), and what a worker receives inside a run order.

use serde::{Deserialize, Serialize};

use crate::cost_mode::CostMode;
use crate::ids::{SessionId, TaskId};
use crate::tag::{Tag, TagError, TagSet};

/// The agent name of a plain argv task.
pub const COMMAND_AGENT: &str = "command";
/// Longest title, in characters.
pub const MAX_TITLE_LEN: usize = 200;
/// Largest prompt, in bytes.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;

/// A task as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    #[serde(default = "super::wire_version")]
    pub v: u32,
    /// Chosen by the submitter (UUIDv7); also the intake `Nats-Msg-Id`, so a
    /// retried submit never makes two tasks.
    pub id: TaskId,
    pub title: String,
    /// Tags the worker must all have.
    #[serde(default)]
    pub capabilities: TagSet,
    /// Agent profile to run (`pi`, `claude`, `codex`, or `command`).
    pub agent: Tag,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// argv of a `command` task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Per-task cost mode; the fleet's mode when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_mode: Option<CostMode>,
    /// Continue this earlier session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_session: Option<SessionId>,
    #[serde(default)]
    pub limits: TaskLimits,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
    /// Submission time, ms since the epoch.
    pub submitted_at_ms: i64,
}

/// Time limits of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// Maximum run time of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Maximum silence (no output) of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<u64>,
    /// A parked task still queued at this time (ms since epoch) ends `timed_out`.
    /// Without it a parked task waits forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
}

/// Task-level retry policy, applied by the scheduler to infrastructure
/// failures (spawn failed, worker lost, interrupted). Every field has its
/// documented default, so `{"max_attempts":2}` is a whole policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled each time, with jitter.
    pub backoff_ms: u64,
    /// Also retry when the agent itself failed.
    pub retry_agent_failure: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff_ms: 500,
            retry_agent_failure: false,
        }
    }
}

/// Whether the agent may reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkPolicy {
    None,
    Host,
}

/// A rule a task spec broke, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskSpecError {
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error(transparent)]
    Tag(#[from] TagError),
}

impl TaskSpec {
    /// Checks every rule a scheduler enforces on a submission.
    pub fn validate(&self) -> Result<(), TaskSpecError> {
        let invalid = |field, rule: &str| {
            Err(TaskSpecError::Invalid {
                field,
                rule: rule.to_string(),
            })
        };
        if self.v != crate::WIRE_VERSION {
            return invalid("v", "must be 1");
        }
        if self.title.trim().is_empty() {
            return invalid("title", "must not be empty");
        }
        if self.title.chars().count() > MAX_TITLE_LEN {
            return invalid("title", "at most 200 characters");
        }
        self.capabilities.check_bound("capabilities")?;
        if self.agent.as_str() == COMMAND_AGENT {
            if self.command.is_empty() {
                return invalid("command", "a command task needs an argv (-- ARGV...)");
            }
            if self.command[0].is_empty() {
                return invalid("command", "argv[0] must not be empty");
            }
        } else if self.prompt.as_deref().is_none_or(|p| p.trim().is_empty()) {
            return invalid("prompt", "an agent task needs a prompt (--prompt)");
        }
        if self
            .prompt
            .as_ref()
            .is_some_and(|p| p.len() > MAX_PROMPT_BYTES)
        {
            return invalid("prompt", "at most 1 MiB");
        }
        if self.retry.max_attempts == 0 {
            return invalid("retry.max_attempts", "must be at least 1");
        }
        if self.limits.timeout_secs == Some(0) {
            return invalid("limits.timeout_secs", "must be at least 1");
        }
        if self.limits.idle_secs == Some(0) {
            return invalid("limits.idle_secs", "must be at least 1");
        }
        Ok(())
    }

    /// Checks that the spec's `id` is the task id its subject names
    /// (`colibri.task.<task>.submit`): the subject's id is the
    /// `Nats-Msg-Id` that deduplicates the submit.
    pub fn check_subject_id(&self, subject_id: &TaskId) -> Result<(), TaskSpecError> {
        if self.id != *subject_id {
            return Err(TaskSpecError::Invalid {
                field: "id",
                rule: format!("must equal the subject's task id {subject_id}"),
            });
        }
        Ok(())
    }

    /// What the board keeps of a submission it refused: `id`, the rest
    /// of the payload salvaged where it reads (title and agent, each
    /// trimmed to its limit), so `show-task` can say why without storing
    /// or replying with megabytes. For a payload that is JSON but not a
    /// valid spec.
    pub fn salvage(id: TaskId, payload: &serde_json::Value) -> TaskSpec {
        let text = |key: &str| payload.get(key).and_then(|v| v.as_str());
        let title = text("title")
            .map(|t| t.chars().take(MAX_TITLE_LEN).collect::<String>())
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| "(refused submission)".to_string());
        let agent = text("agent")
            .and_then(|a| Tag::parse_name("agent", a).ok())
            .unwrap_or_else(|| Tag::parse(COMMAND_AGENT).expect("constant is a valid tag"));
        let mut spec = TaskSpec::command(&title, TagSet::new(), Vec::new());
        spec.id = id;
        spec.agent = agent;
        spec.submitted_at_ms = payload
            .get("submitted_at_ms")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        spec
    }

    /// This spec with its texts cut to what a record needs (title to its
    /// limit, prompt and each argument to `max_bytes`): a refused spec is
    /// kept this way.
    pub fn trimmed(&self, max_bytes: usize) -> TaskSpec {
        let mut spec = self.clone();
        spec.title = spec.title.chars().take(MAX_TITLE_LEN).collect();
        if let Some(p) = spec.prompt.as_mut() {
            *p = super::trim_text(p, max_bytes);
        }
        for arg in spec.command.iter_mut() {
            *arg = super::trim_text(arg, max_bytes);
        }
        spec
    }

    /// A `command` task running `argv`, for tests and tools.
    pub fn command(title: &str, caps: TagSet, argv: Vec<String>) -> TaskSpec {
        TaskSpec {
            v: crate::WIRE_VERSION,
            id: TaskId::new(),
            title: title.to_string(),
            capabilities: caps,
            agent: Tag::parse(COMMAND_AGENT).expect("constant is a valid tag"),
            prompt: None,
            command: argv,
            provider: None,
            model: None,
            cost_mode: None,
            continue_session: None,
            limits: TaskLimits::default(),
            retry: RetryPolicy::default(),
            network: None,
            submitted_at_ms: crate::time_ms::now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_task_validates() {
        let t = TaskSpec::command("t", TagSet::new(), vec!["/bin/true".into()]);
        t.validate().unwrap();
        let mut bad = t.clone();
        bad.command.clear();
        assert!(matches!(
            bad.validate(),
            Err(TaskSpecError::Invalid {
                field: "command",
                ..
            })
        ));
        let mut bad = t;
        bad.title = " ".into();
        assert!(matches!(
            bad.validate(),
            Err(TaskSpecError::Invalid { field: "title", .. })
        ));
    }

    // Regression: `{"max_attempts":2}` was refused ("missing field
    // backoff_ms") although every retry field is documented with a default.
    #[test]
    fn retry_fields_default_one_by_one() {
        let spec = format!(
            r#"{{"id":"{}","title":"x","agent":"pi","prompt":"hi","submitted_at_ms":0,"retry":{{"max_attempts":2}}}}"#,
            TaskId::new()
        );
        let parsed: TaskSpec = crate::messages::decode(spec.as_bytes()).unwrap();
        assert_eq!(parsed.retry.max_attempts, 2);
        assert_eq!(parsed.retry.backoff_ms, 500);
        assert!(!parsed.retry.retry_agent_failure);
    }

    // Regression: a task could require any number of tags (10,000 tags
    // made every placement pass crawl).
    #[test]
    fn capabilities_are_bounded() {
        let caps: TagSet = (0..65)
            .map(|i| Tag::parse(&format!("t{i}")).unwrap())
            .collect();
        let t = TaskSpec::command("t", caps, vec!["true".into()]);
        assert!(matches!(
            t.validate(),
            Err(TaskSpecError::Tag(TagError::TooMany {
                field: "capabilities",
                ..
            }))
        ));
    }

    // Regression: a spec whose `id` differed from its subject's was applied
    // under the body's id (its Nats-Msg-Id deduplicated another task).
    #[test]
    fn spec_id_must_match_the_subject() {
        let t = TaskSpec::command("t", TagSet::new(), vec!["true".into()]);
        t.check_subject_id(&t.id).unwrap();
        assert!(matches!(
            t.check_subject_id(&TaskId::new()),
            Err(TaskSpecError::Invalid { field: "id", .. })
        ));
    }

    #[test]
    fn salvage_keeps_what_reads_and_trims() {
        let id = TaskId::new();
        let payload =
            serde_json::json!({"title": "x".repeat(1 << 20), "agent": "pi", "retry": "no"});
        let spec = TaskSpec::salvage(id, &payload);
        assert_eq!(spec.id, id);
        assert_eq!(spec.title.len(), MAX_TITLE_LEN);
        assert_eq!(spec.agent.as_str(), "pi");
        let spec = TaskSpec::salvage(id, &serde_json::json!(42));
        assert_eq!(spec.title, "(refused submission)");
    }

    #[test]
    fn json_roundtrip_and_defaults() {
        let t = TaskSpec::command(
            "t",
            TagSet::parse_lists(["linux"]).unwrap(),
            vec!["ls".into()],
        );
        let back: TaskSpec = serde_json::from_slice(&crate::messages::encode(&t)).unwrap();
        assert_eq!(back, t);
        let minimal = format!(
            r#"{{"id":"{}","title":"x","agent":"pi","prompt":"hi","submitted_at_ms":0}}"#,
            TaskId::new()
        );
        let parsed: TaskSpec = crate::messages::decode(minimal.as_bytes()).unwrap();
        assert_eq!(parsed.retry.max_attempts, 3);
        parsed.validate().unwrap();
    }
}
