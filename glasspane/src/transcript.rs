//! A session's transcript: its [`SessionEvent`]s as JSONL in
//! `<state_dir>/sessions/<session>.jsonl`, on the worker's host. It is the
//! input of compaction and rollover, and the record of what was dropped live.
//!
//! Durability: every line is written with one `write(2)` on an `O_APPEND`
//! file and no userspace buffer is held across lines, so a crash of the
//! worker process loses nothing already written (the page cache has it).
//! `fdatasync` runs in the background at most every `sync_every`, and once
//! at [`Transcript::finish`], for a crash of the machine.
//!
//! Under a flood: the transcript is written on the pump's own path (no
//! network), so it keeps every event, gap-free in `seq`, including those
//! dropped live, until `max_bytes`. Past that cap it keeps only the small
//! events that matter for the end of the story (lifecycle, usage, retry,
//! compaction, dropped, truncated, end) and skips the bulky ones (message,
//! tool calls, raw), counting them; past twice the cap it keeps only
//! lifecycle, truncated and end. The pump then records a `truncated`
//! event with the counts before the final events, so the end of the
//! transcript is never lost. A write error (disk full) disables the
//! transcript for the rest of the session and is reported in the summary;
//! it never stops the agent.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use broker::messages::session::Event;
use broker::SessionId;

/// Where and how much a transcript keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptConfig {
    /// Byte cap after which bulky events are skipped (default 64 MiB).
    pub max_bytes: u64,
    /// Longest time between background `fdatasync`s (default 1 s).
    pub sync_every: Duration,
}

impl Default for TranscriptConfig {
    fn default() -> Self {
        TranscriptConfig {
            max_bytes: 64 * 1024 * 1024,
            sync_every: Duration::from_secs(1),
        }
    }
}

/// Why a transcript could not be opened or finished.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranscriptError {
    #[error("creating transcript directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening transcript {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing transcript {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a finished transcript holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptStats {
    pub path: PathBuf,
    pub bytes: u64,
    /// Events skipped past the cap, and their bytes.
    pub skipped_events: u64,
    pub skipped_bytes: u64,
    /// The first write or sync error, after which writing stopped.
    pub error: Option<String>,
}

