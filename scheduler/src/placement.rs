//! Placement: which live worker runs a task. A pure function over data.
//!
//! A worker qualifies when it is online, enables the task's agent and its
//! tags are a superset of the task's required tags (set containment, which a
//! JetStream subject filter cannot express). Among qualifying workers with a
//! free slot, the tightest fit wins (fewest tags beyond those required), so a
//! task needing only `linux` leaves the GPU host free; ties go to the most
//! free slots, then to the worker id, so the choice is deterministic.
//!
//! A task continuing an earlier session runs on the worker that ran it (its
//! transcript is there) whenever that worker is live and fits. While it is
//! away, any qualifying worker may take the task once the transcript is
//! shared in the transcript object store; until then the task waits.
//!
//! With no such worker the task is parked with a [`ParkReason`] computed
//! against the closest worker (fewest missing tags).
//!
//! When only some workers joined or changed their advert, [`Changed`] says
//! which parked tasks they may help, so a flood of adverts costs a pass
//! over the changed workers, not over every queued task times every worker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use broker::messages::event::ParkReason;
use broker::{SessionId, Tag, TagSet, WorkerId};

/// What placement needs to know of a worker. The tag sets are shared with
/// the fleet, so a view costs no copy of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    pub id: WorkerId,
    pub tags: Arc<TagSet>,
    pub agents: Arc<TagSet>,
    pub slots: u32,
    /// Slots taken by assigned and running attempts.
    pub used: u32,
    pub online: bool,
}

impl WorkerView {
    pub fn free(&self) -> u32 {
        self.slots.saturating_sub(self.used)
    }
}

/// What placement needs to know of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNeeds {
    pub capabilities: TagSet,
    pub agent: Tag,
    /// Where a continued session's transcript is.
    pub home: Option<Home>,
}

/// The session a task continues, the worker holding its transcript, and
/// whether the transcript is in the transcript store too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub session: SessionId,
    pub worker: WorkerId,
    pub shared: bool,
}

impl TaskNeeds {
    /// True when `worker` is live and has the task's tags and agent
    /// (ignoring slots and where a continued session's transcript is).
    pub fn fits(&self, worker: &WorkerView) -> bool {
        worker.online
            && worker.agents.contains(&self.agent)
            && self.capabilities.is_subset(&worker.tags)
    }
}

/// Workers that joined or changed their advert since the last placement
/// pass, indexed by the agents they enable.
#[derive(Debug, Default)]
pub struct Changed<'a> {
    by_agent: HashMap<&'a Tag, Vec<&'a WorkerView>>,
}

