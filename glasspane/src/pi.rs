//! pi (`pi --mode json`): one JSON object per line keyed by `type`.
//!
//! Mapping: the `session` header → `agent_session`; assistant `message_end`
//! → `message` (text, and thinking) plus `usage` (once per message, from its
//! `usage`); `tool_execution_start|end` → `tool_start|end`;
//! `auto_compaction_*` → `compaction`; `auto_retry_*` → `retry`. Streaming
//! and bookkeeping events (`message_update`, `turn_*`, `agent_start`,
//! `tool_execution_update`, user and toolResult messages) are recognised and
//! produce nothing: their content arrives whole in a later event. Anything
//! else → `raw`.
//!
//! Verdict: json mode exits 0 even on failure, so the rule is the last
//! assistant message's `stopReason`: `stop` succeeds; `error`, `aborted`,
//! `length` fail; no `agent_end`, or a last message still at `toolUse`, means
//! pi died mid-run. A retry pair in between is not a failure. A kill by
//! signal always fails.

use broker::messages::session::{Event, Phase, Role, Stream};
use broker::messages::Usage;
use serde_json::Value;

use crate::line_reader::Line;
use crate::parser::{
    as_text, content_text, raw, trim, u64_field, AgentExit, Limits, Parser, UsageTotals, Verdict,
};

pub struct PiParser {
    limits: Limits,
    usage: UsageTotals,
    /// `stopReason` and `errorMessage` of the last assistant message.
    last_stop: Option<(String, Option<String>)>,
    agent_end: bool,
}

impl PiParser {
    pub fn new(limits: Limits) -> Self {
        PiParser {
            limits,
            usage: UsageTotals::default(),
            last_stop: None,
            agent_end: false,
        }
    }

    fn assistant(&mut self, msg: &Value, out: &mut Vec<Event>) {
        let mut text = String::new();
        let mut thinking = String::new();
        if let Some(blocks) = msg.get("content").and_then(Value::as_array) {
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => push_para(&mut text, b.get("text")),
                    Some("thinking") => push_para(&mut thinking, b.get("thinking")),
                    _ => {}
                }
            }
        } else if let Some(s) = msg.get("content").and_then(Value::as_str) {
            text.push_str(s);
        }
        if !thinking.is_empty() {
            out.push(message(Role::Thinking, &thinking, &self.limits));
        }
        if !text.is_empty() {
            out.push(message(Role::Assistant, &text, &self.limits));
        }
        if let Some(u) = msg.get("usage") {
            out.push(self.usage.add(pi_usage(u)));
        }
        self.record_stop(msg);
    }

    fn record_stop(&mut self, msg: &Value) {
        if let Some(reason) = msg.get("stopReason").and_then(Value::as_str) {
            let error = msg
                .get("errorMessage")
                .and_then(Value::as_str)
                .map(str::to_owned);
            self.last_stop = Some((reason.to_owned(), error));
        }
    }
}

fn push_para(out: &mut String, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str) {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(s);
    }
}

fn message(role: Role, text: &str, limits: &Limits) -> Event {
    Event::Message {
        role,
        text: trim(text, limits.text),
        len: text.len(),
    }
}

