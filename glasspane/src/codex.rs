//! Codex (`codex exec --json`): one JSON object per line keyed by `type`.
//!
//! Mapping: `thread.started` → `agent_session`; items: `agent_message` →
//! `message`, `reasoning` → `message` (thinking), `command_execution`,
//! `file_change`, `mcp_tool_call`, `web_search` → `tool_start` at
//! `item.started` and `tool_end` at `item.completed` (a start is synthesised
//! for an item that completes without one); `turn.completed` → `usage`
//! (tokens only, Codex reports no cost); a top-level `error` → `retry` (Codex
//! prints it while it retries; not final). Other items and types → `raw`.
//!
//! Verdict: success needs a `turn.completed` as the last turn outcome and a
//! zero exit; `turn.failed` or a non-zero exit fails; no turn outcome at all
//! means Codex died before finishing.

use std::collections::HashSet;

use broker::messages::session::{Event, Phase, Role, Stream};
use broker::messages::Usage;
use serde_json::Value;

use crate::line_reader::Line;
use crate::parser::{
    as_text, raw, trim, u64_field, AgentExit, Limits, Parser, UsageTotals, Verdict,
};

/// The last turn's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Turn {
    Completed,
    Failed(String),
}

pub struct CodexParser {
    limits: Limits,
    usage: UsageTotals,
    started: HashSet<String>,
    last_turn: Option<Turn>,
}

const TOOL_ITEMS: [&str; 4] = [
    "command_execution",
    "file_change",
    "mcp_tool_call",
    "web_search",
];

impl CodexParser {
    pub fn new(limits: Limits) -> Self {
        CodexParser {
            limits,
            usage: UsageTotals::default(),
            started: HashSet::new(),
            last_turn: None,
        }
    }

    fn tool_start(&mut self, item: &Value, kind: &str) -> Event {
        let id = str_field(item, "id");
        if self.started.len() < 1024 {
            self.started.insert(id.clone());
        }
        let (name, args) = match kind {
            "command_execution" => ("shell".to_owned(), str_field(item, "command")),
            "file_change" => {
                let changes = item.get("changes").map(as_text).unwrap_or_default();
                ("file_change".to_owned(), changes)
            }
            "mcp_tool_call" => (
                format!("{}.{}", str_field(item, "server"), str_field(item, "tool")),
                item.get("arguments").map(as_text).unwrap_or_default(),
            ),
            _ => (kind.to_owned(), str_field(item, "query")),
        };
        Event::ToolStart {
            id,
            name,
            args: trim(&args, self.limits.args),
            args_len: args.len(),
        }
    }

    fn tool_end(&mut self, item: &Value, kind: &str) -> Event {
        let id = str_field(item, "id");
        self.started.remove(&id);
        let status = str_field(item, "status");
        let (name, result, is_error) = match kind {
            "command_execution" => {
                let code = item.get("exit_code").and_then(Value::as_i64);
                (
                    "shell".to_owned(),
                    str_field(item, "aggregated_output"),
                    status == "failed" || code.is_some_and(|c| c != 0),
                )
            }
            "mcp_tool_call" => {
                let err = item.get("error").filter(|e| !e.is_null());
                let result = match err {
                    Some(e) => as_text(e),
                    None => item.get("result").map(as_text).unwrap_or_default(),
                };
                (
                    format!("{}.{}", str_field(item, "server"), str_field(item, "tool")),
                    result,
                    err.is_some() || status == "failed",
                )
            }
            "file_change" => (
                "file_change".to_owned(),
                item.get("changes").map(as_text).unwrap_or_default(),
                status == "failed",
            ),
            _ => (
                kind.to_owned(),
                str_field(item, "query"),
                status == "failed",
            ),
        };
        Event::ToolEnd {
            id,
            name,
            result: trim(&result, self.limits.result),
            result_len: result.len(),
            is_error,
        }
    }

