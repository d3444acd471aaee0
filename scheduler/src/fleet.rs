//! The fleet as the scheduler sees it: workers known from their heartbeats,
//! when each was last heard from, and which are online.
//!
//! A worker is offline once silent for [`OFFLINE_AFTER_MS`] (10 s; the
//! heartbeat interval is 2 s), or at once when it says it is leaving.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use broker::messages::presence::OFFLINE_AFTER_MS;
use broker::messages::Heartbeat;
use broker::WorkerId;

/// One worker's entry.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    pub beat: Heartbeat,
    pub last_seen: Instant,
    pub last_seen_ms: i64,
    pub online: bool,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// First heartbeat from this worker.
    Joined,
    /// Offline worker heard from again (same process: a link came back).
    Returned,
    /// A new process under a known worker id: what the old one ran is lost.
    Restarted {
        old: uuid::Uuid,
    },
    /// Tags, agents or slots changed.
    AdvertChanged,
    /// The worker is shutting down cleanly.
    Leaving,
    Unchanged,
}

#[derive(Debug)]
pub struct Fleet {
    workers: BTreeMap<WorkerId, WorkerEntry>,
    offline_after: Duration,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new(Duration::from_millis(OFFLINE_AFTER_MS))
    }
}

impl Fleet {
    pub fn new(offline_after: Duration) -> Fleet {
        Fleet {
            workers: BTreeMap::new(),
            offline_after,
        }
    }

    /// Records a heartbeat and says what it changed.
    pub fn observe(&mut self, beat: Heartbeat, now: Instant) -> PresenceChange {
        let at_ms = broker::time_ms::now_ms();
        let leaving = beat.leaving;
        let change = match self.workers.get(&beat.worker) {
            None => PresenceChange::Joined,
            Some(old) if old.beat.incarnation != beat.incarnation => PresenceChange::Restarted {
                old: old.beat.incarnation,
            },
            Some(old) if !old.online => PresenceChange::Returned,
            Some(old)
                if old.beat.tags != beat.tags
                    || old.beat.agents != beat.agents
                    || old.beat.slots != beat.slots =>
            {
                PresenceChange::AdvertChanged
            }
            Some(_) => PresenceChange::Unchanged,
        };
        let id = beat.worker.clone();
        self.workers.insert(
            id,
            WorkerEntry {
                beat,
                last_seen: now,
                last_seen_ms: at_ms,
                online: !leaving,
            },
        );
        if leaving {
            PresenceChange::Leaving
        } else {
            change
        }
    }

    /// Marks silent workers offline and returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<WorkerId> {
        let mut gone = Vec::new();
        for (id, entry) in self.workers.iter_mut() {
            if entry.online && now.duration_since(entry.last_seen) > self.offline_after {
                entry.online = false;
                gone.push(id.clone());
            }
        }
        gone
    }

    pub fn get(&self, id: &WorkerId) -> Option<&WorkerEntry> {
        self.workers.get(id)
    }

    pub fn is_online(&self, id: &WorkerId) -> bool {
        self.workers.get(id).is_some_and(|w| w.online)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&WorkerId, &WorkerEntry)> {
        self.workers.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::TagSet;

    fn beat(id: &str, inc: uuid::Uuid, tags: &[&str]) -> Heartbeat {
        Heartbeat {
            v: 1,
            worker: WorkerId::parse(id).unwrap(),
            host: "h".into(),
            incarnation: inc,
            version: "0".into(),
            tags: TagSet::parse_lists(tags).unwrap(),
            agents: TagSet::parse_lists(["command"]).unwrap(),
            slots: 1,
            running: vec![],
            interval_ms: 2000,
            leaving: false,
            cost_mode: None,
            at_ms: 0,
        }
    }

    #[test]
    fn presence_changes() {
        let mut fleet = Fleet::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let inc = uuid::Uuid::new_v4();
        assert_eq!(
            fleet.observe(beat("a", inc, &["linux"]), t0),
            PresenceChange::Joined
        );
        assert_eq!(
            fleet.observe(beat("a", inc, &["linux"]), t0),
            PresenceChange::Unchanged
        );
        assert_eq!(
            fleet.observe(beat("a", inc, &["linux", "gpu"]), t0),
            PresenceChange::AdvertChanged
        );
        assert!(fleet.expire(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(fleet.expire(t0 + Duration::from_secs(11)).len(), 1);
        assert!(!fleet.is_online(&WorkerId::parse("a").unwrap()));
        let later = t0 + Duration::from_secs(12);
        assert_eq!(
            fleet.observe(beat("a", inc, &["linux"]), later),
            PresenceChange::Returned
        );
        let inc2 = uuid::Uuid::new_v4();
        assert_eq!(
            fleet.observe(beat("a", inc2, &["linux"]), later),
            PresenceChange::Restarted { old: inc }
        );
        let mut leaving = beat("a", inc2, &["linux"]);
        leaving.leaving = true;
        assert_eq!(fleet.observe(leaving, later), PresenceChange::Leaving);
        assert!(!fleet.is_online(&WorkerId::parse("a").unwrap()));
    }
}
