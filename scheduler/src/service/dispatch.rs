//! Placement and run orders: queued tasks are placed on workers with free
//! slots, each placement is a new attempt with its run order, and orders
//! acknowledged by JetStream are marked dispatched.

use broker::cost_mode::CostMode;
use broker::messages::work::{RunOrder, WorkItem};
use broker::messages::{SharedTranscript, TaskSpec, TaskState};
use broker::{SessionId, TaskId, WorkerId};

use crate::board::{BoardError, BoardTx};
use crate::placement::{place, Changed, WorkerView};

use super::core::Core;

impl Core {
    /// Online workers only: placement never pays for offline ones.
    pub(super) fn views(&self) -> Vec<WorkerView> {
        self.fleet.views(|id| self.tasks.used(id))
    }

    /// Places what it can, oldest first, and records why the rest wait.
    /// After a worker left every queued task is judged; after joins and
    /// advert changes, the tasks a changed worker may help; after a slot
    /// came free, waiting tasks until the free slots are taken; always, the
    /// tasks not judged yet. So a turn costs what changed, not the queue.
    pub fn place_all(&mut self, tx: &BoardTx<'_>, now_ms: i64) -> Result<(), BoardError> {
        let full = std::mem::take(&mut self.fleet_changed);
        let changed = std::mem::take(&mut self.changed_workers);
        let freed = std::mem::take(&mut self.slots_freed);
        if !full && changed.is_empty() && !freed && !self.tasks.has_fresh() {
            return Ok(());
        }
        let queued = self.tasks.queued();
        if queued.is_empty() {
            return Ok(()); // nothing to place: a flood of adverts costs no view
        }
        // Joins and advert changes: only the tasks a changed worker may
        // help are judged again, found from the changed workers alone, so a
        // flood of adverts does not judge a parked backlog against every
        // worker on every turn.
        let again: Vec<TaskId> = if full || changed.is_empty() {
            Vec::new()
        } else {
            let changed_views = self.fleet.views_of(&changed, |id| self.tasks.used(id));
            let help = Changed::new(&changed_views, &changed);
            queued
                .iter()
                .copied()
                .filter(|id| {
                    self.tasks
                        .get(id)
                        .is_some_and(|a| help.may_help(&a.needs, a.parked.as_ref()))
                })
                .collect()
        };
        if !full && again.is_empty() && !freed && !self.tasks.has_fresh() {
            return Ok(());
        }
        let mut views = self.views();
        let mut free: u32 = views.iter().filter(|w| w.online).map(|w| w.free()).sum();
        if full {
            for id in queued {
                self.consider(tx, id, &mut views, &mut free, now_ms)?;
            }
            return Ok(());
        }
        for id in again {
            self.consider(tx, id, &mut views, &mut free, now_ms)?;
        }
        if freed {
            let mut cursor = None;
            while free > 0 {
                let Some(id) = self.tasks.next_waiting(cursor) else {
                    break;
                };
                cursor = Some(id);
                self.consider(tx, id, &mut views, &mut free, now_ms)?;
            }
        }
        for id in self.tasks.fresh() {
            self.consider(tx, id, &mut views, &mut free, now_ms)?;
        }
        Ok(())
    }

    /// Places one queued task, or records why it waits.
    pub(super) fn consider(
        &mut self,
        tx: &BoardTx<'_>,
        id: TaskId,
        views: &mut [WorkerView],
        free: &mut u32,
        now_ms: i64,
    ) -> Result<(), BoardError> {
        let Some(a) = self.tasks.get(&id) else {
            return Ok(());
        };
        if a.spec.limits.deadline_ms.is_some_and(|d| d <= now_ms) {
            // Regression: a task submitted with a past deadline was placed
            // and ran; still queued at its deadline, it ends timed_out.
            return self.finish(
                tx,
                &id,
                TaskState::TimedOut,
                Some("still queued at its deadline"),
                now_ms,
            );
        }
        if a.not_before_ms.is_some_and(|t| t > now_ms) {
            return Ok(());
        }
        match place(&a.needs, views) {
            Ok(worker) => {
                if let Some(v) = views.iter_mut().find(|v| v.id == worker) {
                    v.used += 1;
                }
                *free = free.saturating_sub(1);
                self.assign(tx, &id, &worker, now_ms)
            }
            Err(reason) => {
                if a.parked.as_ref() == Some(&reason) {
                    return Ok(());
                }
                tx.set_parked(&id, Some(&reason))?;
                tracing::info!(task_id = %id, reason = %reason, "task parked");
                self.tasks.update(&id, |a| a.parked = Some(reason.clone()));
                let a = self.tasks.get(&id).cloned();
                let why = reason.to_string();
                self.emit(&id, a.as_ref(), TaskState::Queued, Some(&why), now_ms);
                Ok(())
            }
        }
    }

