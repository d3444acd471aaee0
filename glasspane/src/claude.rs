//! Claude Code (`claude -p --output-format stream-json --verbose`): one JSON
//! object per line keyed by `type`.
//!
//! Mapping: `system/init` → `agent_session`; `system/compact_boundary` →
//! `compaction` end; `system/api_retry` → `retry` start; each `assistant`
//! line's content blocks → `message` (text, thinking) and `tool_start`
//! (`tool_use`); `user` tool results → `tool_end`; `result` → a final
//! `usage` settling the totals on Claude's own figures. Other line types
//! (`stream_event`, `rate_limit_event`, unknown) → `raw`.
//!
//! Usage: one API response may be written as several `assistant` lines that
//! share `message.id`; its usage is counted only at the first line with that
//! id. The `result` line's `usage`/`total_cost_usd` are the session's true
//! totals and replace ours.
//!
//! Verdict: trust `result.is_error`, not `subtype` and not the exit code
//! (`subtype:"success", is_error:true` happens, and so does exit 1 after a
//! good run). No `result` line means Claude died before finishing.

use std::collections::{HashMap, VecDeque};

use broker::messages::session::{Event, Phase, Role, Stream};
use broker::messages::Usage;
use serde_json::Value;

use crate::line_reader::Line;
use crate::parser::{
    as_text, content_text, raw, trim, u64_field, AgentExit, Limits, Parser, UsageTotals, Verdict,
};

/// How many recent `message.id`s are remembered to count usage once.
const SEEN_IDS: usize = 64;

pub struct ClaudeParser {
    limits: Limits,
    usage: UsageTotals,
    seen_ids: VecDeque<String>,
    /// Tool names by `tool_use` id, until their result arrives.
    tools: HashMap<String, String>,
    /// `is_error` and a reason from the `result` line.
    result: Option<(bool, String)>,
}

impl ClaudeParser {
    pub fn new(limits: Limits) -> Self {
        ClaudeParser {
            limits,
            usage: UsageTotals::default(),
            seen_ids: VecDeque::new(),
            tools: HashMap::new(),
            result: None,
        }
    }

    fn assistant(&mut self, msg: &Value, out: &mut Vec<Event>) {
        let l = self.limits;
        for block in msg
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let text = block.get("text").map(as_text).unwrap_or_default();
                    out.push(message(Role::Assistant, &text, &l));
                }
                Some("thinking") => {
                    let text = block.get("thinking").map(as_text).unwrap_or_default();
                    out.push(message(Role::Thinking, &text, &l));
                }
                Some("tool_use") => {
                    let id = str_field(block, "id");
                    let name = str_field(block, "name");
                    let args = block.get("input").map(as_text).unwrap_or_default();
                    if self.tools.len() < 1024 {
                        self.tools.insert(id.clone(), name.clone());
                    }
                    out.push(Event::ToolStart {
                        id,
                        name,
                        args: trim(&args, l.args),
                        args_len: args.len(),
                    });
                }
                _ => {}
            }
        }
        let Some(u) = msg.get("usage") else { return };
        let id = msg.get("id").and_then(Value::as_str);
        if let Some(id) = id {
            if self.seen_ids.iter().any(|s| s == id) {
                return;
            }
            if self.seen_ids.len() == SEEN_IDS {
                self.seen_ids.pop_front();
            }
            self.seen_ids.push_back(id.to_owned());
        }
        out.push(self.usage.add(Usage {
            cost_usd: None,
            ..claude_usage(u)
        }));
    }

    fn user(&mut self, msg: &Value, out: &mut Vec<Event>) {
        let l = self.limits;
        for block in msg
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if block.get("type").and_then(Value::as_str) != Some("tool_result") {
                continue;
            }
            let id = str_field(block, "tool_use_id");
            let name = self.tools.remove(&id).unwrap_or_default();
            let text = block.get("content").map(content_text).unwrap_or_default();
            out.push(Event::ToolEnd {
                id,
                name,
                result: trim(&text, l.result),
                result_len: text.len(),
                is_error: block
                    .get("is_error")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            });
        }
    }

    fn result_line(&mut self, v: &Value, out: &mut Vec<Event>) {
        let is_error = v.get("is_error").and_then(Value::as_bool).unwrap_or(false);
        let subtype = v.get("subtype").and_then(Value::as_str).unwrap_or("?");
        let text = v.get("result").map(as_text).unwrap_or_default();
        let reason = if text.is_empty() {
            format!("claude result {subtype}")
        } else {
            format!("claude result {subtype}: {}", trim(&text, 512))
        };
        self.result = Some((is_error, reason));
        let mut total = v.get("usage").map(claude_usage).unwrap_or_default();
        if v.get("usage").is_none() {
            total = Usage {
                cost_usd: None,
                ..self.usage.total.clone()
            };
        }
        total.cost_usd = v.get("total_cost_usd").and_then(Value::as_f64);
        out.push(self.usage.settle(total));
    }
}

