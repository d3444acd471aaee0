//! Tool-result compaction on append: when the mode says so, a tool result
//! longer than the mode's `tool_result_keep_bytes` keeps its head and tail
//! (half each, cut on char boundaries) around a marker that records the true
//! size and the sha256 of the whole.
//!
//! The marker is one line between head and tail:
//!
//! ```text
//! [colibri: tool result compacted: 123456 bytes, sha256 <64 hex> of 123456 bytes, kept 2048 head + 2048 tail]
//! ```
//!
//! "of N bytes" is the text that was hashed: the whole result when the
//! worker saw all of it (N equals the size), otherwise the part it
//! received (glasspane bounds what it reads), said honestly.

use broker::cost_mode::ModeLimits;
use broker::messages::session::Event;
use sha2::{Digest, Sha256};

/// What compaction kept of one tool result, and the facts of the whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactedResult {
    pub head: String,
    pub tail: String,
    /// Size of the whole result, in bytes.
    pub true_size: u64,
    /// sha256 (hex) of the `hashed_bytes` bytes received.
    pub sha256: String,
    pub hashed_bytes: u64,
}

impl CompactedResult {
    /// Head, marker line, tail.
    pub fn render(&self) -> String {
        format!(
            "{}\n[colibri: tool result compacted: {} bytes, sha256 {} of {} bytes, kept {} head + {} tail]\n{}",
            self.head,
            self.true_size,
            self.sha256,
            self.hashed_bytes,
            self.head.len(),
            self.tail.len(),
            self.tail
        )
    }
}

/// Hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Compacts `text` (of true size `true_size`) to `keep` bytes of head and
/// tail; `None` when it already fits.
pub fn compact(text: &str, true_size: u64, keep: u64) -> Option<CompactedResult> {
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    if text.len() <= keep {
        return None;
    }
    let head_end = floor_char(text, keep / 2);
    let tail_start = ceil_char(text, text.len().saturating_sub(keep - keep / 2)).max(head_end);
    Some(CompactedResult {
        head: text[..head_end].to_owned(),
        tail: text[tail_start..].to_owned(),
        true_size: true_size.max(text.len() as u64),
        sha256: sha256_hex(text.as_bytes()),
        hashed_bytes: text.len() as u64,
    })
}

/// Compacts a `tool_end` event's result in place when the mode says so;
/// returns what it did.
pub fn apply(event: &mut Event, limits: &ModeLimits) -> Option<CompactedResult> {
    if !limits.compact_tool_results {
        return None;
    }
    let Event::ToolEnd {
        result, result_len, ..
    } = event
    else {
        return None;
    };
    let c = compact(result, *result_len as u64, limits.tool_result_keep_bytes)?;
    *result = c.render();
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::cost_mode::CostMode;
    use proptest::prelude::*;

    fn tool_end(result: &str) -> Event {
        Event::ToolEnd {
            id: "t".into(),
            name: "bash".into(),
            result: result.into(),
            result_len: result.len(),
            is_error: false,
        }
    }

    #[test]
    fn keeps_the_hash_and_the_size() {
        let whole: String = (0..10_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let mut e = tool_end(&whole);
        let c = apply(&mut e, &CostMode::Fast.limits()).expect("compacted");
        assert_eq!(c.true_size, 10_000);
        assert_eq!(c.sha256, sha256_hex(whole.as_bytes()));
        assert_eq!(c.head.len() + c.tail.len(), 4_096);
        assert!(whole.starts_with(&c.head) && whole.ends_with(&c.tail));
        let Event::ToolEnd {
            result, result_len, ..
        } = &e
        else {
            unreachable!()
        };
        assert_eq!(*result_len, 10_000, "the event keeps the true size");
        assert!(result.contains(&format!("10000 bytes, sha256 {}", c.sha256)));
    }

    #[test]
    fn small_results_and_max_mode_are_left_alone() {
        let mut e = tool_end("short");
        assert_eq!(apply(&mut e, &CostMode::Fast.limits()), None);
        let mut big = tool_end(&"x".repeat(100_000));
        assert_eq!(apply(&mut big, &CostMode::Max.limits()), None);
        assert_eq!(big, tool_end(&"x".repeat(100_000)));
    }

    proptest! {
        #[test]
        fn head_and_tail_are_the_ends_of_the_whole(text in "\\PC{0,600}", keep in 1u64..300) {
            if let Some(c) = compact(&text, text.len() as u64, keep) {
                prop_assert!(text.starts_with(&c.head));
                prop_assert!(text.ends_with(&c.tail));
                prop_assert!((c.head.len() + c.tail.len()) as u64 <= keep);
                prop_assert_eq!(c.true_size, text.len() as u64);
            } else {
                prop_assert!(text.len() as u64 <= keep);
            }
        }
    }
}
