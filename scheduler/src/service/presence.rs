//! Worker presence: heartbeats (joins, restarts, adverts, runs the worker
//! reports), silence and departures, and the periodic tick that also ends
//! parked deadlines and backoffs.

use std::time::Instant;

use broker::messages::api::WorkerStatus;
use broker::messages::{encode, Heartbeat, TaskState, WorkerEvent, WorkerState};
use broker::{subjects, WorkerId};

use crate::board::{BoardError, BoardTx};
use crate::fleet::PresenceChange;

use super::core::{Action, Core};

impl Core {
    /// Whether a heartbeat received on `subject` is believed; a refused one
    /// is logged and counted, and changes nothing.
    pub fn admit_heartbeat(&mut self, subject: &str, beat: &Heartbeat) -> bool {
        if let Err(error) = beat.validate() {
            if self.count_is_news("invalid_heartbeats") {
                tracing::warn!(worker = %beat.worker, subject, %error, "heartbeat over the advert bounds refused");
            }
            return false;
        }
        match crate::claims::check_heartbeat(subject, beat, self.hosts.as_ref()) {
            Ok(()) => true,
            Err(error) => {
                self.count(error.counter());
                tracing::warn!(worker = %beat.worker, subject, %error, "heartbeat refused");
                false
            }
        }
    }

    /// Counts `what` and says whether this one is worth a log line: the
    /// 1st, 2nd, 4th, 8th... so a flood of refused adverts is logged
    /// without flooding the log.
    fn count_is_news(&mut self, what: &'static str) -> bool {
        self.count(what);
        self.counters[what].is_power_of_two()
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
                self.changed_workers.insert(worker.clone());
            }
            PresenceChange::AdvertChanged => {
                tracing::info!(worker = %worker, "worker advert changed");
                self.changed_workers.insert(worker.clone());
            }
            PresenceChange::Restarted { old } => {
                tracing::info!(worker = %worker, old_incarnation = %old, "worker restarted");
                self.worker_event(&worker, WorkerState::Online, "restarted", now_ms);
                self.changed_workers.insert(worker.clone());
            }
            PresenceChange::Leaving => {
                self.worker_gone(tx, &worker, "worker left", now_ms)?;
                return Ok(());
            }
            PresenceChange::Unchanged => {}
            PresenceChange::FleetFull => {
                if self.count_is_news("heartbeats_fleet_full") {
                    tracing::warn!(worker = %worker, refused = self.counters["heartbeats_fleet_full"],
                        "fleet full: heartbeat of a new worker refused");
                }
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

    pub(super) fn worker_event(
        &mut self,
        worker: &WorkerId,
        state: WorkerState,
        reason: &str,
        now_ms: i64,
    ) {
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
    pub(super) fn worker_gone(
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
