//! Shared transcripts: how a session continues on another worker.
//!
//! When an attempt of an agent task ends, [`TranscriptStore::share`] puts
//! the latest segment of its transcript (the compacted one a continued
//! session's prompt is built from) into the object store
//! `colibri-transcripts`, named by the session id, and the Finished report
//! says so. The scheduler then lets a task continuing that session run on
//! another qualifying worker when the session's own worker is away.
//!
//! Before a continued session starts, a worker without the transcript
//! fetches it ([`TranscriptStore::ensure_local`]) into its own sessions
//! directory, only as the share the run order names, digest checked. A transcript found neither here nor in
//! the store is an error: a session never silently starts from nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, object_store::ObjectStore};
use broker::messages::task::COMMAND_AGENT;
use broker::messages::{RunOrder, SharedTranscript};
use broker::provision::TRANSCRIPTS_BUCKET;
use broker::SessionId;
use costmode::segment;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

/// Bound on one share or fetch, so a slow store never holds an attempt's
/// Finished report (or a continued session's start) for long.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(20);

/// The metadata key holding the segment index of a shared transcript.
const SEGMENT_KEY: &str = "segment";

/// Why a transcript could not be shared or fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranscriptError {
    #[error("opening the transcript store {TRANSCRIPTS_BUCKET}: {0}")]
    Store(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storing the transcript of session {session}: {message}")]
    Put { session: SessionId, message: String },
    #[error("session {session} is not in the transcript store: {message}")]
    NotShared { session: SessionId, message: String },
    #[error(
        "the transcript of session {session} in the store has digest {found}, \
         not the {expected} its worker reported: refusing a replaced transcript"
    )]
    Replaced {
        session: SessionId,
        expected: String,
        found: String,
    },
    #[error("fetching the transcript of session {session}: {message}")]
    Get { session: SessionId, message: String },
    #[error("{what} took longer than {}s", TRANSFER_TIMEOUT.as_secs())]
    TimedOut { what: &'static str },
}

/// The transcript object store, opened at first use.
#[derive(Clone)]
pub struct TranscriptStore {
    js: jetstream::Context,
    bucket: std::sync::Arc<OnceCell<ObjectStore>>,
}

impl TranscriptStore {
    pub fn new(js: jetstream::Context) -> TranscriptStore {
        TranscriptStore {
            js,
            bucket: Default::default(),
        }
    }

    async fn bucket(&self) -> Result<&ObjectStore, TranscriptError> {
        self.bucket
            .get_or_try_init(|| async {
                self.js
                    .get_object_store(TRANSCRIPTS_BUCKET)
                    .await
                    .map_err(|e| TranscriptError::Store(e.to_string()))
            })
            .await
    }

    /// Shares the latest segment of `session` from `state_dir`; `None`
    /// when the session left no transcript here.
    pub async fn share(
        &self,
        state_dir: &Path,
        session: &SessionId,
    ) -> Result<Option<SharedTranscript>, TranscriptError> {
        let Some((index, path)) = segment::latest_segment(state_dir, session) else {
            return Ok(None);
        };
        let work = async {
            let mut file =
                tokio::fs::File::open(&path)
                    .await
                    .map_err(|source| TranscriptError::Read {
                        path: path.clone(),
                        source,
                    })?;
            let meta = jetstream::object_store::ObjectMetadata {
                name: session.to_string(),
                description: Some(segment::file_name(session, index)),
                metadata: [(SEGMENT_KEY.to_string(), index.to_string())].into(),
                ..Default::default()
            };
            let info = self
                .bucket()
                .await?
                .put(meta, &mut file)
                .await
                .map_err(|e| TranscriptError::Put {
                    session: *session,
                    message: e.to_string(),
                })?;
            Ok(Some(SharedTranscript {
                session: *session,
                segment: index,
                bytes: info.size as u64,
                digest: info.digest.unwrap_or_default(),
            }))
        };
        tokio::time::timeout(TRANSFER_TIMEOUT, work)
            .await
            .map_err(|_| TranscriptError::TimedOut {
                what: "sharing the transcript",
            })?
    }

