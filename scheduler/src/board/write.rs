//! Writes to the board, inside one transaction per batch of work.

use broker::messages::event::ParkReason;
use broker::messages::{Outcome, SharedTranscript, TaskSpec, TaskState, Usage};
use broker::{SessionId, TaskId, WorkerId};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::BoardError;

/// A non-terminal task as the service keeps it in memory.
#[derive(Debug, Clone)]
pub struct ActiveRow {
    pub spec: TaskSpec,
    pub state: TaskState,
    pub attempt: u32,
    pub worker: Option<WorkerId>,
    pub session: Option<SessionId>,
    pub incarnation: Option<uuid::Uuid>,
    pub cancel_requested: bool,
    pub not_before_ms: Option<i64>,
    pub dispatched: bool,
    /// Attempts that reached a worker and ran or ended (counted against
    /// the retry policy); unstarted assignments moved elsewhere do not count.
    pub tries: u32,
    /// Where a continued session's transcript is.
    pub home: Option<SessionHome>,
}

/// The worker that ran a session (and holds its transcript), and the share
/// of that transcript in the transcript store, if recorded and unexpired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHome {
    pub worker: WorkerId,
    pub share: Option<SharedTranscript>,
}

/// How an attempt ended, as its worker reported it.
#[derive(Debug, Clone, Copy)]
pub struct AttemptEnd<'a> {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub reason: Option<&'a str>,
    pub usage: Option<&'a Usage>,
}

/// A running attempt's live session summary, from a progress report.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub pane: &'a str,
    pub last_event_ms: i64,
    pub current_tool: Option<&'a str>,
    pub usage: &'a Usage,
    pub escalation: Option<&'a broker::messages::Escalated>,
}

pub struct BoardTx<'a> {
    tx: Transaction<'a>,
}

pub(super) fn state_str(state: TaskState) -> &'static str {
    state.as_str()
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn outcome_str(outcome: Outcome) -> String {
    json(&outcome).trim_matches('"').to_string()
}

impl<'a> BoardTx<'a> {
    pub(super) fn new(tx: Transaction<'a>) -> Self {
        BoardTx { tx }
    }

    pub fn commit(self) -> Result<(), BoardError> {
        Ok(self.tx.commit()?)
    }

    /// Stores a new task in `state`. Returns false (and changes nothing) when
    /// the id exists already: a retried submit.
    pub fn insert_task(
        &self,
        spec: &TaskSpec,
        state: TaskState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool, BoardError> {
        let inserted = self.tx.prepare_cached(
            "INSERT INTO tasks (id, title, state, agent, capabilities, spec, reason, created_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT(id) DO NOTHING")?.execute(params![
                spec.id.to_string(),
                spec.title,
                state_str(state),
                spec.agent.as_str(),
                spec.capabilities.joined(),
                json(spec),
                reason,
                now
            ])?;
        if inserted == 1 {
            self.transition(&spec.id, state, 0, reason, now)?;
        }
        Ok(inserted == 1)
    }

    fn transition(
        &self,
        task: &TaskId,
        state: TaskState,
        attempt: u32,
        reason: Option<&str>,
        now: i64,
    ) -> Result<(), BoardError> {
        self.tx
            .prepare_cached(
                "INSERT INTO transitions (task_id, state, attempt, at_ms, reason)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                task.to_string(),
                state_str(state),
                attempt,
                now,
                reason
            ])?;
        Ok(())
    }

    /// Moves a task to `state`, recording the transition.
    pub fn set_state(
        &self,
        task: &TaskId,
        state: TaskState,
        attempt: u32,
        reason: Option<&str>,
        now: i64,
    ) -> Result<(), BoardError> {
        self.tx
            .prepare_cached(
                "UPDATE tasks SET state = ?2, attempt = ?3, reason = ?4, updated_at_ms = ?5,
                 parked = CASE WHEN ?2 = 'queued' THEN parked ELSE NULL END
             WHERE id = ?1",
            )?
            .execute(params![
                task.to_string(),
                state_str(state),
                attempt,
                reason,
                now
            ])?;
        self.transition(task, state, attempt, reason, now)
    }

