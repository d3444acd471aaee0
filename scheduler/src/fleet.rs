//! The fleet as the scheduler sees it: workers known from their heartbeats,
//! when each was last heard from, and which are online.
//!
//! A worker is offline once silent for [`OFFLINE_AFTER_MS`] (10 s; the
//! heartbeat interval is 2 s), or at once when it says it is leaving.
//!
//! The fleet is bounded: an offline worker is forgotten
//! [`FORGET_AFTER_MS`] after it went offline, and at most [`MAX_WORKERS`]
//! are known at once (a new worker then takes the place of the
//! longest-offline one, or is refused while all are online). A heartbeat
//! costs O(its tags); placement reads the online workers only, through an
//! index, so offline ones cost it nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::messages::presence::{FORGET_AFTER_MS, MAX_WORKERS, OFFLINE_AFTER_MS};
use broker::messages::Heartbeat;
use broker::{TagSet, WorkerId};

use crate::placement::WorkerView;

/// One worker's entry.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    pub beat: Heartbeat,
    pub last_seen: Instant,
    pub last_seen_ms: i64,
    pub online: bool,
    /// The advert's tags and agents, shared with placement's views (a new
    /// allocation only when the advert changes).
    tags: Arc<TagSet>,
    agents: Arc<TagSet>,
    /// When it went offline (the key of its entry in `Fleet::offline`).
    offline_since: Option<Instant>,
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
    /// A new worker while [`MAX_WORKERS`] are known and all online: not
    /// recorded.
    FleetFull,
}

#[derive(Debug)]
pub struct Fleet {
    workers: BTreeMap<WorkerId, WorkerEntry>,
    /// Online workers, by id: what placement iterates.
    online: BTreeSet<WorkerId>,
    /// Offline workers by when they went offline: forgotten oldest first.
    offline: BTreeSet<(Instant, WorkerId)>,
    offline_after: Duration,
    forget_after: Duration,
    max_workers: usize,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new(Duration::from_millis(OFFLINE_AFTER_MS))
    }
}

impl Fleet {
    pub fn new(offline_after: Duration) -> Fleet {
        Fleet::bounded(
            offline_after,
            Duration::from_millis(FORGET_AFTER_MS),
            MAX_WORKERS,
        )
    }

    /// A fleet that forgets offline workers after `forget_after` and knows
    /// at most `max_workers`.
    pub fn bounded(offline_after: Duration, forget_after: Duration, max_workers: usize) -> Fleet {
        Fleet {
            workers: BTreeMap::new(),
            online: BTreeSet::new(),
            offline: BTreeSet::new(),
            offline_after,
            forget_after,
            max_workers,
        }
    }

    /// Records a heartbeat and says what it changed. O(its tags + log n).
    pub fn observe(&mut self, beat: Heartbeat, now: Instant) -> PresenceChange {
        let at_ms = broker::time_ms::now_ms();
        let leaving = beat.leaving;
        if !self.workers.contains_key(&beat.worker) && self.workers.len() >= self.max_workers {
            // Make room by forgetting the longest-offline worker, if any.
            let Some(oldest) = self.offline.pop_first() else {
                return PresenceChange::FleetFull;
            };
            self.workers.remove(&oldest.1);
        }
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
        let old = self.workers.remove(&id);
        let (tags, agents) = match &old {
            Some(o) if *o.tags == beat.tags && *o.agents == beat.agents => {
                (o.tags.clone(), o.agents.clone())
            }
            _ => (Arc::new(beat.tags.clone()), Arc::new(beat.agents.clone())),
        };
        if let Some(since) = old.and_then(|o| o.offline_since) {
            self.offline.remove(&(since, id.clone()));
        }
        let offline_since = leaving.then_some(now);
        if leaving {
            self.online.remove(&id);
            self.offline.insert((now, id.clone()));
        } else {
            self.online.insert(id.clone());
        }
        self.workers.insert(
            id,
            WorkerEntry {
                beat,
                last_seen: now,
                last_seen_ms: at_ms,
                online: !leaving,
                tags,
                agents,
                offline_since,
            },
        );
        if leaving {
            PresenceChange::Leaving
        } else {
            change
        }
    }

