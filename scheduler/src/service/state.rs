//! The service's in-memory view of non-terminal tasks: what placement and
//! lease checks read on every event. Terminal tasks live only on the board,
//! so memory stays bounded by the work in flight, not by history.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use broker::messages::event::ParkReason;
use broker::messages::{TaskSpec, TaskState};
use broker::{SessionId, TaskId, WorkerId};

use crate::board::ActiveRow;
use crate::placement::{Home, TaskNeeds};

/// A task that is queued, assigned or running.
#[derive(Debug, Clone)]
pub struct Active {
    pub spec: Arc<TaskSpec>,
    pub needs: TaskNeeds,
    pub state: TaskState,
    pub attempt: u32,
    pub worker: Option<WorkerId>,
    pub session: Option<SessionId>,
    /// Worker process that started the current attempt.
    pub incarnation: Option<uuid::Uuid>,
    pub cancel_requested: bool,
    /// Retry backoff: not placed before this time.
    pub not_before_ms: Option<i64>,
    /// The current run order was accepted by JetStream.
    pub dispatched: bool,
    pub parked: Option<ParkReason>,
    /// Attempts counted against the retry policy.
    pub tries: u32,
}

impl Active {
    pub fn new(spec: TaskSpec) -> Active {
        let needs = TaskNeeds {
            capabilities: spec.capabilities.clone(),
            agent: spec.agent.clone(),
            home: None,
        };
        Active {
            spec: Arc::new(spec),
            needs,
            state: TaskState::Queued,
            attempt: 0,
            worker: None,
            session: None,
            incarnation: None,
            cancel_requested: false,
            not_before_ms: None,
            dispatched: false,
            parked: None,
            tries: 0,
        }
    }

    pub fn from_row(row: ActiveRow) -> Active {
        let mut a = Active::new(row.spec);
        a.needs.home = match (row.home, a.spec.continue_session) {
            (Some(h), Some(session)) => Some(Home {
                session,
                shared: h.share.is_some(),
                worker: h.worker,
            }),
            _ => None,
        };
        a.state = row.state;
        a.attempt = row.attempt;
        a.worker = row.worker;
        a.session = row.session;
        a.incarnation = row.incarnation;
        a.cancel_requested = row.cancel_requested;
        a.not_before_ms = row.not_before_ms;
        a.dispatched = row.dispatched;
        a.tries = row.tries;
        a
    }
}

/// Active tasks, the FIFO of queued ones, and who holds which slot.
#[derive(Debug, Default)]
pub struct Tasks {
    active: HashMap<TaskId, Active>,
    /// Queued task ids; UUIDv7 order is submission order.
    queue: BTreeSet<TaskId>,
    /// Queued tasks a freed slot may place: not parked for want of a
    /// qualifying worker (those wait for the fleet to change).
    waiting: BTreeSet<TaskId>,
    /// Queued tasks not yet judged by placement (new, requeued, backoff over).
    fresh: BTreeSet<TaskId>,
    /// Assigned and running tasks per worker: its used slots.
    by_worker: HashMap<WorkerId, HashSet<TaskId>>,
    /// Queued tasks continuing a session whose transcript is not shared
    /// yet, by that session: a share may let them run elsewhere.
    continuing: HashMap<SessionId, HashSet<TaskId>>,
}

impl Tasks {
    pub fn insert(&mut self, task: Active) {
        let id = task.spec.id;
        self.index(&id, &task);
        self.active.insert(id, task);
    }

    fn index(&mut self, id: &TaskId, task: &Active) {
        match task.state {
            TaskState::Queued => {
                self.queue.insert(*id);
                if let Some(h) = task.needs.home.as_ref().filter(|h| !h.shared) {
                    self.continuing.entry(h.session).or_default().insert(*id);
                }
                match &task.parked {
                    None => {
                        self.fresh.insert(*id);
                        self.waiting.insert(*id);
                    }
                    Some(ParkReason::Busy { .. } | ParkReason::Backoff { .. }) => {
                        self.waiting.insert(*id);
                    }
                    Some(
                        ParkReason::NoWorkers
                        | ParkReason::Unmatched { .. }
                        | ParkReason::Home { .. },
                    ) => {}
                }
            }
            TaskState::Assigned | TaskState::Running => {
                if let Some(w) = &task.worker {
                    self.by_worker.entry(w.clone()).or_default().insert(*id);
                }
            }
            _ => {}
        }
    }

    fn unindex(&mut self, id: &TaskId) {
        if let Some(task) = self.active.get(id) {
            self.queue.remove(id);
            self.waiting.remove(id);
            self.fresh.remove(id);
            if let Some(h) = &task.needs.home {
                if let Some(set) = self.continuing.get_mut(&h.session) {
                    set.remove(id);
                    if set.is_empty() {
                        self.continuing.remove(&h.session);
                    }
                }
            }
            if let Some(w) = &task.worker {
                if let Some(set) = self.by_worker.get_mut(w) {
                    set.remove(id);
                }
            }
        }
    }

    pub fn get(&self, id: &TaskId) -> Option<&Active> {
        self.active.get(id)
    }

    /// Changes a task through `f`, keeping the indexes true.
    pub fn update<R>(&mut self, id: &TaskId, f: impl FnOnce(&mut Active) -> R) -> Option<R> {
        self.unindex(id);
        let mut task = self.active.remove(id)?;
        let r = f(&mut task);
        if !task.state.is_terminal() {
            self.index(id, &task);
            self.active.insert(*id, task);
        }
        Some(r)
    }

    pub fn remove(&mut self, id: &TaskId) -> Option<Active> {
        self.unindex(id);
        self.active.remove(id)
    }

    pub fn queued(&self) -> Vec<TaskId> {
        self.queue.iter().copied().collect()
    }

    /// The first waiting task after `after` (FIFO), for a pass that stops
    /// as soon as the free slots are taken.
    pub fn next_waiting(&self, after: Option<TaskId>) -> Option<TaskId> {
        match after {
            None => self.waiting.first().copied(),
            Some(a) => self
                .waiting
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                .next()
                .copied(),
        }
    }

    /// Queued tasks placement has not judged yet.
    pub fn fresh(&self) -> Vec<TaskId> {
        self.fresh.iter().copied().collect()
    }

    pub fn has_fresh(&self) -> bool {
        !self.fresh.is_empty()
    }

    /// Queued tasks waiting for `session`'s transcript to be shared.
    pub fn continuing(&self, session: &SessionId) -> Vec<TaskId> {
        self.continuing
            .get(session)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn on_worker(&self, worker: &WorkerId) -> Vec<TaskId> {
        self.by_worker
            .get(worker)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn used(&self, worker: &WorkerId) -> u32 {
        self.by_worker.get(worker).map_or(0, |s| s.len() as u32)
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TaskId, &Active)> {
        self.active.iter()
    }
}
