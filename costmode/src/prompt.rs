//! A continued session's prompt, built from its compacted transcript within
//! the mode's `prompt_budget_tokens`.
//!
//! The prompt is: the latest summary (what earlier turns did), then as many
//! of the newest turns as fit, oldest of them first, then the new
//! instruction. Turns are dropped oldest first. The new instruction and the
//! latest summary are always kept, even when they alone exceed the budget
//! (the prompt is then over budget and [`BuiltPrompt::within_budget`] says
//! so; the worker logs it).
//!
//! Token estimate: `ceil(bytes / 4)` of the UTF-8 text ([`estimate_tokens`]).
//! It is deliberately simple and slightly pessimistic for English and code
//! (about 4 bytes per token for current tokenisers); it is the same on every
//! host, so a budget means the same thing everywhere.

use std::fmt::Write as _;

use broker::cost_mode::CostMode;
use broker::messages::session::{Event, Role, Summary};

use crate::ledger::Ledger;

/// Estimated tokens of `text`: its bytes divided by 4, rounded up.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

const SUMMARY_HEADING: &str = "## Earlier in this session (compacted)\n";
const TURNS_HEADING: &str = "## Recent turns\n";
const INSTRUCTION_HEADING: &str = "## New instruction\n";

/// The prompt and what went into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPrompt {
    pub text: String,
    /// Newest turns included, and older ones dropped.
    pub kept_turns: usize,
    pub dropped_turns: usize,
    pub estimated_tokens: u64,
    pub within_budget: bool,
}

/// Builds the prompt from a summary, turns (oldest first, already
/// rendered) and the new instruction, within `budget_tokens`.
pub fn build(
    summary: Option<&str>,
    turns: &[String],
    instruction: &str,
    budget_tokens: u64,
) -> BuiltPrompt {
    let mut fixed = String::new();
    if let Some(s) = summary {
        fixed.push_str(SUMMARY_HEADING);
        fixed.push_str(s);
        fixed.push_str("\n\n");
    }
    let tail = format!("{INSTRUCTION_HEADING}{instruction}");
    let mut bytes = fixed.len() + tail.len();
    let budget_bytes = budget_tokens.saturating_mul(4);
    let mut kept = 0;
    for t in turns.iter().rev() {
        // The first turn kept also brings the heading and a blank line.
        let heading = if kept == 0 {
            TURNS_HEADING.len() + 1
        } else {
            0
        };
        let add = heading + t.len() + 1;
        if (bytes + add) as u64 > budget_bytes {
            break;
        }
        bytes += add;
        kept += 1;
    }
    let mut text = fixed;
    if kept > 0 {
        text.push_str(TURNS_HEADING);
        for t in &turns[turns.len() - kept..] {
            text.push_str(t);
            text.push('\n');
        }
    }
    if kept > 0 {
        text.push('\n');
    }
    text.push_str(&tail);
    let estimated_tokens = estimate_tokens(&text);
    BuiltPrompt {
        within_budget: estimated_tokens <= budget_tokens,
        estimated_tokens,
        kept_turns: kept,
        dropped_turns: turns.len() - kept,
        text,
    }
}

/// A summary as prompt text.
pub fn render_summary(s: &Summary) -> String {
    let mut out = format!(
        "{} earlier turns were compacted ({} events, {} transcript bytes, {} tokens).",
        s.turns, s.events, s.bytes, s.tokens
    );
    if !s.tools.is_empty() {
        let tools: Vec<String> = s.tools.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        let _ = write!(out, "\nTools used: {}.", tools.join(", "));
    }
    if !s.files.is_empty() {
        let _ = write!(out, "\nFiles touched: {}.", s.files.join(", "));
    }
    if !s.digest.is_empty() {
        let _ = write!(
            out,
            "\nWhat the agent said at the end of those turns:\n{}",
            s.digest
        );
    }
    out
}

/// One turn as prompt text (messages, tool calls and results).
pub fn render_turn(events: &[&Event]) -> String {
    let mut out = String::new();
    for e in events {
        match e {
            Event::Message {
                role: Role::Assistant,
                text,
                ..
            } => {
                let _ = writeln!(out, "assistant: {text}");
            }
            Event::ToolStart { name, args, .. } => {
                let _ = writeln!(out, "tool call {name}: {args}");
            }
            Event::ToolEnd {
                name,
                result,
                is_error,
                ..
            } => {
                let tag = if *is_error {
                    "tool error"
                } else {
                    "tool result"
                };
                let _ = writeln!(out, "{tag} {name}: {result}");
            }
            _ => {}
        }
    }
    out
}

/// The prompt of a session continued from `ledger` (its latest segment)
/// with `instruction`, within `mode`'s prompt budget.
pub fn continue_prompt(ledger: &Ledger, instruction: &str, mode: CostMode) -> BuiltPrompt {
    let summary = ledger.summary().map(render_summary);
    let turns: Vec<String> = ledger
        .turns
        .iter()
        .map(|t| render_turn(&t.entries.iter().map(|e| &e.event).collect::<Vec<_>>()))
        .filter(|t| !t.is_empty())
        .collect();
    build(
        summary.as_deref(),
        &turns,
        instruction,
        mode.limits().prompt_budget_tokens,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn estimate_is_bytes_over_four_rounded_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("é"), 1);
    }

    #[test]
    fn drops_oldest_first() {
        let turns: Vec<String> = (0..10)
            .map(|i| format!("turn {i} {}", "x".repeat(100)))
            .collect();
        let p = build(Some("S"), &turns, "do it", 100);
        assert!(p.within_budget);
        assert!(p.kept_turns > 0 && p.dropped_turns > 0);
        assert!(p.text.contains("turn 9 "));
        assert!(!p.text.contains("turn 0 "));
        assert!(p.text.ends_with("do it"));
    }

    proptest! {
        #[test]
        fn trimming_keeps_its_invariants(
            summary in proptest::option::of("\\PC{0,200}"),
            turns in proptest::collection::vec("\\PC{0,300}", 0..30),
            instruction in "\\PC{0,300}",
            budget in 0u64..2_000,
        ) {
            let p = build(summary.as_deref(), &turns, &instruction, budget);
            // The new instruction and the latest summary are always there.
            prop_assert!(p.text.ends_with(&instruction));
            if let Some(s) = &summary {
                prop_assert!(p.text.contains(s.as_str()));
            }
            // The estimate is the documented one.
            prop_assert_eq!(p.estimated_tokens, estimate_tokens(&p.text));
            // Within budget, unless only the mandatory parts are left.
            prop_assert!(p.within_budget || p.kept_turns == 0);
            prop_assert_eq!(p.within_budget, p.estimated_tokens <= budget);
            // What is kept is the newest turns, in order.
            prop_assert_eq!(p.kept_turns + p.dropped_turns, turns.len());
            let kept = &turns[turns.len() - p.kept_turns..];
            let mut at = 0;
            for t in kept {
                let found = p.text[at..].find(t.as_str());
                prop_assert!(found.is_some());
                at += found.unwrap_or(0) + t.len();
            }
            // Maximal: the next older turn would not have fit.
            if p.dropped_turns > 0 {
                let next = &turns[p.dropped_turns - 1];
                let heading = if p.kept_turns == 0 { TURNS_HEADING.len() + 1 } else { 0 };
                let bigger = p.text.len() + next.len() + 1 + heading;
                prop_assert!(bigger as u64 > budget * 4);
            }
        }
    }
}
