//! Read-only queries behind `list-tasks`, `show-task`, `status` and
//! `snapshot`, on a connection of their own.

use std::collections::BTreeMap;
use std::path::Path;

use broker::messages::api::{
    AttemptRecord, ListTasksReply, ListTasksRequest, RunningAttempt, TaskDetail, TaskSummary,
    Transition, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT,
};
use broker::messages::{Outcome, TaskState};
use broker::{TagSet, TaskId, WorkerId};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::BoardError;

pub struct BoardReader {
    conn: Connection,
}

const SUMMARY_COLUMNS: &str =
    "id, title, state, agent, capabilities, attempt, worker, parked, reason, created_at_ms, updated_at_ms";

fn summary(row: &Row<'_>) -> rusqlite::Result<TaskSummary> {
    let id: String = row.get(0)?;
    let state: String = row.get(2)?;
    let caps: String = row.get(4)?;
    let worker: Option<String> = row.get(6)?;
    let parked: Option<String> = row.get(7)?;
    Ok(TaskSummary {
        task_id: id.parse().unwrap_or_default(),
        title: row.get(1)?,
        state: state.parse().unwrap_or(TaskState::Failed),
        agent: row.get(3)?,
        capabilities: if caps.is_empty() {
            TagSet::new()
        } else {
            TagSet::parse_lists([caps.as_str()]).unwrap_or_default()
        },
        attempt: row.get(5)?,
        worker: worker.and_then(|w| WorkerId::parse(&w).ok()),
        parked: parked.and_then(|p| serde_json::from_str(&p).ok()),
        reason: row.get(8)?,
        created_at_ms: row.get(9)?,
        updated_at_ms: row.get(10)?,
    })
}

fn attempt_record(row: &Row<'_>) -> rusqlite::Result<AttemptRecord> {
    attempt_record_at(row, 0)
}

/// An [`AttemptRecord`] from [`ATTEMPT_COLUMNS`] starting at column `base`.
fn attempt_record_at(row: &Row<'_>, base: usize) -> rusqlite::Result<AttemptRecord> {
    let col = |i: usize| base + i;
    let worker: String = row.get(col(1))?;
    let session: String = row.get(col(2))?;
    let outcome: Option<String> = row.get(col(6))?;
    let json = |i: usize| row.get::<_, Option<String>>(col(i));
    Ok(AttemptRecord {
        attempt: row.get(col(0))?,
        worker: WorkerId::parse(&worker).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                col(1),
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })?,
        session: session.parse().unwrap_or_default(),
        assigned_at_ms: row.get(col(3))?,
        started_at_ms: row.get(col(4))?,
        ended_at_ms: row.get(col(5))?,
        outcome: outcome.and_then(|o| serde_json::from_str::<Outcome>(&format!("\"{o}\"")).ok()),
        exit_code: row.get(col(7))?,
        reason: row.get(col(8))?,
        pane: row.get(col(9))?,
        last_event_ms: row.get(col(10))?,
        current_tool: row.get(col(11))?,
        usage: json(12)?.and_then(|u| serde_json::from_str(&u).ok()),
        escalation: json(13)?.and_then(|e| serde_json::from_str(&e).ok()),
        transcript: json(14)?.and_then(|t| serde_json::from_str(&t).ok()),
    })
}

const ATTEMPT_COLUMNS: &str = "attempt, worker, session, assigned_at_ms, started_at_ms, ended_at_ms, outcome, exit_code, reason, pane, last_event_ms, current_tool, usage, escalation, transcript";

impl BoardReader {
    /// Opens a read-only connection to an existing board.
    pub fn open(path: &Path) -> Result<BoardReader, BoardError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| BoardError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "cache_size", -8_000)?;
        Ok(BoardReader { conn })
    }

    /// One page of tasks, oldest first, optionally of one state.
    pub fn list(&self, req: &ListTasksRequest) -> Result<ListTasksReply, BoardError> {
        let limit = req
            .limit
            .unwrap_or(LIST_DEFAULT_LIMIT)
            .clamp(1, LIST_MAX_LIMIT);
        let after = req.after.map(|a| a.to_string()).unwrap_or_default();
        let sql = match req.status {
            Some(_) => format!(
                "SELECT {SUMMARY_COLUMNS} FROM tasks WHERE state = ?1 AND id > ?2 ORDER BY state, id LIMIT ?3"
            ),
            None => format!("SELECT {SUMMARY_COLUMNS} FROM tasks WHERE ?1 IS NULL AND id > ?2 ORDER BY id LIMIT ?3"),
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![req.status.map(|s| s.as_str()), after, limit + 1],
            summary,
        )?;
        let mut tasks = rows.collect::<Result<Vec<_>, _>>()?;
        let next = if tasks.len() > limit as usize {
            tasks.truncate(limit as usize);
            tasks.last().map(|t| t.task_id)
        } else {
            None
        };
        Ok(ListTasksReply { tasks, next })
    }

    /// Everything about one task.
    pub fn detail(&self, task: &TaskId) -> Result<Option<TaskDetail>, BoardError> {
        let id = task.to_string();
        let row = self
            .conn
            .query_row(
                &format!("SELECT {SUMMARY_COLUMNS}, spec FROM tasks WHERE id = ?1"),
                [&id],
                |r| Ok((summary(r)?, r.get::<_, String>(11)?)),
            )
            .optional()?;
        let Some((summary, spec)) = row else {
            return Ok(None);
        };
        let spec = serde_json::from_str(&spec).map_err(|e| BoardError::Corrupt {
            task: id.clone(),
            detail: e.to_string(),
        })?;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task_id = ?1 ORDER BY attempt"
        ))?;
        let attempts = stmt
            .query_map([&id], attempt_record)?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT state, attempt, at_ms, reason FROM transitions WHERE task_id = ?1 ORDER BY id",
        )?;
        let transitions = stmt
            .query_map([&id], |r| {
                let state: String = r.get(0)?;
                Ok(Transition {
                    state: state.parse().unwrap_or(TaskState::Failed),
                    attempt: r.get(1)?,
                    at_ms: r.get(2)?,
                    reason: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(TaskDetail {
            summary,
            spec,
            attempts,
            transitions,
            trimmed: false,
            omitted: None,
        }))
    }

    /// Tasks per state (kept by triggers, so this is cheap on any board).
    pub fn counts(&self) -> Result<BTreeMap<TaskState, u64>, BoardError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, n FROM state_counts WHERE n > 0")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (state, n) = row?;
            if let Ok(state) = state.parse() {
                out.insert(state, n.max(0) as u64);
            }
        }
        Ok(out)
    }

    /// Running attempts with their live session summary.
    pub fn running(&self) -> Result<Vec<RunningAttempt>, BoardError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT t.id, t.title, {} FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt
             WHERE t.state = 'running' ORDER BY t.id LIMIT 1000",
            ATTEMPT_COLUMNS
                .split(", ")
                .map(|c| format!("a.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
        let rows = stmt.query_map([], |r| {
            let id: String = r.get(0)?;
            let title: String = r.get(1)?;
            // attempt columns start at index 2
            let record = attempt_record_at(r, 2)?;
            Ok(RunningAttempt {
                task_id: id.parse().unwrap_or_default(),
                title,
                record,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
