//! One session's cost state: the mode in force, the operator's escalation
//! ceiling, and the mirror of its current transcript segment. The worker
//! calls [`SessionCost::before_append`] and [`SessionCost::on_append`] for
//! every event the session's transcript receives and carries out the
//! returned [`Action`]s; this type does no I/O.
//!
//! The protocol, per append of event `E` at `seq`:
//!
//! 1. `before_append(&mut E)`: tool-result compaction, when the mode says so.
//! 2. The worker numbers, writes and publishes `E`.
//! 3. `on_append(seq, &E, line)` returns actions, in order:
//!    - `Emit(summary)` after a compaction (the old turns are already gone
//!      from the mirror). When the worker has recorded that summary, its own
//!      `on_append` returns `Rewrite(bytes)`: the segment's new contents.
//!    - `Rewrite(old)`, `SwitchTo { index }`, `Emit(segment link)`,
//!      `Emit(summary)` for a rollover; the last append again returns the
//!      new segment's `Rewrite` (which carries over an open tool call).
//!    - `Emit(escalation)` before any of the above when the mode went one
//!      step looser.
//!    - `StopBudget(figures)` once, when a usage event crosses the ceiling.
//!
//! The mode in force is read at every append, so a fleet mode change
//! ([`SessionCost::fleet_mode_changed`]) applies to the very next append.

use broker::cost_mode::CostMode;
use broker::messages::session::Event;
use broker::messages::Usage;
use broker::SessionId;

use crate::budget::{self, BudgetExceeded};
use crate::compact;
use crate::enforce::{decide, over, Decision, Over, SessionState};
use crate::ledger::{Entry, Ledger};
use crate::segment;
use crate::tool_result::{self, CompactedResult};

/// Where a session's base mode comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSource {
    /// The task's own `--cost-mode`: fixed for the session.
    Task(CostMode),
    /// The fleet's mode (KV `colibri-config/cost-mode`), followed live.
    Fleet(CostMode),
}

/// What the worker must do after an append.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record and publish this event like any other (its append comes back
    /// through [`SessionCost::on_append`]).
    Emit(Event),
    /// Replace the current segment file's contents with these bytes.
    Rewrite(Vec<u8>),
    /// Continue in segment `index` (see [`segment::path`]), created empty.
    SwitchTo { index: u32 },
    /// The spend ceiling is crossed: stop the task, `budget_exceeded`.
    StopBudget(BudgetExceeded),
}

/// Counters for logs and the session's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CostStats {
    pub compactions: u32,
    pub rollovers: u32,
    pub escalations: u32,
    pub tool_results_compacted: u32,
}

/// One session's cost state.
#[derive(Debug, Clone)]
pub struct SessionCost {
    session: SessionId,
    source: ModeSource,
    /// The mode escalation reached, if any (the mode in force is the looser
    /// of this and the base).
    escalated: Option<CostMode>,
    ceiling: CostMode,
    ledger: Ledger,
    segment: u32,
    /// Summary and segment events emitted and not yet appended.
    awaiting: u32,
    budget_stopped: bool,
    /// What the task's earlier attempts used, counted against the ceiling.
    spent_before: Usage,
    stats: CostStats,
}

impl SessionCost {
    /// A new session starting in segment 0.
    pub fn new(session: SessionId, source: ModeSource, ceiling: CostMode) -> Self {
        Self::resume(session, source, ceiling, 0, Ledger::new())
    }

    /// A session whose transcript segment `segment` already holds `ledger`.
    pub fn resume(
        session: SessionId,
        source: ModeSource,
        ceiling: CostMode,
        segment: u32,
        ledger: Ledger,
    ) -> Self {
        SessionCost {
            session,
            source,
            escalated: None,
            ceiling,
            ledger,
            segment,
            awaiting: 0,
            budget_stopped: false,
            spent_before: Usage::default(),
            stats: CostStats::default(),
        }
    }

    /// Counts `spent` (the task's earlier attempts) against the spend
    /// ceiling, before this session's own usage.
    pub fn with_spent_before(mut self, spent: Usage) -> Self {
        self.spent_before = spent;
        self
    }

    /// The base mode (the task's, or the fleet's now).
    pub fn base(&self) -> CostMode {
        match self.source {
            ModeSource::Task(m) | ModeSource::Fleet(m) => m,
        }
    }

