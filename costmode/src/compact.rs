//! Compaction of a transcript segment: the oldest turns become one summary
//! entry that records what was removed (turns, events, bytes, seq range,
//! tools used with counts, files touched where the tool arguments name
//! them, tokens, and the last words of each removed turn); the newest turns
//! stay verbatim. Cuts fall only at turn boundaries, which never separate a
//! tool call from its result (see [`crate::turns`]). A new summary subsumes
//! the segment's previous one, so a segment holds at most one.
//!
//! How many turns go: when over the turn limit, all but the mode's
//! `kept_turns` newest; then more, oldest first, while the segment would
//! still be over its byte limit; never the current (last) turn.

use broker::cost_mode::{CostMode, ModeLimits};
use broker::messages::session::{Event, Role, Summary};
use serde_json::Value;

use crate::enforce::{over, SessionState};
use crate::ledger::{Ledger, Turn};

/// Most files and tool names a summary lists.
pub const MAX_LISTED: usize = 32;
/// Longest file path kept in a summary, in bytes.
pub const MAX_PATH: usize = 256;
/// Bytes of each removed turn's last message kept in the digest, and of
/// the digest as a whole (oldest lines go first).
pub const DIGEST_LINE: usize = 160;
pub const DIGEST_MAX: usize = 1024;
/// Envelope bytes around an event in a transcript line (session, task and
/// worker ids, seq, time): an upper estimate for sizing the summary line.
pub const ENVELOPE_BYTES: u64 = 320;

/// How many turns a compaction removes, and the segment it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub remove_turns: usize,
    pub after: SessionState,
}

/// The bytes of a transcript line carrying `summary`.
pub fn summary_line_bytes(summary: &Summary) -> u64 {
    let ev = Event::Summary(Box::new(summary.clone()));
    serde_json::to_vec(&ev).map_or(0, |v| v.len() as u64) + ENVELOPE_BYTES
}

/// The state after removing the `n` oldest turns into a summary.
fn state_after(ledger: &Ledger, n: usize, mode: CostMode) -> SessionState {
    let summary = summarise(ledger, n, mode, "");
    let old_summary = ledger
        .head
        .iter()
        .filter(|e| matches!(e.event, Event::Summary(_)))
        .map(|e| e.bytes())
        .sum::<u64>();
    let kept: u64 = ledger.turns[n..].iter().map(|t| t.bytes).sum();
    SessionState {
        bytes: ledger.head_bytes() - old_summary + summary_line_bytes(&summary) + kept,
        uncompacted_turns: u32::try_from(ledger.turns.len() - n).unwrap_or(u32::MAX),
    }
}

/// The most thorough compaction's result (all turns but the current one
/// summarised), or `None` when there is nothing to compact.
pub fn best(ledger: &Ledger, mode: CostMode) -> Option<SessionState> {
    let n = ledger.turns.len().checked_sub(1).filter(|n| *n > 0)?;
    Some(state_after(ledger, n, mode))
}

/// The smallest compaction that brings the segment under `mode`'s limits,
/// but at least down to `kept_turns` when over the turn limit. `None` when
/// no compaction can.
pub fn plan(ledger: &Ledger, mode: CostMode) -> Option<Plan> {
    let limits: ModeLimits = mode.limits();
    let turns = ledger.turns.len();
    if turns < 2 {
        return None;
    }
    let mut n = if turns > limits.uncompacted_turns as usize {
        turns - (limits.kept_turns.max(1) as usize).min(turns)
    } else {
        1
    };
    n = n.max(1);
    while n < turns {
        let after = state_after(ledger, n, mode);
        if over(after, &limits).is_none() {
            return Some(Plan {
                remove_turns: n,
                after,
            });
        }
        n += 1;
    }
    None
}

/// Removes the plan's turns (and the old summary) from the ledger and
/// returns the summary that replaces them; the caller records it as the
/// segment's new summary entry.
pub fn apply(ledger: &mut Ledger, plan: &Plan, mode: CostMode, reason: &str) -> Summary {
    let summary = summarise(ledger, plan.remove_turns, mode, reason);
    ledger.take_summary();
    ledger.drain_turns(plan.remove_turns);
    summary
}

