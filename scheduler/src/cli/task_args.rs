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
    /// Model, mapped to arguments by the worker's agent profile.
    #[arg(long)]
    pub model: Option<String>,
    /// Provider, mapped to arguments by the worker's agent profile (a
    /// worker that cannot pass it refuses the task).
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
    /// First retry delay in ms, doubled per retry with jitter (default 500, at most 60000).
    #[arg(long = "retry-backoff-ms")]
    pub retry_backoff_ms: Option<u64>,
    /// Also retry when the agent ran and failed (default: only infrastructure failures).
    #[arg(long = "retry-agent-failures")]
    pub retry_agent_failures: bool,
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
        if self
            .provider
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(usage("--provider: must not be empty".into()));
        }
        let retry = self.retry_policy()?;
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

    /// `--max-attempts`, `--retry-backoff-ms`, `--retry-agent-failures`.
    fn retry_policy(&self) -> Result<RetryPolicy, CliError> {
        let mut retry = RetryPolicy::default();
        if let Some(n) = self.max_attempts {
            retry.max_attempts = n;
        }
        if let Some(ms) = self.retry_backoff_ms {
            if ms > MAX_RETRY_BACKOFF_MS {
                return Err(CliError::Usage(format!(
                    "--retry-backoff-ms: at most {MAX_RETRY_BACKOFF_MS} (retries wait at most 60 s)"
                )));
            }
            retry.backoff_ms = ms;
        }
        retry.retry_agent_failure = self.retry_agent_failures;
        let retries_asked = self.retry_backoff_ms.is_some() || self.retry_agent_failures;
        if retry.max_attempts == 1 && retries_asked {
            let flag = if self.retry_agent_failures {
                "--retry-agent-failures"
            } else {
                "--retry-backoff-ms"
            };
            return Err(CliError::Usage(format!(
                "{flag}: no retry is left with --max-attempts 1"
            )));
        }
        Ok(retry)
    }
}

/// The scheduler's cap on one retry's delay.
const MAX_RETRY_BACKOFF_MS: u64 = 60_000;

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, CliCommand};
    use super::*;

    fn spec(args: &[&str]) -> Result<TaskSpec, CliError> {
        let argv = ["colibri", "create-task", "--title", "t"]
            .iter()
            .chain(args);
        match Cli::try_parse_from(argv).map_err(|e| CliError::Usage(e.to_string()))? {
            Cli {
                command: CliCommand::CreateTask(a),
                ..
            } => a.to_spec(),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn usage(args: &[&str]) -> String {
        match spec(args) {
            Err(CliError::Usage(m)) => m,
            other => panic!("{args:?}: not a usage error: {other:?}"),
        }
    }

    // The CLI could set only max_attempts of the retry policy: the backoff
    // and retrying agent failures were unreachable from the command line.
    #[test]
    fn retry_flags_set_the_whole_policy() {
        let s = spec(&[
            "--max-attempts",
            "5",
            "--retry-backoff-ms",
            "2000",
            "--retry-agent-failures",
        ])
        .unwrap();
        assert_eq!(
            s.retry,
            RetryPolicy {
                max_attempts: 5,
                backoff_ms: 2000,
                retry_agent_failure: true
            }
        );
        assert_eq!(spec(&[]).unwrap().retry, RetryPolicy::default());
        assert_eq!(
            spec(&["--retry-backoff-ms", "0"]).unwrap().retry.backoff_ms,
            0
        );
    }

    #[test]
    fn bad_retry_and_provider_flags_are_usage_errors_naming_the_flag() {
        for (args, flag, rule) in [
            (
                &["--retry-backoff-ms", "60001"][..],
                "--retry-backoff-ms",
                "at most 60000",
            ),
            (
                &["--retry-backoff-ms=-1"],
                "--retry-backoff-ms",
                "invalid value",
            ),
            (
                &["--retry-backoff-ms", "soon"],
                "--retry-backoff-ms",
                "invalid value",
            ),
            (
                &["--max-attempts", "1", "--retry-agent-failures"],
                "--retry-agent-failures",
                "no retry is left",
            ),
            (
                &["--max-attempts", "1", "--retry-backoff-ms", "10"],
                "--retry-backoff-ms",
                "no retry is left",
            ),
            (
                &["--retry-agent-failures=yes"],
                "--retry-agent-failures",
                "unexpected value",
            ),
            (&["--provider", " "], "--provider", "must not be empty"),
        ] {
            let m = usage(args);
            assert!(m.contains(flag) && m.contains(rule), "{args:?}: {m}");
        }
    }
}
