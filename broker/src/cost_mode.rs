//! Cost modes: the one source of truth for what a session may consume.
//!
//! Every threshold a worker enforces is derived from the [`CostMode`] through
//! [`CostMode::limits`]; there is deliberately no other place (flag, env var,
//! config field) from which a threshold can be read.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The fleet-wide (or per-task) cost mode.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CostMode {
    Fast,
    /// The default mode of a new fleet.
    #[default]
    Smart,
    Max,
}

/// Every threshold a mode fixes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModeLimits {
    /// Transcript bytes before compaction.
    pub session_bytes: u64,
    /// Uncompacted turns before compaction.
    pub uncompacted_turns: u32,
    /// Newest turns kept verbatim when the turn limit forces a compaction
    /// (half the limit, so a compaction is not needed again at once).
    pub kept_turns: u32,
    /// Whether tool results are compacted (head + tail + size + sha256) on append.
    pub compact_tool_results: bool,
    /// Bytes kept of a tool result when compacting it (head and tail together).
    pub tool_result_keep_bytes: u64,
    /// Budget for a continued session's prompt, in estimated tokens.
    pub prompt_budget_tokens: u64,
    /// Context an agent with its own compaction (Codex) may carry before
    /// that compaction must fire, in tokens.
    pub agent_context_tokens: u64,
    /// Per-task spend ceiling in tokens (input + output).
    pub max_task_tokens: u64,
    /// Per-task spend ceiling in USD where the agent reports cost.
    pub max_task_cost_usd: f64,
}

impl CostMode {
    pub const ALL: [CostMode; 3] = [CostMode::Fast, CostMode::Smart, CostMode::Max];

    /// The thresholds of this mode. See the README's table.
    pub const fn limits(self) -> ModeLimits {
        match self {
            CostMode::Fast => ModeLimits {
                session_bytes: 500_000,
                uncompacted_turns: 5,
                kept_turns: 2,
                compact_tool_results: true,
                tool_result_keep_bytes: 4_096,
                prompt_budget_tokens: 8_000,
                agent_context_tokens: 64_000,
                max_task_tokens: 200_000,
                max_task_cost_usd: 1.0,
            },
            CostMode::Smart => ModeLimits {
                session_bytes: 2_000_000,
                uncompacted_turns: 20,
                kept_turns: 10,
                compact_tool_results: true,
                tool_result_keep_bytes: 16_384,
                prompt_budget_tokens: 32_000,
                agent_context_tokens: 160_000,
                max_task_tokens: 1_000_000,
                max_task_cost_usd: 5.0,
            },
            CostMode::Max => ModeLimits {
                session_bytes: 8_000_000,
                uncompacted_turns: 80,
                kept_turns: 40,
                compact_tool_results: false,
                tool_result_keep_bytes: 65_536,
                prompt_budget_tokens: 128_000,
                agent_context_tokens: 400_000,
                max_task_tokens: 5_000_000,
                max_task_cost_usd: 25.0,
            },
        }
    }

    /// The next stricter-to-looser step (`fast` → `smart` → `max`), if any.
    pub fn escalate(self) -> Option<CostMode> {
        match self {
            CostMode::Fast => Some(CostMode::Smart),
            CostMode::Smart => Some(CostMode::Max),
            CostMode::Max => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CostMode::Fast => "fast",
            CostMode::Smart => "smart",
            CostMode::Max => "max",
        }
    }
}

impl fmt::Display for CostMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cost mode name that is not `fast`, `smart` or `max`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cost-mode: {0:?} is not a cost mode; use fast, smart or max")]
pub struct UnknownCostMode(pub String);

impl std::str::FromStr for CostMode {
    type Err = UnknownCostMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fast" => Ok(CostMode::Fast),
            "smart" => Ok(CostMode::Smart),
            "max" => Ok(CostMode::Max),
            other => Err(UnknownCostMode(other.to_string())),
        }
    }
}
