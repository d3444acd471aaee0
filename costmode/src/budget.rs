//! The per-task spend ceiling: a task whose usage totals cross its mode's
//! `max_task_tokens` (input + output tokens; cache reads and writes are not
//! counted) or, where the agent reports cost, `max_task_cost_usd` is stopped
//! and ends `budget_exceeded` with these figures in its reason.
//!
//! Ceilings are inclusive: spending exactly the ceiling is allowed.

use std::fmt;

use broker::cost_mode::{CostMode, ModeLimits};
use broker::messages::Usage;

/// A crossed spend ceiling, with the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetExceeded {
    pub mode: CostMode,
    pub tokens: u64,
    pub max_tokens: u64,
    pub cost_usd: Option<f64>,
    pub max_cost_usd: f64,
}

impl fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "budget exceeded ({} mode): {} tokens of {}",
            self.mode, self.tokens, self.max_tokens
        )?;
        match self.cost_usd {
            Some(c) => write!(f, ", ${c:.4} of ${:.2}", self.max_cost_usd),
            None => write!(f, ", cost not reported (ceiling ${:.2})", self.max_cost_usd),
        }
    }
}

/// Whether the task's usage totals so far cross `mode`'s ceiling.
pub fn check(total: &Usage, mode: CostMode) -> Option<BudgetExceeded> {
    let l: ModeLimits = mode.limits();
    let tokens = total.total_tokens();
    let over_tokens = tokens > l.max_task_tokens;
    let over_cost = total.cost_usd.is_some_and(|c| c > l.max_task_cost_usd);
    (over_tokens || over_cost).then_some(BudgetExceeded {
        mode,
        tokens,
        max_tokens: l.max_task_tokens,
        cost_usd: total.cost_usd,
        max_cost_usd: l.max_task_cost_usd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cost: Option<f64>) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: 1_000_000_000,
            cost_usd: cost,
            ..Default::default()
        }
    }

    #[test]
    fn tokens_ceiling_is_inclusive_and_ignores_cache() {
        let max = CostMode::Fast.limits().max_task_tokens;
        assert_eq!(check(&usage(max - 10, 10, None), CostMode::Fast), None);
        let e = check(&usage(max - 10, 11, None), CostMode::Fast).expect("over");
        assert_eq!((e.tokens, e.max_tokens), (max + 1, max));
        assert_eq!(
            e.to_string(),
            "budget exceeded (fast mode): 200001 tokens of 200000, cost not reported (ceiling $1.00)"
        );
    }

    #[test]
    fn cost_ceiling_applies_where_reported() {
        let e = check(&usage(1, 1, Some(5.5)), CostMode::Smart).expect("over");
        assert_eq!(e.cost_usd, Some(5.5));
        assert!(e.to_string().contains("$5.5000 of $5.00"));
        assert_eq!(check(&usage(1, 1, Some(5.0)), CostMode::Smart), None);
    }
}
