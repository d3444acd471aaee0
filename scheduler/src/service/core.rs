//! The scheduler's decisions, free of I/O: each handler changes the board
//! inside the caller's transaction, updates the in-memory view, and queues
//! what must go out (orders, events, purges) in the [`Outbox`], which the
//! service sends only after the transaction commits.
//!
//! Fencing: the pair (task, attempt) identifies one run. A report for any
//! other attempt, or from another worker, changes nothing; if it shows the
//! stale run is alive, that run is sent a cancel order.
//!
//! The handlers live by concern in the sibling modules: `submit`,
//! `reports`, `presence`, `dispatch` and `cancel`; this module holds the
//! state they share and the task lifecycle steps (finish, retry, requeue).

use std::collections::{BTreeMap, HashSet};

use broker::cost_mode::CostMode;
use broker::messages::event::ParkReason;
use broker::messages::work::{WorkItem, WorkMessage};
use broker::messages::{encode, TaskEvent, TaskState};
use broker::{subjects, TaskId, WorkerId};
use bytes::Bytes;

use crate::board::{BoardError, BoardTx};
use crate::fleet::Fleet;

use super::state::{Active, Tasks};

/// Something to send once the transaction has committed.
#[derive(Debug, Clone)]
pub enum Action {
    /// A lifecycle event (core publish; the events stream stores it).
    Event { subject: String, payload: Bytes },
    /// An order on a worker's work subject (JetStream publish, deduplicated by `msg_id`).
    Order {
        worker: WorkerId,
        payload: Bytes,
        msg_id: String,
        /// Run orders: mark (task, attempt) dispatched once acknowledged.
        dispatch: Option<(TaskId, u32)>,
    },
    /// Drop every order still queued for a worker that went offline.
    PurgeWork(WorkerId),
}

/// Longest retry backoff.
const MAX_BACKOFF_MS: u64 = 60_000;

pub struct Core {
    pub tasks: Tasks,
    pub fleet: Fleet,
    pub cost_mode: CostMode,
    pub outbox: Vec<Action>,
    pub counters: BTreeMap<&'static str, u64>,
    /// Stale runs already sent a cancel.
    pub(super) fenced: HashSet<(TaskId, u32)>,
    /// The fleet changed so that any queued task may need judging again (a
    /// worker left, or the service started): every queued task is judged.
    pub(super) fleet_changed: bool,
    /// Workers that joined, returned or changed their advert: queued tasks
    /// they may help are judged again (a flood of adverts stays cheap).
    pub(super) changed_workers: HashSet<WorkerId>,
    /// A slot came free: waiting tasks are placed until the slots are taken.
    pub(super) slots_freed: bool,
    /// Hosts and the tags each may advertise; claims are not checked
    /// against identities when absent (see [`crate::claims`]).
    pub hosts: Option<broker::identity::Registry>,
}

impl Core {
    pub fn new(tasks: Tasks, fleet: Fleet, cost_mode: CostMode) -> Core {
        Core {
            tasks,
            fleet,
            cost_mode,
            outbox: Vec::new(),
            counters: BTreeMap::new(),
            fenced: HashSet::new(),
            fleet_changed: true,
            changed_workers: HashSet::new(),
            slots_freed: false,
            hosts: None,
        }
    }

    pub fn count(&mut self, what: &'static str) {
        *self.counters.entry(what).or_default() += 1;
    }

    /// Makes the next pass judge every queued task again.
    pub fn mark_fleet_changed(&mut self) {
        self.fleet_changed = true;
    }

    pub(super) fn emit(
        &mut self,
        id: &TaskId,
        a: Option<&Active>,
        state: TaskState,
        reason: Option<&str>,
        now_ms: i64,
    ) {
        let event = TaskEvent {
            v: broker::WIRE_VERSION,
            task_id: *id,
            state,
            attempt: a.map_or(0, |a| a.attempt),
            worker: a.and_then(|a| a.worker.clone()),
            reason: reason.map(str::to_string),
            parked: a.and_then(|a| a.parked.clone()),
            at_ms: now_ms,
        };
        self.outbox.push(Action::Event {
            subject: subjects::task_state(id),
            payload: encode(&event),
        });
    }

    pub(super) fn order(
        &mut self,
        worker: &WorkerId,
        item: WorkItem,
        msg_id: String,
        dispatch: Option<(TaskId, u32)>,
    ) {
        self.outbox.push(Action::Order {
            worker: worker.clone(),
            payload: encode(&WorkMessage::new(item)),
            msg_id,
            dispatch,
        });
    }

    /// Ends a task in a terminal state.
    pub(super) fn finish(
        &mut self,
        tx: &BoardTx<'_>,
        id: &TaskId,
        state: TaskState,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<(), BoardError> {
        let Some(a) = self.tasks.remove(id) else {
            return Ok(());
        };
        tx.set_state(id, state, a.attempt, reason, now_ms)?;
        tracing::info!(task_id = %id, attempt = a.attempt, state = %state, reason = reason.unwrap_or(""), "task ended");
        self.emit(id, Some(&a), state, reason, now_ms);
        self.slots_freed = true;
        Ok(())
    }

    /// Queues a task again after a failed or lost attempt, if its retry
    /// policy allows; otherwise it fails with `reason`.
    pub(super) fn retry_or_fail(
        &mut self,
        tx: &BoardTx<'_>,
        id: &TaskId,
        reason: &str,
        backoff: bool,
        now_ms: i64,
    ) -> Result<(), BoardError> {
        let Some(a) = self.tasks.get(id) else {
            return Ok(());
        };
        if a.cancel_requested {
            return self.finish(
                tx,
                id,
                TaskState::Cancelled,
                Some("cancelled by operator"),
                now_ms,
            );
        }
        if a.tries >= a.spec.retry.max_attempts {
            let why = format!(
                "{reason}; {} of {} attempts used",
                a.tries, a.spec.retry.max_attempts
            );
            return self.finish(tx, id, TaskState::Failed, Some(&why), now_ms);
        }
        let not_before =
            backoff.then(|| now_ms + backoff_ms(a.spec.retry.backoff_ms, a.tries) as i64);
        self.requeue(tx, id, not_before, reason, now_ms)
    }

    pub(super) fn requeue(
        &mut self,
        tx: &BoardTx<'_>,
        id: &TaskId,
        not_before: Option<i64>,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), BoardError> {
        let Some(attempt) = self.tasks.update(id, |a| {
            a.state = TaskState::Queued;
            a.worker = None;
            a.incarnation = None;
            a.dispatched = false;
            a.not_before_ms = not_before;
            a.parked = not_before.map(|until_ms| ParkReason::Backoff { until_ms });
            a.attempt
        }) else {
            return Ok(());
        };
        tx.requeue(id, attempt, not_before, reason, now_ms)?;
        tracing::info!(task_id = %id, attempt, reason, "task queued again");
        let a = self.tasks.get(id).cloned();
        self.emit(id, a.as_ref(), TaskState::Queued, Some(reason), now_ms);
        self.slots_freed = true;
        Ok(())
    }
}

/// Exponential backoff with jitter: base * 2^(tries-1), times 0.5..1.5, capped.
pub fn backoff_ms(base: u64, tries: u32) -> u64 {
    let exp = base
        .saturating_mul(1u64 << tries.saturating_sub(1).min(16))
        .min(MAX_BACKOFF_MS);
    let jitter: f64 = rand::random_range(0.5..1.5);
    ((exp as f64) * jitter) as u64
}
