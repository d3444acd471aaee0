//! The scheduler's decisions, free of I/O: each handler changes the board
//! inside the caller's transaction, updates the in-memory view, and queues
//! what must go out (orders, events, purges) in the [`Outbox`], which the
//! service sends only after the transaction commits.
//!
//! Fencing: the pair (task, attempt) identifies one run. A report for any
//! other attempt, or from another worker, changes nothing; if it shows the
//! stale run is alive, that run is sent a cancel order.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use broker::cost_mode::CostMode;
use broker::messages::api::{ApiError, ApiErrorKind, WorkerStatus};
use broker::messages::event::ParkReason;
use broker::messages::work::{CancelOrder, RunOrder, WorkItem, WorkMessage};
use broker::messages::{
    encode, Heartbeat, Outcome, Report, ReportBody, SharedTranscript, TaskEvent, TaskSpec,
    TaskSpecError, TaskState, WorkerEvent, WorkerState,
};
use broker::{subjects, SessionId, TaskId, WorkerId};
use bytes::Bytes;

use crate::board::{AttemptEnd, BoardError, BoardTx};
use crate::fleet::{Fleet, PresenceChange};
use crate::placement::{place, Home, WorkerView};

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
    fenced: HashSet<(TaskId, u32)>,
    /// The fleet changed (joined, left, new tags or slots): every queued
    /// task is judged again.
    fleet_changed: bool,
    /// A slot came free: waiting tasks are placed until the slots are taken.
    slots_freed: bool,
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
            slots_freed: false,
            hosts: None,
        }
    }

    /// Whether a heartbeat received on `subject` is believed; a refused one
    /// is logged and counted, and changes nothing.
    pub fn admit_heartbeat(&mut self, subject: &str, beat: &Heartbeat) -> bool {
        match crate::claims::check_heartbeat(subject, beat, self.hosts.as_ref()) {
            Ok(()) => true,
            Err(error) => {
                self.count(error.counter());
                tracing::warn!(worker = %beat.worker, subject, %error, "heartbeat refused");
                false
            }
        }
    }

    pub fn count(&mut self, what: &'static str) {
        *self.counters.entry(what).or_default() += 1;
    }

    /// Makes the next pass judge every queued task again.
    pub fn mark_fleet_changed(&mut self) {
        self.fleet_changed = true;
    }

    fn emit(
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

    fn order(
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

    /// Accepts a submission. Returns whether it was new and its state.
    pub fn submit(
        &mut self,
        tx: &BoardTx<'_>,
        spec: TaskSpec,
        now_ms: i64,
    ) -> Result<(bool, TaskState), SubmitError> {
        spec.validate()?;
        let id = spec.id;
        // A continued session runs where its transcript is; never from nothing.
        let home = match &spec.continue_session {
            Some(session) => match tx.session_home(session)? {
                Some(h) => Some(Home {
                    session: *session,
                    shared: h.share.is_some(),
                    worker: h.worker,
                }),
                None if tx.task_state(&id)?.is_some() => None,
                None => {
                    return Err(SubmitError::Invalid(TaskSpecError::Invalid {
                        field: "continue_session",
                        rule: format!("no session {session} on the board to continue"),
                    }))
                }
            },
            None => None,
        };
        if !tx.insert_task(&spec, TaskState::Queued, None, now_ms)? {
            let state = match self.tasks.get(&id) {
                Some(a) => a.state,
                None => tx.task_state(&id)?.unwrap_or(TaskState::Queued),
            };
            self.count("duplicate_submissions");
            return Ok((false, state));
        }
        tracing::info!(task_id = %id, title = %spec.title, capabilities = %spec.capabilities, "task queued");
        let mut active = Active::new(spec);
        if let Some(home) = home {
            tx.set_home(&id, &home.worker)?;
            active.needs.home = Some(home);
        }
        self.emit(&id, Some(&active), TaskState::Queued, None, now_ms);
        self.tasks.insert(active);
        // A new task is fresh: the next pass judges it.
        Ok((true, TaskState::Queued))
    }

    /// Records a shared transcript; the tasks continuing its session that
    /// wait for it are judged again (they may now run elsewhere).
    fn transcript_shared(
        &mut self,
        tx: &BoardTx<'_>,
        task: &TaskId,
        attempt: u32,
        shared: &SharedTranscript,
    ) -> Result<(), BoardError> {
        if !tx.transcript_shared(task, attempt, shared)? {
            self.count("transcripts_not_recorded");
            tracing::warn!(task_id = %task, attempt, session = %shared.session,
                "a shared transcript names another session than its attempt's; ignored");
            return Ok(());
        }
        tracing::debug!(task_id = %task, attempt, session = %shared.session, bytes = shared.bytes,
            "transcript shared");
        for waiting in self.tasks.continuing(&shared.session) {
            self.tasks.update(&waiting, |a| {
                if let Some(h) = a.needs.home.as_mut() {
                    h.shared = true;
                }
                a.parked = None;
            });
        }
        Ok(())
    }

    /// Stores a submission that broke a rule as `failed`, so the submitter
    /// sees why (intake path only: the request path answers with the error).
    pub fn reject_submission(
        &mut self,
        tx: &BoardTx<'_>,
        spec: &TaskSpec,
        why: &str,
        now_ms: i64,
    ) -> Result<(), BoardError> {
        let reason = format!("rejected at intake: {why}");
        if tx.insert_task(spec, TaskState::Failed, Some(&reason), now_ms)? {
            self.emit(&spec.id, None, TaskState::Failed, Some(&reason), now_ms);
        }
        Ok(())
    }

    /// Ends a task in a terminal state.
    fn finish(
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
    fn retry_or_fail(
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

    fn requeue(
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

    /// Sends a cancel order to a stale run, once.
    fn fence(&mut self, worker: &WorkerId, task: TaskId, attempt: u32, reason: &str) {
        if self.fenced.insert((task, attempt)) {
            tracing::warn!(task_id = %task, attempt, worker = %worker, reason, "fencing stale attempt");
            self.count("stale_attempts_fenced");
            self.order(
                worker,
                WorkItem::Cancel(CancelOrder {
                    task_id: task,
                    attempt,
                    reason: reason.to_string(),
                }),
                format!("cancel:{task}:{attempt}"),
                None,
            );
        }
    }

    /// Applies a worker's report.
    pub fn report(
        &mut self,
        tx: &BoardTx<'_>,
        report: Report,
        now_ms: i64,
    ) -> Result<(), BoardError> {
        let id = report.task_id;
        let current = self
            .tasks
            .get(&id)
            .filter(|a| a.attempt == report.attempt && a.worker.as_ref() == Some(&report.worker))
            .cloned();
        let Some(a) = current else {
            let other_worker = self.tasks.get(&id).is_some_and(|a| {
                a.attempt == report.attempt
                    && a.worker.as_ref().is_some_and(|w| *w != report.worker)
            });
            if other_worker {
                // The attempt is placed on another worker: this report's
                // sender is not who it claims, or is badly confused. It is
                // not fenced (the named worker never ran this attempt).
                self.count("reports_worker_mismatch");
                tracing::warn!(task_id = %id, attempt = report.attempt, worker = %report.worker, kind = report.body.kind(), "report names a worker the attempt is not placed on; ignored");
                return Ok(());
            }
            self.count("stale_reports");
            tracing::debug!(task_id = %id, attempt = report.attempt, worker = %report.worker, kind = report.body.kind(), "stale report ignored");
            if let ReportBody::Finished {
                outcome,
                exit_code,
                reason,
                transcript,
                ..
            } = &report.body
            {
                if let Some(shared) = transcript {
                    self.transcript_shared(tx, &id, report.attempt, shared)?;
                }
                let end = AttemptEnd {
                    outcome: *outcome,
                    exit_code: *exit_code,
                    reason: reason.as_deref(),
                    usage: None,
                };
                tx.late_attempt_ended(&id, report.attempt, &report.worker, &end, now_ms)?;
            } else {
                self.fence(
                    &report.worker,
                    id,
                    report.attempt,
                    "attempt is no longer current",
                );
            }
            return Ok(());
        };
        match report.body {
            ReportBody::Started { .. } => {
                if a.state != TaskState::Assigned {
                    return Ok(()); // duplicate
                }
                if let Some(w) = self.fleet.get(&report.worker) {
                    if w.beat.incarnation != report.incarnation && w.beat.at_ms > report.at_ms {
                        // Started by a worker process that has since been replaced.
                        self.tasks.update(&id, |a| a.tries += 1);
                        return self.retry_or_fail(
                            tx,
                            &id,
                            &format!("worker {} restarted", report.worker),
                            false,
                            now_ms,
                        );
                    }
                }
                tx.attempt_started(&id, a.attempt, &report.incarnation, now_ms)?;
                self.tasks.update(&id, |a| {
                    a.state = TaskState::Running;
                    a.incarnation = Some(report.incarnation);
                    a.dispatched = true;
                    a.tries += 1;
                });
                tracing::info!(task_id = %id, attempt = a.attempt, worker = %report.worker, "task running");
                let a = self.tasks.get(&id).cloned();
                self.emit(&id, a.as_ref(), TaskState::Running, None, now_ms);
            }
            ReportBody::Progress {
                pane,
                last_event_ms,
                current_tool,
                usage,
                escalation,
                ..
            } => {
                tx.attempt_progress(
                    &id,
                    a.attempt,
                    &crate::board::Progress {
                        pane: &pane,
                        last_event_ms,
                        current_tool: current_tool.as_deref(),
                        usage: &usage,
                        escalation: escalation.as_ref(),
                    },
                )?;
            }
            ReportBody::Finished {
                outcome,
                exit_code,
                signal,
                reason,
                usage,
                transcript,
            } => {
                if let Some(shared) = &transcript {
                    self.transcript_shared(tx, &id, a.attempt, shared)?;
                }
                let reason = reason.or_else(|| signal.map(|s| format!("killed by signal {s}")));
                let end = AttemptEnd {
                    outcome,
                    exit_code,
                    reason: reason.as_deref(),
                    usage: usage.as_ref(),
                };
                tx.attempt_ended(&id, a.attempt, &end, now_ms)?;
                if a.state == TaskState::Assigned {
                    self.tasks.update(&id, |a| a.tries += 1);
                }
                let reason_ref = reason.as_deref();
                if a.cancel_requested && outcome != Outcome::Succeeded {
                    return self.finish(
                        tx,
                        &id,
                        TaskState::Cancelled,
                        Some("cancelled by operator"),
                        now_ms,
                    );
                }
                // A continuation refused away from its session's worker: the
                // share was unusable there (gone, or replaced in the store).
                // Forget it and requeue without counting the try, so the task
                // waits for the session's own worker instead of failing.
                if outcome == Outcome::Rejected {
                    let away = a
                        .needs
                        .home
                        .as_ref()
                        .filter(|h| h.shared && h.worker != report.worker);
                    if let Some(home) = away {
                        tx.forget_share(&home.session)?;
                        self.count("shares_forgotten");
                        tracing::warn!(task_id = %id, attempt = a.attempt, worker = %report.worker,
                            session = %home.session, reason = reason_ref.unwrap_or(""),
                            "continuation refused away from its session's worker; forgetting the share");
                        self.tasks.update(&id, |a| {
                            a.tries = a.tries.saturating_sub(1);
                            if let Some(h) = a.needs.home.as_mut() {
                                h.shared = false;
                            }
                        });
                        let why = format!("rejected: {}", reason_ref.unwrap_or("refused"));
                        return self.requeue(tx, &id, None, &why, now_ms);
                    }
                }
                match outcome {
                    Outcome::Succeeded => {
                        self.finish(tx, &id, TaskState::Succeeded, reason_ref, now_ms)?
                    }
                    Outcome::Cancelled => {
                        self.finish(tx, &id, TaskState::Cancelled, reason_ref, now_ms)?
                    }
                    Outcome::TimedOut => {
                        self.finish(tx, &id, TaskState::TimedOut, reason_ref, now_ms)?
                    }
                    Outcome::BudgetExceeded => {
                        self.finish(tx, &id, TaskState::BudgetExceeded, reason_ref, now_ms)?
                    }
                    Outcome::Failed if !a.spec.retry.retry_agent_failure => {
                        let why = reason.unwrap_or_else(|| exit_reason(exit_code));
                        self.finish(tx, &id, TaskState::Failed, Some(&why), now_ms)?
                    }
                    Outcome::Failed
                    | Outcome::Interrupted
                    | Outcome::SpawnFailed
                    | Outcome::Rejected => {
                        let why = format!(
                            "{}: {}",
                            outcome_name(outcome),
                            reason.unwrap_or_else(|| exit_reason(exit_code))
                        );
                        self.retry_or_fail(tx, &id, &why, true, now_ms)?
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies a heartbeat.
    pub fn heartbeat(
        &mut self,
        tx: &BoardTx<'_>,
        beat: Heartbeat,
        now: Instant,
        now_ms: i64,
    ) -> Result<(), BoardError> {
        let worker = beat.worker.clone();
        let incarnation = beat.incarnation;
        let running = beat.running.clone();
        let change = self.fleet.observe(beat, now);
        match &change {
            PresenceChange::Joined | PresenceChange::Returned => {
                tracing::info!(worker = %worker, "worker online");
                self.worker_event(&worker, WorkerState::Online, "heartbeat", now_ms);
                self.fleet_changed = true;
            }
            PresenceChange::AdvertChanged => {
                tracing::info!(worker = %worker, "worker advert changed");
                self.fleet_changed = true;
            }
            PresenceChange::Restarted { old } => {
                tracing::info!(worker = %worker, old_incarnation = %old, "worker restarted");
                self.worker_event(&worker, WorkerState::Online, "restarted", now_ms);
                self.fleet_changed = true;
            }
            PresenceChange::Leaving => {
                self.worker_gone(tx, &worker, "worker left", now_ms)?;
                return Ok(());
            }
            PresenceChange::Unchanged => {}
            PresenceChange::FleetFull => {
                self.count("heartbeats_fleet_full");
                tracing::warn!(worker = %worker, "fleet full: heartbeat of a new worker refused");
                return Ok(());
            }
        }
        // Runs started by an earlier process of this worker are gone.
        for id in self.tasks.on_worker(&worker) {
            let lost = self.tasks.get(&id).filter(|a| {
                a.state == TaskState::Running && a.incarnation.is_some_and(|i| i != incarnation)
            });
            if let Some(attempt) = lost.map(|a| a.attempt) {
                let why = format!("worker {worker} restarted during the run");
                tx.attempt_lost(&id, attempt, &why, now_ms)?;
                self.retry_or_fail(tx, &id, &why, false, now_ms)?;
            }
        }
        // Runs the worker reports that are not current: fence them.
        for r in running {
            let current = self
                .tasks
                .get(&r.task_id)
                .is_some_and(|a| a.attempt == r.attempt && a.worker.as_ref() == Some(&worker));
            if !current {
                self.fence(
                    &worker,
                    r.task_id,
                    r.attempt,
                    "attempt is no longer current",
                );
            }
        }
        Ok(())
    }

    fn worker_event(&mut self, worker: &WorkerId, state: WorkerState, reason: &str, now_ms: i64) {
        let event = WorkerEvent {
            v: broker::WIRE_VERSION,
            worker: worker.clone(),
            state,
            reason: reason.to_string(),
            at_ms: now_ms,
        };
        self.outbox.push(Action::Event {
            subject: subjects::worker_state(worker),
            payload: encode(&event),
        });
    }

    /// A worker is offline: its unstarted work is placed again, its running
    /// attempts' leases end and they are retried as new attempts.
    fn worker_gone(
        &mut self,
        tx: &BoardTx<'_>,
        worker: &WorkerId,
        why: &str,
        now_ms: i64,
    ) -> Result<(), BoardError> {
        tracing::warn!(worker = %worker, reason = why, "worker offline");
        self.worker_event(worker, WorkerState::Offline, why, now_ms);
        self.outbox.push(Action::PurgeWork(worker.clone()));
        for id in self.tasks.on_worker(worker) {
            let Some(a) = self.tasks.get(&id) else {
                continue;
            };
            let lost = format!("{why} ({worker})");
            if matches!(a.state, TaskState::Assigned | TaskState::Running) {
                tx.attempt_lost(&id, a.attempt, &lost, now_ms)?;
            }
            match a.state {
                TaskState::Assigned if a.cancel_requested => self.finish(
                    tx,
                    &id,
                    TaskState::Cancelled,
                    Some("cancelled by operator"),
                    now_ms,
                )?,
                TaskState::Assigned => self.requeue(
                    tx,
                    &id,
                    None,
                    &format!("{why} ({worker}) before starting"),
                    now_ms,
                )?,
                TaskState::Running => self.retry_or_fail(
                    tx,
                    &id,
                    &format!("{why} ({worker}) during the run"),
                    false,
                    now_ms,
                )?,
                _ => {}
            }
        }
        self.fleet_changed = true;
        Ok(())
    }

    /// Periodic checks: silent workers, parked deadlines, ended backoffs.
    pub fn tick(&mut self, tx: &BoardTx<'_>, now: Instant, now_ms: i64) -> Result<(), BoardError> {
        for worker in self.fleet.expire(now) {
            self.worker_gone(tx, &worker, "worker silent", now_ms)?;
        }
        let mut expired = Vec::new();
        let mut due = Vec::new();
        for id in self.tasks.queued() {
            if let Some(a) = self.tasks.get(&id) {
                if a.spec.limits.deadline_ms.is_some_and(|d| d <= now_ms) {
                    expired.push(id);
                } else if a.not_before_ms.is_some_and(|t| t <= now_ms) {
                    due.push(id);
                }
            }
        }
        for id in due {
            // Backoff over: fresh again, so the next pass judges it.
            self.tasks.update(&id, |a| {
                a.not_before_ms = None;
                a.parked = None;
            });
        }
        for id in expired {
            self.finish(
                tx,
                &id,
                TaskState::TimedOut,
                Some("still queued at its deadline"),
                now_ms,
            )?;
        }
        Ok(())
    }

    fn views(&self) -> Vec<WorkerView> {
        self.fleet.views(|id| self.tasks.used(id))
    }

    /// Places what it can, oldest first, and records why the rest wait.
    /// After a fleet change every queued task is judged; after a slot came
    /// free, waiting tasks until the free slots are taken; always, the
    /// tasks not judged yet. So a turn costs what changed, not the queue.
    pub fn place_all(&mut self, tx: &BoardTx<'_>, now_ms: i64) -> Result<(), BoardError> {
        let full = std::mem::take(&mut self.fleet_changed);
        let freed = std::mem::take(&mut self.slots_freed);
        if !full && !freed && !self.tasks.has_fresh() {
            return Ok(());
        }
        let mut views = self.views();
        let mut free: u32 = views.iter().filter(|w| w.online).map(|w| w.free()).sum();
        if full {
            for id in self.tasks.queued() {
                self.consider(tx, id, &mut views, &mut free, now_ms)?;
            }
            return Ok(());
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
    fn consider(
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

    fn assign(
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

    /// Operator cancel.
    pub fn cancel(
        &mut self,
        tx: &BoardTx<'_>,
        id: &TaskId,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<TaskState, CommandError> {
        let reason = reason.unwrap_or("cancelled by operator");
        let Some(a) = self.tasks.get(id).cloned() else {
            return match tx.task_state(id)? {
                None => Err(CommandError::Api(ApiError {
                    kind: ApiErrorKind::NotFound,
                    message: format!("task {id} does not exist"),
                })),
                Some(state) => Err(CommandError::Api(ApiError {
                    kind: ApiErrorKind::Conflict,
                    message: format!("task {id} has already ended ({state})"),
                })),
            };
        };
        match a.state {
            TaskState::Queued => {
                self.finish(tx, id, TaskState::Cancelled, Some(reason), now_ms)?;
                Ok(TaskState::Cancelled)
            }
            _ => {
                tx.set_cancel_requested(id, now_ms)?;
                self.tasks.update(id, |a| a.cancel_requested = true);
                if let Some(worker) = a.worker.clone() {
                    if self.fleet.is_online(&worker) {
                        self.order(
                            &worker,
                            WorkItem::Cancel(CancelOrder {
                                task_id: *id,
                                attempt: a.attempt,
                                reason: reason.to_string(),
                            }),
                            format!("cancel:{id}:{}", a.attempt),
                            None,
                        );
                    } else {
                        self.worker_gone(tx, &worker, "worker offline at cancel", now_ms)?;
                    }
                }
                tracing::info!(task_id = %id, attempt = a.attempt, "cancel requested");
                Ok(self.tasks.get(id).map_or(TaskState::Cancelled, |a| a.state))
            }
        }
    }

    /// Workers as `status` shows them.
    pub fn worker_status(&self) -> Vec<WorkerStatus> {
        self.fleet
            .iter()
            .map(|(id, w)| WorkerStatus {
                worker: id.clone(),
                host: w.beat.host.clone(),
                online: w.online,
                tags: w.beat.tags.clone(),
                agents: w.beat.agents.clone(),
                slots: w.beat.slots,
                slots_used: self.tasks.used(id),
                version: w.beat.version.clone(),
                last_seen_ms: w.last_seen_ms,
            })
            .collect()
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Failed => "agent failed",
        Outcome::Interrupted => "interrupted",
        Outcome::SpawnFailed => "spawn failed",
        Outcome::Rejected => "rejected by worker",
        _ => "ended",
    }
}

fn exit_reason(exit_code: Option<i32>) -> String {
    match exit_code {
        Some(code) => format!("exit status {code}"),
        None => "no exit status".to_string(),
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

/// Exponential backoff with jitter: base * 2^(tries-1), times 0.5..1.5, capped.
pub fn backoff_ms(base: u64, tries: u32) -> u64 {
    let exp = base
        .saturating_mul(1u64 << tries.saturating_sub(1).min(16))
        .min(MAX_BACKOFF_MS);
    let jitter: f64 = rand::random_range(0.5..1.5);
    ((exp as f64) * jitter) as u64
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] TaskSpecError),
    #[error(transparent)]
    Board(#[from] BoardError),
}

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Api(ApiError),
    #[error(transparent)]
    Board(#[from] BoardError),
}
