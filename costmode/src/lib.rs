//! Cost modes, enforced: the pure logic that makes `fast`, `smart` and `max`
//! change what a session actually does.
//!
//! Every threshold comes from [`broker::CostMode::limits`]; nothing in this
//! crate reads an environment variable, a flag or a config file, so no
//! setting can shadow a mode (see the `no_shadow_configuration` test).
//!
//! The worker feeds each transcript append to a [`SessionCost`], which:
//!
//! 1. compacts a tool result before it is written, when the mode says so
//!    ([`tool_result`]);
//! 2. mirrors the transcript segment as turns ([`turns`], [`ledger`]);
//! 3. checks the segment against the mode in force ([`enforce`]) and returns,
//!    as data, what to do: compact ([`compact`]), roll over to a new segment
//!    ([`segment`]), or escalate one step up to the operator's ceiling;
//! 4. checks the task's spend against its ceiling ([`budget`]).
//!
//! [`prompt`] builds a continued session's prompt from a compacted
//! transcript within the mode's prompt budget.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod budget;
pub mod compact;
pub mod enforce;
pub mod ledger;
pub mod prompt;
pub mod segment;
pub mod session;
pub mod tool_result;
pub mod turns;

pub use broker::cost_mode::{CostMode, ModeLimits};
pub use budget::BudgetExceeded;
pub use enforce::{Decision, Over, SessionState};
pub use ledger::{Entry, Ledger};
pub use prompt::{estimate_tokens, BuiltPrompt};
pub use session::{Action, ModeSource, SessionCost};

#[cfg(test)]
mod tests {
    use super::*;

    /// No shadow configuration: the thresholds are the mode's and nothing
    /// else's. Setting would-be overrides in the environment changes
    /// nothing, and no source file of the enforcement reads the
    /// environment at all.
    #[test]
    fn no_shadow_configuration() {
        let before: Vec<ModeLimits> = CostMode::ALL.iter().map(|m| m.limits()).collect();
        for (k, v) in [
            ("COLIBRI_SESSION_BYTES", "1"),
            ("COLIBRI_UNCOMPACTED_TURNS", "1000"),
            ("COLIBRI_PROMPT_BUDGET_TOKENS", "1"),
            ("COLIBRI_MAX_TASK_TOKENS", "1"),
            ("COLIBRI_COST_MODE", "max"),
        ] {
            // Only this test touches these variables.
            std::env::set_var(k, v);
        }
        let after: Vec<ModeLimits> = CostMode::ALL.iter().map(|m| m.limits()).collect();
        assert_eq!(before, after);
        let mut d =
            session::tests::Driver::new(ModeSource::Fleet(CostMode::Fast), CostMode::Fast, 0);
        for i in 0..5 {
            assert!(!d.turn(i));
        }
        assert!(d.turn(5), "fast still compacts at its 6th turn");

        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let sources = [
            dir.join("../broker/src/cost_mode.rs"),
            dir.join("src/budget.rs"),
            dir.join("src/compact.rs"),
            dir.join("src/enforce.rs"),
            dir.join("src/ledger.rs"),
            dir.join("src/prompt.rs"),
            dir.join("src/segment.rs"),
            dir.join("src/session.rs"),
            dir.join("src/tool_result.rs"),
            dir.join("src/turns.rs"),
        ];
        for path in sources {
            let text = std::fs::read_to_string(&path).expect("source");
            for needle in ["env::var", "var_os(", "env!(", "option_env!"] {
                assert!(
                    !text.contains(needle),
                    "{} reads configuration ({needle})",
                    path.display()
                );
            }
        }
    }
}
