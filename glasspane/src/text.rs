//! Plain-text `command` agents: every stdout line is an assistant `message`
//! (trimmed, with its true length). There is no end signal in the output, so
//! the verdict is the exit status: code 0 succeeds, anything else fails.

use broker::messages::session::{Event, Role};

use crate::line_reader::Line;
use crate::parser::{trim, AgentExit, Limits, Parser, Verdict};

pub struct TextParser {
    limits: Limits,
}

impl TextParser {
    pub fn new(limits: Limits) -> Self {
        TextParser { limits }
    }
}

impl Parser for TextParser {
    fn line(&mut self, line: Line, out: &mut Vec<Event>) {
        let len = line.len;
        let text = line.into_text();
        out.push(Event::Message {
            role: Role::Assistant,
            text: trim(text.trim_end_matches('\r'), self.limits.text),
            len,
        });
    }

    fn verdict(&self, exit: &AgentExit) -> Verdict {
        if exit.is_zero() {
            Verdict::ok()
        } else {
            Verdict::failed(format!("command failed with {}", exit.describe()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_is_a_message_and_exit_code_decides() {
        let mut p = TextParser::new(Limits::default());
        let mut out = Vec::new();
        p.line(
            Line {
                text: "building...\r".into(),
                len: 12,
                cut: false,
            },
            &mut out,
        );
        assert_eq!(
            out,
            [Event::Message {
                role: Role::Assistant,
                text: "building...".into(),
                len: 12
            }]
        );
        assert!(p.verdict(&AgentExit::success()).success);
        let v = p.verdict(&AgentExit::code(2));
        assert_eq!(v.reason.as_deref(), Some("command failed with exit code 2"));
    }
}