impl<'a> Changed<'a> {
    /// The views of the `changed` workers that are online.
    pub fn new(views: &'a [WorkerView], changed: &HashSet<WorkerId>) -> Changed<'a> {
        let mut by_agent: HashMap<&'a Tag, Vec<&'a WorkerView>> = HashMap::new();
        for view in views.iter().filter(|v| v.online && changed.contains(&v.id)) {
            for agent in view.agents.iter() {
                by_agent.entry(agent).or_default().push(view);
            }
        }
        Changed { by_agent }
    }

    /// Whether judging `task` again may change anything: it waits for
    /// want of any live worker (a join makes it `unmatched`), or a changed
    /// worker fits it. A task none of them fits keeps its reason (its
    /// `closest` hint may then be a worker no longer the closest).
    pub fn may_help(&self, task: &TaskNeeds, parked: Option<&ParkReason>) -> bool {
        matches!(parked, None | Some(ParkReason::NoWorkers))
            || self
                .by_agent
                .get(&task.agent)
                .is_some_and(|ws| ws.iter().any(|w| task.fits(w)))
    }
}

/// Chooses the worker for `task`, or says why none can take it now.
pub fn place(task: &TaskNeeds, workers: &[WorkerView]) -> Result<WorkerId, ParkReason> {
    // A continued session goes home while home is live and fits (it may
    // wait there for a slot); elsewhere only once its transcript is shared.
    let only = match &task.home {
        None => None,
        Some(h) if workers.iter().any(|w| w.id == h.worker && task.fits(w)) => Some(&h.worker),
        Some(h) if h.shared => None,
        Some(h) => {
            return Err(ParkReason::Home {
                worker: h.worker.clone(),
            })
        }
    };
    let mut best: Option<(&WorkerView, (usize, std::cmp::Reverse<u32>))> = None;
    let mut qualifying = 0u32;
    let mut closest: Option<(&WorkerView, (usize, bool))> = None;
    let mut any_online = false;
    for worker in workers {
        if !worker.online {
            continue;
        }
        any_online = true;
        if task.fits(worker) && only.is_none_or(|id| *id == worker.id) {
            qualifying += 1;
            if worker.free() == 0 {
                continue;
            }
            let extra = worker.tags.len() - task.capabilities.len();
            let key = (extra, std::cmp::Reverse(worker.free()));
            let better = match &best {
                None => true,
                Some((b, bkey)) => key < *bkey || (key == *bkey && worker.id < b.id),
            };
            if better {
                best = Some((worker, key));
            }
        } else {
            let missing = task.capabilities.missing_from(&worker.tags).len();
            let key = (missing, !worker.agents.contains(&task.agent));
            let closer = match &closest {
                None => true,
                Some((c, ckey)) => key < *ckey || (key == *ckey && worker.id < c.id),
            };
            if closer {
                closest = Some((worker, key));
            }
        }
    }
    if let Some((worker, _)) = best {
        return Ok(worker.id.clone());
    }
    if qualifying > 0 {
        return Err(ParkReason::Busy { qualifying });
    }
    match closest {
        Some((worker, _)) if any_online => Err(ParkReason::Unmatched {
            closest: worker.id.clone(),
            missing_tags: task.capabilities.missing_from(&worker.tags),
            missing_agent: (!worker.agents.contains(&task.agent)).then(|| task.agent.clone()),
        }),
        _ => Err(ParkReason::NoWorkers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tags(list: &[&str]) -> TagSet {
        list.iter().map(|t| Tag::parse(t).unwrap()).collect()
    }

    fn worker(id: &str, t: &[&str], slots: u32, used: u32) -> WorkerView {
        WorkerView {
            id: WorkerId::parse(id).unwrap(),
            tags: Arc::new(tags(t)),
            agents: Arc::new(tags(&["command", "pi"])),
            slots,
            used,
            online: true,
        }
    }

    fn needs(t: &[&str]) -> TaskNeeds {
        TaskNeeds {
            capabilities: tags(t),
            agent: Tag::parse("command").unwrap(),
            home: None,
        }
    }

    #[test]
    fn multi_tag_needs_both() {
        let ws = [
            worker("a", &["linux", "image-render"], 1, 0),
            worker("b", &["linux", "screenshot"], 1, 0),
            worker("c", &["linux", "image-render", "screenshot"], 1, 0),
        ];
        assert_eq!(
            place(&needs(&["image-render", "screenshot"]), &ws)
                .unwrap()
                .as_str(),
            "c"
        );
    }

    #[test]
    fn tightest_fit_leaves_gpu_host_free() {
        let ws = [
            worker("gpu", &["linux", "gpu"], 4, 0),
            worker("plain", &["linux"], 1, 0),
        ];
        assert_eq!(place(&needs(&["linux"]), &ws).unwrap().as_str(), "plain");
        let ws = [
            worker("gpu", &["linux", "gpu"], 4, 0),
            worker("plain", &["linux"], 1, 1),
        ];
        assert_eq!(place(&needs(&["linux"]), &ws).unwrap().as_str(), "gpu");
    }

    #[test]
    fn most_free_slots_breaks_ties() {
        let ws = [worker("a", &["linux"], 4, 3), worker("b", &["linux"], 4, 1)];
        assert_eq!(place(&needs(&["linux"]), &ws).unwrap().as_str(), "b");
    }

    #[test]
    fn parks_with_reason() {
        assert_eq!(place(&needs(&["linux"]), &[]), Err(ParkReason::NoWorkers));
        let ws = [
            worker("bsd", &["freebsd"], 1, 0),
            worker("l", &["linux", "x"], 1, 0),
        ];
        match place(&needs(&["linux", "gpu"]), &ws) {
            Err(ParkReason::Unmatched {
                closest,
                missing_tags,
                missing_agent,
            }) => {
                assert_eq!(closest.as_str(), "l");
                assert_eq!(missing_tags, vec![Tag::parse("gpu").unwrap()]);
                assert_eq!(missing_agent, None);
            }
            other => panic!("{other:?}"),
        }
        let ws = [worker("l", &["linux"], 1, 1)];
        assert_eq!(
            place(&needs(&["linux"]), &ws),
            Err(ParkReason::Busy { qualifying: 1 })
        );
    }

    #[test]
    fn agent_is_part_of_the_advert() {
        let mut w = worker("l", &["linux"], 1, 0);
        w.agents = Arc::new(tags(&["pi"]));
        match place(&needs(&["linux"]), &[w]) {
            Err(ParkReason::Unmatched { missing_agent, .. }) => {
                assert_eq!(missing_agent, Some(Tag::parse("command").unwrap()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_continued_session_goes_home_or_waits_for_it() {
        let ws = [
            worker("a", &["linux"], 4, 0),
            worker("home", &["linux", "gpu"], 4, 0),
        ];
        let mut n = needs(&["linux"]);
        n.home = Some(Home {
            session: SessionId::new(),
            worker: WorkerId::parse("home").unwrap(),
            shared: false,
        });
        assert_eq!(place(&n, &ws).unwrap().as_str(), "home");
        let mut away = ws.clone();
        away[1].online = false;
        assert_eq!(
            place(&n, &away),
            Err(ParkReason::Home {
                worker: WorkerId::parse("home").unwrap()
            })
        );
        // Home full but live: it waits for home, even when shared.
        n.home.as_mut().unwrap().shared = true;
        let mut full = ws.clone();
        full[1].used = 4;
        assert_eq!(place(&n, &full), Err(ParkReason::Busy { qualifying: 1 }));
        // Home away and the transcript shared: any qualifying worker.
        assert_eq!(place(&n, &away).unwrap().as_str(), "a");
        // Home live but no longer fitting (its agent removed): elsewhere.
        let mut unfit = ws.clone();
        unfit[1].agents = Arc::new(tags(&["pi"]));
        assert_eq!(place(&n, &unfit).unwrap().as_str(), "a");
    }

    // Regression: every advert change judged every queued task against
    // every worker; with a backlog parked and a flood of adverts, placement
    // stopped. Only tasks a changed worker may help are judged again.
    #[test]
    fn changed_workers_help_only_tasks_they_fit() {
        let mut fake = worker("fake", &["fake"], 1, 0);
        fake.agents = Arc::new(tags(&["pi"]));
        let ws = [fake, worker("gpu", &["linux", "gpu"], 1, 0)];
        let unmatched = ParkReason::Unmatched {
            closest: WorkerId::parse("gpu").unwrap(),
            missing_tags: vec![],
            missing_agent: None,
        };
        let only_fake: HashSet<WorkerId> = [WorkerId::parse("fake").unwrap()].into();
        let changed = Changed::new(&ws, &only_fake);
        assert!(!changed.may_help(&needs(&["gpu"]), Some(&unmatched)));
        assert!(
            !changed.may_help(&needs(&["fake"]), Some(&unmatched)),
            "agent differs"
        );
        assert!(changed.may_help(&needs(&["nowhere"]), Some(&ParkReason::NoWorkers)));
        assert!(changed.may_help(&needs(&["nowhere"]), None));
        let gpu: HashSet<WorkerId> = [WorkerId::parse("gpu").unwrap()].into();
        let changed = Changed::new(&ws, &gpu);
        assert!(changed.may_help(&needs(&["gpu"]), Some(&unmatched)));
        assert!(changed.may_help(
            &needs(&["linux"]),
            Some(&ParkReason::Busy { qualifying: 1 })
        ));
    }

    #[test]
    fn offline_workers_never_chosen() {
        let mut w = worker("l", &["linux"], 1, 0);
        w.online = false;
        assert_eq!(place(&needs(&["linux"]), &[w]), Err(ParkReason::NoWorkers));
    }

    const POOL: [&str; 6] = [
        "linux",
        "freebsd",
        "gpu",
        "image-render",
        "python3.12",
        "docker",
    ];

    fn arb_tags() -> impl Strategy<Value = TagSet> {
        proptest::sample::subsequence(POOL.to_vec(), 0..=POOL.len()).prop_map(|v| tags(&v))
    }

    fn arb_worker() -> impl Strategy<Value = (TagSet, u32, u32, bool)> {
        (arb_tags(), 0u32..4, 0u32..5, proptest::bool::weighted(0.85))
    }

    proptest! {
        #[test]
        fn placement_invariants(need in arb_tags(), raw in proptest::collection::vec(arb_worker(), 0..8)) {
            let ws: Vec<WorkerView> = raw.into_iter().enumerate().map(|(i, (t, slots, used, online))| WorkerView {
                id: WorkerId::parse(&format!("w{i}")).unwrap(),
                tags: Arc::new(t),
                agents: Arc::new(tags(&["command"])),
                slots,
                used: used.min(slots),
                online,
            }).collect();
            let task = needs(&need.iter().map(|t| t.as_str()).collect::<Vec<_>>());
            match place(&task, &ws) {
                Ok(id) => {
                    let chosen = ws.iter().find(|w| w.id == id).unwrap();
                    // never a worker missing a tag, never offline, never over its slots
                    prop_assert!(task.capabilities.is_subset(&chosen.tags));
                    prop_assert!(chosen.online);
                    prop_assert!(chosen.used < chosen.slots);
                    // best fit: no other free qualifying worker fits tighter
                    for w in ws.iter().filter(|w| task.fits(w) && w.free() > 0) {
                        prop_assert!(w.tags.len() >= chosen.tags.len());
                        if w.tags.len() == chosen.tags.len() {
                            prop_assert!(w.free() <= chosen.free());
                        }
                    }
                }
                Err(_) => {
                    prop_assert!(!ws.iter().any(|w| task.fits(w) && w.free() > 0));
                }
            }
        }
    }
}
