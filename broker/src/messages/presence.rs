//! Heartbeats on `colibri.presence.<worker>` (core NATS, every
//! `interval_ms`): a worker's advert and its lease renewal in one message.

use serde::{Deserialize, Serialize};

use crate::ids::{TaskId, WorkerId};
use crate::tag::{TagError, TagSet};

/// Default heartbeat interval.
pub const HEARTBEAT_INTERVAL_MS: u64 = 2_000;
/// A worker silent this long is offline (documented bound: 10 s, well under 15 s).
pub const OFFLINE_AFTER_MS: u64 = 10_000;
/// An offline worker is forgotten this long after it went offline (10 min):
/// it leaves `status`, and heard from again it joins as new.
pub const FORGET_AFTER_MS: u64 = 600_000;
/// Most workers the scheduler knows at once (online or offline, not yet
/// forgotten). When full, the longest-offline one is forgotten for a new
/// one; with all online, a new worker's heartbeat is refused.
pub const MAX_WORKERS: usize = 10_000;
/// Most running attempts one heartbeat may list.
pub const MAX_RUNNING: usize = 1_024;
/// Longest `host` and `version`, in bytes.
pub const MAX_ADVERT_TEXT: usize = 256;

/// A rule a heartbeat broke, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeartbeatError {
    #[error(transparent)]
    Tag(#[from] TagError),
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default = "super::wire_version")]
    pub v: u32,
    pub worker: WorkerId,
    pub host: String,
    /// Random per worker process; a new value means the worker restarted and
    /// every attempt it was running is lost.
    pub incarnation: uuid::Uuid,
    pub version: String,
    pub tags: TagSet,
    /// Agent profiles this worker enables (`command` only with --allow-command).
    pub agents: TagSet,
    pub slots: u32,
    /// Attempts running now: each one's lease is renewed by this heartbeat.
    #[serde(default)]
    pub running: Vec<AttemptRef>,
    pub interval_ms: u64,
    /// Sent once on clean shutdown: the worker takes no more work.
    #[serde(default)]
    pub leaving: bool,
    /// The fleet cost mode this worker applies now (from the config bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_mode: Option<crate::cost_mode::CostMode>,
    pub at_ms: i64,
}

impl Heartbeat {
    /// Checks the advert's bounds: at most [`crate::tag::MAX_TAGS`] tags
    /// and agents, [`MAX_RUNNING`] running attempts, short texts. Keeps a
    /// heartbeat's cost for the scheduler O(tags).
    pub fn validate(&self) -> Result<(), HeartbeatError> {
        self.tags.check_bound("tags")?;
        self.agents.check_bound("agents")?;
        let invalid = |field, rule: String| Err(HeartbeatError::Invalid { field, rule });
        if self.running.len() > MAX_RUNNING {
            return invalid("running", format!("at most {MAX_RUNNING} attempts"));
        }
        if self.host.len() > MAX_ADVERT_TEXT {
            return invalid("host", format!("at most {MAX_ADVERT_TEXT} bytes"));
        }
        if self.version.len() > MAX_ADVERT_TEXT {
            return invalid("version", format!("at most {MAX_ADVERT_TEXT} bytes"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    pub task_id: TaskId,
    pub attempt: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::{Tag, MAX_TAGS};

    fn beat() -> Heartbeat {
        Heartbeat {
            v: 1,
            worker: WorkerId::parse("w").unwrap(),
            host: "h".into(),
            incarnation: uuid::Uuid::new_v4(),
            version: "0".into(),
            tags: TagSet::new(),
            agents: TagSet::new(),
            slots: 1,
            running: vec![],
            interval_ms: 2000,
            leaving: false,
            cost_mode: None,
            at_ms: 0,
        }
    }

    // Regression: adverts of any size were accepted; 10,000 tags per
    // advert made every heartbeat and placement pass crawl.
    #[test]
    fn adverts_are_bounded() {
        let many: TagSet = (0..=MAX_TAGS)
            .map(|i| Tag::parse(&format!("t{i}")).unwrap())
            .collect();
        beat().validate().unwrap();
        let mut b = beat();
        b.tags = many.clone();
        assert!(matches!(
            b.validate(),
            Err(HeartbeatError::Tag(TagError::TooMany { field: "tags", .. }))
        ));
        let mut b = beat();
        b.agents = many;
        assert!(matches!(
            b.validate(),
            Err(HeartbeatError::Tag(TagError::TooMany {
                field: "agents",
                ..
            }))
        ));
        let mut b = beat();
        b.host = "h".repeat(MAX_ADVERT_TEXT + 1);
        assert!(matches!(
            b.validate(),
            Err(HeartbeatError::Invalid { field: "host", .. })
        ));
    }
}
