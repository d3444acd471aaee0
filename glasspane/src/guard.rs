//! The append guard: a seam through which the worker's cost-mode
//! enforcement sees every event the pump records, and acts on the
//! transcript (compaction rewrites it, rollover switches to a new segment)
//! or adds events of its own (summary, segment link, escalation).
//!
//! Glasspane knows nothing of cost modes: the guard is a trait object the
//! worker hands to [`crate::run_session_with`]; [`NoGuard`] does nothing.
//! Per event the pump calls [`AppendGuard::before_append`] (which may
//! rewrite the event, e.g. compact a tool result), numbers, encodes, writes
//! and publishes it, then calls [`AppendGuard::after_append`] with the line
//! as written and carries out the returned actions in order.

use std::path::PathBuf;

use broker::messages::session::Event;

/// What the guard asks the pump to do after an append.
#[derive(Debug, Clone, PartialEq)]
pub enum GuardAction {
    /// Record and publish this event like any other.
    Emit(Event),
    /// Replace the transcript file's contents with these bytes.
    Rewrite(Vec<u8>),
    /// Continue the transcript in this (new, emptied) file.
    SwitchTo(PathBuf),
}

/// Sees every recorded event of one session; see the module docs.
pub trait AppendGuard: Send {
    /// Called before `event` is numbered and written.
    fn before_append(&mut self, event: &mut Event);
    /// Called after `event` was numbered `seq`, written as `line` (JSON and
    /// LF) and offered to the publisher.
    fn after_append(&mut self, seq: u64, event: &Event, line: &[u8]) -> Vec<GuardAction>;
    /// An outcome the guard imposes on the session, asked once all output
    /// was read (a spend ceiling crossed by the last lines, even though the
    /// agent exited before it could be stopped). None by default.
    fn imposed(&self) -> Option<(broker::messages::Outcome, String)> {
        None
    }
}

/// The guard that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGuard;

impl AppendGuard for NoGuard {
    fn before_append(&mut self, _event: &mut Event) {}
    fn after_append(&mut self, _seq: u64, _event: &Event, _line: &[u8]) -> Vec<GuardAction> {
        Vec::new()
    }
}
