//! The in-memory mirror of one transcript segment: its entries (event and
//! encoded line), split into a head (what precedes the first turn: the
//! segment link, the summary, the agent's session header) and turns.
//!
//! The ledger is exactly what the segment file should hold; after a
//! compaction the worker rewrites the file from [`Ledger::to_bytes`]. Its
//! byte count is the sum of the lines, which is what the mode's
//! `session_bytes` limits.

use broker::messages::session::{Event, SessionEvent};

use crate::turns::TurnTracker;

/// One transcript line: the event, its `seq`, and the line as written
/// (JSON and the final LF).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub event: Event,
    pub line: Vec<u8>,
}

impl Entry {
    pub fn new(seq: u64, event: Event, line: Vec<u8>) -> Self {
        Entry { seq, event, line }
    }

    /// An entry from a transcript line (the line keeps its bytes; a missing
    /// LF is added). `None` when the line is not a session event.
    pub fn parse(line: &[u8]) -> Option<Entry> {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let ev: SessionEvent = serde_json::from_slice(body).ok()?;
        let mut line = body.to_vec();
        line.push(b'\n');
        Some(Entry::new(ev.seq, ev.event, line))
    }

    pub fn bytes(&self) -> u64 {
        self.line.len() as u64
    }
}

/// One turn's entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Turn {
    pub entries: Vec<Entry>,
    pub bytes: u64,
}

impl Turn {
    fn push(&mut self, e: Entry) {
        self.bytes += e.bytes();
        self.entries.push(e);
    }
}

/// A transcript segment as head and turns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    pub head: Vec<Entry>,
    pub turns: Vec<Turn>,
    tracker: TurnTracker,
    head_bytes: u64,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger of a transcript's bytes (unparseable lines are skipped).
    pub fn from_bytes(data: &[u8]) -> Self {
        let mut l = Ledger::new();
        for line in data.split_inclusive(|b| *b == b'\n') {
            if let Some(e) = Entry::parse(line) {
                l.push(e);
            }
        }
        l
    }

    /// Appends an entry, starting a turn where [`TurnTracker`] says so.
    pub fn push(&mut self, e: Entry) {
        if self.tracker.observe(&e.event) {
            self.turns.push(Turn::default());
        }
        match self.turns.last_mut() {
            Some(t) => t.push(e),
            None => self.push_head(e),
        }
    }

    /// Appends an entry to the head, whatever the turns.
    pub fn push_head(&mut self, e: Entry) {
        self.head_bytes += e.bytes();
        self.head.push(e);
    }

    /// Removes and returns the head's summary entry, if any.
    pub fn take_summary(&mut self) -> Option<Entry> {
        let i = self
            .head
            .iter()
            .rposition(|e| matches!(e.event, Event::Summary(_)))?;
        let e = self.head.remove(i);
        self.head_bytes -= e.bytes();
        Some(e)
    }

    /// The head's summary, if any.
    pub fn summary(&self) -> Option<&broker::messages::session::Summary> {
        self.head.iter().rev().find_map(|e| match &e.event {
            Event::Summary(s) => Some(&**s),
            _ => None,
        })
    }

    /// Removes the `n` oldest turns.
    pub fn drain_turns(&mut self, n: usize) -> Vec<Turn> {
        self.turns.drain(..n.min(self.turns.len())).collect()
    }

    pub fn head_bytes(&self) -> u64 {
        self.head_bytes
    }

    pub fn bytes(&self) -> u64 {
        self.head_bytes + self.turns.iter().map(|t| t.bytes).sum::<u64>()
    }

    /// Turns not yet compacted.
    pub fn turn_count(&self) -> u32 {
        u32::try_from(self.turns.len()).unwrap_or(u32::MAX)
    }

    /// Whether a tool call is open in the current turn.
    pub fn tool_open(&self) -> bool {
        self.tracker.tool_open()
    }

    /// All entries in file order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.head
            .iter()
            .chain(self.turns.iter().flat_map(|t| t.entries.iter()))
    }

    /// The segment file's contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::try_from(self.bytes()).unwrap_or(0));
        for e in self.entries() {
            out.extend_from_slice(&e.line);
        }
        out
    }

    /// Whether the head holds nothing but the segment's link and summary:
    /// then a segment with no turns cannot be made smaller by a rollover.
    pub fn head_is_only_carried(&self) -> bool {
        self.head
            .iter()
            .all(|e| matches!(e.event, Event::Summary(_) | Event::Segment { .. }))
    }

    /// Splits off the tail of the current turn from its oldest open tool
    /// call on (empty when no tool call is open), for a rollover: that part
    /// moves to the new segment so a call stays with its result.
    pub fn split_open_tail(&mut self) -> Vec<Entry> {
        if !self.tracker.tool_open() {
            return Vec::new();
        }
        let Some(turn) = self.turns.last_mut() else {
            return Vec::new();
        };
        let mut open = std::collections::BTreeSet::new();
        let mut cut = turn.entries.len();
        for (i, e) in turn.entries.iter().enumerate() {
            match &e.event {
                Event::ToolStart { id, .. } => {
                    if open.is_empty() {
                        cut = i;
                    }
                    open.insert(id.clone());
                }
                Event::ToolEnd { id, .. } => {
                    open.remove(id);
                    if open.is_empty() {
                        cut = turn.entries.len();
                    }
                }
                _ => {}
            }
        }
        let tail: Vec<Entry> = turn.entries.split_off(cut);
        turn.bytes -= tail.iter().map(Entry::bytes).sum::<u64>();
        if turn.entries.is_empty() {
            self.turns.pop();
        }
        tail
    }

    /// Adds `entries` as one turn, as they are (used for the part of a turn
    /// that moves to a new segment; the turn state already knows them).
    pub fn push_turn(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let bytes = entries.iter().map(Entry::bytes).sum();
        self.turns.push(Turn { entries, bytes });
    }

    /// Starts an empty segment that keeps following the same turn state
    /// (an open tool call stays open across the rollover).
    pub fn next_segment(&self) -> Ledger {
        Ledger {
            tracker: self.tracker.clone(),
            ..Ledger::default()
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use broker::messages::session::Role;

    /// An entry whose line is `len` bytes.
    pub(crate) fn entry(seq: u64, event: Event, len: usize) -> Entry {
        Entry::new(seq, event, vec![b'x'; len])
    }

    pub(crate) fn msg(text: &str) -> Event {
        Event::Message {
            role: Role::Assistant,
            text: text.into(),
            len: text.len(),
        }
    }

    #[test]
    fn bytes_and_turns_are_counted() {
        let mut l = Ledger::new();
        l.push(entry(1, Event::Dropped { count: 1 }, 10));
        l.push(entry(2, msg("a"), 20));
        l.push(entry(3, msg("b"), 30));
        assert_eq!((l.bytes(), l.turn_count(), l.head.len()), (60, 1, 1));
        l.push(entry(
            4,
            Event::ToolStart {
                id: "1".into(),
                name: "read".into(),
                args: "{}".into(),
                args_len: 2,
            },
            5,
        ));
        l.push(entry(5, msg("c"), 5));
        assert_eq!(l.turn_count(), 1, "a message inside an open tool call");
        let tail = l.split_open_tail();
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(l.bytes(), 60);
    }
}