    /// Marks silent workers offline and returns them; forgets workers
    /// offline for longer than the forget time.
    pub fn expire(&mut self, now: Instant) -> Vec<WorkerId> {
        let mut gone = Vec::new();
        for id in &self.online {
            let Some(entry) = self.workers.get_mut(id) else {
                continue;
            };
            if now.duration_since(entry.last_seen) > self.offline_after {
                entry.online = false;
                entry.offline_since = Some(now);
                self.offline.insert((now, id.clone()));
                gone.push(id.clone());
            }
        }
        for id in &gone {
            self.online.remove(id);
        }
        while let Some((since, id)) = self.offline.first().cloned() {
            if now.duration_since(since) <= self.forget_after {
                break;
            }
            self.offline.pop_first();
            self.workers.remove(&id);
            tracing::info!(worker = %id, "offline worker forgotten");
        }
        gone
    }

    /// Placement's view of every online worker (offline ones cost nothing),
    /// with `used(id)` slots taken.
    pub fn views(&self, used: impl Fn(&WorkerId) -> u32) -> Vec<WorkerView> {
        self.views_of(&self.online, used)
    }

    /// Placement's view of those of `ids` that are online.
    pub fn views_of<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a WorkerId>,
        used: impl Fn(&WorkerId) -> u32,
    ) -> Vec<WorkerView> {
        ids.into_iter()
            .filter(|id| self.online.contains(*id))
            .filter_map(|id| self.workers.get(id).map(|w| (id, w)))
            .map(|(id, w)| WorkerView {
                id: id.clone(),
                tags: w.tags.clone(),
                agents: w.agents.clone(),
                slots: w.beat.slots,
                used: used(id),
                online: true,
            })
            .collect()
    }

    /// Workers known (online or offline, not yet forgotten).
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
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

    // Regression: offline workers were kept forever, and every placement
    // pass read all of them: 10,000 fake adverts stopped placement.
    #[test]
    fn offline_workers_are_forgotten_and_never_viewed() {
        let mut fleet = Fleet::bounded(Duration::from_secs(10), Duration::from_secs(60), 100);
        let t0 = Instant::now();
        fleet.observe(beat("a", uuid::Uuid::new_v4(), &["linux"]), t0);
        fleet.observe(
            beat("b", uuid::Uuid::new_v4(), &["linux"]),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(fleet.expire(t0 + Duration::from_secs(11)).len(), 1);
        let views = fleet.views(|_| 0);
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].id.as_str(), "b");
        assert_eq!(fleet.len(), 2);
        // Forgotten a minute after going offline.
        fleet.expire(t0 + Duration::from_secs(60));
        assert_eq!(fleet.len(), 2);
        fleet.expire(t0 + Duration::from_secs(72));
        assert!(fleet.get(&WorkerId::parse("a").unwrap()).is_none());
        assert_eq!(fleet.len(), 1);
        // Heard from again, it joins as new.
        let later = t0 + Duration::from_secs(73);
        assert_eq!(
            fleet.observe(beat("a", uuid::Uuid::new_v4(), &["linux"]), later),
            PresenceChange::Joined
        );
    }

    // Regression: the fleet had no bound; a flood of new worker ids grew it
    // without limit.
    #[test]
    fn a_full_fleet_makes_room_from_offline_workers_only() {
        let mut fleet = Fleet::bounded(Duration::from_secs(10), Duration::from_secs(600), 2);
        let t0 = Instant::now();
        fleet.observe(beat("a", uuid::Uuid::new_v4(), &[]), t0);
        fleet.observe(
            beat("b", uuid::Uuid::new_v4(), &[]),
            t0 + Duration::from_secs(8),
        );
        assert_eq!(
            fleet.observe(
                beat("c", uuid::Uuid::new_v4(), &[]),
                t0 + Duration::from_secs(9)
            ),
            PresenceChange::FleetFull
        );
        fleet.expire(t0 + Duration::from_secs(11)); // a is offline
        assert_eq!(
            fleet.observe(
                beat("c", uuid::Uuid::new_v4(), &[]),
                t0 + Duration::from_secs(12)
            ),
            PresenceChange::Joined
        );
        assert!(fleet.get(&WorkerId::parse("a").unwrap()).is_none());
        assert_eq!(fleet.len(), 2);
    }

    #[test]
    fn an_unchanged_advert_shares_its_tags() {
        let mut fleet = Fleet::default();
        let t0 = Instant::now();
        let inc = uuid::Uuid::new_v4();
        fleet.observe(beat("a", inc, &["linux"]), t0);
        let first = fleet.views(|_| 0)[0].tags.clone();
        fleet.observe(beat("a", inc, &["linux"]), t0);
        assert!(Arc::ptr_eq(&first, &fleet.views(|_| 0)[0].tags));
    }
}