fn pi_usage(u: &Value) -> Usage {
    Usage {
        input_tokens: u64_field(u, "input"),
        output_tokens: u64_field(u, "output"),
        cache_read_tokens: u64_field(u, "cacheRead"),
        cache_write_tokens: u64_field(u, "cacheWrite"),
        cost_usd: u
            .get("cost")
            .and_then(|c| c.get("total"))
            .and_then(Value::as_f64),
    }
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn opt_u32(v: &Value, key: &str) -> Option<u32> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

impl Parser for PiParser {
    fn line(&mut self, line: Line, out: &mut Vec<Event>) {
        let Some(v) = crate::cut_json::parse_object(&line) else {
            return out.push(raw(Stream::Stdout, line, &self.limits));
        };
        let l = &self.limits;
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "session" => out.push(Event::AgentSession {
                agent_session_id: opt_str(&v, "id"),
                model: None,
            }),
            "message_end" => {
                let msg = v.get("message").unwrap_or(&Value::Null);
                if msg.get("role").and_then(Value::as_str) == Some("assistant") {
                    self.assistant(msg, out);
                }
            }
            "agent_end" => {
                self.agent_end = true;
                if line.cut {
                    // Its message list was cut, so its last assistant message
                    // may not be the run's: the last `message_end` decides.
                    return;
                }
                let last = v
                    .get("messages")
                    .and_then(Value::as_array)
                    .and_then(|m| {
                        m.iter()
                            .rev()
                            .find(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
                    })
                    .cloned();
                if let Some(m) = last {
                    self.record_stop(&m);
                }
            }
            "tool_execution_start" => {
                let args = v.get("args").map(as_text).unwrap_or_default();
                out.push(Event::ToolStart {
                    id: str_field(&v, "toolCallId"),
                    name: str_field(&v, "toolName"),
                    args: trim(&args, l.args),
                    args_len: args.len(),
                });
            }
            "tool_execution_end" => {
                let result = v.get("result").unwrap_or(&Value::Null);
                let text = match result.get("content") {
                    Some(c) => content_text(c),
                    None => as_text(result),
                };
                out.push(Event::ToolEnd {
                    id: str_field(&v, "toolCallId"),
                    name: str_field(&v, "toolName"),
                    result: trim(&text, l.result),
                    result_len: text.len(),
                    is_error: v.get("isError").and_then(Value::as_bool).unwrap_or(false),
                });
            }
            "auto_compaction_start" => out.push(Event::Compaction {
                phase: Phase::Start,
                reason: opt_str(&v, "reason"),
                tokens_before: None,
                error: None,
            }),
            "auto_compaction_end" => out.push(Event::Compaction {
                phase: Phase::End,
                reason: v
                    .get("aborted")
                    .and_then(Value::as_bool)
                    .filter(|a| *a)
                    .map(|_| "aborted".to_owned()),
                tokens_before: v
                    .get("result")
                    .and_then(|r| r.get("tokensBefore"))
                    .and_then(Value::as_u64),
                error: opt_str(&v, "errorMessage"),
            }),
            "auto_retry_start" => out.push(Event::Retry {
                phase: Phase::Start,
                attempt: opt_u32(&v, "attempt"),
                max_attempts: opt_u32(&v, "maxAttempts"),
                delay_ms: v.get("delayMs").and_then(Value::as_u64),
                error: opt_str(&v, "errorMessage"),
                success: None,
            }),
            "auto_retry_end" => out.push(Event::Retry {
                phase: Phase::End,
                attempt: opt_u32(&v, "attempt"),
                max_attempts: None,
                delay_ms: None,
                error: opt_str(&v, "finalError"),
                success: v.get("success").and_then(Value::as_bool),
            }),
            "agent_start"
            | "turn_start"
            | "turn_end"
            | "message_start"
            | "message_update"
            | "tool_execution_update" => {}
            _ => out.push(raw(Stream::Stdout, line, l)),
        }
    }

    fn verdict(&self, exit: &AgentExit) -> Verdict {
        if let Some(sig) = exit.signal {
            return Verdict::failed(format!("pi was killed by signal {sig}"));
        }
        let Some((stop, error)) = &self.last_stop else {
            return Verdict::failed(format!(
                "pi exited ({}) without a final assistant message",
                exit.describe()
            ));
        };
        if !self.agent_end {
            return Verdict::failed(format!(
                "pi exited ({}) without its final agent_end event (last stopReason {stop})",
                exit.describe()
            ));
        }
        match stop.as_str() {
            "stop" => Verdict::ok(),
            "toolUse" => {
                Verdict::failed("pi ended while a tool call was pending (stopReason toolUse)")
            }
            "length" => Verdict::failed("pi stopped at the output token limit (stopReason length)"),
            other => Verdict::failed(match error {
                Some(e) => format!("pi stopped with stopReason {other}: {e}"),
                None => format!("pi stopped with stopReason {other}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run_fixture;

    #[test]
    fn success_fixture() {
        let (events, p) = run_fixture("pi/success.jsonl", PiParser::new(Limits::default()));
        let kinds: Vec<_> = events.iter().map(Event::kind).collect();
        assert_eq!(kinds.first(), Some(&"agent_session"));
        assert!(kinds.contains(&"tool_start") && kinds.contains(&"tool_end"));
        assert!(kinds.contains(&"message"));
        assert_eq!(p.verdict(&AgentExit::success()), Verdict::ok());
        let last_usage = events.iter().rev().find_map(|e| match e {
            Event::Usage { total, .. } => Some(total.clone()),
            _ => None,
        });
        let total = last_usage.unwrap();
        assert_eq!(total.input_tokens, 1200 + 1500);
        assert_eq!(total.output_tokens, 80 + 40);
        assert!((total.cost_usd.unwrap() - 0.0123).abs() < 1e-9);
    }

    #[test]
    fn error_stop_reason_fails_although_exit_is_zero() {
        let (_, p) = run_fixture("pi/failure.jsonl", PiParser::new(Limits::default()));
        let v = p.verdict(&AgentExit::success());
        assert!(!v.success);
        assert!(v.reason.unwrap().contains("overloaded"));
    }

    #[test]
    fn retry_then_success_is_success() {
        let (events, p) = run_fixture("pi/retry_success.jsonl", PiParser::new(Limits::default()));
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Retry {
                phase: Phase::Start,
                ..
            }
        )));
        assert!(events.iter().any(|e| matches!(e, Event::Compaction { .. })));
        assert_eq!(p.verdict(&AgentExit::success()), Verdict::ok());
    }

    #[test]
    fn missing_agent_end_fails() {
        let (_, p) = run_fixture("pi/missing_end.jsonl", PiParser::new(Limits::default()));
        let v = p.verdict(&AgentExit::success());
        assert!(!v.success);
        assert!(v.reason.unwrap().contains("without"));
    }

    #[test]
    fn unknown_and_broken_lines_are_raw() {
        let mut p = PiParser::new(Limits::default());
        let mut out = Vec::new();
        for text in [r#"{"type":"brand_new","x":1}"#, "not json {", "[1,2]"] {
            p.line(
                Line {
                    text: text.into(),
                    len: text.len(),
                    cut: false,
                },
                &mut out,
            );
        }
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|e| e.kind() == "raw"));
    }

    /// A run whose `agent_end` (every message) and one tool result are far
    /// beyond the line reader's limit: both are still understood.
    #[tokio::test]
    async fn lines_cut_by_the_reader_keep_their_meaning() {
        use crate::line_reader::LineReader;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pi/success.jsonl");
        let fixture = std::fs::read_to_string(path).unwrap();
        let big = "x".repeat(1 << 20);
        let mut input = String::new();
        // Edited as text, so that the members keep pi's order (`type` first).
        for l in fixture.lines() {
            let l = if l.starts_with(r#"{"type":"tool_execution_end","toolCallId":"toolu_01A""#) {
                l.replace("test result: ok. 12 passed", &big)
            } else if l.starts_with(r#"{"type":"agent_end","messages":["#) {
                let pad =
                    format!(r#"{{"role":"user","content":[{{"type":"text","text":"{big}"}}]}},"#);
                l.replacen(r#""messages":["#, &format!(r#""messages":[{pad}"#), 1)
            } else {
                l.to_owned()
            };
            input.push_str(&l);
            input.push('\n');
        }
        let mut reader = LineReader::new(input.as_bytes());
        let mut p = PiParser::new(Limits::default());
        let mut out = Vec::new();
        let mut cut = 0;
        while let Some(line) = reader.next_line().await.unwrap() {
            cut += usize::from(line.cut);
            p.line(line, &mut out);
        }
        assert!(cut >= 2, "the test must cut lines ({cut} cut)");
        assert!(!out.iter().any(|e| e.kind() == "raw"), "{out:?}");
        let ends: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                Event::ToolEnd { id, result, .. } => Some((id.clone(), result.len())),
                _ => None,
            })
            .collect();
        assert!(ends
            .iter()
            .any(|(id, len)| id == "toolu_01A" && *len == Limits::default().result));
        assert_eq!(p.verdict(&AgentExit::success()), Verdict::ok());
    }
}