    /// The mode in force: the base, or the escalated mode if looser.
    pub fn mode(&self) -> CostMode {
        let base = self.base();
        self.escalated.map_or(base, |e| e.max(base))
    }

    pub fn ceiling(&self) -> CostMode {
        self.ceiling
    }

    pub fn segment(&self) -> u32 {
        self.segment
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn stats(&self) -> CostStats {
        self.stats
    }

    /// The fleet's mode changed; a session following it uses `mode` from
    /// its next append. Returns whether this session follows the fleet.
    pub fn fleet_mode_changed(&mut self, mode: CostMode) -> bool {
        match &mut self.source {
            ModeSource::Fleet(m) => {
                *m = mode;
                true
            }
            ModeSource::Task(_) => false,
        }
    }

    /// The operator's escalation ceiling changed.
    pub fn set_ceiling(&mut self, ceiling: CostMode) {
        self.ceiling = ceiling;
    }

    /// Tool-result compaction of `event` before it is written.
    pub fn before_append(&mut self, event: &mut Event) -> Option<CompactedResult> {
        let c = tool_result::apply(event, &self.mode().limits());
        if c.is_some() {
            self.stats.tool_results_compacted += 1;
        }
        c
    }

    /// The segment's state now.
    pub fn state(&self) -> SessionState {
        SessionState {
            bytes: self.ledger.bytes(),
            uncompacted_turns: self.ledger.turn_count(),
        }
    }

    /// `event` (numbered `seq`) was written as `line`: what to do now.
    pub fn on_append(&mut self, seq: u64, event: &Event, line: &[u8]) -> Vec<Action> {
        let entry = Entry::new(seq, event.clone(), line.to_vec());
        if self.awaiting > 0 && matches!(event, Event::Summary(_) | Event::Segment { .. }) {
            self.ledger.push_head(entry);
            self.awaiting -= 1;
            return if self.awaiting == 0 {
                vec![Action::Rewrite(self.ledger.to_bytes())]
            } else {
                Vec::new()
            };
        }
        self.ledger.push(entry);
        let mut actions = Vec::new();
        if let Event::Usage { total, .. } = event {
            if !self.budget_stopped {
                let task_total = self.spent_before.plus(total);
                if let Some(b) = budget::check(&task_total, self.mode()) {
                    self.budget_stopped = true;
                    actions.push(Action::StopBudget(b));
                }
            }
        }
        if self.awaiting == 0 && !matches!(event, Event::Escalation { .. }) {
            self.enforce(&mut actions);
        }
        actions
    }

    fn enforce(&mut self, actions: &mut Vec<Action>) {
        let mode = self.mode();
        let state = self.state();
        if over(state, &mode.limits()).is_none() {
            return;
        }
        let best = compact::best(&self.ledger, mode);
        match decide(state, best, mode, self.ceiling) {
            Decision::Nothing => {}
            Decision::Compact(why) => self.compact(why, mode, actions),
            Decision::RollOver(why) => self.roll_over(why, mode, actions),
            Decision::Escalate { to, over: why } => {
                self.escalated = Some(to);
                self.stats.escalations += 1;
                actions.push(Action::Emit(Event::Escalation {
                    from: mode,
                    to,
                    ceiling: self.ceiling,
                    reason: format!("{why}; compaction cannot bring it under {mode}'s limits"),
                }));
                // One step per append: decide again under `to`, with `to`
                // as the ceiling.
                let best = compact::best(&self.ledger, to);
                match decide(state, best, to, to) {
                    Decision::Nothing => {}
                    Decision::Compact(why) => self.compact(why, to, actions),
                    Decision::RollOver(why) | Decision::Escalate { over: why, .. } => {
                        self.roll_over(why, to, actions)
                    }
                }
            }
        }
    }

    fn compact(&mut self, why: Over, mode: CostMode, actions: &mut Vec<Action>) {
        let Some(plan) = compact::plan(&self.ledger, mode) else {
            return self.roll_over(why, mode, actions);
        };
        let summary = compact::apply(&mut self.ledger, &plan, mode, &why.to_string());
        self.stats.compactions += 1;
        self.awaiting += 1;
        actions.push(Action::Emit(Event::Summary(Box::new(summary))));
    }

    fn roll_over(&mut self, why: Over, mode: CostMode, actions: &mut Vec<Action>) {
        let tail = self.ledger.split_open_tail();
        if self.ledger.turns.is_empty() && self.ledger.head_is_only_carried() {
            // Everything would move: a new segment would be no smaller.
            self.ledger.push_turn(tail);
            return;
        }
        // Regression (a 200,000-line flood of a plain-text agent grew the
        // worker by 284 MiB): output before any turn sits in the head, and
        // refusing to roll a turn-less segment over let it grow for ever.
        let reason = why.to_string();
        let summary = compact::summarise_all(&self.ledger, mode, &reason);
        if !tail.is_empty() {
            actions.push(Action::Rewrite(self.ledger.to_bytes()));
        }
        let mut next = self.ledger.next_segment();
        next.push_turn(tail);
        self.ledger = next;
        self.segment += 1;
        self.stats.rollovers += 1;
        self.awaiting += 2;
        actions.push(Action::SwitchTo {
            index: self.segment,
        });
        actions.push(Action::Emit(segment::link(
            &self.session,
            self.segment,
            reason,
        )));
        actions.push(Action::Emit(Event::Summary(Box::new(summary))));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ledger::tests::msg;
    use broker::messages::Usage;

    /// Drives a [`SessionCost`] like the worker: numbers events, encodes
    /// each as `<seq> <kind> <padding>\n`, carries out the actions on an
    /// in-memory list of segment files.
    pub(crate) struct Driver {
        pub cost: SessionCost,
        pub seq: u64,
        pub files: Vec<Vec<u8>>,
        pub published: Vec<Event>,
        pub stopped: Option<BudgetExceeded>,
        pub pad: usize,
    }

    impl Driver {
        pub fn new(source: ModeSource, ceiling: CostMode, pad: usize) -> Self {
            Driver {
                cost: SessionCost::new(SessionId::new(), source, ceiling),
                seq: 0,
                files: vec![Vec::new()],
                published: Vec::new(),
                stopped: None,
                pad,
            }
        }

        /// Appends one event; returns whether a summary was emitted.
        pub fn append(&mut self, mut event: Event) -> bool {
            let mut queue = std::collections::VecDeque::new();
            self.cost.before_append(&mut event);
            queue.push_back(event);
            let mut summarised = false;
            while let Some(e) = queue.pop_front() {
                self.seq += 1;
                let line = self.encode(&e);
                self.files.last_mut().unwrap().extend_from_slice(&line);
                summarised |= matches!(e, Event::Summary(_));
                let actions = self.cost.on_append(self.seq, &e, &line);
                self.published.push(e);
                for a in actions {
                    match a {
                        Action::Emit(e) => queue.push_back(e),
                        Action::Rewrite(b) => *self.files.last_mut().unwrap() = b,
                        Action::SwitchTo { index } => {
                            assert_eq!(index as usize, self.files.len());
                            self.files.push(Vec::new());
                        }
                        Action::StopBudget(b) => self.stopped = Some(b),
                    }
                }
            }
            summarised
        }

        fn encode(&self, e: &Event) -> Vec<u8> {
            let env = broker::messages::session::SessionEvent {
                v: 1,
                session: SessionId::new(),
                seq: self.seq,
                task_id: broker::TaskId::new(),
                attempt: 1,
                worker: broker::WorkerId::parse("w").unwrap(),
                at_ms: 0,
                event: e.clone(),
            };
            let mut line = serde_json::to_vec(&env).unwrap();
            // `,"pad":"` + padding + `"}\n` replaces the final `}`.
            let pad = self.pad.saturating_sub(line.len() + 10);
            line.truncate(line.len() - 1);
            line.extend_from_slice(format!(",\"pad\":\"{}\"}}\n", "p".repeat(pad)).as_bytes());
            line
        }

        /// One pi-shaped turn: message, usage, tool start, tool end.
        pub fn turn(&mut self, i: u64) -> bool {
            let mut s = self.append(msg(&format!("turn {i}")));
            s |= self.append(Event::Usage {
                response: Usage::default(),
                total: Usage::default(),
            });
            let id = format!("c{i}");
            s |= self.append(Event::ToolStart {
                id: id.clone(),
                name: "read".into(),
                args: format!(r#"{{"path":"f{i}"}}"#),
                args_len: 10,
            });
            s |= self.append(Event::ToolEnd {
                id,
                name: "read".into(),
                result: "ok".into(),
                result_len: 2,
                is_error: false,
            });
            s
        }
    }

    #[test]
    fn each_mode_compacts_at_exactly_the_right_append() {
        for mode in CostMode::ALL {
            let limit = mode.limits().uncompacted_turns as u64;
            let mut d = Driver::new(ModeSource::Fleet(mode), mode, 0);
            for i in 0..limit {
                assert!(!d.turn(i), "{mode}: no compaction within {limit} turns");
            }
            let appended = d.seq;
            // The first event of turn limit+1 is the append that compacts.
            assert!(d.append(msg("one too many")), "{mode}");
            assert_eq!(d.seq, appended + 2, "{mode}: the append, then its summary");
            assert_eq!(d.cost.state().uncompacted_turns, mode.limits().kept_turns);
            // The file is exactly the mirror: head, summary, kept turns.
            let file = Ledger::from_bytes(&d.files[0]);
            assert_eq!(file.turn_count(), mode.limits().kept_turns);
            let s = file.summary().expect("summary in the file");
            assert_eq!(s.turns, limit + 1 - u64::from(mode.limits().kept_turns));
            assert_eq!(d.cost.stats().compactions, 1);
        }
    }

    #[test]
    fn the_byte_limit_compacts_at_exactly_the_right_append() {
        // Lines of 10,000 bytes: two turns of 27 and 23 lines make exactly
        // fast's 500,000 bytes; the 51st line is the append that compacts.
        let mut d = Driver::new(ModeSource::Fleet(CostMode::Fast), CostMode::Fast, 10_000);
        d.append(msg("first"));
        for _ in 0..24 {
            d.append(Event::Dropped { count: 1 });
        }
        d.append(Event::ToolStart {
            id: "x".into(),
            name: "bash".into(),
            args: "{}".into(),
            args_len: 2,
        });
        d.append(Event::ToolEnd {
            id: "x".into(),
            name: "bash".into(),
            result: String::new(),
            result_len: 0,
            is_error: false,
        });
        d.append(msg("second"));
        for _ in 0..22 {
            assert!(!d.append(Event::Dropped { count: 1 }));
        }
        assert_eq!(d.cost.state().bytes, 500_000);
        assert!(
            d.append(Event::Dropped { count: 1 }),
            "500,010 bytes compacts"
        );
        assert!(d.cost.state().bytes <= 500_000);
        assert_eq!(d.cost.state().uncompacted_turns, 1);
    }

    #[test]
    fn a_mode_change_applies_to_the_next_append() {
        let mut d = Driver::new(ModeSource::Fleet(CostMode::Max), CostMode::Max, 0);
        for i in 0..30 {
            assert!(!d.turn(i));
        }
        assert!(d.cost.fleet_mode_changed(CostMode::Fast));
        assert!(
            d.append(Event::Dropped { count: 1 }),
            "next append compacts"
        );
        assert_eq!(d.cost.state().uncompacted_turns, 2);
        // A task with its own mode does not follow the fleet.
        let mut t = Driver::new(ModeSource::Task(CostMode::Max), CostMode::Max, 0);
        for i in 0..30 {
            t.turn(i);
        }
        assert!(!t.cost.fleet_mode_changed(CostMode::Fast));
        assert!(!t.append(Event::Dropped { count: 1 }));
    }

    /// A turn too big for fast on its own: escalates to smart (the ceiling),
    /// then, still too big for smart, rolls over instead of going to max.
    #[test]
    fn escalation_stops_at_the_ceiling() {
        let mut d = Driver::new(ModeSource::Fleet(CostMode::Fast), CostMode::Smart, 100_000);
        d.append(msg("big"));
        for _ in 0..6 {
            d.append(Event::Dropped { count: 1 });
        }
        assert_eq!(d.cost.mode(), CostMode::Smart);
        assert_eq!(d.cost.stats().escalations, 1);
        for _ in 0..20 {
            d.append(Event::Dropped { count: 1 });
        }
        assert_eq!(d.cost.mode(), CostMode::Smart, "never past the ceiling");
        assert_eq!(d.cost.stats().escalations, 1);
        assert!(d.cost.stats().rollovers >= 1);
        let escalations: Vec<_> = d
            .published
            .iter()
            .filter_map(|e| match e {
                Event::Escalation { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect();
        assert_eq!(escalations, [(CostMode::Fast, CostMode::Smart)]);
        // Every later segment opens with its link, then a summary.
        for f in &d.files[1..] {
            let l = Ledger::from_bytes(f);
            assert!(matches!(l.head[0].event, Event::Segment { .. }));
            assert!(matches!(l.head[1].event, Event::Summary(_)));
        }
        // No segment but the last is over smart's limit by more than a line.
        for f in &d.files[1..] {
            assert!(f.len() as u64 <= CostMode::Smart.limits().session_bytes + 100_000);
        }
    }

    #[test]
    fn r_flood_output_before_any_turn_rolls_over_and_stays_bounded() {
        // Regression: a plain-text agent's flood never starts a turn; its
        // segment must still roll over instead of growing without bound.
        let mut d = Driver::new(ModeSource::Fleet(CostMode::Fast), CostMode::Fast, 10_000);
        for _ in 0..500 {
            d.append(Event::Raw {
                stream: broker::messages::session::Stream::Stdout,
                text: "x".into(),
                len: 1,
            });
        }
        assert!(d.cost.stats().rollovers >= 5, "{:?}", d.cost.stats());
        assert!(d.cost.state().bytes <= 600_000, "{:?}", d.cost.state());
    }

    #[test]
    fn a_rollover_keeps_an_open_tool_call_with_its_result() {
        let mut d = Driver::new(ModeSource::Fleet(CostMode::Fast), CostMode::Fast, 60_000);
        d.append(msg("a"));
        for _ in 0..4 {
            d.append(Event::Dropped { count: 1 });
        }
        d.append(Event::ToolStart {
            id: "open".into(),
            name: "bash".into(),
            args: "{}".into(),
            args_len: 2,
        });
        for _ in 0..6 {
            d.append(Event::Dropped { count: 1 });
        }
        assert_eq!(d.cost.stats().rollovers, 1);
        d.append(Event::ToolEnd {
            id: "open".into(),
            name: "bash".into(),
            result: String::new(),
            result_len: 0,
            is_error: false,
        });
        let kinds = |f: &[u8]| {
            Ledger::from_bytes(f)
                .entries()
                .map(|e| e.event.kind())
                .collect::<Vec<_>>()
        };
        let old = kinds(&d.files[0]);
        let new = kinds(&d.files[1]);
        assert!(!old.contains(&"tool_start"), "{old:?}");
        assert_eq!(new[..3], ["segment", "summary", "tool_start"]);
        assert!(new.contains(&"tool_end"));
    }

    #[test]
    fn budget_stop_is_reported_once_with_the_figures() {
        let mut d = Driver::new(ModeSource::Task(CostMode::Fast), CostMode::Max, 0);
        let total = |t| Usage {
            input_tokens: t,
            ..Default::default()
        };
        d.append(Event::Usage {
            response: Usage::default(),
            total: total(200_000),
        });
        assert_eq!(d.stopped, None);
        d.append(Event::Usage {
            response: Usage::default(),
            total: total(200_001),
        });
        let b = d.stopped.take().expect("stopped");
        assert_eq!((b.tokens, b.max_tokens), (200_001, 200_000));
        d.append(Event::Usage {
            response: Usage::default(),
            total: total(300_000),
        });
        assert_eq!(d.stopped, None, "once");
    }

    /// The ceiling is the task's: a retry starts from what earlier attempts
    /// used.
    #[test]
    fn earlier_attempts_count_against_the_ceiling() {
        let mut d = Driver::new(ModeSource::Task(CostMode::Fast), CostMode::Max, 0);
        d.cost = d.cost.clone().with_spent_before(Usage {
            input_tokens: 150_000,
            cost_usd: Some(0.25),
            ..Default::default()
        });
        let total = |t| Usage {
            input_tokens: t,
            ..Default::default()
        };
        d.append(Event::Usage {
            response: Usage::default(),
            total: total(50_000),
        });
        assert_eq!(d.stopped, None, "200,000 in all is within fast's ceiling");
        d.append(Event::Usage {
            response: Usage::default(),
            total: total(50_001),
        });
        let b = d.stopped.take().expect("stopped");
        assert_eq!((b.tokens, b.max_tokens), (200_001, 200_000));
        assert_eq!(b.cost_usd, Some(0.25));
    }
}
