//! The board: every task, attempt and transition, in SQLite (WAL, migrations).
//!
//! One writer ([`Board`], owned by the service task) changes it in
//! transactions ([`BoardTx`]); readers ([`BoardReader`]) open their own
//! read-only connections, so status and list requests never wait on writes.
//! `synchronous = NORMAL` under WAL: a committed transaction survives a crash
//! of the process (`kill -9`); after a power loss the last few may be rolled
//! back, and the intake redelivers them because they were not yet acknowledged
//! beyond what was committed... see README "Durability".

mod migrations;
mod read;
mod write;

use std::path::Path;

pub use read::BoardReader;
pub use write::{ActiveRow, AttemptEnd, BoardTx, Progress, SessionHome};

use rusqlite::Connection;

/// Why a board operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoardError {
    #[error("opening the board {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("board schema version {found} is newer than this build knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("board query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("board holds a malformed row for task {task}: {detail}")]
    Corrupt { task: String, detail: String },
}

/// The writer's connection.
pub struct Board {
    conn: Connection,
}

impl Board {
    /// Opens (creating and migrating) the board at `path`.
    pub fn open(path: &Path) -> Result<Board, BoardError> {
        let conn = Connection::open(path).map_err(|source| BoardError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "cache_size", -16_000)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut board = Board { conn };
        migrations::migrate(&mut board.conn)?;
        Ok(board)
    }

    /// Starts a write transaction.
    pub fn transaction(&mut self) -> Result<BoardTx<'_>, BoardError> {
        Ok(BoardTx::new(self.conn.transaction()?))
    }

    /// Every task not yet in a terminal state, oldest first.
    pub fn load_active(&self) -> Result<Vec<ActiveRow>, BoardError> {
        write::load_active(&self.conn)
    }
}

#[cfg(test)]
mod tests;