fn message(role: Role, text: &str, limits: &Limits) -> Event {
    Event::Message {
        role,
        text: trim(text, limits.text),
        len: text.len(),
    }
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn claude_usage(u: &Value) -> Usage {
    Usage {
        input_tokens: u64_field(u, "input_tokens"),
        output_tokens: u64_field(u, "output_tokens"),
        cache_read_tokens: u64_field(u, "cache_read_input_tokens"),
        cache_write_tokens: u64_field(u, "cache_creation_input_tokens"),
        cost_usd: None,
    }
}

impl Parser for ClaudeParser {
    fn line(&mut self, line: Line, out: &mut Vec<Event>) {
        let Some(v) = crate::cut_json::parse_object(&line) else {
            return out.push(raw(Stream::Stdout, line, &self.limits));
        };
        let null = Value::Null;
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "system" => match v.get("subtype").and_then(Value::as_str).unwrap_or("") {
                "init" => out.push(Event::AgentSession {
                    agent_session_id: v.get("session_id").and_then(Value::as_str).map(Into::into),
                    model: v.get("model").and_then(Value::as_str).map(Into::into),
                }),
                "compact_boundary" => {
                    let meta = v.get("compact_metadata").unwrap_or(&null);
                    out.push(Event::Compaction {
                        phase: Phase::End,
                        reason: meta.get("trigger").and_then(Value::as_str).map(Into::into),
                        tokens_before: meta.get("pre_tokens").and_then(Value::as_u64),
                        error: None,
                    });
                }
                "api_retry" => out.push(Event::Retry {
                    phase: Phase::Start,
                    attempt: v
                        .get("attempt")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok()),
                    max_attempts: v
                        .get("max_retries")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok()),
                    delay_ms: v.get("retry_delay_ms").and_then(Value::as_u64),
                    error: v.get("error").map(as_text).filter(|s| !s.is_empty()),
                    success: None,
                }),
                _ => out.push(raw(Stream::Stdout, line, &self.limits)),
            },
            "assistant" => self.assistant(v.get("message").unwrap_or(&null), out),
            "user" => self.user(v.get("message").unwrap_or(&null), out),
            "result" => self.result_line(&v, out),
            _ => out.push(raw(Stream::Stdout, line, &self.limits)),
        }
    }

    fn verdict(&self, exit: &AgentExit) -> Verdict {
        match &self.result {
            Some((false, _)) => Verdict::ok(),
            Some((true, reason)) => Verdict::failed(reason.clone()),
            None => Verdict::failed(format!(
                "claude exited ({}) without its final result line",
                exit.describe()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run_fixture;

    fn totals(events: &[Event]) -> Usage {
        events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Usage { total, .. } => Some(total.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn success_fixture() {
        let (events, p) = run_fixture("claude/success.jsonl", ClaudeParser::new(Limits::default()));
        assert_eq!(events[0].kind(), "agent_session");
        let end = events.iter().find_map(|e| match e {
            Event::ToolEnd { name, is_error, .. } => Some((name.clone(), *is_error)),
            _ => None,
        });
        assert_eq!(end, Some(("Bash".to_string(), false)));
        // Exit code 1 after a successful result is still success.
        assert_eq!(p.verdict(&AgentExit::code(1)), Verdict::ok());
        let t = totals(&events);
        assert_eq!(t.cost_usd, Some(0.0421));
    }

    /// Regression: three `assistant` lines of one response share `message.id`
    /// and each repeats its usage; counting each line tripled the tokens.
    #[test]
    fn repeated_message_id_counts_usage_once() {
        let (events, _) = run_fixture(
            "claude/repeated_message_id.jsonl",
            ClaudeParser::new(Limits::default()),
        );
        let usage_events: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Usage { response, total } => Some((response.clone(), total.clone())),
                _ => None,
            })
            .collect();
        // Two responses (msg_01, msg_02) before the result.
        assert_eq!(usage_events.len(), 3);
        assert_eq!(usage_events[1].1.input_tokens, 10 + 12);
        assert_eq!(usage_events[1].1.output_tokens, 300 + 40);
    }

    #[test]
    fn is_error_with_subtype_success_fails() {
        let (_, p) = run_fixture(
            "claude/is_error_subtype_success.jsonl",
            ClaudeParser::new(Limits::default()),
        );
        let v = p.verdict(&AgentExit::success());
        assert!(!v.success);
        assert!(v.reason.unwrap().contains("API Error"));
    }

    #[test]
    fn retry_then_success_is_success() {
        let (events, p) = run_fixture(
            "claude/retry_success.jsonl",
            ClaudeParser::new(Limits::default()),
        );
        assert!(events.iter().any(|e| e.kind() == "retry"));
        assert!(events.iter().any(|e| e.kind() == "compaction"));
        assert!(events.iter().any(|e| e.kind() == "raw"));
        assert_eq!(p.verdict(&AgentExit::success()), Verdict::ok());
    }

    #[test]
    fn missing_result_fails() {
        let (_, p) = run_fixture(
            "claude/missing_result.jsonl",
            ClaudeParser::new(Limits::default()),
        );
        let v = p.verdict(&AgentExit::success());
        assert!(!v.success);
        assert!(v.reason.unwrap().contains("without its final result"));
    }
}
