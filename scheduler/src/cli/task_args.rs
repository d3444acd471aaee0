//! The flags shared by `create-task` and `intake-task`, and the task spec
//! they build. Every rule is checked here, before anything is sent.

use broker::cost_mode::CostMode;
use broker::messages::task::{NetworkPolicy, RetryPolicy, TaskLimits, COMMAND_AGENT};
use broker::messages::TaskSpec;
use broker::{SessionId, Tag, TagSet, TaskId};
use clap::Args;

use super::CliError;

#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// What the task is (also the prompt when no --prompt or argv is given).
    #[arg(long)]
    pub title: String,
    /// Required capability tag; repeat or use a comma list.
    #[arg(long = "capability", short = 'c')]
    pub capabilities: Vec<String>,
    /// Instruction for the agent.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Agent profile (pi, claude, codex; `command` for `-- ARGV`).
    #[arg(long)]
    pub agent: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub provider: Option<String>,
    /// Cost mode of this task (fast, smart, max); the fleet's when absent.
    #[arg(long = "cost-mode")]
    pub cost_mode: Option<CostMode>,
    /// Continue an earlier session.
    #[arg(long = "session")]
    pub session: Option<SessionId>,
    /// Maximum run time of one attempt, in seconds.
    #[arg(long = "timeout")]
    pub timeout_secs: Option<u64>,
    /// Maximum silence of the agent, in seconds.
    #[arg(long = "idle-timeout")]
    pub idle_secs: Option<u64>,
    /// Give up if still queued after this many seconds (default: wait forever).
    #[arg(long = "deadline")]
    pub deadline_secs: Option<u64>,
    /// Attempts in all, the first included.
    #[arg(long = "max-attempts")]
    pub max_attempts: Option<u32>,
    /// Network for the agent: none or host (default: the worker's policy).
    #[arg(long, value_parser = ["none", "host"])]
    pub network: Option<String>,
    /// Use this task id (UUID) instead of a new one: a retried submit with the same id makes no second task.
    #[arg(long = "id")]
    pub id: Option<TaskId>,
    /// A plain command to run instead of an agent.
    #[arg(last = true)]
    pub argv: Vec<String>,
}

impl TaskArgs {
    /// Builds and checks the spec.
    pub fn to_spec(&self) -> Result<TaskSpec, CliError> {
        let usage = |e: String| CliError::Usage(e);
        let capabilities = TagSet::parse_lists(&self.capabilities).map_err(|e| {
            usage(format!(
                "--capability: {}",
                e.to_string().trim_start_matches("capability: ")
            ))
        })?;
        let agent_name = match (&self.agent, self.argv.is_empty()) {
            (Some(a), _) => a.clone(),
            (None, false) => COMMAND_AGENT.to_string(),
            (None, true) => "pi".to_string(),
        };
        let agent = Tag::parse_name("agent", &agent_name).map_err(|e| usage(format!("--{e}")))?;
        if agent.as_str() != COMMAND_AGENT && !self.argv.is_empty() {
            return Err(usage(format!(
                "-- ARGV: only the command agent takes an argv (got --agent {agent})"
            )));
        }
        let prompt = match (&self.prompt, agent.as_str() == COMMAND_AGENT) {
            (Some(p), _) => Some(p.clone()),
            (None, false) => Some(self.title.clone()),
            (None, true) => None,
        };
        let mut retry = RetryPolicy::default();
        if let Some(n) = self.max_attempts {
            retry.max_attempts = n;
        }
        let spec = TaskSpec {
            v: broker::WIRE_VERSION,
            id: self.id.unwrap_or_default(),
            title: self.title.clone(),
            capabilities,
            agent,
            prompt,
            command: self.argv.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            cost_mode: self.cost_mode,
            continue_session: self.session,
            limits: TaskLimits {
                timeout_secs: self.timeout_secs,
                idle_secs: self.idle_secs,
                deadline_ms: self
                    .deadline_secs
                    .map(|s| broker::time_ms::now_ms() + (s as i64) * 1000),
            },
            retry,
            network: self.network.as_deref().map(|n| {
                if n == "host" {
                    NetworkPolicy::Host
                } else {
                    NetworkPolicy::None
                }
            }),
            submitted_at_ms: broker::time_ms::now_ms(),
        };
        spec.validate().map_err(|e| usage(format!("--{e}")))?;
        Ok(spec)
    }
}