/// An open transcript, owned by one session's pump.
pub struct Transcript {
    file: File,
    path: PathBuf,
    cfg: TranscriptConfig,
    bytes: u64,
    skipped_events: u64,
    skipped_bytes: u64,
    error: Option<String>,
    last_sync: Instant,
    sync: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// The transcript path of `session` under `state_dir`.
pub fn transcript_path(state_dir: &Path, session: &SessionId) -> PathBuf {
    state_dir.join("sessions").join(format!("{session}.jsonl"))
}

impl Transcript {
    /// Creates (or appends to) the session's transcript file.
    pub fn create(
        state_dir: &Path,
        session: &SessionId,
        cfg: TranscriptConfig,
    ) -> Result<Transcript, TranscriptError> {
        let path = transcript_path(state_dir, session);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| TranscriptError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TranscriptError::Open {
                path: path.clone(),
                source,
            })?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Transcript {
            file,
            path,
            cfg,
            bytes,
            skipped_events: 0,
            skipped_bytes: 0,
            error: None,
            last_sync: Instant::now(),
            sync: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Events (and bytes) skipped so far past the cap.
    pub fn skipped(&self) -> (u64, u64) {
        (self.skipped_events, self.skipped_bytes)
    }

    /// Whether `event` is kept at the current size.
    fn keeps(&self, event: &Event) -> bool {
        let cap = self.cfg.max_bytes;
        if self.bytes < cap {
            return true;
        }
        let vital = matches!(
            event,
            Event::Lifecycle { .. } | Event::Truncated { .. } | Event::End { .. }
        );
        if vital {
            return true;
        }
        let small = matches!(
            event,
            Event::Usage { .. }
                | Event::Retry { .. }
                | Event::Compaction { .. }
                | Event::Dropped { .. }
                | Event::AgentSession { .. }
        );
        small && self.bytes < cap.saturating_mul(2)
    }

    /// Appends one line (`line` ends with LF) for `event`, in one write.
    pub fn append(&mut self, event: &Event, line: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if !self.keeps(event) {
            self.skipped_events += 1;
            self.skipped_bytes += line.len() as u64;
            return;
        }
        // `write_all` on a regular file is one write(2) unless interrupted
        // or short (disk full), which it then retries.
        if let Err(e) = self.file.write_all(line) {
            tracing::warn!(path = %self.path.display(), error = %e, "transcript write failed; transcript disabled for this session");
            self.error = Some(e.to_string());
            return;
        }
        self.bytes += line.len() as u64;
        self.maybe_sync();
    }

    /// Replaces the file's contents with `content` (a compaction): written
    /// to a temporary file beside it, synced, renamed over it, reopened for
    /// appending. A crash leaves either the old or the new contents. An
    /// error disables the transcript like a write error.
    pub fn rewrite(&mut self, content: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        let res = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(content)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &self.path)?;
            OpenOptions::new().append(true).open(&self.path)
        })();
        match res {
            Ok(file) => {
                self.file = file;
                self.bytes = content.len() as u64;
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "transcript rewrite failed; transcript disabled for this session");
                let _ = std::fs::remove_file(&tmp);
                self.error = Some(e.to_string());
            }
        }
    }

    /// Continues in `path` (a new segment), created empty.
    pub fn switch_to(&mut self, path: PathBuf) {
        if self.error.is_some() {
            return;
        }
        let res = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|f| {
                drop(f);
                OpenOptions::new().append(true).open(&path)
            });
        match res {
            Ok(file) => {
                if let Err(e) = self.file.sync_data() {
                    tracing::warn!(path = %self.path.display(), error = %e, "syncing the previous segment failed");
                }
                self.file = file;
                self.path = path;
                self.bytes = 0;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "opening the next transcript segment failed; transcript disabled for this session");
                self.error = Some(e.to_string());
            }
        }
    }

    /// Starts a background `fdatasync` when the last one is old and done.
    fn maybe_sync(&mut self) {
        if self.last_sync.elapsed() < self.cfg.sync_every {
            return;
        }
        if self.sync.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.last_sync = Instant::now();
        if let Ok(file) = self.file.try_clone() {
            self.sync = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        }
    }

    /// Syncs the file to disk and reports what it holds.
    pub async fn finish(mut self) -> TranscriptStats {
        if let Some(h) = self.sync.take() {
            let _ = h.await;
        }
        if self.error.is_none() {
            let file = self.file.try_clone();
            let res = match file {
                Ok(f) => tokio::task::spawn_blocking(move || f.sync_data())
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                self.error = Some(format!("fdatasync: {e}"));
            }
        }
        TranscriptStats {
            path: self.path,
            bytes: self.bytes,
            skipped_events: self.skipped_events,
            skipped_bytes: self.skipped_bytes,
            error: self.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::messages::session::{Pane, Role};

    fn msg() -> Event {
        Event::Message {
            role: Role::Assistant,
            text: "x".into(),
            len: 1,
        }
    }

    #[tokio::test]
    async fn keeps_the_end_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let session = SessionId::new();
        let cfg = TranscriptConfig {
            max_bytes: 100,
            ..Default::default()
        };
        let mut t = Transcript::create(dir.path(), &session, cfg).unwrap();
        let line = vec![b'a'; 49]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<_>>();
        for _ in 0..10 {
            t.append(&msg(), &line);
        }
        let end = Event::End {
            success: true,
            reason: None,
        };
        t.append(
            &Event::Lifecycle {
                pane: Pane::Stopped,
                reason: None,
            },
            b"L\n",
        );
        t.append(&end, b"E\n");
        let stats = t.finish().await;
        assert_eq!(stats.skipped_events, 8);
        assert_eq!(stats.skipped_bytes, 400);
        let text = std::fs::read_to_string(transcript_path(dir.path(), &session)).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.ends_with("L\nE\n"));
        assert_eq!(stats.error, None);
    }

    #[tokio::test]
    async fn rewrite_and_switch_keep_appending() {
        let dir = tempfile::tempdir().unwrap();
        let session = SessionId::new();
        let mut t = Transcript::create(dir.path(), &session, Default::default()).unwrap();
        t.append(&msg(), b"a\n");
        t.append(&msg(), b"b\n");
        t.rewrite(b"S\n");
        t.append(&msg(), b"c\n");
        let first = transcript_path(dir.path(), &session);
        assert_eq!(std::fs::read_to_string(&first).unwrap(), "S\nc\n");
        let next = dir.path().join("sessions").join("next.jsonl");
        t.switch_to(next.clone());
        t.append(&msg(), b"d\n");
        let stats = t.finish().await;
        assert_eq!(
            (stats.path, stats.bytes, stats.error),
            (next.clone(), 2, None)
        );
        assert_eq!(std::fs::read_to_string(&first).unwrap(), "S\nc\n");
        assert_eq!(std::fs::read_to_string(&next).unwrap(), "d\n");
    }
}