    /// Makes the transcript of `session` available under `state_dir`:
    /// `Ok(false)` when it already is, `Ok(true)` when fetched from the
    /// store (written to a temporary file, renamed into place once whole
    /// and its digest checked). Only a share its worker reported
    /// (`expected`, as the run order carries it) is fetched, and an object
    /// whose digest differs from it is refused: any worker may write to the
    /// store, so an object nobody vouches for is never trusted.
    pub async fn ensure_local(
        &self,
        state_dir: &Path,
        session: &SessionId,
        expected: Option<&SharedTranscript>,
    ) -> Result<bool, TranscriptError> {
        if segment::latest_segment(state_dir, session).is_some() {
            return Ok(false);
        }
        let Some(expected) = expected else {
            return Err(TranscriptError::NotShared {
                session: *session,
                message: "its worker reported no share".into(),
            });
        };
        let dest = segment::path(state_dir, session, expected.segment);
        let partial = dest.with_file_name(format!(
            ".{}.{}.fetching",
            segment::file_name(session, expected.segment),
            uuid::Uuid::new_v4().simple()
        ));
        let fetch = self.fetch(session, expected, &partial, &dest);
        let fetched = tokio::time::timeout(TRANSFER_TIMEOUT, fetch)
            .await
            .unwrap_or(Err(TranscriptError::TimedOut {
                what: "fetching the transcript",
            }));
        if fetched.is_err() {
            // Whatever was written of it (also when the time ran out).
            let _ = tokio::fs::remove_file(&partial).await;
        }
        fetched.map(|()| true)
    }

    /// Gets the object into `partial`, then renames it to `dest`.
    async fn fetch(
        &self,
        session: &SessionId,
        expected: &SharedTranscript,
        partial: &Path,
        dest: &Path,
    ) -> Result<(), TranscriptError> {
        let get = |message: String| TranscriptError::Get {
            session: *session,
            message,
        };
        let mut object = self
            .bucket()
            .await?
            .get(session.to_string())
            .await
            .map_err(|e| match e.kind() {
                jetstream::object_store::GetErrorKind::NotFound => TranscriptError::NotShared {
                    session: *session,
                    message: e.to_string(),
                },
                _ => get(e.to_string()),
            })?;
        let found = object.info().digest.clone().unwrap_or_default();
        if found != expected.digest {
            return Err(TranscriptError::Replaced {
                session: *session,
                expected: expected.digest.clone(),
                found,
            });
        }
        let write = |source| TranscriptError::Write {
            path: dest.to_path_buf(),
            source,
        };
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(write)?;
        }
        let mut file = tokio::fs::File::create(partial).await.map_err(write)?;
        tokio::io::copy(&mut object, &mut file)
            .await
            .map_err(|e| get(e.to_string()))?;
        file.flush().await.map_err(write)?;
        file.sync_all().await.map_err(write)?;
        drop(file);
        tokio::fs::rename(partial, dest).await.map_err(write)
    }
}

/// Whether an order's attempt keeps a transcript another task may continue:
/// agent tasks do; a `command` task's continuation just runs its command.
pub fn continuable(order: &RunOrder) -> bool {
    order.task.agent.as_str() != COMMAND_AGENT
}

impl TranscriptStore {
    /// For an order continuing an earlier session: makes that session's
    /// transcript available here, or says (as a refusal reason) why the
    /// session cannot be continued on this worker.
    pub async fn prepare_continuation(
        &self,
        state_dir: &Path,
        order: &RunOrder,
    ) -> Result<(), String> {
        let Some(previous) = order.task.continue_session else {
            return Ok(());
        };
        if !continuable(order) {
            return Ok(());
        }
        let expected = order
            .continue_from
            .as_ref()
            .filter(|s| s.session == previous);
        match self.ensure_local(state_dir, &previous, expected).await {
            Ok(false) => Ok(()),
            Ok(true) => {
                info!(task_id = %order.task.id, attempt = order.attempt, %previous,
                    "fetched the transcript of the continued session from the transcript store");
                Ok(())
            }
            Err(error) => {
                warn!(task_id = %order.task.id, attempt = order.attempt, %previous, %error,
                    "cannot continue the session here");
                Err(format!(
                    "session {previous} cannot be continued on this worker (not starting it from nothing): {error}"
                ))
            }
        }
    }

    /// After an attempt that ran: shares its transcript, logging (not
    /// failing the attempt) when that does not work.
    pub async fn share_attempt(
        &self,
        state_dir: &Path,
        order: &RunOrder,
    ) -> Option<SharedTranscript> {
        if !continuable(order) {
            return None;
        }
        match self.share(state_dir, &order.session).await {
            Ok(shared) => {
                if let Some(s) = &shared {
                    debug!(task_id = %order.task.id, attempt = order.attempt, session = %s.session,
                        segment = s.segment, bytes = s.bytes, "transcript shared");
                }
                shared
            }
            Err(error) => {
                warn!(task_id = %order.task.id, attempt = order.attempt, session = %order.session, %error,
                    "transcript not shared; the session can be continued only on this worker");
                None
            }
        }
    }
}
