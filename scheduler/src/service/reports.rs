//! Workers' reports: `started`, `progress` and `finished` for the current
//! (task, attempt) move the task on; a report for any other attempt is
//! stale and changes nothing but the attempt's own record (and fences the
//! stale run if it shows it alive).

use broker::messages::{Outcome, Report, ReportBody, SharedTranscript, TaskState};
use broker::TaskId;

use crate::board::{AttemptEnd, BoardError, BoardTx};

use super::core::Core;

impl Core {
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

    /// Records a shared transcript; the tasks continuing its session that
    /// wait for it are judged again (they may now run elsewhere).
    pub(super) fn transcript_shared(
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
