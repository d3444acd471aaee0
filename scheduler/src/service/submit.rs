//! Submissions: a new task is validated, stored queued and announced; a
//! duplicate (same id) changes nothing and answers the stored state; one
//! that breaks a rule is stored `failed` when it came through the intake.
//! An intake submit's task id is its subject's: a payload that is JSON but
//! not a valid spec (wrong type, bad tag, other `id`, other version) is
//! stored `failed` under that id with the reason naming the field; only a
//! payload that is not JSON at all is dropped.

use broker::messages::api::REPLY_TEXT_BYTES;
use broker::messages::{decode, TaskSpec, TaskSpecError, TaskState};
use broker::TaskId;

use crate::board::{BoardError, BoardTx};
use crate::placement::Home;

use super::core::Core;
use super::state::Active;

impl Core {
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

    /// Applies a submit read from the intake on `colibri.task.<subject_id>.submit`.
    /// Returns false for a payload that is not JSON (terminated, not stored).
    pub fn submit_intake(
        &mut self,
        tx: &BoardTx<'_>,
        subject_id: TaskId,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<bool, BoardError> {
        let spec = match decode::<TaskSpec>(payload) {
            Ok(spec) => spec,
            Err(error) => {
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
                    self.count("malformed_submissions");
                    tracing::warn!(task_id = %subject_id, %error, "malformed submission dropped");
                    return Ok(false);
                };
                // Regression: JSON that broke a type rule was acknowledged
                // and vanished; it is stored failed under its subject's id.
                self.count("invalid_submissions");
                tracing::warn!(task_id = %subject_id, %error, "submission rejected");
                let spec = TaskSpec::salvage(subject_id, &value);
                self.reject_submission(tx, &spec, &error.to_string(), now_ms)?;
                return Ok(true);
            }
        };
        let result = match spec.check_subject_id(&subject_id) {
            Ok(()) => self.submit(tx, spec.clone(), now_ms),
            Err(rule) => Err(SubmitError::Invalid(rule)),
        };
        match result {
            Ok(_) => Ok(true),
            Err(SubmitError::Invalid(rule)) => {
                self.count("invalid_submissions");
                tracing::warn!(task_id = %subject_id, error = %rule, "submission rejected");
                let mut stored = spec;
                stored.id = subject_id;
                self.reject_submission(tx, &stored, &rule.to_string(), now_ms)?;
                Ok(true)
            }
            Err(SubmitError::Board(e)) => Err(e),
        }
    }

    /// Stores a submission that broke a rule as `failed`, so the submitter
    /// sees why (intake path only: the request path answers with the error).
    /// Its texts are kept trimmed: a refused spec may be megabytes.
    pub fn reject_submission(
        &mut self,
        tx: &BoardTx<'_>,
        spec: &TaskSpec,
        why: &str,
        now_ms: i64,
    ) -> Result<(), BoardError> {
        let reason = format!("rejected at intake: {why}");
        let spec = spec.trimmed(REPLY_TEXT_BYTES);
        if tx.insert_task(&spec, TaskState::Failed, Some(&reason), now_ms)? {
            self.emit(&spec.id, None, TaskState::Failed, Some(&reason), now_ms);
        }
        Ok(())
    }
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] TaskSpecError),
    #[error(transparent)]
    Board(#[from] BoardError),
}
