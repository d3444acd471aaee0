//! What a "turn" is in a normalised session, so that every mode counts
//! turns the same way whatever the agent.
//!
//! A turn is one model response and what it caused: it starts at an
//! assistant or thinking `message` that follows something other than a
//! message (or at the first `message` or `tool_start` of the session), and
//! runs until the next turn starts. Usage, raw lines, retries and tool calls
//! belong to the turn they arrive in. A turn never starts while a tool call
//! is open (a `tool_start` without its `tool_end`), so cutting at turn
//! boundaries never separates a tool call from its result.
//!
//! Examples (`|` marks a turn start): pi `| message, usage, tool_start,
//! tool_end | message, usage`; Claude `| thinking, message, tool_start,
//! tool_end | message`; Codex `| thinking, tool_start, tool_end | message`.

use std::collections::BTreeSet;

use broker::messages::session::Event;

/// Follows a session's events and says where turns start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnTracker {
    /// Tool calls started and not yet ended, by id.
    open_tools: BTreeSet<String>,
    /// Whether the last content event (message or tool) was a message.
    last_was_message: Option<bool>,
}

impl TurnTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Observes `event`; true when it starts a new turn.
    pub fn observe(&mut self, event: &Event) -> bool {
        match event {
            Event::Message { .. } => {
                let starts = self.open_tools.is_empty() && self.last_was_message != Some(true);
                self.last_was_message = Some(true);
                starts
            }
            Event::ToolStart { id, .. } => {
                let starts = self.last_was_message.is_none();
                self.open_tools.insert(id.clone());
                self.last_was_message = Some(false);
                starts
            }
            Event::ToolEnd { id, .. } => {
                self.open_tools.remove(id);
                self.last_was_message = Some(false);
                false
            }
            _ => false,
        }
    }

    /// Whether a tool call is open now.
    pub fn tool_open(&self) -> bool {
        !self.open_tools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::messages::session::Role;

    pub(crate) fn msg(text: &str) -> Event {
        Event::Message {
            role: Role::Assistant,
            text: text.into(),
            len: text.len(),
        }
    }

    fn tool(id: &str, start: bool) -> Event {
        if start {
            Event::ToolStart {
                id: id.into(),
                name: "bash".into(),
                args: "{}".into(),
                args_len: 2,
            }
        } else {
            Event::ToolEnd {
                id: id.into(),
                name: "bash".into(),
                result: String::new(),
                result_len: 0,
                is_error: false,
            }
        }
    }

    fn starts(events: &[Event]) -> Vec<bool> {
        let mut t = TurnTracker::new();
        events.iter().map(|e| t.observe(e)).collect()
    }

    #[test]
    fn pi_shape_is_two_turns() {
        let ev = [msg("a"), tool("1", true), tool("1", false), msg("b")];
        assert_eq!(starts(&ev), [true, false, false, true]);
    }

    #[test]
    fn thinking_then_text_is_one_turn() {
        let thinking = Event::Message {
            role: Role::Thinking,
            text: "hm".into(),
            len: 2,
        };
        assert_eq!(starts(&[thinking, msg("a")]), [true, false]);
    }

    #[test]
    fn no_turn_starts_inside_an_open_tool_call() {
        let ev = [
            msg("a"),
            tool("1", true),
            tool("2", true),
            tool("1", false),
            msg("b"),
            tool("2", false),
            msg("c"),
        ];
        assert_eq!(starts(&ev), [true, false, false, false, false, false, true]);
    }

    #[test]
    fn a_leading_tool_call_starts_the_first_turn() {
        assert_eq!(starts(&[tool("1", true), tool("1", false)]), [true, false]);
    }
}