    fn item(&mut self, v: &Value, completed: bool, line: Line, out: &mut Vec<Event>) {
        let null = Value::Null;
        let item = v.get("item").unwrap_or(&null);
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "agent_message" | "reasoning" => {
                if completed {
                    let text = str_field(item, "text");
                    let role = if kind == "reasoning" {
                        Role::Thinking
                    } else {
                        Role::Assistant
                    };
                    out.push(Event::Message {
                        role,
                        text: trim(&text, self.limits.text),
                        len: text.len(),
                    });
                }
            }
            k if TOOL_ITEMS.contains(&k) => {
                let id = str_field(item, "id");
                if !completed {
                    if !self.started.contains(&id) {
                        out.push(self.tool_start(item, k));
                    }
                } else {
                    if !self.started.contains(&id) {
                        out.push(self.tool_start(item, k));
                    }
                    out.push(self.tool_end(item, k));
                }
            }
            _ => {
                if completed {
                    out.push(raw(Stream::Stdout, line, &self.limits));
                }
            }
        }
    }
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key).map(as_text).unwrap_or_default()
}

impl Parser for CodexParser {
    fn line(&mut self, line: Line, out: &mut Vec<Event>) {
        let Some(v) = crate::cut_json::parse_object(&line) else {
            return out.push(raw(Stream::Stdout, line, &self.limits));
        };
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "thread.started" => out.push(Event::AgentSession {
                agent_session_id: v.get("thread_id").and_then(Value::as_str).map(Into::into),
                model: None,
            }),
            "turn.started" => {}
            "turn.completed" => {
                self.last_turn = Some(Turn::Completed);
                if let Some(u) = v.get("usage") {
                    // Codex's `input_tokens` includes the cached part.
                    let cached = u64_field(u, "cached_input_tokens");
                    out.push(self.usage.add(Usage {
                        input_tokens: u64_field(u, "input_tokens").saturating_sub(cached),
                        output_tokens: u64_field(u, "output_tokens"),
                        cache_read_tokens: cached,
                        cache_write_tokens: 0,
                        cost_usd: None,
                    }));
                }
            }
            "turn.failed" => {
                let msg = v
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .map(as_text)
                    .unwrap_or_else(|| "turn failed".to_owned());
                self.last_turn = Some(Turn::Failed(msg));
            }
            "item.started" | "item.updated" => self.item(&v, false, line, out),
            "item.completed" => self.item(&v, true, line, out),
            "error" => out.push(Event::Retry {
                phase: Phase::Start,
                attempt: None,
                max_attempts: None,
                delay_ms: None,
                error: v.get("message").map(as_text),
                success: None,
            }),
            _ => out.push(raw(Stream::Stdout, line, &self.limits)),
        }
    }

    fn verdict(&self, exit: &AgentExit) -> Verdict {
        match &self.last_turn {
            Some(Turn::Failed(msg)) => Verdict::failed(format!("codex turn failed: {msg}")),
            Some(Turn::Completed) if exit.is_zero() => Verdict::ok(),
            Some(Turn::Completed) => Verdict::failed(format!(
                "codex completed its turn but exited with {}",
                exit.describe()
            )),
            None => Verdict::failed(format!(
                "codex exited ({}) without turn.completed or turn.failed",
                exit.describe()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run_fixture;

    #[test]
    fn success_fixture() {
        let (events, p) = run_fixture("codex/success.jsonl", CodexParser::new(Limits::default()));
        let kinds: Vec<_> = events.iter().map(Event::kind).collect();
        assert_eq!(
            kinds,
            [
                "agent_session",
                "message",
                "tool_start",
                "tool_end",
                "tool_start",
                "tool_end",
                "message",
                "usage"
            ]
        );
        assert_eq!(p.verdict(&AgentExit::success()), Verdict::ok());
        assert!(!p.verdict(&AgentExit::code(1)).success);
    }

    #[test]
    fn turn_failed_fails() {
        let (_, p) = run_fixture(
            "codex/turn_failed.jsonl",
            CodexParser::new(Limits::default()),
        );
        let v = p.verdict(&AgentExit::code(1));
        assert!(!v.success);
        assert!(v.reason.unwrap().contains("stream disconnected"));
    }

    #[test]
    fn error_event_then_completion_is_success() {
        let (events, p) = run_fixture(
            "codex/retry_success.jsonl",
            CodexParser::new(Limits::default()),
        );
        assert!(events.iter().any(|e| e.kind() == "retry"));
        assert_eq!(p.verdict(&AgentExit::success()), Verdict::ok());
    }

    #[test]
    fn missing_turn_outcome_fails() {
        let (_, p) = run_fixture(
            "codex/missing_end.jsonl",
            CodexParser::new(Limits::default()),
        );
        let v = p.verdict(&AgentExit::success());
        assert!(!v.success);
        assert!(v.reason.unwrap().contains("without turn.completed"));
    }
}
