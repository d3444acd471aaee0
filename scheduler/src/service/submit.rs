//! Submissions: a new task is validated, stored queued and announced; a
//! duplicate (same id) changes nothing and answers the stored state; one
//! that breaks a rule is stored `failed` when it came through the intake.

use broker::messages::{TaskSpec, TaskSpecError, TaskState};

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
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] TaskSpecError),
    #[error(transparent)]
    Board(#[from] BoardError),
}
