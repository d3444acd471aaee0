//! The [`Parser`] trait every agent format implements, the choice of format
//! by agent name ([`AgentFormat`]), and what the parsers share: text limits,
//! trimming, usage totals and the [`Verdict`].
//!
//! A parser is plain, synchronous logic over data: it is fed one stdout line
//! at a time and pushes zero or more normalised [`Event`]s; it never fails
//! (an unrecognised or malformed line becomes [`Event::Raw`]). At the end the
//! pump asks it for its verdict given the process exit, by the agent's own
//! rule (see each format's module).

use broker::messages::session::{Event, Stream};
use broker::messages::Usage;

use crate::line_reader::Line;

/// How far texts are trimmed in events (bytes, cut on a char boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Assistant and thinking messages.
    pub text: usize,
    /// Tool arguments.
    pub args: usize,
    /// Tool results.
    pub result: usize,
    /// Raw lines.
    pub raw: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            text: 8 * 1024,
            args: 2 * 1024,
            result: 4 * 1024,
            raw: 2 * 1024,
        }
    }
}

/// How the agent process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentExit {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
}

impl AgentExit {
    /// Exited normally with code 0.
    pub fn success() -> Self {
        AgentExit {
            code: Some(0),
            signal: None,
        }
    }

    pub fn code(code: i32) -> Self {
        AgentExit {
            code: Some(code),
            signal: None,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.code == Some(0)
    }

    /// `exit code 3`, `signal 9`, or `unknown exit`.
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => "unknown exit".to_string(),
        }
    }
}

impl From<std::process::ExitStatus> for AgentExit {
    fn from(status: std::process::ExitStatus) -> Self {
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&status);
        #[cfg(not(unix))]
        let signal = None;
        AgentExit {
            code: status.code(),
            signal,
        }
    }
}

/// The agent's own judgement of its run, read from its output and exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub success: bool,
    /// Why it failed (or a note on an odd success).
    pub reason: Option<String>,
}

impl Verdict {
    pub fn ok() -> Self {
        Verdict {
            success: true,
            reason: None,
        }
    }

    pub fn failed(reason: impl Into<String>) -> Self {
        Verdict {
            success: false,
            reason: Some(reason.into()),
        }
    }
}

/// One agent format's normaliser.
pub trait Parser: Send {
    /// Normalises one stdout line, pushing its events onto `out`.
    fn line(&mut self, line: Line, out: &mut Vec<Event>);

    /// The verdict once stdout is closed and the process has exited.
    fn verdict(&self, exit: &AgentExit) -> Verdict;
}

/// The output formats glasspane understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentFormat {
    /// `pi --mode json`.
    Pi,
    /// `claude -p --output-format stream-json --verbose`.
    Claude,
    /// `codex exec --json`.
    Codex,
    /// Any other command: plain text lines.
    Text,
}

impl AgentFormat {
    /// The format of an agent by its configured name (`pi`, `claude`,
    /// `codex`); anything else is a plain-text `command` agent.
    pub fn for_agent(name: &str) -> AgentFormat {
        match name {
            "pi" => AgentFormat::Pi,
            "claude" | "claude-code" => AgentFormat::Claude,
            "codex" => AgentFormat::Codex,
            _ => AgentFormat::Text,
        }
    }

    /// A fresh parser for one session.
    pub fn parser(self, limits: Limits) -> Box<dyn Parser> {
        match self {
            AgentFormat::Pi => Box::new(crate::pi::PiParser::new(limits)),
            AgentFormat::Claude => Box::new(crate::claude::ClaudeParser::new(limits)),
            AgentFormat::Codex => Box::new(crate::codex::CodexParser::new(limits)),
            AgentFormat::Text => Box::new(crate::text::TextParser::new(limits)),
        }
    }
}

/// `s` cut to at most `limit` bytes on a char boundary.
pub fn trim(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A raw event for a line no parser recognised.
pub fn raw(stream: Stream, line: Line, limits: &Limits) -> Event {
    let len = line.len;
    let text = line.into_text();
    Event::Raw {
        stream,
        text: trim(text.trim_end_matches('\r'), limits.raw),
        len,
    }
}

/// A value as display text: strings as they are, anything else as JSON.
pub fn as_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Concatenates the `text` of every `{type: "text", text}` block of a
/// content array, or renders a plain string / other value as text.
pub fn content_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(blocks) => {
            let mut out = String::new();
            for b in blocks {
                if let Some(t) = b.get("text").and_then(|t| t.as_str()) {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(t);
                }
            }
            out
        }
        other => as_text(other),
    }
}

/// Reads an unsigned number field, tolerating absence.
pub fn u64_field(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(|x| x.as_u64()).unwrap_or(0)
}

/// Session totals of usage, updated once per model response.
#[derive(Debug, Clone, Default)]
pub struct UsageTotals {
    pub total: Usage,
}

impl UsageTotals {
    /// Adds one response's usage and returns its event.
    pub fn add(&mut self, response: Usage) -> Event {
        self.total = self.total.plus(&response);
        Event::Usage {
            response,
            total: self.total.clone(),
        }
    }

    /// Replaces the totals with the agent's own final figures (Claude's
    /// `result`), returning the difference as the response.
    pub fn settle(&mut self, total: Usage) -> Event {
        let old = std::mem::replace(&mut self.total, total);
        let t = &self.total;
        let response = Usage {
            input_tokens: t.input_tokens.saturating_sub(old.input_tokens),
            output_tokens: t.output_tokens.saturating_sub(old.output_tokens),
            cache_read_tokens: t.cache_read_tokens.saturating_sub(old.cache_read_tokens),
            cache_write_tokens: t.cache_write_tokens.saturating_sub(old.cache_write_tokens),
            cost_usd: t
                .cost_usd
                .map(|c| (c - old.cost_usd.unwrap_or(0.0)).max(0.0)),
        };
        Event::Usage {
            response,
            total: self.total.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_respects_char_boundaries() {
        assert_eq!(trim("héllo", 2), "h");
        assert_eq!(trim("abc", 10), "abc");
    }

    #[test]
    fn format_by_agent_name() {
        assert_eq!(AgentFormat::for_agent("pi"), AgentFormat::Pi);
        assert_eq!(AgentFormat::for_agent("claude"), AgentFormat::Claude);
        assert_eq!(AgentFormat::for_agent("codex"), AgentFormat::Codex);
        assert_eq!(AgentFormat::for_agent("my-script"), AgentFormat::Text);
    }
}
