//! The per-append check: given a segment's state (bytes, uncompacted turns)
//! and the mode in force, decide nothing, compact, roll over, or escalate.
//!
//! Limits are inclusive: a `fast` segment may hold 5 uncompacted turns and
//! 500,000 bytes; the append that makes it 6 turns (the first event of the
//! 6th turn) or more than 500,000 bytes triggers a compaction. When even the
//! best compaction (all turns but the current one summarised) would leave it
//! over its limits, the session escalates one step (`fast` → `smart` →
//! `max`) if the operator's ceiling allows, and otherwise rolls over to a new
//! segment. Escalation is at most one step per append.

use std::fmt;

use broker::cost_mode::{CostMode, ModeLimits};

/// A segment's size as the limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionState {
    /// Bytes of the current transcript segment.
    pub bytes: u64,
    /// Turns not yet compacted into the summary.
    pub uncompacted_turns: u32,
}

/// Which limit a segment is over, with the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Turns { turns: u32, limit: u32 },
    Bytes { bytes: u64, limit: u64 },
}

impl fmt::Display for Over {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Over::Turns { turns, limit } => write!(f, "{turns} uncompacted turns > {limit}"),
            Over::Bytes { bytes, limit } => write!(f, "{bytes} bytes > {limit}"),
        }
    }
}

/// What an append calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the mode's limits.
    Nothing,
    /// Over a limit; compaction brings it back under.
    Compact(Over),
    /// Compaction cannot, and the ceiling forbids escalation: continue in a
    /// new segment.
    RollOver(Over),
    /// Compaction cannot; go one step looser (then decide again under `to`).
    Escalate { to: CostMode, over: Over },
}

/// Whether `state` is over `limits` (turns first, then bytes).
pub fn over(state: SessionState, limits: &ModeLimits) -> Option<Over> {
    if state.uncompacted_turns > limits.uncompacted_turns {
        return Some(Over::Turns {
            turns: state.uncompacted_turns,
            limit: limits.uncompacted_turns,
        });
    }
    if state.bytes > limits.session_bytes {
        return Some(Over::Bytes {
            bytes: state.bytes,
            limit: limits.session_bytes,
        });
    }
    None
}

/// The decision for an append that left the segment at `state`.
///
/// `best` is the state the most thorough compaction would reach (`None`
/// when nothing can be compacted: one turn or none). `ceiling` is the
/// loosest mode escalation may reach.
pub fn decide(
    state: SessionState,
    best: Option<SessionState>,
    mode: CostMode,
    ceiling: CostMode,
) -> Decision {
    let limits = mode.limits();
    let Some(why) = over(state, &limits) else {
        return Decision::Nothing;
    };
    if best.is_some_and(|b| over(b, &limits).is_none()) {
        return Decision::Compact(why);
    }
    match mode.escalate() {
        Some(to) if to <= ceiling => Decision::Escalate { to, over: why },
        _ => Decision::RollOver(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn st(bytes: u64, turns: u32) -> SessionState {
        SessionState {
            bytes,
            uncompacted_turns: turns,
        }
    }

    #[test]
    fn limits_are_inclusive() {
        for mode in CostMode::ALL {
            let l = mode.limits();
            let best = Some(st(0, 1));
            let at = st(l.session_bytes, l.uncompacted_turns);
            assert_eq!(decide(at, best, mode, CostMode::Max), Decision::Nothing);
            let turn_over = st(l.session_bytes, l.uncompacted_turns + 1);
            assert!(matches!(
                decide(turn_over, best, mode, CostMode::Max),
                Decision::Compact(Over::Turns { .. })
            ));
            let byte_over = st(l.session_bytes + 1, 1);
            assert!(matches!(
                decide(byte_over, best, mode, CostMode::Max),
                Decision::Compact(Over::Bytes { .. })
            ));
        }
    }

    #[test]
    fn the_floor_is_at_least_as_strict_as_the_old_system() {
        let fast = CostMode::Fast.limits();
        assert!(fast.session_bytes <= 500_000 && fast.uncompacted_turns <= 5);
        let smart = CostMode::Smart.limits();
        assert!(smart.session_bytes <= 2_000_000 && smart.uncompacted_turns <= 20);
        for m in CostMode::ALL {
            let l = m.limits();
            assert!(l.kept_turns >= 1 && l.kept_turns < l.uncompacted_turns);
        }
    }

    #[test]
    fn escalation_stops_at_the_ceiling() {
        let huge = st(10_000_000, 1);
        assert_eq!(
            decide(huge, None, CostMode::Fast, CostMode::Smart),
            Decision::Escalate {
                to: CostMode::Smart,
                over: Over::Bytes {
                    bytes: 10_000_000,
                    limit: 500_000
                }
            }
        );
        assert!(matches!(
            decide(huge, None, CostMode::Smart, CostMode::Smart),
            Decision::RollOver(_)
        ));
        assert!(matches!(
            decide(huge, None, CostMode::Fast, CostMode::Fast),
            Decision::RollOver(_)
        ));
        assert!(matches!(
            decide(huge, None, CostMode::Max, CostMode::Max),
            Decision::RollOver(_)
        ));
    }

    proptest! {
        #[test]
        fn acts_exactly_when_over(bytes in 0u64..20_000_000, turns in 0u32..200, m in 0usize..3) {
            let mode = CostMode::ALL[m];
            let l = mode.limits();
            let d = decide(st(bytes, turns), Some(st(0, 1)), mode, CostMode::Max);
            let is_over = bytes > l.session_bytes || turns > l.uncompacted_turns;
            prop_assert_eq!(d != Decision::Nothing, is_over);
        }
    }
}
