//! Cancels: an operator's cancel of a task, and the cancel orders that
//! fence stale runs (attempts no longer current that a worker still runs).

use broker::messages::api::{ApiError, ApiErrorKind};
use broker::messages::work::{CancelOrder, WorkItem};
use broker::messages::TaskState;
use broker::{TaskId, WorkerId};

use crate::board::{BoardError, BoardTx};

use super::core::Core;

impl Core {
    /// Sends a cancel order to a stale run, once.
    pub(super) fn fence(&mut self, worker: &WorkerId, task: TaskId, attempt: u32, reason: &str) {
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
}

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Api(ApiError),
    #[error(transparent)]
    Board(#[from] BoardError),
}