    /// Records why a queued task is not placed (no transition row).
    pub fn set_parked(&self, task: &TaskId, parked: Option<&ParkReason>) -> Result<(), BoardError> {
        self.tx
            .prepare_cached("UPDATE tasks SET parked = ?2 WHERE id = ?1")?
            .execute(params![task.to_string(), parked.map(json)])?;
        Ok(())
    }

    /// Places attempt `attempt` on `worker`: the task becomes `assigned`.
    pub fn assign(
        &self,
        task: &TaskId,
        attempt: u32,
        worker: &WorkerId,
        session: &SessionId,
        now: i64,
    ) -> Result<(), BoardError> {
        self.tx
            .prepare_cached(
                "UPDATE tasks SET worker = ?2, dispatched = 0, not_before_ms = NULL WHERE id = ?1",
            )?
            .execute(params![task.to_string(), worker.as_str()])?;
        self.tx.prepare_cached(
            "INSERT INTO attempts (task_id, attempt, worker, session, assigned_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![task.to_string(), attempt, worker.as_str(), session.to_string(), now])?;
        self.set_state(task, TaskState::Assigned, attempt, None, now)
    }

    /// The run order of the current attempt was accepted by JetStream.
    pub fn set_dispatched(&self, task: &TaskId, attempt: u32) -> Result<(), BoardError> {
        self.tx
            .prepare_cached("UPDATE tasks SET dispatched = 1 WHERE id = ?1 AND attempt = ?2")?
            .execute(params![task.to_string(), attempt])?;
        Ok(())
    }

    pub fn attempt_started(
        &self,
        task: &TaskId,
        attempt: u32,
        incarnation: &uuid::Uuid,
        now: i64,
    ) -> Result<(), BoardError> {
        self.tx.prepare_cached(
            "UPDATE attempts SET started_at_ms = ?3, incarnation = ?4, pane = 'starting' WHERE task_id = ?1 AND attempt = ?2")?.execute(params![task.to_string(), attempt, now, incarnation.to_string()])?;
        self.set_state(task, TaskState::Running, attempt, None, now)
    }

    /// Records how the current attempt ended.
    pub fn attempt_ended(
        &self,
        task: &TaskId,
        attempt: u32,
        end: &AttemptEnd<'_>,
        now: i64,
    ) -> Result<(), BoardError> {
        self.tx
            .prepare_cached(
                "UPDATE attempts SET ended_at_ms = ?3, outcome = ?4, exit_code = ?5, reason = ?6,
                 usage = COALESCE(?7, usage), current_tool = NULL
             WHERE task_id = ?1 AND attempt = ?2",
            )?
            .execute(params![
                task.to_string(),
                attempt,
                now,
                outcome_str(end.outcome),
                end.exit_code,
                end.reason,
                end.usage.map(json)
            ])?;
        Ok(())
    }

    /// The summed usage of `task`'s attempts before `attempt` (its spend
    /// ceiling is per task).
    pub fn usage_before(&self, task: &TaskId, attempt: u32) -> Result<Usage, BoardError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT usage FROM attempts WHERE task_id = ?1 AND attempt < ?2 AND usage IS NOT NULL",
        )?;
        let rows = stmt.query_map(params![task.to_string(), attempt], |r| {
            r.get::<_, String>(0)
        })?;
        let mut total = Usage::default();
        for row in rows {
            if let Ok(u) = serde_json::from_str::<Usage>(&row?) {
                total = total.plus(&u);
            }
        }
        Ok(total)
    }

    /// Closes an attempt whose worker was lost: it ends now, with the reason,
    /// and no outcome, which a late report of its worker may still fill.
    pub fn attempt_lost(
        &self,
        task: &TaskId,
        attempt: u32,
        reason: &str,
        now: i64,
    ) -> Result<(), BoardError> {
        self.tx
            .prepare_cached(
                "UPDATE attempts SET ended_at_ms = ?3, reason = ?4, current_tool = NULL
                 WHERE task_id = ?1 AND attempt = ?2 AND ended_at_ms IS NULL",
            )?
            .execute(params![task.to_string(), attempt, now, reason])?;
        Ok(())
    }

    /// Records how a no-longer-current attempt ended, when its own worker
    /// reports it late (after a lease ended or the task moved on). The
    /// task is not changed; only the attempt's history is completed.
    pub fn late_attempt_ended(
        &self,
        task: &TaskId,
        attempt: u32,
        worker: &WorkerId,
        end: &AttemptEnd<'_>,
        now: i64,
    ) -> Result<(), BoardError> {
        self.tx
            .prepare_cached(
                "UPDATE attempts SET ended_at_ms = COALESCE(ended_at_ms, ?4), outcome = ?5, exit_code = ?6,
                     reason = ?7, usage = COALESCE(?8, usage), current_tool = NULL
                 WHERE task_id = ?1 AND attempt = ?2 AND worker = ?3 AND outcome IS NULL",
            )?
            .execute(params![
                task.to_string(),
                attempt,
                worker.as_str(),
                now,
                outcome_str(end.outcome),
                end.exit_code,
                end.reason,
                end.usage.map(json)
            ])?;
        Ok(())
    }

    pub fn attempt_progress(
        &self,
        task: &TaskId,
        attempt: u32,
        p: &Progress<'_>,
    ) -> Result<(), BoardError> {
        self.tx
            .prepare_cached(
                "UPDATE attempts SET pane = ?3, last_event_ms = ?4, current_tool = ?5, usage = ?6,
                     escalation = COALESCE(?7, escalation)
             WHERE task_id = ?1 AND attempt = ?2",
            )?
            .execute(params![
                task.to_string(),
                attempt,
                p.pane,
                p.last_event_ms,
                p.current_tool,
                json(p.usage),
                p.escalation.map(json)
            ])?;
        Ok(())
    }

    pub fn set_cancel_requested(&self, task: &TaskId, now: i64) -> Result<(), BoardError> {
        self.tx
            .prepare_cached(
                "UPDATE tasks SET cancel_requested = 1, updated_at_ms = ?2 WHERE id = ?1",
            )?
            .execute(params![task.to_string(), now])?;
        Ok(())
    }

    /// Queues a task again for its next attempt, not before `not_before_ms`.
    pub fn requeue(
        &self,
        task: &TaskId,
        attempt: u32,
        not_before_ms: Option<i64>,
        reason: &str,
        now: i64,
    ) -> Result<(), BoardError> {
        self.tx
            .prepare_cached(
                "UPDATE tasks SET worker = NULL, dispatched = 0, not_before_ms = ?2 WHERE id = ?1",
            )?
            .execute(params![task.to_string(), not_before_ms])?;
        self.set_state(task, TaskState::Queued, attempt, Some(reason), now)
    }

    /// Where `session`'s transcript is, if the session exists (an expired
    /// share counts as none).
    pub fn session_home(&self, session: &SessionId) -> Result<Option<SessionHome>, BoardError> {
        session_home(&self.tx, session)
    }

    /// Forgets every recorded share of `session` (it proved unusable).
    pub fn forget_share(&self, session: &SessionId) -> Result<(), BoardError> {
        self.tx
            .prepare_cached("UPDATE attempts SET transcript = NULL WHERE session = ?1")?
            .execute([session.to_string()])?;
        Ok(())
    }

    /// Records that the attempt's transcript was shared; false (nothing
    /// recorded) when `shared` names another session than the attempt's.
    pub fn transcript_shared(
        &self,
        task: &TaskId,
        attempt: u32,
        shared: &SharedTranscript,
    ) -> Result<bool, BoardError> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE attempts SET transcript = ?4 WHERE task_id = ?1 AND attempt = ?2 AND session = ?3",
            )?
            .execute(params![
                task.to_string(),
                attempt,
                shared.session.to_string(),
                json(shared)
            ])?;
        Ok(n == 1)
    }

    /// Pins a continued session's task to the worker holding its transcript.
    pub fn set_home(&self, task: &TaskId, worker: &WorkerId) -> Result<(), BoardError> {
        self.tx
            .prepare_cached("UPDATE tasks SET home_worker = ?2 WHERE id = ?1")?
            .execute(params![task.to_string(), worker.as_str()])?;
        Ok(())
    }

    /// The state of a task, if it exists.
    pub fn task_state(&self, task: &TaskId) -> Result<Option<TaskState>, BoardError> {
        let state: Option<String> = self
            .tx
            .query_row(
                "SELECT state FROM tasks WHERE id = ?1",
                [task.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(state.and_then(|s| s.parse().ok()))
    }
}

/// Loads every non-terminal task.
pub(super) fn load_active(conn: &Connection) -> Result<Vec<ActiveRow>, BoardError> {
    let mut stmt = conn.prepare(
        "SELECT t.id, t.spec, t.state, t.attempt, t.worker, t.cancel_requested, t.not_before_ms, t.dispatched,
                a.session, a.incarnation,
                (SELECT COUNT(*) FROM attempts x WHERE x.task_id = t.id
                     AND (x.started_at_ms IS NOT NULL OR x.outcome IS NOT NULL)),
                t.home_worker
         FROM tasks t LEFT JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt
         WHERE t.state IN ('queued', 'assigned', 'running')
         ORDER BY t.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, u32>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, bool>(5)?,
            r.get::<_, Option<i64>>(6)?,
            r.get::<_, bool>(7)?,
            r.get::<_, Option<String>>(8)?,
            r.get::<_, Option<String>>(9)?,
            r.get::<_, u32>(10)?,
            r.get::<_, Option<String>>(11)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            id,
            spec,
            state,
            attempt,
            worker,
            cancel_requested,
            not_before_ms,
            dispatched,
            session,
            incarnation,
            tries,
            home,
        ) = row?;
        let corrupt = |detail: String| BoardError::Corrupt {
            task: id.clone(),
            detail,
        };
        let spec: TaskSpec =
            serde_json::from_str(&spec).map_err(|e| corrupt(format!("spec: {e}")))?;
        let state: TaskState = state.parse().map_err(|e| corrupt(format!("{e}")))?;
        let worker = worker
            .map(|w| WorkerId::parse(&w))
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?;
        out.push(ActiveRow {
            state,
            attempt,
            worker,
            session: session.and_then(|s| s.parse().ok()),
            incarnation: incarnation.and_then(|s| s.parse().ok()),
            cancel_requested,
            not_before_ms,
            dispatched,
            tries,
            home: match (home, &spec.continue_session) {
                (Some(_), Some(session)) => session_home(conn, session)?,
                _ => None,
            },
            spec,
        });
    }
    Ok(out)
}

/// Shares older than this (by their attempt's end) are treated as gone: the
/// transcript store keeps an object `transcripts_max_age`, and a day's
/// margin covers the gap between the put and the report.
fn share_cutoff_ms() -> i64 {
    let keep = broker::provision::ProvisionConfig::default().transcripts_max_age;
    let margin = std::time::Duration::from_secs(24 * 3600);
    broker::time_ms::now_ms() - keep.saturating_sub(margin).as_millis() as i64
}

fn session_home(conn: &Connection, session: &SessionId) -> Result<Option<SessionHome>, BoardError> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached(
            "SELECT worker, CASE WHEN ended_at_ms >= ?2 THEN transcript END
             FROM attempts WHERE session = ?1 LIMIT 1",
        )?
        .query_row(params![session.to_string(), share_cutoff_ms()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(row.and_then(|(w, share)| {
        WorkerId::parse(&w).ok().map(|worker| SessionHome {
            worker,
            share: share.and_then(|t| serde_json::from_str(&t).ok()),
        })
    }))
}