/// Summarises everything a segment holds but its head's non-summary
/// entries (for a rollover: the new segment's memory of the old one).
pub fn summarise_all(ledger: &Ledger, mode: CostMode, reason: &str) -> Summary {
    summarise(ledger, ledger.turns.len(), mode, reason)
}

/// The summary of the ledger's old summary plus its `n` oldest turns.
fn summarise(ledger: &Ledger, n: usize, mode: CostMode, reason: &str) -> Summary {
    let mut s = ledger.summary().cloned().unwrap_or_default();
    s.mode = mode;
    s.reason = reason.to_owned();
    for turn in &ledger.turns[..n.min(ledger.turns.len())] {
        add_turn(&mut s, turn);
    }
    s
}

fn add_turn(s: &mut Summary, turn: &Turn) {
    s.turns += 1;
    s.bytes += turn.bytes;
    let mut last_words = None;
    for e in &turn.entries {
        s.events += 1;
        s.first_seq = Some(s.first_seq.map_or(e.seq, |f| f.min(e.seq)));
        s.last_seq = Some(s.last_seq.map_or(e.seq, |l| l.max(e.seq)));
        match &e.event {
            Event::ToolStart { name, args, .. } => {
                if s.tools.len() < MAX_LISTED || s.tools.contains_key(name) {
                    *s.tools.entry(name.clone()).or_insert(0) += 1;
                }
                for f in files_in_args(args) {
                    if s.files.len() < MAX_LISTED && !s.files.contains(&f) {
                        s.files.push(f);
                    }
                }
            }
            Event::Usage { response, .. } => s.tokens += response.total_tokens(),
            Event::Message {
                role: Role::Assistant,
                text,
                ..
            } => last_words = Some(text.as_str()),
            _ => {}
        }
    }
    if let Some(w) = last_words {
        let w = w.trim();
        let cut = floor_char(w, DIGEST_LINE);
        if !s.digest.is_empty() {
            s.digest.push('\n');
        }
        s.digest.push_str(&w[..cut]);
        if s.digest.len() > DIGEST_MAX {
            let start = s.digest.len() - DIGEST_MAX;
            let start = (start..s.digest.len())
                .find(|i| s.digest.is_char_boundary(*i))
                .unwrap_or(s.digest.len());
            s.digest.drain(..start);
        }
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Keys whose string value (or array of strings) names a file.
const PATH_KEYS: [&str; 8] = [
    "path",
    "file_path",
    "filePath",
    "file",
    "filename",
    "notebook_path",
    "paths",
    "files",
];

/// The files a tool call's arguments name, where they are JSON with
/// path-like keys (pi `read {path}`, Claude `Edit {file_path}`, Codex
/// `file_change [{path, kind}]`). Shell commands are not guessed at.
pub fn files_in_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str::<Value>(args) {
        walk(&v, 0, &mut out);
    }
    out
}

fn walk(v: &Value, depth: usize, out: &mut Vec<String>) {
    if depth > 4 || out.len() >= MAX_LISTED {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if PATH_KEYS.contains(&k.as_str()) {
                    push_paths(v, out);
                } else {
                    walk(v, depth + 1, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| walk(i, depth + 1, out)),
        _ => {}
    }
}

fn push_paths(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(p) if !p.is_empty() => {
            let p = &p[..floor_char(p, MAX_PATH)];
            if !out.iter().any(|o| o == p) {
                out.push(p.to_owned());
            }
        }
        Value::Array(items) => items.iter().for_each(|i| push_paths(i, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::{entry, msg};
    use broker::messages::Usage;

    fn tool(id: &str, name: &str, args: &str, start: bool) -> Event {
        if start {
            Event::ToolStart {
                id: id.into(),
                name: name.into(),
                args: args.into(),
                args_len: args.len(),
            }
        } else {
            Event::ToolEnd {
                id: id.into(),
                name: name.into(),
                result: "ok".into(),
                result_len: 2,
                is_error: false,
            }
        }
    }

    /// A ledger of `n` turns, each: message, usage, tool start, tool end.
    pub(crate) fn ledger_of(n: u64, line: usize) -> Ledger {
        let mut l = Ledger::new();
        l.push(entry(
            1,
            Event::AgentSession {
                agent_session_id: None,
                model: None,
            },
            line,
        ));
        let mut seq = 1;
        for t in 0..n {
            let mut next = |e| {
                seq += 1;
                l.push(entry(seq, e, line));
            };
            next(msg(&format!("turn {t}")));
            next(Event::Usage {
                response: Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    ..Default::default()
                },
                total: Usage::default(),
            });
            let id = format!("c{t}");
            next(tool(
                &id,
                "read",
                &format!(r#"{{"path":"src/f{t}.rs"}}"#),
                true,
            ));
            next(tool(&id, "read", "", false));
        }
        l
    }

    #[test]
    fn summary_records_what_was_removed() {
        let mut l = ledger_of(6, 100);
        let p = plan(&l, CostMode::Fast).expect("a plan");
        assert_eq!(p.remove_turns, 4, "keeps fast's 2 newest turns");
        let s = apply(&mut l, &p, CostMode::Fast, "6 uncompacted turns > 5");
        assert_eq!((s.turns, s.events, s.bytes), (4, 16, 1600));
        assert_eq!((s.first_seq, s.last_seq), (Some(2), Some(17)));
        assert_eq!(s.tools.get("read"), Some(&4));
        assert_eq!(
            s.files,
            ["src/f0.rs", "src/f1.rs", "src/f2.rs", "src/f3.rs"]
        );
        assert_eq!(s.tokens, 60);
        assert_eq!(s.digest, "turn 0\nturn 1\nturn 2\nturn 3");
        assert_eq!(l.turn_count(), 2);
        // Every kept turn still has each tool call with its result.
        for t in &l.turns {
            let starts = t
                .entries
                .iter()
                .filter(|e| matches!(e.event, Event::ToolStart { .. }))
                .count();
            let ends = t
                .entries
                .iter()
                .filter(|e| matches!(e.event, Event::ToolEnd { .. }))
                .count();
            assert_eq!(starts, ends);
        }
    }

    #[test]
    fn a_second_compaction_subsumes_the_first_summary() {
        let mut l = ledger_of(6, 100);
        let p = plan(&l, CostMode::Fast).unwrap();
        let s = apply(&mut l, &p, CostMode::Fast, "r");
        l.push_head(crate::ledger::Entry::new(
            99,
            Event::Summary(Box::new(s)),
            vec![b'x'; 300],
        ));
        let mut seq = 100;
        for t in 0..4 {
            let id = format!("m{t}");
            for e in [
                msg(&format!("more {t}")),
                tool(&id, "edit", "{}", true),
                tool(&id, "edit", "", false),
            ] {
                seq += 1;
                l.push(entry(seq, e, 100));
            }
        }
        let p = plan(&l, CostMode::Fast).unwrap();
        let s = apply(&mut l, &p, CostMode::Fast, "r");
        assert_eq!(s.turns, 8);
        assert!(l.summary().is_none(), "the old summary is gone");
    }

    #[test]
    fn bytes_alone_remove_more_turns() {
        // 3 turns of 4 x 50 KB = 200 KB each: 600 KB > fast's 500 KB; one
        // turn removed leaves 400 KB plus the summary.
        let l = ledger_of(3, 50_000);
        let p = plan(&l, CostMode::Fast).unwrap();
        assert_eq!(p.remove_turns, 1);
        assert!(p.after.bytes <= 500_000);
        // One turn over the limit on its own: nothing helps.
        let one = ledger_of(1, 200_000);
        assert_eq!(plan(&one, CostMode::Fast), None);
        assert_eq!(best(&one, CostMode::Fast), None);
    }

    #[test]
    fn files_are_read_from_path_like_arguments() {
        assert_eq!(
            files_in_args(r#"{"file_path":"/a/b.rs","old":"x"}"#),
            ["/a/b.rs"]
        );
        assert_eq!(
            files_in_args(r#"[{"path":"x.md","kind":"add"},{"path":"y.md","kind":"update"}]"#),
            ["x.md", "y.md"]
        );
        assert!(files_in_args("ls -la").is_empty());
    }
}