    pub(super) fn assign(
        &mut self,
        tx: &BoardTx<'_>,
        id: &TaskId,
        worker: &WorkerId,
        now_ms: i64,
    ) -> Result<(), BoardError> {
        let session = SessionId::new();
        let cost_mode = self.cost_mode;
        let Some((attempt, spec)) = self.tasks.update(id, |a| {
            a.attempt += 1;
            a.state = TaskState::Assigned;
            a.worker = Some(worker.clone());
            a.session = Some(session);
            a.parked = None;
            a.not_before_ms = None;
            a.dispatched = false;
            (a.attempt, a.spec.clone())
        }) else {
            return Ok(());
        };
        tx.assign(id, attempt, worker, &session, now_ms)?;
        tracing::info!(task_id = %id, attempt, worker = %worker, "task assigned");
        let a = self.tasks.get(id).cloned();
        self.emit(id, a.as_ref(), TaskState::Assigned, None, now_ms);
        let context = run_context(tx, &spec, attempt)?;
        self.send_run(worker, &spec, attempt, session, cost_mode, context);
        Ok(())
    }

    fn send_run(
        &mut self,
        worker: &WorkerId,
        spec: &TaskSpec,
        attempt: u32,
        session: SessionId,
        fleet_mode: CostMode,
        context: RunContext,
    ) {
        let order = RunOrder {
            task: spec.clone(),
            attempt,
            session,
            cost_mode: spec.cost_mode.unwrap_or(fleet_mode),
            spent: context.spent,
            continue_from: context.continue_from,
        };
        let id = spec.id;
        self.order(
            worker,
            WorkItem::Run(Box::new(order)),
            format!("run:{id}:{attempt}"),
            Some((id, attempt)),
        );
    }

    /// After a restart: send again every run order not known to be accepted.
    pub fn redispatch_pending(&mut self, tx: &BoardTx<'_>) -> Result<(), BoardError> {
        let pending: Vec<_> = self
            .tasks
            .iter()
            .filter(|(_, a)| a.state == TaskState::Assigned && !a.dispatched)
            .filter_map(|(_, a)| Some((a.worker.clone()?, a.spec.clone(), a.attempt, a.session?)))
            .collect();
        for (worker, spec, attempt, session) in pending {
            let context = run_context(tx, &spec, attempt)?;
            self.send_run(&worker, &spec, attempt, session, self.cost_mode, context);
        }
        Ok(())
    }

    /// Run orders acknowledged by JetStream.
    pub fn dispatched(
        &mut self,
        tx: &BoardTx<'_>,
        done: &[(TaskId, u32)],
    ) -> Result<(), BoardError> {
        for (id, attempt) in done {
            let current = self.tasks.update(id, |a| {
                let cur = a.attempt == *attempt;
                if cur {
                    a.dispatched = true;
                }
                cur
            });
            if current == Some(true) {
                tx.set_dispatched(id, *attempt)?;
            }
        }
        Ok(())
    }
}

/// What a run order carries from the board besides the task.
struct RunContext {
    /// What the task's earlier attempts used (its spend ceiling is per task).
    spent: broker::messages::Usage,
    /// The share of the session a continued task continues, if shared.
    continue_from: Option<SharedTranscript>,
}

/// The run context of `spec`'s `attempt`: nothing spent before a first
/// attempt (without asking the board), and the share of the continued
/// session, if any.
fn run_context(tx: &BoardTx<'_>, spec: &TaskSpec, attempt: u32) -> Result<RunContext, BoardError> {
    let spent = match attempt {
        0 | 1 => Default::default(),
        _ => tx.usage_before(&spec.id, attempt)?,
    };
    let continue_from = match &spec.continue_session {
        Some(session) => tx.session_home(session)?.and_then(|h| h.share),
        None => None,
    };
    Ok(RunContext {
        spent,
        continue_from,
    })
}
