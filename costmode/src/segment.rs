//! Transcript segments: when compaction cannot bring a session under its
//! limits and escalation is not allowed, the transcript rolls over to a new
//! segment. Segment 0 is glasspane's `<session>.jsonl`; segment `n ≥ 1` is
//! `<session>.<n>.jsonl` in the same directory, and its first entry is a
//! `segment` event naming the previous file, followed by a summary of it.
//!
//! [`latest_segment`] is the one function here that touches the file system
//! (it lists the sessions directory), for a worker resuming a session.

use std::path::{Path, PathBuf};

use broker::messages::session::Event;
use broker::SessionId;

/// The file name of segment `index` of `session`.
pub fn file_name(session: &SessionId, index: u32) -> String {
    if index == 0 {
        format!("{session}.jsonl")
    } else {
        format!("{session}.{index}.jsonl")
    }
}

/// The path of segment `index` under `state_dir` (next to glasspane's
/// transcript, `<state_dir>/sessions/`).
pub fn path(state_dir: &Path, session: &SessionId, index: u32) -> PathBuf {
    state_dir.join("sessions").join(file_name(session, index))
}

/// The link entry that opens segment `index`.
pub fn link(session: &SessionId, index: u32, reason: String) -> Event {
    Event::Segment {
        index,
        previous: file_name(session, index.saturating_sub(1)),
        reason,
    }
}

/// The index of a file name of `session`'s segments, if it is one.
pub fn parse_index(session: &SessionId, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(&format!("{session}."))?;
    if rest == "jsonl" {
        return Some(0);
    }
    rest.strip_suffix(".jsonl")?.parse().ok().filter(|n| *n > 0)
}

/// The highest segment of `session` on disk, and its path (I/O: lists the
/// sessions directory). `None` when the session has no transcript here.
pub fn latest_segment(state_dir: &Path, session: &SessionId) -> Option<(u32, PathBuf)> {
    let dir = state_dir.join("sessions");
    let best = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| parse_index(session, e.file_name().to_str()?))
        .max()?;
    Some((best, path(state_dir, session, best)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let s = SessionId::new();
        for i in [0, 1, 7, 1000] {
            assert_eq!(parse_index(&s, &file_name(&s, i)), Some(i));
        }
        assert_eq!(parse_index(&s, &format!("{s}.0.jsonl")), None);
        assert_eq!(parse_index(&s, "other.jsonl"), None);
        match link(&s, 2, "r".into()) {
            Event::Segment { previous, .. } => assert_eq!(previous, format!("{s}.1.jsonl")),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn latest_segment_is_the_highest() {
        let dir = tempfile::tempdir().unwrap();
        let s = SessionId::new();
        assert_eq!(latest_segment(dir.path(), &s), None);
        std::fs::create_dir_all(dir.path().join("sessions")).unwrap();
        for i in [0, 1, 2] {
            std::fs::write(path(dir.path(), &s, i), b"").unwrap();
        }
        assert_eq!(latest_segment(dir.path(), &s).map(|x| x.0), Some(2));
    }
}
