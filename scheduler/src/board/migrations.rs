//! Schema migrations, applied in order and recorded in `PRAGMA user_version`.

use rusqlite::Connection;

use super::BoardError;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: tasks, attempts, transitions, and per-state counts kept by triggers
    // (so `status` on a board of a million tasks reads eight rows).
    r#"
    CREATE TABLE tasks (
        id               TEXT PRIMARY KEY,
        title            TEXT NOT NULL,
        state            TEXT NOT NULL,
        agent            TEXT NOT NULL,
        capabilities     TEXT NOT NULL,
        spec             TEXT NOT NULL,
        attempt          INTEGER NOT NULL DEFAULT 0,
        worker           TEXT,
        parked           TEXT,
        reason           TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        not_before_ms    INTEGER,
        dispatched       INTEGER NOT NULL DEFAULT 0,
        created_at_ms    INTEGER NOT NULL,
        updated_at_ms    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX tasks_by_state ON tasks(state, id);

    CREATE TABLE attempts (
        task_id        TEXT NOT NULL REFERENCES tasks(id),
        attempt        INTEGER NOT NULL,
        worker         TEXT NOT NULL,
        session        TEXT NOT NULL,
        incarnation    TEXT,
        assigned_at_ms INTEGER NOT NULL,
        started_at_ms  INTEGER,
        ended_at_ms    INTEGER,
        outcome        TEXT,
        exit_code      INTEGER,
        reason         TEXT,
        pane           TEXT,
        last_event_ms  INTEGER,
        current_tool   TEXT,
        usage          TEXT,
        PRIMARY KEY (task_id, attempt)
    ) WITHOUT ROWID;

    CREATE TABLE transitions (
        id      INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL,
        state   TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at_ms   INTEGER NOT NULL,
        reason  TEXT
    );
    CREATE INDEX transitions_by_task ON transitions(task_id, id);

    CREATE TABLE state_counts (
        state TEXT PRIMARY KEY,
        n     INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO state_counts(state, n) VALUES (NEW.state, 1)
            ON CONFLICT(state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER tasks_count_update AFTER UPDATE OF state ON tasks
    WHEN OLD.state <> NEW.state BEGIN
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
        INSERT INTO state_counts(state, n) VALUES (NEW.state, 1)
            ON CONFLICT(state) DO UPDATE SET n = n + 1;
    END;
    "#,
    // 2: continued sessions run where their transcript is.
    r#"
    ALTER TABLE tasks ADD COLUMN home_worker TEXT;
    CREATE INDEX attempts_by_session ON attempts(session);
    "#,
    // 3: the latest cost-mode escalation of an attempt's session (JSON).
    r#"
    ALTER TABLE attempts ADD COLUMN escalation TEXT;
    "#,
    // 4: where an attempt's transcript was shared (JSON), so its session
    //    can continue on another worker while its own is away.
    r#"
    ALTER TABLE attempts ADD COLUMN transcript TEXT;
    "#,
];

/// Brings the schema to the newest version.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), BoardError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(BoardError::TooNew {
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "board migrated");
    }
    Ok(())
}
