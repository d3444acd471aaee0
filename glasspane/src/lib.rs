//! Glasspane: every agent's output, normalised into one documented event
//! schema, published live on `colibri.session.<session>.<worker>.<kind>`, kept for
//! replay in `COLIBRI_SESSIONS`, and written to a durable transcript.
//!
//! # How the worker uses it
//!
//! ```no_run
//! # async fn f(client: async_nats::Client, mut child: tokio::process::Child,
//! #            meta: glasspane::SessionMeta, state_dir: std::path::PathBuf) {
//! use glasspane::*;
//! let stdout = child.stdout.take().unwrap();
//! let stderr = child.stderr.take().unwrap();
//! let publisher = SessionPublisher::spawn(client, publish::DEFAULT_CAPACITY);
//! let transcript = Transcript::create(&state_dir, &meta.session, Default::default()).ok();
//! let (live, _live_rx) = tokio::sync::watch::channel(LiveState::default());
//! let exit = async move {
//!     match child.wait().await {
//!         Ok(status) => AgentEnding::from(status),
//!         Err(_) => AgentEnding::default(),
//!     }
//! };
//! let summary = run_session(stdout, stderr, exit, meta, AgentFormat::for_agent("pi"),
//!                           PumpConfig::default(), publisher, transcript, live).await;
//! let (_outcome, _reason) = (summary.outcome, summary.reason);
//! # }
//! ```
//!
//! - [`run_session`] is the one entry point: it reads both streams to EOF,
//!   awaits the exit future, and returns a [`SessionSummary`] whose
//!   `outcome`/`reason` come from [`verdict`]. When the worker stops the
//!   agent itself (timeout, cancel, budget), its exit future returns an
//!   [`AgentEnding`] with `imposed` set, and that outcome wins.
//! - [`LiveState`] (a `watch`) gives the pane, last event time, current
//!   tool, usage so far and the last output instant, for idle timeouts and
//!   progress reports.
//! - [`follow`] is the reader side for `colibri watch`.
//!
//! # Modules
//!
//! - [`line_reader`]: bounded, lossy, LF-only line reader;
//! - [`parser`]: the [`Parser`] trait, [`AgentFormat`], limits, verdicts;
//! - [`pi`], [`claude`], [`codex`], [`text`]: one normaliser per format;
//! - [`guard`]: the append guard, the worker's cost-mode seam;
//! - [`pump`]: the session loop, pane state machine, live state, verdict;
//! - [`publish`]: bounded, non-blocking publishing to NATS;
//! - [`transcript`]: the durable JSONL transcript and its flood policy;
//! - [`watch`]: following a session from JetStream.
//!
//! The event schema itself lives in `broker::messages::session` (it is wire
//! contract); `SUBJECTS-SECTION.md` is its prose form.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod claude;
pub mod codex;
pub mod cut_json;
pub mod guard;
pub mod line_reader;
pub mod parser;
pub mod pi;
pub mod publish;
pub mod pump;
pub mod text;
pub mod transcript;
pub mod watch;

#[cfg(test)]
mod testing;

pub use broker::messages::session::{Event, Pane, SessionEvent};
pub use guard::{AppendGuard, GuardAction, NoGuard};
pub use line_reader::{Line, LineReader};
pub use parser::{AgentExit, AgentFormat, Limits, Parser, Verdict};
pub use publish::SessionPublisher;
pub use pump::{
    run_session, run_session_with, verdict, AgentEnding, LiveState, PumpConfig, SessionMeta,
    SessionSummary,
};
pub use transcript::{Transcript, TranscriptConfig};
pub use watch::{follow, follow_worker, FollowError, Skipped};
